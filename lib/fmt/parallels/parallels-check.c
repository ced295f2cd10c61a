/*
 * parallels-check.c - check and repair of Parallels images, as QEMU 7.2
 * does them: an image left in use is a corruption (repaired by the
 * writable open's close), a BAT entry past the end of the file is one
 * (cleared when repairing errors), and the file past the last cluster is
 * leaked space (cut when repairing leaks).  Problems are reported line by
 * line with QEMU's wording.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"
#include "fmt/parallels/parallels.h"

static void report(struct qimg_check *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void report(struct qimg_check *res, const char *fmt, ...)
{
    char line[256];
    va_list ap;

    if (!res->report)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    res->report(res->opaque, line);
}

/* Walk the BAT: counters, and clusters outside the file. */
static bool check_bat(struct parallels_state *s, unsigned fix, int64_t size,
                      struct qimg_check *res, int64_t *high)
{
    const char *what = (fix & QIMG_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR";
    int64_t prev = 0;
    bool changed = false;

    *high = 0;
    for (uint64_t i = 0; i < s->bat.n; i++) {
        int64_t off = (int64_t)parallels_cluster_offset(s, i);

        if (!off) {
            prev = 0;
            continue;
        }
        if (off > size) {
            report(res, "%s cluster %" PRIu64 " is outside image", what, i);
            res->corruptions++;
            if (fix & QIMG_CHECK_FIX_ERRORS) {
                prev = 0;
                qimg_table_set(&s->bat, i, 0);
                res->corruptions_fixed++;
                changed = true;
                continue;
            }
        }
        res->allocated_clusters++;
        if (off > *high)
            *high = off;
        if (prev && prev + (int64_t)s->cluster_size != off)
            res->fragmented_clusters++;
        prev = off;
    }
    return changed;
}

int parallels_check(struct qimg_image *node, unsigned fix,
                    struct qimg_check *res, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    int64_t size = node->file->ops->get_size(node->file), high;
    int ret = 0;

    if (size < 0) {
        res->check_errors++;
        return qimg_error_set(err, (int)size, "%s", strerror((int)-size));
    }
    size = (size + 511) & ~511ll;   /* QEMU sees the file in sectors */
    pthread_mutex_lock(&node->lock);
    if (s->header_unclean) {
        report(res, "%s image was not closed correctly",
               (fix & QIMG_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR");
        res->corruptions++;
        if (fix & QIMG_CHECK_FIX_ERRORS) {
            /* The close of this writable open clears the flag. */
            res->corruptions_fixed++;
            s->header_unclean = false;
        }
    }
    res->total_clusters = (int64_t)s->bat.n;
    if (check_bat(s, fix, size, res, &high)) {
        ret = qimg_table_store_all(&s->bat, err);
        if (!ret)
            ret = node->file->ops->flush(node->file, err);
        if (ret < 0) {
            res->check_errors++;
            goto out;
        }
    }
    res->image_end_offset = high + s->cluster_size;
    if (size > res->image_end_offset) {
        int64_t count = (int64_t)qimg_div_round_up(
            (uint64_t)(size - res->image_end_offset), s->cluster_size);
        report(res, "%s space leaked at the end of the image %" PRId64,
               (fix & QIMG_CHECK_FIX_LEAKS) ? "Repairing" : "ERROR",
               size - res->image_end_offset);
        res->leaks += (int)count;
        if (fix & QIMG_CHECK_FIX_LEAKS) {
            struct qimg_error terr = {0};
            ret = node->file->ops->truncate(node->file,
                                            (uint64_t)res->image_end_offset,
                                            QIMG_PREALLOC_OFF, &terr);
            if (ret < 0) {
                qimg_message(QIMG_MSG_ERROR, "%s", terr.msg);
                res->check_errors++;
                goto out;
            }
            res->leaks_fixed += (int)count;
        }
    }
out:
    pthread_mutex_unlock(&node->lock);
    return ret;
}
