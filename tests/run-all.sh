#!/bin/sh
# Run every test tier and print one summary line: "N passed, N failed".
#   tests/run-all.sh [build-dir]
# Tiers: C unit tests (cmocka, through meson test) and CLI differential /
# interop tests (pytest against the reference qemu-img).
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export QIMG_BUILD="$ROOT/$BUILD"
passed=0
failed=0

# Unit tests: one meson test per module; count by meson's own summary.
unit_log=$(mktemp)
meson test -C "$BUILD" --print-errorlogs >"$unit_log" 2>&1
unit_rc=$?
cat "$unit_log"
u_ok=$(sed -n 's/^Ok:[[:space:]]*\([0-9]*\).*/\1/p' "$unit_log" | tail -1)
u_fail=$(sed -n 's/^Fail:[[:space:]]*\([0-9]*\).*/\1/p' "$unit_log" | tail -1)
u_err=$(sed -n 's/^Timeout:[[:space:]]*\([0-9]*\).*/\1/p' "$unit_log" | tail -1)
passed=$((passed + ${u_ok:-0}))
failed=$((failed + ${u_fail:-0} + ${u_err:-0}))
if [ "$unit_rc" -ne 0 ] && [ "${u_fail:-0}" -eq 0 ]; then failed=$((failed + 1)); fi
rm -f "$unit_log"

# Integration tests (pytest), spread over the cores with pytest-xdist when
# it is installed: two workers per core, since much of a test's time is
# spent waiting on its processes (measured: a quarter less wall time than
# one worker per core on 2 cores).
py_log=$(mktemp)
par=""
if /usr/bin/python3 -c "import xdist" 2>/dev/null; then
    par="-n $(($(nproc) * 2))"
fi
# QIMG_PYTEST_TARGETS: the test files to run (default: all of tests/cli;
# make check-asan names a subset, see the Makefile).
# shellcheck disable=SC2086
/usr/bin/python3 -m pytest -q -rf $par ${QIMG_PYTEST_TARGETS:-tests/cli} >"$py_log" 2>&1
py_rc=$?
cat "$py_log"
p_ok=$(tail -1 "$py_log" | grep -o '[0-9]* passed' | grep -o '[0-9]*')
p_fail=$(tail -1 "$py_log" | grep -o '[0-9]* failed' | grep -o '[0-9]*')
p_err=$(tail -1 "$py_log" | grep -o '[0-9]* error' | grep -o '[0-9]*')
passed=$((passed + ${p_ok:-0}))
failed=$((failed + ${p_fail:-0} + ${p_err:-0}))
# Exit 5 means no tests were collected: that is a failure for us.
if [ "$py_rc" -ne 0 ] && [ "${p_fail:-0}" -eq 0 ] && [ "${p_err:-0}" -eq 0 ]; then
    failed=$((failed + 1))
fi
rm -f "$py_log"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
