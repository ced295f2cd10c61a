/*
 * qcow2-range.c - operations on guest ranges that change the mapping
 * without guest data: zero writes and discard, preallocation, dropping
 * the tail of a shrunk image, and growing the L1 table.  All run under
 * node->lock (taken here or by the caller, as each function says).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"
#include "fmt/qcow2/qcow2-l2.h"

/* ---- zeroing and discard ------------------------------------------------- */

/* Set whole cluster at off to read as zero (v3) or unallocated. */
static int zero_cluster(struct qimg_image *node, uint64_t off, bool unmap,
                        bool discard, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    uint64_t idx, e, bm, ne, nbm = 0;
    int ret;

    qcow2_settle(node, off, s->cluster_size);
    if (discard) {
        ret = qcow2_get_l2(node, off, &l2, err);
        if (ret < 0 || !l2)
            return ret;
        ret = qcow2_get_l2_for_write(node, off, &l2, err);
    } else {
        ret = qcow2_get_l2_for_write(node, off, &l2, err);
    }
    if (ret < 0)
        return ret;
    idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    e = l2_get(s, l2, idx);
    bm = l2_bitmap(s, l2, idx);
    bool keep = !unmap && !(e & QCOW2_OFLAG_COMPRESSED) && host_of(e) &&
                (e & QCOW2_OFLAG_COPIED);
    if ((discard || s->version < 3) && !node->backing) {
        ne = 0;   /* unallocated reads as zero without a backing file */
    } else if (discard && s->version < 3) {
        ne = 0;
    } else if (s->subcluster_bits) {
        ne = keep ? (e & ~QCOW2_OFLAG_ZERO) : 0;
        nbm = 0xffffffff00000000ull;
    } else {
        ne = (keep ? (e & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0) |
             QCOW2_OFLAG_ZERO;
    }
    (void)bm;
    l2_set(s, l2, idx, ne, nbm);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    if (!keep && (host_of(e) || (e & QCOW2_OFLAG_COMPRESSED)) && !s->data_file)
        return qcow2_release_entry(node, e, err);
    if (!keep && s->data_file && s->discard_freed)   /* passed down only */
        return qcow2_release_entry(node, e, err);
    return 0;
}

/*
 * Zero or discard whole clusters.  pass_down: clusters whose last reference
 * goes are discarded in the file (or data file) too, as QEMU passes the
 * discards of requests that may unmap to an image opened with unmap
 * (convert, commit): "disk size" shrinks as with 7.2.
 */
static int zero_or_discard_locked(struct qimg_image *node, uint64_t off,
                                  uint64_t len, bool unmap, bool discard,
                                  bool pass_down, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = 0;

    if (pass_down)
        qcow2_discards_begin(node);
    for (uint64_t pos = off; pos < off + len && !ret; pos += s->cluster_size)
        ret = zero_cluster(node, pos, unmap, discard, err);
    if (pass_down)
        qcow2_discards_end(node);
    return ret;
}

static int zero_or_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                           bool unmap, bool discard, bool pass_down,
                           struct qimg_error *err)
{
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = zero_or_discard_locked(node, off, len, unmap, discard, pass_down, err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/* x rounded up to a power of two (guest offsets stay far below 2^63). */
static uint64_t round_up(uint64_t x, uint64_t align)
{
    return qimg_align_down(x + align - 1, align);
}

static int write_zero_buffer(struct qimg_image *node, uint64_t off,
                             uint64_t len, struct qimg_error *err)
{
    void *z = calloc(1, (size_t)len);
    int ret;
    if (!z)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qcow2_pwrite(node, off, (size_t)len, z, err);
    free(z);
    return ret;
}

/*
 * Extended L2: subclusters [off, off+len) of one cluster read as zero
 * (zero bits set, allocation bits cleared; the host cluster stays), as
 * QEMU zeroes a subcluster-aligned part of a cluster.  -ENOTSUP for a
 * compressed cluster.  Called with the lock.
 */
static int zero_subclusters(struct qimg_image *node, uint64_t off,
                            uint64_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    unsigned sc = (unsigned)((off & (s->cluster_size - 1)) / s->subcluster_size);
    unsigned n = (unsigned)qimg_div_round_up(len, s->subcluster_size);
    uint64_t range = ((n >= 32 ? 0 : (1ull << n)) - 1) << sc;
    uint64_t idx, e, bm, nbm;
    uint8_t *l2;
    int ret;

    qcow2_settle(node, off, len);
    ret = qcow2_get_l2_for_write(node, off, &l2, err);
    if (ret < 0)
        return ret;
    idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    e = l2_get(s, l2, idx);
    bm = l2_bitmap(s, l2, idx);
    if (e & QCOW2_OFLAG_COMPRESSED)
        return -ENOTSUP;
    nbm = (bm | ((range & 0xffffffffull) << 32)) & ~(range & 0xffffffffull);
    if (nbm != bm) {
        l2_set(s, l2, idx, e, nbm);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
    }
    return 0;
}

/* The head and tail (partial clusters) and whole clusters of [off, end),
 * which is aligned to subclusters or ends at the image end. */
static void zero_split(struct qimg_image *node, uint64_t off, uint64_t end,
                       uint64_t *head, uint64_t *last, uint64_t *tail)
{
    struct qcow2_state *s = node->state;

    *head = QIMG_MIN(end, round_up(off, s->cluster_size)) - off;
    if (end >= node->size) {
        *tail = 0;
        *last = round_up(end, s->cluster_size);
    } else {
        *tail = end - QIMG_MAX(off + *head, qimg_align_down(end, s->cluster_size));
        *last = end - *tail;
    }
}

/* The whole clusters [off, end) of a zero write (lock held): the zero
 * flag, or, may unmap (and always on v2), the host clusters go. */
static int zero_whole_locked(struct qimg_image *node, uint64_t off,
                             uint64_t end, unsigned flags,
                             struct qimg_error *err)
{
    bool unmap = flags & QIMG_ZERO_MAY_UNMAP;

    return zero_or_discard_locked(node, off, end - off,
                                  qcow2_state(node)->version < 3 || unmap,
                                  false, unmap, err);
}

/* zeroize with the lock held: -ENOTSUP when the head or tail lies in a
 * compressed cluster (nothing is changed then). */
static int zeroize_locked(struct qimg_image *node, uint64_t off, uint64_t end,
                          unsigned flags, struct qimg_error *err)
{
    uint64_t head, last, tail;
    int ret = 0;

    zero_split(node, off, end, &head, &last, &tail);
    if (head)
        ret = zero_subclusters(node, off, head, err);
    if (!ret && off + head < last)
        ret = zero_whole_locked(node, off + head, last, flags, err);
    if (!ret && tail)
        ret = zero_subclusters(node, last, tail, err);
    return ret;
}

/* A partial cluster by its subclusters; written as zeroes when it is
 * compressed. */
static int zero_part(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_error *err)
{
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = zero_subclusters(node, off, len, err);
    pthread_mutex_unlock(&node->lock);
    return ret == -ENOTSUP ? write_zero_buffer(node, off, len, err) : ret;
}

/*
 * Zero [off, end), aligned to subclusters (or ending at the image end):
 * a partial head and tail cluster by subclusters, whole clusters by their
 * entries; a head or tail in a compressed cluster is written as zeroes.
 * The parts take the lock one by one: writing zeroes needs it too.
 */
static int zeroize(struct qimg_image *node, uint64_t off, uint64_t end,
                   unsigned flags, struct qimg_error *err)
{
    uint64_t head, last, tail;
    int ret = 0;

    zero_split(node, off, end, &head, &last, &tail);
    if (head)
        ret = zero_part(node, off, head, err);
    if (!ret && off + head < last) {
        pthread_mutex_lock(&node->lock);
        ret = zero_whole_locked(node, off + head, last, flags, err);
        pthread_mutex_unlock(&node->lock);
    }
    if (!ret && tail)
        ret = zero_part(node, last, tail, err);
    return ret;
}

/* Whether [off, off+len) reads as zero through the chain (clamped to the
 * image), as QEMU asks before zeroing a whole subcluster for part of it. */
static bool reads_as_zero(struct qimg_image *node, uint64_t off, uint64_t len)
{
    struct qimg_error err = {0};

    if (off >= node->size)
        return true;
    len = QIMG_MIN(len, node->size - off);
    while (len) {
        struct qimg_extent ext;
        if (qimg_block_status_chain(node, NULL, off, len, &ext, &err) < 0 ||
            !(ext.flags & QIMG_BS_ZERO) || !ext.length)
            return false;
        ext.length = QIMG_MIN(ext.length, len);
        off += ext.length;
        len -= ext.length;
    }
    return true;
}

/*
 * Part [off, end) of one subcluster: the whole subcluster becomes zero when
 * the rest of it already reads as zero and it holds no data (QEMU's rule);
 * otherwise zeroes are written.
 */
static int zero_partial_unit(struct qimg_image *node, uint64_t off,
                             uint64_t end, unsigned flags,
                             struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t unit = qimg_align_down(off, s->subcluster_size);
    uint64_t unit_end = end >= node->size
                        ? end : round_up(end, s->subcluster_size);
    struct qcow2_mapping m;
    bool ok;
    int ret;

    ok = reads_as_zero(node, unit, off - unit) &&
         reads_as_zero(node, end, unit_end - end);
    if (!ok)
        return write_zero_buffer(node, off, end - off, err);
    /* The type check and the zeroing under one lock hold: a writer of the
     * same subcluster in between must not have its data zeroed.  Settled
     * first: a table being installed meanwhile would make the zeroing
     * wait, releasing the lock, after the check (the installer's data
     * then lost), and an allocation in flight is data the entry does not
     * show yet. */
    pthread_mutex_lock(&node->lock);
    qcow2_settle(node, unit, s->subcluster_size);
    ret = qcow2_get_mapping(node, unit, s->subcluster_size, &m, err);
    ok = ret >= 0 && (m.type == QCOW2_CLUSTER_UNALLOCATED ||
                      m.type == QCOW2_CLUSTER_UNALLOCATED_ALLOC ||
                      m.type == QCOW2_CLUSTER_ZERO_PLAIN ||
                      m.type == QCOW2_CLUSTER_ZERO_ALLOC);
    if (ok)   /* not compressed: no -ENOTSUP */
        ret = zeroize_locked(node, unit,
                             QIMG_MIN(unit + s->subcluster_size, node->size),
                             flags, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0 || ok)
        return ret;
    return write_zero_buffer(node, off, end - off, err);
}

/*
 * Zero writes as QEMU's block layer and qcow2 driver split them: pieces
 * of a subcluster (head, tail) on their own, the aligned rest zeroed by
 * subclusters and whole clusters.  Whole clusters get the zero flag (or,
 * may unmap, lose their host cluster); with extended L2 partial clusters
 * keep theirs with zero subclusters; the image's last, partial cluster
 * counts as whole.
 */
int qcow2_pwrite_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t end = off + len, unit = s->subcluster_size, first, last;
    int ret = 0;

    /* v2 has no zero flag, but without a backing file unallocated
     * clusters read as zero: the clusters are freed, their L2 tables
     * allocated, as QEMU's discard does (iotest 122).  A raw data file
     * must hold real zeroes. */
    if ((s->version < 3 && node->backing) ||
        (s->data_file && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW)))
        return -ENOTSUP;
    first = round_up(off, unit);
    last = end >= node->size ? end : qimg_align_down(end, unit);
    if (first >= last) {   /* inside one subcluster */
        return zero_partial_unit(node, off, end, flags, err);
    }
    if (off < first)
        ret = zero_partial_unit(node, off, first, flags, err);
    if (!ret)
        ret = zeroize(node, first, last, flags, err);
    if (!ret && last < end)
        ret = zero_partial_unit(node, last, end, flags, err);
    return ret;
}

int qcow2_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                  struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start, end = off + len;

    /* Only whole clusters can be discarded; partial ones are left alone. */
    if (!qimg_align_up(off, s->cluster_size, &start))
        return 0;
    if (end != node->size)
        end = qimg_align_down(end, s->cluster_size);
    if (start >= end)
        return 0;
    return zero_or_discard(node, start, end - start, true, true, true, err);
}

/*
 * Preallocation as QEMU 7.2 lays it out.  metadata (and every mode with
 * an external data file) walks the range one L2 table at a time: the
 * table first (allocated if missing), then one run of host clusters for
 * its entries without one; the file (or data file) is then extended to
 * the last cluster, allocated in the file for falloc/full.  falloc/full
 * without a data file first build refcount structures for everything at
 * the end of the file, then one run of data clusters after them that the
 * file storage allocates (or writes) in one truncate, then the L2 tables
 * that point at it (wherever the allocator puts them: after the data).
 * Entries get the COPIED flag and keep their subcluster bitmap: with
 * extended L2 the new clusters read as unallocated (zero) until written.
 */
static int prealloc_l2_range(struct qimg_image *node, uint64_t start,
                             uint64_t end, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first = start >> s->cluster_bits;
    uint64_t last = (end - 1) >> s->cluster_bits, n = 0;
    uint8_t *l2;
    int64_t host = 0;
    int ret;

    ret = qcow2_get_l2_for_write(node, start, &l2, err);
    if (ret < 0)
        return ret;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t idx = c & (qcow2_l2_entries(s) - 1);
        if (!host_of(l2_get(s, l2, idx)))
            n++;
    }
    if (!n)
        return 0;
    if (!s->data_file) {
        host = qcow2_alloc_clusters(node, n, err);
        if (host < 0)
            return (int)host;
    }
    ret = qcow2_get_l2(node, start, &l2, err);
    if (ret < 0)
        return ret;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t idx = c & (qcow2_l2_entries(s) - 1);
        uint64_t h;
        if (host_of(l2_get(s, l2, idx)))
            continue;
        h = s->data_file ? (c << s->cluster_bits) : (uint64_t)host;
        l2_set(s, l2, idx, h | QCOW2_OFLAG_COPIED, l2_bitmap(s, l2, idx));
        host += (int64_t)s->cluster_size;
    }
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    return 0;
}

/* The L2 entry of guest offset off (0 when it has no table). */
static int entry_at(struct qimg_image *node, uint64_t off, uint64_t *e,
                    struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    int ret = qcow2_get_l2(node, off, &l2, err);

    *e = ret < 0 || !l2 ? 0
                        : l2_get(s, l2, (off >> s->cluster_bits) &
                                            (qcow2_l2_entries(s) - 1));
    return ret;
}

/*
 * QEMU allocates preallocated clusters as writes of nothing: a new first
 * cluster gets the guest data before start in its subcluster copied in,
 * a new last cluster zeroes after end up to its subcluster's end.  Then
 * the file is extended to the host offset of end.
 */
static int prealloc_metadata(struct qimg_image *node, uint64_t start,
                             uint64_t end, enum qimg_prealloc mode,
                             struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_storage *st = qcow2_data_storage(node);
    uint64_t l2_span = s->cluster_size << s->l2_bits, sc = s->subcluster_size;
    uint64_t head_from = qimg_align_down(start, sc), tail_to, e, want = 0;
    uint8_t *head = NULL, *zero = NULL;
    bool need_head, need_tail;
    int64_t fsize;
    int ret;

    if (!qimg_align_up(end, sc, &tail_to))
        return -EINVAL;
    pthread_mutex_lock(&node->lock);
    ret = entry_at(node, start, &e, err);
    need_head = !ret && start > head_from && !host_of(e) &&
                !(s->data_file && (e & QCOW2_OFLAG_COPIED));
    if (!ret)
        ret = entry_at(node, end - 1, &e, err);
    need_tail = !ret && tail_to > end && !host_of(e) &&
                !(s->data_file && (e & QCOW2_OFLAG_COPIED));
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    if (need_head) {
        head = malloc(start - head_from);
        if (!head)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = qcow2_pread(node, head_from, start - head_from, head, err);
        if (ret < 0)
            goto out_free;
    }
    pthread_mutex_lock(&node->lock);
    for (uint64_t pos = qimg_align_down(start, s->cluster_size);
         !ret && pos < end;) {
        uint64_t next = QIMG_MIN(qimg_align_down(pos, l2_span) + l2_span, end);
        ret = prealloc_l2_range(node, pos, next, err);
        pos = next;
    }
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret && need_head && !(ret = entry_at(node, start, &e, err)))
        ret = st->ops->pwrite(st, host_of(e) + (head_from & (s->cluster_size - 1)),
                              start - head_from, head, err);
    if (!ret)
        ret = entry_at(node, end - 1, &e, err);
    want = host_of(e) + ((end - 1) & (s->cluster_size - 1)) + 1;
    if (!ret && need_tail) {
        zero = calloc(1, tail_to - end);
        ret = zero ? st->ops->pwrite(st, want, tail_to - end, zero, err)
                   : qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        goto out_free;
    /* The file reaches the host offset of the end; falloc/full allocate
     * what that adds. */
    fsize = st->ops->get_size(st);
    if (fsize < 0)
        ret = qimg_error_set(err, (int)fsize, "Could not get file size: %s",
                             strerror((int)-fsize));
    else if (want > (uint64_t)fsize)
        ret = st->ops->truncate(st, want, mode == QIMG_PREALLOC_METADATA
                                              ? QIMG_PREALLOC_OFF : mode, err);
out_free:
    free(head);
    free(zero);
    return ret;
}

int qcow2_last_used_end(struct qimg_image *node, uint64_t fsize,
                        uint64_t *end, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    for (uint64_t ci = qimg_div_round_up(fsize, s->cluster_size); ci-- > 0;) {
        uint64_t rc;
        int ret = qcow2_get_refcount(node, ci, &rc, err);
        if (ret < 0)
            return ret;
        if (rc) {
            *end = (ci + 1) << s->cluster_bits;
            return 0;
        }
    }
    *end = qimg_div_round_up(fsize, s->cluster_size) << s->cluster_bits;
    return qcow2_signal_corruption(node, true, err, "There are no references "
                                   "in the refcount table.");
}

/* Point n guest clusters from coff (one L2 table) at host clusters from
 * host, releasing what the entries held. */
static int prealloc_link(struct qimg_image *node, uint64_t coff, uint64_t host,
                         uint64_t n, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t idx = (coff >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    uint8_t *l2;
    int ret = qcow2_get_l2_for_write(node, coff, &l2, err);

    for (uint64_t i = 0; i < n && !ret; i++) {
        uint64_t old = l2_get(s, l2, idx + i);
        /* Over a backing file the new area must read as zeroes (the
         * file's), not fall through: with extended L2 every subcluster
         * is then allocated; without one 7.2 leaves the bitmap as it
         * was (unallocated subclusters read as zero anyway). */
        l2_set(s, l2, idx + i, (host + (i << s->cluster_bits)) | QCOW2_OFLAG_COPIED,
               s->subcluster_bits && node->backing ? QCOW2_SUBCL_ALL_ALLOC
                                                   : l2_bitmap(s, l2, idx + i));
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        if (host_of(old) || (old & QCOW2_OFLAG_COMPRESSED)) {
            ret = qcow2_release_entry(node, old, err);
            /* The release may have evicted the table. */
            if (!ret)
                ret = qcow2_get_l2(node, coff, &l2, err);
        }
    }
    return ret;
}

static int prealloc_data(struct qimg_image *node, uint64_t start, uint64_t end,
                         enum qimg_prealloc mode, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, old_end, nb, nl2, head;
    uint64_t coff = qimg_align_down(start, cs), new_end, pos, host;
    uint8_t *head_buf = NULL;
    int64_t fsize, area, got;
    int ret;

    /* A partial first cluster keeps its head: read it before the lock. */
    head = start - coff;
    if (head) {
        head_buf = malloc(head);
        if (!head_buf)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = qcow2_pread(node, coff, head, head_buf, err);
        if (ret < 0)
            goto out_free;
    }
    fsize = node->file->ops->get_size(node->file);
    if (fsize < 0) {
        ret = qimg_error_set(err, (int)fsize, "Failed to inquire current file "
                             "length: %s", strerror((int)-fsize));
        goto out_free;
    }
    pthread_mutex_lock(&node->lock);
    ret = qcow2_last_used_end(node, (uint64_t)fsize, &old_end, err);
    if (ret < 0)
        goto out;
    nb = (qimg_div_round_up(end, cs) * cs - coff) >> s->cluster_bits;
    /* Room for the L2 tables too, one more for an unaligned head/tail, so
     * that linking them needs no new refcount block. */
    nl2 = qimg_div_round_up(nb, cs / s->l2_entry_size) + 1;
    area = qcow2_refcount_area(node, old_end, nb + nl2, true, 0, 0, err);
    if (area < 0) {
        ret = qimg_error_set(err, (int)area, "Failed to resize refcount "
                             "structures: %s", strerror((int)-area));
        goto out;
    }
    got = qcow2_alloc_clusters_at(node, (uint64_t)area, nb, err);
    if (got >= 0 && (uint64_t)got != nb) {
        qcow2_free_clusters_or_warn(node, (uint64_t)area,
                                    (uint64_t)got << s->cluster_bits, false);
        got = qimg_error_set(err, -EIO, "Preallocated clusters are in use");
    }
    if (got < 0) {
        ret = qimg_error_set(err, (int)got, "Failed to allocate data clusters: "
                             "%s", strerror((int)-got));
        goto out;
    }
    new_end = (uint64_t)area + (nb << s->cluster_bits);
    ret = node->file->ops->truncate(node->file, new_end, mode, err);
    if (ret < 0) {
        qimg_error_prefix(err, "Failed to resize underlying file: ");
        qcow2_free_clusters_or_warn(node, (uint64_t)area, nb << s->cluster_bits,
                                    false);
        goto out;
    }
    if (head_buf)
        ret = node->file->ops->pwrite(node->file, (uint64_t)area, head,
                                      head_buf, err);
    for (pos = coff, host = (uint64_t)area; !ret && nb;) {
        uint64_t idx = (pos >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
        uint64_t n = QIMG_MIN(nb, qcow2_l2_entries(s) - idx);
        ret = prealloc_link(node, pos, host, n, err);
        pos += n << s->cluster_bits;
        host += n << s->cluster_bits;
        nb -= n;
    }
    if (ret < 0 && nb)
        qcow2_free_clusters_or_warn(node, host, nb << s->cluster_bits, false);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
out:
    pthread_mutex_unlock(&node->lock);
out_free:
    free(head_buf);
    return ret;
}

int qcow2_preallocate(struct qimg_image *node, uint64_t start, uint64_t end,
                      enum qimg_prealloc mode, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (start >= end)
        return 0;
    if (mode == QIMG_PREALLOC_METADATA || s->data_file)
        return prealloc_metadata(node, start, end, mode, err);
    return prealloc_data(node, start, end, mode, err);
}

/*
 * Shrinking, as QEMU 7.2 does it (so that the file ends up the same):
 * every entry from the first cluster past the new end to the old end is
 * emptied, one L2 table at a time, tables allocated (or copied when
 * shared) where missing; the L1 entries past the new end are zeroed and
 * their tables freed; refcount blocks left without a reference are
 * dropped.  Everything freed is discarded in the file.
 */
int qcow2_empty_range(struct qimg_image *node, uint64_t start, uint64_t end,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t entries = qcow2_l2_entries(s), *olds;
    int ret = 0;

    olds = malloc(entries * sizeof(*olds));
    if (!olds)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t pos = start; pos < end && !ret;) {
        uint64_t idx = (pos >> s->cluster_bits) & (entries - 1);
        uint64_t n = QIMG_MIN(qimg_div_round_up(end - pos, s->cluster_size),
                              entries - idx), k = 0;
        uint8_t *l2;

        ret = qcow2_get_l2_for_write(node, pos, &l2, err);
        for (uint64_t i = 0; i < n && !ret; i++) {
            uint64_t e = l2_get(s, l2, idx + i);
            if (!e && !l2_bitmap(s, l2, idx + i))
                continue;
            l2_set(s, l2, idx + i, 0, 0);
            qcow2_cache_mark_dirty(&s->l2_cache, l2);
            olds[k++] = e;
        }
        /* The emptied entries reach the file before the clusters go. */
        if (!ret && k)
            ret = qcow2_cache_flush(node, &s->l2_cache, err);
        for (uint64_t i = 0; i < k && !ret; i++)
            ret = qcow2_free_entry(node, olds[i], err);
        pos += n << s->cluster_bits;
    }
    free(olds);
    return ret;
}

static int shrink_l1(struct qimg_image *node, uint64_t new_size,
                     struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t len;
    int ret;

    if (new_size >= s->l1_size)
        return 0;
    len = ((uint64_t)s->l1_size - new_size) * 8;
    qimg_storage_event(node->file, QIMG_EV_L1_SHRINK_WRITE_TABLE);
    ret = node->file->ops->pwrite_zeroes
              ? node->file->ops->pwrite_zeroes(node->file,
                                               s->l1_table_offset + new_size * 8,
                                               len, 0, err)
              : -ENOTSUP;
    if (ret == -ENOTSUP) {
        uint8_t *z = calloc(1, len);
        ret = z ? node->file->ops->pwrite(node->file,
                                          s->l1_table_offset + new_size * 8,
                                          len, z, err)
                : qimg_error_set(err, -ENOMEM, "Out of memory");
        free(z);
    }
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (!ret)
        qimg_storage_event(node->file, QIMG_EV_L1_SHRINK_FREE_L2_CLUSTERS);
    for (uint64_t i = s->l1_size; !ret && i-- > new_size;) {
        uint64_t off = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (off)
            qcow2_free_clusters_or_warn(node, off, s->cluster_size, false);
        s->l1_table[i] = 0;
    }
    if (ret < 0)   /* the table on disk may be half written: forget it */
        memset(s->l1_table + new_size, 0, len);
    return ret;
}

int qcow2_shrink_tail(struct qimg_image *node, uint64_t size,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start;
    int ret = 0;

    if (!qimg_align_up(size, s->cluster_size, &start))
        return -EINVAL;
    pthread_mutex_lock(&node->lock);
    qcow2_discards_begin(node);
    if (start < node->size) {
        ret = qcow2_empty_range(node, start, node->size, err);
        if (ret < 0)
            qimg_error_prefix(err, "Failed to discard cropped clusters: ");
    }
    if (!ret) {
        ret = shrink_l1(node, qcow2_l1_size_for(size, s->cluster_bits,
                                                s->l2_bits), err);
        if (ret < 0)
            qimg_error_set(err, ret, "Failed to reduce the number of L2 "
                           "tables: %s", strerror(-ret));
    }
    if (!ret) {
        ret = qcow2_shrink_reftable(node, err);
        if (ret < 0)
            qimg_error_prefix(err, "Failed to discard unused refblocks: ");
    }
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    qcow2_discards_end(node);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

/* ---- L1 growth ----------------------------------------------------------- */

int qcow2_grow_l1(struct qimg_image *node, uint64_t min_size,
                  struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t new_size, bytes, *nt;
    uint8_t hdr[12];
    int64_t off;
    int ret;

    if (min_size <= s->l1_size)
        return 0;
    if (min_size > QCOW2_MAX_L1_SIZE / 8)
        return qimg_error_set(err, -EFBIG, "Active L1 table too large");
    new_size = min_size;
    bytes = qimg_div_round_up(new_size * 8, s->cluster_size) * s->cluster_size;
    nt = calloc(1, bytes);
    if (!nt)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_ALLOC_TABLE);
    off = qcow2_alloc_clusters(node, bytes / s->cluster_size, err);
    if (off < 0) {
        free(nt);
        return (int)off;
    }
    ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    for (uint64_t i = 0; i < s->l1_size; i++)
        nt[i] = htobe64(s->l1_table[i]);
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_WRITE_TABLE);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, (uint64_t)off, new_size * 8, nt,
                                      err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    qimg_st_be32(hdr, (uint32_t)new_size);
    qimg_st_be64(hdr + 4, (uint64_t)off);
    qimg_storage_event(node->file, QIMG_EV_L1_GROW_ACTIVATE_TABLE);
    ret = node->file->ops->pwrite(node->file, 36, 12, hdr, err);
    if (ret < 0) {
        free(nt);
        return ret;
    }
    for (uint64_t i = 0; i < new_size; i++)
        nt[i] = be64toh(nt[i]);
    uint64_t old_off = s->l1_table_offset, old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1_table);
    s->l1_table = nt;
    s->l1_size = (uint32_t)new_size;
    s->l1_table_offset = (uint64_t)off;
    if (old_bytes)
        ret = qcow2_free_clusters(node, old_off,
                                  qimg_div_round_up(old_bytes, s->cluster_size) *
                                      s->cluster_size, err);
    return ret;
}
