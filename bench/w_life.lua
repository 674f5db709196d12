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

-- SCALE: `count` isles spawned (and pinged) one after the other and kept
-- alive, in batches of 100: the wall time and the process's CPU time of each
-- batch (CPU time is steadier on a busy machine: waiting for a core does not
-- count), then the process's CPU while they all sit idle. Prints the first
-- and the last batch's figures per isle.
local function scale_child(isle, count)
    local B = math.min(100, math.floor(count / 2))
    local hs, walls, cpus = {}, {}, {}
    local t00 = now()
    for b = 0, math.floor(count / B) - 1 do
        local t0, c0 = now(), lib.cpu()
        for i = b * B + 1, b * B + B do
            hs[i] = isle.spawn{ init = serve }
            if hs[i]:call("inc", i) ~= i + 1 then error("SCALE: wrong reply") end
        end
        walls[#walls + 1] = (now() - t0) / B
        cpus[#cpus + 1] = (lib.cpu() - c0) / B
    end
    local total = now() - t00
    isle.sleep(0.5)
    -- The slope between a 1 s and a 5 s sleep: with thousands of threads,
    -- reading the process's CPU clock and waking from the sleep cost a fixed
    -- ~20 ms (the kernel sums every thread), which is not the isles' idling.
    local c0, t0 = lib.cpu(), now()
    lib.sleep(1)
    local c1, t1 = lib.cpu(), now()
    lib.sleep(5)
    local c2, t2 = lib.cpu(), now()
    local idle = ((c2 - c1) - (c1 - c0)) / ((t2 - t1) - (t1 - t0)) * 100
    if idle < 0 then idle = 0 end
    local live = isle.live_count()
    c1 = now()
    close_all(hs)
    local close = now() - c1
    io.write(string.format("%.4f ms first, %.4f ms last, cpu %.4f ms first, %.4f ms last, total=%.3f idle=%.3f close=%.3f live=%d\n",
        walls[1] * 1e3, walls[#walls] * 1e3, cpus[1] * 1e3, cpus[#cpus] * 1e3, total, idle, close, live))
end

-- W6 memory runs in a fresh process (`run.lua --child w_life mem N`) so that
-- the baseline is the bare process and no earlier workload's heap is reused.
local function child(what, count)
    local isle = require("isle")
    if what == "scale" then return scale_child(isle, tonumber(count) or 10000) end
    if what ~= "mem" then error("w_life: unknown child " .. tostring(what)) end
    count = tonumber(count) or 200
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
        { "plain", function() return ctx.plain("spawn", count) end },
        { "c", function() return ctx.cfloor("spawn", count) end },
        { "mem", function() return mem_run(ctx, 200) end },
        { "memfloor", function() return ctx.plain("idle", 200) end },
        { "memworker", function() return ctx.plain("worker", 200) end },
    })
    lib.gc()
    local leaked = isle.live_count() - base
    local rows = {
        ctx.row{ id = "W6", name = "W6 spawn+ping+close", value = s.isle.median, unit = "ms/isle",
            floor = s.plain.median, floor_label = "C state", runs = s.isle.runs, floor_runs = s.plain.runs,
            note = s.plain.err or (leaked ~= 0 and (leaked .. " isles still live afterwards"))
                or "floor: a thread that opens a LuaJIT state with its libraries, runs a chunk, closes it",
            extra = { count = count },
            targets = { { op = "<=", value = 0.2, text = "<= 0.2 ms" },
                        { op = "<=", value = 2, ratio = true, text = "<= 2x C state" } } },
        ctx.row{ id = "W6", name = "W6 spawn vs isle's core thread", value = s.isle.median, unit = "ms/isle",
            floor = s.c.median, floor_label = "C thread", runs = s.isle.runs, floor_runs = s.c.runs,
            note = s.c.err or "floor: a bare thread with isle's mailbox started, pinged, joined; no Lua" },
        ctx.row{ id = "W6", name = "W6 memory per idle isle", value = s.mem.median, unit = "KiB",
            floor = s.memfloor.median, floor_label = "C idle state", floor_runs = s.memfloor.runs,
            runs = s.mem.runs, na = s.mem.err, extra = { count = 200 },
            note = s.memfloor.err or ("VmRSS with 200 idle isles minus the bare process, / 200; floor: 200 parked"
                .. " threads, each with a LuaJIT state with its libraries, ffi and string.buffer"),
            targets = { { op = "<=", value = 64, text = "<= 64 KiB" },
                        { op = "<", value = 86, text = "< 86 KiB" } } },
        -- What the targets leave room for: the smallest worker written in
        -- Lua through the FFI, as isle's is (plain_floor.c, "worker").
        ctx.row{ id = "W6", name = "W6 memory vs the smallest FFI worker", value = s.mem.median, unit = "KiB",
            floor = s.memworker.median, floor_label = "C+Lua worker", floor_runs = s.memworker.runs,
            runs = s.mem.runs, na = s.mem.err,
            note = s.memworker.err or ("floor: the same threads, each running a 10-line Lua loop through the"
                .. " FFI (two C functions, string.buffer) that has served one call; no isle code") },
    }
    return rows
end

-- SCALE: 10,000 live isles in a fresh process (one run: it takes a while).
local function run_scale(ctx)
    local count = ctx.n(10000, 1000)
    local cmd = string.format("%s %s/run.lua --child w_life scale %d", ctx.luajit, ctx.script_dir, count)
    local out = lib.capture(cmd)
    local first, last = out:match("^([%d%.]+) ms first, ([%d%.]+) ms last")
    local cfirst, clast = out:match("cpu ([%d%.]+) ms first, ([%d%.]+) ms last")
    local total, idle = out:match("total=([%d%.]+) idle=([%d%.]+)")
    local close, live = out:match("close=([%d%.]+) live=(%d+)")
    local target = { { op = "<=", value = 1.5, ratio = true, text = "<= 1.5x first" } }
    if not (first and cfirst and total and live) then
        local why = "scale child failed: " .. out:sub(1, 200)
        return { ctx.row{ id = "SCALE", name = "SCALE last spawn vs first (CPU)", na = why, targets = target } }
    end
    local note = string.format("%d live isles; first and last batch of 100 spawn+ping; all created in %.1f s, closed in %.1f s",
        tonumber(live), tonumber(total), tonumber(close))
    return {
        ctx.row{ id = "SCALE", name = "SCALE last spawn vs first (CPU)", value = tonumber(clast), unit = "ms/isle",
            floor = tonumber(cfirst), floor_label = "first 100", note = "process CPU time; " .. note,
            extra = { count = count, total_s = tonumber(total) }, targets = target },
        ctx.row{ id = "SCALE", name = "SCALE last spawn vs first (wall)", value = tonumber(last), unit = "ms/isle",
            floor = tonumber(first), floor_label = "first 100", note = "wall time, moves with the machine's load" },
        ctx.row{ id = "SCALE", name = "SCALE idle isles CPU", value = tonumber(idle), unit = "% core",
            extra = { count = count },
            note = string.format("process CPU per second of wall with %d idle isles (slope between a 1 s and a 5 s sleep)",
                count),
            targets = { { op = "<", value = 1, text = "< 1% core" } } },
    }
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
    { id = "SCALE", title = "10,000 live isles (spawn time, idle CPU)", run = run_scale },
    child = child,
    spawn_cycle = spawn_cycle, -- W6's figures, for --compare (w_compare.lua)
    mem_run = mem_run,
}
