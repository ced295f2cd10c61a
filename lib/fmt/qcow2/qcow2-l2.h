/*
 * qcow2-l2.h - L2 entries and table access shared by the mapping code
 * (qcow2-cluster.c) and the range operations (qcow2-range.c).  Internal
 * to the qcow2 driver.
 */
#ifndef QIMG_QCOW2_L2_H
#define QIMG_QCOW2_L2_H

#include "fmt/qcow2/qcow2.h"

static inline uint64_t l2_get(const struct qcow2_state *s, const uint8_t *l2,
                       uint64_t idx)
{
    return qimg_ld_be64(l2 + idx * s->l2_entry_size);
}

static inline uint64_t l2_bitmap(const struct qcow2_state *s, const uint8_t *l2,
                          uint64_t idx)
{
    return s->l2_entry_size == 16 ? qimg_ld_be64(l2 + idx * 16 + 8) : 0;
}

static inline void l2_set(const struct qcow2_state *s, uint8_t *l2, uint64_t idx,
                   uint64_t entry, uint64_t bitmap)
{
    qimg_st_be64(l2 + idx * s->l2_entry_size, entry);
    if (s->l2_entry_size == 16)
        qimg_st_be64(l2 + idx * 16 + 8, bitmap);
}

/* Whether an entry names a host cluster: a nonzero offset, or with an
 * external data file offset 0 marked COPIED (data file clusters always
 * have refcount 1), as QEMU tells them apart. */
static inline bool entry_mapped(const struct qcow2_state *s, uint64_t entry)
{
    return (entry & QCOW2_L2E_OFFSET_MASK) ||
           (s->data_file && (entry & QCOW2_OFLAG_COPIED));
}

/* Type of subcluster sc (0 without extended L2) of an entry.  With
 * extended L2, an entry whose bitmap calls a subcluster both allocated
 * and zero, or calls one allocated without a host cluster, is INVALID. */
static inline enum qcow2_cluster_type entry_type(const struct qcow2_state *s,
                                          uint64_t entry, uint64_t bitmap,
                                          unsigned sc)
{
    bool mapped = entry_mapped(s, entry);

    if (entry & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_CLUSTER_COMPRESSED;
    if (s->subcluster_bits) {
        if (mapped ? ((bitmap >> 32) & bitmap & 0xffffffffull)
                   : (bitmap & 0xffffffffull))
            return QCOW2_CLUSTER_INVALID;
        if (bitmap & (1ull << (32 + sc)))
            return mapped ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
        if (bitmap & (1ull << sc))
            return QCOW2_CLUSTER_NORMAL;
        return mapped ? QCOW2_CLUSTER_UNALLOCATED_ALLOC : QCOW2_CLUSTER_UNALLOCATED;
    }
    if ((entry & QCOW2_OFLAG_ZERO) && s->version >= 3)
        return (entry & QCOW2_L2E_OFFSET_MASK) ? QCOW2_CLUSTER_ZERO_ALLOC
                                              : QCOW2_CLUSTER_ZERO_PLAIN;
    return mapped ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
}

static inline uint64_t host_of(uint64_t entry)
{
    return entry & QCOW2_L2E_OFFSET_MASK;
}


/* Load the L2 table for guest offset; *l2 NULL when none is allocated.
 * Called with the lock. */
int qcow2_get_l2(struct qimg_image *node, uint64_t off, uint8_t **l2,
                 struct qimg_error *err);
/* The L2 table for guest offset, allocated (or copied when shared) so
 * that it can be changed.  Called with the lock, which it releases while
 * another writer installs that table (see qcow2_settle). */
int qcow2_get_l2_for_write(struct qimg_image *node, uint64_t off,
                           uint8_t **l2, struct qimg_error *err);
/* Wait (the lock released meanwhile) until no writer is installing the
 * L2 table for guest offset off and no allocation in flight covers
 * [off, off+len) (within one table): what the entries say after this
 * stays true through a qcow2_get_l2_for_write in the same lock hold.
 * Returns whether it waited.  Called with the lock. */
bool qcow2_settle(struct qimg_image *node, uint64_t off, uint64_t len);
/* Drop the reference an L2 entry held on its host cluster(s). */
int qcow2_release_entry(struct qimg_image *node, uint64_t entry,
                        struct qimg_error *err);
/* The same without writing the L2 cache first (the caller has). */
int qcow2_free_entry(struct qimg_image *node, uint64_t entry,
                     struct qimg_error *err);
/* Write L1 entry l1i (from s->l1_table) to the image. */
int qcow2_write_l1_entry(struct qimg_image *node, uint64_t l1i,
                         struct qimg_error *err);

#endif
