/*
 * ssh.c - the "ssh" storage over libssh's SFTP client, with QEMU 7.2's
 * names (ssh://[user@]host[:port]/path[?host_key_check=...]), options
 * (server.host/port, path, user, host-key-check.*, the legacy host, port
 * and host_key_check), host key checks (known_hosts, md5/sha1/sha256
 * fingerprints, none), authentication (none, then public keys and the
 * ssh-agent) and messages.  One SFTP session serves every request, one
 * at a time (libssh sessions are not thread-safe), as in QEMU.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <libssh/libssh.h>
#include <libssh/sftp.h>

#include "core/jsonopts.h"
#include "core/util.h"
#include "proto/net.h"

/* QEMU's request sizes (SFTP packets are limited to 32 KiB); QEMU sends
 * one read request at a time, qimg SSH_READ_DEPTH of them. */
#define SSH_READ_CHUNK 16384
/* Read requests kept in flight (libssh's asynchronous reads), at most
 * SSH_READ_DEPTH * SSH_READ_CHUNK = 512 KiB: one 16 KiB request per round
 * trip took 22 s for 256 MiB over loopback (docs/PERFORMANCE.md, "Session
 * 8: http (nethttp)"). */
#define SSH_READ_DEPTH 32
#define SSH_WRITE_CHUNK 131072

enum hkc_mode { HKC_KNOWN_HOSTS, HKC_NONE, HKC_HASH };

struct ssh_target {
    struct net_addr addr;
    char user[256];
    char path[4096];
    enum hkc_mode mode;
    enum ssh_publickey_hash_type hash_type;
    const char *hash_name;
    char hash[1024];
};

struct ssh_state {
    struct ssh_target t;
    ssh_session session;
    sftp_session sftp;
    sftp_file file;
    uint64_t size;
    bool regular;
    bool flush_warned;
    pthread_mutex_t lock;
};

static const char *const ssh_runtime_opts[] = {
    "host", "port", "host_key_check", "server.", "path", "user",
    "host-key-check.", NULL,
};
static const char *const ssh_strong_opts[] = {
    "host", "port", "path", "user", "host_key_check", "server.", NULL,
};

static const struct qimg_opt_desc ssh_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
};

/* ---- names --------------------------------------------------------------- */

static int put(struct qimg_opts *o, const char *k, const char *v,
               struct qimg_error *err)
{
    return qimg_opts_set(o, k, v) < 0
               ? qimg_error_set(err, -ENOMEM, "Out of memory") : 0;
}

/* QEMU's parse_uri: the URI's parts into options. */
static int parse_uri(const char *filename, struct qimg_opts *o,
                     struct qimg_error *err)
{
    struct net_uri u;
    struct net_query q;
    char port[16];
    int ret = -EINVAL;

    if (!net_uri_parse(filename, &u))
        return -EINVAL;
    if (!u.scheme || strcmp(u.scheme, "ssh")) {
        qimg_error_set(err, -EINVAL, "URI scheme must be 'ssh'");
        goto out;
    }
    if (!u.server || !*u.server) {
        qimg_error_set(err, -EINVAL, "missing hostname in URI");
        goto out;
    }
    if (!u.path || !*u.path) {
        qimg_error_set(err, -EINVAL, "missing remote path in URI");
        goto out;
    }
    if (!net_query_parse(u.query, &q)) {
        qimg_error_set(err, -EINVAL, "could not parse query parameters");
        goto out;
    }
    snprintf(port, sizeof(port), "%d", u.port ? u.port : 22);
    ret = 0;
    if (u.user && *u.user)
        ret = put(o, "user", u.user, err);
    if (ret == 0)
        ret = put(o, "server.host", u.server, err);
    if (ret == 0)
        ret = put(o, "server.port", port, err);
    if (ret == 0)
        ret = put(o, "path", u.path, err);
    for (size_t i = 0; ret == 0 && i < q.n; i++)
        if (!strcmp(q.p[i].name, "host_key_check"))
            ret = put(o, "host_key_check", q.p[i].value ? q.p[i].value : "",
                      err);
    net_query_free(&q);
out:
    net_uri_free(&u);
    return ret;
}

static int ssh_parse_filename(const char *filename, struct qimg_opts *o,
                              struct qimg_error *err)
{
    static const char *const keys[] = {"host", "port", "path", "user",
                                       "host_key_check", "server.", NULL};
    const char *best = NULL;
    unsigned bb = 0;

    for (size_t i = 0; i < qimg_opts_count(o); i++) {
        const char *k = qimg_opts_key(o, i);
        unsigned b = qimg_qdict_bucket(k);
        if (qimg_key_listed(keys, k) && (!best || b < bb)) {
            best = k;
            bb = b;
        }
    }
    if (best)
        return qimg_error_set(err, -EINVAL, "Option '%s' cannot be used with "
                              "a file name", best);
    /* A name that is no URI at all opens with no options: the open then
     * reports what is missing, as QEMU's does. */
    int ret = parse_uri(filename, o, err);
    return ret == -EINVAL && err && !err->code ? 0 : ret;
}

/* ---- options --------------------------------------------------------------- */

static int hkc_from_legacy(const char *v, struct ssh_target *t,
                           struct qimg_error *err)
{
    static const struct {
        const char *prefix, *name;
        enum ssh_publickey_hash_type type;
    } hashes[] = {
        {"md5:", "md5", SSH_PUBLICKEY_HASH_MD5},
        {"sha1:", "sha1", SSH_PUBLICKEY_HASH_SHA1},
        {"sha256:", "sha256", SSH_PUBLICKEY_HASH_SHA256},
    };

    if (!strcmp(v, "no")) {
        t->mode = HKC_NONE;
        return 0;
    }
    if (!strcmp(v, "yes")) {
        t->mode = HKC_KNOWN_HOSTS;
        return 0;
    }
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(hashes); i++) {
        size_t l = strlen(hashes[i].prefix);
        if (!strncmp(v, hashes[i].prefix, l)) {
            t->mode = HKC_HASH;
            t->hash_type = hashes[i].type;
            t->hash_name = hashes[i].name;
            snprintf(t->hash, sizeof(t->hash), "%s", v + l);
            return 0;
        }
    }
    return qimg_error_set(err, -EINVAL, "unknown host_key_check setting (%s)",
                          v);
}

/* The legacy host_key_check string; a json: null, {} or [] there is no
 * string and counts as absent (QEMU's option parsing skips it). */
static const char *legacy_hkc(const struct qimg_opts *o)
{
    long at = qimg_opts_index(o, "host_key_check");
    if (at < 0 || qimg_opts_type(o, (size_t)at) == QIMG_VAL_NULL)
        return NULL;
    return qimg_opts_value(o, (size_t)at);
}

static int hkc_from_opts(const struct qimg_opts *o, struct ssh_target *t,
                         struct qimg_error *err)
{
    const char *mode = qimg_opts_get(o, "host-key-check.mode");
    const char *whole = qimg_opts_get(o, "host-key-check");
    const char *type, *hash;

    /* json: gave the member itself: {} lacks mode, anything else is not
     * an object (QEMU's visitor messages). */
    if (whole && !strcmp(whole, JSON_EMPTY_OBJECT))
        return qimg_error_set(err, -EINVAL, "Parameter 'host-key-check.mode' "
                              "is missing");
    if (whole)
        return qimg_error_set(err, -EINVAL, "Invalid parameter type for "
                              "'host-key-check', expected: object");
    if (!net_opts_have_prefix(o, "host-key-check."))
        return 0;
    if (!mode)
        return qimg_error_set(err, -EINVAL, "Parameter 'host-key-check.mode' "
                              "is missing");
    if (!strcmp(mode, "none")) {
        t->mode = HKC_NONE;
    } else if (!strcmp(mode, "known_hosts")) {
        t->mode = HKC_KNOWN_HOSTS;
    } else if (!strcmp(mode, "hash")) {
        type = qimg_opts_get(o, "host-key-check.type");
        hash = qimg_opts_get(o, "host-key-check.hash");
        if (!type)
            return qimg_error_set(err, -EINVAL, "Parameter "
                                  "'host-key-check.type' is missing");
        if (!strcmp(type, "md5"))
            t->hash_type = SSH_PUBLICKEY_HASH_MD5;
        else if (!strcmp(type, "sha1"))
            t->hash_type = SSH_PUBLICKEY_HASH_SHA1;
        else if (!strcmp(type, "sha256"))
            t->hash_type = SSH_PUBLICKEY_HASH_SHA256;
        else
            return qimg_error_set(err, -EINVAL, "Parameter 'type' does not "
                                  "accept value '%s'", type);
        if (!hash)
            return qimg_error_set(err, -EINVAL, "Parameter "
                                  "'host-key-check.hash' is missing");
        t->mode = HKC_HASH;
        t->hash_name = type[0] == 'm' ? "md5" : type[3] == '1' ? "sha1"
                                                              : "sha256";
        snprintf(t->hash, sizeof(t->hash), "%s", hash);
    } else {
        return qimg_error_set(err, -EINVAL, "Parameter 'mode' does not accept "
                              "value '%s'", mode);
    }
    return 0;
}

/* QEMU's ssh_parse_options: the legacy keys (checked by type first),
 * then the BlockdevOptionsSsh fields. */
static int read_options(const struct qimg_opts *o, struct ssh_target *t,
                        struct qimg_error *err)
{
    const char *host = qimg_opts_get(o, "host");
    const char *port = qimg_opts_get(o, "port");
    const char *hkc = legacy_hkc(o);
    const char *v;
    unsigned long long num;
    int ret;

    memset(t, 0, sizeof(*t));
    if ((ret = net_opt_number(o, "port", 0, &num, err)) < 0)
        return ret;
    if (port && !host)
        return qimg_error_set(err, -EINVAL, "port may not be used without "
                              "host");
    if (hkc && (ret = hkc_from_legacy(hkc, t, err)) < 0)
        return ret;
    t->addr.type = NET_ADDR_INET;
    if (host) {
        snprintf(t->addr.host, sizeof(t->addr.host), "%s", host);
        snprintf(t->addr.port, sizeof(t->addr.port), "%s",
                 port ? port : "22");
    } else {
        if (!net_opts_have_prefix(o, "server."))
            return qimg_error_set(err, -EINVAL, "Parameter 'server' is "
                                  "missing");
        if (!(v = qimg_opts_get(o, "server.host")))
            return qimg_error_set(err, -EINVAL, "Parameter 'server.host' is "
                                  "missing");
        snprintf(t->addr.host, sizeof(t->addr.host), "%s", v);
        if (!(v = qimg_opts_get(o, "server.port")))
            return qimg_error_set(err, -EINVAL, "Parameter 'server.port' is "
                                  "missing");
        snprintf(t->addr.port, sizeof(t->addr.port), "%s", v);
        t->addr.has_ipv4 = qimg_opts_get(o, "server.ipv4") != NULL;
        t->addr.has_ipv6 = qimg_opts_get(o, "server.ipv6") != NULL;
        t->addr.has_to = qimg_opts_get(o, "server.to") != NULL ||
                         qimg_opts_get(o, "server.numeric") != NULL;
    }
    if (!(v = qimg_opts_get(o, "path")))
        return qimg_error_set(err, -EINVAL, "Parameter 'path' is missing");
    snprintf(t->path, sizeof(t->path), "%s", v);
    v = qimg_opts_get(o, "user");
    if (v) {
        snprintf(t->user, sizeof(t->user), "%s", v);
    } else {
        struct passwd *pw = getpwuid(getuid());
        if (!pw)
            return qimg_error_set(err, -errno, "Can't get user name: %s",
                                  strerror(errno));
        snprintf(t->user, sizeof(t->user), "%s", pw->pw_name);
    }
    if (!hkc && (ret = hkc_from_opts(o, t, err)) < 0)
        return ret;
    return 0;
}

/* ---- connecting -------------------------------------------------------------- */

static int session_error(struct ssh_state *s, struct qimg_error *err, int code,
                         const char *what)
{
    if (s->session)
        return qimg_error_set(err, code, "%s: %s (libssh error code: %d)",
                              what, ssh_get_error(s->session),
                              ssh_get_error_code(s->session));
    return qimg_error_set(err, code, "%s", what);
}

static int sftp_error(struct ssh_state *s, struct qimg_error *err, int code,
                      const char *what)
{
    if (s->sftp)
        return qimg_error_set(err, code, "%s: %s (libssh error code: %d, sftp "
                              "error code: %d)", what,
                              ssh_get_error(s->session),
                              ssh_get_error_code(s->session),
                              sftp_get_error(s->sftp));
    return qimg_error_set(err, code, "%s", what);
}

static int check_known_hosts(struct ssh_state *s, struct qimg_error *err)
{
    enum ssh_known_hosts_e state = ssh_session_is_known_server(s->session);

    switch (state) {
    case SSH_KNOWN_HOSTS_OK:
        return 0;
    case SSH_KNOWN_HOSTS_CHANGED: {
        ssh_key key;
        unsigned char *hash = NULL;
        size_t hlen;
        char *fp = NULL;
        enum ssh_keytypes_e type = SSH_KEYTYPE_UNKNOWN;
        if (ssh_get_server_publickey(s->session, &key) == 0) {
            if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash,
                                       &hlen) == 0) {
                fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash,
                                              hlen);
                ssh_clean_pubkey_hash(&hash);
            }
            type = ssh_key_type(key);
            ssh_key_free(key);
        }
        if (fp) {
            qimg_error_set(err, -EINVAL, "host key (%s key with fingerprint "
                           "%s) does not match the one in known_hosts; this "
                           "may be a possible attack",
                           ssh_key_type_to_char(type), fp);
            ssh_string_free_char(fp);
            return -EINVAL;
        }
        return qimg_error_set(err, -EINVAL, "host key does not match the one "
                              "in known_hosts; this may be a possible attack");
    }
    case SSH_KNOWN_HOSTS_OTHER:
        return qimg_error_set(err, -EINVAL, "host key for this server not "
                              "found, another type exists");
    case SSH_KNOWN_HOSTS_UNKNOWN:
        return qimg_error_set(err, -EINVAL, "no host key was found in "
                              "known_hosts");
    case SSH_KNOWN_HOSTS_NOT_FOUND:
        return qimg_error_set(err, -ENOENT, "known_hosts file not found");
    case SSH_KNOWN_HOSTS_ERROR:
        return qimg_error_set(err, -EINVAL, "error while checking the host");
    default:
        return qimg_error_set(err, -EINVAL, "error while checking for known "
                              "server (%d)", (int)state);
    }
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The fingerprint against "xx:xx:..." (colons optional), as QEMU. */
static bool fingerprint_matches(const unsigned char *fp, size_t len,
                                const char *want)
{
    for (; len > 0; len--, fp++) {
        while (*want == ':')
            want++;
        if (hexval(want[0]) < 0 || hexval(want[1]) < 0 ||
            hexval(want[0]) * 16 + hexval(want[1]) != *fp)
            return false;
        want += 2;
    }
    return *want == '\0';
}

static int check_hash(struct ssh_state *s, struct qimg_error *err)
{
    const struct ssh_target *t = &s->t;
    ssh_key key;
    unsigned char *hash;
    size_t hlen;
    const char *keytype;

    if (ssh_get_server_publickey(s->session, &key) != SSH_OK)
        return session_error(s, err, -EINVAL, "failed to read remote host "
                             "key");
    keytype = ssh_key_type_to_char(ssh_key_type(key));
    int r = ssh_get_publickey_hash(key, t->hash_type, &hash, &hlen);
    ssh_key_free(key);
    if (r != 0)
        return session_error(s, err, -EINVAL, "failed reading the hash of "
                             "the server SSH key");
    if (!fingerprint_matches(hash, hlen, t->hash)) {
        char hex[2 * 64 + 1];
        size_t n = QIMG_MIN(hlen, (size_t)64);
        for (size_t i = 0; i < n; i++)
            snprintf(hex + 2 * i, 3, "%02x", hash[i]);
        hex[2 * n] = '\0';
        ssh_clean_pubkey_hash(&hash);
        return qimg_error_set(err, -EPERM, "remote host %s key fingerprint "
                              "'%s:%s' does not match host_key_check '%s:%s'",
                              keytype, t->hash_name, hex, t->hash_name,
                              t->hash);
    }
    ssh_clean_pubkey_hash(&hash);
    return 0;
}

static int authenticate(struct ssh_state *s, struct qimg_error *err)
{
    int r = ssh_userauth_none(s->session, NULL);

    if (r == SSH_AUTH_ERROR)
        return session_error(s, err, -EPERM, "failed to authenticate using "
                             "none authentication");
    if (r == SSH_AUTH_SUCCESS)
        return 0;
    if (ssh_userauth_list(s->session, NULL) & SSH_AUTH_METHOD_PUBLICKEY) {
        r = ssh_userauth_publickey_auto(s->session, NULL, NULL);
        if (r == SSH_AUTH_ERROR)
            return session_error(s, err, -EINVAL, "failed to authenticate "
                                 "using publickey authentication");
        if (r == SSH_AUTH_SUCCESS)
            return 0;
    }
    return qimg_error_set(err, -EPERM, "failed to authenticate using "
                          "publickey authentication and the identities held "
                          "by your ssh-agent");
}

static void disconnect(struct ssh_state *s)
{
    if (s->file)
        sftp_close(s->file);
    if (s->sftp)
        sftp_free(s->sftp);
    if (s->session) {
        ssh_disconnect(s->session);
        ssh_free(s->session);
    }
    s->file = NULL;
    s->sftp = NULL;
    s->session = NULL;
}

static int connect_ssh(struct ssh_state *s, int oflags, int mode,
                       struct qimg_error *err)
{
    const struct ssh_target *t = &s->t;
    sftp_attributes attrs;
    char *end;
    int fd, ret;
    long port;

    errno = 0;
    port = strtol(t->addr.port, &end, 10);
    if (errno || *end || end == t->addr.port || port < 0)
        return qimg_error_set(err, -EINVAL, "Use only numeric port value");
    fd = net_connect(&t->addr, err);
    if (fd < 0)
        return -EIO;
    /* As QEMU: SFTP requests are small, and Nagle's algorithm held each
     * behind the previous one's delayed ack (256 MiB read in 22 s). */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int)) < 0)
        qimg_message(QIMG_MSG_WARNING, "can't set TCP_NODELAY for the ssh "
                     "server %s: %s\n", t->addr.host, strerror(errno));
    s->session = ssh_new();
    if (!s->session) {
        close(fd);
        return session_error(s, err, -EINVAL, "failed to initialize libssh "
                             "session");
    }
    ssh_set_blocking(s->session, 1);
    if (ssh_options_set(s->session, SSH_OPTIONS_USER, t->user) < 0) {
        close(fd);
        ret = session_error(s, err, -EINVAL, "failed to set the user in the "
                            "libssh session");
        goto fail;
    }
    if (ssh_options_set(s->session, SSH_OPTIONS_HOST, t->addr.host) < 0) {
        close(fd);
        ret = session_error(s, err, -EINVAL, "failed to set the host in the "
                            "libssh session");
        goto fail;
    }
    if (port > 0) {
        unsigned int p = (unsigned int)port;
        if (ssh_options_set(s->session, SSH_OPTIONS_PORT, &p) < 0) {
            close(fd);
            ret = session_error(s, err, -EINVAL, "failed to set the port in "
                                "the libssh session");
            goto fail;
        }
    }
    ssh_options_set(s->session, SSH_OPTIONS_COMPRESSION, "none");
    if (ssh_options_parse_config(s->session, NULL) < 0) {
        close(fd);
        ret = session_error(s, err, -EINVAL, "failed to parse ~/.ssh/config");
        goto fail;
    }
    if (ssh_options_set(s->session, SSH_OPTIONS_FD, &fd) < 0) {
        close(fd);
        ret = session_error(s, err, -EINVAL, "failed to set the socket in the "
                            "libssh session");
        goto fail;
    }
    if (ssh_connect(s->session) != SSH_OK) {
        ret = session_error(s, err, -EINVAL, "failed to establish SSH "
                            "session");
        goto fail;
    }
    ret = t->mode == HKC_NONE ? 0
          : t->mode == HKC_HASH ? check_hash(s, err) : check_known_hosts(s, err);
    if (ret == 0)
        ret = authenticate(s, err);
    if (ret < 0)
        goto fail;
    s->sftp = sftp_new(s->session);
    if (!s->sftp) {
        ret = session_error(s, err, -EINVAL, "failed to create sftp handle");
        goto fail;
    }
    if (sftp_init(s->sftp) < 0) {
        ret = sftp_error(s, err, -EINVAL, "failed to initialize sftp handle");
        goto fail;
    }
    s->file = sftp_open(s->sftp, t->path, oflags, (mode_t)mode);
    if (!s->file) {
        char what[4200];
        snprintf(what, sizeof(what), "failed to open remote file '%s'",
                 t->path);
        ret = sftp_error(s, err, -EINVAL, what);
        goto fail;
    }
    sftp_file_set_blocking(s->file);
    attrs = sftp_fstat(s->file);
    if (!attrs) {
        ret = sftp_error(s, err, -EINVAL, "failed to read file attributes");
        goto fail;
    }
    s->size = attrs->size;
    s->regular = attrs->type == SSH_FILEXFER_TYPE_REGULAR;
    sftp_attributes_free(attrs);
    return 0;
fail:
    disconnect(s);
    return ret;
}

/* ---- operations ------------------------------------------------------------------ */

static int grow(struct ssh_state *s, uint64_t size, struct qimg_error *err)
{
    char c = 0;

    if (sftp_seek64(s->file, size - 1) < 0 || sftp_write(s->file, &c, 1) < 0)
        return sftp_error(s, err, -EIO, "Failed to grow file");
    s->size = size;
    return 0;
}

static int ssh_open(struct qimg_storage *st, const struct qimg_opts *opts,
                    unsigned flags, enum qimg_cache cache,
                    struct qimg_error *err)
{
    struct ssh_state *s = calloc(1, sizeof(*s));
    int ret;

    (void)cache;
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = read_options(opts, &s->t, err);
    if (ret == 0)
        ret = connect_ssh(s, flags & QIMG_OPEN_RDWR ? O_RDWR : O_RDONLY, 0,
                          err);
    if (ret < 0) {
        free(s);
        return ret;
    }
    pthread_mutex_init(&s->lock, NULL);
    st->priv = s;
    net_name_as_filename(st);
    return 0;
}

static void ssh_close(struct qimg_storage *st)
{
    struct ssh_state *s = st->priv;
    if (!s)
        return;
    disconnect(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
    st->priv = NULL;
}

static int io_error(struct qimg_error *err)
{
    return qimg_error_set(err, -EIO, "%s", strerror(EIO));
}

/* [off, off+len) one request at a time; *got: the bytes before the end
 * of the file.  Called with s->lock. */
static int read_sync(struct ssh_state *s, uint64_t off, uint8_t *p,
                     size_t len, size_t *got)
{
    *got = 0;
    if (sftp_seek64(s->file, off) < 0)
        return -EIO;
    while (*got < len) {
        ssize_t r = sftp_read(s->file, p + *got,
                              QIMG_MIN(len - *got, (size_t)SSH_READ_CHUNK));
        if (r == 0 || (r < 0 && sftp_get_error(s->sftp) == SSH_FX_EOF))
            break;      /* past the end */
        if (r < 0)
            return -EIO;
        *got += (size_t)r;
    }
    return 0;
}

/* Up to SSH_READ_DEPTH chunks of [off, off+len) requested at once, then
 * collected in order (every request is collected, even after an error:
 * libssh keeps unclaimed replies).  A chunk the server answered short is
 * completed one request at a time; *got as for read_sync.  Called with
 * s->lock. */
static int read_window(struct ssh_state *s, uint64_t off, uint8_t *p,
                       size_t len, size_t *got)
{
    int ids[SSH_READ_DEPTH];
    size_t n = 0, at, short_at = len;
    int ret = 0;

    *got = 0;
    if (sftp_seek64(s->file, off) < 0)
        return -EIO;
    for (at = 0; at < len && n < SSH_READ_DEPTH; at += SSH_READ_CHUNK) {
        ids[n] = sftp_async_read_begin(
            s->file, (uint32_t)QIMG_MIN(len - at, (size_t)SSH_READ_CHUNK));
        if (ids[n] < 0) {
            ret = -EIO;
            break;
        }
        n++;
    }
    for (size_t i = 0; i < n; i++) {
        size_t piece = QIMG_MIN(len - i * SSH_READ_CHUNK,
                                (size_t)SSH_READ_CHUNK);
        int r = sftp_async_read(s->file, p + i * SSH_READ_CHUNK,
                                (uint32_t)piece, (uint32_t)ids[i]);
        if (r < 0)
            ret = -EIO;
        else if ((size_t)r < piece && short_at == len)
            short_at = i * SSH_READ_CHUNK + (size_t)r;
    }
    if (ret < 0)
        return ret;
    if (short_at < len) {       /* short answer or the end: one at a time */
        size_t more;
        ret = read_sync(s, off + short_at, p + short_at, len - short_at,
                        &more);
        *got = short_at + more;
        return ret;
    }
    *got = len;
    return 0;
}

static int ssh_pread(struct qimg_storage *st, uint64_t off, size_t len,
                     void *buf, struct qimg_error *err)
{
    struct ssh_state *s = st->priv;
    const size_t window = (size_t)SSH_READ_DEPTH * SSH_READ_CHUNK;
    uint8_t *p = buf;
    size_t got = 0, part;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    while (ret == 0 && got < len) {
        size_t want = QIMG_MIN(len - got, window);
        ret = read_window(s, off + got, p + got, want, &part);
        got += part;
        if (part < want)
            break;      /* past the end: zeroes, as QEMU pads */
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return io_error(err);
    memset(p + got, 0, len - got);
    return 0;
}

static int ssh_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                      const void *buf, struct qimg_error *err)
{
    struct ssh_state *s = st->priv;
    const uint8_t *p = buf;
    size_t done = 0;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    if (sftp_seek64(s->file, off) < 0)
        ret = -EIO;
    while (ret == 0 && done < len) {
        ssize_t r = sftp_write(s->file, p + done,
                               QIMG_MIN(len - done, (size_t)SSH_WRITE_CHUNK));
        if (r < 0)
            ret = -EIO;
        else
            done += (size_t)r;
    }
    if (off + done > s->size)
        s->size = off + done;
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? io_error(err) : 0;
}

static int ssh_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct ssh_state *s = st->priv;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    if (!sftp_extension_supported(s->sftp, "fsync@openssh.com", "1")) {
        if (!s->flush_warned) {
            qimg_message(QIMG_MSG_WARNING, "ssh server %s does not support "
                         "fsync\n", s->t.addr.host);
            qimg_message(QIMG_MSG_ERROR, "to support fsync, you need "
                         "OpenSSH >= 6.3\n");
            s->flush_warned = true;
        }
    } else if (sftp_fsync(s->file) < 0) {
        ret = -EIO;
    }
    pthread_mutex_unlock(&s->lock);
    return ret < 0 ? io_error(err) : 0;
}

static int64_t ssh_get_size(struct qimg_storage *st)
{
    return (int64_t)((struct ssh_state *)st->priv)->size;
}

static int ssh_truncate(struct qimg_storage *st, uint64_t size,
                        enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct ssh_state *s = st->priv;
    int ret;

    if (prealloc != QIMG_PREALLOC_OFF)
        return net_prealloc_refused(prealloc, err);
    if (size < s->size)
        return qimg_error_set(err, -ENOTSUP, "ssh driver does not support "
                              "shrinking files");
    if (size == s->size)
        return 0;
    pthread_mutex_lock(&s->lock);
    ret = grow(s, size, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ssh://user@host:port/path[?host_key_check=...] unless the address has
 * options a URI cannot carry. */
static bool ssh_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    struct ssh_state *s = st->priv;
    const char *hkc = legacy_hkc(st->options);
    int n;

    if (!s || s->t.addr.has_ipv4 || s->t.addr.has_ipv6 || s->t.addr.has_to)
        return false;
    n = snprintf(buf, len, "ssh://%s@%s:%s%s%s%s", s->t.user, s->t.addr.host,
                 s->t.addr.port, s->t.path, hkc ? "?host_key_check=" : "",
                 hkc ? hkc : "");
    return n >= 0 && (size_t)n < len;
}

static int ssh_create(const char *filename, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    struct ssh_state s;
    uint64_t size = 0;
    int ret;

    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memset(&s, 0, sizeof(s));
    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret == 0) {
        ret = parse_uri(filename, o, err);
        if (ret == -EINVAL && err && !err->code)
            ret = 0;
    }
    if (ret == 0)
        ret = read_options(o, &s.t, err);
    if (ret == 0)
        ret = connect_ssh(&s, O_RDWR | O_CREAT | O_TRUNC, 0644, err);
    if (ret == 0 && size > 0)
        ret = grow(&s, (size + 511) & ~(uint64_t)511, err);
    disconnect(&s);
    qimg_opts_free(o);
    return ret;
}

const struct qimg_storage_ops qimg_storage_ssh = {
    .name = "ssh",
    .protocol = "ssh",
    .create_opts = ssh_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(ssh_create_opts),
    .runtime_opts = ssh_runtime_opts,
    .strong_opts = ssh_strong_opts,
    .parse_filename = ssh_parse_filename,
    .refresh_name = ssh_refresh_name,
    .open = ssh_open,
    .close = ssh_close,
    .pread = ssh_pread,
    .pwrite = ssh_pwrite,
    .flush = ssh_flush,
    .get_size = ssh_get_size,
    .truncate = ssh_truncate,
    .create = ssh_create,
    .no_get_info = true,
};
