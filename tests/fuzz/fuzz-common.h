/*
 * fuzz-common.h - shared parts of the libFuzzer targets (tests/fuzz/).
 *
 * Every target defines LLVMFuzzerTestOneInput().  Built with -Dfuzz=true
 * they link libFuzzer; in every build they are also linked with
 * replay-main.c into replay programs that run the checked-in regression
 * inputs (tests/fuzz/regressions/<target>/) under `make check`.
 *
 * Images live in the memory storage in exclusive mode: nothing a hostile
 * image names (backing file, data file) can reach the file system; the
 * names below are the only ones that open.
 */
#ifndef QIMG_FUZZ_COMMON_H
#define QIMG_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"

#define FUZZ_IMAGE "fuzz.img"        /* the input */
#define FUZZ_BACKING "backing.img"   /* a small raw backing file */
#define FUZZ_DATA "data.img"         /* a small external data file */

/* Per-input work bounds, so that one input stays well under a second. */
#define FUZZ_READ_BUDGET (16u << 20)     /* guest bytes read */
#define FUZZ_EXTENT_BUDGET 4096          /* block status calls per walk */
#define FUZZ_MAX_REQ (256u << 10)        /* largest single read */

/* Abort with a message: an invariant of the public API did not hold. */
#define FUZZ_ASSERT(cond, ...)                                              \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz invariant failed: %s: ", #cond);          \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            abort();                                                        \
        }                                                                   \
    } while (0)

/* Exclusive memory mode with the fixed side files registered (once). */
static inline void fuzz_init_storage(void)
{
    static int done;
    static uint8_t side[64 << 10];

    if (done)
        return;
    done = 1;
    qimg_mem_set_exclusive(true);
    for (size_t i = 0; i < sizeof(side); i++)
        side[i] = (uint8_t)(i * 7 + 1);
    qimg_mem_register(FUZZ_BACKING, side, sizeof(side));
    qimg_mem_register(FUZZ_DATA, side, sizeof(side));
}

/* memcmp, not a byte loop: a loop would be coverage-instrumented per byte
 * and dominate the run time. */
static inline int fuzz_all_zero(const uint8_t *p, size_t n)
{
    static const uint8_t zero[FUZZ_MAX_REQ];
    return !memcmp(p, zero, n);
}

/*
 * Read [off, off+len) in requests of `step` bytes (unaligned on purpose)
 * and, when must_be_zero, check the result reads as zero.
 */
static inline void fuzz_read(struct qimg_image *img, uint64_t off,
                             uint64_t len, size_t step, int must_be_zero,
                             uint64_t *budget)
{
    static uint8_t buf[FUZZ_MAX_REQ];
    struct qimg_error err;

    while (len && *budget) {
        size_t n = (size_t)(len < step ? len : step);
        if (n > *budget)
            n = (size_t)*budget;
        if (qimg_pread(img, off, n, buf, &err) < 0)
            return;
        FUZZ_ASSERT(!must_be_zero || fuzz_all_zero(buf, n),
                    "extent at %llu reported zero reads nonzero",
                    (unsigned long long)off);
        off += n;
        len -= n;
        *budget -= n;
    }
}

/*
 * Walk the whole image with block status through the chain (which asks
 * each layer in turn), checking each answer is a nonempty prefix of the
 * question, and read every extent within the budget: whole for small
 * images, sampled (head and tail) for large ones.  Zero extents must read
 * as zero.
 */
static inline void fuzz_walk(struct qimg_image *img, uint64_t *budget)
{
    uint64_t size = qimg_image_size(img), off = 0;
    struct qimg_extent ext;
    struct qimg_error err;
    size_t step = 4096 + 512 + 3;

    for (unsigned i = 0; off < size && i < FUZZ_EXTENT_BUDGET; i++) {
        if (qimg_block_status_chain(img, NULL, off, size - off, &ext, &err) < 0)
            break;
        FUZZ_ASSERT(ext.length > 0 && ext.length <= size - off,
                    "block status at %llu: length %llu of %llu",
                    (unsigned long long)off, (unsigned long long)ext.length,
                    (unsigned long long)(size - off));
        int zero = (ext.flags & QIMG_BS_ZERO) != 0;
        uint64_t head = ext.length < 2 * FUZZ_MAX_REQ ? ext.length
                                                      : FUZZ_MAX_REQ;
        fuzz_read(img, off, head, step, zero, budget);
        if (head < ext.length)
            fuzz_read(img, off + ext.length - FUZZ_MAX_REQ, FUZZ_MAX_REQ,
                      FUZZ_MAX_REQ, zero, budget);
        off += ext.length;
        step = step * 3 % FUZZ_MAX_REQ + 1;
    }
    /* Odd requests around the end of the image. */
    if (size)
        fuzz_read(img, size - 1, 1, 1, 0, budget);
    if (size > 70000)
        fuzz_read(img, size - 70000, 70000, 65537, 0, budget);
}

static void fuzz_check_report(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}

/* Everything read-only a command can do with an open image. */
static inline void fuzz_inspect(struct qimg_image *img)
{
    uint64_t budget = FUZZ_READ_BUDGET;
    struct qimg_error err;
    struct qimg_info info;
    struct qimg_snapshot *snaps = NULL;
    struct qimg_check res;
    struct qimg_measure m;
    size_t n = 0;

    memset(&info, 0, sizeof(info));
    if (qimg_get_info(img, &info, &err) == 0)
        qimg_info_release(&info);
    fuzz_walk(img, &budget);
    memset(&res, 0, sizeof(res));
    res.report = fuzz_check_report;
    qimg_check(img, 0, &res, &err);
    memset(&m, 0, sizeof(m));
    qimg_measure("qcow2", NULL, img, 0, &m, &err);
    if (qimg_snapshot_list(img, &snaps, &n, &err) == 0 && n) {
        /* Show the first snapshot and walk it too. */
        if (qimg_snapshot_load_tmp(img, snaps[0].id, NULL, &err) == 0)
            fuzz_walk(img, &budget);
    }
    free(snaps);
}

#endif
