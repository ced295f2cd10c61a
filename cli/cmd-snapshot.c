/*
 * cmd-snapshot.c - qemu-img snapshot (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_snapshot(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("snapshot");
}
