/*
 * cmd-commit.c - qemu-img commit
 *
 * commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache]
 *        [-b base] [-r rate_limit] [-d] [-p] filename
 * Exit status: 0 on success, 1 on any error.
 *
 * Copies what the image allocates into its backing file (or, with -b, what
 * it and the images above base allocate into base), then empties the image
 * unless -d.  -b implies -d, as in qemu-img.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct commit_args {
    const char *filename;
    const char *fmt;
    const char *base;
    bool image_opts, quiet, progress, drop;
    enum qimg_cache cache;
    uint64_t rate_limit;
};

static void on_progress(void *opaque, double percent)
{
    (void)opaque;
    cli_progress_print(percent);
}

/* End a progress line that never reached 100%, as qemu-img does. */
static void progress_abandon(const struct commit_args *a)
{
    if (a->progress) {
        printf("\n");
        fflush(stdout);
    }
}

static int do_commit(const struct commit_args *a)
{
    struct cli_open o = {
        .filename = a->filename, .fmt = a->fmt, .image_opts = a->image_opts,
        .flags = QIMG_OPEN_RDWR, .cache = a->cache, .quiet = a->quiet,
    };
    struct qimg_commit_params p = {
        .keep_top = a->drop, .rate_limit = a->rate_limit,
        .progress = on_progress,
    };
    struct qimg_error err = {0};
    struct qimg_image *img = cli_open_image(&o);
    int ret = 1;

    if (!img)
        return 1;
    cli_progress_init(a->progress, 1.0);
    p.top = img;
    if (a->base) {
        p.base = qimg_chain_find(img, a->base);
        if (!p.base) {
            progress_abandon(a);
            cli_error("Did not find '%s' in the backing chain of '%s'", a->base,
                      a->filename);
            goto out;
        }
    } else {
        p.base = qimg_image_backing(img);
        if (!p.base) {
            progress_abandon(a);
            cli_error("Image does not have a backing file");
            goto out;
        }
    }
    if (qimg_commit(&p, &err) < 0) {
        /* qemu-img shows 100% even when the job failed. */
        cli_progress_end();
        cli_report(&err, NULL);
        goto out;
    }
    cli_progress_end();
    if (!a->quiet)
        printf("Image committed.\n");
    ret = 0;
out:
    qimg_close(img);
    return ret;
}

int cmd_commit(int argc, char **argv)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {NULL, 0, NULL, 0},
    };
    struct commit_args a = {.cache = QIMG_CACHE_WRITEBACK};
    const char *cache = "writeback";
    int64_t rate;
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': return cli_help();
        case 'f': a.fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'b':
            a.base = optarg;
            a.drop = true;   /* -b implies -d */
            break;
        case 'd': a.drop = true; break;
        case 'p': a.progress = true; break;
        case 'q': a.quiet = true; break;
        case 'r':
            rate = cli_cvtnum_full("rate limit", optarg);
            if (rate < 0)
                return 1;
            a.rate_limit = (uint64_t)rate;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: a.image_opts = true; break;
        default: return cli_bad_option(c, argv);
        }
    }
    if (a.quiet)
        a.progress = false;
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a.filename = argv[optind];
    if (!cli_parse_cache(cache, &a.cache)) {
        cli_error("Invalid cache option: %s", cache);
        return 1;
    }
    return do_commit(&a);
}
