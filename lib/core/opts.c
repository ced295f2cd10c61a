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
        opts->v[i].value = v;
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

bool qimg_opts_del(struct qimg_opts *opts, const char *key)
{
    ssize_t i = find(opts, key);
    if (i < 0)
        return false;
    free(opts->v[i].key);
    free(opts->v[i].value);
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
                                opts->v[i].type) < 0) {
            qimg_opts_free(d);
            return NULL;
        }
    }
    return d;
}

/* Copy the next element of s (up to an unescaped ',' or end) into out,
 * un-doubling commas.  stop_at_eq ends the element at '=' too. */
static const char *take_token(const char *s, char *out, bool stop_at_eq)
{
    size_t n = 0;
    while (*s) {
        if (*s == ',') {
            if (s[1] != ',')
                break;
            s++;
        } else if (stop_at_eq && *s == '=') {
            break;
        }
        out[n++] = *s++;
    }
    out[n] = '\0';
    return s;
}

int qimg_opts_parse(struct qimg_opts *opts, const char *str,
                    const char *implied_key, struct qimg_error *err)
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
        const char *after_key = take_token(p, key, true);
        if (*after_key == '=') {
            p = take_token(after_key + 1, val, false);
        } else if (first && implied_key) {
            p = take_token(p, val, false);
            strcpy(key, implied_key);
        } else {
            p = after_key;
            if (!strcmp(key, "?"))
                strcpy(key, "help");
            /* Short booleans: "flag" is flag=on, "noflag" is flag=off. */
            if (!strncmp(key, "no", 2) && strcmp(key, "help")) {
                memmove(key, key + 2, strlen(key + 2) + 1);
                strcpy(val, "off");
            } else {
                strcpy(val, "on");
            }
        }
        if (!*key && *p == '\0' && !first)
            break;
        ret = qimg_opts_set(opts, key, val);
        if (ret < 0) {
            qimg_error_set(err, ret, "Too many options");
            goto out;
        }
        first = false;
        if (*p == ',')
            p++;
    }
out:
    free(key);
    free(val);
    return ret;
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
    const char *v = qimg_opts_get(opts, key);
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

static int validate_number(const char *key, const char *v, struct qimg_error *err)
{
    char *end;
    errno = 0;
    /* strtoull's rules, as QEMU's: "-1" is accepted (and wraps). */
    if ((strtoull(v, &end, 0), errno) || *end || end == v)
        return qimg_error_set(err, -EINVAL,
                              "Parameter '%s' expects a number", key);
    return 0;
}

int qimg_opts_validate(struct qimg_opts *opts, const struct qimg_opt_desc *d,
                       size_t nd, struct qimg_error *err)
{
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *key = opts->v[i].key;
        const struct qimg_opt_desc *desc = NULL;
        char buf[32];
        uint64_t sz;
        bool b;
        int ret = 0;

        for (size_t j = 0; j < nd; j++)
            if (!strcmp(d[j].name, key))
                desc = &d[j];
        if (!desc)
            return qimg_error_set(err, -EINVAL, "Invalid parameter '%s'", key);
        switch (desc->type) {
        case QIMG_OPT_SIZE:
            ret = qimg_opts_get_size(opts, key, 0, &sz, err);
            if (!ret) {
                snprintf(buf, sizeof(buf), "%llu", (unsigned long long)sz);
                ret = qimg_opts_set(opts, key, buf);
            }
            break;
        case QIMG_OPT_BOOL:
            ret = qimg_opts_get_bool(opts, key, false, &b, err);
            break;
        case QIMG_OPT_NUMBER:
            ret = validate_number(key, opts->v[i].value, err);
            break;
        case QIMG_OPT_STRING:
            break;
        }
        if (ret < 0)
            return ret;
    }
    return 0;
}
