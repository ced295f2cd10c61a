/*
 * bochs.c - Bochs "growing" redolog images (read-only), as bximage writes
 * them and QEMU 7.2 reads them.
 *
 * Layout (little-endian): a 512-byte header (magic "Bochs Virtual HD
 * Image", type "Redolog", subtype "Growing", version 1 or 2, header size,
 * catalog entries, bitmap size, extent size, disk size), then at the
 * header size the catalog: one u32 per extent, the index of the extent's
 * block in the data area or 0xffffffff when it was never written.  Each
 * block of the data area is a bitmap (one bit per 512-byte sector of the
 * extent) followed by the extent's sectors; a sector whose bit is clear
 * reads as zeroes.
 *
 * The catalog is read once at open and never changes, so reads need no
 * lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

#define BOCHS_SECTOR 512
#define BOCHS_HEADER_SIZE 512
#define BOCHS_MAGIC "Bochs Virtual HD Image"
#define BOCHS_TYPE "Redolog"
#define BOCHS_SUBTYPE "Growing"
#define BOCHS_VERSION 0x00020000
#define BOCHS_VERSION_V1 0x00010000
#define BOCHS_UNALLOCATED 0xffffffffu
/* Header fields. */
#define H_MAGIC 0
#define H_TYPE 32
#define H_SUBTYPE 48
#define H_VERSION 64
#define H_HEADER 68
#define H_CATALOG 72
#define H_BITMAP 76
#define H_EXTENT 80
#define H_DISK_V1 84
#define H_DISK 88
/* Most catalog entries (QEMU's limit: what the largest image bximage can
 * make, about 8 TB, needs; 4 MiB of memory). */
#define BOCHS_MAX_CATALOG 0x100000u
/* Largest extent (QEMU's limit; bximage uses far smaller ones). */
#define BOCHS_MAX_EXTENT 0x800000u

struct bochs_state {
    uint32_t *catalog;
    uint32_t catalog_size;
    uint32_t data_offset;       /* 32-bit, as QEMU computes it */
    uint32_t bitmap_blocks;     /* sectors of each block's bitmap */
    uint32_t extent_blocks;     /* sectors of each block's data */
    uint32_t extent_size;       /* bytes of guest data per extent */
};

/* A NUL-terminated field equal to s (QEMU compares with strcmp). */
static bool field_is(const uint8_t *buf, size_t at, size_t field_len,
                     const char *s)
{
    size_t n = strlen(s);
    return n < field_len && !memcmp(buf + at, s, n) && buf[at + n] == 0;
}

static bool header_ok(const uint8_t *h)
{
    uint32_t v = qimg_ld_le32(h + H_VERSION);
    return field_is(h, H_MAGIC, 32, BOCHS_MAGIC) &&
           field_is(h, H_TYPE, 16, BOCHS_TYPE) &&
           field_is(h, H_SUBTYPE, 16, BOCHS_SUBTYPE) &&
           (v == BOCHS_VERSION || v == BOCHS_VERSION_V1);
}

static int bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= BOCHS_HEADER_SIZE && header_ok(buf) ? 100 : 0;
}

/* QEMU's checks after the catalog is read, in its order. */
static int check_geometry(struct qimg_image *node, struct qimg_error *err)
{
    const struct bochs_state *s = node->state;
    uint64_t per_extent, needed;

    if (s->extent_size < BOCHS_SECTOR)
        return qimg_error_set(err, -EINVAL, "Extent size must be at least "
                              "512");
    if (!qimg_is_pow2(s->extent_size))
        return qimg_error_set(err, -EINVAL, "Extent size %u is not a power of "
                              "two", s->extent_size);
    if (s->extent_size > BOCHS_MAX_EXTENT)
        return qimg_error_set(err, -EINVAL, "Extent size %u is too large",
                              s->extent_size);
    per_extent = s->extent_size / BOCHS_SECTOR;
    needed = qimg_div_round_up(node->size / BOCHS_SECTOR, per_extent);
    if (s->catalog_size < needed)
        return qimg_error_set(err, -EINVAL, "Catalog size is too small for "
                              "this disk size");
    return 0;
}

static int read_catalog(struct qimg_image *node, uint32_t header_size,
                        struct qimg_error *err)
{
    struct bochs_state *s = node->state;
    size_t bytes = (size_t)s->catalog_size * sizeof(uint32_t);
    int ret;

    s->catalog = malloc(bytes ? bytes : 1);
    if (!s->catalog)
        return qimg_error_set(err, -ENOMEM, "Could not allocate memory for "
                              "catalog");
    ret = node->file->ops->pread(node->file, header_size, bytes, s->catalog,
                                 err);
    if (ret < 0)
        return ret;
    for (uint32_t i = 0; i < s->catalog_size; i++)
        s->catalog[i] = qimg_ld_le32(&s->catalog[i]);
    return 0;
}

static int bochs_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    struct bochs_state *s = node->state;
    uint8_t h[BOCHS_HEADER_SIZE];
    uint32_t header_size, bitmap;
    int64_t file_size;
    int ret;

    ret = node->file->ops->pread(node->file, 0, sizeof(h), h, err);
    if (ret < 0)
        return ret;
    if (!header_ok(h))
        return qimg_error_set(err, -EINVAL, "Image not in Bochs format");
    node->size = qimg_ld_le64(h + (qimg_ld_le32(h + H_VERSION) ==
                                           BOCHS_VERSION_V1 ? H_DISK_V1
                                                            : H_DISK)) /
                 BOCHS_SECTOR * BOCHS_SECTOR;
    s->catalog_size = qimg_ld_le32(h + H_CATALOG);
    if (s->catalog_size > BOCHS_MAX_CATALOG)
        return qimg_error_set(err, -EFBIG, "Catalog size is too large");
    header_size = qimg_ld_le32(h + H_HEADER);
    ret = read_catalog(node, header_size, err);
    if (ret < 0)
        goto fail;
    /* 32-bit arithmetic as in QEMU (a zero bitmap size wraps). */
    s->data_offset = header_size + s->catalog_size * 4;
    bitmap = qimg_ld_le32(h + H_BITMAP);
    s->bitmap_blocks = 1 + (bitmap - 1) / BOCHS_SECTOR;
    s->extent_size = qimg_ld_le32(h + H_EXTENT);
    s->extent_blocks = 1 + (s->extent_size - 1) / BOCHS_SECTOR;
    ret = check_geometry(node, err);
    if (ret < 0)
        goto fail;
    /* QEMU reads a catalog past the end of the file as zeroes (every
     * extent at block 0); we refuse it. */
    file_size = node->file->ops->get_size(node->file);
    if (file_size < 0 ||
        !qimg_range_ok(header_size, (uint64_t)s->catalog_size * 4,
                       (uint64_t)file_size)) {
        ret = qimg_error_set(err, -EINVAL, "Catalog extends past the end of "
                             "the file");
        goto fail;
    }
    ret = qimg_opts_refuse_all(node, opts, err);
    if (ret < 0)
        goto fail;
    return 0;

fail:
    free(s->catalog);
    s->catalog = NULL;
    return ret;
}

static void bochs_close(struct qimg_image *node)
{
    struct bochs_state *s = node->state;
    free(s->catalog);
}

/*
 * Sectors [first, first+n) of one allocated extent, whose block starts at
 * block_off: the bitmap bytes for them are read at once, then each run of
 * sectors with the same bit is read or zeroed.
 */
static int read_extent(struct qimg_image *node, uint64_t block_off,
                       uint32_t first, uint32_t n, uint8_t *p,
                       struct qimg_error *err)
{
    const struct bochs_state *s = node->state;
    uint8_t bits[BOCHS_MAX_EXTENT / BOCHS_SECTOR / 8];
    uint32_t lo = first / 8, hi = (first + n - 1) / 8;
    int ret;

    ret = node->file->ops->pread(node->file, block_off + lo, hi - lo + 1, bits,
                                 err);
    if (ret < 0)
        return ret;
    for (uint32_t i = 0; i < n;) {
        uint32_t sec = first + i;
        bool set = (bits[sec / 8 - lo] >> (sec % 8)) & 1;
        uint32_t run = 1;
        while (i + run < n) {
            uint32_t t = sec + run;
            if ((bool)((bits[t / 8 - lo] >> (t % 8)) & 1) != set)
                break;
            run++;
        }
        if (set) {
            uint64_t at = block_off +
                          (uint64_t)BOCHS_SECTOR * (s->bitmap_blocks + sec);
            ret = node->file->ops->pread(node->file, at,
                                         (size_t)run * BOCHS_SECTOR,
                                         p + (size_t)i * BOCHS_SECTOR, err);
            if (ret < 0)
                return ret;
        } else {
            memset(p + (size_t)i * BOCHS_SECTOR, 0, (size_t)run * BOCHS_SECTOR);
        }
        i += run;
    }
    return 0;
}

/* Whole sectors only: the core reads whole sectors for us below. */
static int read_sectors(struct qimg_image *node, uint64_t sector, uint64_t n,
                        uint8_t *p, struct qimg_error *err)
{
    const struct bochs_state *s = node->state;
    uint32_t per_extent = s->extent_size / BOCHS_SECTOR;

    while (n) {
        uint64_t extent = sector / per_extent;
        uint32_t first = (uint32_t)(sector % per_extent);
        uint32_t cnt = (uint32_t)QIMG_MIN(n, (uint64_t)(per_extent - first));
        uint32_t entry = s->catalog[extent];
        int ret = 0;

        if (entry == BOCHS_UNALLOCATED) {
            memset(p, 0, (size_t)cnt * BOCHS_SECTOR);
        } else {
            uint64_t block_off = s->data_offset +
                                 (uint64_t)BOCHS_SECTOR * entry *
                                     (s->extent_blocks + s->bitmap_blocks);
            ret = read_extent(node, block_off, first, cnt, p, err);
        }
        if (ret < 0)
            return ret;
        sector += cnt;
        n -= cnt;
        p += (size_t)cnt * BOCHS_SECTOR;
    }
    return 0;
}

static int bochs_pread(struct qimg_image *node, uint64_t off, size_t len,
                       void *buf, struct qimg_error *err)
{
    uint8_t *p = buf;
    uint8_t sector[BOCHS_SECTOR];
    int ret;

    /* A partial sector at either end goes through a bounce buffer. */
    while (len) {
        size_t in = (size_t)(off % BOCHS_SECTOR);
        if (!in && len >= BOCHS_SECTOR) {
            size_t whole = len / BOCHS_SECTOR * BOCHS_SECTOR;
            ret = read_sectors(node, off / BOCHS_SECTOR, whole / BOCHS_SECTOR,
                               p, err);
            if (ret < 0)
                return ret;
            p += whole;
            off += whole;
            len -= whole;
            continue;
        }
        size_t n = QIMG_MIN(len, BOCHS_SECTOR - in);
        ret = read_sectors(node, off / BOCHS_SECTOR, 1, sector, err);
        if (ret < 0)
            return ret;
        memcpy(p, sector + in, n);
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

const struct qimg_format qimg_format_bochs = {
    .name = "bochs",
    .description = "Bochs disk image",
    .state_size = sizeof(struct bochs_state),
    .read_only = true,
    .no_get_info = true,
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .pread = bochs_pread,
};
