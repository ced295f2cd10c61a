/*
 * registry.c - the one list of format drivers and storages, and lookups
 * over it.  Adding a format means one line in qimg_formats[].
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

/* Listed alphabetically, as qemu-img lists its formats. */
const struct qimg_format *const qimg_formats[] = {
    &qimg_format_bochs,
    &qimg_format_cloop,
    &qimg_format_dmg,
    &qimg_format_luks,
    &qimg_format_parallels,
    &qimg_format_qcow,
    &qimg_format_qcow2,
    &qimg_format_qed,
    &qimg_format_raw,
    &qimg_format_vdi,
    &qimg_format_vhdx,
    &qimg_format_vmdk,
    &qimg_format_vpc,
};
const size_t qimg_n_formats = QIMG_ARRAY_SIZE(qimg_formats);

const struct qimg_format *qimg_format_find(const char *name)
{
    for (size_t i = 0; i < qimg_n_formats; i++)
        if (!strcmp(qimg_formats[i]->name, name))
            return qimg_formats[i];
    return NULL;
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

/*
 * Every driver name, formats and storages together, sorted as qemu-img's
 * "Supported formats:" line sorts them (QEMU lists all its block drivers
 * there, protocols included).
 */
#define MAX_DRIVERS 64
static const char *driver_names[MAX_DRIVERS];
static size_t n_driver_names;
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void build_names(void)
{
    for (size_t i = 0; i < qimg_n_formats && n_driver_names < MAX_DRIVERS; i++)
        driver_names[n_driver_names++] = qimg_formats[i]->name;
    for (size_t i = 0; i < qimg_storage_count() && n_driver_names < MAX_DRIVERS;
         i++)
        driver_names[n_driver_names++] = qimg_storage_at(i)->name;
    qsort(driver_names, n_driver_names, sizeof(driver_names[0]), cmp_name);
    /* One name for storages registered once per protocol (nbd, nbd+tcp
     * and nbd+unix are all "nbd"), as QEMU lists each format name once. */
    size_t n = 0;
    for (size_t i = 0; i < n_driver_names; i++)
        if (!n || strcmp(driver_names[n - 1], driver_names[i]))
            driver_names[n++] = driver_names[i];
    n_driver_names = n;
}

size_t qimg_format_count(void)
{
    pthread_once(&names_once, build_names);
    return n_driver_names;
}

const char *qimg_format_name_at(size_t i)
{
    pthread_once(&names_once, build_names);
    return i < n_driver_names ? driver_names[i] : NULL;
}

const char *qimg_format_driver_at(size_t i)
{
    return i < qimg_n_formats ? qimg_formats[i]->name : NULL;
}

const char *qimg_storage_name_at(size_t i)
{
    return i < qimg_storage_count() ? qimg_storage_at(i)->name : NULL;
}

/* As QEMU's bdrv_find_format: formats and storages are all drivers
 * (-f file, -f null-co). */
bool qimg_format_known(const char *name)
{
    return qimg_format_find(name) || qimg_storage_find(name);
}

bool qimg_format_can_create(const char *name)
{
    const struct qimg_format *f = qimg_format_find(name);
    const struct qimg_storage_ops *s = f ? NULL : qimg_storage_find(name);
    return f ? f->create != NULL : s && (s->create || s->create_by_open);
}

int qimg_protocol_check(const char *filename, struct qimg_error *err)
{
    return qimg_storage_for_name(filename, true, err) ? 0 : -EINVAL;
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
    const struct qimg_storage_ops *st = f ? NULL : qimg_storage_find(fmt);
    size_t n;

    if (st && !st->create && !st->create_by_open)   /* -f null-co */
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support image creation", fmt);
    if (st) {   /* -f file: the storage's own options, then as for formats
                 * those of the storage the file name selects */
        n = add_descs(out, 0, max, st->create_opts, st->n_create_opts);
        if (filename) {
            const struct qimg_storage_ops *s = qimg_storage_for(filename);
            n = add_descs(out, n, max, s->create_opts, s->n_create_opts);
        }
        return (int)n;
    }
    if (!f)
        return qimg_error_set(err, -EINVAL, "Unknown file format '%s'", fmt);
    if (!f->create)
        return qimg_error_set(err, -ENOTSUP, "Format driver '%s' does not "
                              "support image creation", fmt);
    n = add_descs(out, 0, max, f->create_opts, f->n_create_opts);
    if (filename && !f->no_storage) {
        const struct qimg_storage_ops *s = qimg_storage_for(filename);
        n = add_descs(out, n, max, s->create_opts, s->n_create_opts);
    }
    return (int)n;
}
