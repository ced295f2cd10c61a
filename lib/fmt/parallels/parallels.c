/*
 * parallels.c - the Parallels format: probe, open, the in-use flag, the
 * data path and close (see parallels.h for the layout).
 *
 * Open follows QEMU 7.2: both signatures, the header checked in its order
 * with its messages, the BAT read whole (bounded, see parallels.h), the
 * end of the data area computed as QEMU computes it (including its use of
 * a byte count as a sector count when data_off is 0).  An image whose
 * in-use flag is set was not closed: it opens read-only, or for check,
 * which repairs it.  A writable open sets the flag, close clears it and
 * cuts the file at the end of the data area.
 *
 * Reads, block status and writes go through the shared table helper.
 * New clusters are appended at the end of the data area; the file is
 * grown ahead of them by the prealloc-size runtime option (128 MiB), with
 * fallocate or, with prealloc-mode=truncate, as a hole, as QEMU grows it,
 * so that images take the same space on disk.  A cluster's data is written
 * before its BAT entry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/parallels/parallels.h"

static int parallels_probe(const uint8_t *buf, size_t len,
                           const char *filename)
{
    if (len < PARALLELS_HEADER_LEN)
        return 0;
    if ((memcmp(buf, PARALLELS_MAGIC, 16) && memcmp(buf, PARALLELS_MAGIC2, 16)) ||
        qimg_ld_le32(buf + 16) != PARALLELS_VERSION)
        return 0;
    return 100;
}

int parallels_write_header(struct qimg_image *node, struct qimg_error *err)
{
    struct parallels_state *s = node->state;

    return node->file->ops->pwrite(node->file, 0, PARALLELS_HEADER_LEN,
                                   s->header, err);
}

/* The header fields, in QEMU's order; sets the virtual size. */
static int check_header(struct qimg_image *node, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    const uint8_t *h = s->header;
    uint64_t sectors = qimg_ld_le64(h + 36);

    if (qimg_ld_le32(h + 16) != PARALLELS_VERSION)
        return qimg_error_set(err, -EINVAL, "Image not in Parallels format");
    if (!memcmp(h, PARALLELS_MAGIC, 16)) {
        s->off_multiplier = 1;
        sectors &= 0xffffffffu;     /* the high half is not used */
    } else if (!memcmp(h, PARALLELS_MAGIC2, 16)) {
        s->off_multiplier = qimg_ld_le32(h + 28);
    } else {
        return qimg_error_set(err, -EINVAL, "Image not in Parallels format");
    }
    s->tracks = qimg_ld_le32(h + 28);
    if (!s->tracks)
        return qimg_error_set(err, -EINVAL, "Invalid image: Zero sectors per "
                              "track");
    if (s->tracks > PARALLELS_MAX_TRACKS)
        return qimg_error_set(err, -EFBIG, "Invalid image: Too big cluster");
    s->cluster_size = s->tracks * 512;
    if (qimg_ld_le32(h + 32) > PARALLELS_MAX_BAT_ENTRIES)
        return qimg_error_set(err, -EFBIG, "Catalog too large");
    node->size = sectors * 512;
    /* QEMU refuses what wraps past its largest length, and then every
     * size request for what does not fit 63 bits: we refuse both. */
    if (sectors > PARALLELS_MAX_SECTORS || node->size > QIMG_MAX_LENGTH)
        return qimg_error_set(err, -EFBIG, "Could not refresh total sector "
                              "count: %s", strerror(EFBIG));
    return 0;
}

static int load_bat(struct qimg_image *node, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    uint32_t n = qimg_ld_le32(s->header + 32);
    struct qimg_table_geom g = {
        .offset = PARALLELS_HEADER_LEN, .n = n, .esize = 4,
        .max_bytes = PARALLELS_MAX_BAT_BYTES,
    };
    int ret;

    if ((uint64_t)n * 4 > PARALLELS_MAX_BAT_BYTES)
        return qimg_error_set(err, -EFBIG, "Catalog of %llu bytes is larger "
                              "than qimg's limit of %u bytes",
                              (unsigned long long)n * 4,
                              PARALLELS_MAX_BAT_BYTES);
    /* Entries past the end of the file read as 0, as in QEMU. */
    ret = qimg_table_load(&s->bat, node->file, &g, "BAT", err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(-ret));
    /* QEMU's data_end: data_off in sectors, or when 0 the end of the BAT
     * in bytes (taken as sectors), then past every allocated cluster. */
    s->data_end = qimg_ld_le32(s->header + 48);
    if (!s->data_end)
        s->data_end = (PARALLELS_HEADER_LEN + 4ull * n + 511) & ~511ull;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = qimg_table_get(&s->bat, i) * s->off_multiplier;
        if (off >= s->data_end)
            s->data_end = off + s->tracks;
    }
    return 0;
}

/* prealloc-size and prealloc-mode (the core refuses others after the
 * open). */
static int runtime_opts(struct qimg_image *node, const struct qimg_opts *opts,
                        struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    const char *mode = qimg_opts_get(opts, "prealloc-mode");
    uint64_t size;
    int ret;

    ret = qimg_opts_get_size(opts, "prealloc-size",
                             PARALLELS_DEFAULT_PREALLOC_SIZE, &size, err);
    if (ret < 0)
        return ret;
    s->prealloc_sectors = QIMG_MAX((uint64_t)s->tracks, size >> 9);
    s->prealloc_mode = PARALLELS_PREALLOC_FALLOC;
    if (mode && !strcmp(mode, "truncate"))
        s->prealloc_mode = PARALLELS_PREALLOC_TRUNCATE;
    else if (mode && strcmp(mode, "falloc"))
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s",
                              mode);
    return 0;
}

static int parallels_open(struct qimg_image *node, const struct qimg_opts *opts,
                          struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t ext_off;
    int ret;

    /* A short file reads as zeroes past its end, as in QEMU. */
    ret = node->file->ops->pread(node->file, 0, PARALLELS_HEADER_LEN,
                                 s->header, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(-ret));
    ret = check_header(node, err);
    if (!ret)
        ret = load_bat(node, err);
    if (ret < 0)
        return ret;
    if (qimg_ld_le32(s->header + 44) == PARALLELS_INUSE_MAGIC) {
        s->header_unclean = true;
        if (!node->read_only && !(node->flags & QIMG_OPEN_CHECK)) {
            ret = qimg_error_set(err, -EACCES, "parallels: Image was not "
                                 "closed correctly; cannot be opened "
                                 "read/write");
            goto fail;
        }
    }
    ret = runtime_opts(node, opts, err);
    if (ret < 0)
        goto fail;
    ext_off = qimg_ld_le64(s->header + 56);
    if (ext_off && !node->read_only) {
        /* QEMU ignores the extension of a writable image. */
        qimg_message(QIMG_MSG_WARNING, "Format Extension ignored in RW mode\n");
    } else if (ext_off) {
        ret = parallels_read_extension(node, ext_off << 9, err);
        if (ret < 0)
            goto fail;
    }
    if (!node->read_only) {
        qimg_st_le32(s->header + 44, PARALLELS_INUSE_MAGIC);
        ret = parallels_write_header(node, err);
        if (ret == 0)
            ret = node->file->ops->flush(node->file, err);
        if (ret < 0)
            goto fail;
        s->writable = true;
    }
    return 0;
fail:
    qimg_table_release(&s->bat);
    return ret;
}

static void parallels_close(struct qimg_image *node)
{
    struct parallels_state *s = node->state;
    struct qimg_error err;

    if (s->writable) {
        /* Closed cleanly; the file ends where the data does. */
        qimg_st_le32(s->header + 44, 0);
        if (parallels_write_header(node, &err) == 0)
            node->file->ops->flush(node->file, &err);
        node->file->ops->truncate(node->file, s->data_end * 512,
                                  QIMG_PREALLOC_OFF, &err);
    }
    qimg_table_release(&s->bat);
}

/* ---- data path ------------------------------------------------------------ */

/* A run of clusters from off: unallocated ones, or allocated ones
 * contiguous in the file.  Called with node->lock held. */
static int parallels_map(struct qimg_image *node, uint64_t off, uint64_t len,
                         struct qimg_map_ext *m, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t cs = s->cluster_size, i = off / cs, in = off % cs;
    uint64_t first = i < s->bat.n ? parallels_cluster_offset(s, i) : 0;
    uint64_t n = 1, end = i + qimg_div_round_up(in + len, cs);

    for (; i + n < end; n++) {
        uint64_t o;
        if (i + n >= s->bat.n) {
            /* Past the BAT (shorter than the virtual size) all is
             * unallocated: one step, not one per cluster. */
            if (!first)
                n = end - i;
            break;
        }
        o = parallels_cluster_offset(s, i + n);
        if (first ? o != first + n * cs : o != 0)
            break;
    }
    m->kind = first ? QIMG_MAP_DATA : QIMG_MAP_UNALLOC;
    m->host = first + in;
    m->len = QIMG_MIN(len, n * cs - in);
    if (first && !qimg_range_ok(m->host, m->len, QIMG_MAX_LENGTH))
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return 0;
}

static int parallels_pread(struct qimg_image *node, uint64_t off, size_t len,
                           void *buf, struct qimg_error *err)
{
    return qimg_table_pread(node, off, len, buf, parallels_map, err);
}

static int parallels_block_status(struct qimg_image *node, uint64_t off,
                                  uint64_t len, struct qimg_extent *ext,
                                  struct qimg_error *err)
{
    return qimg_table_block_status(node, off, len, ext, parallels_map, false,
                                   err);
}

/*
 * A new cluster at the end of the data area, the file grown first when
 * it does not reach that far, by the preallocation as well.
 */
static int parallels_allocate(struct qimg_image *node, uint64_t block_off,
                              uint64_t *host, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t entry = s->data_end / s->off_multiplier, space = s->tracks;
    int64_t fsize = node->file->ops->get_size(node->file);
    int ret;

    /* Beyond the BAT QEMU would abort; an entry must fit 32 bits. */
    if (block_off / s->cluster_size >= s->bat.n || entry > UINT32_MAX)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "%s", strerror((int)-fsize));
    if (s->data_end + space > ((uint64_t)fsize + 511) / 512) {
        space += s->prealloc_sectors;
        ret = node->file->ops->truncate(
            node->file, (s->data_end + space) * 512,
            s->prealloc_mode == PARALLELS_PREALLOC_FALLOC ? QIMG_PREALLOC_FALLOC
                                                          : QIMG_PREALLOC_OFF,
            err);
        if (ret < 0)
            return ret;
    }
    *host = entry * s->off_multiplier * 512;
    return 0;
}

static int parallels_commit(struct qimg_image *node, uint64_t block_off,
                            uint64_t host, enum qimg_map_kind was,
                            struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t i = block_off / s->cluster_size;

    qimg_table_set(&s->bat, i, host / 512 / s->off_multiplier);
    s->data_end += s->tracks;
    return qimg_table_store(&s->bat, i, 1, err);
}

static int parallels_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                            const void *buf, struct qimg_error *err)
{
    struct parallels_state *s = node->state;
    const struct qimg_table_write_ops ops = {
        .map = parallels_map, .block_size = s->cluster_size,
        .allocate = parallels_allocate, .commit = parallels_commit,
        /* allocate() grew the file over the cluster: it reads as zero
         * already, and keeps the preallocation's allocation.  With a
         * backing file (--image-opts backing=...) QEMU copies the
         * backing file's data into the rest of a new cluster. */
        .new_block_reads_zero = true,
        .fill_from_backing = node->backing != NULL,
    };

    return qimg_table_pwrite(node, off, len, buf, &ops, err);
}

static int parallels_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static const char *const parallels_runtime_opts[] = {"prealloc-size",
                                                    "prealloc-mode", NULL};

const struct qimg_format qimg_format_parallels = {
    .name = "parallels",
    .runtime_opts = parallels_runtime_opts,
    .supports_backing = true,
    /* QEMU's driver has no bdrv_get_info: no cluster size, no dirty flag. */
    .no_get_info = true,
    .description = "Parallels expandable image",
    .state_size = sizeof(struct parallels_state),
    .create_opts = parallels_create_opts,
    .n_create_opts = PARALLELS_N_CREATE_OPTS,
    .probe = parallels_probe,
    .open = parallels_open,
    .close = parallels_close,
    .create = parallels_create,
    .pread = parallels_pread,
    .pwrite = parallels_pwrite,
    .flush = parallels_flush,
    .block_status = parallels_block_status,
    .check = parallels_check,
};
