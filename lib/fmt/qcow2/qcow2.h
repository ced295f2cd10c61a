/*
 * qcow2.h - internal definitions of the qcow2 driver (QEMU's docs/interop/
 * qcow2.txt is the specification).  Split by concern:
 *   qcow2.c          probe, open (header, extensions, features), close,
 *                    header updates, info, the driver table
 *   qcow2-cache.c    the metadata table cache (L2 tables, refcount blocks)
 *   qcow2-cluster.c  guest -> host mapping: lookup, block status, reads,
 *                    writes with allocation and copy-on-write, zeroing
 *   qcow2-refcount.c refcounts: lookup, update, cluster allocation
 *   qcow2-create.c   create and measure
 *   qcow2-check.c    check and repair
 *   qcow2-compress.c compressed clusters (raw deflate, zstd): reads, writes
 *   qcow2-bitmap*.c  persistent dirty bitmaps: directory, contents, the
 *                    writable session and operations
 *   qcow2-crypto.c   encryption: LUKS header in the image, legacy AES,
 *                    encrypted data I/O
 *
 * Locking: node->lock guards every field below that changes after open
 * (tables, caches, free-cluster cursor, header fields).  Guest data I/O
 * for clusters that are already allocated runs outside the lock.
 */
#ifndef QIMG_FMT_QCOW2_H
#define QIMG_FMT_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "core/util.h"

#define QCOW2_MAGIC 0x514649fbu   /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 104
#define QCOW2_V3_HEADER_LEN_CTYPE 112  /* with compression_type, padded */

/* Limits, as QEMU's, with their reasons. */
#define QCOW2_MIN_CLUSTER_BITS 9        /* 512 B: the spec's minimum */
#define QCOW2_MAX_CLUSTER_BITS 21       /* 2 MiB: QEMU's implementation limit */
/* An L1 table larger than 32 MiB is refused (QEMU's QCOW_MAX_L1_SIZE):
 * it bounds the memory an image header can make us allocate. */
#define QCOW2_MAX_L1_SIZE (32u << 20)
/* Refcount table at most 8 MiB (QEMU's QCOW_MAX_REFTABLE_SIZE), same reason. */
#define QCOW2_MAX_REFTABLE_SIZE (8u << 20)
/* Backing file names longer than 1023 bytes are invalid per the spec. */
#define QCOW2_MAX_BACKING_NAME 1023
/* Snapshot count bound, as QEMU's QCOW_MAX_SNAPSHOTS. */
#define QCOW2_MAX_SNAPSHOTS 65536
/* QEMU bounds the whole snapshot table to 64 MiB (QCOW_MAX_SNAPSHOTS_SIZE)
 * and the extra data per entry to 1 KiB: names and ids read are bounded. */
#define QCOW2_MAX_SNAPSHOTS_SIZE (64u << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
/* Host offsets are 56 bits (L1/L2 entry layout). */
#define QCOW2_MAX_HOST_OFFSET ((1ull << 56) - 1)

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define QCOW2_AUTOCLEAR_KNOWN 0x3ull  /* bits we maintain */

/* L1/L2 entry bits. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
/* Extended L2 bitmap: bits 0-31 say a subcluster is allocated, 32-63 zero. */
#define QCOW2_SUBCL_ALL_ALLOC 0xffffffffull
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
/* Bits an entry must have clear (check reports them). */
#define QCOW2_L1E_RESERVED 0x7f000000000001ffull
#define QCOW2_L2E_STD_RESERVED 0x3f000000000001feull

/* crypt_method */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* What one guest cluster (or subcluster) is, after decoding its L2 entry. */
enum qcow2_cluster_type {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_UNALLOCATED_ALLOC, /* ext. L2: subcluster of a host cluster */
    QCOW2_CLUSTER_ZERO_PLAIN,   /* zero flag, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC,   /* zero flag with a preallocated host cluster */
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
    QCOW2_CLUSTER_INVALID,      /* ext. L2: bitmap contradicts the entry */
};

/* One cached metadata table (an L2 table or a refcount block). */
struct qcow2_cache_entry {
    uint64_t offset;     /* host offset of the table, 0 = free slot */
    uint8_t *data;       /* one cluster, big-endian as on disk */
    uint64_t lru;
    int32_t next;        /* next entry in the same hash bucket, -1: none */
    bool dirty;
};

struct qcow2_cache {
    struct qcow2_cache_entry *e;
    size_t n;
    size_t table_size;          /* bytes: the cluster size */
    uint64_t lru_clock;
    struct qcow2_cache *depends; /* write this cache back first */
    /* The events QEMU raises when it loads and writes back a table of
     * this cache (l2_load/l2_update, refblock_load/refblock_update_part). */
    enum qimg_event ev_load, ev_update;
    /* The overlap check's kind of these tables (QCOW2_OL_*): a table
     * written back may overlap only its own kind. */
    unsigned ol_self;
    /* Tables written back (wgen) and known on stable storage (sgen):
     * counts of write-backs, so that a flush without the lock can say
     * which ones it covered (qcow2_cache_synced). */
    uint64_t wgen, sgen;
    /* Lookup by offset: bucket heads (entry indexes, -1: empty), a power
     * of two at least twice n.  Tables live in one allocation, n slots of
     * table_size, touched only as slots are first used. */
    int32_t *buckets;
    size_t bucket_mask;
    uint8_t *slab;
};

struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    uint64_t icount;          /* UINT64_MAX: not recorded */
    uint32_t extra_size;      /* bytes of extra data (at most 1 KiB) */
    uint8_t *extra_unknown;   /* extra data past the 24 known bytes */
};

/* Persistent dirty bitmaps (qcow2.txt "Bitmaps"); QEMU's limits. */
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIR (1024u * QCOW2_MAX_BITMAPS)
#define QCOW2_BME_MAX_NAME 1023
#define QCOW2_BME_MIN_GRAN_BITS 9
#define QCOW2_BME_MAX_GRAN_BITS 31
#define QCOW2_BME_MAX_TABLE_SIZE 0x8000000u
#define QCOW2_BME_MAX_PHYS_SIZE 0x20000000u     /* bytes of bitmap data */
#define QCOW2_BME_FLAG_IN_USE (1u << 0)
#define QCOW2_BME_FLAG_AUTO (1u << 1)
#define QCOW2_BME_TABLE_RESERVED 0xff000000000001feull
#define QCOW2_BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_BME_TABLE_ALL_ONES 1ull
#define QCOW2_BT_DIRTY_TRACKING 1
/* Our own bounds on what hostile images can make us do (docs/LIMITS.md):
 * bytes of bitmap tables read at open, bytes of bitmaps held in memory. */
#define QCOW2_MAX_BITMAP_TABLES_READ (256ull << 20)
#define QCOW2_MAX_BITMAP_MEMORY (1ull << 30)

struct qcow2_bitmap {
    char *name;
    uint32_t flags;             /* as in the directory (QCOW2_BME_FLAG_*) */
    uint8_t granularity_bits;
    uint64_t table_offset;      /* 0: not in the directory yet (new) */
    uint32_t table_size;        /* entries of 8 bytes */
    /* In memory: one bit per granule, LSB first as stored on disk. */
    uint8_t *bits;              /* NULL until loaded */
    uint64_t nbits;
    bool enabled;               /* records writes ("auto") */
    bool inconsistent;          /* in use when opened: contents unusable */
    /* Every bit clear since the calloc of a new bitmap (cleared by any
     * write of a bit): storing it writes no data cluster, so it skips the
     * scan that would fault in every page of a big bitmap. */
    bool zero;
};

struct qcow2_state {
    /* header */
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint32_t crypt_method;
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible;
    uint64_t compatible;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;

    /* derived geometry */
    uint32_t l2_bits;            /* log2 of entries per L2 table */
    uint32_t l2_entry_size;      /* 8, or 16 with extended L2 entries */
    uint32_t subcluster_bits;    /* log2 subclusters per cluster (0 or 5) */
    uint64_t subcluster_size;
    uint32_t refcount_bits;
    uint32_t refcount_block_bits;/* log2 of entries per refcount block */
    uint64_t refcount_max;
    uint32_t csize_shift;        /* compressed descriptor: sector count */
    uint64_t csize_mask;
    uint64_t cluster_offset_mask;

    /* tables, host byte order */
    uint64_t *l1_table;
    uint64_t *refcount_table;
    uint64_t refcount_table_size;  /* entries */

    struct qcow2_cache l2_cache;
    struct qcow2_cache refblock_cache;
    uint64_t free_cluster_index;   /* allocation search starts here */
    uint64_t free_byte_offset;     /* where packed compressed data goes on */

    /* external data file (NULL: guest data lives in node->file) */
    struct qimg_storage *data_file;
    /* recorded name (malloc'd; NULL: none).  Any length that fits in the
     * header cluster, as in QEMU. */
    char *data_file_name;

    /* header extensions we do not interpret, kept verbatim on rewrite */
    uint8_t *unknown_ext;
    size_t unknown_ext_len;
    bool has_feature_table;
    /* bitmaps extension as written back (qcow2_bitmaps_sync_ext) */
    uint8_t bitmaps_ext[24];
    bool has_bitmaps_ext;
    uint8_t crypto_ext[16];
    bool has_crypto_ext;
    /* Encryption context (qcow2-crypto.c), NULL when unencrypted; it has
     * no key when opened for headers only.  Partial-sector writes of an
     * encrypted image are read-modify-writes under crypto_rmw_lock. */
    struct qimg_crypto *crypto;
    pthread_mutex_t crypto_rmw_lock;
    bool crypto_rmw_lock_ready;

    struct qcow2_bitmap *bitmaps;      /* persistent bitmaps (directory) */
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_offset, bitmap_dir_size;
    bool bitmaps_stale;        /* extension without its autoclear bit */
    bool bitmaps_session;      /* writable open: in use on disk, stored at
                                  close (qcow2-bitmap-ops.c) */
    uint32_t bitmaps_tracking; /* enabled loaded bitmaps: writes mark them */
    uint64_t bitmaps_memory;   /* bytes of bitmap contents loaded */
    struct qcow2_snapshot *snapshots;  /* nb_snapshots entries */
    uint64_t snapshots_size;       /* bytes of the table on disk */

    /* Between qcow2_discards_begin/end, clusters whose last reference
     * goes are discarded in the file (QEMU's discard passthrough): one
     * pending range, merged while adjacent; begin/end nest. */
    unsigned discard_freed;        /* nesting depth */
    uint64_t discard_off, discard_len;

    bool dirty_set;                /* we set the dirty bit on disk */
    bool header_needs_update;
    /* Block status looks for holes in the file under data clusters only
     * when the image looks metadata-preallocated; decided once. */
    bool prealloc_checked, prealloc_meta;

    /* New L2 tables flushed without the lock (qcow2-cluster.c): their L1
     * indexes; writers of those wait on l2_alloc_cond (initialised on
     * first use). */
    uint64_t l2_alloc_pending[8];
    unsigned n_l2_alloc_pending;
    bool l2_alloc_cond_ready;
    pthread_cond_t l2_alloc_cond;
    /* Guest ranges [off, end) whose new host clusters are being written
     * without the lock (qcow2-cluster.c): whoever would look at or
     * change their L2 entries waits on l2_alloc_cond until the entries
     * point at the data.  Full: writers keep the lock instead. */
    struct { uint64_t off, end; } inflight[32];
    unsigned n_inflight;

    /* Corruption events (qcow2-corrupt.c): one printed; after a fatal
     * one the node refuses further work. */
    bool corruption_signalled;
    bool broken;
};

static inline struct qcow2_state *qcow2_state(struct qimg_image *node)
{
    return node->state;
}

static inline uint64_t qcow2_offset_into_cluster(const struct qcow2_state *s,
                                                 uint64_t off)
{
    return off & (s->cluster_size - 1);
}

static inline uint64_t qcow2_l2_entries(const struct qcow2_state *s)
{
    return 1ull << s->l2_bits;
}

/* Storage holding guest data clusters. */
static inline struct qimg_storage *qcow2_data_storage(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    return s->data_file ? s->data_file : node->file;
}

/* qcow2.c */
int qcow2_update_header(struct qimg_image *node, struct qimg_error *err);
int qcow2_mark_corrupt(struct qimg_image *node, struct qimg_error *err);
/* A corruption event (qcow2-corrupt.c): prints QEMU's line the first
 * time, marks a writable image corrupt when fatal; returns -EIO. */
/* Metadata structures of the overlap check (QEMU's QCOW2_OL_* bits). */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0,
    QCOW2_OL_ACTIVE_L1 = 1 << 1,
    QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
};
/* A fatal corruption event when a write to [off, off+len) of the image
 * file would land on metadata other than the structures in ign
 * (qcow2-corrupt.c; QEMU's pre-write overlap check); 0 otherwise. */
int qcow2_overlap_check(struct qimg_image *node, unsigned ign, uint64_t off,
                        uint64_t len, struct qimg_error *err);
/* The same for guest data at host [host, host+len) (nothing to check with
 * an external data file). */
int qcow2_check_data_write(struct qimg_image *node, uint64_t host,
                           uint64_t len, struct qimg_error *err);
int qcow2_signal_corruption(struct qimg_image *node, bool fatal,
                            struct qimg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool qcow2_is_broken(struct qimg_image *node);
/* Write the in-memory snapshot table to new clusters and switch the header
 * to it (node->lock held; qcow2-snapshot-write.c). */
int qcow2_snapshot_write_table(struct qimg_image *node, struct qimg_error *err);
/* Free clusters; a failure is QEMU's warning "qcow2_free_clusters failed"
 * and the clusters leak (qcow2-bitmap-data.c). */
void qcow2_free_clusters_or_warn(struct qimg_image *node, uint64_t off,
                                 uint64_t len, bool discard);
/* 0, or a fatal corruption event for an unaligned L2 table (in L1 entry
 * l1_index) or host cluster (entry l2_index of the table at l2_offset). */
int qcow2_check_l2_offset(struct qimg_image *node, uint64_t l2_offset,
                          uint64_t l1_index, struct qimg_error *err);
int qcow2_check_cluster_offset(struct qimg_image *node, uint64_t host,
                               uint64_t l2_offset, uint64_t l2_index,
                               struct qimg_error *err);
/* Free the host cluster of an L2 entry (unaligned: a non-fatal event). */
int qcow2_free_host_cluster(struct qimg_image *node, uint64_t host,
                            struct qimg_error *err);
int qcow2_set_dirty(struct qimg_image *node, bool dirty, struct qimg_error *err);
/* Minimum L1 entries for a virtual size. */
uint64_t qcow2_l1_size_for(uint64_t size, uint32_t cluster_bits,
                           uint32_t l2_bits);

/* qcow2-cache.c */
int qcow2_cache_init(struct qcow2_cache *c, size_t entries, size_t table_size);
void qcow2_cache_release(struct qcow2_cache *c);
/* Borrow the table at offset (read from disk when not cached). */
int qcow2_cache_get(struct qimg_image *node, struct qcow2_cache *c,
                    uint64_t offset, uint8_t **table, struct qimg_error *err);
/* Borrow a slot for a new table at offset without reading it (zeroed). */
int qcow2_cache_get_empty(struct qimg_image *node, struct qcow2_cache *c,
                          uint64_t offset, uint8_t **table,
                          struct qimg_error *err);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table);
int qcow2_cache_flush(struct qimg_image *node, struct qcow2_cache *c,
                      struct qimg_error *err);
void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset);
/* Write back the dirty tables without flushing the storage (no dependency
 * handling: for caches nothing depends on in that order, or when the
 * caller orders them); returns the generation a later flush covers. */
int qcow2_cache_write_back(struct qimg_image *node, struct qcow2_cache *c,
                           uint64_t *gen, struct qimg_error *err);
/* Write back one table (no dependency handling). */
int qcow2_cache_write_table(struct qimg_image *node, struct qcow2_cache *c,
                            const uint8_t *table, struct qimg_error *err);
/* A storage flush, started after generation gen was written, completed. */
void qcow2_cache_synced(struct qcow2_cache *c, uint64_t gen);

/* qcow2-refcount.c */
int qcow2_refcount_load(struct qimg_image *node, struct qimg_error *err);
int qcow2_get_refcount(struct qimg_image *node, uint64_t cluster_index,
                       uint64_t *refcount, struct qimg_error *err);
/* Add delta (may be negative) to the refcounts of [offset, offset+len). */
int qcow2_update_refcount(struct qimg_image *node, uint64_t offset,
                          uint64_t len, int64_t delta, struct qimg_error *err);
/* One pass of it, as QEMU's snapshot walks update refcounts: -EAGAIN
 * (nothing counted) when a refcount block had to be created on the way
 * (a bogus offset far past the image). */
int qcow2_update_refcount_no_retry(struct qimg_image *node, uint64_t offset,
                                   uint64_t len, int64_t delta,
                                   struct qimg_error *err);
/* Allocate n contiguous clusters (refcount 1); returns the host offset. */
int64_t qcow2_alloc_clusters(struct qimg_image *node, uint64_t n,
                             struct qimg_error *err);
/* Allocate len bytes inside a cluster for compressed data. */
int64_t qcow2_alloc_bytes(struct qimg_image *node, uint64_t len,
                          struct qimg_error *err);
int qcow2_free_clusters(struct qimg_image *node, uint64_t offset, uint64_t len,
                        struct qimg_error *err);
/* Discard clusters freed from now on in the file (and data file ranges
 * of entries freed), until qcow2_discards_end issues the last ones.  What
 * QEMU passes through: frees of shrink, snapshot deletion, commit's
 * emptying, and guest discards of unmapping users. */
void qcow2_discards_begin(struct qimg_image *node);
void qcow2_discards_end(struct qimg_image *node);
/* Around a wait that releases the lock inside a begin/end window: the
 * pending range goes out first (another writer may reuse its clusters
 * meanwhile) and frees by other threads are not passed down.  suspend
 * returns the depth to give back to resume. */
unsigned qcow2_discards_suspend(struct qimg_image *node);
void qcow2_discards_resume(struct qimg_image *node, unsigned depth);
/* End of the last cluster with a nonzero refcount (from the table). */
uint64_t qcow2_image_end(struct qimg_image *node);
/* Clusters in [0, end) with a nonzero refcount, counting up to limit (0
 * when a refcount block cannot be read). */
uint64_t qcow2_count_used(struct qimg_image *node, uint64_t end,
                          uint64_t limit);
/* Allocate up to n free clusters at offset (stops at the first used one);
 * returns how many. */
int64_t qcow2_alloc_clusters_at(struct qimg_image *node, uint64_t offset,
                                uint64_t n, struct qimg_error *err);
/* New self-describing refcount structures at start (the image's end)
 * covering `additional` clusters after them; QEMU's qcow2_refcount_area.
 * Returns the offset after them. */
int64_t qcow2_refcount_area(struct qimg_image *node, uint64_t start,
                            uint64_t additional, bool exact, uint64_t new_idx,
                            uint64_t new_off, struct qimg_error *err);
/* Bytes of refcount blocks and table for `clusters` clusters (the fixed
 * point that counts itself); *blocks: how many blocks. */
uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
                                      uint32_t refcount_order, bool generous,
                                      uint64_t *blocks);
uint64_t qcow2_refcount_read_entry(const struct qcow2_state *s,
                                   const uint8_t *block, uint64_t index);
void qcow2_refcount_write_entry(const struct qcow2_state *s, uint8_t *block,
                                uint64_t index, uint64_t value);

/* qcow2-cluster.c */
struct qcow2_mapping {
    enum qcow2_cluster_type type;
    uint64_t host_offset;   /* for NORMAL/ZERO_ALLOC: of the guest offset */
    uint64_t l2_entry;      /* raw entry, for compressed descriptors */
    uint64_t bytes;         /* contiguous bytes with the same mapping */
};
int qcow2_get_mapping(struct qimg_image *node, uint64_t offset, uint64_t bytes,
                      struct qcow2_mapping *m, struct qimg_error *err);
int qcow2_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
                struct qimg_error *err);
int qcow2_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                 const void *buf, struct qimg_error *err);
int qcow2_pwrite_compressed(struct qimg_image *node, uint64_t off, size_t len,
                            const void *buf, struct qimg_error *err);
ssize_t qcow2_compress_cluster(struct qimg_image *node, const void *buf,
                               size_t len, void *out, struct qimg_error *err);
int qcow2_pwrite_compressed_data(struct qimg_image *node, uint64_t off,
                                 size_t len, const void *buf, const void *cdata,
                                 size_t clen, struct qimg_error *err);
int qcow2_pwrite_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err);
/* The L2 side of a compressed write at off, with the lock held: make the
 * table writable and refuse a cluster that holds data (prepare, before
 * the data is placed), then point the entry at the descriptor (set). */
int qcow2_compressed_l2_prepare(struct qimg_image *node, uint64_t off,
                                struct qimg_error *err);
int qcow2_compressed_l2_set(struct qimg_image *node, uint64_t off,
                            uint64_t descriptor, struct qimg_error *err);
int qcow2_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                  struct qimg_error *err);
int qcow2_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                       struct qimg_extent *ext, struct qimg_error *err);
int qcow2_grow_l1(struct qimg_image *node, uint64_t min_size,
                  struct qimg_error *err);
/* Give every guest cluster of [start, end) a host cluster (metadata), and
 * with falloc/full also allocate it in the file. */
int qcow2_preallocate(struct qimg_image *node, uint64_t start, uint64_t end,
                      enum qimg_prealloc mode, struct qimg_error *err);
/* The metadata side of shrinking to size bytes (QEMU's steps: entries
 * emptied, L1 entries and refcount blocks past the end dropped). */
int qcow2_shrink_tail(struct qimg_image *node, uint64_t size,
                      struct qimg_error *err);
/* Empty every entry of the guest clusters of [start, end), L2 tables
 * allocated (or copied) where missing, as QEMU's full discard does; what
 * loses its last reference is freed (discarded between
 * qcow2_discards_begin/end).  Called with the lock. */
int qcow2_empty_range(struct qimg_image *node, uint64_t start, uint64_t end,
                      struct qimg_error *err);
/* End of the last cluster below fsize with a reference (QEMU's
 * qcow2_get_last_cluster); none is a corruption event. */
int qcow2_last_used_end(struct qimg_image *node, uint64_t fsize,
                        uint64_t *end, struct qimg_error *err);
/* Drop refcount blocks that count nothing but themselves. */
int qcow2_shrink_reftable(struct qimg_image *node, struct qimg_error *err);

/* qcow2-compress.c */
int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in,
                     size_t in_len, uint8_t *out, size_t out_len);
/* Compress one cluster; returns the compressed size, or 0 when it does
 * not shrink (store uncompressed), or a negative errno. */
ssize_t qcow2_compress(const struct qcow2_state *s, const uint8_t *in,
                       size_t in_len, uint8_t *out, size_t out_cap);
int qcow2_read_compressed(struct qimg_image *node, uint64_t l2_entry,
                          uint8_t *cluster, struct qimg_error *err);

/* qcow2-create.c */
int qcow2_create(const char *filename, const struct qimg_opts *opts,
                 struct qimg_error *err);
int qcow2_measure(const struct qimg_opts *opts, struct qimg_image *src,
                  uint64_t size, struct qimg_measure *out,
                  struct qimg_error *err);
#define QCOW2_N_CREATE_OPTS 21
extern const struct qimg_opt_desc qcow2_create_opts[QCOW2_N_CREATE_OPTS];
/* Buffers given to qcow2_build_header hold cluster_size + this: the header,
 * extensions and backing name, measured afterwards.  What would not fit is
 * not written, only counted (the result is then > cluster_size). */
#define QCOW2_HEADER_BUF_EXTRA 8192
size_t qcow2_build_header(const struct qcow2_state *s, uint64_t size,
                          const char *backing, const char *backing_fmt,
                          uint8_t *buf, bool with_feature_table);

/* qcow2-bitmap.c: the extension and the directory */
#include <jansson.h>
/* Check the bitmaps extension as read from the header (open). */
int qcow2_bitmaps_parse_ext(struct qimg_image *node, const uint8_t *data,
                            uint32_t len, struct qimg_error *err);
/* Read and validate the directory and bitmap tables (open). */
int qcow2_bitmaps_load(struct qimg_image *node, struct qimg_error *err);
void qcow2_bitmaps_free(struct qcow2_state *s);
/* Index of the bitmap called name, or -1. */
int64_t qcow2_bitmap_find(const struct qcow2_state *s, const char *name);
/* Refresh bitmaps_ext from nb_bitmaps and the directory location. */
void qcow2_bitmaps_sync_ext(struct qcow2_state *s);
/* Write the directory of the stored bitmaps to new clusters, point the
 * header at it (autoclear bit set, or the extension dropped when none is
 * left) and free the old one. */
int qcow2_bitmap_dir_store(struct qimg_image *node, struct qimg_error *err);
/* Rewrite the directory where it is (flags changed only), with the
 * autoclear bit cleared meanwhile. */
int qcow2_bitmap_dir_update_in_place(struct qimg_image *node,
                                     struct qimg_error *err);
/* Header write followed by a flush. */
int qcow2_update_header_sync(struct qimg_image *node, struct qimg_error *err);
/* The "bitmaps" list of info's format-specific data. */
json_t *qcow2_bitmaps_info(const struct qcow2_state *s);
/* Call inc(opaque, offset, len) for every cluster range the bitmaps use
 * (directory, tables, data); returns 0 or a negative errno. */
int qcow2_bitmaps_for_each_range(struct qimg_image *node,
                                 void (*inc)(void *opaque, uint64_t off,
                                             uint64_t len),
                                 void *opaque);

/* qcow2-bitmap-data.c: bitmap tables and contents */
/* Bytes of the in-memory bitmap of nbits bits (whole 64-bit words). */
uint64_t qcow2_bitmap_bytes(uint64_t nbits);
/* Read and check a bitmap table (host order, *table malloc'ed). */
int qcow2_bitmap_table_load(struct qimg_image *node, uint64_t offset,
                            uint32_t size, uint64_t **table,
                            struct qimg_error *err);
/* Load bm's contents from its table (no-op when loaded or new). */
int qcow2_bitmap_load_bits(struct qimg_image *node, struct qcow2_bitmap *bm,
                           struct qimg_error *err);
/* Write bm's contents to new clusters and a new table (as QEMU: one
 * cluster per part with a set bit, zero entries elsewhere). */
int qcow2_bitmap_store_bits(struct qimg_image *node, struct qcow2_bitmap *bm,
                            struct qimg_error *err);
/* Free a stored table and the data clusters it points to. */
int qcow2_bitmap_free_table(struct qimg_image *node, uint64_t offset,
                            uint32_t size, struct qimg_error *err);
/* Set the bits covering guest bytes [off, off+len). */
void qcow2_bitmap_set_range(struct qcow2_bitmap *bm, uint64_t off,
                            uint64_t len);
/* Resize the contents for a guest of size bytes (new bits clear). */
int qcow2_bitmap_resize(struct qcow2_bitmap *bm, uint64_t size);

/* qcow2-bitmap-ops.c: the writable session and the operations */
/* Writable open: load every consistent bitmap and mark it in use. */
int qcow2_bitmaps_open_rw(struct qimg_image *node, struct qimg_error *err);
/* Close: store the bitmaps back, in use cleared. */
int qcow2_bitmaps_close(struct qimg_image *node, struct qimg_error *err);
/* Mark guest bytes written in the enabled bitmaps (any thread). */
void qcow2_bitmaps_mark(struct qimg_image *node, uint64_t off, uint64_t len);
/* The driver's write entry points: qcow2-cluster.c's, then marking. */
int qcow2_pwrite_marked(struct qimg_image *node, uint64_t off, size_t len,
                        const void *buf, struct qimg_error *err);
int qcow2_pwrite_compressed_marked(struct qimg_image *node, uint64_t off,
                                   size_t len, const void *buf,
                                   struct qimg_error *err);
int qcow2_pwrite_compressed_data_marked(struct qimg_image *node, uint64_t off,
                                        size_t len, const void *buf,
                                        const void *cdata, size_t clen,
                                        struct qimg_error *err);
int qcow2_pwrite_zeroes_marked(struct qimg_image *node, uint64_t off,
                               uint64_t len, unsigned flags,
                               struct qimg_error *err);
int qcow2_discard_marked(struct qimg_image *node, uint64_t off, uint64_t len,
                         struct qimg_error *err);
/* Before a resize: every bitmap must be usable.  After: resize them. */
int qcow2_bitmaps_can_resize(struct qimg_image *node, struct qimg_error *err);
int qcow2_bitmaps_resized(struct qimg_image *node, struct qimg_error *err);
/* Space the persistent bitmaps of src would take with cluster_size. */
int qcow2_measure_bitmaps(struct qimg_image *src, uint64_t cluster_size,
                          uint64_t *bytes, struct qimg_error *err);
extern const struct qimg_bitmap_ops qcow2_bitmap_ops;

/* qcow2-refcount.c: write an uncached L2 table after the refcount blocks
 * it depends on. */
int qcow2_write_l2_table(struct qimg_image *node, uint64_t l2off,
                         const uint8_t *l2, struct qimg_error *err);

/* qcow2-snapshot.c */
int qcow2_snapshots_load(struct qimg_image *node, struct qimg_error *err);
/* The same, repairing (check -r all) what QEMU's repair drops. */
int qcow2_snapshots_read(struct qimg_image *node, bool repair, int *nb_reduced,
                         int *extra_dropped, struct qimg_error *err);
void qcow2_snapshots_free(struct qcow2_state *s);
/* A snapshot's L1 size and offset, checked before its table is read:
 * QEMU's "Snapshot L1 table too large" / "... offset invalid". */
int qcow2_snapshot_l1_check(const struct qcow2_state *s,
                            const struct qcow2_snapshot *sn,
                            struct qimg_error *err);
/* The snapshot's L1 table, checked and in host order (*out: free()). */
int qcow2_snapshot_read_l1(struct qimg_image *node,
                           const struct qcow2_snapshot *sn, uint64_t **out,
                           struct qimg_error *err);
extern const struct qimg_snapshot_ops qcow2_snapshot_ops;
/* qcow2-snapshot-write.c */
int qcow2_snapshot_change(struct qimg_image *node, enum qimg_snapshot_op op,
                          const char *name, struct qimg_error *err);

/* qcow2-amend.c */
#define QCOW2_N_AMEND_OPTS 13
extern const struct qimg_opt_desc qcow2_amend_opts[QCOW2_N_AMEND_OPTS];
int qcow2_amend(struct qimg_image *node, const struct qimg_opts *opts,
                bool force, void (*progress)(void *, double), void *opaque,
                struct qimg_error *err);
/* Rewrite all refcounts with width 2^order bits (QEMU's walks; status
 * receives the work done of the total, qcow2-refcount.c). */
int qcow2_change_refcount_order(struct qimg_image *node, uint32_t order,
                                void (*status)(void *, uint64_t, uint64_t),
                                void *opaque, struct qimg_error *err);

/* qcow2-backing.c */
int qcow2_change_backing(struct qimg_image *node, const char *backing,
                         const char *backing_fmt, struct qimg_error *err);
int qcow2_make_empty(struct qimg_image *node, struct qimg_error *err);

/* qcow2-crypto.c */
struct qimg_crypto_create_opts;
/* Open: the encrypt.* options against crypt_method, then the crypto
 * context (unlocking LUKS key slots unless QIMG_OPEN_NO_IO). */
int qcow2_crypto_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err);
void qcow2_crypto_close(struct qcow2_state *s);
/* Guest data at host offset `host` (guest offset `guest`) of the data
 * storage, decrypted / encrypted when the image is encrypted; sector
 * aligned then.  Any thread, no lock. */
int qcow2_data_pread(struct qimg_image *node, uint64_t host, uint64_t guest,
                     size_t len, void *buf, struct qimg_error *err);
int qcow2_data_pwrite(struct qimg_image *node, uint64_t host, uint64_t guest,
                      size_t len, const void *buf, struct qimg_error *err);
/* True when the image is encrypted and [off, off+len) has a partial
 * sector (the request must then be widened). */
bool qcow2_crypto_unaligned(const struct qcow2_state *s, uint64_t off,
                            size_t len);
/* Create options: "encryption" / "encrypt.format" and encrypt.*, with
 * QEMU's messages; *encrypt false when none is asked for. */
int qcow2_crypto_parse_create(const struct qimg_opts *opts, bool *encrypt,
                              struct qimg_crypto_create_opts *co,
                              struct qimg_error *err);
/* Set up encryption on a new image (after its size and preallocation,
 * as QEMU does): header clusters, crypt_method, header rewrite. */
int qcow2_crypto_create(struct qimg_image *node,
                        const struct qimg_crypto_create_opts *co,
                        struct qimg_error *err);
/* Bytes of LUKS header clusters an image with opts takes (measure). */
int qcow2_crypto_measure(const struct qimg_opts *opts, uint64_t cluster_size,
                         uint64_t *bytes, struct qimg_error *err);
/* amend: whether encrypt.* options may be changed, then the change. */
int qcow2_crypto_amend_check(const struct qcow2_state *s,
                             struct qimg_error *err);
int qcow2_crypto_amend(struct qimg_image *node, const struct qimg_opts *opts,
                       bool force, struct qimg_error *err);
/* QEMU's bdrv_has_zero_init: false for preallocated encrypted images. */
bool qcow2_has_zero_init(struct qimg_image *node);
/* Where the LUKS header clusters are (len 0: none), for check. */
void qcow2_crypto_header_range(const struct qcow2_state *s, uint64_t *off,
                               uint64_t *len);
/* info's "encrypt" object, NULL when unencrypted. */
json_t *qcow2_crypto_info(const struct qcow2_state *s);

/* qcow2-check.c */
int qcow2_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
                struct qimg_error *err);

#endif /* QIMG_FMT_QCOW2_H */
