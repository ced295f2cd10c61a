/*
 * bench.c - the I/O benchmark behind qemu-img bench: `count` requests of
 * `bufsize` bytes, `depth` of them in flight at once (one thread each),
 * at offsets advancing by `step` and wrapping at the image's end as QEMU's
 * do, with optional flushes every `flush_interval` requests.
 *
 * Writes into a format that allocates (anything but raw) start in request
 * order until the offsets first wrap: QEMU's coroutines allocate their
 * clusters in the order they are issued, so its image comes out laid out
 * in guest order, and check's "fragmented" figure with it.  Threads
 * racing for the format's lock allocated in any order (seen over NBD,
 * where each request waits longer).  Later passes overwrite what the first
 * allocated and run `depth` at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/block.h"
#include "core/util.h"

/* Threads are cheap here (each blocks on I/O) but keep a sane ceiling. */
#define QIMG_BENCH_MAX_THREADS 256

struct bench {
    struct qimg_image *img;
    const struct qimg_bench_params *p;
    pthread_mutex_t lock;
    uint64_t next;          /* next request index to issue */
    uint64_t end;           /* end of the current batch */
    uint64_t offset;        /* offset of request `next` */
    /* Held from taking a first-pass write to its end (see the top). */
    pthread_mutex_t order;
    bool in_order;          /* writes allocate: first pass in order */
    bool wrapped;           /* the offsets went past the end once */
    int ret;
    struct qimg_error err;
};

static void *worker(void *opaque)
{
    struct bench *b = opaque;
    uint8_t *buf = NULL;
    struct qimg_error err;

    if (b->p->bufsize && posix_memalign((void **)&buf, 4096, b->p->bufsize)) {
        pthread_mutex_lock(&b->lock);
        if (!b->ret)
            b->ret = qimg_error_set(&b->err, -ENOMEM, "Out of memory");
        pthread_mutex_unlock(&b->lock);
        return NULL;
    }
    if (buf)
        memset(buf, b->p->pattern, b->p->bufsize);
    for (;;) {
        uint64_t off;
        int ret;

        pthread_mutex_lock(&b->lock);
        if (b->ret || b->next >= b->end) {
            pthread_mutex_unlock(&b->lock);
            break;
        }
        off = b->offset;
        bool ordered = b->in_order && !b->wrapped;
        b->next++;
        /* QEMU advances and wraps after issuing each request. */
        b->offset += b->p->step;
        uint64_t size = qimg_image_size(b->img);
        if (size && b->offset >= size)
            b->wrapped = true;
        b->offset = size ? b->offset % size : 0;
        /* Taken before b->lock is let go, so the next request's thread
         * waits for this one: first-pass writes go one at a time, in
         * order. */
        if (ordered)
            pthread_mutex_lock(&b->order);
        pthread_mutex_unlock(&b->lock);

        ret = b->p->write ? qimg_pwrite(b->img, off, b->p->bufsize, buf, &err)
                          : qimg_pread(b->img, off, b->p->bufsize, buf, &err);
        if (ordered)
            pthread_mutex_unlock(&b->order);
        if (ret < 0) {
            pthread_mutex_lock(&b->lock);
            if (!b->ret) {
                b->ret = ret;
                b->err = err;
            }
            pthread_mutex_unlock(&b->lock);
            break;
        }
    }
    free(buf);
    return NULL;
}

static int run_batch(struct bench *b, uint64_t end)
{
    uint64_t n = QIMG_MIN(QIMG_MIN((uint64_t)b->p->depth, end - b->next),
                          (uint64_t)QIMG_BENCH_MAX_THREADS);
    pthread_t th[QIMG_BENCH_MAX_THREADS];
    uint64_t started = 0;

    b->end = end;
    for (; started < n; started++)
        if (pthread_create(&th[started], NULL, worker, b))
            break;
    if (!started)
        worker(b);
    for (uint64_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    return b->ret;
}

int qimg_bench(struct qimg_image *img, const struct qimg_bench_params *p,
               double *seconds, struct qimg_error *err)
{
    struct bench b = {.img = img, .p = p, .offset = p->offset};
    struct timespec t0, t1;
    uint64_t batch = p->flush_interval ? p->flush_interval : p->count;
    int ret = 0;

    if (!p->depth)
        return qimg_error_set(err, -EINVAL, "Invalid queue depth specified");
    pthread_mutex_init(&b.lock, NULL);
    pthread_mutex_init(&b.order, NULL);
    b.in_order = p->write && strcmp(qimg_image_format(img), "raw") != 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!ret && b.next < p->count) {
        ret = run_batch(&b, QIMG_MIN(p->count, b.next + (batch ? batch : 1)));
        /* Flushes come between batches: all requests before it are done. */
        if (!ret && p->write && p->flush_interval)
            ret = qimg_flush(img, &b.err);
    }
    if (!ret && p->write)
        ret = qimg_flush(img, &b.err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_mutex_destroy(&b.lock);
    pthread_mutex_destroy(&b.order);
    if (ret < 0) {
        if (err)
            *err = b.err;
        return ret;
    }
    *seconds = (double)(t1.tv_sec - t0.tv_sec) +
               (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return 0;
}
