/*
 * parallels-create.c - creating Parallels images as QEMU 7.2 does, byte
 * for byte: a "WithouFreSpacExt" header in a sector of its own, the BAT
 * zeroed (and allocated, as QEMU's write of zeroes allocates it) up to
 * the first cluster boundary, where the data area starts.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/parallels/parallels.h"

const struct qimg_opt_desc parallels_create_opts[PARALLELS_N_CREATE_OPTS] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "Parallels image cluster size", "1048576"},
};

static int check(uint64_t size, uint64_t cs, struct qimg_error *err)
{
    if (cs >= INT64_MAX / PARALLELS_MAX_IMAGE_FACTOR)
        return qimg_error_set(err, -EINVAL, "Cluster size is too large");
    if (size >= PARALLELS_MAX_IMAGE_FACTOR * cs)
        return qimg_error_set(err, -E2BIG, "Image size is too large for this "
                              "cluster size");
    if (qimg_div_round_up(size, cs) * 4 > PARALLELS_MAX_BAT_BYTES)
        return qimg_error_set(err, -EINVAL, "Catalog of %llu bytes is larger "
                              "than qimg's limit of %u bytes",
                              (unsigned long long)qimg_div_round_up(size, cs) * 4,
                              PARALLELS_MAX_BAT_BYTES);
    return 0;
}

static int write_image(struct qimg_storage *st, uint64_t size, uint64_t cs,
                       struct qimg_error *err)
{
    uint8_t sector[512] = {0};
    uint64_t bat_entries = qimg_div_round_up(size, cs);
    uint64_t bat_sectors = qimg_div_round_up(PARALLELS_HEADER_LEN +
                                             4 * bat_entries, cs) * cs / 512;
    int ret;

    memcpy(sector, PARALLELS_MAGIC2, 16);
    qimg_st_le32(sector + 16, PARALLELS_VERSION);
    qimg_st_le32(sector + 20, PARALLELS_HEADS);
    qimg_st_le32(sector + 24, (uint32_t)(size / 512 / PARALLELS_HEADS /
                                         PARALLELS_SEC_IN_CYL));
    qimg_st_le32(sector + 28, (uint32_t)(cs / 512));
    qimg_st_le32(sector + 32, (uint32_t)bat_entries);
    qimg_st_le64(sector + 36, qimg_div_round_up(size, 512));
    qimg_st_le32(sector + 48, (uint32_t)bat_sectors);
    ret = st->ops->pwrite(st, 0, sizeof(sector), sector, err);
    /* The rest of the BAT's clusters: allocated zeroes, as QEMU's. */
    if (!ret && bat_sectors > 1)
        ret = st->ops->truncate(st, bat_sectors * 512, QIMG_PREALLOC_FALLOC,
                                err);
    if (!ret)
        ret = st->ops->flush(st, err);
    if (ret < 0)
        qimg_error_set(err, ret, "Failed to create Parallels image: %s",
                       strerror(-ret));
    return ret;
}

int parallels_create(const char *filename, const struct qimg_opts *opts,
                     struct qimg_error *err)
{
    struct qimg_storage *st = NULL;
    uint64_t size = 0, cs = 0;
    int ret;

    ret = qimg_create_storage(filename, opts, &st, err);
    if (!ret)
        ret = qimg_opts_get_size(opts, "size", 0, &size, err);
    if (!ret)
        ret = qimg_opts_get_size(opts, "cluster_size",
                                 PARALLELS_DEFAULT_CLUSTER_SIZE, &cs, err);
    if (!ret) {
        /* Both silently rounded up to whole sectors (wrapping as QEMU's
         * ROUND_UP does). */
        size = (size + 511) & ~511ull;
        cs = (cs + 511) & ~511ull;
        ret = check(size, cs, err);
    }
    if (!ret)
        ret = write_image(st, size, cs, err);
    qimg_storage_close(st);
    return ret;
}
