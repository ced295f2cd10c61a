/* Libraries loaded on first use: see lazylib.h. */
#include "lazy/lazylib.h"

#include <dlfcn.h>
#include <errno.h>      /* program_invocation_short_name (GNU) */
#include <stdio.h>
#include <unistd.h>

/* What the dynamic loader does for a library it cannot load at start-up:
 * the program cannot go on without it (these are hard dependencies of the
 * package), so this is the one place in lib/ that prints and exits. */
static void lazylib_fail(const char *what)
{
    /* The loader names the program as it was invoked (qimg, qemu-img). */
    fprintf(stderr, "%s: error while loading shared libraries: %s\n",
            program_invocation_short_name, what);
    fflush(stderr);
    _exit(127);
}

void qimg_lazylib_open(struct qimg_lazylib *lib)
{
    lib->handle = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
    if (!lib->handle)
        lazylib_fail(dlerror());
}

void *qimg_lazylib_sym(struct qimg_lazylib *lib, void (*load)(void),
                       const char *name, void **slot)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

    if (fn)
        return fn;
    pthread_once(&lib->once, load);
    fn = dlsym(lib->handle, name);
    if (!fn)
        lazylib_fail(dlerror());
    __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    return fn;
}
