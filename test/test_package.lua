-- Packaging (docs/install.md): `make install` and the rockspec carry every
-- module of lua/ and ffi/; `luarocks make` installs a tree isle runs from
-- with only that tree's paths; the loader's search and its error; every
-- state of a process loads the same libisle.so.
-- (make test-dist installs the release tarball: test/package/test_dist.lua.)
local lu = require("luaunit")
local helpers = require("test.helpers")
local pkg = require("test.package.lib")
local quote, run, sh = pkg.quote, pkg.run, pkg.sh
local ROOT = pkg.ROOT

local function sorted_keys(t)
    local list = {}
    for k in pairs(t) do list[#list + 1] = k end
    table.sort(list)
    return list
end

TestModuleLists = {}

function TestModuleLists:test_rockspec_lists_every_module_of_lua_and_ffi()
    local mods = pkg.source_modules()
    lu.assertTrue(mods["isle"] ~= nil and mods["isle.cdef"] ~= nil and mods["isle.worker"] ~= nil)
    local spec = pkg.rockspec()
    lu.assertEquals(sorted_keys(spec.build.modules), sorted_keys(mods),
        "rockspecs/isle-scm-1.rockspec's build.modules differs from lua/ and ffi/")
    for name, file in pairs(mods) do lu.assertEquals(spec.build.modules[name], file, name) end
end

function TestModuleLists:test_rockspec_builds_with_make_and_passes_luarocks_variables()
    local spec = pkg.rockspec()
    lu.assertEquals(spec.package, "isle")
    lu.assertEquals(spec.version, "scm-1")
    lu.assertEquals(spec.build.type, "make")
    for _, v in ipairs({ "CFLAGS", "LIBFLAG", "LUA_INCDIR", "LUA_LIBDIR" }) do
        lu.assertEquals(spec.build.build_variables[v], "$(" .. v .. ")", v)
    end
    for _, v in ipairs({ "PREFIX", "LUADIR", "LIBDIR" }) do
        lu.assertEquals(spec.build.install_variables[v], "$(" .. v .. ")", v)
    end
end

-- The Makefile's install list, by what `make install` does: exactly the
-- modules of lua/ and ffi/ (isle.cdef as isle/cdef.lua), the library, the
-- header and isle.pc; `make uninstall` removes all of it.
function TestModuleLists:test_make_install_installs_every_module_and_uninstall_removes_them()
    local dir = pkg.tmpdir()
    local ok, err = pcall(function()
        local make = "make -s -C " .. quote(ROOT) .. " DESTDIR=" .. quote(dir .. "/stage") .. " PREFIX=/usr "
        run(make .. "install")
        local expect = {}
        local mods = pkg.source_modules()
        for name, file in pairs(mods) do
            local dest = "usr/share/lua/5.1/" .. name:gsub("%.", "/") .. ".lua"
            expect[#expect + 1] = dest
            lu.assertEquals(pkg.read(dir .. "/stage/" .. dest), pkg.read(ROOT .. "/" .. file), dest)
        end
        for _, f in ipairs({ "usr/lib/libisle.so", "usr/include/isle.h", "usr/include/isle_host.h", "usr/lib/pkgconfig/isle.pc" }) do
            expect[#expect + 1] = f
        end
        table.sort(expect)
        lu.assertEquals(pkg.files(dir .. "/stage"), expect)
        local pc = pkg.read(dir .. "/stage/usr/lib/pkgconfig/isle.pc")
        lu.assertStrContains(pc, "Version: " .. require("isle")._VERSION .. "\n")
        lu.assertStrContains(pc, "libdir=/usr/lib\n")
        lu.assertStrContains(pc, "includedir=/usr/include\n")
        run(make .. "uninstall")
        lu.assertEquals(pkg.files(dir .. "/stage"), {})
        local _, rc = sh("test -e " .. quote(dir .. "/stage/usr/share/lua/5.1/isle"))
        lu.assertNotEquals(rc, 0, "uninstall left the directory isle/ under LUADIR")
    end)
    pkg.rmdir(dir)
    if not ok then error(err, 0) end
end

TestLuaRocks = { deadline = 300 }

function TestLuaRocks:setUp() self.dir = pkg.tmpdir() end
function TestLuaRocks:tearDown() pkg.rmdir(self.dir) end

-- LuaRocks in a HOME of its own (nothing of the user's configuration or
-- cache): as Debian configures it, for lua5.1 (it then builds against
-- lua5.1's headers, whose API LuaJIT's is), or set up for LuaJIT.
local function luarocks_env(dir, for_luajit)
    run("mkdir -p " .. quote(dir .. "/home"))
    local env = "HOME=" .. quote(dir .. "/home") .. " "
    if not for_luajit then return env end
    local incdir = run("pkg-config --cflags luajit"):match("%-I(%S+)") or "/usr/include/luajit-2.1"
    local libdir = run("pkg-config --variable=libdir luajit"):match("(%S+)")
    local f = assert(io.open(dir .. "/config.lua", "w"))
    f:write(("lua_interpreter = 'luajit'\nvariables = { LUA_DIR = '/usr', LUA_BINDIR = '/usr/bin', "
        .. "LUA_INCDIR = %q, LUA_LIBDIR = %q }\n"):format(incdir, libdir))
    f:close()
    return env .. "LUAROCKS_CONFIG=" .. quote(dir .. "/config.lua") .. " "
end

local function luarocks_make(dir, for_luajit)
    local out, rc = sh("command -v luarocks")
    lu.assertEquals(rc, 0, "luarocks is not installed (Debian package luarocks: make deps installs it)\n" .. out)
    -- A copy of the checkout without its build: luarocks builds it itself.
    local src = dir .. "/src"
    run("mkdir " .. quote(src) .. " && tar -C " .. quote(ROOT)
        .. " -cf - --exclude=./build --exclude=./.git . | tar -C " .. quote(src) .. " -xf -")
    local env = luarocks_env(dir, for_luajit)
    local tree = dir .. "/tree"
    local log = run("cd " .. quote(src) .. " && " .. env .. "luarocks make --tree " .. quote(tree)
        .. " rockspecs/isle-scm-1.rockspec")
    lu.assertStrContains(log, for_luajit and "luajit-2.1" or "lua5.1", false, "the headers LuaRocks named")
    -- What LuaRocks records as installed: the rockspec's modules and the library.
    local listed = run(env .. "luarocks show --modules isle --tree " .. quote(tree))
    local got = {}
    for name in listed:gmatch("[^\n]+") do got[#got + 1] = name end
    table.sort(got)
    local want = sorted_keys(pkg.rockspec().build.modules)
    want[#want + 1] = "libisle"
    table.sort(want)
    lu.assertEquals(got, want)
    -- Required from the tree with only the tree's paths; the library is
    -- found in the tree's lib/lua/5.1 (package.cpath names it too).
    local smoke = pkg.smoke(helpers.luajit(), dir, tree, tree .. "/share/lua/5.1", tree .. "/lib/lua/5.1")
    lu.assertStrContains(smoke, tree .. "/lib/lua/5.1/libisle.so")
    -- And with package.cpath naming nothing: found beside the modules.
    smoke = pkg.smoke(helpers.luajit(), dir, tree, tree .. "/share/lua/5.1", dir .. "/nowhere")
    lu.assertStrContains(smoke, tree .. "/lib/lua/5.1/libisle.so")
end

function TestLuaRocks:test_luarocks_make_as_debian_configures_it()
    luarocks_make(self.dir, false)
end

function TestLuaRocks:test_luarocks_make_set_up_for_luajit()
    luarocks_make(self.dir, true)
end

TestLoader = {}

-- setUp copies the modules, without the library, to dir/lua.
function TestLoader:setUp()
    self.dir = pkg.tmpdir()
    local dir = self.dir
    run("mkdir -p " .. quote(dir .. "/lua/isle") .. " && cp " .. quote(ROOT) .. "/lua/isle.lua "
        .. quote(dir .. "/lua/") .. " && cp " .. quote(ROOT) .. "/lua/isle/*.lua " .. quote(ROOT)
        .. "/ffi/isle/cdef.lua " .. quote(dir .. "/lua/isle/"))
end
function TestLoader:tearDown() pkg.rmdir(self.dir) end

-- A child process whose LUA_PATH has only dir/lua and whose package.cpath
-- names only dir/nowhere.
local function child(dir, env, code)
    return sh(("cd %s && LUA_PATH=%s LUA_CPATH=%s %s %s -e %s"):format(quote(dir),
        quote(dir .. "/lua/?.lua"), quote(dir .. "/nowhere/?.so"), env, helpers.luajit(), quote(code)))
end

function TestLoader:test_error_lists_every_place_it_looked_and_what_to_do()
    local dir = self.dir
    local out, rc = child(dir, "", "require('isle')")
    if rc == 0 then
        -- Only if this machine has a libisle.so on its system library path.
        lu.assertStrContains(child(dir, "", "print(require('isle.cdef').path)"), "isle")
        return
    end
    lu.assertStrContains(out, "isle: cannot find the C library libisle.so; looked at")
    lu.assertStrContains(out, "ISLE_LIB: not set")
    lu.assertStrContains(out, "beside the modules: " .. dir .. "/lua/isle/libisle.so, " .. dir .. "/lua/libisle.so")
    lu.assertStrContains(out, "package.cpath: " .. dir .. "/nowhere/libisle.so")
    lu.assertStrContains(out, "the system library path: libisle.so: cannot open shared object file")
    lu.assertStrContains(out, "`make`")
    lu.assertStrContains(out, "`eval $(make -s path)`")
    lu.assertStrContains(out, "`make install`")
    lu.assertStrContains(out, "ISLE_LIB")
end

function TestLoader:test_isle_lib_that_does_not_load_is_an_error_naming_it()
    local out, rc = child(self.dir, "ISLE_LIB=" .. quote(self.dir .. "/missing.so"), "require('isle')")
    lu.assertNotEquals(rc, 0)
    lu.assertStrContains(out, "isle: cannot load the C library " .. self.dir .. "/missing.so (from ISLE_LIB)")
end

function TestLoader:test_found_beside_the_modules_and_under_their_prefix()
    local dir = self.dir
    run("cp " .. quote(ROOT .. "/build/libisle.so") .. " " .. quote(dir .. "/lua/libisle.so"))
    lu.assertEquals(child(dir, "", "io.write(require('isle.cdef').path)"), dir .. "/lua/libisle.so")
    -- LUADIR = PREFIX/share/lua/5.1 finds PREFIX/lib/libisle.so.
    local p = dir .. "/prefix"
    run(("mkdir -p %s/share/lua/5.1/isle %s/lib && cp %s/ffi/isle/cdef.lua %s/share/lua/5.1/isle/ && cp %s %s/lib/")
        :format(quote(p), quote(p), quote(ROOT), quote(p), quote(ROOT .. "/build/libisle.so"), quote(p)))
    local out = sh(("cd / && LUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(quote(p .. "/share/lua/5.1/?.lua"),
        quote(dir .. "/nowhere/?.so"), helpers.luajit(), quote("io.write(require('isle.cdef').path)")))
    lu.assertEquals(out, p .. "/lib/libisle.so")
end

-- An isle's state loads the library that runs it, by the name the dynamic
-- loader knows it by (csrc/isle.c, pin_library): not by searching again,
-- which could find another file (here: ISLE_LIB is gone and the relative
-- path it gave means nothing in the new working directory).
function TestLoader:test_isles_load_the_library_their_host_loaded()
    local dir = self.dir
    run("cp " .. quote(ROOT .. "/build/libisle.so") .. " " .. quote(dir .. "/libisle-copy.so"))
    local out, rc = child(dir, "ISLE_LIB=./libisle-copy.so", [[
        local ffi = require('ffi')
        ffi.cdef('int unsetenv(const char *); int chdir(const char *);')
        local isle = require('isle')
        local host = require('isle.cdef').path
        assert(ffi.C.unsetenv('ISLE_LIB') == 0 and ffi.C.chdir('/') == 0)
        local h = isle.spawn()
        io.write(host, ' ', h:eval("return require('isle.cdef').path"), ' ', h:eval('return 1 + 1'))
        h:close()
    ]])
    lu.assertEquals(rc, 0, out)
    lu.assertEquals(out, "./libisle-copy.so ./libisle-copy.so 2")
end
os.exit(lu.LuaUnit.run())
