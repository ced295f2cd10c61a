/*
 * copy-offload.c - convert -C: let the kernel copy data between the files
 * under raw images (copy_file_range), so it can share extents or copy on
 * the server side.
 *
 * Block status tells where guest bytes live in the host file
 * (OFFSET_VALID); a raw target maps guest offsets linearly the same way.
 * We open those files a second time for the copy: the image's own
 * descriptors (and their OFD locks) stay untouched, and fdatasync through
 * the image's descriptor covers what we wrote since it is per inode.
 * Anything else (compressed or unmapped data, non-raw targets, a kernel or
 * filesystem that refuses) returns an error and the engine falls back to
 * reading and writing, as qemu-img does.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "copy/copy.h"
#include "core/block.h"
#include "core/util.h"

#define OFFLOAD_MAX_FILES 16

struct offload_file {
    char *path;
    bool write;
    int fd;
};

struct copy_offload {
    pthread_mutex_t lock;
    struct offload_file files[OFFLOAD_MAX_FILES];
    size_t n;
};

struct copy_offload *copy_offload_new(void)
{
    struct copy_offload *o = calloc(1, sizeof(*o));
    if (o)
        pthread_mutex_init(&o->lock, NULL);
    return o;
}

void copy_offload_free(struct copy_offload *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->n; i++) {
        close(o->files[i].fd);
        free(o->files[i].path);
    }
    pthread_mutex_destroy(&o->lock);
    free(o);
}

/* A descriptor for path, opened once and kept for the whole copy. */
static int get_fd(struct copy_offload *o, const char *path, bool write)
{
    int fd = -ENOTSUP;

    pthread_mutex_lock(&o->lock);
    for (size_t i = 0; i < o->n; i++) {
        if (o->files[i].write == write && !strcmp(o->files[i].path, path)) {
            fd = o->files[i].fd;
            goto out;
        }
    }
    if (o->n == OFFLOAD_MAX_FILES)
        goto out;
    fd = open(path, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        fd = -errno;
        goto out;
    }
    o->files[o->n].path = strdup(path);
    if (!o->files[o->n].path) {
        close(fd);
        fd = -ENOMEM;
        goto out;
    }
    o->files[o->n].write = write;
    o->files[o->n].fd = fd;
    o->n++;
out:
    pthread_mutex_unlock(&o->lock);
    return fd;
}

/* Where [off, off+len) of img lives in a host file, if it lies there as is. */
static int host_location(struct qimg_image *img, uint64_t off, uint64_t len,
                         bool chain, const char **file, uint64_t *host_off)
{
    struct qimg_extent ext;
    struct qimg_error err;
    int ret = chain ? qimg_block_status_chain(img, NULL, off, len, &ext, &err)
                    : qimg_block_status(img, off, len, &ext, &err);

    if (ret < 0)
        return ret;
    /* Network storages name their node (nbd://...), not a local file. */
    if (!(ext.flags & QIMG_BS_OFFSET_VALID) || !ext.host_file ||
        qimg_path_has_protocol(ext.host_file) ||
        (ext.flags & QIMG_BS_COMPRESSED))
        return -ENOTSUP;
    /* A source extent must hold the whole range as data. */
    if (chain && (ext.length < len || !(ext.flags & QIMG_BS_DATA)))
        return -ENOTSUP;
    *file = ext.host_file;
    *host_off = ext.host_offset;
    return 0;
}

int copy_offload_range(struct copy_offload *o, struct qimg_image *src,
                       uint64_t soff, struct qimg_image *dst, uint64_t doff,
                       uint64_t len)
{
    const char *sfile, *dfile;
    uint64_t shost, dhost;
    int sfd, dfd, ret;

    /* Only raw maps every guest byte to one place we may write directly. */
    if (strcmp(qimg_image_format(dst), "raw") || !qimg_range_ok(doff, len,
                                                   qimg_image_size(dst)))
        return -ENOTSUP;
    ret = host_location(src, soff, len, true, &sfile, &shost);
    if (!ret)
        ret = host_location(dst, doff, len, false, &dfile, &dhost);
    if (ret < 0)
        return ret;
    sfd = get_fd(o, sfile, false);
    if (sfd < 0)
        return sfd;
    dfd = get_fd(o, dfile, true);
    if (dfd < 0)
        return dfd;
    while (len) {
        loff_t in = (loff_t)shost, out = (loff_t)dhost;
        size_t n = (size_t)QIMG_MIN(len, (uint64_t)(1u << 30));
        ssize_t done = copy_file_range(sfd, &in, dfd, &out, n, 0);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (done == 0)
            return -EIO;     /* source shorter than it claimed */
        shost += (uint64_t)done;
        dhost += (uint64_t)done;
        len -= (uint64_t)done;
    }
    return 0;
}
