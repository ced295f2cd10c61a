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
    uint64_t first, last;

    if (!len)
        return 0;
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
            inc_refs(c, qimg_align_down(coff, 512), sectors * 512);
            continue;
        }
        bool zero = s->subcluster_bits
                        ? false
                        : (s->version >= 3 && (e & QCOW2_OFLAG_ZERO));
        uint64_t bitmap = s->l2_entry_size == 16
                              ? qimg_ld_be64(l2 + i * 16 + 8) : 0;
        bool allocated = off || (s->data_file && (e & QCOW2_OFLAG_COPIED));
        if (s->subcluster_bits && !(bitmap & 0xffffffffull) && !off)
            allocated = false;
        if (!allocated)
            continue;
        (void)zero;
        if (active) {
            c->res->allocated_clusters++;
            if (*next_contiguous && off != *next_contiguous)
                c->res->fragmented_clusters++;
            *next_contiguous = off + s->cluster_size;
        }
        if (off & (s->cluster_size - 1)) {
            report(c, "ERROR offset=%" PRIx64 ": Cluster is not properly "
                   "aligned; L2 entry corrupted", off);
            c->res->corruptions++;
            continue;
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
        if (!off)
            continue;
        inc_refs(c, off, s->cluster_size);
        if (off & (s->cluster_size - 1)) {
            report(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; "
                   "L1 entry corrupted", off);
            c->res->corruptions++;
            continue;
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
    }
}

/* Set the stored refcount of cluster i to v (repair). */
static int set_refcount(struct check *c, uint64_t i, uint64_t stored, uint64_t v,
                        struct qimg_error *err)
{
    int64_t delta = (int64_t)v - (int64_t)stored;
    return qcow2_update_refcount(c->node, i << c->s->cluster_bits, 1, delta, err);
}

static int compare_refcounts(struct check *c, unsigned fix,
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
        bool repair = leak ? (fix & (QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS))
                           : (fix & QIMG_CHECK_FIX_ERRORS);
        report(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
               repair ? "Repairing" : leak ? "Leaked" : "ERROR", i, stored,
               computed);
        if (repair && set_refcount(c, i, stored, computed, err) == 0) {
            if (leak)
                c->res->leaks_fixed++;
            else
                c->res->corruptions_fixed++;
            continue;
        }
        if (leak)
            c->res->leaks++;
        else
            c->res->corruptions++;
    }
    c->res->image_end_offset = any ? (int64_t)((highest + 1) << s->cluster_bits)
                                   : 0;
    return 0;
}

/* OFLAG_COPIED must be set exactly where the refcount is 1. */
static int check_copied(struct check *c, unsigned fix, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l2 = malloc(s->cluster_size);

    if (!l2)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1 = s->l1_table[i], off = l1 & QCOW2_L1E_OFFSET_MASK, rc;
        bool dirty = false;
        if (!off || (off & (s->cluster_size - 1)))
            continue;
        if (qcow2_get_refcount(c->node, off >> s->cluster_bits, &rc, err) < 0)
            continue;
        if ((rc == 1) != !!(l1 & QCOW2_OFLAG_COPIED)) {
            report(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
                   " refcount=%" PRIu64, (fix & QIMG_CHECK_FIX_ERRORS)
                   ? "Repairing" : "ERROR", i, l1, rc);
            if (fix & QIMG_CHECK_FIX_ERRORS) {
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
            if ((e & QCOW2_OFLAG_COMPRESSED) || !doff || s->data_file ||
                (doff & (s->cluster_size - 1)))
                continue;
            if (qcow2_get_refcount(c->node, doff >> s->cluster_bits, &rc, err) < 0)
                continue;
            if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
                continue;
            report(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                   " refcount=%" PRIu64, (fix & QIMG_CHECK_FIX_ERRORS)
                   ? "Repairing" : "ERROR", e, rc);
            if (fix & QIMG_CHECK_FIX_ERRORS) {
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
    struct check c = {.node = node, .s = s, .res = res};
    int64_t fsize = node->file->ops->get_size(node->file);
    int ret;

    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Could not get file size");
    pthread_mutex_lock(&node->lock);
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        goto out;
    c.nb_clusters = qimg_div_round_up((uint64_t)fsize, s->cluster_size);
    if (grow(&c, QIMG_MAX(c.nb_clusters, 1)) < 0) {
        ret = qimg_error_set(err, -ENOMEM, "Image too large to check");
        goto out;
    }
    res->total_clusters = (int64_t)qimg_div_round_up(node->size, s->cluster_size);
    inc_refs(&c, 0, s->cluster_size);
    check_l1(&c, s->l1_table_offset, s->l1_size, s->l1_table, true);
    if (s->nb_snapshots)
        inc_refs(&c, s->snapshots_offset, s->cluster_size);
    check_refcount_table(&c);
    /* New refcount blocks made by repairs must not land on used clusters. */
    if (fix)
        s->free_cluster_index = QIMG_MAX(s->free_cluster_index, c.nb_clusters);
    compare_refcounts(&c, fix, err);
    check_copied(&c, fix, err);
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
out:
    pthread_mutex_unlock(&node->lock);
    free(c.refs);
    return ret;
}
