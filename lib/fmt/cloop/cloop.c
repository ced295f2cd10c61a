/*
 * cloop.c - the cloop compressed loop image (read-only), as written by
 * cloop-utils' create_compressed_fs and read by QEMU 7.2.
 *
 * Layout (big-endian): a 128-byte shell-script preamble ("#!/bin/sh\n
 * #V2.0 Format\n..."), the uncompressed block size (u32) and the number
 * of blocks n (u32), then n+1 u64 file offsets: block i is the zlib
 * stream from offsets[i] to offsets[i+1] and inflates to exactly one
 * block.  The guest size is n blocks.
 *
 * Reads go through the shared chunk cache (core/chunk-cache.h): blocks are
 * inflated outside node->lock, several at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>

#include "core/block.h"
#include "core/chunk-cache.h"
#include "core/inflate.h"
#include "core/util.h"

#define CLOOP_HEADER_OFFSET 128     /* block size and count follow the script */
#define CLOOP_OFFSETS_OFFSET (CLOOP_HEADER_OFFSET + 8)
/* Largest uncompressed block (QEMU's limit: a buffer of this size is
 * needed per block being read). */
#define CLOOP_MAX_BLOCK_SIZE (64u << 20)
/* Largest compressed block: poorly compressible data may grow a little,
 * QEMU allows twice the largest block. */
#define CLOOP_MAX_COMPRESSED (2ull * CLOOP_MAX_BLOCK_SIZE)
/* Largest offsets table (QEMU's limit: 16 TB at 256 KB blocks).  The
 * table must also lie inside the file, which bounds the allocation by the
 * file's size. */
#define CLOOP_MAX_OFFSETS_BYTES (512u << 20)
/* Largest table that may run past the end of the file (QEMU reads the
 * missing part as zeroes): beyond it, the table must lie in the file, so
 * that a hostile header cannot make us allocate more than the file's
 * size. */
#define CLOOP_MAX_OFFSETS_PAST_EOF (1u << 20)

static const char cloop_magic[] =
    "#!/bin/sh\n"
    "#V2.0 Format\n"
    "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

struct cloop_state {
    uint32_t block_size;
    uint32_t n_blocks;
    uint64_t *offsets;          /* n_blocks + 1 entries */
    struct qimg_chunk_cache cache;
    bool cache_ok;
};

static int cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t n = QIMG_MIN(len, sizeof(cloop_magic) - 1);
    return memcmp(buf, cloop_magic, n) ? 0 : 2;
}

static int read_be32(struct qimg_image *node, uint64_t off, uint32_t *v,
                     struct qimg_error *err)
{
    uint8_t b[4];
    int ret = node->file->ops->pread(node->file, off, sizeof(b), b, err);
    if (ret == 0)
        *v = qimg_ld_be32(b);
    return ret;
}

/* Validate the table as QEMU does: increasing, and no compressed block
 * larger than CLOOP_MAX_COMPRESSED. */
static int check_offsets(const struct cloop_state *s, struct qimg_error *err)
{
    for (uint32_t i = 1; i <= s->n_blocks; i++) {
        if (s->offsets[i] < s->offsets[i - 1])
            return qimg_error_set(err, -EINVAL, "offsets not monotonically "
                                  "increasing at index %u, image file is "
                                  "corrupt", i);
        if (s->offsets[i] - s->offsets[i - 1] > CLOOP_MAX_COMPRESSED)
            return qimg_error_set(err, -EINVAL, "invalid compressed block "
                                  "size at index %u, image file is corrupt",
                                  i);
    }
    return 0;
}

static int read_offsets(struct qimg_image *node, struct qimg_error *err)
{
    struct cloop_state *s = node->state;
    uint64_t bytes = ((uint64_t)s->n_blocks + 1) * sizeof(uint64_t);
    int64_t file_size = node->file->ops->get_size(node->file);
    int ret;

    if (bytes > CLOOP_MAX_OFFSETS_BYTES)
        return qimg_error_set(err, -EINVAL, "image requires too many offsets, "
                              "try increasing block size");
    /* QEMU reads a table past the end of the file as zeroes (and then
     * allocates up to 512 MiB for it); we refuse large ones. */
    if (file_size < 0 ||
        (bytes > CLOOP_MAX_OFFSETS_PAST_EOF &&
         !qimg_range_ok(CLOOP_OFFSETS_OFFSET, bytes, (uint64_t)file_size)))
        return qimg_error_set(err, -EINVAL, "offsets table of %u blocks "
                              "extends past the end of the file, image file "
                              "is corrupt", s->n_blocks);
    s->offsets = malloc(bytes);
    if (!s->offsets)
        return qimg_error_set(err, -ENOMEM, "Could not allocate offsets "
                              "table");
    ret = node->file->ops->pread(node->file, CLOOP_OFFSETS_OFFSET, (size_t)bytes,
                                 s->offsets, err);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i <= s->n_blocks; i++)
        s->offsets[i] = qimg_ld_be64(&s->offsets[i]);
    return check_offsets(s, err);
}

static int cloop_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    struct cloop_state *s = node->state;
    uint32_t sectors_per_block;
    int ret;

    ret = read_be32(node, CLOOP_HEADER_OFFSET, &s->block_size, err);
    if (ret < 0)
        return ret;
    if (s->block_size % 512)
        return qimg_error_set(err, -EINVAL, "block_size %u must be a multiple "
                              "of 512", s->block_size);
    if (!s->block_size)
        return qimg_error_set(err, -EINVAL, "block_size cannot be zero");
    if (s->block_size > CLOOP_MAX_BLOCK_SIZE)
        return qimg_error_set(err, -EINVAL, "block_size %u must be %u MB or "
                              "less", s->block_size,
                              CLOOP_MAX_BLOCK_SIZE >> 20);
    ret = read_be32(node, CLOOP_HEADER_OFFSET + 4, &s->n_blocks, err);
    if (ret < 0)
        return ret;
    if (s->n_blocks > (UINT32_MAX - 1) / sizeof(uint64_t))
        return qimg_error_set(err, -EINVAL, "n_blocks %u must be %zu or less",
                              s->n_blocks,
                              (size_t)((UINT32_MAX - 1) / sizeof(uint64_t)));
    ret = read_offsets(node, err);
    if (ret < 0)
        goto fail;
    ret = qimg_chunk_cache_init(&s->cache);
    if (ret < 0) {
        qimg_error_set(err, ret, "Out of memory");
        goto fail;
    }
    s->cache_ok = true;
    /* QEMU multiplies in 32 bits: sizes of 2 TiB and more wrap, and we
     * show the same size so that both tools agree on every image. */
    sectors_per_block = s->block_size / 512;
    node->size = (uint64_t)(uint32_t)(s->n_blocks * sectors_per_block) * 512;
    ret = qimg_opts_refuse_all(node, opts, err);
    if (ret < 0) {
        qimg_chunk_cache_release(&s->cache);
        s->cache_ok = false;
        goto fail;
    }
    return 0;

fail:
    free(s->offsets);
    s->offsets = NULL;
    return ret;
}

static void cloop_close(struct qimg_image *node)
{
    struct cloop_state *s = node->state;
    if (s->cache_ok)
        qimg_chunk_cache_release(&s->cache);
    free(s->offsets);
}

static int fill_block(struct qimg_image *node, uint64_t index, uint8_t *in,
                      size_t in_len, uint8_t *out, size_t out_len,
                      struct qimg_error *err)
{
    struct cloop_state *s = node->state;
    int ret = node->file->ops->pread(node->file, s->offsets[index], in_len, in,
                                     err);
    if (ret < 0)
        return ret;
    /* A block must inflate to exactly one block (QEMU: EIO otherwise). */
    if (qimg_inflate_zlib(in, in_len, out, out_len) < 0)
        return qimg_error_set(err, -EIO, "Input/output error");
    return 0;
}

static int cloop_pread(struct qimg_image *node, uint64_t off, size_t len,
                       void *buf, struct qimg_error *err)
{
    struct cloop_state *s = node->state;
    uint8_t *p = buf;

    while (len) {
        uint64_t block = off / s->block_size;
        size_t in_block = (size_t)(off % s->block_size);
        size_t n = QIMG_MIN(len, (size_t)s->block_size - in_block);
        const uint8_t *data;
        int slot;

        slot = qimg_chunk_get(node, &s->cache, block,
                              (size_t)(s->offsets[block + 1] -
                                       s->offsets[block]),
                              s->block_size, fill_block, &data, err);
        if (slot < 0)
            return slot;
        memcpy(p, data + in_block, n);
        qimg_chunk_put(node, &s->cache, slot);
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

const struct qimg_format qimg_format_cloop = {
    .name = "cloop",
    .description = "cloop compressed loop image",
    .state_size = sizeof(struct cloop_state),
    .read_only = true,
    .no_get_info = true,
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .pread = cloop_pread,
};
