-- The OpenResty adapter: in an nginx worker, code that waits for an isle
-- (t:await, h:call, t:wait) in a phase where nginx lets Lua yield parks its
-- light thread on an ngx.semaphore instead of blocking the worker, and
-- on_done callbacks run in the worker too. require("isle") installs it when
-- it runs inside lua-nginx-module; there is nothing to set up.
--
-- The wake-up path, with no polling: the state's hub (lua/isle/hub.lua)
-- learns of the end of every task somebody waits for. Its readiness is a
-- byte on a unix socket connected from this worker to itself
-- (isle_notify_listen/accept: private path, removed at once). One light
-- thread per worker, the reader (started by ngx.timer.at on first use),
-- reads that socket with a cosocket and runs hub:poll(), which posts the
-- semaphores of the waiters whose tasks ended and runs on_done callbacks.
-- An idle worker has the reader parked in a read: no timer, no CPU.
--
-- Client aborts: with `lua_check_client_abort on`, the first wait of a
-- request registers its ngx.on_abort handler, which cancels the tasks the
-- request is waiting for, then runs the handler given to
-- isle.ngx.on_abort(fn) if any, else ends the request with ngx.exit(499).
-- A request has one on_abort slot: users who want their own handler give it
-- to isle.ngx.on_abort instead of ngx.on_abort (docs/hub.md, "OpenResty").
local ffi = require("ffi")
local runtime = require("isle.runtime")
local hubs = require("isle.hub")
local ngx = require("ngx")
local semaphore = require("ngx.semaphore")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local type, error, pcall, tostring, pairs = type, error, pcall, tostring, pairs
local co_running, co_isyieldable = coroutine.running, coroutine.isyieldable
local get_phase, exiting = ngx.get_phase, ngx.worker.exiting

local M = {}

-- Where sema:wait may yield (lua-nginx-module's docs list these contexts).
local YIELDING = { rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, server_rewrite = true }
-- Where a request exists and ngx.on_abort may be called.
local REQUEST = { rewrite = true, access = true, content = true, server_rewrite = true }

-- A read never needs to end: the longest timeout a cosocket accepts, after
-- which the reader just reads again.
local READ_TIMEOUT = 2 ^ 31 - 1 -- ms
local WAIT_SLICE = 86400        -- s: sema:wait's timeout is an int of ms
local RING_EVERY = 86400        -- s: the shutdown ringer's pending timer
local SELF_POLL = 0.01          -- s: how often a wait polls when no reader can run

-- lua-nginx-module replaces the coroutine library and its copy has no
-- isyieldable: there, a wait inside a C callback (a table.sort comparator)
-- raises "attempt to yield across C-call boundary" (docs/hub.md).
local worker = nil -- this process's state (current() below)

local function can_suspend()
    if YIELDING[get_phase()] ~= true or co_running() == nil then return false end
    -- Inside a callback that the reader's hub:poll() runs: the reader is
    -- busy with it and could not wake this wait, so it blocks instead.
    local w = worker
    if w and w.hub:in_poll() then return false end
    return co_isyieldable == nil or co_isyieldable()
end


local function report(e, what)
    runtime.report(e, "isle.ngx: " .. what)
end

-- The reader: one light thread per worker that turns bytes on the hub's
-- socket into hub:poll() calls. It exits when the worker is exiting and
-- nothing is pending any more (the ringer makes sure it sees the exit).
local function reader(premature, w)
    local hub = w.hub
    -- Fired early by a shutdown: still needed if waits are parked.
    if premature and hub:pending() == 0 then w.reading = false return end
    local buf = ffi.new("char[256]")
    local lfd = C.isle_notify_listen(buf, 256)
    if lfd < 0 then
        w.reading = false
        return report("cannot make the wake-up socket (errno " .. ffi.errno() .. ")", "the reader")
    end
    local sock = ngx.socket.tcp()
    local ok, err = sock:connect("unix:" .. ffi.string(buf))
    -- Called either way: it also removes the path.
    local fd = C.isle_notify_accept(lfd, buf, ok and 5 or -1)
    if fd < 0 then
        w.reading = false
        return report("cannot connect the wake-up socket: " .. tostring(err or ("errno " .. ffi.errno())),
            "the reader")
    end
    local took, terr = hub:use_socket(fd) -- the hub owns fd now, even on failure
    if not took then
        w.reading = false
        return report(terr, "the reader")
    end
    sock:settimeouts(nil, nil, READ_TIMEOUT)
    w.socket_ready = true
    hub:poll() -- what ended before the socket was there
    while true do
        if exiting() and hub:pending() == 0 then break end
        local data, rerr = sock:receiveany(256)
        if data then
            hub:poll()
        elseif rerr ~= "timeout" then
            if not exiting() then report("the wake-up socket failed: " .. tostring(rerr), "the reader") end
            break
        end
    end
    sock:close()
    w.reading, w.socket_ready = false, false
end

-- A pending timer, fired early (premature) when the worker starts to exit:
-- it wakes the reader, which would otherwise keep the exiting worker alive
-- until its read timed out (a running timer is never aborted).
local function ringer(premature, w)
    if premature or exiting() then
        if w.hub then pcall(w.hub.wake, w.hub) end
        return
    end
    local ok, err = ngx.timer.at(RING_EVERY, ringer, w)
    if not ok then report("cannot re-arm the shutdown ringer: " .. tostring(err), "the ringer") end
end

-- Starts the reader (and the ringer) unless it runs; where timers cannot be
-- made yet (init_by_lua) it is tried again on the next wait.
local function ensure_reader(w)
    if w.reading or exiting() then return end
    local ok, err = ngx.timer.at(0, reader, w)
    if not ok then
        if get_phase() ~= "init" then report("cannot start the reader: " .. tostring(err), "ensure_reader") end
        return
    end
    w.reading = true
    if not w.ringing then
        local rok = ngx.timer.at(RING_EVERY, ringer, w)
        w.ringing = rok and true or false
    end
end

-- Requests -------------------------------------------------------------------

local CTX_KEY = {} -- this module's entry in ngx.ctx

-- The request's waits, made (with its abort handler) at its first wait.
local function request_of(w)
    if not REQUEST[get_phase()] then return nil end
    local ctx = ngx.ctx
    local req = ctx[CTX_KEY]
    if req then return req end
    req = { waits = {}, handler = nil, aborted = false }
    ctx[CTX_KEY] = req
    if w.abort_off then return req end
    local ok, err = ngx.on_abort(function()
        req.aborted = true
        for wait in pairs(req.waits) do C.isle_task_cancel(wait.task) end
        local h = req.handler
        if h then return h() end
        return ngx.exit(499)
    end)
    if not ok then
        if tostring(err):find("lua_check_client_abort", 1, true) then
            w.abort_off = true -- off in this location: do not ask again per request
        else
            req.foreign_abort = err -- the user's own ngx.on_abort holds the slot
        end
    end
    return req
end

-- Parking ------------------------------------------------------------------------

local function park(wait, timeout)
    local w = worker
    ensure_reader(w)
    local sema = semaphore.new(0)
    wait.sema = sema
    local req = request_of(w)
    if req then req.waits[wait] = true end
    ngx.update_time()
    local deadline = timeout >= 0 and ngx.now() + timeout or nil
    local why
    while not wait.why do
        local slice = WAIT_SLICE
        if deadline then
            ngx.update_time()
            slice = deadline - ngx.now()
            if slice <= 0 then why = "timeout" break end
            if slice > WAIT_SLICE then slice = WAIT_SLICE end
        end
        -- No reader, and none can start: the worker is exiting (nginx
        -- refuses new timers then) and the reader has left. This wait polls
        -- the hub itself, every 10 ms, until the worker is gone.
        local self_poll = not w.reading
        if self_poll and slice > SELF_POLL then slice = SELF_POLL end
        local ok, err = sema:wait(slice)
        if not ok and err ~= "timeout" then why = "semaphore: " .. tostring(err) break end
        if self_poll and not wait.why and not w.hub:in_poll() then w.hub:poll() end
    end
    if req then req.waits[wait] = nil end
    return wait.why or why
end

local function unpark(wait)
    wait.sema:post(1)
end

local PARKING = { can_suspend = can_suspend, park = park, unpark = unpark }

-- The worker's state, (re)made in each process: the hub is per process too.
local function current()
    local w = worker
    local gen = runtime.generation()
    if w and w.gen == gen then return w end
    w = { gen = gen, hub = hubs.default(), reading = false, ringing = false, abort_off = false }
    worker = w
    w.hub:set_parking(PARKING)
    w.hub.on_busy = function(busy)
        if busy then ensure_reader(w) end
    end
    return w
end

-- Installed by require("isle") inside nginx: from now on blocking waits in
-- yielding phases park instead of blocking the worker.
function M.install()
    runtime.host_suspends = function()
        if not can_suspend() then return false end
        current()
        return true
    end
    -- The driver: the hub of this process, with the adapter's parking.
    runtime.host_hub = function() return current().hub end
end

-- isle.ngx.on_abort(fn): fn() runs when the client of the current request
-- goes away (lua_check_client_abort on), after the tasks the request waits
-- for were cancelled. Returns true, or nil and the reason (as ngx.on_abort).
function M.on_abort(fn)
    if type(fn) ~= "function" then
        error("bad argument #1 to 'on_abort' (function expected, got " .. type(fn) .. ")", 2)
    end
    if not REQUEST[get_phase()] then
        error("isle.ngx.on_abort: only in rewrite, access and content phases (now " .. tostring(get_phase()) .. ")", 2)
    end
    local w = current()
    local req = request_of(w)
    if w.abort_off then return nil, "lua_check_client_abort is off" end
    if req.foreign_abort then return nil, "ngx.on_abort was called already: " .. tostring(req.foreign_abort) end
    if req.handler then return nil, "duplicate call" end
    req.handler = fn
    return true
end

-- For tests and docs/hub.md: is the reader running, and on its socket?
function M.status()
    local w = worker
    if not w or w.gen ~= runtime.generation() then return { reading = false, socket = false } end
    return { reading = w.reading, socket = w.socket_ready == true, pending = w.hub:pending() }
end

return M
