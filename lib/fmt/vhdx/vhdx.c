/*
 * vhdx.c - the vhdx format (Hyper-V): probe, open in QEMU 7.2's order
 * (file signature, headers, log replay, region table, metadata, BAT and
 * its check), reads and writes through the BAT, info, the driver table.
 *
 * As in QEMU 7.2: differencing images (a parent locator) are refused,
 * there is no block status (everything reads as allocated data), no
 * resize, discard or zeroing of its own, and 512-byte logical sectors
 * only.  Messages for failures QEMU reports by errno alone are "Could not
 * open 'FILE': <strerror>", as its block layer words them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && !memcmp(buf, VHDX_FILE_SIGNATURE, 8) ? 100 : 0;
}

static void vhdx_close(struct qimg_image *node)
{
    struct vhdx_state *s = node->state;

    if (s)
        qimg_table_release(&s->bat);
}

/* A failure QEMU reports by its errno only. */
static int open_error(struct qimg_image *node, int ret,
                      struct qimg_error *err)
{
    return qimg_error_set(err, ret, "Could not open '%s': %s", node->filename,
                          strerror(-ret));
}

static int vhdx_open(struct qimg_image *node, const struct qimg_opts *opts,
                     struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t sig[8];
    int64_t fsize;
    int ret;

    if (qimg_opts_count(opts))
        return qimg_error_set(err, -EINVAL, "Block format 'vhdx' does not "
                              "support the option '%s'", qimg_opts_key(opts, 0));
    s->first_visible_write = true;
    ret = node->file->ops->pread(node->file, 0, sizeof(sig), sig, err);
    if (ret == 0 && memcmp(sig, VHDX_FILE_SIGNATURE, 8))
        ret = -EINVAL;
    if (ret < 0)
        return open_error(node, ret, err);
    /* file_write_guid of every header update this session makes */
    vhdx_guid_generate(s->session_guid);
    ret = vhdx_parse_headers(node, err);
    if (ret < 0)
        return ret;
    qimg_error_clear(err);
    ret = vhdx_parse_log(node, err);
    if (ret == 0)
        ret = vhdx_parse_region_table(node, err);
    if (ret == 0)
        ret = vhdx_parse_metadata(node, err);
    if (ret == 0)
        ret = vhdx_load_bat(node, err);
    /* Read-only with a log to replay, and qimg's own limits (EFBIG,
     * ELOOP), have their own words; QEMU gives an errno for the rest. */
    if (ret == -EPERM || ret == -EFBIG || ret == -ELOOP) {
        vhdx_close(node);
        return ret;
    }
    if (ret < 0)
        goto fail;
    node->size = (s->virtual_size >> 9) << 9;
    if (!(node->flags & QIMG_OPEN_CHECK)) {
        ret = vhdx_check_bat(node, NULL, err);
        if (ret < 0)
            goto fail;
    }
    fsize = node->file->ops->get_size(node->file);
    if (fsize < 0) {
        ret = (int)fsize;
        goto fail;
    }
    s->alloc.end = (uint64_t)fsize;
    s->alloc.max = QIMG_MAX_LENGTH;
    vhdx_write_ops_init(s);
    return 0;
fail:
    vhdx_close(node);
    return open_error(node, ret, err);
}

static int vhdx_pread(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    return qimg_table_pread(node, off, len, buf, vhdx_map_read, err);
}

static int vhdx_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    int ret;

    /* The data write GUID changes before the first guest-visible write. */
    pthread_mutex_lock(&node->lock);
    ret = vhdx_user_visible_write(node, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    return qimg_table_pwrite(node, off, len, buf, &s->write_ops, err);
}

static int vhdx_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static int vhdx_get_info(struct qimg_image *node, struct qimg_info *info,
                         struct qimg_error *err)
{
    struct vhdx_state *s = node->state;

    (void)err;
    info->cluster_size = s->block_size;
    return 0;
}

const struct qimg_format qimg_format_vhdx = {
    .name = "vhdx",
    .description = "Hyper-V virtual hard disk (VHDX)",
    .state_size = sizeof(struct vhdx_state),
    .create_opts = vhdx_create_opts,
    .n_create_opts = VHDX_N_CREATE_OPTS,
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .create = vhdx_create,
    .pread = vhdx_pread,
    .pwrite = vhdx_pwrite,
    .flush = vhdx_flush,
    .get_info = vhdx_get_info,
    .check = vhdx_check,
    .zero_hint = vhdx_zero_hint,
};
