/*
 * cmd-compare.c - qemu-img compare (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_compare(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("compare");
}
