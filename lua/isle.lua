-- isle: isolated LuaJIT states on their own threads.
--
--   local isle = require("isle")
--   local h = isle.spawn{ init = function() function add(a, b) return a + b end end }
--   print(h:call("add", 1, 2))   --> 3
--
-- See docs/API.md for every function and its errors.
local ffi = require("ffi")
local string = require("string")
local os = require("os")
local runtime = require("isle.runtime")
local codec = require("isle.codec")
local errors = require("isle.errors")
local handle = require("isle.handle")
local task = require("isle.task")
local libs = require("isle.libs")
local interrupt = require("isle.interrupt")
local token = require("isle.token")
local chunks = require("isle.chunks")
local wire = require("isle.wire")
local sandbox = require("isle.sandbox")
local table = require("table")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local type, error, tostring, tonumber, select, pcall, ipairs, next, setmetatable =
    type, error, tostring, tonumber, select, pcall, ipairs, next, setmetatable

local isle = { _VERSION = "0.1.0" }

isle.Handle = handle.Handle
isle.Task = task.Task

-- Directories this module and the FFI layer were loaded from: put in front
-- of package.path inside every isle so that require("isle") works there
-- however the host found it.
local function module_dirs()
    local dirs = {}
    for _, mod in ipairs({ "isle", "isle.cdef" }) do
        local file = package.searchpath(mod, package.path)
        if file then
            local dir = file:match("^(.*)/[^/]*$") or "."
            if mod == "isle.cdef" then dir = dir:match("^(.*)/isle$") or dir end
            dirs[#dirs + 1] = dir .. "/?.lua;" .. dir .. "/?/init.lua"
        end
    end
    return table.concat(dirs, ";")
end
local isle_path = module_dirs()

-- isle's own modules, compiled once per process and handed to every new
-- isle as stripped bytecode (csrc/preload.c): an isle then starts without
-- reading or parsing any of isle's source.
local MODULES = { "isle", "isle.cdef", "isle.codec", "isle.errors", "isle.runtime", "isle.sched",
    "isle.interrupt", "isle.libs", "isle.proto", "isle.worker", "isle.handle", "isle.task",
    "isle.token", "isle.chunks", "isle.instrument", "isle.fnsource", "isle.loaders", "isle.wire",
    "isle.combine", "isle.hub", "isle.luv", "isle.state", "isle.channel", "isle.buffer", "isle.sandbox", "isle.pool",
    "isle.sched_wait", "isle.codec_check", "isle.interrupt_api",
    "isle.errors_describe", "isle.lazy" }
local function preload_modules()
    if C.isle_preload_count() > 0 then return end
    for _, name in ipairs(MODULES) do
        local file = package.searchpath(name, package.path)
        local f = file and loadfile(file)
        if f then
            -- ISLE_DEBUG keeps line numbers in isle's own frames (tracebacks, profiles).
            local bc = string.dump(f, os.getenv("ISLE_DEBUG") == nil)
            C.isle_preload_set(name, bc, #bc)
        end
    end
end

-- For C hosts (csrc/host.c), which have no Lua state of their own: they
-- run this once in a scratch state before their first spawn.
isle._preload = preload_modules

local function bad_opt(name, what, got)
    error("isle.spawn: option '" .. name .. "' must be " .. what .. " (got " .. got .. ")", 3)
end

local function check_libs(spec)
    if spec == nil then return true end
    if spec == true or spec == false then return spec end
    if type(spec) ~= "table" then bad_opt("libs", "true, false or a list of library names", type(spec)) end
    local list = {}
    for i, name in ipairs(spec) do
        if type(name) ~= "string" then bad_opt("libs", "a list of names", type(name) .. " at [" .. i .. "]") end
        if not libs.ALWAYS[name] and not libs.OPTIONAL[name] then
            error("isle.spawn: unknown library '" .. name .. "' in option 'libs'", 3)
        end
        list[#list + 1] = name
    end
    return list
end

-- memory_limit: bytes, a positive integer (csrc/mem.c, docs/sandbox.md). An
-- isle spawned by a capped isle must have one: it is charged to the
-- spawner's while it lives, so a cap cannot be escaped by spawning.
local function check_memory_limit(v)
    if v == nil then
        if runtime.mem ~= nil then
            error("isle.spawn: an isle spawned by a capped isle or state needs a memory_limit of its own "
                .. "(charged to the spawner's while the new isle lives)", 3)
        end
        return nil
    end
    if type(v) ~= "number" or not (v >= 1) or v % 1 ~= 0 or v > 2 ^ 52 then
        error("isle.spawn: option 'memory_limit' must be a positive integer number of bytes (got "
            .. (type(v) == "number" and tostring(v) or type(v)) .. ")", 3)
    end
    return v
end

-- Starts an isle. Raises on bad options and on init failure (with the
-- isle-side traceback); the isle's thread is gone by then.
-- `pool`: the pool this isle serves (isle.pool), carried to its feeder
-- ahead of init's arguments.
local function spawn(opts, pool)
    if opts == nil then opts = {} end
    if type(opts) ~= "table" then
        error("bad argument #1 to 'spawn' (table or nil expected, got " .. type(opts) .. ")", 2)
    end
    for k in next, opts do
        if k ~= "init" and k ~= "args" and k ~= "name" and k ~= "libs" and k ~= "capacity"
            and k ~= "instrument" and k ~= "instrument_loads" and k ~= "memory_limit" and k ~= "sandbox" then
            error("isle.spawn: unknown option '" .. tostring(k) .. "'", 2)
        end
    end
    local spec = { libs = check_libs(opts.libs), pool = pool and true or nil }
    -- The sandbox (isle.sandbox): inherited by what a sandboxed state spawns.
    spec.sandbox = sandbox.option(opts.sandbox, "isle.spawn", 2)
    sandbox.check_instrument(opts, "isle.spawn", 2)
    if spec.sandbox then sandbox.check_libs(spec.libs, "isle.spawn", 2) end
    if opts.instrument ~= nil then
        if type(opts.instrument) ~= "boolean" then bad_opt("instrument", "a boolean", type(opts.instrument)) end
    end
    if opts.instrument_loads ~= nil and type(opts.instrument_loads) ~= "boolean" then
        bad_opt("instrument_loads", "a boolean", type(opts.instrument_loads))
    end
    -- Chunks the isle loads itself (load, require...) get checkpoints unless
    -- turned off, alone or with everything else (instrument = false).
    spec.instrument_loads = opts.instrument ~= false and opts.instrument_loads ~= false
    local init = opts.init
    if type(init) == "string" then
        if opts.instrument == false then
            spec.init_code = init
        else
            spec.init_code, spec.init_wrapped = chunks.prepare(init)
        end
    elseif type(init) == "function" then
        local ok, e = pcall(codec.check_function, init, "init")
        if not ok then error(errors.from_codec(e) or e, 2) end
        local src = opts.instrument ~= false and chunks.prepare_function(init)
        if src then spec.init_src = src else spec.init_fn = string.dump(init) end
    elseif init ~= nil then
        bad_opt("init", "a function without upvalues or a chunk string", type(init))
    end
    local args = opts.args
    if args ~= nil and type(args) ~= "table" then bad_opt("args", "a list", type(args)) end
    local name = opts.name
    if name ~= nil and (type(name) ~= "string" or name == "") then bad_opt("name", "a non-empty string", type(name)) end
    local capacity = opts.capacity or 1024
    if type(capacity) ~= "number" or capacity < 1 or capacity % 1 ~= 0 or capacity > 2 ^ 31 then
        bad_opt("capacity", "a positive integer", tostring(capacity))
    end
    local memory_limit = check_memory_limit(opts.memory_limit)

    preload_modules()
    local enc = codec.reset(runtime.enc)
    enc:encode(spec)
    local nargs = args and (args.n or #args) or 0
    local ok, e
    if pool then
        ok, e = pcall(codec.put_values, enc, "args", 1, nargs + 1, pool, unpack(args or {}, 1, nargs))
    else
        ok, e = pcall(codec.put_values, enc, "args", 1, nargs, unpack(args or {}, 1, nargs))
    end
    if not ok then
        codec.reset(enc)
        error(errors.from_codec(e) or e, 2)
    end
    local boot, boot_len = enc:ref()
    -- Tokens among the arguments travel with the boot bytes (isle.wire):
    -- the isle holds them from here, until it is freed.
    local nrefs, refs = wire.refs()
    local cfg = ffi.new("isle_config", {
        name = name, capacity = capacity,
        path = isle_path .. ";" .. package.path, cpath = package.cpath,
        boot = boot, boot_len = boot_len, boot_refs = refs, boot_nrefs = nrefs,
        instrument = opts.instrument == false and 0 or 1,
        memory_limit = memory_limit or 0, charge = runtime.mem,
    })
    local errp = ffi.new("int[1]")
    local p = C.isle_spawn(cfg, errp)
    codec.reset(enc) -- the isle, if any, took its references
    if p == nil then
        if errp[0] == C.ISLE_EINVAL then
            error("isle.spawn: the name '" .. name .. "' is in use by a live isle", 2)
        end
        if runtime.mem ~= nil then
            error(errors.new("memory", "cannot start an isle: its memory_limit of " .. memory_limit
                .. " bytes does not fit in the memory_limit of " .. runtime.label .. " ("
                .. tonumber(C.isle_mem_used(runtime.mem))
                .. " of " .. tonumber(C.isle_mem_limit(runtime.mem)) .. " bytes in use), or out of memory"), 2)
        end
        error(errors.new("memory", "cannot start an isle (out of memory or threads)"), 2)
    end
    local init_task = C.isle_init_task(p)
    runtime.wait_task(init_task, -1)
    local started, err = task.outcome(init_task)
    if not started then
        C.isle_close(p, 1)
        C.isle_release(p)
        error(err, 2)
    end
    return handle.wrap(p, true)
end

function isle.spawn(opts) return spawn(opts) end

-- Pools (lua/isle/pool.lua): N isles serving one bounded queue of calls.
function isle.pool(opts) return require("isle.pool").new(opts, spawn) end
function isle.pool_ref(key) return require("isle.pool").ref(key) end

-- A non-owning handle to a live isle by id or name; nil, err if none.
function isle.lookup(key)
    local p
    if type(key) == "number" then
        p = C.isle_lookup_id(key)
    elseif type(key) == "string" then
        p = C.isle_lookup_name(key)
    else
        error("bad argument #1 to 'lookup' (number or string expected, got " .. type(key) .. ")", 2)
    end
    if p == nil then return nil, errors.new("unknown", "no live isle " .. tostring(key)) end
    return handle.wrap(p, false)
end

-- Inside an isle: a non-owning handle to itself; nil in a host state.
function isle.self()
    local p = runtime.self_ptr
    if p == nil then return nil end
    C.isle_retain(p)
    return handle.wrap(p, false)
end

-- Inside an isle: its id; nil in a host state.
function isle.id()
    local p = runtime.self_ptr
    if p == nil then return nil end
    return tonumber(C.isle_id(p))
end

-- Inside an isle's job: let the loop serve others for `s` seconds.
-- Elsewhere: blocks the thread.
function isle.sleep(s)
    if type(s) ~= "number" or s ~= s then
        error("bad argument #1 to 'sleep' (number expected, got " .. type(s) .. ")", 2)
    end
    if s < 0 then s = 0 end
    local sc = runtime.sched
    if sc and sc:can_yield() then
        local why = sc:sleep(s)
        if why ~= "timeout" then error(errors.new(why, "sleep ended: " .. why), 2) end
        return
    end
    local t = C.isle_task_new()
    if runtime.sandbox then
        -- Stoppable (runtime.wait_task waits in slices in a sandbox); the
        -- slot is let go even if a stop raises.
        runtime.wait_task(ffi.gc(t, C.isle_task_release), s)
        return
    end
    C.isle_task_wait(t, s)
    C.isle_task_release(t)
end

-- Cancellation and interrupts (docs/jit-safety.md) -----------------------------

if runtime.self_ptr == nil then interrupt.bind_host() end

isle.Token = token.Token

-- A cancellation token, shared by any number of calls (h:with{token = t}).
function isle.token() return token.new() end

-- A bounded many-producer many-consumer channel of values (isle.channel).
function isle.channel(capacity) return require("isle.channel").new(capacity) end

-- Shared buffers (isle.buffer, docs/buffers.md): C memory every state it is
-- passed to sees at the same address; atomics on its integer elements.
function isle.buffer(a, b) return require("isle.buffer").new(a, b) end
function isle.atomic_add(buf, i, delta) return require("isle.buffer").atomic_add(buf, i, delta) end
function isle.atomic_cas(buf, i, old, new) return require("isle.buffer").atomic_cas(buf, i, old, new) end
function isle.atomic_load(buf, i) return require("isle.buffer").atomic_load(buf, i) end
function isle.atomic_store(buf, i, v) return require("isle.buffer").atomic_store(buf, i, v) end

-- An explicit checkpoint for hot loops: costs a load and a store when
-- nothing is pending; raises (or runs the on_interrupt handler) otherwise.
isle.checkpoint = interrupt.checkpoint

function isle.interrupt_id(co) return interrupt.interrupt_id(co) end
function isle.interrupt(id, flag) return interrupt.interrupt(id, flag) end
function isle.on_interrupt(a, b) return interrupt.on_interrupt(a, b) end

-- Loads a chunk with checkpoints at every loop and function entry, bound
-- to this state's flag. Returns the function, or nil, err (like load).
function isle.load(src, chunkname)
    if type(src) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(src) .. ")", 2)
    end
    if chunkname ~= nil and type(chunkname) ~= "string" then
        error("bad argument #2 to 'load' (string or nil expected, got " .. type(chunkname) .. ")", 2)
    end
    local factory, err = require("isle.instrument").load(src, chunkname or "=(isle.load)")
    if not factory then return nil, err end
    return factory(interrupt.pointers())
end

-- How long, in all, a closing state waits for the isles it still owns
-- (handle.lua, "Teardown"). Returns the previous value.
function isle.teardown_timeout(s)
    local old = handle.teardown_timeout
    if s ~= nil then
        if type(s) ~= "number" or not (s >= 0) then
            error("bad argument #1 to 'teardown_timeout' (number of seconds >= 0 expected, got " .. tostring(s) .. ")", 2)
        end
        handle.teardown_timeout = s
    end
    return old
end

-- Async inside an isle: timers, go coroutines, combined tasks ---------------------

local function need_loop(fname)
    local s = runtime.sched
    if not s then
        error("isle." .. fname .. ": only inside an isle (a host state runs its own loop: use its "
            .. "timers, and the hub for tasks, see docs/hub.md)", 3)
    end
    return s
end

local function pack(...) return { n = select("#", ...), ... } end

local Timer = {}
Timer.__index = Timer
isle.Timer = Timer

-- Stops a pending timer (and an `every` for good). true if it was pending.
function Timer:cancel()
    return self.sched:cancel_timer(self.entry)
end

isle.timer = {}

-- A timer first due `first` seconds from now, then every `interval` (nil:
-- once). `ok` says whether `first` was valid, `want` what it must be.
local function new_timer(fname, first, ok, want, interval, fn, ...)
    local s = need_loop(fname)
    if not ok then
        error("bad argument #1 to '" .. fname .. "' (number of seconds " .. want .. " expected, got "
            .. tostring(first) .. ")", 3)
    end
    if type(fn) ~= "function" then
        error("bad argument #2 to '" .. fname .. "' (function expected, got " .. type(fn) .. ")", 3)
    end
    return setmetatable({ sched = s, entry = s:timer(C.isle_now() + first, interval, fn, pack(...)) }, Timer)
end

-- fn(...) runs `delay` seconds from now on this isle's thread, in a
-- coroutine of its own (it may sleep and call other isles).
function isle.timer.at(delay, fn, ...)
    local ok = type(delay) == "number" and delay >= 0
    return new_timer("timer.at", delay, ok, ">= 0", nil, fn, ...)
end

-- fn(...) runs every `interval` seconds (counted from the deadlines, never
-- in a burst to catch up), until cancelled or the isle closes.
function isle.timer.every(interval, fn, ...)
    local ok = type(interval) == "number" and interval > 0
    return new_timer("timer.every", interval, ok, "> 0", ok and interval or nil, fn, ...)
end

-- Starts fn(...) in a coroutine on this isle's loop and returns at once.
function isle.go(fn, ...)
    local s = need_loop("go")
    if type(fn) ~= "function" then
        error("bad argument #1 to 'go' (function expected, got " .. type(fn) .. ")", 2)
    end
    s:go(fn, pack(...), "a go coroutine")
    return true
end

function isle.all(tasks) return require("isle.combine").all(tasks) end
function isle.first(tasks) return require("isle.combine").first(tasks) end

-- isle.on_error(fn): where errors that have nobody to receive them go
-- (timers, go coroutines, posts, on_done callbacks) in this state:
-- fn(err, what). nil restores the default (stderr with the state's name and
-- the traceback). An error never stops the loop or escapes hub:poll().
function isle.on_error(fn)
    if fn ~= nil and type(fn) ~= "function" then
        error("bad argument #1 to 'on_error' (function or nil expected, got " .. type(fn) .. ")", 2)
    end
    runtime.on_error = fn
end

-- The state's hub (docs/hub.md): how a host's event loop runs on_done
-- callbacks and resumes awaiting coroutines. Inside an isle its loop does.
function isle.hub()
    if runtime.sched then
        error("isle.hub() is for host states: inside an isle its loop runs on_done callbacks and awaits", 2)
    end
    return runtime.driver()
end

-- Shared states (lua-mtstates' model, docs/states.md): a state with no
-- thread of its own whose callback any thread runs under its lock. The
-- module loads on first use.
local function shared_states()
    local st = require("isle.state")
    st.configure(preload_modules, function() return isle_path .. ";" .. package.path end)
    return st
end
function isle.state(...) return shared_states().new(...) end
function isle.state_ref(key) return shared_states().ref(key) end
function isle.singleton(...) return shared_states().singleton(...) end

isle.now = function() return C.isle_now() end
isle.is_error = errors.is
isle.error = errors.new
isle.live_count = function() return C.isle_live_count() end

-- Inside lua-nginx-module, waits yield to nginx instead of blocking the
-- worker (lua/isle/ngx.lua). Isles never run inside nginx's own states.
if not runtime.sched and type(package.loaded.ngx) == "table" and type(package.loaded.ngx.get_phase) == "function" then
    require("isle.ngx").install()
end

return isle
