/*
 * vdi.h - the vdi (VirtualBox) driver: what its files share.  Layout as
 * QEMU 7.2's vdi driver reads and writes it (version 1.1 images):
 *
 *   0      the header (512 bytes, little-endian): a text line, the
 *          signature 0xbeda107f, version, image type (1 dynamic, 2
 *          static), offsets of the block map and of the data, disk size,
 *          block size (1 MiB), blocks in image, blocks allocated, UUIDs
 *   bmap   the block map: one 32-bit entry per block, the index of its
 *          data block (0xffffffff never allocated, 0xfffffffe discarded:
 *          both read as zeroes)
 *   data   block i at offset_data + i * block_size
 *
 *   vdi.c         probe, header validation and open, info, check
 *   vdi-io.c      the data path: mapping, reads, writes that allocate
 *                 blocks, block status
 *   vdi-create.c  creation of dynamic and static images
 */
#ifndef QIMG_FMT_VDI_H
#define QIMG_FMT_VDI_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "fmt/table/table.h"

#define VDI_SECTOR 512u
#define VDI_HEADER_SIZE 512u
#define VDI_SIGNATURE 0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_TYPE_DYNAMIC 1u
#define VDI_TYPE_STATIC 2u
/* The only block size QEMU reads and writes. */
#define VDI_BLOCK_SIZE (1u << 20)

/* Block map entries that hold no block. */
#define VDI_UNALLOCATED 0xffffffffu
#define VDI_DISCARDED 0xfffffffeu
#define VDI_IS_ALLOCATED(e) ((e) < VDI_DISCARDED)

/*
 * QEMU's bound on blocks_in_image: the block map, rounded up to a sector,
 * must fit in an int.  Its 2 GiB are what QEMU allocates for a tiny file
 * claiming that many blocks; we hold in memory only the part of the map
 * that lies inside the file (the rest reads as zero entries, as QEMU
 * reads it), and at most VDI_MAX_BMAP_BYTES of it.
 */
#define VDI_BLOCKS_IN_IMAGE_MAX ((0x80000000u - VDI_SECTOR) / 4)
#define VDI_DISK_SIZE_MAX ((uint64_t)VDI_BLOCKS_IN_IMAGE_MAX * VDI_BLOCK_SIZE)
/* Largest block map we read into memory: 128 Mi entries, images up to
 * 128 TiB (QEMU: 2 GiB, up to 512 TiB; docs/LIMITS.md). */
#define VDI_MAX_BMAP_BYTES (512ull << 20)

/* Header fields, byte offsets. */
#define VDI_H_TEXT 0x00
#define VDI_H_SIGNATURE 0x40
#define VDI_H_VERSION 0x44
#define VDI_H_HEADER_SIZE 0x48
#define VDI_H_IMAGE_TYPE 0x4c
#define VDI_H_OFFSET_BMAP 0x154
#define VDI_H_OFFSET_DATA 0x158
#define VDI_H_SECTOR_SIZE 0x168
#define VDI_H_DISK_SIZE 0x170
#define VDI_H_BLOCK_SIZE 0x178
#define VDI_H_BLOCKS_IN_IMAGE 0x180
#define VDI_H_BLOCKS_ALLOCATED 0x184
#define VDI_H_UUID_IMAGE 0x188
#define VDI_H_UUID_LAST_SNAP 0x198
#define VDI_H_UUID_LINK 0x1a8
#define VDI_H_UUID_PARENT 0x1b8

struct vdi_state {
    uint8_t header[VDI_HEADER_SIZE];   /* as written back (disk size
                                          rounded, blocks_allocated) */
    uint32_t image_type;
    uint32_t offset_data;
    uint32_t blocks_in_image;
    uint32_t blocks_allocated;
    /* The entries of the map that lie inside the file; entries past it
     * read as 0 (block 0), as QEMU reads them. */
    struct qimg_table bmap;
    /* New blocks go at offset_data + blocks_allocated * block_size.  On
     * a damaged image an entry may already use that index: the smallest
     * index at or past blocks_allocated that an entry uses (UINT64_MAX:
     * none), where allocation must stop before a new block shares
     * another's data. */
    uint64_t next_used;
};

/* Entry i of the block map (i < blocks_in_image). */
uint32_t vdi_entry(const struct vdi_state *s, uint64_t i);

/* vdi-io.c */
int vdi_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err);
int vdi_pwrite(struct qimg_image *node, uint64_t off, size_t len,
               const void *buf, struct qimg_error *err);
int vdi_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_extent *ext, struct qimg_error *err);

/* vdi-create.c */
int vdi_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err);

#endif /* QIMG_FMT_VDI_H */
