/*
 * dmg.c - Apple UDIF images: probe, the koly trailer, the resource fork
 * and the chunk table (see dmg.h for the layout and who does what).
 *
 * Open follows QEMU 7.2's order and messages.  Where QEMU trusts the
 * image (tables of any size, unsorted or overlapping chunks, sizes whose
 * byte count overflows) we refuse with a message of our own, listed in
 * docs/LIMITS.md.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/dmg/dmg.h"

#define DMG_TRAILER_SIZE 512
/* The trailer is searched in the last 515 bytes of the file as QEMU sees
 * it (rounded up to whole sectors): its magic may start anywhere in the
 * last 511 bytes of the second-last sector or the first 4 of the last. */
#define DMG_TRAILER_SEARCH 515
/* Trailer fields (offsets into the koly block). */
#define KOLY_DATA_FORK_OFFSET 0x18
#define KOLY_RSRC_FORK_OFFSET 0x28
#define KOLY_RSRC_FORK_LENGTH 0x30
#define KOLY_XML_OFFSET 0xd8
#define KOLY_XML_LENGTH 0xe0
#define KOLY_SECTOR_COUNT 0x1ec
/* mish block: header, then 40-byte chunk entries. */
#define MISH_MAGIC 0x6d697368           /* "mish" */
#define MISH_HEADER 204
#define MISH_ENTRY 40
#define MISH_MIN (MISH_HEADER + MISH_ENTRY)
/* Entries read from the file at once when a mish block is parsed from the
 * resource fork (bounded memory whatever the block claims). */
#define MISH_BATCH 1024

int dmg_open_error(struct qimg_image *node, int code, struct qimg_error *err)
{
    return qimg_error_set(err, code, "Could not open '%s': %s",
                          node->file->filename, strerror(-code));
}

static int dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t n = filename ? strlen(filename) : 0;
    /* QEMU recognises dmg images by name only. */
    return n > 4 && !strcmp(filename + n - 4, ".dmg") ? 2 : 0;
}

static int read_be64(struct qimg_image *node, uint64_t off, uint64_t *v,
                     struct qimg_error *err)
{
    uint8_t b[8];
    int ret = node->file->ops->pread(node->file, off, sizeof(b), b, err);
    if (ret == 0)
        *v = qimg_ld_be64(b);
    return ret;
}

static int read_be32(struct qimg_image *node, uint64_t off, uint32_t *v,
                     struct qimg_error *err)
{
    uint8_t b[4];
    int ret = node->file->ops->pread(node->file, off, sizeof(b), b, err);
    if (ret == 0)
        *v = qimg_ld_be32(b);
    return ret;
}

static int64_t find_trailer(struct qimg_image *node, struct qimg_error *err)
{
    int64_t size = node->file->ops->get_size(node->file);
    uint8_t buf[DMG_TRAILER_SEARCH];
    uint64_t length, off = 0;
    size_t n;
    int ret;

    if (size < 0)
        return qimg_error_set(err, (int)size, "Failed to get file size while "
                              "reading UDIF trailer: %s",
                              strerror((int)-size));
    if (!qimg_align_up((uint64_t)size, DMG_SECTOR, &length))
        return qimg_error_set(err, -EFBIG, "File too large");
    if (length < DMG_TRAILER_SIZE)
        return qimg_error_set(err, -EINVAL, "dmg file must be at least 512 "
                              "bytes long");
    if (length > DMG_TRAILER_SIZE - 1 + DMG_SECTOR)
        off = length - (DMG_TRAILER_SIZE - 1) - DMG_SECTOR;
    n = (size_t)QIMG_MIN(length, (uint64_t)sizeof(buf));
    ret = node->file->ops->pread(node->file, off, n, buf, err);
    if (ret < 0) {
        qimg_error_prefix(err, "Failed while reading UDIF trailer: ");
        return ret;
    }
    for (size_t i = 0; i + 3 < n; i++)
        if (!memcmp(buf + i, "koly", 4))
            return (int64_t)(off + i);
    return qimg_error_set(err, -EINVAL, "Could not locate UDIF trailer in dmg "
                          "file");
}

/* ---- the chunk table ---------------------------------------------------- */

static bool known_type(uint32_t type)
{
    switch (type) {
    case DMG_ZERO:
    case DMG_RAW:
    case DMG_IGNORE:
    case DMG_ZLIB:
    case DMG_BZIP2:
        return true;
    default:
        return false;
    }
}

/* QEMU warns once per process about each kind of chunk it cannot read. */
static atomic_bool warned_lzfse, warned_unknown;

static void warn_skipped(uint32_t type)
{
    if (type == DMG_LZFSE) {
        if (!atomic_exchange(&warned_lzfse, true))
            qimg_message(QIMG_MSG_WARNING, "dmg-lzfse module is missing, "
                         "accessing lzfse compressed blocks will result in "
                         "I/O errors\n");
    } else if (type != DMG_COMMENT && type != DMG_END) {
        if (!atomic_exchange(&warned_unknown, true))
            qimg_message(QIMG_MSG_WARNING, "Image contains chunks of unknown "
                         "type %x, accessing them will result in I/O errors\n",
                         type);
    }
}

static int append_chunk(struct qimg_image *node, const struct dmg_chunk *c,
                        struct qimg_error *err)
{
    struct dmg_state *s = node->state;

    if (s->n_chunks == DMG_MAX_CHUNKS)
        return qimg_error_set(err, -EFBIG, "dmg image has more than %u chunks",
                              DMG_MAX_CHUNKS);
    if (s->n_chunks == s->cap) {
        uint32_t cap = s->cap ? QIMG_MIN(s->cap * 2, DMG_MAX_CHUNKS) : 64;
        struct dmg_chunk *t = realloc(s->chunks, cap * sizeof(*t));
        if (!t)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        s->chunks = t;
        s->cap = cap;
    }
    s->chunks[s->n_chunks++] = *c;
    return 0;
}

/* One 40-byte entry; out_offset/in_offset are the mish block's bases. */
static int add_entry(struct qimg_image *node, const uint8_t *e,
                     uint64_t out_offset, uint64_t in_offset,
                     struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    struct dmg_chunk c;

    c.type = qimg_ld_be32(e);
    if (!known_type(c.type)) {
        warn_skipped(c.type);
        return 0;
    }
    /* Unsigned wrap-around as in QEMU; overflowing chunks are refused
     * after the table is complete. */
    c.sector = qimg_ld_be64(e + 8) + out_offset;
    c.count = qimg_ld_be64(e + 0x10);
    if (c.type != DMG_ZERO && c.type != DMG_IGNORE &&
        c.count > DMG_MAX_SECTORS) {
        qimg_message(QIMG_MSG_ERROR, "sector count %llu for chunk %u is larger "
                     "than max (%u)\n", (unsigned long long)c.count,
                     s->n_chunks, DMG_MAX_SECTORS);
        return dmg_open_error(node, -EINVAL, err);
    }
    c.offset = qimg_ld_be64(e + 0x18) + in_offset;
    c.length = qimg_ld_be64(e + 0x20);
    if (c.length > DMG_MAX_LENGTH) {
        qimg_message(QIMG_MSG_ERROR, "length %llu for chunk %u is larger than "
                     "max (%u)\n", (unsigned long long)c.length, s->n_chunks,
                     DMG_MAX_LENGTH);
        return dmg_open_error(node, -EINVAL, err);
    }
    return append_chunk(node, &c, err);
}

/*
 * Where a mish block's entries come from: a decoded buffer (XML) or the
 * file (resource fork, read in batches so that a block claiming
 * gigabytes costs no memory).
 */
struct mish_src {
    const uint8_t *buf;
    uint64_t file_off;
};

static int mish_read(struct qimg_image *node, const struct mish_src *src,
                     uint64_t pos, size_t len, uint8_t *out,
                     struct qimg_error *err)
{
    if (src->buf) {
        memcpy(out, src->buf + pos, len);
        return 0;
    }
    return node->file->ops->pread(node->file, src->file_off + pos, len, out,
                                  err);
}

static int add_mish(struct qimg_image *node, const struct mish_src *src,
                    uint64_t count, struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    uint8_t head[MISH_HEADER];
    uint8_t *batch = NULL;
    uint64_t n_entries, out_offset, in_offset;
    int ret;

    /* Anything that is not a mish block is skipped (as QEMU does). */
    if (count < MISH_MIN)
        return 0;
    ret = mish_read(node, src, 0, sizeof(head), head, err);
    if (ret < 0 || qimg_ld_be32(head) != MISH_MAGIC)
        return ret;
    out_offset = qimg_ld_be64(head + 8);
    in_offset = s->data_fork_offset + qimg_ld_be64(head + 0x18);
    n_entries = (count - MISH_HEADER) / MISH_ENTRY;
    batch = malloc(MISH_BATCH * MISH_ENTRY);
    if (!batch)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < n_entries && ret == 0;) {
        size_t n = (size_t)QIMG_MIN(n_entries - i, (uint64_t)MISH_BATCH);
        ret = mish_read(node, src, MISH_HEADER + i * MISH_ENTRY,
                        n * MISH_ENTRY, batch, err);
        for (size_t j = 0; j < n && ret == 0; j++)
            ret = add_entry(node, batch + j * MISH_ENTRY, out_offset,
                            in_offset, err);
        i += n;
    }
    free(batch);
    return ret;
}

int dmg_add_mish(struct qimg_image *node, const uint8_t *buf, uint64_t count,
                 struct qimg_error *err)
{
    struct mish_src src = {.buf = buf};
    return add_mish(node, &src, count, err);
}

/*
 * The resource fork: a 32-bit offset of its data (from the fork's start)
 * and at +8 the data's length; the data is a run of resources, each a
 * 32-bit length and its bytes.  QEMU's checks, in its order and 32-bit
 * arithmetic.
 */
static int read_rsrc_fork(struct qimg_image *node, uint64_t begin,
                          uint64_t length, struct qimg_error *err)
{
    uint32_t data_off = 0, count = 0;
    uint64_t off, end;
    int ret;

    ret = read_be32(node, begin, &data_off, err);
    if (ret < 0)
        return ret;
    if (data_off > length)
        return dmg_open_error(node, -EINVAL, err);
    ret = read_be32(node, begin + 8, &count, err);
    if (ret < 0)
        return ret;
    if (!count || (uint32_t)(data_off + count) > length)
        return dmg_open_error(node, -EINVAL, err);
    off = begin + data_off;
    end = off + count;
    while (off < end) {
        struct mish_src src;
        ret = read_be32(node, off, &count, err);
        if (ret < 0)
            return ret;
        if (!count || count > end - off)
            return dmg_open_error(node, -EINVAL, err);
        off += 4;
        src.buf = NULL;
        src.file_off = off;
        ret = add_mish(node, &src, count, err);
        if (ret < 0)
            return ret;
        off += count;
    }
    return 0;
}

static int cmp_chunk(const void *a, const void *b)
{
    const struct dmg_chunk *x = a, *y = b;
    return x->sector < y->sector ? -1 : x->sector > y->sector;
}

/*
 * Sort the table by guest sector (QEMU's binary search assumes it), drop
 * chunks of no sectors (never found by a lookup), and refuse chunks that
 * overlap or run past 2^64 sectors (QEMU would read whichever its search
 * meets first, or past its table).
 */
static int finish_table(struct qimg_image *node, struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    uint32_t n = 0;
    uint64_t end = 0;

    if (s->n_chunks)
        qsort(s->chunks, s->n_chunks, sizeof(*s->chunks), cmp_chunk);
    for (uint32_t i = 0; i < s->n_chunks; i++) {
        struct dmg_chunk *c = &s->chunks[i];
        uint64_t c_end;
        if (!c->count)
            continue;
        if (qimg_add_overflow(c->sector, c->count, &c_end))
            return qimg_error_set(err, -EINVAL, "dmg chunk at sector %llu "
                                  "overflows", (unsigned long long)c->sector);
        if (n && c->sector < end)
            return qimg_error_set(err, -EINVAL, "dmg chunks overlap at sector "
                                  "%llu", (unsigned long long)c->sector);
        end = c_end;
        s->chunks[n++] = *c;
    }
    s->n_chunks = n;
    return 0;
}

/*
 * The guest size QEMU accepts: sectors * 512 (64-bit, wrapping as QEMU's
 * does) must not pass QEMU's largest length.  QEMU opens images whose
 * product wraps below it but then fails every size query ("Can't get
 * image size"); we refuse those at open.
 */
static int set_size(struct qimg_image *node, uint64_t sectors,
                    struct qimg_error *err)
{
    int64_t bytes = (int64_t)(sectors * DMG_SECTOR);

    if (sectors > INT64_MAX)
        return dmg_open_error(node, -EINVAL, err);
    if (bytes > (int64_t)QIMG_MAX_LENGTH || sectors > INT64_MAX / DMG_SECTOR)
        return qimg_error_set(err, -EFBIG, "Could not refresh total sector "
                              "count: File too large");
    node->size = sectors * DMG_SECTOR;
    return 0;
}

/* A fork [off, off+len) must start before the trailer and end by it. */
static bool fork_ok(uint64_t off, uint64_t len, uint64_t koly)
{
    return off < koly && len <= koly - off;
}

static int read_tables(struct qimg_image *node, uint64_t koly,
                       struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    uint64_t rsrc_off = 0, rsrc_len = 0, xml_off = 0, xml_len = 0, sectors = 0;
    int ret;

    ret = read_be64(node, koly + KOLY_DATA_FORK_OFFSET, &s->data_fork_offset,
                    err);
    if (ret < 0)
        return ret;
    if (s->data_fork_offset > koly)
        return dmg_open_error(node, -EINVAL, err);
    if ((ret = read_be64(node, koly + KOLY_RSRC_FORK_OFFSET, &rsrc_off,
                         err)) < 0 ||
        (ret = read_be64(node, koly + KOLY_RSRC_FORK_LENGTH, &rsrc_len,
                         err)) < 0)
        return ret;
    if (!fork_ok(rsrc_off, rsrc_len, koly))
        return dmg_open_error(node, -EINVAL, err);
    if ((ret = read_be64(node, koly + KOLY_XML_OFFSET, &xml_off, err)) < 0 ||
        (ret = read_be64(node, koly + KOLY_XML_LENGTH, &xml_len, err)) < 0)
        return ret;
    if (!fork_ok(xml_off, xml_len, koly))
        return dmg_open_error(node, -EINVAL, err);
    ret = read_be64(node, koly + KOLY_SECTOR_COUNT, &sectors, err);
    if (ret < 0)
        return ret;
    if (sectors > INT64_MAX)
        return dmg_open_error(node, -EINVAL, err);
    if (rsrc_len)
        ret = read_rsrc_fork(node, rsrc_off, rsrc_len, err);
    else if (xml_len)
        ret = dmg_read_plist(node, xml_off, xml_len, err);
    else
        ret = dmg_open_error(node, -EINVAL, err);
    if (ret < 0)
        return ret;
    ret = set_size(node, sectors, err);
    if (ret < 0)
        return ret;
    return finish_table(node, err);
}

static void dmg_close(struct qimg_image *node)
{
    struct dmg_state *s = node->state;
    if (s->cache_ok)
        qimg_chunk_cache_release(&s->cache);
    free(s->chunks);
    s->chunks = NULL;
}

static int dmg_open(struct qimg_image *node, const struct qimg_opts *opts,
                    struct qimg_error *err)
{
    struct dmg_state *s = node->state;
    int64_t koly = find_trailer(node, err);
    int ret;

    if (koly < 0)
        return (int)koly;
    ret = read_tables(node, (uint64_t)koly, err);
    if (ret == 0)
        ret = qimg_opts_refuse_all(node, opts, err);
    if (ret == 0) {
        ret = qimg_chunk_cache_init(&s->cache);
        if (ret < 0)
            qimg_error_set(err, ret, "Out of memory");
        s->cache_ok = ret == 0;
    }
    if (ret < 0)
        dmg_close(node);
    return ret;
}

const struct qimg_format qimg_format_dmg = {
    .name = "dmg",
    .description = "Apple disk image",
    .state_size = sizeof(struct dmg_state),
    .read_only = true,
    .no_get_info = true,
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .pread = dmg_pread,
};
