/*
 * qcow2-backing.c - what qemu-img rebase and commit need from qcow2:
 * recording a new backing file in the header, and emptying an overlay
 * after its clusters were committed into the backing file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"


/*
 * Rewrite the whole header cluster as QEMU does, so that a shorter name
 * leaves no trace of a longer one.  node->backing_name/fmt hold the new
 * values.
 */
static int write_header_cluster(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    size_t cap = (size_t)s->cluster_size + QCOW2_HEADER_BUF_EXTRA, len;
    uint8_t *buf = calloc(1, cap);
    int ret;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    len = qcow2_build_header(s, node->size, node->backing_name,
                             node->backing_fmt, buf,
                             s->has_feature_table || s->version >= 3);
    if (len > s->cluster_size) {
        free(buf);
        return qimg_error_set(err, -ENOSPC, "No space left in the file header");
    }
    ret = node->file->ops->pwrite(node->file, 0, (size_t)s->cluster_size, buf,
                                  err);
    free(buf);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

int qcow2_change_backing(struct qimg_image *node, const char *backing,
                         const char *backing_fmt, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    char old_name[sizeof(node->backing_name)], old_fmt[sizeof(node->backing_fmt)];
    int ret;

    if (backing && !*backing)
        backing = NULL;
    /* A raw external data file must stand alone: no backing file. */
    if (backing && s->data_file && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
        return qimg_error_set(err, -EINVAL, "Invalid argument");
    if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME)
        return qimg_error_set(err, -EINVAL, "Invalid argument");
    if (backing_fmt && strlen(backing_fmt) >= sizeof(node->backing_fmt))
        return qimg_error_set(err, -EINVAL, "Invalid argument");
    memcpy(old_name, node->backing_name, sizeof(old_name));
    memcpy(old_fmt, node->backing_fmt, sizeof(old_fmt));
    snprintf(node->backing_name, sizeof(node->backing_name), "%s",
             backing ? backing : "");
    snprintf(node->backing_fmt, sizeof(node->backing_fmt), "%s",
             backing_fmt ? backing_fmt : "");
    pthread_mutex_lock(&node->lock);
    ret = write_header_cluster(node, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0) {
        memcpy(node->backing_name, old_name, sizeof(old_name));
        memcpy(node->backing_fmt, old_fmt, sizeof(old_fmt));
    }
    return ret;
}

/* ---- make empty ---------------------------------------------------------- */

static void cache_drop_all(struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].offset)
            qcow2_cache_discard(c, c->e[i].offset);
    }
}

static uint64_t l1_clusters(const struct qcow2_state *s)
{
    return qimg_div_round_up((uint64_t)s->l1_size * 8, s->cluster_size);
}

/*
 * Whether the image can be reset to the layout of a fresh one (header,
 * refcount table, one refcount block, L1 table): nothing else may need
 * clusters, and those clusters must fit into one refcount block.  QEMU
 * makes the same choice.
 */
static bool can_reset(const struct qcow2_state *s)
{
    uint32_t nb_bitmaps = s->has_bitmaps_ext ? qimg_ld_be32(s->bitmaps_ext) : 0;
    return s->version >= 3 && !s->nb_snapshots && !nb_bitmaps &&
           3 + l1_clusters(s) <= (1ull << s->refcount_block_bits) &&
           s->crypt_method != QCOW2_CRYPT_LUKS && !s->data_file;
}

/* Zero a range of the file, efficiently where the storage can (QEMU's
 * fallocate leaves the same extents, hence the same "disk size"). */
static int zero_file(struct qimg_image *node, uint64_t off, uint64_t len,
                     struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    uint8_t *z;
    int ret;

    if (st->ops->pwrite_zeroes && st->ops->pwrite_zeroes(st, off, len, 0,
                                                         err) == 0)
        return 0;
    z = calloc(1, (size_t)len);
    if (!z)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pwrite(node->file, off, (size_t)len, z, err);
    free(z);
    return ret;
}

/* The new refcount structure: table at cluster 1 pointing at the block at
 * cluster 2, which counts clusters 0 .. n-1 once. */
static int write_refcounts(struct qimg_image *node, uint64_t n,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[8];
    uint8_t *block = calloc(1, (size_t)s->cluster_size);
    int ret;

    if (!block)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < n; i++)
        qcow2_refcount_write_entry(s, block, i, 1);
    qimg_st_be64(be, 2 * s->cluster_size);
    ret = node->file->ops->pwrite(node->file, s->cluster_size, 8, be, err);
    if (!ret)
        ret = node->file->ops->pwrite(node->file, 2 * s->cluster_size,
                                      (size_t)s->cluster_size, block, err);
    free(block);
    return ret;
}

/* Point the header at the new L1 table and refcount table. */
static int write_table_pointers(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t hdr[20];
    int ret;

    qimg_st_be64(hdr, 3 * s->cluster_size);       /* l1_table_offset */
    qimg_st_be64(hdr + 8, s->cluster_size);       /* refcount_table_offset */
    qimg_st_be32(hdr + 16, 1);                    /* refcount_table_clusters */
    ret = node->file->ops->pwrite(node->file, 40, sizeof(hdr), hdr, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

/*
 * Reset the image to header, refcount table, refcount block and an empty
 * L1 table, and cut the file after them.  The dirty bit covers the window
 * in which the refcounts on disk are wrong.
 */
static int reset_image(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, nl1 = l1_clusters(s);
    int ret;

    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (ret < 0)
        return ret;
    cache_drop_all(&s->l2_cache);
    cache_drop_all(&s->refblock_cache);
    ret = qcow2_set_dirty(node, true, err);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, QIMG_EV_L1_UPDATE);
    ret = zero_file(node, s->l1_table_offset, nl1 * cs, err);
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, QIMG_EV_EMPTY_IMAGE_PREPARE);
    ret = zero_file(node, cs, (2 + nl1) * cs, err);
    if (ret < 0)
        return ret;
    qimg_storage_event(node->file, QIMG_EV_L1_UPDATE);
    qimg_storage_event(node->file, QIMG_EV_REFTABLE_UPDATE);
    ret = write_table_pointers(node, err);
    if (ret < 0)
        return ret;
    s->l1_table_offset = 3 * cs;
    s->refcount_table_offset = cs;
    s->refcount_table_clusters = 1;
    qimg_storage_event(node->file, QIMG_EV_REFBLOCK_ALLOC);
    ret = write_refcounts(node, 3 + nl1, err);
    if (ret < 0)
        return ret;
    free(s->refcount_table);
    s->refcount_table = NULL;
    ret = qcow2_refcount_load(node, err);
    if (ret < 0)
        return ret;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    /* Clean again, the header written whole (as QEMU marks it clean). */
    ret = node->file->ops->flush(node->file, err);
    if (!ret) {
        s->incompatible &= ~QCOW2_INCOMPAT_DIRTY;
        s->dirty_set = false;
        ret = qcow2_update_header(node, err);
    }
    if (!ret)
        ret = node->file->ops->truncate(node->file, (3 + nl1) * cs,
                                        QIMG_PREALLOC_OFF, err);
    return ret;
}

int qcow2_make_empty(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (can_reset(s)) {
        pthread_mutex_lock(&node->lock);
        ret = reset_image(node, err);
        pthread_mutex_unlock(&node->lock);
        return ret;
    }
    /* Otherwise every entry is emptied, as QEMU's full discard does (L2
     * tables allocated where missing, freed clusters discarded in the
     * file: its pass-discard-snapshot default). */
    pthread_mutex_lock(&node->lock);
    qcow2_discards_begin(node);
    ret = qcow2_empty_range(node, 0, node->size, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    qcow2_discards_end(node);
    pthread_mutex_unlock(&node->lock);
    return ret;
}
