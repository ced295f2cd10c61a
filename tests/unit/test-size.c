/*
 * Unit tests for size parsing and printing (lib/core/size.c).
 * Expected values were observed from qemu-img 7.2 (`qemu-img create x N`
 * prints the parsed size; `qemu-img info` prints size_to_str output).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qimg.h"

static void expect_size(const char *s, uint64_t want)
{
    uint64_t v = 0;
    int ret = qimg_parse_size(s, &v, NULL);
    if (ret != 0 || v != want)
        fail_msg("'%s': ret=%d value=%llu, want %llu", s, ret,
                 (unsigned long long)v, (unsigned long long)want);
}

static void expect_error(const char *s, int want)
{
    uint64_t v = 0;
    int ret = qimg_parse_size(s, &v, NULL);
    if (ret != want)
        fail_msg("'%s': ret=%d, want %d", s, ret, want);
}

static void test_plain(void **state)
{
    expect_size("0", 0);
    expect_size("1", 1);
    expect_size(" 1", 1);
    expect_size("1b", 1);
    expect_size("1B", 1);
    expect_size("1.", 1);
    expect_size("1.0", 1);
    expect_size("1.0b", 1);
    expect_size("18446744073709551615", UINT64_MAX);
}

static void test_suffixes(void **state)
{
    expect_size("1k", 1024);
    expect_size("1K", 1024);
    expect_size("1m", 1048576);
    expect_size("1g", 1073741824);
    expect_size("1t", 1099511627776ull);
    expect_size("1p", 1125899906842624ull);
    expect_size("1e", 1152921504606846976ull);
    expect_size("1E", 1152921504606846976ull);
}

static void test_fractions(void **state)
{
    expect_size("1.5k", 1536);
    expect_size("1.k", 1024);
    expect_size("0.5k", 512);
    expect_size("1.0k", 1024);
    expect_size("1.00000000000000000001k", 1024);
    expect_size("7.9999E", 9223256744704315136ull);
    expect_size("1.5E", 1729382256910270464ull);
}

static void test_hex(void **state)
{
    bool hex_suffix = false;
    uint64_t v;
    expect_size("0x10", 16);
    expect_size("0X10", 16);
    assert_int_equal(qimg_parse_size("0x1k", &v, &hex_suffix), 0);
    assert_int_equal(v, 1024);
    assert_true(hex_suffix);
}

static void test_invalid(void **state)
{
    expect_error("", -EINVAL);
    expect_error("1.5", -EINVAL);
    expect_error("1.5b", -EINVAL);
    expect_error("0.5", -EINVAL);
    expect_error("1e3", -EINVAL);
    expect_error("1kk", -EINVAL);
    expect_error("1Q", -EINVAL);
    expect_error("-1", -EINVAL);
    expect_error("0x", -EINVAL);
    expect_error("00x10", -EINVAL);
    expect_error("0xg", -EINVAL);
    expect_error("0x1.5k", -EINVAL);
}

/* strtoull() under QEMU's parser skips blanks and one '+'. */
static void test_plus(void **state)
{
    expect_size("+1M", 1048576);
    expect_size("+1.5k", 1536);
    expect_size(" +1k", 1024);
    expect_size("+0x200", 512);
    expect_size("+0", 0);
    expect_error("++1", -EINVAL);
    expect_error("+-1", -EINVAL);
    expect_error("-+1", -EINVAL);
    expect_error("+", -EINVAL);
    expect_error("+ 1", -EINVAL);
    expect_error("+.5k", -EINVAL);
}

static void test_range(void **state)
{
    expect_error("18446744073709551616", -ERANGE);
    expect_error("16E", -ERANGE);
    expect_error("99E", -ERANGE);
}

static void expect_str(uint64_t size, const char *want)
{
    char buf[64];
    qimg_size_to_str(size, buf, sizeof(buf));
    assert_string_equal(buf, want);
}

static void test_to_str(void **state)
{
    expect_str(0, "0 B");
    expect_str(999, "999 B");
    expect_str(1000, "0.977 KiB");
    expect_str(1024, "1 KiB");
    expect_str(1536, "1.5 KiB");
    expect_str(69632, "68 KiB");
    expect_str(196 * 1024, "196 KiB");
    expect_str(1048576, "1 MiB");
    expect_str(1073741824, "1 GiB");
    expect_str(2147483648ull, "2 GiB");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),     cmocka_unit_test(test_suffixes),
        cmocka_unit_test(test_fractions), cmocka_unit_test(test_hex),
        cmocka_unit_test(test_invalid),   cmocka_unit_test(test_range),
        cmocka_unit_test(test_to_str),    cmocka_unit_test(test_plus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
