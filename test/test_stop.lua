-- Nothing written in Lua is unstoppable (issue 7, parts 3-5): every shape of
-- code stops when asked, compiled or not; functions made inside isles cross
-- like any other; interrupts behave as mtint and mtstates define them.
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")

-- Each shape runs forever. `compiled`: the test first waits until the JIT
-- has compiled a trace while it runs (jit.attach inside the isle), so the
-- stop is proven against compiled code, not just the interpreter.
local SHAPES = {
    { "while loop", "while true do end", true },
    { "numeric for", "local x = 0 for i = 1, math.huge do x = x + i end", true },
    { "repeat", "local x = 0 repeat x = x + 1 until false", true },
    { "goto", "local x = 0 ::top:: x = x + 1 goto top", true },
    { "generic for with an iterator", "local function it(_, i) return i + 1 end for i in it, nil, 0 do end", true },
    { "tail call", "local function f() return f() end f()", true },
    { "mutual tail calls", "local g local function f() return g() end g = function() return f() end f()", true },
    { "plain recursion", "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end return fib(80)", true },
    { "__index", "local t = setmetatable({}, { __index = function(t, k) local n = 0 while true do n = n + 1 end end }) return t.x", true },
    { "__call", "local t = setmetatable({}, { __call = function() local n = 0 while true do n = n + 1 end end }) t()", true },
    { "__eq", "local mt = { __eq = function() while true do end end } local a, b = setmetatable({}, mt), setmetatable({}, mt) return a == b", true },
    { "__tostring of the error value", "error(setmetatable({}, { __tostring = function() while true do end end }))", false },
    { "table.sort comparator", "local t = {} for i = 1, 100 do t[i] = i end table.sort(t, function(a, b) while true do end end)", true },
    { "string.gsub callback", "return (('x'):gsub('x', function() while true do end end))", true },
    { "coroutine inside the job", "local co = coroutine.wrap(function() local n = 0 while true do n = n + 1 end end) co()", true },
    { "pcall around a loop", "while true do pcall(function() while true do end end) end", true },
    { "loadstring'd chunk", "loadstring('local n = 0 while true do n = n + 1 end')()", true },
    { "require'd module", "require('test.fixtures_spin').spin()", true },
    -- LuaJIT records no trace and runs no hook inside finalisers: only the
    -- checkpoints stop them (when the collection runs inside the job).
    { "__gc of a userdata", "local p = newproxy(true) getmetatable(p).__gc = function() local n = 0 "
        .. "while true do n = n + 1 end end p = nil collectgarbage() collectgarbage()", false },
    { "__gc of a cdata", "local ffi = require('ffi') local p = ffi.gc(ffi.new('int[1]'), function() "
        .. "local n = 0 while true do n = n + 1 end end) p = nil collectgarbage() collectgarbage()", false },
}

-- Tells the test the shape has started (the address comes as an argument:
-- written into the source as text it would lose digits).
local function prelude()
    return "local mem = require('ffi').cast('int32_t *', (...)) mem[1] = 1 "
end
-- Counts the traces the JIT finishes in the isle into mem[0]. Loaded
-- without checkpoints: LuaJIT runs VM event handlers inside a pcall of its
-- own, so a stop raised in one would be swallowed (docs/jit-safety.md).
local TRACE_ON = "local mem = require('ffi').cast('int32_t *', (...)) "
    .. "TRACED = function(what) if what == 'stop' then mem[0] = mem[0] + 1 end end "
    .. "jit.attach(TRACED, 'trace')"
local UNTRACE = "if TRACED then jit.attach(TRACED) TRACED = nil end"

TestShapes = {}

function TestShapes:setUp()
    self.h = isle.spawn{ init = "package.path = ... .. package.path", args = { "./test/?.lua;" } }
end
function TestShapes:tearDown() self.h:close{ cancel = true } end

-- Stops `code` with `stop(task, h)`; returns the latency in ms.
local function stop_shape(h, name, code, compiled, stop, want)
    local mem, addr = helpers.shared_ints(2)
    h:with{ instrument = false }:eval(TRACE_ON, addr)
    local t = h:spawn_eval(prelude() .. code, addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10), name .. ": did not start")
    if compiled then
        lu.assertTrue(helpers.eventually(function() return mem[0] > 0 end, 10),
            name .. ": the JIT compiled nothing while it ran")
    else
        isle.sleep(0.02)
    end
    lu.assertEquals(t:status(), "running", name)
    local t0 = isle.now()
    stop(t, h)
    local ok, e = t:wait(10)
    local ms = (isle.now() - t0) * 1000
    h:interrupt(false) -- an interrupt(true) must not reach the evals below
    lu.assertFalse(ok, name .. ": did not stop within 10 s")
    lu.assertEquals(e.code, want, name .. ": " .. tostring(e))
    h:eval(UNTRACE)
    -- The isle serves on.
    lu.assertEquals(h:eval("return 1 + 1"), 2, name)
    return ms
end

local latencies = {}

function TestShapes:test_cancel_stops_every_shape()
    for _, s in ipairs(SHAPES) do
        local ms = stop_shape(self.h, s[1], s[2], s[3], function(t) t:cancel() end, "cancelled")
        latencies[#latencies + 1] = string.format("%s %.2f ms", s[1], ms)
    end
    io.stderr:write("\n[stop] cancel latency: " .. table.concat(latencies, "; ") .. "\n")
end

function TestShapes:test_timeout_token_and_interrupt_stop_every_shape()
    for _, s in ipairs(SHAPES) do
        local tok = isle.token()
        local mem, addr = helpers.shared_ints(2)
        local t = self.h:with{ token = tok }:spawn_eval(prelude() .. s[2], addr)
        lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10), s[1])
        tok:cancel()
        local ok, e = t:wait(10)
        lu.assertFalse(ok, s[1])
        lu.assertEquals(e.code, "cancelled", s[1])

        local t2 = self.h:with{ timeout = 0.05 }:spawn_eval(s[2])
        local ok2, e2 = t2:wait(10)
        lu.assertFalse(ok2, s[1])
        lu.assertEquals(e2.code, "timeout", s[1])

        -- An interrupt (once) that stops the __tostring of an error value
        -- ends it: the job fails with its own error, described as such.
        local want = s[1]:find("__tostring", 1, true) and "runtime" or "interrupted"
        -- A pcall may catch a single interrupt and go on: interrupt(true)
        -- stops the job for good.
        local always = s[1]:find("pcall", 1, true) and true or nil
        stop_shape(self.h, s[1], s[2], false, function(_, h) h:interrupt(always) end, want)
        self.h:interrupt(false)
    end
end

function TestShapes:test_close_with_cancel_stops_every_shape()
    for _, s in ipairs(SHAPES) do
        local h = isle.spawn{ init = "package.path = ... .. package.path", args = { "./test/?.lua;" } }
        local mem, addr = helpers.shared_ints(2)
        local t = h:spawn_eval(prelude() .. s[2], addr)
        lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end, 10), s[1])
        h:close{ cancel = true } -- returns: the job stopped
        local ok, e = t:wait(1)
        lu.assertFalse(ok, s[1])
        lu.assertEquals(e.code, "closed", s[1])
    end
end

-- A job stuck inside a C call cannot be stopped: its task stays running past
-- its deadline, stats show it, and later calls wait instead of being lost.
function TestShapes:test_stuck_job_is_visible_and_later_calls_are_not_lost()
    local h = isle.spawn{ init = "ffi = require('ffi') ffi.cdef'int usleep(unsigned)'" }
    local t = h:with{ timeout = 0.05 }:spawn_eval("ffi.C.usleep(700000) return 'slept'")
    local later = {}
    for i = 1, 5 do later[i] = h:spawn_eval("return ...", i) end
    isle.sleep(0.3)
    lu.assertEquals(t:status(), "running") -- past its deadline
    local st = h:stats()
    lu.assertEquals(st.running, 1)
    lu.assertEquals(st.queued, 5)
    lu.assertNotNil(st.oldest)
    lu.assertEquals(st.oldest.job, "eval")
    lu.assertEquals(st.oldest.stopping, "timeout")
    lu.assertTrue(st.oldest.running_for >= 0.2)
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    for i = 1, 5 do lu.assertEquals({ later[i]:wait(10) }, { true, i }) end
    st = h:stats()
    lu.assertEquals(st.running, 0)
    lu.assertEquals(st.queued, 0)
    lu.assertNil(st.oldest)
    lu.assertEquals(st.cancelled, 1) -- a timeout is a cancel
    lu.assertTrue(st.done >= 5)
    h:close()
end

function TestShapes:test_stats_count_outcomes()
    local h = isle.spawn{ init = "function f(x) if x then error('no') end return 1 end" }
    lu.assertEquals(h:stats().done, 1) -- init
    h:call("f")
    pcall(h.call, h, "f", true)
    local mem, addr = helpers.shared_ints(2)
    local t = h:spawn_eval("require('ffi').cast('int32_t *', (...))[0] = 1 while true do end", addr)
    lu.assertTrue(helpers.eventually(function() return mem[0] == 1 end, 10))
    t:cancel()
    t:wait(10)
    local st = h:stats()
    lu.assertEquals(st.done, 2)
    lu.assertEquals(st.failed, 1)
    lu.assertEquals(st.cancelled, 1)
    h:close()
end

-- Functions made inside isles ------------------------------------------------

TestFunctions = {}

function TestFunctions:test_functions_from_isles_cross_everywhere()
    local a = isle.spawn{ init = "function make() return function(x) return x * 7 end end" }
    local f = a:eval("return function() return 7 end")
    lu.assertEquals(f(), 7)
    local g = a:call("make")
    lu.assertEquals(g(6), 42)
    local b = isle.spawn{}
    lu.assertEquals(b:exec(function(h, v) return h(v) end, g, 3), 21)
    lu.assertEquals(b:eval("local t = ... return t.f(2)", { f = g }), 14)
    lu.assertEquals(b:exec(g, 5), 35)
    local c = isle.spawn{ init = a:eval("return function() function hello() return 'hi' end end") }
    lu.assertEquals(c:call("hello"), "hi")
    -- a function that reaches a real upvalue is still refused, naming the count
    local ok, e = pcall(a.eval, a, "local up = 1 return function() return up end")
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "value")
    lu.assertStrContains(e.message, "1 upvalue")
    a:close() b:close() c:close()
end

function TestFunctions:test_functions_stay_stoppable_where_they_run()
    local a = isle.spawn{ init = "spin = function() local n = 0 while true do n = n + 1 end end" }
    local b = isle.spawn{}
    local spin = a:eval("return spin")
    local host_spin = function() local n = 0 while true do n = n + 1 end end
    for _, run in ipairs{
        function() return b:spawn_exec(spin) end,
        function() return b:spawn_eval("local f = ... f()", spin) end,
        function() return b:spawn_eval("local t = ... t[1]()", { spin }) end,
        function() return b:spawn_eval("local f = ... f()", host_spin) end,
    } do
        local t = run()
        isle.sleep(0.1) -- long enough for the loop to compile
        t:cancel()
        local ok, e = t:wait(10)
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "cancelled")
    end
    a:close() b:close()
end

-- Interrupts as mtint and mtstates define them -------------------------------

TestInterruptSemantics = {}

function TestInterruptSemantics:setUp() self.h = isle.spawn{} end
function TestInterruptSemantics:tearDown() self.h:close{ cancel = true } end

function TestInterruptSemantics:test_interrupt_id_in_a_coroutine_is_the_coroutine()
    local state, co, main = isle.interrupt_id(), nil, nil
    local c = coroutine.create(function() co = isle.interrupt_id() end)
    coroutine.resume(c)
    lu.assertEquals(co, isle.interrupt_id(c))
    lu.assertNotEquals(co, state)
    main = isle.interrupt_id()
    lu.assertEquals(main, state)
end

function TestInterruptSemantics:test_job_id_lives_for_the_job_only()
    local h = self.h
    local id1 = h:eval("return require('isle').interrupt_id()")
    lu.assertNotEquals(id1, h:interrupt_id())
    local ok, e = pcall(isle.interrupt, id1)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "unknown")
    local id2 = h:eval("return require('isle').interrupt_id()")
    lu.assertNotEquals(id2, id1)
end

function TestInterruptSemantics:test_interrupting_a_job_by_its_own_id()
    local mem, addr = helpers.shared_ints(2)
    local t = self.h:spawn_eval("local m = require('ffi').cast('int32_t *', ...) "
        .. "m[0] = require('isle').interrupt_id() while true do end", addr)
    lu.assertTrue(helpers.eventually(function() return mem[0] ~= 0 end, 10))
    isle.interrupt(mem[0])
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
end

function TestInterruptSemantics:test_interrupt_of_an_idle_isle_hits_its_next_code()
    local h = self.h
    h:interrupt()
    local ok, e = pcall(h.eval, h, "local n = 0 for i = 1, 10 do n = n + i end return n")
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    lu.assertEquals(h:eval("local n = 0 for i = 1, 10 do n = n + i end return n"), 55) -- once
    h:interrupt(true)
    for _ = 1, 3 do
        local ok2, e2 = pcall(h.eval, h, "for i = 1, 10 do end")
        lu.assertFalse(ok2)
        lu.assertEquals(e2.code, "interrupted")
    end
    h:interrupt(false)
    lu.assertEquals(h:eval("for i = 1, 10 do end return 'clear'"), "clear")
end

function TestInterruptSemantics:test_suspended_coroutine_fails_on_next_resume_even_if_it_only_yields()
    local r = { self.h:eval([[
        local isle = require("isle")
        local co = coroutine.create(function() coroutine.yield(1) coroutine.yield(2) coroutine.yield(3) end)
        local a = { coroutine.resume(co) }
        isle.interrupt(isle.interrupt_id(co))
        local ok, e = coroutine.resume(co)
        return a[2], ok, type(e) == "table" and e.code or tostring(e), coroutine.status(co)
    ]]) }
    lu.assertEquals(r, { 1, false, "interrupted", "dead" })
    -- and a wrapped one
    local r2 = { self.h:eval([[
        local isle = require("isle")
        local co
        local f = coroutine.wrap(function() co = coroutine.running() coroutine.yield(1) coroutine.yield(2) end)
        local a = f()
        isle.interrupt(isle.interrupt_id(co))
        local ok, e = pcall(f)
        return a, ok, e.code
    ]]) }
    lu.assertEquals(r2, { 1, false, "interrupted" })
end

function TestInterruptSemantics:test_interrupt_always_survives_pcall()
    local mem, addr = helpers.shared_ints(2)
    local t = self.h:spawn_eval([[
        local m = require('ffi').cast('int32_t *', ...)
        m[0] = 1
        local ok = pcall(function() while true do end end)
        return "caught and returned"
    ]], addr)
    lu.assertTrue(helpers.eventually(function() return mem[0] == 1 end, 10))
    isle.sleep(0.02)
    self.h:interrupt(true)
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    self.h:interrupt(false)
end

function TestInterruptSemantics:test_on_interrupt_handler_may_yield()
    local h = self.h
    h:eval([[
        local isle = require("isle")
        handled = 0
        isle.on_interrupt(function() isle.sleep(0.01) handled = handled + 1 end)
    ]])
    local mem, addr = helpers.shared_ints(2)
    -- from a checkpoint of compiled code
    local t = h:spawn_eval("local m = require('ffi').cast('int32_t *', ...) m[0] = 1 "
        .. "while handled == 0 do end return handled", addr)
    lu.assertTrue(helpers.eventually(function() return mem[0] == 1 end, 10))
    h:interrupt()
    lu.assertEquals({ t:wait(10) }, { true, 1 })
    -- from inside a C callback (table.sort), where it cannot yield: it blocks
    mem[0] = 0
    local t2 = h:spawn_eval("local m = require('ffi').cast('int32_t *', ...) m[0] = 1 "
        .. "local t = {3, 2, 1} table.sort(t, function(a, b) while handled < 2 do end return a < b end) "
        .. "return handled", addr)
    lu.assertTrue(helpers.eventually(function() return mem[0] == 1 end, 10))
    h:interrupt()
    lu.assertEquals({ t2:wait(10) }, { true, 2 })
    lu.assertEquals(h:eval("return 'alive'"), "alive")
end

function TestInterruptSemantics:test_handler_with_interrupt_always_lets_the_code_go_on()
    -- The handler's own checkpoints must not call it again (for ever).
    local h = self.h
    h:eval("local isle = require('isle') n = 0 isle.on_interrupt(function() n = n + 1 end)")
    h:interrupt(true)
    local sum, n = h:eval("local x = 0 for i = 1, 1000 do x = x + i end return x, n")
    h:interrupt(false)
    lu.assertEquals(sum, 500500)
    lu.assertTrue(n >= 1)
end

function TestInterruptSemantics:test_interrupt_while_isle_module_loads_does_not_break_it()
    local h = self.h
    h:interrupt(true)
    local ok, e = pcall(h.eval, h, "local isle = require('isle') for i = 1, 10 do end return 1")
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "interrupted")
    h:interrupt(false)
    lu.assertEquals(h:eval("return type(require('isle').spawn)"), "function")
end

-- A stop is raised only in user code: never in the worker's own frames
-- around a job's protected call (its error handler, the instructions
-- before it completes the task), where it would kill the isle's job
-- coroutine. With the count hook firing at every instruction and a sticky
-- stop raised by the job itself, the hook lands in each of those frames.
function TestInterruptSemantics:test_a_stop_never_lands_in_isles_own_frames()
    local h = self.h
    h:exec(function()
        debug.sethook(debug.gethook(), "", 1) -- isle's own hook, at every instruction
        function cancel_own(tok, how)
            tok:cancel()
            if how == "error" then error("after the cancel") end
            return 1
        end
    end)
    for _, how in ipairs{ "return", "error" } do
        for _ = 1, 10 do
            local tok = isle.token()
            local ok, e = h:with{ token = tok }:spawn_call("cancel_own", tok, how):wait(10)
            lu.assertFalse(ok, how)
            lu.assertEquals(e.code, "cancelled", how .. ": " .. tostring(e))
        end
    end
    lu.assertEquals(h:eval("debug.sethook(debug.gethook(), '', 1000) return 1 + 1"), 2)
end

os.exit(lu.LuaUnit.run())
