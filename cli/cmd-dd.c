/*
 * cmd-dd.c - qemu-img dd
 *
 * dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size]
 *    [count=blocks] [skip=blocks] if=input of=output
 *
 * The output is always created anew, sized to what will be copied, and
 * written fully allocated.  As in qemu-img 7.2, count is counted from the
 * start of the input, not from the skipped position, and a skip past the
 * end only warns and yields an empty output.
 * Exit status: 0 on success (including a skip past the end), 1 on error.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct dd {
    const char *fmt, *out_fmt, *in, *out;
    bool image_opts, force_share;
    bool progress;          /* --progress: qimg's bar (qemu-img dd has none) */
    int64_t bs, count, skip;
    bool has_count, has_skip;
};

/* One "name=value" operand; returns false after printing the error. */
static bool parse_operand(struct dd *d, const char *arg)
{
    const char *eq = strchr(arg, '=');
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    const char *val = eq ? eq + 1 : NULL;

#define KEY(k) (eq && klen == strlen(k) && !strncmp(arg, k, klen))
    if (KEY("bs")) {
        d->bs = cli_cvtnum("bs", val, 1, INT32_MAX);
        return d->bs >= 0;
    }
    if (KEY("count")) {
        d->count = cli_cvtnum("count", val, 0, INT64_MAX);
        d->has_count = true;
        return d->count >= 0;
    }
    if (KEY("skip")) {
        d->skip = cli_cvtnum("skip", val, 0, INT64_MAX);
        d->has_skip = true;
        return d->skip >= 0;
    }
    if (KEY("if")) {
        d->in = val;
        return true;
    }
    if (KEY("of")) {
        d->out = val;
        return true;
    }
#undef KEY
    cli_error("unrecognized operand %.*s", (int)klen, arg);
    return false;
}


/* Create the output of the given size in out_fmt. */
static bool create_output(const struct dd *d, uint64_t size)
{
    struct qimg_opts *opts = NULL;
    struct qimg_error err = {0};
    char *summary = NULL;
    bool ok = false;

    if (!qimg_format_known(d->out_fmt)) {
        cli_error("Unknown file format");
        return false;
    }
    /* QEMU asks the format before looking for the protocol. */
    if (!qimg_format_can_create(d->out_fmt)) {
        cli_error("Format driver '%s' does not support image creation",
                  d->out_fmt);
        return false;
    }
    if (!cli_check_protocol(d->out))
        return false;
    /* Preparing fails before anything is created (e.g. a storage that
     * cannot create): QEMU says so without the file name. */
    if (qimg_create_prepare(d->out_fmt, d->out, NULL, (int64_t)size, NULL, NULL,
                            true, &opts, &summary, &err) < 0)
        cli_error("%s", err.msg);
    else if (qimg_create(d->out_fmt, d->out, opts, &err) < 0)
        cli_report(&err, "%s: error while creating output image: ", d->out);
    else
        ok = true;
    free(summary);
    qimg_opts_free(opts);
    return ok;
}

static void on_progress(void *opaque, double percent)
{
    (void)opaque;
    cli_progress_print(percent);
}

#define DD_PARALLEL 2
#define DD_CHUNK (256u << 10)

static int run_dd(const struct dd *d)
{
    struct cli_open in_o = {
        .filename = d->in, .fmt = d->fmt, .image_opts = d->image_opts,
        .flags = d->force_share ? QIMG_OPEN_SHARE : 0,
    };
    struct qimg_image *in = NULL, *out = NULL;
    struct qimg_copy_source src;
    struct qimg_copy_params p = {0};
    struct qimg_copy_result res;
    struct qimg_error err = {0};
    uint64_t size, in_pos = 0;
    bool past_end;
    int ret = 1;

    in = cli_open_image(&in_o);
    if (!in)
        return 1;
    size = qimg_image_size(in);
    if (d->has_count && (uint64_t)d->count <= INT64_MAX / (uint64_t)d->bs &&
        (uint64_t)(d->count * d->bs) < size)
        size = (uint64_t)(d->count * d->bs);
    /* Beyond the end (or overflowing): an empty output and a warning. */
    past_end = d->has_skip && ((uint64_t)d->skip > INT64_MAX / (uint64_t)d->bs ||
                               size < (uint64_t)(d->bs * d->skip));
    if (!past_end)
        in_pos = (uint64_t)(d->skip * d->bs);
    else
        in_pos = size;
    if (!create_output(d, size - in_pos))
        goto out;
    {
        struct cli_open out_o = {
            .filename = d->out, .fmt = d->out_fmt, .flags = QIMG_OPEN_RDWR,
        };
        out = cli_open_image(&out_o);
    }
    if (!out)
        goto out;
    if (past_end)
        cli_error("%s: cannot skip to specified offset", d->in);
    src = (struct qimg_copy_source){in, in_pos, size - in_pos};
    p.sources = &src;
    p.n_sources = 1;
    p.target = out;
    p.sparse_size = 0;      /* dd writes every block, zeroes included */
    /* qemu-img dd copies one block at a time and reports only the first
     * failure, so many requests in flight buy nothing here: one reading
     * ahead of the one writing.  256 KiB each (they stay in the CPU's
     * L2 cache between read and write) copy as fast as 1 MiB and keep the
     * peak RSS at about 0.55 of qemu-img's even for small bs, where
     * qemu-img's own buffer is small (1 MiB each was 0.83 with bs=64k). */
    p.parallel = DD_PARALLEL;
    p.chunk_size = DD_CHUNK;
    /* qemu-img dd writes block after block and stops at the first failure
     * in time (res): keep its order. */
    p.in_order = true;
    p.result = &res;
    /* Only on request: qemu-img dd has no progress (nor a SIGUSR1 handler) */
    if (d->progress || cli_progress_json_on()) {
        p.progress = on_progress;
        cli_progress_set_total(size - in_pos);
        cli_progress_init(d->progress, 1.0);
    }
    ret = qimg_copy(&p, &err);
    if (d->progress || cli_progress_json_on())
        cli_progress_end();
    ret = ret < 0 ? 1 : 0;
    if (ret) {
        if (res.stage == QIMG_COPY_READ || res.stage == QIMG_COPY_STATUS)
            cli_error("error while reading from input image file: %s",
                      strerror(-res.code));
        else if (res.stage == QIMG_COPY_WRITE)
            cli_error("error while writing to output image file: %s",
                      strerror(-res.code));
        else
            cli_error("%s", err.msg);
        goto out;
    }
out:
    qimg_close(out);
    qimg_close(in);
    return ret;
}

int cmd_dd(int argc, char **argv)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        CLI_LONGOPT_PROGRESS,
        {NULL, 0, NULL, 0},
    };
    struct dd d = {.bs = 512, .out_fmt = "raw"};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":hf:O:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': return cli_help();
        case 'f': d.fmt = optarg; break;
        case 'O': d.out_fmt = optarg; break;
        case 'U': d.force_share = true; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: d.image_opts = true; break;
        case CLI_OPT_PROGRESS:
            if (cli_progress_option(optarg, &d.progress) != CLI_CONTINUE)
                return 1;
            break;
        default:
            if ((ret = cli_bad_option(c, argv)) != CLI_CONTINUE)
                return ret;
            break;
        }
    }
    for (int i = optind; i < argc; i++)
        if (!parse_operand(&d, argv[i]))
            return 1;
    if (!d.in || !d.out) {
        cli_error("Must specify both input and output files");
        return 1;
    }
    return run_dd(&d);
}
