/*
 * cmd-check.c - qemu-img check (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("check");
}
