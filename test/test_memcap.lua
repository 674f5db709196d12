-- Memory caps (issue 10): isle.spawn{memory_limit = bytes}. A job that
-- passes the limit fails with a `memory` error, the isle collects what it
-- left and serves the next call, h:memory() reports the isle's use, and the
-- C memory a capped isle can make isle hold (messages it queues, results it
-- keeps, isles it spawns) counts against the same limit. See docs/sandbox.md.
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")

local MB = 1024 * 1024

-- What every capped isle here knows. Upvalue-free, so it ships.
local function serve()
    function echo(...) return ... end
    -- Allocates 64 KB strings until it runs out (never returns).
    function grow()
        local t = {}
        for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
    end
    function hold(bytes) keep = ("k"):rep(bytes) end
    function drop() keep = nil collectgarbage() end
end

local function spawn(limit, init)
    return isle.spawn{ memory_limit = limit, init = init or serve }
end

local function call_error(h, ...)
    local ok, e = pcall(h.call, h, ...)
    lu.assertFalse(ok, "the call succeeded")
    lu.assertTrue(isle.is_error(e), tostring(e))
    return e
end

TestMemcap = {}

function TestMemcap:tearDown()
    lu.assertTrue(helpers.no_isle_live(), "an isle is left")
end

function TestMemcap:test_unbounded_job_fails_with_memory_and_the_isle_serves_on()
    local limit = 8 * MB
    local h = spawn(limit)
    local before = h:memory()
    for round = 1, 3 do
        local e = call_error(h, "grow")
        lu.assertEquals(e.code, "memory", tostring(e))
        lu.assertStrContains(e.message, "memory_limit")
        lu.assertStrContains(e.message, tostring(limit))
        -- What the job left was collected before its error came back.
        local after = h:memory()
        lu.assertTrue(after < before + 512 * 1024, ("round %d: %d bytes in use after, %d before"):format(round, after, before))
        lu.assertEquals(h:call("echo", "next", round), "next")
    end
    lu.assertEquals(h:stats().failed, 3)
    h:close()
end

-- A job that catches running out and returns leaves its garbage behind:
-- its result still goes back (encoded after a collection), and so does the
-- next call's.
function TestMemcap:test_a_job_that_catches_running_out_still_returns()
    local h = spawn(8 * MB, function()
        function grow()
            local t = {}
            for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
        end
        function survive()
            local ok, e = pcall(grow)
            return "survived", ok, e
        end
        function echo(...) return ... end
    end)
    for _ = 1, 3 do
        lu.assertEquals({ h:call("survive") }, { "survived", false, "not enough memory" })
        lu.assertEquals(#h:call("echo", ("a"):rep(MB)), MB)
    end
    h:close()
end

-- The capped paths run compiled like the others: a stream of posts and
-- calls gives exact results. (A store on the capped post path once made
-- both LuaJITs' compiled code write a string into the handler's upvalue.)
function TestMemcap:test_streams_of_posts_and_calls_to_a_capped_isle_are_exact()
    local h = spawn(32 * MB, function()
        local sum = 0
        function add(i) sum = sum + i end
        function total() local s = sum sum = 0 return s end
        function inc(i) return i + 1 end
        function tab(t) return { id = t.id, n = #t.vals } end
    end)
    for _ = 1, 3 do
        local n = 300000
        for i = 1, n do h:post("add", i) end
        lu.assertEquals(h:call("total"), n * (n + 1) / 2)
        for i = 1, 20000 do
            if h:call("inc", i) ~= i + 1 then lu.fail("inc " .. i) end
            local r = h:call("tab", { id = i, vals = { 1, 2, 3 } })
            if r.id ~= i or r.n ~= 3 then lu.fail("tab " .. i) end
        end
    end
    h:close()
end

function TestMemcap:test_memory_reports_use_and_limit_and_drops_after_collection()
    local h = spawn(32 * MB)
    local used, limit = h:memory()
    lu.assertEquals(limit, 32 * MB)
    lu.assertTrue(used > 50000 and used < 4 * MB, "an idle isle holds " .. used)
    h:call("hold", 8 * MB)
    local held = h:memory()
    lu.assertTrue(held >= used + 8 * MB, ("holding 8 MB: %d, idle: %d"):format(held, used))
    lu.assertTrue(held < used + 20 * MB) -- string.rep's buffer too, until a collection
    h:call("drop")
    -- (LuaJIT's string buffer halves at each collection: not all back yet.)
    lu.assertTrue(h:memory() < used + 3 * MB, "after dropping: " .. h:memory())
    -- From inside the isle too, through isle.self().
    local inside = h:eval("return require('isle').self():memory()")
    lu.assertTrue(inside > 0 and inside < used + 3 * MB)
    h:close()
    lu.assertEquals(h:memory(), 0) -- the state is gone
    -- An isle without a limit is counted all the same.
    local u = isle.spawn{ init = serve }
    local n, none = u:memory()
    lu.assertNil(none)
    lu.assertTrue(n > 50000)
    u:call("hold", 4 * MB)
    lu.assertTrue(u:memory() >= n + 4 * MB)
    u:close()
end

function TestMemcap:test_a_limit_too_small_to_start_is_a_spawn_error_naming_the_minimum()
    local ok, e = pcall(isle.spawn, { memory_limit = 100000, init = serve })
    lu.assertFalse(ok)
    lu.assertTrue(isle.is_error(e), tostring(e))
    lu.assertEquals(e.code, "memory")
    lu.assertStrContains(e.message, "memory_limit 100000 is too small")
    local least = tonumber(e.message:match("at least (%d+) bytes"))
    lu.assertNotNil(least, e.message)
    lu.assertTrue(least > 100000)
    lu.assertEquals(isle.live_count(), 0)
    -- The minimum it names starts (with a little slack: the next isle's
    -- bookkeeping can differ by a few bytes), and serves calls.
    local h = spawn(least + 16384)
    lu.assertEquals(h:call("echo", 7), 7)
    h:close()
    -- An init that does not fit fails the spawn the same way.
    ok, e = pcall(isle.spawn, { memory_limit = 4 * MB, init = "local t = {} for i = 1, 1e9 do t[i] = {} end" })
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "memory", tostring(e))
end

function TestMemcap:test_bad_values_are_refused_before_anything_starts()
    local live = isle.live_count()
    for _, v in ipairs({ "1000000", 0, -4096, 1.5, 0 / 0, math.huge, true, {}, 2 ^ 60 }) do
        local ok, e = pcall(function()
            local h = isle.spawn{ memory_limit = v }
            return h -- not a tail call: the error names this line
        end)
        lu.assertFalse(ok, "accepted " .. tostring(v))
        lu.assertStrContains(e, "option 'memory_limit' must be a positive integer number of bytes")
        lu.assertStrContains(e, "test_memcap.lua") -- blamed on the caller
    end
    lu.assertEquals(isle.live_count(), live)
end

-- The issue's case, where it is safe to show: a child process with a small
-- address space (ulimit -v), an isle that allocates without bound and holds
-- on to what it got, and a host that then allocates 16 MB.
function TestMemcap:test_the_host_keeps_allocating_while_a_capped_isle_runs_out()
    local function run(limit)
        local out, rc = helpers.sh(("ulimit -v 1000000 && %s test/fixtures/memcap_host.lua %s")
            :format(helpers.luajit(), limit or ""))
        lu.assertEquals(rc, 0, out)
        return out, tonumber(out:match("isle held (%d+)"))
    end
    -- Without a cap the isle takes what the process has, and the host fails.
    local out = run(nil)
    lu.assertStrContains(out, "host failed: not enough memory")
    -- With one it stops at its limit, and the host allocates.
    local limit = 32 * MB
    local held
    out, held = run(limit)
    lu.assertStrContains(out, "host ok")
    lu.assertStrContains(out, "isle job: true")
    lu.assertTrue(held <= limit and held > limit / 2, out)
end

function TestMemcap:test_use_never_passes_the_limit_while_jobs_run_out()
    local limit = 16 * MB
    local h = spawn(limit, function()
        -- Runs out `times` times (or gives up after `seconds`).
        function churn(times, seconds)
            local fails, t0 = 0, require("isle").now()
            while fails < times and require("isle").now() - t0 < seconds do
                if not pcall(grow) then fails = fails + 1 end
            end
            return fails
        end
        function grow()
            local t = {}
            for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
        end
    end)
    local t = h:spawn_call("churn", 5, 20)
    local most, samples = 0, 0
    while not t:done() do
        local used = h:memory() -- from this thread while the isle allocates
        if used > most then most = used end
        samples = samples + 1
    end
    local ok, fails = t:wait()
    lu.assertTrue(ok, tostring(fails))
    lu.assertEquals(fails, 5, "the job ran out " .. tostring(fails) .. " times")
    lu.assertTrue(most <= limit, ("%d bytes seen in use, limit %d"):format(most, limit))
    lu.assertTrue(most > limit / 2, ("only %d bytes seen in use in %d samples"):format(most, samples))
    h:close()
end

-- Garbage counts until it is collected: past a mark the allocator asks the
-- state for a full collection at its next checkpoint. A job whose live data
-- is half the limit and that makes garbage many times the limit succeeds
-- (without those collections it ran out: LuaJIT's own pace lets garbage
-- grow to about twice the live data first).
function TestMemcap:test_garbage_is_collected_before_it_reaches_the_limit()
    local h = spawn(16 * MB, function()
        keep = {}
        function fill(n) for i = 1, n do keep[i] = ("k"):rep(1000) .. i end end
        function tables(n) local s = 0 for i = 1, n do local t = { i, tostring(i), {} } s = s + #t[2] end return s end
        function strings(n) local s = 0 for i = 1, n do s = s + #(("y"):rep(5000) .. i) end return s end
    end)
    h:call("fill", 8000) -- about 8.5 MB live
    local live = h:memory()
    lu.assertTrue(live > 8 * MB)
    lu.assertEquals(h:call("tables", 3e6), 20888896 - 1000000) -- sum of #tostring(i), i = 1..3e6
    lu.assertTrue(h:call("strings", 2e5) > 1e9)
    lu.assertTrue(h:memory() < live + 4 * MB)
    h:close()
end

function TestMemcap:test_results_and_errors_are_encoded_under_the_limit()
    local h = spawn(16 * MB, function()
        function echo(...) return ... end
        -- One 1 MB string, referenced 200 times: 200 MB once encoded.
        function many()
            local s, t = ("m"):rep(1024 * 1024), {}
            for i = 1, 200 do t[i] = s end
            return t
        end
        function raise_many() error(many()) end
        function small() return { n = 1 } end
    end)
    for _, name in ipairs({ "many", "raise_many" }) do
        local e = call_error(h, name)
        lu.assertEquals(e.code, "memory", tostring(e))
        lu.assertStrContains(e.message, "memory_limit")
        lu.assertTrue(h:memory() < 4 * MB, name .. ": " .. h:memory())
        lu.assertEquals(h:call("small").n, 1)
    end
    h:close()
end

function TestMemcap:test_arguments_that_do_not_fit_fail_the_call()
    local h = spawn(8 * MB)
    local e = call_error(h, "echo", ("a"):rep(20 * MB))
    lu.assertEquals(e.code, "memory")
    lu.assertStrContains(e.message, "arguments do not fit")
    lu.assertEquals(h:call("echo", ("b"):rep(MB)), ("b"):rep(MB))
    h:close()
end

function TestMemcap:test_posts_timers_and_coroutines_report_memory_and_the_loop_goes_on()
    local h = spawn(8 * MB, function()
        function grow()
            local t = {}
            for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
        end
        local isle = require("isle")
        errs = {}
        isle.on_error(function(e, what) errs[#errs + 1] = e.code .. " in " .. what end)
        function errors_seen() return table.concat(errs, ", ") end
        function later() isle.timer.at(0, grow) end
        function go() isle.go(grow) end
        -- Out of memory inside a coroutine, raised again by the job.
        function in_coroutine()
            local _, e = coroutine.resume(coroutine.create(grow))
            error(e, 0)
        end
        -- A job that sleeps between allocations stays under the limit.
        function sleepy()
            local t = {}
            for i = 1, 1e9 do
                t[i] = ("s"):rep(65536 - 32) .. i
                if i % 16 == 0 then isle.sleep(0) end
            end
        end
        function echo(...) return ... end
    end)
    h:post("grow")
    h:call("later")
    h:call("go")
    lu.assertTrue(helpers.eventually(function()
        return h:call("errors_seen") == "memory in a posted call, memory in a timer, memory in a go coroutine"
    end, 10), h:call("errors_seen"))
    lu.assertEquals(call_error(h, "in_coroutine").code, "memory")
    lu.assertEquals(call_error(h, "sleepy").code, "memory")
    lu.assertTrue(h:memory() < 2 * MB)
    lu.assertEquals(h:call("echo", 1), 1)
    h:close()
end

-- Cancels, timeouts and interrupts reach jobs of a capped isle as any other
-- (its jobs run through the capped paths, with their pcalls and modes).
function TestMemcap:test_stops_reach_jobs_of_a_capped_isle()
    local h = spawn(8 * MB)
    local t = h:spawn_eval("local t = {} while true do t[#t % 100 + 1] = {} end")
    isle.sleep(0.05)
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    ok, e = pcall(function() return h:with{ timeout = 0.05 }:eval("while true do end") end)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    t = h:spawn_eval("while true do end")
    isle.sleep(0.05)
    h:interrupt()
    ok, e = t:wait(10)
    lu.assertEquals(e.code, "interrupted")
    lu.assertEquals(h:call("echo", 3), 3)
    h:close()
end

-- A job suspended with a large live set keeps it while another runs out;
-- both end as they should and the loop serves on.
function TestMemcap:test_jobs_share_the_limit_across_sleeps()
    local h = spawn(16 * MB, function()
        local isle = require("isle")
        function holder(mb)
            local s = ("h"):rep(mb * 1024 * 1024)
            isle.sleep(0.2)
            return #s
        end
        function grow()
            local t = {}
            for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
        end
    end)
    local t = h:spawn_call("holder", 6)
    lu.assertTrue(helpers.eventually(function() return h:memory() > 6 * MB end))
    lu.assertEquals(call_error(h, "grow").code, "memory")
    lu.assertEquals({ t:wait() }, { true, 6 * MB })
    h:close()
end

-- Messages a capped isle has queued are C memory it made: they count
-- against its limit until their receiver takes them.
function TestMemcap:test_messages_a_capped_isle_queues_count_against_its_limit()
    local gate, addr = helpers.gate_memory()
    local b = isle.spawn{ init = "function sink() end" }
    local blocked = b:spawn_eval(helpers.GATE, addr)
    lu.assertTrue(helpers.eventually(function() return gate[1] == 1 end))
    local a = spawn(16 * MB, function()
        local isle = require("isle")
        function flood(id)
            local b, s, n = isle.lookup(id), ("p"):rep(1024 * 1024), 0
            while true do
                local ok, e = pcall(b.post, b, "sink", s)
                if not ok then return n, e.code, e.message end
                n = n + 1
            end
        end
        function again(id) return isle.lookup(id):post("sink", ("q"):rep(1024 * 1024)) end
    end)
    local n, code, msg = a:call("flood", b:id())
    lu.assertEquals(code, "memory", msg)
    lu.assertTrue(n >= 8 and n <= 16, "queued " .. n .. " MB")
    lu.assertTrue(a:memory() >= n * MB)
    gate[0] = 1 -- b takes them: a's account goes down
    lu.assertEquals({ blocked:wait() }, { true, "gate" })
    lu.assertTrue(helpers.eventually(function() return a:memory() < 4 * MB end), a:memory())
    lu.assertTrue(a:call("again", b:id()))
    a:close()
    b:close()
end

-- Results a capped isle holds (tasks it made and keeps) are C memory too.
function TestMemcap:test_results_a_capped_isle_holds_count_against_its_limit()
    local b = isle.spawn{ init = "function big() return ('r'):rep(1024 * 1024) end" }
    local a = spawn(16 * MB, function()
        local isle = require("isle")
        tasks = {}
        -- Every result is this very string, which Lua interns: with it made
        -- first, decoding a result allocates nothing. Otherwise the first
        -- decode needs 1 MB, and it raised a memory error whenever b had
        -- stored 15 results before a got to it (seen on a loaded machine).
        keep = ("r"):rep(1024 * 1024)
        function hoard(id)
            local b = isle.lookup(id)
            for i = 1, 40 do tasks[i] = b:spawn_call("big") end
            -- Every result stored or refused before the first is read: the
            -- count no longer depends on how fast b is.
            for i = 1, 40 do while not tasks[i]:done() do isle.sleep(0.001) end end
            local got, err = 0, nil
            for i = 1, 40 do
                local ok, e = tasks[i]:wait()
                if ok then got = got + 1 else err = e end
            end
            return got, err and err.code, err and err.message
        end
        function release() tasks = {} collectgarbage() collectgarbage() end
    end)
    local got, code, msg = a:call("hoard", b:id())
    lu.assertEquals(code, "memory", msg)
    lu.assertTrue(got >= 8 and got < 16, "held " .. got .. " results of 1 MB")
    a:call("release")
    lu.assertTrue(helpers.eventually(function() return a:memory() < 4 * MB end), a:memory())
    a:close()
    b:close()
end

-- Isle `a` makes something capped (an isle, a state) with its global
-- `try(limit, ...)` (true, or false and an error code) and lets it go with
-- its global `close_name`: it needs a limit of its own, one past a's room
-- fails with `memory`, and its limit is charged to `a` while it lives.
-- `...`: try's further arguments for the try after the first one made.
local function check_charged_to_maker(a, what, close_name, ...)
    local ok, e = a:call("try", nil)
    lu.assertFalse(ok)
    lu.assertStrContains(e, "needs a memory_limit of its own")
    ok, e = a:call("try", 64 * MB)
    lu.assertFalse(ok)
    lu.assertEquals(e, "memory")
    a:call("settle") -- (garbage collected later would take from what the charge adds)
    local before = a:memory()
    lu.assertTrue(a:call("try", 4 * MB))
    local after = a:memory()
    lu.assertTrue(after >= before + 4 * MB - 65536, ("%d with the %s, %d before"):format(after, what, before))
    ok, e = a:call("try", 12 * MB, ...) -- 4 MB is taken now
    lu.assertFalse(ok)
    lu.assertEquals(e, "memory")
    a:call(close_name)
    lu.assertTrue(a:memory() < before + MB)
end

-- An isle a capped isle spawns needs a limit of its own, charged to the
-- spawner's while it lives: a cap cannot be escaped by spawning.
function TestMemcap:test_isles_a_capped_isle_spawns_are_charged_to_it()
    local a = spawn(16 * MB, function()
        local isle = require("isle")
        function try(limit)
            local ok, e = pcall(isle.spawn, { memory_limit = limit })
            if ok then child = e return true end
            return false, isle.is_error(e) and e.code or tostring(e)
        end
        function close_child() child:close() child = nil end
        function settle() collectgarbage() collectgarbage() return true end
    end)
    check_charged_to_maker(a, "child", "close_child")
    a:close()
end

-- Channels: the values a capped isle pushes (messages until popped) count
-- against its limit as the messages it sends do, and so does the ring of a
-- channel it makes, while the channel lives.
function TestMemcap:test_channels_a_capped_isle_fills_or_makes_count_against_its_limit()
    local a = spawn(16 * MB, function()
        local isle = require("isle")
        function fill(c)
            local s, n = ("c"):rep(1024 * 1024), 0
            while true do
                local ok, e = c:push(s, 0)
                if not ok then return n, e.code end
                n = n + 1
            end
        end
        function push_one(c) return c:push(("d"):rep(1024 * 1024), 0) end
        function make(cap)
            local ok, e = pcall(isle.channel, cap)
            if ok then return true end
            return false, e.code, e.message
        end
        function echo(...) return ... end
    end)
    local c = isle.channel(64)
    local ok, e = pcall(a.call, a, "fill", c) -- a push past the limit raises
    lu.assertFalse(ok, "the channel filled up first")
    lu.assertEquals(e.code, "memory", tostring(e))
    lu.assertStrContains(e.message, "memory_limit")
    local queued = c:len()
    lu.assertTrue(queued >= 8 and queued < 16, "queued " .. queued .. " MB")
    lu.assertTrue(a:memory() >= queued * MB)
    for _ = 1, queued do lu.assertEquals(#c:pop(0), MB) end
    -- Popped (and freed by the host): a's account goes down.
    lu.assertTrue(helpers.eventually(function() return a:memory() < 4 * MB end), a:memory())
    lu.assertTrue(a:call("push_one", c))
    lu.assertEquals(#c:pop(0), MB)
    -- A channel's ring: 16 bytes a slot, 256 MB at the largest capacity.
    local made, why, msg = a:call("make", 2 ^ 24)
    lu.assertFalse(made)
    lu.assertEquals(why, "memory", msg)
    lu.assertStrContains(msg, "does not fit in the memory_limit of isle")
    lu.assertTrue(a:call("make", 1000))
    lu.assertEquals(a:call("echo", 7), 7)
    a:close()
end

-- Tokens travel as references carried by messages and results (isle.wire):
-- through a capped isle too, where those messages and results are charged
-- to it. A token it receives, sends on and gets back in a result is the same
-- slot, a call it runs stops when that token is cancelled, and nothing is
-- left holding a slot once the isles are gone.
function TestMemcap:test_tokens_travel_through_a_capped_isle_and_leave_nothing()
    local C = require("isle.cdef").C
    local function settled() return helpers.settled(C.isle_task_live_count) end
    local before = settled()
    do
        local b = isle.spawn{ init = "function back(tok) return tok, { tok } end" }
        local a = spawn(8 * MB, function()
            local isle = require("isle")
            function relay(tok, id)
                local t1, t2 = isle.lookup(id):call("back", tok)
                return t1, t2[1], tok:cancelled()
            end
            function wait_cancel()
                while true do isle.sleep(0.01) end
            end
            function echo(...) return ... end
        end)
        local tok = isle.token()
        local t1, t2, was = a:call("relay", tok, b:id())
        lu.assertFalse(was)
        lu.assertFalse(t1:cancelled())
        local job = a:with{ token = tok }:spawn_call("wait_cancel")
        tok:cancel()
        lu.assertTrue(t1:cancelled())
        lu.assertTrue(t2:cancelled())
        lu.assertEquals(select(2, job:wait(10)).code, "cancelled")
        lu.assertEquals(a:call("echo", 1), 1)
        a:close()
        b:close()
    end
    local after = before
    helpers.eventually(function()
        after = settled()
        return after == before
    end, 5)
    lu.assertEquals(after, before, (after - before) .. " task slot(s) left behind")
end

-- lua_close runs the state's finalizers: still under the limit. The
-- allocator goes back to LuaJIT's before its arena is destroyed, or each
-- closed isle would leave its arena mapped (about 400 KB).
function TestMemcap:test_finalizers_at_close_stay_capped_and_closing_leaks_nothing()
    local mem, addr = helpers.shared_ints(1)
    local h2 = isle.spawn{ memory_limit = 8 * MB, args = { addr }, init = function(addr)
        local flag = require("ffi").cast("int32_t *", addr)
        guard = newproxy(true)
        getmetatable(guard).__gc = function()
            local t = {}
            local ok, e = pcall(function() for i = 1, 1e9 do t[i] = ("f"):rep(65536) .. i end end)
            flag[0] = (not ok and e == "not enough memory") and 2 or 1
        end
    end }
    lu.assertEquals(mem[0], 0)
    h2:close()
    lu.assertEquals(mem[0], 2, "the finalizer was not stopped by the limit")

    local function vm_kb()
        local f = io.open("/proc/self/status")
        local s = f:read("*a")
        f:close()
        return tonumber(s:match("VmSize:%s*(%d+)"))
    end
    for _ = 1, 20 do isle.spawn{ memory_limit = 4 * MB }:close() end
    collectgarbage()
    local before = vm_kb()
    for _ = 1, 200 do isle.spawn{ memory_limit = 4 * MB, init = "x = {} for i = 1, 1000 do x[i] = {} end" }:close() end
    collectgarbage()
    local grown = vm_kb() - before
    lu.assertTrue(grown < 20000, "address space grew by " .. grown .. " KB over 200 isles")
end

-- Shared states (isle.state, isle.singleton) take a memory_limit through
-- their options table: calls run under it as an isle's jobs do, and a
-- capped isle's states are charged to it as the isles it spawns are.
TestStateMemcap = {}

function TestStateMemcap:tearDown()
    collectgarbage()
    lu.assertTrue(helpers.eventually(function()
        collectgarbage()
        return isle.live_count() == 0 and require("isle.cdef").C.isle_state_count() == 0
    end, 10), "an isle or a state is left")
end

-- The callback every capped state here runs. Upvalue-free, so it ships.
local function state_setup()
    local keep
    return function(cmd, a)
        if cmd == "grow" then
            local t = {}
            for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
        elseif cmd == "survive" then
            local ok, e = pcall(function()
                local t = {}
                for i = 1, 1e9 do t[i] = ("x"):rep(65536 - 32) .. i end
            end)
            return "survived", ok, e
        elseif cmd == "hold" then
            keep = ("k"):rep(a)
            return true
        elseif cmd == "drop" then
            keep = nil
            collectgarbage()
            return true
        elseif cmd == "big" then
            return ("r"):rep(a)
        elseif cmd == "many" then
            local s, t = ("m"):rep(1024 * 1024), {}
            for i = 1, a do t[i] = s end
            return t
        elseif cmd == "tables" then
            local n = 0
            for i = 1, a do local t = { i, tostring(i), {} } n = n + #t[2] end
            return n
        end
        return a
    end
end

local function state_error(s, ...)
    local ok, e = pcall(s.call, s, ...)
    lu.assertFalse(ok, "the call succeeded")
    lu.assertTrue(isle.is_error(e), tostring(e))
    return e
end

function TestStateMemcap:test_a_call_that_runs_out_fails_with_memory_and_the_state_serves_on()
    local limit = 8 * MB
    local s = isle.state({ memory_limit = limit }, state_setup)
    local before, lim = s:memory()
    lu.assertEquals(lim, limit)
    lu.assertTrue(before > 50000 and before < 2 * MB, "an idle state holds " .. before)
    s:call("hold", 3 * MB)
    lu.assertTrue(s:memory() >= before + 3 * MB)
    lu.assertEquals(state_error(s, "hold", 5 * MB).code, "memory")
    s:call("drop")
    lu.assertTrue(s:memory() < before + 2 * MB, "after dropping: " .. s:memory())
    for round = 1, 3 do
        local e = state_error(s, "grow")
        lu.assertEquals(e.code, "memory", tostring(e))
        lu.assertStrContains(e.message, "memory_limit")
        lu.assertStrContains(e.message, tostring(limit))
        -- What the call left was collected before its error came back.
        local after = s:memory()
        lu.assertTrue(after < before + 512 * 1024, ("round %d: %d bytes in use after, %d before"):format(round, after, before))
        lu.assertEquals(s:call("echo", round), round)
        -- A callback that catches running out still returns.
        lu.assertEquals({ s:call("survive") }, { "survived", false, "not enough memory" })
    end
    s:close()
    lu.assertEquals(s:memory(), 0)
    -- Uncapped states are counted all the same.
    local u = isle.state(state_setup)
    local n, none = u:memory()
    lu.assertNil(none)
    lu.assertTrue(n > 50000)
    u:close()
end

function TestStateMemcap:test_arguments_and_results_that_do_not_fit_fail_the_call()
    local s = isle.state({ memory_limit = 8 * MB }, state_setup)
    local e = state_error(s, "echo", ("a"):rep(12 * MB))
    lu.assertEquals(e.code, "memory")
    lu.assertStrContains(e.message, "arguments do not fit")
    lu.assertEquals(state_error(s, "big", 20 * MB).code, "memory")
    -- One 1 MB string twenty times: small in the state, 20 MB encoded.
    lu.assertEquals(state_error(s, "many", 20).code, "memory")
    lu.assertEquals(#s:call("big", MB), MB)
    lu.assertEquals(s:call("echo", "next"), "next")
    s:close()
end

-- Garbage is collected before it reaches the limit: a call that makes many
-- times the limit in garbage, next to half the limit live, succeeds.
function TestStateMemcap:test_garbage_is_collected_before_it_reaches_the_limit()
    local s = isle.state({ memory_limit = 16 * MB }, state_setup)
    s:call("hold", 6 * MB)
    lu.assertEquals(s:call("tables", 3e6), 20888896 - 1000000)
    s:close()
end

function TestStateMemcap:test_a_limit_too_small_and_bad_values_are_refused()
    local ok, e = pcall(isle.state, { memory_limit = 100000 }, state_setup)
    lu.assertFalse(ok)
    lu.assertTrue(isle.is_error(e), tostring(e))
    lu.assertEquals(e.code, "memory")
    lu.assertStrContains(e.message, "memory_limit 100000 is too small")
    local least = tonumber(e.message:match("at least (%d+) bytes"))
    lu.assertNotNil(least, e.message)
    local s = isle.state({ memory_limit = least }, state_setup)
    lu.assertEquals(s:call("echo", 1), 1)
    s:close()
    for _, bad in ipairs({ 0, -1, 1.5, "1000000", 2 ^ 60, 0 / 0 }) do
        ok, e = pcall(isle.state, { memory_limit = bad }, state_setup)
        lu.assertFalse(ok)
        lu.assertStrContains(tostring(e), "option 'memory_limit' must be a positive integer")
        ok, e = pcall(isle.singleton, "capped", { memory_limit = bad }, state_setup)
        lu.assertFalse(ok)
        lu.assertStrContains(tostring(e), "option 'memory_limit' must be a positive integer")
    end
    lu.assertEquals(require("isle.cdef").C.isle_state_count(), 0)
end

-- A state a capped isle makes needs a limit of its own, charged to the
-- isle while the state lives (until it closes): a cap cannot be escaped
-- through a shared state. Inside a capped state the same holds.
function TestStateMemcap:test_states_a_capped_isle_makes_are_charged_to_it()
    local a = spawn(16 * MB, function()
        local isle = require("isle")
        local function setup() return function(x) return x end end
        function try(limit, single)
            local opts = limit and { memory_limit = limit } or {}
            local ok, e
            if single then ok, e = pcall(isle.singleton, "charged", opts, setup)
            else ok, e = pcall(isle.state, opts, setup) end
            if ok then st = e return st:call(true) end
            return false, isle.is_error(e) and e.code or tostring(e)
        end
        function close_state() st:close() st = nil end
        function settle() collectgarbage() collectgarbage() return true end
    end)
    check_charged_to_maker(a, "state", "close_state", true)
    lu.assertTrue(a:call("try", 12 * MB, true))
    a:call("close_state")
    a:close()
    -- A capped state spawns no uncapped isle either.
    local s = isle.state({ memory_limit = 8 * MB }, function()
        local isle = require("isle")
        return function()
            local ok, e = pcall(isle.spawn, {})
            return ok, tostring(e)
        end
    end)
    local ok, e = s:call()
    lu.assertFalse(ok)
    lu.assertStrContains(e, "needs a memory_limit of its own")
    s:close()
end

-- The results a capped isle takes in from a state land in a C buffer of
-- its own: charged to it while it keeps the buffer, and refused past its
-- limit (the isle goes on).
function TestStateMemcap:test_results_a_capped_isle_takes_from_a_state_count_against_it()
    local s = isle.state(state_setup)
    local a = spawn(8 * MB, function()
        local isle = require("isle")
        function fetch(id, n)
            local r = isle.state_ref(id):call("big", n)
            local len = #r
            r = nil
            collectgarbage()
            collectgarbage()
            return len
        end
        function try(id, n)
            local ok, e = pcall(isle.state_ref(id).call, isle.state_ref(id), "big", n)
            return ok, isle.is_error(e) and e.code or type(e)
        end
        function echo(...) return ... end
    end)
    lu.assertEquals(a:call("fetch", s:id(), 10), 10)
    local small = a:memory()
    lu.assertEquals(a:call("fetch", s:id(), 900 * 1024), 900 * 1024)
    -- The result is garbage and collected; the buffer it came in is kept.
    local kept = a:memory()
    lu.assertTrue(kept >= small + 900 * 1024, ("%d after a 900 KB result, %d before"):format(kept, small))
    lu.assertEquals({ a:call("try", s:id(), 20 * MB) }, { false, "memory" })
    lu.assertEquals(a:call("echo", 5), 5)
    a:close()
    s:close()
end

-- A closed capped state's arena is unmapped, as a capped isle's: the
-- allocator goes back to LuaJIT's as lua_close ends.
function TestStateMemcap:test_closing_capped_states_leaks_nothing()
    local function vm_kb()
        local f = io.open("/proc/self/status")
        local text = f:read("*a")
        f:close()
        return tonumber(text:match("VmSize:%s*(%d+)"))
    end
    local function setup() x = {} for i = 1, 1000 do x[i] = {} end return function() end end
    for _ = 1, 20 do isle.state({ memory_limit = 4 * MB }, setup):close() end
    collectgarbage()
    local before = vm_kb()
    for _ = 1, 200 do isle.state({ memory_limit = 4 * MB }, setup):close() end
    collectgarbage()
    local grown = vm_kb() - before
    lu.assertTrue(grown < 20000, "address space grew by " .. grown .. " KB over 200 states")
end

os.exit(lu.LuaUnit.run())
