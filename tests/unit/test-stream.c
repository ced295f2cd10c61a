/*
 * Unit tests for the stream storage (lib/proto/stream.c): the look-back
 * ring (reads inside the window, reads across its wrap point, a read
 * before it refused), a stream cut short of its declared size, and the
 * forward writer (gaps and the tail written as zeroes, writes behind the
 * end refused).  The streams are pipes named through /proc/self/fd.
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

#include "core/block.h"

#define MiB (1u << 20)

static uint8_t byte_at(uint64_t off)
{
    return (uint8_t)(off * 7 + off / 4099);
}

struct feeder {
    int fd;
    uint64_t len;
};

static void *feed(void *arg)
{
    struct feeder *f = arg;
    uint8_t buf[65536];

    for (uint64_t off = 0; off < f->len;) {
        size_t n = (size_t)(f->len - off < sizeof(buf) ? f->len - off
                                                       : sizeof(buf));
        for (size_t i = 0; i < n; i++)
            buf[i] = byte_at(off + i);
        ssize_t w = write(f->fd, buf, n);
        if (w <= 0)
            break;          /* the reader closed: done */
        off += (uint64_t)w;
    }
    close(f->fd);
    return NULL;
}

static struct qimg_storage *open_stream(int fd, const char *size,
                                        unsigned flags)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_storage *st = NULL;
    struct qimg_error err = {0};
    char name[64];

    snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
    qimg_opts_set(o, "driver", "stream");
    qimg_opts_set(o, "filename", name);
    if (size)
        qimg_opts_set(o, "size", size);
    if (qimg_storage_open_opts(&st, NULL, o, flags | QIMG_OPEN_NO_LOCK,
                               QIMG_CACHE_WRITEBACK, 0, &err) < 0)
        fail_msg("open: %s", err.msg);
    qimg_opts_free(o);
    return st;
}

static void check_range(struct qimg_storage *st, uint64_t off, size_t len,
                        uint8_t *buf)
{
    struct qimg_error err = {0};

    assert_int_equal(st->ops->pread(st, off, len, buf, &err), 0);
    for (size_t i = 0; i < len; i++)
        if (buf[i] != byte_at(off + i))
            fail_msg("byte %llu", (unsigned long long)(off + i));
}

static void test_window(void **state)
{
    struct feeder f = {.len = 40ull * MiB};
    struct qimg_error err = {0};
    struct qimg_storage *st;
    pthread_t t;
    int p[2];
    uint8_t *buf = malloc(4 * MiB);

    (void)state;
    assert_int_equal(pipe(p), 0);
    f.fd = p[1];
    pthread_create(&t, NULL, feed, &f);
    st = open_stream(p[0], "40M", 0);
    close(p[0]);
    assert_true(st->caps & QIMG_STORAGE_SEQUENTIAL);
    assert_int_equal(st->ops->get_size(st), 40 * MiB);
    check_range(st, 0, 4096, buf);
    check_range(st, 0, 512, buf);               /* probing reads again */
    check_range(st, 15 * MiB + 12345, 3 * MiB, buf);  /* across the wrap */
    check_range(st, 10 * MiB, 4096, buf);       /* back, inside the window */
    check_range(st, 33 * MiB - 7, 2 * MiB, buf);      /* skips ahead */
    /* 35 MiB read: what lies before 35 - 16 MiB is gone */
    assert_int_equal(st->ops->pread(st, 18 * MiB, 4096, buf, &err), -ESPIPE);
    assert_non_null(strstr(err.msg, "Cannot read back"));
    check_range(st, 40 * MiB - 4096, 4096, buf);
    qimg_storage_close(st);
    pthread_join(t, NULL);
    free(buf);
}

static void test_short_stream(void **state)
{
    struct feeder f = {.len = 3 * MiB};
    struct qimg_error err = {0};
    struct qimg_storage *st;
    pthread_t t;
    int p[2];
    uint8_t buf[8192];

    (void)state;
    assert_int_equal(pipe(p), 0);
    f.fd = p[1];
    pthread_create(&t, NULL, feed, &f);
    st = open_stream(p[0], "4M", 0);
    close(p[0]);
    assert_int_equal(st->ops->pread(st, 3 * MiB - 4096, sizeof(buf), buf,
                                    &err), -EIO);
    assert_non_null(strstr(err.msg, "ended after 3145728 bytes"));
    qimg_storage_close(st);
    pthread_join(t, NULL);
}

static void test_writer(void **state)
{
    struct qimg_error err = {0};
    struct qimg_storage *st;
    uint8_t out[3 * 4096], want[3 * 4096] = {0};
    int p[2];

    (void)state;
    assert_int_equal(pipe(p), 0);
    st = open_stream(p[1], "12288", QIMG_OPEN_RDWR);
    close(p[1]);
    memset(want + 4096, 'a', 100);
    assert_int_equal(st->ops->pwrite(st, 4096, 100, want + 4096, &err), 0);
    assert_int_equal(st->ops->pwrite(st, 0, 10, "x", &err), -ESPIPE);
    assert_int_equal(st->ops->pwrite_zeroes(st, 4196, 100, 0, &err), 0);
    assert_int_equal(st->ops->flush(st, &err), 0);
    qimg_storage_close(st);
    assert_int_equal(read(p[0], out, sizeof(out)), (ssize_t)sizeof(out));
    assert_int_equal(read(p[0], out, 1), 0);        /* exactly its size */
    close(p[0]);
    assert_memory_equal(out, want, sizeof(out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_short_stream),
        cmocka_unit_test(test_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
