/*
 * qcow2-compress.c - compressed clusters: zlib (raw deflate, 4 KiB window,
 * as QEMU writes it) and zstd; reading a compressed descriptor, and writing
 * one cluster compressed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "fmt/qcow2/qcow2.h"

/* QEMU compresses with a 2^12 window; negative bits select raw deflate. */
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
                  size_t out_len)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer ib = {in, in_len, 0};
    ZSTD_outBuffer ob = {out, out_len, 0};
    int ret = 0;

    if (!d)
        return -ENOMEM;
    /* Stream until the cluster is full: the input may carry padding. */
    while (ob.pos < ob.size) {
        size_t r = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (r == 0 || ib.pos == ib.size) {
            if (ob.pos < ob.size)
                ret = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(d);
    return ret;
}

int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in,
                     size_t in_len, uint8_t *out, size_t out_len)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD)
        return unzstd(in, in_len, out, out_len);
    return inflate_raw(in, in_len, out, out_len);
}

static ssize_t deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_cap)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                     QCOW2_ZLIB_WINDOW_BITS, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_cap;
    ret = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    if (ret != Z_STREAM_END)
        return 0;   /* did not fit: store uncompressed */
    return (ssize_t)(out_cap - z.avail_out);
}

static ssize_t zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                             size_t out_cap)
{
    size_t r = ZSTD_compress(out, out_cap, in, in_len, ZSTD_CLEVEL_DEFAULT);
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
    ret = node->file->ops->pread(node->file, coff, csize, in, err);
    if (!ret && qcow2_decompress(s, in, csize, cluster, s->cluster_size) < 0)
        ret = qimg_error_set(err, -EIO, "Could not decompress cluster at "
                             "offset %#llx", (unsigned long long)coff);
    free(in);
    return ret;
}
