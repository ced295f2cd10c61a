/*
 * vdi-create.c - creating vdi images as QEMU 7.2 creates them: the
 * header at 0, the block map at 512 (every entry unallocated, or block i
 * for a static image), data after it; a static image's file is extended
 * (sparsely) to hold every block.  Only the two UUIDs differ between the
 * images QEMU and qimg create with the same options.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vdi/vdi.h"

#define VDI_TEXT "<<< QEMU VM Virtual Disk Image >>>\n"
/* QEMU's header_size for the 1.1 header it writes. */
#define VDI_CREATE_HEADER_SIZE 0x180u

/* A random UUID as VDI stores it: QEMU writes its first three fields
 * (32, 16 and 16 bits) little-endian. */
static void uuid_generate(uint8_t *out)
{
    uint8_t u[16];

    qimg_uuid_generate(u);
    qimg_st_le32(out, qimg_ld_be32(u));
    qimg_st_le16(out + 4, qimg_ld_be16(u + 4));
    qimg_st_le16(out + 6, qimg_ld_be16(u + 6));
    memcpy(out + 8, u + 8, 8);
}

static void build_header(uint8_t *h, uint64_t size, uint32_t blocks,
                         uint32_t bmap_bytes, bool is_static)
{
    memset(h, 0, VDI_HEADER_SIZE);
    memcpy(h + VDI_H_TEXT, VDI_TEXT, strlen(VDI_TEXT));
    qimg_st_le32(h + VDI_H_SIGNATURE, VDI_SIGNATURE);
    qimg_st_le32(h + VDI_H_VERSION, VDI_VERSION_1_1);
    qimg_st_le32(h + VDI_H_HEADER_SIZE, VDI_CREATE_HEADER_SIZE);
    qimg_st_le32(h + VDI_H_IMAGE_TYPE, is_static ? VDI_TYPE_STATIC
                                                 : VDI_TYPE_DYNAMIC);
    qimg_st_le32(h + VDI_H_OFFSET_BMAP, VDI_HEADER_SIZE);
    qimg_st_le32(h + VDI_H_OFFSET_DATA, VDI_HEADER_SIZE + bmap_bytes);
    qimg_st_le32(h + VDI_H_SECTOR_SIZE, VDI_SECTOR);
    qimg_st_le64(h + VDI_H_DISK_SIZE, size);
    qimg_st_le32(h + VDI_H_BLOCK_SIZE, VDI_BLOCK_SIZE);
    qimg_st_le32(h + VDI_H_BLOCKS_IN_IMAGE, blocks);
    qimg_st_le32(h + VDI_H_BLOCKS_ALLOCATED, is_static ? blocks : 0);
    uuid_generate(h + VDI_H_UUID_IMAGE);
    uuid_generate(h + VDI_H_UUID_LAST_SNAP);
}

static int write_image(struct qimg_storage *st, uint64_t size, bool is_static,
                       struct qimg_error *err)
{
    uint32_t blocks = (uint32_t)qimg_div_round_up(size, VDI_BLOCK_SIZE);
    uint32_t bmap_bytes = (uint32_t)(qimg_div_round_up((uint64_t)blocks * 4,
                                                       VDI_SECTOR) *
                                     VDI_SECTOR);
    uint8_t h[VDI_HEADER_SIZE], *bmap = NULL;
    int ret;

    build_header(h, size, blocks, bmap_bytes, is_static);
    ret = st->ops->pwrite(st, 0, sizeof(h), h, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Error writing header");
    if (bmap_bytes) {
        bmap = calloc(1, bmap_bytes);
        if (!bmap)
            return qimg_error_set(err, -ENOMEM, "Could not allocate bmap");
        for (uint32_t i = 0; i < blocks; i++)
            qimg_st_le32(bmap + 4 * (size_t)i, is_static ? i : VDI_UNALLOCATED);
        ret = st->ops->pwrite(st, VDI_HEADER_SIZE, bmap_bytes, bmap, err);
        free(bmap);
        if (ret < 0)
            return qimg_error_set(err, ret, "Error writing bmap");
    }
    if (is_static) {
        ret = st->ops->truncate(st, VDI_HEADER_SIZE + (uint64_t)bmap_bytes +
                                        (uint64_t)blocks * VDI_BLOCK_SIZE,
                                QIMG_PREALLOC_OFF, err);
        if (ret < 0) {
            /* QEMU's prefix, without a separator. */
            qimg_error_prefix(err, "Failed to statically allocate file");
            return ret;
        }
    }
    return st->ops->flush(st, err);
}

int vdi_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err)
{
    struct qimg_storage *st = NULL;
    uint64_t size = 0;
    bool is_static = false;
    int ret;

    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret < 0)
        return ret;
    ret = qimg_opts_get_bool(opts, "static", false, &is_static, err);
    if (ret < 0)
        return ret;
    /* The file first: QEMU checks the size after creating it. */
    ret = qimg_create_storage(filename, opts, &st, err);
    if (ret < 0)
        return ret;
    /* Silently rounded up to whole sectors. */
    if (!qimg_align_up(size, VDI_SECTOR, &size) || size > VDI_DISK_SIZE_MAX)
        ret = qimg_error_set(err, -ENOTSUP, "Unsupported VDI image size (size "
                             "is 0x%" PRIx64 ", max supported is 0x%" PRIx64
                             ")", size, VDI_DISK_SIZE_MAX);
    else if (qimg_div_round_up(size, VDI_BLOCK_SIZE) * 4 > VDI_MAX_BMAP_BYTES)
        /* Larger than we could open again (docs/LIMITS.md). */
        ret = qimg_error_set(err, -ENOTSUP, "Unsupported VDI image size (size "
                             "is 0x%" PRIx64 ", max supported by qimg is 0x%"
                             PRIx64 ")", size,
                             (uint64_t)(VDI_MAX_BMAP_BYTES / 4) * VDI_BLOCK_SIZE);
    else
        ret = write_image(st, size, is_static, err);
    qimg_storage_close(st);
    return ret;
}
