#!/bin/bash
# bench/net.sh [BUILD_DIR] - qimg against qemu-img over network storages.
#
# 1 GiB copies side by side over loopback (127.0.0.1):
#   nbd-from-qemu-nbd   convert from qemu-nbd (read-only export) to a file
#   nbd-to-qemu-nbd     convert -n from a file into a qemu-nbd export
#   nbd-from-nbdkit     convert from nbdkit's memory plugin to a file
#   nbd-to-nbdkit       convert -n from a file into nbdkit's memory plugin
#   http-from-nginx     convert from nginx (http, Range requests) to a file
#   http-from-nginx-ref-m1  the same with qemu-img given -m 1 (one request
#                       in flight), which avoids its curl driver's stall
# Each workload runs BENCH_RUNS pairs (qimg then the reference, the other
# way round in the next pair), each pair after an untimed warm-up copy;
# the median wall time of each tool and their ratio
# (qimg / qemu-img: below 1 is faster; issue 18's target is at most 0.5)
# are printed.  Every result of qimg is checked with the reference's
# `compare` against the input: a wrong copy is a failure however fast it
# was (FAILED banner, exit status 1).
#
# The input is bench/gen.py's raw image (about 40% data in scattered
# extents, the rest holes), so block status matters as much as bandwidth.
#
# Environment (all optional):
#   QIMG=path          qimg binary (default BUILD_DIR/qimg)
#   QEMU_IMG=path      reference (default /usr/bin/qemu-img)
#   BENCH_DIR=dir      scratch directory (default /tmp/qimg-bench-net)
#   BENCH_SIZE=size    virtual size of the input (default 1G)
#   BENCH_RUNS=n       runs of each tool per workload (default 3)
#   BENCH_SEED=n       seed of the generated content (default 1)
#   BENCH_ONLY=regex   only the workloads whose name matches
#   BENCH_KEEP=1       keep the scratch directory (and its input)
#   BENCH_TIMEOUT=s    per-command timeout in seconds (default 60): a
#                      command killed by it shows as "timeout" (its row's
#                      ratio as n/a; a qimg timeout fails the bench)
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
QIMG=${QIMG:-$BUILD/qimg}
REF=${QEMU_IMG:-/usr/bin/qemu-img}
DIR=${BENCH_DIR:-/tmp/qimg-bench-net}
RUNS=${BENCH_RUNS:-3}
SEED=${BENCH_SEED:-1}
ONLY=${BENCH_ONLY:-}
KEEP=${BENCH_KEEP:-0}
TIMEOUT=${BENCH_TIMEOUT:-60}
SIZE=$(numfmt --from=iec "${BENCH_SIZE:-1G}") || exit 2
MARK=.qimg-bench-net

die() { echo "bench/net: $*" >&2; exit 2; }

for t in "$QIMG" "$REF" qemu-nbd nbdkit nginx python3 numfmt timeout; do
    command -v "$t" >/dev/null || die "missing $t (scripts/deps.sh test)"
done

# Refuse to wipe a directory that is not ours.
if [ -e "$DIR" ] && [ ! -e "$DIR/$MARK" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and is not a bench directory"
fi
mkdir -p "$DIR" && touch "$DIR/$MARK" || die "cannot use $DIR"
IN=$DIR/in-$SIZE-$SEED.raw

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ "$KEEP" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: until something accepts on PORT, or PID died.
wait_port() {
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# start NAME ARGV...: a server in the background; sets PORT first (ARGV
# may name @PORT@), waits until it listens.
start() {
    local name=$1 log=$DIR/$1.log; shift
    PORT=$(free_port)
    "${@//@PORT@/$PORT}" >"$log" 2>&1 &
    PIDS+=($!)
    wait_port "$PORT" $! || die "$name did not start: $(tail -5 "$log")"
}

[ -s "$IN" ] || python3 "$ROOT/bench/gen.py" raw "$IN" "$SIZE" "$SEED" ||
    die "cannot generate $IN"

# nginx serving $DIR.
mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $DIR/nginx/nginx.pid; error_log $DIR/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off; client_body_temp_path $DIR/nginx; proxy_temp_path $DIR/nginx;
  fastcgi_temp_path $DIR/nginx; uwsgi_temp_path $DIR/nginx;
  scgi_temp_path $DIR/nginx;
  server { listen 127.0.0.1:@PORT@; root $DIR; }
}
EOF

FAILED=0
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# now: seconds since the epoch with nanoseconds.
now() { date +%s.%N; }

# timed TOOL ARGV...: runs it under the per-command timeout, prints its
# wall seconds, or "timeout" when it had to be killed; fails loudly on
# any other error.
timed() {
    local t0 t1 out rc
    sync
    t0=$(now)
    out=$(timeout -k 5 "$TIMEOUT" "$@" 2>&1)
    rc=$?
    t1=$(now)
    case $rc in
    0) awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' ;;
    124|137) echo "bench/net: $* killed after ${TIMEOUT}s" >&2
             echo timeout ;;
    *) echo "bench/net: $* failed: $out" >&2; return 1 ;;
    esac
}

# one_qimg SOURCE TARGET CHECK [FLAGS...]: a timed qimg copy, then its
# result checked against the input with the reference.
one_qimg() {
    local src=$1 dst=$2 check=$3 t; shift 3
    rm -f "$DIR/out.raw"
    t=$(timed "$QIMG" convert "$@" -f raw -O raw "$src" "$dst") || return 1
    if [ "$t" != timeout ] &&
       ! "$REF" compare -f raw -F raw "$IN" "$check" >/dev/null 2>&1; then
        echo "bench/net: qimg's copy to $dst differs from the input" >&2
        return 1
    fi
    echo "$t"
}

# one_ref SOURCE TARGET [FLAGS...]: a timed copy by the reference (its
# flags plus REF_EXTRA, the workaround flags of a row).
one_ref() {
    local src=$1 dst=$2; shift 2
    rm -f "$DIR/out.raw"
    timed "$REF" convert "$@" $REF_EXTRA -f raw -O raw "$src" "$dst"
}

# A row's times: the median, or "timeout" when any run timed out (a median
# over the runs that finished would hide the hang).
row_median() {
    local v
    v=$(cat)
    if grep -q timeout <<<"$v"; then echo timeout; else median <<<"$v"; fi
}

# ref_pair_part SOURCE TARGET [FLAGS...]: the reference's timed run of a
# pair, or "timeout" without running it once it hung in this row (a hang
# costs the whole timeout; one is enough to mark the row).
ref_pair_part() {
    if [ "$REF_HUNG" = 1 ]; then echo timeout; else one_ref "$@"; fi
}

# run NAME SOURCE TARGET CHECK_TARGET [CONVERT_FLAGS...]: the workload
# with both tools; prints a result row.  Before each pair of timed runs
# one untimed copy (by the reference under the timeout, by qimg once the
# reference hung) puts the input in the page cache and allocates the
# target's memory or blocks, so the first timed tool does not pay for
# first touches that the second then skips; the order of the pair
# alternates (qimg first in odd runs, the reference first in even runs).
run() {
    local name=$1 src=$2 dst=$3 check=$4; shift 4
    [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]] && return 0
    local i tq tr qs=() rs=() warm=timeout
    REF_HUNG=0
    for i in $(seq "$RUNS"); do
        [ "$REF_HUNG" = 0 ] &&
            warm=$(timed "$REF" convert "$@" $REF_EXTRA -f raw -O raw \
                   "$src" "$dst" 2>/dev/null)
        if [ "$warm" = timeout ]; then
            REF_HUNG=1
            timeout -k 5 "$TIMEOUT" "$QIMG" convert "$@" -f raw -O raw \
                "$src" "$dst" >/dev/null 2>&1
        fi
        if [ $((i % 2)) = 1 ]; then
            tq=$(one_qimg "$src" "$dst" "$check" "$@") || { FAILED=1; return; }
            tr=$(ref_pair_part "$src" "$dst" "$@") || { FAILED=1; return; }
        else
            tr=$(ref_pair_part "$src" "$dst" "$@") || { FAILED=1; return; }
            tq=$(one_qimg "$src" "$dst" "$check" "$@") || { FAILED=1; return; }
        fi
        [ "$tr" = timeout ] && REF_HUNG=1
        qs+=("$tq"); rs+=("$tr")
    done
    tq=$(printf '%s\n' "${qs[@]}" | row_median)
    tr=$(printf '%s\n' "${rs[@]}" | row_median)
    local ratio=n/a
    [ "$tq" != timeout ] && [ "$tr" != timeout ] &&
        ratio=$(awk -v a="$tq" -v b="$tr" 'BEGIN { printf "%.2f", a / b }')
    printf '%-24s %9s %10s %7s   qimg: %s  qemu-img: %s\n' "$name" "$tq" "$tr" \
        "$ratio" "${qs[*]}" "${rs[*]}"
    [ "$tq" = timeout ] && FAILED=1
    return 0
}

printf 'input %s (%s bytes, seed %s), median of %s runs\n' \
    "$(basename "$IN")" "$SIZE" "$SEED" "$RUNS"
printf 'load average at start: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-24s %9s %10s %7s   (each run, in seconds)\n' workload "qimg s" \
    "qemu-img s" ratio
REF_EXTRA=

# qemu-nbd: -e 8 allows the parallel connections that multi-conn clients
# open (qimg's nbd pool); -t keeps it serving between runs.
start qemu-nbd-ro qemu-nbd -r -t -e 8 -f raw -b 127.0.0.1 -p @PORT@ "$IN"
run nbd-from-qemu-nbd "nbd://127.0.0.1:$PORT" "$DIR/out.raw" "$DIR/out.raw"

truncate -s "$SIZE" "$DIR/target.raw"
start qemu-nbd-rw qemu-nbd -t -e 8 -f raw -b 127.0.0.1 -p @PORT@ \
    --cache=writeback "$DIR/target.raw"
run nbd-to-qemu-nbd "$IN" "nbd://127.0.0.1:$PORT" "nbd://127.0.0.1:$PORT" -n

start nbdkit-from nbdkit -f -i 127.0.0.1 -p @PORT@ memory "$SIZE"
"$REF" convert -n -f raw -O raw "$IN" "nbd://127.0.0.1:$PORT" ||
    die "cannot fill nbdkit's memory export"
run nbd-from-nbdkit "nbd://127.0.0.1:$PORT" "$DIR/out.raw" "$DIR/out.raw"

start nbdkit-to nbdkit -f -i 127.0.0.1 -p @PORT@ memory "$SIZE"
run nbd-to-nbdkit "$IN" "nbd://127.0.0.1:$PORT" "nbd://127.0.0.1:$PORT" -n

# nginx reads its port from the configuration, not its command line.
PORT=$(free_port)
sed -i "s/@PORT@/$PORT/" "$DIR/nginx/nginx.conf"
nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx" >"$DIR/nginx.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT" $! || die "nginx did not start: $(tail -5 "$DIR/nginx.log")"
URL=http://127.0.0.1:$PORT/$(basename "$IN")
run http-from-nginx "$URL" "$DIR/out.raw" "$DIR/out.raw"
# qemu-img 7.2's curl driver stalls with several requests in flight (see
# docs/PERFORMANCE.md, "Network storages"); with -m 1 it finishes, so this
# row times it so, against qimg's default.
REF_EXTRA="-m 1"
run http-from-nginx-ref-m1 "$URL" "$DIR/out.raw" "$DIR/out.raw"
REF_EXTRA=

if [ "$FAILED" != 0 ]; then
    echo "FAILED: a copy by qimg was wrong or a command failed" >&2
    exit 1
fi
