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
local getinfo = debug.getinfo
local coroutine = require("coroutine")
local runtime = require("isle.runtime")
local errors = require("isle.errors")

local C = runtime.C
local co_running = coroutine.running
local setmetatable, error, type, tonumber, require = setmetatable, error, type, tonumber, require
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

-- A job record's task slot: an isle_task*, or for a message's job its
-- address as a number (worker.lua, run_message), cast back here; or nil.
local TASK_PTR = ffi.typeof("isle_task *")
function M.task_of(rec)
    local t = rec.task
    if type(t) == "number" then return ffi.cast(TASK_PTR, t) end
    return t
end
local task_of = M.task_of

-- Why the running job must stop: "cancelled", "timeout", "closed" or nil.
-- Sticky: once decided it stays in the job's record until the job ends.
function M.job_stop_reason(rec)
    local why = rec.stop
    if why then return why end
    local t = task_of(rec)
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
    interrupted = "interrupted",
    cancelled = "the task was cancelled",
    timeout = "the task ran out of time",
    closed = "the isle was closed with cancel",
}
function M.stop_error(why)
    return errors.new(why, MESSAGES[why] or why)
end

-- The slow path of every checkpoint: runs only while the flag is raised.
-- Where user code runs, in an isle: in a job whose record the worker has
-- marked (rec.user: set around each of its protected calls, see worker.lua)
-- and in coroutines the user made; and, for the count hook, never in isle's
-- own frames (the worker's instructions around the xpcall, its error
-- handler, the loop's bookkeeping a job runs through). Raising anywhere
-- else would kill the worker's own job coroutine, so a request seen there
-- waits for the next checkpoint.
local function own_source(src)
    -- isle's modules: preloaded bytecode named after the module, or files
    -- (ISLE_DEBUG, or a state that loads them from package.path).
    return src:find("^isle[%.%w_]*$") ~= nil or src:find("[/\\]isle[/\\][%w_]+%.lua$") ~= nil
        or src:find("[/\\]isle%.lua$") ~= nil
end

local function in_user_code(rec, hooked)
    local co = co_running()
    if co == nil then return false end -- the main coroutine: the loop itself
    -- The job's own coroutine is user code only while marked; any other
    -- coroutine is one the user made.
    if co == rec.co and not rec.user then return false end
    -- in_user_code <- check <- hook <- the function the hook interrupted
    return not (hooked and own_source(getinfo(4, "S").source))
end

local ONCE, ALWAYS = C.ISLE_INTR_ONCE, C.ISLE_INTR_ALWAYS
local loading = 0         -- isle modules being loaded: requests wait (M.loading)
local guarded = false     -- coroutine.resume/yield check interrupts (isles)

-- Which interrupt applies to the running code: the state's own id first,
-- then the running coroutine's (a job's own coroutine has an id for that
-- job only, rec.intr_id; others their co_ids entry). Returns the target
-- (STATE, the job's record or a coroutine), the mode taken and the id.
local function take_target(rec)
    local m = C.isle_intr_take(state_id)
    if m > 0 then return STATE, m, state_id end
    local co = co_running()
    if co == nil then return nil end
    local own = rec ~= nil and co == rec.co
    local id
    if own then id = rec.intr_id else id = co_ids[co] end
    if id then
        m = C.isle_intr_take(id)
        if m > 0 then return own and rec or co, m, id end
    end
    return nil
end

-- Coroutines running an on_interrupt handler: their own checkpoints wait
-- (per coroutine: a handler that sleeps must not hold up other jobs' stops).
local MAIN = {}
local handling = setmetatable({}, { __mode = "k" })

local on_memory -- a capped isle's collection when its allocator asks (M.on_memory)

local missed = false -- see the end of check()

local function check(hooked)
    if on_memory then on_memory() end
    -- While isle's own modules load, or a handler runs (its checkpoints would
    -- call it again, for ever with interrupt(true)): at the next checkpoint.
    if loading > 0 then return end
    local s = runtime.sched
    local rec = s and s.current
    if handling[co_running() or MAIN] then
        -- A handler's own checkpoints wait, but a stop of its job (cancel,
        -- timeout, close with cancel) still ends it: a handler that never
        -- returns must not make its isle unstoppable.
        if rec and in_user_code(rec, hooked) and M.job_stop_reason(rec) then error(M.stop_error(rec.stop), 0) end
        return
    end
    if s and not (rec and in_user_code(rec, hooked)) then
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
        local target, mode, id = take_target(rec)
        if target then
            local handler
            if target == STATE then handler = handlers[STATE]
            elseif target == rec then handler = rec.on_interrupt
            else handler = handlers[target] end
            if mode == ALWAYS then again = true end
            if handler then
                if again then flagp[0] = 1 end
                local me = co_running() or MAIN
                handling[me] = true
                local ok, herr = pcall(handler, tonumber(id))
                handling[me] = nil
                if not ok then error(herr, 0) end
            elseif not err then
                -- interrupt(true) on the state or the job: the job ends
                -- interrupted even if its code catches this and returns.
                if mode == ALWAYS and rec and (target == STATE or target == rec) then rec.stop = "interrupted" end
                err = M.stop_error("interrupted")
            end
        end
        -- Requests for coroutines that do not run now: in an isle they are
        -- seen when the coroutine is resumed (guard_coroutines); in a host
        -- state the flag stays up until it runs.
        if not guarded and C.isle_sig_pending(sig) > 0 then again = true end
    end
    if again then flagp[0] = 1 end
    if err then error(err, 0) end
    -- Raised, yet nothing here was for this job: the request may be for
    -- another job of this isle (a task it cancelled, now asleep or
    -- awaiting). The flag is down now, so the loop sweeps its jobs at its
    -- next turn and resumed jobs check themselves until then (M.take_missed).
    if rec then missed = true end
end
M.check = check

local function hook()
    if flagp[0] ~= 0 then check(true) end
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

-- An explicit checkpoint for hot loops. The store after the load keeps
-- LuaJIT from hoisting the load out of a compiled loop.
function M.checkpoint()
    if flagp[0] ~= 0 then check() end
    scratchp[0] = flagp[0] -- the loaded value, not a constant: see isle.instrument
end

function M.pointers() return flagp, scratchp, check end

-- A job ended: its own interrupt id goes with it.
function M.job_ended(rec)
    local id = rec.intr_id
    if id then
        rec.intr_id = nil
        C.isle_intr_free(id)
    end
end

-- A job the loop resumed (after a sleep or an await): a request that came
-- for it while it was suspended fires now.
-- True once if a checkpoint lowered the flag without finding a reason for
-- the job it ran in (check above): the loop then sweeps every job.
function M.take_missed()
    local m = missed
    missed = false
    return m
end

function M.resumed(rec)
    if rec.intr_id or flagp[0] ~= 0 or missed then
        flagp[0] = 1
        check()
    end
end

-- In an isle: coroutine.resume, wrap and yield learn of interrupts, so that
-- a coroutine interrupted while suspended fails with "interrupted" when it
-- is next resumed, even if all it does is yield again (as mtint does).
local INTERRUPTED = {} -- what a guarded resume hands a suspended coroutine
function M.guard_coroutines(lib)
    if guarded then return end
    guarded = true
    local create, resume, yield = lib.create, lib.resume, lib.yield
    local yielded = setmetatable({}, { __mode = "k" }) -- suspended in g_yield
    local function after_yield(first, ...)
        if first == INTERRUPTED then
            flagp[0] = 1
            check() -- raises, or runs the handler
            return
        end
        return first, ...
    end
    local function g_yield(...)
        local co = co_running()
        if co then yielded[co] = true end
        return after_yield(yield(...))
    end
    local function g_resume(co, ...)
        local id = co_ids[co]
        if id then
            local m = C.isle_intr_take(id)
            if m > 0 then
                if m == ONCE then C.isle_intr_set(id, ONCE) end -- check() takes it inside
                if yielded[co] then return resume(co, INTERRUPTED) end
                flagp[0] = 1 -- not started: its first checkpoint sees it
            end
        end
        return resume(co, ...)
    end
    local function wrap_result(ok, ...)
        if ok then return ... end
        error((...), 0)
    end
    lib.yield, lib.resume = g_yield, g_resume
    lib.wrap = function(f)
        local co = create(f)
        return function(...) return wrap_result(g_resume(co, ...)) end
    end
end

-- In a capped isle: fn() runs at every checkpoint that sees the flag raised
-- (the allocator raises it to ask for a full collection).
function M.on_memory(fn) on_memory = fn end

-- While isle's own modules load (require in an isle), requests wait: a
-- module left half-loaded would fail every later require. Returns the count.
-- (A shared state keeps it at 1 outside its callbacks: lua/isle/state.lua.)
function M.loading(delta)
    loading = loading + delta
    return loading
end

-- isle's own modules load from the preloaded bytecode (csrc/preload.c, the
-- searcher at package.loaders[2]); an interrupt must not land while one
-- loads, or the module would stay broken for every later require.
function M.guard_modules(package)
    local loaders, loaded = package.loaders, package.loaded
    local blob = loaders[2]
    local function finish(name, by_require, ok, ...)
        if ok then
            -- Registered before requests may land again: an error raised
            -- between here and require's own bookkeeping must not leave
            -- require's "loading" mark behind.
            local v = ...
            if v == nil then
                v = loaded[name]
                if type(v) == "userdata" then v = true end
            end
            loaded[name] = v
        end
        loading = loading - 1
        if not ok then
            -- Not left marked as loading (require's sentinel, which is not
            -- even a userdata to type() in every LuaJIT): a module whose load
            -- ran out of memory (a part isle loads on first need, under a
            -- memory_limit) loads again at the next require. (Only when
            -- require called: isle.cdef runs its own chunk again for text.)
            if by_require then loaded[name] = nil end
            error((...), 0)
        end
        return ...
    end
    loaders[2] = function(name)
        local loader = blob(name)
        if type(loader) ~= "function" then return loader end
        -- Counted from here: require calls the loader right after.
        loading = loading + 1
        -- The state's own require goes along as the second argument when
        -- require calls (it passes only the name): a module loaded on first
        -- need may load after user code replaced the global. (isle.cdef
        -- calls its own chunk with a second argument of its own.)
        return function(n, second, ...)
            if second == nil then return finish(name, true, pcall(loader, n, require)) end
            return finish(name, false, pcall(loader, n, second, ...))
        end
    end
end


-- The API that makes coroutines interruptible and sends interrupts
-- (isle.interrupt_id, isle.interrupt, isle.on_interrupt; bind_host, mode_of)
-- is in isle.interrupt_api, loaded the first time one of these is called:
-- an isle nobody interrupts by id never loads it (bench/README.md, Issue 12,
-- fifth round). The module puts the real functions in place of these stubs.
-- A function, not a field: tables keyed by coroutines, reachable from
-- package.loaded, trip code that walks every module's tables (Lanes).
local parts = { STATE = STATE, co_ids = co_ids, handlers = handlers, guards = guards }
function parts.sig() return sig, state_id end
function M.parts() return parts end
require("isle.lazy")(M, "isle.interrupt_api", { "bind_host", "interrupt_id", "on_interrupt", "interrupt", "mode_of" })

return M
