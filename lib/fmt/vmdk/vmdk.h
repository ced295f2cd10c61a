/*
 * vmdk.h - the VMware virtual disk format, shared by the files of
 * lib/fmt/vmdk/ (VMware's "Virtual Disk Format 5.0" and QEMU 7.2's
 * behaviour, which is the reference for what is accepted and how).
 *
 * Who does what:
 *   vmdk.c         probe, open (descriptor file or sparse file), the
 *                  extent list, reads, writes, block status, info, CID
 *                  updates, the driver table
 *   vmdk-desc.c    descriptor text: the lookups QEMU does (createType,
 *                  CID, parentFileNameHint), extent lines, CID rewrite,
 *                  the descriptor create writes
 *   vmdk-sparse.c  hosted sparse extents ("KDMV"): header, grain
 *                  directory, grain table cache, grain lookup and
 *                  allocation; the COWD (vmfsSparse) and seSparse
 *                  headers, which share the lookup
 *   vmdk-stream.c  compressed grains (streamOptimized): grain markers,
 *                  inflate (zlib) and deflate (libdeflate), appending
 *                  grains, and the grain tables, grain directory, footer
 *                  and end-of-stream marker written when a stream ends
 *   vmdk-create.c  create: every subformat, byte for byte as QEMU 7.2;
 *                  create_stream: streamOptimized written forward to a pipe
 *   vmdk-check.c   check: QEMU's walk over every grain
 *
 * Locking: node->lock guards the extent list's mutable parts (allocation
 * cursors, grain directories, the grain table cache, the stream tables,
 * the CID flag).  Grain data is read and written outside it, except when
 * a grain is being allocated: the allocating writer keeps the lock from
 * the lookup to the grain table update, so two writers never allocate
 * one grain twice.
 */
#ifndef QIMG_FMT_VMDK_H
#define QIMG_FMT_VMDK_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"

#define VMDK_SECTOR 512u
#define VMDK3_MAGIC 0x434f5744u         /* "COWD" */
#define VMDK4_MAGIC 0x4b444d56u         /* "KDMV" */

/* Hosted sparse header flags (VMDK 5.0 spec). */
#define VMDK4_FLAG_NL_DETECT (1u << 0)
#define VMDK4_FLAG_RGD (1u << 1)        /* redundant grain directory */
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2) /* GTE 1 means a zeroed grain */
#define VMDK4_FLAG_COMPRESS (1u << 16)
#define VMDK4_FLAG_MARKER (1u << 17)
#define VMDK4_COMPRESSION_DEFLATE 1
#define VMDK4_GD_AT_END UINT64_MAX      /* header gdOffset of a stream */
#define VMDK_GTE_ZEROED 1u

/* Stream markers (type of a metadata marker). */
enum {
    VMDK_MARKER_EOS = 0,
    VMDK_MARKER_GT = 1,
    VMDK_MARKER_GD = 2,
    VMDK_MARKER_FOOTER = 3,
};

/* The header of a hosted sparse extent after the magic: 75 bytes. */
#define VMDK4_HEADER_SIZE 75
#define VMDK3_HEADER_SIZE 40

/* ---- limits on image data (docs/LIMITS.md) ------------------------------ */

/* QEMU reads at most this much of a descriptor (its unbounded-allocation
 * guard); text beyond it is not part of the descriptor. */
#define VMDK_DESC_READ_MAX ((1u << 20) - 1)
/* The embedded descriptor area QEMU reads CID, parentCID and the parent
 * hint from: 20 sectors, what create reserves. */
#define VMDK_DESC_SIZE (20u * VMDK_SECTOR)
/* QEMU refuses to rewrite (CID update) a descriptor file larger than
 * this ("VMDK description file too big"). */
#define VMDK_DESC_FILE_MAX (16u << 20)
/* Grains larger than 1 GiB are refused, as QEMU does. */
#define VMDK_MAX_GRAIN_SECTORS 0x200000u
/* Grain directory entries, QEMU's bound (32M: 8 TB at the smallest
 * grains and tables, more than the format's 2 TB). */
#define VMDK_MAX_GD_ENTRIES (32u * 1024 * 1024)
/* Grain table entries of a hosted sparse extent (QEMU refuses more). */
#define VMDK4_MAX_GT_ENTRIES 512u
/* Grain table entries of COWD and seSparse extents (fixed by format). */
#define VMDK_FIXED_GT_ENTRIES 4096u
/* Extents of one image: 32 TB of 2 GB extents.  QEMU has no bound (and
 * opens a file per extent line). */
#define VMDK_MAX_EXTENTS 16384u
/* Grain directories held in memory by one image, all extents together. */
#define VMDK_MAX_TABLE_BYTES (512ull << 20)
/* Compressed grains are inflated whole: grains of streamOptimized
 * extents are at most this big (VMware writes 64 KiB). */
#define VMDK_MAX_COMPRESSED_GRAIN (16u << 20)
/* Grain table entries are 32-bit sector numbers: allocation stops at
 * 2 TB into an extent file (QEMU's VMDK_EXTENT_MAX_SECTORS). */
#define VMDK_EXTENT_MAX_SECTORS (1ull << 32)
/* Nested descriptors (a sparse extent whose header carries a descriptor
 * instead of a capacity).  QEMU recurses without bound and crashes. */
#define VMDK_MAX_NESTING 4
/* Grain tables cached per image. */
#define VMDK_GT_CACHE_SIZE 32
/* Longest parentFileNameHint QEMU takes (its backing file buffer). */
#define VMDK_MAX_BACKING_NAME 4095u

/* ---- extents ---------------------------------------------------------- */

enum vmdk_kind {
    VMDK_KIND_FLAT,         /* FLAT or VMFS: guest data at an offset */
    VMDK_KIND_SPARSE,       /* hosted sparse "KDMV" (incl. compressed) */
    VMDK_KIND_COWD,         /* VMFSSPARSE / VMDK3 "COWD" */
    VMDK_KIND_SESPARSE,     /* ESXi seSparse (read only) */
};

/* Where a grain's data is (vmdk_lookup). */
enum vmdk_grain {
    VMDK_GRAIN_ERROR,       /* QEMU's VMDK_ERROR: broken mapping */
    VMDK_GRAIN_UNALLOC,     /* not here: backing file or zeroes */
    VMDK_GRAIN_ZERO,        /* zeroed grain */
    VMDK_GRAIN_DATA,        /* host_off valid */
};

struct vmdk_stream;

struct vmdk_extent {
    struct qimg_storage *file;  /* node->file or owned (owns_file) */
    bool owns_file;
    enum vmdk_kind kind;
    char type[11];              /* descriptor type, "" when embedded */
    bool compressed, has_marker, zero_grain;
    bool from_footer;           /* header read from a stream's footer */
    uint32_t version, flags;    /* hosted sparse header */

    uint64_t start;             /* first guest sector */
    uint64_t sectors;           /* guest sectors */
    uint64_t flat_offset;       /* FLAT: byte offset in the file */

    /* sparse: grain directory (l1) and tables (l2), in QEMU's terms */
    uint64_t grain_sectors;     /* QEMU's cluster_sectors */
    uint32_t l1_size, l2_size;  /* GD entries, GT entries */
    uint32_t l1_entry_sectors;  /* guest sectors per GD entry (uint32!) */
    uint64_t gd_offset;         /* bytes */
    uint64_t rgd_offset;        /* bytes, 0: no redundant directory */
    unsigned entry_size;        /* 4, or 8 for seSparse */
    void *gd;                   /* l1_size entries, host order */
    uint32_t *rgd;              /* loaded for writable images only */
    uint64_t se_gt_offset;      /* seSparse: sectors */
    uint64_t se_grain_offset;
    uint64_t next_sector;       /* allocation cursor (QEMU's) */
    /* Hosted sparse header as found (for the stream footer). */
    uint64_t desc_sector, desc_sectors, grain_offset;
    struct vmdk_stream *stream; /* compressed writable extents */
};

struct vmdk_gt_entry {
    int ext;                    /* extent index, -1: free */
    uint32_t sector;            /* table sector (QEMU's l2_offset) */
    uint64_t used;              /* LRU stamp */
    uint8_t *table;             /* l2_size * entry_size bytes */
    size_t cap;
};

struct vmdk_state {
    struct vmdk_extent *ext;
    size_t n_ext;
    size_t cap_ext;
    uint64_t table_bytes;       /* grain directories held */
    char create_type[128];
    uint32_t cid, parent_cid;
    bool cid_updated, cid_checked;
    uint64_t desc_offset;       /* 0: descriptor file, 0x200: embedded */
    uint64_t desc_limit;        /* bytes of the embedded area we rewrite */
    int nesting;
    bool too_big;               /* guest sectors overflowed */
    struct vmdk_gt_entry cache[VMDK_GT_CACHE_SIZE];
    uint64_t clock;
};

/* Result of a grain lookup (QEMU's get_cluster_offset without
 * allocation), plus what an allocation needs. */
struct vmdk_lookup {
    enum vmdk_grain state;
    uint64_t host;              /* byte offset of the grain in the file */
    uint32_t l1_index, l2_index;
    uint32_t l2_sector;         /* 0: no grain table */
    uint32_t raw;               /* the GT entry as stored */
};

/* vmdk.c */
struct vmdk_extent *vmdk_find_extent(struct vmdk_state *s, uint64_t sector);
int vmdk_add_extent(struct qimg_image *node, struct vmdk_extent *proto,
                    struct vmdk_extent **out, struct qimg_error *err);
int vmdk_read_desc(struct qimg_storage *file, uint64_t off, char **out,
                   struct qimg_error *err);
int vmdk_open_desc_file(struct qimg_image *node, const char *buf,
                        struct qimg_error *err);
int vmdk_update_cid(struct qimg_image *node, struct qimg_error *err);
bool vmdk_cid_valid(struct qimg_image *node);

/* vmdk-desc.c */
int vmdk_desc_value(const char *desc, const char *name, char *buf,
                    size_t size);
int vmdk_desc_cid(const char *desc, bool parent, uint32_t *cid);
int vmdk_desc_parent(const char *desc, size_t buflen, char *name,
                     size_t size);
int vmdk_desc_set_cid(char *desc, size_t size, uint32_t cid);
/* One extent line as QEMU's sscanf reads it. */
struct vmdk_extent_line {
    int matches;
    char access[11];
    int64_t sectors;
    char type[11];
    char fname[512];
    int64_t flat_offset;
    const char *end;        /* where the scan stopped (memoisation) */
};
void vmdk_scan_extent_line(const char *p, struct vmdk_extent_line *l);
int vmdk_parse_extents(struct qimg_image *node, const char *desc,
                       struct qimg_error *err);

/* vmdk-sparse.c */
int vmdk_open_sparse(struct qimg_image *node, struct qimg_storage *file,
                     const char *buf, struct qimg_error *err);
int vmdk_open_sesparse(struct qimg_image *node, struct qimg_storage *file,
                       struct qimg_error *err);
int vmdk_lookup(struct qimg_image *node, struct vmdk_extent *e,
                uint64_t sector, struct vmdk_lookup *l,
                struct qimg_error *err);
/* Grain table entries of e from index i of table l1 on (at most n). */
int vmdk_gt_entries(struct qimg_image *node, struct vmdk_extent *e,
                    uint32_t l1_index, uint32_t l2_index, uint32_t *out,
                    uint32_t n, struct qimg_error *err);
int vmdk_set_gte(struct qimg_image *node, struct vmdk_extent *e,
                 const struct vmdk_lookup *l, uint32_t count,
                 const uint32_t *values, struct qimg_error *err);
int vmdk_alloc_gt(struct qimg_image *node, struct vmdk_extent *e,
                  struct vmdk_lookup *l, struct qimg_error *err);
void vmdk_cache_drop(struct vmdk_state *s);
uint64_t vmdk_round_up(uint64_t n, uint64_t d);

/* vmdk-stream.c */
int vmdk_read_compressed(struct vmdk_extent *e, uint64_t host,
                         uint64_t off_in_grain, size_t len, void *buf,
                         struct qimg_error *err);
ssize_t vmdk_compress_grain(struct qimg_image *node, const void *buf,
                            size_t len, void *out, struct qimg_error *err);
int vmdk_write_compressed(struct qimg_image *node, struct vmdk_extent *e,
                          uint64_t guest_off, size_t len, const void *buf,
                          const void *cdata, size_t clen,
                          struct qimg_error *err);
int vmdk_stream_zero(struct qimg_image *node, struct vmdk_extent *e,
                     const struct vmdk_lookup *l, struct qimg_error *err);
int vmdk_stream_finish(struct qimg_image *node, bool eof,
                       struct qimg_error *err);
/* The head of a stream written forward onto a pipe (e set up by
 * vmdk_create_stream, desc its descriptor text). */
int vmdk_stream_start(struct qimg_image *node, struct vmdk_extent *e,
                      const char *desc, size_t len, struct qimg_error *err);
void vmdk_stream_free(struct vmdk_extent *e);
/* A stream on a pipe (GD_AT_END, footer not reachable) read forward by
 * its grain markers: reads must come in guest order. */
int vmdk_stream_read_begin(struct vmdk_extent *e, struct qimg_error *err);
bool vmdk_stream_reading(const struct vmdk_extent *e);
int vmdk_stream_read(struct qimg_image *node, struct vmdk_extent *e,
                     uint64_t eoff, size_t len, void *buf,
                     struct qimg_error *err);
int vmdk_stream_status(struct qimg_image *node, struct vmdk_extent *e,
                       uint64_t eoff, uint64_t len, bool *data, uint64_t *n,
                       struct qimg_error *err);
bool vmdk_stream_lookup(struct vmdk_extent *e, uint32_t l1, uint32_t l2,
                        uint32_t *gte);

/* vmdk-create.c */
int vmdk_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err);
int vmdk_create_stream(struct qimg_image *node, const struct qimg_opts *opts,
                       struct qimg_error *err);

/* vmdk-check.c */
int vmdk_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
               struct qimg_error *err);

#endif /* QIMG_FMT_VMDK_H */
