/*
 * raw.c - the raw format: guest bytes stored as they are, optionally in a
 * window [offset, offset+size) of the file (the "offset" and "size" open
 * options of QEMU's raw driver).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

struct raw_state {
    uint64_t offset;     /* start of the guest window in the file */
    bool fixed_size;     /* "size" given: the window does not follow the file */
};

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1;   /* anything can be raw; every real format scores higher */
}

static int raw_open(struct qimg_image *node, const struct qimg_opts *opts,
                    struct qimg_error *err)
{
    struct raw_state *s = node->state;
    int64_t file_size = node->file->ops->get_size(node->file);
    uint64_t size;
    int ret;

    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (strcmp(k, "offset") && strcmp(k, "size"))
            return qimg_error_set(err, -EINVAL, "Block format 'raw' does not "
                                  "support the option '%s'", k);
    }
    if (file_size < 0)
        return qimg_error_set(err, (int)file_size, "Could not get the size of "
                              "the file: %s", strerror((int)-file_size));
    ret = qimg_opts_get_size(opts, "offset", 0, &s->offset, err);
    if (ret < 0)
        return ret;
    s->fixed_size = qimg_opts_get(opts, "size") != NULL;
    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (ret < 0)
        return ret;
    if (s->offset > (uint64_t)file_size)
        return qimg_error_set(err, -EINVAL, "Offset (%llu) cannot be greater "
                              "than size of the containing file (%lld)",
                              (unsigned long long)s->offset,
                              (long long)file_size);
    if (!s->fixed_size) {
        /* QEMU sees files in whole 512-byte sectors: the tail reads as
         * zeroes up to the next sector boundary. */
        size = (uint64_t)file_size - s->offset;
        if (!qimg_align_up(size, 512, &size))
            return qimg_error_set(err, -EFBIG, "Image size too large");
    }
    if (s->fixed_size && !qimg_range_ok(s->offset, size, (uint64_t)file_size))
        return qimg_error_set(err, -EINVAL, "The sum of offset (%llu) and "
                              "size (%llu) has to be smaller or equal to the "
                              " actual size of the containing file (%lld)",
                              (unsigned long long)s->offset,
                              (unsigned long long)size, (long long)file_size);
    if (s->fixed_size && size % 512)
        return qimg_error_set(err, -EINVAL, "Specified size is not multiple "
                              "of 512");
    node->size = size;
    return 0;
}

static void raw_close(struct qimg_image *node)
{
}

static int raw_create(const char *filename, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    return qimg_storage_create_name(filename, opts, err);
}

static int raw_pread(struct qimg_image *node, uint64_t off, size_t len,
                     void *buf, struct qimg_error *err)
{
    struct raw_state *s = node->state;
    /* QEMU's raw format raises read_aio before each read, so blkdebug
     * rules on that event apply to raw images too. */
    qimg_storage_event(node->file, QIMG_EV_READ_AIO);
    return node->file->ops->pread(node->file, s->offset + off, len, buf, err);
}

/*
 * When the format was guessed, a write must not turn sector 0 into
 * something that probes as another format (a guest could otherwise make
 * the host open its disk as, say, qcow2 with a backing file of its
 * choosing).  QEMU refuses such writes the same way.
 */
static int check_probed_write(struct qimg_image *node, uint64_t off, size_t len,
                              const void *buf, struct qimg_error *err)
{
    struct raw_state *s = node->state;
    uint8_t sector[512];
    int ret;

    if (!node->probed_raw || off >= sizeof(sector) || !len)
        return 0;
    ret = node->file->ops->pread(node->file, s->offset, sizeof(sector), sector,
                                 err);
    if (ret < 0)
        return ret;
    memcpy(sector + off, buf, QIMG_MIN(len, sizeof(sector) - (size_t)off));
    for (size_t i = 0; i < qimg_n_formats; i++) {
        const struct qimg_format *f = qimg_formats[i];
        if (!f->is_raw && f->probe && f->probe(sector, sizeof(sector), NULL) > 1)
            return qimg_error_set(err, -EPERM, "Operation not permitted");
    }
    return 0;
}

static int raw_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                      const void *buf, struct qimg_error *err)
{
    struct raw_state *s = node->state;
    int ret = check_probed_write(node, off, len, buf, err);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, QIMG_EV_WRITE_AIO);
    return node->file->ops->pwrite(node->file, s->offset + off, len, buf, err);
}

static int raw_pwrite_zeroes(struct qimg_image *node, uint64_t off,
                             uint64_t len, unsigned flags,
                             struct qimg_error *err)
{
    struct raw_state *s = node->state;
    if (!node->file->ops->pwrite_zeroes)
        return qimg_error_set(err, -ENOTSUP, "Zeroing not supported");
    return node->file->ops->pwrite_zeroes(node->file, s->offset + off, len,
                                          flags, err);
}

static int raw_discard(struct qimg_image *node, uint64_t off, uint64_t len,
                       struct qimg_error *err)
{
    struct raw_state *s = node->state;
    if (!node->file->ops->discard)
        return 0;
    return node->file->ops->discard(node->file, s->offset + off, len, err);
}

static int raw_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static int raw_block_status(struct qimg_image *node, uint64_t off, uint64_t len,
                            struct qimg_extent *ext, struct qimg_error *err)
{
    struct raw_state *s = node->state;
    int ret;

    if (!node->file->ops->block_status) {
        ext->length = len;
        ext->flags = QIMG_BS_DATA;
        ext->host_offset = s->offset + off;
        ext->host_file = node->file->filename;
    } else {
        ret = node->file->ops->block_status(node->file, s->offset + off, len,
                                            ext, err);
        if (ret < 0)
            return ret;
    }
    /* Raw passes its file's answer on; what the file calls neither data
     * nor zero (null-co) is not present. */
    if (!(ext->flags & (QIMG_BS_DATA | QIMG_BS_ZERO)))
        return 0;
    ext->flags |= QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID;
    return 0;
}

/* QEMU's largest image length: INT64_MAX aligned down to 1 GiB. */
#define RAW_MAX_LENGTH ((uint64_t)INT64_MAX - ((1u << 30) - 1))

static int raw_truncate(struct qimg_image *node, uint64_t size, bool exact,
                        enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct raw_state *s = node->state;
    uint64_t end;
    int ret;

    /* A window of fixed size cannot move; one at an offset just grows. */
    if (s->fixed_size)
        return qimg_error_set(err, -ENOTSUP, "Cannot resize fixed-size raw "
                              "disks");
    if (qimg_add_overflow(s->offset, size, &end) || end > INT64_MAX)
        return qimg_error_set(err, -EINVAL, "Disk size too large for the "
                              "chosen offset");
    /* The file is checked again as QEMU's block layer checks each node. */
    if (end > RAW_MAX_LENGTH)
        return qimg_error_set(err, -EINVAL, "offset(%llu) exceeds "
                              "maximum(%llu)", (unsigned long long)end,
                              (unsigned long long)RAW_MAX_LENGTH);
    if (prealloc == QIMG_PREALLOC_METADATA)
        return qimg_error_set(err, -ENOTSUP, "Unsupported preallocation "
                              "mode: metadata");
    ret = qimg_storage_truncate(node->file, end, exact, prealloc, err);
    if (ret < 0)
        return ret;
    node->size = size;
    return 0;
}

static int raw_measure(const struct qimg_opts *opts, struct qimg_image *src,
                       uint64_t size, struct qimg_measure *out,
                       struct qimg_error *err)
{
    uint64_t bytes = src ? qimg_image_size(src) : size;
    if (!qimg_align_up(bytes, 512, &bytes))
        return qimg_error_set(err, -EFBIG, "Image size too large");
    out->required = bytes;
    out->fully_allocated = bytes;
    return 0;
}

static const struct qimg_opt_desc raw_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
};

/* Over a format node (json:{"driver": "raw", "file": {"driver":
 * "qcow2", ...}}) QEMU shows that node's cluster size. */
static int raw_get_info(struct qimg_image *node, struct qimg_info *info,
                        struct qimg_error *err)
{
    struct qimg_info inner;

    if (!node->file->node) {
        if (node->file->ops->cluster_size)
            info->cluster_size = node->file->ops->cluster_size(node->file);
        return 0;
    }
    if (qimg_get_info(node->file->node, &inner, err) == 0)
        info->cluster_size = inner.cluster_size;
    qimg_info_release(&inner);
    return 0;
}

/* A window of the file is not the file: such a node is named json:. */
static const char *const raw_strong_opts[] = {"offset", "size", NULL};

const struct qimg_format qimg_format_raw = {
    .name = "raw",
    .strong_opts = raw_strong_opts,
    .description = "raw image",
    .state_size = sizeof(struct raw_state),
    .create_opts = raw_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(raw_create_opts),
    .is_raw = true,
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .discard = raw_discard,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .truncate = raw_truncate,
    .measure = raw_measure,
    .get_info = raw_get_info,
    .snapshot_via_file = true,
};
