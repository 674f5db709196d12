-- isle inside a real nginx (issue 7): workers that served isle calls survive
-- reloads and stops under load, an isle made in the master fails fast with a
-- clear error in a worker, and isles spawned per worker after the fork work,
-- timeouts included. Debian's nginx runs OpenResty's Lua module and luajit2,
-- unpacked privately by `make nginx-deps` (docs/testing.md, "Real hosts").
-- Every nginx is this process's child, stopped by its pid, and every wait has
-- a deadline. The harness: test/nginx/harness.lua.
local lu = require("luaunit")
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "harness.lua")
local ROOT, RELOADS = H.ROOT, H.RELOADS
local now, sh, read_file, eventually = H.now, H.sh, H.read_file, H.eventually
local setup_problem, crash_lines = H.setup_problem, H.crash_lines
local start_nginx, with_nginx, start_load, stop_load = H.start_nginx, H.with_nginx, H.start_load, H.stop_load

-- Each worker spawns one isle with a CPU function; /work calls it, blocking
-- (plain, or with a timeout so that the watchdog thread runs too). Workers
-- exit without closing their isles: teardown at lua_close is under test.
local RELOAD_CONF = {
    init = [[ require("isle") ]],
    init_worker = [[
        local isle = require("isle")
        WORK = isle.spawn{ init = "function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end" }
    ]],
    exit_worker = [[ -- nothing: the isles are left to teardown ]],
    locations = [[
        location = /work {
            content_by_lua_block {
                local n = tonumber(ngx.var.arg_n)
                local h = ngx.var.arg_t and WORK:with{ timeout = 30 } or WORK
                ngx.print("fib=", h:call("fib", n), " pid=", ngx.worker.pid())
            }
        }
    ]],
}

local FIB20 = "fib=6765"

-- Reloads `reloads` times while two loops of requests run, then stops nginx.
-- Returns the result without asserting, for the test and the detector check.
local function reload_under_load(cpath, reloads)
    local r = { answered = 0, bad = {}, crashes = {}, generations_served = 0 }
    local ngx = start_nginx{ cpath = cpath, init = RELOAD_CONF.init, init_worker = RELOAD_CONF.init_worker,
        exit_worker = RELOAD_CONF.exit_worker, locations = RELOAD_CONF.locations }
    local load
    local ok, err = xpcall(function()
        load = start_load(ngx, { "/work?n=20", "/work?n=20&t=1" })
        for i = 1, reloads do
            local fresh = ngx:reload()
            -- The new workers answer; probe until both have served isle calls
            -- (so that both are torn down with used isles at the next reload).
            local served = {}
            eventually(function()
                local body, code = ngx:get("/work?n=20", 10)
                local pid = tonumber(body:match("^" .. FIB20 .. " pid=(%d+)$"))
                if code == 200 and pid then
                    served[pid] = true
                else
                    r.bad[#r.bad + 1] = "probe after reload " .. i .. ": " .. body .. "|" .. code
                end
                return served[fresh[1]] and served[fresh[2]]
            end, 10)
            if served[fresh[1]] or served[fresh[2]] then r.generations_served = r.generations_served + 1 end
        end
    end, debug.traceback)
    local lines = load and stop_load(load) or {}
    r.how, r.survivors = ngx:stop()
    r.log, r.dir = ngx:log(), ngx.dir
    r.crashes = crash_lines(r.log)
    for _, line in ipairs(lines) do
        if line:match("^" .. FIB20 .. " pid=%d+|200|0$") then
            r.answered = r.answered + 1
        else
            r.bad[#r.bad + 1] = line
        end
    end
    if not ok then error(err .. "\n(nginx directory kept: " .. r.dir .. ")", 0) end
    return r
end

TestNginx = {}

function TestNginx:test_0_setup()
    lu.assertNil(setup_problem())
end

function TestNginx:test_reloads_under_load_never_crash_a_worker()
    local t0 = now()
    local r = reload_under_load(ROOT .. "/build", RELOADS)
    print(("\n  %d reloads, %d requests answered, %d bad, %d crashes, %.1f s")
        :format(RELOADS, r.answered, #r.bad, #r.crashes, now() - t0))
    lu.assertEquals(r.crashes, {}, "worker crashes (" .. r.dir .. "/error.log)")
    lu.assertEquals(#r.bad, 0, "requests not answered 200 with " .. FIB20 .. ", the first: "
        .. table.concat(r.bad, "\n", 1, math.min(#r.bad, 5)))
    lu.assertTrue(r.answered >= RELOADS, "too few requests under load: " .. r.answered)
    lu.assertEquals(r.generations_served, RELOADS, "new workers did not answer after a reload")
    -- Workers exited on their own at each reload: the log says so with code 0.
    local exits = 0
    for _ in r.log:gmatch("worker process %d+ exited with code 0") do exits = exits + 1 end
    lu.assertTrue(exits >= 2 * RELOADS, "worker exits logged: " .. exits)
    lu.assertEquals(r.how, "exit 0", "the master did not exit cleanly")
    lu.assertEquals(r.survivors, {}, "workers outlived the master")
    sh("rm -rf " .. r.dir)
end

-- The detector works: the library as it was before the fix (unloaded at
-- lua_close while its threads still run, build/nopin/libisle.so from the
-- Makefile) crashes workers in this very scenario, and the test sees it.
function TestNginx:test_detector_sees_crashes_of_the_unpinned_library()
    local lib = ROOT .. "/build/nopin/libisle.so"
    lu.assertNotNil(io.open(lib), lib .. " is missing: make " .. "build/nopin/libisle.so")
    local r = reload_under_load(ROOT .. "/build/nopin", RELOADS)
    local crashed = select(2, r.log:gsub("exited on signal", ""))
    print(("\n  unpinned library: %d reloads, %d workers exited on a signal, %d requests answered, %d bad; %s")
        :format(RELOADS, crashed, r.answered, #r.bad, tostring(r.crashes[1])))
    lu.assertTrue(#r.crashes > 0, "no crash seen with the unpinned library: the detector is blind")
    sh("rm -rf " .. r.dir)
end

-- fork(): the wrong way and the right way --------------------------------------------

function TestNginx:test_isle_spawned_in_the_master_fails_fast_in_a_worker()
    with_nginx({
        -- The mistake: an isle made before nginx forks its workers.
        init = [[
            local isle = require("isle")
            package.loaded.master_isle = isle.spawn{ init = "function f(x) return x end" }
            assert(package.loaded.master_isle:call("f", 1) == 1)
        ]],
        locations = [[
            location = /master-isle {
                content_by_lua_block {
                    local h = require("master_isle")
                    local ok, err = pcall(h.call, h, "f", 2)
                    ngx.status = ok and 200 or 500
                    ngx.print(ok and ("answered " .. tostring(err)) or tostring(err))
                }
            }
        ]],
    }, function(ngx)
        local function refused(round)
            for i = 1, 6 do
                local body, code, took = ngx:get("/master-isle", 30)
                local what = round .. ", request " .. i
                lu.assertEquals(code, 500, what .. ": " .. body)
                lu.assertStrContains(body, "before a fork")
                lu.assertStrContains(body, "spawn them after the fork (in nginx: init_worker_by_lua, not init_by_lua)")
                lu.assertTrue(took < 10, what .. " took " .. took .. " s")
            end
        end
        refused("first workers")
        -- A reload runs init_by_lua again in a new Lua state of the master and
        -- closes the old one, which tears down the old master isle: the
        -- master keeps one isle thread, and survives (stop_clean checks how
        -- it ended).
        local function threads()
            return tonumber((read_file("/proc/" .. ngx.master .. "/status") or ""):match("Threads:%s*(%d+)"))
        end
        local before = threads()
        lu.assertTrue(before >= 2, "the master runs no isle thread")
        ngx:reload()
        lu.assertTrue(eventually(function() return threads() == before end, 10),
            "master threads: " .. before .. " before the reload, " .. tostring(threads()) .. " after")
        refused("after a reload")
        -- The workers are not stuck: they still answer.
        local body, code = ngx:get("/ping", 10)
        lu.assertEquals(code, 200)
        lu.assertStrContains(body, "pong")
    end)
end

function TestNginx:test_isles_spawned_per_worker_after_the_fork_work()
    with_nginx({
        -- isle is loaded in the master: its fork handlers run when nginx forks.
        init = [[ require("isle") ]],
        init_worker = [[
            local isle = require("isle")
            W = isle.spawn{ init = "function add(a, b) return a + b end function spin() while true do end end" }
        ]],
        locations = [[
            location = /add {
                content_by_lua_block {
                    local a, b = tonumber(ngx.var.arg_a), tonumber(ngx.var.arg_b)
                    ngx.print(W:call("add", a, b), " pid=", ngx.worker.pid())
                }
            }
            location = /timeout {
                content_by_lua_block {
                    local ok, err = pcall(function() return W:with{ timeout = 0.05 }:call("spin") end)
                    local code = not ok and type(err) == "table" and err.code or tostring(err)
                    -- the isle is free again once the loop was stopped
                    ngx.print(ok and "returned" or code, " then ", W:call("add", 1, 2), " pid=", ngx.worker.pid())
                }
            }
        ]],
    }, function(ngx)
        local workers = ngx:workers()
        -- Requests until both workers have answered (reuseport spreads them).
        local seen, timeouts_seen = {}, {}
        local i = 0
        local both = eventually(function()
            i = i + 1
            local body, code = ngx:get(("/add?a=%d&b=%d"):format(i, 1000), 10)
            lu.assertEquals(code, 200, body)
            local sum, pid = body:match("^(%d+) pid=(%d+)$")
            lu.assertEquals(tonumber(sum), i + 1000, body)
            seen[tonumber(pid)] = true
            local tbody, tcode, took = ngx:get("/timeout", 10)
            lu.assertEquals(tcode, 200, tbody)
            local tpid = tonumber(tbody:match("^timeout then 3 pid=(%d+)$"))
            lu.assertNotNil(tpid, "/timeout answered: " .. tbody)
            lu.assertTrue(took < 5, "a 0.05 s timeout took " .. took .. " s")
            timeouts_seen[tpid] = true
            return i >= 10 and seen[workers[1]] and seen[workers[2]]
                and timeouts_seen[workers[1]] and timeouts_seen[workers[2]]
        end, 60)
        lu.assertTrue(both, "both workers did not answer /add and /timeout in " .. i .. " rounds")
    end)
end

os.exit(lu.LuaUnit.run())
