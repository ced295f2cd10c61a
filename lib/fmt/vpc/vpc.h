/*
 * vpc.h - the vpc (VHD, Virtual PC / Hyper-V / Azure) driver: what its
 * files share.  Layout from Microsoft's "Virtual Hard Disk Image Format
 * Specification"; behaviour as QEMU 7.2's vpc driver.
 *
 *   vpc.c         probe, footer and dynamic header validation, open
 *                 (the virtual size from CHS geometry or current_size),
 *                 BAT loading and its bounds, info, the driver table
 *   vpc-io.c      the data path: BAT mapping, reads, writes with block
 *                 allocation and sector bitmaps, block status
 *   vpc-create.c  CHS geometry, size rounding, creation of fixed and
 *                 dynamic images laid out as QEMU lays them out
 *
 * A fixed image is the guest data followed by a 512-byte footer.  A
 * dynamic image is: a copy of the footer at 0, the dynamic header (1024
 * bytes) where the footer's data_offset points, the BAT (big-endian
 * 32-bit sector numbers, 0xffffffff: not allocated) and blocks, each a
 * sector bitmap then block_size bytes of data, then the footer.
 */
#ifndef QIMG_FMT_VPC_H
#define QIMG_FMT_VPC_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "fmt/table/table.h"

#define VPC_SECTOR 512u
#define VPC_FOOTER_SIZE 512u
#define VPC_DYN_HEADER_SIZE 1024u

#define VPC_TYPE_FIXED 2u
#define VPC_TYPE_DYNAMIC 3u
#define VPC_TYPE_DIFF 4u

/* A BAT entry for a block with no data. */
#define VPC_BAT_UNUSED 0xffffffffu

/* Seconds from the Unix epoch to the VHD one (2000-01-01 00:00 UTC). */
#define VPC_TIMESTAMP_BASE 946684800u

/* CHS geometry limits: 65535 cylinders, 16 heads, 255 sectors. */
#define VPC_CHS_MAX_C 65535u
#define VPC_CHS_MAX_H 16u
#define VPC_CHS_MAX_S 255u
#define VPC_MAX_GEOMETRY ((uint64_t)VPC_CHS_MAX_C * VPC_CHS_MAX_H * VPC_CHS_MAX_S)
/* Largest virtual size in sectors (2040 GiB), QEMU's VHD_MAX_SECTORS. */
#define VPC_MAX_SECTORS 0xff000000ull

/* Footer fields (big-endian), byte offsets. */
#define VPC_F_CREATOR 0        /* "conectix" */
#define VPC_F_FEATURES 8
#define VPC_F_VERSION 12
#define VPC_F_DATA_OFFSET 16
#define VPC_F_TIMESTAMP 24
#define VPC_F_CREATOR_APP 28
#define VPC_F_CREATOR_VER 32   /* major 16 bits, minor 16 bits */
#define VPC_F_CREATOR_OS 36
#define VPC_F_ORIG_SIZE 40
#define VPC_F_CUR_SIZE 48
#define VPC_F_CYLS 56
#define VPC_F_HEADS 58
#define VPC_F_SECS 59
#define VPC_F_TYPE 60
#define VPC_F_CHECKSUM 64
#define VPC_F_UUID 68

/* Dynamic disk header fields (big-endian), byte offsets. */
#define VPC_D_MAGIC 0          /* "cxsparse" */
#define VPC_D_DATA_OFFSET 8
#define VPC_D_TABLE_OFFSET 16
#define VPC_D_VERSION 24
#define VPC_D_MAX_ENTRIES 28
#define VPC_D_BLOCK_SIZE 32
#define VPC_D_CHECKSUM 36

/*
 * Largest BAT we load, in bytes: 64 Mi entries, room for the largest
 * virtual size (2040 GiB) with blocks down to 32 KiB.  QEMU accepts up to
 * 2 GiB (and allocates it for a 2 KiB file claiming it); we refuse
 * larger tables before allocating anything (docs/LIMITS.md).
 */
#define VPC_MAX_BAT_BYTES (256ull << 20)
/* Largest sector number a BAT entry can hold for a new block. */
#define VPC_MAX_BAT_SECTOR 0xfffffffeull

struct vpc_state {
    uint8_t footer[VPC_FOOTER_SIZE];   /* as on disk, checksum included */
    bool fixed;
    uint32_t block_size;        /* dynamic: bytes of data per block */
    uint32_t bitmap_size;       /* dynamic: bytes of each block's bitmap */
    uint64_t bat_offset;
    struct qimg_table bat;      /* max_table_entries entries */
    struct qimg_alloc alloc;    /* end = where the next block goes (QEMU's
                                   free_data_block_offset); the footer
                                   follows it */
    /* One bit per BAT entry: the block's sector bitmap is known to be all
     * ones on disk (QEMU sets every bit before writing into a block, so
     * that readers honouring the bitmap see the data). */
    uint8_t *bitmap_full;
    uint8_t *ones;              /* bitmap_size bytes of 0xff */
};

/* The one's complement of the byte sum, skipping the 4-byte checksum
 * field at skip (the VHD checksum of the footer and dynamic header). */
uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip);

/* vpc-io.c */
int vpc_map(struct qimg_image *node, uint64_t off, uint64_t len,
            struct qimg_map_ext *m, struct qimg_error *err);
int vpc_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err);
int vpc_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err);
int vpc_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err);

/* vpc-create.c */
int vpc_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err);

#endif /* QIMG_FMT_VPC_H */
