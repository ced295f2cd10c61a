/*
 * luks-keyslot.c - LUKS1 crypto blocks: unlocking a key slot with a password,
 * creating a header (the master key split over 4000 stripes in slot 0),
 * adding and erasing key slots (amend), with QEMU 7.2's layout, order
 * of checks and messages.
 *
 * Key material: passwords, the master key, slot keys and split keys
 * live in secmem memory and are wiped when freed.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/secmem.h"
#include "core/util.h"
#include "crypto/crypto-priv.h"

static int io_write_header(struct qimg_crypto *c,
                           const struct qimg_crypto_io *io,
                           struct qimg_error *err)
{
    uint8_t buf[QIMG_LUKS_HEADER_SIZE];
    qimg_luks_header_encode(&c->hdr, buf);
    return io->write(io->opaque, 0, sizeof(buf), buf, err);
}

static int slot_cipher(const struct qimg_crypto *c, const uint8_t *key,
                       struct qimg_sector_cipher **out, struct qimg_error *err)
{
    const struct qimg_luks_algs *a = &c->algs;
    return qimg_sector_cipher_new(out, a->cipher_alg, a->cipher_mode,
                                  a->ivgen_alg, a->ivgen_cipher_alg,
                                  a->ivgen_hash_alg, key,
                                  c->hdr.master_key_len, err);
}

/*
 * Try password on slot i: 1 when it unlocks the master key (left in
 * mk), 0 when the slot is inactive or the password is not its own, or
 * a negative errno.
 */
static int load_key(struct qimg_crypto *c, int i, const char *pw, size_t pwlen,
                    uint8_t *mk, const struct qimg_crypto_io *io,
                    struct qimg_error *err)
{
    const struct qimg_luks_slot *s = &c->hdr.slots[i];
    size_t keylen = c->hdr.master_key_len;
    size_t splitlen = keylen * s->stripes;   /* checked: <= 64 * 4000 */
    struct qimg_sector_cipher *cipher = NULL;
    uint8_t *slotkey = NULL, *split = NULL;
    uint8_t digest[QIMG_LUKS_DIGEST_LEN];
    int ret;

    if (s->active != QIMG_LUKS_SLOT_ACTIVE)
        return 0;
    slotkey = qimg_secmem_alloc(keylen);
    split = qimg_secmem_alloc(splitlen);
    if (!slotkey || !split) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = qimg_pbkdf2(c->algs.hash_alg, (const uint8_t *)pw, pwlen, s->salt,
                      QIMG_LUKS_SALT_LEN, s->iterations, slotkey, keylen, err);
    if (ret < 0)
        goto out;
    ret = io->read(io->opaque,
                   (uint64_t)s->key_offset_sector * QIMG_CRYPTO_SECTOR_SIZE,
                   splitlen, split, err);
    if (ret < 0)
        goto out;
    ret = slot_cipher(c, slotkey, &cipher, err);
    if (ret < 0)
        goto out;
    /* The key material is encrypted as payload is, from sector 0. */
    ret = qimg_sector_cipher_decrypt(cipher, 0, split, splitlen, err);
    if (ret < 0)
        goto out;
    ret = qimg_afsplit_decode(c->algs.hash_alg, keylen, s->stripes, split, mk,
                              err);
    if (ret < 0)
        goto out;
    ret = qimg_pbkdf2(c->algs.hash_alg, mk, keylen, c->hdr.mk_salt,
                      QIMG_LUKS_SALT_LEN, c->hdr.mk_iterations, digest,
                      sizeof(digest), err);
    if (ret < 0)
        goto out;
    ret = !memcmp(digest, c->hdr.mk_digest, sizeof(digest));
out:
    qimg_sector_cipher_free(cipher);
    qimg_secmem_free(slotkey);
    qimg_secmem_free(split);
    qimg_wipe(digest, sizeof(digest));
    return ret;
}

/* Refuse headers whose key derivation would take unbounded time. */
static int check_unlock_work(const struct qimg_luks_header *h,
                             enum qimg_hash_alg hash, struct qimg_error *err)
{
    uint64_t work = qimg_luks_unlock_work(h, hash);
    if (work > QIMG_LUKS_MAX_UNLOCK_WORK)
        return qimg_error_set(err, -EINVAL, "LUKS key slots need %llu PBKDF2 "
                              "iterations to try, more than the limit of %llu",
                              (unsigned long long)work,
                              (unsigned long long)QIMG_LUKS_MAX_UNLOCK_WORK);
    return 0;
}

/* The master key from the first slot password unlocks. */
static int find_key(struct qimg_crypto *c, const char *pw, size_t pwlen,
                    uint8_t *mk, const struct qimg_crypto_io *io,
                    struct qimg_error *err)
{
    int ret = check_unlock_work(&c->hdr, c->algs.hash_alg, err);

    for (int i = 0; !ret && i < QIMG_LUKS_NUM_SLOTS; i++) {
        ret = load_key(c, i, pw, pwlen, mk, io, err);
        if (ret == 1)
            return 0;
    }
    if (ret < 0)
        return ret;
    return qimg_error_set(err, -EPERM, "Invalid password, cannot unlock any "
                          "keyslot");
}

/*
 * QEMU's scaling of a calibrated count: iterations for iter_time ms
 * (an eighth for the master key digest), at least min.
 */
static int scale_iters(uint64_t per_sec, uint64_t iter_time, bool master,
                       uint32_t min, uint32_t *out, struct qimg_error *err)
{
    uint64_t iters = per_sec;

    if (iter_time && iters > ULLONG_MAX / iter_time)
        return qimg_error_set(err, -ERANGE, "PBKDF iterations %llu too large "
                              "to scale: %s", (unsigned long long)iters,
                              strerror(ERANGE));
    iters = iters * iter_time / 1000;
    if (master)
        iters /= 8;
    if (iters > UINT32_MAX)
        return qimg_error_set(err, -ERANGE, "PBKDF iterations %llu larger "
                              "than %u: %s", (unsigned long long)iters,
                              UINT32_MAX, strerror(ERANGE));
    *out = (uint32_t)QIMG_MAX(iters, (uint64_t)min);
    return 0;
}

/*
 * Put the master key into slot i under password: new salt and iteration
 * count, the key split over the stripes, encrypted with the key derived
 * from the password, written, then the header.  dry_run stops after the
 * checks.
 */
static int store_key(struct qimg_crypto *c, int i, const char *pw,
                     size_t pwlen, const uint8_t *mk, uint64_t iter_time,
                     bool dry_run, const struct qimg_crypto_io *io,
                     struct qimg_error *err)
{
    struct qimg_luks_slot *s = &c->hdr.slots[i];
    size_t keylen = c->hdr.master_key_len;
    size_t splitlen = keylen * s->stripes;
    struct qimg_sector_cipher *cipher = NULL;
    uint8_t *slotkey = NULL, *split = NULL;
    struct qimg_luks_header trial;
    uint64_t per_sec;
    uint32_t iters;
    int ret;

    ret = qimg_random_bytes(s->salt, QIMG_LUKS_SALT_LEN, err);
    if (!ret)
        ret = qimg_pbkdf2_count_iters(c->algs.hash_alg, keylen, &per_sec, err);
    if (!ret)
        ret = scale_iters(per_sec, iter_time, false, QIMG_LUKS_MIN_SLOT_ITERS,
                          &iters, err);
    if (ret < 0)
        return ret;
    /* An image we could not open again is not made. */
    trial = c->hdr;
    trial.slots[i].active = QIMG_LUKS_SLOT_ACTIVE;
    trial.slots[i].iterations = iters;
    if (qimg_luks_unlock_work(&trial, c->algs.hash_alg) >
        QIMG_LUKS_MAX_UNLOCK_WORK)
        return qimg_error_set(err, -ERANGE, "PBKDF iterations %u for "
                              "iter-time %llu would make the image take more "
                              "than %llu PBKDF2 iterations to unlock (qimg's "
                              "limit): use a lower iter-time", iters,
                              (unsigned long long)iter_time,
                              (unsigned long long)QIMG_LUKS_MAX_UNLOCK_WORK);
    s->iterations = iters;
    if (dry_run)
        return 0;

    slotkey = qimg_secmem_alloc(keylen);
    split = qimg_secmem_alloc(splitlen);
    if (!slotkey || !split) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = qimg_pbkdf2(c->algs.hash_alg, (const uint8_t *)pw, pwlen, s->salt,
                      QIMG_LUKS_SALT_LEN, s->iterations, slotkey, keylen, err);
    if (!ret)
        ret = slot_cipher(c, slotkey, &cipher, err);
    if (!ret)
        ret = qimg_afsplit_encode(c->algs.hash_alg, keylen, s->stripes, mk,
                                  split, err);
    if (!ret)
        ret = qimg_sector_cipher_encrypt(cipher, 0, split, splitlen, err);
    if (!ret)
        ret = io->write(io->opaque,
                        (uint64_t)s->key_offset_sector * QIMG_CRYPTO_SECTOR_SIZE,
                        splitlen, split, err);
    if (ret < 0)
        goto out;
    s->active = QIMG_LUKS_SLOT_ACTIVE;
    ret = io_write_header(c, io, err);
out:
    qimg_sector_cipher_free(cipher);
    qimg_secmem_free(slotkey);
    qimg_secmem_free(split);
    return ret;
}

/* Deactivate slot i and overwrite its key material with random data,
 * even when the header update failed (QEMU's order). */
static int erase_key(struct qimg_crypto *c, int i,
                     const struct qimg_crypto_io *io, struct qimg_error *err)
{
    struct qimg_luks_slot *s = &c->hdr.slots[i];
    size_t splitlen = (size_t)c->hdr.master_key_len * s->stripes;
    struct qimg_error herr = {0};
    uint8_t *garbage;
    int hret, ret = 0;

    memset(s->salt, 0, sizeof(s->salt));
    s->iterations = 0;
    s->active = QIMG_LUKS_SLOT_INACTIVE;
    hret = io_write_header(c, io, &herr);
    garbage = malloc(splitlen);
    if (!garbage)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (int pass = 0; !ret && pass < QIMG_LUKS_ERASE_PASSES; pass++) {
        ret = qimg_random_bytes(garbage, splitlen, err);
        if (ret < 0 && pass > 0)
            break;
        if (ret < 0)   /* zeroes at least once */
            memset(garbage, 0, splitlen);
        ret = io->write(io->opaque,
                        (uint64_t)s->key_offset_sector * QIMG_CRYPTO_SECTOR_SIZE,
                        splitlen, garbage, err);
    }
    free(garbage);
    if (!ret && hret < 0) {
        *err = herr;
        ret = hret;
    }
    return ret;
}

/* ---- open --------------------------------------------------------------------- */

int qimg_luks_open(struct qimg_crypto *c, const char *key_secret,
                   const char *prefix, unsigned flags,
                   const struct qimg_crypto_io *io, struct qimg_error *err)
{
    uint8_t buf[QIMG_LUKS_HEADER_SIZE];
    char *pw = NULL;
    uint8_t *mk = NULL;
    size_t pwlen = 0;
    int ret;

    if (!(flags & QIMG_CRYPTO_OPEN_NO_IO)) {
        if (!key_secret)
            return qimg_error_set(err, -EINVAL, "Parameter '%skey-secret' is "
                                  "required for cipher", prefix);
        ret = qimg_crypto_password(key_secret, &pw, &pwlen, err);
        if (ret < 0)
            return ret;
    }
    if (key_secret && !(c->secret_id = strdup(key_secret))) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = io->read(io->opaque, 0, sizeof(buf), buf, err);
    if (ret < 0)
        goto out;
    qimg_luks_header_decode(&c->hdr, buf);
    ret = qimg_luks_header_check(&c->hdr, err);
    if (!ret)
        ret = qimg_luks_header_parse(&c->hdr, &c->algs, err);
    if (ret < 0)
        goto out;
    c->payload_offset = (uint64_t)c->hdr.payload_offset_sector *
                        QIMG_CRYPTO_SECTOR_SIZE;
    if (flags & QIMG_CRYPTO_OPEN_NO_IO)
        goto out;
    /* check and parse bound the key length (at most 64 bytes) */
    mk = qimg_secmem_alloc(c->hdr.master_key_len);
    if (!mk) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = find_key(c, pw, pwlen, mk, io, err);
    if (!ret)
        ret = slot_cipher(c, mk, &c->cipher, err);
out:
    qimg_secmem_free(pw);
    qimg_secmem_free(mk);
    return ret;
}

/* ---- create ------------------------------------------------------------------- */

/* The cipher family name LUKS stores ("Algorithm 'des' not supported"). */
static int luks_cipher_name(enum qimg_cipher_alg alg, const char **out,
                            struct qimg_error *err)
{
    switch (alg) {
    case QIMG_CIPHER_AES_128: case QIMG_CIPHER_AES_192:
    case QIMG_CIPHER_AES_256:
        *out = "aes";
        return 0;
    case QIMG_CIPHER_CAST5_128:
        *out = "cast5";
        return 0;
    case QIMG_CIPHER_SERPENT_128: case QIMG_CIPHER_SERPENT_192:
    case QIMG_CIPHER_SERPENT_256:
        *out = "serpent";
        return 0;
    case QIMG_CIPHER_TWOFISH_128: case QIMG_CIPHER_TWOFISH_192:
    case QIMG_CIPHER_TWOFISH_256:
        *out = "twofish";
        return 0;
    default:
        return qimg_error_set(err, -EINVAL, "Algorithm '%s' not supported",
                              qimg_cipher_alg_name(alg));
    }
}

/* A random (version 4) UUID as text, as QEMU's qemu_uuid_generate. */
static int make_uuid(char *out, size_t len, struct qimg_error *err)
{
    uint8_t u[16];
    int ret = qimg_random_bytes(u, sizeof(u), err);

    if (ret < 0)
        return ret;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    snprintf(out, len, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
             u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    return 0;
}

/* Header strings and algorithms from the creation options. */
static int setup_header(struct qimg_crypto *c,
                        const struct qimg_crypto_create_opts *o,
                        struct qimg_error *err)
{
    struct qimg_luks_header *h = &c->hdr;
    struct qimg_luks_algs *a = &c->algs;
    const char *name = NULL;
    char spec[64];
    int ret;

    memcpy(h->magic, "LUKS\xba\xbe", QIMG_LUKS_MAGIC_LEN);
    h->version = QIMG_LUKS_VERSION;
    ret = make_uuid(h->uuid, sizeof(h->uuid), err);
    if (!ret)
        ret = luks_cipher_name(o->cipher_alg, &name, err);
    if (ret < 0)
        return ret;
    if (o->has_ivgen_hash)
        snprintf(spec, sizeof(spec), "%s-%s:%s",
                 qimg_cipher_mode_name(o->cipher_mode),
                 qimg_ivgen_alg_name(o->ivgen_alg),
                 qimg_hash_alg_name(o->ivgen_hash_alg));
    else
        snprintf(spec, sizeof(spec), "%s-%s",
                 qimg_cipher_mode_name(o->cipher_mode),
                 qimg_ivgen_alg_name(o->ivgen_alg));
    if (strlen(spec) >= QIMG_LUKS_NAME_LEN)
        return qimg_error_set(err, -EINVAL, "Cipher mode '%s' is too long for "
                              "LUKS header", spec);
    a->cipher_alg = o->cipher_alg;
    a->cipher_mode = o->cipher_mode;
    a->ivgen_alg = o->ivgen_alg;
    a->ivgen_hash_alg = o->ivgen_hash_alg;
    a->hash_alg = o->hash_alg;
    a->ivgen_cipher_alg = o->cipher_alg;
    if (o->ivgen_alg == QIMG_IVGEN_ESSIV) {
        ret = qimg_luks_essiv_cipher(o->cipher_alg, o->ivgen_hash_alg,
                                     &a->ivgen_cipher_alg, err);
        if (ret < 0)
            return ret;
    }
    strcpy(h->cipher_name, name);
    strcpy(h->cipher_mode, spec);
    strcpy(h->hash_spec, qimg_hash_alg_name(o->hash_alg));
    h->master_key_len = (uint32_t)qimg_cipher_key_len(o->cipher_alg);
    if (o->cipher_mode == QIMG_MODE_XTS)
        h->master_key_len *= 2;
    return 0;
}

int qimg_luks_create(struct qimg_crypto *c,
                     const struct qimg_crypto_create_opts *o,
                     const char *prefix, bool dry_run,
                     const struct qimg_crypto_io *io, struct qimg_error *err)
{
    struct qimg_luks_header *h = &c->hdr;
    const uint32_t header_sectors =
        QIMG_LUKS_KEY_SLOT_OFFSET / QIMG_CRYPTO_SECTOR_SIZE;
    uint8_t *mk = NULL;
    char *pw = NULL;
    size_t pwlen = 0;
    uint64_t per_sec, split;
    int ret;

    if (!o->key_secret)
        return qimg_error_set(err, -EINVAL, "Parameter '%skey-secret' is "
                              "required for cipher", prefix);
    if (!(c->secret_id = strdup(o->key_secret)))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = qimg_crypto_password(o->key_secret, &pw, &pwlen, err);
    if (!ret)
        ret = setup_header(c, o, err);
    if (ret < 0)
        goto out;
    mk = qimg_secmem_alloc(h->master_key_len);
    if (!mk) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = qimg_random_bytes(h->mk_salt, QIMG_LUKS_SALT_LEN, err);
    if (!ret)
        ret = qimg_random_bytes(mk, h->master_key_len, err);
    /* The payload cipher first: unsupported combinations stop here. */
    if (!ret)
        ret = slot_cipher(c, mk, &c->cipher, err);
    if (!ret)
        ret = qimg_pbkdf2_count_iters(c->algs.hash_alg, QIMG_LUKS_DIGEST_LEN,
                                      &per_sec, err);
    if (!ret)
        ret = scale_iters(per_sec, o->iter_time, true,
                          QIMG_LUKS_MIN_MASTER_ITERS, &h->mk_iterations, err);
    if (!ret && !dry_run)
        ret = qimg_pbkdf2(c->algs.hash_alg, mk, h->master_key_len, h->mk_salt,
                          QIMG_LUKS_SALT_LEN, h->mk_iterations, h->mk_digest,
                          QIMG_LUKS_DIGEST_LEN, err);
    if (ret < 0)
        goto out;

    /* cryptsetup's layout: 4 KiB of header, then each slot's material
     * rounded up to 4 KiB, then the payload. */
    split = qimg_luks_split_sectors(h->master_key_len, QIMG_LUKS_STRIPES);
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
        h->slots[i].active = QIMG_LUKS_SLOT_INACTIVE;
        h->slots[i].key_offset_sector = header_sectors + (uint32_t)(i * split);
        h->slots[i].stripes = QIMG_LUKS_STRIPES;
    }
    h->payload_offset_sector = header_sectors +
                               (uint32_t)(QIMG_LUKS_NUM_SLOTS * split);
    c->payload_offset = (uint64_t)h->payload_offset_sector *
                        QIMG_CRYPTO_SECTOR_SIZE;
    if (!dry_run)
        ret = io->init(io->opaque, c->payload_offset, err);
    if (!ret)
        ret = store_key(c, 0, pw, pwlen, mk, o->iter_time, dry_run, io, err);
out:
    qimg_secmem_free(pw);
    qimg_secmem_free(mk);
    return ret;
}

/* ---- amend -------------------------------------------------------------------- */

struct amend_opts {
    bool active;                /* state */
    bool has_keyslot;
    int keyslot;
    const char *old_secret, *new_secret;
    bool has_iter_time;
    uint64_t iter_time;
};

/* A QAPI int member (QEMU's range and message). */
static int parse_number(const struct qimg_opts *opts, const char *key,
                        bool *has, uint64_t *out, struct qimg_error *err)
{
    int64_t v = 0;
    int ret = qimg_opts_get_int64(opts, key, 0, &v, err);

    *has = qimg_opts_get(opts, key) != NULL;
    *out = (uint64_t)v;
    return ret;
}

/* QEMU's QCryptoBlockAmendOptionsLUKS, members in QAPI order. */
static int parse_amend(const struct qimg_opts *opts, const char *prefix,
                       struct amend_opts *a, struct qimg_error *err)
{
    char key[64];
    const char *state;
    uint64_t v = 0;
    int ret;

    memset(a, 0, sizeof(*a));
    snprintf(key, sizeof(key), "%sstate", prefix);
    state = qimg_opts_get(opts, key);
    /* QEMU names the member without the prefix here */
    if (!state)
        return qimg_error_set(err, -EINVAL, "Parameter 'state' is missing");
    if (strcmp(state, "active") && strcmp(state, "inactive"))
        return qimg_error_set(err, -EINVAL, "Parameter 'state' does not "
                              "accept value '%s'", state);
    a->active = !strcmp(state, "active");
    snprintf(key, sizeof(key), "%snew-secret", prefix);
    a->new_secret = qimg_opts_get(opts, key);
    snprintf(key, sizeof(key), "%sold-secret", prefix);
    a->old_secret = qimg_opts_get(opts, key);
    snprintf(key, sizeof(key), "%skeyslot", prefix);
    ret = parse_number(opts, key, &a->has_keyslot, &v, err);
    /* QEMU keeps the number in an int: -1 stays -1, 2^32 becomes 0. */
    a->keyslot = (int)(int64_t)v;
    snprintf(key, sizeof(key), "%siter-time", prefix);
    if (!ret)
        ret = parse_number(opts, key, &a->has_iter_time, &a->iter_time, err);
    if (!a->has_iter_time)
        a->iter_time = QIMG_LUKS_DEFAULT_ITER_TIME_MS;
    return ret;
}

static int count_active(const struct qimg_luks_header *h)
{
    int n = 0;
    for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++)
        n += h->slots[i].active == QIMG_LUKS_SLOT_ACTIVE;
    return n;
}

static int add_keyslot(struct qimg_crypto *c, const struct amend_opts *a,
                       bool force, const struct qimg_crypto_io *io,
                       struct qimg_error *err)
{
    char *old_pw = NULL, *new_pw = NULL;
    size_t old_len, new_len;
    uint8_t *mk = NULL;
    int slot = -1, ret;

    if (!a->new_secret)
        return qimg_error_set(err, -EINVAL, "'new-secret' is required to "
                              "activate a keyslot");
    if (a->old_secret)
        return qimg_error_set(err, -EINVAL, "'old-secret' must not be given "
                              "when activating keyslots");
    if (a->has_keyslot) {
        slot = a->keyslot;
        if (slot < 0 || slot >= QIMG_LUKS_NUM_SLOTS)
            return qimg_error_set(err, -EINVAL, "Invalid keyslot %u specified, "
                                  "must be between 0 and %u", (unsigned)slot,
                                  QIMG_LUKS_NUM_SLOTS - 1);
    } else {
        for (int i = 0; i < QIMG_LUKS_NUM_SLOTS && slot < 0; i++)
            if (c->hdr.slots[i].active != QIMG_LUKS_SLOT_ACTIVE)
                slot = i;
        if (slot < 0)
            return qimg_error_set(err, -ENOSPC, "Can't add a keyslot - all "
                                  "keyslots are in use");
    }
    if (!force && c->hdr.slots[slot].active == QIMG_LUKS_SLOT_ACTIVE)
        return qimg_error_set(err, -EINVAL, "Refusing to overwrite active "
                              "keyslot %i - please erase it first", slot);
    if (!c->secret_id)
        return qimg_error_set(err, -EINVAL, "Parameter 'key-secret' is "
                              "required for cipher");
    ret = qimg_crypto_password(c->secret_id, &old_pw, &old_len, err);
    if (ret < 0)
        return ret;
    mk = qimg_secmem_alloc(c->hdr.master_key_len);
    if (!mk) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    ret = find_key(c, old_pw, old_len, mk, io, err);
    if (ret < 0) {
        snprintf(err->msg + strlen(err->msg), sizeof(err->msg) -
                 strlen(err->msg), "\nFailed to retrieve the master key");
        goto out;
    }
    ret = qimg_crypto_password(a->new_secret, &new_pw, &new_len, err);
    if (!ret) {
        ret = store_key(c, slot, new_pw, new_len, mk, a->iter_time, false, io,
                        err);
        if (ret < 0)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) -
                     strlen(err->msg), "\nFailed to write to keyslot %i", slot);
    }
out:
    qimg_secmem_free(old_pw);
    qimg_secmem_free(new_pw);
    qimg_secmem_free(mk);
    return ret;
}

static int erase_keyslots(struct qimg_crypto *c, const struct amend_opts *a,
                          bool force, const struct qimg_crypto_io *io,
                          struct qimg_error *err)
{
    char *old_pw = NULL;
    size_t old_len = 0;
    uint8_t *tmp = NULL;
    int ret = 0;

    if (a->new_secret)
        return qimg_error_set(err, -EINVAL, "'new-secret' must not be given "
                              "when erasing keyslots");
    if (a->has_iter_time)
        return qimg_error_set(err, -EINVAL, "'iter-time' must not be given "
                              "when erasing keyslots");
    if (a->old_secret) {
        ret = qimg_crypto_password(a->old_secret, &old_pw, &old_len, err);
        if (ret < 0)
            return ret;
        tmp = qimg_secmem_alloc(c->hdr.master_key_len);
        if (!tmp) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        ret = check_unlock_work(&c->hdr, c->algs.hash_alg, err);
        if (ret < 0)
            goto out;
    }
    if (a->has_keyslot) {
        int slot = a->keyslot;
        if (slot < 0 || slot >= QIMG_LUKS_NUM_SLOTS) {
            ret = qimg_error_set(err, -EINVAL, "Invalid keyslot %i specified, "
                                 "must be between 0 and %i", slot,
                                 QIMG_LUKS_NUM_SLOTS - 1);
            goto out;
        }
        if (a->old_secret) {
            ret = load_key(c, slot, old_pw, old_len, tmp, io, err);
            if (ret < 0)
                goto out;
            if (!ret) {
                ret = qimg_error_set(err, -EINVAL, "Given keyslot %i doesn't "
                                     "contain the given old password for "
                                     "erase operation", slot);
                goto out;
            }
        }
        if (!force && c->hdr.slots[slot].active != QIMG_LUKS_SLOT_ACTIVE) {
            ret = qimg_error_set(err, -EINVAL, "Given keyslot %i is already "
                                 "erased (inactive) ", slot);
            goto out;
        }
        if (!force && count_active(&c->hdr) == 1) {
            ret = qimg_error_set(err, -EINVAL, "Attempt to erase the only "
                                 "active keyslot %i which will erase all the "
                                 "data in the image irreversibly - refusing "
                                 "operation", slot);
            goto out;
        }
        ret = erase_key(c, slot, io, err);
        if (ret < 0)
            snprintf(err->msg + strlen(err->msg), sizeof(err->msg) -
                     strlen(err->msg), "\nFailed to erase keyslot %i", slot);
    } else if (a->old_secret) {
        unsigned match = 0;
        int n = 0;
        for (int i = 0; i < QIMG_LUKS_NUM_SLOTS; i++) {
            ret = load_key(c, i, old_pw, old_len, tmp, io, err);
            if (ret < 0)
                goto out;
            if (ret == 1) {
                match |= 1u << i;
                n++;
            }
        }
        ret = 0;
        if (!n) {
            ret = qimg_error_set(err, -EINVAL, "No keyslots match given (old) "
                                 "password for erase operation");
            goto out;
        }
        if (!force && n == count_active(&c->hdr)) {
            ret = qimg_error_set(err, -EINVAL, "All the active keyslots match "
                                 "the (old) password that was given and "
                                 "erasing them will erase all the data in the "
                                 "image irreversibly - refusing operation");
            goto out;
        }
        for (int i = 0; !ret && i < QIMG_LUKS_NUM_SLOTS; i++) {
            if (!(match & (1u << i)))
                continue;
            ret = erase_key(c, i, io, err);
            if (ret < 0)
                snprintf(err->msg + strlen(err->msg), sizeof(err->msg) -
                         strlen(err->msg), "\nFailed to erase keyslot %d", i);
        }
    } else {
        ret = qimg_error_set(err, -EINVAL, "To erase keyslot(s), either "
                             "explicit keyslot index or the password "
                             "currently contained in them must be given");
    }
out:
    qimg_secmem_free(old_pw);
    qimg_secmem_free(tmp);
    return ret;
}

int qimg_luks_amend(struct qimg_crypto *c, const struct qimg_opts *opts,
                    const char *prefix, bool force,
                    const struct qimg_crypto_io *io, struct qimg_error *err)
{
    struct amend_opts a;
    int ret = parse_amend(opts, prefix, &a, err);

    if (ret < 0)
        return ret;
    return a.active ? add_keyslot(c, &a, force, io, err)
                    : erase_keyslots(c, &a, force, io, err);
}
