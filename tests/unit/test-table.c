/*
 * Unit tests for the allocation-table helper (lib/fmt/table): loading with
 * bounds, both byte orders and widths, sector write-back that never
 * touches bytes past the table, the append allocator, and the block-map
 * data path (reads through unallocated / zero / data mappings, allocating
 * writes that fill from the backing file, in-place writes) over a toy
 * format held in the memory storage, blocks that are not a power of two
 * in size (parallels clusters of 1536 bytes), and the L2 table cache:
 * slot count from the budget, hits and misses, least-recently-used
 * eviction, write-through changes seen after eviction, new tables that
 * are not read, dropping, and bounds (a table over its limit, a read past
 * the end of the storage, a failed read leaving no entry).
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

static struct qimg_storage *mem_storage(const char *name, const void *data,
                                        size_t len)
{
    struct qimg_storage *st = NULL;
    struct qimg_error err = {0};

    assert_int_equal(qimg_mem_register(name, data, len), 0);
    if (qimg_storage_open(&st, name, QIMG_OPEN_RDWR | QIMG_OPEN_NO_LOCK,
                          QIMG_CACHE_WRITEBACK, &err) < 0)
        fail_msg("open %s: %s", name, err.msg);
    return st;
}

static void test_load_orders_and_widths(void **state)
{
    uint8_t disk[64];
    struct qimg_error err = {0};
    struct qimg_table t;

    for (size_t i = 0; i < sizeof(disk); i++)
        disk[i] = (uint8_t)i;
    struct qimg_storage *st = mem_storage("mem:t1", disk, sizeof(disk));
    struct qimg_table_geom g = {.offset = 8, .n = 2, .esize = 4,
                                .big_endian = true, .max_bytes = 64};
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), 0);
    assert_int_equal(qimg_table_get(&t, 0), 0x08090a0bu);
    assert_int_equal(qimg_table_get(&t, 1), 0x0c0d0e0fu);
    qimg_table_release(&t);
    g.big_endian = false;
    g.esize = 8;
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), 0);
    assert_true(qimg_table_get(&t, 0) == 0x0f0e0d0c0b0a0908ull);
    qimg_table_release(&t);
    qimg_storage_close(st);
    qimg_mem_unregister("mem:t1");
}

static void test_load_bounds(void **state)
{
    uint8_t disk[512] = {0};
    struct qimg_error err = {0};
    struct qimg_table t;
    struct qimg_storage *st = mem_storage("mem:t2", disk, sizeof(disk));

    /* Larger than the format's limit: refused before any allocation. */
    struct qimg_table_geom g = {.offset = 0, .n = 1ull << 40, .esize = 4,
                                .max_bytes = 1 << 20};
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), -EFBIG);
    assert_null(t.raw);
    /* n * esize overflowing 64 bits. */
    g.n = UINT64_MAX / 2;
    g.max_bytes = UINT64_MAX;
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), -EFBIG);
    /* Offset + size wrapping. */
    g.n = 16;
    g.offset = UINT64_MAX - 8;
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), -EINVAL);
    /* Past the end of the file: refused only when asked. */
    g.offset = 500;
    g.inside_file = true;
    assert_int_equal(qimg_table_load(&t, st, &g, "block map", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "block map"));
    g.inside_file = false;
    assert_int_equal(qimg_table_load(&t, st, &g, "block map", &err), 0);
    assert_int_equal(qimg_table_get(&t, 15), 0);   /* past EOF: zero */
    qimg_table_release(&t);
    /* Bad widths are programmer errors reported, not crashes. */
    g.esize = 3;
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), -EINVAL);
    /* An empty table. */
    g.esize = 4;
    g.n = 0;
    assert_int_equal(qimg_table_load(&t, st, &g, "BAT", &err), 0);
    assert_null(t.raw);
    qimg_table_release(&t);
    qimg_storage_close(st);
    qimg_mem_unregister("mem:t2");
}

static void test_store_sectors(void **state)
{
    uint8_t disk[2048];
    struct qimg_error err = {0};
    struct qimg_table t;
    void *copy;
    size_t len;

    memset(disk, 0xee, sizeof(disk));
    struct qimg_storage *st = mem_storage("mem:t3", disk, sizeof(disk));
    /* 200 four-byte entries at 512: 800 bytes, the second sector partly. */
    struct qimg_table_geom g = {.offset = 512, .n = 200, .esize = 4,
                                .max_bytes = 4096};
    assert_int_equal(qimg_table_init_zero(&t, st, &g, "BAT", &err), 0);
    qimg_table_set(&t, 199, 0x11223344);
    qimg_table_set(&t, 3, 0xffffffffu);
    assert_int_equal(qimg_table_store(&t, 199, 1, &err), 0);
    assert_int_equal(qimg_mem_get("mem:t3", &copy, &len), 0);
    uint8_t *d = copy;
    /* The sector holding entry 199 (bytes 1024..1312) went out whole up to
     * the table's end; the first sector and the bytes after the table
     * were not written. */
    assert_int_equal(qimg_ld_le32(d + 512 + 199 * 4), 0x11223344);
    assert_int_equal(d[1024], 0);
    assert_int_equal(d[512 + 3 * 4], 0xee);
    assert_int_equal(d[512 + 800], 0xee);
    free(copy);
    assert_int_equal(qimg_table_store_all(&t, &err), 0);
    assert_int_equal(qimg_mem_get("mem:t3", &copy, &len), 0);
    d = copy;
    assert_int_equal(qimg_ld_le32(d + 512 + 3 * 4), 0xffffffffu);
    assert_int_equal(d[512 + 800], 0xee);
    free(copy);
    /* Out-of-range stores are clamped. */
    assert_int_equal(qimg_table_store(&t, 500, 10, &err), 0);
    assert_int_equal(qimg_table_store(&t, 190, 1000, &err), 0);
    qimg_table_release(&t);
    qimg_storage_close(st);
    qimg_mem_unregister("mem:t3");
}

static void test_alloc(void **state)
{
    struct qimg_error err = {0};
    struct qimg_alloc a = {.end = 1000, .max = 1 << 20};
    uint64_t off;

    assert_int_equal(qimg_alloc_append(&a, 4096, 4096, &off, &err), 0);
    assert_int_equal(off, 4096);
    assert_int_equal(a.end, 8192);
    assert_int_equal(qimg_alloc_append(&a, 10, 0, &off, &err), 0);
    assert_int_equal(off, 8192);
    assert_int_equal(qimg_alloc_append(&a, 1 << 20, 512, &off, &err), -EFBIG);
    assert_int_equal(a.end, 8202);     /* unchanged by the failure */
    a.end = UINT64_MAX - 10;
    a.max = UINT64_MAX;
    assert_int_equal(qimg_alloc_append(&a, 100, 0, &off, &err), -EFBIG);
    assert_int_equal(qimg_alloc_append(&a, 1, 4096, &off, &err), -EFBIG);
}

/* ---- a toy format: 8 blocks of 4 KiB, a little-endian 4-byte map at
 * offset 0 (0: unallocated, 1: zero, else the host offset), data from
 * 4096 on. */

#define TOY_BS 4096u
#define TOY_BLOCKS 8u

struct toy {
    struct qimg_table map;
    struct qimg_alloc alloc;
    int commits;
};

static int toy_map(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_map_ext *m, struct qimg_error *err)
{
    struct toy *t = node->state;
    uint64_t i = off / TOY_BS, e = qimg_table_get(&t->map, i);

    m->len = TOY_BS - off % TOY_BS;
    m->kind = e == 0 ? QIMG_MAP_UNALLOC : e == 1 ? QIMG_MAP_ZERO
                                                  : QIMG_MAP_DATA;
    m->host = e + off % TOY_BS;
    return 0;
}

static int toy_allocate(struct qimg_image *node, uint64_t block_off,
                        uint64_t *host, struct qimg_error *err)
{
    struct toy *t = node->state;
    return qimg_alloc_append(&t->alloc, TOY_BS, TOY_BS, host, err);
}

static int toy_commit(struct qimg_image *node, uint64_t block_off,
                      uint64_t host, enum qimg_map_kind was,
                      struct qimg_error *err)
{
    struct toy *t = node->state;
    t->commits++;
    qimg_table_set(&t->map, block_off / TOY_BS, host);
    return qimg_table_store(&t->map, block_off / TOY_BS, 1, err);
}

static const struct qimg_table_write_ops toy_ops = {
    .map = toy_map, .block_size = TOY_BS, .allocate = toy_allocate,
    .commit = toy_commit, .fill_from_backing = true,
};

static void test_data_path(void **state)
{
    static uint8_t disk[4096 + 4096], back[TOY_BS * TOY_BLOCKS];
    static uint8_t buf[TOY_BS * 3];
    struct qimg_error err = {0};
    struct qimg_image node = {0}, *backing = NULL;
    struct toy toy = {0};
    struct qimg_extent ext;

    /* Block 0 unallocated, 1 zero, 2 at host 4096 (bytes 'D'). */
    qimg_st_le32(disk + 4, 1);
    qimg_st_le32(disk + 8, 4096);
    memset(disk + 4096, 'D', 4096);
    memset(back, 'B', sizeof(back));
    node.file = mem_storage("mem:toy", disk, sizeof(disk));
    node.filename = "mem:toy";
    node.size = TOY_BS * TOY_BLOCKS;
    node.state = &toy;
    pthread_mutex_init(&node.lock, NULL);
    assert_int_equal(qimg_mem_register("mem:toyback", back, sizeof(back)), 0);
    struct qimg_open_params p = {.filename = "mem:toyback", .format = "raw",
                                 .flags = QIMG_OPEN_NO_LOCK};
    assert_int_equal(qimg_open(&backing, &p, &err), 0);
    node.backing = backing;
    struct qimg_table_geom g = {.offset = 0, .n = TOY_BLOCKS, .esize = 4,
                                .max_bytes = 4096};
    assert_int_equal(qimg_table_load(&toy.map, node.file, &g, "map", &err), 0);
    toy.alloc = (struct qimg_alloc){.end = 8192, .max = 1 << 20};

    /* Reads across the three kinds. */
    assert_int_equal(qimg_table_pread(&node, 4000, 8192, buf, toy_map, &err),
                     0);
    assert_int_equal(buf[0], 'B');       /* 4000..4095: backing */
    assert_int_equal(buf[96], 0);        /* 4096..8191: zero */
    assert_int_equal(buf[96 + 4096], 'D'); /* 8192..: data */
    assert_int_equal(qimg_table_block_status(&node, 8192 + 10, 100000, &ext,
                                             toy_map, false, &err), 0);
    assert_int_equal(ext.flags, QIMG_BS_ALLOCATED | QIMG_BS_DATA |
                                    QIMG_BS_OFFSET_VALID);
    assert_int_equal(ext.host_offset, 4096 + 10);
    assert_int_equal(ext.length, TOY_BS - 10);
    assert_int_equal(qimg_table_block_status(&node, 4096, 4096, &ext, toy_map,
                                             false, &err), 0);
    assert_int_equal(ext.flags, QIMG_BS_ALLOCATED | QIMG_BS_ZERO);
    assert_int_equal(qimg_table_block_status(&node, 0, 4096, &ext, toy_map,
                                             false, &err), 0);
    assert_int_equal(ext.flags, 0);

    /* A partial write into the unallocated block 0 fills from the
     * backing file; into the zero block 1 with zeroes. */
    assert_int_equal(qimg_table_pwrite(&node, 100, 8, "abcdefgh", &toy_ops,
                                       &err), 0);
    assert_int_equal(qimg_table_pwrite(&node, 4096 + 100, 8, "ABCDEFGH",
                                       &toy_ops, &err), 0);
    assert_int_equal(toy.commits, 2);
    assert_int_equal(qimg_table_get(&toy.map, 0), 8192);
    assert_int_equal(qimg_table_get(&toy.map, 1), 12288);
    assert_int_equal(qimg_table_pread(&node, 0, 8192, buf, toy_map, &err), 0);
    assert_int_equal(buf[99], 'B');
    assert_memory_equal(buf + 100, "abcdefgh", 8);
    assert_int_equal(buf[108], 'B');
    assert_int_equal(buf[4096 + 99], 0);
    assert_memory_equal(buf + 4096 + 100, "ABCDEFGH", 8);
    /* In place: no new commit; a write over two data blocks. */
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(qimg_table_pwrite(&node, 50, 8192, buf, &toy_ops, &err),
                     0);
    assert_int_equal(toy.commits, 2);    /* blocks 0..2 were all data */
    assert_int_equal(qimg_table_pread(&node, 0, 8192 + 100, buf, toy_map,
                                      &err), 0);
    assert_int_equal(buf[49], 'B');
    assert_int_equal(buf[50], 'x');
    assert_int_equal(buf[8192 + 49], 'x');
    assert_int_equal(buf[8192 + 50], 'D');
    /* The map on disk followed the commits. */
    void *copy;
    size_t len;
    assert_int_equal(qimg_mem_get("mem:toy", &copy, &len), 0);
    assert_int_equal(qimg_ld_le32((uint8_t *)copy + 0), 8192);
    assert_int_equal(qimg_ld_le32((uint8_t *)copy + 4), 12288);
    free(copy);
    /* Allocation failure leaves the table alone. */
    toy.alloc.max = toy.alloc.end;
    assert_int_equal(qimg_table_pwrite(&node, 5 * TOY_BS, 1, "z", &toy_ops,
                                       &err), -EFBIG);
    assert_int_equal(qimg_table_get(&toy.map, 5), 0);

    qimg_table_release(&toy.map);
    qimg_close(backing);
    qimg_storage_close(node.file);
    pthread_mutex_destroy(&node.lock);
    qimg_mem_unregister("mem:toy");
    qimg_mem_unregister("mem:toyback");
}

/* new_block_reads_zero: only the bytes a write covers go to a new block.
 * The toy's "fresh" area is filled with 'P' so that bytes the helper did
 * not write show (a real format's allocate() makes them read as zero). */
static void test_new_block_reads_zero(void **state)
{
    static uint8_t disk[4096 + 2 * TOY_BS];
    struct qimg_error err = {0};
    struct qimg_image node = {0};
    struct toy toy = {0};
    struct qimg_table_write_ops ops = toy_ops;
    uint8_t buf[TOY_BS];

    memset(disk + 4096, 'P', 2 * TOY_BS);
    qimg_st_le32(disk + 4, 1);              /* block 1: zero */
    node.file = mem_storage("mem:toyz", disk, sizeof(disk));
    node.filename = "mem:toyz";
    node.size = TOY_BS * TOY_BLOCKS;
    node.state = &toy;
    pthread_mutex_init(&node.lock, NULL);
    struct qimg_table_geom g = {.offset = 0, .n = TOY_BLOCKS, .esize = 4,
                                .max_bytes = 4096};
    assert_int_equal(qimg_table_load(&toy.map, node.file, &g, "map", &err), 0);
    toy.alloc = (struct qimg_alloc){.end = 4096, .max = 1 << 20};
    ops.fill_from_backing = false;
    ops.new_block_reads_zero = true;

    /* Into the unallocated block 0 and the zero block 1. */
    assert_int_equal(qimg_table_pwrite(&node, 100, 8, "abcdefgh", &ops, &err),
                     0);
    assert_int_equal(qimg_table_pwrite(&node, TOY_BS + 7, 3, "xyz", &ops,
                                       &err), 0);
    assert_int_equal(qimg_table_get(&toy.map, 0), 4096);
    assert_int_equal(qimg_table_get(&toy.map, 1), 4096 + TOY_BS);
    assert_int_equal(node.file->ops->pread(node.file, 4096, TOY_BS, buf, &err),
                     0);
    assert_int_equal(buf[99], 'P');
    assert_memory_equal(buf + 100, "abcdefgh", 8);
    assert_int_equal(buf[108], 'P');
    assert_int_equal(node.file->ops->pread(node.file, 4096 + TOY_BS, TOY_BS,
                                           buf, &err), 0);
    assert_int_equal(buf[6], 'P');
    assert_memory_equal(buf + 7, "xyz", 3);
    /* With fill_from_backing an unallocated block is still staged whole
     * (zeroes here: no backing file). */
    ops.fill_from_backing = true;
    toy.alloc.end = 4096 + TOY_BS;  /* reuse block 1's area for block 2 */
    assert_int_equal(qimg_table_pwrite(&node, 2 * TOY_BS + 1, 1, "q", &ops,
                                       &err), 0);
    assert_int_equal(node.file->ops->pread(node.file, 4096 + TOY_BS, TOY_BS,
                                           buf, &err), 0);
    assert_int_equal(buf[0], 0);
    assert_int_equal(buf[1], 'q');
    assert_int_equal(buf[7], 0);

    qimg_table_release(&toy.map);
    qimg_storage_close(node.file);
    pthread_mutex_destroy(&node.lock);
    qimg_mem_unregister("mem:toyz");
}

/* whole_last_block: the image's partial last block is written whole,
 * block_size bytes; without it the write stops at the image's end. */
static void test_whole_last_block(void **state)
{
    static uint8_t disk[4096];
    struct qimg_error err = {0};
    struct qimg_image node = {0};
    struct toy toy = {0};
    struct qimg_table_write_ops ops = toy_ops;
    uint64_t last = TOY_BS * (TOY_BLOCKS - 1);
    void *copy;
    size_t len;

    node.file = mem_storage("mem:toyw", disk, sizeof(disk));
    node.filename = "mem:toyw";
    node.size = TOY_BS * TOY_BLOCKS - 1000;    /* last block partial */
    node.state = &toy;
    pthread_mutex_init(&node.lock, NULL);
    struct qimg_table_geom g = {.offset = 0, .n = TOY_BLOCKS, .esize = 4,
                                .max_bytes = 4096};
    assert_int_equal(qimg_table_load(&toy.map, node.file, &g, "map", &err), 0);
    toy.alloc = (struct qimg_alloc){.end = 4096, .max = 1 << 20};
    ops.fill_from_backing = false;
    ops.whole_last_block = true;
    assert_int_equal(qimg_table_pwrite(&node, last + 10, 4, "WXYZ", &ops,
                                       &err), 0);
    assert_int_equal(qimg_table_get(&toy.map, TOY_BLOCKS - 1), 4096);
    assert_int_equal(qimg_mem_get("mem:toyw", &copy, &len), 0);
    assert_int_equal(len, 4096 + TOY_BS);
    assert_memory_equal((uint8_t *)copy + 4096 + 10, "WXYZ", 4);
    free(copy);
    /* Even a write that covers the block up to the image's end. */
    qimg_table_set(&toy.map, TOY_BLOCKS - 1, 0);
    uint8_t tailbuf[TOY_BS - 1000];
    memset(tailbuf, 'T', sizeof(tailbuf));
    assert_int_equal(qimg_table_pwrite(&node, last, sizeof(tailbuf), tailbuf,
                                       &ops, &err), 0);
    assert_int_equal(qimg_mem_get("mem:toyw", &copy, &len), 0);
    assert_int_equal(len, 8192 + TOY_BS);
    free(copy);
    ops.whole_last_block = false;
    qimg_table_set(&toy.map, TOY_BLOCKS - 1, 0);
    assert_int_equal(qimg_table_pwrite(&node, last, 4, "wxyz", &ops, &err),
                     0);
    assert_int_equal(qimg_table_get(&toy.map, TOY_BLOCKS - 1), 12288);
    assert_int_equal(qimg_mem_get("mem:toyw", &copy, &len), 0);
    assert_int_equal(len, 12288 + TOY_BS - 1000);
    free(copy);

    qimg_table_release(&toy.map);
    qimg_storage_close(node.file);
    pthread_mutex_destroy(&node.lock);
    qimg_mem_unregister("mem:toyw");
}

/* ---- the cache of same-shaped tables (table-cache.c) ------------------ */

/* Eight tables of 64 big-endian 8-byte entries, table k at k * 512 with
 * entry i = k * 1000 + i. */
#define NT 8
#define NE 64

static struct qimg_storage *cache_disk(const char *name)
{
    uint8_t *d = calloc(NT, NE * 8);
    struct qimg_storage *st;

    for (int k = 0; k < NT; k++)
        for (int i = 0; i < NE; i++)
            qimg_st_be64(d + k * NE * 8 + i * 8, (uint64_t)k * 1000 + i);
    st = mem_storage(name, d, NT * NE * 8);
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
    struct qimg_storage *st = cache_disk("mem:tc1");
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
    struct qimg_storage *st = cache_disk("mem:tc2");
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
    struct qimg_storage *st = cache_disk("mem:tc3");
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

    node.file = mem_storage("mem:odd", disk, sizeof(disk));
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
        cmocka_unit_test(test_load_orders_and_widths),
        cmocka_unit_test(test_load_bounds),
        cmocka_unit_test(test_store_sectors),
        cmocka_unit_test(test_alloc),
        cmocka_unit_test(test_data_path),
        cmocka_unit_test(test_new_block_reads_zero),
        cmocka_unit_test(test_whole_last_block),
        cmocka_unit_test(test_slots_from_budget),
        cmocka_unit_test(test_hits_and_eviction),
        cmocka_unit_test(test_new_tables),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_odd_block_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
