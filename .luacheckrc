-- luacheck's settings for isle (`make lint`; Debian package lua-check).
-- Strict by default: every global read or written that the standard does not
-- define is reported, and so are unused variables, arguments, values and
-- loop variables (prefix a name with `_` or call it `_` to say it is unused
-- on purpose). Each exception below says why it is there.

-- The library and the tests run on LuaJIT 2.1 (Debian's luajit and
-- OpenResty's luajit2): Lua 5.1 plus bit, jit, ffi, table.new/clear...
std = "luajit"

-- The code wraps at about 110 columns; a few tables of test cases and long
-- messages run longer. Line length is style, not a bug: this bound only
-- catches a runaway line.
max_line_length = 150

-- `function Class:method()` declares self whether it is used or not (the
-- luaunit test methods, the handles' methods): an unused implicit self is
-- not a mistake.
self = false

-- Names starting with `_` are unused on purpose (a callback's leading
-- arguments, a dispatch table's common signature).
ignore = {
    "21./_.*",
    -- `not (x >= 0)` rather than `x < 0` is how the code refuses NaN (every
    -- comparison with NaN is false): the suggested rewrite would accept it.
    "581",
    -- Shadowing an upvalue is how functions that cross into another state
    -- are written: they may have no upvalues (docs/API.md), so they
    -- `require` again what the file already has; and `local x = x` freezes
    -- the value an upvalue holds now (loaders.lua).
    "431",
}

-- Build output and unpacked Debian packages (OpenResty's lualib) are not ours.
exclude_files = { "build/**", "examples/sandbox/hostile.lua" } -- hostile.lua: sections run one by one, not one chunk

-- The test suites: luaunit finds the test classes as globals (`TestFoo = {}`
-- at the top of a suite), so globals defined at the top level are allowed
-- there. Globals defined inside functions stay an error, except the names
-- listed per file below.
-- Three more checks are off in the tests, where the code does on purpose what
-- they report: `x = nil` drops the last reference before a collection (the
-- leak tests) and `ok, e = pcall(...)` keeps one shape where only e is read
-- (311, value assigned but unused); a local that is never read keeps an
-- object alive to the end of the test (231); code sent into an isle fills
-- tables only to use memory (241, mutated but never read).
files["test/"] = { allow_defined_top = true, ignore = { "231", "241", "311" } }
files["bench/"] = { allow_defined_top = true }

-- Globals defined inside isles. An isle's API is its globals: `h:call("grow")`
-- calls the global `grow` of the isle, so the functions a test or bench sends
-- as an isle's `init` (or evaluates in it) define globals on purpose. They
-- run in the isle's state, not in the file's, but luacheck cannot know.
files["test/test_memcap.lua"].globals = {
    "add", "again", "child", "churn", "close_child", "close_state", "drop", "echo", "errors_seen", "errs",
    "fetch", "fill", "flood", "go", "grow", "guard", "hoard", "hold", "holder", "in_coroutine", "inc", "keep",
    "later", "make", "many", "push_one", "raise_many", "relay", "release", "settle", "sleepy", "small", "st",
    "strings", "survive", "tab", "tables", "tasks", "total", "try", "wait_cancel", "x",
}
files["test/test_core.lua"] = { globals = { "get", "nap" } }
files["test/test_cancel.lua"] = { globals = { "spin_here" } }
files["test/test_stop.lua"] = { globals = { "cancel_own" } }
files["test/fixtures/memcap_host.lua"] = { globals = { "hog" } }
files["test/package/smoke.lua"] = { globals = { "add" } }
-- leaks.lua also keeps a shared state alive until exit in the global KEPT:
-- what valgrind checks is that such a state is freed at exit.
files["test/valgrind/leaks.lua"] = {
    globals = { "KEPT", "bad_result", "fail_with", "give", "inc", "nap", "relay", "spin" },
    ignore = { "131" }, -- KEPT is set and never read: that is its point
}
files["bench/w_compare.lua"] = { globals = { "inc" } }
files["bench/w_life.lua"] = { globals = { "inc" } }
files["bench/w_msg.lua"] = { globals = { "add", "inc", "tab", "total" } }

-- Host programs: nginx's request handlers see OpenResty's `ngx`, a LÖVE
-- game defines its callbacks in the global `love` table.
files["examples/openresty/"] = { std = "+ngx_lua" }
files["test/nginx/"] = { std = "+ngx_lua" }
files["examples/love/"] = { std = "+love" }
-- Shared buffers: isle-side code also reuses the loop variables and
-- arguments of the test around it (it runs in another state: 42x/43x).
files["test/test_buffer.lua"] = {
    globals = { "write", "read", "boot_buf", "chan", "nested", "from_channel", "posted", "booted", "make",
        "made", "keep", "kept", "sum_pages", "use", "try", "declare", "used" },
    ignore = { "42", "43" },
}
files["bench/w_buffer.lua"] = { globals = { "peek_buf", "peek_str", "small" } }
-- The sandbox: isle-side globals of the tests, the names the escape tests
-- probe (`__isle_F`: the instrumenter's names, refused), and the hostile
-- example, which is a list of sections run one by one, not one chunk.
files["test/test_sandbox.lua"] = {
    globals = { "add", "echo", "hello", "child", "run", "sum", "posted", "got", "get", "nap", "ticks", "goes",
        "children", "sq", "state_call", "from", "text", "fail", "spin_in_handler", "spin", "sleep_in_coroutine",
        "call_in_coroutine", "close_spinning_child" },
    read_globals = { "__isle_F" },
}
files["test/fixtures/sandbox_mod_names.lua"] = { read_globals = { "__isle_F" } }
files["test/test_pool.lua"] = { globals = { "sq", "fail", "whoami", "note", "twice", "base", "PINNED" } }
