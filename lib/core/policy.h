/*
 * policy.h - the untrusted-image policy's hooks in the core (policy.c):
 * which files an image may name, checked where they are opened.
 *
 * A file an image names is opened with its role in the open flags
 * (QIMG_OPEN_ROLE): open.c sets it for backing files named by headers,
 * qimg_open_child_storage() for data files and extents.  In untrusted mode
 * the name is checked first (json: and protocol names refused), then the
 * storage open checks the driver and that the path resolves to an allowed
 * file before opening it, and after opening that the descriptor is that
 * file (an inode compared after fstat, so a swap between the check and the
 * open is caught).  Outside untrusted mode every hook returns 0.
 */
#ifndef QIMG_CORE_POLICY_H
#define QIMG_CORE_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "core/block.h"

/* One allowed file: the roles it may play and who it is. */
struct qimg_policy_entry {
    unsigned roles;         /* QIMG_ROLE_* */
    uint64_t dev, ino;
    char *real;             /* realpath() when it was allowed */
};

/*
 * The entry among e[0..n) that allows a file in role: same real path
 * (real NULL: not compared) and same inode.  -1 when none does.  Pure.
 */
long qimg_policy_match(const struct qimg_policy_entry *e, size_t n,
                       unsigned role, const char *real, uint64_t dev,
                       uint64_t ino);

enum qimg_name_kind {
    QIMG_NAME_PATH,         /* a plain path */
    QIMG_NAME_JSON,         /* json:{...} */
    QIMG_NAME_PROTOCOL,     /* PROTO:... (QEMU's path_has_protocol) */
};
/* What a recorded name is; proto gets the protocol.  Pure. */
enum qimg_name_kind qimg_policy_name_kind(const char *name, char *proto,
                                          size_t len);
/* name quoted for a message: control and non-ASCII bytes as \xNN, cut
 * at len - 1 with "..." at the end.  Pure. */
void qimg_policy_quote(const char *name, char *out, size_t len);

/* The chain depth limit in force (QIMG_MAX_CHAIN_DEPTH or the tighter
 * one of untrusted mode). */
int qimg_policy_max_depth(void);
/* In untrusted mode, refuse a recorded name that is json: or names a
 * protocol (recorded: as the image has it; path: resolved, or NULL). */
int qimg_policy_check_name(unsigned role, const char *recorded,
                           const char *path, struct qimg_error *err);
/* As soon as the storage driver for a file in role is known (before it
 * parses the name): only the plain file and device drivers. */
int qimg_policy_check_driver(unsigned flags,
                             const struct qimg_storage_ops *ops,
                             const char *fname, struct qimg_error *err);
/* Before a storage opens fname for a file in role (flags hold
 * QIMG_OPEN_ROLE): the driver must be a plain file or device one, and
 * fname resolve to an allowed file.  0 outside untrusted mode or without
 * a role. */
int qimg_policy_check_open(unsigned flags,
                           const struct qimg_storage_ops *ops,
                           const char *fname, struct qimg_error *err);
/* After it opened: the storage's inode must be an allowed one. */
int qimg_policy_check_opened(unsigned flags, const struct qimg_storage *st,
                             struct qimg_error *err);
/* A reopened file (commit) must be the file opened before. */
int qimg_policy_check_same(const struct qimg_storage *before,
                           const struct qimg_storage *after,
                           struct qimg_error *err);
/* One more child file opened for parent: refused past
 * QIMG_UNTRUSTED_MAX_CHILDREN in untrusted mode. */
int qimg_policy_count_child(struct qimg_image *parent, const char *name,
                            struct qimg_error *err);

#endif /* QIMG_CORE_POLICY_H */
