/*
 * vpc-create.c - creating vpc images as QEMU 7.2 creates them: the size
 * rounded up to a CHS geometry (or kept, with force_size, the geometry
 * then set to its maximum and the creator app to "qem2"), and the
 * layout of a dynamic image: footer copy at 0, dynamic header at 512,
 * BAT at 1536, footer after the BAT; a fixed image is the data and the
 * footer.  Only the timestamp and the UUID differ between two images
 * QEMU and qimg create with the same options.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "fmt/vpc/vpc.h"

/* The block size of new dynamic images (QEMU's, and Hyper-V's). */
#define VPC_CREATE_BLOCK_SIZE (2u << 20)
/* Where QEMU puts the BAT of a new dynamic image. */
#define VPC_CREATE_BAT_OFFSET 1536u

struct chs {
    uint16_t cyls;
    uint8_t heads;
    uint8_t secs;
};

static uint64_t chs_sectors(const struct chs *g)
{
    return (uint64_t)g->cyls * g->heads * g->secs;
}

/*
 * The geometry algorithm of the VHD specification (extended, as QEMU's,
 * to 255 sectors per track above 127 GiB); it may round down.  The
 * arithmetic keeps QEMU's widths (8-bit heads).
 */
static void calculate_geometry(uint64_t total, struct chs *g)
{
    uint32_t cth;

    total = QIMG_MIN(total, VPC_MAX_GEOMETRY);
    if (total >= 65535ull * 16 * 63) {
        g->secs = 255;
        g->heads = 16;
        cth = (uint32_t)(total / g->secs);
    } else {
        g->secs = 17;
        cth = (uint32_t)(total / g->secs);
        g->heads = (uint8_t)qimg_div_round_up(cth, 1024);
        if (g->heads < 4)
            g->heads = 4;
        if (cth >= g->heads * 1024u || g->heads > 16) {
            g->secs = 31;
            g->heads = 16;
            cth = (uint32_t)(total / g->secs);
        }
        if (cth >= g->heads * 1024u) {
            g->secs = 63;
            g->heads = 16;
            cth = (uint32_t)(total / g->secs);
        }
    }
    g->cyls = (uint16_t)(cth / g->heads);
}

/*
 * The geometry for size bytes and the sectors the image will have: the
 * smallest geometry holding size, or with force_size (or past what CHS
 * can describe) the maximum geometry and size itself.
 */
static int rounded_size(uint64_t size, bool force, struct chs *g,
                        uint64_t *sectors, struct qimg_error *err)
{
    memset(g, 0, sizeof(*g));
    if (force) {
        *g = (struct chs){VPC_CHS_MAX_C, VPC_CHS_MAX_H, VPC_CHS_MAX_S};
    } else {
        uint64_t total = QIMG_MIN(VPC_MAX_GEOMETRY, size / VPC_SECTOR);
        for (uint64_t i = 0; total > chs_sectors(g); i++)
            calculate_geometry(total + i, g);
    }
    if (chs_sectors(g) == VPC_MAX_GEOMETRY) {
        *sectors = size / VPC_SECTOR;
        if (*sectors > VPC_MAX_SECTORS)
            return qimg_error_set(err, -EFBIG, "Disk size is too large, max "
                                  "size is 2040 GiB");
    } else {
        *sectors = chs_sectors(g);
    }
    return 0;
}

static void build_footer(uint8_t *f, uint64_t size, const struct chs *g,
                         bool dynamic, bool force)
{
    uint8_t uuid[16];

    memset(f, 0, VPC_FOOTER_SIZE);
    memcpy(f + VPC_F_CREATOR, "conectix", 8);
    qimg_st_be32(f + VPC_F_FEATURES, 2);
    qimg_st_be32(f + VPC_F_VERSION, 0x00010000);
    qimg_st_be64(f + VPC_F_DATA_OFFSET, dynamic ? VPC_FOOTER_SIZE
                                                : UINT64_MAX);
    qimg_st_be32(f + VPC_F_TIMESTAMP,
                 (uint32_t)((uint64_t)time(NULL) - VPC_TIMESTAMP_BASE));
    memcpy(f + VPC_F_CREATOR_APP, force ? "qem2" : "qemu", 4);
    /* Virtual PC 2007's version, 5.3. */
    qimg_st_be16(f + VPC_F_CREATOR_VER, 5);
    qimg_st_be16(f + VPC_F_CREATOR_VER + 2, 3);
    memcpy(f + VPC_F_CREATOR_OS, "Wi2k", 4);
    qimg_st_be64(f + VPC_F_ORIG_SIZE, size);
    qimg_st_be64(f + VPC_F_CUR_SIZE, size);
    qimg_st_be16(f + VPC_F_CYLS, g->cyls);
    f[VPC_F_HEADS] = g->heads;
    f[VPC_F_SECS] = g->secs;
    qimg_st_be32(f + VPC_F_TYPE, dynamic ? VPC_TYPE_DYNAMIC : VPC_TYPE_FIXED);
    qimg_uuid_generate(uuid);
    memcpy(f + VPC_F_UUID, uuid, sizeof(uuid));
    qimg_st_be32(f + VPC_F_CHECKSUM,
                 vpc_checksum(f, VPC_FOOTER_SIZE, VPC_F_CHECKSUM));
}

/* Footer copy, dynamic header, an empty BAT and the footer. */
static int write_dynamic(struct qimg_storage *st, const uint8_t *footer,
                         uint64_t sectors, struct qimg_error *err)
{
    uint64_t entries = qimg_div_round_up(sectors, VPC_CREATE_BLOCK_SIZE /
                                                      VPC_SECTOR);
    uint64_t bat_bytes = qimg_div_round_up(entries * 4, VPC_SECTOR) *
                         VPC_SECTOR;
    uint8_t h[VPC_DYN_HEADER_SIZE] = {0};
    uint8_t *bat = NULL;
    int ret;

    memcpy(h + VPC_D_MAGIC, "cxsparse", 8);
    /* All 64 bits set, as Microsoft's tools expect (the spec says 32). */
    qimg_st_be64(h + VPC_D_DATA_OFFSET, UINT64_MAX);
    qimg_st_be64(h + VPC_D_TABLE_OFFSET, VPC_CREATE_BAT_OFFSET);
    qimg_st_be32(h + VPC_D_VERSION, 0x00010000);
    qimg_st_be32(h + VPC_D_MAX_ENTRIES, (uint32_t)entries);
    qimg_st_be32(h + VPC_D_BLOCK_SIZE, VPC_CREATE_BLOCK_SIZE);
    qimg_st_be32(h + VPC_D_CHECKSUM,
                 vpc_checksum(h, sizeof(h), VPC_D_CHECKSUM));
    if (bat_bytes) {
        bat = malloc((size_t)bat_bytes);
        if (!bat)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        memset(bat, 0xff, (size_t)bat_bytes);
    }
    ret = st->ops->pwrite(st, 0, VPC_FOOTER_SIZE, footer, err);
    if (!ret)
        ret = st->ops->pwrite(st, VPC_CREATE_BAT_OFFSET + bat_bytes,
                              VPC_FOOTER_SIZE, footer, err);
    if (!ret && bat)
        ret = st->ops->pwrite(st, VPC_CREATE_BAT_OFFSET, (size_t)bat_bytes,
                              bat, err);
    if (!ret)
        ret = st->ops->pwrite(st, VPC_FOOTER_SIZE, sizeof(h), h, err);
    free(bat);
    if (ret < 0)
        return qimg_error_set(err, ret, "Unable to create or write VHD "
                              "header");
    return 0;
}

/* The data area (a hole) and the footer behind it. */
static int write_fixed(struct qimg_storage *st, const uint8_t *footer,
                       uint64_t size, struct qimg_error *err)
{
    int ret = st->ops->truncate(st, size + VPC_FOOTER_SIZE, QIMG_PREALLOC_OFF,
                                err);
    if (ret < 0)
        return ret;
    ret = st->ops->pwrite(st, size, VPC_FOOTER_SIZE, footer, err);
    if (ret < 0) {
        qimg_error_prefix(err, "Unable to write VHD header: ");
        return ret;
    }
    return 0;
}

static int parse_create_opts(const struct qimg_opts *opts, uint64_t *size,
                             bool *dynamic, bool *force,
                             struct qimg_error *err)
{
    const char *sub = qimg_opts_get(opts, "subformat");
    int ret = qimg_opts_get_size(opts, "size", 0, size, err);

    if (ret < 0)
        return ret;
    ret = qimg_opts_get_bool(opts, "force_size", false, force, err);
    if (ret < 0)
        return ret;
    *dynamic = !sub || !strcmp(sub, "dynamic");
    if (sub && !*dynamic && strcmp(sub, "fixed"))
        return qimg_error_set(err, -EINVAL, "Parameter 'subformat' does not "
                              "accept value '%s'", sub);
    /* Silently rounded up to whole sectors, as QEMU does. */
    if (!qimg_align_up(*size, VPC_SECTOR, size) || *size > INT64_MAX)
        return qimg_error_set(err, -EFBIG, "Disk size is too large, max size "
                              "is 2040 GiB");
    return 0;
}

int vpc_create(const char *filename, const struct qimg_opts *opts,
               struct qimg_error *err)
{
    uint8_t footer[VPC_FOOTER_SIZE];
    struct qimg_storage *st = NULL;
    uint64_t size, sectors;
    bool dynamic, force;
    struct chs g;
    int ret;

    /* The file first: QEMU checks the options after creating it. */
    ret = qimg_create_storage(filename, opts, &st, err);
    if (ret < 0)
        return ret;
    ret = parse_create_opts(opts, &size, &dynamic, &force, err);
    if (ret < 0)
        goto out;
    /* QEMU rounds twice: once to choose the size, once for the geometry
     * of that size; the two must agree. */
    ret = rounded_size(size, force, &g, &sectors, err);
    if (ret < 0)
        goto out;
    size = sectors * VPC_SECTOR;
    ret = rounded_size(size, force, &g, &sectors, err);
    if (ret < 0)
        goto out;
    if (size != sectors * VPC_SECTOR) {
        ret = qimg_error_set(err, -EINVAL, "The requested image size cannot "
                             "be represented in CHS geometry\nTry size=%llu "
                             "or force-size=on (the latter makes the image "
                             "incompatible with Virtual PC)",
                             (unsigned long long)(sectors * VPC_SECTOR));
        goto out;
    }
    build_footer(footer, size, &g, dynamic, force);
    if (dynamic)
        ret = write_dynamic(st, footer, sectors, err);
    else
        ret = write_fixed(st, footer, size, err);
    if (!ret)
        ret = st->ops->flush(st, err);
out:
    qimg_storage_close(st);
    return ret;
}
