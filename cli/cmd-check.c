/*
 * cmd-check.c - qemu-img check
 *
 * check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt]
 *       [-r [leaks | all]] [-T src_cache] [-U] filename
 * Exit status (as qemu-img documents it):
 *   0  the image is (now) consistent
 *   1  the check could not complete (bad arguments, open or internal errors)
 *   2  the image is corrupted
 *   3  the image only leaks clusters
 *   63 the format has no consistency check
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

enum {
    CHECK_OK = 0,
    CHECK_ERROR = 1,
    CHECK_CORRUPT = 2,
    CHECK_LEAKS = 3,
    CHECK_UNSUPPORTED = 63,
};

struct check_args {
    struct cli_image_args img;  /* file name, -f, -U, --image-opts */
    const char *cache;      /* -T, validated after the argument count */
    bool quiet;
    unsigned fix;           /* QIMG_CHECK_FIX_* */
    enum cli_output output;
};

static double percent(int64_t part, int64_t whole)
{
    return whole ? (double)part * 100.0 / (double)whole : 0.0;
}

static void print_human(const struct qimg_check *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%d errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", r->corruptions);
        if (r->leaks)
            printf("\n%d leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%d internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               percent(r->allocated_clusters, r->total_clusters),
               percent(r->fragmented_clusters, r->allocated_clusters),
               percent(r->compressed_clusters, r->allocated_clusters));
    if (r->image_end_offset > 0)
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
}

/* Optional counters appear in QEMU's ImageCheck only when nonzero. */
static void set_if(json_t *o, const char *key, int64_t v)
{
    if (v)
        json_object_set_new(o, key, json_integer((json_int_t)v));
}

/* name: the image argument as given (qemu-img shows an --image-opts
 * string as it is). */
static void print_json(const struct qimg_check *r, struct qimg_image *img,
                       const char *name)
{
    json_t *o = json_object();

    json_object_set_new(o, "filename", json_string(name));
    json_object_set_new(o, "format", json_string(qimg_image_format(img)));
    json_object_set_new(o, "check-errors", json_integer(r->check_errors));
    set_if(o, "image-end-offset",
           r->image_end_offset > 0 ? r->image_end_offset : 0);
    set_if(o, "corruptions", r->corruptions);
    set_if(o, "leaks", r->leaks);
    set_if(o, "corruptions-fixed", r->corruptions_fixed);
    set_if(o, "leaks-fixed", r->leaks_fixed);
    set_if(o, "total-clusters", r->total_clusters);
    set_if(o, "allocated-clusters", r->allocated_clusters);
    set_if(o, "fragmented-clusters", r->fragmented_clusters);
    set_if(o, "compressed-clusters", r->compressed_clusters);
    cli_json_print(stdout, o, 0);
    printf("\n");
    json_decref(o);
}

/* Problem lines go to stderr as they are found, as qemu-img prints them:
 * stdout is not flushed first (piped, its lines come out at exit, after
 * them, as 7.2's do: iotest 271). */
static void report_line(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

/* Run one check pass; on failure print why and return the exit status. */
static int check_pass(struct qimg_image *img, unsigned fix,
                      struct qimg_check *res)
{
    struct qimg_error err = {0};
    int ret;

    res->report = report_line;
    res->opaque = NULL;
    ret = qimg_check(img, fix, res, &err);

    if (ret == -ENOTSUP) {
        cli_error("This image format does not support checks");
        return CHECK_UNSUPPORTED;
    }
    if (ret < 0) {
        cli_error("Check failed: %s", strerror(-ret));
        return CHECK_ERROR;
    }
    return CHECK_OK;
}

/*
 * A repairing check reports what it fixed, then checks again without
 * fixing so that the final report (and exit status) describes the image as
 * it is now, keeping the counts of what was repaired.
 */
static int collect(struct qimg_image *img, const struct check_args *a,
                   struct qimg_check *res)
{
    int ret = check_pass(img, a->fix, res);
    int leaks_fixed = res->leaks_fixed;
    int corruptions_fixed = res->corruptions_fixed;

    if (ret || !a->fix || (!leaks_fixed && !corruptions_fixed))
        return ret;
    if (a->output == CLI_OUTPUT_HUMAN && !a->quiet) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %d leaked clusters\n"
               "    %d corruptions\n\n"
               "Double checking the fixed image now...\n",
               leaks_fixed, corruptions_fixed);
    }
    ret = check_pass(img, 0, res);
    res->leaks_fixed = leaks_fixed;
    res->corruptions_fixed = corruptions_fixed;
    return ret;
}

static int exit_status(const struct qimg_check *r)
{
    if (r->check_errors)
        return CHECK_ERROR;
    if (r->corruptions)
        return CHECK_CORRUPT;
    if (r->leaks)
        return CHECK_LEAKS;
    return CHECK_OK;
}

static int run_check(const struct check_args *a)
{
    struct cli_open o = cli_image_args_open(&a->img, QIMG_OPEN_CHECK |
                                            (a->fix ? QIMG_OPEN_RDWR : 0));
    struct qimg_check res;
    struct qimg_image *img;
    int ret;

    o.quiet = a->quiet;
    if (a->cache && !cli_parse_cache(a->cache, &o.cache)) {
        cli_error("Invalid source cache option: %s", a->cache);
        return CHECK_ERROR;
    }
    img = cli_open_image(&o);
    if (!img)
        return CHECK_ERROR;
    /* The check itself reports no progress: JSON gets its start and end. */
    cli_progress_set_total(qimg_image_size(img));
    ret = collect(img, a, &res);
    cli_progress_json_end();
    if (!ret) {
        if (!a->quiet) {
            if (a->output == CLI_OUTPUT_JSON)
                print_json(&res, img, a->img.filename);
            else
                print_human(&res);
        }
        ret = exit_status(&res);
        /* Internal errors: the counts are shown, then this (qemu-img). */
        if (res.check_errors)
            cli_error("Check failed");
    }
    qimg_close(img);
    return ret;
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_FORMAT,
        {"repair", required_argument, NULL, 'r'},
        CLI_LONGOPT_OUTPUT, CLI_LONGOPT_OBJECT, CLI_LONGOPT_IMAGE_OPTS,
        CLI_LONGOPT_FORCE_SHARE,
        /* qimg: JSON progress only (check draws no bar) */
        {"progress", required_argument, NULL, CLI_OPT_PROGRESS},
        {NULL, 0, NULL, 0},
    };
    struct check_args a = {.output = CLI_OUTPUT_HUMAN};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                a.fix = QIMG_CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                a.fix = QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS;
            } else {
                return cli_usage_error("Unknown option value for -r (expecting "
                                       "'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'T': a.cache = optarg; break;
        case 'q': a.quiet = true; break;
        case CLI_OPT_PROGRESS:
            if (!cli_parse_progress(optarg))
                return CHECK_ERROR;
            break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    ret = cli_image_args_end(argc, argv, &a.img, &a.output);
    return ret != CLI_CONTINUE ? ret : run_check(&a);
}
