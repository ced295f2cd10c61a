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

#include <jansson.h>

#include "qimg.h"

/* Deepest backing chain we open (QEMU refuses loops; we also bound depth). */
#define QIMG_MAX_CHAIN_DEPTH 4096
/* Largest single request a driver receives; callers split larger ones. */
#define QIMG_MAX_REQUEST (64u << 20)
/* Bytes read from the head of a file to probe its format: QEMU's
 * BLOCK_PROBE_BUF_SIZE, so that every probe sees what QEMU's sees (and
 * filters such as blkverify see the same first read). */
#define QIMG_PROBE_BYTES 512
/* The end of the addressable range (QEMU's BDRV_MAX_LENGTH: INT64_MAX
 * aligned down to 1 GiB): a storage request ending past it fails with
 * EIO before any I/O, as in QEMU. */
#define QIMG_MAX_LENGTH ((uint64_t)INT64_MAX - ((1u << 30) - 1))
/* QEMU's checks of a new image length before any driver runs (create.c):
 * past INT64_MAX "Image size cannot be negative" (-EINVAL), past
 * QIMG_MAX_LENGTH "offset(N) exceeds maximum(M)" (-EIO); else 0. */
int qimg_check_new_length(uint64_t size, struct qimg_error *err);
/* Whether name is one of QEMU's block driver names (its BlockdevDriver
 * enum, which create options such as backing_fmt are checked against). */
bool qimg_blockdev_driver_known(const char *name);

/*
 * Internal open flag: the storage or node being opened is a file an image
 * names, in role r (QIMG_ROLE_*): the untrusted-image policy checks it
 * (core/policy.h).  Set only on the one open concerned; a node drops it
 * once its file is open, so it never reaches what that node opens.
 */
#define QIMG_OPEN_ROLE_SHIFT 24
#define QIMG_OPEN_ROLE(r) ((unsigned)(r) << QIMG_OPEN_ROLE_SHIFT)
#define QIMG_OPEN_ROLE_MASK QIMG_OPEN_ROLE(QIMG_ROLE_ANY)

/* ---- storage (protocol) layer ------------------------------------------ */

struct qimg_storage;

enum {
    QIMG_STORAGE_CAN_ZERO = 1 << 0,     /* efficient zeroing available */
    QIMG_STORAGE_CAN_DISCARD = 1 << 1,
    QIMG_STORAGE_IS_BLOCKDEV = 1 << 2,
    /* Read forward only (a pipe): the copy engine reads it in order. */
    QIMG_STORAGE_SEQUENTIAL = 1 << 3,
    /* A write waits for a server's answer, not for this machine's CPU
     * (NBD): the copy engine keeps more chunks in flight to it. */
    QIMG_STORAGE_REMOTE = 1 << 4,
};

/*
 * Events a format raises at the points where QEMU's drivers raise theirs
 * (BLKDBG_EVENT): storages that inject errors on them (blkdebug) see them
 * through qimg_storage_event(); every other storage ignores them.  The
 * names are QEMU's (qimg_event_name), in QEMU's order.
 */
enum qimg_event {
    QIMG_EV_L1_UPDATE,
    QIMG_EV_L1_GROW_ALLOC_TABLE,
    QIMG_EV_L1_GROW_WRITE_TABLE,
    QIMG_EV_L1_GROW_ACTIVATE_TABLE,
    QIMG_EV_L2_LOAD,
    QIMG_EV_L2_UPDATE,
    QIMG_EV_L2_UPDATE_COMPRESSED,
    QIMG_EV_L2_ALLOC_COW_READ,
    QIMG_EV_L2_ALLOC_WRITE,
    QIMG_EV_READ_AIO,
    QIMG_EV_READ_BACKING_AIO,
    QIMG_EV_READ_COMPRESSED,
    QIMG_EV_WRITE_AIO,
    QIMG_EV_WRITE_COMPRESSED,
    QIMG_EV_VMSTATE_LOAD,
    QIMG_EV_VMSTATE_SAVE,
    QIMG_EV_COW_READ,
    QIMG_EV_COW_WRITE,
    QIMG_EV_REFTABLE_LOAD,
    QIMG_EV_REFTABLE_GROW,
    QIMG_EV_REFTABLE_UPDATE,
    QIMG_EV_REFBLOCK_LOAD,
    QIMG_EV_REFBLOCK_UPDATE,
    QIMG_EV_REFBLOCK_UPDATE_PART,
    QIMG_EV_REFBLOCK_ALLOC,
    QIMG_EV_REFBLOCK_ALLOC_HOOKUP,
    QIMG_EV_REFBLOCK_ALLOC_WRITE,
    QIMG_EV_REFBLOCK_ALLOC_WRITE_BLOCKS,
    QIMG_EV_REFBLOCK_ALLOC_WRITE_TABLE,
    QIMG_EV_REFBLOCK_ALLOC_SWITCH_TABLE,
    QIMG_EV_CLUSTER_ALLOC,
    QIMG_EV_CLUSTER_ALLOC_BYTES,
    QIMG_EV_CLUSTER_FREE,
    QIMG_EV_FLUSH_TO_OS,
    QIMG_EV_FLUSH_TO_DISK,
    QIMG_EV_PWRITEV_RMW_HEAD,
    QIMG_EV_PWRITEV_RMW_AFTER_HEAD,
    QIMG_EV_PWRITEV_RMW_TAIL,
    QIMG_EV_PWRITEV_RMW_AFTER_TAIL,
    QIMG_EV_PWRITEV,
    QIMG_EV_PWRITEV_ZERO,
    QIMG_EV_PWRITEV_DONE,
    QIMG_EV_EMPTY_IMAGE_PREPARE,
    QIMG_EV_L1_SHRINK_WRITE_TABLE,
    QIMG_EV_L1_SHRINK_FREE_L2_CLUSTERS,
    QIMG_EV_COR_WRITE,
    QIMG_EV_CLUSTER_ALLOC_SPACE,
    QIMG_EV_NONE,
    QIMG_EV_COUNT
};
/* "l1_update" ...; NULL past the end. */
const char *qimg_event_name(enum qimg_event ev);
/* Raise ev on st and every storage under it (no-op for most). */
void qimg_storage_event(struct qimg_storage *st, enum qimg_event ev);
/* Both storages are known to be the same file (device and inode). */
bool qimg_storage_same_file(const struct qimg_storage *a,
                            const struct qimg_storage *b);

struct qimg_storage_ops {
    const char *name;                        /* driver name: "file" */
    /* The PROTO of "PROTO:..." names that select this storage (QEMU's
     * protocol_name), or NULL. */
    const char *protocol;
    const struct qimg_opt_desc *create_opts; /* in "Formatting" print order */
    size_t n_create_opts;
    /*
     * Open options the storage takes besides "driver" and "filename";
     * an entry ending in '.' takes every key with that prefix.  Any other
     * key is refused with QEMU's "Block protocol 'X' doesn't support the
     * option 'Y'" after open.  NULL: none.
     */
    const char *const *runtime_opts;
    /*
     * Options that make a node something its file name alone does not
     * open again (QEMU's strong_runtime_opts): when one is set the node
     * is named json:{...}.  Same prefix rule.  NULL: none.
     */
    const char *const *strong_opts;
    /* The storage cannot open without a "filename" (QEMU's
     * bdrv_needs_filename): "The 'X' block driver requires a file name". */
    bool needs_filename;
    /* QEMU's driver has no bdrv_get_info (nbd, curl, ssh, null): raw
     * over it asks the storage, so info --output=json shows no
     * "dirty-flag". */
    bool no_get_info;
    /*
     * Turn a "PROTO:..." (or plain) name into open options (QEMU's
     * bdrv_parse_filename): set "filename" and/or the storage's own keys
     * in opts.  NULL: the name is the "filename" option as given.
     */
    int (*parse_filename)(const char *filename, struct qimg_opts *opts,
                          struct qimg_error *err);
    /*
     * The name that would open st again (QEMU's exact_filename) into buf;
     * false when there is none, so the node is named json:{...}.  NULL:
     * its "filename" option unless a strong option is set.
     */
    bool (*refresh_name)(struct qimg_storage *st, char *buf, size_t len);

    /* Open st->filename (may be NULL for storages that do not need one)
     * with the options in opts ("driver", "filename" and the storage's
     * own); flags are QIMG_OPEN_*. */
    int (*open)(struct qimg_storage *st, const struct qimg_opts *opts,
                unsigned flags, enum qimg_cache cache, struct qimg_error *err);
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
    /* QEMU's exact truncate (qemu-img resize of the node or of raw over
     * it) where it differs from truncate (nbd: "Cannot resize NBD
     * nodes"); NULL: truncate.  See qimg_storage_truncate. */
    int (*truncate_exact)(struct qimg_storage *st, uint64_t size,
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
    /* The storage's own allocation unit that raw over it reports as
     * info's cluster_size (QEMU's bdrv_get_info of a protocol: rbd's
     * object size), or 0.  Optional. */
    uint32_t (*cluster_size)(struct qimg_storage *st);
    /* Create (or truncate) filename with opts ("size", "preallocation"). */
    int (*create)(const char *filename, const struct qimg_opts *opts,
                  struct qimg_error *err);
    /* No create of its own, but "creating" opens what exists, grows it
     * if it can and zeroes its first sector (QEMU's simple create, for
     * devices and network storage). */
    bool create_by_open;
    /* Change the lock/permission state (e.g. read-only -> read-write). */
    int (*set_perm)(struct qimg_storage *st, unsigned flags,
                    struct qimg_error *err);
    /* A format raised ev (blkdebug acts on it); NULL: ignored. */
    void (*event)(struct qimg_storage *st, enum qimg_event ev);
    /* The directory names relative to this storage are taken against, in
     * *dir (malloc'ed, ending in '/' or empty), or an error when there is
     * none (QEMU's bdrv_dirname, e.g. quorum).  NULL: the directory of
     * the exact name, else of the child's. */
    int (*dirname)(struct qimg_storage *st, char **dir,
                   struct qimg_error *err);
    /* Delete filename (a format whose create failed halfway removes what
     * it made, as QEMU's luks driver does).  Optional. */
    int (*remove)(const char *filename, struct qimg_error *err);
    /*
     * Snapshots the storage keeps itself (rbd's), which a format without
     * snapshots of its own over it passes on (snapshot_via_file: QEMU's
     * snapshot fallback to a node's only data child).  All four or none
     * (NULL: the storage has none).  list fills *list (malloc'ed, n = 0
     * and non-NULL when there are none) as qimg_snapshot_list; create
     * makes snapshot name; delete removes the one qimg_snapshot_change
     * found by id or name (both given, as listed); goto reverts the
     * storage to name.  Failures return a negative errno with the
     * storage's own message, but goto's (the caller words it).
     */
    int (*snapshot_list)(struct qimg_storage *st, struct qimg_snapshot **list,
                         size_t *n, struct qimg_error *err);
    int (*snapshot_create)(struct qimg_storage *st, const char *name,
                           struct qimg_error *err);
    int (*snapshot_delete)(struct qimg_storage *st, const char *id,
                           const char *name, struct qimg_error *err);
    int (*snapshot_goto)(struct qimg_storage *st, const char *name,
                         struct qimg_error *err);
    /*
     * Module stubs (core/module.c): a storage whose client library is heavy
     * lives in the shared module MODULE.so, which exports its real table
     * as MODULE_SYMBOL.  The stub in the storage table sets only name,
     * protocol and these three; lookups swap in the loaded table, kept in
     * *module_loaded.  NULL module: a storage linked into the library.
     */
    const char *module;
    const char *module_symbol;
    const struct qimg_storage_ops **module_loaded;
};

struct qimg_storage {
    const struct qimg_storage_ops *ops;
    char *filename;         /* the "filename" option, or NULL */
    unsigned caps;          /* QIMG_STORAGE_* */
    bool read_only;
    uint32_t align;         /* required I/O alignment (O_DIRECT), 1 if none */
    void *priv;
    /* The options it was opened with ("driver" and "filename" included),
     * for the json:{...} names of the nodes above it. */
    struct qimg_opts *options;
    /* A filter's storage underneath (blkdebug's "image"), named
     * child_name in the options; events and names pass down to it. */
    struct qimg_storage *child;
    const char *child_name;
    /* A second child (blkverify's "test"), named child2_name; only its
     * name and options count, events do not reach it. */
    struct qimg_storage *child2;
    const char *child2_name;
    /* A list of children (quorum's), an array named children_key in
     * json:{...} names; owned by the storage driver. */
    struct qimg_storage *const *children;
    size_t n_children;
    const char *children_key;
    /* The node storage: a format node used as the file of another format
     * ({"driver": "raw", "file": {"driver": "qcow2", ...}}). */
    struct qimg_image *node;
    /* Its name as QEMU shows it (map's "File" column): the exact name
     * or a json:{...} text; set after open. */
    char *name;
    /* Who the open file is (fstat after open, for the untrusted-image
     * policy): set by storages over a file descriptor. */
    bool has_id;
    uint64_t id_dev, id_ino;
};

/*
 * The storage driver named name ("file", "nbd", "null-co"), or NULL.
 */
const struct qimg_storage_ops *qimg_storage_find(const char *name);
/*
 * The storage a file name selects, as QEMU picks a protocol: memory
 * storage names, block and character devices (host_device/host_cdrom),
 * then "PROTO:..." prefixes when allow_prefix; anything else is a file.
 * NULL with "Unknown protocol 'X'" for an unknown prefix.
 */
const struct qimg_storage_ops *qimg_storage_for_name(const char *filename,
                                                     bool allow_prefix,
                                                     struct qimg_error *err);
/* qimg_storage_for_name with prefixes, falling back to "file". */
const struct qimg_storage_ops *qimg_storage_for(const char *filename);
/* Open a storage by file name ("PROTO:..." prefixes allowed). */
int qimg_storage_open(struct qimg_storage **out, const char *filename,
                      unsigned flags, enum qimg_cache cache,
                      struct qimg_error *err);
/*
 * Open a storage from a file name and/or options (opts may hold "driver",
 * "filename" and the storage's own keys, and a child's under its prefix;
 * not changed).  A filename given both ways is refused as QEMU does;
 * unknown keys fail with QEMU's message.  "driver" naming a format opens
 * that format node and uses it as the storage.
 */
int qimg_storage_open_opts(struct qimg_storage **out, const char *filename,
                           const struct qimg_opts *opts, unsigned flags,
                           enum qimg_cache cache, int depth,
                           struct qimg_error *err);
void qimg_storage_close(struct qimg_storage *st);
/* Truncate st as QEMU's bdrv_co_truncate with exact as given (the
 * storage's truncate_exact when exact and it has one); -ENOTSUP with
 * QEMU's message when it cannot. */
int qimg_storage_truncate(struct qimg_storage *st, uint64_t size, bool exact,
                          enum qimg_prealloc prealloc, struct qimg_error *err);
/* Open a format node (probed when opts name no driver) and wrap it as a
 * storage (blkverify's test image). */
int qimg_storage_open_node(struct qimg_storage **out, const char *filename,
                           const struct qimg_opts *opts, unsigned flags,
                           enum qimg_cache cache, int depth,
                           struct qimg_error *err);
/* Create filename on storage ops: its create, or QEMU's simple create
 * (create_by_open), or -ENOTSUP. */
int qimg_storage_create(const struct qimg_storage_ops *ops,
                        const char *filename, const struct qimg_opts *opts,
                        struct qimg_error *err);
/* The same with the storage chosen by the name ("Unknown protocol"). */
int qimg_storage_create_name(const char *filename,
                             const struct qimg_opts *opts,
                             struct qimg_error *err);

/* All storages a name or a driver option selects, and lookups. */
size_t qimg_storage_count(void);
/* The real table of a module stub, loading its module on first use (a
 * warning and NULL when it cannot load); any other table as given. */
const struct qimg_storage_ops *
qimg_module_storage(const struct qimg_storage_ops *stub);
/* Define the stub VAR of a module storage NAME with protocol PROTO (or
 * NULL), exported by module MODULE as SYMBOL. */
#define QIMG_STORAGE_MODULE_STUB(var, name_, proto, module_, symbol)       \
    static const struct qimg_storage_ops *var##_loaded;                   \
    const struct qimg_storage_ops var = {                                  \
        .name = (name_), .protocol = (proto), .module = (module_),         \
        .module_symbol = (symbol), .module_loaded = &var##_loaded,         \
    }
const struct qimg_storage_ops *qimg_storage_at(size_t i);
/* QEMU's path_has_protocol: a ':' before any '/'. */
bool qimg_path_has_protocol(const char *name);
/* The backing file name create opens, as QEMU's
 * bdrv_get_full_backing_filename_from_filename: a name with a protocol
 * (json:, ssh://, nbd:...) or absolute as is, else relative to image's
 * directory.  malloc'ed; NULL when out of memory. */
char *qimg_backing_full_name(const char *image, const char *backing);
/* host_device or host_cdrom when filename names such a device. */
const struct qimg_storage_ops *qimg_host_device_for(const char *filename);
/* Keys every node takes (node-name, read-only, cache.direct, ...). */
bool qimg_node_key(const char *key);
/* The first key of opts (in QEMU's dictionary order) that is neither a
 * node key nor taken by list or list2, or NULL. */
const char *qimg_opts_first_unlisted(const struct qimg_opts *opts,
                                     const char *const *list,
                                     const char *const *list2);

extern const struct qimg_storage_ops qimg_storage_file;
extern const struct qimg_storage_ops qimg_storage_host_device;
extern const struct qimg_storage_ops qimg_storage_host_cdrom;
extern const struct qimg_storage_ops qimg_storage_null_co;
extern const struct qimg_storage_ops qimg_storage_quorum;
extern const struct qimg_storage_ops qimg_storage_null_aio;
extern const struct qimg_storage_ops qimg_storage_blkdebug;
extern const struct qimg_storage_ops qimg_storage_blkverify;
/* Network storages (lib/proto/<name>/), each over its client library. */
extern const struct qimg_storage_ops qimg_storage_nbd;
extern const struct qimg_storage_ops qimg_storage_nbd_tcp;
extern const struct qimg_storage_ops qimg_storage_nbd_unix;
extern const struct qimg_storage_ops qimg_storage_http;
extern const struct qimg_storage_ops qimg_storage_https;
extern const struct qimg_storage_ops qimg_storage_ftp;
extern const struct qimg_storage_ops qimg_storage_ftps;
extern const struct qimg_storage_ops qimg_storage_iscsi;
extern const struct qimg_storage_ops qimg_storage_nfs;
extern const struct qimg_storage_ops qimg_storage_ssh;
extern const struct qimg_storage_ops qimg_storage_rbd;

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
/* The forward-only pipe reader (proto/stream.c); not in the table, so
 * qemu-img's driver list is unchanged. */
extern const struct qimg_storage_ops qimg_storage_stream;
/* Register a copy of data[0..len) as name, replacing any buffer of that
 * name (storages open on the old one keep it until closed). */
int qimg_mem_register(const char *name, const void *data, size_t len);
int qimg_mem_unregister(const char *name);
void qimg_mem_set_exclusive(bool on);
/* Lower the growth bound below QIMG_MEM_MAX_SIZE (fuzz targets that
 * write keep each input cheap this way). */
void qimg_mem_set_max_size(uint64_t bytes);
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
    /* Options of the format at open (keys of -o-like dicts besides
     * "driver", "file.*" and "backing.*"); same prefix rule and message
     * ("Block format 'X' does not support the option 'Y'") as storages.
     * NULL: the driver checks its options itself. */
    const char *const *runtime_opts;
    /* Options that stop the node from being named by its file (raw's
     * offset and size); see qimg_storage_ops.strong_opts. */
    const char *const *strong_opts;
    const char *description;
    size_t state_size;                     /* bytes of node->state */
    const struct qimg_opt_desc *create_opts; /* in "Formatting" print order */
    size_t n_create_opts;
    bool is_raw;                           /* probing fallback */
    /* Formats with no protocol under them (none yet) set this. */
    bool no_storage;
    /* The format can have a backing file (QEMU's supports_backing):
     * then what a layer does not allocate reads as zero when nothing is
     * below it, and block status says so.  Without it an unallocated
     * extent is neither data nor zero (map: "present": false). */
    bool supports_backing;
    /* A format that is only read (dmg, bochs, cloop): a writable open
     * fails with "Image is read-only" before the driver's open, as QEMU's
     * auto-read-only check makes it. */
    bool read_only;
    /* QEMU's driver has no bdrv_get_info: info --output=json shows no
     * "dirty-flag" (qimg_info.has_dirty_flag stays false). */
    bool no_get_info;
    /* Take only the permissions asked of the file, sharing write and
     * resize as raw does (QEMU's luks driver, "for backward
     * compatibility"), instead of a format's exclusive ones. */
    bool plain_perms;

    /* Score 0..100 for how well the first bytes match (no I/O). */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Validate the header and fill node->size, backing names. */
    int (*open)(struct qimg_image *node, const struct qimg_opts *opts,
                struct qimg_error *err);
    void (*close)(struct qimg_image *node);
    int (*create)(const char *filename, const struct qimg_opts *opts,
                  struct qimg_error *err);
    /*
     * Create a new image on a forward-only storage (a pipe: node->file,
     * the "stream" storage, written strictly in order, never read back,
     * never truncated) and leave node open for writing, as open would:
     * the driver writes the head of the image, sets up node->state
     * (zeroed, state_size bytes) and node->size.  opts are the creation
     * options (as for create).  Writes then come in guest order (the copy
     * engine runs one worker for a sequential target); the image is
     * complete only after the end-of-stream call (pwrite_compressed with
     * len 0), and close without it must leave it visibly incomplete.
     * Optional: formats that can only seek back (tables before data)
     * leave it NULL.  Called by qimg_create_stream (qimg.h).
     */
    int (*create_stream)(struct qimg_image *node, const struct qimg_opts *opts,
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
    /* Without snapshot ops, list/create/delete/apply the snapshots of what
     * is underneath: the storage's when it keeps any (its snapshot_* ops,
     * raw over rbd), a format node's (raw over qcow2).  QEMU's fallback to
     * a node's primary child. */
    bool snapshot_via_file;
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
     * cluster into out (at least two clusters and 64 bytes: formats whose
     * compressed clusters carry a header, or are always compressed,
     * may need more than a cluster) and returns the compressed
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
    /*
     * For formats without block_status, whose images QEMU reports as
     * data throughout (so map and compare must too): whether reads of the
     * extent at off give zeroes (ext->flags QIMG_BS_ZERO) or may not
     * (QIMG_BS_DATA), with ext->length.  Only the copy engine asks, to
     * fill such parts of its read buffers without reading them: what it
     * writes does not change.  Optional; same concurrency as pread.
     */
    int (*zero_hint)(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err);
    /* Whether a just-created image reads as zero, so that convert can
     * skip zero areas (QEMU's bdrv_has_zero_init).  NULL: it does.  luks
     * and preallocated encrypted qcow2 do not: holes and zeroed clusters
     * decrypt to garbage. */
    bool (*has_zero_init)(struct qimg_image *node);
};

/* The driver's zero_hint for [off, off + len) of img alone (DATA for all
 * of it without one); ext->length is at least 1 and at most len. */
int qimg_zero_hint(struct qimg_image *img, uint64_t off, uint64_t len,
                   struct qimg_extent *ext, struct qimg_error *err);

/*
 * Internal block status flag: a driver sets it on a DATA|OFFSET_VALID
 * extent of its storage when holes in the file under it may read as zero
 * (QEMU asks the file only then, e.g. for qcow2 images with preallocated
 * metadata).  The core narrows the extent with the storage's status and
 * clears the flag; callers never see it.
 */
#define QIMG_BS_RECURSE_FILE (1u << 15)

/*
 * The checks QEMU's encrypted formats make of their key before anything
 * else: encrypt.key-secret given ("Parameter 'encrypt.key-secret' is
 * required for cipher") and naming a --object secret ("No secret with id
 * 'X'").  0 or -EINVAL.
 */
int qimg_key_secret_check(const struct qimg_opts *opts,
                          struct qimg_error *err);

/*
 * True when name is a member of QEMU's BlockdevDriver enumeration (which
 * its QAPI create options take for backing-fmt): create drivers refuse
 * other names with "Parameter 'backing-fmt' does not accept value 'X'".
 */
bool qimg_blockdev_driver_known(const char *name);
/* True when QEMU 7.2's qemu-img knows a format of that name (its --help
 * list), whether or not this build implements it: drivers that check a
 * backing format by name ("unrecognized backing format") use it. */
bool qimg_qemu_format_known(const char *name);

/*
 * Narrow a DATA|OFFSET_VALID extent whose data lies in storage st by what
 * st says about holes there, as QEMU's block layer does for
 * BDRV_BLOCK_RECURSE: a hole (or the area past the end of the file) adds
 * ZERO, and the extent is cut where the storage's answer ends.  For
 * drivers whose data is in other storages than node->file (vmdk flat
 * extents); errors are ignored (extra information only).
 */
void qimg_extent_refine(struct qimg_storage *st, struct qimg_extent *ext);

/* All registered formats, in the order QEMU lists them. */
extern const struct qimg_format *const qimg_formats[];
extern const size_t qimg_n_formats;
const struct qimg_format *qimg_format_find(const char *name);

extern const struct qimg_format qimg_format_bochs;
extern const struct qimg_format qimg_format_cloop;
extern const struct qimg_format qimg_format_dmg;
extern const struct qimg_format qimg_format_luks;
extern const struct qimg_format qimg_format_raw;
extern const struct qimg_format qimg_format_parallels;
extern const struct qimg_format qimg_format_qcow;
extern const struct qimg_format qimg_format_qcow2;
extern const struct qimg_format qimg_format_qed;
extern const struct qimg_format qimg_format_raw;
extern const struct qimg_format qimg_format_vdi;
extern const struct qimg_format qimg_format_vhdx;
extern const struct qimg_format qimg_format_vmdk;
extern const struct qimg_format qimg_format_vpc;
/* The format of a node opened at the protocol level (driver=file,
 * -f host_device, null-co://): every operation goes to its storage, and
 * the node reports the storage's driver name as its format. */
extern const struct qimg_format qimg_format_protocol;

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
    /* The node's own options as opened (driver and format options; the
     * file's are in file->options), for its json:{...} name. */
    struct qimg_opts *options;
    /* The name QEMU shows for the node (info's "image:"): the name that
     * opens it again, or json:{...}; set at the end of open. */
    char *name;
    /* The backing chain was chosen by options (backing.*, backing=null),
     * not by the header. */
    bool backing_overridden;
    /* Files opened through qimg_open_child_storage (bounded in untrusted
     * mode). */
    unsigned child_opens;
};

/* Open a whole chain; used by qimg_open and by drivers that open files.
 * format (or NULL: probe) and fmt_opts (format-level keys) as -f and -o
 * give them. */
int qimg_image_open_node(struct qimg_image **out, const char *filename,
                         const char *format, const struct qimg_opts *fmt_opts,
                         unsigned flags, enum qimg_cache cache, int depth,
                         struct qimg_error *err);
/*
 * Open a node as QEMU's bdrv_open does: filename (a path, "PROTO:...",
 * or json:{...}, whose keys add to options without replacing them) and
 * options (flat dotted keys: driver, the format's own, file.*,
 * backing.*; not changed).
 */
int qimg_node_open(struct qimg_image **out, const char *filename,
                   const struct qimg_opts *options, unsigned flags,
                   enum qimg_cache cache, int depth, struct qimg_error *err);
/* The backing file name of node resolved as QEMU resolves it (relative
 * to the overlay's directory; json: names as they are).  malloc'ed;
 * NULL when the overlay's directory cannot be known. */
char *qimg_node_backing_path(const struct qimg_image *node);
/* QEMU's bdrv_dirname: the directory (malloc'ed, ending in '/', or "")
 * relative names in a node or storage are resolved against: of its exact
 * name, else of its file / child; an error ("Cannot generate a base
 * directory for X nodes") when there is none. */
int qimg_node_dirname(const struct qimg_image *node, char **dir,
                      struct qimg_error *err);
int qimg_storage_dirname(struct qimg_storage *st, char **dir,
                         struct qimg_error *err);
/* Compute node->name (and its storages' names) as QEMU's
 * bdrv_refresh_filename does. */
int qimg_node_refresh_name(struct qimg_image *node);
/* The storage's json options ({"driver": "file", "filename": ...}) and
 * exact name (false: none), for names. */
json_t *qimg_storage_full_opts(struct qimg_storage *st);
bool qimg_storage_exact_name(struct qimg_storage *st, char *buf, size_t len);
/* True when key is taken by the list (entries ending in '.' are
 * prefixes). */
bool qimg_key_listed(const char *const *list, const char *key);

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
 *
 * The role bits say what the file is to the untrusted-image policy
 * (core/policy.h): without one it is QIMG_ROLE_OTHER, which only a
 * generic allow entry covers.  QIMG_CHILD_CALLER marks a name the caller
 * gave in the open options (qcow2's data-file=) rather than one the image
 * records: the policy does not check those.
 */
enum {
    QIMG_CHILD_RELATIVE = 1 << 0,
    QIMG_CHILD_CALLER = 1 << 1,
    QIMG_CHILD_DATA_FILE = QIMG_ROLE_DATA_FILE << 8,
    QIMG_CHILD_EXTENT = QIMG_ROLE_EXTENT << 8,
};
int qimg_open_child_storage(struct qimg_image *parent, const char *name,
                            unsigned child_flags, unsigned flags,
                            struct qimg_storage **out, struct qimg_error *err);

/*
 * For drivers that can only read and write whole units of `align` bytes
 * (encrypted sectors): a request not aligned to them is widened to whole
 * units.  qimg_rmw_pread reads the widened range into a bounce buffer;
 * qimg_rmw_pwrite reads the partial units at the ends, patches them and
 * writes the widened range, holding *lock over the read-modify-write so
 * that two writers of different bytes of one unit never lose either's
 * bytes.  Aligned requests go straight to the callbacks.  The widened
 * range must lie inside the image (its size a multiple of align).
 */
typedef int (*qimg_unit_pread_fn)(struct qimg_image *node, uint64_t off,
                                  size_t len, void *buf,
                                  struct qimg_error *err);
typedef int (*qimg_unit_pwrite_fn)(struct qimg_image *node, uint64_t off,
                                   size_t len, const void *buf,
                                   struct qimg_error *err);
int qimg_rmw_pread(struct qimg_image *node, uint64_t off, size_t len,
                   void *buf, uint32_t align, qimg_unit_pread_fn pread,
                   struct qimg_error *err);
int qimg_rmw_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                    const void *buf, uint32_t align, pthread_mutex_t *lock,
                    qimg_unit_pread_fn pread, qimg_unit_pwrite_fn pwrite,
                    struct qimg_error *err);

/*
 * The first step of a format's create, as QEMU's format drivers take it:
 * create filename through its storage with the storage's own options
 * from opts (preallocation, nocow, ...: those its create_opts name) and
 * size 0, then open it read-write with resize for the format to write
 * its metadata.  The format's options never reach the storage.  *out is
 * owned by the caller (qimg_storage_close).  A failed create may leave
 * the file behind, as QEMU does.
 */
int qimg_create_storage(const char *filename, const struct qimg_opts *opts,
                        struct qimg_storage **out, struct qimg_error *err);

/* Read through the backing chain (zeroes past the backing's end). */
int qimg_read_backing(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err);

/* Option helpers for drivers. */
/* The deprecation warning for a size written in hex with a multiplier
 * ("0x10k"), when value is one; QEMU warns each time it parses it. */
void qimg_opts_warn_hex_size(const char *value);
/* For drivers that take no open options: QEMU's error for the first one
 * (checked once the driver has opened, as QEMU does), or 0. */
int qimg_opts_refuse_all(const struct qimg_image *node,
                         const struct qimg_opts *opts, struct qimg_error *err);
int qimg_opts_get_size(const struct qimg_opts *opts, const char *key,
                       uint64_t def, uint64_t *out, struct qimg_error *err);
int qimg_opts_get_bool(const struct qimg_opts *opts, const char *key,
                       bool def, bool *out, struct qimg_error *err);
/* A QIMG_OPT_NUMBER value as QEMU reads it (strtoull: "-1" wraps). */
int qimg_opts_get_number(const struct qimg_opts *opts, const char *key,
                         uint64_t def, uint64_t *out, struct qimg_error *err);
/* A number a QAPI int member takes: "Parameter 'K' expects integer"
 * outside int64 (the value is then used as QEMU's unsigned cast). */
int qimg_opts_get_int64(const struct qimg_opts *opts, const char *key,
                        int64_t def, int64_t *out, struct qimg_error *err);

#endif /* QIMG_CORE_BLOCK_H */
