-- bench/run.lua: the isle benchmark driver (`make bench`).
--
--   luajit bench/run.lua [--quick] [--only W1,W3] [--reps N] [--compare]
--                        [--json PATH] [--list]
--
-- Runs each workload several times in this one process, interleaving every
-- run with its floor (the same traffic without isle's Lua layer, or without
-- threads) so that ratios hold on a noisy machine, and reports medians:
-- a table on stdout and bench/results.json. See bench/README.md.
local script_dir = (arg and arg[0] or "bench/run.lua"):match("^(.*)/[^/]*$") or "."
local root = script_dir .. "/.."
package.path = script_dir .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;"
    .. root .. "/ffi/?.lua;" .. package.path
package.cpath = root .. "/build/?.so;" .. package.cpath

local lib = require("lib")

-- Arguments ------------------------------------------------------------------

local USAGE = [[
usage: luajit bench/run.lua [options]
  --quick          fewer iterations and runs (a smoke run, 15-30 s)
  --only W1,W3     run only these workloads (W1..W9, IDLE, MEM, POOL; CMP with --compare)
  --reps N         runs per workload (default 5, quick 3)
  --compare        also run W1/W2 with other LuaJIT threading libraries found
  --json PATH      where to write the results (default bench/results.json)
  --list           list the workloads and exit]]

local opts = { quick = false, only = nil, reps = nil, compare = false,
               json = script_dir .. "/results.json", list = false }
do
    local i = 1
    while arg and arg[i] do
        local a = arg[i]
        if a == "--quick" then opts.quick = true
        elseif a == "--compare" then opts.compare = true
        elseif a == "--list" then opts.list = true
        elseif a == "--only" or a == "--reps" or a == "--json" then
            local v = arg[i + 1]
            if not v then io.stderr:write(a, " needs a value\n", USAGE, "\n") os.exit(2) end
            if a == "--only" then
                opts.only = {}
                for w in v:gmatch("[^,%s]+") do opts.only[w:upper()] = true end
            elseif a == "--reps" then
                opts.reps = tonumber(v)
                if not opts.reps or opts.reps < 1 then io.stderr:write("--reps needs a positive number\n") os.exit(2) end
            else
                opts.json = v
            end
            i = i + 1
        elseif a == "--child" then
            -- Internal: a measurement that needs a fresh process (W6 memory).
            local mod, what = arg[i + 1], arg[i + 2]
            require(mod).child(what, select(i + 3, unpack(arg)))
            os.exit(0)
        elseif a == "-h" or a == "--help" then
            print(USAGE) os.exit(0)
        else
            io.stderr:write("unknown option ", a, "\n", USAGE, "\n") os.exit(2)
        end
        i = i + 1
    end
end
opts.reps = opts.reps or (opts.quick and 3 or 5)

local ok_isle, isle = pcall(require, "isle")
if not ok_isle then
    io.stderr:write("bench: cannot load isle (run `make` first): ", tostring(isle), "\n")
    os.exit(1)
end

-- The context handed to every workload ----------------------------------------

local ctx = { lib = lib, isle = isle, quick = opts.quick, reps = opts.reps,
              root = root, script_dir = script_dir,
              luajit = (arg and arg[-1]) or "luajit" }

function ctx.log(...)
    io.stderr:write(table.concat({ ... }, ""), "\n")
    io.stderr:flush()
end

-- Iteration count: `full` normally, `quick` with --quick.
function ctx.n(full, quick)
    return opts.quick and quick or full
end

-- The C floor binaries (make bench-floor), built on first use if missing:
-- bench_plain_floor (plain C, no isle code: the floors of the targets) and
-- bench_pingpong (isle's own core without Lua).
local floor_state = {} -- bin -> true: present; string: why it is missing
local function ensure_floor(bin)
    if floor_state[bin] ~= nil then return floor_state[bin] end
    if not lib.file_exists(bin) then
        ctx.log("bench: building the C floors (make bench-floor)")
        lib.capture("make -s -C " .. root .. " bench-floor")
    end
    floor_state[bin] = lib.file_exists(bin) or (bin .. " not built (make bench-floor)")
    return floor_state[bin]
end

local function run_floor(bin, ...)
    local st = ensure_floor(bin)
    if st ~= true then return nil, st end
    local args = { ... }
    for i = 1, #args do args[i] = tostring(args[i]) end
    local out = lib.capture(bin .. " " .. table.concat(args, " "))
    local v = tonumber(out:match("^([%d%.eE+-]+)%s"))
    if not v then return nil, "C floor failed: " .. out end
    return v
end

-- isle's core without Lua (bench/c/pingpong.c); returns its figure, or nil, why.
function ctx.cfloor(...)
    return run_floor(root .. "/build/bench_pingpong", ...)
end

-- Plain C, no isle code (bench/c/plain_floor.c): ping, stream, spawn.
function ctx.plain(...)
    return run_floor(root .. "/build/bench_plain_floor", ...)
end

-- Runs the measures interleaved, `reps` times (fewer if past `budget`
-- seconds once `min_reps` are done). measures: list of {name, fn}; fn(rep)
-- returns a number, or nil, why (then that measure stops). Returns
-- name -> { runs = {...}, median = m, err = why }.
function ctx.series(measures, o)
    o = o or {}
    local reps = o.reps or ctx.reps
    local budget = o.budget or (opts.quick and 15 or 30)
    local min_reps = math.min(o.min_reps or 3, reps)
    local res = {}
    for _, m in ipairs(measures) do res[m[1]] = { runs = {} } end
    local t0 = lib.now()
    for r = 1, reps do
        for _, m in ipairs(measures) do
            local e = res[m[1]]
            if not e.err then
                local v, why = m[2](r)
                if v == nil then e.err = why or "failed" else e.runs[#e.runs + 1] = v end
            end
        end
        if r >= min_reps and lib.now() - t0 > budget then break end
    end
    for _, e in pairs(res) do e.median = lib.median(e.runs) end
    return res
end

-- Rows ---------------------------------------------------------------------------

-- A result row. Fields: id, name, value, unit, better ("lower"/"higher"),
-- floor, floor_label, runs, floor_runs, targets (list of {op, value, text,
-- ratio = true when it bounds the ratio}), note, na (why there is no value).
local function compare(a, op, b)
    if op == "<=" then return a <= b elseif op == "<" then return a < b
    elseif op == ">=" then return a >= b else return a > b end
end

function ctx.row(r)
    r.better = r.better or "lower"
    local lower = r.better == "lower"
    if r.runs and #r.runs > 0 then
        local lo, hi = lib.minmax(r.runs)
        r.best = lower and lo or hi
    end
    if not r.no_ratio and r.value ~= nil and r.floor ~= nil and r.floor > 0 and r.value > 0 then
        local runs, fl = r.runs, r.floor_runs
        if runs and fl and #runs == #fl and #runs > 0 then
            -- Each run was made moments apart from its floor run: the median of
            -- the per-run ratios is steadier than the ratio of the medians.
            local ratios = {}
            for i = 1, #runs do
                ratios[i] = lower and runs[i] / fl[i] or fl[i] / runs[i]
            end
            r.ratio = lib.median(ratios)
            r.ratio_runs = ratios
        else
            r.ratio = lower and r.value / r.floor or r.floor / r.value
        end
    end
    if r.value == nil then
        r.status = r.targets and #r.targets > 0 and "n/a" or "-"
    elseif r.targets and #r.targets > 0 then
        r.status = "met"
        local missed = {}
        for _, t in ipairs(r.targets) do
            local v = t.ratio and r.ratio or r.value
            if v == nil then
                missed[#missed + 1] = t.text .. " (no floor)"
            elseif not compare(v, t.op, t.value) then
                missed[#missed + 1] = t.text
            end
        end
        if #missed > 0 then r.status = "missed"; r.missed = missed end
    else
        r.status = "-"
    end
    if r.force_status then r.status = r.force_status; r.force_status = nil end
    return r
end

-- Workloads ------------------------------------------------------------------------

local modules = { "w_msg", "w_life", "w_cancel", "w_state", "w_pool" }
if opts.compare then modules[#modules + 1] = "w_compare" end
local workloads = {}
for _, m in ipairs(modules) do
    for _, w in ipairs(require(m)) do workloads[#workloads + 1] = w end
end
if opts.compare then workloads[#workloads + 1] = require("w_state").compare end

if opts.list then
    for _, w in ipairs(workloads) do print(string.format("%-5s %s", w.id, w.title)) end
    os.exit(0)
end

local nproc = tonumber((lib.capture("nproc"))) or 1
local busy_start = lib.busy_cores(0.5, nproc)
if busy_start and busy_start > 0.3 then
    ctx.log(string.format("bench: WARNING: other processes keep %.1f of %d cores busy; "
        .. "figures will be noisy (ratios to the floors still hold best)", busy_start, nproc))
end

local rows = {}
local timings = {}
local started = lib.now()
for _, w in ipairs(workloads) do
    if not opts.only or opts.only[w.id] or w.id == "CMP" then
        ctx.log(string.format("bench: %s %s ...", w.id, w.title))
        local t0 = lib.now()
        local ok, got = xpcall(w.run, debug.traceback, ctx)
        local dt = lib.now() - t0
        timings[w.id] = dt
        if ok then
            for _, r in ipairs(got) do
                rows[#rows + 1] = r
                ctx.log(string.format("  %-24s %s %s%s", r.name, lib.fmt(r.value), r.unit or "",
                    r.na and ("  (" .. r.na .. ")") or ""))
            end
        else
            -- A crash or an error in isle is a finding: report it, do not hide it.
            ctx.log("bench: ", w.id, " FAILED: ", tostring(got))
            rows[#rows + 1] = ctx.row{ id = w.id, name = w.id .. " " .. w.title,
                na = "FAILED: " .. tostring(got):match("^[^\n]*"), error = tostring(got),
                targets = w.targets }
        end
        ctx.log(string.format("  (%.1f s)", dt))
    end
end
local total = lib.now() - started
local busy_end = lib.busy_cores(0.5, nproc)

-- Output ------------------------------------------------------------------------------

local function target_text(r)
    if not r.targets or #r.targets == 0 then return "-" end
    local t = {}
    for i, x in ipairs(r.targets) do t[i] = x.text end
    return table.concat(t, ", ")
end

local header = { "workload", "median", "best", "unit", "floor", "ratio", "target", "result", "note" }
local out = {}
for _, r in ipairs(rows) do
    local floor = "-"
    if r.floor then floor = lib.fmt(r.floor) .. (r.floor_label and (" (" .. r.floor_label .. ")") or "") end
    local note = r.na or r.note or ""
    if r.missed and not r.na then
        note = "missed " .. table.concat(r.missed, ", ") .. (r.note and ("; " .. r.note) or "")
    end
    local value = r.value and lib.fmt(r.value) or (r.na and "n/a" or "-")
    out[#out + 1] = { r.name, value, r.best and lib.fmt(r.best) or "-", r.unit or "", floor,
        r.ratio and (string.format("%.2fx", r.ratio)) or "-", target_text(r), r.status, note }
end

print()
print(string.format("isle benchmarks: %s, %d run(s) per workload (median), %s, %d CPU(s), %.0f s",
    opts.quick and "quick" or "full", opts.reps, jit and jit.version or _VERSION, nproc, total))
if busy_start and busy_end then
    print(string.format("other load: %.2f cores busy before the run, %.2f after%s", busy_start, busy_end,
        (busy_start > 0.3 or busy_end > 0.3) and "  (NOISY: another process was using the CPU)" or ""))
end
print("ratio = times slower than the floor (value/floor for times, floor/value for rates),")
print("        median over the runs of each run against its own floor run; best = fastest run")
print()
print(lib.render(header, out))
print()

local met, missed, na = 0, 0, 0
for _, r in ipairs(rows) do
    if r.status == "met" then met = met + 1
    elseif r.status == "missed" then missed = missed + 1
    elseif r.status == "n/a" then na = na + 1 end
end
print(string.format("targets: %d met, %d missed, %d n/a", met, missed, na))

local load1
do
    local f = io.open("/proc/loadavg")
    if f then load1 = f:read("*l") f:close() end
end
local doc = {
    meta = {
        date = os.date("!%Y-%m-%dT%H:%M:%SZ"),
        luajit = jit and jit.version or _VERSION,
        isle = isle._VERSION,
        nproc = nproc,
        busy_cores_before = busy_start,
        busy_cores_after = busy_end,
        loadavg_at_end = load1,
        quick = opts.quick,
        reps = opts.reps,
        compare = opts.compare,
        seconds = total,
        seconds_per_workload = timings,
        spin_budget_s = isle.now and require("isle.runtime").C.isle_get_spin() or nil,
    },
    results = {},
}
for _, r in ipairs(rows) do
    doc.results[#doc.results + 1] = {
        id = r.id, name = r.name, value = r.value, unit = r.unit, better = r.better,
        floor = r.floor, floor_label = r.floor_label, ratio = r.ratio, ratio_runs = r.ratio_runs,
        best = r.best,
        targets = r.targets, status = r.status, missed = r.missed,
        note = r.note, na = r.na, error = r.error, runs = r.runs, floor_runs = r.floor_runs,
        extra = r.extra,
    }
end
local okw, werr = lib.write_file(opts.json, lib.json(doc) .. "\n")
if okw then
    print("results written to " .. opts.json)
else
    io.stderr:write("bench: cannot write ", opts.json, ": ", tostring(werr), "\n")
end
