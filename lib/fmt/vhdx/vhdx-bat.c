/*
 * vhdx-bat.c - the block allocation table (MS-VHDX 2.5): payload entries
 * interleaved with one sector bitmap entry per chunk, loaded whole with a
 * bound, checked at open as QEMU 7.2 checks it, and the guest -> host
 * mapping and block allocation that lib/fmt/table's data path calls.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

int vhdx_load_bat(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t blocks = qimg_div_round_up(s->virtual_size, s->block_size);
    struct qimg_table_geom g = {
        .offset = s->bat_rt.file_offset,
        .esize = 8,
        .sector = VHDX_LOG_SECTOR,
        .max_bytes = VHDX_MAX_BAT_ENTRIES * 8,
    };

    s->bat_entries = vhdx_bat_entries(s->virtual_size, s->block_size,
                                      s->chunk_ratio);
    /* QEMU's check first (same outcome), then ours: its 32-bit block
     * count wraps for huge sizes, and it allocates what the region says. */
    if (s->bat_entries > s->bat_rt.length / 8)
        return -EINVAL;
    /* QEMU reads the region in one request, which its block layer
     * refuses past BDRV_REQUEST_MAX_BYTES. */
    if (s->bat_rt.length > VHDX_QEMU_MAX_REQUEST)
        return -EIO;
    if (blocks > UINT32_MAX || s->bat_entries > VHDX_MAX_BAT_ENTRIES)
        return qimg_error_set(err, -EFBIG, "VHDX image needs %llu BAT "
                              "entries: more than %llu (a 64 TiB image with "
                              "1 MiB blocks)",
                              (unsigned long long)QIMG_MAX(blocks,
                                                           s->bat_entries),
                              (unsigned long long)VHDX_MAX_BAT_ENTRIES);
    g.n = s->bat_entries;
    return qimg_table_load(&s->bat, node->file, &g, "BAT", err);
}

int vhdx_check_bat(struct qimg_image *node, int *errors,
                   struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    int64_t fsize = node->file->ops->get_size(node->file);
    uint64_t payblocks = s->chunk_ratio;
    int ret = 0;

    if (fsize < 0) {
        qimg_message(QIMG_MSG_ERROR, "Could not determinate VHDX image file "
                     "size.\n");
        return qimg_error_set(err, (int)fsize, "%s", strerror((int)-fsize));
    }
/* QEMU's reporting: stop at the first problem at open, count them all in
 * check. */
#define BAD()                   \
    do {                        \
        ret = -EINVAL;          \
        if (!errors)            \
            return ret;         \
        (*errors)++;            \
    } while (0)
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        uint64_t e = qimg_table_get(&s->bat, i);
        uint64_t off = e & VHDX_BAT_OFFSET_MASK, len;
        uint64_t done = i * s->block_size;

        if ((e & VHDX_BAT_STATE_MASK) != VHDX_PAYLOAD_FULLY_PRESENT)
            continue;
        /* The last block may be partial.  QEMU counts i over payload and
         * bitmap entries alike here, and its subtraction wraps to a full
         * block past the end. */
        len = done <= node->size ? QIMG_MIN((uint64_t)s->block_size,
                                           node->size - done)
                                : s->block_size;
        if (off > (uint64_t)INT64_MAX - s->block_size) {
            qimg_message(QIMG_MSG_ERROR, "VHDX BAT entry %" PRIu64 " offset "
                         "overflow.\n", i);
            BAD();
        }
        if (off >= (uint64_t)fsize) {
            qimg_message(QIMG_MSG_ERROR, "VHDX BAT entry %" PRIu64 " start "
                         "offset %" PRIu64 " points after end of file (%"
                         PRIi64 "). Image has probably been truncated.\n",
                         i, off, fsize);
            BAD();
        } else if (off + len > (uint64_t)fsize) {
            qimg_message(QIMG_MSG_ERROR, "VHDX BAT entry %" PRIu64 " end "
                         "offset %" PRIu64 " points after end of file (%"
                         PRIi64 "). Image has probably been truncated.\n",
                         i, off + len - 1, fsize);
            BAD();
        }
        /* QEMU counts fully present entries (not positions) to tell
         * payload from sector bitmap entries: kept, for the same report. */
        if (payblocks--) {
            if (vhdx_range_check(s, off, s->block_size) < 0)
                BAD();
        } else {
            payblocks = s->chunk_ratio;
        }
    }
#undef BAD
    return ret;
}

/* The BAT index of the payload block holding guest offset off. */
static uint64_t bat_index(const struct vhdx_state *s, uint64_t off)
{
    uint64_t block = off >> s->block_bits;
    return block + (block >> s->chunk_ratio_bits);
}

/* The mapping of [off, off + len) inside one block; for_write refuses
 * present blocks inside the header section, as QEMU does. */
static int map_block(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_map_ext *m, bool for_write,
                     struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t idx = bat_index(s, off);
    uint64_t in_block = off & (s->block_size - 1), e, base;

    if (idx >= s->bat.n)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    e = qimg_table_get(&s->bat, idx);
    m->len = QIMG_MIN(len, s->block_size - in_block);
    m->host = 0;
    switch (e & VHDX_BAT_STATE_MASK) {
    case VHDX_PAYLOAD_ZERO:
        m->kind = QIMG_MAP_ZERO;
        return 0;
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
    case VHDX_PAYLOAD_UNMAPPED:
    case VHDX_PAYLOAD_UNMAPPED_V095:
        /* No parent (differencing images are refused): zeroes. */
        m->kind = for_write ? QIMG_MAP_UNALLOC : QIMG_MAP_ZERO;
        return 0;
    case VHDX_PAYLOAD_FULLY_PRESENT:
        base = e & VHDX_BAT_OFFSET_MASK;
        /* QEMU leaves a zero offset as it is (reading the file's start). */
        m->host = base ? base + in_block : 0;
        m->kind = QIMG_MAP_DATA;
        if (for_write && m->host < VHDX_HEADER_SECTION_END)
            return qimg_error_set(err, -EFAULT, "%s", strerror(EFAULT));
        if (!qimg_range_ok(m->host, m->len, QIMG_MAX_LENGTH))
            return qimg_error_set(err, -EIO, "%s", strerror(EIO));
        return 0;
    default:
        /* Partially present blocks belong to differencing images. */
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    }
}

int vhdx_map_read(struct qimg_image *node, uint64_t off, uint64_t len,
                  struct qimg_map_ext *m, struct qimg_error *err)
{
    return map_block(node, off, len, m, false, err);
}

int vhdx_zero_hint(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_extent *ext, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    struct qimg_map_ext m;
    struct qimg_extent fe;
    int64_t fsize;
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = map_block(node, off, len, &m, false, err);
    pthread_mutex_unlock(&node->lock);
    memset(ext, 0, sizeof(*ext));
    ext->length = m.len;
    ext->flags = QIMG_BS_DATA;
    if (ret < 0) {
        /* The read will fail and say so: nothing to hint. */
        ext->length = len;
        return 0;
    }
    if (m.kind != QIMG_MAP_DATA) {
        ext->flags = QIMG_BS_ZERO;
        return 0;
    }
    /* Present blocks are sparse where QEMU wrote nothing into them. */
    fsize = st->ops->get_size(st);
    if (fsize >= 0 && m.host >= (uint64_t)fsize) {
        ext->flags = QIMG_BS_ZERO;
        return 0;
    }
    if (!st->ops->block_status)
        return 0;
    memset(&fe, 0, sizeof(fe));
    if (st->ops->block_status(st, m.host, m.len, &fe, err) < 0)
        return 0;       /* a hint only */
    if (fe.length && fe.length < ext->length)
        ext->length = fe.length;
    if (fe.flags & QIMG_BS_ZERO)
        ext->flags = QIMG_BS_ZERO;
    return 0;
}

static int map_write(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_map_ext *m, struct qimg_error *err)
{
    return map_block(node, off, len, m, true, err);
}

/* A new block at the end of the file, 1 MiB aligned; the file is
 * extended over it so that it reads as zero (QEMU truncates too). */
static int allocate_block(struct qimg_image *node, uint64_t block_off,
                          uint64_t *host, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t old_end = s->alloc.end;
    int ret;

    (void)block_off;
    ret = qimg_alloc_append(&s->alloc, s->block_size, VHDX_MiB, host, err);
    if (ret < 0)
        return ret;
    ret = node->file->ops->truncate(node->file, s->alloc.end,
                                    QIMG_PREALLOC_OFF, err);
    if (ret < 0)
        s->alloc.end = old_end;
    return ret;
}

/* The data is written: the BAT entry goes through the log. */
static int commit_block(struct qimg_image *node, uint64_t block_off,
                        uint64_t host, enum qimg_map_kind was,
                        struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t idx = bat_index(s, block_off);
    uint64_t old = qimg_table_get(&s->bat, idx);
    uint64_t e = host | VHDX_PAYLOAD_FULLY_PRESENT;
    uint8_t le[8];
    int ret;

    (void)was;
    qimg_table_set(&s->bat, idx, e);
    qimg_st_le64(le, e);
    ret = vhdx_log_write_and_flush(node, le, sizeof(le),
                                   s->bat_rt.file_offset + idx * 8, err);
    if (ret < 0)
        qimg_table_set(&s->bat, idx, old);
    return ret;
}

void vhdx_write_ops_init(struct vhdx_state *s)
{
    s->write_ops.map = map_write;
    s->write_ops.block_size = s->block_size;
    s->write_ops.allocate = allocate_block;
    s->write_ops.commit = commit_block;
    s->write_ops.fill_from_backing = false;
    s->write_ops.new_block_reads_zero = true;
}
