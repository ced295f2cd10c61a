/*
 * util.h - small helpers shared by the library: overflow-checked arithmetic,
 * alignment and byte order.  Every offset or size derived from image data
 * goes through these before it is used.
 */
#ifndef QIMG_CORE_UTIL_H
#define QIMG_CORE_UTIL_H

#include <endian.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define QIMG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QIMG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define QIMG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Return true on overflow, like __builtin_*_overflow. */
static inline bool qimg_add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_add_overflow(a, b, r);
}

static inline bool qimg_mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_mul_overflow(a, b, r);
}

/* True when [off, off+len) lies inside [0, limit). */
static inline bool qimg_range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
    uint64_t end;
    return !qimg_add_overflow(off, len, &end) && end <= limit;
}

static inline bool qimg_is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* align must be a power of two. */
static inline uint64_t qimg_align_down(uint64_t x, uint64_t align)
{
    return x & ~(align - 1);
}

/* Round up; returns false on overflow. align must be a power of two. */
static inline bool qimg_align_up(uint64_t x, uint64_t align, uint64_t *out)
{
    uint64_t t;
    if (qimg_add_overflow(x, align - 1, &t))
        return false;
    *out = t & ~(align - 1);
    return true;
}

static inline uint64_t qimg_div_round_up(uint64_t n, uint64_t d)
{
    return n / d + (n % d != 0);
}

static inline uint16_t qimg_ld_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return be16toh(v);
}
static inline uint32_t qimg_ld_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}
static inline uint64_t qimg_ld_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}
static inline uint16_t qimg_ld_le16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return le16toh(v);
}
static inline uint32_t qimg_ld_le32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return le32toh(v);
}
static inline uint64_t qimg_ld_le64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return le64toh(v);
}
static inline void qimg_st_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}
static inline void qimg_st_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}
static inline void qimg_st_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}
static inline void qimg_st_le16(void *p, uint16_t v)
{
    v = htole16(v);
    memcpy(p, &v, sizeof(v));
}
static inline void qimg_st_le32(void *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, sizeof(v));
}
static inline void qimg_st_le64(void *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, sizeof(v));
}

/* True when len bytes at buf are all zero (vectorised by the compiler). */
bool qimg_buffer_is_zero(const void *buf, size_t len);

/* A random (version 4) UUID in RFC 4122 byte order, as QEMU generates
 * the identifiers of new vpc, vdi, vhdx and vmdk images. */
void qimg_uuid_generate(uint8_t uuid[16]);

/* strdup that aborts on OOM is not used: callers handle NULL. */
char *qimg_strndup(const char *s, size_t n);

#endif /* QIMG_CORE_UTIL_H */
