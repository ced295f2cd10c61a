/*
 * untrusted.c - the command line of untrusted-image mode (docs/SECURITY.md):
 * --untrusted, --allow-backing/--allow-data-file/--allow-extent/--allow-file
 * PATH on every command (and before it), QIMG_UNTRUSTED=1 in the
 * environment, and the process limits the mode sets.
 *
 * The options are not in the commands' getopt tables: they are taken when
 * getopt reports them unknown, spelled out in full, so that every
 * abbreviation qemu-img 7.2 accepts (bitmap's "--a" for --add) keeps its
 * meaning.  The library keeps the allow list (lib/core/policy.c); here
 * only the process limits are set, once the mode is on and the command
 * is known.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"

/* Address space an untrusted run may take beyond what the program holds
 * when the mode starts (libraries, and a sanitizer's shadow in test
 * builds): OpenStack's limit for qemu-img info, and 50 times what a
 * convert needs (qimg's own bounds on image-driven allocations are far
 * below it, see docs/LIMITS.md). */
#define UNTRUSTED_AS_BYTES (1ull << 30)
/* CPU seconds of the commands that only inspect metadata (OpenStack's
 * limit for qemu-img info); the copying commands are bounded by the
 * virtual size the caller saw with info instead. */
#define UNTRUSTED_CPU_SECONDS 30

/* In the order of CLI_OPT_ALLOW_BACKING and the following values. */
static const struct {
    const char *name;
    unsigned roles;
} allow_options[] = {
    {"--allow-backing", QIMG_ROLE_BACKING},
    {"--allow-data-file", QIMG_ROLE_DATA_FILE},
    {"--allow-extent", QIMG_ROLE_EXTENT},
    {"--allow-file", QIMG_ROLE_ANY},
};

/* Commands whose work is bounded by metadata: they get the CPU limit. */
static const char *const inspecting[] = {
    "check", "info", "map", "measure", "snapshot",
};

static struct {
    bool on;
    bool limited;
    const char *command;
} mode;

static void on_sigxcpu(int sig)
{
    static const char tail[] = ": untrusted mode: CPU time limit exceeded\n";
    (void)sig;
    if (write(STDERR_FILENO, cli_prog, strlen(cli_prog)) >= 0 &&
        write(STDERR_FILENO, tail, sizeof(tail) - 1) >= 0)
        _exit(1);
    _exit(1);
}

/* Bytes of address space in use now, 0 when unknown. */
static uint64_t address_space_now(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;

    if (!f)
        return 0;
    if (fscanf(f, "%llu", &pages) != 1)
        pages = 0;
    fclose(f);
    return pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void lower_limit(int resource, uint64_t soft, uint64_t hard)
{
    struct rlimit r;

    if (getrlimit(resource, &r) < 0)
        return;
    /* Only ever tighter than what the caller set. */
    if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < soft)
        soft = r.rlim_cur;
    if (r.rlim_max != RLIM_INFINITY && r.rlim_max < hard)
        hard = r.rlim_max;
    if (soft > hard)
        soft = hard;
    r.rlim_cur = soft;
    r.rlim_max = hard;
    setrlimit(resource, &r);
}

static void apply_limits(void)
{
    uint64_t as;

    /* Nothing to read from /proc unless the limits apply: short commands
     * outside untrusted mode reach their image without that detour. */
    if (!mode.on || mode.limited || !mode.command)
        return;
    as = address_space_now() + UNTRUSTED_AS_BYTES;
    mode.limited = true;
    lower_limit(RLIMIT_AS, as, as);
    for (size_t i = 0; i < sizeof(inspecting) / sizeof(inspecting[0]); i++) {
        if (!strcmp(mode.command, inspecting[i])) {
            signal(SIGXCPU, on_sigxcpu);
            /* SIGXCPU at the soft limit; the hard one kills. */
            lower_limit(RLIMIT_CPU, UNTRUSTED_CPU_SECONDS,
                        UNTRUSTED_CPU_SECONDS + 5);
        }
    }
}

static void enable(void)
{
    mode.on = true;
    qimg_untrusted_enable();
    apply_limits();
}

void cli_untrusted_begin(const char *command)
{
    const char *env = getenv("QIMG_UNTRUSTED");

    mode.command = command;
    if (env && *env && strcmp(env, "0"))
        enable();
    apply_limits();
}

int cli_untrusted_apply(int which, const char *arg)
{
    struct qimg_error err = {0};
    size_t i = (size_t)(which - CLI_OPT_ALLOW_BACKING);

    enable();
    if (which == CLI_OPT_UNTRUSTED)
        return CLI_CONTINUE;
    if (qimg_untrusted_allow(allow_options[i].roles, arg, &err) < 0) {
        cli_error("%s: %s", allow_options[i].name, err.msg);
        return 1;
    }
    return CLI_CONTINUE;
}

int cli_untrusted_option(char **argv)
{
    const char *s = argv[optind - 1], *arg = NULL, *eq;
    size_t len;

    /* A long option getopt did not know (for short ones optopt is set). */
    if (optopt || strncmp(s, "--", 2))
        return CLI_NOT_OURS;
    eq = strchr(s, '=');
    len = eq ? (size_t)(eq - s) : strlen(s);
    if (len == strlen("--untrusted") && !strncmp(s, "--untrusted", len)) {
        if (eq)
            return cli_usage_error("option '--untrusted' doesn't allow an "
                                   "argument");
        return cli_untrusted_apply(CLI_OPT_UNTRUSTED, NULL);
    }
    for (size_t i = 0; i < sizeof(allow_options) / sizeof(allow_options[0]);
         i++) {
        const char *name = allow_options[i].name;
        if (len != strlen(name) || strncmp(s, name, len))
            continue;
        if (eq) {
            arg = eq + 1;
        } else if (argv[optind]) {
            arg = argv[optind++];
        } else {
            return cli_usage_error("option '%s' requires an argument", name);
        }
        return cli_untrusted_apply(CLI_OPT_ALLOW_BACKING + (int)i, arg);
    }
    return CLI_NOT_OURS;
}

bool cli_untrusted(void)
{
    return mode.on;
}
