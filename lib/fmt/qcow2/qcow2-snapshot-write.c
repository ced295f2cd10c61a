/*
 * qcow2-snapshot-write.c - creating, applying and deleting internal
 * snapshots.
 *
 * A cluster's refcount counts the (L1 table, L2 table) paths that reach it:
 * taking a snapshot copies the active L1 table and adds one reference to
 * every L2 table and data cluster it reaches; deleting one removes them.
 * OFLAG_COPIED is recomputed on the way (set exactly where the count is 1),
 * so the next write to a shared cluster copies it first.
 * Ordering: refcounts and the new L1 copy reach the disk before the new
 * snapshot table, which is written before the header points at it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "fmt/qcow2/qcow2.h"

/*
 * Before references are added, every table l1 reaches loses its COPIED
 * flags on disk: a crash in between leaves flags missing where the count
 * is still 1 (harmless, repaired by check -r leaks), never a COPIED flag
 * on a shared cluster, which would let a write change a snapshot.
 */
static int write_l1(struct qimg_image *node, uint64_t off, const uint64_t *l1,
                    uint32_t n, struct qimg_error *err);

/*
 * Read the L2 table of L1 entry l1_index into l2 (past the cache, which
 * must not keep a stale copy), refusing, as QEMU does with a corruption
 * event, an unaligned table or a cluster entry naming an unaligned host
 * cluster: nothing is changed in a table before all of it is known good.
 */
static int read_l2(struct qimg_image *node, uint64_t l2off, uint64_t l1_index,
                   uint8_t *l2, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = qcow2_check_l2_offset(node, l2off, l1_index, err);

    if (ret < 0)
        return ret;
    qcow2_cache_discard(&s->l2_cache, l2off);
    qimg_storage_event(node->file, QIMG_EV_L2_LOAD);   /* QEMU's cache load */
    ret = node->file->ops->pread(node->file, l2off, s->cluster_size, l2, err);
    for (uint64_t j = 0; !ret && j < qcow2_l2_entries(s); j++) {
        uint64_t e = qimg_ld_be64(l2 + j * s->l2_entry_size);
        if (!(e & QCOW2_OFLAG_COMPRESSED))
            ret = qcow2_check_cluster_offset(node, e & QCOW2_L2E_OFFSET_MASK,
                                             l2off, j, err);
    }
    return ret;
}

static int clear_copied_flags(struct qimg_image *node, uint64_t *l1,
                              uint32_t l1_size, uint64_t l1_offset,
                              struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2 = malloc(s->cluster_size);
    int ret;

    if (!l2)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    for (uint32_t i = 0; !ret && i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        bool dirty = false;
        if (!l2off)
            continue;
        ret = read_l2(node, l2off, i, l2, err);
        for (uint64_t j = 0; !ret && j < qcow2_l2_entries(s); j++) {
            uint8_t *p = l2 + j * s->l2_entry_size;
            uint64_t e = qimg_ld_be64(p);
            if (e & QCOW2_OFLAG_COPIED) {
                qimg_st_be64(p, e & ~QCOW2_OFLAG_COPIED);
                dirty = true;
            }
        }
        if (!ret && dirty)
            ret = node->file->ops->pwrite(node->file, l2off, s->cluster_size,
                                          l2, err);
    }
    free(l2);
    /* The active L1 table's flags go too (l1_offset 0: not active). */
    if (!ret && l1_offset) {
        for (uint32_t i = 0; i < l1_size; i++)
            l1[i] &= ~QCOW2_OFLAG_COPIED;
        ret = write_l1(node, l1_offset, l1, l1_size, err);
    }
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

/* Whether a cluster's refcount can take one more reference. */
static int room_for_one(struct qimg_image *node, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    for (uint64_t c = off >> s->cluster_bits;
         c <= (off + len - 1) >> s->cluster_bits; c++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(node, c, &rc, err);
        if (ret < 0)
            return ret;
        if (rc >= s->refcount_max)
            return qimg_error_set(err, -EINVAL, "Refcount of cluster %llu "
                                  "would overflow", (unsigned long long)c);
    }
    return 0;
}

/*
 * Before a snapshot adds references: refuse (changing nothing) when a
 * cluster l1 reaches is at the largest refcount, where QEMU's update
 * fails at its first step.  The COPIED flags stay as they are.
 */
static int check_room(struct qimg_image *node, const uint64_t *l1,
                      uint32_t l1_size, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2 = malloc(s->cluster_size);
    int ret = l2 ? qcow2_cache_flush(node, &s->l2_cache, err)
                 : qimg_error_set(err, -ENOMEM, "Out of memory");

    for (uint32_t i = 0; !ret && i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2off)
            continue;
        ret = read_l2(node, l2off, i, l2, err);
        for (uint64_t j = 0; !ret && j < qcow2_l2_entries(s); j++) {
            uint64_t e = qimg_ld_be64(l2 + j * s->l2_entry_size);
            if (e & QCOW2_OFLAG_COMPRESSED) {
                uint64_t coff = e & s->cluster_offset_mask;
                uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
                ret = room_for_one(node, coff, qimg_align_down(coff, 512) +
                                                   sectors * 512 - coff, err);
            } else if ((e & QCOW2_L2E_OFFSET_MASK) && !s->data_file) {
                ret = room_for_one(node, e & QCOW2_L2E_OFFSET_MASK, 1, err);
            }
        }
        if (!ret)
            ret = room_for_one(node, l2off, 1, err);
    }
    free(l2);
    return ret;
}

/* Add `addend` to everything l1 reaches and recompute the COPIED flags in
 * its tables; l1 (host order) is updated in place. */
static int update_refcounts(struct qimg_image *node, uint64_t *l1,
                            uint32_t l1_size, int addend, bool *l1_changed,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    int ret = 0;

    if (addend > 0) {
        ret = check_room(node, l1, l1_size, err);
        if (!ret)
            ret = clear_copied_flags(node, l1, l1_size,
                                     l1 == s->l1_table ? s->l1_table_offset : 0,
                                     err);
        if (ret < 0)
            return ret;
    }
    l2 = malloc(s->cluster_size);
    if (!l2)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    *l1_changed = false;
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    for (uint32_t i = 0; !ret && i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK, rc;
        bool dirty = false;
        if (!l2off)
            continue;
        ret = read_l2(node, l2off, i, l2, err);
        for (uint64_t j = 0; !ret && j < qcow2_l2_entries(s); j++) {
            uint8_t *p = l2 + j * s->l2_entry_size;
            uint64_t e = qimg_ld_be64(p), ne = e & ~QCOW2_OFLAG_COPIED;
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (e & QCOW2_OFLAG_COMPRESSED) {
                uint64_t coff = e & s->cluster_offset_mask;
                uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
                uint64_t start = qimg_align_down(coff, s->cluster_size);
                if (addend)
                    ret = qcow2_update_refcount_no_retry(
                        node, start,
                        qimg_align_down(coff, 512) + sectors * 512 - start,
                        addend, err);
                ne = e;   /* compressed clusters never carry COPIED */
            } else if (host && !s->data_file) {
                if (addend)
                    ret = qcow2_update_refcount_no_retry(node, host, 1, addend,
                                                         err);
                if (!ret)
                    ret = qcow2_get_refcount(node, host >> s->cluster_bits, &rc,
                                             err);
                if (!ret && rc == 1)
                    ne |= QCOW2_OFLAG_COPIED;
            } else {
                ne = e;
            }
            if (!ret && ne != e) {
                qimg_st_be64(p, ne);
                dirty = true;
            }
        }
        if (!ret && dirty) {
            ret = qcow2_write_l2_table(node, l2off, l2, err);
        }
        if (!ret && addend)
            ret = qcow2_update_refcount_no_retry(node, l2off, 1, addend, err);
        if (!ret)
            ret = qcow2_get_refcount(node, l2off >> s->cluster_bits, &rc, err);
        if (!ret) {
            uint64_t n1 = (l1[i] & ~QCOW2_OFLAG_COPIED) |
                          (rc == 1 ? QCOW2_OFLAG_COPIED : 0);
            if (n1 != l1[i]) {
                l1[i] = n1;
                *l1_changed = true;
            }
        }
    }
    free(l2);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    return ret;
}

static int write_l1(struct qimg_image *node, uint64_t off, const uint64_t *l1,
                    uint32_t n, struct qimg_error *err)
{
    uint64_t *be = malloc(QIMG_MAX(n, 1u) * 8ull);
    int ret;
    if (!be)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n; i++)
        be[i] = htobe64(l1[i]);
    ret = node->file->ops->pwrite(node->file, off, (size_t)n * 8, be, err);
    free(be);
    return ret;
}

/* Active L1 refcounts changed: recompute COPIED flags and write L1 back. */
static int refresh_active(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool changed;
    int ret = update_refcounts(node, s->l1_table, s->l1_size, 0, &changed, err);
    if (!ret && changed)
        ret = write_l1(node, s->l1_table_offset, s->l1_table, s->l1_size, err);
    return ret;
}

/* Extra data as written: at least the 24 bytes this version knows. */
static uint32_t written_extra(const struct qcow2_snapshot *sn)
{
    return QIMG_MAX(sn->extra_size, 24u);
}

/* A flush of the whole node (QEMU's bdrv_flush): the caches, then the
 * file.  Only flush_to_os is raised: QEMU's flush_to_disk does not reach
 * the file's blkdebug on qemu-img snapshot's opens. */
static int flush_node(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    qimg_storage_event(node->file, QIMG_EV_FLUSH_TO_OS);
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    return ret ? ret : node->file->ops->flush(node->file, err);
}

/*
 * Write the in-memory table to new clusters, switch the header, free the
 * old table.  As QEMU: entries padded to 8 bytes except the last, the
 * known extra data always complete.
 */
static int write_table(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = 0, old_off = s->snapshots_offset;
    uint64_t old_size = s->snapshots_size;
    uint8_t *buf, hdr[12];
    int64_t off = 0;
    int ret;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots[i];
        size = ((size + 7) & ~7ull) + 40 + written_extra(sn) + strlen(sn->id) +
               strlen(sn->name);
        if (size > QCOW2_MAX_SNAPSHOTS_SIZE)
            return qimg_error_set(err, -EFBIG, "%s", strerror(EFBIG));
    }
    buf = calloc(1, size ? size : 1);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t i = 0, pos = 0; i < s->nb_snapshots; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots[i];
        size_t idl = strlen(sn->id), nl = strlen(sn->name);
        uint32_t x = written_extra(sn);
        uint8_t *e;

        pos = (pos + 7) & ~7ull;
        e = buf + pos;
        qimg_st_be64(e, sn->l1_table_offset);
        qimg_st_be32(e + 8, sn->l1_size);
        qimg_st_be16(e + 12, (uint16_t)idl);
        qimg_st_be16(e + 14, (uint16_t)nl);
        qimg_st_be32(e + 16, sn->date_sec);
        qimg_st_be32(e + 20, sn->date_nsec);
        qimg_st_be64(e + 24, sn->vm_clock_nsec);
        /* A VM state too large for 32 bits is recorded as none there. */
        qimg_st_be32(e + 32, sn->vm_state_size <= UINT32_MAX
                                 ? (uint32_t)sn->vm_state_size : 0);
        qimg_st_be32(e + 36, x);
        qimg_st_be64(e + 40, sn->vm_state_size);
        qimg_st_be64(e + 48, sn->disk_size);
        qimg_st_be64(e + 56, sn->icount);
        if (x > 24 && sn->extra_unknown)
            memcpy(e + 64, sn->extra_unknown, x - 24);
        memcpy(e + 40 + x, sn->id, idl);
        memcpy(e + 40 + x + idl, sn->name, nl);
        pos += 40 + x + idl + nl;
    }
    if (size) {
        off = qcow2_alloc_clusters(node, qimg_div_round_up(size, s->cluster_size),
                                   err);
        if (off < 0) {
            free(buf);
            return (int)off;
        }
        ret = flush_node(node, err);
        if (!ret)
            ret = qcow2_overlap_check(node, 0, (uint64_t)off, size, err);
        if (!ret)
            ret = node->file->ops->pwrite(node->file, (uint64_t)off, size, buf,
                                          err);
        if (!ret)
            ret = flush_node(node, err);
        if (ret < 0) {
            free(buf);
            return ret;
        }
    } else {
        /* QEMU asks for no clusters, raising the event all the same. */
        qimg_storage_event(node->file, QIMG_EV_CLUSTER_ALLOC);
        ret = flush_node(node, err);
        if (ret < 0) {
            free(buf);
            return ret;
        }
    }
    free(buf);
    qimg_st_be32(hdr, s->nb_snapshots);
    qimg_st_be64(hdr + 4, (uint64_t)off);
    ret = node->file->ops->pwrite(node->file, 60, 12, hdr, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        return ret;
    s->snapshots_offset = (uint64_t)off;
    s->snapshots_size = size;
    /* The header no longer names the old table: failing to free it only
     * leaks it (QEMU warns and goes on). */
    if (old_size) {
        qcow2_discards_begin(node);
        qcow2_free_clusters_or_warn(node, old_off,
                                    qimg_div_round_up(old_size,
                                                      s->cluster_size) *
                                        s->cluster_size, false);
        qcow2_discards_end(node);
    }
    return 0;
}

/* Next free numeric id, as QEMU picks it: one above the largest. */
static void new_id(struct qcow2_state *s, char *buf, size_t len)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long v = strtoul(s->snapshots[i].id, NULL, 10);
        if (v > max)
            max = v;
    }
    snprintf(buf, len, "%lu", max + 1);
}

static int snapshot_create(struct qimg_image *node, const char *name,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot sn = {0}, *grown;
    struct timeval tv;
    char id[32];
    int64_t l1off;
    bool changed;
    int ret;

    if (s->data_file)
        return qimg_error_set(err, -ENOTSUP, "Can't create a snapshot of an "
                              "image with an external data file");
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return qimg_error_set(err, -EFBIG, "Too many snapshots");
    if (strlen(name) > 65535)
        return qimg_error_set(err, -EINVAL, "Snapshot name too long");
    new_id(s, id, sizeof(id));
    gettimeofday(&tv, NULL);
    pthread_mutex_lock(&node->lock);
    /* The copy of the active L1 table. */
    l1off = qcow2_alloc_clusters(node, qimg_div_round_up((uint64_t)s->l1_size * 8,
                                                         s->cluster_size), err);
    ret = l1off < 0 ? (int)l1off : 0;
    /* The copy keeps the COPIED flags the active table has now (QEMU's
     * layout; they mean nothing in a snapshot table). */
    if (!ret)
        ret = write_l1(node, (uint64_t)l1off, s->l1_table, s->l1_size, err);
    if (!ret)
        ret = update_refcounts(node, s->l1_table, s->l1_size, 1, &changed, err);
    if (!ret && changed)
        ret = write_l1(node, s->l1_table_offset, s->l1_table, s->l1_size, err);
    if (ret < 0)
        goto out;
    sn.l1_table_offset = (uint64_t)l1off;
    sn.l1_size = s->l1_size;
    sn.id = strdup(id);
    sn.name = strdup(name);
    sn.date_sec = (uint32_t)tv.tv_sec;
    sn.date_nsec = (uint32_t)tv.tv_usec * 1000;
    sn.disk_size = node->size;
    sn.icount = 0;
    sn.extra_size = 24;
    grown = realloc(s->snapshots, (s->nb_snapshots + 1) * sizeof(*grown));
    if (!sn.id || !sn.name || !grown) {
        free(sn.id);
        free(sn.name);
        if (grown)
            s->snapshots = grown;
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    s->snapshots = grown;
    s->snapshots[s->nb_snapshots++] = sn;
    ret = write_table(node, err);
out:
    pthread_mutex_unlock(&node->lock);
    return ret;
}

int qcow2_snapshot_write_table(struct qimg_image *node, struct qimg_error *err)
{
    return write_table(node, err);
}

static struct qcow2_snapshot *find_by_id_or_name(struct qcow2_state *s,
                                                 const char *key)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].id, key))
            return &s->snapshots[i];
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].name, key))
            return &s->snapshots[i];
    return NULL;
}

static int snapshot_apply(struct qimg_image *node, const char *key,
                          struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn = find_by_id_or_name(s, key);
    uint64_t *snap_l1 = NULL, *old = NULL;
    uint32_t old_size = s->l1_size;
    bool changed;
    int ret;

    /* The data file holds only the active state: nothing to go back to. */
    if (s->data_file)
        return qimg_error_set(err, -ENOTSUP, "Failed to load snapshot: "
                              "Operation not supported");
    if (!sn)
        return qimg_error_set(err, -ENOENT, "Failed to load snapshot: No such "
                              "file or directory");
    /* A bad table: QEMU prints why on a line of its own, then fails with
     * the bare error. */
    struct qimg_error why = {0};
    ret = qcow2_snapshot_l1_check(s, sn, &why);
    if (ret < 0) {
        qimg_message(QIMG_MSG_ERROR, "%s\n", why.msg);
        return qimg_error_set(err, ret, "Failed to load snapshot: %s",
                              strerror(-ret));
    }
    ret = qcow2_snapshot_read_l1(node, sn, &snap_l1, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&node->lock);
    if (sn->l1_size > s->l1_size)
        ret = qcow2_grow_l1(node, sn->l1_size, err);
    old = calloc(QIMG_MAX(s->l1_size, 1u), 8);
    if (!ret && !old)
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    if (ret < 0)
        goto out;
    memcpy(old, s->l1_table, (size_t)old_size * 8);
    /* References for the snapshot's tables first, then the old state's
     * references go; the active table switches in between. */
    ret = update_refcounts(node, snap_l1, sn->l1_size, 1, &changed, err);
    if (ret < 0)
        goto out;
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);
    memcpy(s->l1_table, snap_l1, (size_t)sn->l1_size * 8);
    ret = write_l1(node, s->l1_table_offset, s->l1_table, s->l1_size, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (!ret)
        ret = update_refcounts(node, old, old_size, -1, &changed, err);
    if (!ret)
        ret = refresh_active(node, err);
    if (!ret && sn->disk_size && sn->disk_size != node->size) {
        node->size = sn->disk_size;
        ret = qcow2_update_header(node, err);
    }
out:
    pthread_mutex_unlock(&node->lock);
    free(snap_l1);
    free(old);
    return ret;
}

/* QEMU's error_setg_errno: the step that failed and the errno text. */
static int errno_error(struct qimg_error *err, int ret, const char *what)
{
    return qimg_error_set(err, ret, "%s: %s", what, strerror(-ret));
}

static int snapshot_delete(struct qimg_image *node, const char *key,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn = NULL, gone;
    uint64_t *l1 = NULL;
    bool changed;
    int ret;

    /* qemu-img snapshot -d looks snapshots up by name only. */
    for (uint32_t i = 0; i < s->nb_snapshots && !sn; i++)
        if (!strcmp(s->snapshots[i].name, key))
            sn = &s->snapshots[i];
    if (!sn)
        return qimg_error_set(err, -ENOENT, "snapshot not found");
    ret = qcow2_snapshot_l1_check(s, sn, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&node->lock);
    gone = *sn;
    /* The table no longer lists it before its clusters are released; past
     * that point a failure only leaks them (check -r leaks repairs). */
    memmove(sn, sn + 1, (size_t)(s->snapshots + s->nb_snapshots - sn - 1) *
                            sizeof(*sn));
    s->nb_snapshots--;
    ret = write_table(node, err);
    if (ret < 0) {
        errno_error(err, ret, "Failed to remove snapshot from snapshot list");
        goto out;
    }
    /* Read only now, as QEMU: an I/O error injected by then hits it. */
    ret = qcow2_snapshot_read_l1(node, &gone, &l1, err);
    if (!ret)
        ret = update_refcounts(node, l1, gone.l1_size, -1, &changed, err);
    if (ret < 0) {
        errno_error(err, ret, "Failed to free the cluster and L1 table");
        goto out;
    }
    /* a table QEMU cannot free (past 2^62) merely leaks */
    qcow2_free_clusters_or_warn(node, gone.l1_table_offset,
                                qimg_div_round_up((uint64_t)gone.l1_size * 8,
                                                  s->cluster_size) *
                                    s->cluster_size, false);
    ret = refresh_active(node, err);
    if (ret < 0)
        errno_error(err, ret, "Failed to update snapshot status in disk");
out:
    pthread_mutex_unlock(&node->lock);
    free(gone.id);
    free(gone.name);
    free(gone.extra_unknown);
    free(l1);
    return ret;
}

int qcow2_snapshot_change(struct qimg_image *node, enum qimg_snapshot_op op,
                          const char *name, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    /* What snapshot operations free is discarded in the file (QEMU's
     * pass-discard-snapshot default). */
    qcow2_discards_begin(node);
    switch (op) {
    case QIMG_SNAPSHOT_CREATE: ret = snapshot_create(node, name, err); break;
    case QIMG_SNAPSHOT_APPLY: ret = snapshot_apply(node, name, err); break;
    case QIMG_SNAPSHOT_DELETE: ret = snapshot_delete(node, name, err); break;
    default: ret = qimg_error_set(err, -EINVAL, "Unknown snapshot operation");
    }
    qcow2_discards_end(node);
    if (!ret) {
        pthread_mutex_lock(&node->lock);
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
        if (!ret)
            ret = qcow2_cache_flush(node, &s->refblock_cache, err);
        pthread_mutex_unlock(&node->lock);
    }
    return ret;
}
