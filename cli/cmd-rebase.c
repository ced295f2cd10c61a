/*
 * cmd-rebase.c - qemu-img rebase
 *
 * rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache]
 *        [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename
 * Exit status: 0 on success, 1 on any error.
 *
 * Safe mode copies into the image whatever would change under it with the
 * new backing file; -u only rewrites the header.  -b "" removes the backing
 * file (in safe mode after copying everything the old chain provides).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct rebase_args {
    struct cli_image_args img;  /* file name, -f, -U, --image-opts */
    const char *backing;
    const char *backing_fmt;
    const char *cache, *src_cache;
    bool quiet, progress, unsafe;
};

/*
 * qemu-img's progress for rebase: printed when it moved by more than 2%
 * since the last line, and at 0 and 100.  Values are floats, as QEMU's.
 */
#define REBASE_MIN_SKIP 2.0f

struct progress {
    bool on;
    float last;
};

static void progress_show(struct progress *pr, float cur)
{
    cli_progress_json(cur);
    if (!pr->on)
        return;
    if (cur > 100)
        cur = 100;
    if (cur > pr->last + REBASE_MIN_SKIP || cur < pr->last - REBASE_MIN_SKIP ||
        cur == 0 || cur == 100) {
        pr->last = cur;
        printf("    (%3.2f/100%%)\r", cur);
        fflush(stdout);
    }
}

static void on_progress(void *opaque, double percent)
{
    progress_show(opaque, (float)percent);
}

static void progress_end(struct progress *pr)
{
    cli_progress_json_end();
    if (pr->on) {
        printf("\n");
        fflush(stdout);
    }
}

/*
 * Record the new backing file.  As qemu-img, a named backing file needs a
 * format, and progress shows 100% even when this step fails.
 */
static int change_backing(const struct rebase_args *a, struct qimg_image *img,
                          struct progress *pr)
{
    bool named = a->backing && a->backing[0];
    struct qimg_error err = {0};
    const char *why;
    int ret;

    progress_show(pr, 100);
    if (named && !a->backing_fmt)
        ret = -EINVAL;
    else
        ret = qimg_change_backing(img, named ? a->backing : NULL,
                                  named ? a->backing_fmt : NULL, &err);
    if (!ret)
        return 0;
    if (ret == -ENOSPC)
        why = "No space left in the file header";
    else if (ret == -EINVAL && named && !a->backing_fmt)
        why = "backing format must be specified";
    else
        why = strerror(-ret);
    cli_error("Could not change the backing file to '%s': %s",
              a->backing ? a->backing : "(null)", why);
    return ret;
}

static int run_rebase(const struct rebase_args *a, struct progress *pr)
{
    /* -U is for the backing files: the image itself is written */
    struct cli_open o = {
        .filename = a->img.filename, .fmt = a->img.fmt,
        .image_opts = a->img.image_opts,
        .flags = QIMG_OPEN_RDWR | (a->unsafe ? QIMG_OPEN_NO_BACKING : 0),
        .quiet = a->quiet,
    };
    struct qimg_rebase_params p = {
        .backing = a->backing, .backing_fmt = a->backing_fmt,
        .unsafe = a->unsafe,
        .backing_flags = a->img.force_share ? QIMG_OPEN_SHARE : 0,
        .progress = on_progress, .opaque = pr,
    };
    struct qimg_error err = {0};
    struct qimg_image *img;
    int ret;

    if (!cli_parse_cache(a->cache, &o.cache)) {
        cli_error("Invalid cache option: %s", a->cache);
        return 1;
    }
    if (!cli_parse_cache(a->src_cache, &p.backing_cache)) {
        cli_error("Invalid source cache option: %s", a->src_cache);
        return 1;
    }
    img = cli_open_image(&o);
    if (!img)
        return 1;
    p.img = img;
    cli_progress_set_total(qimg_image_size(img));
    ret = qimg_rebase(&p, &err);
    if (ret < 0)
        cli_report(&err, NULL);
    else
        ret = change_backing(a, img, pr);
    qimg_close(img);
    return ret < 0 ? 1 : 0;
}

int cmd_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_OBJECT, CLI_LONGOPT_IMAGE_OPTS,
        CLI_LONGOPT_FORCE_SHARE, CLI_LONGOPT_PROGRESS,
        {NULL, 0, NULL, 0},
    };
    struct rebase_args a = {.cache = "writeback", .src_cache = "writeback"};
    struct progress pr = {0};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'F': a.backing_fmt = optarg; break;
        case 'b': a.backing = optarg; break;
        case 'u': a.unsafe = true; break;
        case 'p': a.progress = true; break;
        case CLI_OPT_PROGRESS:
            if ((ret = cli_progress_option(optarg, &a.progress)) != CLI_CONTINUE)
                return ret;
            break;
        case 't': a.cache = optarg; break;
        case 'T': a.src_cache = optarg; break;
        case 'q': a.quiet = true; break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    ret = cli_image_args_end(argc, argv, &a.img, NULL);
    if (ret != CLI_CONTINUE)
        return ret;
    if (a.quiet)
        a.progress = false;
    if (!a.unsafe && !a.backing)
        return cli_usage_error("Must specify backing file (-b) or use unsafe "
                               "mode (-u)");
    pr.on = a.progress;
    progress_show(&pr, 0);
    ret = run_rebase(&a, &pr);
    progress_end(&pr);
    return ret;
}
