/*
 * complete.c - candidates for shell completion (qimg --complete).
 *
 * Nothing here is a second list: commands come from main.c's table,
 * options from the help's syntax lines ("[-f fmt]", "[--output=ofmt]",
 * "bs=block_size"), formats and storages from the driver tables, -o keys
 * from the formats' creation options, algorithms from lib/checksum.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_OPT_DESCS 128

static const char *const cache_modes[] = {
    "none", "writeback", "writethrough", "directsync", "unsafe", NULL,
};

static void offer(const char *prefix, const char *cand, const char *cur)
{
    size_t pl = strlen(prefix);
    /* cur starts with prefix; the rest must start the candidate */
    if (!strncmp(cand, cur + pl, strlen(cur + pl)))
        printf("%s%s\n", prefix, cand);
}

static void offer_list(const char *const *list, const char *cur)
{
    for (; *list; list++)
        offer("", *list, cur);
}

/*
 * The option tokens of a syntax line: "-x" and "--name" (with '=' kept
 * when the line writes "--name=value"), and "name=" operands (dd).
 */
static void offer_syntax(const char *line, const char *cur, bool dashes)
{
    const char *end = strchr(line, '\n');
    char tok[64];

    for (const char *s = line; s < end; s++) {
        const char *t = s;
        size_t n;

        if (s != line && s[-1] != '[' && s[-1] != ' ' && s[-1] != '(' &&
            s[-1] != '|')
            continue;
        if (*t == '-') {
            if (!dashes)
                continue;
            t++;
            if (*t == '-')
                t++;
        } else if (dashes || !((*t >= 'a' && *t <= 'z'))) {
            continue;
        }
        while ((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') ||
               (*t >= '0' && *t <= '9') || (*t == '-' && t > s + 1))
            t++;
        if (*s != '-' && *t != '=')
            continue;       /* a plain word, not an operand */
        n = (size_t)(t - s) + (*t == '=');
        if (n < 2 || n >= sizeof(tok))
            continue;
        memcpy(tok, s, n);
        tok[n] = 0;
        offer("", tok, cur);
        /* -p commands take the machine-readable form too (cli.h) */
        if (!strcmp(tok, "-p") && !strstr(line, "--progress="))
            offer("", "--progress=", cur);
    }
}

/* The value of option opt among the words, or NULL. */
static const char *word_after(int n, char **w, const char *opt)
{
    for (int i = 0; i + 1 < n; i++)
        if (!strcmp(w[i], opt))
            return w[i + 1];
    return NULL;
}

static void offer_option_keys(int n, char **w, const char *cmd,
                              const char *cur)
{
    const char *fmt = word_after(n, w, "-O");
    const struct qimg_opt_desc *d[MAX_OPT_DESCS];
    const char *comma = strrchr(cur, ',');
    char prefix[256], key[128];
    int count;

    if (!fmt || strcmp(cmd, "convert"))
        fmt = word_after(n, w, "-f") ? word_after(n, w, "-f") : fmt;
    if (!fmt)
        fmt = "raw";
    count = qimg_create_opts(fmt, NULL, d, MAX_OPT_DESCS, NULL);
    snprintf(prefix, sizeof(prefix), "%.*s",
             comma ? (int)(comma + 1 - cur) : 0, cur);
    for (int i = 0; i < count; i++) {
        snprintf(key, sizeof(key), "%s=", d[i]->name);
        offer(prefix, key, cur);
    }
}

int cli_complete(int argc, char **argv)
{
    const char *cur, *prev, *cmd, *line;

    if (argc && !strcmp(argv[0], "--")) {
        argc--;
        argv++;
    }
    if (argc < 1)
        return 0;
    cur = argv[argc - 1];
    if (argc == 1) {
        static const char *const globals[] = {
            "-h", "-V", "-T", "--help", "--version", "--trace", NULL,
        };
        for (size_t i = 0; cli_command_at(i); i++)
            offer("", cli_command_at(i), cur);
        offer_list(globals, cur);
        return 0;
    }
    cmd = argv[0];
    prev = argv[argc - 2];
    if (!strcmp(prev, "-f") || !strcmp(prev, "-F") || !strcmp(prev, "-O")) {
        for (size_t i = 0; i < qimg_format_count(); i++)
            offer("", qimg_format_name_at(i), cur);
    } else if (!strcmp(prev, "-o")) {
        offer_option_keys(argc - 1, argv, cmd, cur);
    } else if (!strcmp(prev, "-t") || !strcmp(prev, "-T")) {
        offer_list(cache_modes, cur);
    } else if (!strcmp(prev, "-a") && !strcmp(cmd, "checksum")) {
        for (size_t i = 0; qimg_checksum_algorithm_at(i); i++)
            offer("", qimg_checksum_algorithm_at(i), cur);
    } else if (!strcmp(prev, "-r") && !strcmp(cmd, "check")) {
        static const char *const modes[] = {"leaks", "all", NULL};
        offer_list(modes, cur);
    } else if (!strncmp(cur, "--output=", 9)) {
        offer("--output=", "human", cur);
        offer("--output=", "json", cur);
    } else if (!strncmp(cur, "--progress=", 11)) {
        offer("--progress=", "json", cur);
    } else if ((line = cli_help_syntax(cmd))) {
        offer_syntax(line, cur, cur[0] == '-');
    }
    return 0;
}
