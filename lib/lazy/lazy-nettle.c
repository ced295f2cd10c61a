/* nettle on first use (lazylib.h): the functions lib/ calls. */
#include <nettle/md5.h>

#include "lazy/lazylib.h"

QIMG_LAZYLIB(QIMG_SONAME_NETTLE)

QIMG_LAZY(void, nettle_md5_init, (struct md5_ctx *c), (c))
QIMG_LAZY(void, nettle_md5_update,
          (struct md5_ctx *c, size_t n, const uint8_t *data), (c, n, data))
QIMG_LAZY(void, nettle_md5_digest, (struct md5_ctx *c, size_t n, uint8_t *d),
          (c, n, d))
