-- Timer lateness inside an isle (issue 8): 1,000 isle.timer.at timers with
-- deadlines spread over half a second, each callback noting how late it ran
-- (isle.now() - its deadline), while the isle also serves calls. Reports the
-- p50, p99 and max lateness per round and their medians. Standalone:
--
--   luajit bench/w_timers.lua [--quick]
--
-- Finds lua/, ffi/ and build/libisle.so relative to itself.
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/ffi/?.lua;" .. package.path
package.cpath = ROOT .. "/build/?.so;" .. package.cpath

local isle = require("isle")

local quick = arg[1] == "--quick"
local ROUNDS = quick and 2 or 5
local N = 1000

local h = isle.spawn{ init = [[
    local isle = require("isle")
    function round(n, span, seed)
        math.randomseed(seed)
        local late, left = {}, n
        local start = isle.now()
        for i = 1, n do
            local at = start + math.random() * span
            isle.timer.at(math.max(0, at - isle.now()), function()
                late[#late + 1] = isle.now() - at
                left = left - 1
            end)
        end
        while left > 0 do isle.sleep(0.01) end
        table.sort(late)
        return late[math.floor(n * 0.5)], late[math.floor(n * 0.99)], late[n]
    end
    function ping(x) return x end
]] }

local function median(t)
    table.sort(t)
    return t[math.floor((#t + 1) / 2)]
end

local p50s, p99s, maxs = {}, {}, {}
for r = 1, ROUNDS do
    local t = h:spawn_call("round", N, 0.5, r)
    -- calls served meanwhile
    local calls = 0
    while not t:done() do
        h:call("ping", calls)
        calls = calls + 1
    end
    local ok, p50, p99, max = t:wait()
    if not ok then error(tostring(p50), 0) end
    p50s[r], p99s[r], maxs[r] = p50 * 1e3, p99 * 1e3, max * 1e3
    io.write(string.format("round %d: %d timers, lateness p50 %.3f ms, p99 %.3f ms, max %.3f ms; %d calls served meanwhile\n",
        r, N, p50s[r], p99s[r], maxs[r], calls))
end
io.write(string.format("timer lateness (median of %d rounds): p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
    ROUNDS, median(p50s), median(p99s), median(maxs)))
h:close()
