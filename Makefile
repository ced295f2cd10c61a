# Thin wrapper over Meson/Ninja.  The real build is meson.build.
BUILD ?= build

.PHONY: all deps test-deps configure check demo bench bench-quick fmt clean install \
	check-asan check-tsan check-rbd fuzz check-valgrind static

all: deps configure
	ninja -C $(BUILD)

deps:
	@scripts/deps.sh build

test-deps:
	@scripts/deps.sh test

configure:
	@test -f $(BUILD)/build.ninja || meson setup $(BUILD)

check: test-deps configure
	ninja -C $(BUILD)
	tests/run-all.sh $(BUILD)

demo: test-deps configure
	ninja -C $(BUILD)
	scripts/demo.sh $(BUILD)

bench: test-deps configure
	ninja -C $(BUILD)
	bench/run.sh $(BUILD)

bench-quick: test-deps configure
	ninja -C $(BUILD)
	bench/run.sh --quick $(BUILD)

fmt:
	clang-format -i include/*.h lib/*/*.[ch] cli/*.[ch] tests/unit/*.c

install: all
	meson install -C $(BUILD)

clean:
	rm -rf $(BUILD)

# A fully static qimg (-Dstatic=true) in build-static, checked to be
# static (ldd) and to work: its checksum of an image equals the normal
# build's.  Not part of make check (it builds everything again).
STATIC_BUILD ?= build-static
static: deps
	@test -f $(STATIC_BUILD)/build.ninja || meson setup $(STATIC_BUILD) \
		-Dstatic=true -Dmodules=false -Dman=disabled
	ninja -C $(STATIC_BUILD) qimg
	scripts/check-static.sh $(STATIC_BUILD)/qimg

# The test suite against an ASan+UBSan build (tests take the build
# directory from QIMG_BUILD).  Any sanitizer report fails the run: UBSan
# halts on its first error and ASan's leak checker fails the process.
# GCC leaves float-cast-overflow out of "undefined": it is added.
# To keep CI within its time, the run is the unit tests and fuzz
# regression replays (meson test) plus the integration tests where memory
# errors come from: hostile and untrusted input, streams, concurrent
# writers, the I/O paths of every format and the network storages
# (their I/O threads, concurrent commands and failures mid-copy; rbd has
# its own target; ASAN_TESTS=tests/cli
# runs everything).
ASAN_BUILD ?= build-asan
ASAN_TESTS ?= $(wildcard tests/cli/test_hostile*.py tests/cli/test_*_hostile.py) \
	tests/cli/test_untrusted.py tests/cli/test_stream.py \
	tests/cli/test_stress.py tests/cli/test_qcow2_io.py \
	tests/cli/test_vmdk_io.py tests/cli/test_vhdx_log.py \
	tests/cli/test_qcow_aes.py tests/cli/test_node_graph.py \
	tests/cli/test_iscsi.py tests/cli/test_net_reqs.py tests/cli/test_nbd.py \
	tests/cli/test_http.py tests/cli/test_ssh.py tests/cli/test_nfs.py
# The rbd storage against a real single-node Ceph (tests/servers/
# ceph-single.sh, started and stopped by the tests): ~2 minutes here,
# kept out of make check (README "Ceph RBD").
check-rbd: test-deps configure
	@scripts/deps.sh rbd
	ninja -C $(BUILD)
	QIMG_RBD=1 QIMG_BUILD=$(abspath $(BUILD)) /usr/bin/python3 -m pytest -q -rs \
		tests/cli/test_net_rbd.py

check-asan: test-deps
	@test -f $(ASAN_BUILD)/build.ninja || meson setup $(ASAN_BUILD) \
		-Db_sanitize=address,undefined -Db_lundef=false \
		-Dc_args=-fsanitize=float-cast-overflow \
		-Dc_link_args=-fsanitize=float-cast-overflow
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=$${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1} \
	UBSAN_OPTIONS=$${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
	LSAN_OPTIONS=$${LSAN_OPTIONS:-suppressions=$(CURDIR)/tests/lsan.supp} \
	QIMG_PYTEST_TARGETS="$(ASAN_TESTS)" tests/run-all.sh $(ASAN_BUILD)

# The same idea under ThreadSanitizer: the tests whose commands run
# several threads on one image (copy workers, concurrent writers, the
# network storages' I/O threads and their failures).  Any data race
# report fails the process (exitcode 66); history_size keeps the stacks
# of older accesses for the reports.
TSAN_BUILD ?= build-tsan
TSAN_TESTS ?= tests/cli/test_stress.py tests/cli/test_qcow2_l2_parallel.py \
	tests/cli/test_qcow2_io.py tests/cli/test_copy_order.py \
	tests/cli/test_convert.py tests/cli/test_convert_multi.py \
	tests/cli/test_nbd.py tests/cli/test_net_reqs.py tests/cli/test_iscsi.py \
	tests/cli/test_http.py
check-tsan: test-deps
	@test -f $(TSAN_BUILD)/build.ninja || meson setup $(TSAN_BUILD) \
		-Db_sanitize=thread -Db_lundef=false
	ninja -C $(TSAN_BUILD)
	TSAN_OPTIONS=$${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:report_signal_unsafe=0:history_size=4} \
	QIMG_PYTEST_TARGETS="$(TSAN_TESTS)" tests/run-all.sh $(TSAN_BUILD)

# libFuzzer targets (tests/fuzz) built with clang, ASan and UBSan, each run
# for FUZZ_SECONDS (scripts/run-fuzz.sh; FUZZ_TARGETS picks some).
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: test-deps
	@test -f $(FUZZ_BUILD)/build.ninja || CC=clang meson setup $(FUZZ_BUILD) \
		-Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C $(FUZZ_BUILD)
	scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The unit tests and the integration tests with every qimg process under
# valgrind (tests/cli/conftest.py wraps the programs of the build tree when
# QIMG_VALGRIND is set).  An invalid access or a definite/indirect leak
# makes the process exit 99, which fails its test.  Slow (about an hour on
# 2 cores): run by hand, not in CI.  VALGRIND_TESTS picks pytest targets.
VALGRIND = valgrind --error-exitcode=99 --leak-check=full \
	--errors-for-leak-kinds=definite,indirect -q
VALGRIND_JOBS ?= 2
VALGRIND_TESTS ?= tests/cli
check-valgrind: test-deps configure
	ninja -C $(BUILD)
	meson test -C $(BUILD) --print-errorlogs --timeout-multiplier 20 \
		--wrapper '$(VALGRIND)'
	QIMG_BUILD=$(CURDIR)/$(BUILD) QIMG_VALGRIND='$(VALGRIND)' /usr/bin/python3 -m pytest \
		-q -rfs -n $(VALGRIND_JOBS) $(VALGRIND_TESTS)
