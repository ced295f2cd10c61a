#!/bin/sh
# Seeds for the qed, qcow and parallels fuzz targets (tests/fuzz), made
# with the reference qemu-img and qemu-io: small images with data,
# partial clusters, zero and compressed clusters, backing files (named
# "backing.img", which the targets register), both parallels signatures,
# and truncated copies.  Called by make-fuzz-seeds.sh.
#   scripts/make-fuzz-seeds-tables.sh OUTDIR
set -eu
OUT=${1:?usage: make-fuzz-seeds-tables.sh OUTDIR}
QEMU_IMG=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-/usr/bin/qemu-io}
mkdir -p "$OUT/qed" "$OUT/qcow" "$OUT/parallels"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

mk() {  # mk FMT NAME SIZE OPTIONS [qemu-io commands...]
    fmt=$1 name=$2 size=$3 opts=$4
    shift 4
    "$QEMU_IMG" create -q -f "$fmt" ${opts:+-o "$opts"} "$name" "$size"
    for c in "$@"; do
        "$QEMU_IO" -f "$fmt" -c "$c" "$name" >/dev/null 2>&1 || true
    done
    cp "$name" "$OUT/$fmt/"
    for n in 40 64 100 4096; do
        head -c "$n" "$name" >"$OUT/$fmt/$name.trunc$n"
    done
}
"$QEMU_IMG" create -q -f raw backing.img 64k

mk qed qed-4k 1M cluster_size=4k "write -P 1 0 12k" "write -z 64k 8k" \
    "write -P 2 100k 1k"
mk qed qed-t1 256k cluster_size=4k,table_size=2 "write -P 3 0 4k"
mk qed qed-backed 256k cluster_size=4k,backing_file=backing.img,backing_fmt=raw \
    "write -P 4 5k 1k"
mk qcow qcow-plain 1M "" "write -P 1 0 12k" "write -c -P 2 64k 4k" \
    "write -P 3 300k 512"
mk qcow qcow-backed 256k backing_file=backing.img,backing_fmt=raw \
    "write -P 4 5k 1k"
mk parallels par-4k 1M cluster_size=4k "write -P 1 0 12k" "write -P 2 512k 1k"
mk parallels par-1536 256k cluster_size=1536 "write -P 3 1000 3000"
# the other signature: offsets in sectors
cp "$OUT/parallels/par-4k" par-v1
printf 'WithoutFreeSpace' | dd of=par-v1 conv=notrunc status=none
cp par-v1 "$OUT/parallels/"
echo "table-format seeds in $OUT/{qed,qcow,parallels}"
