/*
 * qimg-stress - concurrent writers through libqimg's public API, to test
 * the thread safety every format driver promises.
 *
 *   qimg-stress [-f fmt] [-t cache] [-T threads] [-n ops] [-b block]
 *               [-s seed] FILE SPAN
 *
 * The first SPAN bytes are cut into blocks; block k belongs to thread
 * k % threads, so the threads share every cluster but never a block.  Each
 * thread writes all its blocks once (in a random order: copy-on-write of
 * shared clusters from all threads at once), then does random writes and
 * zero writes on them, and finally reads them back.  The final content of
 * every block is printed ("OFFSET LENGTH PATTERN") for the caller to check
 * through another tool.  Exit 1 on any error or mismatch.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg.h"

struct job {
    struct qimg_image *img;
    unsigned id, threads, ops;
    uint64_t block, nblocks;
    unsigned seed;
    uint8_t *expect;            /* final pattern per block (0: zero) */
    int failed;
};

static unsigned next_rand(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 8;
}

static int do_block(struct job *j, uint64_t k, uint8_t pat, bool zero,
                    uint8_t *buf)
{
    struct qimg_error err = {0};
    uint64_t off = k * j->block;
    int ret;

    if (zero) {
        ret = qimg_pwrite_zeroes(j->img, off, j->block,
                                 (next_rand(&j->seed) & 1) ? QIMG_ZERO_MAY_UNMAP
                                                           : 0, &err);
        pat = 0;
    } else {
        memset(buf, pat, j->block);
        ret = qimg_pwrite(j->img, off, j->block, buf, &err);
    }
    if (ret < 0) {
        fprintf(stderr, "qimg-stress: thread %u at %llu: %s\n", j->id,
                (unsigned long long)off, err.msg);
        return ret;
    }
    j->expect[k] = pat;
    return 0;
}

static int verify(struct job *j, uint8_t *buf)
{
    for (uint64_t k = j->id; k < j->nblocks; k += j->threads) {
        struct qimg_error err = {0};
        if (qimg_pread(j->img, k * j->block, j->block, buf, &err) < 0) {
            fprintf(stderr, "qimg-stress: read: %s\n", err.msg);
            return -1;
        }
        for (uint64_t i = 0; i < j->block; i++)
            if (buf[i] != j->expect[k]) {
                fprintf(stderr, "qimg-stress: block %llu byte %llu: %#x, "
                        "expected %#x\n", (unsigned long long)k,
                        (unsigned long long)i, buf[i], j->expect[k]);
                return -1;
            }
    }
    return 0;
}

static void *worker(void *opaque)
{
    struct job *j = opaque;
    uint64_t mine = (j->nblocks - j->id + j->threads - 1) / j->threads;
    uint8_t *buf = malloc(j->block);
    uint64_t *order = malloc(sizeof(*order) * (mine ? mine : 1));

    if (!buf || !order) {
        j->failed = 1;
        goto out;
    }
    /* Every block written once, in a shuffled order. */
    for (uint64_t i = 0; i < mine; i++)
        order[i] = j->id + i * j->threads;
    for (uint64_t i = mine; i > 1; i--) {
        uint64_t r = next_rand(&j->seed) % i, t = order[i - 1];
        order[i - 1] = order[r];
        order[r] = t;
    }
    for (uint64_t i = 0; i < mine && !j->failed; i++)
        if (do_block(j, order[i], (uint8_t)(1 + (j->id * 37 + i) % 254),
                     false, buf) < 0)
            j->failed = 1;
    for (unsigned n = 0; n < j->ops && mine && !j->failed; n++) {
        uint64_t k = order[next_rand(&j->seed) % mine];
        bool zero = next_rand(&j->seed) % 5 == 0;
        if (do_block(j, k, (uint8_t)(1 + next_rand(&j->seed) % 254), zero,
                     buf) < 0)
            j->failed = 1;
    }
    if (!j->failed && verify(j, buf) < 0)
        j->failed = 1;
out:
    free(buf);
    free(order);
    return NULL;
}

int main(int argc, char **argv)
{
    struct qimg_open_params p = {.flags = QIMG_OPEN_RDWR};
    unsigned threads = 8, ops = 200, seed = 1;
    uint64_t block = 4096, span;
    struct qimg_error err = {0};
    struct qimg_image *img;
    int c, failed = 0;

    while ((c = getopt(argc, argv, "f:t:T:n:b:s:")) != -1) {
        switch (c) {
        case 'f': p.format = optarg; break;
        case 't':
            if (qimg_cache_parse(optarg, &p.cache) < 0)
                return 2;
            break;
        case 'T': threads = (unsigned)atoi(optarg); break;
        case 'n': ops = (unsigned)atoi(optarg); break;
        case 'b': block = strtoull(optarg, NULL, 0); break;
        case 's': seed = (unsigned)atoi(optarg); break;
        default: return 2;
        }
    }
    if (argc - optind != 2 || !threads || threads > 64 || !block ||
        qimg_parse_size(argv[optind + 1], &span, NULL) < 0 || span < block) {
        fprintf(stderr, "usage: qimg-stress [-f fmt] [-t cache] [-T threads] "
                "[-n ops] [-b block] [-s seed] FILE SPAN\n");
        return 2;
    }
    p.filename = argv[optind];
    if (qimg_open(&img, &p, &err) < 0) {
        fprintf(stderr, "qimg-stress: %s\n", err.msg);
        return 1;
    }
    uint64_t nblocks = span / block;
    uint8_t *expect = calloc(nblocks, 1);
    struct job *jobs = calloc(threads, sizeof(*jobs));
    pthread_t *tids = calloc(threads, sizeof(*tids));
    if (!expect || !jobs || !tids)
        return 1;
    for (unsigned i = 0; i < threads; i++) {
        jobs[i] = (struct job){.img = img, .id = i, .threads = threads,
                               .ops = ops, .block = block, .nblocks = nblocks,
                               .seed = seed * 7919u + i, .expect = expect};
        pthread_create(&tids[i], NULL, worker, &jobs[i]);
    }
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        failed |= jobs[i].failed;
    }
    if (!failed && qimg_flush(img, &err) < 0) {
        fprintf(stderr, "qimg-stress: flush: %s\n", err.msg);
        failed = 1;
    }
    qimg_close(img);
    for (uint64_t k = 0; k < nblocks && !failed; k++)
        printf("%llu %llu %u\n", (unsigned long long)(k * block),
               (unsigned long long)block, expect[k]);
    free(expect);
    free(jobs);
    free(tids);
    return failed;
}
