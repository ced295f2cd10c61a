/* libgcrypt on first use (lazylib.h): the functions lib/ calls.  Its
 * initialisation (gcry_check_version, secure memory) stays where it was:
 * in lib/crypto and lib/checksum, at their first request. */
#include <gcrypt.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_GCRYPT)

QIMG_LAZY(const char *, gcry_check_version, (const char *req), (req))
QIMG_LAZY(const char *, gcry_strerror, (gcry_error_t e), (e))
QIMG_LAZY(void, gcry_set_allocation_handler,
          (gcry_handler_alloc_t alloc, gcry_handler_alloc_t alloc_secure,
           gcry_handler_secure_check_t is_secure,
           gcry_handler_realloc_t re, gcry_handler_free_t fr),
          (alloc, alloc_secure, is_secure, re, fr))
QIMG_LAZY(gcry_error_t, gcry_cipher_open,
          (gcry_cipher_hd_t *h, int algo, int mode, unsigned int flags),
          (h, algo, mode, flags))
QIMG_LAZY(void, gcry_cipher_close, (gcry_cipher_hd_t h), (h))
QIMG_LAZY(gcry_error_t, gcry_cipher_setkey,
          (gcry_cipher_hd_t h, const void *key, size_t n), (h, key, n))
QIMG_LAZY(gcry_error_t, gcry_cipher_setiv,
          (gcry_cipher_hd_t h, const void *iv, size_t n), (h, iv, n))
QIMG_LAZY(gcry_error_t, gcry_cipher_setctr,
          (gcry_cipher_hd_t h, const void *ctr, size_t n), (h, ctr, n))
QIMG_LAZY(gcry_error_t, gcry_cipher_encrypt,
          (gcry_cipher_hd_t h, void *out, size_t outn, const void *in,
           size_t inn),
          (h, out, outn, in, inn))
QIMG_LAZY(gcry_error_t, gcry_cipher_decrypt,
          (gcry_cipher_hd_t h, void *out, size_t outn, const void *in,
           size_t inn),
          (h, out, outn, in, inn))
QIMG_LAZY(gcry_error_t, gcry_kdf_derive,
          (const void *pass, size_t passn, int algo, int subalgo,
           const void *salt, size_t saltn, unsigned long iter, size_t keyn,
           void *key),
          (pass, passn, algo, subalgo, salt, saltn, iter, keyn, key))
QIMG_LAZY(gcry_error_t, gcry_md_open,
          (gcry_md_hd_t *h, int algo, unsigned int flags), (h, algo, flags))
QIMG_LAZY(void, gcry_md_close, (gcry_md_hd_t h), (h))
QIMG_LAZY(void, gcry_md_reset, (gcry_md_hd_t h), (h))
QIMG_LAZY(void, gcry_md_write, (gcry_md_hd_t h, const void *buf, size_t n),
          (h, buf, n))
QIMG_LAZY(unsigned char *, gcry_md_read, (gcry_md_hd_t h, int algo),
          (h, algo))
QIMG_LAZY(void, gcry_md_hash_buffer,
          (int algo, void *digest, const void *buf, size_t n),
          (algo, digest, buf, n))
QIMG_LAZY(unsigned int, gcry_md_get_algo_dlen, (int algo), (algo))

/* gcry_control is variadic: a shim cannot forward an unknown argument
 * list, so it passes on the commands lib/ uses, which take one int or
 * nothing (libgcrypt reads no argument for the latter); any other command
 * must be added here. */
QIMG_LAZY_HIDDEN(gcry_control)
gcry_error_t gcry_control(enum gcry_ctl_cmds cmd, ...)
{
    static void *slot;
    gcry_error_t (*fn)(enum gcry_ctl_cmds, ...);
    int arg = 0;
    va_list ap;

    switch (cmd) {
    case GCRYCTL_DISABLE_SECMEM:
    case GCRYCTL_INITIALIZATION_FINISHED:
        va_start(ap, cmd);
        arg = va_arg(ap, int);
        va_end(ap);
        break;
    case GCRYCTL_INITIALIZATION_FINISHED_P:
        break;
    default:
        return gcry_error(GPG_ERR_NOT_IMPLEMENTED);
    }
    fn = (gcry_error_t (*)(enum gcry_ctl_cmds, ...))
        qimg_lazylib_sym(&lazy_lib, lazy_load, "gcry_control", &slot);
    return fn(cmd, arg);
}
