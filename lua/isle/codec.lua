-- Values that cross states: checked, then encoded with LuaJIT's string.buffer.
--
-- Wire layout of a value list: one tag byte ('V' plain, 'F' holds shipped
-- functions), the count, then each value encoded in turn. Upvalue-free Lua
-- functions travel as bytecode inside a table marked with FN_MT (string.buffer
-- keeps the marker through its `metatable` option) and are loaded back on the
-- other side. Everything is checked before a byte is sent, so a bad value is
-- reported in the sender with its path, e.g. `args[2].cb`.
--
-- Objects that live in C memory (tokens) are not written as addresses: the
-- encoder "attaches" them (codec.attach) and writes their index. The list
-- of attachments goes with the bytes into the C object that carries them
-- (isle.wire: a message, a result, an isle's boot), which holds a reference
-- to each for as long as it lives; whoever decodes reads them back from
-- that object (the `from` argument of restore and get_values).
local ffi = require("ffi")
local buffer = require("string.buffer")
local string = require("string")
local debug = require("debug")

local type, next, select, tostring, tonumber, setmetatable, getmetatable, load, loadstring, require =
    type, next, select, tostring, tonumber, setmetatable, getmetatable, load, loadstring, require
local string_dump, string_format, string_match = string.dump, string.format, string.match
local getinfo, getupvalue, setupvalue = debug.getinfo, debug.getupvalue, debug.setupvalue
local dgetmetatable, setfenv = debug.getmetatable, setfenv
local istype = ffi.istype

local codec = {}
local TAG_F = ("F"):byte()

local FN_MT = {}       -- a shipped function: { bytecode }
local SPECIAL_MT = {}  -- a shipped special object: { kind, payload }
local OPTS = { metatable = { FN_MT, SPECIAL_MT } }
local specials = {}    -- metatable -> { kind, ship, restore }
local special_kinds = {}
-- Kinds are fixed numbers so that every state agrees on them; the module of
-- a kind is loaded on first use in a state that receives one.
local SPECIAL_MODULES = { [1] = "isle.token", [2] = "isle.channel", [3] = "isle.buffer", [4] = "isle.pool" }

-- Lets a module send its objects: ship(obj, path) returns a plain value
-- (usually the index codec.attach gave it), restore(value, from) rebuilds
-- the object in the receiving state, `from` being the carrier the bytes
-- were read from.
function codec.register_special(kind, mt, ship, restore)
    local s = { kind = kind, ship = ship, restore = restore }
    specials[mt] = s
    special_kinds[kind] = s
end

local function special_restore(kind, payload, from)
    local s = special_kinds[kind]
    if not s then
        require(SPECIAL_MODULES[kind])
        s = special_kinds[kind]
    end
    return s.restore(payload, from)
end

codec.MAX_DEPTH = 100
-- At most this many attachments per encode: ISLE_MSG_REFS_MAX of csrc/isle.h
-- (test/test_static.lua checks that they agree).
codec.MAX_ATTACHED = 65536

function codec.new_buffer()
    return buffer.new(OPTS)
end

local function key_path(path, k)
    local tk = type(k)
    if tk == "string" then
        if string_match(k, "^[%a_][%w_]*$") then return path .. "." .. k end
        return path .. string_format("[%q]", k)
    elseif tk == "number" or tk == "boolean" then
        return path .. "[" .. tostring(k) .. "]"
    end
    return path .. "[<" .. tk .. " key>]"
end

-- A rejected value: raised as a "value" error by the caller (isle.errors).
local function bad(path, what)
    error({ isle_value_error = true, message = "cannot send " .. what .. " at " .. path }, 0)
end

-- The attachments of the encode under way, in order: attached[1..n]. One
-- list per state, as the encode buffer is (runtime.enc); isle.wire hands
-- it to the core with the bytes. Strong references, so that what is attached
-- stays alive until the core has taken its own.
local attached = { n = 0 }
codec.attached = attached

-- Appends `x` to the attachments; returns its index (from 1).
function codec.attach(x, path)
    local n = attached.n + 1
    if n > codec.MAX_ATTACHED then
        bad(path, "more than " .. codec.MAX_ATTACHED .. " tokens in one message")
    end
    attached[n] = x
    attached.n = n
    return n
end

-- The reference a special value arrived with (its restore's `index` into
-- the refs of carrier `from`: a message, result or boot), checked; with
-- `of_ref` (isle_chan_of_ref...), the object that reference stands for.
-- `what` names the value in the errors ("a channel").
function codec.carried(from, index, what, of_ref)
    if from == nil or type(index) ~= "number" or index < 1 or index > tonumber(from.nrefs) then
        error("isle: " .. what .. " arrived without its reference (index " .. tostring(index) .. ")", 0)
    end
    local ref = from.refs[index - 1]
    if of_ref == nil then return ref end
    local p = of_ref(ref)
    if p == nil then error("isle: " .. what .. " arrived as something else (index " .. tostring(index) .. ")", 0) end
    return p
end

-- Forgets the attachments (after the core took its references, or when an
-- encode is abandoned): nothing is left holding them.
local function drop_attached()
    for i = 1, attached.n do attached[i] = nil end
    attached.n = 0
end
codec.drop_attached = drop_attached

-- Starts an encode into `buf`: empties it and the attachments. Every encode
-- that may attach starts here; one that fails comes back here too, so that
-- the list does not keep its objects alive until the next encode.
function codec.reset(buf)
    buf:reset()
    if attached.n > 0 then drop_attached() end
    return buf
end

local function cdata_ok(v)
    return istype("int64_t", v) or istype("uint64_t", v) or istype("complex", v)
end

-- The upvalues isle.instrument gives the functions it compiles: not the
-- user's, so they do not count, and the receiver binds its own.
local CHECKPOINT_UPVALUES = { __isle_F = true, __isle_S = true, __isle_C = true }
codec.CHECKPOINT_UPVALUES = CHECKPOINT_UPVALUES

-- Shipped forms (FN_MT): { bytecode } for a plain function; { bytecode,
-- true } for one whose checkpoints the receiver rebinds; { false, text,
-- chunkname } for an upvalue-free function whose source was recovered and
-- instrumented (isle.chunks), so it stays stoppable where it runs.
-- Rejects a function that cannot cross (a C function, upvalues of its
-- own); returns true when it carries checkpoint upvalues.
local function check_function(f, path)
    local info = getinfo(f, "Su")
    if info.what == "C" then bad(path, "a C function") end
    local nups = info.nups
    if nups == 0 then return false end
    local mine = 0
    for i = 1, nups do
        if not CHECKPOINT_UPVALUES[getupvalue(f, i)] then mine = mine + 1 end
    end
    if mine > 0 then
        bad(path, "a function with " .. mine .. " upvalue(s) (only upvalue-free functions can be sent)")
    end
    return true
end

-- The same check alone, for callers that send the bytecode themselves
-- (exec, init): it raises the codec's rejection, which errors.from_codec reads.
codec.check_function = check_function

local function ship_function(f, path)
    if check_function(f, path) then return setmetatable({ string_dump(f), true }, FN_MT) end
    local src = require("isle.chunks").prepare_function(f)
    if src then return setmetatable({ false, src[1], src[2] }, FN_MT) end
    return setmetatable({ string_dump(f) }, FN_MT)
end

-- Returns the value to encode: `v` itself, or a copy in which functions were
-- replaced by their shipped form. `active` holds the tables on the current
-- path (a cycle is a table met again on its own path; shared subtables are fine).
local check
local function check_table(t, path, depth, active)
    if active[t] then bad(path, "a cyclic table (it contains itself)") end
    if depth > codec.MAX_DEPTH then bad(path, "a table nested more than " .. codec.MAX_DEPTH .. " levels deep") end
    active[t] = true
    local copy
    for k, v in next, t do
        local tk = type(k)
        if tk == "table" or tk == "function" or tk == "cdata" or tk == "userdata" or tk == "thread" then
            local nk = check(k, key_path(path, k), depth + 1, active)
            if nk ~= k then
                bad(key_path(path, k), "a function as a table key")
            end
        end
        local tv = type(v)
        if tv ~= "number" and tv ~= "string" and tv ~= "boolean" then
            local nv = check(v, key_path(path, k), depth + 1, active)
            if nv ~= v then
                if not copy then
                    copy = {}
                    for k2, v2 in next, t do copy[k2] = v2 end
                end
                copy[k] = nv
            end
        end
    end
    active[t] = nil
    return copy or t
end

check = function(v, path, depth, active)
    local tv = type(v)
    if tv == "nil" or tv == "boolean" or tv == "number" or tv == "string" then return v end
    if tv == "table" then
        local mt = dgetmetatable(v) -- not a __metatable field user code may set
        if mt == FN_MT or mt == SPECIAL_MT then return v end
        local sp = mt and specials[mt]
        if sp then return setmetatable({ sp.kind, sp.ship(v, path) }, SPECIAL_MT) end
        return check_table(v, path, depth, active)
    elseif tv == "function" then
        return ship_function(v, path)
    elseif tv == "cdata" then
        if cdata_ok(v) then return v end
        bad(path, "cdata<" .. tostring(ffi.typeof(v)):match("^ctype<(.*)>$") .. "> (only int64_t, uint64_t and complex cdata can be sent)")
    elseif tv == "userdata" then
        bad(path, "a userdata")
    elseif tv == "thread" then
        bad(path, "a coroutine")
    end
    bad(path, "a value of type " .. tv)
end

-- Checks one value; returns what to encode (see check).
function codec.check(v, path)
    return check(v, path, 0, {})
end

-- The fast check: true when `v` can be encoded as it is (no function to
-- ship, nothing to reject, no cycle), without building any path string.
-- `active` is shared and left empty on return. Anything else takes the slow
-- check (codec.check), which names the path of what is wrong.
local active_fast = {}
local function plain(v, depth)
    local tv = type(v)
    if tv == "number" or tv == "string" or tv == "boolean" or tv == "nil" then return true end
    if tv == "cdata" then return cdata_ok(v) end
    if tv ~= "table" or depth > codec.MAX_DEPTH or active_fast[v] or getmetatable(v) ~= nil then
        return false
    end
    active_fast[v] = true
    for k, x in next, v do
        local tk, tx = type(k), type(x)
        if (tx ~= "number" and tx ~= "string" and tx ~= "boolean" and not plain(x, depth + 1))
            or (tk ~= "string" and tk ~= "number" and not plain(k, depth + 1)) then
            active_fast[v] = nil
            return false
        end
    end
    active_fast[v] = nil
    return true
end

-- After the fast check was cut short (out of memory under a memory_limit):
-- its marks would hold on to the tables they name, and misjudge them later.
function codec.forget_fast()
    for k in next, active_fast do active_fast[k] = nil end
end

-- The hot path: up to three values that pass the fast check are encoded
-- without a loop or a pcall, so a caller's loop compiles into one trace.
-- Returns false, writing nothing, when the slow path is needed.
function codec.put_fast(buf, n, a, b, c)
    if n > 3 or not (plain(a, 0) and plain(b, 0) and plain(c, 0)) then return false end
    buf:put("V")
    buf:encode(n)
    if n >= 1 then buf:encode(a) end
    if n >= 2 then buf:encode(b) end
    if n >= 3 then buf:encode(c) end
    return true
end

-- Appends a value list to `buf`. `first` is the index the paths start at
-- (`args[1]`...), `prefix` the name of the list ("args", "results").
function codec.put_values(buf, prefix, first, n, ...)
    local mark = #buf
    buf:put("V")
    buf:encode(n)
    local has_fn = false
    for i = 1, n do
        local v = select(i, ...)
        local tv = type(v)
        if tv ~= "number" and tv ~= "string" and tv ~= "boolean" and tv ~= "nil" then
            local nv = check(v, prefix .. "[" .. (first + i - 1) .. "]", 0, {})
            if nv ~= v then has_fn = true end
            v = nv
        end
        buf:encode(v)
    end
    if has_fn then
        -- Rewrite the tag byte in place: the decoder only walks lists that need it.
        local p = buf:ref()
        p[mark] = TAG_F
    end
    return buf
end

-- Functions arriving with checkpoints get this state's flag, scratch word
-- and slow path (isle.interrupt, loaded on first need).
local function bind_checkpoints(f)
    local F, S, Cf = require("isle.interrupt").pointers()
    local by_name = { __isle_F = F, __isle_S = S, __isle_C = Cf }
    local i = 1
    while true do
        local name = getupvalue(f, i)
        if name == nil then break end
        setupvalue(f, i, by_name[name])
        i = i + 1
    end
    return f
end

codec.bind_checkpoints = bind_checkpoints

-- In a sandboxed state (isle.sandbox) functions that cross in run in the
-- sandbox's globals; their text may not name the checkpoint variables.
codec.fn_env = nil
local function sandboxed(f, text, wrapped)
    if text then
        local e = require("isle.sandbox").text_error(text, wrapped)
        if e then error(e, 0) end
    end
    setfenv(f, codec.fn_env)
end

local sources, source_count = {}, 0 -- instrumented text -> its function
local function from_source(text, chunkname)
    local f = sources[text]
    if f then return f end
    local factory, err = loadstring(text, chunkname)
    if not factory then error("cannot load a shipped function: " .. tostring(err), 0) end
    if codec.fn_env then sandboxed(factory, text, true) end
    f = factory()(require("isle.interrupt").pointers())()
    if source_count >= 256 then sources, source_count = {}, 0 end
    sources[text] = f
    source_count = source_count + 1
    return f
end

-- Rebuilds what check shipped; `from` is the carrier of the bytes (see the
-- top of this file), which specials read their attachments from.
local function restore(v, from)
    if type(v) ~= "table" then return v end
    local mt = getmetatable(v)
    if mt == FN_MT then
        if v[1] == false then return from_source(v[2], v[3]) end
        local f, err = load(v[1])
        if not f then error("cannot load a shipped function: " .. tostring(err), 0) end
        if codec.fn_env then sandboxed(f) end
        if v[2] then bind_checkpoints(f) end
        return f
    elseif mt == SPECIAL_MT then
        return special_restore(v[1], v[2], from)
    end
    for k, x in next, v do
        if type(x) == "table" then v[k] = restore(x, from) end
    end
    return v
end
codec.restore = restore

-- Reads a value list written by put_values from `buf`, whose bytes came
-- from carrier `from`; returns n, values...
local TAG_V = ("V"):byte()
function codec.get_values(buf, from)
    -- The tag read as a byte: buf:get(1) would make (intern) a string of it.
    local p, len = buf:ref()
    local tag = len > 0 and p[0] or 0
    buf:skip(1)
    local n = buf:decode() -- an empty list fails here, as buf:get(1) made it
    if tag == TAG_V then
        if n == 0 then return 0 end
        if n == 1 then return 1, buf:decode() end
        if n == 2 then
            local a = buf:decode()
            return 2, a, buf:decode()
        end
    end
    local t = {}
    for i = 1, n do
        local v = buf:decode()
        if tag == TAG_F then v = restore(v, from) end
        t[i] = v
    end
    return n, unpack(t, 1, n)
end

return codec
