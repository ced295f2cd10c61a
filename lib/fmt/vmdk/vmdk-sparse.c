/*
 * vmdk-sparse.c - sparse extents: the hosted sparse header ("KDMV",
 * VMDK 5.0 spec section "Hosted Sparse Extents"), ESXi's COWD
 * (vmfsSparse) and seSparse headers, their grain directories, the grain
 * table cache and the grain lookup they share (QEMU's get_cluster_offset),
 * and grain table updates.
 *
 * Every header field is checked in QEMU 7.2's order with its messages,
 * with QEMU's integer widths (the guest sectors covered by one directory
 * entry are a 32-bit product, the directory size a 32-bit quotient), so
 * that hostile headers fail where QEMU's do; what QEMU does not check and
 * then crashes on (a zero granularity of a COWD extent) fails the I/O
 * with an error instead.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

/* ---- grain directories --------------------------------------------------- */

/* Read a directory of n entries of size esz at off into *out (host order).
 * The bytes count against the image's table budget. */
static int load_dir(struct qimg_image *node, struct vmdk_extent *e,
                    uint64_t off, unsigned esz, void **out, const char *what,
                    struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint64_t bytes = (uint64_t)e->l1_size * esz;
    uint8_t *buf;
    int ret;

    *out = NULL;
    if (s->table_bytes + bytes > VMDK_MAX_TABLE_BYTES)
        return qimg_error_set(err, -EFBIG, "Grain directories of the image "
                              "exceed %llu MiB", VMDK_MAX_TABLE_BYTES >> 20);
    buf = malloc(bytes ? bytes : 1);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = e->file->ops->pread(e->file, off, (size_t)bytes, buf, err);
    if (ret < 0) {
        qimg_error_set(err, ret, "Could not read %s from extent '%s': %s",
                       what, e->file->filename, strerror(-ret));
        free(buf);
        return ret;
    }
    for (uint32_t i = 0; i < e->l1_size; i++) {
        if (esz == 8) {
            uint64_t v = qimg_ld_le64(buf + 8 * (size_t)i);
            memcpy(buf + 8 * (size_t)i, &v, 8);
        } else {
            uint32_t v = qimg_ld_le32(buf + 4 * (size_t)i);
            memcpy(buf + 4 * (size_t)i, &v, 4);
        }
    }
    s->table_bytes += bytes;
    *out = buf;
    return 0;
}

/* QEMU's vmdk_init_tables, on the extent just added (removed again on
 * failure).  The redundant directory is only needed to write. */
static int init_tables(struct qimg_image *node, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent *e = &s->ext[s->n_ext - 1];
    void *rgd = NULL;
    int ret;

    ret = load_dir(node, e, e->gd_offset, e->entry_size, &e->gd,
                   "l1 table", err);
    if (!ret && e->rgd_offset && !node->read_only) {
        ret = load_dir(node, e, e->rgd_offset, 4, &rgd, "l1 backup table",
                       err);
        e->rgd = rgd;
    }
    if (ret < 0) {
        free(e->gd);
        e->gd = NULL;
        s->n_ext--;
    }
    return ret;
}

/* ---- headers --------------------------------------------------------------- */

struct vmdk4_header {
    uint32_t version, flags;
    uint64_t capacity, granularity, desc_offset, desc_size;
    uint32_t num_gtes;
    uint64_t rgd_offset, gd_offset, grain_offset;
    uint16_t compress;
};

static void parse_vmdk4(const uint8_t *p, struct vmdk4_header *h)
{
    h->version = qimg_ld_le32(p);
    h->flags = qimg_ld_le32(p + 4);
    h->capacity = qimg_ld_le64(p + 8);
    h->granularity = qimg_ld_le64(p + 16);
    h->desc_offset = qimg_ld_le64(p + 24);
    h->desc_size = qimg_ld_le64(p + 32);
    h->num_gtes = qimg_ld_le32(p + 40);
    h->rgd_offset = qimg_ld_le64(p + 44);
    h->gd_offset = qimg_ld_le64(p + 52);
    h->grain_offset = qimg_ld_le64(p + 60);
    h->compress = qimg_ld_le16(p + 73);
}

static int64_t file_sectors(struct qimg_storage *st)
{
    int64_t size = st->ops->get_size(st);
    return size < 0 ? size
                    : (int64_t)qimg_div_round_up((uint64_t)size, VMDK_SECTOR);
}

/* A stream's footer: [footer marker][magic + header][end-of-stream], the
 * last three sectors of the image file (QEMU looks at the main file's
 * end, even for an extent of a descriptor). */
static int read_footer(struct qimg_image *node, struct qimg_storage *file,
                       uint8_t *hdr, struct qimg_error *err)
{
    uint8_t f[3 * VMDK_SECTOR];
    int64_t n = file_sectors(node->file);
    int64_t off = n < 0 ? -1 : n * (int64_t)VMDK_SECTOR - 3 * VMDK_SECTOR;
    int ret;

    if (off < 0)
        return qimg_error_set(err, -EIO, "Failed to read footer: %s",
                              strerror(EIO));
    ret = file->ops->pread(file, (uint64_t)off, sizeof(f), f, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to read footer: %s",
                              strerror(-ret));
    if (qimg_ld_be32(f + 512) != VMDK4_MAGIC || qimg_ld_le32(f + 8) != 0 ||
        qimg_ld_le32(f + 12) != VMDK_MARKER_FOOTER ||
        qimg_ld_le64(f + 1024) != 0 || qimg_ld_le32(f + 1032) != 0 ||
        qimg_ld_le32(f + 1036) != VMDK_MARKER_EOS)
        return qimg_error_set(err, -EINVAL, "Invalid footer");
    memcpy(hdr, f + 516, VMDK4_HEADER_SIZE);
    return 0;
}

static int open_vmdk4(struct qimg_image *node, struct qimg_storage *file,
                      struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint8_t raw[VMDK4_HEADER_SIZE];
    struct vmdk4_header h;
    struct vmdk_extent proto, *e;
    bool compressed, footer = false, forward;
    uint32_t l1_entry_sectors, l1_size;
    int64_t nb;
    int ret;

    ret = file->ops->pread(file, 4, sizeof(raw), raw, err);
    if (ret < 0)
        return qimg_error_set(err, -EINVAL, "Could not read header from file "
                              "'%s': %s", file->filename, strerror(-ret));
    parse_vmdk4(raw, &h);
    if (h.capacity == 0 && h.desc_offset) {
        /* a descriptor in a sparse file: its extents are ours */
        char *buf = NULL;
        ret = vmdk_read_desc(file, h.desc_offset << 9, &buf, err);
        if (ret < 0)
            return -EINVAL;
        ret = vmdk_open_desc_file(node, buf, err);
        free(buf);
        return ret;
    }
    if (!s->create_type[0])
        snprintf(s->create_type, sizeof(s->create_type), "monolithicSparse");
    /* a stream on a pipe is read forward, grain marker by grain marker:
     * its footer is at an end not reached yet */
    forward = h.gd_offset == VMDK4_GD_AT_END && node->read_only &&
              (file->caps & QIMG_STORAGE_SEQUENTIAL) &&
              h.compress == VMDK4_COMPRESSION_DEFLATE &&
              (h.flags & VMDK4_FLAG_MARKER);
    if (h.gd_offset == VMDK4_GD_AT_END && !forward) {
        ret = read_footer(node, file, raw, err);
        if (ret < 0)
            return ret;
        parse_vmdk4(raw, &h);
        footer = true;
    }
    compressed = h.compress == VMDK4_COMPRESSION_DEFLATE;
    if (h.version > 3)
        return qimg_error_set(err, -ENOTSUP, "Unsupported VMDK version %" PRIu32,
                              h.version);
    if (h.version == 3 && !node->read_only && !compressed)
        return qimg_error_set(err, -EINVAL, "VMDK version 3 must be read only");
    if (h.num_gtes > VMDK4_MAX_GT_ENTRIES)
        return qimg_error_set(err, -EINVAL, "L2 table size too big");
    l1_entry_sectors = (uint32_t)(h.num_gtes * h.granularity);
    if (l1_entry_sectors == 0)
        return qimg_error_set(err, -EINVAL, "L1 entry size is invalid");
    l1_size = (uint32_t)((h.capacity + l1_entry_sectors - 1) / l1_entry_sectors);
    nb = file_sectors(file);
    if (nb >= 0 && (uint64_t)nb < h.grain_offset)
        return qimg_error_set(err, -EINVAL, "File truncated, expecting at "
                              "least %" PRId64 " bytes",
                              (int64_t)(h.grain_offset * VMDK_SECTOR));
    /* compressed grains are inflated whole (QEMU takes up to 1 GiB and
     * allocates three times that per read) */
    if (compressed && h.granularity > VMDK_MAX_GRAIN_SECTORS)
        ;   /* QEMU's own message comes from vmdk_add_extent */
    else if (compressed &&
             h.granularity * VMDK_SECTOR > VMDK_MAX_COMPRESSED_GRAIN)
        return qimg_error_set(err, -EFBIG, "Compressed grains of %" PRIu64
                              " bytes are too large (at most %u)",
                              h.granularity * VMDK_SECTOR,
                              VMDK_MAX_COMPRESSED_GRAIN);
    memset(&proto, 0, sizeof(proto));
    proto.file = file;
    proto.owns_file = file != node->file;
    proto.kind = VMDK_KIND_SPARSE;
    proto.sectors = h.capacity;
    proto.gd_offset = forward ? 0 : h.gd_offset << 9;
    proto.rgd_offset = (h.flags & VMDK4_FLAG_RGD) ? h.rgd_offset << 9 : 0;
    proto.l1_size = l1_size;
    proto.l2_size = h.num_gtes;
    proto.grain_sectors = h.granularity;
    proto.compressed = compressed;
    proto.has_marker = h.flags & VMDK4_FLAG_MARKER;
    proto.zero_grain = h.flags & VMDK4_FLAG_ZERO_GRAIN;
    proto.version = h.version;
    proto.flags = h.flags;
    proto.from_footer = footer;
    proto.desc_sector = h.desc_offset;
    proto.desc_sectors = h.desc_size;
    proto.grain_offset = h.grain_offset;
    ret = vmdk_add_extent(node, &proto, &e, err);
    if (ret < 0)
        return ret;
    if (compressed)
        snprintf(s->create_type, sizeof(s->create_type), "streamOptimized");
    if (file == node->file) {
        /* How much of the embedded descriptor area a CID update may
         * rewrite: up to the first table or grain after it. */
        const uint64_t ends[] = {h.grain_offset * VMDK_SECTOR, e->gd_offset,
                                 e->rgd_offset};
        s->desc_limit = VMDK_DESC_SIZE;
        for (size_t i = 0; i < QIMG_ARRAY_SIZE(ends); i++)
            if (ends[i] > 0x200)
                s->desc_limit = QIMG_MIN(s->desc_limit, ends[i] - 0x200);
    }
    if (forward)
        return vmdk_stream_read_begin(e, err);
    return init_tables(node, err);
}

static int open_cowd(struct qimg_image *node, struct qimg_storage *file,
                     struct qimg_error *err)
{
    uint8_t h[VMDK3_HEADER_SIZE];
    struct vmdk_extent proto;
    int ret = file->ops->pread(file, 4, sizeof(h), h, err);

    if (ret < 0)
        return qimg_error_set(err, ret, "Could not read header from file "
                              "'%s': %s", file->filename, strerror(-ret));
    memset(&proto, 0, sizeof(proto));
    proto.file = file;
    proto.owns_file = file != node->file;
    proto.kind = VMDK_KIND_COWD;
    proto.sectors = qimg_ld_le32(h + 8);
    proto.grain_sectors = qimg_ld_le32(h + 12);
    proto.gd_offset = (uint64_t)qimg_ld_le32(h + 16) << 9;
    proto.l1_size = qimg_ld_le32(h + 20);
    proto.l2_size = VMDK_FIXED_GT_ENTRIES;
    ret = vmdk_add_extent(node, &proto, NULL, err);
    return ret < 0 ? ret : init_tables(node, err);
}

int vmdk_open_sparse(struct qimg_image *node, struct qimg_storage *file,
                     const char *buf, struct qimg_error *err)
{
    uint32_t magic = qimg_ld_be32(buf);

    if (magic == VMDK3_MAGIC)
        return open_cowd(node, file, err);
    if (magic == VMDK4_MAGIC)
        return open_vmdk4(node, file, err);
    return qimg_error_set(err, -EINVAL, "Image not in VMDK format");
}

/* ---- seSparse ------------------------------------------------------------ */

#define SESPARSE_CONST_MAGIC 0x00000000cafebabeull
#define SESPARSE_VOLATILE_MAGIC 0x00000000cafecafeull

static int check_se_const(const uint8_t *h, struct qimg_error *err)
{
    uint64_t v;

#define F(i) qimg_ld_le64(h + 8 * (i))
    if ((v = F(0)) != SESPARSE_CONST_MAGIC)
        return qimg_error_set(err, -EINVAL, "Bad const header magic: 0x%016"
                              PRIx64, v);
    if ((v = F(1)) != 0x0000000200000001ull)
        return qimg_error_set(err, -ENOTSUP, "Unsupported version: 0x%016"
                              PRIx64, v);
    if ((v = F(3)) != 8)
        return qimg_error_set(err, -ENOTSUP, "Unsupported grain size: %" PRIu64,
                              v);
    if ((v = F(4)) != 64)
        return qimg_error_set(err, -ENOTSUP, "Unsupported grain table size: %"
                              PRIu64, v);
    if ((v = F(5)) != 0)
        return qimg_error_set(err, -ENOTSUP, "Unsupported flags: 0x%016" PRIx64,
                              v);
    if (F(6) || F(7) || F(8) || F(9))
        return qimg_error_set(err, -ENOTSUP, "Unsupported reserved bits: "
                              "0x%016" PRIx64 " 0x%016" PRIx64 " 0x%016" PRIx64
                              " 0x%016" PRIx64, F(6), F(7), F(8), F(9));
#undef F
    if (!qimg_buffer_is_zero(h + 208, 304))
        return qimg_error_set(err, -ENOTSUP, "Unsupported non-zero const "
                              "header padding");
    return 0;
}

static int check_se_volatile(const uint8_t *h, struct qimg_error *err)
{
    uint64_t magic = qimg_ld_le64(h);

    if (magic != SESPARSE_VOLATILE_MAGIC)
        return qimg_error_set(err, -EINVAL, "Bad volatile header magic: "
                              "0x%016" PRIx64, magic);
    if (qimg_ld_le64(h + 24))
        return qimg_error_set(err, -ENOTSUP, "Image is dirty, Replaying journal "
                              "not supported");
    if (!qimg_buffer_is_zero(h + 32, 480))
        return qimg_error_set(err, -ENOTSUP, "Unsupported non-zero volatile "
                              "header padding");
    return 0;
}

int vmdk_open_sesparse(struct qimg_image *node, struct qimg_storage *file,
                       struct qimg_error *err)
{
    uint8_t h[VMDK_SECTOR], v[VMDK_SECTOR];
    struct vmdk_extent proto;
    int ret;

    if (!node->read_only)
        return qimg_error_set(err, -EACCES, "No write support for seSparse "
                              "images available");
    ret = file->ops->pread(file, 0, sizeof(h), h, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not read const header from file "
                              "'%s': %s", file->filename, strerror(-ret));
    ret = check_se_const(h, err);
    if (ret < 0)
        return ret;
    ret = file->ops->pread(file, qimg_ld_le64(h + 80) * VMDK_SECTOR, sizeof(v),
                           v, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not read volatile header from "
                              "file '%s': %s", file->filename, strerror(-ret));
    ret = check_se_volatile(v, err);
    if (ret < 0)
        return ret;
    memset(&proto, 0, sizeof(proto));
    proto.file = file;
    proto.owns_file = file != node->file;
    proto.kind = VMDK_KIND_SESPARSE;
    proto.sectors = qimg_ld_le64(h + 16);
    proto.gd_offset = qimg_ld_le64(h + 128) * VMDK_SECTOR;
    proto.l1_size = (uint32_t)(qimg_ld_le64(h + 136) * VMDK_SECTOR / 8);
    proto.l2_size = (uint32_t)(qimg_ld_le64(h + 32) * VMDK_SECTOR / 8);
    proto.grain_sectors = qimg_ld_le64(h + 24);
    proto.entry_size = 8;
    proto.se_gt_offset = qimg_ld_le64(h + 144);
    proto.se_grain_offset = qimg_ld_le64(h + 192);
    ret = vmdk_add_extent(node, &proto, NULL, err);
    return ret < 0 ? ret : init_tables(node, err);
}

/* ---- grain table cache ------------------------------------------------------ */

void vmdk_cache_drop(struct vmdk_state *s)
{
    for (size_t i = 0; i < VMDK_GT_CACHE_SIZE; i++) {
        free(s->cache[i].table);
        s->cache[i].table = NULL;
        s->cache[i].cap = 0;
        s->cache[i].ext = -1;
        s->cache[i].used = 0;
    }
}

static size_t table_bytes(const struct vmdk_extent *e)
{
    return (size_t)e->l2_size * e->entry_size;
}

/* The grain table at sector l2 of extent e, cached (lock held).  NULL and
 * -EIO in *ret when it cannot be read. */
static uint8_t *get_table(struct qimg_image *node, struct vmdk_extent *e,
                          uint32_t l2, int *ret, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    int idx = (int)(e - s->ext);
    struct vmdk_gt_entry *victim = NULL;
    size_t bytes = table_bytes(e);

    *ret = 0;
    for (size_t i = 0; i < VMDK_GT_CACHE_SIZE; i++) {
        struct vmdk_gt_entry *c = &s->cache[i];
        if (c->table && c->ext == idx && c->sector == l2) {
            c->used = ++s->clock;
            return c->table;
        }
        /* a free entry, else the least recently used */
        if (!victim || (victim->ext >= 0 && (c->ext < 0 || !c->table ||
                                             c->used < victim->used)))
            victim = c;
    }
    if (victim->cap < bytes) {
        uint8_t *t = realloc(victim->table, bytes);
        if (!t) {
            *ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            return NULL;
        }
        victim->table = t;
        victim->cap = bytes;
    }
    victim->ext = -1;
    qimg_storage_event(e->file, QIMG_EV_L2_LOAD);
    *ret = e->file->ops->pread(e->file, (uint64_t)l2 * VMDK_SECTOR, bytes,
                               victim->table, err);
    if (*ret < 0)
        return NULL;
    victim->ext = idx;
    victim->sector = l2;
    victim->used = ++s->clock;
    return victim->table;
}

static void cache_update(struct vmdk_state *s, const struct vmdk_extent *e,
                         uint32_t l2, uint32_t index, uint32_t count,
                         const uint32_t *values)
{
    int idx = (int)(e - s->ext);
    for (size_t i = 0; i < VMDK_GT_CACHE_SIZE; i++) {
        struct vmdk_gt_entry *c = &s->cache[i];
        if (c->table && c->ext == idx && c->sector == l2)
            for (uint32_t k = 0; k < count; k++)
                qimg_st_le32(c->table + 4 * (size_t)(index + k), values[k]);
    }
}

/* ---- lookup ------------------------------------------------------------------ */

/* The grain table sector of directory entry l1 (0: none), or -1 when the
 * entry is broken (seSparse). */
static int64_t table_sector(const struct vmdk_extent *e, uint32_t l1)
{
    if (e->kind == VMDK_KIND_SESPARSE) {
        uint64_t v = ((const uint64_t *)e->gd)[l1];
        if (v == 0)
            return 0;
        /* allocated tables have 0x1 in the top nibble, and the rest
         * fits 32 bits (64 TB disks of 16 MB tables at most) */
        if ((v & 0xffffffff00000000ull) != 0x1000000000000000ull)
            return -1;
        v = e->se_gt_offset + (v & 0xffffffffull) * table_bytes(e) / VMDK_SECTOR;
        return v > 0xffffffffull ? -1 : (int64_t)v;
    }
    return ((const uint32_t *)e->gd)[l1];
}

int vmdk_lookup(struct qimg_image *node, struct vmdk_extent *e,
                uint64_t sector, struct vmdk_lookup *l,
                struct qimg_error *err)
{
    uint8_t *table;
    int64_t l2;
    uint64_t v;
    int ret;

    memset(l, 0, sizeof(*l));
    if (e->kind == VMDK_KIND_FLAT) {
        l->state = VMDK_GRAIN_DATA;
        l->host = e->flat_offset;
        return 0;
    }
    /* QEMU divides by these unchecked (and crashes) */
    if (!e->grain_sectors || !e->l1_entry_sectors)
        return qimg_error_set(err, -EIO, "Invalid granularity, image may be "
                              "corrupt");
    /* 32-bit indexes, as QEMU's */
    l->l1_index = (uint32_t)(sector / e->l1_entry_sectors);
    l->l2_index = (uint32_t)((sector / e->grain_sectors) % e->l2_size);
    if (l->l1_index >= e->l1_size) {
        l->state = VMDK_GRAIN_ERROR;
        return 0;
    }
    if (e->stream && vmdk_stream_lookup(e, l->l1_index, l->l2_index, &l->raw)) {
        l->l2_sector = 1;   /* the table is held in memory */
        goto decode32;
    }
    l2 = table_sector(e, l->l1_index);
    if (l2 < 0) {
        l->state = VMDK_GRAIN_ERROR;
        return 0;
    }
    l->l2_sector = (uint32_t)l2;
    if (!l2) {
        l->state = VMDK_GRAIN_UNALLOC;
        return 0;
    }
    table = get_table(node, e, l->l2_sector, &ret, err);
    if (!table) {
        /* QEMU reads a table it cannot load as unallocated */
        if (ret == -ENOMEM)
            return ret;
        l->state = VMDK_GRAIN_ERROR;
        return 0;
    }
    if (e->kind == VMDK_KIND_SESPARSE) {
        v = qimg_ld_le64(table + 8 * (size_t)l->l2_index);
        switch (v >> 60) {
        case 0:
            l->state = v ? VMDK_GRAIN_ERROR : VMDK_GRAIN_UNALLOC;
            return 0;
        case 1: /* unmapped */
        case 2: /* zero */
            l->state = VMDK_GRAIN_ZERO;
            return 0;
        case 3:
            v = ((v & 0x0fff000000000000ull) >> 48) |
                ((v & 0x0000ffffffffffffull) << 12);
            l->state = VMDK_GRAIN_DATA;
            l->host = (e->se_grain_offset + v * e->grain_sectors) * VMDK_SECTOR;
            return 0;
        default:
            l->state = VMDK_GRAIN_ERROR;
            return 0;
        }
    }
    l->raw = qimg_ld_le32(table + 4 * (size_t)l->l2_index);
decode32:
    if (e->zero_grain && l->raw == VMDK_GTE_ZEROED)
        l->state = VMDK_GRAIN_ZERO;
    else if (l->raw == 0)
        l->state = VMDK_GRAIN_UNALLOC;
    else {
        l->state = VMDK_GRAIN_DATA;
        l->host = (uint64_t)l->raw * VMDK_SECTOR;
    }
    return 0;
}

int vmdk_gt_entries(struct qimg_image *node, struct vmdk_extent *e,
                    uint32_t l1_index, uint32_t l2_index, uint32_t *out,
                    uint32_t n, struct qimg_error *err)
{
    int64_t l2 = table_sector(e, l1_index);
    uint8_t *table;
    int ret;

    if (l2_index + (uint64_t)n > e->l2_size || e->entry_size != 4)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    if (l2 <= 0) {
        memset(out, 0, n * sizeof(*out));
        return 0;
    }
    table = get_table(node, e, (uint32_t)l2, &ret, err);
    if (!table)
        return ret;
    for (uint32_t i = 0; i < n; i++)
        out[i] = qimg_ld_le32(table + 4 * (size_t)(l2_index + i));
    return 0;
}

/*
 * Set count entries from l->l2_index on in the grain table (and its
 * redundant copy), then flush: the data they point at was written first.
 */
int vmdk_set_gte(struct qimg_image *node, struct vmdk_extent *e,
                 const struct vmdk_lookup *l, uint32_t count,
                 const uint32_t *values, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint8_t buf[4 * VMDK4_MAX_GT_ENTRIES];
    uint32_t sectors[2];
    int ret = 0;

    if (count > VMDK4_MAX_GT_ENTRIES || l->l2_index + (uint64_t)count > e->l2_size)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    for (uint32_t i = 0; i < count; i++)
        qimg_st_le32(buf + 4 * (size_t)i, values[i]);
    sectors[0] = ((const uint32_t *)e->gd)[l->l1_index];
    /* a zero backup entry would point the copy at the header */
    sectors[1] = e->rgd ? e->rgd[l->l1_index] : 0;
    qimg_storage_event(e->file, QIMG_EV_L2_UPDATE);
    for (int i = 0; i < 2 && !ret; i++)
        if (sectors[i])
            ret = e->file->ops->pwrite(e->file, (uint64_t)sectors[i] *
                                       VMDK_SECTOR + 4ull * l->l2_index,
                                       4 * (size_t)count, buf, err);
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    if (!ret)
        cache_update(s, e, sectors[0], l->l2_index, count, values);
    return ret;
}

/*
 * A grain directory entry without a table (images made by other tools
 * allocate tables on demand): allocate zeroed tables at the allocation
 * cursor, grain aligned, and point the directories at them.  QEMU writes
 * through a missing table to a random place instead.
 */
int vmdk_alloc_gt(struct qimg_image *node, struct vmdk_extent *e,
                  struct vmdk_lookup *l, struct qimg_error *err)
{
    uint64_t tsec = qimg_div_round_up(table_bytes(e), VMDK_SECTOR);
    uint64_t span = qimg_div_round_up(tsec, e->grain_sectors) * e->grain_sectors;
    int copies = e->rgd ? 2 : 1;
    uint8_t *zero, le[4];
    uint32_t at[2];
    int ret = 0;

    if (e->kind != VMDK_KIND_SPARSE && e->kind != VMDK_KIND_COWD)
        return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
    if (e->next_sector + copies * span > VMDK_EXTENT_MAX_SECTORS)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    zero = calloc(1, table_bytes(e));
    if (!zero)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (int i = 0; i < copies && !ret; i++) {
        at[i] = (uint32_t)e->next_sector;
        e->next_sector += span;
        ret = e->file->ops->pwrite(e->file, (uint64_t)at[i] * VMDK_SECTOR,
                                   table_bytes(e), zero, err);
    }
    free(zero);
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    for (int i = 0; i < copies && !ret; i++) {
        uint64_t dir = i ? e->rgd_offset : e->gd_offset;
        qimg_st_le32(le, at[i]);
        ret = e->file->ops->pwrite(e->file, dir + 4ull * l->l1_index, 4, le,
                                   err);
        if (!ret && i)
            e->rgd[l->l1_index] = at[i];
        else if (!ret)
            ((uint32_t *)e->gd)[l->l1_index] = at[i];
    }
    if (!ret)
        ret = e->file->ops->flush(e->file, err);
    if (!ret)
        l->l2_sector = at[0];
    return ret;
}
