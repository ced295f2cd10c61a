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
    /* Non-fatal events after the first are not printed (a fatal one
     * leaves the node unusable: there is no second). */
    if (!__atomic_exchange_n(&s->corruption_signalled, true,
                             __ATOMIC_ACQ_REL) || fatal) {
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
 * Before guest data is written at host [host, host+len) of the image file:
 * refuse, as QEMU does, a write that would land on metadata, which only a
 * damaged or hostile image makes possible (an L2 entry pointing at a
 * table, refcounts that call a table free).  QEMU's default checks these
 * structures in this order; the ones found without I/O are checked here:
 * the header, the active L1 table, the refcount table, the snapshot table
 * and the bitmap directory.  Called with the lock.
 */
int qcow2_check_data_write(struct qimg_image *node, uint64_t host,
                           uint64_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    const char *what = NULL;

    if (s->data_file)
        return 0;       /* guest data lives in another file */
    if (ranges_overlap(host, len, 0, cs))
        what = "qcow2_header";
    else if (ranges_overlap(host, len, s->l1_table_offset,
                            qimg_div_round_up((uint64_t)s->l1_size * 8, cs) * cs))
        what = "active L1 table";
    else if (ranges_overlap(host, len, s->refcount_table_offset,
                            (uint64_t)s->refcount_table_clusters * cs))
        what = "refcount table";
    else if (s->nb_snapshots &&
             ranges_overlap(host, len, s->snapshots_offset,
                            qimg_div_round_up(s->snapshots_size, cs) * cs))
        what = "snapshot table";
    else if (s->has_bitmaps_ext &&
             ranges_overlap(host, len, s->bitmap_dir_offset,
                            qimg_div_round_up(s->bitmap_dir_size, cs) * cs))
        what = "bitmap directory";
    if (!what)
        return 0;
    return qcow2_signal_corruption(node, true, err, "Preventing invalid write "
                                   "on metadata (overlaps with %s)", what);
}
