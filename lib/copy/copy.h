/*
 * copy.h - internals of the copy engine (lib/copy): zero-run detection and
 * copy offloading.  The engine itself is qimg_copy() in qimg.h.
 */
#ifndef QIMG_COPY_COPY_H
#define QIMG_COPY_COPY_H

#include <stddef.h>
#include <stdint.h>

#include "qimg.h"

#define COPY_SECTOR 512u

/* One piece of a data buffer: to be written, or left as zero. */
struct copy_run {
    uint64_t start;     /* byte offset in the buffer */
    uint64_t len;       /* bytes */
    bool data;          /* false: reads as zero, need not be written */
};

/*
 * Split len bytes of buf, which land at target offset dst, into data runs
 * and zero runs the way qemu-img convert does, so that the targets of both
 * tools end up with the same holes:
 *  - the buffer is looked at in 512-byte sectors;
 *  - a zero run that ends off an `align_sectors` boundary is shortened to
 *    the boundary, or taken as data when it is shorter than that overhang;
 *    a data run is extended to the next boundary;
 *  - inside data, zero runs shorter than min_sectors stay data.
 * Returns the number of runs written to runs (at most max; the buffer
 * needs at most len / 512 + 2).
 */
size_t copy_scan(const uint8_t *buf, uint64_t len, uint64_t dst,
                 uint32_t min_sectors, uint32_t align_sectors,
                 struct copy_run *runs, size_t max);

/* Copy offloading with copy_file_range between the files under raw
 * images.  Thread-safe. */
struct copy_offload;

struct copy_offload *copy_offload_new(void);
void copy_offload_free(struct copy_offload *o);
/*
 * Copy len guest bytes from src at soff to dst at doff without passing
 * them through memory.  Returns 0, or a negative errno when this range
 * cannot be offloaded (the caller then reads and writes instead).
 */
int copy_offload_range(struct copy_offload *o, struct qimg_image *src,
                       uint64_t soff, struct qimg_image *dst, uint64_t doff,
                       uint64_t len);

#endif /* QIMG_COPY_COPY_H */
