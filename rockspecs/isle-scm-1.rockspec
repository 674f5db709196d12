-- isle for LuaRocks: `luarocks make rockspecs/isle-scm-1.rockspec` in a
-- checkout or an unpacked release (docs/install.md). LuaJIT 2.1 only: the Lua
-- side is FFI. LuaRocks runs `make` (libisle.so) and `make install` with its
-- own directories; the loader (isle/cdef.lua) then finds libisle.so in the
-- tree's lib/lua/5.1, beside the modules.
rockspec_format = "3.0"
package = "isle"
version = "scm-1"
source = {
   -- No public repository is named yet; `luarocks make` builds from the
   -- directory it runs in and never fetches this.
   url = "git+file://./isle",
}
description = {
   summary = "Isolated LuaJIT states on their own OS threads",
   detailed = [[
Runs Lua code in isolated LuaJIT states, each on its own OS thread: values,
errors and tracebacks come back as copies, and a runaway script is stopped at
once even after the JIT has compiled it. Awaitable from OpenResty, luv and
game loops. Needs LuaJIT 2.1 (Debian's luajit or OpenResty's luajit2) on Linux.
]],
   labels = { "luajit", "ffi", "threads", "concurrency", "openresty" },
}
supported_platforms = { "linux" }
dependencies = {
   "lua == 5.1",
}
build = {
   type = "make",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      LUA_LIBDIR = "$(LUA_LIBDIR)",
   },
   install_variables = {
      PREFIX = "$(PREFIX)",
      LUADIR = "$(LUADIR)",
      LIBDIR = "$(LIBDIR)",
      -- LuaRocks deploys Lua and lib files only: the header stays in the
      -- rock's directory (luarocks show isle names it), and no isle.pc,
      -- whose libdir would name a directory LuaRocks empties.
      INCDIR = "$(PREFIX)/include",
      PKGCONFIGDIR = "",
   },
   -- What `make install` puts under LUADIR (LuaRocks' make build installs
   -- through the Makefile and does not read this list; test/test_package.lua
   -- checks it against lua/, ffi/, the Makefile and what luarocks installs).
   modules = {
      ["isle"] = "lua/isle.lua",
      ["isle.cdef"] = "ffi/isle/cdef.lua",
      ["isle.chunks"] = "lua/isle/chunks.lua",
      ["isle.codec"] = "lua/isle/codec.lua",
      ["isle.codec_check"] = "lua/isle/codec_check.lua",
      ["isle.lazy"] = "lua/isle/lazy.lua",
      ["isle.combine"] = "lua/isle/combine.lua",
      ["isle.errors"] = "lua/isle/errors.lua",
      ["isle.errors_describe"] = "lua/isle/errors_describe.lua",
      ["isle.fnsource"] = "lua/isle/fnsource.lua",
      ["isle.buffer"] = "lua/isle/buffer.lua",
      ["isle.channel"] = "lua/isle/channel.lua",
      ["isle.handle"] = "lua/isle/handle.lua",
      ["isle.hub"] = "lua/isle/hub.lua",
      ["isle.instrument"] = "lua/isle/instrument.lua",
      ["isle.interrupt"] = "lua/isle/interrupt.lua",
      ["isle.interrupt_api"] = "lua/isle/interrupt_api.lua",
      ["isle.libs"] = "lua/isle/libs.lua",
      ["isle.loaders"] = "lua/isle/loaders.lua",
      ["isle.luv"] = "lua/isle/luv.lua",
      ["isle.ngx"] = "lua/isle/ngx.lua",
      ["isle.pool"] = "lua/isle/pool.lua",
      ["isle.proto"] = "lua/isle/proto.lua",
      ["isle.runtime"] = "lua/isle/runtime.lua",
      ["isle.sandbox"] = "lua/isle/sandbox.lua",
      ["isle.sched"] = "lua/isle/sched.lua",
      ["isle.sched_wait"] = "lua/isle/sched_wait.lua",
      ["isle.state"] = "lua/isle/state.lua",
      ["isle.task"] = "lua/isle/task.lua",
      ["isle.token"] = "lua/isle/token.lua",
      ["isle.wire"] = "lua/isle/wire.lua",
      ["isle.worker"] = "lua/isle/worker.lua",
   },
}
