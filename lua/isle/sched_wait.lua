-- The loop's machinery for jobs that wait (isle.sched): timers, sleeps,
-- awaits, on_done callbacks and isle.go. Loaded into isle.sched's Sched the
-- first time one of its methods is called (isle.sched's LAZY list), so an
-- isle that only serves calls does not keep it; isle.sched's comments on why
-- jobs never touch the loop's bookkeeping themselves hold here too.
-- The state's own require, which an isle's guarded loader hands to isle's
-- modules (interrupt.guard_modules): this module loads on first need, when
-- user code may have replaced the global.
local _, own_require = ...
local require = own_require or require
local coroutine = require("coroutine")
local table = require("table")
local C = require("isle.cdef").C
local sched = require("isle.sched")

local co_yield = coroutine.yield
local next = next
local Sched, SCHED, SLEEP, AWAIT = sched.Sched, sched.SCHED, sched.SLEEP, sched.AWAIT
local task_key, resume_parked = sched.task_key, sched.resume_parked

local M = {}

-- Timers: a binary min-heap of {at, rec} (a sleeping or awaiting job) or
-- {at, cb, interval} (a user timer); cancelled entries are skipped.
local function heap_push(h, e)
    local n = #h + 1
    h[n] = e
    while n > 1 do
        local p = (n - n % 2) / 2
        if h[p].at <= e.at then break end
        h[n], h[p] = h[p], e
        n = p
    end
end

-- Puts entry `e` at slot `i` of the first `n` slots and moves it down
-- until its children are not earlier.
local function sift_down(h, i, e, n)
    while true do
        local l, r, m = 2 * i, 2 * i + 1, i
        if l <= n and h[l].at < (m == i and e.at or h[m].at) then m = l end
        if r <= n and h[r].at < (m == i and e.at or h[m].at) then m = r end
        if m == i then break end
        h[i] = h[m]
        i = m
    end
    h[i] = e
end

local function heap_pop(h)
    local top, n = h[1], #h
    local last = h[n]
    h[n] = nil
    if n > 1 then sift_down(h, 1, last, n - 1) end
    return top
end

-- Drops the cancelled entries of a timer heap in place (callers may hold
-- the table) and restores the heap order.
local function heap_compact(h)
    local n = 0
    for i = 1, #h do
        local e = h[i]
        if e.rec or e.cb then n = n + 1; h[n] = e end
    end
    for i = #h, n + 1, -1 do h[i] = nil end
    for i = (n - n % 2) / 2, 1, -1 do sift_down(h, i, h[i], n) end
end


function M:add_timer(at, rec)
    local e = { at = at, rec = rec }
    heap_push(self.timers, e)
    return e
end


-- Wakes a suspended job with `why` (from the loop only, never from a job).
-- Drops whatever still holds the record; a record that is not the one its
-- coroutine is parked for is not resumed (see resume_parked).
function M:wake(rec, why)
    if rec.timer then
        rec.timer.rec = nil
        rec.timer = nil
        self.dead_timers = self.dead_timers + 1
    end
    if rec.awaiting then
        local key = rec.awaiting
        local list = self.waiting[key]
        if list then
            for i = #list, 1, -1 do
                if list[i] == rec then table.remove(list, i) end
            end
            if #list == 0 and not list.callbacks then
                -- The last waiter gave up: take the subscription back, or a
                -- task that never ends keeps this mailbox (and itself) for
                -- ever. If it has ended, its notice finds no list: harmless.
                self.waiting[key] = nil
                C.isle_task_unsubscribe(list.task, self.mbox)
            end
        end
        rec.awaiting = nil
    end
    resume_parked(self, rec, why)
end

-- User callbacks: timers, isle.go, on_done ---------------------------------------
--
-- Each runs in a job of its own (so it may sleep and call other isles),
-- started by the loop on its next turn, never from inside the call that
-- asked for it. `what` names it in error reports (isle.on_error).
function M:go(fn, args, what)
    local later = self.later
    later[#later + 1] = { fn = fn, args = args, what = what }
end

-- A timer: fn(args...) at `at` (isle.now() time), then every `interval`
-- seconds if given. Returns the heap entry, which Sched:cancel_timer takes.
function M:timer(at, interval, fn, args)
    local e = { at = at, cb = { fn = fn, args = args, what = interval and "a timer (every)" or "a timer" },
                interval = interval }
    heap_push(self.timers, e)
    return e
end

function M:cancel_timer(e)
    if e.cb == nil then return false end
    e.cb = nil
    self.dead_timers = self.dead_timers + 1
    return true
end


-- fn() runs in a job of its own once task `t` has ended (next turn if it
-- has ended already).
function M:watch(t, fn)
    local key = task_key(t)
    local list = self.waiting[key]
    if not list then
        local r = C.isle_task_subscribe(t, self.mbox)
        if r == 0 then return self:go(fn, nil, "an on_done callback") end
        if r < 0 then error(require("isle.errors").new("memory", "cannot watch the task"), 3) end
        list = { task = t }
        self.waiting[key] = list
    end
    local cbs = list.callbacks
    if not cbs then cbs = {}; list.callbacks = cbs end
    cbs[#cbs + 1] = fn
end

-- Sleeps the running job for `s` seconds. Returns the wake reason
-- ("timeout" when the time ran out). The loop arms the timer (step).
function M:sleep(s)
    local why = co_yield(SCHED, SLEEP, s)
    self.host.resumed(self.current)
    return why
end

-- Awaits task `t` (isle_task*) from the running job. timeout < 0: forever.
-- Returns "done", "timeout" or another wake reason.
-- The loop puts the job in s.waiting (step). A list there means a notice
-- for the task is on its way already; a subscription left by a job stopped
-- before its yield only brings a notice nobody waits for.
function M:await(t, timeout)
    local key = task_key(t)
    if not self.waiting[key] then
        local r = C.isle_task_subscribe(t, self.mbox)
        if r == 0 then return "done" end
        if r < 0 then
            return C.isle_task_wait(t, timeout) ~= 0 and "done" or "timeout"
        end
    end
    local why = co_yield(SCHED, AWAIT, key, timeout, t)
    self.host.resumed(self.current)
    return why
end

function M:fire_timers()
    local h = self.timers
    if #h == 0 then return end
    -- A cancelled entry (a job woken early, a cancelled user timer) stays
    -- until it reaches the top; behind a long timer that may be never, so
    -- they are swept once they are the most. Here, on the loop's own
    -- coroutine: a stop raised in a job could leave the heap half-sifted.
    if self.dead_timers > 32 and self.dead_timers * 2 > #h then
        heap_compact(h)
        self.dead_timers = 0
    end
    local now = C.isle_now()
    while #h > 0 and h[1].at <= now do
        local e = heap_pop(h)
        local rec, cb = e.rec, e.cb
        if rec then
            rec.timer = nil
            self:wake(rec, "timeout")
        elseif cb then
            -- A closing isle drops its pending timers: they never run.
            if C.isle_mbox_is_closed(self.mbox) == 0 then
                self:go(cb.fn, cb.args, cb.what)
                if e.interval then
                    -- From the deadline, not from now: no drift; but never
                    -- in the past (a late loop does not fire a burst).
                    local at = e.at + e.interval
                    if at < now then at = now end
                    e.at = at
                    heap_push(h, e)
                end
            end
        else
            self.dead_timers = self.dead_timers - 1
        end
    end
end


-- Sched:wake_stopped once something waits: every suspended job asked to
-- stop is woken with the reason reason_of(rec) gives.
function M:sweep_stopped(reason_of)
    local recs = {}
    for _, list in next, self.waiting do
        for i = 1, #list do recs[#recs + 1] = list[i] end
    end
    local h = self.timers
    for i = 1, #h do
        local rec = h[i].rec
        if rec then recs[#recs + 1] = rec end
    end
    for i = 1, #recs do
        local rec = recs[i]
        if rec.co and not rec.finished then
            local why = reason_of(rec)
            if why then self:wake(rec, why) end
        end
    end
end


-- How long the loop may wait for the next timer (isle.sched's next_timeout,
-- when there is one): cancelled entries at the top go first.
function M:timers_timeout()
    local h = self.timers
    while #h > 0 and h[1].rec == nil and h[1].cb == nil do
        heap_pop(h)
        self.dead_timers = self.dead_timers - 1
    end
    if #h == 0 then return -1 end
    local d = h[1].at - C.isle_now()
    return d > 0 and d or 0
end

-- In place of the stubs: stores to keys Sched has already, so that nothing
-- is allocated here (a load cut short by a memory_limit leaves no half).
for name, f in next, M do Sched[name] = f end

return true
