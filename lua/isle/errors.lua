-- Error objects: every failure that crosses the API is one of these, with a
-- `code`, a `message` and, for errors raised by user code in an isle, the
-- isle-side `traceback`. Non-string error values keep their `value` where it
-- can cross states.
local setmetatable, type, tostring, rawget, pcall =
    setmetatable, type, tostring, rawget, pcall
-- The real metatable, not a __metatable field (a sandbox protects Error's,
-- and user code may set one on its own tables).
local getmetatable = require("debug").getmetatable

local errors = {}

errors.CODES = {
    runtime = true, cancelled = true, timeout = true, closed = true, value = true,
    busy = true, memory = true, unknown = true, interrupted = true, ambiguous = true,
}

local Error = {}
Error.__index = Error

function Error.__tostring(e)
    local s = e.code .. " error: " .. tostring(e.message)
    if e.traceback then s = s .. "\n" .. e.traceback end
    return s
end

function errors.new(code, message, traceback, value)
    return setmetatable({ code = code, message = message, traceback = traceback, value = value }, Error)
end

function errors.is(v)
    return type(v) == "table" and getmetatable(v) == Error
end

-- Restores the metatable of an error object that crossed states as a table.
function errors.from_table(t)
    return setmetatable(t, Error)
end

-- A readable message for any error value a user raised.
function errors.describe(v)
    local tv = type(v)
    if tv == "string" then return v end
    if tv == "number" then return tostring(v) end
    if tv == "table" then
        local mt = getmetatable(v)
        if mt and rawget(mt, "__tostring") then
            local ok, s = pcall(tostring, v)
            if ok and type(s) == "string" then return s end
        end
        local m = rawget(v, "message") or rawget(v, "msg")
        if type(m) == "string" then return m end
    end
    return "(error object is a " .. tv .. " value)"
end

-- Drops the frames of isle's own machinery from a traceback: everything from
-- the first frame of an isle module (precompiled ones show as [string
-- "isle.x"], source ones as .../isle/x.lua), with the C frame just above it.
function errors.cut_traceback(tb)
    local out = {}
    for l in tb:gmatch("[^\n]+") do
        if l:find('[string "isle.', 1, true) or l:find("/isle/[%w_]+%.lua:") then
            if #out > 1 and out[#out]:find("^%s*%[C%]: in ") then out[#out] = nil end
            break
        end
        out[#out + 1] = l
    end
    return require("table").concat(out, "\n")
end

-- The "value" error for bad input, from codec's internal rejection.
function errors.from_codec(e)
    if type(e) == "table" and rawget(e, "isle_value_error") then
        return errors.new("value", e.message)
    end
    return nil
end

return errors
