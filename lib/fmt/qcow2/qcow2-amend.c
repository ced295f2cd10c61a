/*
 * qcow2-amend.c - changing options of an existing qcow2 image (qemu-img
 * amend): compat level up- and downgrade (expanding zero clusters for v2),
 * refcount width, lazy refcounts, data file name and raw flag, size.
 * Runs with no other request on the image.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/qcow2/qcow2.h"

/* Options amend understands, in the order qemu-img lists them (sorted). */
const struct qimg_opt_desc qcow2_amend_opts[QCOW2_N_AMEND_OPTS] = {
    {"size", QIMG_OPT_SIZE, "Virtual disk size", NULL},
    {"compat", QIMG_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])",
     NULL},
    {"backing_file", QIMG_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", QIMG_OPT_STRING, "Image format of the base image", NULL},
    {"data_file", QIMG_OPT_STRING, "File name of an external data file", NULL},
    {"data_file_raw", QIMG_OPT_BOOL, "The external data file must stay valid "
     "as a raw image", NULL},
    {"encrypt.keyslot", QIMG_OPT_NUMBER, "Select a single keyslot to modify "
     "explicitly", NULL},
    {"encrypt.state", QIMG_OPT_STRING, "Select new state of affected keyslots "
     "(active/inactive)", NULL},
    {"encrypt.old-secret", QIMG_OPT_STRING, "Select all keyslots that match "
     "this password", NULL},
    {"encrypt.new-secret", QIMG_OPT_STRING, "New secret to set in the matching "
     "keyslots. Empty string to erase", NULL},
    {"encrypt.iter-time", QIMG_OPT_NUMBER, "Time to spend in PBKDF in "
     "milliseconds", NULL},
    {"lazy_refcounts", QIMG_OPT_BOOL, "Postpone refcount updates", NULL},
    {"refcount_bits", QIMG_OPT_NUMBER, "Width of a reference count entry in "
     "bits", NULL},
};

/* Options as set, in the order QEMU handles them. */
struct amend_request {
    int version;            /* the version after amend */
    bool encryption;        /* encrypt.* given */
    const char *backing_file, *backing_fmt;
    const char *data_file;
    bool data_file_raw;
    bool lazy;
    uint32_t refcount_bits;
    uint64_t size;          /* 0: unchanged */
};

static int parse_request(struct qimg_image *node, const struct qimg_opts *opts,
                         struct amend_request *r, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *v;
    bool b;
    int ret;

    memset(r, 0, sizeof(*r));
    r->version = (int)s->version;
    r->lazy = s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS;
    r->data_file_raw = s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    r->refcount_bits = s->refcount_bits;
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        if (strncmp(qimg_opts_key(opts, i), "encrypt.", 8))
            continue;
        ret = qcow2_crypto_amend_check(s, err);
        if (ret < 0)
            return ret;
        r->encryption = true;
    }
    if (qimg_opts_get(opts, "size")) {
        ret = qimg_opts_get_size(opts, "size", 0, &r->size, err);
        if (ret < 0)
            return ret;
    }
    if ((v = qimg_opts_get(opts, "compat"))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
            r->version = 2;
        else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
            r->version = 3;
        else
            return qimg_error_set(err, -EINVAL, "Unknown compatibility level %s",
                                  v);
    }
    r->backing_file = qimg_opts_get(opts, "backing_file");
    r->backing_fmt = qimg_opts_get(opts, "backing_fmt");
    if ((v = qimg_opts_get(opts, "data_file"))) {
        if (!(s->incompatible & QCOW2_INCOMPAT_DATA_FILE))
            return qimg_error_set(err, -EINVAL, "data-file can only be set for "
                                  "images that use an external data file");
        r->data_file = v;
    }
    if (qimg_opts_get(opts, "data_file_raw")) {
        ret = qimg_opts_get_bool(opts, "data_file_raw", r->data_file_raw, &b, err);
        if (ret < 0)
            return ret;
        if (b && !(s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
            return qimg_error_set(err, -EINVAL, "data-file-raw cannot be set on "
                                  "existing images");
        r->data_file_raw = b;
    }
    if (qimg_opts_get(opts, "lazy_refcounts")) {
        ret = qimg_opts_get_bool(opts, "lazy_refcounts", r->lazy, &b, err);
        if (ret < 0)
            return ret;
        r->lazy = b;
    }
    if ((v = qimg_opts_get(opts, "refcount_bits"))) {
        uint64_t bits;
        if (qimg_parse_size(v, &bits, NULL) < 0 || !bits || bits > 64 ||
            !qimg_is_pow2(bits))
            return qimg_error_set(err, -EINVAL, "Refcount width must be a power "
                                  "of two and may not exceed 64 bits");
        r->refcount_bits = (uint32_t)bits;
    }
    return 0;
}

/*
 * Progress over the operations of one amend, as QEMU reports it: each
 * operation reports its own work done and total; operations still to
 * come are projected to take as much as those done so far.
 */
enum amend_op { OP_NONE, OP_UPGRADE, OP_REFCOUNT, OP_DOWNGRADE };

struct amend_progress {
    void (*progress)(void *, double);
    void *opaque;
    enum amend_op current, last;
    int total, completed;
    uint64_t done_before, last_work;
};

static void amend_status(void *opaque, uint64_t done, uint64_t work)
{
    struct amend_progress *p = opaque;
    uint64_t cur, projected;

    if (p->current != p->last) {
        if (p->last != OP_NONE) {
            p->done_before += p->last_work;
            p->completed++;
        }
        p->last = p->current;
    }
    if (p->total <= 0 || p->completed >= p->total || !p->progress)
        return;
    p->last_work = work;
    cur = p->done_before + work;
    projected = cur * (uint64_t)(p->total - p->completed - 1) /
                (uint64_t)(p->completed + 1);
    if (cur + projected)
        p->progress(p->opaque, (float)(100.f * (float)(p->done_before + done) /
                                       (float)(cur + projected)));
}

/* ---- zero cluster expansion (downgrade to v2) ------------------------- */

/*
 * v2 has no zero flag (QEMU's expand_zero_clusters_in_l1): a zero cluster
 * without a host cluster becomes unallocated when no backing file could
 * show through, else gets a new cluster (counted once per reference of a
 * shared table) filled with zeroes; one with a host cluster keeps it,
 * zeroed.  The active tables go through the cache, the snapshots' tables
 * are rewritten in place.  *visited counts L1 entries for the progress.
 */
static int expand_zero_clusters_in(struct qimg_image *node, uint64_t *l1,
                                   uint32_t l1_size, bool active,
                                   uint64_t *visited, uint64_t total,
                                   struct amend_progress *prog,
                                   struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *buf = active ? NULL : malloc(s->cluster_size), *l2;
    int ret = 0;

    if (!active && !buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < l1_size && !ret; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK, l2rc;
        bool dirty = false;

        if (!l2off)
            goto next;
        ret = qcow2_check_l2_offset(node, l2off, i, err);
        if (!ret)
            ret = qcow2_get_refcount(node, l2off >> s->cluster_bits, &l2rc, err);
        if (ret < 0)
            break;
        if (active) {
            ret = qcow2_cache_get(node, &s->l2_cache, l2off, &l2, err);
        } else {
            l2 = buf;
            ret = node->file->ops->pread(node->file, l2off, s->cluster_size, l2,
                                         err);
        }
        for (uint64_t j = 0; !ret && j < qcow2_l2_entries(s); j++) {
            uint64_t e = qimg_ld_be64(l2 + j * 8);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            bool plain = !host;

            if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO))
                continue;
            if (plain) {
                int64_t h;
                if (!node->backing) {
                    qimg_st_be64(l2 + j * 8, 0);
                    dirty = true;
                    continue;
                }
                h = qcow2_alloc_clusters(node, 1, err);
                if (h < 0) {
                    ret = (int)h;
                    break;
                }
                host = (uint64_t)h;
                if (l2rc > 1) {
                    /* A shared table: one reference per table user. */
                    ret = qcow2_update_refcount(node, host, 1,
                                                (int64_t)(l2rc - 1), err);
                    if (ret < 0) {
                        qcow2_free_clusters_or_warn(node, host,
                                                    s->cluster_size, false);
                        break;
                    }
                }
                if (active)   /* the allocation may have evicted it */
                    ret = qcow2_cache_get(node, &s->l2_cache, l2off, &l2, err);
                if (ret < 0)
                    break;
            }
            ret = qcow2_check_cluster_offset(node, host, l2off, j, err);
            if (!ret)
                ret = qcow2_check_data_write(node, host, s->cluster_size, err);
            if (!ret) {
                struct qimg_storage *st = qcow2_data_storage(node);
                ret = st->ops->pwrite_zeroes
                          ? st->ops->pwrite_zeroes(st, host, s->cluster_size, 0,
                                                   err)
                          : -ENOTSUP;
                if (ret == -ENOTSUP) {
                    uint8_t *z = calloc(1, s->cluster_size);
                    ret = z ? st->ops->pwrite(st, host, s->cluster_size, z, err)
                            : qimg_error_set(err, -ENOMEM, "Out of memory");
                    free(z);
                }
            }
            if (ret < 0) {
                if (plain)
                    qcow2_free_clusters_or_warn(node, host, s->cluster_size,
                                                false);
                break;
            }
            qimg_st_be64(l2 + j * 8, host | (l2rc == 1 ? QCOW2_OFLAG_COPIED : 0));
            dirty = true;
        }
        if (!ret && dirty) {
            if (active) {
                qcow2_cache_mark_dirty(&s->l2_cache, l2);
                /* Written after the refcounts it depends on. */
                ret = qcow2_cache_flush(node, &s->refblock_cache, err);
            } else {
                ret = qcow2_overlap_check(node, QCOW2_OL_INACTIVE_L2 |
                                                    QCOW2_OL_ACTIVE_L2,
                                          l2off, s->cluster_size, err);
                if (!ret)
                    ret = qcow2_write_l2_table(node, l2off, l2, err);
            }
        }
        if (ret < 0)
            break;
next:
        (*visited)++;
        amend_status(prog, *visited, total);
    }
    free(buf);
    return ret;
}

static int expand_zero_clusters(struct qimg_image *node,
                                struct amend_progress *prog,
                                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t total = s->l1_size, visited = 0;
    int ret;

    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        total += s->snapshots[i].l1_size;
    ret = expand_zero_clusters_in(node, s->l1_table, s->l1_size, true, &visited,
                                  total, prog, err);
    /* Snapshot tables may point at active L2 tables: those must be on
     * disk, and out of the cache, before they are changed there. */
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    for (size_t i = 0; !ret && i < s->l2_cache.n; i++)
        qcow2_cache_discard(&s->l2_cache, s->l2_cache.e[i].offset);
    for (uint32_t i = 0; !ret && i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t *l1;
        ret = qcow2_snapshot_l1_check(s, sn, err);
        if (ret < 0) {
            /* QEMU reports the reason on a line of its own. */
            qimg_message(QIMG_MSG_ERROR, "%s\n", err->msg);
            break;
        }
        ret = qcow2_snapshot_read_l1(node, sn, &l1, err);
        if (!ret)
            ret = expand_zero_clusters_in(node, l1, sn->l1_size, false,
                                          &visited, total, prog, err);
        free(l1);
    }
    return ret;
}

/* Whether any guest cluster is compressed (QEMU looks at the active
 * mapping only). */
static int has_compressed_clusters(struct qimg_image *node,
                                   struct qimg_error *err)
{
    for (uint64_t off = 0; off < node->size;) {
        struct qcow2_mapping m;
        int ret;
        pthread_mutex_lock(&node->lock);
        ret = qcow2_get_mapping(node, off, node->size - off, &m, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
        if (m.type == QCOW2_CLUSTER_COMPRESSED)
            return 1;
        off += m.bytes;
    }
    return 0;
}

/* Mark a dirty image clean (all counts are on disk), as QEMU does. */
static int mark_clean(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (!(s->incompatible & QCOW2_INCOMPAT_DIRTY))
        return 0;
    s->incompatible &= ~QCOW2_INCOMPAT_DIRTY;
    s->dirty_set = false;
    ret = qcow2_cache_flush(node, &s->l2_cache, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    if (!ret)
        ret = node->file->ops->flush(node->file, err);
    return ret < 0 ? ret : qcow2_update_header(node, err);
}

static int header_or(struct qimg_image *node, const char *what,
                     struct qimg_error *err)
{
    int ret = qcow2_update_header(node, err);
    if (ret < 0)
        qimg_error_set(err, ret, "%s: %s", what, strerror(-ret));
    return ret;
}

/* Down to version 2, removing what it cannot hold; QEMU's checks and
 * their order. */
static int downgrade(struct qimg_image *node, struct amend_progress *prog,
                     struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (s->refcount_order != 4)
        return qimg_error_set(err, -ENOTSUP, "compat=0.10 requires "
                              "refcount_bits=16");
    if (s->incompatible & QCOW2_INCOMPAT_DATA_FILE)
        return qimg_error_set(err, -ENOTSUP, "Cannot downgrade an image with a "
                              "data file");
    /* Other v2 programs would not know what the v3 fields mean. */
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (s->snapshots[i].vm_state_size > UINT32_MAX ||
            s->snapshots[i].disk_size != node->size)
            return qimg_error_set(err, -ENOTSUP, "Internal snapshots prevent "
                                  "downgrade of image");
    ret = mark_clean(node, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to make the image clean: %s",
                              strerror(-ret));
    if (s->incompatible & ~QCOW2_INCOMPAT_COMPRESSION)
        return qimg_error_set(err, -ENOTSUP, "Cannot downgrade an image with "
                              "incompatible features 0x%llx set",
                              (unsigned long long)(s->incompatible &
                                                   ~QCOW2_INCOMPAT_COMPRESSION));
    s->compatible = 0;
    s->autoclear = 0;
    pthread_mutex_lock(&node->lock);
    ret = expand_zero_clusters(node, prog, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to turn zero into data "
                              "clusters: %s", strerror(-ret));
    if (s->incompatible & QCOW2_INCOMPAT_COMPRESSION) {
        ret = has_compressed_clusters(node, err);
        if (ret < 0)
            return qimg_error_set(err, -EINVAL, "Failed to check block status");
        if (ret)
            return qimg_error_set(err, -ENOTSUP, "Cannot downgrade an image "
                                  "with zstd compression type and existing "
                                  "compressed clusters");
        /* Nothing compressed: the default type will do. */
        s->incompatible &= ~QCOW2_INCOMPAT_COMPRESSION;
        s->compression_type = QCOW2_COMPRESSION_ZLIB;
    }
    s->version = 2;
    s->header_length = QCOW2_V2_HEADER_LEN;
    ret = qcow2_update_header(node, err);
    if (ret < 0) {
        s->version = 3;
        s->header_length = QCOW2_V3_HEADER_LEN_CTYPE;
        return qimg_error_set(err, ret, "Failed to update the image header: %s",
                              strerror(-ret));
    }
    return 0;
}

/* Up to version 3: snapshot entries without the extra data v3 requires
 * are written again first. */
static int upgrade(struct qimg_image *node, struct amend_progress *prog,
                   struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool rewrite = false;
    int ret;

    amend_status(prog, 0, 2);
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        rewrite |= s->snapshots[i].extra_size < 16;
    if (rewrite) {
        pthread_mutex_lock(&node->lock);
        qcow2_discards_begin(node);
        ret = qcow2_snapshot_write_table(node, err);
        qcow2_discards_end(node);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return qimg_error_set(err, ret, "Failed to update the snapshot "
                                  "table: %s", strerror(-ret));
    }
    amend_status(prog, 1, 2);
    s->version = 3;
    s->header_length = QCOW2_V3_HEADER_LEN_CTYPE;
    s->has_feature_table = true;
    ret = qcow2_update_header(node, err);
    if (ret < 0) {
        s->version = 2;
        s->header_length = QCOW2_V2_HEADER_LEN;
        return qimg_error_set(err, ret, "Failed to update the image header: %s",
                              strerror(-ret));
    }
    amend_status(prog, 2, 2);
    return 0;
}

static int set_lazy(struct qimg_image *node, bool on, int version,
                    struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (on == !!(s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS))
        return 0;
    if (on) {
        if (version < 3)
            return qimg_error_set(err, -EINVAL, "Lazy refcounts only supported "
                                  "with compatibility level 1.1 and above (use "
                                  "compat=1.1 or greater)");
        s->compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
        ret = header_or(node, "Failed to update the image header", err);
        if (ret < 0)
            s->compatible &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        return ret;
    }
    ret = mark_clean(node, err);
    if (ret < 0)
        return qimg_error_set(err, ret, "Failed to make the image clean: %s",
                              strerror(-ret));
    s->compatible &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    ret = header_or(node, "Failed to update the image header", err);
    if (ret < 0)
        s->compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    return ret;
}

static bool names_differ(const char *a, const char *b)
{
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

static int resize(struct qimg_image *node, uint64_t size, struct qimg_error *err)
{
    int ret;

    /* Take the resize permission just for this, as QEMU does. */
    if (node->file->ops->set_perm) {
        ret = node->file->ops->set_perm(node->file, node->flags |
                                                        QIMG_OPEN_RESIZE, err);
        if (ret < 0) {
            node->file->ops->set_perm(node->file, node->flags, NULL);
            return ret;
        }
    }
    ret = node->fmt->truncate(node, size, true, QIMG_PREALLOC_OFF, err);
    if (node->file->ops->set_perm)
        node->file->ops->set_perm(node->file, node->flags, NULL);
    return ret;
}

/* QEMU's order: upgrade, encryption, refcount width, data file settings
 * and a header update, backing file (refused if changed), lazy
 * refcounts, size, downgrade last. */
int qcow2_amend(struct qimg_image *node, const struct qimg_opts *opts,
                bool force, void (*progress)(void *, double), void *opaque,
                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct amend_progress prog = {.progress = progress, .opaque = opaque};
    struct amend_request r;
    int old_version = (int)s->version, ret;

    ret = parse_request(node, opts, &r, err);
    if (ret < 0)
        return ret;
    prog.total = (r.version != old_version) +
                 (r.refcount_bits != s->refcount_bits) + r.encryption;
    if (r.version > old_version) {
        prog.current = OP_UPGRADE;
        ret = upgrade(node, &prog, err);
        if (ret < 0)
            return ret;
    }
    /* Key slots after an upgrade, before the refcounts (QEMU's order). */
    if (r.encryption) {
        ret = qcow2_crypto_amend(node, opts, force, err);
        if (ret < 0)
            return ret;
    }
    if (r.refcount_bits != s->refcount_bits) {
        if (r.version < 3 && r.refcount_bits != 16)
            return qimg_error_set(err, -EINVAL, "Refcount widths other than 16 "
                                  "bits require compatibility level 1.1 or "
                                  "above (use compat=1.1 or greater)");
        prog.current = OP_REFCOUNT;
        pthread_mutex_lock(&node->lock);
        ret = qcow2_change_refcount_order(node,
                                          (uint32_t)__builtin_ctz(r.refcount_bits),
                                          amend_status, &prog, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
    }
    /* The raw flag first: it rules out backing files. */
    if (r.data_file_raw)
        s->autoclear |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    else
        s->autoclear &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    if (r.data_file) {
        char *name = *r.data_file ? strdup(r.data_file) : NULL;
        if (*r.data_file && !name)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        free(s->data_file_name);
        s->data_file_name = name;
    }
    ret = header_or(node, "Failed to update the image header", err);
    if (ret < 0)
        return ret;
    if ((r.backing_file || r.backing_fmt) &&
        (names_differ(r.backing_file, node->backing_name[0] ? node->backing_name
                                                            : NULL) ||
         names_differ(r.backing_fmt, node->backing_fmt[0] ? node->backing_fmt
                                                          : NULL)))
        return qimg_error_set(err, -EINVAL, "Cannot amend the backing file\n"
                              "You can use 'qemu-img rebase' instead.");
    ret = set_lazy(node, r.lazy, r.version, err);
    if (ret < 0)
        return ret;
    if (r.size) {
        ret = resize(node, r.size, err);
        if (ret < 0)
            return ret;
    }
    if (r.version < old_version) {
        prog.current = OP_DOWNGRADE;
        ret = downgrade(node, &prog, err);
        if (ret < 0)
            return ret;
    }
    return node->file->ops->flush(node->file, err);
}
