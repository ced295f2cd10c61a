/*
 * qcow2-refcount.c - reference counts of host clusters: the refcount table
 * (in memory, host order), refcount blocks (through the cache), updates,
 * and cluster allocation.  All functions run with node->lock held (or
 * during open/create when nothing else runs).
 *
 * Ordering for crash safety: a cluster's refcount is raised (and reaches
 * the disk, see the cache dependency) before anything points at it; new
 * refcount blocks are written before the table entry that points at them;
 * a grown table is written completely before the header switches to it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

uint64_t qcow2_refcount_read_entry(const struct qcow2_state *s,
                                   const uint8_t *block, uint64_t index)
{
    switch (s->refcount_order) {
    case 0: return (block[index / 8] >> (index % 8)) & 1;
    case 1: return (block[index / 4] >> (2 * (index % 4))) & 3;
    case 2: return (block[index / 2] >> (4 * (index % 2))) & 15;
    case 3: return block[index];
    case 4: return qimg_ld_be16(block + 2 * index);
    case 5: return qimg_ld_be32(block + 4 * index);
    default: return qimg_ld_be64(block + 8 * index);
    }
}

void qcow2_refcount_write_entry(const struct qcow2_state *s, uint8_t *block,
                                uint64_t index, uint64_t value)
{
    unsigned shift, mask;
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        unsigned bits = 1u << s->refcount_order;
        unsigned per_byte = 8 / bits;
        shift = bits * (unsigned)(index % per_byte);
        mask = ((1u << bits) - 1) << shift;
        block[index / per_byte] = (uint8_t)((block[index / per_byte] & ~mask) |
                                            ((value << shift) & mask));
        return;
    }
    case 3: block[index] = (uint8_t)value; return;
    case 4: qimg_st_be16(block + 2 * index, (uint16_t)value); return;
    case 5: qimg_st_be32(block + 4 * index, (uint32_t)value); return;
    default: qimg_st_be64(block + 8 * index, value); return;
    }
}

int qcow2_refcount_load(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    int ret;

    if (bytes > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EFBIG, "Reference count table too large");
    if (!s->refcount_table_clusters && (node->flags & QIMG_OPEN_CHECK)) {
        /* No table: every count reads as 0, check rebuilds them. */
        s->refcount_table_size = 0;
        s->refcount_table = calloc(1, 8);
        return s->refcount_table ? 0 : qimg_error_set(err, -ENOMEM,
                                                      "Out of memory");
    }
    if (!s->refcount_table_clusters ||
        (s->refcount_table_offset & (s->cluster_size - 1)) ||
        !qimg_range_ok(s->refcount_table_offset, bytes, INT64_MAX))
        return qimg_error_set(err, -EINVAL, "Invalid reference count table "
                              "offset");
    s->refcount_table_size = bytes / 8;
    s->refcount_table = malloc(bytes);
    if (!s->refcount_table)
        return qimg_error_set(err, -ENOMEM, "Could not allocate refcount table");
    qimg_storage_event(node->file, QIMG_EV_REFTABLE_LOAD);
    ret = node->file->ops->pread(node->file, s->refcount_table_offset,
                                 (size_t)bytes, s->refcount_table, err);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < s->refcount_table_size; i++)
        s->refcount_table[i] = be64toh(s->refcount_table[i]);
    return 0;
}

/* The refcount block at off, entry table_index of the refcount table. */
static int get_refblock_at(struct qimg_image *node, uint64_t off,
                           uint64_t table_index, uint8_t **block,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (off & (s->cluster_size - 1)) {
        return qcow2_signal_corruption(node, true, err, "Refblock offset "
                              "%#llx unaligned (reftable index: %#llx)",
                              (unsigned long long)off,
                              (unsigned long long)table_index);
    }
    return qcow2_cache_get(node, &s->refblock_cache, off, block, err);
}

static int get_refblock(struct qimg_image *node, uint64_t table_index,
                        uint8_t **block, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    return get_refblock_at(node, s->refcount_table[table_index] &
                                     QCOW2_REFT_OFFSET_MASK,
                           table_index, block, err);
}

int qcow2_get_refcount(struct qimg_image *node, uint64_t cluster_index,
                       uint64_t *refcount, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t ti = cluster_index >> s->refcount_block_bits;
    uint8_t *block;
    int ret;

    if (ti >= s->refcount_table_size || !s->refcount_table[ti]) {
        *refcount = 0;
        return 0;
    }
    if (!(s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK)) {
        *refcount = 0;   /* only reserved bits set: no block */
        return 0;
    }
    ret = get_refblock(node, ti, &block, err);
    if (ret < 0)
        return ret;
    *refcount = qcow2_refcount_read_entry(s, block,
                                          cluster_index &
                                          ((1ull << s->refcount_block_bits) - 1));
    return 0;
}

/*
 * Allocation follows QEMU's algorithm step by step, so that images keep
 * QEMU's layout (the same clusters in the same places after the same
 * operations):
 *   - free clusters are searched from a cursor that moves past every
 *     cluster looked at (alloc_noref), so it ends after the run found;
 *     a refcount dropping to 0 moves it back;
 *   - a refcount update that needs a refcount block first creates it in
 *     the next free cluster (counting itself when it covers itself) and
 *     then tells the allocator to look again (-EAGAIN), since the block
 *     may sit where the caller meant to put its data;
 *   - a refcount table too small for a new block is replaced by a
 *     self-describing area (qcow2_refcount_area) past everything the
 *     blocks so far can cover.
 */

/* Index of the last refcount table entry that names a block (0: none). */
static uint64_t last_used_reftable_index(const struct qcow2_state *s)
{
    uint64_t i = s->refcount_table_size ? s->refcount_table_size - 1 : 0;

    while (i > 0 && !(s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK))
        i--;
    return i;
}

static void claim_pending(struct qimg_image *node, uint64_t off,
                          uint64_t len);

/*
 * Find n free clusters from the cursor without taking references.  The
 * cursor ends after the run.  Cluster 0 is the header whatever a corrupt
 * refcount says.  Returns the run's host offset.
 */
static int64_t alloc_noref(struct qimg_image *node, uint64_t n, uint64_t max,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t found = 0;

    if (!s->free_cluster_index)
        s->free_cluster_index = 1;
    while (found < n) {
        uint64_t ci = s->free_cluster_index++, rc;
        int ret;
        if (ci > (max >> s->cluster_bits))
            return qimg_error_set(err, -EFBIG, "Image file too large");
        ret = qcow2_get_refcount(node, ci, &rc, err);
        if (ret < 0)
            return ret;
        found = rc ? 0 : found + 1;
    }
    claim_pending(node, (s->free_cluster_index - n) << s->cluster_bits,
                  n << s->cluster_bits);
    return (int64_t)((s->free_cluster_index - n) << s->cluster_bits);
}

static int update_refcount_once(struct qimg_image *node, uint64_t offset,
                                uint64_t len, int64_t delta,
                                struct qimg_error *err);

/* Freed clusters to discard in the file, merged while adjacent. */
static void issue_discard(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;

    if (s->discard_len && node->file->ops->discard)
        node->file->ops->discard(node->file, s->discard_off, s->discard_len,
                                 NULL);   /* optional: errors ignored */
    s->discard_len = 0;
}

static void queue_discard(struct qimg_image *node, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->state;

    if (s->discard_len && off == s->discard_off + s->discard_len) {
        s->discard_len += len;
        return;
    }
    if (s->discard_len && off + len == s->discard_off) {
        s->discard_off = off;
        s->discard_len += len;
        return;
    }
    issue_discard(node);
    s->discard_off = off;
    s->discard_len = len;
}

/*
 * A cluster about to be used again must not be discarded afterwards: the
 * pending range (clusters freed since qcow2_discards_begin, all still
 * free) goes out now when the allocation touches it.  Without this a
 * zero write that frees a cluster and then allocates an L2 table could
 * get the table's cluster trimmed at qcow2_discards_end.
 */
static void claim_pending(struct qimg_image *node, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->state;

    if (s->discard_len && off < s->discard_off + s->discard_len &&
        s->discard_off < off + len)
        issue_discard(node);
}

unsigned qcow2_discards_suspend(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    unsigned depth = s->discard_freed;

    if (depth)
        issue_discard(node);
    s->discard_freed = 0;
    return depth;
}

void qcow2_discards_resume(struct qimg_image *node, unsigned depth)
{
    qcow2_state(node)->discard_freed += depth;
}

void qcow2_discards_begin(struct qimg_image *node)
{
    qcow2_state(node)->discard_freed++;
}

void qcow2_discards_end(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;

    if (s->discard_freed && !--s->discard_freed)
        issue_discard(node);
}

/* Point refcount table entry ti at the block at off (written first). */
static int hook_refblock(struct qimg_image *node, uint64_t ti, uint64_t off,
                         struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[8];
    int ret;

    qimg_st_be64(be, off);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_HOOKUP);
    ret = node->file->ops->pwrite(node->file, s->refcount_table_offset + ti * 8,
                                  8, be, err);
    if (ret < 0)
        return ret;
    s->refcount_table[ti] = off;
    return 0;
}

/*
 * Make sure the refcount block covering cluster ci exists.  Returns 0
 * when it did, -EAGAIN when it (and possibly a new refcount table) was
 * created: the caller's free clusters may have been taken.
 */
static int alloc_refcount_block(struct qimg_image *node, uint64_t ci,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t ti = ci >> s->refcount_block_bits;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    uint8_t *block;
    int64_t nb;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC);
    if (ti < s->refcount_table_size &&
        (s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK)) {
        uint64_t off = s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK;
        if (off & (s->cluster_size - 1))
            return qcow2_signal_corruption(node, true, err, "Refblock offset "
                                           "%#llx unaligned (reftable index: "
                                           "%#llx)", (unsigned long long)off,
                                           (unsigned long long)ti);
        return 0;
    }
    nb = alloc_noref(node, 1, INT64_MAX, err);
    if (nb < 0)
        return (int)nb;
    if (((uint64_t)nb >> s->cluster_bits >> s->refcount_block_bits) == ti) {
        /* The block describes itself. */
        ret = qcow2_cache_get_empty(node, &s->refblock_cache, (uint64_t)nb,
                                    &block, err);
        if (ret < 0)
            return ret;
        qcow2_refcount_write_entry(s, block,
                                   ((uint64_t)nb >> s->cluster_bits) &
                                       (per_block - 1), 1);
    } else {
        /* Counted elsewhere; that block may have to be created first. */
        ret = update_refcount_once(node, (uint64_t)nb, s->cluster_size, 1, err);
        if (ret < 0)
            return ret;
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
        if (ret < 0)
            return ret;
        ret = qcow2_cache_get_empty(node, &s->refblock_cache, (uint64_t)nb,
                                    &block, err);
        if (ret < 0)
            return ret;
    }
    /* The block must be on disk before the table points at it. */
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE);
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    if (ti < s->refcount_table_size) {
        ret = hook_refblock(node, ti, (uint64_t)nb, err);
        return ret < 0 ? ret : -EAGAIN;
    }
    /* A new table: its area starts past what the blocks in use (this one
     * included) cover. */
    qimg_storage_event(node->file, QIMG_EV_REFTABLE_GROW);
    uint64_t used = qimg_div_round_up(QIMG_MAX(ci + 1,
                                               ((uint64_t)nb >> s->cluster_bits) + 1),
                                      per_block);
    int64_t end = qcow2_refcount_area(node, (used * per_block) << s->cluster_bits,
                                      0, false, ti, (uint64_t)nb, err);
    return end < 0 ? (int)end : -EAGAIN;
}

/* One pass of a refcount update; -EAGAIN (nothing changed) when a
 * refcount block had to be created on the way. */
static int update_refcount_once(struct qimg_image *node, uint64_t offset,
                                uint64_t len, int64_t delta,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first, last, ci, per_block = 1ull << s->refcount_block_bits;
    uint64_t prev_ti = UINT64_MAX;
    int ret = 0;

    if (!len)
        return 0;
    first = offset >> s->cluster_bits;
    last = (offset + len - 1) >> s->cluster_bits;
    for (ci = first; ci <= last; ci++) {
        uint64_t ti = ci >> s->refcount_block_bits, rc;
        uint8_t *block;

        if (ti != prev_ti) {
            ret = alloc_refcount_block(node, ci, err);
            if (ret == -EAGAIN && s->free_cluster_index > first)
                s->free_cluster_index = first;
            if (ret < 0)
                break;
            prev_ti = ti;
        }
        ret = get_refblock(node, ti, &block, err);
        if (ret < 0)
            break;
        rc = qcow2_refcount_read_entry(s, block, ci & (per_block - 1));
        if ((delta < 0 && rc < (uint64_t)-delta) ||
            (delta > 0 && s->refcount_max - rc < (uint64_t)delta)) {
            ret = qimg_error_set(err, -EINVAL,
                                 "Refcount of cluster %llu would %s",
                                 (unsigned long long)ci,
                                 delta < 0 ? "drop below zero" : "overflow");
            break;
        }
        if (!rc && delta > 0)
            claim_pending(node, ci << s->cluster_bits, s->cluster_size);
        rc += (uint64_t)delta;
        qcow2_refcount_write_entry(s, block, ci & (per_block - 1), rc);
        qcow2_cache_mark_dirty(&s->refblock_cache, block);
        if (rc == 0) {
            if (ci < s->free_cluster_index)
                s->free_cluster_index = ci;
            if (s->discard_freed)
                queue_discard(node, ci << s->cluster_bits, s->cluster_size);
            /* A freed table is no table any more. */
            qcow2_cache_discard(&s->l2_cache, ci << s->cluster_bits);
            if ((ci << s->cluster_bits) !=
                (s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK))
                qcow2_cache_discard(&s->refblock_cache, ci << s->cluster_bits);
        }
    }
    if (ret < 0 && ci > first) {
        /* Undo what was done, as QEMU tries to. */
        struct qimg_error ignored = {0};
        (void)update_refcount_once(node, offset, (ci - first) << s->cluster_bits,
                                   -delta, &ignored);
    }
    return ret;
}

int qcow2_update_refcount(struct qimg_image *node, uint64_t offset,
                          uint64_t len, int64_t delta, struct qimg_error *err)
{
    int ret;

    do
        ret = update_refcount_once(node, offset, len, delta, err);
    while (ret == -EAGAIN);
    return ret;
}

int qcow2_update_refcount_no_retry(struct qimg_image *node, uint64_t offset,
                                   uint64_t len, int64_t delta,
                                   struct qimg_error *err)
{
    int ret = update_refcount_once(node, offset, len, delta, err);

    if (ret == -EAGAIN)
        qimg_error_set(err, ret, "%s", strerror(EAGAIN));
    return ret;
}

int64_t qcow2_alloc_clusters(struct qimg_image *node, uint64_t n,
                             struct qimg_error *err)
{
    int64_t off;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC);
    do {
        off = alloc_noref(node, n, QCOW2_MAX_HOST_OFFSET, err);
        if (off < 0)
            return off;
        ret = update_refcount_once(node, (uint64_t)off,
                                   n << qcow2_state(node)->cluster_bits, 1, err);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : off;
}

int64_t qcow2_alloc_clusters_at(struct qimg_image *node, uint64_t offset,
                                uint64_t n, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t i;
    int ret;

    if (!n)
        return 0;
    do {
        for (i = 0; i < n; i++) {
            uint64_t rc;
            ret = qcow2_get_refcount(node, (offset >> s->cluster_bits) + i, &rc,
                                     err);
            if (ret < 0)
                return ret;
            if (rc)
                break;
        }
        ret = update_refcount_once(node, offset, i << s->cluster_bits, 1, err);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : (int64_t)i;
}

/*
 * Compressed data is packed: each allocation continues where the previous
 * one ended (s->free_byte_offset), running into the next cluster when
 * that is the next free one.  Every cluster a piece touches holds one
 * reference for it.  len is at most a cluster.
 */
int64_t qcow2_alloc_bytes(struct qimg_image *node, uint64_t len,
                          struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, off = s->free_byte_offset, free_in;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC_BYTES);
    if (!len || len > cs)
        return qimg_error_set(err, -EINVAL, "Invalid compressed size");
    if (off) {
        uint64_t rc;
        ret = qcow2_get_refcount(node, off >> s->cluster_bits, &rc, err);
        if (ret < 0)
            return ret;
        if (rc >= s->refcount_max)   /* a shared cluster takes no more */
            off = 0;
    }
    free_in = cs - (off & (cs - 1));
    do {
        if (!off || free_in < len) {
            int64_t nc = alloc_noref(node, 1, QIMG_MIN(s->cluster_offset_mask,
                                                       QCOW2_MAX_HOST_OFFSET),
                                     err);
            if (nc < 0)
                return nc;
            if (!off || qimg_align_down(off + cs - 1, cs) != (uint64_t)nc) {
                off = (uint64_t)nc;
                free_in = cs;
            } else {
                free_in += cs;
            }
        }
        ret = update_refcount_once(node, off, len, 1, err);
        if (ret < 0 && ret != -EAGAIN)
            return ret;
        if (ret < 0)
            off = 0;
    } while (ret == -EAGAIN);
    s->free_byte_offset = ((off + len) & (cs - 1)) ? off + len : 0;
    return (int64_t)off;
}

int qcow2_free_clusters(struct qimg_image *node, uint64_t offset, uint64_t len,
                        struct qimg_error *err)
{
    qimg_storage_event(node->file, QIMG_EV_CLUSTER_FREE);
    return qcow2_update_refcount(node, offset, len, -1, err);
}

/*
 * Create self-describing refcount structures at start (the end of the
 * image: nothing is allocated past it): new refcount blocks for every
 * range from start's that has none, then a new table covering them and
 * `additional` clusters after its end, 50% larger than needed unless
 * exact.  An existing block new_off (not yet in the table) is entered at
 * index new_idx.  The header switches to the new table in one write and
 * the old table is freed.  Returns the end of the new structures (where
 * the additional clusters may go).
 */
int64_t qcow2_refcount_area(struct qimg_image *node, uint64_t start,
                            uint64_t additional, bool exact, uint64_t new_idx,
                            uint64_t new_off, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, per_block = 1ull << s->refcount_block_bits;
    uint64_t total, size, tclusters, area_idx, add = 0, copy, tab_off, end;
    uint64_t boff, *table, max_idx;
    uint8_t hdr[12];
    int ret = 0;

    qcow2_refcount_metadata_size(start / cs + additional, cs, s->refcount_order,
                                 !exact, &total);
    size = exact ? total : total + qimg_div_round_up(total, 2);
    size = qimg_div_round_up(size, cs / 8) * (cs / 8);
    if (!size || size * 8 > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EFBIG, "Reference count table too large");
    tclusters = size * 8 / cs;
    area_idx = (start / cs) >> s->refcount_block_bits;
    if (new_off && new_idx >= total)
        return qimg_error_set(err, -EIO, "Refcount block outside the new "
                              "table");
    table = calloc(size, 8);
    if (!table)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    max_idx = last_used_reftable_index(s);
    copy = QIMG_MIN(QIMG_MIN(max_idx + 1, size), s->refcount_table_size);
    memcpy(table, s->refcount_table, copy * 8);
    if (new_off)
        table[new_idx] = new_off;
    for (uint64_t i = area_idx; i < total; i++)
        add += !(table[i] & QCOW2_REFT_OFFSET_MASK);
    tab_off = start + add * cs;
    end = tab_off + tclusters * cs;

    /* The blocks of the area count every cluster of the new structures. */
    boff = start;
    for (uint64_t i = area_idx; i < total && !ret; i++) {
        uint64_t first = i * per_block * cs;
        uint8_t *block;
        if (table[i] & QCOW2_REFT_OFFSET_MASK) {
            table[i] &= QCOW2_REFT_OFFSET_MASK;
            ret = get_refblock_at(node, table[i], i, &block, err);
        } else {
            ret = qcow2_cache_get_empty(node, &s->refblock_cache, boff, &block,
                                        err);
            table[i] = boff;
            boff += cs;
        }
        if (ret < 0 || first >= end)
            continue;
        uint64_t j = first < start ? (start - first) / cs : 0;
        uint64_t stop = QIMG_MIN((end - first) / cs, per_block);
        for (; j < stop; j++)
            qcow2_refcount_write_entry(s, block, j, 1);
        qcow2_cache_mark_dirty(&s->refblock_cache, block);
    }
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE_BLOCKS);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    for (uint64_t i = 0; i < size; i++)
        table[i] = htobe64(table[i]);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE_TABLE);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, tab_off, size * 8, table, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    for (uint64_t i = 0; i < size; i++)
        table[i] = be64toh(table[i]);
    qimg_st_be64(hdr, tab_off);
    qimg_st_be32(hdr + 8, (uint32_t)tclusters);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_SWITCH_TABLE);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, 48, 12, hdr, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        free(table);
        return ret;
    }
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_len = (uint64_t)s->refcount_table_clusters * cs;
    free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_size = size;
    s->refcount_table_offset = tab_off;
    s->refcount_table_clusters = (uint32_t)tclusters;
    qcow2_free_clusters_or_warn(node, old_off, old_len, false);
    return (int64_t)end;
}
uint64_t qcow2_image_end(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    struct qimg_error err;

    for (uint64_t ti = s->refcount_table_size; ti-- > 0;) {
        uint8_t *block;
        if (!s->refcount_table[ti] || get_refblock(node, ti, &block, &err) < 0)
            continue;
        for (uint64_t i = per_block; i-- > 0;)
            if (qcow2_refcount_read_entry(s, block, i))
                return (ti * per_block + i + 1) << s->cluster_bits;
    }
    return 0;
}

/* A dropped refcount block gives up its own reference (counted in the
 * block covering it, which must say 1). */
static int drop_refblock(struct qimg_image *node, uint64_t off,
                         struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t ci = off >> s->cluster_bits, ti = ci >> s->refcount_block_bits;
    uint64_t bi = ci & ((1ull << s->refcount_block_bits) - 1), cover, rc;
    uint8_t *block;
    int ret;

    cover = ti < s->refcount_table_size
                ? s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK : 0;
    if (!cover)
        return qcow2_signal_corruption(node, true, err, "Refblock at %#llx is "
                                       "not covered by the refcount "
                                       "structures", (unsigned long long)off);
    ret = get_refblock_at(node, cover, ti, &block, err);
    if (ret < 0)
        return ret;
    rc = qcow2_refcount_read_entry(s, block, bi);
    if (rc != 1) {
        qcow2_signal_corruption(node, true, NULL, "Invalid refcount: refblock "
                                "offset %#llx, reftable index %llu, block "
                                "offset %#llx, refcount %#llx",
                                (unsigned long long)cover,
                                (unsigned long long)ti, (unsigned long long)off,
                                (unsigned long long)rc);
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    }
    qcow2_refcount_write_entry(s, block, bi, 0);
    qcow2_cache_mark_dirty(&s->refblock_cache, block);
    if (ci < s->free_cluster_index)
        s->free_cluster_index = ci;
    qcow2_cache_discard(&s->refblock_cache, off);
    if (s->discard_freed)
        queue_discard(node, off, s->cluster_size);
    return 0;
}

int qcow2_shrink_reftable(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t n = s->refcount_table_size, per_block = 1ull << s->refcount_block_bits;
    uint64_t *tmp = calloc(n ? n : 1, 8);
    int ret = 0;

    if (!tmp)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < n && !ret; i++) {
        uint64_t off = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        uint8_t *block;
        bool unused;

        tmp[i] = 0;
        if (!off)
            continue;
        ret = get_refblock_at(node, off, i, &block, err);
        if (ret < 0)
            break;
        /* A block counting itself is unused when that is all it counts. */
        if ((off >> s->cluster_bits >> s->refcount_block_bits) == i) {
            uint64_t bi = (off >> s->cluster_bits) & (per_block - 1);
            uint64_t rc = qcow2_refcount_read_entry(s, block, bi);
            qcow2_refcount_write_entry(s, block, bi, 0);
            unused = qimg_buffer_is_zero(block, s->cluster_size);
            qcow2_refcount_write_entry(s, block, bi, rc);
        } else {
            unused = qimg_buffer_is_zero(block, s->cluster_size);
        }
        tmp[i] = unused ? 0 : htobe64(s->refcount_table[i]);
    }
    if (!ret) {
        ret = node->file->ops->pwrite(node->file, s->refcount_table_offset,
                                      n * 8, tmp, err);
        if (!ret)
            ret = node->file->ops->flush(node->file, err);
        /* After a failed write the table on disk may be half new: forget
         * the dropped blocks in memory either way. */
        for (uint64_t i = 0; i < n; i++) {
            if (!s->refcount_table[i] || tmp[i])
                continue;
            if (!ret)
                ret = drop_refblock(node, s->refcount_table[i] &
                                              QCOW2_REFT_OFFSET_MASK, err);
            s->refcount_table[i] = 0;
        }
    }
    free(tmp);
    return ret;
}

static void set_refcount_order(struct qcow2_state *s, uint32_t order)
{
    s->refcount_order = order;
    s->refcount_bits = 1u << order;
    s->refcount_block_bits = s->cluster_bits + 3 - order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (1ull << s->refcount_bits) - 1;
}

/*
 * Changing the refcount width, as QEMU does it: walks over the old
 * refcount table build the new refcount blocks (entry by entry, in the
 * new width) and hand each finished one to an operation.  The allocating
 * walks take clusters for the new blocks (and then the new table) in the
 * old structure, until a walk allocates nothing; the last walk writes the
 * blocks.  Then the new table, the header, and the old structure is
 * freed (in the new one).
 */
struct reorder {
    struct qimg_image *node;
    uint32_t order;              /* the new width */
    uint64_t block_entries;      /* entries of a new refcount block */
    uint64_t *table;             /* the new table (host order) */
    uint64_t table_size;         /* entries */
    uint64_t index;              /* next new block's table index */
    uint8_t *block;              /* the new block being built (or NULL) */
    bool allocated;
    void (*status)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
};

typedef int (*reorder_op)(struct reorder *r, bool empty, struct qimg_error *err);

static int reorder_alloc(struct reorder *r, bool empty, struct qimg_error *err)
{
    struct qcow2_state *s = r->node->state;
    int64_t off;

    if (empty)
        return 0;
    if (r->index >= r->table_size) {
        uint64_t n = qimg_div_round_up(r->index + 1, s->cluster_size / 8) *
                     (s->cluster_size / 8);
        uint64_t *t;
        if (n > QCOW2_MAX_REFTABLE_SIZE / 8)
            return qimg_error_set(err, -ENOTSUP, "This operation would make the "
                                  "refcount table grow beyond the maximum size "
                                  "supported by QEMU, aborting");
        t = realloc(r->table, n * 8);
        if (!t)
            return qimg_error_set(err, -ENOMEM, "Failed to increase reftable "
                                  "buffer size");
        memset(t + r->table_size, 0, (n - r->table_size) * 8);
        r->table = t;
        r->table_size = n;
    }
    if (!r->table[r->index]) {
        off = qcow2_alloc_clusters(r->node, 1, err);
        if (off < 0) {
            qimg_error_prefix(err, "Failed to allocate refblock: ");
            return (int)off;
        }
        r->table[r->index] = (uint64_t)off;
        r->allocated = true;
    }
    return 0;
}

static int reorder_flush(struct reorder *r, bool empty, struct qimg_error *err)
{
    struct qcow2_state *s = r->node->state;
    uint64_t off;
    int ret;

    if (r->index >= r->table_size || !r->table[r->index])
        return empty ? 0 : qimg_error_set(err, -EIO, "Refcount block was not "
                                          "allocated");
    off = r->table[r->index];
    ret = qcow2_overlap_check(r->node, 0, off, s->cluster_size, err);
    if (ret < 0) {
        qimg_error_set(err, ret, "Overlap check failed: %s", strerror(-ret));
        return ret;
    }
    ret = r->node->file->ops->pwrite(r->node->file, off, s->cluster_size,
                                     r->block, err);
    if (ret < 0)
        qimg_error_set(err, ret, "Failed to write refblock: %s", strerror(-ret));
    return ret;
}

/* One walk: walk number `index` of `total` (for the progress). */
static int reorder_walk(struct reorder *r, reorder_op op, uint64_t index,
                        uint64_t total, struct qimg_error *err)
{
    struct qimg_image *node = r->node;
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits, n = 0;
    uint32_t new_bits = 1u << r->order;
    bool empty = true;
    struct qcow2_state nstate = *s;   /* the new width's entry layout */
    int ret;

    nstate.refcount_order = r->order;
    for (uint64_t ti = 0; ti < s->refcount_table_size; ti++) {
        uint64_t boff = s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK;
        uint8_t *block = NULL;

        r->status(r->opaque, index * s->refcount_table_size + ti,
                  total * s->refcount_table_size);
        if (boff & (s->cluster_size - 1)) {
            qcow2_signal_corruption(node, true, NULL, "Refblock offset %#llx "
                                    "unaligned (reftable index: %#llx)",
                                    (unsigned long long)boff,
                                    (unsigned long long)ti);
            return qimg_error_set(err, -EIO, "Image is corrupt (unaligned "
                                  "refblock offset)");
        }
        for (uint64_t bi = 0; bi < per_block; bi++) {
            uint64_t rc = 0;
            if (n >= r->block_entries) {
                /* The new block is complete. */
                ret = op(r, empty, err);
                if (ret < 0)
                    return ret;
                r->index++;
                n = 0;
                empty = true;
                block = NULL;   /* the operation may have evicted it */
            }
            if (boff) {
                if (!block) {
                    ret = qcow2_cache_get(node, &s->refblock_cache, boff,
                                          &block, err);
                    if (ret < 0) {
                        qimg_error_set(err, ret, "Failed to retrieve refblock: "
                                       "%s", strerror(-ret));
                        return ret;
                    }
                }
                rc = qcow2_refcount_read_entry(s, block, bi);
                if (new_bits < 64 && (rc >> new_bits))
                    return qimg_error_set(err, -EINVAL, "Cannot decrease "
                                          "refcount entry width to %u bits: "
                                          "Cluster at offset %#llx has a "
                                          "refcount of %llu", new_bits,
                                          (unsigned long long)(((ti * per_block) +
                                                                bi) << s->cluster_bits),
                                          (unsigned long long)rc);
            }
            if (r->block)
                qcow2_refcount_write_entry(&nstate, r->block, n, rc);
            n++;
            empty = empty && !rc;
        }
    }
    if (n) {
        /* The last, partly filled block. */
        if (r->block)
            for (; n < r->block_entries; n++)
                qcow2_refcount_write_entry(&nstate, r->block, n, 0);
        ret = op(r, empty, err);
        if (ret < 0)
            return ret;
        r->index++;
    }
    r->status(r->opaque, (index + 1) * s->refcount_table_size,
              total * s->refcount_table_size);
    return 0;
}

int qcow2_change_refcount_order(struct qimg_image *node, uint32_t order,
                                void (*status)(void *, uint64_t, uint64_t),
                                void *opaque, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct reorder r = {.node = node, .order = order, .status = status,
                        .opaque = opaque,
                        .block_entries = 1ull << (s->cluster_bits + 3 - order)};
    uint64_t new_off = 0, alloc_size = 0, walk = 0;
    uint64_t *old_table = NULL, old_size = 0, old_off = 0;
    uint32_t old_order, old_clusters;
    int ret;

    do {
        uint64_t total = QIMG_MAX(walk + 2, 3ull);
        r.allocated = false;
        ret = reorder_walk(&r, reorder_alloc, walk++, total, err);
        if (ret < 0)
            goto done;
        r.index = 0;
        if (r.allocated) {
            int64_t o;
            if (new_off)
                qcow2_free_clusters_or_warn(node, new_off, alloc_size * 8,
                                            false);
            o = qcow2_alloc_clusters(node, qimg_div_round_up(r.table_size * 8,
                                                            s->cluster_size),
                                     err);
            if (o < 0) {
                ret = (int)o;
                qimg_error_set(err, ret, "Failed to allocate the new reftable: "
                               "%s", strerror(-ret));
                new_off = 0;
                goto done;
            }
            new_off = (uint64_t)o;
            alloc_size = r.table_size;
        }
    } while (r.allocated);
    /* The walk that writes the blocks. */
    r.block = calloc(1, s->cluster_size);
    if (!r.block) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto done;
    }
    ret = reorder_walk(&r, reorder_flush, walk, walk + 1, err);
    if (ret < 0)
        goto done;
    ret = qcow2_overlap_check(node, 0, new_off, r.table_size * 8, err);
    if (ret < 0) {
        qimg_error_set(err, ret, "Overlap check failed: %s", strerror(-ret));
        goto done;
    }
    for (uint64_t i = 0; i < r.table_size; i++)
        r.table[i] = htobe64(r.table[i]);
    ret = node->file->ops->pwrite(node->file, new_off, r.table_size * 8, r.table,
                                  err);
    for (uint64_t i = 0; i < r.table_size; i++)
        r.table[i] = be64toh(r.table[i]);
    if (ret < 0) {
        qimg_error_set(err, ret, "Failed to write the new reftable: %s",
                       strerror(-ret));
        goto done;
    }
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0) {
        qimg_error_set(err, ret, "Failed to flush the refblock cache: %s",
                       strerror(-ret));
        goto done;
    }
    /* The header names the new structure; the state follows it. */
    old_order = s->refcount_order;
    old_off = s->refcount_table_offset;
    old_clusters = s->refcount_table_clusters;
    s->refcount_order = order;
    s->refcount_table_offset = new_off;
    s->refcount_table_clusters = (uint32_t)(r.table_size * 8 / s->cluster_size);
    ret = qcow2_update_header(node, err);
    if (ret < 0) {
        s->refcount_order = old_order;
        s->refcount_table_offset = old_off;
        s->refcount_table_clusters = old_clusters;
        qimg_error_set(err, ret, "Failed to update the qcow2 header: %s",
                       strerror(-ret));
        goto done;
    }
    for (size_t i = 0; i < s->refblock_cache.n; i++)
        qcow2_cache_discard(&s->refblock_cache, s->refblock_cache.e[i].offset);
    old_table = s->refcount_table;
    old_size = s->refcount_table_size;
    s->refcount_table = r.table;
    s->refcount_table_size = r.table_size;
    set_refcount_order(s, order);
    /* What is freed below is the old structure. */
    r.table = old_table;
    r.table_size = old_size;
    new_off = old_off;
    alloc_size = old_size;
done:
    if (r.table) {
        for (uint64_t i = 0; i < r.table_size; i++)
            if (r.table[i] & QCOW2_REFT_OFFSET_MASK)
                qcow2_free_clusters_or_warn(node, r.table[i] &
                                                      QCOW2_REFT_OFFSET_MASK,
                                            s->cluster_size, false);
        free(r.table);
        if (new_off)
            qcow2_free_clusters_or_warn(node, new_off, r.table_size * 8, false);
    }
    free(r.block);
    return ret;
}

uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
                                      uint32_t refcount_order, bool generous,
                                      uint64_t *blocks_out)
{
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, total = 0, prev;

    /* The fixed point where the structure counts itself; "generous" adds
     * half the table's clusters once, as QEMU does for growth. */
    do {
        prev = total;
        blocks = qimg_div_round_up(clusters + table + blocks, per_block);
        table = qimg_div_round_up(blocks, per_table_cluster);
        total = clusters + blocks + table;
        if (total == prev && generous) {
            clusters += qimg_div_round_up(table, 2);
            total = 0;
            generous = false;
        }
    } while (total != prev);
    if (blocks_out)
        *blocks_out = blocks;
    return (blocks + table) * cluster_size;
}

/* Clusters in [0, end) with a nonzero refcount, counting up to limit. */
uint64_t qcow2_count_used(struct qimg_image *node, uint64_t end,
                          uint64_t limit)
{
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits, n = 0;
    struct qimg_error err;

    for (uint64_t ti = 0; ti < s->refcount_table_size &&
                          ti * per_block < end && n < limit; ti++) {
        uint64_t off = s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK;
        uint8_t *block;
        if (!off)
            continue;
        /* An unaligned block is QEMU's corruption event here too. */
        if (get_refblock(node, ti, &block, &err) < 0)
            return 0;   /* broken refcounts: count nothing */
        for (uint64_t i = 0; i < per_block && ti * per_block + i < end; i++)
            n += qcow2_refcount_read_entry(s, block, i) != 0;
    }
    return n;
}

/*
 * Write a changed L2 table that is not in the L2 cache (an inactive or
 * rewritten one) straight to the file, after the refcount blocks it
 * depends on: a crash must never leave an entry whose cluster's refcount
 * is not on disk yet.
 */
int qcow2_write_l2_table(struct qimg_image *node, uint64_t l2off,
                         const uint8_t *l2, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = qcow2_cache_flush(node, &s->refblock_cache, err);

    if (ret < 0)
        return ret;
    return node->file->ops->pwrite(node->file, l2off, s->cluster_size, l2,
                                   err);
}
