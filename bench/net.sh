#!/bin/bash
# bench/net.sh [BUILD_DIR] - qimg against qemu-img over network storages.
#
# 1 GiB copies side by side over loopback (127.0.0.1):
#   nbd-from-qemu-nbd   convert from qemu-nbd (read-only export) to a file
#   nbd-to-qemu-nbd     convert -n from a file into a qemu-nbd export
#   nbd-from-nbdkit     convert from nbdkit's memory plugin to a file
#   nbd-to-nbdkit       convert -n from a file into nbdkit's memory plugin
#   nbd-qcow2-to-nbdkit convert -n -O qcow2 into a qcow2 that each tool
#                       creates on nbdkit's memory plugin before each run
#                       (allocating writes, metadata and flushes over the
#                       network); -W: the same out of order
#   http-from-nginx     convert from nginx (http, Range requests) to a file
#   http-from-nginx-ref-m1  the same with qemu-img given -m 1 (one request
#                       in flight), which avoids its curl driver's stall
#   iscsi-from-tgt      convert from tgtd (LUN 1: the input) to a file
#   iscsi-to-tgt        convert -n from a file into tgtd (LUN 2)
# Each workload runs BENCH_RUNS pairs (qimg then the reference, the other
# way round in the next pair), each pair after an untimed warm-up copy;
# the median wall time of each tool and their ratio
# (qimg / qemu-img: below 1 is faster; issue 18's target is at most 0.5)
# are printed.  Beside them, what the server allows, timed after each
# pair by the best-known clients (medians too):
#   floor s     the same copy by another tool: nbdcopy SRC DST (same source
#               and target) for the NBD rows; for http, curl with 8
#               parallel range requests (as many as qimg's curl slots)
#               into /dev/null (curl cannot write the sparse target)
#   /floor      qimg's time over the floor (1 = as fast as the server
#               lets the best client go)
#   null s      reads: the source read and thrown away (nbdcopy SRC
#               null:, one `curl -o /dev/null`); writes into NBD: what the
#               server takes, bench/nbd-floor.c sending the same requests
#               from memory, one thread doing nothing else (its own clock,
#               from connect to flush; no file read)
# Every result of qimg is checked with the reference's
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
#   BENCH_FLOORS=0     skip the floor and null columns (shown as -)
#   BENCH_NGINX=test   nginx as tests/cli/netservers.py runs it (one
#                      process, no sendfile) instead of Debian's defaults
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
FLOORS=${BENCH_FLOORS:-1}
NGINX_MODE=${BENCH_NGINX:-debian}
SIZE=$(numfmt --from=iec "${BENCH_SIZE:-1G}") || exit 2
MARK=.qimg-bench-net

die() { echo "bench/net: $*" >&2; exit 2; }

for t in "$QIMG" "$REF" qemu-nbd nbdkit nginx python3 numfmt timeout \
         nbdcopy curl tgtd tgtadm; do
    command -v "$t" >/dev/null || die "missing $t (scripts/deps.sh test)"
done

# Refuse to wipe a directory that is not ours.
if [ -e "$DIR" ] && [ ! -e "$DIR/$MARK" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and is not a bench directory"
fi
mkdir -p "$DIR" && touch "$DIR/$MARK" || die "cannot use $DIR"
IN=$DIR/in-$SIZE-$SEED.raw

PIDS=()
KILL9=()    # servers that ignore SIGTERM (tgtd -f)
cleanup() {
    local p
    for p in "${KILL9[@]}"; do kill -9 "$p" 2>/dev/null; done
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

# The server-side floor of the rows writing into NBD (see "null s").
NBD_FLOOR=$DIR/nbd-floor
if [ "$FLOORS" = 1 ]; then
    cc -O2 -o "$NBD_FLOOR" "$ROOT/bench/nbd-floor.c" \
        $(pkg-config --cflags --libs libnbd) || die "cannot build nbd-floor"
fi

# nginx serving $DIR, by default as Debian ships it (/etc/nginx/nginx.conf:
# worker_processes auto, sendfile on, tcp_nopush on): that is the server a
# user runs, and with sendfile it spends about a third of the CPU per GiB
# that one process copying through its buffers does (0.2 s against
# 0.55 s), on the cores it shares with the client here.  BENCH_NGINX=test
# keeps the tests' set-up (one process, no sendfile) measurable; figures
# of both in docs/PERFORMANCE.md, "Session 8: http (nethttp)".
case $NGINX_MODE in
debian) NGINX_MAIN="worker_processes auto;"
        # (root's workers would be nobody's, who may not read $DIR)
        [ "$(id -u)" = 0 ] && NGINX_MAIN+=" user root;"
        NGINX_HTTP="sendfile on; tcp_nopush on;" ;;
test)   NGINX_MAIN="master_process off; worker_processes 1;"
        NGINX_HTTP="" ;;
*)      die "BENCH_NGINX is debian or test, not $NGINX_MODE" ;;
esac
mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<EOF
daemon off; $NGINX_MAIN
pid $DIR/nginx/nginx.pid; error_log $DIR/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off; client_body_temp_path $DIR/nginx; proxy_temp_path $DIR/nginx;
  fastcgi_temp_path $DIR/nginx; uwsgi_temp_path $DIR/nginx;
  scgi_temp_path $DIR/nginx; $NGINX_HTTP
  server { listen 127.0.0.1:@PORT@; root $DIR; }
}
EOF

FAILED=0
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ratio A B: A / B with two decimals; n/a unless both are times.
ratio() {
    case "$1 $2" in *timeout*|*-*) echo n/a; return ;; esac
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}

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

# The floors of the next rows: FLOOR and NULL are a command (a function
# and its arguments) timed after each pair; empty for none.
FLOOR=(); NULL=()

# nbdcopy_file SOURCE TARGET: nbdcopy into a file, which it wants to exist
# with the size of the source (qimg and qemu-img create theirs).
nbdcopy_file() {
    rm -f "$2" && truncate -s "$SIZE" "$2" && nbdcopy "$1" "$2"
}

# curl_ranges N URL: the whole URL in N parallel range requests, thrown
# away (curl's parallel transfers: one process, N connections).
curl_ranges() {
    local n=$1 url=$2 i a=0 b args=()
    for i in $(seq "$n"); do
        b=$((SIZE * i / n))
        [ "$i" -gt 1 ] && args+=(--next)
        args+=(-r "$a-$((b - 1))" -o /dev/null "$url")
        a=$b
    done
    curl -sS --fail -Z --parallel-max "$n" "${args[@]}"
}

# self_timed CMD...: a command that times itself (nbd-floor prints
# "... SECONDS s, cpu ..."): that time.
self_timed() {
    local out
    out=$(timeout -k 5 "$TIMEOUT" "$@" 2>&1) ||
        { echo "bench/net: $* failed: $out" >&2; return 1; }
    sed -n 's/.*, \([0-9.]*\) s, cpu.*/\1/p' <<<"$out"
}

# floor_part CMD...: one timed run of a floor command; "-" for none.  A
# function runs in a bash of its own (timeout(1) runs programs).
floor_part() {
    if [ "$FLOORS" != 1 ] || [ $# = 0 ]; then
        echo -
    elif [ "$1" = self_timed ]; then
        "$@"
    elif [ "$(type -t "$1")" = function ]; then
        timed bash -c "SIZE=$SIZE; $(declare -f "$1"); \"\$@\"" _ "$@"
    else
        timed "$@"
    fi
}

# A floor column's median, "-" when it was not measured.
col_median() {
    local v
    v=$(cat)
    if grep -qx -- - <<<"$v"; then echo -; else row_median <<<"$v"; fi
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
    local i tq tr tf tn qs=() rs=() fs=() ns=() warm=timeout
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
        tf=$(floor_part "${FLOOR[@]}") || { FAILED=1; return; }
        tn=$(floor_part "${NULL[@]}") || { FAILED=1; return; }
        qs+=("$tq"); rs+=("$tr"); fs+=("$tf"); ns+=("$tn")
    done
    tq=$(printf '%s\n' "${qs[@]}" | row_median)
    tr=$(printf '%s\n' "${rs[@]}" | row_median)
    tf=$(printf '%s\n' "${fs[@]}" | col_median)
    tn=$(printf '%s\n' "${ns[@]}" | col_median)
    printf '%-24s %7s %10s %6s %7s %6s %7s   qimg: %s  qemu-img: %s' \
        "$name" "$tq" "$tr" "$(ratio "$tq" "$tr")" "$tf" \
        "$(ratio "$tq" "$tf")" "$tn" "${qs[*]}" "${rs[*]}"
    [ "$tf" != - ] && printf '  floor: %s' "${fs[*]}"
    [ "$tn" != - ] && printf '  null: %s' "${ns[*]}"
    echo
    [ "$tq" = timeout ] && FAILED=1
    return 0
}

printf 'input %s (%s bytes, seed %s), median of %s runs\n' \
    "$(basename "$IN")" "$SIZE" "$SEED" "$RUNS"
printf 'load average at start: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'nginx: %s\n' "$NGINX_MODE"
printf '%-24s %7s %10s %6s %7s %6s %7s   (each run, in seconds)\n' workload \
    "qimg s" "qemu-img s" ratio "floor s" /floor "null s"
REF_EXTRA=

# qemu-nbd: -e 8 allows the parallel connections that multi-conn clients
# open (qimg's nbd pool); -t keeps it serving between runs.
start qemu-nbd-ro qemu-nbd -r -t -e 8 -f raw -b 127.0.0.1 -p @PORT@ "$IN"
FLOOR=(nbdcopy_file "nbd://127.0.0.1:$PORT" "$DIR/out.raw")
NULL=(nbdcopy "nbd://127.0.0.1:$PORT" null:)
run nbd-from-qemu-nbd "nbd://127.0.0.1:$PORT" "$DIR/out.raw" "$DIR/out.raw"

truncate -s "$SIZE" "$DIR/target.raw"
start qemu-nbd-rw qemu-nbd -t -e 8 -f raw -b 127.0.0.1 -p @PORT@ \
    --cache=writeback "$DIR/target.raw"
FLOOR=(nbdcopy "$IN" "nbd://127.0.0.1:$PORT")
NULL=(self_timed "$NBD_FLOOR" "$IN" "nbd://127.0.0.1:$PORT")
run nbd-to-qemu-nbd "$IN" "nbd://127.0.0.1:$PORT" "nbd://127.0.0.1:$PORT" -n

start nbdkit-from nbdkit -f -i 127.0.0.1 -p @PORT@ memory "$SIZE"
"$REF" convert -n -f raw -O raw "$IN" "nbd://127.0.0.1:$PORT" ||
    die "cannot fill nbdkit's memory export"
FLOOR=(nbdcopy_file "nbd://127.0.0.1:$PORT" "$DIR/out.raw")
NULL=(nbdcopy "nbd://127.0.0.1:$PORT" null:)
run nbd-from-nbdkit "nbd://127.0.0.1:$PORT" "$DIR/out.raw" "$DIR/out.raw"

start nbdkit-to nbdkit -f -i 127.0.0.1 -p @PORT@ memory "$SIZE"
FLOOR=(nbdcopy "$IN" "nbd://127.0.0.1:$PORT")
NULL=(self_timed "$NBD_FLOOR" "$IN" "nbd://127.0.0.1:$PORT")
run nbd-to-nbdkit "$IN" "nbd://127.0.0.1:$PORT" "nbd://127.0.0.1:$PORT" -n

# run_qcow2 NAME URL [CONVERT_FLAGS...]: a qcow2 created on the export
# by each tool before each of its timed copies into it (the result of
# qimg checked with the reference's compare), after one untimed copy;
# the tools alternate as in run; no floors.
run_qcow2() {
    local name=$1 url=$2 i t tq tr qs=() rs=(); shift 2
    [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]] && return 0
    # untimed: the server's memory allocated before the first timed run
    "$REF" create -q -f qcow2 "$url" "$SIZE" &&
        timed "$REF" convert -n "$@" -f raw -O qcow2 "$IN" "$url" >/dev/null
    for i in $(seq "$RUNS"); do
        for t in $([ $((i % 2)) = 1 ] && echo "$QIMG $REF" || echo "$REF $QIMG"); do
            "$t" create -q -f qcow2 "$url" "$SIZE" ||
                { echo "bench/net: $t create on $url failed" >&2; FAILED=1; return; }
            tq=$(timed "$t" convert -n "$@" -f raw -O qcow2 "$IN" "$url") ||
                { FAILED=1; return; }
            if [ "$t" = "$QIMG" ]; then
                if [ "$tq" != timeout ] &&
                   ! "$REF" compare -f raw -F qcow2 "$IN" "$url" >/dev/null 2>&1; then
                    echo "bench/net: qimg's qcow2 on $url differs from the input" >&2
                    FAILED=1; return
                fi
                qs+=("$tq")
            else
                rs+=("$tq")
            fi
        done
    done
    tq=$(printf '%s\n' "${qs[@]}" | row_median)
    tr=$(printf '%s\n' "${rs[@]}" | row_median)
    printf '%-24s %7s %10s %6s %7s %6s %7s   qimg: %s  qemu-img: %s\n' \
        "$name" "$tq" "$tr" "$(ratio "$tq" "$tr")" - - - "${qs[*]}" "${rs[*]}"
    [ "$tq" = timeout ] && FAILED=1
    return 0
}

if [ -z "$ONLY" ] || [[ nbd-qcow2-to-nbdkit =~ $ONLY ]] ||
   [[ nbd-qcow2-to-nbdkit-W =~ $ONLY ]]; then
    start nbdkit-qcow2 nbdkit -f -i 127.0.0.1 -p @PORT@ memory "$((2 * SIZE))"
    run_qcow2 nbd-qcow2-to-nbdkit "nbd://127.0.0.1:$PORT"
    run_qcow2 nbd-qcow2-to-nbdkit-W "nbd://127.0.0.1:$PORT" -W
fi

# nginx reads its port from the configuration, not its command line.
PORT=$(free_port)
sed -i "s/@PORT@/$PORT/" "$DIR/nginx/nginx.conf"
nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx" >"$DIR/nginx.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT" $! || die "nginx did not start: $(tail -5 "$DIR/nginx.log")"
URL=http://127.0.0.1:$PORT/$(basename "$IN")
FLOOR=(curl_ranges 8 "$URL"); NULL=(curl -sS --fail -o /dev/null "$URL")
run http-from-nginx "$URL" "$DIR/out.raw" "$DIR/out.raw"
# qemu-img 7.2's curl driver stalls with several requests in flight (see
# docs/PERFORMANCE.md, "Network storages"); with -m 1 it finishes, so this
# row times it so, against qimg's default.
REF_EXTRA="-m 1"
run http-from-nginx-ref-m1 "$URL" "$DIR/out.raw" "$DIR/out.raw"
REF_EXTRA=

# tgtd, the tests' iSCSI target, with two file-backed LUNs: 1 a copy of
# the input to read, 2 an empty one to write into.  Its control socket
# number comes from the port, as in tests/cli/netservers.py.
PORT=$(free_port)
TGT_CTL=$((1000 + PORT % 30000))
IQN=iqn.2026-12.org.qimg:bench
cp --sparse=always "$IN" "$DIR/lun1.raw"
truncate -s "$SIZE" "$DIR/lun2.raw"
tgtd -f -C "$TGT_CTL" --iscsi "portal=127.0.0.1:$PORT" >"$DIR/tgtd.log" 2>&1 &
KILL9+=($!)
wait_port "$PORT" $! || die "tgtd did not start: $(tail -5 "$DIR/tgtd.log")"
tgt() { tgtadm -C "$TGT_CTL" --lld iscsi "$@" >/dev/null ||
            die "tgtadm $* failed"; }
tgt --op new --mode target --tid 1 -T "$IQN"
tgt --op new --mode logicalunit --tid 1 --lun 1 -b "$DIR/lun1.raw"
tgt --op new --mode logicalunit --tid 1 --lun 2 -b "$DIR/lun2.raw"
tgt --op bind --mode target --tid 1 -I ALL
FLOOR=(); NULL=()
run iscsi-from-tgt "iscsi://127.0.0.1:$PORT/$IQN/1" "$DIR/out.raw" \
    "$DIR/out.raw"
run iscsi-to-tgt "$IN" "iscsi://127.0.0.1:$PORT/$IQN/2" "$DIR/lun2.raw" -n

if [ "$FAILED" != 0 ]; then
    echo "FAILED: a copy by qimg was wrong or a command failed" >&2
    exit 1
fi
