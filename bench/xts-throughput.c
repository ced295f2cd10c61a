/*
 * AES-256-XTS throughput of the crypto libraries Debian offers, measured
 * the way LUKS uses the cipher: 512-byte sectors, each with its own tweak
 * (the plain64 IV: the sector number, little endian).  This is what chose
 * libgcrypt for lib/crypto (README.md, "Encryption library").
 *
 *   bench/xts-throughput.sh       builds and runs this file
 *
 * Prints one line per library: MiB/s of each direction, the best of many
 * short samples taken in turn (on a shared machine the best sample is
 * the least disturbed one).
 */
#include <gcrypt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nettle/aes.h>
#include <nettle/xts.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECTOR 512
#define BUF_SIZE (4u << 20)     /* encrypted per pass */
#define PASSES 2                /* passes per sample */
#define RUNS 15                 /* samples per library, best kept */

static uint8_t key[64];         /* two AES-256 keys */

static void tweak_for(uint8_t iv[16], uint64_t sector)
{
    memset(iv, 0, 16);
    for (int i = 0; i < 8; i++)
        iv[i] = (uint8_t)(sector >> (8 * i));
}

/* One pass over buf; returns 0 or -1. */
typedef int (*pass_fn)(void *ctx, uint8_t *buf, int enc);

static int gcrypt_pass(void *ctx, uint8_t *buf, int enc)
{
    gcry_cipher_hd_t h = ctx;
    uint8_t iv[16];

    for (size_t s = 0; s < BUF_SIZE / SECTOR; s++) {
        uint8_t *p = buf + s * SECTOR;
        tweak_for(iv, s);
        if (gcry_cipher_setiv(h, iv, 16) ||
            (enc ? gcry_cipher_encrypt(h, p, SECTOR, NULL, 0)
                 : gcry_cipher_decrypt(h, p, SECTOR, NULL, 0)))
            return -1;
    }
    return 0;
}

struct ossl { EVP_CIPHER_CTX *enc, *dec; };

static int openssl_pass(void *ctx, uint8_t *buf, int enc)
{
    struct ossl *o = ctx;
    EVP_CIPHER_CTX *c = enc ? o->enc : o->dec;
    uint8_t iv[16];
    int outl;

    for (size_t s = 0; s < BUF_SIZE / SECTOR; s++) {
        uint8_t *p = buf + s * SECTOR;
        tweak_for(iv, s);
        if (!EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, enc) ||
            !EVP_CipherUpdate(c, p, &outl, p, SECTOR))
            return -1;
    }
    return 0;
}

struct nxts { struct xts_aes256_key enc, dec; };

static int nettle_pass(void *ctx, uint8_t *buf, int enc)
{
    struct nxts *n = ctx;
    uint8_t iv[16];

    for (size_t s = 0; s < BUF_SIZE / SECTOR; s++) {
        uint8_t *p = buf + s * SECTOR;
        tweak_for(iv, s);
        if (enc)
            xts_aes256_encrypt_message(&n->enc, iv, SECTOR, p, p);
        else
            xts_aes256_decrypt_message(&n->dec, iv, SECTOR, p, p);
    }
    return 0;
}

static int gnutls_pass(void *ctx, uint8_t *buf, int enc)
{
    gnutls_cipher_hd_t h = ctx;
    uint8_t iv[16];

    for (size_t s = 0; s < BUF_SIZE / SECTOR; s++) {
        uint8_t *p = buf + s * SECTOR;
        tweak_for(iv, s);
        gnutls_cipher_set_iv(h, iv, 16);
        if ((enc ? gnutls_cipher_encrypt(h, p, SECTOR)
                 : gnutls_cipher_decrypt(h, p, SECTOR)) < 0)
            return -1;
    }
    return 0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

struct lib {
    const char *name;
    pass_fn fn;
    void *ctx;
    double best[2];             /* MiB/s: decrypt, encrypt */
};

/* One timed sample of each library and direction per round, the
 * libraries interleaved so that load from other jobs hits all alike. */
static void measure(struct lib *libs, int n, uint8_t *buf)
{
    for (int r = 0; r < RUNS; r++)
        for (int l = 0; l < n; l++)
            for (int enc = 1; enc >= 0; enc--) {
                double t0 = now();
                for (int i = 0; i < PASSES; i++)
                    if (libs[l].fn(libs[l].ctx, buf, enc) < 0) {
                        fprintf(stderr, "%s: cipher error\n", libs[l].name);
                        exit(1);
                    }
                double rate = (double)PASSES * BUF_SIZE / (1 << 20) /
                              (now() - t0);
                if (rate > libs[l].best[enc])
                    libs[l].best[enc] = rate;
            }
    for (int l = 0; l < n; l++)
        printf("%-10s encrypt %6.0f MiB/s  decrypt %6.0f MiB/s\n",
               libs[l].name, libs[l].best[1], libs[l].best[0]);
}

int main(void)
{
    uint8_t *buf = calloc(1, BUF_SIZE);
    gcry_cipher_hd_t gh;
    gnutls_cipher_hd_t th;
    struct ossl o;
    struct nxts n;

    if (!buf)
        return 1;
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i * 7 + 1);

    if (!gcry_check_version(GCRYPT_VERSION) ||
        gcry_cipher_open(&gh, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 0) ||
        gcry_cipher_setkey(gh, key, 64))
        return 1;
    o.enc = EVP_CIPHER_CTX_new();
    o.dec = EVP_CIPHER_CTX_new();
    if (!o.enc || !o.dec ||
        !EVP_CipherInit_ex(o.enc, EVP_aes_256_xts(), NULL, key, NULL, 1) ||
        !EVP_CipherInit_ex(o.dec, EVP_aes_256_xts(), NULL, key, NULL, 0))
        return 1;
    xts_aes256_set_encrypt_key(&n.enc, key);
    xts_aes256_set_decrypt_key(&n.dec, key);
    gnutls_datum_t k = { key, 64 };
    if (gnutls_cipher_init(&th, GNUTLS_CIPHER_AES_256_XTS, &k, NULL) < 0)
        return 1;

    struct lib libs[] = {
        { "libgcrypt", gcrypt_pass, gh, { 0, 0 } },
        { "openssl", openssl_pass, &o, { 0, 0 } },
        { "nettle", nettle_pass, &n, { 0, 0 } },
        { "gnutls", gnutls_pass, th, { 0, 0 } },
    };
    measure(libs, (int)(sizeof(libs) / sizeof(libs[0])), buf);

    gcry_cipher_close(gh);
    EVP_CIPHER_CTX_free(o.enc);
    EVP_CIPHER_CTX_free(o.dec);
    gnutls_cipher_deinit(th);
    free(buf);
    return 0;
}
