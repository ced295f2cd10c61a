/*
 * luks-header.h - the LUKS1 header (cryptsetup's "LUKS On-Disk Format
 * Specification", version 1.2.x), as QEMU 7.2 reads and writes it.
 * Internal to lib/crypto (and its unit tests and fuzz target).
 *
 * On disk, big endian: magic "LUKS\xba\xbe", version 1, cipher name, mode
 * spec "<mode>-<ivgen>[:<hash>]" and hash spec (NUL-terminated in 32
 * bytes each), payload offset (sectors), master key length, digest of
 * the master key (PBKDF2, 20 bytes) with its salt and iterations, the
 * UUID as text, then eight 48-byte key slots: state, PBKDF2 iterations
 * and salt, first sector of the slot's key material, AF stripes.
 */
#ifndef QIMG_CRYPTO_LUKS_HEADER_H
#define QIMG_CRYPTO_LUKS_HEADER_H

#include "crypto/crypto.h"

#define QIMG_LUKS_MAGIC_LEN 6
#define QIMG_LUKS_VERSION 1
#define QIMG_LUKS_NAME_LEN 32          /* cipher name, mode, hash spec */
#define QIMG_LUKS_DIGEST_LEN 20
#define QIMG_LUKS_SALT_LEN 32
#define QIMG_LUKS_UUID_LEN 40
#define QIMG_LUKS_NUM_SLOTS 8
#define QIMG_LUKS_SLOT_SIZE 48
#define QIMG_LUKS_HEADER_SIZE 592      /* 208 + 8 slots */
/* The one stripe count QEMU accepts (and cryptsetup writes). */
#define QIMG_LUKS_STRIPES 4000
/* Key material starts past the header's first 4 KiB; each slot's
 * material is rounded up to 4 KiB. */
#define QIMG_LUKS_KEY_SLOT_OFFSET 4096
#define QIMG_LUKS_SLOT_ACTIVE 0x00AC71F3u
#define QIMG_LUKS_SLOT_INACTIVE 0x0000DEADu
#define QIMG_LUKS_MIN_SLOT_ITERS 1000
#define QIMG_LUKS_MIN_MASTER_ITERS 1000
#define QIMG_LUKS_DEFAULT_ITER_TIME_MS 2000
/* Passes of random data over an erased slot's key material (QEMU's). */
#define QIMG_LUKS_ERASE_PASSES 40
/* Longest master key of the ciphers LUKS offers (AES-256 in XTS). */
#define QIMG_LUKS_MAX_KEY_LEN 64
/*
 * Unlocking runs PBKDF2 over every active slot (slot iterations times
 * the blocks of its key) plus the master key digest for each: an image
 * asking for more than this many PBKDF2 block iterations in all is
 * refused before any of them (QEMU 7.2 spins for hours on 2^32).  It is
 * about 75 s of CPU on the 2024 x86 machine this was written on; a
 * single slot made by QEMU or cryptsetup with iter-time up to ~70 s fits,
 * as do eight slots of the 2 s default.  Creation and amend refuse
 * iter-time values that would exceed it.  See docs/LIMITS.md.
 */
#define QIMG_LUKS_MAX_UNLOCK_WORK (1ull << 29)

struct qimg_luks_slot {
    uint32_t active;
    uint32_t iterations;
    uint8_t salt[QIMG_LUKS_SALT_LEN];
    uint32_t key_offset_sector;
    uint32_t stripes;
};

struct qimg_luks_header {
    uint8_t magic[QIMG_LUKS_MAGIC_LEN];
    uint16_t version;
    char cipher_name[QIMG_LUKS_NAME_LEN];
    char cipher_mode[QIMG_LUKS_NAME_LEN];
    char hash_spec[QIMG_LUKS_NAME_LEN];
    uint32_t payload_offset_sector;
    uint32_t master_key_len;
    uint8_t mk_digest[QIMG_LUKS_DIGEST_LEN];
    uint8_t mk_salt[QIMG_LUKS_SALT_LEN];
    uint32_t mk_iterations;
    char uuid[QIMG_LUKS_UUID_LEN];
    struct qimg_luks_slot slots[QIMG_LUKS_NUM_SLOTS];
};

/* The algorithms a header's strings name. */
struct qimg_luks_algs {
    enum qimg_cipher_alg cipher_alg;
    enum qimg_cipher_mode cipher_mode;
    enum qimg_ivgen_alg ivgen_alg;
    enum qimg_hash_alg ivgen_hash_alg;  /* essiv (parsed for the others) */
    enum qimg_cipher_alg ivgen_cipher_alg;
    enum qimg_hash_alg hash_alg;
};

/* Host-endian header from / to its 592 on-disk bytes. */
void qimg_luks_header_decode(struct qimg_luks_header *h, const uint8_t *buf);
void qimg_luks_header_encode(const struct qimg_luks_header *h, uint8_t *buf);
/* QEMU's sanity checks and messages ("Keyslot 3 is overlapping ..."). */
int qimg_luks_header_check(const struct qimg_luks_header *h,
                           struct qimg_error *err);
/* Parse the cipher/mode/hash strings ("Cipher mode 'x' not supported"). */
int qimg_luks_header_parse(const struct qimg_luks_header *h,
                           struct qimg_luks_algs *a, struct qimg_error *err);
/* dm-crypt's ESSIV cipher: the key length matches the hash's digest. */
int qimg_luks_essiv_cipher(enum qimg_cipher_alg cipher, enum qimg_hash_alg hash,
                           enum qimg_cipher_alg *out, struct qimg_error *err);
/* Sectors of key material per slot: key_len * stripes bytes, rounded up
 * to 4 KiB (cryptsetup's layout). */
uint64_t qimg_luks_split_sectors(uint32_t key_len, uint32_t stripes);
/* PBKDF2 block iterations unlocking every active slot may take. */
uint64_t qimg_luks_unlock_work(const struct qimg_luks_header *h,
                               enum qimg_hash_alg hash);
/* QEMU's QCryptoBlockInfoLUKS as JSON text (malloc'ed). */
char *qimg_luks_info_json(const struct qimg_luks_header *h,
                          const struct qimg_luks_algs *a);

#endif /* QIMG_CRYPTO_LUKS_HEADER_H */
