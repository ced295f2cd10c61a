/*
 * Unit tests for the dmg chunk table bound (lib/fmt/dmg): images of
 * DMG_MAX_CHUNKS chunks and one more, in memory (40 MiB each, so no disk
 * time), through the public API.  The layout follows tests/dmggen.py: a
 * resource fork whose one resource is a mish block, then the trailer.
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
#include "core/util.h"
#include "fmt/dmg/dmg.h"

#define FORK_DATA 256
#define MISH_HEADER 204
#define MISH_ENTRY 40

/* n zero chunks of one sector each (sectors 0..n-1), or of none. */
static uint8_t *make_dmg(uint32_t n, bool empty_chunks, size_t *len)
{
    size_t mish = MISH_HEADER + (size_t)n * MISH_ENTRY;
    size_t fork = FORK_DATA + 4 + mish;
    uint8_t *p = calloc(1, fork + 512), *m = p + FORK_DATA + 4, *k;

    assert_non_null(p);
    qimg_st_be32(p, FORK_DATA);
    qimg_st_be32(p + 8, (uint32_t)(4 + mish));
    qimg_st_be32(p + FORK_DATA, (uint32_t)mish);
    memcpy(m, "mish", 4);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = m + MISH_HEADER + (size_t)i * MISH_ENTRY;
        qimg_st_be32(e, DMG_ZERO);
        qimg_st_be64(e + 8, i);
        qimg_st_be64(e + 0x10, empty_chunks ? 0 : 1);
    }
    k = p + fork;
    memcpy(k, "koly", 4);
    qimg_st_be64(k + 0x28, 0);
    qimg_st_be64(k + 0x30, fork);
    qimg_st_be64(k + 0x1ec, n);
    *len = fork + 512;
    return p;
}

static int open_dmg(const uint8_t *data, size_t len, struct qimg_image **img,
                    struct qimg_error *err)
{
    struct qimg_open_params p = {.filename = "mem:x.dmg", .format = "dmg",
                                 .flags = QIMG_OPEN_NO_LOCK};
    assert_int_equal(qimg_mem_register("mem:x.dmg", data, len), 0);
    int ret = qimg_open(img, &p, err);
    qimg_mem_unregister("mem:x.dmg");
    return ret;
}

static void test_max_chunks(void **state)
{
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    uint8_t buf[4096];
    size_t len;
    uint8_t *d = make_dmg(DMG_MAX_CHUNKS, false, &len);

    assert_int_equal(open_dmg(d, len, &img, &err), 0);
    assert_int_equal(qimg_image_size(img), (uint64_t)DMG_MAX_CHUNKS * 512);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(qimg_pread(img, qimg_image_size(img) - sizeof(buf),
                                sizeof(buf), buf, &err), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);
    qimg_close(img);
    free(d);
}

static void test_too_many_chunks(void **state)
{
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    size_t len;
    /* Empty chunks count too: they are dropped once the table is read. */
    uint8_t *d = make_dmg(DMG_MAX_CHUNKS + 1, true, &len);

    assert_int_equal(open_dmg(d, len, &img, &err), -EFBIG);
    assert_string_equal(err.msg, "dmg image has more than 1048576 chunks");
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_chunks),
        cmocka_unit_test(test_too_many_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
