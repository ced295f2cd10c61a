/*
 * qed.c - QED: probe, open, close, info, resize, change of backing file
 * and header rewrites (see qed.h for the layout and the split).
 *
 * Open validates the header in QEMU 7.2's order with its messages, so the
 * first error reported is the one QEMU reports.  A writable open clears
 * unknown autoclear bits and, when the image was left with the need-check
 * bit (a crash during allocation), checks and repairs it as QEMU does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qed/qed.h"

static int qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len < QED_HEADER_LEN || qimg_ld_le32(buf) != QED_MAGIC)
        return 0;
    return 100;
}

static void header_decode(const uint8_t *b, struct qed_header *h)
{
    h->magic = qimg_ld_le32(b);
    h->cluster_size = qimg_ld_le32(b + 4);
    h->table_size = qimg_ld_le32(b + 8);
    h->header_size = qimg_ld_le32(b + 12);
    h->features = qimg_ld_le64(b + 16);
    h->compat_features = qimg_ld_le64(b + 24);
    h->autoclear_features = qimg_ld_le64(b + 32);
    h->l1_table_offset = qimg_ld_le64(b + 40);
    h->image_size = qimg_ld_le64(b + 48);
    h->backing_filename_offset = qimg_ld_le32(b + 56);
    h->backing_filename_size = qimg_ld_le32(b + 60);
}

void qed_header_encode(const struct qed_header *h, uint8_t *b)
{
    qimg_st_le32(b, h->magic);
    qimg_st_le32(b + 4, h->cluster_size);
    qimg_st_le32(b + 8, h->table_size);
    qimg_st_le32(b + 12, h->header_size);
    qimg_st_le64(b + 16, h->features);
    qimg_st_le64(b + 24, h->compat_features);
    qimg_st_le64(b + 32, h->autoclear_features);
    qimg_st_le64(b + 40, h->l1_table_offset);
    qimg_st_le64(b + 48, h->image_size);
    qimg_st_le32(b + 56, h->backing_filename_offset);
    qimg_st_le32(b + 60, h->backing_filename_size);
}

int qed_write_header(struct qimg_image *node, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t buf[QED_HEADER_LEN];

    qed_header_encode(&s->h, buf);
    return node->file->ops->pwrite(node->file, 0, sizeof(buf), buf, err);
}

int qed_set_need_check(struct qimg_image *node, bool on,
                       struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t old = s->h.features;
    int ret;

    if (on)
        s->h.features |= QED_F_NEED_CHECK;
    else
        s->h.features &= ~QED_F_NEED_CHECK;
    if (s->h.features == old)
        return 0;
    ret = qed_write_header(node, err);
    if (ret < 0)
        s->h.features = old;
    return ret;
}

/* Computed as QEMU computes it, in 64 bits that wrap: for large clusters
 * and tables the product overflows to 0 and no size but 0 is valid. */
uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    uint64_t entries = (uint64_t)(uint32_t)(table_size * cluster_size) / 8;
    uint64_t l2_size = entries * cluster_size;

    return l2_size * entries;
}

bool qed_cluster_size_valid(uint64_t cs)
{
    return cs >= QED_MIN_CLUSTER_SIZE && cs <= QED_MAX_CLUSTER_SIZE &&
           qimg_is_pow2(cs);
}

bool qed_table_size_valid(uint64_t ts)
{
    return ts >= QED_MIN_TABLE_SIZE && ts <= QED_MAX_TABLE_SIZE &&
           qimg_is_pow2(ts);
}

bool qed_image_size_valid(uint64_t size, uint32_t cluster_size,
                          uint32_t table_size)
{
    return size % 512 == 0 &&
           size <= qed_max_image_size(cluster_size, table_size);
}

/* The header fields up to the table offset, in QEMU's order. */
static int check_geometry(struct qimg_image *node, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    struct qed_header *h = &s->h;
    int64_t fsize;

    if (h->magic != QED_MAGIC)
        return qimg_error_set(err, -EINVAL, "Image not in QED format");
    if (h->features & ~QED_FEATURE_MASK)
        return qimg_error_set(err, -ENOTSUP, "Unsupported QED features: %llx",
                              (unsigned long long)(h->features &
                                                   ~QED_FEATURE_MASK));
    if (!qed_cluster_size_valid(h->cluster_size))
        return qimg_error_set(err, -EINVAL, "QED cluster size is invalid");
    fsize = node->file->ops->get_size(node->file);
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Failed to get file length");
    /* QEMU's file length is in whole sectors, then cut to a cluster. */
    s->alloc.end = qimg_align_down(((uint64_t)fsize + 511) & ~511ull,
                                   h->cluster_size);
    s->alloc.max = QIMG_MAX_LENGTH;
    if (!qed_table_size_valid(h->table_size))
        return qimg_error_set(err, -EINVAL, "QED table size is invalid");
    if (!qed_image_size_valid(h->image_size, h->cluster_size, h->table_size))
        return qimg_error_set(err, -EINVAL, "QED image size is invalid");
    if (!qed_table_offset_ok(s, h->l1_table_offset))
        return qimg_error_set(err, -EINVAL, "QED table offset is invalid");
    s->table_bytes = (uint64_t)h->cluster_size * h->table_size;
    s->table_nelems = (uint32_t)(s->table_bytes / 8);
    s->l2_shift = (unsigned)__builtin_ctz(h->cluster_size);
    s->l2_mask = s->table_nelems - 1;
    s->l1_shift = s->l2_shift + (unsigned)__builtin_ctz(s->table_nelems);
    if (h->header_size > UINT32_MAX / h->cluster_size)
        return qimg_error_set(err, -EINVAL, "QED header size is too large");
    return 0;
}

static int read_backing_name(struct qimg_image *node, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    struct qed_header *h = &s->h;
    uint32_t n = h->backing_filename_size;
    int ret;

    if (!(h->features & QED_F_BACKING_FILE))
        return 0;
    if ((uint64_t)h->backing_filename_offset + n >
        (uint64_t)h->cluster_size * h->header_size)
        return qimg_error_set(err, -EINVAL, "QED backing filename offset is "
                              "invalid");
    if (n >= QED_MAX_BACKING_NAME || n >= sizeof(node->backing_name))
        return qimg_error_set(err, -EINVAL, "Failed to read backing filename");
    ret = node->file->ops->pread(node->file, h->backing_filename_offset, n,
                                 node->backing_name, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to read backing filename");
    node->backing_name[n] = '\0';
    if (h->features & QED_F_BACKING_FORMAT_NO_PROBE)
        snprintf(node->backing_fmt, sizeof(node->backing_fmt), "raw");
    return 0;
}

static int load_tables(struct qimg_image *node, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    struct qimg_table_geom g = {
        .offset = s->h.l1_table_offset, .n = s->table_nelems, .esize = 8,
        .max_bytes = QED_MAX_TABLE_BYTES,
    };
    int ret;

    /* Before anything is allocated: QEMU would take up to 1 GiB here. */
    if (s->table_bytes > QED_MAX_TABLE_BYTES)
        return qimg_error_set(err, -EFBIG, "QED tables of %llu bytes are "
                              "larger than qimg's limit of %u bytes",
                              (unsigned long long)s->table_bytes,
                              QED_MAX_TABLE_BYTES);
    ret = qimg_table_load(&s->l1, node->file, &g, "L1 table", err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to read L1 table");
    ret = qimg_table_cache_init(&s->l2, node->file, &g, QED_L2_CACHE_SLOTS,
                                QED_L2_CACHE_BYTES, "L2 table", err);
    if (ret < 0)
        qimg_table_release(&s->l1);
    else
        s->l2.load_event = true;   /* QEMU's blkdebug l2_load */
    return ret;
}

static void qed_free(struct qed_state *s)
{
    qimg_table_cache_release(&s->l2);
    qimg_table_release(&s->l1);
}

static int qed_open(struct qimg_image *node, const struct qimg_opts *opts,
                    struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t buf[QED_HEADER_LEN];
    int ret;

    /* A short file reads as zeroes past its end, as in QEMU. */
    ret = node->file->ops->pread(node->file, 0, sizeof(buf), buf, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to read QED header");
    header_decode(buf, &s->h);
    ret = check_geometry(node, err);
    if (ret == 0)
        ret = read_backing_name(node, err);
    if (ret < 0)
        return ret;
    if ((s->h.autoclear_features & ~QED_AUTOCLEAR_FEATURE_MASK) &&
        !node->read_only) {
        /* Unknown autoclear bits mean another program changed the image:
         * they no longer hold. */
        s->h.autoclear_features &= QED_AUTOCLEAR_FEATURE_MASK;
        ret = qed_write_header(node, err);
        if (ret < 0)
            return qimg_error_set(err, ret, "Failed to update header");
        node->file->ops->flush(node->file, err);
    }
    ret = load_tables(node, err);
    if (ret < 0)
        return ret;
    node->size = s->h.image_size;
    /* Left mid-allocation: repair now (a read-only open cannot, and may
     * read the image as it is; check opens without repairing). */
    if ((s->h.features & QED_F_NEED_CHECK) && !node->read_only &&
        !(node->flags & QIMG_OPEN_CHECK)) {
        struct qimg_check res = {0};
        ret = qed_check(node, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS,
                        &res, err);
        if (ret < 0) {
            qed_free(s);
            return qimg_error_set(err, ret, "Image corrupted");
        }
    }
    /*
     * QEMU arms a timer that clears the bit once writes settle, and
     * qemu-img's first drain fires it at once: the bit is gone from
     * memory right after open (info never shows it), and from the disk
     * of a writable image, even one check has yet to repair or one a
     * repair could not fix.
     */
    if (s->h.features & QED_F_NEED_CHECK) {
        if (node->read_only) {
            s->h.features &= ~QED_F_NEED_CHECK;
        } else {
            node->file->ops->flush(node->file, err);
            ret = qed_set_need_check(node, false, err);
            if (ret < 0) {
                qed_free(s);
                return ret;
            }
        }
    }
    return 0;
}

static void qed_close(struct qimg_image *node)
{
    struct qed_state *s = node->state;
    struct qimg_error err;

    /* A clean shutdown: the data on disk, then the bit cleared. */
    if (!node->read_only && s->l1.raw) {
        node->file->ops->flush(node->file, &err);
        if ((s->h.features & QED_F_NEED_CHECK) &&
            qed_set_need_check(node, false, &err) == 0)
            node->file->ops->flush(node->file, &err);
    }
    qed_free(s);
}

static int qed_get_info(struct qimg_image *node, struct qimg_info *info,
                        struct qimg_error *err)
{
    struct qed_state *s = node->state;

    info->cluster_size = s->h.cluster_size;
    info->dirty = s->h.features & QED_F_NEED_CHECK;
    return 0;
}

static const char *const prealloc_names[] = {"off", "metadata", "falloc",
                                             "full"};

/* Only growing, by rewriting the size in the header. */
static int qed_truncate(struct qimg_image *node, uint64_t size, bool exact,
                        enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t old = s->h.image_size;
    int ret;

    /* QEMU's block layer would have to zero the new area over a longer
     * backing file, which this driver cannot be asked to. */
    if (size > old && node->backing && node->backing->size > old)
        return qimg_error_set(err, -ENOTSUP, "Block driver does not support "
                              "requested flags");
    if (prealloc != QIMG_PREALLOC_OFF)
        return qimg_error_set(err, -ENOTSUP, "Unsupported preallocation mode "
                              "'%s'", prealloc_names[prealloc]);
    if (!qed_image_size_valid(size, s->h.cluster_size, s->h.table_size))
        return qimg_error_set(err, -EINVAL, "Invalid image size specified");
    if (size < old)
        return qimg_error_set(err, -ENOTSUP, "Shrinking images is currently "
                              "not supported");
    s->h.image_size = size;
    ret = qed_write_header(node, err);
    if (ret < 0) {
        s->h.image_size = old;
        return qimg_error_set(err, ret, "Failed to update the image size: %s",
                              strerror(-ret));
    }
    node->size = size;
    return 0;
}

/* A new header followed by the name, in place of the old ones. */
static int qed_change_backing(struct qimg_image *node, const char *backing,
                              const char *backing_fmt, struct qimg_error *err)
{
    struct qed_state *s = node->state;
    struct qed_header h = s->h;
    size_t len = backing && *backing ? strlen(backing) : 0;
    uint8_t *buf;
    int ret;

    if (backing && !*backing)
        backing = NULL;
    /* An unknown compat feature may keep data after the header. */
    if (backing && (s->h.compat_features & ~QED_COMPAT_FEATURE_MASK))
        return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
    h.features &= ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
    if (backing) {
        h.features |= QED_F_BACKING_FILE;
        if (backing_fmt && !strcmp(backing_fmt, "raw"))
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
    }
    h.backing_filename_offset = QED_HEADER_LEN;
    h.backing_filename_size = (uint32_t)len;
    if (QED_HEADER_LEN + len > (uint64_t)h.header_size * h.cluster_size)
        return qimg_error_set(err, -ENOSPC, "%s", strerror(ENOSPC));
    /* One that fits the header but not our name buffer (nor QEMU's,
     * which could not open the image again). */
    if (len >= sizeof(node->backing_name))
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    buf = malloc(QED_HEADER_LEN + len);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qed_header_encode(&h, buf);
    memcpy(buf + QED_HEADER_LEN, backing ? backing : "", len);
    ret = node->file->ops->pwrite(node->file, 0, QED_HEADER_LEN + len, buf,
                                  err);
    free(buf);
    if (ret == 0)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        return ret;
    s->h = h;
    snprintf(node->backing_name, sizeof(node->backing_name), "%s",
             backing ? backing : "");
    snprintf(node->backing_fmt, sizeof(node->backing_fmt), "%s",
             h.features & QED_F_BACKING_FORMAT_NO_PROBE ? "raw" : "");
    return 0;
}

/* No open options of its own (the core refuses others after the open). */
static const char *const qed_runtime_opts[] = {NULL};

const struct qimg_format qimg_format_qed = {
    .name = "qed",
    .runtime_opts = qed_runtime_opts,
    .supports_backing = true,
    .description = "QEMU Enhanced Disk",
    .state_size = sizeof(struct qed_state),
    .create_opts = qed_create_opts,
    .n_create_opts = QED_N_CREATE_OPTS,
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .create = qed_create,
    .pread = qed_pread,
    .pwrite = qed_pwrite,
    .pwrite_zeroes = qed_pwrite_zeroes,
    .flush = qed_flush,
    .block_status = qed_block_status,
    .truncate = qed_truncate,
    .get_info = qed_get_info,
    .check = qed_check,
    .change_backing = qed_change_backing,
};
