/*
 * nbd.h - the NBD storage over libnbd (who does what):
 *   nbd.c      names (nbd://, nbd+unix://, nbd:host:port:exportname=),
 *              options (server.*, export, x-dirty-bitmap, ...) and QEMU's
 *              checks and messages, the storage tables
 *   nbd-io.c   the connections: a pool of libnbd handles, each driven by
 *              its own I/O thread, so that requests from every copy
 *              worker are in flight at once (several connections when
 *              the server advertises multi-conn)
 */
#ifndef QIMG_PROTO_NBD_H
#define QIMG_PROTO_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/block.h"
#include "proto/net.h"

/* Connections opened to a server that advertises multi-conn (qemu-nbd
 * -e 8 does, writable or not) for reads.  Reading 1 GiB over
 * loopback (docs/PERFORMANCE.md, session 8), qemu-nbd took 1.08 s on one
 * connection, 0.70 on two, 0.77 on four; nbdkit's memory plugin 0.60,
 * 0.72 and 0.85 s (each of its connections has its own threads, and its
 * CPU time doubled from one to two): two is the best sum. */
#define NBD_MAX_CONNS 2
/* Largest request sent (QEMU's NBD_MAX_BUFFER_SIZE); larger ones are
 * split and the pieces sent together. */
#define NBD_MAX_REQUEST (32u << 20)
/* Longest export or meta context name NBD can carry (NBD_MAX_STRING_SIZE). */
#define NBD_MAX_STRING 4096
/* open-timeout (QEMU: any uint32 of seconds) capped so that its
 * milliseconds fit the handshake's poll() int: about 23 days. */
#define NBD_MAX_OPEN_TIMEOUT 2000000u
/* Extents of one block status reply kept to answer the next questions
 * without a round trip. */
#define NBD_EXTENT_CACHE 64
/* How long an extra connection may take to be accepted before the pool
 * does without it (a server that accepts one client at a time). */
#define NBD_EXTRA_CONNECT_MS 2000

struct nbd_pool;

/* What a connection needs: the address, export and meta context. */
struct nbd_target {
    struct net_addr addr;
    char export_name[NBD_MAX_STRING + 1];
    bool has_export;
    /* "base:allocation" or the x-dirty-bitmap context. */
    char context[NBD_MAX_STRING + 1];
    /* open-timeout: the first handshake's limit in seconds (0: none). */
    unsigned open_timeout;
};

/* What the server said about the export. */
struct nbd_export_info {
    uint64_t size;
    bool read_only, can_flush, can_zero, can_trim, can_fast_zero;
    bool multi_conn;
    bool has_context;       /* the meta context was negotiated */
    uint32_t min_block, max_block;
};

/* Connect (one connection; more come on demand with multi-conn). */
int nbd_pool_open(struct nbd_pool **out, const struct nbd_target *t,
                  struct nbd_export_info *info, struct qimg_error *err);
void nbd_pool_close(struct nbd_pool *p);

int nbd_pool_pread(struct nbd_pool *p, uint64_t off, size_t len, void *buf,
                   struct qimg_error *err);
int nbd_pool_pwrite(struct nbd_pool *p, uint64_t off, size_t len,
                    const void *buf, struct qimg_error *err);
/* may_unmap: the zeroes may become a hole (NBD's default). */
int nbd_pool_zero(struct nbd_pool *p, uint64_t off, uint64_t len,
                  bool may_unmap, struct qimg_error *err);
int nbd_pool_trim(struct nbd_pool *p, uint64_t off, uint64_t len,
                  struct qimg_error *err);
int nbd_pool_flush(struct nbd_pool *p, struct qimg_error *err);
/*
 * Block status of the negotiated context at off: up to max extents
 * (length, flags) starting at off, covering at most len bytes.  Returns
 * the number of extents (at least 1) or a negative errno.
 */
int nbd_pool_block_status(struct nbd_pool *p, uint64_t off, uint64_t len,
                          uint64_t *lengths, uint32_t *flags, int max,
                          struct qimg_error *err);

#endif /* QIMG_PROTO_NBD_H */
