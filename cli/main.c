/*
 * main.c - qimg entry point: global options and the command table.
 *
 * usage: qimg [standard options] command [command options]
 * Exit status: whatever the command returns; 1 for usage errors.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qimg-config.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
};

/* Sorted by name. */
static const struct command commands[] = {
    {"amend", cmd_amend},       {"bench", cmd_bench},
    {"bitmap", cmd_bitmap},     {"check", cmd_check},
    {"commit", cmd_commit},     {"compare", cmd_compare},
    {"convert", cmd_convert},   {"create", cmd_create},
    {"dd", cmd_dd},             {"info", cmd_info},
    {"map", cmd_map},           {"measure", cmd_measure},
    {"rebase", cmd_rebase},     {"resize", cmd_resize},
    {"snapshot", cmd_snapshot},
};

void cli_version(void)
{
    printf("%s version " QIMG_VERSION " (qimg, compatible with qemu-img 7.2)\n"
           "Copyright (c) 2026 the qimg developers\n", cli_prog);
}

/* The command syntax lines are the interface qemu-img 7.2 documents. */
static const char help_syntax[] =
"  amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n"
"  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
"  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap\n"
"  check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n"
"  commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n"
"  compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
"  convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename\n"
"  create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n"
"  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n"
"  info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
"  map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n"
"  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]\n"
"  snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename\n"
"  rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
"  resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n";

static const char help_params[] =
"Command parameters:\n"
"  'filename' is a disk image filename (or a json:{...} description)\n"
"  'objectdef' defines an object; qimg knows 'secret' objects:\n"
"    secret,id=ID,data=STRING|file=PATH[,format=raw|base64]\n"
"  'fmt' is the disk image format, probed from the content when not given\n"
"  'cache' is the cache mode for writing the output image: 'none',\n"
"    'writeback' (default, except for convert), 'writethrough',\n"
"    'directsync' or 'unsafe' (default for convert)\n"
"  'src_cache' is the cache mode for reading input images (same choices)\n"
"  'size' is a size in bytes; the suffixes 'k' or 'K' (1024), 'M' (1024k),\n"
"    'G' (1024M), 'T' (1024G), 'P' (1024T) and 'E' (1024P) multiply it,\n"
"    and 'b' means bytes\n"
"  'output_filename' is the destination image, 'output_fmt' its format\n"
"  'options' is a comma separated list of name=value format options;\n"
"    '-o help' lists the options of a format\n"
"  'snapshot_param' names an internal snapshot:\n"
"    'snapshot.id=[ID],snapshot.name=[NAME]' or '[ID_OR_NAME]'\n"
"  '-c' compresses the target image (formats that support it)\n"
"  '-u' skips opening the backing file: for rebase, old and new backing\n"
"       files are assumed identical; for create, the backing file need not\n"
"       exist\n"
"  '-h' shows this help\n"
"  '-p' shows progress (convert, commit, compare, rebase, amend)\n"
"  '-q' is quiet mode: only errors are printed\n"
"  '-S' is the number of consecutive zero bytes (default 4k) after which\n"
"       convert leaves a hole; 0 writes the target fully allocated\n"
"  '--output' selects 'human' or 'json' output\n"
"  '-n' uses an existing target instead of creating it\n"
"\n"
"check: '-r leaks' repairs leaked clusters only, '-r all' repairs every\n"
"       kind of error it finds\n"
"convert: '--bitmaps' copies the persistent bitmaps of the top layer;\n"
"       '-m' sets how many requests run in parallel (default 8);\n"
"       '-W' allows writing the target out of order\n"
"snapshot: '-a' applies, '-c' creates, '-d' deletes, '-l' lists\n"
"compare: '-f' and '-F' are the two formats; '-s' is strict mode (sizes\n"
"       and allocation must match too)\n"
"dd: 'bs=BYTES' block size (default 512), 'count=N' blocks to copy,\n"
"       'if=FILE' input, 'of=FILE' output, 'skip=N' input blocks to skip\n"
"bitmap: one or more of '--add', '--remove', '--clear', '--enable',\n"
"       '--disable' and '--merge SOURCE' act on 'bitmap'; '-g' sets the\n"
"       granularity for '--add'; '-b'/'-F' name the file holding merge\n"
"       sources\n";

int cli_help(void)
{
    cli_version();
    printf("usage: %s [standard options] command [command options]\n"
           "QEMU disk image utility\n\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
           "                         specify tracing options\n\n"
           "Command syntax:\n%s\n%s\nSupported formats:",
           cli_prog, help_syntax, help_params);
    for (size_t i = 0; i < qimg_format_count(); i++)
        printf(" %s", qimg_format_name_at(i));
    printf("\n");
    return 0;
}

/* -T: we have no trace events, so every pattern matches none, as QEMU
 * warns for unknown events. */
static void handle_trace(const char *arg)
{
    struct qimg_opts *o = qimg_opts_new();
    const char *pattern;
    qimg_opts_parse(o, arg, "enable", NULL);
    pattern = qimg_opts_get(o, "enable");
    if (pattern && *pattern)
        cli_warn("trace event '%s' does not exist", pattern);
    qimg_opts_free(o);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    const char *slash = strrchr(argv[0], '/');
    const char *cmd;
    int c;

    cli_prog = slash ? slash + 1 : argv[0];
    if (argc < 2)
        return cli_usage_error("Not enough arguments");
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:hVT:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help();
        case 'V':
            cli_version();
            return 0;
        case 'T':
            handle_trace(optarg);
            break;
        default: {
            int ret = cli_bad_option(c, argv);
            if (ret != CLI_CONTINUE)
                return ret;
        }
        }
    }
    if (optind >= argc)
        return 0;   /* only global options: qemu-img quietly succeeds */
    cmd = argv[optind];
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (!strcmp(cmd, commands[i].name)) {
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 0;   /* reset getopt for the subcommand */
            cli_untrusted_begin(cmd);
            return commands[i].run(sub_argc, sub_argv);
        }
    }
    return cli_usage_error("Command not found: %s", cmd);
}
