# isle - GNU Makefile. `make` builds build/libisle.so; `make demo`, `make test`,
# `make stress` (and `make stress-tsan`), `make bench`, `make path` (shell exports for using isle from this checkout).

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
STRESS_TESTS := $(sort $(wildcard test/stress_*.lua))
# The whole of `make stress` is cut off after this many seconds (a hang fails it).
STRESS_TIMEOUT ?= 240
# OpenResty's luajit2, unpacked into a private prefix (it conflicts with Debian's luajit).
LJ2_ROOT := $(BUILD)/luajit2
LJ2 := $(LJ2_ROOT)/usr/bin/luajit
LJ2_ENV := LD_LIBRARY_PATH=$(ROOT)/$(LJ2_ROOT)/usr/lib/x86_64-linux-gnu

export LUA_PATH := $(ROOT)/lua/?.lua;$(ROOT)/lua/?/init.lua;$(ROOT)/ffi/?.lua;$(ROOT)/test/?.lua;;
export LUA_CPATH := $(ROOT)/$(BUILD)/?.so;;

DEB_PKGS := build-essential clang luajit libluajit-5.1-dev lua-unit
.PHONY: all deps demo test test-c test-lua test-lj2 test-sanitize build-clang bench path clean luajit2 stress stress-tsan

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

test-c: $(addprefix $(BUILD)/,$(CTESTS))
	@for t in $(CTESTS); do echo "== C $$t"; $(BUILD)/$$t || exit 1; done

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
	  $(BUILD)/$$t-$$san || exit 1; done; done

test-lua: all
	@$(LUAJIT) -v
	@for t in $(LUA_TESTS); do echo "== $$t"; $(LUAJIT) $$t -o text || exit 1; done

test-lj2: all $(LJ2)
	$(MAKE) --no-print-directory test-lua LUAJIT="env $(LJ2_ENV) $(ROOT)/$(LJ2)"

# Everything: deps, the C core (plain and sanitized), the Lua suites on the
# chosen LuaJIT and, unless LUAJIT was given, on OpenResty's luajit2 too.
test: deps all build-clang test-c test-sanitize test-lua
ifeq ($(origin LUAJIT),file)
test: test-lj2
endif

# The stress suites (test/stress_*.lua): long seeded hammers, on the chosen
# LuaJIT (Debian's by default), all of them within STRESS_TIMEOUT seconds.
stress: deps all
	@$(LUAJIT) -v
	@timeout -k 10 $(STRESS_TIMEOUT) sh -c 'for t in $(STRESS_TESTS); do \
	  echo "== $$t"; $(LUAJIT) $$t -o text || exit 1; done' \
	  || { rc=$$?; [ $$rc = 124 ] && echo "make stress: cut off after $(STRESS_TIMEOUT) s"; exit $$rc; }

# The same suites on a ThreadSanitizer build of the library (not in CI: slow,
# and its timing is what it is for). gcc's runtime: clang 14's crashes luajit.
TSAN_RT = $(shell gcc -print-file-name=libtsan.so.2)
$(BUILD)/libisle-tsan.so: $(SRCS) $(HDRS) | $(BUILD)
	gcc -O1 -g -fsanitize=thread -fno-omit-frame-pointer $(WARN) $(PIC) $(LUAJIT_INC) -shared -o $@ $(SRCS) $(LUAJIT_LIB) -lm
stress-tsan: deps $(BUILD)/libisle-tsan.so
	@for t in $(STRESS_TESTS); do echo "== $$t (ThreadSanitizer)"; \
	  LD_PRELOAD=$(TSAN_RT) ISLE_LIB=$(ROOT)/$(BUILD)/libisle-tsan.so TSAN_OPTIONS="halt_on_error=1" \
	  STRESS_ROUNDS=$${STRESS_ROUNDS:-20} timeout -k 10 $(STRESS_TIMEOUT) $(LUAJIT) $$t -o text || exit 1; done

# The C floor of the benchmarks (bench/c/pingpong.c): the core, no Lua.
.PHONY: bench-floor
bench-floor: $(BUILD)/bench_pingpong
$(BUILD)/bench_pingpong: bench/c/pingpong.c $(CORE_SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -o $@ bench/c/pingpong.c $(CORE_SRCS) -lm

bench: deps all bench-floor
	$(LUAJIT) bench/run.lua $(BENCH_ARGS)

clean:
	rm -rf $(BUILD)
