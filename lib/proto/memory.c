/*
 * memory.c - the "memory" storage: images held in process memory, for fuzz
 * targets and unit tests (no file system, no locks, deterministic).
 *
 * Buffers are registered by name (qimg_mem_register).  qimg_storage_for()
 * picks this storage for a registered name, and for every name once
 * exclusive mode is on; in exclusive mode an unregistered name fails to
 * open with ENOENT, so a hostile image naming a backing or data file can
 * never reach the file system.  `create` registers (or empties) the name.
 *
 * Each buffer is reference counted: the registry holds one reference and
 * every open storage one, so unregistering an open buffer is safe.  A
 * buffer's mutex serialises its I/O (reads may race with growth).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

struct mem_buf {
    uint64_t id;            /* unique per registration, never 0 */
    char *name;
    uint8_t *data;
    size_t len;
    size_t cap;             /* allocated bytes (grows geometrically) */
    unsigned refs;
    pthread_mutex_t lock;
    struct mem_buf *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mem_buf *registry;
static bool exclusive;
static uint64_t last_id;

static struct mem_buf *find_locked(const char *name)
{
    for (struct mem_buf *b = registry; b; b = b->next)
        if (!strcmp(b->name, name))
            return b;
    return NULL;
}

static void buf_unref(struct mem_buf *b)
{
    bool last;

    pthread_mutex_lock(&registry_lock);
    last = --b->refs == 0;
    pthread_mutex_unlock(&registry_lock);
    if (!last)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b->data);
    free(b->name);
    free(b);
}

/* Remove name from the registry (the caller holds registry_lock); returns
 * the registry's reference for the caller to drop after unlocking. */
static struct mem_buf *unlink_locked(const char *name)
{
    for (struct mem_buf **p = &registry; *p; p = &(*p)->next) {
        if (!strcmp((*p)->name, name)) {
            struct mem_buf *b = *p;
            *p = b->next;
            return b;
        }
    }
    return NULL;
}

int qimg_mem_register(const char *name, const void *data, size_t len)
{
    struct mem_buf *b, *old;

    if (len > QIMG_MEM_MAX_SIZE)
        return -EFBIG;
    b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->name = strdup(name);
    /* An exact-size copy, so that sanitizers catch reads past the end. */
    b->data = malloc(len ? len : 1);
    if (!b->name || !b->data) {
        free(b->name);
        free(b->data);
        free(b);
        return -ENOMEM;
    }
    if (len)
        memcpy(b->data, data, len);
    b->len = len;
    b->cap = len;
    b->refs = 1;
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_lock(&registry_lock);
    b->id = ++last_id;
    old = unlink_locked(name);
    b->next = registry;
    registry = b;
    pthread_mutex_unlock(&registry_lock);
    if (old)
        buf_unref(old);
    return 0;
}

int qimg_mem_unregister(const char *name)
{
    struct mem_buf *b;

    pthread_mutex_lock(&registry_lock);
    b = unlink_locked(name);
    pthread_mutex_unlock(&registry_lock);
    if (!b)
        return -ENOENT;
    buf_unref(b);
    return 0;
}

/* Largest size writes may grow a buffer to (qimg_mem_set_max_size). */
static _Atomic uint64_t max_size = QIMG_MEM_MAX_SIZE;

void qimg_mem_set_max_size(uint64_t bytes)
{
    max_size = bytes < QIMG_MEM_MAX_SIZE ? bytes : QIMG_MEM_MAX_SIZE;
}

void qimg_mem_set_exclusive(bool on)
{
    pthread_mutex_lock(&registry_lock);
    exclusive = on;
    pthread_mutex_unlock(&registry_lock);
}

bool qimg_mem_claims(const char *filename)
{
    bool claimed;

    pthread_mutex_lock(&registry_lock);
    claimed = exclusive || find_locked(filename);
    pthread_mutex_unlock(&registry_lock);
    return claimed;
}

uint64_t qimg_mem_id(const char *name)
{
    struct mem_buf *b;
    uint64_t id;

    pthread_mutex_lock(&registry_lock);
    b = find_locked(name);
    id = b ? b->id : 0;
    pthread_mutex_unlock(&registry_lock);
    return id;
}

int qimg_mem_get(const char *name, void **data, size_t *len)
{
    struct mem_buf *b;
    int ret = 0;

    pthread_mutex_lock(&registry_lock);
    b = find_locked(name);
    if (!b) {
        ret = -ENOENT;
    } else {
        pthread_mutex_lock(&b->lock);
        *data = malloc(b->len ? b->len : 1);
        if (!*data)
            ret = -ENOMEM;
        else if (b->len)
            memcpy(*data, b->data, b->len);
        *len = b->len;
        pthread_mutex_unlock(&b->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    return ret;
}

/* ---- storage operations -------------------------------------------------- */

static int mem_open(struct qimg_storage *st, const struct qimg_opts *opts,
                    unsigned flags, enum qimg_cache cache,
                    struct qimg_error *err)
{
    const char *filename = st->filename;
    struct mem_buf *b;

    pthread_mutex_lock(&registry_lock);
    b = find_locked(filename);
    if (b)
        b->refs++;
    pthread_mutex_unlock(&registry_lock);
    if (!b)
        return qimg_error_set(err, -ENOENT, "Could not open '%s': %s",
                              filename, strerror(ENOENT));
    st->priv = b;
    st->caps |= QIMG_STORAGE_CAN_ZERO | QIMG_STORAGE_CAN_DISCARD;
    return 0;
}

static void mem_close(struct qimg_storage *st)
{
    if (st->priv)
        buf_unref(st->priv);
}

static int mem_pread(struct qimg_storage *st, uint64_t off, size_t len,
                     void *buf, struct qimg_error *err)
{
    struct mem_buf *b = st->priv;
    size_t n = 0;

    pthread_mutex_lock(&b->lock);
    if (off < b->len) {
        n = QIMG_MIN(len, b->len - (size_t)off);
        memcpy(buf, b->data + off, n);
    }
    pthread_mutex_unlock(&b->lock);
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

/* Grow (zero filled) or shrink; the caller holds b->lock.  The buffer
 * grows by at least half its size, so that a file written front to back
 * in small pieces is not copied again at every piece. */
static int resize_locked(struct mem_buf *b, uint64_t size,
                         struct qimg_error *err)
{
    uint8_t *p;

    if (size > max_size)
        return qimg_error_set(err, -EFBIG, "File too large");
    if (size > b->cap || size < b->cap / 4) {
        size_t cap = size > b->cap ? (size_t)QIMG_MIN(QIMG_MAX(size, b->cap +
                                                               b->cap / 2),
                                                      QIMG_MEM_MAX_SIZE)
                                   : (size_t)size;
        p = realloc(b->data, cap ? cap : 1);
        if (!p)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        b->data = p;
        b->cap = cap;
    }
    if (size > b->len)
        memset(b->data + b->len, 0, size - b->len);
    b->len = size;
    return 0;
}

static int mem_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                      const void *buf, struct qimg_error *err)
{
    struct mem_buf *b = st->priv;
    uint64_t end;
    int ret = 0;

    if (st->read_only)
        return qimg_error_set(err, -EBADF, "Bad file descriptor");
    if (qimg_add_overflow(off, len, &end))
        return qimg_error_set(err, -EFBIG, "File too large");
    pthread_mutex_lock(&b->lock);
    if (end > b->len)
        ret = resize_locked(b, end, err);
    if (!ret)
        memcpy(b->data + off, buf, len);
    pthread_mutex_unlock(&b->lock);
    return ret;
}

static int mem_flush(struct qimg_storage *st, struct qimg_error *err)
{
    return 0;
}

static int64_t mem_get_size(struct qimg_storage *st)
{
    struct mem_buf *b = st->priv;
    int64_t len;

    pthread_mutex_lock(&b->lock);
    len = (int64_t)b->len;
    pthread_mutex_unlock(&b->lock);
    return len;
}

/* Memory is always fully allocated: every preallocation mode is the same. */
static int mem_truncate(struct qimg_storage *st, uint64_t size,
                        enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct mem_buf *b = st->priv;
    int ret;

    if (st->read_only)
        return qimg_error_set(err, -EBADF, "Bad file descriptor");
    pthread_mutex_lock(&b->lock);
    ret = resize_locked(b, size, err);
    pthread_mutex_unlock(&b->lock);
    return ret;
}

static int mem_pwrite_zeroes(struct qimg_storage *st, uint64_t off,
                             uint64_t len, unsigned flags,
                             struct qimg_error *err)
{
    struct mem_buf *b = st->priv;
    uint64_t end;
    int ret = 0;

    if (st->read_only)
        return qimg_error_set(err, -EBADF, "Bad file descriptor");
    if (qimg_add_overflow(off, len, &end))
        return qimg_error_set(err, -EFBIG, "File too large");
    pthread_mutex_lock(&b->lock);
    if (end > b->len)
        ret = resize_locked(b, end, err);
    if (!ret)
        memset(b->data + off, 0, len);
    pthread_mutex_unlock(&b->lock);
    return ret;
}

/* Discarded bytes read as zero, as on a file with punched holes. */
static int mem_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                       struct qimg_error *err)
{
    struct mem_buf *b = st->priv;

    if (st->read_only)
        return qimg_error_set(err, -EBADF, "Bad file descriptor");
    pthread_mutex_lock(&b->lock);
    if (off < b->len)
        memset(b->data + off, 0, QIMG_MIN(len, b->len - off));
    pthread_mutex_unlock(&b->lock);
    return 0;
}

static int64_t mem_allocated_size(struct qimg_storage *st)
{
    return mem_get_size(st);
}

static int mem_create(const char *filename, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    uint64_t size;
    void *zero;
    int ret;

    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret < 0)
        return ret;
    if (size > QIMG_MEM_MAX_SIZE)
        return qimg_error_set(err, -EFBIG, "File too large");
    zero = calloc(1, size ? size : 1);
    if (!zero)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_mem_register(filename, zero, size);
    free(zero);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not create '%s': %s", filename,
                              strerror(-ret));
    return 0;
}

static int mem_set_perm(struct qimg_storage *st, unsigned flags,
                        struct qimg_error *err)
{
    st->read_only = !(flags & QIMG_OPEN_RDWR);
    return 0;
}

static const struct qimg_opt_desc mem_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
};

static int mem_remove(const char *filename, struct qimg_error *err)
{
    (void)err;
    qimg_mem_unregister(filename);
    return 0;
}

const struct qimg_storage_ops qimg_storage_memory = {
    .name = "memory",
    .needs_filename = true,
    .create_opts = mem_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(mem_create_opts),
    .open = mem_open,
    .close = mem_close,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .get_size = mem_get_size,
    .truncate = mem_truncate,
    .pwrite_zeroes = mem_pwrite_zeroes,
    .discard = mem_discard,
    .allocated_size = mem_allocated_size,
    .create = mem_create,
    .set_perm = mem_set_perm,
    .remove = mem_remove,
};
