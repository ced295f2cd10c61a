/*
 * qcow2-bitmap.c - persistent dirty bitmaps (qcow2.txt "Bitmaps"): the
 * bitmap directory is read and validated at open so that info can list the
 * bitmaps.  Entry: bitmap_table_offset(8) bitmap_table_size(4) flags(4)
 * type(1) granularity_bits(1) name_size(2) extra_data_size(4), extra data,
 * name, padding to 8 bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

/* QEMU's limits: 65535 bitmaps, a 64 MiB directory, names of 1023 bytes,
 * granularity between 512 B and 2 GiB. */
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIR (64u << 20)
#define QCOW2_MAX_BITMAP_NAME 1023
#define QCOW2_MIN_GRANULARITY_BITS 9
#define QCOW2_MAX_GRANULARITY_BITS 31

#define BME_FLAG_IN_USE (1u << 0)
#define BME_FLAG_AUTO (1u << 1)

void qcow2_bitmaps_free(struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->nb_bitmaps && s->bitmaps; i++)
        free(s->bitmaps[i].name);
    free(s->bitmaps);
    s->bitmaps = NULL;
    s->nb_bitmaps = 0;
}

int qcow2_bitmaps_load(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint32_t nb;
    uint64_t dir_size, dir_off, pos = 0;
    uint8_t *dir;
    int ret = 0;

    /* Without the autoclear bit the extension is stale: ignore it. */
    if (!s->has_bitmaps_ext || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    nb = qimg_ld_be32(s->bitmaps_ext);
    dir_size = qimg_ld_be64(s->bitmaps_ext + 8);
    dir_off = qimg_ld_be64(s->bitmaps_ext + 16);
    if (!nb || nb > QCOW2_MAX_BITMAPS)
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Image has %u bitmaps, "
                              "exceeding the QEMU supported maximum of %u", nb,
                              QCOW2_MAX_BITMAPS);
    if (dir_size > QCOW2_MAX_BITMAP_DIR)
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Bitmap directory is "
                              "too large");
    if (dir_off & (s->cluster_size - 1))
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Invalid bitmap "
                              "directory offset");
    dir = malloc(dir_size ? dir_size : 1);
    s->bitmaps = calloc(nb, sizeof(*s->bitmaps));
    if (!dir || !s->bitmaps) {
        free(dir);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    ret = node->file->ops->pread(node->file, dir_off, dir_size, dir, err);
    for (uint32_t i = 0; !ret && i < nb; i++) {
        struct qcow2_bitmap *bm = &s->bitmaps[i];
        uint32_t extra, name_len;
        uint64_t entry;
        if (pos + 24 > dir_size) {
            ret = qimg_error_set(err, -EINVAL, "Bitmap directory is corrupt");
            break;
        }
        bm->table_offset = qimg_ld_be64(dir + pos);
        bm->table_size = qimg_ld_be32(dir + pos + 8);
        bm->flags = qimg_ld_be32(dir + pos + 12);
        bm->granularity_bits = dir[pos + 17];
        name_len = qimg_ld_be16(dir + pos + 18);
        extra = qimg_ld_be32(dir + pos + 20);
        entry = 24ull + extra + name_len;
        if (name_len > QCOW2_MAX_BITMAP_NAME || entry > dir_size - pos ||
            bm->granularity_bits < QCOW2_MIN_GRANULARITY_BITS ||
            bm->granularity_bits > QCOW2_MAX_GRANULARITY_BITS) {
            ret = qimg_error_set(err, -EINVAL, "Bitmap directory is corrupt");
            break;
        }
        bm->name = malloc(name_len + 1);
        if (!bm->name) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            break;
        }
        memcpy(bm->name, dir + pos + 24 + extra, name_len);
        bm->name[name_len] = '\0';
        s->nb_bitmaps = i + 1;
        pos += (entry + 7) & ~7ull;
    }
    free(dir);
    if (ret < 0)
        qcow2_bitmaps_free(s);
    return ret;
}

json_t *qcow2_bitmaps_info(const struct qcow2_state *s)
{
    json_t *arr = json_array();
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        json_t *o = json_object(), *flags = json_array();
        if (bm->flags & BME_FLAG_IN_USE)
            json_array_append_new(flags, json_string("in-use"));
        if (bm->flags & BME_FLAG_AUTO)
            json_array_append_new(flags, json_string("auto"));
        json_object_set_new(o, "flags", flags);
        json_object_set_new(o, "name", json_string(bm->name));
        json_object_set_new(o, "granularity",
                            json_integer((json_int_t)1 << bm->granularity_bits));
        json_array_append_new(arr, o);
    }
    return arr;
}

/* A bitmap table is at most what the largest image needs at the finest
 * granularity: bounded like QEMU's BME_MAX_TABLE_SIZE (64M entries). */
#define QCOW2_MAX_BITMAP_TABLE (64u << 20)

int qcow2_bitmaps_for_each_range(struct qimg_image *node,
                                 void (*inc)(void *opaque, uint64_t off,
                                             uint64_t len),
                                 void *opaque)
{
    struct qcow2_state *s = node->state;
    uint64_t *table;
    int ret = 0;

    if (!s->nb_bitmaps)
        return 0;
    inc(opaque, qimg_ld_be64(s->bitmaps_ext + 16),
        qimg_ld_be64(s->bitmaps_ext + 8));
    for (uint32_t i = 0; i < s->nb_bitmaps && !ret; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        if (bm->table_size > QCOW2_MAX_BITMAP_TABLE)
            return -EFBIG;
        inc(opaque, bm->table_offset, (uint64_t)bm->table_size * 8);
        table = malloc(bm->table_size ? (size_t)bm->table_size * 8 : 1);
        if (!table)
            return -ENOMEM;
        ret = node->file->ops->pread(node->file, bm->table_offset,
                                     (size_t)bm->table_size * 8, table, NULL);
        for (uint32_t k = 0; !ret && k < bm->table_size; k++) {
            uint64_t e = be64toh(table[k]) & 0x00fffffffffffe00ull;
            if (e)
                inc(opaque, e, s->cluster_size);
        }
        free(table);
    }
    return ret;
}
