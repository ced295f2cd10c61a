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


void qcow2_snapshots_free(struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->nb_snapshots && s->snapshots; i++) {
        free(s->snapshots[i].id);
        free(s->snapshots[i].name);
        free(s->snapshots[i].extra_unknown);
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

/*
 * Read the snapshot table, entry by entry as QEMU does (reads past the end
 * of the file give zeroes).  With repair (check -r all), what QEMU's
 * repair drops is dropped instead of refused: extra data past 1 KiB
 * (counted in *extra_dropped) and the entries from the one that makes the
 * table exceed 64 MiB (counted in *nb_reduced; nb_snapshots shrinks).
 */
int qcow2_snapshots_read(struct qimg_image *node, bool repair, int *nb_reduced,
                         int *extra_dropped, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t off = s->snapshots_offset, length = 0;
    uint8_t h[40], extra[24];
    int ret = 0;

    s->snapshots_size = 0;
    if (!s->nb_snapshots)
        return 0;
    s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t pre = off, extra_end, xlen;
        uint32_t xsize;
        uint16_t idl, nl;
        uint8_t *idbuf;

        length = (length + 7) & ~7ull;
        off = (off + 7) & ~7ull;
        ret = node->file->ops->pread(node->file, off, 40, h, err);
        if (ret < 0)
            goto read_failed;
        off += 40;
        sn->l1_table_offset = qimg_ld_be64(h);
        sn->l1_size = qimg_ld_be32(h + 8);
        idl = qimg_ld_be16(h + 12);
        nl = qimg_ld_be16(h + 14);
        sn->date_sec = qimg_ld_be32(h + 16);
        sn->date_nsec = qimg_ld_be32(h + 20);
        sn->vm_clock_nsec = qimg_ld_be64(h + 24);
        sn->vm_state_size = qimg_ld_be32(h + 32);
        xsize = qimg_ld_be32(h + 36);
        sn->extra_size = xsize;
        if (xsize > QCOW2_MAX_SNAPSHOT_EXTRA) {
            if (!repair) {
                ret = qimg_error_set(err, -EFBIG, "Too much extra metadata in "
                                     "snapshot table entry %u\nYou can "
                                     "force-remove this extra metadata with "
                                     "qemu-img check -r all", i);
                goto fail;
            }
            qimg_message(QIMG_MSG_PLAIN, "Discarding too much extra metadata in "
                         "snapshot table entry %u (%u > %u)\n", i, xsize,
                         QCOW2_MAX_SNAPSHOT_EXTRA);
            (*extra_dropped)++;
            sn->extra_size = QCOW2_MAX_SNAPSHOT_EXTRA;
        }
        xlen = QIMG_MIN(24u, xsize);
        memset(extra, 0, sizeof(extra));
        ret = node->file->ops->pread(node->file, off, xlen, extra, err);
        if (ret < 0)
            goto read_failed;
        off += xlen;
        if (xsize >= 8)
            sn->vm_state_size = qimg_ld_be64(extra);
        sn->disk_size = xsize >= 16 ? qimg_ld_be64(extra + 8) : node->size;
        sn->icount = xsize >= 24 ? qimg_ld_be64(extra + 16) : UINT64_MAX;
        if (xsize > 24) {
            /* Unknown extra data is kept and written back. */
            extra_end = off + xsize - 24;
            sn->extra_unknown = malloc(sn->extra_size - 24);
            if (!sn->extra_unknown) {
                ret = qimg_error_set(err, -ENOMEM, "Out of memory");
                goto fail;
            }
            ret = node->file->ops->pread(node->file, off, sn->extra_size - 24,
                                         sn->extra_unknown, err);
            if (ret < 0)
                goto read_failed;
            off = extra_end;
        }
        idbuf = malloc((size_t)idl + nl + 1);
        if (!idbuf) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto fail;
        }
        ret = node->file->ops->pread(node->file, off, (size_t)idl + nl, idbuf,
                                     err);
        if (!ret) {
            sn->id = dup_field(idbuf, idl);
            sn->name = dup_field(idbuf + idl, nl);
        }
        free(idbuf);
        if (ret < 0)
            goto read_failed;
        if (!sn->id || !sn->name) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto fail;
        }
        off += (uint64_t)idl + nl;
        /* Extra data as it will be written back (possibly cut). */
        length += 40 + sn->extra_size + idl + nl;
        if (length > QCOW2_MAX_SNAPSHOTS_SIZE ||
            off - s->snapshots_offset > INT32_MAX) {
            if (!repair) {
                ret = qimg_error_set(err, -EFBIG, "Snapshot table is too big\n"
                                     "You can force-remove all %u overhanging "
                                     "snapshots with qemu-img check -r all",
                                     s->nb_snapshots - i);
                goto fail;
            }
            qimg_message(QIMG_MSG_PLAIN, "Discarding %u overhanging snapshots "
                         "(snapshot table is too big)\n", s->nb_snapshots - i);
            *nb_reduced += (int)(s->nb_snapshots - i);
            free(sn->id);
            free(sn->name);
            free(sn->extra_unknown);
            memset(sn, 0, sizeof(*sn));
            s->nb_snapshots = i;
            off = pre;
            break;
        }
    }
    /* The table ends with its last entry (no padding after it). */
    s->snapshots_size = off - s->snapshots_offset;
    return 0;
read_failed:    /* QEMU's wording for an I/O error on the table */
    qimg_error_prefix(err, "Failed to read snapshot table: ");
fail:
    qcow2_snapshots_free(s);
    s->nb_snapshots = 0;
    return ret;
}

int qcow2_snapshots_load(struct qimg_image *node, struct qimg_error *err)
{
    int reduced = 0, dropped = 0;

    return qcow2_snapshots_read(node, false, &reduced, &dropped, err);
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
