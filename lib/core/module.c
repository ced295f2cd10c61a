/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Loadable storage modules.
 *
 * The client libraries of the network storages are heavy: librbd brings the
 * C++ runtime and Ceph's common library, libcurl and libnbd bring TLS and
 * their own dependencies, some thirty shared objects in all.  Linked into
 * the program they would be mapped and relocated at every start-up, also by
 * `info` of a local file, which is most of what a short command costs.  So,
 * as QEMU does with its block modules, each such storage is a shared module
 * (qimg-<name>.so) loaded the first time a name or option selects it.
 *
 * The storage table keeps a stub for each (name and protocol, enough to list
 * and match names); module_storage() swaps in the real table from the
 * module.  Modules resolve libqimg's functions from the program, which
 * exports them (export_dynamic in meson.build).
 *
 * Where modules are looked for, first hit wins:
 *   $QIMG_MODULE_DIR                  (tests, relocated installs)
 *   the directory of the running program (the build tree)
 *   QIMG_MODULE_INSTALL_DIR           (libdir/qimg, set at build time)
 */
#include "core/block.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg-config.h"

/* Module names are short identifiers ("qimg-rbd"): a bound for the path. */
#define MODULE_PATH_MAX PATH_MAX

static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;

/* Try DIR/NAME.so; return the handle or NULL (reason appended to why). */
static void *try_dir(const char *dir, const char *name, char *why,
                     size_t why_size)
{
    char path[MODULE_PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s.so", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return NULL;
    if (access(path, F_OK))
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, why_size, "%s", e ? e : path);
    }
    return h;
}

/* The directory of the running program, or "" when unknown. */
static void program_dir(char *dir, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", dir, size - 1);
    if (n <= 0) {
        dir[0] = '\0';
        return;
    }
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        dir[0] = '\0';
}

static void *open_module(const char *name, char *why, size_t why_size)
{
    const char *env = getenv("QIMG_MODULE_DIR");
    void *h = NULL;
    if (env && *env)
        h = try_dir(env, name, why, why_size);
    if (!h) {
        char dir[MODULE_PATH_MAX];
        program_dir(dir, sizeof(dir));
        if (dir[0])
            h = try_dir(dir, name, why, why_size);
    }
#ifdef QIMG_MODULE_INSTALL_DIR
    if (!h)
        h = try_dir(QIMG_MODULE_INSTALL_DIR, name, why, why_size);
#endif
    return h;
}

const struct qimg_storage_ops *
qimg_module_storage(const struct qimg_storage_ops *stub)
{
    if (!stub || !stub->module)
        return stub;
    pthread_mutex_lock(&module_lock);
    /* Loaded tables are kept in the stub's slot for the process's life:
     * modules are never unloaded (their threads and atexit handlers may
     * still run). */
    const struct qimg_storage_ops *ops = *stub->module_loaded;
    if (!ops) {
        char why[512] = "";
        void *h = open_module(stub->module, why, sizeof(why));
        if (h) {
            ops = dlsym(h, stub->module_symbol);
            if (!ops)
                snprintf(why, sizeof(why), "%s: no symbol %s",
                         stub->module, stub->module_symbol);
        } else if (!why[0]) {
            snprintf(why, sizeof(why), "%s.so not found", stub->module);
        }
        if (ops)
            *stub->module_loaded = ops;
        else
            /* As QEMU's module loader: a warning, then the name is
             * unknown to the caller. */
            qimg_message(QIMG_MSG_WARNING, "Failed to open module: %s",
                         why);
    }
    pthread_mutex_unlock(&module_lock);
    return ops;
}
