#!/bin/sh
# make demo: a real end-to-end job on a sample image, printing each step.
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

echo "qimg demo in $WORK"
step create -f raw disk.img 64M
echo
echo "# writing a boot sector and some scattered data into disk.img"
printf 'qimg demo boot sector' | dd of=disk.img conv=notrunc status=none
head -c 1048576 /dev/urandom | dd of=disk.img bs=1M seek=8 conv=notrunc status=none
printf 'tail data' | dd of=disk.img bs=1 seek=$((60 << 20)) conv=notrunc status=none
step info disk.img
step info --output=json -f raw disk.img
step map -f raw disk.img
step convert -p -f raw -O raw disk.img copy.img
step compare -f raw -F raw disk.img copy.img
step map -f raw --output=json copy.img
step resize -f raw copy.img +16M
step compare -f raw -F raw disk.img copy.img
step measure -O raw -f raw disk.img
step check -f raw disk.img || echo "(raw images have no consistency checks: exit $?)"
if command -v qemu-img >/dev/null 2>&1; then
    printf '\n# cross-check with the reference qemu-img:\n'
    printf '$ qemu-img compare -f raw -F raw disk.img copy.img\n'
    qemu-img compare -f raw -F raw disk.img copy.img
fi
echo
echo "demo finished"
