/*
 * inflate.c - whole-buffer zlib decompression (libdeflate) for the
 * read-only compressed formats (see inflate.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include <libdeflate.h>

#include "core/inflate.h"

/* One libdeflate decompressor per thread: allocating one per chunk would
 * cost a good part of inflating a 64 KiB cloop block. */
static pthread_key_t dec_key;
static pthread_once_t dec_once = PTHREAD_ONCE_INIT;
static bool dec_key_ok;

static void dec_free(void *p)
{
    libdeflate_free_decompressor(p);
}

static void dec_key_init(void)
{
    dec_key_ok = pthread_key_create(&dec_key, dec_free) == 0;
}

static struct libdeflate_decompressor *thread_decompressor(void)
{
    struct libdeflate_decompressor *d;

    pthread_once(&dec_once, dec_key_init);
    if (!dec_key_ok)
        return NULL;
    d = pthread_getspecific(dec_key);
    if (!d) {
        d = libdeflate_alloc_decompressor();
        if (d && pthread_setspecific(dec_key, d)) {
            libdeflate_free_decompressor(d);
            d = NULL;
        }
    }
    return d;
}

int qimg_inflate_zlib(const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t out_len)
{
    struct libdeflate_decompressor *d = thread_decompressor();
    size_t in_used, produced;

    if (!d)
        return -ENOMEM;
    if (libdeflate_zlib_decompress_ex(d, in, in_len, out, out_len, &in_used,
                                      &produced) != LIBDEFLATE_SUCCESS ||
        produced != out_len)
        return -EIO;
    return 0;
}
