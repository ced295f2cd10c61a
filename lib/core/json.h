/*
 * json.h - JSON in QEMU's dialect: the parser behind json:{...}
 * pseudo-filenames (single-quoted strings, QEMU's numbers and its exact
 * error messages) and the compact writer behind the json:{...} names QEMU
 * gives nodes it cannot name by a file ("{"driver": "raw", ...}", members
 * in the order of QEMU's dictionaries).  Values are jansson objects.
 */
#ifndef QIMG_CORE_JSON_H
#define QIMG_CORE_JSON_H

#include <jansson.h>

#include "qimg.h"

/*
 * Parse text as one JSON value.  On success *out holds a new reference.
 * On failure err holds QEMU's message ("JSON parse error, premature EOI",
 * "Expecting a JSON value", "Expecting at most one JSON value", ...),
 * without the "Could not parse the JSON options: " prefix callers add.
 */
int qimg_json_parse(const char *text, json_t **out, struct qimg_error *err);

/*
 * The members of object v in the order QEMU's dictionaries list them:
 * keys[] receives borrowed key pointers; returns their number, or a
 * negative errno.  Caller frees *keys.
 */
int qimg_json_object_keys(const json_t *v, const char ***keys);

/* v as QEMU's qobject_to_json() prints it: {"a": 1, "b": [true]}.
 * malloc'ed, NULL when out of memory. */
char *qimg_json_compact(const json_t *v);

#endif /* QIMG_CORE_JSON_H */
