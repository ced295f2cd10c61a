/*
 * qcow2-create.c - creating qcow2 images and measuring what an image of a
 * given content would take.
 *
 * Layout of a new image, as QEMU lays it out: cluster 0 the header,
 * cluster 1 the refcount table, cluster 2 the first refcount block; the
 * image is then opened through the normal driver, which allocates the L1
 * table (cluster 3 onwards), records the backing file and preallocates.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fmt/qcow2/qcow2.h"

/* In the order qemu-img prints them on the "Formatting" line. */
const struct qimg_opt_desc qcow2_create_opts[QCOW2_N_CREATE_OPTS] = {
    {"encryption", QIMG_OPT_BOOL, "Encrypt the image with format 'aes'. "
     "(Deprecated in favor of encrypt.format=aes)", NULL},
    {"encrypt.format", QIMG_OPT_STRING, "Encrypt the image, format choices: "
     "'aes', 'luks'", NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING, "ID of secret providing qcow AES "
     "key or LUKS passphrase", NULL},
    {"encrypt.cipher-alg", QIMG_OPT_STRING, "Name of encryption cipher "
     "algorithm", NULL},
    {"encrypt.cipher-mode", QIMG_OPT_STRING, "Name of encryption cipher mode",
     NULL},
    {"encrypt.ivgen-alg", QIMG_OPT_STRING, "Name of IV generator algorithm",
     NULL},
    {"encrypt.ivgen-hash-alg", QIMG_OPT_STRING, "Name of IV generator hash "
     "algorithm", NULL},
    {"encrypt.hash-alg", QIMG_OPT_STRING, "Name of encryption hash algorithm",
     NULL},
    {"encrypt.iter-time", QIMG_OPT_NUMBER, "Time to spend in PBKDF in "
     "milliseconds", NULL},
    {"cluster_size", QIMG_OPT_SIZE, "qcow2 cluster size", "65536"},
    {"extended_l2", QIMG_OPT_BOOL, "Extended L2 tables", "off"},
    {"preallocation", QIMG_OPT_STRING, "Preallocation mode (allowed values: "
     "off, metadata, falloc, full)", NULL},
    {"compression_type", QIMG_OPT_STRING, "Compression method used for image "
     "cluster compression", "zlib"},
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"compat", QIMG_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])",
     NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image", NULL},
    {"data_file", QIMG_OPT_STRING, "File name of an external data file", NULL},
    {"data_file_raw", QIMG_OPT_BOOL, "The external data file must stay valid "
     "as a raw image", NULL},
    {"lazy_refcounts", QIMG_OPT_BOOL, "Postpone refcount updates", "off"},
    {"refcount_bits", QIMG_OPT_NUMBER, "Width of a reference count entry in "
     "bits", "16"},
};

/* Everything create needs, parsed and checked. */
struct qcow2_params {
    uint64_t size;
    uint32_t version;
    uint64_t cluster_size;
    uint32_t cluster_bits;
    bool extended_l2;
    enum qimg_prealloc prealloc;
    uint8_t compression_type;
    const char *backing_file;
    const char *backing_fmt;
    const char *data_file;
    bool data_file_raw;
    bool lazy_refcounts;
    uint32_t refcount_bits;
    uint32_t refcount_order;
    bool encrypt;                       /* encrypt.format or encryption */
    struct qimg_crypto_create_opts crypto;
};

static int parse_enum_opts(const struct qimg_opts *opts, struct qcow2_params *p,
                           bool measure, struct qimg_error *err)
{
    const char *v;

    p->version = 3;
    if ((v = qimg_opts_get(opts, "compat"))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
            p->version = 2;
        else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
            p->version = 3;
        else if (measure)
            return qimg_error_set(err, -EINVAL, "Invalid compatibility level: "
                                  "'%s'", v);
        else
            return qimg_error_set(err, -EINVAL, "Parameter 'version' does not "
                                  "accept value '%s'", v);
    }
    if (!measure && (v = qimg_opts_get(opts, "backing_fmt")) &&
        !qimg_blockdev_driver_known(v))
        return qimg_error_set(err, -EINVAL, "Parameter 'backing-fmt' does not "
                              "accept value '%s'", v);
    p->prealloc = QIMG_PREALLOC_OFF;
    if ((v = qimg_opts_get(opts, "preallocation")) &&
        qimg_prealloc_parse(v, &p->prealloc) < 0) {
        if (measure)
            return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", v);
        return qimg_error_set(err, -EINVAL, "Parameter 'preallocation' does not "
                              "accept value '%s'", v);
    }
    p->compression_type = QCOW2_COMPRESSION_ZLIB;
    /* measure ignores the compression type altogether */
    if (!measure && (v = qimg_opts_get(opts, "compression_type"))) {
        if (!strcmp(v, "zstd"))
            p->compression_type = QCOW2_COMPRESSION_ZSTD;
        else if (strcmp(v, "zlib"))
            return qimg_error_set(err, -EINVAL, "Parameter 'compression-type' "
                                  "does not accept value '%s'", v);
    }
    return 0;
}

/* The option combinations creation refuses. */
static int check_combinations(const struct qcow2_params *p,
                              struct qimg_error *err)
{
    if (p->version < 3 && p->lazy_refcounts)
        return qimg_error_set(err, -EINVAL, "Lazy refcounts only supported with "
                              "compatibility level 1.1 and above (use "
                              "version=v3 or greater)");
    if (p->backing_file && p->prealloc != QIMG_PREALLOC_OFF && !p->extended_l2)
        return qimg_error_set(err, -EINVAL, "Backing file and preallocation can "
                              "only be used at the same time if extended_l2 "
                              "is on");
    if (p->backing_fmt && !p->backing_file)
        return qimg_error_set(err, -EINVAL, "Backing format cannot be used "
                              "without backing file");
    if (p->data_file_raw && !p->data_file)
        return qimg_error_set(err, -EINVAL, "data-file-raw requires data-file");
    if (p->data_file_raw && p->backing_file)
        return qimg_error_set(err, -EINVAL, "Backing file and data-file-raw "
                              "cannot be used at the same time");
    if (p->data_file && p->version < 3)
        return qimg_error_set(err, -EINVAL, "External data files are only "
                              "supported with compatibility level 1.1 and above "
                              "(use version=v3 or greater)");
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB && p->version < 3)
        return qimg_error_set(err, -EINVAL, "Non-zlib compression type is only "
                              "supported with compatibility level 1.1 and above "
                              "(use version=v3 or greater)");
    return 0;
}

static int parse_params(const struct qimg_opts *opts, struct qcow2_params *p,
                        bool measure, struct qimg_error *err)
{
    uint64_t rb;
    int ret;

    memset(p, 0, sizeof(*p));
    ret = parse_enum_opts(opts, p, measure, err);
    if (!ret)
        ret = qcow2_crypto_parse_create(opts, &p->encrypt, &p->crypto, err);
    if (ret < 0)
        return ret;
    if ((ret = qimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0 ||
        (ret = qimg_opts_get_size(opts, "cluster_size", 65536, &p->cluster_size,
                                  err)) < 0 ||
        (ret = qimg_opts_get_bool(opts, "extended_l2", false, &p->extended_l2,
                                  err)) < 0 ||
        (ret = qimg_opts_get_bool(opts, "data_file_raw", false,
                                  &p->data_file_raw, err)) < 0 ||
        (ret = qimg_opts_get_bool(opts, "lazy_refcounts", false,
                                  &p->lazy_refcounts, err)) < 0 ||
        (ret = qimg_opts_get_number(opts, "refcount_bits", 16, &rb, err)) < 0)
        return ret;
    p->backing_file = qimg_opts_get(opts, "backing_file");
    p->backing_fmt = qimg_opts_get(opts, "backing_fmt");
    p->data_file = qimg_opts_get(opts, "data_file");
    if (!qimg_is_pow2(p->cluster_size) || p->cluster_size < 512 ||
        p->cluster_size > (2u << 20))
        return qimg_error_set(err, -EINVAL, "Cluster size must be a power of two "
                              "between 512 and 2048k");
    p->cluster_bits = (uint32_t)__builtin_ctzll(p->cluster_size);
    if (p->extended_l2) {
        if (p->cluster_size < 16384)
            return qimg_error_set(err, -EINVAL, "Extended L2 entries are only "
                                  "supported with cluster sizes of at least "
                                  "16384 bytes");
        if (p->version < 3 && !measure)
            return qimg_error_set(err, -EINVAL, "Extended L2 entries are only "
                                  "supported with compatibility level 1.1 and "
                                  "above (use version=v3 or greater)");
    }
    if (!qimg_is_pow2(rb) || rb > 64)
        return qimg_error_set(err, -EINVAL, "Refcount width must be a power of "
                              "two and may not exceed 64 bits");
    p->refcount_bits = (uint32_t)rb;
    p->refcount_order = (uint32_t)__builtin_ctzll(rb);
    if (p->version < 3 && rb != 16)
        return qimg_error_set(err, -EINVAL, "Different refcount widths than 16 "
                              "bits require compatibility level 1.1 or above "
                              "(use %s or greater)",
                              measure ? "compat=1.1" : "version=v3");
    /* measure checks no more than that (QEMU's measure reads the options
     * it sizes, not the ones only creation combines) */
    if (!measure && (ret = check_combinations(p, err)) < 0)
        return ret;
    /* Sizes are kept in whole sectors, as QEMU does. */
    if (!qimg_align_up(p->size, 512, &p->size))
        return qimg_error_set(err, -EFBIG, "Image size too large");
    return 0;
}

/* Write header, refcount table and the first refcount block. */
static int write_skeleton(const char *filename, const struct qcow2_params *p,
                          const struct qimg_opts *opts, bool *created,
                          struct qimg_error *err)
{
    struct qcow2_state s;
    struct qimg_storage *st = NULL;
    uint8_t *buf = calloc(1, 3 * p->cluster_size + QCOW2_HEADER_BUF_EXTRA);
    struct qimg_opts *fopts = qimg_opts_new();
    int ret;

    if (!buf || !fopts) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    memset(&s, 0, sizeof(s));
    s.version = p->version;
    s.cluster_bits = p->cluster_bits;
    s.cluster_size = p->cluster_size;
    s.refcount_table_offset = p->cluster_size;
    s.refcount_table_clusters = 1;
    s.refcount_order = p->refcount_order;
    s.compression_type = p->compression_type;
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB)
        s.incompatible |= QCOW2_INCOMPAT_COMPRESSION;
    if (p->extended_l2)
        s.incompatible |= QCOW2_INCOMPAT_EXTL2;
    if (p->data_file) {
        s.incompatible |= QCOW2_INCOMPAT_DATA_FILE;
        s.data_file_name = (char *)p->data_file;   /* borrowed: read only */
        if (p->data_file_raw)
            s.autoclear |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (p->lazy_refcounts)
        s.compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    if (qcow2_build_header(&s, 0, NULL, NULL, buf, true) > p->cluster_size) {
        /* Only a long data file name can overflow a new header. */
        ret = qimg_error_set(err, -ENOSPC, "Could not update qcow2 header: %s",
                             strerror(ENOSPC));
        goto out;
    }
    /* Refcount table entry 0 -> block at cluster 2, counting clusters 0-2. */
    qimg_st_be64(buf + p->cluster_size, 2 * p->cluster_size);
    s.refcount_bits = p->refcount_bits;
    for (int i = 0; i < 3; i++)
        qcow2_refcount_write_entry(&s, buf + 2 * p->cluster_size, (uint64_t)i, 1);
    /* The storage creates the file (and takes QEMU's creation locks). */
    for (size_t i = 0; i < 2; i++) {
        const char *k = i ? "extent_size_hint" : "nocow";
        if (qimg_opts_get(opts, k))
            qimg_opts_set(fopts, k, qimg_opts_get(opts, k));
    }
    qimg_opts_set(fopts, "size", "0");
    ret = qimg_storage_create_name(filename, fopts, err);
    if (ret < 0)
        goto out;
    *created = true;
    ret = qimg_storage_open(&st, filename, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                            QIMG_CACHE_WRITEBACK, err);
    if (ret < 0)
        goto out;
    /* No flush here: the image opened next reads this through the same
     * cache, and its final flush makes both durable.  (A device that
     * cannot flush, /dev/null, then fails as QEMU's does: at that open.) */
    ret = st->ops->pwrite(st, 0, 3 * p->cluster_size, buf, err);
out:
    qimg_storage_close(st);
    qimg_opts_free(fopts);
    free(buf);
    return ret;
}

/* The data file is created at the virtual size (relative to the working
 * directory, as QEMU does). */
static int create_data_file(const struct qcow2_params *p, struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    char num[32];
    int ret;

    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    /* Created empty, as QEMU's protocol create (the size and preallocation
     * options went to the image file's): growing the image sizes it. */
    snprintf(num, sizeof(num), "0");
    qimg_opts_set(o, "size", num);
    ret = qimg_storage_create_name(p->data_file, o, err);
    qimg_opts_free(o);
    return ret;
}

/* As QEMU, a failed create removes the files it created (local files
 * only: other storages have no delete). */
static void remove_created(const char *name, bool created)
{
    if (created && qimg_storage_for(name) == &qimg_storage_file)
        unlink(name);
}

/* The steps after the skeleton: open it, size the L1 table, record the
 * backing file, preallocate. */
static int finish_create(const char *filename, const struct qcow2_params *p,
                         struct qimg_error *err)
{
    struct qimg_image *node = NULL;
    struct qimg_opts *oo = NULL;
    int ret;

    if (p->data_file) {
        oo = qimg_opts_new();
        qimg_opts_set(oo, "data-file", p->data_file);
    }
    ret = qimg_image_open_node(&node, filename, "qcow2", oo,
                               QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE |
                               QIMG_OPEN_NO_BACKING,
                               QIMG_CACHE_WRITEBACK, 0, err);
    qimg_opts_free(oo);
    if (ret < 0)
        return ret;
    /* QEMU sizes the new image with a generic truncate, whose own checks
     * come first. */
    ret = qimg_check_new_length(p->size, err);
    if (ret < 0) {
        qimg_error_prefix(err, "Could not resize image: ");
        qimg_close(node);
        return ret;
    }
    struct qcow2_state *s = node->state;
    pthread_mutex_lock(&node->lock);
    ret = qcow2_grow_l1(node, qcow2_l1_size_for(p->size, s->cluster_bits,
                                                s->l2_bits), err);
    if (ret < 0)
        qimg_error_prefix(err, "Could not resize image: ");
    node->size = p->size;
    if (p->backing_file) {
        snprintf(node->backing_name, sizeof(node->backing_name), "%s",
                 p->backing_file);
        snprintf(node->backing_fmt, sizeof(node->backing_fmt), "%s",
                 p->backing_fmt ? p->backing_fmt : "");
    }
    if (!ret) {
        ret = qcow2_update_header(node, err);
        if (ret == -ENOSPC && p->backing_file)
            qimg_error_set(err, ret, "Could not assign backing file '%s' with "
                           "format '%s': %s", p->backing_file,
                           p->backing_fmt ? p->backing_fmt : "", strerror(ENOSPC));
    }
    pthread_mutex_unlock(&node->lock);
    /* In QEMU the sizing is one truncate: a failure to size the data file
     * or to preallocate carries its prefix (e.g. over NBD, which cannot
     * grow). */
    int sized = 0;
    if (!ret && p->data_file && p->prealloc == QIMG_PREALLOC_OFF &&
        !p->data_file_raw)
        sized = s->data_file->ops->truncate(s->data_file, p->size,
                                            QIMG_PREALLOC_OFF, err);
    /* A raw data file is mapped 1:1 from the start. */
    else if (!ret && (p->prealloc != QIMG_PREALLOC_OFF || p->data_file_raw))
        sized = qcow2_preallocate(node, 0, p->size,
                                  p->prealloc == QIMG_PREALLOC_OFF
                                      ? QIMG_PREALLOC_METADATA : p->prealloc,
                                  err);
    if (sized < 0) {
        qimg_error_prefix(err, "Could not resize image: ");
        ret = sized;
    }
    /* Encryption last, after the size and preallocation, as QEMU does. */
    if (!ret && p->encrypt)
        ret = qcow2_crypto_create(node, &p->crypto, err);
    if (!ret)
        ret = qimg_flush(node, err);
    qimg_close(node);
    return ret;
}

int qcow2_create(const char *filename, const struct qimg_opts *opts,
                 struct qimg_error *err)
{
    struct qcow2_params p;
    bool created_data = false, created = false;
    int ret;

    ret = parse_params(opts, &p, false, err);
    if (ret < 0)
        return ret;
    if (p.data_file) {
        ret = create_data_file(&p, err);
        created_data = ret == 0;
    }
    if (!ret)
        ret = write_skeleton(filename, &p, opts, &created, err);
    if (!ret)
        ret = finish_create(filename, &p, err);
    if (ret < 0) {
        remove_created(filename, created);
        remove_created(p.data_file, created_data);
    }
    return ret;
}

/* ---- measure ------------------------------------------------------------- */

/* Size of an image with every cluster of `size` allocated. */
static uint64_t fully_allocated_size(uint64_t size, uint64_t cluster_size,
                                     uint32_t refcount_order, bool extended_l2)
{
    uint64_t l2e = extended_l2 ? 16 : 8;
    uint64_t aligned = qimg_div_round_up(size, cluster_size) * cluster_size;
    uint64_t meta = cluster_size;   /* header */
    uint64_t nl2e = qimg_div_round_up(aligned / cluster_size, cluster_size / l2e) *
                    (cluster_size / l2e);
    uint64_t nl1e;

    meta += nl2e * l2e;
    nl1e = qimg_div_round_up(nl2e * l2e / cluster_size, cluster_size / 8) *
           (cluster_size / 8);
    meta += nl1e * 8;
    meta += qcow2_refcount_metadata_size((meta + aligned) / cluster_size,
                                         cluster_size, refcount_order, false,
                                         NULL);
    return meta + aligned;
}

int qcow2_measure(const struct qimg_opts *opts, struct qimg_image *src,
                  uint64_t size, struct qimg_measure *out,
                  struct qimg_error *err)
{
    struct qcow2_params p;
    uint64_t virt, required = 0, luks = 0;
    struct qimg_opts *o = qimg_opts_dup(opts);
    int ret;

    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    qimg_opts_del(o, "size");
    ret = parse_params(o, &p, true, err);
    qimg_opts_free(o);
    /* The LUKS header clusters come on top (none for AES). */
    if (!ret)
        ret = qcow2_crypto_measure(opts, p.cluster_size, &luks, err);
    if (ret < 0)
        return ret;
    virt = src ? qimg_image_size(src) : size;
    if (!qimg_align_up(virt, p.cluster_size, &virt))
        return qimg_error_set(err, -EFBIG, "Image size too large");
    /* The L1 table an image of --size needs must fit QEMU's limit
     * (qemu-img checks only --size, not the size of a source image). */
    uint64_t l2_tables = qimg_div_round_up(virt / p.cluster_size,
                                           p.cluster_size /
                                               (p.extended_l2 ? 16 : 8));
    if (!src && l2_tables > QCOW2_MAX_L1_SIZE / 8)
        return qimg_error_set(err, -EFBIG, "The image size is too large (try "
                              "using a larger cluster size)");
    if (src && p.backing_file) {
        /* As QEMU: what the new backing file shares with the source is
         * unknown, so every cluster may need writing. */
        required = virt;
    } else if (src) {
        /* Count the clusters the source's data would occupy. */
        for (uint64_t off = 0; off < virt;) {
            struct qimg_extent e;
            ret = qimg_block_status_chain(src, NULL, off, virt - off, &e, err);
            if (ret < 0)
                return qimg_error_set(err, ret, "Unable to get block status: "
                                      "%s", strerror(-ret));
            uint64_t n = e.length;
            if (!n)
                break;
            if (!(e.flags & QIMG_BS_ZERO) &&
                (e.flags & (QIMG_BS_DATA | QIMG_BS_ALLOCATED)) ==
                    (QIMG_BS_DATA | QIMG_BS_ALLOCATED)) {
                uint64_t end = qimg_div_round_up(off + n, p.cluster_size) *
                               p.cluster_size;
                n = end - off;
                required += off % p.cluster_size + n;
            }
            off += n;
        }
    }
    if (p.prealloc == QIMG_PREALLOC_FULL || p.prealloc == QIMG_PREALLOC_FALLOC)
        required = virt;
    out->fully_allocated = fully_allocated_size(virt, p.cluster_size,
                                                p.refcount_order, p.extended_l2);
    out->required = out->fully_allocated - virt + required + luks;
    out->fully_allocated += luks;
    /* Bitmaps are reported when both sides can hold them. */
    if (src && p.version >= 3 && src->fmt == &qimg_format_qcow2 &&
        ((struct qcow2_state *)src->state)->version >= 3) {
        out->has_bitmaps = true;
        ret = qcow2_measure_bitmaps(src, p.cluster_size, &out->bitmaps, err);
    }
    return ret;
}
