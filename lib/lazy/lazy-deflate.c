/* libdeflate on first use (lazylib.h): the functions lib/ calls. */
#include <libdeflate.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_DEFLATE)

QIMG_LAZY(struct libdeflate_compressor *, libdeflate_alloc_compressor,
          (int level), (level))
QIMG_LAZY(void, libdeflate_free_compressor,
          (struct libdeflate_compressor *c), (c))
QIMG_LAZY(size_t, libdeflate_deflate_compress,
          (struct libdeflate_compressor *c, const void *in, size_t n,
           void *out, size_t avail),
          (c, in, n, out, avail))
QIMG_LAZY(size_t, libdeflate_zlib_compress,
          (struct libdeflate_compressor *c, const void *in, size_t n,
           void *out, size_t avail),
          (c, in, n, out, avail))
QIMG_LAZY(struct libdeflate_decompressor *, libdeflate_alloc_decompressor,
          (void), ())
QIMG_LAZY(void, libdeflate_free_decompressor,
          (struct libdeflate_decompressor *d), (d))
QIMG_LAZY(enum libdeflate_result, libdeflate_zlib_decompress_ex,
          (struct libdeflate_decompressor *d, const void *in, size_t n,
           void *out, size_t avail, size_t *in_used, size_t *out_used),
          (d, in, n, out, avail, in_used, out_used))
