/*
 * qcow2-cache.c - write-back cache of qcow2 metadata tables (L2 tables and
 * refcount blocks), one cluster each, least-recently-used eviction.
 * Called with node->lock held.  A cache may depend on another (L2 on the
 * refcount blocks): its dirty tables are written only after the other
 * cache has been written and flushed, so that an L2 entry never reaches the
 * disk before the refcount that protects the cluster it points to.
 *
 * Lookups are the hot path (every guest request maps through an L2 table,
 * every allocation reads refcounts): a hash of the table offset finds the
 * entry in O(1), and the tables sit in one slab so that a table pointer
 * leads back to its entry by arithmetic.  Eviction scans for the least
 * recently used entry, which only happens on a miss.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

#define NO_ENTRY (-1)

static size_t bucket_of(const struct qcow2_cache *c, uint64_t offset)
{
    /* Fibonacci hashing of the table number: offsets are cluster aligned. */
    uint64_t h = (offset / c->table_size) * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32) & c->bucket_mask;
}

int qcow2_cache_init(struct qcow2_cache *c, size_t entries, size_t table_size)
{
    size_t nb = 2;

    memset(c, 0, sizeof(*c));
    if (!entries || !table_size || entries > INT32_MAX / 4 ||
        entries > SIZE_MAX / table_size)
        return -EINVAL;
    while (nb < 2 * entries)
        nb *= 2;
    c->e = calloc(entries, sizeof(*c->e));
    c->buckets = malloc(nb * sizeof(*c->buckets));
    /* The slab comes with the first table (victim): commands that never
     * look at a table (info, a 127-deep chain's backing nodes) skip its
     * mmap and munmap, 40 us per node. */
    if (!c->e || !c->buckets) {
        qcow2_cache_release(c);
        return -ENOMEM;
    }
    for (size_t i = 0; i < entries; i++)
        c->e[i].next = NO_ENTRY;
    for (size_t i = 0; i < nb; i++)
        c->buckets[i] = NO_ENTRY;
    c->bucket_mask = nb - 1;
    c->n = entries;
    c->table_size = table_size;
    return 0;
}

void qcow2_cache_release(struct qcow2_cache *c)
{
    free(c->e);
    free(c->buckets);
    free(c->slab);
    c->e = NULL;
    c->buckets = NULL;
    c->slab = NULL;
}

static struct qcow2_cache_entry *find(struct qcow2_cache *c, uint64_t offset)
{
    if (!offset)
        return NULL;
    for (int32_t i = c->buckets[bucket_of(c, offset)]; i != NO_ENTRY;
         i = c->e[i].next)
        if (c->e[i].offset == offset)
            return &c->e[i];
    return NULL;
}

static void link_entry(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
    size_t b = bucket_of(c, e->offset);
    e->next = c->buckets[b];
    c->buckets[b] = (int32_t)(e - c->e);
}

static void unlink_entry(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
    int32_t *p = &c->buckets[bucket_of(c, e->offset)];
    int32_t me = (int32_t)(e - c->e);

    while (*p != NO_ENTRY && *p != me)
        p = &c->e[*p].next;
    if (*p == me)
        *p = e->next;
    e->next = NO_ENTRY;
}

static int write_entry(struct qimg_image *node, struct qcow2_cache *c,
                       struct qcow2_cache_entry *e, struct qimg_error *err)
{
    int ret;
    if (!e->dirty)
        return 0;
    if (c->depends) {
        ret = qcow2_cache_flush(node, c->depends, err);
        if (ret < 0)
            return ret;
    }
    /* A table written back must not land on other metadata (a damaged
     * image): QEMU's overlap check, skipping the table's own kind. */
    ret = qcow2_overlap_check(node, c->ol_self, e->offset, c->table_size,
                              err);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, c->ev_update);
    ret = node->file->ops->pwrite(node->file, e->offset, c->table_size, e->data,
                                  err);
    if (ret < 0)
        return ret;
    e->dirty = false;
    c->wgen++;
    return 0;
}

static int by_offset(const void *a, const void *b)
{
    const struct qcow2_cache_entry *x = *(struct qcow2_cache_entry *const *)a;
    const struct qcow2_cache_entry *y = *(struct qcow2_cache_entry *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Write the dirty tables back, in file order so that they go out as one
 * sequential stream. */
static int write_dirty(struct qimg_image *node, struct qcow2_cache *c,
                       struct qimg_error *err)
{
    struct qcow2_cache_entry **dirty;
    size_t nd = 0;
    int ret = 0;

    for (size_t i = 0; i < c->n; i++)
        nd += c->e[i].offset && c->e[i].dirty;
    if (!nd)
        return 0;
    dirty = malloc(nd * sizeof(*dirty));
    if (!dirty)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    nd = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].offset && c->e[i].dirty)
            dirty[nd++] = &c->e[i];
    qsort(dirty, nd, sizeof(*dirty), by_offset);
    for (size_t i = 0; i < nd && !ret; i++)
        ret = write_entry(node, c, dirty[i], err);
    free(dirty);
    return ret;
}

int qcow2_cache_flush(struct qimg_image *node, struct qcow2_cache *c,
                      struct qimg_error *err)
{
    int ret = write_dirty(node, c, err);

    /* Ordering point for caches that depend on this one: also for tables
     * written back earlier (eviction, qcow2_cache_write_back) that no
     * flush has covered yet. */
    if (!ret && c->wgen != c->sgen) {
        uint64_t gen = c->wgen;
        ret = node->file->ops->flush(node->file, err);
        if (!ret)
            c->sgen = gen;
    }
    return ret;
}

int qcow2_cache_write_back(struct qimg_image *node, struct qcow2_cache *c,
                           uint64_t *gen, struct qimg_error *err)
{
    struct qcow2_cache *dep = c->depends;
    int ret;

    c->depends = NULL;
    ret = write_dirty(node, c, err);
    c->depends = dep;
    *gen = c->wgen;
    return ret;
}

int qcow2_cache_write_table(struct qimg_image *node, struct qcow2_cache *c,
                            const uint8_t *table, struct qimg_error *err)
{
    size_t i = c->slab && table >= c->slab
                   ? (size_t)(table - c->slab) / c->table_size : c->n;
    struct qcow2_cache *dep = c->depends;
    int ret;

    if (i >= c->n || c->e[i].data != table)
        return qimg_error_set(err, -EINVAL, "Table not in the cache");
    c->depends = NULL;
    ret = write_entry(node, c, &c->e[i], err);
    c->depends = dep;
    return ret;
}

void qcow2_cache_synced(struct qcow2_cache *c, uint64_t gen)
{
    if (gen > c->sgen)
        c->sgen = gen;
}

/* A slot to reuse: a free one, else the least recently used (written back). */
static int victim(struct qimg_image *node, struct qcow2_cache *c,
                  struct qcow2_cache_entry **out, struct qimg_error *err)
{
    struct qcow2_cache_entry *best = NULL;

    if (!c->slab) {
        /* Large enough to be mapped lazily: untouched slots cost no
         * memory. */
        c->slab = malloc(c->n * c->table_size);
        if (!c->slab)
            return qimg_error_set(err, -ENOMEM, "Could not allocate "
                                  "metadata caches");
    }
    for (size_t i = 0; i < c->n; i++) {
        struct qcow2_cache_entry *e = &c->e[i];
        if (!e->offset) {
            best = e;
            break;
        }
        if (!best || e->lru < best->lru)
            best = e;
    }
    if (best->offset) {
        int ret = write_entry(node, c, best, err);
        if (ret < 0)
            return ret;
        unlink_entry(c, best);
    }
    if (!best->data)
        best->data = c->slab + (size_t)(best - c->e) * c->table_size;
    best->offset = 0;
    best->dirty = false;
    *out = best;
    return 0;
}

int qcow2_cache_get(struct qimg_image *node, struct qcow2_cache *c,
                    uint64_t offset, uint8_t **table, struct qimg_error *err)
{
    struct qcow2_cache_entry *e;
    int ret;

    /* Offset 0 is the header (and marks free slots): never a table. */
    if (!offset) {
        qcow2_mark_corrupt(node, NULL);
        return qimg_error_set(err, -EIO, "Metadata table at offset 0 is "
                              "invalid; image is corrupt");
    }
    e = find(c, offset);

    if (!e) {
        ret = victim(node, c, &e, err);
        if (ret < 0)
            return ret;
        qimg_storage_event(node->file, c->ev_load);
        ret = node->file->ops->pread(node->file, offset, c->table_size, e->data,
                                     err);
        if (ret < 0)
            return ret;    /* the slot stays free */
        e->offset = offset;
        link_entry(c, e);
    }
    e->lru = ++c->lru_clock;
    *table = e->data;
    return 0;
}

int qcow2_cache_get_empty(struct qimg_image *node, struct qcow2_cache *c,
                          uint64_t offset, uint8_t **table,
                          struct qimg_error *err)
{
    struct qcow2_cache_entry *e = find(c, offset);
    int ret;

    if (!e) {
        ret = victim(node, c, &e, err);
        if (ret < 0)
            return ret;
        e->offset = offset;
        if (offset)
            link_entry(c, e);
    }
    memset(e->data, 0, c->table_size);
    e->dirty = true;
    e->lru = ++c->lru_clock;
    *table = e->data;
    return 0;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    size_t i;

    if (!c->slab || table < c->slab)
        return;
    i = (size_t)(table - c->slab) / c->table_size;
    if (i < c->n && c->e[i].data == table)
        c->e[i].dirty = true;
}

void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset)
{
    struct qcow2_cache_entry *e = find(c, offset);
    if (e) {
        unlink_entry(c, e);
        e->offset = 0;
        e->dirty = false;
    }
}
