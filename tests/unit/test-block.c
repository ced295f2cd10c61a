/*
 * Unit tests for the image graph over the file storage with the raw format:
 * open/probe, bounds checks, I/O, block status, truncate, json: filenames,
 * QEMU-style locks between two opens, and concurrent writers.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "qimg.h"

static char path[256];

static int setup(void **state)
{
    snprintf(path, sizeof(path), "/tmp/qimg-unit-%d.img", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fclose(f);
    assert_int_equal(truncate(path, 4 << 20), 0);
    return 0;
}

static int teardown(void **state)
{
    unlink(path);
    return 0;
}

static struct qimg_image *open_img(unsigned flags, const char *fmt)
{
    struct qimg_open_params p = {.filename = path, .format = fmt,
                                 .flags = flags};
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    int ret = qimg_open(&img, &p, &err);
    if (ret < 0)
        fail_msg("open: %s", err.msg);
    return img;
}

static void test_probe_raw(void **state)
{
    struct qimg_image *img = open_img(0, NULL);
    assert_string_equal(qimg_image_format(img), "raw");
    assert_true(qimg_image_probed_raw(img));
    assert_int_equal(qimg_image_size(img), 4 << 20);
    qimg_close(img);
    img = open_img(0, "raw");
    assert_false(qimg_image_probed_raw(img));
    qimg_close(img);
}

static void test_io_and_status(void **state)
{
    struct qimg_image *img = open_img(QIMG_OPEN_RDWR, "raw");
    struct qimg_error err = {0};
    struct qimg_extent ext;
    char buf[4096], back[4096];

    memset(buf, 0xab, sizeof(buf));
    assert_int_equal(qimg_pwrite(img, 1 << 20, sizeof(buf), buf, &err), 0);
    assert_int_equal(qimg_pread(img, 1 << 20, sizeof(back), back, &err), 0);
    assert_memory_equal(buf, back, sizeof(buf));
    /* Beyond the end is refused before reaching the driver. */
    assert_int_equal(qimg_pread(img, (4 << 20) - 1, 2, back, &err), -EIO);
    assert_int_equal(qimg_block_status(img, 0, 4 << 20, &ext, &err), 0);
    assert_true(ext.flags & QIMG_BS_ZERO);
    assert_true(ext.flags & QIMG_BS_ALLOCATED);
    assert_int_equal(ext.length, 1 << 20);
    assert_int_equal(qimg_block_status(img, 1 << 20, 4 << 20, &ext, &err), 0);
    assert_true(ext.flags & QIMG_BS_DATA);
    assert_int_equal(ext.host_offset, 1 << 20);
    assert_int_equal(qimg_pwrite_zeroes(img, 1 << 20, 4096, QIMG_ZERO_MAY_UNMAP,
                                        &err), 0);
    assert_int_equal(qimg_pread(img, 1 << 20, 16, back, &err), 0);
    assert_int_equal(back[0], 0);
    qimg_close(img);
}

static void test_read_only(void **state)
{
    struct qimg_image *img = open_img(0, "raw");
    struct qimg_error err = {0};
    char b = 1;
    assert_int_equal(qimg_pwrite(img, 0, 1, &b, &err), -EACCES);
    assert_int_equal(qimg_truncate(img, 1 << 20, false, QIMG_PREALLOC_OFF, &err),
                     -EACCES);
    qimg_close(img);
}

static void test_truncate(void **state)
{
    struct qimg_image *img = open_img(QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE, "raw");
    struct qimg_error err = {0};
    assert_int_equal(qimg_truncate(img, 8 << 20, false, QIMG_PREALLOC_OFF, &err), 0);
    assert_int_equal(qimg_image_size(img), 8 << 20);
    assert_int_equal(qimg_truncate(img, 4 << 20, false, QIMG_PREALLOC_OFF, &err), 0);
    qimg_close(img);
}

static void test_locks(void **state)
{
    struct qimg_image *writer = open_img(QIMG_OPEN_RDWR, "raw");
    struct qimg_open_params p = {.filename = path, .format = "raw",
                                 .flags = QIMG_OPEN_NO_SHARE};
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};

    /* A reader that refuses to share write conflicts with a writer. */
    assert_int_equal(qimg_open(&img, &p, &err), -EAGAIN);
    assert_non_null(strstr(err.msg, "Failed to get shared \"write\" lock"));
    /* -U (share) lifts that. */
    p.flags |= QIMG_OPEN_SHARE;
    assert_int_equal(qimg_open(&img, &p, &err), 0);
    qimg_close(img);
    /* Plain readers share everything. */
    p.flags = 0;
    assert_int_equal(qimg_open(&img, &p, &err), 0);
    qimg_close(img);
    qimg_close(writer);
}

static void test_json_filename(void **state)
{
    char json[512];
    struct qimg_open_params p = {.filename = json};
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};

    snprintf(json, sizeof(json),
             "json:{\"driver\":\"raw\",\"offset\":4096,\"size\":8192,"
             "\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}", path);
    assert_int_equal(qimg_open(&img, &p, &err), 0);
    assert_int_equal(qimg_image_size(img), 8192);
    qimg_close(img);
    snprintf(json, sizeof(json), "json:{bad");
    assert_int_equal(qimg_open(&img, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "Could not parse the JSON options"));
}

static void test_probed_raw_protects_sector0(void **state)
{
    /* Bytes that probe as qcow2 may not be written into a guessed raw image. */
    static const uint8_t magic[512] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    struct qimg_image *img = open_img(QIMG_OPEN_RDWR, NULL);
    struct qimg_error err = {0};

    assert_true(qimg_image_probed_raw(img));
    assert_int_equal(qimg_pwrite(img, 0, sizeof(magic), magic, &err), -EPERM);
    assert_int_equal(qimg_pwrite(img, 4096, sizeof(magic), magic, &err), 0);
    qimg_close(img);
    img = open_img(QIMG_OPEN_RDWR, "raw");
    assert_int_equal(qimg_pwrite(img, 0, sizeof(magic), magic, &err), 0);
    qimg_close(img);
}

struct writer_arg {
    struct qimg_image *img;
    int id;
    int ret;
};

static void *writer(void *opaque)
{
    struct writer_arg *a = opaque;
    struct qimg_error err = {0};
    char buf[65536];
    memset(buf, 'a' + a->id, sizeof(buf));
    for (int i = 0; i < 16 && !a->ret; i++)
        a->ret = qimg_pwrite(a->img, (uint64_t)(a->id * 16 + i) * sizeof(buf),
                             sizeof(buf), buf, &err);
    return NULL;
}

static void test_concurrent_writes(void **state)
{
    struct qimg_image *img = open_img(QIMG_OPEN_RDWR, "raw");
    struct writer_arg args[4];
    pthread_t th[4];
    struct qimg_error err = {0};
    char buf[65536];

    for (int i = 0; i < 4; i++) {
        args[i] = (struct writer_arg){.img = img, .id = i};
        pthread_create(&th[i], NULL, writer, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].ret, 0);
    }
    for (int i = 0; i < 64; i++) {
        assert_int_equal(qimg_pread(img, (uint64_t)i * sizeof(buf), sizeof(buf),
                                    buf, &err), 0);
        assert_int_equal(buf[0], 'a' + i / 16);
        assert_int_equal(buf[sizeof(buf) - 1], 'a' + i / 16);
    }
    qimg_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_probe_raw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_filename, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probed_raw_protects_sector0, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
