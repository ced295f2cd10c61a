/*
 * qcow-create.c - creating qcow v1 images as QEMU 7.2 does, byte for
 * byte: the header, the backing file name after it, the zeroed L1 table at
 * the next 8-byte boundary.  Images with a backing file get 512-byte
 * clusters and 32 KiB L2 tables (a partial write of a cluster leaves the
 * rest zero, never the backing file's), others 4 KiB both.
 *
 * Encryption options follow QEMU: encryption=on is encrypt.format=aes
 * (both at once are refused), a key secret is required, and the image
 * records only the method (the key comes from the password at open).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/qcow/qcow.h"

const struct qimg_opt_desc qcow_create_opts[QCOW_N_CREATE_OPTS] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Format of the backing image", NULL},
    {"encryption", QIMG_OPT_BOOL, "Encrypt the image with format 'aes'. "
     "(Deprecated in favor of encrypt.format=aes)", NULL},
    {"encrypt.format", QIMG_OPT_STRING, "Encrypt the image, format choices: "
     "'aes'", NULL},
    {"encrypt.key-secret", QIMG_OPT_STRING, "ID of the secret that provides "
     "the AES encryption key", NULL},
};

struct qcow_params {
    uint64_t size;
    const char *backing_file;
    const char *encrypt_format;     /* as QEMU's visitor sees it, or NULL */
    bool encrypt_options;           /* some encrypt.* key was given */
};

/* Checks made before the file is created. */
static int pre_check(const struct qimg_opts *opts, struct qimg_error *err)
{
    const char *bf = qimg_opts_get(opts, "backing_fmt");
    const char *enc = qimg_opts_get_orig(opts, "encryption");

    if (bf && !qimg_qemu_format_known(bf))
        return qimg_error_set(err, -EINVAL, "unrecognized backing format "
                              "'%s'", bf);
    /* encryption=off is dropped; any other value aliases encrypt.format. */
    if (enc && strcmp(enc, "off") && qimg_opts_get(opts, "encrypt.format"))
        return qimg_error_set(err, -EINVAL, "'encrypt.format' and its alias "
                              "'encryption' can't be used at the same time");
    return 0;
}

/* The options as QEMU's QAPI visitor converts them. */
static int parse(const struct qimg_opts *opts, struct qcow_params *p,
                 struct qimg_error *err)
{
    const char *enc = qimg_opts_get_orig(opts, "encryption");
    int ret;

    memset(p, 0, sizeof(*p));
    p->backing_file = qimg_opts_get(opts, "backing_file");
    p->encrypt_format = qimg_opts_get(opts, "encrypt.format");
    if (enc && strcmp(enc, "off"))
        p->encrypt_format = strcmp(enc, "on") ? enc : "qcow";
    if (p->encrypt_format && !strcmp(p->encrypt_format, "aes"))
        p->encrypt_format = "qcow";
    p->encrypt_options = p->encrypt_format ||
                         qimg_opts_get(opts, "encrypt.key-secret");
    if (p->encrypt_options && !p->encrypt_format)
        return qimg_error_set(err, -EINVAL, "Parameter 'encrypt.format' is "
                              "missing");
    if (p->encrypt_format && strcmp(p->encrypt_format, "qcow") &&
        strcmp(p->encrypt_format, "luks"))
        return qimg_error_set(err, -EINVAL, "Parameter 'format' does not "
                              "accept value '%s'", p->encrypt_format);
    ret = qimg_opts_get_size(opts, "size", 0, &p->size, err);
    if (ret < 0)
        return ret;
    /* Silently rounded up to whole sectors. */
    if (!qimg_align_up(p->size, 512, &p->size))
        p->size = 0;
    return 0;
}

static int check(const struct qimg_opts *opts, const struct qcow_params *p,
                 struct qimg_error *err)
{
    if (!p->size)
        return qimg_error_set(err, -EINVAL, "Image size is too small, cannot "
                              "be zero length");
    if (p->encrypt_format && strcmp(p->encrypt_format, "qcow"))
        return qimg_error_set(err, -EINVAL, "Unsupported encryption format");
    if (p->encrypt_format)
        return qimg_key_secret_check(opts, err);
    return 0;
}

static int write_image(struct qimg_storage *st, const struct qcow_params *p,
                       struct qimg_error *err)
{
    uint8_t h[QCOW_HEADER_LEN] = {0}, sector[512] = {0};
    /* "fat:" names QEMU's vvfat pseudo backing file: not recorded. */
    bool has_backing = p->backing_file && strcmp(p->backing_file, "fat:");
    size_t blen = has_backing ? strlen(p->backing_file) : 0;
    uint64_t header_size = (QCOW_HEADER_LEN + blen + 7) & ~7ull;
    unsigned cluster_bits = p->backing_file ? 9 : 12;
    unsigned l2_bits = p->backing_file ? 12 : 9;
    unsigned shift = cluster_bits + l2_bits;
    uint64_t l1_size = (p->size + (1ull << shift) - 1) >> shift;
    int ret;

    if (p->size > UINT64_MAX - (1ull << shift) || l1_size * 8 > QCOW_MAX_L1_BYTES)
        return qimg_error_set(err, -EINVAL, "L1 table of %llu bytes is larger "
                              "than qimg's limit of %u bytes",
                              (unsigned long long)l1_size * 8,
                              QCOW_MAX_L1_BYTES);
    qimg_st_be32(h, QCOW_MAGIC);
    qimg_st_be32(h + 4, QCOW_VERSION);
    if (has_backing) {
        qimg_st_be64(h + 8, QCOW_HEADER_LEN);
        qimg_st_be32(h + 16, (uint32_t)blen);
    }
    qimg_st_be64(h + 24, p->size);
    h[32] = (uint8_t)cluster_bits;
    h[33] = (uint8_t)l2_bits;
    qimg_st_be32(h + 36, p->encrypt_format ? QCOW_CRYPT_AES : QCOW_CRYPT_NONE);
    qimg_st_be64(h + 40, header_size);
    ret = st->ops->pwrite(st, 0, sizeof(h), h, err);
    if (!ret && blen)
        ret = st->ops->pwrite(st, QCOW_HEADER_LEN, blen, p->backing_file, err);
    /* The L1 table in whole sectors of zeroes, as QEMU writes it. */
    for (uint64_t i = 0; !ret && i < qimg_div_round_up(l1_size * 8, 512); i++)
        ret = st->ops->pwrite(st, header_size + 512 * i, sizeof(sector),
                              sector, err);
    if (!ret)
        ret = st->ops->flush(st, err);
    return ret;
}

int qcow_create(const char *filename, const struct qimg_opts *opts,
                struct qimg_error *err)
{
    struct qimg_storage *st = NULL;
    struct qcow_params p;
    int ret;

    ret = pre_check(opts, err);
    if (!ret)
        ret = qimg_create_storage(filename, opts, &st, err);
    if (!ret)
        ret = parse(opts, &p, err);
    if (!ret)
        ret = check(opts, &p, err);
    if (!ret)
        ret = write_image(st, &p, err);
    qimg_storage_close(st);
    return ret;
}
