/*
 * qcow2-range.c - operations on guest ranges that change the mapping
 * without guest data: zero writes and discard, preallocation, dropping
 * the tail of a shrunk image, and growing the L1 table.  All run under
 * node->lock (taken here or by the caller, as each function says).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"
#include "fmt/qcow2/qcow2-l2.h"

/* ---- zeroing and discard ------------------------------------------------- */

/* Set whole cluster at off to read as zero (v3) or unallocated. */
static int zero_cluster(struct qimg_image *node, uint64_t off, bool unmap,
                        bool discard, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    uint64_t idx, e, bm, ne, nbm = 0;
    int ret;

    if (discard) {
        ret = qcow2_get_l2(node, off, &l2, err);
        if (ret < 0 || !l2)
            return ret;
        ret = qcow2_get_l2_for_write(node, off, &l2, err);
    } else {
        ret = qcow2_get_l2_for_write(node, off, &l2, err);
    }
    if (ret < 0)
        return ret;
    idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    e = l2_get(s, l2, idx);
    bm = l2_bitmap(s, l2, idx);
    bool keep = !unmap && !(e & QCOW2_OFLAG_COMPRESSED) && host_of(e) &&
                (e & QCOW2_OFLAG_COPIED);
    if (discard && !node->backing) {
        ne = 0;   /* unallocated reads as zero without a backing file */
    } else if (discard && s->version < 3) {
        ne = 0;
    } else if (s->subcluster_bits) {
        ne = keep ? (e & ~QCOW2_OFLAG_ZERO) : 0;
        nbm = 0xffffffff00000000ull;
    } else {
        ne = (keep ? (e & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0) |
             QCOW2_OFLAG_ZERO;
    }
    (void)bm;
    l2_set(s, l2, idx, ne, nbm);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    if (!keep && (host_of(e) || (e & QCOW2_OFLAG_COMPRESSED)) && !s->data_file)
        return qcow2_release_entry(node, e, err);
    return 0;
}

static int zero_or_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                           bool unmap, bool discard, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = 0;

    pthread_mutex_lock(&node->lock);
    for (uint64_t pos = off; pos < off + len && !ret; pos += s->cluster_size)
        ret = zero_cluster(node, pos, unmap, discard, err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

static int write_zero_buffer(struct qimg_image *node, uint64_t off,
                             uint64_t len, struct qimg_error *err)
{
    void *z = calloc(1, (size_t)len);
    int ret;
    if (!z)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qcow2_pwrite(node, off, (size_t)len, z, err);
    free(z);
    return ret;
}

int qcow2_pwrite_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t end = off + len, first, last;
    int ret = 0;

    /* v2 has no zero flag; a raw data file must hold real zeroes. */
    if (s->version < 3 || (s->data_file &&
                           (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW)))
        return -ENOTSUP;
    /* Whole clusters get the zero flag (the image's last, partial cluster
     * counts as whole); partial head and tail are written as zeroes. */
    if (!qimg_align_up(off, s->cluster_size, &first))
        return -EINVAL;
    if (end == node->size) {
        if (!qimg_align_up(end, s->cluster_size, &last))
            return -EINVAL;
    } else {
        last = qimg_align_down(end, s->cluster_size);
    }
    if (first >= last)
        return -ENOTSUP;   /* no whole cluster: the core writes zeroes */
    if (off < first)
        ret = write_zero_buffer(node, off, first - off, err);
    if (!ret)
        ret = zero_or_discard(node, first, last - first,
                              flags & QIMG_ZERO_MAY_UNMAP, false, err);
    if (!ret && last < end)
        ret = write_zero_buffer(node, last, end - last, err);
    return ret;
}

int qcow2_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                  struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start, end = off + len;

    /* Only whole clusters can be discarded; partial ones are left alone. */
    if (!qimg_align_up(off, s->cluster_size, &start))
        return 0;
    if (end != node->size)
        end = qimg_align_down(end, s->cluster_size);
    if (start >= end)
        return 0;
    return zero_or_discard(node, start, end - start, true, true, err);
}

/*
 * Preallocation walks the range one L2 table at a time: the table first
 * (allocated if missing), then one contiguous run of host clusters for all
 * its unallocated entries, as QEMU lays it out.
 */
static int prealloc_l2_range(struct qimg_image *node, uint64_t start,
                             uint64_t end, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first = start >> s->cluster_bits;
    uint64_t last = (end - 1) >> s->cluster_bits, n = 0;
    uint8_t *l2;
    int64_t host = 0;
    int ret;

    ret = qcow2_get_l2_for_write(node, start, &l2, err);
    if (ret < 0)
        return ret;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t idx = c & (qcow2_l2_entries(s) - 1);
        if (!host_of(l2_get(s, l2, idx)))
            n++;
    }
    if (!n)
        return 0;
    if (!s->data_file) {
        host = qcow2_alloc_clusters(node, n, err);
        if (host < 0)
            return (int)host;
    }
    ret = qcow2_get_l2(node, start, &l2, err);
    if (ret < 0)
        return ret;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t idx = c & (qcow2_l2_entries(s) - 1);
        uint64_t h;
        if (host_of(l2_get(s, l2, idx)))
            continue;
        h = s->data_file ? (c << s->cluster_bits) : (uint64_t)host;
        l2_set(s, l2, idx, h | QCOW2_OFLAG_COPIED,
               s->subcluster_bits ? 0xffffffffull : 0);
        host += (int64_t)s->cluster_size;
    }
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    return 0;
}

int qcow2_preallocate(struct qimg_image *node, uint64_t start, uint64_t end,
                      enum qimg_prealloc mode, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    int64_t fsize;
    uint64_t want;
    int ret = 0;

    if (start >= end)
        return 0;
    pthread_mutex_lock(&node->lock);
    if (mode == QIMG_PREALLOC_FALLOC || mode == QIMG_PREALLOC_FULL) {
        /* Room in the refcount table for everything we are about to add. */
        uint64_t add = qimg_div_round_up(end - start, s->cluster_size) +
                       qimg_div_round_up(end - start, l2_span) + 2;
        ret = qcow2_relocate_reftable(node, (qcow2_image_end(node) >>
                                             s->cluster_bits) + add, err);
    }
    for (uint64_t pos = qimg_align_down(start, s->cluster_size);
         !ret && pos < end;) {
        uint64_t next = QIMG_MIN(qimg_align_down(pos, l2_span) + l2_span, end);
        ret = prealloc_l2_range(node, pos, next, err);
        pos = next;
    }
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    /* The file covers every cluster; falloc/full also allocate them. */
    fsize = node->file->ops->get_size(node->file);
    want = qcow2_image_end(node);
    if (fsize >= 0 && want > (uint64_t)fsize)
        ret = node->file->ops->truncate(node->file, want,
                                        mode == QIMG_PREALLOC_METADATA
                                            ? QIMG_PREALLOC_OFF : mode, err);
    return ret;
}

int qcow2_drop_tail(struct qimg_image *node, uint64_t from,
                    struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_span = s->cluster_size << s->l2_bits, start;
    int ret = 0;

    if (!qimg_align_up(from, s->cluster_size, &start))
        return -EINVAL;
    pthread_mutex_lock(&node->lock);
    /* Clusters past the end become unallocated and are freed. */
    for (uint64_t pos = start; !ret && pos < (uint64_t)s->l1_size * l2_span;
         pos += s->cluster_size) {
        uint8_t *l2;
        uint64_t idx, e;
        if (pos % l2_span == 0 && pos + l2_span <= (uint64_t)s->l1_size * l2_span &&
            !(s->l1_table[pos / l2_span] & QCOW2_L1E_OFFSET_MASK)) {
            pos += l2_span - s->cluster_size;
            continue;
        }
        ret = qcow2_get_l2(node, pos, &l2, err);
        if (ret < 0 || !l2)
            continue;
        idx = (pos >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
        e = l2_get(s, l2, idx);
        if (!e && !l2_bitmap(s, l2, idx))
            continue;
        ret = qcow2_get_l2_for_write(node, pos, &l2, err);
        if (ret < 0)
            break;
        l2_set(s, l2, idx, 0, 0);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        if ((host_of(e) || (e & QCOW2_OFLAG_COMPRESSED)) && !s->data_file)
            ret = qcow2_release_entry(node, e, err);
    }
    /* L2 tables wholly past the end are released too. */
    for (uint64_t i = qimg_div_round_up(start, l2_span); !ret && i < s->l1_size; i++) {
        uint64_t off = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (!off)
            continue;
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
        if (ret < 0)
            break;
        qcow2_cache_discard(&s->l2_cache, off);
        s->l1_table[i] = 0;
        ret = qcow2_write_l1_entry(node, i, err);
        if (!ret)
            ret = qcow2_free_clusters(node, off, s->cluster_size, err);
    }
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/* ---- L1 growth ----------------------------------------------------------- */

int qcow2_grow_l1(struct qimg_image *node, uint64_t min_size,
                  struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t new_size, bytes, *nt;
    uint8_t hdr[12];
    int64_t off;
    int ret;

    if (min_size <= s->l1_size)
        return 0;
    if (min_size > QCOW2_MAX_L1_SIZE / 8)
        return qimg_error_set(err, -EFBIG, "Active L1 table too large");
    new_size = min_size;
    bytes = qimg_div_round_up(new_size * 8, s->cluster_size) * s->cluster_size;
    nt = calloc(1, bytes);
    if (!nt)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_ALLOC_TABLE);
    off = qcow2_alloc_clusters(node, bytes / s->cluster_size, err);
    if (off < 0) {
        free(nt);
        return (int)off;
    }
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    for (uint64_t i = 0; i < s->l1_size; i++)
        nt[i] = htobe64(s->l1_table[i]);
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_WRITE_TABLE);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, (uint64_t)off, new_size * 8, nt,
                                      err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    qimg_st_be32(hdr, (uint32_t)new_size);
    qimg_st_be64(hdr + 4, (uint64_t)off);
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_ACTIVATE_TABLE);
    ret = node->file->ops->pwrite(node->file, 36, 12, hdr, err);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    for (uint64_t i = 0; i < new_size; i++)
        nt[i] = be64toh(nt[i]);
    uint64_t old_off = s->l1_table_offset, old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1_table);
    s->l1_table = nt;
    s->l1_size = (uint32_t)new_size;
    s->l1_table_offset = (uint64_t)off;
    if (old_bytes)
        ret = qcow2_free_clusters(node, old_off,
                                  qimg_div_round_up(old_bytes, s->cluster_size) *
                                      s->cluster_size, err);
    return ret;
}
