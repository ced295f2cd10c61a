/*
 * luks-header.c - the LUKS1 header: byte layout, QEMU's sanity checks,
 * parsing of the algorithm strings and the info block (see luks-header.h).
 * Nothing here allocates or reads, whatever the header holds.  The slot
 * overlap checks use QEMU's 32-bit sector arithmetic, wrap included, so
 * that the same images are accepted: an offset that wraps only makes
 * the slot's key material read from far past the end (zeroes), which
 * unlocks nothing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/util.h"
#include "crypto/luks-header.h"

static const uint8_t luks_magic[QIMG_LUKS_MAGIC_LEN] = {
    'L', 'U', 'K', 'S', 0xba, 0xbe
};

/* Byte offsets of the on-disk fields. */
enum {
    OFF_VERSION = 6,
    OFF_CIPHER_NAME = 8,
    OFF_CIPHER_MODE = 40,
    OFF_HASH_SPEC = 72,
    OFF_PAYLOAD = 104,
    OFF_KEY_BYTES = 108,
    OFF_MK_DIGEST = 112,
    OFF_MK_SALT = 132,
    OFF_MK_ITERS = 164,
    OFF_UUID = 168,
    OFF_SLOTS = 208,
    /* within a slot */
    SLOT_ACTIVE = 0,
    SLOT_ITERS = 4,
    SLOT_SALT = 8,
    SLOT_KEY_OFFSET = 40,
    SLOT_STRIPES = 44,
};

bool qimg_luks_has_format(const uint8_t *buf, size_t len)
{
    return len >= OFF_CIPHER_NAME &&
           !memcmp(buf, luks_magic, QIMG_LUKS_MAGIC_LEN) &&
           qimg_ld_be16(buf + OFF_VERSION) == QIMG_LUKS_VERSION;
}

void qimg_luks_header_decode(struct qimg_luks_header *h, const uint8_t *buf)
{
    memcpy(h->magic, buf, QIMG_LUKS_MAGIC_LEN);
    h->version = qimg_ld_be16(buf + OFF_VERSION);
    memcpy(h->cipher_name, buf + OFF_CIPHER_NAME, QIMG_LUKS_NAME_LEN);
    memcpy(h->cipher_mode, buf + OFF_CIPHER_MODE, QIMG_LUKS_NAME_LEN);
    memcpy(h->hash_spec, buf + OFF_HASH_SPEC, QIMG_LUKS_NAME_LEN);
    h->payload_offset_sector = qimg_ld_be32(buf + OFF_PAYLOAD);
    h->master_key_len = qimg_ld_be32(buf + OFF_KEY_BYTES);
    memcpy(h->mk_digest, buf + OFF_MK_DIGEST, QIMG_LUKS_DIGEST_LEN);
    memcpy(h->mk_salt, buf + OFF_MK_SALT, QIMG_LUKS_SALT_LEN);
    h->mk_iterations = qimg_ld_be32(buf + OFF_MK_ITERS);
    memcpy(h->uuid, buf + OFF_UUID, QIMG_LUKS_UUID_LEN);
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
        const uint8_t *p = buf + OFF_SLOTS + i * QIMG_LUKS_SLOT_SIZE;
        struct qimg_luks_slot *s = &h->slots[i];
        s->active = qimg_ld_be32(p + SLOT_ACTIVE);
        s->iterations = qimg_ld_be32(p + SLOT_ITERS);
        memcpy(s->salt, p + SLOT_SALT, QIMG_LUKS_SALT_LEN);
        s->key_offset_sector = qimg_ld_be32(p + SLOT_KEY_OFFSET);
        s->stripes = qimg_ld_be32(p + SLOT_STRIPES);
    }
}

void qimg_luks_header_encode(const struct qimg_luks_header *h, uint8_t *buf)
{
    memset(buf, 0, QIMG_LUKS_HEADER_SIZE);
    memcpy(buf, h->magic, QIMG_LUKS_MAGIC_LEN);
    qimg_st_be16(buf + OFF_VERSION, h->version);
    memcpy(buf + OFF_CIPHER_NAME, h->cipher_name, QIMG_LUKS_NAME_LEN);
    memcpy(buf + OFF_CIPHER_MODE, h->cipher_mode, QIMG_LUKS_NAME_LEN);
    memcpy(buf + OFF_HASH_SPEC, h->hash_spec, QIMG_LUKS_NAME_LEN);
    qimg_st_be32(buf + OFF_PAYLOAD, h->payload_offset_sector);
    qimg_st_be32(buf + OFF_KEY_BYTES, h->master_key_len);
    memcpy(buf + OFF_MK_DIGEST, h->mk_digest, QIMG_LUKS_DIGEST_LEN);
    memcpy(buf + OFF_MK_SALT, h->mk_salt, QIMG_LUKS_SALT_LEN);
    qimg_st_be32(buf + OFF_MK_ITERS, h->mk_iterations);
    memcpy(buf + OFF_UUID, h->uuid, QIMG_LUKS_UUID_LEN);
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
        uint8_t *p = buf + OFF_SLOTS + i * QIMG_LUKS_SLOT_SIZE;
        const struct qimg_luks_slot *s = &h->slots[i];
        qimg_st_be32(p + SLOT_ACTIVE, s->active);
        qimg_st_be32(p + SLOT_ITERS, s->iterations);
        memcpy(p + SLOT_SALT, s->salt, QIMG_LUKS_SALT_LEN);
        qimg_st_be32(p + SLOT_KEY_OFFSET, s->key_offset_sector);
        qimg_st_be32(p + SLOT_STRIPES, s->stripes);
    }
}

uint64_t qimg_luks_split_sectors(uint32_t key_len, uint32_t stripes)
{
    const uint64_t header_sectors =
        QIMG_LUKS_KEY_SLOT_OFFSET / QIMG_CRYPTO_SECTOR_SIZE;
    uint64_t sectors = qimg_div_round_up((uint64_t)key_len * stripes,
                                         QIMG_CRYPTO_SECTOR_SIZE);
    return qimg_div_round_up(sectors, header_sectors) * header_sectors;
}

int qimg_luks_header_check(const struct qimg_luks_header *h,
                           struct qimg_error *err)
{
    const uint64_t header_sectors =
        QIMG_LUKS_KEY_SLOT_OFFSET / QIMG_CRYPTO_SECTOR_SIZE;

    if (memcmp(h->magic, luks_magic, QIMG_LUKS_MAGIC_LEN))
        return qimg_error_set(err, -EINVAL, "Volume is not in LUKS format");
    if (h->version != QIMG_LUKS_VERSION)
        return qimg_error_set(err, -EINVAL, "LUKS version %u is not supported",
                              (unsigned)h->version);
    if (!memchr(h->cipher_name, 0, QIMG_LUKS_NAME_LEN))
        return qimg_error_set(err, -EINVAL, "LUKS header cipher name is not "
                              "NUL terminated");
    if (!memchr(h->cipher_mode, 0, QIMG_LUKS_NAME_LEN))
        return qimg_error_set(err, -EINVAL, "LUKS header cipher mode is not "
                              "NUL terminated");
    if (!memchr(h->hash_spec, 0, QIMG_LUKS_NAME_LEN))
        return qimg_error_set(err, -EINVAL, "LUKS header hash spec is not NUL "
                              "terminated");
    if (h->payload_offset_sector < header_sectors)
        return qimg_error_set(err, -EINVAL, "LUKS payload is overlapping with "
                              "the header");
    if (!h->mk_iterations)
        return qimg_error_set(err, -EINVAL, "LUKS key iteration count is zero");

    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
        const struct qimg_luks_slot *s1 = &h->slots[i];
        uint32_t start1 = s1->key_offset_sector;
        uint32_t len1 = (uint32_t)qimg_luks_split_sectors(h->master_key_len,
                                                          s1->stripes);

        if (s1->stripes != QIMG_LUKS_STRIPES)
            return qimg_error_set(err, -EINVAL, "Keyslot %d is corrupted "
                                  "(stripes %d != %d)", i, (int)s1->stripes,
                                  QIMG_LUKS_STRIPES);
        if (s1->active != QIMG_LUKS_SLOT_INACTIVE &&
            s1->active != QIMG_LUKS_SLOT_ACTIVE)
            return qimg_error_set(err, -EINVAL, "Keyslot %d state "
                                  "(active/disable) is corrupted", i);
        if (s1->active == QIMG_LUKS_SLOT_ACTIVE && !s1->iterations)
            return qimg_error_set(err, -EINVAL, "Keyslot %d iteration count is "
                                  "zero", i);
        if (start1 < header_sectors)
            return qimg_error_set(err, -EINVAL, "Keyslot %d is overlapping "
                                  "with the LUKS header", i);
        if ((uint32_t)(start1 + len1) > h->payload_offset_sector)
            return qimg_error_set(err, -EINVAL, "Keyslot %d is overlapping "
                                  "with the encrypted payload", i);
        for (int j = i + 1; j < QIMG_LUKS_NUM_SLOTS; j++) {
            const struct qimg_luks_slot *s2 = &h->slots[j];
            uint32_t start2 = s2->key_offset_sector;
            uint32_t len2 = (uint32_t)qimg_luks_split_sectors(
                h->master_key_len, s2->stripes);
            if ((uint32_t)(start1 + len1) > start2 &&
                (uint32_t)(start2 + len2) > start1)
                return qimg_error_set(err, -EINVAL, "Keyslots %d and %d are "
                                      "overlapping in the header", i, j);
        }
    }
    return 0;
}

/* Algorithm of cipher family `name` with key_bytes of key, or -1. */
static int cipher_for_name(const char *name, enum qimg_cipher_mode mode,
                           uint32_t key_bytes, uint32_t *shown)
{
    static const struct {
        const char *name;
        enum qimg_cipher_alg algs[3];
        int n;
    } families[] = {
        {"aes", {QIMG_CIPHER_AES_128, QIMG_CIPHER_AES_192,
                 QIMG_CIPHER_AES_256}, 3},
        {"cast5", {QIMG_CIPHER_CAST5_128}, 1},
        {"serpent", {QIMG_CIPHER_SERPENT_128, QIMG_CIPHER_SERPENT_192,
                     QIMG_CIPHER_SERPENT_256}, 3},
        {"twofish", {QIMG_CIPHER_TWOFISH_128, QIMG_CIPHER_TWOFISH_192,
                     QIMG_CIPHER_TWOFISH_256}, 3},
    };

    if (mode == QIMG_MODE_XTS)
        key_bytes /= 2;
    *shown = key_bytes;
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(families); i++) {
        if (strcmp(families[i].name, name))
            continue;
        for (int j = 0; j < families[i].n; j++)
            if (qimg_cipher_key_len(families[i].algs[j]) == key_bytes)
                return (int)families[i].algs[j];
    }
    return -1;
}

int qimg_luks_essiv_cipher(enum qimg_cipher_alg cipher, enum qimg_hash_alg hash,
                           enum qimg_cipher_alg *out, struct qimg_error *err)
{
    static const struct {
        const char *label;
        enum qimg_cipher_alg first;     /* 128, 192, 256 follow */
    } families[] = {
        {"AES", QIMG_CIPHER_AES_128},
        {"Serpent", QIMG_CIPHER_SERPENT_128},
        {"Twofish", QIMG_CIPHER_TWOFISH_128},
    };
    size_t dlen = qimg_hash_digest_len(hash);

    if (dlen == qimg_cipher_key_len(cipher)) {
        *out = cipher;
        return 0;
    }
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(families); i++) {
        enum qimg_cipher_alg f = families[i].first;
        if (cipher < f || cipher > f + 2)
            continue;
        for (int k = 0; k < 3; k++) {
            if (qimg_cipher_key_len(f + k) == dlen) {
                *out = f + k;
                return 0;
            }
        }
        return qimg_error_set(err, -EINVAL, "No %s cipher with key size %zu "
                              "available", families[i].label, dlen);
    }
    return qimg_error_set(err, -EINVAL, "Cipher %s not supported with essiv",
                          qimg_cipher_alg_name(cipher));
}

int qimg_luks_header_parse(const struct qimg_luks_header *h,
                           struct qimg_luks_algs *a, struct qimg_error *err)
{
    char mode[QIMG_LUKS_NAME_LEN];
    char *ivgen, *ivhash;
    uint32_t shown;
    int v;

    /* "<mode>-<ivgen>[:<hash>]", e.g. cbc-essiv:sha256, xts-plain64 */
    memcpy(mode, h->cipher_mode, sizeof(mode));
    ivgen = strchr(mode, '-');
    if (!ivgen)
        return qimg_error_set(err, -EINVAL, "Unexpected cipher mode string "
                              "format '%s'", h->cipher_mode);
    *ivgen++ = '\0';
    ivhash = strchr(ivgen, ':');
    a->ivgen_hash_alg = QIMG_HASH_MD5;   /* QEMU's 0 when absent */
    if (ivhash) {
        *ivhash++ = '\0';
        v = qimg_hash_alg_lookup(ivhash);
        if (v < 0)
            return qimg_error_set(err, -EINVAL, "Hash algorithm '%s' not "
                                  "supported", ivhash);
        a->ivgen_hash_alg = v;
    }
    v = qimg_cipher_mode_lookup(mode);
    if (v < 0)
        return qimg_error_set(err, -EINVAL, "Cipher mode '%s' not supported",
                              mode);
    a->cipher_mode = v;
    v = cipher_for_name(h->cipher_name, a->cipher_mode, h->master_key_len,
                        &shown);
    if (v < 0)
        return qimg_error_set(err, -EINVAL, "Algorithm '%s' with key size %d "
                              "bytes not supported", h->cipher_name,
                              (int)shown);
    a->cipher_alg = v;
    v = qimg_hash_alg_lookup(h->hash_spec);
    if (v < 0)
        return qimg_error_set(err, -EINVAL, "Hash algorithm '%s' not "
                              "supported", h->hash_spec);
    a->hash_alg = v;
    v = qimg_ivgen_alg_lookup(ivgen);
    if (v < 0)
        return qimg_error_set(err, -EINVAL, "IV generator '%s' not supported",
                              ivgen);
    a->ivgen_alg = v;
    if (a->ivgen_alg == QIMG_IVGEN_ESSIV) {
        if (!ivhash)
            return qimg_error_set(err, -EINVAL, "Missing IV generator hash "
                                  "specification");
        return qimg_luks_essiv_cipher(a->cipher_alg, a->ivgen_hash_alg,
                                      &a->ivgen_cipher_alg, err);
    }
    /* A hash after plain/plain64 is ignored, as dm-crypt does. */
    a->ivgen_cipher_alg = a->cipher_alg;
    return 0;
}

uint64_t qimg_luks_unlock_work(const struct qimg_luks_header *h,
                               enum qimg_hash_alg hash)
{
    uint64_t blocks = qimg_div_round_up(h->master_key_len ? h->master_key_len
                                                          : 1,
                                        qimg_hash_digest_len(hash));
    uint64_t mk_blocks = qimg_div_round_up(QIMG_LUKS_DIGEST_LEN,
                                           qimg_hash_digest_len(hash));
    uint64_t work = 0;

    /* At most 8 * (2^32 * 4 + 2^32 * 2): no overflow. */
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++)
        if (h->slots[i].active == QIMG_LUKS_SLOT_ACTIVE)
            work += (uint64_t)h->slots[i].iterations * blocks +
                    (uint64_t)h->mk_iterations * mk_blocks;
    return work;
}

char *qimg_luks_info_json(const struct qimg_luks_header *h,
                          const struct qimg_luks_algs *a)
{
    json_t *o = json_object(), *slots = json_array();
    char uuid[QIMG_LUKS_UUID_LEN + 1];
    char *text;

    memcpy(uuid, h->uuid, QIMG_LUKS_UUID_LEN);
    uuid[QIMG_LUKS_UUID_LEN] = '\0';
    json_object_set_new(o, "cipher-alg",
                        json_string(qimg_cipher_alg_name(a->cipher_alg)));
    json_object_set_new(o, "cipher-mode",
                        json_string(qimg_cipher_mode_name(a->cipher_mode)));
    json_object_set_new(o, "ivgen-alg",
                        json_string(qimg_ivgen_alg_name(a->ivgen_alg)));
    if (a->ivgen_alg == QIMG_IVGEN_ESSIV)
        json_object_set_new(o, "ivgen-hash-alg",
                            json_string(qimg_hash_alg_name(a->ivgen_hash_alg)));
    json_object_set_new(o, "hash-alg",
                        json_string(qimg_hash_alg_name(a->hash_alg)));
    json_object_set_new(o, "payload-offset",
                        json_integer((json_int_t)h->payload_offset_sector *
                                     QIMG_CRYPTO_SECTOR_SIZE));
    json_object_set_new(o, "master-key-iters",
                        json_integer(h->mk_iterations));
    /* The UUID text is shown as stored; invalid UTF-8 would make jansson
     * refuse it, so such bytes show as '?' instead. */
    for (size_t i = 0; uuid[i]; i++)
        if ((unsigned char)uuid[i] >= 0x80)
            uuid[i] = '?';
    json_object_set_new(o, "uuid", json_string(uuid));
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
        const struct qimg_luks_slot *s = &h->slots[i];
        json_t *js = json_object();
        bool active = s->active == QIMG_LUKS_SLOT_ACTIVE;
        json_object_set_new(js, "active", json_boolean(active));
        if (active) {
            json_object_set_new(js, "iters", json_integer(s->iterations));
            json_object_set_new(js, "stripes", json_integer(s->stripes));
        }
        json_object_set_new(js, "key-offset",
                            json_integer((json_int_t)s->key_offset_sector *
                                         QIMG_CRYPTO_SECTOR_SIZE));
        json_array_append_new(slots, js);
    }
    json_object_set_new(o, "slots", slots);
    text = json_dumps(o, JSON_PRESERVE_ORDER);
    json_decref(o);
    return text;
}
