/*
 * qed.h - the QED format (QEMU Enhanced Disk, docs/interop/qed_spec.txt):
 * shared state and the split of the driver by concern.
 *
 *   qed.c          probe, open (every header field checked in QEMU's order,
 *                  against the limits below), the need-check repair of a
 *                  writable open, close, info, resize, change of backing
 *                  file, header rewrites
 *   qed-cluster.c  the mapping (L1 -> L2 -> cluster), reads and block
 *                  status through the shared table helper, writes with
 *                  allocation and copy from the backing file, zero writes
 *   qed-check.c    check and repair
 *   qed-create.c   create (QEMU's layout byte for byte) and its options
 *
 * On disk, little-endian: a 64-byte header at 0 (then the backing file
 * name, inside the header's clusters), the L1 table, then L2 tables and
 * data clusters in the order they were allocated, at the end of the file.
 * L1 and L2 tables are table_size clusters of 8-byte offsets; an L2 entry
 * 0 is unallocated (the backing file shows), 1 a zero cluster.
 */
#ifndef QIMG_FMT_QED_H
#define QIMG_FMT_QED_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "fmt/table/table.h"

#define QED_MAGIC 0x00444551u           /* "QED\0" read as little-endian */
#define QED_HEADER_LEN 64               /* the fixed header */

#define QED_F_BACKING_FILE 0x01ull
#define QED_F_NEED_CHECK 0x02ull
#define QED_F_BACKING_FORMAT_NO_PROBE 0x04ull
#define QED_FEATURE_MASK                                                       \
    (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)
/* No compat or autoclear feature is defined: unknown autoclear bits are
 * cleared by a writable open, unknown compat bits only block a new
 * backing file name. */
#define QED_COMPAT_FEATURE_MASK 0ull
#define QED_AUTOCLEAR_FEATURE_MASK 0ull

/* The spec's bounds (QEMU's too): cluster 4 KiB..64 MiB and table 1..16
 * clusters, both powers of two. */
#define QED_MIN_CLUSTER_SIZE 4096u
#define QED_MAX_CLUSTER_SIZE (64u << 20)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_CLUSTER_SIZE 65536u
#define QED_DEFAULT_TABLE_SIZE 4u

/*
 * Largest L1/L2 table we hold in memory.  The spec allows 16 x 64 MiB =
 * 1 GiB, but QEMU's largest-image formula wraps to 0 for every geometry
 * with tables over 16 MiB, so an image with a non-zero size never has
 * larger tables (1 MiB clusters x 16, 2 MiB x 8): only hostile zero-size
 * images do, for which QEMU 7.2 allocates up to 1 GiB per table.
 */
#define QED_MAX_TABLE_BYTES (16u << 20)
/* The L2 table cache: up to 16 tables (QEMU keeps 50), 32 MiB at most. */
#define QED_L2_CACHE_SLOTS 16
#define QED_L2_CACHE_BYTES (32u << 20)
/* Backing file names are read into node->backing_name (QEMU: PATH_MAX);
 * one this long or longer is refused ("Failed to read backing filename"). */
#define QED_MAX_BACKING_NAME 4096u
/* check's map of referenced clusters, one bit per cluster of the file:
 * 128 MiB covers a 4 TiB file of 4 KiB clusters.  Beyond it check fails
 * with ENOMEM, as QEMU's does when its allocation fails. */
#define QED_CHECK_MAX_BITMAP (128ull << 20)

struct qed_header {
    uint32_t magic;
    uint32_t cluster_size;              /* bytes */
    uint32_t table_size;                /* clusters per table */
    uint32_t header_size;               /* clusters */
    uint64_t features;
    uint64_t compat_features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;           /* bytes */
    uint64_t image_size;                /* bytes */
    uint32_t backing_filename_offset;   /* bytes from the start */
    uint32_t backing_filename_size;
};

struct qed_state {
    struct qed_header h;                /* as in memory: the on-disk copy
                                           follows every change */
    uint64_t table_bytes;               /* cluster_size * table_size */
    uint32_t table_nelems;              /* entries per table */
    unsigned l2_shift, l1_shift;        /* guest offset -> indices */
    uint64_t l2_mask;
    struct qimg_table l1;
    struct qimg_table_cache l2;
    /* alloc.end is QEMU's file_size: the file length rounded down to a
     * cluster at open, moved by every allocation. */
    struct qimg_alloc alloc;
};

/* qed.c */
void qed_header_encode(const struct qed_header *h, uint8_t *buf);
/* Rewrite the 64-byte header from s->h (the bytes after it untouched). */
int qed_write_header(struct qimg_image *node, struct qimg_error *err);
/* Set or clear the need-check bit on disk. */
int qed_set_need_check(struct qimg_image *node, bool on,
                       struct qimg_error *err);
/* QEMU's largest image for a geometry, with its 64-bit wrap-around. */
uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size);
bool qed_cluster_size_valid(uint64_t cluster_size);
bool qed_table_size_valid(uint64_t table_size);
bool qed_image_size_valid(uint64_t size, uint32_t cluster_size,
                          uint32_t table_size);

/* An offset where a data cluster may be: aligned, past the header, inside
 * the file as allocated so far. */
static inline bool qed_cluster_offset_ok(const struct qed_state *s,
                                         uint64_t off)
{
    uint64_t header = (uint64_t)s->h.header_size * s->h.cluster_size;

    return !(off & (s->h.cluster_size - 1)) && off >= header &&
           off < s->alloc.end;
}

/* An offset where a whole table may be (QEMU's test, which refuses every
 * table of a one-cluster table size: its end equals its start). */
static inline bool qed_table_offset_ok(const struct qed_state *s, uint64_t off)
{
    uint64_t end = off + (uint64_t)(s->h.table_size - 1) * s->h.cluster_size;

    return end > off && qed_cluster_offset_ok(s, off) &&
           qed_cluster_offset_ok(s, end);
}

/* qed-cluster.c */
int qed_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err);
int qed_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err);
int qed_pwrite_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                      unsigned flags, struct qimg_error *err);
int qed_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err);
int qed_flush(struct qimg_image *node, struct qimg_error *err);

/* qed-check.c */
int qed_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
              struct qimg_error *err);

/* qed-create.c */
#define QED_N_CREATE_OPTS 5
extern const struct qimg_opt_desc qed_create_opts[QED_N_CREATE_OPTS];
int qed_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err);

#endif /* QIMG_FMT_QED_H */
