-- isle in a luv (libuv) program: work runs in an isle while the uv loop
-- keeps serving its timer. The luv adapter watches the hub's fd with a poll
-- handle, so on_done callbacks and awaiting coroutines are served from the
-- loop's own thread, and uv.run() returns once everything is done.
--
--   make && eval $(make -s path) && luajit examples/luv.lua
local uv = require("luv")
local isle = require("isle")

local h = isle.spawn{ init = [[
    local isle = require("isle")
    function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    function slow(s, v) isle.sleep(s) return v end
]] }
local hub = isle.hub()
require("isle.luv").attach(hub)

local t0 = uv.now()
local ticks = 0
local timer = uv.new_timer()
timer:start(10, 10, function() ticks = ticks + 1 end)

-- A callback: runs from the loop when the task ends.
h:spawn_call("fib", 27):on_done(function(_, v)
    print(("fib(27) = %s, from on_done after %d ms"):format(tostring(v), uv.now() - t0))
end)

-- Coroutines started by hub:go: t:await() suspends them, and so do blocking
-- calls (h:call, t:wait) while the adapter is attached.
local left = 5
for i = 1, 5 do
    hub:go(function()
        local v = h:call("slow", 0.1, i)        -- suspends this coroutine only
        local _, w = h:spawn_call("slow", 0.05, v * 10):await()
        print(("coroutine %d got %s and %s after %d ms"):format(i, v, tostring(w), uv.now() - t0))
        left = left - 1
        if left == 0 then timer:stop(); timer:close() end
    end)
end

uv.run()  -- returns once the timer is closed and nothing is pending in the hub
print(("done after %d ms; the timer ticked %d times meanwhile"):format(uv.now() - t0, ticks))
h:close()
