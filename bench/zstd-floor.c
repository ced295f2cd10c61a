/*
 * The CPU floor of `convert -c -o compression_type=zstd`: libzstd's own
 * time for the clusters of an image, on one thread, with no I/O.  Each
 * 64 KiB cluster that is not all zero is compressed on its own, at zstd's
 * default level 3 (QEMU's), into a buffer of one cluster less one byte
 * (qcow2 keeps only what saves space), in several ways:
 *
 *   one       one context, reused (ZSTD_compressCCtx): what qimg does
 *             per worker thread
 *   rotate N  N contexts used in turn, as N workers sharing one CPU
 *             would use them: the tables of each (384 KiB at level 3
 *             for 64 KiB inputs) leave the CPU's caches between uses
 *   fresh     a context created and freed per cluster: qemu-img 7.2
 *   stream2   one context, ZSTD_compressStream2(ZSTD_e_end), QEMU's call
 *   bound     one context, ZSTD_compressCCtx into ZSTD_compressBound()
 *             bytes (zstd's fast path), kept when it is below a cluster
 *
 * Prints, per way, the best CPU time (ms) of several passes and a
 * checksum of all the outputs (the same for every way: same bytes).
 *
 *   bench/zstd-floor.sh FILE [CLUSTER]    builds and runs this file
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#define RUNS 5
#define MAX_CTX 64

static uint8_t *data;
static size_t nclusters, cluster;

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* FNV-1a over the output bytes and lengths. */
static uint64_t mix(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (h ^ n) * 1099511628211ull;
}

enum way { ONE, ROTATE, FRESH, STREAM2, BOUND };

static size_t compress_one(enum way w, ZSTD_CCtx *c, uint8_t *out, size_t cap,
                           const uint8_t *in)
{
    size_t r;

    if (w == FRESH) {
        c = ZSTD_createCCtx();
        r = ZSTD_compressCCtx(c, out, cap, in, cluster, ZSTD_CLEVEL_DEFAULT);
        ZSTD_freeCCtx(c);
    } else if (w == STREAM2) {
        ZSTD_inBuffer ib = {in, cluster, 0};
        ZSTD_outBuffer ob = {out, cap, 0};
        ZSTD_CCtx_reset(c, ZSTD_reset_session_only);
        ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, ZSTD_CLEVEL_DEFAULT);
        r = ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_end);
        r = ZSTD_isError(r) || r ? (size_t)-1 : ob.pos;
    } else if (w == BOUND) {
        r = ZSTD_compressCCtx(c, out, ZSTD_compressBound(cluster), in, cluster,
                              ZSTD_CLEVEL_DEFAULT);
        if (!ZSTD_isError(r) && r > cap)
            r = (size_t)-1;
    } else {
        r = ZSTD_compressCCtx(c, out, cap, in, cluster, ZSTD_CLEVEL_DEFAULT);
    }
    return r;
}

static void run(const char *name, enum way w, unsigned nctx)
{
    ZSTD_CCtx *ctx[MAX_CTX];
    uint8_t *out = malloc(ZSTD_compressBound(cluster));
    double best = 1e30;
    uint64_t sum = 0;
    size_t stored = 0, raw = 0;

    for (unsigned i = 0; i < nctx; i++)
        ctx[i] = ZSTD_createCCtx();
    for (int run = 0; run < RUNS; run++) {
        double t0 = cpu_ms();
        uint64_t h = 14695981039346656037ull;
        stored = raw = 0;
        for (size_t k = 0; k < nclusters; k++) {
            size_t r = compress_one(w, ctx[k % nctx], out, cluster - 1,
                                    data + k * cluster);
            if (ZSTD_isError(r)) {
                raw++;      /* does not fit: stored uncompressed */
                h = mix(h, NULL, 0);
            } else {
                stored += r;
                h = mix(h, out, r);
            }
        }
        double t = cpu_ms() - t0;
        if (t < best)
            best = t;
        sum = h;
    }
    printf("%-10s %3u ctx  %8.1f ms  %7.1f MiB/s  out %zu bytes, %zu raw"
           "  sum %016llx\n", name, nctx, best,
           nclusters * cluster / 1048576.0 / (best / 1e3), stored, raw,
           (unsigned long long)sum);
    for (unsigned i = 0; i < nctx; i++)
        ZSTD_freeCCtx(ctx[i]);
    free(out);
}

int main(int argc, char **argv)
{
    FILE *f;
    uint8_t *buf;
    size_t n;

    if (argc < 2) {
        fprintf(stderr, "usage: %s RAWFILE [CLUSTER]\n", argv[0]);
        return 2;
    }
    cluster = argc > 2 ? strtoul(argv[2], NULL, 0) : 65536;
    f = fopen(argv[1], "rb");
    if (!f || !(buf = malloc(cluster))) {
        perror(argv[1]);
        return 1;
    }
    /* Keep the clusters that are not all zero, back to back. */
    while ((n = fread(buf, 1, cluster, f)) > 0) {
        if (n < cluster)
            memset(buf + n, 0, cluster - n);
        if (all_zero(buf, cluster))
            continue;
        data = realloc(data, (nclusters + 1) * cluster);
        if (!data)
            return 1;
        memcpy(data + nclusters++ * cluster, buf, cluster);
    }
    fclose(f);
    printf("libzstd %s, %zu data clusters of %zu bytes (%.1f MiB)\n",
           ZSTD_versionString(), nclusters, cluster,
           nclusters * cluster / 1048576.0);
    run("one", ONE, 1);
    run("rotate", ROTATE, 2);
    run("rotate", ROTATE, 3);
    run("rotate", ROTATE, 8);
    run("fresh", FRESH, 1);
    run("stream2", STREAM2, 1);
    run("bound", BOUND, 1);
    run("one", ONE, 1);
    return 0;
}
