/*
 * crypto-priv.h - what block.c and luks-keyslot.c share: the crypto block
 * object and password lookup.  Internal to lib/crypto.
 */
#ifndef QIMG_CRYPTO_PRIV_H
#define QIMG_CRYPTO_PRIV_H

#include "crypto/luks-header.h"

struct qimg_crypto {
    enum qimg_crypto_format format;
    struct qimg_sector_cipher *cipher;  /* NULL when opened NO_IO */
    uint64_t payload_offset;            /* bytes from the header start */
    /* LUKS only */
    struct qimg_luks_header hdr;
    struct qimg_luks_algs algs;
    char *secret_id;                    /* the key-secret it was opened with */
};

/*
 * The data of secret `id` as a password: a NUL-terminated copy in secure
 * memory (free with qimg_secmem_free), refused as QEMU refuses it ("No
 * secret with id 'X'", "Data from secret X is not valid UTF-8").
 */
int qimg_crypto_password(const char *id, char **pw, size_t *len,
                         struct qimg_error *err);

/* LUKS halves of the qimg_crypto_* entry points (luks-keyslot.c). */
int qimg_luks_open(struct qimg_crypto *c, const char *key_secret,
                   const char *prefix, unsigned flags,
                   const struct qimg_crypto_io *io, struct qimg_error *err);
/* dry_run: compute the layout and check everything, derive no keys and
 * write nothing (measure). */
int qimg_luks_create(struct qimg_crypto *c,
                     const struct qimg_crypto_create_opts *o,
                     const char *prefix, bool dry_run,
                     const struct qimg_crypto_io *io, struct qimg_error *err);
int qimg_luks_amend(struct qimg_crypto *c, const struct qimg_opts *opts,
                    const char *prefix, bool force,
                    const struct qimg_crypto_io *io, struct qimg_error *err);

#endif /* QIMG_CRYPTO_PRIV_H */
