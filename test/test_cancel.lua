-- Cancellation, timeouts, tokens and interrupts, with the JIT on (issue 3).
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")

local err_of = helpers.err_of

local shared_ints = helpers.shared_ints

local function wait_until(cond, what)
    local deadline = isle.now() + 10
    while not cond() do
        if isle.now() > deadline then error("timed out waiting for " .. what, 2) end
        isle.sleep(0.001)
    end
end

local LIB = [[
    ffi = require("ffi")
    function mem(addr) return ffi.cast("int32_t *", addr) end
    -- Counts finished traces into mem[0], so tests can see that a loop compiled.
    function watch_traces(addr)
        local m = mem(addr)
        jit.attach(function(what) if what == "stop" then m[0] = m[0] + 1 end end, "trace")
    end
    function spin(addr)
        local m = addr and mem(addr)
        local x = 0
        while true do x = x + 1 if m then m[1] = 1 end end
    end
    function slow(s) require("isle").sleep(s) return "slept" end
]]

TestCancel = {}

function TestCancel:setUp() self.h = isle.spawn{ init = LIB } end
function TestCancel:tearDown() self.h:close{ cancel = true } end

function TestCancel:test_cancel_queued_task_never_runs()
    local mem, addr = shared_ints(2)
    -- A gate that never yields keeps the next message queued.
    local gmem, gaddr = helpers.gate_memory()
    local blocker = self.h:spawn_eval(helpers.GATE, gaddr)
    local t = self.h:spawn_eval("require('ffi').cast('int32_t *', ...)[0] = 1 return 'ran'", addr)
    lu.assertEquals(t:status(), "queued")
    t:cancel()
    gmem[0] = 1
    lu.assertEquals(t:status(), "cancelled")
    local ok, e = t:wait()
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertEquals({ blocker:wait() }, { true, "gate" })
    lu.assertEquals(self.h:eval("return 1"), 1)
    lu.assertEquals(mem[0], 0)
end

function TestCancel:test_cancel_interpreted_loop()
    local mem, addr = shared_ints(2)
    local t = self.h:spawn_eval("jit.off() local m = require('ffi').cast('int32_t *', ...) "
        .. "local x = 0 while true do x = x + 1 m[1] = 1 end", addr)
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertEquals(t:status(), "cancelled")
    lu.assertEquals(self.h:eval("jit.on() return 'next'"), "next")
end

function TestCancel:test_cancel_jit_compiled_loop_in_eval()
    local mem, addr = shared_ints(2)
    self.h:call("watch_traces", addr)
    lu.assertTrue(self.h:eval("return jit.status()"))
    local t = self.h:spawn_eval("local m = require('ffi').cast('int32_t *', ...) "
        .. "local x = 0 while true do x = x + 1 m[1] = 1 end", addr)
    wait_until(function() return mem[1] == 1 and mem[0] > 0 end, "the loop to be compiled")
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok, "a compiled loop was not stopped")
    lu.assertEquals(e.code, "cancelled")
    lu.assertTrue(self.h:eval("return jit.status()"), "the JIT must still be on")
end

function TestCancel:test_cancel_compiled_loop_in_init_function()
    local mem, addr = shared_ints(2)
    self.h:call("watch_traces", addr)
    local t = self.h:spawn_call("spin", addr)
    wait_until(function() return mem[1] == 1 and mem[0] > 0 end, "the loop to be compiled")
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
end

function TestCancel:test_pcall_cannot_swallow_a_cancel()
    local mem, addr = shared_ints(2)
    local t = self.h:spawn_eval([[
        local m = require("ffi").cast("int32_t *", ...)
        local caught = 0
        while true do
            local ok = pcall(function()
                pcall(pcall, function() while true do m[1] = 1 end end)
                while true do end
            end)
            caught = caught + 1
            m[0] = caught
        end
    ]], addr)
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertTrue(mem[0] <= 1, "the cancel was swallowed " .. mem[0] .. " times")
end

function TestCancel:test_cancel_that_code_catches_and_returns_still_cancels()
    local mem, addr = shared_ints(2)
    local t = self.h:spawn_eval([[
        local m = require("ffi").cast("int32_t *", ...)
        local ok, e = pcall(function() while true do m[1] = 1 end end)
        return "escaped", e
    ]], addr)
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
end

function TestCancel:test_cancel_during_sleep_wakes_at_once()
    local t = self.h:spawn_call("slow", 60)
    wait_until(function() return t:status() == "running" end, "the task to start")
    local t0 = isle.now()
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertTrue(isle.now() - t0 < 5, "sleep was not woken")
    -- The isle keeps serving.
    lu.assertEquals(self.h:eval("return 2"), 2)
end

function TestCancel:test_cancel_while_waiting_on_another_task_cancels_both()
    local mem, addr = shared_ints(2)
    local other = isle.spawn{ name = "cancel-other", init = LIB .. [[
        -- Records how its sleep ended: 1 slept, 2 cancelled, 3 anything else.
        function guarded_sleep(addr, s)
            local m = mem(addr)
            local ok, e = pcall(require("isle").sleep, s)
            m[0] = ok and 1 or (e.code == "cancelled" and 2 or 3)
        end
    ]] }
    local t = self.h:spawn_eval([[
        local o = require("isle").lookup("cancel-other")
        return o:call("guarded_sleep", ...)
    ]], addr, 60)
    wait_until(function() return t:status() == "running" end, "the task to start")
    isle.sleep(0.05)
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    -- The abandoned inner call was cancelled too, in the other isle.
    wait_until(function() return mem[0] ~= 0 end, "the inner call to end")
    lu.assertEquals(mem[0], 2)
    other:close{ cancel = true }
end

function TestCancel:test_task_wait_in_isle_is_a_blocking_point()
    local t = self.h:spawn_eval([[
        local isle = require("isle")
        local inner = isle.self():spawn_call("slow", 60)
        return inner:wait()
    ]])
    wait_until(function() return t:status() == "running" end, "the task to start")
    isle.sleep(0.05)
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
end

function TestCancel:test_timeout_on_running_compiled_loop()
    local e = err_of(self.h:with{ timeout = 0.1 }.call, self.h:with{ timeout = 0.1 }, "spin")
    lu.assertEquals(e.code, "timeout")
    lu.assertEquals(self.h:with{ timeout = 5 }:eval("return 'fast'"), "fast")
end

function TestCancel:test_timeout_while_queued()
    local mem, addr = helpers.gate_memory()
    local gate = self.h:spawn_eval(helpers.GATE, addr)
    local t = self.h:with{ timeout = 0.05 }:spawn_eval("return 'ran'")
    local ok, e = t:wait(10)
    mem[0] = 1
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    lu.assertEquals(t:status(), "cancelled")
    lu.assertEquals({ gate:wait() }, { true, "gate" })
end

function TestCancel:test_bad_options()
    lu.assertStrContains(err_of(self.h.with, self.h, { nope = 1 }), "unknown call option 'nope'")
    lu.assertStrContains(err_of(self.h.with, self.h, { timeout = -1 }), "timeout")
    lu.assertStrContains(err_of(self.h.with, self.h, { token = {} }), "token")
    lu.assertStrContains(err_of(self.h.with, self.h, 3), "bad argument #1 to 'with'")
end

TestToken = {}

function TestToken:test_token_shared_by_tasks_in_two_isles_and_passed_as_value()
    local a = isle.spawn{ name = "tok-a", init = LIB }
    local b = isle.spawn{ name = "tok-b", init = LIB }
    local tok = isle.token()
    lu.assertFalse(tok:cancelled())
    local ta = a:with{ token = tok }:spawn_call("spin")
    local tb = b:with{ token = tok }:spawn_call("slow", 60)
    -- A task in b started from inside a, with the token passed as a value.
    local relay = a:spawn_eval([[
        local tok = ...
        assert(getmetatable(tok) == require("isle").Token)
        return require("isle").lookup("tok-b"):with{ token = tok }:spawn_call("slow", 60):wait()
    ]], tok)
    wait_until(function() return ta:status() == "running" and tb:status() == "running" end, "tasks to start")
    isle.sleep(0.05)
    tok:cancel()
    lu.assertTrue(tok:cancelled())
    lu.assertEquals(select(2, ta:wait(10)).code, "cancelled")
    lu.assertEquals(select(2, tb:wait(10)).code, "cancelled")
    -- relay's own task is not tied to the token, but the wait inside it ends with "cancelled".
    local ok, inner_ok, inner_err = relay:wait(10)
    lu.assertTrue(ok)
    lu.assertFalse(inner_ok)
    lu.assertEquals(inner_err.code, "cancelled")
    -- A cancelled token stops new work at once.
    local late = a:with{ token = tok }:spawn_eval("return 'ran'")
    lu.assertEquals(select(2, late:wait(10)).code, "cancelled")
    -- Other work is unaffected.
    lu.assertEquals(a:eval("return 'ok'"), "ok")
    a:close{ cancel = true }
    b:close{ cancel = true }
end

TestInterrupt = {}

function TestInterrupt:setUp() self.h = isle.spawn{ init = LIB } end
function TestInterrupt:tearDown() self.h:close{ cancel = true } end

function TestInterrupt:test_interrupt_once()
    local mem, addr = shared_ints(2)
    local t = self.h:spawn_call("spin", addr)
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    self.h:interrupt()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    -- Once means once: the next call runs normally.
    lu.assertEquals(self.h:eval("local n = 0 for i = 1, 1e6 do n = n + 1 end return n"), 1e6)
end

function TestInterrupt:test_interrupt_always_then_clear()
    self.h:interrupt(true)
    lu.assertEquals(err_of(self.h.eval, self.h, "while true do end").code, "interrupted")
    -- pcall cannot outlast it: every checkpoint interrupts again.
    local e = err_of(self.h.eval, self.h, "for i = 1, 10 do pcall(function() while true do end end) end")
    lu.assertEquals(e.code, "interrupted")
    self.h:interrupt(false)
    lu.assertEquals(self.h:eval("local n = 0 for i = 1, 1e6 do n = n + 1 end return n"), 1e6)
end

function TestInterrupt:test_interrupt_one_coroutine_not_its_sibling()
    -- In this (host) state: two coroutines; an isle interrupts one by id.
    -- The loop is loaded with isle.load, so it has checkpoints once compiled.
    local worker = isle.load([[
        local n = 0
        while true do
            n = n + 1
            if n % 1000 == 0 then coroutine.yield(n) end
        end
    ]])
    local a, b = coroutine.create(worker), coroutine.create(worker)
    local ida, idb = isle.interrupt_id(a), isle.interrupt_id(b)
    lu.assertNotEquals(ida, idb)
    for _ = 1, 50 do assert(coroutine.resume(a)) assert(coroutine.resume(b)) end
    self.h:eval("require('isle').interrupt(...)", ida)
    local okb, nb = coroutine.resume(b)
    lu.assertTrue(okb)
    lu.assertEquals(nb, 51000)
    local oka, ea = coroutine.resume(a)
    lu.assertFalse(oka)
    lu.assertEquals(ea.code, "interrupted")
    for _ = 1, 10 do lu.assertTrue((coroutine.resume(b))) end
end

function TestInterrupt:test_interrupt_host_state_from_isle_compiled_and_interpreted()
    local id = isle.interrupt_id()
    -- Compiled: code loaded with isle.load has checkpoints in its loops.
    local loop = isle.load("local x = 0 while true do x = x + 1 end", "=hostloop")
    local t = self.h:spawn_eval("require('isle').sleep(0.1) require('isle').interrupt(...)", id)
    local e = err_of(loop)
    lu.assertEquals(e.code, "interrupted")
    lu.assertTrue(t:wait(10))
    -- Interpreted: the count hook this state installed on itself.
    local interp = function() local x = 0 while true do x = x + 1 end end
    jit.off(interp)
    self.h:spawn_eval("require('isle').sleep(0.1) require('isle').interrupt(...)", id)
    lu.assertEquals(err_of(interp).code, "interrupted")
end

function TestInterrupt:test_on_interrupt_handler_runs_instead_of_raising()
    local hits = 0
    local id = isle.interrupt_id()
    isle.on_interrupt(function(got) lu.assertEquals(got, id) hits = hits + 1 end)
    local loop = isle.load("local hits = ... local n = 0 while hits() == 0 do n = n + 1 end return n")
    self.h:spawn_eval("require('isle').sleep(0.05) require('isle').interrupt(...)", id)
    local n = loop(function() return hits end)
    lu.assertEquals(hits, 1)
    lu.assertTrue(n > 0)
    isle.on_interrupt(nil)
end

function TestInterrupt:test_unknown_ids()
    lu.assertEquals(err_of(isle.interrupt, 2 ^ 40).code, "unknown")
    local id = self.h:interrupt_id()
    local h2 = isle.spawn{}
    local id2 = h2:interrupt_id()
    h2:close()
    lu.assertEquals(err_of(isle.interrupt, id2).code, "unknown")
    lu.assertTrue(isle.interrupt(id, false))
    local co = coroutine.create(function() end)
    local cid = isle.interrupt_id(co)
    co = nil
    collectgarbage()
    collectgarbage()
    lu.assertEquals(err_of(isle.interrupt, cid).code, "unknown")
    lu.assertStrContains(err_of(isle.interrupt, "x"), "bad argument #1 to 'interrupt'")
    lu.assertStrContains(err_of(isle.interrupt_id, 5), "bad argument #1 to 'interrupt_id'")
end

function TestInterrupt:test_blocking_ffi_call_is_interrupted_when_it_returns()
    local mem, addr = shared_ints(2)
    local t = self.h:spawn_eval([[
        local ffi = require("ffi")
        pcall(ffi.cdef, "int usleep(unsigned int usec);")
        local m = ffi.cast("int32_t *", ...)
        for i = 1, 20 do
            m[1] = 1
            ffi.C.usleep(100000)
            m[0] = i
        end
        return "not stopped"
    ]], addr)
    wait_until(function() return mem[1] == 1 end, "the task to start")
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    -- It could not stop inside usleep, but stopped at the first checkpoint after it.
    lu.assertTrue(mem[0] <= 2, "ran on for " .. mem[0] .. " iterations")
end

function TestInterrupt:test_explicit_checkpoint()
    local mem, addr = shared_ints(2)
    -- Without instrumentation exec ships bytecode: isle.checkpoint() keeps it stoppable.
    local t = self.h:with{ instrument = false }:spawn_exec(function(a)
        local isle = require("isle")
        local m = require("ffi").cast("int32_t *", a)
        local x = 0
        while true do x = x + 1 m[1] = 1 isle.checkpoint() end
    end, addr)
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    isle.sleep(0.05)
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
end

function TestInterrupt:test_exec_function_is_instrumented_from_its_source()
    local mem, addr = shared_ints(2)
    self.h:call("watch_traces", addr)
    local t = self.h:spawn_exec(function(a)
        local m = require("ffi").cast("int32_t *", a)
        local x = 0
        while true do x = x + 1 m[1] = 1 end
    end, addr)
    wait_until(function() return mem[1] == 1 and mem[0] > 0 end, "the loop to be compiled")
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
    -- Errors keep the file and line of the function's own source.
    local line = debug.getinfo(1, "l").currentline + 1
    local e = err_of(self.h.exec, self.h, function() error("from exec") end)
    lu.assertStrContains(e.message, "test_cancel.lua:" .. line .. ": from exec")
    -- A function whose source cannot be had still runs (as bytecode).
    local f = loadstring("return function(x) return x + 1 end", "=nosource")()
    lu.assertEquals(self.h:exec(f, 1), 2)
end

function TestInterrupt:test_init_function_is_instrumented()
    local mem, addr = shared_ints(2)
    local h = isle.spawn{ init = function(a)
        local m = require("ffi").cast("int32_t *", a)
        function spin_here() local x = 0 while true do x = x + 1 m[1] = 1 end end
    end, args = { addr } }
    local t = h:spawn_call("spin_here")
    wait_until(function() return mem[1] == 1 end, "the loop to start")
    isle.sleep(0.05)
    t:cancel()
    lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
    h:close()
end

function TestInterrupt:test_instrument_can_be_turned_off()
    local h = isle.spawn{ instrument = false, init = "function f() return debug.getinfo(1, 'S').what end" }
    lu.assertEquals(h:call("f"), "Lua")
    lu.assertEquals(h:eval("return debug.getinfo(1, 'S').what"), "main")
    lu.assertEquals(self.h:with{ instrument = false }:eval("return debug.getinfo(1, 'S').what"), "main")
    lu.assertEquals(self.h:eval("return debug.getinfo(1, 'S').what"), "Lua")
    h:close()
end

os.exit(lu.LuaUnit.run())
