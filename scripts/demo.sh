#!/bin/sh
# make demo: a real end-to-end job on a sample image, printing each step:
# a raw disk becomes a compressed qcow2 image, gets a snapshot and an
# overlay, is written through the overlay, committed and checked, and the
# reference qemu-img checks the result when it is installed.
#   scripts/demo.sh [build-dir]
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
QIMG="$ROOT/$BUILD/qimg"
WORK=$(mktemp -d /tmp/qimg-demo.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

step() {
    printf '\n$ qimg %s\n' "$*"
    "$QIMG" "$@"
}

ref() {
    if command -v qemu-img >/dev/null 2>&1; then
        printf '\n$ qemu-img %s    # the reference\n' "$*"
        qemu-img "$@"
    fi
}

echo "qimg demo in $WORK"
step create -f raw disk.img 64M
echo
echo "# writing a boot sector and some scattered data into disk.img"
printf 'qimg demo boot sector' | dd of=disk.img conv=notrunc status=none
head -c 1048576 /dev/urandom | dd of=disk.img bs=1M seek=8 conv=notrunc status=none
yes 'compressible text' | head -c 2097152 | dd of=disk.img bs=1M seek=20 conv=notrunc status=none
printf 'tail data' | dd of=disk.img bs=1 seek=$((60 << 20)) conv=notrunc status=none
step info -f raw disk.img
step map -f raw disk.img

echo
echo "# a compressed qcow2 copy, written by both cores"
step convert -p -c -f raw -O qcow2 -o compression_type=zstd disk.img disk.qcow2
step compare -f raw -F qcow2 disk.img disk.qcow2
step snapshot -c before-update disk.qcow2
echo
echo "# a persistent dirty bitmap records what changes from now on"
step bitmap --add -g 64k disk.qcow2 since-snapshot
echo
echo "# the disk is updated elsewhere, as a raw file"
cp disk.img updated.img
printf 'updated boot sector!!' | dd of=updated.img conv=notrunc status=none
echo
echo "# an overlay on the updated disk, rebased onto the compressed image:"
echo "# it keeps only what differs, then is committed into it"
step create -f qcow2 -b updated.img -F raw overlay.qcow2
step rebase -b disk.qcow2 -F qcow2 overlay.qcow2
step check overlay.qcow2
step info --backing-chain overlay.qcow2
step commit overlay.qcow2
step compare -f raw -F qcow2 updated.img disk.qcow2
step check disk.qcow2
step info disk.qcow2
step measure -O qcow2 disk.qcow2
echo
echo "# a copy with its bitmaps, for an incremental backup elsewhere"
step convert --bitmaps -O qcow2 disk.qcow2 backup.qcow2
echo
echo "# the snapshot still holds the disk as it was before the update"
step snapshot -l disk.qcow2
step convert -f qcow2 -O raw -l before-update disk.qcow2 restored.img
step compare -f raw -F raw disk.img restored.img
ref check disk.qcow2
ref info backup.qcow2
ref compare -f raw -F qcow2 updated.img disk.qcow2
echo
echo "demo finished"
