-- Pools: N isles serving one bounded queue of calls (csrc/pool.c). A pool
-- object has an isle handle's calling methods (isle.handle: the messages it
-- queues are the very messages an isle call sends, task slot and all); each
-- pool isle runs a feeder (lua/isle/worker.lua) that takes the next message
-- only when the last one it took has ended, and runs it as any message is
-- run, so timeouts, tokens, cancel, interrupts, stats and memory limits all
-- work as for isles. The one data path: caller -> wire -> queue -> feeder ->
-- job -> wire -> slot -> waiter. A pool is itself a value: passed to an
-- isle it arrives as the same pool (a non-owning object); only its owner
-- closes it, and the owner collected closes it.
local ffi = require("ffi")
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local codec = require("isle.codec")
local errors = require("isle.errors")
local handle = require("isle.handle")

local C = runtime.C
local setmetatable, type, tostring, tonumber, error, pcall, next, ipairs =
    setmetatable, type, tostring, tonumber, error, pcall, next, ipairs
local isle_chan_push, isle_chan_pop, isle_chan_unwait = C.isle_chan_push, C.isle_chan_pop, C.isle_chan_unwait
local isle_msg_free, isle_task_release, isle_pool_queue = C.isle_msg_free, C.isle_task_release, C.isle_pool_queue
local ISLE_OK, ISLE_EBUSY, ISLE_ECLOSED = C.ISLE_OK, C.ISLE_EBUSY, C.ISLE_ECLOSED
local generation, check_process, wait_task = runtime.generation, runtime.check_own, runtime.wait_task

local pool = {}
local Pool = {}
Pool.__index = Pool

-- The owner's isle handles, under a key user code does not have (closing
-- one would leave its pool short of an isle); a field, so that they go
-- with the pool in the same collection.
local ISLES = {}

pool.DEFAULT_QUEUE = 1024
pool.MAX_SIZE = 256

-- The calling methods are the handle's own: they differ only in `ops`.
for _, k in ipairs({ "eval", "call", "exec", "spawn_eval", "spawn_call", "spawn_exec", "try_spawn_eval",
                    "try_spawn_call", "try_spawn_exec", "post", "try_post", "with" }) do
    Pool[k] = handle.Handle[k]
end

local function label(self)
    local p = PTRS[self]
    local n = ffi.string(C.isle_pool_name(p))
    return "pool " .. tonumber(C.isle_pool_id(p)) .. (n ~= "" and (" '" .. n .. "'") or "")
end

-- Waiting for room (out-parameters: calls never overlap on one thread).
local out_wait = ffi.new("isle_task *[1]")
local out_msg = ffi.new("isle_msg *[1]")
local out_num = ffi.new("double[1]")

-- Waits on channel waiter `w` (as channel.lua's waits): true and "done"
-- (try again), or the reason the wait ended; false and the error a stop
-- raised inside it.
local function wait_on(q, w)
    w = ffi.gc(w, isle_task_release) -- released even if the state dies mid-wait
    local ok, why = pcall(wait_task, w, -1)
    if not ok or why ~= "done" then isle_chan_unwait(q, w) end
    ffi.gc(w, nil)
    isle_task_release(w)
    return ok, why
end

local ops = {}

function ops.is_closed(self)
    return C.isle_pool_is_closed(PTRS[self]) ~= 0
end

function ops.closed_error(self)
    return errors.new("closed", label(self) .. " is closed")
end

-- Instrumenting eval chunks: as its isles were spawned (isle.spawn's `instrument`).
function ops.instrument(self)
    local base = self.base or self
    return base.instrument ~= false
end

-- Queues message `m` (send in isle.handle made it). wait: < 0 for room as
-- long as it takes (an isle job yields, a host blocks or awaits through its
-- hub, as for channels), 0 not at all. true, or nil and an error (`busy`,
-- `closed`, a stopped wait's reason), `m` freed then (and the slot reference it held).
function ops.push(self, m, wait)
    local q = isle_pool_queue(PTRS[self])
    local rc = isle_chan_push(q, m, nil)
    while rc == ISLE_EBUSY and wait ~= 0 do
        rc = isle_chan_push(q, m, out_wait)
        if rc ~= ISLE_EBUSY then break end
        local ok, why = wait_on(q, out_wait[0])
        if not ok then
            isle_msg_free(m)
            error(why, 0) -- a stop raised inside the wait: the job ends with it
        end
        if why ~= "done" then
            isle_msg_free(m)
            return nil, errors.new(why, "the wait for room in the queue of " .. label(self) .. " ended: " .. why)
        end
        rc = isle_chan_push(q, m, nil)
    end
    if rc == ISLE_OK then return true end
    isle_msg_free(m)
    if rc == ISLE_EBUSY then return nil, errors.new("busy", "the queue of " .. label(self) .. " is full") end
    if rc == ISLE_ECLOSED then return nil, ops.closed_error(self) end
    return nil, errors.new("memory", "cannot wait for room in the queue of " .. label(self))
end

-- In a pool isle's feeder (an isle job): the next queued message, waiting
-- (the job yields) while the queue is empty; nil once the queue is closed
-- and empty. An isle of a pool closes with cancel only when its owner
-- closes it (p:close, or the owner's state closing): the pool is closed
-- then too, from here if it was not yet, so that no submit is left queued
-- with nobody to take it; what is still queued goes on to the worker,
-- which ends its task CLOSED as it does for its mailbox.
function pool.take(obj, self_ptr)
    local p = PTRS[obj]
    local q = isle_pool_queue(p)
    while true do
        local rc = isle_chan_pop(q, out_msg, out_num, nil)
        if rc == ISLE_OK then return out_msg[0] end
        if rc == ISLE_ECLOSED then return nil end
        if C.isle_close_mode(self_ptr) ~= 0 then
            C.isle_pool_close(p) -- the next pop drains or ends
        else
            rc = isle_chan_pop(q, out_msg, out_num, out_wait)
            if rc == ISLE_OK then return out_msg[0] end
            if rc == ISLE_ECLOSED then return nil end
            if rc == ISLE_EBUSY then
                wait_on(q, out_wait[0]) -- woken, timed out or stopped: look again
            else
                -- Out of memory for a waiter: look again a little later.
                pcall(runtime.sched.sleep, runtime.sched, 0.001)
            end
        end
    end
end

local function wrap(p, owner)
    runtime.gc(p, owner and C.isle_pool_disown or C.isle_pool_release)
    local obj = setmetatable({ owner = owner, closed = false, gen = generation(), ops = ops }, Pool)
    PTRS[obj] = p
    return obj
end

local SPAWN_OPTIONS = { init = true, args = true, libs = true, instrument = true, instrument_loads = true,
                        memory_limit = true, sandbox = true }

local function bad_opt(name, what, got)
    error("isle.pool: option '" .. name .. "' must be " .. what .. " (got " .. got .. ")", 3)
end

-- isle.pool{ size = n, queue = capacity, name = s, <isle.spawn options> }
function pool.new(opts, spawn)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'pool' (table expected, got " .. type(opts) .. ")", 2)
    end
    local spawn_opts = {}
    for k, v in next, opts do
        if SPAWN_OPTIONS[k] then
            spawn_opts[k] = v
        elseif k ~= "size" and k ~= "queue" and k ~= "name" then
            error("isle.pool: unknown option '" .. tostring(k) .. "'", 2)
        end
    end
    local size = opts.size
    if type(size) ~= "number" or size % 1 ~= 0 or size < 1 or size > pool.MAX_SIZE then
        bad_opt("size", "an integer in 1.." .. pool.MAX_SIZE, tostring(size))
    end
    local queue = opts.queue
    if queue == nil then queue = pool.DEFAULT_QUEUE end
    if type(queue) ~= "number" or queue % 1 ~= 0 or queue < 1 or queue > C.ISLE_CHAN_CAP_MAX then
        bad_opt("queue", "an integer capacity in 1.." .. tonumber(C.ISLE_CHAN_CAP_MAX), tostring(queue))
    end
    local name = opts.name
    if name ~= nil and (type(name) ~= "string" or name == "") then
        bad_opt("name", "a non-empty string", type(name))
    end
    local errp = ffi.new("int[1]")
    local p = C.isle_pool_new(queue, name, errp)
    if p == nil then
        if errp[0] == C.ISLE_EINVAL then error("isle.pool: the name '" .. name .. "' is in use by an open pool", 2) end
        error(errors.new("memory", "cannot make a pool"), 2)
    end
    local self = wrap(p, true)
    self.instrument = opts.instrument
    local isles = {}
    self[ISLES] = isles
    for i = 1, size do
        -- Each isle is spawned as isle.spawn would (its errors are the
        -- pool's), and carries the pool to its feeder.
        local ok, h = pcall(spawn, spawn_opts, self)
        if ok and C.isle_pool_add(p, C.isle_sig_of(PTRS[h])) ~= ISLE_OK then
            h:close{ cancel = true }
            ok, h = false, errors.new("memory", "cannot add an isle to the pool")
        end
        if not ok then
            self:close{ cancel = true }
            error(h, 2)
        end
        isles[i] = h
    end
    return self
end

-- isle.pool_ref(id_or_name): a non-owning object for an open pool, or nil
-- and an `unknown` error.
function pool.ref(key)
    local p
    if type(key) == "number" then
        p = C.isle_pool_lookup(key, nil)
    elseif type(key) == "string" then
        p = C.isle_pool_lookup(0, key)
    else
        error("bad argument #1 to 'pool_ref' (number or string expected, got " .. type(key) .. ")", 2)
    end
    if p == nil then return nil, errors.new("unknown", "no open pool " .. tostring(key)) end
    return wrap(p, false)
end

function Pool:size()
    check_process(self, "pool")
    return tonumber(C.isle_pool_size(PTRS[self]))
end

function Pool:id()
    return tonumber(C.isle_pool_id(PTRS[self]))
end

function Pool:name()
    local n = ffi.string(C.isle_pool_name(PTRS[self]))
    if n == "" then return nil end
    return n
end

function Pool:is_closed()
    return ops.is_closed(self)
end

function Pool:isowner()
    return self.owner == true
end

local STOP_REASON = { [C.ISLE_CANCEL_USER] = "cancelled", [C.ISLE_CANCEL_TIMEOUT] = "timeout" }

-- The pool's counts: queued (waiting in its queue), running, and those its
-- isles ended since they joined it; `oldest` as for an isle.
function Pool:stats()
    check_process(self, "pool")
    local st = ffi.new("isle_stats")
    C.isle_pool_stats(PTRS[self], st)
    local r = {
        queued = tonumber(st.queued), running = tonumber(st.running), done = tonumber(st.done),
        failed = tonumber(st.failed), cancelled = tonumber(st.cancelled), closed = tonumber(st.closed),
    }
    if st.oldest_start > 0 then
        r.oldest = { job = ffi.string(st.oldest_label), running_for = C.isle_now() - st.oldest_start,
                     stopping = STOP_REASON[st.oldest_cancel] }
    end
    return r
end

-- Closes the pool: no more submits (`closed`), then as an isle's close:
-- by default what is queued runs and the isles are joined; {cancel = true}
-- ends what is queued CLOSED and cancels what runs; {timeout = s} drains
-- for at most s seconds, then cancels. Idempotent; owner only.
function Pool:close(opts)
    if not self.owner then
        error("isle: close() needs the pool's owning object (this one came from pool_ref or was passed)", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'close' (table or nil expected, got " .. type(opts) .. ")", 2)
    end
    if self.closed then return true end
    check_process(self, "pool")
    local timeout = opts and opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
        error("isle: close option 'timeout' must be a number of seconds >= 0", 2)
    end
    local isles = self[ISLES] -- (the owner is never in one of them: they were spawned for it)
    self.closed = true
    C.isle_pool_close(PTRS[self])
    local cancel = opts and opts.cancel
    -- Every isle is asked first, then each is joined: one wait for all.
    for i = 1, #isles do C.isle_stop(PTRS[isles[i]], cancel and 1 or 0) end
    if timeout and not cancel then
        local deadline = C.isle_now() + timeout
        for i = 1, #isles do
            local left = deadline - C.isle_now()
            if C.isle_join(PTRS[isles[i]], left > 0 and left or 0) == 0 then cancel = true end
        end
        if cancel then for i = 1, #isles do C.isle_stop(PTRS[isles[i]], 1) end end
    end
    for i = 1, #isles do isles[i]:close(cancel and { cancel = true } or nil) end
    return true
end

function Pool:__tostring()
    if self.gen ~= generation() then return "isle.pool (from before a fork)" end
    return "isle." .. label(self) .. " (" .. self:size() .. " isles" .. (self:is_closed() and ", closed" or "") .. ")"
end

-- On the wire: as a channel (channel.lua), the pool's own slot as a
-- reference carried by the message.
codec.register_special(4, Pool, function(obj, path)
    check_process(obj, "pool", 4)
    return codec.attach(C.isle_pool_ref(PTRS[obj]), path)
end, function(index, from)
    local p = codec.carried(from, index, "a pool", C.isle_pool_of_ref)
    return wrap(p, false)
end)

pool.Pool = Pool
return pool
