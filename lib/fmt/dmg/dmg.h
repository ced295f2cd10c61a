/*
 * dmg.h - Apple UDIF disk images (read-only), shared by the dmg files:
 *   dmg.c        probe, the koly trailer, the resource fork, the chunk
 *                table (mish blocks) and its validation, open/close
 *   dmg-plist.c  the XML property list: <data> elements, base64
 *   dmg-read.c   reads: chunk lookup, raw and zero chunks, zlib and bzip2
 *                chunks through the shared chunk cache
 *
 * A dmg ends with a 512-byte "koly" trailer (big-endian) naming the data
 * fork, and either a resource fork or an XML property list holding one
 * "mish" block per partition: a 204-byte header and 40-byte chunk
 * entries (type, sector, sector count, offset and length in the data
 * fork).  QEMU 7.2 reads every <data> element of the plist (or every
 * resource of the fork) that decodes to a mish block, and so do we.
 */
#ifndef QIMG_FMT_DMG_H
#define QIMG_FMT_DMG_H

#include <stdint.h>

#include "core/block.h"
#include "core/chunk-cache.h"

/* Chunk types (the mish entry's first field). */
enum {
    DMG_ZERO = 0x00000000,      /* UDZE: zeroes */
    DMG_RAW = 0x00000001,       /* UDRW: stored as is */
    DMG_IGNORE = 0x00000002,    /* UDIG: reads as zeroes */
    DMG_ADC = 0x80000004,       /* UDCO: Apple Data Compression (unknown) */
    DMG_ZLIB = 0x80000005,      /* UDZO */
    DMG_BZIP2 = 0x80000006,     /* UDBZ */
    DMG_LZFSE = 0x80000007,     /* ULFO (no Debian library: refused) */
    DMG_COMMENT = 0x7ffffffe,   /* UDCM */
    DMG_END = 0xffffffff,       /* UDLE: terminator */
};

#define DMG_SECTOR 512

/* Largest compressed length of one chunk, and largest decompressed size
 * of a chunk other than zero/ignore (QEMU's limits: a buffer of each is
 * needed per chunk being read). */
#define DMG_MAX_LENGTH (64u << 20)
#define DMG_MAX_SECTORS (DMG_MAX_LENGTH / 512)
/* Largest chunk table: 40 bytes of memory per chunk, 40 MiB in all;
 * real images have one chunk per MiB or so (a 1 TiB image).  QEMU has no
 * limit and grows its table without bound on hostile images. */
#define DMG_MAX_CHUNKS (1u << 20)
/* Largest XML property list (QEMU's limit; a real one is about 1 MiB). */
#define DMG_MAX_PLIST (16u << 20)

struct dmg_chunk {
    uint64_t sector;            /* first guest sector */
    uint64_t count;             /* sectors */
    uint64_t offset;            /* in the file */
    uint64_t length;            /* bytes in the file */
    uint32_t type;
};

struct dmg_state {
    struct dmg_chunk *chunks;   /* sorted by sector, no overlaps */
    uint32_t n_chunks;
    uint32_t cap;
    uint64_t data_fork_offset;
    struct qimg_chunk_cache cache;
    bool cache_ok;
};

/* Add the chunks of one mish block (count bytes at buf) to the table, as
 * QEMU does: anything else is skipped (dmg.c). */
int dmg_add_mish(struct qimg_image *node, const uint8_t *buf, uint64_t count,
                 struct qimg_error *err);
/* Read the chunk tables from the XML property list at [off, off+len). */
int dmg_read_plist(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_error *err);
/* Open failure with QEMU's wording for drivers that give no message:
 * "Could not open 'FILE': <strerror>". */
int dmg_open_error(struct qimg_image *node, int code, struct qimg_error *err);

int dmg_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
              struct qimg_error *err);

#endif /* QIMG_FMT_DMG_H */
