-- Channels (issue 9, "Channels"): isle.channel and its methods, every
-- error, 4 producer and 4 consumer isles with every value received exactly
-- once, waits that yield inside isle jobs, host waits with timeouts, close,
-- channels passed to isles staying the same channel, and no task slot
-- leaked by waits that end any way.
local lu = require("luaunit")
local isle = require("isle")
local C = require("isle.cdef").C

local helpers = require("test.helpers")
local err_of = helpers.err_of

local settle = helpers.settle

TestChannel = {}

function TestChannel:test_push_pop_fifo_len_and_values_as_for_calls()
    local ch = isle.channel(8)
    lu.assertEquals(ch:len(), 0)
    local values = { 1, -0.5, "bin\0ary", true, false, { a = { 1, 2, x = "y" } }, 2 ^ 53 }
    for _, v in ipairs(values) do lu.assertTrue(ch:push(v)) end
    lu.assertTrue(ch:push(42LL))
    lu.assertEquals(ch:len(), #values + 1)
    for _, v in ipairs(values) do lu.assertEquals(ch:pop(), v) end
    local big = ch:pop()
    lu.assertEquals(tostring(big), "42LL")
    lu.assertEquals(ch:len(), 0)
    -- Numbers travel inline: the odd ones too.
    ch:push(0 / 0)
    ch:push(-0.0)
    ch:push(math.huge)
    local nan = ch:pop()
    lu.assertTrue(nan ~= nan)
    lu.assertEquals(1 / ch:pop(), -math.huge)
    lu.assertEquals(ch:pop(), math.huge)
    lu.assertStrContains(tostring(ch), "isle.channel (0/8)")
    -- The default capacity.
    local d = isle.channel()
    for i = 1, 1024 do assert(d:push(i, 0)) end
    local ok, e = d:push(1025, 0)
    lu.assertNil(ok)
    lu.assertEquals(e.code, "timeout")
end

function TestChannel:test_bad_arguments_raise_before_anything_is_queued()
    for _, cap in ipairs({ 0, -1, 1.5, "8", 0 / 0, 2 ^ 40 }) do
        lu.assertStrContains(tostring(err_of(isle.channel, cap)), "bad argument #1 to 'channel'")
    end
    local ch = isle.channel(2)
    lu.assertStrContains(err_of(ch.push, ch, nil), "bad argument #1 to 'push' (a value expected, got nil)")
    local e = err_of(ch.push, ch, { f = coroutine.create(print) })
    lu.assertEquals(e.code, "value")
    lu.assertStrContains(tostring(e), "value[1].f")
    lu.assertStrContains(err_of(ch.push, ch, 1, "soon"), "bad argument to 'push' (timeout")
    lu.assertStrContains(err_of(ch.pop, ch, {}), "bad argument to 'pop' (timeout")
    lu.assertEquals(ch:len(), 0)
end

function TestChannel:test_try_pop_never_waits()
    local ch = isle.channel(2)
    local t0 = isle.now()
    lu.assertNil(ch:try_pop())
    lu.assertTrue(isle.now() - t0 < 1)
    ch:push("x")
    lu.assertEquals(ch:try_pop(), "x")
    ch:close()
    local v, e = ch:try_pop()
    lu.assertNil(v)
    lu.assertEquals(e.code, "closed")
end

function TestChannel:test_host_waits_time_out_and_lose_nothing()
    local ch = isle.channel(1)
    local t0 = isle.now()
    local v, e = ch:pop(0.05)
    lu.assertNil(v)
    lu.assertEquals(e.code, "timeout")
    lu.assertTrue(isle.now() - t0 >= 0.04)
    ch:push("a")
    local ok
    ok, e = ch:push("b", 0.05)
    lu.assertNil(ok)
    lu.assertEquals(e.code, "timeout")
    lu.assertEquals(ch:len(), 1)
    lu.assertEquals(ch:pop(0.05), "a")
    lu.assertNil(ch:try_pop())
end

function TestChannel:test_jobs_yield_while_they_wait()
    local h = isle.spawn()
    local ch = isle.channel(2)
    -- A pop that waits: the isle still serves the next call meanwhile.
    local popper = h:spawn_exec(function(c) return c:pop(30) end, ch)
    lu.assertEquals(h:exec(function() return "served" end), "served")
    lu.assertEquals(popper:status(), "running")
    ch:push("late")
    lu.assertEquals({ popper:wait(10) }, { true, "late" })
    -- A push that waits for room, likewise.
    local pusher = h:spawn_exec(function(c) for i = 1, 5 do assert(c:push(i, 30)) end return true end, ch)
    lu.assertEquals(h:exec(function() return "again" end), "again")
    local got = {}
    for _ = 1, 5 do got[#got + 1] = ch:pop(10) end
    lu.assertEquals(got, { 1, 2, 3, 4, 5 })
    lu.assertEquals({ pusher:wait(10) }, { true, true })
    -- A job's wait that times out.
    local r = { h:exec(function(c) local v, e = c:pop(0.05) return v, e.code end, ch) }
    lu.assertEquals(r, { nil, "timeout" })
    h:close()
end

function TestChannel:test_close_wakes_every_waiter_and_keeps_queued_values()
    local h = isle.spawn()
    local empty = isle.channel(4)
    local waiting = {}
    for i = 1, 3 do
        waiting[i] = h:spawn_exec(function(c) local v, e = c:pop() return v, e and e.code end, empty)
    end
    local full = isle.channel(1)
    full:push("kept")
    local blocked = h:spawn_exec(function(c) local ok, e = c:push("no room") return ok, e and e.code end, full)
    lu.assertEquals(h:exec(function() return 1 end), 1) -- they are all waiting by now
    empty:close()
    full:close()
    for i = 1, 3 do lu.assertEquals({ waiting[i]:wait(10) }, { true, nil, "closed" }) end
    lu.assertEquals({ blocked:wait(10) }, { true, nil, "closed" })
    local ok, e = full:push("after")
    lu.assertNil(ok)
    lu.assertEquals(e.code, "closed")
    lu.assertEquals(full:pop(), "kept") -- queued before close: still there
    local v
    v, e = full:pop(5)
    lu.assertNil(v)
    lu.assertEquals(e.code, "closed")
    full:close() -- idempotent
    h:close()
end

function TestChannel:test_four_producers_four_consumers_every_value_once()
    local N = 5000
    local ch = isle.channel(16)
    local producers, consumers, hs = {}, {}, {}
    for i = 1, 8 do hs[i] = isle.spawn() end
    for i = 1, 4 do
        consumers[i] = hs[i]:spawn_exec(function(c)
            local n, sum, seen = 0, 0, {}
            while true do
                local v, e = c:pop()
                if v == nil then assert(e.code == "closed", tostring(e)) break end
                assert(not seen[v], "duplicate " .. v)
                seen[v] = true
                n, sum = n + 1, sum + v
            end
            return n, sum
        end, ch)
    end
    for i = 1, 4 do
        producers[i] = hs[4 + i]:spawn_exec(function(c, base, n)
            for k = 1, n do assert(c:push(base + k)) end
            return true
        end, ch, (i - 1) * N, N)
    end
    for i = 1, 4 do lu.assertEquals({ producers[i]:wait(60) }, { true, true }) end
    ch:close()
    local n, sum = 0, 0
    for i = 1, 4 do
        local ok, cn, cs = consumers[i]:wait(60)
        lu.assertTrue(ok, tostring(cn))
        n, sum = n + cn, sum + cs
    end
    local total = 4 * N
    lu.assertEquals(n, total)
    lu.assertEquals(sum, total * (total + 1) / 2)
    for i = 1, 8 do hs[i]:close() end
end

function TestChannel:test_a_channel_passed_to_isles_is_the_same_channel()
    local a, b = isle.spawn(), isle.spawn()
    local ch = isle.channel(4)
    -- Through an isle and back as a result: the same core object.
    local back = a:exec(function(c) return c end, ch)
    lu.assertTrue(back ~= ch)
    local PTRS = require("isle.runtime").ptrs
    lu.assertTrue(PTRS[back] == PTRS[ch])
    -- Pushed in one isle, popped in another, and in the host.
    a:exec(function(c) c:push("from a") end, ch)
    lu.assertEquals(b:exec(function(c) return c:pop(5) end, ch), "from a")
    -- A channel inside a value, inside a channel.
    local inner = isle.channel(1)
    ch:push({ reply = inner, n = 3 })
    b:exec(function(c) local m = c:pop(5) m.reply:push(m.n * 2) end, ch)
    lu.assertEquals(inner:pop(5), 6)
    -- Tokens travel through channels as through calls.
    local tok = isle.token()
    ch:push(tok)
    lu.assertTrue(a:exec(function(c) local t = c:pop(5) t:cancel() return true end, ch))
    lu.assertTrue(tok:cancelled())
    a:close()
    b:close()
end

-- A channel crosses into and out of a shared state as into an isle: the
-- same channel on both sides.
function TestChannel:test_channels_cross_shared_states()
    local s = isle.state(function()
        local kept
        return function(x) if x then kept = x; x:push("from the state") return x end return kept end
    end)
    local ch = isle.channel(4)
    local back = s:call(ch)
    lu.assertEquals(ch:pop(0), "from the state")
    back:push(7)
    lu.assertEquals(ch:pop(0), 7)
    s:call():push(8)
    lu.assertEquals(ch:pop(0), 8)
    s:close()
end

function TestChannel:test_a_stopped_waiter_loses_no_value()
    local h = isle.spawn()
    local ch = isle.channel(1)
    -- Jobs stopped by their timeout while waiting in pop, ahead of one that
    -- keeps waiting: the value pushed afterwards reaches that one, not a
    -- vanished waiter.
    local stopped = {}
    for i = 1, 3 do stopped[i] = h:with{ timeout = 0.05 }:spawn_exec(function(c) return c:pop() end, ch) end
    for i = 1, 3 do
        local ok, e = stopped[i]:wait(10)
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "timeout")
    end
    local waiter = h:spawn_exec(function(c) return c:pop(30) end, ch)
    lu.assertEquals(h:exec(function() return 1 end), 1) -- it waits by now
    ch:push("safe")
    lu.assertEquals({ waiter:wait(10) }, { true, "safe" })
    -- A host pop that timed out, likewise.
    lu.assertNil(ch:pop(0.01))
    waiter = h:spawn_exec(function(c) return c:pop(30) end, ch)
    lu.assertEquals(h:exec(function() return 1 end), 1)
    ch:push("safe too")
    lu.assertEquals({ waiter:wait(10) }, { true, "safe too" })
    h:close()
end

function TestChannel:test_no_task_slot_is_leaked()
    settle()
    local before = C.isle_task_live_count()
    do
        local h = isle.spawn()
        local ch = isle.channel(1)
        for _ = 1, 20 do
            ch:pop(0.001)
            ch:push(1)
            ch:push(2, 0.001)
            h:exec(function(c) c:pop(0.01) c:pop(0.001) end, ch)
        end
        local t = h:spawn_exec(function(c) return c:pop() end, ch)
        ch:push("x")
        t:wait(10)
        -- A push stopped while it waits for room: its value (holding a
        -- token) is freed, not leaked.
        ch:push("fill")
        local stopped = h:with{ timeout = 0.05 }:spawn_exec(function(c)
            return c:push({ require("isle").token() })
        end, ch)
        lu.assertEquals(select(2, stopped:wait(10)).code, "timeout")
        lu.assertEquals(ch:len(), 1)
        local inner = isle.channel(2)
        ch:try_pop()
        ch:push({ inner, isle.token() }) -- freed unread with its channel
        h:close()
    end
    settle()
    lu.assertEquals(C.isle_task_live_count(), before)
end

-- In a host under an adapter that suspends (luv here), a pop that waits
-- parks its coroutine and the loop keeps running.
function TestChannel:test_host_coroutines_under_luv_suspend_in_pop()
    local have_uv, uv = pcall(require, "luv")
    if not have_uv then
        lu.skip("lua-luv is not installed (make deps installs it)")
    end
    local luv = require("isle.luv")
    local hub = isle.hub()
    luv.attach()
    local h = isle.spawn()
    local ch = isle.channel(1)
    local got, ticks = {}, 0
    local co = hub:go(function()
        for i = 1, 3 do got[i] = ch:pop(10) end
    end)
    lu.assertEquals(coroutine.status(co), "suspended") -- parked, not blocked
    local timer = uv.new_timer()
    timer:start(1, 1, function()
        ticks = ticks + 1
        if #got == 3 then timer:stop() timer:close() end
    end)
    local pusher = h:spawn_exec(function(c)
        local isle = require("isle")
        for i = 1, 3 do isle.sleep(0.02) c:push(i * 10) end
    end, ch)
    local guard = uv.new_timer()
    guard:start(20000, 0, function() uv.stop() end)
    guard:unref()
    uv.run()
    guard:stop() guard:close()
    luv.detach()
    lu.assertEquals(got, { 10, 20, 30 })
    lu.assertTrue(ticks > 3, "the loop did not run while the coroutine waited")
    lu.assertTrue(pusher:wait(10))
    h:close()
end

os.exit(lu.LuaUnit.run())
