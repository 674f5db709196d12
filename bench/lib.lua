-- bench/lib.lua: timing, statistics, process probes, the table and JSON
-- output of the isle benchmarks (bench/run.lua). No isle code in here except
-- the clock, so the helpers measure isle and its floors alike.
local ffi = require("ffi")
local io, string, table, math = io, string, table, math

local lib = {}

-- Clocks ---------------------------------------------------------------------

ffi.cdef[[
typedef struct bench_timespec { long tv_sec; long tv_nsec; } bench_timespec;
int bench_clock_gettime(int clk, bench_timespec *ts) __asm__("clock_gettime");
]]
local ts = ffi.new("bench_timespec")
local CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID = 1, 2

-- Monotonic wall time in seconds.
function lib.now()
    ffi.C.bench_clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- CPU time of the whole process (every thread), in seconds.
function lib.cpu()
    ffi.C.bench_clock_gettime(CLOCK_PROCESS_CPUTIME_ID, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- CPU time from /proc/self/stat (utime + stime, in clock ticks of 1/100 s):
-- a coarse cross-check of lib.cpu().
function lib.proc_cpu()
    local f = io.open("/proc/self/stat", "r")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    -- Fields after the ")" that closes the command name: state is field 3,
    -- utime field 14, stime field 15.
    local rest = s:match("%)%s+(.*)$")
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100
end

-- Resident memory of the process in KiB (VmRSS), nil when /proc is missing.
function lib.rss_kib()
    local f = io.open("/proc/self/status", "r")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- Cores busy machine-wide (all processes) over `secs`, from /proc/stat; nil
-- without /proc. Measured while this process sleeps, it tells how much of the
-- machine something else is using.
local function cpu_ticks()
    local f = io.open("/proc/stat", "r")
    if not f then return nil end
    local line = f:read("*l")
    f:close()
    local total, idle, i = 0, 0, 0
    for v in line:gmatch("%d+") do
        i = i + 1
        v = tonumber(v)
        total = total + v
        if i == 4 or i == 5 then idle = idle + v end  -- idle, iowait
    end
    return total, idle
end

function lib.busy_cores(secs, ncpu)
    local t0, i0 = cpu_ticks()
    if not t0 then return nil end
    lib.sleep(secs)
    local t1, i1 = cpu_ticks()
    if t1 == t0 then return 0 end
    return (1 - (i1 - i0) / (t1 - t0)) * ncpu
end

-- Sleeps without burning CPU (a blocking wait in the core).
function lib.sleep(s)
    require("isle").sleep(s)
end

-- Full collection, twice (finalizers of the first may free more).
function lib.gc()
    collectgarbage("collect")
    collectgarbage("collect")
end

-- Statistics -----------------------------------------------------------------

function lib.median(xs)
    local n = #xs
    if n == 0 then return nil end
    local s = {}
    for i = 1, n do s[i] = xs[i] end
    table.sort(s)
    if n % 2 == 1 then return s[(n + 1) / 2] end
    return (s[n / 2] + s[n / 2 + 1]) / 2
end

function lib.minmax(xs)
    local lo, hi = math.huge, -math.huge
    for i = 1, #xs do
        if xs[i] < lo then lo = xs[i] end
        if xs[i] > hi then hi = xs[i] end
    end
    return lo, hi
end

-- Formatting -----------------------------------------------------------------

-- Three significant digits, with k/M suffixes for large rates.
function lib.fmt(x)
    if x == nil then return "-" end
    if type(x) ~= "number" then return tostring(x) end
    if x ~= x then return "nan" end
    local a = math.abs(x)
    if a >= 1e7 then return string.format("%.2fM", x / 1e6) end
    if a >= 1e6 then return string.format("%.3fM", x / 1e6) end
    if a >= 1e5 then return string.format("%.0fk", x / 1e3) end
    if a >= 100 then return string.format("%.0f", x) end
    if a >= 10 then return string.format("%.1f", x) end
    if a >= 1 then return string.format("%.2f", x) end
    if a >= 0.01 then return string.format("%.3f", x) end
    if a == 0 then return "0" end
    return string.format("%.2g", x)
end

-- Renders rows (lists of strings) under `header` as an aligned text table.
function lib.render(header, rows)
    local w = {}
    for i, h in ipairs(header) do w[i] = #h end
    for _, r in ipairs(rows) do
        for i = 1, #header do
            local c = tostring(r[i] or "")
            if #c > w[i] then w[i] = #c end
        end
    end
    local out = {}
    local function line(r)
        local cells = {}
        for i = 1, #header do
            local c = tostring(r[i] or "")
            cells[i] = c .. string.rep(" ", w[i] - #c)
        end
        out[#out + 1] = (table.concat(cells, "  "):gsub("%s+$", ""))
    end
    line(header)
    local sep = {}
    for i = 1, #header do sep[i] = string.rep("-", w[i]) end
    out[#out + 1] = table.concat(sep, "  ")
    for _, r in ipairs(rows) do line(r) end
    return table.concat(out, "\n")
end

-- JSON -----------------------------------------------------------------------

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
    ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        return escapes[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
end

local function is_array(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    for i = 1, n do if t[i] == nil then return false end end
    return true, n
end

-- Encodes nil/boolean/number/string/table (arrays and string-keyed objects,
-- keys sorted so the file diffs well), indented by two spaces.
function lib.json(v, indent)
    indent = indent or ""
    local t = type(v)
    if v == nil then return "null" end
    if t == "boolean" then return tostring(v) end
    if t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then return "null" end
        if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
        return string.format("%.6g", v)
    end
    if t == "string" then return json_string(v) end
    if t ~= "table" then return json_string(tostring(v)) end
    local inner = indent .. "  "
    local arr, n = is_array(v)
    if arr then
        if n == 0 then return "[]" end
        local parts = {}
        for i = 1, n do parts[i] = inner .. lib.json(v[i], inner) end
        return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        parts[#parts + 1] = inner .. json_string(k) .. ": " .. lib.json(val, inner)
    end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

function lib.write_file(path, s)
    local f, err = io.open(path, "w")
    if not f then return nil, err end
    f:write(s)
    f:close()
    return true
end

-- Misc -----------------------------------------------------------------------

-- Runs a shell command, returns its stdout (trimmed) and whether it exited 0.
function lib.capture(cmd)
    local f = io.popen(cmd .. " 2>&1", "r")
    if not f then return nil, false end
    local out = f:read("*a")
    local ok, _, code = f:close()
    -- LuaJIT without 5.2 compat returns only the exit status as a number.
    if type(ok) == "number" then ok = ok == 0 elseif code ~= nil then ok = ok and code == 0 end
    return (out:gsub("%s+$", "")), ok
end

function lib.file_exists(path)
    local f = io.open(path, "r")
    if f then f:close() return true end
    return false
end

return lib
