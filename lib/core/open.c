/*
 * open.c - opening nodes as QEMU's bdrv_open does: a file name (a path,
 * "PROTO:...", or json:{...}) and/or a flat options dict decide the
 * driver, the file under a format (a storage, or a whole format node),
 * probing, the format's own options, the backing chain, and the checks
 * QEMU makes on what is left over, with QEMU's messages in QEMU's order.
 *
 * The order of the steps matters for which error a user sees first:
 *   json: merged (explicit options win) -> driver known? -> backing=null
 *   -> file child ("file" reference, file.* or the name; "A block device
 *   must be specified" / "Must specify either driver or file") -> probe
 *   -> format open -> name -> backing chain -> unknown options.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/block.h"
#include "core/jsonopts.h"
#include "core/policy.h"
#include "core/util.h"

static const struct qimg_format *probe_format(const uint8_t *buf, size_t len,
                                              const char *filename)
{
    const struct qimg_format *best = NULL;
    int best_score = 0;

    for (size_t i = 0; i < qimg_n_formats; i++) {
        const struct qimg_format *f = qimg_formats[i];
        int score = f->probe ? f->probe(buf, len, filename) : 0;
        if (score > best_score) {
            best_score = score;
            best = f;
        }
    }
    return best;
}

static int probe_node(struct qimg_image *node, const char *filename,
                      struct qimg_error *err)
{
    uint8_t buf[QIMG_PROBE_BYTES];
    int64_t size = node->file->ops->get_size(node->file);
    size_t len = size < 0 ? 0 : (size_t)QIMG_MIN((uint64_t)size, sizeof(buf));
    int ret;

    memset(buf, 0, sizeof(buf));
    if (len) {
        ret = node->file->ops->pread(node->file, 0, len, buf, err);
        if (ret < 0) {
            qimg_error_prefix(err, "Could not read image for determining its "
                                   "format: ");
            return ret;
        }
    }
    /* QEMU probes all 512 bytes: a shorter file reads as zeroes past its
     * end (an empty one is raw). */
    node->fmt = len ? probe_format(buf, sizeof(buf), filename ? filename : "")
                    : NULL;
    if (!node->fmt)
        node->fmt = &qimg_format_raw;
    node->probed_raw = node->fmt->is_raw;
    return 0;
}

/* QEMU's bdrv_make_absolute_filename: name as is when absolute or with a
 * protocol, else in the directory of node (which may be unknown). */
static int make_absolute(const struct qimg_image *node, const char *name,
                         char **out, struct qimg_error *err)
{
    char *dir;
    int ret;

    *out = NULL;
    if (name[0] == '/' || qimg_path_has_protocol(name)) {
        *out = strdup(name);
        return *out ? 0 : qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    ret = qimg_node_dirname(node, &dir, err);
    if (ret < 0)
        return ret;
    *out = malloc(strlen(dir) + strlen(name) + 1);
    if (*out)
        sprintf(*out, "%s%s", dir, name);
    free(dir);
    return *out ? 0 : qimg_error_set(err, -ENOMEM, "Out of memory");
}

char *qimg_node_backing_path(const struct qimg_image *node)
{
    char *path;
    return make_absolute(node, node->backing_name, &path, NULL) < 0 ? NULL
                                                                    : path;
}

int qimg_open_child_storage(struct qimg_image *parent, const char *name,
                            unsigned child_flags, unsigned flags,
                            struct qimg_storage **out, struct qimg_error *err)
{
    unsigned role = (child_flags >> 8) & QIMG_ROLE_ANY;
    char *path = NULL;
    int ret;

    *out = NULL;
    flags &= ~QIMG_OPEN_ROLE_MASK;
    if (child_flags & QIMG_CHILD_RELATIVE) {
        ret = make_absolute(parent, name, &path, err);
        if (ret < 0)
            return ret;
    }
    /* A name the image records: the untrusted-image policy decides. */
    if (!(child_flags & QIMG_CHILD_CALLER)) {
        role = role ? role : QIMG_ROLE_OTHER;
        ret = qimg_policy_check_name(role, name, path, err);
        if (ret == 0)
            ret = qimg_policy_count_child(parent, name, err);
        if (ret < 0) {
            free(path);
            return ret;
        }
        flags |= QIMG_OPEN_ROLE(role);
    }
    ret = qimg_storage_open(out, path ? path : name, flags, parent->cache,
                            err);
    free(path);
    return ret;
}

/*
 * The files of the nodes whose backing files are being opened, innermost
 * first: opens run alone on a thread and depth first, so this list holds
 * exactly the overlays of the node being opened.  A backing file equal to
 * one of them is a loop.
 */
struct chain_id { dev_t dev; ino_t ino; bool valid; };
struct open_frame { const struct open_frame *up; struct chain_id id; };
static __thread const struct open_frame *opening;

static struct chain_id file_id(const char *path)
{
    struct chain_id id = {0};
    struct stat st;
    uint64_t mem = path ? qimg_mem_id(path) : 0;
    if (mem) {
        /* Memory storage: the buffer is the identity (no inode). */
        id.dev = (dev_t)-1;
        id.ino = (ino_t)mem;
        id.valid = true;
    } else if (path && stat(path, &st) == 0) {
        id.dev = st.st_dev;
        id.ino = st.st_ino;
        id.valid = true;
    }
    return id;
}

/* The frame whose file name would repeat, or NULL. */
static const struct open_frame *find_loop(const struct open_frame *f,
                                          const char *name)
{
    struct chain_id id = file_id(name);
    for (; id.valid && f; f = f->up) {
        if (f->id.valid && f->id.dev == id.dev && f->id.ino == id.ino)
            return f;
    }
    return NULL;
}

/* The flags backing files are opened with: read-only, and as QEMU does,
 * others may not write to or resize them (unless -U). */
static unsigned backing_flags(unsigned flags)
{
    return (flags & ~(QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE |
                      QIMG_OPEN_ROLE_MASK)) | QIMG_OPEN_NO_SHARE;
}

static int open_backing(struct qimg_image *node, const struct qimg_opts *bopts,
                        struct qimg_error *err)
{
    struct qimg_image *b = NULL;
    struct qimg_opts *o = NULL;
    char *name = NULL;
    unsigned flags = backing_flags(node->flags);
    int max_depth = qimg_policy_max_depth();
    int ret;

    if (node->depth + 1 >= max_depth)
        return qimg_error_set(err, -ELOOP, "Backing chain of '%s' is deeper "
                              "than %d images", node->filename, max_depth);
    if (!qimg_opts_count(bopts)) {
        ret = make_absolute(node, node->backing_name, &name, err);
        if (ret < 0)
            return ret;
        /* The header's name: the untrusted-image policy decides. */
        ret = qimg_policy_check_name(QIMG_ROLE_BACKING, node->backing_name,
                                     name, err);
        if (ret < 0) {
            free(name);
            qimg_error_prefix(err, "Could not open backing file: ");
            return ret;
        }
        flags |= QIMG_OPEN_ROLE(QIMG_ROLE_BACKING);
    }
    /* QEMU hangs on loops; we refuse them. */
    struct open_frame self = {opening, file_id(node->file->filename)};
    const struct open_frame *loop = name ? find_loop(&self, name) : NULL;
    if (loop) {
        free(name);
        if (loop == &self)
            return qimg_error_set(err, -ELOOP, "Backing file '%s' of '%s' "
                                  "refers to itself", node->backing_name,
                                  node->filename);
        return qimg_error_set(err, -ELOOP, "Backing file '%s' of '%s' creates "
                              "an infinite loop", node->backing_name,
                              node->filename);
    }
    o = bopts ? qimg_opts_dup(bopts) : qimg_opts_new();
    if (!o) {
        free(name);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    if (name && node->backing_fmt[0] && !qimg_opts_get(o, "driver"))
        qimg_opts_set(o, "driver", node->backing_fmt);
    opening = &self;
    ret = qimg_node_open(&b, name, o, flags, node->cache, node->depth + 1,
                         err);
    opening = self.up;
    qimg_opts_free(o);
    free(name);
    if (ret < 0) {
        qimg_error_prefix(err, "Could not open backing file: ");
        return ret;
    }
    node->backing = b;
    return 0;
}

/*
 * As QEMU's format drivers do, every format but raw keeps its metadata
 * consistent by refusing to share write and resize of the file under it
 * (unless -U), and takes resize along with write.
 */
static unsigned storage_flags_for(const struct qimg_format *fmt,
                                  unsigned flags)
{
    if (fmt->is_raw || fmt->plain_perms || fmt == &qimg_format_protocol ||
        (flags & (QIMG_OPEN_SHARE | QIMG_OPEN_NO_LOCK)))
        return flags;
    flags |= QIMG_OPEN_NO_SHARE;
    if (flags & QIMG_OPEN_RDWR)
        flags |= QIMG_OPEN_RESIZE;
    return flags;
}

/* Take the format's permissions on the storage opened before probing. */
static int apply_format_perms(struct qimg_image *node, struct qimg_error *err)
{
    unsigned flags = storage_flags_for(node->fmt, node->flags);

    if (flags == node->flags)
        return 0;
    node->flags = flags;
    if (!node->file->ops->set_perm)
        return 0;
    return node->file->ops->set_perm(node->file, flags, err);
}

/* Move the keys under prefix ("file.") out of o into a new list. */
static struct qimg_opts *extract_prefix(struct qimg_opts *o, const char *prefix)
{
    struct qimg_opts *sub = qimg_opts_new();
    size_t l = strlen(prefix);

    if (!sub)
        return NULL;
    for (size_t i = 0; i < qimg_opts_count(o);) {
        const char *k = qimg_opts_key(o, i);
        if (!strncmp(k, prefix, l)) {
            if (qimg_opts_set_typed(sub, k + l, qimg_opts_value(o, i),
                                    qimg_opts_type(o, i)) < 0) {
                qimg_opts_free(sub);
                return NULL;
            }
            qimg_opts_del(o, k);
        } else {
            i++;
        }
    }
    return sub;
}

static bool opt_true(const char *v)
{
    return v && (!strcmp(v, "on") || !strcmp(v, "true"));
}

/* Open the file under a format node: the "file" options, or the name. */
static int open_file_child(struct qimg_image *node, const char *filename,
                           struct qimg_opts *o, bool have_driver,
                           struct qimg_error *err)
{
    struct qimg_opts *fo;
    long at = qimg_opts_index(o, "file");
    const char *ref = qimg_opts_get(o, "file");
    int ret;

    /* "file": null, {} or [] names no child, as if it were absent. */
    if (at >= 0 && qimg_opts_type(o, (size_t)at) == QIMG_VAL_NULL) {
        qimg_opts_del(o, "file");
        ref = NULL;
    }
    if (ref)
        return qimg_error_set(err, -EINVAL, "Cannot find device='%s' nor "
                              "node-name='%s'", ref, ref);
    fo = extract_prefix(o, "file.");
    if (!fo)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (!qimg_opts_count(fo) && !filename) {
        qimg_opts_free(fo);
        if (have_driver)
            return qimg_error_set(err, -EINVAL, "A block device must be "
                                  "specified for \"file\"");
        return qimg_error_set(err, -EINVAL, "Must specify either driver or "
                              "file");
    }
    ret = qimg_storage_open_opts(&node->file, filename, fo, node->flags,
                                 node->cache, node->depth, err);
    qimg_opts_free(fo);
    return ret;
}

static struct qimg_image *node_new(const char *filename, unsigned flags,
                                   enum qimg_cache cache, int depth)
{
    struct qimg_image *node = calloc(1, sizeof(*node));

    if (!node)
        return NULL;
    pthread_mutex_init(&node->lock, NULL);
    node->flags = flags;
    node->cache = cache;
    node->depth = depth;
    node->read_only = !(flags & QIMG_OPEN_RDWR);
    if (filename && !(node->filename = strdup(filename))) {
        qimg_close(node);
        return NULL;
    }
    return node;
}

/* The options the format itself takes: everything but the node keys. */
static struct qimg_opts *format_opts(const struct qimg_opts *o)
{
    struct qimg_opts *f = qimg_opts_new();

    for (size_t i = 0; f && i < qimg_opts_count(o); i++) {
        const char *k = qimg_opts_key(o, i);
        if (qimg_node_key(k))
            continue;
        if (qimg_opts_set_typed(f, k, qimg_opts_value(o, i),
                                qimg_opts_type(o, i)) < 0) {
            qimg_opts_free(f);
            return NULL;
        }
    }
    return f;
}

static int open_format(struct qimg_image *node, const char *filename,
                       struct qimg_opts *o, const char *driver,
                       struct qimg_error *err)
{
    struct qimg_opts *fmt_opts;
    int ret;

    if (node->fmt)
        node->flags = storage_flags_for(node->fmt, node->flags);
    ret = open_file_child(node, filename, o, driver != NULL, err);
    /* The policy checked the file: what the format opens is its own. */
    node->flags &= ~QIMG_OPEN_ROLE_MASK;
    if (ret < 0)
        return ret;
    if (!node->fmt) {
        ret = probe_node(node, node->file->filename, err);
        if (ret < 0)
            return ret;
        ret = apply_format_perms(node, err);
        if (ret < 0)
            return ret;
    }
    if (node->fmt->read_only && (node->flags & QIMG_OPEN_RDWR))
        return qimg_error_set(err, -EACCES, "Image is read-only");
    if (node->fmt->state_size) {
        node->state = calloc(1, node->fmt->state_size);
        if (!node->state)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    fmt_opts = format_opts(o);
    if (!fmt_opts)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->fmt->open(node, fmt_opts, err);
    qimg_opts_free(fmt_opts);
    if (ret < 0) {
        free(node->state);
        node->state = NULL;
    }
    return ret;
}

/* A node opened at the protocol level: the storage is the whole node. */
static int open_protocol(struct qimg_image *node, const char *filename,
                         struct qimg_opts *o, struct qimg_error *err)
{
    int64_t size;
    int ret;

    node->fmt = &qimg_format_protocol;
    ret = qimg_storage_open_opts(&node->file, filename, o, node->flags,
                                 node->cache, node->depth, err);
    node->flags &= ~QIMG_OPEN_ROLE_MASK;
    if (ret < 0)
        return ret;
    size = node->file->ops->get_size(node->file);
    if (size < 0)
        return qimg_error_set(err, (int)size, "Could not refresh total sector "
                              "count: %s", strerror((int)-size));
    /* QEMU counts a protocol node's length in whole sectors. */
    if (!qimg_align_up((uint64_t)size, 512, &node->size))
        node->size = (uint64_t)size;
    return 0;
}

int qimg_node_open(struct qimg_image **out, const char *filename,
                   const struct qimg_opts *options, unsigned flags,
                   enum qimg_cache cache, int depth, struct qimg_error *err)
{
    struct qimg_opts *o = options ? qimg_opts_dup(options) : qimg_opts_new();
    struct qimg_opts *bopts = NULL;
    struct qimg_image *node = NULL;
    const struct qimg_format *fmt = NULL;
    const char *driver, *v;
    bool protocol = false, opened = false;
    int ret;
    long at;

    *out = NULL;
    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    node = node_new(filename, flags, cache, depth);
    if (!node) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    /* json: counts as options given explicitly, below the real ones. */
    if (filename && !strncmp(filename, "json:", 5)) {
        ret = qimg_json_to_opts(filename + 5, o, err);
        if (ret < 0)
            goto fail;
        filename = NULL;
    }
    driver = qimg_opts_get(o, "driver");
    /* A driver that is not a string is no driver (QEMU reads it as a
     * string only). */
    if (driver && qimg_opts_type(o, (size_t)qimg_opts_index(o, "driver")) !=
                      QIMG_VAL_STRING)
        driver = NULL;
    if (driver) {
        fmt = qimg_format_find(driver);
        if (!fmt) {
            if (!qimg_storage_find(driver)) {
                ret = qimg_error_set(err, -ENOENT, "Unknown driver '%s'",
                                     driver);
                goto fail;
            }
            protocol = true;
        }
    }
    /* cache.* options override the cache mode, for this node and what it
     * opens under it, as QEMU's children inherit them. */
    v = qimg_opts_get(o, "cache.direct");
    if (v) {
        bool direct = opt_true(v);
        if (direct && node->cache == QIMG_CACHE_WRITEBACK)
            node->cache = QIMG_CACHE_NONE;
        else if (direct && node->cache == QIMG_CACHE_WRITETHROUGH)
            node->cache = QIMG_CACHE_DIRECTSYNC;
        else if (!direct && node->cache == QIMG_CACHE_NONE)
            node->cache = QIMG_CACHE_WRITEBACK;
        else if (!direct && node->cache == QIMG_CACHE_DIRECTSYNC)
            node->cache = QIMG_CACHE_WRITETHROUGH;
    }
    if (opt_true(qimg_opts_get(o, "cache.no-flush")))
        node->cache = QIMG_CACHE_UNSAFE;
    if (opt_true(qimg_opts_get(o, "force-share")))
        node->flags |= QIMG_OPEN_SHARE;
    if (opt_true(qimg_opts_get(o, "read-only"))) {
        node->flags &= ~(QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE);
        node->read_only = true;
    }
    /* Sharing write access with others only makes sense for readers. */
    if ((node->flags & QIMG_OPEN_SHARE) && (node->flags & QIMG_OPEN_RDWR)) {
        ret = qimg_error_set(err, -EINVAL, "force-share=on can only be used "
                             "with read-only images");
        goto fail;
    }
    /* "backing": null (or "") opens no backing file; backing.* options
     * choose it instead of the header. */
    v = qimg_opts_get(o, "backing");
    at = qimg_opts_index(o, "backing");
    if (at >= 0 && qimg_opts_type(o, (size_t)at) == QIMG_VAL_NULL && *v) {
        /* {} or []: no node name and no options; QEMU then reports the
         * option as unsupported, which the option check below does. */
    } else if (v && !*v) {
        node->flags |= QIMG_OPEN_NO_BACKING;
        node->backing_overridden = true;
        qimg_opts_del(o, "backing");
    } else if (v) {
        ret = qimg_error_set(err, -EINVAL, "Cannot find device='%s' nor "
                             "node-name='%s'", v, v);
        goto fail;
    }
    bopts = extract_prefix(o, "backing.");
    if (!bopts) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    if (qimg_opts_count(bopts))
        node->backing_overridden = true;
    node->fmt = fmt;
    if (protocol)
        ret = open_protocol(node, filename, o, err);
    else
        ret = open_format(node, filename, o, driver, err);
    if (ret < 0)
        goto fail;
    opened = true;
    /* What the node was opened with, for its name; a probed format is
     * recorded as if it had been given, as QEMU does. */
    node->options = o;
    o = NULL;
    if (!protocol &&
        qimg_opts_set(node->options, "driver", node->fmt->name) < 0) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    ret = qimg_node_refresh_name(node);
    if (ret < 0) {
        ret = qimg_error_set(err, ret, "Out of memory");
        goto fail;
    }
    if (!node->filename && !(node->filename = strdup(node->name))) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    if (!protocol && !(node->flags & QIMG_OPEN_NO_BACKING) &&
        (node->backing_name[0] || qimg_opts_count(bopts))) {
        ret = open_backing(node, bopts, err);
        if (ret < 0)
            goto fail;
    } else if (!protocol && qimg_opts_count(bopts)) {
        /* Without its backing chain, backing.* options are left unused:
         * QEMU refuses those as any unknown option. */
        ret = qimg_error_set(err, -EINVAL, "Block format '%s' does not "
                             "support the option 'backing.%s'",
                             node->fmt->name, qimg_opts_key(bopts, 0));
        goto fail;
    }
    if (!protocol && node->fmt->runtime_opts) {
        const char *bad = qimg_opts_first_unlisted(node->options,
                                                   node->fmt->runtime_opts,
                                                   NULL);
        if (bad) {
            ret = qimg_error_set(err, -EINVAL, "Block format '%s' does not "
                                 "support the option '%s'", node->fmt->name,
                                 bad);
            goto fail;
        }
    }
    qimg_opts_free(bopts);
    *out = node;
    return 0;

fail:
    if (!opened && node) {
        /* The format was not opened: close must not call it. */
        free(node->state);
        node->state = NULL;
    }
    qimg_opts_free(o);
    qimg_opts_free(bopts);
    qimg_close(node);
    return ret;
}

int qimg_image_open_node(struct qimg_image **out, const char *filename,
                         const char *format, const struct qimg_opts *fmt_opts,
                         unsigned flags, enum qimg_cache cache, int depth,
                         struct qimg_error *err)
{
    struct qimg_opts *o = fmt_opts ? qimg_opts_dup(fmt_opts) : qimg_opts_new();
    int ret;

    *out = NULL;
    if (!o || (format && qimg_opts_set(o, "driver", format) < 0)) {
        qimg_opts_free(o);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    ret = qimg_node_open(out, filename, o, flags, cache, depth, err);
    qimg_opts_free(o);
    return ret;
}

int qimg_open(struct qimg_image **out, const struct qimg_open_params *p,
              struct qimg_error *err)
{
    struct qimg_opts *o = p->options ? qimg_opts_dup(p->options)
                                     : qimg_opts_new();
    int ret;

    *out = NULL;
    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    /* -f is an explicit "driver", above what a json: name says. */
    if (p->format && qimg_opts_set(o, "driver", p->format) < 0) {
        qimg_opts_free(o);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    if (!p->filename && !qimg_opts_count(o)) {
        qimg_opts_free(o);
        return qimg_error_set(err, -EINVAL, "No filename given");
    }
    unsigned flags = p->flags & ~QIMG_OPEN_ROLE_MASK;
    if (p->role && p->filename) {
        /* A name an image records, opened by the caller (info's chain). */
        unsigned role = p->role & QIMG_ROLE_ANY;
        ret = qimg_policy_check_name(role, p->filename, NULL, err);
        if (ret < 0) {
            qimg_opts_free(o);
            return ret;
        }
        flags |= QIMG_OPEN_ROLE(role);
    }
    ret = qimg_node_open(out, p->filename, o, flags, p->cache, 0, err);
    qimg_opts_free(o);
    return ret;
}

/*
 * A new image written forward onto a pipe: the stream storage (size 0:
 * the format ends the stream itself, nothing is padded) under a node
 * whose driver writes the image's head and sets itself up as its open
 * would (qimg_format.create_stream).
 */
int qimg_create_stream(struct qimg_image **out, const char *fmt,
                       const char *filename, const struct qimg_opts *opts,
                       struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    struct qimg_opts *so = NULL;
    struct qimg_image *node;
    int ret;

    *out = NULL;
    if (!f || !f->create_stream)
        return qimg_error_set(err, -ENOTSUP, "cannot write %s to a pipe: "
                              "its layout is not written strictly forward",
                              fmt);
    node = node_new(filename, QIMG_OPEN_RDWR, QIMG_CACHE_UNSAFE, 0);
    so = qimg_opts_new();
    if (!node || !so || qimg_opts_set(so, "driver", "stream") < 0 ||
        qimg_opts_set(so, "size", "0") < 0) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    node->fmt = f;
    ret = qimg_storage_open_opts(&node->file, filename, so, node->flags,
                                 node->cache, 0, err);
    if (ret < 0)
        goto fail;
    node->options = qimg_opts_new();
    node->state = f->state_size ? calloc(1, f->state_size) : NULL;
    if (!node->options || (f->state_size && !node->state) ||
        qimg_opts_set(node->options, "driver", f->name) < 0) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    /* on failure the driver's close releases what it set up */
    ret = f->create_stream(node, opts, err);
    if (ret < 0)
        goto fail;
    qimg_opts_free(so);
    *out = node;
    return 0;
fail:
    qimg_opts_free(so);
    qimg_close(node);
    return ret;
}
