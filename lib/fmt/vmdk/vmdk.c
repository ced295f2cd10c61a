/*
 * vmdk.c - the vmdk format driver: probe, open, the extent list, guest
 * I/O over extents, block status, info and the driver table.  See
 * vmdk.h for the split across files and the locking rules.
 *
 * An image is a descriptor (a text file, or text embedded in a sparse
 * extent) and a list of extents laid end to end in guest order.  Opening
 * follows QEMU 7.2 step by step so that the first error reported is the
 * one QEMU reports; where QEMU crashes, loops or allocates without bound
 * on hostile input we refuse with a message instead (docs/LIMITS.md).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <jansson.h>

#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

/* ---- probe ------------------------------------------------------------ */

static bool starts_version(const char *p, const char *end)
{
    static const char *const v[] = {"version=1\n", "version=2\n",
                                     "version=3\n", "version=1\r\n",
                                     "version=2\r\n", "version=3\r\n"};
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(v); i++) {
        size_t n = strlen(v[i]);
        if ((size_t)(end - p) >= n && !memcmp(p, v[i], n))
            return true;
    }
    return false;
}

/* QEMU's probe: a sparse magic, or a descriptor whose first line that is
 * neither a comment nor blank is version=1, 2 or 3. */
static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    const char *p = (const char *)buf, *end = p + len;
    uint32_t magic;

    (void)filename;
    if (len < 4)
        return 0;
    magic = qimg_ld_be32(buf);
    if (magic == VMDK3_MAGIC || magic == VMDK4_MAGIC)
        return 100;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ')
                p++;
            if (p < end && *p == '\r')
                p++;
            if (p == end || *p != '\n')
                return 0;
            p++;
            continue;
        }
        return starts_version(p, end) ? 100 : 0;
    }
    return 0;
}

/* ---- extents ------------------------------------------------------------ */

/* A file's length in whole sectors, as QEMU's block layer sees files. */
static int64_t file_sectors(struct qimg_storage *st)
{
    int64_t size = st->ops->get_size(st);
    if (size < 0)
        return size;
    return (int64_t)qimg_div_round_up((uint64_t)size, VMDK_SECTOR);
}

/* QEMU's ROUND_UP, a mask: exact for powers of two only, as in QEMU. */
uint64_t vmdk_round_up(uint64_t n, uint64_t d)
{
    return (n + d - 1) & (0 - d);
}

int vmdk_read_desc(struct qimg_storage *file, uint64_t off, char **out,
                   struct qimg_error *err)
{
    int64_t sectors = file_sectors(file);
    uint64_t size;
    char *buf;
    int ret;

    *out = NULL;
    if (sectors < 0)
        return qimg_error_set(err, (int)sectors, "Could not access file: %s",
                              strerror((int)-sectors));
    size = (uint64_t)sectors * VMDK_SECTOR;
    if (size < 4)
        return qimg_error_set(err, -EINVAL, "File is too small, not a valid "
                              "image");
    size = QIMG_MIN(size, (uint64_t)VMDK_DESC_READ_MAX);
    buf = malloc(size + 1);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = file->ops->pread(file, off, (size_t)size, buf, err);
    if (ret < 0) {
        qimg_error_set(err, ret, "Could not read from file: %s",
                       strerror(-ret));
        free(buf);
        return ret;
    }
    buf[size] = '\0';
    *out = buf;
    return 0;
}

int vmdk_add_extent(struct qimg_image *node, struct vmdk_extent *proto,
                    struct vmdk_extent **out, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent *e;
    int64_t nb;

    if (proto->kind != VMDK_KIND_FLAT &&
        proto->grain_sectors > VMDK_MAX_GRAIN_SECTORS)
        return qimg_error_set(err, -EFBIG, "Invalid granularity, image may be "
                              "corrupt");
    if (proto->l1_size > VMDK_MAX_GD_ENTRIES)
        return qimg_error_set(err, -EFBIG, "L1 size too big");
    nb = file_sectors(proto->file);
    if (nb < 0)
        return qimg_error_set(err, (int)nb, "Could not get the size of the "
                              "extent: %s", strerror((int)-nb));
    if (s->n_ext == s->cap_ext) {
        size_t cap = s->cap_ext ? s->cap_ext * 2 : 4;
        struct vmdk_extent *n = realloc(s->ext, cap * sizeof(*n));
        if (!n)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        s->ext = n;
        s->cap_ext = cap;
    }
    e = &s->ext[s->n_ext];
    *e = *proto;
    e->start = 0;
    if (s->n_ext) {
        const struct vmdk_extent *prev = &s->ext[s->n_ext - 1];
        e->start = prev->start + prev->sectors;
    }
    /* guest sectors beyond what the block layer takes: refused once the
     * extents are open, as QEMU refuses the total */
    if (e->start > QIMG_MAX_LENGTH / VMDK_SECTOR ||
        e->sectors > QIMG_MAX_LENGTH / VMDK_SECTOR - e->start) {
        s->too_big = true;
        e->start = QIMG_MIN(e->start, QIMG_MAX_LENGTH / VMDK_SECTOR);
        e->sectors = QIMG_MAX_LENGTH / VMDK_SECTOR - e->start;
    }
    if (e->kind == VMDK_KIND_FLAT)
        e->grain_sectors = e->sectors;
    else
        e->l1_entry_sectors = (uint32_t)(e->l2_size * e->grain_sectors);
    e->next_sector = vmdk_round_up((uint64_t)nb, e->grain_sectors);
    if (!e->entry_size)
        e->entry_size = 4;
    s->n_ext++;
    if (out)
        *out = e;
    return 0;
}

static void extent_release(struct qimg_image *node, struct vmdk_extent *e)
{
    vmdk_stream_free(e);
    free(e->gd);
    free(e->rgd);
    if (e->owns_file && e->file != node->file)
        qimg_storage_close(e->file);
}

struct vmdk_extent *vmdk_find_extent(struct vmdk_state *s, uint64_t sector)
{
    size_t lo = 0, hi = s->n_ext;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct vmdk_extent *e = &s->ext[mid];
        if (sector < e->start)
            hi = mid;
        else if (sector - e->start >= e->sectors)
            lo = mid + 1;
        else
            return &s->ext[mid];
    }
    return NULL;
}

/* ---- descriptor and CID --------------------------------------------------- */

static const char *const vmdk_desc_types[] = {
    "monolithicFlat", "vmfs", "vmfsSparse", "seSparse",
    "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
};

int vmdk_open_desc_file(struct qimg_image *node, const char *buf,
                        struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    char ct[128];
    bool known = false;

    if (vmdk_desc_value(buf, "createType", ct, sizeof(ct)))
        return qimg_error_set(err, -EINVAL, "invalid VMDK image descriptor");
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(vmdk_desc_types); i++)
        known |= !strcmp(ct, vmdk_desc_types[i]);
    if (!known)
        return qimg_error_set(err, -ENOTSUP, "Unsupported image type '%s'", ct);
    if (s->nesting >= VMDK_MAX_NESTING)
        return qimg_error_set(err, -ELOOP, "VMDK descriptors nested more than "
                              "%d deep", VMDK_MAX_NESTING);
    snprintf(s->create_type, sizeof(s->create_type), "%s", ct);
    s->desc_offset = 0;
    s->nesting++;
    int ret = vmdk_parse_extents(node, buf, err);
    s->nesting--;
    return ret;
}

/* The descriptor area QEMU reads keys from: DESC_SIZE bytes (and a NUL). */
static int read_desc_area(struct qimg_image *node, char **out,
                          struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    char *desc = calloc(1, VMDK_DESC_SIZE + 1);
    int ret;

    *out = NULL;
    if (!desc)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, s->desc_offset, VMDK_DESC_SIZE,
                                 desc, err);
    if (ret < 0) {
        free(desc);
        return ret;
    }
    *out = desc;
    return 0;
}

static int read_cid(struct qimg_image *node, bool parent, uint32_t *cid)
{
    struct qimg_error err;
    char *desc;
    int ret = read_desc_area(node, &desc, &err);

    if (ret < 0)
        return ret;
    desc[VMDK_DESC_SIZE - 1] = '\0';
    ret = vmdk_desc_cid(desc, parent, cid);
    free(desc);
    return ret;
}

static int parent_open(struct qimg_image *node)
{
    struct qimg_error err;
    char *desc;
    int ret = read_desc_area(node, &desc, &err);

    if (ret < 0)
        return ret;
    ret = vmdk_desc_parent(desc, VMDK_DESC_SIZE + 1, node->backing_name,
                           sizeof(node->backing_name));
    if (ret > 0)
        snprintf(node->backing_fmt, sizeof(node->backing_fmt), "vmdk");
    free(desc);
    return ret < 0 ? ret : 0;
}

/* QEMU reads the backing file's CID once and compares it with our
 * parentCID: a changed parent makes reads of unallocated grains fail. */
bool vmdk_cid_valid(struct qimg_image *node)
{
    struct vmdk_state *s = node->state;
    uint32_t cur;

    if (!s->cid_checked && node->backing) {
        if (node->backing->fmt != &qimg_format_vmdk)
            return false;
        if (read_cid(node->backing, false, &cur) < 0 || cur != s->parent_cid)
            return false;
    }
    s->cid_checked = true;
    return true;
}

static uint32_t random_u32(void)
{
    uint32_t v;
    if (getrandom(&v, sizeof(v), 0) == (ssize_t)sizeof(v))
        return v;
    return (uint32_t)time(NULL) ^ (uint32_t)clock();
}

/*
 * The first write after open gives the image a new random CID, as QEMU
 * does: the descriptor is rewritten whole (a descriptor file grows to a
 * whole sector).  Called with node->lock held.
 */
int vmdk_update_cid(struct qimg_image *node, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    size_t size = VMDK_DESC_SIZE, wlen;
    char *desc;
    int ret;

    if (s->cid_updated)
        return 0;
    if (s->desc_offset == 0) {
        int64_t n = file_sectors(node->file);
        if (n < 0)
            return qimg_error_set(err, (int)n, "%s", strerror((int)-n));
        if ((uint64_t)n * VMDK_SECTOR > VMDK_DESC_FILE_MAX) {
            qimg_message(QIMG_MSG_ERROR, "VMDK description file too big\n");
            return qimg_error_set(err, -EFBIG, "%s", strerror(EFBIG));
        }
        size = (size_t)n * VMDK_SECTOR;
    }
    if (!size)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    desc = calloc(1, size);
    if (!desc)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, s->desc_offset, size, desc, err);
    if (ret < 0)
        goto out;
    ret = vmdk_desc_set_cid(desc, size, random_u32());
    if (ret < 0) {
        qimg_error_set(err, ret, "%s", strerror(-ret));
        goto out;
    }
    /* An embedded descriptor is rewritten only within its own area. */
    wlen = s->desc_offset ? (size_t)QIMG_MIN((uint64_t)size, s->desc_limit)
                          : size;
    if (wlen)
        ret = node->file->ops->pwrite(node->file, s->desc_offset, wlen, desc,
                                      err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (!ret)   /* read without the lock by cid_after_write */
        __atomic_store_n(&s->cid_updated, true, __ATOMIC_RELEASE);
out:
    free(desc);
    return ret;
}

/* ---- open / close --------------------------------------------------------- */

static void vmdk_close(struct qimg_image *node)
{
    struct vmdk_state *s = node->state;
    struct qimg_error err;

    if (!s)
        return;
    if (!node->read_only)
        vmdk_stream_finish(node, false, &err);
    for (size_t i = 0; i < s->n_ext; i++)
        extent_release(node, &s->ext[i]);
    free(s->ext);
    vmdk_cache_drop(s);
    s->ext = NULL;
    s->n_ext = 0;
}

/* Open errors without a message of their own read as QEMU's generic one. */
static int open_failed(struct qimg_image *node, int ret,
                       struct qimg_error *err)
{
    return qimg_error_set(err, ret, "Could not open '%s': %s", node->filename,
                          strerror(-ret));
}

static int vmdk_open(struct qimg_image *node, const struct qimg_opts *opts,
                     struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint64_t total;
    char *buf = NULL;
    uint32_t magic;
    int ret;

    if (qimg_opts_count(opts))
        return qimg_error_set(err, -EINVAL, "Block format 'vmdk' does not "
                              "support the option '%s'", qimg_opts_key(opts, 0));
    ret = vmdk_read_desc(node->file, 0, &buf, err);
    if (ret < 0) {
        ret = -EINVAL;
        goto fail;
    }
    magic = qimg_ld_be32(buf);
    if (magic == VMDK3_MAGIC || magic == VMDK4_MAGIC) {
        ret = vmdk_open_sparse(node, node->file, buf, err);
        s->desc_offset = 0x200;
    } else {
        ret = vmdk_open_desc_file(node, buf, err);
    }
    if (ret < 0)
        goto fail;
    ret = parent_open(node);
    if (ret == 0)
        ret = read_cid(node, false, &s->cid);
    if (ret == 0)
        ret = read_cid(node, true, &s->parent_cid);
    if (ret < 0) {
        open_failed(node, ret, err);
        goto fail;
    }
    total = s->n_ext ? s->ext[s->n_ext - 1].start + s->ext[s->n_ext - 1].sectors
                     : 0;
    if (s->too_big || total > QIMG_MAX_LENGTH / VMDK_SECTOR) {
        ret = qimg_error_set(err, -EFBIG, "Could not refresh total sector "
                             "count: %s", strerror(EFBIG));
        goto fail;
    }
    node->size = total * VMDK_SECTOR;
    free(buf);
    return 0;
fail:
    free(buf);
    node->backing_name[0] = '\0';
    vmdk_close(node);
    return ret;
}

/* ---- guest I/O -------------------------------------------------------------- */

static uint64_t grain_bytes(const struct vmdk_extent *e)
{
    return e->grain_sectors * VMDK_SECTOR;
}

/* A sparse extent without grains (a COWD granularity of 0: QEMU divides
 * by it and crashes) can only fail its I/O. */
static int no_grains(const struct vmdk_extent *e, struct qimg_error *err)
{
    if (e->kind == VMDK_KIND_FLAT || (e->grain_sectors && e->l1_entry_sectors))
        return 0;
    return qimg_error_set(err, -EIO, "Invalid granularity, image may be "
                          "corrupt");
}

/* Byte offset of off inside e, and the bytes left in e from there. */
static uint64_t ext_off(const struct vmdk_extent *e, uint64_t off)
{
    return off - e->start * VMDK_SECTOR;
}

static uint64_t ext_left(const struct vmdk_extent *e, uint64_t off)
{
    return e->sectors * VMDK_SECTOR - ext_off(e, off);
}

/*
 * Map the grain at guest offset off and as many following grains of the
 * same extent as continue it (same state; data contiguous in the file,
 * not compressed), up to len bytes.  *n is the length covered.  Takes
 * the lock.
 */
static int map_run(struct qimg_image *node, struct vmdk_extent *e,
                   uint64_t off, uint64_t len, struct vmdk_lookup *l,
                   uint64_t *n, struct qimg_error *err)
{
    uint64_t gb = grain_bytes(e), eoff = ext_off(e, off);
    uint64_t in, done, cur_sector;
    struct vmdk_lookup cur;
    int ret;

    if ((ret = no_grains(e, err)) < 0)
        return ret;
    in = eoff % gb;
    len = QIMG_MIN(len, ext_left(e, off));
    pthread_mutex_lock(&node->lock);
    ret = vmdk_lookup(node, e, eoff / VMDK_SECTOR, l, err);
    done = QIMG_MIN(len, gb - in);
    cur = *l;
    cur_sector = eoff / VMDK_SECTOR;
    while (!ret && done < len && l->state != VMDK_GRAIN_ERROR &&
           !(l->state == VMDK_GRAIN_DATA && e->compressed)) {
        if (cur.state == VMDK_GRAIN_UNALLOC && cur.l2_sector == 0 &&
            e->l1_entry_sectors == e->l2_size * e->grain_sectors) {
            /* no grain table: its whole directory entry is unallocated */
            uint64_t end = (cur_sector / e->l1_entry_sectors + 1) *
                           e->l1_entry_sectors * VMDK_SECTOR;
            if (end > eoff + done) {
                done = QIMG_MIN(len, end - eoff);
                continue;
            }
        }
        cur_sector = (eoff + done) / VMDK_SECTOR;
        ret = vmdk_lookup(node, e, cur_sector, &cur, err);
        if (ret < 0 || cur.state != l->state ||
            (l->state == VMDK_GRAIN_DATA && cur.host != l->host + in + done))
            break;
        done += QIMG_MIN(len - done, gb);
    }
    pthread_mutex_unlock(&node->lock);
    *n = done;
    return ret < 0 ? ret : 0;
}

static int read_backing_checked(struct qimg_image *node, uint64_t off,
                                size_t n, void *buf, struct qimg_error *err)
{
    bool ok;

    pthread_mutex_lock(&node->lock);
    ok = vmdk_cid_valid(node);
    pthread_mutex_unlock(&node->lock);
    if (!ok)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    return qimg_read_backing(node, off, n, buf, err);
}

static int vmdk_pread(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint8_t *p = buf;

    while (len) {
        struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
        struct vmdk_lookup l;
        uint64_t n;
        int ret;

        if (!e)
            return qimg_error_set(err, -EIO, "%s", strerror(EIO));
        if (e->kind == VMDK_KIND_FLAT) {
            n = QIMG_MIN((uint64_t)len, ext_left(e, off));
            qimg_storage_event(e->file, QIMG_EV_READ_AIO);
            ret = e->file->ops->pread(e->file, e->flat_offset + ext_off(e, off),
                                      (size_t)n, p, err);
        } else if (vmdk_stream_reading(e)) {
            n = QIMG_MIN((uint64_t)len, ext_left(e, off));
            ret = vmdk_stream_read(node, e, ext_off(e, off), (size_t)n, p, err);
        } else {
            ret = map_run(node, e, off, len, &l, &n, err);
            if (ret < 0)
                return ret;
            if (l.state == VMDK_GRAIN_DATA)
                qimg_storage_event(e->file, e->compressed
                                                ? QIMG_EV_READ_COMPRESSED
                                                : QIMG_EV_READ_AIO);
            else if (node->backing && l.state != VMDK_GRAIN_ZERO)
                qimg_storage_event(node->file, QIMG_EV_READ_BACKING_AIO);
            if (l.state == VMDK_GRAIN_DATA && e->compressed)
                ret = vmdk_read_compressed(e, l.host,
                                           ext_off(e, off) % grain_bytes(e),
                                           (size_t)n, p, err);
            else if (l.state == VMDK_GRAIN_DATA)
                ret = e->file->ops->pread(e->file, l.host + ext_off(e, off) %
                                          grain_bytes(e), (size_t)n, p, err);
            else if (node->backing && l.state != VMDK_GRAIN_ZERO)
                ret = read_backing_checked(node, off, (size_t)n, p, err);
            else
                memset(p, 0, (size_t)n);
        }
        if (ret < 0)
            return ret;
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Zeroes or backing data for [from, to) of the grain of guest offset
 * grain_start, written to the new grain at host, in bounded pieces. */
static int fill_grain(struct qimg_image *node, struct vmdk_extent *e,
                      uint64_t grain_start, uint64_t host, uint64_t from,
                      uint64_t to, bool zeroed, struct qimg_error *err)
{
    const uint64_t piece = 1u << 20;
    bool backing = node->backing && !zeroed;
    uint8_t *buf;
    int ret = 0;

    if (from >= to)
        return 0;
    buf = calloc(1, (size_t)QIMG_MIN(piece, to - from));
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t o = from; o < to && !ret; o += piece) {
        size_t n = (size_t)QIMG_MIN(piece, to - o);
        if (backing) {
            qimg_storage_event(e->file, QIMG_EV_COW_READ);
            ret = qimg_read_backing(node, grain_start + o, n, buf, err);
        }
        if (!ret) {
            qimg_storage_event(e->file, QIMG_EV_COW_WRITE);
            ret = e->file->ops->pwrite(e->file, host + o, n, buf, err);
        }
    }
    free(buf);
    return ret;
}

static void note_written(struct vmdk_extent *e, uint64_t end)
{
    uint64_t sec = qimg_div_round_up(end, VMDK_SECTOR);
    if (sec > e->next_sector)
        e->next_sector = sec;
}

/*
 * Allocating write of [off, off+n) starting in an unallocated or zeroed
 * grain (l), with the lock held: whole grains that follow, also free,
 * are allocated as one run (one data write, one table update), as QEMU
 * would lay them out one by one; a partial grain gets its other bytes
 * from the backing file or zeroes first.  Returns the bytes written.
 */
static int64_t write_alloc(struct qimg_image *node, struct vmdk_extent *e,
                           uint64_t off, uint64_t n, const uint8_t *buf,
                           struct vmdk_lookup *l, struct qimg_error *err)
{
    uint64_t gb = grain_bytes(e), eoff = ext_off(e, off);
    uint64_t in = eoff % gb, count = 1, host, len;
    uint32_t vals[VMDK4_MAX_GT_ENTRIES];
    int ret;

    if (l->l2_sector == 0) {
        ret = vmdk_alloc_gt(node, e, l, err);
        if (ret < 0)
            return ret;
    }
    if (in == 0 && n >= gb) {
        /* whole grains: extend over free grains of the same table */
        uint64_t max = QIMG_MIN(n / gb, (uint64_t)(e->l2_size - l->l2_index));
        max = QIMG_MIN(max, (uint64_t)VMDK4_MAX_GT_ENTRIES);
        max = QIMG_MIN(max, QIMG_MAX_REQUEST / gb);
        if (max > 1) {
            ret = vmdk_gt_entries(node, e, l->l1_index, l->l2_index + 1, vals,
                                  (uint32_t)(max - 1), err);
            if (ret < 0)
                return ret;
            while (count < max && (vals[count - 1] == 0 ||
                                   (e->zero_grain &&
                                    vals[count - 1] == VMDK_GTE_ZEROED)))
                count++;
        }
    }
    if (e->next_sector >= VMDK_EXTENT_MAX_SECTORS ||
        e->next_sector + count * e->grain_sectors > VMDK_EXTENT_MAX_SECTORS)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    host = e->next_sector * VMDK_SECTOR;
    e->next_sector += count * e->grain_sectors;
    len = count > 1 ? count * gb : QIMG_MIN(n, gb - in);
    if (count == 1) {
        uint64_t gstart = off - in;
        bool zeroed = l->state == VMDK_GRAIN_ZERO;
        if ((in || len < gb) && node->backing && !zeroed &&
            !vmdk_cid_valid(node))
            return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
        ret = fill_grain(node, e, gstart, host, 0, in, zeroed, err);
        if (!ret)
            ret = fill_grain(node, e, gstart, host, in + len, gb, zeroed, err);
        if (ret < 0)
            return ret;
    }
    qimg_storage_event(e->file, QIMG_EV_WRITE_AIO);
    ret = e->file->ops->pwrite(e->file, host + in, (size_t)len, buf, err);
    if (ret < 0)
        return ret;
    note_written(e, host + in + len);
    for (uint64_t i = 0; i < count; i++)
        vals[i] = (uint32_t)(host / VMDK_SECTOR + i * e->grain_sectors);
    ret = vmdk_set_gte(node, e, l, (uint32_t)count, vals, err);
    return ret < 0 ? ret : (int64_t)len;
}

/* One step of a write inside extent e: returns the bytes done. */
static int64_t write_step(struct qimg_image *node, struct vmdk_extent *e,
                          uint64_t off, uint64_t len, const uint8_t *buf,
                          struct qimg_error *err)
{
    uint64_t gb, n;
    struct vmdk_lookup l;
    int64_t done;
    int ret;

    len = QIMG_MIN(len, ext_left(e, off));
    if ((ret = no_grains(e, err)) < 0)
        return ret;
    if (e->kind == VMDK_KIND_FLAT) {
        qimg_storage_event(e->file, QIMG_EV_WRITE_AIO);
        ret = e->file->ops->pwrite(e->file, e->flat_offset + ext_off(e, off),
                                   (size_t)len, buf, err);
        return ret < 0 ? ret : (int64_t)len;
    }
    gb = grain_bytes(e);
    if (e->compressed) {
        n = QIMG_MIN(len, gb - ext_off(e, off) % gb);
        qimg_storage_event(e->file, QIMG_EV_WRITE_COMPRESSED);
        ret = vmdk_write_compressed(node, e, off, (size_t)n, buf, NULL, 0, err);
        return ret < 0 ? ret : (int64_t)n;
    }
    ret = map_run(node, e, off, len, &l, &n, err);
    if (ret < 0)
        return ret;
    if (l.state == VMDK_GRAIN_ERROR)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    if (l.state == VMDK_GRAIN_DATA) {
        qimg_storage_event(e->file, QIMG_EV_WRITE_AIO);
        ret = e->file->ops->pwrite(e->file, l.host + ext_off(e, off) % gb,
                                   (size_t)n, buf, err);
        if (ret < 0)
            return ret;
        pthread_mutex_lock(&node->lock);
        note_written(e, l.host + ext_off(e, off) % gb + n);
        pthread_mutex_unlock(&node->lock);
        return (int64_t)n;
    }
    pthread_mutex_lock(&node->lock);
    /* look again under the lock: another writer may have allocated it */
    ret = vmdk_lookup(node, e, ext_off(e, off) / VMDK_SECTOR, &l, err);
    if (ret < 0) {
        done = ret;
    } else if (l.state == VMDK_GRAIN_DATA) {
        n = QIMG_MIN(len, gb - ext_off(e, off) % gb);
        qimg_storage_event(e->file, QIMG_EV_WRITE_AIO);
        done = e->file->ops->pwrite(e->file, l.host + ext_off(e, off) % gb,
                                    (size_t)n, buf, err);
        done = done < 0 ? done : (int64_t)n;
    } else if (l.state == VMDK_GRAIN_ERROR) {
        done = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    } else {
        done = write_alloc(node, e, off, len, buf, &l, err);
    }
    pthread_mutex_unlock(&node->lock);
    return done;
}

static int cid_after_write(struct qimg_image *node, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret = 0;

    if (__atomic_load_n(&s->cid_updated, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&node->lock);
    ret = vmdk_update_cid(node, err);
    pthread_mutex_unlock(&node->lock);
    return ret;
}

static int vmdk_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    const uint8_t *p = buf;

    while (len) {
        struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
        int64_t n;
        int ret;

        if (!e)
            return qimg_error_set(err, -EIO, "%s", strerror(EIO));
        if (e->kind == VMDK_KIND_SESPARSE)
            return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
        n = write_step(node, e, off, len, p, err);
        if (n < 0)
            return (int)n;
        ret = cid_after_write(node, err);
        if (ret < 0)
            return ret;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- zeroes ------------------------------------------------------------- */

/*
 * Zeroed grains: whole grains of extents with the zeroed-grain feature
 * get the zeroed entry; anything else is -ENOTSUP, checked for the whole
 * range before anything changes (QEMU's dry run).  The caller writes real
 * zeroes for what this refuses.
 */
static int zero_grains(struct qimg_image *node, uint64_t off, uint64_t len,
                       bool dry, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;

    while (len) {
        struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
        uint32_t v = VMDK_GTE_ZEROED;
        struct vmdk_lookup l;
        uint64_t gb, n;
        int ret;

        if (!e)
            return qimg_error_set(err, -EIO, "%s", strerror(EIO));
        if (e->kind == VMDK_KIND_SESPARSE)
            return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
        if ((ret = no_grains(e, err)) < 0)
            return ret;
        gb = grain_bytes(e);
        n = QIMG_MIN(len, gb - ext_off(e, off) % gb);
        /* QEMU's order: the mapping, then whether a zeroed grain fits */
        pthread_mutex_lock(&node->lock);
        ret = vmdk_lookup(node, e, ext_off(e, off) / VMDK_SECTOR, &l, err);
        if (!ret && e->compressed && l.state == VMDK_GRAIN_DATA) {
            qimg_message(QIMG_MSG_ERROR, "Could not write to allocated cluster "
                         "for streamOptimized\n");
            ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        } else if (!ret && l.state == VMDK_GRAIN_ERROR) {
            ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
        } else if (!ret && (e->kind == VMDK_KIND_FLAT || !e->zero_grain ||
                            ext_off(e, off) % gb || n < gb)) {
            ret = -ENOTSUP;
        } else if (!ret && !dry && l.state != VMDK_GRAIN_ZERO) {
            if (e->compressed)
                ret = vmdk_stream_zero(node, e, &l, err);
            else if (l.l2_sector == 0)
                ret = vmdk_alloc_gt(node, e, &l, err);
            if (!ret && !e->compressed)
                ret = vmdk_set_gte(node, e, &l, 1, &v, err);
        }
        if (!ret)
            ret = vmdk_update_cid(node, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
        off += n;
        len -= n;
    }
    return 0;
}

/* Write real zeroes over [off, off+len) (the block layer's fallback). */
static int write_zeroes(struct qimg_image *node, uint64_t off, uint64_t len,
                        struct qimg_error *err)
{
    size_t bufsz = (size_t)QIMG_MIN(len, (uint64_t)(1u << 20));
    struct vmdk_state *s = node->state;
    void *zero;
    int ret = 0;

    /* compressed extents take whole grains only: write grain by grain */
    for (size_t i = 0; i < s->n_ext; i++)
        if (s->ext[i].compressed)
            bufsz = (size_t)QIMG_MAX((uint64_t)bufsz, grain_bytes(&s->ext[i]));
    zero = calloc(1, bufsz);
    if (!zero)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (len && !ret) {
        uint64_t n = QIMG_MIN(len, (uint64_t)bufsz);
        struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
        if (e && e->compressed) {
            uint64_t gb = grain_bytes(e);
            n = QIMG_MIN(n, QIMG_MIN(gb - ext_off(e, off) % gb,
                                     ext_left(e, off)));
        }
        ret = vmdk_pwrite(node, off, (size_t)n, zero, err);
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

/* The pieces of a zero write, cut at grain size multiples of the guest
 * offset as QEMU's block layer cuts them (pwrite_zeroes_alignment). */
static uint64_t zero_alignment(const struct vmdk_state *s)
{
    uint64_t a = 0;
    for (size_t i = 0; i < s->n_ext; i++)
        if (s->ext[i].kind != VMDK_KIND_FLAT)
            a = QIMG_MAX(a, grain_bytes(&s->ext[i]));
    return a;
}

static int zero_piece(struct qimg_image *node, uint64_t off, uint64_t len,
                      unsigned flags, struct qimg_error *err)
{
    int ret = zero_grains(node, off, len, true, err);

    if (!ret)
        ret = zero_grains(node, off, len, false, err);
    if (ret != -ENOTSUP)
        return ret;
    if (flags & QIMG_ZERO_NO_FALLBACK)
        return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
    return write_zeroes(node, off, len, err);
}

static int vmdk_pwrite_zeroes(struct qimg_image *node, uint64_t off,
                              uint64_t len, unsigned flags,
                              struct qimg_error *err)
{
    uint64_t align = zero_alignment(node->state);

    while (len) {
        uint64_t n = len;
        int ret;
        if (align) {
            uint64_t head = off % align;
            if (head)
                n = QIMG_MIN(len, align - head);
            else if (len >= align)
                n = len - len % align;
        }
        ret = zero_piece(node, off, n, flags, err);
        if (ret < 0)
            return ret;
        off += n;
        len -= n;
    }
    return 0;
}

static int vmdk_flush(struct qimg_image *node, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret = node->file->ops->flush(node->file, err);

    for (size_t i = 0; i < s->n_ext && !ret; i++)
        if (s->ext[i].file != node->file)
            ret = s->ext[i].file->ops->flush(s->ext[i].file, err);
    return ret;
}

/* ---- block status ------------------------------------------------------------ */

static int vmdk_block_status(struct qimg_image *node, uint64_t off,
                             uint64_t len, struct qimg_extent *ext,
                             struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
    struct vmdk_lookup l;
    uint64_t n, in;
    int ret;

    if (!e)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    if (e->kind == VMDK_KIND_FLAT) {
        ext->length = QIMG_MIN(len, ext_left(e, off));
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED | QIMG_BS_OFFSET_VALID;
        ext->host_offset = e->flat_offset + ext_off(e, off);
        ext->host_file = e->file->filename;
        /* QEMU asks the extent file about holes (BDRV_BLOCK_RECURSE) */
        qimg_extent_refine(e->file, ext);
        return 0;
    }
    if (vmdk_stream_reading(e)) {
        /* where its grains are shows only as the stream is read */
        bool data;
        ret = vmdk_stream_status(node, e, ext_off(e, off),
                                 QIMG_MIN(len, ext_left(e, off)), &data, &n,
                                 err);
        if (ret < 0)
            return ret;
        ext->length = n;
        ext->flags = data ? QIMG_BS_DATA | QIMG_BS_ALLOCATED |
                            QIMG_BS_COMPRESSED : 0;
        ext->host_file = e->file->filename;
        return 0;
    }
    ret = map_run(node, e, off, len, &l, &n, err);
    if (ret < 0)
        return ret;
    in = ext_off(e, off) % grain_bytes(e);
    switch (l.state) {
    case VMDK_GRAIN_ERROR:
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    case VMDK_GRAIN_UNALLOC:
        ext->flags = 0;
        break;
    case VMDK_GRAIN_ZERO:
        ext->flags = QIMG_BS_ZERO | QIMG_BS_ALLOCATED;
        break;
    case VMDK_GRAIN_DATA:
        /* data one grain at a time, as QEMU answers (convert's cuts) */
        n = QIMG_MIN(n, grain_bytes(e) - in);
        ext->flags = QIMG_BS_DATA | QIMG_BS_ALLOCATED;
        if (e->compressed) {
            ext->flags |= QIMG_BS_COMPRESSED;
        } else {
            ext->flags |= QIMG_BS_OFFSET_VALID;
            ext->host_offset = l.host + in;
        }
        ext->host_file = e->file->filename;
        break;
    }
    ext->length = n;
    return 0;
}

/* ---- info ------------------------------------------------------------------- */

static bool same_kind(const struct vmdk_extent *a, const struct vmdk_extent *b)
{
    bool fa = a->kind == VMDK_KIND_FLAT, fb = b->kind == VMDK_KIND_FLAT;
    return fa == fb && a->compressed == b->compressed &&
           (fa || a->grain_sectors == b->grain_sectors);
}

static json_t *extent_json(const struct vmdk_extent *e)
{
    json_t *o = json_object();

    json_object_set_new(o, "filename", json_string(e->file->filename));
    json_object_set_new(o, "format", json_string(e->type));
    json_object_set_new(o, "virtual-size",
                        json_integer((json_int_t)(e->sectors * VMDK_SECTOR)));
    if (e->compressed)
        json_object_set_new(o, "compressed", json_true());
    if (e->kind != VMDK_KIND_FLAT)
        json_object_set_new(o, "cluster-size",
                            json_integer((json_int_t)grain_bytes(e)));
    return o;
}

static int vmdk_get_info(struct qimg_image *node, struct qimg_info *info,
                         struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    json_t *spec, *data, *list;
    bool uniform = s->n_ext > 0;

    for (size_t i = 1; i < s->n_ext; i++)
        uniform &= same_kind(&s->ext[0], &s->ext[i]);
    /* QEMU's bdrv_get_info fails for extents of different kinds: no
     * cluster size, no dirty flag */
    info->has_dirty_flag = uniform;
    if (uniform) {
        info->needs_compressed_writes = s->ext[0].compressed;
        if (s->ext[0].kind != VMDK_KIND_FLAT)
            info->cluster_size = (uint32_t)grain_bytes(&s->ext[0]);
    }
    for (size_t i = 0; i < s->n_ext && info->actual_size >= 0; i++) {
        struct qimg_storage *st = s->ext[i].file;
        int64_t a;
        if (st == node->file)
            continue;
        a = st->ops->allocated_size ? st->ops->allocated_size(st) : -1;
        info->actual_size = a < 0 ? a : info->actual_size + a;
    }
    data = json_object();
    json_object_set_new(data, "create-type", json_string(s->create_type));
    json_object_set_new(data, "cid", json_integer(s->cid));
    json_object_set_new(data, "parent-cid", json_integer(s->parent_cid));
    list = json_array();
    for (size_t i = 0; i < s->n_ext; i++)
        json_array_append_new(list, extent_json(&s->ext[i]));
    json_object_set_new(data, "extents", list);
    spec = json_object();
    json_object_set_new(spec, "type", json_string("vmdk"));
    json_object_set_new(spec, "data", data);
    info->format_specific_json = json_dumps(spec, JSON_PRESERVE_ORDER);
    json_decref(spec);
    return info->format_specific_json ? 0 : qimg_error_set(err, -ENOMEM,
                                                           "Out of memory");
}

/* ---- compressed writes (streamOptimized) ------------------------------------ */

static int vmdk_pwrite_compressed_data(struct qimg_image *node, uint64_t off,
                                       size_t len, const void *buf,
                                       const void *cdata, size_t clen,
                                       struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent *e = vmdk_find_extent(s, off / VMDK_SECTOR);
    int ret;

    if (!e)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    if (!e->compressed || !clen)
        return vmdk_pwrite(node, off, len, buf, err);
    ret = vmdk_write_compressed(node, e, off, len, buf, cdata, clen, err);
    if (!ret)
        ret = cid_after_write(node, err);
    return ret;
}

/* QEMU's end-of-stream call (len 0) aligns every extent file to a whole
 * sector; we also close the stream of compressed extents (vmdk-stream.c). */
static int vmdk_pwrite_compressed(struct qimg_image *node, uint64_t off,
                                  size_t len, const void *buf,
                                  struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret;

    if (len)
        return vmdk_pwrite_compressed_data(node, off, len, buf, NULL, 0, err);
    ret = vmdk_stream_finish(node, true, err);
    for (size_t i = 0; i < s->n_ext && !ret; i++) {
        struct qimg_storage *st = s->ext[i].file;
        int64_t size = st->ops->get_size(st);
        uint64_t aligned;
        if (size < 0)
            return qimg_error_set(err, (int)size, "%s", strerror((int)-size));
        if (!qimg_align_up((uint64_t)size, VMDK_SECTOR, &aligned))
            return qimg_error_set(err, -EFBIG, "File too large");
        if (aligned != (uint64_t)size)
            ret = st->ops->truncate(st, aligned, QIMG_PREALLOC_OFF, err);
    }
    return ret;
}

static ssize_t vmdk_compress_cluster(struct qimg_image *node, const void *buf,
                                     size_t len, void *out,
                                     struct qimg_error *err)
{
    return vmdk_compress_grain(node, buf, len, out, err);
}

/* ---- the driver table ---------------------------------------------------------- */

/* QEMU 7.2's, in its order (the "Formatting" line follows it). */
static const struct qimg_opt_desc vmdk_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"adapter_type", QIMG_OPT_STRING, "Virtual adapter type, can be one of "
     "ide (default), lsilogic, buslogic or legacyESX", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Must be 'vmdk' if present", NULL},
    {"compat6", QIMG_OPT_BOOL, "VMDK version 6 image", "off"},
    {"hwversion", QIMG_OPT_STRING, "VMDK hardware version", "undefined"},
    {"toolsversion", QIMG_OPT_STRING, "VMware guest tools version", NULL},
    {"subformat", QIMG_OPT_STRING, "VMDK flat extent format, can be one of "
     "{monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | "
     "twoGbMaxExtentFlat | streamOptimized} ", NULL},
    {"zeroed_grain", QIMG_OPT_BOOL, "Enable efficient zero writes using the "
     "zeroed-grain GTE feature", NULL},
};

const struct qimg_format qimg_format_vmdk = {
    .name = "vmdk",
    .description = "VMware virtual disk",
    .state_size = sizeof(struct vmdk_state),
    .supports_backing = true,
    .create_opts = vmdk_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(vmdk_create_opts),
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .create = vmdk_create,
    .create_stream = vmdk_create_stream,
    .pread = vmdk_pread,
    .pwrite = vmdk_pwrite,
    .pwrite_compressed = vmdk_pwrite_compressed,
    .pwrite_zeroes = vmdk_pwrite_zeroes,
    .flush = vmdk_flush,
    .block_status = vmdk_block_status,
    .get_info = vmdk_get_info,
    .check = vmdk_check,
    .compress_cluster = vmdk_compress_cluster,
    .pwrite_compressed_data = vmdk_pwrite_compressed_data,
};
