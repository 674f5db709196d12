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
