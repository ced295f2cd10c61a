/*
 * Unit tests for option lists (lib/core/opts.c): QemuOpts-style parsing
 * ("a=b,c=d", ",," escapes, implied keys, short booleans) and validation.
 * The behaviours mirror what qemu-img 7.2 does with -o lists (e.g.
 * "-o nocow" is reported as parameter 'cow', "size=1M,,x=y" is one value).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "qimg.h"
#include "core/jsonopts.h"

static struct qimg_opts *parse(const char *s, const char *implied)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_error err = {0};
    assert_non_null(o);
    assert_int_equal(qimg_opts_parse(o, s, implied, &err), 0);
    return o;
}

static void test_basic(void **state)
{
    struct qimg_opts *o = parse("a=b,c=d", NULL);
    assert_int_equal(qimg_opts_count(o), 2);
    assert_string_equal(qimg_opts_get(o, "a"), "b");
    assert_string_equal(qimg_opts_get(o, "c"), "d");
    assert_null(qimg_opts_get(o, "x"));
    qimg_opts_free(o);
}

static void test_escape(void **state)
{
    struct qimg_opts *o = parse("size=1M,,x=y,k=v", NULL);
    assert_string_equal(qimg_opts_get(o, "size"), "1M,x=y");
    assert_string_equal(qimg_opts_get(o, "k"), "v");
    qimg_opts_free(o);
}

static void test_replace_keeps_order(void **state)
{
    struct qimg_opts *o = parse("a=1,b=2,a=3", NULL);
    assert_int_equal(qimg_opts_count(o), 2);
    assert_string_equal(qimg_opts_key(o, 0), "a");
    assert_string_equal(qimg_opts_value(o, 0), "3");
    qimg_opts_free(o);
}

static void test_short_bool_and_help(void **state)
{
    struct qimg_opts *o = parse("nocow,lazy,?", NULL);
    assert_string_equal(qimg_opts_get(o, "cow"), "off");
    assert_string_equal(qimg_opts_get(o, "lazy"), "on");
    assert_non_null(qimg_opts_get(o, "help"));
    qimg_opts_free(o);
}

static void test_implied(void **state)
{
    struct qimg_opts *o = parse("secret,id=s0,data=abc", "qom-type");
    assert_string_equal(qimg_opts_get(o, "qom-type"), "secret");
    assert_string_equal(qimg_opts_get(o, "id"), "s0");
    qimg_opts_free(o);
}

static void test_del_dup(void **state)
{
    struct qimg_opts *o = parse("a=1,b=2", NULL), *d;
    assert_true(qimg_opts_del(o, "a"));
    assert_false(qimg_opts_del(o, "a"));
    d = qimg_opts_dup(o);
    assert_int_equal(qimg_opts_count(d), 1);
    assert_string_equal(qimg_opts_get(d, "b"), "2");
    qimg_opts_free(o);
    qimg_opts_free(d);
    qimg_opts_free(NULL);
}

static const struct qimg_opt_desc descs[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"nocow", QIMG_OPT_BOOL, "no copy on write", NULL},
    {"bits", QIMG_OPT_NUMBER, "bits", NULL},
    {"mode", QIMG_OPT_STRING, "mode", NULL},
};

static int validate(const char *s, struct qimg_opts **out)
{
    struct qimg_opts *o = parse(s, NULL);
    struct qimg_error err = {0};
    int ret = qimg_opts_validate(o, descs, 4, &err);
    if (out)
        *out = o;
    else
        qimg_opts_free(o);
    return ret;
}

static void test_validate(void **state)
{
    struct qimg_opts *o;
    assert_int_equal(validate("size=1M,nocow=on,bits=16,mode=x", &o), 0);
    /* Sizes are normalised to bytes for the "Formatting" line. */
    assert_string_equal(qimg_opts_get(o, "size"), "1048576");
    /* ... and the text as given stays available, also in a copy. */
    assert_string_equal(qimg_opts_get_orig(o, "size"), "1M");
    assert_string_equal(qimg_opts_get_orig(o, "mode"), "x");
    assert_null(qimg_opts_get_orig(o, "absent"));
    struct qimg_opts *d = qimg_opts_dup(o);
    assert_string_equal(qimg_opts_get_orig(d, "size"), "1M");
    assert_string_equal(qimg_opts_get(d, "size"), "1048576");
    /* A new value replaces both. */
    assert_int_equal(qimg_opts_set(d, "size", "2048"), 0);
    assert_string_equal(qimg_opts_get_orig(d, "size"), "2048");
    qimg_opts_free(d);
    qimg_opts_free(o);
    assert_int_equal(validate("foo=1", NULL), -EINVAL);
    assert_int_equal(validate("size=-1", NULL), -EINVAL);
    assert_int_equal(validate("nocow=maybe", NULL), -EINVAL);
    assert_int_equal(validate("bits=x", NULL), -EINVAL);
}

static void test_error_messages(void **state)
{
    struct qimg_opts *o = parse("foo=1", NULL);
    struct qimg_error err = {0};
    qimg_opts_validate(o, descs, 4, &err);
    assert_string_equal(err.msg, "Invalid parameter 'foo'");
    qimg_opts_free(o);
    o = parse("nocow=maybe", NULL);
    qimg_opts_validate(o, descs, 4, &err);
    assert_string_equal(err.msg, "Parameter 'nocow' expects 'on' or 'off'");
    qimg_opts_free(o);
}

/* QEMU's keys end at the first ',' or '=': ",," escapes only values. */
static void test_key_syntax(void **state)
{
    struct qimg_opts *o = parse("a,,b=c", NULL);
    assert_string_equal(qimg_opts_get(o, "a"), "on");
    assert_string_equal(qimg_opts_get(o, ""), "on");
    assert_string_equal(qimg_opts_get(o, "b"), "c");
    qimg_opts_free(o);
    o = parse("size,,=1M", NULL);
    assert_string_equal(qimg_opts_get(o, "size"), "on");
    assert_string_equal(qimg_opts_get(o, ""), "1M");
    qimg_opts_free(o);
}

static void test_has_help(void **state)
{
    assert_true(qimg_opts_has_help("help"));
    assert_true(qimg_opts_has_help("?"));
    assert_true(qimg_opts_has_help("size=1M,help"));
    assert_true(qimg_opts_has_help("help,,x"));
    assert_true(qimg_opts_has_help("a,,help"));
    assert_false(qimg_opts_has_help("help=on"));
    assert_false(qimg_opts_has_help("nohelp"));
    assert_false(qimg_opts_has_help("x=help"));
    assert_false(qimg_opts_has_help("size=1M,,help"));
    assert_false(qimg_opts_has_help(""));
}

static int checked(const char *s, struct qimg_opts **out,
                   struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    int ret = qimg_opts_parse_checked(o, s, descs, 4, err);
    if (out)
        *out = o;
    else
        qimg_opts_free(o);
    return ret;
}

static void test_numbers_and_sizes(void **state)
{
    struct qimg_error err = {0};
    struct qimg_opts *o;

    /* numbers: strtoull() base 0, a '-' wraps; kept in decimal */
    assert_int_equal(checked("bits=0x10,size=1.5k", &o, &err), 0);
    assert_string_equal(qimg_opts_get(o, "bits"), "16");
    assert_string_equal(qimg_opts_get(o, "size"), "1536");
    qimg_opts_free(o);
    assert_int_equal(checked("bits=010", &o, &err), 0);
    assert_string_equal(qimg_opts_get(o, "bits"), "8");
    qimg_opts_free(o);
    assert_int_equal(checked("bits=-16", &o, &err), 0);
    assert_string_equal(qimg_opts_get(o, "bits"), "18446744073709551600");
    qimg_opts_free(o);
    assert_int_equal(checked("bits=99999999999999999999", NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "Value '99999999999999999999' is too large "
                        "for parameter 'bits'");
    assert_int_equal(checked("bits=16k", NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "Parameter 'bits' expects a number");
    assert_int_equal(checked("size=18446744073709551616", NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "Value '18446744073709551616' is out of "
                        "range for parameter 'size'");
    /* the first bad element is reported, even when a later one replaces it */
    assert_int_equal(checked("size=x,foo=1,size=1", NULL, &err), -EINVAL);
    assert_true(strstr(err.msg, "Parameter 'size' expects") == err.msg);
    /* hex with a multiplier is kept as written, for a second warning */
    assert_int_equal(checked("size=0x1k", &o, &err), 0);
    assert_string_equal(qimg_opts_get(o, "size"), "0x1k");
    qimg_opts_free(o);
}

/* json: flattening keeps an empty object or array as an entry of its own
 * (typed null, "{}" or "[]"), as QEMU's qdict_flatten keeps them. */
static void test_json_empty_members(void **state)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_error err = {0};
    (void)state;
    assert_non_null(o);
    assert_int_equal(qimg_json_to_opts(
        "{\"a\":{},\"b\":[],\"c\":null,\"d\":{\"e\":{}},\"f\":{\"g\":1}}",
        o, &err), 0);
    assert_int_equal(qimg_opts_count(o), 5);
    assert_string_equal(qimg_opts_get(o, "a"), JSON_EMPTY_OBJECT);
    assert_string_equal(qimg_opts_get(o, "b"), "[]");
    assert_string_equal(qimg_opts_get(o, "c"), "");
    assert_string_equal(qimg_opts_get(o, "d.e"), JSON_EMPTY_OBJECT);
    assert_string_equal(qimg_opts_get(o, "f.g"), "1");
    assert_null(qimg_opts_get(o, "d"));
    assert_int_equal(qimg_opts_type(o, (size_t)qimg_opts_index(o, "a")),
                     QIMG_VAL_NULL);
    assert_int_equal(qimg_opts_type(o, (size_t)qimg_opts_index(o, "b")),
                     QIMG_VAL_NULL);
    qimg_opts_free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_replace_keeps_order),
        cmocka_unit_test(test_short_bool_and_help),
        cmocka_unit_test(test_implied),
        cmocka_unit_test(test_del_dup),
        cmocka_unit_test(test_key_syntax),
        cmocka_unit_test(test_has_help),
        cmocka_unit_test(test_numbers_and_sizes),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_json_empty_members),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
