-- isle.instrument: insert preemption checkpoints into Lua source text.
--
-- Code that LuaJIT has compiled into a trace never runs debug hooks, so a
-- hot loop cannot be interrupted from outside.  This module rewrites Lua
-- source so that every loop iteration, every function entry and every
-- `goto` first polls a flag shared with other threads:
--
--   if __isle_F[0]~=0 then __isle_C() end __isle_S[0]=__isle_F[0]
--
-- The chunk is wrapped as a factory
--
--   return function(__isle_f, __isle_s, __isle_C) local __isle_F, __isle_S =
--     __isle_f + 0, __isle_s + 0 return function(...) <source>\nend end
--
-- (one line) with the prefix on line 1 and no other newline added, so line
-- numbers are unchanged.  Calling the factory with the flag pointer, a
-- scratch pointer and the slow path gives the chunk itself: a real function,
-- so setfenv/getfenv on it behave as on a plain chunk.  __isle_F and
-- __isle_S are assigned once, so they are immutable upvalues: in traces of
-- closures (recursion, tail calls) LuaJIT turns them into constants, and a
-- function entry's checkpoint is then a load, a compare and (if the function
-- makes a tail call, see ENTRY below) a store with no type checks.  `+ 0`
-- makes them pointer values even when the caller passes arrays
-- (ffi.new("int32_t[1]")): LuaJIT proves two constant array
-- addresses apart, so the store would no longer keep the load in a
-- tail-recursive loop, but it does not disambiguate two constant pointer
-- values (lj_opt_mem.c, aa_xref).  test_instrument and test_stop check it.
-- See docs/instrument.md.
--
-- Only `require` and a few base functions (cached below) are needed.

local require, type, tostring, pcall, rawget, pairs =
      require, type, tostring, pcall, rawget, pairs

local string = require("string")
local table = require("table")

local byte, find, sub = string.byte, string.find, string.sub
local concat = table.concat

local M = {}

local CHECKPOINT = "if __isle_F[0]~=0 then __isle_C() end __isle_S[0]=__isle_F[0] "
local CP_AFTER = " " .. CHECKPOINT   -- after `do`, `repeat`, `)`
-- A function entry whose body makes no tail call gets the check without the
-- store. The store is there only to keep the load inside a looping trace:
-- LuaJIT runs its loop optimisation (which hoists a load no store can
-- change) only on a trace that loops back to itself at the frame it
-- started in (lj_trace.c, trace_state: framedepth + retdepth == 0). A
-- function entry is in such a loop only through tail calls (a loop of its
-- own has its own checkpoint, with the store): every function of a
-- tail-call cycle makes a tail call, and keeps the store. Non-tail
-- recursion (fib) loops through frames, so its trace reloads the flag on
-- every pass; there the store cost more than the check (fib: 1.19x the
-- plain instructions with it, 1.0x without, callgrind).
local ENTRY = "if __isle_F[0]~=0 then __isle_C() end "
local ENTRY_AFTER = " " .. ENTRY
local PREFIX = "return function(__isle_f, __isle_s, __isle_C) local __isle_F, __isle_S = __isle_f + 0, "
  .. "__isle_s + 0 return function(...) "
local SUFFIX = "\nend end"

M.CHECKPOINT = CHECKPOINT
M.ENTRY = ENTRY
M.PREFIX = PREFIX
M.SUFFIX = SUFFIX

-- Characters that can start something the scanner cares about.
-- Everything else (operators, whitespace, `.`, `(` ...) is skipped.
local PAT  = "[0-9A-Za-z_\128-\255\"'%-%[]"
local PATF = "[0-9A-Za-z_\128-\255\"'%-%[%)]"   -- also `)` after `function`

-- Byte classes: 1 identifier start, 2 digit, 3 quote, 4 '-', 5 '[', 6 ')'.
-- Written out by runs of bytes rather than computed in a 256-turn loop:
-- the JIT would compile that loop and its branches, which made loading
-- this module cost about 1.5 ms in every state that loads it (each isle
-- that instruments a chunk itself, as for C hosts) instead of 0.05 ms.
local function run(n, class) return string.rep(string.char(class), n) end
local CLASSES = run(34, 0) .. run(1, 3) .. run(4, 0) .. run(1, 3) .. run(1, 0) -- 0-40: '"' 34, "'" 39
  .. run(1, 6) .. run(3, 0) .. run(1, 4) .. run(2, 0)                          -- 41 ')', 45 '-'
  .. run(10, 2) .. run(7, 0) .. run(26, 1) .. run(1, 5) .. run(3, 0)           -- 0-9, A-Z, 91 '['
  .. run(1, 1) .. run(1, 0) .. run(26, 1) .. run(5, 0) .. run(128, 1)          -- '_', a-z, 128-255
local CLASS = { [0] = byte(CLASSES, 1), byte(CLASSES, 2, 256) }

-- Keywords that change block structure.
local K_WHILE, K_FOR, K_DO, K_REPEAT, K_UNTIL, K_IF, K_FUNCTION, K_END, K_GOTO, K_RETURN =
      1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local KW = {
  ["while"] = K_WHILE, ["for"] = K_FOR, ["do"] = K_DO,
  ["repeat"] = K_REPEAT, ["until"] = K_UNTIL, ["if"] = K_IF,
  ["function"] = K_FUNCTION, ["end"] = K_END, ["goto"] = K_GOTO,
  ["return"] = K_RETURN,
}
-- First bytes of those keywords (cheap filter before taking a substring).
local KFIRST = {}
for w in pairs(KW) do KFIRST[byte(w)] = true end

-- All reserved words (a `goto` target must be a plain Name).
local RESERVED = {}
for w in string.gmatch("and break do else elseif end false for function " ..
    "goto if in local nil not or repeat return then true until while", "%a+") do
  RESERVED[w] = true
end
-- Words after which an expression (not a statement) follows.  `goto`
-- is only a statement keyword in statement position (LuaJIT accepts it
-- as an ordinary identifier elsewhere, e.g. `local goto = 1`).
local EXPRWORD = {
  ["and"] = true, ["or"] = true, ["not"] = true, ["return"] = true,
  ["local"] = true, ["if"] = true, ["elseif"] = true, ["while"] = true,
  ["until"] = true, ["in"] = true, ["for"] = true, ["function"] = true,
  ["goto"] = true,
}

-- Block stack entries.
local S_HEAD, S_BLOCK, S_REPEAT = 1, 2, 3

-- Line number of byte position `s` (Lua counts \n, \r, \r\n, \n\r as one).
local function lineof(src, s)
  local line, p = 1, 1
  while true do
    local a = find(src, "[\n\r]", p)
    if not a or a >= s then return line end
    local b, nb = byte(src, a, a + 1)
    if (nb == 10 or nb == 13) and nb ~= b then p = a + 2 else p = a + 1 end
    line = line + 1
  end
end

-- End index of a number token starting at s (follows LuaJIT's lexer:
-- identifier chars and dots, plus a sign right after an exponent letter).
local function numend(src, s)
  local xp = 101                                  -- 'e'
  if byte(src, s) == 48 then
    local b = byte(src, s + 1)
    if b == 120 or b == 88 then xp = 112 end      -- 0x -> 'p'
  end
  local p = s
  while true do
    local _, e = find(src, "^[%w_.\128-\255]*", p + 1)
    local b = byte(src, e + 1)
    if b == 43 or b == 45 then
      local l = byte(src, e)
      if l == xp or l == xp - 32 then p = e + 1 else return e end
    else
      return e
    end
  end
end

-- Index of the closing quote of a string starting at s, or nil.
local function strend(src, s, q)
  local qpat = q == 34 and '[\\\n\r"]' or "[\\\n\r']"
  local p = s + 1
  while true do
    local a = find(src, qpat, p)
    if not a then return nil end
    local b = byte(src, a)
    if b == q then return a end
    if b ~= 92 then return nil end                -- raw newline
    local x = byte(src, a + 1)
    if x == nil then return nil
    elseif x == 10 or x == 13 then                -- backslash-newline
      local y = byte(src, a + 2)
      if (y == 10 or y == 13) and y ~= x then p = a + 3 else p = a + 2 end
    elseif x == 122 then                          -- \z skips whitespace
      local _, e = find(src, "^%s*", a + 2)
      p = e + 1
    else
      p = a + 2
    end
  end
end

-- Is the `goto` at s in statement position?  pe = end of the previous
-- real token (0 if none), [pks, pe] its text, pkk its kind (0 none,
-- 1 word, 2 value); cs/ce = comment spans seen since that token.
local function stmtpos(src, s, pe, pks, pkk, ncs, cs, ce)
  local p = s - 1
  while p > pe do
    local b = byte(src, p)
    if b == 32 or (b >= 9 and b <= 13) then
      p = p - 1
    else
      local hit = false
      for i = ncs, 1, -1 do
        if ce[i] == p then p = cs[i] - 1; hit = true; break end
      end
      if not hit then                             -- an operator character
        if b == 41 or b == 93 or b == 125 or b == 59 then return true end
        if b == 58 then return byte(src, p - 1) == 58 end        -- `::`
        if b == 46 then                                          -- `...`
          return p - 2 > pe and byte(src, p - 1) == 46
                 and byte(src, p - 2) == 46
                 and byte(src, p - 3) ~= 46
        end
        return false
      end
    end
  end
  if pkk ~= 1 then return true end
  return not EXPRWORD[sub(src, pks, pe)]
end

-- Is [a, b) only whitespace and the recorded comments (cs/ce)?
local function gapclean(src, a, b, ncs, cs, ce)
  local p = a
  while true do
    local _, e = find(src, "^%s*", p)
    p = e + 1
    if p >= b then return true end
    local hit = false
    for i = 1, ncs do
      if cs[i] == p then p = ce[i] + 1; hit = true; break end
    end
    if not hit then return false end
  end
end

-- Index of the last character of the comment starting at s (`--`), or nil
-- when it is a long comment with no end.
local function comment_end(src, s)
  local _, b, eq = find(src, "^%[(=*)%[", s + 2)
  if b then
    local _, e = find(src, "]" .. eq .. "]", b + 1, true)
    return e
  end
  local e = find(src, "[\n\r]", s + 2)
  return e and e - 1 or #src
end

-- Words that end a block: a `return`'s expression stops at them.
local ENDWORD = { ["end"] = true, ["else"] = true, ["elseif"] = true, ["until"] = true }

-- May the `return` whose expression starts at p be a tail call? Only a lone
-- call is one (`return f(x)`, `return o:m{...}`, `return f"s"`). The answer
-- is false only when that is certain: a comma, an operator or `and`/`or` at
-- the top level, or a last token that cannot end a call. Anything unusual
-- (`function` at the top level, an unbalanced bracket, text Lua rejects)
-- answers true: a store too many costs a little time, a store too few could
-- leave a tail-call loop without a checkpoint the JIT keeps.
local function maytail(src, p)
  local depth, call = 0, false
  while true do
    local s = find(src, "%S", p)
    if not s then return call end
    local c = byte(src, s)
    local cl = CLASS[c]
    if cl == 1 then                               -- name or keyword
      local _, e = find(src, "^[%w_\128-\255]*", s + 1)
      if depth == 0 then
        local w = sub(src, s, e)
        if ENDWORD[w] then return call end
        if w == "and" or w == "or" then return false end
        if w == "function" then return true end
        call = false
      end
      p = e + 1
    elseif cl == 2 then                           -- number
      if depth == 0 then call = false end
      p = numend(src, s) + 1
    elseif cl == 3 then                           -- quoted string
      local e = strend(src, s, c)
      if not e then return true end
      if depth == 0 then call = true end
      p = e + 1
    elseif cl == 4 then                           -- '-' or a comment
      if byte(src, s + 1) ~= 45 then
        if depth == 0 then return false end
        p = s + 1
      else
        local e = comment_end(src, s)
        if not e then return true end
        p = e + 1
      end
    elseif cl == 5 then                           -- '[' or a long string
      local _, b, eq = find(src, "^%[(=*)%[", s)
      if b then
        local _, e = find(src, "]" .. eq .. "]", b + 1, true)
        if not e then return true end
        if depth == 0 then call = true end
        p = e + 1
      elseif byte(src, s + 1) == 61 then
        return true
      else
        depth = depth + 1
        p = s + 1
      end
    elseif c == 40 or c == 123 then               -- '(' '{'
      depth = depth + 1
      p = s + 1
    elseif c == 41 or c == 125 or c == 93 then    -- ')' '}' ']'
      depth = depth - 1
      if depth < 0 then return true end
      if depth == 0 then call = c ~= 93 end
      p = s + 1
    elseif depth > 0 then
      p = s + 1
    elseif c == 59 then                           -- ';'
      return call
    elseif c == 46 then                           -- '.', '..', '...'
      if byte(src, s + 1) == 46 then return false end
      call = false
      p = s + 1
    elseif c == 58 then                           -- ':' of a method call
      call = false
      p = s + 1
    elseif c == 44 or c == 43 or c == 42 or c == 47 or c == 37 or c == 94
        or c == 60 or c == 62 or c == 61 or c == 126 or c == 35 then
      return false                                -- , + * / % ^ < > = ~ #
    else
      return true
    end
  end
end

-- Words a base-case guard's condition and values may hold.
local GUARDWORD = { ["and"] = true, ["or"] = true, ["not"] = true, ["nil"] = true,
                    ["true"] = true, ["false"] = true }

-- A function body that opens with a base-case guard, `if <cond> then return
-- <values> end`, gets its entry checkpoint right after the guard's `end`
-- when running the guard unchecked is bounded: no loop, no function, no tail
-- call, and at most one place that may call (an operator, which may run a
-- metamethod, an index, a call, a string or table argument). A run of calls
-- that never passes the checkpoint then makes at most one call per frame: a
-- chain, not a tree, which ends at the stack's limit. This matters for
-- speed: a flag read before fib's `if k < 2` costs it 1.5x in time, the same
-- read after it about 1.1x (docs/instrument.md). Returns the index of the
-- guard's `end`, or nil when the body does not open with one.
local function guard(src, p)
  local state = 0   -- 0 before `if`, 1 condition, 2 before `return`, 3 values
  local sites, depth, rs = 0, 0, nil
  while true do
    local s = find(src, "%S", p)
    if not s then return nil end
    local c = byte(src, s)
    local cl = CLASS[c]
    if c == 45 and byte(src, s + 1) == 45 then   -- a comment
      local e = comment_end(src, s)
      if not e then return nil end
      p = e + 1
    elseif cl == 1 then                           -- name or keyword
      local _, e = find(src, "^[%w_\128-\255]*", s + 1)
      local w = sub(src, s, e)
      if state == 0 then
        if w ~= "if" then return nil end
        state = 1
      elseif state == 2 then
        if w ~= "return" then return nil end
        state, rs = 3, e + 1
      elseif w == "then" then
        if state ~= 1 or depth ~= 0 then return nil end
        state = 2
      elseif w == "end" then
        if state ~= 3 or depth ~= 0 or sites > 1 or maytail(src, rs) then return nil end
        return e
      elseif RESERVED[w] and not GUARDWORD[w] then
        return nil                                -- function, else, a loop ...
      end
      p = e + 1
    elseif state ~= 1 and state ~= 3 then
      return nil
    elseif cl == 2 then                           -- number
      p = numend(src, s) + 1
    elseif cl == 3 then                           -- quoted string
      local e = strend(src, s, c)
      if not e then return nil end
      sites = sites + 1
      p = e + 1
    elseif cl == 5 then                           -- '[' or a long string
      local _, b, eq = find(src, "^%[(=*)%[", s)
      local e = s
      if b then
        _, e = find(src, "]" .. eq .. "]", b + 1, true)
        if not e then return nil end
      else
        depth = depth + 1
      end
      sites = sites + 1
      p = e + 1
    elseif c == 40 or c == 123 then               -- '(' '{'
      depth = depth + 1
      sites = sites + 1
      p = s + 1
    elseif c == 41 or c == 125 or c == 93 then    -- ')' '}' ']'
      depth = depth - 1
      if depth < 0 then return nil end
      p = s + 1
    elseif c == 44 then                           -- ','
      p = s + 1
    else
      -- One site per operator: `.`, `..` and `...` each count once, as
      -- does each comparison (`<`, `<=`, `==`, `~=` ...); each of
      -- `+ - * / % ^ #` and the `:` of a method call counts alone.
      local _, e = nil, s
      if c == 46 then
        _, e = find(src, "^%.+", s)
      elseif c == 60 or c == 62 or c == 61 or c == 126 then
        _, e = find(src, "^[<>=~]+", s)
      elseif not (c == 43 or c == 45 or c == 42 or c == 47 or c == 37 or c == 94
                  or c == 35 or c == 58) then
        return nil
      end
      sites = sites + 1
      p = e + 1
    end
  end
end

local function fail(src, what, s)
  return nil, what .. " at line " .. lineof(src, s)
end

--- Instrument Lua source text.
-- @return the wrapped chunk text, or nil and an error message.
function M.source(src)
  if type(src) ~= "string" then
    return nil, "source must be a string, got " .. type(src)
  end
  local n = #src
  local pos = 1
  if byte(src, 1) == 239 and byte(src, 2) == 187 and byte(src, 3) == 191 then
    pos = 4                                       -- UTF-8 BOM
  end
  if byte(src, pos) == 35 then                    -- `#!` line: blank it
    pos = find(src, "[\n\r]", pos) or n + 1
  end
  if byte(src, pos) == 27 then
    return nil, "cannot instrument precompiled bytecode"
  end

  local out, no = { PREFIX }, 1
  local last = pos            -- start of the not yet copied slice
  local st, sp = {}, 0        -- block stack
  -- Per block: for a function, the index in `out` of its entry checkpoint
  -- (-1 until its parameter list closes) and whether it may make a tail
  -- call; 0 for other blocks.
  local fo, ft = {}, {}
  -- Per function block: where its base-case guard ends (see guard), if its
  -- entry checkpoint waits for it.
  local gp = {}
  local pat = PAT
  -- previous real token (for `goto` statement detection)
  local pe, pks, pkk = 0, 0, 0
  local cs, ce, ncs = {}, {}, 0
  local gpend, gat, gend = false, 0, 0

  while true do
    local s = find(src, pat, pos)
    if not s then break end
    local c = byte(src, s)
    local cl = CLASS[c]
    if cl == 1 then                               -- name or keyword
      local _, e = find(src, "^[%w_\128-\255]*", s + 1)
      local k = nil
      if KFIRST[c] and e - s < 8 and e > s then k = KW[sub(src, s, e)] end
      if gpend then
        gpend = false
        if not RESERVED[sub(src, s, e)]
           and gapclean(src, gend + 1, s, ncs, cs, ce) then
          out[no + 1] = sub(src, last, gat - 1)
          out[no + 2] = CHECKPOINT
          no = no + 2
          last = gat
        end
      end
      if k then
        if k == K_DO then
          if sp > 0 and st[sp] == S_HEAD then
            st[sp] = S_BLOCK
            out[no + 1] = sub(src, last, e)
            out[no + 2] = CP_AFTER
            no = no + 2
            last = e + 1
          else
            sp = sp + 1; st[sp] = S_BLOCK; fo[sp] = 0
          end
        elseif k == K_END then
          if sp > 0 then
            if fo[sp] > 0 and not ft[sp] then out[fo[sp]] = ENTRY_AFTER end
            sp = sp - 1
            if sp > 0 and gp[sp] == e then       -- the end of a guard
              gp[sp] = nil
              fo[sp] = no + 2
              out[no + 1] = sub(src, last, e)
              out[no + 2] = CP_AFTER
              no = no + 2
              last = e + 1
            end
          end
        elseif k == K_IF then
          sp = sp + 1; st[sp] = S_BLOCK; fo[sp] = 0
        elseif k == K_FUNCTION then
          sp = sp + 1; st[sp] = S_BLOCK; fo[sp] = -1; ft[sp] = false; gp[sp] = nil
          pat = PATF
        elseif k == K_WHILE or k == K_FOR then
          sp = sp + 1; st[sp] = S_HEAD; fo[sp] = 0
        elseif k == K_RETURN then
          local i = sp
          while i > 0 and fo[i] == 0 do i = i - 1 end
          if i > 0 and not ft[i] and maytail(src, e + 1) then ft[i] = true end
        elseif k == K_REPEAT then
          sp = sp + 1; st[sp] = S_REPEAT; fo[sp] = 0
          out[no + 1] = sub(src, last, e)
          out[no + 2] = CP_AFTER
          no = no + 2
          last = e + 1
        elseif k == K_UNTIL then
          if sp > 0 then sp = sp - 1 end
        else -- K_GOTO
          if stmtpos(src, s, pe, pks, pkk, ncs, cs, ce) then
            gpend = true; gat = s; gend = e
          end
        end
      end
      pe, pks, pkk, ncs = e, s, 1, 0
      pos = e + 1
    elseif cl == 2 then                           -- number
      local e = numend(src, s)
      gpend = false
      pe, pks, pkk, ncs = e, s, 2, 0
      pos = e + 1
    elseif cl == 3 then                           -- quoted string
      local e = strend(src, s, c)
      if not e then return fail(src, "unfinished string", s) end
      gpend = false
      pe, pks, pkk, ncs = e, s, 2, 0
      pos = e + 1
    elseif cl == 4 then                           -- '-' or comment
      if byte(src, s + 1) == 45 then
        local e = comment_end(src, s)
        if not e then return fail(src, "unfinished long comment", s) end
        ncs = ncs + 1; cs[ncs] = s; ce[ncs] = e
        pos = e + 1
      else
        pos = s + 1
      end
    elseif cl == 5 then                           -- '[' or long string
      local _, b, eq = find(src, "^%[(=*)%[", s)
      if b then
        local _, e = find(src, "]" .. eq .. "]", b + 1, true)
        if not e then return fail(src, "unfinished long string", s) end
        gpend = false
        pe, pks, pkk, ncs = e, s, 2, 0
        pos = e + 1
      elseif byte(src, s + 1) == 61 then
        return fail(src, "invalid long string delimiter", s)
      else
        pos = s + 1
      end
    else                                          -- ')' closing parameters
      pat = PAT
      local ge = sp > 0 and fo[sp] == -1 and guard(src, s + 1)
      if ge then
        gp[sp] = ge                               -- placed at the guard's end
      else
        if sp > 0 and fo[sp] == -1 then fo[sp] = no + 2 end
        out[no + 1] = sub(src, last, s)
        out[no + 2] = CP_AFTER
        no = no + 2
        last = s + 1
      end
      pos = s + 1
    end
  end

  out[no + 1] = sub(src, last)
  out[no + 2] = SUFFIX
  return concat(out, "", 1, no + 2)
end

-- `load` is looked up lazily: instrument.source() works without it.
local load_fn
local function getload()
  if load_fn == nil then
    local ok, G = pcall(require, "_G")
    load_fn = ok and type(G) == "table" and rawget(G, "load") or false
  end
  return load_fn
end

--- Instrument and compile `src`.
-- Returns the factory f(F, S, C) -> chunk, or nil and an error.
-- chunkname defaults to the source text itself, as load() does, so that
-- messages read `[string "..."]` exactly like the uninstrumented chunk.
-- env (optional) becomes the environment of the loaded code.
function M.load(src, chunkname, env)
  local load = getload()
  if not load then return nil, "isle.instrument: load() is not available" end
  if type(src) ~= "string" then
    return nil, "source must be a string, got " .. type(src)
  end
  chunkname = chunkname or src
  local out, err = M.source(src)
  if not out then
    -- Let Lua produce its own message if it also rejects the source.
    local f, lerr = load(src, chunkname, "t")
    if not f then return nil, lerr end
    return nil, "isle.instrument: cannot instrument " .. tostring(chunkname)
                .. ": " .. tostring(err)
  end
  local f, lerr
  if env ~= nil then f, lerr = load(out, chunkname, "t", env)
  else f, lerr = load(out, chunkname, "t") end
  if not f then
    local g, oerr = load(src, chunkname, "t")
    if not g then return nil, oerr end
    return nil, "isle.instrument: instrumented chunk does not compile " ..
                "although the original does (instrumenter bug, or the 3 " ..
                "extra locals/upvalues exceed a limit): " .. tostring(lerr)
  end
  return f()
end

return M
