/*
 * cmd-convert.c - qemu-img convert (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("convert");
}
