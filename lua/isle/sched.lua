-- The event loop inside an isle: runs jobs in pooled coroutines, serves the
-- mailbox, timers and completion notices. A job may sleep or await another
-- task; the loop then serves other messages meanwhile. One wake-up drains
-- every queued message and notice (isle_mbox_wait takes them all). What a
-- job is, is the worker's business (lua/isle/worker.lua: runners).
local ffi = require("ffi")
local coroutine = require("coroutine")
local C = require("isle.cdef").C

local require = require -- the state's own, whatever user code does to the global
local co_create, co_resume, co_yield, co_running, co_isyieldable =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.isyieldable
local setmetatable, tonumber, tostring, error, type, next = setmetatable, tonumber, tostring, error, type, next
local ISLE_OK, ISLE_ECLOSED = C.ISLE_OK, C.ISLE_ECLOSED

local SCHED = {}      -- first value of every yield the loop itself asked for
local JOB_DONE = {}   -- a pooled coroutine finished its job
local IDLE = {}       -- an idle coroutine refused a resume that was not a new job
local SLEEP, AWAIT = 1, 2 -- what a job yielding SCHED asks for (see step)

-- Why jobs never touch the loop's bookkeeping themselves --------------------
--
-- A job's own coroutine only yields; what it waits for (a timer, a place in
-- s.waiting) is registered by the loop in `step`, after the yield, and a
-- wake is delivered only to the record its coroutine is parked for
-- (s.parked). Both are needed because:
--   * a stop can be raised anywhere a job runs, including inside this
--     module: the count hook (isle.interrupt) treats everything inside
--     the job's protected xpcall as user code (the record's `user` mark).
--     A stop raised between a job's registering a timer or a waiter and
--     its yield used to leave that entry
--     behind (or a heap half-sifted); the entry later woke the record after
--     its job had ended, resuming its coroutine back in the pool (job_body
--     then called the wake reason: "attempt to call a string value") or in
--     the middle of another job. The loop itself runs on the main coroutine,
--     where no stop is ever raised, so what it registers is consistent.
--   * records and coroutines are not one to one: a runner's record and the
--     records of the messages it runs share one coroutine, and `step` can
--     only clear `co` of the record it resumed. A record kept in a timer,
--     a waiting list or wake_stopped's snapshot may name a coroutine that has
--     since moved on to another record or job; only the parked record may
--     resume it.

local Sched = {}
Sched.__index = Sched

local sched = { SCHED = SCHED, Sched = Sched, SLEEP = SLEEP, AWAIT = AWAIT }

-- What only jobs that wait need (timers, sleeps, awaits, on_done, isle.go)
-- is in isle.sched_wait, loaded the first time one of these methods is
-- called: an isle that only serves calls never loads it (bench/README.md,
-- Issue 12, fifth round). The module puts the real methods in place of
-- these stubs. The loop itself only reaches them once something waits (a
-- timer, a waiting list), which one of them made: it never loads the module.
local LAZY = { "add_timer", "timers_timeout", "fire_timers", "sweep_stopped", "wake", "go", "timer",
    "cancel_timer", "watch", "sleep", "await" }
require("isle.lazy")(Sched, "isle.sched_wait", LAZY)

local function task_key(t)
    return tonumber(ffi.cast("uintptr_t", t))
end
sched.task_key = task_key

-- sched.new(mbox, sig, host): the loop of one isle. It is the only consumer
-- of the mailbox. `host` is the worker's side, given once:
--   host.on_message(s, msgs)  takes a batch of messages (and owns them)
--   host.flush(s)             starts what the worker holds, at the end of a turn
--   host.queued()             does the worker hold messages not yet started?
--   host.on_idle(s)           once a turn, after the wait
--   host.run_user(rec)        a job that runs a user callback (rec.fn, rec.args)
--   host.resumed(rec)         runs in a job the loop resumed (interrupts)
-- Read by others, written only here: s.mbox, s.sig, s.current (the record
-- of the running job; the worker moves it with s:enter).
function sched.new(mbox, sig, host)
    return setmetatable({
        mbox = mbox,
        sig = sig,
        flagp = ffi.cast("int32_t *", sig),
        host = host,
        timers = {},
        dead_timers = 0,   -- cancelled entries still in `timers`
        ready = {},        -- records to resume on the next turn
        later = {},        -- user callbacks to start as jobs on the next turn
        waiting = {},      -- task key -> list of records awaiting it
        pool = {},         -- idle coroutines
        parked = {},       -- suspended coroutine -> the record it waits for
        jobs = 0,          -- jobs started and not finished
        current = nil,     -- record of the running job
        msgs_out = ffi.new("isle_msg*[1]"),
        done_out = ffi.new("isle_done*[1]"),
        stash_done = nil,  -- notices taken by a job that waited in the mailbox itself
        may_block = false, -- a job may wait in the mailbox itself (see run)
        enter_user = nil,  -- with a memory cap: switch to the user's / the worker's limit
        leave_user = nil,
    }, Sched)
end

-- The record of the job now running; returns the previous one.
function Sched:enter(rec)
    local prev = self.current
    self.current = rec
    return prev
end

local function job_body(fn, rec)
    while true do
        fn(rec)
        fn, rec = co_yield(JOB_DONE)
        -- Only spawn resumes an idle coroutine, with a job. Anything else
        -- (a wake reason) is never called: the coroutine stays idle.
        while type(fn) ~= "function" do fn, rec = co_yield(IDLE) end
    end
end

-- Runs coroutine `co` for record `rec` until it yields or ends its job, and
-- registers what it yielded for (see "Why jobs never touch..." above).
local function step(self, rec, co, ...)
    local prev = self.current
    self.current = rec
    local ok, a, b, c, d, e = co_resume(co, ...)
    local leave = self.leave_user
    if leave then leave() end -- a memory cap's mode: the loop is the worker's own
    -- The record the coroutine ran last: a runner's coroutine moves from
    -- record to record (its messages), so it may not be `rec`.
    local cur = self.current
    self.current = prev
    if not ok then
        -- Handlers catch their own errors; this is a bug in the loop itself.
        self.jobs = self.jobs - 1
        error("isle: job coroutine died: " .. tostring(a))
    elseif a == JOB_DONE then
        self.jobs = self.jobs - 1
        local pool = self.pool
        if #pool < 64 then pool[#pool + 1] = co end
        rec.co = nil
    elseif a ~= IDLE then
        self.parked[co] = cur
        cur.yielded = true -- the loop may hold it from now on (the worker reuses only records never parked)
        if a ~= SCHED then
            -- User code yielded at the top of a job: let others run, resume later.
            self.ready[#self.ready + 1] = cur
        elseif b == SLEEP then
            cur.timer = self:add_timer(C.isle_now() + c, cur)
        elseif b == AWAIT then
            local list = self.waiting[c]
            if not list then
                list = { task = e } -- the subscription holds the task while the list exists
                self.waiting[c] = list
            end
            list[#list + 1] = cur
            cur.awaiting = c
            if d >= 0 then cur.timer = self:add_timer(C.isle_now() + d, cur) end
        end
    end
end

-- Starts fn(rec) in a job coroutine at once. `rec` is the job's record
-- (the worker keeps its task, kind and arguments there).
function Sched:spawn(fn, rec)
    local co = self.pool[#self.pool]
    if co then self.pool[#self.pool] = nil else co = co_create(job_body) end
    rec.co = co
    self.jobs = self.jobs + 1
    step(self, rec, co, fn, rec)
end

-- Resumes `rec` with `...` if its coroutine is parked for it; else the
-- resume is stale (its job went on or ended) and is dropped.
local function resume_parked(self, rec, ...)
    local co = rec.co
    if co == nil or self.parked[co] ~= rec then return end
    self.parked[co] = nil
    -- A parked job is suspended inside its user code (a sleep, an await):
    -- under a memory cap it goes on in the user's mode.
    local enter = self.enter_user
    if enter then enter() end
    step(self, rec, co, ...)
end
sched.resume_parked = resume_parked

-- True when the running code is a job's own coroutine (not a coroutine the
-- user created inside it) and no C call stands in between (a table.sort
-- comparator, a gsub callback, the count hook), so that it may yield to the
-- loop. Where it may not, waits block the thread instead.
function Sched:can_yield()
    local rec = self.current
    return rec ~= nil and rec.co == co_running() and co_isyieldable()
end

-- The driver contract (runtime.driver) ------------------------------------------

function Sched:can_suspend() return self:can_yield() end
function Sched:suspend(t, timeout) return self:await(t, timeout) end

function Sched:notify_done(t)
    local key = task_key(t)
    local list = self.waiting[key]
    if not list then return end
    self.waiting[key] = nil
    local cbs = list.callbacks
    if cbs then
        for i = 1, #cbs do self:go(cbs[i], nil, "an on_done callback") end
    end
    for i = 1, #list do
        local rec = list[i]
        if rec.awaiting == key then
            rec.awaiting = nil
            self:wake(rec, "done")
        end
    end
end

-- Wakes the jobs awaiting the tasks of a list of notices, then frees it.
function Sched:take_done(done)
    local d = done
    while d ~= nil do
        self:notify_done(d.task)
        d = d.next
    end
    C.isle_done_free_list(done)
end

local function next_timeout(self)
    if #self.ready > 0 or #self.later > 0 or self.stash_done ~= nil or self.host.queued() then
        return 0
    end
    if #self.timers == 0 then return -1 end
    return self:timers_timeout()
end

-- Runs until the mailbox is closed and every job has finished.
--
-- A job may wait in the mailbox itself (see the worker's runners) only from
-- the flush at the end of a turn, when this loop holds nothing it has yet to
-- hand out: `may_block` says so. Anywhere else (notices, timers, ready jobs)
-- it must give control back, or what this loop holds would wait behind it.
function Sched:run()
    local mbox, msgs_out, done_out, host = self.mbox, self.msgs_out, self.done_out, self.host
    while true do
        -- Notices a job took while it waited in the mailbox itself.
        local stashed = self.stash_done
        if stashed ~= nil then
            self.stash_done = nil
            self:take_done(stashed)
        end
        local ready = self.ready
        if #ready > 0 then
            self.ready = {}
            for i = 1, #ready do resume_parked(self, ready[i], "yield") end
        end
        local later = self.later
        if #later > 0 then
            self.later = {}
            local run_user = self.host.run_user
            for i = 1, #later do self:spawn(run_user, later[i]) end
        end
        local timeout = next_timeout(self)
        -- Closed with nothing left to run: only drain what is still queued
        -- (pending timers are dropped, not waited for).
        if self.jobs == 0 and C.isle_mbox_is_closed(mbox) ~= 0 then timeout = 0 end
        local rc = C.isle_mbox_wait(mbox, timeout, msgs_out, done_out)
        if rc == ISLE_OK then
            local done, msgs = done_out[0], msgs_out[0]
            if done ~= nil then self:take_done(done) end
            -- on_message owns the batch: it frees each message when done with it.
            if msgs ~= nil then host.on_message(self, msgs) end
        end
        host.on_idle(self)
        if #self.timers > 0 then self:fire_timers() end
        self.may_block = true
        host.flush(self)
        self.may_block = false
        if rc == ISLE_ECLOSED and self.jobs == 0 and #self.ready == 0 and #self.later == 0
            and not host.queued() and self.stash_done == nil then
            break -- closed, drained, and every job has finished
        end
    end
end

-- For a runner job: may it wait for the next batch in the mailbox itself,
-- keeping a steady stream of messages in one compiled loop? Only from the
-- flush at the end of a turn (the loop holds nothing undelivered) and when
-- nothing else needs the loop: no other job, nothing ready or due, no
-- timer, no request on the flag, not closing. Returns the batch it took (or
-- nil) and whether the runner may go on with it; notices, wakes and closes
-- are the loop's business, so then it must hand back.
function Sched:wait_more()
    if not (self.may_block and self.jobs == 1 and #self.ready == 0 and #self.later == 0
            and #self.timers == 0 and self.stash_done == nil and self.flagp[0] == 0
            and C.isle_mbox_is_closed(self.mbox) == 0) then
        return nil, false
    end
    local msgs_out, done_out = self.msgs_out, self.done_out
    local rc = C.isle_mbox_wait(self.mbox, -1, msgs_out, done_out)
    local msgs, done = msgs_out[0], done_out[0]
    if done ~= nil then self.stash_done = done end
    if msgs == nil then msgs = nil end -- a NULL cdata is not nil
    return msgs, rc == ISLE_OK and msgs ~= nil and done == nil
end

-- Suspended jobs (sleeping, awaiting) that were asked to stop are woken
-- with the reason reason_of(rec) gives, which their sleep or wait raises.
function Sched:wake_stopped(reason_of)
    if next(self.waiting) == nil and #self.timers == 0 then return end -- nobody waits
    return self:sweep_stopped(reason_of)
end

-- No more messages: a failed init ends the isle this way.
function Sched:close() C.isle_mbox_close(self.mbox) end

-- The loop itself failed: take back the subscriptions of every wait, or
-- tasks that never end would keep this isle's mailbox for ever.
function Sched:abandon()
    for _, list in next, self.waiting do C.isle_task_unsubscribe(list.task, self.mbox) end
    self.waiting = {}
end

return sched
