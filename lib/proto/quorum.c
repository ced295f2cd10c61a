/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * quorum.c - QEMU's quorum storage: N copies of one disk (children.0 ..
 * children.N-1, each a storage or format node given by options); reads
 * are voted (a version must come from vote-threshold children) or, with
 * read-pattern=fifo, served by the first child that answers; writes and
 * flushes go to every child and succeed when vote-threshold of them do.
 *
 * It has no file name of its own (its nodes are named json:{...}) and no
 * directory: relative names inside an image over it cannot be resolved,
 * as in QEMU ("Cannot generate a base directory for quorum nodes").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

/* QEMU refuses a quorum of more children than this (its QUORUM_MAX). */
#define QUORUM_MAX_CHILDREN 32

struct quorum {
    int n;
    long threshold;
    bool fifo;
    struct qimg_storage *child[QUORUM_MAX_CHILDREN];
};

/* The children.N. options of opts as a dict of their own (prefix cut). */
static struct qimg_opts *child_opts(const struct qimg_opts *opts, int i)
{
    char prefix[32];
    size_t l = (size_t)snprintf(prefix, sizeof(prefix), "children.%d.", i);
    struct qimg_opts *o = qimg_opts_new();

    for (size_t k = 0; o && k < qimg_opts_count(opts); k++) {
        const char *key = qimg_opts_key(opts, k);
        if (!strncmp(key, prefix, l) &&
            qimg_opts_set_typed(o, key + l, qimg_opts_value(opts, k),
                                qimg_opts_type(opts, k)) < 0) {
            qimg_opts_free(o);
            return NULL;
        }
    }
    return o;
}

/* How many children.N entries there are: 0, 1, ... without a gap
 * (QEMU's qdict_array_entries); -1 when a key is not such an entry. */
static int count_children(const struct qimg_opts *opts)
{
    int n = 0;
    for (size_t k = 0; k < qimg_opts_count(opts); k++) {
        const char *key = qimg_opts_key(opts, k);
        if (strncmp(key, "children.", 9))
            continue;
        char *end;
        long i = strtol(key + 9, &end, 10);
        if (end == key + 9 || (*end != '.' && *end) || i < 0 ||
            i >= QUORUM_MAX_CHILDREN * 4)
            return -1;
        if (i + 1 > n)
            n = (int)(i + 1);
    }
    /* Every index below n must be present. */
    for (int i = 0; i < n; i++) {
        char prefix[32];
        size_t l = (size_t)snprintf(prefix, sizeof(prefix), "children.%d", i);
        bool found = false;
        for (size_t k = 0; !found && k < qimg_opts_count(opts); k++) {
            const char *key = qimg_opts_key(opts, k);
            found = !strncmp(key, prefix, l) && (!key[l] || key[l] == '.');
        }
        if (!found)
            return -1;
    }
    return n;
}

static int parse_settings(struct quorum *q, const struct qimg_opts *opts,
                          struct qimg_error *err)
{
    int n = count_children(opts);
    if (n < 0)
        return qimg_error_set(err, -EINVAL,
                              "Option children is not a valid array");
    if (n < 1)
        return qimg_error_set(err, -EINVAL,
                              "Number of provided children must be 1 or more");
    if (n > QUORUM_MAX_CHILDREN)
        return qimg_error_set(err, -EINVAL, "Too many children");
    q->n = n;

    const char *v = qimg_opts_get(opts, "vote-threshold");
    char *end = NULL;
    q->threshold = v ? strtol(v, &end, 10) : 0;
    if (v && (end == v || *end))
        return qimg_error_set(err, -EINVAL, "Parameter 'vote-threshold' "
                              "expects a number");
    if (q->threshold < 1)
        return qimg_error_set(err, -ERANGE, "Parameter 'vote-threshold' "
                              "expects a value >= 1");
    if (q->threshold > n)
        return qimg_error_set(err, -ERANGE,
                              "threshold may not exceed children count");

    const char *pattern = qimg_opts_get(opts, "read-pattern");
    if (pattern && strcmp(pattern, "quorum") && strcmp(pattern, "fifo"))
        return qimg_error_set(err, -EINVAL,
                              "Please set read-pattern as fifo or quorum");
    q->fifo = pattern && !strcmp(pattern, "fifo");
    if (!q->fifo) {
        const char *bv = qimg_opts_get(opts, "blkverify");
        bool blkverify = bv && !strcmp(bv, "on");
        const char *rw = qimg_opts_get(opts, "rewrite-corrupted");
        if (blkverify && (n != 2 || q->threshold != 2))
            return qimg_error_set(err, -EINVAL, "blkverify=on can only be set "
                                  "if there are exactly two files and "
                                  "vote-threshold is 2");
        if (blkverify && rw && !strcmp(rw, "on"))
            return qimg_error_set(err, -EINVAL, "rewrite-corrupted=on cannot "
                                  "be used with blkverify=on");
    }
    return 0;
}

static void quorum_free(struct quorum *q)
{
    for (int i = 0; i < q->n; i++)
        qimg_storage_close(q->child[i]);
    free(q);
}

static int quorum_open(struct qimg_storage *st, const struct qimg_opts *opts,
                       unsigned flags, enum qimg_cache cache,
                       struct qimg_error *err)
{
    struct quorum *q = calloc(1, sizeof(*q));
    if (!q)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    int ret = parse_settings(q, opts, err);
    int opened = 0;
    for (int i = 0; ret == 0 && i < q->n; i++) {
        struct qimg_opts *co = child_opts(opts, i);
        if (!co) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            break;
        }
        ret = qimg_storage_open_opts(&q->child[i], NULL, co, flags, cache, 0,
                                     err);
        qimg_opts_free(co);
        if (ret == 0)
            opened++;
    }
    if (ret < 0) {
        q->n = opened;
        quorum_free(q);
        return ret;
    }
    st->priv = q;
    st->children = q->child;
    st->n_children = (size_t)q->n;
    st->children_key = "children";
    st->caps = 0;
    st->align = 1;
    for (int i = 0; i < q->n; i++)
        if (q->child[i]->align > st->align)
            st->align = q->child[i]->align;
    return 0;
}

static void quorum_close(struct qimg_storage *st)
{
    if (st->priv)
        quorum_free(st->priv);
    st->priv = NULL;
}

/* fifo: the first child that reads without error. */
static int read_fifo(struct quorum *q, uint64_t off, size_t len, void *buf,
                     struct qimg_error *err)
{
    int ret = -EIO;
    for (int i = 0; i < q->n; i++) {
        struct qimg_storage *c = q->child[i];
        ret = c->ops->pread(c, off, len, buf, err);
        if (ret == 0)
            return 0;
    }
    return ret;
}

/* quorum: every child reads; the version read by the most children wins
 * if at least threshold of them agree. */
static int read_vote(struct quorum *q, uint64_t off, size_t len, void *buf,
                     struct qimg_error *err)
{
    uint8_t *copy[QUORUM_MAX_CHILDREN] = {0};
    int ok[QUORUM_MAX_CHILDREN], ret = 0, best = -1, best_votes = 0;
    struct qimg_error last = {0};

    for (int i = 0; i < q->n; i++) {
        struct qimg_storage *c = q->child[i];
        copy[i] = malloc(len ? len : 1);
        if (!copy[i]) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        ok[i] = c->ops->pread(c, off, len, copy[i], &last) == 0;
    }
    for (int i = 0; i < q->n; i++) {
        if (!ok[i])
            continue;
        int votes = 0;
        for (int j = 0; j < q->n; j++)
            votes += ok[j] && !memcmp(copy[i], copy[j], len);
        if (votes > best_votes) {
            best_votes = votes;
            best = i;
        }
    }
    if (best < 0 || best_votes < q->threshold) {
        if (best < 0 && last.code)
            *err = last;
        else
            qimg_error_set(err, -EIO, "Input/output error");
        ret = err ? err->code : -EIO;
        goto out;
    }
    memcpy(buf, copy[best], len);
out:
    for (int i = 0; i < q->n; i++)
        free(copy[i]);
    return ret;
}

static int quorum_pread(struct qimg_storage *st, uint64_t off, size_t len,
                        void *buf, struct qimg_error *err)
{
    struct quorum *q = st->priv;
    return q->fifo ? read_fifo(q, off, len, buf, err)
                   : read_vote(q, off, len, buf, err);
}

/* Success when at least threshold children succeed; else the last error. */
static int tally(struct quorum *q, int good, int ret, struct qimg_error *last,
                 struct qimg_error *err)
{
    if (good >= q->threshold)
        return 0;
    if (err)
        *err = *last;
    return ret < 0 ? ret : -EIO;
}

static int quorum_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                         const void *buf, struct qimg_error *err)
{
    struct quorum *q = st->priv;
    struct qimg_error last = {0};
    int good = 0, ret = 0;
    for (int i = 0; i < q->n; i++) {
        struct qimg_storage *c = q->child[i];
        int r = c->ops->pwrite(c, off, len, buf, &last);
        if (r == 0)
            good++;
        else
            ret = r;
    }
    return tally(q, good, ret, &last, err);
}

static int quorum_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct quorum *q = st->priv;
    struct qimg_error last = {0};
    int good = 0, ret = 0;
    for (int i = 0; i < q->n; i++) {
        struct qimg_storage *c = q->child[i];
        int r = c->ops->flush ? c->ops->flush(c, &last) : 0;
        if (r == 0)
            good++;
        else
            ret = r;
    }
    return tally(q, good, ret, &last, err);
}

/* All children must have the first one's size (QEMU: -EIO otherwise). */
static int64_t quorum_get_size(struct qimg_storage *st)
{
    struct quorum *q = st->priv;
    int64_t size = q->child[0]->ops->get_size(q->child[0]);
    for (int i = 1; size >= 0 && i < q->n; i++) {
        int64_t s = q->child[i]->ops->get_size(q->child[i]);
        if (s < 0)
            return s;
        if (s != size)
            return -EIO;
    }
    return size;
}

/* QEMU sums the children's allocations for a node that is neither a
 * protocol nor a filter. */
static int64_t quorum_allocated_size(struct qimg_storage *st)
{
    struct quorum *q = st->priv;
    int64_t total = 0;
    for (int i = 0; i < q->n; i++) {
        struct qimg_storage *c = q->child[i];
        if (!c->ops->allocated_size)
            return -ENOTSUP;
        int64_t s = c->ops->allocated_size(c);
        if (s < 0)
            return s;
        total += s;
    }
    return total;
}

static int quorum_dirname(struct qimg_storage *st, char **dir,
                          struct qimg_error *err)
{
    *dir = NULL;
    return qimg_error_set(err, -EINVAL, "Cannot generate a base directory "
                          "for quorum nodes");
}

static const char *const quorum_runtime_opts[] = {
    "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern",
    "children.", NULL,
};
/* The children appear as an array of their own options (children_key). */
static const char *const quorum_strong_opts[] = {
    "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern", NULL,
};

const struct qimg_storage_ops qimg_storage_quorum = {
    .name = "quorum",
    .runtime_opts = quorum_runtime_opts,
    .strong_opts = quorum_strong_opts,
    .open = quorum_open,
    .close = quorum_close,
    .pread = quorum_pread,
    .pwrite = quorum_pwrite,
    .flush = quorum_flush,
    .get_size = quorum_get_size,
    .allocated_size = quorum_allocated_size,
    .dirname = quorum_dirname,
};
