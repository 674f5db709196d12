-- Lifecycle workloads: W6 spawn (time and memory per isle), IDLE cost.
local lib = require("lib")
local now = lib.now

local function serve()
    function inc(i) return i + 1 end
end

-- W6 time: `count` isles, each spawned, pinged once and closed.
local function spawn_cycle(isle, count)
    local t0 = now()
    for i = 1, count do
        local h = isle.spawn{ init = serve }
        if h:call("inc", i) ~= i + 1 then error("W6: wrong reply") end
        h:close()
    end
    return (now() - t0) * 1e3 / count
end

local function spawn_live(isle, count)
    local hs = {}
    for i = 1, count do
        hs[i] = isle.spawn{ init = serve }
        if hs[i]:call("inc", i) ~= i + 1 then error("W6: wrong reply") end
    end
    return hs
end

local function close_all(hs)
    for i = 1, #hs do hs[i]:close() end
end

-- W6 memory runs in a fresh process (`run.lua --child w_life mem N`) so that
-- the baseline is the bare process and no earlier workload's heap is reused.
local function child(what, count)
    if what ~= "mem" then error("w_life: unknown child " .. tostring(what)) end
    count = tonumber(count) or 200
    local isle = require("isle")
    lib.gc()
    isle.sleep(0.1)
    local before = lib.rss_kib()
    local hs = spawn_live(isle, count)
    lib.gc()
    isle.sleep(0.2)  -- let every isle park in its mailbox wait
    local after = lib.rss_kib()
    local live = isle.live_count()
    close_all(hs)
    io.write(string.format("%.3f KiB/isle before=%d after=%d live=%d\n",
        (after - before) / count, before, after, live))
end

local function mem_run(ctx, count)
    local cmd = string.format("%s %s/run.lua --child w_life mem %d", ctx.luajit, ctx.script_dir, count)
    local out = lib.capture(cmd)
    local v = tonumber(out:match("^([%d%.]+) KiB/isle"))
    if not v then return nil, "memory child failed: " .. out:sub(1, 200) end
    local live = tonumber(out:match("live=(%d+)"))
    if live ~= count then return nil, "memory child saw " .. tostring(live) .. " live isles, not " .. count end
    return v
end

local function run_w6(ctx)
    local isle = ctx.isle
    local count = ctx.n(200, 50)
    local base = isle.live_count()
    spawn_cycle(isle, 5)
    local s = ctx.series({
        { "isle", function() return spawn_cycle(isle, count) end },
        { "c", function() return ctx.cfloor("spawn", count) end },
        { "mem", function() return mem_run(ctx, 200) end },
    })
    lib.gc()
    local leaked = isle.live_count() - base
    local rows = {
        ctx.row{ id = "W6", name = "W6 spawn+ping+close", value = s.isle.median, unit = "ms/isle",
            floor = s.c.median, floor_label = "C thread", runs = s.isle.runs, floor_runs = s.c.runs,
            note = s.c.err or (leaked ~= 0 and (leaked .. " isles still live afterwards") or nil),
            extra = { count = count },
            targets = { { op = "<=", value = 0.2, text = "<= 0.2 ms" } } },
        ctx.row{ id = "W6", name = "W6 memory per idle isle", value = s.mem.median, unit = "KiB",
            runs = s.mem.runs, na = s.mem.err, extra = { count = 200 },
            note = "VmRSS with 200 idle isles minus the bare process, / 200",
            targets = { { op = "<=", value = 64, text = "<= 64 KiB" } } },
    }
    return rows
end

-- IDLE: CPU of the process while `count` isles sit idle, over `secs` of wall.
local function idle_pct(secs)
    local c0, p0, t0 = lib.cpu(), lib.proc_cpu(), now()
    lib.sleep(secs)
    local c1, p1, t1 = lib.cpu(), lib.proc_cpu(), now()
    return (c1 - c0) / (t1 - t0) * 100, p1 and p0 and (p1 - p0) / (t1 - t0) * 100
end

local function run_idle(ctx)
    local isle = ctx.isle
    local count = 100
    local secs = ctx.n(2, 1)
    local proc = {}
    local s = ctx.series({
        { "bare", function() return (idle_pct(secs / 4)) end },
        { "isle", function()
            local hs = spawn_live(isle, count)
            isle.sleep(0.1)
            local pct, ppct = idle_pct(secs)
            proc[#proc + 1] = ppct
            close_all(hs)
            return pct
        end },
    }, { reps = ctx.n(3, 1), min_reps = 1 })
    return {
        ctx.row{ id = "IDLE", name = "IDLE 100 isles", value = s.isle.median, unit = "% core",
            floor = s.bare.median, floor_label = "no isles", no_ratio = true, runs = s.isle.runs, floor_runs = s.bare.runs,
            extra = { isles = count, seconds = secs, proc_stat_pct = proc },
            note = string.format("process CPU over %g s of wall time", secs),
            targets = { { op = "<", value = 1, text = "< 1% core" } } },
    }
end

return {
    { id = "W6", title = "spawn (time and memory per isle)", run = run_w6 },
    { id = "IDLE", title = "idle cost of 100 isles", run = run_idle },
    child = child,
}
