-- --compare: the same traffic through other threading libraries for LuaJIT,
-- when this process can require them, each run interleaved with isle's own
-- figure so the ratio holds (ratio = times slower than isle).
--
--   luv (Debian: lua-luv)   W1 through its thread pool: uv.new_work +
--                           uv.queue_work, one item in flight at a time; the
--                           reply arrives as the after-work callback in the
--                           caller's loop. W6: uv.new_thread (a thread with
--                           a state of its own) answering one ping through an
--                           async handle, then joined. W2 not implemented: luv has no
--                           one-way channel into one persistent thread state
--                           (a thread's async handle cannot be handed back to
--                           the caller), only pipes/sockets.
--   lanes (3.x)             W1: a lane serving a linda ("in" -> "out"), one
--                           value in flight; W6: lanes.gen + one call whose
--                           result is read (a lane per call).
--   llthreads2              W6: llthreads2.new(chunk, i), start, join (the
--                           reply is the thread's result). W1 needs mtmsg.
--   effil                   detected only.
-- None of these is packaged for Debian: built from their sources (not
-- committed) and put on LUA_PATH/LUA_CPATH, they run here (bench/README.md).
local lib = require("lib")
local now = lib.now

-- isle's own side of the W1 rows: W1 itself (w_msg.lua).
local w_msg = require("w_msg")
local serve, isle_w1 = w_msg.serve, w_msg.w1_isle

local function luv_w1(uv, n)
    local i, t0, result, bad = 0, nil, nil, nil
    local work
    work = uv.new_work(function(v) return v + 1 end, function(r)
        if r ~= i + 1 then bad = "wrong reply " .. tostring(r) .. " to " .. i return end
        if i == n then result = (now() - t0) * 1e6 / n return end
        i = i + 1
        uv.queue_work(work, i)
    end)
    -- Warm the pool's states (each pool thread loads the function once).
    local w = 0
    local warm
    warm = uv.new_work(function(v) return v end, function()
        w = w + 1
        if w < 100 then uv.queue_work(warm, w) end
    end)
    uv.queue_work(warm, 0)
    uv.run()
    t0 = now()
    i = 1
    uv.queue_work(work, i)
    uv.run()
    if bad then return nil, "luv: " .. bad end
    return result
end

-- W6 through luv: a thread with its own state, one ping (the reply comes
-- back through an async handle into the caller's loop), joined; ms each.
local function luv_w6(uv, count)
    local t0 = now()
    for i = 1, count do
        local got
        local async = uv.new_async(function(r) got = r end)
        local th = uv.new_thread(function(a, v) a:send(v + 1) end, async, i)
        th:join()
        while got == nil do uv.run("once") end
        if got ~= i + 1 then return nil, "luv: wrong reply " .. tostring(got) .. " to " .. i end
        async:close()
    end
    uv.run()
    return (now() - t0) * 1e3 / count
end

-- isle's own side of the W6 rows: W6's spawn+ping+close and its memory
-- child (w_life.lua).
local w_life = require("w_life")
local isle_w6, isle_mem = w_life.spawn_cycle, w_life.mem_run

local function lanes_w1(lanes, n)
    local linda = lanes.linda()
    local lane = lanes.gen("*", function(l)
        while true do
            local _, v = l:receive("in")
            if v == false then return end
            l:send("out", v + 1)
        end
    end)(linda)
    for i = 1, 1000 do linda:send("in", i); linda:receive("out") end
    local t0 = now()
    for i = 1, n do
        linda:send("in", i)
        local _, v = linda:receive("out")
        if v ~= i + 1 then return nil, "lanes: wrong reply " .. tostring(v) end
    end
    local us = (now() - t0) * 1e6 / n
    linda:send("in", false)
    lane:join()
    return us
end

local function lanes_w6(lanes, count)
    local gen = lanes.gen("*", function(i) return i + 1 end)
    local t0 = now()
    for i = 1, count do
        local v = gen(i)[1]
        if v ~= i + 1 then return nil, "lanes: wrong reply " .. tostring(v) end
    end
    return (now() - t0) * 1e3 / count
end

local function llthreads2_w6(llt, count)
    local t0 = now()
    for i = 1, count do
        local t = llt.new("return (...) + 1", i)
        t:start()
        local ok, v = t:join()
        if not ok or v ~= i + 1 then return nil, "llthreads2: wrong reply " .. tostring(v) end
    end
    return (now() - t0) * 1e3 / count
end

-- One --compare row: `other` against isle's own figure in the same run.
local function vs(ctx, name, unit, floor_label, other, mine, note)
    local s = ctx.series({ { "other", other }, { "isle", mine } })
    return ctx.row{ id = "CMP", name = name, value = s.other.median, unit = unit, floor = s.isle.median,
        floor_label = floor_label, runs = s.other.runs, floor_runs = s.isle.runs, na = s.other.err,
        note = note .. "; ratio = times slower than isle" }
end

local LIBS = { "luv", "lanes", "effil", "llthreads2" }

local function run_cmp(ctx)
    local rows = {}
    local n = ctx.n(100000, 10000)
    for _, name in ipairs(LIBS) do
        local ok, mod = pcall(require, name)
        if not ok then
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP " .. name, na = "not importable" }
        elseif name == "luv" then
            local h = ctx.isle.spawn{ init = serve }
            local s = ctx.series({
                { "other", function() return luv_w1(mod, n) end },
                { "isle", function() return isle_w1(h, n) end },
            })
            h:close()
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP luv W1 ping (work queue)",
                value = s.other.median, unit = "us/rt", floor = s.isle.median, floor_label = "isle W1",
                runs = s.other.runs, floor_runs = s.isle.runs, na = s.other.err,
                note = "luv " .. tostring(mod.version_string and mod.version_string() or "?")
                    .. "; ratio = times slower than isle" }
            local count = ctx.n(300, 50)
            local s6 = ctx.series({
                { "other", function() return luv_w6(mod, count) end },
                { "isle", function() return isle_w6(ctx.isle, count) end },
            })
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP luv W6 thread+ping+join",
                value = s6.other.median, unit = "ms/thread", floor = s6.isle.median, floor_label = "isle W6",
                runs = s6.other.runs, floor_runs = s6.isle.runs, na = s6.other.err,
                note = "uv.new_thread, a ping back through uv_async; ratio = times slower than isle" }
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP luv W2 stream",
                na = "not implemented (no one-way channel into one luv thread state)" }
        elseif name == "lanes" then
            local lanes = mod.configure and mod.configure() or mod
            local h = ctx.isle.spawn{ init = serve }
            local count = ctx.n(300, 50)
            rows[#rows + 1] = vs(ctx, "CMP lanes W1 ping (linda)", "us/rt", "isle W1",
                function() return lanes_w1(lanes, n) end, function() return isle_w1(h, n) end, "a lane serving a linda")
            rows[#rows + 1] = vs(ctx, "CMP lanes W6 lane+call", "ms/lane", "isle W6",
                function() return lanes_w6(lanes, count) end, function() return isle_w6(ctx.isle, count) end,
                "lanes.gen, one call, its result read")
            h:close()
        elseif name == "llthreads2" then
            local count = ctx.n(300, 50)
            rows[#rows + 1] = vs(ctx, "CMP llthreads2 W6 thread+join", "ms/thread", "isle W6",
                function() return llthreads2_w6(mod, count) end, function() return isle_w6(ctx.isle, count) end,
                "new, start, join with the reply as its result")
        else
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP " .. name,
                na = "importable, but not implemented in this bench" }
        end
    end
    return rows
end

-- Resident memory per idle worker, in a fresh process (`run.lua --child
-- w_compare mem PEER N`): N workers of the peer started and parked, the
-- process's RSS growth divided by N. Each parks as its library would: a
-- lane in a linda receive; an llthreads2 or luv thread (no channel of their
-- own here) in poll(2) through the FFI, for 2 s, which loads the FFI in its
-- state (a little more than a bare state holds).
local PARK = "local ffi = require('ffi') ffi.cdef('int poll(void *, unsigned long, int);') ffi.C.poll(nil, 0, 2000)"

local function child(what, peer, count)
    if what ~= "mem" then error("w_compare: unknown child " .. tostring(what)) end
    count = tonumber(count) or 200
    local mod = require(peer)
    lib.gc()
    local before = lib.rss_kib()
    local after, finish
    if peer == "lanes" then
        local lanes = mod.configure and mod.configure() or mod
        local linda = lanes.linda()
        local gen = lanes.gen("*", function(l) l:receive("quit") end)
        local ls = {}
        for i = 1, count do ls[i] = gen(linda) end
        for i = 1, count do while ls[i].status == "pending" do lanes.sleep(0.001) end end
        lanes.sleep(0.2)
        after = lib.rss_kib()
        finish = function()
            for _ = 1, count do linda:send("quit", true) end
            for i = 1, count do ls[i]:join() end
        end
    elseif peer == "llthreads2" then
        local ts = {}
        for i = 1, count do ts[i] = mod.new(PARK); ts[i]:start() end
        local uv = pcall(require, "luv") and require("luv")
        if uv then uv.sleep(500) else os.execute("sleep 0.5") end
        after = lib.rss_kib()
        finish = function() for i = 1, count do ts[i]:join() end end
    elseif peer == "luv" then
        local ts = {}
        for i = 1, count do ts[i] = mod.new_thread(loadstring(PARK)) end
        mod.sleep(500)
        after = lib.rss_kib()
        finish = function() for i = 1, count do ts[i]:join() end end
    else
        error("w_compare: no memory child for " .. tostring(peer))
    end
    finish()
    io.write(string.format("%.3f KiB/worker before=%d after=%d\n", (after - before) / count, before, after))
end

local function peer_mem(ctx, peer, count)
    local cmd = string.format("%s %s/run.lua --child w_compare mem %s %d", ctx.luajit, ctx.script_dir, peer, count)
    local out = lib.capture(cmd)
    local v = tonumber(out:match("^([%d%.]+) KiB/worker"))
    if not v then return nil, peer .. " memory child failed: " .. out:sub(1, 200) end
    return v
end

local function run_mem(ctx)
    local rows = {}
    for _, peer in ipairs({ "lanes", "llthreads2", "luv" }) do
        if pcall(require, peer) then
            rows[#rows + 1] = vs(ctx, "CMP " .. peer .. " memory per idle worker", "KiB", "isle W6 memory",
                function() return peer_mem(ctx, peer, 200) end, function() return isle_mem(ctx, 200) end,
                "200 parked, RSS growth / 200")
        end
    end
    return rows
end

return {
    { id = "CMP", title = "other LuaJIT threading libraries (--compare)", run = run_cmp },
    { id = "CMP", title = "memory per idle worker, other libraries (--compare)", run = run_mem },
    child = child,
}
