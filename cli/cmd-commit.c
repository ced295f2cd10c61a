/*
 * cmd-commit.c - qemu-img commit (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_commit(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("commit");
}
