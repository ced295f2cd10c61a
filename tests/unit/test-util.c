/* Unit tests for lib/core/util.h: overflow-checked arithmetic, alignment,
 * byte order and zero detection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "core/util.h"

static void test_overflow(void **state)
{
    uint64_t r;
    assert_false(qimg_add_overflow(1, 2, &r));
    assert_int_equal(r, 3);
    assert_true(qimg_add_overflow(UINT64_MAX, 1, &r));
    assert_true(qimg_mul_overflow(1ull << 32, 1ull << 32, &r));
    assert_false(qimg_mul_overflow(1ull << 31, 1ull << 32, &r));
}

static void test_range(void **state)
{
    assert_true(qimg_range_ok(0, 10, 10));
    assert_false(qimg_range_ok(1, 10, 10));
    assert_false(qimg_range_ok(UINT64_MAX, 2, UINT64_MAX));
    assert_true(qimg_range_ok(10, 0, 10));
}

static void test_align(void **state)
{
    uint64_t r;
    assert_int_equal(qimg_align_down(1000, 512), 512);
    assert_true(qimg_align_up(1000, 512, &r));
    assert_int_equal(r, 1024);
    assert_true(qimg_align_up(1024, 512, &r));
    assert_int_equal(r, 1024);
    assert_false(qimg_align_up(UINT64_MAX - 10, 512, &r));
    assert_true(qimg_is_pow2(65536));
    assert_false(qimg_is_pow2(0));
    assert_false(qimg_is_pow2(3 << 10));
    assert_int_equal(qimg_div_round_up(1025, 512), 3);
}

static void test_byte_order(void **state)
{
    uint8_t b[8];
    qimg_st_be32(b, 0x514649fb);
    assert_int_equal(b[0], 0x51);
    assert_int_equal(b[3], 0xfb);
    assert_int_equal(qimg_ld_be32(b), 0x514649fb);
    qimg_st_le64(b, 0x0102030405060708ull);
    assert_int_equal(b[0], 0x08);
    assert_int_equal(qimg_ld_le64(b), 0x0102030405060708ull);
    qimg_st_be16(b, 0xabcd);
    assert_int_equal(qimg_ld_be16(b), 0xabcd);
    qimg_st_le16(b, 0xabcd);
    assert_int_equal(qimg_ld_le16(b), 0xabcd);
    qimg_st_be64(b, 42);
    assert_int_equal(qimg_ld_be64(b), 42);
    qimg_st_le32(b, 7);
    assert_int_equal(qimg_ld_le32(b), 7);
}

static void test_zero(void **state)
{
    size_t len = 1 << 16;
    uint8_t *buf = calloc(1, len + 64);
    assert_true(qimg_buffer_is_zero(buf, len));
    /* A non-zero byte anywhere, at every alignment, is seen. */
    for (size_t off = 0; off < 200; off++) {
        buf[off + 3] = 1;
        assert_false(qimg_buffer_is_zero(buf + 3, len));
        buf[off + 3] = 0;
    }
    buf[3 + len - 1] = 1;
    assert_false(qimg_buffer_is_zero(buf + 3, len));
    assert_true(qimg_buffer_is_zero(buf + 3, len - 1));
    assert_true(qimg_buffer_is_zero(buf, 0));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overflow), cmocka_unit_test(test_range),
        cmocka_unit_test(test_align),    cmocka_unit_test(test_byte_order),
        cmocka_unit_test(test_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
