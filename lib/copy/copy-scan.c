/*
 * copy-scan.c - finding the zero runs inside data that convert leaves as
 * holes (-S).  The rules are chosen to give the same holes as qemu-img
 * convert, sector by sector, so targets compare equal in `map`.
 */
#include "copy/copy.h"
#include "core/util.h"

struct scan {
    const uint8_t *buf;
    uint64_t len;       /* bytes in buf */
    uint64_t nsec;      /* sectors, the last one possibly partial */
    uint64_t first;     /* absolute sector number of buf[0] */
    uint32_t align;     /* sectors, a power of two */
};

/* How far ahead of the scan (in sectors, 32 KiB) the next sectors' first
 * bytes are prefetched.  A data sector is decided by its first word, so the
 * scan reads one cache line in 8, a stride the hardware prefetchers do not
 * follow, from a 2 MiB chunk that the kernel's copy left outside the L2
 * cache: every sector was a cache miss (the stall was 88% of the scan's
 * samples, the scan a tenth of a qcow2->raw convert).  The prefetch takes
 * a fifth off the scan (docs/PERFORMANCE.md). */
#define SCAN_PREFETCH_SECTORS 64

static bool sector_zero(const struct scan *s, uint64_t i)
{
    uint64_t off = i * COPY_SECTOR;
    uint64_t n = QIMG_MIN((uint64_t)COPY_SECTOR, s->len - off);

    if (i + SCAN_PREFETCH_SECTORS < s->nsec)
        __builtin_prefetch(s->buf + off + SCAN_PREFETCH_SECTORS * COPY_SECTOR);
    return qimg_buffer_is_zero(s->buf + off, (size_t)n);
}

/*
 * The run of sectors like sector `at` (all zero or all not), with its end
 * moved to an alignment boundary: data grows to the boundary, zero shrinks
 * to it, and a zero run no longer than its overhang counts as data (so a
 * partial block gets written rather than leaving a useless tiny hole).
 * A run reaching the end of the buffer is left as it is.
 */
static uint64_t aligned_run(const struct scan *s, uint64_t at, bool *data)
{
    uint64_t n = s->nsec - at, i = 1, tail;
    bool zero = sector_zero(s, at);

    while (i < n && sector_zero(s, at + i) == zero)
        i++;
    if (i < n) {
        tail = (s->first + at + i) & (s->align - 1);
        if (tail) {
            if (zero && i <= tail)
                zero = false;
            if (!zero)
                i = QIMG_MIN(i + s->align - tail, n);
            else
                i -= tail;
        }
    }
    *data = !zero;
    return i;
}

/*
 * The next run to write or skip from sector `at`: a leading zero run is
 * returned as it is; a data run swallows following zero runs shorter than
 * min sectors (and the data after them).
 */
static uint64_t next_run(const struct scan *s, uint64_t at, uint64_t min,
                         bool *data)
{
    uint64_t n = s->nsec - at, used, checked;

    if (n < min)
        min = n;
    used = aligned_run(s, at, data);
    if (!*data)
        return used;
    checked = used;
    while (checked < n) {
        bool d;
        uint64_t j = aligned_run(s, at + checked, &d);
        checked += j;
        if (d)
            used = checked;
        else if (j >= min)
            break;
    }
    *data = true;
    return used;
}

size_t copy_scan(const uint8_t *buf, uint64_t len, uint64_t dst,
                 uint32_t min_sectors, uint32_t align_sectors,
                 struct copy_run *runs, size_t max)
{
    struct scan s = {
        .buf = buf, .len = len, .nsec = qimg_div_round_up(len, COPY_SECTOR),
        .first = dst / COPY_SECTOR,
        .align = qimg_is_pow2(align_sectors) ? align_sectors : 1,
    };
    size_t n = 0;
    uint64_t at = 0;

    while (at < s.nsec && n < max) {
        bool data;
        uint64_t k = next_run(&s, at, min_sectors ? min_sectors : 1, &data);
        uint64_t start = at * COPY_SECTOR;
        uint64_t end = QIMG_MIN((at + k) * COPY_SECTOR, len);

        /* Runs stay separate requests even when alike: zeroing two
         * ranges frees other blocks than zeroing their union. */
        runs[n].start = start;
        runs[n].len = end - start;
        runs[n].data = data;
        n++;
        at += k;
    }
    return n;
}
