-- Shared states (lua-mtstates' model): a Lua state with no thread of its
-- own, made once by a setup that returns its callback; any thread calls
-- the callback on itself, under the state's lock (csrc/state.c), with no
-- thread hop and no mailbox. Values cross as for isle calls (isle.codec),
-- since the state is another lua_State. This module holds both sides: the
-- caller's objects (isle.state, isle.state_ref, isle.singleton and the
-- methods) and, inside a shared state, the dispatcher the core runs for
-- each call (M.serve). See docs/states.md.
local ffi = require("ffi")
local debug = require("debug")
local string = require("string")
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
-- The C object of `obj`; a table that isle did not make (a forged object
-- with an exported metatable) has none and is refused before any C call.
local function ptr_of(obj)
    local p = PTRS[obj]
    if p == nil then error("isle: not an shared state object made by isle (got " .. type(obj) .. ")", 0) end
    return p
end
local codec = require("isle.codec")
local errors = require("isle.errors")
local wire = require("isle.wire")
local interrupt = require("isle.interrupt")
local sandbox = require("isle.sandbox") -- loaded first: it keeps the plain loaders

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local setfenv = setfenv
local type, select, error, pcall, xpcall, tostring, tonumber, setmetatable, unpack, next, loadstring, rawequal =
    type, select, error, pcall, xpcall, tostring, tonumber, setmetatable, unpack, next, loadstring, rawequal
local traceback = debug.traceback
local collectgarbage = collectgarbage -- kept: a sandbox may take the global away

local OK, ETIMEOUT, EBUSY, ECLOSED, ENOMEM =
    C.ISLE_OK, C.ISLE_ETIMEOUT, C.ISLE_EBUSY, C.ISLE_ECLOSED, C.ISLE_ENOMEM
local EREENTRY, EAMBIGUOUS = C.ISLE_STATE_EREENTRY, C.ISLE_STATE_EAMBIGUOUS
local TAG_V, TAG_ERROR, TAG_CORE, TAG_F = C.ISLE_WIRE_VALUES, C.ISLE_WIRE_ERROR, C.ISLE_WIRE_CORE, C.ISLE_WIRE_FUNCS
local ONCE, ALWAYS = C.ISLE_INTR_ONCE, C.ISLE_INTR_ALWAYS
local put_fast, get_values = codec.put_fast, codec.get_values
-- Resolved now: finalizers may run while this state closes.
local state_call, state_release, state_disown, out_free =
    C.isle_state_call_refs, C.isle_state_release, C.isle_state_disown, C.isle_state_out_free
local isle_msg_free = C.isle_msg_free

local M = {}
local State = {}
State.__index = State
M.State = State

local generation, check_process = runtime.generation, runtime.check_own

-- Set by isle.lua: compile isle's modules once per process (the state loads
-- them as bytecode), and the package.path a new state gets.
M.preload = function() end
M.path = function() return package.path end
function M.configure(preload, path)
    M.preload, M.path = preload, path
end

local function pack(...) return { n = select("#", ...), ... } end

-- Scratch for one call ------------------------------------------------------------
--
-- Each call takes its own buffers: an encoder for the arguments, a decoder
-- and the C buffer the results are copied into. Calls nest (a finalizer or
-- a callback that calls states, a job of an isle that awaits the lock while
-- others call), so nothing is shared between two calls in flight.
local spare             -- the one most calls take and give back
local pool, npool = {}, 0 -- more, for calls in flight at once
local KEEP_BYTES = 1048576 -- buffers that grew past this are not kept

local function take()
    local e = spare
    if e then
        spare = nil
        return e
    end
    local n = npool
    if n > 0 then
        e = pool[n]
        pool[n] = nil
        npool = n - 1
        return e
    end
    local o = C.isle_state_out_new()
    if o == nil then error(errors.new("memory", "cannot allocate a result buffer"), 3) end
    -- In a capped isle (or state) the results it takes in count against its limit.
    if runtime.mem ~= nil then C.isle_state_out_charge(o, runtime.mem) end
    return { enc = codec.new_buffer(), dec = codec.new_buffer(), out = ffi.gc(o, out_free) }
end

local function give(e)
    if e.out.cap > KEEP_BYTES or #e.enc > KEEP_BYTES then return end -- let the GC have it
    if spare == nil then
        spare = e
        return
    end
    local n = npool + 1
    npool = n
    pool[n] = e
end

-- A value list at `p` (`len` bytes, as codec.put_values wrote it) decoded
-- with `dec`: n, values... as codec.get_values returns them, without making
-- a string of the tag byte on the common path.
local function values_at(dec, p, len, from)
    if p[0] == TAG_V then
        dec:set(p + 1, len - 1)
        local n = dec:decode()
        if n == 1 then return 1, dec:decode() end
        if n == 0 then return 0 end
        if n == 2 then
            local a = dec:decode()
            return 2, a, dec:decode()
        end
    end
    dec:set(p, len)
    return get_values(dec, from)
end

-- The arguments of a call that did not run: shipped objects in them (tokens
-- hold a reference for their receiver) are decoded here and let go.
local function drop_args(e)
    local p, len = e.enc:ref()
    if len > 0 and p[0] == TAG_F then
        local dec = e.dec
        dec:set(p, len)
        pcall(get_values, dec)
    end
end

-- The same for a setup message that was not sent (its spec comes first).
local function drop_setup(dec)
    dec:decode()
    return get_values(dec)
end
local function drop_setup_args(e)
    local m = e.refs -- the references of the arguments (state.carrier), if any
    if m then
        e.refs = nil
        isle_msg_free(m)
    end
    local dec = e.dec
    dec:set(e.enc:ref())
    pcall(drop_setup, dec)
end

-- Results that carry references (shared buffers, channels, tokens) in the
-- message `refs`, which the decoded objects take references from and which
-- goes once they are decoded, decoded or not.
local function refs_done(refs, ok, ...)
    isle_msg_free(refs)
    if not ok then return false, errors.new("value", "cannot decode the results: " .. tostring((...))) end
    return true, ...
end
local function refs_outcome(o, refs, dec, p, len)
    o.refs = nil
    return refs_done(refs, pcall(values_at, dec, p, len, refs))
end

-- The outcome in e.out: true, n, values... or false, error object.
local function outcome(e)
    local o = e.out
    local p, len = o.data, tonumber(o.len)
    local tag = p[0]
    local dec = e.dec
    if tag == TAG_ERROR then
        dec:set(p + 1, len - 1)
        local t = dec:decode()
        if t.value ~= nil then t.value = codec.restore(t.value) end
        return false, errors.from_table(t)
    elseif tag == TAG_CORE then
        return false, errors.new("runtime", ffi.string(p + 1, len - 1))
    end
    local refs = o.refs
    if refs ~= nil then return refs_outcome(o, refs, dec, p, len) end
    return true, values_at(dec, p, len)
end

-- Caller side -----------------------------------------------------------------------

local function describe(p)
    local name = ffi.string(C.isle_state_name(p))
    return "state " .. tonumber(C.isle_state_id(p)) .. (name ~= "" and (" '" .. name .. "'") or "")
end

-- Errors that ran code in the state get the caller's traceback after the
-- state's, as mtstates' messages have both.
local function with_caller(err, level)
    local code = err.code
    if code == "runtime" or code == "interrupted" then
        local tb = traceback("", level + 1):gsub("^\n?stack traceback:",
            "stack traceback (caller, " .. runtime.label .. "):", 1)
        err.traceback = err.traceback and (err.traceback .. "\n" .. tb) or tb
    end
    return err
end

-- The error for a call that did not run (or whose results were lost).
local function call_error(p, rc)
    if rc == ECLOSED then return errors.new("closed", describe(p) .. " is closed") end
    if rc == EREENTRY then
        return errors.new("busy", "re-entry: this thread is inside the callback of " .. describe(p)
            .. " already (a state cannot call itself: that would deadlock)")
    end
    if rc == ENOMEM then return errors.new("memory", "not enough memory for the results of " .. describe(p)) end
    if type(rc) == "string" then return interrupt.stop_error(rc) end -- the waiting job was stopped
    if errors.is(rc) then return rc end -- ... with this error
    return errors.new("runtime", "unexpected result " .. tostring(rc) .. " from " .. describe(p))
end

local function drop_owner(p)
    state_disown(p)
    state_release(p)
end

local function wrap(p, owner)
    runtime.gc(p, owner and drop_owner or state_release)
    local s = setmetatable({ owner = owner, gen = generation() }, State)
    PTRS[s] = p
    return s
end

-- Values that travel as references (shared buffers, channels, tokens:
-- isle.codec attachments) go in a message of their own that carries only
-- the references (isle_state_io.args_refs, .results_refs), the bytes being
-- the call's as ever; its maker frees it once the other side decoded (or
-- could have). Only an error value cannot carry them: a `value` error
-- naming where.
local attached = codec.attached
local function refs_error(where)
    codec.drop_attached()
    return errors.new("value", where .. ": shared buffers, channels and tokens cannot travel in an error value")
end
-- The carrier of the encode's attachments, or nil and a `memory` error.
local function carrier(what)
    local n, arr = wire.refs()
    local m = C.isle_msg_new_refs(0, nil, nil, 0, arr, n)
    codec.drop_attached()
    if m == nil then return nil, errors.new("memory", "cannot allocate the references of the " .. what) end
    return m
end
-- The arguments' carrier goes once the call ended (the state took its own).
local function drop_refs(e)
    local m = e.refs
    if m then
        e.refs = nil
        isle_msg_free(m)
    end
end

-- Encodes the call's arguments into e.enc; a bad one raises a `value` error
-- naming it, before anything runs.
local function put_args(e, level, n, ...)
    local enc = e.enc
    enc:reset()
    if put_fast(enc, n, ...) then return end
    local ok, err = pcall(codec.put_values, enc, "args", 1, n, ...)
    if ok and attached.n > 0 then e.refs, err = carrier("arguments"); ok = e.refs ~= nil end
    if not ok then
        enc:reset()
        give(e)
        error(errors.from_codec(err) or err, level + 1)
    end
end

-- An isle's job waits for the lock without holding up its isle: it leaves a
-- task that the lock's next release ends, and awaits it on its loop.
local errp = ffi.new("int[1]")
local function run_later(p, e, sched, timeout)
    local deadline = timeout >= 0 and C.isle_now() + timeout or nil
    while true do
        local t = C.isle_state_watch(p, errp)
        if t == nil then
            local err = errp[0]
            if err ~= OK then return err end
        else
            local left = -1
            if deadline then
                left = deadline - C.isle_now()
                if left < 0 then left = 0 end
            end
            -- A stop raised as it resumes (an interrupt that came meanwhile)
            -- comes back as the result, like the reasons the loop gives.
            local ok, why = pcall(sched.await, sched, t, left)
            if not ok or why ~= "done" then
                C.isle_state_unwatch(p, t)
                C.isle_task_release(t)
                return why == "timeout" and ETIMEOUT or why
            end
            C.isle_task_release(t)
        end
        local ptr, len = e.enc:ref()
        local rc = state_call(p, 0, ptr, len, e.refs, e.out)
        if rc ~= ETIMEOUT then return rc end
        if deadline and C.isle_now() >= deadline then return ETIMEOUT end
    end
end

-- In a sandbox, a wait for the lock that blocks the thread is stoppable
-- (runtime.sliced): a stop is returned as its reason. (Apart from run: a
-- closure over run's locals would keep its trace from compiling.)
local function run_sliced(p, e, timeout)
    local ptr, len = e.enc:ref()
    local rc
    local ok, err = pcall(runtime.sliced, function(slice)
        rc = state_call(p, slice, ptr, len, e.refs, e.out)
        return rc ~= ETIMEOUT
    end, timeout)
    if not ok then return errors.is(err) and err.code or "interrupted" end
    return rc
end

-- Runs the call encoded in e.enc. When the state is busy, a host (or code
-- inside a shared state, or a C callback in an isle) blocks for the lock; a
-- job of an isle spins for the core's spin budget, then awaits it. (Where it
-- runs is only asked then: coroutine.running and isyieldable are not
-- compiled.) Returns the core's code, or the reason a waiting job was
-- stopped.
local function run(p, e, timeout)
    local ptr, len = e.enc:ref()
    local rc = state_call(p, 0, ptr, len, e.refs, e.out)
    if rc ~= ETIMEOUT or timeout == 0 then return rc end
    local sched = runtime.sched
    if sched == nil or not sched:can_yield() then
        if runtime.sandbox then return run_sliced(p, e, timeout) end
        return state_call(p, timeout, ptr, len, e.refs, e.out)
    end
    local spin = C.isle_get_spin()
    if timeout >= 0 and timeout < spin then spin = timeout end
    rc = state_call(p, spin, ptr, len, e.refs, e.out)
    if rc ~= ETIMEOUT then return rc end
    if timeout > 0 then
        timeout = timeout - spin
        if timeout < 0 then timeout = 0 end
    end
    return run_later(p, e, sched, timeout)
end

-- Tail-called by the methods: level 2 is the user's code.
local function finish(e, ok, n, ...)
    if ok then
        give(e)
        return ...
    end
    give(e)
    error(with_caller(n, 2), 2)
end

-- s:call(...): runs the callback on this thread under the state's lock,
-- waiting while another thread is inside; its results, or raises.
function State:call(...)
    if self.gen ~= generation() then check_process(self, "shared state", 2) end
    local p = ptr_of(self)
    local e = take()
    put_args(e, 2, select("#", ...), ...)
    local rc = run(p, e, -1)
    if e.refs then drop_refs(e) end
    if rc ~= OK then
        if rc ~= ENOMEM then drop_args(e) end
        give(e)
        error(call_error(p, rc), 2)
    end
    return finish(e, outcome(e))
end

local function tfinish(e, ok, n, ...)
    if ok then
        give(e)
        return true, ...
    end
    give(e)
    error(with_caller(n, 2), 2)
end

-- s:tcall(timeout, ...): false if the state stayed busy for `timeout`
-- seconds (the wait for the lock; the call itself is not timed), else
-- true and the callback's results.
function State:tcall(timeout, ...)
    if self.gen ~= generation() then check_process(self, "shared state", 2) end
    if type(timeout) ~= "number" or not (timeout >= 0) then
        error("bad argument #1 to 'tcall' (number of seconds >= 0 expected, got " .. tostring(timeout) .. ")", 2)
    end
    local p = ptr_of(self)
    local e = take()
    put_args(e, 2, select("#", ...), ...)
    local rc = run(p, e, timeout)
    if e.refs then drop_refs(e) end
    if rc ~= OK then
        if rc ~= ENOMEM then drop_args(e) end
        give(e)
        if rc == ETIMEOUT then return false end
        error(call_error(p, rc), 2)
    end
    return tfinish(e, outcome(e))
end

-- Interrupts the code running in the state: nil once, true at every
-- checkpoint until cleared, false clears (as isle.interrupt).
function State:interrupt(flag)
    check_process(self, "shared state")
    if flag ~= nil and type(flag) ~= "boolean" then
        error("bad argument #1 to 'interrupt' (boolean or nil expected, got " .. type(flag) .. ")", 2)
    end
    if C.isle_intr_set(C.isle_state_intr_id(ptr_of(self)), interrupt.mode_of(flag)) ~= OK then
        error(call_error(ptr_of(self), ECLOSED), 2)
    end
    return true
end

function State:id() return tonumber(C.isle_state_id(ptr_of(self))) end

function State:name()
    local n = ffi.string(C.isle_state_name(ptr_of(self)))
    if n == "" then return nil end
    return n
end

function State:isowner() return self.owner end

-- Bytes the state's Lua state holds, and its memory_limit (nil when
-- uncapped). Read from any thread, also while a call runs; 0 once closed.
function State:memory()
    check_process(self, "shared state")
    local a = C.isle_state_mem(ptr_of(self))
    local limit = tonumber(C.isle_mem_limit(a))
    return tonumber(C.isle_mem_used(a)), limit > 0 and limit or nil
end

function State:is_closed() return C.isle_state_is_closed(ptr_of(self)) ~= 0 end

-- Closes the state (from any object on it, as mtstates): `busy` while a
-- call runs. Idempotent.
function State:close()
    check_process(self, "shared state")
    local rc = C.isle_state_close(ptr_of(self))
    if rc == EBUSY then
        error(errors.new("busy", describe(ptr_of(self)) .. " is running a call on another thread"), 2)
    elseif rc == EREENTRY then
        error(errors.new("busy", describe(ptr_of(self)) .. " cannot be closed from inside its own callback"), 2)
    end
    return true
end

function State:__tostring()
    return "isle.state " .. describe(ptr_of(self)):sub(7) .. (self:is_closed() and " [closed]" or "")
end

-- Making states ----------------------------------------------------------------------

local libs_mod = require("isle.libs")
local OPTION_NAMES = { libs = true, instrument = true, instrument_loads = true, memory_limit = true, sandbox = true }

local function bad_arg(fname, n, what, got)
    error("bad argument #" .. n .. " to '" .. fname .. "' (" .. what .. " expected, got " .. got .. ")", 4)
end

local function check_libs(fname, spec)
    if spec == true or spec == false then return spec end
    if type(spec) ~= "table" then
        error(fname .. ": option 'libs' must be true, false or a list of library names (got " .. type(spec) .. ")", 4)
    end
    local list = {}
    for i, name in ipairs(spec) do
        if not libs_mod.ALWAYS[name] and not libs_mod.OPTIONAL[name] then
            error(fname .. ": unknown library '" .. tostring(name) .. "' at libs[" .. i .. "]", 4)
        end
        list[#list + 1] = name
    end
    return list
end

-- The arguments as mtstates reads them: [name,] [libs or options,] setup, ...
-- Returns the name, the options, setup and the index of its first argument.
local function parse(fname, named, ...)
    local n = select("#", ...)
    local i, name = 1, nil
    if named then
        name = ...
        if type(name) ~= "string" or name == "" then bad_arg(fname, 1, "a non-empty name", type(name)) end
        i = 2
    elseif n >= 2 then
        local a = ...
        if type(a) == "string" then
            name, i = a, 2
        elseif a == nil then
            i = 2
        end
    end
    local opts = { libs = true, instrument = true, instrument_loads = true }
    local o = select(i, ...)
    if type(o) == "boolean" then
        opts.libs = o
        i = i + 1
    elseif type(o) == "table" then
        for k in next, o do
            if not OPTION_NAMES[k] then error(fname .. ": unknown option '" .. tostring(k) .. "'", 3) end
        end
        if o.libs ~= nil then opts.libs = check_libs(fname, o.libs) end
        for _, k in ipairs({ "instrument", "instrument_loads" }) do
            if o[k] ~= nil then
                if type(o[k]) ~= "boolean" then
                    error(fname .. ": option '" .. k .. "' must be a boolean (got " .. type(o[k]) .. ")", 3)
                end
                opts[k] = o[k]
            end
        end
        i = i + 1
    end
    if opts.instrument == false then opts.instrument_loads = false end
    -- The sandbox (isle.sandbox): inherited by what a sandboxed state makes.
    local sb = nil
    if type(o) == "table" then sb = o.sandbox end
    opts.sandbox = sandbox.option(sb, "isle." .. fname, 2)
    sandbox.check_instrument(type(o) == "table" and o or nil, "isle." .. fname, 2)
    if opts.sandbox then sandbox.check_libs(opts.libs, "isle." .. fname, 2) end
    local limit = type(o) == "table" and o.memory_limit or nil
    if limit ~= nil then
        if type(limit) ~= "number" or not (limit >= 1) or limit % 1 ~= 0 or limit > 2 ^ 52 then
            error(fname .. ": option 'memory_limit' must be a positive integer number of bytes (got "
                .. (type(limit) == "number" and tostring(limit) or type(limit)) .. ")", 3)
        end
        opts.memory_limit = limit
    elseif runtime.mem ~= nil then
        -- Charged to the capped creator while the state lives, as an isle
        -- it spawns: a cap cannot be escaped through a shared state.
        error(fname .. ": a shared state made in a capped isle or state needs a memory_limit of its own "
            .. "(charged to the creator's while the new state lives)", 3)
    end
    local setup = select(i, ...)
    if type(setup) ~= "string" and type(setup) ~= "function" then
        bad_arg(fname, i, "a setup function without upvalues or a chunk string", type(setup))
    end
    return name, opts, setup, i + 1
end

-- The setup message: { libs, instrument_loads, and the setup as code
-- (instrumented by this side, as an isle's init), recovered source or
-- bytecode }, then setup's arguments.
local function put_setup(e, _fname, opts, setup, ...)
    local chunks = require("isle.chunks")
    local spec = { libs = opts.libs, instrument_loads = opts.instrument_loads, sandbox = opts.sandbox }
    if type(setup) == "string" then
        if opts.instrument then
            spec.code, spec.wrapped = chunks.prepare(setup)
        else
            spec.code = setup
        end
    else
        local ok, err = pcall(codec.check_function, setup, "setup")
        if not ok then
            give(e)
            error(errors.from_codec(err) or err, 3)
        end
        local src = opts.instrument and chunks.prepare_function(setup)
        if src then spec.src = src else spec.fn = string.dump(setup) end
    end
    local enc = e.enc
    enc:reset()
    enc:encode(spec)
    local n = select("#", ...)
    local ok, err = pcall(codec.put_values, enc, "args", 1, n, ...)
    if ok and attached.n > 0 then e.refs, err = carrier("setup arguments"); ok = e.refs ~= nil end
    if not ok then
        enc:reset()
        give(e)
        error(errors.from_codec(err) or err, 3)
    end
end

local function setup_outcome(p, e)
    local ptr, len = e.enc:ref()
    local rc = state_call(p, -1, ptr, len, e.refs, e.out)
    if e.refs then drop_refs(e) end
    if rc ~= OK then return false, call_error(p, rc) end
    return outcome(e)
end

-- Runs setup in the new state `p`; publishes it and returns the owning
-- object and setup's other results, or discards it and raises. Always
-- tail-called by the API function, so level 2 is the user's code.
local function set_up(p, e)
    local r = pack(pcall(setup_outcome, p, e))
    give(e)
    if not r[1] or not r[2] then
        C.isle_state_discard(p)
        C.isle_state_release(p)
        local err = r[1] and r[3] or r[2]
        if errors.is(err) then err = with_caller(err, 2) end
        error(err, 2)
    end
    C.isle_state_publish(p)
    return wrap(p, true), unpack(r, 4, 3 + r[3])
end

-- The strings must outlive the call that reads the config: the caller
-- keeps `name` and `path` in locals (a cdata does not keep them alive).
local errbuf = ffi.new("char[256]")
local function new_config(name, path, opts)
    return ffi.new("isle_state_config", { name = name, path = path, cpath = package.cpath,
                                          errbuf = errbuf, errcap = 256,
                                          memory_limit = opts.memory_limit or 0, charge = runtime.mem })
end

-- (`path` is passed only to keep that string alive until after the call.)
local function create_error(fname, name, err, path) -- luacheck: ignore path
    if err == EAMBIGUOUS then
        return errors.new("ambiguous", "two or more live states are named '" .. tostring(name) .. "'")
    elseif err == EREENTRY then
        return errors.new("busy", "isle." .. fname .. "('" .. tostring(name) .. "') is called from its own setup")
    elseif err == ENOMEM then
        local msg = "cannot make a shared state: " .. ffi.string(errbuf)
        local a = runtime.mem
        if a ~= nil then
            msg = msg .. " (" .. tonumber(C.isle_mem_used(a)) .. " of " .. tonumber(C.isle_mem_limit(a))
                .. " bytes in use), or out of memory"
        end
        return errors.new("memory", msg)
    end
    return errors.new("runtime", "cannot make a shared state: " .. ffi.string(errbuf))
end

-- isle.state([name,] [libs,] setup, ...) -> owning object, setup's other results
function M.new(...)
    local name, opts, setup, first = parse("state", false, ...)
    local e = take()
    put_setup(e, "state", opts, setup, select(first, ...))
    M.preload()
    local errp1 = ffi.new("int[1]")
    local path = M.path()
    local cfg = new_config(name, path, opts)
    local p = C.isle_state_new(cfg, errp1)
    if p == nil then
        drop_setup_args(e)
        give(e)
        error(create_error("state", name, errp1[0], path), 2)
    end
    return set_up(p, e)
end

-- isle.singleton(name, [libs,] setup, ...) -> owning object (and, for the
-- caller whose setup made it, setup's other results)
function M.singleton(...)
    local name, opts, setup, first = parse("singleton", true, ...)
    local e = take()
    put_setup(e, "singleton", opts, setup, select(first, ...))
    M.preload()
    local errp1, createdp = ffi.new("int[1]"), ffi.new("int[1]")
    local path = M.path()
    local cfg = new_config(name, path, opts)
    local sched = runtime.sched
    local yields = sched ~= nil and sched:can_yield()
    local backoff = 0.0005
    local p
    while true do
        -- A job waits for another caller's setup on its loop, not on the lock.
        p = C.isle_state_singleton(cfg, yields and 0 or -1, errp1, createdp)
        if p ~= nil or errp1[0] ~= ETIMEOUT then break end
        local ok, why = pcall(sched.sleep, sched, backoff)
        if not ok or why ~= "timeout" then
            drop_setup_args(e)
            give(e)
            error(ok and interrupt.stop_error(why) or why, 2)
        end
        if backoff < 0.01 then backoff = backoff * 2 end
    end
    if p == nil then
        drop_setup_args(e)
        give(e)
        error(create_error("singleton", name, errp1[0], path), 2)
    end
    if createdp[0] == 0 then
        drop_setup_args(e) -- found, not made: setup's arguments go unused
        give(e)
        return wrap(p, true)
    end
    return set_up(p, e)
end

-- isle.state_ref(id_or_name) -> non-owning object, or raises unknown/ambiguous
function M.ref(key)
    local p
    local errp1 = ffi.new("int[1]")
    if type(key) == "number" then
        p = C.isle_state_lookup(key, nil, errp1)
    elseif type(key) == "string" then
        p = C.isle_state_lookup(0, key, errp1)
    else
        error("bad argument #1 to 'state_ref' (state id or name expected, got " .. type(key) .. ")", 2)
    end
    if p == nil then
        if errp1[0] == EAMBIGUOUS then
            error(errors.new("ambiguous", "two or more live states are named '" .. key .. "'"), 2)
        end
        error(errors.new("unknown", "no live shared state " .. (type(key) == "string" and ("named '" .. key .. "'")
            or tostring(key))), 2)
    end
    return wrap(p, false)
end

-- Inside a shared state ------------------------------------------------------------------
--
-- The core calls the dispatcher (from M.serve) on the calling thread for
-- each call: it decodes the arguments from the caller's memory
-- (io.args), runs the callback, and leaves its encoded results in its own
-- buffer (io.results), which the core copies out before the lock goes.
-- The first call runs setup instead. Interrupts: the state's checkpoints
-- read its own flag (isle_state_sig); requests wait while isle's code runs
-- here (interrupt.loading stays 1 outside the callback), so a stop can only
-- be raised inside it, where the dispatcher's xpcall catches it.

local io_, sig, intr_id, flagp, label
local callback
local in_dec, out_enc = codec.new_buffer(), codec.new_buffer()
local loading = interrupt.loading

-- Memory caps (the memory_limit option; csrc/mem.c, docs/sandbox.md), as
-- in a capped isle (isle.worker): the callback and setup run under the
-- limit less a reserve (ISLE_MEM_USER), the decoding of their arguments and
-- the encoding of their results included, and the dispatcher's own work
-- under the limit itself (ISLE_MEM_CORE), so that a call that ran out is
-- still answered, with a `memory` error, and the next one finds the memory
-- back. Uncapped states skip all of this (`capped` is false).
local capped, mem = false, nil
local MEM_CORE, MEM_USER = C.ISLE_MEM_CORE, C.ISLE_MEM_USER
local mem_enforce = C.isle_mem_enforce
local OOM = "not enough memory" -- LuaJIT's message; the xpcall's handler is not called for it
local oom_message

-- A full collection outside the user's limit (garbage counts until it is
-- collected): after a call ran out, and when the allocator asks for one.
local collecting = false -- a finalizer's checkpoint must not start another
local function collect()
    if collecting then return end
    collecting = true
    local prev = mem_enforce(mem, MEM_CORE)
    pcall(collectgarbage, "collect")
    C.isle_mem_collected(mem)
    mem_enforce(mem, prev)
    collecting = false
end

-- Asked for by the allocator past its mark: at the next checkpoint
-- (interrupt.check), or at the end of the call.
local function collect_if_wanted()
    if C.isle_mem_gc_wanted(mem) ~= 0 then collect() end
end

-- Back to "requests wait", whatever happened inside (an error in the error
-- handler, out of memory).
local function hold()
    local l = loading(0)
    if l ~= 1 then loading(1 - l) end
end

local function done(...)
    loading(1)
    return ...
end

local function state_traceback()
    local tb = traceback("", 3):gsub("^\n?stack traceback:", "stack traceback (" .. label .. "):", 1)
    return errors.cut_traceback(tb)
end

-- xpcall's handler: an error object with the state-side traceback.
local function on_error(e)
    loading(1)
    if errors.is(e) then
        if e.code == "interrupted" and not e.traceback then e.traceback = state_traceback() end
        return e
    end
    local tb = state_traceback()
    local te = type(e)
    if te == "string" or te == "number" then return errors.new("runtime", tostring(e), tb) end
    -- Another value: its message may need its __tostring, which may loop;
    -- requests may stop it there (pcall catches them).
    loading(-1)
    local ok, s = pcall(errors.describe, e)
    loading(1)
    if not ok or type(s) ~= "string" then s = "(an error value whose __tostring failed)" end
    return errors.new("runtime", s, tb, e)
end


-- interrupt(true) holds until cleared: a call whose code caught it and
-- returned still ends interrupted. A single request that came after the
-- last checkpoint stays for the next call.
local function sticky_interrupt()
    if C.isle_sig_pending(sig) == 0 then return false end
    local m = C.isle_intr_take(intr_id)
    if m == ONCE then C.isle_intr_set(intr_id, ONCE) end
    return m == ALWAYS
end

local function put_error(e)
    if not errors.is(e) then
        -- Not from our handler: LuaJIT's own message (out of memory, an
        -- error in error handling).
        if e == OOM then
            e = errors.new("memory", oom_message or ("not enough memory in " .. label))
        else
            e = errors.new("runtime", tostring(e))
        end
    end
    wire.put_error(out_enc, e)
    if attached.n > 0 then wire.put_error(out_enc, refs_error("the error value")) end
    -- Results written before the error (their references) are not delivered.
    local m = io_.results_refs
    if m ~= nil then
        io_.results_refs = nil
        C.isle_msg_free(m)
    end
end

-- The results' references go to the caller in a carrier of their own.
local function carry_results(what)
    local m, err = carrier(what)
    if not m then return false, err end
    io_.results_refs = m
    return true
end

local function set_results()
    local p, len = out_enc:ref()
    io_.results = p
    io_.results_len = len
end

-- The callback's results are encoded inside the protected call: what
-- returns into xpcall must not be a vararg Lua function, or LuaJIT cannot
-- compile the call ("NYI: return to lower frame"); a builtin in tail
-- position returns there without even a trace of its own to abort.
-- In a capped state the results are encoded under the user's limit; one
-- that runs out is tried once more after a collection (a callback that
-- caught running out and returned left its garbage behind). Running out
-- again raises, and the call ends with `memory` (finish_call).
local function put_capped(...)
    local ok, encoded, err = pcall(wire.put_results, out_enc, select("#", ...), ...)
    if ok then return encoded, err end
    if encoded ~= OOM then error(encoded, 0) end
    codec.reset(out_enc)
    collect()
    return wire.put_results(out_enc, select("#", ...), ...)
end

local function put_results(...)
    loading(1)
    if flagp[0] ~= 0 and sticky_interrupt() then
        put_error(interrupt.stop_error("interrupted"))
    else
        local encoded, err
        if capped then
            encoded, err = put_capped(...)
        else
            encoded, err = wire.put_results(out_enc, select("#", ...), ...)
        end
        if encoded and attached.n > 0 then encoded, err = carry_results("results") end
        if not encoded then put_error(err) end
    end
    return true
end

local function call_callback(...)
    loading(-1)
    return rawequal(put_results(callback(...)), true)
end

-- A capped call that failed: what it ran out in (results half encoded, its
-- garbage) goes before the error is written.
local function capped_failure(e)
    if e == OOM or (errors.is(e) and e.code == "memory") then
        out_enc:free()
        collect()
    end
    put_error(e)
    return set_results()
end

local function finish_call(ok, e)
    hold()
    if capped then
        mem_enforce(mem, MEM_CORE)
        if not ok then return capped_failure(e) end
        collect_if_wanted()
        return set_results()
    end
    if not ok then put_error(e) end
    return set_results()
end

-- In a sandboxed state (isle.sandbox) setup compiles in the sandbox's
-- globals, text only (or bytecode its sender dumped from a function).
local env = nil
local function load_setup(code, chunkname, wrapped, dumped)
    if env and not dumped then
        local bad = sandbox.text_error(code, wrapped)
        if bad then error(errors.new("runtime", bad), 0) end
    end
    local f, err = loadstring(code, chunkname)
    if not f then error(errors.new("runtime", err), 0) end
    if env then setfenv(f, env) end
    return f
end

local function compile_setup(spec)
    if env and spec.code and not spec.wrapped then
        -- Text in a sandbox: checkpoints inserted here (or refused).
        local f, err = sandbox.compile_text(spec.code, "=setup", env)
        if not f then error(errors.new("runtime", err), 0) end
        return f
    end
    if spec.code then
        local f = load_setup(spec.code, "=setup", spec.wrapped)
        if spec.wrapped then f = f()(interrupt.pointers()) end
        return f
    elseif spec.src then
        local factory = load_setup(spec.src[1], spec.src[2], true)
        return factory()(interrupt.pointers())()
    end
    local f = load_setup(spec.fn, "=setup", false, true)
    return codec.bind_checkpoints(f)
end

local function run_setup(spec, ...)
    if capped then mem_enforce(mem, MEM_CORE) end
    if spec.instrument_loads then require("isle.loaders").install(_G) end
    require("isle.libs").apply(spec.libs, _G)
    if spec.sandbox then env = sandbox.install(spec.sandbox, spec.libs, spec.instrument_loads) end
    local f = compile_setup(spec)
    loading(-1)
    if capped then mem_enforce(mem, MEM_USER) end
    return done(f(...))
end

local function finish_setup(ok, ...)
    hold()
    if capped then mem_enforce(mem, MEM_CORE) end
    local cb = ...
    if ok and type(cb) ~= "function" then
        put_error(errors.new("value", "setup must return the callback function first (got "
            .. (select("#", ...) > 0 and type(cb) or "nothing") .. ")"))
    elseif ok then
        callback = cb
        out_enc:reset()
        local n = select("#", ...) - 1
        if capped then mem_enforce(mem, MEM_USER) end -- setup's results are its own
        local enc_ok, err = pcall(codec.put_values, out_enc, "results", 2, n, select(2, ...))
        if capped then mem_enforce(mem, MEM_CORE) end
        if enc_ok and attached.n > 0 then enc_ok, err = carry_results("setup results") end
        if not enc_ok then
            if err == OOM then return capped_failure(err) end
            put_error(errors.from_codec(err) or errors.new("value", tostring(err)))
        end
    elseif capped then
        return capped_failure(cb)
    else
        put_error(cb)
    end
    return set_results()
end

local function serve_call()
    local dec = in_dec
    if callback ~= nil then
        -- A capped state decodes the arguments under the user's limit:
        -- running out there leaves serve_call (dispatch_capped).
        if capped then mem_enforce(mem, MEM_USER) end
        return finish_call(xpcall(call_callback, on_error, select(2, values_at(dec, io_.args, io_.args_len, io_.args_refs))))
    end
    dec:set(io_.args, io_.args_len)
    local spec = dec:decode()
    if capped then mem_enforce(mem, MEM_USER) end
    return finish_setup(xpcall(run_setup, on_error, spec, select(2, get_values(dec, io_.args_refs))))
end

-- What the core calls. A trace cannot return into C ("return to lower
-- frame"), so the work is one call down, where LuaJIT compiles it (with
-- the FFI accesses, which cost much more when interpreted).
local function dispatch()
    serve_call()
end

-- The same for a capped state: a call whose arguments do not fit under the
-- user's limit (decoded before its protected call) ends with `memory`.
local function dispatch_capped()
    mem_enforce(mem, MEM_CORE)
    -- The last call's results (copied out by now): a large buffer goes
    -- back, or it would stay counted.
    if #out_enc > 65536 then out_enc:free() end
    local ok, e = pcall(serve_call)
    if ok then return end
    hold()
    mem_enforce(mem, MEM_CORE)
    if e ~= OOM then error(e, 0) end
    codec.drop_attached()
    capped_failure(errors.new("memory", "the call's arguments do not fit in the memory_limit of " .. label))
end

-- Called by the core once, in the new state: binds it and returns the
-- dispatcher.
function M.serve(addr)
    local p = ffi.cast("isle_state *", addr)
    io_ = C.isle_state_io_of(p)
    label = describe(p)
    runtime.label = label
    sig = C.isle_state_sig(p)
    intr_id = C.isle_state_intr_id(p)
    interrupt.bind(sig, intr_id)
    interrupt.install_hook()
    flagp = interrupt.pointers()
    loading(1)
    interrupt.guard_modules(package)
    -- With a memory_limit: capped from here on (the state booted uncapped);
    -- a limit that leaves no room for a call is refused (the string says why).
    mem = C.isle_state_mem(p)
    local limit = tonumber(C.isle_mem_limit(mem))
    if limit > 0 then
        collectgarbage("collect")
        local used = tonumber(C.isle_mem_used(mem))
        local least = tonumber(C.isle_mem_minimum(used))
        if limit < least then
            return "memory_limit " .. limit .. " is too small: the state holds " .. used
                .. " bytes once started; it needs a memory_limit of at least " .. least .. " bytes"
        end
        capped = true
        runtime.mem = mem -- what it sends, holds, spawns or makes is charged to it
        oom_message = "not enough memory (the call reached the memory_limit of " .. label .. ", "
            .. limit .. " bytes)"
        interrupt.on_memory(collect_if_wanted)
        C.isle_mem_collected(mem) -- the first mark
        mem_enforce(mem, MEM_CORE)
        require("jit").off(dispatch_capped)
        return dispatch_capped
    end
    -- The shim is never compiled (its traces could only abort); what it
    -- calls is.
    require("jit").off(dispatch)
    return dispatch
end

return M
