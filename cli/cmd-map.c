/*
 * cmd-map.c - qemu-img map (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_map(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("map");
}
