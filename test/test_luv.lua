-- The luv adapter (lua/isle/luv.lua) against the real lua-luv: isle work
-- awaited from coroutines while the uv loop keeps ticking, on_done from the
-- poll handle on the loop's thread, and uv.run() ending once the work is done.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")

local have_uv, uv = pcall(require, "luv")

ffi.cdef [[
struct luv_test_timespec { long tv_sec; long tv_nsec; };
int luv_test_clock_gettime(int clk, struct luv_test_timespec *ts) __asm__("clock_gettime");
unsigned long luv_test_pthread_self(void) __asm__("pthread_self");
]]
local function thread_cpu()
    local ts = ffi.new("struct luv_test_timespec")
    assert(ffi.C.luv_test_clock_gettime(3 --[[CLOCK_THREAD_CPUTIME_ID]], ts) == 0)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local LIB = [[
    local isle = require("isle")
    function work(s, v) isle.sleep(s) return v end
]]

TestLuv = {}

function TestLuv:setUp()
    lu.assertTrue(have_uv, "lua-luv is not installed (apt-get install lua-luv; make deps does): " .. tostring(uv))
    self.hub = isle.hub()
    self.isles = { isle.spawn{ init = LIB }, isle.spawn{ init = LIB } }
end

function TestLuv:tearDown()
    require("isle.luv").detach()
    for _, h in ipairs(self.isles or {}) do h:close() end
end

-- A guard against a loop that would never end: fails the test from inside it.
local function guard(seconds)
    local failed = false
    local t = uv.new_timer()
    t:start(seconds * 1000, 0, function() failed = true; uv.stop() end)
    t:unref() -- does not keep uv.run() going by itself
    return function()
        t:stop(); t:close()
        return failed
    end
end

function TestLuv:test_twenty_awaits_while_a_timer_ticks()
    local luv = require("isle.luv")
    local a = luv.attach()
    lu.assertEquals(type(a.polls), "number")
    lu.assertError(luv.attach) -- attached already
    local main_thread = ffi.C.luv_test_pthread_self()
    local N = 20
    local results, ended_at = {}, {}
    local callbacks, cb_in_poll, cb_on_loop_thread = 0, 0, 0
    local cos = {}
    local ticks = {}
    local timer = uv.new_timer()
    local t0 = isle.now()
    timer:start(10, 10, function() ticks[#ticks + 1] = isle.now() end)
    local cpu0, wall0, proc0 = thread_cpu(), isle.now(), os.clock()
    for i = 1, N do
        local h = self.isles[i % 2 + 1]
        cos[i] = self.hub:go(function()
            local v
            if i % 3 == 0 then
                -- A blocking call in a hub coroutine: suspends while attached.
                v = h:call("work", 0.1, i)
            elseif i % 3 == 1 then
                local ok, r = h:spawn_call("work", 0.1, i):wait()
                v = ok and r
            else
                local t = h:spawn_call("work", 0.1, i)
                t:on_done(function()
                    callbacks = callbacks + 1
                    if a.in_callback then cb_in_poll = cb_in_poll + 1 end
                    if ffi.C.luv_test_pthread_self() == main_thread then cb_on_loop_thread = cb_on_loop_thread + 1 end
                end)
                local ok, r = t:await()
                v = ok and r
            end
            results[i] = v
            ended_at[i] = isle.now()
        end)
    end
    -- Nothing blocked: every coroutine is parked, none has a result yet.
    for i = 1, N do lu.assertEquals(coroutine.status(cos[i]), "suspended", "coroutine " .. i .. " did not suspend") end
    lu.assertEquals(next(results), nil)
    lu.assertTrue(isle.now() - t0 < 1, "starting the coroutines took " .. (isle.now() - t0) .. " s")
    -- Stop ticking once all have ended; then uv.run() ends by itself (the
    -- poll handle does not hold the loop once nothing is pending).
    local checker = uv.new_timer()
    checker:start(5, 5, function()
        local n = 0
        for _ in pairs(results) do n = n + 1 end
        if n == N and self.hub:pending() == 0 then
            timer:stop(); timer:close(); checker:stop(); checker:close()
        end
    end)
    local stuck = guard(30)
    uv.run()
    local cpu, wall, proc = thread_cpu() - cpu0, isle.now() - wall0, os.clock() - proc0
    lu.assertFalse(stuck(), "uv.run() did not end within 30 s")
    for i = 1, N do lu.assertEquals(results[i], i) end
    local last = 0
    for i = 1, N do last = math.max(last, ended_at[i] - t0) end
    -- The sleeps overlap (0.1 s each, 10 per isle): a loop that ran them one
    -- after the other would take 2 s. Generous: the machine may be loaded.
    lu.assertTrue(last < 1.5, "20 tasks of 0.1 s took " .. last .. " s")
    -- The ticks kept coming while the tasks ran: no gap near the whole wait
    -- (a loop blocked in a wait sees none until it ends). Relative to the
    -- wait, not a fixed time: a loaded machine stretches both.
    lu.assertTrue(#ticks >= 2, "only " .. #ticks .. " ticks in " .. last .. " s")
    local gap = ticks[1] - t0
    for i = 2, #ticks do gap = math.max(gap, ticks[i] - ticks[i - 1]) end
    lu.assertTrue(gap < math.max(0.25, last / 2), "a tick gap of " .. gap .. " s in a " .. last .. " s wait")
    -- on_done callbacks ran from the poll handle, on the loop's thread.
    lu.assertEquals(callbacks, 7) -- i % 3 == 2
    lu.assertEquals(cb_in_poll, 7)
    lu.assertEquals(cb_on_loop_thread, 7)
    lu.assertTrue(a.polls >= 1)
    -- Waiting cost the loop's thread little CPU.
    lu.assertTrue(cpu / wall < 0.5, ("loop thread CPU %.0f%% of a core"):format(100 * cpu / wall))
    lu.assertTrue(proc / wall < 1.0, ("process CPU %.0f%% of a core"):format(100 * proc / wall))
end

function TestLuv:test_await_timeout_and_blocking_outside_hub_coroutines()
    local luv = require("isle.luv")
    luv.attach()
    local h = self.isles[1]
    local r
    self.hub:go(function() r = { h:spawn_call("work", 5, "late"):await(0.05) } end)
    local stuck = guard(30)
    uv.run() -- ends once the wait timed out: the watchdog's slot woke the hub
    lu.assertFalse(stuck(), "uv.run() did not end")
    lu.assertFalse(r[1])
    lu.assertEquals(r[2].code, "timeout")
    -- A coroutine the hub does not drive blocks in h:call, adapter or not.
    local co = coroutine.create(function() return h:call("work", 0.01, "blocked") end)
    lu.assertEquals({ coroutine.resume(co) }, { true, "blocked" })
    -- Detached: hub coroutines block again.
    luv.detach()
    local v
    self.hub:go(function() v = h:call("work", 0.01, "blocking again") end)
    lu.assertEquals(v, "blocking again")
end

function TestLuv:test_detach_stops_the_handle()
    local luv = require("isle.luv")
    local a = luv.attach()
    local h = self.isles[1]
    local got
    h:spawn_call("work", 0.01, 1):on_done(function(_, v) got = v end)
    a:detach()
    lu.assertFalse(a.handle:is_active())
    uv.run() -- nothing keeps it: returns without serving the hub
    lu.assertNil(got)
    lu.assertEquals(self.hub:run(10), 1) -- whoever polls next serves it
    lu.assertEquals(got, 1)
    -- Attach again after a detach.
    local a2 = luv.attach()
    lu.assertNotIs(a2, a)
end

-- The runnable example: its output, and a clean exit (lua_close included).
function TestLuv:test_example_runs_and_exits_cleanly()
    local helpers = require("test.helpers")
    local root = (os.getenv("ISLE_ROOT") or (debug.getinfo(1, "S").source:match("^@(.*)/test/[^/]*$")) or ".")
    local out, rc = helpers.sh(("cd %s && timeout -k 5 60 %s examples/luv.lua"):format(root, helpers.luajit()))
    lu.assertEquals(rc, 0, out)
    lu.assertStrContains(out, "fib(27) = 196418, from on_done")
    for i = 1, 5 do lu.assertStrContains(out, ("coroutine %d got %d and %d"):format(i, i, i * 10)) end
    local ticks = tonumber(out:match("the timer ticked (%d+) times"))
    lu.assertTrue(ticks and ticks >= 3, out)
end

os.exit(lu.LuaUnit.run())
