/*
 * inflate.h - whole-buffer zlib decompression for the read-only compressed
 * formats (dmg, cloop), with the acceptance rule QEMU applies: the stream
 * must end and produce exactly the expected number of bytes; input after
 * the end of the stream is ignored.  Thread-safe (one decompressor per
 * thread, kept for the thread's life).
 */
#ifndef QIMG_CORE_INFLATE_H
#define QIMG_CORE_INFLATE_H

#include <stddef.h>
#include <stdint.h>

/* A zlib stream (RFC 1950) into exactly out_len bytes: 0, -EIO for bad or
 * short data, -ENOMEM. */
int qimg_inflate_zlib(const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t out_len);

#endif /* QIMG_CORE_INFLATE_H */
