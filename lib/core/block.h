/*
 * block.h - internal interfaces of libqimg: the image node, the format
 * driver table and the storage table.  Formats and storages include this;
 * the CLI never does (it sees only include/qimg.h).
 *
 * Concurrency contract for drivers:
 * - pread, pwrite, pwrite_zeroes, discard, flush and block_status may be
 *   called from several threads at once on one node.  A driver protects its
 *   metadata (tables, caches, allocation) with node->lock and does data I/O
 *   and (de)compression outside it.
 * - open, close, create, truncate, check, amend and the other metadata
 *   operations are called with no other call running on the node.
 *
 * The core checks bounds, alignment and read-only state before calling a
 * driver, so drivers see only requests inside [0, size) on writable nodes
 * for write operations.  A NULL operation means "not supported".
 */
#ifndef QIMG_CORE_BLOCK_H
#define QIMG_CORE_BLOCK_H

#include <pthread.h>
#include <sys/types.h>

#include "qimg.h"

/* Deepest backing chain we open (QEMU refuses loops; we also bound depth). */
#define QIMG_MAX_CHAIN_DEPTH 4096
/* Largest single request a driver receives; callers split larger ones. */
#define QIMG_MAX_REQUEST (64u << 20)
/* Bytes read from the head of a file to probe its format. */
#define QIMG_PROBE_BYTES 2048
/* The end of the addressable range (QEMU's BDRV_MAX_LENGTH: INT64_MAX
 * aligned down to 1 GiB): a storage request ending past it fails with
 * EIO before any I/O, as in QEMU. */
#define QIMG_MAX_LENGTH ((uint64_t)INT64_MAX - ((1u << 30) - 1))

/* ---- storage (protocol) layer ------------------------------------------ */

struct qimg_storage;

enum {
    QIMG_STORAGE_CAN_ZERO = 1 << 0,     /* efficient zeroing available */
    QIMG_STORAGE_CAN_DISCARD = 1 << 1,
    QIMG_STORAGE_IS_BLOCKDEV = 1 << 2,
};

struct qimg_storage_ops {
    const char *name;                        /* "file" */
    const struct qimg_opt_desc *create_opts; /* in "Formatting" print order */
    size_t n_create_opts;

    /* Open filename; flags are QIMG_OPEN_*. */
    int (*open)(struct qimg_storage *st, const char *filename, unsigned flags,
                enum qimg_cache cache, struct qimg_error *err);
    void (*close)(struct qimg_storage *st);
    /* Full-length I/O; reads past the end of the file return zeroes. */
    int (*pread)(struct qimg_storage *st, uint64_t off, size_t len, void *buf,
                 struct qimg_error *err);
    int (*pwrite)(struct qimg_storage *st, uint64_t off, size_t len,
                  const void *buf, struct qimg_error *err);
    int (*flush)(struct qimg_storage *st, struct qimg_error *err);
    int64_t (*get_size)(struct qimg_storage *st);
    int (*truncate)(struct qimg_storage *st, uint64_t size,
                    enum qimg_prealloc prealloc, struct qimg_error *err);
    int (*pwrite_zeroes)(struct qimg_storage *st, uint64_t off, uint64_t len,
                         unsigned flags, struct qimg_error *err);
    int (*discard)(struct qimg_storage *st, uint64_t off, uint64_t len,
                   struct qimg_error *err);
    /* DATA or ZERO (a hole) for the extent at off; ext->length set. */
    int (*block_status)(struct qimg_storage *st, uint64_t off, uint64_t len,
                        struct qimg_extent *ext, struct qimg_error *err);
    /* Bytes allocated on the host, or a negative errno. */
    int64_t (*allocated_size)(struct qimg_storage *st);
    /* Create (or truncate) filename with opts ("size", "preallocation"). */
    int (*create)(const char *filename, const struct qimg_opts *opts,
                  struct qimg_error *err);
    /* Change the lock/permission state (e.g. read-only -> read-write). */
    int (*set_perm)(struct qimg_storage *st, unsigned flags,
                    struct qimg_error *err);
};

struct qimg_storage {
    const struct qimg_storage_ops *ops;
    char *filename;
    unsigned caps;          /* QIMG_STORAGE_* */
    bool read_only;
    uint32_t align;         /* required I/O alignment (O_DIRECT), 1 if none */
    void *priv;
};

/* Choose the storage for a filename: "file", or "memory" for claimed names. */
const struct qimg_storage_ops *qimg_storage_for(const char *filename);
int qimg_storage_open(struct qimg_storage **out, const char *filename,
                      unsigned flags, enum qimg_cache cache,
                      struct qimg_error *err);
void qimg_storage_close(struct qimg_storage *st);

extern const struct qimg_storage_ops qimg_storage_file;

/*
 * The memory storage (lib/proto/memory.c): images held in process memory,
 * for fuzz targets and unit tests.  A name registered with
 * qimg_mem_register() opens its buffer instead of a file (registered names
 * shadow files: use a "mem:" prefix by convention).  In exclusive mode
 * every name goes to the memory storage and unregistered ones fail with
 * ENOENT, so nothing an image names (backing or data files) reaches the
 * file system.  Creating an image on a claimed name registers it.  All of
 * this is process-global and thread-safe.
 */
#define QIMG_MEM_MAX_SIZE (1ull << 30)   /* bounds growth by writes */
extern const struct qimg_storage_ops qimg_storage_memory;
/* Register a copy of data[0..len) as name, replacing any buffer of that
 * name (storages open on the old one keep it until closed). */
int qimg_mem_register(const char *name, const void *data, size_t len);
int qimg_mem_unregister(const char *name);
void qimg_mem_set_exclusive(bool on);
/* True when opening filename would use the memory storage. */
bool qimg_mem_claims(const char *filename);
/* A malloc'ed copy of the current contents of name. */
int qimg_mem_get(const char *name, void **data, size_t *len);
/* A nonzero id unique to the buffer registered as name, or 0: backing
 * loops are detected by it as files are by inode. */
uint64_t qimg_mem_id(const char *name);

/* ---- format drivers ------------------------------------------------------ */

/* Internal snapshots, for formats that have them. */
struct qimg_snapshot_ops {
    int (*list)(struct qimg_image *node, struct qimg_snapshot **list, size_t *n,
                struct qimg_error *err);
    int (*load_tmp)(struct qimg_image *node, const char *id, const char *name,
                    struct qimg_error *err);
    int (*change)(struct qimg_image *node, enum qimg_snapshot_op op,
                  const char *name, struct qimg_error *err);
};

/* A bitmap's contents, borrowed from its driver. */
struct qimg_bitmap_view {
    const uint8_t *bits;        /* one bit per granule, LSB first */
    uint64_t nbits;
    uint32_t granularity_bits;
    uint64_t size;              /* guest bytes covered */
};

/* Persistent dirty bitmaps, for formats that store them (the messages
 * are QEMU's; see qimg_bitmap_add and friends). */
struct qimg_bitmap_ops {
    bool (*supported)(struct qimg_image *node);
    int (*list)(struct qimg_image *node, struct qimg_bitmap **list, size_t *n,
                struct qimg_error *err);
    int (*add)(struct qimg_image *node, const char *name, uint64_t granularity,
               bool disabled, struct qimg_error *err);
    int (*remove)(struct qimg_image *node, const char *name,
                  struct qimg_error *err);
    int (*clear)(struct qimg_image *node, const char *name,
                 struct qimg_error *err);
    int (*enable)(struct qimg_image *node, const char *name, bool enable,
                  struct qimg_error *err);
    /* Contents of a usable bitmap (loaded on demand). */
    int (*view)(struct qimg_image *node, const char *name,
                struct qimg_bitmap_view *v, struct qimg_error *err);
    int (*merge)(struct qimg_image *node, const char *name,
                 struct qimg_image *src, const char *src_name,
                 struct qimg_error *err);
};

/* qimg_bitmap_ops.view for any node: "Dirty bitmap 'X' not found" when its
 * format has no bitmaps. */
int qimg_bitmap_view(struct qimg_image *node, const char *name,
                     struct qimg_bitmap_view *v, struct qimg_error *err);
/* Pass a message to the handler set with qimg_set_warning_handler(). */
void qimg_message(enum qimg_msg_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* QEMU's automatic node name ("#block" and digits) for messages. */
void qimg_node_name(const struct qimg_image *node, char *buf, size_t len);

struct qimg_format {
    const char *name;
    const char *description;
    size_t state_size;                     /* bytes of node->state */
    const struct qimg_opt_desc *create_opts; /* in "Formatting" print order */
    size_t n_create_opts;
    bool is_raw;                           /* probing fallback */
    /* Formats with no protocol under them (none yet) set this. */
    bool no_storage;

    /* Score 0..100 for how well the first bytes match (no I/O). */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Validate the header and fill node->size, backing names. */
    int (*open)(struct qimg_image *node, const struct qimg_opts *opts,
                struct qimg_error *err);
    void (*close)(struct qimg_image *node);
    int (*create)(const char *filename, const struct qimg_opts *opts,
                  struct qimg_error *err);

    int (*pread)(struct qimg_image *node, uint64_t off, size_t len, void *buf,
                 struct qimg_error *err);
    int (*pwrite)(struct qimg_image *node, uint64_t off, size_t len,
                  const void *buf, struct qimg_error *err);
    /* One whole cluster (or the image's tail), compressed if it shrinks. */
    int (*pwrite_compressed)(struct qimg_image *node, uint64_t off, size_t len,
                             const void *buf, struct qimg_error *err);
    int (*pwrite_zeroes)(struct qimg_image *node, uint64_t off, uint64_t len,
                         unsigned flags, struct qimg_error *err);
    int (*discard)(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_error *err);
    int (*flush)(struct qimg_image *node, struct qimg_error *err);
    /* One extent at off in this layer only (ALLOCATED/DATA/ZERO flags;
     * QIMG_BS_RECURSE_FILE to have the storage asked about holes). */
    int (*block_status)(struct qimg_image *node, uint64_t off, uint64_t len,
                        struct qimg_extent *ext, struct qimg_error *err);
    int (*truncate)(struct qimg_image *node, uint64_t size, bool exact,
                    enum qimg_prealloc prealloc, struct qimg_error *err);
    int (*get_info)(struct qimg_image *node, struct qimg_info *info,
                    struct qimg_error *err);
    int (*measure)(const struct qimg_opts *opts, struct qimg_image *src,
                   uint64_t size, struct qimg_measure *out,
                   struct qimg_error *err);
    int (*check)(struct qimg_image *node, unsigned fix, struct qimg_check *res,
                 struct qimg_error *err);
    const struct qimg_snapshot_ops *snapshot;
    /* qemu-img amend: options it accepts (sorted listing) and the change. */
    const struct qimg_opt_desc *amend_opts;
    size_t n_amend_opts;
    int (*amend)(struct qimg_image *node, const struct qimg_opts *opts,
                 bool force, void (*progress)(void *, double), void *opaque,
                 struct qimg_error *err);
    /* Record a new backing file name and format (NULL: none) in the
     * header; node->backing_name/backing_fmt follow.  qemu-img rebase. */
    int (*change_backing)(struct qimg_image *node, const char *backing,
                          const char *backing_fmt, struct qimg_error *err);
    /* Drop every guest cluster so that all reads go to the backing file
     * (qemu-img commit empties the overlay). */
    int (*make_empty)(struct qimg_image *node, struct qimg_error *err);
    /*
     * pwrite_compressed in two steps, so that the copy engine compresses
     * in all its threads and still lays clusters out in guest order.
     * compress_cluster (any thread, no lock) compresses len bytes of one
     * cluster into out (at least a cluster) and returns the compressed
     * length, 0 when it does not shrink, or a negative errno; then
     * pwrite_compressed_data stores it (clen 0: buf as it is).  Optional.
     */
    ssize_t (*compress_cluster)(struct qimg_image *node, const void *buf,
                                size_t len, void *out, struct qimg_error *err);
    int (*pwrite_compressed_data)(struct qimg_image *node, uint64_t off,
                                  size_t len, const void *buf,
                                  const void *cdata, size_t clen,
                                  struct qimg_error *err);
    const struct qimg_bitmap_ops *bitmap;  /* NULL: no persistent bitmaps */
};

/*
 * Internal block status flag: a driver sets it on a DATA|OFFSET_VALID
 * extent of its storage when holes in the file under it may read as zero
 * (QEMU asks the file only then, e.g. for qcow2 images with preallocated
 * metadata).  The core narrows the extent with the storage's status and
 * clears the flag; callers never see it.
 */
#define QIMG_BS_RECURSE_FILE (1u << 15)

/* All registered formats, in the order QEMU lists them. */
extern const struct qimg_format *const qimg_formats[];
extern const size_t qimg_n_formats;
const struct qimg_format *qimg_format_find(const char *name);

extern const struct qimg_format qimg_format_raw;
extern const struct qimg_format qimg_format_qcow2;

/* ---- the image node ------------------------------------------------------ */

struct qimg_image {
    const struct qimg_format *fmt;
    void *state;                    /* fmt->state_size bytes, zeroed */
    struct qimg_storage *file;      /* storage under the format */
    struct qimg_image *backing;     /* opened backing image or NULL */
    char *filename;                 /* name as given by the user */
    uint64_t size;                  /* guest-visible size in bytes */
    unsigned flags;                 /* QIMG_OPEN_* */
    enum qimg_cache cache;
    bool read_only;
    bool probed_raw;
    int depth;                      /* 0 for the top of the chain */
    pthread_mutex_t lock;           /* serialises driver metadata */
    /* Backing file as recorded in the image header (set by open). */
    char backing_name[4096];
    char backing_fmt[64];
};

/* Open a whole chain; used by qimg_open and by drivers that open files. */
int qimg_image_open_node(struct qimg_image **out, const char *filename,
                         const char *format, const struct qimg_opts *fmt_opts,
                         unsigned flags, enum qimg_cache cache, int depth,
                         struct qimg_error *err);

/*
 * After img grew from old bytes: make the new area read as zero although
 * the backing file is longer (zero clusters from the first aligned offset,
 * zeroes written before it), as QEMU does.  On failure the size goes back
 * to old and err says "Failed to zero out new clusters: ..." (chain.c).
 */
int qimg_zero_grown(struct qimg_image *img, uint64_t old,
                    struct qimg_error *err);

/*
 * qimg_pwrite_compressed in two steps (see compress_cluster in struct
 * qimg_format): out holds at least a cluster.  -ENOTSUP when the format
 * has no two-step form (use qimg_pwrite_compressed).
 */
ssize_t qimg_compress_cluster(struct qimg_image *img, const void *buf,
                              size_t len, void *out, struct qimg_error *err);
int qimg_pwrite_compressed_data(struct qimg_image *img, uint64_t off,
                                size_t len, const void *buf, const void *cdata,
                                size_t clen, struct qimg_error *err);

/*
 * Open a file that an image names inside itself (a qcow2 data file, a vmdk
 * extent, a vhdx/vpc parent): the one entry point for such opens, so that
 * name resolution and the untrusted-image policy live in one place.
 * With QIMG_CHILD_RELATIVE the name is taken relative to the directory of
 * parent's file name (as QEMU resolves vmdk extents and backing files);
 * without it, as given (QEMU opens qcow2 data files relative to the
 * working directory).  flags are QIMG_OPEN_* for the new storage: pass
 * parent->flags for "the same access as the image".  *out is owned by the
 * caller (qimg_storage_close).
 */
enum { QIMG_CHILD_RELATIVE = 1 << 0 };
int qimg_open_child_storage(struct qimg_image *parent, const char *name,
                            unsigned child_flags, unsigned flags,
                            struct qimg_storage **out, struct qimg_error *err);

/* Read through the backing chain (zeroes past the backing's end). */
int qimg_read_backing(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err);

/* Option helpers for drivers. */
int qimg_opts_get_size(const struct qimg_opts *opts, const char *key,
                       uint64_t def, uint64_t *out, struct qimg_error *err);
int qimg_opts_get_bool(const struct qimg_opts *opts, const char *key,
                       bool def, bool *out, struct qimg_error *err);

#endif /* QIMG_CORE_BLOCK_H */
