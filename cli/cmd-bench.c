/*
 * cmd-bench.c - qemu-img bench (not implemented yet; see the issue tracker).
 */
#include "cli.h"

int cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_not_implemented("bench");
}
