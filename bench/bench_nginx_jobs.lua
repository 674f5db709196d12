-- The work of bench/nginx.lua, as a module that ngx.run_worker_thread loads in
-- nginx's thread pool (`ngx.run_worker_thread(pool, "bench_nginx_jobs", "nap",
-- 0.1)`), that the isles of the bench require for `burn` (so both sides run
-- the same loop) and that bench/nginx.lua itself loads to check the results.
-- Found through lua_package_path (the harness' package_path option).
local ffi = require("ffi")

-- Named apart so that it clashes with no other declaration of poll in the VM.
ffi.cdef [[
int bench_nginx_jobs_poll(void *fds, unsigned long n, int ms) __asm__("poll");
struct bench_nginx_jobs_ts { long tv_sec; long tv_nsec; };
int bench_nginx_jobs_clock(int clk, struct bench_nginx_jobs_ts *ts) __asm__("clock_gettime");
]]
local C = ffi.C

local M = {}

-- Blocks the calling thread for `s` seconds (a thread-pool thread: nothing
-- else runs on it meanwhile). Inside an isle the bench uses isle.sleep instead.
function M.nap(s)
    C.bench_nginx_jobs_poll(nil, 0, math.floor(s * 1000 + 0.5))
    return true
end

-- `n` iterations of arithmetic the JIT cannot drop; the result is returned so
-- the caller can check that the work was done.
function M.burn(n)
    local x = 0
    for i = 1, n do x = (x * 31 + i) % 1000003 end
    return x
end

-- The fastest of three runs of burn(n), in seconds (after one to compile it):
-- bench/nginx.lua calibrates the loop with it in nginx's thread pool.
function M.time_burn(n)
    local ts = ffi.new("struct bench_nginx_jobs_ts")
    local function now()
        C.bench_nginx_jobs_clock(1, ts) -- CLOCK_MONOTONIC
        return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
    M.burn(n)
    local best = math.huge
    for _ = 1, 3 do
        local t0 = now()
        M.burn(n)
        best = math.min(best, now() - t0)
    end
    return best
end

return M
