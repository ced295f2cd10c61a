/*
 * vmdk-stream.c - compressed grains and the streamOptimized layout
 * (VMDK 5.0 spec, "Stream-Optimized Compressed Sparse Extents").
 *
 * A compressed grain is a grain marker (guest sector, 8 bytes; data
 * size, 4 bytes) and a zlib stream (RFC 1950, what QEMU's compress() and
 * uncompress() use), starting on a sector.  Grains are inflated with
 * zlib and deflated with libdeflate (its zlib format: the same streams
 * zlib reads, for less CPU than zlib's deflate), by compressors shared
 * among the copy engine's workers (one per CPU and one more).
 *
 * Writing follows QEMU's rules: only whole grains, appended at the
 * allocation cursor, never over an allocated grain.  The grain tables
 * of a writable stream are held in memory.  An image in QEMU's layout
 * (tables preallocated after the descriptor, the header pointing at
 * them: what QEMU's and our create write) also gets every table update
 * written through, as QEMU does, so it stays readable throughout.  When
 * the stream ends (convert's end-of-stream call, or close after
 * writes), what VMware's readers need is appended: each grain table
 * after a grain table marker, the grain directory after its marker, the
 * footer (the header pointing at that directory) after its marker, and
 * the end-of-stream marker, and the header's directory offset becomes
 * GD_AT_END.  QEMU 7.2 reads such images through their footer.
 *
 * A stream written forward (onto a pipe: vmdk_create_stream) never
 * seeks: the head (header with GD_AT_END, descriptor) comes first, then
 * grains in guest order; each grain table is written (after its marker)
 * as soon as a grain of a later table arrives, and only the directory
 * stays in memory.  At the end of stream: the last table, the directory,
 * footer and end-of-stream marker.  Without that call (a failed convert)
 * the stream stops after its last grain or table, so that it never
 * reads as complete.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <zlib.h>

#include "core/ctx-pool.h"
#include "core/inflate.h"
#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

/* Grain marker: lba (8) and size (4) before the compressed data. */
#define MARKER_SIZE 12
/* libdeflate level 4: as fast as qcow2's -c and no larger than zlib's
 * level 6 output (lib/fmt/qcow2/qcow2-compress.c measured it). */
#define VMDK_DEFLATE_LEVEL 4

struct vmdk_stream {
    uint32_t **gt;          /* l1_size tables of l2_size entries, or NULL */
    bool head_tables;       /* the header points at tables in the head */
    bool dirty;             /* changed since the last end of stream */
    bool forward;           /* written forward onto a pipe */
    /* read forward from a pipe (vmdk_stream_read) */
    bool reader;
    bool at_end;            /* the end-of-stream marker was passed */
    bool footer_seen;
    uint64_t rpos;          /* byte offset of the next marker */
    uint64_t next_grain;    /* grain index of the marker at rpos, or
                               UINT64_MAX: not parsed yet */
    uint64_t have_grain;    /* grain index in grain_buf, or UINT64_MAX */
    uint64_t last_grain;    /* the highest grain index passed + 1 */
    uint8_t *grain_buf;     /* one inflated grain */
    bool ended;             /* forward: the end of stream is written */
    uint32_t cur;           /* forward: the table being filled */
};

static int forward_advance(struct vmdk_extent *e, uint32_t l1,
                           struct qimg_error *err);

/* ---- compression ---------------------------------------------------------- */

/*
 * Compressors, shared by the threads that compress grains (core/ctx-pool):
 * at most one per CPU and one more are made (a libdeflate compressor is
 * 670 KiB; one per copy worker was 5.3 of a streamOptimized convert's
 * 8 MiB peak), the others wait for one to come back.
 */
static struct qimg_ctx_pool deflaters = QIMG_CTX_POOL_INIT(true);

static void *make_deflater(void)
{
    return libdeflate_alloc_compressor(VMDK_DEFLATE_LEVEL);
}

static void free_deflater(void *c)
{
    libdeflate_free_compressor(c);
}

static struct vmdk_extent *first_compressed(struct vmdk_state *s)
{
    for (size_t i = 0; i < s->n_ext; i++)
        if (s->ext[i].compressed)
            return &s->ext[i];
    return NULL;
}

/*
 * Compress one grain (len bytes, a whole grain or the extent's tail) into
 * out, leaving room for the grain marker that vmdk_write_compressed puts
 * in front; returns marker plus data length.  0 (store as given) for
 * images without compressed extents: -c on other subformats writes plain
 * grains, as QEMU does.  out holds at least two grains.
 */
ssize_t vmdk_compress_grain(struct qimg_image *node, const void *buf,
                            size_t len, void *out, struct qimg_error *err)
{
    struct vmdk_extent *e = first_compressed(node->state);
    struct libdeflate_compressor *c;
    size_t cap, n;

    if (!e)
        return 0;
    cap = 2 * (size_t)(e->grain_sectors * VMDK_SECTOR);
    if (len > cap / 2)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    c = qimg_ctx_pool_take(&deflaters, make_deflater);
    if (!c)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    n = libdeflate_zlib_compress(c, buf, len, (uint8_t *)out + MARKER_SIZE,
                                 cap - MARKER_SIZE);
    qimg_ctx_pool_give(&deflaters, c, free_deflater);
    if (!n)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    return (ssize_t)(n + MARKER_SIZE);
}

/* zlib's uncompress() into out, at most *olen bytes: the stream must end. */
static int inflate_grain(const uint8_t *in, size_t ilen, uint8_t *out,
                         size_t *olen)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)ilen;
    z.next_out = out;
    z.avail_out = (uInt)*olen;
    ret = inflate(&z, Z_FINISH);
    *olen -= z.avail_out;
    inflateEnd(&z);
    return ret == Z_STREAM_END ? 0 : -EINVAL;
}

/*
 * Read len bytes at off_in_grain of the compressed grain at host: the
 * marker says how much to inflate (without markers, the grain's size).
 * A whole grain is inflated straight into buf.
 */
int vmdk_read_compressed(struct vmdk_extent *e, uint64_t host,
                         uint64_t off_in_grain, size_t len, void *buf,
                         struct qimg_error *err)
{
    size_t gb = (size_t)(e->grain_sectors * VMDK_SECTOR), cap = 2 * gb;
    size_t data_len = gb, skip = 0, have, out_len = gb;
    uint8_t *in = malloc(cap), *out = NULL;
    int ret;

    if (!in)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    have = QIMG_MIN(cap, gb + MARKER_SIZE);
    ret = e->file->ops->pread(e->file, host, have, in, err);
    if (ret < 0)
        goto out;
    if (e->has_marker) {
        data_len = qimg_ld_le32(in + 8);
        skip = MARKER_SIZE;
    }
    if (!data_len || data_len > cap - skip) {
        ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
        goto out;
    }
    if (skip + data_len > have) {
        ret = e->file->ops->pread(e->file, host + have, skip + data_len - have,
                                  in + have, err);
        if (ret < 0)
            goto out;
    }
    if (off_in_grain == 0 && len == gb) {
        /* a whole grain: libdeflate (the shared helper), which accepts
         * what zlib's uncompress() does when the output must fill the
         * grain; its errors read as QEMU's EINVAL */
        ret = qimg_inflate_zlib(in + skip, data_len, buf, len) < 0 ? -EINVAL
                                                                   : 0;
    } else {
        out = malloc(gb);
        if (!out) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        ret = inflate_grain(in + skip, data_len, out, &out_len);
        if (!ret && off_in_grain + len > out_len)
            ret = -EINVAL;
        if (!ret)
            memcpy(buf, out + off_in_grain, len);
    }
    if (ret < 0)
        qimg_error_set(err, ret, "%s", strerror(-ret));
out:
    free(out);
    free(in);
    return ret;
}

/* ---- the tables of a writable stream ---------------------------------------- */

void vmdk_stream_free(struct vmdk_extent *e)
{
    struct vmdk_stream *st = e->stream;

    if (!st)
        return;
    for (uint32_t i = 0; st->gt && i < e->l1_size; i++)
        free(st->gt[i]);
    free(st->gt);
    free(st->grain_buf);
    free(st);
    e->stream = NULL;
}

bool vmdk_stream_lookup(struct vmdk_extent *e, uint32_t l1, uint32_t l2,
                        uint32_t *gte)
{
    const struct vmdk_stream *st = e->stream;

    *gte = st->gt[l1] ? st->gt[l1][l2] : 0;
    return true;
}

/* The sector after the last grain of a sealed stream (its old tables
 * and footer are written over): the highest grain's marker tells. */
static int sealed_end(struct qimg_image *node, struct vmdk_extent *e,
                      struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint64_t last = 0, end;
    uint8_t m[MARKER_SIZE];
    int ret;

    for (uint32_t i = 0; i < e->l1_size; i++)
        for (uint32_t j = 0; st->gt[i] && j < e->l2_size; j++)
            if (st->gt[i][j] > last &&
                !(e->zero_grain && st->gt[i][j] == VMDK_GTE_ZEROED))
                last = st->gt[i][j];
    if (!last) {
        e->next_sector = e->grain_offset;
        return 0;
    }
    ret = e->file->ops->pread(e->file, last * VMDK_SECTOR, sizeof(m), m, err);
    if (ret < 0)
        return ret;
    end = last * VMDK_SECTOR + (e->has_marker ? MARKER_SIZE +
                                (uint64_t)qimg_ld_le32(m + 8)
                                              : e->grain_sectors * VMDK_SECTOR);
    e->next_sector = qimg_div_round_up(end, VMDK_SECTOR);
    (void)node;
    return 0;
}

/* Hold the tables of compressed extent e in memory (lock held). */
static int stream_begin(struct qimg_image *node, struct vmdk_extent *e,
                        struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    size_t tb = (size_t)e->l2_size * 4;
    struct vmdk_stream *st;
    uint64_t bytes = 0;
    int ret = 0;

    if (e->stream)
        return 0;
    st = calloc(1, sizeof(*st));
    if (!st || !(st->gt = calloc(e->l1_size ? e->l1_size : 1, sizeof(*st->gt)))) {
        free(st);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    st->head_tables = !e->from_footer;
    for (uint32_t i = 0; i < e->l1_size && !ret; i++) {
        uint32_t sec = ((const uint32_t *)e->gd)[i];
        if (!sec)
            continue;
        bytes += tb;
        if (s->table_bytes + bytes > VMDK_MAX_TABLE_BYTES) {
            ret = qimg_error_set(err, -EFBIG, "Grain tables of the image "
                                 "exceed %llu MiB", VMDK_MAX_TABLE_BYTES >> 20);
            break;
        }
        st->gt[i] = malloc(tb);
        if (!st->gt[i]) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            break;
        }
        ret = vmdk_gt_entries(node, e, i, 0, st->gt[i], e->l2_size, err);
    }
    e->stream = st;
    if (!ret && !st->head_tables)
        ret = sealed_end(node, e, err);
    if (ret < 0) {
        vmdk_stream_free(e);
        return ret;
    }
    s->table_bytes += bytes;
    return 0;
}

/* Set one entry: in memory, and through to the head tables. */
static int stream_set(struct qimg_image *node, struct vmdk_extent *e,
                      const struct vmdk_lookup *l, uint32_t v,
                      struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint32_t **t = &st->gt[l->l1_index];

    if (!*t) {
        *t = calloc(e->l2_size, sizeof(**t));
        if (!*t)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    (*t)[l->l2_index] = v;
    st->dirty = true;
    if (st->head_tables && ((const uint32_t *)e->gd)[l->l1_index])
        return vmdk_set_gte(node, e, l, 1, &v, err);
    return 0;
}

int vmdk_stream_zero(struct qimg_image *node, struct vmdk_extent *e,
                     const struct vmdk_lookup *l, struct qimg_error *err)
{
    int ret = stream_begin(node, e, err);
    if (!ret)
        ret = forward_advance(e, l->l1_index, err);
    return ret < 0 ? ret : stream_set(node, e, l, VMDK_GTE_ZEROED, err);
}

/*
 * Append one compressed grain (cdata from vmdk_compress_grain, or NULL to
 * compress buf here) for guest bytes [off, off+len) of extent e.
 */
int vmdk_write_compressed(struct qimg_image *node, struct vmdk_extent *e,
                          uint64_t off, size_t len, const void *buf,
                          const void *cdata, size_t clen,
                          struct qimg_error *err)
{
    uint64_t gb = e->grain_sectors * VMDK_SECTOR;
    uint64_t eoff = off - e->start * VMDK_SECTOR, host;
    uint8_t *data = NULL;
    struct vmdk_lookup l;
    ssize_t n;
    int ret;

    if (!e->grain_sectors || eoff % gb || len > gb ||
        (len < gb && eoff + len != e->sectors * VMDK_SECTOR) || !e->has_marker)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    data = malloc(2 * gb);
    if (!data)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (cdata) {
        memcpy(data + MARKER_SIZE, (const uint8_t *)cdata + MARKER_SIZE,
               clen - MARKER_SIZE);
        n = (ssize_t)clen;
    } else {
        n = vmdk_compress_grain(node, buf, len, data, err);
    }
    if (n <= 0) {
        free(data);
        return n < 0 ? (int)n : qimg_error_set(err, -EINVAL, "%s",
                                               strerror(EINVAL));
    }
    qimg_st_le64(data, off / VMDK_SECTOR);
    qimg_st_le32(data + 8, (uint32_t)(n - MARKER_SIZE));
    pthread_mutex_lock(&node->lock);
    ret = stream_begin(node, e, err);
    if (!ret)
        ret = vmdk_lookup(node, e, eoff / VMDK_SECTOR, &l, err);
    if (!ret && l.state == VMDK_GRAIN_DATA) {
        qimg_message(QIMG_MSG_ERROR, "Could not write to allocated cluster "
                     "for streamOptimized\n");
        ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
    } else if (!ret && l.state == VMDK_GRAIN_ERROR) {
        ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    } else if (!ret && node->backing && !vmdk_cid_valid(node)) {
        ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    }
    if (!ret)
        ret = forward_advance(e, l.l1_index, err);
    if (!ret && e->next_sector >= VMDK_EXTENT_MAX_SECTORS)
        ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    if (!ret) {
        host = e->next_sector * VMDK_SECTOR;
        ret = e->file->ops->pwrite(e->file, host, (size_t)n, data, err);
        if (!ret) {
            e->next_sector = qimg_div_round_up(host + (uint64_t)n, VMDK_SECTOR);
            ret = stream_set(node, e, &l, (uint32_t)(host / VMDK_SECTOR), err);
        }
    }
    pthread_mutex_unlock(&node->lock);
    free(data);
    return ret;
}

/* ---- end of stream -------------------------------------------------------------- */

static void put_marker(uint8_t *sec, uint64_t val, uint32_t type)
{
    memset(sec, 0, VMDK_SECTOR);
    qimg_st_le64(sec, val);
    qimg_st_le32(sec + 12, type);
}

/* magic and header of e with gd as the directory (the footer's or
 * GD_AT_END for the primary header), into a zeroed sector. */
static void put_header(uint8_t *sec, const struct vmdk_extent *e, uint64_t gd)
{
    memset(sec, 0, VMDK_SECTOR);
    qimg_st_be32(sec, VMDK4_MAGIC);
    qimg_st_le32(sec + 4, e->version);
    qimg_st_le32(sec + 8, e->flags & ~VMDK4_FLAG_RGD);
    qimg_st_le64(sec + 12, e->sectors);
    qimg_st_le64(sec + 20, e->grain_sectors);
    qimg_st_le64(sec + 28, e->desc_sector);
    qimg_st_le64(sec + 36, e->desc_sectors);
    qimg_st_le32(sec + 44, e->l2_size);
    qimg_st_le64(sec + 48, 0);
    qimg_st_le64(sec + 56, gd);
    qimg_st_le64(sec + 64, e->grain_offset);
    sec[73] = '\n';
    sec[74] = ' ';
    sec[75] = '\r';
    sec[76] = '\n';
    qimg_st_le16(sec + 77, VMDK4_COMPRESSION_DEFLATE);
}

static bool table_used(const uint32_t *t, uint32_t n)
{
    for (uint32_t i = 0; t && i < n; i++)
        if (t[i])
            return true;
    return false;
}

static uint64_t gt_sectors(const struct vmdk_extent *e)
{
    return qimg_div_round_up((uint64_t)e->l2_size * 4, VMDK_SECTOR);
}

static uint64_t gd_sectors(const struct vmdk_extent *e)
{
    return qimg_div_round_up((uint64_t)e->l1_size * 4, VMDK_SECTOR);
}

/* Grain table gt after its marker at sector pos (buf: 1 + its sectors). */
static int emit_table(struct vmdk_extent *e, uint8_t *buf, uint64_t pos,
                      const uint32_t *gt, struct qimg_error *err)
{
    uint64_t gt_sec = gt_sectors(e);

    put_marker(buf, gt_sec, VMDK_MARKER_GT);
    memset(buf + VMDK_SECTOR, 0, gt_sec * VMDK_SECTOR);
    for (uint32_t j = 0; j < e->l2_size; j++)
        qimg_st_le32(buf + VMDK_SECTOR + 4 * (size_t)j, gt[j]);
    return e->file->ops->pwrite(e->file, pos * VMDK_SECTOR,
                                (size_t)((1 + gt_sec) * VMDK_SECTOR), buf, err);
}

/* Directory gd after its marker at sector pos (buf: 1 + its sectors),
 * then the footer marker, the footer and the end-of-stream marker; *end
 * is the sector after them. */
static int emit_end(struct vmdk_extent *e, uint8_t *buf, uint64_t pos,
                    const uint32_t *gd, uint64_t *end, struct qimg_error *err)
{
    uint64_t gd_sec = gd_sectors(e);
    uint8_t tail[3 * VMDK_SECTOR];
    int ret;

    put_marker(buf, gd_sec, VMDK_MARKER_GD);
    memset(buf + VMDK_SECTOR, 0, gd_sec * VMDK_SECTOR);
    for (uint32_t i = 0; i < e->l1_size; i++)
        qimg_st_le32(buf + VMDK_SECTOR + 4 * (size_t)i, gd[i]);
    ret = e->file->ops->pwrite(e->file, pos * VMDK_SECTOR,
                               (size_t)((1 + gd_sec) * VMDK_SECTOR), buf, err);
    if (ret < 0)
        return ret;
    put_marker(tail, 1, VMDK_MARKER_FOOTER);
    put_header(tail + VMDK_SECTOR, e, pos + 1);
    memset(tail + 2 * VMDK_SECTOR, 0, VMDK_SECTOR);     /* EOS */
    pos += 1 + gd_sec;
    *end = pos + 3;
    return e->file->ops->pwrite(e->file, pos * VMDK_SECTOR, sizeof(tail), tail,
                                err);
}

static uint8_t *meta_buf(const struct vmdk_extent *e)
{
    return calloc(1, (size_t)((1 + QIMG_MAX(gt_sectors(e), gd_sectors(e))) *
                              VMDK_SECTOR));
}

/* Append tables, directory, footer and end-of-stream at the cursor, then
 * point the header at the footer (lock held). */
static int seal(struct qimg_image *node, struct vmdk_extent *e,
                struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint64_t start = e->next_sector, pos = start;
    uint8_t *buf = meta_buf(e);
    uint32_t *gd = calloc(e->l1_size ? e->l1_size : 1, sizeof(*gd));
    uint8_t hdr[VMDK_SECTOR];
    int ret = 0;

    (void)node;
    if (!buf || !gd) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < e->l1_size && !ret; i++) {
        if (!table_used(st->gt[i], e->l2_size))
            continue;
        gd[i] = (uint32_t)(pos + 1);
        ret = emit_table(e, buf, pos, st->gt[i], err);
        pos += 1 + gt_sectors(e);
    }
    if (!ret)
        ret = emit_end(e, buf, pos, gd, &pos, err);
    if (!ret)
        ret = e->file->ops->truncate(e->file, pos * VMDK_SECTOR,
                                     QIMG_PREALLOC_OFF, err);
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    /* only now is the header switched to the footer */
    if (!ret) {
        put_header(hdr, e, VMDK4_GD_AT_END);
        ret = e->file->ops->pwrite(e->file, 0, 4 + VMDK4_HEADER_SIZE, hdr, err);
    }
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    if (!ret) {
        st->dirty = false;
        st->head_tables = false;
        e->from_footer = true;
        /* grains written later go over this end and a new one follows */
        e->next_sector = start;
    }
out:
    free(gd);
    free(buf);
    return ret;
}

/* ---- written forward -------------------------------------------------------- */

/*
 * The head of a stream written forward (vmdk_create_stream set up e): the
 * header (directory at the end) in sector 0, the descriptor after it;
 * grains follow from e->grain_offset (the storage writes the gap as
 * zeroes).
 */
int vmdk_stream_start(struct qimg_image *node, struct vmdk_extent *e,
                      const char *desc, size_t len, struct qimg_error *err)
{
    struct vmdk_stream *st = calloc(1, sizeof(*st));
    uint8_t *head = calloc(1, VMDK_SECTOR + len);
    int ret;

    (void)node;
    if (!st || !head ||
        !(st->gt = calloc(e->l1_size ? e->l1_size : 1, sizeof(*st->gt))) ||
        !(e->gd = calloc(e->l1_size ? e->l1_size : 1, sizeof(uint32_t)))) {
        if (st)
            free(st->gt);
        free(st);
        free(head);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    st->forward = true;
    e->stream = st;
    put_header(head, e, VMDK4_GD_AT_END);
    memcpy(head + VMDK_SECTOR, desc, len);
    ret = e->file->ops->pwrite(e->file, 0, VMDK_SECTOR + len, head, err);
    free(head);
    e->next_sector = e->grain_offset;
    return ret;
}

/* Write the table being filled (if anything is in it) at the cursor and
 * drop it: its directory entry is all that is kept (lock held). */
static int forward_flush_table(struct vmdk_extent *e, struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint32_t i = st->cur;
    uint8_t *buf;
    int ret;

    if (i >= e->l1_size || !st->gt[i])
        return 0;
    buf = meta_buf(e);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = emit_table(e, buf, e->next_sector, st->gt[i], err);
    free(buf);
    if (ret < 0)
        return ret;
    ((uint32_t *)e->gd)[i] = (uint32_t)(e->next_sector + 1);
    e->next_sector += 1 + gt_sectors(e);
    free(st->gt[i]);
    st->gt[i] = NULL;
    return 0;
}

/* Before a grain of table l1 is written forward: tables before it are
 * done and go out; going back is impossible on a pipe (lock held). */
static int forward_advance(struct vmdk_extent *e, uint32_t l1,
                           struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    int ret;

    if (!st || !st->forward)
        return 0;
    if (st->ended)
        return qimg_error_set(err, -ESPIPE, "Cannot write to a stream after "
                              "its end");
    if (l1 < st->cur)
        return qimg_error_set(err, -ESPIPE, "Cannot write back in a stream: "
                              "grain table %" PRIu32 " was already written",
                              l1);
    if (l1 == st->cur)
        return 0;
    ret = forward_flush_table(e, err);
    if (!ret)
        st->cur = l1;
    return ret;
}

/* The end of a stream written forward: last table, directory, footer and
 * end-of-stream marker after the last grain; nothing is rewritten. */
static int forward_end(struct vmdk_extent *e, struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint8_t *buf;
    uint64_t end;
    int ret;

    if (st->ended)
        return 0;
    ret = forward_flush_table(e, err);
    if (ret < 0)
        return ret;
    buf = meta_buf(e);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = emit_end(e, buf, e->next_sector, e->gd, &end, err);
    free(buf);
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    if (!ret) {
        st->ended = true;
        e->next_sector = end;
    }
    return ret;
}

/*
 * End the stream of every writable compressed extent: at convert's
 * end-of-stream call (eof; even when nothing was written, so that a
 * converted empty disk is a complete stream too) and at close after
 * writes.
 */
int vmdk_stream_finish(struct qimg_image *node, bool eof,
                       struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret = 0;

    if (node->read_only)
        return 0;
    pthread_mutex_lock(&node->lock);
    for (size_t i = 0; i < s->n_ext && !ret; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (!e->compressed || e->kind != VMDK_KIND_SPARSE || !e->has_marker)
            continue;
        if (!e->stream && !eof)
            continue;
        /* forward: only the end-of-stream call ends it, never close */
        if (e->stream && e->stream->forward) {
            if (eof)
                ret = forward_end(e, err);
            continue;
        }
        ret = stream_begin(node, e, err);
        if (!ret && (e->stream->dirty || (eof && e->stream->head_tables)))
            ret = seal(node, e, err);
    }
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/* ---- read forward ------------------------------------------------------------- */

/* Metadata a marker may announce after it (sectors): the largest grain
 * directory (VMDK_MAX_GD_ENTRIES entries) or table. */
#define STREAM_MAX_META_SECTORS ((uint64_t)VMDK_MAX_GD_ENTRIES * 4 / VMDK_SECTOR)

int vmdk_stream_read_begin(struct vmdk_extent *e, struct qimg_error *err)
{
    struct vmdk_stream *st = calloc(1, sizeof(*st));

    if (!st || !(st->grain_buf = malloc(e->grain_sectors * VMDK_SECTOR))) {
        free(st);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    st->reader = true;
    st->rpos = e->grain_offset * VMDK_SECTOR;
    st->next_grain = st->have_grain = UINT64_MAX;
    e->stream = st;
    return 0;
}

bool vmdk_stream_reading(const struct vmdk_extent *e)
{
    return e->stream && e->stream->reader;
}

/* Parse markers at rpos until one announces a grain (next_grain) or the
 * stream ends (lock held). */
static int next_marker(struct vmdk_extent *e, struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint8_t m[16];
    int ret;

    while (st->next_grain == UINT64_MAX && !st->at_end) {
        uint64_t val;
        uint32_t size, type;

        ret = e->file->ops->pread(e->file, st->rpos, sizeof(m), m, err);
        if (ret < 0)
            return ret;
        val = qimg_ld_le64(m);
        size = qimg_ld_le32(m + 8);
        type = qimg_ld_le32(m + 12);
        if (size) {
            if (val % e->grain_sectors || val / e->grain_sectors >=
                qimg_div_round_up(e->sectors, e->grain_sectors))
                return qimg_error_set(err, -EINVAL, "Invalid grain marker at "
                                      "offset %" PRIu64, st->rpos);
            st->next_grain = val / e->grain_sectors;
        } else if (type == VMDK_MARKER_EOS) {
            /* past the end of a pipe reads as zeroes, i.e. as this
             * marker: only after the footer is it the real end (a cut
             * download must not pass as a disk with zeroes at its end) */
            if (!st->footer_seen)
                return qimg_error_set(err, -EIO, "The stream ended at offset "
                                      "%" PRIu64 " before its footer",
                                      st->rpos);
            st->at_end = true;
        } else if (type == VMDK_MARKER_GT || type == VMDK_MARKER_GD ||
                   type == VMDK_MARKER_FOOTER) {
            if (val > STREAM_MAX_META_SECTORS)
                return qimg_error_set(err, -EINVAL, "Invalid stream marker "
                                      "at offset %" PRIu64, st->rpos);
            st->rpos += (1 + val) * VMDK_SECTOR;
            st->footer_seen |= type == VMDK_MARKER_FOOTER;
        } else {
            return qimg_error_set(err, -EINVAL, "Invalid stream marker at "
                                  "offset %" PRIu64, st->rpos);
        }
    }
    return 0;
}

/* Take the grain whose marker is at rpos: inflate it (want) or pass it. */
static int take_grain(struct vmdk_extent *e, bool want, struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint64_t gb = e->grain_sectors * VMDK_SECTOR;
    uint64_t start = st->next_grain * gb, ext_bytes = e->sectors * VMDK_SECTOR;
    uint8_t m[MARKER_SIZE];
    int ret;

    if (st->next_grain < st->last_grain)
        return qimg_error_set(err, -EINVAL, "Grain %" PRIu64 " of the stream "
                              "is out of order: a stream is read forward only",
                              st->next_grain);
    if (want) {
        ret = vmdk_read_compressed(e, st->rpos, 0,
                                   (size_t)QIMG_MIN(gb, ext_bytes - start),
                                   st->grain_buf, err);
        if (ret < 0)
            return ret;
        st->have_grain = st->next_grain;
    }
    ret = e->file->ops->pread(e->file, st->rpos, sizeof(m), m, err);
    if (ret < 0)
        return ret;
    st->rpos = qimg_div_round_up(st->rpos + MARKER_SIZE + qimg_ld_le32(m + 8),
                                 VMDK_SECTOR) * VMDK_SECTOR;
    st->last_grain = st->next_grain + 1;
    st->next_grain = UINT64_MAX;
    return 0;
}

/* One grain's part [in, in + n) of grain index g into out. */
static int read_grain_part(struct vmdk_extent *e, uint64_t g, uint64_t in,
                           size_t n, uint8_t *out, struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    int ret;

    if (st->have_grain == g) {
        memcpy(out, st->grain_buf + in, n);
        return 0;
    }
    if (g < st->last_grain)
        return qimg_error_set(err, -ESPIPE, "Cannot read back in a stream: "
                              "grain %" PRIu64 " was passed (the stream is "
                              "read forward only)", g);
    for (;;) {
        ret = next_marker(e, err);
        if (ret < 0)
            return ret;
        if (st->at_end || st->next_grain > g) {
            /* no grain for g in the stream: zeroes */
            memset(out, 0, n);
            return 0;
        }
        ret = take_grain(e, st->next_grain == g, err);
        if (ret < 0)
            return ret;
        if (st->have_grain == g) {
            memcpy(out, st->grain_buf + in, n);
            return 0;
        }
    }
}

/* Guest bytes [eoff, eoff + len) of e, read forward from the stream. */
int vmdk_stream_read(struct qimg_image *node, struct vmdk_extent *e,
                     uint64_t eoff, size_t len, void *buf,
                     struct qimg_error *err)
{
    uint64_t gb = e->grain_sectors * VMDK_SECTOR;
    uint8_t *p = buf;
    int ret = 0;

    pthread_mutex_lock(&node->lock);
    while (len && !ret) {
        uint64_t in = eoff % gb;
        size_t n = (size_t)QIMG_MIN((uint64_t)len, gb - in);
        ret = read_grain_part(e, eoff / gb, in, n, p, err);
        p += n;
        eoff += n;
        len -= n;
    }
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/*
 * Block status of a stream read forward, from what the stream has shown
 * so far: up to the next grain marker nothing is allocated, the grain at
 * hand and anything not yet known is data.  Only looks ahead (metadata
 * markers are passed, grains are not), so a status walk before the copy
 * leaves the reads their grains.
 */
int vmdk_stream_status(struct qimg_image *node, struct vmdk_extent *e,
                       uint64_t eoff, uint64_t len, bool *data, uint64_t *n,
                       struct qimg_error *err)
{
    struct vmdk_stream *st = e->stream;
    uint64_t gb = e->grain_sectors * VMDK_SECTOR, g = eoff / gb;
    struct qimg_error ignored;

    *data = true;
    *n = QIMG_MIN(len, gb - eoff % gb);
    pthread_mutex_lock(&node->lock);
    /* a broken marker reads as data here: the read that follows reports
     * it with its reason (a status error has only convert's wording) */
    if (st->have_grain != g && g >= st->last_grain &&
        next_marker(e, &ignored) == 0) {
        if (st->at_end) {
            *data = false;
            *n = len;
        } else if (st->next_grain > g) {
            *data = false;
            *n = QIMG_MIN(len, st->next_grain * gb - eoff);
        }
    }
    pthread_mutex_unlock(&node->lock);
    (void)err;
    return 0;
}
