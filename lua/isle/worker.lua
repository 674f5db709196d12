-- The worker: what an isle's thread runs in its fresh state. Boots the state
-- (libraries, init), then serves the mailbox through the loop (isle.sched):
-- messages run in order in runner jobs (see "Messages" below), and each
-- result or error goes back into the task's completion slot.
local ffi = require("ffi")
local bit = require("bit")
local band = bit.band
local debug = require("debug")
local runtime = require("isle.runtime")
-- The garbage of the boot so far (the FFI declarations' text, the chunks
-- that ran once) is collected here, once: otherwise what boot allocates
-- next lands on fresh pages while the garbage's stay resident for the
-- isle's life (-16 KiB RSS per idle isle, +6% instructions per spawn; a
-- second collection as main starts saved 12 KiB more for +13%:
-- bench/README.md, Issue 12). The collector was stopped until here
-- (csrc/isle.c, run_worker); this full collection starts it again, before
-- any user code runs (test_core checks it runs in init and after).
collectgarbage("collect")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local codec = require("isle.codec")
local errors = require("isle.errors")
local sched = require("isle.sched")
local libs = require("isle.libs")
local interrupt = require("isle.interrupt")
local proto = require("isle.proto")
local wire = require("isle.wire")
-- isle.sandbox loads at boot only in a sandboxed isle (worker.main): 31 KiB
-- of heap that every other isle would keep for nothing.
local sandbox

local coroutine = require("coroutine")
local C = runtime.C
local type, select, pcall, xpcall, tostring, tonumber, unpack, loadstring, next, setmetatable =
    type, select, pcall, xpcall, tostring, tonumber, unpack, loadstring, next, setmetatable
local traceback = debug.traceback
local collectgarbage = collectgarbage -- kept: a sandbox may take the global away
local EVAL, EXEC, POST, F_OPTIONS, F_WRAPPED, F_INSTRUMENT, F_SANDBOXED =
    proto.EVAL, proto.EXEC, proto.POST, proto.F_OPTIONS, proto.F_WRAPPED, proto.F_INSTRUMENT, proto.F_SANDBOXED
local setfenv = setfenv
local ISLE_TASK_DONE, ISLE_TASK_FAILED, ISLE_TASK_CLOSED = C.ISLE_TASK_DONE, C.ISLE_TASK_FAILED, C.ISLE_TASK_CLOSED
local attached, isle_task_complete, decoder = wire.attached, C.isle_task_complete, wire.decoder
local task_of = interrupt.task_of
local reset = codec.reset

local worker = {}

-- Memory caps (isle.spawn's memory_limit, csrc/mem.c) -------------------------
--
-- The state's allocator counts what it holds against the limit of the mode
-- it is in: user code runs in ISLE_MEM_USER (the limit less a reserve), the
-- worker's own bookkeeping in ISLE_MEM_CORE (the limit itself), so that a
-- job that runs out ends with a `memory` error the worker can still report,
-- and the loop never fails for want of what the job took. What user code
-- makes the worker handle (decoding its arguments, encoding its results and
-- errors) is done in user mode too, under a pcall. Uncapped isles skip all of
-- this (`capped` is false).
local capped = false
local mem                      -- isle_mem* of this state
local MEM_CORE, MEM_USER = C.ISLE_MEM_CORE, C.ISLE_MEM_USER
local OOM = "not enough memory" -- LuaJIT's message; its error handler is not called for it
local oom_message = OOM

local function user_mode() C.isle_mem_enforce(mem, MEM_USER) end
local function core_mode() C.isle_mem_enforce(mem, MEM_CORE) end

-- A full collection, outside the user's limit: garbage counts until
-- collected. Uncapped isles collect this way too after running out.
local collecting = false -- a finalizer's checkpoint must not start another
local function collect()
    if collecting then return end
    collecting = true
    local prev = C.isle_mem_enforce(mem, MEM_CORE)
    -- Older LuaJITs pass on an error raised in a finalizer: not ours to raise.
    pcall(collectgarbage, "collect")
    C.isle_mem_collected(mem)
    C.isle_mem_enforce(mem, prev)
    collecting = false
end

-- Asked for by the allocator past its mark (the flag was raised): at the
-- next checkpoint (interrupt.check) or turn of the loop.
local function collect_if_wanted()
    if C.isle_mem_gc_wanted(mem) ~= 0 then collect() end
end

local function memory_error()
    return errors.new("memory", oom_message)
end

-- Error objects --------------------------------------------------------------

local isle_label = "isle"

local cut_traceback = errors.cut_traceback

-- Where user code runs: interrupt.check raises a stop in a job only while
-- its record has `user` set. The worker sets it right before each of its
-- protected calls (a job, a post, a user callback, init, describing an
-- error value) and clears it right after; the count hook never raises in
-- isle's own frames, so the few instructions between the mark and the
-- xpcall (either side) are safe. A stop seen while the mark is down waits
-- for the next checkpoint in user code or the loop's next turn.

-- Message handler for xpcall: an error object with the isle-side traceback,
-- cut where the worker's own frames begin. It runs no user code: a message
-- that needs the value's __tostring is left for describe() below, which
-- runs where checkpoints may stop it (a __tostring that loops for ever must
-- not hang the isle inside its own error handling).
local function on_error(e)
    if capped then core_mode() end -- user code is over: this reports it
    if errors.is(e) then return e end
    if e == OOM then return memory_error() end -- rethrown from a coroutine
    local tb = traceback("", 2):gsub("^\n?stack traceback:", "stack traceback (" .. isle_label .. "):", 1)
    tb = cut_traceback(tb)
    local te = type(e)
    if te == "string" or te == "number" then return errors.new("runtime", tostring(e), tb) end
    return errors.new("runtime", nil, tb, e)
end

local function describe_value(v) return errors.describe(v) end
local function describe_failed(e) return e end

-- Fills in a message that needs user code (an error value's __tostring, a
-- message that is not a string), inside an xpcall that checkpoints may
-- raise into (the mark on `rec`, above).
local function describe(e, rec)
    local m = e.message
    if type(m) == "string" then return e end
    local v = m
    if m == nil then v = e.value end
    if capped then user_mode() end
    rec.user = true
    local ok, s = xpcall(describe_value, describe_failed, v)
    rec.user = false
    if capped then core_mode() end
    if not ok or type(s) ~= "string" then
        s = "(an error value whose __tostring failed: " .. (errors.is(s) and s.code or type(s)) .. ")"
    end
    e.message = s
    return e
end

local put_error = wire.put_error

local function report(e, rec)
    runtime.report(describe(e, rec), "a posted call")
end

-- Completing tasks ------------------------------------------------------------


-- Jobs whose token is watched (run_job), so that a loop that dies can still
-- take their watches back.
local watching = {}

-- The job no longer cares about its token: take the watch back, or a token
-- nobody cancels keeps this isle's mailbox and signal block (and itself)
-- for ever. Before the task completes, so its caller never sees the watch.
local function unwatch(rec)
    watching[rec] = nil
    local s = runtime.sched
    C.isle_task_unwatch(rec.token, s.mbox, s.sig)
end

-- What a job holds for its stops (its interrupt id, its token's watch)
-- is let go only once its result is made: describing an error may still
-- run user code that a stop must reach.
local function let_go(rec)
    interrupt.job_ended(rec)
    if watching[rec] then unwatch(rec) end
end

-- Encodes a job's outcome into `enc`: the final state.
local function encode_outcome(enc, ok, ...)
    if ok then
        local encoded, e = wire.put_results(enc, select("#", ...), ...)
        if encoded then return ISLE_TASK_DONE end
        put_error(enc, e)
        return ISLE_TASK_FAILED
    end
    local e = ...
    put_error(enc, e)
    return wire.error_state(e)
end

-- The same for a capped isle, called through pcall. In these LuaJITs a
-- vararg function cannot return straight into pcall in compiled code
-- ("NYI: return to lower frame"), which kept the runner loop from
-- compiling: the common case (a job that returned at most three values)
-- goes on by a tail call to a function of fixed arity.
local function encode_few(enc, n, a, b, c)
    reset(enc) -- and what an encode that ran out left attached
    if codec.put_fast(enc, n, a, b, c) then return ISLE_TASK_DONE end
    local encoded, e = wire.put_results(enc, n, a, b, c)
    if encoded then return ISLE_TASK_DONE end
    put_error(enc, e)
    return ISLE_TASK_FAILED
end

local function encode_capped(enc, ok, ...)
    local n = select("#", ...)
    if ok and n <= 3 then return encode_few(enc, n, ...) end
    return encode_outcome(enc, ok, ...)
end

-- A result or error that did not fit under the limit. Every frame that held
-- its values was left by a tail call to get here, so the collection frees
-- them (and the buffer they were encoded into goes first).
local function finish_out_of_memory(rec, t)
    local enc = runtime.enc
    reset(enc) -- the tokens it attached are not sent
    enc:free()
    collect()
    put_error(enc, errors.new("memory", "the job's result does not fit in the memory_limit of " .. isle_label))
    let_go(rec)
    local p, len = enc:ref()
    isle_task_complete(t, ISLE_TASK_FAILED, p, len)
    if not rec.borrowed then C.isle_task_release(t) end
end

-- Stores the outcome in the job's task slot. In a capped isle it is encoded
-- under the user limit: what a job returns or raises is its own (a table
-- repeating one large string many times encodes to many times the limit).
local function finish(rec, t, ok, ...)
    local enc = runtime.enc
    local state
    if capped then
        local done
        for attempt = 1, 2 do
            user_mode()
            done, state = pcall(encode_capped, enc, ok, ...)
            core_mode()
            if done then break end
            codec.forget_fast() -- the check it ran out in may have left marks
            if state ~= OOM then error(state, 0) end
            if attempt == 2 then return finish_out_of_memory(rec, t) end
            -- Garbage may be what is in the way (a job that caught running
            -- out and returned left it): collected, then once more.
            collect()
        end
    else
        state = encode_outcome(enc, ok, ...)
    end
    let_go(rec)
    if attached.n == 0 then -- no token to carry: inline (isle.wire)
        local p, len = enc:ref()
        isle_task_complete(t, state, p, len)
    else
        wire.complete(t, state, enc)
    end
    if capped then
        -- A large buffer, once copied, goes back: it would stay counted.
        if #enc > 65536 then enc:free() end
        -- Asked for while the job ran and not done yet (no checkpoint came):
        -- before the next job, whose first allocations it would be in the way of.
        collect_if_wanted()
    end
    if not rec.borrowed then C.isle_task_release(t) end
end

local function complete(rec, ok, ...)
    if capped then core_mode() end
    rec.user = false
    local t = task_of(rec)
    rec.finished = true
    -- A stopped job ends stopped, even if its code caught the error and
    -- returned, or the request came while it was inside a C call.
    if t ~= nil and not rec.stop then interrupt.job_stop_reason(rec) end
    if rec.stop and (ok or not errors.is((...)) or (...).code ~= rec.stop) then
        return complete(rec, false, interrupt.stop_error(rec.stop))
    end
    if not ok then
        local e = ...
        local collected = false
        if e == OOM then
            -- Out of memory: the handler did not run. What the job left is
            -- garbage now, collected before anything else is made (capped
            -- or not: other isles and the host share the process's memory).
            collect()
            collected = true
            e = memory_error()
        end
        -- Our handler always makes an error object; anything else is an
        -- error in the handler itself (LuaJIT reports it as a string).
        if not errors.is(e) then e = errors.new("runtime", tostring(e)) end
        e = describe(e, rec)
        -- describe may have run into a stop (a __tostring that loops).
        if rec.stop and e.code ~= rec.stop then e = interrupt.stop_error(rec.stop) end
        -- (A message or result that did not fit under the limit, raised as
        -- an error object: the same.)
        if e.code == "memory" and capped and not collected then collect() end
        if t == nil then
            report(e, rec)
            return let_go(rec)
        end
        return finish(rec, t, false, e)
    end
    if t == nil then return let_go(rec) end
    return finish(rec, t, true, ...)
end

-- Resolving targets -----------------------------------------------------------

local chunk_cache, chunk_count = {}, 0

-- In a sandboxed isle (the spawn option `sandbox`, isle.sandbox): the
-- sandbox's globals, where user code runs and call targets are found.
local env = nil
local G = _G

-- A sandboxed isle compiles text only (bytecode that a sender dumped from a
-- function excepted: `dumped`), without the checkpoint variables' names, in
-- the sandbox's globals.
local function sandbox_check(code, wrapped, dumped)
    if dumped and code:byte(1) == 27 then return end
    local e = sandbox.text_error(code, wrapped)
    if e then error(errors.new("runtime", e), 0) end
end

-- Compiles a chunk. A `wrapped` one was instrumented by its sender
-- (isle.chunks): loading it gives a factory, which takes this state's
-- checkpoint flag, scratch word and slow path and returns the chunk.
-- `here`: a sender that has no instrumenter (a C host, csrc/host.c) asks the
-- isle to insert the checkpoints itself, as isle.chunks.prepare would have
-- (only for a chunk that compiles by itself, so a syntax error is Lua's own
-- and text cannot reach outside the wrapper); source the instrumenter cannot
-- handle compiles as it is. Either way the result is cached like any chunk,
-- unless it runs `once` (init: its text and its compiled chunk would stay in
-- the cache for the isle's life).
local function compile(code, chunkname, wrapped, here, dumped, once)
    local key = wrapped and code or (here and "\1" or "\0") .. code
    local f = chunk_cache[key]
    if f then return f end
    if env and not wrapped and not dumped then
        -- Text in a sandbox: checkpoints inserted here whatever the sender
        -- did (a view's `instrument` option is a field user code can set).
        local err
        f, err = sandbox.compile_text(code, chunkname, env)
        if not f then error(errors.new("runtime", err), 0) end
        here = false
    elseif env then
        sandbox_check(code, wrapped, dumped)
    end
    if here and code:byte(1) ~= 27 and loadstring(code, chunkname) then
        local out = require("isle.instrument").source(code)
        local factory = out and loadstring(out, chunkname)
        if factory then
            if env then setfenv(factory, env) end
            f = factory()(interrupt.pointers())
        end
    end
    if not f then
        local err
        f, err = loadstring(code, chunkname)
        if not f then error(errors.new("runtime", err), 0) end
        if env then setfenv(f, env) end
        if wrapped then
            f = f()(interrupt.pointers())
        elseif code:byte(1) == 27 then
            codec.bind_checkpoints(f) -- bytecode of a function made by instrumented code
        end
    end
    if once then return f end
    if chunk_count >= 256 then chunk_cache, chunk_count = {}, 0 end
    chunk_cache[key] = f
    chunk_count = chunk_count + 1
    return f
end

local function resolve_global(name)
    local v = G[name]
    if type(v) == "function" then return v end -- the common case: a plain global
    v = G
    for part in name:gmatch("[^%.]+") do
        if type(v) ~= "table" then v = nil break end
        v = v[part]
    end
    if v == nil or (type(v) ~= "function" and not (getmetatable(v) or {}).__call) then
        -- An error object, so no traceback of the worker's own frames is added.
        error(errors.new("runtime", "no function '" .. name .. "' in " .. isle_label .. " (got " .. type(v) .. ")"), 0)
    end
    return v
end

-- An exec'd function sent as instrumented source: { text, chunkname }; the
-- chunk returns the function itself.
local exec_cache = setmetatable({}, { __mode = "k" })
local function exec_function(target, once)
    local text, chunkname = target[1], target[2]
    local f = compile(text, chunkname, true, nil, nil, once)
    if once then return f() end
    local fn = exec_cache[f]
    if not fn then
        fn = f()
        exec_cache[f] = fn
    end
    return fn
end

local function target_function(rec)
    local kind, target = rec.kind, rec.target
    local flags = rec.flags
    if band(flags, F_SANDBOXED) ~= 0 and not env and kind ~= proto.CALL then
        error(errors.new("runtime", "isle sandbox: " .. isle_label .. " has no sandbox: it does not run "
            .. "code (eval, exec) sent from a sandboxed isle or state"), 0)
    end
    local wrapped = band(flags, F_WRAPPED) ~= 0
    if kind == EVAL then return compile(target, "=eval", wrapped, band(flags, F_INSTRUMENT) ~= 0) end
    if kind == EXEC then
        if wrapped then return exec_function(target) end
        return compile(target, "=exec", false, nil, true) -- bytecode: the hook and isle.checkpoint() only
    end
    return resolve_global(target)
end

local function call_target(rec, ...)
    return target_function(rec)(...)
end

-- Runs one job; `...` are its decoded arguments.
local function run_job(rec, ...)
    local tok = rec.token
    if tok ~= nil then
        local w = C.isle_task_watch(tok, runtime.sched.mbox, runtime.sched.sig)
        if w == 0 then
            rec.stop = "cancelled" -- the token was cancelled before the job began
        elseif w == 1 then
            watching[rec] = true -- complete takes it back, however the job ends
        else
            -- Out of memory: unwatched, a cancel of the token would not reach
            -- the job, so it must not run as if it could be cancelled.
            return complete(rec, false, errors.new("memory", "cannot watch the call's token (out of memory)"))
        end
    end
    if rec.stop then return complete(rec, false, interrupt.stop_error(rec.stop)) end
    if capped then user_mode() end -- complete and on_error switch back
    rec.user = true -- complete clears it
    -- A tail call: the arguments are out of reach while the job's results
    -- are stored (finish_out_of_memory).
    return complete(rec, xpcall(call_target, on_error, rec, ...))
end

local function pack(...)
    return { n = select("#", ...), ... }
end


-- Messages ---------------------------------------------------------------------
--
-- Messages run in "runners": a runner is a job coroutine that takes messages
-- from the isle's queue in arrival order and runs each one from the message
-- memory (a small one from a copy: wire.decoder), until the queue is empty. When a handler sleeps or awaits,
-- its runner stays with it and another runner takes the queue over, so
-- nothing waits behind a suspended job. While the isle has nothing else to
-- look after, a runner also waits for the next batch itself: a steady stream
-- of requests then runs in one loop that LuaJIT compiles, with no coroutine
-- switch and no scheduler turn per message.

-- The isle_msg* queue, owned by the runners: [0] its head, [1] its tail.
-- In C memory rather than two upvalues: a pointer stored in an upvalue is
-- a cdata object, allocated for every message taken (garbage the
-- collector then sweeps); one read from here and used on the spot is not.
local queue = ffi.new("isle_msg *[2]")
local self_ptr, flagp            -- set by main

-- Appends a batch of messages; the tail is left at its first message.
local function link(msgs)
    local tail = queue[1]
    if tail ~= nil then tail.next = msgs else queue[0] = msgs end
    queue[1] = msgs
end

-- Moves the tail on to the last message; returns how many it moved past.
-- (The loop keeps no pointer in a variable from one turn to the next.)
local function advance_tail()
    local n = 0
    while true do
        local rest = queue[1].next
        if rest == nil then return n end
        queue[1] = rest
        n = n + 1
    end
end

-- Counts the batch just linked (from the tail, left at its first message,
-- to its end) as held: held messages count as queued (h:stats). Keeps no
-- pointer in a variable (see wait_batch).
local function hold_batch(sig)
    local n = 1
    if queue[1].next ~= nil then n = n + advance_tail() end
    C.isle_sig_hold(sig, n)
end

local function enqueue(msgs)
    link(msgs)
    hold_batch(runtime.sched.sig)
end

-- A runner's wait for the next batch (Sched:wait_more), queued; returns
-- whether the runner may go on. A batch of several is counted by the
-- caller, from a frame that holds no pointer: a stream of posts makes
-- advance_tail's loop a trace of its own, and a pointer in any frame
-- below it crossed from trace to trace as a cdata object, allocated for
-- every batch (every call, for a caller waiting for each result).
local function wait_batch(s)
    local msgs, go_on = s:wait_more()
    if msgs ~= nil then link(msgs) end
    return go_on
end

local function start(rec, m, _n, ...)
    C.isle_msg_free(m) -- the arguments are decoded: the handler may now take its time
    return run_job(rec, ...)
end

-- In a capped isle the arguments are the job's: decoded under the user
-- limit (after a collection, a second time), and a call whose arguments do
-- not fit fails with `memory`.
-- (Callers switch to user mode and call pcall(get_values, dec, m) themselves:
-- a wrapper returning pcall's results kept the runner loop from compiling.)
local get_values = codec.get_values

-- (The retry is told apart by the function it goes through, not by a field
-- set on the way: a store of nil to a record on the hot path of these
-- vararg tail calls made both LuaJITs' compiled code write the key's string
-- into an unrelated upvalue of the user's handler.)
local start_retry

-- The decoder set on message `m` again, at its arguments (its target was
-- decoded already): what a retry after a collection decodes.
local function rewind_args(m)
    local dec = runtime.dec
    dec:set(m.data, m.len)
    dec:decode()
    return dec
end

local function args_failed(rec, m, e, retried)
    if e ~= OOM then
        C.isle_msg_free(m)
        error(e, 0)
    end
    collect()
    if not retried then
        local dec = rewind_args(m)
        user_mode()
        return start_retry(rec, m, pcall(get_values, dec, m))
    end
    C.isle_msg_free(m)
    return complete(rec, false, errors.new("memory", "the call's arguments do not fit in the memory_limit of "
        .. isle_label))
end

local function start_capped(rec, m, ok, ...)
    core_mode()
    if ok then return start(rec, m, ...) end
    return args_failed(rec, m, (...), false)
end

start_retry = function(rec, m, ok, ...)
    core_mode()
    if ok then return start(rec, m, ...) end
    return args_failed(rec, m, (...), true)
end

local function call_post(name, ...)
    return resolve_global(name)(...)
end

local function run_post(runner, m, name, _n, ...)
    C.isle_msg_free(m) -- decoded tokens hold references of their own
    if capped then user_mode() end
    runner.user = true
    local ok, e = xpcall(call_post, on_error, name, ...)
    runner.user = false
    if capped then core_mode() end
    if not ok then
        if e == OOM then
            collect()
            e = memory_error()
        end
        report(e, runner)
    end
end

local post_retry

local function post_args_failed(runner, m, name, e, retried)
    if e ~= OOM then
        C.isle_msg_free(m)
        error(e, 0)
    end
    collect()
    if not retried then
        local dec = rewind_args(m)
        user_mode()
        return post_retry(runner, m, name, pcall(get_values, dec, m))
    end
    C.isle_msg_free(m)
    report(errors.new("memory", "the post's arguments do not fit in the memory_limit of " .. isle_label), runner)
end

-- (Arguments decoded under the user limit: see start_capped.)
local function run_post_capped(runner, m, name, ok, ...)
    core_mode()
    if ok then return run_post(runner, m, name, ...) end
    return post_args_failed(runner, m, name, (...), false)
end

post_retry = function(runner, m, name, ok, ...)
    core_mode()
    if ok then return run_post(runner, m, name, ...) end
    return post_args_failed(runner, m, name, (...), true)
end


-- User callbacks the loop starts as jobs of their own (timers, isle.go,
-- on_done): rec.fn(rec.args...). Their errors have nobody to go to but
-- isle.on_error; being stopped (a close with cancel) is not an error.
local function call_user(rec)
    local a = rec.args
    if a then return rec.fn(unpack(a, 1, a.n)) end
    return rec.fn()
end

local function run_user(rec)
    if capped then user_mode() end
    rec.user = true
    local ok, e = xpcall(call_user, on_error, rec)
    rec.user = false
    if capped then core_mode() end
    if not ok and e == OOM then
        collect()
        e = memory_error()
    end
    if not ok and not (rec.stop and errors.is(e) and e.code == rec.stop) then
        runtime.report(describe(e, rec), rec.what)
    end
    interrupt.job_ended(rec)
end


-- What h:stats() shows for a running job: "eval", "exec" or "call <name>"
-- (made once per name: the label is copied into the task on every start).
local LABEL = { [EVAL] = "eval", [EXEC] = "exec" }
local call_labels, call_label_count = {}, 0
local function call_label(name)
    local l = call_labels[name]
    if l == nil then
        if call_label_count >= 256 then call_labels, call_label_count = {}, 0 end
        l = "call " .. tostring(name)
        call_labels[name] = l
        call_label_count = call_label_count + 1
    end
    return l
end

-- A job's record (its task, target, the marks interrupt.lua reads) costs
-- a table with a hash part, garbage once the job ends, and the collections
-- that garbage brings were most of a call's cost in the isle. A record
-- whose job never yielded is known to nobody once the job has ended, so it
-- is kept here for the next call.
local spare_rec = nil

local function run_message(s, runner, m)
    local t = m.task
    if t ~= nil then m.task = nil end -- the job takes over the message's reference
    C.isle_sig_hold(s.sig, -1)
    if C.isle_close_mode(self_ptr) ~= 0 then
        -- Closed with cancel: what is still queued ends CLOSED without running.
        if t ~= nil then
            if C.isle_task_start(t, s.sig, nil) ~= 0 then
                C.isle_task_complete(t, ISLE_TASK_CLOSED, nil, 0)
            end
            C.isle_task_release(t)
        end
        return C.isle_msg_free(m)
    end
    -- (Decoded whole before any user code runs: the decoder is shared.)
    local dec = decoder(m.data, tonumber(m.len))
    local target = dec:decode()
    local flags = m.flags
    if t ~= nil then
        local kind = m.kind
        local label = LABEL[kind]
        if kind == proto.CALL then label = call_label(band(flags, F_OPTIONS) ~= 0 and target[1] or target) end
        if C.isle_task_start(t, s.sig, label) == 0 then
            C.isle_task_release(t) -- cancelled while queued: it has ended already
            return C.isle_msg_free(m)
        end
    end
    if t == nil and flags == 0 and m.kind == POST then
        -- A plain post: no task, no options; the runner's own record serves.
        runner.stop = nil -- stops and interrupts are per message
        s:enter(runner)
        if capped then
            user_mode()
            return run_post_capped(runner, m, target, pcall(get_values, dec, m))
        end
        return run_post(runner, m, target, codec.get_values(dec, m))
    end
    -- The task slot goes into the record as its address, a number: a
    -- pointer kept in a table is a cdata object, allocated for every call
    -- (complete and interrupt.job_stop_reason cast it back).
    local task = t ~= nil and tonumber(ffi.cast("uintptr_t", t)) or nil
    local rec = spare_rec
    if rec ~= nil then
        spare_rec = nil
        rec.task, rec.kind, rec.target, rec.co, rec.flags = task, m.kind, target, runner.co, flags
    else
        rec = { task = task, kind = m.kind, target = target, co = runner.co, user = false, flags = flags,
                finished = false, stop = false }
    end
    if band(flags, F_OPTIONS) ~= 0 then -- { target, options } from h:with{...}
        local o = codec.restore(target[2], m)
        rec.target = target[1]
        if o.token then rec.token = PTRS[o.token]; rec.token_ref = o.token end
    end
    s:enter(rec)
    if capped then
        user_mode()
        start_capped(rec, m, pcall(get_values, dec, m))
    else
        start(rec, m, codec.get_values(dec, m))
    end
    s:enter(runner)
    if rec.finished and not rec.yielded then
        -- Never handed to the loop (the job did not yield: sched.lua marks
        -- a record it parks), so nothing else holds it: the next job's.
        -- (Keys it lacks are not stored to, not even nil: a new key can make
        -- LuaJIT rehash the table, for every call.)
        rec.task, rec.target = nil, nil
        if rec.token ~= nil then rec.token, rec.token_ref = nil, nil end
        if rec.on_interrupt ~= nil then rec.on_interrupt = nil end
        rec.user, rec.finished, rec.stop = false, false, false
        spare_rec = rec
    end
end

local function run_queue(runner)
    local s = runtime.sched
    while true do
        if queue[0] == nil then
            local go_on = wait_batch(s)
            if queue[1] ~= nil then hold_batch(s.sig) end -- (read where used, never kept in a variable)
            if not go_on then break end
        end
        local m = queue[0]
        local rest = m.next
        queue[0] = rest
        if rest == nil then queue[1] = nil end
        m.next = nil
        run_message(s, runner, m)
    end
end

local function flush(s)
    while queue[0] ~= nil do s:spawn(run_queue, {}) end
end

-- Pools (isle.pool): an isle of a pool runs one feeder, a job that takes
-- the next message from the pool's queue only when the last one it took
-- has ended (a job that sleeps or awaits keeps its isle busy for the
-- pool), and runs it as a runner runs one from the mailbox. It begins once
-- init has run, and ends when the queue is closed and empty (or is empty
-- while the isle closes with cancel), closing the isle's mailbox.
local function feed(frec)
    local s = runtime.sched
    local init = frec.init
    frec.init = nil
    if init.ok == nil then pcall(runtime.wait_task, init.task, -1) end -- init may sleep
    if init.ok ~= true then return end
    local take = require("isle.pool").take
    local the_pool = frec.pool
    while true do
        local m = take(the_pool, self_ptr)
        -- A wait resumed in the user's mode (the loop's rule for parked
        -- jobs): what follows is the worker's own bookkeeping.
        if capped then core_mode() end
        if m == nil then break end
        C.isle_sig_hold(s.sig, 1) -- run_message counts it out of `queued`
        run_message(s, frec, m)
    end
    frec.pool = nil
    -- The pool is closed (or this isle closes with cancel): the isle has
    -- nothing more to do, and ends once its jobs have, whether or not its
    -- owner's handle is still around (a collected pool's may not be yet).
    s:close()
end

local function queued() return queue[0] ~= nil end

-- Takes ownership of a batch of messages from the mailbox; the loop starts
-- them (flush) at the end of its turn.
local function dispatch(_s, msgs)
    enqueue(msgs)
end

-- Boot ------------------------------------------------------------------------

local function run_init(rec)
    local spec = rec.spec
    local function init(...)
        local f
        if spec.init_code then
            f = compile(spec.init_code, "=init", spec.init_wrapped, spec.init_instrument, nil, true)
        elseif spec.init_src then
            f = exec_function(spec.init_src, true)
        elseif spec.init_fn then
            f = compile(spec.init_fn, "=init", nil, nil, true, true)
        else
            return
        end
        return f(...)
    end
    local a = rec.args
    if capped then user_mode() end
    rec.user = true -- complete clears it
    local ok, e = xpcall(init, on_error, unpack(a, 1, a.n))
    -- Kept no longer than init runs: the record stays (on_idle, a pool's
    -- feeder read rec.ok), what it was started with need not.
    rec.spec, rec.args = nil, nil
    if ok then
        complete(rec, true)
    else
        complete(rec, false, e)
    end
    rec.ok = ok
end


-- With a memory_limit: from here on the state is capped (it booted in mode
-- OFF). Returns an error if the limit leaves no room for a job.
local function cap_state(s)
    mem = C.isle_mem_of(self_ptr)
    local limit = tonumber(C.isle_mem_limit(mem))
    if limit == 0 then return nil end
    collectgarbage("collect")
    local used = tonumber(C.isle_mem_used(mem))
    local least = tonumber(C.isle_mem_minimum(used))
    if limit < least then
        return errors.new("memory", "isle.spawn: memory_limit " .. limit .. " is too small: the isle holds "
            .. used .. " bytes once started; it needs a memory_limit of at least " .. least .. " bytes")
    end
    capped = true
    runtime.mem = mem
    oom_message = "not enough memory (the job reached the memory_limit of " .. isle_label .. ", "
        .. limit .. " bytes)"
    s.enter_user, s.leave_user = user_mode, core_mode
    interrupt.on_memory(collect_if_wanted)
    C.isle_mem_collected(mem) -- the first mark
    core_mode()
    return nil
end

-- Runs the loop until the isle ends (the end of worker.main).
local function serve(s)
    local ok, err = pcall(s.run, s)
    if not ok then
        -- The loop itself failed (a bug, or out of memory): what it had
        -- queued ends CLOSED here; the core ends the jobs that were running
        -- (isle_sig_fail_running) and whatever is left in the mailbox.
        -- Closed first, so that whoever learns of an ended task finds the
        -- isle closed too and can queue no more. Their token watches and
        -- the subscriptions of their waits are taken back here.
        C.isle_stop(self_ptr, 0)
        for r in next, watching do unwatch(r) end
        s:abandon()
        while queue[0] ~= nil do
            local m = queue[0]
            queue[0] = m.next
            local t = m.task
            if t ~= nil then
                m.task = nil
                C.isle_task_complete(t, ISLE_TASK_CLOSED, nil, 0)
                C.isle_task_release(t)
            end
            C.isle_msg_free(m)
        end
        queue[1] = nil
        error(err, 0)
    end
end

-- isle.loaders (load, loadstring, loadfile, dofile and require of Lua files
-- compiled with checkpoints) in G now, made the first time one of them is
-- called: an isle that loads no code of its own does not keep them (~5 KiB).
-- The plain loaders are taken here, before user code can change the globals.
local function install_loaders(G)
    local plain_load, plain_loadstring, plain_loadfile = G.load, G.loadstring, G.loadfile
    local require = require -- the state's own, whatever user code does to the global
    local made
    local function get(i)
        if not made then made = { require("isle.loaders").make(G, plain_load, plain_loadstring, plain_loadfile) } end
        return made[i]
    end
    G.load = function(...) return get(1)(...) end
    G.loadstring = function(...) return get(2)(...) end
    G.loadfile = function(...) return get(3)(...) end
    G.dofile = function(...) return get(4)(...) end
    -- package.loaders: preload, isle's own bytecode, then Lua files (3).
    package.loaders[3] = function(...) return get(5)(...) end
end

function worker.main(addr)
    worker.main = nil -- run once per state
    self_ptr = ffi.cast("isle*", addr)
    runtime.self_ptr = self_ptr
    local id = tonumber(C.isle_id(self_ptr))
    local name = ffi.string(C.isle_name(self_ptr))
    isle_label = "isle " .. id .. (name ~= "" and (" '" .. name .. "'") or "")
    runtime.label = isle_label

    local init_failed, rec = false, nil
    local function on_idle(sl)
        if rec.ok == false and not init_failed then
            -- A failed init ends the isle: the spawner closes it.
            init_failed = true
            sl:close()
        end
        if flagp[0] ~= 0 or interrupt.take_missed() then
            -- No job runs here: settle what the flag was raised for (or
            -- what a job's checkpoint lowered it for without its being its own).
            flagp[0] = 0
            if capped then collect_if_wanted() end
            sl:wake_stopped(interrupt.job_stop_reason)
            if C.isle_sig_pending(sl.sig) > 0 then flagp[0] = 1 end
        end
    end
    local s = sched.new(C.isle_mbox_of(self_ptr), C.isle_sig_of(self_ptr), {
        on_message = dispatch, flush = flush, queued = queued, on_idle = on_idle,
        run_user = run_user, resumed = interrupt.resumed,
    })
    runtime.sched = s
    interrupt.bind(s.sig, C.isle_state_intr(self_ptr))
    interrupt.install_hook()
    interrupt.guard_coroutines(coroutine)
    flagp = interrupt.pointers()
    interrupt.guard_modules(package)

    local dec = runtime.dec
    local boot = C.isle_boot(self_ptr) -- kept by the isle, with its references
    dec:set(boot.data, boot.len)
    local spec = dec:decode()
    local args = pack(select(2, codec.get_values(dec, boot)))
    local the_pool -- an isle of a pool: the pool comes before init's arguments
    if spec.pool then
        the_pool = args[1]
        args = pack(unpack(args, 2, args.n))
    end
    -- The sandbox takes the plain loaders as it loads: before isle.loaders
    -- replaces them, and before any user code has run.
    if spec.sandbox then sandbox = require("isle.sandbox") end
    if spec.instrument_loads then install_loaders(_G) end
    libs.apply(spec.libs, _G)
    if spec.sandbox then
        env = sandbox.install(spec.sandbox, spec.libs, spec.instrument_loads)
        G = env
    end

    local init_task = C.isle_init_task(self_ptr)
    C.isle_task_start(init_task, s.sig, "init")
    rec = { task = init_task, borrowed = true, spec = spec, args = args }
    local too_small = cap_state(s)
    if too_small then return complete(rec, false, too_small) end
    -- Init may sleep or await: the loop serves it like any other job.
    s:spawn(run_init, rec)
    if rec.ok == false then return end
    if the_pool then s:spawn(feed, { pool = the_pool, init = rec }) end
    -- A tail call: main's frame goes, and with it (worker.main is let go
    -- above) the code that boots, which an idle isle would keep for nothing.
    return serve(s)
end

return worker
