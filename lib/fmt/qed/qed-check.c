/*
 * qed-check.c - QED's consistency check: every cluster referenced once,
 * offsets aligned and inside the file, tables whole inside the file; the
 * clusters nobody references are leaks.  Repair (any -r mode, as QEMU)
 * clears invalid offsets; leaks are only counted.  A check that finds
 * nothing it cannot fix clears the need-check bit.
 *
 * The counters follow QEMU 7.2 exactly, including its cluster numbering
 * (an offset is divided by cluster_size - 1 after rounding up), which
 * skips one number every cluster_size - 1 clusters: an image whose file
 * holds that many clusters or more shows that many "leaked" clusters, in
 * qemu-img as here.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qed/qed.h"

struct qed_checker {
    struct qimg_image *node;
    struct qimg_check *res;
    bool fix;
    uint64_t nclusters;
    uint8_t *used;              /* one bit per cluster number */
};

/* QEMU's qed_bytes_to_clusters, quirk included (see above). */
static uint64_t cluster_number(const struct qed_state *s, uint64_t bytes)
{
    uint64_t cs = s->h.cluster_size;

    return qimg_align_down(bytes + (cs - 1), cs) / (cs - 1);
}

/* Mark n clusters from offset used; false when one already was. */
static bool mark_used(struct qed_checker *c, uint64_t offset, uint64_t n)
{
    uint64_t k = cluster_number(c->node->state, offset);
    int dup = 0;

    for (; n; n--, k++) {
        if (k >= c->nclusters)
            continue;   /* offsets are checked to lie in the file first */
        dup += (c->used[k / 8] >> (k % 8)) & 1;
        c->used[k / 8] |= (uint8_t)(1u << (k % 8));
    }
    c->res->corruptions += dup;
    return dup == 0;
}

/* An entry found invalid: cleared when repairing. */
static void invalid(struct qed_checker *c, struct qimg_table *t, uint64_t i)
{
    if (c->fix) {
        qimg_table_set(t, i, 0);
        c->res->corruptions_fixed++;
    } else {
        c->res->corruptions++;
    }
}

/* The number of invalid entries of one L2 table. */
static uint64_t check_l2(struct qed_checker *c, struct qimg_table *t)
{
    struct qed_state *s = c->node->state;
    uint64_t last = 0, bad = 0;

    for (uint64_t i = 0; i < t->n; i++) {
        uint64_t off = qimg_table_get(t, i);

        if (off <= 1)
            continue;
        c->res->allocated_clusters++;
        if (last && last + s->h.cluster_size != off)
            c->res->fragmented_clusters++;
        last = off;
        if (!qed_cluster_offset_ok(s, off)) {
            invalid(c, t, i);
            bad++;
            continue;
        }
        mark_used(c, off, 1);
    }
    return bad;
}

/* Walk L1 and every L2 table; the last I/O error, or 0. */
static int check_tables(struct qed_checker *c, struct qimg_error *err)
{
    struct qimg_image *node = c->node;
    struct qed_state *s = node->state;
    uint64_t bad_l1 = 0;
    int ret, last_error = 0;

    mark_used(c, s->h.l1_table_offset, s->h.table_size);
    for (uint64_t i = 0; i < s->l1.n; i++) {
        uint64_t off = qimg_table_get(&s->l1, i);
        struct qimg_table *t;

        if (!off)
            continue;
        if (!qed_table_offset_ok(s, off)) {
            invalid(c, &s->l1, i);
            bad_l1++;
            continue;
        }
        if (!mark_used(c, off, s->h.table_size))
            continue;   /* a table referenced twice is not walked again */
        ret = qimg_table_cache_get(&s->l2, off, &t, err);
        if (ret == 0 && check_l2(c, t) && c->fix)
            ret = qimg_table_store_all(t, err);
        if (ret < 0) {
            c->res->check_errors++;
            last_error = ret;
        }
    }
    if (bad_l1 && c->fix) {
        ret = qimg_table_store_all(&s->l1, err);
        if (ret < 0) {
            c->res->check_errors++;
            last_error = ret;
        }
    }
    return last_error;
}

int qed_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
              struct qimg_error *err)
{
    struct qed_state *s = node->state;
    struct qed_checker c = {.node = node, .res = res, .fix = fix != 0};
    uint64_t bytes;
    int ret;

    if (fix && node->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    c.nclusters = cluster_number(s, s->alloc.end);
    bytes = (c.nclusters + 31) / 32 * 4;
    if (bytes > QED_CHECK_MAX_BITMAP)
        return qimg_error_set(err, -ENOMEM, "%s", strerror(ENOMEM));
    c.used = calloc(1, (size_t)QIMG_MAX(bytes, 1));
    if (!c.used)
        return qimg_error_set(err, -ENOMEM, "%s", strerror(ENOMEM));
    res->total_clusters = (int64_t)qimg_div_round_up(s->h.image_size,
                                                     s->h.cluster_size);
    ret = check_tables(&c, err);
    if (ret == 0) {
        /* Leaks only count once the whole image was walked. */
        for (uint64_t k = s->h.header_size; k < c.nclusters; k++)
            res->leaks += !((c.used[k / 8] >> (k % 8)) & 1);
        if (c.fix && !res->corruptions && !res->check_errors &&
            (s->h.features & QED_F_NEED_CHECK)) {
            /* The fixes reach the disk before the bit is cleared. */
            ret = node->file->ops->flush(node->file, err);
            if (!ret)
                ret = qed_set_need_check(node, false, err);
            ret = 0;   /* as QEMU: the check itself succeeded */
        }
    }
    free(c.used);
    return ret;
}
