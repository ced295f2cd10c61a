/*
 * cmd-rebase.c - qemu-img rebase (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_rebase(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("rebase");
}
