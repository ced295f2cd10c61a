/*
 * nbd.c - the "nbd" storage (protocols nbd, nbd+tcp and nbd+unix) over
 * libnbd: QEMU 7.2's names and options, its checks in its order with its
 * messages, and the operations (read, write, zero, trim, flush, block
 * status of base:allocation or an x-dirty-bitmap context).  The
 * connections are nbd-io.c's.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "proto/nbd/nbd.h"

#define NBD_DEFAULT_PORT "10809"

struct nbd_state {
    struct nbd_target target;
    struct nbd_export_info info;
    struct nbd_pool *pool;
    bool alloc_depth;       /* x-dirty-bitmap=qemu:allocation-depth */
    /* The extents of the last block status reply (see nbd_bs). */
    pthread_mutex_t cache_lock;
    atomic_uint_fast64_t gen;   /* bumped around every write */
    uint64_t cache_gen, cache_start;
    int cache_n;
    uint64_t cache_len[NBD_EXTENT_CACHE];
    uint32_t cache_flags[NBD_EXTENT_CACHE];
};

static const char *const nbd_runtime_opts[] = {
    "host", "port", "path", "export", "tls-creds", "tls-hostname",
    "x-dirty-bitmap", "reconnect-delay", "open-timeout", "server.", NULL,
};
static const char *const nbd_strong_opts[] = {
    "path", "host", "port", "export", "tls-creds", "tls-hostname", "server.",
    NULL,
};

/* ---- names ---------------------------------------------------------------- */

static bool conflict(const struct qimg_opts *opts, struct qimg_error *err)
{
    static const char *const keys[] = {"host", "port", "path", "export",
                                       "server.", NULL};
    const char *best = NULL;
    unsigned bb = 0;

    /* The first clashing key in QEMU's dictionary order. */
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = qimg_opts_key(opts, i);
        if (!qimg_key_listed(keys, key))
            continue;
        unsigned b = qimg_qdict_bucket(key);
        if (!best || b < bb) {
            best = key;
            bb = b;
        }
    }
    if (best)
        qimg_error_set(err, -EINVAL, "Option '%s' cannot be used with a file "
                       "name", best);
    return best != NULL;
}

static int set(struct qimg_opts *o, const char *k, const char *v,
               struct qimg_error *err)
{
    if (qimg_opts_set(o, k, v) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static int parse_uri(const char *filename, struct qimg_opts *o,
                     struct qimg_error *err)
{
    struct net_uri u;
    struct net_query q = {0};
    bool is_unix;
    const char *p;
    int ret = -EINVAL;

    if (!net_uri_parse(filename, &u))
        return qimg_error_set(err, -EINVAL, "No valid URL specified");
    if (u.scheme && (!strcmp(u.scheme, "nbd") || !strcmp(u.scheme, "nbd+tcp")))
        is_unix = false;
    else if (u.scheme && !strcmp(u.scheme, "nbd+unix"))
        is_unix = true;
    else
        goto out;
    p = u.path ? u.path : "";
    if (*p == '/')
        p++;
    if (*p && (ret = set(o, "export", p, err)) < 0)
        goto out;
    ret = -EINVAL;
    if (!net_query_parse(u.query, &q))
        goto out;
    if (q.n > 1 || (is_unix && !q.n) || (!is_unix && q.n))
        goto out;
    if (is_unix) {
        if (u.server || u.port || strcmp(q.p[0].name, "socket"))
            goto out;
        if ((ret = set(o, "server.type", "unix", err)) < 0 ||
            (ret = set(o, "server.path", q.p[0].value ? q.p[0].value : "",
                       err)) < 0)
            goto out;
    } else {
        char port[16], *host;
        if (!u.server)
            goto out;
        host = u.server[0] == '[' ? strndup(u.server + 1,
                                            strlen(u.server) - 2)
                                  : strdup(u.server);
        snprintf(port, sizeof(port), "%d", u.port ? u.port : 10809);
        ret = host ? set(o, "server.type", "inet", err) : -ENOMEM;
        if (ret == 0)
            ret = set(o, "server.host", host, err);
        if (ret == 0)
            ret = set(o, "server.port", port, err);
        free(host);
        if (ret < 0)
            goto out;
    }
    ret = 0;
out:
    net_query_free(&q);
    net_uri_free(&u);
    if (ret == -EINVAL)
        return qimg_error_set(err, -EINVAL, "No valid URL specified");
    return ret;
}

/* QEMU's inet_parse of "host:port[,opts]" (the options are not used). */
static int parse_inet(const char *s, struct qimg_opts *o,
                      struct qimg_error *err)
{
    char host[65] = "", port[33];

    if (s[0] == ':') {
        if (sscanf(s, ":%32[^,]", port) != 1)
            return qimg_error_set(err, -EINVAL, "error parsing port in "
                                  "address '%s'", s);
    } else if (s[0] == '[') {
        if (sscanf(s, "[%64[^]]]:%32[^,]", host, port) != 2)
            return qimg_error_set(err, -EINVAL, "error parsing IPv6 address "
                                  "'%s'", s);
    } else if (sscanf(s, "%64[^:]:%32[^,]", host, port) != 2) {
        return qimg_error_set(err, -EINVAL, "error parsing address '%s'", s);
    }
    int ret = set(o, "server.type", "inet", err);
    if (ret == 0)
        ret = set(o, "server.host", host, err);
    if (ret == 0)
        ret = set(o, "server.port", port, err);
    return ret;
}

static int nbd_parse_filename(const char *filename, struct qimg_opts *o,
                              struct qimg_error *err)
{
    static const char en[] = ":exportname=";
    char *file, *ename;
    const char *spec;
    int ret = 0;

    if (conflict(o, err))
        return -EINVAL;
    if (strstr(filename, "://"))
        return parse_uri(filename, o, err);
    file = strdup(filename);
    if (!file)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ename = strstr(file, en);
    if (ename) {
        /* "...:exportname=" with nothing after it sets nothing at all,
         * as in QEMU. */
        if (!ename[strlen(en)])
            goto out;
        *ename = '\0';
        ename += strlen(en);
        if ((ret = set(o, "export", ename, err)) < 0)
            goto out;
    }
    if (strncmp(file, "nbd:", 4)) {
        ret = qimg_error_set(err, -EINVAL, "File name string for NBD must "
                             "start with 'nbd:'");
        goto out;
    }
    spec = file + 4;
    if (!*spec)
        goto out;
    if (!strncmp(spec, "unix:", 5)) {
        ret = set(o, "server.type", "unix", err);
        if (ret == 0)
            ret = set(o, "server.path", spec + 5, err);
    } else {
        ret = parse_inet(spec, o, err);
    }
out:
    free(file);
    return ret;
}

/* QEMU's exact_filename of an NBD node. */
static bool nbd_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    struct nbd_state *s = st->priv;
    const struct net_addr *a;
    const char *e;
    int n;

    if (!s)
        return false;
    a = &s->target.addr;
    e = s->target.has_export ? s->target.export_name : NULL;
    if (a->type == NET_ADDR_UNIX)
        n = e ? snprintf(buf, len, "nbd+unix:///%s?socket=%s", e, a->path)
              : snprintf(buf, len, "nbd+unix://?socket=%s", a->path);
    else if (a->type == NET_ADDR_INET && !a->has_ipv4 && !a->has_ipv6 &&
             !a->has_to)
        n = e ? snprintf(buf, len, "nbd://%s:%s/%s", a->host, a->port, e)
              : snprintf(buf, len, "nbd://%s:%s", a->host, a->port);
    else
        return false;
    return n >= 0 && (size_t)n < len;
}

/* ---- options ----------------------------------------------------------------- */

/* host/port/path: the address QEMU makes of them (into addr). */
static int legacy_address(const struct qimg_opts *opts, struct net_addr *addr,
                          bool *used, struct qimg_error *err)
{
    const char *path = qimg_opts_get(opts, "path");
    const char *host = qimg_opts_get(opts, "host");
    const char *port = qimg_opts_get(opts, "port");

    *used = path || host || port;
    if (!*used)
        return 0;
    if (net_opts_have_prefix(opts, "server."))
        return qimg_error_set(err, -EINVAL, "Cannot use 'server' and "
                              "path/host/port at the same time");
    if (path && host)
        return qimg_error_set(err, -EINVAL, "path and host may not be used "
                              "at the same time");
    memset(addr, 0, sizeof(*addr));
    if (path) {
        if (port)
            return qimg_error_set(err, -EINVAL, "port may not be used without "
                                  "host");
        addr->type = NET_ADDR_UNIX;
        snprintf(addr->path, sizeof(addr->path), "%s", path);
    } else if (host) {
        addr->type = NET_ADDR_INET;
        snprintf(addr->host, sizeof(addr->host), "%s", host);
        snprintf(addr->port, sizeof(addr->port), "%s",
                 port ? port : NBD_DEFAULT_PORT);
    } else {
        /* A port alone leaves the address to server.*, which is empty. */
        *used = false;
    }
    return 0;
}

static int read_options(struct nbd_state *s, const struct qimg_opts *opts,
                        struct qimg_error *err)
{
    unsigned long long num;
    const char *v;
    bool legacy;
    int ret;

    if ((ret = net_opt_number(opts, "reconnect-delay", 0, &num, err)) < 0 ||
        (ret = net_opt_number(opts, "open-timeout", 0, &num, err)) < 0)
        return ret;
    s->target.open_timeout = (unsigned)QIMG_MIN(num, NBD_MAX_OPEN_TIMEOUT);
    ret = legacy_address(opts, &s->target.addr, &legacy, err);
    if (ret < 0)
        return ret;
    if (!legacy) {
        if (!net_opts_have_prefix(opts, "server."))
            return qimg_error_set(err, -EINVAL, "NBD server address missing");
        ret = net_addr_from_opts(opts, "server.", &s->target.addr, err);
        if (ret < 0)
            return ret;
    }
    v = qimg_opts_get(opts, "export");
    if (v) {
        if (strlen(v) > NBD_MAX_STRING)
            return qimg_error_set(err, -EINVAL, "export name too long to send "
                                  "to server");
        strcpy(s->target.export_name, v);
        s->target.has_export = true;
    }
    v = qimg_opts_get(opts, "tls-creds");
    if (v)
        /* --object tls-creds-* is not supported: no such object exists. */
        return qimg_error_set(err, -EINVAL, "No TLS credentials with id '%s'",
                              v);
    v = qimg_opts_get(opts, "x-dirty-bitmap");
    if (v) {
        if (strlen(v) > NBD_MAX_STRING)
            return qimg_error_set(err, -EINVAL, "x-dirty-bitmap query too long "
                                  "to send to server");
        strcpy(s->target.context, v);
        s->alloc_depth = !strcmp(v, "qemu:allocation-depth");
    } else {
        strcpy(s->target.context, "base:allocation");
    }
    return 0;
}

/*
 * QEMU's json: name of an NBD node lists the server.* keys of one
 * dictionary bucket in the order they were given, where our name writer
 * puts the newest first (right for the other storages): give them to it
 * in reverse.
 */
static void reverse_server_keys(struct qimg_opts *o)
{
    size_t n = qimg_opts_count(o);
    char **keys = calloc(n ? n : 1, sizeof(*keys));
    char **vals = calloc(n ? n : 1, sizeof(*vals));
    enum qimg_val_type *types = calloc(n ? n : 1, sizeof(*types));
    size_t m = 0;

    if (keys && vals && types) {
        for (size_t i = 0; i < n; i++) {
            if (strncmp(qimg_opts_key(o, i), "server.", 7))
                continue;
            keys[m] = strdup(qimg_opts_key(o, i));
            vals[m] = strdup(qimg_opts_value(o, i));
            types[m] = qimg_opts_type(o, i);
            m++;
        }
        for (size_t i = 0; i < m; i++)
            if (keys[i])
                qimg_opts_del(o, keys[i]);
        for (size_t i = m; i-- > 0;)
            if (keys[i] && vals[i])
                qimg_opts_set_typed(o, keys[i], vals[i], types[i]);
    }
    for (size_t i = 0; i < m; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
    free(types);
}

static int nbd_open(struct qimg_storage *st, const struct qimg_opts *opts,
                    unsigned flags, enum qimg_cache cache,
                    struct qimg_error *err)
{
    struct nbd_state *s = calloc(1, sizeof(*s));
    int ret;

    (void)cache;
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_init(&s->cache_lock, NULL);
    ret = read_options(s, opts, err);
    if (ret == 0)
        ret = nbd_pool_open(&s->pool, &s->target, &s->info, err);
    if (ret == 0 && qimg_opts_get(opts, "x-dirty-bitmap") &&
        !s->info.has_context)
        ret = qimg_error_set(err, -EINVAL, "Could not open image: %s",
                             strerror(EINVAL));
    if (ret == 0 && s->info.read_only && (flags & QIMG_OPEN_RDWR))
        ret = qimg_error_set(err, -EACCES, "Could not open image: %s",
                             strerror(EACCES));
    if (ret < 0) {
        nbd_pool_close(s->pool);
        pthread_mutex_destroy(&s->cache_lock);
        free(s);
        return ret;
    }
    st->priv = s;
    if (st->options == opts)
        reverse_server_keys(st->options);
    net_name_as_filename(st);
    if (s->info.can_zero)
        st->caps |= QIMG_STORAGE_CAN_ZERO;
    if (s->info.can_trim)
        st->caps |= QIMG_STORAGE_CAN_DISCARD;
    st->caps |= QIMG_STORAGE_REMOTE;
    return 0;
}

static void nbd_close(struct qimg_storage *st)
{
    struct nbd_state *s = st->priv;
    if (!s)
        return;
    nbd_pool_close(s->pool);
    pthread_mutex_destroy(&s->cache_lock);
    free(s);
    st->priv = NULL;
}

/* ---- I/O ---------------------------------------------------------------------- */

/* Reads past the end return zeroes (storage contract); the server sees
 * only the part inside the export. */
static int nbd_pread(struct qimg_storage *st, uint64_t off, size_t len,
                     void *buf, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    size_t in = off >= s->info.size ? 0
                : (size_t)QIMG_MIN((uint64_t)len, s->info.size - off);

    if (in) {
        int ret = nbd_pool_pread(s->pool, off, in, buf, err);
        if (ret < 0)
            return ret;
    }
    memset((uint8_t *)buf + in, 0, len - in);
    return 0;
}

static void written(struct nbd_state *s)
{
    atomic_fetch_add(&s->gen, 1);
}

/* A request past the export's end fails with the errno NBD servers
 * answer it with (qemu-nbd, nbdkit: ENOSPC for writes and zeroes, EINVAL
 * for trims), which QEMU reports as it sends the request; libnbd's
 * strict bounds would refuse it with another errno before sending. */
static int past_end(struct nbd_state *s, uint64_t off, uint64_t len,
                    int errnum, struct qimg_error *err)
{
    if (off > s->info.size || len > s->info.size - off)
        return qimg_error_set(err, -errnum, "%s", strerror(errnum));
    return 0;
}

static int nbd_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                      const void *buf, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    int ret = past_end(s, off, len, ENOSPC, err);
    if (ret < 0)
        return ret;
    written(s);
    ret = nbd_pool_pwrite(s->pool, off, len, buf, err);
    written(s);
    return ret;
}

static int nbd_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                      unsigned flags, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    int ret;

    if (!s->info.can_zero)
        return -ENOTSUP;
    if ((flags & QIMG_ZERO_NO_FALLBACK) && !s->info.can_fast_zero)
        return -ENOTSUP;
    if ((ret = past_end(s, off, len, ENOSPC, err)) < 0)
        return ret;
    written(s);
    ret = nbd_pool_zero(s->pool, off, len, flags & QIMG_ZERO_MAY_UNMAP, err);
    written(s);
    return ret;
}

static int nbd_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                       struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    int ret;

    if (!s->info.can_trim)
        return 0;
    if ((ret = past_end(s, off, len, EINVAL, err)) < 0)
        return ret;
    written(s);
    ret = nbd_pool_trim(s->pool, off, len, err);
    written(s);
    return ret;
}

static int nbd_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    return s->info.can_flush ? nbd_pool_flush(s->pool, err) : 0;
}

static int64_t nbd_get_size(struct qimg_storage *st)
{
    return (int64_t)((struct nbd_state *)st->priv)->info.size;
}

/* NBD cannot resize: a same size (or, not exact, a smaller one) is
 * accepted and changes nothing, as in QEMU. */
static int nbd_truncate(struct qimg_storage *st, uint64_t size,
                        enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    (void)prealloc;
    if (size > s->info.size)
        return qimg_error_set(err, -EINVAL, "Cannot grow NBD nodes");
    return 0;
}

static int nbd_truncate_exact(struct qimg_storage *st, uint64_t size,
                              enum qimg_prealloc prealloc,
                              struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    (void)prealloc;
    if (size != s->info.size)
        return qimg_error_set(err, -ENOTSUP, "Cannot resize NBD nodes");
    return 0;
}

/* One extent as QEMU's client reads it: aligned to the minimum block
 * size, depths past 2 folded into 2. */
static void to_extent(const struct nbd_state *s, uint64_t len, uint32_t fl,
                      uint64_t want, struct qimg_extent *ext)
{
    uint32_t min = s->info.min_block;

    if (min && len % min) {
        if (len > min) {
            len -= len % min;
        } else {
            len = min;
            fl = 0;
        }
    }
    if (len > want)
        len = want;
    if (s->alloc_depth && fl > 2)
        fl = 2;
    memset(ext, 0, sizeof(*ext));
    ext->length = len;
    ext->flags = (fl & 1 ? 0 : QIMG_BS_DATA) | (fl & 2 ? QIMG_BS_ZERO : 0);
}

/* An answer from the cached reply, when it covers off. */
static bool cached(struct nbd_state *s, uint64_t off, uint64_t len,
                   struct qimg_extent *ext)
{
    bool hit = false;

    pthread_mutex_lock(&s->cache_lock);
    if (s->cache_n && s->cache_gen == atomic_load(&s->gen) &&
        off >= s->cache_start) {
        uint64_t at = s->cache_start;
        for (int i = 0; i < s->cache_n; i++) {
            if (off < at + s->cache_len[i]) {
                to_extent(s, at + s->cache_len[i] - off, s->cache_flags[i],
                          len, ext);
                hit = true;
                break;
            }
            at += s->cache_len[i];
        }
    }
    pthread_mutex_unlock(&s->cache_lock);
    return hit;
}

/*
 * QEMU asks for one extent at a time (NBD_CMD_FLAG_REQ_ONE); we ask for
 * all the server will give and keep them, which answers the same: an
 * extent in a reply is the longest run of one status from its start.
 * The last one may have been cut by the server's reply limit, so it is
 * not kept.  A write anywhere during the request drops the reply.
 */
static int nbd_bs(struct qimg_storage *st, uint64_t off, uint64_t len,
                  struct qimg_extent *ext, struct qimg_error *err)
{
    struct nbd_state *s = st->priv;
    uint64_t lens[NBD_EXTENT_CACHE];
    uint32_t fls[NBD_EXTENT_CACHE];
    uint64_t gen;
    int n;

    if (!s->info.has_context || off >= s->info.size) {
        memset(ext, 0, sizeof(*ext));
        ext->length = len;
        ext->flags = off >= s->info.size ? QIMG_BS_ZERO : QIMG_BS_DATA;
        ext->host_offset = off;
        ext->host_file = st->filename ? st->filename : st->name;
        return 0;
    }
    len = QIMG_MIN(len, s->info.size - off);
    /* The data is where it is asked for, in the node named by its URI (a
     * URI, which the copy engine's local-file fast paths leave alone). */
    if (cached(s, off, len, ext))
        goto found;
    gen = atomic_load(&s->gen);
    n = nbd_pool_block_status(s->pool, off, len, lens, fls, NBD_EXTENT_CACHE,
                              err);
    if (n < 0)
        return n;
    if (lens[0] == 0)
        return qimg_error_set(err, -EIO, "Protocol error: server sent status "
                              "chunk with zero length");
    to_extent(s, lens[0], fls[0], len, ext);
    if (n > 1) {
        pthread_mutex_lock(&s->cache_lock);
        if (atomic_load(&s->gen) == gen) {
            s->cache_gen = gen;
            s->cache_start = off;
            s->cache_n = n - 1;
            for (int i = 0; i < n - 1; i++) {
                s->cache_len[i] = lens[i] ? lens[i] : 1;
                s->cache_flags[i] = fls[i];
            }
        }
        pthread_mutex_unlock(&s->cache_lock);
    }
found:
    ext->host_offset = off;
    ext->host_file = st->filename ? st->filename : st->name;
    return 0;
}

#define NBD_OPS                                                                \
    .name = "nbd", .runtime_opts = nbd_runtime_opts,                           \
    .strong_opts = nbd_strong_opts, .parse_filename = nbd_parse_filename,      \
    .refresh_name = nbd_refresh_name, .open = nbd_open, .close = nbd_close,    \
    .pread = nbd_pread, .pwrite = nbd_pwrite, .flush = nbd_flush,              \
    .get_size = nbd_get_size, .truncate = nbd_truncate,                        \
    .truncate_exact = nbd_truncate_exact, .pwrite_zeroes = nbd_zeroes,         \
    .discard = nbd_discard, .block_status = nbd_bs, .create_by_open = true, \
    .no_get_info = true

const struct qimg_storage_ops qimg_storage_nbd = {
    .protocol = "nbd",
    NBD_OPS,
};

const struct qimg_storage_ops qimg_storage_nbd_tcp = {
    .protocol = "nbd+tcp",
    NBD_OPS,
};

const struct qimg_storage_ops qimg_storage_nbd_unix = {
    .protocol = "nbd+unix",
    NBD_OPS,
};
