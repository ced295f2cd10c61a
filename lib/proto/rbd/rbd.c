/*
 * rbd.c - the "rbd" storage: Ceph RADOS block devices over librbd and
 * librados, with QEMU 7.2's legacy names
 * (rbd:pool[/namespace]/image[@snap][:key=value...], '\' escaping the
 * separators, id= and conf= special, every other pair handed to
 * librados as a configuration setting), its options (pool, namespace,
 * image, snapshot, conf, user) and its messages.  An open librbd image
 * is safe to use from several threads at once (librbd serialises
 * internally), so the copy engine's workers call it without a lock
 * (but for growing the image: resize_lock).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "core/json.h"
#include "core/util.h"
#include "proto/net.h"

/* The longest rbd: name we parse (QEMU has none; ours bounds the copy). */
#define RBD_MAX_NAME 8192
/* Object sizes rbd_create accepts: orders 12 (4 KiB) to 25 (32 MiB). */
#define RBD_MIN_ORDER 12
#define RBD_MAX_ORDER 25
/* Key/value pairs of a legacy name handed to librados (bounds the list). */
#define RBD_MAX_PAIRS 64

struct rbd_state {
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    /* Two workers growing the image at once must not shrink it back. */
    pthread_mutex_t resize_lock;
    bool has_cluster, has_io, has_image;
};

static const char *const rbd_runtime_opts[] = {
    "pool", "namespace", "image", "conf", "snapshot", "user", "server.",
    "auth-client-required", "key-secret", "password-secret", "encrypt.",
    "=keyvalue-pairs", NULL,
};
static const char *const rbd_strong_opts[] = {
    "pool", "namespace", "image", "conf", "snapshot", "user", "server.",
    "password-secret", NULL,
};
static const struct qimg_opt_desc rbd_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "RBD object size", NULL},
    {"password-secret", QIMG_OPT_STRING, "ID of secret providing the "
     "password", NULL},
    {"encrypt.format", QIMG_OPT_STRING, "Encrypt the image, format choices: "
     "'luks', 'luks2'", NULL},
    {"encrypt.cipher-alg", QIMG_OPT_STRING, "Name of encryption cipher "
     "algorithm (allowed values: aes-128, aes-256)", NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING, "ID of secret providing LUKS "
     "passphrase", NULL},
};

/* ---- names --------------------------------------------------------------- */

/* The first delim in s not escaped by '\', or NULL. */
static char *find_unescaped(char *s, char delim)
{
    for (; *s; s++) {
        if (*s == delim)
            return s;
        if (*s == '\\' && s[1])
            s++;
    }
    return NULL;
}

/* Cut s at its first unescaped delim: *rest is what follows, or NULL. */
static char *cut(char *s, char delim, char **rest)
{
    char *end = find_unescaped(s, delim);
    *rest = NULL;
    if (end) {
        *end = '\0';
        *rest = end + 1;
    }
    return s;
}

/* Drop the escaping '\' of each escaped character, in place. */
static char *unescape(char *s)
{
    char *out = s;
    for (char *p = s; *p; p++) {
        if (*p == '\\' && p[1])
            p++;
        *out++ = *p;
    }
    *out = '\0';
    return s;
}

/* Append "key","value" to the JSON list text of the librados pairs. */
static int add_pair(json_t *pairs, const char *key, const char *value)
{
    if (json_array_size(pairs) >= 2 * RBD_MAX_PAIRS)
        return -E2BIG;
    if (json_array_append_new(pairs, json_string(key)) < 0 ||
        json_array_append_new(pairs, json_string(value)) < 0)
        return -ENOMEM;
    return 0;
}

static int parse_pairs(char *p, struct qimg_opts *o, struct qimg_error *err)
{
    json_t *pairs = json_array();
    int ret = 0;

    if (!pairs)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (p && ret == 0) {
        char *name = cut(p, '=', &p), *value;
        if (!p) {
            ret = qimg_error_set(err, -EINVAL, "conf option %s has no value",
                                 name);
            break;
        }
        unescape(name);
        value = unescape(cut(p, ':', &p));
        if (!strcmp(name, "conf"))
            ret = qimg_opts_set(o, "conf", value);
        else if (!strcmp(name, "id"))
            ret = qimg_opts_set(o, "user", value);
        else
            ret = add_pair(pairs, name, value);
        if (ret < 0)
            qimg_error_set(err, ret, ret == -E2BIG ? "Too many rbd options"
                                                   : "Out of memory");
    }
    if (ret == 0 && json_array_size(pairs)) {
        char *text = json_dumps(pairs, JSON_COMPACT);
        ret = text ? qimg_opts_set(o, "=keyvalue-pairs", text) : -ENOMEM;
        free(text);
        if (ret < 0)
            qimg_error_set(err, ret, "Out of memory");
    }
    json_decref(pairs);
    return ret;
}

/* QEMU's qemu_rbd_parse_filename. */
static int rbd_parse_filename(const char *filename, struct qimg_opts *o,
                              struct qimg_error *err)
{
    char *buf, *p, *image;
    int ret = 0;

    if (strncmp(filename, "rbd:", 4))
        return qimg_error_set(err, -EINVAL, "File name must start with "
                              "'rbd:'");
    if (strlen(filename) > RBD_MAX_NAME)
        return qimg_error_set(err, -ENAMETOOLONG, "File name too long");
    buf = strdup(filename + 4);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    char *pool = cut(buf, '/', &p);
    if (!p) {
        ret = qimg_error_set(err, -EINVAL, "Pool name is required");
        goto out;
    }
    if (qimg_opts_set(o, "pool", unescape(pool)) < 0)
        goto oom;
    if (find_unescaped(p, '@')) {
        image = cut(p, '@', &p);
        if (qimg_opts_set(o, "snapshot", unescape(cut(p, ':', &p))) < 0)
            goto oom;
    } else {
        image = cut(p, ':', &p);
    }
    if (find_unescaped(image, '/')) {
        char *ns = cut(image, '/', &image);
        if (qimg_opts_set(o, "namespace", unescape(ns)) < 0)
            goto oom;
    } else if (qimg_opts_set(o, "namespace", "") < 0) {
        goto oom;
    }
    if (qimg_opts_set(o, "image", unescape(image)) < 0)
        goto oom;
    if (p)
        ret = parse_pairs(p, o, err);
    goto out;
oom:
    ret = qimg_error_set(err, -ENOMEM, "Out of memory");
out:
    free(buf);
    return ret;
}

/* ---- connecting -------------------------------------------------------------- */

static struct rbd_state *state_new(void)
{
    struct rbd_state *s = calloc(1, sizeof(*s));
    if (s)
        pthread_mutex_init(&s->resize_lock, NULL);
    return s;
}

static void state_free(struct rbd_state *s)
{
    if (!s)
        return;
    if (s->has_image)
        rbd_close(s->image);
    if (s->has_io)
        rados_ioctx_destroy(s->io);
    if (s->has_cluster)
        rados_shutdown(s->cluster);
    pthread_mutex_destroy(&s->resize_lock);
    free(s);
}

/* Hand the legacy name's key=value pairs to librados. */
static int set_pairs(struct rbd_state *s, const char *text,
                     struct qimg_error *err)
{
    json_t *pairs;
    int ret = 0;

    if (!text)
        return 0;
    pairs = json_loads(text, 0, NULL);
    if (!json_is_array(pairs)) {
        json_decref(pairs);
        return qimg_error_set(err, -EINVAL, "Invalid keyvalue-pairs");
    }
    for (size_t i = 0; i + 1 < json_array_size(pairs); i += 2) {
        const char *k = json_string_value(json_array_get(pairs, i));
        const char *v = json_string_value(json_array_get(pairs, i + 1));
        if (!k || !v) {
            ret = qimg_error_set(err, -EINVAL, "Invalid keyvalue-pairs");
            break;
        }
        if (!strcmp(k, "keyvaluepairs")) {   /* not a setting: QEMU's check */
            ret = qimg_error_set(err, -EINVAL, "'%s' is not a known rbd "
                                 "option", k);
            break;
        }
        if ((ret = rados_conf_set(s->cluster, k, v)) < 0) {
            qimg_error_set(err, ret, "invalid conf option %s: %s", k,
                           strerror(-ret));
            break;
        }
    }
    json_decref(pairs);
    return ret;
}

/*
 * librados waits forever for an OSD or mon that went away (its default
 * timeouts are 0): unless the configuration sets them, give up after
 * RBD_OP_TIMEOUT seconds so a stopped cluster ends a copy with an error
 * instead of a hang (QEMU 7.2 waits; documented in docs/LIMITS.md).
 */
#define RBD_OP_TIMEOUT "30"

static void default_timeouts(rados_t cluster)
{
    static const char *const keys[] = {"rados_osd_op_timeout",
                                       "rados_mon_op_timeout"};
    char v[32];

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(keys); i++)
        if (rados_conf_get(cluster, keys[i], v, sizeof(v)) == 0 &&
            strtod(v, NULL) == 0)
            rados_conf_set(cluster, keys[i], RBD_OP_TIMEOUT);
}

/* What 7.2 refuses or we do not support yet, with 7.2's words. */
static int check_unsupported(const struct qimg_opts *o, struct qimg_error *err)
{
    if (net_opts_have_prefix(o, "encrypt."))
        return qimg_error_set(err, -ENOTSUP, "RBD image encryption is not "
                              "supported by this qemu-img");
    if (net_opts_have_prefix(o, "server."))
        return qimg_error_set(err, -ENOTSUP, "Option server.* is not "
                              "supported by this qemu-img (give mon_host= "
                              "in the name or a conf file)");
    if (qimg_opts_get(o, "key-secret") || qimg_opts_get(o, "password-secret"))
        return qimg_error_set(err, -ENOTSUP, "cephx secrets are not "
                              "supported by this qemu-img (use a keyring)");
    return 0;
}

/* Connect to the cluster and open the pool (QEMU's qemu_rbd_connect). */
static int connect_rbd(struct rbd_state *s, const struct qimg_opts *o,
                       bool cache, struct qimg_error *err)
{
    const char *pool = qimg_opts_get(o, "pool");
    const char *conf = qimg_opts_get(o, "conf");
    const char *ns = qimg_opts_get(o, "namespace");
    int r;

    if ((r = check_unsupported(o, err)) < 0)
        return r;
    if (!pool)
        return qimg_error_set(err, -EINVAL, "Parameter 'pool' is missing");
    if ((r = rados_create(&s->cluster, qimg_opts_get(o, "user"))) < 0)
        return qimg_error_set(err, r, "error initializing: %s",
                              strerror(-r));
    s->has_cluster = true;
    /* The default places when there is no conf=, failure ignored. */
    r = rados_conf_read_file(s->cluster, conf);
    if (conf && r < 0)
        return qimg_error_set(err, r, "error reading conf file %s: %s",
                              conf, strerror(-r));
    if ((r = set_pairs(s, qimg_opts_get(o, "=keyvalue-pairs"), err)) < 0)
        return r;
    rados_conf_set(s->cluster, "rbd_cache", cache ? "true" : "false");
    default_timeouts(s->cluster);
    if ((r = rados_connect(s->cluster)) < 0)
        return qimg_error_set(err, r, "error connecting: %s", strerror(-r));
    if ((r = rados_ioctx_create(s->cluster, pool, &s->io)) < 0)
        return qimg_error_set(err, r, "error opening pool %s: %s", pool,
                              strerror(-r));
    s->has_io = true;
    if (ns && *ns) {
        bool exists = false;
        if ((r = rbd_namespace_exists(s->io, ns, &exists)) < 0)
            return qimg_error_set(err, r, "error checking namespace: %s",
                                  strerror(-r));
        if (!exists)
            return qimg_error_set(err, -ENOENT, "namespace '%s' does not "
                                  "exist", ns);
    }
    rados_ioctx_set_namespace(s->io, ns);
    return 0;
}

static int rbd_open_storage(struct qimg_storage *st,
                            const struct qimg_opts *opts, unsigned flags,
                            enum qimg_cache cache, struct qimg_error *err)
{
    struct rbd_state *s = state_new();
    const char *image = qimg_opts_get(opts, "image");
    const char *snap = qimg_opts_get(opts, "snapshot");
    int r;

    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    r = connect_rbd(s, opts, cache == QIMG_CACHE_WRITEBACK ||
                             cache == QIMG_CACHE_UNSAFE, err);
    if (r == 0 && !image)
        r = qimg_error_set(err, -EINVAL, "Parameter 'image' is missing");
    if (r == 0) {
        /* A snapshot is opened read-only ... */
        r = (flags & QIMG_OPEN_RDWR) && !snap
                ? rbd_open(s->io, image, &s->image, NULL)
                : rbd_open_read_only(s->io, image, &s->image, snap);
        if (r < 0)
            qimg_error_set(err, r, "error reading header from %s: %s", image,
                           strerror(-r));
        else
            s->has_image = true;
    }
    /* ... and asking to write one fails once it is open, as in QEMU */
    if (r == 0 && snap && (flags & QIMG_OPEN_RDWR))
        r = qimg_error_set(err, -EACCES, "rbd snapshots are read-only");
    if (r < 0) {
        state_free(s);
        return r;
    }
    st->priv = s;
    return 0;
}

static void rbd_close_storage(struct qimg_storage *st)
{
    state_free(st->priv);
    st->priv = NULL;
}

/* ---- I/O --------------------------------------------------------------------- */

static int io_error(int r, struct qimg_error *err)
{
    return qimg_error_set(err, r, "%s", strerror(-r));
}

static int64_t rbd_size_of(struct qimg_storage *st)
{
    struct rbd_state *s = st->priv;
    uint64_t size;
    int r = rbd_get_size(s->image, &size);
    return r < 0 ? r : (int64_t)size;
}

/*
 * Reads and writes go to librbd as asynchronous requests of at most
 * RBD_AIO_PIECE bytes with up to RBD_AIO_DEPTH of them in flight per call,
 * so that one 2 MiB chunk of the copy engine keeps several OSD operations
 * busy (the engine's workers then multiply that).  Each call waits for
 * all of its requests before returning: the caller's buffer is free again
 * and errors belong to the call that caused them.
 */
#define RBD_AIO_PIECE ((size_t)512 << 10)
#define RBD_AIO_DEPTH 8

/* One window of requests in flight: a ring of completions. */
struct aio_window {
    rbd_completion_t c[RBD_AIO_DEPTH];
    size_t len[RBD_AIO_DEPTH];
    bool write;                 /* a write's result is 0, not a length */
    unsigned head, count;
    int ret;                    /* first error, or 0 */
};

/* Wait for the oldest request; record its error or short read. */
static void aio_reap(struct aio_window *w)
{
    unsigned i = w->head;
    rbd_aio_wait_for_complete(w->c[i]);
    ssize_t r = rbd_aio_get_return_value(w->c[i]);
    rbd_aio_release(w->c[i]);
    if (w->ret == 0 && r < 0)
        w->ret = (int)r;
    else if (w->ret == 0 && !w->write && (size_t)r != w->len[i])
        w->ret = -EIO;
    w->head = (w->head + 1) % RBD_AIO_DEPTH;
    w->count--;
}

/* len bytes at off between the image and buf, in pieces in flight. */
static int aio_transfer(struct rbd_state *s, bool write, uint64_t off,
                        size_t len, uint8_t *buf)
{
    struct aio_window w = {.write = write};

    while (len && w.ret == 0) {
        unsigned i = (w.head + w.count) % RBD_AIO_DEPTH;
        size_t n = QIMG_MIN(len, RBD_AIO_PIECE);
        int r;

        if (w.count == RBD_AIO_DEPTH) {
            aio_reap(&w);
            continue;
        }
        r = rbd_aio_create_completion(NULL, NULL, &w.c[i]);
        if (r == 0) {
            r = write ? rbd_aio_write2(s->image, off, n, (char *)buf, w.c[i], 0)
                      : rbd_aio_read2(s->image, off, n, (char *)buf, w.c[i], 0);
            if (r < 0)
                rbd_aio_release(w.c[i]);
        }
        if (r < 0) {
            w.ret = r;
            break;
        }
        w.len[i] = n;
        w.count++;
        off += n;
        buf += n;
        len -= n;
    }
    while (w.count)              /* the buffer must outlive every request */
        aio_reap(&w);
    return w.ret;
}

static int rbd_pread_storage(struct qimg_storage *st, uint64_t off,
                             size_t len, void *buf, struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    int64_t size = rbd_size_of(st);
    size_t in = len;
    int r;

    if (size < 0)
        return io_error((int)size, err);
    /* Past the end reads as zeroes (librbd refuses it). */
    if (off >= (uint64_t)size)
        in = 0;
    else if (len > (uint64_t)size - off)
        in = (size_t)((uint64_t)size - off);
    memset((uint8_t *)buf + in, 0, len - in);
    r = aio_transfer(s, false, off, in, buf);
    return r < 0 ? io_error(r, err) : 0;
}

static int rbd_pwrite_storage(struct qimg_storage *st, uint64_t off,
                              size_t len, const void *buf,
                              struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    int64_t size = rbd_size_of(st);
    int r;

    if (size < 0)
        return io_error((int)size, err);
    /* QEMU grows the image for writes past its end. */
    if (off + len > (uint64_t)size) {
        pthread_mutex_lock(&s->resize_lock);
        size = rbd_size_of(st);
        r = size < 0 ? (int)size
            : off + len > (uint64_t)size ? rbd_resize(s->image, off + len)
                                         : 0;
        pthread_mutex_unlock(&s->resize_lock);
        if (r < 0)
            return io_error(r, err);
    }
    /* librbd only reads the buffer of a write. */
    r = aio_transfer(s, true, off, len, (uint8_t *)(uintptr_t)buf);
    return r < 0 ? io_error(r, err) : 0;
}

static int rbd_flush_storage(struct qimg_storage *st, struct qimg_error *err)
{
    int r = rbd_flush(((struct rbd_state *)st->priv)->image);
    return r < 0 ? io_error(r, err) : 0;
}

static int rbd_discard_storage(struct qimg_storage *st, uint64_t off,
                               uint64_t len, struct qimg_error *err)
{
    int r = rbd_discard(((struct rbd_state *)st->priv)->image, off, len);
    return r < 0 ? io_error(r, err) : 0;
}

static int rbd_zero_storage(struct qimg_storage *st, uint64_t off,
                            uint64_t len, unsigned flags,
                            struct qimg_error *err)
{
    (void)flags;
    struct rbd_state *s = st->priv;
    while (len) {
        size_t n = (size_t)QIMG_MIN(len, (uint64_t)1 << 30);
        ssize_t r = rbd_write_zeroes(s->image, off, n, 0, 0);
        if (r < 0)
            return io_error((int)r, err);
        off += n;
        len -= n;
    }
    return 0;
}

static int rbd_truncate_storage(struct qimg_storage *st, uint64_t size,
                                enum qimg_prealloc prealloc,
                                struct qimg_error *err)
{
    if (prealloc != QIMG_PREALLOC_OFF)
        return net_prealloc_refused(prealloc, err);
    int r = rbd_resize(((struct rbd_state *)st->priv)->image, size);
    return r < 0 ? qimg_error_set(err, r, "failed to resize rbd image") : 0;
}

/* The object size (QEMU's rbd getinfo: info's cluster_size). */
static uint32_t rbd_object_size(struct qimg_storage *st)
{
    rbd_image_info_t info;
    if (rbd_stat(((struct rbd_state *)st->priv)->image, &info,
                 sizeof(info)) < 0 || info.obj_size > UINT32_MAX)
        return 0;
    return (uint32_t)info.obj_size;
}

/* The first allocated extent at or after the asked offset. */
struct diff_probe {
    uint64_t off;
    uint64_t start, len;
    bool found;
};
/* A private code that stops rbd_diff_iterate2 at the first extent. */
#define RBD_DIFF_STOP (-9000)

static int diff_cb(uint64_t off, size_t len, int exists, void *opaque)
{
    struct diff_probe *p = opaque;
    if (!exists)
        return 0;
    p->start = off;
    p->len = len;
    p->found = true;
    return RBD_DIFF_STOP;
}

/* Data or hole at off through rbd_diff_iterate2 (whole objects, as QEMU,
 * which is fast: the object map when the image has one). */
static int rbd_block_status(struct qimg_storage *st, uint64_t off,
                            uint64_t len, struct qimg_extent *ext,
                            struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    struct diff_probe p = {.off = off};
    int r;

    memset(ext, 0, sizeof(*ext));
    ext->host_offset = off;
    ext->host_file = st->filename ? st->filename : st->name;
    r = rbd_diff_iterate2(s->image, NULL, off, len, true, true, diff_cb, &p);
    if (r < 0 && r != RBD_DIFF_STOP)
        return net_block_status_data(st, off, len, ext, err);
    if (!p.found || p.start >= off + len) {
        ext->flags = QIMG_BS_ZERO;
        ext->length = len;
    } else if (p.start > off) {
        ext->flags = QIMG_BS_ZERO;
        ext->length = p.start - off;
    } else {
        ext->flags = QIMG_BS_DATA;
        ext->length = QIMG_MIN(len, p.start + p.len - off);
    }
    return 0;
}

/* ---- snapshots ------------------------------------------------------------ */

/* Snapshots of one image we list (rbd has no limit of its own; each costs
 * a struct qimg_snapshot, ~1.2 KiB, so this bounds the list at ~20 MiB). */
#define RBD_MAX_SNAPSHOTS 16384
/* Times rbd_snap_list may ask for a bigger array (snapshots being made
 * while we list) before we give up. */
#define RBD_SNAP_LIST_TRIES 8
/* QEMU keeps an rbd snapshot's name as both its ID (127 bytes at most)
 * and its name (255 bytes at most): longer ones show cut there. */
#define RBD_SNAP_ID_MAX 127
#define RBD_SNAP_NAME_MAX 255
_Static_assert(RBD_SNAP_ID_MAX < sizeof(((struct qimg_snapshot *)0)->id) &&
               RBD_SNAP_NAME_MAX < sizeof(((struct qimg_snapshot *)0)->name),
               "snapshot names fit struct qimg_snapshot");

/* Copy at most max bytes of src into dst (which holds max + 1). */
static void copy_cut(char *dst, const char *src, size_t max)
{
    size_t n = strnlen(src, max);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* rbd_snap_list into a malloc'ed array of *count entries. */
static int list_rbd_snaps(rbd_image_t image, rbd_snap_info_t **out,
                          int *count)
{
    int max = 64;

    for (int tries = 0; tries < RBD_SNAP_LIST_TRIES; tries++) {
        rbd_snap_info_t *snaps = calloc((size_t)max, sizeof(*snaps));
        if (!snaps)
            return -ENOMEM;
        int r = rbd_snap_list(image, snaps, &max);
        if (r >= 0) {
            *out = snaps;
            *count = r;
            return 0;
        }
        free(snaps);
        if (r != -ERANGE)
            return r;
        /* librbd wants one entry more than there are snapshots (the
         * end marker) */
        if (max <= 0 || max > RBD_MAX_SNAPSHOTS + 1)
            return -EFBIG;
    }
    return -EAGAIN;
}

/* The image's snapshots as QEMU shows them: the name as ID and name, the
 * image size at the snapshot as VM state size, zero dates and clocks. */
static int rbd_snap_list_storage(struct qimg_storage *st,
                                 struct qimg_snapshot **list, size_t *n,
                                 struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    rbd_snap_info_t *snaps;
    int count;
    int r = list_rbd_snaps(s->image, &snaps, &count);

    *list = NULL;
    *n = 0;
    if (r == -EFBIG)
        return qimg_error_set(err, r, "rbd image has more than %d snapshots",
                              RBD_MAX_SNAPSHOTS);
    if (r < 0)
        return qimg_error_set(err, r, "error listing rbd snapshots: %s",
                              strerror(-r));
    *list = calloc(count ? (size_t)count : 1, sizeof(**list));
    if (!*list) {
        r = qimg_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < count; i++) {
        struct qimg_snapshot *sn = &(*list)[i];
        copy_cut(sn->id, snaps[i].name, RBD_SNAP_ID_MAX);
        copy_cut(sn->name, snaps[i].name, RBD_SNAP_NAME_MAX);
        sn->vm_state_size = snaps[i].size;
        sn->has_icount = true;      /* zero, as QEMU shows it */
    }
    *n = (size_t)count;
out:
    rbd_snap_list_end(snaps);
    free(snaps);
    return r;
}

static int rbd_snap_create_storage(struct qimg_storage *st, const char *name,
                                   struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    int r;

    /* The name is the snapshot's ID too, which must fit QEMU's. */
    if (!name[0])
        return qimg_error_set(err, -EINVAL, "rbd snapshots need a name");
    if (strlen(name) > RBD_SNAP_ID_MAX)
        return qimg_error_set(err, -ERANGE, "rbd snapshot name too long");
    r = rbd_snap_create(s->image, name);
    if (r < 0) {
        /* QEMU reports it here and the command's message after it. */
        qimg_message(QIMG_MSG_ERROR, "failed to create snap: %s\n",
                     strerror(-r));
        return qimg_error_set(err, r, "failed to create snap: %s",
                              strerror(-r));
    }
    return 0;
}

static int rbd_snap_delete_storage(struct qimg_storage *st, const char *id,
                                   const char *name, struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    int r;

    /* IDs are names cut short: a long name's ID is not its name. */
    if (id && strcmp(id, name))
        return qimg_error_set(err, -EINVAL, "rbd do not support snapshot id, "
                              "it should be NULL or equal to snapshot name");
    r = rbd_snap_remove(s->image, name);
    if (r < 0)
        return qimg_error_set(err, r, "Failed to remove the snapshot: %s",
                              strerror(-r));
    return 0;
}

static int rbd_snap_goto_storage(struct qimg_storage *st, const char *name,
                                 struct qimg_error *err)
{
    struct rbd_state *s = st->priv;
    int r = rbd_snap_rollback(s->image, name);
    return r < 0 ? qimg_error_set(err, r, "%s", strerror(-r)) : 0;
}

/* QEMU's rbd create: the image with the size and the object size. */
static int rbd_create_storage(const char *filename,
                              const struct qimg_opts *opts,
                              struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    struct rbd_state *s = state_new();
    uint64_t size = 0, objsize = 0;
    int order = 0, ret = -ENOMEM;

    if (!o || !s) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    if ((ret = qimg_opts_get_size(opts, "size", 0, &size, err)) < 0 ||
        (ret = qimg_opts_get_size(opts, "cluster_size", 0, &objsize,
                                  err)) < 0)
        goto out;
    if (objsize) {
        if (objsize & (objsize - 1)) {
            ret = qimg_error_set(err, -EINVAL, "obj size needs to be power "
                                 "of 2");
            goto out;
        }
        if (objsize < 4096) {
            ret = qimg_error_set(err, -EINVAL, "obj size too small");
            goto out;
        }
        order = __builtin_ctzll(objsize);
        if (order > RBD_MAX_ORDER)
            order = RBD_MAX_ORDER + 1;  /* librbd refuses it, as in QEMU */
    }
    (void)RBD_MIN_ORDER;
    if ((ret = rbd_parse_filename(filename, o, err)) < 0)
        goto out;
    if (net_opts_have_prefix(opts, "encrypt.")) {
        ret = qimg_error_set(err, -ENOTSUP, "RBD image encryption is not "
                             "supported by this qemu-img");
        goto out;
    }
    if (!qimg_opts_get(o, "image")[0]) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'image' is missing");
        goto out;
    }
    if ((ret = connect_rbd(s, o, false, err)) < 0)
        goto out;
    ret = rbd_create(s->io, qimg_opts_get(o, "image"), size, &order);
    if (ret < 0)
        qimg_error_set(err, ret, "error rbd create: %s", strerror(-ret));
out:
    state_free(s);
    qimg_opts_free(o);
    return ret;
}

const struct qimg_storage_ops qimg_storage_rbd = {
    .name = "rbd",
    .protocol = "rbd",
    .create_opts = rbd_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(rbd_create_opts),
    .runtime_opts = rbd_runtime_opts,
    .strong_opts = rbd_strong_opts,
    .parse_filename = rbd_parse_filename,
    .open = rbd_open_storage,
    .close = rbd_close_storage,
    .pread = rbd_pread_storage,
    .pwrite = rbd_pwrite_storage,
    .flush = rbd_flush_storage,
    .get_size = rbd_size_of,
    .truncate = rbd_truncate_storage,
    .pwrite_zeroes = rbd_zero_storage,
    .discard = rbd_discard_storage,
    .block_status = rbd_block_status,
    .cluster_size = rbd_object_size,
    .create = rbd_create_storage,
    .snapshot_list = rbd_snap_list_storage,
    .snapshot_create = rbd_snap_create_storage,
    .snapshot_delete = rbd_snap_delete_storage,
    .snapshot_goto = rbd_snap_goto_storage,
};
