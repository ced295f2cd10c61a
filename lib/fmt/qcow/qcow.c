/*
 * qcow.c - qcow version 1: probe, open, close, info, emptying after a
 * commit (see qcow.h for the layout).
 *
 * Open checks the header in QEMU 7.2's order with its messages.  The
 * format has no check, resize, snapshots or change of backing file, as in
 * QEMU; the backing file's format is never recorded, so it is probed.
 *
 * Encryption (QEMU's legacy "aes" method: AES-128-CBC keyed with the
 * password, lib/crypto): info reads the headers without a key, as QEMU
 * does; other opens need encrypt.key-secret.  Data clusters are en/de-
 * crypted in qcow-cluster.c, each 512-byte sector with its guest sector
 * number as IV; compressed clusters are stored in clear, as QEMU's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qcow/qcow.h"

static int qcow_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len < QCOW_HEADER_LEN || qimg_ld_be32(buf) != QCOW_MAGIC ||
        qimg_ld_be32(buf + 4) != QCOW_VERSION)
        return 0;
    return 100;
}

/*
 * The encryption context, after QEMU's checks of the options against the
 * header.  info (NO_IO) needs no key; otherwise the key is the password
 * of encrypt.key-secret.
 */
static int qcow_open_crypto(struct qimg_image *node,
                            const struct qimg_opts *opts,
                            struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    const char *fmt = qimg_opts_get(opts, "encrypt.format");
    unsigned flags = (node->flags & QIMG_OPEN_NO_IO) ? QIMG_CRYPTO_OPEN_NO_IO
                                                     : 0;
    int ret;

    if (!s->crypt_method) {
        if (fmt)
            return qimg_error_set(err, -EINVAL, "No encryption in image "
                                  "header, but options specified format "
                                  "'%s'", fmt);
        return 0;
    }
    if (s->crypt_method != QCOW_CRYPT_AES)
        return qimg_error_set(err, -EINVAL, "invalid encryption method in "
                              "qcow header");
    if (fmt && strcmp(fmt, "aes"))
        return qimg_error_set(err, -EINVAL, "Header reported 'aes' encryption "
                              "format but options specify '%s'", fmt);
    ret = qimg_crypto_check_open_opts(opts, "encrypt.", err);
    if (!ret)
        ret = qimg_crypto_open(&s->crypto, QIMG_CRYPTO_FORMAT_QCOW,
                               qimg_opts_get(opts, "encrypt.key-secret"),
                               "encrypt.", flags, NULL, err);
    return ret;
}

static int check_header(struct qimg_image *node, const uint8_t *b,
                        struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint32_t version = qimg_ld_be32(b + 4);
    uint64_t size = qimg_ld_be64(b + 24);
    uint8_t cluster_bits = b[32], l2_bits = b[33];

    if (qimg_ld_be32(b) != QCOW_MAGIC)
        return qimg_error_set(err, -EINVAL, "Image not in qcow format");
    if (version != QCOW_VERSION)
        return qimg_error_set(err, -ENOTSUP, "qcow (v%d) does not support qcow "
                              "version %u%s", QCOW_VERSION, version,
                              version == 2 || version == 3
                                  ? "\nTry the 'qcow2' driver instead." : "");
    if (size <= 1)
        return qimg_error_set(err, -EINVAL, "Image size is too small (must be "
                              "at least 2 bytes)");
    if (cluster_bits < QCOW_MIN_CLUSTER_BITS ||
        cluster_bits > QCOW_MAX_CLUSTER_BITS)
        return qimg_error_set(err, -EINVAL, "Cluster size must be between 512 "
                              "and 64k");
    if (l2_bits < QCOW_MIN_L2_BITS || l2_bits > QCOW_MAX_L2_BITS)
        return qimg_error_set(err, -EINVAL, "L2 table size must be between 512 "
                              "and 64k");
    s->crypt_method = qimg_ld_be32(b + 36);
    s->cluster_bits = cluster_bits;
    s->cluster_size = 1u << cluster_bits;
    s->l2_bits = l2_bits;
    s->l2_size = 1u << l2_bits;
    s->cluster_offset_mask = (1ull << (63 - cluster_bits)) - 1;
    s->l1_table_offset = qimg_ld_be64(b + 40);
    /* QEMU sees whole sectors: a size of 1000 bytes is one sector. */
    node->size = size & ~511ull;
    return 0;
}

static int load_tables(struct qimg_image *node, uint64_t size,
                       struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    unsigned shift = s->cluster_bits + s->l2_bits;
    struct qimg_table_geom g = {
        .offset = s->l1_table_offset, .esize = 8, .big_endian = true,
        .max_bytes = QCOW_MAX_L1_BYTES,
    };
    int ret;

    if (size > UINT64_MAX - (1ull << shift))
        return qimg_error_set(err, -EINVAL, "Image too large");
    g.n = (size + (1ull << shift) - 1) >> shift;
    if (g.n > INT32_MAX / 8)
        return qimg_error_set(err, -EINVAL, "Image too large");
    if (g.n * 8 > QCOW_MAX_L1_BYTES)
        return qimg_error_set(err, -EFBIG, "L1 table of %llu bytes is larger "
                              "than qimg's limit of %u bytes",
                              (unsigned long long)g.n * 8, QCOW_MAX_L1_BYTES);
    /* Bytes past the end of the file read as zeroes, as in QEMU; a table
     * that wraps is a read its block layer refuses. */
    if (!qimg_range_ok(g.offset, g.n * 8, QIMG_MAX_LENGTH))
        return qimg_error_set(err, -EIO, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(EIO));
    ret = qimg_table_load(&s->l1, node->file, &g, "L1 table", err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(-ret));
    g.n = s->l2_size;
    g.max_bytes = 1u << (QCOW_MAX_L2_BITS + 3);
    ret = qimg_table_cache_init(&s->l2, node->file, &g, QCOW_L2_CACHE_SLOTS,
                                UINT64_MAX, "L2 table", err);
    if (ret < 0)
        qimg_table_release(&s->l1);
    else
        s->l2.load_event = true;   /* QEMU's blkdebug l2_load */
    return ret;
}

static int read_backing_name(struct qimg_image *node, const uint8_t *b,
                             struct qimg_error *err)
{
    uint64_t off = qimg_ld_be64(b + 8);
    uint32_t len = qimg_ld_be32(b + 16);
    int ret;

    if (!off)
        return 0;
    if (len > QCOW_MAX_BACKING_NAME)
        return qimg_error_set(err, -EINVAL, "Backing file name too long");
    ret = node->file->ops->pread(node->file, off, len, node->backing_name, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(-ret));
    node->backing_name[len] = '\0';
    return 0;
}

static void qcow_free(struct qcow_state *s)
{
    qimg_crypto_free(s->crypto);
    s->crypto = NULL;
    if (s->rmw_lock_ready)
        pthread_mutex_destroy(&s->rmw_lock);
    s->rmw_lock_ready = false;
    qimg_table_cache_release(&s->l2);
    qimg_table_release(&s->l1);
}

static int qcow_open(struct qimg_image *node, const struct qimg_opts *opts,
                     struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t b[QCOW_HEADER_LEN];
    int64_t fsize;
    int ret;

    ret = node->file->ops->pread(node->file, 0, sizeof(b), b, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Could not open '%s': %s",
                              qimg_image_file_name(node), strerror(-ret));
    ret = check_header(node, b, err);
    if (!ret)
        ret = qcow_open_crypto(node, opts, err);
    if (!ret)
        ret = load_tables(node, qimg_ld_be64(b + 24), err);
    if (ret < 0) {
        qcow_free(s);
        return ret;
    }
    ret = read_backing_name(node, b, err);
    fsize = node->file->ops->get_size(node->file);
    if (!ret && fsize < 0)
        ret = qimg_error_set(err, (int)fsize, "Could not open '%s': %s",
                             qimg_image_file_name(node), strerror((int)-fsize));
    if (ret < 0) {
        qcow_free(s);
        return ret;
    }
    pthread_mutex_init(&s->rmw_lock, NULL);
    s->rmw_lock_ready = true;
    /* QEMU's file length is in whole sectors. */
    s->alloc.end = ((uint64_t)fsize + 511) & ~511ull;
    s->alloc.max = QIMG_MAX_LENGTH;
    return 0;
}

static void qcow_close(struct qimg_image *node)
{
    qcow_free(node->state);
}

static int qcow_get_info(struct qimg_image *node, struct qimg_info *info,
                         struct qimg_error *err)
{
    struct qcow_state *s = node->state;

    info->cluster_size = s->cluster_size;
    info->encrypted = s->crypt_method != 0;
    return 0;
}

/* After a commit: no cluster left, the file cut after the L1 table. */
static int qcow_make_empty(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t end = s->l1_table_offset + s->l1.n * 8;
    int ret;

    memset(s->l1.raw, 0, s->l1.raw_len);
    ret = qimg_table_store_all(&s->l1, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (!ret)
        ret = node->file->ops->truncate(node->file, end, QIMG_PREALLOC_OFF,
                                        err);
    qimg_table_cache_clear(&s->l2);
    if (!ret)
        s->alloc.end = end;
    return ret;
}

/* The encryption options; a key makes the node a json: name, as QEMU's
 * strong runtime option. */
static const char *const qcow_runtime_opts[] = {"encrypt.", NULL};
static const char *const qcow_strong_opts[] = {"encrypt.key-secret", NULL};

const struct qimg_format qimg_format_qcow = {
    .name = "qcow",
    .runtime_opts = qcow_runtime_opts,
    .strong_opts = qcow_strong_opts,
    .supports_backing = true,
    .description = "QEMU copy-on-write image, version 1",
    .state_size = sizeof(struct qcow_state),
    .create_opts = qcow_create_opts,
    .n_create_opts = QCOW_N_CREATE_OPTS,
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .create = qcow_create,
    .pread = qcow_pread,
    .pwrite = qcow_pwrite,
    .pwrite_compressed = qcow_pwrite_compressed,
    .compress_cluster = qcow_compress_cluster,
    .pwrite_compressed_data = qcow_pwrite_compressed_data,
    .flush = qcow_flush,
    .block_status = qcow_block_status,
    .get_info = qcow_get_info,
    .make_empty = qcow_make_empty,
};
