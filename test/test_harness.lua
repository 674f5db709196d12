-- The test harness proves itself: test/run.lua ends a hanging suite and
-- names the test, keeps luaunit's report otherwise, and child processes of
-- the suites run the LuaJIT under test (issue 7).
local lu = require("luaunit")
local helpers = require("test.helpers")

-- Runs a fixture suite through the runner with the given environment. The
-- outer `timeout` is only a backstop so that a broken runner fails this test
-- instead of hanging it; the checks rely on the runner's own verdicts.
local function run(fixture, env)
    return helpers.sh(("%s timeout -k 5 100 %s test/run.lua test/fixtures/%s -o text")
        :format(env or "", helpers.luajit(), fixture))
end

TestRunner = {}

function TestRunner:test_a_hang_fails_and_names_the_test()
    -- The default deadline is longer than the backstop: only the fixture's
    -- own override (2 s for that test) can end it in time.
    local out, rc = run("suite_hangs.lua", "ISLE_TEST_DEADLINE=600")
    lu.assertNotEquals(rc, 0, out)
    lu.assertStrContains(out, "FAILED: test/fixtures/suite_hangs.lua TestFixture.test_2_waits_forever: "
        .. "no result within 2 s (deadline)")
    lu.assertNotStrContains(out, "ran after a hang")
    lu.assertNotStrContains(out, "Ran ")
end

function TestRunner:test_default_deadline_ends_a_spin()
    local out, rc = run("suite_spins.lua", "ISLE_TEST_DEADLINE=2")
    lu.assertNotEquals(rc, 0, out)
    lu.assertStrContains(out, "FAILED: test/fixtures/suite_spins.lua TestSpin.test_spins: "
        .. "no result within 2 s (deadline)")
end

function TestRunner:test_suite_bound_ends_a_spin()
    local out, rc = run("suite_spins.lua", "ISLE_TEST_DEADLINE=600 ISLE_TEST_SUITE_TIMEOUT=2")
    lu.assertNotEquals(rc, 0, out)
    lu.assertStrContains(out, "FAILED: test/fixtures/suite_spins.lua TestSpin.test_spins: "
        .. "no result within 2 s (suite timeout)")
end

function TestRunner:test_a_passing_suite_passes()
    local out, rc = run("suite_passes.lua")
    lu.assertEquals(rc, 0, out)
    lu.assertStrContains(out, "Ran 2 tests")
    lu.assertStrContains(out, "2 successes, 0 failures")
    lu.assertStrContains(out, "\nOK\n")
    lu.assertNotStrContains(out, "FAILED:")
end

function TestRunner:test_a_failure_keeps_the_luaunit_report()
    local out, rc = run("suite_fails.lua")
    lu.assertEquals(rc, 1, out)
    lu.assertStrContains(out, "Failed tests:")
    lu.assertStrContains(out, "TestFixture.test_fails")
    lu.assertStrContains(out, "expected: 3, actual: 2")
    lu.assertStrContains(out, "1 success, 1 failure")
    lu.assertNotStrContains(out, "FAILED:")
end

TestChildren = {}

function TestChildren:test_a_child_runs_the_luajit_under_test()
    local mine = dofile("test/fixtures/luajit_identity.lua")
    -- The detector sees a binary or library, not just a version string.
    lu.assertStrContains(mine, jit.version .. " /")
    local out, rc = helpers.sh(helpers.luajit()
        .. " -e \"io.write(dofile('test/fixtures/luajit_identity.lua'))\"")
    lu.assertEquals(rc, 0, out)
    lu.assertEquals(out, mine)
end

os.exit(lu.LuaUnit.run())
