/*
 * vpc-io.c - the vpc data path.  Fixed images pass guest offsets through
 * to the file.  Dynamic images map each block through the BAT (on the
 * shared block-map path of lib/fmt/table): an unused entry reads as
 * zeroes and is reported as a zero area of this image, as QEMU reports
 * it; a new block goes where the footer was, its bitmap all ones, the
 * footer moved behind it, and only then the BAT entry points at it.
 *
 * Sector bitmaps are ignored on read, as QEMU ignores them.  Before data
 * goes into a block its bitmap is set to all ones (once per block and
 * open), so that readers that honour bitmaps see the data.
 */
#include <errno.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vpc/vpc.h"

static uint64_t bat_entry(const struct vpc_state *s, uint64_t i)
{
    return i < s->bat.n ? qimg_table_get(&s->bat, i) : VPC_BAT_UNUSED;
}

int vpc_map(struct qimg_image *node, uint64_t off, uint64_t len,
            struct qimg_map_ext *m, struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t bs = s->block_size, i, e;

    (void)err;
    if (s->fixed) {      /* (no block size) */
        m->kind = QIMG_MAP_DATA;
        m->host = off;
        m->len = len;
        return 0;
    }
    i = off / bs;
    m->len = bs - off % bs;
    e = bat_entry(s, i);
    if (e != VPC_BAT_UNUSED) {
        /* Within the file: open checked every block's end against it. */
        m->kind = QIMG_MAP_DATA;
        m->host = e * VPC_SECTOR + s->bitmap_size + off % bs;
        return 0;
    }
    /* Unused blocks in a row are one zero area (QEMU answers so too). */
    m->kind = QIMG_MAP_ZERO;
    while (m->len < len && bat_entry(s, ++i) == VPC_BAT_UNUSED)
        m->len += bs;
    return 0;
}

int vpc_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err)
{
    struct vpc_state *s = node->state;

    if (s->fixed)
        return node->file->ops->pread(node->file, off, len, buf, err);
    return qimg_table_pread(node, off, len, buf, vpc_map, err);
}

int vpc_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err)
{
    struct vpc_state *s = node->state;

    /* A fixed image is all data; holes in its file read as zero. */
    return qimg_table_block_status(node, off, len, ext, vpc_map, s->fixed,
                                   err);
}

static bool bitmap_known_full(const struct vpc_state *s, uint64_t i)
{
    return s->bitmap_full[i / 8] & (1u << (i % 8));
}

static void set_bitmap_known_full(struct vpc_state *s, uint64_t i)
{
    s->bitmap_full[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Before a write: every allocated block it touches gets a full bitmap. */
static int fill_bitmaps(struct qimg_image *node, uint64_t off, size_t len,
                        struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t last = (off + len - 1) / s->block_size;
    int ret = 0;

    pthread_mutex_lock(&node->lock);
    for (uint64_t i = off / s->block_size; i <= last && !ret; i++) {
        uint64_t e = bat_entry(s, i);
        if (e == VPC_BAT_UNUSED || bitmap_known_full(s, i))
            continue;
        ret = node->file->ops->pwrite(node->file, e * VPC_SECTOR,
                                      s->bitmap_size, s->ones, err);
        if (!ret)
            set_bitmap_known_full(s, i);
    }
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/* A new block's bitmap and data go at the end of the data area. */
static int vpc_allocate(struct qimg_image *node, uint64_t block_off,
                        uint64_t *host, struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t start;
    int ret;

    (void)block_off;
    ret = qimg_alloc_append(&s->alloc, (uint64_t)s->bitmap_size +
                                           s->block_size, VPC_SECTOR, &start,
                            err);
    if (ret < 0)
        return ret;
    *host = start + s->bitmap_size;
    return 0;
}

/* The data is written: bitmap, footer behind the block, then the entry. */
static int vpc_commit(struct qimg_image *node, uint64_t block_off,
                      uint64_t host, enum qimg_map_kind was,
                      struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    struct qimg_storage *st = node->file;
    uint64_t start = host - s->bitmap_size, i = block_off / s->block_size;
    int ret;

    (void)was;
    ret = st->ops->pwrite(st, start, s->bitmap_size, s->ones, err);
    if (!ret)
        ret = st->ops->pwrite(st, s->alloc.end, VPC_FOOTER_SIZE, s->footer,
                              err);
    if (!ret)
        ret = st->ops->flush(st, err);
    if (ret < 0)
        return ret;
    qimg_table_set(&s->bat, i, start / VPC_SECTOR);
    ret = qimg_table_store(&s->bat, i, 1, err);
    if (ret < 0) {
        qimg_table_set(&s->bat, i, VPC_BAT_UNUSED);
        return ret;
    }
    set_bitmap_known_full(s, i);
    return 0;
}

int vpc_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    struct qimg_table_write_ops ops = {
        .map = vpc_map, .block_size = s->block_size,
        .allocate = vpc_allocate, .commit = vpc_commit,
        /* QEMU writes only what the guest wrote into a new block. */
        .new_block_reads_zero = true,
    };
    int ret;

    if (s->fixed)
        return node->file->ops->pwrite(node->file, off, len, buf, err);
    if (!len)
        return 0;
    ret = fill_bitmaps(node, off, len, err);
    if (ret < 0)
        return ret;
    return qimg_table_pwrite(node, off, len, buf, &ops, err);
}
