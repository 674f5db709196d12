-- The slow half of isle.codec: the check that names the path of a value
-- that cannot be sent, shipping functions (bytecode, or instrumented source
-- through isle.chunks) and loading the ones that arrive. Loaded the first
-- time isle.codec needs it (its lazy stubs); plain values never do.
-- The state's own require, which an isle's guarded loader hands to isle's
-- modules (interrupt.guard_modules): this module loads on first need, when
-- user code may have replaced the global.
local _, own_require = ...
local require = own_require or require
local ffi = require("ffi")
local string = require("string")
local debug = require("debug")
local codec = require("isle.codec")

local type, next, tostring, setmetatable, load, loadstring, error =
    type, next, tostring, setmetatable, load, loadstring, error
local string_dump, string_format, string_match = string.dump, string.format, string.match
local getinfo, getupvalue, setupvalue = debug.getinfo, debug.getupvalue, debug.setupvalue
local dgetmetatable, setfenv = debug.getmetatable, setfenv
local P = codec.parts()
local FN_MT, SPECIAL_MT, specials, bad, cdata_ok = P.FN_MT, P.SPECIAL_MT, P.specials, P.bad, P.cdata_ok
local CHECKPOINT_UPVALUES = codec.CHECKPOINT_UPVALUES

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


function codec.restore_function(v)
    if v[1] == false then return from_source(v[2], v[3]) end
    local f, err = load(v[1])
    if not f then error("cannot load a shipped function: " .. tostring(err), 0) end
    if codec.fn_env then sandboxed(f) end
    if v[2] then bind_checkpoints(f) end
    return f
end

return true
