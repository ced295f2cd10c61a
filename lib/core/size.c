/*
 * size.c - QEMU-compatible parsing and printing of byte sizes.
 *
 * Accepted: decimal or 0x-hex integers; a decimal fraction only together
 * with a multiplying suffix ("1.5k", "1.k"); suffixes b/B (bytes) and
 * k/K, m/M, g/G, t/T, p/P, e/E (powers of 1024).  Leading white space and
 * one '+' are skipped, as strtoull() skips them under QEMU's parser;
 * exponents ("1e3"), a '-' and leading zeroes before 'x' are rejected.  A fraction is kept as 64.64
 * fixed point and rounded half up after scaling.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg.h"

static int suffix_shift(char c)
{
    switch (toupper((unsigned char)c)) {
    case 'B': return 0;
    case 'K': return 10;
    case 'M': return 20;
    case 'G': return 30;
    case 'T': return 40;
    case 'P': return 50;
    case 'E': return 60;
    default: return -1;
    }
}

/* Parse digits in base 10 or 16; returns chars consumed, -ERANGE on overflow. */
static int parse_uint(const char *s, int base, uint64_t *out)
{
    uint64_t v = 0;
    int n = 0;
    for (;; n++) {
        int c = (unsigned char)s[n], d;
        if (isdigit(c))
            d = c - '0';
        else if (base == 16 && isxdigit(c))
            d = tolower(c) - 'a' + 10;
        else
            break;
        if (__builtin_mul_overflow(v, (uint64_t)base, &v) ||
            __builtin_add_overflow(v, (uint64_t)d, &v))
            return -ERANGE;
    }
    *out = v;
    return n;
}

/*
 * Parse ".ddd" as a 64-bit binary fraction; returns chars consumed.  The
 * digits go through a double, as QEMU's parser does, so that results match
 * it to the last bit (the double limits precision to 53 bits).
 */
static int parse_fraction(const char *s, uint64_t *frac)
{
    char buf[64];
    size_t n = 1, k = 1;
    double f;

    buf[0] = '.';
    while (isdigit((unsigned char)s[n])) {
        if (k < sizeof(buf) - 1)
            buf[k++] = s[n];
        n++;
    }
    buf[k] = '\0';
    f = k > 1 ? strtod(buf, NULL) : 0.0;
    /* Digits that round to 1.0 make 2^64, out of uint64_t's range (UB in
     * C).  QEMU's x86-64 build converts it to 0, so "1.99...9k" is 1024
     * there: do the same, explicitly. */
    *frac = f * 0x1p64 < 0x1p64 ? (uint64_t)(f * 0x1p64) : 0;
    return (int)n;
}

int qimg_parse_size(const char *str, uint64_t *out, bool *hex_with_suffix)
{
    const char *p = str;
    uint64_t val, frac = 0;
    bool hex = false;
    int n, shift;

    if (hex_with_suffix)
        *hex_with_suffix = false;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+')
        p++;
    if (!isdigit((unsigned char)*p))
        return -EINVAL;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        n = parse_uint(p + 2, 16, &val);
        if (n == -ERANGE)
            return -ERANGE;
        if (n == 0)
            return -EINVAL;
        p += 2 + n;
        hex = true;
    } else {
        n = parse_uint(p, 10, &val);
        if (n < 0)
            return n;
        p += n;
        if (*p == '.') {
            p += parse_fraction(p, &frac);
        }
    }
    if (*p == '.' && hex)
        return -EINVAL;
    shift = *p ? suffix_shift(*p) : -1;
    if (shift >= 0)
        p++;
    else
        shift = 0;
    if (*p)
        return -EINVAL;
    if (shift == 0) {
        /* A fraction needs a multiplying suffix ("1.0" is still fine). */
        if (frac)
            return -EINVAL;
    } else {
        unsigned __int128 whole = (unsigned __int128)val << shift;
        unsigned __int128 part = ((unsigned __int128)frac << shift);
        /* Round the 64.64 product half up. */
        unsigned __int128 total = whole + (part >> 64) + ((part >> 63) & 1);
        if (total >> 64)
            return -ERANGE;
        val = (uint64_t)total;
        if (hex && hex_with_suffix)
            *hex_with_suffix = true;
    }
    *out = val;
    return 0;
}

void qimg_size_to_str(uint64_t size, char *buf, size_t buflen)
{
    static const char *const units[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    int i = 0;

    /* Switch to the next unit once the number would reach 1000. */
    while (i < 6 && size >= (1000ull << (10 * i)))
        i++;
    snprintf(buf, buflen, "%0.3g %sB", (double)size / (double)(1ull << (10 * i)),
             units[i]);
}
