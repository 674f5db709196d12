-- Channels: bounded many-producer many-consumer queues of values shared by
-- any number of states (csrc/chan.c). A value is encoded as a call argument
-- is (isle.codec; tokens and channels in it travel as references held by
-- the queued message). A channel is itself a value: passed to an isle, it
-- arrives as the same channel.
--
-- Waits are wake-and-retry: an empty pop (a full push) gets a waiter slot
-- from the core and waits on it as on any task (runtime.wait_task: an isle
-- job yields to its loop, a host blocks or suspends through its hub), then
-- tries again. Nothing is handed to a waiter, so a wait that times out or
-- is stopped loses no value.
local ffi = require("ffi")
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local codec = require("isle.codec")
local errors = require("isle.errors")
local wire = require("isle.wire")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local setmetatable, type, tostring, tonumber, error, pcall = setmetatable, type, tostring, tonumber, error, pcall
local collectgarbage = collectgarbage -- kept: a sandbox may take the global away
local isle_chan_push, isle_chan_pop, isle_chan_unwait = C.isle_chan_push, C.isle_chan_pop, C.isle_chan_unwait
local isle_chan_push_num = C.isle_chan_push_num
local isle_msg_new, isle_msg_free, isle_task_release = C.isle_msg_new, C.isle_msg_free, C.isle_task_release
local isle_msg_charge = C.isle_msg_charge
local isle_now, isle_chan_spin = C.isle_now, C.isle_chan_spin
local ISLE_OK, ISLE_EBUSY, ISLE_ECLOSED = C.ISLE_OK, C.ISLE_EBUSY, C.ISLE_ECLOSED
local put_fast, put_values, get_values, reset = codec.put_fast, codec.put_values, codec.get_values, codec.reset
local attached, new_msg = wire.attached, wire.new_msg
local generation, check_process, wait_task = runtime.generation, runtime.check_own, runtime.wait_task

local channel = {}
local Channel = {}
Channel.__index = Channel

channel.DEFAULT_CAPACITY = 1024

-- Out-parameters of the core calls, one set per state (calls never overlap
-- on one thread: nothing here yields between a call and reading them).
local out_msg = ffi.new("isle_msg *[1]")
local out_num = ffi.new("double[1]")
-- Numbers and strings, the common values, skip the codec: a number travels
-- inline in the channel's ring (isle_chan_push_num: no message at all), a
-- string as a message of kind STR holding its bytes; kind VAL holds a value
-- list encoded as call arguments are.
local VAL, STR = 0, 2
local ffi_string = ffi.string
local out_wait = ffi.new("isle_task *[1]")

local function wrap(p)
    runtime.gc(p, C.isle_chan_release)
    local ch = setmetatable({ gen = generation() }, Channel)
    PTRS[ch] = p
    return ch
end

function channel.new(capacity)
    if capacity == nil then
        capacity = channel.DEFAULT_CAPACITY
    elseif type(capacity) ~= "number" or capacity ~= capacity or capacity % 1 ~= 0
        or capacity < 1 or capacity > C.ISLE_CHAN_CAP_MAX then
        error("bad argument #1 to 'channel' (integer capacity in 1.." .. tonumber(C.ISLE_CHAN_CAP_MAX)
            .. " expected, got " .. tostring(capacity) .. ")", 3)
    end
    local p = C.isle_chan_new(capacity)
    if p == nil then error(errors.new("memory", "cannot allocate a channel"), 3) end
    -- In a capped isle (or state) the ring counts against its limit while
    -- the channel lives, wherever it goes.
    local mem = runtime.mem
    if mem ~= nil and C.isle_chan_charge(p, mem) == 0 then
        C.isle_chan_release(p)
        error(errors.new("memory", "cannot make a channel of capacity " .. capacity .. ": its ring ("
            .. capacity * 16 .. " bytes) does not fit in the memory_limit of " .. runtime.label), 3)
    end
    return wrap(p)
end

-- A capped pusher: its queued messages count against its limit until
-- popped (as the messages it sends to isles), once more after a
-- collection (garbage tasks may hold results charged to it).
local function charge_failed(m, mem)
    if isle_msg_charge(m, mem) ~= 0 then return false end
    collectgarbage("collect")
    return isle_msg_charge(m, mem) == 0
end

local function check_timeout(timeout, fname)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
        error("bad argument to '" .. fname .. "' (timeout in seconds expected, got " .. type(timeout) .. ")", 3)
    end
    if timeout == nil or timeout < 0 then return nil end
    return isle_now() + timeout
end

local function closed_error()
    return errors.new("closed", "the channel is closed")
end

-- Waits on waiter slot `w` until `deadline` (nil: no limit): true and
-- "done" (try again), "timeout" or the reason the wait was stopped; false
-- and the error a stop raised inside the wait (the caller re-raises it). A waiter given up
-- is taken back, and its wake, if it had one, passed on (isle_chan_unwait).
local function wait_on(self, w, deadline)
    w = ffi.gc(w, isle_task_release) -- released even if the state dies mid-wait
    local ok, why
    if deadline then
        local left = deadline - isle_now()
        if left > 0 then
            ok, why = pcall(wait_task, w, left)
        else
            ok, why = true, C.isle_task_state(w) >= C.ISLE_TASK_DONE and "done" or "timeout"
        end
    else
        ok, why = pcall(wait_task, w, -1)
    end
    -- A job stopped while it waits (its timeout, a cancel) gets the stop
    -- raised from inside the wait: give the waiter back before it goes on.
    if not ok or why ~= "done" then isle_chan_unwait(PTRS[self], w) end
    ffi.gc(w, nil)
    isle_task_release(w)
    return ok, why
end

local function stopped(why, what)
    if why == "timeout" then return errors.new("timeout", "the channel stayed " .. what .. " until the timeout") end
    return errors.new(why, "the wait on the channel was ended: " .. why)
end

-- true, or nil and an error (`closed`, `timeout`; a stopped wait's reason).
function Channel:push(v, timeout)
    if v == nil then error("bad argument #1 to 'push' (a value expected, got nil)", 2) end
    local deadline = check_timeout(timeout, "push")
    check_process(self, "channel")
    local m = nil -- stays nil for a number: it travels inline
    local tv = type(v)
    if tv == "string" then
        m = isle_msg_new(STR, nil, v, #v)
        if m == nil then error(errors.new("memory", "cannot allocate a channel message"), 2) end
    elseif tv ~= "number" then
        local enc = runtime.enc
        reset(enc)
        if not put_fast(enc, 1, v) then
            local ok, e = pcall(put_values, enc, "value", 1, 1, v)
            if not ok then
                reset(enc)
                error(errors.from_codec(e) or e, 2)
            end
        end
        if attached.n == 0 then
            local p, len = enc:ref()
            m = isle_msg_new(VAL, nil, p, len)
        else
            m = new_msg(VAL, nil, enc)
        end
        if m == nil then error(errors.new("memory", "cannot allocate a channel message"), 2) end
    end
    local mem = runtime.mem
    if mem ~= nil and m ~= nil and charge_failed(m, mem) then
        local len = tonumber(m.len)
        isle_msg_free(m) -- and the references it carries
        error(errors.new("memory", "cannot push " .. len .. " bytes: with the messages it has queued, "
            .. runtime.label .. " would pass its memory_limit"), 2)
    end
    local ptr = PTRS[self]
    local rc
    if m == nil then rc = isle_chan_push_num(ptr, v, nil) else rc = isle_chan_push(ptr, m, nil) end
    if rc == ISLE_OK then return true end
    while rc == ISLE_EBUSY do
        if timeout == 0 then break end
        if isle_chan_spin(ptr, 1) ~= 0 then
            if m == nil then rc = isle_chan_push_num(ptr, v, nil) else rc = isle_chan_push(ptr, m, nil) end
            if rc ~= ISLE_EBUSY then break end
        end
        if m == nil then rc = isle_chan_push_num(ptr, v, out_wait) else rc = isle_chan_push(ptr, m, out_wait) end
        if rc ~= ISLE_EBUSY then break end
        local ok, why = wait_on(self, out_wait[0], deadline)
        if why ~= "done" then
            isle_msg_free(m) -- not queued: nobody else frees it (nil: nothing)
            if not ok then error(why, 0) end
            return nil, stopped(why, "full")
        end
        if m == nil then rc = isle_chan_push_num(ptr, v, nil) else rc = isle_chan_push(ptr, m, nil) end
    end
    if rc == ISLE_OK then return true end
    isle_msg_free(m)
    if rc == ISLE_ECLOSED then return nil, closed_error() end
    if rc == ISLE_EBUSY then return nil, stopped("timeout", "full") end
    return nil, errors.new("memory", "cannot allocate a channel waiter")
end

-- The value of message `m`, which is freed (decoded first: tokens and
-- channels in it take references of their own).
local dec = runtime.dec
-- Nothing is read through `m` after isle_msg_free: the JIT may fuse a load
-- into the instruction that uses its value (`s + c:pop()` compiled to an
-- addsd from memory), which then runs after the free, reading memory
-- another thread may already reuse (seen: wrong sums under contention).
local function take(m)
    if m == nil then return out_num[0] end -- a number, carried inline
    local kind = m.kind
    if kind == STR then
        local v = ffi_string(m.data, m.len)
        isle_msg_free(m)
        return v
    end
    dec:set(m.data, m.len)
    local ok, n, v = pcall(get_values, dec, m)
    isle_msg_free(m)
    if not ok then error(errors.new("value", "cannot decode a channel value: " .. tostring(n)), 3) end
    return v
end

-- The oldest value, or nil and an error (`closed`: closed and empty;
-- `timeout`; a stopped wait's reason).
function Channel:pop(timeout)
    local deadline = check_timeout(timeout, "pop")
    check_process(self, "channel")
    local ptr = PTRS[self]
    local rc = isle_chan_pop(ptr, out_msg, out_num, nil)
    while rc == ISLE_EBUSY do
        if timeout == 0 then break end
        if isle_chan_spin(ptr, 0) ~= 0 then
            rc = isle_chan_pop(ptr, out_msg, out_num, nil)
            if rc ~= ISLE_EBUSY then break end
        end
        rc = isle_chan_pop(ptr, out_msg, out_num, out_wait)
        if rc ~= ISLE_EBUSY then break end
        local ok, why = wait_on(self, out_wait[0], deadline)
        if not ok then error(why, 0) end
        if why ~= "done" then return nil, stopped(why, "empty") end
        rc = isle_chan_pop(ptr, out_msg, out_num, nil)
    end
    if rc == ISLE_OK then return take(out_msg[0]) end
    if rc == ISLE_ECLOSED then return nil, closed_error() end
    if rc == ISLE_EBUSY then return nil, stopped("timeout", "empty") end
    return nil, errors.new("memory", "cannot allocate a channel waiter")
end

-- The oldest value, or nil when there is none now (never waits); a closed
-- and empty channel gives nil and a `closed` error.
function Channel:try_pop()
    check_process(self, "channel")
    local rc = isle_chan_pop(PTRS[self], out_msg, out_num, nil)
    if rc == ISLE_OK then return take(out_msg[0]) end
    if rc == ISLE_ECLOSED then return nil, closed_error() end
    return nil
end

-- Later pushes fail with `closed`; every waiter wakes; queued values can
-- still be popped. Idempotent.
function Channel:close()
    check_process(self, "channel")
    C.isle_chan_close(PTRS[self])
    return self
end

function Channel:len()
    check_process(self, "channel")
    return tonumber(C.isle_chan_len(PTRS[self]))
end

function Channel:__tostring()
    if self.gen ~= generation() then return "isle.channel (from before a fork)" end
    return "isle.channel (" .. self:len() .. "/" .. tonumber(C.isle_chan_cap(PTRS[self]))
        .. (C.isle_chan_is_closed(PTRS[self]) ~= 0 and ", closed" or "") .. ")"
end

-- On the wire: an index into the references of the carrier, as a token
-- (lua/isle/token.lua); the reference is the channel's own slot
-- (isle_chan_ref), so the carrier keeps the channel alive until it is
-- decoded or freed, and the receiver takes a reference of its own.
codec.register_special(2, Channel, function(ch, path)
    check_process(ch, "channel", 4)
    return codec.attach(C.isle_chan_ref(PTRS[ch]), path)
end, function(index, from)
    local p = codec.carried(from, index, "a channel", C.isle_chan_of_ref)
    return wrap(p)
end)

channel.Channel = Channel
return channel
