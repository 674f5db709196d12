-- The sandbox (issue 10): isle.spawn{sandbox = ...} and isle.state({sandbox
-- = ...}, setup). The probes of the issue, a corpus of known ways out of a
-- Lua 5.1 / LuaJIT sandbox (each test fails if its escape works), and the
-- features that must keep working inside. See docs/sandbox.md.
local lu = require("luaunit")
local isle = require("isle")
local helpers = require("test.helpers")

-- Runs `code` (a chunk string) in `h`; returns ok, value or error object.
local function try(h, code, ...)
    return pcall(h.eval, h, code, ...)
end

-- The chunk must fail; its error message must contain `want`.
local function refused(h, code, want)
    local ok, e = try(h, code)
    lu.assertFalse(ok, "escape worked: " .. code .. " returned " .. tostring(e))
    local msg = isle.is_error(e) and tostring(e.message) or tostring(e)
    if want then lu.assertStrContains(msg, want, false) end
    return e
end

-- The chunk must return true (the escape found nothing).
local function holds(h, code)
    local ok, v = try(h, code)
    lu.assertTrue(ok, code .. " failed: " .. tostring(v))
    lu.assertTrue(v, "escape worked: " .. code .. " returned " .. tostring(v))
end

TestSandbox = {}

function TestSandbox:setUp()
    self.h = isle.spawn{ sandbox = true, init = function()
        function add(a, b) return a + b end
        function echo(...) return ... end
    end }
end

function TestSandbox:tearDown()
    self.h:close{ cancel = true }
    lu.assertTrue(helpers.no_isle_live())
end

-- Only a sandboxed isle loads isle.sandbox at boot (31 KiB of heap that
-- every other isle would keep for nothing: bench/README.md, Issue 12); a
-- sandboxed one has it loaded before any of its code runs.
function TestSandbox:test_only_sandboxed_isles_load_the_sandbox_module()
    local plain = isle.spawn()
    local ok, v = pcall(plain.eval, plain, "return package.loaded['isle.sandbox'] ~= nil")
    plain:close()
    lu.assertTrue(ok, tostring(v))
    lu.assertFalse(v)
    lu.assertEquals(self.h:call("add", 2, 3), 5)
    -- An isle that loads it later (through require("isle")) still makes
    -- sandboxed isles.
    local outer = isle.spawn()
    ok, v = pcall(outer.eval, outer, [[
        local h = require("isle").spawn{ sandbox = true }
        local r = h:eval("return type(require)")
        h:close()
        return r
    ]])
    outer:close()
    lu.assertTrue(ok, tostring(v))
    lu.assertEquals(v, "function")
end

-- The probes of the issue ------------------------------------------------------

function TestSandbox:test_os_exit_refused()
    refused(self.h, "os.exit(3)", "os.exit is not allowed")
end

function TestSandbox:test_require_os_exit_with_libs_false_refused()
    local h = isle.spawn{ sandbox = true, libs = false }
    local ok, e = pcall(h.eval, h, "return os")
    lu.assertTrue(ok)
    lu.assertNil(e) -- libs = false: no os global
    refused(h, "require('os').exit(4)", "os.exit is not allowed")
    h:close()
end

function TestSandbox:test_require_ffi_refused()
    refused(self.h, "return require('ffi')", "require('ffi') is not allowed")
    refused(self.h, "return require('ffi').C._exit(5)", "require('ffi') is not allowed")
end

function TestSandbox:test_ffi_cannot_be_granted()
    for _, name in ipairs({ "ffi", "debug", "jit", "jit.util", "string.buffer", "isle.cdef", "isle.runtime" }) do
        local ok, e = pcall(isle.spawn, { sandbox = { require = { name } } })
        lu.assertFalse(ok, name)
        lu.assertStrContains(tostring(e), "cannot grant require('" .. name .. "')")
    end
end

function TestSandbox:test_isle_internals_refused()
    for _, name in ipairs({ "isle.cdef", "isle.runtime", "isle.worker", "isle.codec", "isle.sched",
        "isle.interrupt", "isle.handle", "isle.wire", "isle.sandbox" }) do
        refused(self.h, "return require('" .. name .. "')", "require('" .. name .. "') is not allowed")
    end
end

function TestSandbox:test_other_isles_mailbox_unreachable()
    -- The issue took another isle's message through isle.cdef's
    -- isle_lookup_id and isle_mailbox; no lookup by id reaches an isle either.
    local other = isle.spawn{ name = "sandbox-victim" }
    refused(self.h, "return require('isle.cdef').C.isle_lookup_id(...)", "not allowed")
    refused(self.h, "return require('isle').lookup(" .. other:id() .. ")", "isle.lookup is not available")
    refused(self.h, "return require('isle').lookup('sandbox-victim')", "isle.lookup is not available")
    refused(self.h, "return require('isle').state_ref(1)", "isle.state_ref is not available")
    refused(self.h, "return require('isle').singleton('x', function() return function() end end)",
        "isle.singleton is not available")
    other:close()
end

-- The corpus of escapes -------------------------------------------------------

function TestSandbox:test_bytecode_refused()
    refused(self.h, "return string.dump(function() end)", "string.dump is not allowed")
    holds(self.h, "local ok, e = pcall(('').dump, print) return not ok and e:find('not allowed') ~= nil")
    holds(self.h, [[local f, e = load(string.char(27) .. 'LJ\2\0') return f == nil and e:find('binary chunks') ~= nil]])
    holds(self.h, [[local f, e = loadstring(string.char(27) .. 'LJ\2\0') return f == nil and e:find('binary chunks') ~= nil]])
    holds(self.h, [[local f, e = load('return 1', 'x', 'b') return f == nil and e:find('binary chunks') ~= nil]])
    holds(self.h, [[local sent = false
        local f, e = load(function() if sent then return nil end sent = true return string.char(27) .. 'LJ' end)
        return f == nil and e:find('binary chunks') ~= nil]])
    holds(self.h, [[local f, e = require('isle').load(string.char(27) .. 'LJ') return f == nil]])
    -- Behind a byte-order mark or a #! line (LuaJIT refuses those itself).
    holds(self.h, [[return load('\239\187\191' .. string.char(27) .. 'LJ\2\0') == nil
        and loadstring('#!x\n' .. string.char(27) .. 'LJ\2\0') == nil]])
    -- Bytecode written out by hand, sent by a host that evals untrusted text: refused at the first byte.
    refused(self.h, "\27LJ\2\0\0", "binary chunks")
end

function TestSandbox:test_bytecode_from_the_host_refused()
    -- A host that evals untrusted text: text that is bytecode does not run.
    local bc = string.dump(function() return 1 end)
    refused(self.h, bc, "binary chunks")
    local ok, e = pcall(isle.spawn, { sandbox = true, init = bc })
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "binary chunks")
end

function TestSandbox:test_string_metatable_protected()
    holds(self.h, "return getmetatable('') == false")
    refused(self.h, "return getmetatable('').__index", "index")
    refused(self.h, "return setmetatable('', {})", "table expected")
    -- Methods keep working, and replacing the sandbox's string table does
    -- not change them (the machinery uses them too).
    holds(self.h, "string.format = nil string.rep = nil return ('%d'):format(5) == '5' and ('ab'):rep(2) == 'abab'")
end

function TestSandbox:test_load_environments()
    -- A chunk loaded without an environment gets the sandbox's, never the
    -- machinery's (LuaJIT's load gives the thread's globals); with one, that.
    holds(self.h, "return load('return package.loaders')() == nil and loadstring('return _G')() == _G")
    holds(self.h, [[local env = { x = 5 }
        return load('return x, print', 'chunk', 't', env)() == 5 and select(2, load('return x, print', 'c', 't', env)()) == nil]])
    refused(self.h, "return load('return 1', 'c', 't', 'not a table')", "table expected")
end

function TestSandbox:test_debug_unavailable()
    holds(self.h, "return debug == nil")
    refused(self.h, "return require('debug')", "not allowed")
    refused(self.h, "return debug.getregistry()", "index")
    refused(self.h, "return debug.getupvalue(print, 1)", "index")
end

function TestSandbox:test_fenv_refused()
    refused(self.h, "return getfenv(0)", "getfenv is not allowed")
    refused(self.h, "return getfenv(1)", "getfenv is not allowed")
    refused(self.h, "return getfenv(require('isle').spawn)", "getfenv is not allowed")
    refused(self.h, "return setfenv(require('isle').spawn, {})", "setfenv is not allowed")
    -- rawget on globals finds only the sandbox's own.
    holds(self.h, "return rawget(_G, 'ffi') == nil and rawget(_G, 'jit') == nil and _G == _G._G")
end

function TestSandbox:test_checkpoint_names_refused()
    -- The instrumenter's variables hold a raw pointer to the state's flag.
    refused(self.h, "return __isle_F", "reserved")
    refused(self.h, "__isle_F[100000] = 1", "reserved")
    refused(self.h, "return __isle_C", "reserved")
    refused(self.h, "local function f(...) return __isle_S end return f()", "reserved")
    -- (Built at run time: the chunk itself may not hold the names, even in a string.)
    refused(self.h, "return 'the name __isle_F in a string'", "reserved")
    holds(self.h, [[local f, e = load('return __' .. 'isle_F') return f == nil and e:find('reserved') ~= nil]])
    holds(self.h, [[local f, e = loadstring('return __' .. 'isle_C') return f == nil and e:find('reserved') ~= nil]])
    holds(self.h, [[local f, e = require('isle').load('return __' .. 'isle_S') return f == nil and e:find('reserved') ~= nil]])
    -- A function sent from the host whose source names them.
    local ok, e = pcall(self.h.exec, self.h, function() return __isle_F end)
    lu.assertFalse(ok, "escape worked: got " .. tostring(e))
    lu.assertStrContains(tostring(e), "reserved")
    -- In a chunk with the real checkpoints around it (sent instrumented by the host).
    refused(self.h, "for i = 1, 3 do local p = __isle_F end", "reserved")
    refused(self.h, "local function f() local p = __isle_S end f()", "reserved")
end

-- Functions and chunks sent instrumented carry both forms of checkpoint (a
-- function entry without a tail call has no store, isle.instrument): the
-- sandbox accepts both and still refuses the names anywhere else.
function TestSandbox:test_both_checkpoint_forms_cross()
    local I = require("isle.instrument")
    local sent = {
        { function(x) local function g(k) return k * 2 end return g(x) + 1 end, 41 },
        { function(x) local function g(k) if k == 0 then return x end return g(k - 1) end return g(x) end, 20 },
        { function(x) local s = 0 for i = 1, x do s = s + i end return s end, 210 },
    }
    for i, c in ipairs(sent) do
        local ok, v = pcall(self.h.exec, self.h, c[1], 20)
        lu.assertTrue(ok, "function " .. i .. ": " .. tostring(v))
        lu.assertEquals(v, c[2])
    end
    local src = "local function g(k) return k + 1 end local function t(k) return g(k) end return t(1)"
    local text = I.source(src)
    lu.assertStrContains(text, ") " .. I.ENTRY .. " return k")
    lu.assertStrContains(text, ") " .. I.CHECKPOINT)
    lu.assertEquals(self.h:eval(src), 2)
end

function TestSandbox:test_coroutine_tricks_refused()
    -- The job's own coroutine is the loop's: never resumed or yielded by user code.
    refused(self.h, "coroutine.yield('forged')", "cannot be yielded")
    refused(self.h, "return coroutine.resume(coroutine.running())", "only coroutines made by sandboxed code")
    refused(self.h, [[
        local runner, msg = coroutine.running(), 'not tried'
        require('isle').timer.at(0, function() msg = select(2, pcall(coroutine.resume, runner, 'done')) end)
        require('isle').sleep(0.05)
        error(msg)]], "only coroutines made by sandboxed code")
    -- A coroutine of its own: fine.
    holds(self.h, [[local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
        return co(1) == 2 and co(5) == 10]])
end

function TestSandbox:test_gc_tricks_refused()
    refused(self.h, "return newproxy(true)", "newproxy is not allowed")
    refused(self.h, "collectgarbage('stop')", "collectgarbage('stop') is not allowed")
    refused(self.h, "collectgarbage('setpause', 1000)", "is not allowed")
    holds(self.h, "return type(collectgarbage('count')) == 'number'")
end

function TestSandbox:test_package_tricks_refused()
    holds(self.h, "return package.loaders == nil and package.cpath == nil and package.loadlib == nil "
        .. "and package.path == nil and package.preload == nil and package.searchpath == nil")
    holds(self.h, [[for k, v in pairs(package.loaded) do
            if k == 'ffi' or k == 'jit' or k == 'debug' or k:find('^isle%.') then return false end
        end return true]])
    refused(self.h, "return module('x')", "module is not allowed")
end

function TestSandbox:test_jit_unavailable()
    holds(self.h, "return jit == nil")
    refused(self.h, "return require('jit')", "not allowed")
    refused(self.h, "return require('jit.util').funcinfo(print)", "not allowed")
    refused(self.h, "return require('jit.util').funcuvname(require('isle').spawn, 0)", "not allowed")
    refused(self.h, "return require('string.buffer')", "not allowed")
end

function TestSandbox:test_error_handler_tricks()
    -- An xpcall handler runs where the error was raised: with no debug and
    -- no getfenv there is nothing there to take.
    holds(self.h, "return type(select(2, xpcall(function() error('x') end, function() return getfenv(2) end))) == 'string'")
    holds(self.h, "local ok, e = xpcall(function() error({}) end, function(e) return debug end) return e == nil")
    -- Isle error objects: their metatable is protected.
    holds(self.h, [[local ok, e = pcall(require('isle').self().call, require('isle').self(), 'no_such')
        return ok == false and getmetatable(e) == false]])
end

function TestSandbox:test_isle_objects_protected()
    holds(self.h, "return getmetatable(require('isle').self()) == false")
    holds(self.h, "return getmetatable(require('isle').token()) == false")
    holds(self.h, "return getmetatable(require('isle').channel(1)) == false")
    refused(self.h, "return setmetatable(require('isle').self(), nil)", "protected metatable")
    -- `X.__index = X`: through `obj.__index` the metatable itself (and its
    -- methods, shared with the machinery) would be reachable.
    holds(self.h, [[local i = require('isle')
        local ok, e = pcall(i.self().call, i.self(), 'no_such')
        for _, o in ipairs({ i.self(), i.token(), i.channel(1), i.self():spawn_call('add', 1, 2), e }) do
            if o.__index ~= false or o.__metatable ~= false or o.__tostring ~= false then return false end
        end
        return type(i.self().call) == 'function' and tostring(e):find('no function') ~= nil]])
    -- No raw pointer in any of them.
    holds(self.h, [[local i = require('isle')
        for _, o in ipairs({ i.self(), i.token(), i.channel(1), i.self():spawn_call('add', 1, 2) }) do
            for k, v in pairs(o) do if type(v) == 'cdata' or type(v) == 'userdata' then return false end end
        end return true]])
    -- A timer holds no reference to the loop.
    holds(self.h, [[local t = require('isle').timer.at(10, function() end)
        local n = 0 for k in pairs(t) do n = n + 1 end
        return t.sched == nil and getmetatable(t) == false and t:cancel() == true and n == 1]])
end

function TestSandbox:test_facade_has_no_internals()
    holds(self.h, [[local i = require('isle')
        return i._preload == nil and i.Handle == nil and i.Task == nil and i.Token == nil and i.Timer == nil
            and i.hub ~= nil and not pcall(i.hub)]])
end

function TestSandbox:test_addresses_hidden()
    holds(self.h, "return not tostring(print):find('0x') and not tostring({}):find('0x') "
        .. "and not tostring(coroutine.create(print)):find('0x') and not tostring(print):find('builtin')")
    holds(self.h, "return not string.format('%s', {}):find('0x')")
    refused(self.h, "return string.format('%p', {})", "%p")
    holds(self.h, "local t = {} return tostring(t) == tostring(t) and tostring(t) ~= tostring({})")
end

function TestSandbox:test_process_and_files_refused()
    refused(self.h, "return os.execute('true')", "os.execute is not allowed")
    refused(self.h, "return os.getenv('HOME')", "os.getenv is not allowed")
    refused(self.h, "return os.remove('/tmp/x')", "os.remove is not allowed")
    holds(self.h, "return io == nil")
    refused(self.h, "return require('io')", "not allowed")
    refused(self.h, "return loadfile('/etc/passwd')", "loadfile (no files grant) is not allowed")
    refused(self.h, "return dofile('/etc/passwd')", "dofile (no files grant) is not allowed")
end

function TestSandbox:test_files_read_grant()
    local h = isle.spawn{ sandbox = { files = "read" } }
    local ok, v = pcall(h.eval, h, "local f = io.open('test/fixtures/sandbox_mod.lua') local s = f:read('*l') f:close() return s")
    lu.assertTrue(ok, tostring(v))
    lu.assertStrContains(v, "A module a sandbox grants")
    refused(h, "return io.open('/tmp/isle-sandbox-test', 'w')", "may only be read")
    refused(h, "return io.popen('true')", "io.popen is not allowed")
    refused(h, "return io.lines()", "standard input")
    refused(h, "return getmetatable(io.open('test/fixtures/sandbox_mod.lua')).__index", "index")
    lu.assertTrue(h:eval("local f = io.open('test/fixtures/sandbox_mod.lua') local r = f.__index == false and f.__gc == false f:close() return r"))
    refused(h, "return os.remove('/tmp/x')", "os.remove is not allowed")
    h:close()
end

function TestSandbox:test_string_rep_capped()
    refused(self.h, "return #string.rep('x', 2^40)", "string.rep")
    refused(self.h, "return #('x'):rep(2^33)", "string.rep")
    refused(self.h, "return #string.rep('', 2^31, 'ab')", "string.rep")
    holds(self.h, "return #string.rep('ab', 1000, ',') == 2999")
end

function TestSandbox:test_interrupt_only_own_ids()
    local other = isle.spawn{}
    local id = other:interrupt_id()
    refused(self.h, "return require('isle').interrupt(" .. id .. ")", "not one this isle made")
    holds(self.h, [[local i = require('isle') local id = i.interrupt_id()
        i.on_interrupt(function() end) return i.interrupt(id) == true]])
    other:close()
end

-- What a sandboxed isle creates is sandboxed too ------------------------------

function TestSandbox:test_spawned_isles_inherit()
    holds(self.h, [[local c = require('isle').spawn{}
        local ok, e = pcall(c.eval, c, 'os.exit(6)')
        local ok2, e2 = pcall(c.eval, c, 'return require("ffi")')
        c:close()
        return not ok and tostring(e):find('os.exit is not allowed') ~= nil and not ok2]])
    refused(self.h, "return require('isle').spawn{ sandbox = false }", "cannot be turned off")
    refused(self.h, "return require('isle').spawn{ sandbox = { require = { 'test.fixtures.sandbox_mod' } } }",
        "the sandboxed creator does not have it")
    refused(self.h, "return require('isle').spawn{ sandbox = { files = true } }", "the sandboxed creator has files")
    refused(self.h, "return require('isle').spawn{ instrument = false }", "cannot turn the instrumentation off")
    refused(self.h, "return require('isle').spawn{ instrument_loads = false }", "cannot turn the instrumentation off")
end

function TestSandbox:test_states_inherit()
    holds(self.h, [[local s = require('isle').state(function() return function(code) return load(code)() end end)
        local ok, e = pcall(s.call, s, 'os.exit(7)')
        local ok2 = pcall(s.call, s, 'return require("ffi")')
        s:close()
        return not ok and tostring(e):find('os.exit is not allowed') ~= nil and not ok2]])
    refused(self.h, "return require('isle').state({ sandbox = false }, function() return print end)", "cannot be turned off")
end

function TestSandbox:test_sandboxed_state()
    local s = isle.state({ sandbox = true }, function()
        return function(code) return assert(load(code))() end
    end)
    for _, code in ipairs({ "os.exit(8)", "return require('ffi')", "return require('isle.cdef')",
        "return string.dump(print)", "return getfenv(0)", "return debug.getregistry()" }) do
        local ok = pcall(s.call, s, code)
        lu.assertFalse(ok, "escape worked in a shared state: " .. code)
    end
    lu.assertEquals(s:call("return 1 + 1"), 2)
    local ok, e = pcall(isle.state, { sandbox = true }, "return __isle_F")
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "reserved")
    s:close()
end

function TestSandbox:test_eval_into_unsandboxed_isle_refused()
    -- Handles do not cross states (a handle arrives as a plain table): a
    -- sandbox reaches only isles it spawned itself, sandboxed. Should one
    -- reach an isle without a sandbox anyway, that isle refuses code (eval,
    -- exec) sent from a sandbox and still serves its calls.
    local plain = isle.spawn{ init = function() function hello() return "hi" end end }
    local ok, v = pcall(self.h.call, self.h, "echo", plain)
    lu.assertTrue(ok)
    lu.assertNil(getmetatable(v))
    local rt = require("isle.runtime")
    rt.sandbox = { require = {}, files = false } -- as a sandboxed sender
    local ok1, e1 = pcall(plain.eval, plain, "return 1")
    local ok2, e2 = pcall(plain.exec, plain, function() return 1 end)
    local ok3, v3 = pcall(plain.call, plain, "hello")
    rt.sandbox = nil
    lu.assertFalse(ok1)
    lu.assertStrContains(tostring(e1), "has no sandbox")
    lu.assertFalse(ok2)
    lu.assertStrContains(tostring(e2), "has no sandbox")
    lu.assertTrue(ok3)
    lu.assertEquals(v3, "hi")
    local h = isle.spawn{ sandbox = true, init = function()
        local i = require("isle")
        child = i.spawn{ init = function() function hello() return "hi" end end }
    end }
    lu.assertEquals(h:eval("return child:call('hello')"), "hi")
    h:close()
    plain:close()
end

function TestSandbox:test_functions_crossing_in_run_sandboxed()
    -- A function the host passes in runs in the sandbox, whoever wrote it.
    local ok, e = pcall(self.h.call, self.h, "echo", 1)
    lu.assertTrue(ok)
    local h = isle.spawn{ sandbox = true, init = function() function run(f) return f() end end }
    local probe = function() return require("ffi") end
    ok, e = pcall(h.call, h, "run", probe)
    lu.assertFalse(ok, "a function passed in reached the FFI")
    lu.assertStrContains(tostring(e), "not allowed")
    ok, e = pcall(h.exec, h, function() return select(2, pcall(os.exit, 12)) end)
    lu.assertTrue(ok)
    lu.assertStrContains(e, "os.exit is not allowed")
    ok, e = pcall(h.exec, h, function() os.exit(9) end)
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "os.exit is not allowed")
    h:close()
end

function TestSandbox:test_call_targets_are_the_sandboxes()
    -- h:call names globals of the sandbox, never the machinery's.
    local ok, e = pcall(self.h.call, self.h, "os.exit", 10)
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "os.exit is not allowed")
    ok, e = pcall(self.h.call, self.h, "getfenv", 0)
    lu.assertFalse(ok)
    ok, e = pcall(self.h.call, self.h, "require", "ffi")
    lu.assertFalse(ok)
    self.h:eval("require('isle').on_error(function() end)") -- the post's error: not on stderr
    ok = pcall(self.h.post, self.h, "os.exit", 11)
    lu.assertEquals(self.h:call("add", 1, 1), 2) -- still alive after the post
end

-- The require grant -------------------------------------------------------------

function TestSandbox:test_require_grant()
    local h = isle.spawn{ sandbox = { require = { "test.fixtures.sandbox_mod", "test.fixtures.sandbox_mod_ffi",
        "test.fixtures.sandbox_mod_names" } } }
    lu.assertEquals(h:eval("return require('test.fixtures.sandbox_mod').twice(21)"), 42)
    lu.assertTrue(h:eval("return require('test.fixtures.sandbox_mod') == require('test.fixtures.sandbox_mod')"))
    lu.assertFalse(h:eval("return require('test.fixtures.sandbox_mod').has_ffi()"))
    lu.assertNotNil(h:eval("return tostring(require('test.fixtures.sandbox_mod').sees_exit())"))
    refused(h, "return require('test.fixtures.sandbox_mod_ffi')", "require('ffi') is not allowed")
    refused(h, "return require('test.fixtures.sandbox_mod_names')", "reserved")
    refused(h, "return require('test.fixtures.other')", "not allowed")
    h:close()
end

-- Everything else works inside ---------------------------------------------------

function TestSandbox:test_features_work()
    local h = isle.spawn{ sandbox = true, memory_limit = 32 * 1024 * 1024, init = function()
        local i = require("isle")
        function sum(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s end
        function posted(x) got = x end
        function get() return got end
        function nap(s) i.sleep(s) return "woke" end
        function ticks()
            local n = 0
            local t = i.timer.every(0.005, function() n = n + 1 end)
            i.sleep(0.1)
            t:cancel()
            return n
        end
        function goes()
            local out = {}
            i.go(function(x) out[#out + 1] = x end, "went")
            i.sleep(0.01)
            return out[1]
        end
        function children()
            local c = i.spawn{ memory_limit = 8 * 1024 * 1024, init = function() function sq(x) return x * x end end }
            local ts = { c:spawn_call("sq", 3), c:spawn_call("sq", 4) }
            local _, r1, r2 = i.all(ts):wait()
            c:close()
            return r1[1] + r2[1]
        end
        function state_call()
            local s = i.state({ memory_limit = 8 * 1024 * 1024 }, function() return function(x) return x + 1 end end)
            local v = s:call(41)
            s:close()
            return v
        end
        function from(ch) return ch:pop(5) end
        function text() return load("return ...")(("x"):upper(), string.format("%5.1f", 2.5), table.concat({1, 2}, ","),
            math.floor(2.5), bit.band(6, 3), os.time() > 0) end
    end }
    lu.assertEquals(h:call("sum", { 1, 2, 3 }), 6)
    h:post("posted", "hello")
    lu.assertEquals(h:call("get"), "hello")
    lu.assertEquals(h:call("nap", 0.01), "woke")
    lu.assertTrue(h:call("ticks") >= 3)
    lu.assertEquals(h:call("goes"), "went")
    lu.assertEquals(h:call("children"), 25)
    lu.assertEquals(h:call("state_call"), 42)
    local ch = isle.channel(4)
    ch:push("through")
    lu.assertEquals(h:call("from", ch), "through")
    lu.assertEquals({ h:call("text") }, { "X", "  2.5", "1,2", 2, 2, true })
    -- Tokens and timeouts.
    local tok = isle.token()
    local t = h:with{ token = tok }:spawn_call("nap", 30)
    tok:cancel()
    local ok, e = t:wait()
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    ok, e = pcall(h:with{ timeout = 0.05 }.call, h:with{ timeout = 0.05 }, "nap", 30)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    -- The memory cap still holds.
    ok, e = pcall(h.eval, h, "local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(60000) .. i end")
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "memory")
    lu.assertEquals(h:call("sum", { 1 }), 1)
    h:close()
end

function TestSandbox:test_compiled_loop_cancelled()
    -- JIT-safe cancellation: instrumented code still checkpoints.
    local t = self.h:spawn_eval("local x = 0 while true do x = x + 1 end")
    isle.sleep(0.1)
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    -- And in code the sandbox loads itself.
    t = self.h:spawn_eval("local f = load('local x = 0 while true do x = x + 1 end') f()")
    isle.sleep(0.1)
    t:cancel()
    ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    lu.assertEquals(self.h:call("add", 2, 3), 5)
end

function TestSandbox:test_uninstrumented_sends_still_stop()
    -- A view's `instrument = false` (an option, and a plain field of the
    -- view user code could set): a sandbox inserts the checkpoints itself.
    local t = self.h:with{ instrument = false }:spawn_eval("local x = 0 while true do x = x + 1 end")
    isle.sleep(0.1)
    t:cancel()
    local ok, e = t:wait(10)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "cancelled")
    holds(self.h, [[local i = require('isle')
        local c = i.spawn{}
        local v = c:with{ instrument = true }
        v.opts.instrument = false
        local t = v:spawn_eval('local x = 0 while true do x = x + 1 end')
        i.sleep(0.1)
        t:cancel()
        local ok, e = t:wait(10)
        c:close()
        return ok == false and e.code == 'cancelled']])
end

function TestSandbox:test_chunknames_do_not_name_files()
    -- isle.fnsource reads the file a function's chunk names to recover its
    -- source when it is sent: a chunk loaded as "@/dev/zero" would make the
    -- machinery read for ever.
    holds(self.h, [[local f = load('return function() return 1 end', '@/dev/zero')()
        local c = require('isle').spawn{}
        local v = c:exec(f)
        c:close()
        return v == 1]])
end

function TestSandbox:test_handlers_that_never_return_are_stopped()
    -- isle.on_error and isle.on_interrupt handlers run user code outside a
    -- job's own protected call: a handler that loops for ever must still be
    -- stopped, or the sandbox would hold its thread for good.
    local h = isle.spawn{ sandbox = true, init = function()
        local i = require("isle")
        i.on_error(function() while true do end end)
        function fail() error("posted failure") end
        function spin_in_handler()
            i.on_interrupt(coroutine.running(), function() while true do end end)
            i.interrupt(i.interrupt_id())
            while true do end
        end
    end }
    local t = h:with{ timeout = 0.3 }:spawn_call("spin_in_handler")
    local ok, e = t:wait(20)
    lu.assertFalse(ok)
    lu.assertEquals(e.code, "timeout")
    lu.assertEquals(h:eval("return 1"), 1)
    h:post("fail") -- its error goes to the looping on_error handler
    isle.sleep(0.2)
    h:close{ cancel = true } -- returns only if the handler was stopped
    lu.assertTrue(h:is_closed())
end

function TestSandbox:test_blocking_waits_are_stopped()
    -- Where the loop cannot take over (a coroutine of the user's own), a
    -- wait blocks the thread; in a sandbox it still ends when the job is
    -- stopped, and closing a child that never ends does not hold the parent.
    local h = isle.spawn{ sandbox = true, init = function()
        local i = require("isle")
        child = i.spawn{ init = function() function spin() while true do end end end }
        function sleep_in_coroutine() return coroutine.wrap(function() i.sleep(1e6) end)() end
        function call_in_coroutine() return coroutine.wrap(function() return child:call("spin") end)() end
        function close_spinning_child()
            local c = i.spawn{ init = function() function spin() while true do end end end }
            c:post("spin")
            c:close() -- drains: would wait for ever
        end
    end }
    for _, name in ipairs({ "sleep_in_coroutine", "call_in_coroutine", "close_spinning_child" }) do
        local t0 = isle.now()
        local ok, e = pcall(h:with{ timeout = 0.2 }.call, h:with{ timeout = 0.2 }, name)
        lu.assertFalse(ok, name)
        lu.assertEquals(e.code, "timeout", name)
        lu.assertTrue(isle.now() - t0 < 10, name)
    end
    lu.assertEquals(h:eval("return 2"), 2)
    h:close{ cancel = true } -- its child spins: cancelled with it
end

-- A shared buffer handed to a sandbox: no pointer, only bounds-checked
-- elements of number types (a pointer or a struct with pointer fields
-- would reach any memory of the process), and its metatable is sealed.
function TestSandbox:test_buffers_handed_in_give_no_pointer()
    local h = self.h
    local function fails(code, buf, want)
        local ok, e = pcall(h.eval, h, code, buf)
        lu.assertFalse(ok, "escape worked: " .. code)
        lu.assertStrContains(tostring(isle.is_error(e) and e.message or e), want, false)
    end
    local nums = isle.buffer("double", 4)
    nums:ptr()[2] = 2.5
    lu.assertEquals(h:call("echo", nums):len(), 4)
    lu.assertEquals(h:eval("local b = ... b[1] = 7 return b[2]", nums), 2.5)
    lu.assertEquals(nums:ptr()[1], 7)
    fails("local b = ... return b:ptr()", nums, "not available in a sandbox")
    fails("local b = ... return b[4]", nums, "out of range")
    fails("local b = ... return b[-1]", nums, "out of range")
    lu.assertTrue(h:eval("local b = ... return getmetatable(b) == false", nums))
    lu.assertFalse(h:eval("local b = ... return (pcall(setmetatable, b, nil))", nums))
    -- Elements that are pointers (a type every state knows) are refused.
    local ptrs = isle.buffer("void *", 2)
    fails("local b = ... return b[0]", ptrs, "not available in a sandbox")
    fails("local b = ... b[0] = nil", ptrs, "not available in a sandbox")
    nums:close()
    ptrs:close()
end

-- Pools take the option for every isle of theirs, and a sandboxed isle's
-- pools are sandboxed whatever it asks.
function TestSandbox:test_pools_are_sandboxed()
    local p = isle.pool{ size = 2, sandbox = true }
    refused(p, "os.exit(3)", "os.exit is not allowed")
    refused(p, "return require('ffi')", "not allowed")
    lu.assertEquals(p:eval("return 1 + 1"), 2)
    p:close()
    local h = self.h
    refused(h, "local p = require('isle').pool{ size = 1 } return p:eval('return require(\"ffi\")')", "not allowed")
    refused(h, "local p = require('isle').pool{ size = 1, sandbox = false } return 1", "cannot be turned off")
end

function TestSandbox:test_option_errors()
    local ok, e = pcall(isle.spawn, { sandbox = "yes" })
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "option 'sandbox' must be true, false or a table of grants")
    ok, e = pcall(isle.spawn, { sandbox = { network = true } })
    lu.assertStrContains(tostring(e), "unknown grant 'network'")
    ok, e = pcall(isle.spawn, { sandbox = { files = "write" } })
    lu.assertStrContains(tostring(e), "grant 'files' must be")
    ok, e = pcall(isle.spawn, { sandbox = { require = "x" } })
    lu.assertStrContains(tostring(e), "grant 'require' must be a list")
    for _, name in ipairs({ "ffi", "debug", "jit" }) do
        ok, e = pcall(isle.spawn, { sandbox = true, libs = { "string", name } })
        lu.assertFalse(ok)
        lu.assertStrContains(tostring(e), "library '" .. name .. "' cannot be given to a sandboxed state")
    end
    ok, e = pcall(isle.state, { sandbox = 1 }, function() return print end)
    lu.assertStrContains(tostring(e), "isle.state: option 'sandbox'")
end

function TestSandbox:test_without_sandbox_nothing_changes()
    -- Isles without the option are trusted code, as before.
    local h = isle.spawn{}
    lu.assertEquals(h:eval("return type(require('ffi').C)"), "userdata")
    lu.assertEquals(h:eval("return type(getmetatable(''))"), "table")
    h:close()
end

-- The example runs, and every attempt in it is refused.
function TestSandbox:test_example_runs()
    local out = helpers.sh(helpers.luajit() .. " examples/sandbox/run.lua 2>&1")
    lu.assertStrContains(out, "all attempts refused")
    lu.assertNotStrContains(out, "ESCAPED")
end

os.exit(lu.LuaUnit.run())
