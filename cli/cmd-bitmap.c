/*
 * cmd-bitmap.c - qemu-img bitmap
 *
 * bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *         --disable)... [-b source_file [-F source_fmt]] [-g granularity]
 *        [--object objectdef] [--image-opts | -f fmt] filename bitmap
 * Exit status: 0 on success, 1 on any error.
 * The operations act on one persistent bitmap of the image, in the order
 * given; the first failure stops the rest.  Changes reach the image when
 * it is closed, as in QEMU (removal at once).
 */
#include <stdint.h>
#include <stdlib.h>

#include "cli.h"

enum bitmap_act { ACT_ADD, ACT_REMOVE, ACT_CLEAR, ACT_ENABLE, ACT_DISABLE,
                  ACT_MERGE };

static const char *const act_name[] = {
    [ACT_ADD] = "add", [ACT_REMOVE] = "remove", [ACT_CLEAR] = "clear",
    [ACT_ENABLE] = "enable", [ACT_DISABLE] = "disable", [ACT_MERGE] = "merge",
};

struct action {
    enum bitmap_act act;
    const char *src;        /* --merge SOURCE */
};

struct bitmap_args {
    struct action *acts;
    size_t n_acts;
    const char *fmt, *src_file, *src_fmt;
    int64_t granularity;
    bool image_opts, add, merge, add_disabled;
};

/* One operation; *err filled on failure. */
static int run_action(struct qimg_image *img, struct qimg_image *src,
                      const struct bitmap_args *a, const struct action *act,
                      const char *bitmap, struct qimg_error *err)
{
    switch (act->act) {
    case ACT_ADD: {
        /* QEMU takes a given granularity as a 32-bit number: 4G is given
         * but truncates to the invalid 0 (not to "the default"). */
        uint64_t g = (uint32_t)a->granularity;
        if (a->granularity && !g)
            g = UINT64_MAX;
        return qimg_bitmap_add(img, bitmap, g, a->add_disabled, err);
    }
    case ACT_REMOVE:
        return qimg_bitmap_remove(img, bitmap, err);
    case ACT_CLEAR:
        return qimg_bitmap_clear(img, bitmap, err);
    case ACT_ENABLE:
    case ACT_DISABLE:
        return qimg_bitmap_enable(img, bitmap, act->act == ACT_ENABLE, err);
    case ACT_MERGE:
        return qimg_bitmap_merge(img, bitmap, src, act->src, err);
    }
    return 0;
}

static int parse_args(struct bitmap_args *a, int argc, char **argv)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_ADD, OPT_REMOVE, OPT_CLEAR,
           OPT_ENABLE, OPT_DISABLE, OPT_MERGE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {"granularity", required_argument, NULL, 'g'},
        {"source-file", required_argument, NULL, 'b'},
        {"source-format", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    int c, ret;

    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1) {
        struct action *act = &a->acts[a->n_acts];
        switch (c) {
        case 'h': return cli_help();
        case 'b': a->src_file = optarg; break;
        case 'f': a->fmt = optarg; break;
        case 'F': a->src_fmt = optarg; break;
        case 'g':
            a->granularity = cli_cvtnum_full("granularity", optarg);
            if (a->granularity < 0)
                return 1;
            break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: a->image_opts = true; break;
        case OPT_ADD: case OPT_REMOVE: case OPT_CLEAR: case OPT_ENABLE:
        case OPT_DISABLE: case OPT_MERGE:
            act->act = (enum bitmap_act)(ACT_ADD + (c - OPT_ADD));
            act->src = c == OPT_MERGE ? optarg : NULL;
            a->n_acts++;
            a->add |= c == OPT_ADD;
            a->merge |= c == OPT_MERGE;
            /* The last of --enable/--disable decides how --add adds. */
            if (c == OPT_ENABLE || c == OPT_DISABLE)
                a->add_disabled = c == OPT_DISABLE;
            break;
        default:
            if ((ret = cli_bad_option(c, argv)) != CLI_CONTINUE)
                return ret;
            break;
        }
    }
    return -1;
}

/* The checks qemu-img makes before opening anything. */
static bool check_args(const struct bitmap_args *a, int argc)
{
    if (!a->n_acts)
        cli_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
    else if (a->granularity && !a->add)
        cli_error("granularity only supported with --add");
    else if (a->src_fmt && !a->src_file)
        cli_error("-F only supported with -b");
    else if (a->src_file && !a->merge)
        cli_error("Merge bitmap source file only supported with --merge");
    else if (optind != argc - 2)
        cli_error("Expecting filename and bitmap name");
    else
        return true;
    return false;
}

static int run_actions(struct qimg_image *img, struct qimg_image *src,
                       const struct bitmap_args *a, const char *bitmap)
{
    for (size_t i = 0; i < a->n_acts; i++) {
        struct qimg_error err = {0};
        if (run_action(img, src, a, &a->acts[i], bitmap, &err) < 0) {
            cli_error("Operation %s on bitmap %s failed: %s",
                      act_name[a->acts[i].act], bitmap, err.msg);
            return 1;
        }
    }
    return 0;
}

int cmd_bitmap(int argc, char **argv)
{
    struct bitmap_args a = {0};
    struct qimg_image *img = NULL, *src = NULL;
    int ret;

    a.acts = calloc((size_t)argc, sizeof(*a.acts));
    if (!a.acts)
        return 1;
    ret = parse_args(&a, argc, argv);
    if (ret >= 0)
        goto out;
    ret = 1;
    if (!check_args(&a, argc))
        goto out;
    /* The bitmaps live in this image alone: no backing chain. */
    img = cli_open_image(&(struct cli_open){
        .filename = argv[optind], .fmt = a.fmt, .image_opts = a.image_opts,
        .flags = QIMG_OPEN_RDWR | QIMG_OPEN_NO_BACKING,
    });
    if (!img)
        goto out;
    if (a.src_file) {
        src = cli_open_image(&(struct cli_open){
            .filename = a.src_file, .fmt = a.src_fmt,
            .flags = QIMG_OPEN_NO_BACKING,
        });
        if (!src)
            goto out;
    }
    ret = run_actions(img, src ? src : img, &a, argv[optind + 1]);
out:
    qimg_close(src);
    qimg_close(img);
    free(a.acts);
    return ret;
}
