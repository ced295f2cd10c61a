/*
 * jsonopts.c - json: pseudo-filenames flattened into option lists, as
 * QEMU's qdict_flatten() does: nested objects become dotted keys
 * ({"file": {"filename": "a"}} -> file.filename), array elements indexed
 * keys (inject-error.0.event), and each value keeps its JSON type.  An
 * empty object or array stays as an entry of its own, as QEMU keeps it (so
 * "bogus": {} is still an unknown option): typed QIMG_VAL_NULL like a JSON
 * null, with the value JSON_EMPTY_OBJECT or "[]" so that a driver which
 * needs members there can tell "{}" from null (jsonopts.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/json.h"
#include "core/jsonopts.h"

/* Nesting bound: QEMU's own option trees are a few levels deep. */
#define QIMG_JSON_MAX_DEPTH 16

static int flatten(json_t *val, const char *key, struct qimg_opts *opts,
                   int depth, struct qimg_error *err);

static int flatten_children(json_t *v, const char *prefix,
                            struct qimg_opts *opts, int depth,
                            struct qimg_error *err)
{
    char full[512];
    int ret = 0;

    if (depth > QIMG_JSON_MAX_DEPTH)
        return qimg_error_set(err, -EINVAL, "JSON options nested too deeply");
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) {
            snprintf(full, sizeof(full), "%s%s%s", prefix, *prefix ? "." : "",
                     k);
            ret = flatten(m, full, opts, depth + 1, err);
            if (ret < 0)
                return ret;
        }
    } else {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) {
            snprintf(full, sizeof(full), "%s%s%zu", prefix, *prefix ? "." : "",
                     i);
            ret = flatten(m, full, opts, depth + 1, err);
            if (ret < 0)
                return ret;
        }
    }
    return 0;
}

static int flatten(json_t *val, const char *key, struct qimg_opts *opts,
                   int depth, struct qimg_error *err)
{
    char num[64];
    const char *s = NULL;
    enum qimg_val_type type = QIMG_VAL_STRING;

    switch (json_typeof(val)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
        if (json_is_object(val) ? json_object_size(val)
                                : json_array_size(val))
            return flatten_children(val, key, opts, depth, err);
        s = json_is_object(val) ? JSON_EMPTY_OBJECT : "[]";
        type = QIMG_VAL_NULL;
        break;
    case JSON_STRING:
        s = json_string_value(val);
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(val));
        s = num;
        type = QIMG_VAL_INT;
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(val));
        s = num;
        type = QIMG_VAL_REAL;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        s = json_is_true(val) ? "on" : "off";
        type = QIMG_VAL_BOOL;
        break;
    case JSON_NULL:
        s = "";
        type = QIMG_VAL_NULL;
        break;
    }
    /* Earlier keys win: explicit options are merged before json: ones. */
    if (qimg_opts_get(opts, key))
        return 0;
    if (qimg_opts_set_typed(opts, key, s, type) < 0)
        return qimg_error_set(err, -ENOMEM, "Too many options");
    return 0;
}

int qimg_json_to_opts(const char *json, struct qimg_opts *opts,
                      struct qimg_error *err)
{
    json_t *root;
    int ret = qimg_json_parse(json, &root, err);

    if (ret < 0) {
        qimg_error_prefix(err, "Could not parse the JSON options: ");
        return ret;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return qimg_error_set(err, -EINVAL, "Invalid JSON object given");
    }
    ret = flatten_children(root, "", opts, 0, err);
    json_decref(root);
    return ret;
}
