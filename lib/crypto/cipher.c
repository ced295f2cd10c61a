/*
 * cipher.c - algorithm names and sizes (QEMU's QAPI enums), libgcrypt
 * set-up, and sector ciphers: a cipher in a mode with an IV generator
 * (plain, plain64, essiv) over runs of 512-byte sectors, as dm-crypt and
 * QEMU's qcrypto_block_*_helper define them.
 *
 * libgcrypt was chosen by measurement (README.md): it is the fastest of
 * the Debian libraries for XTS and CBC on this hardware and the only one
 * with every cipher QEMU's LUKS offers but twofish-192.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <gcrypt.h>

#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto.h"

/* Cipher contexts one sector cipher keeps for concurrent callers (the
 * copy engine runs at most 16 workers); more callers wait. */
#define QIMG_CIPHER_MAX_CONTEXTS 32

/* ---- names ------------------------------------------------------------------ */

static const char *const cipher_names[QIMG_CIPHER__MAX] = {
    "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
    "serpent-128", "serpent-192", "serpent-256",
    "twofish-128", "twofish-192", "twofish-256",
};
static const char *const mode_names[QIMG_MODE__MAX] = {
    "ecb", "cbc", "xts", "ctr",
};
static const char *const ivgen_names[QIMG_IVGEN__MAX] = {
    "plain", "plain64", "essiv",
};
static const char *const hash_names[QIMG_HASH__MAX] = {
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160",
};

static const uint8_t cipher_key_len[QIMG_CIPHER__MAX] = {
    16, 24, 32, 8, 24, 16, 16, 24, 32, 16, 24, 32,
};
static const uint8_t cipher_block_len[QIMG_CIPHER__MAX] = {
    16, 16, 16, 8, 8, 8, 16, 16, 16, 16, 16, 16,
};
/* libgcrypt's ids; 0 where it has none (twofish with 192-bit keys). */
static const int cipher_gcry[QIMG_CIPHER__MAX] = {
    GCRY_CIPHER_AES128, GCRY_CIPHER_AES192, GCRY_CIPHER_AES256,
    GCRY_CIPHER_DES, GCRY_CIPHER_3DES, GCRY_CIPHER_CAST5,
    GCRY_CIPHER_SERPENT128, GCRY_CIPHER_SERPENT192, GCRY_CIPHER_SERPENT256,
    GCRY_CIPHER_TWOFISH128, 0, GCRY_CIPHER_TWOFISH,
};
static const int mode_gcry[QIMG_MODE__MAX] = {
    GCRY_CIPHER_MODE_ECB, GCRY_CIPHER_MODE_CBC, GCRY_CIPHER_MODE_XTS,
    GCRY_CIPHER_MODE_CTR,
};
static const int hash_gcry[QIMG_HASH__MAX] = {
    GCRY_MD_MD5, GCRY_MD_SHA1, GCRY_MD_SHA224, GCRY_MD_SHA256,
    GCRY_MD_SHA384, GCRY_MD_SHA512, GCRY_MD_RMD160,
};
static const uint8_t hash_len[QIMG_HASH__MAX] = {16, 20, 28, 32, 48, 64, 20};

static int lookup(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(names[i], name))
            return (int)i;
    return -1;
}

const char *qimg_cipher_alg_name(enum qimg_cipher_alg alg)
{
    return (unsigned)alg < QIMG_CIPHER__MAX ? cipher_names[alg] : "";
}
const char *qimg_cipher_mode_name(enum qimg_cipher_mode mode)
{
    return (unsigned)mode < QIMG_MODE__MAX ? mode_names[mode] : "";
}
const char *qimg_ivgen_alg_name(enum qimg_ivgen_alg alg)
{
    return (unsigned)alg < QIMG_IVGEN__MAX ? ivgen_names[alg] : "";
}
const char *qimg_hash_alg_name(enum qimg_hash_alg alg)
{
    return (unsigned)alg < QIMG_HASH__MAX ? hash_names[alg] : "";
}
int qimg_cipher_alg_lookup(const char *name)
{
    return lookup(cipher_names, QIMG_CIPHER__MAX, name);
}
int qimg_cipher_mode_lookup(const char *name)
{
    return lookup(mode_names, QIMG_MODE__MAX, name);
}
int qimg_ivgen_alg_lookup(const char *name)
{
    return lookup(ivgen_names, QIMG_IVGEN__MAX, name);
}
int qimg_hash_alg_lookup(const char *name)
{
    return lookup(hash_names, QIMG_HASH__MAX, name);
}

size_t qimg_cipher_key_len(enum qimg_cipher_alg alg)
{
    return (unsigned)alg < QIMG_CIPHER__MAX ? cipher_key_len[alg] : 0;
}
size_t qimg_cipher_block_len(enum qimg_cipher_alg alg)
{
    return (unsigned)alg < QIMG_CIPHER__MAX ? cipher_block_len[alg] : 0;
}
size_t qimg_cipher_iv_len(enum qimg_cipher_alg alg, enum qimg_cipher_mode mode)
{
    if ((unsigned)mode >= QIMG_MODE__MAX || mode == QIMG_MODE_ECB)
        return 0;
    return qimg_cipher_block_len(alg);
}
size_t qimg_hash_digest_len(enum qimg_hash_alg alg)
{
    return (unsigned)alg < QIMG_HASH__MAX ? hash_len[alg] : 0;
}

int qimg_crypto_gcry_hash(enum qimg_hash_alg alg);
int qimg_crypto_gcry_hash(enum qimg_hash_alg alg)
{
    return (unsigned)alg < QIMG_HASH__MAX ? hash_gcry[alg] : 0;
}

/* ---- libgcrypt set-up --------------------------------------------------------- */

/* libgcrypt's secure allocations (cipher key schedules, HMAC keys) go to
 * secmem: never dumped, wiped when freed.  The free and realloc hooks
 * see both kinds of pointers. */
static void *qimg_gcry_alloc_secure(size_t n)
{
    return qimg_secmem_alloc(n);
}

static int qimg_gcry_is_secure(const void *p)
{
    return qimg_secmem_owns(p);
}

static void *qimg_gcry_realloc(void *p, size_t n)
{
    void *q;
    size_t old;

    if (!qimg_secmem_owns(p))
        return realloc(p, n);
    old = qimg_secmem_size(p);
    q = qimg_secmem_alloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, QIMG_MIN(old, n));
    qimg_secmem_free(p);
    return q;
}

static void qimg_gcry_free(void *p)
{
    if (qimg_secmem_owns(p))
        qimg_secmem_free(p);
    else
        free(p);
}

static void crypto_init_once(void)
{
    gcry_set_allocation_handler(malloc, qimg_gcry_alloc_secure, qimg_gcry_is_secure,
                                qimg_gcry_realloc, qimg_gcry_free);
    gcry_check_version(NULL);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
}

void qimg_crypto_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crypto_init_once);
}

int qimg_random_bytes(void *buf, size_t len, struct qimg_error *err)
{
    uint8_t *p = buf;

    while (len) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return qimg_error_set(err, -errno, "Unable to read random bytes: "
                                  "%s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- IV generators ------------------------------------------------------------- */

void qimg_ivgen_plain(uint64_t sector, uint8_t *iv, size_t niv)
{
    uint8_t le[4];
    qimg_st_le32(le, (uint32_t)sector);
    memset(iv, 0, niv);
    memcpy(iv, le, QIMG_MIN(niv, sizeof(le)));
}

void qimg_ivgen_plain64(uint64_t sector, uint8_t *iv, size_t niv)
{
    uint8_t le[8];
    qimg_st_le64(le, sector);
    memset(iv, 0, niv);
    memcpy(iv, le, QIMG_MIN(niv, sizeof(le)));
}

/* ---- sector ciphers ------------------------------------------------------------ */

/* What one caller needs at a time: the cipher and the ESSIV cipher. */
struct cipher_ctx {
    gcry_cipher_hd_t main;
    gcry_cipher_hd_t essiv;     /* NULL unless essiv */
};

struct qimg_sector_cipher {
    enum qimg_cipher_alg alg;
    enum qimg_cipher_mode mode;
    enum qimg_ivgen_alg ivgen;
    enum qimg_cipher_alg essiv_alg;
    size_t niv;
    uint8_t *key;               /* secmem: new contexts are keyed from it */
    size_t nkey;
    uint8_t *essiv_key;         /* secmem, essiv only */
    size_t nessiv_key;

    pthread_mutex_t lock;
    pthread_cond_t freed;
    struct cipher_ctx *free_ctx[QIMG_CIPHER_MAX_CONTEXTS];
    size_t n_free, n_ctx;
};

static int gcry_failure(struct qimg_error *err, gcry_error_t e)
{
    return qimg_error_set(err, -EIO, "Cipher operation failed: %s",
                          gcry_strerror(e));
}

static void ctx_free(struct cipher_ctx *x)
{
    if (!x)
        return;
    gcry_cipher_close(x->main);
    gcry_cipher_close(x->essiv);
    free(x);
}

static int open_keyed(gcry_cipher_hd_t *h, enum qimg_cipher_alg alg,
                      enum qimg_cipher_mode mode, const uint8_t *key,
                      size_t nkey, struct qimg_error *err)
{
    gcry_error_t e = gcry_cipher_open(h, cipher_gcry[alg], mode_gcry[mode],
                                      GCRY_CIPHER_SECURE);
    if (e) {
        *h = NULL;
        return qimg_error_set(err, -ENOTSUP, "Unsupported cipher mode %s",
                              mode_names[mode]);
    }
    e = gcry_cipher_setkey(*h, key, nkey);
    if (e) {
        gcry_cipher_close(*h);
        *h = NULL;
        return gcry_failure(err, e);
    }
    return 0;
}

static int ctx_new(const struct qimg_sector_cipher *c, struct cipher_ctx **out,
                   struct qimg_error *err)
{
    struct cipher_ctx *x = calloc(1, sizeof(*x));
    int ret;

    *out = NULL;
    if (!x)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = open_keyed(&x->main, c->alg, c->mode, c->key, c->nkey, err);
    if (!ret && c->ivgen == QIMG_IVGEN_ESSIV)
        ret = open_keyed(&x->essiv, c->essiv_alg, QIMG_MODE_ECB, c->essiv_key,
                         c->nessiv_key, err);
    if (ret < 0) {
        ctx_free(x);
        return ret;
    }
    *out = x;
    return 0;
}

static int ctx_get(struct qimg_sector_cipher *c, struct cipher_ctx **out,
                   struct qimg_error *err)
{
    pthread_mutex_lock(&c->lock);
    while (!c->n_free && c->n_ctx == QIMG_CIPHER_MAX_CONTEXTS)
        pthread_cond_wait(&c->freed, &c->lock);
    if (c->n_free) {
        *out = c->free_ctx[--c->n_free];
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    c->n_ctx++;
    pthread_mutex_unlock(&c->lock);
    int ret = ctx_new(c, out, err);
    if (ret < 0) {
        pthread_mutex_lock(&c->lock);
        c->n_ctx--;
        pthread_cond_signal(&c->freed);
        pthread_mutex_unlock(&c->lock);
    }
    return ret;
}

static void ctx_put(struct qimg_sector_cipher *c, struct cipher_ctx *x)
{
    pthread_mutex_lock(&c->lock);
    c->free_ctx[c->n_free++] = x;
    pthread_cond_signal(&c->freed);
    pthread_mutex_unlock(&c->lock);
}

/* QEMU's qcrypto_cipher_validate_key_length, then the backend's
 * algorithm and mode checks, with their messages. */
static int check_cipher(enum qimg_cipher_alg alg, enum qimg_cipher_mode mode,
                        size_t nkey, struct qimg_error *err)
{
    if ((unsigned)alg >= QIMG_CIPHER__MAX)
        return qimg_error_set(err, -EINVAL, "Cipher algorithm %d out of range",
                              (int)alg);
    if ((unsigned)mode >= QIMG_MODE__MAX)
        return qimg_error_set(err, -EINVAL, "Cipher mode %d out of range",
                              (int)mode);
    if (mode == QIMG_MODE_XTS) {
        if (alg == QIMG_CIPHER_DES || alg == QIMG_CIPHER_3DES)
            return qimg_error_set(err, -EINVAL, "XTS mode not compatible with "
                                  "DES/3DES");
        if (nkey % 2)
            return qimg_error_set(err, -EINVAL, "XTS cipher key length should "
                                  "be a multiple of 2");
        if (cipher_key_len[alg] != nkey / 2)
            return qimg_error_set(err, -EINVAL, "Cipher key length %zu should "
                                  "be %zu", nkey,
                                  (size_t)cipher_key_len[alg] * 2);
    } else if (cipher_key_len[alg] != nkey) {
        return qimg_error_set(err, -EINVAL, "Cipher key length %zu should be "
                              "%zu", nkey, (size_t)cipher_key_len[alg]);
    }
    /* libgcrypt has no 192-bit Twofish (QEMU's nettle build has). */
    if (!cipher_gcry[alg])
        return qimg_error_set(err, -ENOTSUP, "Unsupported cipher algorithm %s",
                              cipher_names[alg]);
    /* XTS needs a 128-bit block: QEMU's backends refuse the others. */
    if (mode == QIMG_MODE_XTS && cipher_block_len[alg] != 16)
        return qimg_error_set(err, -ENOTSUP, "Unsupported cipher mode %s",
                              mode_names[mode]);
    return 0;
}

static uint8_t *secmem_dup(const uint8_t *p, size_t n)
{
    uint8_t *q = qimg_secmem_alloc(n ? n : 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

/* ESSIV: the salt is the hash of the key, cut to the ESSIV cipher's key
 * length (QEMU then checks that length as any key's). */
static int essiv_setup(struct qimg_sector_cipher *c, enum qimg_cipher_alg ealg,
                       enum qimg_hash_alg hash, struct qimg_error *err)
{
    uint8_t digest[64];
    struct iovec iov = {c->key, c->nkey};
    size_t nk;
    int ret;

    if ((unsigned)hash >= QIMG_HASH__MAX || (unsigned)ealg >= QIMG_CIPHER__MAX)
        return qimg_error_set(err, -EINVAL, "Invalid ESSIV parameters");
    nk = QIMG_MIN((size_t)hash_len[hash], (size_t)cipher_key_len[ealg]);
    ret = check_cipher(ealg, QIMG_MODE_ECB, nk, err);
    if (ret < 0)
        return ret;
    ret = qimg_hash_iov(hash, &iov, 1, digest, err);
    if (ret < 0)
        return ret;
    c->essiv_alg = ealg;
    c->nessiv_key = nk;
    c->essiv_key = secmem_dup(digest, nk);
    qimg_wipe(digest, sizeof(digest));
    if (!c->essiv_key)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

int qimg_sector_cipher_new(struct qimg_sector_cipher **out,
                           enum qimg_cipher_alg alg,
                           enum qimg_cipher_mode mode,
                           enum qimg_ivgen_alg ivgen,
                           enum qimg_cipher_alg ivgen_cipher,
                           enum qimg_hash_alg ivgen_hash,
                           const uint8_t *key, size_t nkey,
                           struct qimg_error *err)
{
    struct qimg_sector_cipher *c;
    struct cipher_ctx *first;
    int ret;

    *out = NULL;
    qimg_crypto_init();
    ret = check_cipher(alg, mode, nkey, err);
    if (ret < 0)
        return ret;
    if ((unsigned)ivgen >= QIMG_IVGEN__MAX)
        return qimg_error_set(err, -EINVAL, "IV generator %d out of range",
                              (int)ivgen);
    c = calloc(1, sizeof(*c));
    if (!c)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->freed, NULL);
    c->alg = alg;
    c->mode = mode;
    c->ivgen = ivgen;
    c->niv = qimg_cipher_iv_len(alg, mode);
    c->nkey = nkey;
    c->key = secmem_dup(key, nkey);
    if (!c->key) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto fail;
    }
    if (ivgen == QIMG_IVGEN_ESSIV) {
        ret = essiv_setup(c, ivgen_cipher, ivgen_hash, err);
        if (ret < 0)
            goto fail;
    }
    /* One context now, so that key and mode errors show at once. */
    ret = ctx_new(c, &first, err);
    if (ret < 0)
        goto fail;
    c->free_ctx[c->n_free++] = first;
    c->n_ctx = 1;
    *out = c;
    return 0;
fail:
    qimg_sector_cipher_free(c);
    return ret;
}

static int sector_iv(const struct qimg_sector_cipher *c, struct cipher_ctx *x,
                     uint64_t sector, uint8_t *iv, struct qimg_error *err)
{
    switch (c->ivgen) {
    case QIMG_IVGEN_PLAIN:
        qimg_ivgen_plain(sector, iv, c->niv);
        return 0;
    case QIMG_IVGEN_PLAIN64:
        qimg_ivgen_plain64(sector, iv, c->niv);
        return 0;
    case QIMG_IVGEN_ESSIV: {
        /* E(salt, le64(sector) zero padded to a block), cut to the IV. */
        uint8_t block[16];
        size_t nb = cipher_block_len[c->essiv_alg];
        gcry_error_t e;
        qimg_ivgen_plain64(sector, block, nb);
        e = gcry_cipher_encrypt(x->essiv, block, nb, NULL, 0);
        if (e)
            return gcry_failure(err, e);
        memset(iv, 0, c->niv);
        memcpy(iv, block, QIMG_MIN(nb, c->niv));
        return 0;
    }
    default:
        return qimg_error_set(err, -EINVAL, "Unknown IV generator");
    }
}

static int crypt_sectors(struct qimg_sector_cipher *c, uint64_t sector,
                         void *buf, size_t len, bool enc,
                         struct qimg_error *err)
{
    struct cipher_ctx *x;
    uint8_t *p = buf;
    uint8_t iv[16];
    gcry_error_t e = 0;
    int ret;

    if (len % qimg_cipher_block_len(c->alg))
        return qimg_error_set(err, -EINVAL, "Length %zu must be a multiple of "
                              "block size %zu", len,
                              qimg_cipher_block_len(c->alg));
    ret = ctx_get(c, &x, err);
    if (ret < 0)
        return ret;
    if (!c->niv) {
        /* ECB: no IV, every block stands alone. */
        e = enc ? gcry_cipher_encrypt(x->main, p, len, NULL, 0)
                : gcry_cipher_decrypt(x->main, p, len, NULL, 0);
        len = 0;
    }
    /* Sector by sector, each with its own IV; a short last one (key
     * material of 24-byte keys) is a partial sector, as in QEMU. */
    while (!e && len) {
        size_t n = QIMG_MIN(len, (size_t)QIMG_CRYPTO_SECTOR_SIZE);
        ret = sector_iv(c, x, sector, iv, err);
        if (ret < 0)
            break;
        e = c->mode == QIMG_MODE_CTR ? gcry_cipher_setctr(x->main, iv, c->niv)
                                     : gcry_cipher_setiv(x->main, iv, c->niv);
        if (!e)
            e = enc ? gcry_cipher_encrypt(x->main, p, n, NULL, 0)
                    : gcry_cipher_decrypt(x->main, p, n, NULL, 0);
        len -= n;
        p += n;
        sector++;
    }
    ctx_put(c, x);
    if (!ret && e)
        ret = gcry_failure(err, e);
    return ret;
}

int qimg_sector_cipher_encrypt(struct qimg_sector_cipher *c, uint64_t sector,
                               void *buf, size_t len, struct qimg_error *err)
{
    return crypt_sectors(c, sector, buf, len, true, err);
}

int qimg_sector_cipher_decrypt(struct qimg_sector_cipher *c, uint64_t sector,
                               void *buf, size_t len, struct qimg_error *err)
{
    return crypt_sectors(c, sector, buf, len, false, err);
}

void qimg_sector_cipher_free(struct qimg_sector_cipher *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_free; i++)
        ctx_free(c->free_ctx[i]);
    qimg_secmem_free(c->key);
    qimg_secmem_free(c->essiv_key);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->freed);
    free(c);
}

int qimg_qcow_aes_new(struct qimg_sector_cipher **out, const char *password,
                      size_t len, struct qimg_error *err)
{
    uint8_t key[16] = {0};
    int ret;

    memcpy(key, password, QIMG_MIN(len, sizeof(key)));
    ret = qimg_sector_cipher_new(out, QIMG_CIPHER_AES_128, QIMG_MODE_CBC,
                                 QIMG_IVGEN_PLAIN64, QIMG_CIPHER_AES_128,
                                 QIMG_HASH_SHA256, key, sizeof(key), err);
    qimg_wipe(key, sizeof(key));
    return ret;
}

int qimg_cipher_decrypt_buffer(enum qimg_cipher_alg alg,
                               enum qimg_cipher_mode mode, const uint8_t *key,
                               size_t nkey, const uint8_t *iv, size_t niv,
                               void *buf, size_t len, struct qimg_error *err)
{
    gcry_cipher_hd_t h;
    gcry_error_t e;
    int ret;

    qimg_crypto_init();
    ret = check_cipher(alg, mode, nkey, err);
    if (ret < 0)
        return ret;
    if (len % cipher_block_len[alg] && mode != QIMG_MODE_CTR)
        return qimg_error_set(err, -EINVAL, "Length %zu must be a multiple of "
                              "block size %zu", len,
                              (size_t)cipher_block_len[alg]);
    ret = open_keyed(&h, alg, mode, key, nkey, err);
    if (ret < 0)
        return ret;
    e = niv ? gcry_cipher_setiv(h, iv, niv) : 0;
    if (!e)
        e = gcry_cipher_decrypt(h, buf, len, NULL, 0);
    gcry_cipher_close(h);
    return e ? gcry_failure(err, e) : 0;
}
