/*
 * cmd-snapshot.c - qemu-img snapshot
 *
 * snapshot [--object objectdef] [--image-opts] [-U] [-q]
 *          [-l | -a snapshot | -c snapshot | -d snapshot] filename
 * Exit status: 0 on success, 1 on any error.
 * -l lists the image's internal snapshots, -c creates one, -a applies
 * (reverts to) one, -d deletes one (by ID or name).
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum snapshot_action { ACTION_NONE, ACTION_LIST, ACTION_APPLY, ACTION_CREATE,
                       ACTION_DELETE };

int cmd_snapshot(int argc, char **argv)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        /* long forms added by newer qemu-img (10.1) */
        {"list", no_argument, NULL, 'l'},
        {"apply", required_argument, NULL, 'a'},
        {"create", required_argument, NULL, 'c'},
        {"delete", required_argument, NULL, 'd'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    enum snapshot_action action = ACTION_NONE;
    const char *name = NULL;
    struct cli_open o = {0};
    struct qimg_snapshot *list = NULL;
    struct qimg_image *img;
    size_t n = 0;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":la:c:d:hqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': return cli_help();
        case 'l': case 'a': case 'c': case 'd': {
            enum snapshot_action next = c == 'l' ? ACTION_LIST
                                      : c == 'a' ? ACTION_APPLY
                                      : c == 'c' ? ACTION_CREATE : ACTION_DELETE;
            if (action != ACTION_NONE)
                return cli_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            action = next;
            name = optarg;
            break;
        }
        case 'q': o.quiet = true; break;
        case 'U': o.flags |= QIMG_OPEN_SHARE; break;
        case OPT_OBJECT:
            if (cli_add_object(optarg))
                return 1;
            break;
        case OPT_IMAGE_OPTS: o.image_opts = true; break;
        default:
            if ((ret = cli_bad_option(c, argv)) != CLI_CONTINUE)
                return ret;
            break;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    o.filename = argv[optind];
    /* only -l opens read-only: no action at all opens the image for
     * writing too (QEMU's default), and does nothing with it */
    if (action != ACTION_LIST)
        o.flags |= QIMG_OPEN_RDWR;
    img = cli_open_image(&o);
    if (!img)
        return 1;
    ret = 0;
    if (action == ACTION_LIST) {
        /* Formats without snapshots list nothing, as qemu-img does. */
        if (qimg_snapshot_list(img, &list, &n, NULL) == 0 && n) {
            printf("Snapshot list:\n");
            cli_print_snapshot_table(stdout, list, n);
        }
    } else if (action != ACTION_NONE) {
        static const char *const verb[] = {
            [ACTION_APPLY] = "apply", [ACTION_CREATE] = "create",
            [ACTION_DELETE] = "delete",
        };
        enum qimg_snapshot_op op = action == ACTION_CREATE ? QIMG_SNAPSHOT_CREATE
                                 : action == ACTION_APPLY ? QIMG_SNAPSHOT_APPLY
                                                          : QIMG_SNAPSHOT_DELETE;
        struct qimg_error err = {0};
        /* Applying on a guessed raw image reopens it in QEMU, which warns
         * a second time. */
        if (op == QIMG_SNAPSHOT_APPLY && qimg_image_probed_raw(img))
            cli_warn_probed_raw(qimg_image_storage_name(img));
        if (qimg_snapshot_change(img, op, name, &err) < 0) {
            /* qemu-img reports a failed create by its errno alone. */
            if (op == QIMG_SNAPSHOT_CREATE)
                cli_error("Could not create snapshot '%s': %d (%s)", name,
                          err.code, strerror(-err.code));
            else
                cli_error("Could not %s snapshot '%s': %s", verb[action], name,
                          err.msg);
            ret = 1;
        }
    }
    free(list);
    qimg_close(img);
    return ret;
}
