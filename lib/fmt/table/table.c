/*
 * table.c - allocation tables, the end-of-data cursor and the block-map
 * data path shared by the table-based formats (see table.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/table/table.h"

/* Bytes a request of the block-map write path may stage for one block
 * beyond the caller's buffer: the format's block size, which every format
 * bounds itself (vdi, vhdx: 256 MiB at most), so this only catches a
 * format that forgot to.  Formats that never stage (new_block_reads_zero
 * without fill_from_backing: vpc, whose blocks may be up to 2 GiB) are
 * not bound by it. */
#define QIMG_TABLE_MAX_BLOCK (256ull << 20)

static int geom_bytes(const struct qimg_table_geom *g, const char *what,
                      uint64_t *bytes, uint64_t *padded, uint32_t *sector,
                      struct qimg_error *err)
{
    uint32_t sec = g->sector ? g->sector : 512;

    if ((g->esize != 4 && g->esize != 8) || !qimg_is_pow2(sec))
        return qimg_error_set(err, -EINVAL, "Invalid %s geometry", what);
    if (qimg_mul_overflow(g->n, g->esize, bytes) || *bytes > g->max_bytes)
        return qimg_error_set(err, -EFBIG, "%s too large", what);
    if (!qimg_align_up(*bytes, sec, padded) || *padded > SIZE_MAX)
        return qimg_error_set(err, -EFBIG, "%s too large", what);
    *sector = sec;
    return 0;
}

static void table_fill(struct qimg_table *t, struct qimg_storage *st,
                       const struct qimg_table_geom *g, uint32_t sector)
{
    t->st = st;
    t->offset = g->offset;
    t->n = g->n;
    t->esize = g->esize;
    t->big_endian = g->big_endian;
    t->sector = sector;
}

int qimg_table_init_zero(struct qimg_table *t, struct qimg_storage *st,
                         const struct qimg_table_geom *g, const char *what,
                         struct qimg_error *err)
{
    uint64_t bytes = 0, padded = 0;
    uint32_t sector = 0;
    int ret;

    memset(t, 0, sizeof(*t));
    ret = geom_bytes(g, what, &bytes, &padded, &sector, err);
    if (ret < 0)
        return ret;
    if (!qimg_range_ok(g->offset, padded, QIMG_MAX_LENGTH))
        return qimg_error_set(err, -EINVAL, "%s offset invalid", what);
    table_fill(t, st, g, sector);
    if (!padded)
        return 0;
    t->raw = calloc(1, (size_t)padded);
    if (!t->raw)
        return qimg_error_set(err, -ENOMEM, "Could not allocate %s", what);
    t->raw_len = (size_t)padded;
    return 0;
}

int qimg_table_load(struct qimg_table *t, struct qimg_storage *st,
                    const struct qimg_table_geom *g, const char *what,
                    struct qimg_error *err)
{
    int64_t fsize;
    uint64_t bytes;
    int ret = qimg_table_init_zero(t, st, g, what, err);

    if (ret < 0 || !t->raw)
        return ret;
    bytes = t->n * t->esize;
    if (g->inside_file) {
        fsize = st->ops->get_size(st);
        if (fsize < 0 || !qimg_range_ok(g->offset, bytes, (uint64_t)fsize)) {
            qimg_table_release(t);
            return qimg_error_set(err, -EINVAL, "%s extends past the end of "
                                  "the file", what);
        }
    }
    /* Only the entries are read: the padding of the last sector stays
     * zero in memory until a write-back reads it (qimg_table_store). */
    ret = st->ops->pread(st, g->offset, (size_t)bytes, t->raw, err);
    if (ret < 0) {
        qimg_table_release(t);
        qimg_error_prefix(err, "Could not read %s: ", what);
    }
    return ret;
}

void qimg_table_release(struct qimg_table *t)
{
    free(t->raw);
    t->raw = NULL;
    t->raw_len = 0;
    t->n = 0;
}

uint64_t qimg_table_get(const struct qimg_table *t, uint64_t i)
{
    const uint8_t *p = t->raw + i * t->esize;

    if (t->esize == 4)
        return t->big_endian ? qimg_ld_be32(p) : qimg_ld_le32(p);
    return t->big_endian ? qimg_ld_be64(p) : qimg_ld_le64(p);
}

void qimg_table_set(struct qimg_table *t, uint64_t i, uint64_t v)
{
    uint8_t *p = t->raw + i * t->esize;

    if (t->esize == 4) {
        if (t->big_endian)
            qimg_st_be32(p, (uint32_t)v);
        else
            qimg_st_le32(p, (uint32_t)v);
    } else if (t->big_endian) {
        qimg_st_be64(p, v);
    } else {
        qimg_st_le64(p, v);
    }
}

int qimg_table_store(struct qimg_table *t, uint64_t first, uint64_t count,
                     struct qimg_error *err)
{
    uint64_t start, end, bytes = t->n * t->esize;
    int ret;

    if (!count || first >= t->n)
        return 0;
    if (count > t->n - first)
        count = t->n - first;
    start = qimg_align_down(first * t->esize, t->sector);
    end = (first + count) * t->esize;
    /* Whole sectors, but never past the table's last entry: the bytes
     * after it on disk may belong to something else. */
    if (!qimg_align_up(end, t->sector, &end))
        return qimg_error_set(err, -EINVAL, "Table write out of range");
    if (end > bytes)
        end = bytes;
    ret = t->st->ops->pwrite(t->st, t->offset + start, (size_t)(end - start),
                             t->raw + start, err);
    return ret;
}

int qimg_table_store_all(struct qimg_table *t, struct qimg_error *err)
{
    return qimg_table_store(t, 0, t->n, err);
}

int qimg_alloc_append(struct qimg_alloc *a, uint64_t len, uint64_t align,
                      uint64_t *off, struct qimg_error *err)
{
    uint64_t start = a->end, end;

    if (align > 1 && !qimg_align_up(start, align, &start))
        return qimg_error_set(err, -EFBIG, "Image too big: no room for a "
                              "new block");
    if (qimg_add_overflow(start, len, &end) || end > a->max)
        return qimg_error_set(err, -EFBIG, "Image too big: no room for a "
                              "new block");
    a->end = end;
    *off = start;
    return 0;
}

/* ---- data path ---------------------------------------------------------- */

static int map_locked(struct qimg_image *node, qimg_map_fn map, uint64_t off,
                      uint64_t len, struct qimg_map_ext *m,
                      struct qimg_error *err)
{
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = map(node, off, len, m, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    if (!m->len)
        return qimg_error_set(err, -EIO, "Empty mapping at offset %llu",
                              (unsigned long long)off);
    if (m->len > len)
        m->len = len;
    return 0;
}

int qimg_table_pread(struct qimg_image *node, uint64_t off, size_t len,
                     void *buf, qimg_map_fn map, struct qimg_error *err)
{
    return qimg_table_pread_events(node, off, len, buf, map, false, err);
}

int qimg_table_pread_events(struct qimg_image *node, uint64_t off, size_t len,
                            void *buf, qimg_map_fn map, bool events,
                            struct qimg_error *err)
{
    uint8_t *p = buf;

    while (len) {
        struct qimg_map_ext m;
        int ret = map_locked(node, map, off, len, &m, err);
        if (ret < 0)
            return ret;
        size_t n = (size_t)m.len;
        switch (m.kind) {
        case QIMG_MAP_DATA:
            if (events)
                qimg_storage_event(node->file, QIMG_EV_READ_AIO);
            ret = node->file->ops->pread(node->file, m.host, n, p, err);
            break;
        case QIMG_MAP_ZERO:
            memset(p, 0, n);
            break;
        default:
            if (events && node->backing)
                qimg_storage_event(node->file, QIMG_EV_READ_BACKING_AIO);
            ret = qimg_read_backing(node, off, n, p, err);
            break;
        }
        if (ret < 0)
            return ret;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

int qimg_table_block_status(struct qimg_image *node, uint64_t off,
                            uint64_t len, struct qimg_extent *ext,
                            qimg_map_fn map, bool recurse_file,
                            struct qimg_error *err)
{
    struct qimg_map_ext m;
    int ret = map_locked(node, map, off, len, &m, err);

    if (ret < 0)
        return ret;
    memset(ext, 0, sizeof(*ext));
    ext->length = m.len;
    switch (m.kind) {
    case QIMG_MAP_DATA:
        ext->flags = QIMG_BS_ALLOCATED | QIMG_BS_DATA | QIMG_BS_OFFSET_VALID;
        if (recurse_file)
            ext->flags |= QIMG_BS_RECURSE_FILE;
        ext->host_offset = m.host;
        ext->host_file = node->file->filename;
        break;
    case QIMG_MAP_ZERO:
        ext->flags = QIMG_BS_ALLOCATED | QIMG_BS_ZERO;
        break;
    default:
        break;
    }
    return 0;
}

/*
 * Write [off, off + n) into the new block at block_off, n inside it: the
 * block is staged whole (filled as ops say) and written, or with
 * new_block_reads_zero just the covered bytes are; then it is committed.
 * Called with node->lock held.
 */
static int write_new_block(struct qimg_image *node, uint64_t block_off,
                           uint64_t off, size_t n, const uint8_t *data,
                           enum qimg_map_kind was,
                           const struct qimg_table_write_ops *ops,
                           struct qimg_error *err)
{
    uint64_t bs = ops->block_size, host;
    uint64_t blen = ops->whole_last_block ? bs
                                          : QIMG_MIN(bs, node->size - block_off);
    uint8_t *block = NULL;
    int ret;

    ret = ops->allocate(node, block_off, &host, err);
    if (ret < 0)
        return ret;
    if (n == blen) {
        ret = node->file->ops->pwrite(node->file, host, n, data, err);
    } else if (ops->new_block_reads_zero &&
               !(ops->fill_from_backing && was == QIMG_MAP_UNALLOC)) {
        ret = node->file->ops->pwrite(node->file, host + (off - block_off),
                                      n, data, err);
    } else {
        block = malloc((size_t)bs);
        if (!block)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        /* Past node->size (whole_last_block) the block reads as zero. */
        memset(block, 0, (size_t)blen);
        if (ops->fill_from_backing && was == QIMG_MAP_UNALLOC)
            ret = qimg_read_backing(node, block_off,
                                    (size_t)QIMG_MIN(blen, node->size -
                                                               block_off),
                                    block, err);
        if (ret == 0) {
            memcpy(block + (off - block_off), data, n);
            ret = node->file->ops->pwrite(node->file, host, (size_t)blen,
                                          block, err);
        }
        free(block);
    }
    if (ret < 0)
        return ret;
    return ops->commit(node, block_off, host, was, err);
}

int qimg_table_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                      const void *buf, const struct qimg_table_write_ops *ops,
                      struct qimg_error *err)
{
    const uint8_t *p = buf;
    uint64_t bs = ops->block_size;

    /* Only a block that is staged in memory needs the bound. */
    if (!bs ||
        (bs > QIMG_TABLE_MAX_BLOCK &&
         !(ops->new_block_reads_zero && !ops->fill_from_backing)))
        return qimg_error_set(err, -EINVAL, "Invalid block size");
    while (len) {
        struct qimg_map_ext m;
        uint64_t block_off = off - off % bs;
        size_t n = (size_t)QIMG_MIN((uint64_t)len, block_off + bs - off);
        int ret;

        pthread_mutex_lock(&node->lock);
        ret = ops->map(node, off, len, &m, err);
        if (ret == 0 && !m.len)
            ret = qimg_error_set(err, -EIO, "Empty mapping at offset %llu",
                                 (unsigned long long)off);
        if (ret == 0 && m.kind != QIMG_MAP_DATA) {
            /* A new block: allocation, data and table entry in order,
             * under the lock (see table.h). */
            ret = write_new_block(node, block_off, off, n, p, m.kind, ops,
                                  err);
            pthread_mutex_unlock(&node->lock);
            if (ret < 0)
                return ret;
        } else {
            pthread_mutex_unlock(&node->lock);
            if (ret < 0)
                return ret;
            /* In place: as far as the host range goes contiguous. */
            n = (size_t)QIMG_MIN((uint64_t)len, m.len);
            ret = node->file->ops->pwrite(node->file, m.host, n, p, err);
            if (ret < 0)
                return ret;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}
