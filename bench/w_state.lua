-- Shared-state workloads (W9): the latency of s:call on a shared state
-- (lua-mtstates' model: the callback runs on the calling thread under the
-- state's lock), against an isle round trip (h:call, two thread hops) and
-- against the C floor (bench/c/state_floor.c: a mutex lock/unlock around
-- lua_pcall of the same function in a plain lua_State, no isle code).
-- With --compare, lua-mtstates' own call where `require("mtstates")` works.
local lib = require("lib")
local now = lib.now

local INC = "return function(i) return i + 1 end"

local function state_calls(s, n)
    for i = 1, 1000 do s:call(i) end -- warm up (both JITs)
    local t0 = now()
    for i = 1, n do
        local r = s:call(i)
        if r ~= i + 1 then error("W9: wrong reply " .. tostring(r) .. " to " .. i) end
    end
    return (now() - t0) * 1e6 / n
end

local function isle_calls(h, n)
    for i = 1, 1000 do h:call("inc", i) end
    local t0 = now()
    for i = 1, n do
        if h:call("inc", i) ~= i + 1 then error("W9: wrong isle reply") end
    end
    return (now() - t0) * 1e6 / n
end

-- The same loop run by a job inside an isle (the job's path: a try, then a
-- spin, then awaiting on the isle's loop when busy), timed there.
local JOB = [[
    local isle = require("isle")
    local s, n = isle.state_ref((...)), select(2, ...)
    for i = 1, 1000 do s:call(i) end
    local t0 = isle.now()
    for i = 1, n do if s:call(i) ~= i + 1 then error("W9: wrong reply in the isle") end end
    return (isle.now() - t0) * 1e6 / n
]]

-- Two threads calling one state at once: a job of an isle calls it until
-- the host, which times its own n calls meanwhile, says stop. µs per call
-- on the host side, and the isle's calls per host call.
local RIVAL = [[
    local isle, ffi = require("isle"), require("ffi")
    local s, m = isle.state_ref((...)), ffi.cast("int32_t *", select(2, ...))
    local calls = 0
    m[1] = 1
    while m[0] == 0 do s:call(calls) calls = calls + 1 end
    return calls
]]
local function contended(s, h, n)
    local mem = require("ffi").new("int32_t[2]")
    local t = h:spawn_eval(RIVAL, s:id(), tonumber(require("ffi").cast("uintptr_t", mem)))
    while mem[1] == 0 do lib.sleep(0.001) end
    local host = state_calls(s, n)
    mem[0] = 1
    local ok, rival = t:wait()
    if not ok then error(rival) end
    return host, rival / n
end

-- The C floor binary (make bench-floor builds it); nil, why if missing.
local floor_state
local function state_floor(ctx, n)
    local bin = ctx.root .. "/build/bench_state_floor"
    if floor_state == nil then
        if not lib.file_exists(bin) then
            ctx.log("bench: building the C floor (make bench-floor)")
            lib.capture("make -s -C " .. ctx.root .. " bench-floor")
        end
        floor_state = lib.file_exists(bin) or "C floor not built (make bench-floor)"
    end
    if floor_state ~= true then return nil, floor_state end
    local out = lib.capture(bin .. " " .. n)
    local v = tonumber(out:match("^([%d%.eE+-]+)%s"))
    if not v then return nil, "C floor failed: " .. out end
    return v
end

local function run_w9(ctx)
    local isle = ctx.isle
    local n = ctx.n(1000000, 100000)
    local s = isle.state(INC)
    local h = isle.spawn{ init = "function inc(i) return i + 1 end" }
    local worker = isle.spawn{}
    local res = ctx.series({
        { "state", function() return state_calls(s, n) end },
        { "floor", function() return state_floor(ctx, n) end },
        { "isle", function() return isle_calls(h, n / 10) end },
        { "job", function() return worker:eval(JOB, s:id(), n) end },
    })
    local share = {}
    local cres = ctx.series({
        { "host", function()
            local host, rival = contended(s, worker, n / 10)
            share[#share + 1] = rival
            return host
        end },
    }, { reps = 3 })
    h:close()
    worker:close()
    s:close()
    return {
        ctx.row{ id = "W9", name = "W9 shared-state call s:call(i)", value = res.state.median, unit = "us/call",
            floor = res.floor.median, floor_label = "C", runs = res.state.runs, floor_runs = res.floor.runs,
            note = res.floor.err or "floor: mutex + lua_pcall in a plain lua_State", extra = { n = n },
            targets = { { op = "<=", value = 0.3, text = "<= 0.3 us" } } },
        ctx.row{ id = "W9", name = "W9 shared-state call vs isle round trip", value = res.state.median,
            unit = "us/call", floor = res.isle.median, floor_label = "isle W1", runs = res.state.runs,
            floor_runs = res.isle.runs, note = "ratio < 1: the state call is that much faster than h:call" },
        ctx.row{ id = "W9", name = "W9 shared-state call from an isle's job", value = res.job.median,
            unit = "us/call", floor = res.floor.median, floor_label = "C", runs = res.job.runs,
            floor_runs = res.floor.runs, note = "the job's path (try, spin, await) uncontended" },
        ctx.row{ id = "W9", name = "W9 one state, host and an isle calling at once", value = cres.host.median,
            unit = "us/call", runs = cres.host.runs, extra = { isle_calls_per_host_call = share },
            note = string.format("host side, while an isle's job calls the same state (%.2f of its calls "
                .. "per host call)", lib.median(share) or 0) },
        ctx.row{ id = "W9", name = "W9 floor: C mutex + lua_pcall", value = res.floor.median, unit = "us/call",
            runs = res.floor.runs, na = res.floor.err, note = "plain lua_State, no isle code" },
    }
end

-- --compare: lua-mtstates where `require("mtstates")` works. It is not
-- packaged for Debian: built from its source against Debian's libluajit
-- (gcc -O2 -shared src/*.c -lluajit-5.1) and put on LUA_CPATH, it ran here
-- on 2026-11-30 (bench/README.md, W9).
local function run_cmp(ctx)
    local ok, mtstates = pcall(require, "mtstates")
    if not ok then
        return { ctx.row{ id = "CMP", name = "CMP mtstates state call", na = "not importable" } }
    end
    local isle = ctx.isle
    local n = ctx.n(1000000, 100000)
    local ms = mtstates.newstate(INC)
    local s = isle.state(INC)
    local res = ctx.series({
        { "other", function() return state_calls(ms, n) end },
        { "isle", function() return state_calls(s, n) end },
    })
    s:close()
    return {
        ctx.row{ id = "CMP", name = "CMP mtstates state call", value = res.other.median, unit = "us/call",
            floor = res.isle.median, floor_label = "isle W9", runs = res.other.runs, floor_runs = res.isle.runs,
            note = "ratio = times slower than isle's shared state" },
    }
end

local workloads = {
    { id = "W9", title = "shared-state call (mtstates model)", run = run_w9 },
}
workloads.compare = { id = "CMP", title = "mtstates (--compare)", run = run_cmp }
return workloads
