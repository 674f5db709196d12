-- Task objects: the caller's side of a one-shot completion slot.
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local errors = require("isle.errors")
local wire = require("isle.wire")

local C = runtime.C
local setmetatable, select, error, type, unpack = setmetatable, select, error, type, unpack
local ISLE_TASK_DONE = C.ISLE_TASK_DONE

local STATUS = { [0] = "queued", "running", "done", "failed", "cancelled", "closed" }

local task = {}
local Task = {}
Task.__index = Task

local function pack(...)
    return { n = select("#", ...), ... }
end

local outcome = wire.outcome
task.outcome = outcome

local generation, check_process = runtime.generation, runtime.check_own

function task.new(ptr)
    local t = setmetatable({ gen = generation() }, Task)
    PTRS[t] = ptr
    return t
end

function Task:status()
    check_process(self, "task")
    return STATUS[C.isle_task_state(PTRS[self])]
end

function Task:done()
    check_process(self, "task")
    return C.isle_task_state(PTRS[self]) >= ISLE_TASK_DONE
end

local function settle(self)
    local r = self.outcome
    if not r then
        r = pack(outcome(PTRS[self]))
        self.outcome = r
    end
    if r[1] then return true, unpack(r, 3, r[2] + 2) end
    return false, r[2]
end

-- A task made of others (isle.all/first) is completed by this state's
-- driver: in a host, a blocking wait on it runs the hub meanwhile, or it
-- would wait for ever for callbacks nobody runs.
local function drive_hub(p, timeout)
    local hub = runtime.driver()
    local deadline = timeout >= 0 and C.isle_now() + timeout or nil
    while C.isle_task_state(p) < ISLE_TASK_DONE do
        local left = -1
        if deadline then
            left = deadline - C.isle_now()
            if left <= 0 then return end
        end
        if hub:run(left) == 0 and hub:pending() == 0 then return end
    end
end

-- The timeout argument of wait and await: seconds, or -1 for no limit.
local function wait_timeout(self, timeout, fname)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
        error("bad argument #1 to '" .. fname .. "' (number of seconds expected, got " .. type(timeout) .. ")", 3)
    end
    check_process(self, "task", 3)
    if timeout == nil or timeout < 0 then return -1 end
    return timeout
end

-- What a wait that ended for `why` returns.
local function waited(self, why, timeout)
    if why == "done" then return settle(self) end
    if why == "timeout" then
        return false, errors.new("timeout", "the task did not end within " .. timeout .. " s")
    end
    return false, errors.new(why, "the wait was ended: " .. why)
end

-- true, results... or false, err; err.code == "timeout" when the wait ran out
-- (the task keeps running).
function Task:wait(timeout)
    timeout = wait_timeout(self, timeout, "wait")
    if self.parts and runtime.sched == nil and not runtime.host_can_suspend() then
        drive_hub(PTRS[self], timeout)
    end
    return waited(self, runtime.wait_task(PTRS[self], timeout), timeout)
end

-- Like wait, but suspends the running coroutine instead of blocking the
-- thread: inside an isle's job through its loop, in a host coroutine through
-- the state's hub (lua/isle/hub.lua). Raises a misuse error where nothing
-- can resume it (the main coroutine outside any adapter, a C callback).
function Task:await(timeout)
    timeout = wait_timeout(self, timeout, "await")
    if C.isle_task_state(PTRS[self]) >= ISLE_TASK_DONE then return waited(self, "done", timeout) end
    local d = runtime.driver()
    if not d:can_suspend() then
        error("isle: t:await() cannot suspend here (the main coroutine outside an adapter, or inside "
            .. "a C callback): use t:wait() to block, or t:on_done(fn)", 2)
    end
    return waited(self, d:suspend(PTRS[self], timeout), timeout)
end

-- fn(ok, results... | err) runs later on the thread that owns this task
-- object: from the isle's loop, or from hub:poll() in a host. Never from
-- inside on_done itself, even when the task has ended. Errors in fn go to
-- isle.on_error. Returns the task.
function Task:on_done(fn)
    if type(fn) ~= "function" then
        error("bad argument #1 to 'on_done' (function expected, got " .. type(fn) .. ")", 2)
    end
    check_process(self, "task")
    runtime.driver():watch(PTRS[self], function() return fn(settle(self)) end)
    return self
end

function Task:result()
    if not self:done() then error("isle: task:result() on a task that has not ended (use wait)", 2) end
    return settle(self)
end

function Task:cancel()
    check_process(self, "task")
    C.isle_task_cancel(PTRS[self])
    local parts = self.parts -- isle.all / isle.first: the tasks it is made of
    if parts then for i = 1, #parts do parts[i]:cancel() end end
    return self
end

Task.__tostring = function(self)
    if self.gen ~= generation() then return "isle.task (from before a fork)" end
    return "isle.task (" .. self:status() .. ")"
end

task.Task = Task
return task
