/* Contexts shared by worker threads: see ctx-pool.h. */
#include "core/ctx-pool.h"

#include <sched.h>
#include <string.h>
#include <unistd.h>

static unsigned bound(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);     /* one per CPU, one more */
    if (n <= 0)
        return 2;
    return n < QIMG_CTX_POOL_KEEP ? (unsigned)n + 1 : QIMG_CTX_POOL_KEEP;
}

/* Take the idle context last used on cpu, else the last given back. */
static void *take_idle(struct qimg_ctx_pool *p, int cpu)
{
    unsigned i;
    void *c;

    for (i = p->n; i-- > 0;)
        if (p->cpu[i] == cpu)
            break;
    if (i >= p->n)
        i = p->n - 1;
    c = p->ctx[i];
    p->n--;
    memmove(&p->ctx[i], &p->ctx[i + 1], (p->n - i) * sizeof(p->ctx[0]));
    memmove(&p->cpu[i], &p->cpu[i + 1], (p->n - i) * sizeof(p->cpu[0]));
    return c;
}

void *qimg_ctx_pool_take(struct qimg_ctx_pool *p, void *(*make)(void))
{
    int cpu = sched_getcpu();
    void *c = NULL;

    pthread_mutex_lock(&p->lock);
    while (p->bounded && !p->n && p->made >= bound())
        pthread_cond_wait(&p->back, &p->lock);
    if (p->n)
        c = take_idle(p, cpu);
    else
        p->made++;      /* reserved before making, so the bound holds */
    pthread_mutex_unlock(&p->lock);
    if (c)
        return c;
    c = make();     /* outside the lock: allocating is slow */
    if (!c) {
        pthread_mutex_lock(&p->lock);
        p->made--;
        pthread_cond_signal(&p->back);
        pthread_mutex_unlock(&p->lock);
    }
    return c;
}

void qimg_ctx_pool_give(struct qimg_ctx_pool *p, void *c,
                        void (*destroy)(void *))
{
    int cpu = sched_getcpu();
    bool kept = false;

    pthread_mutex_lock(&p->lock);
    if (p->n < QIMG_CTX_POOL_KEEP) {
        p->ctx[p->n] = c;
        p->cpu[p->n] = cpu;
        p->n++;
        kept = true;
    } else {
        p->made--;
    }
    pthread_cond_signal(&p->back);
    pthread_mutex_unlock(&p->lock);
    if (!kept)
        destroy(c);
}
