/*
 * cmd-convert.c - qemu-img convert
 *
 * convert [--object objectdef] [--image-opts] [--target-image-opts]
 *         [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n]
 *         [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
 *         [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]
 *         [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W]
 *         [--salvage] filename [filename2 [...]] output_filename
 *
 * The long options of newer qemu-img releases (--source-format,
 * --target-format, --sparse-size, ...) are accepted as exact aliases of the
 * short ones; where 7.2 gives an abbreviation a meaning, that wins.
 * Exit status: 0 on success, 1 on any error.
 *
 * The checks run in qemu-img 7.2's order, which decides which message a
 * command line with several problems gets; see run_convert().
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_SPARSE 4096
#define MAX_SPARSE (32768ull * 512)     /* -S upper bound in qemu-img */
#define MAX_PARALLEL 16

struct convert {
    const char *fmt, *out_fmt, *backing, *backing_fmt, *snapshot;
    const char *cache, *src_cache;
    char *options;
    bool image_opts, tgt_image_opts, target_is_zero, bitmaps, skip_broken;
    bool force_share, copy_range, compress, progress, quiet, no_create;
    bool oob, salvage, explicit_sparse;
    uint64_t sparse;
    uint64_t rate;
    unsigned parallel;

    char **srcs;
    int n_srcs;
    const char *target;

    struct qimg_image **src_imgs;
    uint64_t *src_lens;     /* sizes when opened, before -l (as QEMU's) */
    struct qimg_image *tgt;
    uint64_t total;
    enum qimg_cache tcache, scache;
    bool target_has_backing;
    bool tgt_stream;        /* the target is a pipe (stream_target) */
    bool progress_on;
    unsigned errors_shown;
};

/* ---- option parsing ------------------------------------------------------ */

enum {
    OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_TARGET_IMAGE_OPTS, OPT_SALVAGE,
    OPT_TARGET_IS_ZERO, OPT_BITMAPS, OPT_SKIP_BROKEN,
    OPT_PROGRESS_MACHINE,   /* --progress=json|FD (qimg) */
};

/* qemu-img 7.2's long options: getopt resolves abbreviations over these. */
static const struct option longopts[] = {
    {"help", no_argument, NULL, 'h'},
    {"object", required_argument, NULL, OPT_OBJECT},
    {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
    {"force-share", no_argument, NULL, 'U'},
    {"target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS},
    {"salvage", no_argument, NULL, OPT_SALVAGE},
    {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
    {"bitmaps", no_argument, NULL, OPT_BITMAPS},
    {"skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN},
    {NULL, 0, NULL, 0},
};

/* Newer spellings, matched only exactly and only when 7.2's table has no
 * match, so 7.2 command lines keep their meaning. */
static const struct {
    const char *name;
    int opt;
    bool has_arg;
} aliases[] = {
    {"source-format", 'f', true},        {"target-format", 'O', true},
    {"target-format-options", 'o', true}, {"target-backing", 'B', true},
    {"backing", 'B', true},              {"target-backing-format", 'F', true},
    {"backing-format", 'F', true},       {"sparse-size", 'S', true},
    {"no-create", 'n', false},           {"parallel", 'm', true},
    {"oob-writes", 'W', false},          {"progress", 'p', false},
    {"quiet", 'q', false},               {"source-cache", 'T', true},
    {"target-cache", 't', true},         {"rate-limit", 'r', true},
    {"compress", 'c', false},            {"copy-range-offloading", 'C', false},
    {"snapshot", 'l', true},             {"source-image-opts", OPT_IMAGE_OPTS, false},
};

/*
 * An unrecognised "--name[=value]" that is one of the aliases: returns its
 * option and sets *arg (taking the next argument if needed), or 0.
 */
static int match_alias(int argc, char **argv, const char **arg)
{
    const char *s = argv[optind - 1], *eq;
    size_t len;

    if (strncmp(s, "--", 2))
        return 0;
    s += 2;
    eq = strchr(s, '=');
    len = eq ? (size_t)(eq - s) : strlen(s);
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
        if (strlen(aliases[i].name) != len || strncmp(s, aliases[i].name, len))
            continue;
        if (!aliases[i].has_arg) {
            *arg = NULL;
            if (eq && aliases[i].opt == 'p') {
                /* --progress=json|FD: qimg's machine-readable progress */
                *arg = eq + 1;
                return OPT_PROGRESS_MACHINE;
            }
            return eq ? 0 : aliases[i].opt;
        }
        if (eq) {
            *arg = eq + 1;
        } else if (optind < argc) {
            *arg = argv[optind++];
        } else {
            return ':';
        }
        return aliases[i].opt;
    }
    return 0;
}

/* -m: a whole number 1..16 in C notation (0x10 is fine, 08 is not). */
static bool parse_parallel(const char *s, unsigned *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (errno || end == s || *end || v < 1 || v > MAX_PARALLEL) {
        cli_error("Invalid number of coroutines. Allowed number of coroutines "
                  "is between 1 and %d", MAX_PARALLEL);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static bool parse_sparse(const char *s, uint64_t *out)
{
    int64_t v = cli_cvtnum_full("buffer size for sparse output", s);

    if (v < 0)
        return false;
    if ((uint64_t)v % 512 || (uint64_t)v > MAX_SPARSE) {
        cli_error("Invalid buffer size for sparse output specified. Valid "
                  "sizes are multiples of %u up to %llu. Select 0 to disable "
                  "sparse detection (fully allocates output).", 512u,
                  (unsigned long long)MAX_SPARSE);
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

/* Split the next "key=value" (",," escapes a comma) of a -l list. */
static const char *next_elem(const char *p, char *key, char *val, bool *bare)
{
    size_t k = 0, v = 0;

    while (*p && *p != '=' && *p != ',')
        key[k++] = *p++;
    key[k] = '\0';
    *bare = *p != '=';
    if (*bare) {
        /* "key" means key=on, "nokey" key=off (deprecated short forms) */
        bool no = !strncmp(key, "no", 2);
        if (no)
            memmove(key, key + 2, k - 1);
        strcpy(val, no ? "off" : "on");
    } else {
        for (p++; *p; p++) {
            if (*p == ',' && p[1] != ',')
                break;
            if (*p == ',')
                p++;
            val[v++] = *p;
        }
        val[v] = '\0';
    }
    return *p == ',' ? p + 1 : p;
}

static void print_snapshot_opts_help(void)
{
    printf("snapshot options:\n  %-22s - %s\n  %-22s - %s\n",
           "snapshot.id=<str>", "snapshot id",
           "snapshot.name=<str>", "snapshot name");
}

/* -l "snapshot.id=..,snapshot.name=.." is checked while parsing options;
 * a bare ID or name only when it is loaded. */
static bool check_snapshot_param(const char *arg)
{
    size_t size = strlen(arg) + 3;
    char *key = malloc(size), *val = malloc(size);
    const char *p = arg;
    bool ok = true, bare, help = false;

    if (!key || !val)
        abort();
    if (strncmp(arg, "snapshot.", 9))
        p = "";
    while (*p && ok) {
        const char *elem = p;
        p = next_elem(p, key, val, &bare);
        if (bare && (!strcmp(key, "help") || !strcmp(key, "?"))) {
            help = true;
            continue;
        }
        if (bare) {
            int n = (int)(p - elem) - (p[-1] == ',' ? 1 : 0);
            cli_warn("short-form boolean option '%.*s' deprecated\n"
                     "Please use %s=%s instead", n, elem, key, val);
        }
        if (strcmp(key, "snapshot.id") && strcmp(key, "snapshot.name")) {
            cli_error("Invalid parameter '%s'", key);
            cli_error("Failed in parsing snapshot param '%s'", arg);
            ok = false;
        }
    }
    if (ok && help) {
        print_snapshot_opts_help();
        cli_error("Failed in parsing snapshot param '%s'", arg);
        ok = false;
    }
    free(key);
    free(val);
    return ok;
}

/* One option; returns -1 to go on, else the exit status. */
static int handle_option(struct convert *c, int opt, const char *arg,
                         char **argv)
{
    int64_t v;

    switch (opt) {
    case 'h': return cli_help();
    case 'f': c->fmt = arg; break;
    case 'O': c->out_fmt = arg; break;
    case 'B': c->backing = arg; break;
    case 'F': c->backing_fmt = arg; break;
    case 'C': c->copy_range = true; break;
    case 'c': c->compress = true; break;
    case 'o':
        if (!cli_add_option_list(&c->options, arg))
            return 1;
        break;
    case 'l':
        if (!check_snapshot_param(arg))
            return 1;
        c->snapshot = arg;
        break;
    case 'S':
        if (!parse_sparse(arg, &c->sparse))
            return 1;
        c->explicit_sparse = true;
        break;
    case 'p': c->progress = true; break;
    case OPT_PROGRESS_MACHINE:
        if (!cli_parse_progress(arg))
            return 1;
        break;
    case 't': c->cache = arg; break;
    case 'T': c->src_cache = arg; break;
    case 'q': c->quiet = true; break;
    case 'n': c->no_create = true; break;
    case 'm':
        if (!parse_parallel(arg, &c->parallel))
            return 1;
        break;
    case 'W': c->oob = true; break;
    case 'U': c->force_share = true; break;
    case 'r':
        v = cli_cvtnum_full("rate limit", arg);
        if (v < 0)
            return 1;
        c->rate = (uint64_t)v;
        break;
    case OPT_OBJECT:
        if (cli_add_object(arg))
            return 1;
        break;
    case OPT_IMAGE_OPTS: c->image_opts = true; break;
    case OPT_TARGET_IMAGE_OPTS: c->tgt_image_opts = true; break;
    case OPT_SALVAGE: c->salvage = true; break;
    case OPT_TARGET_IS_ZERO: c->target_is_zero = true; break;
    case OPT_BITMAPS: c->bitmaps = true; break;
    case OPT_SKIP_BROKEN: c->skip_broken = true; break;
    default:
        return cli_bad_option(opt, argv);   /* CLI_CONTINUE: goes on */
    }
    return -1;
}

static int parse_options(struct convert *c, int argc, char **argv)
{
    int opt, ret;

    while ((opt = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                              longopts, NULL)) != -1) {
        const char *arg = optarg;
        if (opt == '?') {
            int alias = match_alias(argc, argv, &arg);
            if (alias == ':')
                return cli_usage_error("missing argument for option '%s'",
                                       argv[optind - 1]);
            if (alias)
                opt = alias;
        }
        ret = handle_option(c, opt, arg, argv);
        if (ret >= 0)
            return ret;
    }
    c->n_srcs = argc - optind - 1;
    c->srcs = argv + optind;
    c->target = c->n_srcs >= 1 ? argv[argc - 1] : NULL;
    return -1;
}

/* ---- checks before opening anything -------------------------------------- */

/* The option combinations qemu-img refuses up front, in its order. */
static int check_options(struct convert *c)
{
    if (c->skip_broken && !c->bitmaps) {
        cli_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (c->copy_range && (c->compress || c->explicit_sparse)) {
        cli_error("Cannot enable copy offloading when -%c is used",
                  c->compress ? 'c' : 'S');
        return 1;
    }
    if (c->copy_range && c->salvage) {
        cli_error("Cannot use copy offloading in salvaging mode");
        return 1;
    }
    if (c->tgt_image_opts && !c->no_create) {
        cli_error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (c->target_is_zero && !c->no_create) {
        cli_error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (c->no_create && c->options) {
        cli_error("-o has no effect when skipping image creation");
        return 1;
    }
    if (cli_has_help_option(c->options))
        return cli_print_create_opts_help(c->out_fmt, c->target);
    if (c->n_srcs < 1) {
        cli_error("Must specify image file name");
        return 1;
    }
    if (c->src_cache && !cli_parse_cache(c->src_cache, &c->scache)) {
        cli_error("Invalid source cache option: %s", c->src_cache);
        return 1;
    }
    return -1;
}


/* ---- sources --------------------------------------------------------------- */

static const char *options_value(const char *options, const char *key,
                                 char *buf, size_t len);

/*
 * A source qemu-img 7.2 cannot open that is a pipe (qimg_name_is_stream):
 * open it over the forward-only stream storage, its size (raw has no
 * other) from -o size.  NULL: not a stream (open as qemu-img does).
 */
static struct qimg_opts *stream_source_opts(const struct convert *c,
                                            const char *name)
{
    struct qimg_opts *o;
    char size[64];

    if (c->image_opts || !qimg_name_is_stream(name))
        return NULL;
    o = qimg_opts_new();
    if (!o)
        abort();
    if (c->fmt)
        qimg_opts_set(o, "driver", c->fmt);
    qimg_opts_set(o, "file.driver", "stream");
    qimg_opts_set(o, "file.filename", name);
    if (options_value(c->options, "size", size, sizeof(size)))
        qimg_opts_set(o, "file.size", size);
    return o;
}

/* A raw stream has no size of its own: it must be declared. */
static bool stream_size_known(const struct convert *c, int i)
{
    struct qimg_image *img = c->src_imgs[i];

    if (qimg_image_size(img) < QIMG_STREAM_UNKNOWN_SIZE)
        return true;
    cli_error("Could not open '%s': a %s stream has no size of its own: "
              "give it with -o size=SIZE", c->srcs[i], qimg_image_format(img));
    return false;
}

static bool open_sources(struct convert *c)
{
    c->src_imgs = calloc((size_t)c->n_srcs, sizeof(*c->src_imgs));
    c->src_lens = calloc((size_t)c->n_srcs, sizeof(*c->src_lens));
    if (!c->src_imgs || !c->src_lens)
        abort();
    for (int i = 0; i < c->n_srcs; i++) {
        struct cli_open o = {
            .filename = c->srcs[i], .fmt = c->fmt, .image_opts = c->image_opts,
            /* convert refuses to let others change what it reads */
            .flags = QIMG_OPEN_NO_SHARE | (c->force_share ? QIMG_OPEN_SHARE : 0),
            .cache = c->scache, .quiet = c->quiet,
        };
        struct qimg_opts *stream = stream_source_opts(c, c->srcs[i]);
        o.options = stream;
        c->src_imgs[i] = cli_open_image(&o);
        qimg_opts_free(stream);
        if (!c->src_imgs[i])
            return false;
        if (stream && !stream_size_known(c, i))
            return false;
        c->src_lens[i] = qimg_image_size(c->src_imgs[i]);
        if (__builtin_add_overflow(c->total, c->src_lens[i],
                                   &c->total) || c->total > INT64_MAX) {
            cli_error("Image size too large");
            return false;
        }
    }
    /* A bare snapshot name or id (not snapshot.id=/name=) is refused for
     * several sources, once they are open. */
    if (c->snapshot && strncmp(c->snapshot, "snapshot.", 9) && c->n_srcs > 1) {
        cli_error("No support for concatenating multiple snapshot");
        return false;
    }
    cli_progress_set_total(c->total);
    if (c->snapshot && !cli_load_snapshot(c->src_imgs[0], c->snapshot))
        return false;
    return true;
}

/* QEMU visits a node's bitmaps newest first: directory order reversed. */
static bool check_source_bitmaps(struct convert *c)
{
    struct qimg_bitmap *list = NULL;
    size_t n = 0;
    bool ok = true;

    if (!c->bitmaps)
        return true;
    if (c->n_srcs > 1) {
        cli_error("Copying bitmaps only possible with single source");
        return false;
    }
    if (!qimg_bitmap_supported(c->src_imgs[0])) {
        cli_error("Source lacks bitmap support");
        return false;
    }
    qimg_bitmap_list(c->src_imgs[0], &list, &n, NULL);
    for (size_t i = n; i-- > 0 && ok && !c->skip_broken;) {
        if (list[i].in_use) {
            cli_error("Cannot copy inconsistent bitmap '%s'\nTry "
                      "--skip-broken-bitmaps, or use 'qemu-img bitmap "
                      "--remove' to delete it", list[i].name);
            ok = false;
        }
    }
    free(list);
    return ok;
}

/* After the data: each usable bitmap of the source, created in the target
 * with the same granularity and state and filled from the source. */
static bool copy_bitmaps(struct convert *c)
{
    struct qimg_image *src = c->src_imgs[0];
    struct qimg_bitmap *list = NULL;
    size_t n = 0;
    bool ok = true;

    qimg_bitmap_list(src, &list, &n, NULL);
    for (size_t i = n; i-- > 0 && ok;) {
        struct qimg_error err = {0};
        const char *name = list[i].name;
        if (list[i].in_use) {
            cli_warn("Skipping inconsistent bitmap '%s'", name);
            continue;
        }
        if (qimg_bitmap_add(c->tgt, name, list[i].granularity,
                            !list[i].enabled, &err) < 0) {
            cli_error("Failed to create bitmap %s: %s", name, err.msg);
            ok = false;
        } else if (qimg_bitmap_merge(c->tgt, name, src, name, &err) < 0) {
            cli_error("Failed to populate bitmap %s: %s", name, err.msg);
            qimg_bitmap_remove(c->tgt, name, NULL);
            ok = false;
        }
    }
    free(list);
    return ok;
}

/* ---- target ---------------------------------------------------------------- */

/* True when the -o list sets key. */
/* The value of key in an -o list into buf; false when it has none. */
static const char *options_value(const char *options, const char *key,
                                 char *buf, size_t len)
{
    struct qimg_opts *o;
    const char *v;

    if (!options)
        return NULL;
    o = qimg_opts_new();
    qimg_opts_parse(o, options, NULL, NULL);
    v = qimg_opts_get(o, key);
    if (v)
        snprintf(buf, len, "%s", v);
    qimg_opts_free(o);
    return v ? buf : NULL;
}

static bool options_have(const char *options, const char *key)
{
    char buf[8];
    return options_value(options, key, buf, sizeof(buf)) != NULL;
}

/* The -c restrictions of the target format and options. */
static bool check_compress(const char *fmt, const struct qimg_opts *opts)
{
    const char *prealloc = opts ? qimg_opts_get(opts, "preallocation") : NULL;

    if (!qimg_format_can_compress(fmt)) {
        cli_error("Compression not supported for this file format");
        return false;
    }
    if (opts && (qimg_opts_get(opts, "encryption") ||
                 qimg_opts_get(opts, "encrypt.format"))) {
        cli_error("Compression and encryption not supported at the same time");
        return false;
    }
    if (prealloc && strcmp(prealloc, "off")) {
        cli_error("Compression and preallocation not supported at the same "
                  "time");
        return false;
    }
    return true;
}

/* Build the creation options: -o, -B/-F and the size of all sources. */
static struct qimg_opts *prepare_target(struct convert *c)
{
    struct qimg_opts *opts = NULL;
    struct qimg_error err = {0};
    char *summary = NULL, num[32];
    /* A size in -o is checked, then replaced by the sources' total. */
    bool size_in_opts = options_have(c->options, "size");

    if (!qimg_format_known(c->out_fmt)) {
        cli_error("Unknown file format '%s'", c->out_fmt);
        return NULL;
    }
    /* QEMU asks the format before looking for the protocol. */
    if (!qimg_format_can_create(c->out_fmt)) {
        cli_error("Format driver '%s' does not support image creation",
                  c->out_fmt);
        return NULL;
    }
    if (!cli_check_protocol(c->target))
        return NULL;
    if (qimg_create_prepare(c->out_fmt, c->target, c->options,
                            size_in_opts ? -1 : (int64_t)c->total, c->backing,
                            c->backing_fmt, true, &opts, &summary, &err) < 0) {
        cli_error("%s", err.msg);
        return NULL;
    }
    free(summary);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)c->total);
    qimg_opts_set(opts, "size", num);
    return opts;
}

/* Does name open what our stdout is? */
static bool names_stdout(const char *name)
{
    struct stat a, b;

    return stat(name, &a) == 0 && fstat(STDOUT_FILENO, &b) == 0 &&
           a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/*
 * A new target that is a pipe or FIFO (/dev/stdout piped on), which
 * qemu-img 7.2 fails to create ("Could not resize file"): written forward
 * over the stream storage, raw or a format that writes itself forward
 * (qimg_create_stream: streamOptimized vmdk).  "-" stays a file named
 * "-", as in 7.2.  Returns false (after the message) when it cannot be
 * streamed.
 */
static bool stream_target(struct convert *c, const struct qimg_opts *opts)
{
    bool raw;

    if (c->no_create || c->tgt_image_opts || !strcmp(c->target, "-") ||
        !qimg_name_is_stream(c->target))
        return true;
    raw = !strcmp(c->out_fmt, "raw");
    if (!raw && strcmp(c->out_fmt, "vmdk")) {
        cli_error("%s: cannot write %s to a pipe: only raw and "
                  "streamOptimized vmdk are written strictly forward",
                  c->target, c->out_fmt);
        return false;
    }
    /* vmdk: the driver refuses what it cannot stream (other subformats,
     * a backing file); streamOptimized is compressed anyway */
    if (!raw && qimg_opts_get(opts, "backing_file")) {
        cli_error("%s: a vmdk written to a pipe cannot have a backing file",
                  c->target);
        return false;
    }
    if (raw && (c->compress || qimg_opts_get(opts, "backing_file") ||
                qimg_opts_get(opts, "preallocation"))) {
        cli_error("%s: a pipe takes plain raw data only (no -c, backing "
                  "file or preallocation)", c->target);
        return false;
    }
    c->tgt_stream = true;
    return true;
}

/* The key secrets of the creation options, which the new target needs
 * to be opened (qemu-img's img_add_key_secrets). */
static struct qimg_opts *target_secrets(const struct qimg_opts *opts)
{
    static const char *const keys[] = {"key-secret", "encrypt.key-secret"};
    struct qimg_opts *o = qimg_opts_new();

    for (size_t i = 0; o && opts && i < 2; i++)
        if (qimg_opts_get(opts, keys[i]))
            qimg_opts_set(o, keys[i], qimg_opts_get(opts, keys[i]));
    return o;
}

/* A format target on a pipe: created and opened in one step. */
static bool create_stream_target(struct convert *c, const struct qimg_opts *opts)
{
    struct qimg_error err = {0};

    /* creation errors as a file target's ("X: error while converting
     * vmdk: ..."); an image 7.2 would create but not open fails as its
     * open does ("Could not open ...") */
    if (qimg_create_stream(&c->tgt, c->out_fmt, c->target, opts, &err) < 0) {
        if (!strncmp(err.msg, "Could not open '", 16))
            cli_error("%s", err.msg);
        else
            cli_report(&err, "%s: error while converting %s: ", c->target,
                       c->out_fmt);
        return false;
    }
    return true;
}

static bool open_target(struct convert *c, const struct qimg_opts *opts)
{
    struct qimg_opts *secrets = target_secrets(opts);
    struct cli_open o = {
        .filename = c->target, .image_opts = c->tgt_image_opts,
        .fmt = c->out_fmt, .flags = QIMG_OPEN_RDWR, .cache = c->tcache,
        .quiet = c->quiet, .extra = secrets,
    };
    struct qimg_opts *stream = NULL;
    char num[32];

    if (c->tgt_stream && strcmp(c->out_fmt, "raw")) {
        qimg_opts_free(secrets);
        if (!create_stream_target(c, opts))
            return false;
        goto opened;
    }
    if (c->tgt_stream) {
        stream = qimg_opts_new();
        if (!stream)
            abort();
        snprintf(num, sizeof(num), "%llu", (unsigned long long)c->total);
        qimg_opts_set(stream, "driver", "raw");
        qimg_opts_set(stream, "file.driver", "stream");
        qimg_opts_set(stream, "file.filename", c->target);
        qimg_opts_set(stream, "file.size", num);
        o.options = stream;
    }

    if (!cli_parse_cache(c->cache, &c->tcache)) {
        cli_error("Invalid cache option: %s", c->cache);
        qimg_opts_free(secrets);
        return false;
    }
    o.cache = c->tcache;
    c->tgt = cli_open_image(&o);
    qimg_opts_free(stream);
    qimg_opts_free(secrets);
    if (!c->tgt)
        return false;
opened:
    if (c->bitmaps && !qimg_bitmap_supported(c->tgt)) {
        cli_error("Format driver '%s' does not support bitmaps",
                  qimg_image_format(c->tgt));
        return false;
    }
    if (c->no_create && qimg_image_size(c->tgt) < c->total) {
        cli_error("output file is smaller than input file");
        return false;
    }
    if (c->no_create && c->compress &&
        !qimg_format_can_compress(qimg_image_format(c->tgt))) {
        cli_error("Compression not supported for this file format");
        return false;
    }
    /* formats that only take compressed writes get them without -c */
    struct qimg_info info;
    struct qimg_error err = {0};
    if (qimg_get_info(c->tgt, &info, &err) == 0 && info.needs_compressed_writes)
        c->compress = true;
    qimg_info_release(&info);
    return true;
}

/* ---- copying --------------------------------------------------------------- */

static void on_progress(void *opaque, double percent)
{
    (void)opaque;
    cli_progress_print(percent);
}

static void on_warn(void *opaque, const char *msg)
{
    const struct convert *c = opaque;
    if (!c->quiet)
        cli_warn("%s", msg);
}

/* Every failing request is reported, as qemu-img's coroutines each do. */
static void on_error(void *opaque, const char *msg)
{
    struct convert *c = opaque;
    c->errors_shown++;
    cli_error("%s", msg);
}

static bool do_copy(struct convert *c)
{
    struct qimg_copy_source *srcs = calloc((size_t)c->n_srcs, sizeof(*srcs));
    struct qimg_image *backing = qimg_image_backing(c->tgt);
    struct qimg_copy_params p = {
        .sources = srcs, .n_sources = (size_t)c->n_srcs, .target = c->tgt,
        .sparse_size = c->sparse,
        /* a new image reads as zero unless a backing file shows through */
        .target_is_zero = c->no_create ? c->target_is_zero
                                       : !c->target_has_backing &&
                                             qimg_image_has_zero_init(c->tgt),
        .target_has_backing = c->target_has_backing,
        .target_backing_size = backing ? (int64_t)qimg_image_size(backing) : -1,
        .compress = c->compress, .copy_offload = c->copy_range,
        .salvage = c->salvage, .parallel = c->parallel,
        .out_of_order = c->oob, .rate_limit = c->rate,
        /* without -p progress still shows on SIGUSR1 */
        .progress = on_progress, .warn = on_warn,
        .error = on_error, .opaque = c,
    };
    struct qimg_error err = {0};
    int ret;

    if (!srcs)
        abort();
    for (int i = 0; i < c->n_srcs; i++) {
        srcs[i].img = c->src_imgs[i];
        /* a snapshot (-l) larger than the image is copied as far as the
         * image's size when opened, as qemu-img does */
        uint64_t now = qimg_image_size(c->src_imgs[i]);
        srcs[i].length = c->src_lens[i] < now ? c->src_lens[i] : now;
    }
    ret = qimg_copy(&p, &err);
    free(srcs);
    /* An empty message is a failure qemu-img does not report (qcow's
     * refusal of the end-of-stream write after convert -c). */
    if (ret < 0 && !c->errors_shown && err.msg[0])
        cli_error("%s", err.msg);
    return ret == 0;
}

/*
 * Everything after the up-front checks: sources, target creation, target,
 * copy.  Returns the exit status; *done says whether to finish progress
 * as a success (qemu-img exits 0 without copying in one odd case).
 */
static int convert_images(struct convert *c, bool *done)
{
    struct qimg_opts *opts = NULL;
    struct qimg_error err = {0};
    int ret = 1;

    *done = false;
    if (!open_sources(c))
        return 1;
    if (!c->no_create) {
        opts = prepare_target(c);
        if (!opts)
            return 1;
    }
    c->target_has_backing = c->backing ||
                            (opts && qimg_opts_get(opts, "backing_file"));
    if (c->target_is_zero && c->target_has_backing) {
        /* qemu-img 7.2 reports this and then exits successfully */
        cli_error("Cannot use --target-is-zero when the destination image "
                  "has a backing file");
        *done = true;
        ret = 0;
        goto out;
    }
    if (c->n_srcs > 1 && c->target_has_backing) {
        cli_error("Having a backing file for the target makes no sense when "
                  "concatenating multiple input images");
        goto out;
    }
    if (opts && qimg_opts_get(opts, "backing_file") &&
        !qimg_opts_get(opts, "backing_fmt")) {
        cli_error("Use of backing file requires explicit backing format");
        goto out;
    }
    if (c->compress && !c->no_create && !check_compress(c->out_fmt, opts))
        goto out;
    if (!check_source_bitmaps(c))
        goto out;
    if (!stream_target(c, opts))
        goto out;
    if (!c->no_create && !c->tgt_stream &&
        qimg_create(c->out_fmt, c->target, opts, &err) < 0) {
        cli_report(&err, "%s: error while converting %s: ", c->target,
                   c->out_fmt);
        goto out;
    }
    if (!open_target(c, opts) || !do_copy(c))
        goto out;
    if (c->bitmaps && !copy_bitmaps(c))
        goto out;
    *done = true;
    ret = 0;
out:
    qimg_opts_free(opts);
    return ret;
}

static int run_convert(struct convert *c)
{
    bool done;
    int ret = check_options(c);

    if (ret >= 0)
        return ret;
    c->progress_on = c->progress && !c->quiet;
    /* Before the first progress line: an image streamed to stdout and the
     * progress would mix (7.2 cannot write to a pipe at all). */
    if (c->progress_on && !c->no_create && !c->tgt_image_opts &&
        strcmp(c->target, "-") && qimg_name_is_stream(c->target) &&
        names_stdout(c->target)) {
        cli_error("%s: -p would write its progress into the image on "
                  "stdout", c->target);
        return 1;
    }
    /* qemu's progress steps by more than 1% (float arithmetic) */
    cli_progress_init(c->progress_on, 1.0);
    ret = convert_images(c, &done);
    if (done) {
        cli_progress_end();
    } else {
        cli_progress_json_end();
        if (c->progress_on) {
            printf("\n");
            fflush(stdout);
        }
    }
    return ret;
}

int cmd_convert(int argc, char **argv)
{
    struct convert c = {
        .sparse = DEFAULT_SPARSE, .parallel = 8, .cache = "unsafe",
        .scache = QIMG_CACHE_WRITEBACK,
    };
    int ret = parse_options(&c, argc, argv);

    if (ret < 0) {
        if (!c.out_fmt && !c.tgt_image_opts)
            c.out_fmt = "raw";
        ret = run_convert(&c);
    }
    if (c.src_imgs)
        for (int i = 0; i < c.n_srcs; i++)
            qimg_close(c.src_imgs[i]);
    qimg_close(c.tgt);
    free(c.src_imgs);
    free(c.src_lens);
    free(c.options);
    return ret;
}
