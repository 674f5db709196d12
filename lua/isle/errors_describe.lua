-- The rarer half of isle.errors: describing error values and tracebacks,
-- loaded by isle.errors' stubs the first time one of these is called.
-- The state's own require, which an isle's guarded loader hands to isle's
-- modules (interrupt.guard_modules): this module loads on first need, when
-- user code may have replaced the global.
local _, own_require = ...
local require = own_require or require
local errors = require("isle.errors")
local type, tostring, rawget, pcall = type, tostring, rawget, pcall
-- The real metatable, not a __metatable field (see isle.errors).
local getmetatable = require("debug").getmetatable

errors.CODES = {
    runtime = true, cancelled = true, timeout = true, closed = true, value = true,
    busy = true, memory = true, unknown = true, interrupted = true, ambiguous = true,
}

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

return true
