/*
 * vmdk-create.c - creating vmdk images of every subformat QEMU 7.2
 * creates, with its layout byte for byte (only the random CID differs):
 * the same files, headers, grain directories and tables, descriptor text
 * and order of writes (so that the same blocks of the files end up
 * allocated), and its checks and messages in its order.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

/* Each extent of the split subformats holds 2 GiB (VMDK's split size). */
#define VMDK_SPLIT_SIZE 0x80000000ll
/* QEMU's buffer for the parentFileNameHint line (longer names are cut). */
#define VMDK_PARENT_LINE_MAX 4096

enum subformat {
    SUB_MONOLITHIC_SPARSE,
    SUB_MONOLITHIC_FLAT,
    SUB_TWO_GB_SPARSE,
    SUB_TWO_GB_FLAT,
    SUB_STREAM,
};

static const char *const subformats[] = {
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat", "streamOptimized",
};
static const char *const adapters[] = {"ide", "buslogic", "lsilogic",
                                       "legacyESX"};

struct create_params {
    uint64_t size;
    int adapter;                /* index in adapters */
    const char *backing;
    const char *hwversion;      /* NULL: default */
    const char *toolsversion;
    bool compat6, zeroed_grain;
    enum subformat sub;
    const struct qimg_opts *opts;   /* for the storage's own options */
    char *path, *prefix, *postfix;
};

static int lookup(const char *const *names, size_t n, const char *v)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], v))
            return (int)i;
    return -1;
}

/* QEMU's filename_decompose: directory (with its separator), base name
 * up to the last '.', and the rest. */
static int decompose(const char *filename, struct create_params *p,
                     struct qimg_error *err)
{
    const char *base, *dot;

    if (!filename || !*filename)
        return qimg_error_set(err, -EINVAL, "No filename provided");
    base = strrchr(filename, '/');
    if (!base)
        base = strrchr(filename, '\\');
    if (!base)
        base = strrchr(filename, ':');
    base = base ? base + 1 : filename;
    dot = strrchr(base, '.');
    if ((size_t)(base - filename) >= PATH_MAX || strlen(base) >= PATH_MAX)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    p->path = qimg_strndup(filename, (size_t)(base - filename));
    p->prefix = qimg_strndup(base, dot ? (size_t)(dot - base) : strlen(base));
    p->postfix = strdup(dot ? dot : "");
    if (!p->path || !p->prefix || !p->postfix)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static int parse_params(const char *filename, const struct qimg_opts *opts,
                        struct create_params *p, struct qimg_error *err)
{
    const char *v;
    int ret;

    memset(p, 0, sizeof(*p));
    p->opts = opts;
    v = qimg_opts_get(opts, "backing_fmt");
    if (v && strcmp(v, "vmdk"))
        return qimg_error_set(err, -EINVAL, "backing_file must be a vmdk image");
    ret = decompose(filename, p, err);
    if (ret < 0)
        return ret;
    ret = qimg_opts_get_size(opts, "size", 0, &p->size, err);
    if (ret < 0)
        return ret;
    if (!qimg_align_up(p->size, VMDK_SECTOR, &p->size) || p->size > INT64_MAX)
        return qimg_error_set(err, -EFBIG, "Image size too large");
    p->backing = qimg_opts_get(opts, "backing_file");
    p->hwversion = qimg_opts_get(opts, "hwversion");
    if (p->hwversion && !strcmp(p->hwversion, "undefined"))
        p->hwversion = NULL;
    p->toolsversion = qimg_opts_get(opts, "toolsversion");
    ret = qimg_opts_get_bool(opts, "compat6", false, &p->compat6, err);
    if (!ret)
        ret = qimg_opts_get_bool(opts, "zeroed_grain", false, &p->zeroed_grain,
                                 err);
    if (ret < 0)
        return ret;
    v = qimg_opts_get(opts, "adapter_type");
    p->adapter = v ? lookup(adapters, QIMG_ARRAY_SIZE(adapters), v) : 0;
    if (p->adapter < 0)
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", v);
    v = qimg_opts_get(opts, "subformat");
    ret = v ? lookup(subformats, QIMG_ARRAY_SIZE(subformats), v) : 0;
    if (ret < 0)
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", v);
    p->sub = (enum subformat)ret;
    return 0;
}

/* ---- extent files ----------------------------------------------------------- */

/* The hosted sparse header and both grain directories of a new extent
 * of filesize bytes, as QEMU's vmdk_init_extent computes them (32-bit
 * grain and table counts included). */
static int init_sparse(struct qimg_storage *st, uint64_t filesize,
                       bool compress, bool zeroed, struct qimg_error *err)
{
    uint8_t hdr[4 + VMDK4_HEADER_SIZE] = {0};
    uint64_t capacity = filesize / VMDK_SECTOR, rgd, gd, grain_off;
    uint32_t grains, gt_size, gt_count, gd_sectors, tmp;
    uint32_t flags = VMDK4_FLAG_RGD | VMDK4_FLAG_NL_DETECT |
                     (compress ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : 0) |
                     (zeroed ? VMDK4_FLAG_ZERO_GRAIN : 0);
    uint32_t *gdbuf;
    size_t gdbytes;
    int ret;

    grains = (uint32_t)qimg_div_round_up(capacity, 128);
    gt_size = (uint32_t)qimg_div_round_up(512 * 4, VMDK_SECTOR);
    gt_count = (uint32_t)qimg_div_round_up(grains, 512);
    gd_sectors = (uint32_t)qimg_div_round_up((uint64_t)gt_count * 4, VMDK_SECTOR);
    rgd = 1 + 20;
    gd = rgd + gd_sectors + (uint32_t)(gt_size * gt_count);
    grain_off = vmdk_round_up(gd + gd_sectors + (uint32_t)(gt_size * gt_count),
                              128);
    qimg_st_be32(hdr, VMDK4_MAGIC);
    qimg_st_le32(hdr + 4, compress ? 3 : zeroed ? 2 : 1);
    qimg_st_le32(hdr + 8, flags);
    qimg_st_le64(hdr + 12, capacity);
    qimg_st_le64(hdr + 20, 128);
    qimg_st_le64(hdr + 28, 1);
    qimg_st_le64(hdr + 36, 20);
    qimg_st_le32(hdr + 44, 512);
    qimg_st_le64(hdr + 48, rgd);
    qimg_st_le64(hdr + 56, gd);
    qimg_st_le64(hdr + 64, grain_off);
    hdr[73] = 0xa;
    hdr[74] = 0x20;
    hdr[75] = 0xd;
    hdr[76] = 0xa;
    qimg_st_le16(hdr + 77, compress ? VMDK4_COMPRESSION_DEFLATE : 0);
    ret = st->ops->pwrite(st, 0, 4, hdr, err);
    if (!ret)
        ret = st->ops->pwrite(st, 4, VMDK4_HEADER_SIZE, hdr + 4, err);
    if (!ret)
        ret = st->ops->truncate(st, grain_off << 9, QIMG_PREALLOC_OFF, err);
    if (ret < 0)
        return ret;
    gdbytes = (size_t)gd_sectors * VMDK_SECTOR;
    gdbuf = calloc(1, gdbytes ? gdbytes : 1);
    if (!gdbuf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    tmp = (uint32_t)rgd + gd_sectors;
    for (uint32_t i = 0; i < gt_count; i++, tmp += gt_size)
        qimg_st_le32(&gdbuf[i], tmp);
    ret = st->ops->pwrite(st, rgd * VMDK_SECTOR, gdbytes, gdbuf, err);
    tmp = (uint32_t)gd + gd_sectors;
    for (uint32_t i = 0; i < gt_count && !ret; i++, tmp += gt_size)
        qimg_st_le32(&gdbuf[i], tmp);
    if (!ret)
        ret = st->ops->pwrite(st, gd * VMDK_SECTOR, gdbytes, gdbuf, err);
    free(gdbuf);
    return ret;
}

/* Create one extent file (QEMU's vmdk_create_extent): the storage
 * creates it empty with the storage options given, then it is sized
 * (flat) or gets its sparse header.  *out is left open. */
static int create_extent(const struct create_params *p, const char *name,
                         uint64_t size, bool flat, struct qimg_storage **out,
                         struct qimg_error *err)
{
    static const char *const keep[] = {"nocow", "preallocation",
                                       "extent_size_hint"};
    struct qimg_opts *fo = qimg_opts_new();
    int ret;

    *out = NULL;
    if (!fo)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(keep); i++)
        if (qimg_opts_get(p->opts, keep[i]))
            qimg_opts_set(fo, keep[i], qimg_opts_get(p->opts, keep[i]));
    qimg_opts_set(fo, "size", "0");
    ret = qimg_storage_create_name(name, fo, err);
    qimg_opts_free(fo);
    if (ret < 0)
        return ret;
    ret = qimg_storage_open(out, name, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                            QIMG_CACHE_WRITEBACK, err);
    if (ret < 0)
        return ret;
    if (flat)
        ret = (*out)->ops->truncate(*out, size, QIMG_PREALLOC_OFF, err);
    else
        ret = init_sparse(*out, size, p->sub == SUB_STREAM, p->zeroed_grain,
                          err);
    if (ret < 0) {
        qimg_storage_close(*out);
        *out = NULL;
    }
    return ret;
}

static char *extent_name(const struct create_params *p, int idx, bool flat,
                         bool split)
{
    size_t n = strlen(p->path) + strlen(p->prefix) + strlen(p->postfix) + 16;
    char *s = malloc(n);

    if (!s)
        return NULL;
    if (idx == 0)
        snprintf(s, n, "%s%s%s", p->path, p->prefix, p->postfix);
    else if (split)
        snprintf(s, n, "%s%s-%c%03d%s", p->path, p->prefix, flat ? 'f' : 's',
                 idx, p->postfix);
    else
        snprintf(s, n, "%s%s-flat%s", p->path, p->prefix, p->postfix);
    return s;
}

/* ---- text ------------------------------------------------------------------- */

struct text {
    char *s;
    size_t len, cap;
};

static bool text_add(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static bool text_add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0,
                      fmt, ap);
        va_end(ap);
        if (n < 0)
            return false;
        if (t->s && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return true;
        }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *ns = realloc(t->s, cap);
        if (!ns)
            return false;
        t->s = ns;
        t->cap = cap;
    }
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static bool add_extent_line(struct text *t, bool flat, uint64_t size,
                            const char *name)
{
    uint64_t sectors = qimg_div_round_up(size, VMDK_SECTOR);
    return flat ? text_add(t, "RW %" PRId64 " FLAT \"%s\" 0\n", (int64_t)sectors,
                           base_name(name))
                : text_add(t, "RW %" PRId64 " SPARSE \"%s\"\n", (int64_t)sectors,
                           base_name(name));
}

static uint32_t random_cid(void)
{
    uint32_t v;
    if (getrandom(&v, sizeof(v), 0) == (ssize_t)sizeof(v))
        return v;
    return (uint32_t)time(NULL) * 2654435761u;
}

/* The parent's CID, read by opening it (probing its format) as QEMU's
 * create does, relative to the new image. */
static int parent_cid(const char *image, const char *backing, uint32_t *cid,
                      struct qimg_error *err)
{
    char *full = qimg_backing_full_name(image, backing);
    struct qimg_open_params op = {
        .filename = full, .flags = QIMG_OPEN_NO_BACKING,
        .cache = QIMG_CACHE_WRITEBACK,
    };
    struct qimg_image *b = NULL;
    int ret;

    if (!full)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_open(&b, &op, err);
    free(full);
    if (ret < 0)
        return -EIO;
    if (strcmp(qimg_image_format(b), "vmdk")) {
        ret = qimg_error_set(err, -EINVAL, "Invalid backing file format: %s. "
                             "Must be vmdk", qimg_image_format(b));
    } else {
        *cid = ((struct vmdk_state *)b->state)->cid;
    }
    qimg_close(b);
    return ret;
}

/* The hardware version QEMU records: hwversion, compat6's "6", or "4". */
static int hw_version(const struct create_params *p, const char **hw,
                      struct qimg_error *err)
{
    *hw = p->hwversion;
    if (p->compat6) {
        if (*hw)
            return qimg_error_set(err, -EINVAL, "compat6 cannot be enabled "
                                  "with hwversion set");
        *hw = "6";
    }
    if (!*hw)
        *hw = "4";
    return 0;
}

/* The descriptor text create writes (extent lines already made). */
static int descriptor_text(const struct create_params *p, const char *hw,
                           uint32_t pcid, const char *parent,
                           const char *lines, struct text *desc,
                           struct qimg_error *err)
{
    const char *tools = p->toolsversion ? p->toolsversion : "2147483647";
    uint32_t heads = p->adapter ? 255 : 16;

    if (!text_add(desc, "# Disk DescriptorFile\nversion=1\nCID=%" PRIx32
                  "\nparentCID=%" PRIx32 "\ncreateType=\"%s\"\n%s\n"
                  "# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
                  "ddb.virtualHWVersion = \"%s\"\n"
                  "ddb.geometry.cylinders = \"%" PRId64 "\"\n"
                  "ddb.geometry.heads = \"%" PRIu32 "\"\n"
                  "ddb.geometry.sectors = \"63\"\n"
                  "ddb.adapterType = \"%s\"\n"
                  "ddb.toolsVersion = \"%s\"\n",
                  random_cid(), pcid, subformats[p->sub], parent, lines, hw,
                  (int64_t)p->size / (int64_t)(63 * heads * VMDK_SECTOR),
                  heads, adapters[p->adapter], tools))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static int do_create(struct create_params *p, struct qimg_error *err)
{
    bool split = p->sub == SUB_TWO_GB_FLAT || p->sub == SUB_TWO_GB_SPARSE;
    bool flat = p->sub == SUB_MONOLITHIC_FLAT || p->sub == SUB_TWO_GB_FLAT;
    const char *hw;
    uint32_t pcid = 0xffffffff;
    uint64_t extent_size, created;
    struct text lines = {0}, desc = {0};
    char parent[VMDK_PARENT_LINE_MAX] = "";
    struct qimg_storage *st = NULL, *xst;
    char *name = NULL;
    int ret, idx;

    ret = hw_version(p, &hw, err);
    if (ret < 0)
        return ret;
    if (flat && p->backing)
        return qimg_error_set(err, -ENOTSUP, "Flat image can't have backing "
                              "file");
    if (flat && p->zeroed_grain)
        return qimg_error_set(err, -ENOTSUP, "Flat image can't enable zeroed "
                              "grain");
    extent_size = split ? (uint64_t)VMDK_SPLIT_SIZE : p->size;
    created = !split && !flat ? extent_size : 0;
    name = extent_name(p, 0, flat, split);
    if (!name)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    /* the descriptor file of split images starts empty too */
    ret = create_extent(p, name, created, flat || split, &st, err);
    if (ret < 0)
        goto out;
    if (!split && !flat && !add_extent_line(&lines, false, created, name)) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    if (p->backing) {
        ret = parent_cid(name, p->backing, &pcid, err);
        if (ret < 0)
            goto out;
        snprintf(parent, sizeof(parent), "parentFileNameHint=\"%s\"",
                 p->backing);
    }
    for (idx = 1; created < p->size; idx++) {
        uint64_t cur = QIMG_MIN(p->size - created, extent_size);
        char *xname = extent_name(p, idx, flat, split);
        if (!xname) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        ret = create_extent(p, xname, cur, flat, &xst, err);
        if (!ret && !add_extent_line(&lines, flat, cur, xname))
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        free(xname);
        qimg_storage_close(xst);
        if (ret < 0) {
            ret = -EINVAL;
            goto out;
        }
        created += cur;
    }
    ret = descriptor_text(p, hw, pcid, parent, lines.s ? lines.s : "", &desc,
                          err);
    if (ret < 0)
        goto out;
    if (!split && !flat) {
        ret = st->ops->pwrite(st, 0x200, desc.len, desc.s, err);
    } else {
        ret = st->ops->pwrite(st, 0, desc.len, desc.s, err);
        if (!ret)
            ret = st->ops->truncate(st, desc.len, QIMG_PREALLOC_OFF, err);
    }
    if (ret < 0 && !strstr(err->msg, "Could not write description"))
        qimg_error_set(err, ret, "Could not write description: %s",
                       strerror(-ret));
    if (!ret)
        ret = st->ops->flush(st, err);
out:
    qimg_storage_close(st);
    free(name);
    free(lines.s);
    free(desc.s);
    return ret;
}

int vmdk_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err)
{
    struct create_params p;
    int ret = parse_params(filename, opts, &p, err);

    if (!ret)
        ret = do_create(&p, err);
    free(p.path);
    free(p.prefix);
    free(p.postfix);
    return ret;
}

/* ---- streamOptimized written forward ---------------------------------------- */

/*
 * A streamOptimized image onto a forward-only storage (node->file, a
 * pipe): the same header fields and descriptor as create writes, except
 * that no table is laid out in the head (the directory is at the end:
 * GD_AT_END, no redundant directory), so grains start right after the
 * descriptor's 20 sectors, at the first 64 KiB boundary.  vmdk-stream.c
 * writes the head and everything after it.
 */
int vmdk_create_stream(struct qimg_image *node, const struct qimg_opts *opts,
                       struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent proto = {0}, *e;
    struct create_params p;
    struct text lines = {0}, desc = {0};
    const char *hw;
    uint64_t grains;
    int ret = parse_params(node->filename, opts, &p, err);

    if (!ret && p.sub != SUB_STREAM)
        ret = qimg_error_set(err, -ENOTSUP, "cannot write subformat %s to "
                             "a pipe: only streamOptimized is written "
                             "strictly forward", subformats[p.sub]);
    if (!ret && p.backing)
        ret = qimg_error_set(err, -ENOTSUP, "a vmdk written to a pipe cannot "
                             "have a backing file");
    /* an empty sparse header reads as an embedded descriptor, which
     * streamOptimized is not: what convert to a file reports once it
     * opens the image it created (7.2 too) */
    if (!ret && !p.size)
        ret = qimg_error_set(err, -ENOTSUP, "Could not open '%s': Unsupported "
                             "image type 'streamOptimized'", node->filename);
    if (!ret)
        ret = hw_version(&p, &hw, err);
    if (!ret && !add_extent_line(&lines, false, p.size, node->filename))
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    if (!ret)
        ret = descriptor_text(&p, hw, 0xffffffff, "", lines.s, &desc, err);
    if (!ret && desc.len > VMDK_DESC_SIZE)
        ret = qimg_error_set(err, -EFBIG, "Could not write description: the "
                             "descriptor is larger than its %u bytes",
                             VMDK_DESC_SIZE);
    if (ret < 0)
        goto out;
    grains = qimg_div_round_up(p.size / VMDK_SECTOR, 128);
    proto.file = node->file;
    proto.kind = VMDK_KIND_SPARSE;
    proto.compressed = proto.has_marker = true;
    proto.zero_grain = p.zeroed_grain;
    proto.version = 3;
    proto.flags = VMDK4_FLAG_NL_DETECT | VMDK4_FLAG_COMPRESS |
                  VMDK4_FLAG_MARKER |
                  (p.zeroed_grain ? VMDK4_FLAG_ZERO_GRAIN : 0);
    proto.sectors = p.size / VMDK_SECTOR;
    proto.grain_sectors = 128;
    proto.l2_size = 512;
    proto.l1_size = (uint32_t)qimg_div_round_up(grains, proto.l2_size);
    proto.desc_sector = 1;
    proto.desc_sectors = VMDK_DESC_SIZE / VMDK_SECTOR;
    proto.grain_offset = vmdk_round_up(1 + proto.desc_sectors, 128);
    if (grains > (uint64_t)VMDK_MAX_GD_ENTRIES * proto.l2_size) {
        ret = qimg_error_set(err, -EFBIG, "L1 size too big");
        goto out;
    }
    ret = vmdk_add_extent(node, &proto, &e, err);
    if (ret < 0)
        goto out;
    snprintf(s->create_type, sizeof(s->create_type), "%s",
             subformats[SUB_STREAM]);
    ret = vmdk_desc_cid(desc.s, false, &s->cid);
    if (!ret)
        ret = vmdk_desc_cid(desc.s, true, &s->parent_cid);
    /* the descriptor is final: no CID update after the first write */
    s->cid_updated = true;
    s->desc_offset = VMDK_SECTOR;
    node->size = e->sectors * VMDK_SECTOR;
    if (!ret)
        ret = vmdk_stream_start(node, e, desc.s, desc.len, err);
out:
    free(p.path);
    free(p.prefix);
    free(p.postfix);
    free(lines.s);
    free(desc.s);
    return ret;
}
