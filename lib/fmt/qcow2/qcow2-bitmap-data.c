/*
 * qcow2-bitmap-data.c - the contents of persistent dirty bitmaps: bitmap
 * tables (one entry per cluster of bitmap data: 0 all zeroes, 1 all ones,
 * else the data cluster's offset), loading them into memory, storing them
 * to new clusters as QEMU does, freeing them, and bit operations.
 *
 * In memory a bitmap is a byte array in the on-disk order (bit i is bit
 * i % 8 of byte i / 8), rounded up to whole 64-bit words as QEMU
 * serialises it; bits past nbits stay clear.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

uint64_t qcow2_bitmap_bytes(uint64_t nbits)
{
    return qimg_div_round_up(nbits, 64) * 8;
}

static uint64_t bits_for(uint64_t size, uint8_t gbits)
{
    return qimg_div_round_up(size, 1ull << gbits);
}

static bool entry_valid(const struct qcow2_state *s, uint64_t e)
{
    uint64_t off = e & QCOW2_BME_TABLE_OFFSET_MASK;
    if (e & QCOW2_BME_TABLE_RESERVED)
        return false;
    /* With an offset, the all-ones bit is reserved. */
    return !off || (!(e & QCOW2_BME_TABLE_ALL_ONES) &&
                    !(off & (s->cluster_size - 1)));
}

int qcow2_bitmap_table_load(struct qimg_image *node, uint64_t offset,
                            uint32_t size, uint64_t **table,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t *t;
    int ret;

    *table = NULL;
    if (!size || size > QCOW2_BME_MAX_TABLE_SIZE)
        return qimg_error_set(err, -EINVAL, "Invalid argument");
    t = malloc((size_t)size * 8);
    if (!t)
        return qimg_error_set(err, -ENOMEM, "Cannot allocate memory");
    ret = node->file->ops->pread(node->file, offset, (size_t)size * 8, t, err);
    for (uint32_t i = 0; !ret && i < size; i++) {
        t[i] = be64toh(t[i]);
        if (!entry_valid(s, t[i]))
            ret = qimg_error_set(err, -EINVAL, "Invalid argument");
    }
    if (ret < 0) {
        free(t);
        return ret;
    }
    *table = t;
    return 0;
}

/* Clear the bits past nbits in the last word (all-ones entries, shrink). */
static void clear_tail(struct qcow2_bitmap *bm)
{
    uint64_t bytes = qcow2_bitmap_bytes(bm->nbits);
    for (uint64_t i = bm->nbits; i < bytes * 8; i++)
        bm->bits[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

int qcow2_bitmap_load_bits(struct qimg_image *node, struct qcow2_bitmap *bm,
                           struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t nbits = bits_for(node->size, bm->granularity_bits);
    uint64_t bytes = qcow2_bitmap_bytes(nbits), *table;
    int ret;

    if (bm->bits || !bm->table_offset)
        return 0;
    /* Open checked that the table covers the image and is at most
     * QCOW2_BME_MAX_PHYS_SIZE bytes of data; all bitmaps together are
     * bounded too. */
    if (bytes > QCOW2_MAX_BITMAP_MEMORY - s->bitmaps_memory)
        return qimg_error_set(err, -ENOMEM, "Could not read bitmap '%s' from "
                              "image: Cannot allocate memory", bm->name);
    ret = qcow2_bitmap_table_load(node, bm->table_offset, bm->table_size,
                                  &table, err);
    if (ret < 0)
        return ret;
    bm->bits = calloc(1, bytes ? bytes : 1);
    if (!bm->bits) {
        free(table);
        return qimg_error_set(err, -ENOMEM, "Could not read bitmap '%s' from "
                              "image: Cannot allocate memory", bm->name);
    }
    bm->nbits = nbits;
    for (uint64_t k = 0; !ret && k < bm->table_size; k++) {
        uint64_t start = k * s->cluster_size, n, off;
        if (start >= bytes)
            break;
        n = QIMG_MIN(s->cluster_size, bytes - start);
        off = table[k] & QCOW2_BME_TABLE_OFFSET_MASK;
        if (off)
            ret = node->file->ops->pread(node->file, off, n, bm->bits + start,
                                         err);
        else if (table[k] & QCOW2_BME_TABLE_ALL_ONES)
            memset(bm->bits + start, 0xff, n);
    }
    free(table);
    if (ret < 0) {
        free(bm->bits);
        bm->bits = NULL;
        return ret;
    }
    clear_tail(bm);
    s->bitmaps_memory += bytes;
    return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return !n || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

int qcow2_bitmap_store_bits(struct qimg_image *node, struct qcow2_bitmap *bm,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = qcow2_bitmap_bytes(bm->nbits);
    uint64_t tb_size = qimg_div_round_up(bytes, s->cluster_size);
    uint64_t *table;
    uint8_t *buf;
    int64_t off;
    int ret = 0;

    if (tb_size > QCOW2_BME_MAX_TABLE_SIZE ||
        tb_size * s->cluster_size > QCOW2_BME_MAX_PHYS_SIZE)
        return qimg_error_set(err, -EINVAL, "Bitmap '%s' is too big", bm->name);
    /* An empty image has an empty bitmap, which QEMU cannot store. */
    if (!tb_size)
        return qimg_error_set(err, -ENOMEM, "No memory");
    table = calloc(tb_size ? tb_size : 1, 8);
    buf = malloc(s->cluster_size);
    if (!table || !buf) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t k = 0; k < tb_size && !ret && !bm->zero; k++) {
        uint64_t start = k * s->cluster_size;
        uint64_t n = QIMG_MIN(s->cluster_size, bytes - start);
        if (all_zero(bm->bits + start, n))
            continue;
        off = qcow2_alloc_clusters(node, 1, err);
        if (off < 0) {
            ret = (int)off;
            qimg_error_prefix(err, "Failed to allocate clusters for bitmap "
                              "'%s': ", bm->name);
            break;
        }
        memcpy(buf, bm->bits + start, n);
        memset(buf + n, 0, s->cluster_size - n);
        table[k] = htobe64((uint64_t)off);
        ret = node->file->ops->pwrite(node->file, (uint64_t)off,
                                      s->cluster_size, buf, err);
    }
    if (ret < 0)
        goto out;
    off = qcow2_alloc_clusters(node, qimg_div_round_up(tb_size * 8,
                                                       s->cluster_size), err);
    if (off < 0) {
        ret = (int)off;
        qimg_error_prefix(err, "Failed to allocate clusters for bitmap '%s': ",
                          bm->name);
        goto out;
    }
    ret = node->file->ops->pwrite(node->file, (uint64_t)off, tb_size * 8,
                                  table, err);
    if (!ret) {
        bm->table_offset = (uint64_t)off;
        bm->table_size = (uint32_t)tb_size;
    }
out:
    free(table);
    free(buf);
    return ret;
}

/* A failed free is reported and skipped, as QEMU does: the clusters
 * merely leak. */
void qcow2_free_clusters_or_warn(struct qimg_image *node, uint64_t off,
                                 uint64_t len, bool discard)
{
    struct qimg_error e = {0};

    if (qcow2_free_clusters(node, off, len, &e) < 0)
        qimg_message(QIMG_MSG_PLAIN, "qcow2_free_clusters failed: %s\n",
                     strerror(-e.code));
    else if (discard && node->file->ops->discard)
        node->file->ops->discard(node->file, off, len, NULL);
}

int qcow2_bitmap_free_table(struct qimg_image *node, uint64_t offset,
                            uint32_t size, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t *table;
    int ret = qcow2_bitmap_table_load(node, offset, size, &table, err);

    if (ret < 0)
        return ret;
    /* QEMU always discards freed bitmap data in the file. */
    for (uint32_t k = 0; k < size; k++)
        if (table[k] & QCOW2_BME_TABLE_OFFSET_MASK)
            qcow2_free_clusters_or_warn(node,
                                        table[k] & QCOW2_BME_TABLE_OFFSET_MASK,
                                        s->cluster_size, true);
    free(table);
    qcow2_free_clusters_or_warn(node, offset, (uint64_t)size * 8, false);
    return 0;
}

void qcow2_bitmap_set_range(struct qcow2_bitmap *bm, uint64_t off,
                            uint64_t len)
{
    uint64_t first, last;

    if (!bm->bits || !len || !bm->nbits)
        return;
    bm->zero = false;
    first = off >> bm->granularity_bits;
    last = QIMG_MIN((off + len - 1) >> bm->granularity_bits, bm->nbits - 1);
    while (first <= last && (first & 7)) {
        bm->bits[first >> 3] |= (uint8_t)(1u << (first & 7));
        first++;
    }
    if (first + 8 <= last + 1) {
        memset(bm->bits + (first >> 3), 0xff, (last + 1 - first) >> 3);
        first += ((last + 1 - first) >> 3) << 3;
    }
    for (; first <= last; first++)
        bm->bits[first >> 3] |= (uint8_t)(1u << (first & 7));
}

int qcow2_bitmap_resize(struct qcow2_bitmap *bm, uint64_t size)
{
    uint64_t nbits = bits_for(size, bm->granularity_bits);
    uint64_t old = qcow2_bitmap_bytes(bm->nbits), bytes = qcow2_bitmap_bytes(nbits);
    uint8_t *p;

    if (!bm->bits)
        return 0;
    p = realloc(bm->bits, bytes ? bytes : 1);
    if (!p)
        return -ENOMEM;
    if (bytes > old)
        memset(p + old, 0, bytes - old);
    bm->bits = p;
    bm->nbits = nbits;
    clear_tail(bm);
    return 0;
}
