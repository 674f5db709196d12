-- isle's OpenResty adapter (lua/isle/ngx.lua) in a real nginx: waits in
-- request handlers, timers and light threads yield to nginx instead of
-- blocking the worker; on_done callbacks run in the worker; an idle worker
-- burns no CPU; a client that goes away cancels what its request waits for;
-- phases that cannot yield still get answers (blocking); timeouts hold; and
-- reloads with waits in flight end cleanly. The harness is
-- test/nginx/harness.lua; every wait has a deadline.
local lu = require("luaunit")
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "harness.lua")
local now, sleep, sh, read_file, eventually = H.now, H.sleep, H.sh, H.read_file, H.eventually

local INIT_WORKER = [[
    local isle = require("isle")
    W = isle.spawn{ init = [==[
        local isle = require("isle")
        function nap(s) isle.sleep(s) return s end
        function add(a, b) return a + b end
        function spin() while true do end end
    ]==] }
]]

-- The isle of each worker, and what tests read back.
local BASE = {
    init = [[ require("isle") ]],
    init_worker = INIT_WORKER,
    exit_worker = [[ W:close() ]],
    http = [[ lua_shared_dict isle_test 1m; ]],
    workers = 1,
}

local function conf(extra)
    local c = {}
    for k, v in pairs(BASE) do c[k] = v end
    for k, v in pairs(extra) do c[k] = v end
    return c
end

-- Starts `n` concurrent requests of `path` with one curl (its parallel
-- mode); returns a handle for finish_batch.
local function start_batch(ngx, n, path)
    local cfg = ngx.dir .. "/batch" .. tostring(now()):gsub("%.", "") .. ".cfg"
    local lines = {}
    for _ = 1, n do lines[#lines + 1] = ("url = \"http://127.0.0.1:%d%s\"\noutput = \"/dev/null\""):format(ngx.port, path) end
    H.write_file(cfg, table.concat(lines, "\n") .. "\n")
    local log = cfg .. ".log"
    local pid = H.spawn({ "/usr/bin/curl", "-s", "-Z", "--parallel-immediate", "--parallel-max", tostring(n),
        "-m", "60", "-K", cfg, "-w", "%{http_code}\\n" }, nil, log)
    return { pid = pid, log = log, t0 = now() }
end

-- Waits for the batch; returns its seconds and the status codes seen.
local function finish_batch(b)
    local how = H.reap(b.pid, 90)
    if not how then H.C.kill(b.pid, H.SIGKILL); H.reap(b.pid, 5) end
    local took = now() - b.t0
    local codes = {}
    for c in (read_file(b.log) or ""):gmatch("(%d%d%d)\n") do codes[#codes + 1] = c end
    return took, codes, how
end

local function all_200(codes, n)
    if #codes ~= n then return false end
    for _, c in ipairs(codes) do if c ~= "200" then return false end end
    return true
end

-- The worker's main thread (its event loop): CPU seconds it ran and how
-- often it woke up (voluntary context switches: each sleep in epoll_wait).
local function loop_usage(pid)
    local cpu = tonumber((read_file("/proc/" .. pid .. "/task/" .. pid .. "/schedstat") or ""):match("^(%d+)"))
    local wakes = tonumber((read_file("/proc/" .. pid .. "/task/" .. pid .. "/status") or "")
        :match("voluntary_ctxt_switches:%s*(%d+)"))
    return (cpu or 0) * 1e-9, wakes or 0
end

local NAP_LOCATIONS = [[
    location = /nap {
        content_by_lua_block {
            ngx.print("napped ", W:call("nap", tonumber(ngx.var.arg_s)))
        }
    }
    location = /nap-blocking {
        content_by_lua_block {
            -- The detector's control: the same call with the adapter turned
            -- off for this one request, i.e. a blocking wait.
            local rt = require("isle.runtime")
            local saved = rt.host_suspends
            rt.host_suspends = nil
            local ok, r = pcall(W.call, W, "nap", tonumber(ngx.var.arg_s))
            rt.host_suspends = saved
            ngx.print("napped ", tostring(r))
        }
    }
]]

-- A batch of `n` naps of `s` seconds on `path`, with a /ping sent in the
-- middle: returns the batch's seconds, its codes and the ping's seconds.
local function batch_with_ping(ngx, n, path, s)
    local b = start_batch(ngx, n, path .. "?s=" .. s)
    sleep(s / 3)
    local body, code, ping = ngx:get("/ping", 60)
    lu.assertEquals(code, 200, body)
    local took, codes = finish_batch(b)
    return took, codes, ping
end

TestNgxAsync = {}

function TestNgxAsync:test_0_setup()
    lu.assertNil(H.setup_problem())
end

-- The detector works: waits that block the worker (the adapter off) make
-- a batch take n * s and hold a plain request up; the test sees both.
function TestNgxAsync:test_detector_sees_a_blocked_worker()
    H.with_nginx(conf{ locations = NAP_LOCATIONS }, function(ngx)
        local took, codes, ping = batch_with_ping(ngx, 8, "/nap-blocking", 0.25)
        print(("\n  blocking: 8 x 0.25 s naps took %.2f s, a ping meanwhile %.3f s"):format(took, ping))
        lu.assertTrue(all_200(codes, 8), table.concat(codes, " "))
        lu.assertTrue(took >= 1.9, "8 blocking 0.25 s naps took only " .. took .. " s: the detector is blind")
        lu.assertTrue(ping >= 0.2, "a ping during blocking naps took only " .. ping .. " s")
    end)
end

function TestNgxAsync:test_concurrent_calls_do_not_block_the_worker()
    H.with_nginx(conf{ locations = NAP_LOCATIONS }, function(ngx)
        lu.assertEquals((ngx:get("/nap?s=0.01")), "napped 0.01")
        local took, codes, ping = batch_with_ping(ngx, 50, "/nap", 0.3)
        print(("\n  50 x 0.3 s naps took %.2f s (blocking: 15 s), a ping meanwhile %.4f s"):format(took, ping))
        lu.assertTrue(all_200(codes, 50), "codes: " .. table.concat(codes, " "))
        -- Generous bounds (shared machines): blocking would be 15 s and 5 s.
        lu.assertTrue(took < 5, "50 concurrent 0.3 s naps took " .. took .. " s")
        lu.assertTrue(ping < 1, "a ping during the naps took " .. ping .. " s")
    end)
end

function TestNgxAsync:test_await_in_timers_threads_and_on_done()
    H.with_nginx(conf{ locations = [[
        location = /kinds {
            content_by_lua_block {
                local dict = ngx.shared.isle_test
                -- a light thread awaiting
                local th = ngx.thread.spawn(function()
                    local ok, v = W:spawn_call("add", 1, 2):await()
                    return v
                end)
                -- a timer awaiting (and calling)
                assert(ngx.timer.at(0, function()
                    local ok, v = W:spawn_call("nap", 0.05):await()
                    dict:set("timer", tostring(ok) .. " " .. tostring(v) .. " " .. W:call("add", 2, 3))
                end))
                -- an on_done callback: runs later in this worker
                W:spawn_call("add", 10, 20):on_done(function(ok, v)
                    dict:set("on_done", tostring(ok) .. " " .. tostring(v) .. " " .. ngx.get_phase())
                end)
                -- all/first: combined tasks awaited
                local ok, r = require("isle").all{ W:spawn_call("add", 1, 1), W:spawn_call("nap", 0.02) }:await()
                local _, thv = ngx.thread.wait(th)
                for _ = 1, 200 do
                    if dict:get("timer") and dict:get("on_done") then break end
                    ngx.sleep(0.01)
                end
                ngx.print(thv, "|", dict:get("timer"), "|", dict:get("on_done"), "|", tostring(ok), " ", r[1], " ", r.n)
            }
        }
    ]] }, function(ngx)
        local body, code = ngx:get("/kinds", 30)
        lu.assertEquals(code, 200, body)
        lu.assertEquals(body, "3|true 0.05 5|true 30 timer|true 2 1")
    end)
end

function TestNgxAsync:test_timeouts_while_yielding()
    H.with_nginx(conf{ locations = [[
        location = /timeouts {
            content_by_lua_block {
                local t0 = ngx.now()
                local ok, err = pcall(function() return W:with{ timeout = 0.05 }:call("spin") end)
                local a = (not ok) and err.code or "returned"
                local t = W:spawn_call("nap", 0.5)
                local aok, aerr = t:await(0.05)
                local b = (not aok) and aerr.code or "returned"
                -- the task goes on after the await gave up, and ends
                local cok, cv = t:await(5)
                ngx.print(a, " ", b, " ", tostring(cok), " ", tostring(cv), " ", W:call("add", 1, 2))
            }
        }
    ]] }, function(ngx)
        local body, code, took = ngx:get("/timeouts", 30)
        lu.assertEquals(code, 200, body)
        lu.assertEquals(body, "timeout timeout true 0.5 3")
        lu.assertTrue(took < 10, "took " .. took)
    end)
end

-- Idle means idle: no polling timer, the reader parked in a read.
local IDLE_DETECTOR = [[
    location = /busy-poller {
        content_by_lua_block {
            -- What the test must catch: a worker that polls (the
            -- workaround users wrote before the adapter: t:done() after
            -- ngx.sleep(0.001)).
            assert(ngx.timer.at(0, function()
                local t_end = ngx.now() + 1.5
                while ngx.now() < t_end and not ngx.worker.exiting() do ngx.sleep(0.001) end
            end))
            ngx.print("polling")
        }
    }
    location = /status {
        content_by_lua_block {
            local s = require("isle.ngx").status()
            ngx.print(tostring(s.reading), " ", tostring(s.socket), " ", s.pending)
        }
    }
]]

function TestNgxAsync:test_an_idle_worker_uses_no_cpu()
    H.with_nginx(conf{ locations = NAP_LOCATIONS .. IDLE_DETECTOR }, function(ngx)
        local _, codes = batch_with_ping(ngx, 20, "/nap", 0.1)
        lu.assertTrue(all_200(codes, 20), table.concat(codes, " "))
        lu.assertEquals((ngx:get("/status")), "true true 0")
        local pid = ngx:workers()[1]
        local function usage_over(s)
            local c0, w0 = loop_usage(pid)
            sleep(s)
            local c1, w1 = loop_usage(pid)
            return c1 - c0, w1 - w0
        end
        local idle_cpu, idle_wakes = usage_over(2)
        -- The detector: a polling loop in the same worker is seen.
        lu.assertEquals((ngx:get("/busy-poller")), "polling")
        local poll_cpu, poll_wakes = usage_over(1)
        print(("\n  worker loop: %.4f s CPU and %d wake-ups in 2 s idle after isle work; "
            .. "%.4f s and %d in 1 s with a polling loop"):format(idle_cpu, idle_wakes, poll_cpu, poll_wakes))
        lu.assertTrue(poll_wakes >= 100, "the detector is blind: a polling loop woke the worker " .. poll_wakes .. " times in 1 s")
        lu.assertTrue(idle_wakes <= 10, "an idle worker woke up " .. idle_wakes .. " times in 2 s")
        lu.assertTrue(idle_cpu <= 0.02, "an idle worker used " .. idle_cpu .. " s of CPU in 2 s")
    end)
end

local ABORT_LOCATIONS = [[
    location = /long {
        content_by_lua_block {
            ngx.print(W:call("nap", 30))
        }
    }
    location = /long-chained {
        content_by_lua_block {
            local ok, err = require("isle.ngx").on_abort(function()
                ngx.shared.isle_test:set("chained", "ran")
                ngx.exit(499)
            end)
            assert(ok, err)
            ngx.print(W:call("nap", 30))
        }
    }
    location = /own-abort {
        content_by_lua_block {
            -- The user's own handler first: isle does not take the slot over.
            ngx.on_abort(function() ngx.exit(499) end) -- nil, err when lua_check_client_abort is off
            local ok, err = require("isle.ngx").on_abort(function() end)
            ngx.print(W:call("add", 1, 2), " ", tostring(ok), " ", tostring(err))
        }
    }
    location = /stats {
        content_by_lua_block {
            local s = W:stats()
            ngx.print(s.running, " ", s.cancelled, " ", tostring(ngx.shared.isle_test:get("chained")))
        }
    }
]]

function TestNgxAsync:test_a_client_gone_cancels_what_its_request_waits_for()
    H.with_nginx(conf{ http = BASE.http .. " lua_check_client_abort on;", locations = ABORT_LOCATIONS }, function(ngx)
        -- curl gives up after 0.5 s: the request's 30 s job is cancelled.
        local _, code = ngx:get("/long", 0.5)
        lu.assertEquals(code, 0)
        local stats
        lu.assertTrue(eventually(function()
            stats = ngx:get("/stats", 10)
            return stats:match("^0 1 ") ~= nil
        end, 10), "after the abort: running, cancelled = " .. tostring(stats))
        -- A handler given to isle.ngx.on_abort runs too, after the cancel.
        _, code = ngx:get("/long-chained", 0.5)
        lu.assertEquals(code, 0)
        lu.assertTrue(eventually(function()
            stats = ngx:get("/stats", 10)
            return stats == "0 2 ran"
        end, 10), "after the chained abort: " .. tostring(stats))
        -- The user's own ngx.on_abort keeps its slot; isle says so.
        local body = ngx:get("/own-abort", 10)
        lu.assertStrContains(body, "3 nil ngx.on_abort was called already")
    end)
end

function TestNgxAsync:test_without_check_client_abort_requests_just_work()
    H.with_nginx(conf{ locations = ABORT_LOCATIONS }, function(ngx)
        local body, code = ngx:get("/own-abort", 10)
        lu.assertEquals(code, 200, body)
        lu.assertStrContains(body, "3 nil lua_check_client_abort is off")
    end)
end

function TestNgxAsync:test_phases_that_cannot_yield_block_and_answer()
    H.with_nginx(conf{
        init_worker = INIT_WORKER .. [[ FROM_INIT_WORKER = W:call("add", 40, 2) ]],
        locations = [[
            location = /phases {
                content_by_lua_block { ngx.print("init_worker ", FROM_INIT_WORKER) }
                header_filter_by_lua_block {
                    ngx.header["X-Isle-Call"] = W:call("add", 1, 2)
                    local ok, err = pcall(function() return W:spawn_call("add", 1, 1):await() end)
                    ngx.header["X-Isle-Await"] = ok and "returned" or tostring(err):match("cannot suspend here") or tostring(err)
                }
                log_by_lua_block { ngx.shared.isle_test:set("log", W:call("add", 5, 5)) }
            }
            location = /log-result { content_by_lua_block { ngx.print(ngx.shared.isle_test:get("log")) } }
        ]],
    }, function(ngx)
        local out = sh(("curl -s -i -m 10 http://127.0.0.1:%d/phases"):format(ngx.port))
        lu.assertStrContains(out, "init_worker 42")
        lu.assertStrContains(out, "X-Isle-Call: 3")
        lu.assertStrContains(out, "X-Isle-Await: cannot suspend here")
        lu.assertTrue(eventually(function() return ngx:get("/log-result") == "10" end, 10), "log phase call")
    end)
end

-- The documented lifecycle (spawn in init_worker, close in exit_worker)
-- with waits in flight at every reload: workers exit and nothing crashes.
function TestNgxAsync:test_reloads_with_waits_in_flight()
    H.with_nginx(conf{ workers = 2, locations = NAP_LOCATIONS }, function(ngx)
        for i = 1, 5 do
            local b = start_batch(ngx, 10, "/nap?s=0.3")
            sleep(0.1)
            local t0 = now()
            ngx:reload()
            local reload_took = now() - t0
            local _, codes = finish_batch(b)
            lu.assertTrue(all_200(codes, 10), "reload " .. i .. ": " .. table.concat(codes, " "))
            -- The old workers did not hang on the reader's read.
            lu.assertTrue(reload_took < 20, "reload " .. i .. " took " .. reload_took .. " s")
        end
        lu.assertEquals(H.crash_lines(ngx:log()), {})
    end)
end

-- A reload that catches a request between two calls: the reader leaves
-- once nothing is pending, nginx refuses new timers in an exiting worker,
-- and the second wait must still be woken (it polls the hub itself then).
-- And a reload right after a worker's first wait, before its reader ran.
function TestNgxAsync:test_waits_that_begin_while_the_worker_exits()
    H.with_nginx(conf{ locations = NAP_LOCATIONS .. [[
        location = /two-calls {
            content_by_lua_block {
                ngx.shared.isle_test:set("two", ngx.var.arg_i)
                local a = W:call("nap", 3)
                local b = W:call("nap", 1)
                ngx.print("two ", a + b, " exiting=", tostring(ngx.worker.exiting()))
            }
        }
        location = /two-started { content_by_lua_block { ngx.print(ngx.shared.isle_test:get("two")) } }
    ]] }, function(ngx)
        for i = 1, 2 do
            local out = ngx.dir .. "/two" .. i .. ".log"
            local pid = H.spawn({ "/usr/bin/curl", "-s", "-m", "30", ("http://127.0.0.1:%d/two-calls?i=%d"):format(ngx.port, i) }, nil, out)
            lu.assertTrue(eventually(function() return ngx:get("/two-started") == tostring(i) end, 10), "request " .. i .. " did not start")
            sleep(1) -- inside the first call (the master takes a while to reload)
            local t0 = now()
            ngx:reload()
            lu.assertTrue(now() - t0 < 20, "reload " .. i .. " took " .. (now() - t0) .. " s")
            lu.assertEquals(H.reap(pid, 30), "exit 0")
            lu.assertEquals(read_file(out), "two 4 exiting=true")
        end
        -- The first wait of a fresh worker, then a reload at once.
        for i = 1, 3 do
            local b = start_batch(ngx, 4, "/nap?s=0.2")
            ngx:reload()
            local _, codes = finish_batch(b)
            lu.assertTrue(all_200(codes, 4), "fresh worker reload " .. i .. ": " .. table.concat(codes, " "))
        end
    end)
end

os.exit(lu.LuaUnit.run())
