/*
 * qcow2-check.c - consistency check and repair.
 *
 * The check rebuilds every cluster's reference count from the metadata
 * (header, L1/L2 tables and what they map, snapshot tables, refcount table
 * and blocks) and compares it with the stored refcounts: a stored count
 * above the computed one is a leak, below it a corruption.  It also checks
 * the OFLAG_COPIED bits of the active tables and the alignment of every
 * offset.  Repairs set stored refcounts to the computed values (-r leaks:
 * only lowering; -r all: both ways, plus COPIED bits).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

/* Computed refcounts are kept per cluster; bound the array so a hostile
 * image cannot make us allocate without limit (2^28 clusters = 1 GiB of
 * 32-bit counters covers 16 TiB of 64 KiB clusters). */
#define QCOW2_CHECK_MAX_CLUSTERS (1ull << 28)

struct check {
    struct qimg_image *node;
    struct qcow2_state *s;
    struct qimg_check *res;
    uint32_t *refs;
    uint64_t nb_clusters;
    uint64_t cap;
    uint64_t file_len;
    bool refblock_broken;   /* a refcount block is shared: rebuild */
    unsigned fix;           /* QIMG_CHECK_FIX_* of this run */
    int past_eof;           /* references past EOF: no repair fixes them */
};

static void report(struct check *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    if (!c->res->report)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->res->report(c->res->opaque, line);
}

static int grow(struct check *c, uint64_t need)
{
    uint64_t cap = c->cap ? c->cap : 1024;
    uint32_t *n;
    if (need > QCOW2_CHECK_MAX_CLUSTERS)
        return -EFBIG;
    while (cap < need)
        cap *= 2;
    n = realloc(c->refs, cap * sizeof(*n));
    if (!n)
        return -ENOMEM;
    memset(n + c->cap, 0, (cap - c->cap) * sizeof(*n));
    c->refs = n;
    c->cap = cap;
    return 0;
}

/* Count one reference to every cluster in [off, off+len). */
static int inc_refs(struct check *c, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = c->s;
    uint64_t first, last, end;

    if (!len)
        return 0;
    /* A reference a whole cluster or more past the end of the file is
     * reported and not counted (QEMU's rule). */
    if (qimg_add_overflow(off, len, &end) ||
        (end > c->file_len && end - c->file_len >= s->cluster_size)) {
        report(c, "ERROR: counting reference for region exceeding the end of "
               "the file by one cluster or more: offset %#" PRIx64 " size %#"
               PRIx64, off, len);
        c->res->corruptions++;
        c->past_eof++;
        return 0;
    }
    first = off >> s->cluster_bits;
    last = (off + len - 1) >> s->cluster_bits;
    if (last >= c->cap && grow(c, last + 1) < 0) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    if (last >= c->nb_clusters)
        c->nb_clusters = last + 1;
    for (uint64_t i = first; i <= last; i++)
        if (c->refs[i] != UINT32_MAX)
            c->refs[i]++;
    return 0;
}

static void inc_refs_cb(void *opaque, uint64_t off, uint64_t len)
{
    inc_refs(opaque, off, len);
}

static uint64_t l2e(const struct qcow2_state *s, const uint8_t *l2, uint64_t i)
{
    return qimg_ld_be64(l2 + i * s->l2_entry_size);
}

/* Walk one L2 table; stats only for the active table. */
static int check_l2(struct check *c, uint64_t l2_off, bool active)
{
    struct qcow2_state *s = c->s;
    uint64_t next = 0;   /* fragmentation is judged within one table */
    uint64_t *next_contiguous = &next;
    uint8_t *l2 = malloc(s->cluster_size);
    int ret;

    if (!l2)
        return -ENOMEM;
    ret = c->node->file->ops->pread(c->node->file, l2_off, s->cluster_size, l2,
                                    NULL);
    if (ret < 0) {
        report(c, "ERROR: I/O error in check_refcounts_l2");
        c->res->check_errors++;
        free(l2);
        return ret;
    }
    for (uint64_t i = 0; i < qcow2_l2_entries(s); i++) {
        uint64_t e = l2e(s, l2, i), off = e & QCOW2_L2E_OFFSET_MASK;
        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff = e & s->cluster_offset_mask;
            uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
            if (e & QCOW2_OFLAG_COPIED) {
                report(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
                       "be set for compressed clusters", coff);
                c->res->corruptions++;
            }
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                /* Compressed clusters are always counted as fragmented. */
                c->res->fragmented_clusters++;
            }
            /* The range as QEMU reports it: from the exact byte offset. */
            inc_refs(c, coff, sectors * 512 - (coff & 511));
            continue;
        }
        if (e & QCOW2_L2E_STD_RESERVED) {
            report(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions++;
        }
        uint64_t bitmap = s->l2_entry_size == 16
                              ? qimg_ld_be64(l2 + i * 16 + 8) : 0;
        bool allocated = off || (s->data_file && (e & QCOW2_OFLAG_COPIED));
        if (s->subcluster_bits && !(bitmap & 0xffffffffull) && !off)
            allocated = false;
        if (!allocated)
            continue;
        if (active) {
            c->res->allocated_clusters++;
            if (*next_contiguous && off != *next_contiguous)
                c->res->fragmented_clusters++;
            *next_contiguous = off + s->cluster_size;
        }
        if (off & (s->cluster_size - 1)) {
            /* Reported, and (as QEMU) still counted where it points. */
            bool data = s->subcluster_bits ? (bitmap & 0xffffffffull) != 0
                                           : !(e & QCOW2_OFLAG_ZERO);
            report(c, "ERROR offset=%" PRIx64 ": %s cluster is not properly "
                   "aligned; L2 entry corrupted.", off,
                   data ? "Data" : "Preallocated");
            c->res->corruptions++;
        }
        if (!s->data_file)
            inc_refs(c, off, s->cluster_size);
    }
    free(l2);
    return 0;
}

static int check_l1(struct check *c, uint64_t l1_off, uint32_t l1_size,
                    const uint64_t *table, bool active)
{
    struct qcow2_state *s = c->s;

    inc_refs(c, l1_off, (uint64_t)l1_size * 8);
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t off = table[i] & QCOW2_L1E_OFFSET_MASK;
        /* As QEMU: any non-zero entry names an L2 table, even at 0. */
        if (!table[i])
            continue;
        if (table[i] & QCOW2_L1E_RESERVED) {
            report(c, "ERROR found L1 entry with reserved bits set: %" PRIx64,
                   table[i]);
            c->res->corruptions++;
        }
        inc_refs(c, off, s->cluster_size);
        if (off & (s->cluster_size - 1)) {
            /* Reported, and (as QEMU) still walked where it points. */
            report(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; "
                   "L1 entry corrupted", off);
            c->res->corruptions++;
        }
        check_l2(c, off, active);
    }
    return 0;
}

static void check_refcount_table(struct check *c)
{
    struct qcow2_state *s = c->s;
    int64_t fsize = c->node->file->ops->get_size(c->node->file);

    inc_refs(c, s->refcount_table_offset,
             (uint64_t)s->refcount_table_clusters << s->cluster_bits);
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t off = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (s->refcount_table[i] & ~QCOW2_REFT_OFFSET_MASK) {
            report(c, "ERROR refcount table entry %" PRIu64 " has reserved "
                   "bits set", i);
            c->res->corruptions++;
            c->refblock_broken = true;
            continue;
        }
        if (!off)
            continue;
        if (off & (s->cluster_size - 1)) {
            report(c, "ERROR refcount block %" PRIu64 " is not cluster aligned; "
                   "refcount table entry corrupted", i);
            c->res->corruptions++;
            continue;
        }
        if (fsize >= 0 && off >= (uint64_t)fsize) {
            report(c, "ERROR refcount block %" PRIu64 " is outside image", i);
            c->res->corruptions++;
            continue;
        }
        inc_refs(c, off, s->cluster_size);
        /* Everything else is counted by now: a block must be used once. */
        uint64_t ci = off >> s->cluster_bits;
        if (ci < c->nb_clusters && c->refs[ci] != 1) {
            report(c, "ERROR refcount block %" PRIu64 " refcount=%u", i,
                   c->refs[ci]);
            c->res->corruptions++;
            c->refblock_broken = true;
        }
    }
}

/* Set the stored refcount of cluster i to v (repair). */
static int set_refcount(struct check *c, uint64_t i, uint64_t stored, uint64_t v,
                        struct qimg_error *err)
{
    struct qimg_storage *file = c->node->file;
    uint64_t off = i << c->s->cluster_bits;
    int64_t delta = (int64_t)v - (int64_t)stored;
    int ret = qcow2_update_refcount(c->node, off, 1, delta, err);

    /* QEMU's repair discards a cluster it frees: the file reads zeroes
     * there (and takes no space) afterwards. */
    if (!ret && !v && file->ops->discard)
        file->ops->discard(file, off, c->s->cluster_size, NULL);
    return ret;
}

/*
 * Compare stored and computed refcounts.  Without fix, report and count
 * every mismatch; *rebuild is set when a referenced cluster has no stored
 * refcount (the refcount structure itself is broken).  With fix, repair
 * what the mode allows and count the repairs.
 */
static int compare_refcounts(struct check *c, unsigned fix, bool *rebuild,
                             struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t highest = 0;
    bool any = false;

    for (uint64_t i = 0; i < c->nb_clusters; i++) {
        uint64_t stored, computed = c->refs[i];
        int ret = qcow2_get_refcount(c->node, i, &stored, err);
        if (ret < 0) {
            report(c, "Can't get refcount for cluster %" PRIu64 ": %s", i,
                   strerror(-ret));
            c->res->check_errors++;
            continue;
        }
        if (stored || computed) {
            highest = i;
            any = true;
        }
        if (stored == computed)
            continue;
        bool leak = stored > computed;
        if (!fix) {
            report(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                   PRIu64, leak ? "Leaked" : "ERROR", i, stored, computed);
            if (leak)
                c->res->leaks++;
            else
                c->res->corruptions++;
            if (!stored && rebuild)
                *rebuild = true;
            continue;
        }
        if (!(leak ? (fix & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS))
                   : (fix & QIMG_CHECK_FIX_ERRORS))) {
            /* Not ours to fix: reported again, counted once already. */
            report(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                   PRIu64, leak ? "Leaked" : "ERROR", i, stored, computed);
            continue;
        }
        report(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
               " reference=%" PRIu64, i, stored, computed);
        if (set_refcount(c, i, stored, computed, err) == 0) {
            if (leak) {
                c->res->leaks_fixed++;
                c->res->leaks--;
            } else {
                c->res->corruptions_fixed++;
                c->res->corruptions--;
            }
        }
    }
    /* At least the header cluster, even when no count could be read. */
    (void)any;
    c->res->image_end_offset = (int64_t)((highest + 1) << s->cluster_bits);
    return 0;
}

/*
 * Write a new refcount structure holding the computed refcounts, placed
 * after every cluster in use: refcount blocks first, then the table.  The
 * header then switches to it; the old structure's clusters become leaks
 * that the caller repairs.
 */
/* First run of n clusters free in the computed refcounts; marks them used. */
static int64_t alloc_computed(struct check *c, uint64_t n)
{
    uint64_t run = 0, i;
    for (i = 0;; i++) {
        if (i < c->nb_clusters && c->refs[i])
            run = 0;
        else if (++run == n)
            break;
    }
    if (inc_refs(c, (i + 1 - n) << c->s->cluster_bits, n << c->s->cluster_bits) < 0)
        return -ENOMEM;
    return (int64_t)(i + 1 - n);
}

/*
 * Write a new refcount structure holding the computed refcounts: each
 * refcount block in the first cluster free in the computed counts, then
 * the table in the first free run after that.  The header then switches to
 * it; the old structure's clusters become leaks that the caller repairs.
 */
static int rebuild_refcounts(struct check *c, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    struct qimg_image *node = c->node;
    uint64_t per_block = 1ull << s->refcount_block_bits;
    uint64_t per_table_cluster = s->cluster_size / 8;
    uint64_t nblocks, tclusters, *blocks = NULL, *table = NULL;
    uint8_t *block = NULL, hdr[12];
    int64_t t;
    int ret = 0;

    /* The new structure goes past the end of the file: count it. */
    c->file_len = UINT64_MAX;
    /* Blocks for every cluster in use, including the new blocks and table
     * themselves: allocate until the count stops growing. */
    nblocks = qimg_div_round_up(c->nb_clusters, per_block);
    blocks = calloc(nblocks + 64, sizeof(*blocks));
    if (!blocks)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t b = 0; b < nblocks; b++) {
        bool used = false;
        for (uint64_t k = b * per_block; k < (b + 1) * per_block && k < c->nb_clusters; k++)
            used |= c->refs[k] != 0;
        if (!used)
            continue;
        int64_t o = alloc_computed(c, 1);
        if (o < 0) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        blocks[b] = (uint64_t)o;
    }
    tclusters = qimg_div_round_up(qimg_div_round_up(c->nb_clusters + 1, per_block),
                                  per_table_cluster);
    t = alloc_computed(c, tclusters);
    if (t < 0) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    if (qimg_div_round_up(c->nb_clusters, per_block) > nblocks) {
        ret = qimg_error_set(err, -ENOSPC, "Refcount structure would not fit");
        goto out;
    }
    table = calloc(tclusters * per_table_cluster, 8);
    block = malloc(s->cluster_size);
    if (!table || !block) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t b = 0; b < nblocks; b++) {
        if (!blocks[b])
            continue;
        memset(block, 0, s->cluster_size);
        for (uint64_t k = 0; k < per_block && b * per_block + k < c->nb_clusters; k++)
            qcow2_refcount_write_entry(s, block, k, c->refs[b * per_block + k]);
        ret = node->file->ops->pwrite(node->file, blocks[b] << s->cluster_bits,
                                      s->cluster_size, block, err);
        if (ret < 0)
            goto out;
        table[b] = htobe64(blocks[b] << s->cluster_bits);
    }
    ret = node->file->ops->pwrite(node->file, (uint64_t)t << s->cluster_bits,
                                  tclusters << s->cluster_bits, table, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        goto out;
    qimg_st_be64(hdr, (uint64_t)t << s->cluster_bits);
    qimg_st_be32(hdr + 8, (uint32_t)tclusters);
    ret = node->file->ops->pwrite(node->file, 48, 12, hdr, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        goto out;
    /* Switch the in-memory state to the new structure. */
    for (size_t i = 0; i < s->refblock_cache.n; i++)
        qcow2_cache_discard(&s->refblock_cache, s->refblock_cache.e[i].offset);
    free(s->refcount_table);
    s->refcount_table = NULL;
    s->refcount_table_offset = (uint64_t)t << s->cluster_bits;
    s->refcount_table_clusters = (uint32_t)tclusters;
    ret = qcow2_refcount_load(node, err);
    s->free_cluster_index = 0;
out:
    free(blocks);
    free(table);
    free(block);
    return ret;
}

/* A snapshot's L1 table and everything it maps hold references too. */
static void check_snapshot_l1(struct check *c, const struct qcow2_snapshot *sn)
{
    struct qcow2_state *s = c->s;
    uint64_t *l1;

    if (sn->l1_table_offset & (s->cluster_size - 1)) {
        report(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is "
               "not cluster aligned; snapshot table entry corrupted", sn->id,
               sn->name, sn->l1_table_offset);
        c->res->corruptions++;
        return;
    }
    if (sn->l1_size > QCOW2_MAX_L1_SIZE / 8) {
        report(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
               "too large; snapshot table entry corrupted", sn->id, sn->name,
               sn->l1_size);
        c->res->corruptions++;
        return;
    }
    l1 = calloc(QIMG_MAX(sn->l1_size, 1u), 8);
    if (!l1 || c->node->file->ops->pread(c->node->file, sn->l1_table_offset,
                                         (size_t)sn->l1_size * 8, l1, NULL) < 0) {
        report(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        free(l1);
        return;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++)
        l1[i] = be64toh(l1[i]);
    check_l1(c, sn->l1_table_offset, sn->l1_size, l1, false);
    free(l1);
}

/*
 * Version 3 requires 16 bytes of extra data per snapshot entry (large VM
 * state size, disk size); QEMU's check reports shorter entries (also those
 * past the end of the file, read as zeroes).  -r all completes them as
 * QEMU does (disk size: the image's, icount: none) and rewrites the table
 * to new clusters, discarding the old ones.
 */
static int check_snapshot_entries(struct check *c, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    bool repair = c->fix & QIMG_CHECK_FIX_ERRORS, any = false;
    uint64_t old_off = s->snapshots_offset, old_size = s->snapshots_size;
    struct qimg_storage *file = c->node->file;
    int ret;

    if (s->version < 3)
        return 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        if (sn->extra_size >= 16)
            continue;
        report(c, "%s snapshot table entry %" PRIu32 " is incomplete",
               repair ? "Repairing" : "ERROR", i);
        if (!repair) {
            c->res->corruptions++;
            continue;
        }
        sn->extra_size = 24;
        sn->disk_size = c->node->size;
        sn->icount = UINT64_MAX;
        c->res->corruptions_fixed++;
        any = true;
    }
    if (!any)
        return 0;
    ret = qcow2_snapshot_write_table(c->node, err);
    if (!ret && old_size && file->ops->discard)
        file->ops->discard(file, old_off, qimg_align_down(old_size +
                           c->s->cluster_size - 1, c->s->cluster_size), NULL);
    return ret;
}

/* Count every reference from the metadata into a fresh array. */
static int compute_refs(struct check *c, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    /* First: its repair rewrites the table, which may grow the file. */
    int ret = check_snapshot_entries(c, err);
    int64_t fsize = c->node->file->ops->get_size(c->node->file);

    if (ret < 0)
        return ret;
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Could not get file size");
    free(c->refs);
    c->refs = NULL;
    c->cap = 0;
    c->file_len = (uint64_t)fsize;
    c->nb_clusters = qimg_div_round_up((uint64_t)fsize, s->cluster_size);
    if (grow(c, QIMG_MAX(c->nb_clusters, 1)) < 0)
        return qimg_error_set(err, -ENOMEM, "Image too large to check");
    c->res->allocated_clusters = c->res->fragmented_clusters = 0;
    c->res->compressed_clusters = 0;
    inc_refs(c, 0, s->cluster_size);
    check_l1(c, s->l1_table_offset, s->l1_size, s->l1_table, true);
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        check_snapshot_l1(c, &s->snapshots[i]);
    if (s->nb_snapshots)
        inc_refs(c, s->snapshots_offset, s->snapshots_size);
    uint64_t crypt_off, crypt_len;
    qcow2_crypto_header_range(s, &crypt_off, &crypt_len);
    if (crypt_len)
        inc_refs(c, crypt_off, crypt_len);
    /* A bitmap table that cannot be read fails the whole check, as in
     * QEMU (an in-use bitmap's table is not validated at open). */
    ret = qcow2_bitmaps_for_each_range(c->node, inc_refs_cb, c);
    if (ret < 0)
        return qimg_error_set(err, ret, "Invalid bitmap table");
    check_refcount_table(c);
    return 0;
}

/* OFLAG_COPIED must be set exactly where the refcount is 1. */
static int check_copied(struct check *c, unsigned fix, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l2 = malloc(s->cluster_size);
    /* Leaks mode repairs COPIED bits too when no refcount is too low (as
     * QEMU: then the counts can be trusted). */
    bool repair = (fix & QIMG_CHECK_FIX_ERRORS) ||
                  ((fix & QIMG_CHECK_FIX_LEAKS) && !c->res->corruptions);

    if (!l2)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1 = s->l1_table[i], off = l1 & QCOW2_L1E_OFFSET_MASK, rc;
        bool dirty = false;
        /* Unaligned tables too: QEMU judges them by their cluster. */
        if (!off)
            continue;
        if (qcow2_get_refcount(c->node, off >> s->cluster_bits, &rc, err) < 0)
            continue;
        if ((rc == 1) != !!(l1 & QCOW2_OFLAG_COPIED)) {
            report(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
                   " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", i, l1, rc);
            if (repair) {
                uint8_t be[8];
                s->l1_table[i] = rc == 1 ? (l1 | QCOW2_OFLAG_COPIED)
                                         : (l1 & ~QCOW2_OFLAG_COPIED);
                qimg_st_be64(be, s->l1_table[i]);
                c->node->file->ops->pwrite(c->node->file,
                                           s->l1_table_offset + i * 8ull, 8, be,
                                           err);
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        if (c->node->file->ops->pread(c->node->file, off, s->cluster_size, l2,
                                      err) < 0)
            continue;
        for (uint64_t j = 0; j < qcow2_l2_entries(s); j++) {
            uint64_t e = l2e(s, l2, j), doff = e & QCOW2_L2E_OFFSET_MASK;
            /* Unaligned entries too: QEMU judges them by their cluster. */
            if ((e & QCOW2_OFLAG_COMPRESSED) || !doff || s->data_file)
                continue;
            if (qcow2_get_refcount(c->node, doff >> s->cluster_bits, &rc, err) < 0)
                continue;
            if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
                continue;
            report(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                   " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", e, rc);
            if (repair) {
                e = rc == 1 ? (e | QCOW2_OFLAG_COPIED) : (e & ~QCOW2_OFLAG_COPIED);
                qimg_st_be64(l2 + j * s->l2_entry_size, e);
                dirty = true;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        if (dirty) {
            /* The cache may hold this table: drop it before writing. */
            qcow2_cache_discard(&s->l2_cache, off);
            c->node->file->ops->pwrite(c->node->file, off, s->cluster_size, l2,
                                       err);
        }
    }
    free(l2);
    return 0;
}

int qcow2_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct check c = {.node = node, .s = s, .res = res, .fix = fix};
    bool rebuild = false;
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret)
        ret = compute_refs(&c, err);
    if (ret < 0)
        goto out;
    res->total_clusters = (int64_t)qimg_div_round_up(node->size, s->cluster_size);
    compare_refcounts(&c, 0, &rebuild, err);
    rebuild |= c.refblock_broken;
    if (rebuild && fix) {
        if (!(fix & QIMG_CHECK_FIX_ERRORS)) {
            report(&c, "ERROR need to rebuild refcount structures");
            ret = qimg_error_set(err, -EIO, "Input/output error");
            goto out;
        }
        report(&c, "Rebuilding refcount structure");
        ret = rebuild_refcounts(&c, err);
        if (ret < 0)
            goto out;
        res->corruptions_fixed += res->corruptions - c.past_eof;
        res->leaks_fixed += res->leaks;
        res->corruptions = c.past_eof;
        res->leaks = 0;
        /* The old structure is now leaked: release it, uncounted. */
        struct qimg_check scratch = *res;
        c.res = &scratch;
        ret = compute_refs(&c, err);
        if (!ret)
            compare_refcounts(&c, QIMG_CHECK_FIX_LEAKS, NULL, err);
        c.res = res;
        res->image_end_offset = scratch.image_end_offset;
        res->allocated_clusters = scratch.allocated_clusters;
        res->fragmented_clusters = scratch.fragmented_clusters;
        res->compressed_clusters = scratch.compressed_clusters;
        if (ret < 0)
            goto out;
    } else if (fix && (res->leaks || res->corruptions)) {
        compare_refcounts(&c, fix, NULL, err);
    }
    check_copied(&c, fix, err);
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
out:
    pthread_mutex_unlock(&node->lock);
    free(c.refs);
    return ret;
}
