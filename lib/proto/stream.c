/*
 * stream.c - the "stream" storage: a pipe, FIFO or socket (or stdin, "-")
 * read strictly forward.  The last STREAM_WINDOW bytes read are kept in a
 * ring so that a reader may look back a little (probing reads the first
 * sector, then the format reads it again; parallel readers finish out of
 * order within a few chunks); a read before the window fails with a clear
 * error instead of seeking.  Reads ahead of the stream read on, dropping
 * what nobody asked for.  Memory: one window, whatever the input size.
 *
 * A stream has no size of its own: "size" (bytes) declares it; without it
 * the size reads as STREAM_UNKNOWN_SIZE and a format that needs it (raw)
 * is refused by the caller.  A stream that ends before its declared size
 * is an error, not zeroes, so a cut download never passes as an image.
 *
 * Opened for writing (convert's raw or streamOptimized vmdk target on a
 * pipe) it writes forward only, holes as zeroes, and pads to its size on
 * flush (size 0: a format that ends the stream itself); no window, and
 * nothing can be read back.
 *
 * It is never chosen from a name: convert selects it ("file.driver":
 * "stream") for sources qemu-img 7.2 cannot open (qimg_name_is_stream).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/block.h"
#include "core/util.h"

/* The look-back window: several of the copy engine's 2 MiB chunks, and
 * any format's header reads; fixed so memory is bounded. */
#define STREAM_WINDOW (16u << 20)

struct stream_state {
    int fd;
    bool own_fd;            /* false for stdin: never closed by us */
    bool eof;
    bool writer;            /* written forward (a target) instead of read */
    bool has_size;
    uint64_t size;          /* declared size */
    uint64_t pos;           /* bytes read from fd so far */
    uint8_t *ring;          /* byte at offset x lives at ring[x % WINDOW] */
    pthread_mutex_t lock;
};

static const char *const stream_runtime_opts[] = {"size", NULL};
static const char *const stream_strong_opts[] = {"size", NULL};

bool qimg_name_is_stream(const char *filename)
{
    struct stat stb;

    if (!filename)
        return false;
    /* qemu-img 7.2 opens a file named "-" when there is one. */
    if (!strcmp(filename, "-"))
        return lstat(filename, &stb) < 0 && errno == ENOENT;
    /* 7.2 refuses pipes and sockets ("requires ... a regular file"). */
    if (stat(filename, &stb) < 0)
        return false;
    return S_ISFIFO(stb.st_mode) || S_ISSOCK(stb.st_mode);
}

static int stream_open(struct qimg_storage *st, const struct qimg_opts *opts,
                       unsigned flags, enum qimg_cache cache,
                       struct qimg_error *err)
{
    struct stream_state *s = calloc(1, sizeof(*s));
    int ret = 0;

    (void)cache;
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    s->writer = (flags & QIMG_OPEN_RDWR) != 0;
    s->has_size = qimg_opts_get(opts, "size") != NULL;
    ret = qimg_opts_get_size(opts, "size", 0, &s->size, err);
    if (ret == 0 && s->size > QIMG_MAX_LENGTH)
        ret = qimg_error_set(err, -EFBIG, "Stream size too large");
    if (ret == 0 && s->writer && !s->has_size)
        ret = qimg_error_set(err, -EINVAL, "A stream written needs a size");
    if (ret == 0 && !s->writer && !(s->ring = malloc(STREAM_WINDOW)))
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    if (ret == 0) {
        if (!strcmp(st->filename, "-")) {
            s->fd = STDIN_FILENO;
            /* waiting for a disk image typed in would only hang */
            if (isatty(s->fd))
                ret = qimg_error_set(err, -EINVAL, "Could not open '-': "
                                     "stdin is a terminal, not a stream");
        } else {
            s->fd = open(st->filename, (s->writer ? O_WRONLY : O_RDONLY) |
                         O_CLOEXEC | O_NOCTTY);
            s->own_fd = true;
            if (s->fd < 0)
                ret = qimg_error_set(err, -errno, "Could not open '%s': %s",
                                     st->filename, strerror(errno));
        }
    }
    if (ret < 0) {
        free(s->ring);
        free(s);
        return ret;
    }
    pthread_mutex_init(&s->lock, NULL);
    st->priv = s;
    st->caps |= QIMG_STORAGE_SEQUENTIAL;
    return 0;
}

static void stream_close(struct qimg_storage *st)
{
    struct stream_state *s = st->priv;

    if (!s)
        return;
    if (s->own_fd)
        close(s->fd);
    pthread_mutex_destroy(&s->lock);
    free(s->ring);
    free(s);
    st->priv = NULL;
}

/* Read from the fd into the ring until pos reaches want or the stream
 * ends.  Called with the lock held. */
static int fill_to(struct stream_state *s, uint64_t want,
                   struct qimg_error *err)
{
    while (s->pos < want && !s->eof) {
        size_t at = (size_t)(s->pos % STREAM_WINDOW);
        size_t n = STREAM_WINDOW - at;
        if (n > want - s->pos)
            n = (size_t)(want - s->pos);
        ssize_t r = read(s->fd, s->ring + at, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return qimg_error_set(err, -errno, "Could not read the stream: "
                                  "%s", strerror(errno));
        if (r == 0)
            s->eof = true;
        s->pos += (uint64_t)r;
    }
    return 0;
}

static int stream_pread(struct qimg_storage *st, uint64_t off, size_t len,
                        void *buf, struct qimg_error *err)
{
    struct stream_state *s = st->priv;
    uint64_t end, start;
    int ret = 0;

    /* a target written forward keeps nothing to read back */
    if (s->writer)
        return qimg_error_set(err, -ESPIPE, "Cannot read back a stream being "
                              "written");
    if (len > STREAM_WINDOW || qimg_add_overflow(off, (uint64_t)len, &end))
        return qimg_error_set(err, -EINVAL, "Stream read of %zu bytes is "
                              "larger than the stream window", len);
    pthread_mutex_lock(&s->lock);
    start = s->pos > STREAM_WINDOW ? s->pos - STREAM_WINDOW : 0;
    if (off < start) {
        ret = qimg_error_set(err, -ESPIPE, "Cannot read back in a stream: "
                             "offset %llu was dropped (the stream is read "
                             "forward only)", (unsigned long long)off);
        goto out;
    }
    ret = fill_to(s, end, err);
    if (ret < 0)
        goto out;
    if (s->pos < end && s->has_size && s->pos < s->size) {
        ret = qimg_error_set(err, -EIO, "The stream ended after %llu bytes, "
                             "before its size of %llu bytes",
                             (unsigned long long)s->pos,
                             (unsigned long long)s->size);
        goto out;
    }
    /* Copy what the stream holds (in at most two pieces of the ring);
     * past its end reads as zeroes, as every storage's does. */
    for (uint64_t x = off; x < end;) {
        size_t at = (size_t)(x % STREAM_WINDOW);
        uint64_t lim = QIMG_MIN(end, s->pos);
        size_t n;
        if (x >= lim) {
            memset((uint8_t *)buf + (x - off), 0, (size_t)(end - x));
            break;
        }
        n = (size_t)QIMG_MIN(lim - x, (uint64_t)(STREAM_WINDOW - at));
        memcpy((uint8_t *)buf + (x - off), s->ring + at, n);
        x += n;
    }
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Write len bytes of buf (NULL: zeroes) at the stream's end. */
static int write_out(struct stream_state *s, const uint8_t *buf, uint64_t len,
                     struct qimg_error *err)
{
    static const uint8_t zeroes[64 * 1024];

    while (len) {
        size_t n = (size_t)QIMG_MIN(len, buf ? (uint64_t)SSIZE_MAX
                                             : (uint64_t)sizeof(zeroes));
        ssize_t r = write(s->fd, buf ? buf : zeroes, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return qimg_error_set(err, -errno, "Could not write the stream: "
                                  "%s", strerror(errno));
        s->pos += (uint64_t)r;
        len -= (uint64_t)r;
        if (buf)
            buf += r;
    }
    return 0;
}

/*
 * Writes go strictly forward: a gap before off (a hole the copy skipped)
 * is written as zeroes first; a write behind the end is refused.  buf
 * NULL writes zeroes.
 */
static int write_at(struct stream_state *s, uint64_t off, uint64_t len,
                    const void *buf, struct qimg_error *err)
{
    int ret;

    if (!s->writer)
        return qimg_error_set(err, -EPERM, "A stream read cannot be written");
    pthread_mutex_lock(&s->lock);
    if (off < s->pos)
        ret = qimg_error_set(err, -ESPIPE, "Cannot write back in a stream: "
                             "offset %llu was already written",
                             (unsigned long long)off);
    else
        ret = write_out(s, NULL, off - s->pos, err);
    if (ret == 0)
        ret = write_out(s, buf, len, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int stream_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                         const void *buf, struct qimg_error *err)
{
    return write_at(st->priv, off, len, buf, err);
}

static int stream_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                         unsigned flags, struct qimg_error *err)
{
    (void)flags;
    return write_at(st->priv, off, len, NULL, err);
}

/* The end of a written stream: the rest, up to its size, is zeroes (the
 * copy engine flushes once, after the last write). */
static int stream_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct stream_state *s = st->priv;

    if (!s->writer || s->pos >= s->size)
        return 0;
    return write_at(s, s->size, 0, NULL, err);
}

static int64_t stream_get_size(struct qimg_storage *st)
{
    struct stream_state *s = st->priv;
    return s->has_size ? (int64_t)s->size : (int64_t)QIMG_STREAM_UNKNOWN_SIZE;
}

static int64_t stream_allocated(struct qimg_storage *st)
{
    (void)st;
    return -ENOTSUP;
}

const struct qimg_storage_ops qimg_storage_stream = {
    .name = "stream",
    .runtime_opts = stream_runtime_opts,
    .strong_opts = stream_strong_opts,
    .needs_filename = true,
    .open = stream_open,
    .close = stream_close,
    .pread = stream_pread,
    .pwrite = stream_pwrite,
    .pwrite_zeroes = stream_zeroes,
    .flush = stream_flush,
    .get_size = stream_get_size,
    .allocated_size = stream_allocated,
};
