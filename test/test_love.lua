-- The game-loop example (examples/love) in a real LÖVE 11 under Xvfb: frames
-- keep coming while an isle computes, and quitting or restarting with work
-- in flight exits cleanly. Each run is a child process under `timeout`.
local lu = require("luaunit")
local helpers = require("test.helpers")

local ROOT = (os.getenv("ISLE_ROOT") or (debug.getinfo(1, "S").source:match("^@(.*)/test/[^/]*$")) or ".")

-- Runs the example in `mode`; returns its report (a table), output and exit code.
local function run_example(mode)
    local _, has_love = helpers.sh("command -v love")
    lu.assertEquals(has_love, 0, "LÖVE is not installed (apt-get install love; make deps does)")
    local _, has_xvfb = helpers.sh("command -v xvfb-run")
    lu.assertEquals(has_xvfb, 0, "xvfb-run is not installed (apt-get install xvfb xauth; make deps does)")
    local report = os.tmpname()
    os.remove(report)
    local out, rc = helpers.sh(("cd %s && ISLE_LOVE_MODE=%s ISLE_LOVE_REPORT=%s timeout -k 5 90 xvfb-run -a love examples/love")
        :format(ROOT, mode, report))
    local r = {}
    local f = io.open(report)
    if f then
        for k, v in f:read("*a"):gmatch("([%w_]+)=([^\n]*)") do r[k] = tonumber(v) or v end
        f:close()
        os.remove(report)
    end
    return r, out, rc
end

TestLove = { deadline = 240 }

function TestLove:test_frames_keep_coming_while_an_isle_works()
    local r, out, rc = run_example("run")
    lu.assertEquals(rc, 0, out)
    lu.assertEquals(r.done, 1, "no report: " .. out)
    lu.assertEquals(r.bands, 20)
    -- The job took several frames' worth of time, and frames kept coming:
    -- a frame loop blocked on the isle would count one or two frames here.
    lu.assertTrue(r.job_seconds > 0.05, "job_seconds " .. tostring(r.job_seconds))
    lu.assertTrue(r.frames_during >= 20, "only " .. tostring(r.frames_during) .. " frames while the job ran")
    -- No frame waited for a large part of the job (a loop that blocked on
    -- it would wait for all of it). Relative to the job, not a fixed time:
    -- a loaded machine stretches both.
    lu.assertTrue(r.max_gap < r.job_seconds / 2, ("a frame gap of %.3f s in a %.3f s job"):format(r.max_gap, r.job_seconds))
    print(("\n  LÖVE: %d frames during a %.3f s job, max frame gap %.1f ms"):format(
        r.frames_during, r.job_seconds, r.max_gap * 1000))
end

function TestLove:test_quit_with_work_in_flight_exits_cleanly()
    local r, out, rc = run_example("quit")
    lu.assertEquals(rc, 0, out)
    lu.assertTrue((r.quit_in_flight or 0) > 0, "quit did not happen with work in flight: " .. out)
    lu.assertNotStrContains(out, "error")
end

function TestLove:test_restart_with_work_in_flight()
    local r, out, rc = run_example("restart")
    lu.assertEquals(rc, 0, out)
    lu.assertEquals(r.restarted, "true", "the restarted state did not report: " .. out)
    lu.assertEquals(r.done, 1)
    lu.assertEquals(r.bands, 20)
    lu.assertNotStrContains(out, "error")
end

os.exit(lu.LuaUnit.run())
