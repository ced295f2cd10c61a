/*
 * nfs.c - the "nfs" storage over libnfs (NFSv3), with QEMU 7.2's names
 * (nfs://host/path/file[?uid=&gid=&tcp-syncnt=&readahead=&pagecache=
 * &debug=]), options (server.host, server.type, path, user, group,
 * tcp-syn-count, readahead-size, page-cache-size, debug), checks and
 * messages.  The mount is the file's directory, as in QEMU.  One libnfs
 * context serves every request, one at a time behind a mutex (a context
 * is not thread-safe).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <nfsc/libnfs.h>

#include "core/util.h"
#include "proto/net.h"

/* QEMU's caps on what the options ask of libnfs (QEMU_NFS_MAX_*). */
#define NFS_MAX_READAHEAD (1024 * 1024)
#define NFS_MAX_PAGECACHE (8388608 / NFS_BLKSIZE)
#define NFS_MAX_DEBUG 2
/* Largest read or write handed to libnfs at once. */
#define NFS_MAX_IO (1u << 20)
/* A server that went away: libnfs reconnects forever and waits forever
 * for an answer by default (so does QEMU 7.2).  qimg reconnects a few
 * times and gives each call 30 s, then fails the request. */
#define NFS_RECONNECTS 3
#define NFS_CALL_TIMEOUT_MS 30000

struct nfs_state {
    struct nfs_context *ctx;
    struct nfsfh *fh;
    char host[1024];
    char path[4096];
    unsigned long long uid, gid;
    uint64_t size;
    uint64_t st_blocks;
    bool rdwr;
    pthread_mutex_t lock;
};

static const char *const nfs_runtime_opts[] = {
    "server.", "path", "user", "group", "tcp-syn-count", "readahead-size",
    "page-cache-size", "debug", NULL,
};
static const char *const nfs_strong_opts[] = {
    "path", "user", "group", "server.", NULL,
};
static const struct qimg_opt_desc nfs_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
};

/* ---- names --------------------------------------------------------------- */

/* URI query names and the options they set. */
static const char *const query_keys[][2] = {
    {"uid", "user"}, {"gid", "group"}, {"tcp-syncnt", "tcp-syn-count"},
    {"readahead", "readahead-size"}, {"pagecache", "page-cache-size"},
    {"debug", "debug"},
};

static int parse_query(const char *query, struct qimg_opts *o,
                       struct qimg_error *err)
{
    struct net_query q;
    int ret = 0;

    if (!net_query_parse(query, &q))
        return qimg_error_set(err, -EINVAL, "could not parse query "
                              "parameters");
    for (size_t i = 0; i < q.n && ret == 0; i++) {
        const char *name = q.p[i].name, *v = q.p[i].value, *key = NULL;
        char *end;

        if (!v) {
            ret = qimg_error_set(err, -EINVAL, "Value for NFS parameter "
                                 "expected: %s", name);
            break;
        }
        errno = 0;
        (void)strtoull(v, &end, 0);
        if (!*v || *end || errno || *v == '-') {
            ret = qimg_error_set(err, -EINVAL, "Illegal value for NFS "
                                 "parameter: %s", name);
            break;
        }
        for (size_t k = 0; k < QIMG_ARRAY_SIZE(query_keys); k++)
            if (!strcmp(name, query_keys[k][0]))
                key = query_keys[k][1];
        if (!key)
            ret = qimg_error_set(err, -EINVAL, "Unknown NFS parameter name: "
                                 "%s", name);
        else if (qimg_opts_set(o, key, v) < 0)
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    net_query_free(&q);
    return ret;
}

static int nfs_parse_filename(const char *filename, struct qimg_opts *o,
                              struct qimg_error *err)
{
    static const char *const conflicting[] = {
        "host", "path", "user", "group", "tcp-syn-count", "readahead-size",
        "page-cache-size", "debug",
    };
    struct net_uri u;
    int ret;

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(conflicting); i++)
        if (qimg_opts_get(o, conflicting[i]))
            return qimg_error_set(err, -EINVAL, "Option %s cannot be used "
                                  "with a filename", conflicting[i]);
    if (net_opts_have_prefix(o, "server."))
        return qimg_error_set(err, -EINVAL, "Option server.host cannot be "
                              "used with a filename");
    if (!net_uri_parse(filename, &u))
        return qimg_error_set(err, -EINVAL, "Invalid URI specified");
    if (!u.scheme || strcmp(u.scheme, "nfs"))
        ret = qimg_error_set(err, -EINVAL, "URI scheme must be 'nfs'");
    else if (!u.server)
        ret = qimg_error_set(err, -EINVAL, "missing hostname in URI");
    else if (!u.path)
        ret = qimg_error_set(err, -EINVAL, "missing file path in URI");
    else if (qimg_opts_set(o, "server.host", u.server) < 0 ||
             qimg_opts_set(o, "server.type", "inet") < 0 ||
             qimg_opts_set(o, "path", u.path) < 0)
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    else
        ret = parse_query(u.query, o, err);
    net_uri_free(&u);
    return ret;
}

/* ---- connecting -------------------------------------------------------------- */

static void state_free(struct nfs_state *s)
{
    if (!s)
        return;
    if (s->ctx) {
        if (s->fh)
            nfs_close(s->ctx, s->fh);
        nfs_destroy_context(s->ctx);
    }
    free(s);
}

static int number(const struct qimg_opts *o, const char *key, bool *has,
                  unsigned long long *v, struct qimg_error *err)
{
    *has = qimg_opts_get(o, key) != NULL;
    /* QEMU reads these through QAPI ('int'), whose words differ from
     * QemuOpts' "expects a number" */
    if (net_opt_number(o, key, 0, v, NULL) < 0)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects "
                              "integer", key);
    return 0;
}

/* libnfs settings from the options, with QEMU's caps and warnings. */
static int apply_settings(struct nfs_state *s, const struct qimg_opts *o,
                          enum qimg_cache cache, struct qimg_error *err)
{
    unsigned long long v;
    bool has;
    int ret;

    if ((ret = number(o, "user", &has, &s->uid, err)) < 0)
        return ret;
    if (has)
        nfs_set_uid(s->ctx, (int)s->uid);
    if ((ret = number(o, "group", &has, &s->gid, err)) < 0)
        return ret;
    if (has)
        nfs_set_gid(s->ctx, (int)s->gid);
    if ((ret = number(o, "tcp-syn-count", &has, &v, err)) < 0)
        return ret;
    if (has)
        nfs_set_tcp_syncnt(s->ctx, (int)v);
    if ((ret = number(o, "readahead-size", &has, &v, err)) < 0)
        return ret;
    if (has) {
        if (cache == QIMG_CACHE_NONE || cache == QIMG_CACHE_DIRECTSYNC)
            return qimg_error_set(err, -EINVAL, "Cannot enable NFS readahead "
                                  "if cache.direct = on");
        if (v > NFS_MAX_READAHEAD) {
            qimg_message(QIMG_MSG_WARNING, "Truncating NFS readahead size "
                         "to %d\n", NFS_MAX_READAHEAD);
            v = NFS_MAX_READAHEAD;
        }
        nfs_set_readahead(s->ctx, (uint32_t)v);
        nfs_set_pagecache_ttl(s->ctx, 0);
    }
    if ((ret = number(o, "page-cache-size", &has, &v, err)) < 0)
        return ret;
    if (has) {
        if (cache == QIMG_CACHE_NONE || cache == QIMG_CACHE_DIRECTSYNC)
            return qimg_error_set(err, -EINVAL, "Cannot enable NFS pagecache "
                                  "if cache.direct = on");
        if (v > NFS_MAX_PAGECACHE) {
            qimg_message(QIMG_MSG_WARNING, "Truncating NFS pagecache size "
                         "to %d pages\n", NFS_MAX_PAGECACHE);
            v = NFS_MAX_PAGECACHE;
        }
        nfs_set_pagecache(s->ctx, (uint32_t)v);
        nfs_set_pagecache_ttl(s->ctx, 0);
    }
    if ((ret = number(o, "debug", &has, &v, err)) < 0)
        return ret;
    if (has) {
        if (v > NFS_MAX_DEBUG) {
            qimg_message(QIMG_MSG_WARNING, "Limiting NFS debug level to "
                         "%d\n", NFS_MAX_DEBUG);
            v = NFS_MAX_DEBUG;
        }
        nfs_set_debug(s->ctx, (int)v);
    }
    return 0;
}

/* Mount the file's directory and open (or create) the file. */
static int connect_nfs(struct nfs_state *s, const struct qimg_opts *o,
                       int flags, enum qimg_cache cache,
                       struct qimg_error *err)
{
    const char *host = qimg_opts_get(o, "server.host");
    const char *type = qimg_opts_get(o, "server.type");
    const char *path = qimg_opts_get(o, "path");
    struct nfs_stat_64 st;
    char *slash, file[4096];
    int ret;

    if (!net_opts_have_prefix(o, "server."))
        return qimg_error_set(err, -EINVAL, "Parameter 'server' is missing");
    if (!host)
        return qimg_error_set(err, -EINVAL, "Parameter 'server.host' is "
                              "missing");
    if (!type)
        return qimg_error_set(err, -EINVAL, "Parameter 'server.type' is "
                              "missing");
    if (strcmp(type, "inet"))
        return qimg_error_set(err, -EINVAL, "Parameter 'type' does not "
                              "accept value '%s'", type);
    if (!path)
        return qimg_error_set(err, -EINVAL, "Parameter 'path' is missing");
    snprintf(s->host, sizeof(s->host), "%s", host);
    snprintf(s->path, sizeof(s->path), "%s", path);
    slash = strrchr(s->path, '/');
    if (!slash)
        return qimg_error_set(err, -EINVAL, "Invalid URL specified");
    snprintf(file, sizeof(file), "%s", slash);
    s->ctx = nfs_init_context();
    if (!s->ctx)
        return qimg_error_set(err, -ENOMEM, "Failed to init NFS context");
    if ((ret = apply_settings(s, o, cache, err)) < 0)
        return ret;
    nfs_set_autoreconnect(s->ctx, NFS_RECONNECTS);
    nfs_set_timeout(s->ctx, NFS_CALL_TIMEOUT_MS);
    *slash = 0;
    ret = nfs_mount(s->ctx, s->host, s->path);
    *slash = '/';
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to mount nfs share: %s",
                              nfs_get_error(s->ctx));
    if (flags & O_CREAT) {
        if ((ret = nfs_creat(s->ctx, file, 0600, &s->fh)) < 0)
            return qimg_error_set(err, ret, "Failed to create file: %s",
                                  nfs_get_error(s->ctx));
    } else if ((ret = nfs_open(s->ctx, file, flags, &s->fh)) < 0) {
        return qimg_error_set(err, ret, "Failed to open file : %s",
                              nfs_get_error(s->ctx));
    }
    if ((ret = nfs_fstat64(s->ctx, s->fh, &st)) < 0)
        return qimg_error_set(err, ret, "Failed to fstat file: %s",
                              nfs_get_error(s->ctx));
    /* QEMU counts whole sectors. */
    s->size = (st.nfs_size + 511) / 512 * 512;
    s->st_blocks = st.nfs_blocks;
    return 0;
}

static int nfs_open_storage(struct qimg_storage *st,
                            const struct qimg_opts *opts, unsigned flags,
                            enum qimg_cache cache, struct qimg_error *err)
{
    struct nfs_state *s = calloc(1, sizeof(*s));
    int ret;

    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    s->rdwr = flags & QIMG_OPEN_RDWR;
    ret = connect_nfs(s, opts, s->rdwr ? O_RDWR : O_RDONLY, cache, err);
    if (ret < 0) {
        state_free(s);
        return ret;
    }
    pthread_mutex_init(&s->lock, NULL);
    st->priv = s;
    net_name_as_filename(st);
    return 0;
}

static void nfs_close_storage(struct qimg_storage *st)
{
    struct nfs_state *s = st->priv;
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    state_free(s);
    st->priv = NULL;
}

/* ---- I/O --------------------------------------------------------------------- */

static int nfs_io(struct qimg_storage *st, bool write, uint64_t off,
                  size_t len, uint8_t *buf, struct qimg_error *err)
{
    struct nfs_state *s = st->priv;
    size_t done = 0;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    while (done < len) {
        size_t n = QIMG_MIN(len - done, (size_t)NFS_MAX_IO);
        ret = write ? nfs_pwrite(s->ctx, s->fh, off + done, n, buf + done)
                    : nfs_pread(s->ctx, s->fh, off + done, n, buf + done);
        if (ret < 0)
            break;
        if (ret == 0) {
            if (write) {
                ret = -EIO;
                break;
            }
            memset(buf + done, 0, len - done);   /* past the end */
            done = len;
            break;
        }
        done += (size_t)ret;
        ret = 0;
    }
    if (write && ret == 0 && off + len > s->size)
        s->size = off + len;
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? qimg_error_set(err, ret, "%s", strerror(-ret)) : 0;
}

static int nfs_pread_storage(struct qimg_storage *st, uint64_t off,
                             size_t len, void *buf, struct qimg_error *err)
{
    return nfs_io(st, false, off, len, buf, err);
}

static int nfs_pwrite_storage(struct qimg_storage *st, uint64_t off,
                              size_t len, const void *buf,
                              struct qimg_error *err)
{
    return nfs_io(st, true, off, len, (uint8_t *)buf, err);
}

static int nfs_flush_storage(struct qimg_storage *st, struct qimg_error *err)
{
    struct nfs_state *s = st->priv;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = nfs_fsync(s->ctx, s->fh);
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? qimg_error_set(err, ret, "%s", strerror(-ret)) : 0;
}

static int64_t nfs_get_size(struct qimg_storage *st)
{
    return (int64_t)((struct nfs_state *)st->priv)->size;
}

/* st_blocks of the open (QEMU asks the server again for writable opens). */
static int64_t nfs_allocated(struct qimg_storage *st)
{
    struct nfs_state *s = st->priv;
    struct nfs_stat_64 stb;
    int64_t r = (int64_t)s->st_blocks * 512;

    if (s->rdwr) {
        pthread_mutex_lock(&s->lock);
        r = nfs_fstat64(s->ctx, s->fh, &stb) < 0
                ? -EIO : (int64_t)stb.nfs_blocks * 512;
        pthread_mutex_unlock(&s->lock);
    }
    return r;
}

static int nfs_truncate_storage(struct qimg_storage *st, uint64_t size,
                                enum qimg_prealloc prealloc,
                                struct qimg_error *err)
{
    struct nfs_state *s = st->priv;
    int ret;

    if (prealloc != QIMG_PREALLOC_OFF)
        return net_prealloc_refused(prealloc, err);
    pthread_mutex_lock(&s->lock);
    ret = nfs_ftruncate(s->ctx, s->fh, size);
    if (ret == 0)
        s->size = size;
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? qimg_error_set(err, ret, "Failed to truncate file: %s",
                                    strerror(-ret)) : 0;
}

/* nfs://host/path[?uid=..&gid=..], as QEMU's nfs_refresh_filename. */
static bool nfs_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    struct nfs_state *s = st->priv;
    int n;

    if (!s)
        return false;
    if (s->uid && s->gid)
        n = snprintf(buf, len, "nfs://%s%s?uid=%llu&gid=%llu", s->host,
                     s->path, s->uid, s->gid);
    else if (s->uid || s->gid)
        n = snprintf(buf, len, "nfs://%s%s?%s=%llu", s->host, s->path,
                     s->uid ? "uid" : "gid", s->uid ? s->uid : s->gid);
    else
        n = snprintf(buf, len, "nfs://%s%s", s->host, s->path);
    return n >= 0 && (size_t)n < len;
}

/* QEMU's nfs create: open with O_CREAT and set the size. */
static int nfs_create_storage(const char *filename,
                              const struct qimg_opts *opts,
                              struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    struct nfs_state *s = calloc(1, sizeof(*s));
    uint64_t size = 0;
    int ret = -ENOMEM;

    if (o && s) {
        ret = qimg_opts_get_size(opts, "size", 0, &size, err);
        if (ret == 0)
            ret = nfs_parse_filename(filename, o, err);
        if (ret == 0)
            ret = connect_nfs(s, o, O_CREAT, QIMG_CACHE_WRITEBACK, err);
        if (ret == 0 && (ret = nfs_ftruncate(s->ctx, s->fh, size)) < 0)
            qimg_error_set(err, ret, "%s", strerror(-ret));
    } else {
        qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    state_free(s);
    qimg_opts_free(o);
    return ret;
}

const struct qimg_storage_ops qimg_storage_nfs = {
    .name = "nfs",
    .protocol = "nfs",
    .create_opts = nfs_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(nfs_create_opts),
    .runtime_opts = nfs_runtime_opts,
    .strong_opts = nfs_strong_opts,
    .parse_filename = nfs_parse_filename,
    .refresh_name = nfs_refresh_name,
    .open = nfs_open_storage,
    .close = nfs_close_storage,
    .pread = nfs_pread_storage,
    .pwrite = nfs_pwrite_storage,
    .flush = nfs_flush_storage,
    .get_size = nfs_get_size,
    .truncate = nfs_truncate_storage,
    .block_status = net_block_status_data,
    .allocated_size = nfs_allocated,
    .create = nfs_create_storage,
    .no_get_info = true,
};
