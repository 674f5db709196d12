-- Teardown and fork (issue 7, parts 1 and 2): a state that closes with isles
-- still running never crashes the process or waits beyond its bound, and
-- objects made before a fork() are refused in the child with a clear error
-- while isle itself keeps working there.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")
local helpers = require("test.helpers")

local LUAJIT = helpers.luajit()

local sh = helpers.sh -- output, exit code

-- Writes a Lua script to a temporary file; returns its path.
local function script(text)
    local path = os.tmpname()
    local f = io.open(path, "w")
    f:write(text)
    f:close()
    return path
end

-- Scripts that end with isles left running and unclosed, each with the exit
-- code it must end with.
local UNCLOSED = {
    -- idle isles, the script just ends
    { code = 0, text = [[
local isle = require("isle")
local a, b = isle.spawn{ init = "function f(x) return x end" }, isle.spawn{}
assert(a:call("f", 1) == 1 and b:eval("return 2") == 2)
]] },
    -- busy isles (a stoppable loop, queued work), os.exit with a code
    { code = 3, text = [[
local isle = require("isle")
local a = isle.spawn{}
a:spawn_eval("while true do end")
for i = 1, 20 do a:spawn_eval("return ...", i) end
os.exit(3)
]] },
    -- an isle that cannot be stopped (no checkpoints, compiled) and one in a
    -- blocking C call; the state is closed by os.exit(code, true)
    { code = 4, text = [[
local isle = require("isle")
local a = isle.spawn{ instrument = false }
a:spawn_eval("local t = os.clock() + 0.3 while os.clock() < t do end")
local b = isle.spawn{}
b:spawn_eval("local ffi = require('ffi') ffi.cdef'int usleep(unsigned)' ffi.C.usleep(200000)")
isle.sleep(0.01)
os.exit(4, true)
]] },
    -- owners collected while busy, then the script ends
    { code = 0, text = [[
local isle = require("isle")
for i = 1, 3 do isle.spawn{}:spawn_eval("local n = 0 for i = 1, 1e6 do n = n + i end return n") end
collectgarbage() collectgarbage()
]] },
}

TestTeardown = {}

function TestTeardown:test_200_unclosed_exits_never_crash()
    local paths = {}
    for i, s in ipairs(UNCLOSED) do paths[i] = script(s.text) end
    local cmds = {}
    for run = 1, 200 do
        local k = (run - 1) % #UNCLOSED + 1
        cmds[#cmds + 1] = "timeout 20 " .. LUAJIT .. " " .. paths[k] .. " >/dev/null 2>&1; echo " .. k .. ":$?"
    end
    local out = sh(table.concat(cmds, "; "))
    for _, p in ipairs(paths) do os.remove(p) end
    local runs, wrong = 0, {}
    for k, rc in out:gmatch("(%d+):(%d+)") do
        runs = runs + 1
        k, rc = tonumber(k), tonumber(rc)
        if rc ~= UNCLOSED[k].code then wrong[#wrong + 1] = "script " .. k .. " exited " .. rc end
    end
    lu.assertEquals(runs, 200)
    lu.assertEquals(wrong, {}, "crashes or wrong exit codes: " .. table.concat(wrong, ", "))
end

function TestTeardown:test_exit_is_not_held_up_by_an_unstoppable_isle()
    local path = script([[
local isle = require("isle")
local a = isle.spawn{ instrument = false }
a:spawn_eval("while true do end")
local b = isle.spawn{}
b:spawn_eval("local ffi = require('ffi') ffi.cdef'int usleep(unsigned)' ffi.C.usleep(60000000)")
isle.sleep(0.05)
io.stdout:write("started\n")
]])
    local t0 = isle.now()
    local out = sh("timeout 30 " .. LUAJIT .. " " .. path .. "; echo rc=$?")
    local took = isle.now() - t0
    os.remove(path)
    lu.assertStrContains(out, "started")
    lu.assertStrContains(out, "rc=0")
    -- The bound is teardown_timeout (0.1 s); a loaded machine gets far more.
    lu.assertTrue(took < 10, "exit took " .. took .. " s")
end

-- An isle's own state closes like any other: the isles it spawned are
-- closed with cancel when it ends, and never touch it again.
function TestTeardown:test_a_closing_state_cancels_its_isles()
    local before = isle.live_count()
    local parent = isle.spawn{ init = [[
        local isle = require("isle")
        child = isle.spawn{}
        child_task = child:spawn_eval("local n = 0 while true do n = n + 1 end")
        function child_id() return child:id() end
    ]] }
    local id = parent:call("child_id")
    lu.assertNotNil(isle.lookup(id))
    parent:close()
    lu.assertTrue(helpers.eventually(function() return isle.live_count() == before end, 10),
        "the child isle of a closed state still runs")
    lu.assertNil(isle.lookup(id))
end

function TestTeardown:test_a_closing_state_leaves_an_unstoppable_isle_and_returns()
    local before = isle.live_count()
    local parent = isle.spawn{ init = [[
        local isle = require("isle")
        isle.teardown_timeout(0.05)
        stuck = isle.spawn{ instrument = false }
        stuck:spawn_eval("local t = os.clock() + 1 while os.clock() < t do end")
    ]] }
    local t0 = isle.now()
    parent:close()
    lu.assertTrue(isle.now() - t0 < 0.9, "close waited for the unstoppable isle")
    -- It ends on its own later.
    lu.assertTrue(helpers.eventually(function() return isle.live_count() == before end, 20))
end

function TestTeardown:test_teardown_timeout_is_checked()
    local old = isle.teardown_timeout()
    lu.assertEquals(type(old), "number")
    lu.assertEquals(isle.teardown_timeout(0.5), old)
    lu.assertEquals(isle.teardown_timeout(old), 0.5)
    lu.assertErrorMsgContains("teardown_timeout", isle.teardown_timeout, -1)
end

-- fork() ------------------------------------------------------------------------

ffi.cdef[[
int fork(void);
int waitpid(int pid, int *status, int options);
void _exit(int status);
]]

-- Runs fn in a forked child; returns the child's exit code (fn's number),
-- 255 if fn raised, or 254 past the deadline (the child hung).
local function in_child(fn, deadline)
    io.stdout:flush()
    io.stderr:flush()
    local pid = ffi.C.fork()
    if pid == 0 then
        local ok, code = pcall(fn)
        if not ok then io.stderr:write("child: ", tostring(code), "\n") end
        io.stderr:flush()
        ffi.C._exit(ok and code or 255)
    end
    local status = ffi.new("int[1]")
    local t_end = isle.now() + (deadline or 20)
    while true do
        local r = ffi.C.waitpid(pid, status, 1) -- WNOHANG
        if r == pid then break end
        if isle.now() > t_end then
            os.execute("kill -9 " .. pid)
            ffi.C.waitpid(pid, status, 0)
            return 254
        end
        isle.sleep(0.005)
    end
    local s = status[0]
    if bit.band(s, 0x7f) ~= 0 then return 300 + bit.band(s, 0x7f) end -- killed by a signal
    return bit.rshift(bit.band(s, 0xff00), 8)
end

TestFork = {}

function TestFork:test_parent_objects_are_refused_in_the_child_at_once()
    local h = isle.spawn{ init = "function f(x) return x end" }
    local t = h:spawn_call("f", 1)
    local tok = isle.token()
    lu.assertEquals(t:wait(5), true)
    local code = in_child(function()
        local function refused(f, ...)
            local ok, e = pcall(f, ...)
            return not ok and tostring(e):find("before a fork", 1, true)
                and tostring(e):find("spawn them after the fork", 1, true)
        end
        if not refused(h.call, h, "f", 2) then return 1 end
        if not refused(h.spawn_call, h, "f", 2) then return 2 end
        if not refused(h.post, h, "f", 2) then return 3 end
        if not refused(t.wait, t) then return 4 end
        if not refused(t.cancel, t) then return 5 end
        if not refused(tok.cancel, tok) then return 6 end
        local view = h:with{ token = tok }
        if not refused(view.call, view, "f", 1) then return 7 end
        if not refused(h.close, h) then return 8 end
        if not refused(h.stats, h) then return 9 end
        -- The parent's isles are not in the child's registry.
        if isle.lookup(h:id()) ~= nil then return 10 end
        return 0
    end)
    lu.assertEquals(code, 0)
    -- The parent is unaffected.
    lu.assertEquals(h:call("f", 3), 3)
    h:close()
end

-- The parent's pools are not the child's either: looking one up by name or
-- id finds nothing, its name is free for a pool of the child's, and the
-- parent's pool still works afterwards.
function TestFork:test_parent_pools_are_unknown_in_the_child()
    local p = isle.pool{ size = 1, name = "fork-pool", init = "function f(x) return x end" }
    lu.assertEquals(p:call("f", 1), 1)
    local id = p:id()
    local code = in_child(function()
        local by_name, e1 = isle.pool_ref("fork-pool")
        if by_name ~= nil or not e1 or e1.code ~= "unknown" then return 1 end
        local by_id, e2 = isle.pool_ref(id)
        if by_id ~= nil or not e2 or e2.code ~= "unknown" then return 2 end
        local mine = isle.pool{ size = 1, name = "fork-pool", init = "function f(x) return x + 1 end" }
        if mine:call("f", 1) ~= 2 then return 3 end
        mine:close()
        return 0
    end)
    lu.assertEquals(code, 0)
    lu.assertEquals(p:call("f", 3), 3)
    p:close()
end

-- Objects made in the child are the child's: their finalizers free them
-- (only the parent's copies are left alone). Each result here is 1 MB of C
-- memory held by its task until the task object is collected.
function TestFork:test_objects_made_in_the_child_are_freed_there()
    local code = in_child(function()
        local h = isle.spawn{}
        local function burst()
            for _ = 1, 20 do
                local t = h:spawn_eval("return string.rep('x', 1048576)")
                assert(t:wait(10))
            end
            collectgarbage()
            collectgarbage()
        end
        burst()
        local before = helpers.malloc_mb()
        for _ = 1, 5 do burst() end
        local grown = helpers.malloc_mb() - before
        h:close()
        if grown > 50 then io.stderr:write("child: C memory grew by ", grown, " MB\n") return 1 end
        return 0
    end)
    lu.assertEquals(code, 0)
end

function TestFork:test_require_before_fork_spawn_after_works_while_parent_is_busy()
    -- Parent isles keep the core's locks busy while the fork happens.
    local busy = {}
    for i = 1, 2 do
        busy[i] = isle.spawn{ init = "function f(x) return x end" }
    end
    local tasks = {}
    for round = 1, 10 do
        for i = 1, 2 do
            for k = 1, 50 do tasks[#tasks + 1] = busy[i]:with{ timeout = 5 }:spawn_call("f", k) end
        end
        local code = in_child(function()
            local h = isle.spawn{ init = "function add(a, b) return a + b end", name = "child-" .. round }
            if h:call("add", 2, 3) ~= 5 then return 1 end
            -- the watchdog works in the child
            local t = h:with{ timeout = 0.05 }:spawn_eval("while true do end")
            local ok, e = t:wait(10)
            if ok or e.code ~= "timeout" then return 2 end
            if not isle.lookup("child-" .. round) then return 3 end
            local tok = isle.token()
            local t2 = h:with{ token = tok }:spawn_eval("while true do end")
            tok:cancel()
            local ok2, e2 = t2:wait(10)
            if ok2 or e2.code ~= "cancelled" then return 4 end
            h:close()
            return 0
        end)
        lu.assertEquals(code, 0, "round " .. round)
    end
    for _, t in ipairs(tasks) do lu.assertEquals(t:wait(10), true) end
    for i = 1, 2 do busy[i]:close() end
end
os.exit(lu.LuaUnit.run())
