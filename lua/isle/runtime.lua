-- Per-state shared pieces: the C library, the codec buffers, and what this
-- state is (a host state, or an isle with its loop). One copy per Lua state.
local ffi = require("ffi")
local io = require("io")
local C = require("isle.cdef").C
local codec = require("isle.codec")

local runtime = {
    C = C,
    self_ptr = nil,   -- isle* when this state is an isle
    sched = nil,      -- the isle's loop (isle.sched) when this state is an isle
    mem = nil,        -- isle_mem* when this state is an isle with a memory_limit
    enc = codec.new_buffer(),
    dec = codec.new_buffer(),
    lenp = ffi.new("size_t[1]"),
}

-- fork(): objects remember the generation of the process that made them
-- (csrc/fork.c); in a forked child they belong to the parent.
local fork_generation = C.isle_fork_generation
runtime.generation = fork_generation

-- The C object behind each isle object (handle, task, token, state) lives
-- here, not in the object: user code can neither read a raw pointer (pairs,
-- rawget, debug) nor forge an object that reaches C memory (a table given an
-- exported metatable is not in this table). isle's own modules read it as
-- runtime.ptrs[obj].
local ptrs = setmetatable({}, { __mode = "k" })
runtime.ptrs = ptrs

function runtime.check_process(obj, what, level)
    if obj.gen ~= fork_generation() then
        error("isle: this " .. what .. " was made before a fork() and belongs to the parent process; "
            .. "isles do not survive fork: spawn them after the fork (in nginx: init_worker_by_lua, "
            .. "not init_by_lua)", (level or 2) + 1)
    end
end

-- check_process for the objects that stand for a C object (handles, tasks,
-- tokens, shared states): a table isle did not make is refused first.
local check_process = runtime.check_process
function runtime.check_own(obj, what, level)
    if ptrs[obj] == nil then
        error("isle: not a " .. what .. " made by isle (got " .. type(obj) .. ")", (level or 2) + 1)
    end
    return check_process(obj, what, (level or 2) + 1)
end

-- runtime.gc(p, release): ffi.gc for objects whose memory is the core's.
-- The finalizer is the one of the process generation current when the
-- object is made (so it must be chosen here, at creation, never cached by a
-- caller): in a forked child the parent's copies are left alone, since
-- their locks may be held by threads that did not survive the fork.
-- The closure is made in a function of its own: a captured local in
-- runtime.gc itself would make it close upvalues on return (UCLO), which
-- the JIT cannot compile, and every caller's loop (h:call) would abort.
local finalizers = {}
local function finalizer(release, g)
    return function(q) if fork_generation() == g then release(q) end end
end
function runtime.gc(p, release)
    local g = fork_generation()
    local per = finalizers[release]
    if not per then per = {}; finalizers[release] = per end
    local f = per[g]
    if not f then
        f = finalizer(release, g)
        per[g] = f
    end
    return ffi.gc(p, f)
end

-- Completion drivers ------------------------------------------------------------
--
-- What runs a task's on_done callbacks and resumes the coroutines awaiting
-- it, always on this state's own thread: inside an isle its loop
-- (isle.sched), in a host state its hub (isle.hub, made on first use). A
-- driver `d` offers:
--   d:watch(t, fn)         fn() runs later on this thread once task slot `t`
--                          (isle_task*) has ended; never from inside watch,
--                          even if `t` has ended already. Errors in fn go to
--                          runtime.report.
--   d:can_suspend()        may the running code suspend until a task ends?
--   d:suspend(t, timeout)  only where can_suspend(): yields until `t` ends
--                          ("done"), `timeout` seconds pass ("timeout"; < 0:
--                          no limit) or the wait is stopped (its reason).
-- A host adapter that must set up the hub it drives (isle.ngx) supplies it
-- through runtime.host_hub.
runtime.host_hub = nil
function runtime.driver()
    local s = runtime.sched
    if s then return s end
    local hh = runtime.host_hub
    if hh then return hh() end
    return require("isle.hub").default()
end

-- Where errors with nobody to receive them go (timers, go coroutines,
-- posts, on_done callbacks): isle.on_error's handler, by default stderr
-- with the state's name and the traceback. Never raises.
runtime.label = "host"
runtime.on_error = nil
function runtime.report(e, what)
    local h = runtime.on_error
    if h then
        local ok = pcall(h, e, what)
        if ok then return end
    end
    local ok, s = pcall(tostring, e)
    io.stderr:write("isle: error in ", what or "a callback", " in ", runtime.label, ": ",
        ok and s or "(an error value tostring could not describe)", "\n")
end

-- Waits until task `t` (isle_task*) ends or `timeout` (seconds, < 0 for ever)
-- runs out. From a job of an isle's loop it awaits, so the isle keeps serving;
-- anywhere else it blocks the thread. Returns "done", "timeout" or the reason
-- the loop woke the job for (e.g. "closed").
-- In a host, a hub whose adapter runs the current coroutine (nginx, luv)
-- suspends it the same way (runtime.host_suspends, set by the hub).
runtime.host_suspends = nil

-- In a sandbox (runtime.sandbox, set by isle.sandbox) a wait that blocks
-- the thread (user code in a coroutine of its own or in a C callback, where
-- the loop cannot take over) waits in slices with a checkpoint between
-- them: a stop of the job (cancel, timeout, close) ends it, so a sandbox
-- cannot hold its thread by waiting on something that never ends. The
-- checkpoint raises the stop.
runtime.sandbox = nil
local SLICE = 0.01
function runtime.sliced(try, timeout)
    local checkpoint = require("isle.interrupt").checkpoint
    local deadline = timeout >= 0 and C.isle_now() + timeout or nil
    while true do
        local slice = SLICE
        if deadline then
            local left = deadline - C.isle_now()
            if left < slice then slice = left > 0 and left or 0 end
        end
        if try(slice) then return true end
        if deadline and C.isle_now() >= deadline then return false end
        checkpoint()
    end
end
local function task_done(t)
    return function(slice) return C.isle_task_wait(t, slice) ~= 0 end
end

function runtime.host_can_suspend()
    local hs = runtime.host_suspends
    return hs ~= nil and hs() == true
end
function runtime.wait_task(t, timeout)
    if C.isle_task_state(t) >= C.ISLE_TASK_DONE then return "done" end
    local s = runtime.sched
    if s then
        if s:can_yield() then return s:await(t, timeout) end
    else
        local hs = runtime.host_suspends
        if hs and hs() then return runtime.driver():suspend(t, timeout) end
    end
    if runtime.sandbox then return runtime.sliced(task_done(t), timeout) and "done" or "timeout" end
    return C.isle_task_wait(t, timeout) ~= 0 and "done" or "timeout"
end

return runtime
