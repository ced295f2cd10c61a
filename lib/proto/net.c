/*
 * net.c - URI and query parsing, socket addresses from options and
 * connecting, for the network storages (see net.h).  The URI grammar is
 * RFC 3986 as QEMU's util/uri.c applies it: an absolute URI is tried
 * first, then a relative reference; the user, server and path come back
 * percent-decoded, the query as written.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/net.h"

/* ---- URIs ------------------------------------------------------------------ */

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_unreserved(const char *p)
{
    return is_alpha(*p) || is_digit(*p) || *p == '-' || *p == '.' ||
           *p == '_' || *p == '~';
}

static bool is_sub_delim(const char *p)
{
    return *p && strchr("!$&()*+,;='", *p);
}

static bool is_pct(const char *p)
{
    return p[0] == '%' && is_hex(p[1]) && is_hex(p[2]);
}

static bool is_pchar(const char *p)
{
    return is_unreserved(p) || is_pct(p) || is_sub_delim(p) || *p == ':' ||
           *p == '@';
}

/* Step over one character or one %XX escape. */
static const char *next(const char *p)
{
    return *p == '%' ? p + 3 : p + 1;
}

static int hexval(char c)
{
    return is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
}

char *net_unescape(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        if (len - i > 2 && s[i] == '%' && is_hex(s[i + 1]) &&
            is_hex(s[i + 2])) {
            *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 3;
        } else {
            *o++ = s[i++];
        }
    }
    *o = '\0';
    return out;
}

static void set_part(char **dst, const char *from, const char *to, bool raw)
{
    free(*dst);
    *dst = NULL;
    if (to == from)
        return;
    *dst = raw ? strndup(from, (size_t)(to - from))
               : net_unescape(from, (size_t)(to - from));
}

/* segment = *pchar (stopping at forbid); false when empty is refused. */
static bool parse_segment(const char **str, char forbid, bool empty)
{
    const char *p = *str;
    if (!is_pchar(p))
        return empty;
    while (is_pchar(p) && *p != forbid)
        p = next(p);
    *str = p;
    return true;
}

static bool parse_host(struct net_uri *u, const char **str)
{
    const char *p = *str, *host = p;

    if (*p == '[') {
        while (*p && *p != ']')
            p++;
        if (*p != ']')
            return false;
        p++;
        goto found;
    }
    /* IPv4 addresses are reg-names too (QEMU's own IPv4 branch never
     * matches a whole address and falls back to this). */
    while (is_unreserved(p) || is_pct(p) || is_sub_delim(p))
        p = next(p);
found:
    set_part(&u->server, host, p, false);
    *str = p;
    return true;
}

static bool parse_authority(struct net_uri *u, const char **str)
{
    const char *p = *str, *start = p;

    while (is_unreserved(p) || is_pct(p) || is_sub_delim(p) || *p == ':')
        p = next(p);
    if (*p == '@') {
        set_part(&u->user, start, p, false);
        p++;
    } else {
        p = start;
    }
    if (!parse_host(u, &p))
        return false;
    if (*p == ':') {
        int port = 0;
        p++;
        if (!is_digit(*p))
            return false;
        while (is_digit(*p)) {
            port = port * 10 + (*p - '0');
            if (port > 65535)
                return false;
            p++;
        }
        u->port = port;
    }
    *str = p;
    return true;
}

/* path-abempty = *( "/" segment ) */
static void parse_path_abempty(struct net_uri *u, const char **str)
{
    const char *p = *str;
    while (*p == '/') {
        p++;
        parse_segment(&p, 0, true);
    }
    set_part(&u->path, *str, p, false);
    *str = p;
}

/* path-absolute / rootless / noscheme: a first segment (non-empty unless
 * it follows '/'), then "/" segments. */
static bool parse_path(struct net_uri *u, const char **str, bool absolute,
                       char forbid)
{
    const char *p = *str;

    if (absolute) {
        p++;
        if (parse_segment(&p, 0, false) && p != *str + 1)
            while (*p == '/') {
                p++;
                parse_segment(&p, 0, true);
            }
    } else {
        const char *s = p;
        if (!parse_segment(&p, forbid, false) || p == s)
            return false;
        while (*p == '/') {
            p++;
            parse_segment(&p, 0, true);
        }
    }
    set_part(&u->path, *str, p, false);
    *str = p;
    return true;
}

static bool parse_query_fragment(struct net_uri *u, const char **str)
{
    const char *p = *str;
    if (*p == '?') {
        const char *q = ++p;
        while (is_pchar(p) || *p == '/' || *p == '?')
            p = next(p);
        free(u->query);
        u->query = strndup(q, (size_t)(p - q));
    }
    if (*p == '#') {
        const char *f = ++p;
        while (is_pchar(p) || *p == '/' || *p == '?' || *p == '[' ||
               *p == ']')
            p = next(p);
        set_part(&u->fragment, f, p, false);
    }
    *str = p;
    return *p == '\0';
}

/* After the scheme or at the start of a relative reference. */
static bool parse_hier(struct net_uri *u, const char *p, bool relative)
{
    if (p[0] == '/' && p[1] == '/') {
        p += 2;
        if (!parse_authority(u, &p))
            return false;
        parse_path_abempty(u, &p);
    } else if (*p == '/') {
        if (!parse_path(u, &p, true, 0))
            return false;
    } else if (is_pchar(p)) {
        if (!parse_path(u, &p, false, relative ? ':' : 0))
            return false;
    }
    return parse_query_fragment(u, &p);
}

void net_uri_free(struct net_uri *u)
{
    free(u->scheme);
    free(u->user);
    free(u->server);
    free(u->path);
    free(u->query);
    free(u->fragment);
    memset(u, 0, sizeof(*u));
}

bool net_uri_parse(const char *str, struct net_uri *u)
{
    const char *p = str;

    memset(u, 0, sizeof(*u));
    if (is_alpha(*p)) {
        p++;
        while (is_alpha(*p) || is_digit(*p) || *p == '+' || *p == '-' ||
               *p == '.')
            p++;
        if (*p == ':') {
            u->scheme = strndup(str, (size_t)(p - str));
            if (parse_hier(u, p + 1, false))
                return true;
            net_uri_free(u);
        }
    }
    if (parse_hier(u, str, true))
        return true;
    net_uri_free(u);
    return false;
}

/* ---- query strings ------------------------------------------------------- */

void net_query_free(struct net_query *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->p[i].name);
        free(q->p[i].value);
    }
    free(q->p);
    q->p = NULL;
    q->n = 0;
}

bool net_query_parse(const char *query, struct net_query *q)
{
    q->p = NULL;
    q->n = 0;
    while (query && *query) {
        const char *end = strchr(query, '&');
        const char *eq;
        if (!end)
            end = query + strcspn(query, ";");
        eq = memchr(query, '=', (size_t)(end - query));
        /* Empty sections and "=value" are skipped, as QEMU (and CGI.pm)
         * skip them. */
        if (end != query && eq != query) {
            struct net_query_param *np =
                realloc(q->p, (q->n + 1) * sizeof(*q->p));
            if (!np)
                goto oom;
            q->p = np;
            np = &q->p[q->n];
            np->name = net_unescape(query, (size_t)((eq ? eq : end) - query));
            np->value = !eq ? NULL
                            : net_unescape(eq + 1, (size_t)(end - eq - 1));
            q->n++;
            if (!np->name || (eq && !np->value))
                goto oom;
        }
        query = *end ? end + 1 : end;
    }
    return true;
oom:
    net_query_free(q);
    return false;
}

/* ---- socket addresses ----------------------------------------------------- */

bool net_opts_have_prefix(const struct qimg_opts *opts, const char *prefix)
{
    size_t l = strlen(prefix);
    for (size_t i = 0; i < qimg_opts_count(opts); i++)
        if (!strncmp(qimg_opts_key(opts, i), prefix, l))
            return true;
    return false;
}

static const char *sub_get(const struct qimg_opts *opts, const char *prefix,
                           const char *key)
{
    char k[256];
    snprintf(k, sizeof(k), "%s%s", prefix, key);
    return qimg_opts_get(opts, k);
}

static int sub_bool(const struct qimg_opts *opts, const char *prefix,
                    const char *key, bool *has, bool *val,
                    struct qimg_error *err)
{
    const char *v = sub_get(opts, prefix, key);
    *has = v != NULL;
    if (!v)
        return 0;
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true"))
        *val = true;
    else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false"))
        *val = false;
    else
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects 'on' or "
                              "'off'", key);
    return 0;
}

static int sub_required(const struct qimg_opts *opts, const char *prefix,
                        const char *key, char *dst, size_t len,
                        struct qimg_error *err)
{
    const char *v = sub_get(opts, prefix, key);
    if (!v)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' is missing", key);
    if (strlen(v) >= len)
        return qimg_error_set(err, -ENAMETOOLONG, "Parameter '%s' is too "
                              "long", key);
    strcpy(dst, v);
    return 0;
}

int net_addr_from_opts(const struct qimg_opts *opts, const char *prefix,
                       struct net_addr *addr, struct qimg_error *err)
{
    static const char *const inet_keys[] = {
        "type", "host", "port", "numeric", "to", "ipv4", "ipv6",
        "keep-alive", "mptcp", NULL,
    };
    static const char *const unix_keys[] = {
        "type", "path", "abstract", "tight", NULL,
    };
    static const char *const vsock_keys[] = {"type", "cid", "port", NULL};
    static const char *const fd_keys[] = {"type", "str", NULL};
    const char *const *keys;
    const char *type = sub_get(opts, prefix, "type");
    size_t plen = strlen(prefix);
    const char *bad = NULL;
    unsigned bad_bucket = 0;
    int ret;

    memset(addr, 0, sizeof(*addr));
    if (!type)
        return qimg_error_set(err, -EINVAL, "Parameter 'type' is missing");
    if (!strcmp(type, "inet")) {
        addr->type = NET_ADDR_INET;
        keys = inet_keys;
        ret = sub_required(opts, prefix, "host", addr->host,
                           sizeof(addr->host), err);
        if (ret == 0)
            ret = sub_required(opts, prefix, "port", addr->port,
                               sizeof(addr->port), err);
        if (ret == 0)
            ret = sub_bool(opts, prefix, "ipv4", &addr->has_ipv4, &addr->ipv4,
                           err);
        if (ret == 0)
            ret = sub_bool(opts, prefix, "ipv6", &addr->has_ipv6, &addr->ipv6,
                           err);
        addr->has_to = sub_get(opts, prefix, "to") != NULL;
    } else if (!strcmp(type, "unix")) {
        addr->type = NET_ADDR_UNIX;
        keys = unix_keys;
        ret = sub_required(opts, prefix, "path", addr->path,
                           sizeof(addr->path), err);
    } else if (!strcmp(type, "vsock")) {
        addr->type = NET_ADDR_VSOCK;
        keys = vsock_keys;
        ret = sub_required(opts, prefix, "cid", addr->host,
                           sizeof(addr->host), err);
        if (ret == 0)
            ret = sub_required(opts, prefix, "port", addr->port,
                               sizeof(addr->port), err);
    } else if (!strcmp(type, "fd")) {
        addr->type = NET_ADDR_FD;
        keys = fd_keys;
        ret = sub_required(opts, prefix, "str", addr->host,
                           sizeof(addr->host), err);
    } else {
        return qimg_error_set(err, -EINVAL, "Parameter 'type' does not accept "
                              "value '%s'", type);
    }
    if (ret < 0)
        return ret;
    /* A key the address type does not have: the first in QEMU's
     * dictionary order is the one named. */
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (strncmp(k, prefix, plen) || qimg_key_listed(keys, k + plen))
            continue;
        unsigned b = qimg_qdict_bucket(k + plen);
        if (!bad || b < bad_bucket) {
            bad = k + plen;
            bad_bucket = b;
        }
    }
    if (bad)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' is unexpected",
                              bad);
    return 0;
}

/* ---- connecting ------------------------------------------------------------ */

static int connect_inet(const struct net_addr *addr, struct qimg_error *err)
{
    struct addrinfo hints, *res, *e;
    int fd = -1, saved = 0, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_CANONNAME | AI_ADDRCONFIG | AI_V4MAPPED;
    hints.ai_family = addr->has_ipv4 && addr->ipv4 && !addr->ipv6 ? AF_INET
                      : addr->has_ipv6 && addr->ipv6 && !addr->ipv4
                          ? AF_INET6
                          : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(addr->host, addr->port, &hints, &res);
    if (rc)
        return qimg_error_set(err, -EHOSTUNREACH, "address resolution failed "
                              "for %s:%s: %s", addr->host, addr->port,
                              gai_strerror(rc));
    for (e = res; e; e = e->ai_next) {
        fd = socket(e->ai_family, e->ai_socktype | SOCK_CLOEXEC,
                    e->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        do
            rc = connect(fd, e->ai_addr, e->ai_addrlen);
        while (rc < 0 && errno == EINTR);
        if (rc == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return qimg_error_set(err, -saved, "Failed to connect to '%s:%s': %s",
                              addr->host, addr->port, strerror(saved));
    return fd;
}

static int connect_unix(const struct net_addr *addr, struct qimg_error *err)
{
    struct sockaddr_un un;
    size_t len = strlen(addr->path);
    int fd, rc, e;

    if (len > sizeof(un.sun_path))
        return qimg_error_set(err, -ENAMETOOLONG, "UNIX socket path '%s' is "
                              "too long", addr->path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qimg_error_set(err, -errno, "Failed to create socket: %s",
                              strerror(errno));
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    memcpy(un.sun_path, addr->path, len);
    do
        rc = connect(fd, (struct sockaddr *)&un, sizeof(un));
    while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        e = errno;
        close(fd);
        return qimg_error_set(err, -e, "Failed to connect to '%s': %s",
                              addr->path, strerror(e));
    }
    return fd;
}

int net_connect(const struct net_addr *addr, struct qimg_error *err)
{
    switch (addr->type) {
    case NET_ADDR_INET:
        return connect_inet(addr, err);
    case NET_ADDR_UNIX:
        return connect_unix(addr, err);
    case NET_ADDR_FD:
        return qimg_error_set(err, -EINVAL, "File descriptor '%s' is not a "
                              "socket", addr->host);
    default:
        return qimg_error_set(err, -ENOTSUP, "Failed to connect to '%s:%s': "
                              "%s", addr->host, addr->port,
                              strerror(ENOTSUP));
    }
}

int net_opt_number(const struct qimg_opts *opts, const char *key,
                   unsigned long long def, unsigned long long *out,
                   struct qimg_error *err)
{
    const char *v = qimg_opts_get(opts, key);
    char *end;

    *out = def;
    if (!v)
        return 0;
    errno = 0;
    *out = strtoull(v, &end, 0);
    if (errno || *end || end == v)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects a number",
                              key);
    return 0;
}

void net_name_as_filename(struct qimg_storage *st)
{
    char buf[4096];
    char *copy;

    if (!st->ops->refresh_name || !st->ops->refresh_name(st, buf, sizeof(buf)))
        return;
    copy = strdup(buf);
    if (!copy)
        return;
    free(st->filename);
    st->filename = copy;
}

/* A secret as UTF-8 text (QEMU's qcrypto_secret_lookup_as_utf8). */
int net_secret_text(const char *id, char **out, struct qimg_error *err)
{
    size_t len;
    const char *data = qimg_secret_get(id, &len);

    if (!data)
        return qimg_error_set(err, -EINVAL, "No secret with id '%s'", id);
    if (memchr(data, '\0', len))
        return qimg_error_set(err, -EINVAL, "Data from secret %s is not "
                              "valid UTF-8", id);
    *out = strndup(data, len);
    return *out ? 0 : qimg_error_set(err, -ENOMEM, "Out of memory");
}

int net_block_status_data(struct qimg_storage *st, uint64_t off, uint64_t len,
                          struct qimg_extent *ext, struct qimg_error *err)
{
    (void)err;
    memset(ext, 0, sizeof(*ext));
    ext->length = len;
    ext->flags = QIMG_BS_DATA;
    ext->host_offset = off;
    ext->host_file = st->filename ? st->filename : st->name;
    return 0;
}

int net_prealloc_refused(enum qimg_prealloc prealloc, struct qimg_error *err)
{
    return qimg_error_set(err, -ENOTSUP, "Unsupported preallocation mode "
                          "'%s'", prealloc == QIMG_PREALLOC_METADATA
                                      ? "metadata"
                                      : prealloc == QIMG_PREALLOC_FALLOC
                                            ? "falloc" : "full");
}
