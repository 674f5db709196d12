-- isle demo: `make demo`. Shows parallel work with its measured speed-up, an
-- error with the isle-side traceback, isles calling isles, and a runaway
-- JIT-compiled loop stopped without turning the JIT off.
local isle = require("isle")

local function section(title) print(("\n== %s "):format(title) .. ("="):rep(60 - #title)) end

-- A CPU-bound kernel: count the primes below n by trial division.
local KERNEL = [[
    function count_primes(lo, hi)
        local count = 0
        for n = lo, hi - 1 do
            if n >= 2 then
                local prime = true
                local d = 2
                while d * d <= n do
                    if n % d == 0 then prime = false break end
                    d = d + 1
                end
                if prime then count = count + 1 end
            end
        end
        return count
    end
]]

section("parallel work")
local N, PARTS = 4000000, 8
local workers = {}
local ncpu = tonumber(io.popen("nproc"):read("*l")) or 2
for i = 1, ncpu do workers[i] = isle.spawn{ name = "primes-" .. i, init = KERNEL } end

-- Sequential: the whole range in one isle (the same code, loaded the same way).
local host = isle.spawn{ name = "sequential", init = KERNEL }
local t0 = isle.now()
local seq = host:call("count_primes", 0, N)
local t_seq = isle.now() - t0

t0 = isle.now()
local tasks, step = {}, N / PARTS
for p = 1, PARTS do
    local w = workers[(p - 1) % #workers + 1]
    tasks[p] = w:spawn_call("count_primes", (p - 1) * step, p * step)
end
local par = 0
for p = 1, PARTS do
    local ok, n = tasks[p]:wait()
    assert(ok, n)
    par = par + n
end
local t_par = isle.now() - t0
assert(par == seq, "parallel and sequential results differ")
print(("primes below %d: %d"):format(N, par))
print(("one isle: %.3f s   %d isles: %.3f s   speed-up: %.2fx on %d cores")
    :format(t_seq, #workers, t_par, t_seq / t_par, ncpu))

section("an error, with the isle-side traceback")
local h = isle.spawn{ name = "buggy", init = [[
    local function parse(s) return s:match("^(%d+)$") or error("not a number: " .. s) end
    function total(list)
        local sum = 0
        for _, s in ipairs(list) do sum = sum + parse(s) end
        return sum
    end
]] }
local ok, err = pcall(h.call, h, "total", { "1", "2", "three" })
print("pcall ->", ok)
print("err.code ->", err.code)
print(tostring(err))

section("isles calling isles")
local db = isle.spawn{ name = "db", init = [[
    local rows = { alice = 31, bob = 27 }
    function age(name) return rows[name] end
]] }
local api = isle.spawn{ name = "api", init = [[
    function describe(name)
        local isle = require("isle")
        local age = isle.lookup("db"):call("age", name)
        return ("%s is %d (answered by isle %d via isle %d)"):format(name, age, isle.id(), isle.lookup("db"):id())
    end
]] }
print(api:call("describe", "alice"))
print(api:call("describe", "bob"))

section("stopping a runaway JIT-compiled loop")
local runaway = isle.spawn{ name = "runaway" }
local t = runaway:spawn_eval("local x = 0 while true do x = x + 1 end")
isle.sleep(0.2) -- long enough for LuaJIT to compile the loop into a trace
local c0 = isle.now()
t:cancel()
local ok2, e2 = t:wait()
print(("cancelled: %s (%s) in %.3f ms, JIT still on: %s"):format(tostring(not ok2), e2.code,
    (isle.now() - c0) * 1e3, tostring(runaway:eval("return jit.status()"))))
local slow = runaway:with{ timeout = 0.1 }:spawn_eval("while true do end")
local _, e3 = slow:wait()
print("with a 0.1 s timeout:", e3.code)
print("the isle still serves:", runaway:eval("return 'yes'"))

for _, w in ipairs(workers) do w:close() end
for _, x in ipairs({ host, h, db, api, runaway }) do x:close() end
print("\nall isles closed; live isles:", isle.live_count())
