/*
 * qcow2-cluster.c - guest to host mapping through the L1 and L2 tables:
 * lookups, block status, reads, writes with cluster allocation and
 * copy-on-write, and the allocation of L2 tables (zeroing, discard,
 * preallocation and L1 growth are in qcow2-range.c).
 *
 * Locking: mapping lookups and every table change run under node->lock.
 * Reads and in-place writes of already allocated clusters do their data I/O
 * outside the lock.  Writes that allocate register the guest clusters they
 * fill as in flight and write their data outside the lock too; whoever
 * meets such a cluster waits until its L2 entry points at the data, so
 * that two writers never allocate the same guest cluster twice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fmt/qcow2/qcow2.h"
#include "fmt/qcow2/qcow2-l2.h"

/* Load the L2 table for guest offset; *l2 NULL when none is allocated. */
int qcow2_get_l2(struct qimg_image *node, uint64_t off, uint8_t **l2,
                 struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits), l2off;

    *l2 = NULL;
    if (l1i >= s->l1_size)
        return 0;
    l2off = s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK;
    if (!l2off)
        return 0;
    if (qcow2_check_l2_offset(node, l2off, l1i, err) < 0)
        return -EIO;
    return qcow2_cache_get(node, &s->l2_cache, l2off, l2, err);
}

/*
 * Entries QEMU refuses while mapping (fatal corruption events): a
 * contradictory extended L2 bitmap anywhere in the run, and at its start
 * a zero flag in a version 2 image, a compressed cluster with an
 * external data file, a data file cluster that is not the guest's own.
 * Returns 1 where a run that has begun must stop instead.
 */
static int check_entry(struct qimg_image *node, uint64_t offset, uint64_t pos,
                       uint64_t idx, uint64_t e, enum qcow2_cluster_type t,
                       bool has_host, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2off = s->l1_table[offset >> (s->cluster_bits + s->l2_bits)] &
                     QCOW2_L1E_OFFSET_MASK;
    uint64_t coff = qimg_align_down(pos, s->cluster_size);

    if (t == QCOW2_CLUSTER_INVALID)
        return qcow2_signal_corruption(node, true, err, "Invalid cluster entry "
                                       "found  (L2 offset: %#llx, L2 index: "
                                       "%#llx)", (unsigned long long)l2off,
                                       (unsigned long long)idx);
    if (s->version < 3 && t != QCOW2_CLUSTER_COMPRESSED &&
        (e & QCOW2_OFLAG_ZERO)) {
        if (pos > offset)
            return 1;
        return qcow2_signal_corruption(node, true, err, "Zero cluster entry "
                                       "found in pre-v3 image (L2 offset: "
                                       "%#llx, L2 index: %#llx)",
                                       (unsigned long long)l2off,
                                       (unsigned long long)idx);
    }
    if (pos > offset || !s->data_file)
        return 0;
    if (t == QCOW2_CLUSTER_COMPRESSED)
        return qcow2_signal_corruption(node, true, err, "Compressed cluster "
                                       "entry found in image with external "
                                       "data file (L2 offset: %#llx, L2 index: "
                                       "%#llx)", (unsigned long long)l2off,
                                       (unsigned long long)idx);
    if (has_host && host_of(e) != coff &&
        !(host_of(e) & (s->cluster_size - 1)))
        return qcow2_signal_corruption(node, true, err, "External data file "
                                       "host cluster offset %#llx does not "
                                       "match guest cluster offset: %#llx, L2 "
                                       "index: %#llx)",
                                       (unsigned long long)host_of(e),
                                       (unsigned long long)coff,
                                       (unsigned long long)idx);
    return 0;
}

int qcow2_get_mapping(struct qimg_image *node, uint64_t offset, uint64_t bytes,
                      struct qcow2_mapping *m, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    uint64_t end = QIMG_MIN(offset + bytes,
                            qimg_align_down(offset, l2_span) + l2_span);
    uint64_t unit = s->subcluster_size, pos;
    uint8_t *l2;
    int ret;

    memset(m, 0, sizeof(*m));
    ret = qcow2_get_l2(node, offset, &l2, err);
    if (ret < 0)
        return ret;
    if (!l2) {
        m->type = QCOW2_CLUSTER_UNALLOCATED;
        m->bytes = end - offset;
        return 0;
    }
    /* Extend the run while the type stays the same and hosts stay contiguous. */
    for (pos = offset; pos < end;) {
        uint64_t idx = (pos >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
        uint64_t e = l2_get(s, l2, idx), bm = l2_bitmap(s, l2, idx);
        unsigned sc = (unsigned)(qcow2_offset_into_cluster(s, pos) /
                                 s->subcluster_size);
        enum qcow2_cluster_type t = entry_type(s, e, bm, sc);
        uint64_t host = host_of(e) + (pos & (s->cluster_size - 1));
        uint64_t next = QIMG_MIN(qimg_align_down(pos, unit) + unit, end);

        bool has_host = t == QCOW2_CLUSTER_NORMAL ||
                        t == QCOW2_CLUSTER_ZERO_ALLOC ||
                        t == QCOW2_CLUSTER_UNALLOCATED_ALLOC;
        ret = check_entry(node, offset, pos, idx, e, t, has_host, err);
        if (ret == 1)
            break;      /* the run ends here; the next lookup fails */
        if (ret < 0)
            return ret;
        if (has_host) {
            if (host_of(e) & (s->cluster_size - 1)) {
                if (pos > offset)
                    break;   /* the run ends here; the next lookup fails */
                return qcow2_check_cluster_offset(node, host_of(e),
                    s->l1_table[offset >> (s->cluster_bits + s->l2_bits)] &
                        QCOW2_L1E_OFFSET_MASK, idx, err);
            }
        }
        if (pos == offset) {
            m->type = t;
            m->host_offset = host;
            m->l2_entry = e;
        } else {
            if (t != m->type)
                break;
            if (has_host && host != m->host_offset + (pos - offset))
                break;
            if (t == QCOW2_CLUSTER_COMPRESSED)
                break;   /* each compressed cluster stands alone */
        }
        pos = next;
        if (t == QCOW2_CLUSTER_COMPRESSED)
            pos = QIMG_MIN(qimg_align_down(offset, s->cluster_size) +
                           s->cluster_size, end);
    }
    m->bytes = pos - offset;
    return 0;
}

/* ---- reads --------------------------------------------------------------- */

static int read_compressed_part(struct qimg_image *node, uint64_t entry,
                                uint64_t off, size_t len, uint8_t *buf,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *cluster = malloc(s->cluster_size);
    int ret;

    if (!cluster)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qcow2_read_compressed(node, entry, cluster, err);
    if (!ret)
        memcpy(buf, cluster + qcow2_offset_into_cluster(s, off), len);
    free(cluster);
    return ret;
}

/*
 * Read guest data.  Readers take the lock only to look up each mapping;
 * a copy-on-write (locked) reads the old content while it keeps holding
 * the lock, so that no other writer can replace the cluster meanwhile.
 */
static int read_guest(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, bool locked, struct qimg_error *err)
{
    uint8_t *p = buf;

    while (len) {
        struct qcow2_mapping m;
        size_t n;
        int ret;

        if (!locked)
            pthread_mutex_lock(&node->lock);
        ret = qcow2_get_mapping(node, off, len, &m, err);
        if (!locked)
            pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
        n = (size_t)QIMG_MIN((uint64_t)len, m.bytes);
        switch (m.type) {
        case QCOW2_CLUSTER_UNALLOCATED:
        case QCOW2_CLUSTER_UNALLOCATED_ALLOC:
            if (node->backing)
                qimg_storage_event(node->file, QIMG_EV_READ_BACKING_AIO);
            ret = qimg_read_backing(node, off, n, p, err);
            break;
        case QCOW2_CLUSTER_ZERO_PLAIN:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            memset(p, 0, n);
            break;
        case QCOW2_CLUSTER_NORMAL:
            qimg_storage_event(node->file, QIMG_EV_READ_AIO);
            ret = qcow2_data_pread(node, m.host_offset, off, n, p, err);
            break;
        case QCOW2_CLUSTER_COMPRESSED:
            ret = read_compressed_part(node, m.l2_entry, off, n, p, err);
            break;
        case QCOW2_CLUSTER_INVALID:
            ret = -EIO;
            break;
        }
        if (ret < 0)
            return ret;
        off += n;
        p += n;
        len -= n;
    }
    return 0;
}

static int pread_aligned(struct qimg_image *node, uint64_t off, size_t len,
                         void *buf, struct qimg_error *err)
{
    return read_guest(node, off, len, buf, false, err);
}

int qcow2_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
                struct qimg_error *err)
{
    /* Encrypted images are read in whole sectors. */
    if (qcow2_crypto_unaligned(node->state, off, len))
        return qimg_rmw_pread(node, off, len, buf, QIMG_CRYPTO_SECTOR_SIZE,
                              pread_aligned, err);
    return read_guest(node, off, len, buf, false, err);
}

/* ---- block status -------------------------------------------------------- */

/*
 * Whether the file under data clusters may have holes that read as zero:
 * qemu-img looks only when the image seems preallocated with metadata,
 * i.e. the clusters in use (nonzero refcount, within the file) reach
 * max(10/9 of the clusters the file really allocates, 2 more).  Decided
 * at the first query.  Called with the lock.
 */
static bool looks_preallocated(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    const struct qimg_storage_ops *ops = node->file->ops;
    int64_t len, alloc;
    uint64_t real, limit, end;

    if (!s->prealloc_checked) {
        s->prealloc_checked = true;
        len = ops->get_size(node->file);
        alloc = ops->allocated_size ? ops->allocated_size(node->file) : -1;
        if (len >= 0 && alloc >= 0) {
            real = (uint64_t)alloc >> s->cluster_bits;
            limit = QIMG_MAX(real * 10 / 9, real + 2);
            end = qimg_div_round_up((uint64_t)len, s->cluster_size);
            s->prealloc_meta = qcow2_count_used(node, end, limit) >= limit &&
                               !s->data_file;
        }
    }
    return s->prealloc_meta;
}

int qcow2_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext, struct qimg_error *err)
{
    struct qcow2_mapping m;
    bool recurse;
    int ret;

    /* After a fatal corruption event the node is gone, as QEMU's (its
     * driver detached: "No medium found"). */
    if (qcow2_is_broken(node))
        return qimg_error_set(err, -ENOMEDIUM, "%s", strerror(ENOMEDIUM));
    pthread_mutex_lock(&node->lock);
    /* Decided at the first query whatever it meets, as QEMU decides it
     * (reading refcounts: a damaged refcount block is reported then). */
    (void)looks_preallocated(node);
    ret = qcow2_get_mapping(node, off, len, &m, err);
    recurse = ret >= 0 && m.type == QCOW2_CLUSTER_NORMAL &&
              looks_preallocated(node);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    ext->length = m.bytes;
    ext->host_file = qcow2_data_storage(node)->filename;
    if (qcow2_state(node)->crypto)   /* QEMU shows no host offsets then */
        recurse = false;
    switch (m.type) {
    case QCOW2_CLUSTER_UNALLOCATED:
        ext->flags = 0;
        break;
    case QCOW2_CLUSTER_UNALLOCATED_ALLOC:
        ext->flags = QIMG_BS_OFFSET_VALID;
        ext->host_offset = m.host_offset;
        break;
    case QCOW2_CLUSTER_ZERO_PLAIN:
        ext->flags = QIMG_BS_ZERO | QIMG_BS_ALLOCATED;
        break;
    case QCOW2_CLUSTER_ZERO_ALLOC:
        ext->flags = QIMG_BS_ZERO | QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID;
        ext->host_offset = m.host_offset;
        break;
    case QCOW2_CLUSTER_NORMAL:
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID |
                     (recurse ? QIMG_BS_RECURSE_FILE : 0);
        ext->host_offset = m.host_offset;
        break;
    case QCOW2_CLUSTER_INVALID:   /* get_mapping refused it */
    case QCOW2_CLUSTER_COMPRESSED:
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED | QIMG_BS_COMPRESSED;
        break;
    }
    if (qcow2_state(node)->crypto) {
        ext->flags &= ~QIMG_BS_OFFSET_VALID;
        ext->host_offset = 0;
    }
    return 0;
}

/* ---- L2 allocation ------------------------------------------------------- */

int qcow2_write_l1_entry(struct qimg_image *node, uint64_t l1i,
                         struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[8];
    /* The entry must not land on other metadata (QEMU's overlap check). */
    int ret = qcow2_overlap_check(node, QCOW2_OL_ACTIVE_L1,
                                  s->l1_table_offset + l1i * 8, 8, err);
    if (ret < 0)
        return ret;
    qimg_st_be64(be, s->l1_table[l1i]);
    qimg_storage_event(node->file, QIMG_EV_L1_UPDATE);
    return node->file->ops->pwrite(node->file, s->l1_table_offset + l1i * 8, 8,
                                   be, err);
}

/* ---- L2 allocation flushed without the lock ----------------------------
 *
 * A new L2 table must be on stable storage, with the refcount of its
 * cluster, before L1 points at it: a storage flush per new table, as in
 * QEMU.  Writers allocate tables in parallel (bench -w: every request
 * needs one), so the flush runs without node->lock: the table's L1 index
 * is marked pending, and other writers of that index wait until L1 points
 * at the table.
 */

static bool l2_pending(const struct qcow2_state *s, uint64_t l1i)
{
    for (unsigned i = 0; i < s->n_l2_alloc_pending; i++)
        if (s->l2_alloc_pending[i] == l1i)
            return true;
    return false;
}

static void l2_pending_done(struct qcow2_state *s, uint64_t l1i)
{
    for (unsigned i = 0; i < s->n_l2_alloc_pending; i++)
        if (s->l2_alloc_pending[i] == l1i) {
            s->l2_alloc_pending[i] =
                s->l2_alloc_pending[--s->n_l2_alloc_pending];
            break;
        }
    pthread_cond_broadcast(&s->l2_alloc_cond);
}

/* One wait on l2_alloc_cond (the lock released meanwhile).  Discards
 * pending in a begin/end window go out first: the clusters may be reused
 * by the writers that run in between. */
static void wait_metadata(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    unsigned depth = qcow2_discards_suspend(node);

    pthread_cond_wait(&s->l2_alloc_cond, &node->lock);
    qcow2_discards_resume(node, depth);
}

/* Wait while a table for l1i is pending; returns whether it waited. */
static bool l2_wait_pending(struct qimg_image *node, uint64_t l1i)
{
    bool waited = false;

    while (l2_pending(node->state, l1i)) {
        wait_metadata(node);
        waited = true;
    }
    return waited;
}

static int cond_ready(struct qcow2_state *s, struct qimg_error *err)
{
    int ret;

    if (s->l2_alloc_cond_ready)
        return 0;
    ret = pthread_cond_init(&s->l2_alloc_cond, NULL);
    if (ret)
        return qimg_error_set(err, -ret, "Cannot create a condition");
    s->l2_alloc_cond_ready = true;
    return 0;
}

/* ---- allocations in flight ---------------------------------------------
 *
 * An allocating write registers the guest clusters it fills, drops the
 * lock for its data write (other workers' requests reach the storage
 * meanwhile: over a network every write is a round trip), then takes it
 * again to point the L2 entries at the new data.  Until then everyone
 * else who would read or change those entries waits (qcow2_settle), as
 * QEMU's qcow2 makes overlapping requests wait for an allocation.
 */

/* Whether a registered range overlaps [off, end). */
static bool inflight_overlap(const struct qcow2_state *s, uint64_t off,
                             uint64_t end)
{
    for (unsigned i = 0; i < s->n_inflight; i++)
        if (s->inflight[i].off < end && off < s->inflight[i].end)
            return true;
    return false;
}

/* Register [off, end); false (the caller keeps the lock for its write)
 * when the table is full. */
static bool inflight_add(struct qimg_image *node, uint64_t off, uint64_t end)
{
    struct qcow2_state *s = node->state;
    struct qimg_error ignored = {0};

    if (s->n_inflight == QIMG_ARRAY_SIZE(s->inflight) ||
        cond_ready(s, &ignored) < 0)
        return false;
    s->inflight[s->n_inflight].off = off;
    s->inflight[s->n_inflight].end = end;
    s->n_inflight++;
    return true;
}

static void inflight_done(struct qimg_image *node, uint64_t off)
{
    struct qcow2_state *s = node->state;

    for (unsigned i = 0; i < s->n_inflight; i++)
        if (s->inflight[i].off == off) {
            s->inflight[i] = s->inflight[--s->n_inflight];
            break;
        }
    pthread_cond_broadcast(&s->l2_alloc_cond);
}

/* len cut where a registered range begins after off (one that covers off
 * itself has been waited for). */
static size_t inflight_clip(const struct qcow2_state *s, uint64_t off,
                            size_t len)
{
    for (unsigned i = 0; i < s->n_inflight; i++)
        if (s->inflight[i].off > off && s->inflight[i].off - off < len)
            len = (size_t)(s->inflight[i].off - off);
    return len;
}

bool qcow2_settle(struct qimg_image *node, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->state;
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    bool waited = false;

    while (l2_pending(s, l1i) || inflight_overlap(s, off, off + len)) {
        wait_metadata(node);
        waited = true;
    }
    return waited;
}

/* Drop the lock for a data write of [off, end) when it can be
 * registered; returns whether it was (then relock with relock_after). */
static bool unlock_for_write(struct qimg_image *node, uint64_t off,
                             uint64_t end)
{
    if (!inflight_add(node, off, end))
        return false;
    pthread_mutex_unlock(&node->lock);
    return true;
}

static void relock_after(struct qimg_image *node, bool unlocked)
{
    if (unlocked)
        pthread_mutex_lock(&node->lock);
}

/* Write the new table at new_off and the refcounts, flush without the
 * lock, then point L1 at it.  Called with the lock; returns with it. */
static int install_l2_unlocked(struct qimg_image *node, uint64_t l1i,
                               int64_t new_off, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t gen = 0, l2_gen;
    uint8_t *dst;
    int ret;

    ret = qcow2_cache_get_empty(node, &s->l2_cache, (uint64_t)new_off, &dst,
                                err);
    /* Refcounts may go out early (an over-count is safe); the zeroed
     * table points at nothing, so it needs no ordering but its own
     * refcount's, which the same flush covers. */
    if (!ret)
        ret = qcow2_cache_write_back(node, &s->refblock_cache, &gen, err);
    if (!ret) {
        qimg_storage_event(node->file, QIMG_EV_L2_ALLOC_WRITE);
        ret = qcow2_cache_write_table(node, &s->l2_cache, dst, err);
    }
    if (ret < 0)
        return ret;
    l2_gen = s->l2_cache.wgen;
    ret = cond_ready(s, err);
    if (ret < 0)
        return ret;
    s->l2_alloc_pending[s->n_l2_alloc_pending++] = l1i;
    pthread_mutex_unlock(&node->lock);
    ret = node->file->ops->flush(node->file, err);
    pthread_mutex_lock(&node->lock);
    if (!ret) {
        qcow2_cache_synced(&s->refblock_cache, gen);
        qcow2_cache_synced(&s->l2_cache, l2_gen);
        /* Kept on a failed write, as the locked path does: the entry
         * may have reached the file, so the table must not be freed. */
        s->l1_table[l1i] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
        ret = qcow2_write_l1_entry(node, l1i, err);
    }
    l2_pending_done(s, l1i);
    return ret;
}

/*
 * Make sure the L2 table for a write at off exists, allocating a new one
 * (where L1 points at nothing) with the flush outside the lock.  Returns
 * 1 when the lock was released (the caller must look at the metadata
 * again), 0 when the table is there or is left to get_l2_for_write (a
 * shared table to copy, too many pending), <0 on error.
 */
static int prepare_l2_unlocked(struct qimg_image *node, uint64_t off,
                               struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    int64_t new_off;
    int ret;

    if (l2_wait_pending(node, l1i))
        return 1;
    if (s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK ||
        s->n_l2_alloc_pending == QIMG_ARRAY_SIZE(s->l2_alloc_pending))
        return 0;
    new_off = qcow2_alloc_clusters(node, 1, err);
    if (new_off < 0)
        return (int)new_off;
    ret = install_l2_unlocked(node, l1i, new_off, err);
    if (ret < 0 && !(s->l1_table[l1i] & QCOW2_L1E_OFFSET_MASK)) {
        struct qimg_error ignored = {0};
        qcow2_cache_discard(&s->l2_cache, (uint64_t)new_off);
        qcow2_free_clusters(node, (uint64_t)new_off, s->cluster_size, &ignored);
    }
    return ret < 0 ? ret : 1;
}

/* Return a writable L2 table (refcount 1) for guest offset off. */
int qcow2_get_l2_for_write(struct qimg_image *node, uint64_t off,
                           uint8_t **l2, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
    uint64_t old, old_off;
    uint8_t *src = NULL, *dst;
    int64_t new_off;
    int ret;

    l2_wait_pending(node, l1i);
    old = s->l1_table[l1i];
    old_off = old & QCOW2_L1E_OFFSET_MASK;
    if (old_off && (old & QCOW2_OFLAG_COPIED))
        return qcow2_get_l2(node, off, l2, err);
    if (old_off) {
        ret = qcow2_get_l2(node, off, &src, err);
        if (ret < 0)
            return ret;
    }
    new_off = qcow2_alloc_clusters(node, 1, err);
    if (new_off < 0)
        return (int)new_off;
    if (src) {
        /* Copy-on-write of a shared table; re-fetch after the allocation
         * may have evicted it. */
        ret = qcow2_get_l2(node, off, &src, err);
        if (ret < 0)
            return ret;
        uint8_t *copy = malloc(s->cluster_size);
        if (!copy)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        memcpy(copy, src, s->cluster_size);
        ret = qcow2_cache_get_empty(node, &s->l2_cache, (uint64_t)new_off, &dst,
                                    err);
        if (!ret)
            memcpy(dst, copy, s->cluster_size);
        free(copy);
    } else {
        ret = qcow2_cache_get_empty(node, &s->l2_cache, (uint64_t)new_off, &dst,
                                    err);
    }
    if (ret < 0)
        return ret;
    /* The table must be on disk before L1 points at it. */
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (ret < 0)
        return ret;
    s->l1_table[l1i] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
    ret = qcow2_write_l1_entry(node, l1i, err);
    if (ret < 0)
        return ret;
    if (old_off) {
        ret = qcow2_free_clusters(node, old_off, s->cluster_size, err);
        if (ret < 0)
            return ret;
    }
    return qcow2_cache_get(node, &s->l2_cache, (uint64_t)new_off, l2, err);
}

/* ---- writes -------------------------------------------------------------- */

/*
 * Drop the reference an old L2 entry held on its host cluster(s).  The L2
 * change that dropped the entry must reach the file first: otherwise a
 * crash could leave the entry pointing at a cluster whose count already
 * went down (an under-count, which a later allocation would turn into two
 * users of one cluster).  Increments go the other way (refcounts first),
 * which the cache dependency handles.
 */
int qcow2_release_entry(struct qimg_image *node, uint64_t entry,
                        struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = qcow2_cache_flush(node, &s->l2_cache, err);

    return ret < 0 ? ret : qcow2_free_entry(node, entry, err);
}

int qcow2_free_entry(struct qimg_image *node, uint64_t entry,
                     struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff = entry & s->cluster_offset_mask;
        uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        uint64_t end = qimg_align_down(coff, 512) + sectors * 512;
        return qcow2_update_refcount(node, qimg_align_down(coff, s->cluster_size),
                                     end - qimg_align_down(coff, s->cluster_size),
                                     -1, err);
    }
    if (s->data_file) {
        /* Nothing is counted; a discarding free passes to the data file. */
        bool zero_plain = !s->subcluster_bits && (entry & QCOW2_OFLAG_ZERO);
        bool mapped = host_of(entry) ||
                      ((entry & QCOW2_OFLAG_COPIED) && !zero_plain);
        if (s->discard_freed && mapped && s->data_file->ops->discard)
            s->data_file->ops->discard(s->data_file, host_of(entry),
                                       s->cluster_size, NULL);
        return 0;
    }
    if (host_of(entry))
        return qcow2_free_host_cluster(node, host_of(entry), err);
    return 0;
}

/* Current content of one guest cluster, for copy-on-write. */
static int read_old_cluster(struct qimg_image *node, uint64_t cluster_off,
                            uint8_t *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t n = QIMG_MIN(s->cluster_size, node->size - cluster_off);
    int ret;

    /* Keep the lock: another writer of this cluster must not allocate a
     * second copy (and release the old one twice) or overwrite it while
     * its old content is read. */
    ret = read_guest(node, cluster_off, (size_t)n, buf, true, err);
    memset(buf + n, 0, s->cluster_size - n);
    return ret;
}

/*
 * Write [off, off+len) which lies inside one guest cluster, when the fast
 * in-place path does not apply.  Either the cluster's own host cluster is
 * reused (we hold its only reference, but parts of it read as zero or are
 * unallocated subclusters), or a new host cluster is allocated and the old
 * one released.  What the new data does not cover, in the units written
 * (subclusters, or the whole cluster), is copied from the old content.
 * Called with the lock held.
 */
static int write_cluster(struct qimg_image *node, uint64_t off, size_t len,
                         const uint8_t *data, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff = qimg_align_down(off, s->cluster_size);
    uint64_t into = off - coff, idx, entry, bitmap;
    uint64_t unit = s->subcluster_size, host, wstart, wend, touched = 0;
    uint8_t *l2, *buf = NULL;
    const uint8_t *src = data;  /* what goes to [wstart, wend) */
    bool reuse, carry_all, unlocked;
    int ret;

    ret = qcow2_get_l2_for_write(node, off, &l2, err);
    if (ret < 0)
        return ret;
    idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    entry = l2_get(s, l2, idx);
    bitmap = l2_bitmap(s, l2, idx);
    reuse = !(entry & QCOW2_OFLAG_COMPRESSED) && (entry & QCOW2_OFLAG_COPIED) &&
            (host_of(entry) || s->data_file);
    /* A new cluster must carry all old data when the old one had any. */
    carry_all = !reuse && ((entry & QCOW2_OFLAG_COMPRESSED) ||
                           (s->subcluster_bits ? (bitmap & 0xffffffffull) != 0
                                               : entry_type(s, entry, 0, 0) ==
                                                     QCOW2_CLUSTER_NORMAL));
    if (carry_all) {
        wstart = 0;
        wend = s->cluster_size;
    } else {
        wstart = qimg_align_down(into, unit);
        wend = qimg_align_down(into + len + unit - 1, unit);
    }
    for (uint64_t sc = wstart / unit; sc < wend / unit && s->subcluster_bits; sc++)
        touched |= 1ull << sc;

    if (reuse || s->data_file) {
        host = s->data_file ? coff : host_of(entry);
    } else {
        int64_t h = qcow2_alloc_clusters(node, 1, err);
        if (h < 0)
            return (int)h;
        host = (uint64_t)h;
    }
    ret = qcow2_check_data_write(node, host + wstart, wend - wstart, err);
    if (ret < 0)
        return ret;
    if (wstart == into && wend == into + len) {
        qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
    } else {
        /* The old content around the data, read with the lock held. */
        buf = malloc(s->cluster_size);
        if (!buf)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        qimg_storage_event(node->file, QIMG_EV_COW_READ);
        ret = read_old_cluster(node, coff, buf, err);
        if (ret < 0) {
            free(buf);
            return ret;
        }
        memcpy(buf + into, data, len);
        src = buf + wstart;
        qimg_storage_event(node->file, QIMG_EV_COW_WRITE);
    }
    unlocked = unlock_for_write(node, coff, coff + s->cluster_size);
    ret = qcow2_data_pwrite(node, host + wstart, coff + wstart, wend - wstart,
                            src, err);
    free(buf);
    relock_after(node, unlocked);
    /* The allocation (or other writers meanwhile) may have evicted the
     * table: fetch it again. */
    if (!ret)
        ret = qcow2_get_l2(node, off, &l2, err);
    if (unlocked)
        inflight_done(node, coff);
    if (ret < 0)
        return ret;
    if (s->subcluster_bits)
        bitmap = carry_all ? 0xffffffffull
                           : ((bitmap | touched) & ~(touched << 32));
    l2_set(s, l2, idx, host | QCOW2_OFLAG_COPIED, bitmap);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    if (!reuse && !s->data_file &&
        (host_of(entry) || (entry & QCOW2_OFLAG_COMPRESSED)))
        ret = qcow2_release_entry(node, entry, err);
    return ret;
}

/* Host offset of a cluster that can be overwritten in place, or 0. */
static uint64_t in_place_host(struct qimg_image *node, uint64_t off,
                              size_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    uint64_t idx, e, bm;

    if (qcow2_get_l2(node, off, &l2, err) < 0 || !l2)
        return 0;
    idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    e = l2_get(s, l2, idx);
    bm = l2_bitmap(s, l2, idx);
    if (entry_type(s, e, bm, (unsigned)(qcow2_offset_into_cluster(s, off) /
                                        s->subcluster_size)) !=
            QCOW2_CLUSTER_NORMAL || !(e & QCOW2_OFLAG_COPIED))
        return 0;
    if (s->subcluster_bits) {
        uint64_t first = qcow2_offset_into_cluster(s, off) / s->subcluster_size;
        uint64_t last = (qcow2_offset_into_cluster(s, off) + len - 1) /
                        s->subcluster_size;
        for (uint64_t sc = first; sc <= last; sc++)
            if (!(bm & (1ull << sc)) || (bm & (1ull << (32 + sc))))
                return 0;
    }
    return host_of(e) + qcow2_offset_into_cluster(s, off);
}

/*
 * Extend an in-place write of n bytes at off (host `host`) over the
 * following clusters of the same L2 table whose hosts continue the run,
 * up to len bytes: one pwrite instead of one per cluster.
 */
static size_t in_place_run(struct qimg_image *node, uint64_t off, size_t len,
                           uint64_t host, size_t n)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_span = s->cluster_size << s->l2_bits;
    uint64_t l2_end = qimg_align_down(off, l2_span) + l2_span;
    struct qimg_error ignored = {0};

    while (n < len && off + n < l2_end) {
        size_t m = (size_t)QIMG_MIN((uint64_t)(len - n), s->cluster_size);
        if (in_place_host(node, off + n, m, &ignored) != host + n)
            break;
        n += m;
    }
    return n;
}

/* Whether a guest cluster's entry holds nothing a write must keep or
 * release: no host cluster, not compressed, no allocated subcluster. */
static bool entry_is_fresh(const struct qcow2_state *s, uint64_t e,
                           uint64_t bm)
{
    if ((e & QCOW2_OFLAG_COMPRESSED) || host_of(e))
        return false;
    return !s->subcluster_bits || !(bm & 0xffffffffull);
}

/* Whole clusters from off (cluster aligned), within len and one L2 table,
 * that a write fills into freshly allocated host clusters. */
static uint64_t fresh_clusters(struct qimg_image *node, uint64_t off,
                               size_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    uint64_t max = QIMG_MIN((uint64_t)len >> s->cluster_bits,
                            qcow2_l2_entries(s) - idx), k = 0;
    uint8_t *l2;

    if (s->data_file || qcow2_offset_into_cluster(s, off) || !max ||
        qcow2_get_l2(node, off, &l2, err) < 0)
        return 0;
    if (!l2)
        return max;
    while (k < max && entry_is_fresh(s, l2_get(s, l2, idx + k),
                                     l2_bitmap(s, l2, idx + k)))
        k++;
    return k;
}

/* Point k entries from idx at the clusters from host. */
static void set_fresh_entries(struct qcow2_state *s, uint8_t *l2, uint64_t idx,
                              uint64_t k, uint64_t host)
{
    for (uint64_t i = 0; i < k; i++)
        l2_set(s, l2, idx + i, (host + (i << s->cluster_bits)) |
                               QCOW2_OFLAG_COPIED,
               s->subcluster_bits ? 0xffffffffull : 0);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
}

/*
 * Write k whole fresh clusters at off: one allocation (one refcount
 * update), one data write, then the L2 entries.  The order is the crash-
 * safe one of write_cluster: refcounts raised first (the L2 cache depends
 * on the refcount cache), data written before any entry points at it.
 * Called with the lock held.
 */
static int write_fresh(struct qimg_image *node, uint64_t off, uint64_t k,
                       const uint8_t *data, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    uint64_t bytes = k << s->cluster_bits;
    uint8_t *l2;
    int64_t host;
    int ret;

    ret = qcow2_get_l2_for_write(node, off, &l2, err);
    if (ret < 0)
        return ret;
    host = qcow2_alloc_clusters(node, k, err);
    if (host < 0)
        return (int)host;
    ret = qcow2_check_data_write(node, (uint64_t)host, bytes, err);
    qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
    if (!ret) {
        bool unlocked = unlock_for_write(node, off, off + bytes);
        ret = qcow2_data_pwrite(node, (uint64_t)host, off, (size_t)bytes,
                                data, err);
        relock_after(node, unlocked);
        /* The allocation (or other writers meanwhile) may have evicted
         * the table: fetch it again. */
        if (!ret)
            ret = qcow2_get_l2(node, off, &l2, err);
        if (!ret)
            set_fresh_entries(s, l2, idx, k, (uint64_t)host);
        if (unlocked)
            inflight_done(node, off);
    }
    if (ret < 0) {
        struct qimg_error ignored = {0};
        qcow2_free_clusters(node, (uint64_t)host, bytes, &ignored);
    }
    return ret;
}

/*
 * Over a network every request is a round trip, and a copy into a fresh
 * qcow2 writes many small data extents: each went out as its head cluster
 * (padded with zeroes), its whole clusters and its tail cluster (padded):
 * three requests in a row where QEMU sends a zero and a write.  Clusters
 * that hold nothing and read as zero are instead filled by one request,
 * the data padded in a buffer of at most PAD_MAX bytes.  Local files keep
 * the copy-free path: a system call costs less than the copy.
 */
#define PAD_MAX (1u << 20)

/* An entry with no host cluster, no data and zero under it (the zero
 * flag, or no backing file to show through). */
static bool fresh_zero(const struct qimg_image *node, uint64_t e, uint64_t bm)
{
    const struct qcow2_state *s = node->state;

    return entry_is_fresh(s, e, bm) &&
           ((e & QCOW2_OFLAG_ZERO) || !node->backing);
}

/* Clusters from the one holding off that one padded write of
 * [off, off+len) fills, or 0 where that path does not apply: a local
 * file, subclusters, a data file, no partial cluster at the edges, or
 * whole clusters first (write_fresh needs no copy for those). */
static uint64_t padded_clusters(struct qimg_image *node, uint64_t off,
                                size_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff = qimg_align_down(off, s->cluster_size), end = off + len;
    uint64_t idx = (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1);
    uint64_t max = QIMG_MIN(qimg_div_round_up(end - coff, s->cluster_size),
                            QIMG_MIN((uint64_t)PAD_MAX >> s->cluster_bits,
                                     qcow2_l2_entries(s) - idx)), k = 0;
    bool head = off != coff;
    uint8_t *l2;

    if (!(node->file->caps & QIMG_STORAGE_REMOTE) || s->data_file ||
        s->subcluster_bits || !max ||
        (!head && !qcow2_offset_into_cluster(s, end)) ||
        qcow2_get_l2(node, off, &l2, err) < 0 || !l2)
        return 0;
    while (k < max && fresh_zero(node, l2_get(s, l2, idx + k),
                                 l2_bitmap(s, l2, idx + k)))
        k++;
    if (!head && coff + (k << s->cluster_bits) < end)
        return 0;
    return k;
}

/* Write [off, off+len) (inside the k clusters from the one holding off,
 * see padded_clusters) as those whole clusters, zeroes around the data.
 * Called with the lock held. */
static int write_padded(struct qimg_image *node, uint64_t off, size_t len,
                        uint64_t k, const uint8_t *data,
                        struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff = qimg_align_down(off, s->cluster_size);
    size_t bytes = (size_t)(k << s->cluster_bits), into = (size_t)(off - coff);
    uint8_t *buf = malloc(bytes);
    int ret;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memset(buf, 0, into);
    memcpy(buf + into, data, len);
    memset(buf + into + len, 0, bytes - into - len);
    ret = write_fresh(node, coff, k, buf, err);
    free(buf);
    return ret;
}

/*
 * One step of a write: in place over a run of allocated clusters (the
 * data written without the lock), into padded or whole fresh clusters, or
 * one cluster through write_cluster.  Called with the lock; returns without
 * it, with the bytes done in *done.
 */
static int write_step(struct qimg_image *node, uint64_t off, size_t len,
                      const uint8_t *p, size_t *done, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff = qimg_align_down(off, s->cluster_size), host, k;
    size_t n = (size_t)QIMG_MIN((uint64_t)len, coff + s->cluster_size - off);
    int ret;

    /* Until the table is there and no allocation in flight covers the
     * first cluster, both looked at in one lock hold. */
    do {
        while ((ret = prepare_l2_unlocked(node, off, err)) == 1)
            ;
        if (ret < 0) {
            pthread_mutex_unlock(&node->lock);
            return ret;
        }
    } while (qcow2_settle(node, coff, s->cluster_size));
    len = inflight_clip(s, off, len);
    host = in_place_host(node, off, n, err);
    if (host) {
        n = in_place_run(node, off, len, host, n);
        ret = qcow2_check_data_write(node, host, n, err);
        pthread_mutex_unlock(&node->lock);
        *done = n;
        if (ret < 0)
            return ret;
        qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
        return qcow2_data_pwrite(node, host, off, n, p, err);
    }
    k = padded_clusters(node, off, len, err);
    if (k) {
        n = (size_t)QIMG_MIN((uint64_t)len, (k << s->cluster_bits) -
                                            (off - coff));
        ret = write_padded(node, off, n, k, p, err);
    } else if ((k = fresh_clusters(node, off, len, err))) {
        n = (size_t)(k << s->cluster_bits);
        ret = write_fresh(node, off, k, p, err);
    } else {
        ret = write_cluster(node, off, n, p, err);
    }
    pthread_mutex_unlock(&node->lock);
    *done = n;
    return ret;
}

static int pwrite_aligned(struct qimg_image *node, uint64_t off, size_t len,
                          const void *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    const uint8_t *p = buf;
    int ret = 0;

    /* Checked in the first step's lock hold: another writer may be
     * setting the dirty bit (s->incompatible) right now (ThreadSanitizer,
     * test_stress). */
    pthread_mutex_lock(&node->lock);
    if (s->incompatible & QCOW2_INCOMPAT_CORRUPT)
        ret = qimg_error_set(err, -EIO, "Image is corrupt; cannot be written");
    else if ((s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) && !s->dirty_set)
        ret = qcow2_set_dirty(node, true, err);
    if (ret < 0 || !len) {
        pthread_mutex_unlock(&node->lock);
        return ret;
    }
    for (;;) {
        size_t n = 0;

        ret = write_step(node, off, len, p, &n, err);   /* unlocks */
        if (ret < 0)
            return ret;
        off += n;
        p += n;
        len -= n;
        if (!len)
            return 0;
        pthread_mutex_lock(&node->lock);
    }
}

int qcow2_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                 const void *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    /* Encrypted images are written in whole sectors. */
    if (qcow2_crypto_unaligned(s, off, len))
        return qimg_rmw_pwrite(node, off, len, buf, QIMG_CRYPTO_SECTOR_SIZE,
                               &s->crypto_rmw_lock, pread_aligned,
                               pwrite_aligned, err);
    return pwrite_aligned(node, off, len, buf, err);
}

/* ---- compressed writes (the data side is in qcow2-compress.c) ---------- */

int qcow2_compressed_l2_prepare(struct qimg_image *node, uint64_t off,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t entry;
    uint8_t *l2;
    int ret;

    qcow2_settle(node, off, s->cluster_size);
    ret = qcow2_get_l2_for_write(node, off, &l2, err);
    if (ret < 0)
        return ret;
    entry = l2_get(s, l2, (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1));
    /* As QEMU, compress only into clusters without a host cluster: an
     * allocated one may be shared (snapshots), and is not reused. */
    if (host_of(entry) || (entry & QCOW2_OFLAG_COMPRESSED))
        return qimg_error_set(err, -EIO, "Compressed write into an allocated "
                              "cluster");
    return 0;
}

int qcow2_compressed_l2_set(struct qimg_image *node, uint64_t off,
                            uint64_t descriptor, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    int ret = qcow2_get_l2(node, off, &l2, err);

    if (ret < 0)
        return ret;
    l2_set(s, l2, (off >> s->cluster_bits) & (qcow2_l2_entries(s) - 1),
           descriptor, 0);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    return 0;
}
