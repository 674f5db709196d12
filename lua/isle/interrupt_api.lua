-- The part of isle.interrupt that makes coroutines interruptible and sends
-- interrupts: isle.interrupt_id, isle.interrupt, isle.on_interrupt, and a
-- host state's own signal block. Loaded by isle.interrupt's stubs the first
-- time one of these is called; they share its tables (M.parts()).
-- The state's own require, which an isle's guarded loader hands to isle's
-- modules (interrupt.guard_modules): this module loads on first need, when
-- user code may have replaced the global.
local _, own_require = ...
local require = own_require or require
local ffi = require("ffi")
local coroutine = require("coroutine")
local runtime = require("isle.runtime")
local errors = require("isle.errors")
local M = require("isle.interrupt")

local C = runtime.C
local co_running = coroutine.running
local getmetatable, newproxy, error, type, tonumber = getmetatable, newproxy, error, type, tonumber
local P = M.parts()
local STATE, co_ids, handlers, guards = P.STATE, P.co_ids, P.handlers, P.guards

-- A host state (not an isle) gets a signal block of its own.
function M.bind_host()
    if P.sig() ~= nil then return end
    local s = C.isle_sig_new()
    if s == nil then error("isle: cannot allocate a signal block", 0) end
    ffi.gc(s, C.isle_sig_release)
    M.host_sig = s  -- kept for the life of the state
    M.bind(s, C.isle_intr_new(s))
end


-- isle.interrupt_id([co]): makes the running coroutine (or `co`; the main
-- state outside any coroutine) interruptible and returns its id. Inside an
-- isle job, the job's own coroutine gets an id for that job only: it is
-- unknown once the job ends, though the coroutine serves later jobs.
-- Installs the hook the first time.
function M.interrupt_id(co)
    M.install_hook()
    local sig, state_id = P.sig()
    if co == nil then
        co = co_running()
        if co == nil then return tonumber(state_id) end
    elseif type(co) ~= "thread" then
        error("bad argument #1 to 'interrupt_id' (coroutine or nil expected, got " .. type(co) .. ")", 3)
    end
    local s = runtime.sched
    local rec = s and s.current
    if rec and rec.co == co and not rec.finished then
        if not rec.intr_id then rec.intr_id = C.isle_intr_new(sig) end
        return tonumber(rec.intr_id)
    end
    local id = co_ids[co]
    if not id then
        id = C.isle_intr_new(sig)
        -- 0 is no id (out of memory): handing it out would make every
        -- interrupt of this coroutine fail later as "unknown".
        if id == 0 then error(errors.new("memory", "cannot allocate an interrupt id"), 3) end
        co_ids[co] = id
        -- The id goes when the coroutine is collected: later requests get "unknown".
        local guard = newproxy(true)
        getmetatable(guard).__gc = function() C.isle_intr_free(id) end
        guards[co] = guard
    end
    return tonumber(id)
end


local MODES = { [true] = C.ISLE_INTR_ALWAYS, [false] = C.ISLE_INTR_CLEAR }

-- The mode for a flag as mtstates defines it: nil once, true always, false clear.
function M.mode_of(flag)
    if flag == nil then return C.ISLE_INTR_ONCE end
    return MODES[flag]
end

-- isle.interrupt(id[, flag]) from any thread: nil once, true always, false clear.
function M.interrupt(id, flag)
    if type(id) ~= "number" then
        error("bad argument #1 to 'interrupt' (interrupt id expected, got " .. type(id) .. ")", 3)
    end
    if flag ~= nil and type(flag) ~= "boolean" then
        error("bad argument #2 to 'interrupt' (boolean or nil expected, got " .. type(flag) .. ")", 3)
    end
    if C.isle_intr_set(id, M.mode_of(flag)) ~= C.ISLE_OK then
        error(errors.new("unknown", "no interruptible state or coroutine with id " .. id), 3)
    end
    return true
end

-- isle.on_interrupt([co,] fn): run fn(id) on the interrupted thread instead
-- of raising. fn nil removes the handler.
function M.on_interrupt(a, b)
    local key, fn = STATE, a
    if type(a) == "thread" then key, fn = a, b end
    if fn ~= nil and type(fn) ~= "function" then
        error("bad argument to 'on_interrupt' (function or nil expected, got " .. type(fn) .. ")", 3)
    end
    if key == STATE then
        M.install_hook()
        handlers[STATE] = fn
        return
    end
    M.interrupt_id(key)
    local s = runtime.sched
    local rec = s and s.current
    if rec and rec.co == key and not rec.finished then
        rec.on_interrupt = fn -- the job's own coroutine: for this job only
    else
        handlers[key] = fn
    end
end

return true
