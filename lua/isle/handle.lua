-- Handles: the way any state talks to an isle. An owning handle (from
-- isle.spawn) closes the isle when closed or collected; non-owning handles
-- (isle.lookup, isle.self) only keep the C object alive.
local ffi = require("ffi")
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
-- The C object of `obj`; a table that isle did not make (a forged object
-- with an exported metatable) has none and is refused before any C call.
local function ptr_of(obj)
    local p = PTRS[obj]
    if p == nil then error("isle: not an isle handle made by isle (got " .. type(obj) .. ")", 0) end
    return p
end
local codec = require("isle.codec")
local errors = require("isle.errors")
local task = require("isle.task")
local interrupt = require("isle.interrupt")
local token = require("isle.token")
local proto = require("isle.proto")
local chunks = require("isle.chunks")
local wire = require("isle.wire")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local setmetatable, getmetatable, select, error, type, tostring, tonumber, pcall, next, newproxy, collectgarbage =
    setmetatable, getmetatable, select, error, type, tostring, tonumber, pcall, next, newproxy, collectgarbage
local debug = require("debug")
local string = require("string")
local outcome = task.outcome
local ISLE_OK, ISLE_EBUSY = C.ISLE_OK, C.ISLE_EBUSY

local handle = {}
local Handle = {}
Handle.__index = Handle

local EVAL, CALL, EXEC, POST = proto.EVAL, proto.CALL, proto.EXEC, proto.POST
local generation, check_process = runtime.generation, runtime.check_own
local new_msg, attached = wire.new_msg, wire.attached
local isle_msg_new = C.isle_msg_new
-- Resolved now: finalizers may run while the state closes, after LuaJIT has
-- let go of the library object (the library itself stays mapped).
local isle_abandon, isle_release, isle_retain, isle_stop, isle_join, isle_now, isle_id, isle_task_release =
    C.isle_abandon, C.isle_release, C.isle_retain, C.isle_stop, C.isle_join, C.isle_now, C.isle_id,
    C.isle_task_release

-- Teardown ---------------------------------------------------------------------
--
-- Every isle this state spawned and has not closed, with a reference of its
-- own: when the state closes (lua_close, an nginx reload, a LÖVE restart)
-- they are closed with cancel and given `teardown_timeout` seconds in all
-- to end; an isle still running then (inside a C call, or compiled code
-- without checkpoints) is left to end on its own. It never touches this
-- state again, and libisle.so stays mapped for it.
local owned, owned_count, owned_prune_at = {}, 0, 64
handle.teardown_timeout = 0.1

local function own(p)
    local id = tonumber(isle_id(p))
    isle_retain(p)
    -- A cdata of its own (ffi.cast to the same type would return `p`, which
    -- carries the owner's finalizer and must stay collectable).
    owned[id] = ffi.cast("void *", p)
    owned_count = owned_count + 1
    if owned_count >= owned_prune_at then
        -- Forget isles whose owner was collected and whose thread has ended.
        for k, q in next, owned do
            if isle_join(q, 0) == 1 then
                owned[k] = nil
                owned_count = owned_count - 1
                isle_release(q)
            end
        end
        owned_prune_at = owned_count * 2 > 64 and owned_count * 2 or 64
    end
end

local function disown(p)
    local id = tonumber(isle_id(p))
    local q = owned[id]
    if q ~= nil then
        owned[id] = nil
        owned_count = owned_count - 1
        isle_release(q)
    end
end

local teardown_gen = generation()
local function teardown()
    if generation() ~= teardown_gen then return end -- a forked child: the parent's isles
    for _, p in next, owned do isle_stop(p, 1) end
    local deadline = isle_now() + handle.teardown_timeout
    for k, p in next, owned do
        local left = deadline - isle_now()
        isle_join(p, left > 0 and left or 0)
        isle_abandon(p) -- detaches it if it still runs
        isle_release(p)
        owned[k] = nil
    end
    owned_count = 0
end
-- A proxy only the state's close collects: it is anchored in the registry.
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = teardown
debug.getregistry()["isle.teardown"] = sentinel

local function release_owned(p)
    -- A collected owner: stop the isle without waiting for it (a finalizer
    -- must never block), then drop the reference.
    isle_abandon(p)
    isle_release(p)
end

function handle.wrap(p, owner)
    local h = setmetatable({ owner = owner, closed = false, gen = generation() }, Handle)
    PTRS[h] = p
    runtime.gc(p, owner and release_owned or isle_release)
    if owner then own(p) end
    return h
end

local dumps = setmetatable({}, { __mode = "k" })
local function dump_function(fn, what)
    local s = dumps[fn]
    if s then return s end
    -- The check rejects C functions and upvalues with a clear error; what
    -- travels is the bytecode (the worker rebinds checkpoint upvalues).
    local ok, e = pcall(codec.check_function, fn, what)
    if not ok then error(errors.from_codec(e) or e, 4) end
    s = string.dump(fn)
    dumps[fn] = s
    return s
end

local function closed_error(self)
    return errors.new("closed", "isle " .. tonumber(C.isle_id(ptr_of(self))) .. " is closed")
end

local function is_closed(self)
    return self.closed or (self.base and self.base.closed) or C.isle_is_closed(ptr_of(self)) ~= 0
end

-- An encode that will not be sent: drop what it attached, then raise.
local function abandon(enc, e)
    codec.reset(enc)
    error(e, 4)
end

local function charge_again(m, mem)
    collectgarbage("collect")
    return C.isle_msg_charge(m, mem) ~= 0
end

-- Encodes and queues one message. wait: seconds to wait for room (< 0 for
-- ever, 0 not at all). Returns the task pointer (or true for one-way
-- messages), or nil, err for busy/closed. Tokens (in the options or among
-- the values) take no reference until the message is made, which carries
-- them (isle.wire): a failure anywhere leaves nothing to give back.
local function send(self, kind, target, wait, with_task, n, ...)
    if self.gen ~= generation() then check_process(self, "isle handle", 3) end
    -- A pool (isle.pool) shares these methods: `ops` is where its queue
    -- differs from an isle's mailbox (nil for isles).
    local ops = self.ops
    -- A closed isle is an expected failure: nil, err (the raising callers raise it).
    if ops then
        if ops.is_closed(self) then return nil, ops.closed_error(self) end
    elseif is_closed(self) then
        return nil, closed_error(self)
    end
    local enc = codec.reset(runtime.enc)
    local opts = self.opts
    local flags = 0
    if kind == EVAL or kind == EXEC then
        local instr = opts and opts.instrument
        if instr == nil then
            if ops then instr = ops.instrument(self) else instr = C.isle_instrument(ptr_of(self)) ~= 0 end
        end
        if kind == EVAL then
            if instr then
                local wrapped
                target, wrapped = chunks.prepare(target)
                if wrapped then flags = proto.F_WRAPPED end
            end
        else -- EXEC: `target` is the function; its source if it can be had, else bytecode
            local src = instr and chunks.prepare_function(target)
            if src then
                target, flags = src, proto.F_WRAPPED
            else
                target = dump_function(target, "function")
            end
        end
        -- Code from a sandbox runs only where a sandbox is (worker.lua).
        if runtime.sandbox then flags = flags + proto.F_SANDBOXED end
    end
    if opts then
        flags = flags + proto.F_OPTIONS
        -- Options travel with the message: { target, { token, instrument } }.
        enc:encode(codec.check({ target, opts.wire }, "options"))
    else
        enc:encode(target)
    end
    if not codec.put_fast(enc, n, ...) then
        local ok, e = pcall(codec.put_values, enc, "args", 1, n, ...)
        if not ok then abandon(enc, errors.from_codec(e) or e) end
    end
    local t
    if with_task then
        t = C.isle_task_new()
        if t == nil then abandon(enc, errors.new("memory", "cannot allocate a task")) end
        -- A blocking call's holder (take_holder), or a finalizer of its own.
        if type(with_task) == "cdata" then with_task[0] = t else runtime.gc(t, isle_task_release) end
        -- A capped isle holds the result in C memory: it counts against its limit.
        if runtime.mem ~= nil then C.isle_task_charge_results(t, runtime.mem) end
        -- The deadline runs from the call, queued time included.
        if opts and opts.timeout
            and C.isle_task_expire_at(t, C.isle_now() + opts.timeout) ~= ISLE_OK then
            abandon(enc, errors.new("memory", "cannot arm the timeout"))
        end
    end
    local m
    if attached.n == 0 then -- no token to carry: inline, as on every hot path (isle.wire)
        local p, len = enc:ref()
        m = isle_msg_new(kind, t, p, len)
    else
        m = new_msg(kind, t, enc)
    end
    if m == nil then
        error(errors.new("memory", "cannot allocate a message of " .. #enc .. " bytes"), 3)
    end
    local mem = runtime.mem
    -- A capped isle: what it has queued counts against its memory_limit, and
    -- so do the results its tasks hold, which garbage tasks keep until they
    -- are collected: once more after a collection.
    if mem ~= nil and C.isle_msg_charge(m, mem) == 0 and not charge_again(m, mem) then
        C.isle_msg_free(m) -- and the references it carries
        error(errors.new("memory", "cannot send " .. #enc .. " bytes: with the messages it has queued, "
            .. "this isle would pass its memory_limit"), 3)
    end
    m.flags = flags
    if ops then
        -- Into the pool's queue; on failure the message is freed there.
        local ok, err = ops.push(self, m, wait)
        if not ok then return nil, err end
        return t or true
    end
    local rc = C.isle_mbox_push(C.isle_mbox_of(ptr_of(self)), m, wait)
    if rc ~= ISLE_OK then
        C.isle_msg_free(m) -- and the references it carries
        if rc == ISLE_EBUSY then
            return nil, errors.new("busy", "the mailbox of isle " .. tonumber(C.isle_id(ptr_of(self))) .. " is full")
        end
        return nil, closed_error(self)
    end
    return t or true
end

local function raise_unless(t, err)
    if not t then error(err, 3) end
    return t
end

local function check_string(v, n, fname)
    if type(v) ~= "string" then
        error("bad argument #" .. n .. " to '" .. fname .. "' (string expected, got " .. type(v) .. ")", 3)
    end
end

local function check_function(v, fname)
    if type(v) ~= "function" then
        error("bad argument #1 to '" .. fname .. "' (function expected, got " .. type(v) .. ")", 3)
    end
    dump_function(v, "function") -- rejects C functions and upvalues, with a clear error
    return v
end

-- A blocking call's task slot is released by the call itself once its
-- outcome is decoded; should the call never get there (an error raised on
-- the way, a coroutine suspended in the wait and never resumed), the slot
-- is released when a holder (isle_task *[1]) that nobody uses any more is
-- collected. Holders are made with their finalizer and used again:
-- ffi.gc on every call's own pointer, set and then taken back, cost about
-- 500 instructions a call (LuaJIT's table of finalizers rehashes as keys
-- come and go). A forked child starts a list of its own: a holder keeps
-- the finalizer of the process that made it (runtime.gc).
local holders, holder_count, holders_gen = {}, 0, nil
local function release_held(hd)
    local t = hd[0]
    if t ~= nil then
        hd[0] = nil
        isle_task_release(t)
    end
end
local function take_holder()
    local g = generation()
    if g ~= holders_gen then holders, holder_count, holders_gen = {}, 0, g end
    local n = holder_count
    if n == 0 then return runtime.gc(ffi.new("isle_task *[1]"), release_held) end
    local hd = holders[n]
    holders[n] = nil
    holder_count = n - 1
    return hd
end

local function finish(t, hd, ok, ...)
    -- The outcome is decoded: the slot and its result go now, not at some
    -- later GC cycle (which does not see their size: a stream of large
    -- results would pile up in C memory meanwhile).
    hd[0] = nil
    local n = holder_count
    if n < 16 then
        holders[n + 1] = hd
        holder_count = n + 1
    end
    C.isle_task_release(t)
    if ok then return select(2, ...) end
    error((...), 3)
end

local function await(t, hd)
    local why = runtime.wait_task(t, -1)
    if why ~= "done" then
        -- The caller was stopped while waiting: the call is abandoned, so
        -- the work it asked for is cancelled too (its holder releases it).
        C.isle_task_cancel(t)
        error(interrupt.stop_error(why), 3)
    end
    return finish(t, hd, outcome(t))
end

-- Blocking calls ---------------------------------------------------------

function Handle:eval(code, ...)
    check_string(code, 1, "eval")
    local hd = take_holder()
    return await(raise_unless(send(self, EVAL, code, -1, hd, select("#", ...), ...)), hd)
end

function Handle:call(name, ...)
    check_string(name, 1, "call")
    local hd = take_holder()
    return await(raise_unless(send(self, CALL, name, -1, hd, select("#", ...), ...)), hd)
end

function Handle:exec(fn, ...)
    local bc = check_function(fn, "exec")
    local hd = take_holder()
    return await(raise_unless(send(self, EXEC, bc, -1, hd, select("#", ...), ...)), hd)
end

-- Non-blocking: a task at once (waiting for mailbox room if it is full) ------

function Handle:spawn_eval(code, ...)
    check_string(code, 1, "spawn_eval")
    return task.new(raise_unless(send(self, EVAL, code, -1, true, select("#", ...), ...)))
end

function Handle:spawn_call(name, ...)
    check_string(name, 1, "spawn_call")
    return task.new(raise_unless(send(self, CALL, name, -1, true, select("#", ...), ...)))
end

function Handle:spawn_exec(fn, ...)
    local bc = check_function(fn, "spawn_exec")
    return task.new(raise_unless(send(self, EXEC, bc, -1, true, select("#", ...), ...)))
end

-- Never wait for room: task, or nil, err ("busy" when full, "closed") -------

local function try(t, err)
    if not t then return nil, err end
    return task.new(t)
end

function Handle:try_spawn_eval(code, ...)
    check_string(code, 1, "try_spawn_eval")
    return try(send(self, EVAL, code, 0, true, select("#", ...), ...))
end

function Handle:try_spawn_call(name, ...)
    check_string(name, 1, "try_spawn_call")
    return try(send(self, CALL, name, 0, true, select("#", ...), ...))
end

function Handle:try_spawn_exec(fn, ...)
    local bc = check_function(fn, "try_spawn_exec")
    return try(send(self, EXEC, bc, 0, true, select("#", ...), ...))
end

-- One-way: no task; errors go to the isle's stderr with the traceback.
function Handle:post(name, ...)
    check_string(name, 1, "post")
    raise_unless(send(self, POST, name, -1, false, select("#", ...), ...))
    return true
end

function Handle:try_post(name, ...)
    check_string(name, 1, "try_post")
    local ok, err = send(self, POST, name, 0, false, select("#", ...), ...)
    if not ok then return nil, err end
    return true
end

-- Call options ----------------------------------------------------------------

local OPTION_NAMES = { token = true, timeout = true, instrument = true }

-- h:with{token = tok, timeout = s, instrument = bool}: a view of the same isle
-- whose calls carry these options. Views can be kept and reused.
function Handle:with(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'with' (table expected, got " .. type(opts) .. ")", 2)
    end
    for k in next, opts do
        if not OPTION_NAMES[k] then error("isle: unknown call option '" .. tostring(k) .. "'", 2) end
    end
    local merged = {}
    if self.opts then for k, v in next, self.opts.given do merged[k] = v end end
    for k, v in next, opts do merged[k] = v end
    local tok, timeout, instr = merged.token, merged.timeout, merged.instrument
    if tok ~= nil and debug.getmetatable(tok) ~= token.Token then -- the real one: a sandbox protects it
        error("isle: call option 'token' must be a token from isle.token()", 2)
    end
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
        error("isle: call option 'timeout' must be a number of seconds >= 0", 2)
    end
    if instr ~= nil and type(instr) ~= "boolean" then
        error("isle: call option 'instrument' must be a boolean", 2)
    end
    local view = setmetatable({ owner = false, base = self.base or self, gen = self.gen, ops = self.ops },
        debug.getmetatable(self)) -- a handle's or a pool's; the real one (a sandbox seals them)
    PTRS[view] = ptr_of(self)
    view.opts = { given = merged, timeout = timeout, instrument = instr, wire = { token = tok } }
    return view
end

-- Interrupts the isle's state: nil once, true at every checkpoint, false clears.
function Handle:interrupt(flag)
    check_process(self, "isle handle")
    if flag ~= nil and type(flag) ~= "boolean" then
        error("bad argument #1 to 'interrupt' (boolean or nil expected, got " .. type(flag) .. ")", 2)
    end
    if C.isle_intr_set(C.isle_state_intr(ptr_of(self)), interrupt.mode_of(flag)) ~= ISLE_OK then
        error(closed_error(self), 2)
    end
    return true
end

-- The interrupt id of the isle's state, for isle.interrupt from anywhere.
function Handle:interrupt_id()
    return tonumber(C.isle_state_intr(ptr_of(self)))
end

-- Lifecycle -------------------------------------------------------------------

function Handle:close(opts)
    if not self.owner then
        error("isle: close() needs the owning handle (this one came from lookup or self)", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'close' (table or nil expected, got " .. type(opts) .. ")", 2)
    end
    if self.closed then return true end
    check_process(self, "isle handle")
    if runtime.self_ptr ~= nil and runtime.self_ptr == ptr_of(self) then
        error("isle: an isle cannot close itself with its owner's handle", 2)
    end
    local timeout = opts and opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
        error("isle: close option 'timeout' must be a number of seconds >= 0", 2)
    end
    self.closed = true
    if runtime.sandbox then
        -- In a sandbox the join is stoppable (runtime.sliced): a parent
        -- stopped while its child drains cancels the child and takes it back,
        -- so closing a child that never ends cannot hold the parent's thread.
        local p = ptr_of(self)
        isle_stop(p, (opts and opts.cancel) and 1 or 0)
        local ok, e = pcall(runtime.sliced, function(slice) return isle_join(p, slice) ~= 0 end,
            timeout or -1)
        if not ok or isle_join(p, 0) == 0 then
            isle_stop(p, 1)
            isle_join(p, -1)
        end
        disown(p)
        runtime.gc(p, isle_release)
        if not ok then error(e, 0) end
        return true
    end
    if opts and opts.cancel then
        C.isle_close(ptr_of(self), 1)
    elseif timeout then
        -- Drain for at most `timeout` seconds, then cancel what remains (a
        -- go heartbeat, a long job) and join.
        isle_stop(ptr_of(self), 0)
        if isle_join(ptr_of(self), timeout) == 0 then
            isle_stop(ptr_of(self), 1)
            isle_join(ptr_of(self), -1)
        end
    else
        C.isle_close(ptr_of(self), 0)
    end
    disown(ptr_of(self))
    -- Joined: only the memory is left, released when the handle goes.
    runtime.gc(ptr_of(self), isle_release)
    return true
end

local STOP_REASON = { [C.ISLE_CANCEL_USER] = "cancelled", [C.ISLE_CANCEL_TIMEOUT] = "timeout" }

-- What the isle is doing: counts of its tasks, and the one running longest
-- (a job stuck inside a C call shows here, still running past its deadline).
function Handle:stats()
    check_process(self, "isle handle")
    local st = ffi.new("isle_stats")
    C.isle_stats_get(ptr_of(self), st)
    local r = {
        queued = tonumber(st.queued), running = tonumber(st.running), done = tonumber(st.done),
        failed = tonumber(st.failed), cancelled = tonumber(st.cancelled), closed = tonumber(st.closed),
    }
    if st.oldest_start > 0 then
        r.oldest = { job = ffi.string(st.oldest_label), running_for = isle_now() - st.oldest_start,
                     stopping = STOP_REASON[st.oldest_cancel] }
    end
    return r
end

-- Bytes the isle's state holds (and C memory charged to it: messages it
-- sent that are still queued, results it holds), and its memory_limit (nil
-- when uncapped). Read from any thread; 0 once the isle has ended.
function Handle:memory()
    check_process(self, "isle handle")
    local a = C.isle_mem_of(ptr_of(self))
    local limit = tonumber(C.isle_mem_limit(a))
    return tonumber(C.isle_mem_used(a)), limit > 0 and limit or nil
end

function Handle:id()
    return tonumber(C.isle_id(ptr_of(self)))
end

function Handle:name()
    local n = ffi.string(C.isle_name(ptr_of(self)))
    if n == "" then return nil end
    return n
end

function Handle:is_closed()
    return is_closed(self) and true or false
end

function Handle:__tostring()
    local n = self:name()
    return "isle " .. self:id() .. (n and (" (" .. n .. ")") or "")
        .. (self:is_closed() and " [closed]" or "")
end

handle.Handle = Handle
return handle
