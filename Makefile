# isle - GNU Makefile. `make` builds build/libisle.so; `make demo`, `make test`,
# `make bench`, `make path` (shell exports for using isle from this checkout).

LUAJIT ?= luajit
CC ?= cc
LUAJIT_INC ?= $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIB ?= $(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1)
CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE
PIC := -fPIC -pthread
ROOT := $(abspath .)
BUILD := build
SRCS := csrc/clock.c csrc/msg.c csrc/task.c csrc/mbox.c csrc/sig.c csrc/watchdog.c csrc/preload.c csrc/isle.c
HDRS := csrc/isle.h csrc/internal.h
CORE_SRCS := csrc/clock.c csrc/msg.c csrc/task.c csrc/mbox.c csrc/sig.c csrc/watchdog.c
CTESTS := $(patsubst test/c/%.c,%,$(wildcard test/c/test_*.c))
LUA_TESTS := $(sort $(wildcard test/test_*.lua))
# OpenResty's luajit2, unpacked into a private prefix (it conflicts with Debian's luajit).
LJ2_ROOT := $(BUILD)/luajit2
LJ2 := $(LJ2_ROOT)/usr/bin/luajit
LJ2_ENV := LD_LIBRARY_PATH=$(ROOT)/$(LJ2_ROOT)/usr/lib/x86_64-linux-gnu

export LUA_PATH := $(ROOT)/lua/?.lua;$(ROOT)/lua/?/init.lua;$(ROOT)/ffi/?.lua;$(ROOT)/test/?.lua;;
export LUA_CPATH := $(ROOT)/$(BUILD)/?.so;;
# The exact commands child processes of the suites run (test/helpers.lua),
# so `make test-lj2` tests luajit2 in them too.
export ISLE_TEST_LUAJIT = $(LUAJIT)
export ISLE_TEST_CC = $(CC)
# Bounds on the tests (seconds). A Lua suite's bound is enforced by
# test/run.lua, which names the stuck test; `timeout` is the backstop.
SUITE_TIMEOUT ?= 900
C_TEST_TIMEOUT ?= 600
export ISLE_TEST_SUITE_TIMEOUT = $(SUITE_TIMEOUT)

DEB_PKGS := build-essential clang luajit libluajit-5.1-dev lua-unit
# Wanted but not required: without it check-aarch64 says it is skipped.
DEB_OPTIONAL := gcc-aarch64-linux-gnu
AARCH64_CC ?= aarch64-linux-gnu-gcc
.PHONY: all deps demo test test-c test-lua test-lj2 test-sanitize build-clang check-aarch64 bench path clean luajit2

all: $(BUILD)/libisle.so

$(BUILD)/libisle.so: $(SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) $(PIC) $(LUAJIT_INC) -shared -o $@ $(SRCS) $(LUAJIT_LIB) -lm

$(BUILD):
	mkdir -p $(BUILD)

# Installs what is missing when run as root; otherwise prints the command.
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi
	@missing=""; for p in $(DEB_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
	      || echo "NOTE: could not install$$missing (optional): check-aarch64 will be skipped"; \
	  else echo "NOTE: optional packages missing (check-aarch64 will be skipped); run: sudo apt-get install -y$$missing"; fi; \
	fi

luajit2: $(LJ2)
$(LJ2):
	@mkdir -p $(LJ2_ROOT)/debs
	cd $(LJ2_ROOT)/debs && apt-get download luajit2 libluajit2-5.1-2 libluajit2-5.1-common
	for f in $(LJ2_ROOT)/debs/*.deb; do dpkg -x $$f $(LJ2_ROOT); done
	@test -x $@

path:
	@echo 'export LUA_PATH="$(ROOT)/lua/?.lua;$(ROOT)/lua/?/init.lua;$(ROOT)/ffi/?.lua;$${LUA_PATH:-;}"'
	@echo 'export LUA_CPATH="$(ROOT)/$(BUILD)/?.so;$${LUA_CPATH:-;}"'

demo: deps all
	$(LUAJIT) examples/demo.lua

$(BUILD)/test_%: test/c/test_%.c $(CORE_SRCS) $(HDRS) test/c/check.h | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -o $@ $< $(CORE_SRCS) -lm

# Runs a C test binary ($$t names it) under `timeout`, failing with its name.
C_RUN = timeout -k 10 $(C_TEST_TIMEOUT)
C_TIMED_OUT = { [ $$rc = 124 ] || [ $$rc = 137 ]; } && echo "FAILED: C test $$t: no result within $(C_TEST_TIMEOUT) s (timeout)"

test-c: $(addprefix $(BUILD)/,$(CTESTS))
	@for t in $(CTESTS); do echo "== C $$t"; \
	  $(C_RUN) $(BUILD)/$$t; rc=$$?; [ $$rc = 0 ] || { $(C_TIMED_OUT); exit 1; }; done

# The library must build warning-free with clang as well as gcc.
build-clang: | $(BUILD)
	@mkdir -p $(BUILD)/clang
	clang $(CFLAGS) $(WARN) $(PIC) $(LUAJIT_INC) -shared -o $(BUILD)/clang/libisle.so $(SRCS) $(LUAJIT_LIB) -lm

# The C core under ThreadSanitizer and AddressSanitizer (clang or gcc).
test-sanitize: | $(BUILD)
	@for san in thread address; do for t in $(CTESTS); do \
	  echo "== C $$t under $$san sanitizer"; \
	  $(CC) -O1 -g -fsanitize=$$san -fno-omit-frame-pointer $(WARN) -pthread -Icsrc \
	    -o $(BUILD)/$$t-$$san test/c/$$t.c $(CORE_SRCS) -lm || exit 1; \
	  $(C_RUN) $(BUILD)/$$t-$$san; rc=$$?; [ $$rc = 0 ] || { $(C_TIMED_OUT); exit 1; }; done; done

# The core must compile for aarch64 too (the branches under __aarch64__),
# with the cross compiler when Debian's gcc-aarch64-linux-gnu is installed.
check-aarch64: | $(BUILD)
	@if ! command -v $(AARCH64_CC) >/dev/null 2>&1; then \
	  echo "SKIPPED check-aarch64: $(AARCH64_CC) not found (install gcc-aarch64-linux-gnu: make deps as root)"; \
	  exit 0; fi; \
	mkdir -p $(BUILD)/aarch64; echo "== aarch64: compile csrc/*.c with $(AARCH64_CC)"; \
	for f in $(wildcard csrc/*.c); do \
	  $(AARCH64_CC) $(CFLAGS) $(WARN) $(PIC) $(LUAJIT_INC) -c -o $(BUILD)/aarch64/$$(basename $$f .c).o $$f || exit 1; \
	done

# Each suite runs under test/run.lua: a deadline on every test and the suite
# bound, a stuck test reported as "FAILED: <suite> <test>: no result within
# N s (deadline)". `timeout` ends the runner should it get stuck itself.
test-lua: all
	@$(LUAJIT) -v
	@for t in $(LUA_TESTS); do echo "== $$t"; \
	  timeout -k 10 $$(($(SUITE_TIMEOUT) + 60)) $(LUAJIT) test/run.lua $$t -o text; rc=$$?; \
	  [ $$rc = 124 ] && echo "FAILED: $$t: no result within $$(($(SUITE_TIMEOUT) + 60)) s (suite timeout)"; \
	  [ $$rc = 0 ] || exit 1; done

test-lj2: all $(LJ2)
	$(MAKE) --no-print-directory test-lua LUAJIT="env $(LJ2_ENV) $(ROOT)/$(LJ2)"

# Everything: deps, the C core (plain and sanitized), the Lua suites on the
# chosen LuaJIT and, unless LUAJIT was given, on OpenResty's luajit2 too.
test: deps all build-clang check-aarch64 test-c test-sanitize test-lua
ifeq ($(origin LUAJIT),file)
test: test-lj2
endif

# The C floor of the benchmarks (bench/c/pingpong.c): the core, no Lua.
.PHONY: bench-floor
bench-floor: $(BUILD)/bench_pingpong
$(BUILD)/bench_pingpong: bench/c/pingpong.c $(CORE_SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -o $@ bench/c/pingpong.c $(CORE_SRCS) -lm

bench: deps all bench-floor
	$(LUAJIT) bench/run.lua $(BENCH_ARGS)

clean:
	rm -rf $(BUILD)
