-- The C API of libisle for the FFI, declaration by declaration as in
-- csrc/isle.h, and the loader of the library. The only place that calls
-- ffi.cdef or ffi.load for isle (test/test_static.lua checks it against the header).
local ffi = require("ffi")
local os = require("os")
local io = require("io")
local debug = require("debug")
local package = require("package")
local table = require("table")
local type, select, ipairs, error = type, select, ipairs, error

-- Run with this as its second argument (rest_text below), the chunk returns
-- the text of REST and declares nothing.
local REST_ONLY = "isle.cdef: the rest of the API, as text"
local running_in_core = debug.getregistry()["isle.library"] ~= nil

-- What an isle's own modules use (worker, sched, interrupt, runtime, wire,
-- codec, sandbox, task, token: test/test_static.lua checks that list against
-- them), declared at once in every state. The enums and declarations here
-- are those of csrc/isle.h, split between CORE and REST.
local CORE = [[
enum { ISLE_OK = 0, ISLE_ECLOSED = 3 };
enum { ISLE_TASK_DONE = 2, ISLE_TASK_FAILED = 3, ISLE_TASK_CANCELLED = 4, ISLE_TASK_CLOSED = 5 };
enum { ISLE_CANCEL_USER = 1, ISLE_CANCEL_TIMEOUT = 2 };
enum { ISLE_WIRE_ERROR = 69, ISLE_WIRE_CORE = 67 };
enum { ISLE_INTR_CLEAR = 0, ISLE_INTR_ONCE = 1, ISLE_INTR_ALWAYS = 2 };

typedef struct isle_msg isle_msg;
typedef struct isle_task isle_task;
typedef struct isle_mbox isle_mbox;
typedef struct isle_sig isle_sig;
typedef struct isle isle;
typedef struct isle_done isle_done;
typedef struct isle_mem isle_mem;

struct isle_msg {
    isle_msg *next;
    isle_task *task;
    int32_t kind;
    int32_t flags;
    size_t len;
    char *data;
    size_t nrefs;
    isle_task **refs;
    isle_mem *mem;
};
struct isle_done {
    isle_done *next;
    isle_task *task;
    isle_mbox *mbox;
    isle_sig *sig;
};

double isle_now(void);

isle_msg *isle_msg_new(int32_t kind, isle_task *task, const char *data, size_t len);
isle_msg *isle_msg_new_refs(int32_t kind, isle_task *task, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs);
void isle_msg_free(isle_msg *m);

isle_task *isle_task_new(void);
void isle_task_retain(isle_task *t);
void isle_task_release(isle_task *t);
int isle_task_state(const isle_task *t);
int isle_task_start(isle_task *t, isle_sig *sig, const char *label);
int isle_task_complete(isle_task *t, int state, const char *data, size_t len);
int isle_task_complete_refs(isle_task *t, int state, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs);
int isle_task_wait(isle_task *t, double timeout);
const isle_msg *isle_task_result_msg(isle_task *t);
int isle_task_subscribe(isle_task *t, isle_mbox *mb);
int isle_task_watch(isle_task *t, isle_mbox *mb, isle_sig *sig);
int isle_task_unwatch(isle_task *t, isle_mbox *mb, isle_sig *sig);
int isle_task_unsubscribe(isle_task *t, isle_mbox *mb);
void isle_done_free_list(isle_done *head);
int isle_task_cancel(isle_task *t);
int isle_task_cancelled(const isle_task *t);

int isle_mbox_wait(isle_mbox *mb, double timeout, isle_msg **msgs, isle_done **done);
void isle_mbox_close(isle_mbox *mb);
int isle_mbox_is_closed(isle_mbox *mb);

isle_sig *isle_sig_new(void);
void isle_sig_release(isle_sig *s);
int64_t isle_intr_new(isle_sig *s);
void isle_intr_free(int64_t id);
int isle_intr_set(int64_t id, int mode);
int isle_intr_take(int64_t id);
int isle_sig_pending(isle_sig *s);
void isle_sig_hold(isle_sig *s, int64_t delta);

int64_t isle_id(const isle *i);
const char *isle_name(const isle *i);
isle_mbox *isle_mbox_of(isle *i);
isle_sig *isle_sig_of(isle *i);
const isle_msg *isle_boot(isle *i);
isle_task *isle_init_task(isle *i);
int64_t isle_state_intr(isle *i);
void isle_stop(isle *i, int cancel);
int isle_close_mode(const isle *i);
int isle_fork_generation(void);
enum { ISLE_MEM_CORE = 1, ISLE_MEM_USER = 2 };
isle_mem *isle_mem_of(isle *i);
int isle_mem_enforce(isle_mem *a, int mode);
size_t isle_mem_used(isle_mem *a);
size_t isle_mem_limit(isle_mem *a);
size_t isle_mem_minimum(size_t used);
int isle_mem_gc_wanted(isle_mem *a);
void isle_mem_collected(isle_mem *a);
]]

-- The rest of the API: what only a host or a module an isle loads on demand
-- uses (spawning and looking up isles, their stats, mailboxes and tasks made
-- by the caller, memory accounts, shared states, channels, buffers, pools,
-- notices, the preloaded modules). A host state declares it at once; a state
-- the core made (an isle, a shared state) only when a module that needs it
-- loads (cdef.full(): isle, isle.handle, isle.state, isle.channel, isle.hub,
-- ...), so an idle isle does not keep ctypes it never needs (~20 KiB of heap
-- for REST; with CORE under 256 ctypes LuaJIT's table of them stays at its
-- second size: bench/README.md, Issue 12, fifth round).
local REST = [[
enum { ISLE_ETIMEOUT = 1, ISLE_EBUSY = 2, ISLE_ENOMEM = 4, ISLE_EINVAL = 5, ISLE_ENOENT = 6 };
enum { ISLE_TASK_QUEUED = 0, ISLE_TASK_RUNNING = 1 };
enum { ISLE_CANCEL_NONE = 0 };
enum { ISLE_WIRE_VALUES = 86, ISLE_WIRE_FUNCS = 70 };
enum { ISLE_MSG_REFS_MAX = 65536 };
struct isle_sig {
    volatile int32_t flag;
    int32_t scratch;
};

void isle_set_spin(double seconds);
double isle_get_spin(void);

void isle_msg_free_list(isle_msg *head);
int isle_msg_charge(isle_msg *m, isle_mem *a);

void isle_task_charge_results(isle_task *t, isle_mem *a);
const char *isle_task_result(isle_task *t, size_t *len);
int isle_task_cancel_reason(isle_task *t, int reason);
int isle_task_expire_at(isle_task *t, double deadline);
int isle_task_live_count(void);

isle_mbox *isle_mbox_new(size_t capacity, int with_fd);
void isle_mbox_release(isle_mbox *mb);
int isle_mbox_push(isle_mbox *mb, isle_msg *m, double timeout);
size_t isle_mbox_count(isle_mbox *mb);
int isle_mbox_fd(isle_mbox *mb);
void isle_mbox_wake(isle_mbox *mb);
int isle_mbox_notify_socket(isle_mbox *mb, int fd);

void isle_sig_raise(isle_sig *s);
int isle_sig_fail_running(isle_sig *s, const char *data, size_t len);
void isle_sig_lower(isle_sig *s);

void isle_retain(isle *i);
void isle_release(isle *i);
int isle_instrument(const isle *i);
int isle_is_closed(const isle *i);
int isle_live_count(void);
enum { ISLE_MEM_OFF = 0 };
typedef void *(*isle_mem_allocf)(void *ud, void *ptr, size_t osize, size_t nsize);
isle_mem *isle_mem_new(size_t limit);
void isle_mem_retain(isle_mem *a);
void isle_mem_release(isle_mem *a);
void *isle_mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void isle_mem_wrap(isle_mem *a, isle_mem_allocf f, void *fud, size_t heap, isle_sig *sig);
void isle_mem_unwrap(isle_mem *a);
int isle_mem_charge(isle_mem *a, size_t n);
void isle_mem_uncharge(isle_mem *a, size_t n);
int isle_notify_listen(char *path, size_t cap);
int isle_notify_accept(int lfd, char *path, double timeout);
enum { ISLE_LABEL_MAX = 48 };
typedef struct isle_stats {
    int64_t queued;
    int64_t running;
    int64_t done, failed, cancelled, closed;
    double oldest_start;
    int32_t oldest_cancel;
    char oldest_label[ISLE_LABEL_MAX];
} isle_stats;
void isle_sig_stats(isle_sig *s, isle_stats *out);

typedef struct isle_config {
    const char *name;
    size_t capacity;
    const char *path;
    const char *cpath;
    const char *boot;
    size_t boot_len;
    isle_task *const *boot_refs;
    size_t boot_nrefs;
    int instrument;
    size_t memory_limit;
    isle_mem *charge;
} isle_config;

isle *isle_spawn(const isle_config *cfg, int *err);
isle *isle_lookup_id(int64_t id);
isle *isle_lookup_name(const char *name);
void isle_close(isle *i, int cancel);
int isle_join(isle *i, double timeout);
void isle_abandon(isle *i);
void isle_stats_get(isle *i, isle_stats *out);
typedef struct isle_state isle_state;
enum { ISLE_STATE_EREENTRY = 20, ISLE_STATE_EAMBIGUOUS = 21 };
typedef struct isle_state_io {
    const char *args;
    size_t args_len;
    const char *results;
    size_t results_len;
    const isle_msg *args_refs;
    isle_msg *results_refs;
} isle_state_io;
typedef struct isle_state_out {
    char *data;
    size_t len;
    size_t cap;
    isle_mem *mem;
    isle_msg *refs;
} isle_state_out;
typedef struct isle_state_config {
    const char *name;
    const char *path;
    const char *cpath;
    char *errbuf;
    size_t errcap;
    size_t memory_limit;
    isle_mem *charge;
} isle_state_config;
isle_state *isle_state_new(const isle_state_config *cfg, int *err);
isle_state *isle_state_singleton(const isle_state_config *cfg, double timeout, int *err, int *created);
void isle_state_publish(isle_state *s);
void isle_state_discard(isle_state *s);
isle_state *isle_state_lookup(int64_t id, const char *name, int *err);
void isle_state_retain(isle_state *s);
void isle_state_release(isle_state *s);
void isle_state_disown(isle_state *s);
int64_t isle_state_id(const isle_state *s);
const char *isle_state_name(const isle_state *s);
int isle_state_is_closed(const isle_state *s);
isle_sig *isle_state_sig(isle_state *s);
int64_t isle_state_intr_id(isle_state *s);
isle_state_io *isle_state_io_of(isle_state *s);
isle_mem *isle_state_mem(isle_state *s);
int isle_state_call(isle_state *s, double timeout, const char *in, size_t in_len, isle_state_out *out);
int isle_state_call_refs(isle_state *s, double timeout, const char *in, size_t in_len,
                         const isle_msg *refs, isle_state_out *out);
isle_task *isle_state_watch(isle_state *s, int *err);
int isle_state_unwatch(isle_state *s, isle_task *t);
int isle_state_close(isle_state *s);
int isle_state_count(void);
isle_state_out *isle_state_out_new(void);
void isle_state_out_free(isle_state_out *o);
void isle_state_out_charge(isle_state_out *o, isle_mem *a);

typedef struct isle_chan isle_chan;
enum { ISLE_CHAN_CAP_MAX = 1 << 24 };
isle_chan *isle_chan_new(size_t capacity);
int isle_chan_charge(isle_chan *ch, isle_mem *a);
void isle_chan_retain(isle_chan *ch);
void isle_chan_release(isle_chan *ch);
isle_task *isle_chan_ref(isle_chan *ch);
isle_chan *isle_chan_of_ref(isle_task *t);
int isle_chan_push(isle_chan *ch, isle_msg *m, isle_task **waiter);
int isle_chan_push_num(isle_chan *ch, double num, isle_task **waiter);
int isle_chan_pop(isle_chan *ch, isle_msg **out, double *num, isle_task **waiter);
int isle_chan_unwait(isle_chan *ch, isle_task *waiter);
void isle_chan_close(isle_chan *ch);
int isle_chan_is_closed(isle_chan *ch);
size_t isle_chan_len(isle_chan *ch);
size_t isle_chan_cap(isle_chan *ch);
int isle_chan_spin(isle_chan *ch, int for_room);

typedef struct isle_buf isle_buf;
enum { ISLE_BUF_TYPE_MAX = 128 };
isle_buf *isle_buf_new(const char *type, size_t elem_size, size_t count, size_t align);
int isle_buf_charge(isle_buf *b, isle_mem *a);
void isle_buf_retain(isle_buf *b);
void isle_buf_release(isle_buf *b);
void isle_buf_release_data(void *data);
isle_task *isle_buf_ref(isle_buf *b);
isle_buf *isle_buf_of_ref(isle_task *t);
void *isle_buf_data(isle_buf *b);
size_t isle_buf_size(const isle_buf *b);
size_t isle_buf_count(const isle_buf *b);
size_t isle_buf_elem_size(const isle_buf *b);
const char *isle_buf_type(const isle_buf *b);
int isle_buf_live_count(void);
int32_t isle_atomic_add32(int32_t *p, int32_t delta);
int64_t isle_atomic_add64(int64_t *p, int64_t delta);
int32_t isle_atomic_load32(const int32_t *p);
int64_t isle_atomic_load64(const int64_t *p);
void isle_atomic_store32(int32_t *p, int32_t v);
void isle_atomic_store64(int64_t *p, int64_t v);
int isle_atomic_cas32(int32_t *p, int32_t expected, int32_t desired);
int isle_atomic_cas64(int64_t *p, int64_t expected, int64_t desired);
typedef struct isle_pool isle_pool;
isle_pool *isle_pool_new(size_t capacity, const char *name, int *err);
int isle_pool_add(isle_pool *p, isle_sig *sig);
void isle_pool_retain(isle_pool *p);
void isle_pool_release(isle_pool *p);
isle_task *isle_pool_ref(isle_pool *p);
isle_pool *isle_pool_of_ref(isle_task *t);
isle_chan *isle_pool_queue(isle_pool *p);
int64_t isle_pool_id(const isle_pool *p);
const char *isle_pool_name(const isle_pool *p);
size_t isle_pool_size(isle_pool *p);
isle_pool *isle_pool_lookup(int64_t id, const char *name);
void isle_pool_close(isle_pool *p);
void isle_pool_disown(isle_pool *p);
int isle_pool_is_closed(isle_pool *p);
void isle_pool_stats(isle_pool *p, isle_stats *out);

int isle_preload_set(const char *name, const char *data, size_t len);
int isle_preload_count(void);
]]
if select(2, ...) == REST_ONLY then return REST end
ffi.cdef(CORE)
-- A state the core made keeps not even REST's text (~6 KiB per isle): it
-- reads it again from this module's chunk (its preloaded bytecode) when it
-- first needs it.
if running_in_core then REST = nil end
local function rest_text()
    if REST then return REST end
    local loaded = package.loaded
    for _, searcher in ipairs(package.loaders) do
        local chunk = searcher("isle.cdef")
        if type(chunk) == "function" then
            -- An isle's loaders record what a chunk returns as the module
            -- (interrupt.guard_modules): this module stays what it is.
            local mine = loaded["isle.cdef"]
            local text = chunk("isle.cdef", REST_ONLY)
            loaded["isle.cdef"] = mine
            if type(text) == "string" then return text end
        end
    end
    error("isle.cdef: cannot find its own module again to declare the rest of the API", 0)
end

-- Where libisle.so is looked for, in this order (docs/install.md):
--   inside an isle, the file of the library that runs it (csrc/isle.c hands
--     its name over, pin_library): every state of a process uses one copy;
--   ISLE_LIB, a path (or a bare name for the system's search);
--   beside the modules: the directory of this file, the Lua module directory
--     above it, and the library directories of the same prefix ($(PREFIX)/lib
--     for `make install`, $(PREFIX)/lib/lua/5.1 for LuaRocks);
--   package.cpath (`eval $(make -s path)` puts a checkout's build/?.so there;
--     a checkout is left to it, so a test can pick another build of the library);
--   the system's library path (ffi.load("isle"): LD_LIBRARY_PATH, ld.so.cache).
-- A file that is found but does not load is an error, not a reason to go on
-- looking: a second copy would be a second, separate isle core.
local LIBNAME = "libisle.so"

local function exists(file)
    local f = io.open(file, "rb")
    if not f then return false end
    f:close()
    return true
end

-- The directory this file was loaded from ("./x" when relative), or nil.
local function module_dir()
    local file = debug.getinfo(1, "S").source:match("^@(.+)$")
        or package.searchpath("isle.cdef", package.path)
    if not file then return nil end
    local dir = file:match("^(.*)/[^/]*$") or "."
    return dir:sub(1, 1) == "/" and dir or "./" .. dir
end

local function beside_modules(dir)
    local list = { dir .. "/" .. LIBNAME }
    local luadir = dir:match("^(.*)/isle$")
    if luadir then list[#list + 1] = luadir .. "/" .. LIBNAME end
    local prefix = dir:match("^(.*)/share/lua/[^/]+/isle$")
    if prefix then
        list[#list + 1] = prefix .. "/lib/" .. LIBNAME
        list[#list + 1] = prefix .. "/lib/lua/5.1/" .. LIBNAME
    end
    return list
end

local function load_found(path, where)
    local ok, lib = pcall(ffi.load, path)
    if not ok then
        error("isle: cannot load the C library " .. path .. " (" .. where .. "): " .. tostring(lib), 0)
    end
    return lib, path
end

local function locate()
    local running = debug.getregistry()["isle.library"]
    if running then return load_found(running, "the library running this isle") end
    local env = os.getenv("ISLE_LIB")
    if env and env ~= "" then return load_found(env, "from ISLE_LIB") end
    local looked = { "  ISLE_LIB: not set" }
    local dir = module_dir()
    if dir then
        local list = beside_modules(dir)
        for _, file in ipairs(list) do
            if exists(file) then return load_found(file, "beside the modules") end
        end
        looked[#looked + 1] = "  beside the modules: " .. table.concat(list, ", ")
    else
        looked[#looked + 1] = "  beside the modules: none (isle.cdef was not loaded from a file)"
    end
    local found, tried = package.searchpath("libisle", package.cpath)
    if found then return load_found(found, "on package.cpath") end
    looked[#looked + 1] = "  package.cpath: " .. (tried:gsub("\n\t?no file '([^']*)'", "%1, "):gsub(", $", ""))
    local ok, lib = pcall(ffi.load, "isle")
    if ok then return lib, "isle" end
    looked[#looked + 1] = "  the system library path: " .. tostring(lib)
    error("isle: cannot find the C library " .. LIBNAME .. "; looked at\n" .. table.concat(looked, "\n")
        .. "\nBuild it with `make` and, in a checkout, run `eval $(make -s path)`; or install isle with"
        .. " `make install` (docs/install.md); or set ISLE_LIB to the library's path.", 0)
end

local lib, path = locate()

local declared = false
local function full()
    if not declared then
        local text = rest_text()
        declared = true
        ffi.cdef(text)
    end
    return lib
end
if not running_in_core then full() end

return { C = lib, path = path, full = full }
