/*
 * cmd-bitmap.c - qemu-img bitmap (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_bitmap(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("bitmap");
}
