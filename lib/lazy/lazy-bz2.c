/* bzip2 on first use (lazylib.h): the functions lib/ calls. */
#include <stdio.h>
#include <bzlib.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_BZ2)

QIMG_LAZY(int, BZ2_bzDecompressInit, (bz_stream *s, int verbosity, int small),
          (s, verbosity, small))
QIMG_LAZY(int, BZ2_bzDecompress, (bz_stream *s), (s))
QIMG_LAZY(int, BZ2_bzDecompressEnd, (bz_stream *s), (s))
