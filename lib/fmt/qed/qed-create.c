/*
 * qed-create.c - creating QED images as QEMU 7.2 does, byte for byte: the
 * header in the first cluster (the backing file name right after it),
 * the zeroed L1 table in the next table_size clusters, nothing else.
 *
 * Options are checked in QEMU's order: the file is created first, then
 * the values are converted as QEMU's QAPI visitor converts them
 * (backing_fmt must name a QEMU driver, table_size must be written as an
 * integer, both sizes are truncated to 32 bits), then the geometry.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qed/qed.h"

const struct qimg_opt_desc qed_create_opts[QED_N_CREATE_OPTS] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "Cluster size (in bytes)", "65536"},
    {"table_size", QIMG_OPT_SIZE, "L1/L2 table size (in clusters)", NULL},
};

struct qed_params {
    uint64_t size;
    uint32_t cluster_size, table_size;
    /* QEMU keeps the option's 64 bits for the L1 table offset alone. */
    uint64_t cluster_size_opt;
    const char *backing_file, *backing_fmt;
};

/* The options as QEMU's visitor sees them (its messages name the QAPI
 * members). */
static int parse(const struct qimg_opts *opts, struct qed_params *p,
                 struct qimg_error *err)
{
    const char *ts = qimg_opts_get_orig(opts, "table_size");
    uint64_t cs, size;
    int ret;

    memset(p, 0, sizeof(*p));
    p->backing_file = qimg_opts_get(opts, "backing_file");
    p->backing_fmt = qimg_opts_get(opts, "backing_fmt");
    if (p->backing_fmt && !qimg_blockdev_driver_known(p->backing_fmt))
        return qimg_error_set(err, -EINVAL, "Parameter 'backing-fmt' does not "
                              "accept value '%s'", p->backing_fmt);
    ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (!ret)
        ret = qimg_opts_get_size(opts, "cluster_size", QED_DEFAULT_CLUSTER_SIZE,
                                 &cs, err);
    if (ret < 0)
        return ret;
    p->table_size = QED_DEFAULT_TABLE_SIZE;
    if (ts) {
        /* An integer in C syntax (so "010" is 8), not a size with a
         * suffix, although -o validated it as a size. */
        char *end;
        long long v;
        errno = 0;
        v = strtoll(ts, &end, 0);
        if (errno || end == ts || *end)
            return qimg_error_set(err, -EINVAL, "Parameter 'table-size' "
                                  "expects integer");
        p->table_size = (uint32_t)v;
    }
    p->cluster_size = (uint32_t)cs;
    p->cluster_size_opt = cs;
    /* Silently rounded up to whole sectors. */
    if (!qimg_align_up(size, 512, &p->size))
        p->size = 0;   /* wrapped, as QEMU's ROUND_UP does */
    return 0;
}

static int check(const struct qed_params *p, struct qimg_error *err)
{
    if (!qed_cluster_size_valid(p->cluster_size))
        return qimg_error_set(err, -EINVAL, "QED cluster size must be within "
                              "range [%u, %u] and power of 2",
                              QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
    if (!qed_table_size_valid(p->table_size))
        return qimg_error_set(err, -EINVAL, "QED table size must be within "
                              "range [%u, %u] and power of 2",
                              QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
    if (!qed_image_size_valid(p->size, p->cluster_size, p->table_size))
        return qimg_error_set(err, -EINVAL, "QED image size must be a non-zero "
                              "multiple of cluster size and less than %llu "
                              "bytes", (unsigned long long)
                              qed_max_image_size(p->cluster_size,
                                                 p->table_size));
    if ((uint64_t)p->cluster_size * p->table_size > QED_MAX_TABLE_BYTES)
        return qimg_error_set(err, -EINVAL, "QED tables of %llu bytes are "
                              "larger than qimg's limit of %u bytes",
                              (unsigned long long)p->cluster_size *
                                  p->table_size, QED_MAX_TABLE_BYTES);
    return 0;
}

static int write_image(struct qimg_storage *st, const struct qed_params *p,
                       struct qimg_error *err)
{
    struct qed_header h = {
        .magic = QED_MAGIC, .cluster_size = p->cluster_size,
        .table_size = p->table_size, .header_size = 1,
        .l1_table_offset = p->cluster_size_opt, .image_size = p->size,
    };
    size_t l1_len = (size_t)p->cluster_size * p->table_size;
    size_t blen = p->backing_file ? strlen(p->backing_file) : 0;
    uint8_t hdr[QED_HEADER_LEN];
    uint8_t *l1;
    int ret;

    if (p->backing_file) {
        h.features |= QED_F_BACKING_FILE;
        h.backing_filename_offset = QED_HEADER_LEN;
        h.backing_filename_size = (uint32_t)blen;
        if (p->backing_fmt && !strcmp(p->backing_fmt, "raw"))
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
    }
    qed_header_encode(&h, hdr);
    /* The file length tells what is allocated: a new image starts empty
     * (the storage was created with size 0). */
    ret = st->ops->pwrite(st, 0, sizeof(hdr), hdr, err);
    if (!ret && blen)
        ret = st->ops->pwrite(st, QED_HEADER_LEN, blen, p->backing_file, err);
    if (ret < 0)
        return ret;
    /* Written, not left as a hole: QEMU's images take this space. */
    l1 = calloc(1, l1_len);
    if (!l1)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = st->ops->pwrite(st, h.l1_table_offset, l1_len, l1, err);
    free(l1);
    if (!ret)
        ret = st->ops->flush(st, err);
    return ret;
}

int qed_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err)
{
    struct qimg_storage *st = NULL;
    struct qed_params p;
    int ret;

    ret = qimg_create_storage(filename, opts, &st, err);
    if (!ret)
        ret = parse(opts, &p, err);
    if (!ret)
        ret = check(&p, err);
    /* The file length tells what is allocated, so the image starts at
     * length 0 exactly, as in QEMU: a storage that cannot be cut to 0
     * (an NBD export: "Cannot resize NBD nodes") cannot hold a qed. */
    if (!ret)
        ret = qimg_storage_truncate(st, 0, true, QIMG_PREALLOC_OFF, err);
    if (!ret)
        ret = write_image(st, &p, err);
    qimg_storage_close(st);
    return ret;
}
