/*
 * cmd-dd.c - qemu-img dd (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_dd(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("dd");
}
