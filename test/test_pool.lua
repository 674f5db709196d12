-- Pools (issue 9, "Pools"): isle.pool and its methods (an isle handle's
-- calling methods plus size, stats and close), every error, one bounded
-- queue with back-pressure and `busy`, cancel of queued and running tasks,
-- close with queued and running work (every task ends exactly once), pools
-- passed to isles and looked up by name, 4 concurrent submitters (the host
-- and 3 isles) with every task run exactly once, and the load shared by the
-- pool's isles.
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")
local C = require("isle.cdef").C

local err_of = helpers.err_of

local function msg_of(f, ...)
    return tostring(err_of(f, ...))
end

local settle = helpers.settle

-- A job that blocks its isle until the gate gets a value: a pool isle kept
-- busy on purpose, with no timing involved.
local function gated(gate, started)
    local isle = require("isle")
    if started then started:push(isle.id()) end
    gate:pop()
    return "opened"
end

local INIT = function()
    function sq(x) return x * x end
    function fail(msg) error(msg) end
    function whoami() return require("isle").id() end
    function note(ch, v) ch:push(v) end
end

TestPool = { deadline = 60 }

function TestPool:test_the_calling_methods_of_an_isle_handle()
    local p = isle.pool{ size = 2, init = INIT, name = "tp-methods" }
    lu.assertEquals(p:size(), 2)
    lu.assertEquals(p:name(), "tp-methods")
    lu.assertTrue(p:id() > 0)
    lu.assertTrue(p:isowner())
    lu.assertFalse(p:is_closed())
    lu.assertStrContains(tostring(p), "(2 isles)")
    lu.assertEquals(p:call("sq", 7), 49)
    lu.assertEquals(p:eval("return 1 + ..., 'x'", 2), 3)
    lu.assertEquals(select(2, p:eval("return 1 + ..., 'x'", 2)), "x")
    lu.assertEquals(p:exec(function(a) return a .. "!" end, "hi"), "hi!")
    local t1, t2, t3 = p:spawn_call("sq", 3), p:spawn_eval("return 4"), p:spawn_exec(function() return 5 end)
    lu.assertEquals({ select(2, t1:wait(10)) }, { 9 })
    lu.assertEquals({ select(2, t2:wait(10)) }, { 4 })
    lu.assertEquals({ select(2, t3:wait(10)) }, { 5 })
    local u1, u2, u3 = p:try_spawn_call("sq", 6), p:try_spawn_eval("return 'e'"),
        p:try_spawn_exec(function() return "x" end)
    lu.assertEquals({ select(2, u1:wait(10)) }, { 36 })
    lu.assertEquals({ select(2, u2:wait(10)) }, { "e" })
    lu.assertEquals({ select(2, u3:wait(10)) }, { "x" })
    local ch = isle.channel(4)
    lu.assertTrue(p:post("note", ch, "posted"))
    lu.assertTrue(p:try_post("note", ch, "tried"))
    local got = { ch:pop(10), ch:pop(10) }
    table.sort(got)
    lu.assertEquals(got, { "posted", "tried" })
    -- Options travel with the calls, as for isles.
    local tok = isle.token()
    local v = p:with{ timeout = 10, token = tok }
    lu.assertEquals(v:call("sq", 5), 25)
    lu.assertFalse(v:isowner())
    local e = err_of(v.close, v)
    lu.assertStrContains(e, "owning")
    local slow = p:with{ timeout = 0.05 }:spawn_eval("while true do end")
    local ok, te = slow:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(te.code, "timeout")
    local tt = v:spawn_eval("require('isle').sleep(30)")
    lu.assertTrue(helpers.eventually(function() return p:stats().running == 1 end)) -- a running job
    tok:cancel()
    ok, te = tt:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(te.code, "cancelled")
    lu.assertTrue(p:close())
    lu.assertTrue(p:close()) -- idempotent
    lu.assertTrue(p:is_closed())
    lu.assertStrContains(tostring(p), "closed")
end

function TestPool:test_errors_come_back_as_from_an_isle()
    local p = isle.pool{ size = 1, init = INIT }
    local e = err_of(p.call, p, "fail", "boom")
    lu.assertEquals(e.code, "runtime")
    lu.assertStrContains(tostring(e), "boom")
    lu.assertStrContains(e.traceback, "stack traceback")
    e = err_of(p.call, p, "nope")
    lu.assertStrContains(tostring(e), "no function 'nope'")
    local t = p:spawn_eval("error({ code = 1 })")
    local ok, te = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(te.code, "runtime")
    lu.assertEquals(p:call("sq", 2), 4) -- the isle serves on
    p:close()
end

function TestPool:test_bad_arguments_raise_before_anything_is_made()
    local live = C.isle_live_count()
    lu.assertStrContains(msg_of(isle.pool), "bad argument #1 to 'pool' (table expected, got nil)")
    lu.assertStrContains(msg_of(isle.pool, {}), "option 'size' must be an integer in 1..256 (got nil)")
    for _, n in ipairs({ 0, 1.5, 257, "2" }) do
        lu.assertStrContains(msg_of(isle.pool, { size = n }), "option 'size'")
    end
    for _, q in ipairs({ 0, -1, 2.5, "8" }) do
        lu.assertStrContains(msg_of(isle.pool, { size = 1, queue = q }), "option 'queue'")
    end
    lu.assertStrContains(msg_of(isle.pool, { size = 1, name = "" }), "option 'name'")
    lu.assertStrContains(msg_of(isle.pool, { size = 1, capacity = 4 }), "unknown option 'capacity'")
    lu.assertStrContains(msg_of(isle.pool, { size = 1, bogus = true }), "unknown option 'bogus'")
    -- isle.spawn's options are checked as isle.spawn checks them.
    lu.assertStrContains(msg_of(isle.pool, { size = 1, libs = 3 }), "option 'libs'")
    lu.assertStrContains(msg_of(isle.pool, { size = 1, init = 3 }), "option 'init'")
    lu.assertStrContains(msg_of(isle.pool, { size = 1, memory_limit = -1 }), "memory_limit")
    -- A failing init: the pool is not made, its isles are closed.
    local e = err_of(isle.pool, { size = 3, init = "error('no init')", name = "tp-bad" })
    lu.assertStrContains(tostring(e), "no init")
    lu.assertNil(isle.pool_ref("tp-bad"))
    lu.assertTrue(helpers.eventually(function() return C.isle_live_count() == live end))
    local p = isle.pool{ size = 1, name = "tp-dup" }
    lu.assertStrContains(msg_of(isle.pool, { size = 1, name = "tp-dup" }),
        "the name 'tp-dup' is in use by an open pool")
    lu.assertStrContains(msg_of(p.eval, p, 42), "bad argument #1 to 'eval' (string expected, got number)")
    lu.assertStrContains(msg_of(p.call, p, nil), "bad argument #1 to 'call'")
    lu.assertStrContains(msg_of(p.exec, p, print), "function")
    lu.assertStrContains(msg_of(p.post, p, {}), "bad argument #1 to 'post'")
    lu.assertStrContains(msg_of(p.with, p, 1), "bad argument #1 to 'with'")
    lu.assertStrContains(msg_of(p.with, p, { nope = 1 }), "unknown call option 'nope'")
    lu.assertEquals(err_of(p.call, p, "f", coroutine.create(print)).code, "value")
    lu.assertStrContains(msg_of(p.close, p, 1), "bad argument #1 to 'close'")
    lu.assertStrContains(msg_of(p.close, p, { timeout = -1 }), "close option 'timeout'")
    lu.assertStrContains(msg_of(isle.pool_ref, {}), "bad argument #1 to 'pool_ref'")
    lu.assertEquals(p:stats().queued, 0) -- nothing was queued by the bad calls
    p:close()
    -- The name is free again once the pool is closed.
    isle.pool{ size = 1, name = "tp-dup" }:close()
end

function TestPool:test_closed_pool_refuses_work()
    local p = isle.pool{ size = 1, init = INIT }
    p:close()
    local e = err_of(p.call, p, "sq", 1)
    lu.assertEquals(e.code, "closed")
    lu.assertStrContains(tostring(e), "is closed")
    lu.assertEquals(err_of(p.spawn_eval, p, "return 1").code, "closed")
    lu.assertEquals(err_of(p.post, p, "sq", 1).code, "closed")
    local t, te = p:try_spawn_call("sq", 1)
    lu.assertNil(t)
    lu.assertEquals(te.code, "closed")
    local ok
    ok, te = p:try_post("sq", 1)
    lu.assertNil(ok)
    lu.assertEquals(te.code, "closed")
end

function TestPool:test_one_bounded_queue_back_pressure_and_busy()
    local p = isle.pool{ size = 1, queue = 2, init = INIT }
    local gate, started = isle.channel(8), isle.channel(8)
    local first = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10)) -- the isle is busy now; the queue is empty
    local q1 = p:try_spawn_call("sq", 1)
    local q2 = p:try_spawn_call("sq", 2)
    lu.assertNotNil(q1)
    lu.assertNotNil(q2)
    lu.assertEquals(p:stats().queued, 2)
    local t, e = p:try_spawn_call("sq", 3)
    lu.assertNil(t)
    lu.assertEquals(e.code, "busy")
    lu.assertStrContains(tostring(e), "is full")
    lu.assertNil(p:try_spawn_eval("return 1"))
    lu.assertNil(p:try_spawn_exec(function() end))
    local ok
    ok, e = p:try_post("sq", 1)
    lu.assertNil(ok)
    lu.assertEquals(e.code, "busy")
    -- A blocking submit waits for room: here an isle job, which yields.
    local submitter = isle.spawn()
    local sub = submitter:spawn_exec(function(pl) return pl:call("sq", 9) end, p)
    lu.assertFalse(sub:wait(0.2)) -- still waiting: the queue stays full while the gate is shut
    -- The host blocks the same way; another isle opens the gate meanwhile.
    local opener = isle.spawn()
    local o = opener:spawn_exec(function(g) require("isle").sleep(0.1); g:push(1) end, gate)
    lu.assertEquals(p:call("sq", 4), 16)
    lu.assertEquals({ select(2, first:wait(10)) }, { "opened" })
    lu.assertEquals({ select(2, q1:wait(10)) }, { 1 })
    lu.assertEquals({ select(2, q2:wait(10)) }, { 4 })
    lu.assertEquals({ select(2, sub:wait(10)) }, { 81 })
    lu.assertTrue(o:wait(10))
    submitter:close()
    opener:close()
    p:close()
end

function TestPool:test_cancel_a_queued_and_a_running_task()
    local p = isle.pool{ size = 1, init = INIT }
    local gate, started = isle.channel(8), isle.channel(8)
    local running = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local queued = p:spawn_call("sq", 3)
    local behind = p:spawn_call("sq", 4)
    queued:cancel()
    -- Ended at once, while its isle is still busy.
    local ok, e = queued:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    running:cancel()
    ok, e = running:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertEquals({ select(2, behind:wait(10)) }, { 16 })
    -- A compiled runaway loop is cancelled as in an isle.
    local spin = p:spawn_eval("local n = 0 while true do n = n + 1 end")
    lu.assertTrue(helpers.eventually(function() return p:stats().running == 1 end))
    spin:cancel()
    ok, e = spin:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertEquals(p:call("sq", 5), 25)
    local st = p:stats()
    lu.assertEquals(st.cancelled, 3) -- the queued one counts once its isle passed it by
    lu.assertEquals(st.done, 2)
    p:close()
end

function TestPool:test_a_call_timeout_runs_from_the_submit_queued_time_included()
    local p = isle.pool{ size = 1, init = INIT }
    local gate, started = isle.channel(8), isle.channel(8)
    local first = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local t = p:with{ timeout = 0.05 }:spawn_call("sq", 2)
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    gate:push(1)
    lu.assertTrue(first:wait(10))
    p:close()
end

function TestPool:test_close_runs_what_is_queued_every_task_ends_once()
    local p = isle.pool{ size = 2, init = INIT }
    local gate, started = isle.channel(8), isle.channel(8)
    local tasks = { p:spawn_exec(gated, gate, started), p:spawn_exec(gated, gate, started) }
    lu.assertNotNil(started:pop(10))
    lu.assertNotNil(started:pop(10))
    for i = 1, 6 do tasks[#tasks + 1] = p:spawn_call("sq", i) end
    lu.assertEquals(p:stats().queued, 6)
    local opener = isle.spawn()
    opener:spawn_exec(function(g) require("isle").sleep(0.1); g:push(1); g:push(1) end, gate)
    lu.assertTrue(p:close()) -- drains: returns once everything queued has run
    for i = 1, #tasks do
        lu.assertTrue(tasks[i]:done())
        lu.assertTrue((tasks[i]:result()))
    end
    lu.assertEquals(select(2, tasks[8]:result()), 36)
    local st = p:stats()
    lu.assertEquals(st.done, 8)
    lu.assertEquals(st.queued + st.running + st.failed + st.cancelled + st.closed, 0)
    opener:close()
end

function TestPool:test_close_with_cancel_ends_queued_and_running_work()
    local p = isle.pool{ size = 2, init = INIT }
    local started = isle.channel(8)
    local tasks = {
        p:spawn_exec(function(s) s:push(1); while true do end end, started),
        p:spawn_exec(function(s) s:push(1); require("isle").sleep(60) end, started),
    }
    lu.assertNotNil(started:pop(10))
    lu.assertNotNil(started:pop(10))
    for i = 1, 5 do tasks[#tasks + 1] = p:spawn_call("sq", i) end
    lu.assertTrue(p:close{ cancel = true })
    local codes = {}
    for i = 1, #tasks do
        lu.assertTrue(tasks[i]:done())
        local ok, e = tasks[i]:result()
        lu.assertFalse(ok)
        codes[e.code] = (codes[e.code] or 0) + 1
    end
    lu.assertEquals(codes, { closed = 7 })
    local st = p:stats()
    lu.assertEquals(st.queued + st.running + st.done, 0)
    lu.assertEquals(st.closed + st.cancelled + st.failed, 7)
end

function TestPool:test_close_with_a_timeout_drains_then_cancels()
    local p = isle.pool{ size = 1, init = INIT }
    local started = isle.channel(8)
    local long = p:spawn_exec(function(s) s:push(1); require("isle").sleep(60) end, started)
    lu.assertNotNil(started:pop(10))
    local queued = p:spawn_call("sq", 2)
    local t0 = isle.now()
    lu.assertTrue(p:close{ timeout = 0.1 })
    lu.assertTrue(isle.now() - t0 < 30)
    local ok, e = long:result()
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "closed")
    ok, e = queued:result()
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "closed")
end

function TestPool:test_four_submitters_every_task_runs_exactly_once()
    local N = 200
    local p = isle.pool{ size = 2, queue = 16, init = INIT }
    local log = isle.channel(4 * N + 8)
    local function submit(pl, lg, who, n)
        local ts = {}
        for i = 1, n do ts[i] = pl:spawn_exec(function(l, w, k) l:push(w .. ":" .. k); return k end, lg, who, i) end
        local sum = 0
        for i = 1, n do
            local ok, v = ts[i]:wait()
            assert(ok, tostring(v))
            sum = sum + v
        end
        return sum
    end
    local subs, runs = {}, {}
    for w = 1, 3 do
        subs[w] = isle.spawn()
        runs[w] = subs[w]:spawn_exec(submit, p, log, "isle" .. w, N)
    end
    lu.assertEquals(submit(p, log, "host", N), N * (N + 1) / 2)
    for w = 1, 3 do
        lu.assertEquals({ select(2, runs[w]:wait(30)) }, { N * (N + 1) / 2 })
        subs[w]:close()
    end
    local seen, count = {}, 0
    while true do
        local v = log:try_pop()
        if v == nil then break end
        lu.assertNil(seen[v], "ran twice: " .. v)
        seen[v] = true
        count = count + 1
    end
    lu.assertEquals(count, 4 * N)
    lu.assertEquals(p:stats().done, 4 * N)
    p:close()
end

function TestPool:test_a_pool_passed_to_an_isle_is_the_same_pool()
    local p = isle.pool{ size = 1, init = INIT, name = "tp-passed" }
    local h = isle.spawn()
    local id, owner, sq, e = h:exec(function(pl)
        local _, err = pcall(pl.close, pl)
        return pl:id(), pl:isowner(), pl:call("sq", 12), tostring(err)
    end, p)
    lu.assertEquals(id, p:id())
    lu.assertFalse(owner)
    lu.assertEquals(sq, 144)
    lu.assertStrContains(e, "owning")
    -- And back: a pool returned by an isle arrives as the same pool too.
    local back = h:exec(function(pl) return pl end, p)
    lu.assertEquals(back:id(), p:id())
    lu.assertFalse(back:isowner())
    lu.assertEquals(back:call("sq", 3), 9)
    -- A pool made inside an isle: the isle owns it.
    local r = h:exec(function()
        local isle = require("isle")
        local inner = isle.pool{ size = 2, init = function() function twice(x) return 2 * x end end }
        local v = inner:call("twice", 21)
        local st = inner:stats()
        inner:close()
        return v, st.done, inner:is_closed()
    end)
    lu.assertEquals(r, 42)
    h:close()
    -- Shared states carry references too: the same pool arrives there.
    local st = isle.state("return function(x) return x:size(), x:id() end")
    local size, pid = st:call(p)
    lu.assertEquals(size, p:size())
    lu.assertEquals(pid, p:id())
    st:close()
    -- The owner's close reaches every reference.
    p:close()
    lu.assertEquals(err_of(back.call, back, "sq", 1).code, "closed")
end

function TestPool:test_lookup_by_name_and_id()
    local p = isle.pool{ size = 1, init = INIT, name = "tp-lookup" }
    local r = isle.pool_ref("tp-lookup")
    lu.assertEquals(r:id(), p:id())
    lu.assertFalse(r:isowner())
    lu.assertEquals(r:call("sq", 4), 16)
    lu.assertEquals(isle.pool_ref(p:id()):call("sq", 5), 25)
    local h = isle.spawn()
    lu.assertEquals(h:eval("return require('isle').pool_ref('tp-lookup'):call('sq', 6)"), 36)
    local v, e = isle.pool_ref("tp-none")
    lu.assertNil(v)
    lu.assertEquals(e.code, "unknown")
    lu.assertStrContains(tostring(e), "no open pool tp-none")
    lu.assertEquals(select(2, isle.pool_ref(1e9)).code, "unknown")
    lu.assertEquals(h:eval("local p, e = require('isle').pool_ref('tp-none') return e.code"), "unknown")
    p:close()
    lu.assertEquals(select(2, isle.pool_ref("tp-lookup")).code, "unknown")
    lu.assertEquals(err_of(r.call, r, "sq", 1).code, "closed")
    h:close()
end

function TestPool:test_the_last_owner_collected_closes_the_pool()
    local live = C.isle_live_count()
    local ref, tasks
    do
        local p = isle.pool{ size = 2, init = INIT, name = "tp-collected" }
        ref = isle.pool_ref("tp-collected")
        tasks = { p:spawn_call("sq", 2), p:spawn_call("sq", 3) }
    end
    settle()
    lu.assertEquals(select(2, isle.pool_ref("tp-collected")).code, "unknown")
    lu.assertEquals(err_of(ref.call, ref, "sq", 1).code, "closed")
    -- What was queued still ran (a collected owner drains, as for isles).
    lu.assertEquals({ select(2, tasks[1]:wait(10)) }, { 4 })
    lu.assertEquals({ select(2, tasks[2]:wait(10)) }, { 9 })
    lu.assertTrue(helpers.eventually(function() return C.isle_live_count() == live end))
end

function TestPool:test_stats_count_queued_running_and_ended_tasks()
    local p = isle.pool{ size = 1, init = INIT }
    local st = p:stats()
    lu.assertEquals({ st.queued, st.running, st.done, st.failed, st.cancelled }, { 0, 0, 0, 0, 0 })
    local gate, started = isle.channel(8), isle.channel(8)
    local first = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local q = { p:spawn_call("sq", 1), p:spawn_call("fail", "x"), p:spawn_call("sq", 2) }
    q[3]:cancel()
    st = p:stats()
    lu.assertEquals(st.running, 1)
    lu.assertEquals(st.queued, 3) -- the cancelled one is still in the queue until an isle passes it by
    lu.assertEquals(st.oldest.job, "exec")
    gate:push(1)
    lu.assertTrue(first:wait(10))
    for i = 1, 3 do q[i]:wait(10) end
    lu.assertTrue(helpers.eventually(function() return p:stats().cancelled == 1 end))
    st = p:stats()
    lu.assertEquals({ st.queued, st.running, st.done, st.failed, st.cancelled }, { 0, 0, 2, 1, 1 })
    p:close()
end

function TestPool:test_the_isles_of_a_pool_share_the_load()
    local p = isle.pool{ size = 3, init = INIT }
    local gate, started = isle.channel(8), isle.channel(8)
    local ts = {}
    for i = 1, 3 do ts[i] = p:spawn_exec(gated, gate, started) end
    -- Three blocking jobs run at once: each on an isle of its own.
    local ids = {}
    for _ = 1, 3 do ids[started:pop(10)] = true end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    lu.assertEquals(n, 3)
    lu.assertEquals(p:stats().running, 3)
    for _ = 1, 3 do gate:push(1) end
    for i = 1, 3 do lu.assertTrue(ts[i]:wait(10)) end
    -- Jobs that sleep (blocking their isle for the pool) spread too.
    local seen = {}
    local many = {}
    for i = 1, 9 do many[i] = p:spawn_exec(function() local isle = require("isle"); isle.sleep(0.02); return isle.id() end) end
    for i = 1, 9 do seen[select(2, many[i]:wait(10))] = true end
    n = 0
    for _ in pairs(seen) do n = n + 1 end
    lu.assertTrue(n >= 2, "ran on " .. n .. " isle(s)")
    p:close()
end

function TestPool:test_spawn_options_reach_every_isle()
    local p = isle.pool{ size = 2, libs = false, memory_limit = 8 * 1024 * 1024, args = { 5 },
                         init = function(k) base = k end }
    local gate, started = isle.channel(8), isle.channel(8)
    local ts = {}
    for i = 1, 2 do
        ts[i] = p:spawn_exec(function(g, s)
            local isle = require("isle")
            s:push(isle.id())
            g:pop()
            return base, io == nil, select(2, isle.self():memory())
        end, gate, started)
    end
    started:pop(10); started:pop(10)
    gate:push(1); gate:push(1)
    for i = 1, 2 do
        local ok, b, no_io, limit = ts[i]:wait(10)
        lu.assertTrue(ok)
        lu.assertEquals(b, 5)
        lu.assertTrue(no_io)
        lu.assertEquals(limit, 8 * 1024 * 1024)
    end
    -- A job past the limit fails with `memory` and its isle serves on.
    local ok, e = p:spawn_eval("local t = {} for i = 1, 1e8 do t[i] = i end"):wait(30)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "memory")
    lu.assertEquals(p:eval("return base"), 5)
    p:close()
end

function TestPool:test_no_task_slot_or_thread_is_left_behind()
    settle()
    local live_tasks, live_isles = C.isle_task_live_count(), C.isle_live_count()
    for _ = 1, 3 do
        local p = isle.pool{ size = 2, queue = 4, init = INIT }
        local ts = {}
        for i = 1, 10 do ts[i] = p:spawn_call("sq", i) end
        for i = 1, 10 do ts[i]:wait(10) end
        local r = isle.pool_ref(p:id())
        p:close()
        r = nil
        ts = nil
    end
    settle()
    lu.assertTrue(helpers.eventually(function()
        settle()
        return C.isle_live_count() == live_isles and C.isle_task_live_count() == live_tasks
    end), "tasks " .. C.isle_task_live_count() .. " vs " .. live_tasks .. ", isles " .. C.isle_live_count()
        .. " vs " .. live_isles)
end

-- A pool owned by an isle: when that isle's state closes, its teardown
-- cancels the pool's isles, which close the pool; every task ends once,
-- and references elsewhere see it closed.
function TestPool:test_the_owners_state_closing_closes_the_pool()
    local a = isle.spawn()
    local ref = a:exec(function()
        PINNED = require("isle").pool{ size = 1, init = "function sq(x) return x * x end" }
        return PINNED
    end)
    lu.assertFalse(ref:isowner())
    local gate, started = isle.channel(4), isle.channel(4)
    local running = ref:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local queued = ref:spawn_call("sq", 2)
    a:close{ cancel = true }
    local ok, e = running:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "closed")
    ok, e = queued:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "closed")
    lu.assertTrue(ref:is_closed())
    lu.assertEquals(err_of(ref.call, ref, "sq", 1).code, "closed")
end

-- A submit waiting for room when the pool closes wakes with `closed`.
function TestPool:test_a_submit_waiting_for_room_ends_closed_when_the_pool_closes()
    local p = isle.pool{ size = 1, queue = 1, init = INIT }
    local gate, started = isle.channel(4), isle.channel(4)
    local first = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local queued = p:spawn_call("sq", 2)
    local h = isle.spawn()
    local waiting = h:spawn_exec(function(pl, s)
        s:push("submitting")
        local ok, e = pcall(pl.call, pl, "sq", 3)
        return ok, type(e) == "table" and e.code or tostring(e)
    end, p, started)
    lu.assertEquals(started:pop(10), "submitting")
    lu.assertFalse(waiting:wait(0.1)) -- still waiting for room
    p:close{ cancel = true }
    lu.assertEquals({ select(2, waiting:wait(10)) }, { false, "closed" })
    lu.assertFalse((first:result()))
    lu.assertFalse((queued:result()))
    h:close()
end

-- Submitters in 3 isles and the host, random cancels, then a close with
-- cancel while they still submit: no wait hangs, every accepted task ends
-- once (the pool's counts add up to them), later submits get `closed`.
function TestPool:test_cancels_and_a_close_racing_submitters_end_every_task_once()
    local p = isle.pool{ size = 2, queue = 8, init = INIT }
    local go = isle.channel(4)
    local function submit(pl, gate, seed)
        require("isle")
        math.randomseed(seed)
        local ts, refused = {}, 0
        gate:pop()
        for _ = 1, 150 do
            local ok, t = pcall(pl.spawn_exec, pl, function(d)
                if d > 0 then require("isle").sleep(d) end
                return d
            end, math.random() < 0.2 and 0.002 or 0)
            if ok then
                ts[#ts + 1] = t
                if math.random() < 0.2 then t:cancel() end
            else
                assert(t.code == "closed", tostring(t))
                refused = refused + 1
            end
        end
        local codes = {}
        for i = 1, #ts do
            local ok, v = ts[i]:wait()
            local k = ok and "done" or v.code
            codes[k] = (codes[k] or 0) + 1
        end
        return #ts, refused, codes
    end
    local subs, runs = {}, {}
    for w = 1, 3 do
        subs[w] = isle.spawn()
        runs[w] = subs[w]:spawn_exec(submit, p, go, w)
    end
    for _ = 1, 3 do go:push(1) end
    -- The host submits too, then closes mid-way.
    local host_ts = {}
    for i = 1, 40 do host_ts[i] = p:spawn_call("sq", i) end
    host_ts[3]:cancel()
    p:close{ cancel = true }
    local accepted, by_code = #host_ts, {}
    for i = 1, #host_ts do
        local ok, v = host_ts[i]:wait(10)
        local k = ok and "done" or v.code
        by_code[k] = (by_code[k] or 0) + 1
    end
    for w = 1, 3 do
        local ok, n, refused, codes = runs[w]:wait(30)
        lu.assertTrue(ok, tostring(n))
        lu.assertEquals(n + refused, 150)
        accepted = accepted + n
        for k, c in pairs(codes) do by_code[k] = (by_code[k] or 0) + c end
        subs[w]:close()
    end
    local total = 0
    for k, c in pairs(by_code) do
        lu.assertTrue(k == "done" or k == "cancelled" or k == "closed", "unexpected end: " .. k)
        total = total + c
    end
    io.stderr:write(string.format("[pool race] accepted %d: done %d, cancelled %d, closed %d\n", accepted,
        by_code.done or 0, by_code.cancelled or 0, by_code.closed or 0))
    lu.assertEquals(total, accepted)
    local st = p:stats()
    lu.assertEquals(st.queued + st.running, 0)
    lu.assertEquals(st.done + st.failed + st.cancelled + st.closed, accepted)
    lu.assertEquals(st.done, by_code.done or 0)
end

-- In a host under an adapter that suspends (luv here), a submit that
-- waits for room parks its coroutine and the loop keeps running.
function TestPool:test_host_coroutines_under_luv_suspend_while_the_queue_is_full()
    local have_uv, uv = pcall(require, "luv")
    if not have_uv then
        lu.skip("lua-luv is not installed (make deps installs it)")
    end
    local luv = require("isle.luv")
    local p = isle.pool{ size = 1, queue = 1, init = INIT }
    local gate, started = isle.channel(4), isle.channel(4)
    local first = p:spawn_exec(gated, gate, started)
    lu.assertNotNil(started:pop(10))
    local queued = p:spawn_call("sq", 2) -- the queue is full now
    local hub = isle.hub()
    luv.attach()
    local r, ticks = nil, 0
    local co = hub:go(function() r = { pcall(p.call, p, "sq", 3) } end)
    lu.assertEquals(coroutine.status(co), "suspended") -- parked, not blocked
    local timer = uv.new_timer()
    timer:start(1, 1, function()
        ticks = ticks + 1
        if ticks == 20 then gate:push(1) end -- the loop runs while the submit waits
        if r then timer:stop() timer:close() end
    end)
    local guard = uv.new_timer()
    guard:start(20000, 0, function() uv.stop() end)
    guard:unref()
    uv.run()
    guard:stop() guard:close()
    luv.detach()
    lu.assertEquals(r, { true, 9 })
    lu.assertTrue(ticks >= 20)
    lu.assertTrue(first:wait(10))
    lu.assertEquals({ select(2, queued:wait(10)) }, { 4 })
    p:close()
end

os.exit(lu.LuaUnit.run())
