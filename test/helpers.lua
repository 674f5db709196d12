-- Shared helpers for the Lua suites.
local ffi = require("ffi")
local helpers = {}

-- A numeric field of /proc/self/status.
local function status_field(name)
    local f = io.open("/proc/self/status")
    local s = f:read("*a")
    f:close()
    return tonumber(s:match(name .. ":%s*(%d+)"))
end

-- Threads of this process (entries of /proc/self/task).
function helpers.threads() return status_field("Threads") end

function helpers.fds()
    local n = 0
    local p = io.popen("ls -1 /proc/" .. helpers.pid() .. "/fd")
    for _ in p:lines() do n = n + 1 end
    p:close()
    return n - 1 -- the pipe of popen itself
end

ffi.cdef("int getpid(void);")
function helpers.pid() return ffi.C.getpid() end

function helpers.rss_kb() return status_field("VmRSS") end

-- A gate: a job that runs without yielding until the test opens it, so the
-- messages behind it stay queued for exactly as long as the test needs.
-- Start it with h:spawn_eval(helpers.GATE, addr); open with mem[0] = 1.
helpers.GATE = "local m = require('ffi').cast('int32_t *', ...) "
    .. "while m[0] == 0 do m[1] = 1 end return 'gate'"
-- `n` int32s both the test and its isles see (isles get the address).
function helpers.shared_ints(n)
    local mem = ffi.new("int32_t[?]", n)
    return mem, tonumber(ffi.cast("uintptr_t", mem))
end

function helpers.gate_memory() return helpers.shared_ints(2) end

-- Polls `cond` until true or `timeout` seconds pass; returns its last value.
function helpers.eventually(cond, timeout)
    local isle = require("isle")
    local deadline = isle.now() + (timeout or 10)
    local v = cond()
    while not v and isle.now() < deadline do
        isle.sleep(0.005)
        v = cond()
    end
    return v
end

return helpers
