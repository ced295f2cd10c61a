/*
 * qcow2-bitmap-ops.c - persistent dirty bitmaps while an image is open, as
 * QEMU keeps them: a writable open loads every usable bitmap and marks it
 * in use on disk; enabled bitmaps record guest writes in memory; bitmap
 * operations change the in-memory set (removal rewrites the directory at
 * once); close writes every usable bitmap to new clusters, points a new
 * directory at them with in-use cleared and frees the old clusters.  A
 * bitmap found in use at open was not stored cleanly: it is inconsistent,
 * kept as it is and refused by every operation but removal.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

static bool tracks(const struct qcow2_bitmap *bm)
{
    return bm->enabled && !bm->inconsistent && bm->bits;
}

/* Writers test the count without the lock: only metadata operations,
 * which run alone, change it. */
static void recount(struct qcow2_state *s)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        n += tracks(&s->bitmaps[i]);
    __atomic_store_n(&s->bitmaps_tracking, n, __ATOMIC_RELEASE);
}

void qcow2_bitmaps_mark(struct qimg_image *node, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = node->state;

    if (!__atomic_load_n(&s->bitmaps_tracking, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&node->lock);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        if (tracks(&s->bitmaps[i]))
            qcow2_bitmap_set_range(&s->bitmaps[i], off, len);
    pthread_mutex_unlock(&node->lock);
}

/*
 * Guest writes, zeroing and discards mark the enabled persistent bitmaps
 * (after the request, whatever its outcome, as QEMU does).
 */
int qcow2_pwrite_marked(struct qimg_image *node, uint64_t off, size_t len,
                        const void *buf, struct qimg_error *err)
{
    int ret = qcow2_pwrite(node, off, len, buf, err);
    qcow2_bitmaps_mark(node, off, len);
    return ret;
}

int qcow2_pwrite_compressed_marked(struct qimg_image *node, uint64_t off,
                                   size_t len, const void *buf,
                                   struct qimg_error *err)
{
    int ret = qcow2_pwrite_compressed(node, off, len, buf, err);
    qcow2_bitmaps_mark(node, off, len);
    return ret;
}

int qcow2_pwrite_compressed_data_marked(struct qimg_image *node, uint64_t off,
                                        size_t len, const void *buf,
                                        const void *cdata, size_t clen,
                                        struct qimg_error *err)
{
    int ret = qcow2_pwrite_compressed_data(node, off, len, buf, cdata, clen,
                                           err);
    qcow2_bitmaps_mark(node, off, len);
    return ret;
}

int qcow2_pwrite_zeroes_marked(struct qimg_image *node, uint64_t off,
                               uint64_t len, unsigned flags,
                               struct qimg_error *err)
{
    int ret = qcow2_pwrite_zeroes(node, off, len, flags, err);
    qcow2_bitmaps_mark(node, off, len);
    return ret;
}

int qcow2_discard_marked(struct qimg_image *node, uint64_t off, uint64_t len,
                         struct qimg_error *err)
{
    int ret = qcow2_discard(node, off, len, err);
    qcow2_bitmaps_mark(node, off, len);
    return ret;
}

int qcow2_bitmaps_open_rw(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool changed = false;
    int ret;

    s->bitmaps_session = true;
    if (s->bitmaps_stale) {
        /* Stale bitmaps are dropped from the header for good. */
        s->bitmaps_stale = false;
        s->has_bitmaps_ext = false;
        return qcow2_update_header(node, err);
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qcow2_bitmap *bm = &s->bitmaps[i];
        if (bm->inconsistent)
            continue;
        ret = qcow2_bitmap_load_bits(node, bm, err);
        if (ret < 0)
            return ret;
        bm->flags |= QCOW2_BME_FLAG_IN_USE;
        changed = true;
    }
    recount(s);
    return changed ? qcow2_bitmap_dir_update_in_place(node, err) : 0;
}

/*
 * QEMU stores the bitmaps of the directory in their order, then the new
 * ones newest first (it keeps a node's bitmaps newest first).
 */
static void order_for_store(struct qcow2_state *s)
{
    uint32_t n_old = 0, n = s->nb_bitmaps;
    struct qcow2_bitmap tmp;

    for (uint32_t i = 0; i < n; i++) {
        if (!s->bitmaps[i].table_offset)
            continue;
        tmp = s->bitmaps[i];
        memmove(&s->bitmaps[n_old + 1], &s->bitmaps[n_old],
                (i - n_old) * sizeof(tmp));
        s->bitmaps[n_old++] = tmp;
    }
    for (uint32_t i = n_old, j = n - 1; i < j; i++, j--) {
        tmp = s->bitmaps[i];
        s->bitmaps[i] = s->bitmaps[j];
        s->bitmaps[j] = tmp;
    }
}

struct old_table {
    uint64_t offset;
    uint32_t size;
};

/* A store that failed: free what it wrote, keep the old tables, and say
 * so as QEMU does (the command still succeeds). */
static void store_failed(struct qimg_image *node, const struct old_table *old,
                         uint32_t n, const struct qimg_error *why)
{
    struct qcow2_state *s = node->state;
    char nn[32];

    for (uint32_t i = 0; i < n; i++) {
        struct qcow2_bitmap *bm = &s->bitmaps[i];
        if (bm->inconsistent || bm->table_offset == old[i].offset)
            continue;
        qcow2_bitmap_free_table(node, bm->table_offset, bm->table_size, NULL);
        bm->table_offset = old[i].offset;
        bm->table_size = old[i].size;
    }
    qimg_node_name(node, nn, sizeof(nn));
    qimg_message(QIMG_MSG_ERROR, "Lost persistent bitmaps during inactivation "
                 "of node '%s': %s\n", nn, why->msg);
}

int qcow2_bitmaps_close(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct old_table *old;
    uint32_t i;
    int ret = 0;

    if (!s->bitmaps_session)
        return 0;
    s->bitmaps_session = false;
    /* QEMU stores nothing when only inconsistent bitmaps are left. */
    for (i = 0; i < s->nb_bitmaps && s->bitmaps[i].inconsistent; i++)
        ;
    if (i == s->nb_bitmaps)
        return 0;
    order_for_store(s);
    old = calloc(s->nb_bitmaps, sizeof(*old));
    if (!old)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (i = 0; i < s->nb_bitmaps && !ret; i++) {
        struct qcow2_bitmap *bm = &s->bitmaps[i];
        old[i] = (struct old_table){bm->table_offset, bm->table_size};
        if (!bm->inconsistent)
            ret = qcow2_bitmap_store_bits(node, bm, err);
    }
    for (uint32_t k = 0; k < i && !ret; k++)
        if (!s->bitmaps[k].inconsistent)
            s->bitmaps[k].flags = s->bitmaps[k].enabled ? QCOW2_BME_FLAG_AUTO
                                                        : 0;
    if (!ret)
        ret = qcow2_bitmap_dir_store(node, err);
    if (ret < 0) {
        store_failed(node, old, i, err);
        free(old);
        return ret;
    }
    /* Only now that nothing points at them may the old clusters go. */
    for (i = 0; i < s->nb_bitmaps; i++)
        if (!s->bitmaps[i].inconsistent && old[i].offset)
            qcow2_bitmap_free_table(node, old[i].offset, old[i].size, NULL);
    free(old);
    return 0;
}

/* ---- operations --------------------------------------------------------- */

static struct qcow2_bitmap *lookup(struct qimg_image *node, const char *name,
                                   struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int64_t i = qcow2_bitmap_find(s, name);
    if (i < 0) {
        qimg_error_set(err, -ENOENT, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    return &s->bitmaps[i];
}

/* A bitmap that can be used: found and consistent. */
static struct qcow2_bitmap *lookup_usable(struct qimg_image *node,
                                          const char *name,
                                          struct qimg_error *err)
{
    struct qcow2_bitmap *bm = lookup(node, name, err);
    if (bm && bm->inconsistent) {
        qimg_error_set(err, -EPERM, "Bitmap '%s' is inconsistent and cannot "
                       "be used\nTry block-dirty-bitmap-remove to delete this "
                       "bitmap from disk", name);
        return NULL;
    }
    return bm;
}

static int bitmap_list(struct qimg_image *node, struct qimg_bitmap **list,
                       size_t *n, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    *list = calloc(s->nb_bitmaps ? s->nb_bitmaps : 1, sizeof(**list));
    if (!*list)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        struct qimg_bitmap *b = &(*list)[i];
        snprintf(b->name, sizeof(b->name), "%s", s->bitmaps[i].name);
        b->granularity = 1ull << s->bitmaps[i].granularity_bits;
        b->enabled = s->bitmaps[i].enabled;
        b->in_use = s->bitmaps[i].inconsistent;
    }
    *n = s->nb_bitmaps;
    return 0;
}

/* qcow2's conditions for a new persistent bitmap (QEMU's wording). */
static int can_store(struct qimg_image *node, const char *name,
                     uint32_t gbits, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = qimg_div_round_up(qimg_div_round_up(node->size,
                                                         1ull << gbits), 8);
    uint64_t entry = (24 + strlen(name) + 7) & ~7ull;
    char nn[32];
    int ret = 0;

    if (s->version < 3)
        ret = qimg_error_set(err, -ENOTSUP, "Cannot store dirty bitmaps in "
                             "qcow2 v2 files");
    else if (bytes > QCOW2_BME_MAX_PHYS_SIZE ||
             bytes > (uint64_t)QCOW2_BME_MAX_TABLE_SIZE * s->cluster_size)
        ret = qimg_error_set(err, -EINVAL, "Too much space will be occupied by "
                             "the bitmap. Use larger granularity");
    else if (strlen(name) > QCOW2_BME_MAX_NAME)
        ret = qimg_error_set(err, -EINVAL, "Name length exceeds maximum (%u "
                             "characters)", QCOW2_BME_MAX_NAME);
    else if (s->has_bitmaps_ext &&
             qimg_ld_be32(s->bitmaps_ext) >= QCOW2_MAX_BITMAPS)
        ret = qimg_error_set(err, -EINVAL, "Maximum number of persistent "
                             "bitmaps is already reached");
    else if (s->has_bitmaps_ext &&
             s->bitmap_dir_size + entry > QCOW2_MAX_BITMAP_DIR)
        ret = qimg_error_set(err, -EINVAL, "Not enough space in the bitmap "
                             "directory");
    if (ret < 0) {
        qimg_node_name(node, nn, sizeof(nn));
        qimg_error_prefix(err, "Can't make bitmap '%s' persistent in '%s': ",
                          name, nn);
    }
    return ret;
}

static int bitmap_add(struct qimg_image *node, const char *name,
                      uint64_t granularity, bool disabled,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap *bm, *grown;
    uint32_t gbits = 0;
    int ret;

    /* QEMU's default: the cluster size within [4 KiB, 64 KiB]. */
    if (!granularity)
        granularity = QIMG_MIN(QIMG_MAX(s->cluster_size, 4096u), 65536u);
    while ((1ull << gbits) < granularity)
        gbits++;
    ret = can_store(node, name, gbits, err);
    if (ret < 0)
        return ret;
    if (qcow2_bitmap_find(s, name) >= 0)
        return qimg_error_set(err, -EEXIST, "Bitmap already exists: %s", name);
    grown = realloc(s->bitmaps, (s->nb_bitmaps + 1) * sizeof(*s->bitmaps));
    if (!grown)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    s->bitmaps = grown;
    bm = &s->bitmaps[s->nb_bitmaps];
    memset(bm, 0, sizeof(*bm));
    bm->granularity_bits = (uint8_t)gbits;
    bm->nbits = qimg_div_round_up(node->size, granularity);
    bm->name = strdup(name);
    bm->bits = calloc(1, qcow2_bitmap_bytes(bm->nbits) + 1);
    bm->enabled = !disabled;
    bm->zero = true;
    if (!bm->name || !bm->bits) {
        free(bm->name);
        free(bm->bits);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    s->nb_bitmaps++;
    recount(s);
    return 0;
}

static int bitmap_remove(struct qimg_image *node, const char *name,
                         struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap *bm = lookup(node, name, err), gone;
    int ret = 0;

    if (!bm)
        return -ENOENT;
    gone = *bm;
    memmove(bm, bm + 1, (size_t)(s->bitmaps + s->nb_bitmaps - bm - 1) *
                        sizeof(*bm));
    s->nb_bitmaps--;
    recount(s);
    /* A bitmap already in the image leaves its directory at once. */
    if (gone.table_offset) {
        pthread_mutex_lock(&node->lock);
        ret = qcow2_bitmap_dir_store(node, err);
        /* Clusters that cannot be freed (a broken table) just leak. */
        if (!ret)
            qcow2_bitmap_free_table(node, gone.table_offset, gone.table_size,
                                    NULL);
        pthread_mutex_unlock(&node->lock);
    }
    free(gone.name);
    free(gone.bits);
    return ret;
}

static int bitmap_clear(struct qimg_image *node, const char *name,
                        struct qimg_error *err)
{
    struct qcow2_bitmap *bm = lookup_usable(node, name, err);
    if (!bm)
        return err ? err->code : -EINVAL;
    if (bm->bits && !bm->zero)
        memset(bm->bits, 0, qcow2_bitmap_bytes(bm->nbits));
    bm->zero = bm->bits != NULL;
    return 0;
}

static int bitmap_enable(struct qimg_image *node, const char *name,
                         bool enable, struct qimg_error *err)
{
    struct qcow2_bitmap *bm = lookup_usable(node, name, err);
    if (!bm)
        return err ? err->code : -EINVAL;
    bm->enabled = enable;
    recount(node->state);
    return 0;
}

static int bitmap_view(struct qimg_image *node, const char *name,
                       struct qimg_bitmap_view *v, struct qimg_error *err)
{
    struct qcow2_bitmap *bm = lookup_usable(node, name, err);
    int ret;

    if (!bm)
        return err ? err->code : -EINVAL;
    ret = qcow2_bitmap_load_bits(node, bm, err);
    if (ret < 0)
        return ret;
    v->bits = bm->bits;
    v->nbits = bm->nbits;
    v->granularity_bits = bm->granularity_bits;
    v->size = node->size;
    return 0;
}

static int bitmap_merge(struct qimg_image *node, const char *name,
                        struct qimg_image *src, const char *src_name,
                        struct qimg_error *err)
{
    struct qcow2_bitmap *dst = lookup_usable(node, name, err);
    struct qimg_bitmap_view v;
    int ret;

    if (!dst)
        return err ? err->code : -EINVAL;
    ret = qimg_bitmap_view(src, src_name, &v, err);
    if (ret < 0)
        return ret;
    if (v.size != node->size)
        return qimg_error_set(err, -EINVAL, "Bitmaps are of different sizes "
                              "(destination size is %" PRIu64 ", source size "
                              "is %" PRIu64 ") and can't be merged",
                              node->size, v.size);
    dst->zero = false;
    if (v.granularity_bits == dst->granularity_bits) {
        for (uint64_t i = 0; i < qcow2_bitmap_bytes(dst->nbits); i++)
            dst->bits[i] |= v.bits[i];
        return 0;
    }
    /* Each set source bit covers its granule of the guest (zero bytes,
     * the common case, skipped whole). */
    for (uint64_t i = 0; i < v.nbits; i++) {
        if (!(i & 7) && !v.bits[i >> 3]) {
            i += 7;
            continue;
        }
        if (v.bits[i >> 3] & (1u << (i & 7)))
            qcow2_bitmap_set_range(dst, i << v.granularity_bits,
                                   1ull << v.granularity_bits);
    }
    return 0;
}

/* Without the autoclear field (v2) bitmaps could never be trusted. */
static bool bitmap_supported(struct qimg_image *node)
{
    return qcow2_state(node)->version >= 3;
}

const struct qimg_bitmap_ops qcow2_bitmap_ops = {
    .supported = bitmap_supported,
    .list = bitmap_list,
    .add = bitmap_add,
    .remove = bitmap_remove,
    .clear = bitmap_clear,
    .enable = bitmap_enable,
    .view = bitmap_view,
    .merge = bitmap_merge,
};

/* ---- resize and measure ------------------------------------------------- */

int qcow2_bitmaps_can_resize(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        if (!lookup_usable(node, s->bitmaps[i].name, err))
            return -ENOTSUP;
    return 0;
}

int qcow2_bitmaps_resized(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++)
        if (qcow2_bitmap_resize(&s->bitmaps[i], node->size) < 0)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

/* As QEMU estimates it: every bitmap fully allocated, its table, and the
 * directory entries. */
int qcow2_measure_bitmaps(struct qimg_image *src, uint64_t cluster_size,
                          uint64_t *bytes, struct qimg_error *err)
{
    struct qcow2_state *s = src->state;
    uint64_t total = 0, dir = 0;

    (void)err;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[i];
        uint64_t bits = qimg_div_round_up(src->size, 1ull << bm->granularity_bits);
        uint64_t clusters = qimg_div_round_up(qimg_div_round_up(bits, 8),
                                              cluster_size);
        total += clusters * cluster_size +
                 qimg_div_round_up(clusters * 8, cluster_size) * cluster_size;
        dir += (24 + strlen(bm->name) + 7) & ~7ull;
    }
    *bytes = total + qimg_div_round_up(dir, cluster_size) * cluster_size;
    return 0;
}
