/*
 * vmdk-check.c - qemu-img check for vmdk: QEMU 7.2 walks every grain of
 * the guest and stops at the first one whose mapping is broken or points
 * past the end of its extent file, reporting it on stderr; there is no
 * repair.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

static void report(struct qimg_check *res, const char *fmt, uint64_t sector)
{
    char line[128];
    snprintf(line, sizeof(line), fmt, (int64_t)sector);
    if (res->report)
        res->report(res->opaque, line);
}

int vmdk_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
               struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint64_t total = node->size / VMDK_SECTOR, sector = 0;
    struct vmdk_lookup l;
    int ret = 0;

    if (fix)
        return qimg_error_set(err, -ENOTSUP, "This image format does not "
                              "support checks");
    while (sector < total) {
        struct vmdk_extent *e = vmdk_find_extent(s, sector);
        if (!e) {
            report(res, "ERROR: could not find extent for sector %" PRId64,
                   sector);
            ret = -EINVAL;
            break;
        }
        pthread_mutex_lock(&node->lock);
        ret = vmdk_lookup(node, e, sector - e->start, &l, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
        if (l.state == VMDK_GRAIN_ERROR) {
            report(res, "ERROR: could not get cluster_offset for sector %"
                   PRId64, sector);
            /* QEMU returns its internal VMDK_ERROR, -1 */
            ret = -EPERM;
            break;
        }
        if (l.state == VMDK_GRAIN_DATA) {
            int64_t len = e->file->ops->get_size(e->file);
            if (len < 0) {
                report(res, "ERROR: could not get extent file length for "
                       "sector %" PRId64, sector);
                ret = (int)len;
                break;
            }
            len = (len + VMDK_SECTOR - 1) / VMDK_SECTOR * VMDK_SECTOR;
            if (l.host >= (uint64_t)len) {
                report(res, "ERROR: cluster offset for sector %" PRId64
                       " points after EOF", sector);
                ret = -EINVAL;
                break;
            }
        }
        /* QEMU steps by the grain from wherever it is; grains of a
         * directory entry without a table are all unallocated: jump */
        if (l.state == VMDK_GRAIN_UNALLOC && l.l2_sector == 0 &&
            e->l1_entry_sectors == e->l2_size * e->grain_sectors) {
            uint64_t rel = sector - e->start;
            uint64_t end = e->start + (rel / e->l1_entry_sectors + 1) *
                                          (uint64_t)e->l1_entry_sectors;
            sector += qimg_div_round_up(end - sector, e->grain_sectors) *
                      e->grain_sectors;
        } else {
            sector += e->grain_sectors;
        }
    }
    if (!ret)
        return 0;
    res->corruptions++;
    return qimg_error_set(err, ret, "%s", strerror(-ret));
}
