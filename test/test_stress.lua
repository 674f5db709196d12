-- Many isles, mixed traffic, cancels and timeouts racing the work: every task
-- ends exactly once with a consistent outcome, and nothing hangs.
local lu = require("luaunit")
local isle = require("isle")

local NODE = [[
    local isle = require("isle")
    local me = ...
    count = 0
    function bump() count = count + 1 end
    function get() return count end
    -- Work of a given kind: plain, sleeping, calling a peer, spinning.
    function work(kind, peer, n)
        if kind == 1 then return n + 1 end
        if kind == 2 then isle.sleep(0.001 * (n % 5)) return n + 1 end
        if kind == 3 then return isle.lookup(peer):call("work", 1, peer, n) end
        if kind == 4 then isle.lookup(peer):post("bump") return n + 1 end
        local x = 0
        for i = 1, 20000 * (n % 7) do x = x + i end
        return n + 1
    end
]]

-- These run for seconds, and much longer on a loaded machine: a deadline of
-- their own (test/run.lua) instead of the default.
TestStress = { deadline = 240 }

local function mixed_round(seed)
    local names = { "s1", "s2", "s3", "s4" }
    local nodes = {}
    for i, name in ipairs(names) do nodes[i] = isle.spawn{ name = name, init = NODE, args = { name } } end
    math.randomseed(seed)
    local tasks, kinds = {}, {}
    local tok = isle.token()
    for i = 1, 2000 do
        local node = nodes[i % 4 + 1]
        local peer = names[(i + 1) % 4 + 1]
        local kind = math.random(1, 5)
        local h = node
        if i % 13 == 0 then h = node:with{ timeout = 0.002 } end
        if i % 17 == 0 then h = node:with{ token = tok } end
        tasks[i] = h:spawn_call("work", kind, peer, i)
        kinds[i] = kind
        if i % 7 == 0 then tasks[i]:cancel() end
        if i == 1500 then tok:cancel() end
    end
    local outcomes = { done = 0, cancelled = 0, timeout = 0, other = 0 }
    for i = 1, #tasks do
        local ok, v = tasks[i]:wait(30)
        if ok then
            lu.assertEquals(v, i + 1, "wrong result for task " .. i)
            lu.assertEquals(tasks[i]:status(), "done")
            outcomes.done = outcomes.done + 1
        else
            lu.assertTrue(v.code == "cancelled" or v.code == "timeout", tostring(v))
            lu.assertEquals(tasks[i]:status(), "cancelled")
            outcomes[v.code] = outcomes[v.code] + 1
        end
        -- Ended once: the outcome does not change on a second look.
        local ok2, v2 = tasks[i]:result()
        lu.assertEquals(ok2, ok)
        if ok then lu.assertEquals(v2, v) else lu.assertEquals(v2.code, v.code) end
    end
    lu.assertTrue(outcomes.done > 1000)
    lu.assertTrue(outcomes.cancelled > 200)
    -- Posts all arrived: bumps counted across nodes equal the kind-4 tasks that completed.
    local posted = 0
    for i = 1, #tasks do
        if kinds[i] == 4 and tasks[i]:status() == "done" then posted = posted + 1 end
    end
    local counted = 0
    for _, n in ipairs(nodes) do counted = counted + n:call("get") end
    lu.assertTrue(counted >= posted, ("%d bumps for %d posting tasks"):format(counted, posted))
    for _, n in ipairs(nodes) do n:close() end
    lu.assertEquals(isle.live_count(), 0)
end

function TestStress:test_mixed_traffic_with_cancels_and_timeouts()
    for seed = 1, 30 do mixed_round(seed) end
end

-- Isles calling each other in a ring, hundreds of calls in flight at once
-- (this found a lost-batch hang once: keep it).
function TestStress:test_ring_of_nested_calls()
    local names = { "r1", "r2", "r3", "r4" }
    local nodes = {}
    for i, name in ipairs(names) do nodes[i] = isle.spawn{ name = name, init = NODE, args = { name } } end
    for round = 1, 3 do
        local tasks = {}
        for i = 1, 2000 do
            tasks[i] = nodes[i % 4 + 1]:spawn_call("work", 3, names[(i + 1) % 4 + 1], i)
        end
        for i = 1, #tasks do
            lu.assertEquals({ tasks[i]:wait(30) }, { true, i + 1 }, "task " .. i .. " of round " .. round)
        end
    end
    for _, n in ipairs(nodes) do n:close() end
end

os.exit(lu.LuaUnit.run())
