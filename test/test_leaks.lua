-- No leaks (issue 7, part 6): what a call, a token or a wait subscribes to is
-- taken back when it no longer matters, and a million calls leave the memory
-- where it was. test/valgrind/check.sh checks the same at exit under valgrind.
local lu = require("luaunit")
local ffi = require("ffi")
local isle = require("isle")
local PTRS = require("isle.runtime").ptrs -- an object's C pointer (tests reach the core directly)
local helpers = require("test.helpers")
local C = require("isle.cdef").C

local INIT = [[
    isle = require("isle")
    function inc(x) return x + 1 end
    function boom() error("boom") end
    function nap(s) isle.sleep(s) return true end
]]

local function mb_mb() return helpers.rss_kb() / 1024 end

local malloc_mb = helpers.malloc_mb

-- Is a watch by `h`'s state still on `tok`? Taking one back is the only way
-- to see it from outside; a watch found is put back, so nothing changes.
local function watched_by(h, tok)
    local mbox, sig = C.isle_mbox_of(PTRS[h]), C.isle_sig_of(PTRS[h])
    if C.isle_task_unwatch(PTRS[tok], mbox, sig) == 0 then return false end
    assert(C.isle_task_watch(PTRS[tok], mbox, sig) == 1)
    return true
end

-- The same for a subscription of `h`'s mailbox (a wait inside `h`).
local function subscribed_by(h, tok)
    local mbox = C.isle_mbox_of(PTRS[h])
    if C.isle_task_unsubscribe(PTRS[tok], mbox) == 0 then return false end
    assert(C.isle_task_subscribe(PTRS[tok], mbox) == 1)
    return true
end

TestLeaks = { deadline = { test_a_million_calls_with_tokens_keep_rss_flat = 300 } } -- 45-55 s on a loaded 2-core machine

function TestLeaks:setUp() self.h = isle.spawn{ init = INIT } end
function TestLeaks:tearDown() self.h:close{ cancel = true } end

function TestLeaks:test_a_finished_job_takes_its_token_watch_back()
    local h, tok = self.h, isle.token()
    -- The probe itself sees a watch (here the host's own).
    lu.assertFalse(watched_by(h, tok))
    lu.assertEquals(C.isle_task_watch(PTRS[tok], C.isle_mbox_of(PTRS[h]), C.isle_sig_of(PTRS[h])), 1)
    lu.assertTrue(watched_by(h, tok))
    lu.assertEquals(C.isle_task_unwatch(PTRS[tok], C.isle_mbox_of(PTRS[h]), C.isle_sig_of(PTRS[h])), 1)
    -- However a job ends, its watch is gone by the time its caller hears.
    local v = h:with{ token = tok }
    lu.assertEquals(v:call("inc", 1), 2)
    lu.assertFalse(watched_by(h, tok), "after a result")
    lu.assertFalse(pcall(v.call, v, "boom"))
    lu.assertFalse(watched_by(h, tok), "after an error")
    lu.assertFalse(pcall(v.call, v, "no_such_function"))
    lu.assertFalse(watched_by(h, tok), "after a missing target")
    local ok, err = pcall(h.call, h:with{ token = tok, timeout = 0.05 }, "nap", 60)
    lu.assertFalse(ok)
    lu.assertEquals(err.code, "timeout")
    lu.assertFalse(watched_by(h, tok), "after a deadline")
    -- Many jobs on one token: each takes back its own.
    local tasks = {}
    for i = 1, 5 do tasks[i] = v:spawn_call("nap", 0.05) end
    for i = 1, 5 do lu.assertEquals(select(2, tasks[i]:wait()), true) end
    lu.assertFalse(watched_by(h, tok), "after five jobs")
    -- A job stopped by its token: the cancel itself consumed the watch.
    local t = v:spawn_call("nap", 60)
    lu.assertTrue(helpers.eventually(function() return watched_by(h, tok) end), "a running job watches")
    tok:cancel()
    local ok2, e2 = t:wait()
    lu.assertFalse(ok2)
    lu.assertEquals(e2.code, "cancelled")
    lu.assertFalse(watched_by(h, tok))
end

function TestLeaks:test_a_wait_that_gives_up_takes_its_subscription_back()
    -- Inside an isle a wait subscribes its mailbox to the task; when the
    -- wait gives up on a task that goes on, the subscription must go too.
    local peer = isle.spawn{ name = "leaks_peer", init = INIT }
    local h = self.h
    h:eval([[
        local ffi = require("ffi")
        local C = require("isle.cdef").C
        local PTRS = require("isle.runtime").ptrs
        function give_up()
            local t = isle.lookup("leaks_peer"):spawn_call("nap", 60)
            local ok, err = t:wait(0.02)
            assert(not ok and err.code == "timeout", "the wait should time out")
            -- 0: nothing left to take back.
            local left = C.isle_task_unsubscribe(PTRS[t], C.isle_mbox_of(PTRS[isle.self()]))
            t:cancel()
            return left
        end
        function probe()
            local t = isle.lookup("leaks_peer"):spawn_call("nap", 60)
            local ok = t:wait(0.02)
            -- Taken back here to show the probe sees a live subscription.
            local mb = C.isle_mbox_of(PTRS[isle.self()])
            local sub = C.isle_task_subscribe(PTRS[t], mb)
            local left = C.isle_task_unsubscribe(PTRS[t], mb) + C.isle_task_unsubscribe(PTRS[t], mb)
            t:cancel()
            return sub, left
        end
    ]])
    lu.assertEquals(h:call("give_up"), 0)
    lu.assertEquals({ h:call("probe") }, { 1, 1 })
    peer:close{ cancel = true }
end

function TestLeaks:test_a_dying_loop_takes_back_what_its_jobs_held()
    -- Break the isle's own loop (as a bug or out-of-memory in it would):
    -- its suspended jobs never complete, yet their token watch and the
    -- subscription of their wait must go.
    local h = self.h
    local tok, tok2 = isle.token(), isle.token()
    h:eval("function hold(tok) local rt = require('isle.runtime') return rt.wait_task(rt.ptrs[tok], 600) end")
    local holder = h:spawn_call("hold", tok2)
    local napper = h:with{ token = tok }:spawn_call("nap", 60)
    lu.assertTrue(helpers.eventually(function()
        return holder:status() == "running" and napper:status() == "running"
    end))
    lu.assertTrue(helpers.eventually(function() return subscribed_by(h, tok2) end), "the wait subscribes")
    lu.assertTrue(watched_by(h, tok), "the job watches its token")
    h:eval("require('isle.runtime').sched.host.on_idle = function() error('loop broken (on purpose)') end")
    h:spawn_eval("return 1") -- the next turn of the loop breaks
    lu.assertFalse((napper:wait(10)))
    lu.assertFalse((holder:wait(10)))
    lu.assertFalse(watched_by(h, tok))
    lu.assertFalse(subscribed_by(h, tok2))
end

function TestLeaks:test_timed_waits_behind_a_long_timer_do_not_pile_up()
    -- A job sleeping for long keeps its timer at the top of the heap; the
    -- timers of waits that ended early behind it must not stay until then.
    local peer = isle.spawn{ name = "leaks_peer2", init = INIT }
    local h = self.h
    h:eval([[
        function sleeper() pcall(isle.sleep, 600) end
        function waits(n)
            local peer = isle.lookup("leaks_peer2")
            for i = 1, n do
                local t = peer:spawn_call("inc", i)
                assert(t:wait(600) == true)
            end
            collectgarbage()
            collectgarbage()
            return collectgarbage("count")
        end
    ]])
    h:post("sleeper")
    local first = h:call("waits", 5000)
    local last
    for _ = 1, 3 do last = h:call("waits", 5000) end
    -- 15,000 dead timers held would be about 2 MB.
    lu.assertTrue(last - first < 512, string.format("isle heap grew from %.0f to %.0f KB", first, last))
    peer:close()
end

function TestLeaks:test_results_of_timed_calls_are_not_kept_until_their_deadline()
    -- The watchdog holds each timed task until its deadline unless the task
    -- leaves when it ends. After a burst has grown its heap to 1024 entries,
    -- 1000 results of 100 KB under 60 s deadlines were all kept (~100 MB of
    -- C memory; measured with malloc's count, as freed memory need not lower
    -- RSS).
    local h = self.h
    h:eval("big = string.rep('x', 100000) function get() return big end")
    local v = h:with{ timeout = 60 }
    local ts = {}
    for i = 1, 1000 do ts[i] = v:spawn_call("inc", i) end
    for i = 1, 1000 do lu.assertEquals(select(2, ts[i]:wait()), i + 1) end
    ts = nil
    collectgarbage()
    collectgarbage()
    local before = malloc_mb()
    for _ = 1, 1000 do lu.assertEquals(#v:call("get"), 100000) end
    collectgarbage()
    collectgarbage()
    local grown = malloc_mb() - before
    lu.assertTrue(grown < 16, string.format("C memory in use grew by %.1f MB", grown))
end

function TestLeaks:test_a_blocking_call_lets_go_of_its_result_at_once()
    -- A call's slot, and the C copy of its result, went only when the GC
    -- collected the slot; the GC does not see that memory, so 1000 results
    -- of 100 KB left 50-95 MB behind (measured) before a full collection.
    local h = self.h
    h:eval("big = string.rep('y', 100000) function get() return big end")
    collectgarbage()
    local before = malloc_mb()
    for _ = 1, 1000 do lu.assertEquals(#h:call("get"), 100000) end
    local grown = malloc_mb() - before
    lu.assertTrue(grown < 16, string.format("C memory in use grew by %.1f MB", grown))
end

function TestLeaks:test_a_million_calls_with_tokens_keep_rss_flat()
    local h = self.h
    local N, WARM = 1000000, 100000
    -- In batches of spawned calls, so that the host and the isle work at the
    -- same time; each call's token is cancelled before it is sent (it never
    -- runs), after its result came back, or never.
    local B = 100
    local toks, tasks = {}, {}
    local function burst(from, to)
        for base = from, to, B do
            for j = 1, B do
                local i = base + j - 1
                local tok = isle.token()
                if i % 4 == 0 then tok:cancel() end
                toks[j], tasks[j] = tok, h:with{ token = tok }:spawn_call("inc", i)
            end
            for j = 1, B do
                local i = base + j - 1
                local ok, r = tasks[j]:wait()
                if i % 4 == 0 then
                    assert(not ok and r.code == "cancelled")
                else
                    assert(ok and r == i + 1)
                    if i % 4 == 1 then toks[j]:cancel() end
                end
            end
        end
        collectgarbage()
        collectgarbage()
    end
    local t0 = isle.now()
    burst(1, WARM)
    local at_warm, c_at_warm = mb_mb(), malloc_mb()
    burst(WARM + 1, N)
    local grown, c_grown = mb_mb() - at_warm, malloc_mb() - c_at_warm
    print(string.format("\n    [leaks] %d calls with tokens in %.1f s; RSS %+.2f MB, C memory %+.2f MB after the first %d",
        N, isle.now() - t0, grown, c_grown, WARM))
    -- The old leak was about 215 bytes per call never cancelled: 97 MB here.
    lu.assertTrue(grown < 8, string.format("RSS grew by %.1f MB", grown))
    lu.assertTrue(c_grown < 8, string.format("C memory in use grew by %.1f MB", c_grown))
end

function TestLeaks:test_control_the_bounds_catch_the_old_leak()
    -- The old behaviour by hand: jobs' watches never taken back. 200,000 of
    -- them (a fifth of the calls above) must break both bounds used above.
    local h = self.h
    local mbox, sig = C.isle_mbox_of(PTRS[h]), C.isle_sig_of(PTRS[h])
    local leaked = {}
    collectgarbage()
    local before, c_before = mb_mb(), malloc_mb()
    for i = 1, 200000 do
        local tok = isle.token()
        assert(C.isle_task_watch(PTRS[tok], mbox, sig) == 1)
        leaked[i] = PTRS[tok]
        ffi.gc(PTRS[tok], nil) -- as before: only the watch holds the token
        C.isle_task_release(PTRS[tok])
    end
    local grown, c_grown = mb_mb() - before, malloc_mb() - c_before
    print(string.format("\n    [leaks] control: RSS %+.1f MB, C memory %+.1f MB", grown, c_grown))
    -- Clean up: taking each watch back frees its token.
    for i = 1, #leaked do assert(C.isle_task_unwatch(leaked[i], mbox, sig) == 1) end
    lu.assertTrue(grown >= 8, string.format("200,000 leaked watches grew RSS by only %.1f MB", grown))
    lu.assertTrue(c_grown >= 8, string.format("200,000 leaked watches grew C memory by only %.1f MB", c_grown))
end

-- Tokens travel with the C objects that carry them (isle.wire): a message,
-- a result, an isle's boot holds a reference to each of its tokens and lets
-- go of it when freed, whether or not anything decoded it. These count the
-- live task slots of the process (isle_task_live_count; tokens are slots):
-- after each test, with its isles closed and its objects collected, the
-- count must be back where it started. Before tokens were carried, each
-- of these shapes left slots behind (a reference taken at encode time for a
-- receiver that never came).
TestCarriedTokens = {}

local function live_slots() return C.isle_task_live_count() end

-- Collects until the count stops moving; returns it.
local function settled_slots() return helpers.settled(live_slots) end

-- Runs scenario(), then requires the count of live slots to come back to
-- where it was (isles close on their threads: given a few seconds).
local function leaves_no_slot(scenario)
    local before = settled_slots()
    scenario()
    local after = live_slots()
    helpers.eventually(function()
        collectgarbage()
        collectgarbage()
        after = live_slots()
        return after == before
    end, 3)
    lu.assertEquals(after, before, string.format("%d task slot(s) left behind", after - before))
end

-- An isle whose queue is held by a gate job, so that what is sent behind it
-- stays queued until the test closes the isle with cancel.
local function gated_isle(opts)
    local b = isle.spawn(opts or { init = INIT })
    local mem, addr = helpers.gate_memory()
    local gate = b:spawn_eval(helpers.GATE, addr)
    lu.assertTrue(helpers.eventually(function() return mem[1] == 1 end), "the gate job did not start")
    return b, gate, mem
end

function TestCarriedTokens:test_the_count_sees_a_slot_left_behind()
    -- The detector: one reference taken and never given back.
    local before = settled_slots()
    local extra = isle.token()
    -- A pointer of its own (a cast to the same type would return PTRS[extra]
    -- itself, finalizer and all).
    local p = ffi.cast("void *", PTRS[extra])
    C.isle_task_retain(p)
    extra = nil
    lu.assertEquals(settled_slots(), before + 1)
    C.isle_task_release(p)
    lu.assertEquals(settled_slots(), before)
end

function TestCarriedTokens:test_a_token_in_the_options_of_a_message_never_run()
    leaves_no_slot(function()
        local b, gate, mem = gated_isle()
        local t = b:with{ token = isle.token() }:spawn_call("inc", 1)
        local t2 = b:with{ token = isle.token(), timeout = 60 }:spawn_call("inc", 2)
        lu.assertEquals(t:status(), "queued")
        b:close{ cancel = true }
        lu.assertEquals(select(2, t:wait()).code, "closed")
        lu.assertEquals(select(2, t2:wait()).code, "closed")
        gate:wait()
        mem = nil
    end)
end

function TestCarriedTokens:test_a_token_among_the_values_of_a_message_never_run()
    leaves_no_slot(function()
        local b, gate = gated_isle()
        local kept = isle.token()
        local t = b:spawn_call("inc", isle.token(), { deep = { isle.token(), kept, kept } })
        b:post("inc", isle.token(), kept)
        lu.assertEquals(t:status(), "queued")
        b:close{ cancel = true }
        lu.assertEquals(select(2, t:wait()).code, "closed")
        gate:wait()
    end)
end

function TestCarriedTokens:test_posts_still_queued_when_the_isle_closes()
    -- Whether the closing loop takes them and frees them unread, or its
    -- thread drains them from the mailbox.
    leaves_no_slot(function()
        local b, gate = gated_isle()
        for _ = 1, 3 do b:post("inc", isle.token()) end
        lu.assertTrue(C.isle_mbox_count(C.isle_mbox_of(PTRS[b])) >= 1)
        b:close{ cancel = true }
        gate:wait()
    end)
end

function TestCarriedTokens:test_a_message_freed_with_its_mailbox()
    -- The encoder's message pushed into a mailbox that is released with it
    -- still queued (what happens to an isle's mailbox when the isle is freed).
    local runtime, codec, wire = require("isle.runtime"), require("isle.codec"), require("isle.wire")
    leaves_no_slot(function()
        local mb = C.isle_mbox_new(4, 0)
        local kept = isle.token()
        for i = 1, 3 do
            local enc = codec.reset(runtime.enc)
            codec.put_values(enc, "args", 1, 3, isle.token(), { kept }, i)
            local m = wire.new_msg(0, nil, enc)
            lu.assertEquals(tonumber(m.nrefs), 2)
            lu.assertEquals(codec.attached.n, 0) -- handed over: the encoder keeps nothing
            lu.assertEquals(C.isle_mbox_push(mb, m, 0), C.ISLE_OK)
        end
        C.isle_mbox_release(mb)
    end)
end

function TestCarriedTokens:test_tokens_in_a_result_nobody_decodes()
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT .. [[
            function give(tok) return tok, { isle.token(), tok } end
            function fail_with(tok) error({ tok = tok, mine = isle.token() }) end
        ]] }
        local tok = isle.token()
        local t = b:spawn_call("give", tok)
        local f = b:spawn_call("fail_with", tok)
        -- Ended, and never decoded: no wait, no result.
        lu.assertEquals(C.isle_task_wait(PTRS[t], 10), 1)
        lu.assertEquals(C.isle_task_wait(PTRS[f], 10), 1)
        lu.assertEquals(t:status(), "done")
        lu.assertEquals(f:status(), "failed")
        t, f = nil, nil
        b:close()
    end)
end

function TestCarriedTokens:test_a_result_decoded_twice_keeps_its_tokens()
    -- Each decode takes its own references: reading the outcome of a slot
    -- twice gives two working tokens, and freeing them all frees the slots.
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT .. "function give(tok) return tok end" }
        local tok = isle.token()
        local t = b:spawn_call("give", tok)
        lu.assertTrue((t:wait()))
        local wire = require("isle.wire")
        local _, _, a = wire.outcome(PTRS[t])
        local _, _, c = wire.outcome(PTRS[t])
        lu.assertTrue(PTRS[a] == PTRS[tok] and PTRS[c] == PTRS[tok])
        t, a, c = nil, nil, nil
        collectgarbage()
        collectgarbage()
        lu.assertFalse(tok:cancelled())
        tok:cancel()
        b:close()
    end)
end

function TestCarriedTokens:test_tokens_in_a_combined_result_nobody_decodes()
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT .. "function give(tok) return tok, isle.token() end" }
        local tok = isle.token()
        local all = isle.all({ b:spawn_call("give", tok), b:spawn_call("give", isle.token()) })
        local first = isle.first({ b:spawn_call("give", tok) })
        local hub = isle.hub()
        while C.isle_task_state(PTRS[all]) < C.ISLE_TASK_DONE or C.isle_task_state(PTRS[first]) < C.ISLE_TASK_DONE do
            hub:run(1)
        end
        lu.assertEquals(all:status(), "done")
        all, first = nil, nil
        b:close()
    end)
end

function TestCarriedTokens:test_an_encode_that_fails_after_a_token()
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT .. [[
            function bad_result(tok) return tok, isle.token(), coroutine.create(print) end
        ]] }
        local co = coroutine.create(print)
        local ok, e = pcall(b.call, b, "inc", isle.token(), co)
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "value")
        ok, e = pcall(b.call, b:with{ token = isle.token() }, "inc", { isle.token() }, co)
        lu.assertEquals(e.code, "value")
        ok, e = pcall(b.post, b, "inc", isle.token(), co)
        lu.assertEquals(e.code, "value")
        -- A result that cannot be encoded after a token.
        ok, e = pcall(b.call, b, "bad_result", isle.token())
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "value")
        lu.assertStrContains(e.message, "results[3]")
        -- The next call works, with a token.
        local tok = isle.token()
        lu.assertEquals(b:with{ token = tok }:call("inc", 1), 2)
        b:close()
    end)
end

function TestCarriedTokens:test_a_message_refused_by_a_full_mailbox()
    leaves_no_slot(function()
        local b, gate = gated_isle{ init = INIT, capacity = 1 }
        lu.assertTrue(b:try_post("inc", 1))
        local t, e = b:try_spawn_call("inc", isle.token())
        lu.assertNil(t)
        lu.assertEquals(e.code, "busy")
        local ok, e2 = b:with{ token = isle.token() }:try_post("inc", isle.token())
        lu.assertNil(ok)
        lu.assertEquals(e2.code, "busy")
        b:close{ cancel = true }
        gate:wait()
    end)
end

function TestCarriedTokens:test_tokens_among_the_arguments_of_a_spawn()
    leaves_no_slot(function()
        local tok = isle.token()
        local b = isle.spawn{ name = "carried_boot", init = "tok, other = ...", args = { tok, isle.token() } }
        lu.assertEquals(b:eval("return tok:cancelled()"), false)
        tok:cancel()
        lu.assertEquals(b:eval("return tok:cancelled()"), true)
        -- A spawn that fails after its arguments were encoded (the name is taken).
        local ok, e = pcall(isle.spawn, { name = "carried_boot", args = { isle.token() } })
        lu.assertFalse(ok)
        lu.assertStrContains(tostring(e), "in use")
        b:close()
    end)
end

function TestCarriedTokens:test_too_many_tokens_in_one_message_is_a_value_error()
    local codec = require("isle.codec")
    local max = codec.MAX_ATTACHED
    lu.assertEquals(max, C.ISLE_MSG_REFS_MAX)
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT .. "function count(t) return #t, t[#t]:cancelled() end" }
        local tok = isle.token()
        local many = {}
        for i = 1, max do many[i] = tok end
        lu.assertEquals({ b:call("count", many) }, { max, false })
        many[max + 1] = tok
        local ok, e = pcall(b.call, b, "count", many)
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "value")
        lu.assertStrContains(e.message, "more than " .. max .. " tokens in one message at args[1][" .. (max + 1) .. "]")
        b:close()
    end)
end

function TestLeaks:test_a_host_that_exits_without_closing_its_isles_exits_cleanly()
    -- LuaJIT unloads libisle when the host state closes, while an abandoned
    -- isle still finishes on its thread: the library must stay mapped
    -- (-z nodelete, pin_library in csrc/isle.c). Without it this crashed about every other run.
    local luajit = helpers.luajit()
    local script = "local isle = require('isle') jit.off() "
        .. "local h = isle.spawn{ init = 'function f(x) return x end' } "
        .. "for i = 1, 100 do h:with{ timeout = 5 }:call('f', i) end print('bye')"
    for _ = 1, 10 do
        local p = io.popen("timeout 30 " .. luajit .. " -e \"" .. script .. "\" 2>&1; echo rc=$?")
        local out = p:read("*a")
        p:close()
        lu.assertStrContains(out, "bye\nrc=0")
    end
end

-- A blocking call (h:call, eval, exec) releases its task slot itself once
-- it has the outcome; if it never gets there, the holder it kept the slot
-- in (isle.handle) releases it when collected. Every way such a call ends
-- must leave the count of live slots where it was.
TestBlockingCalls = {}

function TestBlockingCalls:test_slots_go_however_a_blocking_call_ends()
    leaves_no_slot(function()
        local b = isle.spawn{ init = INIT }
        for i = 1, 200 do lu.assertEquals(b:call("inc", i), i + 1) end
        for _ = 1, 50 do lu.assertFalse((pcall(b.call, b, "boom"))) end
        lu.assertEquals(b:eval("return ...", 4), 4)
        lu.assertEquals(b:exec(function(x) return x * 2 end, 4), 8)
        -- Ended by its deadline while it runs.
        local ok, e = pcall(b.call, b:with{ timeout = 0.01 }, "nap", 5)
        lu.assertFalse(ok)
        lu.assertEquals(e.code, "timeout")
        -- Abandoned: a job of `a` blocked in a call to `b` is cancelled
        -- while it waits (the call cancels its own task and raises); and
        -- `a` closed with cancel while another one waits.
        local a = isle.spawn{ init = INIT }
        local t = a:spawn_eval("return require('isle').lookup(...):call('nap', 5)", b:id())
        isle.sleep(0.05)
        t:cancel()
        lu.assertEquals(select(2, t:wait(10)).code, "cancelled")
        local t2 = a:spawn_eval("return require('isle').lookup(...):call('nap', 5)", b:id())
        isle.sleep(0.05)
        a:close{ cancel = true }
        lu.assertEquals(select(2, t2:wait(10)).code, "closed")
        -- A closed isle: refused before any slot is made.
        b:close{ cancel = true }
        lu.assertEquals(select(2, pcall(b.call, b, "inc", 1)).code, "closed")
    end)
end

os.exit(lu.LuaUnit.run())
