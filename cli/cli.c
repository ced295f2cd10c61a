/*
 * cli.c - helpers shared by all subcommands (see cli.h).
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"

const char *cli_prog = "qimg";

/* No flush of stdout first: as QEMU's error_report, an error reaches
 * stderr at once while buffered stdout follows at exit, which is the order
 * a combined 2>&1 capture shows (iotest 074). */
static void vmsg(const char *prefix, const char *fmt, va_list ap)
{
    /* One message is one unit: a library message printed from a copy
     * worker must not land inside another thread's line. */
    flockfile(stderr);
    fprintf(stderr, "%s: %s", cli_prog, prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("warning: ", fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    flockfile(stderr);
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information\n", cli_prog);
    funlockfile(stderr);
    return 1;
}

void cli_report(const struct qimg_error *err, const char *prefix_fmt, ...)
{
    char prefix[2048] = "";
    if (prefix_fmt) {
        va_list ap;
        va_start(ap, prefix_fmt);
        vsnprintf(prefix, sizeof(prefix), prefix_fmt, ap);
        va_end(ap);
    }
    cli_error("%s%s", prefix, err->msg);
}

int cli_bad_option(int c, char **argv)
{
    if (c == '?') {
        int ret = cli_untrusted_option(argv);
        if (ret != CLI_NOT_OURS)
            return ret;
    }
    if (c == ':')
        return cli_usage_error("missing argument for option '%s'",
                               argv[optind - 1]);
    return cli_usage_error("unrecognized option '%s'", argv[optind - 1]);
}

int64_t cli_cvtnum(const char *name, const char *value, int64_t min,
                   int64_t max)
{
    uint64_t v;
    bool hex_suffix;
    int ret = qimg_parse_size(value, &v, &hex_suffix);

    if (ret < 0 && ret != -ERANGE) {
        cli_error("Invalid %s specified. You may use k, M, G, T, P or E "
                  "suffixes for", name);
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and "
                  "exabytes.");
        return ret;
    }
    if (hex_suffix)
        cli_warn("Using a multiplier suffix on hex numbers is deprecated: %s",
                 value);
    if (ret == -ERANGE || v > (uint64_t)max || (int64_t)v < min) {
        cli_error("Invalid %s specified. Must be between %lld and %lld.", name,
                  (long long)min, (long long)max);
        return -ERANGE;
    }
    return (int64_t)v;
}

int64_t cli_cvtnum_full(const char *name, const char *value)
{
    return cli_cvtnum(name, value, 0, INT64_MAX);
}

/* Valid unless empty, starting with a comma or ending in an unescaped
 * comma. */
static bool option_list_valid(const char *s)
{
    size_t len = strlen(s), commas = 0;
    if (!len || s[0] == ',')
        return false;
    while (commas < len && s[len - 1 - commas] == ',')
        commas++;
    return commas % 2 == 0;
}

bool cli_add_option_list(char **acc, const char *arg)
{
    char *joined;
    if (!option_list_valid(arg)) {
        cli_error("Invalid option list: %s", arg);
        return false;
    }
    if (*acc) {
        if (asprintf(&joined, "%s,%s", *acc, arg) < 0)
            abort();
        free(*acc);
    } else {
        joined = strdup(arg);
    }
    *acc = joined;
    return true;
}

bool cli_has_help_option(const char *list)
{
    return list && qimg_opts_has_help(list);
}

static const char *type_name(enum qimg_opt_type t)
{
    switch (t) {
    case QIMG_OPT_BOOL: return "bool (on/off)";
    case QIMG_OPT_NUMBER: return "num";
    case QIMG_OPT_SIZE: return "size";
    case QIMG_OPT_STRING: break;
    }
    return "str";
}

static int cmp_desc(const void *a, const void *b)
{
    const struct qimg_opt_desc *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

int cli_print_opt_list(const struct qimg_opt_desc **d, size_t n)
{
    qsort(d, n, sizeof(d[0]), cmp_desc);
    for (size_t i = 0; i < n; i++) {
        char left[256];
        snprintf(left, sizeof(left), "%s=<%s>", d[i]->name,
                 type_name(d[i]->type));
        printf("  %-22s - %s\n", left, d[i]->help);
    }
    return 0;
}

int cli_print_create_opts_help(const char *fmt, const char *filename)
{
    const struct qimg_opt_desc *d[128];
    struct qimg_error err;
    int n = qimg_create_opts(fmt, filename, d, 128, &err);

    if (n < 0) {
        cli_error("%s", err.msg);
        return 1;
    }
    if (filename)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", fmt);
    cli_print_opt_list(d, (size_t)n);
    if (!filename)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    return 0;
}

/*
 * Overwrite the value of data= in the argument once the secret holds a
 * copy: the argument lives in argv, which /proc/PID/cmdline (ps) shows
 * for the whole run.  Elements end at a comma that is not doubled.
 */
static void hide_secret_data(char *def)
{
    for (char *p = def; *p;) {
        char *q = p;
        while (*q && !(*q == ',' && q[1] != ','))
            q += (*q == ',') ? 2 : 1;
        if (!strncmp(p, "data=", 5))
            memset(p + 5, 'x', (size_t)(q - p - 5));
        p = *q ? q + 1 : q;
    }
}

int cli_add_object(const char *def)
{
    struct qimg_error err;
    char *help = NULL;

    if (qimg_object_add(def, &help, &err) < 0) {
        cli_error("%s", err.msg);
        return 1;
    }
    /* def is an argv element (getopt's optarg): writable */
    hide_secret_data((char *)def);
    if (help) {
        /* qemu-img prints it and exits at once, whatever comes next */
        fputs(help, stdout);
        free(help);
        exit(0);
    }
    return 0;
}

bool cli_parse_output(const char *arg, enum cli_output *out)
{
    if (!strcmp(arg, "json")) {
        *out = CLI_OUTPUT_JSON;
    } else if (!strcmp(arg, "human")) {
        *out = CLI_OUTPUT_HUMAN;
    } else {
        cli_error("--output must be used with human or json as argument.");
        return false;
    }
    return true;
}

bool cli_parse_cache(const char *arg, enum qimg_cache *out)
{
    return qimg_cache_parse(arg, out) == 0;
}

void cli_warn_probed_raw(const char *name)
{
    fflush(stdout);
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing "
            "guessed raw.\n"
            "         Automatically detecting the format is dangerous for "
            "raw images, write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the "
            "restrictions.\n", name);
}

/*
 * QEMU warns about a guessed raw format before it takes the image's locks,
 * so the warning also comes before a lock conflict.  We lock first; when
 * that failed, probe again without locks to know whether to warn.
 */
static void warn_probed_raw_on_conflict(const struct qimg_open_params *p,
                                        const struct qimg_error *err)
{
    struct qimg_open_params probe = *p;
    struct qimg_image *img;
    struct qimg_error e;

    if (err->code != -EAGAIN || !(p->flags & QIMG_OPEN_RDWR))
        return;
    probe.flags = QIMG_OPEN_NO_LOCK | QIMG_OPEN_NO_BACKING;
    if (qimg_open(&img, &probe, &e) < 0)
        return;
    if (qimg_image_probed_raw(img))
        cli_warn_probed_raw(qimg_image_storage_name(img));
    qimg_close(img);
}

/* Library warnings print as they come, as QEMU's do. */
void cli_print_library_message(const char *msg, enum qimg_msg_kind kind)
{
    if (kind == QIMG_MSG_PLAIN) {
        fputs(msg, stderr);
    } else if (kind == QIMG_MSG_FATAL) {
        /* blkverify found a difference: QEMU stops right there. */
        fputs(msg, stderr);
        exit(1);
    } else
        fprintf(stderr, "%s: %s%s", cli_prog,
                kind == QIMG_MSG_WARNING ? "warning: " : "", msg);
}

struct qimg_image *cli_open_image(const struct cli_open *o)
{
    struct qimg_open_params p = {
        .filename = o->filename, .format = o->fmt, .flags = o->flags,
        .cache = o->cache, .role = o->role,
    };
    struct qimg_opts *dict = NULL;
    struct qimg_image *img = NULL;
    struct qimg_error err = {0};

    if (o->image_opts) {
        if (o->fmt) {
            cli_error("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        dict = qimg_opts_new();
        /* A bare first element names the "file" child, as in QEMU. */
        if (qimg_opts_parse(dict, o->filename, "file", &err) < 0) {
            cli_error("%s", err.msg);
            qimg_opts_free(dict);
            return NULL;
        }
        p.options = dict;
        p.format = NULL;
        p.filename = NULL;
        if ((o->flags & QIMG_OPEN_SHARE) && qimg_opts_get(dict, "force-share")) {
            cli_error("--force-share/-U conflicts with image options");
            qimg_opts_free(dict);
            return NULL;
        }
    }
    /* options beside the file name, as bdrv_open takes them; or options
     * instead of it (convert's streams), the name then only in messages */
    if (!o->image_opts && o->options) {
        p.options = o->options;
        p.filename = NULL;
    } else if (!o->image_opts && o->extra && qimg_opts_count(o->extra)) {
        p.options = o->extra;
    }
    qimg_set_warning_handler(cli_print_library_message);
    if (qimg_open(&img, &p, &err) < 0) {
        warn_probed_raw_on_conflict(&p, &err);
        cli_report(&err, "Could not open '%s': ", o->filename);
        img = NULL;
    } else if ((o->flags & QIMG_OPEN_RDWR) && qimg_image_probed_raw(img)) {
        cli_warn_probed_raw(qimg_image_storage_name(img));
    }
    qimg_opts_free(dict);
    return img;
}

bool cli_load_snapshot(struct qimg_image *img, const char *param)
{
    struct qimg_error err = {0};
    int ret;

    if (!strncmp(param, "snapshot.", 9)) {
        struct qimg_opts *o = qimg_opts_new();
        qimg_opts_parse(o, param, NULL, NULL);
        ret = qimg_snapshot_load_tmp(img, qimg_opts_get(o, "snapshot.id"),
                                     qimg_opts_get(o, "snapshot.name"), &err);
        qimg_opts_free(o);
    } else {
        /* An ID first, then a name, as qemu-img does. */
        ret = qimg_snapshot_load_tmp(img, param, NULL, &err);
        if (ret == -ENOENT)
            ret = qimg_snapshot_load_tmp(img, NULL, param, &err);
    }
    if (ret < 0) {
        cli_report(&err, "Failed to load snapshot: ");
        return false;
    }
    return true;
}

void cli_print_snapshot_table(FILE *out, const struct qimg_snapshot *list,
                              size_t n)
{
    fprintf(out, "%-9s %-16s %8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < n; i++) {
        const struct qimg_snapshot *sn = &list[i];
        char size[64], date[64], clock[64], icount[32] = "";
        time_t t = (time_t)sn->date_sec;
        struct tm tm;
        uint64_t secs = sn->vm_clock_nsec / 1000000000ull;

        qimg_size_to_str(sn->vm_state_size, size, sizeof(size));
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(clock, sizeof(clock), "%02llu:%02llu:%02llu.%03llu",
                 (unsigned long long)(secs / 3600),
                 (unsigned long long)(secs / 60 % 60),
                 (unsigned long long)(secs % 60),
                 (unsigned long long)(sn->vm_clock_nsec / 1000000 % 1000));
        if (sn->has_icount)
            snprintf(icount, sizeof(icount), "%llu",
                     (unsigned long long)sn->icount);
        fprintf(out, "%-9s %-16s %8s%20s%13s%11s\n", sn->id, sn->name, size, date,
               clock, icount);
    }
}

json_t *cli_snapshots_json(const struct qimg_snapshot *list, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const struct qimg_snapshot *sn = &list[i];
        json_t *o = json_object();
        if (sn->has_icount)
            json_object_set_new(o, "icount", json_integer((json_int_t)sn->icount));
        json_object_set_new(o, "vm-clock-nsec",
                            json_integer((json_int_t)(sn->vm_clock_nsec % 1000000000ull)));
        json_object_set_new(o, "name", json_string(sn->name));
        json_object_set_new(o, "date-sec", json_integer(sn->date_sec));
        json_object_set_new(o, "date-nsec", json_integer(sn->date_nsec));
        json_object_set_new(o, "vm-clock-sec",
                            json_integer((json_int_t)(sn->vm_clock_nsec / 1000000000ull)));
        json_object_set_new(o, "id", json_string(sn->id));
        json_object_set_new(o, "vm-state-size",
                            json_integer((json_int_t)sn->vm_state_size));
        json_array_append_new(arr, o);
    }
    return arr;
}

/* ---- progress ------------------------------------------------------------ */

static struct {
    bool enabled;
    double min_step, last;
    volatile sig_atomic_t requested;
    double current;
    /* --progress=json|FD: JSON lines on fd (-1: off) */
    int json_fd;
    double json_last;
    uint64_t total;
    bool total_set;     /* no JSON line before the total is known */
    struct timespec start;
} progress = {.json_fd = -1};

/* JSON progress lines are written when the value moved by this much. */
#define JSON_PROGRESS_STEP 1.0

static void print_progress_line(double percent)
{
    printf("    (%0.2f/100%%)\r", percent);
    fflush(stdout);
}

static void on_sigusr1(int sig)
{
    (void)sig;
    progress.requested = 1;
}

bool cli_parse_progress(const char *arg)
{
    char *end;
    long fd;

    clock_gettime(CLOCK_MONOTONIC, &progress.start);
    progress.json_last = -JSON_PROGRESS_STEP;
    if (!strcmp(arg, "json")) {
        progress.json_fd = 2;
        return true;
    }
    errno = 0;
    fd = strtol(arg, &end, 10);
    if (*arg && !*end && !errno && fd >= 0 && fd <= INT_MAX &&
        fcntl((int)fd, F_GETFD) != -1) {
        /* the numbered descriptor is not inherited by children */
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        progress.json_fd = (int)fd;
        return true;
    }
    cli_error("Invalid progress option '%s': expected 'json' or an open "
              "file descriptor number", arg);
    return false;
}

int cli_progress_option(const char *arg, bool *bar)
{
    if (!arg) {
        *bar = true;
        return CLI_CONTINUE;
    }
    return cli_parse_progress(arg) ? CLI_CONTINUE : 1;
}

bool cli_progress_json_on(void)
{
    return progress.json_fd >= 0;
}

void cli_progress_set_total(uint64_t bytes)
{
    progress.total = bytes;
    progress.total_set = true;
    /* the first line, once the total is known */
    cli_progress_json(0);
}

static double seconds_since_start(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - progress.start.tv_sec) +
           (double)(now.tv_nsec - progress.start.tv_nsec) / 1e9;
}

/*
 * write(2) that fails with EPIPE instead of raising SIGPIPE when the
 * reader went away: the signal is blocked meanwhile and a pending one
 * consumed, so the command carries on without its progress reader.
 */
static bool write_no_sigpipe(int fd, const char *buf, size_t len)
{
    sigset_t pipe_set, old;
    const struct timespec zero = {0, 0};
    bool ok = true;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ok = false;
            if (errno == EPIPE)
                sigtimedwait(&pipe_set, NULL, &zero);
            break;
        }
        buf += n;
        len -= (size_t)n;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ok;
}

/* One JSON object per line: bytes done, total, percent, rate (bytes/s). */
static void print_json_line(double percent)
{
    double elapsed = seconds_since_start();
    uint64_t done = (uint64_t)((double)progress.total * percent / 100.0 + 0.5);
    char line[256];
    int n;

    if (done > progress.total)
        done = progress.total;
    n = snprintf(line, sizeof(line),
                 "{\"done\": %llu, \"total\": %llu, \"percent\": %.2f, "
                 "\"rate\": %.0f, \"elapsed\": %.3f}\n",
                 (unsigned long long)done, (unsigned long long)progress.total,
                 percent, elapsed > 0 ? (double)done / elapsed : 0.0, elapsed);
    progress.json_last = percent;
    if (n > 0 && !write_no_sigpipe(progress.json_fd, line, (size_t)n)) {
        /* a closed reader stops the reports, not the command */
        progress.json_fd = -1;
    }
}

void cli_progress_json(double percent)
{
    if (progress.json_fd >= 0 && progress.total_set && percent < 100.0 &&
        percent - progress.json_last >= JSON_PROGRESS_STEP)
        print_json_line(percent);
}

void cli_progress_json_end(void)
{
    if (progress.json_fd >= 0)
        print_json_line(100.0);
    progress.json_fd = -1;
}

void cli_progress_init(bool enabled, double min_step)
{
    progress.enabled = enabled;
    progress.min_step = min_step;
    progress.last = 0;
    progress.current = 0;
    signal(SIGUSR1, on_sigusr1);
    clock_gettime(CLOCK_MONOTONIC, &progress.start);
    if (enabled)
        print_progress_line(0);
}

void cli_progress_print(double percent)
{
    progress.current = percent;
    cli_progress_json(percent);
    if (progress.requested) {
        progress.requested = 0;
        print_progress_line(percent);
    }
    if (!progress.enabled)
        return;
    /* qemu-img prints when the value moved by more than the step (either
     * way: an amend's projection can go back), and always at 0 and 100. */
    if (percent - progress.last > progress.min_step ||
        percent < progress.last - progress.min_step || percent == 0 ||
        percent >= 100.0) {
        progress.last = percent;
        print_progress_line(percent);
    }
}

void cli_progress_end_after_error(void)
{
    if (progress.enabled) {
        printf("\n");
        fflush(stdout);
    }
    progress.enabled = false;
}

void cli_progress_end(void)
{
    if (progress.enabled) {
        print_progress_line(100.0);
        printf("\n");
        fflush(stdout);
    }
    progress.enabled = false;
    cli_progress_json_end();
}

const char *cli_size_str(uint64_t size, char *buf, size_t len)
{
    qimg_size_to_str(size, buf, len);
    return buf;
}

int cli_not_implemented(const char *name)
{
    cli_error("'%s' is not implemented yet", name);
    return 1;
}

int cli_image_option(int c, char **argv, struct cli_image_args *a)
{
    switch (c) {
    case 'h': return cli_help();
    case 'f': a->fmt = optarg; break;
    case 'U': a->force_share = true; break;
    case CLI_OPT_OUTPUT: a->output = optarg; break;
    case CLI_OPT_OBJECT:
        if (cli_add_object(optarg))
            return 1;
        break;
    case CLI_OPT_IMAGE_OPTS: a->image_opts = true; break;
    default: return cli_bad_option(c, argv);
    }
    return CLI_CONTINUE;
}

int cli_image_args_end(int argc, char **argv, struct cli_image_args *a,
                       enum cli_output *out)
{
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    /* qemu-img checks the output format only once the arguments add up */
    if (out && a->output && !cli_parse_output(a->output, out))
        return 1;
    return CLI_CONTINUE;
}

struct cli_open cli_image_args_open(const struct cli_image_args *a,
                                    unsigned flags)
{
    struct cli_open o = {
        .filename = a->filename, .fmt = a->fmt, .image_opts = a->image_opts,
        .flags = flags | (a->force_share ? QIMG_OPEN_SHARE : 0),
    };
    return o;
}

bool cli_check_protocol(const char *filename)
{
    struct qimg_error err = {0};

    if (qimg_protocol_check(filename, &err) == 0)
        return true;
    cli_error("%s", err.msg);
    return false;
}
