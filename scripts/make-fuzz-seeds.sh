#!/bin/sh
# Seed corpora for the fuzz targets (tests/fuzz), made with the reference
# qemu-img and qemu-io: valid small images covering every qcow2 feature,
# plus raw windows, option strings, sizes and json: filenames.
#   scripts/make-fuzz-seeds.sh OUTDIR
# Writes OUTDIR/<target>/ for each target.  Seeds are generated at fuzz
# time and never committed; files above MAX_SEED bytes are dropped (large
# inputs slow the fuzzer down).  Images name their backing file
# "backing.img" and data file "data.img": the names the fuzz targets
# register in memory (tests/fuzz/fuzz-common.h).
set -eu
OUT=${1:?usage: make-fuzz-seeds.sh OUTDIR}
QEMU_IMG=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-/usr/bin/qemu-io}
MAX_SEED=${MAX_SEED:-524288}
ulimit -c 0
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

img() {   # img NAME SIZE CREATE-OPTIONS [qemu-io commands...]
    name=$1 size=$2 opts=$3
    shift 3
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$name.qcow2" "$size"
    for c in "$@"; do
        "$QEMU_IO" -f qcow2 -c "$c" "$name.qcow2" >/dev/null
    done
}
writes() {  # writes CLUSTER: data, partial cluster, compressed, zero, discard
    cs=$1
    echo "write -P 0x11 0 4k"
    echo "write -P 0x22 70k 1k"
    echo "write -c -P 0x33 $((cs * 40)) $cs"
    echo "write -z 256k 64k"
    echo "write -P 0x44 320k 4k"
    echo "discard 320k 4k"
}
img_mix() {   # img_mix NAME SIZE CLUSTER OPTIONS
    name=$1 size=$2 cs=$3 opts=$4
    "$QEMU_IMG" create -q -f qcow2 -o "cluster_size=$cs${opts:+,$opts}" \
        "$name.qcow2" "$size"
    writes "$cs" | while read -r c; do
        "$QEMU_IO" -f qcow2 -c "$c" "$name.qcow2" >/dev/null 2>&1 || true
    done
}

# Cluster sizes and refcount widths.
for cs in 512 1024 4096 65536; do
    img_mix "cs$cs" 1M "$cs" ""
done
for rb in 1 2 4 8 16 32 64; do
    img_mix "rb$rb" 1M 4096 "refcount_bits=$rb"
done
img_mix v2 1M 4096 "compat=0.10"
img_mix v2-512 1M 512 "compat=0.10"
img_mix zstd 1M 4096 "compression_type=zstd"
img_mix extl2 1M 16384 "extended_l2=on"
img extl2-sub 1M "cluster_size=16k,extended_l2=on" \
    "write -P 1 0 512" "write -P 2 5k 1k" "write -z 8k 512" \
    "write -c -P 3 32k 16k"
img_mix extl2-zstd 1M 32768 "extended_l2=on,compression_type=zstd"
img empty 1M "cluster_size=4k"
img big-virtual 64G "cluster_size=32k" "write -P 5 32G 4k"
img prealloc 256k "cluster_size=4k,preallocation=metadata"
img lazy 1M "cluster_size=4k,lazy_refcounts=on" "write -P 6 0 8k"
# A dirty image: lazy refcounts and an abort before the bit is cleared.
img dirty 1M "cluster_size=4k,lazy_refcounts=on"
"$QEMU_IO" -f qcow2 -c "write -P 7 0 8k" -c abort dirty.qcow2 \
    >/dev/null 2>&1 || true

# Snapshots, bitmaps.
img_mix snap 1M 4096 ""
"$QEMU_IMG" snapshot -c one snap.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 8 0 8k" snap.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c two snap.qcow2
img_mix snap-v2 1M 4096 "compat=0.10"
"$QEMU_IMG" snapshot -c old snap-v2.qcow2
img_mix bitmaps 1M 4096 ""
"$QEMU_IMG" bitmap --add bitmaps.qcow2 b0
"$QEMU_IMG" bitmap --add -g 64k --disable bitmaps.qcow2 b1
"$QEMU_IMG" bitmap --add bitmaps.qcow2 b2

# Backing file and external data file, under the names the targets know.
"$QEMU_IMG" create -q -f raw backing.img 64k
img backed 1M "cluster_size=4k,backing_file=backing.img,backing_fmt=raw" \
    "write -P 9 4k 4k"
"$QEMU_IMG" create -q -f qcow2 -u -b backing.img -F qcow2 \
    -o cluster_size=4k backed-qcow2.qcow2 1M
img datafile 1M "cluster_size=4k,data_file=data.img" "write -P 10 0 8k"
img datafile-raw 1M "cluster_size=4k,data_file=data.img,data_file_raw=on" \
    "write -P 11 0 8k"

keep() {  # keep DIR FILE...: copy files no larger than MAX_SEED
    dir=$OUT/$1
    shift
    mkdir -p "$dir"
    for f in "$@"; do
        if [ "$(stat -c %s "$f")" -le "$MAX_SEED" ]; then
            cp "$f" "$dir/"
        fi
    done
}
# Truncated copies: short inputs reach the header checks (a 104-byte
# file whose header says 112 bytes once read past its buffer).
for n in 72 100 104 108 112 200 4096; do
    head -c "$n" cs4096.qcow2 >"trunc$n.qcow2"
done
keep qcow2 ./*.qcow2
head -c 65536 /dev/urandom >random.raw
printf 'QFI' >short.raw
: >empty.raw
keep probe ./*.qcow2 random.raw short.raw empty.raw

# The read-only formats: dmg from the test generator (every chunk type,
# XML and resource fork), bochs from bximage, cloop from
# create_compressed_fs (when installed).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/dmg" "$OUT/bochs" "$OUT/cloop"
python3 - "$OUT/dmg" "$ROOT/tests" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from dmggen import build_dmg, pattern
out = sys.argv[1]
build_dmg(out + "/xml.dmg", [[("zlib", pattern(64)), ("zero", 32),
                              ("raw", pattern(8, 2)), ("ignore", 8),
                              ("comment",), ("bzip2", pattern(16, 3)),
                              ("lzfse", 4, b"x" * 9), ("end",)]])
build_dmg(out + "/rsrc.dmg", [[("zlib", pattern(16))],
                              [("raw", pattern(2)), ("zero", 100)]],
          xml=False)
build_dmg(out + "/odd.dmg", [[("raw", pattern(1))]], tail_pad=77)
PY
if command -v bximage >/dev/null; then
    bximage -q -func=create -hd=10M -imgmode=growing new.bochs >/dev/null
    { head -c 8192 /dev/urandom; head -c 200000 /dev/zero;
      head -c 3000 /dev/urandom; } >flat.raw
    truncate -s 1M flat.raw
    bximage -q -func=convert -imgmode=growing flat.raw data.bochs >/dev/null
    keep bochs new.bochs data.bochs
fi
if command -v create_compressed_fs >/dev/null; then
    { head -c 70000 /dev/urandom; head -c 100000 /dev/zero; } >c.raw
    create_compressed_fs -q -B 16384 c.raw c.cloop >/dev/null 2>&1
    create_compressed_fs -q -B 512 -L 0 c.raw c0.cloop >/dev/null 2>&1
    keep cloop c.cloop c0.cloop
fi

# vpc and vdi: each subformat, empty and written (a partial last block
# included), small enough to be seeds; truncated copies.
other() {   # other FMT NAME SIZE OPTIONS [qemu-io commands...]
    fmt=$1 name=$2 size=$3 opts=$4
    shift 4
    "$QEMU_IMG" create -q -f "$fmt" ${opts:+-o "$opts"} "$name.$fmt" "$size"
    for c in "$@"; do
        "$QEMU_IO" -f "$fmt" -c "$c" "$name.$fmt" >/dev/null
    done
}
other vpc dyn-empty 64M ""
other vpc dyn 5M "" "write -P 1 0 4k" "write -P 2 2M 3k" "write -P 3 5000k 4k"
other vpc dyn-force 3M "force_size" "write -P 4 1M 512"
other vpc fixed 256k "subformat=fixed" "write -P 5 4k 4k"
other vpc fixed-force 128k "subformat=fixed,force_size"
other vdi dyn-empty 64M ""
other vdi dyn 3M "" "write -P 1 0 4k" "write -P 2 1M 3k" "write -P 3 2500k 4k"
other vdi odd 1500k "" "write -P 4 1400k 4k"
other vdi static 256k "static=on" "write -P 5 4k 4k"
for n in 100 511 512 600 1024 1536 2048; do
    head -c "$n" dyn.vpc >"trunc$n.vpc"
    head -c "$n" dyn.vdi >"trunc$n.vdi"
done
keep vpc ./*.vpc
keep vdi ./*.vdi

# raw: an option line, then the file.
mkdir -p "$OUT/raw"
i=0
for o in "" "offset=512" "size=1024" "offset=512,size=512" "offset=1k,size=2k" \
         "offset=0x200,size=1k" "size=0" "offset=65536" "offset=3,size=5"; do
    { printf '%s\n' "$o"; head -c 4096 /dev/urandom; } >"$OUT/raw/seed$i"
    i=$((i + 1))
done

# opts: a selector byte (1: implied key "size"), then the string.
mkdir -p "$OUT/opts"
i=0
for o in "\001size=1G,cluster_size=64k" "\0001M" "\001help" "\000a=b,,c,d=e" \
         "\000lazy_refcounts=on,refcount_bits=16,compat=1.1" \
         "\002preallocation=metadata,extended_l2=off" \
         "\000backing_file=x,,y,backing_fmt=qcow2,encrypt.format=luks"; do
    printf "$o" >"$OUT/opts/seed$i"
    i=$((i + 1))
done

# size
mkdir -p "$OUT/size"
i=0
for s in 0 512 1.5G 64k 0x200 0x10k 16E 18446744073709551615 1e3 \
         " 1k" 1.0000001T 8EiB -1 9999999999999999999999 1.k; do
    printf '%s' "$s" >"$OUT/size/seed$i"
    i=$((i + 1))
done

# json: filenames (without the "json:" prefix).
mkdir -p "$OUT/json"
i=0
for j in '{"driver":"qcow2","file":{"driver":"file","filename":"fuzz.img"}}' \
         '{"file.filename":"fuzz.img"}' \
         '{"driver":"raw","file":{"filename":"raw.img"},"offset":1,"size":1}' \
         '{"driver":"qcow2","file.filename":"fuzz.img","backing":null}' \
         '{"a":[1,2,{"b":true}],"c":1.5e300,"d":"\u00e9"}' \
         '{"driver":"qcow2","file":{"filename":"fuzz.img"},"l2-cache-size":65536}'; do
    printf '%s' "$j" >"$OUT/json/seed$i"
    i=$((i + 1))
done
# vmdk: small images of every subformat, written by the reference; for
# vmdk-desc, a descriptor (two bytes of length first) and its extent.
mkdir -p "$OUT/vmdk" "$OUT/vmdk-desc"
for sub in monolithicSparse streamOptimized twoGbMaxExtentSparse \
           monolithicFlat; do
    "$QEMU_IMG" create -q -f qcow2 vsrc.qcow2 1M
    "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 70k" -c "write -P 0x22 512k 4k" \
        vsrc.qcow2 >/dev/null
    "$QEMU_IMG" convert -O vmdk -o "subformat=$sub" vsrc.qcow2 "v-$sub.vmdk"
done
"$QEMU_IMG" create -q -f vmdk -o zeroed_grain=on v-zg.vmdk 1M
"$QEMU_IO" -f vmdk -c "write -P 1 0 4k" -c "write -z 64k 64k" v-zg.vmdk >/dev/null
keep vmdk v-monolithicSparse.vmdk v-streamOptimized.vmdk v-zg.vmdk \
    v-monolithicFlat.vmdk
# vmdk-stream: the same, sent down a pipe (the forward layout qimg writes
# to pipes is in tests/fuzz/regressions/vmdk-stream)
keep vmdk-stream v-streamOptimized.vmdk v-monolithicSparse.vmdk
desc_seed() {  # desc_seed NAME DESCRIPTOR-FILE EXTENT-FILE
    len=$(stat -c %s "$2")
    { printf "\\$(printf %03o $((len & 255)))\\$(printf %03o $((len >> 8)))"
      cat "$2" "$3"; } >"$OUT/vmdk-desc/$1"
}
sed 's/v-twoGbMaxExtentSparse-s001.vmdk/extent.vmdk/' \
    v-twoGbMaxExtentSparse.vmdk >d1.txt
desc_seed sparse d1.txt v-twoGbMaxExtentSparse-s001.vmdk
sed 's/v-monolithicFlat-flat.vmdk/extent.vmdk/' v-monolithicFlat.vmdk >d2.txt
head -c 65536 v-monolithicFlat-flat.vmdk >e2.raw
desc_seed flat d2.txt e2.raw
desc_seed stream d1.txt v-streamOptimized.vmdk
# vhdx: compact images in the fuzz-vhdx input layout.
QEMU_IMG=$QEMU_IMG QEMU_IO=$QEMU_IO python3 "$SCRIPTS/../tests/fuzz/make-vhdx-seeds.py" "$OUT/vhdx"
"$SCRIPTS/make-fuzz-seeds-tables.sh" "$OUT"
echo "seeds in $OUT: $(find "$OUT" -type f | wc -l) files"
