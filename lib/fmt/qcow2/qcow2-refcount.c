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

static int get_refblock(struct qimg_image *node, uint64_t table_index,
                        uint8_t **block, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t off = s->refcount_table[table_index] & QCOW2_REFT_OFFSET_MASK;

    if (off & (s->cluster_size - 1)) {
        return qcow2_signal_corruption(node, true, err, "Refblock offset "
                              "%#llx unaligned (reftable index: %#llx)",
                              (unsigned long long)off,
                              (unsigned long long)table_index);
    }
    return qcow2_cache_get(node, &s->refblock_cache, off, block, err);
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

static int grow_refcount_table(struct qimg_image *node, uint64_t min_entries,
                               struct qimg_error *err);

/* The first cluster at or after `from` (never the header) with refcount 0. */
static int first_free(struct qimg_image *node, uint64_t from, uint64_t *ci,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    for (*ci = QIMG_MAX(from, 1);; (*ci)++) {
        uint64_t rc;
        int ret;
        if ((*ci << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET)
            return qimg_error_set(err, -EFBIG, "Image file too large");
        ret = qcow2_get_refcount(node, *ci, &rc, err);
        if (ret < 0)
            return ret;
        if (!rc)
            return 0;
    }
}

/*
 * Make sure a refcount block exists for table index ti.  A new block is
 * placed in the first free cluster at or after cluster `from`; if that
 * cluster falls into the range the block itself describes, the block
 * counts itself.
 */
static int ensure_refblock(struct qimg_image *node, uint64_t ti, uint64_t from,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    uint8_t *block;
    int64_t off;
    uint64_t ci;
    int ret;

    if (ti >= s->refcount_table_size) {
        ret = grow_refcount_table(node, ti + 1, err);
        if (ret < 0)
            return ret;
    }
    if (s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK)
        return 0;
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC);
    if (s->refcount_table[ti]) {
        /* Only reserved bits: a damaged entry we must not build on. */
        qcow2_mark_corrupt(node, NULL);
        return qimg_error_set(err, -EIO, "Refcount table entry %llu is "
                              "corrupt", (unsigned long long)ti);
    }
    /*
     * Find a free cluster without taking a reference yet.  Its count must
     * go into an existing block (or this one): a cluster in a range
     * without a block gets that block first, which takes the cluster
     * itself (counting it from here would count it twice); look again.
     */
    for (;;) {
        uint64_t ti2;
        ret = first_free(node, from, &ci, err);
        if (ret < 0)
            return ret;
        ti2 = ci >> s->refcount_block_bits;
        if (ti2 == ti || (ti2 < s->refcount_table_size &&
                          (s->refcount_table[ti2] & QCOW2_REFT_OFFSET_MASK)))
            break;
        ret = ensure_refblock(node, ti2, ci, err);
        if (ret < 0)
            return ret;
    }
    off = (int64_t)(ci << s->cluster_bits);
    if ((ci >> s->refcount_block_bits) == ti) {
        /* Self-describing block. */
        ret = qcow2_cache_get_empty(node, &s->refblock_cache, (uint64_t)off,
                                    &block, err);
        if (ret < 0)
            return ret;
        qcow2_refcount_write_entry(s, block, ci & (per_block - 1), 1);
    } else {
        ret = qcow2_update_refcount(node, (uint64_t)off, s->cluster_size, 1, err);
        if (ret < 0)
            return ret;
        ret = qcow2_cache_get_empty(node, &s->refblock_cache, (uint64_t)off,
                                    &block, err);
        if (ret < 0)
            return ret;
    }
    /* The block must be on disk before the table points at it. */
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE);
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    uint8_t be[8];
    qimg_st_be64(be, (uint64_t)off);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_HOOKUP);
    ret = node->file->ops->pwrite(node->file, s->refcount_table_offset + ti * 8,
                                  8, be, err);
    if (ret < 0)
        return ret;
    s->refcount_table[ti] = (uint64_t)off;
    return 0;
}

int qcow2_update_refcount(struct qimg_image *node, uint64_t offset,
                          uint64_t len, int64_t delta, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first, last, per_block = 1ull << s->refcount_block_bits;

    if (!len)
        return 0;
    first = offset >> s->cluster_bits;
    last = (offset + len - 1) >> s->cluster_bits;
    for (uint64_t ci = first; ci <= last; ci++) {
        uint64_t ti = ci >> s->refcount_block_bits, rc;
        uint8_t *block;
        int ret;

        ret = ensure_refblock(node, ti, s->free_cluster_index, err);
        if (ret < 0)
            return ret;
        ret = get_refblock(node, ti, &block, err);
        if (ret < 0)
            return ret;
        rc = qcow2_refcount_read_entry(s, block, ci & (per_block - 1));
        if ((delta < 0 && rc < (uint64_t)-delta) ||
            (delta > 0 && s->refcount_max - rc < (uint64_t)delta)) {
            return qimg_error_set(err, delta < 0 ? -EINVAL : -ERANGE,
                                  "Refcount of cluster %llu would %s",
                                  (unsigned long long)ci,
                                  delta < 0 ? "drop below zero" : "overflow");
        }
        rc += (uint64_t)delta;
        qcow2_refcount_write_entry(s, block, ci & (per_block - 1), rc);
        qcow2_cache_mark_dirty(&s->refblock_cache, block);
        if (rc == 0 && ci < s->free_cluster_index)
            s->free_cluster_index = ci;
    }
    return 0;
}

/* First run of n free clusters at or after the cursor. */
static int find_free(struct qimg_image *node, uint64_t n, uint64_t *start,
                     struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    /* Cluster 0 is the header, whatever a corrupt refcount says. */
    uint64_t ci = QIMG_MAX(s->free_cluster_index, 1), run = 0;

    for (;;) {
        uint64_t rc;
        int ret = qcow2_get_refcount(node, ci, &rc, err);
        if (ret < 0)
            return ret;
        if (rc) {
            run = 0;
        } else if (++run == n) {
            *start = ci + 1 - n;
            return 0;
        }
        ci++;
        if ((ci << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET)
            return qimg_error_set(err, -EFBIG, "Image file too large");
    }
}

/* Whether the n clusters from `start` all have refcount 0. */
static int run_is_free(struct qimg_image *node, uint64_t start, uint64_t n,
                       struct qimg_error *err)
{
    for (uint64_t ci = start; ci < start + n; ci++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(node, ci, &rc, err);
        if (ret < 0)
            return ret;
        if (rc)
            return 0;
    }
    return 1;
}

/*
 * Allocate a run of n clusters with one refcount update.  Refcount blocks
 * the run lacks go right after it (where QEMU puts them, so images keep
 * its layout and the run stays contiguous).  Growing the refcount table
 * places the new table past what the old one covers, which may be inside
 * the run: then look for a run again.
 */
int64_t qcow2_alloc_clusters(struct qimg_image *node, uint64_t n,
                             struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start = 0;
    int ret;

    for (;;) {
        bool placed_block = false;
        ret = find_free(node, n, &start, err);
        if (ret < 0)
            return ret;
        for (uint64_t ti = start >> s->refcount_block_bits;
             ti <= (start + n - 1) >> s->refcount_block_bits; ti++) {
            if (ti < s->refcount_table_size &&
                (s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK))
                continue;
            ret = ensure_refblock(node, ti, start + n, err);
            if (ret < 0)
                return ret;
            placed_block = true;
        }
        if (!placed_block)
            break;
        ret = run_is_free(node, start, n, err);
        if (ret < 0)
            return ret;
        if (ret)
            break;
    }
    qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC);
    ret = qcow2_update_refcount(node, start << s->cluster_bits,
                                n << s->cluster_bits, 1, err);
    if (ret < 0)
        return ret;
    if (n == 1 || start == s->free_cluster_index)
        s->free_cluster_index = start + n;
    return (int64_t)(start << s->cluster_bits);
}

/*
 * Compressed data is packed: each allocation continues where the previous
 * one ended (s->free_byte_offset), possibly running into the next cluster
 * when that one is free.  Every cluster a piece touches holds one
 * reference for it.
 */
int64_t qcow2_alloc_bytes(struct qimg_image *node, uint64_t len,
                          struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, off = s->free_byte_offset;
    uint64_t into = off & (cs - 1), start = 0;
    int64_t fresh;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC_BYTES);
    /* A shared cluster whose refcount is at its maximum takes no more. */
    if (into) {
        uint64_t rc;
        ret = qcow2_get_refcount(node, off >> s->cluster_bits, &rc, err);
        if (ret < 0)
            return ret;
        if (rc >= s->refcount_max)
            into = 0;
    }
    if (into && len <= cs - into) {
        start = off;
        ret = qcow2_update_refcount(node, off, 1, 1, err);
        if (ret < 0)
            return ret;
    } else if (into) {
        uint64_t more = qimg_div_round_up(len - (cs - into), cs);
        fresh = qcow2_alloc_clusters(node, more, err);
        if (fresh < 0)
            return fresh;
        if ((uint64_t)fresh == qimg_align_down(off, cs) + cs) {
            start = off;
            ret = qcow2_update_refcount(node, off, 1, 1, err);
            if (ret < 0)
                return ret;
        } else {
            ret = qcow2_free_clusters(node, (uint64_t)fresh, more * cs, err);
            if (ret < 0)
                return ret;
            into = 0;
        }
    }
    if (!into) {
        fresh = qcow2_alloc_clusters(node, qimg_div_round_up(len, cs), err);
        if (fresh < 0)
            return fresh;
        start = (uint64_t)fresh;
    }
    s->free_byte_offset = ((start + len) & (cs - 1)) ? start + len : 0;
    return (int64_t)start;
}

int qcow2_free_clusters(struct qimg_image *node, uint64_t offset, uint64_t len,
                        struct qimg_error *err)
{
    qimg_storage_event(node->file, QIMG_EV_CLUSTER_FREE);
    return qcow2_update_refcount(node, offset, len, -1, err);
}

/*
 * Grow the refcount table to at least min_entries.  The new table and the
 * refcount blocks describing it go to the first free area beyond every
 * cluster the old table can describe, so none of them needs the old
 * table.  The header switches to the new table in one 12-byte write.
 */
static int grow_refcount_table(struct qimg_image *node, uint64_t min_entries,
                               struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    uint64_t entries_per_cluster = s->cluster_size / 8;
    uint64_t new_entries = QIMG_MAX(min_entries, s->refcount_table_size * 2);
    uint64_t table_clusters, start, nblocks = 0, total;
    uint64_t *table = NULL;
    uint8_t *block = NULL, hdr[12];
    int ret;

    for (;;) {
        table_clusters = qimg_div_round_up(new_entries, entries_per_cluster);
        /* Place everything right after what the old table covers. */
        start = s->refcount_table_size * per_block;
        total = table_clusters + nblocks;
        uint64_t need = qimg_div_round_up(start + total, per_block);
        uint64_t blocks = need - start / per_block;
        if (need > new_entries) {
            new_entries = need;
            continue;
        }
        if (blocks == nblocks)
            break;
        nblocks = blocks;
    }
    if ((table_clusters << s->cluster_bits) > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EFBIG, "Reference count table too large");
    new_entries = table_clusters * entries_per_cluster;
    table = calloc(new_entries, 8);
    block = calloc(1, s->cluster_size);
    if (!table || !block) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    memcpy(table, s->refcount_table, s->refcount_table_size * 8);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE_BLOCKS);
    /* Blocks follow the table; each counts the table and blocks it covers. */
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t bi = start / per_block + b;
        uint64_t boff = (start + table_clusters + b) << s->cluster_bits;
        memset(block, 0, s->cluster_size);
        for (uint64_t ci = start; ci < start + total; ci++)
            if (ci / per_block == bi)
                qcow2_refcount_write_entry(s, block, ci % per_block, 1);
        table[bi] = boff;
        ret = node->file->ops->pwrite(node->file, boff, s->cluster_size, block,
                                      err);
        if (ret < 0)
            goto out;
    }
    for (uint64_t i = 0; i < new_entries; i++)
        table[i] = htobe64(table[i]);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_WRITE_TABLE);
    ret = node->file->ops->pwrite(node->file, start << s->cluster_bits,
                                  new_entries * 8, table, err);
    for (uint64_t i = 0; i < new_entries; i++)
        table[i] = be64toh(table[i]);
    if (ret < 0)
        goto out;
    ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        goto out;
    qimg_st_be64(hdr, start << s->cluster_bits);
    qimg_st_be32(hdr + 8, (uint32_t)table_clusters);
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC_SWITCH_TABLE);
    ret = node->file->ops->pwrite(node->file, 48, 12, hdr, err);
    if (ret < 0)
        goto out;
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_len = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    free(s->refcount_table);
    s->refcount_table = table;
    table = NULL;
    s->refcount_table_size = new_entries;
    s->refcount_table_offset = start << s->cluster_bits;
    s->refcount_table_clusters = (uint32_t)table_clusters;
    ret = qcow2_update_refcount(node, old_off, old_len, -1, err);
out:
    free(table);
    free(block);
    return ret;
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

int qcow2_relocate_reftable(struct qimg_image *node, uint64_t clusters,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    uint64_t entries = QIMG_MAX(qimg_div_round_up(clusters, per_block),
                                s->refcount_table_size);
    uint64_t tclusters = qimg_div_round_up(entries * 8, s->cluster_size);
    uint64_t start = qcow2_image_end(node) >> s->cluster_bits;
    uint64_t *table;
    uint8_t hdr[12];
    int ret;

    if ((tclusters << s->cluster_bits) > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EFBIG, "Reference count table too large");
    entries = (tclusters << s->cluster_bits) / 8;
    /* The new table's own clusters need refcounts: make sure their block
     * exists before the table is written. */
    for (uint64_t c = start; c < start + tclusters; c++) {
        ret = ensure_refblock(node, c >> s->refcount_block_bits,
                              s->free_cluster_index, err);
        if (ret < 0)
            return ret;
    }
    start = qcow2_image_end(node) >> s->cluster_bits;
    table = calloc(entries, 8);
    if (!table)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < s->refcount_table_size; i++)
        table[i] = htobe64(s->refcount_table[i]);
    ret = qcow2_update_refcount(node, start << s->cluster_bits,
                                tclusters << s->cluster_bits, 1, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret) {
        /* Entries may have changed while counting the new clusters. */
        for (uint64_t i = 0; i < s->refcount_table_size; i++)
            table[i] = htobe64(s->refcount_table[i]);
        ret = node->file->ops->pwrite(node->file, start << s->cluster_bits,
                                      entries * 8, table, err);
    }
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        free(table);
        return ret;
    }
    qimg_st_be64(hdr, start << s->cluster_bits);
    qimg_st_be32(hdr + 8, (uint32_t)tclusters);
    ret = node->file->ops->pwrite(node->file, 48, 12, hdr, err);
    if (ret < 0) {
        free(table);
        return ret;
    }
    for (uint64_t i = 0; i < entries; i++)
        table[i] = be64toh(table[i]);
    uint64_t old_off = s->refcount_table_offset;
    uint64_t old_len = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_size = entries;
    s->refcount_table_offset = start << s->cluster_bits;
    s->refcount_table_clusters = (uint32_t)tclusters;
    return qcow2_free_clusters(node, old_off, old_len, err);
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
 * Rewrite every refcount in a new width: read all counts, write a complete
 * new structure (blocks, then table) after the last used cluster, switch
 * the header to it in one write, then release the old structure.
 */
int qcow2_change_refcount_order(struct qimg_image *node, uint32_t order,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t nb = qcow2_image_end(node) >> s->cluster_bits;
    uint64_t new_per_block = (s->cluster_size * 8) >> order;
    uint64_t new_max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    uint64_t nblocks = 0, tcl = 0, total, *counts = NULL, *table = NULL;
    uint64_t old_table = s->refcount_table_offset;
    uint64_t old_table_len = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    uint64_t *old_blocks = NULL, n_old = 0;
    uint32_t old_order = s->refcount_order;
    uint8_t *block = NULL;
    int ret;

    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    for (;;) {
        total = nb + nblocks + tcl;
        uint64_t b = qimg_div_round_up(total, new_per_block);
        uint64_t t = qimg_div_round_up(b * 8, s->cluster_size);
        if (b == nblocks && t == tcl)
            break;
        nblocks = b;
        tcl = t;
    }
    if ((tcl << s->cluster_bits) > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EFBIG, "Reference count table too large");
    counts = calloc(nblocks * new_per_block, sizeof(*counts));
    table = calloc(tcl << s->cluster_bits, 1);
    block = malloc(s->cluster_size);
    old_blocks = calloc(s->refcount_table_size ? s->refcount_table_size : 1, 8);
    if (!counts || !table || !block || !old_blocks) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < nb; i++) {
        ret = qcow2_get_refcount(node, i, &counts[i], err);
        if (ret < 0)
            goto out;
        if (counts[i] > new_max) {
            ret = qimg_error_set(err, -EINVAL, "Cannot decrease refcount entry "
                                 "width to %u bits: Cluster at offset %#llx has "
                                 "a refcount of %llu", 1u << order,
                                 (unsigned long long)(i << s->cluster_bits),
                                 (unsigned long long)counts[i]);
            goto out;
        }
    }
    for (uint64_t i = nb; i < total; i++)
        counts[i] = 1;   /* the new structure itself */
    for (uint64_t i = 0; i < s->refcount_table_size; i++)
        if (s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK)
            old_blocks[n_old++] = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
    set_refcount_order(s, order);
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t off = (nb + b) << s->cluster_bits;
        memset(block, 0, s->cluster_size);
        for (uint64_t k = 0; k < new_per_block; k++)
            qcow2_refcount_write_entry(s, block, k, counts[b * new_per_block + k]);
        ret = node->file->ops->pwrite(node->file, off, s->cluster_size, block, err);
        if (ret < 0)
            goto fail;
        table[b] = htobe64(off);
    }
    ret = node->file->ops->pwrite(node->file, (nb + nblocks) << s->cluster_bits,
                                  tcl << s->cluster_bits, table, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        goto fail;
    s->refcount_table_offset = (nb + nblocks) << s->cluster_bits;
    s->refcount_table_clusters = (uint32_t)tcl;
    ret = qcow2_update_header(node, err);
    if (ret < 0)
        goto fail;
    for (size_t i = 0; i < s->refblock_cache.n; i++)
        qcow2_cache_discard(&s->refblock_cache, s->refblock_cache.e[i].offset);
    free(s->refcount_table);
    s->refcount_table = NULL;
    ret = qcow2_refcount_load(node, err);
    if (ret < 0)
        goto out;
    s->free_cluster_index = 0;
    /* The old structure is garbage now. */
    ret = qcow2_free_clusters(node, old_table, old_table_len, err);
    for (uint64_t i = 0; !ret && i < n_old; i++)
        ret = qcow2_free_clusters(node, old_blocks[i], s->cluster_size, err);
    goto out;
fail:
    set_refcount_order(s, old_order);
out:
    free(counts);
    free(table);
    free(block);
    free(old_blocks);
    return ret;
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
        if ((off & (s->cluster_size - 1)) ||
            qcow2_cache_get(node, &s->refblock_cache, off, &block, &err) < 0)
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
