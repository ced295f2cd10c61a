/*
 * cmd-map.c - qemu-img map
 *
 * map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset]
 *     [--max-length=len] [--output=ofmt] [-U] filename
 * Exit status: 0 on success, 1 on any error.
 *
 * The image is walked through its backing chain one extent at a time;
 * neighbouring extents that describe the same thing (same layer, same
 * flags, same file, contiguous host offsets) are merged before printing, so
 * the listing does not depend on how the driver splits its answers.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Largest range asked of the library at once (qemu-img asks 1 GiB). */
#define MAP_CHUNK (UINT64_C(1) << 30)

struct map_args {
    struct cli_image_args img;  /* file name, -f, -U, --image-opts */
    int64_t start;
    int64_t max_length;     /* -1: to the end of the image */
    enum cli_output output;
};

/* One printed line: a run of guest bytes with the same status. */
struct map_entry {
    uint64_t start, length;
    unsigned flags;          /* QIMG_BS_* */
    uint64_t offset;         /* host offset, with QIMG_BS_OFFSET_VALID */
    const char *file;        /* borrowed from the image */
    int depth;
};

struct map_printer {
    enum cli_output output;
};

static bool same_file(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return !strcmp(a, b);
}

/* True when next continues cur so that one line can describe both. */
static bool can_merge(const struct map_entry *cur, const struct map_entry *next)
{
    const unsigned keys = QIMG_BS_DATA | QIMG_BS_ZERO | QIMG_BS_ALLOCATED |
                          QIMG_BS_OFFSET_VALID;

    if ((cur->flags & keys) != (next->flags & keys) ||
        cur->depth != next->depth || !same_file(cur->file, next->file))
        return false;
    if (cur->flags & QIMG_BS_OFFSET_VALID)
        return cur->offset + cur->length == next->offset;
    return true;
}

static const char *tf(bool b)
{
    return b ? "true" : "false";
}

/*
 * "[" is printed before the walk and each entry's separator as soon as the
 * next entry is known, as qemu-img does: an error part way leaves exactly
 * its output behind.
 */
static void print_json_entry(const struct map_entry *e, bool more)
{
    printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", "
           "\"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth,
           tf(e->flags & QIMG_BS_ALLOCATED), tf(e->flags & QIMG_BS_ZERO),
           tf(e->flags & QIMG_BS_DATA));
    if (e->flags & QIMG_BS_OFFSET_VALID)
        printf(", \"offset\": %" PRId64, (int64_t)e->offset);  /* QEMU: int64 */
    printf("}%s", more ? ",\n" : "");
}

/*
 * The human listing shows only extents holding data, with where they live;
 * data without a host offset (compressed, encrypted, external) cannot be
 * shown that way and ends the command.
 */
static int print_human_entry(const struct map_entry *e)
{
    if (!(e->flags & QIMG_BS_DATA))
        return 0;
    if (!(e->flags & QIMG_BS_OFFSET_VALID) || (e->flags & QIMG_BS_COMPRESSED)) {
        cli_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if (e->flags & QIMG_BS_ZERO)
        return 0;   /* allocated but reading as zero: not listed */
    printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
           e->length, e->offset, e->file ? e->file : "");
    return 0;
}

static int print_entry(struct map_printer *p, const struct map_entry *e,
                       bool more)
{
    if (p->output == CLI_OUTPUT_JSON) {
        print_json_entry(e, more);
        return 0;
    }
    return print_human_entry(e);
}

/* Walk [start, end) and print merged extents; returns the exit status. */
static int walk(struct qimg_image *img, uint64_t start, uint64_t end,
                struct map_printer *p)
{
    struct map_entry cur = {.start = start};
    struct qimg_error err = {0};
    uint64_t off = start;

    while (off < end) {
        struct qimg_extent ext;
        struct map_entry next;
        uint64_t want = end - off < MAP_CHUNK ? end - off : MAP_CHUNK;

        if (qimg_block_status_chain(img, NULL, off, want, &ext, &err) < 0) {
            cli_report(&err, "Could not read file metadata: ");
            return 1;
        }
        if (!ext.length)
            break;      /* the library found nothing more: stop cleanly */
        if (ext.length > want)
            ext.length = want;
        next = (struct map_entry){
            .start = off, .length = ext.length, .flags = ext.flags,
            .offset = ext.host_offset, .file = ext.host_file,
            .depth = ext.depth,
        };
        off += ext.length;
        if (cur.length && can_merge(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length && print_entry(p, &cur, true) < 0)
            return 1;
        cur = next;
    }
    /* The last run; with nothing mapped JSON still shows an empty entry. */
    if (print_entry(p, &cur, false) < 0)
        return 1;
    if (p->output == CLI_OUTPUT_JSON)
        printf("]\n");
    return 0;
}

static int run_map(const struct map_args *a)
{
    struct cli_open o = cli_image_args_open(&a->img, 0);
    struct map_printer p = {.output = a->output};
    struct qimg_image *img = cli_open_image(&o);
    uint64_t size, start = (uint64_t)a->start, end;
    int ret;

    if (!img)
        return 1;
    if (a->output == CLI_OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    else
        printf("[");
    /* Both values are at most INT64_MAX, so the sum cannot wrap. */
    size = qimg_image_size(img);
    end = a->max_length < 0 ? size : start + (uint64_t)a->max_length;
    if (end > size)
        end = size;
    ret = walk(img, start, end, &p);
    qimg_close(img);
    return ret;
}

int cmd_map(int argc, char **argv)
{
    enum { OPT_START = CLI_OPT_OWN, OPT_MAXLEN };
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_FORMAT, CLI_LONGOPT_OUTPUT,
        CLI_LONGOPT_OBJECT, CLI_LONGOPT_IMAGE_OPTS, CLI_LONGOPT_FORCE_SHARE,
        {"start-offset", required_argument, NULL, OPT_START},
        {"max-length", required_argument, NULL, OPT_MAXLEN},
        {NULL, 0, NULL, 0},
    };
    struct map_args a = {.output = CLI_OUTPUT_HUMAN, .max_length = -1};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_START:
            a.start = cli_cvtnum_full("start offset", optarg);
            if (a.start < 0)
                return 1;
            break;
        case OPT_MAXLEN:
            a.max_length = cli_cvtnum_full("max length", optarg);
            if (a.max_length < 0)
                return 1;
            break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    ret = cli_image_args_end(argc, argv, &a.img, &a.output);
    return ret != CLI_CONTINUE ? ret : run_map(&a);
}
