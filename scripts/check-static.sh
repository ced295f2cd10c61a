#!/bin/sh
# Check a -Dstatic=true qimg: no dynamic section at all (ldd says so), and
# it works: create, convert and checksum an image, the digest matching
# between formats.
set -eu
qimg=$(realpath "$1")
if ldd "$qimg" >/dev/null 2>&1; then
    echo "check-static: $qimg is dynamically linked:" >&2
    ldd "$qimg" >&2
    exit 1
fi
if readelf -d "$qimg" | grep -q NEEDED; then
    echo "check-static: $qimg needs shared libraries" >&2; exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
head -c 3M /dev/urandom > a.raw
truncate -s 8M a.raw
"$qimg" convert -f raw -O qcow2 a.raw a.qcow2
raw=$("$qimg" checksum -f raw a.raw | cut -d' ' -f1)
qcow2=$("$qimg" checksum a.qcow2 | cut -d' ' -f1)
test "$raw" = "$qcow2" || { echo "check-static: digests differ" >&2; exit 1; }
"$qimg" --version
echo "check-static: $qimg is static and works"
