/*
 * parallels-ext.c - the Parallels Format Extension cluster, checked as
 * QEMU 7.2 checks it on read-only opens (a writable open ignores it with
 * a warning): magic, MD5 of the cluster after its 24-byte header, then
 * features up to "end of features", dirty bitmaps being the only known
 * one.  QEMU loads the bitmaps; qemu-img uses none of them, so they are
 * checked (sizes, table, data clusters read) but not kept.
 *
 * Where QEMU 7.2 aborts on an assertion (a bitmap granularity that is not
 * a power of two) or allocates without bound (one bitmap per disk
 * granule), the extension is refused with a message instead; see
 * PARALLELS_EXT_MAX_BITMAPS.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/md5.h>

#include "core/util.h"
#include "fmt/parallels/parallels.h"

#define EXT_MAGIC 0xAB234CEF23DCEA87ull
#define EXT_HEADER_LEN 24               /* magic, MD5 */
#define FEATURE_END 0x0ull
#define FEATURE_DIRTY_BITMAP 0x20385FAE252CB34Aull
#define FEATURE_HEADER_LEN 24           /* magic, flags, size, unused */
#define BITMAP_HEADER_LEN 32            /* size, id, granularity, l1 size */
/* Bitmaps checked per image (each needs its id compared with the others
 * and its data clusters read); QEMU has no bound. */
#define PARALLELS_EXT_MAX_BITMAPS 1024

struct ext_walk {
    struct qimg_image *node;
    uint8_t ids[PARALLELS_EXT_MAX_BITMAPS][16];
    size_t nbitmaps;
};

static void uuid_str(const uint8_t *id, char *out)
{
    static const int dash[] = {4, 6, 8, 10};
    size_t k = 0;

    for (int i = 0; i < 16; i++) {
        for (int d = 0; d < 4; d++)
            if (dash[d] == i)
                out[k++] = '-';
        k += (size_t)sprintf(out + k, "%02x", id[i]);
    }
}

/* The bitmap's data clusters, as QEMU reads them (1: all ones, 0: none). */
static int read_bitmap_data(struct ext_walk *w, const uint8_t *l1, uint32_t n,
                            struct qimg_error *err)
{
    struct parallels_state *s = w->node->state;
    uint8_t *buf = malloc(s->cluster_size);
    int ret = 0;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n && !ret; i++) {
        uint64_t e = qimg_ld_le64(l1 + 8 * (size_t)i);
        if (e <= 1)
            continue;
        if (e > QIMG_MAX_LENGTH / 512)
            ret = -EIO;
        else
            ret = w->node->file->ops->pread(w->node->file, e * 512,
                                            s->cluster_size, buf, err);
        if (ret < 0)
            qimg_error_set(err, ret, "Failed to read bitmap data cluster: %s",
                           strerror(-ret));
    }
    free(buf);
    return ret;
}

static int check_bitmap(struct ext_walk *w, const uint8_t *data, size_t size,
                        struct qimg_error *err)
{
    struct qimg_image *node = w->node;
    struct parallels_state *s = node->state;
    int64_t sectors = (int64_t)(node->size / 512);
    uint64_t bm_sectors, bits, bytes, tab;
    uint32_t gran, l1_size;
    char id[40];

    if (size < BITMAP_HEADER_LEN)
        return qimg_error_set(err, -EINVAL, "Too small Bitmap Feature area in "
                              "Parallels Format Extension: %zu bytes, expected "
                              "at least %d bytes", size, BITMAP_HEADER_LEN);
    bm_sectors = qimg_ld_le64(data);
    gran = qimg_ld_le32(data + 24) << 9;   /* wraps in 32 bits, as QEMU's */
    l1_size = qimg_ld_le32(data + 28);
    if (bm_sectors != (uint64_t)sectors)
        return qimg_error_set(err, -EINVAL, "Bitmap size (in sectors) %" PRId64
                              " differs from disk size in sectors %" PRId64,
                              (int64_t)bm_sectors, sectors);
    if ((uint64_t)l1_size * 8 > size - BITMAP_HEADER_LEN)
        return qimg_error_set(err, -EINVAL, "Bitmaps feature corrupted: l1 "
                              "table exceeds extension data_size");
    uuid_str(data + 8, id);
    if (!qimg_is_pow2(gran))
        return qimg_error_set(err, -EINVAL, "Invalid granularity of bitmap "
                              "'%s' in Parallels Format Extension", id);
    for (size_t i = 0; i < w->nbitmaps; i++)
        if (!memcmp(w->ids[i], data + 8, 16))
            return qimg_error_set(err, -EINVAL, "Bitmap already exists: %s",
                                  id);
    if (w->nbitmaps == PARALLELS_EXT_MAX_BITMAPS)
        return qimg_error_set(err, -EINVAL, "More than %d bitmaps in "
                              "Parallels Format Extension",
                              PARALLELS_EXT_MAX_BITMAPS);
    memcpy(w->ids[w->nbitmaps++], data + 8, 16);
    /* The serialised bitmap: one bit per granule, in 64-bit words. */
    bits = qimg_div_round_up(node->size, gran);
    bytes = qimg_div_round_up(bits, 64) * 8;
    tab = qimg_div_round_up(bytes, s->cluster_size);
    if (tab != l1_size)
        return qimg_error_set(err, -EINVAL, "Bitmap table size %" PRIu32 " does "
                              "not correspond to bitmap size and cluster size. "
                              "Expected %" PRIu64, l1_size, tab);
    return read_bitmap_data(w, data + BITMAP_HEADER_LEN, l1_size, err);
}

static int parse(struct ext_walk *w, const uint8_t *c, size_t len,
                 struct qimg_error *err)
{
    uint8_t sum[MD5_DIGEST_SIZE];
    struct md5_ctx md5;
    size_t pos = EXT_HEADER_LEN;
    uint64_t magic = qimg_ld_le64(c);

    if (magic != EXT_MAGIC)
        return qimg_error_set(err, -EINVAL, "Wrong parallels Format Extension "
                              "magic: 0x%" PRIx64 ", expected: 0x%llx", magic,
                              EXT_MAGIC);
    md5_init(&md5);
    md5_update(&md5, len - EXT_HEADER_LEN, c + EXT_HEADER_LEN);
    md5_digest(&md5, sizeof(sum), sum);
    if (memcmp(sum, c + 8, sizeof(sum)))
        return qimg_error_set(err, -EINVAL, "Wrong checksum in Format Extension "
                              "header. Format extension is corrupted.");
    for (;;) {
        /* Past the end after the padding: negative, as QEMU prints it. */
        long long remaining = (long long)len - (long long)pos;
        uint64_t fmagic, flags;
        uint32_t size;
        int ret;

        if (remaining < FEATURE_HEADER_LEN)
            return qimg_error_set(err, -EINVAL, "Can not read feature header, "
                                  "as remaining bytes (%lld) in Format "
                                  "Extension is less than Feature header size "
                                  "(%d)", remaining, FEATURE_HEADER_LEN);
        fmagic = qimg_ld_le64(c + pos);
        flags = qimg_ld_le64(c + pos + 8);
        size = qimg_ld_le32(c + pos + 16);
        pos += FEATURE_HEADER_LEN;
        remaining -= FEATURE_HEADER_LEN;
        if (flags)
            return qimg_error_set(err, -EINVAL, "Flags for extension feature "
                                  "are unsupported");
        if ((long long)size > remaining)
            return qimg_error_set(err, -EINVAL, "Feature data_size exceedes "
                                  "Format Extension cluster");
        if (fmagic == FEATURE_END)
            return 0;
        if (fmagic != FEATURE_DIRTY_BITMAP)
            return qimg_error_set(err, -EINVAL, "Unknown feature: 0x%" PRIx64,
                                  fmagic);
        ret = check_bitmap(w, c + pos, size, err);
        if (ret < 0)
            return ret;
        pos = (pos + size + 7) & ~(size_t)7;
    }
}

int parallels_read_extension(struct qimg_image *node, uint64_t ext_off,
                             struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    struct ext_walk *w = NULL;
    uint8_t *c = NULL;
    int ret;

    if (s->cluster_size > PARALLELS_EXT_MAX_CLUSTER)
        return qimg_error_set(err, -EFBIG, "Format Extension clusters of %u "
                              "bytes are larger than qimg's limit of %u bytes",
                              s->cluster_size, PARALLELS_EXT_MAX_CLUSTER);
    w = calloc(1, sizeof(*w));
    c = malloc(s->cluster_size);
    if (!w || !c) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    w->node = node;
    ret = qimg_range_ok(ext_off, s->cluster_size, QIMG_MAX_LENGTH)
              ? node->file->ops->pread(node->file, ext_off, s->cluster_size, c,
                                       err)
              : -EIO;
    if (ret < 0) {
        qimg_error_set(err, ret, "Failed to read Format Extension cluster: %s",
                       strerror(-ret));
        goto out;
    }
    ret = parse(w, c, s->cluster_size, err);   /* clusters are >= 512 B */
out:
    free(c);
    free(w);
    return ret;
}
