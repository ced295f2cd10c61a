/* zlib on first use (lazylib.h): the functions lib/ calls. */
#include <zlib.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_Z)

QIMG_LAZY(int, inflate, (z_streamp s, int flush), (s, flush))
QIMG_LAZY(int, inflateEnd, (z_streamp s), (s))
QIMG_LAZY(int, inflateInit_, (z_streamp s, const char *v, int size),
          (s, v, size))
QIMG_LAZY(int, inflateInit2_,
          (z_streamp s, int window, const char *v, int size),
          (s, window, v, size))
QIMG_LAZY(int, deflate, (z_streamp s, int flush), (s, flush))
QIMG_LAZY(int, deflateEnd, (z_streamp s), (s))
QIMG_LAZY(int, deflateInit2_,
          (z_streamp s, int level, int method, int window, int mem,
           int strategy, const char *v, int size),
          (s, level, method, window, mem, strategy, v, size))
