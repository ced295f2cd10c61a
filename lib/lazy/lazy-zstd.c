/* zstd on first use (lazylib.h): the functions lib/ calls. */
#include <zstd.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_ZSTD)

QIMG_LAZY(unsigned, ZSTD_isError, (size_t code), (code))
QIMG_LAZY(ZSTD_CCtx *, ZSTD_createCCtx, (void), ())
QIMG_LAZY(size_t, ZSTD_freeCCtx, (ZSTD_CCtx *c), (c))
QIMG_LAZY(size_t, ZSTD_compressCCtx,
          (ZSTD_CCtx *c, void *dst, size_t cap, const void *src, size_t n,
           int level),
          (c, dst, cap, src, n, level))
QIMG_LAZY(ZSTD_DCtx *, ZSTD_createDCtx, (void), ())
QIMG_LAZY(size_t, ZSTD_freeDCtx, (ZSTD_DCtx *d), (d))
QIMG_LAZY(size_t, ZSTD_DCtx_reset, (ZSTD_DCtx *d, ZSTD_ResetDirective r),
          (d, r))
QIMG_LAZY(size_t, ZSTD_decompressStream,
          (ZSTD_DCtx *d, ZSTD_outBuffer *out, ZSTD_inBuffer *in),
          (d, out, in))
