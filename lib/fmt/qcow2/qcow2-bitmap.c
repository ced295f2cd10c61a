/*
 * qcow2-bitmap.c - persistent dirty bitmaps (qcow2.txt "Bitmaps"): the
 * header extension and the bitmap directory, read and validated at open
 * with QEMU's messages, and written back (to new clusters, or in place
 * when only flags change).
 *
 * Extension (24 bytes): nb_bitmaps(4) reserved(4) directory_size(8)
 * directory_offset(8).  Directory entry: bitmap_table_offset(8)
 * bitmap_table_size(4) flags(4) type(1) granularity_bits(1) name_size(2)
 * extra_data_size(4), extra data, name, padding to 8 bytes.
 *
 * The autoclear bit says the extension is current: a program that does
 * not know bitmaps clears it when it writes, and a clear bit makes the
 * bitmaps stale (ignored, then dropped on the next writable open).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

#define DIR_ENTRY_HEADER 24

static uint64_t dir_entry_size(uint64_t name_len, uint64_t extra)
{
    return (DIR_ENTRY_HEADER + name_len + extra + 7) & ~7ull;
}

void qcow2_bitmaps_free(struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->nb_bitmaps && s->bitmaps; i++) {
        free(s->bitmaps[i].name);
        free(s->bitmaps[i].bits);
    }
    free(s->bitmaps);
    s->bitmaps = NULL;
    s->nb_bitmaps = 0;
    s->bitmaps_tracking = 0;
    s->bitmaps_memory = 0;
}

int64_t qcow2_bitmap_find(const struct qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        if (!strcmp(s->bitmaps[i].name, name))
            return i;
    return -1;
}

void qcow2_bitmaps_sync_ext(struct qcow2_state *s)
{
    uint32_t stored = 0;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        stored += s->bitmaps[i].table_offset != 0;
    s->has_bitmaps_ext = stored != 0;
    memset(s->bitmaps_ext, 0, sizeof(s->bitmaps_ext));
    qimg_st_be32(s->bitmaps_ext, stored);
    qimg_st_be64(s->bitmaps_ext + 8, s->bitmap_dir_size);
    qimg_st_be64(s->bitmaps_ext + 16, s->bitmap_dir_offset);
}

int qcow2_bitmaps_parse_ext(struct qimg_image *node, const uint8_t *data,
                            uint32_t len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint32_t nb;

    if (len != sizeof(s->bitmaps_ext))
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Invalid extension "
                              "length");
    memcpy(s->bitmaps_ext, data, len);
    s->has_bitmaps_ext = true;
    if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        /* Stale: not validated, never used. */
        s->bitmaps_stale = true;
        /* QEMU's warning, then its unterminated hint line. */
        qimg_message(QIMG_MSG_WARNING, "%s\nSome clusters may be leaked, "
                     "run 'qemu-img check -r' on the image file to fix.",
                     s->version < 3
                     ? "This qcow2 v2 image contains bitmaps, but they may "
                       "have been modified by a program without persistent "
                       "bitmap support; so now they must all be considered "
                       "inconsistent"
                     : "a program lacking bitmap support modified this "
                       "file, so all bitmaps are now considered "
                       "inconsistent");
        return 0;
    }
    nb = qimg_ld_be32(data);
    s->bitmap_dir_size = qimg_ld_be64(data + 8);
    s->bitmap_dir_offset = qimg_ld_be64(data + 16);
    if (qimg_ld_be32(data + 4))
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Reserved field is "
                              "not zero");
    if (nb > QCOW2_MAX_BITMAPS)
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: Image has %u "
                              "bitmaps, exceeding the QEMU supported maximum "
                              "of %u", nb, QCOW2_MAX_BITMAPS);
    if (!nb)
        return qimg_error_set(err, -EINVAL, "found bitmaps extension with zero "
                              "bitmaps");
    if (s->bitmap_dir_offset & (s->cluster_size - 1))
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: invalid bitmap "
                              "directory offset");
    if (s->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR)
        return qimg_error_set(err, -EINVAL, "bitmaps_ext: bitmap directory "
                              "size (%" PRIu64 ") exceeds the maximum supported "
                              "size (%u)", s->bitmap_dir_size,
                              QCOW2_MAX_BITMAP_DIR);
    return 0;
}

/* QEMU's check_dir_entry: true when the entry is usable. */
static bool entry_ok(struct qimg_image *node, const uint8_t *e)
{
    struct qcow2_state *s = node->state;
    uint64_t toff = qimg_ld_be64(e), phys;
    uint32_t tsize = qimg_ld_be32(e + 8), flags = qimg_ld_be32(e + 12);
    uint8_t type = e[16], gbits = e[17];

    if (!tsize || !toff || (toff & (s->cluster_size - 1)) ||
        tsize > QCOW2_BME_MAX_TABLE_SIZE ||
        gbits > QCOW2_BME_MAX_GRAN_BITS || gbits < QCOW2_BME_MIN_GRAN_BITS ||
        (flags & ~(QCOW2_BME_FLAG_IN_USE | QCOW2_BME_FLAG_AUTO)) ||
        qimg_ld_be16(e + 18) > QCOW2_BME_MAX_NAME ||
        type != QCOW2_BT_DIRTY_TRACKING)
        return false;
    phys = (uint64_t)tsize * s->cluster_size;
    if (phys > QCOW2_BME_MAX_PHYS_SIZE)
        return false;
    /* The table must cover the image (phys * 8 bits of granularity). */
    return (flags & QCOW2_BME_FLAG_IN_USE) ||
           (uint64_t)node->size <= (phys * 8) << gbits;
}

/* Parse one directory entry at dir[pos] into bm; returns its size or a
 * negative errno. */
static int64_t parse_entry(struct qimg_image *node, const uint8_t *dir,
                           uint64_t pos, uint64_t dir_size,
                           struct qcow2_bitmap *bm, struct qimg_error *err)
{
    const uint8_t *e = dir + pos;
    uint32_t name_len, extra;
    uint64_t size;

    name_len = qimg_ld_be16(e + 18);
    extra = qimg_ld_be32(e + 20);
    size = dir_entry_size(name_len, extra);
    if (size > dir_size - pos)
        return qimg_error_set(err, -EINVAL, "Broken bitmap directory");
    if (extra)
        return qimg_error_set(err, -EINVAL, "Bitmap extra data is not "
                              "supported");
    if (!entry_ok(node, e))
        return qimg_error_set(err, -EINVAL, "Bitmap '%.*s' doesn't satisfy "
                              "the constraints", (int)name_len,
                              (const char *)e + DIR_ENTRY_HEADER);
    bm->table_offset = qimg_ld_be64(e);
    bm->table_size = qimg_ld_be32(e + 8);
    bm->flags = qimg_ld_be32(e + 12);
    bm->granularity_bits = e[17];
    bm->name = malloc(name_len + 1);
    if (!bm->name)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memcpy(bm->name, e + DIR_ENTRY_HEADER, name_len);
    bm->name[name_len] = '\0';
    bm->enabled = (bm->flags & QCOW2_BME_FLAG_AUTO) != 0;
    bm->inconsistent = (bm->flags & QCOW2_BME_FLAG_IN_USE) != 0;
    return (int64_t)size;
}

static int parse_dir(struct qimg_image *node, const uint8_t *dir,
                     uint64_t dir_size, uint32_t nb, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t pos = 0;

    while (pos < dir_size) {
        struct qcow2_bitmap *bm;
        int64_t used;
        if (dir_size - pos < DIR_ENTRY_HEADER)
            return qimg_error_set(err, -EINVAL, "Broken bitmap directory");
        if (s->nb_bitmaps == nb)
            return qimg_error_set(err, -EINVAL, "More bitmaps found than "
                                  "specified in header extension");
        bm = &s->bitmaps[s->nb_bitmaps];
        used = parse_entry(node, dir, pos, dir_size, bm, err);
        if (used < 0)
            return (int)used;
        s->nb_bitmaps++;
        pos += (uint64_t)used;
    }
    if (s->nb_bitmaps != nb)
        return qimg_error_set(err, -EINVAL, "Less bitmaps found than specified "
                              "in header extension");
    return 0;
}

static int cmp_by_name(const void *a, const void *b, void *arg)
{
    const struct qcow2_bitmap *bm = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(bm[x].name, bm[y].name);
    return c ? c : (x > y) - (x < y);
}

/* Index of the first bitmap whose name an earlier one has, or nb_bitmaps:
 * sorted, so that 65535 names cost no 2^31 comparisons. */
static int64_t first_duplicate(const struct qcow2_state *s)
{
    uint32_t *idx = malloc((s->nb_bitmaps ? s->nb_bitmaps : 1) * sizeof(*idx));
    uint32_t first = s->nb_bitmaps;

    if (!idx)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        idx[i] = i;
    qsort_r(idx, s->nb_bitmaps, sizeof(*idx), cmp_by_name, s->bitmaps);
    /* In a run of equal names, the second lowest index is its duplicate. */
    for (uint32_t i = 1; i < s->nb_bitmaps; i++)
        if (!strcmp(s->bitmaps[idx[i]].name, s->bitmaps[idx[i - 1]].name) &&
            (i < 2 || strcmp(s->bitmaps[idx[i]].name,
                             s->bitmaps[idx[i - 2]].name)))
            first = QIMG_MIN(first, idx[i]);
    free(idx);
    return first;
}

/* QEMU loads every bitmap at open, one after the other: a second one of
 * the same name or a bad table entry fails it. */
static int check_tables(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int64_t dup = first_duplicate(s);
    uint64_t read = 0;

    if (dup < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *bm = &s->bitmaps[i];
        uint64_t *table, need;
        int ret;
        if (i == dup)
            return qimg_error_set(err, -EINVAL, "Bitmap already exists: %s",
                                  bm->name);
        if (bm->inconsistent)
            continue;
        /* Each table is at most 8 MiB (entry_ok); many may repeat one. */
        read += (uint64_t)bm->table_size * 8;
        if (read > QCOW2_MAX_BITMAP_TABLES_READ)
            return qimg_error_set(err, -EFBIG, "Bitmap tables too large");
        ret = qcow2_bitmap_table_load(node, bm->table_offset, bm->table_size,
                                      &table, err);
        if (ret < 0) {
            qimg_error_prefix(err, "Could not read bitmap_table table from "
                              "image for bitmap '%s': ", bm->name);
            return ret;
        }
        free(table);
        /* The table holds exactly the clusters the image's bitmap needs. */
        need = qimg_div_round_up(qcow2_bitmap_bytes(qimg_div_round_up(
                   node->size, 1ull << bm->granularity_bits)), s->cluster_size);
        if (need != bm->table_size)
            return qimg_error_set(err, -EINVAL, "Could not read bitmap '%s' "
                                  "from image: Invalid argument", bm->name);
    }
    return 0;
}

int qcow2_bitmaps_load(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint32_t nb = qimg_ld_be32(s->bitmaps_ext);
    uint8_t *dir;
    int ret;

    if (!s->has_bitmaps_ext || s->bitmaps_stale)
        return 0;
    if (!s->bitmap_dir_size)
        return qimg_error_set(err, -EINVAL, "Requested bitmap directory size "
                              "is zero");
    dir = malloc(s->bitmap_dir_size);
    s->bitmaps = calloc(nb, sizeof(*s->bitmaps));
    if (!dir || !s->bitmaps) {
        free(dir);
        return qimg_error_set(err, -ENOMEM, "Failed to allocate space for "
                              "bitmap directory");
    }
    ret = node->file->ops->pread(node->file, s->bitmap_dir_offset,
                                 s->bitmap_dir_size, dir, err);
    if (ret < 0)
        qimg_error_prefix(err, "Failed to read bitmap directory: ");
    else
        ret = parse_dir(node, dir, s->bitmap_dir_size, nb, err);
    free(dir);
    if (!ret)
        ret = check_tables(node, err);
    if (ret < 0)
        qcow2_bitmaps_free(s);
    return ret;
}

/* Serialise the stored bitmaps' entries; *len gets the size. */
static uint8_t *build_dir(const struct qcow2_state *s, uint64_t *len)
{
    uint64_t size = 0, pos = 0;
    uint8_t *dir;

    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        if (s->bitmaps[i].table_offset)
            size += dir_entry_size(strlen(s->bitmaps[i].name), 0);
    dir = calloc(1, size ? size : 1);
    if (!dir)
        return NULL;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        size_t nl = strlen(bm->name);
        if (!bm->table_offset)
            continue;
        qimg_st_be64(dir + pos, bm->table_offset);
        qimg_st_be32(dir + pos + 8, bm->table_size);
        qimg_st_be32(dir + pos + 12, bm->flags);
        dir[pos + 16] = QCOW2_BT_DIRTY_TRACKING;
        dir[pos + 17] = bm->granularity_bits;
        qimg_st_be16(dir + pos + 18, (uint16_t)nl);
        memcpy(dir + pos + DIR_ENTRY_HEADER, bm->name, nl);
        pos += dir_entry_size(nl, 0);
    }
    *len = size;
    return dir;
}

int qcow2_update_header_sync(struct qimg_image *node, struct qimg_error *err)
{
    int ret = qcow2_update_header(node, err);
    return ret < 0 ? ret : node->file->ops->flush(node->file, err);
}

/* Metadata the new directory points at must be on disk before it: the L2
 * tables (after the refblocks they depend on), then the refblocks and the
 * directory itself under one file flush, as 7.2 does (the refblock cache's
 * own flush would be a second fdatasync straight after the first). */
static int flush_caches(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t gen = 0;
    int ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_write_back(node, &s->refblock_cache, &gen, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (!ret)
        qcow2_cache_synced(&s->refblock_cache, gen);
    return ret;
}

int qcow2_bitmap_dir_store(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old_off = s->bitmap_dir_offset, old_size = s->bitmap_dir_size;
    uint64_t len = 0;
    int64_t off = 0;
    uint8_t *dir = build_dir(s, &len);
    int ret = 0;

    if (!dir)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (len) {
        off = qcow2_alloc_clusters(node, qimg_div_round_up(len, s->cluster_size),
                                   err);
        if (off < 0)
            ret = (int)off;
        if (!ret)
            ret = node->file->ops->pwrite(node->file, (uint64_t)off, len, dir,
                                          err);
        if (!ret)
            ret = flush_caches(node, err);
    }
    free(dir);
    if (ret < 0) {
        qimg_error_prefix(err, "Failed to update bitmap extension: ");
        return ret;
    }
    if (len)
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    else
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    s->bitmap_dir_offset = (uint64_t)(len ? off : 0);
    s->bitmap_dir_size = len;
    qcow2_bitmaps_sync_ext(s);
    ret = qcow2_update_header_sync(node, err);
    if (!ret && old_size)
        ret = qcow2_free_clusters(node, old_off, old_size, err);
    return ret;
}

int qcow2_bitmap_dir_update_in_place(struct qimg_image *node,
                                     struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t len = 0;
    uint8_t *dir;
    int ret;

    s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    ret = qcow2_update_header_sync(node, err);
    if (ret < 0)
        return ret;
    dir = build_dir(s, &len);
    if (!dir)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    if (len != s->bitmap_dir_size)
        ret = qimg_error_set(err, -EINVAL, "Can't update bitmap directory: "
                             "Invalid argument");
    if (!ret)
        ret = node->file->ops->pwrite(node->file, s->bitmap_dir_offset, len,
                                      dir, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    free(dir);
    if (ret < 0)
        return ret;
    s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    return qcow2_update_header_sync(node, err);
}

json_t *qcow2_bitmaps_info(const struct qcow2_state *s)
{
    json_t *arr = json_array();
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        json_t *o = json_object(), *flags = json_array();
        if (!bm->table_offset)
            continue;   /* added in this session: not in the image yet */
        if (bm->flags & QCOW2_BME_FLAG_IN_USE)
            json_array_append_new(flags, json_string("in-use"));
        if (bm->flags & QCOW2_BME_FLAG_AUTO)
            json_array_append_new(flags, json_string("auto"));
        json_object_set_new(o, "flags", flags);
        json_object_set_new(o, "name", json_string(bm->name));
        json_object_set_new(o, "granularity",
                            json_integer((json_int_t)1 << bm->granularity_bits));
        json_array_append_new(arr, o);
    }
    return arr;
}

int qcow2_bitmaps_for_each_range(struct qimg_image *node,
                                 void (*inc)(void *opaque, uint64_t off,
                                             uint64_t len),
                                 void *opaque)
{
    struct qcow2_state *s = node->state;

    if (!s->has_bitmaps_ext || s->bitmaps_stale)
        return 0;
    inc(opaque, s->bitmap_dir_offset, s->bitmap_dir_size);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        uint64_t *table;
        if (!bm->table_offset)
            continue;
        inc(opaque, bm->table_offset, (uint64_t)bm->table_size * 8);
        if (qcow2_bitmap_table_load(node, bm->table_offset, bm->table_size,
                                    &table, NULL) < 0)
            return -EINVAL;
        for (uint32_t k = 0; k < bm->table_size; k++) {
            uint64_t e = table[k] & QCOW2_BME_TABLE_OFFSET_MASK;
            if (e)
                inc(opaque, e, s->cluster_size);
        }
        free(table);
    }
    return 0;
}
