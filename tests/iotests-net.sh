#!/usr/bin/env bash
# iotests-net.sh - run QEMU 7.2's own iotests over the nbd, ssh and nfs
# protocols (check -nbd / -ssh / -nfs) against a given qemu-img, VM-free.
#
# Usage: tests/iotests-net.sh [options] [QEMU_IMG_BINARY]   (default /usr/bin/qemu-img)
#
#   -l, --list FILE   runs to make, one "TEST PROTOCOL FORMAT" a line
#                     (default: tests/iotests-net.txt beside this script:
#                     the runs qemu-img 7.2 itself passes here)
#   -t, --tests "T ..." -p, --protocols nbd,ssh,nfs -f, --formats raw,qcow2
#                     run these combinations instead of the list (a survey)
#   -j, --jobs N      runs in parallel (default 2)
#   --timeout S       per-run limit (default 600: 197 and 215 over ssh
#                     raw take 4-9 minutes at load 4-6)
#   --logs DIR        check output of each run and .out.bad of failures
#                     (default /tmp/iotests-net-logs)
#   --candidates      print every candidate run of the 7.2 source instead
#                     (the rule: tests/iotests-net-candidates.py), each
#                     with "listed", "noted" (a note of the list's head) or
#                     "UNACCOUNTED"; exit 1 when any is unaccounted
#   --candidates-all  the same, and the runs left out as needing a VM or
#                     the storage daemon, marked "vm" or "qsd"
#
# It reuses the QEMU source that ../shared/iotests/run-iotests fetched
# (IOTESTS_CACHE, default ~/.cache/qimg-iotests; run `run-iotests
# --fetch-only` once) and its qemu-system stub (IOTESTS_SHARED, default
# /work/shared/iotests).  The binary under test is reached through a link
# named qemu-img; qemu-io and qemu-nbd are always Debian's (QEMU_IO_PROG,
# QEMU_NBD_PROG), qemu-nbd being the NBD server of -nbd runs.
#
# ssh runs: the tests name ssh://127.0.0.1/PATH (port 22, the current user,
# host key checked against ~/.ssh/known_hosts), so the whole run happens in
# private network and mount namespaces (unshare -n -m): a throwaway sshd
# with a generated host key on that namespace's own 127.0.0.1:22, a
# generated client key in an ssh-agent of our own, and a temporary
# directory bind-mounted over ~/.ssh holding the known_hosts line.  The
# machine's port 22 and ~/.ssh are left alone (an empty ~/.ssh is created
# as the mount point when there is none).
#
# nfs runs: the tests name nfs://127.0.0.1/TEST_DIR/t.FMT, which libnfs
# mounts (the directory TEST_DIR) after asking the portmapper on port
# 111, so they too run in the namespaces: rpcbind (with a tmpfs over /run,
# so that the machine's rpcbind socket and state are left alone) and an
# nfs-ganesha (VFS, NFSv3) exporting the scratch directory, on that
# namespace's own loopback.
#
# Last line printed: iotests-net: N passed, N failed.  Exit 0 when nothing
# failed; in list mode a "not run" counts as failed (every listed run passes
# with qemu-img 7.2).

set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
CACHE=${IOTESTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qimg-iotests}
IOTESTS=$CACHE/qemu/tests/qemu-iotests
STUB=${IOTESTS_SHARED:-/work/shared/iotests}/qemu-system-stub
QIO=${QEMU_IO_PROG:-/usr/bin/qemu-io}
QNBD=${QEMU_NBD_PROG:-/usr/bin/qemu-nbd}

die() { echo "iotests-net: $*" >&2; exit 2; }

# ------------------------------------------------------------ one run
# run_one TEST PROTO FMT: prints "TEST PROTO FMT RESULT SECONDS REASON"
run_one() {
    local t=$1 proto=$2 fmt=$3 tfile=tests/$1
    [[ $t =~ ^[0-9]+$ ]] && { t=$(printf '%03d' "$((10#$t))"); tfile=$t; }
    if [ ! -f "$IOTESTS/$tfile" ]; then
        echo "$t $proto $fmt skip 0 no such test"; return
    fi
    local dir=$SCRATCH/$proto-$fmt-$t log=$LOGS/$proto-$fmt-$t.log
    mkdir -p "$dir/run" "$dir/test"
    ln -sf "$IOTESTS/check" "$dir/run/check"
    local sock
    sock=$(mktemp -d /tmp/iotn-XXXXXX)
    local t0 rc line status reason serial=()
    # 162 makes a socket and a file named 42 in the iotests source
    # directory, shared by every run: one 162 run at a time.
    [ "$t" = 162 ] && serial=(flock "$SCRATCH/162.lock")
    t0=$(date +%s%N)
    (cd "$dir/run" && TEST_DIR=$dir/test SOCK_DIR=$sock \
        QEMU_PROG=$STUB QSD_PROG=$STUB QEMU_IMG_PROG=$BIN/qemu-img \
        QEMU_IO_PROG=$QIO QEMU_NBD_PROG=$QNBD \
        "${serial[@]}" timeout -k 10 "$TIMEOUT" ./check "-$proto" "-$fmt" --color off "$t") \
        > "$log" 2>&1 < /dev/null
    rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    rm -rf "$sock"
    line=$(tr '\r' '\n' < "$log" | grep -E "^$t +(pass|fail|not run) " | tail -n1)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=fail reason="timeout after ${TIMEOUT}s"
    elif [ -z "$line" ]; then
        status=fail reason="no result from check (exit $rc)"
    else
        case $line in
        *" not run "*) status=notrun ;;
        "$t "*" pass"*) status=pass ;;
        *) status=fail ;;
        esac
        reason=$(sed -E 's/^[^[]*\[[^]]*\] *(\[[^]]*\])? *([0-9.]+s|\.\.\.)? *(\(last: [^)]*\))? *//; s/ +$//' <<<"$line")
    fi
    [ "$status" = fail ] && [ -f "$dir/test/$t.out.bad" ] && cp "$dir/test/$t.out.bad" "$LOGS/$proto-$fmt-$t.out.bad"
    rm -rf "$dir"
    printf '%s %s %s %s %d.%d %s\n' "$t" "$proto" "$fmt" "$status" $((ms / 1000)) $(( (ms % 1000) / 100 )) "$reason"
}

if [ "${1:-}" = --run-one ]; then shift; run_one "$@"; exit 0; fi

# ------------------------------------------------------------ ssh set-up
# Inside the namespaces: sshd on 127.0.0.1:22, agent, known_hosts.
ssh_setup() {
    local d=$SCRATCH/ssh home
    mkdir -p "$d/dotssh" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$d/host" && ssh-keygen -q -t ed25519 -N '' -f "$d/client" ||
        die "ssh-keygen failed"
    cp "$d/client.pub" "$d/authorized_keys"
    # the tests' sshd configuration (tests/cli/netservers.py uses it too)
    sed -e "s|@PORT@|22|" -e "s|@DIR@|$d|" "$HERE/servers/sshd_config.in" \
        > "$d/sshd_config" || die "cannot write the sshd configuration"
    /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log" || die "sshd did not start"
    eval "$(ssh-agent -a "$d/agent.sock")" > /dev/null || die "ssh-agent failed"
    ssh-add -q "$d/client" || die "ssh-add failed"
    echo "127.0.0.1 $(cut -d' ' -f1,2 "$d/host.pub")" > "$d/dotssh/known_hosts"
    home=$(getent passwd "$(id -u)" | cut -d: -f6)
    [ -d "$home/.ssh" ] || mkdir -m 700 "$home/.ssh"
    mount --bind "$d/dotssh" "$home/.ssh" || die "cannot bind-mount over $home/.ssh"
    export SSH_AUTH_SOCK
}

# ------------------------------------------------------------ nfs set-up
# Inside the namespaces: rpcbind on 111, ganesha exporting $SCRATCH.
# (No Bind_addr: with only lo up, ganesha's lookup of 127.0.0.1 finds no
# address; the namespace has no other interface anyway.)
nfs_setup() {
    local d=$SCRATCH/nfs i
    mkdir -p "$d" /run/rpcbind
    rpcbind -f -w & echo $! > "$d/rpcbind.pid"
    printf '%s\n' \
        'NFS_CORE_PARAM { Enable_NLM = false; Enable_RQUOTA = false; Protocols = 3; }' \
        'NFSV4 { Graceless = true; }' \
        "EXPORT { Export_Id = 1; Path = $SCRATCH; Pseudo = $SCRATCH;" \
        '  Access_Type = RW; Squash = No_Root_Squash; Protocols = 3;' \
        '  FSAL { Name = VFS; } }' \
        'LOG { Default_Log_Level = EVENT; }' > "$d/ganesha.conf" ||
        die "cannot write the ganesha configuration"
    sleep 1
    ganesha.nfsd -f "$d/ganesha.conf" -L "$d/ganesha.log" -p "$d/ganesha.pid" ||
        die "ganesha.nfsd did not start"
    for i in $(seq 60); do
        rpcinfo -p 127.0.0.1 2>/dev/null | grep -q mountd && return
        sleep 0.5
    done
    die "ganesha registered no mount service (see $d/ganesha.log)"
}

# ------------------------------------------------------------ options
LIST=$HERE/iotests-net.txt TESTS=() PROTOS=(nbd) FORMATS=(raw) MODE=list
JOBS=2 TIMEOUT=600 LOGS=/tmp/iotests-net-logs PROG= INNS=0 ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
    -l|--list) LIST=${2:?}; shift ;;
    -t|--tests) read -ra TESTS <<<"${2:?}"; MODE=tests; shift ;;
    -p|--protocols) IFS=, read -ra PROTOS <<<"${2:?}"; shift ;;
    -f|--formats) IFS=, read -ra FORMATS <<<"${2:?}"; shift ;;
    -j|--jobs) JOBS=${2:?}; shift ;;
    --timeout) TIMEOUT=${2:?}; shift ;;
    --logs) LOGS=${2:?}; shift ;;
    --in-namespace) INNS=1 ;;
    --candidates) MODE=candidates ;;
    --candidates-all) MODE=candidates-all ;;
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) PROG=$1 ;;
    esac
    shift
done
[ -x "$IOTESTS/check" ] || die "no QEMU iotests in $CACHE (run ../shared/iotests/run-iotests --fetch-only)"
case $MODE in
candidates) exec /usr/bin/python3 "$HERE/iotests-net-candidates.py" --list "$LIST" "$IOTESTS" ;;
candidates-all) exec /usr/bin/python3 "$HERE/iotests-net-candidates.py" --all --list "$LIST" "$IOTESTS" ;;
esac
[ -x "$STUB" ] || die "no qemu-system stub at $STUB (set IOTESTS_SHARED)"
PROG=$(realpath "${PROG:-/usr/bin/qemu-img}") && [ -x "$PROG" ] || die "not an executable: $PROG"

JOBLIST=$(mktemp)
if [ "$MODE" = list ]; then
    [ -f "$LIST" ] || die "no list $LIST"
    grep -vE '^[[:space:]]*(#|$)' "$LIST" | awk '{ print $1, $2, $3 }' > "$JOBLIST"
else
    for p in "${PROTOS[@]}"; do for f in "${FORMATS[@]}"; do for t in "${TESTS[@]}"; do
        echo "$t $p $f"; done; done; done > "$JOBLIST"
fi

# ssh and nfs runs need the namespaces: re-run this script inside them, once.
if [ "$INNS" = 0 ] && grep -qE ' (ssh|nfs) ' "$JOBLIST"; then
    rm -f "$JOBLIST"
    exec unshare -n -m --propagation private "$0" --in-namespace "${ARGS[@]}"
fi

SCRATCH=$(mktemp -d /tmp/qimg-iotests-net-XXXXXX)
BIN=$SCRATCH/bin
mkdir -p "$BIN" && ln -s "$PROG" "$BIN/qemu-img"
cleanup() {
    local pid
    rm -f "$JOBLIST"
    [ -n "${SSH_AGENT_PID:-}" ] && kill "$SSH_AGENT_PID"
    for pid in ssh/sshd nfs/ganesha nfs/rpcbind; do
        [ -f "$SCRATCH/$pid.pid" ] && kill "$(cat "$SCRATCH/$pid.pid")"
    done
    sleep 0.5
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
if [ "$INNS" = 1 ]; then
    ip link set lo up || die "cannot bring up lo in the network namespace"
    if grep -q ' nfs ' "$JOBLIST"; then
        mount -t tmpfs tmpfs /run || die "cannot mount a tmpfs over /run"
        nfs_setup
    fi
    grep -q ' ssh ' "$JOBLIST" && ssh_setup
fi
rm -rf "$LOGS" && mkdir -p "$LOGS"
export SCRATCH BIN LOGS QIO QNBD TIMEOUT IOTESTS STUB

echo "qemu-img under test: $PROG ($(wc -l < "$JOBLIST") runs, -j $JOBS)"
START=$(date +%s)
xargs -P "$JOBS" -L 1 "$0" --run-one < "$JOBLIST" | tee "$LOGS/results.raw"
ELAPSED=$(( $(date +%s) - START ))
P=$(awk '$4 == "pass"' "$LOGS/results.raw" | wc -l)
N=$(wc -l < "$LOGS/results.raw")
NR=$(awk '$4 == "notrun" || $4 == "skip"' "$LOGS/results.raw" | wc -l)
if [ "$MODE" = list ]; then F=$((N - P)); else F=$((N - P - NR)); echo "($NR not run or skipped: not counted)"; fi
echo "(wall time ${ELAPSED}s; logs in $LOGS)"
echo "iotests-net: $P passed, $F failed"
[ "$F" = 0 ]
