-- The hub's figures (docs/hub.md): how long from a task's end to its host
-- callback, by how the host waits (hub:run, poll(2) on hub:fd() then
-- hub:poll, a luv loop), and what a luv loop keeps while isle work runs
-- (timer tick gaps, the loop thread's CPU). Standalone:
--
--   luajit bench/w_hub.lua [--quick]
--
-- Finds lua/, ffi/ and build/libisle.so relative to itself.
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/ffi/?.lua;" .. ROOT .. "/bench/?.lua;" .. package.path
package.cpath = ROOT .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local isle = require("isle")
local lib = require("lib")

local quick = arg[1] == "--quick"
local SAMPLES = quick and 100 or 400
local ROUNDS = quick and 2 or 5

ffi.cdef [[
struct w_hub_pollfd { int fd; short events; short revents; };
int w_hub_poll(struct w_hub_pollfd *fds, unsigned long n, int ms) __asm__("poll");
struct w_hub_timespec { long tv_sec; long tv_nsec; };
int w_hub_clock_gettime(int clk, struct w_hub_timespec *ts) __asm__("clock_gettime");
]]
local function thread_cpu()
    local ts = ffi.new("struct w_hub_timespec")
    ffi.C.w_hub_clock_gettime(3 --[[CLOCK_THREAD_CPUTIME_ID]], ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function pct(list, p)
    table.sort(list)
    local i = math.max(1, math.min(#list, math.ceil(#list * p)))
    return list[i]
end

local h = isle.spawn{ init = [[
    local isle = require("isle")
    -- Sleeps, then returns the time it ended (the clock is process-wide).
    function stamp(s) isle.sleep(s) return isle.now() end
    function work(s, v) isle.sleep(s) return v end
]] }
local hub = isle.hub()

-- Task end -> host callback, in ms, with the host waiting by `wait()`.
local function latencies(wait)
    local out = {}
    for i = 1, SAMPLES do
        local got
        h:spawn_call("stamp", 0.001 + (i % 3) * 0.0005):on_done(function(_, t_end)
            got = (isle.now() - t_end) * 1000
        end)
        while got == nil do wait() end
        out[#out + 1] = got
    end
    return out
end

local pfd = ffi.new("struct w_hub_pollfd[1]")
local results = {}
local function row(name, list, unit)
    local r = { name, pct(list, 0.5), pct(list, 0.99), list[#list], unit }
    results[#results + 1] = r
    print(("%-58s p50 %8.3f  p99 %8.3f  max %8.3f %s"):format(r[1], r[2], r[3], r[4], unit))
end

print(("hub wake-up latency, task end -> on_done callback (%d samples each)"):format(SAMPLES))
row("hub:run() (blocked in the mailbox)", latencies(function() hub:run(1) end), "ms")
row("poll(2) on hub:fd(), then hub:poll()", latencies(function()
    pfd[0].fd, pfd[0].events = hub:fd(), 1
    ffi.C.w_hub_poll(pfd, 1, 1000)
    hub:poll()
end), "ms")

local have_uv, uv = pcall(require, "luv")
if not have_uv then
    print("luv: not installed (apt-get install lua-luv): luv figures skipped")
    h:close()
    return
end
local luv = require("isle.luv")
luv.attach()
row("luv loop (uv.new_poll on hub:fd())", latencies(function() uv.run("once") end), "ms")

-- 20 tasks of 0.1 s awaited from hub coroutines while a 10 ms timer ticks.
print(("luv: 20 x 0.1 s tasks awaited from coroutines, 10 ms timer (%d rounds)"):format(ROUNDS))
local gaps, batch, loop_cpu, proc_cpu = {}, {}, {}, {}
for _ = 1, ROUNDS do
    local N, done = 20, 0
    local ticks = {}
    local timer = uv.new_timer()
    local t0 = isle.now()
    timer:start(10, 10, function()
        ticks[#ticks + 1] = isle.now()
        if done == N then timer:stop(); timer:close() end
    end)
    local c0, p0 = thread_cpu(), lib.cpu()
    local last = 0
    for i = 1, N do
        hub:go(function()
            h:spawn_call("work", 0.1, i):await()
            done = done + 1
            last = isle.now()
        end)
    end
    uv.run()
    local wall = isle.now() - t0
    loop_cpu[#loop_cpu + 1] = 100 * (thread_cpu() - c0) / wall
    proc_cpu[#proc_cpu + 1] = 100 * (lib.cpu() - p0) / wall
    batch[#batch + 1] = (last - t0) * 1000
    local prev = t0
    for _, t in ipairs(ticks) do gaps[#gaps + 1] = (t - prev) * 1000; prev = t end
end
row("luv: tick gap", gaps, "ms")
row("luv: batch of 20 x 0.1 s, start to last await", batch, "ms")
row("luv: loop thread CPU while waiting", loop_cpu, "% of a core")
row("luv: process CPU (isle threads included)", proc_cpu, "% of a core")
luv.detach()
h:close()
