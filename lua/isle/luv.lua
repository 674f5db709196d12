-- The luv adapter: a libuv poll handle on the hub's fd runs hub:poll() from
-- the uv loop whenever a watched task has ended, so on_done callbacks and
-- awaiting coroutines are served by the loop's own thread and the loop never
-- blocks on isle work. While attached, blocking calls (h:call, t:wait) in
-- coroutines started by hub:go suspend instead of blocking (docs/hub.md).
local runtime = require("isle.runtime")
local hubs = require("isle.hub")

local setmetatable, getmetatable, error, pcall, type, tostring =
    setmetatable, getmetatable, error, pcall, type, tostring

local luv = {}
local attached = {}   -- hub -> its adapter
-- Stopped handles kept for a later attach: closing one leaves a close
-- callback pending, and luv (1.44) crashes at lua_close if the loop never
-- ran again to deliver it. A stopped handle is closed cleanly by luv itself.
local spare = setmetatable({}, { __mode = "k" })  -- hub -> { handle, uv }

local Adapter = {}
Adapter.__index = Adapter

-- Attaches hub `h` (default: the state's hub) to the uv loop of `uv`
-- (default: require("luv")). Returns the adapter: a.polls counts the poll
-- handle's callbacks, a.in_callback is true while one runs.
function luv.attach(h, uv)
    if h == nil then h = hubs.default() end
    if getmetatable(h) ~= hubs.Hub then
        error("bad argument #1 to 'attach' (isle hub or nil expected, got " .. type(h) .. ")", 2)
    end
    if attached[h] then error("isle.luv: this hub is attached already (detach it first)", 2) end
    if uv == nil then uv = require("luv") end
    local handle, err
    local kept = spare[h]
    if kept and kept.uv == uv then
        spare[h] = nil
        handle = kept.handle
        handle:ref()
    else
        handle, err = uv.new_poll(h:fd())
        if not handle then return nil, "isle.luv: cannot watch the hub's fd: " .. tostring(err) end
    end
    local a = setmetatable({
        hub = h, uv = uv, handle = handle, polls = 0, in_callback = false,
        prev_suspends = runtime.host_suspends,
    }, Adapter)
    handle:start("r", function(e)
        if e then runtime.report("isle.luv: poll handle error: " .. tostring(e), "the luv adapter") end
        a.polls = a.polls + 1
        a.in_callback = true
        -- poll never raises on its own; this only guards the uv loop from
        -- a misuse (a nested uv.run inside a callback the hub runs).
        local ok, pe = pcall(h.poll, h)
        a.in_callback = false
        if not ok then runtime.report(pe, "the luv adapter") end
    end)
    -- The handle keeps uv.run() going only while something is pending: a
    -- program whose isle work is all done ends like any luv program.
    h.on_busy = function(busy)
        if busy then handle:ref() else handle:unref() end
    end
    if h:pending() == 0 then handle:unref() end
    local suspends = function() return h:drives() end
    a.suspends = suspends
    runtime.host_suspends = suspends
    attached[h] = a
    return a
end

-- Stops the poll handle (kept, unreferenced, for a later attach) and gives
-- blocking calls back their blocking. What is still pending runs from
-- whoever polls the hub next.
function Adapter:detach()
    local h = self.hub
    if attached[h] ~= self then return end
    attached[h] = nil
    h.on_busy = nil
    if runtime.host_suspends == self.suspends then runtime.host_suspends = self.prev_suspends end
    self.handle:stop()
    self.handle:unref()
    spare[h] = { handle = self.handle, uv = self.uv }
end

-- Detaches hub `h` (default: the state's hub); nothing if not attached.
function luv.detach(h)
    if h == nil then h = hubs.default() end
    local a = attached[h]
    if a then a:detach() end
end

return luv
