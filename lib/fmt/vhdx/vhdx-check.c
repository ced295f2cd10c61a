/*
 * vhdx-check.c - qemu-img check of a vhdx image, as QEMU 7.2 does it: a
 * log replayed by the (writable) open counts as one fixed corruption, and
 * every fully present BAT entry outside the file or overlapping a region
 * is a corruption, reported on its own line.
 */
#include "fmt/vhdx/vhdx.h"

int vhdx_check(struct qimg_image *node, unsigned fix, struct qimg_check *res,
               struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct qimg_error ignored;

    (void)fix;      /* repairing is the log replay of the writable open */
    (void)err;
    if (s->log_replayed)
        res->corruptions_fixed++;
    /* The result only counts: QEMU's check reports no failure either. */
    vhdx_check_bat(node, &res->corruptions, &ignored);
    return 0;
}
