/*
 * cmd-resize.c - qemu-img resize (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_resize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("resize");
}
