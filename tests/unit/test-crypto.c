/*
 * test-crypto.c - lib/crypto: IV generators, PBKDF2 (RFC 6070 vectors),
 * XTS (IEEE 1619 vector), ESSIV against its definition, the AF splitter,
 * LUKS header layout, checks and parsing, secure memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto.h"
#include "crypto/luks-header.h"

static void hex(const char *s, uint8_t *out)
{
    for (size_t i = 0; s[2 * i]; i++) {
        unsigned v;
        sscanf(s + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static void test_ivgen(void **state)
{
    uint8_t iv[16], want[16] = {0};
    (void)state;

    qimg_ivgen_plain(0x100000005ull, iv, sizeof(iv));
    want[0] = 5;
    assert_memory_equal(iv, want, 16);
    qimg_ivgen_plain64(0x100000005ull, iv, sizeof(iv));
    want[4] = 1;
    assert_memory_equal(iv, want, 16);
    /* an 8-byte IV (cast5) keeps the low bytes */
    memset(iv, 0xff, sizeof(iv));
    qimg_ivgen_plain64(0x0102030405060708ull, iv, 8);
    hex("0807060504030201", want);
    assert_memory_equal(iv, want, 8);
    assert_int_equal(iv[8], 0xff);
}

static void test_pbkdf2_rfc6070(void **state)
{
    static const struct { unsigned iters; const char *dk; } v[] = {
        {1, "0c60c80f961f0e71f3a9b524af6012062fe037a6"},
        {2, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"},
        {4096, "4b007901b765489abead49d926f721d065a429c1"},
    };
    uint8_t out[20], want[20];
    (void)state;

    for (size_t i = 0; i < QIMG_ARRAY_SIZE(v); i++) {
        assert_int_equal(qimg_pbkdf2(QIMG_HASH_SHA1, (const uint8_t *)"password",
                                     8, (const uint8_t *)"salt", 4, v[i].iters,
                                     out, 20, NULL), 0);
        hex(v[i].dk, want);
        assert_memory_equal(out, want, 20);
    }
    assert_int_not_equal(qimg_pbkdf2(QIMG_HASH_SHA1, out, 1, out, 1, 0, out,
                                     20, NULL), 0);
}

static void test_count_iters(void **state)
{
    uint64_t one, two;
    (void)state;
    assert_int_equal(qimg_pbkdf2_count_iters(QIMG_HASH_SHA256, 32, &one, NULL),
                     0);
    assert_int_equal(qimg_pbkdf2_count_iters(QIMG_HASH_SHA256, 64, &two, NULL),
                     0);
    assert_true(one > 1000);
    /* two output blocks cost twice the work */
    assert_int_equal(two, one / 2);
}

static void test_xts_ieee1619(void **state)
{
    /* IEEE 1619-2007 vector 1: AES-128 keys of zeroes, tweak 0. */
    uint8_t key[32] = {0}, buf[512] = {0}, want[32];
    struct qimg_sector_cipher *c;
    (void)state;

    assert_int_equal(qimg_sector_cipher_new(&c, QIMG_CIPHER_AES_128,
                                            QIMG_MODE_XTS, QIMG_IVGEN_PLAIN64,
                                            QIMG_CIPHER_AES_128,
                                            QIMG_HASH_SHA256, key, 32, NULL),
                     0);
    assert_int_equal(qimg_sector_cipher_encrypt(c, 0, buf, 512, NULL), 0);
    hex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e",
        want);
    assert_memory_equal(buf, want, 32);
    assert_int_equal(qimg_sector_cipher_decrypt(c, 0, buf, 512, NULL), 0);
    assert_true(qimg_buffer_is_zero(buf, 512));
    qimg_sector_cipher_free(c);
}

/* ESSIV: the IV of sector n is E(sha256(key), le64(n)). */
static void test_essiv(void **state)
{
    uint8_t key[16], buf[1024], plain[1024], salt[32], iv[16];
    struct iovec iov = {key, sizeof(key)};
    struct qimg_sector_cipher *c, *ecb;
    (void)state;

    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (uint8_t)(i * 13);
    memcpy(buf, plain, sizeof(buf));
    assert_int_equal(qimg_sector_cipher_new(&c, QIMG_CIPHER_AES_128,
                                            QIMG_MODE_CBC, QIMG_IVGEN_ESSIV,
                                            QIMG_CIPHER_AES_256,
                                            QIMG_HASH_SHA256, key, 16, NULL),
                     0);
    assert_int_equal(qimg_sector_cipher_encrypt(c, 41, buf, sizeof(buf), NULL),
                     0);
    /* second sector (42) by hand */
    assert_int_equal(qimg_hash_iov(QIMG_HASH_SHA256, &iov, 1, salt, NULL), 0);
    assert_int_equal(qimg_sector_cipher_new(&ecb, QIMG_CIPHER_AES_256,
                                            QIMG_MODE_ECB, QIMG_IVGEN_PLAIN64,
                                            QIMG_CIPHER_AES_256,
                                            QIMG_HASH_SHA256, salt, 32, NULL),
                     0);
    qimg_ivgen_plain64(42, iv, 16);
    assert_int_equal(qimg_sector_cipher_encrypt(ecb, 0, iv, 16, NULL), 0);
    assert_int_equal(qimg_cipher_decrypt_buffer(QIMG_CIPHER_AES_128,
                                                QIMG_MODE_CBC, key, 16, iv, 16,
                                                buf + 512, 512, NULL), 0);
    assert_memory_equal(buf + 512, plain + 512, 512);
    qimg_sector_cipher_free(ecb);
    qimg_sector_cipher_free(c);
}

static void test_cipher_checks(void **state)
{
    struct qimg_sector_cipher *c;
    struct qimg_error err;
    uint8_t key[64] = {0};
    (void)state;

    assert_int_not_equal(qimg_sector_cipher_new(&c, QIMG_CIPHER_CAST5_128,
                                                QIMG_MODE_XTS,
                                                QIMG_IVGEN_PLAIN64, 0, 0, key,
                                                32, &err), 0);
    assert_string_equal(err.msg, "Unsupported cipher mode xts");
    assert_int_not_equal(qimg_sector_cipher_new(&c, QIMG_CIPHER_AES_256,
                                                QIMG_MODE_XTS,
                                                QIMG_IVGEN_PLAIN64, 0, 0, key,
                                                32, &err), 0);
    assert_string_equal(err.msg, "Cipher key length 32 should be 64");
    assert_int_not_equal(qimg_sector_cipher_new(&c, QIMG_CIPHER_DES,
                                                QIMG_MODE_XTS,
                                                QIMG_IVGEN_PLAIN64, 0, 0, key,
                                                16, &err), 0);
    assert_string_equal(err.msg, "XTS mode not compatible with DES/3DES");
}

/* stripes = 2: out = s0 || in ^ H(s0), H hashing (be32 i || piece i). */
static void check_af(enum qimg_hash_alg h, size_t blocklen)
{
    uint8_t in[64], out[128], back[64], d[64];
    size_t dl = qimg_hash_digest_len(h);

    for (size_t i = 0; i < blocklen; i++)
        in[i] = (uint8_t)(0xa0 + i);
    assert_int_equal(qimg_afsplit_encode(h, blocklen, 2, in, out, NULL), 0);
    memcpy(d, out, blocklen);
    for (size_t i = 0, off = 0; off < blocklen; i++, off += dl) {
        uint8_t be[4], dig[64];
        size_t n = QIMG_MIN(dl, blocklen - off);
        struct iovec iov[2] = {{be, 4}, {d + off, n}};
        qimg_st_be32(be, (uint32_t)i);
        assert_int_equal(qimg_hash_iov(h, iov, 2, dig, NULL), 0);
        memcpy(d + off, dig, n);
    }
    for (size_t i = 0; i < blocklen; i++)
        assert_int_equal(out[blocklen + i], in[i] ^ d[i]);
    assert_int_equal(qimg_afsplit_decode(h, blocklen, 2, out, back, NULL), 0);
    assert_memory_equal(back, in, blocklen);
}

static void test_afsplit(void **state)
{
    uint8_t in[32], *split = malloc(32 * 4000), back[32];
    (void)state;

    check_af(QIMG_HASH_SHA256, 32);
    check_af(QIMG_HASH_SHA256, 48);     /* a short last piece */
    check_af(QIMG_HASH_SHA1, 64);
    check_af(QIMG_HASH_MD5, 16);
    memset(in, 0x5c, sizeof(in));
    assert_int_equal(qimg_afsplit_encode(QIMG_HASH_SHA512, 32, 4000, in, split,
                                         NULL), 0);
    assert_int_equal(qimg_afsplit_decode(QIMG_HASH_SHA512, 32, 4000, split,
                                         back, NULL), 0);
    assert_memory_equal(back, in, 32);
    split[100] ^= 1;   /* any stripe matters */
    assert_int_equal(qimg_afsplit_decode(QIMG_HASH_SHA512, 32, 4000, split,
                                         back, NULL), 0);
    assert_memory_not_equal(back, in, 32);
    free(split);
}

/* A header as QEMU lays it out for aes-256-xts-plain64/sha256. */
static void good_header(struct qimg_luks_header *h)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, "LUKS\xba\xbe", 6);
    h->version = 1;
    strcpy(h->cipher_name, "aes");
    strcpy(h->cipher_mode, "xts-plain64");
    strcpy(h->hash_spec, "sha256");
    h->master_key_len = 64;
    h->mk_iterations = 1000;
    strcpy(h->uuid, "0b8f7c43-2d3e-4b9c-9a4e-6a1f2b3c4d5e");
    for (int i = 0; i < 8; i++) {
        h->slots[i].active = QIMG_LUKS_SLOT_INACTIVE;
        h->slots[i].stripes = 4000;
        h->slots[i].key_offset_sector = 8 + i * 504;
    }
    h->slots[0].active = QIMG_LUKS_SLOT_ACTIVE;
    h->slots[0].iterations = 2000;
    h->payload_offset_sector = 4040;
}

static void test_header_layout(void **state)
{
    struct qimg_luks_header h, back;
    uint8_t buf[QIMG_LUKS_HEADER_SIZE];
    (void)state;

    good_header(&h);
    qimg_luks_header_encode(&h, buf);
    assert_true(qimg_luks_has_format(buf, sizeof(buf)));
    assert_memory_equal(buf + 40, "xts-plain64", 12);
    assert_int_equal(qimg_ld_be32(buf + 104), 4040);       /* payload */
    assert_int_equal(qimg_ld_be32(buf + 208), QIMG_LUKS_SLOT_ACTIVE);
    assert_int_equal(qimg_ld_be32(buf + 208 + 48 + 40), 512); /* slot 1 */
    assert_int_equal(qimg_ld_be32(buf + 208 + 7 * 48 + 44), 4000);
    qimg_luks_header_decode(&back, buf);
    assert_memory_equal(&back, &h, sizeof(h));
    assert_int_equal(qimg_luks_split_sectors(64, 4000), 504);
    assert_int_equal(qimg_luks_split_sectors(16, 4000), 128);
    assert_int_equal(qimg_luks_split_sectors(24, 4000), 192);
    buf[7] = 2;
    assert_false(qimg_luks_has_format(buf, sizeof(buf)));
}

struct bad_case {
    void (*patch)(struct qimg_luks_header *h);
    const char *msg;
};

static void p_magic(struct qimg_luks_header *h) { h->magic[0] = 'X'; }
static void p_version(struct qimg_luks_header *h) { h->version = 2; }
static void p_name(struct qimg_luks_header *h)
{
    memset(h->cipher_name, 'a', sizeof(h->cipher_name));
}
static void p_payload(struct qimg_luks_header *h) { h->payload_offset_sector = 7; }
static void p_mkiter(struct qimg_luks_header *h) { h->mk_iterations = 0; }
static void p_stripes(struct qimg_luks_header *h) { h->slots[3].stripes = 1; }
static void p_state(struct qimg_luks_header *h) { h->slots[2].active = 5; }
static void p_iter(struct qimg_luks_header *h) { h->slots[0].iterations = 0; }
static void p_low(struct qimg_luks_header *h) { h->slots[0].key_offset_sector = 3; }
static void p_high(struct qimg_luks_header *h)
{
    h->slots[7].key_offset_sector = 0x10000u;
}
static void p_overlap(struct qimg_luks_header *h)
{
    h->slots[5].key_offset_sector = h->slots[1].key_offset_sector + 8;
}
static void p_hugekey(struct qimg_luks_header *h) { h->master_key_len = 0xffffffffu; }

static void test_header_check(void **state)
{
    static const struct bad_case cases[] = {
        {p_magic, "Volume is not in LUKS format"},
        {p_version, "LUKS version 2 is not supported"},
        {p_name, "LUKS header cipher name is not NUL terminated"},
        {p_payload, "LUKS payload is overlapping with the header"},
        {p_mkiter, "LUKS key iteration count is zero"},
        {p_stripes, "Keyslot 3 is corrupted (stripes 1 != 4000)"},
        {p_state, "Keyslot 2 state (active/disable) is corrupted"},
        {p_iter, "Keyslot 0 iteration count is zero"},
        {p_low, "Keyslot 0 is overlapping with the LUKS header"},
        {p_high, "Keyslot 7 is overlapping with the encrypted payload"},
        {p_overlap, "Keyslots 1 and 5 are overlapping in the header"},
        {p_hugekey, "Keyslot 0 is overlapping with the encrypted payload"},
    };
    struct qimg_luks_header h;
    struct qimg_error err;
    (void)state;

    good_header(&h);
    assert_int_equal(qimg_luks_header_check(&h, &err), 0);
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(cases); i++) {
        good_header(&h);
        cases[i].patch(&h);
        assert_int_not_equal(qimg_luks_header_check(&h, &err), 0);
        assert_string_equal(err.msg, cases[i].msg);
    }
}

static void test_header_parse(void **state)
{
    static const struct {
        const char *name, *mode, *hash;
        uint32_t keylen;
        const char *msg;
    } cases[] = {
        {"aes", "ecb", "sha256", 32,
         "Unexpected cipher mode string format 'ecb'"},
        {"aes", "cbc-essiv", "sha256", 32,
         "Missing IV generator hash specification"},
        {"aes", "cbc-essiv:sha1", "sha256", 32,
         "No AES cipher with key size 20 available"},
        {"aes", "cbc-essiv:whirl", "sha256", 32,
         "Hash algorithm 'whirl' not supported"},
        {"aes", "gcm-plain64", "sha256", 32, "Cipher mode 'gcm' not supported"},
        {"des", "cbc-plain", "sha256", 8,
         "Algorithm 'des' with key size 8 bytes not supported"},
        {"aes", "xts-plain64", "sha256", 40,
         "Algorithm 'aes' with key size 20 bytes not supported"},
        {"aes", "cbc-benbi", "sha256", 32, "IV generator 'benbi' not supported"},
        {"aes", "cbc-plain", "sha3", 32, "Hash algorithm 'sha3' not supported"},
        {"cast5", "cbc-essiv:sha256", "sha256", 16,
         "Cipher cast5-128 not supported with essiv"},
    };
    struct qimg_luks_header h;
    struct qimg_luks_algs a;
    struct qimg_error err;
    (void)state;

    good_header(&h);
    assert_int_equal(qimg_luks_header_parse(&h, &a, &err), 0);
    assert_int_equal(a.cipher_alg, QIMG_CIPHER_AES_256);
    assert_int_equal(a.cipher_mode, QIMG_MODE_XTS);
    assert_int_equal(a.ivgen_alg, QIMG_IVGEN_PLAIN64);
    /* dm-crypt's ESSIV quirk: aes-128 with sha256 uses aes-256 */
    strcpy(h.cipher_mode, "cbc-essiv:sha256");
    h.master_key_len = 16;
    assert_int_equal(qimg_luks_header_parse(&h, &a, &err), 0);
    assert_int_equal(a.ivgen_cipher_alg, QIMG_CIPHER_AES_256);
    /* a hash after plain64 is ignored */
    strcpy(h.cipher_mode, "cbc-plain64:sha1");
    assert_int_equal(qimg_luks_header_parse(&h, &a, &err), 0);
    assert_int_equal(a.ivgen_cipher_alg, QIMG_CIPHER_AES_128);
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(cases); i++) {
        good_header(&h);
        strcpy(h.cipher_name, cases[i].name);
        strcpy(h.cipher_mode, cases[i].mode);
        strcpy(h.hash_spec, cases[i].hash);
        h.master_key_len = cases[i].keylen;
        assert_int_not_equal(qimg_luks_header_parse(&h, &a, &err), 0);
        assert_string_equal(err.msg, cases[i].msg);
    }
}

static void test_unlock_work(void **state)
{
    struct qimg_luks_header h;
    (void)state;

    good_header(&h);
    /* 64-byte key, sha256: 2 blocks per slot iteration, 1 for the digest */
    assert_int_equal(qimg_luks_unlock_work(&h, QIMG_HASH_SHA256),
                     2000 * 2 + 1000);
    for (int i = 0; i < 8; i++) {
        h.slots[i].active = QIMG_LUKS_SLOT_ACTIVE;
        h.slots[i].iterations = 0xffffffffu;
    }
    h.mk_iterations = 0xffffffffu;
    assert_true(qimg_luks_unlock_work(&h, QIMG_HASH_SHA256) >
                QIMG_LUKS_MAX_UNLOCK_WORK);
}

static void test_secmem(void **state)
{
    void *p[40];
    (void)state;

    for (int i = 0; i < 40; i++) {
        size_t n = (size_t)1 << (i % 20);
        p[i] = qimg_secmem_alloc(n);
        assert_non_null(p[i]);
        assert_true(((uintptr_t)p[i] & 15) == 0);
        assert_true(qimg_secmem_owns(p[i]));
        assert_int_equal(qimg_secmem_size(p[i]), n);
        assert_true(qimg_buffer_is_zero(p[i], n));
        memset(p[i], 0xaa, n);
    }
    for (int i = 0; i < 40; i++)
        qimg_secmem_free(p[i]);
    /* a recycled block comes back zeroed */
    uint8_t *q = qimg_secmem_alloc(100);
    assert_true(qimg_buffer_is_zero(q, 100));
    qimg_secmem_free(q);
    assert_false(qimg_secmem_owns(&q));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ivgen),
        cmocka_unit_test(test_pbkdf2_rfc6070),
        cmocka_unit_test(test_count_iters),
        cmocka_unit_test(test_xts_ieee1619),
        cmocka_unit_test(test_essiv),
        cmocka_unit_test(test_cipher_checks),
        cmocka_unit_test(test_afsplit),
        cmocka_unit_test(test_header_layout),
        cmocka_unit_test(test_header_check),
        cmocka_unit_test(test_header_parse),
        cmocka_unit_test(test_unlock_work),
        cmocka_unit_test(test_secmem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
