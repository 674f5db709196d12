-- Shared states (issue 9, "Shared states"): isle.state, isle.state_ref,
-- isle.singleton and the methods of their objects, every error code, many
-- states from two threads, a singleton race, re-entry, interrupts of
-- compiled loops, tcall timeouts, close while busy, GC and teardown.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")
local helpers = require("test.helpers")

ffi.cdef("long syscall(long number, ...);")
local function tid() return tonumber(ffi.C.syscall(186)) end -- SYS_gettid on x86-64

local err_of = helpers.err_of

local function code_of(f, ...)
    local e = err_of(f, ...)
    lu.assertTrue(isle.is_error(e), tostring(e))
    return e.code, e
end

-- A state with a few commands. "hold" spins until mem[0] is set, saying
-- mem[1] = 1 once it runs: how the tests keep a state busy on another
-- thread for as long as they need.
local COMMANDS = [[
local ffi = require("ffi")
ffi.cdef("long syscall(long number, ...);")
local n = 0
local cmds = {}
function cmds.inc(d) n = n + (d or 1) return n end
function cmds.get() return n end
function cmds.echo(...) return ... end
function cmds.tid() return tonumber(ffi.C.syscall(186)) end
function cmds.fail(v) error(v) end
function cmds.hold(addr)
    local m = ffi.cast("int32_t *", addr)
    m[1] = 1
    while m[0] == 0 do end
    return "held"
end
function cmds.spin() local x = 0 while true do x = x + 1 end end
function cmds.catch_spin(addr)
    local m = ffi.cast("int32_t *", addr)
    local ok, e = pcall(function() m[1] = 1 local x = 0 while true do x = x + 1 end end)
    return "caught", e.code
end
function cmds.run(f, ...) return f(...) end
return function(cmd, ...) return cmds[cmd](...) end, ...
]]

-- Runs s:call("hold", addr) on an isle; returns the task, the isle and the
-- memory (mem[0] = 1 lets it go). Waits until the call holds the state.
local function hold_on_isle(s)
    local mem, addr = helpers.shared_ints(2)
    local h = isle.spawn{}
    local t = h:spawn_eval("return require('isle').state_ref(...):call('hold', select(2, ...))", s:id(), addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10), "the isle never held the state")
    return t, h, mem
end

TestState = {}

function TestState:test_setup_returns_callback_and_extra_values()
    local s, a, b = isle.state(nil, COMMANDS, "x", 7)
    lu.assertEquals(a, "x")
    lu.assertEquals(b, 7)
    lu.assertTrue(s:isowner())
    lu.assertNil(s:name())
    lu.assertTrue(s:id() > 0)
    lu.assertEquals(s:call("inc"), 1)
    lu.assertEquals(s:call("inc", 41), 42)
    lu.assertEquals(s:call("get"), 42)
    lu.assertStrContains(tostring(s), "isle.state " .. s:id())
    s:close()
end

function TestState:test_setup_function_with_arguments_as_mtstates()
    local s = isle.state(function(init)
        local list = { init }
        local cmds = {
            add = function(v) list[#list + 1] = v end,
            get = function() return table.concat(list, " ") end,
        }
        return function(cmd, ...) return cmds[cmd](...) end
    end, "Hello")
    s:call("add", "World")
    lu.assertEquals(s:call("get"), "Hello World")
    s:close()
end

function TestState:test_argument_forms_name_libs_options()
    -- Two or more arguments: a first string is the name (nil: no name).
    local a = isle.state("named-a", "return function() return 1 end")
    lu.assertEquals(a:name(), "named-a")
    local b = isle.state(nil, "return function(x) return x end", 5)
    lu.assertNil(b:name())
    lu.assertEquals(b:call(9), 9)
    -- One argument: a chunk string is setup.
    local c = isle.state("return function() return 'c' end")
    lu.assertNil(c:name())
    lu.assertEquals(c:call(), "c")
    -- libs = false: base and package only; the others load with require.
    local d = isle.state("named-d", false, "return function() return type(string), require('string').rep('x', 2) end")
    lu.assertEquals({ d:call() }, { "nil", "xx" })
    local e = isle.state(true, "return function() return type(string) end")
    lu.assertEquals(e:call(), "table")
    -- An options table in place of the boolean.
    local f = isle.state({ libs = { "string" } }, "return function() return type(string), type(table) end")
    lu.assertEquals({ f:call() }, { "table", "nil" })
    for _, x in ipairs({ a, b, c, d, e, f }) do x:close() end
end

-- Tokens travel as references their carrier frees (an isle message or
-- result; for a state call, a message of references beside the bytes,
-- isle_state_io.args_refs/results_refs): they cross both ways, stay the
-- same token, and no task slot is left behind.
function TestState:test_tokens_cross_both_ways()
    local C = require("isle.cdef").C
    local s = isle.state(function()
        local isle = require("isle")
        local kept
        return function(what)
            if what == "give" then kept = isle.token() return kept end
            if what == "cancel" then kept:cancel() return true end
            if what == "err" then error({ tok = isle.token() }) end
            if type(what) == "table" then what:cancel() return "cancelled" end
            return type(what)
        end
    end)
    local before = C.isle_task_live_count()
    for _ = 1, 3 do
        local tok = isle.token()
        lu.assertEquals(s:call(tok), "cancelled")
        lu.assertTrue(tok:cancelled())
        local got = s:call("give")
        lu.assertFalse(got:cancelled())
        lu.assertTrue(s:call("cancel"))
        lu.assertTrue(got:cancelled())
    end
    lu.assertEquals(s:call("plain"), "string")
    -- An error value still cannot carry one.
    local e = err_of(s.call, s, "err")
    lu.assertEquals(e.code, "value")
    lu.assertStrContains(tostring(e), "cannot travel in an error value")
    s:call("give") -- the state's `kept` lets go of the last one
    collectgarbage(); collectgarbage()
    s:close()
    collectgarbage(); collectgarbage()
    lu.assertTrue(C.isle_task_live_count() <= before, "task slots left behind: " .. (C.isle_task_live_count() - before))
end

function TestState:test_misuse_raises_plain_errors()
    lu.assertStrContains(err_of(isle.state), "setup function without upvalues or a chunk string expected")
    lu.assertStrContains(err_of(isle.state, "name", 5), "bad argument #2 to 'state'")
    lu.assertStrContains(err_of(isle.state, { bogus = 1 }, "return print"), "unknown option 'bogus'")
    lu.assertStrContains(err_of(isle.state, { libs = { "nope" } }, "return print"), "unknown library 'nope'")
    lu.assertStrContains(err_of(isle.state, { instrument = 1 }, "return print"), "must be a boolean")
    lu.assertStrContains(err_of(isle.state_ref, {}), "state id or name expected")
    lu.assertStrContains(err_of(isle.singleton, nil, "return print"), "non-empty name")
    local s = isle.state("return function() end")
    lu.assertStrContains(err_of(s.tcall, s, -1), "number of seconds >= 0")
    lu.assertStrContains(err_of(s.interrupt, s, 1), "boolean or nil expected")
    s:close()
end

function TestState:test_value_errors_name_where()
    local up = 1
    lu.assertEquals(code_of(isle.state, function() return up end), "value")
    local code, e = code_of(isle.state, nil, "return function() end", coroutine.create(print))
    lu.assertEquals(code, "value")
    lu.assertStrContains(e.message, "args[1]")
    -- Setup must return the callback first.
    code, e = code_of(isle.state, "return 42")
    lu.assertEquals(code, "value")
    lu.assertStrContains(e.message, "setup must return the callback function first (got number)")
    code, e = code_of(isle.state, "return")
    lu.assertStrContains(e.message, "(got nothing)")
    -- Its other results must cross too.
    code, e = code_of(isle.state, "return function() end, coroutine.create(print)")
    lu.assertEquals(code, "value")
    lu.assertStrContains(e.message, "results[2]")
    local s = isle.state(COMMANDS)
    code, e = code_of(s.call, s, "echo", 1, { f = function() return up end })
    lu.assertEquals(code, "value")
    lu.assertStrContains(e.message, "args[3].f")
    code, e = code_of(s.call, s, "run", function() return coroutine.create(print) end)
    lu.assertEquals(code, "value")
    lu.assertStrContains(e.message, "results[1]")
    -- Nothing ran for the bad arguments; the state is fine.
    lu.assertEquals(s:call("inc"), 1)
    s:close()
end

function TestState:test_values_cross_both_ways()
    local s = isle.state(COMMANDS)
    local t = { a = { 1, 2, { x = "y" } }, [1.5] = true, big = 2 ^ 53, neg = -0.0 }
    local r = s:call("echo", t)
    lu.assertEquals(r, t)
    lu.assertEquals({ s:call("echo", nil, 2, nil) }, { nil, 2, nil })
    lu.assertEquals(select("#", s:call("echo", nil, 2, nil)), 3)
    lu.assertEquals(s:call("echo", 1234567890123LL), 1234567890123LL)
    local bin = "\0\1\255" .. string.rep("z", 100000)
    lu.assertEquals(s:call("echo", bin), bin)
    -- Functions without upvalues cross, both ways, and run where they land.
    lu.assertEquals(s:call("run", function(a, b) return a * b end, 6, 7), 42)
    local f = s:call("echo", function(x) return x + 1 end)
    lu.assertEquals(f(1), 2)
    s:close()
end

function TestState:test_callback_runs_on_the_calling_thread()
    local s = isle.state(COMMANDS)
    lu.assertEquals(s:call("tid"), tid())
    local h = isle.spawn{ init = "ffi = require('ffi') ffi.cdef('long syscall(long number, ...);')" }
    local there, isle_tid = h:eval("return require('isle').state_ref(...):call('tid'), tonumber(ffi.C.syscall(186))", s:id())
    lu.assertEquals(there, isle_tid)
    lu.assertNotEquals(there, tid())
    h:close()
    s:close()
end

function TestState:test_runtime_error_has_both_tracebacks()
    local s = isle.state("st-err", COMMANDS)
    local code, e = code_of(s.call, s, "fail", "boom")
    lu.assertEquals(code, "runtime")
    lu.assertStrContains(e.message, "boom")
    local text = tostring(e)
    lu.assertStrContains(text, "stack traceback (state " .. s:id() .. " 'st-err'):")
    lu.assertStrContains(text, "setup:") -- the state's frames
    lu.assertStrContains(text, "stack traceback (caller, host):")
    lu.assertStrContains(text, "test_state.lua") -- the caller's frames
    -- A non-string error value keeps its value and gets a message.
    code, e = code_of(s.call, s, "fail", { msg = "tbl" })
    lu.assertEquals(e.message, "tbl")
    lu.assertEquals(e.value, { msg = "tbl" })
    -- A failing setup: runtime error, the state is gone.
    code, e = code_of(isle.state, "local x = 1\nerror('setup broke')")
    lu.assertEquals(code, "runtime")
    lu.assertStrContains(e.message, "setup:2: setup broke")
    lu.assertStrContains(tostring(e), "stack traceback (caller, host):")
    code, e = code_of(isle.state, "this is not lua")
    lu.assertEquals(code, "runtime")
    lu.assertStrContains(e.message, "setup")
    s:close()
end

function TestState:test_state_ref_unknown_ambiguous_closed()
    local a = isle.state("ref-a", COMMANDS)
    local r = isle.state_ref(a:id())
    lu.assertFalse(r:isowner())
    lu.assertEquals(r:name(), "ref-a")
    lu.assertEquals(r:call("inc"), 1)
    lu.assertEquals(isle.state_ref("ref-a"):call("inc"), 2)
    lu.assertEquals(code_of(isle.state_ref, "ref-none"), "unknown")
    lu.assertEquals(code_of(isle.state_ref, 987654321), "unknown")
    -- Names need not be unique; looking up a shared one is ambiguous.
    local b = isle.state("ref-a", COMMANDS)
    lu.assertEquals(code_of(isle.state_ref, "ref-a"), "ambiguous")
    lu.assertEquals(isle.state_ref(b:id()):call("inc"), 1)
    b:close()
    lu.assertEquals(isle.state_ref("ref-a"):id(), a:id())
    -- Closed: `closed` through every object, `unknown` for lookups.
    a:close()
    lu.assertTrue(a:close()) -- idempotent
    lu.assertEquals(code_of(a.call, a, "inc"), "closed")
    lu.assertEquals(code_of(r.call, r, "inc"), "closed")
    lu.assertEquals(code_of(r.tcall, r, 1, "inc"), "closed")
    lu.assertEquals(code_of(r.interrupt, r), "closed")
    lu.assertEquals(code_of(isle.state_ref, a:id()), "unknown")
    lu.assertEquals(code_of(isle.state_ref, "ref-a"), "unknown")
    lu.assertTrue(r:is_closed())
    lu.assertStrContains(tostring(r), "[closed]")
end

function TestState:test_state_ref_from_inside_an_isle()
    local s = isle.state("from-isle", COMMANDS)
    local h = isle.spawn{}
    lu.assertEquals(h:eval("return require('isle').state_ref('from-isle'):call('inc', 5)"), 5)
    local e = h:eval("local ok, e = pcall(require('isle').state_ref, 'nope') return e")
    lu.assertEquals(e.code, "unknown")
    h:close()
    s:close()
end

function TestState:test_reentry_raises_instead_of_deadlocking()
    local s = isle.state(COMMANDS)
    local self_call = "return require('isle').state_ref(...):call('get')"
    local code, e = code_of(s.call, s, "run", loadstring(self_call), s:id())
    -- The re-entry raised inside the callback, which reports it as its error.
    lu.assertEquals(code, "busy")
    lu.assertStrContains(e.message, "re-entry")
    code, e = code_of(s.call, s, "run", loadstring("return require('isle').state_ref(...):tcall(1, 'get')"), s:id())
    lu.assertEquals(code, "busy")
    code, e = code_of(s.call, s, "run", loadstring("return require('isle').state_ref(...):close()"), s:id())
    lu.assertEquals(code, "busy")
    lu.assertStrContains(e.message, "from inside its own callback")
    -- Another state may be called from a callback.
    local other = isle.state(COMMANDS)
    lu.assertEquals(s:call("run", loadstring("return require('isle').state_ref(...):call('inc', 3)"), other:id()), 3)
    lu.assertEquals(s:call("inc"), 1)
    other:close()
    s:close()
end

function TestState:test_close_while_a_call_runs_is_busy()
    local s = isle.state(COMMANDS)
    local t, h, mem = hold_on_isle(s)
    local code, e = code_of(s.close, s)
    lu.assertEquals(code, "busy")
    lu.assertStrContains(e.message, "running a call on another thread")
    mem[0] = 1
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertTrue(s:close())
    h:close()
end

function TestState:test_tcall_timeout_while_another_thread_holds_the_lock()
    local s = isle.state(COMMANDS)
    lu.assertEquals({ s:tcall(0, "inc") }, { true, 1 })
    local t, h, mem = hold_on_isle(s)
    local t0 = isle.now()
    lu.assertEquals({ s:tcall(0.05, "inc") }, { false })
    lu.assertTrue(isle.now() - t0 >= 0.04)
    lu.assertEquals({ s:tcall(0, "inc") }, { false })
    -- A waiting tcall gets in as soon as the holder leaves.
    local h2 = isle.spawn{}
    local t2 = h2:spawn_eval("return require('isle').state_ref(...):tcall(30, 'inc', 10)", s:id())
    lu.assertTrue(helpers.eventually(function() return t2:status() == "running" end, 10))
    isle.sleep(0.02) -- it is inside the call now, waiting for the lock
    mem[0] = 1
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertEquals({ t2:wait(10) }, { true, true, 11 })
    lu.assertEquals(s:call("get"), 11)
    h:close()
    h2:close()
    s:close()
end

-- The timeout covers the wait for the lock, not the call.
function TestState:test_tcall_timeout_does_not_bound_the_call()
    local s = isle.state("return function(s) local t = require('isle').now() + s "
        .. "while require('isle').now() < t do end return 'done' end")
    lu.assertEquals({ s:tcall(0.01, 0.1) }, { true, "done" })
    s:close()
end

function TestState:test_an_isle_job_waiting_for_the_lock_lets_its_isle_serve()
    local s = isle.state(COMMANDS)
    local t, holder, mem = hold_on_isle(s)
    local h = isle.spawn{ init = "function ping() return 'pong' end" }
    local waiting = h:spawn_eval("return require('isle').state_ref(...):call('inc', 2)", s:id())
    lu.assertTrue(helpers.eventually(function() return waiting:status() == "running" end, 10))
    isle.sleep(0.02) -- it is inside the call now, waiting for the lock
    -- The isle serves other messages while its job waits for the lock.
    lu.assertEquals(h:call("ping"), "pong")
    -- And a tcall in a job gives up after its timeout, on the loop too.
    local t0 = isle.now()
    lu.assertEquals({ h:eval("return require('isle').state_ref(...):tcall(0.05, 'inc')", s:id()) }, { false })
    lu.assertTrue(isle.now() - t0 >= 0.04)
    mem[0] = 1
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertEquals({ waiting:wait(10) }, { true, 2 })
    -- A waiting job that is cancelled ends cancelled, and never runs.
    mem[0], mem[1] = 0, 0
    t = holder:spawn_eval("return require('isle').state_ref(...):call('hold', select(2, ...))", s:id(),
        tonumber(ffi.cast("uintptr_t", mem)))
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10))
    waiting = h:spawn_eval("return require('isle').state_ref(...):call('inc', 100)", s:id())
    lu.assertTrue(helpers.eventually(function() return waiting:status() == "running" end, 10))
    isle.sleep(0.02)
    waiting:cancel()
    local ok, e = waiting:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    mem[0] = 1
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertEquals(s:call("get"), 2)
    -- An interrupt of the waiting job's isle lands when the job resumes: the
    -- call fails `interrupted` and never runs.
    mem[0], mem[1] = 0, 0
    t = holder:spawn_eval("return require('isle').state_ref(...):call('hold', select(2, ...))", s:id(),
        tonumber(ffi.cast("uintptr_t", mem)))
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10))
    waiting = h:spawn_eval("return require('isle').state_ref(...):call('inc', 1000)", s:id())
    lu.assertTrue(helpers.eventually(function() return waiting:status() == "running" end, 10))
    isle.sleep(0.02)
    h:interrupt()
    mem[0] = 1
    ok, e = waiting:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertEquals(s:call("get"), 2)
    h:close()
    holder:close()
    s:close()
end

function TestState:test_gc_of_the_last_owner_closes()
    local s = isle.state(COMMANDS)
    local id = s:id()
    local r = isle.state_ref(id)
    lu.assertEquals(r:call("inc"), 1)
    s = nil
    collectgarbage()
    collectgarbage()
    lu.assertEquals(code_of(r.call, r, "inc"), "closed")
    lu.assertEquals(code_of(isle.state_ref, id), "unknown")
    -- References do not keep a state open; only owners do.
    local a = isle.singleton("gc-two-owners", COMMANDS)
    local b = isle.singleton("gc-two-owners", COMMANDS)
    lu.assertEquals(a:id(), b:id())
    a = nil
    collectgarbage()
    collectgarbage()
    lu.assertEquals(b:call("inc"), 1)
    b = nil
    collectgarbage()
    collectgarbage()
    lu.assertEquals(code_of(isle.state_ref, "gc-two-owners"), "unknown")
end

function TestState:test_gc_of_the_last_owner_during_a_call_closes_after_it()
    local s = isle.state(COMMANDS)
    local id = s:id()
    local r = isle.state_ref(id)
    local t, h, mem = hold_on_isle(s)
    s = nil
    collectgarbage()
    collectgarbage()
    -- Not findable any more, but the running call goes on.
    lu.assertEquals(code_of(isle.state_ref, id), "unknown")
    mem[0] = 1
    lu.assertEquals({ t:wait(10) }, { true, "held" })
    lu.assertTrue(helpers.eventually(function() return r:is_closed() end, 10))
    lu.assertEquals(code_of(r.call, r, "inc"), "closed")
    h:close()
end

function TestState:test_callback_rules_no_loop_of_its_own()
    local s = isle.state(COMMANDS)
    local run = function(src) return s:call("run", loadstring(src)) end
    -- Sleeping blocks the calling thread; it works.
    local t0 = isle.now()
    lu.assertEquals(run("require('isle').sleep(0.02) return 'slept'"), "slept")
    lu.assertTrue(isle.now() - t0 >= 0.015)
    -- Timers and go need a loop: refused.
    local code, e = code_of(run, "require('isle').timer.at(0, print)")
    lu.assertEquals(code, "runtime")
    lu.assertStrContains(e.message, "only inside an isle")
    -- Awaiting needs a driver that can resume: refused in the main coroutine.
    local h = isle.spawn{ init = "function f() return 1 end" }
    code, e = code_of(run, "return require('isle').lookup(...):spawn_call('f'):await()")
    lu.assertEquals(code, "runtime")
    -- Blocking calls to isles work (they block the thread).
    lu.assertEquals(s:call("run", loadstring("return require('isle').lookup(...):call('f')"), h:id()), 1)
    lu.assertNil(run("return require('isle').self()"))
    h:close()
    s:close()
end

-- The call path compiles on both sides: the caller's loop, and in the
-- state the dispatcher (a trace cannot return into C, nor return into
-- xpcall from a vararg function: "NYI: return to lower frame").
function TestState:test_calls_compile_on_both_sides()
    local s = isle.state({ instrument_loads = false }, [[
        ABORTS, TRACES = {}, 0
        local on_trace = loadstring("local vmdef = ... return function(what, tr, func, pc, otr, oex) "
            .. "if what == 'abort' then ABORTS[#ABORTS + 1] = tostring(vmdef.traceerr[otr]) "
            .. "elseif what == 'stop' then TRACES = TRACES + 1 end end")(require("jit.vmdef"))
        jit.attach(on_trace, "trace")
        return function(cmd, x)
            if cmd == "report" then return ABORTS, TRACES end
            return x + 1
        end
    ]])
    -- The caller: the loop below becomes a trace, calls included.
    local me = debug.getinfo(1, "f").func
    local started, looped = {}, false
    local function on_trace(what, tr, func)
        if what == "start" then started[tr] = func
        elseif what == "stop" and started[tr] == me then looped = true end
    end
    jit.attach(on_trace, "trace")
    local sum = 0
    for i = 1, 100000 do sum = sum + s:call("inc", i) end
    jit.attach(on_trace)
    lu.assertEquals(sum, 100000 * 100001 / 2 + 100000)
    lu.assertTrue(looped, "the caller's loop did not compile")
    -- The state: no trace aborts on something LuaJIT cannot compile. A
    -- dispatcher that cannot compile aborts about ten times with "NYI:
    -- return to lower frame" (each retry, until LuaJIT gives up on it), and
    -- runs interpreted, several times slower. Aborts that LuaJIT retries
    -- and that depend on timing are not failures: the count hook firing
    -- while a trace records, or a trace that started in a loop and left it
    -- ("leaving loop in root trace", about 1 run in 8 on luajit2).
    local inside, traces = s:call("report")
    lu.assertTrue(traces > 0)
    for _, why in ipairs(inside) do
        if why:find("NYI", 1, true) then
            lu.fail("the state's dispatcher aborted a trace: " .. table.concat(inside, "; "))
        end
    end
    s:close()
end

TestStateInterrupt = {}

-- A compiled loop inside a callback stops on s:interrupt(), JIT on.
function TestStateInterrupt:test_interrupt_stops_a_compiled_loop()
    -- The trace counter is loaded without checkpoints (instrument_loads =
    -- false): LuaJIT runs VM event handlers in a pcall of its own, which
    -- would swallow an interrupt landing there (docs/jit-safety.md).
    local s = isle.state({ instrument_loads = false }, [[
        local ffi = require("ffi")
        local count = loadstring("TRACED = 0 return function(what) if what == 'stop' then TRACED = TRACED + 1 end end")()
        jit.attach(count, "trace")
        return function(cmd, addr)
            if cmd == "traced" then return TRACED end
            local traced = TRACED
            local m = ffi.cast("int32_t *", addr)
            m[1] = 1
            local x = 0
            while true do x = x + 1 if x % 1000000 == 0 then m[0] = TRACED end end
        end
    ]])
    local mem, addr = helpers.shared_ints(2)
    local h = isle.spawn{}
    local t = h:spawn_eval("return require('isle').state_ref(...):call('spin', select(2, ...))", s:id(), addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10))
    lu.assertTrue(helpers.eventually(function() return mem[0] > 0 end, 10), "the JIT compiled nothing")
    isle.sleep(0.02)
    lu.assertEquals(t:status(), "running")
    local t0 = isle.now()
    s:interrupt()
    local ok, e = t:wait(10)
    lu.assertFalse(ok, "the compiled loop did not stop")
    lu.assertEquals(e.code, "interrupted")
    lu.assertTrue(isle.now() - t0 < 5)
    -- Once: the next call runs.
    lu.assertTrue(s:call("traced") > 0)
    h:close()
    s:close()
end

-- Runs s:call(cmd, addr) on an isle until the code is inside its loop.
local function running_on_isle(h, s, cmd)
    local mem, addr = helpers.shared_ints(2)
    local t = h:spawn_eval("return require('isle').state_ref(...):call(select(2, ...))", s:id(), cmd, addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10), cmd .. " did not start")
    return t
end

function TestStateInterrupt:test_once_always_clear()
    local s = isle.state(COMMANDS)
    local h = isle.spawn{}
    -- A request for an idle state waits for its next code.
    s:interrupt()
    lu.assertEquals(code_of(s.call, s, "spin"), "interrupted")
    lu.assertEquals(s:call("inc"), 1)
    -- A single interrupt can be caught like any error.
    local t = running_on_isle(h, s, "catch_spin")
    s:interrupt()
    lu.assertEquals({ t:wait(10) }, { true, "caught", "interrupted" })
    -- Always: every call until cleared, even one whose code catches it.
    t = running_on_isle(h, s, "catch_spin")
    s:interrupt(true)
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    lu.assertEquals(code_of(s.call, s, "spin"), "interrupted")
    lu.assertEquals(code_of(s.call, s, "inc"), "interrupted")
    s:interrupt(false)
    lu.assertEquals(s:call("inc"), 2)
    -- The interrupted error shows where it landed, and the caller.
    s:interrupt()
    local _, err = code_of(s.call, s, "spin")
    lu.assertStrContains(tostring(err), "stack traceback (state " .. s:id())
    lu.assertStrContains(tostring(err), "stack traceback (caller")
    h:close()
    s:close()
end

TestStateMany = {}
TestStateMany.deadline = 300

-- 1,000 states, each called from the host and from an isle at once.
function TestStateMany:test_1000_states_called_from_two_threads()
    local N, ROUNDS = 1000, 20
    local states, ids = {}, {}
    for i = 1, N do
        states[i] = isle.state({ instrument_loads = false }, "local n = 0 return function(d) n = n + d return n end")
        ids[i] = states[i]:id()
    end
    local h = isle.spawn{}
    local t = h:spawn_eval([[
        local isle = require('isle')
        local ids, rounds = ...
        local refs = {}
        for i = 1, #ids do refs[i] = isle.state_ref(ids[i]) end
        for r = 1, rounds do for i = #refs, 1, -1 do refs[i]:call(1) end end
        return true
    ]], ids, ROUNDS)
    for _ = 1, ROUNDS do
        for i = 1, N do states[i]:call(1000) end
    end
    lu.assertEquals({ t:wait(120) }, { true, true })
    for i = 1, N do
        lu.assertEquals(states[i]:call(0), ROUNDS * 1000 + ROUNDS, "state " .. i)
    end
    h:close()
    for i = 1, N do states[i]:close() end
end

-- 4 isles ask for the same singleton at once: one setup runs, all get an
-- owning object on the same state, all call it.
function TestStateMany:test_singleton_race_from_four_isles()
    local mem, addr = helpers.shared_ints(8) -- [0] gate, [1] setups run, [2 + i] isle i is ready
    local hs, ts = {}, {}
    for i = 1, 4 do
        hs[i] = isle.spawn{}
        ts[i] = hs[i]:spawn_eval([[
            local isle, ffi = require('isle'), require('ffi')
            local addr, i = ...
            local m = ffi.cast('int32_t *', addr)
            m[2 + i] = 1
            while m[0] == 0 do end
            local s = isle.singleton("race", function(a)
                local ffi = require("ffi")
                local m = ffi.cast("int32_t *", a)
                m[1] = m[1] + 1
                require("isle").sleep(0.05) -- the others must wait for this setup
                local calls = 0
                return function() calls = calls + 1 return calls end
            end, addr)
            KEEP = s -- the owner stays until the isle closes
            local last
            for _ = 1, 100 do last = s:call() end
            return s:isowner(), s:id(), last
        ]], addr, i)
    end
    lu.assertTrue(helpers.eventually(function() return mem[3] + mem[4] + mem[5] + mem[6] == 4 end, 10))
    mem[0] = 1
    local id
    for i = 1, 4 do
        local ok, owner, sid = ts[i]:wait(30)
        lu.assertTrue(ok, tostring(owner))
        lu.assertTrue(owner)
        id = id or sid
        lu.assertEquals(sid, id)
    end
    lu.assertEquals(mem[1], 1, "setup ran more than once")
    -- Each isle keeps its owner: the state is closed once all four isles
    -- have closed (their states close, their owners go).
    local r = isle.state_ref(id)
    lu.assertEquals(r:call(), 401)
    for i = 1, 4 do hs[i]:close() end
    lu.assertTrue(helpers.eventually(function() collectgarbage() return r:is_closed() end, 10))
end

function TestStateMany:test_singleton_failed_setup_lets_the_next_retry()
    local code, e = code_of(isle.singleton, "retry-me", "error('first try fails')")
    lu.assertEquals(code, "runtime")
    lu.assertStrContains(e.message, "first try fails")
    lu.assertEquals(code_of(isle.state_ref, "retry-me"), "unknown")
    local s, extra = isle.singleton("retry-me", "return function() return 'ok' end, 'made'")
    lu.assertEquals(extra, "made")
    lu.assertEquals(s:call(), "ok")
    -- Found, not made: the owner only.
    local again, none = isle.singleton("retry-me", "error('not run')")
    lu.assertNil(none)
    lu.assertTrue(again:isowner())
    lu.assertEquals(again:id(), s:id())
    s:close()
end

function TestStateMany:test_singleton_ambiguous_and_from_its_own_setup()
    local a = isle.state("twice", "return function() end")
    local b = isle.state("twice", "return function() end")
    lu.assertEquals(code_of(isle.singleton, "twice", "return function() end"), "ambiguous")
    a:close()
    b:close()
    local code, e = code_of(isle.singleton, "self-asking",
        "require('isle').singleton('self-asking', 'return function() end') return function() end")
    lu.assertEquals(code, "busy")
    lu.assertStrContains(e.message, "from its own setup")
end

-- While one caller's setup runs, others wait: a job on its loop (the isle
-- keeps serving), a host blocked.
function TestStateMany:test_singleton_callers_wait_for_a_setup()
    local mem, addr = helpers.shared_ints(2)
    local h = isle.spawn{}
    local t = h:spawn_eval([[
        local s = require('isle').singleton("slow-setup", function(a)
            local m = require("ffi").cast("int32_t *", a)
            m[1] = 1
            while m[0] == 0 do end
            return function() return "slow" end
        end, ...)
        KEEP = s
        return s:id()
    ]], addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10))
    local h2 = isle.spawn{ init = "function ping() return 'pong' end" }
    local t2 = h2:spawn_eval("return require('isle').singleton('slow-setup', 'error(\"not run\")'):call()")
    lu.assertTrue(helpers.eventually(function() return t2:status() == "running" end, 10))
    isle.sleep(0.02) -- inside isle.singleton now, waiting for the setup
    lu.assertEquals(h2:call("ping"), "pong")
    -- Another isle lets the setup finish while the host waits for it.
    local h3 = isle.spawn{}
    h3:spawn_eval("require('isle').sleep(0.1) require('ffi').cast('int32_t *', ...)[0] = 1", addr)
    local s = isle.singleton("slow-setup", "error('not run')")
    local ok, id = t:wait(10)
    lu.assertTrue(ok, tostring(id))
    lu.assertEquals(s:id(), id)
    lu.assertEquals(s:call(), "slow")
    lu.assertEquals({ t2:wait(10) }, { true, "slow" })
    for _, x in ipairs({ h, h2, h3 }) do x:close() end
    s:close()
end

TestStateLife = {}

-- A host state that ends with owners alive closes their states (their
-- finalizers run: a marker file appears).
function TestStateLife:test_teardown_closes_owned_states()
    local marker = os.tmpname()
    os.remove(marker)
    local script = os.tmpname()
    local f = io.open(script, "w")
    f:write(([[
        local isle = require("isle")
        keep = isle.state(function(path)
            local p = newproxy(true)
            getmetatable(p).__gc = function() local f = io.open(path, "w") f:write("closed") f:close() end
            KEEP = p
            return function() return 1 end
        end, %q)
        assert(keep:call() == 1)
    ]]):format(marker))
    f:close()
    local out, rc = helpers.sh(helpers.luajit() .. " " .. script)
    os.remove(script)
    lu.assertEquals(rc, 0, out)
    local m = io.open(marker)
    lu.assertNotNil(m, "the state was not closed when its owner's state closed")
    lu.assertEquals(m:read("*a"), "closed")
    m:close()
    os.remove(marker)
end

ffi.cdef[[
int fork(void);
int waitpid(int pid, int *status, int options);
void _exit(int status);
]]

function TestStateLife:test_objects_from_before_a_fork_raise_in_the_child()
    local s = isle.state("forked", COMMANDS)
    lu.assertEquals(s:call("inc"), 1)
    io.stdout:flush()
    io.stderr:flush()
    local pid = ffi.C.fork()
    if pid == 0 then
        local rc = 0
        local ok, e = pcall(s.call, s, "inc")
        if ok or not tostring(e):find("before a fork", 1, true) then rc = 1 end
        ok, e = pcall(s.close, s)
        if ok or not tostring(e):find("before a fork", 1, true) then rc = 2 end
        -- The parent's states are not in the child's registry; new ones work.
        ok = pcall(isle.state_ref, "forked")
        if ok then rc = 3 end
        local mine = isle.state("return function(x) return x * 2 end")
        if mine:call(21) ~= 42 then rc = 4 end
        mine:close()
        ffi.C._exit(rc)
    end
    local status = ffi.new("int[1]")
    ffi.C.waitpid(pid, status, 0)
    lu.assertEquals(status[0], 0)
    lu.assertEquals(s:call("inc"), 2)
    s:close()
end

function TestStateLife:test_count_returns_to_zero()
    collectgarbage()
    collectgarbage()
    local C = require("isle.cdef").C
    local before = C.isle_state_count()
    local list = {}
    for i = 1, 20 do list[i] = isle.state("return function() end") end
    lu.assertEquals(C.isle_state_count(), before + 20)
    list = nil
    collectgarbage()
    collectgarbage()
    lu.assertEquals(C.isle_state_count(), before)
end

os.exit(lu.LuaUnit.run())
