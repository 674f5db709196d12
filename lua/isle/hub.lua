-- The hub: a host state's completion driver (runtime.lua, "Completion
-- drivers"). It learns of the end of only those tasks somebody waits for (an
-- on_done callback, an awaiting coroutine), through one mailbox with an
-- eventfd, so a host's event loop (luv, a game's frame loop, later nginx)
-- needs one file descriptor and one call, hub:poll(), which runs the
-- callbacks and resumes the coroutines on the host's own thread.
local ffi = require("ffi")
local coroutine = require("coroutine")
local debug = require("debug")
local package = require("package")
local table = require("table")
local runtime = require("isle.runtime")
local errors = require("isle.errors")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local co_create, co_resume, co_yield, co_running, co_isyieldable, co_status =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.isyieldable,
    coroutine.status
local setmetatable, tonumber, tostring, type, error, pcall, xpcall, select =
    setmetatable, tonumber, tostring, type, error, pcall, xpcall, select
local ISLE_OK = C.ISLE_OK
local generation, check_process = runtime.generation, runtime.check_process

local hub = {}
local Hub = {}
Hub.__index = Hub
hub.Hub = Hub

local function task_key(t)
    return tonumber(ffi.cast("uintptr_t", t))
end


-- A new hub. Most code wants the state's default one (hub.default()); a
-- private hub only serves what is watched through its own methods.
function hub.new()
    if runtime.sched then
        error("isle: a hub is for host states; inside an isle its loop runs on_done callbacks and awaits", 2)
    end
    -- No message is ever pushed here: only completion notices and wakes.
    local mb = C.isle_mbox_new(1, 1)
    if mb == nil then error(errors.new("memory", "cannot make the hub's mailbox (out of memory or fds)"), 2) end
    runtime.gc(mb, C.isle_mbox_release)
    return setmetatable({
        mbox = mb,
        gen = generation(),
        lists = {},       -- task key -> { task = isle_task*, entries... } (one subscription each)
        due = {},         -- callbacks of tasks that had ended when watched: next poll
        parked = {},      -- suspended coroutine -> the wait record it is parked for
        driven = setmetatable({}, { __mode = "k" }), -- coroutines started by hub:go
        count = 0,        -- callbacks and waits not yet run or ended
        polling = false,
        on_busy = nil,    -- adapters: fn(busy) when count leaves or reaches 0
        msgs_out = ffi.new("isle_msg*[1]"),
        done_out = ffi.new("isle_done*[1]"),
        -- lua-nginx-module drives its own coroutines: nobody else may resume
        -- them, so awaiting there needs its adapter (which replaces can_suspend).
        foreign = package.loaded.ngx ~= nil,
    }, Hub)
end

local default_hub
-- The state's hub, made on first use (again in a forked child: the
-- parent's belongs to the parent).
function hub.default()
    local h = default_hub
    if h == nil or h.gen ~= generation() then
        h = hub.new()
        default_hub = h
    end
    return h
end

local function add_count(self, d)
    local before = self.count
    local n = before + d
    self.count = n
    local f = self.on_busy
    if f and (before == 0) ~= (n == 0) then
        -- An adapter's hook must not break the bookkeeping of a poll.
        local ok, e = pcall(f, n > 0)
        if not ok then runtime.report(e, "a hub adapter's on_busy hook") end
    end
end

-- Callbacks and awaiting coroutines not yet run or resumed for good.
function Hub:pending()
    return self.count
end

-- Readable once something is due: a watched task ended (or a callback was
-- queued for one that had ended already). One readiness may stand for many;
-- hub:poll() clears it.
function Hub:fd()
    check_process(self, "hub")
    return C.isle_mbox_fd(self.mbox)
end

-- Driver contract: fn() runs from a later poll/run once task `t` ended.
function Hub:watch(t, fn)
    check_process(self, "hub")
    local key = task_key(t)
    local list = self.lists[key]
    if not list then
        local r = C.isle_task_subscribe(t, self.mbox)
        if r == 0 then
            -- Ended already: never run it from here, but make the fd
            -- readable so the host polls soon.
            self.due[#self.due + 1] = fn
            add_count(self, 1)
            C.isle_mbox_wake(self.mbox)
            return
        elseif r < 0 then
            error(errors.new("memory", "cannot watch the task (out of memory)"))
        end
        list = { task = t }
        self.lists[key] = list
    end
    list[#list + 1] = fn
    add_count(self, 1)
end

-- Only a coroutine (not the main one) with no C call in between may yield,
-- and in nginx only its adapter knows how to resume one.
function Hub:can_suspend()
    local p = self.parking
    if p then return p.can_suspend() end
    return not self.foreign and co_running() ~= nil and co_isyieldable()
end

-- Adapters of hosts that drive their own coroutines (isle.ngx) park a
-- waiting coroutine their way: p.can_suspend() says whether the running code
-- may park; p.park(wait, timeout) parks it until p.unpark(wait) (called from
-- a poll when the task ends) or the timeout, and returns "timeout" or
-- whatever ended it early; wait.task is the awaited task. nil: back to the
-- hub's own parking (coroutine.yield, resumed by poll).
function Hub:set_parking(p)
    check_process(self, "hub")
    self.parking = p
end

-- For hosts that wait on sockets only (nginx cosockets): readiness becomes a
-- byte on connected socket `fd`, which the host reads (isle_notify_accept
-- makes one). The hub owns `fd` from now on. Returns true, or nil, err.
function Hub:use_socket(fd)
    check_process(self, "hub")
    if C.isle_mbox_notify_socket(self.mbox, fd) ~= ISLE_OK then
        return nil, "the hub cannot take socket " .. tostring(fd)
    end
    return true
end

-- True while poll/run runs callbacks and resumptions (adapters: a wait
-- started from one of those cannot be woken by the same poll).
function Hub:in_poll()
    return self.polling
end

-- Makes a later poll return at once (an adapter's way to ring its reader).
function Hub:wake()
    check_process(self, "hub")
    C.isle_mbox_wake(self.mbox)
end

-- True in a coroutine started by hub:go that may suspend now: where the
-- adapters (isle.luv) make blocking calls await instead.
function Hub:drives()
    local co = co_running()
    return co ~= nil and self.driven[co] == true and co_isyieldable() and not self.foreign
end

-- Removes `rec` from the list of task key `key`; the last one out takes the
-- subscription back, or a task that never ends would keep the mailbox.
local function leave(self, key, rec)
    local list = self.lists[key]
    if not list then return end
    for i = #list, 1, -1 do
        if list[i] == rec then table.remove(list, i) end
    end
    if #list == 0 then
        self.lists[key] = nil
        C.isle_task_unsubscribe(list.task, self.mbox)
    end
end

-- Drops what wait record `rec` holds besides the entry `why` came through.
local function settle_wait(self, rec, why)
    if why ~= "done" then leave(self, rec.key, rec) end
    local slot = rec.timer
    if slot ~= nil then
        rec.timer = nil
        if why ~= "timeout" then
            local tkey = task_key(slot)
            local tl = self.lists[tkey]
            if tl and tl.task == slot then
                self.lists[tkey] = nil
                C.isle_task_unsubscribe(slot, self.mbox)
            end
            -- Ends the slot, which takes it off the watchdog at once.
            C.isle_task_cancel(slot)
        end
        ffi.gc(slot, nil)
        C.isle_task_release(slot)
    end
    add_count(self, -1)
end

local function traceback(e)
    if type(e) == "string" then return debug.traceback(e, 2) end
    return e
end

local function resume(co)
    local ok, e = co_resume(co)
    if not ok then
        if type(e) == "string" then e = debug.traceback(co, e) end
        runtime.report(e, "a coroutine the hub resumed")
    end
end

-- Ends wait `rec` with `why` and resumes its coroutine if it is still
-- parked for it and suspended. Returns true if it resumed it.
local function wake(self, rec, why)
    if rec.why then return false end
    rec.why = why
    settle_wait(self, rec, why)
    local p = rec.parking
    if p then
        p.unpark(rec)
        return true
    end
    local co = rec.co
    if self.parked[co] ~= rec then return false end
    self.parked[co] = nil
    -- Not suspended (it is running and resumed us, or it died): the wait
    -- has its answer and returns it on its next resume.
    if co_status(co) ~= "suspended" then return false end
    resume(co)
    return true
end

local function await_loop(rec)
    -- A stray resume (anyone but the hub) finds no answer and yields again.
    while rec.why == nil do co_yield() end
end

-- Driver contract: only where can_suspend(). Yields (no values) out of the
-- running coroutine until `t` ends ("done") or `timeout` s pass ("timeout").
function Hub:suspend(t, timeout)
    check_process(self, "hub")
    if timeout == 0 then return C.isle_task_state(t) >= C.ISLE_TASK_DONE and "done" or "timeout" end
    local co = co_running()
    local key = task_key(t)
    local list = self.lists[key]
    if not list then
        local r = C.isle_task_subscribe(t, self.mbox)
        if r == 0 then return "done" end
        if r < 0 then return C.isle_task_wait(t, timeout) ~= 0 and "done" or "timeout" end
        list = { task = t }
        self.lists[key] = list
    end
    local rec = { co = co, key = key, why = nil, timer = nil }
    list[#list + 1] = rec
    add_count(self, 1)
    local p = self.parking
    if p then
        rec.parking, rec.task = p, t
        local ok, why = pcall(p.park, rec, timeout)
        if not rec.why then
            -- Ended by the adapter's own timeout or an error, not by a poll.
            rec.why = ok and why or "stopped"
            settle_wait(self, rec, rec.why)
        end
        if not ok then error(why, 0) end
        return rec.why
    end
    if timeout > 0 then
        -- A private slot the watchdog cancels at the deadline: its notice
        -- reaches this mailbox like any task's, so timeouts need no timer
        -- in the host and hub:run() blocks on the mailbox alone.
        local slot = C.isle_task_new()
        if slot ~= nil then runtime.gc(slot, C.isle_task_release) end
        if slot == nil or C.isle_task_expire_at(slot, C.isle_now() + timeout) ~= ISLE_OK
            or C.isle_task_subscribe(slot, self.mbox) ~= 1 then
            -- Out of memory: give up the wait cleanly and block instead.
            rec.why = "memory"
            if slot ~= nil then C.isle_task_cancel(slot) end
            settle_wait(self, rec, "memory")
            return C.isle_task_wait(t, timeout) ~= 0 and "done" or "timeout"
        end
        rec.timer = slot
        self.lists[task_key(slot)] = { task = slot, { timer_of = rec } }
    end
    self.parked[co] = rec
    local ok, e = pcall(await_loop, rec)
    if not ok then
        -- Stopped while suspended (an interrupt raised at a resume): take
        -- the wait back so that nothing resumes this coroutine for it later.
        if not rec.why then
            rec.why = "stopped"
            settle_wait(self, rec, "stopped")
        end
        if self.parked[co] == rec then self.parked[co] = nil end
        error(e, 0)
    end
    return rec.why
end

local function run_callback(fn)
    local ok, e = xpcall(fn, traceback)
    if not ok then runtime.report(e, "an on_done callback") end
end

-- Takes what the mailbox holds (waiting at most `timeout`), then runs every
-- callback and resumes every coroutine that is due. Returns how many.
local function process(self, timeout)
    local rc = C.isle_mbox_wait(self.mbox, timeout, self.msgs_out, self.done_out)
    local due = self.due
    if #due > 0 then self.due = {} end
    local taken, nt = nil, 0
    if rc == ISLE_OK then
        -- Lists are taken before any callback runs (a callback may watch a
        -- new task at the address of one whose notice is in this batch);
        -- each notice holds its task until the batch is freed.
        local done = self.done_out[0]
        local d = done
        while d ~= nil do
            local key = task_key(d.task)
            local list = self.lists[key]
            if list then
                self.lists[key] = nil
                taken = taken or {}
                nt = nt + 1
                taken[nt] = list
            end
            d = d.next
        end
        if done ~= nil then C.isle_done_free_list(done) end
        if self.msgs_out[0] ~= nil then C.isle_msg_free_list(self.msgs_out[0]) end
    end
    if #due == 0 and nt == 0 then return 0 end
    self.polling = true
    local n = 0
    for i = 1, #due do
        add_count(self, -1)
        run_callback(due[i])
        n = n + 1
    end
    for i = 1, nt do
        local list = taken[i]
        for j = 1, #list do
            local e = list[j]
            if type(e) == "function" then
                add_count(self, -1)
                run_callback(e)
                n = n + 1
            elseif e.timer_of then
                if wake(self, e.timer_of, "timeout") then n = n + 1 end
            else
                if wake(self, e, "done") then n = n + 1 end
            end
        end
    end
    self.polling = false
    return n
end

-- Never blocks: runs what is due and returns how many callbacks and
-- resumptions it ran. Errors in them go to isle.on_error.
function Hub:poll()
    check_process(self, "hub")
    if self.polling then error("isle: hub:poll() called from a callback or coroutine the hub runs", 2) end
    return process(self, 0)
end

-- Like poll, but first waits until something is due or `timeout` seconds
-- pass (nil or < 0: no limit). With nothing pending it returns 0 at once:
-- nothing could ever become due.
function Hub:run(timeout)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
        error("bad argument #1 to 'run' (number of seconds expected, got " .. type(timeout) .. ")", 2)
    end
    check_process(self, "hub")
    if self.polling then error("isle: hub:run() called from a callback or coroutine the hub runs", 2) end
    local deadline = (timeout ~= nil and timeout >= 0) and C.isle_now() + timeout or nil
    while true do
        if self.count == 0 then return 0 end
        local wait = -1
        if #self.due > 0 then
            wait = 0
        elseif deadline then
            wait = deadline - C.isle_now()
            if wait < 0 then wait = 0 end
        end
        local n = process(self, wait)
        -- A wake-up may bring only notices nobody waits for any more.
        if n > 0 or (deadline and C.isle_now() >= deadline) then return n end
    end
end

-- Starts fn(...) in a new coroutine the hub drives, at once; returns the
-- coroutine. In it t:await() suspends, and with an adapter attached
-- (isle.luv) so do blocking calls (h:call, t:wait). Errors go to
-- isle.on_error.
function Hub:go(fn, ...)
    if type(fn) ~= "function" then
        error("bad argument #1 to 'go' (function expected, got " .. type(fn) .. ")", 2)
    end
    check_process(self, "hub")
    local co = co_create(fn)
    self.driven[co] = true
    local n = select("#", ...)
    local ok, e
    if n == 0 then ok, e = co_resume(co) else ok, e = co_resume(co, ...) end
    if not ok then
        if type(e) == "string" then e = debug.traceback(co, e) end
        runtime.report(e, "a coroutine started by hub:go")
    end
    return co
end

Hub.__tostring = function(self)
    return "isle.hub (" .. self.count .. " pending)"
end

return hub
