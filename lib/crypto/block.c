/*
 * block.c - crypto blocks: the encryption context of an image, in the
 * two formats QEMU has (legacy qcow AES and LUKS), created, opened and
 * used through one set of calls (crypto.h).  The LUKS half is luks-keyslot.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto-priv.h"

/* g_utf8_validate's rules, which QEMU applies to passwords: well-formed
 * shortest sequences, no surrogates, nothing past U+10FFFF, no NUL. */
static bool valid_utf8(const uint8_t *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        uint8_t c = s[i];
        uint32_t cp, min;
        int n;

        if (!c)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 1; cp = c & 0x1f; min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2; cp = c & 0x0f; min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3; cp = c & 0x07; min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= (size_t)n)
            return false;
        for (int k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += (size_t)n + 1;
    }
    return true;
}

int qimg_crypto_password(const char *id, char **pw, size_t *len,
                         struct qimg_error *err)
{
    size_t n;
    const char *data = qimg_secret_get(id, &n);
    char *copy;

    *pw = NULL;
    if (!data)
        return qimg_error_set(err, -EINVAL, "No secret with id '%s'", id);
    if (!valid_utf8((const uint8_t *)data, n))
        return qimg_error_set(err, -EINVAL, "Data from secret %s is not valid "
                              "UTF-8", id);
    copy = qimg_secmem_alloc(n + 1);
    if (!copy)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memcpy(copy, data, n);
    *pw = copy;
    *len = n;
    return 0;
}

/* ---- options ------------------------------------------------------------------ */

/* One QAPI enum member under prefix ("Parameter 'cipher-alg' does not
 * accept value 'x'": QEMU names the member without the prefix). */
static int parse_enum(const struct qimg_opts *opts, const char *prefix,
                      const char *name, int (*lookup)(const char *),
                      int *out, bool *given, struct qimg_error *err)
{
    char key[64];
    const char *v;

    snprintf(key, sizeof(key), "%s%s", prefix, name);
    v = qimg_opts_get(opts, key);
    if (given)
        *given = v != NULL;
    if (!v)
        return 0;
    *out = lookup(v);
    if (*out < 0)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' does not accept "
                              "value '%s'", name, v);
    return 0;
}

static bool in_list(const char *const *list, const char *name)
{
    for (; list && *list; list++)
        if (!strcmp(*list, name))
            return true;
    return false;
}

int qimg_crypto_parse_create_opts(struct qimg_crypto_create_opts *o,
                                  enum qimg_crypto_format fmt,
                                  const struct qimg_opts *opts,
                                  const char *prefix,
                                  const char *const *ignore,
                                  struct qimg_error *err)
{
    static const char *const luks_keys[] = {
        "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
        "ivgen-hash-alg", "hash-alg", "iter-time", NULL,
    };
    static const char *const qcow_keys[] = {"key-secret", NULL};
    size_t plen = strlen(prefix);
    int v, ret;
    char key[64];

    memset(o, 0, sizeof(*o));
    o->format = fmt;
    o->cipher_alg = QIMG_CIPHER_AES_256;
    o->cipher_mode = QIMG_MODE_XTS;
    o->ivgen_alg = QIMG_IVGEN_PLAIN64;
    o->hash_alg = QIMG_HASH_SHA256;
    o->ivgen_hash_alg = QIMG_HASH_SHA256;
    o->iter_time = QIMG_LUKS_DEFAULT_ITER_TIME_MS;
    snprintf(key, sizeof(key), "%skey-secret", prefix);
    o->key_secret = qimg_opts_get(opts, key);

    if (fmt == QIMG_CRYPTO_FORMAT_LUKS) {
        bool has_ivgen, has_hash;
        v = o->cipher_alg;
        ret = parse_enum(opts, prefix, "cipher-alg", qimg_cipher_alg_lookup,
                         &v, NULL, err);
        o->cipher_alg = v;
        v = o->cipher_mode;
        if (!ret)
            ret = parse_enum(opts, prefix, "cipher-mode",
                             qimg_cipher_mode_lookup, &v, NULL, err);
        o->cipher_mode = v;
        v = o->ivgen_alg;
        if (!ret)
            ret = parse_enum(opts, prefix, "ivgen-alg", qimg_ivgen_alg_lookup,
                             &v, &has_ivgen, err);
        o->ivgen_alg = v;
        v = o->ivgen_hash_alg;
        if (!ret)
            ret = parse_enum(opts, prefix, "ivgen-hash-alg",
                             qimg_hash_alg_lookup, &v, &o->has_ivgen_hash, err);
        o->ivgen_hash_alg = v;
        v = o->hash_alg;
        if (!ret)
            ret = parse_enum(opts, prefix, "hash-alg", qimg_hash_alg_lookup,
                             &v, &has_hash, err);
        o->hash_alg = v;
        if (ret < 0)
            return ret;
        int64_t it = 0;
        snprintf(key, sizeof(key), "%siter-time", prefix);
        ret = qimg_opts_get_int64(opts, key, QIMG_LUKS_DEFAULT_ITER_TIME_MS,
                                  &it, err);
        if (ret < 0)
            return ret;
        o->iter_time = (uint64_t)it;   /* QEMU's cast: -1 is huge */
        /* essiv needs a hash: sha256 unless one was given. */
        if (o->ivgen_alg == QIMG_IVGEN_ESSIV)
            o->has_ivgen_hash = true;
    }
    /* Then what the format does not know, as QEMU's visitor does last. */
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (strncmp(k, prefix, plen) || in_list(ignore, k + plen))
            continue;
        if (!in_list(fmt == QIMG_CRYPTO_FORMAT_LUKS ? luks_keys : qcow_keys,
                     k + plen))
            return qimg_error_set(err, -EINVAL, "Parameter '%s' is unexpected",
                                  k);
    }
    return 0;
}

int qimg_crypto_check_open_opts(const struct qimg_opts *opts,
                                const char *prefix, struct qimg_error *err)
{
    size_t plen = strlen(prefix);

    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (!strncmp(k, prefix, plen) && strcmp(k + plen, "key-secret") &&
            strcmp(k + plen, "format"))
            return qimg_error_set(err, -EINVAL, "Parameter '%s' is "
                                  "unexpected", k + plen);
    }
    return 0;
}

/* ---- the legacy qcow cipher ---------------------------------------------------- */

static int qcow_init(struct qimg_crypto *c, const char *key_secret,
                     const char *prefix, struct qimg_error *err)
{
    char *pw;
    size_t len;
    int ret;

    if (!key_secret)
        return qimg_error_set(err, -EINVAL, "Parameter '%skey-secret' is "
                              "required for cipher", prefix);
    ret = qimg_crypto_password(key_secret, &pw, &len, err);
    if (ret < 0)
        return ret;
    ret = qimg_qcow_aes_new(&c->cipher, pw, len, err);
    qimg_secmem_free(pw);
    return ret < 0 ? -ENOTSUP : 0;
}

/* ---- entry points -------------------------------------------------------------- */

static struct qimg_crypto *crypto_new(enum qimg_crypto_format fmt,
                                      struct qimg_error *err)
{
    struct qimg_crypto *c;

    qimg_crypto_init();
    c = calloc(1, sizeof(*c));
    if (!c)
        qimg_error_set(err, -ENOMEM, "Out of memory");
    else
        c->format = fmt;
    return c;
}

int qimg_crypto_open(struct qimg_crypto **out, enum qimg_crypto_format fmt,
                     const char *key_secret, const char *prefix,
                     unsigned flags, const struct qimg_crypto_io *io,
                     struct qimg_error *err)
{
    struct qimg_crypto *c = crypto_new(fmt, err);
    int ret = 0;

    *out = NULL;
    if (!c)
        return -ENOMEM;
    if (fmt == QIMG_CRYPTO_FORMAT_LUKS)
        ret = qimg_luks_open(c, key_secret, prefix, flags, io, err);
    else if (!(flags & QIMG_CRYPTO_OPEN_NO_IO))
        ret = qcow_init(c, key_secret, prefix, err);
    if (ret < 0) {
        qimg_crypto_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

/* A new context for creation options o: LUKS header and key slots
 * (made but not written when dry_run), or the legacy qcow key. */
static int crypto_build(const struct qimg_crypto_create_opts *o,
                        const char *prefix, bool dry_run,
                        const struct qimg_crypto_io *io,
                        struct qimg_crypto **out, struct qimg_error *err)
{
    struct qimg_crypto *c = crypto_new(o->format, err);
    int ret;

    *out = NULL;
    if (!c)
        return -ENOMEM;
    if (o->format == QIMG_CRYPTO_FORMAT_LUKS)
        ret = qimg_luks_create(c, o, prefix, dry_run, io, err);
    else
        ret = qcow_init(c, o->key_secret, prefix, err);
    if (ret < 0) {
        qimg_crypto_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

int qimg_crypto_create(struct qimg_crypto **out,
                       const struct qimg_crypto_create_opts *o,
                       const char *prefix, const struct qimg_crypto_io *io,
                       struct qimg_error *err)
{
    return crypto_build(o, prefix, false, io, out, err);
}

int qimg_crypto_payload_len(const struct qimg_crypto_create_opts *o,
                            const char *prefix, uint64_t *len,
                            struct qimg_error *err)
{
    struct qimg_crypto *c;
    int ret = crypto_build(o, prefix, true, NULL, &c, err);

    *len = ret ? 0 : c->payload_offset;
    if (!ret)
        qimg_crypto_free(c);
    return ret;
}

int qimg_crypto_amend(struct qimg_crypto *c, const struct qimg_opts *opts,
                      const char *prefix, bool force,
                      const struct qimg_crypto_io *io, struct qimg_error *err)
{
    if (c->format != QIMG_CRYPTO_FORMAT_LUKS)
        return qimg_error_set(err, -ENOTSUP, "Crypto format qcow doesn't "
                              "support format options amendment");
    return qimg_luks_amend(c, opts, prefix, force, io, err);
}

enum qimg_crypto_format qimg_crypto_format(const struct qimg_crypto *c)
{
    return c->format;
}

uint64_t qimg_crypto_payload_offset(const struct qimg_crypto *c)
{
    return c->payload_offset;
}

char *qimg_crypto_info_json(const struct qimg_crypto *c)
{
    if (c->format != QIMG_CRYPTO_FORMAT_LUKS)
        return NULL;
    return qimg_luks_info_json(&c->hdr, &c->algs);
}

int qimg_crypto_encrypt(struct qimg_crypto *c, uint64_t offset, void *buf,
                        size_t len, struct qimg_error *err)
{
    if (!c->cipher)
        return qimg_error_set(err, -EIO, "Encryption key not loaded");
    return qimg_sector_cipher_encrypt(c->cipher,
                                      offset / QIMG_CRYPTO_SECTOR_SIZE, buf,
                                      len, err);
}

int qimg_crypto_decrypt(struct qimg_crypto *c, uint64_t offset, void *buf,
                        size_t len, struct qimg_error *err)
{
    if (!c->cipher)
        return qimg_error_set(err, -EIO, "Encryption key not loaded");
    return qimg_sector_cipher_decrypt(c->cipher,
                                      offset / QIMG_CRYPTO_SECTOR_SIZE, buf,
                                      len, err);
}

void qimg_crypto_free(struct qimg_crypto *c)
{
    if (!c)
        return;
    qimg_sector_cipher_free(c->cipher);
    free(c->secret_id);
    qimg_wipe(&c->hdr, sizeof(c->hdr));
    free(c);
}
