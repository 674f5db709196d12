-- Tests for lua/isle/instrument.lua
-- Run from the repo root:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" luajit test/test_instrument.lua

local lu = require("luaunit")
local ffi = require("ffi")
local I = require("isle.instrument")

local CP = I.CHECKPOINT
local ENTRY = I.ENTRY -- a function entry's checkpoint when it makes no tail call

local function count(s, sub)
  local n, p = 0, 1
  while true do
    local a, b = s:find(sub, p, true)
    if not a then return n end
    n, p = n + 1, b + 1
  end
end

local function inst(src)
  local out, err = I.source(src)
  lu.assertNotNil(out, err)
  return out
end

-- Checkpoints of either form (the entry form is the full one's beginning).
local function ncp(src) return count(inst(src), ENTRY) end

local function newFS()
  return ffi.new("int32_t[1]"), ffi.new("int32_t[1]")
end

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Pack results with their count so nils and arity are compared.
local function pack(...) return { n = select("#", ...), ... } end

------------------------------------------------------------------------
TestPlacement = {}

function TestPlacement.test_wrapper_shape()
  local out = inst("return 1")
  lu.assertEquals(out:sub(1, #I.PREFIX), I.PREFIX)
  lu.assertEquals(I.PREFIX,
    "return function(__isle_f, __isle_s, __isle_C) local __isle_F, __isle_S = __isle_f + 0, "
    .. "__isle_s + 0 return function(...) ")
  lu.assertEquals(out:sub(-8), "\nend end")
  lu.assertEquals(CP, "if __isle_F[0]~=0 then __isle_C() end __isle_S[0]=__isle_F[0] ")
  lu.assertEquals(ENTRY, "if __isle_F[0]~=0 then __isle_C() end ")
end

-- A body that opens with a bounded base-case guard gets its entry checkpoint
-- after the guard (isle.instrument, guard); any other body right after `)`.
function TestPlacement.test_entry_checkpoint_after_a_base_case_guard()
  local function at(src)
    local out = inst(src)
    local a = out:find(ENTRY, #I.PREFIX + 1, true)
    lu.assertNotNil(a, out)
    local before = out:sub(#I.PREFIX + 1, a - 1)
    if before:sub(-2) == ") " then return "entry" end
    if before:sub(-4) == "end " then return "guard" end
    return before
  end
  local cases = {
    { "local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end", "guard" },
    { "local function f(k) -- base\n if not k then return nil end return f(k.next) end", "guard" },
    { "local function f(k) if k <= 1 then return k, 1 end return f(k - 1) + 1 end", "guard" },
    { "local function f(k) if k == nil then return end return f(k - 1) + 1 end", "guard" },
    { "local function f(t) if t.done then return true end return f(t.next) end", "guard" },
    -- two places that may call, a tail call, an else, a statement before
    -- the return, a loop or function inside: the checkpoint stays at the entry
    { "local function f(k) if k < 2 then return k + 1 end return f(k) end", "entry" },
    { "local function f(k) if k < 2 then return g(k) end end", "entry" },
    { "local function f(k) if k then return f(k) end end", "entry" },
    { "local function f(k) if k.a.b then return 1 end end", "entry" },
    { "local function f(k) if k then return 1 else return 2 end end", "entry" },
    { "local function f(k) if k then return 1 elseif k then return 2 end end", "entry" },
    { "local function f(k) if k then x = 1 return 1 end end", "entry" },
    { "local function f(k) if k then return function() end end end", "entry" },
    { "local function f(k) if k then return 'a' .. k end end", "entry" },
    { "local function f(k) if #k < 1 then return 1 end end", "entry" },
    { "local function f(k) if k then return -k, -k end end", "entry" },
    { "local function f(k) local x = 1 if k then return 1 end end", "entry" },
    { "local function f(k) while k do end end", "entry" },
  }
  for _, c in ipairs(cases) do
    lu.assertEquals(at(c[1]), c[2], c[1])
  end
  -- The body is unchanged around it, and the result still compiles and runs.
  local src = "local n = ... local function fib(k) if k < 2 then return k end "
    .. "return fib(k - 1) + fib(k - 2) end return fib(n)"
  local out = inst(src)
  lu.assertStrContains(out, "if k < 2 then return k end " .. ENTRY .. " return fib(k - 1)")
  local F, S = newFS()
  lu.assertEquals(assert(load(out))()(F, S, function() end)(20), 6765)
  -- The flag still stops it: set, the first call past the guard takes the slow path.
  F[0] = 1
  local ok, e = pcall(assert(load(out))()(F, S, function() error("stopped", 0) end), 20)
  lu.assertFalse(ok)
  lu.assertEquals(e, "stopped")
  -- A guard that returns at once never reaches it (bounded: nothing to stop).
  lu.assertEquals(assert(load(out))()(F, S, function() error("stopped", 0) end)(1), 1)
end

-- Only a function that may make a tail call keeps the store at its entry.
function TestPlacement.test_entry_store_only_with_a_tail_call()
  local function entry(src)
    local out = inst(src)
    local a, b = out:find(ENTRY, #I.PREFIX + 1, true)
    lu.assertNotNil(a, out)
    return out:sub(b + 1, b + #"__isle_S") == "__isle_S" and "store" or "check"
  end
  local cases = {
    -- a tail call, or what may be one: the store stays
    { "local function f(k) return f(k - 1) end", "store" },
    { "local function f(k) return o:m{ k } end", "store" },
    { "local function f(k) return g'x' end", "store" },
    { "local function f(k) return g[[x]] end", "store" },
    { "local function f(k) return a.b.c(k); end", "store" },
    { "local function f(k) return g(k) -- why\n end", "store" },
    { "local function f(k) return (g(k)) end", "store" },
    { "local function f(k) return not g(k) end", "store" },
    { "local function f(k) if k then return g(k, h(1) + 2) else return 1 end end", "store" },
    { "local function f(k) return function() end end", "store" },
    { "local function f(k) repeat return g(k) until true end", "store" },
    -- certainly no tail call: the check alone
    { "local function f(k) if k < 2 then return k end return f(k - 1) + f(k - 2) end", "check" },
    { "local function f(k) return k end", "check" },
    { "local function f(k) return t[k] end", "check" },
    { "local function f(...) return ... end", "check" },
    { "local function f(k) return g(k), 1 end", "check" },
    { "local function f(k) return 1, g(k) end", "check" },
    { "local function f(k) return g(k) .. 'x' end", "check" },
    { "local function f(k) return g(k) and h(k) end", "check" },
    { "local function f(k) return -g(k) end", "check" },
    { "local function f(k) return #g(k) end", "check" },
    { "local function f(k) return g(k) == 1 end", "check" },
    { "local function f(k) g(k) end", "check" },
    { "local function f(k) return end", "check" },
    -- a tail call in a nested function marks only that one
    { "local function f(k) local g = function() return h() end return k end", "check" },
  }
  for _, c in ipairs(cases) do
    lu.assertEquals(entry(c[1]), c[2], c[1])
  end
  -- The nested function of the last case keeps its own store.
  local out = inst(cases[#cases][1])
  lu.assertEquals(count(out, CP), 1)
  lu.assertEquals(count(out, ENTRY), 2)
  -- Loops and gotos keep the store whatever the function does.
  lu.assertEquals(count(inst("local function f() while a do end ::l:: goto l end"), CP), 2)
end

function TestPlacement.test_loops_and_functions()
  lu.assertEquals(ncp("while a do end"), 1)
  lu.assertEquals(ncp("for i = 1, 10 do end"), 1)
  lu.assertEquals(ncp("for i = 1, 10, 2 do end"), 1)
  lu.assertEquals(ncp("for k, v in pairs(t) do end"), 1)
  lu.assertEquals(ncp("repeat local a = 1 until a"), 1)
  lu.assertEquals(ncp("local function f(a, b) end"), 1)
  lu.assertEquals(ncp("function a.b.c:m(x, ...) end"), 1)
  lu.assertEquals(ncp("local f = function(...) return ... end"), 1)
  lu.assertEquals(ncp("obj:m(function(a) end); x = { function() end }"), 2)
  lu.assertEquals(ncp("::top:: goto top"), 1)
  -- exact positions
  lu.assertStrContains(inst("while a do x() end"), "while a do " .. CP .. " x()")
  lu.assertStrContains(inst("repeat x() until y"), "repeat " .. CP .. " x()")
  lu.assertStrContains(inst("function f(a) x() end"), "function f(a) " .. ENTRY .. " x()")
  lu.assertStrContains(inst("if c then goto l end ::l::"), "then " .. CP .. "goto l end")
  -- labels get nothing after them
  lu.assertEquals(inst("::a:: x()"):find("::a:: x()", 1, true) ~= nil, true)
end

function TestPlacement.test_plain_do_and_if_get_nothing()
  lu.assertEquals(ncp("do local x = 1 end"), 0)
  lu.assertEquals(ncp("do do end end"), 0)
  lu.assertEquals(ncp("if a then b() elseif c then d() elseif e then else end"), 0)
  lu.assertEquals(ncp("local a = 1; local b = 2;"), 0)
end

function TestPlacement.test_nested_headers()
  local src = "while f(function() for i=1,2 do end end) do x() end"
  local out = inst(src)
  lu.assertEquals(count(out, ENTRY), 3)
  lu.assertStrContains(out, "end end) do " .. CP .. " x() end")
  lu.assertStrContains(out, "for i=1,2 do " .. CP .. " end")
  -- a for header with a function containing a while and a plain do
  local src2 = "for k in g(function() do end while z do end end) do y() end"
  local out2 = inst(src2)
  lu.assertEquals(count(out2, ENTRY), 3)
  lu.assertStrContains(out2, "end end) do " .. CP .. " y() end")
  lu.assertStrContains(out2, "function() " .. ENTRY .. " do end")
  -- until expression containing a function with a loop
  local out3 = inst("repeat x() until f(function() while a do end end)")
  lu.assertEquals(count(out3, ENTRY), 3)
end

function TestPlacement.test_nothing_in_strings_comments_numbers()
  local cases = {
    [[local s = "while x do end for i=1,2 do end"]],
    [[local s = 'repeat until function() end goto x']],
    [[local s = "esc \" while a do end \\"]],
    "local s = 'z \\z\n   while a do end'",
    "local s = 'bs-nl \\\n for i=1,2 do end'",
    [[local s = "\x41\u{48}\065 while a do end"]],
    "local s = [[ while a do end ]]",
    "local s = [==[ for i=1,2 do ]] end function() ]=] ]==]",
    "-- while a do end",
    "--[[ for i=1,2 do end\n function() end ]]",
    "--[==[ repeat ]] until ]=] function() ]==]",
    "--[= not long: while a do end",
    "x = 0x1p4 + 1ULL + 1LL + 2i + 1e+5 + 0x1e+5 + 3. + .5 + 0xA.8p-1",
    "x = t[ [[while]] ] .. t[1]",
  }
  for _, src in ipairs(cases) do
    lu.assertEquals(ncp(src), 0, src)
    lu.assertNotNil(load(inst(src)), src)
  end
  -- code after them is still seen
  lu.assertEquals(ncp("--[==[ ]] ]==] while a do end"), 1)
  lu.assertEquals(ncp("s = '--' while a do end"), 1)
  lu.assertEquals(ncp("s = [[\n]] for i=1,2 do end -- for i=1,2 do end"), 1)
end

function TestPlacement.test_goto_as_identifier()
  -- LuaJIT accepts `goto` as an identifier outside statement position
  local src = "local t = {} t.goto = 1 local goto = 2\nfoo = goto\nbar = t.goto\nbaz()"
  lu.assertNotNil(load(src))
  lu.assertEquals(ncp(src), 0)
  lu.assertNotNil(load(inst(src)))
  -- but a goto statement after an expression gets one
  lu.assertEquals(ncp("x = y goto l ::l::"), 1)
  lu.assertEquals(ncp("f() goto l ::l::"), 1)
  lu.assertEquals(ncp("x = 'a' --[[c]] goto --[[d]] l ::l::"), 1)
end

function TestPlacement.test_no_newlines_added()
  local src = "local a = 1\r\nwhile a < 3 do\n a = a + 1\nend\n" ..
              "repeat a = a - 1 until a == 0\nlocal function f() end\n"
  local out = inst(src)
  lu.assertEquals(count(out, "\n"), count(src, "\n") + 1)
  lu.assertEquals(count(out, "\r"), count(src, "\r"))
end

function TestPlacement.test_shebang_and_bom()
  local src = "#!/usr/bin/env luajit\nreturn 42, ..."
  local out = inst(src)
  lu.assertEquals(out, I.PREFIX .. "\nreturn 42, ...\nend end")
  local F, S = newFS()
  local f = assert(I.load(src, "=sb"))
  lu.assertEquals(pack(f(F, S, print)(7)), pack(42, 7))
  local f2 = assert(I.load("\239\187\191#!x\nreturn 5", "=bom"))
  lu.assertEquals(f2(F, S, print)(), 5)
end

function TestPlacement.test_bytecode_rejected()
  local bc = string.dump(function() return 1 end)
  local out, err = I.source(bc)
  lu.assertNil(out)
  lu.assertStrContains(err, "bytecode")
end

------------------------------------------------------------------------
TestLines = {}

local LINE_SRC = [==[
local t = {}
local function g(x)
  for i = 1, 3 do
    if i == x then
      local s = "multi\
line string"
      error("boom " .. i)
    end
  end
end
--[[ a
long comment ]]
local function h(y)
  while true do
    local r = g(y)
    return r
  end
end
local v = h(...)
return v
]==]

function TestLines.test_error_line_same()
  local F, S = newFS()
  local fo = assert(load(LINE_SRC, "=lines"))
  local fi = assert(I.load(LINE_SRC, "=lines"))
  local ok1, e1 = pcall(fo, 2)
  local ok2, e2 = pcall(fi(F, S, function() end), 2)
  lu.assertFalse(ok1)
  lu.assertFalse(ok2)
  lu.assertEquals(e1, "lines:7: boom 2")
  lu.assertEquals(e2, e1)
end

function TestLines.test_traceback_lines_same()
  local F, S = newFS()
  local fo = assert(load(LINE_SRC, "=lines"))
  local fi = assert(I.load(LINE_SRC, "=lines"))
  local function lines(tb)
    local r = {}
    for l in tb:gmatch("lines:(%d+):") do r[#r + 1] = tonumber(l) end
    return r
  end
  local _, t1 = xpcall(fo, debug.traceback, 3)
  local _, t2 = xpcall(function() return fi(F, S, function() end)(3) end,
                       debug.traceback)
  local l1, l2 = lines(t1), lines(t2)
  lu.assertEquals(l1, { 7, 7, 15, 19 })  -- message, g, h, chunk
  lu.assertEquals(l2, l1)
end

function TestLines.test_default_chunkname_like_load()
  local src = "local x = 1\nerror('e')"
  local F, S = newFS()
  local _, e1 = pcall(assert(load(src)))
  local _, e2 = pcall(assert(I.load(src))(F, S, print))
  lu.assertEquals(e2, e1)
end

------------------------------------------------------------------------
TestBehaviour = {}

local PROGRAMS = {
  numeric_for = [[
    local s = 0
    for i = 1, 100 do s = s + i end
    for i = 10, 1, -3 do s = s + i end
    for i = 1, 0 do s = s + 1000 end
    return s ]],
  generic_for = [[
    local t, r = { a = 1, b = 2, c = 3 }, 0
    for k, v in pairs(t) do r = r + v * #k end
    local l = {}
    for i, v in ipairs({ 5, 6, 7 }) do l[#l + 1] = i * v end
    return r, table.concat(l, ",") ]],
  while_loop = [[
    local n, steps = 27, 0
    while n ~= 1 do
      if n % 2 == 0 then n = n / 2 else n = 3 * n + 1 end
      steps = steps + 1
    end
    return steps ]],
  repeat_until_local = [[
    local i, acc = 0, {}
    repeat
      i = i + 1
      local done = i * i > 50
      acc[#acc + 1] = i
    until done
    return #acc, acc[#acc] ]],
  goto_continue = [[
    local out = {}
    for i = 1, 10 do
      local odd = i % 2 == 1
      if odd then goto continue end
      out[#out + 1] = i
      ::continue::
    end
    local j = 0
    while j < 5 do
      j = j + 1
      local sq = j * j
      if sq == 9 then goto skip end
      out[#out + 1] = sq
      ::skip::
    end
    return table.concat(out, " ") ]],
  goto_backward = [[
    local i, s = 0, 0
    ::top::
    i = i + 1
    s = s + i
    if i < 10 then goto top end
    return i, s ]],
  closures = [[
    local function counter()
      local n = 0
      return function(k) n = n + (k or 1); return n end
    end
    local c1, c2 = counter(), counter()
    c1() c1(5) c2(2)
    local fs = {}
    for i = 1, 3 do fs[i] = function() return i * 10 end end
    return c1(), c2(), fs[1]() + fs[2]() + fs[3]() ]],
  methods = [[
    local Acc = {}
    Acc.__index = Acc
    function Acc.new(v) return setmetatable({ v = v }, Acc) end
    function Acc:add(x) self.v = self.v + x; return self end
    function Acc.static(a, b) return a .. b end
    local a = Acc.new(1):add(2):add(3)
    return a.v, Acc.static("x", "y"), ("abc"):upper() ]],
  varargs_chunk = [[
    local n = select("#", ...)
    local a, b, c = ...
    local function sum(...)
      local s = 0
      for i = 1, select("#", ...) do s = s + (select(i, ...) or 0) end
      return s
    end
    return n, a, b, c, sum(...) ]],
  multi_return = [[
    return 1, nil, "three", false, nil ]],
  recursion = [[
    local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end
    local function fact(n) return n <= 1 and 1 or n * fact(n - 1) end
    return fib(20), fact(10) ]],
  strings_and_semicolons = [==[
    local s = "while x do end"; local t = [[for]];
    local u = 'a\z
               b' ; local v = "c\
d"
    return s .. t .. u .. v, #v ]==],
  nested_loops = [[
    local r = 0
    for i = 1, 10 do
      local j = 0
      while j < i do
        j = j + 1
        repeat r = r + 1 until true
      end
    end
    return r ]],
}

function TestBehaviour.test_same_results()
  local F, S = newFS()
  local calls = 0
  local C = function() calls = calls + 1 end
  for name, src in pairs(PROGRAMS) do
    local fo, e1 = load(src, "=" .. name)
    lu.assertNotNil(fo, e1)
    local fi, e2 = I.load(src, "=" .. name)
    lu.assertNotNil(fi, e2)
    lu.assertEquals(pack(fi(F, S, C)(1, 2, 3, nil)), pack(fo(1, 2, 3, nil)), name)
  end
  lu.assertEquals(calls, 0)   -- flag was never set
end

function TestBehaviour.test_env_argument()
  local F, S = newFS()
  local env = { x = 41 }
  local f = assert(I.load("y = x + 1 return y", "=env", env))
  lu.assertEquals(f(F, S, print)(), 42)
  lu.assertEquals(env.y, 42)
end

------------------------------------------------------------------------
TestFiring = {}

function TestFiring.test_fires_in_loops_and_entries()
  local F, S = newFS()
  local calls = 0
  local C = function() calls = calls + 1 end
  local cases = {
    { "for i = 1, 5 do end", 5 },
    { "local i = 0 while i < 4 do i = i + 1 end", 4 },
    { "local i = 0 repeat i = i + 1 until i == 3", 3 },
    { "local function f() end f() f()", 2 },
    { "local i = 0 ::a:: i = i + 1 if i < 6 then goto a end", 5 },
    { "for k in pairs({1, 2, 3}) do end", 3 },
    { "do local x = 1 end if true then end", 0 },
  }
  for _, c in ipairs(cases) do
    calls = 0
    F[0] = 1
    local f = assert(I.load(c[1], "=fire"))
    f(F, S, C)()
    lu.assertEquals(calls, c[2], c[1])
  end
  F[0] = 0
end

function TestFiring.test_error_from_C_stops_infinite_loop()
  local F, S = newFS()
  local seen = 0
  local C = function()
    seen = seen + 1
    error("isle: interrupted", 0)
  end
  for _, src in ipairs({
    "while true do end",
    "repeat until false",
    "for i = 1, math.huge do end",
    "::l:: goto l",
    "local function r() return r() end return r()",
  }) do
    F[0] = 1
    local f = assert(I.load(src, "=inf"))
    -- Watchdog so that a missing checkpoint fails instead of hanging:
    -- with the JIT off, count hooks run.
    jit.off()
    debug.sethook(function() error("watchdog: no checkpoint", 0) end, "", 1e7)
    local ok, err = pcall(f(F, S, C))
    debug.sethook()
    jit.on()
    lu.assertFalse(ok, src)
    lu.assertEquals(err, "isle: interrupted", src)
  end
  lu.assertEquals(seen, 5)
end

function TestFiring.test_flag_set_later_stops_loop()
  -- The flag is raised by code outside the loop body (a metamethod on a
  -- distinct object), after many iterations have already run compiled.
  local F, S = newFS()
  local n = 0
  local C = function() error("stopped", 0) end
  local src = [[
    local tick = ...
    local x = 0
    while true do x = x + 1 if x % 100000 == 0 then tick(x) end end ]]
  local f = assert(I.load(src, "=later"))
  local ok, err = pcall(f(F, S, C), function(x)
    n = x
    if x >= 1000000 then F[0] = 1 end
  end)
  lu.assertFalse(ok)
  lu.assertEquals(err, "stopped")
  lu.assertEquals(n, 1000000)
end

------------------------------------------------------------------------
TestJit = {}

-- Runs the chunk text `src` (which returns a function) twice under the
-- JIT: once with a jit.attach "trace" handler to confirm a trace is
-- recorded for it, once with jit.dump writing IR to a temp file.  (LuaJIT
-- keeps a single handler per event, so the two cannot share a run.)
local function dump_ir(src, name, fn_args)
  local dump = require("jit.dump")
  jit.on()
  local traced = 0
  local function on_trace(what, _tr, func)
    if what == "stop" and func and
       require("jit.util").funcinfo(func).source == "=" .. name then
      traced = traced + 1
    end
  end
  jit.flush()
  jit.attach(on_trace, "trace")
  local r = assert(load(src, "=" .. name))()(unpack(fn_args, 1, 3))(unpack(fn_args, 4))
  jit.attach(on_trace)

  local tmp = os.tmpname()
  jit.flush()
  dump.on("tiT", tmp)
  local r2 = assert(load(src, "=" .. name))()(unpack(fn_args, 1, 3))(unpack(fn_args, 4))
  dump.off()
  local text = readfile(tmp) or ""
  os.remove(tmp)
  lu.assertEquals(r2, r)
  return text, traced, r
end

-- Returns true if an XLOAD appears after the LOOP marker of a trace.
local function xload_in_loop(text)
  local after = false
  for line in text:gmatch("[^\n]+") do
    if line:find("^%-%-%-%- TRACE") then after = false end
    if line:find("%-%- LOOP %-%-") then after = true end
    if after and line:find(" XLOAD ") then return true end
  end
  return false
end

function TestJit.test_flag_load_stays_in_compiled_loop()
  if not jit.status() then jit.on() end
  lu.assertTrue(jit.status(), "JIT not available")
  local F, S = newFS()
  local body = "local n = ... local x = 0 for i = 1, n do x = x + i end return x"
  local out = inst(body)
  local text, traced, r = dump_ir(out, "isle_jit_test",
                                  { F, S, function() end, 5000 })
  lu.assertEquals(r, 5000 * 5001 / 2)
  lu.assertTrue(traced > 0, "no trace recorded for the chunk")
  lu.assertStrContains(text, "start isle_jit_test:1")
  lu.assertStrContains(text, "LOOP")
  lu.assertTrue(xload_in_loop(text), "flag load hoisted out of loop:\n" .. text)

  -- Control: without the store through S the load IS hoisted, which is
  -- what makes the check above meaningful.
  local plain = out:gsub("__isle_S%[0%]=__isle_F%[0%] ", "")
  local text2, traced2 = dump_ir(plain, "isle_jit_ctl",
                                 { F, S, function() end, 5000 })
  lu.assertTrue(traced2 > 0)
  lu.assertStrContains(text2, "LOOP")
  lu.assertFalse(xload_in_loop(text2), "control unexpectedly kept the load")
end

-- Non-tail recursion gets the check without the store at its entry (no tail
-- call): its trace loops through new frames ("up-recursion"), which LuaJIT's
-- loop optimisation leaves alone, so the trace still loads the flag on each
-- pass. test_stop's "plain recursion" stops such a compiled fib for real.
function TestJit.test_flag_load_stays_in_up_recursion()
  if not jit.status() then jit.on() end
  local body = "local n = ... local function fib(k) if k < 2 then return k end "
    .. "return fib(k - 1) + fib(k - 2) end return fib(n)"
  local out = inst(body)
  lu.assertEquals(count(out, CP), 0)
  lu.assertEquals(count(out, ENTRY), 1)
  local F, S = newFS()
  local text, traced, r = dump_ir(out, "isle_jit_uprec", { F, S, function() end, 22 })
  lu.assertEquals(r, 17711)
  lu.assertTrue(traced > 0, "no trace recorded for the chunk")
  -- The IR of each trace that loops by up-recursion holds the flag load.
  local n = 0
  for ir, link in text:gmatch("%-%-%-%- TRACE %d+ IR\n(.-)%-%-%-%- TRACE %d+ stop %-> ([%w%-]+)") do
    if link == "up-recursion" then
      n = n + 1
      lu.assertStrContains(ir, " XLOAD ", false, "up-recursion trace without the flag load:\n" .. text)
    end
  end
  lu.assertTrue(n > 0, "no up-recursion trace:\n" .. text)
end

-- Tail recursion compiles to a looping trace of a closure, whose immutable
-- upvalues LuaJIT turns into constants. The factory's `+ 0` makes the two
-- checkpoint pointers pointer values (not arrays) before they become the
-- upvalues: two constant array addresses never alias, two constant pointer
-- values may, so the load stays in the loop (docs/instrument.md).
function TestJit.test_flag_load_stays_in_tail_recursion()
  if not jit.status() then jit.on() end
  local body = "local n = ... local function f(k, x) if k == 0 then return x end "
    .. "return f(k - 1, x + k) end return f(n, 0)"
  local out = inst(body)
  for _, mk in ipairs({ newFS, function()
      local F, S = newFS()
      return ffi.cast("int32_t *", F), ffi.cast("int32_t *", S)
    end }) do
    local F, S = mk()
    local text, traced, r = dump_ir(out, "isle_jit_tail", { F, S, function() end, 5000 })
    lu.assertEquals(r, 5000 * 5001 / 2)
    lu.assertTrue(traced > 0, "no trace recorded for the chunk")
    lu.assertStrContains(text, "LOOP")
    lu.assertTrue(xload_in_loop(text), "flag load hoisted out of the tail-recursion loop:\n" .. text)
  end

  -- Control: arrays bound straight to immutable upvalues lose the load.
  local plain = out:gsub("^return function%(__isle_f, __isle_s, __isle_C%) local __isle_F, __isle_S = "
    .. "__isle_f %+ 0, __isle_s %+ 0 ", "return function(__isle_F, __isle_S, __isle_C) ")
  lu.assertNotEquals(plain, out)
  local F, S = newFS()
  local text2, traced2 = dump_ir(plain, "isle_jit_tail_ctl", { F, S, function() end, 5000 })
  lu.assertTrue(traced2 > 0)
  lu.assertStrContains(text2, "LOOP")
  lu.assertFalse(xload_in_loop(text2), "control unexpectedly kept the load")
end

function TestJit.test_cost_hot_loop()
  -- Not a hard benchmark; just report and sanity-check the overhead.
  local F, S = newFS()
  local body = "local n = ... local x = 0 for i = 1, n do x = x + i % 3 end return x"
  local fo = assert(load(body, "=cost"))
  local fi = assert(I.load(body, "=cost"))
  local N = 2e7
  fo(1000) fi(F, S, print)(1000)
  local t0 = os.clock()
  local a = fo(N)
  local t1 = os.clock()
  local b = fi(F, S, print)(N)
  local t2 = os.clock()
  lu.assertEquals(a, b)
  io.stderr:write(string.format(
    "\n[instrument] hot loop: %.2f ns/iter plain, %.2f ns/iter instrumented\n",
    (t1 - t0) / N * 1e9, (t2 - t1) / N * 1e9))
end

------------------------------------------------------------------------
TestCorpus = {}

local function corpus_files()
  local dirs = {
    "/usr/share/lua", "/usr/local/share/lua",
    "/usr/share/luajit-2.1.0-beta3", "/usr/share/luajit-2.1",
    "/usr/local/share/luajit-2.1.0-beta3", "/usr/share/doc/lua-unit",
    "lua", "test",
  }
  local files = {}
  for _, d in ipairs(dirs) do
    local p = io.popen("find '" .. d .. "' -name '*.lua' -type f 2>/dev/null")
    if p then
      for l in p:lines() do files[#files + 1] = l end
      p:close()
    end
  end
  table.sort(files)
  return files
end

function TestCorpus.test_corpus_compiles()
  local files = corpus_files()
  local n, ok = 0, 0
  for _, path in ipairs(files) do
    local src = readfile(path)
    if src then
      n = n + 1
      local out, err = I.source(src)
      if load(src, "@" .. path) then
        lu.assertNotNil(out, path .. ": " .. tostring(err))
        lu.assertEquals(count(out, "\n"), count(src, "\n") + 1, path)
        local f, lerr = load(out, "@" .. path)
        lu.assertNotNil(f, lerr)
        ok = ok + 1
      end
    end
  end
  lu.assertTrue(n > 0, "empty corpus")
  lu.assertTrue(ok > 10, "too few compilable corpus files: " .. ok)
  io.stderr:write(string.format("\n[instrument] corpus: %d files, %d compiled ok\n", n, ok))
end

local function find_module(name)
  for _, pat in ipairs({
    "/usr/share/luajit-2.1.0-beta3/?.lua", "/usr/share/lua/5.1/?.lua",
  }) do
    local path = pat:gsub("%?", (name:gsub("%.", "/")))
    local src = readfile(path)
    if src then return src, path end
  end
end

local function load_module(name, instrumented)
  local src, path = find_module(name)
  if not src then return nil end
  if instrumented then
    local F, S = newFS()
    local f = assert(I.load(src, "@" .. path))
    return f(F, S, function() end)(name)
  end
  return assert(load(src, "@" .. path))(name)
end

function TestCorpus.test_modules_same_shape()
  local tried = 0
  for _, name in ipairs({ "jit.bc", "jit.v", "jit.dis_x86", "jit.dump", "luaunit" }) do
    local a = load_module(name, false)
    if a then
      tried = tried + 1
      local b = load_module(name, true)
      lu.assertEquals(type(b), type(a), name)
      local ka, kb = {}, {}
      for k, v in pairs(a) do ka[k] = type(v) end
      for k, v in pairs(b) do kb[k] = type(v) end
      lu.assertEquals(kb, ka, name)
    end
  end
  lu.assertTrue(tried > 0)
end

function TestCorpus.test_instrumented_disassembler_works()
  local a = load_module("jit.dis_x86", false)
  local b = load_module("jit.dis_x86", true)
  if not a then return end
  local code = "\x55\x48\x89\xe5\x48\x83\xec\x10\x89\x7d\xfc\x8b\x45\xfc\x0f\xaf" ..
               "\xc0\xc9\xc3\x66\x0f\x1f\x44\x00\x00\xf3\x0f\x58\xc1\xe8\x00\x00\x00\x00"
  local o1, o2 = {}, {}
  a.disass64(code, 0x1000, function(s) o1[#o1 + 1] = s end)
  b.disass64(code, 0x1000, function(s) o2[#o2 + 1] = s end)
  lu.assertTrue(#o1 > 5)
  lu.assertEquals(table.concat(o2), table.concat(o1))
end

------------------------------------------------------------------------
TestErrors = {}

function TestErrors.test_lexer_errors_name_line()
  local cases = {
    { "local a = 1\nlocal b = [[\nabc\n", "unfinished long string", 2 },
    { "local a = 1\n\nlocal b = [==[ ]] ]=]", "unfinished long string", 3 },
    { "x = 1\n--[[ comment\n\n", "unfinished long comment", 2 },
    { "x = 1\ny = 2\nz = 'abc\n'", "unfinished string", 3 },
    { "x = \"abc", "unfinished string", 1 },
    { "x = 1\r\ny = 2\r\nz = [=[", "unfinished long string", 3 },
  }
  for _, c in ipairs(cases) do
    local out, err = I.source(c[1])
    lu.assertNil(out)
    lu.assertStrContains(err, c[2])
    lu.assertStrContains(err, "line " .. c[3])
  end
end

function TestErrors.test_load_reports_lua_error()
  local cases = {
    "local a = 1\nlocal b = = 2\n",
    "for i = 1 do end",
    "while true do",
    "x = [[abc",
    "local function f( end",
    "goto nowhere",
    "x = 'unterminated\ny = 1",
  }
  for _, src in ipairs(cases) do
    local _, e1 = load(src, "=syn")
    local f, e2 = I.load(src, "=syn")
    lu.assertNil(f, src)
    lu.assertNotNil(e1, src)
    lu.assertEquals(e2, e1)
  end
end

function TestErrors.test_no_globals_needed_or_leaked()
  local path = "lua/isle/instrument.lua"
  local src = assert(readfile(path))
  local env = setmetatable({
    require = require, error = error, type = type, tostring = tostring,
    select = select, pairs = pairs, ipairs = ipairs,
    setmetatable = setmetatable, rawget = rawget, pcall = pcall,
  }, { __newindex = function(_, k) error("global write: " .. tostring(k)) end,
       __index = function(_, k) error("global read: " .. tostring(k)) end })
  local f = assert(load(src, "@" .. path, "t", env))
  local M = f()
  local out = M.source("while a do end")
  lu.assertEquals(count(out, CP), 1)
end

os.exit(lu.LuaUnit.run())
