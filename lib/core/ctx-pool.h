/* Contexts (compressors and the like) shared by worker threads.
 *
 * A compression context is big (a zstd level-3 context 0.7 MiB, a
 * libdeflate compressor 670 KiB) and holds no state between two inputs,
 * so the copy engine's workers share a few instead of keeping one each:
 * fewer are faulted in, and a thread takes the one last used on its CPU,
 * whose tables are still in that CPU's caches.  Used by qcow2's cluster
 * compression and vmdk's grain compression. */
#ifndef QIMG_CTX_POOL_H
#define QIMG_CTX_POOL_H

#include <pthread.h>
#include <stdbool.h>

#define QIMG_CTX_POOL_KEEP 16   /* contexts kept for reuse, at most */

struct qimg_ctx_pool {
    pthread_mutex_t lock;
    pthread_cond_t back;        /* a context was given back */
    unsigned n;                 /* kept, idle */
    unsigned made;              /* in existence (idle or in use) */
    bool bounded;               /* at most one per CPU and one more */
    void *ctx[QIMG_CTX_POOL_KEEP];
    int cpu[QIMG_CTX_POOL_KEEP];    /* where each was last used */
};

/* An unbounded pool (a thread finding it empty makes a context of its
 * own), or one that makes at most one context per CPU and one more and
 * has the others wait: compressing is CPU work, more at once than CPUs
 * only take turns, and each context is memory. */
#define QIMG_CTX_POOL_INIT(is_bounded)                                     \
    { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0,           \
      (is_bounded), {0}, {0} }

/* A context for the caller alone until qimg_ctx_pool_give: the one last
 * used on this CPU, else the last given back, else a new one from make()
 * (NULL when make fails). */
void *qimg_ctx_pool_take(struct qimg_ctx_pool *p, void *(*make)(void));

/* Give c back; when the pool keeps enough already it is freed with
 * destroy(). */
void qimg_ctx_pool_give(struct qimg_ctx_pool *p, void *c,
                        void (*destroy)(void *));

#endif
