/*
 * qcow2.c - qcow2 header: probe, open with validation of every field,
 * header extensions, feature bits, header rewrites, info, driver table.
 * Specification: QEMU docs/interop/qcow2.txt.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fmt/qcow2/qcow2.h"

/* L2 cache: 16 MiB of tables, 128 GiB of guest with 64 KiB clusters.
 * Sequential passes (copies, map) use each table once, so a bigger cache
 * only raises their peak memory: a whole-disk map of a 1 TiB image with
 * data in every table touched all of a 32 MiB cache (QEMU's maximum) and
 * peaked at 0.88 of qemu-img's RSS; random access over more than 128 GiB
 * re-reads a table (one cluster) per miss. */
#define QCOW2_L2_CACHE_BYTES (16u << 20)
#define QCOW2_REFBLOCK_CACHE_BYTES (4u << 20)
#define QCOW2_MIN_CACHE_ENTRIES 16

static void free_state(struct qcow2_state *s);

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && qimg_ld_be32(buf) == QCOW2_MAGIC &&
        qimg_ld_be32(buf + 4) >= 2)
        return 100;
    return 0;
}

uint64_t qcow2_l1_size_for(uint64_t size, uint32_t cluster_bits,
                           uint32_t l2_bits)
{
    uint64_t clusters = qimg_div_round_up(size, 1ull << cluster_bits);
    return qimg_div_round_up(clusters, 1ull << l2_bits);
}

/* Names of the feature bits, for "Unsupported qcow2 feature(s)". */
struct feature_name {
    uint8_t type, bit;
    char name[47];
};

/*
 * "Unsupported qcow2 feature(s): ..." as QEMU words it: the names the
 * feature table gives incompatible bits in mask, in table order (the
 * table ends at an entry with an empty name; a partial last entry reads
 * as zero-padded), then the bits left without a name as one
 * "Unknown incompatible feature: <hex mask>".
 */
static int report_unsupported(struct qimg_image *node, const uint8_t *table,
                              size_t table_len, uint64_t mask,
                              struct qimg_error *err)
{
    char msg[QIMG_ERROR_MSG_MAX / 2] = "";
    size_t used = 0;
    uint8_t *padded = calloc(1, table_len + 2 * 48);

    (void)node;
    if (padded && table)
        memcpy(padded, table, table_len);
    for (size_t i = 0; padded && i + 48 <= table_len + 2 * 48 &&
                       padded[i + 2] != '\0'; i += 48) {
        uint8_t type = padded[i], bit = padded[i + 1];
        if (type != 0 || bit >= 64 || !(mask & (1ull << bit)))
            continue;
        used += (size_t)snprintf(msg + used, sizeof(msg) - QIMG_MIN(used, sizeof(msg)),
                                 "%s%.46s", used ? ", " : "",
                                 (const char *)padded + i + 2);
        mask &= ~(1ull << bit);
    }
    free(padded);
    if (mask && used < sizeof(msg))
        snprintf(msg + used, sizeof(msg) - used, "%sUnknown incompatible "
                 "feature: %" PRIx64, used ? ", " : "", mask);
    return qimg_error_set(err, -ENOTSUP, "Unsupported qcow2 feature(s): %s", msg);
}

static int validate_table_offset(const struct qcow2_state *s, uint64_t offset,
                                 uint64_t entries, size_t entry_len)
{
    uint64_t size;
    if (entries > INT64_MAX / entry_len)
        return -EINVAL;
    size = entries * entry_len;
    if (offset & (s->cluster_size - 1))
        return -EINVAL;
    if (!qimg_range_ok(offset, size, INT64_MAX))
        return -EINVAL;
    return 0;
}

/* Parse header extensions in [start, end) of the first cluster. */
static int read_extensions(struct qimg_image *node, const uint8_t *hdr,
                           uint64_t start, uint64_t end, uint8_t **ftable,
                           size_t *ftable_len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t off = start;

    /* As QEMU: an extension header or body crossing `end` (even the end
     * marker's) is "too large"; QEMU's backing format field is 16 bytes. */
    while (off < end) {
        if (end - off < 8)
            return qimg_error_set(err, -EINVAL, "Header extension too large");
        uint32_t type = qimg_ld_be32(hdr + off);
        uint32_t len = qimg_ld_be32(hdr + off + 4);
        const uint8_t *data = hdr + off + 8;
        uint64_t next;

        if (len > end - off - 8)
            return qimg_error_set(err, -EINVAL, "Header extension too large");
        if (type == QCOW2_EXT_END)
            return 0;
        switch (type) {
        case QCOW2_EXT_BACKING_FMT:
            if (len >= 16)
                return qimg_error_set(err, -EINVAL, "ERROR: ext_backing_format: "
                                      "len=%u too large (>=%zu)", len,
                                      (size_t)16);
            memcpy(node->backing_fmt, data, len);
            node->backing_fmt[len] = '\0';
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            free(*ftable);
            *ftable = malloc(len ? len : 1);
            if (!*ftable)
                return qimg_error_set(err, -ENOMEM, "Out of memory");
            memcpy(*ftable, data, len);
            *ftable_len = len;
            s->has_feature_table = true;
            break;
        case QCOW2_EXT_BITMAPS: {
            int ret = qcow2_bitmaps_parse_ext(node, data, len, err);
            if (ret < 0)
                return ret;
            break;
        }
        case QCOW2_EXT_CRYPTO:
            if (s->crypt_method != 2)
                return qimg_error_set(err, -EINVAL, "CRYPTO header extension "
                                      "only expected with LUKS encryption "
                                      "method");
            if (len != sizeof(s->crypto_ext))
                return qimg_error_set(err, -EINVAL, "CRYPTO header extension "
                                      "size %u, but expected size %zu", len,
                                      sizeof(s->crypto_ext));
            memcpy(s->crypto_ext, data, len);
            s->has_crypto_ext = true;
            break;
        case QCOW2_EXT_DATA_FILE:
            /* Any length inside the extension area, as QEMU; the name
             * ends at its first NUL. */
            free(s->data_file_name);
            s->data_file_name = strndup((const char *)data, len);
            if (!s->data_file_name)
                return qimg_error_set(err, -ENOMEM, "Out of memory");
            break;
        default: {
            /* Unknown extension: keep it to write back unchanged. */
            size_t rec = 8 + (size_t)QIMG_MIN((uint64_t)len + 7, end - off - 8) / 8 * 8;
            uint8_t *n = realloc(s->unknown_ext, s->unknown_ext_len + rec);
            if (!n)
                return qimg_error_set(err, -ENOMEM, "Out of memory");
            memset(n + s->unknown_ext_len, 0, rec);
            memcpy(n + s->unknown_ext_len, hdr + off,
                   (size_t)QIMG_MIN((uint64_t)rec, end - off));
            s->unknown_ext = n;
            s->unknown_ext_len += rec;
            break;
        }
        }
        next = off + 8 + (((uint64_t)len + 7) & ~7ull);
        off = next;
    }
    return 0;
}

static int parse_header(struct qimg_image *node, const uint8_t *h,
                        size_t hlen, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (hlen < QCOW2_V2_HEADER_LEN || qimg_ld_be32(h) != QCOW2_MAGIC)
        return qimg_error_set(err, -EINVAL, "Image is not in qcow2 format");
    s->version = qimg_ld_be32(h + 4);
    if (s->version < 2 || s->version > 3)
        return qimg_error_set(err, -ENOTSUP, "Unsupported qcow2 version %u",
                              s->version);
    s->backing_file_offset = qimg_ld_be64(h + 8);
    s->backing_file_size = qimg_ld_be32(h + 16);
    s->cluster_bits = qimg_ld_be32(h + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return qimg_error_set(err, -EINVAL, "Unsupported cluster size: 2^%u",
                              s->cluster_bits);
    s->cluster_size = 1ull << s->cluster_bits;
    node->size = qimg_ld_be64(h + 24);
    s->crypt_method = qimg_ld_be32(h + 32);
    s->l1_size = qimg_ld_be32(h + 36);
    s->l1_table_offset = qimg_ld_be64(h + 40);
    s->refcount_table_offset = qimg_ld_be64(h + 48);
    s->refcount_table_clusters = qimg_ld_be32(h + 56);
    s->nb_snapshots = qimg_ld_be32(h + 60);
    s->snapshots_offset = qimg_ld_be64(h + 64);
    if (s->version == 2) {
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LEN;
        return 0;
    }
    if (hlen < QCOW2_V3_HEADER_LEN)
        return qimg_error_set(err, -EINVAL, "qcow2 header too short");
    s->incompatible = qimg_ld_be64(h + 72);
    s->compatible = qimg_ld_be64(h + 80);
    s->autoclear = qimg_ld_be64(h + 88);
    s->refcount_order = qimg_ld_be32(h + 96);
    s->header_length = qimg_ld_be32(h + 100);
    if (s->header_length < QCOW2_V3_HEADER_LEN)
        return qimg_error_set(err, -EINVAL, "qcow2 header too short");
    if (s->header_length > s->cluster_size)
        return qimg_error_set(err, -EINVAL, "qcow2 header exceeds cluster size");
    if (s->header_length > 104)
        s->compression_type = h[104];
    return 0;
}

static int check_features(struct qimg_image *node, const uint8_t *ftable,
                          size_t ftable_len, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t unknown = s->incompatible & ~QCOW2_INCOMPAT_KNOWN;

    if (unknown)
        return report_unsupported(node, ftable, ftable_len, unknown, err);
    /* Corrupt images are opened for writing only to be repaired. */
    if ((s->incompatible & QCOW2_INCOMPAT_CORRUPT) && !node->read_only &&
        !(node->flags & QIMG_OPEN_CHECK))
        return qimg_error_set(err, -EACCES, "qcow2: Image is corrupt; cannot be "
                              "opened read/write");
    if (s->refcount_order > 6)
        return qimg_error_set(err, -EINVAL, "Reference count entry width too "
                              "large; may not exceed 64 bits");
    if (s->incompatible & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->compression_type == QCOW2_COMPRESSION_ZLIB)
            return qimg_error_set(err, -EINVAL, "qcow2: Compression type "
                                  "incompatible feature bit must not be set "
                                  "for zlib");
    } else if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return qimg_error_set(err, -EINVAL, "qcow2: Compression type "
                              "incompatible feature bit must be set");
    }
    if (s->compression_type > QCOW2_COMPRESSION_ZSTD)
        return qimg_error_set(err, -ENOTSUP, "qcow2: unknown compression type: "
                              "%u", s->compression_type);
    /* Subclusters (1/32 of a cluster) of at least 512 bytes. */
    if ((s->incompatible & QCOW2_INCOMPAT_EXTL2) && s->cluster_bits < 14)
        return qimg_error_set(err, -EINVAL, "Unsupported subcluster size: %u",
                              (unsigned)(s->cluster_size >> 5));
    return 0;
}

static void derive_geometry(struct qcow2_state *s)
{
    bool ext = (s->incompatible & QCOW2_INCOMPAT_EXTL2) != 0;
    s->l2_entry_size = ext ? 16 : 8;
    s->l2_bits = s->cluster_bits - (ext ? 4 : 3);
    s->subcluster_bits = ext ? 5 : 0;
    s->subcluster_size = s->cluster_size >> s->subcluster_bits;
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_block_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (1ull << s->refcount_bits) - 1;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ull << s->csize_shift) - 1;
}

/*
 * The checks of the table geometry made before any table is read, in
 * QEMU's order and with its messages: refcount table, snapshot table, L1
 * table.
 */
static int validate_tables(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t rt_bytes = (uint64_t)s->refcount_table_clusters << s->cluster_bits;
    unsigned shift = s->cluster_bits + s->l2_bits;
    /* QEMU's rounding, which wraps for sizes within one L1 entry of 2^64;
     * those fail at the end of the open ("File too large"). */
    uint64_t l1_need = (node->size + (1ull << shift) - 1) >> shift;

    if (rt_bytes > QCOW2_MAX_REFTABLE_SIZE)
        return qimg_error_set(err, -EINVAL, "Reference count table too large");
    /* A check (which rebuilds missing refcounts) opens images without a
     * refcount table, and reads the snapshot table itself. */
    bool check = node->flags & QIMG_OPEN_CHECK;
    if (!rt_bytes && !check)
        return qimg_error_set(err, -EINVAL, "Image does not contain a "
                              "reference count table");
    if (validate_table_offset(s, s->refcount_table_offset, rt_bytes, 1))
        return qimg_error_set(err, -EINVAL, "Reference count table offset "
                              "invalid");
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS && !check)
        return qimg_error_set(err, -EINVAL, "Snapshot table too large");
    /* QEMU counts the fixed 40 bytes of each entry here. */
    if (!check &&
        validate_table_offset(s, s->snapshots_offset, s->nb_snapshots, 40))
        return qimg_error_set(err, -EINVAL, "Snapshot table offset invalid");
    if (s->l1_size > QCOW2_MAX_L1_SIZE / 8)
        return qimg_error_set(err, -EFBIG, "Active L1 table too large");
    if (l1_need > INT32_MAX)
        return qimg_error_set(err, -EFBIG, "Image is too big");
    if (s->l1_size < l1_need)
        return qimg_error_set(err, -EINVAL, "L1 table is too small");
    if (validate_table_offset(s, s->l1_table_offset, s->l1_size, 8))
        return qimg_error_set(err, -EINVAL, "Active L1 table offset invalid");
    return 0;
}

static int load_l1(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    s->l1_table = calloc(QIMG_MAX(s->l1_size, 1u), 8);
    if (!s->l1_table)
        return qimg_error_set(err, -ENOMEM, "Could not allocate L1 table");
    if (s->l1_size) {
        int ret = node->file->ops->pread(node->file, s->l1_table_offset,
                                         (size_t)s->l1_size * 8, s->l1_table, err);
        if (ret < 0) {
            qimg_error_prefix(err, "Could not read L1 table: ");
            return ret;
        }
        for (uint32_t i = 0; i < s->l1_size; i++)
            s->l1_table[i] = be64toh(s->l1_table[i]);
    }
    return 0;
}

/* Before the extensions, which end where the backing name starts. */
static int check_backing_offset(const struct qcow2_state *s,
                                struct qimg_error *err)
{
    if (s->backing_file_offset &&
        (s->backing_file_offset > s->cluster_size ||
         s->backing_file_size > s->cluster_size - s->backing_file_offset))
        return qimg_error_set(err, -EINVAL, "Invalid backing file offset");
    return 0;
}

/* After the tables were read (QEMU's order). */
static int read_backing_name(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (!s->backing_file_offset)
        return 0;
    if (s->backing_file_size > QCOW2_MAX_BACKING_NAME)
        return qimg_error_set(err, -EINVAL, "Backing file name too long");
    int ret = node->file->ops->pread(node->file, s->backing_file_offset,
                                     s->backing_file_size, node->backing_name,
                                     err);
    if (ret < 0)
        return ret;
    node->backing_name[s->backing_file_size] = '\0';
    return 0;
}

static int open_data_file(struct qimg_image *node, const struct qimg_opts *opts,
                          struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *name = qimg_opts_get(opts, "data-file");
    const char *drv = qimg_opts_get(opts, "data-file.driver");

    if (!name)
        name = qimg_opts_get(opts, "data-file.filename");
    if (drv && strcmp(drv, "file"))
        return qimg_error_set(err, -EINVAL, "Unknown driver '%s'", drv);
    /* data-file= is the caller's; the header's name is the image's. */
    unsigned child = QIMG_CHILD_DATA_FILE | (name ? QIMG_CHILD_CALLER : 0);

    if (!(s->incompatible & QCOW2_INCOMPAT_DATA_FILE)) {
        if (name)
            return qimg_error_set(err, -EINVAL, "'data-file' can only be set "
                                  "for images with an external data file");
        return 0;
    }
    if (!name)
        name = s->data_file_name;
    /* Header-only opens (info) do not open the data file at all: QEMU's
     * info works while it is missing or its name empty. */
    if (node->flags & QIMG_OPEN_NO_IO)
        return 0;
    if (!name)   /* an empty recorded name is opened (and refused) */
        return qimg_error_set(err, -EINVAL, "'data-file' is required for this "
                              "image");
    /* QEMU opens the data file by its recorded name, relative to the
     * working directory. */
    return qimg_open_child_storage(node, name, child, node->flags,
                                   &s->data_file, err);
}

/*
 * QEMU's qcow2 runtime options.  The cache sizes, discard passing, lazy
 * refcounts and overlap-check selection tune how QEMU works, not what a
 * qemu-img command prints or writes, so they are accepted and not acted
 * on (our caches size themselves; every overlap check always runs).
 */
static const char *const qcow2_tuning_opts[] = {
    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
    "pass-discard-other", "overlap-check", "cache-size", "l2-cache-size",
    "l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval",
    NULL,
};

static bool known_runtime_opt(const char *k)
{
    for (size_t i = 0; qcow2_tuning_opts[i]; i++)
        if (!strcmp(k, qcow2_tuning_opts[i]))
            return true;
    /* data-file.filename names the data file as data-file does;
     * data-file.driver may only say it is a file. */
    return !strcmp(k, "data-file") || !strcmp(k, "data-file.filename") ||
           !strcmp(k, "data-file.driver") ||
           !strncmp(k, "overlap-check.", 14) || !strncmp(k, "backing", 7);
}

/* The repair of a dirty image at open tells what it finds, as QEMU's
 * check does on stderr. */
static void report_repair_line(void *opaque, const char *line)
{
    (void)opaque;
    qimg_message(QIMG_MSG_PLAIN, "%s\n", line);
}

static int qcow2_open(struct qimg_image *node, const struct qimg_opts *opts,
                      struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *ftable = NULL;
    size_t ftable_len = 0;
    uint8_t *hdr = NULL;
    int64_t file_size = node->file->ops->get_size(node->file);
    size_t hlen;
    int ret;

    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        /* encrypt.* keys: qcow2-crypto.c checks them */
        if (!known_runtime_opt(k) && strncmp(k, "encrypt.", 8))
            return qimg_error_set(err, -EINVAL, "Block format 'qcow2' does not "
                                  "support the option '%s'", k);
    }
    /* The header and its extensions fill at most the first cluster (2
     * MiB at most): read what the file holds of it, the cluster size
     * taken from the header's first bytes.  Reading no further keeps the
     * page cache off data areas (a fallocated cluster read into it stops
     * being a hole for SEEK_DATA, and map would call it data). */
    hlen = (size_t)QIMG_MIN((uint64_t)QIMG_MAX(file_size, 0),
                            1ull << QCOW2_MAX_CLUSTER_BITS);
    {
        /* The fixed header first, to size the buffer by the cluster: a
         * 2 MiB buffer for every node cost 2 ms of page faults per open
         * (malloc serves it from the heap once the mmap threshold grew,
         * and calloc then clears it all). */
        uint8_t fixed[QCOW2_V3_HEADER_LEN_CTYPE] = {0};
        size_t first = QIMG_MIN(hlen, sizeof(fixed));
        ret = node->file->ops->pread(node->file, 0, first, fixed, err);
        if (ret < 0)
            goto out;
        uint32_t cbits = first >= 24 ? qimg_ld_be32(fixed + 20) : 0;
        if (cbits <= QCOW2_MAX_CLUSTER_BITS)
            hlen = QIMG_MIN(hlen, QIMG_MAX((size_t)1 << cbits, first));
        /* At least the longest header we parse: bytes past EOF read as
         * zero.  Only that tail is cleared: the reads fill the rest (a
         * calloc cleared the whole cluster first, a fifth of the
         * instructions of `info` of a small image). */
        size_t alloc = QIMG_MAX(hlen, sizeof(fixed));
        hdr = malloc(alloc);
        if (!hdr) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            goto out;
        }
        memcpy(hdr, fixed, first);
        memset(hdr + hlen, 0, alloc - hlen);
        if (hlen > first) {
            ret = node->file->ops->pread(node->file, first, hlen - first,
                                         hdr + first, err);
            if (ret < 0)
                goto out;
        }
    }
    /* A file cut inside its header reads as zeroes past its end, as in
     * QEMU ("Unsupported cluster size: 2^0", "qcow2 header too short"). */
    ret = parse_header(node, hdr, QIMG_MAX(hlen, (size_t)QCOW2_V3_HEADER_LEN_CTYPE),
                       err);
    if (ret < 0)
        goto out;
    if (s->header_length < s->cluster_size && hlen >= s->cluster_size) {
        uint64_t ext_end = s->backing_file_offset ? s->backing_file_offset
                                                  : s->cluster_size;
        ret = read_extensions(node, hdr, s->header_length,
                              QIMG_MIN(ext_end, s->cluster_size), &ftable,
                              &ftable_len, err);
        if (ret < 0)
            goto out;
    }
    ret = check_features(node, ftable, ftable_len, err);
    if (ret < 0)
        goto out;
    derive_geometry(s);
    ret = check_backing_offset(s, err);
    if (ret < 0)
        goto out;
    ret = validate_tables(node, err);
    if (ret < 0)
        goto out;
    ret = load_l1(node, err);
    if (ret < 0)
        goto out;
    /* Only reading can fail here: the geometry was validated above. */
    ret = qcow2_refcount_load(node, err);
    if (ret < 0) {
        qimg_error_prefix(err, "Could not initialize refcount handling: ");
        goto out;
    }
    /* Checked, as in QEMU, once the L1 and refcount tables were read. */
    ret = qcow2_crypto_open(node, opts, err);
    if (ret < 0)
        goto out;
    ret = read_backing_name(node, err);
    if (ret < 0)
        goto out;
    if (node->flags & QIMG_OPEN_CHECK) {
        s->nb_snapshots = 0;   /* read by the check itself */
        s->snapshots_offset = 0;
    } else {
        ret = qcow2_snapshots_load(node, err);
        if (ret < 0)
            goto out;
    }
    ret = qcow2_bitmaps_load(node, err);
    if (ret < 0)
        goto out;
    ret = qcow2_cache_init(&s->l2_cache, QIMG_MAX(QCOW2_L2_CACHE_BYTES /
                                                  s->cluster_size,
                                                  (uint64_t)QCOW2_MIN_CACHE_ENTRIES),
                           s->cluster_size);
    if (!ret)
        ret = qcow2_cache_init(&s->refblock_cache,
                               QIMG_MAX(QCOW2_REFBLOCK_CACHE_BYTES / s->cluster_size,
                                        (uint64_t)QCOW2_MIN_CACHE_ENTRIES),
                               s->cluster_size);
    if (ret < 0) {
        qimg_error_set(err, ret, "Could not allocate metadata caches");
        goto out;
    }
    /* L2 tables may point at new clusters only after their refcounts hit
     * the disk. */
    s->l2_cache.ev_load = QIMG_EV_L2_LOAD;
    s->l2_cache.ev_update = QIMG_EV_L2_UPDATE;
    s->refblock_cache.ev_load = QIMG_EV_REFBLOCK_LOAD;
    s->refblock_cache.ev_update = QIMG_EV_REFBLOCK_UPDATE_PART;
    s->l2_cache.ol_self = QCOW2_OL_ACTIVE_L2;
    s->refblock_cache.ol_self = QCOW2_OL_REFCOUNT_BLOCK;
    s->l2_cache.depends = &s->refblock_cache;
    ret = open_data_file(node, opts, err);
    if (ret < 0)
        goto out;
    /* QEMU's block layer refuses the size last, after the driver opened. */
    if (node->size > INT64_MAX) {
        ret = qimg_error_set(err, -EFBIG, "Could not refresh total sector "
                             "count: %s", strerror(EFBIG));
        goto out;
    }
    if (!node->read_only && (s->incompatible & QCOW2_INCOMPAT_DIRTY) &&
        !(node->flags & QIMG_OPEN_CHECK)) {
        /* Left dirty (lazy refcounts, or a crash): repair, then mark clean,
         * as QEMU does on a writable open. */
        struct qimg_check res = {.report = report_repair_line};
        ret = qcow2_check(node, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS,
                          &res, err);
        if (ret < 0 || res.check_errors) {
            ret = qimg_error_set(err, ret < 0 ? ret : -EIO, "Could not repair "
                                 "dirty image: %s",
                                 strerror(ret < 0 ? -ret : EIO));
            goto out;
        }
    }
    if (!node->read_only) {
        /* Bits we do not maintain must be cleared before any write. */
        uint64_t keep = s->autoclear & QCOW2_AUTOCLEAR_KNOWN;
        if (s->autoclear != keep) {
            s->autoclear = keep;
            ret = qcow2_update_header(node, err);
            if (ret < 0)
                goto out;
        }
        /* Bitmaps are loaded and marked in use until close. */
        ret = qcow2_bitmaps_open_rw(node, err);
        if (ret < 0)
            goto out;
    }
out:
    free(hdr);
    free(ftable);
    if (ret < 0)
        free_state(s);
    return ret;
}

/* Release everything open allocated (also on a failed open). */
static void free_state(struct qcow2_state *s)
{
    qcow2_cache_release(&s->l2_cache);
    qcow2_cache_release(&s->refblock_cache);
    qimg_storage_close(s->data_file);
    s->data_file = NULL;
    free(s->data_file_name);
    s->data_file_name = NULL;
    free(s->l1_table);
    s->l1_table = NULL;
    free(s->refcount_table);
    s->refcount_table = NULL;
    free(s->unknown_ext);
    s->unknown_ext = NULL;
    qcow2_snapshots_free(s);
    qcow2_bitmaps_free(s);
    qcow2_crypto_close(s);
    if (s->crypto_rmw_lock_ready)
        pthread_mutex_destroy(&s->crypto_rmw_lock);
    s->crypto_rmw_lock_ready = false;
}

static void qcow2_close(struct qimg_image *node)
{
    struct qcow2_state *s = node->state;
    struct qimg_error err;

    /* After a fatal corruption event nothing more is written (QEMU drops
     * the node then). */
    if (!node->read_only && !qcow2_is_broken(node)) {
        /* Storing bitmaps allocates: before the caches are written. */
        pthread_mutex_lock(&node->lock);
        qcow2_bitmaps_close(node, &err);
        pthread_mutex_unlock(&node->lock);
        /* Once the caches are written the image is clean, whoever set
         * the bit (QEMU clears it on every writable close, the header
         * rewritten whole). */
        int l2 = qcow2_cache_flush(node, &s->l2_cache, &err), rb;
        if (l2 < 0)   /* QEMU reports each cache and still tries the next */
            qimg_message(QIMG_MSG_ERROR, "Failed to flush the L2 table cache: "
                         "%s\n", strerror(-l2));
        rb = qcow2_cache_flush(node, &s->refblock_cache, &err);
        if (rb < 0)
            qimg_message(QIMG_MSG_ERROR, "Failed to flush the refcount block "
                         "cache: %s\n", strerror(-rb));
        if (!l2 && !rb && (s->incompatible & QCOW2_INCOMPAT_DIRTY) &&
            node->file->ops->flush(node->file, &err) == 0) {
            s->incompatible &= ~QCOW2_INCOMPAT_DIRTY;
            s->dirty_set = false;
            qcow2_update_header(node, &err);
        }
    }
    if (s->l2_alloc_cond_ready)
        pthread_cond_destroy(&s->l2_alloc_cond);
    free_state(s);
}

/* Room qcow2_build_header may write into (see QCOW2_HEADER_BUF_EXTRA). */
static size_t header_buf_size(const struct qcow2_state *s)
{
    return (size_t)s->cluster_size + QCOW2_HEADER_BUF_EXTRA;
}

/* Append an extension; one that would not fit in the buffer (a name from
 * an option can be of any length) is only counted. */
static void put_ext(const struct qcow2_state *s, uint8_t *buf, size_t *off,
                    uint32_t type, const void *data, size_t len)
{
    size_t rec = 8 + ((len + 7u) & ~(size_t)7);

    if (len <= UINT32_MAX && rec <= header_buf_size(s) - QIMG_MIN(*off,
                                                      header_buf_size(s))) {
        qimg_st_be32(buf + *off, type);
        qimg_st_be32(buf + *off + 4, (uint32_t)len);
        memcpy(buf + *off + 8, data, len);
    }
    *off += rec;
}

/* The feature name table QEMU writes into every v3 image. */
static size_t feature_table(uint8_t *out)
{
    static const struct { uint8_t type, bit; const char *name; } f[] = {
        {0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
        {0, 3, "compression type"}, {0, 4, "extended L2 entries"},
        {1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"},
    };
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(f); i++) {
        memset(out + i * 48, 0, 48);
        out[i * 48] = f[i].type;
        out[i * 48 + 1] = f[i].bit;
        memcpy(out + i * 48 + 2, f[i].name, strlen(f[i].name));
    }
    return QIMG_ARRAY_SIZE(f) * 48;
}

/*
 * Serialise the header and its extensions into buf (one cluster).  Used by
 * open-time updates and by create.  Extension order as QEMU writes them.
 */
size_t qcow2_build_header(const struct qcow2_state *s, uint64_t size,
                          const char *backing, const char *backing_fmt,
                          uint8_t *buf, bool with_feature_table)
{
    size_t off;
    uint8_t ft[8 * 48];

    memset(buf, 0, s->cluster_size);
    qimg_st_be32(buf, QCOW2_MAGIC);
    qimg_st_be32(buf + 4, s->version);
    qimg_st_be32(buf + 20, s->cluster_bits);
    qimg_st_be64(buf + 24, size);
    qimg_st_be32(buf + 32, s->crypt_method);
    qimg_st_be32(buf + 36, s->l1_size);
    qimg_st_be64(buf + 40, s->l1_table_offset);
    qimg_st_be64(buf + 48, s->refcount_table_offset);
    qimg_st_be32(buf + 56, s->refcount_table_clusters);
    qimg_st_be32(buf + 60, s->nb_snapshots);
    qimg_st_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        uint32_t hl = QCOW2_V3_HEADER_LEN_CTYPE;
        qimg_st_be64(buf + 72, s->incompatible);
        qimg_st_be64(buf + 80, s->compatible);
        qimg_st_be64(buf + 88, s->autoclear);
        qimg_st_be32(buf + 96, s->refcount_order);
        qimg_st_be32(buf + 100, hl);
        buf[104] = s->compression_type;
        off = hl;
    } else {
        off = QCOW2_V2_HEADER_LEN;
    }
    if (backing_fmt && *backing_fmt)
        put_ext(s, buf, &off, QCOW2_EXT_BACKING_FMT, backing_fmt,
                strlen(backing_fmt));
    if (s->data_file_name && s->data_file_name[0])
        put_ext(s, buf, &off, QCOW2_EXT_DATA_FILE, s->data_file_name,
                strlen(s->data_file_name));
    if (s->has_crypto_ext)
        put_ext(s, buf, &off, QCOW2_EXT_CRYPTO, s->crypto_ext, 16);
    /* QEMU leaves the feature table out of images with clusters below 8 KiB. */
    if (with_feature_table && s->version >= 3 && s->cluster_size >= 8192)
        put_ext(s, buf, &off, QCOW2_EXT_FEATURE_TABLE, ft, feature_table(ft));
    if (s->has_bitmaps_ext)
        put_ext(s, buf, &off, QCOW2_EXT_BITMAPS, s->bitmaps_ext, 24);
    if (s->unknown_ext_len && off + s->unknown_ext_len + 8 <= s->cluster_size) {
        memcpy(buf + off, s->unknown_ext, s->unknown_ext_len);
        off += s->unknown_ext_len;
    }
    off += 8;   /* end-of-extensions marker (zeroes) */
    if (backing && *backing) {
        size_t bl = strlen(backing);
        if (off <= s->cluster_size && bl <= header_buf_size(s) - off) {
            qimg_st_be64(buf + 8, off);
            qimg_st_be32(buf + 16, (uint32_t)bl);
            memcpy(buf + off, backing, bl);
        }
        off += bl;
    }
    return off;
}

int qcow2_update_header(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    /* Room past the cluster: extensions are measured after building. */
    uint8_t *buf = calloc(1, s->cluster_size + QCOW2_HEADER_BUF_EXTRA);
    size_t len;
    int ret;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    len = qcow2_build_header(s, node->size, node->backing_name, node->backing_fmt,
                             buf, s->has_feature_table || s->version >= 3);
    if (len > s->cluster_size) {
        free(buf);
        return qimg_error_set(err, -ENOSPC, "Header extensions do not fit into "
                              "the first cluster");
    }
    /* The whole cluster, as QEMU writes it: bytes of a longer former
     * header (a dropped extension, a v3 header after a downgrade) must
     * not stay behind the end marker. */
    ret = node->file->ops->pwrite(node->file, 0, s->cluster_size, buf, err);
    free(buf);
    if (ret < 0)
        return ret;
    s->header_needs_update = false;
    return 0;
}

int qcow2_set_dirty(struct qimg_image *node, bool dirty, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[8];
    uint64_t v;
    int ret;

    if (s->version < 3)
        return 0;
    v = dirty ? (s->incompatible | QCOW2_INCOMPAT_DIRTY)
              : (s->incompatible & ~QCOW2_INCOMPAT_DIRTY);
    if (!dirty) {
        /* Everything the dirty bit protected must be on disk first. */
        ret = node->file->ops->flush(node->file, err);
        if (ret < 0)
            return ret;
    }
    qimg_st_be64(be, v);
    ret = node->file->ops->pwrite(node->file, 72, 8, be, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    if (ret < 0)
        return ret;
    s->incompatible = v;
    s->dirty_set = dirty;
    return 0;
}

int qcow2_mark_corrupt(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[8];
    if (s->version < 3 || node->read_only)
        return 0;
    s->incompatible |= QCOW2_INCOMPAT_CORRUPT;
    qimg_st_be64(be, s->incompatible);
    node->file->ops->pwrite(node->file, 72, 8, be, err);
    return node->file->ops->flush(node->file, err);
}

static int qcow2_flush(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&node->lock);
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    pthread_mutex_unlock(&node->lock);
    if (!ret && s->data_file)
        ret = s->data_file->ops->flush(s->data_file, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret;
}

static int qcow2_get_info(struct qimg_image *node, struct qimg_info *info,
                          struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    json_t *data = json_object(), *spec = json_object();

    info->cluster_size = (uint32_t)s->cluster_size;
    info->dirty = (s->incompatible & QCOW2_INCOMPAT_DIRTY) != 0;
    info->encrypted = s->crypt_method != 0;
    json_object_set_new(data, "compat",
                        json_string(s->version == 2 ? "0.10" : "1.1"));
    json_object_set_new(data, "compression-type",
                        json_string(s->compression_type == QCOW2_COMPRESSION_ZSTD
                                        ? "zstd" : "zlib"));
    if (s->version >= 3)
        json_object_set_new(data, "lazy-refcounts",
                            json_boolean(s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS));
    if (s->nb_bitmaps)
        json_object_set_new(data, "bitmaps", qcow2_bitmaps_info(s));
    if (s->crypto)
        json_object_set_new(data, "encrypt", qcow2_crypto_info(s));
    json_object_set_new(data, "refcount-bits", json_integer(s->refcount_bits));
    if (s->version >= 3) {
        json_object_set_new(data, "corrupt",
                            json_boolean(s->incompatible & QCOW2_INCOMPAT_CORRUPT));
        if (s->data_file_name)   /* even empty, as QEMU shows it */
            json_object_set_new(data, "data-file", json_string(s->data_file_name));
        if (s->incompatible & QCOW2_INCOMPAT_DATA_FILE)
            json_object_set_new(data, "data-file-raw",
                                json_boolean(s->autoclear &
                                             QCOW2_AUTOCLEAR_DATA_FILE_RAW));
        json_object_set_new(data, "extended-l2",
                            json_boolean(s->incompatible & QCOW2_INCOMPAT_EXTL2));
    }
    json_object_set_new(spec, "type", json_string("qcow2"));
    json_object_set_new(spec, "data", data);
    info->format_specific_json = json_dumps(spec, JSON_PRESERVE_ORDER);
    json_decref(spec);
    return info->format_specific_json ? 0 : qimg_error_set(err, -ENOMEM,
                                                           "Out of memory");
}

static int qcow2_shrink(struct qimg_image *node, uint64_t size,
                        struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qimg_error terr = {0};
    uint64_t end;
    int64_t fsize;
    int ret = qcow2_shrink_tail(node, size, err);

    if (ret < 0)
        return ret;
    /* Give back the file's tail past the last used cluster. */
    fsize = node->file->ops->get_size(node->file);
    if (fsize < 0)
        return qimg_error_set(err, (int)fsize, "Failed to inquire current file "
                              "length: %s", strerror((int)-fsize));
    pthread_mutex_lock(&node->lock);
    ret = qcow2_last_used_end(node, (uint64_t)fsize, &end, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0) {
        qimg_error_prefix(err, "Failed to find the last cluster: ");
        return ret;
    }
    if (end < (uint64_t)fsize &&
        node->file->ops->truncate(node->file, end, QIMG_PREALLOC_OFF, &terr) < 0)
        qimg_message(QIMG_MSG_WARNING, "Failed to truncate the tail of the "
                     "image: %s\n", terr.msg);
    (void)s;
    return 0;
}

/* Size changes that reach an external data file (QEMU forwards them when
 * nothing is preallocated: grow and shrink alike). */
static int resize_data_file(struct qimg_image *node, uint64_t size,
                            struct qimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (!s->data_file)
        return 0;
    return s->data_file->ops->truncate(s->data_file, size, QIMG_PREALLOC_OFF,
                                       err);
}

static int qcow2_truncate(struct qimg_image *node, uint64_t size, bool exact,
                          enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old = node->size;
    int ret;

    /* Version 3 snapshots record their own disk size, so that applying
     * one restores it; version 2 ones do not. */
    if (s->nb_snapshots && s->version < 3)
        return qimg_error_set(err, -ENOTSUP, "Can't resize a v2 image which "
                              "has snapshots");
    if (size % 512)
        return qimg_error_set(err, -EINVAL, "The new size must be a multiple of "
                              "512");
    ret = qcow2_bitmaps_can_resize(node, err);
    if (ret < 0)
        return ret;
    if (size < old) {
        if (prealloc != QIMG_PREALLOC_OFF)
            return qimg_error_set(err, -ENOTSUP, "Preallocation can't be used "
                                  "for shrinking an image");
        ret = qcow2_shrink(node, size, err);
    } else {
        pthread_mutex_lock(&node->lock);
        ret = qcow2_grow_l1(node, qcow2_l1_size_for(size, s->cluster_bits,
                                                    s->l2_bits), err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)   /* QEMU's wording, whatever the cause */
            return qimg_error_set(err, ret, "Failed to grow the L1 table: %s",
                                  strerror(-ret));
        /* A raw data file stays readable as the image: the new area gets
         * its metadata at once. */
        if (prealloc == QIMG_PREALLOC_OFF && s->data_file &&
            (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
            prealloc = QIMG_PREALLOC_METADATA;
    }
    if (!ret && prealloc == QIMG_PREALLOC_OFF)
        ret = resize_data_file(node, size, err);
    else if (!ret)
        ret = qcow2_preallocate(node, old, size, prealloc, err);
    if (!ret) {
        /* Only the size field changes (QEMU writes no more of the
         * header: the rest of its cluster may be a hole). */
        uint8_t be[8];
        qimg_st_be64(be, size);
        ret = node->file->ops->pwrite(node->file, 24, 8, be, err);
        if (!ret)
            ret = node->file->ops->flush(node->file, err);
        if (ret < 0)
            qimg_error_prefix(err, "Failed to update the image size: ");
        else
            node->size = size;
    }
    (void)exact;
    return ret < 0 ? ret : qcow2_bitmaps_resized(node, err);
}

static const char *const qcow2_strong_opts[] = {"encrypt.key-secret", NULL};

const struct qimg_format qimg_format_qcow2 = {
    .name = "qcow2",
    .supports_backing = true,
    .description = "QEMU copy-on-write image, version 2",
    .state_size = sizeof(struct qcow2_state),
    .create_opts = qcow2_create_opts,
    .n_create_opts = QCOW2_N_CREATE_OPTS,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = qcow2_create,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite_marked,
    .pwrite_compressed = qcow2_pwrite_compressed_marked,
    .compress_cluster = qcow2_compress_cluster,
    .pwrite_compressed_data = qcow2_pwrite_compressed_data_marked,
    .pwrite_zeroes = qcow2_pwrite_zeroes_marked,
    .discard = qcow2_discard_marked,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .truncate = qcow2_truncate,
    .get_info = qcow2_get_info,
    .measure = qcow2_measure,
    .check = qcow2_check,
    .snapshot = &qcow2_snapshot_ops,
    .amend_opts = qcow2_amend_opts,
    .n_amend_opts = QCOW2_N_AMEND_OPTS,
    .amend = qcow2_amend,
    .change_backing = qcow2_change_backing,
    .make_empty = qcow2_make_empty,
    .bitmap = &qcow2_bitmap_ops,
    .has_zero_init = qcow2_has_zero_init,
    .strong_opts = qcow2_strong_opts,
};
