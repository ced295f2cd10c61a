/*
 * qcow-cluster.c - qcow v1 mapping and data path.
 *
 * Compressed clusters do not fit the table helper's data path, so this
 * file has its own loops over the shared tables (L1 whole, L2 tables in
 * the shared cache) and the end-of-file allocator:
 *
 * - Reads map a run of clusters under node->lock and do the I/O (and the
 *   inflating of compressed clusters) outside it.
 * - Writes go cluster by cluster, as QEMU's: an unallocated cluster gets
 *   a new L2 table first when its range has none (at the end of the file,
 *   cluster aligned), then a cluster at the end of the file, the file
 *   grown to hold it whole and only the written bytes written (the rest
 *   reads as zeroes, not from the backing file, as in QEMU: images with a
 *   backing file use 512-byte clusters).  A compressed cluster partly
 *   overwritten is inflated into its new cluster first.  The data is
 *   written before the L2 entry points at it, a new L2 table flushed
 *   before the L1 entry does.
 * - Compressed writes put the deflated bytes at the end of the file, at
 *   the next sector boundary (QEMU sees file lengths in whole sectors), and
 *   record their size in the entry.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "core/util.h"
#include "fmt/qcow/qcow.h"

/* The L2 table of guest offset off, *t NULL when its L1 entry is 0.
 * Called with node->lock held. */
static int l2_table(struct qimg_image *node, uint64_t off,
                    struct qimg_table **t, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t l1_index = off >> (s->l2_bits + s->cluster_bits);
    uint64_t l2_off;

    *t = NULL;
    if (l1_index >= s->l1.n)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    l2_off = qimg_table_get(&s->l1, l1_index);
    if (!l2_off)
        return 0;
    /* A table that wraps is a read QEMU's block layer refuses: EIO. */
    if (!qimg_range_ok(l2_off, (uint64_t)s->l2_size * 8, QIMG_MAX_LENGTH))
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return qimg_table_cache_get(&s->l2, l2_off, t, err);
}

static uint64_t l2_index(const struct qcow_state *s, uint64_t off)
{
    return (off >> s->cluster_bits) & (s->l2_size - 1);
}

/* One run of clusters from off: entries of one kind (unallocated,
 * compressed, or normal and contiguous), inside one L2 table. */
struct qcow_run {
    uint64_t entry;     /* the first cluster's L2 entry (0: unallocated) */
    uint64_t len;       /* guest bytes from off */
};

static int find_run(struct qimg_image *node, uint64_t off, uint64_t len,
                    struct qcow_run *r, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, in = off & (cs - 1);
    uint64_t i = l2_index(s, off), end, n = 1;
    struct qimg_table *t;
    int ret = l2_table(node, off, &t, err);

    if (ret < 0)
        return ret;
    end = QIMG_MIN(i + qimg_div_round_up(in + len, cs), (uint64_t)s->l2_size);
    r->entry = t ? qimg_table_get(t, i) : 0;
    if (!t)
        n = end - i;
    /* Compressed clusters are reported one by one; the others merge. */
    for (; t && i + n < end && !(r->entry & QCOW_OFLAG_COMPRESSED); n++) {
        uint64_t e = qimg_table_get(t, i + n);
        if (r->entry ? e != r->entry + n * cs : e != 0)
            break;
    }
    r->len = QIMG_MIN(len, n * cs - in);
    return 0;
}

/* Inflate a compressed entry's cluster into out (cluster_size bytes). */
static int read_compressed(struct qimg_image *node, uint64_t entry,
                           uint8_t *out, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t coff = entry & s->cluster_offset_mask;
    size_t csize = (size_t)((entry >> (63 - s->cluster_bits)) &
                            (s->cluster_size - 1));
    uint8_t *in = malloc(QIMG_MAX(csize, 1));
    z_stream z;
    int ret, zr;

    if (!in)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_storage_event(node->file, QIMG_EV_READ_COMPRESSED);
    ret = node->file->ops->pread(node->file, coff, csize, in, err);
    if (ret < 0)
        goto out;
    memset(&z, 0, sizeof(z));
    ret = -EIO;
    if (inflateInit2(&z, QCOW_DEFLATE_WINDOW_BITS) != Z_OK)
        goto out;
    z.next_in = in;
    z.avail_in = (uInt)csize;
    z.next_out = out;
    z.avail_out = s->cluster_size;
    zr = inflate(&z, Z_FINISH);
    /* As QEMU: the whole cluster, the stream ended or not. */
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR) && !z.avail_out)
        ret = 0;
    inflateEnd(&z);
out:
    free(in);
    if (ret == -EIO)
        qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return ret;
}

/* Reads; of whole sectors when the image is encrypted. */
static int read_guest(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t *p = buf, *cluster = NULL;
    int ret = 0;

    while (len && !ret) {
        struct qcow_run r;
        pthread_mutex_lock(&node->lock);
        ret = find_run(node, off, len, &r, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            break;
        size_t n = (size_t)r.len;
        if (!r.entry) {
            if (node->backing)
                qimg_storage_event(node->file, QIMG_EV_READ_BACKING_AIO);
            ret = qimg_read_backing(node, off, n, p, err);
        } else if (r.entry & QCOW_OFLAG_COMPRESSED) {
            if (!cluster && !(cluster = malloc(s->cluster_size))) {
                ret = qimg_error_set(err, -ENOMEM, "Out of memory");
                break;
            }
            ret = read_compressed(node, r.entry, cluster, err);
            if (!ret)
                memcpy(p, cluster + (off & (s->cluster_size - 1)), n);
        } else if (r.entry & 511) {
            ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        } else {
            qimg_storage_event(node->file, QIMG_EV_READ_AIO);
            ret = node->file->ops->pread(node->file,
                                         r.entry + (off & (s->cluster_size - 1)),
                                         n, p, err);
            if (!ret && s->crypto)
                ret = qimg_crypto_decrypt(s->crypto, off, p, n, err);
        }
        off += n;
        p += n;
        len -= n;
    }
    free(cluster);
    return ret;
}

static bool unaligned(uint64_t off, size_t len)
{
    return (off | len) & (QIMG_CRYPTO_SECTOR_SIZE - 1);
}

int qcow_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
               struct qimg_error *err)
{
    struct qcow_state *s = node->state;

    /* A sector decrypts whole: others are read widened. */
    if (s->crypto && unaligned(off, len))
        return qimg_rmw_pread(node, off, len, buf, QIMG_CRYPTO_SECTOR_SIZE,
                              read_guest, err);
    return read_guest(node, off, len, buf, err);
}

int qcow_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                      struct qimg_extent *ext, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    struct qcow_run r;
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = find_run(node, off, len, &r, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    memset(ext, 0, sizeof(*ext));
    ext->length = r.len;
    if (!r.entry)
        return 0;
    ext->flags = QIMG_BS_ALLOCATED | QIMG_BS_DATA;
    /* Compressed or encrypted data has no offset a reader could use. */
    if ((r.entry & QCOW_OFLAG_COMPRESSED) || s->crypt_method)
        return 0;
    ext->flags |= QIMG_BS_OFFSET_VALID;
    ext->host_offset = r.entry + (off & (s->cluster_size - 1));
    ext->host_file = node->file->filename;
    return 0;
}

int qcow_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

/*
 * Room for len bytes at the end of the file, as QEMU's qcow allocates:
 * after whatever the file holds now (a table a hostile L1 entry placed
 * past the end grew it), so nothing written there is cut or overlapped.
 * Called with node->lock held.
 */
static int alloc_at_end(struct qimg_image *node, uint64_t len, uint64_t align,
                        uint64_t *off, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    int64_t fsize = node->file->ops->get_size(node->file);

    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "%s", strerror((int)-fsize));
    if ((uint64_t)fsize > s->alloc.end)
        s->alloc.end = (uint64_t)fsize;
    return qimg_alloc_append(&s->alloc, len, align, off, err);
}

/*
 * The L2 table of off, a new one (zeroed, written, flushed, then linked
 * from L1) when there is none.  Called with node->lock held.
 */
static int l2_table_alloc(struct qimg_image *node, uint64_t off,
                          struct qimg_table **t, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t l1_index = off >> (s->l2_bits + s->cluster_bits), l2_off;
    int ret = l2_table(node, off, t, err);

    if (ret < 0 || *t)
        return ret;
    ret = alloc_at_end(node, (uint64_t)s->l2_size * 8, s->cluster_size,
                       &l2_off, err);
    qimg_storage_event(node->file, QIMG_EV_L2_LOAD);
    if (!ret)
        ret = qimg_table_cache_new(&s->l2, l2_off, t, err);
    if (!ret)
        ret = qimg_table_store_all(*t, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        qimg_table_cache_drop(&s->l2, l2_off);
        *t = NULL;
        return ret;
    }
    qimg_table_set(&s->l1, l1_index, l2_off);
    qimg_storage_event(node->file, QIMG_EV_L1_UPDATE);
    ret = qimg_table_store(&s->l1, l1_index, 1, err);
    if (ret < 0)
        *t = NULL;
    return ret;
}

/* Point off's entry at v. */
static int set_entry(struct qimg_image *node, struct qimg_table *t,
                     uint64_t off, uint64_t v, struct qimg_error *err)
{
    uint64_t i = l2_index(node->state, off);

    qimg_storage_event(node->file, (v & QCOW_OFLAG_COMPRESSED)
                                       ? QIMG_EV_L2_UPDATE_COMPRESSED
                                       : QIMG_EV_L2_UPDATE);
    qimg_table_set(t, i, v);
    return qimg_table_store(t, i, 1, err);
}

/*
 * Write n bytes at off (inside one cluster) into a new cluster: entry was
 * the old one (0 or compressed).  Called with node->lock held.
 */
static int write_new_cluster(struct qimg_image *node, struct qimg_table *t,
                             uint64_t entry, uint64_t off, size_t n,
                             const uint8_t *data, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, in = off & (cs - 1), host;
    uint8_t *cluster = NULL;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC);
    ret = alloc_at_end(node, cs, cs, &host, err);
    if (ret < 0)
        return ret;
    if ((entry & QCOW_OFLAG_COMPRESSED) && n < cs) {
        /* The rest of the cluster keeps its old content. */
        cluster = malloc(cs);
        if (!cluster)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = read_compressed(node, entry, cluster, err);
        if (!ret) {
            memcpy(cluster + in, data, n);
            qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
            ret = node->file->ops->pwrite(node->file, host, cs, cluster, err);
        }
        free(cluster);
    } else if (s->crypto && n < cs) {
        /* As QEMU: the sectors not written hold encrypted zeroes. */
        cluster = calloc(1, cs);
        if (!cluster)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = qimg_crypto_encrypt(s->crypto, off - in, cluster, cs, err);
        if (!ret) {
            memcpy(cluster + in, data, n);
            qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
            ret = node->file->ops->pwrite(node->file, host, cs, cluster, err);
        }
        free(cluster);
    } else {
        /* Grown to hold the cluster: the bytes not written read as 0. */
        ret = node->file->ops->truncate(node->file, host + cs,
                                        QIMG_PREALLOC_OFF, err);
        if (!ret) {
            qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
            ret = node->file->ops->pwrite(node->file, host + in, n, data, err);
        }
    }
    if (ret < 0)
        return ret;
    return set_entry(node, t, off, host, err);
}

/* Writes of whole sectors (off and len multiples of 512). */
static int write_sectors(struct qimg_image *node, uint64_t off, size_t len,
                         const void *buf, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    const uint8_t *p = buf;

    while (len) {
        uint64_t cs = s->cluster_size, in = off & (cs - 1), entry = 0;
        size_t n = (size_t)QIMG_MIN((uint64_t)len, cs - in);
        struct qimg_table *t;
        int ret;

        pthread_mutex_lock(&node->lock);
        ret = l2_table_alloc(node, off, &t, err);
        if (!ret) {
            entry = qimg_table_get(t, l2_index(s, off));
            if (!entry || (entry & QCOW_OFLAG_COMPRESSED))
                ret = write_new_cluster(node, t, entry, off, n, p, err);
        }
        pthread_mutex_unlock(&node->lock);
        if (!ret && entry && !(entry & QCOW_OFLAG_COMPRESSED)) {
            if (entry & 511) {
                ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
            } else {
                qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
                ret = node->file->ops->pwrite(node->file, entry + in, n, p,
                                              err);
            }
        }
        if (ret < 0)
            return ret;
        off += n;
        p += n;
        len -= n;
    }
    return 0;
}

/* Whole sectors, encrypted first (in a copy) when the image is. */
static int write_aligned(struct qimg_image *node, uint64_t off, size_t len,
                         const void *buf, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t *enc;
    int ret;

    if (!s->crypto)
        return write_sectors(node, off, len, buf, err);
    enc = malloc(QIMG_MAX(len, 1));
    if (!enc)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memcpy(enc, buf, len);
    ret = qimg_crypto_encrypt(s->crypto, off, enc, len, err);
    if (!ret)
        ret = write_sectors(node, off, len, enc, err);
    free(enc);
    return ret;
}

/*
 * QEMU's block layer writes qcow images in whole sectors, reading the
 * rest of a partial sector first (through the backing file where it is
 * unallocated): a partial write of a new 512-byte cluster keeps the
 * backing file's bytes around it.
 */
int qcow_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                const void *buf, struct qimg_error *err)
{
    struct qcow_state *s = node->state;

    if (unaligned(off, len))
        return qimg_rmw_pwrite(node, off, len, buf, QIMG_CRYPTO_SECTOR_SIZE,
                               &s->rmw_lock, read_guest, write_aligned, err);
    return write_aligned(node, off, len, buf, err);
}

/* ---- compressed clusters (convert -c) ------------------------------------ */

ssize_t qcow_compress_cluster(struct qimg_image *node, const void *buf,
                              size_t len, void *out, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    const uint8_t *in = buf;
    uint8_t *padded = NULL;
    z_stream z;
    ssize_t n;
    int zr;

    if (len > s->cluster_size)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    if (len < s->cluster_size) {
        /* The image's tail: compressed as a whole cluster, zero padded. */
        padded = calloc(1, s->cluster_size);
        if (!padded)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        memcpy(padded, buf, len);
        in = padded;
    }
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                     QCOW_DEFLATE_WINDOW_BITS, QCOW_DEFLATE_MEM_LEVEL,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        free(padded);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    z.next_in = (Bytef *)in;
    z.avail_in = s->cluster_size;
    z.next_out = out;
    z.avail_out = s->cluster_size;
    zr = deflate(&z, Z_FINISH);
    n = (ssize_t)(s->cluster_size - z.avail_out);
    deflateEnd(&z);
    free(padded);
    /* Stored as is when it does not shrink (QEMU's test). */
    if (zr != Z_STREAM_END || (size_t)n >= s->cluster_size)
        return 0;
    return n;
}

int qcow_pwrite_compressed_data(struct qimg_image *node, uint64_t off,
                                size_t len, const void *buf, const void *cdata,
                                size_t clen, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    struct qimg_table *t;
    uint64_t host;
    int ret;

    if (!clen)
        return qcow_pwrite(node, off, len, buf, err);
    pthread_mutex_lock(&node->lock);
    ret = l2_table_alloc(node, off, &t, err);
    if (!ret)
        ret = alloc_at_end(node, clen, 512, &host, err);
    if (!ret) {
        qimg_storage_event(node->file, QIMG_EV_WRITE_COMPRESSED);
        ret = node->file->ops->pwrite(node->file, host, clen, cdata, err);
    }
    if (!ret)
        ret = set_entry(node, t, off,
                        host | QCOW_OFLAG_COMPRESSED |
                            (uint64_t)clen << (63 - s->cluster_bits), err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

int qcow_pwrite_compressed(struct qimg_image *node, uint64_t off, size_t len,
                           const void *buf, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t *out;
    ssize_t clen;
    int ret;

    /* Whole clusters, or the image's tail.  QEMU refuses the empty write
     * qemu-img convert -c ends with (so it exits 1 without a message). */
    if ((off & (s->cluster_size - 1)) ||
        (len != s->cluster_size && (!len || off + len != node->size)))
        return qimg_error_set(err, -EINVAL, "%s", "");
    out = malloc(s->cluster_size);
    if (!out)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    clen = qcow_compress_cluster(node, buf, len, out, err);
    ret = clen < 0 ? (int)clen
                   : qcow_pwrite_compressed_data(node, off, len, buf, out,
                                                 (size_t)clen, err);
    free(out);
    return ret;
}
