/*
 * dmg-read.c - guest reads of a dmg: find the chunk of each sector, copy
 * raw chunks straight from the file, zero and ignore chunks as zeroes,
 * zlib and bzip2 chunks through the shared chunk cache (decompressed
 * outside node->lock, several at once).  Sectors no chunk covers fail
 * with EIO, as in QEMU (lzfse and unknown chunks were left out of the
 * table at open, so reading them fails too).
 */
#include <bzlib.h>
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "core/inflate.h"
#include "core/util.h"
#include "fmt/dmg/dmg.h"

/* The chunk holding sector, or NULL (the table is sorted, no overlaps). */
static const struct dmg_chunk *find_chunk(const struct dmg_state *s,
                                          uint64_t sector)
{
    uint32_t lo = 0, hi = s->n_chunks;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct dmg_chunk *c = &s->chunks[mid];
        if (sector < c->sector)
            hi = mid;
        else if (sector - c->sector >= c->count)
            lo = mid + 1;
        else
            return c;
    }
    return NULL;
}

/* A bzip2 stream into exactly out_len bytes (as QEMU's dmg-bz2 module). */
static int bunzip2(const uint8_t *in, size_t in_len, uint8_t *out,
                   size_t out_len)
{
    bz_stream bz;
    uint64_t total;
    int ret;

    /* libbz2 counts in unsigned int; chunks are bounded far below. */
    if (in_len > UINT_MAX || out_len > UINT_MAX)
        return -EIO;
    memset(&bz, 0, sizeof(bz));
    if (BZ2_bzDecompressInit(&bz, 0, 0) != BZ_OK)
        return -ENOMEM;
    bz.next_in = (char *)in;
    bz.avail_in = (unsigned)in_len;
    bz.next_out = (char *)out;
    bz.avail_out = (unsigned)out_len;
    ret = BZ2_bzDecompress(&bz);
    total = ((uint64_t)bz.total_out_hi32 << 32) | bz.total_out_lo32;
    BZ2_bzDecompressEnd(&bz);
    return ret == BZ_STREAM_END && total == out_len ? 0 : -EIO;
}

static int fill_chunk(struct qimg_image *node, uint64_t index, uint8_t *in,
                      size_t in_len, uint8_t *out, size_t out_len,
                      struct qimg_error *err)
{
    const struct dmg_state *s = node->state;
    const struct dmg_chunk *c = &s->chunks[index];
    int ret = node->file->ops->pread(node->file, c->offset, in_len, in, err);

    if (ret < 0)
        return ret;
    if (c->type == DMG_ZLIB)
        ret = qimg_inflate_zlib(in, in_len, out, out_len);
    else
        ret = bunzip2(in, in_len, out, out_len);
    if (ret == -ENOMEM)
        return qimg_error_set(err, ret, "Out of memory");
    if (ret < 0)
        return qimg_error_set(err, -EIO, "Input/output error");
    return 0;
}

/* n bytes from byte `at` of raw chunk c: what its stored bytes hold, then
 * zeroes (QEMU would show a stale buffer past a short chunk). */
static int read_raw(struct qimg_image *node, const struct dmg_chunk *c,
                    uint64_t at, size_t n, uint8_t *p, struct qimg_error *err)
{
    size_t stored = at < c->length ? (size_t)QIMG_MIN((uint64_t)n,
                                                      c->length - at) : 0;
    uint64_t off;

    memset(p + stored, 0, n - stored);
    if (!stored)
        return 0;
    if (qimg_add_overflow(c->offset, at, &off))
        return qimg_error_set(err, -EIO, "Input/output error");
    return node->file->ops->pread(node->file, off, stored, p, err);
}

static int read_compressed(struct qimg_image *node, const struct dmg_chunk *c,
                           uint64_t at, size_t n, uint8_t *p,
                           struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    const uint8_t *data;
    int slot = qimg_chunk_get(node, &s->cache, (uint64_t)(c - s->chunks),
                              (size_t)c->length,
                              (size_t)(c->count * DMG_SECTOR), fill_chunk,
                              &data, err);
    if (slot < 0)
        return slot;
    memcpy(p, data + at, n);
    qimg_chunk_put(node, &s->cache, slot);
    return 0;
}

int dmg_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err)
{
    const struct dmg_state *s = node->state;
    uint8_t *p = buf;

    while (len) {
        const struct dmg_chunk *c = find_chunk(s, off / DMG_SECTOR);
        uint64_t rel, at, left;
        size_t n;
        int ret;

        if (!c)
            return qimg_error_set(err, -EIO, "Input/output error");
        /* Byte offset in the chunk's guest data and what remains of it,
         * capped by the image size (zero chunks may claim 2^64 sectors). */
        rel = off / DMG_SECTOR - c->sector;
        at = rel * DMG_SECTOR + off % DMG_SECTOR;
        left = QIMG_MIN(c->count - rel, node->size / DMG_SECTOR + 1) *
                   DMG_SECTOR - off % DMG_SECTOR;
        n = (size_t)QIMG_MIN((uint64_t)len, left);
        switch (c->type) {
        case DMG_ZERO:
        case DMG_IGNORE:
            memset(p, 0, n);
            ret = 0;
            break;
        case DMG_RAW:
            ret = read_raw(node, c, at, n, p, err);
            break;
        default:
            ret = read_compressed(node, c, at, n, p, err);
            break;
        }
        if (ret < 0)
            return ret;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}
