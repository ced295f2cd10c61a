/* jsonopts.c - flatten json: pseudo-filenames (parsed with jansson). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "core/jsonopts.h"

/* Nesting bound: QEMU's own option trees are a few levels deep. */
#define QIMG_JSON_MAX_DEPTH 16

static int flatten(json_t *obj, const char *prefix, struct qimg_opts *opts,
                   int depth, struct qimg_error *err)
{
    const char *key;
    json_t *val;

    if (depth > QIMG_JSON_MAX_DEPTH)
        return qimg_error_set(err, -EINVAL, "JSON options nested too deeply");
    json_object_foreach(obj, key, val) {
        char full[512], num[64];
        const char *s = NULL;

        snprintf(full, sizeof(full), "%s%s%s", prefix, *prefix ? "." : "", key);
        switch (json_typeof(val)) {
        case JSON_OBJECT: {
            int ret = flatten(val, full, opts, depth + 1, err);
            if (ret < 0)
                return ret;
            continue;
        }
        case JSON_STRING:
            s = json_string_value(val);
            break;
        case JSON_INTEGER:
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(val));
            s = num;
            break;
        case JSON_REAL:
            snprintf(num, sizeof(num), "%.17g", json_real_value(val));
            s = num;
            break;
        case JSON_TRUE:
            s = "on";
            break;
        case JSON_FALSE:
            s = "off";
            break;
        case JSON_NULL:
            s = "";
            break;
        case JSON_ARRAY:
            return qimg_error_set(err, -EINVAL, "Arrays are not supported in "
                                  "json: filenames ('%s')", full);
        }
        if (qimg_opts_set(opts, full, s) < 0)
            return qimg_error_set(err, -ENOMEM, "Too many options");
    }
    return 0;
}

int qimg_json_to_opts(const char *json, struct qimg_opts *opts,
                      struct qimg_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    int ret;

    if (!root)
        return qimg_error_set(err, -EINVAL, "Could not parse the JSON options: "
                              "JSON parse error, %s", jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return qimg_error_set(err, -EINVAL, "Invalid JSON object given");
    }
    ret = flatten(root, "", opts, 0, err);
    json_decref(root);
    return ret;
}
