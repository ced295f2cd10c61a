#!/bin/sh
# Run every libFuzzer target of a -Dfuzz=true build for N seconds each.
#   scripts/run-fuzz.sh BUILD-DIR SECONDS [TARGET...]
# Seeds come from scripts/make-fuzz-seeds.sh (made once per build dir);
# each target keeps its growing corpus in BUILD/fuzz/corpus/<target>.
# Crashes, leaks, timeouts and out-of-memory inputs are saved under
# BUILD/fuzz/artifacts/<target>/; then the script fails, naming them.
# Turn each into tests/fuzz/regressions/<target>/<name> plus a fix.
set -u
BUILD=${1:?usage: run-fuzz.sh BUILD SECONDS [TARGET...]}
SECONDS_EACH=${2:-60}
if [ $# -ge 2 ]; then shift 2; else shift $#; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${*:-qcow2 vhdx vpc vdi dmg bochs cloop probe raw opts size json vmdk vmdk-desc qed qcow parallels}
FUZZ=$BUILD/fuzz
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

if [ ! -d "$FUZZ/seeds" ]; then
    "$ROOT/scripts/make-fuzz-seeds.sh" "$FUZZ/seeds.tmp" &&
        mv "$FUZZ/seeds.tmp" "$FUZZ/seeds" || exit 1
fi
failed=""
for t in $TARGETS; do
    exe=$BUILD/tests/fuzz/fuzz-$t
    if [ ! -x "$exe" ]; then
        echo "run-fuzz: $exe missing (configure with -Dfuzz=true)" >&2
        exit 1
    fi
    mkdir -p "$FUZZ/corpus/$t" "$FUZZ/artifacts/$t"
    dict=""
    [ -f "$ROOT/tests/fuzz/$t.dict" ] && dict="-dict=$ROOT/tests/fuzz/$t.dict"
    regress=""
    [ -d "$ROOT/tests/fuzz/regressions/$t" ] &&
        regress="$ROOT/tests/fuzz/regressions/$t"
    echo "== fuzz-$t for ${SECONDS_EACH}s"
    # -timeout: one input may take at most 10 s; -rss_limit_mb also caps
    # single allocations (malloc_limit_mb defaults to it).
    "$exe" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=1048576 -print_final_stats=1 $dict \
        -artifact_prefix="$FUZZ/artifacts/$t/" \
        "$FUZZ/corpus/$t" "$FUZZ/seeds/$t" $regress \
        >"$FUZZ/$t.log" 2>&1
    rc=$?
    tail -n 12 "$FUZZ/$t.log"
    if [ "$rc" -ne 0 ]; then
        failed="$failed $t"
        echo "fuzz-$t FAILED (log: $FUZZ/$t.log):" >&2
        ls "$FUZZ/artifacts/$t" >&2
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz targets with findings:$failed" >&2
    exit 1
fi
echo "fuzz: no findings"
