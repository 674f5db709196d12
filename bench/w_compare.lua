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
--   lanes, effil, llthreads2  only detected; not implemented here (none is
--                           packaged for this machine, so no code of theirs
--                           could be tried).
local lib = require("lib")
local now = lib.now

local function serve()
    function inc(i) return i + 1 end
end

local function isle_w1(h, n)
    for i = 1, 1000 do h:call("inc", i) end
    local t0 = now()
    for i = 1, n do
        if h:call("inc", i) ~= i + 1 then error("CMP: wrong isle reply") end
    end
    return (now() - t0) * 1e6 / n
end

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

local function isle_w6(isle, count)
    local t0 = now()
    for i = 1, count do
        local h = isle.spawn{ init = serve }
        if h:call("inc", i) ~= i + 1 then error("CMP: wrong isle reply") end
        h:close()
    end
    return (now() - t0) * 1e3 / count
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
        else
            rows[#rows + 1] = ctx.row{ id = "CMP", name = "CMP " .. name,
                na = "importable, but not implemented in this bench" }
        end
    end
    return rows
end

return {
    { id = "CMP", title = "other LuaJIT threading libraries (--compare)", run = run_cmp },
}
