-- Shared buffers (issue 9, "Shared buffers"): isle.buffer and its methods,
-- every error, the same memory seen in 4 isles, buffers inside tables,
-- through channels, shared states, posts and results, lifetime (freed only
-- after the last holder, a queued message unread included: the core's
-- isle_buf_live_count proves it), a 64 MB buffer passed to 4 isles without
-- copies, typed buffers of a struct declared in both states, atomics, and
-- the memory_limit of a capped creator.
local lu = require("luaunit")
local isle = require("isle")
local ffi = require("ffi")
local helpers = require("test.helpers")
local C = require("isle.cdef").C

-- Not helpers.err_of: a misuse error is raised at the caller (level 2), and
-- test_bad_arguments_raise_before_anything_is_allocated checks that the
-- caller it names is this file.
local function err_of(f, ...)
    local ok, e = pcall(f, ...)
    lu.assertFalse(ok, "expected an error")
    return e
end

local settle = helpers.settle

local function live() return C.isle_buf_live_count() end

-- Waits until the live count is `n` (other states let go when their GC runs).
local function live_becomes(n, what)
    local ok = helpers.eventually(function() settle() return live() == n end, 10)
    lu.assertTrue(ok, (what or "live buffers") .. ": " .. live() .. ", expected " .. n)
end

ffi.cdef [[
typedef struct isle_test_point { double x, y; int32_t tag; } isle_test_point;
]]

TestBuffer = {}

function TestBuffer:setUp()
    settle()
    self.live0 = live()
end

function TestBuffer:tearDown()
    live_becomes(self.live0, "buffers left behind")
end

function TestBuffer:test_bytes_and_typed_buffers_and_their_methods()
    local b = isle.buffer(100)
    lu.assertEquals(b:len(), 100)
    lu.assertEquals(b:size(), 100)
    lu.assertEquals(b:type(), "uint8_t")
    local p = b:ptr()
    lu.assertTrue(ffi.istype("uint8_t *", p))
    lu.assertTrue(b:ptr() == p) -- the same cdata every time
    for i = 0, 99 do lu.assertEquals(p[i], 0) end -- zero-filled
    p[7] = 200
    lu.assertEquals(b[7], 200)
    b[8] = 300 -- as a uint8_t
    lu.assertEquals(p[8], 44)
    lu.assertStrContains(tostring(b), "100 x uint8_t, 100 bytes")
    lu.assertFalse(b:closed())

    local d = isle.buffer("double", 10)
    lu.assertEquals(d:len(), 10)
    lu.assertEquals(d:size(), 80)
    lu.assertEquals(d:type(), "double")
    lu.assertTrue(ffi.istype("double *", d:ptr()))
    d[9] = 1.5
    lu.assertEquals(d:ptr()[9], 1.5)
    lu.assertEquals(live(), self.live0 + 2)

    -- Out of range, not an integer, not an element.
    lu.assertStrContains(err_of(function() return d[10] end), "index 10 out of range (0..9)")
    lu.assertStrContains(err_of(function() return d[-1] end), "out of range")
    lu.assertStrContains(err_of(function() d[0.5] = 1 end), "out of range")
    lu.assertStrContains(err_of(function() d.x = 1 end), "cannot set field 'x'")
    lu.assertNil(d.nosuch)

    -- An array type and an aligned struct keep their size and alignment.
    local a = isle.buffer("int[3]", 4)
    lu.assertEquals(a:size(), 48)
    a:ptr()[3][2] = 7
    lu.assertEquals(ffi.cast("int *", a:ptr())[11], 7)
    local al = isle.buffer("struct { __attribute__((aligned(64))) char c; }", 2)
    lu.assertEquals(al:size(), 128)
    lu.assertEquals(tonumber(ffi.cast("uintptr_t", al:ptr())) % 64, 0)

    b:close(); d:close(); a:close(); al:close()
    lu.assertEquals(live(), self.live0)
end

function TestBuffer:test_bad_arguments_raise_before_anything_is_allocated()
    local cases = {
        { { 0 }, "bad argument #1 to 'buffer' (a positive integer count expected, got 0)" },
        { { -3 }, "positive integer count expected, got -3" },
        { { 1.5 }, "got 1.5" },
        { { 0 / 0 }, "got nan" },
        { {}, "got nil" },
        { { "x" }, "bad argument #2 to 'buffer' (a positive integer count expected, got nil)" },
        { { "double" }, "bad argument #2 to 'buffer' (a positive integer count expected, got nil)" },
        { { "double", "4" }, "got string" },
        { { "nosuch_t", 4 }, "unknown C type 'nosuch_t'" },
        { { "void", 4 }, "C type 'void' has no fixed size > 0" },
        { { "int(int)", 4 }, "has no fixed size" },
        { { "int[?]", 4 }, "has no fixed size" },
        { { "", 4 }, "a C type name of 1..127 characters expected, got 0" },
        { { ("x"):rep(200), 4 }, "got 200" },
        { { {}, 4 }, "a C type name expected before the count, got table" },
        { { "double", 2 ^ 50 }, "too large" },
    }
    for _, c in ipairs(cases) do
        local e = err_of(isle.buffer, unpack(c[1], 1, table.maxn(c[1])))
        lu.assertEquals(type(e), "string")
        lu.assertStrContains(e, c[2])
        lu.assertStrContains(e, "test_buffer.lua") -- raised at the caller
    end
    lu.assertEquals(live(), self.live0)
    -- Allocation failure: a `memory` error (an absurd size the system refuses).
    local e = err_of(isle.buffer, "char", 2 ^ 52)
    lu.assertEquals(e.code, "memory")
    lu.assertStrContains(tostring(e), "cannot allocate a buffer of")
    lu.assertEquals(live(), self.live0)
end

function TestBuffer:test_close_is_idempotent_and_a_closed_buffer_cannot_be_used_or_sent()
    local b = isle.buffer("int32_t", 4)
    b[0] = 1
    b:close()
    b:close()
    lu.assertTrue(b:closed())
    lu.assertEquals(live(), self.live0)
    lu.assertEquals(b:len(), 4) -- what it was stays readable
    lu.assertEquals(b:size(), 16)
    lu.assertEquals(b:type(), "int32_t")
    lu.assertStrContains(tostring(b), "closed")
    local e = err_of(b.ptr, b)
    lu.assertEquals(e.code, "closed")
    lu.assertStrContains(tostring(e), "the buffer (4 x int32_t) is closed")
    lu.assertEquals(err_of(function() return b[0] end).code, "closed")
    local h = isle.spawn()
    e = err_of(h.call, h, "type", { x = { b } })
    lu.assertEquals(e.code, "value")
    lu.assertStrContains(tostring(e), "cannot send a closed buffer at args[1].x[1]")
    local ch = isle.channel(1)
    e = err_of(ch.push, ch, b)
    lu.assertStrContains(tostring(e), "cannot send a closed buffer at value[1]")
    h:close()
    -- A table that isle did not make is refused.
    lu.assertStrContains(err_of(isle.buffer(1).ptr, {}), "not a buffer made by isle")
end

-- One buffer, 4 isles: each writes its own slot, then reads every other
-- isle's write; the host sees them all. Passing copies nothing.
function TestBuffer:test_the_same_memory_in_four_isles()
    local b = isle.buffer("int64_t", 8)
    local hs = {}
    for i = 1, 4 do
        hs[i] = isle.spawn{ init = function()
            function write(buf, i) buf:ptr()[i] = 1000 + i; return tostring(buf:ptr()) end
            function read(buf) local t = {} for i = 1, 4 do t[i] = tonumber(buf:ptr()[i]) end return t end
        end }
    end
    local addr = tostring(b:ptr()):match("0x%x+")
    for i = 1, 4 do lu.assertStrContains(hs[i]:call("write", b, i), addr) end
    for i = 1, 4 do lu.assertEquals(hs[i]:call("read", b), { 1001, 1002, 1003, 1004 }) end
    for i = 1, 4 do lu.assertEquals(tonumber(b[i]), 1000 + i) end
    for i = 1, 4 do hs[i]:close() end
    b:close()
end

-- Inside tables, as results, through channels (host to isle and back), in
-- posts, as spawn arguments, and back from the isle in a result.
function TestBuffer:test_travels_in_tables_results_channels_posts_and_spawn_args()
    local b = isle.buffer("double", 4)
    local ch = isle.channel(4)
    local h = isle.spawn{ args = { b, ch }, init = function(buf, ch)
        boot_buf, chan = buf, ch
        function nested(t) t.deep[1].buf:ptr()[0] = 1.25 return { again = { t.deep[1].buf } } end
        function from_channel() local x = chan:pop(5) x[1] = 2.5 chan:push({ back = x }) end
        function posted(buf) buf[2] = 3.5 end
        function booted() boot_buf[3] = 4.5 return boot_buf end
        function make() made = require("isle").buffer("int32_t", 3) made[1] = 77 return made end
    end }
    local r = h:call("nested", { deep = { { buf = b } } })
    lu.assertEquals(b[0], 1.25)
    lu.assertTrue(r.again[1]:ptr() == b:ptr())
    ch:push(b)
    h:call("from_channel")
    local back = ch:pop(5).back
    lu.assertEquals(b[1], 2.5)
    lu.assertTrue(back:ptr() == b:ptr())
    h:post("posted", b)
    h:call("type", 1) -- the post ran before this call
    lu.assertEquals(b[2], 3.5)
    lu.assertTrue(h:call("booted"):ptr() == b:ptr())
    lu.assertEquals(b[3], 4.5)
    -- Made in an isle, used here.
    local m = h:call("make")
    lu.assertEquals(m:type(), "int32_t")
    lu.assertEquals(m[1], 77)
    m[2] = 5
    lu.assertEquals(h:eval("return made[2]"), 5)
    h:close()
    r = nil; back = nil
    b:close(); m:close()
end

-- Shared states: arguments, results, setup arguments and setup results.
function TestBuffer:test_travels_through_shared_states()
    local b = isle.buffer("int32_t", 4)
    local s, given = isle.state(function(buf)
        local kept = buf
        kept[0] = 10
        return function(x, v)
            if x then x[1] = v; return x, { nested = x } end
            return kept
        end, kept
    end, b)
    lu.assertEquals(b[0], 10)
    lu.assertTrue(given:ptr() == b:ptr())
    local r, t = s:call(b, 20)
    lu.assertEquals(b[1], 20)
    lu.assertTrue(r:ptr() == b:ptr() and t.nested:ptr() == b:ptr())
    lu.assertTrue(s:call():ptr() == b:ptr())
    -- From an isle too (the isle's call carries its own references).
    local h = isle.spawn()
    lu.assertEquals(h:exec(function(id, buf)
        local x = require("isle").state_ref(id):call(buf, 30)
        return x[1]
    end, s:id(), b), 30)
    h:close()
    lu.assertEquals(b[1], 30)
    s:close()
    given = nil; r = nil; t = nil
    -- Setup arguments that go unused (a singleton found, a state that
    -- cannot be made) let go of their buffers.
    local one = isle.singleton("isle_test_buffers", function(x) return function() return x end end, b)
    local again = isle.singleton("isle_test_buffers", function(_x) return function() end end, b)
    lu.assertEquals(again:id(), one:id())
    lu.assertEquals(err_of(isle.state, { memory_limit = 1000 }, function() return function() end end, b).code, "memory")
    one:close()
    again = nil
    b:close()
end

-- The memory goes only when the last holder lets go: the creator closes
-- first, an isle keeps it, then lets go.
function TestBuffer:test_freed_only_after_the_last_holder()
    local h = isle.spawn{ init = function() function keep(b) kept = b return true end end }
    local b = isle.buffer("int32_t", 4)
    b[2] = 9
    lu.assertTrue(h:call("keep", b))
    b:close()
    settle()
    lu.assertEquals(live(), self.live0 + 1) -- the isle holds it
    lu.assertEquals(h:eval("return kept[2]"), 9)
    h:eval("kept = nil collectgarbage() collectgarbage()")
    live_becomes(self.live0, "after the isle let go")
    -- A pointer kept after its buffer object is gone keeps the memory.
    local p = isle.buffer("int32_t", 4):ptr()
    settle()
    p[3] = 5
    lu.assertEquals(live(), self.live0 + 1)
    lu.assertEquals(p[3], 5)
    p = nil
    settle()
    lu.assertEquals(live(), self.live0)
    -- A closed isle lets go of what its state held.
    local b2 = isle.buffer(10)
    h:call("keep", b2)
    b2:close()
    lu.assertEquals(live(), self.live0 + 1)
    h:close()
    live_becomes(self.live0, "after the isle closed")
end

-- A message that carries a buffer and is never read (its isle closed with
-- it queued) lets go of it; so does a channel freed with it queued, and a
-- result nobody reads.
function TestBuffer:test_messages_never_read_let_go()
    local gate, addr = helpers.gate_memory()
    local h = isle.spawn()
    local t = h:spawn_eval(helpers.GATE, addr)
    lu.assertTrue(helpers.eventually(function() return gate[1] == 1 end, 10)) -- the gate runs
    local b = isle.buffer(2 ^ 20)
    for _ = 1, 5 do h:post("type", b) end
    local t2 = h:spawn_call("type", { b })
    b:close()
    lu.assertEquals(live(), self.live0 + 1) -- held by the queued messages
    h:close{ cancel = true }
    gate[0] = 1
    t:wait(5); t2:wait(5)
    live_becomes(self.live0, "after the isle closed with the messages queued")

    local ch = isle.channel(4)
    ch:push(isle.buffer(100))
    ch:push({ isle.buffer(100) })
    settle()
    lu.assertEquals(live(), self.live0 + 2)
    ch = nil
    live_becomes(self.live0, "after the channel was collected")

    h = isle.spawn{ init = function() function make() return require("isle").buffer(100) end end }
    local rt = h:spawn_call("make")
    rt:wait(5)
    h:close()
    rt = nil
    live_becomes(self.live0, "after an unread result was collected")
end

-- 64 MB, written in full here, passed to 4 isles that each read every page:
-- the process does not grow by anything like 4 x 64 MB (it would if the
-- buffer were copied, as a 64 MB string would be).
function TestBuffer:test_64_mb_in_four_isles_is_not_copied()
    local MB = 1024 * 1024
    local hs = {}
    for i = 1, 4 do
        hs[i] = isle.spawn{ init = function()
            function sum_pages(b)
                local p, s = b:ptr(), 0
                for i = 0, b:size() - 1, 4096 do s = s + p[i] end
                return s
            end
        end }
    end
    local b = isle.buffer(64 * MB)
    ffi.fill(b:ptr(), 64 * MB, 1)
    settle()
    local before = helpers.rss_kb()
    for i = 1, 4 do lu.assertEquals(hs[i]:call("sum_pages", b), 64 * MB / 4096) end
    local grew = helpers.rss_kb() - before
    lu.assertTrue(grew < 64 * 1024, "RSS grew by " .. grew .. " KiB passing 64 MB to 4 isles")
    for i = 1, 4 do hs[i]:close() end
    b:close()
end

-- A struct declared in both states: the same element layout on both sides.
-- A state that has not declared it gets a `value` error naming the type
-- (and may declare it and try again); a different declaration of the same
-- name is caught by its size.
function TestBuffer:test_struct_buffers_need_the_type_declared_where_used()
    local b = isle.buffer("isle_test_point", 3)
    lu.assertEquals(b:size(), 3 * ffi.sizeof("isle_test_point"))
    b:ptr()[1].x, b:ptr()[1].tag = 2.5, 7
    local h = isle.spawn{ init = function()
        function use(b) local p = b:ptr() p[2].y = p[1].x * 2 return p[1].tag end
        function try(b) local ok, e = pcall(b.ptr, b) return ok, not ok and e.code, not ok and e.message end
        function declare(decl) require("ffi").cdef(decl) end
    end }
    local ok, code, msg = h:call("try", b)
    lu.assertFalse(ok)
    lu.assertEquals(code, "value")
    lu.assertStrContains(msg, "element type 'isle_test_point' is not known in isle")
    lu.assertStrContains(msg, "ffi.cdef")
    -- Used through a call, the error reaches the caller as a value error.
    local e = err_of(h.call, h, "use", b)
    lu.assertEquals(e.code, "value")
    lu.assertStrContains(tostring(e), "'isle_test_point' is not known")
    h:call("declare", "typedef struct isle_test_point { double x, y; int32_t tag; } isle_test_point;")
    lu.assertEquals(h:call("use", b), 7)
    lu.assertEquals(b:ptr()[2].y, 5)
    -- The same name declared differently elsewhere.
    local g = isle.spawn{ init = function()
        require("ffi").cdef("typedef struct isle_test_point { float x; } isle_test_point;")
        function try(b) local _, e = pcall(b.ptr, b) return e.message end
    end }
    lu.assertStrContains(g:call("try", b), "is 4 bytes in isle")
    lu.assertStrContains(g:call("try", b), "but was 24 bytes where the buffer was made")
    h:close(); g:close()
    b:close()
end

-- Atomics on int32/int64 elements from 4 isles at once: no update lost.
function TestBuffer:test_atomics_from_four_isles()
    local b = isle.buffer("int32_t", 2)
    local c = isle.buffer("int64_t", 1)
    local u = isle.buffer("uint32_t", 1)
    lu.assertEquals(isle.atomic_add(b, 0, 5), 0)
    lu.assertEquals(isle.atomic_add(b, 0, -2), 5)
    lu.assertEquals(isle.atomic_load(b, 0), 3)
    lu.assertTrue(isle.atomic_cas(b, 0, 3, 10))
    lu.assertFalse(isle.atomic_cas(b, 0, 3, 11))
    isle.atomic_store(b, 1, -7)
    lu.assertEquals(b[1], -7)
    lu.assertEquals(tostring(isle.atomic_add(c, 0, 2 ^ 40)), "0LL")
    lu.assertEquals(tostring(isle.atomic_load(c, 0)), tostring(1099511627776LL))
    isle.atomic_store(u, 0, -1)
    lu.assertEquals(isle.atomic_load(u, 0), 4294967295)
    isle.atomic_store(b, 0, 0)
    isle.atomic_store(c, 0, 0)
    local N = 20000
    local ts, hs = {}, {}
    for i = 1, 4 do
        hs[i] = isle.spawn()
        ts[i] = hs[i]:spawn_exec(function(b, c, n)
            local isle = require("isle")
            for _ = 1, n do isle.atomic_add(b, 0, 1) isle.atomic_add(c, 0, 3) end
            return true
        end, b, c, N)
    end
    for i = 1, 4 do lu.assertTrue(ts[i]:wait(30)) hs[i]:close() end
    lu.assertEquals(isle.atomic_load(b, 0), 4 * N)
    lu.assertEquals(tonumber(isle.atomic_load(c, 0)), 12 * N)
    -- Errors.
    local d = isle.buffer("double", 1)
    lu.assertStrContains(err_of(isle.atomic_add, d, 0, 1), "a buffer of int32_t, uint32_t, int64_t or uint64_t expected, got one of double")
    lu.assertStrContains(err_of(isle.atomic_add, b, 2, 1), "bad argument #2 to 'atomic_add' (index in 0..1 expected, got 2)")
    lu.assertStrContains(err_of(isle.atomic_add, b, 0, "x"), "bad argument #3 to 'atomic_add' (integer expected, got string)")
    lu.assertStrContains(err_of(isle.atomic_cas, b, 0, 1, nil), "bad argument #4 to 'atomic_cas'")
    lu.assertStrContains(err_of(isle.atomic_load, {}, 0), "bad argument #1 to 'atomic_load' (isle.buffer expected, got table)")
    lu.assertStrContains(err_of(isle.atomic_store, b, -1, 0), "bad argument #2 to 'atomic_store'")
    b:close(); c:close(); u:close(); d:close()
    lu.assertEquals(err_of(isle.atomic_load, b, 0).code, "closed")
end

-- A capped isle pays for the buffers it makes while they live, wherever
-- they go: one past its limit is refused with `memory`.
function TestBuffer:test_a_capped_isle_is_charged_for_its_buffers()
    local h = isle.spawn{ memory_limit = 8 * 1024 * 1024, init = function()
        function make(n)
            local ok, e = pcall(require("isle").buffer, n)
            if ok then kept = e return true end
            return false, e.code, e.message
        end
        function used() return tonumber(require("isle.cdef").C.isle_mem_used(require("isle.runtime").mem)) end
    end }
    local before = h:call("used")
    lu.assertTrue(h:call("make", 4 * 1024 * 1024))
    lu.assertTrue(h:call("used") >= before + 4 * 1024 * 1024)
    local ok, code, msg = h:call("make", 4 * 1024 * 1024)
    lu.assertFalse(ok)
    lu.assertEquals(code, "memory")
    lu.assertStrContains(msg, "does not fit in the memory_limit of isle")
    -- Given away, it is still charged; dropped, the charge goes.
    local b = h:eval("return kept")
    h:eval("kept = nil collectgarbage() collectgarbage()")
    lu.assertTrue(h:call("used") >= before + 4 * 1024 * 1024)
    b:close()
    lu.assertTrue(h:call("used") < before + 1024 * 1024)
    h:close()
end

os.exit(lu.LuaUnit.run())
