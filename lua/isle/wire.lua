-- What crosses the wire in a task's result slot, in one place: a value
-- list (isle.codec: tag 'V' or 'F'), an error envelope (tag 'E' and an
-- encoded { code, message, traceback, value }), or raw text from the C core
-- (tag 'C': a bootstrap failure). The tags are the ISLE_WIRE_* constants
-- of csrc/isle.h. Writers: the worker (results of jobs) and isle.combine
-- (isle.all/first); reader: isle.task.
local ffi = require("ffi")
local runtime = require("isle.runtime")
local codec = require("isle.codec")
local errors = require("isle.errors")

local C = runtime.C
local pcall, tostring, tonumber, error = pcall, tostring, tonumber, error
local ISLE_TASK_DONE, ISLE_TASK_FAILED, ISLE_TASK_CANCELLED, ISLE_TASK_CLOSED =
    C.ISLE_TASK_DONE, C.ISLE_TASK_FAILED, C.ISLE_TASK_CANCELLED, C.ISLE_TASK_CLOSED
local TAG_ERROR, TAG_CORE = C.ISLE_WIRE_ERROR, C.ISLE_WIRE_CORE
local ERROR_TAG = require("string").char(TAG_ERROR)

local wire = {}

-- Writes an error envelope for error object `e` into `enc` (reset first).
function wire.put_error(enc, e)
    enc:reset()
    enc:put(ERROR_TAG)
    local value = e.value
    if value ~= nil then
        local ok, v = pcall(codec.check, value, "error value")
        value = ok and v or nil
    end
    enc:encode({ code = e.code, message = e.message, traceback = e.traceback, value = value })
end

-- The final state of a task that ends with error object `e`: a stop ends
-- it cancelled (a timeout is a cancel) or closed, anything else failed.
local STOP_STATE = { cancelled = ISLE_TASK_CANCELLED, timeout = ISLE_TASK_CANCELLED, closed = ISLE_TASK_CLOSED }
function wire.error_state(e)
    return STOP_STATE[e.code] or ISLE_TASK_FAILED
end

-- Writes the value list n, ... into `enc` (reset first). true, or false and
-- the `value` error (then `enc` holds nothing useful).
function wire.put_results(enc, n, ...)
    enc:reset()
    if codec.put_fast(enc, n, ...) then return true end
    local ok, e = pcall(codec.put_values, enc:reset(), "results", 1, n, ...)
    if ok then return true end
    return false, errors.from_codec(e) or errors.new("value", tostring(e))
end

-- The outcome of an ended slot: true, n, values... or false, error object.
-- Decodes from the slot's own memory; nothing is copied first.
function wire.outcome(t)
    local state = C.isle_task_state(t)
    local lenp = runtime.lenp
    local p = C.isle_task_result(t, lenp)
    local len = tonumber(lenp[0])
    if state == ISLE_TASK_DONE then
        local dec = runtime.dec
        dec:set(p, len)
        return true, codec.get_values(dec)
    elseif state < ISLE_TASK_DONE then
        error("isle: task has not ended", 3)
    end
    if len > 0 then
        local tag = p[0]
        if tag == TAG_ERROR then
            local dec = runtime.dec
            dec:set(p + 1, len - 1)
            local e = dec:decode()
            if e.value ~= nil then e.value = codec.restore(e.value) end
            return false, errors.from_table(e)
        elseif tag == TAG_CORE then
            return false, errors.new("runtime", ffi.string(p + 1, len - 1))
        end
    end
    -- Ended by the core itself, with no payload.
    if state == ISLE_TASK_CANCELLED then
        if C.isle_task_cancelled(t) == C.ISLE_CANCEL_TIMEOUT then
            return false, errors.new("timeout", "the task ran out of time before it ran")
        end
        return false, errors.new("cancelled", "the task was cancelled before it ran")
    elseif state == ISLE_TASK_CLOSED then
        return false, errors.new("closed", "the isle closed before the task ran")
    end
    return false, errors.new("memory", "not enough memory to store the result")
end

return wire
