/*
 * chain.c - operations on backing chains: finding an image in a chain as
 * qemu-img's "-b base" does, recording a new backing file, commit (copy an
 * overlay into its backing file as QEMU's commit job does) and rebase
 * (make an overlay independent of what changes in its backing chain).
 *
 * Both commit and rebase reproduce the allocation QEMU leaves behind, not
 * only the guest content, so that map and check agree with qemu-img's
 * results: commit copies in the granularity of QEMU's mirror job and
 * zeroes whole chunks only; rebase compares 512-byte sectors in 2 MiB
 * steps and writes only those that differ.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/block.h"
#include "core/policy.h"
#include "core/util.h"

/* ---- names ---------------------------------------------------------------- */

char *qimg_path_combine(const char *base, const char *name)
{
    const char *slash;
    size_t dl;
    char *out;

    if (name[0] == '/')
        return strdup(name);
    slash = strrchr(base, '/');
    dl = slash ? (size_t)(slash - base) + 1 : 0;
    out = malloc(dl + strlen(name) + 1);
    if (!out)
        return NULL;
    memcpy(out, base, dl);
    strcpy(out + dl, name);
    return out;
}

char *qimg_backing_full_name(const char *image, const char *backing)
{
    return qimg_path_has_protocol(backing) ? strdup(backing)
                                           : qimg_path_combine(image, backing);
}

/* "proto:..." with the colon before any slash, as QEMU tells protocols. */
static bool has_protocol(const char *path)
{
    const char *p = path + strcspn(path, ":/");
    return *p == ':';
}

/* Canonical path of name relative to the directory of overlay, or NULL. */
static char *real_relative(const char *overlay, const char *name)
{
    char *combined = qimg_path_combine(overlay, name), *real;

    if (!combined)
        return NULL;
    real = realpath(combined, NULL);
    free(combined);
    return real;
}

/* Whether name designates the backing file recorded in overlay cur. */
static bool names_backing(const struct qimg_image *cur, const char *name)
{
    char *a, *b;
    bool same;

    if (has_protocol(name) || has_protocol(cur->backing_name)) {
        /* Protocol names are compared as they are. */
        if (!strcmp(name, cur->backing_name))
            return true;
        a = qimg_path_combine(cur->filename, cur->backing_name);
        same = a && !strcmp(a, name);
        free(a);
        return same;
    }
    a = real_relative(cur->filename, name);
    b = a ? real_relative(cur->filename, cur->backing_name) : NULL;
    same = a && b && !strcmp(a, b);
    free(a);
    free(b);
    return same;
}

struct qimg_image *qimg_chain_find(struct qimg_image *top, const char *name)
{
    for (struct qimg_image *cur = top; cur && cur->backing; cur = cur->backing) {
        if (names_backing(cur, name))
            return cur->backing;
    }
    return NULL;
}

int qimg_change_backing(struct qimg_image *img, const char *backing,
                        const char *backing_fmt, struct qimg_error *err)
{
    if (!img->fmt->change_backing)
        return qimg_error_set(err, -ENOTSUP, "Operation not supported");
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    return img->fmt->change_backing(img, backing, backing_fmt, err);
}

/* ---- allocation through a chain ------------------------------------------ */

static bool allocated_here(const struct qimg_extent *e)
{
    return e->flags & (QIMG_BS_ALLOCATED | QIMG_BS_DATA | QIMG_BS_ZERO);
}

/* Status of off in img alone; *pnum 0 at or past its end. */
static int layer_status(struct qimg_image *img, uint64_t off, uint64_t bytes,
                        uint64_t *pnum, bool *alloc, struct qimg_error *err)
{
    struct qimg_extent e;
    int ret;

    *pnum = 0;
    *alloc = false;
    if (off >= img->size)
        return 0;
    ret = qimg_block_status(img, off, QIMG_MIN(bytes, img->size - off), &e, err);
    if (ret < 0)
        return ret;
    *pnum = e.length;
    *alloc = allocated_here(&e);
    return 0;
}

/*
 * QEMU's bdrv_is_allocated_above(top, base, include_base=false): 1 when a
 * layer from top down to (not including) base allocates off, *pnum bytes
 * alike.  Past the end of a short layer below top, the zeroes it reads as
 * count as allocated there; at or past top's own end *pnum is 0.
 */
static int allocated_above(struct qimg_image *top, struct qimg_image *base,
                           uint64_t off, uint64_t bytes, uint64_t *pnum,
                           struct qimg_error *err)
{
    bool alloc;
    int ret;

    if (top == base) {
        *pnum = bytes;
        return 0;
    }
    ret = layer_status(top, off, bytes, pnum, &alloc, err);
    if (ret < 0 || !*pnum || alloc)
        return ret < 0 ? ret : alloc;
    for (struct qimg_image *p = top->backing; p && p != base; p = p->backing) {
        bytes = *pnum;
        ret = layer_status(p, off, bytes, pnum, &alloc, err);
        if (ret < 0)
            return ret;
        if (!*pnum) {
            *pnum = bytes;
            return 1;
        }
        if (alloc)
            return 1;
    }
    return 0;
}

/* ---- commit ----------------------------------------------------------------- */

/* QEMU's mirror job: chunks of the target's cluster size within 4..64 KiB,
 * data copied in requests of at most 1 MiB, 16 MiB of chunks per pass. */
#define MIRROR_MIN_GRANULARITY 4096u
#define MIRROR_MAX_GRANULARITY 65536u
#define MIRROR_MAX_IO (1u << 20)
#define MIRROR_BUF_SIZE (16u << 20)
/* Rate limiting in slices of 100 ms, as QEMU's jobs account. */
#define RATE_SLICE_NS 100000000ull

struct commit_job {
    const struct qimg_commit_params *p;
    struct qimg_image *top, *base;
    uint64_t len, gran, target_cluster;
    uint8_t *dirty;             /* one byte per chunk */
    uint64_t nchunks;
    uint64_t total, done;       /* bytes, for progress */
    uint8_t *buf;
    uint64_t copied;            /* data bytes, for the rate limit */
    struct timespec start;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Reopen parent's backing image read-write (and its chain below). */
static int reopen_backing_rw(struct qimg_image *parent, struct qimg_error *err)
{
    struct qimg_image *old = parent->backing, *fresh = NULL;
    const char *fmt = old->probed_raw ? NULL : old->fmt->name;
    unsigned flags = (old->flags | QIMG_OPEN_RDWR) & ~QIMG_OPEN_SHARE;
    enum qimg_cache cache = old->cache;
    int depth = old->depth, ret;
    struct qimg_opts *opts = NULL;
    char *name;

    if (!old->read_only)
        return 0;
    name = strdup(old->filename);
    /* the same format options (key secrets, its own backing's) */
    if (old->options && (opts = qimg_opts_new()))
        for (size_t i = 0; i < qimg_opts_count(old->options); i++)
            if (strcmp(qimg_opts_key(old->options, i), "driver"))
                qimg_opts_set(opts, qimg_opts_key(old->options, i),
                              qimg_opts_value(old->options, i));
    if (!name || (old->options && !opts)) {
        free(name);
        qimg_opts_free(opts);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    /* Who the file was, for the untrusted-image policy: the reopen must
     * find the same one. */
    struct qimg_storage was = {.has_id = old->file && old->file->has_id};
    if (was.has_id) {
        was.id_dev = old->file->id_dev;
        was.id_ino = old->file->id_ino;
    }
    /* Close first: our own read locks must not stand in the way. */
    parent->backing = NULL;
    qimg_close(old);
    ret = qimg_image_open_node(&fresh, name, fmt, opts, flags, cache, depth,
                               err);
    free(name);
    qimg_opts_free(opts);
    if (ret < 0)
        return ret;
    ret = qimg_policy_check_same(&was, fresh->file, err);
    if (ret < 0) {
        qimg_close(fresh);
        return ret;
    }
    parent->backing = fresh;
    return 0;
}

static uint64_t image_cluster_size(struct qimg_image *img, bool *ext_l2)
{
    struct qimg_info info;
    struct qimg_error e;
    uint64_t cs = 0;

    if (ext_l2)
        *ext_l2 = false;
    if (qimg_get_info(img, &info, &e) == 0) {
        cs = info.cluster_size;
        if (ext_l2 && info.format_specific_json) {
            json_t *o = json_loads(info.format_specific_json, 0, NULL);
            json_t *v = json_object_get(json_object_get(o, "data"),
                                        "extended-l2");
            *ext_l2 = json_is_true(v);
            json_decref(o);
        }
    }
    qimg_info_release(&info);
    return cs;
}

/* Mark the chunks holding what top..base (excluded) allocate. */
static int commit_scan(struct commit_job *j, struct qimg_error *err)
{
    for (uint64_t off = 0; off < j->len;) {
        uint64_t n;
        int ret = allocated_above(j->top, j->base, off, j->len - off, &n, err);
        if (ret < 0)
            return ret;
        if (!n)
            n = QIMG_MIN(j->gran, j->len - off);
        if (ret) {
            for (uint64_t c = off / j->gran; c <= (off + n - 1) / j->gran; c++) {
                if (!j->dirty[c])
                    j->total += QIMG_MIN(j->gran, j->len - c * j->gran);
                j->dirty[c] = 1;
            }
        }
        off += n;
    }
    return 0;
}

static void commit_throttle(struct commit_job *j, uint64_t bytes)
{
    uint64_t rate = j->p->rate_limit, elapsed, due;

    if (!rate)
        return;
    j->copied += bytes;
    /* The first slice's worth goes at once; then keep to the rate. */
    uint64_t free_bytes = (uint64_t)((double)rate * RATE_SLICE_NS / 1e9);
    if (j->copied <= free_bytes)
        return;
    due = (uint64_t)((double)(j->copied - free_bytes) / (double)rate * 1e9);
    elapsed = now_ns() - ((uint64_t)j->start.tv_sec * 1000000000ull +
                          (uint64_t)j->start.tv_nsec);
    if (due > elapsed) {
        uint64_t wait = due - elapsed;
        struct timespec ts = {(time_t)(wait / 1000000000ull),
                              (long)(wait % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

enum mirror_method { MIRROR_COPY, MIRROR_ZERO, MIRROR_DISCARD };

static int commit_perform(struct commit_job *j, uint64_t off, uint64_t bytes,
                          enum mirror_method m, struct qimg_error *err)
{
    int ret;

    if (m == MIRROR_ZERO)
        return qimg_pwrite_zeroes(j->base, off, bytes, QIMG_ZERO_MAY_UNMAP, err);
    if (m == MIRROR_DISCARD)
        return qimg_discard(j->base, off, bytes, err);
    ret = qimg_pread(j->top, off, (size_t)bytes, j->buf, err);
    if (ret < 0)
        return ret;
    ret = qimg_pwrite(j->base, off, (size_t)bytes, j->buf, err);
    if (!ret)
        commit_throttle(j, bytes);
    return ret;
}

/* Whether [off, off+bytes) covers whole clusters of the target. */
static bool target_aligned(const struct commit_job *j, uint64_t off,
                           uint64_t bytes)
{
    uint64_t cs = j->target_cluster;
    return !cs || (off % cs == 0 && (off + bytes) % cs == 0);
}

/*
 * One pass over consecutive dirty chunks from chunk c (at most
 * MIRROR_BUF_SIZE): per extent of the whole chain's status, data is
 * copied, whole chunks that read as zero are zeroed; returns the chunk
 * after the pass.
 */
static int commit_pass(struct commit_job *j, uint64_t c, uint64_t *next,
                       struct qimg_error *err)
{
    uint64_t nb = 1, off = c * j->gran;
    int ret;

    while ((nb + 1) * j->gran <= MIRROR_BUF_SIZE && c + nb < j->nchunks &&
           j->dirty[c + nb])
        nb++;
    for (uint64_t k = 0; k < nb; k++)
        j->dirty[c + k] = 0;
    while (nb > 0 && off < j->len) {
        struct qimg_extent e;
        enum mirror_method m = MIRROR_COPY;
        uint64_t io;

        ret = qimg_block_status_chain(j->top, NULL, off,
                                      QIMG_MIN(nb * j->gran, j->len - off), &e,
                                      err);
        if (ret < 0)
            return ret;
        io = e.length;
        if (e.flags & QIMG_BS_DATA)
            io = QIMG_MIN(io, (uint64_t)MIRROR_MAX_IO);
        io -= io % j->gran;
        if (io < j->gran) {
            io = j->gran;
        } else if (!(e.flags & QIMG_BS_DATA) && target_aligned(j, off, io)) {
            m = (e.flags & QIMG_BS_ZERO) ? MIRROR_ZERO : MIRROR_DISCARD;
        }
        io = QIMG_MIN(io, j->len - off);
        ret = commit_perform(j, off, io, m, err);
        if (ret < 0)
            return ret;
        off += io;
        nb -= QIMG_MIN(nb, qimg_div_round_up(io, j->gran));
        j->done += io;
        if (j->p->progress && j->total)
            j->p->progress(j->p->opaque,
                           100.0 * (double)QIMG_MIN(j->done, j->total) /
                               (double)j->total);
    }
    *next = qimg_div_round_up(off, j->gran);
    return 0;
}

static int commit_run(struct commit_job *j, struct qimg_error *err)
{
    int ret = commit_scan(j, err);

    for (uint64_t c = 0; !ret && c < j->nchunks;) {
        if (!j->dirty[c]) {
            c++;
            continue;
        }
        ret = commit_pass(j, c, &c, err);
    }
    if (!ret)
        ret = qimg_flush(j->base, err);
    return ret;
}

/* Granularity of the job: the target's cluster size within 4..64 KiB. */
static uint64_t mirror_granularity(uint64_t cluster)
{
    if (!cluster)
        return MIRROR_MAX_GRANULARITY;
    return QIMG_MIN(QIMG_MAX(cluster, (uint64_t)MIRROR_MIN_GRANULARITY),
                    (uint64_t)MIRROR_MAX_GRANULARITY);
}

int qimg_commit(const struct qimg_commit_params *p, struct qimg_error *err)
{
    struct commit_job j = {.p = p, .top = p->top};
    struct qimg_image *parent = p->top;
    int ret;

    while (parent && parent->backing != p->base)
        parent = parent->backing;
    if (!parent || !p->base || p->base == p->top)
        return qimg_error_set(err, -EINVAL, "Base image is not in the backing "
                              "chain");
    ret = reopen_backing_rw(parent, err);
    if (ret < 0)
        return ret;
    j.base = parent->backing;
    j.len = j.top->size;
    if (j.base->size < j.len) {
        ret = qimg_truncate(j.base, j.len, false, QIMG_PREALLOC_OFF, err);
        if (ret < 0)
            return ret;
    }
    j.target_cluster = image_cluster_size(j.base, NULL);
    j.gran = mirror_granularity(j.target_cluster);
    j.nchunks = qimg_div_round_up(j.len, j.gran);
    j.dirty = calloc(j.nchunks ? j.nchunks : 1, 1);
    j.buf = malloc(MIRROR_BUF_SIZE);
    clock_gettime(CLOCK_MONOTONIC, &j.start);
    if (!j.dirty || !j.buf)
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    else
        ret = commit_run(&j, err);
    free(j.dirty);
    free(j.buf);
    if (ret < 0 && ret != -ENOMEM)  /* qemu-img reports the job's errno */
        return qimg_error_set(err, ret, "Block job failed: %s", strerror(-ret));
    if (ret < 0)
        return ret;
    if (p->keep_top || !j.top->fmt->make_empty)
        return 0;
    ret = j.top->fmt->make_empty(j.top, err);
    if (ret < 0)
        qimg_error_set(err, ret, "Failed to empty %s: %s",
                       j.top->filename, strerror(-ret));
    return ret;
}

/* ---- growing over a longer backing file ------------------------------------ */

/* Size in which the format zeroes (its subcluster), 1 when it has none. */
static uint64_t zero_alignment(struct qimg_image *img)
{
    bool ext_l2;
    uint64_t cs = image_cluster_size(img, &ext_l2);
    if (ext_l2)
        cs /= 32;
    return cs ? cs : 1;
}

int qimg_zero_grown(struct qimg_image *img, uint64_t old,
                    struct qimg_error *err)
{
    uint64_t size = img->size, align = zero_alignment(img), start;
    struct qimg_error e = {0};
    int ret = 0;

    if (!qimg_align_up(old, align, &start))
        start = size;
    if (size > start)
        ret = qimg_pwrite_zeroes(img, start, size - start,
                                 QIMG_ZERO_NO_FALLBACK, &e);
    if (ret < 0) {
        /* The size must not change when the new area cannot be zeroed. */
        img->fmt->truncate(img, old, false, QIMG_PREALLOC_OFF, &e);
        return qimg_error_set(err, ret, "Failed to zero out new clusters: %s",
                              strerror(-ret));
    }
    if (start > old) {
        uint64_t len = QIMG_MIN(start, size) - old;
        uint8_t *zero = calloc(1, (size_t)len);
        if (!zero)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = qimg_pwrite(img, old, (size_t)len, zero, &e);
        free(zero);
        if (ret < 0)
            return qimg_error_set(err, ret, "Failed to zero out the new area: "
                                  "%s", strerror(-ret));
    }
    return 0;
}

/* ---- rebase ---------------------------------------------------------------- */

#define REBASE_IO (2u << 20)
#define SECTOR 512u

/* QEMU's compare_buffers: whether the first sector differs, and in how
 * many bytes from the start the answer stays the same. */
static bool sectors_differ(const uint8_t *a, const uint8_t *b, uint64_t bytes,
                           uint64_t *pnum)
{
    uint64_t i = QIMG_MIN(bytes, (uint64_t)SECTOR);
    bool res = memcmp(a, b, (size_t)i) != 0;

    while (i < bytes) {
        uint64_t l = QIMG_MIN(bytes - i, (uint64_t)SECTOR);
        if ((memcmp(a + i, b + i, (size_t)l) != 0) != res)
            break;
        i += l;
    }
    *pnum = i;
    return res;
}

/* Whether [off, off+len) of img reads as zero by block status (QEMU's
 * qcow2 is_zero()). */
static int reads_zero(struct qimg_image *img, uint64_t off, uint64_t len,
                      bool *zero, struct qimg_error *err)
{
    if (off >= img->size)
        len = 0;
    len = QIMG_MIN(len, img->size - QIMG_MIN(off, img->size));
    *zero = true;
    while (len) {
        struct qimg_extent e;
        int ret = qimg_block_status_chain(img, NULL, off, len, &e, err);
        if (ret < 0)
            return ret;
        if (!(e.flags & QIMG_BS_ZERO) || (e.flags & QIMG_BS_DATA) || !e.length) {
            *zero = false;
            return 0;
        }
        off += QIMG_MIN(e.length, len);
        len -= QIMG_MIN(e.length, len);
    }
    return 0;
}

/*
 * A piece of a zero write that covers part of one (sub)cluster: QEMU's
 * qcow2 zeroes the whole (sub)cluster when the rest of it reads as zero
 * and it holds no data yet; otherwise zeroes are written as data.
 */
static int zero_partial(struct qimg_image *img, uint64_t off, uint64_t len,
                        uint64_t align, struct qimg_error *err)
{
    uint64_t start = qimg_align_down(off, align), end = off + len, stop;
    struct qimg_extent e;
    bool z1, z2;
    int ret;

    stop = QIMG_MIN(start + align, img->size);
    ret = reads_zero(img, start, off - start, &z1, err);
    if (!ret)
        ret = reads_zero(img, end, stop - end, &z2, err);
    if (!ret)
        ret = qimg_block_status(img, start, stop - start, &e, err);
    if (ret < 0)
        return ret;
    if (z1 && z2 && !(e.flags & QIMG_BS_DATA))
        return qimg_pwrite_zeroes(img, start, stop - start, 0, err);
    return qimg_pwrite_zeroes(img, off, len, 0, err);
}

/* Zero [off, off+len) split as QEMU's block layer splits zero writes:
 * unaligned head, aligned body, unaligned tail. */
static int write_zeroes(struct qimg_image *img, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    uint64_t align = zero_alignment(img), end = off + len;
    int ret = 0;

    if (align <= 1)
        return qimg_pwrite_zeroes(img, off, len, 0, err);
    while (!ret && off < end) {
        uint64_t piece;
        if (off % align) {
            piece = QIMG_MIN(end, qimg_align_down(off, align) + align) - off;
        } else if (end - off >= align && end != img->size) {
            piece = qimg_align_down(end, align) - off;
        } else {
            piece = end - off;
        }
        if (off % align == 0 && (piece % align == 0 || off + piece == img->size))
            ret = qimg_pwrite_zeroes(img, off, piece, 0, err);
        else
            ret = zero_partial(img, off, piece, align, err);
        off += piece;
    }
    return ret;
}

struct rebase_job {
    const struct qimg_rebase_params *p;
    struct qimg_image *img, *old, *new, *prefix;
    uint64_t old_size, new_size;
    uint8_t *buf_old, *buf_new;
    float progress;             /* accumulated as qemu-img does, in float */
    float step;
};

/* Read len bytes at off from img, or zeroes without an image. */
static int read_side(struct qimg_image *img, uint64_t off, uint64_t len,
                     uint8_t *buf, const char *what, struct qimg_error *err)
{
    struct qimg_error e;
    if (!img) {
        memset(buf, 0, (size_t)len);
        return 0;
    }
    int ret = qimg_pread(img, off, (size_t)len, buf, &e);
    if (ret < 0)
        return qimg_error_set(err, ret, "error while reading from %s backing "
                              "file", what);
    return 0;
}

/* Write the sectors of [off, off+n) where old and new differ. */
static int rebase_write(struct rebase_job *j, uint64_t off, uint64_t n,
                        bool old_zero, struct qimg_error *err)
{
    for (uint64_t w = 0; w < n;) {
        uint64_t pnum;
        int ret = 0;
        if (sectors_differ(j->buf_old + w, j->buf_new + w, n - w, &pnum)) {
            if (old_zero)
                ret = write_zeroes(j->img, off + w, pnum, err);
            else
                ret = qimg_pwrite(j->img, off + w, (size_t)pnum, j->buf_old + w,
                                  err);
            if (ret < 0) {
                char msg[QIMG_ERROR_MSG_MAX / 2];
                snprintf(msg, sizeof(msg), "%s", strerror(-ret));
                return qimg_error_set(err, ret, "Error while writing to COW "
                                      "image: %s", msg);
            }
        }
        w += pnum;
    }
    return 0;
}

/* One step at off: *n is set to the bytes it covered. */
static int rebase_step(struct rebase_job *j, uint64_t off, uint64_t *n,
                       struct qimg_error *err)
{
    struct qimg_extent e;
    bool old_zero = false;
    int ret;

    ret = qimg_block_status(j->img, off, *n, &e, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "error while reading image metadata: "
                              "%s", strerror(-ret));
    *n = e.length;
    if (allocated_here(&e))
        return 0;
    if (j->prefix) {
        uint64_t bytes = *n;
        /* Unchanged since the new backing file: nothing to do. */
        ret = allocated_above(j->old, j->prefix, off, *n, n, err);
        if (ret < 0)
            return qimg_error_set(err, ret, "error while reading image "
                                  "metadata: %s", strerror(-ret));
        if (!ret && *n)
            return 0;
        /* Past the end of the old backing file: its zeroes must be kept. */
        if (!*n)
            *n = bytes;
    }
    if (off >= j->old_size) {
        memset(j->buf_old, 0, (size_t)*n);
        old_zero = true;
    } else {
        *n = QIMG_MIN(*n, j->old_size - off);
        ret = read_side(j->old, off, *n, j->buf_old, "old", err);
        if (ret < 0)
            return ret;
    }
    if (off >= j->new_size) {
        memset(j->buf_new, 0, (size_t)*n);
    } else {
        *n = QIMG_MIN(*n, j->new_size - off);
        ret = read_side(j->new, off, *n, j->buf_new, "new", err);
        if (ret < 0)
            return ret;
    }
    ret = rebase_write(j, off, *n, old_zero, err);
    if (ret < 0)
        return ret;
    j->progress = j->progress + j->step / 100 * 100;
    if (j->progress > 100)
        j->progress = 100;
    if (j->p->progress)
        j->p->progress(j->p->opaque, j->progress);
    return 0;
}

static int rebase_copy(struct rebase_job *j, struct qimg_error *err)
{
    uint64_t size = j->img->size;
    int ret = 0;

    j->old_size = j->old ? j->old->size : 0;
    j->new_size = j->new ? j->new->size : 0;
    /* qemu-img counts steps of 2 MiB, whatever their real length. */
    if (size)
        j->step = (float)100 / (float)(size / QIMG_MIN(size, (uint64_t)REBASE_IO));
    j->buf_old = malloc(REBASE_IO);
    j->buf_new = malloc(REBASE_IO);
    if (!j->buf_old || !j->buf_new)
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t off = 0, n; !ret && off < size; off += n) {
        n = QIMG_MIN((uint64_t)REBASE_IO, size - off);
        ret = rebase_step(j, off, &n, err);
    }
    free(j->buf_old);
    free(j->buf_new);
    return ret;
}

/* The new backing image: one of the old chain, or opened read-only. */
static int rebase_open_new(struct rebase_job *j, bool *owned,
                           struct qimg_error *err)
{
    const struct qimg_rebase_params *p = j->p;
    struct qimg_open_params op = {
        .format = p->backing_fmt,
        .flags = p->backing_flags & QIMG_OPEN_SHARE,
        .cache = p->backing_cache,
    };
    const char *overlay = j->img->filename;
    char *real;
    int ret;

    *owned = false;
    if (p->backing[0] != '/' && !has_protocol(p->backing) &&
        (!overlay[0] || !strncmp(overlay, "json:", 5)))
        return qimg_error_set(err, -EINVAL, "Could not resolve backing "
                              "filename: Cannot use relative backing file "
                              "names for '%s'", overlay);
    real = has_protocol(p->backing) ? strdup(p->backing)
                                    : qimg_path_combine(overlay, p->backing);
    if (!real)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    j->prefix = qimg_chain_find(j->img, real);
    if (j->prefix) {
        j->new = j->prefix;
        free(real);
        return 0;
    }
    op.filename = real;
    ret = qimg_open(&j->new, &op, err);
    free(real);
    if (ret < 0) {
        qimg_error_prefix(err, "Could not open new backing file '%s': ",
                          p->backing);
        return ret;
    }
    *owned = true;
    return 0;
}

int qimg_rebase(const struct qimg_rebase_params *p, struct qimg_error *err)
{
    struct rebase_job j = {.p = p, .img = p->img};
    bool owned = false;
    int ret = 0;

    if (p->backing_fmt && !qimg_format_known(p->backing_fmt))
        return qimg_error_set(err, -EINVAL, "Invalid format name: '%s'",
                              p->backing_fmt);
    if (!p->unsafe) {
        j.old = j.img->backing;
        if (p->backing && p->backing[0])
            ret = rebase_open_new(&j, &owned, err);
        if (!ret)
            ret = rebase_copy(&j, err);
    }
    if (owned)
        qimg_close(j.new);
    return ret;
}
