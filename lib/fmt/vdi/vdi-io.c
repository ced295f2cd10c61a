/*
 * vdi-io.c - the vdi data path on the shared block-map helper
 * (lib/fmt/table): unallocated and discarded blocks read as zeroes and
 * are zero areas of this image; a write into one appends a whole block
 * (zero-filled around the data) at the next index, then the header
 * (blocks_allocated) and the block map sector are written, in QEMU's
 * order, so that a crash leaves at most an unused block that check
 * reports as a count mismatch.
 */
#include <errno.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vdi/vdi.h"

static int vdi_map(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_map_ext *m, struct qimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t i = off / VDI_BLOCK_SIZE, in = off % VDI_BLOCK_SIZE;
    uint32_t e = vdi_entry(s, i);

    (void)err;
    m->len = VDI_BLOCK_SIZE - in;
    if (VDI_IS_ALLOCATED(e)) {
        /* At most 2^32 blocks of 1 MiB after a 32-bit offset: far below
         * QIMG_MAX_LENGTH, so no overflow (reads past EOF are zeroes). */
        m->kind = QIMG_MAP_DATA;
        m->host = s->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in;
        /* Blocks in a row in the file are one extent (fewer, larger
         * reads; QEMU answers block by block, which map merges alike). */
        for (uint32_t next = e + 1; m->len < len && next < VDI_DISCARDED &&
                                    vdi_entry(s, ++i) == next; next++)
            m->len += VDI_BLOCK_SIZE;
        return 0;
    }
    m->kind = QIMG_MAP_ZERO;
    while (m->len < len && !VDI_IS_ALLOCATED(vdi_entry(s, ++i)))
        m->len += VDI_BLOCK_SIZE;
    return 0;
}

int vdi_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err)
{
    return qimg_table_pread(node, off, len, buf, vdi_map, err);
}

int vdi_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err)
{
    struct vdi_state *s = node->state;

    /* Static images are preallocated sparsely: holes read as zero. */
    return qimg_table_block_status(node, off, len, ext, vdi_map,
                                   s->image_type == VDI_TYPE_STATIC, err);
}

static int vdi_allocate(struct qimg_image *node, uint64_t block_off,
                        uint64_t *host, struct qimg_error *err)
{
    struct vdi_state *s = node->state;

    (void)block_off;
    if (s->blocks_allocated >= s->next_used)
        return qimg_error_set(err, -EIO, "Cannot allocate a block: the "
                              "block map already uses index %u (the image "
                              "needs checking)", s->blocks_allocated);
    /* Every guest block is allocated at most once, so an index past
     * blocks_in_image means a damaged header. */
    if (s->blocks_allocated >= s->blocks_in_image)
        return qimg_error_set(err, -EIO, "Cannot allocate a block: all %u "
                              "blocks are allocated (the image needs "
                              "checking)", s->blocks_in_image);
    *host = s->offset_data + (uint64_t)s->blocks_allocated * VDI_BLOCK_SIZE;
    return 0;
}

static int vdi_commit(struct qimg_image *node, uint64_t block_off,
                      uint64_t host, enum qimg_map_kind was,
                      struct qimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t i = block_off / VDI_BLOCK_SIZE;
    int ret;

    (void)host;
    (void)was;
    if (i >= s->bmap.n)    /* an entry past EOF reads as allocated */
        return qimg_error_set(err, -EIO, "Block map entry %llu is outside "
                              "the file", (unsigned long long)i);
    qimg_st_le32(s->header + VDI_H_BLOCKS_ALLOCATED, s->blocks_allocated + 1);
    ret = node->file->ops->pwrite(node->file, 0, VDI_HEADER_SIZE, s->header,
                                  err);
    if (ret < 0) {
        qimg_st_le32(s->header + VDI_H_BLOCKS_ALLOCATED, s->blocks_allocated);
        return ret;
    }
    qimg_table_set(&s->bmap, i, s->blocks_allocated++);
    return qimg_table_store(&s->bmap, i, 1, err);
}

int vdi_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err)
{
    static const struct qimg_table_write_ops ops = {
        .map = vdi_map, .block_size = VDI_BLOCK_SIZE,
        .allocate = vdi_allocate, .commit = vdi_commit,
        /* QEMU writes new blocks whole, zeroes around the data. */
        .whole_last_block = true,
    };
    return qimg_table_pwrite(node, off, len, buf, &ops, err);
}
