/* Unit tests for lib/core/chunk-cache.c (shared decompressed chunks) and
 * lib/core/inflate.c (QEMU's exact-size rule for zlib streams). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <zlib.h>

#include "core/block.h"
#include "core/chunk-cache.h"
#include "core/inflate.h"

#define CHUNK 4096

static atomic_int fills;

/* Chunk i holds bytes (i * 31 + j) & 0xff; chunk 13 fails. */
static int fill(struct qimg_image *node, uint64_t index, uint8_t *in,
                size_t in_len, uint8_t *out, size_t out_len,
                struct qimg_error *err)
{
    atomic_fetch_add(&fills, 1);
    if (index == 13)
        return qimg_error_set(err, -EIO, "Input/output error");
    for (size_t j = 0; j < out_len; j++)
        out[j] = (uint8_t)(index * 31 + j);
    return 0;
}

struct fixture {
    struct qimg_image node;
    struct qimg_chunk_cache cache;
};

static void setup(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->node.lock, NULL);
    assert_int_equal(qimg_chunk_cache_init(&f->cache), 0);
    atomic_store(&fills, 0);
}

static void teardown(struct fixture *f)
{
    qimg_chunk_cache_release(&f->cache);
    pthread_mutex_destroy(&f->node.lock);
}

static bool chunk_ok(const uint8_t *d, uint64_t i)
{
    for (size_t j = 0; j < CHUNK; j++)
        if (d[j] != (uint8_t)(i * 31 + j))
            return false;
    return true;
}

static void test_hit_and_error(void **state)
{
    struct fixture f;
    struct qimg_error err;
    const uint8_t *d;
    int slot;

    setup(&f);
    slot = qimg_chunk_get(&f.node, &f.cache, 5, 100, CHUNK, fill, &d, &err);
    assert_true(slot >= 0);
    assert_true(chunk_ok(d, 5));
    qimg_chunk_put(&f.node, &f.cache, slot);
    slot = qimg_chunk_get(&f.node, &f.cache, 5, 100, CHUNK, fill, &d, &err);
    assert_true(slot >= 0 && chunk_ok(d, 5));
    qimg_chunk_put(&f.node, &f.cache, slot);
    assert_int_equal(atomic_load(&fills), 1);   /* second get was a hit */
    /* A failed fill pins nothing and is not cached. */
    assert_int_equal(qimg_chunk_get(&f.node, &f.cache, 13, 1, CHUNK, fill, &d,
                                    &err), -EIO);
    assert_int_equal(qimg_chunk_get(&f.node, &f.cache, 13, 1, CHUNK, fill, &d,
                                    &err), -EIO);
    assert_int_equal(atomic_load(&fills), 3);
    /* More chunks than slots: all still readable, old ones evicted. */
    for (uint64_t i = 0; i < 3 * QIMG_CHUNK_CACHE_SLOTS; i++) {
        slot = qimg_chunk_get(&f.node, &f.cache, i + 100, 10, CHUNK, fill, &d,
                              &err);
        assert_true(slot >= 0 && chunk_ok(d, i + 100));
        qimg_chunk_put(&f.node, &f.cache, slot);
    }
    assert_true(f.cache.bytes <= QIMG_CHUNK_CACHE_BUDGET);
    /* One reader at a time reuses one slot's buffers (the first ones held
     * 100 and CHUNK bytes: the largest of each), not one per slot. */
    assert_int_equal(f.cache.bytes, 100 + CHUNK);
    teardown(&f);
}

/* One chunk larger than the budget alone is still served. */
static void test_oversized(void **state)
{
    struct fixture f;
    struct qimg_error err;
    const uint8_t *d;
    int slot;

    setup(&f);
    slot = qimg_chunk_get(&f.node, &f.cache, 1, QIMG_CHUNK_CACHE_BUDGET, CHUNK,
                          fill, &d, &err);
    assert_true(slot >= 0 && chunk_ok(d, 1));
    qimg_chunk_put(&f.node, &f.cache, slot);
    slot = qimg_chunk_get(&f.node, &f.cache, 2, 10, CHUNK, fill, &d, &err);
    assert_true(slot >= 0 && chunk_ok(d, 2));
    qimg_chunk_put(&f.node, &f.cache, slot);
    teardown(&f);
}

static struct fixture shared;
static atomic_int bad;

static void *reader(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    struct qimg_error err;
    const uint8_t *d;

    for (int n = 0; n < 3000; n++) {
        uint64_t i = rand_r(&seed) % 40;
        int slot;
        if (i == 13)
            continue;
        slot = qimg_chunk_get(&shared.node, &shared.cache, i, 64, CHUNK, fill,
                              &d, &err);
        if (slot < 0 || !chunk_ok(d, i))
            atomic_fetch_add(&bad, 1);
        if (slot >= 0)
            qimg_chunk_put(&shared.node, &shared.cache, slot);
    }
    return NULL;
}

/* 24 threads (more than slots) on 40 chunks: every read sees its chunk. */
static void test_threads(void **state)
{
    pthread_t t[24];

    setup(&shared);
    for (size_t i = 0; i < 24; i++)
        pthread_create(&t[i], NULL, reader, (void *)(uintptr_t)(i + 1));
    for (size_t i = 0; i < 24; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&bad), 0);
    for (size_t i = 0; i < QIMG_CHUNK_CACHE_SLOTS; i++)
        assert_int_equal(shared.cache.slots[i].pins, 0);
    teardown(&shared);
}

static void test_inflate_exact(void **state)
{
    uint8_t data[3000], comp[4000], out[3001];
    uLongf clen = sizeof(comp);

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i % 7);
    assert_int_equal(compress2(comp, &clen, data, sizeof(data), 6), Z_OK);
    /* Trailing bytes after the stream are ignored. */
    memset(comp + clen, 0xaa, 10);
    assert_int_equal(qimg_inflate_zlib(comp, clen + 10, out, sizeof(data)), 0);
    assert_memory_equal(out, data, sizeof(data));
    /* Too small or too large an output, a cut stream: refused. */
    assert_int_equal(qimg_inflate_zlib(comp, clen, out, sizeof(data) - 1),
                     -EIO);
    assert_int_equal(qimg_inflate_zlib(comp, clen, out, sizeof(data) + 1),
                     -EIO);
    assert_int_equal(qimg_inflate_zlib(comp, clen - 5, out, sizeof(data)),
                     -EIO);
    assert_int_equal(qimg_inflate_zlib(comp, 0, out, sizeof(data)), -EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_and_error),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_inflate_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
