-- What the packaging tests share (test/test_package.lua, test/package/test_dist.lua):
-- the modules the sources hold, the rockspec's list, temporary directories,
-- and shell commands run with none of this checkout's settings.
local helpers = require("test.helpers")

local lib = {}

-- The checkout's root, absolute: the tests run commands in other directories.
local function root()
    local r = os.getenv("ISLE_ROOT") or debug.getinfo(1, "S").source:match("^@(.*)/test/package/[^/]*$")
    if not r then
        r = debug.getinfo(1, "S").source:match("^@test/package/") and "." or error("cannot tell the checkout's root")
    end
    if r:sub(1, 1) ~= "/" then
        local p = io.popen("cd '" .. r .. "' && pwd")
        r = p:read("*l")
        p:close()
    end
    return r
end
lib.ROOT = root()

-- A command's environment without this checkout's paths or make's state:
-- what a user's shell would have.
lib.CLEAN_ENV = "env -u LUA_PATH -u LUA_CPATH -u ISLE_LIB -u MAKEFLAGS -u MFLAGS -u MAKELEVEL"

-- Runs a shell command (in a clean environment); returns output and exit code.
function lib.sh(cmd)
    return helpers.sh(lib.CLEAN_ENV .. " sh -c " .. lib.quote(cmd))
end

function lib.quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Like lib.sh, but raises with the command and its output unless it exits 0.
function lib.run(cmd)
    local out, rc = lib.sh(cmd)
    if rc ~= 0 then error("command failed (exit " .. tostring(rc) .. "): " .. cmd .. "\n" .. out, 2) end
    return out
end

function lib.tmpdir()
    return (lib.run("mktemp -d /tmp/isle-package.XXXXXX"):gsub("%s+$", ""))
end

function lib.rmdir(dir)
    assert(dir:match("^/tmp/isle%-package%.") , "refusing to remove " .. dir)
    lib.sh("rm -rf " .. lib.quote(dir))
end

function lib.read(file)
    local f = assert(io.open(file, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

-- Module name -> source file (relative to the root) for every Lua file of
-- lua/ and ffi/: lua/isle.lua is isle, lua/isle/x.lua and ffi/isle/x.lua isle.x.
function lib.source_modules()
    local mods = {}
    local out = lib.run("cd " .. lib.quote(lib.ROOT) .. " && ls lua/*.lua lua/*/*.lua ffi/*/*.lua")
    for file in out:gmatch("[^\n]+") do
        local name = file:gsub("^lua/", ""):gsub("^ffi/", ""):gsub("%.lua$", ""):gsub("/", ".")
        assert(not mods[name], name .. " is both " .. tostring(mods[name]) .. " and " .. file)
        mods[name] = file
    end
    return mods
end

-- The rockspec, evaluated as LuaRocks does (a chunk of assignments).
function lib.rockspec()
    local env = {}
    local f = assert(loadfile(lib.ROOT .. "/rockspecs/isle-scm-1.rockspec"))
    setfenv(f, env)()
    return env
end

-- The files under dir (relative paths, sorted), or {} when there is none.
function lib.files(dir)
    local out = lib.run("cd " .. lib.quote(dir) .. " && find . -type f | sort")
    local list = {}
    for line in out:gmatch("[^\n]+") do list[#list + 1] = line:gsub("^%./", "") end
    return list
end

-- Runs test/package/smoke.lua with luajit (a command prefix) against an
-- install: LUA_PATH and LUA_CPATH name only lua_dir and cpath_dir; the
-- working directory is dir. Returns the output; raises unless it passed.
function lib.smoke(luajit, dir, prefix, lua_dir, cpath_dir)
    local smoke = lib.read(lib.ROOT .. "/test/package/smoke.lua")
    local f = assert(io.open(dir .. "/smoke.lua", "wb"))
    f:write(smoke)
    f:close()
    local out = lib.run(("cd %s && LUA_PATH=%s LUA_CPATH=%s %s ./smoke.lua %s"):format(lib.quote(dir),
        lib.quote(lua_dir .. "/?.lua"), lib.quote(cpath_dir .. "/?.so"), luajit, lib.quote(prefix)))
    assert(out:find("smoke ok", 1, true), out)
    return out
end

return lib
