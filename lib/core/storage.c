/*
 * storage.c - the storage layer's core: the table of storages, choosing
 * one for a file name as QEMU chooses a protocol, opening one from a
 * name and/or an options dict (QEMU's bdrv_fill_options for protocol
 * nodes), the node storage (a format node used as another format's file),
 * and the events formats raise for blkdebug.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/block.h"
#include "core/json.h"
#include "core/policy.h"
#include "core/util.h"
#include "qimg-config.h"

#ifdef QIMG_MODULES
/* The network storages are modules (core/module.c): their stubs. */
#define MODULE_STORAGE(var, name, proto, module)                            \
    QIMG_STORAGE_MODULE_STUB(stub_##var, name, proto, module,               \
                             "qimg_storage_" #var)
MODULE_STORAGE(ftp, "ftp", "ftp", "qimg-curl");
MODULE_STORAGE(ftps, "ftps", "ftps", "qimg-curl");
MODULE_STORAGE(http, "http", "http", "qimg-curl");
MODULE_STORAGE(https, "https", "https", "qimg-curl");
MODULE_STORAGE(iscsi, "iscsi", "iscsi", "qimg-iscsi");
MODULE_STORAGE(nbd, "nbd", "nbd", "qimg-nbd");
MODULE_STORAGE(nbd_tcp, "nbd", "nbd+tcp", "qimg-nbd");
MODULE_STORAGE(nbd_unix, "nbd", "nbd+unix", "qimg-nbd");
MODULE_STORAGE(nfs, "nfs", "nfs", "qimg-nfs");
#ifdef QIMG_RBD
MODULE_STORAGE(rbd, "rbd", "rbd", "qimg-rbd");
#endif
MODULE_STORAGE(ssh, "ssh", "ssh", "qimg-ssh");
#define NET(var) (&stub_##var)
#else
#define NET(var) (&qimg_storage_##var)
#endif

/* Every storage a name or a "driver" can select, alphabetically as
 * qemu-img lists drivers.  Adding one means one line here. */
static const struct qimg_storage_ops *const storages[] = {
    &qimg_storage_blkdebug,
    &qimg_storage_blkverify,
    &qimg_storage_file,
#ifdef QIMG_NET
    NET(ftp),
    NET(ftps),
#endif
    &qimg_storage_host_cdrom,
    &qimg_storage_host_device,
#ifdef QIMG_NET
    NET(http),
    NET(https),
    NET(iscsi),
    NET(nbd),
    NET(nbd_tcp),
    NET(nbd_unix),
    NET(nfs),
#endif
    &qimg_storage_null_aio,
    &qimg_storage_null_co,
    &qimg_storage_quorum,
#ifdef QIMG_RBD
    NET(rbd),
#endif
#ifdef QIMG_NET
    NET(ssh),
#endif
};

size_t qimg_storage_count(void)
{
    return QIMG_ARRAY_SIZE(storages);
}

const struct qimg_storage_ops *qimg_storage_at(size_t i)
{
    return i < QIMG_ARRAY_SIZE(storages) ? storages[i] : NULL;
}

const struct qimg_storage_ops *qimg_storage_find(const char *name)
{
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(storages); i++)
        if (!strcmp(storages[i]->name, name))
            return qimg_module_storage(storages[i]);
    if (!strcmp(name, qimg_storage_stream.name))
        return &qimg_storage_stream;
    return NULL;
}

/* QEMU's path_has_protocol: a ':' before any '/'. */
bool qimg_path_has_protocol(const char *name)
{
    const char *p = name + strcspn(name, ":/");
    return *p == ':';
}

const struct qimg_storage_ops *qimg_storage_for_name(const char *filename,
                                                     bool allow_prefix,
                                                     struct qimg_error *err)
{
    char proto[128];
    size_t len;

    if (qimg_mem_claims(filename))
        return &qimg_storage_memory;
    /* As in QEMU, devices win over prefixes: udev names hold colons. */
    const struct qimg_storage_ops *dev = qimg_host_device_for(filename);
    if (dev)
        return dev;
    if (!allow_prefix || !qimg_path_has_protocol(filename))
        return &qimg_storage_file;
    len = strcspn(filename, ":");
    if (len > sizeof(proto) - 1)
        len = sizeof(proto) - 1;
    memcpy(proto, filename, len);
    proto[len] = '\0';
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(storages); i++)
        if (storages[i]->protocol && !strcmp(storages[i]->protocol, proto)) {
            const struct qimg_storage_ops *ops =
                qimg_module_storage(storages[i]);
            if (ops)
                return ops;
            break;
        }
    qimg_error_set(err, -EINVAL, "Unknown protocol '%s'", proto);
    return NULL;
}

const struct qimg_storage_ops *qimg_storage_for(const char *filename)
{
    const struct qimg_storage_ops *ops =
        qimg_storage_for_name(filename, true, NULL);
    return ops ? ops : &qimg_storage_file;
}

bool qimg_key_listed(const char *const *list, const char *key)
{
    for (; list && *list; list++) {
        size_t l = strlen(*list);
        if (l && (*list)[l - 1] == '.' ? !strncmp(key, *list, l)
                                       : !strcmp(key, *list))
            return true;
    }
    return false;
}

/* Keys every node takes (QEMU's bdrv_runtime_opts). */
static const char *const node_keys[] = {
    "driver", "node-name", "read-only", "auto-read-only", "force-share",
    "cache.direct", "cache.no-flush", "discard", "detect-zeroes", NULL,
};

bool qimg_node_key(const char *key)
{
    return qimg_key_listed(node_keys, key);
}

const char *qimg_opts_first_unlisted(const struct qimg_opts *opts,
                                     const char *const *list,
                                     const char *const *list2)
{
    const char *best = NULL;
    unsigned best_bucket = 0;
    size_t best_i = 0;

    /* The first in the order of QEMU's dictionary, which is the one its
     * message names. */
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (qimg_node_key(k) || qimg_key_listed(list, k) ||
            qimg_key_listed(list2, k))
            continue;
        unsigned b = qimg_qdict_bucket(k);
        if (!best || b < best_bucket || (b == best_bucket && i > best_i)) {
            best = k;
            best_bucket = b;
            best_i = i;
        }
    }
    return best;
}

static void storage_free(struct qimg_storage *st)
{
    if (!st)
        return;
    qimg_opts_free(st->options);
    free(st->filename);
    free(st->name);
    free(st);
}

void qimg_storage_close(struct qimg_storage *st)
{
    if (!st)
        return;
    if (st->ops->close)
        st->ops->close(st);
    storage_free(st);
}

bool qimg_storage_same_file(const struct qimg_storage *a,
                            const struct qimg_storage *b)
{
    return a && b && a->has_id && b->has_id && a->id_dev == b->id_dev &&
           a->id_ino == b->id_ino;
}

int qimg_storage_truncate(struct qimg_storage *st, uint64_t size, bool exact,
                          enum qimg_prealloc prealloc, struct qimg_error *err)
{
    if (exact && st->ops->truncate_exact)
        return st->ops->truncate_exact(st, size, prealloc, err);
    if (!st->ops->truncate)
        return qimg_error_set(err, -ENOTSUP, "Image format driver does not "
                              "support resize");
    return st->ops->truncate(st, size, prealloc, err);
}

/* ---- the node storage ------------------------------------------------------ */

static int node_pread(struct qimg_storage *st, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct qimg_image *n = st->node;
    size_t in = 0;

    /* Storages read zeroes past their end; nodes refuse such reads. */
    if (off < n->size) {
        in = (size_t)QIMG_MIN((uint64_t)len, n->size - off);
        int ret = qimg_pread(n, off, in, buf, err);
        if (ret < 0)
            return ret;
    }
    memset((uint8_t *)buf + in, 0, len - in);
    return 0;
}

static int node_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    return qimg_pwrite(st->node, off, len, buf, err);
}

static int node_flush(struct qimg_storage *st, struct qimg_error *err)
{
    return qimg_flush(st->node, err);
}

static int64_t node_get_size(struct qimg_storage *st)
{
    return (int64_t)st->node->size;
}

static int node_truncate(struct qimg_storage *st, uint64_t size,
                         enum qimg_prealloc prealloc, struct qimg_error *err)
{
    return qimg_truncate(st->node, size, false, prealloc, err);
}

static int node_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                       unsigned flags, struct qimg_error *err)
{
    return qimg_pwrite_zeroes(st->node, off, len, flags, err);
}

static int node_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    return qimg_discard(st->node, off, len, err);
}

static int node_block_status(struct qimg_storage *st, uint64_t off,
                             uint64_t len, struct qimg_extent *ext,
                             struct qimg_error *err)
{
    int ret = qimg_block_status_chain(st->node, NULL, off, len, ext, err);
    if (ret == 0)
        ext->flags &= QIMG_BS_DATA | QIMG_BS_ZERO;
    return ret;
}

static int64_t node_allocated(struct qimg_storage *st)
{
    struct qimg_storage *f = st->node->file;
    return f && f->ops->allocated_size ? f->ops->allocated_size(f) : -ENOTSUP;
}

static void node_event(struct qimg_storage *st, enum qimg_event ev)
{
    (void)st;
    (void)ev;
}

static void node_storage_close(struct qimg_storage *st)
{
    qimg_close(st->node);
    st->node = NULL;
}

static const struct qimg_storage_ops node_storage_ops = {
    .name = "node",
    .close = node_storage_close,
    .pread = node_pread,
    .pwrite = node_pwrite,
    .flush = node_flush,
    .get_size = node_get_size,
    .truncate = node_truncate,
    .pwrite_zeroes = node_zeroes,
    .discard = node_discard,
    .block_status = node_block_status,
    .allocated_size = node_allocated,
    .event = node_event,
};

int qimg_storage_open_node(struct qimg_storage **out, const char *filename,
                           const struct qimg_opts *opts, unsigned flags,
                           enum qimg_cache cache, int depth,
                           struct qimg_error *err)
{
    struct qimg_storage *st = calloc(1, sizeof(*st));
    struct qimg_image *node = NULL;
    int ret;

    if (!st)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_node_open(&node, filename, opts, flags, cache, depth + 1, err);
    if (ret < 0) {
        free(st);
        return ret;
    }
    st->ops = &node_storage_ops;
    st->node = node;
    st->read_only = node->read_only;
    st->align = 1;
    st->caps = QIMG_STORAGE_CAN_ZERO | QIMG_STORAGE_CAN_DISCARD;
    st->name = strdup(node->name ? node->name : "");
    st->filename = strdup(st->name ? st->name : "");
    if (!st->name || !st->filename) {
        qimg_storage_close(st);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    *out = st;
    return 0;
}

/* QEMU's bs->filename of a protocol node: its exact name, else
 * json:{...} of its strong options. */
static char *storage_name(struct qimg_storage *st)
{
    char exact[4096];
    json_t *d;
    char *j, *name = NULL;

    if (qimg_storage_exact_name(st, exact, sizeof(exact)))
        return strdup(exact);
    d = qimg_storage_full_opts(st);
    j = d ? qimg_json_compact(d) : NULL;
    json_decref(d);
    if (j && (name = malloc(strlen(j) + 6)))
        sprintf(name, "json:%s", j);
    free(j);
    return name ? name : strdup(st->filename ? st->filename : "");
}

/* ---- opening ---------------------------------------------------------------- */

int qimg_storage_open_opts(struct qimg_storage **out, const char *filename,
                           const struct qimg_opts *opts, unsigned flags,
                           enum qimg_cache cache, int depth,
                           struct qimg_error *err)
{
    struct qimg_opts *o = opts ? qimg_opts_dup(opts) : qimg_opts_new();
    const struct qimg_storage_ops *ops = NULL;
    struct qimg_storage *st = NULL;
    const char *drv, *fname, *bad;
    bool parse = false;
    int ret;

    *out = NULL;
    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    drv = qimg_opts_get(o, "driver");
    if (drv && qimg_opts_type(o, (size_t)qimg_opts_index(o, "driver")) !=
                   QIMG_VAL_STRING)
        drv = NULL;
    if (drv) {
        if (qimg_format_find(drv)) {
            ret = qimg_storage_open_node(out, filename, o, flags, cache,
                                         depth, err);
            qimg_opts_free(o);
            return ret;
        }
        ops = qimg_storage_find(drv);
        if (!ops) {
            ret = qimg_error_set(err, -ENOENT, "Unknown driver '%s'", drv);
            goto fail;
        }
    }
    if (filename) {
        if (qimg_opts_get(o, "filename")) {
            ret = qimg_error_set(err, -EINVAL, "Can't specify 'file' and "
                                 "'filename' options at the same time");
            goto fail;
        }
        if (qimg_opts_set(o, "filename", filename) < 0) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto fail;
        }
        parse = true;
    }
    fname = qimg_opts_get(o, "filename");
    if (!ops) {
        if (!fname) {
            ret = qimg_error_set(err, -EINVAL, "Must specify either driver or "
                                 "file");
            goto fail;
        }
        ops = qimg_storage_for_name(fname, parse, err);
        if (!ops) {
            ret = -EINVAL;
            goto fail;
        }
        if (qimg_opts_set(o, "driver", ops->name) < 0) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto fail;
        }
    }
    ret = qimg_policy_check_driver(flags, ops, fname, err);
    if (ret < 0)
        goto fail;
    if (ops->parse_filename && parse) {
        char *copy = strdup(fname);
        if (!copy) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto fail;
        }
        ret = ops->parse_filename(copy, o, err);
        free(copy);
        if (ret < 0)
            goto fail;
        if (!ops->needs_filename)
            qimg_opts_del(o, "filename");
    }
    fname = qimg_opts_get(o, "filename");
    if (ops->needs_filename && (!fname || !*fname)) {
        ret = qimg_error_set(err, -EINVAL, "The '%s' block driver requires a "
                             "file name", ops->name);
        goto fail;
    }
    /* A file an image names: allowed, and by a plain file driver? */
    ret = qimg_policy_check_open(flags, ops, fname, err);
    if (ret < 0)
        goto fail;
    st = calloc(1, sizeof(*st));
    if (!st || (fname && !(st->filename = strdup(fname)))) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    st->ops = ops;
    st->read_only = !(flags & QIMG_OPEN_RDWR);
    st->align = 1;
    st->options = o;
    o = NULL;
    ret = ops->open(st, st->options, flags, cache, err);
    if (ret < 0) {
        storage_free(st);
        return ret;
    }
    /* ... and is what was opened the file that was checked? */
    ret = qimg_policy_check_opened(flags, st, err);
    if (ret < 0) {
        qimg_storage_close(st);
        return ret;
    }
    static const char *const always[] = {"filename", NULL};
    bad = qimg_opts_first_unlisted(st->options, ops->runtime_opts, always);
    if (bad && !(st->child_name &&
                 !strncmp(bad, st->child_name, strlen(st->child_name)))) {
        ret = qimg_error_set(err, -EINVAL, "Block protocol '%s' doesn't "
                             "support the option '%s'", ops->name, bad);
        qimg_storage_close(st);
        return ret;
    }
    st->name = storage_name(st);
    *out = st;
    return 0;

fail:
    qimg_opts_free(o);
    storage_free(st);
    return ret;
}

int qimg_storage_open(struct qimg_storage **out, const char *filename,
                      unsigned flags, enum qimg_cache cache,
                      struct qimg_error *err)
{
    return qimg_storage_open_opts(out, filename, NULL, flags, cache, 0, err);
}

/* ---- events ----------------------------------------------------------------- */

static const char *const event_names[QIMG_EV_COUNT] = {
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table",
    "l1_grow_activate_table", "l2_load", "l2_update", "l2_update_compressed",
    "l2_alloc_cow_read", "l2_alloc_write", "read_aio", "read_backing_aio",
    "read_compressed", "write_aio", "write_compressed", "vmstate_load",
    "vmstate_save", "cow_read", "cow_write", "reftable_load",
    "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
    "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
    "refblock_alloc_write", "refblock_alloc_write_blocks",
    "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os",
    "flush_to_disk", "pwritev_rmw_head", "pwritev_rmw_after_head",
    "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev",
    "pwritev_zero", "pwritev_done", "empty_image_prepare",
    "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write",
    "cluster_alloc_space", "none",
};

const char *qimg_event_name(enum qimg_event ev)
{
    return (unsigned)ev < QIMG_EV_COUNT ? event_names[ev] : NULL;
}

void qimg_storage_event(struct qimg_storage *st, enum qimg_event ev)
{
    for (; st; st = st->child)
        if (st->ops->event)
            st->ops->event(st, ev);
}

/* ---- creating --------------------------------------------------------------- */

/* QEMU's simple create: open what exists (read-write, resizable), grow it
 * to the size when it can, and zero the first sector so that no old
 * header survives. */
static int create_by_open(const struct qimg_storage_ops *ops,
                          const char *filename, const struct qimg_opts *opts,
                          struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_storage *st = NULL;
    const char *pa = qimg_opts_get(opts, "preallocation");
    uint64_t size = 0;
    int64_t len;
    int ret;

    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret < 0)
        goto out;
    if (pa && strcmp(pa, "off")) {
        enum qimg_prealloc p;
        if (qimg_prealloc_parse(pa, &p) < 0)   /* QAPI's enum message */
            ret = qimg_error_set(err, -EINVAL, "invalid parameter value: %s",
                                 pa);
        else
            ret = qimg_error_set(err, -ENOTSUP, "Unsupported preallocation "
                                 "mode '%s'", pa);
        goto out;
    }
    qimg_opts_set(o, "driver", ops->name);
    ret = qimg_storage_open_opts(&st, filename, o, QIMG_OPEN_RDWR |
                                 QIMG_OPEN_RESIZE, QIMG_CACHE_WRITEBACK, 0,
                                 err);
    if (ret < 0) {
        qimg_error_prefix(err, "Protocol driver '%s' does not support image "
                          "creation, and opening the image failed: ",
                          ops->name);
        ret = -EINVAL;
        goto out;
    }
    len = st->ops->get_size(st);
    if (len >= 0 && (uint64_t)len < size && st->ops->truncate) {
        ret = st->ops->truncate(st, size, QIMG_PREALLOC_OFF, err);
        if (ret < 0 && ret != -ENOTSUP)
            goto out;
        len = st->ops->get_size(st);
    }
    if (len < 0) {
        ret = qimg_error_set(err, (int)len, "Failed to inquire the new image "
                             "file's length: %s", strerror((int)-len));
        goto out;
    }
    if ((uint64_t)len < size) {
        if (!err || !err->code)
            qimg_error_set(err, -ENOTSUP, "Image size too small");
        ret = -ENOTSUP;
        goto out;
    }
    qimg_error_clear(err);
    if (len) {
        uint64_t n = QIMG_MIN((uint64_t)len, 512);
        ret = st->ops->pwrite_zeroes
                  ? st->ops->pwrite_zeroes(st, 0, n, QIMG_ZERO_MAY_UNMAP, err)
                  : -ENOTSUP;
        if (ret == -ENOTSUP) {
            static const uint8_t zero[512];
            ret = st->ops->pwrite(st, 0, (size_t)n, zero, err);
        }
        if (ret < 0) {
            qimg_error_set(err, ret, "Failed to clear the new image's first "
                           "sector: %s", strerror(-ret));
            goto out;
        }
    }
    ret = 0;
out:
    qimg_storage_close(st);
    qimg_opts_free(o);
    return ret;
}

int qimg_storage_create(const struct qimg_storage_ops *ops,
                        const char *filename, const struct qimg_opts *opts,
                        struct qimg_error *err)
{
    if (ops->create) {
        struct qimg_opts *o = qimg_opts_new();
        const char *name = filename;
        int ret;
        if (!o)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        /* "file:x" creates x. */
        if (ops->parse_filename && ops->parse_filename(filename, o, err) == 0 &&
            qimg_opts_get(o, "filename"))
            name = qimg_opts_get(o, "filename");
        ret = ops->create(name, opts, err);
        qimg_opts_free(o);
        return ret;
    }
    if (ops->create_by_open)
        return create_by_open(ops, filename, opts, err);
    return qimg_error_set(err, -ENOTSUP, "Protocol driver '%s' does not "
                          "support image creation", ops->name);
}

int qimg_storage_create_name(const char *filename,
                             const struct qimg_opts *opts,
                             struct qimg_error *err)
{
    const struct qimg_storage_ops *ops =
        qimg_storage_for_name(filename, true, err);
    if (!ops)
        return -EINVAL;
    return qimg_storage_create(ops, filename, opts, err);
}
