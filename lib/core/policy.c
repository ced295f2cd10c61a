/*
 * policy.c - untrusted-image mode (docs/SECURITY.md): the allow list of
 * files images may name, and the checks open.c and storage.c make with it
 * (core/policy.h).
 *
 * An allowed file is kept as its real path and inode, taken when the
 * caller allowed it.  A name an image records is allowed when it resolves
 * (realpath: symlinks, "..", /proc/self/fd links) to the same real path and
 * that path is the same inode, in a role the entry has; the storage then
 * opens it (non-blocking, so that a FIFO swapped in cannot hang us) and
 * the inode of the descriptor is compared again, which catches a file
 * replaced between the check and the open.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/policy.h"
#include "core/util.h"

static struct {
    pthread_mutex_t lock;
    bool on;
    struct qimg_policy_entry *e;
    size_t n;
} policy = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- pure helpers ---------------------------------------------------------- */

long qimg_policy_match(const struct qimg_policy_entry *e, size_t n,
                       unsigned role, const char *real, uint64_t dev,
                       uint64_t ino)
{
    for (size_t i = 0; i < n; i++) {
        if (!(e[i].roles & role) || e[i].dev != dev || e[i].ino != ino)
            continue;
        if (real && (!e[i].real || strcmp(e[i].real, real)))
            continue;
        return (long)i;
    }
    return -1;
}

enum qimg_name_kind qimg_policy_name_kind(const char *name, char *proto,
                                          size_t len)
{
    size_t n;

    if (len)
        proto[0] = '\0';
    if (!strncmp(name, "json:", 5))
        return QIMG_NAME_JSON;
    if (!qimg_path_has_protocol(name))
        return QIMG_NAME_PATH;
    n = strcspn(name, ":");
    if (len) {
        n = QIMG_MIN(n, len - 1);
        memcpy(proto, name, n);
        proto[n] = '\0';
    }
    return QIMG_NAME_PROTOCOL;
}

static bool plain_byte(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '\\';
}

void qimg_policy_quote(const char *name, char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, total = 0;

    if (!len)
        return;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        total += plain_byte(*p) ? 1 : 4;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        bool plain = plain_byte(*p);
        size_t need = plain ? 1 : 4;
        /* Cut with room for "..." and the NUL, unless all of it fits. */
        if (total >= len && o + need + 4 > len) {
            if (len >= 4) {
                o = QIMG_MIN(o, len - 4);
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[QIMG_MIN(o, len - 1)] = '\0';
}

/* ---- the allow list -------------------------------------------------------- */

void qimg_untrusted_enable(void)
{
    pthread_mutex_lock(&policy.lock);
    policy.on = true;
    pthread_mutex_unlock(&policy.lock);
}

bool qimg_untrusted_enabled(void)
{
    bool on;
    pthread_mutex_lock(&policy.lock);
    on = policy.on;
    pthread_mutex_unlock(&policy.lock);
    return on;
}

void qimg_untrusted_reset(void)
{
    pthread_mutex_lock(&policy.lock);
    for (size_t i = 0; i < policy.n; i++)
        free(policy.e[i].real);
    free(policy.e);
    policy.e = NULL;
    policy.n = 0;
    policy.on = false;
    pthread_mutex_unlock(&policy.lock);
}

int qimg_untrusted_allow(unsigned roles, const char *path,
                         struct qimg_error *err)
{
    struct stat st;
    char *real;
    int ret = 0;

    if (!(roles & QIMG_ROLE_ANY))
        return qimg_error_set(err, -EINVAL, "No role to allow '%s' in", path);
    real = realpath(path, NULL);
    if (!real || stat(real, &st) < 0) {
        ret = -errno;
        free(real);
        return qimg_error_set(err, ret, "Could not access '%s': %s", path,
                              strerror(-ret));
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        free(real);
        return qimg_error_set(err, -EINVAL, "'%s' is neither a regular file "
                              "nor a block device", path);
    }
    pthread_mutex_lock(&policy.lock);
    policy.on = true;
    if (policy.n >= QIMG_UNTRUSTED_MAX_ALLOW) {
        ret = qimg_error_set(err, -E2BIG, "More than %d files allowed",
                             QIMG_UNTRUSTED_MAX_ALLOW);
    } else {
        struct qimg_policy_entry *e =
            realloc(policy.e, (policy.n + 1) * sizeof(*e));
        if (!e) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        } else {
            policy.e = e;
            e[policy.n++] = (struct qimg_policy_entry){
                (unsigned)roles & QIMG_ROLE_ANY, (uint64_t)st.st_dev,
                (uint64_t)st.st_ino, real};
            real = NULL;
        }
    }
    pthread_mutex_unlock(&policy.lock);
    free(real);
    return ret;
}

/* ---- the checks ------------------------------------------------------------ */

static const char *role_name(unsigned role)
{
    switch (role) {
    case QIMG_ROLE_BACKING: return "backing file";
    case QIMG_ROLE_DATA_FILE: return "data file";
    case QIMG_ROLE_EXTENT: return "extent";
    default: return "file";
    }
}

/* The option that allows a file in role. */
static const char *role_option(unsigned role)
{
    switch (role) {
    case QIMG_ROLE_BACKING: return "--allow-backing";
    case QIMG_ROLE_DATA_FILE: return "--allow-data-file";
    case QIMG_ROLE_EXTENT: return "--allow-extent";
    default: return "--allow-file";
    }
}

/* The role in open flags (the lowest bit set), 0 for none. */
static unsigned flags_role(unsigned flags)
{
    unsigned r = (flags & QIMG_OPEN_ROLE_MASK) >> QIMG_OPEN_ROLE_SHIFT;
    return r & -r;
}

/* "backing file 'X' named by an untrusted image " for the messages. */
static int refuse(struct qimg_error *err, int code, unsigned role,
                  const char *name, const char *why)
{
    char q[512];

    qimg_policy_quote(name, q, sizeof(q));
    return qimg_error_set(err, code, "%s '%s' named by an untrusted image %s",
                          role_name(role), q, why);
}

int qimg_policy_max_depth(void)
{
    return qimg_untrusted_enabled() ? QIMG_UNTRUSTED_MAX_CHAIN_DEPTH
                                    : QIMG_MAX_CHAIN_DEPTH;
}

int qimg_policy_check_name(unsigned role, const char *recorded,
                           const char *path, struct qimg_error *err)
{
    const char *names[2] = {recorded, path};
    char proto[64], why[128];

    if (!qimg_untrusted_enabled())
        return 0;
    for (int i = 0; i < 2; i++) {
        if (!names[i])
            continue;
        switch (qimg_policy_name_kind(names[i], proto, sizeof(proto))) {
        case QIMG_NAME_JSON:
            return refuse(err, -EPERM, role, recorded, "is a json: "
                          "description, which untrusted mode refuses");
        case QIMG_NAME_PROTOCOL:
            snprintf(why, sizeof(why), "names protocol '%s', which untrusted "
                     "mode refuses", proto);
            return refuse(err, -EPERM, role, recorded, why);
        case QIMG_NAME_PATH:
            break;
        }
    }
    return 0;
}

/* Is the file at fname (resolved) allowed in role?  With the lock held. */
static bool allowed_locked(unsigned role, const char *fname)
{
    char *real = realpath(fname, NULL);
    struct stat st;
    bool ok = false;

    if (real && stat(real, &st) == 0)
        ok = qimg_policy_match(policy.e, policy.n, role, real,
                               (uint64_t)st.st_dev, (uint64_t)st.st_ino) >= 0;
    free(real);
    return ok;
}

int qimg_policy_check_driver(unsigned flags,
                             const struct qimg_storage_ops *ops,
                             const char *fname, struct qimg_error *err)
{
    unsigned role = flags_role(flags);
    char why[128];

    if (!role || !qimg_untrusted_enabled())
        return 0;
    if (ops == &qimg_storage_file || ops == &qimg_storage_host_device ||
        ops == &qimg_storage_host_cdrom)
        return 0;
    snprintf(why, sizeof(why), "would be opened by the '%s' driver, which "
             "untrusted mode refuses", ops->name);
    return refuse(err, -EPERM, role, fname ? fname : "", why);
}

int qimg_policy_check_open(unsigned flags,
                           const struct qimg_storage_ops *ops,
                           const char *fname, struct qimg_error *err)
{
    unsigned role = flags_role(flags);
    char opt[64];
    bool ok;

    if (!role || !qimg_untrusted_enabled())
        return 0;
    int ret = qimg_policy_check_driver(flags, ops, fname, err);
    if (ret < 0)
        return ret;
    if (!fname)
        return refuse(err, -EPERM, role, "", "has no file name");
    pthread_mutex_lock(&policy.lock);
    ok = allowed_locked(role, fname);
    pthread_mutex_unlock(&policy.lock);
    if (ok)
        return 0;
    snprintf(opt, sizeof(opt), "is not allowed (%s)", role_option(role));
    return refuse(err, -EPERM, role, fname, opt);
}

int qimg_policy_check_opened(unsigned flags, const struct qimg_storage *st,
                             struct qimg_error *err)
{
    unsigned role = flags_role(flags);
    bool ok;

    if (!role || !qimg_untrusted_enabled())
        return 0;
    pthread_mutex_lock(&policy.lock);
    ok = st->has_id && qimg_policy_match(policy.e, policy.n, role, NULL,
                                         st->id_dev, st->id_ino) >= 0;
    pthread_mutex_unlock(&policy.lock);
    if (ok)
        return 0;
    return refuse(err, -EPERM, role, st->filename ? st->filename : "",
                  "changed while it was being opened");
}

int qimg_policy_check_same(const struct qimg_storage *before,
                           const struct qimg_storage *after,
                           struct qimg_error *err)
{
    if (!qimg_untrusted_enabled())
        return 0;
    if (qimg_storage_same_file(before, after))
        return 0;
    return refuse(err, -EPERM, QIMG_ROLE_BACKING,
                  after && after->filename ? after->filename : "",
                  "changed while it was being reopened");
}

int qimg_policy_count_child(struct qimg_image *parent, const char *name,
                            struct qimg_error *err)
{
    char q[512];

    if (parent->child_opens < QIMG_UNTRUSTED_MAX_CHILDREN ||
        !qimg_untrusted_enabled()) {
        parent->child_opens++;
        return 0;
    }
    qimg_policy_quote(name, q, sizeof(q));
    return qimg_error_set(err, -EMFILE, "Could not open '%s': an untrusted "
                          "image may name at most %d files",
                          q, QIMG_UNTRUSTED_MAX_CHILDREN);
}
