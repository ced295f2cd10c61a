/*
 * cmd-bench.c - qemu-img bench
 *
 * bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval]
 *       [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q]
 *       [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
 * Exit status: 0 on success, 1 on any error.
 * Deviation: a queue depth of 0 is refused (qemu-img 7.2 hangs forever).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* qemu_strtoul-like: whole string, base auto, no overflow. */
static bool parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;
    if (!*s)
        return false;
    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

struct bench_args {
    struct qimg_bench_params p;
    struct cli_open o;
    const char *cache;
    bool native;
};

static int run_bench(struct bench_args *a)
{
    struct qimg_error err = {0};
    struct qimg_image *img;
    double secs = 0;
    int ret;

    if (!cli_parse_cache(a->cache, &a->o.cache)) {
        cli_error("Invalid cache mode");
        return 1;
    }
    if (a->native && a->o.cache != QIMG_CACHE_NONE &&
        a->o.cache != QIMG_CACHE_DIRECTSYNC) {
        cli_error("Could not open '%s': aio=native was specified, but it "
                  "requires cache.direct=on, which was not specified.",
                  a->o.filename);
        return 1;
    }
    a->o.flags |= a->p.write ? QIMG_OPEN_RDWR : 0;
    img = cli_open_image(&a->o);
    if (!img)
        return 1;
    if (!a->p.step)
        a->p.step = a->p.bufsize;
    if (!a->p.depth) {
        cli_error("Invalid queue depth specified");
        qimg_close(img);
        return 1;
    }
    printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at "
           "offset %llu, step size %d)\n", (int)a->p.count,
           a->p.write ? "write" : "read", (int)a->p.bufsize, (int)a->p.depth,
           (unsigned long long)a->p.offset, (int)a->p.step);
    if (a->p.flush_interval)
        printf("Sending flush every %d requests\n", (int)a->p.flush_interval);
    fflush(stdout);
    ret = qimg_bench(img, &a->p, &secs, &err);
    qimg_close(img);
    if (ret < 0) {
        cli_error("Failed request: %s", strerror(-ret));
        return 1;
    }
    printf("Run completed in %3.3f seconds.\n", secs);
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    enum { OPT_FLUSH = 256, OPT_IMAGE_OPTS, OPT_PATTERN, OPT_NO_DRAIN };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"flush-interval", required_argument, NULL, OPT_FLUSH},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
        {"force-share", no_argument, NULL, 'U'},
        /* long forms added by newer qemu-img (10.1) */
        {"count", required_argument, NULL, 'c'},
        {"depth", required_argument, NULL, 'd'},
        {"format", required_argument, NULL, 'f'},
        {"aio", required_argument, NULL, 'i'},
        {"offset", required_argument, NULL, 'o'},
        {"quiet", no_argument, NULL, 'q'},
        {"buffer-size", required_argument, NULL, 's'},
        {"step-size", required_argument, NULL, 'S'},
        {"cache", required_argument, NULL, 't'},
        {"write", no_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    struct bench_args a = {
        .p = {.count = 75000, .depth = 64, .bufsize = 4096, .drain = true},
        .cache = "writeback",
    };
    unsigned long v;
    int64_t n;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h': return cli_help();
        case 'c':
            if (!parse_ulong(optarg, INT_MAX, &v)) {
                cli_error("Invalid request count specified");
                return 1;
            }
            a.p.count = v;
            break;
        case 'd':
            if (!parse_ulong(optarg, INT_MAX, &v)) {
                cli_error("Invalid queue depth specified");
                return 1;
            }
            a.p.depth = (uint32_t)v;
            break;
        case 'f': a.o.fmt = optarg; break;
        case 'n': a.native = true; break;
        case 'i':
            if (!strcmp(optarg, "native")) {
                a.native = true;
            } else if (strcmp(optarg, "threads") && strcmp(optarg, "io_uring")) {
                cli_error("Invalid aio option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            n = cli_cvtnum_full("offset", optarg);
            if (n < 0)
                return 1;
            a.p.offset = (uint64_t)n;
            break;
        case 'q': break;   /* qemu-img bench prints the same with -q */
        case 's':
            n = cli_cvtnum("buffer size", optarg, 0, INT_MAX);
            if (n < 0)
                return 1;
            a.p.bufsize = (size_t)n;
            break;
        case 'S':
            n = cli_cvtnum("step_size", optarg, 0, INT_MAX);
            if (n < 0)
                return 1;
            a.p.step = (uint64_t)n;
            break;
        case 't': a.cache = optarg; break;
        case 'w': a.p.write = true; break;
        case 'U': a.o.flags |= QIMG_OPEN_SHARE; break;
        case OPT_FLUSH:
            if (!parse_ulong(optarg, INT_MAX, &v)) {
                cli_error("Invalid flush interval specified");
                return 1;
            }
            a.p.flush_interval = v;
            break;
        case OPT_IMAGE_OPTS: a.o.image_opts = true; break;
        case OPT_PATTERN:
            if (!parse_ulong(optarg, 0xff, &v)) {
                cli_error("Invalid pattern byte specified");
                return 1;
            }
            a.p.pattern = (uint8_t)v;
            break;
        case OPT_NO_DRAIN: a.p.drain = false; break;
        default:
            if ((ret = cli_bad_option(c, argv)) != CLI_CONTINUE)
                return ret;
            break;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a.o.filename = argv[argc - 1];
    if (a.p.flush_interval && !a.p.write) {
        cli_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (a.p.flush_interval && a.p.flush_interval < a.p.depth) {
        cli_error("Flush interval can't be smaller than depth");
        return 1;
    }
    return run_bench(&a);
}
