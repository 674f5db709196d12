-- The suites' runner: one luaunit suite with a deadline on every test, so a
-- hang fails and names the test instead of hanging `make test`.
--
--   luajit test/run.lua test/test_x.lua [luaunit args]
--
-- The runner forks. The child runs the suite; before each test (its setUp,
-- body and tearDown) it records the test's name in memory shared with the
-- parent and arms alarm(deadline). SIGALRM's default action ends the whole
-- process whatever its isle threads are doing, so a stuck test (a spin, a
-- wait that never ends, a deadlock between isles) ends too. The parent waits
-- and, when the child dies by a signal or outlives the suite bound, prints
--   FAILED: test/test_x.lua TestFoo.test_bar: no result within 60 s (deadline)
-- (or "(suite timeout)", or "died by signal N"), then exits non-zero. A suite
-- that ends by itself keeps luaunit's own report and exit status.
--
-- Deadlines (seconds):
--   ISLE_TEST_DEADLINE        every test's default (60)
--   ISLE_TEST_SUITE_TIMEOUT   the whole suite (900); the parent kills it then
--   TestFoo.deadline = 300    in a suite: every test of the class TestFoo
--   TestFoo.deadline = { test_bar = 300 }   only those tests of TestFoo
-- Loading the suite, and what follows a test until the next one (class
-- teardown, process exit), run under the default deadline.
local ffi = require("ffi")

-- Prefixed names (bound with __asm__) cannot clash with a suite's own cdefs:
-- the child runs the suite in this very Lua state.
ffi.cdef [[
unsigned int isle_run_alarm(unsigned int s) __asm__("alarm");
void *isle_run_signal(int sig, void *handler) __asm__("signal");
int isle_run_sigemptyset(void *set) __asm__("sigemptyset");
int isle_run_sigaddset(void *set, int sig) __asm__("sigaddset");
int isle_run_sigprocmask(int how, const void *set, void *old) __asm__("sigprocmask");
int isle_run_fork(void) __asm__("fork");
int isle_run_waitpid(int pid, int *status, int options) __asm__("waitpid");
int isle_run_kill(int pid, int sig) __asm__("kill");
int isle_run_poll(void *fds, unsigned long n, int ms) __asm__("poll");
int isle_run_prctl(int op, unsigned long a) __asm__("prctl");
void *isle_run_mmap(void *addr, size_t len, int prot, int flags, int fd, long off) __asm__("mmap");
]]
local C = ffi.C
local SIGKILL, SIGALRM, SIG_UNBLOCK, WNOHANG, PR_SET_PDEATHSIG = 9, 14, 1, 1, 1

local suite = arg[1]
if not suite then
    io.stderr:write("usage: luajit test/run.lua test/test_x.lua [luaunit args]\n")
    os.exit(2)
end
local function seconds(name, default)
    local v = tonumber(os.getenv(name) or default)
    assert(v and v >= 1, name .. " must be a number of seconds >= 1")
    return math.floor(v)
end
local DEFAULT = seconds("ISLE_TEST_DEADLINE", 60)
local SUITE_TIMEOUT = seconds("ISLE_TEST_SUITE_TIMEOUT", 900)

-- The child's current phase, read by the parent after the child is gone.
local shared = ffi.cast("struct { int32_t deadline; char name[500]; } *",
    C.isle_run_mmap(nil, 4096, 3 --[[READ|WRITE]], 0x21 --[[SHARED|ANONYMOUS]], -1, 0))
assert(ffi.cast("intptr_t", shared) ~= -1, "mmap failed")
local function phase(name, deadline)
    name = name:sub(1, 499)
    ffi.copy(shared.name, name, #name + 1)
    shared.deadline = deadline
    C.isle_run_alarm(deadline)
end

io.stdout:flush()
io.stderr:flush()
local pid = C.isle_run_fork()
assert(pid >= 0, "fork failed")

if pid > 0 then
    -- The parent: wait, enforce the suite bound, report a death by signal.
    local status = ffi.new("int[1]")
    local waited = 0
    local function reap(block)
        local r
        repeat r = C.isle_run_waitpid(pid, status, block and 0 or WNOHANG) until r ~= -1 or ffi.errno() ~= 4 -- EINTR
        return r == pid
    end
    local timed_out = false
    while not reap(false) do
        C.isle_run_poll(nil, 0, 100)
        waited = waited + 0.1
        if waited >= SUITE_TIMEOUT then
            timed_out = true
            C.isle_run_kill(pid, SIGKILL)
            reap(true)
            break
        end
    end
    local st = status[0]
    local sig = bit.band(st, 0x7f)
    if sig == 0 and not timed_out then os.exit(bit.band(bit.rshift(st, 8), 0xff)) end
    local name = ffi.string(shared.name)
    local why
    if timed_out then
        why = ("no result within %d s (suite timeout)"):format(SUITE_TIMEOUT)
    elseif sig == SIGALRM then
        why = ("no result within %d s (deadline)"):format(shared.deadline)
    else
        why = ("died by signal %d"):format(sig)
    end
    io.stdout:flush()
    io.stderr:write(("\nFAILED: %s %s: %s\n"):format(suite, name, why))
    os.exit(128 + (timed_out and SIGKILL or sig))
end

-- The child: end with the parent, let SIGALRM kill, run the suite.
C.isle_run_prctl(PR_SET_PDEATHSIG, SIGKILL)
C.isle_run_signal(SIGALRM, nil) -- SIG_DFL, even if it was inherited ignored
local set = ffi.new("uint8_t[128]") -- sigset_t
C.isle_run_sigemptyset(set)
C.isle_run_sigaddset(set, SIGALRM)
C.isle_run_sigprocmask(SIG_UNBLOCK, set, nil) -- isle threads inherit this mask
io.stdout:setvbuf("no") -- what luaunit printed survives a kill

-- luaunit reads its arguments from the global `arg` when it loads.
arg = { [0] = suite, select(2, ...) }
local lu = require("luaunit")

local function deadline_of(class, method)
    local d = class and rawget(class, "deadline")
    if type(d) == "table" then d = d[method] end
    return d or DEFAULT
end

local exec = lu.LuaUnit.execOneFunction
function lu.LuaUnit.execOneFunction(self, className, methodName, classInstance, methodInstance)
    local name = className and (className .. "." .. methodName) or methodName
    phase(name, deadline_of(classInstance, methodName))
    exec(self, className, methodName, classInstance, methodInstance)
    phase("after " .. name .. " (class teardown or process exit)", DEFAULT)
end

phase("loading " .. suite, DEFAULT)
local chunk = assert(loadfile(suite))
chunk(select(2, ...))
