/*
 * nbd-floor.c - how fast an NBD server takes a given copy, with the client
 * doing as little as a client can: the floor of `convert -n FILE nbd://`.
 *
 * Before the clock starts, the source's data is read into memory and its
 * extents are found (SEEK_DATA/SEEK_HOLE) and cut at CHUNK boundaries, the
 * requests convert sends (data: NBD_CMD_WRITE, holes: NBD_CMD_WRITE_ZEROES
 * that may trim).  Timed: connect, send every request from one thread
 * with up to INFLIGHT in flight (libnbd's own poll loop), flush, close.
 * No file reads, no zero scan, no hand-over between threads: what is left
 * is the kernel's socket copies and the server's work.
 *
 * With NBD_FLOOR_READ=1 in the environment, each data request is read
 * from the file just before it is sent (into a ring of INFLIGHT + 1
 * buffers), still from one thread: the floor of a client that must read
 * its source.
 *
 * usage: nbd-floor RAWFILE URI [INFLIGHT=16] [CHUNK=2097152]
 * prints: requests, bytes of data, wall seconds, client CPU seconds
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

struct rq {
    uint64_t off, len;
    int data;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 +
           u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "nbd-floor: %s: %s\n", what,
            nbd_get_error() ? nbd_get_error() : strerror(errno));
    exit(1);
}

/* Append [off, off+len) cut at chunk boundaries. */
static void add(struct rq **v, size_t *n, size_t *cap, uint64_t off,
                uint64_t len, int data, uint64_t chunk)
{
    while (len > 0) {
        uint64_t l = chunk - off % chunk;
        if (l > len)
            l = len;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 1024;
            *v = realloc(*v, *cap * sizeof(**v));
            if (!*v)
                die("realloc");
        }
        (*v)[(*n)++] = (struct rq){off, l, data};
        off += l;
        len -= l;
    }
}

static int done_cb(void *p, int *error)
{
    if (*error) {
        fprintf(stderr, "nbd-floor: request failed: %s\n", strerror(*error));
        exit(1);
    }
    --*(int *)p;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: nbd-floor RAWFILE URI [INFLIGHT] [CHUNK]\n");
        return 2;
    }
    int inflight = argc > 3 ? atoi(argv[3]) : 16;
    uint64_t chunk = argc > 4 ? strtoull(argv[4], NULL, 0) : 2u << 20;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || inflight < 1 || chunk == 0)
        die(argv[1]);
    off_t size = lseek(fd, 0, SEEK_END);
    uint8_t *mem = malloc(size ? size : 1);
    struct rq *v = NULL;
    size_t n = 0, cap = 0;
    uint64_t data_bytes = 0;
    if (!mem)
        die("malloc");

    for (off_t pos = 0; pos < size;) {
        off_t d = lseek(fd, pos, SEEK_DATA);
        if (d < 0)
            d = size;
        if (d > pos)
            add(&v, &n, &cap, pos, d - pos, 0, chunk);
        if (d >= size)
            break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        add(&v, &n, &cap, d, h - d, 1, chunk);
        if (pread(fd, mem + d, h - d, d) != h - d)
            die("pread");
        data_bytes += h - d;
        pos = h;
    }

    double t0 = now(), c0 = cpu();
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, argv[2]) < 0)
        die("connect");
    int busy = 0;
    int rd = getenv("NBD_FLOOR_READ") != NULL;
    uint8_t *pool = rd ? malloc(chunk * (inflight + 1)) : NULL;
    size_t slot = 0;
    for (size_t i = 0; i < n || busy > 0;) {
        while (i < n && busy < inflight) {
            nbd_completion_callback cb = {.callback = done_cb,
                                          .user_data = &busy};
            uint8_t *src = mem + v[i].off;
            if (rd && v[i].data) {
                src = pool + chunk * (slot++ % (inflight + 1));
                if (pread(fd, src, v[i].len, v[i].off) != (ssize_t)v[i].len)
                    die("pread");
            }
            int64_t r = v[i].data
                ? nbd_aio_pwrite(h, src, v[i].len, v[i].off, cb, 0)
                : nbd_aio_zero(h, v[i].len, v[i].off, cb, 0);
            if (r < 0)
                die("submit");
            busy++;
            i++;
        }
        if (nbd_poll(h, -1) < 0)
            die("poll");
    }
    if (nbd_flush(h, 0) < 0)
        die("flush");
    nbd_shutdown(h, 0);
    nbd_close(h);
    printf("%zu requests, %" PRIu64 " bytes of data, %.3f s, cpu %.3f s\n",
           n, data_bytes, now() - t0, cpu() - c0);
    return 0;
}
