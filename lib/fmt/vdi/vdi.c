/*
 * vdi.c - the vdi (VirtualBox) format: probing, the header checked as
 * QEMU 7.2 checks it (same order, same messages), the block map held in
 * memory within our bound, info, check, and the driver table.  See vdi.h
 * for the layout.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vdi/vdi.h"

uint32_t vdi_entry(const struct vdi_state *s, uint64_t i)
{
    return i < s->bmap.n ? (uint32_t)qimg_table_get(&s->bmap, i) : 0;
}

static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* QEMU probes a zero-padded 512-byte buffer: a shorter file with the
     * signature in it is vdi too. */
    if (len < VDI_H_SIGNATURE + 4)
        return 0;
    return qimg_ld_le32(buf + VDI_H_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static bool uuid_is_null(const uint8_t *u)
{
    static const uint8_t zero[16];
    return !memcmp(u, zero, sizeof(zero));
}

/* The header's fields in QEMU's order of checks. */
static int check_header(const uint8_t *h, uint64_t *disk_size,
                        struct qimg_error *err)
{
    uint32_t sig = qimg_ld_le32(h + VDI_H_SIGNATURE);
    uint32_t version = qimg_ld_le32(h + VDI_H_VERSION);
    uint32_t bmap_off = qimg_ld_le32(h + VDI_H_OFFSET_BMAP);
    uint32_t data_off = qimg_ld_le32(h + VDI_H_OFFSET_DATA);
    uint32_t sector = qimg_ld_le32(h + VDI_H_SECTOR_SIZE);
    uint32_t bs = qimg_ld_le32(h + VDI_H_BLOCK_SIZE);
    uint32_t blocks = qimg_ld_le32(h + VDI_H_BLOCKS_IN_IMAGE);
    uint64_t size = qimg_ld_le64(h + VDI_H_DISK_SIZE);
    uint64_t room = (uint64_t)blocks * bs;

    if (size > VDI_DISK_SIZE_MAX)
        return qimg_error_set(err, -ENOTSUP, "Unsupported VDI image size "
                              "(size is 0x%" PRIx64 ", max supported is 0x%"
                              PRIx64 ")", size, VDI_DISK_SIZE_MAX);
    /* VBoxManage convertfromraw may write odd sizes: rounded up. */
    size = qimg_div_round_up(size, VDI_SECTOR) * VDI_SECTOR;
    if (sig != VDI_SIGNATURE)
        return qimg_error_set(err, -EINVAL, "Image not in VDI format (bad "
                              "signature %08" PRIx32 ")", sig);
    if (version != VDI_VERSION_1_1)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image (version "
                              "%" PRIu32 ".%" PRIu32 ")", version >> 16,
                              version & 0xffff);
    if (bmap_off % VDI_SECTOR)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image "
                              "(unaligned block map offset 0x%" PRIx32 ")",
                              bmap_off);
    if (data_off % VDI_SECTOR)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image "
                              "(unaligned data offset 0x%" PRIx32 ")",
                              data_off);
    if (sector != VDI_SECTOR)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image (sector "
                              "size %" PRIu32 " is not %u)", sector,
                              VDI_SECTOR);
    if (bs != VDI_BLOCK_SIZE)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image (block "
                              "size %" PRIu32 " is not %u)", bs,
                              VDI_BLOCK_SIZE);
    if (size > room)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image (disk "
                              "size %" PRIu64 ", image bitmap has room for %"
                              PRIu64 ")", size, room);
    if (!uuid_is_null(h + VDI_H_UUID_LINK))
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image "
                              "(non-NULL link UUID)");
    if (!uuid_is_null(h + VDI_H_UUID_PARENT))
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image "
                              "(non-NULL parent UUID)");
    if (blocks > VDI_BLOCKS_IN_IMAGE_MAX)
        return qimg_error_set(err, -ENOTSUP, "unsupported VDI image (too many "
                              "blocks %" PRIu32 ", max is %u)", blocks,
                              VDI_BLOCKS_IN_IMAGE_MAX);
    *disk_size = size;
    return 0;
}

/* Read the part of the block map that lies inside the file. */
static int load_bmap(struct qimg_image *node, uint32_t bmap_off,
                     struct qimg_error *err)
{
    struct vdi_state *s = node->state;
    int64_t fsize = node->file->ops->get_size(node->file);
    uint64_t avail, n;

    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Could not get the size of "
                              "the file: %s", strerror((int)-fsize));
    avail = (uint64_t)fsize > bmap_off ? (uint64_t)fsize - bmap_off : 0;
    n = QIMG_MIN((uint64_t)s->blocks_in_image, qimg_div_round_up(avail, 4));
    if (n * 4 > VDI_MAX_BMAP_BYTES)
        return qimg_error_set(err, -EFBIG, "unsupported VDI image (a block "
                              "map of %" PRIu32 " blocks is more than the %llu "
                              "MiB supported)", s->blocks_in_image,
                              (unsigned long long)(VDI_MAX_BMAP_BYTES >> 20));
    struct qimg_table_geom g = {
        .offset = bmap_off, .n = n, .esize = 4, .sector = VDI_SECTOR,
        .max_bytes = VDI_MAX_BMAP_BYTES,
    };
    return qimg_table_load(&s->bmap, node->file, &g, "block map", err);
}

/*
 * New blocks take the next index (blocks_allocated); on a damaged image
 * an entry may already use it or one after it, and QEMU would then give
 * two guest blocks the same data.  The first such index bounds
 * allocation (vdi-io.c).
 */
static uint64_t first_used_from(const struct vdi_state *s, uint64_t from)
{
    uint64_t first = UINT64_MAX;

    for (uint64_t i = 0; i < s->bmap.n; i++) {
        uint32_t e = (uint32_t)qimg_table_get(&s->bmap, i);
        if (VDI_IS_ALLOCATED(e) && e >= from)
            first = QIMG_MIN(first, (uint64_t)e);
    }
    /* Zero entries past EOF name block 0. */
    if (s->bmap.n < s->blocks_in_image && from == 0)
        first = 0;
    return first;
}

static void vdi_close(struct qimg_image *node)
{
    struct vdi_state *s = node->state;
    qimg_table_release(&s->bmap);
}

static int vdi_open(struct qimg_image *node, const struct qimg_opts *opts,
                    struct qimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t size = 0;
    int ret;

    (void)opts;   /* none: the core refuses them after the open */
    ret = node->file->ops->pread(node->file, 0, VDI_HEADER_SIZE, s->header,
                                 err);
    if (ret < 0)
        return ret;
    ret = check_header(s->header, &size, err);
    if (ret < 0)
        return ret;
    /* Written back rounded, as QEMU writes its copy back. */
    qimg_st_le64(s->header + VDI_H_DISK_SIZE, size);
    s->image_type = qimg_ld_le32(s->header + VDI_H_IMAGE_TYPE);
    s->offset_data = qimg_ld_le32(s->header + VDI_H_OFFSET_DATA);
    s->blocks_in_image = qimg_ld_le32(s->header + VDI_H_BLOCKS_IN_IMAGE);
    s->blocks_allocated = qimg_ld_le32(s->header + VDI_H_BLOCKS_ALLOCATED);
    ret = load_bmap(node, qimg_ld_le32(s->header + VDI_H_OFFSET_BMAP), err);
    if (ret < 0)
        return ret;
    s->next_used = first_used_from(s, s->blocks_allocated);
    node->size = size;
    return 0;
}

static int vdi_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static int vdi_get_info(struct qimg_image *node, struct qimg_info *info,
                        struct qimg_error *err)
{
    (void)node;
    (void)err;
    info->cluster_size = VDI_BLOCK_SIZE;
    return 0;
}

/*
 * Lines check prints at most: a map of 512 Mi zero entries past the end
 * of a tiny file would otherwise print one per entry for hours (QEMU
 * does, after allocating 4 GiB); the counts stay exact.
 */
#define VDI_CHECK_MAX_REPORTS 10000

/* Print one problem line; with capped, not past VDI_CHECK_MAX_REPORTS. */
static void report(struct qimg_check *res, bool capped, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report(struct qimg_check *res, bool capped, const char *fmt, ...)
{
    char line[160];
    va_list ap;

    /* Counted from the corruptions found so far (each has one line). */
    if (capped && res->corruptions >= VDI_CHECK_MAX_REPORTS) {
        if (res->corruptions == VDI_CHECK_MAX_REPORTS && res->report)
            res->report(res->opaque, "ERROR: further errors not shown");
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (res->report)
        res->report(res->opaque, line);
}

/*
 * QEMU's check: every allocated entry must name a block inside the image
 * and no block twice, and blocks_allocated must count them.  There is no
 * repair (-ENOTSUP, as QEMU).
 */
static int vdi_check(struct qimg_image *node, unsigned fix,
                     struct qimg_check *res, struct qimg_error *err)
{
    struct vdi_state *s = node->state;
    uint32_t n = s->blocks_in_image, counted = 0;
    uint8_t *used;

    if (fix)
        return qimg_error_set(err, -ENOTSUP, "This image format does not "
                              "support checks");
    /* A bit per block: at most VDI_BLOCKS_IN_IMAGE_MAX / 8 = 64 MiB. */
    used = calloc(1, (size_t)n / 8 + 1);
    if (!used) {
        res->check_errors++;
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t e = vdi_entry(s, i);
        if (i >= s->bmap.n && res->corruptions > VDI_CHECK_MAX_REPORTS) {
            /* The rest are zero entries past the end of the file: each
             * one more user of block 0 (marked by the first of them). */
            counted += n - i;
            res->corruptions += (int)(n - i);
            break;
        }
        if (!VDI_IS_ALLOCATED(e))
            continue;
        if (e >= n) {
            report(res, true, "ERROR: block index %" PRIu32 " too large, is %"
                   PRIu32, i, e);
            res->corruptions++;
            continue;
        }
        counted++;
        if (used[e / 8] & (1u << (e % 8))) {
            /* QEMU prints the index twice. */
            report(res, true, "ERROR: block index %" PRIu32 " also used by %"
                   PRIu32, e, e);
            res->corruptions++;
        }
        used[e / 8] |= (uint8_t)(1u << (e % 8));
    }
    if (counted != s->blocks_allocated) {
        report(res, false, "ERROR: allocated blocks mismatch, is %" PRIu32
               ", should be %" PRIu32, counted, s->blocks_allocated);
        res->corruptions++;
    }
    free(used);
    return 0;
}

static const struct qimg_opt_desc vdi_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"static", QIMG_OPT_BOOL, "VDI static (pre-allocated) image", "off"},
};

static const char *const vdi_runtime_opts[] = {NULL};

const struct qimg_format qimg_format_vdi = {
    .name = "vdi",
    .runtime_opts = vdi_runtime_opts,
    .description = "VirtualBox VDI image",
    .state_size = sizeof(struct vdi_state),
    .create_opts = vdi_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(vdi_create_opts),
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .create = vdi_create,
    .pread = vdi_pread,
    .pwrite = vdi_pwrite,
    .flush = vdi_flush,
    .block_status = vdi_block_status,
    .get_info = vdi_get_info,
    .check = vdi_check,
};
