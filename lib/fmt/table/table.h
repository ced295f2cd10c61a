/*
 * table.h - the one helper shared by the formats whose guest blocks are
 * found through allocation tables: vdi (block map), vpc (BAT), vhdx (BAT),
 * parallels (BAT), qed and qcow (L1/L2).  It holds what they have in
 * common, so that bounds, byte order, write-back and allocation are
 * written (and tested: tests/unit/test-table.c) once:
 *
 * - struct qimg_table: a table of 4- or 8-byte entries (either byte order)
 *   loaded whole from a storage with a bound, read and changed in memory,
 *   and written back by the sectors that hold changed entries.
 * - struct qimg_alloc: the end-of-data cursor new blocks are appended at,
 *   overflow-checked and bounded.
 * - qimg_table_pread / qimg_table_block_status / qimg_table_pwrite: the
 *   data path of a format whose table maps each guest block to a host
 *   offset in node->file (or to "unallocated" / "zero"), given a map
 *   callback and, for writes, allocate/commit callbacks.  Formats that do
 *   not fit (compressed clusters, logs, sector bitmaps) call the table
 *   and allocation parts and write their own loop.
 *
 * Concurrency: a struct qimg_table and a struct qimg_alloc are plain data;
 * the caller serialises access with node->lock.  The data-path helpers take
 * node->lock around the callbacks themselves and do data I/O outside it,
 * except for allocating writes, which hold it from allocation to commit so
 * that two writers never allocate the same block twice (the copy engine
 * writes in guest order from one thread, so this costs convert nothing).
 */
#ifndef QIMG_FMT_TABLE_H
#define QIMG_FMT_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/block.h"

/* ---- tables ----------------------------------------------------------- */

struct qimg_table {
    struct qimg_storage *st;    /* where the table lives */
    uint64_t offset;            /* byte offset of entry 0 in st */
    uint64_t n;                 /* entries */
    uint8_t esize;              /* bytes per entry: 4 or 8 */
    bool big_endian;
    uint32_t sector;            /* write-back unit in bytes (power of 2) */
    uint8_t *raw;               /* the entries as on disk, padded to a
                                   whole number of sectors */
    size_t raw_len;
};

/* How a table is laid out and bounded (qimg_table_load). */
struct qimg_table_geom {
    uint64_t offset;            /* byte offset in the storage */
    uint64_t n;                 /* number of entries */
    uint8_t esize;              /* 4 or 8 */
    bool big_endian;
    uint32_t sector;            /* write-back unit, power of 2, 0: 512 */
    /* Largest table accepted, in bytes (the format's named limit); a
     * larger one fails with -EFBIG before anything is allocated. */
    uint64_t max_bytes;
    /* The whole table must lie inside the storage's current size (else
     * -EINVAL); without it bytes past the end read as zero. */
    bool inside_file;
};

/*
 * Allocate and read a table.  Errors: -EFBIG (larger than max_bytes),
 * -EINVAL (offset + size overflows, or past the end with inside_file),
 * -ENOMEM, or the storage's read error; err names `what` ("BAT", "block
 * map", "L1 table") unless the format sets its own message after.
 * n = 0 gives an empty table (raw NULL).
 */
int qimg_table_load(struct qimg_table *t, struct qimg_storage *st,
                    const struct qimg_table_geom *g, const char *what,
                    struct qimg_error *err);
/* A table of zero entries in memory (for create), not read from st. */
int qimg_table_init_zero(struct qimg_table *t, struct qimg_storage *st,
                         const struct qimg_table_geom *g, const char *what,
                         struct qimg_error *err);
/* Free the entries; t may be zeroed or already released. */
void qimg_table_release(struct qimg_table *t);

/* Entry i (i < t->n: the caller's guarantee). */
uint64_t qimg_table_get(const struct qimg_table *t, uint64_t i);
/* Change entry i in memory only (4-byte tables keep the low 32 bits). */
void qimg_table_set(struct qimg_table *t, uint64_t i, uint64_t v);
/*
 * Write entries [first, first + count) back: the whole sectors holding
 * them, from the in-memory copy (so neighbouring entries must be current
 * in memory, which they are when every change goes through the table).
 */
int qimg_table_store(struct qimg_table *t, uint64_t first, uint64_t count,
                     struct qimg_error *err);
/* Write the whole table back. */
int qimg_table_store_all(struct qimg_table *t, struct qimg_error *err);

/* ---- allocation ------------------------------------------------------- */

/* The end of the data area, where new blocks go. */
struct qimg_alloc {
    uint64_t end;               /* next free byte */
    uint64_t max;               /* no allocation may end past this */
};

/*
 * Reserve len bytes at the end, starting at end rounded up to align (a
 * power of two, 0 or 1: none): *off is where they start, end moves past
 * them.  -EFBIG (message "Image too big ...") on overflow or past max.
 */
int qimg_alloc_append(struct qimg_alloc *a, uint64_t len, uint64_t align,
                      uint64_t *off, struct qimg_error *err);

/* ---- the data path over a block map ---------------------------------- */

enum qimg_map_kind {
    QIMG_MAP_UNALLOC,           /* not here: the backing file, or zeroes */
    QIMG_MAP_ZERO,              /* reads as zeroes, decided by this layer */
    QIMG_MAP_DATA,              /* at host in node->file */
};

/* How guest bytes from an offset map, as the format's tables say. */
struct qimg_map_ext {
    enum qimg_map_kind kind;
    uint64_t len;               /* bytes from the offset with this mapping:
                                   > 0, and for DATA contiguous on the host */
    uint64_t host;              /* DATA: offset in node->file */
};

/*
 * The format's answer for [off, off + len): one mapping from off (its len
 * may be shorter than asked).  Called with node->lock held.  A host
 * offset must have been validated (qimg_range_ok against the format's
 * limit) before it is returned: the helpers read and write there.
 */
typedef int (*qimg_map_fn)(struct qimg_image *node, uint64_t off,
                           uint64_t len, struct qimg_map_ext *m,
                           struct qimg_error *err);

/*
 * Read guest bytes through map: DATA from node->file, ZERO as zeroes,
 * UNALLOC from the backing chain (zeroes without one or past its end).
 */
int qimg_table_pread(struct qimg_image *node, uint64_t off, size_t len,
                     void *buf, qimg_map_fn map, struct qimg_error *err);
/* The same, raising QEMU's read_aio (before a data read) and
 * read_backing_aio (before a read of the backing file) events on
 * node->file when events is set, as QEMU's qed raises them. */
int qimg_table_pread_events(struct qimg_image *node, uint64_t off, size_t len,
                            void *buf, qimg_map_fn map, bool events,
                            struct qimg_error *err);

/*
 * Block status from map: DATA gives ALLOCATED|DATA|OFFSET_VALID at host
 * (QIMG_BS_RECURSE_FILE too when recurse_file: holes in the file read as
 * zero), ZERO gives ALLOCATED|ZERO, UNALLOC nothing.
 */
int qimg_table_block_status(struct qimg_image *node, uint64_t off,
                            uint64_t len, struct qimg_extent *ext,
                            qimg_map_fn map, bool recurse_file,
                            struct qimg_error *err);

/* What a format tells qimg_table_pwrite about its blocks. */
struct qimg_table_write_ops {
    qimg_map_fn map;
    /*
     * Guest block size in bytes (the unit allocate() makes): any size
     * (parallels clusters need not be powers of 2); a block that has to
     * be staged in memory at most 256 MiB.
     */
    uint64_t block_size;
    /*
     * Make room for the guest block starting at block_off (aligned), which
     * map() reported UNALLOC or ZERO: reserve its host space (usually
     * qimg_alloc_append) and set *host.  Nothing may point at it yet.
     * Called with node->lock held.
     */
    int (*allocate)(struct qimg_image *node, uint64_t block_off,
                    uint64_t *host, struct qimg_error *err);
    /*
     * After the block's data is written at host (and flushed if the
     * format's consistency requires it): record it in the tables and
     * write them back.  was: what map() said before.  node->lock held.
     */
    int (*commit)(struct qimg_image *node, uint64_t block_off, uint64_t host,
                  enum qimg_map_kind was, struct qimg_error *err);
    /*
     * How the parts of a new block that the write does not cover are
     * filled: true reads them from the backing chain when the block was
     * UNALLOC (zeroes otherwise), false writes zeroes.
     */
    bool fill_from_backing;
    /*
     * allocate() leaves the new block reading as zeroes (it extended the
     * file over it, say) and the block was ZERO or UNALLOC without
     * fill_from_backing: only the bytes the write covers are written,
     * the rest stays as it is (a hole in a sparse file, as QEMU's vhdx
     * leaves it).  false stages and writes the whole block.
     */
    bool new_block_reads_zero;
    /*
     * A new block at the end of the image is written whole, block_size
     * bytes, even where it lies past node->size, for formats whose file
     * holds whole blocks (vdi).  Without it the write stops at node->size.
     */
    bool whole_last_block;
};

/*
 * Write guest bytes: into DATA mappings in place (outside the lock), and
 * into new blocks through allocate -> whole-block data write -> commit
 * (under the lock; parts the write does not cover are filled or left as
 * ops say).
 */
int qimg_table_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                      const void *buf, const struct qimg_table_write_ops *ops,
                      struct qimg_error *err);

/* ---- a cache of same-shaped tables (L2 tables) ------------------------- */

/*
 * Two-level formats (qed, qcow) keep their L1 table whole and a few of
 * their many L2 tables in memory: a small least-recently-used cache of
 * tables that share one geometry (entries, width, byte order, sector),
 * keyed by their offset in one storage.  It is write-through: a caller
 * changes an entry with qimg_table_set and writes it back at once with
 * qimg_table_store, so nothing is ever dirty and eviction never writes.
 * Like the rest of this helper it is plain data serialised by node->lock;
 * a table returned by get/new is valid until the next call on the cache.
 */
struct qimg_table_cache_slot {
    struct qimg_table t;        /* t.raw NULL: the slot is empty */
    uint64_t used;              /* cache clock at the last use */
};

struct qimg_table_cache {
    struct qimg_storage *st;
    struct qimg_table_geom geom;    /* every table's shape (offset unused) */
    const char *what;               /* "L2 table" in messages */
    struct qimg_table_cache_slot *slots;
    size_t nslots;
    uint64_t clock;
    uint64_t hits, misses;          /* for tests and tuning */
    /* Raise QIMG_EV_L2_LOAD on st before each table read (set after
     * init: qed and qcow, whose QEMU drivers raise it there). */
    bool load_event;
};

/*
 * A cache of at most max_slots tables of shape g (g->max_bytes bounds one
 * table, as for qimg_table_load) that together take at most budget bytes,
 * but always at least one slot.  Nothing is read or allocated per table
 * until it is used.  -EFBIG when one table exceeds g->max_bytes.
 */
int qimg_table_cache_init(struct qimg_table_cache *c, struct qimg_storage *st,
                          const struct qimg_table_geom *g, size_t max_slots,
                          uint64_t budget, const char *what,
                          struct qimg_error *err);
/* Free every table; c may be zeroed or already released. */
void qimg_table_cache_release(struct qimg_table_cache *c);
/*
 * The table at offset: from the cache, or read into the least recently
 * used slot (qimg_table_load's errors; the slot is left empty on failure).
 */
int qimg_table_cache_get(struct qimg_table_cache *c, uint64_t offset,
                         struct qimg_table **out, struct qimg_error *err);
/*
 * A table of zero entries for offset (a table just allocated), taking a
 * slot without reading: the caller fills it and writes it whole
 * (qimg_table_store_all) before anything points at it.
 */
int qimg_table_cache_new(struct qimg_table_cache *c, uint64_t offset,
                         struct qimg_table **out, struct qimg_error *err);
/* Forget the table at offset, or every table (after the image emptied). */
void qimg_table_cache_drop(struct qimg_table_cache *c, uint64_t offset);
void qimg_table_cache_clear(struct qimg_table_cache *c);

#endif /* QIMG_FMT_TABLE_H */
