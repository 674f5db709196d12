-- isle inside a real nginx against ngx.run_worker_thread, doing the same work
-- in the same nginx (one worker process, so every figure is per worker):
--
--   * sleep batch: 50 concurrent requests, each `h:call("nap", 0.1)` on 1 and
--     on 4 isles (`nap` is isle.sleep, which yields the job) vs
--     `ngx.run_worker_thread(pool, "bench_nginx_jobs", "nap", 0.1)` (a thread
--     blocked for 0.1 s) with threads=N and threads=50;
--   * CPU batch: 50 concurrent requests of ~100 ms of the same loop on N isles
--     round robin vs run_worker_thread with threads=N (N = cores, >= 2);
--   * a plain request (/ping) every few ms on its own keep-alive connection
--     meanwhile, and alone (idle): its latency;
--   * the worker's CPU time over 2 s idle after the batches.
--
-- The client is this script: non-blocking sockets and poll(2), no delay of
-- its own. Everything has a deadline. See bench/README.md ("nginx").
--
--   make bench-nginx                      (builds what it needs first)
--   luajit bench/nginx.lua [--quick] [--reps N]
local ROOT = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
if ROOT:sub(1, 1) ~= "/" then
    local cwd = os.getenv("PWD") or io.popen("pwd"):read("*l")
    ROOT = (ROOT == "." and cwd) or (cwd .. "/" .. ROOT)
end
package.path = ROOT .. "/bench/?.lua;" .. ROOT .. "/?.lua;" .. ROOT .. "/lua/?.lua;"
    .. ROOT .. "/ffi/?.lua;" .. package.path
package.cpath = ROOT .. "/build/?.so;" .. package.cpath

local ffi = require("ffi")
local bit = require("bit")
local lib = require("lib")
local jobs = require("bench_nginx_jobs")
local H = dofile(ROOT .. "/test/nginx/harness.lua")
local now, sh, read_file = H.now, H.sh, H.read_file

-- Options ---------------------------------------------------------------------------

local USAGE = "usage: luajit bench/nginx.lua [--quick] [--reps N]"
local REPS, QUICK = nil, false
do
    local i = 1
    while arg and arg[i] do
        local a = arg[i]
        if a == "--quick" then QUICK = true
        elseif a == "--reps" then
            REPS = tonumber(arg[i + 1])
            if not REPS or REPS < 1 then io.stderr:write("--reps needs a positive number\n", USAGE, "\n") os.exit(2) end
            i = i + 1
        elseif a == "-h" or a == "--help" then print(USAGE) os.exit(0)
        else io.stderr:write("unknown option ", a, "\n", USAGE, "\n") os.exit(2) end
        i = i + 1
    end
end
REPS = REPS or (QUICK and 2 or 5)

local CONC = 50                 -- requests in a batch, all in flight at once
local NAP = 0.1                 -- seconds each request of the sleep batch sleeps
local WORK = 0.1                -- seconds of CPU each request of the CPU batch burns
local NCPU = math.max(2, tonumber(sh("nproc"):match("%d+")) or 2)
local NISLES = math.max(4, NCPU)
local WIDE = CONC               -- threads of the pool that can sleep the whole batch at once
local PROBE_EVERY = 0.003       -- seconds between plain requests
local IDLE_PROBE = 1.0          -- seconds of probing alone per repetition
local BATCH_DEADLINE = 60       -- seconds a batch may take before the bench fails
local IDLE_CPU_SECS = 2

local function log(...)
    io.stderr:write(table.concat({ ... }), "\n")
    io.stderr:flush()
end

-- The client: sockets and poll(2) ----------------------------------------------------

ffi.cdef [[
struct bn_pollfd { int fd; short events; short revents; };
struct bn_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
int bn_poll(struct bn_pollfd *fds, unsigned long n, int ms) __asm__("poll");
int bn_socket(int domain, int type, int protocol) __asm__("socket");
int bn_connect(int fd, const struct bn_sockaddr_in *addr, unsigned len) __asm__("connect");
long bn_send(int fd, const void *buf, unsigned long len, int flags) __asm__("send");
long bn_recv(int fd, void *buf, unsigned long len, int flags) __asm__("recv");
int bn_close(int fd) __asm__("close");
int bn_setsockopt(int fd, int level, int name, const void *val, unsigned len) __asm__("setsockopt");
int bn_getsockopt(int fd, int level, int name, void *val, unsigned *len) __asm__("getsockopt");
]]
local C = ffi.C
local AF_INET, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 2, 1, 2048, 524288
local POLLIN, POLLOUT = 1, 4
local EINTR, EAGAIN, EINPROGRESS = 4, 11, 115
local MSG_NOSIGNAL = 0x4000
local RBUF_SIZE = 65536
local RBUF = ffi.new("uint8_t[?]", RBUF_SIZE)
local ONE = ffi.new("int[1]", 1)

local function errno_text(what)
    local e = ffi.errno()
    return ("%s failed (errno %d)"):format(what, e)
end

-- A non-blocking TCP connection to 127.0.0.1:port, being established.
local function open_conn(port)
    local fd = C.bn_socket(AF_INET, SOCK_STREAM + SOCK_NONBLOCK + SOCK_CLOEXEC, 0)
    if fd < 0 then error(errno_text("socket"), 0) end
    C.bn_setsockopt(fd, 6 --[[IPPROTO_TCP]], 1 --[[TCP_NODELAY]], ONE, 4)
    local sa = ffi.new("struct bn_sockaddr_in", { family = AF_INET, port = bit.rshift(bit.bswap(port), 16),
        addr = 0x0100007f })
    if C.bn_connect(fd, sa, ffi.sizeof(sa)) ~= 0 and ffi.errno() ~= EINPROGRESS then
        local msg = errno_text("connect to 127.0.0.1:" .. port)
        C.bn_close(fd)
        error(msg, 0)
    end
    return fd
end

-- Waits until every fd of `fds` is connected; raises naming `what` past `deadline`.
local function wait_connected(fds, deadline, what)
    local n = #fds
    local pfds = ffi.new("struct bn_pollfd[?]", n)
    local ready = {}
    local left = n
    while left > 0 do
        local m, map = 0, {}
        for i = 1, n do
            if not ready[i] then
                pfds[m].fd, pfds[m].events, pfds[m].revents = fds[i], POLLOUT, 0
                map[m] = i
                m = m + 1
            end
        end
        local t = now()
        if t > deadline then error(("%s: %d of %d connections not established in time"):format(what, left, n), 0) end
        local r = C.bn_poll(pfds, m, math.ceil((deadline - t) * 1000))
        if r < 0 and ffi.errno() ~= EINTR then error(errno_text("poll"), 0) end
        for j = 0, m - 1 do
            if pfds[j].revents ~= 0 then
                local err, len = ffi.new("int[1]"), ffi.new("unsigned[1]", 4)
                C.bn_getsockopt(pfds[j].fd, 1 --[[SOL_SOCKET]], 4 --[[SO_ERROR]], err, len)
                if err[0] ~= 0 then error(("%s: connect failed (errno %d)"):format(what, err[0]), 0) end
                ready[map[j]] = true
                left = left - 1
            end
        end
    end
end

local function send_all(fd, s, what)
    local n = C.bn_send(fd, s, #s, MSG_NOSIGNAL)
    -- A request is far smaller than a fresh socket's send buffer.
    if n ~= #s then error(("%s: %s"):format(what, n < 0 and errno_text("send") or "short send"), 0) end
end

-- Reads what has arrived on c.fd into c.buf; sets c.eof at end of stream.
local function read_some(c, what)
    while true do
        local n = C.bn_recv(c.fd, RBUF, RBUF_SIZE, 0)
        if n > 0 then
            c.buf = c.buf .. ffi.string(RBUF, n)
        elseif n == 0 then
            c.eof = true
            return
        else
            local e = ffi.errno()
            if e == EAGAIN then return end
            if e ~= EINTR then error(("%s: %s"):format(what, errno_text("recv")), 0) end
        end
    end
end

-- The first HTTP response in buf: status, body, whether the server closes the
-- connection after it; nil while incomplete. Only the status line,
-- Content-Length, chunked encoding and Connection: close are understood.
local function parse_response(buf, eof)
    local hend = buf:find("\r\n\r\n", 1, true)
    if not hend then return nil end
    local head = buf:sub(1, hend + 1):lower()
    local status = tonumber(head:match("^http/1%.%d (%d%d%d)"))
    local close = head:find("\r\nconnection: *close\r\n") ~= nil
    local pos = hend + 4
    local cl = tonumber(head:match("\r\ncontent%-length: *(%d+)\r\n"))
    if cl then
        if #buf < pos - 1 + cl then return nil end
        return status, buf:sub(pos, pos - 1 + cl), close
    end
    if head:find("\r\ntransfer%-encoding: *chunked\r\n") then
        local body = {}
        while true do
            local lend = buf:find("\r\n", pos, true)
            if not lend then return nil end
            local size = tonumber(buf:sub(pos, lend - 1):match("^%x+"), 16)
            if not size then return status or 0, "bad chunk size", true end
            if size == 0 then
                if #buf < lend + 3 then return nil end -- the empty trailer's CRLF
                return status, table.concat(body), close
            end
            if #buf < lend + 1 + size + 2 then return nil end
            body[#body + 1] = buf:sub(lend + 2, lend + 1 + size)
            pos = lend + 2 + size + 2
        end
    end
    if eof then return status, buf:sub(pos), true end
    return nil
end

-- The probe: plain requests on one keep-alive connection, one in flight at a
-- time, the next PROBE_EVERY after the previous was sent (or at once if the
-- previous took longer). Latency: request sent -> response complete.
local Probe = {}
Probe.__index = Probe

local PROBE_REQ = "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

local function new_probe(port)
    local p = setmetatable({ port = port, state = "idle", next_at = 0, samples = {}, buf = "",
        reconnects = 0 }, Probe)
    p:connect()
    return p
end

function Probe:connect()
    if self.fd then C.bn_close(self.fd) end
    self.fd = open_conn(self.port)
    wait_connected({ self.fd }, now() + 10, "probe connection")
    self.buf, self.eof, self.state = "", false, "idle"
end

function Probe:send(t)
    send_all(self.fd, PROBE_REQ, "probe /ping")
    self.t_send, self.state, self.buf = t, "waiting", ""
end

-- The probe's fd is readable at time t.
function Probe:readable(t)
    read_some(self, "probe /ping")
    if self.state == "idle" then
        -- Nothing was asked: the server closed an idle keep-alive connection.
        if self.eof then self.reconnects = self.reconnects + 1 self:connect() return end
        error("probe /ping: unexpected data from nginx: " .. self.buf:sub(1, 200), 0)
    end
    local status, body, close = parse_response(self.buf, self.eof)
    if not status then
        if self.eof then error("probe /ping: connection closed before a full response: " .. self.buf:sub(1, 200), 0) end
        return
    end
    if status ~= 200 or not body:find("^pong") then
        error(("probe /ping: status %s, body %q"):format(tostring(status), body:sub(1, 200)), 0)
    end
    self.samples[#self.samples + 1] = t - self.t_send
    self.state, self.next_at = "idle", self.t_send + PROBE_EVERY
    if close or self.eof then self.reconnects = self.reconnects + 1 self:connect() end
end

-- Runs the poll loop over the pending connections of `conns` and the probe
-- until every connection has its response (or, with no conns, until `stop_at`),
-- then until the probe's request in flight is answered. Past `deadline` it
-- raises, naming the label, the requests still missing and the probe's state.
local function drive(label, conns, probe, stop_at, deadline)
    local pfds = ffi.new("struct bn_pollfd[?]", #conns + 1)
    local pending = 0
    for _, c in ipairs(conns) do if not c.done then pending = pending + 1 end end
    local function stuck()
        local missing = {}
        for _, c in ipairs(conns) do
            if not c.done and #missing < 5 then
                missing[#missing + 1] = ("#%d %s (%d bytes received)"):format(c.i, c.path, #c.buf)
            end
        end
        local p = probe and (probe.state == "waiting"
            and ("probe /ping waiting for %.1f s"):format(now() - probe.t_send) or "probe idle") or "no probe"
        return ("%s: stuck, no result within %g s: %d of %d responses missing (%s); %s")
            :format(label, BATCH_DEADLINE, pending, #conns, table.concat(missing, ", "), p)
    end
    while true do
        local t = now()
        local batch_over = (#conns > 0 and pending == 0) or (stop_at and t >= stop_at)
        if batch_over and (not probe or probe.state == "idle") then return end
        if t > deadline then error(stuck(), 0) end
        if probe and not batch_over and probe.state == "idle" and t >= probe.next_at then probe:send(t) end
        local m, map = 0, {}
        for _, c in ipairs(conns) do
            if not c.done then
                pfds[m].fd, pfds[m].events, pfds[m].revents = c.fd, POLLIN, 0
                map[m] = c
                m = m + 1
            end
        end
        local probe_slot
        if probe then
            pfds[m].fd, pfds[m].events, pfds[m].revents = probe.fd, POLLIN, 0
            probe_slot = m
            m = m + 1
        end
        local wake = deadline
        if probe and probe.state == "idle" and not batch_over then wake = math.min(wake, probe.next_at) end
        if stop_at then wake = math.min(wake, stop_at) end
        local r = C.bn_poll(pfds, m, math.max(0, math.ceil((wake - t) * 1000)))
        if r < 0 and ffi.errno() ~= EINTR then error(errno_text("poll"), 0) end
        if r > 0 then
            local tr = now()
            for j = 0, m - 1 do
                if pfds[j].revents ~= 0 then
                    if j == probe_slot then
                        probe:readable(tr)
                    else
                        local c = map[j]
                        read_some(c, label .. " request #" .. c.i)
                        local status, body = parse_response(c.buf, c.eof)
                        if status or c.eof then
                            c.done, c.t_done, c.status, c.body = true, tr, status, body
                            if not status then c.status, c.body = 0, "connection closed: " .. c.buf:sub(1, 200) end
                            C.bn_close(c.fd)
                            pending = pending - 1
                        end
                    end
                end
            end
        end
    end
end

-- One batch: `n` connections opened, then all requests sent at once (paths
-- from path(i)), then every response awaited while the probe runs. Returns the
-- seconds from the first request sent to the last response received, and the
-- probe's samples. A response other than 200 with a body accepted by
-- check(body) fails the bench.
local function batch(port, probe, label, n, path, check)
    local conns, fds = {}, {}
    for i = 1, n do
        local p = path(i)
        conns[i] = { i = i, path = p, buf = "", fd = open_conn(port),
            req = "GET " .. p .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" }
        fds[i] = conns[i].fd
    end
    wait_connected(fds, now() + 10, label)
    if probe then probe.samples, probe.next_at = {}, 0 end
    local t0 = now()
    for _, c in ipairs(conns) do send_all(c.fd, c.req, label .. " request #" .. c.i) end
    local ok, err = pcall(drive, label, conns, probe, nil, t0 + BATCH_DEADLINE)
    if not ok then
        for _, c in ipairs(conns) do if not c.done then C.bn_close(c.fd) end end
        error(err, 0)
    end
    local last = t0
    for _, c in ipairs(conns) do
        if c.status ~= 200 or not check(c.body) then
            error(("%s: request #%d %s answered %s: %q"):format(label, c.i, c.path, tostring(c.status),
                tostring(c.body):sub(1, 300)), 0)
        end
        if c.t_done > last then last = c.t_done end
    end
    return last - t0, probe and probe.samples or {}
end

-- Probing alone for `secs`: the idle latency.
local function idle_probe(probe, secs)
    probe.samples, probe.next_at = {}, 0
    local t0 = now()
    drive("idle probe", {}, probe, t0 + secs, t0 + secs + BATCH_DEADLINE)
    return probe.samples
end

-- Statistics --------------------------------------------------------------------------

local function pct(list, p)
    if #list == 0 then return nil end
    local s = {}
    for i = 1, #list do s[i] = list[i] end
    table.sort(s)
    return s[math.max(1, math.min(#s, math.ceil(#s * p)))]
end

local function ms(x) return x and x * 1000 end

-- The worker's CPU: utime+stime of its whole thread group (/proc/PID/stat, in
-- ticks of 1/100 s), the sum of every thread's run time in ns
-- (/proc/PID/task/*/schedstat) and how often the main thread was switched
-- out voluntarily (it sleeps in epoll_wait: each one is a wake-up).
local function worker_cpu(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    if not stat then error("worker " .. pid .. " is gone", 0) end
    local f = {}
    for w in stat:match("%)%s+(.*)$"):gmatch("%S+") do f[#f + 1] = w end
    local ticks = tonumber(f[12]) + tonumber(f[13])
    local run_ns = 0
    local tids = sh("ls /proc/" .. pid .. "/task")
    local nthreads = 0
    for tid in tids:gmatch("%d+") do
        local ss = read_file("/proc/" .. pid .. "/task/" .. tid .. "/schedstat")
        if ss then run_ns = run_ns + tonumber(ss:match("^%d+")) nthreads = nthreads + 1 end
    end
    local status = read_file("/proc/" .. pid .. "/task/" .. pid .. "/status") or ""
    return { ticks = ticks, run = run_ns * 1e-9, threads = nthreads,
        wakeups = tonumber(status:match("voluntary_ctxt_switches:%s*(%d+)")) or 0 }
end

-- nginx ---------------------------------------------------------------------------------

local MAIN = ([[
thread_pool isle_bench threads=%d max_queue=1024;
thread_pool isle_bench_wide threads=%d max_queue=1024;
]]):format(NCPU, WIDE)

-- The probe's connection lives through the whole bench.
local HTTP = [[
    keepalive_requests 1000000;
    keepalive_timeout 300s;
]]

-- What a user writes: isles spawned per worker, handlers calling them.
local INIT_WORKER = ([=[
        local isle = require("isle")
        ISLES = { next = 0 }
        for i = 1, %d do
            ISLES[i] = isle.spawn{
                init = function(path)
                    package.path = path
                    local isle = require("isle")
                    burn = require("bench_nginx_jobs").burn
                    function nap(s) isle.sleep(s) return true end
                end,
                args = { package.path },
            }
        end
]=]):format(NISLES)

local EXIT_WORKER = [[
        for i = 1, #ISLES do ISLES[i]:close() end
]]

local LOCATIONS = [=[
        # /isle?k=K&f=nap|burn&a=ARG: h:call(f, a) on the next of the first K isles.
        location = /isle {
            content_by_lua_block {
                local args = ngx.req.get_uri_args()
                ISLES.next = ISLES.next % tonumber(args.k) + 1
                local h = ISLES[ISLES.next]
                local ok, r = pcall(h.call, h, args.f, tonumber(args.a))
                local body = ok and ("ok " .. tostring(r)) or ("isle error: " .. tostring(r))
                if not ok then ngx.status = 500 end
                ngx.header.content_length = #body
                ngx.print(body)
            }
        }
        # /rwt?pool=P&f=nap|burn&a=ARG: the same function in nginx's thread pool P.
        location = /rwt {
            content_by_lua_block {
                local args = ngx.req.get_uri_args()
                local ok, r = ngx.run_worker_thread(args.pool, "bench_nginx_jobs", args.f, tonumber(args.a))
                local body = ok and ("ok " .. tostring(r)) or ("run_worker_thread error: " .. tostring(r))
                if not ok then ngx.status = 500 end
                ngx.header.content_length = #body
                ngx.print(body)
            }
        }
        location = /info {
            content_by_lua_block {
                require("isle")
                local body = table.concat({
                    "adapter=" .. (package.loaded["isle.ngx"] and "loaded" or "none"),
                    "ngx_lua=" .. tostring(ngx.config.ngx_lua_version),
                    "nginx=" .. tostring(ngx.config.nginx_version),
                    "jit=" .. jit.version,
                }, " ")
                ngx.header.content_length = #body
                ngx.print(body)
            }
        }
]=]

-- The bench -------------------------------------------------------------------------------

-- Iterations of jobs.burn that take WORK seconds inside nginx: timed by
-- jobs.time_burn in a thread of the pool (nginx's luajit2, the JIT on, the
-- worker left free), the fastest of three rounds (a busy neighbour only slows
-- it down). Returns the count and the loop's rate.
local function calibrate(ngx)
    local function time_burn(n)
        local body, code = ngx:get(("/rwt?pool=isle_bench&f=time_burn&a=%d"):format(n), 30)
        local secs = code == 200 and tonumber(body:match("^ok (%S+)"))
        if not secs then error(("calibration: /rwt time_burn %d answered %d: %s"):format(n, code, body), 0) end
        return secs
    end
    local n = 1000000
    local secs = time_burn(n)
    while secs < 0.05 do
        if n > 1e10 then error("calibration: the loop does not slow down with n", 0) end
        n = n * 4
        secs = time_burn(n)
    end
    secs = math.min(secs, time_burn(n), time_burn(n))
    return math.floor(n * WORK / secs), n / secs
end

local function ok_true(body) return body == "ok true" end

local function run(ngx)
    local port = ngx.port
    local workers = ngx:workers()
    if #workers ~= 1 then error("expected one nginx worker, found " .. #workers, 0) end
    local wpid = workers[1]
    local info = ngx:get("/info", 10)
    local adapter = info:match("adapter=(%S+)") == "loaded"
    local BURN, rate = calibrate(ngx)
    local burn_sum = "ok " .. jobs.burn(BURN)
    local function ok_burn(body) return body == burn_sum end
    local function ok_warm(body) return body:find("^ok ") ~= nil end

    log(("nginx worker %d, %d cores, %s"):format(wpid, NCPU, info))
    log(("burn: %d iterations ~ %g ms in a pool thread (%.0f M iter/s)"):format(BURN, WORK * 1000, rate / 1e6))

    local probe = new_probe(port)
    local function path_isle(k, f, a) return function() return ("/isle?k=%d&f=%s&a=%s"):format(k, f, a) end end
    local function path_rwt(pool, f, a) return function() return ("/rwt?pool=%s&f=%s&a=%s"):format(pool, f, a) end end

    -- Warm-up: every kind of request, every isle and every pool thread once at
    -- least (thread-pool VMs load the module on first use), short work.
    log("warm-up")
    for _ = 1, 5 do batch(port, nil, "warm-up /ping", 1, function() return "/ping" end, function(b) return b:find("^pong") end) end
    batch(port, nil, "warm-up isle nap", CONC, path_isle(NISLES, "nap", 0.01), ok_true)
    batch(port, nil, "warm-up rwt nap wide", CONC, path_rwt("isle_bench_wide", "nap", 0.01), ok_true)
    batch(port, nil, "warm-up rwt nap", 2 * NCPU, path_rwt("isle_bench", "nap", 0.01), ok_true)
    batch(port, nil, "warm-up isle burn", 2 * NISLES, path_isle(NISLES, "burn", math.floor(BURN / 10)), ok_warm)
    batch(port, nil, "warm-up rwt burn", 4 * NCPU, path_rwt("isle_bench", "burn", math.floor(BURN / 10)), ok_warm)

    -- One CPU request alone, each way: what 100 ms of the loop takes inside nginx.
    local alone = { isle = {}, rwt = {} }
    for _ = 1, 3 do
        alone.isle[#alone.isle + 1] = batch(port, nil, "one burn, isle", 1, path_isle(1, "burn", BURN), ok_burn)
        alone.rwt[#alone.rwt + 1] = batch(port, nil, "one burn, rwt", 1, path_rwt("isle_bench", "burn", BURN), ok_burn)
    end

    local BATCHES = {
        { id = "sleep_isle1", label = ("sleep %d x %g s, isle x1"):format(CONC, NAP),
          path = path_isle(1, "nap", NAP), check = ok_true },
        { id = "sleep_isle4", label = ("sleep %d x %g s, isle x4"):format(CONC, NAP),
          path = path_isle(4, "nap", NAP), check = ok_true },
        { id = "sleep_rwtN", label = ("sleep %d x %g s, run_worker_thread threads=%d"):format(CONC, NAP, NCPU),
          path = path_rwt("isle_bench", "nap", NAP), check = ok_true },
        { id = "sleep_rwt50", label = ("sleep %d x %g s, run_worker_thread threads=%d"):format(CONC, NAP, WIDE),
          path = path_rwt("isle_bench_wide", "nap", NAP), check = ok_true },
        { id = "cpu_isle", label = ("cpu %d x %g ms, isle x%d"):format(CONC, WORK * 1000, NCPU),
          path = path_isle(NCPU, "burn", BURN), check = ok_burn },
        { id = "cpu_rwt", label = ("cpu %d x %g ms, run_worker_thread threads=%d"):format(CONC, WORK * 1000, NCPU),
          path = path_rwt("isle_bench", "burn", BURN), check = ok_burn },
    }
    local times, lat = {}, { idle = {} }
    for _, b in ipairs(BATCHES) do times[b.id], lat[b.id] = {}, {} end
    local function add(dst, src) for _, v in ipairs(src) do dst[#dst + 1] = v end end

    for rep = 1, REPS do
        local idle = idle_probe(probe, IDLE_PROBE)
        add(lat.idle, idle)
        log(("rep %d/%d  idle probe: %d samples, p99 %.2f ms"):format(rep, REPS, #idle, ms(pct(idle, 0.99))))
        for _, b in ipairs(BATCHES) do
            local t, samples = batch(port, probe, b.label, CONC, b.path, b.check)
            times[b.id][rep] = t
            add(lat[b.id], samples)
            log(("rep %d/%d  %-46s %7.3f s   probe: %4d samples, p99 %8.2f ms, max %8.2f ms")
                :format(rep, REPS, b.label, t, #samples, ms(pct(samples, 0.99)), ms(pct(samples, 1))))
        end
    end

    -- Idle worker CPU, after the batches (the probe is quiet meanwhile).
    H.sleep(0.2)
    local c0, w0 = worker_cpu(wpid), now()
    H.sleep(IDLE_CPU_SECS)
    local c1, w1 = worker_cpu(wpid), now()
    C.bn_close(probe.fd)

    return {
        batches = BATCHES, times = times, lat = lat, alone = alone, adapter = adapter, info = info,
        burn = BURN, rate = rate, probe_reconnects = probe.reconnects, wpid = wpid,
        idle_cpu = { wall = w1 - w0, ticks = c1.ticks - c0.ticks, run = c1.run - c0.run,
            wakeups = c1.wakeups - c0.wakeups, threads = c1.threads, total = c1.run },
    }
end

-- Report ----------------------------------------------------------------------------------

local function f3(x) return x and ("%.3f"):format(x) or "-" end
local function f2(x) return x and ("%.2f"):format(x) or "-" end

local function report(R)
    local T, L = R.times, R.lat
    local med = lib.median
    local function mm(id) local lo, hi = lib.minmax(T[id]) return lo, med(T[id]), hi end
    local function verdict(ok) return ok and "met" or "missed" end

    local rows = {}
    local sleep_note = R.adapter and "" or "h:call blocks the worker (no isle.ngx adapter)"
    for _, b in ipairs(R.batches) do
        local lo, m, hi = mm(b.id)
        local target, result, note = "-", "-", ""
        if b.id == "sleep_isle1" or b.id == "sleep_isle4" then
            target, result, note = "<= 0.15 s", verdict(m <= 0.15), sleep_note
        elseif b.id == "sleep_rwtN" then
            note = ("%d threads: about %d x %g s"):format(NCPU, math.ceil(CONC / NCPU), NAP)
        elseif b.id == "sleep_rwt50" then
            note = "one thread per request"
        elseif b.id == "cpu_isle" then
            note = R.adapter and "" or "h:call blocks the worker: one call at a time"
        elseif b.id == "cpu_rwt" then
            note = ("ideal %d x %g s / %d cores = %.2f s"):format(CONC, WORK, NCPU, CONC * WORK / NCPU)
        end
        rows[#rows + 1] = { b.label, f3(lo), f3(m), f3(hi), "s", target, result, note }
    end
    -- Ratio per repetition (the two CPU batches ran back to back), then the median.
    local ratios = {}
    for rep = 1, #T.cpu_isle do ratios[rep] = T.cpu_isle[rep] / T.cpu_rwt[rep] end
    local rlo, rhi = lib.minmax(ratios)
    local rmed = med(ratios)
    rows[#rows + 1] = { "cpu ratio isle / run_worker_thread", f2(rlo), f2(rmed), f2(rhi), "x",
        "<= 1.1x", verdict(rmed <= 1.1), "per repetition, then min/median/max"
            .. (R.noisy and "; NOISY: other processes took cores from the pool threads" or "") }

    print(("\n## Batches (%d requests at once, %d repetitions; min / median / max)"):format(CONC, #T.cpu_isle))
    print(lib.render({ "batch", "min", "median", "max", "unit", "target", "result", "note" }, rows))

    local lrows = {}
    local function lrow(name, list, target, result, note)
        lrows[#lrows + 1] = { name, f2(ms(pct(list, 0.5))), f2(ms(pct(list, 0.99))), f2(ms(pct(list, 1))),
            tostring(#list), target or "-", result or "-", note or "" }
    end
    lrow("idle (probe alone)", L.idle)
    local rwt_cpu_p99 = pct(L.cpu_rwt, 0.99)
    for _, b in ipairs(R.batches) do
        local p99 = pct(L[b.id], 0.99)
        if b.id == "sleep_isle1" or b.id == "sleep_isle4" then
            lrow("during " .. b.label, L[b.id], "p99 <= 5 ms", verdict(p99 and p99 <= 0.005))
        elseif b.id == "cpu_isle" then
            -- "No slower than with run_worker_thread": within 10% or 1 ms of its p99.
            local lim = rwt_cpu_p99 and math.max(rwt_cpu_p99 * 1.1, rwt_cpu_p99 + 0.001)
            lrow("during " .. b.label, L[b.id], "p99 <= rwt's", verdict(p99 and lim and p99 <= lim),
                lim and ("limit %.2f ms (rwt p99 +10%% or +1 ms)"):format(ms(lim)) or "")
        else
            lrow("during " .. b.label, L[b.id])
        end
    end
    print(("\n## Plain request /ping meanwhile (one keep-alive connection, one request in flight, every %g ms; all repetitions)")
        :format(PROBE_EVERY * 1000))
    print(lib.render({ "probe", "p50 ms", "p99 ms", "max ms", "samples", "target", "result", "note" }, lrows))

    local ic = R.idle_cpu
    local pct_ticks = 100 * (ic.ticks / 100) / ic.wall
    local pct_run = 100 * ic.run / ic.wall
    print(("\n## Idle worker after the batches (%.2f s, worker %d, %d threads: %d isles, %d + %d pool threads)")
        :format(ic.wall, R.wpid, ic.threads, NISLES, NCPU, WIDE))
    print(lib.render({ "figure", "value", "unit", "target", "result", "note" }, {
        { "worker CPU, utime+stime (/proc/PID/stat)", f3(pct_ticks), "% core", "< 1% core",
          verdict(pct_ticks < 1), ("%d ticks of 10 ms"):format(ic.ticks) },
        { "worker CPU, all threads' run time (schedstat)", f3(pct_run), "% core", "-", "-",
          ("ns resolution; %.1f s in all since the worker started"):format(ic.total) },
        { "main thread wake-ups (voluntary switches)", tostring(ic.wakeups), "count", "-", "-",
          ("over %.2f s"):format(ic.wall) },
    }))

    print(("\none CPU request alone, inside nginx (median of 3): isle %.1f ms, run_worker_thread %.1f ms; "
        .. "calibrated in a pool thread: %d iterations ~ %g ms"):format(ms(med(R.alone.isle)), ms(med(R.alone.rwt)), R.burn, WORK * 1000))
    if R.probe_reconnects > 0 then print(("probe reconnected %d times"):format(R.probe_reconnects)) end
end

-- Main ----------------------------------------------------------------------------------

local problem = H.setup_problem()
if problem then
    io.stderr:write("bench/nginx.lua: nginx cannot be set up: ", problem, "\n")
    os.exit(1)
end

-- How many cores other processes keep busy (bench/lib.lua; it sleeps through isle).
local function busy_cores()
    return pcall(require, "isle") and lib.busy_cores(0.5, NCPU) or nil
end
local function busy_text(busy, when)
    return busy and (", %.2f cores busy %s%s"):format(busy, when, busy > 0.3 and ": NOISY" or "") or ""
end

local busy_before = busy_cores()
print(("# isle in nginx vs ngx.run_worker_thread  %s  (%d cores%s)"):format(os.date("%Y-%m-%d %H:%M"), NCPU,
    busy_text(busy_before, "before")))

local R
H.with_nginx({
    workers = 1, main = MAIN, http = HTTP, package_path = ROOT .. "/bench/?.lua",
    init_worker = INIT_WORKER, exit_worker = EXIT_WORKER, locations = LOCATIONS,
}, function(ngx) R = run(ngx) end)

local busy_after = busy_cores()
print(("# %s; isle.ngx adapter %s%s"):format(R.info, R.adapter and "LOADED: h:call yields to nginx"
    or "NOT loaded: h:call blocks the worker (numbers before the adapter)", busy_text(busy_after, "after")))
R.noisy = (busy_before or 0) > 0.3 or (busy_after or 0) > 0.3
report(R)
