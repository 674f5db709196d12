-- Cancellation and checkpoint workloads: W4 and W5 (cancel latency of a
-- running loop, JIT off and on), W8 (cost of isle.instrument checkpoints).
--
-- These need APIs that are still being built. Each probes for what it needs
-- and reports "n/a (API missing)" without it; when the API is there but a
-- running loop is not interrupted, it reports that as a miss, once, rather
-- than waiting forever: the loop is bounded (about BOUND seconds of work).
--
-- To adapt when the API settles, change only CANCEL below: how the loop is
-- shipped (SPIN, sent with spawn_eval so the isle sees source text it can
-- instrument) and how the JIT is set up for each variant.
local lib = require("lib")
local now = lib.now

local BOUND = 1.0  -- seconds of work the spinning loop is sized for

local CANCEL = {
    -- `while true do x = x + 1 end`, bounded so a cancel that is not
    -- delivered cannot leave a thread spinning for ever. Sent as source with
    -- spawn_eval, so an isle that instruments eval code (the default) puts
    -- a checkpoint in the loop.
    SPIN = "local limit = ... local x = 0 while x < limit do x = x + 1 end return x",
    -- Variants: spawn options, JIT setup inside the isle, row label.
    W4 = { jit = "jit.off()", spawn = {}, label = "JIT off" },
    W4H = { jit = "jit.off()", spawn = { instrument = false },
            label = "JIT off, instrument=false (hook only)" },
    W5 = { jit = "jit.on()", spawn = {}, label = "JIT on, loop compiled" },
}

local function cancel_api()
    local isle = require("isle")
    local Task = isle.Task
    if not (Task and type(Task.cancel) == "function") then return nil, "isle.Task.cancel" end
    return true
end

-- One variant: returns list of latencies (ms), or nil, why, missed?
local function cancel_latencies(ctx, variant)
    local isle = ctx.isle
    local spawned, h = pcall(isle.spawn, variant.spawn)
    if not spawned then return nil, "spawn with these options failed: " .. tostring(h) end
    h:eval(variant.jit)
    -- Size the loop: ~BOUND seconds at this isle's speed. This also runs the
    -- exact chunk once, so with the JIT on its loop is compiled already.
    local probe = 2e6
    h:eval(CANCEL.SPIN, probe)
    local t0 = now()
    h:eval(CANCEL.SPIN, probe)
    local rate = probe / (now() - t0)
    local limit = math.floor(rate * BOUND)
    local lat = {}
    local why
    for _ = 1, ctx.n(ctx.reps + 2, ctx.reps) do
        local t = h:spawn_eval(CANCEL.SPIN, limit)
        local deadline = now() + 2
        while t:status() == "queued" and now() < deadline do isle.sleep(0.001) end
        isle.sleep(0.02)  -- well inside the loop (and in its trace, JIT on)
        local c0 = now()
        t:cancel()
        local ok, err = t:wait(BOUND * 5 + 2)
        local dt = now() - c0
        if ok then
            why = string.format("not interrupted: the loop ran to its end (%.2f s after cancel())", dt)
            break
        elseif isle.is_error(err) and err.code == "cancelled" then
            lat[#lat + 1] = dt * 1e3
        elseif isle.is_error(err) and err.code == "timeout" then
            why = "not interrupted: no result " .. (BOUND * 5 + 2) .. " s after cancel()"
            -- The thread is still spinning: do not join it.
            return nil, why
        else
            why = "cancel ended the task with: " .. tostring(err)
            break
        end
    end
    h:close()
    if #lat == 0 then return nil, why end
    return lat, why, rate
end

local function run_cancel(ctx, id, key)
    local variant = CANCEL[key or id]
    local target = { { op = "<=", value = 1, text = "<= 1 ms" } }
    local name = id .. " cancel, " .. variant.label
    local ok, missing = cancel_api()
    if not ok then
        return { ctx.row{ id = id, name = name, unit = "ms", targets = target,
            na = "n/a (API missing: " .. missing .. ")" } }
    end
    local lat, why, rate = cancel_latencies(ctx, variant)
    if not lat then
        return { ctx.row{ id = id, name = name, unit = "ms", targets = target,
            na = why, force_status = "missed" } }
    end
    return { ctx.row{ id = id, name = name, value = lib.median(lat), unit = "ms", runs = lat,
        targets = target, extra = { bound_s = BOUND, loop_iters_per_s = rate },
        note = why or string.format("loop at %.0f M iter/s", rate / 1e6) } }
end

-- W8 -----------------------------------------------------------------------------

-- CPU-bound kernels, each a chunk taking its size as `...`. `bound`: the
-- target on instrumented/plain (loops <= 1.05x, recursion <= 1.3x).
-- `jit_off`: also run with the JIT off for both versions (informative: an
-- interpreted checkpoint costs far more than a compiled one).
local KERNELS = {
    { name = "numeric loop", bound = 1.05, n = { 5e7, 1e7 },
      src = "local n = ... local s = 0 for i = 1, n do s = s + i % 7 end return s" },
    { name = "numeric loop, JIT off", jit_off = true, n = { 5e6, 1e6 },
      src = "local n = ... local s = 0 for i = 1, n do s = s + i % 7 end return s" },
    -- copies: fib's trace tree depends on where the prototype lands in
    -- memory (LuaJIT's hot counters are hashed by bytecode address), so one
    -- copy measures one draw (1.3x to 1.8x for the same code, process to
    -- process); each run times 8 fresh copies of each version instead.
    { name = "recursion (fib)", bound = 1.3, n = { 29, 25 }, copies = 8,
      src = "local n = ... local function fib(k) if k < 2 then return k end "
         .. "return fib(k - 1) + fib(k - 2) end return fib(n)" },
    { name = "table churn", bound = 1.05, n = { 1e7, 2e6 },
      src = "local n = ... local s = 0 for i = 1, n do local t = { i, i + 1, k = i } "
         .. "s = s + t[1] + t.k + #t end return s" },
}

local function instrumenter()
    local ok, I = pcall(require, "isle.instrument")
    if not ok or type(I) ~= "table" or type(I.load) ~= "function" then return nil end
    return I
end

local function run_w8(ctx)
    local I = instrumenter()
    local rows = {}
    local ffi = require("ffi")
    for _, k in ipairs(KERNELS) do
        local name = "W8 checkpoints: " .. k.name
        local target = k.bound and { { op = "<=", value = k.bound, text = string.format("<= %.2fx", k.bound) } } or nil
        if not I then
            rows[#rows + 1] = ctx.row{ id = "W8", name = name, unit = "x", targets = target,
                na = "n/a (API missing: isle.instrument.load)" }
        else
            local n = ctx.quick and k.n[2] or k.n[1]
            local plain = assert(loadstring(k.src, "=w8 " .. k.name))
            -- An instrumented chunk is a factory: fac(F, S, C) returns the chunk.
            local fac, err = I.load(k.src, "=w8 " .. k.name)
            local F, S = ffi.new("int32_t[1]"), ffi.new("int32_t[1]")
            local calls = 0
            local function cb() calls = calls + 1 end
            local inst = fac and fac(F, S, cb)
            if k.copies and inst then
                local ps, is = {}, {}
                for i = 1, k.copies do
                    ps[i] = assert(loadstring(k.src, "=w8 " .. k.name))
                    is[i] = assert(I.load(k.src, "=w8 " .. k.name))(F, S, cb)
                end
                local function all(fs)
                    return function(m) local r = 0 for i = 1, #fs do r = r + fs[i](m) end return r end
                end
                plain, inst = all(ps), all(is)
            end
            if k.jit_off then
                jit.off(plain, true)
                if inst then jit.off(inst, true) end
            end
            if not inst then
                rows[#rows + 1] = ctx.row{ id = "W8", name = name, unit = "x", targets = target,
                    na = "instrument.load failed: " .. tostring(err), force_status = "missed" }
            else
                local expect = plain(n)
                local got = inst(n)
                if got ~= expect then error("W8 " .. k.name .. ": instrumented result differs") end
                local tp, ti = {}, {}
                local s = ctx.series({
                    { "plain", function()
                        local t0 = now(); plain(n); local d = now() - t0
                        tp[#tp + 1] = d
                        return d
                    end },
                    { "inst", function()
                        local t0 = now(); inst(n); local d = now() - t0
                        ti[#ti + 1] = d
                        return d
                    end },
                }, { reps = ctx.n(7, 3) })
                local ratios = {}
                for i = 1, math.min(#tp, #ti) do ratios[i] = ti[i] / tp[i] end
                rows[#rows + 1] = ctx.row{ id = "W8", name = name, value = lib.median(ratios), unit = "x",
                    runs = ratios, targets = target,
                    note = string.format("plain %.1f ms, instrumented %.1f ms (JIT %s)",
                        s.plain.median * 1e3, s.inst.median * 1e3, k.jit_off and "off" or "on"),
                    extra = { n = n, plain_s = s.plain.runs, instrumented_s = s.inst.runs,
                              callbacks = calls } }
            end
        end
    end
    return rows
end

return {
    { id = "W4", title = "cancel latency, JIT off", run = function(ctx)
        local rows = run_cancel(ctx, "W4")
        rows[#rows + 1] = run_cancel(ctx, "W4", "W4H")[1]
        return rows
    end },
    { id = "W5", title = "cancel latency, JIT on", run = function(ctx) return run_cancel(ctx, "W5") end },
    { id = "W8", title = "checkpoint overhead (instrumented vs plain)", run = run_w8 },
}
