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

/* The summary: every option with a value or a default, in desc order. */
static char *summarise(const struct qimg_opts *opts,
                       const struct qimg_opt_desc **d, int nd)
{
    size_t cap = 256, len = 0;
    char *out = malloc(cap);

    if (!out)
        return NULL;
    out[0] = '\0';
    for (int i = 0; i < nd; i++) {
        const char *v = qimg_opts_get(opts, d[i]->name);
        size_t need;
        char num[32];
        if (!v)
            v = d[i]->def;
        if (!v)
            continue;
        /* QEMU prints numbers parsed, as signed 64-bit: 0x10 is 16 and
         * 18446744073709551615 is -1. */
        if (d[i]->type == QIMG_OPT_NUMBER) {
            snprintf(num, sizeof(num), "%lld",
                     (long long)strtoull(v, NULL, 0));
            v = num;
        }
        need = len + strlen(d[i]->name) + strlen(v) + 3;
        if (need > cap) {
            char *n;
            cap = need * 2;
            n = realloc(out, cap);
            if (!n) {
                free(out);
                return NULL;
            }
            out = n;
        }
        len += (size_t)sprintf(out + len, "%s%s=%s", len ? " " : "",
                               d[i]->name, v);
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

    if (!strncmp(backing, "json:", 5))
        full = strdup(backing);
    else
        full = qimg_path_combine(filename, backing);
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
        ret = qimg_opts_parse(opts, options, NULL, err);
        if (ret < 0)
            goto fail;
        struct qimg_opt_desc flat[MAX_DESCS];
        for (int i = 0; i < nd; i++)
            flat[i] = *d[i];
        ret = qimg_opts_validate(opts, flat, (size_t)nd, err);
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

int qimg_amend_opts(const char *fmt, const struct qimg_opt_desc **out,
                    size_t max, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    size_t n = 0;

    if (!f)
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    if (!f->amend)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support option amendment", fmt);
    for (; n < f->n_amend_opts && n < max; n++)
        out[n] = &f->amend_opts[n];
    return (int)n;
}

int qimg_amend_check_opts(const char *fmt, struct qimg_opts *opts,
                          struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    struct qimg_opt_desc flat[MAX_DESCS];
    const struct qimg_opt_desc *create[MAX_DESCS];
    int nc, ret;

    if (!f || !f->amend)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support option amendment", fmt);
    for (size_t i = 0; i < f->n_amend_opts; i++)
        flat[i] = f->amend_opts[i];
    ret = qimg_opts_validate(opts, flat, f->n_amend_opts, err);
    if (ret == -EINVAL && !strncmp(err->msg, "Invalid parameter '", 19)) {
        /* Say so when the key is one that only creation knows. */
        nc = qimg_create_opts(fmt, NULL, create, MAX_DESCS, NULL);
        for (int i = 0; i < nc; i++) {
            size_t kl = strlen(create[i]->name);
            if (!strncmp(err->msg + 19, create[i]->name, kl) &&
                err->msg[19 + kl] == '\'' && !err->msg[20 + kl]) {
                size_t l = strlen(err->msg);
                snprintf(err->msg + l, sizeof(err->msg) - l,
                         "\nThis option is only supported for image creation");
                break;
            }
        }
    }
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
    ret = st->create(filename, fopts, err);
    qimg_opts_free(fopts);
    if (ret < 0)
        return ret;
    return qimg_storage_open(out, filename, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                             QIMG_CACHE_WRITEBACK, err);
}
