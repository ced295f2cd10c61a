/*
 * rmw.c - requests widened to whole units for drivers that work in units
 * (encrypted 512-byte sectors): see qimg_rmw_pread in block.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

static bool unaligned(uint64_t off, size_t len, uint32_t align)
{
    return (off % align) || (len % align);
}

int qimg_rmw_pread(struct qimg_image *node, uint64_t off, size_t len,
                   void *buf, uint32_t align, qimg_unit_pread_fn pread,
                   struct qimg_error *err)
{
    uint64_t a0 = off - off % align, a1 = 0;
    uint8_t *bounce;
    int ret;

    if (!unaligned(off, len, align))
        return pread(node, off, len, buf, err);
    if (!qimg_align_up(off + len, align, &a1))
        return qimg_error_set(err, -EINVAL, "Request too large");
    bounce = malloc(a1 - a0);
    if (!bounce)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = pread(node, a0, a1 - a0, bounce, err);
    if (!ret)
        memcpy(buf, bounce + (off - a0), len);
    free(bounce);
    return ret;
}

int qimg_rmw_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                    const void *buf, uint32_t align, pthread_mutex_t *lock,
                    qimg_unit_pread_fn pread, qimg_unit_pwrite_fn pwrite,
                    struct qimg_error *err)
{
    uint64_t a0 = off - off % align, a1 = 0;
    uint8_t *bounce;
    size_t n;
    int ret = 0;

    if (!unaligned(off, len, align))
        return pwrite(node, off, len, buf, err);
    if (!qimg_align_up(off + len, align, &a1))
        return qimg_error_set(err, -EINVAL, "Request too large");
    n = (size_t)(a1 - a0);
    bounce = malloc(n);
    if (!bounce)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_lock(lock);
    /* the head unit, and the tail one unless it is the same */
    if (off != a0)
        ret = pread(node, a0, align, bounce, err);
    if (!ret && off + len != a1 && (n > align || off == a0))
        ret = pread(node, a1 - align, align, bounce + n - align, err);
    if (!ret) {
        memcpy(bounce + (off - a0), buf, len);
        ret = pwrite(node, a0, n, bounce, err);
    }
    pthread_mutex_unlock(lock);
    free(bounce);
    return ret;
}
