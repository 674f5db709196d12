-- The hub (lua/isle/hub.lua): a host state's completion driver. Its fd,
-- poll and run, on_done and await in host coroutines, and that tasks nobody
-- watches cost it nothing.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")
local helpers = require("test.helpers")

ffi.cdef [[
struct hub_test_pollfd { int fd; short events; short revents; };
int hub_test_poll(struct hub_test_pollfd *fds, unsigned long n, int ms) __asm__("poll");
long hub_test_read(int fd, void *buf, size_t n) __asm__("read");
]]

-- Is `fd` readable within `ms` milliseconds (0: right now)?
local function readable(fd, ms)
    local p = ffi.new("struct hub_test_pollfd[1]")
    p[0].fd, p[0].events = fd, 1 -- POLLIN
    local r = ffi.C.hub_test_poll(p, 1, ms or 0)
    assert(r >= 0, "poll(2) failed")
    return r == 1 and bit.band(p[0].revents, 1) ~= 0
end

local LIB = [[
    local isle = require("isle")
    function work(s, v) isle.sleep(s) return v end
    function fail(msg) error(msg) end
]]

local function wait_done(tasks)
    lu.assertTrue(helpers.eventually(function()
        for _, t in ipairs(tasks) do if not t:done() then return false end end
        return true
    end, 20), "tasks did not end")
end

TestHub = {}

function TestHub:setUp()
    self.hub = isle.hub()
    self.h = isle.spawn{ init = LIB }
    self.gate_isle = isle.spawn{}
    self.mem, self.addr = helpers.gate_memory()
    -- Whatever an earlier test left due.
    while self.hub:pending() > 0 do self.hub:run(5) end
    self.hub:poll()
end

function TestHub:tearDown()
    self.mem[0] = 1
    isle.on_error(nil)
    while self.hub:pending() > 0 do self.hub:run(5) end
    self.h:close()
    self.gate_isle:close()
end

-- A task that ends only when the test opens the gate (self.mem[0] = 1).
function TestHub:gate()
    local t = self.gate_isle:spawn_eval(helpers.GATE, self.addr)
    lu.assertTrue(helpers.eventually(function() return self.mem[1] == 1 end), "gate did not start")
    return t
end

function TestHub:test_default_hub_is_the_drivers()
    lu.assertIs(isle.hub(), require("isle.hub").default())
    lu.assertIs(isle.hub(), require("isle.runtime").driver())
    lu.assertEquals(getmetatable(isle.hub()), require("isle.hub").Hub)
    -- Inside an isle its loop is the driver: isle.hub() is misuse there.
    local ok, e = self.h:eval("return pcall(require('isle').hub)")
    lu.assertFalse(ok)
    lu.assertStrContains(e, "host states")
end

function TestHub:test_fd_readable_exactly_when_a_watched_task_ended()
    local hub = self.hub
    local fd = hub:fd()
    lu.assertTrue(fd >= 0)
    local t = self:gate()
    local got
    t:on_done(function(ok, v) got = { ok, v } end)
    lu.assertFalse(readable(fd), "readable before anything ended")
    lu.assertEquals(hub:poll(), 0)
    lu.assertFalse(readable(fd))
    self.mem[0] = 1
    lu.assertTrue(readable(fd, 20000), "not readable after the task ended")
    lu.assertNil(got, "the callback ran before poll")
    lu.assertEquals(hub:poll(), 1)
    lu.assertEquals(got, { true, "gate" })
    lu.assertFalse(readable(fd), "still readable after poll took everything")
    lu.assertEquals(hub:poll(), 0)
    lu.assertEquals(hub:pending(), 0)
end

function TestHub:test_many_completions_one_readiness_nothing_lost()
    local hub = self.hub
    local tasks, ran = { self:gate() }, 0
    for i = 1, 9 do tasks[#tasks + 1] = self.gate_isle:spawn_eval("return ...", i) end
    for _, t in ipairs(tasks) do t:on_done(function() ran = ran + 1 end) end
    lu.assertEquals(hub:pending(), 10)
    self.mem[0] = 1
    wait_done(tasks)
    -- The eventfd counts one wake-up for all ten ends. Reading it (a host
    -- that drains the fd itself) loses nothing: the notices stay queued.
    local v = ffi.new("uint64_t[1]")
    lu.assertEquals(tonumber(ffi.C.hub_test_read(hub:fd(), v, 8)), 8)
    lu.assertEquals(tonumber(v[0]), 1)
    lu.assertFalse(readable(hub:fd()))
    lu.assertEquals(hub:poll(), 10)
    lu.assertEquals(ran, 10)
    lu.assertEquals(hub:poll(), 0)
end

function TestHub:test_poll_never_blocks_and_run_blocks_until_due_or_timeout()
    local hub = self.hub
    local t = self:gate()
    local ran = 0
    t:on_done(function() ran = ran + 1 end)
    local t0 = isle.now()
    for _ = 1, 100 do lu.assertEquals(hub:poll(), 0) end
    lu.assertTrue(isle.now() - t0 < 1, "poll blocked")
    -- run(timeout): nothing becomes due, so it returns 0 after the timeout.
    t0 = isle.now()
    lu.assertEquals(hub:run(0.2), 0)
    lu.assertTrue(isle.now() - t0 >= 0.19, "run returned early: " .. (isle.now() - t0))
    lu.assertEquals(ran, 0)
    -- run() with no limit returns once the callback ran.
    local t2 = self.h:spawn_call("work", 0.1, "x")
    t2:on_done(function() ran = ran + 1 end)
    t0 = isle.now()
    lu.assertEquals(hub:run(), 1)
    local dt = isle.now() - t0
    lu.assertTrue(dt >= 0.09 and dt < 10, "run() took " .. dt)
    lu.assertEquals(ran, 1)
    self.mem[0] = 1
    lu.assertEquals(hub:run(20), 1)
    lu.assertEquals(ran, 2)
    -- Nothing pending: run() returns at once rather than wait for ever.
    t0 = isle.now()
    lu.assertEquals(hub:run(), 0)
    lu.assertTrue(isle.now() - t0 < 1)
    lu.assertError(hub.run, hub, "soon")
end

function TestHub:test_on_done_never_runs_inside_on_done()
    local hub = self.hub
    local t = self.h:spawn_call("work", 0, 5)
    lu.assertEquals({ t:wait() }, { true, 5 })
    local got
    lu.assertIs(t:on_done(function(ok, v) got = { ok, v } end), t)
    lu.assertNil(got, "ran inside on_done")
    lu.assertTrue(readable(hub:fd()), "an already-ended task's callback must make the fd readable")
    -- A callback that watches an ended task: that one runs on the next poll.
    local inner
    local t2 = self.h:spawn_call("work", 0, 6)
    t2:wait()
    t2:on_done(function()
        t:on_done(function(_, v) inner = v end)
        lu.assertNil(inner)
    end)
    lu.assertEquals(hub:poll(), 2)
    lu.assertEquals(got, { true, 5 })
    lu.assertNil(inner, "a callback registered from a callback ran in the same poll")
    lu.assertTrue(readable(hub:fd()))
    lu.assertEquals(hub:poll(), 1)
    lu.assertEquals(inner, 5)
    lu.assertErrorMsgContains("function expected", t.on_done, t, 42)
end

function TestHub:test_errors_go_to_on_error_and_never_escape_poll()
    local hub = self.hub
    local seen = {}
    isle.on_error(function(e, what) seen[#seen + 1] = { tostring(e), what } end)
    local t = self.h:spawn_call("work", 0, 1)
    t:wait()
    local after = false
    t:on_done(function() error("boom in callback") end)
    t:on_done(function() after = true end)
    local t3 = self.h:spawn_call("work", 0.05, 1)
    hub:go(function()
        t3:await()
        error("boom in coroutine")
    end)
    while hub:pending() > 0 do hub:run(5) end
    lu.assertTrue(after, "a failing callback stopped the next one")
    lu.assertEquals(#seen, 2)
    lu.assertStrContains(seen[1][1], "boom in callback")
    lu.assertStrContains(seen[1][1], "stack traceback")
    lu.assertEquals(seen[1][2], "an on_done callback")
    lu.assertStrContains(seen[2][1], "boom in coroutine")
    lu.assertEquals(seen[2][2], "a coroutine the hub resumed")
    -- A failing task's callback gets false, err (that is no error of the callback).
    local got
    self.h:spawn_call("fail", "nope"):on_done(function(ok, e) got = { ok, e.code } end)
    hub:run(10)
    lu.assertEquals(got, { false, "runtime" })
    lu.assertEquals(#seen, 2)
end

function TestHub:test_await_with_timeout()
    local hub = self.hub
    local t = self:gate()
    local r
    hub:go(function() r = { t:await(0.1) } end)
    lu.assertNil(r)
    lu.assertEquals(hub:pending(), 1)
    local t0 = isle.now()
    lu.assertEquals(hub:run(20), 1)
    lu.assertTrue(isle.now() - t0 >= 0.09)
    lu.assertFalse(r[1])
    lu.assertEquals(r[2].code, "timeout")
    lu.assertEquals(t:status(), "running", "a wait's timeout must not stop the task")
    lu.assertEquals(hub:pending(), 0)
    lu.assertEquals(next(hub.lists), nil, "the task's subscription was not taken back")
    -- The task ending later resumes nothing.
    self.mem[0] = 1
    wait_done({ t })
    lu.assertFalse(readable(hub:fd()), "a notice came for a wait that had timed out")
    lu.assertEquals(hub:poll(), 0)
    -- The task ending first: the timer goes away with the wait.
    local t2 = self.h:spawn_call("work", 0.05, "in time")
    hub:go(function() r = { t2:await(30) } end)
    lu.assertEquals(hub:run(20), 1)
    lu.assertEquals(r, { true, "in time" })
    lu.assertEquals(next(hub.lists), nil)
    -- await(0) never suspends. A closed gate again: with the first one's
    -- memory still open the job could end before the await looks.
    self.mem[0], self.mem[1] = 0, 0
    local t3 = self:gate()
    hub:go(function() r = { t3:await(0) } end)
    lu.assertEquals(r[2].code, "timeout")
end

function TestHub:test_await_misuse_raises_a_clear_error()
    local t = self.h:spawn_call("work", 0.05, 1)
    local ok, e = pcall(function() local r = t:await() return r end)
    lu.assertFalse(ok)
    lu.assertStrContains(e, "cannot suspend here")
    lu.assertStrContains(e, "test_hub.lua")
    -- A coroutine inside a C call (a sort comparator) cannot yield either.
    local co = coroutine.create(function()
        local r
        table.sort({ 2, 1 }, function(a, b) r = { pcall(t.await, t) } return a < b end)
        return r
    end)
    local _, r = coroutine.resume(co)
    lu.assertFalse(r[1])
    lu.assertStrContains(r[2], "cannot suspend here")
    lu.assertErrorMsgContains("number of seconds", t.await, t, "x")
    t:wait()
end

function TestHub:test_a_coroutine_awaits_several_tasks_in_turn()
    local hub = self.hub
    local out = {}
    local co = hub:go(function()
        for i = 1, 5 do
            local ok, v = self.h:spawn_call("work", 0.01, i * 10):await()
            out[i] = ok and v
        end
        return "end"
    end)
    lu.assertEquals(coroutine.status(co), "suspended")
    local resumed = 0
    while hub:pending() > 0 do resumed = resumed + hub:run(10) end
    lu.assertEquals(out, { 10, 20, 30, 40, 50 })
    lu.assertEquals(resumed, 5)
    lu.assertEquals(coroutine.status(co), "dead")
end

function TestHub:test_await_in_a_user_coroutine_and_stray_resumes_are_harmless()
    local hub = self.hub
    local t = self:gate()
    local r
    local co = coroutine.create(function() r = { t:await() } end)
    -- await yields out of the user's coroutine, with no values.
    lu.assertEquals({ coroutine.resume(co) }, { true })
    lu.assertEquals(coroutine.status(co), "suspended")
    -- Anyone else resuming it meanwhile: the await yields again.
    lu.assertEquals({ coroutine.resume(co, "stray") }, { true })
    lu.assertNil(r)
    self.mem[0] = 1
    lu.assertEquals(hub:run(20), 1)
    lu.assertEquals(r, { true, "gate" })
    lu.assertEquals(coroutine.status(co), "dead")
end

function TestHub:test_unwatched_tasks_cost_nothing()
    local hub = self.hub
    local tasks = {}
    for i = 1, 20 do tasks[i] = self.h:spawn_call("work", 0, i) end
    for i = 1, 20 do lu.assertEquals({ tasks[i]:wait() }, { true, i }) end
    lu.assertEquals(self.h:call("work", 0, "c"), "c")
    -- Blocking calls in a hub coroutine block (no adapter attached).
    local r
    hub:go(function() r = self.h:call("work", 0.01, "blocked") end)
    lu.assertEquals(r, "blocked")
    lu.assertEquals(next(hub.lists), nil, "an unwatched task was subscribed")
    lu.assertEquals(hub:pending(), 0)
    lu.assertFalse(readable(hub:fd()))
    lu.assertEquals(hub:poll(), 0)
end

function TestHub:test_several_waiters_on_one_task_one_subscription()
    local hub = self.hub
    local t = self:gate()
    local got = {}
    for i = 1, 3 do hub:go(function()
        local _, v = t:await()
        got[#got + 1] = v .. i
    end) end
    t:on_done(function(_, v) got[#got + 1] = v .. "cb" end)
    local n = 0
    for _ in pairs(hub.lists) do n = n + 1 end
    lu.assertEquals(n, 1)
    self.mem[0] = 1
    lu.assertEquals(hub:run(20), 4)
    table.sort(got)
    lu.assertEquals(got, { "gate1", "gate2", "gate3", "gatecb" })
end

function TestHub:test_poll_inside_a_callback_is_misuse()
    local hub = self.hub
    local t = self.h:spawn_call("work", 0, 1)
    t:wait()
    local e
    t:on_done(function() e = select(2, pcall(hub.poll, hub)) end)
    lu.assertEquals(hub:poll(), 1)
    lu.assertStrContains(e, "called from a callback")
end

os.exit(lu.LuaUnit.run())
