-- Channel throughput (issue 9, "Channels"): integers through one
-- isle.channel, one producer and one consumer, against the C floor
-- (bench/c/chan_floor.c: a mutex + condvar ring of longs between two
-- threads, no isle code), runs interleaved, medians reported. Target:
-- >= 5 M values/s host -> isle. Standalone:
--
--   luajit bench/w_chan.lua [--quick]
--
-- Finds lua/, ffi/ and build/ relative to itself; builds the floor with
-- `make build/bench_chan_floor` if it is missing.
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = ROOT .. "/bench/?.lua;" .. ROOT .. "/lua/?.lua;" .. ROOT .. "/ffi/?.lua;" .. package.path
package.cpath = ROOT .. "/build/?.so;" .. package.cpath

local isle = require("isle")

local quick = arg[1] == "--quick"
local REPS = quick and 3 or 7
local N = quick and 500000 or 2000000
local CAP = 1024

local median = require("lib").median

local CONSUME = function(c, n)
    local s = 0
    for _ = 1, n do s = s + c:pop() end
    return s
end
local PRODUCE = function(c, n)
    for i = 1, n do c:push(i) end
    return true
end

local consumer, producer = isle.spawn(), isle.spawn()

-- Host pushes, an isle's job pops.
local function host_to_isle(n)
    local ch = isle.channel(CAP)
    local t = consumer:spawn_exec(CONSUME, ch, n)
    local t0 = isle.now()
    for i = 1, n do ch:push(i) end
    local ok, s = t:wait()
    local dt = isle.now() - t0
    assert(ok and s == n * (n + 1) / 2, "host->isle: wrong sum " .. tostring(s))
    return n / dt / 1e6
end

-- One isle's job pushes, another's pops.
local function isle_to_isle(n)
    local ch = isle.channel(CAP)
    local t0 = isle.now()
    local c = consumer:spawn_exec(CONSUME, ch, n)
    local p = producer:spawn_exec(PRODUCE, ch, n)
    assert(p:wait())
    local ok, s = c:wait()
    local dt = isle.now() - t0
    assert(ok and s == n * (n + 1) / 2, "isle->isle: wrong sum " .. tostring(s))
    return n / dt / 1e6
end

local FLOOR = ROOT .. "/build/bench_chan_floor"
local function floor(n)
    local f = io.open(FLOOR)
    if not f then
        os.execute("make -s -C " .. ROOT .. " build/bench_chan_floor")
    else
        f:close()
    end
    local p = io.popen(FLOOR .. " " .. n .. " " .. CAP)
    local out = p:read("*a")
    p:close()
    return assert(tonumber(out:match("^([%d%.]+)")), "C floor failed: " .. out)
end

host_to_isle(N / 10) -- warm up (both JITs)
isle_to_isle(N / 10)
local r = { host = {}, isles = {}, floor = {} }
for _ = 1, REPS do
    r.floor[#r.floor + 1] = floor(N)
    r.host[#r.host + 1] = host_to_isle(N)
    r.isles[#r.isles + 1] = isle_to_isle(N)
end
consumer:close()
producer:close()

local fl = median(r.floor)
print(("channel throughput, %d integers per run, capacity %d, median of %d runs"):format(N, CAP, REPS))
print(("  C floor (mutex + condvar ring)  %6.2f M values/s"):format(fl))
for _, row in ipairs({ { "host -> isle", r.host }, { "isle -> isle", r.isles } }) do
    local m = median(row[2])
    print(("  %-31s %6.2f M values/s  = %.2f x floor%s"):format(row[1], m, m / fl,
        row[1] == "host -> isle" and (m >= 5 and "  (target >= 5: met)" or "  (target >= 5: NOT met)") or ""))
end
