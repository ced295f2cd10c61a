#!/bin/sh
# bench/nbd-floor.sh RAWFILE URI [INFLIGHT] [CHUNK] - how fast the NBD
# server at URI takes convert -n RAWFILE URI's requests from a client that
# does nothing else (data in memory, one thread): the floor of the
# "to" rows of bench/net.sh (docs/PERFORMANCE.md).  NBD_FLOOR_READ=1: the
# client reads each request from the file first.  Needs libnbd-dev.
set -eu
here=$(dirname "$0")
out=${TMPDIR:-/tmp}/qimg-nbd-floor
cc -O2 -o "$out" "$here/nbd-floor.c" $(pkg-config --cflags --libs libnbd)
"$out" "$@"
