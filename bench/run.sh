#!/bin/bash
# bench/run.sh [--quick] [BUILD_DIR] - qimg against qemu-img, side by side.
#
# Generates deterministic inputs, runs every workload with qimg and with
# the reference BENCH_RUNS times (each tool first every other run), checks
# each result of qimg with the reference (qemu-img compare against the
# input, qemu-img check of qcow2 outputs, identical stdout and exit status
# for read-only commands), and prints the median wall time, CPU time (user
# + system) and peak RSS of each tool, the ratios of the wall times and of
# the CPU times, and the geometric means of those ratios (on a machine
# shared with other jobs the CPU ratio is the steadier one).  The copies
# are also timed against `cp --sparse=always` of the same data in the same
# run.  Growth workloads run check, map and compare of a sparse qcow2 at 1
# TiB and 16 TiB and info --backing-chain of chains 16 and 127 deep, and
# the report gives the growth factor (big/small) of each tool's time and
# RSS.  A wrong answer from qimg is a failure however fast it was: the run
# ends with a FAILED banner and exit status 1.
#
# The report (header, table, summary, growth) is printed and written to
# BENCH_OUT.txt, and bench/chart.py draws its ratios into BENCH_OUT.svg.
#
# --quick (or BENCH_QUICK=1): one or two workloads of every kind (copies,
# compression zlib and zstd, compare, check, map, info of a chain,
# measure, dd, commit, rebase, resize preallocation, snapshot -l, bitmap,
# growth) at 256 MiB on tmpfs: a few minutes.
#
# Environment (all optional):
#   QIMG=path            qimg binary (default BUILD_DIR/qimg)
#   QEMU_IMG=path        reference (default /usr/bin/qemu-img)
#   BENCH_DIR=dir        scratch directory (default /dev/shm/qimg-bench, on
#                        tmpfs as the issue's set-up, when /dev/shm has 16x
#                        the size free, else /tmp/qimg-bench;
#                        --quick: /dev/shm/qimg-bench-quick)
#   BENCH_SIZE=size      virtual size of the data images (default 1G;
#                        --quick: 256M)
#   BENCH_RUNS=n         runs of each tool per workload (default 3)
#   BENCH_GROW_RUNS=n    runs of the (short) growth workloads (default 5)
#   BENCH_KEEP=1         keep the scratch directory (and reuse its inputs
#                        on the next run with the same size and seed)
#   BENCH_SEED=n         seed of the generated content (default 1)
#   BENCH_ONLY=regex     only the workloads whose name matches
#   BENCH_SPARSE_WRITES=n  4 KiB writes into the 1 TiB image (default 4096)
#   BENCH_OUT=path       report prefix (default BUILD_DIR/bench-latest:
#                        .txt and .svg)
#   BENCH_COMMIT=text    what the report names as the code measured
#                        (default: git commit of BUILD_DIR's source tree)
#
# Times are wall-clock seconds of the whole process, measured around
# /usr/bin/time (which gives the peak RSS); the page cache is warm for both
# tools and `sync` runs before every timed command so that one tool's
# dirty pages are not written back on the other's time.
set -u

die() { echo "bench: $*" >&2; exit 2; }

QUICK=${BENCH_QUICK:-0}
ARGS=()
for a in "$@"; do
    case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $a (--quick, --help)" ;;
    *) ARGS+=("$a") ;;
    esac
done
[ ${#ARGS[@]} -le 1 ] || die "usage: bench/run.sh [--quick] [BUILD_DIR]"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ARGS[0]:-$ROOT/build}
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
QIMG=${QIMG:-$BUILD/qimg}
REF=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-/usr/bin/qemu-io}
if [ "$QUICK" = 1 ]; then
    DIR=${BENCH_DIR:-/dev/shm/qimg-bench-quick}
    SIZE_ARG=${BENCH_SIZE:-256M}
else
    SIZE_ARG=${BENCH_SIZE:-1G}
    # tmpfs keeps the disk's writeback out of the ratios (the copies
    # against cp, dd); fall back to /tmp when the inputs would not fit.
    DIR=${BENCH_DIR:-}
    if [ -z "$DIR" ]; then
        shm_free=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -1)
        want=$(( $(numfmt --from=iec "$SIZE_ARG" 2>/dev/null || echo 0) * 16 ))
        if [ -n "$shm_free" ] && [ "$want" -gt 0 ] && [ "$shm_free" -ge "$want" ]; then
            DIR=/dev/shm/qimg-bench
        else
            DIR=/tmp/qimg-bench
        fi
    fi
fi
RUNS=${BENCH_RUNS:-3}
GROW_RUNS=${BENCH_GROW_RUNS:-5}
KEEP=${BENCH_KEEP:-0}
SEED=${BENCH_SEED:-1}
ONLY=${BENCH_ONLY:-}
SPARSE_WRITES=${BENCH_SPARSE_WRITES:-4096}
OUT=${BENCH_OUT:-$BUILD/bench-latest}
SIZE=$(numfmt --from=iec "$SIZE_ARG") || exit 2
TIME=/usr/bin/time
MARK=.qimg-bench

for t in "$QIMG" "$REF" "$QEMU_IO" "$TIME" python3 numfmt; do
    command -v "$t" >/dev/null || die "missing $t (scripts/deps.sh test)"
done
[ "$SIZE" -ge $((64 << 20)) ] || die "BENCH_SIZE must be at least 64M"

# Refuse to wipe a directory that is not ours.
if [ -e "$DIR" ] && [ ! -e "$DIR/$MARK" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and is not a bench directory"
fi
mkdir -p "$DIR/in" "$DIR/work" && touch "$DIR/$MARK" || exit 2
mkdir -p "$(dirname "$OUT")" || exit 2
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
IN=$DIR/in
WORK=$DIR/work

# ---- inputs ---------------------------------------------------------------
#
# Each input file belongs to a generator (input_key); a generator runs in
# $IN the first time a selected workload names one of its files, and
# leaves a marker .ok-KEY.  The stamp ties the whole set to the size, the
# seed and this version of the generators.

qio() { "$QEMU_IO" -f qcow2 -t unsafe "$1" >/dev/null || die "qemu-io $1"; }

# Allocating writes: 4 KiB every 256 MiB of an empty 1 TiB image, 8 in
# flight, so that each allocates a data cluster and most an L2 table.
BENCH_W="bench -w -f qcow2 -c $SPARSE_WRITES -d 8 -s 4k -S 268435456"

# Clusters written into the growth images, spread evenly over the disk.
GROW_WRITES=64

input_key() {
    case "$1" in
    in.raw) echo raw ;;
    in.qcow2) echo qcow2 ;;
    in.vmdk|in-stream.vmdk|in.vhdx|in.vdi) echo others ;;
    late.qcow2) echo late ;;
    mid.qcow2|top.qcow2) echo chain3 ;;
    top.raw) echo topraw ;;
    sparse.qcow2) echo sparse ;;
    alloc.qcow2) echo alloc ;;
    ro.raw|in.dmg|in.cloop|in.qed) echo ro ;;
    chain*.qcow2) echo chain127 ;;
    g1T.qcow2|g1T-b.qcow2|g16T.qcow2|g16T-b.qcow2) echo growth ;;
    snap.qcow2) echo snap ;;
    bitmap.json) echo bitmap ;;
    in.luks) echo luks ;;
    *) return 1 ;;
    esac
}

# need FILE...: make sure the inputs exist.
need() {
    local f key
    for f; do
        key=$(input_key "$f") || die "no generator for input $f"
        [ -e "$IN/.ok-$key" ] && continue
        echo "bench: generating $key input"
        (cd "$IN" && "gen_$key") || die "generating the $key input failed"
        touch "$IN/.ok-$key"
    done
}

gen_raw() { python3 "$ROOT/bench/gen.py" raw in.raw "$SIZE" "$SEED"; }

gen_qcow2() {
    need in.raw
    "$REF" convert -f raw -O qcow2 in.raw in.qcow2
}

# The same content as vmdk (monolithicSparse and streamOptimized), vhdx
# and vdi.
gen_others() {
    need in.raw in.qcow2
    "$REF" convert -f qcow2 -O vmdk in.qcow2 in.vmdk &&
    "$REF" convert -f qcow2 -O vmdk -o subformat=streamOptimized in.qcow2 \
        in-stream.vmdk &&
    "$REF" convert -f raw -O vhdx in.raw in.vhdx &&
    "$REF" convert -f raw -O vdi in.raw in.vdi
}

# A late difference: one sector changed 1 MiB before the end.
gen_late() {
    need in.qcow2
    cp --sparse=always in.qcow2 late.qcow2 &&
    echo "write -P 0x5a $((SIZE - (1 << 20))) 512" | qio late.qcow2
}

# 3-layer chain: in.qcow2 <- mid.qcow2 <- top.qcow2, each overlay with
# scattered writes (about 6% and 1.5% of the size).
gen_chain3() {
    need in.qcow2
    "$REF" create -q -f qcow2 -b "$IN/in.qcow2" -F qcow2 mid.qcow2 "$SIZE" &&
    "$REF" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 "$SIZE" || return 1
    python3 "$ROOT/bench/gen.py" iocmds "$SIZE" $((SEED + 1)) \
        $((SIZE >> 23)) $((1 << 20)) | qio mid.qcow2
    python3 "$ROOT/bench/gen.py" iocmds "$SIZE" $((SEED + 2)) \
        $((SIZE >> 23)) $((256 << 10)) | qio top.qcow2
}

# The chain's content as a sparse raw file: what cp copies beside a
# flatten of the chain.
gen_topraw() {
    need top.qcow2
    "$REF" convert -f qcow2 -O raw top.qcow2 top.raw
}

# 1 TiB, sparse: small writes all over it (one L2 table each, mostly).
gen_sparse() {
    "$REF" create -q -f qcow2 sparse.qcow2 1T || return 1
    python3 "$ROOT/bench/gen.py" iocmds $((1 << 40)) $((SEED + 3)) \
        "$SPARSE_WRITES" 4096 | qio sparse.qcow2
}

# What the allocating-write workload must leave.
gen_alloc() {
    "$REF" create -q -f qcow2 alloc.qcow2 1T || return 1
    # shellcheck disable=SC2086
    "$REF" $BENCH_W alloc.qcow2 >/dev/null
}

# The read-only compressed formats: the first 512 MiB of in.raw (all of it
# when smaller) as a dmg (1 MiB zlib chunks, zero chunks for holes, as
# Apple's tools make them), a cloop (64 KiB blocks, create_compressed_fs)
# and a qed.
gen_ro() {
    need in.raw
    command -v create_compressed_fs >/dev/null ||
        { echo "bench: missing create_compressed_fs (cloop-utils)" >&2; return 1; }
    head -c $((512 << 20)) in.raw >ro.raw &&
    python3 -c "import sys; sys.path.insert(0, '$ROOT/tests');
import dmggen; dmggen.dmg_from_raw('ro.raw', 'in.dmg')" &&
    create_compressed_fs -q -B 65536 ro.raw in.cloop >/dev/null 2>&1 &&
    "$REF" convert -f raw -O qed ro.raw in.qed
}

# A chain of 127 small layers (qemu-img 7.2's depth limit for qcow2
# chains it opens): per-node memory and start-up of long chains;
# chain15.qcow2 is the top of the first 16.
gen_chain127() {
    local i
    "$REF" create -q -f qcow2 chain0.qcow2 1G || return 1
    for i in $(seq 1 126); do
        "$REF" create -q -f qcow2 -b chain$((i - 1)).qcow2 -F qcow2 \
            chain$i.qcow2 || return 1
    done
}

# Growth: empty 1 TiB and 16 TiB qcow2 with the same GROW_WRITES clusters
# of data spread evenly over each, and a copy of each for compare.
gen_growth() {
    local size i
    for size in 1T 16T; do
        "$REF" create -q -f qcow2 g$size.qcow2 $size || return 1
        for ((i = 0; i < GROW_WRITES; i++)); do
            echo "write -P $((i + 1)) $((i * ($(numfmt --from=iec $size) / GROW_WRITES) + (123 << 16))) 64k"
        done | qio g$size.qcow2
        cp --sparse=always g$size.qcow2 g$size-b.qcow2 || return 1
    done
}

# 16 internal snapshots of the data image (for snapshot -l).
gen_snap() {
    local i
    need in.qcow2
    cp --sparse=always in.qcow2 snap.qcow2 || return 1
    for i in $(seq 1 16); do
        "$REF" snapshot -c "snap$i" snap.qcow2 || return 1
    done
}

# The persistent bitmaps that the reference's `bitmap --add` leaves in a
# copy of g1T.qcow2 (what qimg's must match).
gen_bitmap() {
    need g1T.qcow2
    cp --sparse=always g1T.qcow2 bm.qcow2 &&
    "$REF" bitmap --add -g 64k bm.qcow2 bm0 &&
    bitmaps_of bm.qcow2 >bitmap.json && rm -f bm.qcow2
}

# The luks input: in.raw encrypted with the default cipher
# (aes-256-xts-plain64), a short iter-time so that the unlock costs
# little beside the copy.
LUKS_SECRET="--object secret,id=s0,data=bench"
gen_luks() {
    need in.raw
    # shellcheck disable=SC2086
    "$REF" convert $LUKS_SECRET -f raw -O luks \
        -o key-secret=s0,iter-time=10 in.raw in.luks
}

# ---- measuring ------------------------------------------------------------

# timed TOOL ARGS...: run in $WORK; sets RC, SECS, CPU (user + system
# seconds), RSS (KiB); output in $WORK/.out and $WORK/.err.
timed() {
    local t0 t1
    sync
    t0=$EPOCHREALTIME
    (cd "$WORK" && exec "$TIME" -f '%e %M %U %S' -o "$WORK/.time" "$@" \
        >"$WORK/.out" 2>"$WORK/.err")
    RC=$?
    t1=$EPOCHREALTIME
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    RSS=$(awk 'END { print $2 }' "$WORK/.time")
    CPU=$(awk 'END { printf "%.2f", $3 + $4 }' "$WORK/.time")
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ratio A B [MIN]: A/B with two decimals, "-" when B is below MIN
# (default 0.001) or either is "-".
ratio() {
    awk -v a="$1" -v b="$2" -v m="${3:-0.001}" 'BEGIN {
        if (a == "-" || b == "-" || b + 0 < m + 0) print "-"; else printf "%.2f", a / b }'
}

FAILS=()
fail() {
    FAILS+=("$1: $2")
    printf '\n!!!!! FAIL %s: %s\n' "$1" "$2" >&2
    sed 's/^/!!!!!   /' "$WORK/.why" >&2 2>/dev/null
}

# ---- verification of one qimg result -----------------------------------

# same_content FMT_A A FMT_B B: the reference sees equal content.
same_content() {
    if ! (cd "$WORK" && "$REF" compare -f "$1" -F "$3" "$2" "$4") \
        >"$WORK/.why" 2>&1; then
        fail "$NAME" "content of $4 differs from $2"
        return 1
    fi
}

# same_range RAW SKIP COUNT OUT: OUT holds RAW's 64 KiB blocks SKIP up to
# COUNT (qemu-img dd counts COUNT from the start of the input).
same_range() {
    if ! head -c $(($3 * 65536)) "$1" | tail -c $((($3 - $2) * 65536)) |
        cmp - "$WORK/$4" >"$WORK/.why" 2>&1; then
        fail "$NAME" "$4 is not blocks $2..$3 of $1"
        return 1
    fi
}

# qcow2_ok FILE: the reference finds no problem in FILE (any format with
# a check: qcow2, vmdk).
qcow2_ok() {
    if ! (cd "$WORK" && "$REF" check "$1") >"$WORK/.why" 2>&1; then
        fail "$NAME" "qemu-img check $1 failed"
        return 1
    fi
}

# luks_same RAW LUKS: the reference reads RAW's content from LUKS.
luks_same() {
    # shellcheck disable=SC2086
    if ! (cd "$WORK" && "$REF" compare $LUKS_SECRET -f raw "$1" \
        "json:{\"driver\": \"luks\", \"key-secret\": \"s0\", \"file\": {\"driver\": \"file\", \"filename\": \"$2\"}}") \
        >"$WORK/.why" 2>&1; then
        fail "$NAME" "content of $2 differs from $1"
        return 1
    fi
}

# bitmaps_of FILE: the persistent bitmaps the reference's info lists.
bitmaps_of() {
    "$REF" info --output=json "$1" | python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin)["format-specific"]["data"].get("bitmaps")))'
}

# same_bitmaps FILE EXPECTED: FILE has the bitmaps of EXPECTED (a
# bitmaps_of output).
same_bitmaps() {
    if ! (cd "$WORK" && bitmaps_of "$1" | cmp - "$2") >"$WORK/.why" 2>&1; then
        fail "$NAME" "bitmaps of $1 are not the reference's"
        return 1
    fi
}

# ---- workloads ------------------------------------------------------------
#
# Each workload is: NAME|PREP|ARGS|VERIFY[|CP], run in $WORK, @IN@ standing
# for the input directory.  PREP (shell, untimed) runs before every run of
# either tool; VERIFY (shell) checks what qimg left.  For read-only
# commands VERIFY is "same", comparing stdout and exit status with the
# reference's.  CP, for the workloads that copy a whole disk, is the raw
# file holding the same data: each run also times `cp --sparse=always` of
# it, and the table gives qimg's time over cp's.  CP "full:FILE" times
# `dd bs=1M` of FILE instead (a copy writing every block, zeroes included):
# qemu-img 7.2's dd writes every block of its output (fully allocated:
# `stat` blocks and `map` say so), and qimg's must too, so cp's skipping of
# the zero blocks is not the same work.
WORKLOADS=(
"convert raw->qcow2|rm -f out.qcow2|convert -f raw -O qcow2 @IN@/in.raw out.qcow2|same_content raw @IN@/in.raw qcow2 out.qcow2 && qcow2_ok out.qcow2|@IN@/in.raw"
"convert qcow2->raw|rm -f out.raw|convert -f qcow2 -O raw @IN@/in.qcow2 out.raw|same_content qcow2 @IN@/in.qcow2 raw out.raw|@IN@/in.raw"
"convert qed->raw 512M|rm -f out.raw|convert -f qed -O raw @IN@/in.qed out.raw|same_content qed @IN@/in.qed raw out.raw"
"convert -c zlib|rm -f out.qcow2|convert -c -f qcow2 -O qcow2 @IN@/in.qcow2 out.qcow2|same_content qcow2 @IN@/in.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert -c zstd|rm -f out.qcow2|convert -c -f qcow2 -O qcow2 -o compression_type=zstd @IN@/in.qcow2 out.qcow2|same_content qcow2 @IN@/in.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert vhdx->qcow2|rm -f out.qcow2|convert -f vhdx -O qcow2 @IN@/in.vhdx out.qcow2|same_content raw @IN@/in.raw qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert qcow2->vpc fixed|rm -f out.vhd|convert -f qcow2 -O vpc -o subformat=fixed @IN@/in.qcow2 out.vhd|same_content qcow2 @IN@/in.qcow2 vpc out.vhd"
"convert vdi->raw|rm -f out.raw|convert -f vdi -O raw @IN@/in.vdi out.raw|same_content vdi @IN@/in.vdi raw out.raw"
"convert chain flatten|rm -f out.qcow2|convert -f qcow2 -O qcow2 @IN@/top.qcow2 out.qcow2|same_content qcow2 @IN@/top.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2|@IN@/top.raw"
"compare identical|:|compare -f qcow2 -F raw @IN@/in.qcow2 @IN@/in.raw|same"
"compare late diff|:|compare -f qcow2 -F qcow2 @IN@/in.qcow2 @IN@/late.qcow2|same"
"check 1T sparse|:|check @IN@/sparse.qcow2|same"
"map json 1T sparse|:|map --output=json @IN@/sparse.qcow2|same"
"bench -w 1T alloc|rm -f b.qcow2 && \$REF create -q -f qcow2 b.qcow2 1T|@BENCH_W@ b.qcow2|same_content qcow2 @IN@/alloc.qcow2 qcow2 b.qcow2 && qcow2_ok b.qcow2"
"info chain|:|info --backing-chain @IN@/top.qcow2|same"
"measure|:|measure -O qcow2 -f raw @IN@/in.raw|same"
"dd qcow2->raw|rm -f out.raw|dd -f qcow2 -O raw bs=1M if=@IN@/in.qcow2 of=out.raw|same_content qcow2 @IN@/in.qcow2 raw out.raw|full:@IN@/in.raw"
"convert dmg->raw|rm -f out.raw|convert -f dmg -O raw @IN@/in.dmg out.raw|same_content raw @IN@/ro.raw raw out.raw"
"convert cloop->raw|rm -f out.raw|convert -f cloop -O raw @IN@/in.cloop out.raw|same_content raw @IN@/ro.raw raw out.raw"
"commit|cp --sparse=always @IN@/mid.qcow2 @IN@/top.qcow2 .|commit -f qcow2 top.qcow2|same_content qcow2 @IN@/top.qcow2 qcow2 mid.qcow2 && same_content qcow2 @IN@/top.qcow2 qcow2 top.qcow2 && qcow2_ok mid.qcow2"
"rebase|cp --sparse=always @IN@/mid.qcow2 @IN@/top.qcow2 .|rebase -f qcow2 -b @IN@/in.qcow2 -F qcow2 top.qcow2|same_content qcow2 @IN@/top.qcow2 qcow2 top.qcow2 && qcow2_ok top.qcow2"
"convert vmdk->qcow2|rm -f out.qcow2|convert -f vmdk -O qcow2 @IN@/in.vmdk out.qcow2|same_content vmdk @IN@/in.vmdk qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert qcow2->vmdk|rm -f out.vmdk|convert -f qcow2 -O vmdk @IN@/in.qcow2 out.vmdk|same_content qcow2 @IN@/in.qcow2 vmdk out.vmdk && qcow2_ok out.vmdk"
"convert stream->qcow2|rm -f out.qcow2|convert -f vmdk -O qcow2 @IN@/in-stream.vmdk out.qcow2|same_content vmdk @IN@/in-stream.vmdk qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert raw->luks|rm -f out.luks|convert @LUKS@ -f raw -O luks -o key-secret=s0,iter-time=10 @IN@/in.raw out.luks|luks_same @IN@/in.raw out.luks"
"convert luks->raw|rm -f out.raw|convert @LUKS@ --image-opts driver=luks,file.filename=@IN@/in.luks,key-secret=s0 -O raw out.raw|same_content raw @IN@/in.raw raw out.raw"
"convert qcow2->stream|rm -f out.vmdk|convert -f qcow2 -O vmdk -o subformat=streamOptimized @IN@/in.qcow2 out.vmdk|same_content qcow2 @IN@/in.qcow2 vmdk out.vmdk && qcow2_ok out.vmdk"
"dd byte range|rm -f out.raw|dd -f qcow2 -O raw bs=64k skip=100 count=900 if=@IN@/in.qcow2 of=out.raw|same_range @IN@/in.raw 100 900 out.raw"
"resize prealloc full|rm -f r.qcow2 && \$REF create -q -f qcow2 r.qcow2 64M|resize --preallocation=full r.qcow2 +448M|qcow2_ok r.qcow2"
"snapshot -l|:|snapshot -l @IN@/snap.qcow2|same"
"bitmap --add|cp --sparse=always @IN@/g1T.qcow2 b.qcow2|bitmap --add -g 64k b.qcow2 bm0|same_bitmaps b.qcow2 @IN@/bitmap.json && qcow2_ok b.qcow2"
"map chain 127|:|map --output=json @IN@/chain126.qcow2|same"
"convert chain 127|rm -f out.raw|convert -f qcow2 -O raw @IN@/chain126.qcow2 out.raw|same_content qcow2 @IN@/chain126.qcow2 raw out.raw"
"grow check 1T|:|check @IN@/g1T.qcow2|same"
"grow check 16T|:|check @IN@/g16T.qcow2|same"
"grow map 1T|:|map --output=json @IN@/g1T.qcow2|same"
"grow map 16T|:|map --output=json @IN@/g16T.qcow2|same"
"grow compare 1T|:|compare -f qcow2 -F qcow2 @IN@/g1T.qcow2 @IN@/g1T-b.qcow2|same"
"grow compare 16T|:|compare -f qcow2 -F qcow2 @IN@/g16T.qcow2 @IN@/g16T-b.qcow2|same"
"grow info chain 16|:|info --backing-chain @IN@/chain15.qcow2|same"
"grow info chain 127|:|info --backing-chain @IN@/chain126.qcow2|same"
)

# Growth pairs: LABEL|SMALL|BIG (workload names).
GROWTH=(
"check sparse 1T->16T|grow check 1T|grow check 16T"
"map sparse 1T->16T|grow map 1T|grow map 16T"
"compare sparse 1T->16T|grow compare 1T|grow compare 16T"
"info --backing-chain 16->127|grow info chain 16|grow info chain 127"
)

# The --quick set: every kind of workload once or twice.
QUICK_SET="^(convert raw->qcow2|convert qcow2->raw|convert chain flatten|dd qcow2->raw|convert -c zlib|convert -c zstd|compare identical|compare late diff|check 1T sparse|map json 1T sparse|info chain|measure|dd byte range|commit|rebase|resize prealloc full|snapshot -l|bitmap --add|map chain 127|grow .*)$"

selected() {
    [ "$QUICK" = 1 ] && ! [[ $1 =~ $QUICK_SET ]] && return 1
    [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]
}

RESULTS=()
declare -A T_Q T_R M_Q M_R
run_workload() {
    local name=$1 prep=$2 args=$3 verify=$4 cpsrc=$5 i runs=$RUNS
    local -a qt=() rt=() qm=() rs=() qc=() rc=() ct=()
    local ref_out ref_rc q_out q_rc ok=1
    prep=${prep//@IN@/$IN}
    args=${args//@IN@/$IN}
    args=${args//@BENCH_W@/$BENCH_W}
    args=${args//@LUKS@/$LUKS_SECRET}
    verify=${verify//@IN@/$IN}
    cpsrc=${cpsrc//@IN@/$IN}
    [[ $name == grow\ * ]] && runs=$GROW_RUNS
    printf 'bench: %-24s' "$name"
    for ((i = 0; i < runs; i++)); do
        # Alternate which tool goes first, so that a load that rises or
        # falls during the workload (or a cache one run warms for the
        # next) does not always favour the same one.
        local order=(ref qimg) tool
        ((i % 2)) && order=(qimg ref)
        for tool in "${order[@]}"; do
            (cd "$WORK" && eval "$prep") || die "$name: prep failed"
            if [ "$tool" = ref ]; then
                # shellcheck disable=SC2086
                timed "$REF" $args
                rt+=("$SECS") rs+=("$RSS") rc+=("$CPU")
                ref_out=$(cat "$WORK/.out")
                ref_rc=$RC
                if [ "$verify" != same ] && [ "$RC" != 0 ]; then
                    cp "$WORK/.err" "$WORK/.why"
                    fail "$name" "the reference failed (rc=$RC): broken bench input"
                    ok=0
                fi
                continue
            fi
            # shellcheck disable=SC2086
            timed "$QIMG" $args
            qt+=("$SECS") qm+=("$RSS") qc+=("$CPU")
            q_out=$(cat "$WORK/.out")
            q_rc=$RC
            # What qimg wrote is checked now, before the next prep.
            if [ "$verify" = same ]; then
                :
            elif [ "$RC" != 0 ]; then
                cp "$WORK/.err" "$WORK/.why"
                fail "$name" "qimg failed (rc=$RC)"
                ok=0
            else
                NAME=$name
                eval "$verify" || ok=0
            fi
        done
        printf ' %s/%s' "${qt[-1]}" "${rt[-1]}"
        if [ "$verify" = same ] && { [ "$q_rc" != "$ref_rc" ] || [ "$q_out" != "$ref_out" ]; }; then
            { echo "rc $q_rc (qemu-img: $ref_rc)"
              diff <(echo "$ref_out") <(echo "$q_out") | head -8; } >"$WORK/.why"
            fail "$name" "output differs from qemu-img's"
            ok=0
        fi
        # The copy bound, in the same moment: cp of the same data.
        if [ -n "$cpsrc" ]; then
            rm -f "$WORK/cp.raw"
            if [ "${cpsrc#full:}" != "$cpsrc" ]; then
                timed dd if="${cpsrc#full:}" of=cp.raw bs=1M status=none
            else
                timed cp --sparse=always "$cpsrc" cp.raw
            fi
            ct+=("$SECS")
            rm -f "$WORK/cp.raw"
        fi
    done
    echo
    local q r qr rr qcpu rcpu cp=-
    q=$(printf '%s\n' "${qt[@]}" | median)
    r=$(printf '%s\n' "${rt[@]}" | median)
    qr=$(printf '%s\n' "${qm[@]}" | median)
    rr=$(printf '%s\n' "${rs[@]}" | median)
    qcpu=$(printf '%s\n' "${qc[@]}" | median)
    rcpu=$(printf '%s\n' "${rc[@]}" | median)
    [ ${#ct[@]} -gt 0 ] && cp=$(printf '%s\n' "${ct[@]}" | median)
    # The growth table takes the fastest run of each tool: for commands
    # of a few tens of ms on a shared machine, the least disturbed one.
    T_Q[$name]=$(printf '%s\n' "${qt[@]}" | sort -g | head -1)
    T_R[$name]=$(printf '%s\n' "${rt[@]}" | sort -g | head -1)
    M_Q[$name]=$qr M_R[$name]=$rr
    RESULTS+=("$name|$q|$r|$qcpu|$rcpu|$qr|$rr|$cp|$([ $ok = 1 ] && echo ok || echo FAILED)")
}

# ---- the run --------------------------------------------------------------

SELECTED=()
for w in "${WORKLOADS[@]}"; do
    IFS='|' read -r name _ <<<"$w"
    selected "$name" && SELECTED+=("$w")
done
[ ${#SELECTED[@]} -gt 0 ] || die "no workload selected (BENCH_ONLY=$ONLY)"

STAMP="size=$SIZE seed=$SEED sparse=$SPARSE_WRITES grow=$GROW_WRITES v6"
if [ "$(cat "$IN/stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "${IN:?}"/* "$IN"/.ok-*
    echo "$STAMP" >"$IN/stamp"
fi
SECONDS=0
# shellcheck disable=SC2207
NEEDED=($(printf '%s\n' "${SELECTED[@]}" | grep -o '@IN@/[A-Za-z0-9._-]*' |
    sed 's|@IN@/||' | sort -u))
need "${NEEDED[@]}"
INPUT_SECS=$SECONDS
echo "bench: qimg=$QIMG reference=$REF runs=$RUNS (growth $GROW_RUNS) size=$SIZE inputs ${INPUT_SECS}s"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
DATE0=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for w in "${SELECTED[@]}"; do
    IFS='|' read -r name prep args verify cpsrc <<<"$w"
    rm -rf "${WORK:?}"/* "$WORK"/.[!.]*
    run_workload "$name" "$prep" "$args" "$verify" "${cpsrc:-}"
done
rm -rf "${WORK:?}"/*
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_SECS=$SECONDS

# ---- report ---------------------------------------------------------------

# What was measured: the commit of the build's source tree.
build_source() {
    python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["directories"]["source"])' \
        "$BUILD/meson-info/meson-info.json" 2>/dev/null || echo "$ROOT"
}
build_type() {
    python3 -c 'import json, sys
print(next(o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "buildtype"))' \
        "$BUILD/meson-info/intro-buildoptions.json" 2>/dev/null || echo unknown
}
commit_of() {
    local src dirty=""
    src=$(build_source)
    git -C "$src" diff --quiet HEAD -- 2>/dev/null || dirty=" + uncommitted changes"
    echo "$(git -C "$src" rev-parse --abbrev-ref HEAD 2>/dev/null) $(git -C "$src" log -1 --format='%h (%s)' 2>/dev/null)$dirty"
}
COMMIT=${BENCH_COMMIT:-$(commit_of)}
BUILDTYPE=$(build_type)
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, scratch on $(df -T "$DIR" | awk 'NR == 2 { print $2 }')"

is_copy_set() { [ "$1" != - ]; }

report() {
    echo "qimg bench $([ "$QUICK" = 1 ] && echo "--quick ")$DATE0"
    echo "commit: $COMMIT"
    echo "build: $BUILD (meson buildtype $BUILDTYPE)"
    echo "machine: $MACHINE"
    echo "size $(numfmt --to=iec "$SIZE"), median of $RUNS runs (growth rows: $GROW_RUNS)${ONLY:+, BENCH_ONLY=$ONLY}; inputs ${INPUT_SECS} s, whole run ${TOTAL_SECS} s"
    echo "load average (1, 5, 15 min): $LOAD0 before, $LOAD1 after"
    if awk -v l="${LOAD0%% *}" -v m="${LOAD1%% *}" -v n="$(nproc)" \
        'BEGIN { exit !(l > n / 2 || m > n / 2) }'; then
        echo "WARNING: the machine was busy (shared with other jobs): wall times are noisy, CPU seconds less so"
    fi
    echo
    echo "| workload | qimg s | qemu-img s | ratio | cp s | qimg/cp | qimg CPU s | qemu-img CPU s | CPU ratio | qimg MiB | qemu-img MiB | RSS ratio | result |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    local r name q rf qc rc qm rs cp res
    for r in "${RESULTS[@]}"; do
        IFS='|' read -r name q rf qc rc qm rs cp res <<<"$r"
        # CPU times below 20 ms are mostly process start-up: no ratio, and
        # a zero (under 5 ms) would make the geometric mean zero.
        local cr=-
        awk -v a="$qc" 'BEGIN { exit !(a >= 0.005) }' && cr=$(ratio "$qc" "$rc" 0.02)
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s |\n' \
            "$name" "$q" "$rf" "$(ratio "$q" "$rf")" "$cp" "$(ratio "$q" "$cp")" \
            "$qc" "$rc" "$cr" "$(awk -v k="$qm" 'BEGIN { print k / 1024 }')" \
            "$(awk -v k="$rs" 'BEGIN { print k / 1024 }')" "$(ratio "$qm" "$rs" 1)" "$res"
    done
    echo
    printf '%s\n' "${RESULTS[@]}" | awk -F'|' '
        function ratio(a, b) { return b < 0.001 ? a / 0.001 : a / b }
        { t = ratio($2, $3); s += log(t); n++
          if (t > worst) { worst = t; wname = $1 }
          if (t > 0.8) over = over sprintf("%s%s %.2f", over ? ", " : "", $1, t)
          if ($4 >= 0.005 && $5 >= 0.02) { c += log($4 / $5); m++ }
          if ($7 > 0) { r = $6 / $7; if (r > wr) { wr = r; wrname = $1 }
                        if (r > 0.8) rover = rover sprintf("%s%s %.2f", rover ? ", " : "", $1, r) }
          if ($8 != "-") { cpr = ratio($2, $8); cps = cps sprintf("%s%s %.2f", cps ? ", " : "", $1, cpr)
                           if (cpr > cpw) { cpw = cpr; cpwname = $1 } }
          if ($1 == "convert -c zstd") zstd = t }
        END {
          printf "geometric mean of the time ratios (qimg/qemu-img): %.2f over %d workloads (target 0.45)\n", exp(s / n), n
          if (m) printf "geometric mean of the CPU time ratios: %.2f over %d workloads (CPU time of 20 ms or more)\n", exp(c / m), m
          printf "worst time ratio: %.2f (%s) (target: none above 0.8)\n", worst, wname
          printf "worst peak RSS ratio: %.2f (%s) (target 0.8)\n", wr, wrname
          printf "time ratio above 0.8: %s\n", over ? over : "none"
          printf "RSS ratio above 0.8: %s\n", rover ? rover : "none"
          if (cps) printf "copies, qimg time / cp --sparse=always of the same data (dd: / GNU dd bs=1M, which writes the zeroes as 7.2 dd does) (target 1.5): %s; worst %.2f (%s)\n", cps, cpw, cpwname
          if (zstd) printf "convert -c zstd time ratio: %.2f (target 0.35)\n", zstd }'
    growth_report
}

# Growth of each tool from the small to the big input of each pair (the
# fastest run's time, the median RSS), and
# whether qimg's grows no faster than qemu-img's: "yes" when its factor
# is at most qemu-img's; "yes (abs)" when the factor is larger but the
# absolute increase is not (a short command whose small-input time is
# mostly start-up: qimg's smaller start makes any increase a larger
# factor), increases below 5 ms and 256 KiB counting as equal (noise of
# process start and page accounting: the peak RSS of one short command
# spreads over 100-240 KiB from run to run on the bench machine, so a
# median of 5 moves by more than 64 KiB); "NO" otherwise.
growth_report() {
    local g label small big shown=0
    for g in "${GROWTH[@]}"; do
        IFS='|' read -r label small big <<<"$g"
        [ -n "${T_Q[$small]:-}" ] && [ -n "${T_Q[$big]:-}" ] || continue
        if [ $shown = 0 ]; then
            echo
            echo "| growth | qemu-img s (fastest) | qimg s (fastest) | qemu-img time x | qimg time x | qimg time grows no faster | qemu-img MiB | qimg MiB | qemu-img RSS x | qimg RSS x | qimg RSS grows no faster |"
            echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
            shown=1
        fi
        awk -v l="$label" -v rs="${T_R[$small]}" -v rb="${T_R[$big]}" \
            -v qs="${T_Q[$small]}" -v qb="${T_Q[$big]}" \
            -v ms="${M_R[$small]}" -v mb="${M_R[$big]}" \
            -v ns="${M_Q[$small]}" -v nb="${M_Q[$big]}" '
            function f(b, s) { return s > 0 ? b / s : 0 }
            function verdict(qs, qb, rs, rb, floor) {
                if (f(qb, qs) <= f(rb, rs)) return "yes"
                d = rb - rs; if (d < floor) d = floor
                return (qb - qs <= d) ? "yes (abs)" : "NO" }
            BEGIN {
                printf "| %s | %.3f -> %.3f | %.3f -> %.3f | %.2f | %.2f | %s | %.1f -> %.1f | %.1f -> %.1f | %.2f | %.2f | %s |\n",
                    l, rs, rb, qs, qb, f(rb, rs), f(qb, qs), verdict(qs, qb, rs, rb, 0.005),
                    ms / 1024, mb / 1024, ns / 1024, nb / 1024, f(mb, ms), f(nb, ns),
                    verdict(ns, nb, ms, mb, 256) }'
    done
}

# The summary in one line, for the chart.
summary_note() {
    awk '/^geometric mean of the time ratios/ { g = $(NF - 5) }
         /^geometric mean of the CPU/ { c = $8 }
         /^worst time ratio/ { sub(/ \(target.*/, ""); w = $0 }
         /^worst peak RSS ratio/ { sub(/ \(target.*/, ""); r = $0 }
         END { printf "geometric mean of the time ratios %s, of the CPU ratios %s; %s; %s\n", g, c, w, r }' "$1"
}

report | tee "$OUT.txt"
python3 "$ROOT/bench/chart.py" "$OUT.txt" "$OUT.svg" \
    --title "qimg / qemu-img 7.2: time and peak RSS ratios (lower is better)$([ "$QUICK" = 1 ] && echo ", --quick")" \
    --note "commit ${COMMIT%% (*}${COMMIT##*)}, meson buildtype $BUILDTYPE, $DATE0" \
    --note "$MACHINE; size $(numfmt --to=iec "$SIZE"), median of $RUNS; load average $LOAD0 before, $LOAD1 after" \
    --note "$(summary_note "$OUT.txt")" &&
    echo "bench: report in $OUT.txt, chart in $OUT.svg"

if [ ${#FAILS[@]} -gt 0 ]; then
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!!!! FAILED: qimg gave wrong results (${#FAILS[@]}):"
    printf '!!!!!   %s\n' "${FAILS[@]}"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    exit 1
fi
exit 0
