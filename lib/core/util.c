/* util.c - out-of-line helpers from util.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

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

void qimg_uuid_generate(uint8_t uuid[16])
{
    size_t got = 0;

    while (got < 16) {
        ssize_t n = getrandom(uuid + got, 16 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < 16) {
        /* No kernel randomness (very old kernels): still unique enough
         * for an image identifier. */
        unsigned seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)uuid;
        for (; got < 16; got++)
            uuid[got] = (uint8_t)rand_r(&seed);
    }
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);   /* version 4: random */
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);   /* RFC 4122 variant */
}
