/*
 * qcow2-crypto.c - qcow2 encryption (qcow2.txt "crypt_method", the
 * "Full disk encryption header pointer" extension): LUKS (method 2), its
 * header in clusters of the image and data clusters encrypted with their
 * *host* offsets as IV sectors; legacy AES (method 1), keyed from the
 * password, IVs from *guest* offsets.  lib/crypto does the cryptography.
 *
 * Guest data of encrypted images moves in whole 512-byte sectors: the
 * entry points in qcow2-cluster.c widen other requests (qimg_rmw_*,
 * partial sectors patched under crypto_rmw_lock), so every host data
 * read and write here is sector aligned.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fmt/qcow2/qcow2.h"

/* Bytes encrypted per step of a write (bounds the bounce buffer). */
#define QCOW2_CRYPT_STEP (1u << 20)

/* ---- the LUKS header in the image -------------------------------------------- */

static uint64_t hdr_offset(const struct qcow2_state *s)
{
    return qimg_ld_be64(s->crypto_ext);
}

static uint64_t hdr_length(const struct qcow2_state *s)
{
    return qimg_ld_be64(s->crypto_ext + 8);
}

void qcow2_crypto_header_range(const struct qcow2_state *s, uint64_t *off,
                               uint64_t *len)
{
    *off = s->has_crypto_ext ? hdr_offset(s) : 0;
    *len = s->has_crypto_ext ? hdr_length(s) : 0;
}

static int hdr_read(void *opaque, uint64_t off, size_t len, void *buf,
                    struct qimg_error *err)
{
    struct qimg_image *node = opaque;
    struct qcow2_state *s = node->state;
    int ret;

    if (!qimg_range_ok(off, len, hdr_length(s)))
        return qimg_error_set(err, -EINVAL, "Request for data outside of "
                              "extension header");
    ret = node->file->ops->pread(node->file, hdr_offset(s) + off, len, buf,
                                 err);
    if (ret < 0)
        qimg_error_prefix(err, "Could not read encryption header: ");
    return ret;
}

static int hdr_write(void *opaque, uint64_t off, size_t len, const void *buf,
                     struct qimg_error *err)
{
    struct qimg_image *node = opaque;
    struct qcow2_state *s = node->state;
    int ret;

    if (!qimg_range_ok(off, len, hdr_length(s)))
        return qimg_error_set(err, -EINVAL, "Request for data outside of "
                              "extension header");
    ret = node->file->ops->pwrite(node->file, hdr_offset(s) + off, len, buf,
                                  err);
    if (ret < 0)   /* QEMU's wording, "read" included */
        qimg_error_prefix(err, "Could not read encryption header: ");
    return ret;
}

/* Create: clusters for the header, zeroed (most slots stay unwritten). */
static int hdr_init(void *opaque, uint64_t len, struct qimg_error *err)
{
    struct qimg_image *node = opaque;
    struct qcow2_state *s = node->state;
    uint64_t clusters = qimg_div_round_up(len, s->cluster_size);
    struct qimg_storage *st = node->file;
    int64_t off;
    int ret;

    pthread_mutex_lock(&node->lock);
    off = qcow2_alloc_clusters(node, clusters, err);
    pthread_mutex_unlock(&node->lock);
    if (off < 0)
        return qimg_error_set(err, (int)off, "Cannot allocate cluster for "
                              "LUKS header size %llu", (unsigned long long)len);
    qimg_st_be64(s->crypto_ext, (uint64_t)off);
    qimg_st_be64(s->crypto_ext + 8, len);
    s->has_crypto_ext = true;
    ret = st->ops->pwrite_zeroes
              ? st->ops->pwrite_zeroes(st, (uint64_t)off,
                                       clusters * s->cluster_size, 0, err)
              : -ENOTSUP;
    if (ret == -ENOTSUP) {
        uint8_t *z = calloc(1, s->cluster_size);
        if (!z)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = 0;
        for (uint64_t i = 0; !ret && i < clusters; i++)
            ret = st->ops->pwrite(st, (uint64_t)off + i * s->cluster_size,
                                  s->cluster_size, z, err);
        free(z);
    }
    if (ret < 0)
        qimg_error_prefix(err, "Could not zero fill encryption header: ");
    return ret;
}

static const struct qimg_crypto_io *luks_io(struct qimg_image *node,
                                            struct qimg_crypto_io *io)
{
    *io = (struct qimg_crypto_io){hdr_read, hdr_write, hdr_init, node};
    return io;
}

/* ---- open ------------------------------------------------------------------------ */

static int crypto_open(struct qimg_image *node, const struct qimg_opts *opts,
                       struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *fmt = qimg_opts_get(opts, "encrypt.format");
    const char *key = qimg_opts_get(opts, "encrypt.key-secret");
    unsigned flags = (node->flags & QIMG_OPEN_NO_IO) ? QIMG_CRYPTO_OPEN_NO_IO
                                                     : 0;
    struct qimg_crypto_io io;

    /* QEMU ignores encrypt.* options of unencrypted images; the others
     * take key-secret (and format, checked below) only. */
    if (s->crypt_method && qimg_crypto_check_open_opts(opts, "encrypt.", err))
        return -EINVAL;
    switch (s->crypt_method) {
    case QCOW2_CRYPT_NONE:
        if (fmt)
            return qimg_error_set(err, -EINVAL, "No encryption in image "
                                  "header, but options specified format "
                                  "'%s'", fmt);
        return 0;
    case QCOW2_CRYPT_AES:
        if (fmt && strcmp(fmt, "aes"))
            return qimg_error_set(err, -EINVAL, "Header reported 'aes' "
                                  "encryption format but options specify "
                                  "'%s'", fmt);
        return qimg_crypto_open(&s->crypto, QIMG_CRYPTO_FORMAT_QCOW, key,
                                "encrypt.", flags, NULL, err);
    case QCOW2_CRYPT_LUKS:
        if (fmt && strcmp(fmt, "luks"))
            return qimg_error_set(err, -EINVAL, "Header reported 'luks' "
                                  "encryption format but options specify "
                                  "'%s'", fmt);
        if (!s->has_crypto_ext)
            return qimg_error_set(err, -EINVAL, "Missing CRYPTO header for "
                                  "crypt method %u", s->crypt_method);
        if (hdr_offset(s) % s->cluster_size)
            return qimg_error_set(err, -EINVAL, "Encryption header offset "
                                  "'%llu' is not a multiple of cluster size "
                                  "'%u'", (unsigned long long)hdr_offset(s),
                                  (unsigned)s->cluster_size);
        return qimg_crypto_open(&s->crypto, QIMG_CRYPTO_FORMAT_LUKS, key,
                                "encrypt.", flags, luks_io(node, &io), err);
    default:
        return qimg_error_set(err, -EINVAL, "Unsupported encryption method %u",
                              s->crypt_method);
    }
}

int qcow2_crypto_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = crypto_open(node, opts, err);

    if (!ret && s->crypto && !s->crypto_rmw_lock_ready) {
        pthread_mutex_init(&s->crypto_rmw_lock, NULL);
        s->crypto_rmw_lock_ready = true;
    }
    return ret;
}

void qcow2_crypto_close(struct qcow2_state *s)
{
    qimg_crypto_free(s->crypto);
    s->crypto = NULL;
}

/* ---- data ------------------------------------------------------------------------- */

/* The IV sector offset: host offsets for LUKS, guest ones for AES. */
static uint64_t iv_offset(const struct qcow2_state *s, uint64_t host,
                          uint64_t guest)
{
    return s->crypt_method == QCOW2_CRYPT_LUKS ? host : guest;
}

int qcow2_data_pread(struct qimg_image *node, uint64_t host, uint64_t guest,
                     size_t len, void *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_storage *st = qcow2_data_storage(node);
    int ret = st->ops->pread(st, host, len, buf, err);

    if (ret < 0 || !s->crypto)
        return ret;
    if (qimg_crypto_decrypt(s->crypto, iv_offset(s, host, guest), buf, len,
                            err) < 0)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return 0;
}

int qcow2_data_pwrite(struct qimg_image *node, uint64_t host, uint64_t guest,
                      size_t len, const void *buf, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_storage *st = qcow2_data_storage(node);
    const uint8_t *p = buf;
    uint8_t *bounce;
    int ret = 0;

    if (!s->crypto)
        return st->ops->pwrite(st, host, len, buf, err);
    /* The caller's data stays plain: a copy is encrypted, a step at a
     * time. */
    bounce = malloc(QIMG_MIN(len, (size_t)QCOW2_CRYPT_STEP));
    if (!bounce)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (!ret && len) {
        size_t n = QIMG_MIN(len, (size_t)QCOW2_CRYPT_STEP);
        memcpy(bounce, p, n);
        if (qimg_crypto_encrypt(s->crypto, iv_offset(s, host, guest), bounce,
                                n, err) < 0)
            ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        else
            ret = st->ops->pwrite(st, host, n, bounce, err);
        host += n;
        guest += n;
        p += n;
        len -= n;
    }
    free(bounce);
    return ret;
}

bool qcow2_has_zero_init(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    /* Preallocated images have their first L2 table (QEMU's test);
     * encrypted preallocated clusters decrypt to garbage. */
    bool preallocated = s->l1_size && s->l1_table && s->l1_table[0];
    return !(preallocated && s->crypto);
}

bool qcow2_crypto_unaligned(const struct qcow2_state *s, uint64_t off,
                            size_t len)
{
    return s->crypto && ((off | len) % QIMG_CRYPTO_SECTOR_SIZE);
}

/* ---- create, measure, amend, info --------------------------------------------------- */

/* Keys under "encrypt." that belong to qcow2 itself. */
static const char *const qcow2_encrypt_keys[] = {"format", NULL};

int qcow2_crypto_parse_create(const struct qimg_opts *opts, bool *encrypt,
                              struct qimg_crypto_create_opts *co,
                              struct qimg_error *err)
{
    const char *fmt = qimg_opts_get(opts, "encrypt.format");
    const char *legacy = qimg_opts_get(opts, "encryption");

    *encrypt = false;
    /* As QEMU: "encryption=on" is format aes, "off" is dropped, anything
     * else is taken as a format name (and refused as one). */
    if (legacy && !strcmp(legacy, "off"))
        legacy = NULL;
    else if (legacy && !strcmp(legacy, "on"))
        legacy = "aes";
    if (fmt && legacy)
        return qimg_error_set(err, -EINVAL, "'encrypt.format' and its alias "
                              "'encryption' can't be used at the same time");
    if (legacy)
        fmt = legacy;
    if (!fmt) {
        for (size_t i = 0; i < qimg_opts_count(opts); i++)
            if (!strncmp(qimg_opts_key(opts, i), "encrypt.", 8))
                return qimg_error_set(err, -EINVAL, "Parameter "
                                      "'encrypt.format' is missing");
        return 0;
    }
    if (strcmp(fmt, "aes") && strcmp(fmt, "luks"))
        return qimg_error_set(err, -EINVAL, "Parameter 'format' does not "
                              "accept value '%s'", fmt);
    *encrypt = true;
    return qimg_crypto_parse_create_opts(co, strcmp(fmt, "aes")
                                                 ? QIMG_CRYPTO_FORMAT_LUKS
                                                 : QIMG_CRYPTO_FORMAT_QCOW,
                                         opts, "encrypt.", qcow2_encrypt_keys,
                                         err);
}

int qcow2_crypto_create(struct qimg_image *node,
                        const struct qimg_crypto_create_opts *co,
                        struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_crypto *c = NULL;
    struct qimg_crypto_io io;
    int ret;

    s->crypt_method = co->format == QIMG_CRYPTO_FORMAT_LUKS ? QCOW2_CRYPT_LUKS
                                                            : QCOW2_CRYPT_AES;
    ret = qimg_crypto_create(&c, co, "encrypt.", luks_io(node, &io), err);
    qimg_crypto_free(c);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&node->lock);
    ret = qcow2_update_header(node, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        qimg_error_set(err, ret, "Could not write encryption header: %s",
                       strerror(-ret));
    return ret;
}

int qcow2_crypto_measure(const struct qimg_opts *opts, uint64_t cluster_size,
                         uint64_t *bytes, struct qimg_error *err)
{
    struct qimg_crypto_create_opts co;
    const char *fmt = qimg_opts_get(opts, "encrypt.format");
    uint64_t len;
    int ret;

    *bytes = 0;
    if (!fmt || strcmp(fmt, "luks"))
        return 0;
    ret = qimg_crypto_parse_create_opts(&co, QIMG_CRYPTO_FORMAT_LUKS, opts,
                                        "encrypt.", qcow2_encrypt_keys, err);
    if (!ret)
        ret = qimg_crypto_payload_len(&co, "encrypt.", &len, err);
    if (!ret)
        *bytes = qimg_div_round_up(len, cluster_size) * cluster_size;
    return ret;
}

int qcow2_crypto_amend_check(const struct qcow2_state *s,
                             struct qimg_error *err)
{
    if (!s->crypto)
        return qimg_error_set(err, -EINVAL, "Can't amend encryption options - "
                              "encryption not present");
    if (s->crypt_method != QCOW2_CRYPT_LUKS)
        return qimg_error_set(err, -ENOTSUP, "Only LUKS encryption options can "
                              "be amended");
    return 0;
}

int qcow2_crypto_amend(struct qimg_image *node, const struct qimg_opts *opts,
                       bool force, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_crypto_io io;
    int ret = qimg_crypto_amend(s->crypto, opts, "encrypt.", force,
                                luks_io(node, &io), err);

    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

json_t *qcow2_crypto_info(const struct qcow2_state *s)
{
    json_t *o = NULL;
    char *text;

    if (!s->crypto)
        return NULL;
    if (s->crypt_method == QCOW2_CRYPT_LUKS &&
        (text = qimg_crypto_info_json(s->crypto))) {
        o = json_loads(text, 0, NULL);
        free(text);
    }
    if (!o)
        o = json_object();
    json_object_set_new(o, "format",
                        json_string(s->crypt_method == QCOW2_CRYPT_LUKS ? "luks"
                                                                        : "aes"));
    return o;
}
