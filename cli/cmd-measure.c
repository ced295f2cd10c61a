/*
 * cmd-measure.c - qemu-img measure
 *
 * measure [--output=ofmt] [-O output_fmt] [-o options]
 *         [--size N | [--object objectdef] [--image-opts] [-f fmt]
 *          [-l snapshot_param] filename]
 * Exit status: 0 on success, 1 on any error.
 *
 * Unlike most commands, qemu-img measure lets getopt report unknown options
 * itself ("measure: invalid option -- 'x'") and then shows the help with
 * status 0; we reproduce that.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

/* Room for every creation option of a format and its storage. */
#define MEASURE_MAX_DESCS 128

struct measure_args {
    const char *filename;
    const char *fmt;
    const char *out_fmt;
    const char *snapshot;   /* -l as given, NULL when absent */
    char *options;          /* -o lists joined with ',' */
    int64_t size;           /* --size, -1 when absent */
    bool image_opts;
    bool force_share;
    enum cli_output output;
};

/*
 * Take the next element of a QEMU option list starting at p: "key=value"
 * (",," in a value stands for a comma) or a short-form boolean "key" (on)
 * or "nokey" (off).  key and val must hold strlen(p) + 4 bytes (a short
 * element as short as "x" still gets the value "off").  Returns
 * the position after the element and its separator.
 */
static const char *next_element(const char *p, char *key, char *val,
                                bool *short_form)
{
    size_t n = strcspn(p, "=,"), v = 0;

    memcpy(key, p, n);
    key[n] = '\0';
    p += n;
    *short_form = *p != '=';
    if (*short_form) {
        bool off = !strncmp(key, "no", 2);
        if (off)
            memmove(key, key + 2, strlen(key + 2) + 1);
        strcpy(val, off ? "off" : "on");
    } else {
        for (p++; *p && (*p != ',' || p[1] == ','); p++) {
            if (*p == ',')
                p++;
            val[v++] = *p;
        }
        val[v] = '\0';
    }
    return *p == ',' ? p + 1 : p;
}

/*
 * -l: "snapshot.id=ID,snapshot.name=NAME" or a bare ID or name.  Only the
 * syntax is checked here; QEMU does it while reading the options.
 */
static bool check_snapshot_param(const char *arg)
{
    size_t len = strlen(arg) + 4;
    char *key = malloc(len), *val = malloc(len);
    const char *p = arg;
    bool ok = true, short_form, help = false;

    if (!key || !val)
        abort();
    if (strncmp(arg, "snapshot.", 9))
        p = "";     /* the whole argument is an ID or a name */
    while (*p && ok) {
        const char *elem = p;
        p = next_element(p, key, val, &short_form);
        if (short_form && !strcmp(val, "on") &&
            (!strcmp(key, "help") || !strcmp(key, "?"))) {
            help = true;    /* listed once the whole list parsed */
            continue;
        }
        if (short_form) {
            int elen = (int)(p - elem) - (*(p - 1) == ',' ? 1 : 0);
            cli_warn("short-form boolean option '%.*s' deprecated\n"
                     "Please use %s=%s instead", elen, elem, key, val);
        }
        if (strcmp(key, "snapshot.id") && strcmp(key, "snapshot.name")) {
            cli_error("Invalid parameter '%s'", key);
            cli_error("Failed in parsing snapshot param '%s'", arg);
            ok = false;
        }
    }
    if (ok && help) {
        printf("snapshot options:\n"
               "  %-22s - %s\n  %-22s - %s\n",
               "snapshot.id=<str>", "snapshot id",
               "snapshot.name=<str>", "snapshot name");
        cli_error("Failed in parsing snapshot param '%s'", arg);
        ok = false;
    }
    free(key);
    free(val);
    return ok;
}

/* Validate one option against the descriptors and add it, normalised. */
static int add_create_option(struct qimg_opts *opts, const char *key,
                             const char *val, const struct qimg_opt_desc *d,
                             size_t nd, struct qimg_error *err)
{
    struct qimg_opts *one = qimg_opts_new();
    int ret;

    if (!one)
        abort();
    qimg_opts_set(one, key, val);
    ret = qimg_opts_validate(one, d, nd, err);
    if (!ret)
        ret = qimg_opts_set(opts, key, qimg_opts_value(one, 0));
    qimg_opts_free(one);
    return ret;
}

/*
 * Parse -o against the creation options of fmt and of the file storage,
 * element by element as QEMU does, so the first bad element is the one
 * reported.  "help" is an ordinary (unknown) key here.
 */
static struct qimg_opts *parse_create_options(const char *fmt,
                                              const char *list)
{
    const struct qimg_opt_desc *dp[MEASURE_MAX_DESCS];
    struct qimg_opt_desc flat[MEASURE_MAX_DESCS];
    struct qimg_opts *opts = qimg_opts_new();
    struct qimg_error err = {0};
    size_t len = (list ? strlen(list) : 0) + 4;
    char *key = malloc(len), *val = malloc(len);
    const char *p = list ? list : "";
    bool short_form;
    /* "" stands for a local file: measure has no target file name. */
    int nd = qimg_create_opts(fmt, "", dp, MEASURE_MAX_DESCS, &err);

    if (!opts || !key || !val)
        abort();
    if (nd < 0) {
        cli_error("%s", err.msg);
        goto fail;
    }
    for (int i = 0; i < nd; i++)
        flat[i] = *dp[i];
    while (*p) {
        p = next_element(p, key, val, &short_form);
        if (add_create_option(opts, key, val, flat, (size_t)nd, &err) < 0) {
            cli_error("%s", err.msg);
            cli_error("Invalid options for file format '%s'", fmt);
            goto fail;
        }
    }
    free(key);
    free(val);
    return opts;
fail:
    free(key);
    free(val);
    qimg_opts_free(opts);
    return NULL;
}

static void print_result(const struct qimg_measure *m, enum cli_output output)
{
    if (output == CLI_OUTPUT_JSON) {
        json_t *o = json_object();
        /* JSON integers are signed: sizes past INT64_MAX wrap as in QEMU */
        json_object_set_new(o, "required", json_integer((json_int_t)m->required));
        json_object_set_new(o, "fully-allocated",
                            json_integer((json_int_t)m->fully_allocated));
        if (m->has_bitmaps)
            json_object_set_new(o, "bitmaps",
                                json_integer((json_int_t)m->bitmaps));
        cli_json_print(stdout, o, 0);
        printf("\n");
        json_decref(o);
        return;
    }
    printf("required size: %" PRIu64 "\n", m->required);
    printf("fully allocated size: %" PRIu64 "\n", m->fully_allocated);
    if (m->has_bitmaps)
        printf("bitmaps size: %" PRIu64 "\n", m->bitmaps);
}

/* The argument combinations qemu-img refuses before opening anything. */
static bool arguments_ok(const struct measure_args *a)
{
    if (!a->filename && (a->image_opts || a->fmt || a->snapshot)) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        return false;
    }
    if (a->filename && a->size >= 0) {
        cli_error("--size N cannot be used together with a filename.");
        return false;
    }
    if (!a->filename && a->size < 0) {
        cli_error("Either --size N or one filename must be specified.");
        return false;
    }
    return true;
}

static int run_measure(const struct measure_args *a)
{
    struct qimg_image *src = NULL;
    struct qimg_opts *opts = NULL;
    struct qimg_error err = {0};
    struct qimg_measure m;
    uint64_t size = (uint64_t)a->size;
    char num[32];
    int ret = 1;

    if (a->filename) {
        struct cli_open o = {
            .filename = a->filename, .fmt = a->fmt,
            .image_opts = a->image_opts,
            .flags = a->force_share ? QIMG_OPEN_SHARE : 0,
        };
        src = cli_open_image(&o);
        if (!src)
            return 1;
        size = qimg_image_size(src);
    }
    if (a->snapshot) {
        if (!cli_load_snapshot(src, a->snapshot))
            goto out;
        size = qimg_image_size(src);
    }
    if (!qimg_format_known(a->out_fmt)) {
        cli_error("Unknown file format '%s'", a->out_fmt);
        goto out;
    }
    opts = parse_create_options(a->out_fmt, a->options);
    if (!opts)
        goto out;
    /* The measured size always wins over an -o size=... */
    snprintf(num, sizeof(num), "%" PRIu64, size);
    qimg_opts_set(opts, "size", num);
    if (qimg_measure(a->out_fmt, opts, src, size, &m, &err) < 0) {
        cli_report(&err, NULL);
        goto out;
    }
    print_result(&m, a->output);
    ret = 0;
out:
    qimg_opts_free(opts);
    qimg_close(src);
    return ret;
}

static int parse_args(int argc, char **argv, struct measure_args *a)
{
    enum { OPT_OUTPUT = 256, OPT_OBJECT, OPT_IMAGE_OPTS, OPT_SIZE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        /* getopt reports bad options here, so qimg's own are listed */
        CLI_LONGOPTS_UNTRUSTED,
        {NULL, 0, NULL, 0},
    };
    int c;

    opterr = 1;     /* getopt itself reports bad options here */
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'o':
            if (!cli_add_option_list(&a->options, optarg))
                return 1;
            break;
        case 'l':
            if (!check_snapshot_param(optarg))
                return 1;
            a->snapshot = optarg;
            break;
        case 'U': a->force_share = true; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: a->image_opts = true; break;
        case OPT_OUTPUT:
            if (!cli_parse_output(optarg, &a->output))
                return 1;
            break;
        case OPT_SIZE:
            a->size = cli_cvtnum_full("image size", optarg);
            if (a->size < 0)
                return 1;
            break;
        case CLI_OPT_UNTRUSTED: case CLI_OPT_ALLOW_BACKING:
        case CLI_OPT_ALLOW_DATA_FILE: case CLI_OPT_ALLOW_EXTENT:
        case CLI_OPT_ALLOW_FILE:
            if (cli_untrusted_apply(c, optarg) != CLI_CONTINUE)
                return 1;
            break;
        default:    /* 'h' and '?' alike show the help and succeed */
            cli_help();
            return 0;
        }
    }
    return -1;
}

int cmd_measure(int argc, char **argv)
{
    struct measure_args a = {
        .out_fmt = "raw", .size = -1, .output = CLI_OUTPUT_HUMAN,
    };
    int ret = parse_args(argc, argv, &a);

    opterr = 0;
    if (ret >= 0)
        goto out;
    ret = 1;
    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        goto out;
    }
    a.filename = optind < argc ? argv[optind] : NULL;
    if (arguments_ok(&a))
        ret = run_measure(&a);
out:
    free(a.options);
    return ret;
}
