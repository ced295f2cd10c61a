/*
 * registry.c - the one list of format drivers and storages, and lookups
 * over it.  Adding a format means one line in qimg_formats[].
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

/* Listed alphabetically, as qemu-img lists its formats. */
const struct qimg_format *const qimg_formats[] = {
    &qimg_format_parallels,
    &qimg_format_qcow,
    &qimg_format_qcow2,
    &qimg_format_qed,
    &qimg_format_raw,
};
const size_t qimg_n_formats = QIMG_ARRAY_SIZE(qimg_formats);

const struct qimg_format *qimg_format_find(const char *name)
{
    for (size_t i = 0; i < qimg_n_formats; i++)
        if (!strcmp(qimg_formats[i]->name, name))
            return qimg_formats[i];
    return NULL;
}

/* QEMU 7.2's BlockdevDriver enumeration as Debian builds it (the members
 * that need CONFIG_BLKIO are absent): what its QAPI create options accept
 * as a backing format, whatever this build implements. */
static const char *const blockdev_drivers[] = {
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop",
    "compress", "copy-before-write", "copy-on-read", "dmg", "file",
    "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device",
    "http", "https", "iscsi", "luks", "nbd", "nfs", "null-aio", "null-co",
    "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
    "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk",
    "vpc", "vvfat",
};

bool qimg_blockdev_driver_known(const char *name)
{
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(blockdev_drivers); i++)
        if (!strcmp(blockdev_drivers[i], name))
            return true;
    return false;
}

/* The formats QEMU 7.2's qemu-img knows (its --help list, Debian's build
 * with qemu-block-extra): what bdrv_find_format() accepts. */
static const char *const qemu_formats[] = {
    "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "iser",
    "luks", "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels",
    "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd",
    "replication", "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk",
    "vpc", "vvfat",
};

bool qimg_qemu_format_known(const char *name)
{
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(qemu_formats); i++)
        if (!strcmp(qemu_formats[i], name))
            return true;
    return false;
}

size_t qimg_format_count(void)
{
    return qimg_n_formats;
}

const char *qimg_format_name_at(size_t i)
{
    return i < qimg_n_formats ? qimg_formats[i]->name : NULL;
}

bool qimg_format_known(const char *name)
{
    return qimg_format_find(name) != NULL;
}

bool qimg_format_can_create(const char *name)
{
    const struct qimg_format *f = qimg_format_find(name);
    return f && f->create;
}

const struct qimg_storage_ops *qimg_storage_for(const char *filename)
{
    if (qimg_mem_claims(filename))
        return &qimg_storage_memory;
    return &qimg_storage_file;
}

static size_t add_descs(const struct qimg_opt_desc **out, size_t n, size_t max,
                        const struct qimg_opt_desc *d, size_t nd)
{
    for (size_t i = 0; i < nd; i++) {
        bool dup = false;
        for (size_t j = 0; j < n; j++)
            dup |= !strcmp(out[j]->name, d[i].name);
        if (!dup && n < max)
            out[n++] = &d[i];
    }
    return n;
}

int qimg_create_opts(const char *fmt, const char *filename,
                     const struct qimg_opt_desc **out, size_t max,
                     struct qimg_error *err)
{
    const struct qimg_format *f = qimg_format_find(fmt);
    size_t n;

    if (!f)
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    n = add_descs(out, 0, max, f->create_opts, f->n_create_opts);
    if (filename && !f->no_storage) {
        const struct qimg_storage_ops *s = qimg_storage_for(filename);
        n = add_descs(out, n, max, s->create_opts, s->n_create_opts);
    }
    return (int)n;
}

int qimg_storage_open(struct qimg_storage **out, const char *filename,
                      unsigned flags, enum qimg_cache cache,
                      struct qimg_error *err)
{
    struct qimg_storage *st = calloc(1, sizeof(*st));
    int ret;

    *out = NULL;
    if (!st)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    st->ops = qimg_storage_for(filename);
    st->filename = strdup(filename);
    st->read_only = !(flags & QIMG_OPEN_RDWR);
    st->align = 1;
    if (!st->filename) {
        free(st);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    ret = st->ops->open(st, filename, flags, cache, err);
    if (ret < 0) {
        free(st->filename);
        free(st);
        return ret;
    }
    *out = st;
    return 0;
}

void qimg_storage_close(struct qimg_storage *st)
{
    if (!st)
        return;
    st->ops->close(st);
    free(st->filename);
    free(st);
}
