/*
 * copy-map.c - reading guest data in place (qimg_map in qimg.h), for
 * compare.  Reading both images copies every byte from the page cache into
 * our buffers before memcmp looks at it once: two thirds of compare's CPU
 * time was that copy.  Where block status says a range lies as is in a
 * host file, we map the file's pages and compare them where they are.
 *
 * Not for convert: there the data is written again right after, and the
 * write's copy from a mapping costs what the read's copy saved (measured:
 * no gain, so convert reads).  Nor for small ranges, where mmap and munmap
 * cost more than copying.
 *
 * The cost: touching a mapped page that must come from the disk turns an
 * I/O error into SIGBUS, and so does a file truncated meanwhile.  The
 * caller catches it and reads instead (cmd-compare.c).  Checking first
 * that every page is in the page cache (mincore) cost as much as the copy,
 * and so did populating the pages with MADV_POPULATE_READ, which would
 * report errors.  Ranges past the end of the file are never mapped, nor
 * are images opened with O_DIRECT (-T none: the user asked to bypass the
 * page cache).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/block.h"
#include "core/util.h"

/* Below this, mmap and munmap cost more than the copy they save. */
#define MAP_MIN_BYTES (256u << 10)

/* m->fd open on path: the one already open, or path opened anew. */
static bool open_host(struct qimg_mapping *m, const char *path)
{
    if (m->path && !strcmp(m->path, path))
        return true;
    qimg_mapping_close(m);
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0)
        return false;
    m->path = strdup(path);
    if (!m->path) {
        close(m->fd);
        m->fd = -1;
        return false;
    }
    return true;
}

/* Where [off, off+len) lies as is in one host file, through the chain. */
static bool host_range(struct qimg_image *img, uint64_t off, size_t len,
                       const char **path, uint64_t *host)
{
    struct qimg_extent ext;
    struct qimg_error err = {0};

    if (qimg_block_status_chain(img, NULL, off, len, &ext, &err) < 0)
        return false;
    if ((ext.flags & (QIMG_BS_OFFSET_VALID | QIMG_BS_DATA |
                      QIMG_BS_COMPRESSED)) !=
            (QIMG_BS_OFFSET_VALID | QIMG_BS_DATA) ||
        !ext.host_file || qimg_path_has_protocol(ext.host_file) ||
        ext.length < len)
        return false;
    *path = ext.host_file;
    *host = ext.host_offset;
    return true;
}

const void *qimg_map(struct qimg_image *img, uint64_t off, size_t len,
                     struct qimg_mapping *m)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const char *path;
    uint64_t host, start;
    struct stat st;
    void *addr;

    qimg_unmap(m);
    if (len < MAP_MIN_BYTES || (img->file && img->file->align > 1) ||
        !host_range(img, off, len, &path, &host) || !open_host(m, path) ||
        fstat(m->fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        !qimg_range_ok(host, len, (uint64_t)st.st_size))
        return NULL;
    start = qimg_align_down(host, page);
    addr = mmap(NULL, (size_t)(host - start) + len, PROT_READ, MAP_SHARED,
                m->fd, (off_t)start);
    if (addr == MAP_FAILED)
        return NULL;
    m->addr = addr;
    m->len = (size_t)(host - start) + len;
    return (const uint8_t *)addr + (host - start);
}

void qimg_unmap(struct qimg_mapping *m)
{
    if (m->addr)
        munmap(m->addr, m->len);
    m->addr = NULL;
    m->len = 0;
}

void qimg_mapping_close(struct qimg_mapping *m)
{
    qimg_unmap(m);
    if (m->path)
        close(m->fd);
    free(m->path);
    m->path = NULL;
    m->fd = -1;
}
