/*
 * curl.c - the read-only "http", "https", "ftp" and "ftps" storages over
 * libcurl, with QEMU 7.2's options (url, readahead, timeout, sslverify,
 * cookie[-secret], username, password-secret, proxy-username,
 * proxy-password-secret), checks and messages.
 *
 * Reads are HTTP range requests (or FTP resumed transfers) made with a
 * pool of easy handles: each request takes an idle handle, so the copy
 * engine's workers have as many ranges in flight as there are handles,
 * over kept-alive connections.  As in QEMU, a read smaller than the
 * readahead size fetches readahead bytes more, and later reads inside a
 * fetched buffer are answered from it; large reads fetch exactly what is
 * asked (QEMU adds the readahead to every read).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "core/block.h"
#include "core/util.h"
#include "proto/net.h"

/* Easy handles (and requests in flight) per node. */
#define CURL_SLOTS 8
#define CURL_READAHEAD_DEFAULT (256 * 1024)
/* A readahead buffer is allocated per slot: keep it sane. */
#define CURL_READAHEAD_MAX (64u << 20)
/* QEMU's CURL_TIMEOUT_MAX (seconds). */
#define CURL_TIMEOUT_MAX 10000
#define CURL_TIMEOUT_DEFAULT 5
/* Transfer errors reported before QEMU stops reporting them. */
#define CURL_ERROR_REPORTS 100
/* libcurl's receive buffer per handle (CURLOPT_BUFFERSIZE; libcurl's
 * default is 16 KiB, one recv(2) and one poll(2) per 16 KiB, some 130000
 * system calls per GiB).  256 KiB cut qimg's CPU time for 1 GiB over
 * loopback http by a quarter (docs/PERFORMANCE.md, "Session 8: http");
 * 512 KiB gained nothing more.  Memory: CURL_SLOTS buffers, 2 MiB. */
#define CURL_RECV_BUFFER (256 * 1024L)

struct curl_slot {
    CURL *h;
    bool in_use;
    char errbuf[CURL_ERROR_SIZE];
    /* The last fetched range, kept for the reads that follow. */
    uint8_t *buf;
    size_t cap;
    uint64_t buf_start;
    size_t buf_len;
    /* The transfer in progress: where the bytes go. */
    uint8_t *dst;
    size_t want, got;
    bool overflow;
};

struct curl_state {
    char *url;
    uint64_t len;
    size_t readahead;
    long timeout;
    bool sslverify;
    char *cookie, *username, *password, *proxyusername, *proxypassword;
    bool is_http;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    struct curl_slot slots[CURL_SLOTS];
    int errors_reported;
};

static const char *const curl_runtime_opts[] = {
    "url", "readahead", "timeout", "sslverify", "cookie", "cookie-secret",
    "username", "password-secret", "proxy-username", "proxy-password-secret",
    NULL,
};
static const char *const curl_strong_opts[] = {
    "url", "sslverify", "cookie", "cookie-secret", "username",
    "password-secret", "proxy-username", "proxy-password-secret", NULL,
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_ret;

static void global_init(void)
{
    global_ret = curl_global_init(CURL_GLOBAL_ALL);
}

/* The whole name is the URL (QEMU's curl_parse_filename). */
static int curl_parse(const char *filename, struct qimg_opts *opts,
                      struct qimg_error *err)
{
    if (qimg_opts_set(opts, "url", filename) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static void state_free(struct curl_state *s)
{
    if (!s)
        return;
    for (int i = 0; i < CURL_SLOTS; i++) {
        if (s->slots[i].h)
            curl_easy_cleanup(s->slots[i].h);
        free(s->slots[i].buf);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->idle);
    free(s->url);
    free(s->cookie);
    free(s->username);
    if (s->password)
        memset(s->password, 0, strlen(s->password));
    free(s->password);
    free(s->proxyusername);
    if (s->proxypassword)
        memset(s->proxypassword, 0, strlen(s->proxypassword));
    free(s->proxypassword);
    free(s);
}

static int read_options(struct curl_state *s, const struct qimg_storage *st,
                        const struct qimg_opts *opts, struct qimg_error *err)
{
    const char *proto = st->ops->protocol;
    const char *cookie, *cookie_secret, *url, *id, *t;
    unsigned long long timeout = CURL_TIMEOUT_DEFAULT;
    uint64_t ra;
    bool verify;
    int ret;

    /* Types first (QEMU's qemu_opts_absorb_qdict), then the values. */
    ret = qimg_opts_get_size(opts, "readahead", CURL_READAHEAD_DEFAULT, &ra,
                             err);
    if (ret < 0)
        return ret;
    t = qimg_opts_get(opts, "timeout");
    if (t) {
        char *end;
        errno = 0;
        timeout = strtoull(t, &end, 0);
        if (errno || *end || end == t)
            return qimg_error_set(err, -EINVAL, "Parameter 'timeout' expects "
                                  "a number");
    }
    ret = qimg_opts_get_bool(opts, "sslverify", true, &verify, err);
    if (ret < 0)
        return ret;
    if (ra & 0x1ff)
        return qimg_error_set(err, -EINVAL, "HTTP_READAHEAD_SIZE %zd is not a "
                              "multiple of 512", (ssize_t)ra);
    if (ra > CURL_READAHEAD_MAX)
        return qimg_error_set(err, -EINVAL, "HTTP_READAHEAD_SIZE %zd is too "
                              "large (at most %u)", (ssize_t)ra,
                              CURL_READAHEAD_MAX);
    /* Negative values wrap to huge ones, as in QEMU. */
    if (timeout > CURL_TIMEOUT_MAX)
        return qimg_error_set(err, -EINVAL, "timeout parameter is too large "
                              "or negative");
    s->timeout = (long)timeout;
    s->readahead = (size_t)ra;
    s->sslverify = verify;
    cookie = qimg_opts_get(opts, "cookie");
    cookie_secret = qimg_opts_get(opts, "cookie-secret");
    if (cookie && cookie_secret)
        return qimg_error_set(err, -EINVAL, "curl driver cannot handle both "
                              "cookie and cookie secret");
    if (cookie_secret) {
        if ((ret = net_secret_text(cookie_secret, &s->cookie, err)) < 0)
            return ret;
    } else if (cookie && !(s->cookie = strdup(cookie))) {
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    url = qimg_opts_get(opts, "url");
    if (!url)
        return qimg_error_set(err, -EINVAL, "curl block driver requires an "
                              "'url' option");
    if (strncmp(url, proto, strlen(proto)) ||
        strncmp(url + strlen(proto), "://", 3))
        return qimg_error_set(err, -EINVAL, "%s curl driver cannot handle the "
                              "URL '%s' (does not start with '%s://')", proto,
                              url, proto);
    if (!(s->url = strdup(url)))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    s->is_http = !strncasecmp(url, "http://", 7) ||
                 !strncasecmp(url, "https://", 8);
    if ((t = qimg_opts_get(opts, "username")) && !(s->username = strdup(t)))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if ((id = qimg_opts_get(opts, "password-secret")) &&
        (ret = net_secret_text(id, &s->password, err)) < 0)
        return ret;
    if ((t = qimg_opts_get(opts, "proxy-username")) &&
        !(s->proxyusername = strdup(t)))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if ((id = qimg_opts_get(opts, "proxy-password-secret")) &&
        (ret = net_secret_text(id, &s->proxypassword, err)) < 0)
        return ret;
    return 0;
}

/* libcurl hands over received bytes: into the transfer's buffer. */
static size_t on_data(void *ptr, size_t size, size_t nmemb, void *opaque)
{
    struct curl_slot *sl = opaque;
    size_t n = size * nmemb, take = n;

    if (sl->got + take > sl->want) {
        take = sl->want - sl->got;
        sl->overflow = true;
    }
    if (take)   /* a probe has no buffer (dst NULL, want 0) */
        memcpy(sl->dst + sl->got, ptr, take);
    sl->got += take;
    return n;
}

/* "Accept-Ranges: bytes" (QEMU's curl_header_cb), into *user. */
static size_t on_header(void *ptr, size_t size, size_t nmemb, void *user)
{
    static const char key[] = "accept-ranges:";
    size_t n = size * nmemb;
    const char *h = ptr, *end = h + n, *p;
    bool *ranges = user;

    if (n < sizeof(key) - 1 || strncasecmp(h, key, sizeof(key) - 1))
        return n;
    p = h + sizeof(key) - 1;
    while (p < end && *p && (*p == ' ' || *p == '\t' || *p == '\r' ||
                             *p == '\n'))
        p++;
    if (end - p < 5 || strncmp(p, "bytes", 5))
        return n;
    p += 5;
    while (p < end && *p && (*p == ' ' || *p == '\t' || *p == '\r' ||
                             *p == '\n'))
        p++;
    if (p == end || !*p)
        *ranges = true;
    return n;
}

static int slot_setup(struct curl_state *s, struct curl_slot *sl)
{
    CURL *h;

    if (sl->h)
        return 0;
    h = curl_easy_init();
    if (!h)
        return -EIO;
    if (curl_easy_setopt(h, CURLOPT_URL, s->url) ||
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, (long)s->sslverify) ||
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, s->sslverify ? 2L : 0L) ||
        (s->cookie && curl_easy_setopt(h, CURLOPT_COOKIE, s->cookie)) ||
        curl_easy_setopt(h, CURLOPT_TIMEOUT, s->timeout) ||
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data) ||
        curl_easy_setopt(h, CURLOPT_WRITEDATA, sl) ||
        curl_easy_setopt(h, CURLOPT_AUTOREFERER, 1L) ||
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L) ||
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) ||
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, sl->errbuf) ||
        curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L) ||
        (s->username && curl_easy_setopt(h, CURLOPT_USERNAME, s->username)) ||
        (s->password && curl_easy_setopt(h, CURLOPT_PASSWORD, s->password)) ||
        (s->proxyusername &&
         curl_easy_setopt(h, CURLOPT_PROXYUSERNAME, s->proxyusername)) ||
        (s->proxypassword &&
         curl_easy_setopt(h, CURLOPT_PROXYPASSWORD, s->proxypassword)) ||
        /* Only the four protocols, redirects included (CVE-2013-0249). */
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "HTTP,HTTPS,FTP,FTPS") ||
        curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR,
                         "HTTP,HTTPS,FTP,FTPS") ||
        curl_easy_setopt(h, CURLOPT_BUFFERSIZE, CURL_RECV_BUFFER) ||
        /* Without verification no CA is needed: libcurl (GnuTLS) would
         * still parse the whole system store (/etc/ssl/certs, some 400
         * certificates, ~90 ms of CPU) for every TLS connection. */
        (!s->sslverify && (curl_easy_setopt(h, CURLOPT_CAPATH, NULL) ||
                           curl_easy_setopt(h, CURLOPT_CAINFO, NULL)))) {
        curl_easy_cleanup(h);
        return -EIO;
    }
    sl->h = h;
    return 0;
}

/* The size and range support, with one HEAD-like request. */
static int probe(struct curl_state *s, struct qimg_error *err)
{
    struct curl_slot *sl = &s->slots[0];
    curl_off_t cl = -1;
    bool ranges = false;
    const char *why = NULL;

    if (slot_setup(s, sl) < 0) {
        why = "curl library initialization failed.";
        goto fail;
    }
    if (curl_easy_setopt(sl->h, CURLOPT_NOBODY, 1L) ||
        curl_easy_setopt(sl->h, CURLOPT_HEADERFUNCTION, on_header) ||
        curl_easy_setopt(sl->h, CURLOPT_HEADERDATA, &ranges)) {
        why = "curl library initialization failed.";
        goto fail;
    }
    if (curl_easy_perform(sl->h) != CURLE_OK)
        goto fail;
    if (curl_easy_getinfo(sl->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl))
        goto fail;
    if (cl < 0) {
        why = "Server didn't report file size.";
        goto fail;
    }
    if (s->is_http && !ranges) {
        why = "Server does not support 'range' (byte ranges).";
        goto fail;
    }
    s->len = (uint64_t)cl;
    /* The handle is reused for GETs: back to a body, no header hook. */
    curl_easy_setopt(sl->h, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(sl->h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(sl->h, CURLOPT_HEADERFUNCTION, NULL);
    curl_easy_setopt(sl->h, CURLOPT_HEADERDATA, NULL);
    return 0;
fail:
    return qimg_error_set(err, -EINVAL, "CURL: Error opening file: %s",
                          why ? why : sl->errbuf);
}

static int curl_open(struct qimg_storage *st, const struct qimg_opts *opts,
                     unsigned flags, enum qimg_cache cache,
                     struct qimg_error *err)
{
    struct curl_state *s;
    int ret;

    (void)cache;
    if (flags & QIMG_OPEN_RDWR)
        return qimg_error_set(err, -EACCES, "curl driver does not support "
                              "writes");
    pthread_once(&global_once, global_init);
    if (global_ret)
        return qimg_error_set(err, -EIO, "libcurl initialization failed with "
                              "%d", (int)global_ret);
    s = calloc(1, sizeof(*s));
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->idle, NULL);
    ret = read_options(s, st, opts, err);
    if (ret == 0)
        ret = probe(s, err);
    if (ret < 0) {
        state_free(s);
        return ret;
    }
    st->priv = s;
    net_name_as_filename(st);
    return 0;
}

static void curl_close(struct qimg_storage *st)
{
    state_free(st->priv);
    st->priv = NULL;
}

/* Copy [off, off+len) from a slot's buffer that holds it. */
static bool from_buffers(struct curl_state *s, uint64_t off, size_t len,
                         void *buf)
{
    for (int i = 0; i < CURL_SLOTS; i++) {
        struct curl_slot *sl = &s->slots[i];
        if (sl->in_use || !sl->buf_len || off < sl->buf_start ||
            off + len > sl->buf_start + sl->buf_len)
            continue;
        memcpy(buf, sl->buf + (off - sl->buf_start), len);
        return true;
    }
    return false;
}

static struct curl_slot *take_slot(struct curl_state *s)
{
    for (;;) {
        for (int i = 0; i < CURL_SLOTS; i++)
            if (!s->slots[i].in_use) {
                s->slots[i].in_use = true;
                return &s->slots[i];
            }
        pthread_cond_wait(&s->idle, &s->lock);
    }
}

/* One transfer of [off, off+want) into dst. */
static int fetch(struct curl_state *s, struct curl_slot *sl, uint64_t off,
                 size_t want, uint8_t *dst)
{
    char range[64];
    CURLcode rc;
    long code = 0;

    snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, off,
             off + want - 1);
    sl->dst = dst;
    sl->want = want;
    sl->got = 0;
    sl->overflow = false;
    sl->errbuf[0] = '\0';
    if (curl_easy_setopt(sl->h, CURLOPT_RANGE, range))
        return -EIO;
    rc = curl_easy_perform(sl->h);
    if (rc != CURLE_OK) {
        if (!sl->errbuf[0])
            snprintf(sl->errbuf, sizeof(sl->errbuf), "%s",
                     curl_easy_strerror(rc));
        return -EIO;
    }
    /* A server that ignores the range sends the whole file (200): its
     * bytes would not be the ones asked for. */
    if (s->is_http &&
        (curl_easy_getinfo(sl->h, CURLINFO_RESPONSE_CODE, &code) ||
         code != 206) && !(off == 0 && want == s->len && code == 200)) {
        snprintf(sl->errbuf, sizeof(sl->errbuf), "server answered a range "
                 "request with status %ld", code);
        return -EIO;
    }
    if (sl->got != want) {
        snprintf(sl->errbuf, sizeof(sl->errbuf), "server sent %zu bytes of "
                 "the %zu asked for at offset %" PRIu64, sl->got, want, off);
        return -EIO;
    }
    return 0;
}

static void report(struct curl_state *s, const char *msg)
{
    pthread_mutex_lock(&s->lock);
    int n = s->errors_reported < CURL_ERROR_REPORTS ? ++s->errors_reported
                                                     : 0;
    pthread_mutex_unlock(&s->lock);
    if (n)
        qimg_message(QIMG_MSG_ERROR, "curl: %s\n", msg);
    if (n == CURL_ERROR_REPORTS)
        qimg_message(QIMG_MSG_ERROR,
                     "curl: further errors suppressed\n");
}

static int curl_pread(struct qimg_storage *st, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct curl_state *s = st->priv;
    size_t in = off >= s->len ? 0
                : (size_t)QIMG_MIN((uint64_t)len, s->len - off);
    struct curl_slot *sl;
    int ret = 0;

    memset((uint8_t *)buf + in, 0, len - in);
    if (!in)
        return 0;
    pthread_mutex_lock(&s->lock);
    if (from_buffers(s, off, in, buf)) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    sl = take_slot(s);
    sl->buf_len = 0;        /* being refilled: not a source meanwhile */
    pthread_mutex_unlock(&s->lock);

    if (slot_setup(s, sl) < 0) {
        ret = -EIO;
        snprintf(sl->errbuf, sizeof(sl->errbuf), "curl library "
                 "initialization failed.");
    } else if (in < s->readahead) {
        /* Small reads (metadata) fetch the readahead too and keep it. */
        size_t want = (size_t)QIMG_MIN((uint64_t)in + s->readahead,
                                       s->len - off);
        if (sl->cap < want) {
            uint8_t *nb = realloc(sl->buf, want);
            if (!nb)
                ret = -ENOMEM;
            else {
                sl->buf = nb;
                sl->cap = want;
            }
        }
        if (ret == 0)
            ret = fetch(s, sl, off, want, sl->buf);
        if (ret == 0) {
            memcpy(buf, sl->buf, in);
            sl->buf_start = off;
            sl->buf_len = want;
        }
    } else {
        ret = fetch(s, sl, off, in, buf);
    }
    if (ret == -EIO)
        report(s, sl->errbuf);

    pthread_mutex_lock(&s->lock);
    sl->in_use = false;
    pthread_cond_signal(&s->idle);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    return 0;
}

static int64_t curl_get_size(struct qimg_storage *st)
{
    return (int64_t)((struct curl_state *)st->priv)->len;
}

/* The URL, unless an option changes what it opens (QEMU ignores
 * readahead and timeout there). */
static bool curl_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    struct curl_state *s = st->priv;
    if (!s || !s->sslverify || s->cookie || s->username || s->password ||
        s->proxyusername || s->proxypassword)
        return false;
    return (size_t)snprintf(buf, len, "%s", s->url) < len;
}

#define CURL_OPS                                                               \
    .runtime_opts = curl_runtime_opts, .strong_opts = curl_strong_opts,       \
    .parse_filename = curl_parse, .refresh_name = curl_refresh_name,           \
    .open = curl_open, .close = curl_close, .pread = curl_pread,               \
    .get_size = curl_get_size, .block_status = net_block_status_data,          \
    .no_get_info = true

const struct qimg_storage_ops qimg_storage_http = {
    .name = "http", .protocol = "http", CURL_OPS,
};
const struct qimg_storage_ops qimg_storage_https = {
    .name = "https", .protocol = "https", CURL_OPS,
};
const struct qimg_storage_ops qimg_storage_ftp = {
    .name = "ftp", .protocol = "ftp", CURL_OPS,
};
const struct qimg_storage_ops qimg_storage_ftps = {
    .name = "ftps", .protocol = "ftps", CURL_OPS,
};
