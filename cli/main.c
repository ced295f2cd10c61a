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
    bool qimg_only;     /* not a qemu-img 7.2 command: hidden as qemu-img */
};

/* Sorted by name. */
static const struct command commands[] = {
    {"amend", cmd_amend},       {"bench", cmd_bench},
    {"bitmap", cmd_bitmap},     {"check", cmd_check},
    {"checksum", cmd_checksum, true},
    {"commit", cmd_commit},     {"compare", cmd_compare},
    {"convert", cmd_convert},   {"create", cmd_create},
    {"dd", cmd_dd},             {"info", cmd_info},
    {"map", cmd_map},           {"measure", cmd_measure},
    {"rebase", cmd_rebase},     {"resize", cmd_resize},
    {"snapshot", cmd_snapshot},
};

/* Run through a link named qemu-img: only qemu-img 7.2's commands. */
static bool cli_is_qemu_img(void)
{
    return strcmp(cli_prog, "qimg") != 0;
}

void cli_version(void)
{
    printf("%s version " QIMG_VERSION " (qimg, compatible with qemu-img 7.2)\n"
           "Copyright (c) 2026 the qimg developers\n", cli_prog);
}

/* qimg --version: also the formats and storages compiled in (run as
 * qemu-img, the text stays what it was). */
static void print_version(void)
{
    cli_version();
    if (cli_is_qemu_img())
        return;
    printf("Formats:");
    for (size_t i = 0; qimg_format_driver_at(i); i++)
        printf(" %s", qimg_format_driver_at(i));
    printf("\nStorages:");
    /* nbd has three table entries (nbd, nbd+tcp, nbd+unix): one name */
    for (size_t i = 0; qimg_storage_name_at(i); i++)
        if (!i || strcmp(qimg_storage_name_at(i), qimg_storage_name_at(i - 1)))
            printf(" %s", qimg_storage_name_at(i));
    printf("\nChecksums:");
    for (size_t i = 0; qimg_checksum_algorithm_at(i); i++)
        printf(" %s", qimg_checksum_algorithm_at(i));
    printf("\n");
}

/* The help text is qemu-img 7.2's, line for line: scripts and people
 * read it as the interface. */
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

/* Commands only qimg has (listed when run as qimg). */
static const char help_syntax_qimg[] =
"  checksum [--object objectdef] [--image-opts] [-f fmt] [-a alg[/block_size]] [-T src_cache] [-U] [-p] [--progress=json|FD] filename\n";

const char *cli_help_syntax(const char *cmd)
{
    const char *texts[] = {help_syntax, help_syntax_qimg};
    size_t n = strlen(cmd);

    for (size_t t = 0; t < 2; t++)
        for (const char *l = texts[t]; *l; l = strchr(l, '\n') + 1)
            if (!strncmp(l + 2, cmd, n) && l[2 + n] == ' ')
                return l;
    return NULL;
}

const char *cli_command_at(size_t i)
{
    return i < sizeof(commands) / sizeof(commands[0]) ? commands[i].name
                                                      : NULL;
}

static const char help_params[] =
"Command parameters:\n"
"  'filename' is a disk image filename\n"
"  'objectdef' is a QEMU user creatable object definition. See the qemu(1)\n"
"    manual page for a description of the object properties. The most common\n"
"    object type is a 'secret', which is used to supply passwords and/or\n"
"    encryption keys.\n"
"  'fmt' is the disk image format. It is guessed automatically in most cases\n"
"  'cache' is the cache mode used to write the output disk image, the valid\n"
"    options are: 'none', 'writeback' (default, except for convert), 'writethrough',\n"
"    'directsync' and 'unsafe' (default for convert)\n"
"  'src_cache' is the cache mode used to read input disk images, the valid\n"
"    options are the same as for the 'cache' option\n"
"  'size' is the disk image size in bytes. Optional suffixes\n"
"    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),\n"
"    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are\n"
"    supported. 'b' is ignored.\n"
"  'output_filename' is the destination disk image filename\n"
"  'output_fmt' is the destination format\n"
"  'options' is a comma separated list of format specific options in a\n"
"    name=value format. Use -o help for an overview of the options supported by\n"
"    the used format\n"
"  'snapshot_param' is param used for internal snapshot, format\n"
"    is 'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"    '[ID_OR_NAME]'\n"
"  '-c' indicates that target image must be compressed (qcow format only)\n"
"  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and\n"
"       new backing file match exactly. The image doesn't need a working\n"
"       backing file before rebasing in this case (useful for renaming the\n"
"       backing file). For image creation, allow creating without attempting\n"
"       to open the backing file.\n"
"  '-h' with or without a command shows this help and lists the supported formats\n"
"  '-p' show progress of command (only certain commands)\n"
"  '-q' use Quiet mode - do not print any output (except errors)\n"
"  '-S' indicates the consecutive number of bytes (defaults to 4k) that must\n"
"       contain only zeros for qemu-img to create a sparse image during\n"
"       conversion. If the number of bytes is 0, the source will not be scanned for\n"
"       unallocated or zero sectors, and the destination image will always be\n"
"       fully allocated\n"
"  '--output' takes the format in which the output must be done (human or json)\n"
"  '-n' skips the target volume creation (useful if the volume is created\n"
"       prior to running qemu-img)\n"
"\n"
"Parameters to bitmap subcommand:\n"
"  'bitmap' is the name of the bitmap to manipulate, through one or more\n"
"       actions from '--add', '--remove', '--clear', '--enable', '--disable',\n"
"       or '--merge source'\n"
"  '-g granularity' sets the granularity for '--add' actions\n"
"  '-b source' and '-F src_fmt' tell '--merge' actions to find the source\n"
"       bitmaps from an alternative file\n"
"\n"
"Parameters to check subcommand:\n"
"  '-r' tries to repair any inconsistencies that are found during the check.\n"
"       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all\n"
"       kinds of errors, with a higher risk of choosing the wrong fix or\n"
"       hiding corruption that has already occurred.\n"
"\n"
"Parameters to convert subcommand:\n"
"  '--bitmaps' copies all top-level persistent bitmaps to destination\n"
"  '-m' specifies how many coroutines work in parallel during the convert\n"
"       process (defaults to 8)\n"
"  '-W' allow to write to the target out of order rather than sequential\n"
"\n"
"Parameters to snapshot subcommand:\n"
"  'snapshot' is the name of the snapshot to create, apply or delete\n"
"  '-a' applies a snapshot (revert disk to saved state)\n"
"  '-c' creates a snapshot\n"
"  '-d' deletes a snapshot\n"
"  '-l' lists all snapshots in the given image\n"
"\n"
"Parameters to compare subcommand:\n"
"  '-f' first image format\n"
"  '-F' second image format\n"
"  '-s' run in Strict mode - fail on different image size or sector allocation\n"
"\n"
"Parameters to dd subcommand:\n"
"  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)\n"
"  'count=N' copy only N input blocks\n"
"  'if=FILE' read from FILE\n"
"  'of=FILE' write to FILE\n"
"  'skip=N' skip N bs-sized blocks at the start of input\n";

/* "Supported formats:" lists every driver name, formats and storages, in
 * the strcmp() order qemu-img sorts its driver list in (the library gives
 * them sorted). */
static void print_formats(void)
{
    printf("Supported formats:");
    for (size_t i = 0; i < qimg_format_count(); i++)
        printf(" %s", qimg_format_name_at(i));
    printf("\n");
}

int cli_help(void)
{
    cli_version();
    printf("usage: %s [standard options] command [command options]\n"
           "QEMU disk image utility\n\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
           "                         specify tracing options\n\n"
           "Command syntax:\n%s%s\n%s\n",
           cli_prog, help_syntax, cli_is_qemu_img() ? "" : help_syntax_qimg,
           help_params);
    print_formats();
    printf("\nSee <https://qemu.org/contribute/report-a-bug> for how to "
           "report bugs.\n"
           "More information on the QEMU project at <https://qemu.org>.\n");
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
    qimg_set_warning_handler(cli_print_library_message);
    if (argc >= 2 && !strcmp(argv[1], "--complete"))
        return cli_complete(argc - 2, argv + 2);
    if (argc < 2)
        return cli_usage_error("Not enough arguments");
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:hVT:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help();
        case 'V':
            print_version();
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
        if (!strcmp(cmd, commands[i].name) &&
            !(commands[i].qimg_only && cli_is_qemu_img())) {
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 0;   /* reset getopt for the subcommand */
            cli_untrusted_begin(cmd);
            return commands[i].run(sub_argc, sub_argv);
        }
    }
    return cli_usage_error("Command not found: %s", cmd);
}
