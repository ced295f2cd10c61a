/* jsonopts.h - "json:{...}" pseudo-filenames flattened into option lists. */
#ifndef QIMG_CORE_JSONOPTS_H
#define QIMG_CORE_JSONOPTS_H

#include "qimg.h"

/* Parse a JSON object and add its members to opts with dotted keys
 * ({"file": {"filename": "a"}} -> file.filename=a). */
int qimg_json_to_opts(const char *json, struct qimg_opts *opts,
                      struct qimg_error *err);

/* The value of an entry that was an empty object ("key": {}); its type is
 * QIMG_VAL_NULL, as for null (value ""). */
#define JSON_EMPTY_OBJECT "{}"

#endif
