/*
 * table-cache.c - a small least-recently-used, write-through cache of
 * tables of one shape (the L2 tables of qed and qcow), see table.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/table/table.h"

int qimg_table_cache_init(struct qimg_table_cache *c, struct qimg_storage *st,
                          const struct qimg_table_geom *g, size_t max_slots,
                          uint64_t budget, const char *what,
                          struct qimg_error *err)
{
    uint64_t bytes, n;

    memset(c, 0, sizeof(*c));
    if (qimg_mul_overflow(g->n, g->esize, &bytes) || bytes > g->max_bytes)
        return qimg_error_set(err, -EFBIG, "%s too large", what);
    n = bytes ? budget / bytes : max_slots;
    n = QIMG_MAX(QIMG_MIN(n, (uint64_t)max_slots), 1);
    c->slots = calloc((size_t)n, sizeof(*c->slots));
    if (!c->slots)
        return qimg_error_set(err, -ENOMEM, "Could not allocate %s cache",
                              what);
    c->nslots = (size_t)n;
    c->st = st;
    c->geom = *g;
    c->what = what;
    return 0;
}

void qimg_table_cache_release(struct qimg_table_cache *c)
{
    if (!c->slots)
        return;
    qimg_table_cache_clear(c);
    free(c->slots);
    c->slots = NULL;
    c->nslots = 0;
}

static struct qimg_table_cache_slot *find(struct qimg_table_cache *c,
                                          uint64_t offset)
{
    for (size_t i = 0; i < c->nslots; i++)
        if (c->slots[i].t.raw && c->slots[i].t.offset == offset)
            return &c->slots[i];
    return NULL;
}

/* An empty slot, else the least recently used one, emptied. */
static struct qimg_table_cache_slot *victim(struct qimg_table_cache *c)
{
    struct qimg_table_cache_slot *v = &c->slots[0];

    for (size_t i = 0; i < c->nslots; i++) {
        struct qimg_table_cache_slot *s = &c->slots[i];
        if (!s->t.raw) {
            v = s;
            break;
        }
        if (s->used < v->used)
            v = s;
    }
    qimg_table_release(&v->t);
    return v;
}

static int take(struct qimg_table_cache *c, uint64_t offset, bool read,
                struct qimg_table **out, struct qimg_error *err)
{
    struct qimg_table_geom g = c->geom;
    struct qimg_table_cache_slot *s = find(c, offset);
    int ret;

    *out = NULL;
    if (s && read) {
        c->hits++;
    } else {
        if (!s)
            s = victim(c);
        else
            qimg_table_release(&s->t);
        c->misses += read;
        if (read && c->load_event)
            qimg_storage_event(c->st, QIMG_EV_L2_LOAD);
        g.offset = offset;
        ret = read ? qimg_table_load(&s->t, c->st, &g, c->what, err)
                   : qimg_table_init_zero(&s->t, c->st, &g, c->what, err);
        if (ret < 0)
            return ret;
        if (!s->t.raw)   /* a table of no entries cannot be cached */
            return qimg_error_set(err, -EINVAL, "Invalid %s geometry",
                                  c->what);
    }
    s->used = ++c->clock;
    *out = &s->t;
    return 0;
}

int qimg_table_cache_get(struct qimg_table_cache *c, uint64_t offset,
                         struct qimg_table **out, struct qimg_error *err)
{
    return take(c, offset, true, out, err);
}

int qimg_table_cache_new(struct qimg_table_cache *c, uint64_t offset,
                         struct qimg_table **out, struct qimg_error *err)
{
    return take(c, offset, false, out, err);
}

void qimg_table_cache_drop(struct qimg_table_cache *c, uint64_t offset)
{
    struct qimg_table_cache_slot *s = find(c, offset);

    if (s)
        qimg_table_release(&s->t);
}

void qimg_table_cache_clear(struct qimg_table_cache *c)
{
    for (size_t i = 0; i < c->nslots; i++)
        qimg_table_release(&c->slots[i].t);
}
