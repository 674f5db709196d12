-- isle.all and isle.first: a task made of other tasks. Its slot is a real
-- one, completed on this state's own thread by its driver (the isle's loop,
-- or the host's hub) as the tasks it is made of end, so wait, await,
-- on_done, status and result work on it as on any task. Cancelling it
-- cancels them all.
local runtime = require("isle.runtime")
local PTRS = runtime.ptrs -- object -> its C pointer (never a field user code can reach)
local errors = require("isle.errors")
local wire = require("isle.wire")
local task = require("isle.task")

local C = runtime.C
require("isle.cdef").full() -- the declarations an isle makes on demand (ffi/isle/cdef.lua)
local dgetmetatable = require("debug").getmetatable
local type, ipairs, select, unpack, error, pcall, tostring =
    type, ipairs, select, unpack, error, pcall, tostring
local ISLE_TASK_DONE, ISLE_TASK_FAILED = C.ISLE_TASK_DONE, C.ISLE_TASK_FAILED

local combine = {}

local function check_list(tasks, fname)
    if type(tasks) ~= "table" then
        error("bad argument #1 to '" .. fname .. "' (list of tasks expected, got " .. type(tasks) .. ")", 3)
    end
    for i, t in ipairs(tasks) do
        if dgetmetatable(t) ~= task.Task then -- the real one: a sandbox protects it
            error("bad argument #1 to '" .. fname .. "' (a task expected at [" .. i .. "], got " .. type(t) .. ")", 3)
        end
    end
end

local function new_slot()
    local p = C.isle_task_new()
    if p == nil then error(errors.new("memory", "cannot allocate a task"), 3) end
    runtime.gc(p, C.isle_task_release)
    -- A capped isle holds the result in C memory: it counts against its limit.
    if runtime.mem ~= nil then C.isle_task_charge_results(p, runtime.mem) end
    local t = task.new(p)
    return t, p
end

local function ended(p) return C.isle_task_state(p) >= ISLE_TASK_DONE end

-- Results and errors carry their tokens as any result does (isle.wire):
-- the combined slot holds them until it is freed.
local function complete_ok(p, n, ...)
    local enc = runtime.enc
    local ok, e = wire.put_results(enc, n, ...)
    if not ok then
        wire.put_error(enc, e)
        return wire.complete(p, ISLE_TASK_FAILED, enc)
    end
    return wire.complete(p, ISLE_TASK_DONE, enc)
end

local function complete_error(p, e)
    local enc = runtime.enc
    wire.put_error(enc, e)
    return wire.complete(p, wire.error_state(e), enc)
end

local function pack(...) return { n = select("#", ...), ... } end

-- Runs a part's callback; if it raises (out of memory decoding or encoding
-- results under a memory cap), the combined task ends with that error rather
-- than never.
local function settle(p, fn)
    local ok, e = pcall(fn)
    if ok or ended(p) then return end
    if e == "not enough memory" then
        e = errors.new("memory", "not enough memory to combine the results")
    elseif not errors.is(e) then
        e = errors.new("runtime", tostring(e))
    end
    complete_error(p, e)
end

-- isle.all(tasks): ends when every task has ended: done with one result per
-- task, each a table { n = count, results... } in the order given; failed
-- with the first error as soon as one fails (the others go on).
function combine.all(tasks)
    check_list(tasks, "all")
    local t, p = new_slot()
    t.parts = tasks
    local n = #tasks
    if n == 0 then
        complete_ok(p, 0)
        return t
    end
    local d = runtime.driver()
    local results, left = {}, n
    for i, sub in ipairs(tasks) do
        d:watch(PTRS[sub], function() settle(p, function()
            if ended(p) then return end
            local r = pack(sub:result())
            if not r[1] then return complete_error(p, r[2]) end
            results[i] = { n = r.n - 1, unpack(r, 2, r.n) }
            left = left - 1
            if left == 0 then complete_ok(p, n, unpack(results, 1, n)) end
        end) end)
    end
    return t
end

-- isle.first(tasks): ends as the first of them ends, with its results or
-- its error.
function combine.first(tasks)
    check_list(tasks, "first")
    if #tasks == 0 then error("bad argument #1 to 'first' (an empty list never ends)", 2) end
    local t, p = new_slot()
    t.parts = tasks
    local d = runtime.driver()
    for _, sub in ipairs(tasks) do
        d:watch(PTRS[sub], function() settle(p, function()
            if ended(p) then return end
            local r = pack(sub:result())
            if r[1] then return complete_ok(p, r.n - 1, unpack(r, 2, r.n)) end
            return complete_error(p, r[2])
        end) end)
    end
    return t
end

return combine
