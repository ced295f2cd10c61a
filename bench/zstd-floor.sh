#!/bin/sh
# bench/zstd-floor.sh RAWFILE [CLUSTER] - libzstd's own CPU time for the
# clusters of RAWFILE at QEMU's level, one thread, no I/O: the floor of
# convert -c -o compression_type=zstd (docs/PERFORMANCE.md).  Needs
# libzstd-dev (a build dependency already).
set -eu
here=$(dirname "$0")
out=${TMPDIR:-/tmp}/qimg-zstd-floor
cc -O2 -o "$out" "$here/zstd-floor.c" $(pkg-config --cflags --libs libzstd)
"$out" "$@"
