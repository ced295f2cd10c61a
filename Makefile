# Thin wrapper over Meson/Ninja.  The real build is meson.build.
BUILD ?= build

.PHONY: all deps test-deps configure check demo bench fmt clean install

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

fmt:
	clang-format -i include/*.h lib/*/*.[ch] cli/*.[ch] tests/unit/*.c

install: all
	meson install -C $(BUILD)

clean:
	rm -rf $(BUILD)
