-- Per-state shared pieces: the C library, the codec buffers, and what this
-- state is (a host state, or an isle with its loop). One copy per Lua state.
local ffi = require("ffi")
local C = require("isle.cdef").C
local codec = require("isle.codec")

local runtime = {
    C = C,
    self_ptr = nil,   -- isle* when this state is an isle
    sched = nil,      -- the isle's loop (isle.sched) when this state is an isle
    enc = codec.new_buffer(),
    dec = codec.new_buffer(),
    lenp = ffi.new("size_t[1]"),
}

-- fork(): objects remember the generation of the process that made them
-- (csrc/fork.c); in a forked child they belong to the parent.
local fork_generation = C.isle_fork_generation
runtime.generation = fork_generation

function runtime.check_process(obj, what, level)
    if obj.gen ~= fork_generation() then
        error("isle: this " .. what .. " was made before a fork() and belongs to the parent process; "
            .. "isles do not survive fork: spawn them after the fork (in nginx: init_worker_by_lua, "
            .. "not init_by_lua)", (level or 2) + 1)
    end
end

-- One finalizer per process generation for objects whose memory is the
-- core's: in a forked child the parent's copies are left alone, since their
-- locks may be held by threads that did not survive the fork.
local finalizers = {}
function runtime.finalizer(release)
    local g = fork_generation()
    local per = finalizers[release]
    if not per then per = {}; finalizers[release] = per end
    local f = per[g]
    if not f then
        f = function(p) if fork_generation() == g then release(p) end end
        per[g] = f
    end
    return f
end

-- Waits until task `t` (isle_task*) ends or `timeout` (seconds, < 0 for ever)
-- runs out. From a job of an isle's loop it awaits, so the isle keeps serving;
-- anywhere else it blocks the thread. Returns "done", "timeout" or the reason
-- the loop woke the job for (e.g. "closed").
function runtime.wait_task(t, timeout)
    local s = runtime.sched
    if s and s:can_yield() then
        if C.isle_task_state(t) >= C.ISLE_TASK_DONE then return "done" end
        return s:await(t, timeout)
    end
    return C.isle_task_wait(t, timeout) ~= 0 and "done" or "timeout"
end

return runtime
