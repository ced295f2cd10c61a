/*
 * cmd-amend.c - qemu-img amend (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_amend(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("amend");
}
