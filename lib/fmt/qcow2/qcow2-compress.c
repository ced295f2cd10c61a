/*
 * qcow2-compress.c - compressed clusters: deflate (raw, as QEMU's zlib
 * type holds it) and zstd; reading a compressed descriptor, and writing
 * one cluster compressed.
 *
 * Deflate is written by libdeflate, not zlib: for a third to a half of
 * zlib's CPU time, and no larger output than QEMU's zlib level 6 (see
 * QCOW2_DEFLATE_LEVEL).  Its streams differ from zlib's, so images are not
 * byte-identical to qemu-img's, but they read the same: QEMU inflates a
 * cluster with one inflate() call into the whole cluster, where matches
 * may reach back anywhere in the output, so libdeflate's 32 KiB window is
 * fine although QEMU's own deflate uses 4 KiB (tests/cli/test_qcow2_io.py
 * checks that qemu-img reads them).  Reading stays on zlib, whose
 * tolerance of a stream running past the cluster QEMU relies on.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <zlib.h>
#include <zstd.h>

#include "core/ctx-pool.h"

#include "fmt/qcow2/qcow2.h"

/* QEMU inflates with a 2^12 window; negative bits select raw deflate. */
#define QCOW2_ZLIB_WINDOW_BITS (-12)

static int inflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                       size_t out_len)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, QCOW2_ZLIB_WINDOW_BITS) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    ret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* A full output buffer is success even if the stream goes on. */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR || ret == Z_OK) &&
        z.avail_out == 0)
        return 0;
    return -EIO;
}

static int unzstd(const uint8_t *in, size_t in_len, uint8_t *out,
                  size_t out_len);

int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in,
                     size_t in_len, uint8_t *out, size_t out_len)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD)
        return unzstd(in, in_len, out, out_len);
    return inflate_raw(in, in_len, out, out_len);
}

/*
 * libdeflate level 4: on the benchmark's mixed data its output is 0.5%
 * smaller than zlib level 6 for 42% of the CPU time, on binaries 4%
 * smaller for 29% (level 6 would cost twice as much for 1-2% less).
 */
#define QCOW2_DEFLATE_LEVEL 4

/* Decompression contexts, one per thread (workers read in parallel),
 * kept for the thread's life: allocating one per cluster costs a good
 * part of decompressing it. */
struct compress_ctx {
    ZSTD_DCtx *unzstd;
};

static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static bool ctx_key_ok;

static void ctx_free(void *p)
{
    struct compress_ctx *c = p;
    ZSTD_freeDCtx(c->unzstd);
    free(c);
}

static void ctx_key_init(void)
{
    ctx_key_ok = pthread_key_create(&ctx_key, ctx_free) == 0;
}

static struct compress_ctx *thread_ctx(void)
{
    struct compress_ctx *c;

    pthread_once(&ctx_once, ctx_key_init);
    if (!ctx_key_ok)
        return NULL;
    c = pthread_getspecific(ctx_key);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (c && pthread_setspecific(ctx_key, c)) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

/*
 * Compression contexts are shared by all threads through a pool, and a
 * thread takes the one last released on its CPU.  One per thread (8
 * copy workers on 2 CPUs) cost a fifth more CPU: a zstd context's match
 * tables (384 KiB at level 3 for 64 KiB clusters) left the CPU's caches
 * between two uses, and each of the 8 contexts (0.7 MiB) was faulted in
 * and stayed resident (docs/PERFORMANCE.md, "Compressed convert").
 * Contexts hold no state between clusters: each cluster is a frame of
 * its own, the same bytes from any context.  The pool keeps a few; a
 * thread finding it empty makes its own, given back (or freed) after.
 */
static struct qimg_ctx_pool zstd_pool = QIMG_CTX_POOL_INIT(false);
static struct qimg_ctx_pool deflate_pool = QIMG_CTX_POOL_INIT(false);

static void *make_deflater(void)
{
    return libdeflate_alloc_compressor(QCOW2_DEFLATE_LEVEL);
}

static void free_deflater(void *c)
{
    libdeflate_free_compressor(c);
}

static void *make_zstd(void)
{
    return ZSTD_createCCtx();
}

static void free_zstd(void *c)
{
    ZSTD_freeCCtx(c);
}

/* Decompression reuses the thread's context too: creating one per
 * cluster allocated (and faulted in) its window each time. */
static int unzstd(const uint8_t *in, size_t in_len, uint8_t *out,
                  size_t out_len)
{
    struct compress_ctx *c = thread_ctx();
    ZSTD_inBuffer ib = {in, in_len, 0};
    ZSTD_outBuffer ob = {out, out_len, 0};
    ZSTD_DCtx *d;

    if (c && !c->unzstd)
        c->unzstd = ZSTD_createDCtx();
    if (!c || !c->unzstd)
        return -ENOMEM;
    d = c->unzstd;
    ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
    /* Stream until the cluster is full: the input may carry padding. */
    while (ob.pos < ob.size) {
        size_t r = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(r))
            return -EIO;
        if (r == 0 || ib.pos == ib.size)
            return ob.pos < ob.size ? -EIO : 0;
    }
    return 0;
}

static ssize_t deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_cap)
{
    struct libdeflate_compressor *c = qimg_ctx_pool_take(&deflate_pool,
                                                         make_deflater);
    size_t r;

    if (!c)
        return -ENOMEM;
    /* 0 when it does not fit: stored uncompressed */
    r = libdeflate_deflate_compress(c, in, in_len, out, out_cap);
    qimg_ctx_pool_give(&deflate_pool, c, free_deflater);
    return (ssize_t)r;
}

/* The same frames as ZSTD_compress (QEMU's level, content size in the
 * header), from a pooled context. */
static ssize_t zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                             size_t out_cap)
{
    ZSTD_CCtx *c = qimg_ctx_pool_take(&zstd_pool, make_zstd);
    size_t r;

    if (!c)
        return -ENOMEM;
    r = ZSTD_compressCCtx(c, out, out_cap, in, in_len, ZSTD_CLEVEL_DEFAULT);
    qimg_ctx_pool_give(&zstd_pool, c, free_zstd);
    if (ZSTD_isError(r))
        return 0;
    return (ssize_t)r;
}

ssize_t qcow2_compress(const struct qcow2_state *s, const uint8_t *in,
                       size_t in_len, uint8_t *out, size_t out_cap)
{
    ssize_t n = s->compression_type == QCOW2_COMPRESSION_ZSTD
                    ? zstd_compress(in, in_len, out, out_cap)
                    : deflate_raw(in, in_len, out, out_cap);
    /* Only worth it if it saves space. */
    if (n > 0 && (size_t)n >= in_len)
        return 0;
    return n;
}

int qcow2_read_compressed(struct qimg_image *node, uint64_t l2_entry,
                          uint8_t *cluster, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff = l2_entry & s->cluster_offset_mask;
    uint64_t sectors = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t csize = sectors * 512 - (coff & 511);
    uint8_t *in;
    int ret;

    /* csize is bounded by the descriptor's width: at most 2 clusters. */
    in = malloc(csize);
    if (!in)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_storage_event(node->file, QIMG_EV_READ_COMPRESSED);
    ret = node->file->ops->pread(node->file, coff, csize, in, err);
    if (!ret && qcow2_decompress(s, in, csize, cluster, s->cluster_size) < 0)
        ret = qimg_error_set(err, -EIO, "Could not decompress cluster at "
                             "offset %#llx", (unsigned long long)coff);
    free(in);
    return ret;
}

/* ---- compressed writes --------------------------------------------------- */

static int check_compressed_write(struct qimg_image *node, uint64_t off,
                                  size_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;

    if (off & (cs - 1) || (len != cs && off + len != node->size) || len > cs)
        return qimg_error_set(err, -EINVAL, "Compressed writes must cover one "
                              "whole cluster");
    if (s->data_file)
        return qimg_error_set(err, -ENOTSUP, "Cannot use compression with an "
                              "external data file");
    return 0;
}

/* Compress one cluster (a short tail padded with zeroes) into out, which
 * holds a cluster; no lock.  At most cs - 1 bytes are kept: 0 means store
 * it uncompressed. */
ssize_t qcow2_compress_cluster(struct qimg_image *node, const void *buf,
                               size_t len, void *out, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    uint8_t *in = NULL;
    ssize_t n;

    if (len > cs)
        return qimg_error_set(err, -EINVAL, "Compressed writes must cover one "
                              "whole cluster");
    if (len < cs) {
        in = calloc(1, cs);
        if (!in)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        memcpy(in, buf, len);
    }
    n = qcow2_compress(s, in ? in : buf, cs, out, cs - 1);
    free(in);
    if (n < 0)
        return qimg_error_set(err, (int)n, "Compression failed");
    return n;
}

/* Store a cluster compressed by qcow2_compress_cluster (clen bytes of
 * cdata; clen 0: buf uncompressed), packed after the previous one. */
int qcow2_pwrite_compressed_data(struct qimg_image *node, uint64_t off,
                                 size_t len, const void *buf, const void *cdata,
                                 size_t clen, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t sectors;
    int64_t coff;
    int ret = check_compressed_write(node, off, len, err);

    if (ret < 0)
        return ret;
    if (clen == 0)
        return qcow2_pwrite(node, off, len, buf, err);
    pthread_mutex_lock(&node->lock);
    /* The L2 table first, then the data: QEMU's layout. */
    ret = qcow2_compressed_l2_prepare(node, off, err);
    if (ret < 0)
        goto unlock;
    coff = qcow2_alloc_bytes(node, (uint64_t)clen, err);
    if (coff < 0) {
        ret = (int)coff;
        goto unlock;
    }
    qimg_storage_event(node->file, QIMG_EV_WRITE_COMPRESSED);
    ret = node->file->ops->pwrite(node->file, (uint64_t)coff, clen, cdata, err);
    if (ret < 0)
        goto unlock;
    sectors = (((uint64_t)coff + (uint64_t)clen - 1) >> 9) - ((uint64_t)coff >> 9);
    ret = qcow2_compressed_l2_set(node, off, QCOW2_OFLAG_COMPRESSED |
                                  (sectors << s->csize_shift) | (uint64_t)coff,
                                  err);
unlock:
    pthread_mutex_unlock(&node->lock);
    return ret;
}

int qcow2_pwrite_compressed(struct qimg_image *node, uint64_t off, size_t len,
                            const void *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *out;
    ssize_t n;
    int ret;

    if (!len) {
        /* End of a compressed stream: pad the file to a whole sector. */
        int64_t fsize = node->file->ops->get_size(node->file);
        uint64_t aligned;
        if (fsize < 0)
            return qimg_error_set(err, (int)fsize, "Could not get file size");
        if (!qimg_align_up((uint64_t)fsize, 512, &aligned))
            return qimg_error_set(err, -EFBIG, "File too large");
        if (aligned == (uint64_t)fsize)
            return 0;
        return node->file->ops->truncate(node->file, aligned, QIMG_PREALLOC_OFF,
                                         err);
    }
    ret = check_compressed_write(node, off, len, err);
    if (ret < 0)
        return ret;
    out = malloc(s->cluster_size);
    if (!out)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    n = qcow2_compress_cluster(node, buf, len, out, err);
    ret = n < 0 ? (int)n
                : qcow2_pwrite_compressed_data(node, off, len, buf, out,
                                               (size_t)n, err);
    free(out);
    return ret;
}
