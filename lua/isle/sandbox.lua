-- The sandbox (option `sandbox` of isle.spawn and isle.state): user code in
-- a sandboxed state runs in an environment of its own, a fresh globals table
-- with safe copies of the libraries, and never gets a path to isle's own
-- machinery, which shares the state and keeps its FFI. This module holds
-- both sides: the option as the creator checks it (M.option, inherited by
-- whatever a sandboxed state creates) and, inside the state, the
-- environment (M.install), the loaders it gives user code and the facade of
-- the `isle` module it sees. See docs/sandbox.md for what is blocked and why.
local string = require("string")
local table = require("table")
local math = require("math")
local bit = require("bit")
local os = require("os")
local io = require("io")
local coroutine = require("coroutine")
local debug = require("debug")
local runtime = require("isle.runtime")

local type, error, pcall, xpcall, select, tostring, tonumber, next, ipairs, unpack =
    type, error, pcall, xpcall, select, tostring, tonumber, next, ipairs, unpack
local rawget, rawset, setmetatable, setfenv = rawget, rawset, setmetatable, setfenv
local collectgarbage, gcinfo = collectgarbage, gcinfo
local package = require("package")
-- The plain loaders, taken before isle.loaders replaces the globals: a
-- sandboxed isle's worker loads this module at boot, before that. (Another
-- isle loads it only if its code requires isle, maybe after the globals
-- were replaced; there only the option checks run, never compile_text,
-- which serves the environment of M.install.)
local plain_load = load
-- Text only (mode "t"): the first-byte check of text_error is the rule,
-- this is the VM's own check behind it.
local function plain_loadstring(s, chunkname) return plain_load(s, chunkname, "t") end
local byte, find, sub, match, format, rep, gsub = string.byte, string.find, string.sub, string.match,
    string.format, string.rep, string.gsub
local concat = table.concat
local dgetmetatable = debug.getmetatable

local M = {}

local PREFIX = "isle sandbox: "

-- Modules a sandbox can never be granted: each is a way to the FFI, to C
-- memory or to isle's machinery. (string.buffer hands out raw pointers.)
local NEVER = { ffi = true, debug = true, jit = true, ["string.buffer"] = true }
local function never(name)
    return NEVER[name] or sub(name, 1, 4) == "jit." or (sub(name, 1, 5) == "isle." and name ~= "isle")
end
M.never = never

local FILES = { [false] = 0, read = 1, [true] = 2 }

-- The option as given to isle.spawn / isle.state / a pool: nil, false,
-- true, or { require = {names...}, files = false | "read" | true }.
-- Returns the normalized grant (a plain table: it travels in the spawn
-- spec) or nil. Inside a sandboxed state the grant is inherited: nil and
-- true mean the creator's own, false is refused, and a table may only
-- narrow it.
function M.option(v, fname, level)
    level = (level or 2) + 1
    local parent = runtime.sandbox
    local function bad(what)
        error(fname .. ": option 'sandbox' " .. what, level + 1)
    end
    if v == nil or v == true then
        if parent then
            return { require = parent.require, files = parent.files }
        end
        if v == nil then return nil end
        return { require = {}, files = false }
    end
    if v == false then
        if parent then bad("cannot be turned off by sandboxed code (what a sandboxed state creates is sandboxed too)") end
        return nil
    end
    if type(v) ~= "table" then bad("must be true, false or a table of grants (got " .. type(v) .. ")") end
    for k in next, v do
        if k ~= "require" and k ~= "files" then bad("has an unknown grant '" .. tostring(k) .. "' (grants: require, files)") end
    end
    local names = {}
    local req = v.require
    if req ~= nil then
        if type(req) ~= "table" then bad("grant 'require' must be a list of module names (got " .. type(req) .. ")") end
        for i, name in ipairs(req) do
            if type(name) ~= "string" or name == "" then
                bad("grant 'require' must be a list of module names (got " .. type(name) .. " at [" .. i .. "])")
            end
            if never(name) then bad("cannot grant require('" .. name .. "'): it reaches the FFI, C memory or isle's machinery") end
            names[#names + 1] = name
        end
    end
    local files = v.files
    if files == nil then files = false end
    if FILES[files] == nil then bad("grant 'files' must be false, \"read\" or true (got " .. tostring(files) .. ")") end
    if parent then
        local have = {}
        for _, n in ipairs(parent.require) do have[n] = true end
        for _, n in ipairs(names) do
            if not have[n] then bad("cannot grant require('" .. n .. "'): the sandboxed creator does not have it") end
        end
        if FILES[files] > FILES[parent.files] then
            bad("cannot grant files = " .. tostring(files) .. ": the sandboxed creator has files = " .. tostring(parent.files))
        end
    end
    return { require = names, files = files }
end

-- The libs option of a sandboxed state names which of the sandbox's safe
-- libraries are globals: never ffi, debug or jit.
function M.check_libs(libs, fname, level)
    if type(libs) ~= "table" then return end
    for _, name in ipairs(libs) do
        if name == "ffi" or name == "debug" or name == "jit" then
            error(fname .. ": library '" .. name .. "' cannot be given to a sandboxed state (option 'libs')", (level or 2) + 1)
        end
    end
end

-- Spawn options a sandboxed creator may not pass: without checkpoints,
-- code it starts could not be stopped once compiled.
function M.check_instrument(opts, fname, level)
    if runtime.sandbox and type(opts) == "table"
        and (opts.instrument == false or opts.instrument_loads == false) then
        error(fname .. ": sandboxed code cannot turn the instrumentation off (option '"
            .. (opts.instrument == false and "instrument" or "instrument_loads") .. "')", (level or 2) + 1)
    end
end

-- Text user code may not hold: the names of the instrumenter's checkpoint
-- variables (isle.instrument), which are a raw pointer to the state's flag
-- and its slow path. `wrapped`: the text was instrumented by its sender; the
-- checkpoints and the wrapper it inserted are the only places where the
-- names may appear (they are taken out before the search).
local CHECKPOINT, ENTRY, WRAP_PREFIX
local function strip_plain(s, what)
    local out, i = {}, 1
    while true do
        local a, b = find(s, what, i, true)
        if not a then break end
        out[#out + 1] = sub(s, i, a - 1)
        out[#out + 1] = " "
        i = b + 1
    end
    if i == 1 then return s end
    out[#out + 1] = sub(s, i)
    return concat(out)
end
function M.text_error(code, wrapped)
    if byte(code, 1) == 27 then
        return PREFIX .. "binary chunks (bytecode) cannot be loaded in a sandbox"
    end
    if not find(code, "__isle_", 1, true) then return nil end
    local s = code
    if wrapped then
        if not CHECKPOINT then
            local ins = require("isle.instrument")
            CHECKPOINT, ENTRY, WRAP_PREFIX = ins.CHECKPOINT, ins.ENTRY, ins.PREFIX
        end
        if sub(s, 1, #WRAP_PREFIX) == WRAP_PREFIX then s = sub(s, #WRAP_PREFIX + 1) end
        -- The full form first: the entry form (no store) is its beginning.
        s = strip_plain(strip_plain(s, CHECKPOINT), ENTRY)
        if not find(s, "__isle_", 1, true) then return nil end
    end
    return PREFIX .. "names starting with __isle_ are reserved for isle's checkpoints"
end

-- Inside a sandboxed state ------------------------------------------------------

local env         -- the sandbox's globals (nil outside a sandbox)
local instrumented_loads = true

-- An opaque number per object for tostring: addresses are not shown.
local ids, last_id = setmetatable({}, { __mode = "k" }), 0
local function safe_tostring(v)
    local s = tostring(v)
    local t = type(v)
    if t == "table" or t == "function" or t == "userdata" or t == "thread" or t == "cdata" then
        local kind = match(s, "^(.-): 0x%x+$") or match(s, "^(.-): builtin#%d+$")
        if kind then
            local id = ids[v]
            if not id then
                last_id = last_id + 1
                id = last_id
                ids[v] = id
            end
            return kind .. ": #" .. id
        end
    end
    return s
end

local function denied(what)
    return function() error(PREFIX .. what .. " is not allowed in a sandbox", 2) end
end

local function copy(t, skip)
    local c = {}
    for k, v in next, t do
        if not (skip and skip[k]) then c[k] = v end
    end
    return c
end

-- string.rep and string.format run in C, where no checkpoint can stop
-- them: their results are capped (format's widths are capped by LuaJIT
-- itself at 99), and format's %p (an address) is refused.
local REP_MAX = 256 * 1024 * 1024
local function rep_max()
    local mem = runtime.mem
    if mem ~= nil then
        local limit = tonumber(runtime.C.isle_mem_limit(mem))
        if limit > 0 and limit < REP_MAX then return limit end
    end
    return REP_MAX
end
local function safe_rep(s, n, sep)
    if type(n) == "number" and n > 1 then
        local len = #tostring(s)
        local total = len * n
        if sep ~= nil then total = total + #tostring(sep) * (n - 1) end
        if total > rep_max() then
            error(PREFIX .. "string.rep: a result of " .. format("%.0f", total) .. " bytes is more than the sandbox allows ("
                .. rep_max() .. ")", 2)
        end
    end
    if sep == nil then return rep(s, n) end
    return rep(s, n, sep)
end
local function safe_format(fmt, ...)
    if type(fmt) == "string" and find(fmt, "%", 1, true) then
        local f = gsub(fmt, "%%%%", "")
        if find(f, "%%[-+ #0]*%d*%.?%d*p") then error(PREFIX .. "string.format: %p (an address) is not allowed", 2) end
        local n = select("#", ...)
        local args = { ... }
        local changed = false
        for i = 1, n do
            local a = args[i]
            local ta = type(a)
            if ta ~= "string" and ta ~= "number" and ta ~= "nil" and ta ~= "boolean" then
                args[i] = safe_tostring(a)
                changed = true
            end
        end
        if changed then return format(fmt, unpack(args, 1, n)) end
    end
    return format(fmt, ...)
end

local function safe_string()
    local s = copy(string, { dump = true })
    s.rep, s.format, s.dump = safe_rep, safe_format, denied("string.dump")
    return s
end

-- Coroutines: user code resumes and yields only coroutines it made. The
-- job's own coroutine belongs to the loop (coroutine.running() returns it;
-- resuming it, or yielding it with values the loop does not expect, would
-- hand the machinery forged answers).
local function safe_coroutine()
    local lib = coroutine -- its resume/yield/wrap are interrupt-aware in an isle (isle.interrupt)
    local create, status, running = lib.create, lib.status, lib.running
    local resume, yield = lib.resume, lib.yield
    local mine = setmetatable({}, { __mode = "k" })
    local c = {}
    function c.create(f)
        if type(f) ~= "function" then error("bad argument #1 to 'create' (function expected)", 2) end
        local co = create(f)
        mine[co] = true
        return co
    end
    function c.resume(co, ...)
        if type(co) ~= "thread" then error("bad argument #1 to 'resume' (coroutine expected)", 2) end
        if not mine[co] then
            error(PREFIX .. "coroutine.resume: only coroutines made by sandboxed code can be resumed", 2)
        end
        return resume(co, ...)
    end
    function c.yield(...)
        local co = running()
        if co == nil or not mine[co] then
            error(PREFIX .. "coroutine.yield: isle's own coroutines cannot be yielded (use isle.sleep or a coroutine of your own)", 2)
        end
        return yield(...)
    end
    local function wrap_result(ok, ...)
        if ok then return ... end
        error((...), 0)
    end
    function c.wrap(f)
        local co = c.create(f)
        return function(...) return wrap_result(resume(co, ...)) end
    end
    c.status, c.running, c.isyieldable = status, running, lib.isyieldable
    return c
end

local READ_MODES = { r = true, rb = true }
local function safe_io(files)
    local open, lines, iotype = io.open, io.lines, io.type
    local s = {}
    function s.open(path, mode)
        if mode ~= nil and type(mode) ~= "string" then error("bad argument #2 to 'open' (string expected)", 2) end
        if files ~= true and mode ~= nil and not READ_MODES[mode] then
            error(PREFIX .. "io.open: files may only be read here (mode '" .. mode .. "')", 2)
        end
        return open(path, mode)
    end
    function s.lines(path, ...)
        if path == nil then error(PREFIX .. "io.lines() reads the process's standard input: not allowed", 2) end
        return lines(path, ...)
    end
    s.type = iotype
    s.popen = denied("io.popen")
    return s
end

local function safe_os(files)
    local s = { clock = os.clock, date = os.date, time = os.time, difftime = os.difftime }
    s.exit, s.execute, s.getenv = denied("os.exit"), denied("os.execute"), denied("os.getenv")
    if files == true then
        s.remove, s.rename, s.tmpname = os.remove, os.rename, os.tmpname
    else
        s.remove, s.rename, s.tmpname = denied("os.remove"), denied("os.rename"), denied("os.tmpname")
    end
    s.setlocale = denied("os.setlocale")
    return s
end

-- Compiles text for user code, in `fenv`, with checkpoints unless the
-- state's loads are not instrumented. Returns the function or nil, err.
local function compile_text(src, chunkname, fenv, force_instrument, from_file)
    local e = M.text_error(src, false)
    if e then return nil, e end
    -- "@path" names a file: isle.fnsource reads it to recover a function's
    -- source when the function is sent. Only files this module read itself
    -- get such names (user code could name /dev/zero or /dev/stdin).
    if type(chunkname) == "string" and byte(chunkname, 1) == 64 and not from_file then
        chunkname = "=" .. sub(chunkname, 2)
    end
    if instrumented_loads or force_instrument then
        local out = require("isle.instrument").source(src)
        local factory = out and plain_loadstring(out, chunkname)
        if factory then
            setfenv(factory, fenv)
            return factory()(require("isle.interrupt").pointers())
        end
        -- Code without checkpoints could not be stopped once compiled.
        local f, err = plain_loadstring(src, chunkname)
        if not f then return nil, err end
        return nil, PREFIX .. "this chunk cannot be given checkpoints (isle.instrument), so it could not be "
            .. "stopped once compiled: not loaded"
    end
    local f, err = plain_loadstring(src, chunkname)
    if not f then return nil, err end
    setfenv(f, fenv)
    return f
end
M.compile_text = compile_text

local drain = require("isle.loaders").drain

local function safe_load(chunk, chunkname, mode, fenv)
    if type(chunk) == "function" then
        local ok, src = pcall(drain, chunk)
        if not ok then return nil, src end
        chunk = src
    end
    if type(chunk) ~= "string" then
        error("bad argument #1 to 'load' (string or function expected, got " .. type(chunk) .. ")", 2)
    end
    if mode ~= nil and mode ~= "t" and mode ~= "bt" then
        return nil, PREFIX .. "binary chunks (bytecode) cannot be loaded in a sandbox"
    end
    if fenv ~= nil and type(fenv) ~= "table" then
        error("bad argument #4 to 'load' (table expected, got " .. type(fenv) .. ")", 2)
    end
    return compile_text(chunk, chunkname or chunk, fenv or env)
end

local function read_file(path)
    local fh, err = io.open(path, "rb")
    if not fh then return nil, err end
    local src = fh:read("*a")
    fh:close()
    return src
end

local function safe_loadfile(path)
    if type(path) ~= "string" then error(PREFIX .. "loadfile needs a path (standard input is not allowed)", 2) end
    local src, err = read_file(path)
    if not src then return nil, "cannot open " .. path .. ": " .. tostring(err) end
    return compile_text(src, "@" .. path, env, nil, true)
end

-- require: the sandbox's own libraries, the `isle` facade, and the Lua
-- modules of the grant, found on package.path and compiled in the sandbox
-- (text only, never C modules), each once per state.
local function make_require(loaded, allowed)
    local LOADING = {}
    return function(name)
        if type(name) ~= "string" then error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2) end
        local v = loaded[name]
        if v == LOADING then error(PREFIX .. "require('" .. name .. "'): a loop of requires", 2) end
        if v ~= nil then return v end
        if never(name) or not allowed[name] then
            error(PREFIX .. "require('" .. name .. "') is not allowed (not in the sandbox's require grant)", 2)
        end
        local path, serr = package.searchpath(name, package.path)
        if not path then error("module '" .. name .. "' not found:" .. tostring(serr), 2) end
        local src, rerr = read_file(path)
        if not src then error("error loading module '" .. name .. "': " .. tostring(rerr), 2) end
        local f, cerr = compile_text(src, "@" .. path, env, nil, true)
        if not f then error("error loading module '" .. name .. "' from file '" .. path .. "':\n\t" .. tostring(cerr), 2) end
        loaded[name] = LOADING
        local ok, r = pcall(f, name)
        if not ok then
            loaded[name] = nil
            error(r, 0)
        end
        if r == nil then r = loaded[name] end
        if r == nil or r == LOADING then r = true end
        loaded[name] = r
        return r
    end
end

-- The `isle` module sandboxed code sees: the public API only, with what
-- reaches other isles by name or id refused.
local function facade()
    local isle = require("isle")
    local interrupt = require("isle.interrupt")
    local F = { _VERSION = isle._VERSION }
    for _, k in ipairs({ "spawn", "state", "self", "id", "sleep", "token", "channel", "checkpoint",
        "on_interrupt", "go", "all", "first", "now", "is_error", "error", "live_count" }) do
        F[k] = isle[k]
    end
    local function refused(what, why)
        return function() error(PREFIX .. what .. " is not available in a sandbox (" .. why .. ")", 2) end
    end
    -- isle.on_error: the handler runs where checkpoints may stop it (the
    -- job that reports the error is marked as running user code around
    -- it: worker.lua, "Where user code runs"), under the user's memory limit.
    local C = runtime.C
    local function current()
        local s = runtime.sched
        return s and s.current
    end
    local function call_handler(fn, e, what) fn(e, what) end
    local function handler_failed(e) return e end
    local function run_handler(fn, e, what)
        local rec = current()
        local was = rec and rec.user
        local mem = runtime.mem
        local prev = mem ~= nil and C.isle_mem_enforce(mem, C.ISLE_MEM_USER)
        if rec then rec.user = true end -- around the xpcall, as the worker marks its calls
        xpcall(call_handler, handler_failed, fn, e, what)
        if rec then rec.user = was end
        if prev then C.isle_mem_enforce(mem, prev) end
    end
    function F.on_error(fn)
        if fn ~= nil and type(fn) ~= "function" then
            error("bad argument #1 to 'on_error' (function or nil expected, got " .. type(fn) .. ")", 2)
        end
        if fn == nil then return isle.on_error(nil) end
        return isle.on_error(function(e, what) run_handler(fn, e, what) end)
    end
    -- Pools (isle.pool, when present) spawn through isle.spawn, which gives
    -- their isles this state's sandbox.
    if isle.pool ~= nil then F.pool = isle.pool end
    F.lookup = refused("isle.lookup", "it reaches isles by id or name: pass handles instead")
    F.pool_ref = refused("isle.pool_ref", "it reaches pools by id or name: pass the pool instead")
    F.state_ref = refused("isle.state_ref", "it reaches shared states by id or name: pass the state instead")
    F.singleton = refused("isle.singleton", "it reaches shared states by name: pass the state instead")
    F.hub = refused("isle.hub", "it is for host states")
    F.teardown_timeout = refused("isle.teardown_timeout", "it is the host's setting")
    -- Interrupt ids: only those this state made for its own code.
    local own = {}
    function F.interrupt_id(co)
        local id = interrupt.interrupt_id(co)
        own[id] = true
        return id
    end
    function F.interrupt(id, flag)
        if type(id) == "number" and not own[id] then
            error(PREFIX .. "isle.interrupt: id " .. id .. " is not one this isle made with isle.interrupt_id "
                .. "(sandboxed code interrupts only its own code)", 2)
        end
        return interrupt.interrupt(id, flag)
    end
    function F.load(src, chunkname)
        if type(src) ~= "string" then
            error("bad argument #1 to 'load' (string expected, got " .. type(src) .. ")", 2)
        end
        if chunkname ~= nil and type(chunkname) ~= "string" then
            error("bad argument #2 to 'load' (string or nil expected, got " .. type(chunkname) .. ")", 2)
        end
        return compile_text(src, chunkname or "=(isle.load)", env, true)
    end
    -- Timers: a handle of their own (isle's Timer holds the loop).
    local function timer_of(t)
        local function cancel() return t:cancel() end
        return setmetatable({ cancel = cancel }, { __metatable = false })
    end
    F.timer = {
        at = function(...) return timer_of(isle.timer.at(...)) end,
        every = function(...) return timer_of(isle.timer.every(...)) end,
    }
    return F
end

-- A metatable user code may neither get nor change. Its __index is most
-- often the metatable itself (`Handle.__index = Handle`), so `h.__index`
-- would hand it out: lookups go through a proxy instead, which shows the
-- methods and hides every `__` key.
local function hidden_keys(t, into)
    for k in next, t do
        if type(k) == "string" and sub(k, 1, 2) == "__" then into[k] = false end
    end
end
local function seal(mt)
    rawset(mt, "__metatable", false)
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then
        local proxy = { __index = false, __newindex = false, __metatable = false }
        hidden_keys(mt, proxy)
        hidden_keys(idx, proxy)
        setmetatable(proxy, { __index = idx, __metatable = false })
        rawset(mt, "__index", proxy)
    end
end

-- Every exported metatable of isle's objects, the string metatable and the
-- file metatable: user code may neither read nor change them (the machinery
-- shares them), and isle tells its objects apart with debug.getmetatable.
local function protect_metatables()
    local mts = {
        require("isle.handle").Handle, require("isle.task").Task, require("isle.token").Token,
        require("isle.channel").Channel, require("isle.state").State, require("isle").Timer,
        require("isle.buffer").Buffer, require("isle.pool").Pool,
        dgetmetatable(require("isle.errors").new("runtime", "")),
        dgetmetatable(io.stdout),
    }
    for _, mt in ipairs(mts) do seal(mt) end
end

-- Builds the sandbox in this state (an isle's or a shared state's) and
-- returns its globals. `libs`: the state's libs option (true, false or a
-- list), applied to the sandbox's copies.
function M.install(spec, libs, instrument_loads)
    runtime.sandbox = spec
    instrumented_loads = instrument_loads ~= false
    local files = spec.files
    env = {}
    local G = env
    -- Base
    for _, k in ipairs({ "assert", "error", "ipairs", "pairs", "next", "pcall", "xpcall", "select",
        "tonumber", "type", "unpack", "rawequal", "rawget", "rawset", "setmetatable", "getmetatable" }) do
        G[k] = _G[k]
    end
    G._VERSION = _VERSION
    G._G = G
    G.tostring = safe_tostring
    G.gcinfo = gcinfo
    local stdout = io.stdout
    G.print = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do parts[i] = safe_tostring((select(i, ...))) end
        stdout:write(concat(parts, "\t"), "\n")
    end
    G.collectgarbage = function(opt, arg)
        if opt == nil or opt == "collect" or opt == "count" then return collectgarbage(opt, arg) end
        error(PREFIX .. "collectgarbage('" .. tostring(opt) .. "') is not allowed (only 'collect' and 'count')", 2)
    end
    G.load = safe_load
    G.loadstring = function(s, chunkname)
        if type(s) ~= "string" then error("bad argument #1 to 'loadstring' (string expected, got " .. type(s) .. ")", 2) end
        return compile_text(s, chunkname or s, env)
    end
    if files then
        G.loadfile = safe_loadfile
        G.dofile = function(path)
            local f, err = safe_loadfile(path)
            if not f then error(err, 2) end
            return f()
        end
    else
        G.loadfile, G.dofile = denied("loadfile (no files grant)"), denied("dofile (no files grant)")
    end
    G.getfenv, G.setfenv, G.newproxy = denied("getfenv"), denied("setfenv"), denied("newproxy")
    G.module = denied("module")
    -- Libraries
    local lib = {
        string = safe_string(), table = copy(table), math = copy(math), bit = copy(bit),
        os = safe_os(files), coroutine = safe_coroutine(),
    }
    if files then lib.io = safe_io(files) end
    G.coroutine = lib.coroutine
    local keep = {}
    if libs == true or libs == nil then
        for k in next, lib do keep[k] = true end
    elseif type(libs) == "table" then
        for _, k in ipairs(libs) do keep[k] = true end
    end
    for k, v in next, lib do
        if keep[k] then G[k] = v end
    end
    -- require and package
    local loaded = {}
    for k, v in next, lib do loaded[k] = v end
    loaded._G = G
    local allowed = {}
    for _, n in ipairs(spec.require) do allowed[n] = true end
    G.package = { loaded = loaded }
    loaded.package = G.package
    G.require = make_require(loaded, allowed)
    loaded.isle = facade()
    -- The string metatable is the machinery's too: its methods come from a
    -- copy without dump, and it is protected.
    local smt = dgetmetatable("")
    rawset(smt, "__index", safe_string())
    protect_metatables()
    rawset(smt, "__metatable", false)
    -- Functions that cross into this state run in the sandbox.
    require("isle.codec").fn_env = env
    return env
end

function M.env() return env end

return M
