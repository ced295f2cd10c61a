/*
 * null.c - the null-co and null-aio storages: a device of `size` bytes
 * (1 GiB by default) that drops writes and reads as zeroes, for
 * benchmarks (qemu-img bench null-co://) and as a convert sink, as QEMU's
 * null drivers.  read-zeroes=on makes block status report zeroes; QEMU
 * leaves the buffer alone otherwise, we always hand back zeroes.
 * latency-ns delays every request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/block.h"
#include "core/util.h"

struct null_state {
    uint64_t size;
    uint64_t latency_ns;
    bool read_zeroes;
};

static const char *const null_runtime_opts[] = {
    "size", "latency-ns", "read-zeroes", NULL,
};
static const char *const null_strong_opts[] = {"size", "read-zeroes", NULL};

static int null_parse(const char *filename, const char *name,
                      struct qimg_error *err)
{
    char want[32];

    snprintf(want, sizeof(want), "%s://", name);
    if (strcmp(filename, want))
        return qimg_error_set(err, -EINVAL, "The only allowed filename for "
                              "this driver is '%s'", want);
    return 0;
}

static int null_co_parse(const char *filename, struct qimg_opts *opts,
                         struct qimg_error *err)
{
    (void)opts;
    return null_parse(filename, "null-co", err);
}

static int null_aio_parse(const char *filename, struct qimg_opts *opts,
                          struct qimg_error *err)
{
    (void)opts;
    return null_parse(filename, "null-aio", err);
}

static int null_open(struct qimg_storage *st, const struct qimg_opts *opts,
                     unsigned flags, enum qimg_cache cache,
                     struct qimg_error *err)
{
    struct null_state *s = calloc(1, sizeof(*s));
    const char *lat = qimg_opts_get(opts, "latency-ns");
    int ret;

    (void)flags;
    (void)cache;
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_opts_get_size(opts, "size", 1ull << 30, &s->size, err);
    if (ret == 0)
        ret = qimg_opts_get_bool(opts, "read-zeroes", false, &s->read_zeroes,
                                 err);
    if (ret == 0 && lat) {
        char *end;
        errno = 0;
        long long v = strtoll(lat, &end, 0);
        if (errno || *end || end == lat)
            ret = qimg_error_set(err, -EINVAL, "Parameter 'latency-ns' "
                                 "expects a number");
        else if (v < 0)
            ret = qimg_error_set(err, -EINVAL, "latency-ns is invalid");
        else
            s->latency_ns = (uint64_t)v;
    }
    if (ret == 0 && s->size > QIMG_MAX_LENGTH)
        ret = qimg_error_set(err, -EFBIG, "Could not refresh total sector "
                             "count: File too large");
    if (ret < 0) {
        free(s);
        return ret;
    }
    st->priv = s;
    st->caps |= QIMG_STORAGE_CAN_ZERO | QIMG_STORAGE_CAN_DISCARD;
    return 0;
}

static void null_close(struct qimg_storage *st)
{
    free(st->priv);
    st->priv = NULL;
}

static void null_wait(struct qimg_storage *st)
{
    struct null_state *s = st->priv;
    if (s->latency_ns) {
        struct timespec ts = {(time_t)(s->latency_ns / 1000000000u),
                              (long)(s->latency_ns % 1000000000u)};
        nanosleep(&ts, NULL);
    }
}

static int null_pread(struct qimg_storage *st, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    (void)off;
    (void)err;
    memset(buf, 0, len);
    null_wait(st);
    return 0;
}

static int null_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    (void)off;
    (void)len;
    (void)buf;
    (void)err;
    null_wait(st);
    return 0;
}

static int null_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                       unsigned flags, struct qimg_error *err)
{
    (void)off;
    (void)len;
    (void)flags;
    (void)err;
    null_wait(st);
    return 0;
}

static int null_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    return null_zeroes(st, off, len, 0, err);
}

static int null_flush(struct qimg_storage *st, struct qimg_error *err)
{
    (void)err;
    null_wait(st);
    return 0;
}

static int64_t null_get_size(struct qimg_storage *st)
{
    return (int64_t)((struct null_state *)st->priv)->size;
}

/* Neither data nor (unless read-zeroes) zero, as QEMU reports it. */
static int null_block_status(struct qimg_storage *st, uint64_t off,
                             uint64_t len, struct qimg_extent *ext,
                             struct qimg_error *err)
{
    struct null_state *s = st->priv;
    (void)off;
    (void)err;
    memset(ext, 0, sizeof(*ext));
    ext->length = len;
    ext->flags = s->read_zeroes ? QIMG_BS_ZERO : 0;
    return 0;
}

static int64_t null_allocated(struct qimg_storage *st)
{
    (void)st;
    return 0;
}

/* "null-co://" while no option but latency-ns is set. */
static bool null_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    for (size_t i = 0; i < qimg_opts_count(st->options); i++)
        if (qimg_key_listed(null_strong_opts, qimg_opts_key(st->options, i)))
            return false;
    return (size_t)snprintf(buf, len, "%s://", st->ops->name) < len;
}

#define NULL_OPS                                                               \
    .runtime_opts = null_runtime_opts, .strong_opts = null_strong_opts,       \
    .refresh_name = null_refresh_name, .open = null_open,                      \
    .close = null_close, .pread = null_pread, .pwrite = null_pwrite,           \
    .flush = null_flush, .get_size = null_get_size,                            \
    .pwrite_zeroes = null_zeroes, .discard = null_discard,                     \
    .block_status = null_block_status, .allocated_size = null_allocated, \
    .no_get_info = true

const struct qimg_storage_ops qimg_storage_null_co = {
    .name = "null-co",
    .protocol = "null-co",
    .parse_filename = null_co_parse,
    NULL_OPS,
};

const struct qimg_storage_ops qimg_storage_null_aio = {
    .name = "null-aio",
    .protocol = "null-aio",
    .parse_filename = null_aio_parse,
    NULL_OPS,
};
