/*
 * qcow2-check.c - consistency check and repair, step by step as QEMU 7.2
 * does it, so that reports, counts, exit codes and repaired images match.
 *
 * The snapshot table is read first (in check mode the open skipped it),
 * repairing with -r all what QEMU's repair drops.  Then every reference
 * from the metadata (header, L1/L2 tables and what they map, snapshot
 * tables, refcount table and blocks, bitmaps) is counted into an
 * in-memory refcount table (the "IMRT": the image's refcount width, laid
 * out as the concatenation of all refcount blocks) and compared with the
 * stored refcounts: a stored count above the computed one is a leak,
 * below it a corruption.  A stored count of 0 where the metadata refers
 * means the refcount structure is broken: -r all rebuilds it from the
 * IMRT (blocks written as slices of it).  Then the COPIED flags of the
 * active tables are checked.  A repairing check that leaves no corruption
 * clears the dirty and corrupt bits.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"
#include "fmt/qcow2/qcow2-l2.h"

/* The IMRT covers every cluster up to the file's end (QEMU refuses more
 * than INT_MAX of them) and whatever references add, each a cluster or
 * less past it.  Its bytes are bounded so that a hostile image cannot
 * make us allocate without limit (QEMU: until allocation fails). */
#define QCOW2_CHECK_MAX_IMRT_BYTES (1ull << 30)

struct check {
    struct qimg_image *node;
    struct qcow2_state *s;
    struct qimg_check *res;
    uint8_t *imrt;
    uint64_t nb;            /* clusters the IMRT covers */
};

static void report(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void report(struct check *c, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    if (!c->res->report)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->res->report(c->res->opaque, line);
}

/* Bytes of an IMRT of n entries, rounded to clusters (so that a slice can
 * be written as a refcount block). */
static uint64_t imrt_bytes(const struct qcow2_state *s, uint64_t n)
{
    uint64_t b = qimg_div_round_up(n << s->refcount_order, 8);
    return qimg_div_round_up(b, s->cluster_size) * s->cluster_size;
}

static int imrt_resize(struct check *c, uint64_t n)
{
    uint64_t old = c->imrt ? imrt_bytes(c->s, c->nb) : 0;
    uint64_t want = imrt_bytes(c->s, n);
    uint8_t *p;

    if (want == old && c->imrt) {
        c->nb = n;
        return 0;
    }
    if (!want || want > QCOW2_CHECK_MAX_IMRT_BYTES)
        return -ENOMEM;
    p = realloc(c->imrt, (size_t)want);
    if (!p)
        return -ENOMEM;
    if (want > old)
        memset(p + old, 0, (size_t)(want - old));
    c->imrt = p;
    c->nb = n;
    return 0;
}

static uint64_t imrt_get(const struct check *c, uint64_t i)
{
    return i < c->nb ? qcow2_refcount_read_entry(c->s, c->imrt, i) : 0;
}

static void imrt_set(struct check *c, uint64_t i, uint64_t v)
{
    qcow2_refcount_write_entry(c->s, c->imrt, i, v);
}

/*
 * Count one reference to every cluster of [off, off+size).  A region
 * ending a cluster or more past the end of the file is a corruption and
 * not counted (the last cluster may be partly past it).
 */
static int inc_refs(struct check *c, uint64_t off, uint64_t size)
{
    struct qcow2_state *s = c->s;
    int64_t flen;
    uint64_t end;

    if (!size)
        return 0;
    flen = c->node->file->ops->get_size(c->node->file);
    if (flen < 0)
        return (int)flen;
    if (qimg_add_overflow(off, size, &end) || end > INT64_MAX ||
        (end > (uint64_t)flen && end - (uint64_t)flen >= s->cluster_size)) {
        report(c, "ERROR: counting reference for region exceeding the end of "
               "the file by one cluster or more: offset 0x%" PRIx64 " size 0x%"
               PRIx64, off, size);
        c->res->corruptions++;
        return 0;
    }
    for (uint64_t k = off >> s->cluster_bits; k <= (end - 1) >> s->cluster_bits;
         k++) {
        uint64_t rc;
        if (k >= c->nb && imrt_resize(c, k + 1) < 0) {
            c->res->check_errors++;
            return -ENOMEM;
        }
        rc = imrt_get(c, k);
        if (rc == s->refcount_max) {
            report(c, "ERROR: overflow cluster offset=0x%" PRIx64,
                   k << s->cluster_bits);
            report(c, "Use qemu-img amend to increase the refcount entry width "
                   "or qemu-img convert to create a clean copy if the image "
                   "cannot be opened for writing");
            c->res->corruptions++;
            continue;
        }
        imrt_set(c, k, rc + 1);
    }
    return 0;
}

static void inc_refs_cb(void *opaque, uint64_t off, uint64_t len)
{
    inc_refs(opaque, off, len);
}

/* ---- L1 and L2 tables ---------------------------------------------------- */

/*
 * Repair an entry whose preallocated cluster is unaligned: make it read
 * as zero without a host cluster.  Written at once, after the overlap
 * check (*overlap set when that fails).
 */
static int fix_l2_entry_by_zero(struct check *c, uint64_t l2_off, uint8_t *l2,
                                uint64_t idx, bool active, bool *overlap)
{
    struct qcow2_state *s = c->s;
    uint64_t eoff = l2_off + idx * s->l2_entry_size;
    struct qimg_error err = {0};
    int ret;

    if (s->subcluster_bits) {
        uint64_t bm = l2_bitmap(s, l2, idx);
        bm |= bm << 32;
        bm &= 0xffffffff00000000ull;
        l2_set(s, l2, idx, 0, bm);
    } else {
        l2_set(s, l2, idx, QCOW2_OFLAG_ZERO, 0);
    }
    ret = qcow2_overlap_check(c->node, active ? QCOW2_OL_ACTIVE_L2
                                              : QCOW2_OL_INACTIVE_L2,
                              eoff, s->l2_entry_size, &err);
    *overlap = ret < 0;
    if (ret < 0) {
        report(c, "ERROR: Overlap check failed");
        goto fail;
    }
    ret = c->node->file->ops->pwrite(c->node->file, eoff, s->l2_entry_size,
                                     l2 + idx * s->l2_entry_size, &err);
    if (!ret)
        ret = c->node->file->ops->flush(c->node->file, &err);
    if (ret < 0) {
        report(c, "ERROR: Failed to overwrite L2 table entry: %s",
               strerror(-ret));
        goto fail;
    }
    qcow2_cache_discard(&s->l2_cache, l2_off);
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 0;
fail:
    c->res->check_errors++;
    return ret;
}

static int check_l2(struct check *c, uint64_t l2_off, bool frag, unsigned fix,
                    bool active)
{
    struct qcow2_state *s = c->s;
    struct qimg_check *res = c->res;
    uint64_t next_contiguous = 0;
    uint8_t *l2 = malloc(s->cluster_size);
    int ret;

    if (!l2) {
        res->check_errors++;
        return -ENOMEM;
    }
    ret = c->node->file->ops->pread(c->node->file, l2_off, s->cluster_size, l2,
                                    NULL);
    if (ret < 0) {
        report(c, "ERROR: I/O error in check_refcounts_l2");
        res->check_errors++;
        goto out;
    }
    for (uint64_t i = 0; i < qcow2_l2_entries(s); i++) {
        uint64_t e = l2_get(s, l2, i), bm = l2_bitmap(s, l2, i);
        bool compressed = e & QCOW2_OFLAG_COMPRESSED;

        if (!compressed && (e & QCOW2_L2E_STD_RESERVED)) {
            report(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            res->corruptions++;
        }
        if (compressed) {
            uint64_t coff = e & s->cluster_offset_mask;
            uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
            if (e & QCOW2_OFLAG_COPIED) {
                report(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
                       "be set for compressed clusters", coff);
                e &= ~QCOW2_OFLAG_COPIED;
                res->corruptions++;
            }
            if (s->data_file) {
                report(c, "ERROR compressed cluster %" PRIu64 " with data file, "
                       "entry=0x%" PRIx64, i, e);
                res->corruptions++;
                continue;
            }
            if (bm) {
                report(c, "ERROR compressed cluster %" PRIu64 " with non-zero "
                       "subcluster allocation bitmap, entry=0x%" PRIx64, i, e);
                res->corruptions++;
                continue;
            }
            /* The range as QEMU counts it: from the exact byte offset. */
            ret = inc_refs(c, coff, sectors * 512 - (coff & 511));
            if (ret < 0)
                goto out;
            if (frag) {
                res->allocated_clusters++;
                res->compressed_clusters++;
                /* Compressed clusters are fragmented by nature. */
                res->fragmented_clusters++;
            }
            continue;
        }
        bool zero_flag = !s->subcluster_bits && (e & QCOW2_OFLAG_ZERO);
        if (!entry_mapped(s, e)) {
            /* Unallocated (or zero without a host cluster). */
            if (s->subcluster_bits && (bm & 0xffffffffull)) {
                res->corruptions++;
                report(c, "ERROR: Unallocated cluster has non-zero subcluster "
                       "allocation map");
            }
            continue;
        }
        uint64_t off = host_of(e);
        if ((bm >> 32) & bm) {
            res->corruptions++;
            report(c, "ERROR offset=%" PRIx64 ": Allocated cluster has "
                   "corrupted subcluster allocation bitmap", off);
        }
        if (off & (s->cluster_size - 1)) {
            bool data = s->subcluster_bits ? (bm & 0xffffffffull) != 0
                                           : !zero_flag;
            res->corruptions++;
            if (!data) {
                report(c, "%s offset=%" PRIx64 ": Preallocated cluster is not "
                       "properly aligned; L2 entry corrupted.",
                       (fix & QIMG_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR",
                       off);
                if (fix & QIMG_CHECK_FIX_ERRORS) {
                    bool overlap = false;
                    ret = fix_l2_entry_by_zero(c, l2_off, l2, i, active,
                                               &overlap);
                    if (overlap)
                        goto out;   /* something is seriously wrong */
                    if (ret == 0)
                        continue;   /* unused now */
                    ret = 0;
                }
            } else {
                report(c, "ERROR offset=%" PRIx64 ": Data cluster is not "
                       "properly aligned; L2 entry corrupted.", off);
            }
        }
        if (frag) {
            res->allocated_clusters++;
            if (next_contiguous && off != next_contiguous)
                res->fragmented_clusters++;
            next_contiguous = off + s->cluster_size;
        }
        if (!s->data_file) {
            ret = inc_refs(c, off, s->cluster_size);
            if (ret < 0)
                goto out;
        }
    }
    ret = 0;
out:
    free(l2);
    return ret;
}

static int check_l1(struct check *c, uint64_t l1_off, uint32_t l1_size,
                    bool frag, unsigned fix, bool active)
{
    struct qcow2_state *s = c->s;
    uint64_t *l1;
    int ret;

    if (!l1_size)
        return 0;
    ret = inc_refs(c, l1_off, (uint64_t)l1_size * 8);
    if (ret < 0)
        return ret;
    l1 = malloc((size_t)l1_size * 8);
    if (!l1) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    ret = c->node->file->ops->pread(c->node->file, l1_off, (size_t)l1_size * 8,
                                    l1, NULL);
    if (ret < 0) {
        report(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        free(l1);
        return ret;
    }
    for (uint32_t i = 0; i < l1_size && !ret; i++) {
        uint64_t e = be64toh(l1[i]), l2_off = e & QCOW2_L1E_OFFSET_MASK;
        if (!e)
            continue;
        if (e & QCOW2_L1E_RESERVED) {
            report(c, "ERROR found L1 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions++;
        }
        ret = inc_refs(c, l2_off, s->cluster_size);
        if (ret < 0)
            break;
        if (l2_off & (s->cluster_size - 1)) {
            report(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                   "aligned; L1 entry corrupted", l2_off);
            c->res->corruptions++;
        }
        ret = check_l2(c, l2_off, frag, fix, active);
    }
    free(l1);
    return ret;
}

/* ---- refcount blocks and the whole count --------------------------------- */

static int check_refblocks(struct check *c, unsigned fix, bool *rebuild)
{
    struct qcow2_state *s = c->s;
    struct qimg_check *res = c->res;
    int ret;

    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t off = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        uint64_t cl = off >> s->cluster_bits;

        if (s->refcount_table[i] & ~QCOW2_REFT_OFFSET_MASK) {
            report(c, "ERROR refcount table entry %" PRIu64 " has reserved bits "
                   "set", i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (off & (s->cluster_size - 1)) {
            report(c, "ERROR refcount block %" PRIu64 " is not cluster aligned; "
                   "refcount table entry corrupted", i);
            res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (cl >= c->nb) {
            res->corruptions++;
            report(c, "%s refcount block %" PRIu64 " is outside image",
                   (fix & QIMG_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i);
            if (fix & QIMG_CHECK_FIX_ERRORS) {
                /* The file grows to hold the block. */
                struct qimg_error err = {0};
                int64_t size;
                ret = off > INT64_MAX - s->cluster_size ? -EINVAL : 0;
                if (!ret)
                    ret = c->node->file->ops->truncate(c->node->file,
                                                       off + s->cluster_size,
                                                       QIMG_PREALLOC_OFF, &err);
                if (ret < 0 && err.msg[0])
                    qimg_message(QIMG_MSG_ERROR, "%s\n", err.msg);
                if (!ret) {
                    size = c->node->file->ops->get_size(c->node->file);
                    ret = size < 0 ? (int)size : 0;
                    if (!ret && imrt_resize(c, qimg_div_round_up((uint64_t)size,
                                                     s->cluster_size)) < 0) {
                        res->check_errors++;
                        return -ENOMEM;
                    }
                    if (!ret && cl >= c->nb)
                        ret = -EINVAL;
                }
                if (ret < 0) {
                    *rebuild = true;
                    report(c, "ERROR could not resize image: %s",
                           strerror(-ret));
                    continue;
                }
                res->corruptions--;
                res->corruptions_fixed++;
                ret = inc_refs(c, off, s->cluster_size);
                if (ret < 0)
                    return ret;
            }
            continue;
        }
        if (off) {
            ret = inc_refs(c, off, s->cluster_size);
            if (ret < 0)
                return ret;
            if (imrt_get(c, cl) != 1) {
                report(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64,
                       i, imrt_get(c, cl));
                res->corruptions++;
                *rebuild = true;
            }
        }
    }
    return 0;
}

static int calculate_refcounts(struct check *c, unsigned fix, bool *rebuild)
{
    struct qcow2_state *s = c->s;
    int ret;

    ret = inc_refs(c, 0, s->cluster_size);     /* header */
    if (!ret)
        ret = check_l1(c, s->l1_table_offset, s->l1_size, true, fix, true);
    if (ret < 0)
        return ret;
    if (s->data_file && s->nb_snapshots) {
        report(c, "ERROR %u snapshots in image with data file",
               s->nb_snapshots);
        c->res->corruptions++;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots[i];
        if (sn->l1_table_offset & (s->cluster_size - 1)) {
            report(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table "
                   "is not cluster aligned; snapshot table entry corrupted",
                   sn->id, sn->name, sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_SIZE / 8) {
            report(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
                   "too large; snapshot table entry corrupted", sn->id,
                   sn->name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = check_l1(c, sn->l1_table_offset, sn->l1_size, false, fix, false);
        if (ret < 0)
            return ret;
    }
    ret = inc_refs(c, s->snapshots_offset, s->snapshots_size);
    if (!ret)
        ret = inc_refs(c, s->refcount_table_offset, s->refcount_table_size * 8);
    if (ret < 0)
        return ret;
    /* The LUKS header of an encrypted image is referenced too. */
    uint64_t crypt_off, crypt_len;
    qcow2_crypto_header_range(s, &crypt_off, &crypt_len);
    if (crypt_len && (ret = inc_refs(c, crypt_off, crypt_len)) < 0)
        return ret;
    /* A bitmap table that cannot be read fails the whole check. */
    if (qcow2_bitmaps_for_each_range(c->node, inc_refs_cb, c) < 0) {
        c->res->corruptions++;
        return -EINVAL;
    }
    return check_refblocks(c, fix, rebuild);
}

/*
 * Compare stored and computed refcounts, repairing (-r) what the mode
 * allows: leaks with leaks, corruptions with all.  A cluster referenced
 * but stored as free needs a rebuilt structure.
 */
static void compare_refcounts(struct check *c, unsigned fix, bool *rebuild,
                              uint64_t *highest)
{
    struct qcow2_state *s = c->s;
    struct qimg_check *res = c->res;

    *highest = 0;
    if (fix)
        qcow2_discards_begin(c->node);
    /* One error object cleared per cluster: "= {0}" in the loop would
     * zero its 4 KiB message for every cluster of the image. */
    struct qimg_error err;
    for (uint64_t i = 0; i < c->nb; i++) {
        qimg_error_clear(&err);
        uint64_t stored, computed = imrt_get(c, i);
        int *fixed = NULL;
        int ret = qcow2_get_refcount(c->node, i, &stored, &err);

        if (ret < 0) {
            report(c, "Can't get refcount for cluster %" PRIu64 ": %s", i,
                   strerror(-ret));
            res->check_errors++;
            continue;
        }
        if (stored || computed)
            *highest = i;
        if (stored == computed)
            continue;
        if (!stored)
            *rebuild = true;
        else if (stored > computed && (fix & QIMG_CHECK_FIX_LEAKS))
            fixed = &res->leaks_fixed;
        else if (stored < computed && (fix & QIMG_CHECK_FIX_ERRORS))
            fixed = &res->corruptions_fixed;
        report(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
               PRIu64, fixed ? "Repairing" : stored < computed ? "ERROR"
                                                                : "Leaked",
               i, stored, computed);
        if (fixed && qcow2_update_refcount(c->node, i << s->cluster_bits, 1,
                                           (int64_t)(computed - stored),
                                           &err) >= 0) {
            (*fixed)++;
            continue;
        }
        if (stored < computed)
            res->corruptions++;
        else
            res->leaks++;
    }
    if (fix)
        qcow2_discards_end(c->node);
}

/* ---- rebuilding the refcount structure ----------------------------------- */

/*
 * Allocate n clusters in the IMRT, from *first_free on (which need not be
 * free); *first_free moves to the first gap met.  The IMRT grows when the
 * run goes past its end.  Returns the offset.
 */
static int64_t alloc_imrt(struct check *c, uint64_t n, uint64_t *first_free)
{
    uint64_t cl = *first_free, run = 0;
    bool first_gap = true;

    for (; cl < c->nb && run < n; cl++) {
        if (!imrt_get(c, cl)) {
            run++;
            if (first_gap) {
                *first_free = cl;
                first_gap = false;
            }
        } else {
            run = 0;
        }
    }
    if (run < n && imrt_resize(c, cl + n - run) < 0)
        return -ENOMEM;
    cl -= run;
    for (uint64_t i = 0; i < n; i++)
        imrt_set(c, cl + i, 1);
    return (int64_t)(cl << c->s->cluster_bits);
}

/*
 * Write the refcount blocks of every block range in [first, end) that
 * holds a nonzero count, each as its slice of the IMRT, allocating them
 * (in the IMRT) where the table has none yet.  Returns 1 when the table
 * had to grow, 0, or a negative errno.
 */
static int write_refblocks(struct check *c, uint64_t first, uint64_t end,
                           uint64_t **table, uint64_t *entries,
                           struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t per_block = 1ull << s->refcount_block_bits, first_free = 0;
    bool grown = false;
    int ret;

    for (uint64_t cl = first; cl < end; cl++) {
        uint64_t bi, bstart, boff;

        if (!imrt_get(c, cl))
            continue;
        bi = cl >> s->refcount_block_bits;
        bstart = bi << s->refcount_block_bits;
        if (*entries > bi && (*table)[bi]) {
            boff = (*table)[bi];
        } else {
            int64_t o;
            /* Not in a block already written. */
            if (first_free < bstart)
                first_free = bstart;
            o = alloc_imrt(c, 1, &first_free);
            if (o < 0)
                return qimg_error_set(err, (int)o, "ERROR allocating refblock: "
                                      "%s", strerror((int)-o));
            boff = (uint64_t)o;
            if ((boff >> s->cluster_bits) >= end)
                end = (boff >> s->cluster_bits) + 1;  /* counts this block */
            if (*entries <= bi) {
                uint64_t n = qimg_div_round_up((bi + 1) * 8, s->cluster_size) *
                             s->cluster_size / 8;
                uint64_t *t = n * 8 > QCOW2_MAX_REFTABLE_SIZE
                                  ? NULL : realloc(*table, n * 8);
                if (!t)
                    return qimg_error_set(err, -ENOMEM, "ERROR allocating "
                                          "reftable memory");
                memset(t + *entries, 0, (n - *entries) * 8);
                *table = t;
                *entries = n;
                grown = true;
            }
            (*table)[bi] = boff;
        }
        ret = qcow2_overlap_check(c->node, 0, boff, s->cluster_size, err);
        if (!ret)
            ret = c->node->file->ops->pwrite(
                c->node->file, boff, s->cluster_size,
                c->imrt + bi * s->cluster_size, err);
        if (ret < 0) {
            qimg_error_prefix(err, "ERROR writing refblock: ");
            return ret;
        }
        cl = bstart + per_block - 1;
    }
    return grown;
}

static int rebuild_refcount_structure(struct check *c, struct qimg_error *err)
{
    struct qcow2_state *s = c->s;
    struct qimg_image *node = c->node;
    uint64_t *table = NULL, entries = 0, tclusters = 0;
    int64_t toff = -1;
    uint8_t hdr[12];
    int changed, ret;

    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    for (size_t i = 0; i < s->refblock_cache.n; i++)
        qcow2_cache_discard(&s->refblock_cache, s->refblock_cache.e[i].offset);
    changed = write_refblocks(c, 0, c->nb, &table, &entries, err);
    if (changed < 0) {
        c->res->check_errors++;
        ret = changed;
        goto fail;
    }
    /* The table's own clusters change the counts: write the blocks they
     * fall in again, until the table stops growing. */
    do {
        uint64_t first_free = 0;
        tclusters = qimg_div_round_up(entries * 8, s->cluster_size);
        toff = alloc_imrt(c, tclusters, &first_free);
        if (toff < 0) {
            ret = qimg_error_set(err, (int)toff, "ERROR allocating reftable: %s",
                                 strerror((int)-toff));
            c->res->check_errors++;
            goto fail;
        }
        changed = write_refblocks(c, (uint64_t)toff >> s->cluster_bits,
                                  ((uint64_t)toff >> s->cluster_bits) + tclusters,
                                  &table, &entries, err);
        if (changed < 0) {
            c->res->check_errors++;
            ret = changed;
            goto fail;
        }
    } while (changed);
    for (uint64_t i = 0; i < entries; i++)
        table[i] = htobe64(table[i]);
    ret = qcow2_overlap_check(node, 0, (uint64_t)toff, entries * 8, err);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, (uint64_t)toff, entries * 8,
                                      table, err);
    if (ret < 0) {
        qimg_error_prefix(err, "ERROR writing reftable: ");
        goto fail;
    }
    qimg_st_be64(hdr, (uint64_t)toff);
    qimg_st_be32(hdr + 8, (uint32_t)tclusters);
    ret = node->file->ops->pwrite(node->file, 48, 12, hdr, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        qimg_error_prefix(err, "ERROR setting reftable: ");
        goto fail;
    }
    for (uint64_t i = 0; i < entries; i++)
        table[i] = be64toh(table[i]);
    free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_offset = (uint64_t)toff;
    s->refcount_table_size = entries;
    s->refcount_table_clusters = (uint32_t)tclusters;
    return 0;
fail:
    free(table);
    return ret;
}

/* ---- COPIED flags -------------------------------------------------------- */

static int check_oflag_copied(struct check *c, unsigned fix)
{
    struct qcow2_state *s = c->s;
    struct qimg_check *res = c->res;
    struct qimg_storage *file = c->node->file;
    uint8_t *l2 = malloc(s->cluster_size);
    bool repair;
    int ret = 0;

    if (!l2)
        return -ENOMEM;
    if (fix & QIMG_CHECK_FIX_ERRORS)
        repair = true;
    else if (fix & QIMG_CHECK_FIX_LEAKS)   /* only when counts are right */
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    else
        repair = false;
    struct qimg_error err;   /* cleared per table, not zeroed per entry */
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i], l2_off = l1e & QCOW2_L1E_OFFSET_MASK, rc;
        int dirty = 0;

        if (!l2_off)
            continue;
        qimg_error_clear(&err);
        if (qcow2_get_refcount(c->node, l2_off >> s->cluster_bits, &rc, &err) < 0)
            continue;
        if ((rc == 1) != !!(l1e & QCOW2_OFLAG_COPIED)) {
            res->corruptions++;
            report(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
                   " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", i, l1e,
                   rc);
            if (repair) {
                s->l1_table[i] = rc == 1 ? l1e | QCOW2_OFLAG_COPIED
                                         : l1e & ~QCOW2_OFLAG_COPIED;
                ret = qcow2_write_l1_entry(c->node, i, &err);
                if (ret < 0) {
                    res->check_errors++;
                    goto out;
                }
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        ret = file->ops->pread(file, l2_off, s->cluster_size, l2, &err);
        if (ret < 0) {
            report(c, "ERROR: Could not read L2 table: %s", strerror(-ret));
            res->check_errors++;
            goto out;
        }
        for (uint64_t j = 0; j < qcow2_l2_entries(s); j++) {
            uint64_t e = l2_get(s, l2, j);
            bool zero_plain = !s->subcluster_bits && (e & QCOW2_OFLAG_ZERO) &&
                              !host_of(e);
            if ((e & QCOW2_OFLAG_COMPRESSED) || !entry_mapped(s, e) || zero_plain)
                continue;
            if (s->data_file) {
                rc = 1;
            } else if (qcow2_get_refcount(c->node, host_of(e) >> s->cluster_bits,
                                          &rc, &err) < 0) {
                continue;
            }
            if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
                continue;
            res->corruptions++;
            report(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                   " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", e, rc);
            if (repair) {
                l2_set(s, l2, j, rc == 1 ? e | QCOW2_OFLAG_COPIED
                                         : e & ~QCOW2_OFLAG_COPIED,
                       l2_bitmap(s, l2, j));
                dirty++;
            }
        }
        if (dirty) {
            ret = qcow2_overlap_check(c->node, QCOW2_OL_ACTIVE_L2, l2_off,
                                      s->cluster_size, &err);
            if (ret < 0) {
                report(c, "ERROR: Could not write L2 table; metadata overlap "
                       "check failed: %s", strerror(-ret));
                res->check_errors++;
                goto out;
            }
            /* The cache may hold this table: drop it before writing. */
            qcow2_cache_discard(&s->l2_cache, l2_off);
            ret = file->ops->pwrite(file, l2_off, s->cluster_size, l2, &err);
            if (ret < 0) {
                report(c, "ERROR: Could not write L2 table: %s", strerror(-ret));
                res->check_errors++;
                goto out;
            }
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    ret = 0;
out:
    free(l2);
    return ret;
}

/* ---- the refcount check -------------------------------------------------- */

static int check_refcounts(struct qimg_image *node, struct qimg_check *res,
                           unsigned fix)
{
    struct qcow2_state *s = node->state;
    struct check c = {.node = node, .s = s, .res = res};
    struct qimg_check pre;
    uint64_t highest = 0;
    bool rebuild = false;
    int64_t size = node->file->ops->get_size(node->file);
    int ret;

    if (size < 0) {
        res->check_errors++;
        return (int)size;
    }
    if (qimg_div_round_up((uint64_t)size, s->cluster_size) > INT32_MAX) {
        res->check_errors++;
        return -EFBIG;
    }
    res->total_clusters = (int64_t)qimg_div_round_up(node->size, s->cluster_size);
    if (imrt_resize(&c, qimg_div_round_up((uint64_t)size, s->cluster_size)) < 0) {
        res->check_errors++;
        ret = -ENOMEM;
        goto out;
    }
    ret = calculate_refcounts(&c, fix, &rebuild);
    if (ret < 0)
        goto out;
    /* When nothing needs rebuilding but something is to be fixed, the
     * comparison runs again with the counts from before it. */
    pre = *res;
    compare_refcounts(&c, 0, &rebuild, &highest);
    if (rebuild && (fix & QIMG_CHECK_FIX_ERRORS)) {
        struct qimg_check old = *res;
        struct qimg_error err = {0};
        int fresh_leaks = 0;

        report(&c, "Rebuilding refcount structure");
        ret = rebuild_refcount_structure(&c, &err);
        if (ret < 0) {
            qimg_message(QIMG_MSG_ERROR, "%s\n", err.msg);
            goto out;
        }
        res->corruptions = 0;
        res->leaks = 0;
        /* The old structure was exchanged: count again. */
        rebuild = false;
        memset(c.imrt, 0, (size_t)imrt_bytes(s, c.nb));
        ret = calculate_refcounts(&c, 0, &rebuild);
        if (ret < 0)
            goto out;
        if (fix & QIMG_CHECK_FIX_LEAKS) {
            /* The old structure leaks now: free it; only leaks the
             * rebuild itself caused and could not fix remain. */
            struct qimg_check saved = *res;
            struct qimg_check scratch = {.report = res->report,
                                         .opaque = res->opaque};
            c.res = &scratch;
            compare_refcounts(&c, QIMG_CHECK_FIX_LEAKS, &rebuild, &highest);
            c.res = res;
            if (rebuild)
                report(&c, "ERROR rebuilt refcount structure is still broken");
            fresh_leaks = scratch.leaks;
            *res = saved;
        }
        if (res->corruptions < old.corruptions)
            res->corruptions_fixed += old.corruptions - res->corruptions;
        if (res->leaks < old.leaks)
            res->leaks_fixed += old.leaks - res->leaks;
        res->leaks += fresh_leaks;
    } else if (fix) {
        if (rebuild) {
            report(&c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            ret = -EIO;
            goto out;
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            compare_refcounts(&c, fix, &rebuild, &highest);
        }
    }
    ret = check_oflag_copied(&c, fix);
    if (ret < 0)
        goto out;
    res->image_end_offset = (int64_t)((highest + 1) << s->cluster_bits);
out:
    free(c.imrt);
    return ret;
}

/* ---- the snapshot table -------------------------------------------------- */

/*
 * As QEMU: the table pointer is read again from the header (a check-mode
 * open skipped the table), too many entries dropped with -r all, the
 * table read with repair, incomplete version 3 entries counted.
 */
static int check_read_snapshot_table(struct qimg_image *node,
                                     struct qimg_check *res, unsigned fix)
{
    struct qcow2_state *s = node->state;
    struct qimg_error err = {0};
    bool repair = fix & QIMG_CHECK_FIX_ERRORS;
    int reduced = 0, dropped = 0, ret;
    uint64_t size;
    uint8_t hdr[12];

    qcow2_snapshots_free(s);
    s->nb_snapshots = 0;
    ret = node->file->ops->pread(node->file, 60, 12, hdr, &err);
    if (ret < 0) {
        res->check_errors++;
        qimg_message(QIMG_MSG_PLAIN, "ERROR failed to read the snapshot table "
                     "pointer from the image header: %s\n", strerror(-ret));
        return ret;
    }
    s->nb_snapshots = qimg_ld_be32(hdr);
    s->snapshots_offset = qimg_ld_be64(hdr + 4);
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS && repair) {
        qimg_message(QIMG_MSG_PLAIN, "Discarding %u overhanging snapshots\n",
                     s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        reduced += (int)(s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        s->nb_snapshots = QCOW2_MAX_SNAPSHOTS;
    }
    size = (uint64_t)s->nb_snapshots * 40;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        ret = qimg_error_set(&err, -EFBIG, "snapshot table too large");
    } else if (INT64_MAX - size < s->snapshots_offset ||
               (s->snapshots_offset & (s->cluster_size - 1))) {
        ret = qimg_error_set(&err, -EINVAL, "snapshot table offset invalid");
    }
    if (ret < 0) {
        res->check_errors++;
        qimg_message(QIMG_MSG_ERROR, "ERROR %s\n", err.msg);
        if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
            qimg_message(QIMG_MSG_PLAIN, "You can force-remove all %u "
                         "overhanging snapshots with qemu-img check -r all\n",
                         s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        s->snapshots_offset = 0;
        s->nb_snapshots = 0;
        return ret;
    }
    ret = qcow2_snapshots_read(node, repair, &reduced, &dropped, &err);
    if (ret < 0) {
        res->check_errors++;
        qimg_message(QIMG_MSG_ERROR, "ERROR failed to read the snapshot table: "
                     "%s\n", err.msg);
        s->snapshots_offset = 0;
        s->nb_snapshots = 0;
        return ret;
    }
    res->corruptions += reduced + dropped;
    if (reduced) {
        /* The header first: the refcount check trusts the count there. */
        qimg_st_be32(hdr, s->nb_snapshots);
        ret = node->file->ops->pwrite(node->file, 60, 4, hdr, &err);
        if (!ret)
            ret = node->file->ops->flush(node->file, &err);
        if (ret < 0) {
            res->check_errors++;
            qimg_message(QIMG_MSG_PLAIN, "ERROR failed to update the snapshot "
                         "count in the image header: %s\n", strerror(-ret));
            return ret;
        }
        res->corruptions_fixed += reduced;
        res->corruptions -= reduced;
    }
    if (s->version >= 3) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            if (s->snapshots[i].extra_size >= 16)
                continue;
            res->corruptions++;
            if (res->report) {
                char line[128];
                snprintf(line, sizeof(line), "%s snapshot table entry %u is "
                         "incomplete", repair ? "Repairing" : "ERROR", i);
                res->report(res->opaque, line);
            }
        }
    }
    return 0;
}

/* With -r all, a table found wrong is written again (completed, the
 * dropped parts gone). */
static int check_fix_snapshot_table(struct qimg_image *node,
                                    struct qimg_check *res, unsigned fix)
{
    struct qimg_error err = {0};
    int ret;

    if (!res->corruptions || !(fix & QIMG_CHECK_FIX_ERRORS))
        return 0;
    ret = qcow2_snapshot_write_table(node, &err);
    if (ret < 0) {
        res->check_errors++;
        qimg_message(QIMG_MSG_PLAIN, "ERROR failed to update snapshot table: "
                     "%s\n", strerror(-ret));
        return ret;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return 0;
}

static void add_result(struct qimg_check *out, const struct qimg_check *in,
                       bool allocation)
{
    out->corruptions += in->corruptions;
    out->leaks += in->leaks;
    out->check_errors += in->check_errors;
    out->corruptions_fixed += in->corruptions_fixed;
    out->leaks_fixed += in->leaks_fixed;
    if (allocation) {
        out->image_end_offset = in->image_end_offset;
        out->total_clusters = in->total_clusters;
        out->allocated_clusters = in->allocated_clusters;
        out->fragmented_clusters = in->fragmented_clusters;
        out->compressed_clusters = in->compressed_clusters;
    }
}

/* The whole check with the lock held (also the repair of a dirty image
 * at open). */
static int check_locked(struct qimg_image *node, unsigned fix,
                        struct qimg_check *res, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_check snap = {.report = res->report, .opaque = res->opaque};
    struct qimg_check rc = {.report = res->report, .opaque = res->opaque};
    int ret;

    res->corruptions = res->leaks = res->check_errors = 0;
    res->corruptions_fixed = res->leaks_fixed = 0;
    res->image_end_offset = res->total_clusters = res->allocated_clusters = 0;
    res->fragmented_clusters = res->compressed_clusters = 0;
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    ret = check_read_snapshot_table(node, &snap, fix);
    if (ret < 0) {
        add_result(res, &snap, false);
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    }
    ret = check_refcounts(node, &rc, fix);
    add_result(res, &rc, true);
    if (ret < 0) {
        add_result(res, &snap, false);
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    }
    ret = check_fix_snapshot_table(node, &snap, fix);
    add_result(res, &snap, false);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    if (fix && !res->check_errors && !res->corruptions) {
        /* Consistent now: clean, and no longer corrupt. */
        if (s->incompatible & QCOW2_INCOMPAT_DIRTY) {
            ret = qcow2_set_dirty(node, false, err);
            if (ret < 0)
                return ret;
        }
        if (s->incompatible & QCOW2_INCOMPAT_CORRUPT) {
            s->incompatible &= ~QCOW2_INCOMPAT_CORRUPT;
            ret = qcow2_update_header(node, err);
        }
    }
    return ret;
}

int qcow2_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
                struct qimg_error *err)
{
    int ret;

    /* A fatal corruption event left the node unusable (QEMU drops its
     * driver): the double check after a repair that met one fails. */
    if (qcow2_is_broken(node))
        return qimg_error_set(err, -ENOMEDIUM, "%s", strerror(ENOMEDIUM));
    pthread_mutex_lock(&node->lock);
    ret = check_locked(node, fix, res, err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}
