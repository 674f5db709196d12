-- Interrupts and cancellation inside one state, JIT-safe.
--
-- Other threads never touch this state: they set a mode on an interrupt id
-- or cancel a task, and raise the state's flag (isle_sig.flag). This state
-- notices the flag at its own checkpoints:
--   * compiled code: the checkpoints inserted by isle.instrument and
--     isle.checkpoint(), which reload the flag on every iteration;
--   * interpreted code: a count hook that this state installs on itself
--     (never lua_sethook from another thread: that crashes LuaJIT).
-- Both call check(), which works out what was asked of the running code.
local ffi = require("ffi")
local debug = require("debug")
local coroutine = require("coroutine")
local runtime = require("isle.runtime")
local errors = require("isle.errors")

local C = runtime.C
local co_running = coroutine.running
local getinfo = debug.getinfo
local setmetatable, getmetatable, newproxy, error, type, tonumber =
    setmetatable, getmetatable, newproxy, error, type, tonumber
local ISLE_TASK_DONE, CANCEL_USER, CANCEL_TIMEOUT = C.ISLE_TASK_DONE, C.ISLE_CANCEL_USER, C.ISLE_CANCEL_TIMEOUT

local M = {}

local STATE = {}            -- key of the whole state in `handlers`
local sig, flagp, scratchp  -- this state's signal block
local state_id              -- interrupt id of the whole state
local co_ids = setmetatable({}, { __mode = "k" })    -- coroutine -> id
local handlers = setmetatable({}, { __mode = "k" })  -- coroutine or STATE -> fn
local guards = setmetatable({}, { __mode = "k" })    -- coroutine -> proxy freeing its id
local hook_on = false
M.HOOK_COUNT = 1000         -- instructions between hook calls (see docs/jit-safety.md)

-- Why the running job must stop: "cancelled", "timeout", "closed" or nil.
-- Sticky: once decided it stays in the job's record until the job ends.
function M.job_stop_reason(rec)
    local why = rec.stop
    if why then return why end
    local t = rec.task
    if t ~= nil then
        local r = C.isle_task_cancelled(t)
        if r == CANCEL_USER then why = "cancelled" elseif r == CANCEL_TIMEOUT then why = "timeout" end
    end
    if not why and rec.token ~= nil and C.isle_task_state(rec.token) >= ISLE_TASK_DONE then
        why = "cancelled"
    end
    if not why and runtime.self_ptr ~= nil and C.isle_close_mode(runtime.self_ptr) ~= 0 then
        why = "closed"
    end
    rec.stop = why
    return why
end

local MESSAGES = {
    cancelled = "the task was cancelled",
    timeout = "the task ran out of time",
    closed = "the isle was closed with cancel",
}
function M.stop_error(why)
    return errors.new(why, MESSAGES[why] or why)
end

-- The slow path of every checkpoint: runs only while the flag is raised.
-- Where user code runs, in an isle: inside the xpcall that one of the
-- worker's job functions makes (registered with M.protect), and not in its
-- error handler. Raising anywhere else would kill the worker's own job
-- coroutine, so a request seen there waits for the next checkpoint.
local callers = setmetatable({}, { __mode = "k" })   -- fn -> true
local handlers_ = setmetatable({}, { __mode = "k" }) -- fn -> true
function M.protect(caller, handler)
    callers[caller] = true
    if handler then handlers_[handler] = true end
end
local xpcall_fn = xpcall

local function in_user_code(rec)
    local co = co_running()
    if co == nil then return false end -- the main coroutine: the loop itself
    if co ~= rec.co then return true end -- a coroutine the user made
    for level = 2, 1000 do
        local info = getinfo(level, "f")
        if not info then return false end
        local f = info.func
        if handlers_[f] then return false end
        if f == xpcall_fn then
            local below = getinfo(level + 1, "f")
            if below and callers[below.func] then return true end
        end
    end
    return false
end

local function check()
    local s = runtime.sched
    local rec = s and s.current
    if s and not (rec and in_user_code(rec)) then
        -- In an isle outside user code (the loop, the worker's encoding):
        -- leave the request for the next checkpoint in user code or the loop.
        return
    end
    flagp[0] = 0  -- lowered first: a request raised from now on raises it again
    local again, err = false, nil
    if rec then
        local why = M.job_stop_reason(rec)
        if why then
            again = true  -- sticky: every later checkpoint raises too
            err = M.stop_error(why)
        end
    end
    if C.isle_sig_pending(sig) > 0 then
        local target, handler
        if C.isle_intr_take(state_id) > 0 then
            target, handler = STATE, handlers[STATE]
        else
            local co = co_running()
            local cid = co and co_ids[co]
            if cid and C.isle_intr_take(cid) > 0 then target, handler = co, handlers[co] end
        end
        -- ALWAYS modes, and requests for coroutines not running now, stay.
        if C.isle_sig_pending(sig) > 0 then again = true end
        if target then
            if again then flagp[0] = 1 end
            if handler then
                handler(tonumber(target == STATE and state_id or co_ids[target]))
            elseif not err then
                err = errors.new("interrupted", "interrupted")
            end
        end
    end
    if again then flagp[0] = 1 end
    if err then error(err, 0) end
end
M.check = check

local function hook()
    if flagp[0] ~= 0 then check() end
end

-- Installs the count hook on this state, from this state's own thread.
function M.install_hook()
    if hook_on then return end
    hook_on = true
    debug.sethook(hook, "", M.HOOK_COUNT)
end

-- Binds this module to the state's signal block: an isle's (from the worker)
-- or, in a host state, a block of its own created on first require.
function M.bind(s, id)
    sig = s
    flagp = ffi.cast("int32_t *", s)
    scratchp = flagp + 1
    state_id = id
end

-- A host state (not an isle) gets a signal block of its own.
function M.bind_host()
    if sig ~= nil then return end
    local s = C.isle_sig_new()
    if s == nil then error("isle: cannot allocate a signal block", 0) end
    ffi.gc(s, C.isle_sig_free)
    M.host_sig = s  -- kept for the life of the state
    M.bind(s, C.isle_intr_new(s))
end

-- An explicit checkpoint for hot loops. The store after the load keeps
-- LuaJIT from hoisting the load out of a compiled loop.
function M.checkpoint()
    if flagp[0] ~= 0 then check() end
    scratchp[0] = 0
end

function M.pointers() return flagp, scratchp, check end

-- isle.interrupt_id([co]): makes the state (or coroutine `co`) interruptible
-- and returns its id. Installs the hook the first time.
function M.interrupt_id(co)
    M.install_hook()
    if co == nil then return tonumber(state_id) end
    if type(co) ~= "thread" then
        error("bad argument #1 to 'interrupt_id' (coroutine or nil expected, got " .. type(co) .. ")", 3)
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
    M.interrupt_id(key ~= STATE and key or nil)
    handlers[key] = fn
end

return M
