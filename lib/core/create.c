/*
 * create.c - preparing and running image creation (qemu-img create, and
 * the target of convert): option merging, size and backing rules, and the
 * "Formatting ..." summary.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

#define MAX_DESCS 128

/* Append to a growing string; false when out of memory. */
static bool append(char **out, size_t *len, size_t *cap, const char *s,
                   size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = (*len + n + 1) * 2;
        char *p = realloc(*out, ncap);
        if (!p)
            return false;
        *out = p;
        *cap = ncap;
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
    return true;
}

/* A string value as qemu-img prints it back: commas doubled, so that the
 * line reads as an option list again. */
static bool append_escaped(char **out, size_t *len, size_t *cap,
                           const char *v)
{
    for (; *v; v++)
        if (!append(out, len, cap, v, 1) ||
            (*v == ',' && !append(out, len, cap, ",", 1)))
            return false;
    return true;
}

/*
 * The summary: every option with a value or a default, in desc order.
 * As QEMU prints it: strings escaped, sizes and numbers that were given as
 * their signed 64-bit value, anything else (defaults, booleans) as written.
 */
static char *summarise(const struct qimg_opts *opts,
                       const struct qimg_opt_desc **d, int nd)
{
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    bool ok = out != NULL;

    if (ok)
        out[0] = '\0';
    for (int i = 0; ok && i < nd; i++) {
        const char *given = qimg_opts_get(opts, d[i]->name);
        const char *v = given ? given : d[i]->def;
        char num[32];
        uint64_t n;

        if (!v)
            continue;
        ok = (!len || append(&out, &len, &cap, " ", 1)) &&
             append(&out, &len, &cap, d[i]->name, strlen(d[i]->name)) &&
             append(&out, &len, &cap, "=", 1);
        if (!ok)
            break;
        if (d[i]->type == QIMG_OPT_STRING) {
            ok = append_escaped(&out, &len, &cap, v);
            continue;
        }
        if (given && (d[i]->type == QIMG_OPT_SIZE ||
                      d[i]->type == QIMG_OPT_NUMBER) &&
            qimg_parse_size(v, &n, NULL) == 0) {
            snprintf(num, sizeof(num), "%" PRId64, (int64_t)n);
            v = num;
        }
        ok = append(&out, &len, &cap, v, strlen(v));
    }
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

static bool has_desc(const struct qimg_opt_desc **d, int nd, const char *name)
{
    for (int i = 0; i < nd; i++)
        if (!strcmp(d[i]->name, name))
            return true;
    return false;
}

/*
 * Open the backing file (with its chain, shared, read-only) as qemu-img
 * create does unless -u: it must open, its format must be given, and it
 * gives the size when none was.  Error texts carry qemu-img's hints; the
 * one after "without backing format" ends without a newline, as QEMU's.
 */
static int check_backing(const char *filename, const char *backing,
                         const char *backing_fmt, uint64_t *size,
                         struct qimg_error *err)
{
    struct qimg_open_params p = {
        /* headers only, as QEMU: an encrypted backing needs no key */
        .format = backing_fmt, .flags = QIMG_OPEN_SHARE | QIMG_OPEN_NO_IO,
        .cache = QIMG_CACHE_WRITEBACK,
    };
    struct qimg_image *b = NULL;
    char *full;
    int ret;

    full = qimg_backing_full_name(filename, backing);
    if (!full)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    p.filename = full;
    ret = qimg_open(&b, &p, err);
    free(full);
    if (ret < 0) {
        size_t l = strlen(err->msg);
        snprintf(err->msg + l, sizeof(err->msg) - l,
                 "\nCould not open backing image.");
        return ret;
    }
    if (!backing_fmt) {
        ret = qimg_error_set(err, -EINVAL, "Backing file specified without "
                             "backing format\nDetected format of %s.",
                             qimg_image_format(b));
    }
    *size = b->size;
    qimg_close(b);
    return ret;
}

static bool given_size_is_unset(const struct qimg_opts *opts)
{
    const char *v = qimg_opts_get(opts, "size");
    uint64_t n;

    return v && qimg_parse_size(v, &n, NULL) == 0 && n == UINT64_MAX;
}

int qimg_create_prepare(const char *fmt, const char *filename,
                        const char *options, int64_t size,
                        const char *backing, const char *backing_fmt,
                        bool no_backing_open, struct qimg_opts **opts_out,
                        char **summary, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    const struct qimg_opt_desc *d[MAX_DESCS];
    struct qimg_opts *opts = NULL;
    const char *bf;
    char num[32];
    int nd, ret;

    *opts_out = NULL;
    *summary = NULL;
    if (!f && !qimg_storage_find(fmt))
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    if (f ? !f->create : !qimg_format_can_create(fmt))
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support image creation", fmt);
    /* The storage the name selects must exist and be able to create,
     * before anything is printed (QEMU's bdrv_img_create). */
    if (f && !f->no_storage) {
        const struct qimg_storage_ops *so =
            qimg_storage_for_name(filename, true, err);
        if (!so)
            return -EINVAL;
        if (!so->create && !so->create_by_open)
            return qimg_error_set(err, -ENOTSUP, "Protocol driver '%s' does "
                                  "not support image creation", so->name);
    }
    nd = qimg_create_opts(fmt, filename, d, MAX_DESCS, err);
    if (nd < 0)
        return nd;
    opts = qimg_opts_new();
    if (!opts)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (options) {
        struct qimg_opt_desc flat[MAX_DESCS];
        for (int i = 0; i < nd; i++)
            flat[i] = *d[i];
        ret = qimg_opts_parse_checked(opts, options, flat, (size_t)nd, err);
        if (ret < 0)
            goto fail;
    }
    if (!qimg_opts_get(opts, "size")) {
        if (size >= 0) {
            snprintf(num, sizeof(num), "%" PRId64, size);
            qimg_opts_set(opts, "size", num);
        }
    } else if (size >= 0) {
        ret = qimg_error_set(err, -EINVAL, "The image size must be specified "
                             "only once");
        goto fail;
    }
    /* qemu-img takes a size of 2^64 - 1 for "no size given" */
    if (given_size_is_unset(opts))
        qimg_opts_del(opts, "size");
    if (backing) {
        if (!has_desc(d, nd, "backing_file")) {
            ret = qimg_error_set(err, -ENOTSUP, "Backing file not supported "
                                 "for file format '%s'", fmt);
            goto fail;
        }
        qimg_opts_set(opts, "backing_file", backing);
    }
    if (backing_fmt) {
        if (!has_desc(d, nd, "backing_fmt")) {
            ret = qimg_error_set(err, -ENOTSUP, "Backing file format not "
                                 "supported for file format '%s'", fmt);
            goto fail;
        }
        qimg_opts_set(opts, "backing_fmt", backing_fmt);
    }
    bf = qimg_opts_get(opts, "backing_file");
    if (bf) {
        if (!strcmp(filename, bf)) {
            ret = qimg_error_set(err, -EINVAL, "Error: Trying to create an "
                                 "image with the same filename as the backing "
                                 "file");
            goto fail;
        }
        if (!bf[0]) {
            ret = qimg_error_set(err, -EINVAL, "Expected backing file name, "
                                 "got empty string");
            goto fail;
        }
    }
    if (bf && !no_backing_open) {
        uint64_t bsize = 0;
        ret = check_backing(filename, bf, qimg_opts_get(opts, "backing_fmt"),
                            &bsize, err);
        if (ret < 0)
            goto fail;
        if (!qimg_opts_get(opts, "size")) {
            snprintf(num, sizeof(num), "%" PRIu64, bsize);
            qimg_opts_set(opts, "size", num);
        }
    }
    if (!qimg_opts_get(opts, "size")) {
        ret = qimg_error_set(err, -EINVAL, "Image creation needs a size "
                             "parameter");
        goto fail;
    }
    *summary = summarise(opts, d, nd);
    if (!*summary) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    *opts_out = opts;
    return 0;
fail:
    qimg_opts_free(opts);
    return ret;
}

/*
 * The effective value of a create option: what was given, else the
 * format's default (QEMU's option lists fall back to their defaults).
 */
static const char *create_opt_value(const struct qimg_format *f,
                                    const struct qimg_opts *opts,
                                    const char *name)
{
    const char *v = qimg_opts_get(opts, name);

    for (size_t i = 0; !v && i < f->n_create_opts; i++)
        if (!strcmp(f->create_opts[i].name, name))
            v = f->create_opts[i].def;
    return v;
}

/*
 * QEMU's drivers parse the size options a second time while creating, so
 * a size in hex with a multiplier is warned about once more, in the
 * reverse order of the option descriptors (storage options first).
 */
static void warn_hex_sizes_again(const char *fmt, const char *filename,
                                 const struct qimg_opts *opts)
{
    const struct qimg_opt_desc *d[MAX_DESCS];
    int nd = qimg_create_opts(fmt, filename, d, MAX_DESCS, NULL);

    for (int i = nd - 1; i >= 0; i--) {
        const char *v = qimg_opts_get(opts, d[i]->name);
        if (v && d[i]->type == QIMG_OPT_SIZE)
            qimg_opts_warn_hex_size(v);
    }
}

int qimg_create(const char *fmt, const char *filename,
                const struct qimg_opts *opts, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    const struct qimg_storage_ops *s = f ? NULL : qimg_storage_find(fmt);
    const char *cluster_size;
    uint64_t cs = 0;
    int ret;

    /* -f file, -f host_device: the storage itself (QEMU parses its
     * options once). */
    if (s && (s->create || s->create_by_open))
        return qimg_storage_create(s, filename, opts, err);
    if (!f && !s)
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    if (!f || !f->create)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support image creation", fmt);
    warn_hex_sizes_again(fmt, filename, opts);
    ret = f->create(filename, opts, err);
    if (ret != -EFBIG)
        return ret;
    /* Clearer than whatever the driver said; a format with clusters (a
     * cluster_size option that is set or has a non-zero default) gets
     * qemu-img's hint. */
    cluster_size = create_opt_value(f, opts, "cluster_size");
    if (cluster_size && qimg_parse_size(cluster_size, &cs, NULL) < 0)
        cs = 0;
    return qimg_error_set(err, ret, "The image size is too large for file "
                          "format '%s'%s", fmt,
                          cs ? " (try using a larger cluster size)" : "");
}

int qimg_check_new_length(uint64_t size, struct qimg_error *err)
{
    if (size > INT64_MAX)
        return qimg_error_set(err, -EINVAL, "Image size cannot be negative");
    if (size > QIMG_MAX_LENGTH)
        return qimg_error_set(err, -EIO, "offset(%" PRIu64 ") exceeds "
                              "maximum(%" PRIu64 ")", size, QIMG_MAX_LENGTH);
    return 0;
}

bool qimg_blockdev_driver_known(const char *name)
{
    /* QEMU 7.2's BlockdevDriver enum as Debian builds it (without the
     * io_uring and libblkio drivers) */
    static const char *const drivers[] = {
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs",
        "cloop", "compress", "copy-before-write", "copy-on-read", "dmg",
        "file", "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom",
        "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
        "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow",
        "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh",
        "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
    };

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(drivers); i++)
        if (!strcmp(drivers[i], name))
            return true;
    return false;
}

int qimg_amend_opts(const char *fmt, const struct qimg_opt_desc **out,
                    size_t max, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    size_t n = 0;

    if (!f && !qimg_storage_find(fmt))
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    /* a storage (-f file) is a driver without amend, as in QEMU */
    if (!f || !f->amend)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support option amendment", fmt);
    for (; n < f->n_amend_opts && n < max; n++)
        out[n] = &f->amend_opts[n];
    return (int)n;
}

int qimg_amend_parse_opts(const char *fmt, const char *options,
                          struct qimg_opts *opts, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    struct qimg_opt_desc flat[MAX_DESCS];
    const struct qimg_opt_desc *create[MAX_DESCS];
    struct qimg_opts *scratch;
    size_t n = 0;
    int nc, ret;

    if (!f || !f->amend)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support option amendment", fmt);
    for (; n < f->n_amend_opts && n < MAX_DESCS; n++)
        flat[n] = f->amend_opts[n];
    ret = qimg_opts_parse_checked(opts, options, flat, n, err);
    if (ret != -EINVAL)
        return ret;
    /* As qemu-img: parse again with the creation options added, and when
     * that works the failing key is one only creation knows. */
    nc = qimg_create_opts(fmt, NULL, create, MAX_DESCS, NULL);
    for (int i = 0; i < nc && n < MAX_DESCS; i++) {
        bool dup = false;
        for (size_t j = 0; j < f->n_amend_opts; j++)
            dup |= !strcmp(flat[j].name, create[i]->name);
        if (!dup)
            flat[n++] = *create[i];
    }
    scratch = qimg_opts_new();
    if (scratch && qimg_opts_parse_checked(scratch, options, flat, n,
                                           NULL) == 0) {
        size_t l = strlen(err->msg);
        snprintf(err->msg + l, sizeof(err->msg) - l,
                 "\nThis option is only supported for image creation");
    }
    qimg_opts_free(scratch);
    return ret;
}

int qimg_create_storage(const char *filename, const struct qimg_opts *opts,
                        struct qimg_storage **out, struct qimg_error *err)
{
    const struct qimg_storage_ops *st = qimg_storage_for(filename);
    struct qimg_opts *fopts = qimg_opts_new();
    int ret;

    *out = NULL;
    if (!fopts)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (size_t i = 0; i < st->n_create_opts; i++) {
        const char *k = st->create_opts[i].name;
        if (strcmp(k, "size") && qimg_opts_get(opts, k))
            qimg_opts_set(fopts, k, qimg_opts_get(opts, k));
    }
    qimg_opts_set(fopts, "size", "0");
    /* Through the storage's create rules: "file:x" creates x, and a
     * storage without a create of its own is created by opening it. */
    ret = qimg_storage_create(st, filename, fopts, err);
    qimg_opts_free(fopts);
    if (ret < 0)
        return ret;
    return qimg_storage_open(out, filename, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                             QIMG_CACHE_WRITEBACK, err);
}
