/*
 * nbd-io.c - NBD connections over libnbd.  Each connection is one libnbd
 * handle owned by its own I/O thread, so any number of threads can have
 * requests in flight on it: a caller queues its requests on the
 * connection, wakes the I/O thread if it sleeps, and sleeps until the
 * completion callback (run by libnbd in the I/O thread) marks its batch
 * done.  Only the I/O thread calls into the handle after the handshake: it
 * submits what is queued (nbd_aio_*), polls the socket and runs
 * nbd_aio_notify_*.  Callers submitting themselves contended with it for
 * the handle's lock, which libnbd holds while it sends a whole 2 MiB
 * write or reads the replies: 50 us per request of hand-overs, more than
 * the server's own time (docs/PERFORMANCE.md, session 9).
 *
 * When the server advertises multi-conn, more connections are opened as
 * soon as every open one is busy (up to NBD_MAX_CONNS), and each read goes
 * to the least busy one (writes stay on the first, see pick); a flush on
 * any of them then covers writes completed on all, which is what
 * multi-conn promises.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "core/util.h"
#include "proto/nbd/nbd.h"

/* Requests of one call kept in flight together (a 64 MiB read is two;
 * a large zero or trim goes out this many pieces at a time). */
#define NBD_MAX_PIECES 16
/*
 * Writes go out in pieces of at most this much, in flight together: the
 * server stores one piece while the next arrives, and its request buffers
 * stay small.  A 1 GiB copy (420 MiB of data) into nbdkit's memory plugin
 * took 0.31 s with whole 2 MiB chunks, 0.26 s with 1 MiB or 512 KiB
 * pieces, 0.28 s with 256 KiB; into qemu-nbd 0.33 s, 0.27, 0.27 and 0.28
 * (docs/PERFORMANCE.md, session 9).  Reads stay whole: qemu-nbd serves
 * 2 MiB reads best.
 */
#define NBD_WRITE_PIECE (1u << 20)
/* Zero and trim pieces: NBD lengths are 32-bit. */
#define NBD_MAX_RANGE (1u << 30)

struct piece;

struct nbd_conn {
    struct nbd_handle *h;
    pthread_t thread;
    bool running;
    int wake_fd;
    atomic_int inflight;
    atomic_bool stop;
    /* Requests queued for the I/O thread to submit, oldest first. */
    pthread_mutex_t qlock;
    struct piece *qhead, *qtail;
    /* Set by the I/O thread before it may sleep in poll: a caller that
     * queues then finds it set writes wake_fd. */
    atomic_bool sleeping;
    bool tcp;               /* a TCP socket (quick_ack) */
    /* What the server said when it refused the handshake. */
    char server_msg[512];
};

struct nbd_pool {
    struct nbd_target target;
    struct nbd_export_info info;
    pthread_mutex_t grow_lock;
    struct nbd_conn conns[NBD_MAX_CONNS];
    atomic_int n_conns;
    atomic_bool grow_failed;
};

/* The requests of one call: done when pending reaches zero. */
struct batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int error;          /* first errno reported */
    /* block status answers */
    uint64_t *lengths;
    uint32_t *flags;
    int max, n;
    const char *context;
};

struct req;

struct piece {
    struct batch *b;
    struct nbd_conn *c;
    const struct req *r;
    struct piece *next;     /* in c's queue */
};

static void batch_init(struct batch *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
}

static void batch_destroy(struct batch *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void batch_finish(struct batch *b, int error)
{
    pthread_mutex_lock(&b->mu);
    if (error && !b->error)
        b->error = error;
    if (--b->pending == 0)
        pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static int batch_wait(struct batch *b)
{
    pthread_mutex_lock(&b->mu);
    while (b->pending > 0)
        pthread_cond_wait(&b->cv, &b->mu);
    int e = b->error;
    pthread_mutex_unlock(&b->mu);
    return e;
}

/* Run by libnbd (I/O thread) when a command retires. */
static int on_complete(void *user_data, int *error)
{
    struct piece *pc = user_data;
    atomic_fetch_sub(&pc->c->inflight, 1);
    batch_finish(pc->b, *error);
    return 1;   /* retire the command */
}

static int on_extent(void *user_data, const char *metacontext,
                     uint64_t offset, uint32_t *entries, size_t nr_entries,
                     int *error)
{
    struct piece *pc = user_data;
    struct batch *b = pc->b;

    (void)offset;
    (void)error;
    if (strcmp(metacontext, b->context))
        return 0;
    pthread_mutex_lock(&b->mu);
    for (size_t i = 0; i + 1 < nr_entries && b->n < b->max; i += 2) {
        b->lengths[b->n] = entries[i];
        b->flags[b->n] = entries[i + 1];
        b->n++;
    }
    pthread_mutex_unlock(&b->mu);
    return 0;
}

/* ---- the I/O thread ----------------------------------------------------- */

/*
 * Acknowledge what arrives at once instead of after the delayed-ACK timer
 * (40 ms).  qemu-nbd sends its handshake replies in several small writes
 * without TCP_NODELAY, so each one after the first waited for our ACK:
 * two 40 ms stalls per connection, 0.10 s for an `info` that takes 15 ms.
 * Quick-ACK mode does not stick (the kernel may leave it), so it is asked
 * for before every wait.
 */
static void quick_ack(int fd)
{
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &(int){1}, sizeof(int));
}

static void wake(struct nbd_conn *c)
{
    uint64_t one = 1;
    ssize_t r = write(c->wake_fd, &one, sizeof(one));
    (void)r;
}

static int64_t submit(struct nbd_conn *c, const struct req *r,
                      struct piece *pc);
static void submit_failed(struct nbd_conn *c, struct piece *pc);

/* Take the queue; with sleep, mark the thread sleeping first (see
 * struct nbd_conn). */
static struct piece *take_queue(struct nbd_conn *c, bool sleep)
{
    struct piece *q;

    if (sleep)
        atomic_store(&c->sleeping, true);
    pthread_mutex_lock(&c->qlock);
    q = c->qhead;
    c->qhead = c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    if (q)
        atomic_store(&c->sleeping, false);
    return q;
}

/* Submit the queued requests, in order. */
static void submit_all(struct nbd_conn *c, struct piece *q)
{
    while (q) {
        struct piece *next = q->next;   /* q may be freed once completed */
        if (submit(c, q->r, q) < 0)
            submit_failed(c, q);
        q = next;
    }
}

static void *conn_thread(void *arg)
{
    struct nbd_conn *c = arg;

    while (!atomic_load(&c->stop)) {
        struct pollfd pfd[2] = {{-1, 0, 0}, {c->wake_fd, POLLIN, 0}};
        struct piece *q = take_queue(c, false);
        if (q)
            submit_all(c, q);
        /* Nothing queued once marked sleeping: poll until the socket or a
         * caller wakes us. */
        q = take_queue(c, true);
        if (q) {
            submit_all(c, q);
            continue;
        }
        unsigned dir = nbd_aio_get_direction(c->h);
        int fd = nbd_aio_get_fd(c->h);

        if (fd >= 0 && !nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h)) {
            pfd[0].fd = fd;
            if (dir & LIBNBD_AIO_DIRECTION_READ)
                pfd[0].events |= POLLIN;
            if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                pfd[0].events |= POLLOUT;
        }
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        atomic_store(&c->sleeping, false);
        if (pfd[1].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(c->wake_fd, &v, sizeof(v));
            (void)r;
        }
        /* A read notification also notices a hang-up, which fails the
         * commands in flight (libnbd retires them with ENOTCONN). */
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            nbd_aio_notify_read(c->h);
            /* qemu-nbd's replies are small writes without TCP_NODELAY
             * too: a reply behind another waits for our ACK. */
            if (c->tcp)
                quick_ack(fd);
        }
        else if (pfd[0].revents & POLLOUT)
            nbd_aio_notify_write(c->h);
    }
    /* Stopping: fail what is still queued (nothing, when closed after
     * the last caller returned). */
    struct piece *q = take_queue(c, false);
    while (q) {
        struct piece *next = q->next;
        submit_failed(c, q);
        q = next;
    }
    return NULL;
}

/*
 * Queue pc for c's I/O thread (run by callers).  When the thread sleeps
 * with nothing queued, the caller sends the request itself: in a serial
 * run of requests (a qcow2 target written in order, check and map of a
 * qcow2 over NBD) the hop to the I/O thread was a fifth of the time
 * between a reply and the next request.  The thread still reads every
 * reply (it polls the socket whenever libnbd wants to read); it is woken
 * only when libnbd has bytes left to send, to poll for POLLOUT too.  A
 * caller that drove the socket itself as well raced the I/O thread for
 * the replies and stalled (tried in session 11).
 */
static void enqueue(struct nbd_conn *c, struct piece *pc)
{
    pc->next = NULL;
    pthread_mutex_lock(&c->qlock);
    if (!c->qhead && atomic_load(&c->sleeping)) {
        int64_t r = submit(c, pc->r, pc);
        unsigned dir = nbd_aio_get_direction(c->h);
        pthread_mutex_unlock(&c->qlock);
        if (r < 0)
            submit_failed(c, pc);
        else if (dir & LIBNBD_AIO_DIRECTION_WRITE)
            wake(c);
        return;
    }
    if (c->qtail)
        c->qtail->next = pc;
    else
        c->qhead = pc;
    c->qtail = pc;
    pthread_mutex_unlock(&c->qlock);
    if (atomic_load(&c->sleeping))
        wake(c);
}

/* ---- connecting ------------------------------------------------------------ */

enum op { OP_READ, OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_STATUS };

struct req {
    enum op op;
    uint64_t off, len;
    void *buf;
    uint32_t flags;
};

static int on_debug(void *user_data, const char *context, const char *msg)
{
    struct nbd_conn *c = user_data;
    const char *tag = "server error message: ";
    const char *p = strstr(msg, tag);

    (void)context;
    if (p && !c->server_msg[0])
        snprintf(c->server_msg, sizeof(c->server_msg), "%s", p + strlen(tag));
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Drive the handshake on fd, for at most timeout_ms (-1: no limit). */
static int handshake(struct nbd_conn *c, int fd, int timeout_ms)
{
    long long end = timeout_ms < 0 ? 0 : now_ms() + timeout_ms;

    if (nbd_aio_connect_socket(c->h, fd) < 0)
        return -1;
    while (nbd_aio_is_connecting(c->h)) {
        struct pollfd pfd = {nbd_aio_get_fd(c->h), 0, 0};
        unsigned dir = nbd_aio_get_direction(c->h);
        int wait = -1, r;

        if (dir & LIBNBD_AIO_DIRECTION_READ)
            pfd.events |= POLLIN;
        if (dir & LIBNBD_AIO_DIRECTION_WRITE)
            pfd.events |= POLLOUT;
        if (timeout_ms >= 0) {
            long long left = end - now_ms();
            if (left <= 0) {
                errno = ETIMEDOUT;
                return -2;
            }
            wait = (int)left;
        }
        if (c->tcp)
            quick_ack(pfd.fd);
        r = poll(&pfd, 1, wait);
        if (r < 0 && errno != EINTR)
            return -2;
        if (r <= 0)
            continue;
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
            r = nbd_aio_notify_read(c->h);
        else
            r = nbd_aio_notify_write(c->h);
        if (r < 0)
            return -1;
    }
    if (!nbd_aio_is_ready(c->h)) {
        errno = ECONNRESET;
        return -2;
    }
    return 0;
}

/* QEMU's words for a refused handshake. */
static int handshake_error(struct nbd_conn *c, int e, struct qimg_error *err)
{
    if (e == ENOENT) {
        if (c->server_msg[0])
            return qimg_error_set(err, -EINVAL, "Requested export not "
                                  "available\nserver reported: %s",
                                  c->server_msg);
        return qimg_error_set(err, -EINVAL, "Requested export not "
                              "available");
    }
    const char *m = nbd_get_error();
    return qimg_error_set(err, -(e ? e : EIO), "%s", m ? m : strerror(e));
}

static void conn_close(struct nbd_conn *c)
{
    if (c->running) {
        atomic_store(&c->stop, true);
        wake(c);
        pthread_join(c->thread, NULL);
        c->running = false;
    }
    if (c->h) {
        if (nbd_aio_is_ready(c->h))
            nbd_shutdown(c->h, 0);
        nbd_close(c->h);
        c->h = NULL;
    }
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    c->wake_fd = -1;
    pthread_mutex_destroy(&c->qlock);
}

/* Open one connection; the first (timeout -1) fills the export info. */
static int conn_open(struct nbd_pool *p, struct nbd_conn *c, int timeout_ms,
                     struct qimg_error *err)
{
    const struct nbd_target *t = &p->target;
    int fd, r, e;

    memset(c, 0, sizeof(*c));
    c->wake_fd = -1;
    pthread_mutex_init(&c->qlock, NULL);
    c->h = nbd_create();
    if (!c->h)
        return qimg_error_set(err, -ENOMEM, "%s", nbd_get_error());
    nbd_set_export_name(c->h, t->export_name);
    if (t->context[0])
        nbd_add_meta_context(c->h, t->context);
    nbd_set_debug_callback(c->h, (nbd_debug_callback){.callback = on_debug,
                                                      .user_data = c});
    nbd_set_debug(c->h, true);
    fd = net_connect(&t->addr, err);
    if (fd < 0) {
        conn_close(c);
        return fd;
    }
    /* Requests are pipelined: without TCP_NODELAY the tail of one write
     * waits for the ACK of the previous, and the server's delayed ACK
     * (40 ms) stalls the stream (QEMU's client turns Nagle off too). */
    if (t->addr.type == NET_ADDR_INET)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    c->tcp = t->addr.type == NET_ADDR_INET;
    r = handshake(c, fd, timeout_ms);
    if (r < 0) {
        e = r == -1 ? nbd_get_errno() : errno;
        if (r == -2 && e == ETIMEDOUT)      /* QEMU's open-timeout words */
            r = qimg_error_set(err, -ETIMEDOUT, "Connection attempt "
                               "cancelled by timeout");
        else
            r = handshake_error(c, e, err);
        conn_close(c);
        return r;
    }
    nbd_set_debug(c->h, false);
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0 ||
        pthread_create(&c->thread, NULL, conn_thread, c) != 0) {
        conn_close(c);
        return qimg_error_set(err, -ENOMEM, "Could not start the NBD I/O "
                              "thread");
    }
    c->running = true;
    return 0;
}

static void read_info(struct nbd_pool *p)
{
    struct nbd_handle *h = p->conns[0].h;
    struct nbd_export_info *i = &p->info;
    int64_t v;

    i->size = (uint64_t)QIMG_MAX(nbd_get_size(h), 0);
    i->read_only = nbd_is_read_only(h) == 1;
    i->can_flush = nbd_can_flush(h) == 1;
    i->can_zero = nbd_can_zero(h) == 1;
    i->can_trim = nbd_can_trim(h) == 1;
    i->can_fast_zero = nbd_can_fast_zero(h) == 1;
    i->multi_conn = nbd_can_multi_conn(h) == 1;
    i->has_context = p->target.context[0] &&
                     nbd_can_meta_context(h, p->target.context) == 1;
    v = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    i->min_block = v > 0 && v <= 65536 ? (uint32_t)v : 0;
    v = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    i->max_block = v > 0 && v <= (1ll << 32) ? (uint32_t)QIMG_MIN(v, UINT32_MAX)
                                              : 0;
}

int nbd_pool_open(struct nbd_pool **out, const struct nbd_target *t,
                  struct nbd_export_info *info, struct qimg_error *err)
{
    struct nbd_pool *p = calloc(1, sizeof(*p));
    int ret;

    if (!p)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    p->target = *t;
    pthread_mutex_init(&p->grow_lock, NULL);
    ret = conn_open(p, &p->conns[0],
                    t->open_timeout ? (int)t->open_timeout * 1000 : -1, err);
    if (ret < 0) {
        pthread_mutex_destroy(&p->grow_lock);
        free(p);
        return ret;
    }
    atomic_store(&p->n_conns, 1);
    read_info(p);
    *info = p->info;
    *out = p;
    return 0;
}

void nbd_pool_close(struct nbd_pool *p)
{
    if (!p)
        return;
    for (int i = atomic_load(&p->n_conns) - 1; i >= 0; i--)
        conn_close(&p->conns[i]);
    pthread_mutex_destroy(&p->grow_lock);
    free(p);
}

/* Open one more connection when every open one is busy. */
static void maybe_grow(struct nbd_pool *p)
{
    int n = atomic_load(&p->n_conns);

    if (!p->info.multi_conn || n >= NBD_MAX_CONNS ||
        atomic_load(&p->grow_failed))
        return;
    pthread_mutex_lock(&p->grow_lock);
    n = atomic_load(&p->n_conns);
    if (n < NBD_MAX_CONNS && !atomic_load(&p->grow_failed)) {
        if (conn_open(p, &p->conns[n], NBD_EXTRA_CONNECT_MS, NULL) == 0)
            atomic_store(&p->n_conns, n + 1);
        else
            atomic_store(&p->grow_failed, true);
    }
    pthread_mutex_unlock(&p->grow_lock);
}

/*
 * The connection for a request: the least busy one (a new one if all are
 * busy and we may), except for writes, zeroes and trims, which all go to
 * the first.  Writing 1 GiB (420 MiB of data) over loopback, more
 * connections only cost the server: into nbdkit's memory plugin 0.51 s
 * on one connection, 0.67 on two, 0.75 on four (and 2.5 times the
 * server's CPU time); into qemu-nbd 0.55, 0.54, 0.51 (docs/PERFORMANCE.md,
 * session 8).  Requests in flight on one connection are pipelined anyway.
 */
static struct nbd_conn *pick(struct nbd_pool *p, enum op op)
{
    int n = atomic_load(&p->n_conns), best = 0, best_load = 0;

    if (op == OP_WRITE || op == OP_ZERO || op == OP_TRIM)
        return &p->conns[0];

    for (int i = 0; i < n; i++) {
        int l = atomic_load(&p->conns[i].inflight);
        if (i == 0 || l < best_load) {
            best = i;
            best_load = l;
        }
    }
    if (best_load > 0 && n < NBD_MAX_CONNS && p->info.multi_conn &&
        !atomic_load(&p->grow_failed)) {
        maybe_grow(p);
        if (atomic_load(&p->n_conns) > n)
            best = n;
    }
    return &p->conns[best];
}

/* ---- requests ---------------------------------------------------------------- */


static int64_t submit(struct nbd_conn *c, const struct req *r, struct piece *pc)
{
    nbd_completion_callback cb = {.callback = on_complete, .user_data = pc};

    switch (r->op) {
    case OP_READ:
        return nbd_aio_pread(c->h, r->buf, r->len, r->off, cb, 0);
    case OP_WRITE:
        return nbd_aio_pwrite(c->h, r->buf, r->len, r->off, cb, 0);
    case OP_ZERO:
        return nbd_aio_zero(c->h, r->len, r->off, cb, r->flags);
    case OP_TRIM:
        return nbd_aio_trim(c->h, r->len, r->off, cb, 0);
    case OP_FLUSH:
        return nbd_aio_flush(c->h, cb, 0);
    case OP_STATUS:
        return nbd_aio_block_status(c->h, r->len, r->off,
                                    (nbd_extent_callback){.callback = on_extent,
                                                          .user_data = pc},
                                    cb, 0);
    }
    return -1;
}

/* The I/O thread could not submit pc: fail its piece of the batch. */
static void submit_failed(struct nbd_conn *c, struct piece *pc)
{
    int se = nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)
                 ? ENOTCONN : nbd_get_errno();
    atomic_fetch_sub(&c->inflight, 1);
    batch_finish(pc->b, se ? se : ENOTCONN);
}

/* A lost connection fails like QEMU's client with no reconnect delay. */
static int map_errno(int e)
{
    switch (e) {
    case ENOTCONN:
    case ESHUTDOWN:
    case ECONNRESET:
    case EPIPE:
    case 0:
        return EIO;
    default:
        return e;
    }
}

/* Send the pieces of one call (at most NBD_MAX_PIECES) and wait. */
static int run(struct nbd_pool *p, struct batch *b, const struct req *reqs,
               int n)
{
    struct piece pcs[NBD_MAX_PIECES];
    int e = 0;

    pthread_mutex_lock(&b->mu);
    b->pending += n;        /* before any piece can complete */
    pthread_mutex_unlock(&b->mu);
    for (int i = 0; i < n; i++) {
        struct nbd_conn *c = pick(p, reqs[i].op);
        pcs[i] = (struct piece){b, c, &reqs[i], NULL};
        atomic_fetch_add(&c->inflight, 1);
        enqueue(c, &pcs[i]);
    }
    e = batch_wait(b);
    return e ? -map_errno(e) : 0;
}

static int fail(int ret, struct qimg_error *err)
{
    return qimg_error_set(err, ret, "%s", strerror(-ret));
}

/* Split [off, off+len) into pieces of at most max and run them. */
static int run_split(struct nbd_pool *p, enum op op, uint64_t off,
                     uint64_t len, void *buf, uint32_t flags, uint64_t max,
                     struct qimg_error *err)
{
    struct req reqs[NBD_MAX_PIECES];

    while (len > 0) {
        struct batch b;
        int n = 0, ret;
        while (len > 0 && n < NBD_MAX_PIECES) {
            uint64_t l = QIMG_MIN(len, max);
            reqs[n++] = (struct req){op, off, l, buf, flags};
            off += l;
            len -= l;
            if (buf)
                buf = (uint8_t *)buf + l;
        }
        batch_init(&b);
        ret = run(p, &b, reqs, n);
        batch_destroy(&b);
        if (ret < 0)
            return fail(ret, err);
    }
    return 0;
}

static uint64_t max_data(const struct nbd_pool *p)
{
    uint64_t m = NBD_MAX_REQUEST;
    if (p->info.max_block && p->info.max_block < m)
        m = p->info.max_block;
    return m;
}

static uint64_t max_range(const struct nbd_pool *p)
{
    uint64_t m = NBD_MAX_RANGE;
    if (p->info.min_block > 1)
        m -= m % p->info.min_block;
    return m;
}

int nbd_pool_pread(struct nbd_pool *p, uint64_t off, size_t len, void *buf,
                   struct qimg_error *err)
{
    return run_split(p, OP_READ, off, len, buf, 0, max_data(p), err);
}

int nbd_pool_pwrite(struct nbd_pool *p, uint64_t off, size_t len,
                    const void *buf, struct qimg_error *err)
{
    return run_split(p, OP_WRITE, off, len, (void *)buf, 0,
                     QIMG_MIN(max_data(p), NBD_WRITE_PIECE), err);
}

int nbd_pool_zero(struct nbd_pool *p, uint64_t off, uint64_t len,
                  bool may_unmap, struct qimg_error *err)
{
    return run_split(p, OP_ZERO, off, len, NULL,
                     may_unmap ? 0 : LIBNBD_CMD_FLAG_NO_HOLE, max_range(p),
                     err);
}

int nbd_pool_trim(struct nbd_pool *p, uint64_t off, uint64_t len,
                  struct qimg_error *err)
{
    return run_split(p, OP_TRIM, off, len, NULL, 0, max_range(p), err);
}

int nbd_pool_flush(struct nbd_pool *p, struct qimg_error *err)
{
    struct req r = {OP_FLUSH, 0, 0, NULL, 0};
    struct batch b;
    int ret;

    batch_init(&b);
    ret = run(p, &b, &r, 1);
    batch_destroy(&b);
    return ret < 0 ? fail(ret, err) : 0;
}

int nbd_pool_block_status(struct nbd_pool *p, uint64_t off, uint64_t len,
                          uint64_t *lengths, uint32_t *flags, int max,
                          struct qimg_error *err)
{
    struct req r = {OP_STATUS, off, QIMG_MIN(len, max_range(p)), NULL, 0};
    struct batch b;
    int ret;

    batch_init(&b);
    b.lengths = lengths;
    b.flags = flags;
    b.max = max;
    b.context = p->target.context;
    ret = run(p, &b, &r, 1);
    int n = b.n;
    batch_destroy(&b);
    if (ret < 0)
        return fail(ret, err);
    if (n == 0)
        return qimg_error_set(err, -EIO, "Server did not reply with any "
                              "status extents");
    return n;
}
