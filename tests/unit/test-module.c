/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Storage modules (core/module.c): a stub loads its module once, gets the
 * module's table, the module calls back into the program; a missing module
 * or symbol gives a warning and NULL. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/block.h"

QIMG_STORAGE_MODULE_STUB(stub_ok, "testmod", "testmod", "qimg-testmod",
                         "qimg_storage_testmod");
QIMG_STORAGE_MODULE_STUB(stub_nosym, "testmod", "testmod", "qimg-testmod",
                         "qimg_storage_absent");
QIMG_STORAGE_MODULE_STUB(stub_nofile, "absent", NULL, "qimg-absent",
                         "qimg_storage_absent");

static char last_warning[1024];
static int warnings;

static void on_warning(const char *msg, enum qimg_msg_kind kind)
{
    (void)kind;
    snprintf(last_warning, sizeof(last_warning), "%s", msg);
    warnings++;
}

static int setup(void **state)
{
    (void)state;
    qimg_set_warning_handler(on_warning);
    /* The module is built next to this test program. */
    unsetenv("QIMG_MODULE_DIR");
    warnings = 0;
    return 0;
}

static void loads_once_and_calls_back(void **state)
{
    (void)state;
    const struct qimg_storage_ops *ops = qimg_module_storage(&stub_ok);
    assert_non_null(ops);
    assert_ptr_not_equal(ops, &stub_ok);
    assert_string_equal(ops->name, "testmod");
    assert_null(ops->module);
    struct qimg_error err = {0};
    assert_int_equal(ops->parse_filename("testmod:x", NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "testmod parsed 'testmod:x'");
    assert_ptr_equal(qimg_module_storage(&stub_ok), ops);
    assert_int_equal(warnings, 0);
}

static void linked_tables_pass_through(void **state)
{
    (void)state;
    assert_ptr_equal(qimg_module_storage(&qimg_storage_file),
                     &qimg_storage_file);
    assert_null(qimg_module_storage(NULL));
}

static void missing_symbol_warns(void **state)
{
    (void)state;
    assert_null(qimg_module_storage(&stub_nosym));
    assert_int_equal(warnings, 1);
    assert_non_null(strstr(last_warning, "Failed to open module: "));
    assert_non_null(strstr(last_warning, "qimg_storage_absent"));
}

static void missing_file_warns(void **state)
{
    (void)state;
    setenv("QIMG_MODULE_DIR", "/nonexistent", 1);
    assert_null(qimg_module_storage(&stub_nofile));
    assert_int_equal(warnings, 1);
    assert_string_equal(last_warning,
                        "Failed to open module: qimg-absent.so not found");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(loads_once_and_calls_back, setup),
        cmocka_unit_test_setup(linked_tables_pass_through, setup),
        cmocka_unit_test_setup(missing_symbol_warns, setup),
        cmocka_unit_test_setup(missing_file_warns, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
