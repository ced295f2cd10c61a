/* Libraries loaded on first use (see lazylib.c).
 *
 * Most commands never compress, cipher or hash: loading zlib, zstd,
 * libdeflate, bzip2, libgcrypt (with libgpg-error) and nettle at every
 * start-up cost page faults and symbol lookups that short commands pay in
 * full.  Each of these libraries has a shim file here that defines the
 * functions qimg calls, under their own names, each resolving its target
 * in the library on the first call (the library is dlopen'ed then).  Call
 * sites keep including the library's own header and calling it as usual.
 *
 * The shims are hidden (not exported even when the program exports its
 * symbols for the storage modules), so a module or a library that loads
 * the real library binds to it, never to a shim.  A static build
 * (-Dstatic=true) links the libraries directly and compiles no shim. */
#ifndef QIMG_LAZYLIB_H
#define QIMG_LAZYLIB_H

#include <pthread.h>

#include "lazy/lazy-sonames.h"

struct qimg_lazylib {
    const char *soname;         /* as the linker would record it */
    pthread_once_t once;
    void *handle;
};

#define QIMG_LAZYLIB_INIT(so) { (so), PTHREAD_ONCE_INIT, NULL }

/* The address of NAME in LIB, cached in *SLOT (thread-safe).  A library or
 * symbol that cannot be loaded ends the process with the dynamic loader's
 * message and status 127, as a missing library does at start-up today. */
void *qimg_lazylib_sym(struct qimg_lazylib *lib, void (*load)(void),
                       const char *name, void **slot);

/* Defines LIB (the library) for the QIMG_LAZY shims of one file. */
#define QIMG_LAZYLIB(soname)                                               \
    static struct qimg_lazylib lazy_lib = QIMG_LAZYLIB_INIT(soname);       \
    static void lazy_load(void) { qimg_lazylib_open(&lazy_lib); }

void qimg_lazylib_open(struct qimg_lazylib *lib);

/* Hidden whatever the library's header declares (an explicit default
 * visibility there would win over an attribute here). */
#define QIMG_LAZY_HIDDEN(name) __asm__(".hidden " #name);

/* One shim: RET NAME PARAMS calls the library's NAME with ARGS. */
#define QIMG_LAZY(ret, name, params, args)                                 \
    QIMG_LAZY_HIDDEN(name)                                                 \
    ret name params                                                        \
    {                                                                      \
        static void *slot;                                                 \
        return ((ret (*) params)qimg_lazylib_sym(&lazy_lib, lazy_load,     \
                                                 #name, &slot)) args;      \
    }

#endif
