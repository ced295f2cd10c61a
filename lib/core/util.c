/* util.c - out-of-line helpers from util.h. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

bool qimg_buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t i = 0;

    /* Check the head byte-wise, then 64-byte blocks the compiler vectorises. */
    for (; i < len && ((uintptr_t)(p + i) & 63); i++)
        if (p[i])
            return false;
    for (; i + 64 <= len; i += 64) {
        const uint64_t *w = (const uint64_t *)(const void *)(p + i);
        uint64_t acc = 0;
        for (int k = 0; k < 8; k++)
            acc |= w[k];
        if (acc)
            return false;
    }
    for (; i < len; i++)
        if (p[i])
            return false;
    return true;
}

char *qimg_strndup(const char *s, size_t n)
{
    return strndup(s, n);
}
