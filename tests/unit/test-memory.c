/*
 * Unit tests for the memory storage (lib/proto/memory.c): registration,
 * raw and qcow2 images held in memory, growth, zero reads past the end,
 * exclusive mode keeping names off the file system, and buffers that
 * outlive their registration while open.
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

static struct qimg_image *open_mem(const char *name, const char *fmt,
                                   unsigned flags)
{
    struct qimg_open_params p = {.filename = name, .format = fmt,
                                 .flags = flags | QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    if (qimg_open(&img, &p, &err) < 0)
        fail_msg("open %s: %s", name, err.msg);
    return img;
}

static void test_raw_in_memory(void **state)
{
    uint8_t data[1024], buf[1024];
    struct qimg_error err = {0};
    struct qimg_image *img;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    assert_false(qimg_mem_claims("mem:a"));
    assert_int_equal(qimg_mem_register("mem:a", data, sizeof(data)), 0);
    assert_true(qimg_mem_claims("mem:a"));
    assert_ptr_equal(qimg_storage_for("mem:a"), &qimg_storage_memory);
    img = open_mem("mem:a", NULL, QIMG_OPEN_RDWR);
    assert_string_equal(qimg_image_format(img), "raw");
    assert_int_equal(qimg_image_size(img), sizeof(data));
    assert_int_equal(qimg_pread(img, 0, sizeof(buf), buf, &err), 0);
    assert_memory_equal(buf, data, sizeof(data));
    /* Growth is zero filled; the registered buffer sees the writes. */
    assert_int_equal(qimg_truncate(img, 4096, false, QIMG_PREALLOC_OFF, &err), 0);
    assert_int_equal(qimg_pwrite(img, 4000, 4, "abcd", &err), 0);
    assert_int_equal(qimg_pread(img, 2000, 4, buf, &err), 0);
    assert_true(buf[0] == 0 && buf[3] == 0);
    qimg_close(img);

    void *copy = NULL;
    size_t len = 0;
    assert_int_equal(qimg_mem_get("mem:a", &copy, &len), 0);
    assert_int_equal(len, 4096);
    assert_memory_equal((uint8_t *)copy + 4000, "abcd", 4);
    free(copy);
    assert_int_equal(qimg_mem_unregister("mem:a"), 0);
    assert_int_equal(qimg_mem_unregister("mem:a"), -ENOENT);
    assert_false(qimg_mem_claims("mem:a"));
}

static void test_storage_reads_past_end(void **state)
{
    struct qimg_storage *st = NULL;
    struct qimg_error err = {0};
    uint8_t buf[16];

    assert_int_equal(qimg_mem_register("mem:short", "xy", 2), 0);
    assert_int_equal(qimg_storage_open(&st, "mem:short", 0, QIMG_CACHE_WRITEBACK,
                                       &err), 0);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(st->ops->pread(st, 1, sizeof(buf), buf, &err), 0);
    assert_int_equal(buf[0], 'y');
    assert_int_equal(buf[1], 0);
    assert_int_equal(buf[15], 0);
    /* Read-only storages refuse writes like a file opened O_RDONLY. */
    assert_int_equal(st->ops->pwrite(st, 0, 1, "z", &err), -EBADF);
    /* Unregistering an open buffer keeps it alive until closed. */
    assert_int_equal(qimg_mem_unregister("mem:short"), 0);
    assert_int_equal(st->ops->get_size(st), 2);
    qimg_storage_close(st);
}

static void test_qcow2_in_memory_exclusive(void **state)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_error err = {0};
    struct qimg_image *img;
    uint8_t buf[4096];

    qimg_mem_set_exclusive(true);
    /* Nothing reaches the file system: a real file's name is unknown. */
    struct qimg_open_params p = {.filename = "/etc/passwd",
                                 .flags = QIMG_OPEN_NO_LOCK};
    assert_int_equal(qimg_open(&img, &p, &err), -ENOENT);
    qimg_opts_set(o, "size", "4194304");
    qimg_opts_set(o, "cluster_size", "4096");
    assert_int_equal(qimg_create("qcow2", "q.qcow2", o, &err), 0);
    qimg_opts_free(o);
    img = open_mem("q.qcow2", NULL, QIMG_OPEN_RDWR);
    assert_string_equal(qimg_image_format(img), "qcow2");
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(qimg_pwrite(img, 8192, sizeof(buf), buf, &err), 0);
    qimg_close(img);
    img = open_mem("q.qcow2", "qcow2", 0);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(qimg_pread(img, 8192, sizeof(buf), buf, &err), 0);
    assert_int_equal(buf[0], 0x5a);
    assert_int_equal(buf[sizeof(buf) - 1], 0x5a);
    struct qimg_check res = {0};
    assert_int_equal(qimg_check(img, 0, &res, &err), 0);
    assert_int_equal(res.corruptions + res.leaks, 0);
    qimg_close(img);
    qimg_mem_unregister("q.qcow2");
    qimg_mem_set_exclusive(false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_in_memory),
        cmocka_unit_test(test_storage_reads_past_end),
        cmocka_unit_test(test_qcow2_in_memory_exclusive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
