/*
 * qcow2-corrupt.c - corruption events.
 *
 * Metadata that cannot be right (an unaligned L2 table or data cluster, a
 * cluster that cannot be freed, an allocation over metadata) is reported
 * as QEMU reports it: one line through the warning handler, the first
 * time only.  A fatal event on a writable image marks the image corrupt
 * on disk (version 3 only: version 2 has no such bit) and leaves the node
 * unusable, so that nothing more is written over the damage; any other
 * event (read-only images, or events QEMU treats as harmless) only warns.
 * The operation that met the damage fails with EIO.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "fmt/qcow2/qcow2.h"

int qcow2_signal_corruption(struct qimg_image *node, bool fatal,
                            struct qimg_error *err, const char *fmt, ...)
{
    struct qcow2_state *s = node->state;
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fatal = fatal && !node->read_only;
    /* Events after the first are not printed, unless a fatal one meets
     * an image not yet marked corrupt (QEMU's rule: check and repair go
     * on past a fatal event and meet the same damage again). */
    if (!__atomic_exchange_n(&s->corruption_signalled, true,
                             __ATOMIC_ACQ_REL) ||
        (fatal && !(s->incompatible & QCOW2_INCOMPAT_CORRUPT))) {
        if (fatal)
            qimg_message(QIMG_MSG_PLAIN, "qcow2: Marking image as corrupt: "
                         "%s; further corruption events will be "
                         "suppressed\n", msg);
        else
            qimg_message(QIMG_MSG_PLAIN, "qcow2: Image is corrupt: %s; "
                         "further non-fatal corruption events will be "
                         "suppressed\n", msg);
    }
    if (fatal) {
        qcow2_mark_corrupt(node, NULL);
        __atomic_store_n(&s->broken, true, __ATOMIC_RELEASE);
    }
    return qimg_error_set(err, -EIO, "Input/output error");
}

bool qcow2_is_broken(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    return __atomic_load_n(&s->broken, __ATOMIC_ACQUIRE);
}

/* The checks every walk of the mapping makes, with QEMU's wording. */
int qcow2_check_l2_offset(struct qimg_image *node, uint64_t l2_offset,
                          uint64_t l1_index, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (!(l2_offset & (s->cluster_size - 1)))
        return 0;
    return qcow2_signal_corruption(node, true, err, "L2 table offset %#llx "
                                   "unaligned (L1 index: %#llx)",
                                   (unsigned long long)l2_offset,
                                   (unsigned long long)l1_index);
}

int qcow2_check_cluster_offset(struct qimg_image *node, uint64_t host,
                               uint64_t l2_offset, uint64_t l2_index,
                               struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (!(host & (s->cluster_size - 1)))
        return 0;
    return qcow2_signal_corruption(node, true, err, "Cluster allocation offset "
                                   "%#llx unaligned (L2 offset: %#llx, L2 "
                                   "index: %#llx)", (unsigned long long)host,
                                   (unsigned long long)l2_offset,
                                   (unsigned long long)l2_index);
}

/*
 * Drop the reference an L2 entry held on its host cluster.  An unaligned
 * host cannot be freed: QEMU reports it (a non-fatal event) and goes on,
 * leaving the cluster leaked.
 */
int qcow2_free_host_cluster(struct qimg_image *node, uint64_t host,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (host & (s->cluster_size - 1)) {
        qcow2_signal_corruption(node, false, NULL, "Cannot free unaligned "
                                "cluster %#llx", (unsigned long long)host);
        return 0;
    }
    return qcow2_free_clusters(node, host, s->cluster_size, err);
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/*
 * Which metadata a write to [off, off+len) of the image file would land
 * on, checked as QEMU's default ("cached") overlap check does, in its
 * order: the header, the active L1 table, the refcount table, the
 * snapshot table, the snapshots' L1 tables, the active L2 tables, the
 * refcount blocks, the bitmap directory.  Only the inactive L2 tables are
 * not checked (they would need I/O).  The range is widened to clusters;
 * structures in ign (QCOW2_OL_*) are skipped.  Returns the name or NULL.
 */
static const char *overlapping(struct qimg_image *node, unsigned ign,
                               uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    unsigned chk = ~ign;

    if (!len)
        return NULL;
    if ((chk & QCOW2_OL_MAIN_HEADER) && off < cs)
        return "qcow2_header";
    len = qimg_align_down((off & (cs - 1)) + len + cs - 1, cs);
    off = qimg_align_down(off, cs);
    if ((chk & QCOW2_OL_ACTIVE_L1) && s->l1_size &&
        ranges_overlap(off, len, s->l1_table_offset, (uint64_t)s->l1_size * 8))
        return "active L1 table";
    if ((chk & QCOW2_OL_REFCOUNT_TABLE) && s->refcount_table_size &&
        ranges_overlap(off, len, s->refcount_table_offset,
                       s->refcount_table_size * 8))
        return "refcount table";
    if ((chk & QCOW2_OL_SNAPSHOT_TABLE) && s->snapshots_size &&
        ranges_overlap(off, len, s->snapshots_offset, s->snapshots_size))
        return "snapshot table";
    if ((chk & QCOW2_OL_INACTIVE_L1) && s->snapshots) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++)
            if (s->snapshots[i].l1_size &&
                ranges_overlap(off, len, s->snapshots[i].l1_table_offset,
                               (uint64_t)s->snapshots[i].l1_size * 8))
                return "inactive L1 table";
    }
    if ((chk & QCOW2_OL_ACTIVE_L2) && s->l1_table) {
        for (uint32_t i = 0; i < s->l1_size; i++) {
            uint64_t t = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
            if (t && ranges_overlap(off, len, t, cs))
                return "active L2 table";
        }
    }
    if ((chk & QCOW2_OL_REFCOUNT_BLOCK) && s->refcount_table) {
        for (uint64_t i = 0; i < s->refcount_table_size; i++) {
            uint64_t b = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
            if (b && ranges_overlap(off, len, b, cs))
                return "refcount block";
        }
    }
    if ((chk & QCOW2_OL_BITMAP_DIRECTORY) &&
        (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) &&
        ranges_overlap(off, len, s->bitmap_dir_offset, s->bitmap_dir_size))
        return "bitmap directory";
    return NULL;
}

int qcow2_overlap_check(struct qimg_image *node, unsigned ign, uint64_t off,
                        uint64_t len, struct qimg_error *err)
{
    const char *what = overlapping(node, ign, off, len);

    if (!what)
        return 0;
    return qcow2_signal_corruption(node, true, err, "Preventing invalid write "
                                   "on metadata (overlaps with %s)", what);
}

/* Guest data written into the image file (not an external data file). */
int qcow2_check_data_write(struct qimg_image *node, uint64_t host,
                           uint64_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (s->data_file)
        return 0;       /* guest data lives in another file */
    return qcow2_overlap_check(node, 0, host, len, err);
}
