/*
 * cmd-amend.c - qemu-img amend
 *
 * amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache]
 *       [--force] -o options filename
 * Exit status: 0 on success, 1 on any error.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* "Amend options for 'fmt':" and the sorted option list. */
static int print_amend_help(const char *fmt)
{
    const struct qimg_opt_desc *d[64];
    struct qimg_error err = {0};
    int n;

    if (!qimg_format_known(fmt)) {
        cli_error("Unknown file format '%s'", fmt);
        return 1;
    }
    n = qimg_amend_opts(fmt, d, 64, &err);
    if (n < 0) {
        cli_error("%s", err.msg);
        return 1;
    }
    printf("Amend options for '%s':\n", fmt);
    return cli_print_opt_list(d, (size_t)n);
}

static void on_progress(void *opaque, double percent)
{
    (void)opaque;
    cli_progress_print(percent);
}

int cmd_amend(int argc, char **argv)
{
    enum { OPT_OBJECT = CLI_OPT_OWN, OPT_IMAGE_OPTS, OPT_FORCE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force", no_argument, NULL, OPT_FORCE},
        /* long forms added by newer qemu-img (10.1) */
        {"options", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, 'f'},
        {"cache", required_argument, NULL, 't'},
        CLI_LONGOPT_PROGRESS,
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    const char *cache = "writeback";
    bool progress = false, force = false;
    char *options = NULL;
    struct cli_open o = {0};
    struct qimg_opts *opts = NULL;
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': free(options); return cli_help();
        case 'o':
            if (!cli_add_option_list(&options, optarg))
                goto out;
            break;
        case 'f': o.fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'p': progress = true; break;
        case CLI_OPT_PROGRESS:
            if (cli_progress_option(optarg, &progress) != CLI_CONTINUE)
                goto out;
            break;
        case 'q': o.quiet = true; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                goto out;
            break;
        case OPT_IMAGE_OPTS: o.image_opts = true; break;
        case OPT_FORCE: force = true; break;
        default:
            if ((ret = cli_bad_option(c, argv)) == CLI_CONTINUE) {
                ret = 1;   /* the failure code, as before the option */
                break;
            }
            goto out;
        }
    }
    if (!options) {
        ret = cli_usage_error("Must specify options (-o)");
        goto out;
    }
    if (o.quiet)
        progress = false;
    if (o.fmt && cli_has_help_option(options)) {
        ret = print_amend_help(o.fmt);
        goto out;
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        goto out;
    }
    o.filename = argv[optind];
    if (!cli_parse_cache(cache, &o.cache)) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }
    o.flags = QIMG_OPEN_RDWR;   /* amend asks for resize only when resizing */
    img = cli_open_image(&o);
    if (!img)
        goto out;
    if (cli_has_help_option(options)) {
        ret = print_amend_help(qimg_image_format(img));
        goto out;
    }
    opts = qimg_opts_new();
    if (qimg_amend_parse_opts(qimg_image_format(img), options, opts,
                              &err) < 0) {
        cli_error("%s", err.msg);
        goto out;
    }
    cli_progress_set_total(qimg_image_size(img));
    cli_progress_init(progress, 1.0);
    ret = qimg_amend(img, opts, force, on_progress, NULL, &err);
    if (ret < 0) {
        /* qemu-img reports 100% first, then the error. */
        cli_progress_print(100.0);
        fflush(stdout);
        cli_error("%s", err.msg);
        cli_progress_end_after_error();
        ret = 1;
        goto out;
    }
    cli_progress_end();
    ret = 0;
out:
    qimg_opts_free(opts);
    qimg_close(img);
    free(options);
    return ret;
}
