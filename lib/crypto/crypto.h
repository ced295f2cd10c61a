/*
 * crypto.h - block encryption shared by the formats: the luks format,
 * qcow2's encrypt.format=luks|aes and qcow's AES.
 *
 * Three layers, each usable on its own:
 * - primitives (cipher.c, kdf.c): cipher, mode, IV generator and hash
 *   names as QEMU spells them; sector ciphers over libgcrypt; PBKDF2 and
 *   its calibration; the LUKS anti-forensic splitter; random bytes.
 * - the LUKS1 header (luks-header.c): parse, check, serialise, info.
 * - crypto blocks (block.c, luks-keyslot.c): an image's encryption context as
 *   QEMU's QCryptoBlock has it: open (unlock a key slot with a secret),
 *   create, amend key slots, encrypt and decrypt payload sectors.
 *
 * Nothing here implements a cipher, a hash or PBKDF2: libgcrypt does.
 * Key material lives in lib/core/secmem.h memory (never in core files)
 * and is wiped when freed; libgcrypt's own secure allocations (key
 * schedules, HMAC state) are routed there too (qimg_crypto_init).
 * Messages never contain a secret, only secret ids.
 *
 * Thread safety: encrypt/decrypt of one sector cipher or crypto block
 * may run from many threads at once (each call takes a cipher context
 * from a pool); everything else is called alone.
 */
#ifndef QIMG_CRYPTO_H
#define QIMG_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "qimg.h"

/* Every encrypted format QEMU has works in 512-byte sectors. */
#define QIMG_CRYPTO_SECTOR_SIZE 512u

/* ---- algorithm names (QEMU's QAPI enums, in their order) ---------------- */

enum qimg_cipher_alg {
    QIMG_CIPHER_AES_128,
    QIMG_CIPHER_AES_192,
    QIMG_CIPHER_AES_256,
    QIMG_CIPHER_DES,
    QIMG_CIPHER_3DES,
    QIMG_CIPHER_CAST5_128,
    QIMG_CIPHER_SERPENT_128,
    QIMG_CIPHER_SERPENT_192,
    QIMG_CIPHER_SERPENT_256,
    QIMG_CIPHER_TWOFISH_128,
    QIMG_CIPHER_TWOFISH_192,
    QIMG_CIPHER_TWOFISH_256,
    QIMG_CIPHER__MAX
};

enum qimg_cipher_mode {
    QIMG_MODE_ECB,
    QIMG_MODE_CBC,
    QIMG_MODE_XTS,
    QIMG_MODE_CTR,
    QIMG_MODE__MAX
};

enum qimg_ivgen_alg {
    QIMG_IVGEN_PLAIN,
    QIMG_IVGEN_PLAIN64,
    QIMG_IVGEN_ESSIV,
    QIMG_IVGEN__MAX
};

enum qimg_hash_alg {
    QIMG_HASH_MD5,
    QIMG_HASH_SHA1,
    QIMG_HASH_SHA224,
    QIMG_HASH_SHA256,
    QIMG_HASH_SHA384,
    QIMG_HASH_SHA512,
    QIMG_HASH_RIPEMD160,
    QIMG_HASH__MAX
};

/* "aes-256", "xts", "plain64", "sha256" ... */
const char *qimg_cipher_alg_name(enum qimg_cipher_alg alg);
const char *qimg_cipher_mode_name(enum qimg_cipher_mode mode);
const char *qimg_ivgen_alg_name(enum qimg_ivgen_alg alg);
const char *qimg_hash_alg_name(enum qimg_hash_alg alg);
/* The enum value for a name, or -1. */
int qimg_cipher_alg_lookup(const char *name);
int qimg_cipher_mode_lookup(const char *name);
int qimg_ivgen_alg_lookup(const char *name);
int qimg_hash_alg_lookup(const char *name);

size_t qimg_cipher_key_len(enum qimg_cipher_alg alg);
size_t qimg_cipher_block_len(enum qimg_cipher_alg alg);
/* IV bytes a mode needs with alg (0 for ECB). */
size_t qimg_cipher_iv_len(enum qimg_cipher_alg alg, enum qimg_cipher_mode mode);
size_t qimg_hash_digest_len(enum qimg_hash_alg alg);

/* ---- primitives ----------------------------------------------------------- */

/* Initialise libgcrypt once (thread-safe, idempotent); every function
 * below calls it. */
void qimg_crypto_init(void);

/* Random bytes from the kernel's CSPRNG. */
int qimg_random_bytes(void *buf, size_t len, struct qimg_error *err);

/* out = hash of the concatenated iov (qimg_hash_digest_len bytes). */
int qimg_hash_iov(enum qimg_hash_alg alg, const struct iovec *iov, size_t n,
                  uint8_t *out, struct qimg_error *err);

/* PBKDF2-HMAC-alg (RFC 8018). */
int qimg_pbkdf2(enum qimg_hash_alg alg, const uint8_t *key, size_t nkey,
                const uint8_t *salt, size_t nsalt, uint64_t iterations,
                uint8_t *out, size_t nout, struct qimg_error *err);

/*
 * PBKDF2 iterations of alg this thread computes per second of CPU time
 * for nout output bytes, as QEMU's qcrypto_pbkdf2_count_iters answers
 * (the count QEMU scales by iter-time).  Measured once per hash and
 * process (about 100 ms of CPU; QEMU spends 0.5-1 s per call) and scaled
 * by the number of hash blocks nout takes.
 */
int qimg_pbkdf2_count_iters(enum qimg_hash_alg alg, size_t nout,
                            uint64_t *iters, struct qimg_error *err);

/*
 * The LUKS anti-forensic splitter (LUKS1 spec, "AF-Splitter"): encode
 * spreads blocklen bytes of in over stripes * blocklen bytes of out
 * (random stripes, diffused with hash alg); decode joins them back.
 */
int qimg_afsplit_encode(enum qimg_hash_alg alg, size_t blocklen,
                        uint32_t stripes, const uint8_t *in, uint8_t *out,
                        struct qimg_error *err);
int qimg_afsplit_decode(enum qimg_hash_alg alg, size_t blocklen,
                        uint32_t stripes, const uint8_t *in, uint8_t *out,
                        struct qimg_error *err);

/*
 * IV of a sector for the plain (32-bit sector number, little endian),
 * plain64 (64-bit) generators; niv bytes, zero padded.  essiv needs a
 * cipher: see qimg_sector_cipher.
 */
void qimg_ivgen_plain(uint64_t sector, uint8_t *iv, size_t niv);
void qimg_ivgen_plain64(uint64_t sector, uint8_t *iv, size_t niv);

/* Decrypt len bytes at buf in place with one IV for the whole buffer
 * (no sectors): QEMU's encrypted secrets (keyid=, AES-256-CBC). */
int qimg_cipher_decrypt_buffer(enum qimg_cipher_alg alg,
                               enum qimg_cipher_mode mode, const uint8_t *key,
                               size_t nkey, const uint8_t *iv, size_t niv,
                               void *buf, size_t len, struct qimg_error *err);

/* ---- sector ciphers ------------------------------------------------------- */

/*
 * A keyed cipher in a mode with an IV generator, encrypting runs of
 * 512-byte sectors in place, the IV of each sector generated from its
 * number (dm-crypt's and QEMU's scheme).  For essiv, ivgen_cipher and
 * ivgen_hash pick the ESSIV cipher (keyed with the hash of the key,
 * truncated to the cipher's key length).
 */
struct qimg_sector_cipher;

/* The checks and messages of QEMU's qcrypto_cipher_new (key length,
 * mode/algorithm support). */
int qimg_sector_cipher_new(struct qimg_sector_cipher **out,
                           enum qimg_cipher_alg alg,
                           enum qimg_cipher_mode mode,
                           enum qimg_ivgen_alg ivgen,
                           enum qimg_cipher_alg ivgen_cipher,
                           enum qimg_hash_alg ivgen_hash,
                           const uint8_t *key, size_t nkey,
                           struct qimg_error *err);
/* len bytes at buf (a multiple of the block size; every 512 bytes a new
 * sector, the last may be short), the first being sector `sector`.
 * Thread-safe. */
int qimg_sector_cipher_encrypt(struct qimg_sector_cipher *c, uint64_t sector,
                               void *buf, size_t len, struct qimg_error *err);
int qimg_sector_cipher_decrypt(struct qimg_sector_cipher *c, uint64_t sector,
                               void *buf, size_t len, struct qimg_error *err);
void qimg_sector_cipher_free(struct qimg_sector_cipher *c);

/*
 * The legacy qcow AES cipher (qcow version 1, and qcow2 encrypt.format=aes
 * = crypt method 1): AES-128-CBC, the plain64 IV of each 512-byte sector,
 * the key being the first 16 bytes of the password (zero padded, no key
 * derivation).  Sector numbers are *guest* offsets / 512 for both qcow
 * and qcow2.  The password is what qimg_secret_get() returns; the
 * message for a missing key is the caller's (see qimg_crypto_open).
 */
int qimg_qcow_aes_new(struct qimg_sector_cipher **out, const char *password,
                      size_t len, struct qimg_error *err);

/* ---- crypto blocks: an image's encryption context --------------------------- */

enum qimg_crypto_format {
    QIMG_CRYPTO_FORMAT_QCOW,    /* legacy AES ("aes" in qcow2 options) */
    QIMG_CRYPTO_FORMAT_LUKS,
};

/*
 * Where a format keeps the encryption header: offsets are relative to
 * the header's start.  init (create only) makes room for len header
 * bytes before anything is written (luks: the file grows to payload +
 * size; qcow2: header clusters are allocated and zeroed).
 */
struct qimg_crypto_io {
    int (*read)(void *opaque, uint64_t off, size_t len, void *buf,
                struct qimg_error *err);
    int (*write)(void *opaque, uint64_t off, size_t len, const void *buf,
                 struct qimg_error *err);
    int (*init)(void *opaque, uint64_t len, struct qimg_error *err);
    void *opaque;
};

struct qimg_crypto;

enum {
    /* Read the header only (qemu-img info): no secret, no unlocking. */
    QIMG_CRYPTO_OPEN_NO_IO = 1 << 0,
};

/*
 * QEMU's qcrypto_block_has_format: buf starts with a LUKS1 header magic
 * and version.
 */
bool qimg_luks_has_format(const uint8_t *buf, size_t len);

/*
 * Open an encryption context, the options ("key-secret") under prefix
 * ("" for the luks format, "encrypt." in qcow2) as QEMU names them in
 * messages ("Parameter 'encrypt.key-secret' is required for cipher").
 * LUKS: the header is read, checked and parsed, then (unless NO_IO)
 * every active key slot is tried with the secret until one unlocks the
 * master key ("Invalid password, cannot unlock any keyslot").
 */
int qimg_crypto_open(struct qimg_crypto **out, enum qimg_crypto_format fmt,
                     const char *key_secret, const char *prefix,
                     unsigned flags, const struct qimg_crypto_io *io,
                     struct qimg_error *err);

/* QEMU's open options of an encrypted image: under prefix only "format"
 * and "key-secret"; any other is "Parameter 'x' is unexpected" (the name
 * without the prefix). */
int qimg_crypto_check_open_opts(const struct qimg_opts *opts,
                                const char *prefix, struct qimg_error *err);

/*
 * Creation options (QEMU's QCryptoBlockCreateOptions), parsed from a
 * qimg_opts under prefix with QEMU's messages.
 */
struct qimg_crypto_create_opts {
    enum qimg_crypto_format format;
    const char *key_secret;             /* borrowed from the opts */
    enum qimg_cipher_alg cipher_alg;
    enum qimg_cipher_mode cipher_mode;
    enum qimg_ivgen_alg ivgen_alg;
    bool has_ivgen_hash;
    enum qimg_hash_alg ivgen_hash_alg;
    enum qimg_hash_alg hash_alg;
    uint64_t iter_time;                 /* milliseconds */
};
/* Fill o from opts for format fmt (LUKS defaults: aes-256, xts,
 * plain64, sha256, 2000 ms).  Keys under prefix that the format does
 * not know are refused ("Parameter 'encrypt.cipher-alg' is unexpected")
 * unless their name is in ignore (NULL-terminated, without prefix). */
int qimg_crypto_parse_create_opts(struct qimg_crypto_create_opts *o,
                                  enum qimg_crypto_format fmt,
                                  const struct qimg_opts *opts,
                                  const char *prefix,
                                  const char *const *ignore,
                                  struct qimg_error *err);

/* Create an encryption header (LUKS: slot 0 gets the secret). */
int qimg_crypto_create(struct qimg_crypto **out,
                       const struct qimg_crypto_create_opts *o,
                       const char *prefix, const struct qimg_crypto_io *io,
                       struct qimg_error *err);

/* Bytes of header a LUKS header with these options takes (0 for qcow),
 * as QEMU's qcrypto_block_calculate_payload_offset (for measure). */
int qimg_crypto_payload_len(const struct qimg_crypto_create_opts *o,
                            const char *prefix, uint64_t *len,
                            struct qimg_error *err);

/*
 * Amend key slots (QEMU's QCryptoBlockAmendOptionsLUKS): state
 * (active|inactive), keyslot, old-secret, new-secret, iter-time, read
 * from opts under prefix.  Writes through io.
 */
int qimg_crypto_amend(struct qimg_crypto *c, const struct qimg_opts *opts,
                      const char *prefix, bool force,
                      const struct qimg_crypto_io *io, struct qimg_error *err);

enum qimg_crypto_format qimg_crypto_format(const struct qimg_crypto *c);
/* Offset of the payload from the header's start (0 for qcow). */
uint64_t qimg_crypto_payload_offset(const struct qimg_crypto *c);
/* QEMU's QCryptoBlockInfoLUKS members as a JSON object text (malloc'ed),
 * NULL for qcow or on allocation failure. */
char *qimg_crypto_info_json(const struct qimg_crypto *c);

/* En/decrypt len bytes (multiple of 512) at buf, which hold the payload
 * from byte offset (multiple of 512) on.  Thread-safe.  -EIO when the
 * context was opened NO_IO. */
int qimg_crypto_encrypt(struct qimg_crypto *c, uint64_t offset, void *buf,
                        size_t len, struct qimg_error *err);
int qimg_crypto_decrypt(struct qimg_crypto *c, uint64_t offset, void *buf,
                        size_t len, struct qimg_error *err);
void qimg_crypto_free(struct qimg_crypto *c);

#endif /* QIMG_CRYPTO_H */
