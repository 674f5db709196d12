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

local type, next, select, tostring, tonumber, getmetatable, require =
    type, next, select, tostring, tonumber, getmetatable, require
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

-- In a sandboxed state (isle.sandbox sets it): the globals functions that
-- arrive run in (isle.codec_check).
codec.fn_env = nil

-- What isle.codec_check shares with this module. A function, not a field:
-- a table keyed by tables, reachable from package.loaded, trips code that
-- walks every module's tables (Lanes' lookup of functions asserts on it).
local parts = { FN_MT = FN_MT, SPECIAL_MT = SPECIAL_MT, specials = specials, bad = bad, cdata_ok = cdata_ok }
function codec.parts() return parts end

-- The slow check (which names the path of what cannot be sent), shipping
-- functions and loading the ones that arrive are in isle.codec_check, loaded
-- the first time one of these is called: plain values (codec.put_fast,
-- codec.get_values) never need it (bench/README.md, Issue 12, fifth round).
-- The module puts the real functions in place of these stubs.
--   codec.check(v, path)         what to encode for `v` (functions shipped),
--                                or a "value" rejection naming `path`
--   codec.check_function(f, path) rejects a function that cannot cross; true
--                                when it carries checkpoint upvalues
--   codec.bind_checkpoints(f)    gives an arrived function this state's checkpoints
--   codec.restore_function(v)    the function a shipped form (FN_MT) stands for
require("isle.lazy")(codec, "isle.codec_check", { "check", "check_function", "bind_checkpoints", "restore_function" })

-- The upvalues isle.instrument gives the functions it compiles: not the
-- user's, so they do not count, and the receiver binds its own.
local CHECKPOINT_UPVALUES = { __isle_F = true, __isle_S = true, __isle_C = true }
codec.CHECKPOINT_UPVALUES = CHECKPOINT_UPVALUES

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
            local nv = codec.check(v, prefix .. "[" .. (first + i - 1) .. "]")
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

-- Rebuilds what check shipped; `from` is the carrier of the bytes (see the
-- top of this file), which specials read their attachments from.
local function restore(v, from)
    if type(v) ~= "table" then return v end
    local mt = getmetatable(v)
    if mt == FN_MT then
        return codec.restore_function(v)
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
