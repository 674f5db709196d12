-- Async inside isles (issue 8, part 2): timers, isle.go, t:await and
-- t:on_done from jobs, isle.all and isle.first, isle.on_error, and what close
-- does with pending timers and running coroutines.
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")

local LIB = [[
    isle = require("isle")
    log = {}
    function note(s) log[#log + 1] = s end
    function get() local s = table.concat(log, ",") log = {} return s end
]]

-- Polls the isle's log until it has `n` entries (or 10 s pass).
local function log_of(h, n)
    local got
    helpers.eventually(function()
        got = h:eval("return #log")
        return got >= n
    end, 10)
    return h:call("get")
end

TestTimers = {}
function TestTimers:setUp() self.h = isle.spawn{ init = LIB } end
function TestTimers:tearDown() self.h:close{ cancel = true } end

function TestTimers:test_fire_in_deadline_order_with_arguments()
    self.h:eval([[
        isle.timer.at(0.06, note, "c")
        isle.timer.at(0.02, note, "a")
        isle.timer.at(0.04, function(x, y) note(x .. y) end, "b", 1)
    ]])
    lu.assertEquals(log_of(self.h, 3), "a,b1,c")
end

function TestTimers:test_cancel_and_every()
    self.h:eval([[
        local t = isle.timer.at(0.01, note, "never")
        assert(t:cancel() == true)
        assert(t:cancel() == false)
        local n = 0
        every = isle.timer.every(0.01, function() n = n + 1 note("e" .. n) if n == 3 then every:cancel() end end)
        isle.timer.at(0.2, note, "end")
    ]])
    lu.assertEquals(log_of(self.h, 4), "e1,e2,e3,end")
end

function TestTimers:test_callbacks_may_sleep_and_call_isles_while_the_isle_serves()
    local other = isle.spawn{ init = "function twice(x) return 2 * x end" }
    self.h:eval("other = require('isle').lookup(...)", other:id())
    self.h:eval([[
        isle.timer.at(0, function()
            isle.sleep(0.05)
            note("called:" .. other:call("twice", 21))
        end)
    ]])
    -- the isle serves calls while the timer's coroutine sleeps
    lu.assertEquals(self.h:eval("return 'served'"), "served")
    lu.assertEquals(log_of(self.h, 1), "called:42")
    other:close()
end

function TestTimers:test_errors_go_to_on_error_and_the_loop_goes_on()
    local r = self.h:eval([[
        local errs = {}
        isle.on_error(function(e, what) errs[#errs + 1] = what .. "=" .. e.message end)
        isle.timer.at(0, function() error("t-boom", 0) end)
        isle.go(function() error("g-boom", 0) end)
        local t = isle.self():spawn_eval("return 1")
        t:on_done(function() error("d-boom", 0) end)
        isle.sleep(0.05)
        isle.on_error(nil)
        table.sort(errs)
        return table.concat(errs, ";")
    ]])
    lu.assertEquals(r, "a go coroutine=g-boom;a timer=t-boom;an on_done callback=d-boom")
    lu.assertEquals(self.h:eval("return 1"), 1)
end

function TestTimers:test_misuse()
    lu.assertErrorMsgContains("only inside an isle", isle.timer.at, 1, print)
    lu.assertErrorMsgContains("only inside an isle", isle.go, print)
    local ok, e = pcall(self.h.eval, self.h, "isle.timer.at(-1, print)")
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "seconds >= 0")
    ok, e = pcall(self.h.eval, self.h, "isle.timer.every(0, print)")
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "> 0")
end

TestGo = {}
function TestGo:test_go_returns_at_once_and_runs_on_the_loop()
    local h = isle.spawn{ init = LIB }
    local r = h:eval([[
        local started = false
        assert(isle.go(function(a, b) started = true note(a + b) end, 1, 2) == true)
        local before = started  -- go never runs inside the call
        isle.sleep(0.01)
        return before, started
    ]])
    lu.assertEquals(r, false)
    lu.assertEquals(h:call("get"), "3")
    h:close()
end

TestAwait = {}
function TestAwait:test_await_on_done_all_first_inside_an_isle()
    local h = isle.spawn{ init = LIB }
    local r = { h:eval([[
        local me = isle.self()
        local t1 = me:spawn_eval("require('isle').sleep(0.02) return 1")
        local t2 = me:spawn_eval("return 2, 'two'")
        local ok, a, b = isle.all{ t1, t2 }:await()
        local f = isle.first{ me:spawn_eval("require('isle').sleep(1) return 'slow'"), me:spawn_eval("return 'fast'") }
        local ok2, v = f:await(5)
        local thread_of_callback
        local t3 = me:spawn_eval("return 3")
        t3:on_done(function(ok, v) thread_of_callback = require('isle').id() .. ":" .. v end)
        isle.sleep(0.02)
        return ok, a.n, a[1], b.n, b[1], b[2], ok2, v, thread_of_callback == isle.id() .. ":3"
    ]]) }
    lu.assertEquals(r, { true, 1, 1, 2, 2, "two", true, "fast", true })
    h:close()
end

-- A job cancels a task that runs (asleep) in its own isle, then runs on
-- through checkpoints of its own: those must not swallow the request meant
-- for the other job (they lowered the state's flag and found nothing for
-- themselves; the sleeper then never saw it and the await timed out).
function TestAwait:test_a_job_cancelling_a_task_of_its_own_isle()
    local h = isle.spawn{ init = LIB }
    for _ = 1, 3 do
        local r = { h:eval([[
            local slow = isle.self():spawn_eval("while true do require('isle').sleep(0.01) end")
            isle.sleep(0.03) -- slow runs, asleep
            slow:cancel()
            local x = 0
            for i = 1, 100000 do x = x + i end -- the canceller's own checkpoints
            local ok, e = slow:await(10)
            return ok, e and e.code
        ]]) }
        lu.assertEquals(r, { false, "cancelled" })
    end
    h:close()
end

function TestAwait:test_all_fails_with_the_first_error_and_cancel_cancels_the_parts()
    local h = isle.spawn{ init = LIB }
    -- The slow part runs in another isle (the same isle: the test above).
    local other = isle.spawn{ name = "async_other", init = LIB }
    local r = { h:eval([[
        local me = isle.self()
        local slow = isle.lookup("async_other"):spawn_eval("while true do require('isle').sleep(0.01) end")
        local ok, e = isle.all{ slow, me:spawn_eval("error('part failed', 0)") }:await(5)
        local code1, msg1 = e.code, e.message
        local a = isle.all{ slow }
        a:cancel()
        local ok2, e2 = slow:await(5)
        local ok3, e3 = a:await(5)
        local ok4, n = isle.all{}:await()
        return ok, code1, msg1, ok2, e2.code, ok3, e3.code, ok4, n
    ]]) }
    lu.assertEquals(r, { false, "runtime", "part failed", false, "cancelled", false, "cancelled", true })
    lu.assertErrorMsgContains("a task expected", isle.all, { 1 })
    lu.assertErrorMsgContains("never ends", isle.first, {})
    other:close()
    h:close()
end

function TestAwait:test_await_across_isles_while_serving()
    local a = isle.spawn{ init = "isle = require('isle') function slow() isle.sleep(0.1) return 'slow done' end" }
    local b = isle.spawn{ init = LIB }
    b:eval("a = require('isle').lookup(...)", a:id())
    local t = b:spawn_eval("return a:spawn_call('slow'):await()")
    -- b serves others while its job awaits a
    lu.assertEquals(b:eval("return 'b serves'"), "b serves")
    lu.assertEquals({ t:wait(10) }, { true, true, "slow done" })
    a:close() b:close()
end

function TestAwait:test_all_and_first_in_a_host_state()
    local h = isle.spawn{ init = LIB }
    -- a blocking wait runs the hub meanwhile
    local ok, a, b = isle.all{ h:spawn_eval("return 1"), h:spawn_eval("isle.sleep(0.05) return 2, 3") }:wait(10)
    lu.assertEquals({ ok, a.n, a[1], b.n, b[1], b[2] }, { true, 1, 1, 2, 2, 3 })
    lu.assertEquals({ isle.first{ h:spawn_eval("isle.sleep(5)"), h:spawn_eval("return 'fast'") }:wait(10) },
        { true, "fast" })
    -- on_done of a combined task runs from the hub
    local got
    isle.all{ h:spawn_eval("return 7") }:on_done(function(ok2, r) got = ok2 and r[1] end)
    local hub = isle.hub()
    lu.assertTrue(helpers.eventually(function() hub:poll() return got ~= nil end, 10))
    lu.assertEquals(got, 7)
    h:close{ cancel = true }
end

TestAsyncClose = {}
function TestAsyncClose:test_pending_timers_are_dropped_and_never_run()
    local mem, addr = helpers.shared_ints(2)
    local h = isle.spawn{ init = LIB }
    h:eval([[
        local m = require('ffi').cast('int32_t *', (...))
        isle.timer.at(0.2, function() m[0] = 1 end)
        isle.timer.every(0.2, function() m[1] = 1 end)
    ]], addr)
    local t0 = isle.now()
    h:close()
    lu.assertTrue(isle.now() - t0 < 0.15, "close waited for pending timers")
    isle.sleep(0.3)
    lu.assertEquals({ mem[0], mem[1] }, { 0, 0 })
end

function TestAsyncClose:test_go_coroutines_are_drained_or_cancelled()
    -- drained: close waits for a sleeping go coroutine to finish
    local mem, addr = helpers.shared_ints(2)
    local h = isle.spawn{ init = LIB }
    h:eval([[
        local m = require('ffi').cast('int32_t *', (...))
        isle.go(function() isle.sleep(0.1) m[0] = 1 end)
    ]], addr)
    h:close()
    lu.assertEquals(mem[0], 1)
    -- cancelled at once with {cancel = true}
    local h2 = isle.spawn{ init = LIB }
    h2:eval("isle.go(function() while true do isle.sleep(0.01) end end)")
    local t0 = isle.now()
    h2:close{ cancel = true }
    lu.assertTrue(isle.now() - t0 < 5)
    -- a heartbeat would hold a draining close for ever: {timeout = s}
    local h3 = isle.spawn{ init = LIB }
    h3:eval("isle.go(function() while true do isle.sleep(0.01) end end) isle.timer.every(0.01, function() end)")
    t0 = isle.now()
    h3:close{ timeout = 0.1 }
    local took = isle.now() - t0
    lu.assertTrue(took >= 0.09 and took < 5, "close{timeout} took " .. took)
    lu.assertEquals(isle.live_count(), 0)
    local h4 = isle.spawn{}
    lu.assertErrorMsgContains("timeout", h4.close, h4, { timeout = -1 })
    h4:close()
end

os.exit(lu.LuaUnit.run())
