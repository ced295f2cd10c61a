/*
 * secret.c - secrets from --object secret,id=ID,data=...|file=...
 * [,format=raw|base64], kept for the process lifetime (like QEMU's object
 * tree).  Encrypted formats look them up by id.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

#define QIMG_MAX_SECRETS 64
/* A secret file is a key or passphrase, never large. */
#define QIMG_MAX_SECRET_FILE (64 * 1024)

struct secret {
    char *id;
    char *data;
    size_t len;
};

static struct secret secrets[QIMG_MAX_SECRETS];
static size_t n_secrets;

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
static ssize_t b64_decode(char *s)
{
    size_t in = 0, out = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; s[in] && s[in] != '='; in++) {
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
    return (ssize_t)out;
}

static char *read_secret_file(const char *path, size_t *len,
                              struct qimg_error *err)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    if (!f) {
        qimg_error_set(err, -errno, "Unable to read %s: %s", path,
                       strerror(errno));
        return NULL;
    }
    buf = malloc(QIMG_MAX_SECRET_FILE + 1);
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

int qimg_secret_add(const char *objdef, struct qimg_error *err)
{
    struct qimg_opts *o = qimg_opts_new();
    const char *type, *id, *data, *file, *format;
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
    if (!type || strcmp(type, "secret")) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'qom-type' does not "
                             "accept value '%s'", type ? type : "");
        goto out;
    }
    if (!id) {
        ret = qimg_error_set(err, -EINVAL, "Parameter 'id' is missing");
        goto out;
    }
    if (!!data == !!file) {
        ret = qimg_error_set(err, -EINVAL, "Either 'file' or 'data' must be "
                             "provided");
        goto out;
    }
    if (data) {
        value = strdup(data);
        len = strlen(data);
    } else {
        value = read_secret_file(file, &len, err);
        if (!value) {
            ret = err ? err->code : -EIO;
            goto out;
        }
    }
    if (format && !strcmp(format, "base64")) {
        ssize_t n = b64_decode(value);
        if (n < 0) {
            ret = qimg_error_set(err, -EINVAL, "Invalid base64 data");
            goto out;
        }
        len = (size_t)n;
    } else if (format && strcmp(format, "raw")) {
        ret = qimg_error_set(err, -EINVAL, "Invalid parameter 'format'");
        goto out;
    }
    if (n_secrets == QIMG_MAX_SECRETS) {
        ret = qimg_error_set(err, -E2BIG, "Too many secrets");
        goto out;
    }
    for (size_t i = 0; i < n_secrets; i++) {
        if (!strcmp(secrets[i].id, id)) {
            ret = qimg_error_set(err, -EEXIST, "attempt to add duplicate "
                                 "property '%s' to object (type "
                                 "'container')", id);
            goto out;
        }
    }
    secrets[n_secrets].id = strdup(id);
    secrets[n_secrets].data = value;
    secrets[n_secrets].len = len;
    n_secrets++;
    value = NULL;
out:
    free(value);
    qimg_opts_free(o);
    return ret;
}

const char *qimg_secret_get(const char *id, size_t *len)
{
    for (size_t i = 0; i < n_secrets; i++) {
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
