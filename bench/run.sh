#!/bin/bash
# bench/run.sh [BUILD_DIR] - qimg against qemu-img, side by side.
#
# Generates deterministic inputs, runs every workload with qimg and with the
# reference alternately BENCH_RUNS times, checks each result of qimg with
# the reference (qemu-img compare against the input, qemu-img check of
# qcow2 outputs, identical stdout and exit status for read-only commands),
# and prints the median wall time, CPU time (user + system) and peak RSS of
# each tool, the ratios of the wall times and of the CPU times, and the
# geometric means of those ratios (on a machine shared with other jobs the
# CPU ratio is the steadier one).  A wrong answer from qimg
# is a failure however fast it was: the run ends with a FAILED banner and
# exit status 1.
#
# Environment (all optional):
#   QIMG=path            qimg binary (default BUILD_DIR/qimg)
#   QEMU_IMG=path        reference (default /usr/bin/qemu-img)
#   BENCH_DIR=dir        scratch directory (default /tmp/qimg-bench)
#   BENCH_SIZE=size      virtual size of the data images (default 1G;
#                        BENCH_SIZE=4G is the size of the issue)
#   BENCH_RUNS=n         runs of each tool per workload (default 3)
#   BENCH_KEEP=1         keep the scratch directory (and reuse its inputs
#                        on the next run with the same size and seed)
#   BENCH_SEED=n         seed of the generated content (default 1)
#   BENCH_ONLY=regex     only the workloads whose name matches
#   BENCH_SPARSE_WRITES=n  4 KiB writes into the 1 TiB image (default 4096)
#
# Times are wall-clock seconds of the whole process, measured around
# /usr/bin/time (which gives the peak RSS); the page cache is warm for both
# tools and `sync` runs before every timed command so that one tool's
# dirty pages are not written back on the other's time.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
QIMG=${QIMG:-$BUILD/qimg}
REF=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-/usr/bin/qemu-io}
DIR=${BENCH_DIR:-/tmp/qimg-bench}
RUNS=${BENCH_RUNS:-3}
KEEP=${BENCH_KEEP:-0}
SEED=${BENCH_SEED:-1}
ONLY=${BENCH_ONLY:-}
SPARSE_WRITES=${BENCH_SPARSE_WRITES:-4096}
SIZE=$(numfmt --from=iec "${BENCH_SIZE:-1G}") || exit 2
TIME=/usr/bin/time
MARK=.qimg-bench

die() { echo "bench: $*" >&2; exit 2; }

for t in "$QIMG" "$REF" "$QEMU_IO" "$TIME" python3 numfmt create_compressed_fs; do
    command -v "$t" >/dev/null || die "missing $t (scripts/deps.sh test)"
done
[ "$SIZE" -ge $((64 << 20)) ] || die "BENCH_SIZE must be at least 64M"

# Refuse to wipe a directory that is not ours.
if [ -e "$DIR" ] && [ ! -e "$DIR/$MARK" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and is not a bench directory"
fi
mkdir -p "$DIR/in" "$DIR/work" && touch "$DIR/$MARK" || exit 2
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
IN=$DIR/in
WORK=$DIR/work

# ---- inputs ---------------------------------------------------------------

qio() { "$QEMU_IO" -f qcow2 -t unsafe "$1" >/dev/null || die "qemu-io $1"; }

make_inputs() {
    local stamp="size=$SIZE seed=$SEED sparse=$SPARSE_WRITES v5 vmdk chain qed"
    if [ "$(cat "$IN/stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "bench: reusing inputs in $IN"
        return
    fi
    rm -rf "${IN:?}"/* && cd "$IN" || exit 2
    echo "bench: generating inputs in $IN ($stamp)"
    python3 "$ROOT/bench/gen.py" raw in.raw "$SIZE" "$SEED" || die "gen.py"
    "$REF" convert -f raw -O qcow2 in.raw in.qcow2 || die "qcow2 input"
    # The same content as vmdk: monolithicSparse and streamOptimized.
    "$REF" convert -f qcow2 -O vmdk in.qcow2 in.vmdk || die "vmdk input"
    "$REF" convert -f qcow2 -O vmdk -o subformat=streamOptimized in.qcow2 \
        in-stream.vmdk || die "stream input"
    "$REF" convert -f raw -O vhdx in.raw in.vhdx || die "vhdx input"
    "$REF" convert -f raw -O vdi in.raw in.vdi || die "vdi input"
    # A late difference: one sector changed 1 MiB before the end.
    cp --sparse=always in.qcow2 late.qcow2
    echo "write -P 0x5a $((SIZE - (1 << 20))) 512" | qio late.qcow2
    # 3-layer chain: in.qcow2 <- mid.qcow2 <- top.qcow2, each overlay with
    # scattered writes (about 6% and 1.5% of the size).
    "$REF" create -q -f qcow2 -b "$IN/in.qcow2" -F qcow2 mid.qcow2 "$SIZE"
    "$REF" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 "$SIZE"
    python3 "$ROOT/bench/gen.py" iocmds "$SIZE" $((SEED + 1)) \
        $((SIZE >> 23)) $((1 << 20)) | qio mid.qcow2
    python3 "$ROOT/bench/gen.py" iocmds "$SIZE" $((SEED + 2)) \
        $((SIZE >> 23)) $((256 << 10)) | qio top.qcow2
    # 1 TiB, sparse: small writes all over it (one L2 table each, mostly).
    "$REF" create -q -f qcow2 sparse.qcow2 1T
    python3 "$ROOT/bench/gen.py" iocmds $((1 << 40)) $((SEED + 3)) \
        "$SPARSE_WRITES" 4096 | qio sparse.qcow2
    # What the allocating-write workload must leave (see WORKLOADS).
    "$REF" create -q -f qcow2 alloc.qcow2 1T
    # shellcheck disable=SC2086
    "$REF" $BENCH_W alloc.qcow2 >/dev/null || die "bench -w"
    # The read-only compressed formats: the first 512 MiB of in.raw as a
    # dmg (1 MiB zlib chunks, zero chunks for holes, as Apple's tools make
    # them) and as a cloop (64 KiB blocks, create_compressed_fs).
    head -c $((512 << 20)) in.raw >ro.raw
    python3 -c "import sys; sys.path.insert(0, '$ROOT/tests');
import dmggen; dmggen.dmg_from_raw('ro.raw', 'in.dmg')" || die "dmg input"
    create_compressed_fs -q -B 65536 ro.raw in.cloop >/dev/null 2>&1 ||
        die "cloop input (cloop-utils)"
    # qed (issue 16's 512 MiB): the same first 512 MiB.
    "$REF" convert -f raw -O qed ro.raw in.qed || die "qed input"
    # A chain of 127 small layers (qemu-img 7.2's depth limit for qcow2
    # chains it opens): per-node memory and start-up of long chains.
    "$REF" create -q -f qcow2 chain0.qcow2 1G
    for i in $(seq 1 126); do
        "$REF" create -q -f qcow2 -b chain$((i - 1)).qcow2 -F qcow2 \
            chain$i.qcow2 || die "chain input"
    done
    echo "$stamp" >stamp
    cd "$ROOT" || exit 2
}

# The luks input (made apart from the others so that an existing set of
# inputs is reused): in.raw encrypted with the default cipher
# (aes-256-xts-plain64), a short iter-time so that the unlock costs
# little beside the copy.
LUKS_SECRET="--object secret,id=s0,data=bench"
make_luks_input() {
    [ -s "$IN/in.luks" ] && return
    (cd "$IN" && "$REF" convert $LUKS_SECRET -f raw -O luks \
        -o key-secret=s0,iter-time=10 in.raw in.luks) || die "luks input"
}

# luks_same RAW LUKS: the reference reads RAW's content from LUKS.
luks_same() {
    if ! (cd "$WORK" && "$REF" compare $LUKS_SECRET -f raw "$1" \
        "json:{\"driver\": \"luks\", \"key-secret\": \"s0\", \"file\": {\"driver\": \"file\", \"filename\": \"$2\"}}") \
        >"$WORK/.why" 2>&1; then
        fail "$NAME" "content of $2 differs from $1"
        return 1
    fi
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

# ---- workloads ------------------------------------------------------------
#
# Each workload is: NAME|PREP|ARGS|VERIFY, run in $WORK, @IN@ standing for
# the input directory.  PREP (shell, untimed) runs before every run of
# either tool; VERIFY (shell) checks what qimg left.  For
# read-only commands VERIFY is "same", comparing stdout and exit status
# with the reference's.
WORKLOADS=(
"convert raw->qcow2|rm -f out.qcow2|convert -f raw -O qcow2 @IN@/in.raw out.qcow2|same_content raw @IN@/in.raw qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert qcow2->raw|rm -f out.raw|convert -f qcow2 -O raw @IN@/in.qcow2 out.raw|same_content qcow2 @IN@/in.qcow2 raw out.raw"
"convert qed->raw 512M|rm -f out.raw|convert -f qed -O raw @IN@/in.qed out.raw|same_content qed @IN@/in.qed raw out.raw"
"convert -c zlib|rm -f out.qcow2|convert -c -f qcow2 -O qcow2 @IN@/in.qcow2 out.qcow2|same_content qcow2 @IN@/in.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert -c zstd|rm -f out.qcow2|convert -c -f qcow2 -O qcow2 -o compression_type=zstd @IN@/in.qcow2 out.qcow2|same_content qcow2 @IN@/in.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert vhdx->qcow2|rm -f out.qcow2|convert -f vhdx -O qcow2 @IN@/in.vhdx out.qcow2|same_content raw @IN@/in.raw qcow2 out.qcow2 && qcow2_ok out.qcow2"
"convert qcow2->vpc fixed|rm -f out.vhd|convert -f qcow2 -O vpc -o subformat=fixed @IN@/in.qcow2 out.vhd|same_content qcow2 @IN@/in.qcow2 vpc out.vhd"
"convert vdi->raw|rm -f out.raw|convert -f vdi -O raw @IN@/in.vdi out.raw|same_content vdi @IN@/in.vdi raw out.raw"
"convert chain flatten|rm -f out.qcow2|convert -f qcow2 -O qcow2 @IN@/top.qcow2 out.qcow2|same_content qcow2 @IN@/top.qcow2 qcow2 out.qcow2 && qcow2_ok out.qcow2"
"compare identical|:|compare -f qcow2 -F raw @IN@/in.qcow2 @IN@/in.raw|same"
"compare late diff|:|compare -f qcow2 -F qcow2 @IN@/in.qcow2 @IN@/late.qcow2|same"
"check 1T sparse|:|check @IN@/sparse.qcow2|same"
"map json 1T sparse|:|map --output=json @IN@/sparse.qcow2|same"
"bench -w 1T alloc|rm -f b.qcow2 && \$REF create -q -f qcow2 b.qcow2 1T|@BENCH_W@ b.qcow2|same_content qcow2 @IN@/alloc.qcow2 qcow2 b.qcow2 && qcow2_ok b.qcow2"
"info chain|:|info --backing-chain @IN@/top.qcow2|same"
"measure|:|measure -O qcow2 -f raw @IN@/in.raw|same"
"dd qcow2->raw|rm -f out.raw|dd -f qcow2 -O raw bs=1M if=@IN@/in.qcow2 of=out.raw|same_content qcow2 @IN@/in.qcow2 raw out.raw"
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
"info chain 127|:|info --backing-chain @IN@/chain126.qcow2|same"
"map chain 127|:|map --output=json @IN@/chain126.qcow2|same"
"convert chain 127|rm -f out.raw|convert -f qcow2 -O raw @IN@/chain126.qcow2 out.raw|same_content qcow2 @IN@/chain126.qcow2 raw out.raw"
)

# Allocating writes: 4 KiB every 256 MiB of an empty 1 TiB image, 8 in
# flight, so that each allocates a data cluster and most an L2 table.
BENCH_W="bench -w -f qcow2 -c $SPARSE_WRITES -d 8 -s 4k -S 268435456"

# Commands still being written answer "not implemented yet": skip those.
implemented() {
    local cmd=${1%% *}
    case "$cmd" in commit|rebase) ;; *) return 0 ;; esac
    ! "$QIMG" "$cmd" 2>&1 | grep -q "not implemented yet"
}

RESULTS=()
run_workload() {
    local name=$1 prep=$2 args=$3 verify=$4 i
    local -a qt=() rt=() qm=() rs=() qc=() rc=()
    local ref_out ref_rc ok=1
    prep=${prep//@IN@/$IN}
    args=${args//@IN@/$IN}
    args=${args//@BENCH_W@/$BENCH_W}
    args=${args//@LUKS@/$LUKS_SECRET}
    verify=${verify//@IN@/$IN}
    if ! implemented "$args"; then
        RESULTS+=("$name|-|-|-|-|-|-|-|-|skipped (not implemented)")
        echo "bench: $name: skipped (qimg ${args%% *} not implemented yet)"
        return
    fi
    printf 'bench: %-24s' "$name"
    for ((i = 0; i < RUNS; i++)); do
        # The reference first, so that "same" has its answer to compare.
        (cd "$WORK" && eval "$prep") || die "$name: prep failed"
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
        (cd "$WORK" && eval "$prep") || die "$name: prep failed"
        # shellcheck disable=SC2086
        timed "$QIMG" $args
        qt+=("$SECS") qm+=("$RSS") qc+=("$CPU")
        printf ' %s/%s' "${qt[-1]}" "${rt[-1]}"
        if [ "$verify" = same ]; then
            if [ "$RC" != "$ref_rc" ] || [ "$(cat "$WORK/.out")" != "$ref_out" ]; then
                { echo "rc $RC (qemu-img: $ref_rc)"
                  diff <(echo "$ref_out") "$WORK/.out" | head -8; } >"$WORK/.why"
                fail "$name" "output differs from qemu-img's"
                ok=0
            fi
        elif [ "$RC" != 0 ]; then
            cp "$WORK/.err" "$WORK/.why"
            fail "$name" "qimg failed (rc=$RC)"
            ok=0
        else
            NAME=$name
            eval "$verify" || ok=0
        fi
    done
    echo
    local q r qr rr qcpu rcpu ratio cratio
    q=$(printf '%s\n' "${qt[@]}" | median)
    r=$(printf '%s\n' "${rt[@]}" | median)
    qr=$(printf '%s\n' "${qm[@]}" | median)
    rr=$(printf '%s\n' "${rs[@]}" | median)
    qcpu=$(printf '%s\n' "${qc[@]}" | median)
    rcpu=$(printf '%s\n' "${rc[@]}" | median)
    ratio=$(awk -v a="$q" -v b="$r" 'BEGIN { if (b < 0.001) b = 0.001; printf "%.2f", a / b }')
    # CPU times below 20 ms are mostly process start-up: no ratio.
    # A zero (under 5 ms) would also make the geometric mean zero.
    cratio=$(awk -v a="$qcpu" -v b="$rcpu" 'BEGIN { if (b < 0.02 || a < 0.005) print "-"; else printf "%.2f", a / b }')
    RESULTS+=("$name|$q|$r|$ratio|$qcpu|$rcpu|$cratio|$((qr / 1024))|$((rr / 1024))|$([ $ok = 1 ] && echo ok || echo FAILED)")
}

make_inputs
make_luks_input
echo "bench: qimg=$QIMG reference=$REF runs=$RUNS size=$SIZE"

# The copy bound of this machine: cp --sparse=always of the raw input (the
# copy workloads' times are also printed as a ratio to it).
cp_times=()
for ((i = 0; i < RUNS; i++)); do
    rm -f "$WORK/cp.raw"
    timed cp --sparse=always "$IN/in.raw" cp.raw
    cp_times+=("$SECS")
done
rm -f "$WORK/cp.raw"
CP_SECS=$(printf '%s\n' "${cp_times[@]}" | median)
echo "bench: cp --sparse=always of in.raw: $CP_SECS s (median of $RUNS)"
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
for w in "${WORKLOADS[@]}"; do
    IFS='|' read -r name prep args verify <<<"$w"
    if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then
        continue
    fi
    rm -rf "${WORK:?}"/* "$WORK"/.[!.]*
    run_workload "$name" "$prep" "$args" "$verify"
done
rm -rf "${WORK:?}"/*

# ---- report ---------------------------------------------------------------

echo
echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(df -T "$DIR" | awk 'NR == 2 { print $2 }') on $(df "$DIR" | awk 'NR == 2 { print $1 }'); size $(numfmt --to=iec "$SIZE"), median of $RUNS"
echo "load average $LOAD0 before, $(cut -d' ' -f1 /proc/loadavg) after"
if awk -v l="$LOAD0" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    echo "bench: WARNING: the machine was busy: wall times are noisy (CPU seconds less so)"
fi
echo
# Workloads that copy the whole disk: their time against cp's.
is_copy() { [[ $1 =~ ^(convert\ qcow2-\>raw|convert\ raw-\>qcow2|convert\ chain\ flatten|dd\ qcow2-\>raw)$ ]]; }
echo "| workload | qimg s | qemu-img s | ratio | qimg/cp | qimg CPU s | qemu-img CPU s | CPU ratio | qimg MiB | qemu-img MiB | RSS ratio | result |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for r in "${RESULTS[@]}"; do
    IFS='|' read -r name q rf ratio qc rc cr qm rs res <<<"$r"
    cpr=-
    if is_copy "$name" && [ "$q" != - ]; then
        cpr=$(awk -v a="$q" -v b="$CP_SECS" 'BEGIN { if (b < 0.001) b = 0.001; printf "%.2f", a / b }')
    fi
    rr=$(awk -v a="$qm" -v b="$rs" 'BEGIN { if (a == "-" || b < 1) print "-"; else printf "%.2f", a / b }')
    echo "| $name | $q | $rf | $ratio | $cpr | $qc | $rc | $cr | $qm | $rs | $rr | $res |"
done
printf '%s\n' "${RESULTS[@]}" | awk -F'|' '$4 != "-" { s += log($4); n++ }
    $7 != "-" { c += log($7); m++ }
    $4 != "-" && $4 + 0 > worst { worst = $4 + 0; wname = $1 }
    $8 != "-" && $9 + 0 > 0 { r = $8 / $9; if (r > wr) { wr = r; wrname = $1 } }
    END { if (n) printf "\ngeometric mean of the time ratios (qimg/qemu-img): %.2f over %d workloads\n", exp(s / n), n
          if (m) printf "geometric mean of the CPU time ratios: %.2f over %d workloads\n", exp(c / m), m
          if (n) printf "worst time ratio: %.2f (%s)\n", worst, wname
          if (wr) printf "worst peak RSS ratio: %.2f (%s)\n", wr, wrname }'

if [ ${#FAILS[@]} -gt 0 ]; then
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!!!! FAILED: qimg gave wrong results (${#FAILS[@]}):"
    printf '!!!!!   %s\n' "${FAILS[@]}"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    exit 1
fi
exit 0
