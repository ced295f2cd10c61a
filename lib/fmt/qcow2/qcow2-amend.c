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

struct amend_request {
    int version;            /* 0: unchanged */
    int refcount_order;     /* -1: unchanged */
    int lazy;               /* -1: unchanged, else 0/1 */
    const char *data_file;
    int data_file_raw;      /* -1: unchanged */
    bool has_size;
    uint64_t size;
    bool encrypt;           /* encrypt.* key slot changes */
};

static int parse_request(struct qimg_image *node, const struct qimg_opts *opts,
                         struct amend_request *r, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *v;
    bool b;
    int ret;

    memset(r, 0, sizeof(*r));
    r->refcount_order = -1;
    r->lazy = -1;
    r->data_file_raw = -1;
    if ((v = qimg_opts_get(opts, "compat"))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
            r->version = 2;
        else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
            r->version = 3;
        else
            return qimg_error_set(err, -EINVAL, "Unknown compatibility level %s",
                                  v);
    }
    if (qimg_opts_get(opts, "backing_file") || qimg_opts_get(opts, "backing_fmt"))
        return qimg_error_set(err, -ENOTSUP, "Cannot amend the backing file\n"
                              "You can use 'qemu-img rebase' instead.");
    if (qimg_opts_get(opts, "lazy_refcounts")) {
        ret = qimg_opts_get_bool(opts, "lazy_refcounts", false, &b, err);
        if (ret < 0)
            return ret;
        r->lazy = b;
    }
    if ((v = qimg_opts_get(opts, "refcount_bits"))) {
        uint64_t bits;
        if (qimg_parse_size(v, &bits, NULL) < 0 || !qimg_is_pow2(bits) ||
            bits > 64)
            return qimg_error_set(err, -EINVAL, "Refcount width must be a power "
                                  "of two and may not exceed 64 bits");
        r->refcount_order = __builtin_ctzll(bits);
    }
    if ((v = qimg_opts_get(opts, "data_file"))) {
        if (!(s->incompatible & QCOW2_INCOMPAT_DATA_FILE))
            return qimg_error_set(err, -EINVAL, "data-file can only be set for "
                                  "images that use an external data file");
        r->data_file = v;
    }
    if (qimg_opts_get(opts, "data_file_raw")) {
        ret = qimg_opts_get_bool(opts, "data_file_raw", false, &b, err);
        if (ret < 0)
            return ret;
        if (b && !(s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
            return qimg_error_set(err, -EINVAL, "data-file-raw cannot be set on "
                                  "existing images");
        r->data_file_raw = b;
    }
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        if (!strncmp(qimg_opts_key(opts, i), "encrypt.", 8)) {
            ret = qcow2_crypto_amend_check(s, err);
            if (ret < 0)
                return ret;
            r->encrypt = true;
        }
    }
    if (qimg_opts_get(opts, "size")) {
        ret = qimg_opts_get_size(opts, "size", 0, &r->size, err);
        if (ret < 0)
            return ret;
        r->has_size = true;
    }
    /* Cross checks against the resulting compat level. */
    int version = r->version ? r->version : (int)s->version;
    int order = r->refcount_order >= 0 ? r->refcount_order : (int)s->refcount_order;
    if (version < 3 && order != 4) {
        if (r->refcount_order >= 0)
            return qimg_error_set(err, -EINVAL, "Refcount widths other than 16 "
                                  "bits require compatibility level 1.1 or above "
                                  "(use compat=1.1 or greater)");
        return qimg_error_set(err, -EINVAL, "compat=0.10 requires "
                              "refcount_bits=16");
    }
    if (version < 3 && r->lazy == 1)
        return qimg_error_set(err, -EINVAL, "Lazy refcounts only supported with "
                              "compatibility level 1.1 and above (use compat=1.1 "
                              "or greater)");
    return 0;
}

/* ---- zero cluster expansion (downgrade to v2) ------------------------- */

/*
 * v2 has no zero flag: zero clusters become unallocated when nothing below
 * could show through, or real clusters holding zeroes.  Works on one L1
 * table (active or a snapshot's), rewriting its L2 tables in place.
 */
static int expand_zero_clusters_in(struct qimg_image *node, uint64_t *l1,
                                   uint32_t l1_size, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2 = malloc(s->cluster_size), *zero = calloc(1, s->cluster_size);
    int ret = 0;

    if (!l2 || !zero) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < l1_size && !ret; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        bool dirty = false;
        if (!l2off)
            continue;
        ret = qcow2_cache_flush(node, &s->l2_cache, err);
        if (ret < 0)
            break;
        qcow2_cache_discard(&s->l2_cache, l2off);
        ret = node->file->ops->pread(node->file, l2off, s->cluster_size, l2, err);
        if (ret < 0)
            break;
        for (uint64_t j = 0; j < qcow2_l2_entries(s) && !ret; j++) {
            uint64_t e = qimg_ld_be64(l2 + j * 8), host;
            if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO))
                continue;
            host = e & QCOW2_L2E_OFFSET_MASK;
            if (!host && !node->backing_name[0]) {
                e = 0;   /* unallocated reads as zero too */
            } else {
                if (!host) {
                    int64_t h = qcow2_alloc_clusters(node, 1, err);
                    if (h < 0) {
                        ret = (int)h;
                        break;
                    }
                    host = (uint64_t)h;
                    e = host | QCOW2_OFLAG_COPIED;
                }
                ret = node->file->ops->pwrite(node->file, host, s->cluster_size,
                                              zero, err);
                e &= ~QCOW2_OFLAG_ZERO;
            }
            qimg_st_be64(l2 + j * 8, e);
            dirty = true;
        }
        if (!ret && dirty) {
            ret = qcow2_write_l2_table(node, l2off, l2, err);
        }
    }
out:
    free(l2);
    free(zero);
    return ret;
}

static int expand_zero_clusters(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = expand_zero_clusters_in(node, s->l1_table, s->l1_size, err);

    for (uint32_t i = 0; !ret && i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t *l1 = calloc(QIMG_MAX(sn->l1_size, 1u), 8);
        if (!l1)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        ret = node->file->ops->pread(node->file, sn->l1_table_offset,
                                     (size_t)sn->l1_size * 8, l1, err);
        for (uint32_t k = 0; !ret && k < sn->l1_size; k++)
            l1[k] = be64toh(l1[k]);
        if (!ret)
            ret = expand_zero_clusters_in(node, l1, sn->l1_size, err);
        free(l1);
    }
    return ret;
}

static int downgrade(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t other;
    int ret;

    if (s->incompatible & QCOW2_INCOMPAT_DATA_FILE)
        return qimg_error_set(err, -ENOTSUP, "Cannot downgrade an image with a "
                              "data file");
    other = s->incompatible & ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_COMPRESSION);
    if (other)
        return qimg_error_set(err, -ENOTSUP, "Cannot downgrade an image with "
                              "incompatible features 0x%llx set",
                              (unsigned long long)other);
    if (s->refcount_order != 4)
        return qimg_error_set(err, -ENOTSUP, "compat=0.10 requires "
                              "refcount_bits=16");
    /* A dirty image must be consistent before the bit disappears. */
    if (s->incompatible & QCOW2_INCOMPAT_DIRTY) {
        struct qimg_check res = {0};
        ret = qcow2_check(node, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS,
                          &res, err);
        if (ret < 0)
            return ret;
    }
    pthread_mutex_lock(&node->lock);
    ret = expand_zero_clusters(node, err);
    if (!ret)
        ret = qcow2_cache_flush(node, &s->refblock_cache, err);
    pthread_mutex_unlock(&node->lock);
    if (ret < 0)
        return ret;
    s->version = 2;
    s->incompatible = s->compatible = s->autoclear = 0;
    s->dirty_set = false;
    s->header_length = QCOW2_V2_HEADER_LEN;
    return qcow2_update_header(node, err);
}

static int upgrade(struct qimg_image *node, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    s->version = 3;
    s->header_length = QCOW2_V3_HEADER_LEN_CTYPE;
    s->has_feature_table = true;
    return qcow2_update_header(node, err);
}

static int set_lazy(struct qimg_image *node, bool on, struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (on == !!(s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS))
        return 0;
    if (!on && s->dirty_set) {
        /* Refcounts are always kept up to date here: just mark clean. */
        ret = qcow2_set_dirty(node, false, err);
        if (ret < 0)
            return ret;
    }
    if (on)
        s->compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    else
        s->compatible &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    return qcow2_update_header(node, err);
}

int qcow2_amend(struct qimg_image *node, const struct qimg_opts *opts,
                bool force, void (*progress)(void *, double), void *opaque,
                struct qimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct amend_request r;
    int ret;

    ret = parse_request(node, opts, &r, err);
    if (ret < 0)
        return ret;
    if (r.version > (int)s->version) {
        ret = upgrade(node, err);
        if (ret < 0)
            return ret;
    }
    /* Key slots after an upgrade, before the refcounts (QEMU's order). */
    if (r.encrypt) {
        ret = qcow2_crypto_amend(node, opts, force, err);
        if (ret < 0)
            return ret;
    }
    if (r.refcount_order >= 0 && (uint32_t)r.refcount_order != s->refcount_order) {
        pthread_mutex_lock(&node->lock);
        ret = qcow2_change_refcount_order(node, (uint32_t)r.refcount_order, err);
        pthread_mutex_unlock(&node->lock);
        if (ret < 0)
            return ret;
    }
    if (r.data_file) {
        char *name = strdup(r.data_file);
        if (!name)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        free(s->data_file_name);
        s->data_file_name = name;
        ret = qcow2_update_header(node, err);
        if (ret < 0)
            return ret;
    }
    if (r.data_file_raw == 0 && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) {
        s->autoclear &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        ret = qcow2_update_header(node, err);
        if (ret < 0)
            return ret;
    }
    if (r.lazy >= 0) {
        ret = set_lazy(node, r.lazy, err);
        if (ret < 0)
            return ret;
    }
    if (r.has_size && r.size != node->size) {
        /* Take the resize permission just for this, as QEMU does. */
        if (node->file->ops->set_perm) {
            ret = node->file->ops->set_perm(node->file,
                                            node->flags | QIMG_OPEN_RESIZE, err);
            if (ret < 0) {
                node->file->ops->set_perm(node->file, node->flags, NULL);
                return ret;
            }
        }
        ret = node->fmt->truncate(node, r.size, false, QIMG_PREALLOC_OFF, err);
        if (node->file->ops->set_perm)
            node->file->ops->set_perm(node->file, node->flags, NULL);
        if (ret < 0)
            return ret;
    }
    if (r.version && r.version < (int)s->version) {
        ret = downgrade(node, err);
        if (ret < 0)
            return ret;
    }
    if (progress)
        progress(opaque, 100);
    return node->file->ops->flush(node->file, err);
}
