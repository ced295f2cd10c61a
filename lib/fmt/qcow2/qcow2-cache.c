/*
 * qcow2-cache.c - write-back cache of qcow2 metadata tables (L2 tables and
 * refcount blocks), one cluster each, least-recently-used eviction.
 * Called with node->lock held.  A cache may depend on another (L2 on the
 * refcount blocks): its dirty tables are written only after the other
 * cache has been written and flushed, so that an L2 entry never reaches the
 * disk before the refcount that protects the cluster it points to.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

int qcow2_cache_init(struct qcow2_cache *c, size_t entries, size_t table_size)
{
    memset(c, 0, sizeof(*c));
    c->e = calloc(entries, sizeof(*c->e));
    if (!c->e)
        return -ENOMEM;
    c->n = entries;
    c->table_size = table_size;
    return 0;
}

void qcow2_cache_release(struct qcow2_cache *c)
{
    for (size_t i = 0; c->e && i < c->n; i++)
        free(c->e[i].data);
    free(c->e);
    c->e = NULL;
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
    ret = node->file->ops->pwrite(node->file, e->offset, c->table_size, e->data,
                                  err);
    if (ret < 0)
        return ret;
    e->dirty = false;
    return 0;
}

int qcow2_cache_flush(struct qimg_image *node, struct qcow2_cache *c,
                      struct qimg_error *err)
{
    bool wrote = false;
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].offset && c->e[i].dirty) {
            int ret = write_entry(node, c, &c->e[i], err);
            if (ret < 0)
                return ret;
            wrote = true;
        }
    }
    /* Ordering point for caches that depend on this one. */
    if (wrote)
        return node->file->ops->flush(node->file, err);
    return 0;
}

static struct qcow2_cache_entry *find(struct qcow2_cache *c, uint64_t offset)
{
    if (!offset)
        return NULL;
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].offset == offset)
            return &c->e[i];
    return NULL;
}

/* A slot to reuse: a free one, else the least recently used (written back). */
static int victim(struct qimg_image *node, struct qcow2_cache *c,
                  struct qcow2_cache_entry **out, struct qimg_error *err)
{
    struct qcow2_cache_entry *best = NULL;
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
    }
    if (!best->data) {
        best->data = malloc(c->table_size);
        if (!best->data)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    best->offset = 0;
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
        ret = node->file->ops->pread(node->file, offset, c->table_size, e->data,
                                     err);
        if (ret < 0)
            return ret;
        e->offset = offset;
        e->dirty = false;
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
    }
    memset(e->data, 0, c->table_size);
    e->dirty = true;
    e->lru = ++c->lru_clock;
    *table = e->data;
    return 0;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].data == table) {
            c->e[i].dirty = true;
            return;
        }
    }
}

void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset)
{
    struct qcow2_cache_entry *e = find(c, offset);
    if (e) {
        e->offset = 0;
        e->dirty = false;
    }
}
