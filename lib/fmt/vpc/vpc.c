/*
 * vpc.c - the vpc (VHD) format: probing, the footer and dynamic header,
 * open with QEMU 7.2's checks and messages in its order, the BAT and the
 * bounds we add to it (docs/LIMITS.md), info, and the driver table.
 * See vpc.h for the layout.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vpc/vpc.h"

uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip)
{
    uint32_t sum = 0;

    for (size_t i = 0; i < len; i++)
        if (i < skip || i >= skip + 4)
            sum += buf[i];
    return ~sum;
}

static int vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* Only dynamic images start with the footer copy; fixed ones probe as
     * raw, as in QEMU. */
    return len >= 8 && !memcmp(buf, "conectix", 8) ? 100 : 0;
}

/*
 * Creator apps whose images take their size from the footer's
 * current_size: Hyper-V, QEMU with force_size, disk2vhd, XenConverter
 * and XenServer ("tap" and a NUL).  The others (Virtual PC, QEMU) use
 * the CHS geometry.
 */
static bool uses_current_size(const uint8_t *app)
{
    static const char *const apps[] = {"win ", "qem2", "d2v ", "CTXS"};

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(apps); i++)
        if (!memcmp(app, apps[i], 4))
            return true;
    return !memcmp(app, "tap", 4);
}

/* The force_size_calc open option: 0 auto, 1 chs, 2 current_size (the
 * core refuses other options once the image is open, as QEMU does). */
static int parse_open_opts(const struct qimg_opts *opts, int *calc,
                           struct qimg_error *err)
{
    const char *v = opts ? qimg_opts_get(opts, "force_size_calc") : NULL;

    *calc = 0;
    if (!v)
        return 0;
    if (!strcmp(v, "current_size"))
        *calc = 2;
    else if (!strcmp(v, "chs"))
        *calc = 1;
    else
        return qimg_error_set(err, -EINVAL, "Invalid size calculation mode: "
                              "'%s'", v);
    return 0;
}

/* Find the footer: at 0 for dynamic images, at the end for fixed ones. */
static int read_footer(struct qimg_image *node, struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    struct qimg_storage *st = node->file;
    int64_t fsize;
    int ret;

    ret = st->ops->pread(st, 0, VPC_FOOTER_SIZE, s->footer, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Unable to read VHD header");
    if (!memcmp(s->footer + VPC_F_CREATOR, "conectix", 8))
        return 0;
    fsize = st->ops->get_size(st);
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Invalid file size");
    if (fsize < VPC_FOOTER_SIZE)
        return qimg_error_set(err, -EINVAL, "File too small for a VHD header");
    ret = st->ops->pread(st, (uint64_t)fsize - VPC_FOOTER_SIZE,
                         VPC_FOOTER_SIZE, s->footer, err);
    if (ret < 0)
        return ret;
    if (memcmp(s->footer + VPC_F_CREATOR, "conectix", 8) ||
        qimg_ld_be32(s->footer + VPC_F_TYPE) != VPC_TYPE_FIXED)
        return qimg_error_set(err, -EINVAL, "invalid VPC image");
    s->fixed = true;
    return 0;
}

/* The virtual size in sectors, by QEMU's creator-app rules. */
static uint64_t footer_sectors(const uint8_t *f, int calc)
{
    uint64_t chs = (uint64_t)qimg_ld_be16(f + VPC_F_CYLS) * f[VPC_F_HEADS] *
                   f[VPC_F_SECS];
    bool use_chs = !uses_current_size(f + VPC_F_CREATOR_APP) || calc == 1;

    if (!use_chs || chs == VPC_MAX_GEOMETRY || calc == 2)
        return qimg_ld_be64(f + VPC_F_CUR_SIZE) / VPC_SECTOR;
    return chs;
}

/*
 * The dynamic header's geometry, checked as QEMU checks it (its
 * max_table_entries is a signed int: negative values fail the last
 * check with their signed value in the message).
 */
static int check_dyn_header(struct qimg_image *node, const uint8_t *h,
                            uint64_t sectors, uint64_t *entries,
                            struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    int32_t mte = (int32_t)qimg_ld_be32(h + VPC_D_MAX_ENTRIES);
    uint64_t computed;

    if (memcmp(h + VPC_D_MAGIC, "cxsparse", 8))
        return qimg_error_set(err, -EINVAL, "Invalid header magic");
    s->block_size = qimg_ld_be32(h + VPC_D_BLOCK_SIZE);
    if (!qimg_is_pow2(s->block_size) || s->block_size < VPC_SECTOR)
        return qimg_error_set(err, -EINVAL, "Invalid block size %u",
                              s->block_size);
    s->bitmap_size = (s->block_size / (8 * VPC_SECTOR) + 511) & ~511u;
    if (sectors * VPC_SECTOR / s->block_size > 0xffffffffu)
        return qimg_error_set(err, -EINVAL, "Too many blocks");
    /* Wrapping as QEMU's 64-bit product wraps. */
    computed = (uint64_t)(int64_t)mte * s->block_size;
    if (computed < sectors * VPC_SECTOR)
        return qimg_error_set(err, -EINVAL, "Page table too small");
    if (mte < 0 || mte > INT32_MAX / 4)
        return qimg_error_set(err, -EINVAL, "Max Table Entries too large "
                              "(%d)", mte);
    *entries = (uint64_t)mte;
    return 0;
}

/*
 * Our bound on what the BAT points at in a writable image: no block may
 * overlap the footer copy, the dynamic header, the BAT or another block
 * (QEMU does not look; guest writes would then land on metadata or on
 * another block's data).
 */
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Blocks are sorted by their sector: 4 bytes per used entry at most (as
 * much again as the BAT), for the duration of the check. */
static int check_overlaps(struct qimg_image *node, uint64_t dyn_off,
                          struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t span = (uint64_t)s->bitmap_size + s->block_size, n = 0;
    const uint64_t meta[3][2] = {
        {0, VPC_FOOTER_SIZE},
        {dyn_off, dyn_off + VPC_DYN_HEADER_SIZE},
        {s->bat_offset, s->bat_offset + s->bat.n * 4},
    };
    uint32_t *v = malloc((size_t)QIMG_MAX(s->bat.n, 1) * sizeof(*v));
    int ret = 0;

    if (!v)
        return qimg_error_set(err, -ENOMEM, "Unable to allocate memory for "
                              "page table");
    /* The dynamic header must not overlap the footer copy or the BAT. */
    if (dyn_off < meta[0][1] ||
        (dyn_off < meta[2][1] && meta[2][0] < meta[1][1]))
        ret = qimg_error_set(err, -EINVAL, "Invalid VHD image: the dynamic "
                             "header overlaps the footer or the BAT");
    for (uint64_t i = 0; i < s->bat.n && !ret; i++) {
        uint64_t e = qimg_table_get(&s->bat, i), start = e * VPC_SECTOR;
        if (e == VPC_BAT_UNUSED)
            continue;
        for (int m = 0; m < 3 && !ret; m++)
            if (start < meta[m][1] && meta[m][0] < start + span)
                ret = qimg_error_set(err, -EINVAL, "Invalid VHD image: "
                                     "block %llu overlaps the image metadata",
                                     (unsigned long long)i);
        v[n++] = (uint32_t)e;
    }
    if (!ret)
        qsort(v, (size_t)n, sizeof(*v), cmp_u32);
    for (uint64_t i = 1; i < n && !ret; i++)
        if ((uint64_t)(v[i] - v[i - 1]) * VPC_SECTOR < span)
            ret = qimg_error_set(err, -EINVAL, "Invalid VHD image: two blocks "
                                 "overlap at offset %llu",
                                 (unsigned long long)v[i] * VPC_SECTOR);
    free(v);
    return ret;
}

static int open_dynamic(struct qimg_image *node, uint64_t sectors,
                        struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    struct qimg_storage *st = node->file;
    uint64_t dyn_off = qimg_ld_be64(s->footer + VPC_F_DATA_OFFSET);
    uint8_t h[VPC_DYN_HEADER_SIZE];
    uint64_t entries = 0, bat_bytes, free_off;
    int64_t fsize;
    int ret;

    if (!qimg_range_ok(dyn_off, sizeof(h), QIMG_MAX_LENGTH) ||
        st->ops->pread(st, dyn_off, sizeof(h), h, err) < 0)
        return qimg_error_set(err, -EIO, "Error reading dynamic VHD header");
    ret = check_dyn_header(node, h, sectors, &entries, err);
    if (ret < 0)
        return ret;
    bat_bytes = entries * 4;
    if (bat_bytes > VPC_MAX_BAT_BYTES)
        return qimg_error_set(err, -EFBIG, "Max Table Entries too large "
                              "(%llu): the BAT may take at most %llu MiB",
                              (unsigned long long)entries,
                              (unsigned long long)(VPC_MAX_BAT_BYTES >> 20));
    s->bat_offset = qimg_ld_be64(h + VPC_D_TABLE_OFFSET);
    fsize = st->ops->get_size(st);
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Unable to learn image size: "
                              "%s", strerror((int)-fsize));
    /* A BAT past the end of the file would read as zero entries, which
     * point at block 0 and fail QEMU's truncation check below: say so
     * before allocating it. */
    if (qimg_range_ok(s->bat_offset, bat_bytes, QIMG_MAX_LENGTH) &&
        !qimg_range_ok(s->bat_offset, bat_bytes, (uint64_t)fsize))
        return qimg_error_set(err, -EINVAL, "block-vpc: free_data_block_"
                              "offset points after the end of file. The "
                              "image has been truncated.");
    struct qimg_table_geom g = {
        .offset = s->bat_offset, .n = entries, .esize = 4, .big_endian = true,
        .sector = VPC_SECTOR, .max_bytes = VPC_MAX_BAT_BYTES,
    };
    ret = qimg_table_load(&s->bat, st, &g, "BAT", err);
    if (ret == -ENOMEM)
        return qimg_error_set(err, ret, "Unable to allocate memory for page "
                              "table");
    if (ret < 0)
        return qimg_error_set(err, ret, "Error reading pagetable");
    /* Where new blocks go: after the BAT and after every block. */
    free_off = qimg_div_round_up(s->bat_offset + bat_bytes, VPC_SECTOR) *
               VPC_SECTOR;
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t e = qimg_table_get(&s->bat, i);
        if (e != VPC_BAT_UNUSED)
            free_off = QIMG_MAX(free_off, e * VPC_SECTOR + s->bitmap_size +
                                              s->block_size);
    }
    if (free_off > (uint64_t)fsize)
        return qimg_error_set(err, -EINVAL, "block-vpc: free_data_block_"
                              "offset points after the end of file. The "
                              "image has been truncated.");
    /* Reads of aliased blocks are harmless; writes are not. */
    if (!node->read_only) {
        ret = check_overlaps(node, dyn_off, err);
        if (ret < 0)
            return ret;
    }
    s->alloc.end = free_off;
    /* A new block's bitmap must start at a sector a BAT entry can hold. */
    s->alloc.max = VPC_MAX_BAT_SECTOR * VPC_SECTOR + s->bitmap_size +
                   s->block_size;
    s->bitmap_full = calloc(1, (size_t)(entries / 8 + 1));
    s->ones = malloc(s->bitmap_size);
    if (!s->bitmap_full || !s->ones)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memset(s->ones, 0xff, s->bitmap_size);
    return 0;
}

static void vpc_close(struct qimg_image *node)
{
    struct vpc_state *s = node->state;

    qimg_table_release(&s->bat);
    free(s->bitmap_full);
    free(s->ones);
    s->bitmap_full = s->ones = NULL;
}

static int vpc_open(struct qimg_image *node, const struct qimg_opts *opts,
                    struct qimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t sectors;
    int calc, ret;

    ret = parse_open_opts(opts, &calc, err);
    if (ret < 0)
        return ret;
    ret = read_footer(node, err);
    if (ret < 0)
        return ret;
    if (vpc_checksum(s->footer, VPC_FOOTER_SIZE, VPC_F_CHECKSUM) !=
        qimg_ld_be32(s->footer + VPC_F_CHECKSUM))
        return qimg_error_set(err, -EINVAL, "Incorrect header checksum");
    sectors = footer_sectors(s->footer, calc);
    if (sectors > VPC_MAX_SECTORS)
        return qimg_error_set(err, -EFBIG, "Could not open '%s': %s",
                              node->filename, strerror(EFBIG));
    node->size = sectors * VPC_SECTOR;
    if (!s->fixed) {
        ret = open_dynamic(node, sectors, err);
        if (ret < 0) {
            vpc_close(node);
            return ret;
        }
    }
    /* Where the footer was found decides how the image is opened; its
     * type, how it is read and written (as in QEMU: a footer copy at 0
     * saying "fixed" makes a pass-through image). */
    s->fixed = qimg_ld_be32(s->footer + VPC_F_TYPE) == VPC_TYPE_FIXED;
    return 0;
}

static int vpc_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static int vpc_get_info(struct qimg_image *node, struct qimg_info *info,
                        struct qimg_error *err)
{
    struct vpc_state *s = node->state;

    (void)err;
    if (!s->fixed)
        info->cluster_size = s->block_size;
    return 0;
}

/* In the order QEMU prints them in the "Formatting" line. */
static const struct qimg_opt_desc vpc_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"subformat", QIMG_OPT_STRING, "Type of virtual hard disk format. "
     "Supported formats are {dynamic (default) | fixed} ", NULL},
    {"force_size", QIMG_OPT_BOOL, "Force disk size calculation to use the "
     "actual size specified, rather than using the nearest CHS-based "
     "calculation", NULL},
};

static const char *const vpc_runtime_opts[] = {"force_size_calc", NULL};

const struct qimg_format qimg_format_vpc = {
    .name = "vpc",
    .runtime_opts = vpc_runtime_opts,
    /* QEMU's strong runtime option: it names the image by its options. */
    .strong_opts = vpc_runtime_opts,
    .description = "Virtual PC / Hyper-V / Azure VHD image",
    .state_size = sizeof(struct vpc_state),
    .create_opts = vpc_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(vpc_create_opts),
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .create = vpc_create,
    .pread = vpc_pread,
    .pwrite = vpc_pwrite,
    .flush = vpc_flush,
    .block_status = vpc_block_status,
    .get_info = vpc_get_info,
};
