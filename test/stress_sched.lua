-- The scheduler under stress (issue 7, part 8): cancels, per-call timeouts,
-- token cancels and closes landing just as jobs sleep, await, finish and
-- hand their coroutine back to the pool, from the host and from two isles
-- calling each other. Every round is seeded and does a fixed amount of work;
-- every task must end exactly once with an outcome that fits what it was
-- asked to do, and every isle must still answer a ping after each round (a
-- loop that died takes its isle down, which fails the round, never hangs it).
--
-- Run by `make stress`, not by `make test` (it takes tens of seconds).
-- STRESS_ROUNDS=n runs n rounds per test instead of the default.
--
-- Two things make the hammer hit the boundaries inside the loop itself: an
-- isle with the JIT off (isle's own code then runs in the interpreter, where
-- the count hook may raise a stop at any instruction of it), and rounds with
-- an interrupt left on (the flag stays up, so a job that was stopped meets
-- the stop again at every hook and checkpoint, wherever it is).
local lu = require("luaunit")
local isle = require("isle")

local ROUNDS = tonumber(os.getenv("STRESS_ROUNDS") or "") or 80
-- Every wait is bounded: a lost wake-up fails the round instead of hanging it.
local WAIT = 60

-- What both isles serve. `kind` picks how a job spends its life; each one
-- crosses a different completion boundary of the loop.
local NODE = [[
    local isle = require("isle")
    local me, peer_name, jit_on = ...
    -- With the JIT off, isle's own code runs in the interpreter, where the
    -- count hook can raise a stop at any instruction of it.
    if not jit_on then jit.off() end
    -- A sampler: with an interrupt left on (h:interrupt(true)) the flag stays
    -- up, so a stopped job is stopped again at every checkpoint and hook.
    -- (Loaded, not instrumented: an instrumented handler re-enters the
    -- checkpoint that runs it while the interrupt is left on.)
    samples = 0
    isle.on_interrupt(loadstring("samples = samples + 1"))
    local peer_h
    local function peer()
        peer_h = peer_h or assert(isle.lookup(peer_name))
        return peer_h
    end
    bumps = { host = 0, peer = 0 }
    function ping() return me end
    function get_bumps(from) return bumps[from] end
    -- A post that sleeps: it runs on its runner's own record. Nothing ever
    -- stops a post, so each one must count.
    function bump_later(s, from) isle.sleep(s) bumps[from] = bumps[from] + 1 end
    -- Keeps sleeping (or calling the peer) through stop requests until it has
    -- done so k times: a stopped job meets the stop wherever it is in its
    -- sleeps and waits (the hook, the wake), catches it, goes on, then ends.
    local function stubborn(k, call)
        local left = k
        local function go()
            while left > 0 do
                left = left - 1
                if call then peer():call("step", left, 1, 0, 0) else isle.sleep(0) end
            end
        end
        while left > 0 do
            left = left - 1
            pcall(go)
        end
    end
    -- Waits for a task of the peer with short waits that run out.
    local function poll(t, s)
        for _ = 1, 200 do
            local ok, v = t:wait(s)
            if ok then return v end
            if v.code ~= "timeout" then error(v, 0) end
        end
        t:cancel()
        local ok, v = t:wait(30)
        if ok then return v end
        error(v, 0)
    end
    function step(n, kind, s, depth)
        if kind == 1 then return n end
        if kind == 2 then isle.sleep(s) return n end
        if kind == 3 then
            local x = 0
            for i = 1, 2000 * (n % 13) do x = x + i end
            return n
        end
        if kind == 4 then stubborn(20 + n % 30, depth > 0 and n % 2 == 0) return n end
        if depth <= 0 then return n end
        if kind == 5 then return peer():call("step", n, 1 + n % 4, s, depth - 1) end
        if kind == 6 then return poll(peer():spawn_call("step", n, 2, s * 3, 0), s) end
        if kind == 7 then
            peer():post("bump_later", s, "peer")
            return peer():with{ timeout = s * 2 }:call("step", n, 2, s, 0)
        end
        -- 8: a call back into this isle through the peer (A -> B -> A).
        return peer():call("step", n, 5, s, depth - 1)
    end
]]

-- Outcomes a task may end with: done with its own number, or stopped.
local STOPPED = { cancelled = "cancelled", timeout = "cancelled", closed = "closed" }

-- Checks one ended task; `may_close` when it may have met a closing isle.
local function check_outcome(t, n, what, may_close)
    local ok, v = t:wait(WAIT)
    lu.assertTrue(t:done(), what .. ": did not end within " .. WAIT .. " s (" .. t:status() .. ")")
    if ok then
        lu.assertEquals(v, n, what .. ": wrong result")
        lu.assertEquals(t:status(), "done", what)
    else
        lu.assertTrue(type(v) == "table", what .. ": " .. tostring(v))
        local code = v.code
        local allowed = STOPPED[code] and (code ~= "closed" or may_close)
        lu.assertTrue(allowed, what .. ": unexpected outcome " .. tostring(code) .. ": " .. tostring(v))
        lu.assertEquals(t:status(), STOPPED[code], what)
    end
    -- Ended once: a second look gives the same outcome.
    local ok2, v2 = t:result()
    lu.assertEquals(ok2, ok, what)
    if ok then lu.assertEquals(v2, v, what) else lu.assertEquals(v2.code, v.code, what) end
    return ok and "done" or v.code
end

-- Run inside an isle: the same hammer aimed at the peer, checked there.
-- Returns n when every task it made ended sensibly; raises otherwise.
local FANOUT = [[
    function fanout(n, seed, count, s)
        local peer = peer()
        math.randomseed(seed)
        local tok = isle.token()
        local tasks = {}
        for i = 1, count do
            local r = math.random()
            local h = peer
            if r < 0.3 then h = peer:with{ timeout = s * math.random() * 4 }
            elseif r < 0.5 then h = peer:with{ token = tok } end
            tasks[i] = h:spawn_call("step", i, math.random(1, 7), s, 1)
            if math.random() < 0.2 then tasks[i]:cancel() end
            if i == math.floor(count / 2) then tok:cancel() end
            if math.random() < 0.2 then isle.sleep(s * math.random()) end
        end
        for i = 1, count do
            local ok, v = tasks[i]:wait(60)
            if ok then
                if v ~= i then error("fanout: task " .. i .. " gave " .. tostring(v)) end
            elseif not (type(v) == "table" and (v.code == "cancelled" or v.code == "timeout")) then
                error("fanout: task " .. i .. " ended " .. tostring(v))
            end
        end
        return n
    end
]]

TestStressSched = {}

-- h:spawn_call that fails the test, with the reason, when the isle is gone.
local function spawn_call(h, ...)
    local ok, t = pcall(h.spawn_call, h, ...)
    lu.assertTrue(ok, tostring(h) .. " refused a call (did it die?): " .. tostring(t))
    return t
end

-- Two isles calling each other: one with the JIT on and its code
-- instrumented (stops are raised at checkpoints in user code as well), one
-- with both off (raised by the hook only, anywhere).
local function spawn_pair()
    local a = isle.spawn{ name = "sa", init = NODE .. FANOUT, args = { "sa", "sb", true } }
    local b = isle.spawn{ name = "sb", init = NODE .. FANOUT, args = { "sb", "sa", false }, instrument = false }
    return a, b
end

-- Every isle still serves: a ping with a bounded wait.
local function assert_serving(hs, round)
    for _, h in ipairs(hs) do
        lu.assertFalse(h:is_closed(), tostring(h) .. " closed itself in round " .. round)
        local t = spawn_call(h, "ping")
        local ok, v = t:wait(WAIT)
        lu.assertTrue(ok, tostring(h) .. " does not answer after round " .. round .. ": " .. tostring(v))
    end
end

-- One round from the host: calls of every kind on both isles, through plain
-- handles, per-call timeouts and tokens; cancels of single tasks and of
-- tokens landing at random points; posts that sleep.
local function host_round(a, b, seed, count)
    math.randomseed(seed)
    local hs = { a, b }
    local toks = { isle.token(), isle.token(), isle.token() }
    local tasks, ns, whats = {}, {}, {}
    local posts = 0
    for i = 1, count do
        local h = hs[math.random(1, 2)]
        local opt = "plain"
        local s = 0.0005 * math.random(0, 6)
        if math.random() < 0.05 then
            -- A plain post (one with a token could be cancelled by it).
            lu.assertTrue(pcall(h.post, h, "bump_later", s, "host"), tostring(h) .. " refused a post")
            posts = posts + 1
        end
        local r = math.random()
        if r < 0.25 then
            h, opt = h:with{ timeout = s * math.random() * 4 }, "timeout"
        elseif r < 0.45 then
            h, opt = h:with{ token = toks[math.random(1, #toks)] }, "token"
        end
        local kind = "fanout"
        if math.random() < 0.03 then
            tasks[#tasks + 1] = spawn_call(h, "fanout", i, seed * 1000 + i, 20, s + 0.0005)
        else
            kind = math.random(1, 8)
            tasks[#tasks + 1] = spawn_call(h, "step", i, kind, s, 2)
        end
        ns[#tasks] = i
        whats[#tasks] = ("seed %d task %d (kind %s on %s, %s)"):format(seed, i, kind, tostring(h), opt)
        -- Cancels now, a little later (an earlier task), or never.
        local c = math.random()
        if c < 0.15 then
            tasks[#tasks]:cancel()
        elseif c < 0.3 then
            tasks[math.random(1, #tasks)]:cancel()
        end
        if math.random() < 0.01 then toks[math.random(1, #toks)]:cancel() end
        if math.random() < 0.05 then isle.sleep(0.0002 * math.random(0, 5)) end
    end
    local seen = {}
    for i = 1, #tasks do
        local o = check_outcome(tasks[i], ns[i], whats[i], false)
        seen[o] = (seen[o] or 0) + 1
    end
    return seen, posts
end

function TestStressSched:test_host_and_isles_calling_each_other()
    local a, b = spawn_pair()
    local totals, posts = {}, 0
    for round = 1, ROUNDS do
        -- Every other round with a sampler interrupting both isles.
        local sampled = round % 2 == 0
        if sampled then a:interrupt(true) b:interrupt(true) end
        local seen, p = host_round(a, b, round, 400)
        if sampled then a:interrupt(false) b:interrupt(false) end
        for k, v in pairs(seen) do totals[k] = (totals[k] or 0) + v end
        posts = posts + p
        assert_serving({ a, b }, round)
    end
    -- Every post from the host ran to its end once (posts hold no task:
    -- count them); a post is never stopped, so none may be missing.
    local bumps
    for _ = 1, 200 do
        bumps = a:call("get_bumps", "host") + b:call("get_bumps", "host")
        if bumps >= posts then break end
        isle.sleep(0.05)
    end
    lu.assertEquals(bumps, posts, "sleeping posts that ran to their end")
    -- The hammer did hit both sides of the boundaries.
    if os.getenv("STRESS_VERBOSE") then
        for k, v in pairs(totals) do io.stderr:write(k, "=", v, " ") end
        io.stderr:write("\n")
    end
    lu.assertTrue((totals.done or 0) > 0 and (totals.cancelled or 0) > 0 and (totals.timeout or 0) > 0,
        "outcomes: " .. tostring(totals.done) .. "/" .. tostring(totals.cancelled) .. "/" .. tostring(totals.timeout))
    a:close()
    b:close()
    lu.assertEquals(isle.live_count(), 0)
end

-- A third isle closed with cancel in the middle of traffic from the host and
-- from both isles: what it ran or had queued ends done, stopped or closed;
-- the two isles that were calling it keep serving.
function TestStressSched:test_close_with_cancel_during_traffic()
    local a, b = spawn_pair()
    for round = 1, ROUNDS do
        math.randomseed(round)
        local c = isle.spawn{ name = "sc", init = NODE, args = { "sc", "sa", round % 2 == 0 } }
        if round % 3 == 0 then c:interrupt(true) end
        local tasks, ns = {}, {}
        for i = 1, 200 do
            local r = math.random()
            local t
            if r < 0.4 then
                t = c:spawn_call("step", i, math.random(1, 6), 0.0005 * math.random(0, 6), 1)
            elseif r < 0.7 then
                -- a or b calls c from one of its jobs.
                local h = math.random() < 0.5 and a or b
                t = h:spawn_eval([[
                    local n, kind, s = ...
                    local c = require("isle").lookup("sc")
                    if not c then return n end -- closed and gone before the call
                    return c:call("step", n, kind, s, 1)
                ]], i, math.random(1, 6), 0.0005 * math.random(0, 6))
            else
                t = c:with{ timeout = 0.001 * math.random() }:spawn_call("step", i, math.random(1, 4), 0.0005, 1)
            end
            tasks[i], ns[i] = t, i
            if math.random() < 0.1 then t:cancel() end
            if i == 120 then
                isle.sleep(0.001 * math.random(0, 4)) -- let it get into the work
                c:close{ cancel = true }
                break
            end
        end
        for i = 1, #tasks do
            check_outcome(tasks[i], ns[i], ("round %d task %d"):format(round, i), true)
        end
        assert_serving({ a, b }, round)
    end
    a:close()
    b:close()
    lu.assertEquals(isle.live_count(), 0)
end

os.exit(lu.LuaUnit.run())
