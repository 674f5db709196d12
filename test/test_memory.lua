-- Out of memory from Lua (issue 7): isle.spawn and calls, with allocations
-- of the C core failing one after another, end with an isle error whose
-- code is "memory" (never a crash, a hang or a leak), and the next spawn or
-- call works. isle runs here from build/libisle-failalloc.so, the library
-- with test/c/failalloc.c linked in (docs/testing.md): this file points
-- ISLE_LIB at it before isle is loaded, so this process and its isles share
-- that one copy.
local lu = require("luaunit")
local ffi = require("ffi")

ffi.cdef[[
int setenv(const char *name, const char *value, int overwrite);
void failalloc_arm(long n, int flags);
long failalloc_disarm(void);
long failalloc_live(void);
]]
local LIB = package.searchpath("libisle-failalloc", package.cpath)
assert(LIB, "build/libisle-failalloc.so is missing (make build/libisle-failalloc.so)")
assert(ffi.C.setenv("ISLE_LIB", LIB, 1) == 0)
local isle = require("isle")
local helpers = require("test.helpers")
local FA = ffi.load(LIB)
local THIS_THREAD, ANY_THREAD, PERSIST = 0, 1, 2
local THREADS = helpers.threads() -- before any isle or watchdog thread

local INIT = "function echo(...) return ... end"

-- Runs f with the n-th allocation failing, n = 1, 2... until a run fails
-- none; on_fail(err) checks each failed run. Returns the number of sites
-- and what the last (successful) run returned.
local function sweep(flags, f, on_fail)
    for n = 1, 200 do
        FA.failalloc_arm(n, flags)
        local ok, v = pcall(f)
        local failed = tonumber(FA.failalloc_disarm())
        if failed == 0 then
            lu.assertTrue(ok, tostring(v))
            return n - 1, v
        end
        lu.assertFalse(ok, "allocation " .. n .. " failed, yet the operation succeeded")
        lu.assertTrue(isle.is_error(v), tostring(v))
        lu.assertEquals(v.code, "memory", tostring(v))
        on_fail(v)
    end
    error("the operation never stopped allocating")
end

-- Blocks of the C core not freed yet, once every isle and an idle watchdog
-- have gone (it frees its heap when it exits) and collected handles let go.
local function settled_live(expected)
    lu.assertTrue(helpers.eventually(function() return helpers.threads() == THREADS end, 10),
        "a thread is left")
    local live
    helpers.eventually(function()
        -- A compiled trace keeps the objects it was specialised on (an
        -- immutable upvalue, such as a test's handle, can become a constant
        -- of the trace) until the trace goes. The count came out 8 blocks
        -- high (one isle's) in rare runs, its handle never collected; this
        -- is the one holder of it the test can rule out (not proven to be
        -- the cause).
        jit.flush()
        collectgarbage()
        collectgarbage()
        live = tonumber(FA.failalloc_live())
        return live == expected
    end, expected and 10 or 0)
    return live
end

local function both_modes(flags, f)
    for _, persist in ipairs({ 0, PERSIST }) do f(flags + persist) end
end

TestMemory = {}

function TestMemory:setUp()
    -- One spawn first: isle's modules are preloaded once per process, and
    -- that stays allocated; what follows must return to this level.
    local h = isle.spawn{ init = INIT }
    h:close()
    h = nil
    lu.assertEquals(require("isle.cdef").path, LIB)
    self.live = settled_live()
end

function TestMemory:tearDown()
    lu.assertEquals(isle.live_count(), 0)
    lu.assertEquals(settled_live(self.live), self.live, "blocks leaked")
end

local function spawn_sweep(flags)
    local sites, h = sweep(flags, function()
        return isle.spawn{ name = "mem", init = INIT }
    end, function()
        -- Nothing of the failed isle is left, and the next spawn works.
        lu.assertEquals(isle.live_count(), 0)
        lu.assertNil(isle.lookup("mem"))
        lu.assertTrue(helpers.eventually(function() return helpers.threads() == THREADS end, 10))
        local again = isle.spawn{ name = "mem", init = INIT }
        lu.assertEquals(again:call("echo", "next"), "next")
        again:close()
    end)
    lu.assertEquals(h:call("echo", 1), 1)
    h:close()
    return sites
end

function TestMemory:test_spawn_fails_at_every_site()
    both_modes(THIS_THREAD, function(flags)
        local sites = spawn_sweep(flags)
        -- The handle, name, paths, boot bytes, mailbox, signal block, init
        -- task and interrupt id (csrc/isle.c isle_spawn).
        lu.assertTrue(sites >= 9, "sites: " .. sites)
        -- Then the new isle's own thread too. Its init result is small and
        -- kept in the init task's slot (csrc/task.c), with no allocation of
        -- its own, so that thread adds no site; the sweep must still pass.
        lu.assertTrue(spawn_sweep(flags + ANY_THREAD) >= sites)
    end)
end

local function call_sweep(flags, h, what, ...)
    local args = { n = select("#", ...), ... }
    local sites, r = sweep(flags, function()
        return h:call("echo", unpack(args, 1, args.n))
    end, function()
        lu.assertEquals(h:call("echo", "next"), "next")
    end)
    lu.assertEquals(r, args[1], what)
    return sites
end

function TestMemory:test_call_fails_at_every_site()
    local h = isle.spawn{ init = INIT }
    both_modes(THIS_THREAD, function(flags)
        -- The task and the message (lua/isle/handle.lua send).
        local sites = call_sweep(flags, h, "call", "x")
        lu.assertTrue(sites >= 2, "sites: " .. sites)
        -- The isle's side: the copy of the result (one too long to be kept
        -- in its task slot, which needs no allocation: csrc/task.c).
        local long = string.rep("x", 64)
        lu.assertTrue(call_sweep(flags + ANY_THREAD, h, "call", long) > sites)
        -- With a timeout (the watchdog) and with a token (a watch in the
        -- isle). The watchdog keeps a watch, and itself, until the deadline:
        -- short enough for tearDown to see it gone, long for an echo.
        lu.assertTrue(call_sweep(flags, h:with{ timeout = 3 }, "timeout", "x") >= 2)
        local tok = isle.token()
        lu.assertTrue(call_sweep(flags + ANY_THREAD, h:with{ token = tok }, "token", "x") > sites)
        -- Its watches end with it (until then each call's watch holds the
        -- token and the isle's mailbox).
        tok:cancel()
        lu.assertTrue(call_sweep(flags, h, "a large argument", string.rep("x", 1e6)) >= 2)
    end)
    h:close()
end

function TestMemory:test_post_fails_with_a_memory_error()
    local h = isle.spawn{ init = INIT .. " count = 0 function bump() count = count + 1 end" }
    both_modes(THIS_THREAD, function(flags)
        local sites = sweep(flags, function() return h:post("bump") end, function() end)
        lu.assertEquals(sites, 1) -- the message: a post has no task
    end)
    -- Only the posts that returned were queued: two sweeps, one each.
    lu.assertEquals(h:eval("return count"), 2)
    h:close()
end

function TestMemory:test_token_and_interrupt_id_fail_with_memory_errors()
    both_modes(THIS_THREAD, function(flags)
        lu.assertEquals(sweep(flags, isle.token, function() end), 1)
        local id = function() return isle.interrupt_id(coroutine.create(function() end)) end
        local sites, n = sweep(flags, id, function() end)
        lu.assertEquals(sites, 1)
        lu.assertTrue(n > 0)
    end)
end

-- Shared states (csrc/state.c, lua/isle/state.lua): making one fails with a
-- memory error at every allocation site (the caller's result buffer, the
-- state, its name, signal block and interrupt id, the copy of setup's
-- results), leaves nothing behind, and the next one works; a call whose
-- results cannot be copied out fails with a memory error too.
function TestMemory:test_shared_state_fails_at_every_site()
    local SETUP = "return function(...) return ... end"
    both_modes(THIS_THREAD, function(flags)
        local sites, s = sweep(flags, function()
            return isle.state("mem-state", SETUP)
        end, function()
            lu.assertFalse(pcall(isle.state_ref, "mem-state"))
            local again = isle.state("mem-state", SETUP)
            lu.assertEquals(again:call("next"), "next")
            again:close()
        end)
        lu.assertTrue(sites >= 4, "sites: " .. sites)
        lu.assertEquals(s:call(1), 1)
        -- Above the size a caller keeps its result buffer at: each round
        -- starts with a new one (its allocation, then its growth).
        local big = string.rep("x", 2e6)
        local csites, r = sweep(flags, function() return s:call(big) end, function()
            lu.assertEquals(s:call("ok"), "ok")
        end)
        lu.assertTrue(csites >= 1, "call sites: " .. csites)
        lu.assertEquals(r, big)
        s:close()
    end)
end

os.exit(lu.LuaUnit.run())
