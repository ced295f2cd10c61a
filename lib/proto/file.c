/*
 * file.c - the "file" storage: regular files and block devices through
 * POSIX calls, with QEMU-compatible image locking.
 *
 * Locking: QEMU marks each permission a user of an image holds, and each
 * permission it refuses to share, with a shared (read) OFD lock on one byte
 * of the file: byte 100 + bit for "I hold permission bit", byte 200 + bit
 * for "I do not let others hold it".  Before using an image, a user tests
 * with a write-lock probe (F_OFD_GETLK) that nobody else holds the opposite
 * byte.  We use the same bytes and bits so that QEMU and qimg see each
 * other.  Bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
 *
 * Cache modes map as QEMU maps them: none -> O_DIRECT, writethrough ->
 * O_DSYNC, directsync -> both, unsafe -> flushes ignored.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/block.h"
#include "core/util.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

enum {
    PERM_CONSISTENT_READ = 1 << 0,
    PERM_WRITE = 1 << 1,
    PERM_WRITE_UNCHANGED = 1 << 2,
    PERM_RESIZE = 1 << 3,
    PERM_ALL = 0xf,
    PERM_BITS = 4,
};

static const char *const perm_names[PERM_BITS] = {
    "consistent read", "write", "write unchanged", "resize",
};

/* Memory alignment of O_DIRECT bounce buffers (always enough). */
#define DIRECT_ALIGN 4096

struct file_state {
    int fd;
    bool unsafe;          /* cache=unsafe: skip flushes */
    bool direct;          /* O_DIRECT: requests need alignment */
    bool locked;
    bool no_lock;         /* locking=off */
    uint32_t align;       /* O_DIRECT request alignment, probed at open */
    pthread_mutex_t rmw;  /* serialises unaligned O_DIRECT writes */
    /* The last data extent SEEK_DATA/SEEK_HOLE found, [start, end), end
     * being where a hole (or EOF) begins, as QEMU's block status cache:
     * the next queries inside it need no lseek.  Writes bump gen (a query
     * in flight then does not store what it found) and drop the extent
     * when they reach past end (the hole may be gone); zeroing, discard
     * and truncation drop it always.  bsc_next_data is where the last
     * SEEK_DATA from a hole found data (0: none): the query that follows
     * at that offset skips its SEEK_DATA (writes cannot turn data into a
     * hole; zeroing, discard and truncation drop it). */
    pthread_mutex_t bsc_lock;
    uint64_t bsc_start, bsc_end, bsc_gen, bsc_next_data;
};

static uint64_t bsc_snapshot(struct file_state *s)
{
    pthread_mutex_lock(&s->bsc_lock);
    uint64_t g = s->bsc_gen;
    pthread_mutex_unlock(&s->bsc_lock);
    return g;
}

/* End of the cached data extent holding off, or 0; *is_data when off is
 * known to be data (where the last SEEK_DATA from a hole landed). */
static uint64_t bsc_lookup(struct file_state *s, uint64_t off, bool *is_data)
{
    uint64_t end = 0;
    pthread_mutex_lock(&s->bsc_lock);
    if (off >= s->bsc_start && off < s->bsc_end)
        end = s->bsc_end;
    *is_data = off && off == s->bsc_next_data;
    pthread_mutex_unlock(&s->bsc_lock);
    return end;
}

static void bsc_store_next_data(struct file_state *s, uint64_t gen,
                                uint64_t data)
{
    pthread_mutex_lock(&s->bsc_lock);
    if (s->bsc_gen == gen)
        s->bsc_next_data = data;
    pthread_mutex_unlock(&s->bsc_lock);
}

static void bsc_store(struct file_state *s, uint64_t gen, uint64_t start,
                      uint64_t end)
{
    pthread_mutex_lock(&s->bsc_lock);
    if (s->bsc_gen == gen) {
        s->bsc_start = start;
        s->bsc_end = end;
    }
    pthread_mutex_unlock(&s->bsc_lock);
}

/* After a change of [off, off+len) (len UINT64_MAX: anything may have
 * changed, data may have become holes). */
static void bsc_changed(struct file_state *s, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&s->bsc_lock);
    s->bsc_gen++;
    if (len == UINT64_MAX)
        s->bsc_next_data = 0;
    if (len == UINT64_MAX || off + len > s->bsc_end)
        s->bsc_start = s->bsc_end = 0;
    pthread_mutex_unlock(&s->bsc_lock);
}

static int lock_byte(int fd, off_t off, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = off,
                       .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* True when another open file description holds a lock on byte off. */
static bool byte_taken(int fd, off_t off)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off,
                       .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return false;
    return fl.l_type != F_UNLCK;
}

static void unlock_all(int fd)
{
    for (int i = 0; i < PERM_BITS; i++) {
        lock_byte(fd, LOCK_PERM_BASE + i, F_UNLCK);
        lock_byte(fd, LOCK_SHARED_BASE + i, F_UNLCK);
    }
}

/* Take the locks for perm/unshared and check nobody conflicts. */
static int apply_locks(int fd, const char *filename, unsigned perm,
                       unsigned unshared, struct qimg_error *err)
{
    for (int i = 0; i < PERM_BITS; i++) {
        int ret = 0;
        if (perm & (1u << i))
            ret = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK);
        if (!ret && (unshared & (1u << i)))
            ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK);
        if (ret < 0) {
            unlock_all(fd);
            return qimg_error_set(err, ret, "Failed to lock byte %d",
                                  (perm & (1u << i)) ? LOCK_PERM_BASE + i
                                                     : LOCK_SHARED_BASE + i);
        }
    }
    for (int i = 0; i < PERM_BITS; i++) {
        if ((perm & (1u << i)) && byte_taken(fd, LOCK_SHARED_BASE + i)) {
            unlock_all(fd);
            return qimg_error_set(err, -EAGAIN, "Failed to get \"%s\" lock\n"
                                  "Is another process using the image [%s]?",
                                  perm_names[i], filename);
        }
    }
    for (int i = 0; i < PERM_BITS; i++) {
        if ((unshared & (1u << i)) && byte_taken(fd, LOCK_PERM_BASE + i)) {
            unlock_all(fd);
            return qimg_error_set(err, -EAGAIN, "Failed to get shared \"%s\" "
                                  "lock\nIs another process using the image "
                                  "[%s]?", perm_names[i], filename);
        }
    }
    return 0;
}

/* The permissions an open with these flags holds and refuses to share. */
static void flags_to_perm(unsigned flags, unsigned *perm, unsigned *unshared)
{
    *perm = 0;
    *unshared = 0;
    if (flags & QIMG_OPEN_NO_LOCK)
        return;
    if (!(flags & QIMG_OPEN_NO_IO))
        *perm = PERM_CONSISTENT_READ;
    if (flags & QIMG_OPEN_RDWR)
        *perm |= PERM_WRITE;
    if (flags & QIMG_OPEN_RESIZE)
        *perm |= PERM_RESIZE;
    if ((flags & QIMG_OPEN_NO_SHARE) && !(flags & QIMG_OPEN_SHARE))
        *unshared = PERM_WRITE | PERM_RESIZE;
}

static uint32_t probe_direct_alignment(int fd);

/*
 * Open the file or device named by the "filename" option.  device: the
 * host_device/host_cdrom drivers, which take only character and block
 * devices, as the file driver takes only what is not one.
 */
static int open_common(struct qimg_storage *st, const struct qimg_opts *opts,
                       unsigned flags, enum qimg_cache cache, bool device,
                       struct qimg_error *err)
{
    struct file_state *s = calloc(1, sizeof(*s));
    const char *filename = st->filename;
    int oflags = (flags & QIMG_OPEN_RDWR) ? O_RDWR : O_RDONLY;
    const char *locking = qimg_opts_get(opts, "locking");
    unsigned perm, unshared;
    struct stat stb;
    int ret;

    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (locking && strcmp(locking, "on") && strcmp(locking, "off") &&
        strcmp(locking, "auto")) {
        free(s);
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s",
                              locking);
    }
    pthread_mutex_init(&s->rmw, NULL);
    pthread_mutex_init(&s->bsc_lock, NULL);
    if (cache == QIMG_CACHE_NONE || cache == QIMG_CACHE_DIRECTSYNC)
        oflags |= O_DIRECT;
    if (cache == QIMG_CACHE_WRITETHROUGH || cache == QIMG_CACHE_DIRECTSYNC)
        oflags |= O_DSYNC;
    s->unsafe = cache == QIMG_CACHE_UNSAFE;
    s->direct = (oflags & O_DIRECT) != 0;
    /* A file an image names (untrusted-image policy) is opened without
     * blocking, so that a FIFO swapped in after the check cannot hang us,
     * and never becomes our terminal. */
    if (flags & QIMG_OPEN_ROLE_MASK)
        oflags |= O_NONBLOCK | O_NOCTTY;
    else if (device)
        oflags |= O_NONBLOCK;
    s->fd = open(filename, oflags | O_CLOEXEC);
    if (s->fd < 0) {
        ret = -errno;
        qimg_error_set(err, ret, "Could not open '%s': %s", filename,
                       strerror(errno));
        goto fail;
    }
    if (fstat(s->fd, &stb) == 0) {
        bool dev = S_ISBLK(stb.st_mode) || S_ISCHR(stb.st_mode);
        st->has_id = true;
        st->id_dev = (uint64_t)stb.st_dev;
        st->id_ino = (uint64_t)stb.st_ino;
        if (S_ISBLK(stb.st_mode))
            st->caps |= QIMG_STORAGE_IS_BLOCKDEV;
        if (device && !dev) {
            ret = qimg_error_set(err, -EINVAL, "'%s' driver requires '%s' to "
                                 "be either a character or block device",
                                 st->ops->name, filename);
            goto fail;
        }
        if (!device && !S_ISREG(stb.st_mode) && !dev) {
            ret = qimg_error_set(err, -EINVAL, "'file' driver requires '%s' "
                                 "to be a regular file", filename);
            goto fail;
        }
    }
    if (oflags & O_NONBLOCK) {
        /* O_NONBLOCK was only for opening (an empty drive, a FIFO). */
        int fl = fcntl(s->fd, F_GETFL);
        if (fl >= 0)
            fcntl(s->fd, F_SETFL, fl & ~O_NONBLOCK);
    }
    if (locking && !strcmp(locking, "off"))
        flags |= QIMG_OPEN_NO_LOCK;
    flags_to_perm(flags, &perm, &unshared);
    ret = apply_locks(s->fd, filename, perm, unshared, err);
    if (ret < 0)
        goto fail;
    s->locked = perm || unshared;
    s->no_lock = (flags & QIMG_OPEN_NO_LOCK) != 0;
    st->caps |= QIMG_STORAGE_CAN_ZERO | QIMG_STORAGE_CAN_DISCARD;
    s->align = s->direct ? probe_direct_alignment(s->fd) : 1;
    st->align = s->align;
    st->priv = s;
    return 0;
fail:
    if (s->fd >= 0)
        close(s->fd);
    pthread_mutex_destroy(&s->rmw);
    pthread_mutex_destroy(&s->bsc_lock);
    free(s);
    return ret;
}

static int file_open(struct qimg_storage *st, const struct qimg_opts *opts,
                     unsigned flags, enum qimg_cache cache,
                     struct qimg_error *err)
{
    return open_common(st, opts, flags, cache, false, err);
}

static int hdev_open(struct qimg_storage *st, const struct qimg_opts *opts,
                     unsigned flags, enum qimg_cache cache,
                     struct qimg_error *err)
{
    return open_common(st, opts, flags, cache, true, err);
}

/*
 * "PROTO:name" -> filename "name"; a name that would then look like it
 * has a protocol of its own gets "./" in front, as QEMU does it.
 */
static int strip_prefix(const char *filename, const char *prefix,
                        struct qimg_opts *opts)
{
    size_t l = strlen(prefix);
    char *fat;
    int ret;

    if (strncmp(filename, prefix, l) || filename[l] != ':')
        return 0;
    filename += l + 1;
    if (!qimg_path_has_protocol(filename))
        return qimg_opts_set(opts, "filename", filename);
    fat = malloc(strlen(filename) + 3);
    if (!fat)
        return -ENOMEM;
    strcpy(fat, "./");
    strcat(fat, filename);
    ret = qimg_opts_set(opts, "filename", fat);
    free(fat);
    return ret;
}

static int file_parse_filename(const char *filename, struct qimg_opts *opts,
                               struct qimg_error *err)
{
    if (strip_prefix(filename, "file", opts) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static int hdev_parse_filename(const char *filename, struct qimg_opts *opts,
                               struct qimg_error *err)
{
    if (strip_prefix(filename, "host_device", opts) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static int cdrom_parse_filename(const char *filename, struct qimg_opts *opts,
                                struct qimg_error *err)
{
    if (strip_prefix(filename, "host_cdrom", opts) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

const struct qimg_storage_ops *qimg_host_device_for(const char *filename)
{
    struct stat stb;

    /* As QEMU's probes: /dev/cdrom* is a CD-ROM by name; other block or
     * character devices are host devices. */
    if (!strncmp(filename, "/dev/cdrom", 10))
        return &qimg_storage_host_cdrom;
    if (stat(filename, &stb) == 0 &&
        (S_ISCHR(stb.st_mode) || S_ISBLK(stb.st_mode)))
        return &qimg_storage_host_device;
    return NULL;
}

static void file_close(struct qimg_storage *st)
{
    struct file_state *s = st->priv;
    if (!s)
        return;
    if (s->locked)
        unlock_all(s->fd);
    close(s->fd);
    pthread_mutex_destroy(&s->rmw);
    pthread_mutex_destroy(&s->bsc_lock);
    free(s);
}

static int io_error(struct qimg_error *err, int e, const char *what)
{
    return qimg_error_set(err, -e, "%s failed: %s", what, strerror(e));
}

/* Aligned full-length read; zero-fills past EOF. */
static int raw_pread(int fd, uint64_t off, size_t len, void *buf,
                     struct qimg_error *err)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(err, errno, "Read");
        }
        if (n == 0) {
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int raw_pwrite(int fd, uint64_t off, size_t len, const void *buf,
                      struct qimg_error *err)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(err, errno, "Write");
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static bool is_aligned(const struct file_state *s, uint64_t off, size_t len,
                       const void *buf)
{
    return !((off | len) & (s->align - 1)) &&
           !((uintptr_t)buf & (DIRECT_ALIGN - 1));
}

/*
 * The smallest request size O_DIRECT accepts here, found by trying reads
 * as QEMU does (512 on most disks, 4096 on some), so that unaligned
 * requests round no further than needed (a file's size stays as QEMU
 * leaves it).
 */
static uint32_t probe_direct_alignment(int fd)
{
    void *buf;
    uint32_t align = DIRECT_ALIGN;
    if (posix_memalign(&buf, DIRECT_ALIGN, DIRECT_ALIGN))
        return DIRECT_ALIGN;
    for (uint32_t a = 512; a <= DIRECT_ALIGN; a *= 2) {
        if (pread(fd, buf, a, 0) >= 0) {
            align = a;
            break;
        }
    }
    free(buf);
    return align;
}

/* Bounce an unaligned O_DIRECT request through an aligned buffer. */
static int bounce(struct file_state *s, uint64_t off, size_t len, void *rbuf,
                  const void *wbuf, struct qimg_error *err)
{
    uint64_t start = qimg_align_down(off, s->align), end;
    size_t blen;
    void *b;
    int ret;

    if (!qimg_align_up(off + len, s->align, &end))
        return qimg_error_set(err, -EINVAL, "Request out of range");
    blen = (size_t)(end - start);
    if (posix_memalign(&b, DIRECT_ALIGN, blen))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (wbuf)
        pthread_mutex_lock(&s->rmw);
    ret = raw_pread(s->fd, start, blen, b, err);
    if (!ret && rbuf)
        memcpy(rbuf, (uint8_t *)b + (off - start), len);
    if (!ret && wbuf) {
        memcpy((uint8_t *)b + (off - start), wbuf, len);
        ret = raw_pwrite(s->fd, start, blen, b, err);
    }
    if (wbuf)
        pthread_mutex_unlock(&s->rmw);
    free(b);
    return ret;
}

/* Requests ending past QIMG_MAX_LENGTH fail as in QEMU's block layer. */
static int check_range(uint64_t off, size_t len, struct qimg_error *err)
{
    if (off > QIMG_MAX_LENGTH || len > QIMG_MAX_LENGTH - off)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return 0;
}

static int file_pread(struct qimg_storage *st, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct file_state *s = st->priv;
    if (check_range(off, len, err) < 0)
        return -EIO;
    if (s->direct && !is_aligned(s, off, len, buf))
        return bounce(s, off, len, buf, NULL, err);
    return raw_pread(s->fd, off, len, buf, err);
}

static int file_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    struct file_state *s = st->priv;
    int ret;
    if (check_range(off, len, err) < 0)
        return -EIO;
    if (s->direct && !is_aligned(s, off, len, buf))
        ret = bounce(s, off, len, NULL, buf, err);
    else
        ret = raw_pwrite(s->fd, off, len, buf, err);
    bsc_changed(s, off, len);
    return ret;
}

static int file_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct file_state *s = st->priv;
    if (s->unsafe)
        return 0;
    if (fdatasync(s->fd) < 0)
        return io_error(err, errno, "Flush");
    return 0;
}

static int64_t file_get_size(struct qimg_storage *st)
{
    struct file_state *s = st->priv;
    off_t end;

    if (st->caps & QIMG_STORAGE_IS_BLOCKDEV) {
        uint64_t bytes;
        if (ioctl(s->fd, BLKGETSIZE64, &bytes) == 0)
            return (int64_t)bytes;
    }
    end = lseek(s->fd, 0, SEEK_END);
    return end < 0 ? -errno : (int64_t)end;
}

static int64_t file_allocated_size(struct qimg_storage *st)
{
    struct file_state *s = st->priv;
    struct stat stb;
    if (fstat(s->fd, &stb) < 0)
        return -errno;
    return (int64_t)stb.st_blocks * 512;
}

/*
 * A file grown from empty gets its first block written, as QEMU does: some
 * filesystems (XFS) only report their O_DIRECT alignment for allocated
 * blocks, and `disk size` then matches QEMU's.
 */
static int allocate_first_block(int fd, uint64_t size, struct qimg_error *err)
{
    static const uint8_t zero[4096];
    return raw_pwrite(fd, 0, (size_t)QIMG_MIN(size, sizeof(zero)), zero, err);
}

/*
 * Linux 6.17's fallocate mode that allocates the range as written, zeroed
 * blocks: exactly what writing zeroes leaves (same blocks, reported as
 * data), without the copies.  Older headers lack it; older kernels and
 * filesystems without it (tmpfs, ext4 on a disk without unmapping write
 * zeroes) fail with EOPNOTSUPP and we write the zeroes.
 */
#ifndef FALLOC_FL_WRITE_ZEROES
#define FALLOC_FL_WRITE_ZEROES 0x80
#endif

/*
 * The source of preallocation writes: never written, so every page of it
 * is the kernel's shared zero page (16 faults instead of one per page of a
 * bigger buffer, and a source that stays in the CPU cache); one request
 * of ZERO_WRITE_IOVS iovecs writes ZERO_WRITE_BYTES.
 */
#define ZERO_SOURCE_BYTES (64u << 10)
#define ZERO_WRITE_IOVS 16u      /* 1 MiB per pwritev: the fastest size */
#define ZERO_WRITE_BYTES ((uint64_t)ZERO_SOURCE_BYTES * ZERO_WRITE_IOVS)
static _Alignas(4096) const uint8_t zero_source[ZERO_SOURCE_BYTES];

static int write_zeroes(int fd, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    struct iovec iov[ZERO_WRITE_IOVS];

    for (unsigned i = 0; i < ZERO_WRITE_IOVS; i++)
        iov[i] = (struct iovec){(void *)zero_source, ZERO_SOURCE_BYTES};
    while (len) {
        uint64_t n = QIMG_MIN(len, ZERO_WRITE_BYTES);
        unsigned cnt = (unsigned)((n + ZERO_SOURCE_BYTES - 1) /
                                  ZERO_SOURCE_BYTES);
        ssize_t w;

        iov[cnt - 1].iov_len = (size_t)(n - (uint64_t)(cnt - 1) *
                                        ZERO_SOURCE_BYTES);
        w = pwritev(fd, iov, (int)cnt, (off_t)off);
        iov[cnt - 1].iov_len = ZERO_SOURCE_BYTES;
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int ret = w < 0 ? -errno : -EIO;
            return qimg_error_set(err, ret, "Could not write zeros for "
                                  "preallocation: %s", strerror(-ret));
        }
        off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

/* preallocation=full: real zeroes over [off, off+len), then sync. */
static int write_zeroes_synced(int fd, uint64_t off, uint64_t len,
                               struct qimg_error *err)
{
    int ret = 0;

    if (fallocate(fd, FALLOC_FL_WRITE_ZEROES, (off_t)off, (off_t)len) < 0)
        ret = write_zeroes(fd, off, len, err);
    if (!ret && fsync(fd) < 0) {
        ret = -errno;
        qimg_error_set(err, ret, "Could not flush file to disk: %s",
                       strerror(-ret));
    }
    return ret;
}

/* Grow with preallocation; on failure the old length is restored. */
static int grow_preallocated(int fd, uint64_t cur, uint64_t size,
                             enum qimg_prealloc prealloc,
                             struct qimg_error *err)
{
    int ret;

    if (prealloc == QIMG_PREALLOC_FALLOC) {
        ret = -posix_fallocate(fd, (off_t)cur, (off_t)(size - cur));
        if (ret)
            qimg_error_set(err, ret, "Could not preallocate new data: %s",
                           strerror(-ret));
    } else if (ftruncate(fd, (off_t)size) < 0) {
        /* full: set the final size first so the filesystem can plan. */
        ret = -errno;
        qimg_error_set(err, ret, "Could not resize file: %s", strerror(-ret));
    } else {
        ret = write_zeroes_synced(fd, cur, size - cur, err);
    }
    if (ret < 0 && ftruncate(fd, (off_t)cur) < 0)
        qimg_error_prefix(err, "Failed to restore old file length: %s; ",
                          strerror(errno));
    return ret;
}

/*
 * Device files keep their size: shrinking is a no-op, growing and
 * preallocating fail (with QEMU's messages).
 */
static int truncate_device(int fd, uint64_t size, enum qimg_prealloc prealloc,
                           bool exact, struct qimg_error *err)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};
    uint64_t bytes;
    off_t end;

    if (prealloc != QIMG_PREALLOC_OFF)
        return qimg_error_set(err, -ENOTSUP, "Preallocation mode '%s' "
                              "unsupported for this non-regular file",
                              names[prealloc]);
    /* character devices (/dev/null) have the length lseek gives them */
    if (ioctl(fd, BLKGETSIZE64, &bytes) < 0) {
        end = lseek(fd, 0, SEEK_END);
        if (end < 0)
            return 0;
        bytes = (uint64_t)end;
    }
    if (exact && size != bytes)   /* resize asks for the size exactly */
        return qimg_error_set(err, -ENOTSUP, "Cannot resize device files");
    if (size > bytes)
        return qimg_error_set(err, -EINVAL, "Cannot grow device files");
    return 0;
}

/* Truncate as a regular file, whatever fd is (creation does, as QEMU's). */
static int truncate_regular(int fd, uint64_t cur, uint64_t size,
                            enum qimg_prealloc prealloc,
                            struct qimg_error *err)
{
    int ret;

    if (prealloc == QIMG_PREALLOC_METADATA)
        prealloc = QIMG_PREALLOC_OFF;
    if (prealloc != QIMG_PREALLOC_OFF && cur > size)
        return qimg_error_set(err, -ENOTSUP, "Cannot use preallocation for "
                              "shrinking files");
    if (prealloc != QIMG_PREALLOC_OFF && size > cur)
        return grow_preallocated(fd, cur, size, prealloc, err);
    if (ftruncate(fd, (off_t)size) < 0) {
        ret = -errno;
        return qimg_error_set(err, ret, "Could not resize file: %s",
                              strerror(-ret));
    }
    if (cur == 0 && size > 0)
        return allocate_first_block(fd, size, err);
    return 0;
}

static int do_truncate(int fd, uint64_t size, enum qimg_prealloc prealloc,
                       bool device_ok, bool exact, struct qimg_error *err)
{
    struct stat stb;

    if (fstat(fd, &stb) < 0)
        return io_error(err, errno, "fstat");
    if (device_ok && (S_ISBLK(stb.st_mode) || S_ISCHR(stb.st_mode)))
        return truncate_device(fd, size, prealloc, exact, err);
    return truncate_regular(fd, (uint64_t)stb.st_size, size, prealloc, err);
}

static int file_truncate(struct qimg_storage *st, uint64_t size,
                         enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct file_state *s = st->priv;
    int ret = do_truncate(s->fd, size, prealloc, true, false, err);
    bsc_changed(s, 0, UINT64_MAX);
    return ret;
}

static int file_truncate_exact(struct qimg_storage *st, uint64_t size,
                               enum qimg_prealloc prealloc,
                               struct qimg_error *err)
{
    struct file_state *s = st->priv;
    int ret = do_truncate(s->fd, size, prealloc, true, true, err);
    bsc_changed(s, 0, UINT64_MAX);
    return ret;
}

static int zero_range(struct qimg_storage *st, uint64_t off, uint64_t len,
                      unsigned flags, struct qimg_error *err)
{
    struct file_state *s = st->priv;
    int mode = (flags & QIMG_ZERO_MAY_UNMAP)
                   ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                   : FALLOC_FL_ZERO_RANGE;
    int64_t size = file_get_size(st);

    if (st->caps & QIMG_STORAGE_IS_BLOCKDEV)
        return qimg_error_set(err, -ENOTSUP, "Zeroing not supported");
    /* Past EOF a file already reads as zero; extend with a hole when the
     * caller allows unmapping (QEMU allocates zeroed space otherwise). */
    if ((flags & QIMG_ZERO_MAY_UNMAP) && size >= 0 && off >= (uint64_t)size) {
        if (ftruncate(s->fd, (off_t)(off + len)) < 0)
            return io_error(err, errno, "Zero");
        return 0;
    }
    if (fallocate(s->fd, mode, (off_t)off, (off_t)len) == 0)
        return 0;
    if (mode != FALLOC_FL_ZERO_RANGE &&
        fallocate(s->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0)
        return 0;
    return qimg_error_set(err, -ENOTSUP, "Zeroing not supported");
}

static int file_pwrite_zeroes(struct qimg_storage *st, uint64_t off,
                              uint64_t len, unsigned flags,
                              struct qimg_error *err)
{
    int ret = zero_range(st, off, len, flags, err);
    bsc_changed(st->priv, 0, UINT64_MAX);   /* data may now be a hole */
    return ret;
}

static int file_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    struct file_state *s = st->priv;
    int ret = 0;
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) < 0 && errno != EOPNOTSUPP)
        ret = io_error(err, errno, "Discard");
    bsc_changed(s, 0, UINT64_MAX);
    return ret;
}

static int file_block_status(struct qimg_storage *st, uint64_t off,
                             uint64_t len, struct qimg_extent *ext,
                             struct qimg_error *err)
{
    struct file_state *s = st->priv;
    bool is_data;
    uint64_t gen, end = bsc_lookup(s, off, &is_data);
    off_t data, hole;

    ext->host_offset = off;
    ext->host_file = st->filename;
    if (end)
        goto data_to_end;
    gen = bsc_snapshot(s);
    data = is_data ? (off_t)off : lseek(s->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {       /* a hole up to EOF (or past it) */
            ext->flags = QIMG_BS_ZERO | QIMG_BS_OFFSET_VALID;
            ext->length = len;
            return 0;
        }
        ext->flags = QIMG_BS_DATA | QIMG_BS_OFFSET_VALID;
        ext->length = len;
        return 0;
    }
    if ((uint64_t)data > off) {
        bsc_store_next_data(s, gen, (uint64_t)data);
        ext->flags = QIMG_BS_ZERO | QIMG_BS_OFFSET_VALID;
        ext->length = QIMG_MIN(len, (uint64_t)data - off);
        return 0;
    }
    hole = lseek(s->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        end = off + len;
    } else {
        end = (uint64_t)hole;
        bsc_store(s, gen, off, end);
    }
data_to_end:
    ext->flags = QIMG_BS_DATA | QIMG_BS_OFFSET_VALID;
    ext->length = end - off;
    /* With O_DIRECT no partial sector is reported: a data extent ending
     * in the file's last partial sector covers that sector whole. */
    if (s->align > 1 && ext->length % s->align) {
        uint64_t up;
        if (qimg_align_up(ext->length, s->align, &up))
            ext->length = up;
    }
    ext->length = QIMG_MIN(len, ext->length);
    return 0;
}

static int file_create(const char *filename, const struct qimg_opts *opts,
                       struct qimg_error *err)
{
    enum qimg_prealloc prealloc = QIMG_PREALLOC_OFF;
    const char *pa = qimg_opts_get(opts, "preallocation");
    uint64_t size = 0, hint = 0;
    bool nocow = false;
    int fd, ret;

    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret < 0)
        return ret;
    /* Files are created in whole sectors, as QEMU does. */
    if (!qimg_align_up(size, 512, &size))
        return qimg_error_set(err, -EFBIG, "File too large");
    ret = qimg_opts_get_bool(opts, "nocow", false, &nocow, err);
    if (ret < 0)
        return ret;
    if (pa && qimg_prealloc_parse(pa, &prealloc) < 0)
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", pa);
    /* QEMU's hint is a 32-bit value (FS_IOC_FSSETXATTR), checked first */
    ret = qimg_opts_get_size(opts, "extent_size_hint", 0, &hint, err);
    if (ret < 0)
        return ret;
    if (hint > UINT32_MAX)
        return qimg_error_set(err, -EINVAL, "Extent size hint is too large");
    fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return qimg_error_set(err, -errno, "Could not create '%s': %s",
                              filename, strerror(errno));
    /* Creation holds write and resize and refuses to share resize. */
    ret = apply_locks(fd, filename, PERM_WRITE | PERM_RESIZE, PERM_RESIZE, err);
    if (ret < 0)
        goto out;
    /* QEMU checks the mode only after creating the file. */
    if (prealloc == QIMG_PREALLOC_METADATA) {
        ret = qimg_error_set(err, -ENOTSUP, "Unsupported preallocation mode: "
                             "metadata");
        unlock_all(fd);
        goto out;
    }
    if (nocow) {
        int attr;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    ret = do_truncate(fd, 0, QIMG_PREALLOC_OFF, false, false, err);
    if (!ret)
        ret = do_truncate(fd, size, prealloc, false, false, err);
    unlock_all(fd);
out:
    close(fd);
    return ret;
}

static int file_set_perm(struct qimg_storage *st, unsigned flags,
                         struct qimg_error *err)
{
    struct file_state *s = st->priv;
    unsigned perm, unshared;
    if (s->no_lock)
        flags |= QIMG_OPEN_NO_LOCK;
    flags_to_perm(flags, &perm, &unshared);
    unlock_all(s->fd);
    s->locked = perm || unshared;
    return apply_locks(s->fd, st->filename, perm, unshared, err);
}

static const struct qimg_opt_desc file_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"nocow", QIMG_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)",
     NULL},
    {"preallocation", QIMG_OPT_STRING,
     "Preallocation mode (allowed values: off, falloc, full)", NULL},
    {"extent_size_hint", QIMG_OPT_SIZE,
     "Extent size hint for the image file, 0 to disable", NULL},
};

static int file_remove(const char *filename, struct qimg_error *err)
{
    if (unlink(filename) < 0)
        return qimg_error_set(err, -errno, "Could not delete '%s': %s",
                              filename, strerror(errno));
    return 0;
}

/* QEMU's file-posix runtime options: the ones we act on (locking) and
 * the ones that change nothing here (aio modes, cache dropping). */
static const char *const file_runtime_opts[] = {
    "aio", "aio-max-batch", "locking", "pr-manager", "drop-cache",
    "x-check-cache-dropped", NULL,
};

/* Devices are "created" by opening them (QEMU's simple creation): only
 * a size and no preallocation. */
static const struct qimg_opt_desc device_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"preallocation", QIMG_OPT_STRING,
     "Preallocation mode (allowed values: off)", NULL},
};

#define FILE_OPS                                                               \
    .runtime_opts = file_runtime_opts, .needs_filename = true,                \
    .close = file_close, .pread = file_pread, .pwrite = file_pwrite,           \
    .flush = file_flush, .get_size = file_get_size,                            \
    .truncate = file_truncate, .truncate_exact = file_truncate_exact,          \
    .pwrite_zeroes = file_pwrite_zeroes,                                       \
    .discard = file_discard, .block_status = file_block_status,                \
    .allocated_size = file_allocated_size, .set_perm = file_set_perm

const struct qimg_storage_ops qimg_storage_file = {
    .name = "file",
    .protocol = "file",
    .parse_filename = file_parse_filename,
    .open = file_open,
    .create = file_create,
    .remove = file_remove,
    .create_opts = file_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(file_create_opts),
    FILE_OPS,
};

const struct qimg_storage_ops qimg_storage_host_device = {
    .name = "host_device",
    .protocol = "host_device",
    .parse_filename = hdev_parse_filename,
    .open = hdev_open,
    .create_by_open = true,
    .create_opts = device_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(device_create_opts),
    FILE_OPS,
};

const struct qimg_storage_ops qimg_storage_host_cdrom = {
    .name = "host_cdrom",
    .protocol = "host_cdrom",
    .parse_filename = cdrom_parse_filename,
    .open = hdev_open,
    .create_by_open = true,
    .create_opts = device_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(device_create_opts),
    FILE_OPS,
};
