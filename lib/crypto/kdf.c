/*
 * kdf.c - hashes, PBKDF2 (libgcrypt's), the calibration of PBKDF2
 * iteration counts from a time budget, and the LUKS anti-forensic
 * splitter (LUKS1 on-disk format specification, section 2.4).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gcrypt.h>

#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto.h"

int qimg_crypto_gcry_hash(enum qimg_hash_alg alg);

/* Calibration: run PBKDF2 until one run takes at least this much thread
 * CPU time (QEMU runs until 500 ms; 100 ms measured in nanoseconds is as
 * exact as QEMU's millisecond clock over 500 ms). */
#define QIMG_PBKDF2_CALIBRATE_NS 100000000ull
/* ... starting from this many iterations. */
#define QIMG_PBKDF2_CALIBRATE_START 4096ull

int qimg_hash_iov(enum qimg_hash_alg alg, const struct iovec *iov, size_t n,
                  uint8_t *out, struct qimg_error *err)
{
    gcry_md_hd_t md;
    gcry_error_t e;

    qimg_crypto_init();
    if ((unsigned)alg >= QIMG_HASH__MAX)
        return qimg_error_set(err, -EINVAL, "Unknown hash algorithm");
    e = gcry_md_open(&md, qimg_crypto_gcry_hash(alg), GCRY_MD_FLAG_SECURE);
    if (e)
        return qimg_error_set(err, -ENOTSUP, "Hash algorithm %s not supported",
                              qimg_hash_alg_name(alg));
    for (size_t i = 0; i < n; i++)
        gcry_md_write(md, iov[i].iov_base, iov[i].iov_len);
    memcpy(out, gcry_md_read(md, 0), qimg_hash_digest_len(alg));
    gcry_md_close(md);
    return 0;
}

int qimg_pbkdf2(enum qimg_hash_alg alg, const uint8_t *key, size_t nkey,
                const uint8_t *salt, size_t nsalt, uint64_t iterations,
                uint8_t *out, size_t nout, struct qimg_error *err)
{
    static const uint8_t empty[1];
    gcry_error_t e;

    qimg_crypto_init();
    if ((unsigned)alg >= QIMG_HASH__MAX)
        return qimg_error_set(err, -EINVAL, "Unknown hash algorithm");
    if (!iterations || iterations > ULONG_MAX)
        return qimg_error_set(err, -EINVAL, "Iterations %llu out of range",
                              (unsigned long long)iterations);
    e = gcry_kdf_derive(nkey ? key : empty, nkey, GCRY_KDF_PBKDF2,
                        qimg_crypto_gcry_hash(alg), salt, nsalt,
                        (unsigned long)iterations, nout, out);
    if (e)
        return qimg_error_set(err, -EIO, "PBKDF2 failed: %s", gcry_strerror(e));
    return 0;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Iterations per CPU second for one output block of alg (0: unknown). */
static uint64_t block_rate[QIMG_HASH__MAX];
static pthread_mutex_t rate_lock = PTHREAD_MUTEX_INITIALIZER;

static int calibrate(enum qimg_hash_alg alg, uint64_t *rate,
                     struct qimg_error *err)
{
    uint8_t key[32] = {0}, salt[32] = {0}, out[64];
    size_t nout = qimg_hash_digest_len(alg);
    uint64_t iters = QIMG_PBKDF2_CALIBRATE_START, dt;

    for (;;) {
        uint64_t t0 = thread_cpu_ns();
        int ret = qimg_pbkdf2(alg, key, sizeof(key), salt, sizeof(salt), iters,
                              out, nout, err);
        if (ret < 0)
            return ret;
        dt = thread_cpu_ns() - t0;
        if (!t0 || !dt)
            return qimg_error_set(err, -EIO, "Unable to get accurate CPU "
                                  "usage");
        if (dt >= QIMG_PBKDF2_CALIBRATE_NS)
            break;
        /* Aim 20% past the threshold, at most ten times further. */
        uint64_t next = iters * (QIMG_PBKDF2_CALIBRATE_NS * 6 / 5) / dt;
        iters = QIMG_MAX(iters + 1, QIMG_MIN(next, iters * 10));
    }
    *rate = iters * 1000000000ull / dt;
    return 0;
}

int qimg_pbkdf2_count_iters(enum qimg_hash_alg alg, size_t nout,
                            uint64_t *iters, struct qimg_error *err)
{
    size_t dlen = qimg_hash_digest_len(alg);
    uint64_t rate;
    int ret = 0;

    if (!dlen)
        return qimg_error_set(err, -EINVAL, "Unknown hash algorithm");
    pthread_mutex_lock(&rate_lock);
    rate = block_rate[alg];
    if (!rate) {
        ret = calibrate(alg, &rate, err);
        if (!ret)
            block_rate[alg] = rate;
    }
    pthread_mutex_unlock(&rate_lock);
    if (ret < 0)
        return ret;
    /* PBKDF2 computes the whole chain once per digest-sized output block. */
    *iters = rate / qimg_div_round_up(nout ? nout : 1, dlen);
    return 0;
}

/* ---- anti-forensic splitter ----------------------------------------------------- */

static void xor_into(uint8_t *dst, const uint8_t *a, const uint8_t *b,
                     size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = a[i] ^ b[i];
}

/*
 * The diffusion function H: the block is hashed in digest-sized pieces,
 * piece i prefixed with i as a 32-bit big-endian number; the last piece
 * may be short and keeps only as many bytes of its hash.
 */
static int af_diffuse(gcry_md_hd_t md, enum qimg_hash_alg alg, uint8_t *block,
                      size_t blocklen)
{
    size_t dlen = qimg_hash_digest_len(alg);

    for (size_t i = 0, off = 0; off < blocklen; i++, off += dlen) {
        size_t n = QIMG_MIN(dlen, blocklen - off);
        uint8_t be[4];
        qimg_st_be32(be, (uint32_t)i);
        gcry_md_reset(md);
        gcry_md_write(md, be, sizeof(be));
        gcry_md_write(md, block + off, n);
        memcpy(block + off, gcry_md_read(md, 0), n);
    }
    return 0;
}

/* d accumulates stripes 0..stripes-2: d = H(d ^ s_i) each. */
static int af_accumulate(enum qimg_hash_alg alg, size_t blocklen,
                         uint32_t stripes, const uint8_t *src,
                         bool fill_random, uint8_t *out, uint8_t *d,
                         struct qimg_error *err)
{
    gcry_md_hd_t md;
    gcry_error_t e;
    int ret = 0;

    qimg_crypto_init();
    if ((unsigned)alg >= QIMG_HASH__MAX || !stripes)
        return qimg_error_set(err, -EINVAL, "Invalid anti-forensic parameters");
    e = gcry_md_open(&md, qimg_crypto_gcry_hash(alg), GCRY_MD_FLAG_SECURE);
    if (e)
        return qimg_error_set(err, -ENOTSUP, "Hash algorithm %s not supported",
                              qimg_hash_alg_name(alg));
    memset(d, 0, blocklen);
    for (uint32_t i = 0; i + 1 < stripes; i++) {
        uint8_t *s = out + (size_t)i * blocklen;
        if (fill_random) {
            ret = qimg_random_bytes(s, blocklen, err);
            if (ret < 0)
                break;
        }
        xor_into(d, fill_random ? s : src + (size_t)i * blocklen, d, blocklen);
        af_diffuse(md, alg, d, blocklen);
    }
    gcry_md_close(md);
    return ret;
}

int qimg_afsplit_encode(enum qimg_hash_alg alg, size_t blocklen,
                        uint32_t stripes, const uint8_t *in, uint8_t *out,
                        struct qimg_error *err)
{
    uint8_t *d = qimg_secmem_alloc(blocklen);
    int ret;

    if (!d)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = af_accumulate(alg, blocklen, stripes, NULL, true, out, d, err);
    if (!ret)   /* the last stripe makes the whole decode to in */
        xor_into(out + (size_t)(stripes - 1) * blocklen, in, d, blocklen);
    qimg_secmem_free(d);
    return ret;
}

int qimg_afsplit_decode(enum qimg_hash_alg alg, size_t blocklen,
                        uint32_t stripes, const uint8_t *in, uint8_t *out,
                        struct qimg_error *err)
{
    uint8_t *d = qimg_secmem_alloc(blocklen);
    int ret;

    if (!d)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = af_accumulate(alg, blocklen, stripes, in, false, NULL, d, err);
    if (!ret)
        xor_into(out, in + (size_t)(stripes - 1) * blocklen, d, blocklen);
    qimg_secmem_free(d);
    return ret;
}
