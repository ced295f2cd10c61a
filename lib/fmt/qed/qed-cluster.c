/*
 * qed-cluster.c - QED's mapping and data path.
 *
 * Reads and block status go through the shared table helper with a map
 * callback.  Writes have their own loop, because QEMU's layout depends on
 * it: a run of clusters that one request finds unallocated in one L2
 * range gets contiguous clusters at the end of the file in one go, and a
 * new L2 table for it is allocated after those clusters, not before.  The
 * parts of new clusters the write does not cover are filled from the
 * backing file (zeroes without one, or for a zero cluster).
 *
 * Ordering (as QEMU's): without a backing file the need-check bit is set
 * before the first allocation and cleared at close, so that a crash is
 * repaired by the next writable open; with one, the new data is flushed
 * before the L2 entries point at it.  A new L2 table is written and
 * flushed before the L1 entry points at it.  Allocating writes hold
 * node->lock from lookup to table update; in-place writes and reads do
 * their I/O outside it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qed/qed.h"

enum qed_kind {
    QED_FOUND,          /* data clusters, contiguous in the file */
    QED_ZERO,           /* zero clusters */
    QED_UNALLOC,        /* unallocated entries of an existing L2 table */
    QED_NO_L2,          /* no L2 table for this range */
};

struct qed_run {
    enum qed_kind kind;
    uint64_t len;       /* guest bytes from the offset, > 0 */
    uint64_t host;      /* QED_FOUND: file offset of the guest offset */
    uint64_t l2_offset; /* QED_FOUND/ZERO/UNALLOC: the L2 table */
};

/*
 * How [off, off + len) maps, up to the end of its L2 range and of the
 * first run of entries of one kind (data clusters only while contiguous).
 * Called with node->lock held.
 */
static int qed_find(struct qimg_image *node, uint64_t off, uint64_t len,
                    struct qed_run *r, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, in_cluster = off & (cs - 1);
    uint64_t l1_index = off >> s->l1_shift;
    uint64_t range_end = (l1_index + 1) << s->l1_shift;
    uint64_t index, end, first, n;
    struct qimg_table *t;
    int ret;

    memset(r, 0, sizeof(*r));
    len = QIMG_MIN(len, range_end - off);
    if (l1_index >= s->l1.n)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    r->l2_offset = qimg_table_get(&s->l1, l1_index);
    if (!r->l2_offset) {
        r->kind = QED_NO_L2;
        r->len = len;
        return 0;
    }
    if (!qed_table_offset_ok(s, r->l2_offset))
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    ret = qimg_table_cache_get(&s->l2, r->l2_offset, &t, err);
    if (ret < 0)
        return ret;
    index = (off >> s->l2_shift) & s->l2_mask;
    end = QIMG_MIN(index + qimg_div_round_up(in_cluster + len, cs),
                   (uint64_t)s->table_nelems);
    first = qimg_table_get(t, index);
    for (n = 1; index + n < end; n++) {
        uint64_t e = qimg_table_get(t, index + n);
        if (first <= 1 ? e != first : e != first + n * cs)
            break;
    }
    if (first == 0) {
        r->kind = QED_UNALLOC;
    } else if (first == 1) {
        r->kind = QED_ZERO;
    } else if (qed_cluster_offset_ok(s, first)) {
        r->kind = QED_FOUND;
        r->host = first + in_cluster;
    } else {
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    }
    r->len = QIMG_MIN(len, n * cs - in_cluster);
    return 0;
}

/* The table helper's view: data, zero or "ask the backing file". */
static int qed_map(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_map_ext *m, struct qimg_error *err)
{
    struct qed_run r;
    int ret = qed_find(node, off, len, &r, err);

    if (ret < 0)
        return ret;
    m->len = r.len;
    m->host = r.host;
    m->kind = r.kind == QED_FOUND  ? QIMG_MAP_DATA
              : r.kind == QED_ZERO ? QIMG_MAP_ZERO
                                   : QIMG_MAP_UNALLOC;
    return 0;
}

int qed_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err)
{
    return qimg_table_pread_events(node, off, len, buf, qed_map, true, err);
}

int qed_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err)
{
    return qimg_table_block_status(node, off, len, ext, qed_map, false, err);
}

int qed_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

/* Guest bytes [off, off + len) for the fill of a new cluster. */
static int fill(struct qimg_image *node, enum qed_kind was, uint64_t off,
                size_t len, uint8_t *buf, struct qimg_error *err)
{
    /* A zero cluster reads as zeroes, whatever the backing file holds. */
    if (was == QED_ZERO || !node->backing) {
        memset(buf, 0, len);
        return 0;
    }
    qimg_storage_event(node->file, QIMG_EV_READ_BACKING_AIO);
    return qimg_read_backing(node, off, len, buf, err);
}

static int write_buf(struct qimg_image *node, uint64_t host, size_t len,
                     const void *buf, struct qimg_error *err)
{
    return len ? node->file->ops->pwrite(node->file, host, len, buf, err) : 0;
}

/* The copy-on-write fill of [off, off + len) of a new cluster, at host. */
static int write_cow(struct qimg_image *node, enum qed_kind was, uint64_t off,
                     size_t len, uint64_t host, uint8_t *buf,
                     struct qimg_error *err)
{
    int ret;

    if (!len)
        return 0;
    ret = fill(node, was, off, len, buf, err);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, QIMG_EV_COW_WRITE);
    return write_buf(node, host, len, buf, err);
}

/* Guest data: QEMU's write_aio event, then the write. */
static int write_data(struct qimg_image *node, uint64_t host, size_t len,
                      const void *buf, struct qimg_error *err)
{
    qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
    return write_buf(node, host, len, buf, err);
}

/*
 * Write data (n bytes at guest off) into the new clusters at host, which
 * start at the cluster holding off, the rest of them filled: the part
 * before it, the part after, then the data, as QEMU writes them.
 */
static int write_new_clusters(struct qimg_image *node, enum qed_kind was,
                              uint64_t off, size_t n, const uint8_t *data,
                              uint64_t host, uint64_t bytes,
                              struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t start = qimg_align_down(off, s->h.cluster_size);
    size_t head = (size_t)(off - start), tail = (size_t)(bytes - head - n);
    uint8_t *b = NULL;
    int ret;

    if (head || tail) {
        /* At most a cluster each (QED_MAX_TABLE_BYTES bounds clusters). */
        b = malloc(QIMG_MAX(head, tail));
        if (!b)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    ret = write_cow(node, was, start, head, host, b, err);
    if (!ret)
        ret = write_cow(node, was, off + n, tail, host + head + n, b, err);
    if (!ret)
        ret = write_data(node, host + head, n, data, err);
    free(b);
    return ret;
}

/*
 * Point nclusters L2 entries from guest off at first (a data offset,
 * advancing by a cluster, or the zero marker 1), in a new L2 table when
 * the range has none.
 */
static int link_clusters(struct qimg_image *node, const struct qed_run *r,
                         uint64_t off, uint64_t nclusters, uint64_t first,
                         struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t index = (off >> s->l2_shift) & s->l2_mask;
    uint64_t l1_index = off >> s->l1_shift, l2_offset = r->l2_offset;
    struct qimg_table *t;
    int ret;

    if (r->kind == QED_NO_L2) {
        ret = qimg_alloc_append(&s->alloc, s->table_bytes, 0, &l2_offset,
                                err);
        if (!ret)
            ret = qimg_table_cache_new(&s->l2, l2_offset, &t, err);
    } else {
        ret = qimg_table_cache_get(&s->l2, l2_offset, &t, err);
    }
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < nclusters; i++)
        qimg_table_set(t, index + i, first > 1 ? first + i * s->h.cluster_size
                                               : first);
    qimg_storage_event(node->file, QIMG_EV_L2_UPDATE);
    if (r->kind != QED_NO_L2)
        return qimg_table_store(t, index, nclusters, err);
    ret = qimg_table_store_all(t, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        qimg_table_cache_drop(&s->l2, l2_offset);
        return ret;
    }
    qimg_table_set(&s->l1, l1_index, l2_offset);
    qimg_storage_event(node->file, QIMG_EV_L1_UPDATE);
    return qimg_table_store(&s->l1, l1_index, 1, err);
}

/*
 * A write (data NULL: zeroes) over a run the lookup found without data
 * clusters.  Called with node->lock held.
 */
static int write_alloc(struct qimg_image *node, const struct qed_run *r,
                       uint64_t off, const uint8_t *data,
                       struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size;
    uint64_t head = off & (cs - 1);
    uint64_t nclusters = qimg_div_round_up(head + r->len, cs);
    uint64_t host = 1;   /* the zero marker, for zero writes */
    int ret;

    if (!data && r->kind == QED_ZERO)
        return 0;
    if (data) {
        ret = qimg_alloc_append(&s->alloc, nclusters * cs, 0, &host, err);
        if (ret < 0)
            return ret;
    }
    /* With a backing file the flush below keeps the image consistent. */
    if (!node->backing && !(s->h.features & QED_F_NEED_CHECK)) {
        ret = qed_set_need_check(node, true, err);
        if (ret < 0)
            return ret;
    }
    if (data) {
        ret = write_new_clusters(node, r->kind, off, (size_t)r->len, data,
                                 host, nclusters * cs, err);
        if (!ret && node->backing)
            ret = node->file->ops->flush(node->file, err);
        if (ret < 0)
            return ret;
    }
    return link_clusters(node, r, off, nclusters, host, err);
}

/* A zeroed buffer for writing zeroes into data clusters. */
#define QED_ZERO_BUF (1u << 20)

static int write_zero_data(struct qimg_image *node, uint64_t host,
                           uint64_t len, struct qimg_error *err)
{
    size_t n = (size_t)QIMG_MIN(len, (uint64_t)QED_ZERO_BUF);
    void *z = calloc(1, n);
    int ret = 0;

    if (!z)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (len && !ret) {
        size_t k = (size_t)QIMG_MIN(len, (uint64_t)n);
        ret = node->file->ops->pwrite(node->file, host, k, z, err);
        host += k;
        len -= k;
    }
    free(z);
    return ret;
}

/* data NULL: whole clusters of zeroes (zero markers where unallocated). */
static int qed_write(struct qimg_image *node, uint64_t off, uint64_t len,
                     const uint8_t *data, struct qimg_error *err)
{
    while (len) {
        struct qed_run r;
        int ret;

        pthread_mutex_lock(&node->lock);
        ret = qed_find(node, off, len, &r, err);
        if (ret == 0 && r.kind != QED_FOUND)
            ret = write_alloc(node, &r, off, data, err);
        pthread_mutex_unlock(&node->lock);
        if (ret == 0 && r.kind == QED_FOUND)
            ret = data ? write_data(node, r.host, (size_t)r.len, data, err)
                       : write_zero_data(node, r.host, r.len, err);
        if (ret < 0)
            return ret;
        off += r.len;
        len -= r.len;
        if (data)
            data += r.len;
    }
    return 0;
}

int qed_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err)
{
    return qed_write(node, off, len, buf, err);
}

/* Zeroes as data, for the parts of a zero write that are not whole
 * clusters (QEMU's block layer writes them so). */
static int zero_as_data(struct qimg_image *node, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err)
{
    uint8_t *z;
    int ret;

    if (!len)
        return 0;
    if (flags & QIMG_ZERO_NO_FALLBACK)
        return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
    z = calloc(1, (size_t)len);
    if (!z)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qed_write(node, off, len, z, err);
    free(z);
    return ret;
}

int qed_pwrite_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                      unsigned flags, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, end = off + len;
    uint64_t a = QIMG_MIN(qimg_align_down(off + cs - 1, cs), end);
    uint64_t b = QIMG_MAX(qimg_align_down(end, cs), a);
    int ret;

    ret = zero_as_data(node, off, a - off, flags, err);
    if (!ret && b > a)
        ret = qed_write(node, a, b - a, NULL, err);
    if (!ret)
        ret = zero_as_data(node, b, end - b, flags, err);
    return ret;
}
