/*
 * secret.c - secrets from --object secret,id=ID,data=...|file=...
 * [,format=raw|base64][,keyid=ID,iv=BASE64], kept for the process
 * lifetime (like QEMU's object tree).  Encrypted formats look them up by
 * id.  The values live in secure memory (core/secmem.h): never in a core
 * file, wiped at exit; messages name ids and files, never values.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto.h"

#define QIMG_MAX_SECRETS 64
/* A secret file is a key or passphrase, never large. */
#define QIMG_MAX_SECRET_FILE (64 * 1024)
/* keyid=: the key of an AES-256-CBC encrypted secret. */
#define SECRET_AES_KEY_LEN 32
#define SECRET_AES_IV_LEN 16

struct secret {
    char *id;
    char *data;     /* secmem, NUL-terminated */
    size_t len;
};

static struct secret secrets[QIMG_MAX_SECRETS];
static size_t n_secrets;

static void wipe_secrets(void)
{
    for (size_t i = 0; i < n_secrets; i++) {
        qimg_secmem_free(secrets[i].data);
        free(secrets[i].id);
    }
    n_secrets = 0;
}

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decode base64 in place; returns decoded length or -EINVAL. */
static ssize_t b64_decode(char *s, size_t len)
{
    size_t in = 0, out = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; in < len && s[in] != '='; in++) {
        int v = b64_value((unsigned char)s[in]);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[out++] = (char)((acc >> bits) & 0xff);
        }
    }
    s[out] = '\0';
    return (ssize_t)out;
}

/* A secure copy of len bytes, NUL-terminated. */
static char *secure_copy(const char *p, size_t len)
{
    char *q = qimg_secmem_alloc(len + 1);
    if (q)
        memcpy(q, p, len);
    return q;
}

static char *read_secret_file(const char *path, size_t *len,
                              struct qimg_error *err)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    if (!f) {
        /* glib's g_file_get_contents wording, as QEMU shows it */
        qimg_error_set(err, -errno, "Unable to read %s: Failed to open file "
                       "\u201c%s\u201d: %s", path, path, strerror(errno));
        return NULL;
    }
    buf = qimg_secmem_alloc(QIMG_MAX_SECRET_FILE + 1);
    if (!buf) {
        fclose(f);
        qimg_error_set(err, -ENOMEM, "Out of memory");
        return NULL;
    }
    *len = fread(buf, 1, QIMG_MAX_SECRET_FILE, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* keyid=: data is AES-256-CBC ciphertext under secret keyid with iv. */
static int decrypt_secret(char **value, size_t *len, const char *keyid,
                          const char *iv_b64, bool base64,
                          struct qimg_error *err)
{
    size_t keylen, ivlen, n = *len;
    const char *key = qimg_secret_get(keyid, &keylen);
    char iv[64];
    uint8_t pad;
    int ret;

    if (!key)
        return qimg_error_set(err, -EINVAL, "No secret with id '%s'", keyid);
    if (keylen != SECRET_AES_KEY_LEN)
        return qimg_error_set(err, -EINVAL, "Key should be 32 bytes in "
                              "length");
    if (!iv_b64)
        return qimg_error_set(err, -EINVAL, "IV is required to decrypt "
                              "secret");
    if (strlen(iv_b64) >= sizeof(iv))
        return qimg_error_set(err, -EINVAL, "IV should be 16 bytes in length "
                              "not %zu", strlen(iv_b64) * 3 / 4);
    strcpy(iv, iv_b64);
    ssize_t d = b64_decode(iv, strlen(iv));
    if (d < 0)
        return qimg_error_set(err, -EINVAL, "Invalid base64 data");
    ivlen = (size_t)d;
    if (ivlen != SECRET_AES_IV_LEN)
        return qimg_error_set(err, -EINVAL, "IV should be 16 bytes in length "
                              "not %zu", ivlen);
    if (base64) {
        d = b64_decode(*value, n);
        if (d < 0)
            return qimg_error_set(err, -EINVAL, "Invalid base64 data");
        n = (size_t)d;
    }
    ret = qimg_cipher_decrypt_buffer(QIMG_CIPHER_AES_256, QIMG_MODE_CBC,
                                     (const uint8_t *)key, keylen,
                                     (const uint8_t *)iv, ivlen, *value, n,
                                     err);
    if (ret < 0)
        return ret;
    if (!n)
        return qimg_error_set(err, -EINVAL, "Incorrect number of padding "
                              "bytes (0) found on decrypted data");
    pad = (uint8_t)(*value)[n - 1];
    if (pad > 16 || pad > n)
        return qimg_error_set(err, -EINVAL, "Incorrect number of padding "
                              "bytes (%d) found on decrypted data", pad);
    n -= pad;
    (*value)[n] = '\0';
    *len = n;
    return 0;
}

int qimg_secret_add(const char *objdef, struct qimg_error *err)
{
    static const char *const known[] = {
        "qom-type", "id", "data", "file", "format", "keyid", "iv",
    };
    struct qimg_opts *o = qimg_opts_new();
    const char *type, *id, *data, *file, *format, *keyid;
    char *value = NULL;
    size_t len = 0;
    int ret;

    if (!o)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_opts_parse(o, objdef, "qom-type", err);
    if (ret < 0)
        goto out;
    type = qimg_opts_get(o, "qom-type");
    id = qimg_opts_get(o, "id");
    data = qimg_opts_get(o, "data");
    file = qimg_opts_get(o, "file");
    format = qimg_opts_get(o, "format");
    keyid = qimg_opts_get(o, "keyid");
    if (!type || strcmp(type, "secret")) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'qom-type' does not "
                             "accept value '%s'", type ? type : "");
        goto out;
    }
    if (!id) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'id' is missing");
        goto out;
    }
    for (size_t i = 0; i < qimg_opts_count(o); i++) {
        const char *k = qimg_opts_key(o, i);
        bool ok = false;
        for (size_t j = 0; j < QIMG_ARRAY_SIZE(known); j++)
            ok |= !strcmp(k, known[j]);
        if (!strcmp(k, "loaded")) {
            ret = qimg_error_set(err, -EINVAL, "Property 'secret.loaded' is "
                                 "not writable");
            goto out;
        }
        if (!ok) {
            ret = qimg_error_set(err, -EINVAL, "Parameter '%s' is unexpected",
                                 k);
            goto out;
        }
    }
    if (format && strcmp(format, "raw") && strcmp(format, "base64")) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'format' does not "
                             "accept value '%s'", format);
        goto out;
    }
    if (file && data) {
        ret = qimg_error_set(err, -EINVAL, "'file' and 'data' are mutually "
                             "exclusive");
        goto out;
    }
    if (!file && !data) {
        ret = qimg_error_set(err, -EINVAL, "Either 'file' or 'data' must be "
                             "provided");
        goto out;
    }
    if (data) {
        len = strlen(data);
        value = secure_copy(data, len);
        if (!value) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
    } else {
        value = read_secret_file(file, &len, err);
        if (!value) {
            ret = err ? err->code : -EIO;
            goto out;
        }
    }
    bool base64 = format && !strcmp(format, "base64");
    if (keyid) {
        ret = decrypt_secret(&value, &len, keyid, qimg_opts_get(o, "iv"),
                             base64, err);
        if (ret < 0)
            goto out;
    } else if (base64) {
        ssize_t n = b64_decode(value, len);
        if (n < 0) {
            ret = qimg_error_set(err, -EINVAL, "Invalid base64 data");
            goto out;
        }
        len = (size_t)n;
    }
    for (size_t i = 0; i < n_secrets; i++) {
        if (!strcmp(secrets[i].id, id)) {
            ret = qimg_error_set(err, -EEXIST, "attempt to add duplicate "
                                 "property '%s' to object (type "
                                 "'container')", id);
            goto out;
        }
    }
    if (n_secrets == QIMG_MAX_SECRETS) {
        ret = qimg_error_set(err, -E2BIG, "Too many secrets");
        goto out;
    }
    secrets[n_secrets].id = strdup(id);
    if (!secrets[n_secrets].id) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    if (!n_secrets)
        atexit(wipe_secrets);
    secrets[n_secrets].data = value;
    secrets[n_secrets].len = len;
    n_secrets++;
    value = NULL;
out:
    qimg_secmem_free(value);
    /* the option list holds a copy of data= */
    if (qimg_opts_get(o, "data")) {
        char *copy = (char *)qimg_opts_get(o, "data");
        qimg_wipe(copy, strlen(copy));
    }
    qimg_opts_free(o);
    return ret;
}

const char *qimg_secret_get(const char *id, size_t *len)
{
    for (size_t i = 0; id && i < n_secrets; i++) {
        if (!strcmp(secrets[i].id, id)) {
            if (len)
                *len = secrets[i].len;
            return secrets[i].data;
        }
    }
    return NULL;
}

int qimg_key_secret_check(const struct qimg_opts *opts, struct qimg_error *err)
{
    const char *key = qimg_opts_get(opts, "encrypt.key-secret");

    if (!key)
        return qimg_error_set(err, -EINVAL, "Parameter 'encrypt.key-secret' "
                              "is required for cipher");
    if (!qimg_secret_get(key, NULL))
        return qimg_error_set(err, -EINVAL, "No secret with id '%s'", key);
    return 0;
}
