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

-- The core's functions that only tests call (csrc/internal.h), declared
-- here once; nil while isle is not loaded.
local core
local function isle_core()
    if not core and package.loaded["isle.cdef"] then
        ffi.cdef[[
        void isle_threads_trim(void);
        int isle_threads_parked(void);
        int isle_arena_pooled(void);
        ]]
        core = require("isle.cdef").C
    end
    return core
end

-- Threads parked for the next isle (csrc/threads.c); 0 while isle is not loaded.
function helpers.parked_threads()
    local C = isle_core()
    return C and C.isle_threads_parked() or 0
end

-- LuaJIT arenas kept from closed states (csrc/arena.c).
function helpers.arena_pooled()
    require("isle")
    return isle_core().isle_arena_pooled()
end

-- Threads of this process (entries of /proc/self/task), once the threads
-- parked for the next isle have exited (they are no isle's, and would go by
-- themselves within ISLE_THREADS_LINGER).
function helpers.threads()
    local C = isle_core()
    if C then C.isle_threads_trim() end
    return status_field("Threads")
end

-- helpers.threads() once the count has held still for 60 ms (at most 3 s):
-- the baseline of a test that counts the threads it starts, taken when no
-- earlier test's thread (an abandoned isle's, the watchdog's) is still on
-- its way out.
function helpers.settled_threads()
    local isle = require("isle")
    local n, since = helpers.threads(), isle.now()
    local deadline = since + 3
    while isle.now() - since < 0.06 and isle.now() < deadline do
        isle.sleep(0.01)
        local m = helpers.threads()
        if m ~= n then n, since = m, isle.now() end
    end
    return n
end

-- Open file descriptors of this process: the fds below FDSize (the size of
-- its fd table) that fcntl knows. Counting makes no process and no pipe, so
-- the count cannot catch an fd of its own half-made or half-closed.
ffi.cdef("int helpers_fcntl(int fd, int cmd, ...) __asm__(\"fcntl\");")
function helpers.fds()
    local n = 0
    for fd = 0, status_field("FDSize") - 1 do
        if ffi.C.helpers_fcntl(fd, 1 --[[F_GETFD]]) ~= -1 then n = n + 1 end
    end
    return n
end

-- The LuaJIT and C compiler under test, as shell command prefixes for child
-- processes. The Makefile exports the exact commands (for luajit2 that is
-- "env LD_LIBRARY_PATH=... .../luajit"); by hand, those on PATH.
local function command(var, default)
    local v = os.getenv(var)
    return (v and v ~= "") and v or default
end
function helpers.luajit() return command("ISLE_TEST_LUAJIT", "luajit") end
function helpers.cc() return command("ISLE_TEST_CC", "cc") end

-- Runs a shell command; returns its output (stdout and stderr) and exit code.
function helpers.sh(cmd)
    local p = io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    local body, rc = out:match("^(.-)rc=(%d+)\n$")
    return body, tonumber(rc)
end

ffi.cdef("int getpid(void);")
function helpers.pid() return ffi.C.getpid() end

function helpers.rss_kb() return status_field("VmRSS") end

-- Bytes malloc has handed out and not had back, in MB (glibc, every arena):
-- what the C core holds, unlike RSS, which freed memory need not lower.
ffi.cdef[[
struct isle_test_mallinfo2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost; };
struct isle_test_mallinfo2 mallinfo2(void);
]]
function helpers.malloc_mb()
    local m = ffi.C.mallinfo2()
    return tonumber(m.uordblks + m.hblkhd) / 1048576
end

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

-- The error `f(...)` raises; the test fails if it raises none.
function helpers.err_of(f, ...)
    local ok, e = pcall(f, ...)
    require("luaunit").assertFalse(ok, "expected an error")
    return e
end

-- Two full collections: finalizers of what is unreachable have run.
function helpers.settle()
    collectgarbage(); collectgarbage()
end

-- True once no isle is live, collecting meanwhile (a collected owning
-- handle closes its isle in the background); false after 10 s.
function helpers.no_isle_live()
    local isle = require("isle")
    return helpers.eventually(function() collectgarbage() return isle.live_count() == 0 end, 10)
end

-- Collects until count() stops moving (up to 50 rounds, 10 ms apart: isles
-- let go of what they hold on their own threads); returns the last count.
function helpers.settled(count)
    local isle = require("isle")
    local n = -1
    for _ = 1, 50 do
        collectgarbage()
        collectgarbage()
        local m = count()
        if m == n then return m end
        n = m
        isle.sleep(0.01)
    end
    return n
end

return helpers
