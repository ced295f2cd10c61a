/*
 * vhdx-metadata.c - the metadata region (MS-VHDX 2.6): its table and the
 * five required items (file parameters, virtual disk size, page 83 data,
 * logical and physical sector size), parsed in QEMU 7.2's order with its
 * error codes, and built for create.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

static const uint8_t file_param_guid[16] = {
    0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
    0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
};
static const uint8_t virtual_size_guid[16] = {
    0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
    0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8,
};
static const uint8_t page83_guid[16] = {
    0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,
    0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46,
};
static const uint8_t logical_sector_guid[16] = {
    0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,
    0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f,
};
static const uint8_t physical_sector_guid[16] = {
    0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
    0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56,
};
static const uint8_t parent_locator_guid[16] = {
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
    0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
};

/* The known items, in the order QEMU looks for them. */
enum { ITEM_PARAMS, ITEM_VSIZE, ITEM_PAGE83, ITEM_LSECTOR, ITEM_PSECTOR,
       ITEM_PARENT, N_ITEMS };
static const uint8_t *const item_guids[N_ITEMS] = {
    file_param_guid, virtual_size_guid, page83_guid, logical_sector_guid,
    physical_sector_guid, parent_locator_guid,
};
#define ITEMS_REQUIRED ((1u << ITEM_PARENT) - 1)

uint64_t vhdx_chunk_ratio(uint32_t block_size, uint32_t sector)
{
    return VHDX_MAX_SECTORS_PER_BLOCK * sector / block_size;
}

uint64_t vhdx_bat_entries(uint64_t size, uint32_t block_size,
                          uint64_t chunk_ratio)
{
    uint32_t blocks = (uint32_t)qimg_div_round_up(size, block_size);
    unsigned bits = (unsigned)__builtin_ctzll(chunk_ratio);

    /* (blocks - 1) in 32 bits: an empty image still gets the entries of
     * 2^32 - 1 blocks' sector bitmaps, as QEMU counts (and creates) them. */
    return blocks + ((uint32_t)(blocks - 1) >> bits);
}

/* Read a little-endian item of n bytes at the metadata offset off. */
static int read_item(struct qimg_image *node, uint32_t off, void *buf,
                     size_t n, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t at;

    if (qimg_add_overflow(s->meta_rt.file_offset, off, &at))
        return -EIO;    /* past the addressable range, as QEMU's read */
    return node->file->ops->pread(node->file, at, n, buf, err);
}

int vhdx_parse_metadata(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t *buf = malloc(VHDX_METADATA_TABLE_SIZE);
    uint32_t offsets[N_ITEMS] = {0};
    uint8_t b8[8];
    unsigned present = 0;
    uint16_t count;
    int ret;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, s->meta_rt.file_offset,
                                 VHDX_METADATA_TABLE_SIZE, buf, err);
    if (ret < 0)
        goto out;
    ret = -EINVAL;
    if (qimg_ld_le64(buf) != VHDX_METADATA_SIG)
        goto out;
    count = qimg_ld_le16(buf + 10);
    if ((uint32_t)count * VHDX_METADATA_ENTRY_SIZE >
        VHDX_METADATA_TABLE_SIZE - VHDX_METADATA_ENTRY_SIZE)
        goto out;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *p = buf + (i + 1) * VHDX_METADATA_ENTRY_SIZE;
        int k;

        for (k = 0; k < N_ITEMS; k++)
            if (!memcmp(p, item_guids[k], 16))
                break;
        if (k < N_ITEMS) {
            if (present & (1u << k))
                goto out;       /* duplicates are invalid */
            present |= 1u << k;
            offsets[k] = qimg_ld_le32(p + 16);
        } else if (qimg_ld_le32(p + 24) & VHDX_META_IS_REQUIRED) {
            ret = -ENOTSUP;
            goto out;
        }
    }
    /* QEMU wants exactly the five required items: a parent locator too
     * is "not supported" (differencing images are not implemented). */
    if (present != ITEMS_REQUIRED) {
        ret = -ENOTSUP;
        goto out;
    }
    ret = read_item(node, offsets[ITEM_PARAMS], b8, 8, err);
    if (ret < 0)
        goto out;
    s->block_size = qimg_ld_le32(b8);
    s->params_bits = qimg_ld_le32(b8 + 4);
    if (s->params_bits & VHDX_PARAMS_HAS_PARENT) {
        /* A parent without a locator is invalid. */
        ret = -EINVAL;
        goto out;
    }
    ret = read_item(node, offsets[ITEM_VSIZE], b8, 8, err);
    if (ret == 0)
        s->virtual_size = qimg_ld_le64(b8);
    if (ret == 0)
        ret = read_item(node, offsets[ITEM_LSECTOR], b8, 4, err);
    if (ret == 0)
        s->logical_sector = qimg_ld_le32(b8);
    if (ret == 0)
        ret = read_item(node, offsets[ITEM_PSECTOR], b8, 4, err);
    if (ret < 0)
        goto out;
    s->physical_sector = qimg_ld_le32(b8);
    ret = -EINVAL;
    if (s->block_size < VHDX_BLOCK_SIZE_MIN ||
        s->block_size > VHDX_BLOCK_SIZE_MAX)
        goto out;
    if (s->logical_sector != 512) {
        ret = -ENOTSUP;     /* QEMU reads 512-byte sectors only */
        goto out;
    }
    s->sectors_per_block = s->block_size / s->logical_sector;
    s->chunk_ratio = vhdx_chunk_ratio(s->block_size, s->logical_sector);
    if (!qimg_is_pow2(s->sectors_per_block) || !qimg_is_pow2(s->chunk_ratio) ||
        !qimg_is_pow2(s->block_size))
        goto out;
    s->chunk_ratio_bits = (unsigned)__builtin_ctzll(s->chunk_ratio);
    s->block_bits = (unsigned)__builtin_ctz(s->block_size);
    ret = 0;
out:
    free(buf);
    return ret;
}

static void put_entry(uint8_t *p, const uint8_t guid[16], uint32_t off,
                      uint32_t len, uint32_t bits)
{
    memcpy(p, guid, 16);
    qimg_st_le32(p + 16, off);
    qimg_st_le32(p + 20, len);
    qimg_st_le32(p + 24, bits);
}

void vhdx_metadata_build(uint8_t *table, uint8_t *items, uint64_t size,
                         uint32_t block_size, bool fixed)
{
    static const uint32_t lens[5] = {8, 8, 16, 4, 4};
    uint32_t off = VHDX_HEADER_BLOCK;

    memset(table, 0, VHDX_HEADER_BLOCK);
    memset(items, 0, VHDX_METADATA_ITEMS_SIZE);
    qimg_st_le64(table, VHDX_METADATA_SIG);
    qimg_st_le16(table + 10, 5);
    for (int k = 0; k < 5; k++) {
        uint32_t bits = VHDX_META_IS_REQUIRED |
                        (k ? VHDX_META_IS_VIRTUAL_DISK : 0);
        put_entry(table + (k + 1) * VHDX_METADATA_ENTRY_SIZE, item_guids[k],
                  off, lens[k], bits);
        off += lens[k];
    }
    qimg_st_le32(items, block_size);
    qimg_st_le32(items + 4, fixed ? VHDX_PARAMS_LEAVE_ALLOCATED : 0);
    qimg_st_le64(items + 8, size);
    vhdx_guid_generate(items + 16);
    qimg_st_le32(items + 32, 512);
    qimg_st_le32(items + 36, 512);
}
