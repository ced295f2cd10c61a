/*
 * cmd-resize.c - qemu-img resize
 *
 * resize [--object objectdef] [--image-opts] [-f fmt]
 *        [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size
 * Exit status: 0 on success, 1 on any error.
 *
 * As in qemu-img, the size is always the last argument and is taken off
 * argv before option parsing, so "-1M" needs no "--" in front of it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/*
 * QEMU's largest image length: INT64_MAX aligned down to its largest
 * request alignment (1 GiB).  Longer truncations fail in its block layer.
 */
#define MAX_IMAGE_LENGTH (INT64_MAX - ((1LL << 30) - 1))

struct resize_args {
    const char *filename;
    const char *fmt;
    bool image_opts, quiet, shrink;
    enum qimg_prealloc prealloc;
    int relative;        /* -1, 0 or +1: shrink by, absolute, grow by */
    uint64_t amount;
};

/* The size argument: optional sign, then a size as -o size= accepts it. */
static bool parse_size_arg(const char *arg, struct resize_args *a)
{
    bool hex_suffix;
    int ret;

    a->relative = 0;
    if (*arg == '+' || *arg == '-')
        a->relative = *arg++ == '+' ? 1 : -1;
    ret = qimg_parse_size(arg, &a->amount, &hex_suffix);
    if (ret == -ERANGE) {
        cli_error("Value '%s' is out of range for parameter 'size'", arg);
        return false;
    }
    if (ret < 0) {
        cli_error("Parameter 'size' expects a non-negative number below 2^64\n"
                  "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                  "giga-, tera-, peta-\nand exabytes, respectively.");
        return false;
    }
    if (hex_suffix)
        cli_warn("Using a multiplier suffix on hex numbers is deprecated: %s",
                 arg);
    return true;
}

/*
 * The new size, in qemu-img's signed 64-bit arithmetic: sizes of 8 EiB and
 * more wrap negative and are refused as not positive, like QEMU does.
 */
static int64_t new_size(const struct resize_args *a, uint64_t current)
{
    uint64_t total = a->amount;

    if (a->relative > 0)
        total = current + a->amount;
    else if (a->relative < 0)
        total = current - a->amount;
    return (int64_t)total;
}

static int do_resize(const struct resize_args *a)
{
    struct cli_open o = {
        .filename = a->filename, .fmt = a->fmt, .image_opts = a->image_opts,
        .flags = QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE, .quiet = a->quiet,
    };
    struct qimg_error err = {0};
    struct qimg_image *img = cli_open_image(&o);
    int64_t current, total;
    int ret = 1;

    if (!img)
        return 1;
    current = (int64_t)qimg_image_size(img);
    total = new_size(a, (uint64_t)current);
    if (total <= 0) {
        cli_error("New image size must be positive");
        goto out;
    }
    if (total <= current && a->prealloc != QIMG_PREALLOC_OFF) {
        cli_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (current > total && !a->shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        cli_warn("Shrinking an image will delete all data beyond the shrunken "
                 "image's end. Before performing such an operation, make sure "
                 "there is no important data there.");
        goto out;
    }
    if (total > MAX_IMAGE_LENGTH) {
        cli_error("offset(%lld) exceeds maximum(%lld)", (long long)total,
                  (long long)MAX_IMAGE_LENGTH);
        goto out;
    }
    if (qimg_truncate(img, (uint64_t)total, true, a->prealloc, &err) < 0) {
        cli_report(&err, NULL);
        goto out;
    }
    if (!a->quiet)
        printf("Image resized.\n");
    ret = 0;
out:
    qimg_close(img);
    return ret;
}

int cmd_resize(int argc, char **argv)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_PREALLOC, OPT_SHRINK };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"preallocation", required_argument, NULL, OPT_PREALLOC},
        {"shrink", no_argument, NULL, OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    struct resize_args a = {.prealloc = QIMG_PREALLOC_OFF};
    const char *size;
    int c, ret;

    if (argc < 3)
        return cli_usage_error("Not enough arguments");
    /* Taken before getopt so that negative sizes are not options. */
    size = argv[--argc];
    while ((c = getopt_long(argc, argv, ":f:hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': return cli_help();
        case 'f': a.fmt = optarg; break;
        case 'q': a.quiet = true; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: a.image_opts = true; break;
        case OPT_PREALLOC:
            if (qimg_prealloc_parse(optarg, &a.prealloc) < 0) {
                cli_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        case OPT_SHRINK: a.shrink = true; break;
        default:
            if ((ret = cli_bad_option(c, argv)) != CLI_CONTINUE)
                return ret;
            break;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting image file name and size");
    a.filename = argv[optind];
    if (!parse_size_arg(size, &a))
        return 1;
    return do_resize(&a);
}
