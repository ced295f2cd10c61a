/*
 * cmd-create.c - qemu-img create
 *
 * create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]]
 *        [-u] [-o options] filename [size]
 * Exit status: 0 on success, 1 on any error.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* QEMU's hint after "without backing format" has no final newline. */
static void report_prepare_error(const struct qimg_error *err,
                                 const char *filename)
{
    if (strstr(err->msg, "\nDetected format of ")) {
        fflush(stdout);
        fprintf(stderr, "%s: %s: %s", cli_prog, filename, err->msg);
        return;
    }
    cli_report(err, "%s: ", filename);
}

/* Whether -b/-o backing_file is given without -F/-o backing_fmt. */
static bool unopened_backing_without_format(const char *options,
                                            const char *backing,
                                            const char *backing_fmt)
{
    struct qimg_opts *o = qimg_opts_new();
    bool has_file, has_fmt;

    if (options)
        qimg_opts_parse(o, options, NULL, NULL);
    has_file = backing || qimg_opts_get(o, "backing_file");
    has_fmt = backing_fmt || qimg_opts_get(o, "backing_fmt");
    qimg_opts_free(o);
    return has_file && !has_fmt;
}

int cmd_create(int argc, char **argv)
{
    enum { OPT_OBJECT = 256 };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        /* long forms added by newer qemu-img (10.1) */
        {"format", required_argument, NULL, 'f'},
        {"options", required_argument, NULL, 'o'},
        {"backing", required_argument, NULL, 'b'},
        {"backing-format", required_argument, NULL, 'F'},
        {"backing-unsafe", no_argument, NULL, 'u'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL, *filename;
    bool quiet = false, unsafe = false;
    char *options = NULL, *summary = NULL;
    struct qimg_opts *opts = NULL;
    struct qimg_error err = {0};
    int64_t size = -1;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': free(options); return cli_help();
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'f': fmt = optarg; break;
        case 'o':
            if (!cli_add_option_list(&options, optarg))
                goto out;
            break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                goto out;
            break;
        default:
            if ((ret = cli_bad_option(c, argv)) == CLI_CONTINUE) {
                ret = 1;   /* the failure code, as before the option */
                break;
            }
            goto out;
        }
    }
    filename = optind < argc ? argv[optind] : NULL;
    if (cli_has_help_option(options)) {
        ret = cli_print_create_opts_help(fmt, filename);
        goto out;
    }
    if (optind >= argc) {
        ret = cli_usage_error("Expecting image file name");
        goto out;
    }
    optind++;
    if (optind < argc) {
        size = cli_cvtnum_full("image size", argv[optind++]);
        if (size < 0)
            goto out;
    }
    if (optind != argc) {
        ret = cli_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    if (qimg_create_prepare(fmt, filename, options, size, backing, backing_fmt,
                            unsafe, &opts, &summary, &err) < 0) {
        /* -u: a backing file without format is refused before the size is
         * missed. */
        if (unsafe && !strcmp(err.msg, "Image creation needs a size "
                                       "parameter") &&
            unopened_backing_without_format(options, backing, backing_fmt))
            cli_error("%s: Backing file specified without backing format",
                      filename);
        else
            report_prepare_error(&err, filename);
        goto out;
    }
    if (unsafe && qimg_opts_get(opts, "backing_file") &&
        !qimg_opts_get(opts, "backing_fmt")) {
        cli_error("%s: Backing file specified without backing format",
                  filename);
        goto out;
    }
    if (!quiet) {
        printf("Formatting '%s', fmt=%s %s\n", filename, fmt, summary);
        fflush(stdout);
    }
    if (qimg_create(fmt, filename, opts, &err) < 0) {
        cli_report(&err, "%s: ", filename);
        goto out;
    }
    ret = 0;
out:
    free(options);
    free(summary);
    qimg_opts_free(opts);
    return ret;
}
