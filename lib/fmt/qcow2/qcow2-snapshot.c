/*
 * qcow2-snapshot.c - the internal snapshot table: reading and validating
 * it at open, listing, and loading a snapshot read-only (for convert -l and
 * measure -l).  Creating, applying and deleting snapshots build on this.
 *
 * Table entry (qcow2.txt, "Snapshots"): l1_table_offset(8) l1_size(4)
 * id_str_size(2) name_size(2) date_sec(4) date_nsec(4) vm_clock_nsec(8)
 * vm_state_size(4) extra_data_size(4), extra data (vm_state_size_large(8)
 * disk_size(8) icount(8), each optional), id, name, padding to 8 bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

/* QEMU bounds the whole table to 64 MiB (QCOW_MAX_SNAPSHOTS_SIZE) and the
 * extra data per entry to 1 KiB. */
#define QCOW2_MAX_SNAPSHOTS_SIZE (64u << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024

void qcow2_snapshots_free(struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->nb_snapshots && s->snapshots; i++) {
        free(s->snapshots[i].id);
        free(s->snapshots[i].name);
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

static char *dup_field(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

/* Parse one entry at buf[pos]; returns its padded size or a negative errno. */
static int64_t parse_entry(struct qcow2_state *s, const uint8_t *buf,
                           uint64_t pos, uint64_t len,
                           struct qcow2_snapshot *sn, struct qimg_error *err)
{
    uint32_t extra;
    uint16_t id_len, name_len;
    uint64_t need;

    if (pos > len || len - pos < 40)
        return qimg_error_set(err, -EINVAL, "Snapshot table is truncated");
    sn->l1_table_offset = qimg_ld_be64(buf + pos);
    sn->l1_size = qimg_ld_be32(buf + pos + 8);
    id_len = qimg_ld_be16(buf + pos + 12);
    name_len = qimg_ld_be16(buf + pos + 14);
    sn->date_sec = qimg_ld_be32(buf + pos + 16);
    sn->date_nsec = qimg_ld_be32(buf + pos + 20);
    sn->vm_clock_nsec = qimg_ld_be64(buf + pos + 24);
    sn->vm_state_size = qimg_ld_be32(buf + pos + 32);
    extra = qimg_ld_be32(buf + pos + 36);
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA)
        return qimg_error_set(err, -EFBIG, "Too much extra metadata in snapshot "
                              "table entry");
    need = 40ull + extra + id_len + name_len;
    if (need > len - pos)
        return qimg_error_set(err, -EINVAL, "Snapshot table is truncated");
    sn->disk_size = 0;
    sn->icount = UINT64_MAX;
    if (extra >= 8)
        sn->vm_state_size = qimg_ld_be64(buf + pos + 40);
    if (extra >= 16)
        sn->disk_size = qimg_ld_be64(buf + pos + 48);
    if (extra >= 24)
        sn->icount = qimg_ld_be64(buf + pos + 56);
    sn->extra_size = extra;
    sn->id = dup_field(buf + pos + 40 + extra, id_len);
    sn->name = dup_field(buf + pos + 40 + extra + id_len, name_len);
    if (!sn->id || !sn->name)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    /* The L1 geometry is checked where the table is used, as in QEMU:
     * a bad entry does not stop the image from opening. */
    return (int64_t)((need + 7) & ~7ull);
}

int qcow2_snapshot_l1_check(const struct qcow2_state *s,
                            const struct qcow2_snapshot *sn,
                            struct qimg_error *err)
{
    if (sn->l1_size > QCOW2_MAX_L1_SIZE / 8)
        return qimg_error_set(err, -EFBIG, "Snapshot L1 table too large");
    if ((sn->l1_table_offset & (s->cluster_size - 1)) ||
        !qimg_range_ok(sn->l1_table_offset, (uint64_t)sn->l1_size * 8,
                       INT64_MAX))
        return qimg_error_set(err, -EINVAL, "Snapshot L1 table offset invalid");
    return 0;
}

int qcow2_snapshots_load(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    /* One entry at most: fixed part, extra data, id and name. */
    const size_t max_entry = 40 + QCOW2_MAX_SNAPSHOT_EXTRA + 2 * 65535 + 8;
    uint64_t pos = 0;
    uint8_t *buf;
    int ret = 0;

    s->snapshots_size = 0;
    if (!s->nb_snapshots)
        return 0;
    buf = malloc(max_entry);
    s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!buf || !s->snapshots) {
        free(buf);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    /* Entry by entry: reads past the end of the file give zeroes, as in
     * QEMU, and the whole table stays within QEMU's size limit. */
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint64_t off;
        if (pos > QCOW2_MAX_SNAPSHOTS_SIZE ||
            qimg_add_overflow(s->snapshots_offset, pos, &off)) {
            ret = qimg_error_set(err, -EFBIG, "Snapshot table too large");
            break;
        }
        ret = node->file->ops->pread(node->file, off, 40, buf, err);
        if (ret < 0)
            goto read_failed;
        size_t var = (size_t)QIMG_MIN(qimg_ld_be32(buf + 36),
                                      (uint32_t)QCOW2_MAX_SNAPSHOT_EXTRA + 1) +
                     qimg_ld_be16(buf + 12) + qimg_ld_be16(buf + 14);
        ret = node->file->ops->pread(node->file, off + 40, var, buf + 40, err);
        if (ret < 0)
            goto read_failed;
        int64_t n = parse_entry(s, buf, 0, 40 + var, &s->snapshots[i], err);
        if (n < 0) {
            ret = (int)n;
            break;
        }
        pos += (uint64_t)n;
    }
    free(buf);
    if (ret < 0)
        qimg_error_prefix(err, "Could not read snapshots: ");
    s->snapshots_size = pos;
    return ret;
read_failed:    /* QEMU's wording for an I/O error on the table */
    free(buf);
    qimg_error_prefix(err, "Failed to read snapshot table: ");
    return ret;
}

/* Snapshot matching id or name (id first, as QEMU's lookup by either). */
static struct qcow2_snapshot *find(struct qcow2_state *s, const char *id,
                                   const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        if (id && name) {
            if (!strcmp(sn->id, id) && !strcmp(sn->name, name))
                return sn;
        } else if (id && !strcmp(sn->id, id)) {
            return sn;
        } else if (name && !strcmp(sn->name, name)) {
            return sn;
        }
    }
    return NULL;
}

static int qcow2_snapshot_list(struct qimg_image *node,
                               struct qimg_snapshot **out, size_t *n,
                               struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_snapshot *list = calloc(s->nb_snapshots ? s->nb_snapshots : 1,
                                        sizeof(*list));
    if (!list)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        snprintf(list[i].id, sizeof(list[i].id), "%s", sn->id);
        snprintf(list[i].name, sizeof(list[i].name), "%s", sn->name);
        list[i].vm_state_size = sn->vm_state_size;
        list[i].date_sec = sn->date_sec;
        list[i].date_nsec = sn->date_nsec;
        list[i].vm_clock_nsec = sn->vm_clock_nsec;
        list[i].icount = sn->icount;
        list[i].has_icount = sn->icount != UINT64_MAX;
        list[i].disk_size = sn->disk_size;
    }
    *out = list;
    *n = s->nb_snapshots;
    return 0;
}

/* The snapshot's L1 table, checked and in host order (*out: free()). */
int qcow2_snapshot_read_l1(struct qimg_image *node,
                           const struct qcow2_snapshot *sn, uint64_t **out,
                           struct qimg_error *err)
{
    uint64_t *l1;
    int ret = qcow2_snapshot_l1_check(node->state, sn, err);

    if (ret < 0)
        return ret;
    l1 = calloc(QIMG_MAX(sn->l1_size, 1u), 8);
    if (!l1)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, sn->l1_table_offset,
                                 (size_t)sn->l1_size * 8, l1, err);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++)
        l1[i] = be64toh(l1[i]);
    *out = l1;
    return 0;
}

static int qcow2_snapshot_load_tmp(struct qimg_image *node, const char *id,
                                   const char *name, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn;
    uint64_t *l1;
    int ret;

    if (!node->read_only)
        return qimg_error_set(err, -EINVAL, "Could not load snapshot: the image "
                              "must be opened read-only");
    sn = find(s, id, name);
    if (!sn)
        return qimg_error_set(err, -ENOENT, "Can't find snapshot");
    ret = qcow2_snapshot_read_l1(node, sn, &l1, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&node->lock);
    free(s->l1_table);
    s->l1_table = l1;
    s->l1_size = sn->l1_size;
    s->l1_table_offset = sn->l1_table_offset;
    if (sn->disk_size)
        node->size = sn->disk_size;
    pthread_mutex_unlock(&node->lock);
    return 0;
}

const struct qimg_snapshot_ops qcow2_snapshot_ops = {
    .list = qcow2_snapshot_list,
    .load_tmp = qcow2_snapshot_load_tmp,
    .change = qcow2_snapshot_change,
};
