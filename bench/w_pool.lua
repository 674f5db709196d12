-- Pool scaling (issue 9, "Pools"): CPU-bound jobs submitted to pools of 1,
-- 2 and 4 isles (isle.pool), all submitted at once with spawn_call and
-- then waited for; jobs per second, and the speed-up of 2 and 4 isles over
-- 1. The floor is the same jobs called one after another in the host's own
-- state (no thread, no isle code): what one core does. Runs interleaved,
-- medians reported (bench/README.md, "POOL").
local lib = require("lib")
local now = lib.now

-- About two milliseconds of compiled arithmetic per job on the 2-vCPU VM.
local WORK = [[
function work(n)
    local x = 0
    for i = 1, n do x = (x + i * 0.5) % 1000003 end
    return x
end
]]
local ITERS = 100000

local function host_floor(work, jobs)
    work(ITERS) -- warm up
    local t0 = now()
    for _ = 1, jobs do work(ITERS) end
    return jobs / (now() - t0)
end

-- Cores this process used while a pool ran (process CPU time over wall
-- time, per pool size): whether the machine gave the isles their cores.
local cores_used = {}

local function through_pool(p, jobs)
    local ts = {}
    local c0 = lib.proc_cpu()
    local t0 = now()
    for i = 1, jobs do ts[i] = p:spawn_call("work", ITERS) end
    for i = 1, jobs do
        local ok, e = ts[i]:wait()
        if not ok then error("POOL: a job failed: " .. tostring(e)) end
    end
    local dt = now() - t0
    local used = cores_used[p:size()] or {}
    cores_used[p:size()] = used
    used[#used + 1] = (lib.proc_cpu() - c0) / dt
    return jobs / dt
end

-- Round trips: p:call on a pool of 1 against h:call on an isle.
local function round_trips(target, n)
    for i = 1, 1000 do target:call("inc", i) end
    local t0 = now()
    for i = 1, n do
        if target:call("inc", i) ~= i + 1 then error("POOL: wrong reply") end
    end
    return (now() - t0) * 1e6 / n
end

local function run_pool(ctx)
    local isle = ctx.isle
    local jobs = ctx.n(200, 50)
    local env = {}
    assert(load(WORK, "=work", "t", env))()
    local work = env.work
    local pools = {}
    for _, n in ipairs({ 1, 2, 4 }) do
        pools[n] = isle.pool{ size = n, init = WORK, queue = jobs }
        through_pool(pools[n], 8) -- warm up (the JIT in each isle)
    end
    local res = ctx.series({
        { "floor", function() return host_floor(work, jobs) end },
        { "p1", function() return through_pool(pools[1], jobs) end },
        { "p2", function() return through_pool(pools[2], jobs) end },
        { "p4", function() return through_pool(pools[4], jobs) end },
    })
    local n = ctx.n(100000, 10000)
    local INC = "function inc(i) return i + 1 end"
    local pinc, hinc = isle.pool{ size = 1, init = INC }, isle.spawn{ init = INC }
    local rt = ctx.series({
        { "pool", function() return round_trips(pinc, n) end },
        { "isle", function() return round_trips(hinc, n) end },
    })
    pinc:close()
    hinc:close()
    for _, p in pairs(pools) do p:close() end
    local nproc = tonumber((lib.capture("nproc"))) or 1
    local function cores(n) return lib.median(cores_used[n]) or 0 end
    local function speedups(runs)
        local s = {}
        for i = 1, math.min(#runs, #res.p1.runs) do s[i] = runs[i] / res.p1.runs[i] end
        return s
    end
    local s2, s4 = speedups(res.p2.runs), speedups(res.p4.runs)
    local want = math.min(2, nproc) * 0.75
    return {
        ctx.row{ id = "POOL", name = "POOL pool of 1 isle, CPU-bound jobs", value = res.p1.median, unit = "jobs/s",
            better = "higher", floor = res.floor.median, floor_label = "1 state", runs = res.p1.runs,
            floor_runs = res.floor.runs, extra = { jobs = jobs, iters = ITERS },
            note = string.format("floor: the same jobs in the host's state, no threads; %.2f cores used",
                cores(1)) },
        ctx.row{ id = "POOL", name = "POOL pool of 2 isles", value = res.p2.median, unit = "jobs/s",
            better = "higher", runs = res.p2.runs,
            note = string.format("%.2fx the pool of 1 (%d cores); %.2f cores used", lib.median(s2) or 0, nproc,
                cores(2)) },
        ctx.row{ id = "POOL", name = "POOL pool of 4 isles", value = res.p4.median, unit = "jobs/s",
            better = "higher", runs = res.p4.runs,
            note = string.format("%.2fx the pool of 1 (%d cores); %.2f cores used", lib.median(s4) or 0, nproc,
                cores(4)) },
        ctx.row{ id = "POOL", name = "POOL speed-up, 2 isles over 1", value = lib.median(s2), unit = "x",
            better = "higher", runs = s2,
            targets = { { op = ">=", value = want, text = string.format(">= %.2fx", want) } },
            note = "per-run ratios, each pair measured moments apart" },
        ctx.row{ id = "POOL", name = "POOL speed-up, 4 isles over 1", value = lib.median(s4), unit = "x",
            better = "higher", runs = s4, note = "more isles than cores: shows what oversubscription costs" },
        ctx.row{ id = "POOL", name = "POOL round trip p:call on a pool of 1", value = rt.pool.median,
            unit = "us/rt", floor = rt.isle.median, floor_label = "isle h:call", runs = rt.pool.runs,
            floor_runs = rt.isle.runs, extra = { n = n },
            note = "the same call through the pool's queue and feeder instead of the isle's mailbox" },
        ctx.row{ id = "POOL", name = "POOL floor: the jobs in one state", value = res.floor.median, unit = "jobs/s",
            better = "higher", runs = res.floor.runs, note = "one core, no isle code" },
    }
end

return {
    { id = "POOL", title = "pool scaling, CPU-bound jobs (1, 2, 4 isles)", run = run_pool },
}
