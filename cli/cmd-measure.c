/*
 * cmd-measure.c - qemu-img measure (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_measure(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("measure");
}
