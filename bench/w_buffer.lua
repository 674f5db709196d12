-- Passing 64 MB to an isle (issue 9, "Shared buffers"): a call whose
-- argument is a 64 MB shared buffer (isle.buffer: a reference travels, the
-- isle reads one byte through the pointer) against the same call with a
-- 64 MB string (copied into the message, then into the isle's state), with
-- two floors measured in the same run: a call with a small number (the
-- round trip alone) and a plain 64 MB memcpy (ffi.copy, no isle code: what
-- one copy costs). Runs interleaved, medians reported; the buffer and the
-- small calls are timed 100 at a time, as the isle's thread would park
-- between the rare string calls. Standalone:
--
--   luajit bench/w_buffer.lua [--quick]
--
-- Finds lua/, ffi/ and build/ relative to itself.
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = ROOT .. "/bench/?.lua;" .. ROOT .. "/lua/?.lua;" .. ROOT .. "/ffi/?.lua;" .. package.path
package.cpath = ROOT .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local isle = require("isle")

local quick = arg[1] == "--quick"
local REPS = quick and 3 or 7
local CALLS = quick and 3 or 10
local SIZE = 64 * 1024 * 1024

local median = require("lib").median

local h = isle.spawn{ init = function()
    function peek_buf(b) return b:ptr()[12345] end
    function peek_str(s) return s:byte(12346) end
    function small(x) return x end
end }

local buf = isle.buffer(SIZE)
ffi.fill(buf:ptr(), SIZE, 7)
local str = ffi.string(buf:ptr(), SIZE)
local dst = ffi.new("uint8_t[?]", SIZE)

-- Seconds per operation, over CALLS operations.
local function time(fn)
    local t0 = isle.now()
    for _ = 1, CALLS do fn() end
    return (isle.now() - t0) / CALLS
end

local with_buf = function() for _ = 1, 100 do assert(h:call("peek_buf", buf) == 7) end end
local with_str = function() assert(h:call("peek_str", str) == 7) end
local small = function() for i = 1, 100 do h:call("small", i) end end
local memcpy = function() ffi.copy(dst, buf:ptr(), SIZE) end

local r = { buf = {}, str = {}, small = {}, memcpy = {} }
with_buf(); with_str(); small(); memcpy() -- warm
for rep = 1, REPS do
    r.buf[rep] = time(with_buf) / 100
    r.str[rep] = time(with_str)
    r.small[rep] = time(small) / 100
    r.memcpy[rep] = time(memcpy)
    -- The strings' garbage goes now, in both states, not during the next
    -- run's buffer calls.
    h:eval("collectgarbage() collectgarbage()")
    collectgarbage()
end
local mb, ms, mc, mm = median(r.buf), median(r.str), median(r.small), median(r.memcpy)
print(string.format("64 MB through h:call, medians of %d runs (%d string calls, %d buffer and small calls each)",
    REPS, CALLS, CALLS * 100))
print(string.format("  shared buffer   %10.1f us   (%.1fx the small-call floor %.1f us)", mb * 1e6, mb / mc, mc * 1e6))
print(string.format("  string          %10.1f us   (%.1fx one 64 MB memcpy %.1f us; %.0fx the buffer)",
    ms * 1e6, ms / mm, mm * 1e6, ms / mb))
h:close()
buf:close()
