/*
 * vhdx-create.c - qemu-img create -f vhdx: QEMU 7.2's options, checks,
 * messages and layout, so that images are byte-identical to its own but
 * for what it draws at random (the GUIDs and the headers' sequence
 * number):
 *
 *   0       file identifier ("vhdxfile", creator "QEMU v7.2.22")
 *   64 KiB  header 1, 128 KiB header 2 (sequence numbers n, n + 1)
 *   192 KiB region table, 256 KiB its copy
 *   1 MiB   log (log_size)
 *           BAT (whole MiBs), metadata region (1 MiB), 4 MiB free,
 *           then payload blocks (fixed images: the whole virtual size)
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

/* The creator field QEMU writes: the version of the qemu-img whose images
 * qimg reproduces byte for byte. */
#define VHDX_CREATOR "QEMU v7.2.22"
#define VHDX_DEFAULT_LOG_SIZE VHDX_MiB

/* In QEMU's order (the "Formatting" line); -o help sorts them. */
const struct qimg_opt_desc vhdx_create_opts[VHDX_N_CREATE_OPTS] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL},
    {"log_size", QIMG_OPT_SIZE, "Log size; min 1MB.", "1048576"},
    {"block_size", QIMG_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means "
     "auto-calculate based on image size.", "0"},
    {"subformat", QIMG_OPT_STRING, "VHDX format type, can be either "
     "'dynamic' or 'fixed'. Default is 'dynamic'.", NULL},
    {"block_state_zero", QIMG_OPT_BOOL, "Force use of payload blocks of type "
     "'ZERO'. Non-standard, but default.  Do not set to 'off' when using "
     "'qemu-img convert' with subformat=dynamic.", NULL},
};

struct vhdx_params {
    uint64_t size;
    uint64_t log_size;
    uint64_t block_size;
    bool fixed;
    bool zero_blocks;
};

/* The option conversion of QEMU's vhdx_co_create_opts (sizes rounded up
 * silently), then the checks of vhdx_co_create, with their messages. */
static int parse_params(const struct qimg_opts *opts, struct vhdx_params *p,
                        struct qimg_error *err)
{
    const char *sub = qimg_opts_get(opts, "subformat");
    bool has_bs = qimg_opts_get(opts, "block_size") != NULL;
    int ret;

    ret = qimg_opts_get_size(opts, "size", 0, &p->size, err);
    if (ret == 0)
        ret = qimg_opts_get_size(opts, "log_size", VHDX_DEFAULT_LOG_SIZE,
                                 &p->log_size, err);
    if (ret == 0)
        ret = qimg_opts_get_size(opts, "block_size", 0, &p->block_size, err);
    if (ret == 0)
        ret = qimg_opts_get_bool(opts, "block_state_zero", true,
                                 &p->zero_blocks, err);
    if (ret < 0)
        return ret;
    if (sub && strcmp(sub, "dynamic") && strcmp(sub, "fixed"))
        return qimg_error_set(err, -EINVAL, "Parameter 'subformat' does not "
                              "accept value '%s'", sub);
    p->fixed = sub && !strcmp(sub, "fixed");
    if (!qimg_align_up(p->size, 512, &p->size) ||
        !qimg_align_up(p->log_size, VHDX_MiB, &p->log_size) ||
        !qimg_align_up(p->block_size, VHDX_MiB, &p->block_size))
        return qimg_error_set(err, -EINVAL, "Image size too large; max of "
                              "64TB");
    if (has_bs && p->block_size > VHDX_BLOCK_SIZE_MAX)
        p->block_size = VHDX_BLOCK_SIZE_MAX;
    if (p->size > VHDX_MAX_IMAGE_SIZE)
        return qimg_error_set(err, -EINVAL, "Image size too large; max of "
                              "64TB");
    if (p->log_size > UINT32_MAX)
        return qimg_error_set(err, -EINVAL, "Log size must be smaller than "
                              "4 GB");
    if (p->log_size < VHDX_MiB)
        return qimg_error_set(err, -EINVAL, "Log size must be a multiple of "
                              "1 MB");
    if (!p->block_size) {
        /* QEMU's choice: keeps the BAT small for big images. */
        if (p->size > (32ull << 40))
            p->block_size = 64 * VHDX_MiB;
        else if (p->size > (100ull << 30))
            p->block_size = 32 * VHDX_MiB;
        else if (p->size > (1ull << 30))
            p->block_size = 16 * VHDX_MiB;
        else
            p->block_size = 8 * VHDX_MiB;
    }
    if (!qimg_is_pow2(p->block_size))
        return qimg_error_set(err, -EINVAL, "Block size must be a power of "
                              "two");
    return 0;
}

static int write_at(struct qimg_storage *st, uint64_t off, const void *buf,
                    size_t len, const char *what, struct qimg_error *err)
{
    int ret = st->ops->pwrite(st, off, len, buf, err);
    if (ret < 0 && what)
        return qimg_error_set(err, ret, "%s: %s", what, strerror(-ret));
    return ret;
}

static int write_file_id(struct qimg_storage *st, struct qimg_error *err)
{
    const char *c = VHDX_CREATOR;
    uint8_t creator[2 * sizeof(VHDX_CREATOR)];
    size_t n = strlen(c);
    int ret;

    for (size_t i = 0; i < n; i++) {
        creator[2 * i] = (uint8_t)c[i];
        creator[2 * i + 1] = 0;
    }
    ret = write_at(st, 0, VHDX_FILE_SIGNATURE, 8, "Failed to write file "
                   "signature", err);
    if (ret == 0)
        ret = write_at(st, 8, creator, 2 * n, "Failed to write creator field",
                       err);
    return ret;
}

static int write_headers(struct qimg_storage *st, const struct vhdx_params *p,
                         struct qimg_error *err)
{
    struct vhdx_header h = {
        .signature = VHDX_HEADER_SIG,
        .version = 1,
        .log_length = (uint32_t)p->log_size,
        .log_offset = VHDX_HEADER_SECTION_END,
    };
    uint32_t seq = 0;
    int ret;

    if (getrandom(&seq, sizeof(seq), 0) != sizeof(seq))
        seq = (uint32_t)random();
    h.sequence = seq;
    vhdx_guid_generate(h.file_write_guid);
    vhdx_guid_generate(h.data_write_guid);
    ret = vhdx_header_write(st, &h, VHDX_HEADER1_OFFSET, false, err);
    h.sequence++;
    if (ret == 0)
        ret = vhdx_header_write(st, &h, VHDX_HEADER2_OFFSET, false, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to write image headers: %s",
                              strerror(-ret));
    return 0;
}

/* The BAT: all entries in state ZERO (block_state_zero), or fully present
 * at their place in the data area (fixed), or not present; written in
 * 1 MiB pieces (a BAT can be 2 GiB: QEMU allocates it whole). */
static int write_bat(struct qimg_storage *st, const struct vhdx_params *p,
                     uint64_t bat_off, uint64_t bat_len, uint64_t data_off,
                     struct qimg_error *err)
{
    uint64_t chunk = vhdx_chunk_ratio((uint32_t)p->block_size, 512);
    unsigned bits = (unsigned)__builtin_ctzll(chunk);
    uint64_t blocks = qimg_div_round_up(p->size, p->block_size);
    unsigned state = p->zero_blocks ? VHDX_PAYLOAD_ZERO
                     : p->fixed     ? VHDX_PAYLOAD_FULLY_PRESENT
                                    : VHDX_PAYLOAD_NOT_PRESENT;
    uint8_t *buf = malloc(VHDX_MiB);
    uint64_t b = 0;
    int ret = 0;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Failed to allocate memory for "
                              "the BAT");
    for (uint64_t piece = 0; piece < bat_len && ret == 0;
         piece += VHDX_MiB) {
        uint64_t first = piece / 8, end = first + VHDX_MiB / 8;

        memset(buf, 0, VHDX_MiB);
        for (; b < blocks; b++) {
            uint64_t idx = b + (b >> bits), e = state;
            if (idx >= end)
                break;
            if (state == VHDX_PAYLOAD_FULLY_PRESENT) {
                uint64_t off = data_off + b * p->block_size;
                qimg_align_up(off, VHDX_MiB, &off);
                e |= off;
            }
            qimg_st_le64(buf + (idx - first) * 8, e);
        }
        ret = write_at(st, bat_off + piece, buf,
                       (size_t)QIMG_MIN((uint64_t)VHDX_MiB, bat_len - piece),
                       "Failed to write the BAT", err);
    }
    free(buf);
    return ret;
}

static void put_region(uint8_t *p, const uint8_t guid[16], uint64_t off,
                       uint64_t len)
{
    memcpy(p, guid, 16);
    qimg_st_le64(p + 16, off);
    qimg_st_le32(p + 24, (uint32_t)len);
    qimg_st_le32(p + 28, 0);
}

static int write_regions(struct qimg_storage *st, const struct vhdx_params *p,
                         uint64_t *meta_off, struct qimg_error *err)
{
    uint64_t chunk = vhdx_chunk_ratio((uint32_t)p->block_size, 512);
    uint64_t entries = vhdx_bat_entries(p->size, (uint32_t)p->block_size,
                                        chunk);
    uint64_t bat_off = 0, bat_len = 0, data_off, end;
    uint8_t *rt = calloc(1, VHDX_HEADER_BLOCK);
    int ret;

    if (!rt)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_align_up(VHDX_HEADER_SECTION_END + p->log_size, VHDX_MiB, &bat_off);
    qimg_align_up(entries * 8, VHDX_MiB, &bat_len);
    qimg_align_up(bat_off + bat_len, VHDX_MiB, meta_off);
    qimg_st_le32(rt, VHDX_REGION_SIG);
    qimg_st_le32(rt + 8, 2);
    put_region(rt + 16, vhdx_bat_guid, bat_off, bat_len);
    put_region(rt + 48, vhdx_metadata_guid, *meta_off, VHDX_MiB);
    qimg_st_le32(rt + 4, vhdx_checksum(rt, VHDX_HEADER_BLOCK, 4));

    /* Data start after the metadata with 4 MiB to spare, as QEMU. */
    data_off = bat_off + bat_len + 5 * VHDX_MiB;
    end = p->fixed ? data_off + p->size : data_off;
    ret = st->ops->truncate(st, end, QIMG_PREALLOC_OFF, err);
    /* A fresh file reads as zero: a dynamic BAT of "not present" entries
     * need not be written. */
    if (ret == 0 && (p->fixed || p->zero_blocks ||
                     (st->caps & QIMG_STORAGE_IS_BLOCKDEV)))
        ret = write_bat(st, p, bat_off, bat_len, data_off, err);
    if (ret == 0)
        ret = write_at(st, VHDX_REGION1_OFFSET, rt, VHDX_HEADER_BLOCK,
                       "Failed to write first region table", err);
    if (ret == 0)
        ret = write_at(st, VHDX_REGION2_OFFSET, rt, VHDX_HEADER_BLOCK,
                       "Failed to write second region table", err);
    free(rt);
    return ret;
}

static int write_metadata(struct qimg_storage *st, const struct vhdx_params *p,
                          uint64_t meta_off, struct qimg_error *err)
{
    uint8_t *table = malloc(VHDX_HEADER_BLOCK);
    uint8_t items[VHDX_METADATA_ITEMS_SIZE];
    int ret;

    if (!table)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    vhdx_metadata_build(table, items, p->size, (uint32_t)p->block_size,
                        p->fixed);
    ret = write_at(st, meta_off, table, VHDX_HEADER_BLOCK, NULL, err);
    if (ret == 0)
        ret = write_at(st, meta_off + VHDX_HEADER_BLOCK, items, sizeof(items),
                       NULL, err);
    free(table);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to initialize metadata: %s",
                              strerror(-ret));
    return 0;
}

int vhdx_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err)
{
    static const char *const file_keys[] = {"nocow", "extent_size_hint",
                                            "preallocation"};
    struct qimg_opts *fopts = qimg_opts_new();
    struct qimg_storage *st = NULL;
    struct vhdx_params p;
    uint64_t meta_off = 0;
    int ret;

    if (!fopts)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    /* As QEMU: the file is created (empty) before the options are
     * checked, and left behind when they are wrong. */
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(file_keys); i++)
        if (qimg_opts_get(opts, file_keys[i]))
            qimg_opts_set(fopts, file_keys[i],
                          qimg_opts_get(opts, file_keys[i]));
    qimg_opts_set(fopts, "size", "0");
    ret = qimg_storage_create_name(filename, fopts, err);
    qimg_opts_free(fopts);
    if (ret < 0)
        return ret;
    ret = parse_params(opts, &p, err);
    if (ret < 0)
        return ret;
    ret = qimg_storage_open(&st, filename, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                            QIMG_CACHE_WRITEBACK, err);
    if (ret < 0)
        return ret;
    ret = write_file_id(st, err);
    if (ret == 0)
        ret = write_headers(st, &p, err);
    if (ret == 0)
        ret = write_regions(st, &p, &meta_off, err);
    if (ret == 0)
        ret = write_metadata(st, &p, meta_off, err);
    if (ret == 0)
        ret = st->ops->flush(st, err);
    qimg_storage_close(st);
    return ret;
}
