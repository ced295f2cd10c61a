/*
 * qimg.h - the public interface of libqimg, a disk image library compatible
 * with QEMU's block layer formats.
 *
 * Conventions (see docs/ARCHITECTURE.md):
 * - Functions return 0 or a negative errno (NULL for pointers) and, on
 *   failure, fill the struct qimg_error passed last.  The library never
 *   prints and never exits; the caller decides what to show.
 * - Handles are opaque.  `_open`/`_new` return what the caller owns;
 *   `_close`/`_free` accept NULL.  Getters return borrowed pointers.
 * - An open image may be used from several threads at once: reads, writes,
 *   block status and flushes are thread-safe.  Open, close, truncate and
 *   metadata changes (amend, snapshot, bitmap, change_backing) are not and
 *   must not overlap any other call on the same image.
 */
#ifndef QIMG_H
#define QIMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---------------------------------------------------------- */

#define QIMG_ERROR_MSG_MAX 4096

struct qimg_error {
    int code;                       /* negative errno, 0 when unset */
    char msg[QIMG_ERROR_MSG_MAX];   /* human readable, qemu-img wording */
};

/* Set err (if not NULL) to code and a formatted message; returns code. */
int qimg_error_set(struct qimg_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepend a formatted prefix to an already set message. */
void qimg_error_prefix(struct qimg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void qimg_error_clear(struct qimg_error *err);

/*
 * Messages about non-fatal problems met while working, which QEMU prints
 * as it meets them (stale bitmaps found at open, bitmaps that could not be
 * stored at close).  The handler gets the text as QEMU prints it after the
 * prefix its kind implies, line breaks included.  Process-global; NULL
 * (the default) drops them.
 */
enum qimg_msg_kind {
    QIMG_MSG_WARNING,   /* "<prog>: warning: " */
    QIMG_MSG_ERROR,     /* "<prog>: " */
    QIMG_MSG_PLAIN,     /* no prefix */
    /* A debugging driver found what QEMU stops the process for
     * (blkverify's mismatches): the program prints it as is and exits
     * with status 1, as QEMU does.  Without a handler the request fails
     * with EIO instead. */
    QIMG_MSG_FATAL,
};
void qimg_set_warning_handler(void (*handler)(const char *msg,
                                              enum qimg_msg_kind kind));

/* ---- sizes --------------------------------------------------------------- */

/*
 * Parse a size as QEMU does ("1.5G", "512", "0x200", "64k"): decimal or hex
 * integer, optional decimal fraction (only with a suffix), optional suffix
 * b/B (bytes) or k/K M G T P E (powers of 1024, case-insensitive).
 * Returns 0, -EINVAL for malformed input or -ERANGE above UINT64_MAX.
 * *hex_with_suffix is set when a hex number carried a suffix (QEMU warns).
 */
int qimg_parse_size(const char *str, uint64_t *out, bool *hex_with_suffix);

/* Format a size as QEMU's size_to_str(): "1 GiB", "1.5 MiB", "512 B". */
void qimg_size_to_str(uint64_t size, char *buf, size_t buflen);

/* ---- option lists ---------------------------------------------------- */

/* An ordered list of key=value pairs, like QEMU's QemuOpts. */
struct qimg_opts;

struct qimg_opts *qimg_opts_new(void);
void qimg_opts_free(struct qimg_opts *opts);
/*
 * Parse "a=b,c=d" (",," escapes a comma) into opts, later keys replacing
 * earlier ones.  A first element without '=' is stored under implied_key when
 * that is not NULL; otherwise it is an error.  "help" and "?" alone set the
 * key "help".
 */
int qimg_opts_parse(struct qimg_opts *opts, const char *str,
                    const char *implied_key, struct qimg_error *err);
/* Whether an option list asks for help: an element "help" or "?" without
 * a value (not "help=on", not "nohelp"), as qemu-img looks for it. */
bool qimg_opts_has_help(const char *str);
int qimg_opts_set(struct qimg_opts *opts, const char *key, const char *value);
/* The JSON type a value had where it came from (json: filenames keep
 * their types; -o and --image-opts values are strings).  Values are
 * always stored as text: numbers in decimal, booleans as on/off, null
 * as "". */
enum qimg_val_type {
    QIMG_VAL_STRING,
    QIMG_VAL_INT,
    QIMG_VAL_REAL,
    QIMG_VAL_BOOL,
    QIMG_VAL_NULL,
};
int qimg_opts_set_typed(struct qimg_opts *opts, const char *key,
                        const char *value, enum qimg_val_type type);
enum qimg_val_type qimg_opts_type(const struct qimg_opts *opts, size_t i);
/* Position of key in opts, or -1. */
long qimg_opts_index(const struct qimg_opts *opts, const char *key);
const char *qimg_opts_get(const struct qimg_opts *opts, const char *key);
/* The value of key as it was given, before qimg_opts_validate normalised
 * it (a size's "1k" for "1024"); the value itself when it was not. */
const char *qimg_opts_get_orig(const struct qimg_opts *opts, const char *key);
bool qimg_opts_del(struct qimg_opts *opts, const char *key);
size_t qimg_opts_count(const struct qimg_opts *opts);
const char *qimg_opts_key(const struct qimg_opts *opts, size_t i);
const char *qimg_opts_value(const struct qimg_opts *opts, size_t i);
struct qimg_opts *qimg_opts_dup(const struct qimg_opts *opts);

enum qimg_opt_type {
    QIMG_OPT_STRING,
    QIMG_OPT_BOOL,
    QIMG_OPT_NUMBER,
    QIMG_OPT_SIZE,
};

/* Describes one creation / amend option of a format or storage. */
struct qimg_opt_desc {
    const char *name;
    enum qimg_opt_type type;
    const char *help;
    const char *def;   /* default shown in "Formatting ..." or NULL */
};

/*
 * The bucket of key in QEMU's dictionaries (a string hash modulo 512):
 * QEMU lists a dictionary's members by bucket, the most recently added
 * first within one, and so prints JSON in that order.
 */
unsigned qimg_qdict_bucket(const char *key);

/* ---- secrets (--object secret,...) ---------------------------------- */

/*
 * --object: check a definition as qemu-img 7.2 does and create the object
 * (process-global; only secrets are used).  When it asks for help, *help
 * is the text to print (free it) and nothing is created.
 */
int qimg_object_add(const char *def, char **help, struct qimg_error *err);
/* Register a secret from an --object definition string.  Process-global. */
int qimg_secret_add(const char *objdef, struct qimg_error *err);
/* Borrowed pointer to the secret's bytes, or NULL. */
const char *qimg_secret_get(const char *id, size_t *len);

/* ---- untrusted images (lib/core/policy.c, docs/SECURITY.md) ------------ */

/*
 * Untrusted mode: files that an image names inside itself (backing files,
 * qcow2 external data files, vmdk extents) are opened only when the caller
 * allowed them by name, json: and protocol names recorded in images are
 * refused, and backing chains and child files are bounded tighter.  Names
 * the caller gives (the image opened, -b, --image-opts, json: on the
 * command line, a data-file option) are the caller's and are not checked.
 * Process-global, like secrets; set it up before opening images.
 */
enum qimg_role {
    QIMG_ROLE_BACKING = 1 << 0,     /* a backing (parent) image */
    QIMG_ROLE_DATA_FILE = 1 << 1,   /* a qcow2 external data file */
    QIMG_ROLE_EXTENT = 1 << 2,      /* a vmdk extent */
    QIMG_ROLE_OTHER = 1 << 3,       /* any other file an image names */
    QIMG_ROLE_ANY = 0xf,
};
/* Deepest backing chain opened in untrusted mode (images, top included). */
#define QIMG_UNTRUSTED_MAX_CHAIN_DEPTH 8
/* Files (data files, extents) one image may have opened in untrusted mode. */
#define QIMG_UNTRUSTED_MAX_CHILDREN 64
/* Entries of the allow list. */
#define QIMG_UNTRUSTED_MAX_ALLOW 1024

/* Turn untrusted mode on (there is no way back but qimg_untrusted_reset). */
void qimg_untrusted_enable(void);
bool qimg_untrusted_enabled(void);
/*
 * Allow path (which must exist now: a regular file or a block device) in
 * the given roles (QIMG_ROLE_*) and turn untrusted mode on.  The path is
 * resolved now, symlinks included; later a name an image records matches
 * only when it resolves to the same real path and the file opened is the
 * same inode.  -ENOENT etc. with "Could not access 'X': ..." when it
 * cannot be resolved.
 */
int qimg_untrusted_allow(unsigned roles, const char *path,
                         struct qimg_error *err);
/* Back to trusting images, allow list emptied (tests, long-lived hosts). */
void qimg_untrusted_reset(void);

/* ---- formats ----------------------------------------------------------- */

/* Number of registered drivers (formats and storages, as QEMU counts
 * them) and their names, sorted as qemu-img lists them. */
size_t qimg_format_count(void);
const char *qimg_format_name_at(size_t i);
bool qimg_format_known(const char *name);
/* The image formats alone, then the storages (protocols) alone, in
 * registry order; NULL past the last. */
const char *qimg_format_driver_at(size_t i);
const char *qimg_storage_name_at(size_t i);
/* True if the format can create images. */
bool qimg_format_can_create(const char *name);
/* 0 when filename names no protocol ("PROTO:...") or a known one; else
 * -EINVAL with "Unknown protocol 'PROTO'". */
int qimg_protocol_check(const char *filename, struct qimg_error *err);

/*
 * The creation options of format fmt merged with those of the storage that
 * would hold filename (filename NULL: the format's own only).  Returns the
 * number of entries written to out (at most max), or a negative errno.
 */
int qimg_create_opts(const char *fmt, const char *filename,
                     const struct qimg_opt_desc **out, size_t max,
                     struct qimg_error *err);

/*
 * Validate values in opts against the descriptors (types: bool on/off,
 * number, size) and normalise sizes and numbers to plain decimal (a size
 * written in hex with a multiplier, deprecated, is warned about and kept
 * as written).  Unknown keys fail with "Invalid parameter 'KEY'".
 */
int qimg_opts_validate(struct qimg_opts *opts, const struct qimg_opt_desc *d,
                       size_t nd, struct qimg_error *err);
/*
 * qimg_opts_parse() and qimg_opts_validate() element by element, as QEMU
 * parses -o: the first bad element is the one reported, and every element
 * is checked (and warned about) even when a later one replaces it.
 */
int qimg_opts_parse_checked(struct qimg_opts *opts, const char *str,
                            const struct qimg_opt_desc *d, size_t nd,
                            struct qimg_error *err);

/*
 * Prepare the creation of an image as qemu-img create does: parse the -o
 * list `options` (may be NULL) against the merged option descriptors, add
 * size (-1: not given), backing file and format, check them, and open the
 * backing file for its size when needed (unless no_backing_open).  On
 * success *opts_out holds the options and *summary the "size=... ..." text
 * of the "Formatting" line (both owned by the caller).
 */
int qimg_create_prepare(const char *fmt, const char *filename,
                        const char *options, int64_t size,
                        const char *backing, const char *backing_fmt,
                        bool no_backing_open, struct qimg_opts **opts_out,
                        char **summary, struct qimg_error *err);

/* Create an image of format fmt; opts holds "size" and format options. */
int qimg_create(const char *fmt, const char *filename,
                const struct qimg_opts *opts, struct qimg_error *err);

/* ---- images ------------------------------------------------------------- */

struct qimg_image;

/*
 * Create an image of format fmt written strictly forward onto filename, a
 * pipe or FIFO (or /dev/stdout), and open it for writing (*out; close it
 * with qimg_close).  opts as for qimg_create.  Only formats whose layout
 * can be written in one forward pass take it (streamOptimized vmdk):
 * others fail with -ENOTSUP.  The image ends only at the end-of-stream
 * write (qimg_copy makes it for compressed targets); an image closed
 * before it is left without its end, so that it never reads as complete.
 */
int qimg_create_stream(struct qimg_image **out, const char *fmt,
                       const char *filename, const struct qimg_opts *opts,
                       struct qimg_error *err);

enum qimg_cache {
    QIMG_CACHE_WRITEBACK,
    QIMG_CACHE_NONE,
    QIMG_CACHE_WRITETHROUGH,
    QIMG_CACHE_DIRECTSYNC,
    QIMG_CACHE_UNSAFE,
};
/* Parse a cache mode name; -EINVAL when unknown. */
int qimg_cache_parse(const char *name, enum qimg_cache *out);

enum {
    QIMG_OPEN_RDWR = 1 << 0,        /* write access (takes write locks) */
    QIMG_OPEN_SHARE = 1 << 1,       /* -U: allow others to write, no lock check */
    QIMG_OPEN_NO_BACKING = 1 << 2,  /* do not open the backing chain */
    QIMG_OPEN_NO_LOCK = 1 << 3,     /* take no locks at all */
    QIMG_OPEN_RESIZE = 1 << 4,      /* also take the resize permission */
    QIMG_OPEN_NO_SHARE = 1 << 5,    /* refuse others write/resize (convert) */
    QIMG_OPEN_CHECK = 1 << 6,       /* opened by check: no automatic repair */
    QIMG_OPEN_NO_IO = 1 << 7,       /* headers only (info): no read permission */
};

/* A source name qemu-img 7.2 cannot open that qimg reads as a stream:
 * "-" (stdin) when no file "-" exists, or a FIFO or socket. */
bool qimg_name_is_stream(const char *filename);
/* The size a stream without a declared size reports (and its images). */
#define QIMG_STREAM_UNKNOWN_SIZE ((uint64_t)INT64_MAX - ((1u << 30) - 1))

struct qimg_open_params {
    const char *filename;           /* a path or "json:{...}" */
    const char *format;             /* NULL: probe */
    const struct qimg_opts *options;/* --image-opts dict (dotted keys) or NULL */
    unsigned flags;
    enum qimg_cache cache;
    /* Not 0: filename is a name an image records, in this QIMG_ROLE_*
     * (info --backing-chain opening each backing file by name), which the
     * untrusted-image policy checks as it checks the core's own opens. */
    unsigned role;
};

int qimg_open(struct qimg_image **out, const struct qimg_open_params *params,
              struct qimg_error *err);
void qimg_close(struct qimg_image *img);

const char *qimg_image_filename(const struct qimg_image *img);
const char *qimg_image_format(const struct qimg_image *img);
/* Name of the storage file under the format (for map's "File" column). */
const char *qimg_image_file_name(const struct qimg_image *img);
/* The storage under the format as QEMU names that node (its exact name,
 * else json:{...}): the probed-raw warning names it. */
const char *qimg_image_storage_name(const struct qimg_image *img);
uint64_t qimg_image_size(const struct qimg_image *img);
/* The opened backing image, or NULL. */
struct qimg_image *qimg_image_backing(const struct qimg_image *img);
/* True when the format was guessed as raw from content (QEMU warns). */
bool qimg_image_probed_raw(const struct qimg_image *img);
bool qimg_image_read_only(const struct qimg_image *img);
/* True when a newly created image of this format reads as zero
 * (QEMU's bdrv_has_zero_init; false for luks). */
bool qimg_image_has_zero_init(const struct qimg_image *img);
/* Cluster size of the format, 0 when the format has none. */
uint32_t qimg_image_cluster_size(const struct qimg_image *img);

/* Guest I/O at byte offsets.  Thread-safe. */
int qimg_pread(struct qimg_image *img, uint64_t offset, size_t len,
               void *buf, struct qimg_error *err);
int qimg_pwrite(struct qimg_image *img, uint64_t offset, size_t len,
                const void *buf, struct qimg_error *err);
/*
 * Write whole clusters compressed (formats that support it): offset must
 * be cluster aligned and len one cluster, or the tail of the image.
 * -ENOTSUP when the format cannot compress.
 */
int qimg_pwrite_compressed(struct qimg_image *img, uint64_t offset, size_t len,
                           const void *buf, struct qimg_error *err);
enum {
    QIMG_ZERO_MAY_UNMAP = 1 << 0,   /* a hole is fine if it reads as zero */
    QIMG_ZERO_NO_FALLBACK = 1 << 1, /* fail with -ENOTSUP rather than write */
};
int qimg_pwrite_zeroes(struct qimg_image *img, uint64_t offset, uint64_t len,
                       unsigned flags, struct qimg_error *err);
int qimg_discard(struct qimg_image *img, uint64_t offset, uint64_t len,
                 struct qimg_error *err);
int qimg_flush(struct qimg_image *img, struct qimg_error *err);

enum qimg_prealloc {
    QIMG_PREALLOC_OFF,
    QIMG_PREALLOC_METADATA,
    QIMG_PREALLOC_FALLOC,
    QIMG_PREALLOC_FULL,
};
int qimg_prealloc_parse(const char *name, enum qimg_prealloc *out);
int qimg_truncate(struct qimg_image *img, uint64_t size, bool exact,
                  enum qimg_prealloc prealloc, struct qimg_error *err);

/* Block status of one extent starting at offset. */
enum {
    QIMG_BS_DATA = 1 << 0,        /* reads come from data at offset */
    QIMG_BS_ZERO = 1 << 1,        /* reads as zero */
    QIMG_BS_ALLOCATED = 1 << 2,   /* this layer decides the content */
    QIMG_BS_OFFSET_VALID = 1 << 3,/* host_offset is meaningful */
    QIMG_BS_COMPRESSED = 1 << 4,  /* special: compressed/encrypted */
};

struct qimg_extent {
    uint64_t length;          /* bytes from the queried offset */
    unsigned flags;           /* QIMG_BS_* */
    uint64_t host_offset;     /* with OFFSET_VALID: offset in host_file */
    const char *host_file;    /* borrowed: file that holds the data */
    int depth;                /* chain depth of the deciding layer */
};

/*
 * Status of [offset, offset+len) in img alone (depth 0); ext->length may be
 * shorter than len.  Unallocated areas have neither ALLOCATED nor DATA.
 */
int qimg_block_status(struct qimg_image *img, uint64_t offset, uint64_t len,
                      struct qimg_extent *ext, struct qimg_error *err);
/*
 * Status through the backing chain down to (excluding) base; NULL base means
 * the whole chain.  ext->depth tells which layer decided; areas no layer
 * allocates read as zero (beyond the end of a short backing file too).
 */
int qimg_block_status_chain(struct qimg_image *img, struct qimg_image *base,
                            uint64_t offset, uint64_t len,
                            struct qimg_extent *ext, struct qimg_error *err);

/* ---- internal snapshots -------------------------------------------------- */

struct qimg_snapshot {
    char id[128];
    char name[1024];
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;
    bool has_icount;
    uint64_t disk_size;         /* 0 when the image did not record it */
};
/* The image's snapshots (*list owned by the caller, free()); n = 0 and
 * *list non-NULL when it has none; -ENOTSUP when the format has none. */
int qimg_snapshot_list(struct qimg_image *img, struct qimg_snapshot **list,
                       size_t *n, struct qimg_error *err);
enum qimg_snapshot_op {
    QIMG_SNAPSHOT_CREATE,   /* name: the new snapshot's name */
    QIMG_SNAPSHOT_APPLY,    /* name: an ID or a name */
    QIMG_SNAPSHOT_DELETE,   /* name: an ID or a name */
};
/* Create, apply (revert to) or delete an internal snapshot of a writable
 * image (qemu-img snapshot -c/-a/-d). */
int qimg_snapshot_change(struct qimg_image *img, enum qimg_snapshot_op op,
                         const char *name, struct qimg_error *err);
/* Make a read-only image show snapshot (id and/or name) instead of the
 * current state: convert -l, measure -l. */
int qimg_snapshot_load_tmp(struct qimg_image *img, const char *id,
                           const char *name, struct qimg_error *err);

/* ---- persistent dirty bitmaps -------------------------------------------- */

struct qimg_bitmap {
    char name[1024];
    uint64_t granularity;       /* guest bytes per bit */
    bool enabled;               /* records writes ("auto") */
    bool in_use;                /* left in use: contents unusable */
};
/* The image's persistent bitmaps in directory order (*list owned by the
 * caller, free(); non-NULL when n = 0); -ENOTSUP when the format has
 * none. */
int qimg_bitmap_list(struct qimg_image *img, struct qimg_bitmap **list,
                     size_t *n, struct qimg_error *err);
/* True when the image can store persistent bitmaps (qcow2 v3). */
bool qimg_bitmap_supported(struct qimg_image *img);
/*
 * qemu-img bitmap's operations on a writable image, with QEMU's messages
 * ("Dirty bitmap 'X' not found", ...).  Bitmaps live in memory while the
 * image is open, record writes when enabled, and are written back by
 * qimg_close().  granularity 0: the format's default.
 */
int qimg_bitmap_add(struct qimg_image *img, const char *name,
                    uint64_t granularity, bool disabled,
                    struct qimg_error *err);
int qimg_bitmap_remove(struct qimg_image *img, const char *name,
                       struct qimg_error *err);
int qimg_bitmap_clear(struct qimg_image *img, const char *name,
                      struct qimg_error *err);
int qimg_bitmap_enable(struct qimg_image *img, const char *name, bool enable,
                       struct qimg_error *err);
/* Set in bitmap name of img every bit set in bitmap src_name of src (src
 * may be img; images of the same size). */
int qimg_bitmap_merge(struct qimg_image *img, const char *name,
                      struct qimg_image *src, const char *src_name,
                      struct qimg_error *err);

/* ---- bench ---------------------------------------------------------------- */

struct qimg_bench_params {
    uint64_t count;          /* requests in all */
    uint32_t depth;          /* requests in flight at once */
    size_t bufsize;          /* bytes per request */
    uint64_t offset;         /* offset of the first request */
    uint64_t step;           /* advance per request (wraps at the end) */
    bool write;
    uint8_t pattern;         /* byte written by write requests */
    uint64_t flush_interval; /* flush after this many requests (writes) */
    bool drain;              /* wait for requests before each flush */
};
/* Run the benchmark; *seconds is the wall time of the run. */
int qimg_bench(struct qimg_image *img, const struct qimg_bench_params *params,
               double *seconds, struct qimg_error *err);

/* ---- amend ---------------------------------------------------------------- */

/*
 * The amend options of format fmt (entries written to out, at most max), or
 * -ENOTSUP with "Format driver 'X' does not support option amendment".
 */
int qimg_amend_opts(const char *fmt, const struct qimg_opt_desc **out,
                    size_t max, struct qimg_error *err);
/*
 * Parse an -o list into opts against the format's amend options, element
 * by element as qemu-img: unknown keys give "Invalid parameter 'K'", with
 * "This option is only supported for image creation" when the list parses
 * with the creation options added; typed values are validated.
 */
int qimg_amend_parse_opts(const char *fmt, const char *options,
                          struct qimg_opts *opts, struct qimg_error *err);
/* Change options of an open (read-write) image. */
int qimg_amend(struct qimg_image *img, const struct qimg_opts *opts, bool force,
               void (*progress)(void *opaque, double percent), void *opaque,
               struct qimg_error *err);

/* ---- info / measure / check ------------------------------------------ */

struct qimg_info {
    uint64_t virtual_size;
    int64_t actual_size;        /* bytes allocated on disk, -1 unknown */
    uint32_t cluster_size;      /* 0: none */
    bool dirty;
    bool has_dirty_flag;        /* "dirty-flag" is reported (QEMU's driver
                                   answers bdrv_get_info) */
    bool encrypted;
    /* Every write must be a compressed whole cluster (vmdk
     * streamOptimized): convert then compresses without -c, as qemu-img
     * does (QEMU's BlockDriverInfo.needs_compressed_writes). */
    bool needs_compressed_writes;
    char backing_file[4096];    /* as written in the image, "" if none */
    char backing_fmt[64];
    char full_backing_filename[4096];
    /* Format-specific section as a JSON object text, "" if none. */
    char *format_specific_json; /* owned, free with qimg_info_release */
};
int qimg_get_info(struct qimg_image *img, struct qimg_info *info,
                  struct qimg_error *err);
void qimg_info_release(struct qimg_info *info);

struct qimg_measure {
    uint64_t required;
    uint64_t fully_allocated;
    uint64_t bitmaps;
    bool has_bitmaps;
};
/*
 * Measure what an image of format fmt with opts would take, holding the
 * content of src (or, with src NULL, of an empty image of size bytes).
 */
int qimg_measure(const char *fmt, const struct qimg_opts *opts,
                 struct qimg_image *src, uint64_t size,
                 struct qimg_measure *out, struct qimg_error *err);

struct qimg_check {
    int corruptions, leaks, check_errors;
    int corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters, allocated_clusters;
    int64_t fragmented_clusters, compressed_clusters;
    /* Set by the caller: receives each problem line as qemu-img prints it
     * ("Leaked cluster 5 refcount=2 reference=1").  Kept by qimg_check. */
    void (*report)(void *opaque, const char *line);
    void *opaque;
};
enum { QIMG_CHECK_FIX_LEAKS = 1, QIMG_CHECK_FIX_ERRORS = 2 };
/* -ENOTSUP when the format has no check. */
int qimg_check(struct qimg_image *img, unsigned fix, struct qimg_check *res,
               struct qimg_error *err);

/* ---- copy engine (convert, dd) ------------------------------------------ */

/* A window of guest bytes of one source image. */
struct qimg_copy_source {
    struct qimg_image *img;
    uint64_t offset;            /* first byte to copy */
    uint64_t length;            /* bytes to copy */
};

/* Where a failed copy failed first (see qimg_copy_params.result). */
enum qimg_copy_stage {
    QIMG_COPY_OK,
    QIMG_COPY_STATUS,       /* block status of a source */
    QIMG_COPY_READ,         /* reading a source */
    QIMG_COPY_WRITE,        /* writing the target */
};

struct qimg_copy_result {
    enum qimg_copy_stage stage;
    int code;               /* negative errno */
    uint64_t offset;        /* target offset of the failed request */
};

/*
 * What qimg_copy() does, as qemu-img convert's options describe it.  The
 * sources are copied back to back into target from target_offset on.
 */
struct qimg_copy_params {
    const struct qimg_copy_source *sources;
    size_t n_sources;
    struct qimg_image *target;
    uint64_t target_offset;
    /*
     * -S: zero runs of at least this many bytes (a multiple of 512) inside
     * data are not written.  0 writes everything, zero areas included, so
     * the target ends up fully allocated (dd does that too).
     */
    uint64_t sparse_size;
    bool target_is_zero;        /* unwritten target areas read as zero */
    bool target_has_backing;    /* -B: leave what the source's top layer
                                   does not allocate to the target's backing */
    int64_t target_backing_size;/* size of that backing file, -1 unknown */
    bool compress;              /* -c: write whole clusters compressed */
    bool copy_offload;          /* -C: copy_file_range between raw files,
                                   falling back to read/write when refused */
    bool salvage;               /* read errors: zero the sector, warn, go on */
    unsigned parallel;          /* -m: requests in flight (threads), 0 = 8 */
    bool out_of_order;          /* -W: writes need not follow guest order */
    /*
     * Commit writes in guest order even where the order cannot show in
     * the target (a raw image on a random-access storage, which otherwise
     * takes each chunk's write as soon as it is read; the reported errors
     * are those of in-order writes either way).  dd sets it: it reports
     * the first failure in time, whatever its place.
     */
    bool in_order;
    uint64_t rate_limit;        /* -r: data bytes per second, 0 = no limit */
    size_t chunk_size;          /* bytes per request, 0 = 2 MiB */
    /* Percentage done, called in guest order as requests are issued. */
    void (*progress)(void *opaque, double percent);
    /* Non-fatal problems (--salvage), in qemu-img's wording. */
    void (*warn)(void *opaque, const char *msg);
    /*
     * Each failed request as it fails: requests in flight may fail
     * together, as qemu-img reports them.  When set, the caller need not
     * show err of a failed qimg_copy() if this was called at least once.
     */
    void (*error)(void *opaque, const char *msg);
    void *opaque;
    /* When not NULL, set to where a failed copy failed first. */
    struct qimg_copy_result *result;
};

/*
 * Copy the guest content of the sources into the target: block status
 * decides what is read (holes and zero areas never are), data is read by
 * `parallel` threads and zero runs in it detected, and the target is
 * written in guest order unless out_of_order.  Zero areas are skipped when
 * target_is_zero, otherwise written as zeroes that may unmap.  On failure
 * err holds qemu-img's message ("error while writing at byte N: ...").
 */
int qimg_copy(const struct qimg_copy_params *params, struct qimg_error *err);

/* True when format fmt can write compressed clusters (convert -c). */
bool qimg_format_can_compress(const char *fmt);

/* ---- backing chains: commit, rebase ------------------------------------ */

/*
 * name relative to the directory part of base (everything up to its last
 * '/'), as QEMU resolves backing file names; absolute names are returned
 * as they are.  malloc'ed; NULL when out of memory.
 */
char *qimg_path_combine(const char *base, const char *name);

/*
 * The image of top's backing chain (below top) that name designates, as
 * qemu-img's "-b base" does: a path that leads to the same file as the
 * backing file recorded in an overlay, relative names being taken
 * relative to that overlay's directory.  NULL when there is none.
 */
struct qimg_image *qimg_chain_find(struct qimg_image *top, const char *name);

/*
 * Record backing (NULL or "": none) and its format backing_fmt (NULL:
 * none) in the header of a read-write image.  Only the header changes; the
 * opened backing chain stays.  -ENOTSUP when the format has no backing
 * files, -EINVAL for a name the format cannot store, -ENOSPC when the
 * header does not fit.
 */
int qimg_change_backing(struct qimg_image *img, const char *backing,
                        const char *backing_fmt, struct qimg_error *err);

struct qimg_commit_params {
    struct qimg_image *top;     /* read-write, with its backing chain */
    /* The image to commit into: a node of top's chain below top.  It is
     * reopened read-write, so the pointer is stale afterwards. */
    struct qimg_image *base;
    bool keep_top;              /* -d: leave top as it is afterwards */
    uint64_t rate_limit;        /* bytes of data per second, 0: none */
    /* Percentage of the data to copy done. */
    void (*progress)(void *opaque, double percent);
    void *opaque;
};

/*
 * qemu-img commit: copy what top and the images between top and base
 * allocate into base, as QEMU's commit job does (base grown to top's size
 * first when smaller), then empty top unless keep_top.
 */
int qimg_commit(const struct qimg_commit_params *params,
                struct qimg_error *err);

struct qimg_rebase_params {
    /* Read-write; opened with its old backing chain unless unsafe. */
    struct qimg_image *img;
    /* New backing file as it is to be recorded (relative names are
     * relative to img's directory); NULL or "": no backing file. */
    const char *backing;
    const char *backing_fmt;    /* -F, or NULL */
    bool unsafe;                /* -u: only rewrite the header */
    unsigned backing_flags;     /* QIMG_OPEN_SHARE (-U) for the new backing */
    enum qimg_cache backing_cache; /* -T */
    /* Percentage done, accumulated as qemu-img does (may stay below 100
     * until the end). */
    void (*progress)(void *opaque, double percent);
    void *opaque;
};

/*
 * The first part of qemu-img rebase: unless unsafe, copy into img every
 * area it does not allocate where the old and the new backing chains
 * differ, so that recording the new backing file afterwards (with
 * qimg_change_backing()) changes nothing the guest sees.  Messages in
 * qemu-img's words ("Could not open new backing file 'X': ...").
 */
int qimg_rebase(const struct qimg_rebase_params *params,
                struct qimg_error *err);

/* ---- checksums (lib/checksum) ------------------------------------------- */

/* Default block size of the blkhash construction (as nbdcopy's). */
#define QIMG_CHECKSUM_DEFAULT_BLOCK (64u * 1024)
/* Longest digest an algorithm gives (bytes). */
#define QIMG_CHECKSUM_MAX_DIGEST 64

struct qimg_checksum_params {
    struct qimg_image *img;     /* read through its backing chain */
    const char *algorithm;      /* qimg_checksum_algorithm_at() name; NULL: sha256 */
    uint64_t block_size;        /* a power of two; 0: 64 KiB */
    unsigned threads;           /* 0: one per online core */
    /* Percentage of the image done, in guest order. */
    void (*progress)(void *opaque, double percent);
    void *opaque;
};

/*
 * The blkhash digest of img's guest content, as nbdcopy --blkhash computes
 * it: H(H(block 0) || ... || H(block n-1) || le64(virtual size)), a full
 * zero block hashing as block_size zero bytes.  Holes and zero extents are
 * not read; data blocks are hashed in parallel.  digest must hold
 * QIMG_CHECKSUM_MAX_DIGEST bytes; *digest_len gets its length.
 */
int qimg_checksum(const struct qimg_checksum_params *p, unsigned char *digest,
                  size_t *digest_len, struct qimg_error *err);
/*
 * Parse "ALG" or "ALG/BLOCK_SIZE" (nbdcopy's --blkhash syntax, size
 * suffixes allowed: "sha512/512k") into p->algorithm and p->block_size.
 */
int qimg_checksum_parse(const char *spec, struct qimg_checksum_params *p,
                        struct qimg_error *err);
/* The algorithm names, i from 0; NULL past the last. */
const char *qimg_checksum_algorithm_at(size_t i);

#ifdef __cplusplus
}
#endif
#endif /* QIMG_H */
