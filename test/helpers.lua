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
