-- A smoke test of an installed isle, run against the installed copy only
-- (make test-dist, test/test_package.lua): its caller sets LUA_PATH and
-- LUA_CPATH to the install and nothing else.
--
--   luajit smoke.lua PREFIX
--
-- Every isle module and libisle.so must come from under PREFIX. Spawns an
-- isle, calls it, raises an error with its traceback, cancels a loop the JIT
-- has compiled, closes; prints "smoke ok" and what it loaded.
local prefix = assert(arg[1], "usage: luajit smoke.lua PREFIX")
local ffi = require("ffi")
local isle = require("isle")
local cdef = require("isle.cdef")

local function under_prefix(file, what)
    assert(type(file) == "string" and file:sub(1, #prefix + 1) == prefix .. "/",
        what .. " comes from " .. tostring(file) .. ", not from " .. prefix)
end
for name in pairs(package.loaded) do
    if name == "isle" or name:match("^isle%.") then
        under_prefix(package.searchpath(name, package.path), "module " .. name)
    end
end
under_prefix(cdef.path, "libisle.so")

local function wait_until(cond, what)
    local deadline = isle.now() + 20
    while not cond() do
        assert(isle.now() < deadline, "timed out waiting for " .. what)
        isle.sleep(0.001)
    end
end

local h = isle.spawn{ init = function()
    function add(a, b) return a + b end
end }
assert(h:call("add", 40, 2) == 42, "call")
-- The isle's own state loaded the very library its host did.
assert(h:eval("return require('isle.cdef').path") == cdef.path, "the isle loaded another libisle.so")

local ok, err = pcall(h.eval, h, "local function inner() error('boom') end inner()")
assert(not ok and isle.is_error(err) and err.code == "runtime", "error object: " .. tostring(err))
assert(err.message:find("boom", 1, true) and err.traceback:find("inner", 1, true),
    "no isle-side traceback: " .. tostring(err.traceback))

-- mem[0] counts the isle's finished traces, mem[1] says the loop runs.
local mem = ffi.new("int32_t[2]")
local addr = tonumber(ffi.cast("intptr_t", mem))
h:eval([[
    local m = require("ffi").cast("int32_t *", ...)
    jit.attach(function(what) if what == "stop" then m[0] = m[0] + 1 end end, "trace")
]], addr)
local t = h:spawn_eval("local m = require('ffi').cast('int32_t *', ...) "
    .. "local x = 0 while true do x = x + 1 m[1] = 1 end", addr)
wait_until(function() return mem[1] == 1 and mem[0] > 0 end, "the loop to be compiled")
t:cancel()
local done, cerr = t:wait(20)
assert(done == false and cerr.code == "cancelled", "the compiled loop was not cancelled: " .. tostring(cerr))
assert(h:eval("return jit.status()") == true, "the JIT must still be on")

h:close()
assert(h:is_closed())
-- OpenResty's luajit2 has table.isempty, Debian's luajit has not.
local build = pcall(require, "table.isempty") and "OpenResty's luajit2" or "LuaJIT"
print("smoke ok: " .. jit.version .. " (" .. build .. "), isle " .. isle._VERSION .. ", " .. cdef.path)
