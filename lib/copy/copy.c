/*
 * copy.c - the copy engine behind convert and dd (qimg_copy in qimg.h).
 *
 * The sources, back to back, form one guest address space that maps onto
 * the target from target_offset on.  A walker cuts it into requests
 * ("chunks") in guest order: block status of the source decides whether a
 * chunk is data (read it), zero (never read) or left to the target's
 * backing file; data chunks are at most chunk_size bytes.  The cuts follow
 * qemu-img convert's, so that progress and the holes left by zero
 * detection come out the same.
 *
 * Threads: `parallel` workers share the walker under e->lock, each taking
 * the next chunk, then reading and zero-scanning it (and with -c
 * compressing it) in a buffer of a shared pool, without the lock.  Writes
 * are committed in chunk order (a worker waits for its turn) unless
 * out_of_order, or unless the order cannot show in the target (any_order,
 * see order_free_target: a raw image on a random-access storage, where
 * in-order commits only cost a hand-over between workers per chunk; the
 * errors reported stay those of in-order writes, see flush_pending); so
 * at most `parallel` chunks are in flight and memory
 * stays at parallel * chunk_size.  Past its first chunk, a worker takes
 * another only while fewer than `read_ahead` (CPUs + 1 chunks of 2 MiB,
 * 8 into a remote target such as NBD)
 * are taken and not yet written: more buffers filled ahead of the writer
 * only push the data out of the CPU caches before it is written (8
 * workers on 2 CPUs cost half as much CPU again); for the same reason a
 * chunk takes the buffer released last.  The first
 * error stops new requests; those in flight that fail report too, as
 * qemu-img's coroutines do.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#include "copy/copy.h"
#include "core/block.h"
#include "core/util.h"

#define DEFAULT_CHUNK (2u << 20)
#define DEFAULT_PARALLEL 8
/* Transparent huge pages, the size of a default chunk (see alloc_buffer). */
#define HUGE_PAGE (2u << 20)
/* Data chunks up to this size are read into a buffer of small pages (see
 * struct chunk_buf). */
#define SMALL_CHUNK (256u << 10)
#define MAX_PARALLEL 64
/* The read-ahead budget into a remote target, in default chunks: writing
 * 1 GiB (420 MiB of data) into nbdkit over loopback took 0.38 s with 3
 * chunks in flight and 0.31 s with 8; 16 gained nothing more
 * (docs/PERFORMANCE.md, session 9). */
#define REMOTE_READ_AHEAD 8
/* Block status is asked for at most this much at once (QEMU's request
 * limit); the cut matters for where data chunks start. */
#define MAX_STATUS_BYTES 2147483136ull
/* Rate limiting accounts in slices of this length, as QEMU's jobs do. */
#define RATE_SLICE_NS 100000000ull

enum kind { KIND_DATA, KIND_ZERO, KIND_BACKING };

struct chunk {
    uint64_t seq;
    uint64_t dst;       /* target offset */
    uint64_t len;
    enum kind kind;
};

/* Position of the walk and the cached block status extent. */
struct walker {
    size_t src;
    uint64_t dst;
    uint64_t ext_end;   /* target offset where the cached extent ends */
    enum kind ext_kind;
};

struct ratelimit {
    uint64_t quota;     /* bytes per slice */
    uint64_t start, end, dispatched;
    uint64_t wait_until;
};

/*
 * A chunk buffer of the pool: big asks for huge pages (alloc_buffer), so a
 * chunk that touches it at all faults in 2 MiB; small chunks go to small,
 * of small pages, which holds only what they touched.  A source that hands
 * out small pieces (a vmdk grain: 64 KiB) so costs 64 KiB per buffer, not
 * 2 MiB (vmdk->qcow2 peak RSS 19.5 -> 5.4 MiB), and one whose pieces are
 * mixed (a raw file's data runs) keeps its huge pages for the large ones.
 * small is NULL when chunks are never larger than SMALL_CHUNK.
 */
struct chunk_buf {
    uint8_t *big, *small;
};

struct engine {
    const struct qimg_copy_params *p;
    const struct qimg_copy_source *srcs;
    uint64_t *src_start;    /* target offset of each source's first byte */
    uint32_t *src_align;    /* block status cut alignment of each source */
    uint64_t end;           /* target offset after the last byte */
    uint64_t chunk_size;
    uint32_t min_sectors, align_sectors, cluster;
    bool zero_init;
    /* A source reads forward only (a pipe): one worker, in order, so the
     * stream's window is never outrun (the in-order mode).  A target
     * written forward only (sequential, not seq_source) keeps the
     * workers: chunks are committed in order anyway, so reads and -c
     * compression stay parallel; only -W (out of order) makes it one. */
    bool sequential;
    bool seq_source;
    void *zero_buf;         /* chunk_size zero bytes (for -S 0) */
    struct copy_offload *offload;

    pthread_mutex_t lock;
    pthread_cond_t turn;
    struct walker walk;
    uint64_t next_seq, write_seq;
    uint64_t alloc_total, alloc_done;
    struct ratelimit rate;
    bool offload_off;       /* -C refused once: read and write from now */
    bool offload_whole;     /* -C into a non-raw target: see MODE_WHOLE */
    bool stop;
    /* Order-free commits (see order_free_target): each worker writes as
     * soon as its chunk is read; write_seq then counts chunks done, not
     * the next one to write. */
    bool any_order;
    /* Order-free: the write failure in-order mode would report (the
     * lowest in guest order so far), held back until every earlier chunk
     * is done (flush_pending); no new chunk is taken meanwhile. */
    bool pending;
    uint64_t pending_seq, pending_off;
    int pending_ret;
    struct qimg_error pending_err;
    bool write_reported;    /* order-free: a write failure was reported */
    bool sync_ready;        /* lock and turn initialised */
    unsigned starting;      /* workers yet to take their first chunk */
    uint64_t read_ahead;    /* chunks read but not yet written, at most */
    /* Chunk buffers, a stack: the one freed last (still in the CPU
     * caches) is taken first. */
    struct chunk_buf *pool;
    size_t pool_top;
    struct worker *workers;
    unsigned nworkers;
    int ret;
    struct qimg_error err;
};

enum wait_kind { W_NONE, W_TURN, W_SLOT, W_ROOM };

struct worker {
    struct engine *e;
    pthread_t thread;
    uint8_t *buf;                   /* cb.big or cb.small, or NULL */
    struct chunk_buf cb;
    struct copy_run *runs;
    size_t max_runs;
    enum qimg_copy_stage stage;     /* of the last failure */
    bool started;                   /* past its first chunk */
    bool busy;                      /* holds the chunk of seq cur_seq */
    uint64_t cur_seq;
    pthread_cond_t cv;              /* signalled when it may go on */
    enum wait_kind waiting;
    uint64_t wait_seq;
    /* -c: the chunk compressed before its turn to be written (so that all
     * workers compress at once); clen < 0 when it was not. */
    uint8_t *cbuf;
    ssize_t clen;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void wake_ready(struct engine *e, bool slots);

/* Record the first failure and wake everyone.  Called with e->lock. */
static void fail_locked(struct engine *e, int ret, const struct qimg_error *err,
                        enum qimg_copy_stage stage, uint64_t offset)
{
    /* A write failure held back (order-free) is dropped: its chunk's turn
     * had not come, and in order it would now never be written. */
    e->pending = false;
    if (e->p->error)
        e->p->error(e->p->opaque, err->msg);
    if (!e->ret) {
        e->ret = ret;
        e->err = *err;
        e->err.code = ret;
        if (e->p->result)
            *e->p->result = (struct qimg_copy_result){stage, ret, offset};
    }
    e->stop = true;
    pthread_cond_broadcast(&e->turn);
    wake_ready(e, true);
}

/* --salvage warnings ("error while reading offset N: ..."), with e->lock
 * held so that callbacks never run concurrently. */
static void salvage_report(struct engine *e, const char *what, uint64_t off,
                           int ret)
{
    char msg[256];

    if (!e->p->warn)
        return;
    snprintf(msg, sizeof(msg), "%s %llu: %s", what, (unsigned long long)off,
             strerror(-ret));
    e->p->warn(e->p->opaque, msg);
}

/* ---- walking the sources ------------------------------------------------ */

static enum kind classify(const struct engine *e, const struct qimg_extent *x,
                          struct qimg_image *src, uint64_t dst)
{
    const struct qimg_copy_params *p = e->p;

    if (x->flags & QIMG_BS_ZERO) {
        /* Past the end of the target's backing file it reads zero anyway. */
        if (p->target_has_backing && p->target_backing_size >= 0 &&
            dst >= (uint64_t)p->target_backing_size)
            return KIND_BACKING;
        return KIND_ZERO;
    }
    if (x->flags & (QIMG_BS_DATA | QIMG_BS_ALLOCATED))
        return KIND_DATA;
    /* Unallocated: with a target backing file, the source's backing
     * content is expected there; otherwise nothing in the chain has it. */
    if (p->target_has_backing && qimg_image_backing(src))
        return KIND_BACKING;
    return KIND_ZERO;
}

static int query_status(struct engine *e, struct walker *w,
                        struct qimg_error *err)
{
    const struct qimg_copy_source *s = &e->srcs[w->src];
    uint64_t spos = w->dst - e->src_start[w->src];
    uint64_t off = s->offset + spos, n, tail;
    uint64_t want = QIMG_MIN(s->length - spos, MAX_STATUS_BYTES);
    struct qimg_extent x;
    int ret;

    for (;;) {
        /* With a target backing file only the source's top layer is copied. */
        if (e->p->target_has_backing)
            ret = qimg_block_status(s->img, off, want, &x, err);
        else
            ret = qimg_block_status_chain(s->img, NULL, off, want, &x, err);
        if (ret >= 0)
            break;
        if (!e->p->salvage)
            return qimg_error_set(err, ret, "error while reading block status "
                                  "at offset %llu: %s", (unsigned long long)off,
                                  strerror(-ret));
        if (want > COPY_SECTOR) {
            /* --salvage: narrow down to the sector that fails */
            want = qimg_div_round_up(qimg_div_round_up(want, COPY_SECTOR), 4) *
                   COPY_SECTOR;
            continue;
        }
        /* the walker runs under e->lock already */
        salvage_report(e, "error while reading block status at offset", off,
                       ret);
        memset(&x, 0, sizeof(x));
        x.flags = QIMG_BS_DATA;     /* then just try to read it */
        x.length = want;
        break;
    }
    n = x.length ? QIMG_MIN(x.length, want) : want;
    /* Keep extent ends on the source's alignment so requests do not
     * straddle its blocks (unless that would leave nothing); qemu-img does
     * this at the end of the image too, which shows in progress. */
    tail = (off + n) % e->src_align[w->src];
    if (n > tail)
        n -= tail;
    w->ext_end = w->dst + n;
    w->ext_kind = classify(e, &x, s->img, w->dst);
    return 0;
}

/* The next chunk in guest order: 1, or 0 at the end, or a negative errno. */
static int next_chunk(struct engine *e, struct walker *w, struct chunk *c,
                      struct qimg_error *err)
{
    uint64_t len;
    enum kind kind;

    if (w->dst >= e->end)
        return 0;
    while (w->dst >= e->src_start[w->src] + e->srcs[w->src].length) {
        w->src++;
        w->ext_end = 0;
    }
    if (w->dst >= w->ext_end) {
        int ret = query_status(e, w, err);
        if (ret < 0)
            return ret;
    }
    len = w->ext_end - w->dst;
    kind = w->ext_kind;
    if (e->p->compress) {
        /* Compressed clusters are written whole: a short hole becomes part
         * of a data cluster, longer ones are cut at cluster boundaries. */
        if (len < e->cluster) {
            len = QIMG_MIN((uint64_t)e->cluster, e->end - w->dst);
            kind = KIND_DATA;
        } else {
            len = qimg_align_down(len, e->cluster);
        }
    }
    if (kind == KIND_DATA || (kind == KIND_ZERO && !e->p->sparse_size))
        len = QIMG_MIN(len, e->chunk_size);
    c->seq = e->next_seq++;
    c->dst = w->dst;
    c->len = len;
    c->kind = kind;
    w->dst += len;
    return 1;
}

/* Chunks that count for progress: the ones that will hold data. */
static bool counts(const struct engine *e, const struct chunk *c)
{
    return c->kind == KIND_DATA ||
           (c->kind == KIND_ZERO && !e->p->sparse_size);
}

/* Walk everything once to know the total for progress. */
static int count_allocated(struct engine *e, struct qimg_error *err)
{
    struct walker w = {0};
    struct chunk c;
    int ret;

    w.dst = e->p->target_offset;
    while ((ret = next_chunk(e, &w, &c, err)) > 0)
        if (counts(e, &c))
            e->alloc_total += c.len;
    e->next_seq = 0;
    return ret;
}

/* ---- rate limiting ------------------------------------------------------ */

/* Account n bytes issued now; later requests wait until the quota of the
 * slices they used up has passed (QEMU's RateLimit). */
static void rate_account(struct ratelimit *r, uint64_t n)
{
    uint64_t now = now_ns();
    double slices;

    if (r->end < now) {
        r->start = now;
        r->end = now + RATE_SLICE_NS;
        r->dispatched = 0;
    }
    r->dispatched += n;
    if (r->dispatched < r->quota)
        return;
    slices = (double)r->dispatched / (double)r->quota;
    r->end = r->start + (uint64_t)(slices * (double)RATE_SLICE_NS);
    r->wait_until = r->end;
}

/* ---- reading ------------------------------------------------------------ */

static size_t source_of(const struct engine *e, uint64_t dst)
{
    size_t i = 0;
    while (i + 1 < e->p->n_sources &&
           dst >= e->src_start[i] + e->srcs[i].length)
        i++;
    return i;
}

/*
 * Read [off, off + len) of a source, leaving out what its format knows to
 * read as zero (qimg_zero_hint: vhdx, whose images have no block status
 * and so come as data throughout): the buffer is the same, the copy
 * cheaper.
 */
static int read_source(struct qimg_image *img, uint64_t off, uint64_t len,
                       uint8_t *buf, struct qimg_error *err)
{
    if (!img->fmt->zero_hint)
        return qimg_pread(img, off, (size_t)len, buf, err);
    while (len) {
        struct qimg_extent h;
        int ret = qimg_zero_hint(img, off, len, &h, err);
        uint64_t n = h.length;

        if (ret < 0)
            return ret;
        if (h.flags & QIMG_BS_ZERO)
            memset(buf, 0, (size_t)n);
        else if ((ret = qimg_pread(img, off, (size_t)n, buf, err)) < 0)
            return ret;
        off += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* Read target range [dst, dst+len) from whichever sources hold it. */
static int read_range(struct engine *e, uint64_t dst, uint64_t len,
                      uint8_t *buf, struct qimg_error *err)
{
    while (len) {
        size_t i = source_of(e, dst);
        const struct qimg_copy_source *s = &e->srcs[i];
        uint64_t spos, n;
        int ret;

        if (dst >= e->end) {
            memset(buf, 0, (size_t)len);    /* past the last source */
            return 0;
        }
        spos = dst - e->src_start[i];
        n = QIMG_MIN(len, s->length - spos);
        ret = read_source(s->img, s->offset + spos, n, buf, err);
        if (ret < 0)
            return ret;
        dst += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* --salvage: read sector by sector, zeroing (and reporting) bad ones. */
static void read_salvage(struct engine *e, uint64_t dst, uint64_t len,
                         uint8_t *buf)
{
    struct qimg_error err;   /* cleared per sector, not zeroed (4 KiB) */
    for (uint64_t at = 0; at < len; at += COPY_SECTOR) {
        uint64_t n = QIMG_MIN((uint64_t)COPY_SECTOR, len - at);
        qimg_error_clear(&err);
        int ret = read_range(e, dst + at, n, buf + at, &err);
        if (ret < 0) {
            memset(buf + at, 0, (size_t)n);
            pthread_mutex_lock(&e->lock);
            salvage_report(e, "error while reading offset", dst + at, ret);
            pthread_mutex_unlock(&e->lock);
        }
    }
}

static int read_chunk(struct engine *e, const struct chunk *c, uint8_t *buf,
                      struct qimg_error *err)
{
    int ret = read_range(e, c->dst, c->len, buf, err);

    if (ret < 0 && e->p->salvage) {
        read_salvage(e, c->dst, c->len, buf);
        return 0;
    }
    if (ret < 0 && e->sequential && err->msg[0]) {
        /* A stream's own reason (read back, cut short) says more than
         * the errno qemu-img prints; 7.2 cannot read streams at all. */
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", err->msg);
        return qimg_error_set(err, ret, "error while reading at byte %llu: %s",
                              (unsigned long long)c->dst, why);
    }
    if (ret < 0)
        return qimg_error_set(err, ret, "error while reading at byte %llu: %s",
                              (unsigned long long)c->dst, strerror(-ret));
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

/* Decide what a chunk writes: runs of wk->buf to write, and zero runs
 * (skipped, zeroed, or written as real zeroes with -S 0). */
static size_t plan_chunk(struct worker *wk, const struct chunk *c)
{
    struct engine *e = wk->e;
    bool data = c->kind == KIND_DATA;

    if (c->kind == KIND_BACKING)
        return 0;
    if (!e->p->sparse_size) {
        /* -S 0: everything is written; compressed zeroes need a buffer */
        if (!data && e->p->compress) {
            memset(wk->buf, 0, c->len);
            data = true;
        }
    } else if (data && e->p->compress) {
        data = !qimg_buffer_is_zero(wk->buf, c->len);
    } else if (data) {
        return copy_scan(wk->buf, c->len, c->dst, e->min_sectors,
                         e->align_sectors, wk->runs, wk->max_runs);
    }
    wk->runs[0] = (struct copy_run){0, c->len, data};
    return 1;
}


static int write_zero_run(struct engine *e, uint64_t off, uint64_t len,
                          struct qimg_error *err)
{
    struct qimg_image *t = e->p->target;

    if (!e->p->sparse_size) {
        /* -S 0: the target is to be fully allocated, zeroes included. */
        while (len) {
            uint64_t n = QIMG_MIN(len, e->chunk_size);
            int ret = qimg_pwrite(t, off, (size_t)n, e->zero_buf, err);
            if (ret < 0)
                return ret;
            off += n;
            len -= n;
        }
        return 0;
    }
    if (e->zero_init)
        return 0;
    return qimg_pwrite_zeroes(t, off, len, QIMG_ZERO_MAY_UNMAP, err);
}

static int commit_chunk(struct worker *wk, const struct chunk *c, size_t nruns,
                        struct qimg_error *err)
{
    struct engine *e = wk->e;
    struct qimg_image *t = e->p->target;
    int ret = 0;

    for (size_t i = 0; i < nruns && ret >= 0; i++) {
        const struct copy_run *r = &wk->runs[i];
        uint64_t off = c->dst + r->start;
        if (!r->data)
            ret = write_zero_run(e, off, r->len, err);
        else if (e->p->compress && wk->clen >= 0)
            ret = qimg_pwrite_compressed_data(t, off, (size_t)r->len,
                                              wk->buf + r->start, wk->cbuf,
                                              (size_t)wk->clen, err);
        else if (e->p->compress)
            ret = qimg_pwrite_compressed(t, off, (size_t)r->len,
                                         wk->buf + r->start, err);
        else
            ret = qimg_pwrite(t, off, (size_t)r->len, wk->buf + r->start, err);
    }
    if (ret < 0)
        return qimg_error_set(err, ret, "error while writing at byte %llu: %s",
                              (unsigned long long)c->dst, strerror(-ret));
    return 0;
}

/*
 * -c: compress the chunk (one cluster) now, while other workers wait for
 * their turn, rather than in commit_chunk where writes are serialised.  A
 * failure here is left for the one-step write to report in its turn.
 */
static void precompress(struct worker *wk, const struct chunk *c, size_t nruns)
{
    struct qimg_error err = {0};

    wk->clen = -1;
    if (!wk->cbuf || nruns != 1 || !wk->runs[0].data)
        return;
    wk->clen = qimg_compress_cluster(wk->e->p->target, wk->buf, c->len,
                                     wk->cbuf, &err);
    if (wk->clen < 0)
        wk->clen = -1;
}

/*
 * Ordered writes: a worker waits on its own condition variable for its
 * turn to write (W_TURN), for room to take a chunk (W_SLOT) or, with its
 * first chunk, for room to read it (W_ROOM, see first_room), and only
 * workers that can go on are woken, not all of them at each write.  A
 * worker that has written takes the room it made itself, so the others
 * waiting for room are woken only to leave (stop, or nothing left).
 * Called with e->lock.
 */
static bool may_go(const struct engine *e, const struct worker *wk)
{
    if (e->stop || e->pending)
        return true;
    if (wk->waiting == W_TURN)
        return e->write_seq == wk->wait_seq;
    if (wk->waiting == W_ROOM)
        return wk->wait_seq < e->write_seq + e->read_ahead;
    return e->walk.dst >= e->end ||
           e->next_seq < e->write_seq + e->read_ahead;
}

static void wake_ready(struct engine *e, bool slots)
{
    for (unsigned i = 0; i < e->nworkers; i++) {
        struct worker *wk = &e->workers[i];
        if (wk->waiting != W_NONE && (slots || wk->waiting != W_SLOT) &&
            may_go(e, wk))
            pthread_cond_signal(&wk->cv);
    }
}

static void wait_for(struct worker *wk, enum wait_kind kind, uint64_t seq)
{
    struct engine *e = wk->e;

    wk->waiting = kind;
    wk->wait_seq = seq;
    while (!may_go(e, wk))
        pthread_cond_wait(&wk->cv, &e->lock);
    wk->waiting = W_NONE;
}

/* In order: wait until every earlier chunk is written.  False: stopped,
 * or (order-free) an earlier chunk's write failed, so that in order this
 * one would never be written. */
static bool wait_turn(struct worker *wk, const struct chunk *c)
{
    struct engine *e = wk->e;
    bool go;

    pthread_mutex_lock(&e->lock);
    if (!e->p->out_of_order && !e->any_order)
        wait_for(wk, W_TURN, c->seq);
    go = !e->stop && !(e->pending && c->seq > e->pending_seq);
    pthread_mutex_unlock(&e->lock);
    return go;
}

/* The worker's buffer back to the pool, if it holds one.  Called with
 * e->lock. */
static void release_buffer(struct worker *wk)
{
    struct engine *e = wk->e;

    if (wk->buf) {
        e->pool[e->pool_top++] = wk->cb;
        wk->cb = (struct chunk_buf){NULL, NULL};
        wk->buf = NULL;
    }
}

/*
 * Written: hand the turn on.  The buffer goes back to the pool first, so
 * that the worker the turn wakes (for room to read) takes it rather than
 * a buffer never touched yet: read_ahead buffers in use, not one more.
 */
static void end_turn(struct worker *wk)
{
    struct engine *e = wk->e;

    if (e->p->out_of_order)
        return;
    /* Order-free, write_seq counts the chunks done: the read-ahead budget
     * (may_go) is then on chunks in flight. */
    pthread_mutex_lock(&e->lock);
    release_buffer(wk);
    e->write_seq++;
    wake_ready(e, false);
    pthread_mutex_unlock(&e->lock);
}

static bool offload_enabled(struct engine *e)
{
    bool on;
    pthread_mutex_lock(&e->lock);
    on = !e->offload_off;
    pthread_mutex_unlock(&e->lock);
    return on;
}

/* -C: try the kernel copy; false when this chunk must go the slow way. */
static bool try_offload(struct engine *e, const struct chunk *c)
{
    size_t i = source_of(e, c->dst);
    const struct qimg_copy_source *s = &e->srcs[i];
    uint64_t spos = c->dst - e->src_start[i];

    if (spos + c->len <= s->length &&
        copy_offload_range(e->offload, s->img, s->offset + spos, e->p->target,
                           c->dst, c->len) == 0)
        return true;
    /* Refused once: stop trying, as qemu-img does. */
    pthread_mutex_lock(&e->lock);
    e->offload_off = true;
    pthread_mutex_unlock(&e->lock);
    return false;
}

enum mode {
    MODE_PLAIN,     /* read, detect zero runs, write */
    MODE_OFFLOAD,   /* copy_file_range */
    MODE_WHOLE,     /* -C into a format that copies ranges as plain data:
                       read and write the chunk whole, no zero detection */
};

static enum mode chunk_mode(struct engine *e, const struct chunk *c)
{
    if (c->kind != KIND_DATA || !e->offload)
        return MODE_PLAIN;
    if (e->offload_whole)
        return MODE_WHOLE;
    return offload_enabled(e) ? MODE_OFFLOAD : MODE_PLAIN;
}

/* Read and plan without holding the turn, then commit in turn. */
static int process_chunk(struct worker *wk, const struct chunk *c,
                         struct qimg_error *err)
{
    struct engine *e = wk->e;
    enum mode mode = chunk_mode(e, c);
    size_t nruns = 0;
    int ret;

    wk->stage = QIMG_COPY_READ;
    if (c->kind == KIND_DATA && mode != MODE_OFFLOAD) {
        ret = read_chunk(e, c, wk->buf, err);
        if (ret < 0)
            return ret;
    }
    if (mode == MODE_WHOLE) {
        wk->runs[0] = (struct copy_run){0, c->len, true};
        nruns = 1;
    } else if (mode == MODE_PLAIN) {
        nruns = plan_chunk(wk, c);
        precompress(wk, c, nruns);
    }
    if (!wait_turn(wk, c))
        return 0;
    if (mode == MODE_OFFLOAD && !try_offload(e, c)) {
        mode = MODE_PLAIN;
        ret = read_chunk(e, c, wk->buf, err);
        if (ret < 0)
            return ret;
        nruns = plan_chunk(wk, c);
    }
    wk->stage = QIMG_COPY_WRITE;
    if (mode != MODE_OFFLOAD) {
        ret = commit_chunk(wk, c, nruns, err);
        if (ret < 0)
            return ret;
    }
    end_turn(wk);
    return 0;
}

/* ---- order-free commits ------------------------------------------------- */

/*
 * Order-free, a failed write is reported only once every earlier chunk is
 * done, and only when none of them failed: in order it would have been
 * the one write that fails (the first failing chunk in guest order), and
 * the writes of later chunks, which in order would never have been
 * attempted, are not reported.  Called with e->lock.
 */
static void flush_pending(struct engine *e)
{
    struct qimg_error err;

    if (!e->pending)
        return;
    for (unsigned i = 0; i < e->nworkers; i++)
        if (e->workers[i].busy && e->workers[i].cur_seq < e->pending_seq)
            return;
    err = e->pending_err;
    e->write_reported = true;
    fail_locked(e, e->pending_ret, &err, QIMG_COPY_WRITE, e->pending_off);
}

static void write_failed(struct engine *e, const struct chunk *c, int ret,
                         const struct qimg_error *err)
{
    if (e->stop) {
        /* In order, a write under way when the copy stopped reports too;
         * order-free several may be, so only the first does. */
        if (!e->write_reported) {
            e->write_reported = true;
            fail_locked(e, ret, err, QIMG_COPY_WRITE, c->dst);
        }
        return;
    }
    if (e->pending && e->pending_seq < c->seq)
        return;
    e->pending = true;
    e->pending_seq = c->seq;
    e->pending_off = c->dst;
    e->pending_ret = ret;
    e->pending_err = *err;
    wake_ready(e, true);    /* no new chunks: those waiting leave */
    flush_pending(e);
}

/*
 * Whether the order of writes cannot show in the target: a raw image
 * straight on a random-access storage, so that every chunk lands at its
 * own offset, whatever the order.  Not a format that allocates clusters
 * as writes come (in-order decides where), nor a filter whose injected
 * errors count requests (blkdebug), nor several children (quorum,
 * blkverify), nor a pipe, nor a target that is also a source's file,
 * where a later read could see an earlier write, nor one with an I/O
 * alignment (O_DIRECT): chunks need not start on its blocks, and though
 * the file storage serialises its read-modify-writes of unaligned writes,
 * a zero run that shares a block with them would not be.
 */
static bool order_free_target(const struct qimg_copy_params *p)
{
    const struct qimg_storage *t = p->target->file;

    if (strcmp(qimg_image_format(p->target), "raw") != 0 || !t ||
        t->ops->event || t->child || t->child2 || t->n_children || t->node ||
        (t->caps & QIMG_STORAGE_SEQUENTIAL) || t->align > 1)
        return false;
    for (size_t i = 0; i < p->n_sources; i++)
        for (const struct qimg_image *s = p->sources[i].img; s;
             s = qimg_image_backing(s)) {
            const struct qimg_storage *f = s->file;
            if (f == t || qimg_storage_same_file(f, t))
                return false;
        }
    return true;
}

/* ---- workers ------------------------------------------------------------ */

/* A chunk left to the target's backing file, or zero where the target
 * reads as zero already (see plan_chunk and write_zero_run). */
static bool writes_nothing(const struct engine *e, const struct chunk *c)
{
    return c->kind == KIND_BACKING ||
           (c->kind == KIND_ZERO && e->zero_init && e->p->sparse_size);
}

/* Take the next chunk under the lock, honouring the rate limit and, past
 * the first chunk, the read-ahead budget (see the top of the file).
 * Returns 1 with *c set, 0 when there is nothing left (or stopped). */
static int take_chunk(struct worker *wk, struct chunk *c)
{
    struct engine *e = wk->e;
    struct qimg_error err = {0};
    int ret;

    for (;;) {
        uint64_t now;
        if (wk->started && !e->p->out_of_order)
            wait_for(wk, W_SLOT, 0);
        if (e->stop || e->pending || e->walk.dst >= e->end)
            return 0;
        now = now_ns();
        if (e->rate.quota && now < e->rate.wait_until) {
            uint64_t d = e->rate.wait_until - now;
            struct timespec ts = {(time_t)(d / 1000000000ull),
                                  (long)(d % 1000000000ull)};
            pthread_mutex_unlock(&e->lock);
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&e->lock);
            continue;
        }
        ret = next_chunk(e, &e->walk, c, &err);
        if (ret < 0) {
            fail_locked(e, ret, &err, QIMG_COPY_STATUS, e->walk.dst);
            return 0;
        }
        if (ret == 0)
            return 0;
        if (e->walk.dst >= e->end)
            wake_ready(e, true);    /* those waiting for room can leave */
        if (counts(e, c)) {
            if (e->rate.quota)
                rate_account(&e->rate, c->len);
            e->alloc_done += c->len;
            if (e->p->progress && e->alloc_total)
                e->p->progress(e->p->opaque, (float)(100.0 * (double)e->alloc_done
                                                     / (double)e->alloc_total));
        }
        /* Past its first chunk (see start_together), a worker passes over
         * chunks that write nothing: they need no turn, and handing the
         * turn on cost two wake-ups each (half the chunks of a sparse
         * image are holes). */
        if (wk->started && writes_nothing(e, c)) {
            e->next_seq--;      /* its place in the order, given back */
            continue;
        }
        return 1;
    }
}

/*
 * Every worker takes its first chunk before any starts working, the way
 * qemu-img's coroutines all issue a request before the first completes:
 * so when the data is bad, as many requests fail (and are reported) as
 * there are workers.  Called with e->lock.
 */
static void start_together(struct engine *e, bool took)
{
    if (e->starting)
        e->starting--;
    if (!took)
        e->starting = 0;    /* nothing left for the others either */
    pthread_cond_broadcast(&e->turn);
    while (e->starting > 0 && !e->stop)
        pthread_cond_wait(&e->turn, &e->lock);
}

/*
 * The first chunks are all taken at once (start_together), but only the
 * read-ahead budget of them read at once: the others wait for room before
 * they take a buffer, as later chunks wait before they are taken.  So a
 * copy touches read_ahead buffers, not one per worker (8 x 2 MiB: a
 * dmg->raw convert held 16 MiB of buffers).  Stopped, they go on, to fail
 * as their requests would.  Called with e->lock.
 */
static void first_room(struct worker *wk, const struct chunk *c)
{
    if (!wk->e->p->out_of_order)
        wait_for(wk, W_ROOM, c->seq);
}

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
    struct engine *e = wk->e;
    struct chunk c;
    bool first = true;

    pthread_mutex_lock(&e->lock);
    struct qimg_error err;   /* cleared per chunk, not zeroed (4 KiB) */
    for (;;) {
        qimg_error_clear(&err);
        bool took;
        int ret;
        release_buffer(wk);
        took = take_chunk(wk, &c);
        if (first) {
            start_together(e, took);
            if (took)
                first_room(wk, &c);
        }
        first = false;
        if (!took)
            break;
        wk->started = true;
        wk->busy = true;
        wk->cur_seq = c.seq;
        /* the buffer released last: the likeliest to be in the caches */
        wk->cb = e->pool[--e->pool_top];
        wk->buf = wk->cb.small && c.len <= SMALL_CHUNK ? wk->cb.small
                                                       : wk->cb.big;
        pthread_mutex_unlock(&e->lock);
        ret = process_chunk(wk, &c, &err);
        pthread_mutex_lock(&e->lock);
        wk->busy = false;
        if (ret < 0 && e->any_order && wk->stage == QIMG_COPY_WRITE)
            write_failed(e, &c, ret, &err);
        else if (ret < 0)
            fail_locked(e, ret, &err, wk->stage, c.dst);
        flush_pending(e);
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/*
 * A worker's data buffer.  Page aligned, so O_DIRECT targets need no bounce
 * buffer; a big buffer of whole huge pages is aligned to them and asks for
 * them: the first read into a 2 MiB buffer of small pages took 512 page
 * faults, and all the buffers of a copy 1500 of the 2200 faults of a
 * qcow2->raw convert (docs/PERFORMANCE.md).  A hint only: without huge
 * pages the buffer is the same.
 */
static uint8_t *alloc_buffer(size_t len, bool big)
{
    bool huge = big && len % HUGE_PAGE == 0;
    void *p;

    if (posix_memalign(&p, huge ? HUGE_PAGE : 4096, len))
        return NULL;
#ifdef MADV_HUGEPAGE
    if (huge)
        (void)madvise(p, len, MADV_HUGEPAGE);
#endif
    return p;
}

static int worker_init(struct worker *wk, struct engine *e)
{
    wk->e = e;
    wk->max_runs = e->chunk_size / COPY_SECTOR + 2;
    wk->runs = calloc(wk->max_runs, sizeof(*wk->runs));
    wk->cb.big = wk->runs ? alloc_buffer(e->chunk_size, true) : NULL;
    if (!wk->cb.big)
        return -ENOMEM;
    if (e->chunk_size > SMALL_CHUNK) {
        wk->cb.small = alloc_buffer(e->chunk_size, false);
        if (!wk->cb.small)
            return -ENOMEM;
    }
    wk->clen = -1;
    if (e->p->compress && e->p->target->fmt->compress_cluster) {
        wk->cbuf = malloc(2 * (size_t)e->cluster + 64);   /* block.h */
        if (!wk->cbuf)
            return -ENOMEM;
    }
    return 0;
}

static void worker_free(struct worker *wk)
{
    free(wk->cbuf);
    free(wk->cb.big);
    free(wk->cb.small);
    free(wk->runs);
}

/* Start the workers and wait for them; runs inline for one worker. */
static int run_workers(struct engine *e, unsigned n, struct qimg_error *err)
{
    struct worker *wks = calloc(n, sizeof(*wks));
    unsigned started = 0;
    int ret = 0;

    if (!wks)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    e->pool = calloc(n, sizeof(*e->pool));
    if (!e->pool)
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    for (unsigned i = 0; i < n && !ret; i++)
        if (worker_init(&wks[i], e) < 0)
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    /* One buffer per worker, shared through the pool. */
    for (unsigned i = 0; i < n && !ret; i++) {
        e->pool[e->pool_top++] = wks[i].cb;
        wks[i].cb = (struct chunk_buf){NULL, NULL};
    }
    for (unsigned i = 0; i < n; i++)
        pthread_cond_init(&wks[i].cv, NULL);
    e->workers = wks;
    e->nworkers = n;
    e->starting = n;
    if (!ret && n == 1) {
        worker_main(&wks[0]);
    } else if (!ret) {
        for (; started < n; started++)
            if (pthread_create(&wks[started].thread, NULL, worker_main,
                               &wks[started]))
                break;
        /* Do not let the started ones wait for threads that never came. */
        pthread_mutex_lock(&e->lock);
        e->starting -= n - started;
        pthread_cond_broadcast(&e->turn);
        pthread_mutex_unlock(&e->lock);
        if (!started)
            ret = qimg_error_set(err, -EAGAIN, "Could not start threads");
        for (unsigned i = 0; i < started; i++)
            pthread_join(wks[i].thread, NULL);
    }
    e->workers = NULL;
    e->nworkers = 0;
    for (unsigned i = 0; i < n; i++) {
        pthread_cond_destroy(&wks[i].cv);
        worker_free(&wks[i]);
    }
    free(wks);
    for (size_t i = 0; e->pool && i < e->pool_top; i++) {
        free(e->pool[i].big);
        free(e->pool[i].small);
    }
    free(e->pool);
    e->pool = NULL;
    return ret;
}

/* ---- setup -------------------------------------------------------------- */

static uint32_t pow2_floor(uint32_t x)
{
    uint32_t r = 1;
    while (x >= 2 * r)
        r *= 2;
    return r;
}

/* The target's writes go to a server (see QIMG_STORAGE_REMOTE). */
static bool remote_target(const struct qimg_copy_params *p)
{
    const struct qimg_storage *t = p->target->file;
    return t && (t->caps & QIMG_STORAGE_REMOTE);
}

static int check_params(const struct qimg_copy_params *p,
                        struct qimg_error *err)
{
    if (!p->target || (p->n_sources && !p->sources))
        return qimg_error_set(err, -EINVAL, "Nothing to copy");
    if (p->sparse_size % COPY_SECTOR || p->sparse_size > UINT32_MAX)
        return qimg_error_set(err, -EINVAL, "Invalid sparse size");
    if (p->parallel > MAX_PARALLEL)
        return qimg_error_set(err, -EINVAL, "Too many parallel requests");
    if (p->chunk_size % COPY_SECTOR || p->chunk_size > QIMG_MAX_REQUEST)
        return qimg_error_set(err, -EINVAL, "Invalid chunk size");
    for (size_t i = 0; i < p->n_sources; i++) {
        const struct qimg_copy_source *s = &p->sources[i];
        if (!s->img || !qimg_range_ok(s->offset, s->length,
                                      qimg_image_size(s->img)))
            return qimg_error_set(err, -EINVAL, "Source range out of bounds");
    }
    return 0;
}

static int engine_init(struct engine *e, const struct qimg_copy_params *p,
                       struct qimg_error *err)
{
    uint32_t talign;
    uint64_t pos = p->target_offset;
    long ncpu;

    memset(e, 0, sizeof(*e));
    e->p = p;
    e->srcs = p->sources;
    e->chunk_size = p->chunk_size ? p->chunk_size : DEFAULT_CHUNK;
    e->src_start = calloc(p->n_sources + 1, sizeof(*e->src_start));
    e->src_align = calloc(p->n_sources + 1, sizeof(*e->src_align));
    if (!e->src_start || !e->src_align)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (size_t i = 0; i < p->n_sources; i++) {
        struct qimg_image *img = p->sources[i].img;
        uint32_t a = QIMG_MAX(qimg_image_cluster_size(img),
                              img->file ? img->file->align : 1);
        e->src_start[i] = pos;
        if (img->file && (img->file->caps & QIMG_STORAGE_SEQUENTIAL))
            e->sequential = e->seq_source = true;
        /* in whole sectors, as qemu-img counts */
        e->src_align[i] = (uint32_t)qimg_div_round_up(QIMG_MAX(a, 1u),
                                                      COPY_SECTOR) * COPY_SECTOR;
        if (qimg_add_overflow(pos, p->sources[i].length, &pos))
            return qimg_error_set(err, -EINVAL, "Copy too large");
    }
    e->end = pos;
    if (p->target->file && (p->target->file->caps & QIMG_STORAGE_SEQUENTIAL))
        e->sequential = true;       /* a pipe target: written in order */
    if (!qimg_range_ok(p->target_offset, pos - p->target_offset,
                       qimg_image_size(p->target)))
        return qimg_error_set(err, -ENOSPC, "output file is smaller than "
                              "input file");
    /* Zero runs are cut at the larger of -S and the target's I/O size. */
    talign = p->target->file ? p->target->file->align : 1;
    e->min_sectors = (uint32_t)(p->sparse_size / COPY_SECTOR);
    e->align_sectors = QIMG_MAX(pow2_floor(e->min_sectors ? e->min_sectors : 1),
                                (uint32_t)qimg_div_round_up(talign, COPY_SECTOR));
    e->zero_init = p->target_is_zero;
    if (p->compress) {
        e->cluster = qimg_image_cluster_size(p->target);
        if (!e->cluster || e->cluster > QIMG_MAX_REQUEST)
            return qimg_error_set(err, -EINVAL, "invalid cluster size");
        e->chunk_size = e->cluster;
    }
    if (!p->sparse_size) {
        e->zero_buf = calloc(1, e->chunk_size);
        if (!e->zero_buf)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    /* --salvage keeps in-order commits: its warnings come out in the
     * order the reads are issued and retried, which in-order mode paces
     * as qemu-img's does (iotest 251 compares them line by line). */
    e->any_order = !p->out_of_order && !p->in_order && !p->compress &&
                   !p->salvage && !e->sequential && order_free_target(p);
    if (p->copy_offload && !p->compress && !e->sequential) {
        e->offload = copy_offload_new();
        if (!e->offload)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        /* Only raw targets take copy_file_range directly; other formats
         * copy ranges into freshly allocated clusters, which amounts to
         * writing the data chunk as it is. */
        e->offload_whole = strcmp(qimg_image_format(p->target), "raw") != 0;
    }
    if (p->rate_limit) {
        double q = (double)p->rate_limit * RATE_SLICE_NS / 1e9;
        e->rate.quota = q < 1 ? 1 : (uint64_t)q;
    }
    /* A budget of (CPUs + 1) default chunks: small chunks (-c works on
     * clusters) may run further ahead, to even out their uneven costs.
     * Into a remote target the writes wait on the server, not on our
     * CPUs: REMOTE_READ_AHEAD chunks keep its queue full (qemu-img's 8
     * coroutines hold as many buffers). */
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    e->read_ahead = (uint64_t)(ncpu > 0 ? ncpu : 1) + 1;
    if (remote_target(p))
        e->read_ahead = QIMG_MAX(e->read_ahead, REMOTE_READ_AHEAD);
    e->read_ahead *= QIMG_MAX(DEFAULT_CHUNK / e->chunk_size, 1u);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->turn, NULL);
    e->sync_ready = true;
    e->walk.dst = p->target_offset;
    return 0;
}

static void engine_destroy(struct engine *e)
{
    if (e->sync_ready) {
        pthread_mutex_destroy(&e->lock);
        pthread_cond_destroy(&e->turn);
    }
    copy_offload_free(e->offload);
    free(e->zero_buf);
    free(e->src_start);
    free(e->src_align);
}

int qimg_copy(const struct qimg_copy_params *p, struct qimg_error *err)
{
    struct engine e;
    unsigned n;
    int ret = check_params(p, err);

    if (p->result)
        *p->result = (struct qimg_copy_result){QIMG_COPY_OK, 0, 0};
    if (ret < 0)
        return ret;
    ret = engine_init(&e, p, err);
    if (ret < 0)
        goto out;
    /* qemu-img always walks twice; the first walk only shows in progress
     * and in the block status warnings of --salvage. */
    if (p->progress || p->salvage) {
        ret = count_allocated(&e, err);
        if (ret < 0)
            goto out;
    }
    n = p->parallel ? p->parallel : DEFAULT_PARALLEL;
    if (e.seq_source || (e.sequential && p->out_of_order))
        n = 1;
    ret = run_workers(&e, n, err);
    flush_pending(&e);      /* every worker is done: nothing earlier left */
    if (!ret && e.ret) {
        ret = e.ret;
        *err = e.err;
    }
    /* A compressed target ends on a sector boundary, as QEMU leaves it. */
    if (!ret && p->compress)
        ret = qimg_pwrite_compressed(p->target, 0, 0, NULL, err);
    if (!ret)
        ret = qimg_flush(p->target, err);
out:
    engine_destroy(&e);
    return ret < 0 ? ret : 0;
}

bool qimg_format_can_compress(const char *fmt)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    return f && f->pwrite_compressed;
}
