/*
 * object.c - --object definitions as qemu-img 7.2 reads them.
 *
 * The definition is a "keyval" list (not a -o list): "TYPE,key=value,..."
 * where only the first element may omit "key=" (it is the qom-type), keys
 * are QAPI names joined by '.', and "help" or "?" asks for help.  Then the
 * checks run in QEMU's order: the type and id, each member's type and the
 * required members (in schema order), unexpected members, the id's syntax,
 * whether qemu-img can create the type at all, duplicate ids, and last the
 * object's own completion (a secret reads its data).
 *
 * Only secrets do anything in qimg.  The other types qemu-img creates are
 * checked as far as they need no resource and then accepted, or refused
 * where creating them needs files, sockets or keys qimg does not use
 * (docs/LIMITS.md).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/block.h"
#include "core/util.h"

/* Bounds on a definition: it comes from the command line. */
#define OBJECT_MAX_KEYS 256
/* QEMU's keyval refuses key fragments of 128 bytes or more. */
#define OBJECT_MAX_FRAGMENT 127
/* A secret file is a key or passphrase, never large (as secret.c). */
#define QIMG_MAX_SECRET_FILE (64 * 1024)
/* Objects (of any type) one command line may define. */
#define OBJECT_MAX_OBJECTS 64

enum member_type {
    M_STR, M_INT, M_INT32, M_BOOL, M_ENUM,
    M_OBJECT,   /* a nested struct: keys "name.x" */
    M_ARRAY,    /* a list: keys "name.0" */
};

struct member {
    const char *name;
    enum member_type type;
    bool required;
    const char *const *values;  /* M_ENUM: NULL-terminated */
    const char *help_type;      /* shown by "TYPE,help"; NULL: not shown */
};

enum object_kind {
    KIND_NONE,          /* in QEMU's schema, but qemu-img cannot create it */
    KIND_SECRET,
    KIND_ACCEPT,        /* created and unused */
    KIND_MAIN_LOOP,
    KIND_THROTTLE_GROUP,
    KIND_TLS_PSK,
    KIND_TLS_X509,
    KIND_TLS_CIPHER_SUITES,
    KIND_PR_MANAGER,
    KIND_SECRET_KEYRING,
};

struct object_type {
    const char *qapi_name;      /* the qom-type value */
    const char *class_name;     /* listed by "help"; NULL: not creatable */
    enum object_kind kind;
    const struct member *members;  /* schema order; for KIND_NONE only the
                                      required ones */
    size_t n_members;
};

static const char *const secret_formats[] = {"raw", "base64", NULL};
static const char *const endpoints[] = {"client", "server", NULL};
static const char *const authz_policies[] = {"deny", "allow", NULL};

#define SECRET_COMMON \
    {"loaded", M_BOOL, false, NULL, NULL}, \
    {"format", M_ENUM, false, secret_formats, "QCryptoSecretFormat"}, \
    {"keyid", M_STR, false, NULL, "string"}, \
    {"iv", M_STR, false, NULL, "string"}
static const struct member secret_members[] = {
    SECRET_COMMON,
    {"data", M_STR, false, NULL, "string"},
    {"file", M_STR, false, NULL, "string"},
};
static const struct member keyring_members[] = {
    SECRET_COMMON,
    {"serial", M_INT32, true, NULL, "int32_t"},
};
static const struct member authz_list_members[] = {
    {"policy", M_ENUM, false, authz_policies, "QAuthZListPolicy"},
    {"rules", M_ARRAY, false, NULL, "QAuthZListRule"},
};
static const struct member authz_simple_members[] = {
    {"identity", M_STR, true, NULL, "string"},
};
static const struct member main_loop_members[] = {
    {"aio-max-batch", M_INT, false, NULL, "int"},
    {"thread-pool-min", M_INT, false, NULL, "int"},
    {"thread-pool-max", M_INT, false, NULL, "int"},
};
static const struct member pr_manager_members[] = {
    {"path", M_STR, true, NULL, "string"},
};
static const struct member thread_context_members[] = {
    {"cpu-affinity", M_ARRAY, false, NULL, "int"},
    {"node-affinity", M_ARRAY, false, NULL, "int"},
};
#define THROTTLE(n) {"x-" n, M_INT, false, NULL, "int"}
static const struct member throttle_members[] = {
    {"limits", M_OBJECT, false, NULL, "ThrottleLimits"},
    THROTTLE("iops-total"), THROTTLE("iops-total-max"),
    THROTTLE("iops-total-max-length"), THROTTLE("iops-read"),
    THROTTLE("iops-read-max"), THROTTLE("iops-read-max-length"),
    THROTTLE("iops-write"), THROTTLE("iops-write-max"),
    THROTTLE("iops-write-max-length"), THROTTLE("bps-total"),
    THROTTLE("bps-total-max"), THROTTLE("bps-total-max-length"),
    THROTTLE("bps-read"), THROTTLE("bps-read-max"),
    THROTTLE("bps-read-max-length"), THROTTLE("bps-write"),
    THROTTLE("bps-write-max"), THROTTLE("bps-write-max-length"),
    THROTTLE("iops-size"),
};
#define TLS_COMMON \
    {"verify-peer", M_BOOL, false, NULL, "bool"}, \
    {"endpoint", M_ENUM, false, endpoints, "QCryptoTLSCredsEndpoint"}, \
    {"dir", M_STR, false, NULL, "string"}, \
    {"priority", M_STR, false, NULL, "string"}
static const struct member tls_members[] = {
    TLS_COMMON,
};
static const struct member tls_anon_members[] = {
    TLS_COMMON,
    {"loaded", M_BOOL, false, NULL, NULL},
};
static const struct member tls_psk_members[] = {
    TLS_COMMON,
    {"loaded", M_BOOL, false, NULL, NULL},
    {"username", M_STR, false, NULL, "string"},
};
static const struct member tls_x509_members[] = {
    TLS_COMMON,
    {"loaded", M_BOOL, false, NULL, NULL},
    {"sanity-check", M_BOOL, false, NULL, "bool"},
    {"passwordid", M_STR, false, NULL, "string"},
};

/* Required members of the types qemu-img 7.2 cannot create, in the order
 * QEMU reports them missing. */
#define REQ(n) {n, M_STR, true, NULL, NULL}
static const struct member req_service[] = {REQ("service")};
static const struct member req_filename[] = {REQ("filename")};
static const struct member req_socketcan[] = {REQ("if"), REQ("canbus")};
static const struct member req_colo[] = {
    REQ("primary_in"), REQ("secondary_in"), REQ("outdev"), REQ("iothread"),
};
static const struct member req_chardev[] = {REQ("chardev")};
static const struct member req_addr[] = {REQ("addr")};
static const struct member req_netdev[] = {REQ("netdev")};
static const struct member req_filter_buffer[] = {REQ("netdev"), REQ("interval")};
static const struct member req_filter_dump[] = {REQ("netdev"), REQ("file")};
static const struct member req_filter_mirror[] = {REQ("netdev"), REQ("outdev")};
static const struct member req_name[] = {REQ("name")};
static const struct member req_evdev[] = {REQ("evdev")};
static const struct member req_size[] = {REQ("size")};
static const struct member req_mem_file[] = {REQ("size"), REQ("mem-path")};
static const struct member req_sev[] = {REQ("reduced-phys-bits")};
static const struct member req_remote[] = {REQ("fd"), REQ("devid")};
static const struct member req_socket[] = {REQ("socket")};

#define TYPE(q, c, k, m) {q, c, k, m, QIMG_ARRAY_SIZE(m)}
#define NOT_CREATABLE(q) {q, NULL, KIND_NONE, NULL, 0}
#define NOT_CREATABLE_REQ(q, m) {q, NULL, KIND_NONE, m, QIMG_ARRAY_SIZE(m)}

/* QEMU 7.2's ObjectType enum (as Debian builds it), alphabetically. */
static const struct object_type object_types[] = {
    TYPE("authz-list", "authz-list", KIND_ACCEPT, authz_list_members),
    /* qemu-img lists the class "authz-list-file", which its schema names
     * "authz-listfile": neither name creates one */
    NOT_CREATABLE_REQ("authz-listfile", req_filename),
    NOT_CREATABLE_REQ("authz-pam", req_service),
    TYPE("authz-simple", "authz-simple", KIND_ACCEPT, authz_simple_members),
    NOT_CREATABLE("can-bus"),
    NOT_CREATABLE_REQ("can-host-socketcan", req_socketcan),
    NOT_CREATABLE_REQ("colo-compare", req_colo),
    NOT_CREATABLE("cryptodev-backend"),
    NOT_CREATABLE("cryptodev-backend-builtin"),
    NOT_CREATABLE_REQ("cryptodev-vhost-user", req_chardev),
    NOT_CREATABLE_REQ("dbus-vmstate", req_addr),
    NOT_CREATABLE_REQ("filter-buffer", req_filter_buffer),
    NOT_CREATABLE_REQ("filter-dump", req_filter_dump),
    NOT_CREATABLE_REQ("filter-mirror", req_filter_mirror),
    NOT_CREATABLE_REQ("filter-redirector", req_netdev),
    NOT_CREATABLE_REQ("filter-replay", req_netdev),
    NOT_CREATABLE_REQ("filter-rewriter", req_netdev),
    NOT_CREATABLE_REQ("input-barrier", req_name),
    NOT_CREATABLE_REQ("input-linux", req_evdev),
    NOT_CREATABLE("iothread"),
    TYPE("main-loop", "main-loop", KIND_MAIN_LOOP, main_loop_members),
    NOT_CREATABLE_REQ("memory-backend-epc", req_size),
    NOT_CREATABLE_REQ("memory-backend-file", req_mem_file),
    NOT_CREATABLE_REQ("memory-backend-memfd", req_size),
    NOT_CREATABLE_REQ("memory-backend-ram", req_size),
    NOT_CREATABLE("pef-guest"),
    TYPE("pr-manager-helper", "pr-manager-helper", KIND_PR_MANAGER,
         pr_manager_members),
    NOT_CREATABLE_REQ("qtest", req_chardev),
    NOT_CREATABLE("rng-builtin"),
    NOT_CREATABLE_REQ("rng-egd", req_chardev),
    NOT_CREATABLE("rng-random"),
    NOT_CREATABLE("s390-pv-guest"),
    TYPE("secret", "secret", KIND_SECRET, secret_members),
    TYPE("secret_keyring", "secret_keyring", KIND_SECRET_KEYRING,
         keyring_members),
    NOT_CREATABLE_REQ("sev-guest", req_sev),
    TYPE("thread-context", "thread-context", KIND_ACCEPT,
         thread_context_members),
    TYPE("throttle-group", "throttle-group", KIND_THROTTLE_GROUP,
         throttle_members),
    TYPE("tls-cipher-suites", "tls-cipher-suites", KIND_TLS_CIPHER_SUITES,
         tls_members),
    TYPE("tls-creds-anon", "tls-creds-anon", KIND_ACCEPT, tls_anon_members),
    TYPE("tls-creds-psk", "tls-creds-psk", KIND_TLS_PSK, tls_psk_members),
    TYPE("tls-creds-x509", "tls-creds-x509", KIND_TLS_X509, tls_x509_members),
    NOT_CREATABLE_REQ("x-remote-object", req_remote),
    NOT_CREATABLE_REQ("x-vfio-user-server", req_socket),
};

/* The classes "--object help" lists: what qemu-img 7.2 can create, by
 * class name, sorted. */
static const char *const listed_classes[] = {
    "authz-list", "authz-list-file", "authz-simple", "main-loop",
    "pr-manager-helper", "secret", "secret_keyring", "thread-context",
    "throttle-group", "tls-cipher-suites", "tls-creds-anon", "tls-creds-psk",
    "tls-creds-x509",
};

/* The ids defined so far (QEMU's object root: one namespace for all). */
static char *object_ids[OBJECT_MAX_OBJECTS];
static size_t n_object_ids;
static bool have_main_loop;

/* ---- keyval parsing ---------------------------------------------------- */

struct keyval {
    char *key;      /* full dotted key */
    char *value;
};

struct keyvals {
    struct keyval v[OBJECT_MAX_KEYS];
    size_t n;
    bool help;
};

static void keyvals_free(struct keyvals *kv)
{
    for (size_t i = 0; i < kv->n; i++) {
        free(kv->v[i].key);
        free(kv->v[i].value);
    }
    kv->n = 0;
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_alnum(char c)
{
    return is_alpha(c) || (c >= '0' && c <= '9');
}

/* Length of the QAPI name at s (QEMU's parse_qapi_name, not complete), or
 * 0.  A downstream "__RFQDN_" prefix is allowed. */
static size_t qapi_name_len(const char *s)
{
    const char *p = s;

    if (*p == '_') {
        if (*++p != '_')
            return 0;
        while (*++p && (is_alnum(*p) || *p == '-' || *p == '.'))
            ;
        if (*p != '_')
            return 0;
        p++;
    }
    if (!is_alpha(*p))
        return 0;
    while (*++p && (is_alnum(*p) || *p == '-' || *p == '_'))
        ;
    return (size_t)(p - s);
}

/* Check the key fragments of key[0..len): names, or list indexes after the
 * first. */
static int check_key(const char *key, size_t len, struct qimg_error *err)
{
    const char *s = key, *end = key + len;

    for (;;) {
        size_t n = 0;
        if (s != key && *s >= '0' && *s <= '9')
            while (s + n < end && s[n] >= '0' && s[n] <= '9')
                n++;
        else
            n = qapi_name_len(s);
        if (s + n > end)
            n = (size_t)(end - s);
        if (!n || (s + n < end && s[n] != '.'))
            return qimg_error_set(err, -EINVAL, "Invalid parameter '%.*s'",
                                  (int)len, key);
        if (n > OBJECT_MAX_FRAGMENT)
            return qimg_error_set(err, -EINVAL, "Parameter%s '%.*s' is too "
                                  "long", s != key || s + n != end
                                  ? " fragment" : "", (int)n, s);
        s += n;
        if (s == end)
            return 0;
        s++;
    }
}

/* The top-level name of a dotted key: its first fragment (a downstream
 * "__RFQDN_name" holds dots of its own). */
static size_t head_len(const char *key)
{
    size_t n = key[0] == '_' ? qapi_name_len(key) : 0;
    return n ? n : strcspn(key, ".");
}

/* A nested key ("a.b") and a scalar ("a") cannot both be given. */
static int check_consistent(const struct keyvals *kv, const char *key,
                            struct qimg_error *err)
{
    size_t h = head_len(key);

    for (size_t i = 0; i < kv->n; i++) {
        const char *o = kv->v[i].key;
        if (head_len(o) == h && !strncmp(o, key, h) &&
            (o[h] == '.') != (key[h] == '.'))
            return qimg_error_set(err, -EINVAL, "Parameters '%.*s.*' used "
                                  "inconsistently", (int)h, key);
    }
    return 0;
}

static int keyvals_put(struct keyvals *kv, const char *key, size_t klen,
                       const char *val, size_t vlen, struct qimg_error *err)
{
    char *k = strndup(key, klen), *v = malloc(vlen + 1);
    size_t i;
    int ret;

    if (!k || !v) {
        free(k);
        free(v);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    /* un-double the commas of the value */
    for (size_t a = 0, b = 0; a <= vlen; a++, b++) {
        if (a < vlen && val[a] == ',')
            a++;
        v[b] = a < vlen ? val[a] : '\0';
    }
    ret = check_consistent(kv, k, err);
    for (i = 0; !ret && i < kv->n; i++) {
        if (!strcmp(kv->v[i].key, k)) {     /* a later value wins */
            free(kv->v[i].value);
            kv->v[i].value = v;
            free(k);
            return 0;
        }
    }
    if (!ret && kv->n == OBJECT_MAX_KEYS)
        ret = qimg_error_set(err, -E2BIG, "Too many parameters");
    if (ret < 0) {
        free(k);
        free(v);
        return ret;
    }
    kv->v[kv->n].key = k;
    kv->v[kv->n++].value = v;
    return 0;
}

/* Length of a value starting at s: up to an unescaped ',' or the end. */
static size_t value_len(const char *s)
{
    size_t n = 0;
    while (s[n] && (s[n] != ',' || s[n + 1] == ','))
        n += s[n] == ',' ? 2 : 1;
    return n;
}

static int keyval_parse(struct keyvals *kv, const char *s,
                        struct qimg_error *err)
{
    bool first = true;
    int ret;

    while (*s) {
        size_t len = strcspn(s, "=,");
        if (len && s[len] != '=') {
            if ((len == 4 && !strncmp(s, "help", 4)) ||
                (len == 1 && *s == '?')) {
                kv->help = true;
                s += len + (s[len] == ',');
                first = false;
                continue;
            }
            if (first) {
                /* the qom-type, the only key that may be left out (its
                 * value ends at the first comma: no escapes) */
                ret = keyvals_put(kv, "qom-type", 8, s, len, err);
                if (ret < 0)
                    return ret;
                s += len + (s[len] == ',');
                first = false;
                continue;
            }
        }
        ret = check_key(s, len, err);
        if (ret < 0)
            return ret;
        if (s[len] != '=')
            return qimg_error_set(err, -EINVAL, "Expected '=' after "
                                  "parameter '%.*s'", (int)len, s);
        size_t vlen = value_len(s + len + 1);
        ret = keyvals_put(kv, s, len, s + len + 1, vlen, err);
        if (ret < 0)
            return ret;
        s += len + 1 + vlen;
        if (*s == ',')
            s++;
        first = false;
    }
    return 0;
}

static const char *kv_get(const struct keyvals *kv, const char *key)
{
    for (size_t i = 0; i < kv->n; i++)
        if (!strcmp(kv->v[i].key, key))
            return kv->v[i].value;
    return NULL;
}

/* Whether any key is key or nested under it. */
static bool kv_has_head(const struct keyvals *kv, const char *name,
                        bool *nested)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < kv->n; i++) {
        const char *k = kv->v[i].key;
        if (head_len(k) == n && !strncmp(k, name, n)) {
            *nested = k[n] == '.';
            return true;
        }
    }
    return false;
}

/* ---- help -------------------------------------------------------------- */

static const struct object_type *find_type(const char *name)
{
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(object_types); i++)
        if (!strcmp(object_types[i].qapi_name, name))
            return &object_types[i];
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "TYPE options:" and the settable properties, sorted; NULL when qemu-img
 * has no such class. */
static char *type_help(const char *class_name)
{
    const struct object_type *t = NULL;
    const char *lines[32];
    size_t n = 0, len = 0;
    char *out, *p;


    for (size_t i = 0; i < QIMG_ARRAY_SIZE(object_types); i++)
        if (object_types[i].class_name &&
            !strcmp(object_types[i].class_name, class_name))
            t = &object_types[i];
    if (!t && strcmp(class_name, "authz-list-file"))
        return NULL;
    if (!t) {
        static const char text[] = "authz-list-file options:\n"
                                   "  filename=<string>\n"
                                   "  refresh=<bool>\n";
        return strdup(text);
    }
    /* QEMU sorts the whole "name=<type>" lines */
    for (size_t i = 0; i < t->n_members && n < QIMG_ARRAY_SIZE(lines); i++) {
        char *line;
        if (!t->members[i].help_type)
            continue;
        if (asprintf(&line, "  %s=<%s>\n", t->members[i].name,
                     t->members[i].help_type) < 0)
            break;
        lines[n++] = line;
        len += strlen(line);
    }
    qsort(lines, n, sizeof(lines[0]), cmp_str);
    len += strlen(class_name) + 16;
    out = p = malloc(len);
    if (out) {
        p += sprintf(p, "%s options:\n", class_name);
        for (size_t i = 0; i < n; i++)
            p = stpcpy(p, lines[i]);
    }
    for (size_t i = 0; i < n; i++)
        free((char *)lines[i]);
    return out;
}

static char *types_help(void)
{
    size_t len = 64;
    char *out, *p;

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(listed_classes); i++)
        len += strlen(listed_classes[i]) + 3;
    out = p = malloc(len);
    if (!out)
        return NULL;
    p += sprintf(p, "List of user creatable objects:\n");
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(listed_classes); i++)
        p += sprintf(p, "  %s\n", listed_classes[i]);
    return out;
}

/* ---- member checks ----------------------------------------------------- */

/* QEMU's qemu_strtoi64(s, NULL, 0, &v) over the whole value. */
static bool parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 0);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const on[] = {"on", "yes", "true", "y"};
    static const char *const off[] = {"off", "no", "false", "n"};

    for (size_t i = 0; i < 4; i++) {
        if (!strcmp(s, on[i]) || !strcmp(s, off[i])) {
            *out = !strcmp(s, on[i]);
            return true;
        }
    }
    return false;
}

static int check_member(const struct member *m, const struct keyvals *kv,
                        struct qimg_error *err)
{
    bool nested = false;
    const char *v;
    int64_t n;
    bool b;

    if (!kv_has_head(kv, m->name, &nested)) {
        if (m->required)
            return qimg_error_set(err, -EINVAL, "Parameter '%s' is missing",
                                  m->name);
        return 0;
    }
    if (m->type == M_OBJECT || m->type == M_ARRAY) {
        if (!nested)
            return qimg_error_set(err, -EINVAL, "Invalid parameter type for "
                                  "'%s', expected: %s", m->name,
                                  m->type == M_OBJECT ? "object" : "array");
        return 0;
    }
    if (nested)
        return qimg_error_set(err, -EINVAL, "Parameters '%s.*' are "
                              "unexpected", m->name);
    v = kv_get(kv, m->name);
    switch (m->type) {
    case M_INT:
        if (!parse_int(v, &n))
            return qimg_error_set(err, -EINVAL, "Parameter '%s' expects "
                                  "integer", m->name);
        break;
    case M_INT32:
        if (!parse_int(v, &n))
            return qimg_error_set(err, -EINVAL, "Parameter '%s' expects "
                                  "integer", m->name);
        if (n < INT32_MIN || n > INT32_MAX)
            return qimg_error_set(err, -EINVAL, "Parameter '%s' expects "
                                  "int32_t", m->name);
        break;
    case M_BOOL:
        if (!parse_bool(v, &b))
            return qimg_error_set(err, -EINVAL, "Parameter '%s' expects 'on' "
                                  "or 'off'", m->name);
        break;
    case M_ENUM:
        for (size_t i = 0; m->values[i]; i++)
            if (!strcmp(v, m->values[i]))
                return 0;
        return qimg_error_set(err, -EINVAL, "Parameter '%s' does not accept "
                              "value '%s'", m->name, v);
    default:
        break;
    }
    return 0;
}

static int check_unexpected(const struct object_type *t,
                            const struct keyvals *kv, struct qimg_error *err)
{
    for (size_t i = 0; i < kv->n; i++) {
        const char *k = kv->v[i].key;
        size_t h = head_len(k);
        bool known = (h == 8 && !strncmp(k, "qom-type", 8)) ||
                     (h == 2 && !strncmp(k, "id", 2));

        for (size_t j = 0; !known && j < t->n_members; j++)
            known = strlen(t->members[j].name) == h &&
                    !strncmp(t->members[j].name, k, h);
        if (!known)
            return qimg_error_set(err, -EINVAL, "Parameter '%.*s' is "
                                  "unexpected", (int)h, k);
    }
    return 0;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static bool id_wellformed(const char *id)
{
    if (!is_alpha(*id))
        return false;
    for (const char *p = id + 1; *p; p++)
        if (!is_alnum(*p) && !strchr("-._", *p))
            return false;
    return true;
}

/* ---- completion of the types qimg knows -------------------------------- */

/* The definition of a secret, rebuilt for qimg_secret_add(): every value
 * escaped again. */
static char *secret_def(const struct keyvals *kv, const char *data)
{
    size_t len = 32 + (data ? 2 * strlen(data) + 8 : 0);
    char *out, *p;

    for (size_t i = 0; i < kv->n; i++)
        len += strlen(kv->v[i].key) + 2 * strlen(kv->v[i].value) + 2;
    out = p = malloc(len);
    if (!out)
        return NULL;
    p += sprintf(p, "qom-type=secret");
    for (size_t i = 0; i < kv->n + (data != NULL); i++) {
        const char *k = i < kv->n ? kv->v[i].key : "data";
        const char *v = i < kv->n ? kv->v[i].value : data;
        if (!strcmp(k, "qom-type") || !strcmp(k, "loaded") ||
            !strcmp(k, "serial"))
            continue;
        p += sprintf(p, ",%s=", k);
        for (; *v; v++) {
            if (*v == ',')
                *p++ = ',';
            *p++ = *v;
        }
    }
    *p = '\0';
    return out;
}

/* What QEMU accepts as base64 before decoding (its qbase64_decode()). */
static int check_base64(const char *s, size_t len, struct qimg_error *err)
{
    static const char valid[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz0123456789+/=\n";

    if (memchr(s, '\0', len))
        return qimg_error_set(err, -EINVAL, "Base64 data contains embedded "
                              "NUL characters");
    if (strspn(s, valid) != len)
        return qimg_error_set(err, -EINVAL, "Base64 data contains invalid "
                              "characters");
    return 0;
}

/* A secret file as QEMU reads it (GLib's g_file_get_contents(), whose
 * messages QEMU quotes), checked for base64 when that is its format. */
static int check_secret_file(const char *path, bool base64,
                             struct qimg_error *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len;
    int ret = 0;

    if (!f)
        return qimg_error_set(err, -errno, "Unable to read %s: Failed to "
                              "open file \u201c%s\u201d: %s", path, path,
                              strerror(errno));
    buf = malloc(QIMG_MAX_SECRET_FILE + 1);
    if (!buf) {
        fclose(f);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    len = fread(buf, 1, QIMG_MAX_SECRET_FILE + 1, f);
    if (ferror(f))
        ret = qimg_error_set(err, -errno, "Unable to read %s: Error reading "
                             "file \u201c%s\u201d: %s", path, path,
                             strerror(errno));
    else if (len > QIMG_MAX_SECRET_FILE)
        ret = qimg_error_set(err, -EFBIG, "Unable to read %s: larger than "
                             "qimg's limit of %d bytes for a secret", path,
                             QIMG_MAX_SECRET_FILE);
    else if (base64)
        ret = check_base64(buf, len, err);
    fclose(f);
    free(buf);
    return ret;
}

/* The checks of a secret's completion, in QEMU's order, before qimg's
 * secret store reads it. */
static int check_secret_source(const struct keyvals *kv, const char *data,
                               struct qimg_error *err)
{
    const char *file = kv_get(kv, "file"), *format = kv_get(kv, "format");
    const char *keyid = kv_get(kv, "keyid");
    bool base64 = format && !strcmp(format, "base64");
    int ret;

    if (!data)
        data = kv_get(kv, "data");
    if (data && file)
        return qimg_error_set(err, -EINVAL, "'file' and 'data' are mutually "
                              "exclusive");
    if (!data && !file)
        return qimg_error_set(err, -EINVAL, "Either 'file' or 'data' must be "
                              "provided");
    ret = file ? check_secret_file(file, base64, err)
               : base64 ? check_base64(data, strlen(data), err) : 0;
    if (ret < 0 || !keyid)
        return ret;
    /* the key is looked up once the data is read: this secret itself is
     * registered by then, without data */
    if (!strcmp(keyid, kv_get(kv, "id")))
        return qimg_error_set(err, -EINVAL, "Secret with id '%s' has no data",
                              keyid);
    if (!qimg_secret_get(keyid, NULL))
        return qimg_error_set(err, -EINVAL, "No secret with id '%s'", keyid);
    return 0;
}

static int add_secret(const struct keyvals *kv, const char *data,
                      struct qimg_error *err)
{
    char *def;
    int ret = check_secret_source(kv, data, err);

    if (ret < 0)
        return ret;
    def = secret_def(kv, data);
    if (!def)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_secret_add(def, err);
    free(def);
    return ret;
}

/* secret_keyring: the payload of a key in the kernel's keyrings
 * (keyctl(KEYCTL_READ), no library needed), then a secret as any other. */
#define KEYCTL_READ_OP 11
/* A key payload is a passphrase or key, never large. */
#define KEYRING_MAX_PAYLOAD 4096

static int add_keyring_secret(const struct keyvals *kv,
                              struct qimg_error *err)
{
    int64_t serial = 0;
    char buf[KEYRING_MAX_PAYLOAD + 1];
    long n;

    parse_int(kv_get(kv, "serial"), &serial);
    n = syscall(SYS_keyctl, KEYCTL_READ_OP, (long)serial, buf,
                (long)KEYRING_MAX_PAYLOAD);
    if (n < 0)
        return qimg_error_set(err, -errno, "Unable to read serial key %08x: "
                              "%s", (unsigned)(int32_t)serial,
                              strerror(errno));
    if (n > KEYRING_MAX_PAYLOAD || memchr(buf, '\0', (size_t)n))
        return qimg_error_set(err, -ENOTSUP, "qimg does not support key "
                              "payloads of %ld bytes or with NUL bytes", n);
    buf[n] = '\0';
    return add_secret(kv, buf, err);
}

static int check_main_loop(const struct keyvals *kv, struct qimg_error *err)
{
    static const char *const names[] = {
        "aio-max-batch", "thread-pool-min", "thread-pool-max",
    };
    int64_t v[3] = {0, 0, 64};

    for (size_t i = 0; i < 3; i++) {
        const char *s = kv_get(kv, names[i]);
        if (s && parse_int(s, &v[i]) && v[i] < 0)
            return qimg_error_set(err, -EINVAL, "%s value must be in range "
                                  "[0, %" PRId64 "]", names[i], INT64_MAX);
    }
    if (v[1] > v[2] || v[1] > INT_MAX || v[2] > INT_MAX)
        return qimg_error_set(err, -EINVAL, "bad thread-pool-min/"
                              "thread-pool-max values");
    if (have_main_loop)
        return qimg_error_set(err, -EINVAL, "only one main-loop instance "
                              "allowed");
    have_main_loop = true;
    return 0;
}

static int check_throttle_group(const struct keyvals *kv,
                                struct qimg_error *err)
{
    for (size_t i = 0; i < kv->n; i++) {
        int64_t v;
        if (!strncmp(kv->v[i].key, "x-", 2) &&
            parse_int(kv->v[i].value, &v) && v < 0)
            return qimg_error_set(err, -EINVAL, "Property values cannot be "
                                  "negative");
    }
    return 0;
}

/* TLS credentials: the first file QEMU loads from dir= must exist; qimg
 * has no TLS client, so it stops there. */
static int check_tls_files(const struct keyvals *kv, const char *file,
                           const char *type, struct qimg_error *err)
{
    const char *dir = kv_get(kv, "dir");
    char path[4096];

    if (!dir)
        return qimg_error_set(err, -EINVAL, "Missing 'dir' property value");
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (access(path, R_OK) < 0)
        return qimg_error_set(err, -errno, "Unable to access credentials "
                              "%s: %s", path, strerror(errno));
    return qimg_error_set(err, -ENOTSUP, "qimg does not support '%s' "
                          "objects", type);
}

/* The persistent reservation helper must be listening on path; qimg does
 * no SCSI reservations, so an object it could connect to is unused. */
static int check_pr_manager(const struct keyvals *kv, struct qimg_error *err)
{
    const char *path = kv_get(kv, "path");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ret = 0;

    if (fd < 0)
        return qimg_error_set(err, -errno, "Failed to connect to '%s': %s",
                              path, strerror(errno));
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        ret = qimg_error_set(err, -errno, "Failed to connect to '%s': %s",
                             path, strerror(errno));
    close(fd);
    return ret;
}

static int complete_object(const struct object_type *t,
                           const struct keyvals *kv, struct qimg_error *err)
{
    switch (t->kind) {
    case KIND_SECRET:
        return add_secret(kv, NULL, err);
    case KIND_SECRET_KEYRING:
        return add_keyring_secret(kv, err);
    case KIND_MAIN_LOOP:
        return check_main_loop(kv, err);
    case KIND_THROTTLE_GROUP:
        return check_throttle_group(kv, err);
    case KIND_TLS_PSK:
        return check_tls_files(kv, "keys.psk", t->qapi_name, err);
    case KIND_TLS_X509:
        return check_tls_files(kv, "ca-cert.pem", t->qapi_name, err);
    case KIND_TLS_CIPHER_SUITES:
        if (!kv_get(kv, "priority"))
            return qimg_error_set(err, -EINVAL, "'priority' property is not "
                                  "set");
        return 0;
    case KIND_PR_MANAGER:
        return check_pr_manager(kv, err);
    case KIND_ACCEPT:
    case KIND_NONE:
        break;
    }
    return 0;
}

/* ---- the entry point --------------------------------------------------- */

static int add_id(const char *id, struct qimg_error *err)
{
    for (size_t i = 0; i < n_object_ids; i++)
        if (!strcmp(object_ids[i], id))
            return qimg_error_set(err, -EEXIST, "attempt to add duplicate "
                                  "property '%s' to object (type "
                                  "'container')", id);
    if (n_object_ids == OBJECT_MAX_OBJECTS)
        return qimg_error_set(err, -E2BIG, "Too many objects");
    object_ids[n_object_ids] = strdup(id);
    if (!object_ids[n_object_ids])
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    n_object_ids++;
    return 0;
}

static void remove_id(const char *id)
{
    for (size_t i = 0; i < n_object_ids; i++) {
        if (!strcmp(object_ids[i], id)) {
            free(object_ids[i]);
            object_ids[i] = object_ids[--n_object_ids];
            return;
        }
    }
}

static int check_and_add(const struct keyvals *kv, struct qimg_error *err)
{
    const char *type = kv_get(kv, "qom-type"), *id = kv_get(kv, "id");
    const struct object_type *t;
    int ret;

    if (!type)
        return qimg_error_set(err, -EINVAL, "Parameter 'qom-type' is "
                              "missing");
    t = find_type(type);
    if (!t)
        return qimg_error_set(err, -EINVAL, "Parameter 'qom-type' does not "
                              "accept value '%s'", type);
    if (!id)
        return qimg_error_set(err, -EINVAL, "Parameter 'id' is missing");
    for (size_t i = 0; i < t->n_members; i++)
        if ((ret = check_member(&t->members[i], kv, err)) < 0)
            return ret;
    if (t->kind != KIND_NONE && (ret = check_unexpected(t, kv, err)) < 0)
        return ret;
    if (!id_wellformed(id))
        return qimg_error_set(err, -EINVAL, "Parameter 'id' expects an "
                              "identifier\nIdentifiers consist of letters, "
                              "digits, '-', '.', '_', starting with a "
                              "letter.");
    if (t->kind == KIND_NONE)
        return qimg_error_set(err, -EINVAL, "invalid object type: %s", type);
    if (kv_get(kv, "loaded"))
        return qimg_error_set(err, -EINVAL, "Property '%s.loaded' is not "
                              "writable", t->qapi_name);
    if ((ret = add_id(id, err)) < 0)
        return ret;
    ret = complete_object(t, kv, err);
    if (ret < 0)
        remove_id(id);
    return ret;
}

int qimg_object_add(const char *def, char **help, struct qimg_error *err)
{
    struct keyvals *kv = calloc(1, sizeof(*kv));
    int ret;

    *help = NULL;
    if (!kv)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = keyval_parse(kv, def, err);
    if (!ret && kv->help) {
        const char *type = kv_get(kv, "qom-type");
        *help = type && strcmp(type, "help") ? type_help(type) : NULL;
        if (!*help)
            *help = types_help();
        if (!*help)
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    } else if (!ret) {
        ret = check_and_add(kv, err);
    }
    keyvals_free(kv);
    free(kv);
    return ret;
}
