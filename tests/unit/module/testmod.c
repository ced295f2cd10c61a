/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A storage module for unit-module: its table, and one operation calling
 * back into libqimg (resolved from the test program, as real modules
 * resolve it from qimg). */
#include "core/block.h"

#include <errno.h>

static int testmod_parse(const char *filename, struct qimg_opts *opts,
                         struct qimg_error *err)
{
    (void)opts;
    qimg_error_set(err, -EINVAL, "testmod parsed '%s'", filename);
    return -EINVAL;
}

const struct qimg_storage_ops qimg_storage_testmod = {
    .name = "testmod",
    .protocol = "testmod",
    .parse_filename = testmod_parse,
};
