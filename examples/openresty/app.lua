-- The example's handlers (examples/openresty/nginx.conf). Each worker
-- spawns a few isles in init_worker_by_lua and closes them in
-- exit_worker_by_lua; handlers call them as if they blocked, and the adapter
-- (lua/isle/ngx.lua) makes every wait yield to nginx.
local isle = require("isle")

local app = {}
local workers = {}
local next_one = 0

local INIT = [[
    local isle = require("isle")
    function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    function slow(s) isle.sleep(s) return "slept " .. s end
]]

function app.start()
    for i = 1, 2 do workers[i] = isle.spawn{ name = "fib" .. i, init = INIT } end
end

function app.stop()
    for _, w in ipairs(workers) do w:close() end
end

local function pick()
    next_one = next_one % #workers + 1
    return workers[next_one]
end

function app.fib()
    local n = tonumber(ngx.var.arg_n) or 25
    ngx.say("fib(", n, ") = ", pick():call("fib", n), " from worker ", ngx.worker.pid())
end

function app.all()
    local ok, a, b = isle.all{ workers[1]:spawn_call("fib", 24), workers[2]:spawn_call("fib", 25) }:await()
    ngx.say(ok and ("fib(24) + fib(25) = " .. (a[1] + b[1])) or tostring(a))
end

function app.slow()
    require("isle.ngx").on_abort(function()
        ngx.log(ngx.NOTICE, "client went away: its isle job was cancelled")
        ngx.exit(499)
    end)
    ngx.say(pick():call("slow", tonumber(ngx.var.arg_s) or 5))
end

function app.stats()
    for _, w in ipairs(workers) do
        local s = w:stats()
        ngx.say(w:name(), ": running ", s.running, ", done ", s.done, ", cancelled ", s.cancelled)
    end
end

return app
