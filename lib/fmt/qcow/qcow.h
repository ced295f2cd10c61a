/*
 * qcow.h - the original QEMU copy-on-write format, version 1: shared
 * state and the split of the driver.
 *
 *   qcow.c          probe, open (QEMU 7.2's checks and messages), the
 *                   AES context, close, info, emptying after commit
 *   qcow-cluster.c  the mapping, reads (compressed clusters inflated
 *                   outside the lock), writes with allocation at the end
 *                   of the file, compressed writes (convert -c), AES
 *                   en/decryption of data clusters
 *   qcow-create.c   create and its options
 *
 * On disk, big-endian: a 48-byte header, the backing file name after it,
 * the L1 table (8-byte entries) at an 8-byte boundary, then L2 tables and
 * clusters in allocation order.  An L2 entry is 0 (unallocated), a host
 * offset, or, with bit 63 set, a compressed cluster: raw deflate of size
 * (entry >> (63 - cluster_bits)) & (cluster_size - 1) at the low bits.
 */
#ifndef QIMG_FMT_QCOW_H
#define QIMG_FMT_QCOW_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "crypto/crypto.h"
#include "fmt/table/table.h"

#define QCOW_MAGIC 0x514649fbu          /* "QFI\xfb" */
#define QCOW_VERSION 1
#define QCOW_HEADER_LEN 48
#define QCOW_CRYPT_NONE 0
#define QCOW_CRYPT_AES 1
#define QCOW_OFLAG_COMPRESSED (1ull << 63)

/* QEMU's bounds: clusters 512 B..64 KiB, L2 tables 512 B..64 KiB. */
#define QCOW_MIN_CLUSTER_BITS 9
#define QCOW_MAX_CLUSTER_BITS 16
#define QCOW_MIN_L2_BITS 6
#define QCOW_MAX_L2_BITS 13
/* QEMU's: a backing file name fills a fixed 1 KiB array. */
#define QCOW_MAX_BACKING_NAME 1023
/*
 * Largest L1 table held in memory: 32 MiB (4 Mi entries), for images of
 * 8 TiB with the default geometries (each entry covers 2 MiB).  QEMU 7.2
 * accepts up to 2 GiB of L1 (INT_MAX bytes) and allocates all of it.
 */
#define QCOW_MAX_L1_BYTES (32u << 20)
/* L2 tables kept in memory, as QEMU's L2_CACHE_SIZE: 1 MiB at most. */
#define QCOW_L2_CACHE_SLOTS 16
/* zlib parameters of QEMU's compressed clusters: raw deflate with a
 * 4 KiB window, memory level 9, default level and strategy. */
#define QCOW_DEFLATE_WINDOW_BITS (-12)
#define QCOW_DEFLATE_MEM_LEVEL 9

struct qcow_state {
    uint32_t cluster_bits, cluster_size;
    uint32_t l2_bits, l2_size;          /* entries per L2 table */
    uint64_t cluster_offset_mask;       /* of a compressed entry */
    uint32_t crypt_method;
    /* The AES context of an encrypted image (NO_IO: one without a key).
     * Partial-sector writes are read-modify-writes under rmw_lock. */
    struct qimg_crypto *crypto;
    pthread_mutex_t rmw_lock;
    bool rmw_lock_ready;
    uint64_t l1_table_offset;
    struct qimg_table l1;
    struct qimg_table_cache l2;
    /* Where the next cluster or table goes: QEMU allocates at the file's
     * length (rounded up to a cluster for all but compressed data). */
    struct qimg_alloc alloc;
};

/* qcow-cluster.c */
int qcow_pread(struct qimg_image *node, uint64_t off, size_t len, void *buf,
               struct qimg_error *err);
int qcow_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                const void *buf, struct qimg_error *err);
int qcow_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                      struct qimg_extent *ext, struct qimg_error *err);
int qcow_pwrite_compressed(struct qimg_image *node, uint64_t off, size_t len,
                           const void *buf, struct qimg_error *err);
ssize_t qcow_compress_cluster(struct qimg_image *node, const void *buf,
                              size_t len, void *out, struct qimg_error *err);
int qcow_pwrite_compressed_data(struct qimg_image *node, uint64_t off,
                                size_t len, const void *buf, const void *cdata,
                                size_t clen, struct qimg_error *err);
int qcow_flush(struct qimg_image *node, struct qimg_error *err);

/* qcow-create.c */
#define QCOW_N_CREATE_OPTS 6
extern const struct qimg_opt_desc qcow_create_opts[QCOW_N_CREATE_OPTS];
int qcow_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err);

#endif /* QIMG_FMT_QCOW_H */
