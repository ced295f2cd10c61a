/*
 * block.c - the image graph: opening a format node over its storage,
 * probing, the backing chain, and the thread-safe request entry points that
 * check bounds once before calling a driver.
 */
#include <errno.h>
#include <stdarg.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/block.h"
#include "core/jsonopts.h"
#include "core/util.h"

void qimg_close(struct qimg_image *img)
{
    if (!img)
        return;
    qimg_close(img->backing);
    if (img->state && img->fmt && img->fmt->close)
        img->fmt->close(img);
    qimg_storage_close(img->file);
    pthread_mutex_destroy(&img->lock);
    free(img->state);
    free(img->filename);
    free(img->name);
    qimg_opts_free(img->options);
    free(img);
}

const char *qimg_image_filename(const struct qimg_image *img)
{
    return img->name ? img->name : img->filename;
}

bool qimg_image_has_zero_init(const struct qimg_image *img)
{
    return !img->fmt->has_zero_init ||
           img->fmt->has_zero_init((struct qimg_image *)img);
}

const char *qimg_image_format(const struct qimg_image *img)
{
    if (img->fmt == &qimg_format_protocol)
        return img->file->ops->name;
    return img->fmt->name;
}

const char *qimg_image_file_name(const struct qimg_image *img)
{
    return img->file ? img->file->filename : img->filename;
}

const char *qimg_image_storage_name(const struct qimg_image *img)
{
    return img->file && img->file->name ? img->file->name
                                        : qimg_image_filename(img);
}

uint64_t qimg_image_size(const struct qimg_image *img)
{
    return img->size;
}

struct qimg_image *qimg_image_backing(const struct qimg_image *img)
{
    return img->backing;
}

bool qimg_image_probed_raw(const struct qimg_image *img)
{
    return img->probed_raw;
}

bool qimg_image_read_only(const struct qimg_image *img)
{
    return img->read_only;
}

uint32_t qimg_image_cluster_size(const struct qimg_image *img)
{
    struct qimg_info info;
    struct qimg_error err;
    uint32_t cs = 0;
    if (qimg_get_info((struct qimg_image *)img, &info, &err) == 0)
        cs = info.cluster_size;
    qimg_info_release(&info);
    return cs;
}

/* ---- request entry points ------------------------------------------------ */

static int check_request(struct qimg_image *img, uint64_t off, uint64_t len,
                         bool write, struct qimg_error *err)
{
    if (write && img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    if (!qimg_range_ok(off, len, img->size))
        return qimg_error_set(err, -EIO, "Request at offset %llu of %llu bytes "
                              "is beyond the end of the image",
                              (unsigned long long)off, (unsigned long long)len);
    return 0;
}

int qimg_pread(struct qimg_image *img, uint64_t off, size_t len, void *buf,
               struct qimg_error *err)
{
    int ret = check_request(img, off, len, false, err);
    uint8_t *p = buf;

    while (!ret && len) {
        size_t n = QIMG_MIN(len, (size_t)QIMG_MAX_REQUEST);
        ret = img->fmt->pread(img, off, n, p, err);
        off += n;
        p += n;
        len -= n;
    }
    return ret;
}

int qimg_pwrite(struct qimg_image *img, uint64_t off, size_t len,
                const void *buf, struct qimg_error *err)
{
    int ret = check_request(img, off, len, true, err);
    const uint8_t *p = buf;

    if (!ret && !img->fmt->pwrite)
        return qimg_error_set(err, -ENOTSUP, "Driver '%s' does not support "
                              "writing", img->fmt->name);
    while (!ret && len) {
        size_t n = QIMG_MIN(len, (size_t)QIMG_MAX_REQUEST);
        ret = img->fmt->pwrite(img, off, n, p, err);
        off += n;
        p += n;
        len -= n;
    }
    return ret;
}

int qimg_pwrite_compressed(struct qimg_image *img, uint64_t off, size_t len,
                           const void *buf, struct qimg_error *err)
{
    /* len 0 marks the end of a compressed stream (off ignored). */
    int ret = check_request(img, len ? off : 0, len, true, err);
    if (ret < 0)
        return ret;
    if (!img->fmt->pwrite_compressed)
        return qimg_error_set(err, -ENOTSUP, "Compression is not supported for "
                              "this image format");
    return img->fmt->pwrite_compressed(img, off, len, buf, err);
}

ssize_t qimg_compress_cluster(struct qimg_image *img, const void *buf,
                              size_t len, void *out, struct qimg_error *err)
{
    if (!img->fmt->compress_cluster || !img->fmt->pwrite_compressed_data)
        return -ENOTSUP;
    return img->fmt->compress_cluster(img, buf, len, out, err);
}

int qimg_pwrite_compressed_data(struct qimg_image *img, uint64_t off,
                                size_t len, const void *buf, const void *cdata,
                                size_t clen, struct qimg_error *err)
{
    int ret = check_request(img, off, len, true, err);
    if (ret < 0)
        return ret;
    if (!img->fmt->pwrite_compressed_data)
        return qimg_error_set(err, -ENOTSUP, "Compression is not supported for "
                              "this image format");
    return img->fmt->pwrite_compressed_data(img, off, len, buf, cdata, clen,
                                            err);
}

int qimg_pwrite_zeroes(struct qimg_image *img, uint64_t off, uint64_t len,
                       unsigned flags, struct qimg_error *err)
{
    int ret = check_request(img, off, len, true, err);
    if (ret < 0 || !len)
        return ret;
    if (img->fmt->pwrite_zeroes) {
        ret = img->fmt->pwrite_zeroes(img, off, len, flags, err);
        if (ret != -ENOTSUP || (flags & QIMG_ZERO_NO_FALLBACK))
            return ret;
    } else if (flags & QIMG_ZERO_NO_FALLBACK) {
        return qimg_error_set(err, -ENOTSUP, "Efficient zeroing unsupported");
    }
    /* Fallback: write a zeroed buffer. */
    ret = 0;
    size_t bufsz = (size_t)QIMG_MIN(len, (uint64_t)(1u << 20));
    void *zero = calloc(1, bufsz);
    if (!zero)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (len && ret >= 0) {
        size_t n = (size_t)QIMG_MIN(len, (uint64_t)bufsz);
        ret = img->fmt->pwrite(img, off, n, zero, err);
        off += n;
        len -= n;
    }
    free(zero);
    return ret < 0 ? ret : 0;
}

int qimg_discard(struct qimg_image *img, uint64_t off, uint64_t len,
                 struct qimg_error *err)
{
    int ret = check_request(img, off, len, true, err);
    if (ret < 0 || !img->fmt->discard)
        return ret;
    return img->fmt->discard(img, off, len, err);
}

int qimg_flush(struct qimg_image *img, struct qimg_error *err)
{
    int ret = 0;
    if (!img->read_only && img->fmt->flush) {
        /* QEMU raises these on the node's primary child (the file; for a
         * protocol node, what is under it). */
        struct qimg_storage *ev = img->fmt == &qimg_format_protocol
                                      ? img->file->child : img->file;
        qimg_storage_event(ev, QIMG_EV_FLUSH_TO_OS);
        qimg_storage_event(ev, QIMG_EV_FLUSH_TO_DISK);
        ret = img->fmt->flush(img, err);
    }
    return ret;
}

int qimg_truncate(struct qimg_image *img, uint64_t size, bool exact,
                  enum qimg_prealloc prealloc, struct qimg_error *err)
{
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    if (!img->fmt->truncate)
        return qimg_error_set(err, -ENOTSUP, "Image format driver does not "
                              "support resize");
    if (size > INT64_MAX)
        return qimg_error_set(err, -EFBIG, "Image size too large");
    uint64_t old = img->size;
    int ret = img->fmt->truncate(img, size, exact, prealloc, err);
    /* As QEMU: a grown area must not show a longer backing file (fully
     * preallocated data already hides it). */
    if (!ret && size > old && img->backing && img->backing->size > old &&
        prealloc != QIMG_PREALLOC_FALLOC && prealloc != QIMG_PREALLOC_FULL)
        ret = qimg_zero_grown(img, old, err);
    return ret;
}

/*
 * A data extent whose host area is a hole in the file reads as zero: when
 * the driver asks for it (QIMG_BS_RECURSE_FILE), ask the storage and narrow
 * the extent to what it answers for, as QEMU's block layer does, so map
 * output matches.  Without the flag QEMU does not look (and the lseek calls
 * would cost more than the rest of a compare or convert).
 */
void qimg_extent_refine(struct qimg_storage *st, struct qimg_extent *ext)
{
    struct qimg_extent fe;
    struct qimg_error err;
    int64_t fsize;

    if (!st || !st->ops->block_status)
        return;
    fsize = st->ops->get_size(st);
    if (fsize >= 0 && ext->host_offset >= (uint64_t)fsize) {
        ext->flags |= QIMG_BS_ZERO;   /* past EOF reads as zero */
        return;
    }
    memset(&fe, 0, sizeof(fe));
    if (st->ops->block_status(st, ext->host_offset, ext->length, &fe, &err) < 0)
        return;   /* extra information only: ignore errors */
    if (fe.length && fe.length < ext->length)
        ext->length = fe.length;
    if (fe.flags & QIMG_BS_ZERO)
        ext->flags |= QIMG_BS_ZERO;
}

static void refine_with_storage(struct qimg_image *img, struct qimg_extent *ext)
{
    struct qimg_storage *st = img->file;
    bool asked = ext->flags & QIMG_BS_RECURSE_FILE;

    ext->flags &= ~QIMG_BS_RECURSE_FILE;
    if (!asked || img->fmt->is_raw || !st ||
        (ext->flags & (QIMG_BS_ZERO | QIMG_BS_COMPRESSED)) ||
        (ext->flags & (QIMG_BS_DATA | QIMG_BS_OFFSET_VALID)) !=
            (QIMG_BS_DATA | QIMG_BS_OFFSET_VALID) ||
        ext->host_file != st->filename)
        return;
    qimg_extent_refine(st, ext);
}

int qimg_block_status(struct qimg_image *img, uint64_t off, uint64_t len,
                      struct qimg_extent *ext, struct qimg_error *err)
{
    int ret;

    memset(ext, 0, sizeof(*ext));
    if (off >= img->size || !len) {
        ext->length = 0;
        return 0;
    }
    len = QIMG_MIN(len, img->size - off);
    if (!img->fmt->block_status) {
        /* Without block status everything is allocated data. */
        ext->length = len;
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED;
        return 0;
    }
    ret = img->fmt->block_status(img, off, len, ext, err);
    if (ret < 0)
        return ret;
    if (!ext->length || ext->length > len)
        ext->length = len;
    ext->depth = 0;
    refine_with_storage(img, ext);
    return 0;
}

int qimg_zero_hint(struct qimg_image *img, uint64_t off, uint64_t len,
                   struct qimg_extent *ext, struct qimg_error *err)
{
    int ret = 0;

    memset(ext, 0, sizeof(*ext));
    len = off < img->size ? QIMG_MIN(len, img->size - off) : 0;
    if (img->fmt->zero_hint && len)
        ret = img->fmt->zero_hint(img, off, len, ext, err);
    if (ret < 0 || !img->fmt->zero_hint) {
        ext->flags = QIMG_BS_DATA;
        ext->length = len;
        return ret;
    }
    if (!ext->length || ext->length > len)
        ext->length = len;
    return 0;
}

int qimg_block_status_chain(struct qimg_image *img, struct qimg_image *base,
                            uint64_t off, uint64_t len,
                            struct qimg_extent *ext, struct qimg_error *err)
{
    uint64_t want = len;
    int depth = 0;

    memset(ext, 0, sizeof(*ext));
    for (struct qimg_image *n = img; n && n != base; n = n->backing, depth++) {
        int ret = qimg_block_status(n, off, want, ext, err);
        if (ret < 0)
            return ret;
        ext->depth = depth;
        if (ext->flags & (QIMG_BS_ALLOCATED | QIMG_BS_DATA | QIMG_BS_ZERO))
            return 0;
        want = ext->length;   /* lower layers answer only for this part */
        /* Unallocated with nothing below, or below a short backing file:
         * reads as zero, decided at this layer. */
        if (!n->backing) {
            if (n->fmt->supports_backing)
                ext->flags |= QIMG_BS_ZERO;
            return 0;
        }
        if (off >= n->backing->size) {
            ext->flags |= QIMG_BS_ZERO;
            return 0;
        }
        want = QIMG_MIN(want, n->backing->size - off);
        ext->length = want;
    }
    /* Reached base: unallocated above it. */
    ext->flags &= ~QIMG_BS_ALLOCATED;
    ext->length = want;
    ext->depth = depth;
    return 0;
}

int qimg_read_backing(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct qimg_image *b = node->backing;
    size_t n = 0;

    if (b && off < b->size) {
        n = (size_t)QIMG_MIN((uint64_t)len, b->size - off);
        int ret = qimg_pread(b, off, n, buf, err);
        if (ret < 0)
            return ret;
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

/* ---- whole-image operations --------------------------------------------- */

int qimg_get_info(struct qimg_image *img, struct qimg_info *info,
                  struct qimg_error *err)
{
    memset(info, 0, sizeof(*info));
    info->virtual_size = img->size;
    info->actual_size = -1;
    info->has_dirty_flag = !img->fmt->no_get_info &&
                           !(img->fmt->is_raw && img->file &&
                             img->file->ops->no_get_info);
    if (img->file && img->file->ops->allocated_size)
        info->actual_size = img->file->ops->allocated_size(img->file);
    snprintf(info->backing_file, sizeof(info->backing_file), "%s",
             img->backing_name);
    snprintf(info->backing_fmt, sizeof(info->backing_fmt), "%s",
             img->backing_fmt);
    if (img->backing_name[0]) {
        char *full = qimg_node_backing_path(img);
        if (full)
            snprintf(info->full_backing_filename,
                     sizeof(info->full_backing_filename), "%s", full);
        free(full);
    }
    if (img->fmt->get_info)
        return img->fmt->get_info(img, info, err);
    return 0;
}

void qimg_info_release(struct qimg_info *info)
{
    free(info->format_specific_json);
    info->format_specific_json = NULL;
}

int qimg_check(struct qimg_image *img, unsigned fix, struct qimg_check *res,
               struct qimg_error *err)
{
    void (*report)(void *, const char *) = res->report;
    void *opaque = res->opaque;

    memset(res, 0, sizeof(*res));
    res->report = report;
    res->opaque = opaque;
    if (!img->fmt->check)
        return qimg_error_set(err, -ENOTSUP, "This image format does not "
                              "support checks");
    return img->fmt->check(img, fix, res, err);
}

int qimg_measure(const char *fmt, const struct qimg_opts *opts,
                 struct qimg_image *src, uint64_t size,
                 struct qimg_measure *out, struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);

    memset(out, 0, sizeof(*out));
    if (!f && !qimg_storage_find(fmt))
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    /* a storage (-O file) is a block driver without measure, as in QEMU */
    if (!f || !f->measure)
        return qimg_error_set(err, -ENOTSUP, "Block driver '%s' does not "
                              "support size measurement", fmt);
    return f->measure(opts, src, size, out, err);
}

int qimg_cache_parse(const char *name, enum qimg_cache *out)
{
    static const struct { const char *name; enum qimg_cache mode; } modes[] = {
        {"writeback", QIMG_CACHE_WRITEBACK}, {"none", QIMG_CACHE_NONE},
        {"off", QIMG_CACHE_NONE}, {"writethrough", QIMG_CACHE_WRITETHROUGH},
        {"directsync", QIMG_CACHE_DIRECTSYNC}, {"unsafe", QIMG_CACHE_UNSAFE},
    };
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(modes); i++) {
        if (!strcmp(name, modes[i].name)) {
            *out = modes[i].mode;
            return 0;
        }
    }
    return -EINVAL;
}

int qimg_prealloc_parse(const char *name, enum qimg_prealloc *out)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(names); i++) {
        if (!strcmp(name, names[i])) {
            *out = (enum qimg_prealloc)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* img's format passes snapshot operations to what is under it. */
static bool passes_snapshots(const struct qimg_image *img)
{
    return !img->fmt->snapshot && img->fmt->snapshot_via_file && img->file;
}

/* The format node whose snapshots img passes on (raw over a qcow2 node),
 * or NULL. */
static struct qimg_image *snapshot_node(struct qimg_image *img)
{
    return passes_snapshots(img) ? img->file->node : NULL;
}

/* The storage whose own snapshots img passes on (raw over rbd), or NULL. */
static struct qimg_storage *snapshot_storage(struct qimg_image *img)
{
    if (!passes_snapshots(img) || img->file->node ||
        !img->file->ops->snapshot_list)
        return NULL;
    return img->file;
}

int qimg_snapshot_list(struct qimg_image *img, struct qimg_snapshot **list,
                       size_t *n, struct qimg_error *err)
{
    struct qimg_storage *st = snapshot_storage(img);

    *list = NULL;
    *n = 0;
    if (snapshot_node(img))
        return qimg_snapshot_list(snapshot_node(img), list, n, err);
    if (st)
        return st->ops->snapshot_list(st, list, n, err);
    if (!img->fmt->snapshot || !img->fmt->snapshot->list)
        return qimg_error_set(err, -ENOTSUP, "Block format '%s' does not support "
                              "internal snapshots", img->fmt->name);
    return img->fmt->snapshot->list(img, list, n, err);
}

int qimg_snapshot_load_tmp(struct qimg_image *img, const char *id,
                           const char *name, struct qimg_error *err)
{
    if (!img->fmt->snapshot || !img->fmt->snapshot->load_tmp)
        return qimg_error_set(err, -ENOTSUP, "Block format '%s' used by device "
                              "'' does not support temporarily loading internal "
                              "snapshots", img->fmt->name);
    return img->fmt->snapshot->load_tmp(img, id, name, err);
}

int qimg_amend(struct qimg_image *img, const struct qimg_opts *opts, bool force,
               void (*progress)(void *opaque, double percent), void *opaque,
               struct qimg_error *err)
{
    if (!img->fmt->amend)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support option amendment", img->fmt->name);
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    return img->fmt->amend(img, opts, force, progress, opaque, err);
}

/* Delete the first snapshot of st named name (qemu-img's lookup, by name
 * only, then the delete of what it found, by its ID and name). */
static int storage_snapshot_delete(struct qimg_storage *st, const char *name,
                                   struct qimg_error *err)
{
    struct qimg_snapshot *list;
    size_t n, i;
    int ret = st->ops->snapshot_list(st, &list, &n, err);

    if (ret < 0)
        return qimg_error_set(err, -ENOENT, "snapshot not found");
    for (i = 0; i < n && strcmp(list[i].name, name); i++)
        ;
    if (i == n)
        ret = qimg_error_set(err, -ENOENT, "snapshot not found");
    else
        ret = st->ops->snapshot_delete(st, list[i].id, list[i].name, err);
    free(list);
    return ret;
}

/* Create, delete or apply a snapshot the storage keeps (raw over rbd). */
static int storage_snapshot_change(struct qimg_storage *st,
                                   enum qimg_snapshot_op op, const char *name,
                                   struct qimg_error *err)
{
    int ret;

    if (op == QIMG_SNAPSHOT_CREATE)
        return st->ops->snapshot_create(st, name, err);
    if (op == QIMG_SNAPSHOT_DELETE)
        return storage_snapshot_delete(st, name, err);
    ret = st->ops->snapshot_goto(st, name, err);
    if (ret < 0)
        qimg_error_set(err, ret, "Failed to load snapshot: %s", strerror(-ret));
    return ret;
}

int qimg_snapshot_change(struct qimg_image *img, enum qimg_snapshot_op op,
                         const char *name, struct qimg_error *err)
{
    struct qimg_storage *st = snapshot_storage(img);

    if (snapshot_node(img))
        return qimg_snapshot_change(snapshot_node(img), op, name, err);
    if (st) {
        if (img->read_only)
            return qimg_error_set(err, -EACCES, "Image is read-only");
        return storage_snapshot_change(st, op, name, err);
    }
    /* QEMU's wording differs per operation for formats without snapshots. */
    if (!img->fmt->snapshot || !img->fmt->snapshot->change) {
        if (op == QIMG_SNAPSHOT_APPLY)
            return qimg_error_set(err, -ENOTSUP, "Block driver does not support "
                                  "snapshots");
        if (op == QIMG_SNAPSHOT_DELETE)
            return qimg_error_set(err, -ENOENT, "snapshot not found");
        return qimg_error_set(err, -ENOTSUP, "Operation not supported");
    }
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    if (op == QIMG_SNAPSHOT_APPLY && img->fmt->bitmap) {
        /* QEMU refuses to revert under any persistent bitmap. */
        struct qimg_bitmap *list;
        size_t n = 0;
        if (qimg_bitmap_list(img, &list, &n, NULL) == 0)
            free(list);
        if (n)
            return qimg_error_set(err, -EBUSY, "Device has active dirty "
                                  "bitmaps");
    }
    return img->fmt->snapshot->change(img, op, name, err);
}

static void (*warning_handler)(const char *msg, enum qimg_msg_kind kind);

void qimg_set_warning_handler(void (*handler)(const char *msg,
                                              enum qimg_msg_kind kind))
{
    warning_handler = handler;
}

void qimg_message(enum qimg_msg_kind kind, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!warning_handler)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    warning_handler(msg, kind);
}

int qimg_opts_refuse_all(const struct qimg_image *node,
                         const struct qimg_opts *opts, struct qimg_error *err)
{
    if (!opts || !qimg_opts_count(opts))
        return 0;
    return qimg_error_set(err, -EINVAL, "Block format '%s' does not support "
                          "the option '%s'", node->fmt->name,
                          qimg_opts_key(opts, 0));
}
