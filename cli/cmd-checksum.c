/*
 * cmd-checksum.c - qimg checksum (a qimg command; qemu-img has none)
 *
 * checksum [--object objectdef] [--image-opts] [-f fmt] [-a alg[/block]]
 *          [-T src_cache] [-U] [-p] [--progress=json|FD] filename
 * Prints "DIGEST  filename" as sha256sum and blksum do.
 * Exit status: 0 on success, 1 on any error.
 *
 * The digest is the blkhash construction of the guest content (see
 * lib/checksum/checksum.c), so it is the same for every format and
 * sparseness of one disk, and equals nbdcopy --blkhash's for the same
 * algorithm and block size.  "-a help" lists the algorithms.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct checksum_args {
    struct cli_image_args img;
    const char *alg;
    const char *cache;
    bool progress;
};

static void on_progress(void *opaque, double percent)
{
    (void)opaque;
    cli_progress_print(percent);
}

static int list_algorithms(void)
{
    printf("Supported algorithms (ALG or ALG/BLOCK_SIZE, default sha256/64k):\n");
    for (size_t i = 0; qimg_checksum_algorithm_at(i); i++)
        printf("  %s\n", qimg_checksum_algorithm_at(i));
    return 0;
}

static int do_checksum(const struct checksum_args *a)
{
    struct cli_open o = cli_image_args_open(&a->img, 0);
    struct qimg_checksum_params p = {.progress = on_progress};
    struct qimg_error err = {0};
    unsigned char md[QIMG_CHECKSUM_MAX_DIGEST];
    size_t len = 0;
    struct qimg_image *img;
    int ret = 1;

    if (qimg_checksum_parse(a->alg, &p, &err) < 0) {
        cli_report(&err, NULL);
        return 1;
    }
    if (!cli_parse_cache(a->cache, &o.cache)) {
        cli_error("Invalid source cache option: %s", a->cache);
        return 1;
    }
    img = cli_open_image(&o);
    if (!img)
        return 1;
    p.img = img;
    cli_progress_set_total(qimg_image_size(img));
    cli_progress_init(a->progress, 1.0);
    if (qimg_checksum(&p, md, &len, &err) < 0) {
        cli_progress_end();
        cli_report(&err, NULL);
        goto out;
    }
    cli_progress_end();
    for (size_t i = 0; i < len; i++)
        printf("%02x", md[i]);
    printf("  %s\n", a->img.filename);
    ret = 0;
out:
    qimg_close(img);
    return ret;
}

int cmd_checksum(int argc, char **argv)
{
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_FORMAT, CLI_LONGOPT_OBJECT,
        CLI_LONGOPT_IMAGE_OPTS, CLI_LONGOPT_FORCE_SHARE, CLI_LONGOPT_PROGRESS,
        {"algorithm", required_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    struct checksum_args a = {.alg = "sha256", .cache = "writeback"};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":a:f:hT:Up", longopts, NULL)) != -1) {
        switch (c) {
        case 'a': a.alg = optarg; break;
        case 'T': a.cache = optarg; break;
        case 'p': a.progress = true; break;
        case CLI_OPT_PROGRESS:
            if ((ret = cli_progress_option(optarg, &a.progress)) != CLI_CONTINUE)
                return ret;
            break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    if (!strcmp(a.alg, "help") || !strcmp(a.alg, "?"))
        return list_algorithms();
    ret = cli_image_args_end(argc, argv, &a.img, NULL);
    if (ret != CLI_CONTINUE)
        return ret;
    return do_checksum(&a);
}
