/*
 * parallels.h - the Parallels expandable image format
 * (docs/interop/parallels.txt): shared state and the split of the driver.
 *
 *   parallels.c        probe, open (QEMU 7.2's checks and messages), the
 *                      in-use flag, runtime options, the mapping and data
 *                      path through the shared table helper, close
 *   parallels-check.c  check and repair
 *   parallels-create.c create and its options
 *   parallels-ext.c    the Format Extension cluster (checked on read-only
 *                      opens, as QEMU does; its dirty bitmaps are not used)
 *
 * On disk, little-endian: a 64-byte header, the BAT right after it (one
 * 32-bit entry per cluster: 0 unallocated, else the cluster's offset in
 * sectors, or in clusters for "WithouFreSpacExt" images), the data area.
 */
#ifndef QIMG_FMT_PARALLELS_H
#define QIMG_FMT_PARALLELS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "fmt/table/table.h"

#define PARALLELS_MAGIC "WithoutFreeSpace"      /* offsets in sectors */
#define PARALLELS_MAGIC2 "WithouFreSpacExt"     /* offsets in clusters */
#define PARALLELS_VERSION 2
#define PARALLELS_HEADER_LEN 64
#define PARALLELS_INUSE_MAGIC 0x746F6E59u       /* open read-write */
#define PARALLELS_HEADS 16                      /* geometry written by */
#define PARALLELS_SEC_IN_CYL 32                 /* create, not used */
#define PARALLELS_DEFAULT_CLUSTER_SIZE (1u << 20)
/* QEMU's bound on the image size: 2^32 clusters. */
#define PARALLELS_MAX_IMAGE_FACTOR (1ull << 32)

/* QEMU's bounds on the header: sectors per cluster (tracks) below
 * INT32_MAX / 513, BAT entries below INT_MAX / 4. */
#define PARALLELS_MAX_TRACKS (INT32_MAX / 513)
#define PARALLELS_MAX_BAT_ENTRIES (INT32_MAX / 4)
/*
 * Ours, tighter: the BAT is held in memory whole, QEMU allocates up to
 * 2 GiB for it; 64 MiB covers 16 Mi clusters (16 TiB at the default 1 MiB).
 */
#define PARALLELS_MAX_BAT_BYTES (64u << 20)
/* The Format Extension is one cluster read whole, and so are the data
 * clusters of its bitmaps: checked only for clusters up to 64 MiB (QEMU
 * allocates up to 2 GiB for them; Parallels uses 1 MiB clusters). */
#define PARALLELS_EXT_MAX_CLUSTER (64u << 20)
/* The virtual size in bytes must fit QEMU's int64_t. */
#define PARALLELS_MAX_SECTORS ((uint64_t)INT64_MAX / 512)
/* Runtime option defaults (QEMU's): grow the file by 128 MiB more than
 * needed, with fallocate. */
#define PARALLELS_DEFAULT_PREALLOC_SIZE (128ull << 20)

enum parallels_prealloc {
    PARALLELS_PREALLOC_FALLOC,
    PARALLELS_PREALLOC_TRUNCATE,
};

struct parallels_state {
    uint8_t header[PARALLELS_HEADER_LEN];   /* as on disk */
    uint32_t tracks;                        /* sectors per cluster */
    uint32_t cluster_size;                  /* bytes */
    uint32_t off_multiplier;                /* sectors per BAT unit */
    struct qimg_table bat;
    uint64_t data_end;                      /* in sectors, as QEMU keeps it */
    bool header_unclean;                    /* in-use flag found set */
    bool writable;                          /* the in-use flag was set */
    uint64_t prealloc_sectors;
    enum parallels_prealloc prealloc_mode;
};

/* The file offset of BAT entry i's cluster (0: unallocated). */
static inline uint64_t parallels_cluster_offset(const struct parallels_state *s,
                                                uint64_t i)
{
    return qimg_table_get(&s->bat, i) * s->off_multiplier * 512;
}

/* parallels.c: rewrite the 64-byte header from s->header. */
int parallels_write_header(struct qimg_image *node, struct qimg_error *err);

/* parallels-check.c */
int parallels_check(struct qimg_image *node, unsigned fix,
                    struct qimg_check *res, struct qimg_error *err);

/* parallels-create.c */
#define PARALLELS_N_CREATE_OPTS 2
extern const struct qimg_opt_desc parallels_create_opts[PARALLELS_N_CREATE_OPTS];
int parallels_create(const char *filename, const struct qimg_opts *opts,
                     struct qimg_error *err);

/* parallels-ext.c: check the Format Extension cluster at ext_off (bytes). */
int parallels_read_extension(struct qimg_image *node, uint64_t ext_off,
                             struct qimg_error *err);

#endif /* QIMG_FMT_PARALLELS_H */
