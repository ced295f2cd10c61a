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
    struct cli_image_args img;  /* file name, -f, --image-opts */
    const char *base;
    bool quiet, progress, drop;
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
    cli_progress_json_end();
    if (a->progress) {
        printf("\n");
        fflush(stdout);
    }
}

static int do_commit(const struct commit_args *a)
{
    struct cli_open o = cli_image_args_open(&a->img, QIMG_OPEN_RDWR);
    struct qimg_commit_params p = {
        .keep_top = a->drop, .rate_limit = a->rate_limit,
        .progress = on_progress,
    };
    struct qimg_error err = {0};
    struct qimg_image *img;
    int ret = 1;

    o.cache = a->cache;
    o.quiet = a->quiet;
    img = cli_open_image(&o);
    if (!img)
        return 1;
    cli_progress_set_total(qimg_image_size(img));
    cli_progress_init(a->progress, 1.0);
    p.top = img;
    if (a->base) {
        p.base = qimg_chain_find(img, a->base);
        if (!p.base) {
            progress_abandon(a);
            cli_error("Did not find '%s' in the backing chain of '%s'", a->base,
                      a->img.filename);
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
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_OBJECT, CLI_LONGOPT_IMAGE_OPTS,
        CLI_LONGOPT_PROGRESS,
        {NULL, 0, NULL, 0},
    };
    struct commit_args a = {.cache = QIMG_CACHE_WRITEBACK};
    const char *cache = "writeback";
    int64_t rate;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 't': cache = optarg; break;
        case 'b':
            a.base = optarg;
            a.drop = true;   /* -b implies -d */
            break;
        case 'd': a.drop = true; break;
        case 'p': a.progress = true; break;
        case CLI_OPT_PROGRESS:
            if ((ret = cli_progress_option(optarg, &a.progress)) != CLI_CONTINUE)
                return ret;
            break;
        case 'q': a.quiet = true; break;
        case 'r':
            rate = cli_cvtnum_full("rate limit", optarg);
            if (rate < 0)
                return 1;
            a.rate_limit = (uint64_t)rate;
            break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    if (a.quiet)
        a.progress = false;
    ret = cli_image_args_end(argc, argv, &a.img, NULL);
    if (ret != CLI_CONTINUE)
        return ret;
    if (!cli_parse_cache(cache, &a.cache)) {
        cli_error("Invalid cache option: %s", cache);
        return 1;
    }
    return do_commit(&a);
}
