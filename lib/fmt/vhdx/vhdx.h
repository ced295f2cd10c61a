/*
 * vhdx.h - internal definitions of the vhdx driver (Microsoft's MS-VHDX
 * specification, "VHDX Format Specification v1.00"; behaviour as QEMU
 * 7.2's block/vhdx*.c).  Split by concern:
 *   vhdx.c           probe, open (in QEMU's order), close, info, reads and
 *                    writes, the driver table
 *   vhdx-header.c    CRC-32C, GUIDs, the two headers (choice by sequence
 *                    number, updates), the region table and its overlap
 *                    register
 *   vhdx-metadata.c  the metadata region: table, file parameters, sizes,
 *                    page 83 data; the geometry derived from them
 *   vhdx-bat.c       the BAT: load (bounded), entry checks, the guest ->
 *                    host mapping and block allocation for table.h
 *   vhdx-log.c       the metadata log: search and replay at open, and the
 *                    write-ahead entries of BAT updates
 *   vhdx-create.c    create (QEMU's layout, byte for byte but the GUIDs)
 *   vhdx-check.c     check
 *
 * Locking: node->lock guards the headers, the log cursor, the BAT and the
 * allocation cursor after open; guest data I/O to present blocks runs
 * outside it (lib/fmt/table/table.h does the locking).
 */
#ifndef QIMG_FMT_VHDX_H
#define QIMG_FMT_VHDX_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "fmt/table/table.h"

#define VHDX_MiB (1ull << 20)

/* ---- on-disk layout (MS-VHDX 2.2) ----------------------------------------- */

#define VHDX_FILE_SIGNATURE "vhdxfile"
#define VHDX_HEADER_BLOCK (64u << 10)        /* each structure's 64 KiB slot */
#define VHDX_HEADER1_OFFSET (1 * VHDX_HEADER_BLOCK)
#define VHDX_HEADER2_OFFSET (2 * VHDX_HEADER_BLOCK)
#define VHDX_REGION1_OFFSET (3 * VHDX_HEADER_BLOCK)
#define VHDX_REGION2_OFFSET (4 * VHDX_HEADER_BLOCK)
#define VHDX_HEADER_SECTION_END VHDX_MiB
/* The header checksum covers its first 4 KiB; the fields are 80 bytes. */
#define VHDX_HEADER_CRC_SIZE 4096u
#define VHDX_HEADER_SIZE 80u
#define VHDX_HEADER_SIG 0x64616568u          /* "head" */
#define VHDX_REGION_SIG 0x69676572u          /* "regi" */
#define VHDX_REGION_ENTRY_SIZE 32u
#define VHDX_REGION_REQUIRED 1u
/* The spec's bound on region table entries (QEMU's too). */
#define VHDX_MAX_REGION_ENTRIES 2047u

#define VHDX_METADATA_SIG 0x617461646174656dull /* "metadata" */
#define VHDX_METADATA_ENTRY_SIZE 32u
/* The metadata table is read whole: header + 2047 entries (the spec's
 * bound, QEMU's VHDX_METADATA_TABLE_MAX_SIZE). */
#define VHDX_METADATA_TABLE_SIZE (32u * 2048u)
#define VHDX_META_IS_USER 1u
#define VHDX_META_IS_VIRTUAL_DISK 2u
#define VHDX_META_IS_REQUIRED 4u
#define VHDX_PARAMS_LEAVE_ALLOCATED 1u      /* fixed image */
#define VHDX_PARAMS_HAS_PARENT 2u           /* differencing image */

/* Payload block sizes the spec allows (QEMU refuses others). */
#define VHDX_BLOCK_SIZE_MIN VHDX_MiB
#define VHDX_BLOCK_SIZE_MAX (256 * VHDX_MiB)
/* The spec's 2^23 sectors per sector-bitmap block give the chunk ratio. */
#define VHDX_MAX_SECTORS_PER_BLOCK (1ull << 23)
/* The spec's and QEMU's create limit on the virtual size. */
#define VHDX_MAX_IMAGE_SIZE (64ull << 40)

/* BAT entries: state in bits 0-2, file offset in MiB in bits 20-63. */
#define VHDX_BAT_STATE_MASK 7u
#define VHDX_BAT_OFFSET_MASK 0xfffffffffff00000ull
enum {
    VHDX_PAYLOAD_NOT_PRESENT = 0,
    VHDX_PAYLOAD_UNDEFINED = 1,
    VHDX_PAYLOAD_ZERO = 2,
    VHDX_PAYLOAD_UNMAPPED = 3,
    VHDX_PAYLOAD_UNMAPPED_V095 = 5,
    VHDX_PAYLOAD_FULLY_PRESENT = 6,
    VHDX_PAYLOAD_PARTIALLY_PRESENT = 7,
};

/*
 * The largest BAT held in memory: the entries of a 64 TiB image (the
 * spec's maximum) with 1 MiB blocks, the smallest, plus its sector bitmap
 * entries: 512 MiB and 128 KiB.  QEMU allocates the BAT region's length
 * as the image declares it (up to 4 GiB); images needing more entries
 * than this are refused.
 */
#define VHDX_MAX_BAT_ENTRIES \
    ((VHDX_MAX_IMAGE_SIZE / VHDX_BLOCK_SIZE_MIN) + \
     (VHDX_MAX_IMAGE_SIZE / VHDX_BLOCK_SIZE_MIN) / 4096)

/* QEMU's largest single request (BDRV_REQUEST_MAX_BYTES): a BAT region
 * longer than this fails its one read with EIO. */
#define VHDX_QEMU_MAX_REQUEST 0x7ffffe00u

/* ---- the log (MS-VHDX 2.3) ------------------------------------------------ */

#define VHDX_LOG_SECTOR 4096u
#define VHDX_LOG_MIN_SIZE VHDX_MiB
#define VHDX_LOG_HDR_SIZE 64u
#define VHDX_LOG_DESC_SIZE 32u
#define VHDX_LOG_SIG 0x65676f6cu             /* "loge" */
#define VHDX_LOG_DESC_SIG 0x63736564u        /* "desc" */
#define VHDX_LOG_ZERO_SIG 0x6f72657au        /* "zero" */
#define VHDX_LOG_DATA_SIG 0x61746164u        /* "data" */
/*
 * A log replay may write or zero the file only below this offset (and
 * extend it at most to it): four times the largest spec-conforming image,
 * room for the payload of 64 TiB, its tables and log.  QEMU 7.2 writes
 * wherever a descriptor says, 4 KiB at a time with a flush each.
 */
#define VHDX_LOG_MAX_FILE_OFFSET (4 * VHDX_MAX_IMAGE_SIZE)

/* ---- in memory ------------------------------------------------------------ */

struct vhdx_header {
    uint32_t signature;
    uint32_t checksum;
    uint64_t sequence;
    uint8_t file_write_guid[16];
    uint8_t data_write_guid[16];
    uint8_t log_guid[16];
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
};

struct vhdx_region_entry {
    uint8_t guid[16];
    uint64_t file_offset;
    uint32_t length;
    uint32_t data_bits;
};

/* Byte ranges of the file that must not overlap (QEMU's region list). */
struct vhdx_range {
    uint64_t start, end;
};

/* The circular log's cursor (QEMU's VHDXLogEntries). */
struct vhdx_log {
    uint64_t offset;            /* of the log in the file */
    uint64_t length;            /* bytes, a multiple of 1 MiB */
    uint32_t read, write, tail; /* byte offsets inside the log */
    uint64_t sequence;          /* of the next entry written */
};

struct vhdx_state {
    struct vhdx_header hdr[2];
    int curr;                   /* the current header */
    uint8_t session_guid[16];   /* file_write_guid of our header updates */
    bool first_visible_write;   /* data_write_guid not renewed yet */
    struct vhdx_log log;
    bool log_replayed;          /* check reports it as a fixed corruption */

    struct vhdx_range ranges[VHDX_MAX_REGION_ENTRIES + 1];
    unsigned n_ranges;
    struct vhdx_region_entry bat_rt, meta_rt;

    /* metadata */
    uint32_t block_size;
    uint32_t params_bits;
    uint64_t virtual_size;
    uint32_t logical_sector;
    uint32_t physical_sector;
    uint32_t sectors_per_block;
    uint64_t chunk_ratio;       /* payload blocks per sector bitmap block */
    unsigned chunk_ratio_bits;
    unsigned block_bits;

    uint64_t bat_entries;       /* as QEMU counts them */
    struct qimg_table bat;      /* the entries in memory */
    struct qimg_alloc alloc;    /* file end: new blocks go here */
    struct qimg_table_write_ops write_ops;
};

/* vhdx-header.c */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len);
/* The CRC-32C of buf with the 4 bytes at crc_off counted as zero. */
uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t crc_off);
void vhdx_guid_generate(uint8_t guid[16]);
bool vhdx_guid_is_zero(const uint8_t guid[16]);
void vhdx_header_decode(struct vhdx_header *h, const uint8_t *p);
void vhdx_header_encode(const struct vhdx_header *h, uint8_t *p);
/* Write h into the 4 KiB slot at off: reserved bytes kept when
 * keep_rest (read from the file), zeroes otherwise; flushed. */
int vhdx_header_write(struct qimg_storage *st, const struct vhdx_header *h,
                      uint64_t off, bool keep_rest, struct qimg_error *err);
int vhdx_parse_headers(struct qimg_image *node, struct qimg_error *err);
/* Rewrite both headers (the non-current one first, twice), with a new
 * data write GUID when new_data_guid and log_guid when not NULL. */
int vhdx_update_headers(struct qimg_image *node, bool new_data_guid,
                        const uint8_t *log_guid, struct qimg_error *err);
/* On the first guest-visible change: new data write GUID in both headers. */
int vhdx_user_visible_write(struct qimg_image *node, struct qimg_error *err);
void vhdx_range_add(struct vhdx_state *s, uint64_t start, uint64_t len);
/* -EINVAL (and QEMU's message through qimg_message) on an overlap. */
int vhdx_range_check(struct vhdx_state *s, uint64_t start, uint64_t len);
int vhdx_parse_region_table(struct qimg_image *node, struct qimg_error *err);
extern const uint8_t vhdx_bat_guid[16], vhdx_metadata_guid[16];

/* vhdx-metadata.c */
int vhdx_parse_metadata(struct qimg_image *node, struct qimg_error *err);
/* Sector bitmap interleave for a block size (a power of two >= 1 MiB). */
uint64_t vhdx_chunk_ratio(uint32_t block_size, uint32_t sector);
/* BAT entries QEMU counts for size (32-bit arithmetic as QEMU's, for
 * the size-0 case) given that the block count fits 32 bits. */
uint64_t vhdx_bat_entries(uint64_t size, uint32_t block_size,
                          uint64_t chunk_ratio);
/* The metadata region as QEMU creates it: table (64 KiB) and items. */
#define VHDX_METADATA_ITEMS_SIZE 40u
void vhdx_metadata_build(uint8_t *table, uint8_t *items, uint64_t size,
                         uint32_t block_size, bool fixed);

/* vhdx-bat.c */
int vhdx_load_bat(struct qimg_image *node, struct qimg_error *err);
/* QEMU's open-time check of fully present entries: -EINVAL at the first
 * bad one when errors is NULL, else every bad one counted. */
int vhdx_check_bat(struct qimg_image *node, int *errors,
                   struct qimg_error *err);
int vhdx_map_read(struct qimg_image *node, uint64_t off, uint64_t len,
                  struct qimg_map_ext *m, struct qimg_error *err);
/* Where the image reads as zero (struct qimg_format.zero_hint): blocks
 * without data, and holes of the file inside present blocks. */
int vhdx_zero_hint(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_extent *ext, struct qimg_error *err);
/* The write callbacks of lib/fmt/table for this image's block size. */
void vhdx_write_ops_init(struct vhdx_state *s);

/* vhdx-log.c */
int vhdx_parse_log(struct qimg_image *node, struct qimg_error *err);
/* Write len bytes at file offset off through the log and replay it at
 * once (QEMU's vhdx_log_write_and_flush). */
int vhdx_log_write_and_flush(struct qimg_image *node, const void *data,
                             uint32_t len, uint64_t off,
                             struct qimg_error *err);

/* vhdx-create.c */
#define VHDX_N_CREATE_OPTS 5
extern const struct qimg_opt_desc vhdx_create_opts[VHDX_N_CREATE_OPTS];
int vhdx_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err);

/* vhdx-check.c */
int vhdx_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
               struct qimg_error *err);

#endif /* QIMG_FMT_VHDX_H */
