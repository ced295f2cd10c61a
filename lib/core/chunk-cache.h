/*
 * chunk-cache.h - decompressed chunks shared by the readers of one node,
 * for formats made of independently compressed chunks (dmg, cloop).
 *
 * Reads run from several threads (block.h).  Each chunk is decompressed
 * outside node->lock into a slot of a small cache; node->lock guards only
 * the slot bookkeeping.  A reader pins the slot it copies from, so its
 * buffer stays valid without the lock; a second reader of a chunk being
 * decompressed waits for it instead of decompressing it again.
 *
 * Memory is bounded: slots hold one compressed and one decompressed
 * buffer each, and the buffers of all slots together stay within
 * QIMG_CHUNK_CACHE_BUDGET, except that one chunk alone may exceed it (a
 * reader then waits until it is the only one loading).  Drivers bound the
 * size of one chunk with their own named limits.
 */
#ifndef QIMG_CORE_CHUNK_CACHE_H
#define QIMG_CORE_CHUNK_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "core/block.h"

/* Chunks decompressed at once per node: the copy engine's largest -m
 * (16 requests in flight) each find a slot without waiting. */
#define QIMG_CHUNK_CACHE_SLOTS 16
/* Bytes of buffers the slots of one node may hold together: room for 16
 * readers of 8 MiB chunks, far more than real images use (1 MiB dmg
 * chunks, 64 KiB cloop blocks), and a bound for hostile ones. */
#define QIMG_CHUNK_CACHE_BUDGET ((size_t)256 << 20)

struct qimg_chunk_slot {
    uint64_t index;         /* chunk held (valid unless empty) */
    bool valid;             /* buffer holds the chunk's content */
    bool loading;           /* being filled by a reader */
    unsigned pins;          /* readers using buf without the lock */
    uint64_t used;          /* LRU tick */
    uint8_t *in, *out;      /* compressed input, decompressed output */
    size_t in_cap, out_cap;
};

struct qimg_chunk_cache {
    struct qimg_chunk_slot slots[QIMG_CHUNK_CACHE_SLOTS];
    pthread_cond_t changed; /* a slot was released or finished loading */
    bool cond_ok;
    uint64_t tick;
    size_t bytes;           /* in_cap + out_cap over all slots */
};

/*
 * Fill a slot: read in_len bytes of chunk `index` into in and produce
 * out_len bytes in out.  Called without node->lock, so several run at
 * once; returns 0 or a negative errno.
 */
typedef int (*qimg_chunk_fill_fn)(struct qimg_image *node, uint64_t index,
                                  uint8_t *in, size_t in_len, uint8_t *out,
                                  size_t out_len, struct qimg_error *err);

int qimg_chunk_cache_init(struct qimg_chunk_cache *c);
void qimg_chunk_cache_release(struct qimg_chunk_cache *c);

/*
 * The content of chunk `index` (out_len bytes, its compressed form in_len
 * bytes), decompressed by fill unless cached: *data points to it until
 * qimg_chunk_put(node, c, slot) with the returned slot number (>= 0).
 * Takes and drops node->lock.  On failure (negative errno) nothing is
 * pinned.
 */
int qimg_chunk_get(struct qimg_image *node, struct qimg_chunk_cache *c,
                   uint64_t index, size_t in_len, size_t out_len,
                   qimg_chunk_fill_fn fill, const uint8_t **data,
                   struct qimg_error *err);
void qimg_chunk_put(struct qimg_image *node, struct qimg_chunk_cache *c,
                    int slot);

#endif /* QIMG_CORE_CHUNK_CACHE_H */
