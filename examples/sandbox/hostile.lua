-- A hostile "mod" script: each section below is one attempt to get out of the
-- sandbox, to crash or stall the host. examples/sandbox/run.lua runs every
-- section in a sandboxed isle; an attempt that ends without an error escaped.
-- @ end the process
os.exit(3)
-- @ end the process through require, with libs = false style access
require("os").exit(4)
-- @ reach the FFI
return require("ffi").C
-- @ crash the host through the FFI
require("ffi").C._exit(5)
-- @ reach isle's C functions
return require("isle.cdef").C.isle_lookup_id(1)
-- @ find another isle by id
return require("isle").lookup(1)
-- @ run a shell command
return os.execute("echo pwned")
-- @ open a pipe
return io.popen("id")
-- @ read a file
return io.open("/etc/passwd"):read("*a")
-- @ read the environment
return os.getenv("HOME")
-- @ dump bytecode to craft more
return string.dump(function() end)
-- @ load crafted bytecode
return assert(load("\27LJ\2\0\0"))
-- @ the string metatable
return getmetatable("").__index.dump
-- @ the registry through debug
return debug.getregistry()
-- @ the machinery's globals
return getfenv(0).package.loaded
-- @ the machinery's globals through a library function
return getfenv(require("isle").spawn)
-- @ upvalues through jit.util
return require("jit.util").funcuvname(require("isle").spawn, 0)
-- @ isle's shared metatable through an object's __index
return rawset(require("isle").self().__index, "call", print)
-- @ make isle's machinery read a device when a function is sent
local f = load("return function() end", "@/dev/zero")() require("isle").self():exec(f) error("the send did not read /dev/zero")
-- @ a proxy with a finalizer
return newproxy(true)
-- @ stop the collector
collectgarbage("stop")
-- @ resume the loop's own coroutine with forged values
return coroutine.resume(coroutine.running(), "done")
-- @ the checkpoint flag's raw pointer
return __isle_F
-- @ a native module from package.cpath
return package.loadlib("libc.so.6", "exit")
-- @ addresses of functions
local s = tostring(print) assert(s:find("0x"), "no address in " .. s) return s
-- @ a huge string built in C (no checkpoint runs inside string.rep)
return #string.rep("x", 2^40)
-- @ run for ever (stopped by the call's timeout)
while true do end
-- @ allocate without bound (stopped by the memory_limit)
local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end
