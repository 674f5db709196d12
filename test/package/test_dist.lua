-- The release tarball (make test-dist): unpacked in a temporary directory,
-- built and installed there, then test/package/smoke.lua run against the
-- installed copy only, on Debian's luajit and on OpenResty's luajit2.
--
--   ISLE_DIST=build/isle-<version>.tar.gz [ISLE_TEST_LJ2="env ... luajit"] \
--     luajit test/run.lua test/package/test_dist.lua
local lu = require("luaunit")
local helpers = require("test.helpers")
local pkg = require("test.package.lib")
local quote, run = pkg.quote, pkg.run

local DIST = assert(os.getenv("ISLE_DIST"), "ISLE_DIST must name the tarball (make test-dist)")
local VERSION = require("isle")._VERSION
local TOP = "isle-" .. VERSION

-- The LuaJIT builds to run the smoke script on: the one under test and,
-- when the Makefile names it, OpenResty's luajit2.
local function luajits()
    local list = { helpers.luajit() }
    local lj2 = os.getenv("ISLE_TEST_LJ2")
    if lj2 and lj2 ~= "" and lj2 ~= list[1] then list[#list + 1] = lj2 end
    return list
end

-- Runs the smoke script on every build; checks that luajit2 was one of them.
local function smoke_all(dir, prefix, lua_dir, cpath_dir, lib)
    local all = {}
    for _, luajit in ipairs(luajits()) do
        local out = pkg.smoke(luajit, dir, prefix, lua_dir, cpath_dir)
        lu.assertStrContains(out, lib)
        all[#all + 1] = out
    end
    if os.getenv("ISLE_TEST_LJ2") then lu.assertStrContains(table.concat(all), "(OpenResty's luajit2)") end
end

TestDist = { deadline = 300 }

-- One unpacked and built copy for the suite (made by the first test that
-- needs it, under that test's deadline); the tests install it in turn.
local unpacked
function TestDist.teardownClass() if unpacked then pkg.rmdir(unpacked.dir) end end

-- make in the unpacked tree, as a user or a packager would run it.
local function make(args)
    if not unpacked then
        local dir = pkg.tmpdir()
        unpacked = { dir = dir, src = dir .. "/" .. TOP }
        run("tar -xzf " .. quote(DIST) .. " -C " .. quote(dir))
        run("make -s -C " .. quote(unpacked.src) .. " all")
    end
    return run("make -s -C " .. quote(unpacked.src) .. " " .. args)
end

function TestDist:test_tarball_holds_what_a_build_and_its_tests_need()
    local listing = run("tar -tzf " .. quote(DIST))
    local want = { "Makefile", "README.md", "csrc/isle.h", "csrc/isle.c", "rockspecs/isle-scm-1.rockspec",
        "docs/install.md", "test/run.lua", "test/package/smoke.lua" }
    for _, file in pairs(pkg.source_modules()) do want[#want + 1] = file end
    for _, f in ipairs(want) do lu.assertStrContains(listing, TOP .. "/" .. f .. "\n", false, f) end
    for line in listing:gmatch("[^\n]+") do
        lu.assertEquals(line:sub(1, #TOP + 1), TOP .. "/", "outside the top directory: " .. line)
        lu.assertNil(line:find("/build/", 1, true), "a build product in the tarball: " .. line)
        lu.assertNil(line:find("/.git", 1, true), "git's files in the tarball: " .. line)
    end
end

-- A distribution's build: DESTDIR and PREFIX=/usr. The smoke script finds
-- the modules through LUA_PATH only, and the library under the same prefix
-- (package.cpath names nothing); the header and isle.pc build a C program.
function TestDist:test_install_with_destdir_smoke_pkg_config_and_uninstall()
    local dir = pkg.tmpdir()
    local ok, err = pcall(function()
        local stage = dir .. "/stage"
        local vars = "DESTDIR=" .. quote(stage) .. " PREFIX=/usr "
        make(vars .. "install")
        smoke_all(dir, stage .. "/usr", stage .. "/usr/share/lua/5.1", dir .. "/nowhere", stage .. "/usr/lib/libisle.so")
        -- A C program built with pkg-config's flags against the installed header and library.
        local c = assert(io.open(dir .. "/prog.c", "w"))
        c:write('#include <isle.h>\n#include <stdio.h>\n'
            .. 'int main(void) { printf("%d %d\\n", isle_live_count(), isle_now() > 0); return 0; }\n')
        c:close()
        local pc = "PKG_CONFIG_PATH=" .. quote(stage .. "/usr/lib/pkgconfig") .. " PKG_CONFIG_SYSROOT_DIR="
            .. quote(stage) .. " pkg-config "
        lu.assertEquals(run(pc .. "--modversion isle"), VERSION .. "\n")
        local flags = run(pc .. "--cflags --libs isle"):gsub("\n", "")
        lu.assertStrContains(flags, "-I" .. stage .. "/usr/include")
        run(helpers.cc() .. " -o " .. quote(dir .. "/prog") .. " " .. quote(dir .. "/prog.c") .. " " .. flags)
        lu.assertEquals(run("LD_LIBRARY_PATH=" .. quote(stage .. "/usr/lib") .. " " .. quote(dir .. "/prog")), "0 1\n")
        make(vars .. "uninstall")
        lu.assertEquals(pkg.files(stage), {})
    end)
    pkg.rmdir(dir)
    if not ok then error(err, 0) end
end

-- OpenResty's layout: modules and library in one directory (lualib), the
-- library found beside the modules; a PREFIX of its own, no DESTDIR.
function TestDist:test_install_with_library_beside_the_modules()
    local dir = pkg.tmpdir()
    local ok, err = pcall(function()
        local lualib = dir .. "/openresty/lualib"
        make("PREFIX=" .. quote(dir .. "/openresty") .. " LUADIR=" .. quote(lualib) .. " LIBDIR=" .. quote(lualib)
            .. " install")
        smoke_all(dir, lualib, lualib, dir .. "/nowhere", lualib .. "/libisle.so")
    end)
    pkg.rmdir(dir)
    if not ok then error(err, 0) end
end

os.exit(lu.LuaUnit.run())
