-- Static checks: the cdefs match the C header (sizes, offsets, constants),
-- no module writes or depends on non-base globals, hot paths compile.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")
local helpers = require("test.helpers")

local ROOT = (os.getenv("ISLE_ROOT") or (debug.getinfo(1, "S").source:match("^@(.*)/test/[^/]*$")) or ".")

local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("*a")
    local ok = p:close()
    return out, ok
end

TestCdef = {}

-- Like ljsyscall's test: a C program prints what the compiler sees.
function TestCdef:test_layout_and_constants_match_header()
    local structs = {
        isle_msg = { "next", "task", "kind", "flags", "len", "data", "nrefs", "refs", "mem" },
        isle_done = { "next", "task", "mbox", "sig" },
        isle_sig = { "flag", "scratch" },
        isle_config = { "name", "capacity", "path", "cpath", "boot", "boot_len", "boot_refs", "boot_nrefs",
            "instrument", "memory_limit", "charge" },
        isle_state_io = { "args", "args_len", "results", "results_len", "args_refs", "results_refs" },
        isle_state_out = { "data", "len", "cap", "mem", "refs" },
        isle_state_config = { "name", "path", "cpath", "errbuf", "errcap", "memory_limit", "charge" },
    }
    local consts = { "ISLE_OK", "ISLE_ETIMEOUT", "ISLE_EBUSY", "ISLE_ECLOSED", "ISLE_ENOMEM", "ISLE_EINVAL",
        "ISLE_ENOENT", "ISLE_TASK_QUEUED", "ISLE_TASK_RUNNING", "ISLE_TASK_DONE", "ISLE_TASK_FAILED",
        "ISLE_TASK_CANCELLED", "ISLE_TASK_CLOSED", "ISLE_CANCEL_NONE", "ISLE_CANCEL_USER",
        "ISLE_CANCEL_TIMEOUT", "ISLE_INTR_CLEAR", "ISLE_INTR_ONCE", "ISLE_INTR_ALWAYS", "ISLE_MSG_REFS_MAX",
        "ISLE_WIRE_VALUES", "ISLE_WIRE_FUNCS", "ISLE_WIRE_ERROR", "ISLE_WIRE_CORE", "ISLE_LABEL_MAX",
        "ISLE_STATE_EREENTRY", "ISLE_STATE_EAMBIGUOUS", "ISLE_CHAN_CAP_MAX", "ISLE_MEM_OFF", "ISLE_MEM_CORE",
        "ISLE_MEM_USER" }
    local src = { "#include <stdio.h>\n#include <stddef.h>\n#include \"isle.h\"\nint main(void) {" }
    local expect = {}
    for s, fields in pairs(structs) do
        local ty = (s == "isle_config" or s:find("^isle_state_")) and s or ("struct " .. s)
        src[#src + 1] = ('printf("%s %%zu\\n", sizeof(%s));'):format(s, ty)
        expect[#expect + 1] = s .. " " .. ffi.sizeof(ty)
        for _, f in ipairs(fields) do
            src[#src + 1] = ('printf("%s.%s %%zu\\n", offsetof(%s, %s));'):format(s, f, ty, f)
            expect[#expect + 1] = s .. "." .. f .. " " .. ffi.offsetof(ty, f)
        end
    end
    local C = require("isle.cdef").C
    for _, c in ipairs(consts) do
        src[#src + 1] = ('printf("%s %%d\\n", (int)%s);'):format(c, c)
        expect[#expect + 1] = c .. " " .. tonumber(C[c])
    end
    src[#src + 1] = "return 0; }"
    local cfile, exe = os.tmpname() .. ".c", os.tmpname()
    local f = io.open(cfile, "w")
    f:write(table.concat(src, "\n"))
    f:close()
    local out, ok = sh(("%s -I%s/csrc -o %s %s && %s"):format(helpers.cc(), ROOT, exe, cfile, exe))
    os.remove(cfile)
    os.remove(exe)
    lu.assertTrue(ok, out)
    lu.assertEquals(out, table.concat(expect, "\n") .. "\n")
end

function TestCdef:test_the_codec_bound_on_tokens_is_the_cores()
    -- The encoder refuses what isle_msg_new_refs would refuse, with a path.
    lu.assertEquals(require("isle.codec").MAX_ATTACHED, require("isle.cdef").C.ISLE_MSG_REFS_MAX)
end

function TestCdef:test_every_header_function_is_declared()
    local f = io.open(ROOT .. "/csrc/isle.h")
    local header = f:read("*a")
    f:close()
    local C = require("isle.cdef").C
    local n = 0
    for name in header:gmatch("[%w_%*]+%s+%**(isle_[%w_]+)%(") do
        n = n + 1
        local ok = pcall(function() return C[name] end)
        lu.assertTrue(ok, name .. " is in csrc/isle.h but not in ffi/isle/cdef.lua")
    end
    lu.assertTrue(n > 40)
end

-- An isle boots with the core declarations only and keeps not even the
-- text of the rest: a module that needs it (here isle itself) declares it
-- from isle.cdef's chunk read again, and it works (a nested spawn).
function TestCdef:test_an_isle_declares_the_rest_of_the_api_on_demand()
    local h = isle.spawn()
    local ok, before, after, n = pcall(h.eval, h, [[
        local ffi = require("ffi")
        local before = pcall(ffi.typeof, "isle_stats")
        local nested = require("isle").spawn()
        local n = nested:eval("return 40 + 2")
        nested:close()
        local after = pcall(ffi.typeof, "isle_stats")
        return before, after, n
    ]])
    h:close()
    lu.assertTrue(ok, tostring(before))
    lu.assertFalse(before)
    lu.assertTrue(after)
    lu.assertEquals(n, 42)
end

-- An isle declares at boot only CORE (ffi/isle/cdef.lua): every C name its
-- own modules use must be in it, or they would fail in an isle that never
-- loaded a module calling cdef.full() (a name used only on a rare path
-- would fail only there).
function TestCdef:test_an_isle_boots_with_every_c_name_its_modules_use()
    local names, seen = {}, {}
    for _, m in ipairs({ "worker", "sched", "sched_wait", "codec_check", "interrupt", "interrupt_api",
        "errors_describe", "runtime", "wire", "codec", "errors", "libs", "proto",
        "loaders", "sandbox", "task", "token", "chunks", "instrument", "fnsource" }) do
        local f = assert(io.open(ROOT .. "/lua/isle/" .. m .. ".lua"))
        for name in f:read("*a"):gmatch("C%.([%a_][%w_]*)") do
            if not seen[name] then seen[name] = true; names[#names + 1] = name end
        end
        f:close()
    end
    lu.assertTrue(#names > 40)
    local h = isle.spawn()
    local ok, full, missing = pcall(h.eval, h, [[
        local ffi = require("ffi")
        local C = require("isle.cdef").C
        local missing = {}
        for _, name in ipairs({ ... }) do
            if not pcall(function() return C[name] end) then missing[#missing + 1] = name end
        end
        return pcall(ffi.typeof, "isle_stats"), table.concat(missing, " ")
    ]], unpack(names))
    h:close()
    lu.assertTrue(ok, tostring(full))
    lu.assertFalse(full, "the isle declared the rest of the API: the check says nothing")
    lu.assertEquals(missing, "", "used by isle's own modules but not declared at an isle's boot (CORE)")
end

TestGlobals = {}

-- Globals a module may read: the base library only, so isle works in
-- isles spawned with libs = false.
local BASE = {}
for _, k in ipairs({ "assert", "error", "getmetatable", "ipairs", "load", "loadstring", "next",
    "pairs", "pcall", "rawequal", "rawget", "rawset", "require", "select", "setmetatable", "tonumber",
    "tostring", "type", "unpack", "xpcall", "newproxy", "loadfile", "_G", "package", "coroutine",
    "collectgarbage", "setfenv", "gcinfo", "_VERSION" }) do BASE[k] = true end

function TestGlobals:test_modules_neither_set_nor_need_globals()
    local files = {}
    for line in io.popen("ls " .. ROOT .. "/lua/*.lua " .. ROOT .. "/lua/isle/*.lua " .. ROOT .. "/ffi/isle/*.lua"):lines() do
        files[#files + 1] = line
    end
    lu.assertTrue(#files >= 10)
    local seen = 0
    for _, file in ipairs(files) do
        local listing = sh(helpers.luajit() .. " -bl " .. file)
        for op, name in listing:gmatch("(G[SG]ET)%s+[^\n]-\"([%w_]+)\"") do
            seen = seen + 1
            lu.assertNotEquals(op, "GSET", file .. " sets the global '" .. name .. "'")
            lu.assertTrue(BASE[name], file .. " reads the non-base global '" .. name .. "'")
        end
    end
    lu.assertTrue(seen > 20, "the bytecode listing was not parsed")
end

-- Code that walks every module's tables (Lanes' lookup of transferable
-- functions, run by lanes.gen) asserts that a key whose value is a table or
-- a function is a string or a number. isle's tables keyed by coroutines or
-- tables must stay out of reach of package.loaded.
local function bad_keys(root)
    local found, seen = {}, {}
    local function walk(t, path)
        if seen[t] then return end
        seen[t] = true
        for k, v in pairs(t) do
            local tv = type(v)
            if tv == "table" or tv == "function" then
                local tk = type(k)
                if tk ~= "string" and tk ~= "number" then found[#found + 1] = path .. "[" .. tk .. "]" end
                if tv == "table" then walk(v, path .. "." .. tostring(k)) end
            end
        end
    end
    for name, m in pairs(root) do
        if type(m) == "table" and type(name) == "string" and name:match("^isle") then walk(m, name) end
    end
    return found
end

function TestGlobals:test_module_tables_hold_no_keys_lanes_cannot_walk()
    local isle = require("isle")
    -- The detector first: a planted key is found.
    local planted = bad_keys({ isle_probe = { x = { [{}] = {} } } })
    lu.assertEquals(#planted, 1)
    -- Load what keeps such tables: a shipped function (isle.codec_check), an
    -- interrupt handler on a coroutine (isle.interrupt_api), a live isle.
    local h = isle.spawn()
    lu.assertEquals(h:exec(function(x) return x + 1 end, 1), 2)
    local co = coroutine.create(function() end)
    isle.on_interrupt(co, function() end)
    lu.assertNotNil(isle.interrupt_id(co))
    lu.assertTrue(package.loaded["isle.codec_check"] ~= nil)
    lu.assertTrue(package.loaded["isle.interrupt_api"] ~= nil)
    lu.assertEquals(bad_keys(package.loaded), {})
    h:close()
end

TestJit = {}

-- Aborts while f runs, except one kind that is not about f's code: an abort
-- with LuaJIT's error 0 ("error thrown or hook called during recording")
-- reported at isle's count hook, which an earlier test installed in this
-- state (isle.interrupt_id). It was seen once in a run of the whole suite
-- (2026-11-30: "interrupt.lua:196: 0 51", the hook's first instruction) and
-- could not be brought about on demand; the loop is recorded again later,
-- so it says nothing about what f's code compiles to, and counting it made
-- these checks flaky. Any other abort, at the hook or elsewhere, counts.
local RECERR = 0
local function aborts_during(f)
    local aborts = {}
    local hook = debug.gethook()
    local function on_trace(what, _tr, func, pc, otr, oex)
        if what == "abort" and not (otr == RECERR and hook ~= nil and func == hook) then
            local info = require("jit.util").funcinfo(func, pc)
            aborts[#aborts + 1] = tostring(info.loc) .. ": " .. tostring(otr) .. " " .. tostring(oex)
        end
    end
    jit.attach(on_trace, "trace")
    local ok, err = pcall(f)
    jit.attach(on_trace) -- detach
    assert(ok, err)
    return aborts
end

function TestJit:test_the_detector_sees_an_abort()
    local aborts = aborts_during(function()
        local n = 0
        for i = 1, 100000 do local f = function() return i end n = n + f() end -- FNEW is NYI
        return n
    end)
    lu.assertTrue(#aborts > 0)
end

function TestJit:test_checkpoint_loop_compiles_without_aborts()
    local aborts = aborts_during(function()
        local cp = isle.checkpoint
        local x = 0
        for i = 1, 1e6 do x = x + i cp() end
        return x
    end)
    lu.assertEquals(aborts, {})
end

function TestJit:test_instrumented_chunk_compiles_without_aborts()
    local f = isle.load([[
        local t, s = {}, 0
        for i = 1, 200000 do t[i % 100 + 1] = i end
        local i = 0
        while i < 200000 do i = i + 1 s = s + t[i % 100 + 1] end
        repeat i = i - 1 until i == 0
        for k, v in ipairs(t) do s = s + v end
        return s
    ]], "=hot")
    lu.assertEquals(aborts_during(f), {})
end

os.exit(lu.LuaUnit.run())
