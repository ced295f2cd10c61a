/*
 * Unit tests for lib/checksum: the ALG[/BLOCK_SIZE] parser and its
 * limits, the algorithm table, and a digest that does not depend on the
 * number of threads or the window layout (in-memory images with data,
 * zero blocks and a short tail, across several windows).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/block.h"

static void test_parse(void **state)
{
    struct qimg_checksum_params p = {0};
    struct qimg_error err = {0};

    assert_int_equal(qimg_checksum_parse("sha256", &p, &err), 0);
    assert_string_equal(p.algorithm, "sha256");
    assert_int_equal(p.block_size, QIMG_CHECKSUM_DEFAULT_BLOCK);
    assert_int_equal(qimg_checksum_parse("sha512/512k", &p, &err), 0);
    assert_string_equal(p.algorithm, "sha512");
    assert_int_equal(p.block_size, 512 * 1024);
    assert_int_equal(qimg_checksum_parse("md5/1", &p, &err), 0);
    assert_int_equal(p.block_size, 1);
    assert_int_equal(qimg_checksum_parse("md5/64M", &p, &err), 0);
    assert_int_equal(p.block_size, 64u << 20);
    /* not powers of two, too big, empty, unknown names */
    const char *bad[] = {"md5/3", "md5/65M", "md5/128M", "md5/", "md5/0",
                         "md5/x", "", "/64k", "sha2", "SHA256",
                         "a-name-longer-than-the-buffer-holds-for-names/4k"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(qimg_checksum_parse(bad[i], &p, &err), -EINVAL);
        assert_true(err.msg[0] != 0);
    }
}

static void test_algorithms(void **state)
{
    size_t n = 0;
    for (; qimg_checksum_algorithm_at(n); n++)
        if (n)  /* sorted, as --help and completion show them */
            assert_true(strcmp(qimg_checksum_algorithm_at(n - 1),
                               qimg_checksum_algorithm_at(n)) < 0);
    assert_int_equal(n, 15);
    assert_null(qimg_checksum_algorithm_at(n));
}

static void digest(struct qimg_image *img, const char *alg, uint64_t bs,
                   unsigned threads, unsigned char *md, size_t *len)
{
    struct qimg_checksum_params p = {.img = img, .algorithm = alg,
                                     .block_size = bs, .threads = threads};
    struct qimg_error err = {0};
    if (qimg_checksum(&p, md, len, &err) < 0)
        fail_msg("checksum: %s", err.msg);
}

static void test_thread_independent(void **state)
{
    const size_t size = (3u << 20) + 512;     /* a short last block */
    uint8_t *data = calloc(1, size);
    struct qimg_open_params op = {.filename = "mem:ck", .format = "raw",
                                  .flags = QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    unsigned char a[QIMG_CHECKSUM_MAX_DIGEST], b[QIMG_CHECKSUM_MAX_DIGEST];
    size_t la, lb;

    for (size_t i = 0; i < size; i += 4096)
        if ((i / 4096) % 3 == 0)
            memset(data + i, (int)(i / 4096) | 1,
                   size - i < 1000 ? size - i : 1000);
    assert_int_equal(qimg_mem_register("mem:ck", data, size), 0);
    assert_int_equal(qimg_open(&img, &op, &err), 0);
    /* 16-byte blocks: 3 Mi / 16 = 196608 blocks, several windows */
    const uint64_t sizes[] = {16, 4096, 65536, 1u << 20};
    for (size_t s = 0; s < 4; s++) {
        digest(img, "sha256", sizes[s], 1, a, &la);
        digest(img, "sha256", sizes[s], 7, b, &lb);
        assert_int_equal(la, 32);
        assert_int_equal(lb, 32);
        assert_memory_equal(a, b, 32);
    }
    /* a different block size is a different digest */
    digest(img, "sha256", 4096, 2, a, &la);
    digest(img, "sha256", 8192, 2, b, &lb);
    assert_memory_not_equal(a, b, 32);
    digest(img, "blake2b512", 0, 3, a, &la);
    assert_int_equal(la, 64);
    qimg_close(img);
    qimg_mem_unregister("mem:ck");
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_algorithms),
        cmocka_unit_test(test_thread_independent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
