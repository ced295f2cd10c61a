/*
 * opts.c - ordered key=value option lists ("-o a=b,c=d", --image-opts) and
 * their validation against option descriptors.
 *
 * Syntax as QEMU's QemuOpts: elements separated by ',', a literal comma
 * written ",,"; an element without '=' is a boolean "on" (or the value of an
 * implied first key).  Later assignments replace earlier ones.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

/* Bound on the number of options: they come from the command line or a
 * json: filename, never from image content, but stay defensive. */
#define QIMG_OPTS_MAX 1024

struct qimg_opt_pair {
    char *key;
    char *value;
    enum qimg_val_type type;    /* what JSON type the value came as */
    char *orig;     /* the text as given, when validation normalised it */
};

struct qimg_opts {
    struct qimg_opt_pair *v;
    size_t n, cap;
};

struct qimg_opts *qimg_opts_new(void)
{
    return calloc(1, sizeof(struct qimg_opts));
}

void qimg_opts_free(struct qimg_opts *opts)
{
    if (!opts)
        return;
    for (size_t i = 0; i < opts->n; i++) {
        free(opts->v[i].key);
        free(opts->v[i].value);
        free(opts->v[i].orig);
    }
    free(opts->v);
    free(opts);
}

static ssize_t find(const struct qimg_opts *opts, const char *key)
{
    if (!opts)
        return -1;
    for (size_t i = 0; i < opts->n; i++)
        if (!strcmp(opts->v[i].key, key))
            return (ssize_t)i;
    return -1;
}

int qimg_opts_set(struct qimg_opts *opts, const char *key, const char *value)
{
    return qimg_opts_set_typed(opts, key, value, QIMG_VAL_STRING);
}

int qimg_opts_set_typed(struct qimg_opts *opts, const char *key,
                        const char *value, enum qimg_val_type type)
{
    ssize_t i = find(opts, key);
    char *v = strdup(value);

    if (!v)
        return -ENOMEM;
    if (i >= 0) {
        free(opts->v[i].value);
        free(opts->v[i].orig);
        opts->v[i].value = v;
        opts->v[i].orig = NULL;
        opts->v[i].type = type;
        return 0;
    }
    if (opts->n >= QIMG_OPTS_MAX) {
        free(v);
        return -E2BIG;
    }
    if (opts->n == opts->cap) {
        size_t cap = opts->cap ? opts->cap * 2 : 8;
        struct qimg_opt_pair *nv = realloc(opts->v, cap * sizeof(*nv));
        if (!nv) {
            free(v);
            return -ENOMEM;
        }
        opts->v = nv;
        opts->cap = cap;
    }
    opts->v[opts->n].key = strdup(key);
    if (!opts->v[opts->n].key) {
        free(v);
        return -ENOMEM;
    }
    opts->v[opts->n].orig = NULL;
    opts->v[opts->n].type = type;
    opts->v[opts->n++].value = v;
    return 0;
}

long qimg_opts_index(const struct qimg_opts *opts, const char *key)
{
    return find(opts, key);
}

enum qimg_val_type qimg_opts_type(const struct qimg_opts *opts, size_t i)
{
    return opts->v[i].type;
}

const char *qimg_opts_get(const struct qimg_opts *opts, const char *key)
{
    ssize_t i = find(opts, key);
    return i >= 0 ? opts->v[i].value : NULL;
}

const char *qimg_opts_get_orig(const struct qimg_opts *opts, const char *key)
{
    ssize_t i = find(opts, key);
    if (i < 0)
        return NULL;
    return opts->v[i].orig ? opts->v[i].orig : opts->v[i].value;
}

/* Replace entry i's value by its normalised form, keeping the text. */
static int normalise(struct qimg_opts *opts, size_t i, const char *value)
{
    char *v = strdup(value);

    if (!v)
        return -ENOMEM;
    if (!opts->v[i].orig)
        opts->v[i].orig = opts->v[i].value;
    else
        free(opts->v[i].value);
    opts->v[i].value = v;
    return 0;
}

bool qimg_opts_del(struct qimg_opts *opts, const char *key)
{
    ssize_t i = find(opts, key);
    if (i < 0)
        return false;
    free(opts->v[i].key);
    free(opts->v[i].value);
    free(opts->v[i].orig);
    memmove(&opts->v[i], &opts->v[i + 1], (opts->n - i - 1) * sizeof(opts->v[0]));
    opts->n--;
    return true;
}

size_t qimg_opts_count(const struct qimg_opts *opts)
{
    return opts ? opts->n : 0;
}

const char *qimg_opts_key(const struct qimg_opts *opts, size_t i)
{
    return opts->v[i].key;
}

const char *qimg_opts_value(const struct qimg_opts *opts, size_t i)
{
    return opts->v[i].value;
}

struct qimg_opts *qimg_opts_dup(const struct qimg_opts *opts)
{
    struct qimg_opts *d = qimg_opts_new();
    if (!d)
        return NULL;
    for (size_t i = 0; opts && i < opts->n; i++) {
        if (qimg_opts_set_typed(d, opts->v[i].key, opts->v[i].value,
                                opts->v[i].type) < 0 ||
            (opts->v[i].orig &&
             !(d->v[d->n - 1].orig = strdup(opts->v[i].orig)))) {
            qimg_opts_free(d);
            return NULL;
        }
    }
    return d;
}

/* Copy a value (up to an unescaped ',' or the end) into out, un-doubling
 * commas. */
static const char *take_value(const char *s, char *out)
{
    size_t n = 0;
    while (*s) {
        if (*s == ',') {
            if (s[1] != ',')
                break;
            s++;
        }
        out[n++] = *s++;
    }
    out[n] = '\0';
    return s;
}

/* Copy a key (up to the first '=' or ',': keys have no escapes, as in
 * QEMU, so "a,,b=c" is the flag "a", an empty flag and "b=c"). */
static const char *take_key(const char *s, char *out)
{
    size_t n = strcspn(s, "=,");
    memcpy(out, s, n);
    out[n] = '\0';
    return s + n;
}

/* Called for each element of a list in order (flag: it had no '='); a
 * negative return stops. */
typedef int (*element_fn)(struct qimg_opts *opts, const char *key,
                          const char *val, bool flag, void *ctx,
                          struct qimg_error *err);

static int parse_elements(struct qimg_opts *opts, const char *str,
                          const char *implied_key, element_fn fn, void *ctx,
                          struct qimg_error *err)
{
    /* Room for the input, or for what replaces it: the implied key,
     * "help", "on", "off". */
    size_t len = QIMG_MAX(strlen(str), implied_key ? strlen(implied_key) : 0);
    char *key = malloc(len + 8), *val = malloc(len + 8);
    const char *p = str;
    bool first = true;
    int ret = 0;

    if (!key || !val) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    while (*p) {
        const char *after_key = take_key(p, key);
        bool flag = false;
        if (*after_key == '=') {
            p = take_value(after_key + 1, val);
        } else if (first && implied_key) {
            p = take_value(p, val);
            strcpy(key, implied_key);
        } else {
            p = after_key;
            flag = true;
            if (!strcmp(key, "?"))
                strcpy(key, "help");
            /* Short booleans: "flag" is flag=on, "noflag" is flag=off. */
            if (!strncmp(key, "no", 2)) {
                memmove(key, key + 2, strlen(key + 2) + 1);
                strcpy(val, "off");
                flag = false;   /* "nohelp" asks for no help */
            } else {
                strcpy(val, "on");
            }
        }
        ret = fn(opts, key, val, flag, ctx, err);
        if (ret < 0)
            goto out;
        first = false;
        if (*p == ',')
            p++;
    }
out:
    free(key);
    free(val);
    return ret;
}

static int set_element(struct qimg_opts *opts, const char *key,
                       const char *val, bool flag, void *ctx,
                       struct qimg_error *err)
{
    int ret = qimg_opts_set(opts, key, val);

    (void)flag;
    (void)ctx;
    if (ret < 0)
        qimg_error_set(err, ret, "Too many options");
    return ret;
}

int qimg_opts_parse(struct qimg_opts *opts, const char *str,
                    const char *implied_key, struct qimg_error *err)
{
    return parse_elements(opts, str, implied_key, set_element, NULL, err);
}

static int find_help(struct qimg_opts *opts, const char *key,
                     const char *val, bool flag, void *ctx,
                     struct qimg_error *err)
{
    (void)opts;
    (void)val;
    (void)err;
    if (flag && !strcmp(key, "help"))
        *(bool *)ctx = true;
    return 0;
}

bool qimg_opts_has_help(const char *str)
{
    struct qimg_opts *scratch = qimg_opts_new();
    bool help = false;

    if (scratch)
        parse_elements(scratch, str, NULL, find_help, &help, NULL);
    qimg_opts_free(scratch);
    return help;
}

struct descs {
    const struct qimg_opt_desc *d;
    size_t nd;
};

static int validate_one(struct qimg_opts *opts, size_t i,
                        const struct qimg_opt_desc *d, size_t nd,
                        struct qimg_error *err);

static int set_checked_element(struct qimg_opts *opts, const char *key,
                               const char *val, bool flag, void *ctx,
                               struct qimg_error *err)
{
    const struct descs *descs = ctx;
    int ret = set_element(opts, key, val, flag, NULL, err);

    if (ret < 0)
        return ret;
    return validate_one(opts, (size_t)find(opts, key), descs->d, descs->nd,
                        err);
}

int qimg_opts_parse_checked(struct qimg_opts *opts, const char *str,
                            const struct qimg_opt_desc *d, size_t nd,
                            struct qimg_error *err)
{
    struct descs descs = {d, nd};

    return parse_elements(opts, str, NULL, set_checked_element, &descs, err);
}

int qimg_opts_get_size(const struct qimg_opts *opts, const char *key,
                       uint64_t def, uint64_t *out, struct qimg_error *err)
{
    const char *v = qimg_opts_get(opts, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (qimg_parse_size(v, out, NULL) < 0)
        return qimg_error_set(err, -EINVAL,
                              "Parameter '%s' expects a non-negative number "
                              "below 2^64\nOptional suffix k, M, G, T, P or E "
                              "means kilo-, mega-, giga-, tera-, peta-\nand "
                              "exabytes, respectively.", key);
    return 0;
}

int qimg_opts_get_bool(const struct qimg_opts *opts, const char *key,
                       bool def, bool *out, struct qimg_error *err)
{
    const char *v = qimg_opts_get(opts, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") ||
        !strcmp(v, "y")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") ||
               !strcmp(v, "n")) {
        *out = false;
    } else {
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects 'on' or 'off'",
                              key);
    }
    return 0;
}

int qimg_opts_get_number(const struct qimg_opts *opts, const char *key,
                         uint64_t def, uint64_t *out, struct qimg_error *err)
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

int qimg_opts_get_int64(const struct qimg_opts *opts, const char *key,
                        int64_t def, int64_t *out, struct qimg_error *err)
{
    /* The text as given: validation normalises numbers to unsigned
     * decimal, and "-1" must stay -1 for a signed option. */
    const char *v = qimg_opts_get_orig(opts, key);
    char *end;

    *out = def;
    if (!v)
        return 0;
    errno = 0;
    *out = strtoll(v, &end, 0);
    if (errno || *end || end == v)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects integer",
                              key);
    return 0;
}

/* Warn about "0x10k" as QEMU does each time it parses such a size. */
void qimg_opts_warn_hex_size(const char *value)
{
    uint64_t v;
    bool hex = false;

    if (qimg_parse_size(value, &v, &hex) == 0 && hex)
        qimg_message(QIMG_MSG_WARNING, "Using a multiplier suffix on hex "
                     "numbers is deprecated: %s\n", value);
}

/*
 * A size option, as QEMU's option parser reads it: out of range and
 * malformed values have their own messages; hex with a multiplier is
 * deprecated (warned) and kept as written, so that creation can warn again
 * where QEMU parses it a second time; anything else becomes a byte count.
 */
static int validate_size(struct qimg_opts *opts, size_t i,
                         struct qimg_error *err)
{
    const char *key = opts->v[i].key, *v = opts->v[i].value;
    char buf[32];
    uint64_t sz;
    bool hex = false;
    int ret = qimg_parse_size(v, &sz, &hex);

    if (ret == -ERANGE)
        return qimg_error_set(err, -EINVAL, "Value '%s' is out of range for "
                              "parameter '%s'", v, key);
    if (ret < 0)
        return qimg_opts_get_size(opts, key, 0, &sz, err);
    if (hex) {
        qimg_opts_warn_hex_size(v);
        return 0;
    }
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)sz);
    return normalise(opts, i, buf);
}

/*
 * A number option: C's strtoull() in base 0 over the whole value, as
 * QEMU's option parser (leading blanks, a sign, "0x" hex, "0" octal; a
 * '-' wraps), normalised to decimal.
 */
static int validate_number(struct qimg_opts *opts, size_t i,
                           struct qimg_error *err)
{
    const char *key = opts->v[i].key, *v = opts->v[i].value;
    char buf[32], *end;
    unsigned long long n;

    /* Trailing text is "expects a number" before a value past 64 bits is
     * "too large", as QEMU checks strtoull's result. */
    errno = 0;
    n = strtoull(v, &end, 0);
    if (end == v || *end)
        return qimg_error_set(err, -EINVAL,
                              "Parameter '%s' expects a number", key);
    if (errno == ERANGE)
        return qimg_error_set(err, -EINVAL, "Value '%s' is too large for "
                              "parameter '%s'", v, key);
    snprintf(buf, sizeof(buf), "%llu", n);
    return normalise(opts, i, buf);
}

static const struct qimg_opt_desc *find_desc(const struct qimg_opt_desc *d,
                                             size_t nd, const char *key)
{
    const struct qimg_opt_desc *desc = NULL;

    for (size_t j = 0; j < nd; j++)
        if (!strcmp(d[j].name, key))
            desc = &d[j];
    return desc;
}

/* Check (and normalise) the option at index i against its descriptor. */
static int validate_one(struct qimg_opts *opts, size_t i,
                        const struct qimg_opt_desc *d, size_t nd,
                        struct qimg_error *err)
{
    const char *key = opts->v[i].key;
    const struct qimg_opt_desc *desc = find_desc(d, nd, key);
    bool b;

    if (!desc)
        return qimg_error_set(err, -EINVAL, "Invalid parameter '%s'", key);
    switch (desc->type) {
    case QIMG_OPT_SIZE:
        return validate_size(opts, i, err);
    case QIMG_OPT_BOOL:
        return qimg_opts_get_bool(opts, key, false, &b, err);
    case QIMG_OPT_NUMBER:
        return validate_number(opts, i, err);
    case QIMG_OPT_STRING:
        break;
    }
    return 0;
}

int qimg_opts_validate(struct qimg_opts *opts, const struct qimg_opt_desc *d,
                       size_t nd, struct qimg_error *err)
{
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        int ret = validate_one(opts, i, d, nd, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}
