-- The nginx harness shared by test/nginx/*.lua and bench/nginx.lua: Debian's
-- nginx running OpenResty's Lua module and luajit2, unpacked privately by
-- `make nginx-deps` (docs/testing.md, "Real hosts"). Every nginx is this
-- process's child, started on 127.0.0.1 only, stopped by its pid, and every
-- wait has a deadline.
local lu = require("luaunit")
local ffi = require("ffi")

ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } isle_ngx_timespec;
int clock_gettime(int clk, isle_ngx_timespec *ts);
int poll(void *fds, unsigned long n, int timeout);
int fork(void);
int execv(const char *path, char *const argv[]);
int setenv(const char *name, const char *value, int overwrite);
int open(const char *path, int flags, int mode);
int dup2(int old, int new);
void _exit(int status);
int waitpid(int pid, int *status, int options);
int kill(int pid, int sig);
int socket(int domain, int type, int protocol);
int bind(int fd, const void *addr, unsigned len);
int getsockname(int fd, void *addr, unsigned *len);
int close(int fd);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
struct isle_ngx_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
]]
local C = ffi.C
local SIGKILL, SIGTERM, SIGHUP, SIGQUIT = 9, 15, 1, 3

local ROOT = os.getenv("ISLE_ROOT")
    or debug.getinfo(1, "S").source:match("^@(/.*)/test/nginx/[^/]*$")
    or io.popen("pwd"):read("*l")
local NGINX = os.getenv("ISLE_NGINX") or "/usr/sbin/nginx"
local NGX_PREFIX = ROOT .. "/build/nginx-lua"
local MODULES = NGX_PREFIX .. "/usr/lib/nginx/modules/"
local LJ2_LIB = ROOT .. "/build/luajit2/usr/lib/x86_64-linux-gnu"
local RELOADS = tonumber(os.getenv("ISLE_NGINX_RELOADS")) or 20

-- Small utilities ----------------------------------------------------------------

local function now()
    local ts = ffi.new("isle_ngx_timespec")
    C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function sleep(s) C.poll(nil, 0, math.floor(s * 1000)) end

local sh = require("test.helpers").sh -- output, exit code

local function read_file(path)
    local f = io.open(path)
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

-- Polls cond until it returns a true value or `timeout` seconds pass.
local function eventually(cond, timeout)
    local deadline = now() + timeout
    local v = cond()
    while not v and now() < deadline do
        sleep(0.02)
        v = cond()
    end
    return v
end

-- A process is alive while /proc has it and it is not a zombie.
local function alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function children(pid)
    local out, pids = sh("pgrep -P " .. pid), {}
    for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
    table.sort(pids)
    return pids
end

-- A port on 127.0.0.1 that nothing listens on now (the kernel picks it).
local function free_port()
    local fd = C.socket(2, 1, 0)
    assert(fd >= 0, "socket")
    local sa = ffi.new("struct isle_ngx_sockaddr_in", { family = 2, port = 0, addr = 0x0100007f })
    assert(C.bind(fd, sa, ffi.sizeof(sa)) == 0, "bind")
    local len = ffi.new("unsigned[1]", ffi.sizeof(sa))
    assert(C.getsockname(fd, sa, len) == 0, "getsockname")
    C.close(fd)
    return bit.rshift(bit.bswap(sa.port), 16)
end

-- Starts argv[1] with argv as a child of this process, stdout and stderr to
-- `out`, `env` added to the environment; returns its pid.
local function spawn(argv, env, out)
    local cargv = ffi.new("char *[?]", #argv + 1)
    local keep = {}
    for i, a in ipairs(argv) do
        keep[i] = ffi.new("char[?]", #a + 1, a)
        cargv[i - 1] = keep[i]
    end
    io.stdout:flush()
    io.stderr:flush()
    local pid = C.fork()
    assert(pid >= 0, "fork failed")
    if pid == 0 then
        -- If this test process dies (killed by make's timeout), so does the child.
        C.prctl(1, SIGTERM, 0, 0, 0) -- PR_SET_PDEATHSIG
        for k, v in pairs(env or {}) do C.setenv(k, v, 1) end
        local fd = C.open(out, 1 + 64 + 1024, 420) -- O_WRONLY|O_CREAT|O_APPEND, 0644
        if fd >= 0 then C.dup2(fd, 1); C.dup2(fd, 2) end
        C.execv(argv[1], cargv)
        C._exit(127)
    end
    return pid
end

-- Waits for a child; returns "exit N" or "signal N", or nil past the deadline.
local function reap(pid, timeout)
    local status = ffi.new("int[1]")
    local deadline = now() + timeout
    repeat
        local r = C.waitpid(pid, status, 1) -- WNOHANG
        if r == pid then
            local s = status[0]
            if bit.band(s, 0x7f) ~= 0 then return "signal " .. bit.band(s, 0x7f) end
            return "exit " .. bit.rshift(bit.band(s, 0xff00), 8)
        elseif r < 0 then
            return "not a child"
        end
        sleep(0.02)
    until now() > deadline
    return nil
end

-- One request with curl: body, HTTP status, seconds taken.
local function get(port, path, max_time)
    local out = sh(("curl -s -m %g -w '|%%{http_code}|%%{time_total}' 'http://127.0.0.1:%d%s'")
        :format(max_time or 30, port, path))
    local body, code, took = out:match("^(.*)|(%d+)|([%d.]+)$")
    return body or out, tonumber(code) or 0, tonumber(took) or 0
end

-- The set-up (make nginx-deps): what is missing, or nil.
local function setup_problem()
    if not io.open(NGINX) then return NGINX .. " is missing: apt-get install nginx (make nginx-deps)" end
    for _, m in ipairs{ "ndk_http_module.so", "ngx_http_lua_module.so" } do
        if not io.open(MODULES .. m) then return MODULES .. m .. " is missing: run make nginx-deps" end
    end
    if not io.open(LJ2_LIB .. "/libluajit-5.1.so.2") then return "no luajit2 in " .. LJ2_LIB .. ": make luajit2" end
    -- The module must run on OpenResty's luajit2 (it needs lua_setexdata), not Debian's.
    local ldd = sh("LD_LIBRARY_PATH=" .. LJ2_LIB .. " ldd " .. MODULES .. "ngx_http_lua_module.so")
    local lj = ldd:match("libluajit%-5%.1%.so%.2 => (%S+)")
    if lj ~= LJ2_LIB .. "/libluajit-5.1.so.2" then return "the Lua module resolves libluajit to " .. tostring(lj) .. ":\n" .. ldd end
    if ldd:find("not found") then return "the Lua module misses libraries:\n" .. ldd end
    if sh("command -v curl") == "" then return "curl is missing: apt-get install curl" end
    return nil
end

-- nginx ----------------------------------------------------------------------------

local CRASH_PATTERNS = { "exited on signal", "signal 11", "core dumped", "%[alert%]", "%[emerg%]", "%[crit%]" }

-- Lines of error.log that report a crash or worse.
local function crash_lines(log)
    local found = {}
    for line in (log or ""):gmatch("[^\n]+") do
        for _, p in ipairs(CRASH_PATTERNS) do
            if line:find(p) then found[#found + 1] = line break end
        end
    end
    return found
end

local CONF = [[
load_module ${modules}ndk_http_module.so;
load_module ${modules}ngx_http_lua_module.so;
${user}
${main}
worker_processes ${workers};
master_process on;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${dir}/tmp/body;
    proxy_temp_path ${dir}/tmp/proxy;
    fastcgi_temp_path ${dir}/tmp/fastcgi;
    uwsgi_temp_path ${dir}/tmp/uwsgi;
    scgi_temp_path ${dir}/tmp/scgi;
    lua_package_path "${package_path}${root}/lua/?.lua;${root}/lua/?/init.lua;${root}/ffi/?.lua;${resty}/?.lua;;";
    lua_package_cpath "${cpath}/?.so;;";
${http}
    init_by_lua_block {
${init}
    }
    init_worker_by_lua_block {
${init_worker}
    }
    exit_worker_by_lua_block {
${exit_worker}
    }
    server {
        # reuseport: the kernel spreads connections over both workers.
        listen 127.0.0.1:${port} reuseport;
        location = /ping { content_by_lua_block { ngx.print("pong ", ngx.worker.pid()) } }
${locations}
    }
}
]]

local Nginx = {}
Nginx.__index = Nginx

-- Starts nginx with the given Lua blocks; waits until its workers run and it
-- answers. On any failure it stops what it started and raises with the log.
local function start_nginx(opts)
    local problem = setup_problem()
    if problem then error("nginx cannot be set up: " .. problem, 0) end
    local dir = sh("mktemp -d /tmp/isle-nginx.XXXXXX"):match("%S+")
    sh("mkdir -p " .. dir .. "/tmp " .. dir .. "/logs")
    local self = setmetatable({ dir = dir, port = free_port(), workers_seen = {}, nworkers = opts.workers or 2 }, Nginx)
    local vars = {
        modules = MODULES, dir = dir, root = ROOT, port = self.port,
        resty = NGX_PREFIX .. "/usr/share/lua/5.1",
        cpath = opts.cpath or (ROOT .. "/build"),
        user = sh("id -u"):match("^0") and "user root;" or "",
        init = opts.init or "", init_worker = opts.init_worker or "",
        exit_worker = opts.exit_worker or "", locations = opts.locations or "",
        main = opts.main or "", http = opts.http or "", workers = opts.workers or 2,
        -- Searched before isle's own paths, e.g. "/dir/?.lua" (a module for ngx.run_worker_thread).
        package_path = opts.package_path and (opts.package_path .. ";") or "",
    }
    self.conf = dir .. "/nginx.conf"
    write_file(self.conf, (CONF:gsub("%${([%w_]+)}", function(k) return tostring(vars[k]) end)))
    self.master = spawn({ NGINX, "-p", dir, "-e", dir .. "/error.log", "-c", self.conf },
        { LD_LIBRARY_PATH = LJ2_LIB }, dir .. "/stdout.log")
    local ok, err = pcall(function()
        local up = eventually(function()
            if not alive(self.master) then return "dead" end
            if #self:workers() ~= self.nworkers then return false end
            local body, code = get(self.port, "/ping", 5)
            return code == 200 and body:match("^pong") and "up"
        end, 30)
        if up ~= "up" then
            error("nginx did not start (" .. tostring(up) .. "):\n" .. (read_file(dir .. "/stdout.log") or "")
                .. (read_file(dir .. "/error.log") or ""), 0)
        end
        lu.assertEquals(tonumber(read_file(dir .. "/nginx.pid")), self.master, "pid file")
        local failed = self:log():match("[^\n]*_by_lua error[^\n]*")
        if failed then error("a Lua block of nginx.conf failed: " .. failed, 0) end
    end)
    if not ok then
        self:stop()
        error(err, 0)
    end
    return self
end

-- The current workers (and remembers them, to check at the end that none survives).
function Nginx:workers()
    local w = children(self.master)
    for _, pid in ipairs(w) do self.workers_seen[pid] = true end
    return w
end

function Nginx:log() return read_file(self.dir .. "/error.log") or "" end

function Nginx:get(path, max_time) return get(self.port, path, max_time) end

-- Reload (SIGHUP to the master); waits until the old workers have exited and
-- as many new ones run. Returns the new workers' pids.
function Nginx:reload()
    local old = self:workers()
    assert(C.kill(self.master, SIGHUP) == 0, "kill -HUP")
    local fresh
    local done = eventually(function()
        for _, pid in ipairs(old) do if alive(pid) then return false end end
        fresh = self:workers()
        if #fresh ~= self.nworkers then return false end
        for _, p in ipairs(fresh) do for _, o in ipairs(old) do if p == o then return false end end end
        return true
    end, 60)
    lu.assertTrue(done, "reload did not complete in 60 s: old workers "
        .. table.concat(old, ",") .. " now " .. table.concat(children(self.master), ","))
    return fresh
end

-- Graceful stop (SIGQUIT to the master pid), then SIGTERM and SIGKILL past
-- their deadlines; kills any worker left. Returns how the master ended ("exit
-- 0" is clean) and the workers that outlived it. Safe to call twice.
function Nginx:stop()
    if self.stopped then return self.stopped, self.survivors end
    self:workers()
    C.kill(self.master, SIGQUIT)
    local how = reap(self.master, 30)
    if not how then
        C.kill(self.master, SIGTERM)
        how = reap(self.master, 10)
        how = how and ("stopped by SIGTERM after quit hung; " .. how)
    end
    if not how then
        C.kill(self.master, SIGKILL)
        how = "killed after quit and term hung; " .. tostring(reap(self.master, 10))
    end
    local survivors = {}
    eventually(function()
        survivors = {}
        for pid in pairs(self.workers_seen) do
            if alive(pid) and (read_file("/proc/" .. pid .. "/cmdline") or ""):find("nginx") then
                survivors[#survivors + 1] = pid
            end
        end
        return #survivors == 0
    end, 10)
    for _, pid in ipairs(survivors) do C.kill(pid, SIGKILL) end
    self.stopped, self.survivors = how, survivors
    return how, survivors
end

-- Stops nginx and asserts it ended cleanly: master exit 0, no worker left,
-- no crash in error.log. Removes the directory when all is well.
function Nginx:stop_clean()
    local how, survivors = self:stop()
    lu.assertEquals(how, "exit 0", "the master did not exit cleanly")
    lu.assertEquals(survivors, {}, "workers outlived the master")
    lu.assertEquals(crash_lines(self:log()), {}, "crashes in " .. self.dir .. "/error.log")
    sh("rm -rf " .. self.dir)
end

-- Runs fn(nginx) and always stops that nginx, also when fn fails; fn's error wins.
local function with_nginx(opts, fn)
    local ngx = start_nginx(opts)
    local ok, err = xpcall(fn, debug.traceback, ngx)
    if not ok then
        ngx:stop()
        error(err .. "\n(nginx directory kept: " .. ngx.dir .. ")", 0)
    end
    ngx:stop_clean()
end

-- Load: shell loops of curl, one connection per request ---------------------------

-- Starts `n` loops requesting `paths` (round robin) until stopped; each line of
-- their log is "body|status|curl exit code".
local function start_load(ngx, paths)
    local load = { pids = {}, stop = ngx.dir .. "/stop-load", logs = {} }
    for i, path in ipairs(paths) do
        local log = ngx.dir .. "/load" .. i .. ".log"
        load.logs[i] = log
        local script = ("while [ ! -e %s ]; do curl -s -m 20 -w '|%%{http_code}|%%{exitcode}\\n' "
            .. "'http://127.0.0.1:%d%s'; done"):format(load.stop, ngx.port, path)
        load.pids[i] = spawn({ "/bin/sh", "-c", script }, nil, log)
    end
    return load
end

-- Stops the loops (each finishes its request), killing them past a deadline;
-- returns every line they logged.
local function stop_load(load)
    write_file(load.stop, "")
    for _, pid in ipairs(load.pids) do
        if not reap(pid, 30) then C.kill(pid, SIGKILL); reap(pid, 5) end
    end
    local lines = {}
    for _, log in ipairs(load.logs) do
        for line in (read_file(log) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
    end
    return lines
end

-- Reloads under load --------------------------------------------------------------

return {
    C = C, ROOT = ROOT, RELOADS = RELOADS, SIGKILL = SIGKILL, SIGTERM = SIGTERM,
    now = now, sleep = sleep, sh = sh, read_file = read_file, write_file = write_file,
    eventually = eventually, alive = alive, children = children, free_port = free_port,
    spawn = spawn, reap = reap, get = get, setup_problem = setup_problem,
    crash_lines = crash_lines, start_nginx = start_nginx, with_nginx = with_nginx,
    start_load = start_load, stop_load = stop_load,
}
