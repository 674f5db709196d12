-- Messaging workloads: W1 ping, W2 stream, W3 table, W7 fanout.
local lib = require("lib")
local now = lib.now

-- What every messaging isle knows. An upvalue-free function, so it ships.
local function serve()
    function inc(i) return i + 1 end
    local sum = 0
    function add(i) sum = sum + i end
    function total() local s = sum; sum = 0; return s end
    function tab(t) return { id = t.id, n = #t.vals } end
end

-- The same functions in this state, for the zero-thread floors.
local direct = {}
direct.inc = loadstring("return function(i) return i + 1 end")()
direct.tab = loadstring("return function(t) return { id = t.id, n = #t.vals } end")()

-- W1 -----------------------------------------------------------------------------

local function w1_isle(h, n)
    for i = 1, 1000 do h:call("inc", i) end  -- warm up (JIT, caches, spin)
    local t0 = now()
    for i = 1, n do
        local r = h:call("inc", i)
        if r ~= i + 1 then error("W1: wrong reply " .. tostring(r) .. " to " .. i) end
    end
    return (now() - t0) * 1e6 / n
end

local function w1_direct(n)
    local inc, s = direct.inc, 0
    local t0 = now()
    for i = 1, n do s = s + inc(i) end
    local dt = now() - t0
    if s ~= n * (n + 1) / 2 + n then error("W1 direct: wrong sum") end
    return dt * 1e6 / n
end

local function run_w1(ctx)
    local n = ctx.n(100000, 10000)
    local h = ctx.isle.spawn{ init = serve }
    local s = ctx.series({
        { "isle", function() return w1_isle(h, n) end },
        { "plain", function() return ctx.plain("ping", n) end },
        { "c", function() return ctx.cfloor("ping", n) end },
        { "direct", function() return w1_direct(n * 100) end },
    })
    h:close()
    local rows = {}
    rows[1] = ctx.row{ id = "W1", name = "W1 ping", value = s.isle.median, unit = "us/rt",
        floor = s.plain.median, floor_label = "plain C", runs = s.isle.runs, floor_runs = s.plain.runs,
        note = s.plain.err or "floor: an int through one atomic slot each way, spin then futex",
        extra = { n = n },
        targets = { { op = "<=", value = 2, text = "<= 2 us" },
                    { op = "<=", value = 3, ratio = true, text = "<= 3x plain C" } } }
    rows[2] = ctx.row{ id = "W1", name = "W1 ping vs isle's core", value = s.isle.median, unit = "us/rt",
        floor = s.c.median, floor_label = "isle core", runs = s.isle.runs, floor_runs = s.c.runs,
        note = s.c.err or "floor: isle's mailbox + task slot from C, no Lua" }
    rows[3] = ctx.row{ id = "W1", name = "W1 ping vs direct call", value = s.isle.median, unit = "us/rt",
        floor = s.direct.median, floor_label = "1 state", runs = s.isle.runs, floor_runs = s.direct.runs,
        note = "floor: inc(i) called in this state" }
    rows[4] = ctx.row{ id = "W1", name = "W1 isle's core ping (C)", value = s.c.median, unit = "us/rt",
        floor = s.plain.median, floor_label = "plain C", runs = s.c.runs, floor_runs = s.plain.runs,
        na = s.c.err, note = "isle's mailbox + task slot, no Lua (bench/c/pingpong.c)" }
    rows[5] = ctx.row{ id = "W1", name = "W1 floor: plain C ping", value = s.plain.median, unit = "us/rt",
        runs = s.plain.runs, na = s.plain.err, note = "no isle code (bench/c/plain_floor.c)" }
    return rows
end

-- W2 -----------------------------------------------------------------------------

local function stream_isle(hs, n)
    local k = #hs
    -- Expected sums per isle (outside the timed part).
    local expect = {}
    for j = 1, k do expect[j] = 0 end
    for i = 1, n do local j = i % k + 1; expect[j] = expect[j] + i end
    local t0 = now()
    if k == 1 then
        local h = hs[1]
        for i = 1, n do h:post("add", i) end
    else
        for i = 1, n do hs[i % k + 1]:post("add", i) end
    end
    for j = 1, k do
        local got = hs[j]:call("total")
        if got ~= expect[j] then
            error("stream: isle " .. j .. " summed " .. tostring(got) .. ", expected " .. expect[j])
        end
    end
    return n / (now() - t0)
end

local function run_w2(ctx)
    local n = ctx.n(1000000, 100000)
    local h = ctx.isle.spawn{ init = serve }
    stream_isle({ h }, 10000)  -- warm up
    local s = ctx.series({
        { "isle", function() return stream_isle({ h }, n) end },
        { "plain", function() return ctx.plain("stream", n) end },
        { "c", function() return ctx.cfloor("stream", n) end },
    })
    h:close()
    return {
        -- A rate's ratio is floor/value: >= 0.5x the plain floor is a ratio <= 2.
        ctx.row{ id = "W2", name = "W2 stream", value = s.isle.median, unit = "msg/s", better = "higher",
            floor = s.plain.median, floor_label = "plain C", runs = s.isle.runs, floor_runs = s.plain.runs,
            note = s.plain.err or "floor: mutex + condvar ring drained in batches", extra = { n = n },
            targets = { { op = ">=", value = 5e6, text = ">= 5M msg/s" },
                        { op = "<=", value = 2, ratio = true, text = ">= 0.5x plain C (ratio <= 2)" } } },
        ctx.row{ id = "W2", name = "W2 stream vs isle's core", value = s.isle.median, unit = "msg/s",
            better = "higher", floor = s.c.median, floor_label = "isle core", runs = s.isle.runs,
            floor_runs = s.c.runs, note = s.c.err or "floor: isle's mailbox from C, no Lua" },
        ctx.row{ id = "W2", name = "W2 isle's core stream (C)", value = s.c.median, unit = "msg/s",
            better = "higher", floor = s.plain.median, floor_label = "plain C", runs = s.c.runs,
            floor_runs = s.plain.runs, na = s.c.err, note = "bench/c/pingpong.c stream" },
    }
end

-- W3 -----------------------------------------------------------------------------

local function w3_isle(h, n)
    for i = 1, 1000 do h:call("tab", { id = i, vals = { 1 } }) end
    local t0 = now()
    for i = 1, n do
        local r = h:call("tab", { id = i, name = "item" .. i, tags = { "a", "b", "c" }, vals = { 1, 2, 3, 4, 5 } })
        if r.id ~= i or r.n ~= 5 then error("W3: wrong reply for " .. i) end
    end
    return (now() - t0) * 1e6 / n
end

local function w3_direct(n)
    local tab, s = direct.tab, 0
    local t0 = now()
    for i = 1, n do
        local r = tab({ id = i, name = "item" .. i, tags = { "a", "b", "c" }, vals = { 1, 2, 3, 4, 5 } })
        s = s + r.id + r.n
    end
    local dt = now() - t0
    if s ~= n * (n + 1) / 2 + 5 * n then error("W3 direct: wrong sum") end
    return dt * 1e6 / n
end

local function run_w3(ctx)
    local n = ctx.n(100000, 10000)
    local h = ctx.isle.spawn{ init = serve }
    local s = ctx.series({
        { "isle", function() return w3_isle(h, n) end },
        { "w1", function() return w1_isle(h, n) end },
        { "plain", function() return ctx.plain("ping", n) end },
        { "direct", function() return w3_direct(n * 10) end },
    })
    h:close()
    return {
        ctx.row{ id = "W3", name = "W3 table", value = s.isle.median, unit = "us/rt",
            floor = s.w1.median, floor_label = "isle W1", runs = s.isle.runs, floor_runs = s.w1.runs,
            note = "floor: isle's own W1 in the same run", extra = { n = n },
            targets = { { op = "<=", value = 5, text = "<= 5 us" },
                        { op = "<=", value = 2.5, ratio = true, text = "<= 2.5x isle W1" } } },
        ctx.row{ id = "W3", name = "W3 table vs plain C ping", value = s.isle.median, unit = "us/rt",
            floor = s.plain.median, floor_label = "plain C", runs = s.isle.runs, floor_runs = s.plain.runs,
            note = s.plain.err or "floor: a round trip with no encoding at all" },
        ctx.row{ id = "W3", name = "W3 table vs direct call", value = s.isle.median, unit = "us/rt",
            floor = s.direct.median, floor_label = "1 state", runs = s.isle.runs, floor_runs = s.direct.runs,
            note = "floor: same table built and passed in this state" },
    }
end

-- W7 -----------------------------------------------------------------------------

local function run_w7(ctx)
    local k = 4
    local n = ctx.n(250000, 25000) * k
    local hs = {}
    for j = 1, k do hs[j] = ctx.isle.spawn{ init = serve } end
    stream_isle(hs, 10000)
    local s = ctx.series({
        { "isle", function() return stream_isle(hs, n) end },
        { "c", function() return ctx.cfloor("fanout", n, k) end },
    })
    for j = 1, k do hs[j]:close() end
    return {
        ctx.row{ id = "W7", name = "W7 fanout x4", value = s.isle.median, unit = "msg/s", better = "higher",
            floor = s.c.median, floor_label = "C", runs = s.isle.runs, floor_runs = s.c.runs,
            note = s.c.err, extra = { n = n, isles = k },
            targets = { { op = ">=", value = 5e6, text = ">= 5M msg/s" } } },
    }
end

-- MEM: W1-W3 with a memory_limit against the same without ----------------------
--
-- Every isle's state allocates through a counting wrapper of LuaJIT's own
-- allocator (csrc/mem.c); a capped one also switches its limit around each
-- job and encodes results under a pcall (lua/isle/worker.lua). The floor of
-- each W row is the same workload on an uncapped isle, measured moments
-- apart. The allocator rows come from bench/c/alloc.c: a Lua loop that
-- only allocates (small tables and strings) in a fresh state on LuaJIT's
-- allocator alone (the floor), then wrapped without a limit and with one
-- (CPU time per iteration, medians of interleaved runs).

local function alloc_floor(ctx, n, reps)
    local bin = ctx.root .. "/build/bench_alloc"
    if not ctx.lib.file_exists(bin) then ctx.lib.capture("make -s -C " .. ctx.root .. " bench-floor") end
    if not ctx.lib.file_exists(bin) then return nil, "build/bench_alloc not built (make bench-floor)" end
    local out = ctx.lib.capture(bin .. " " .. n .. " " .. reps)
    local plain, counted, capped = out:match("^([%d%.]+) ([%d%.]+) ([%d%.]+)")
    if not plain then return nil, "bench_alloc failed: " .. out end
    return tonumber(plain), tonumber(counted), tonumber(capped)
end

local function run_mem(ctx)
    local limit = 64 * 1024 * 1024
    local n1, n2, n3 = ctx.n(100000, 10000), ctx.n(1000000, 100000), ctx.n(100000, 10000)
    local plain = ctx.isle.spawn{ init = serve }
    local capped = ctx.isle.spawn{ init = serve, memory_limit = limit }
    stream_isle({ plain }, 10000)
    stream_isle({ capped }, 10000)
    local s = ctx.series({
        { "w1", function() return w1_isle(plain, n1) end },
        { "w1c", function() return w1_isle(capped, n1) end },
        { "w2", function() return stream_isle({ plain }, n2) end },
        { "w2c", function() return stream_isle({ capped }, n2) end },
        { "w3", function() return w3_isle(plain, n3) end },
        { "w3c", function() return w3_isle(capped, n3) end },
    })
    plain:close()
    capped:close()
    local na = ctx.n(2000000, 200000)
    local a0, a1, a2 = alloc_floor(ctx, na, ctx.quick and 5 or 9)
    local note = "floor: the same on an isle without a limit"
    local rows = {
        ctx.row{ id = "MEM", name = "MEM W1 ping, capped", value = s.w1c.median, unit = "us/rt",
            floor = s.w1.median, floor_label = "no cap", runs = s.w1c.runs, floor_runs = s.w1.runs,
            note = note, extra = { n = n1, memory_limit = limit } },
        ctx.row{ id = "MEM", name = "MEM W2 stream, capped", value = s.w2c.median, unit = "msg/s",
            better = "higher", floor = s.w2.median, floor_label = "no cap", runs = s.w2c.runs,
            floor_runs = s.w2.runs, note = note, extra = { n = n2, memory_limit = limit } },
        ctx.row{ id = "MEM", name = "MEM W3 table, capped", value = s.w3c.median, unit = "us/rt",
            floor = s.w3.median, floor_label = "no cap", runs = s.w3c.runs, floor_runs = s.w3.runs,
            note = note, extra = { n = n3, memory_limit = limit } },
    }
    local anote = "CPU ns per iteration of an allocating loop; floor: LuaJIT's allocator unwrapped"
    rows[#rows + 1] = ctx.row{ id = "MEM", name = "MEM allocator, counted", value = a1, unit = "ns/iter",
        floor = a1 and a0 or nil, floor_label = "LuaJIT", note = a1 and "what every isle runs on; " .. anote or a0,
        na = not a1 and a0 or nil, extra = { n = na } }
    rows[#rows + 1] = ctx.row{ id = "MEM", name = "MEM allocator, capped", value = a2, unit = "ns/iter",
        floor = a2 and a0 or nil, floor_label = "LuaJIT", note = a2 and "a capped isle's jobs; " .. anote or a0,
        na = not a2 and a0 or nil, extra = { n = na } }
    return rows
end

return {
    { id = "W1", title = "ping (call round trip)", run = run_w1 },
    { id = "W2", title = "stream (one-way posts)", run = run_w2 },
    { id = "W3", title = "table (round trip with a table)", run = run_w3 },
    { id = "W7", title = "fanout (posts to 4 isles)", run = run_w7 },
    { id = "MEM", title = "W1-W3 with a memory_limit (vs without)", run = run_mem },
    serve = serve, w1_isle = w1_isle, -- isle's side of --compare's W1 rows (w_compare.lua)
}
