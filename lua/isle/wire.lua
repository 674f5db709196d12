-- What crosses the wire in a task's result slot, in one place: a value
-- list (isle.codec: tag 'V' or 'F'), an error envelope (tag 'E' and an
-- encoded { code, message, traceback, value }), or raw text from the C core
-- (tag 'C': a bootstrap failure). The tags are the ISLE_WIRE_* constants
-- of csrc/isle.h. Writers: the worker (results of jobs) and isle.combine
-- (isle.all/first); reader: isle.task.
--
-- Whatever is encoded travels in a carrier made here, with the encode's
-- attachments (isle.codec: the tokens the bytes name by index): a message
-- (wire.new_msg), a task's result (wire.complete) or an isle's boot
-- (wire.refs, for isle.spawn). The core retains each attachment when it
-- makes the carrier and releases it when it frees the carrier, so nothing
-- depends on the bytes being decoded: a message freed in a closing mailbox,
-- a result nobody reads, an encode that fails, let go of their tokens.
local ffi = require("ffi")
local runtime = require("isle.runtime")
local codec = require("isle.codec")
local errors = require("isle.errors")

local C = runtime.C
local pcall, tostring, tonumber, error = pcall, tostring, tonumber, error
local attached, drop_attached, reset = codec.attached, codec.drop_attached, codec.reset
local isle_msg_new, isle_msg_new_refs = C.isle_msg_new, C.isle_msg_new_refs
local isle_task_complete, isle_task_complete_refs = C.isle_task_complete, C.isle_task_complete_refs
local isle_task_result_msg = C.isle_task_result_msg
local ISLE_TASK_DONE, ISLE_TASK_FAILED, ISLE_TASK_CANCELLED, ISLE_TASK_CLOSED =
    C.ISLE_TASK_DONE, C.ISLE_TASK_FAILED, C.ISLE_TASK_CANCELLED, C.ISLE_TASK_CLOSED
local TAG_ERROR, TAG_CORE = C.ISLE_WIRE_ERROR, C.ISLE_WIRE_CORE
local ERROR_TAG = require("string").char(TAG_ERROR)

local wire = {}

-- The attachments of the encode under way as a C array: n, array (nil when
-- none). The array is reused: valid until the next call. The list itself
-- keeps the objects alive until codec.reset or drop_attached.
local refs_arr, refs_cap = nil, 0
local function refs()
    local n = attached.n
    if n == 0 then return 0, nil end
    if n > refs_cap then
        refs_cap = n > 2 * refs_cap and n or 2 * refs_cap
        refs_arr = ffi.new("isle_task *[?]", refs_cap)
    end
    for i = 1, n do refs_arr[i - 1] = attached[i] end
    return n, refs_arr
end
wire.refs = refs

-- The hot paths (handle.send, the worker's complete) test `attached.n ==
-- 0` themselves and call the plain C function inline, so that a message or
-- result without tokens costs one branch more than before tokens were
-- carried, and no call: a small helper of its own on that path can be
-- blacklisted by the JIT (traces that start at its entry and abort) and
-- then keeps the caller's loop from compiling.
wire.attached = attached

-- The message of kind `kind` (completion slot `t`, may be nil) holding what
-- `enc` holds, with its attachments; nil if out of memory.
function wire.new_msg(kind, t, enc)
    local p, len = enc:ref()
    local m
    if attached.n == 0 then
        m = isle_msg_new(kind, t, p, len)
    else
        local n, arr = refs()
        m = isle_msg_new_refs(kind, t, p, len, arr, n)
        drop_attached() -- the message holds them now (or nothing does: nil)
    end
    return m
end

-- Completes slot `t` in state `state` with what `enc` holds as its result,
-- attachments included (see isle_task_complete_refs). Returns 1 if this
-- completion won.
function wire.complete(t, state, enc)
    local p, len = enc:ref()
    local won
    if attached.n == 0 then
        won = isle_task_complete(t, state, p, len)
    else
        local n, arr = refs()
        won = isle_task_complete_refs(t, state, p, len, arr, n)
        drop_attached()
    end
    return won
end

-- Writes an error envelope for error object `e` into `enc` (reset first).
function wire.put_error(enc, e)
    reset(enc)
    enc:put(ERROR_TAG)
    local value = e.value
    if value ~= nil then
        local ok, v = pcall(codec.check, value, "error value")
        value = ok and v or nil
        if not ok then drop_attached() end -- the value is not sent: nor are its tokens
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
    reset(enc)
    if codec.put_fast(enc, n, ...) then return true end
    local ok, e = pcall(codec.put_values, reset(enc), "results", 1, n, ...)
    if ok then return true end
    reset(enc) -- what it attached before it failed
    return false, errors.from_codec(e) or errors.new("value", tostring(e))
end

-- A decoder on the `len` bytes at `p` (C memory: a message or a result).
-- Small ones are copied into a buffer kept for that and decoded from
-- there: buf:set on C memory needs the pointer as a cdata object, which
-- the buffer keeps, so compiled code allocates one per decode, garbage the
-- collector then sweeps (isle.worker decodes every message this way, the
-- host every result). A large one is decoded where it lies. Valid until
-- the next call.
local SMALL = 512
local small = codec.new_buffer()
local function decoder(p, len)
    if len <= SMALL then
        small:reset()
        ffi.copy(small:reserve(len), p, len)
        small:commit(len)
        return small
    end
    local dec = runtime.dec
    dec:set(p, len)
    return dec
end
wire.decoder = decoder

-- The outcome of an ended slot: true, n, values... or false, error object.
-- Decodes from the slot's own memory (a small result from a copy of it:
-- decoder above); the result stays in the slot. Tokens in it come with
-- references of their own: the result keeps its own until the slot is
-- freed, so an outcome may be read any number of times.
function wire.outcome(t)
    local state = C.isle_task_state(t)
    local m = isle_task_result_msg(t)
    local p, len = "", 0
    if m ~= nil then p, len = m.data, tonumber(m.len) end
    if state == ISLE_TASK_DONE then
        return true, codec.get_values(decoder(p, len), m)
    elseif state < ISLE_TASK_DONE then
        error("isle: task has not ended", 3)
    end
    if len > 0 then
        local tag = p[0]
        if tag == TAG_ERROR then
            local dec = runtime.dec
            dec:set(p + 1, len - 1)
            local e = dec:decode()
            if e.value ~= nil then e.value = codec.restore(e.value, m) end
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
