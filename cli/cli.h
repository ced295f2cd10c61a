/*
 * cli.h - helpers shared by the qimg subcommands: messages in qemu-img's
 * form, option parsing pieces, opening images, progress and JSON output.
 * Only the CLI prints; the library reports through struct qimg_error.
 */
#ifndef QIMG_CLI_H
#define QIMG_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "qimg.h"

/* Basename of argv[0]: "qemu-img" when run through such a link. */
extern const char *cli_prog;

/* "<prog>: message\n" on stderr (the message may hold more lines). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "<prog>: warning: message\n" on stderr. */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print an error and "Try '<prog> --help' ..."; returns exit status 1. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The library's warning handler (main installs it): "<prog>: warning: "
 * and the message as it comes. */
void cli_print_library_message(const char *msg, enum qimg_msg_kind kind);
/* Print the library error with an optional prefix. */
void cli_report(const struct qimg_error *err, const char *prefix_fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Full --help text; returns 0 after printing. */
int cli_help(void);
void cli_version(void);

/* Returned by the option helpers below when parsing goes on. */
#define CLI_CONTINUE (-1)
/*
 * The common getopt switch cases: prints the message for '?' (unknown) and
 * ':' (missing argument) as qemu-img does and returns 1.  Call for those.
 * An unknown long option that is one of qimg's own (untrusted mode, see
 * cli_untrusted_option) is handled instead: then CLI_CONTINUE, or 1 after
 * printing an error.
 */
int cli_bad_option(int c, char **argv);

/* ---- untrusted images (cli/untrusted.c) ----------------------------- */
#define CLI_NOT_OURS (-2)
/*
 * argv[optind - 1] is a long option getopt does not know: when it is
 * --untrusted, --allow-backing, --allow-data-file, --allow-extent or
 * --allow-file (exactly; "=PATH" or PATH as the next argument), act on
 * it: CLI_CONTINUE, or 1 after printing an error.  CLI_NOT_OURS otherwise.
 */
int cli_untrusted_option(char **argv);
/* For a command whose getopt reports bad options itself (measure): the
 * long options as table entries, and acting on one of them. */
enum {
    CLI_OPT_UNTRUSTED = 0x1000, CLI_OPT_ALLOW_BACKING, CLI_OPT_ALLOW_DATA_FILE,
    CLI_OPT_ALLOW_EXTENT, CLI_OPT_ALLOW_FILE,
};
#define CLI_LONGOPTS_UNTRUSTED                                               \
    {"untrusted", no_argument, NULL, CLI_OPT_UNTRUSTED},                     \
    {"allow-backing", required_argument, NULL, CLI_OPT_ALLOW_BACKING},       \
    {"allow-data-file", required_argument, NULL, CLI_OPT_ALLOW_DATA_FILE},   \
    {"allow-extent", required_argument, NULL, CLI_OPT_ALLOW_EXTENT},         \
    {"allow-file", required_argument, NULL, CLI_OPT_ALLOW_FILE}
int cli_untrusted_apply(int which, const char *arg);
/* The command is known (main): QIMG_UNTRUSTED from the environment, and
 * the process limits once the mode is on. */
void cli_untrusted_begin(const char *command);
bool cli_untrusted(void);

/*
 * Parse a number with size suffixes as qemu-img's cvtnum(): on error prints
 * "Invalid <name> specified..." and returns a negative errno.
 */
int64_t cli_cvtnum(const char *name, const char *value, int64_t min,
                   int64_t max);
int64_t cli_cvtnum_full(const char *name, const char *value);

/* Append an -o argument to *acc (comma-joined as qemu-img does). Returns
 * false after printing "Invalid option list" when it is malformed. */
bool cli_add_option_list(char **acc, const char *arg);
/* True when a -o list asks for help ("help" or "?" as an element). */
bool cli_has_help_option(const char *list);
/* An unknown "PROTO:" prefix in filename: print QEMU's error, false. */
bool cli_check_protocol(const char *filename);
/* Print option descriptors sorted by name, "  name=<type> - help". */
int cli_print_opt_list(const struct qimg_opt_desc **d, size_t n);
/* Print "-o help" for fmt (with filename: merged with the storage's). */
int cli_print_create_opts_help(const char *fmt, const char *filename);

/* --object (help printed, then exit 0). Returns 0 or 1 (exit status).  def
 * must be an argv element: a secret's data= is blanked in it. */
int cli_add_object(const char *def);

/* --output=human|json. Returns false after printing the error. */
enum cli_output { CLI_OUTPUT_HUMAN, CLI_OUTPUT_JSON };
bool cli_parse_output(const char *arg, enum cli_output *out);

/* Cache mode argument of -t/-T; prints "Invalid cache option: X". */
bool cli_parse_cache(const char *arg, enum qimg_cache *out);

struct cli_open {
    const char *filename;
    const char *fmt;
    bool image_opts;    /* filename is an option list (--image-opts) */
    unsigned flags;     /* QIMG_OPEN_* */
    enum qimg_cache cache;
    bool quiet;
    /* More options for the format with a plain file name (convert's new
     * target gets the key secrets of its -o list, as qemu-img's does). */
    const struct qimg_opts *extra;
    unsigned role;      /* a name an image records (qimg_open_params) */
    /* Open these options (dotted keys) instead of filename, which then
     * only names the image in messages; NULL: none. */
    const struct qimg_opts *options;
};
/* QEMU's warning for a writable image whose raw format was guessed. */
void cli_warn_probed_raw(const char *filename);
/* Open an image, printing "Could not open 'X': ..." on failure, and
 * QEMU's warning when raw was guessed for a writable image. */
struct qimg_image *cli_open_image(const struct cli_open *o);

/*
 * Show snapshot `param` (-l: "snapshot.id=ID,snapshot.name=NAME" or
 * "ID_OR_NAME") in a read-only image.  Prints "Failed to load snapshot: ..."
 * and returns false on failure.
 */
bool cli_load_snapshot(struct qimg_image *img, const char *param);

/* Progress as qemu-img -p prints it: "    (NN.NN/100%)\r". */
void cli_progress_init(bool enabled, double min_step);
void cli_progress_print(double percent);
/* After a failed operation: qemu-img prints 100%, the error, then ends
 * the progress line (call cli_progress_print(100) before the error). */
void cli_progress_end_after_error(void);
void cli_progress_end(void);
/*
 * --progress=json (JSON lines on stderr) or --progress=FD (on that open
 * descriptor), a qimg addition: one object per update with the bytes
 * done, the total, the percentage, the average rate and the elapsed time.
 * Prints the error and returns false for anything else.
 */
bool cli_parse_progress(const char *arg);
/* CLI_OPT_PROGRESS: without a value sets *bar (-p); otherwise as
 * cli_parse_progress.  Returns CLI_CONTINUE or the exit status 1. */
int cli_progress_option(const char *arg, bool *bar);
/* The byte count 100% stands for in JSON progress (image size, usually). */
void cli_progress_set_total(uint64_t bytes);
/* For commands that draw their own bar: a JSON line when the value moved
 * by a whole percent (cli_progress_print does this itself), and the
 * final 100% line (cli_progress_end does this itself). */
void cli_progress_json(double percent);
/* True when --progress=json|FD asked for JSON progress. */
bool cli_progress_json_on(void);
void cli_progress_json_end(void);

/* Print a size the way qemu-img's human output does ("1 GiB"). */
const char *cli_size_str(uint64_t size, char *buf, size_t len);

/* ---- JSON output in QEMU's pretty-printed style ---------------------- */
struct json_t;
/* Print a jansson value as QEMU's pretty JSON at the given indent level. */
void cli_json_print(FILE *out, const struct json_t *value, int level);
/* Print a jansson object the way QEMU's human "Format specific
 * information" does: "key: value" lines, '-' in keys shown as ' '. */
void cli_json_print_human(FILE *out, const struct json_t *value, int level);

/* Snapshot listings as qemu-img prints them (info, snapshot -l). */
void cli_print_snapshot_table(FILE *out, const struct qimg_snapshot *list,
                              size_t n);
struct json_t *cli_snapshots_json(const struct qimg_snapshot *list, size_t n);

/* ---- options the image commands share -------------------------------- */
/* getopt_long values of the shared long options; a command's own long
 * options start at CLI_OPT_OWN. */
enum { CLI_OPT_OUTPUT = 256, CLI_OPT_OBJECT, CLI_OPT_IMAGE_OPTS,
       CLI_OPT_PROGRESS, CLI_OPT_OWN };
#define CLI_LONGOPT_HELP {"help", no_argument, NULL, 'h'}
#define CLI_LONGOPT_FORMAT {"format", required_argument, NULL, 'f'}
#define CLI_LONGOPT_OUTPUT {"output", required_argument, NULL, CLI_OPT_OUTPUT}
#define CLI_LONGOPT_OBJECT {"object", required_argument, NULL, CLI_OPT_OBJECT}
#define CLI_LONGOPT_IMAGE_OPTS \
    {"image-opts", no_argument, NULL, CLI_OPT_IMAGE_OPTS}
#define CLI_LONGOPT_FORCE_SHARE {"force-share", no_argument, NULL, 'U'}
/* --progress (as -p, the long form newer qemu-img has) and --progress=json
 * or --progress=FD (qimg's machine-readable progress): qemu-img 7.2 has no
 * such option.  Handle CLI_OPT_PROGRESS with cli_progress_option(). */
#define CLI_LONGOPT_PROGRESS \
    {"progress", optional_argument, NULL, CLI_OPT_PROGRESS}

/* The values of the shared options and the one image file name. */
struct cli_image_args {
    const char *filename;
    const char *fmt;        /* -f */
    const char *output;     /* --output, checked by cli_image_args_end */
    bool image_opts;        /* --image-opts */
    bool force_share;       /* -U */
};
/*
 * One getopt_long result a command does not handle itself: -h, -f, -U,
 * --output, --object, --image-opts, else the unknown/missing-argument
 * error.  Returns CLI_CONTINUE or the exit status to end the command with.
 */
int cli_image_option(int c, char **argv, struct cli_image_args *a);
/*
 * After the options: exactly one file name must remain ("Expecting one
 * image file name" otherwise); then --output, when given and out is not
 * NULL, is parsed into *out.  Returns CLI_CONTINUE or an exit status.
 */
int cli_image_args_end(int argc, char **argv, struct cli_image_args *a,
                       enum cli_output *out);
/* The cli_open for the image they name: flags, plus QIMG_OPEN_SHARE for
 * -U; the caller adds the cache mode and quiet. */
struct cli_open cli_image_args_open(const struct cli_image_args *a,
                                    unsigned flags);

/* Each subcommand, argv[0] being its name. Returns the exit status. */
int cmd_amend(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_checksum(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_dd(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);

/* ---- shell completion (cli/complete.c) -------------------------------- */
/*
 * qimg --complete [--] WORD...: the candidates for the last WORD (the one
 * being typed; the words before it follow the program name), one per
 * line, from the command table, the help's syntax lines and the driver
 * tables.  The bash completion script calls it.  Returns 0.
 */
int cli_complete(int argc, char **argv);
/* The help's syntax line of cmd ("  cmd [...] ...\n"), or NULL. */
const char *cli_help_syntax(const char *cmd);
/* The command names, i from 0; NULL past the last. */
const char *cli_command_at(size_t i);

/* For commands a later issue implements. */
int cli_not_implemented(const char *name);

#endif /* QIMG_CLI_H */
