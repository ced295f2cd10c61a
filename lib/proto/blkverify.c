/*
 * blkverify.c - QEMU's blkverify storage, for tests: "blkverify:RAW:TEST"
 * reads every request from both the raw copy (a storage) and the image
 * under test (a probed format node), compares them, and writes to both.
 * A difference is fatal, as in QEMU ("blkverify: read offset=N bytes=N
 * contents mismatch at offset N" on stderr, exit status 1): it is
 * reported through qimg_message(QIMG_MSG_FATAL), whose handler stops the
 * program; the library itself only fails the request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

static int mismatch(bool write, uint64_t off, uint64_t len,
                    struct qimg_error *err, const char *what)
{
    qimg_message(QIMG_MSG_FATAL, "blkverify: %s offset=%llu bytes=%llu %s\n",
                 write ? "write" : "read", (unsigned long long)off,
                 (unsigned long long)len, what);
    return qimg_error_set(err, -EIO, "blkverify: %s", what);
}

static int bv_parse_filename(const char *filename, struct qimg_opts *opts,
                             struct qimg_error *err)
{
    const char *c;
    char *raw;
    int ret;

    if (strncmp(filename, "blkverify:", 10))
        return qimg_opts_set(opts, "x-image", filename) < 0
                   ? qimg_error_set(err, -ENOMEM, "Out of memory") : 0;
    filename += 10;
    c = strchr(filename, ':');
    if (!c)
        return qimg_error_set(err, -EINVAL, "blkverify requires raw copy and "
                              "original image path");
    raw = qimg_strndup(filename, (size_t)(c - filename));
    ret = raw && qimg_opts_set(opts, "x-raw", raw) == 0 &&
                  qimg_opts_set(opts, "x-image", c + 1) == 0;
    free(raw);
    return ret ? 0 : qimg_error_set(err, -ENOMEM, "Out of memory");
}

static struct qimg_opts *sub(const struct qimg_opts *opts, const char *prefix)
{
    struct qimg_opts *o = qimg_opts_new();
    size_t l = strlen(prefix);

    for (size_t i = 0; o && i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (!strncmp(k, prefix, l))
            qimg_opts_set_typed(o, k + l, qimg_opts_value(opts, i),
                                qimg_opts_type(opts, i));
    }
    return o;
}

static int bv_open(struct qimg_storage *st, const struct qimg_opts *opts,
                   unsigned flags, enum qimg_cache cache,
                   struct qimg_error *err)
{
    struct qimg_opts *ro = sub(opts, "raw."), *to = sub(opts, "test.");
    const char *raw = qimg_opts_get(opts, "x-raw");
    const char *test = qimg_opts_get(opts, "x-image");
    int ret;

    if (!ro || !to) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    if (!raw && !qimg_opts_count(ro)) {
        ret = qimg_error_set(err, -EINVAL, "A block device must be specified "
                             "for \"raw\"");
        goto out;
    }
    ret = qimg_storage_open_opts(&st->child, raw, ro, flags, cache, 0, err);
    if (ret < 0)
        goto out;
    if (!test && !qimg_opts_count(to)) {
        ret = qimg_error_set(err, -EINVAL, "A block device must be specified "
                             "for \"test\"");
        goto out;
    }
    ret = qimg_storage_open_node(&st->child2, test, to, flags, cache, 0, err);
out:
    qimg_opts_free(ro);
    qimg_opts_free(to);
    if (ret < 0) {
        qimg_storage_close(st->child);
        st->child = NULL;
        return ret;
    }
    st->child_name = "raw";
    st->child2_name = "test";
    return 0;
}

static void bv_close(struct qimg_storage *st)
{
    qimg_storage_close(st->child);
    qimg_storage_close(st->child2);
    st->child = st->child2 = NULL;
}

static int bv_pread(struct qimg_storage *st, uint64_t off, size_t len,
                    void *buf, struct qimg_error *err)
{
    struct qimg_storage *raw = st->child, *test = st->child2;
    struct qimg_error rerr = {0};
    uint8_t *copy = malloc(len ? len : 1);
    int ret, rret;

    if (!copy)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = test->ops->pread(test, off, len, buf, err);
    rret = raw->ops->pread(raw, off, len, copy, &rerr);
    char what[128];
    if (ret != rret) {
        free(copy);
        snprintf(what, sizeof(what), "return value mismatch %d != %d", ret,
                 rret);
        return mismatch(false, off, len, err, what);
    }
    if (ret == 0) {
        for (size_t i = 0; i < len; i++) {
            if (copy[i] != ((uint8_t *)buf)[i]) {
                free(copy);
                snprintf(what, sizeof(what), "contents mismatch at offset "
                         "%llu", (unsigned long long)(off + i));
                return mismatch(false, off, len, err, what);
            }
        }
    }
    free(copy);
    return ret;
}

static int bv_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                     const void *buf, struct qimg_error *err)
{
    struct qimg_storage *raw = st->child, *test = st->child2;
    struct qimg_error rerr = {0};
    int ret = test->ops->pwrite(test, off, len, buf, err);
    int rret = raw->ops->pwrite(raw, off, len, buf, &rerr);

    if (ret != rret) {
        char what[64];
        snprintf(what, sizeof(what), "return value mismatch %d != %d", ret,
                 rret);
        return mismatch(true, off, len, err, what);
    }
    return ret;
}

/* Only the image under test is flushed, as in QEMU. */
static int bv_flush(struct qimg_storage *st, struct qimg_error *err)
{
    return st->child2->ops->flush(st->child2, err);
}

static int64_t bv_get_size(struct qimg_storage *st)
{
    return st->child2->ops->get_size(st->child2);
}

static bool bv_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    char a[4096], b[4096];

    if (!qimg_storage_exact_name(st->child, a, sizeof(a)) ||
        !qimg_storage_exact_name(st->child2, b, sizeof(b)))
        return false;
    return (size_t)snprintf(buf, len, "blkverify:%s:%s", a, b) < len;
}

static const char *const bv_runtime_opts[] = {
    "x-raw", "x-image", "raw.", "test.", NULL,
};

const struct qimg_storage_ops qimg_storage_blkverify = {
    .name = "blkverify",
    .protocol = "blkverify",
    .runtime_opts = bv_runtime_opts,
    .parse_filename = bv_parse_filename,
    .refresh_name = bv_refresh_name,
    .open = bv_open,
    .close = bv_close,
    .pread = bv_pread,
    .pwrite = bv_pwrite,
    .flush = bv_flush,
    .get_size = bv_get_size,
};
