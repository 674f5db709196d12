-- Error objects: every failure that crosses the API is one of these, with a
-- `code`, a `message` and, for errors raised by user code in an isle, the
-- isle-side `traceback`. Non-string error values keep their `value` where it
-- can cross states.
local setmetatable, type, tostring, require = setmetatable, type, tostring, require
-- The real metatable, not a __metatable field (a sandbox protects Error's,
-- and user code may set one on its own tables).
local getmetatable = require("debug").getmetatable

local errors = {}

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


-- Describing error values and tracebacks is in isle.errors_describe, loaded
-- the first time one of these is called (an isle none of whose jobs failed
-- never needs it). The module puts the real functions in place of the stubs.
--   errors.describe(v)        a readable message for any error value a user raised
--   errors.cut_traceback(tb)  tb without the frames of isle's own machinery
--   errors.from_codec(e)      the "value" error for the codec's rejection, or nil
-- (and errors.CODES, the codes an error object may have)
require("isle.lazy")(errors, "isle.errors_describe", { "describe", "cut_traceback", "from_codec" })

return errors
