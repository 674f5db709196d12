# isle - GNU Makefile. `make` builds build/libisle.so; `make demo`, `make test`,
# `make stress` (and `make stress-tsan`), `make bench` (and `make bench-nginx`), `make path` (shell exports for using isle from this checkout).

LUAJIT ?= luajit
CC ?= cc
# LuaRocks and distributions pass LUA_INCDIR/LUA_LIBDIR (where the Lua headers
# and library are), CFLAGS and LIBFLAG (how to link a shared library).
LUAJIT_INC ?= $(if $(LUA_INCDIR),-I$(LUA_INCDIR),$(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1))
LUAJIT_LIB ?= $(if $(LUA_LIBDIR),-L$(LUA_LIBDIR) -lluajit-5.1,$(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1))
CFLAGS ?= -O2 -g
LIBFLAG ?= -shared
WARN := -Wall -Wextra -Werror -std=c11 -D_GNU_SOURCE
PIC := -fPIC -pthread
# libisle.so's thread-locals (the block caches, cache.c) through TLS
# descriptors where the compiler has them for x86-64: a look-up is then a
# call that returns an offset (the dynamic linker places a dlopen'd library's
# TLS in the static block when it has room, else falls back to a slower
# path), instead of __tls_get_addr on every access (~10 instructions each,
# several per message). initial-exec would be cheaper still but can make
# dlopen (LuaJIT's ffi.load) fail when the static TLS block is used up.
# aarch64 uses descriptors already; other compilers reject the flag and
# get nothing.
# Probed with $(CC) and given only to its libisle.so builds (not to clang's
# or the aarch64 cross build, which take other values or none).
TLS_DIALECT := $(shell $(CC) -mtls-dialect=gnu2 -x c -c -o /dev/null /dev/null 2>/dev/null && echo -mtls-dialect=gnu2)
ROOT := $(abspath .)
BUILD := build
SRCS := csrc/clock.c csrc/cache.c csrc/bootheap.c csrc/arena.c csrc/mem.c csrc/msg.c csrc/task.c csrc/mbox.c csrc/sig.c csrc/watchdog.c csrc/fork.c csrc/notify.c csrc/chan.c csrc/buf.c csrc/pool.c csrc/threads.c csrc/preload.c csrc/isle.c csrc/state.c
HDRS := csrc/isle.h csrc/internal.h
# The C hosts' API (csrc/isle_host.h, docs/c-api.md): part of libisle.so.
SRCS += csrc/host.c
HDRS += csrc/isle_host.h
CORE_SRCS := csrc/clock.c csrc/cache.c csrc/bootheap.c csrc/arena.c csrc/mem.c csrc/msg.c csrc/task.c csrc/mbox.c csrc/sig.c csrc/watchdog.c csrc/fork.c csrc/notify.c csrc/chan.c csrc/buf.c csrc/pool.c csrc/threads.c
CTESTS := $(patsubst test/c/%.c,%,$(wildcard test/c/test_*.c))
# Test builds route the core's allocations through test/c/failalloc.c, which
# can fail the n-th one (docs/testing.md); the library itself never links it.
FAILALLOC := test/c/failalloc.c
WRAP_ALLOC := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=free
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
# The exact commands child processes of the suites run (test/helpers.lua),
# so `make test-lj2` tests luajit2 in them too.
export ISLE_TEST_LUAJIT = $(LUAJIT)
export ISLE_TEST_CC = $(CC)
# Bounds on the tests (seconds). A Lua suite's bound is enforced by
# test/run.lua, which names the stuck test; `timeout` is the backstop.
SUITE_TIMEOUT ?= 900
C_TEST_TIMEOUT ?= 600
export ISLE_TEST_SUITE_TIMEOUT = $(SUITE_TIMEOUT)

DEB_PKGS := build-essential clang luajit libluajit-5.1-dev lua-unit valgrind
# The host adapters' tests: luv (test/test_luv.lua), LÖVE under Xvfb (test/test_love.lua).
DEB_PKGS += lua-luv love xvfb xauth
# Packaging (test/test_package.lua, make test-dist): luarocks, pkg-config.
DEB_PKGS += luarocks pkg-config
# The static checks (make lint): luacheck, cppcheck, clang-tidy, clang-format.
DEB_PKGS += lua-check cppcheck clang-tidy clang-format
# Wanted but not required: without it check-aarch64 says it is skipped.
DEB_OPTIONAL := gcc-aarch64-linux-gnu
AARCH64_CC ?= aarch64-linux-gnu-gcc
.PHONY: all deps demo test test-c test-host test-lua test-lj2 test-sanitize test-valgrind build-clang check-aarch64 bench path clean luajit2 stress stress-tsan

all: $(BUILD)/libisle.so

$(BUILD)/libisle.so: $(SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) $(PIC) $(TLS_DIALECT) $(LUAJIT_INC) $(LIBFLAG) -Wl,-z,nodelete -o $@ $(SRCS) $(LUAJIT_LIB) -lm

$(BUILD):
	mkdir -p $(BUILD)

# The set-up of a Debian machine, which the README's two commands start with:
# the Debian packages the tests need (installed when run as root; otherwise
# the exact command is printed), then OpenResty's luajit2 and the nginx Lua
# module unpacked privately under build/ (they conflict with Debian's luajit;
# apt-get download and dpkg -x need no root).
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "isle's tests need Debian packages that are missing; as root run:"; \
	    echo "  apt-get update && apt-get install -y$$missing"; \
	    echo "then \`make deps\` again, as any user: it unpacks OpenResty's luajit2 into $(LJ2_ROOT) and"; \
	    echo "the nginx Lua module into $(NGX_ROOT) (\`make luajit2 nginx-lua\`: apt-get download, dpkg -x)."; \
	    exit 1; fi; \
	fi
	@missing=""; for p in $(DEB_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
	      || echo "NOTE: could not install$$missing (optional): check-aarch64 will be skipped"; \
	  else echo "NOTE: optional packages missing (check-aarch64 will be skipped); run: sudo apt-get install -y$$missing"; fi; \
	fi
	@$(MAKE) --no-print-directory $(LJ2) $(NGX_MOD)

# apt-get download $(1) into the current directory. A fresh machine has no
# package lists: as root they are fetched first, otherwise the command is named.
APT_DOWNLOAD = apt-get download $(1) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download $(1); } \
	|| { echo "apt-get download failed; if the package lists are missing, run as root: apt-get update"; exit 1; }

luajit2: $(LJ2)
$(LJ2):
	@mkdir -p $(LJ2_ROOT)/debs
	cd $(LJ2_ROOT)/debs && { $(call APT_DOWNLOAD,luajit2 libluajit2-5.1-2 libluajit2-5.1-common); }
	for f in $(LJ2_ROOT)/debs/*.deb; do dpkg -x $$f $(LJ2_ROOT); done
	@test -x $@

path:
	@echo 'export LUA_PATH="$(ROOT)/lua/?.lua;$(ROOT)/lua/?/init.lua;$(ROOT)/ffi/?.lua;$${LUA_PATH:-;}"'
	@echo 'export LUA_CPATH="$(ROOT)/$(BUILD)/?.so;$${LUA_CPATH:-;}"'

demo: deps all
	$(LUAJIT) examples/demo.lua

$(BUILD)/test_%: test/c/test_%.c $(CORE_SRCS) $(HDRS) test/c/check.h test/c/alloc_sweep.h $(FAILALLOC) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -o $@ $< $(CORE_SRCS) $(FAILALLOC) $(WRAP_ALLOC) -lm

# Runs a C test binary ($$t names it) under `timeout`, failing with its name.
C_RUN = timeout -k 10 $(C_TEST_TIMEOUT)
C_TIMED_OUT = { [ $$rc = 124 ] || [ $$rc = 137 ]; } && echo "FAILED: C test $$t: no result within $(C_TEST_TIMEOUT) s (timeout)"

test-c: $(addprefix $(BUILD)/,$(CTESTS))
	@for t in $(CTESTS); do echo "== C $$t"; \
	  $(C_RUN) $(BUILD)/$$t; rc=$$?; [ $$rc = 0 ] || { $(C_TIMED_OUT); exit 1; }; done

# A C program that embeds LuaJIT closes its state while isles are busy, then
# uses isle from new states (test/host/embed.c): under valgrind, which fails
# it on any invalid access (e.g. code running in an unmapped libisle.so).
$(BUILD)/embed: test/host/embed.c | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) $(LUAJIT_INC) -o $@ $< $(LUAJIT_LIB) -lm

test-host: all $(BUILD)/embed
	@echo "== C host embedding LuaJIT, under valgrind"
	timeout 120 valgrind -q --error-exitcode=9 $(BUILD)/embed "$(LUA_PATH)" "$(LUA_CPATH)"

# The library must build warning-free with clang as well as gcc.
build-clang: | $(BUILD)
	@mkdir -p $(BUILD)/clang
	clang $(CFLAGS) $(WARN) $(PIC) $(LUAJIT_INC) -shared -Wl,-z,nodelete -o $(BUILD)/clang/libisle.so $(SRCS) $(LUAJIT_LIB) -lm

# The C core under ThreadSanitizer and AddressSanitizer (clang or gcc).
test-sanitize: | $(BUILD)
	@for san in thread address; do for t in $(CTESTS); do \
	  echo "== C $$t under $$san sanitizer"; \
	  $(CC) -O1 -g -fsanitize=$$san -fno-omit-frame-pointer $(WARN) -pthread -Icsrc \
	    -o $(BUILD)/$$t-$$san test/c/$$t.c $(CORE_SRCS) $(FAILALLOC) $(WRAP_ALLOC) -lm || exit 1; \
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
test-lua: all $(BUILD)/libisle-failalloc.so
	@$(LUAJIT) -v
	@for t in $(LUA_TESTS); do echo "== $$t"; \
	  timeout -k 10 $$(($(SUITE_TIMEOUT) + 60)) $(LUAJIT) test/run.lua $$t -o text; rc=$$?; \
	  [ $$rc = 124 ] && echo "FAILED: $$t: no result within $$(($(SUITE_TIMEOUT) + 60)) s (suite timeout)"; \
	  [ $$rc = 0 ] || exit 1; done

# No block allocated through isle's C code may be lost at exit (valgrind).
test-valgrind: all
	@echo "== valgrind leak check (test/valgrind/leaks.lua)"
	@test/valgrind/check.sh $(LUAJIT)

test-lj2: all $(LJ2)
	$(MAKE) --no-print-directory test-lua LUAJIT="env $(LJ2_ENV) $(ROOT)/$(LJ2)"

# Everything: deps, the C core (plain and sanitized), the Lua suites on the
# chosen LuaJIT and, unless LUAJIT was given, on OpenResty's luajit2 too.
test: deps all build-clang check-aarch64 test-c test-sanitize test-host test-lua test-valgrind
ifeq ($(origin LUAJIT),file)
test: test-lj2
endif

# Out of memory at every allocation site of isle_spawn (test/c/spawn_alloc.c),
# plain and under AddressSanitizer. The library with the failing allocator is
# also what test/test_memory.lua runs on. The test binary links it instead of
# the sources, since the isles it starts load it through the FFI: one copy.
.PHONY: test-alloc
ALLOC_ASAN := -O1 -g -fsanitize=address -fno-omit-frame-pointer
ALLOC_DEPS := $(SRCS) $(HDRS) $(FAILALLOC) test/c/failalloc.h
$(BUILD)/libisle-failalloc.so: $(ALLOC_DEPS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) $(PIC) $(TLS_DIALECT) $(LUAJIT_INC) -shared -Wl,-z,nodelete -o $@ $(SRCS) $(FAILALLOC) $(WRAP_ALLOC) $(LUAJIT_LIB) -lm
$(BUILD)/asan/libisle-failalloc.so: $(ALLOC_DEPS) | $(BUILD)
	@mkdir -p $(BUILD)/asan
	$(CC) $(ALLOC_ASAN) $(WARN) $(PIC) $(TLS_DIALECT) $(LUAJIT_INC) -shared -Wl,-z,nodelete -o $@ $(SRCS) $(FAILALLOC) $(WRAP_ALLOC) $(LUAJIT_LIB) -lm
$(BUILD)/spawn_alloc: test/c/spawn_alloc.c test/c/alloc_sweep.h test/c/check.h $(BUILD)/libisle-failalloc.so
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -Itest/c $(LUAJIT_INC) -o $@ $< \
	  -L$(BUILD) -lisle-failalloc -Wl,-rpath,$(ROOT)/$(BUILD) $(LUAJIT_LIB) -ldl -lm
$(BUILD)/spawn_alloc-asan: test/c/spawn_alloc.c test/c/alloc_sweep.h test/c/check.h $(BUILD)/asan/libisle-failalloc.so
	$(CC) $(ALLOC_ASAN) $(WARN) -pthread -Icsrc -Itest/c $(LUAJIT_INC) -o $@ $< \
	  -L$(BUILD)/asan -lisle-failalloc -Wl,-rpath,$(ROOT)/$(BUILD)/asan $(LUAJIT_LIB) -ldl -lm
test-alloc: $(BUILD)/spawn_alloc $(BUILD)/spawn_alloc-asan
	@echo "== C spawn_alloc"; $(BUILD)/spawn_alloc
	@echo "== C spawn_alloc under address sanitizer"; $(BUILD)/spawn_alloc-asan
test: test-alloc

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
	gcc -O1 -g -fsanitize=thread -fno-omit-frame-pointer $(WARN) $(PIC) $(LUAJIT_INC) -shared -Wl,-z,nodelete -o $@ $(SRCS) $(LUAJIT_LIB) -lm
stress-tsan: deps $(BUILD)/libisle-tsan.so
	@for t in $(STRESS_TESTS); do echo "== $$t (ThreadSanitizer)"; \
	  LD_PRELOAD=$(TSAN_RT) ISLE_LIB=$(ROOT)/$(BUILD)/libisle-tsan.so \
	  TSAN_OPTIONS="halt_on_error=1 suppressions=$(ROOT)/test/tsan.supp" \
	  STRESS_ROUNDS=$${STRESS_ROUNDS:-20} timeout -k 10 $(STRESS_TIMEOUT) $(LUAJIT) $$t -o text || exit 1; done

# The C floors of the benchmarks: bench/c/plain_floor.c (ping, stream and a
# thread running a LuaJIT state, no isle code), bench/c/pingpong.c (isle's own
# core, no Lua) and bench/c/state_floor.c (a mutex and lua_pcall in a plain lua_State, no isle).
.PHONY: bench-floor
bench-floor: $(BUILD)/bench_plain_floor $(BUILD)/bench_pingpong $(BUILD)/bench_state_floor $(BUILD)/bench_alloc
$(BUILD)/bench_plain_floor: bench/c/plain_floor.c | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -rdynamic $(LUAJIT_INC) -o $@ $< $(LUAJIT_LIB) -lm
$(BUILD)/bench_pingpong: bench/c/pingpong.c $(CORE_SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -o $@ bench/c/pingpong.c $(CORE_SRCS) -lm
$(BUILD)/bench_state_floor: bench/c/state_floor.c | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread $(LUAJIT_INC) -o $@ $< $(LUAJIT_LIB) -lm
# The allocator's floor (bench/c/alloc.c): LuaJIT's allocator plain and wrapped by csrc/mem.c.
$(BUILD)/bench_alloc: bench/c/alloc.c $(CORE_SRCS) $(HDRS) | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc $(LUAJIT_INC) -o $@ bench/c/alloc.c $(CORE_SRCS) $(LUAJIT_LIB) -lm

# The floor of bench/w_chan.lua: a mutex + condvar ring in plain C.
$(BUILD)/bench_chan_floor: bench/c/chan_floor.c | $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -o $@ $<

bench: deps all bench-floor
	$(LUAJIT) bench/run.lua $(BENCH_ARGS)

clean:
	rm -rf $(BUILD)

# Install and packaging (docs/install.md). The conventions of LuaRocks and
# distributions: PREFIX, DESTDIR in front of every path, LUADIR for the Lua
# modules, LIBDIR for libisle.so; the header and a pkg-config file for C
# (none when PKGCONFIGDIR is empty).
PREFIX ?= /usr/local
LUADIR ?= $(PREFIX)/share/lua/5.1
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL ?= install
VERSION := $(shell sed -n 's/.*_VERSION = "\([^"]*\)".*/\1/p' lua/isle.lua | head -n 1)
# Every module `make install` puts under LUADIR: isle is lua/isle.lua, isle.cdef
# is ffi/isle/cdef.lua (installed as isle/cdef.lua), isle.X is lua/isle/X.lua.
# test/test_package.lua checks this list and the rockspec's against lua/ and ffi/.
ISLE_MODULES := isle isle.cdef isle.chunks isle.codec isle.codec_check isle.combine isle.errors isle.errors_describe isle.fnsource \
	isle.buffer isle.channel isle.handle isle.hub isle.instrument isle.interrupt isle.interrupt_api isle.lazy isle.libs isle.loaders isle.luv isle.ngx \
	isle.pool isle.proto isle.runtime isle.sandbox isle.sched isle.sched_wait isle.state isle.task isle.token isle.wire isle.worker
module_src = $(if $(filter isle,$(1)),lua/isle.lua,$(if $(filter isle.cdef,$(1)),ffi/isle/cdef.lua,lua/isle/$(patsubst isle.%,%,$(1)).lua))
module_dst = $(DESTDIR)$(LUADIR)/$(subst .,/,$(1)).lua
.PHONY: install uninstall dist test-dist

install: all
	$(INSTALL) -d $(DESTDIR)$(LUADIR)/isle $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR) $(if $(PKGCONFIGDIR),$(DESTDIR)$(PKGCONFIGDIR))
	@echo '$(INSTALL) -m 644 <$(words $(ISLE_MODULES)) Lua modules> $(DESTDIR)$(LUADIR)'
	@$(foreach m,$(ISLE_MODULES),$(INSTALL) -m 644 $(call module_src,$(m)) $(call module_dst,$(m)) && ) true
	$(INSTALL) -m 755 $(BUILD)/libisle.so $(DESTDIR)$(LIBDIR)/libisle.so
	$(INSTALL) -m 644 csrc/isle.h $(DESTDIR)$(INCDIR)/isle.h
	$(INSTALL) -m 644 csrc/isle_host.h $(DESTDIR)$(INCDIR)/isle_host.h
	[ -z '$(PKGCONFIGDIR)' ] || printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCDIR)' '' 'Name: isle' \
	  'Description: isolated LuaJIT states on their own OS threads (the C core)' 'Version: $(VERSION)' \
	  'Libs: -L$${libdir} -lisle' 'Cflags: -I$${includedir}' > $(DESTDIR)$(PKGCONFIGDIR)/isle.pc

uninstall:
	rm -f $(foreach m,$(ISLE_MODULES),$(call module_dst,$(m))) $(DESTDIR)$(LIBDIR)/libisle.so \
	  $(DESTDIR)$(INCDIR)/isle.h $(DESTDIR)$(INCDIR)/isle_host.h $(if $(PKGCONFIGDIR),$(DESTDIR)$(PKGCONFIGDIR)/isle.pc)
	[ ! -d $(DESTDIR)$(LUADIR)/isle ] || rmdir --ignore-fail-on-non-empty $(DESTDIR)$(LUADIR)/isle

# The release tarball: the sources, docs, examples, tests and the rockspec,
# under isle-<version>/ (the version is lua/isle.lua's _VERSION).
DIST := $(BUILD)/isle-$(VERSION).tar.gz
DIST_FILES := Makefile README.md .luacheckrc .clang-tidy .clang-format csrc ffi lua docs examples rockspecs test bench
dist: | $(BUILD)
	tar -czf $(DIST) --sort=name --owner=0 --group=0 --numeric-owner --exclude-vcs \
	  --transform 's,^,isle-$(VERSION)/,' $(DIST_FILES)
	@echo "$(DIST)"

# The tarball unpacked in a temporary directory, built, installed (DESTDIR and
# PREFIX=/usr; and LUADIR = LIBDIR, as for OpenResty's lualib), then a smoke
# script run against the installed copy only, on Debian's luajit and on
# OpenResty's luajit2; uninstall leaves nothing behind (test/package/).
test-dist: dist $(LJ2)
	@echo "== test/package/test_dist.lua ($(DIST))"
	@ISLE_DIST=$(ROOT)/$(DIST) ISLE_TEST_LJ2="env $(LJ2_ENV) $(ROOT)/$(LJ2)" \
	  timeout -k 10 600 $(LUAJIT) test/run.lua test/package/test_dist.lua -o text
test: test-dist

# isle inside a real nginx (issue 7: teardown at reload, fork; docs/testing.md).
# Debian's nginx binary comes from apt-get install (deps); the Lua module, its
# NDK and lua-resty-core/lrucache are unpacked privately into build/nginx-lua,
# because installing libnginx-mod-http-lua would replace Debian's luajit with
# OpenResty's luajit2, which the module needs: it runs on build/luajit2's.
.PHONY: nginx-deps nginx-lua test-nginx bench-nginx
NGX_ROOT := $(BUILD)/nginx-lua
NGX_MOD := $(NGX_ROOT)/usr/lib/nginx/modules/ngx_http_lua_module.so
NGX_DEBS := libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache
DEB_PKGS += nginx curl libpcre3 procps
nginx-deps: deps $(LJ2) $(NGX_MOD)
nginx-lua: $(NGX_MOD)
$(NGX_MOD):
	@mkdir -p $(NGX_ROOT)/debs
	cd $(NGX_ROOT)/debs && { $(call APT_DOWNLOAD,$(NGX_DEBS)); }
	for f in $(NGX_ROOT)/debs/*.deb; do dpkg -x $$f $(NGX_ROOT); done
	@test -f $@
# The library as it was before the fix (no -z nodelete, no RTLD_NODELETE pin):
# the reload test shows that its crash detector catches that library's crashes.
$(BUILD)/nopin/libisle.so: $(SRCS) $(HDRS)
	@mkdir -p $(BUILD)/nopin/csrc
	sed 's/^ *pthread_once(&pin_once, pin_library);//' csrc/isle.c > $(BUILD)/nopin/csrc/isle.c
	! grep -q 'pthread_once(&pin_once' $(BUILD)/nopin/csrc/isle.c
	$(CC) $(CFLAGS) $(WARN) -Wno-unused-function -Wno-unused-variable $(PIC) $(LUAJIT_INC) -Icsrc -shared -o $@ \
	  $(filter-out csrc/isle.c,$(SRCS)) $(BUILD)/nopin/csrc/isle.c $(LUAJIT_LIB) -lm
test-nginx: all nginx-deps $(BUILD)/nopin/libisle.so
	@echo "== nginx with lua-nginx-module on OpenResty's luajit2"
	ISLE_ROOT=$(ROOT) timeout 900 $(LUAJIT) test/nginx/test_nginx.lua -o text
	@echo "== nginx: the OpenResty adapter (waits yield to nginx)"
	ISLE_ROOT=$(ROOT) timeout 600 $(LUAJIT) test/nginx/test_ngx_async.lua -o text
	@echo "== examples/openresty (run.sh --check)"
	PORT=$$($(LUAJIT) -e 'math.randomseed(os.time()) print(20000 + math.random(20000))') timeout 120 examples/openresty/run.sh --check
test: test-nginx

# isle in a real nginx against ngx.run_worker_thread (bench/nginx.lua, see
# bench/README.md): one worker, batches of 50 requests, a plain request's
# latency meanwhile, the idle worker's CPU. Every batch has its own deadline;
# `timeout` is the backstop. BENCH_NGINX_ARGS: --quick, --reps N.
bench-nginx: all nginx-deps
	ISLE_ROOT=$(ROOT) timeout -k 10 1800 $(LUAJIT) bench/nginx.lua $(BENCH_NGINX_ARGS)

# The C hosts' API (csrc/isle_host.h, docs/c-api.md): test/c/host_api.c plain
# and under AddressSanitizer, linked like spawn_alloc to the library with
# the failing allocator (its allocation sweeps); and examples/c-host built
# against build/libisle.so and run under valgrind, as a user would build it.
.PHONY: test-chost example-c-host
HOST_TEST_DEPS := test/c/host_api.c test/c/alloc_sweep.h test/c/check.h csrc/isle_host.h
$(BUILD)/host_api: $(HOST_TEST_DEPS) $(BUILD)/libisle-failalloc.so
	$(CC) $(CFLAGS) $(WARN) -pthread -Icsrc -Itest/c -o $@ $< \
	  -L$(BUILD) -lisle-failalloc -Wl,-rpath,$(ROOT)/$(BUILD) -ldl -lm
$(BUILD)/host_api-asan: $(HOST_TEST_DEPS) $(BUILD)/asan/libisle-failalloc.so
	$(CC) $(ALLOC_ASAN) $(WARN) -pthread -Icsrc -Itest/c -o $@ $< \
	  -L$(BUILD)/asan -lisle-failalloc -Wl,-rpath,$(ROOT)/$(BUILD)/asan -ldl -lm
$(BUILD)/c-host: examples/c-host/main.c csrc/isle_host.h $(BUILD)/libisle.so
	$(CC) $(CFLAGS) $(WARN) -Icsrc -o $@ $< -L$(BUILD) -lisle -Wl,-rpath,$(ROOT)/$(BUILD) -lm
example-c-host: $(BUILD)/c-host
	@echo "== examples/c-host under valgrind"
	timeout 300 valgrind -q --error-exitcode=9 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
	  --smc-check=all-non-file $(BUILD)/c-host
test-chost: $(BUILD)/host_api $(BUILD)/host_api-asan example-c-host
	@t=host_api; echo "== C $$t"; $(C_RUN) $(BUILD)/$$t; rc=$$?; [ $$rc = 0 ] || { $(C_TIMED_OUT); exit 1; }
	@t=host_api-asan; echo "== C host_api under address sanitizer"; $(C_RUN) $(BUILD)/$$t; rc=$$?; \
	  [ $$rc = 0 ] || { $(C_TIMED_OUT); exit 1; }
test: test-chost

# What the C hosts' API costs against the C floor (bench/c/host_call.c).
.PHONY: bench-chost
$(BUILD)/bench_host_call: bench/c/host_call.c csrc/isle_host.h $(BUILD)/libisle.so
	$(CC) $(CFLAGS) $(WARN) -Icsrc -o $@ $< -L$(BUILD) -lisle -Wl,-rpath,$(ROOT)/$(BUILD) -lm
bench-chost: bench-floor $(BUILD)/bench_host_call
	$(BUILD)/bench_host_call $(BENCH_ARGS)

# Static checks, run by `make test` (so in CI). What each tool checks and why
# any check is off: .luacheckrc (Lua: globals, unused variables and
# arguments), .clang-tidy (csrc/), the cppcheck flags below, .clang-format.
# test/test_static.lua keeps its own check that no module sets a global
# (luajit -bl), which sees what luacheck cannot: the bytecode isles run.
# FORMAT_FILES are the C files clang-format checks: those already in its
# style (the others are formatted, then added, after the branches that
# change them have merged: clang-format -i csrc/*.c csrc/*.h).
.PHONY: lint
LINT_LUA := lua ffi test bench examples
FORMAT_FILES := $(wildcard csrc/*.c csrc/*.h)
# cppcheck: every check family but `information`, POSIX functions known.
# constParameter (style) is off: it asks for const on pointers that the API
# in isle.h takes as handles (isle_task_unwatch(t, mb, sig)), fixed by the FFI.
CPPCHECK_FLAGS := --std=c11 --library=posix --enable=warning,style,performance,portability \
	--suppress=constParameter --inline-suppr --error-exitcode=1 -q -D_GNU_SOURCE -Icsrc
lint:
	@for t in luacheck cppcheck clang-tidy clang-format; do command -v $$t >/dev/null || { \
	  echo "make lint: $$t not found (Debian packages lua-check cppcheck clang-tidy clang-format: make deps)"; exit 1; }; done
	@echo "== lint: luacheck (.luacheckrc)"
	@luacheck -q --no-color $(LINT_LUA)
	@echo "== lint: cppcheck csrc/"
	@cppcheck $(CPPCHECK_FLAGS) $(SRCS)
	@echo "== lint: clang-tidy csrc/ (.clang-tidy)"
	@out=$$(clang-tidy -quiet $(SRCS) -- $(WARN) -Icsrc $(LUAJIT_INC) 2>&1); rc=$$?; \
	  printf '%s\n' "$$out" | grep -v 'warnings\? generated\.$$' || true; exit $$rc
	@echo "== lint: clang-format (.clang-format) on $(words $(FORMAT_FILES)) files"
	@clang-format --dry-run -Werror $(FORMAT_FILES)
test: lint
