/*
 * luks.c - the luks format: a LUKS1 header (lib/crypto) and the payload
 * after it, every 512-byte sector encrypted on its own.  QEMU's block/
 * crypto.c is the reference for behaviour: the image is the file minus
 * the header, every byte is allocated data, a new image does not read as
 * zero, and the file's write and resize permissions are shared.
 *
 * The data path runs concurrently (block.h): sector-aligned requests
 * take no lock (the cipher keeps a context per caller); a request with
 * a partial sector at either end reads, decrypts, patches and
 * re-encrypts those sectors under node->lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"
#include "crypto/crypto.h"

#define SECTOR QIMG_CRYPTO_SECTOR_SIZE
/* Bytes en/decrypted per step of a request: bounds the bounce buffer,
 * as QEMU's BLOCK_CRYPTO_MAX_IO_SIZE does. */
#define LUKS_MAX_IO (1u << 20)

struct luks_state {
    struct qimg_crypto *crypto;
    uint64_t payload;           /* byte offset of the payload in the file */
};

static int luks_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return qimg_luks_has_format(buf, len) ? 100 : 0;
}

/* ---- header I/O for lib/crypto ------------------------------------------------- */

struct header_io {
    struct qimg_storage *st;
    enum qimg_prealloc prealloc;    /* create: for the file's growth */
    uint64_t size;                  /* create: guest size */
};

static int hdr_read(void *opaque, uint64_t off, size_t len, void *buf,
                    struct qimg_error *err)
{
    struct header_io *h = opaque;
    int ret = h->st->ops->pread(h->st, off, len, buf, err);
    if (ret < 0)
        qimg_error_prefix(err, "Could not read encryption header: ");
    return ret;
}

static int hdr_write(void *opaque, uint64_t off, size_t len, const void *buf,
                     struct qimg_error *err)
{
    struct header_io *h = opaque;
    int ret = h->st->ops->pwrite(h->st, off, len, buf, err);
    if (ret < 0)
        qimg_error_prefix(err, "Could not write encryption header: ");
    return ret;
}

/* The file holds the header, then the guest size (QEMU's init func). */
static int hdr_init(void *opaque, uint64_t len, struct qimg_error *err)
{
    struct header_io *h = opaque;
    uint64_t end;

    if (h->size > INT64_MAX || qimg_add_overflow(h->size, len, &end) ||
        end > INT64_MAX)
        return qimg_error_set(err, -EFBIG, "The requested file size is too "
                              "large");
    return h->st->ops->truncate(h->st, end, h->prealloc, err);
}

/* ---- open / close -------------------------------------------------------------- */

static int luks_open(struct qimg_image *node, const struct qimg_opts *opts,
                     struct qimg_error *err)
{
    struct luks_state *s = node->state;
    struct header_io h = {.st = node->file};
    struct qimg_crypto_io io = {hdr_read, hdr_write, NULL, &h};
    int64_t fsize;
    uint64_t size;
    int ret;

    ret = qimg_crypto_open(&s->crypto, QIMG_CRYPTO_FORMAT_LUKS,
                           qimg_opts_get(opts, "key-secret"), "",
                           (node->flags & QIMG_OPEN_NO_IO)
                               ? QIMG_CRYPTO_OPEN_NO_IO : 0,
                           &io, err);
    if (ret < 0)
        return ret;
    s->payload = qimg_crypto_payload_offset(s->crypto);
    fsize = node->file->ops->get_size(node->file);
    if (fsize < 0 || (uint64_t)fsize < s->payload) {
        qimg_crypto_free(s->crypto);
        s->crypto = NULL;
        return qimg_error_set(err, -EIO, "Could not refresh total sector "
                              "count: %s", strerror(EIO));
    }
    /* QEMU counts whole sectors: a partial tail sector reads too. */
    size = (uint64_t)fsize - s->payload;
    qimg_align_up(size, SECTOR, &size);
    node->size = size;
    return 0;
}

static void luks_close(struct qimg_image *node)
{
    struct luks_state *s = node->state;
    qimg_crypto_free(s->crypto);
    s->crypto = NULL;
}

/* ---- data path ----------------------------------------------------------------- */

/* Read and decrypt whole sectors [off, off+len) of the payload. */
static int read_sectors(struct qimg_image *node, uint64_t off, size_t len,
                        uint8_t *buf, struct qimg_error *err)
{
    struct luks_state *s = node->state;
    int ret = node->file->ops->pread(node->file, s->payload + off, len, buf,
                                     err);
    if (ret < 0)
        return ret;
    if (qimg_crypto_decrypt(s->crypto, off, buf, len, err) < 0)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return 0;
}

/* Encrypt buf (clobbered) and write it as sectors [off, off+len). */
static int write_sectors(struct qimg_image *node, uint64_t off, size_t len,
                         uint8_t *buf, struct qimg_error *err)
{
    struct luks_state *s = node->state;
    if (qimg_crypto_encrypt(s->crypto, off, buf, len, err) < 0)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return node->file->ops->pwrite(node->file, s->payload + off, len, buf,
                                   err);
}

/* Aligned writes: the caller's data stays as it is, a copy is encrypted
 * a step at a time. */
static int write_aligned(struct qimg_image *node, uint64_t off, size_t len,
                         const void *buf, struct qimg_error *err)
{
    const uint8_t *p = buf;
    uint8_t *bounce = malloc(QIMG_MIN(len, (size_t)LUKS_MAX_IO));
    int ret = 0;

    if (!bounce)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    while (!ret && len) {
        size_t n = QIMG_MIN(len, (size_t)LUKS_MAX_IO);
        memcpy(bounce, p, n);
        ret = write_sectors(node, off, n, bounce, err);
        off += n;
        p += n;
        len -= n;
    }
    free(bounce);
    return ret;
}

/* Aligned reads decrypt in the caller's buffer. */
static int read_aligned(struct qimg_image *node, uint64_t off, size_t len,
                        void *buf, struct qimg_error *err)
{
    return read_sectors(node, off, len, buf, err);
}

static int luks_pread(struct qimg_image *node, uint64_t off, size_t len,
                      void *buf, struct qimg_error *err)
{
    return qimg_rmw_pread(node, off, len, buf, SECTOR, read_aligned, err);
}

/* Partial sectors are read, patched and rewritten under node->lock. */
static int luks_pwrite(struct qimg_image *node, uint64_t off, size_t len,
                       const void *buf, struct qimg_error *err)
{
    return qimg_rmw_pwrite(node, off, len, buf, SECTOR, &node->lock,
                           read_aligned, write_aligned, err);
}

static int luks_flush(struct qimg_image *node, struct qimg_error *err)
{
    return node->file->ops->flush(node->file, err);
}

static int luks_truncate(struct qimg_image *node, uint64_t size, bool exact,
                         enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct luks_state *s = node->state;
    uint64_t end;
    int ret;

    if (qimg_add_overflow(size, s->payload, &end) || end > INT64_MAX)
        return qimg_error_set(err, -EFBIG, "The requested file size is too "
                              "large");
    if (prealloc == QIMG_PREALLOC_METADATA)   /* the file's refusal */
        return qimg_error_set(err, -ENOTSUP, "Unsupported preallocation "
                              "mode: metadata");
    /* As QEMU's: the file grows, the new area is not encrypted zeroes. */
    ret = node->file->ops->truncate(node->file, end, prealloc, err);
    if (!ret)
        node->size = size;
    return ret;
}

/* ---- info, create, measure, amend ------------------------------------------------ */

static int luks_get_info(struct qimg_image *node, struct qimg_info *info,
                         struct qimg_error *err)
{
    struct luks_state *s = node->state;
    char *data = qimg_crypto_info_json(s->crypto);
    size_t n;

    info->encrypted = true;
    if (!data)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    n = strlen(data) + 32;
    info->format_specific_json = malloc(n);
    if (info->format_specific_json)
        snprintf(info->format_specific_json, n,
                 "{\"type\": \"luks\", \"data\": %s}", data);
    free(data);
    return info->format_specific_json ? 0 : qimg_error_set(err, -ENOMEM,
                                                           "Out of memory");
}

static bool luks_has_zero_init(struct qimg_image *node)
{
    return false;   /* what the file reads as zero decrypts to garbage */
}

static const char *const luks_storage_keys[] = {
    "size", "preallocation", "nocow", "extent_size_hint", NULL,
};

static int luks_create(const char *filename, const struct qimg_opts *opts,
                       struct qimg_error *err)
{
    const struct qimg_storage_ops *ops = qimg_storage_for(filename);
    struct qimg_crypto_create_opts co;
    struct header_io h = {.prealloc = QIMG_PREALLOC_OFF};
    struct qimg_crypto_io io = {hdr_read, hdr_write, hdr_init, &h};
    struct qimg_crypto *c = NULL;
    struct qimg_opts *fopts;
    const char *pa = qimg_opts_get(opts, "preallocation");
    int ret;

    ret = qimg_opts_get_size(opts, "size", 0, &h.size, err);
    if (ret < 0)
        return ret;
    if (pa && qimg_prealloc_parse(pa, &h.prealloc) < 0)
        return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", pa);
    if (h.prealloc == QIMG_PREALLOC_METADATA)   /* no metadata to allocate */
        h.prealloc = QIMG_PREALLOC_OFF;
    ret = qimg_crypto_parse_create_opts(&co, QIMG_CRYPTO_FORMAT_LUKS, opts, "",
                                        luks_storage_keys, err);
    if (ret < 0)
        return ret;
    /* The file first, empty; the header's init makes it grow. */
    fopts = qimg_opts_new();
    if (!fopts)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (int i = 2; luks_storage_keys[i]; i++)
        if (qimg_opts_get(opts, luks_storage_keys[i]))
            qimg_opts_set(fopts, luks_storage_keys[i],
                          qimg_opts_get(opts, luks_storage_keys[i]));
    qimg_opts_set(fopts, "size", "0");
    ret = ops->create(filename, fopts, err);
    qimg_opts_free(fopts);
    if (ret < 0)
        return ret;
    ret = qimg_storage_open(&h.st, filename, QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE,
                            QIMG_CACHE_WRITEBACK, err);
    if (!ret)
        ret = qimg_crypto_create(&c, &co, "", &io, err);
    if (!ret)
        ret = h.st->ops->flush(h.st, err);
    qimg_crypto_free(c);
    qimg_storage_close(h.st);
    /* As QEMU: a failed create deletes the file, which is corrupt. */
    if (ret < 0 && ops->remove)
        ops->remove(filename, NULL);
    return ret;
}

static int luks_measure(const struct qimg_opts *opts, struct qimg_image *src,
                        uint64_t size, struct qimg_measure *out,
                        struct qimg_error *err)
{
    struct qimg_crypto_create_opts co;
    uint64_t payload;
    int ret;

    if (src)
        size = qimg_image_size(src);
    ret = qimg_crypto_parse_create_opts(&co, QIMG_CRYPTO_FORMAT_LUKS, opts, "",
                                        luks_storage_keys, err);
    if (!ret)
        ret = qimg_crypto_payload_len(&co, "", &payload, err);
    if (ret < 0)
        return ret;
    /* Unallocated blocks are encrypted too: all of it is required. */
    out->required = payload + size;
    out->fully_allocated = payload + size;
    return 0;
}

static int luks_amend(struct qimg_image *node, const struct qimg_opts *opts,
                      bool force, void (*progress)(void *, double),
                      void *opaque, struct qimg_error *err)
{
    struct luks_state *s = node->state;
    struct header_io h = {.st = node->file};
    struct qimg_crypto_io io = {hdr_read, hdr_write, NULL, &h};
    int ret = qimg_crypto_amend(s->crypto, opts, "", force, &io, err);

    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

/* In "Formatting" print order (help output sorts them). */
static const struct qimg_opt_desc luks_create_opts[] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"key-secret", QIMG_OPT_STRING, "ID of the secret that provides the "
     "keyslot passphrase", NULL},
    {"cipher-alg", QIMG_OPT_STRING, "Name of encryption cipher algorithm",
     NULL},
    {"cipher-mode", QIMG_OPT_STRING, "Name of encryption cipher mode", NULL},
    {"ivgen-alg", QIMG_OPT_STRING, "Name of IV generator algorithm", NULL},
    {"ivgen-hash-alg", QIMG_OPT_STRING, "Name of IV generator hash algorithm",
     NULL},
    {"hash-alg", QIMG_OPT_STRING, "Name of encryption hash algorithm", NULL},
    {"iter-time", QIMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
     NULL},
};

static const struct qimg_opt_desc luks_amend_opts[] = {
    {"state", QIMG_OPT_STRING, "Select new state of affected keyslots "
     "(active/inactive)", NULL},
    {"keyslot", QIMG_OPT_NUMBER, "Select a single keyslot to modify "
     "explicitly", NULL},
    {"old-secret", QIMG_OPT_STRING, "Select all keyslots that match this "
     "password", NULL},
    {"new-secret", QIMG_OPT_STRING, "New secret to set in the matching "
     "keyslots. Empty string to erase", NULL},
    {"iter-time", QIMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
     NULL},
};

/* key-secret is also what makes the node's name json:{...} */
static const char *const luks_strong_opts[] = {"key-secret", NULL};

const struct qimg_format qimg_format_luks = {
    .name = "luks",
    .description = "LUKS1 encrypted image",
    .state_size = sizeof(struct luks_state),
    .create_opts = luks_create_opts,
    .n_create_opts = QIMG_ARRAY_SIZE(luks_create_opts),
    .plain_perms = true,
    .runtime_opts = luks_strong_opts,   /* unknown ones refused after open */
    .strong_opts = luks_strong_opts,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .create = luks_create,
    .pread = luks_pread,
    .pwrite = luks_pwrite,
    .flush = luks_flush,
    .truncate = luks_truncate,
    .get_info = luks_get_info,
    .measure = luks_measure,
    .amend_opts = luks_amend_opts,
    .n_amend_opts = QIMG_ARRAY_SIZE(luks_amend_opts),
    .amend = luks_amend,
    .has_zero_init = luks_has_zero_init,
};
