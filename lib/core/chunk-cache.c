/*
 * chunk-cache.c - decompressed chunks shared by the readers of a node
 * (see chunk-cache.h for the contract).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/chunk-cache.h"
#include "core/util.h"

int qimg_chunk_cache_init(struct qimg_chunk_cache *c)
{
    memset(c, 0, sizeof(*c));
    if (pthread_cond_init(&c->changed, NULL))
        return -ENOMEM;
    c->cond_ok = true;
    return 0;
}

static void slot_free(struct qimg_chunk_cache *c, struct qimg_chunk_slot *s)
{
    free(s->in);
    free(s->out);
    c->bytes -= s->in_cap + s->out_cap;
    s->in = s->out = NULL;
    s->in_cap = s->out_cap = 0;
    s->valid = false;
}

void qimg_chunk_cache_release(struct qimg_chunk_cache *c)
{
    for (size_t i = 0; i < QIMG_CHUNK_CACHE_SLOTS; i++)
        slot_free(c, &c->slots[i]);
    if (c->cond_ok)
        pthread_cond_destroy(&c->changed);
    c->cond_ok = false;
}

static struct qimg_chunk_slot *find(struct qimg_chunk_cache *c, uint64_t index)
{
    for (size_t i = 0; i < QIMG_CHUNK_CACHE_SLOTS; i++) {
        struct qimg_chunk_slot *s = &c->slots[i];
        if ((s->valid || s->loading) && s->index == index)
            return s;
    }
    return NULL;
}

static bool idle(const struct qimg_chunk_slot *s)
{
    return !s->pins && !s->loading;
}

/*
 * The least recently used idle slot that holds buffers; an empty one only
 * when none does.  So the slots with buffers are only as many as readers
 * ran at once (at least one), not all QIMG_CHUNK_CACHE_SLOTS: a forward
 * copy of 1 MiB dmg chunks filled every empty slot first, 16 chunks of
 * buffers (32 MiB) that it never read again.
 */
static struct qimg_chunk_slot *victim(struct qimg_chunk_cache *c)
{
    struct qimg_chunk_slot *best = NULL, *empty = NULL;
    for (size_t i = 0; i < QIMG_CHUNK_CACHE_SLOTS; i++) {
        struct qimg_chunk_slot *s = &c->slots[i];
        if (!idle(s))
            continue;
        if (!s->in && !s->out) {
            if (!empty)
                empty = s;
            continue;
        }
        if (!best || s->used < best->used)
            best = s;
    }
    return best ? best : empty;
}

static size_t growth(size_t cap, size_t want)
{
    return want > cap ? want - cap : 0;
}

/*
 * Make room for v to grow by grow bytes within the budget: drop the
 * buffers of the other idle slots.  False when the budget still does not
 * allow it while other slots are in use (the caller waits for them).
 */
static bool make_room(struct qimg_chunk_cache *c, struct qimg_chunk_slot *v,
                      size_t grow)
{
    bool others_busy = false;

    if (c->bytes + grow <= QIMG_CHUNK_CACHE_BUDGET)
        return true;
    for (size_t i = 0; i < QIMG_CHUNK_CACHE_SLOTS; i++) {
        struct qimg_chunk_slot *s = &c->slots[i];
        if (s == v)
            continue;
        if (idle(s))
            slot_free(c, s);
        else
            others_busy = true;
    }
    return c->bytes + grow <= QIMG_CHUNK_CACHE_BUDGET || !others_busy;
}

/* Give s buffers of at least in_len and out_len bytes (outside the lock:
 * the slot is ours while loading; c->bytes was raised for it already). */
static int grow_buffers(struct qimg_chunk_slot *s, size_t in_len,
                        size_t out_len, size_t *lost)
{
    *lost = 0;
    if (s->in_cap < in_len || !s->in) {
        free(s->in);
        s->in = malloc(in_len ? in_len : 1);
        if (!s->in) {
            *lost += in_len;
            s->in_cap = 0;
        } else {
            s->in_cap = in_len;
        }
    }
    if (s->out_cap < out_len || !s->out) {
        free(s->out);
        s->out = malloc(out_len ? out_len : 1);
        if (!s->out) {
            *lost += out_len;
            s->out_cap = 0;
        } else {
            s->out_cap = out_len;
        }
    }
    return *lost ? -ENOMEM : 0;
}

int qimg_chunk_get(struct qimg_image *node, struct qimg_chunk_cache *c,
                   uint64_t index, size_t in_len, size_t out_len,
                   qimg_chunk_fill_fn fill, const uint8_t **data,
                   struct qimg_error *err)
{
    struct qimg_chunk_slot *s;
    size_t grow = 0, lost;
    int ret;

    pthread_mutex_lock(&node->lock);
    for (;;) {
        s = find(c, index);
        if (s && s->loading) {
            pthread_cond_wait(&c->changed, &node->lock);
            continue;
        }
        if (s) {
            s->pins++;
            s->used = ++c->tick;
            *data = s->out;
            pthread_mutex_unlock(&node->lock);
            return (int)(s - c->slots);
        }
        s = victim(c);
        if (s) {
            grow = growth(s->in_cap, in_len) + growth(s->out_cap, out_len);
            if (make_room(c, s, grow))
                break;
        }
        pthread_cond_wait(&c->changed, &node->lock);
    }
    s->valid = false;
    s->loading = true;
    s->index = index;
    s->pins = 1;
    c->bytes += grow;
    pthread_mutex_unlock(&node->lock);

    ret = grow_buffers(s, in_len, out_len, &lost);
    if (ret < 0)
        qimg_error_set(err, ret, "Could not allocate a %zu-byte chunk buffer",
                       in_len + out_len);
    else
        ret = fill(node, index, s->in, in_len, s->out, out_len, err);

    pthread_mutex_lock(&node->lock);
    /* Buffers that could not be allocated hold nothing any more. */
    c->bytes -= lost;
    s->loading = false;
    s->valid = ret == 0;
    s->used = ++c->tick;
    if (ret < 0)
        s->pins = 0;
    pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    *data = s->out;
    return (int)(s - c->slots);
}

void qimg_chunk_put(struct qimg_image *node, struct qimg_chunk_cache *c,
                    int slot)
{
    pthread_mutex_lock(&node->lock);
    if (!--c->slots[slot].pins)
        pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&node->lock);
}
