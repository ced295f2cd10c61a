/*
 * Unit tests for the L2 table cache (lib/fmt/table/table-cache.c): slot
 * count from the budget, hits and misses, least-recently-used eviction,
 * write-through changes seen after eviction, new tables that are not
 * read, dropping, and bounds (a table over its limit, a read past the end
 * of the storage, a failed read leaving no entry).  And the block-map
 * write path with blocks that are not a power of two in size (parallels
 * clusters of 1536 bytes).
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
#include "fmt/table/table.h"

/* Eight tables of 64 big-endian 8-byte entries, table k at k * 512 with
 * entry i = k * 1000 + i. */
#define NT 8
#define NE 64

static struct qimg_storage *mem_storage_raw(const char *name,
                                            const void *data, size_t len)
{
    struct qimg_storage *st = NULL;
    struct qimg_error err = {0};

    assert_int_equal(qimg_mem_register(name, data, len), 0);
    if (qimg_storage_open(&st, name, QIMG_OPEN_RDWR | QIMG_OPEN_NO_LOCK,
                          QIMG_CACHE_WRITEBACK, &err) < 0)
        fail_msg("open %s: %s", name, err.msg);
    return st;
}

static struct qimg_storage *disk(const char *name)
{
    uint8_t *d = calloc(NT, NE * 8);
    struct qimg_storage *st;

    for (int k = 0; k < NT; k++)
        for (int i = 0; i < NE; i++)
            qimg_st_be64(d + k * NE * 8 + i * 8, (uint64_t)k * 1000 + i);
    st = mem_storage_raw(name, d, NT * NE * 8);
    free(d);
    return st;
}

static const struct qimg_table_geom geom = {
    .n = NE, .esize = 8, .big_endian = true, .max_bytes = NE * 8,
};

static void test_slots_from_budget(void **state)
{
    struct qimg_table_cache c;
    struct qimg_error err = {0};
    struct qimg_table_geom big = geom;

    /* 3 tables fit the budget; max_slots caps; at least one slot. */
    assert_int_equal(qimg_table_cache_init(&c, NULL, &geom, 16, 3 * NE * 8,
                                           "L2 table", &err), 0);
    assert_int_equal(c.nslots, 3);
    qimg_table_cache_release(&c);
    assert_int_equal(qimg_table_cache_init(&c, NULL, &geom, 2, 1 << 20,
                                           "L2 table", &err), 0);
    assert_int_equal(c.nslots, 2);
    qimg_table_cache_release(&c);
    assert_int_equal(qimg_table_cache_init(&c, NULL, &geom, 16, 1,
                                           "L2 table", &err), 0);
    assert_int_equal(c.nslots, 1);
    qimg_table_cache_release(&c);
    /* A table over its limit is refused before anything is allocated. */
    big.n = 1ull << 40;
    assert_int_equal(qimg_table_cache_init(&c, NULL, &big, 16, 1 << 20,
                                           "L2 table", &err), -EFBIG);
    assert_null(c.slots);
    qimg_table_cache_release(&c);   /* harmless on a failed init */
}

static void test_hits_and_eviction(void **state)
{
    struct qimg_storage *st = disk("mem:tc1");
    struct qimg_table_cache c;
    struct qimg_error err = {0};
    struct qimg_table *t;

    assert_int_equal(qimg_table_cache_init(&c, st, &geom, 2, 1 << 20,
                                           "L2 table", &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    assert_true(qimg_table_get(t, 5) == 5);
    assert_int_equal(qimg_table_cache_get(&c, 512, &t, &err), 0);
    assert_true(qimg_table_get(t, 5) == 1005);
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    assert_int_equal(c.hits, 1);
    assert_int_equal(c.misses, 2);
    /* Table 1 is now the least recently used: table 2 replaces it. */
    assert_int_equal(qimg_table_cache_get(&c, 1024, &t, &err), 0);
    assert_true(qimg_table_get(t, 63) == 2063);
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    assert_int_equal(c.hits, 2);
    assert_int_equal(qimg_table_cache_get(&c, 512, &t, &err), 0);
    assert_int_equal(c.misses, 4);

    /* Write-through: a change stored survives eviction. */
    qimg_table_set(t, 7, 0xabcdef);
    assert_int_equal(qimg_table_store(t, 7, 1, &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, 1536, &t, &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, 2048, &t, &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, 512, &t, &err), 0);
    assert_true(qimg_table_get(t, 7) == 0xabcdef);
    assert_true(qimg_table_get(t, 8) == 1008);

    /* Dropping forgets one table; clearing all of them. */
    unsigned long long misses = c.misses;
    qimg_table_cache_drop(&c, 512);
    assert_int_equal(qimg_table_cache_get(&c, 512, &t, &err), 0);
    assert_int_equal(c.misses, misses + 1);
    qimg_table_cache_clear(&c);
    assert_int_equal(qimg_table_cache_get(&c, 512, &t, &err), 0);
    assert_int_equal(c.misses, misses + 2);
    qimg_table_cache_release(&c);
    qimg_table_cache_release(&c);   /* twice is harmless */
    qimg_storage_close(st);
    qimg_mem_unregister("mem:tc1");
}

static void test_new_tables(void **state)
{
    struct qimg_storage *st = disk("mem:tc2");
    struct qimg_table_cache c;
    struct qimg_error err = {0};
    struct qimg_table *t;

    assert_int_equal(qimg_table_cache_init(&c, st, &geom, 4, 1 << 20,
                                           "L2 table", &err), 0);
    /* A new table is zeroed, not read, and then found by get. */
    assert_int_equal(qimg_table_cache_new(&c, 1024, &t, &err), 0);
    assert_true(qimg_table_get(t, 3) == 0);
    qimg_table_set(t, 3, 42);
    assert_int_equal(qimg_table_cache_get(&c, 1024, &t, &err), 0);
    assert_true(qimg_table_get(t, 3) == 42);
    assert_int_equal(c.misses, 0);
    /* new() over a cached table replaces it with zeroes. */
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    assert_int_equal(qimg_table_cache_new(&c, 0, &t, &err), 0);
    assert_true(qimg_table_get(t, 1) == 0);
    assert_int_equal(qimg_table_store_all(t, &err), 0);
    qimg_table_cache_clear(&c);
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    assert_true(qimg_table_get(t, 1) == 0);
    qimg_table_cache_release(&c);
    qimg_storage_close(st);
    qimg_mem_unregister("mem:tc2");
}

static void test_bounds(void **state)
{
    struct qimg_storage *st = disk("mem:tc3");
    struct qimg_table_cache c;
    struct qimg_error err = {0};
    struct qimg_table_geom g = geom;
    struct qimg_table *t;

    /* Past the end of the storage: zeroes, as QEMU reads them. */
    assert_int_equal(qimg_table_cache_init(&c, st, &g, 4, 1 << 20, "L2 table",
                                           &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, NT * NE * 8 - 8, &t, &err), 0);
    assert_true(qimg_table_get(t, 0) == 7063);
    assert_true(qimg_table_get(t, 1) == 0);
    /* An offset that wraps fails and leaves no entry behind. */
    assert_int_equal(qimg_table_cache_get(&c, UINT64_MAX - 8, &t, &err),
                     -EINVAL);
    assert_null(t);
    for (size_t i = 0; i < c.nslots; i++)
        assert_false(c.slots[i].t.raw && c.slots[i].t.offset == UINT64_MAX - 8);
    qimg_table_cache_release(&c);
    /* Tables that must lie inside the file. */
    g.inside_file = true;
    assert_int_equal(qimg_table_cache_init(&c, st, &g, 4, 1 << 20, "L2 table",
                                           &err), 0);
    assert_int_equal(qimg_table_cache_get(&c, NT * NE * 8 - 8, &t, &err),
                     -EINVAL);
    assert_int_equal(qimg_table_cache_get(&c, 0, &t, &err), 0);
    qimg_table_cache_release(&c);
    qimg_storage_close(st);
    qimg_mem_unregister("mem:tc3");
}

/* ---- odd block sizes -------------------------------------------------- */

#define ODD_BS 1536u

struct odd {
    struct qimg_table map;          /* host offset per block, 0: none */
    struct qimg_alloc alloc;
};

static int odd_map(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_map_ext *m, struct qimg_error *err)
{
    struct odd *o = node->state;
    uint64_t e = qimg_table_get(&o->map, off / ODD_BS);

    m->len = ODD_BS - off % ODD_BS;
    m->kind = e ? QIMG_MAP_DATA : QIMG_MAP_UNALLOC;
    m->host = e + off % ODD_BS;
    return 0;
}

static int odd_allocate(struct qimg_image *node, uint64_t block_off,
                        uint64_t *host, struct qimg_error *err)
{
    struct odd *o = node->state;
    return qimg_alloc_append(&o->alloc, ODD_BS, 0, host, err);
}

static int odd_commit(struct qimg_image *node, uint64_t block_off,
                      uint64_t host, enum qimg_map_kind was,
                      struct qimg_error *err)
{
    struct odd *o = node->state;
    qimg_table_set(&o->map, block_off / ODD_BS, host);
    return 0;
}

static void test_odd_block_size(void **state)
{
    static uint8_t disk[512];
    uint8_t buf[4 * ODD_BS], data[2000];
    struct qimg_error err = {0};
    struct qimg_image node = {0};
    struct odd odd = {0};
    const struct qimg_table_write_ops ops = {
        .map = odd_map, .block_size = ODD_BS, .allocate = odd_allocate,
        .commit = odd_commit, .fill_from_backing = true,
    };
    struct qimg_table_geom g = {.n = 4, .esize = 8, .max_bytes = 64};

    node.file = mem_storage_raw("mem:odd", disk, sizeof(disk));
    node.filename = "mem:odd";
    node.size = 4 * ODD_BS;
    node.state = &odd;
    pthread_mutex_init(&node.lock, NULL);
    assert_int_equal(qimg_table_init_zero(&odd.map, node.file, &g, "map",
                                          &err), 0);
    odd.alloc = (struct qimg_alloc){.end = 512, .max = 1 << 20};
    memset(data, 'x', sizeof(data));
    /* 1000..3000 spans blocks 0 and 1 (split at 1536, not 1024/2048). */
    assert_int_equal(qimg_table_pwrite(&node, 1000, sizeof(data), data, &ops,
                                       &err), 0);
    assert_true(qimg_table_get(&odd.map, 0) == 512);
    assert_true(qimg_table_get(&odd.map, 1) == 512 + ODD_BS);
    assert_true(qimg_table_get(&odd.map, 2) == 0);
    assert_int_equal(qimg_table_pread(&node, 0, sizeof(buf), buf, odd_map,
                                      &err), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], i >= 1000 && i < 3000 ? 'x' : 0);
    /* A block size of 0 is refused. */
    struct qimg_table_write_ops bad = ops;
    bad.block_size = 0;
    assert_int_equal(qimg_table_pwrite(&node, 0, 1, data, &bad, &err),
                     -EINVAL);
    qimg_table_release(&odd.map);
    qimg_storage_close(node.file);
    pthread_mutex_destroy(&node.lock);
    qimg_mem_unregister("mem:odd");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_from_budget),
        cmocka_unit_test(test_hits_and_eviction),
        cmocka_unit_test(test_new_tables),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_odd_block_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
