/*
 * protocol.c - the "format" of nodes opened at the protocol level
 * (driver=file, -f host_device, null-co://, nbd://... with -f nbd): every
 * operation goes straight to the storage, and the node shows the
 * storage's driver name as its format, as QEMU shows a protocol node.
 */
#include <errno.h>
#include <string.h>

#include "core/block.h"

static int proto_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    (void)node;
    (void)opts;
    (void)err;
    return 0;
}

static void proto_close(struct qimg_image *node)
{
    (void)node;
}

static int proto_pread(struct qimg_image *node, uint64_t off, size_t len,
                       void *buf, struct qimg_error *err)
{
    return node->file->ops->pread(node->file, off, len, buf, err);
}

static int proto_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                        const void *buf, struct qimg_error *err)
{
    return node->file->ops->pwrite(node->file, off, len, buf, err);
}

static int proto_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    if (!st->ops->pwrite_zeroes)
        return -ENOTSUP;
    return st->ops->pwrite_zeroes(st, off, len, flags, err);
}

static int proto_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                         struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    return st->ops->discard ? st->ops->discard(st, off, len, err) : 0;
}

static int proto_flush(struct qimg_image *node, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    return st->ops->flush ? st->ops->flush(st, err) : 0;
}

/* What the storage says, at offset = host offset (QEMU's protocol nodes
 * report themselves as the data's location). */
static int proto_block_status(struct qimg_image *node, uint64_t off,
                              uint64_t len, struct qimg_extent *ext,
                              struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    int ret;

    memset(ext, 0, sizeof(*ext));
    if (!st->ops->block_status) {
        ext->length = len;
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID;
    } else {
        ret = st->ops->block_status(st, off, len, ext, err);
        if (ret < 0)
            return ret;
        /* Neither data nor zero (null-co): not present, no offset. */
        if (!(ext->flags & (QIMG_BS_DATA | QIMG_BS_ZERO)))
            return 0;
        ext->flags |= QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID;
    }
    ext->host_offset = off;
    /* A storage may name itself (a network storage's json:{...} name). */
    if (!ext->host_file)
        ext->host_file = st->filename;
    return 0;
}

static int proto_truncate(struct qimg_image *node, uint64_t size, bool exact,
                          enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    int ret;

    ret = qimg_storage_truncate(st, size, exact, prealloc, err);
    if (ret == 0)
        node->size = size;
    return ret;
}

const struct qimg_format qimg_format_protocol = {
    .name = "protocol",
    .description = "a storage used directly",
    .open = proto_open,
    .close = proto_close,
    .pread = proto_pread,
    .pwrite = proto_pwrite,
    .pwrite_zeroes = proto_zeroes,
    .discard = proto_discard,
    .flush = proto_flush,
    .block_status = proto_block_status,
    .truncate = proto_truncate,
    /* the node is its storage: its snapshots (rbd's) are the node's */
    .snapshot_via_file = true,
};
