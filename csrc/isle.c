/* isle.c - an isle: a thread owning one fresh lua_State that runs the Lua
 * worker loop (lua/isle/worker.lua) over the isle's mailbox.
 *
 * References: the owner's handle, its thread (until done with it) and every
 * looked-up handle each hold one; the isle is freed when the last goes.
 * The registry (live isles by id and name) has its own lock, taken before
 * any other lock of the core.
 */
#include "internal.h"

#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct isle {
    atomic_int refs;
    int64_t id;
    char *name;
    char *path, *cpath;
    isle_msg *boot; /* the boot bytes and the references they carry */
    isle_mbox *mbox;
    isle_sig *sig;
    isle_task *init;
    int64_t intr; /* interrupt id of the isle's state */
    int instrument;
    isle_mem *mem;           /* the state's account (mem.c) */
    isle_mem *charge;        /* the spawner's, charged memory_limit until the state closes */
    size_t charged;          /* what is charged to it now */
    isle_lua_acct acct;      /* the state under `mem` (isle_lua_new) */
    pthread_mutex_t join_mu; /* `ended`'s setting and its waiters */
    pthread_cond_t ended_cv; /* broadcast when the isle's thread is done with it */
    atomic_int ended;        /* the thread has nothing left to do for this isle
                                (set under join_mu; a joiner spins on it before
                                it waits); the thread may park for the next
                                isle then (threads.c) */
    atomic_int closing;
    atomic_int close_mode;
    isle *rnext;   /* registry list (registry lock) */
    isle **rprevp; /* what points at it in that list; NULL: not listed */
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static isle *reg_head;
static int64_t reg_next_id = 1;
static atomic_int live_threads;
/* This library's file, set once by pin_library before the first isle or shared
 * state starts. */
static const char *lib_file;

/* O(1) either way: an isle leaves the list up to three times (stop, its
 * thread's end, free), and with 10,000 live isles a scan for each cost more
 * than the rest of a close. */
static void reg_insert_locked(isle *i)
{
    i->rnext = reg_head;
    if (reg_head) reg_head->rprevp = &i->rnext;
    i->rprevp = &reg_head;
    reg_head = i;
}

static void reg_remove_locked(isle *i)
{
    if (!i->rprevp) return;
    *i->rprevp = i->rnext;
    if (i->rnext) i->rnext->rprevp = i->rprevp;
    i->rnext = NULL;
    i->rprevp = NULL;
}

static void isle_free(isle *i)
{
    pthread_mutex_lock(&reg_lock);
    reg_remove_locked(i);
    pthread_mutex_unlock(&reg_lock);
    isle_task_release(i->init);
    isle_sig_release(i->sig);
    isle_mbox_release(i->mbox);
    isle_mem_uncharge(i->charge, i->charged);
    isle_mem_release(i->charge);
    isle_mem_release(i->mem);
    pthread_cond_destroy(&i->ended_cv);
    pthread_mutex_destroy(&i->join_mu);
    free(i->name);
    free(i->path);
    free(i->cpath);
    isle_msg_free(i->boot);
    free(i);
}

void isle_retain(isle *i) { atomic_fetch_add_explicit(&i->refs, 1, memory_order_relaxed); }

/* Drops one reference: 1 if it was the last (the caller frees the isle). */
static int drop_ref(isle *i)
{
    return atomic_fetch_sub_explicit(&i->refs, 1, memory_order_acq_rel) == 1;
}

void isle_release(isle *i)
{
    if (i && drop_ref(i)) isle_free(i);
}

int64_t isle_id(const isle *i) { return i->id; }
const char *isle_name(const isle *i) { return i->name ? i->name : ""; }
isle_mbox *isle_mbox_of(isle *i) { return i->mbox; }
isle_sig *isle_sig_of(isle *i) { return i->sig; }
isle_mem *isle_mem_of(isle *i) { return i->mem; }
isle_task *isle_init_task(isle *i) { return i->init; }
int64_t isle_state_intr(isle *i) { return i->intr; }
int isle_instrument(const isle *i) { return i->instrument; }
int isle_is_closed(const isle *i) { return atomic_load(&i->closing); }
int isle_close_mode(const isle *i) { return atomic_load(&i->close_mode); }
int isle_live_count(void) { return atomic_load(&live_threads); }

const isle_msg *isle_boot(isle *i) { return i->boot; }

/* Bootstrap failures are reported as raw text, tagged ISLE_WIRE_CORE so the
 * Lua side can tell them from results its own encoder wrote. */
static void fail_init(isle *i, const char *msg)
{
    size_t n = strlen(msg);
    char *buf = malloc(n + 1);
    if (!buf) {
        isle_task_complete(i->init, ISLE_TASK_FAILED, NULL, 0);
        return;
    }
    buf[0] = ISLE_WIRE_CORE;
    /* Bytes with a length, not a C string: no terminator wanted. */
    memcpy(buf + 1, msg, n); /* NOLINT(bugprone-not-null-terminated-result) */
    isle_task_complete(i->init, ISLE_TASK_FAILED, buf, n + 1);
    free(buf);
}

/* What every state the core creates starts from (isles here, shared states
 * in state.c): the standard libraries, isle's preloaded modules and the
 * creator's package paths. Run protected: setting them can raise. */
typedef struct boot_paths {
    const char *path, *cpath;
} boot_paths;

static int boot_state(lua_State *L)
{
    boot_paths *bp = lua_touserdata(L, 1);
    luaL_openlibs(L);
    isle_preload_install(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, bp->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, bp->cpath);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    /* ffi/isle/cdef.lua loads this file rather than searching (pin_library). */
    if (lib_file) {
        lua_pushstring(L, lib_file);
        lua_setfield(L, LUA_REGISTRYINDEX, "isle.library");
    }
    return 0;
}

static pthread_once_t pin_once = PTHREAD_ONCE_INIT;
static void pin_library(void);

/* Accounting a state ----------------------------------------------------------
 *
 * The state is built by LuaJIT's own allocator (luaL_newstate) and boots
 * in a boot heap (bootheap.c: a region recycled from closed states, so
 * already faulted in; once it is full, new blocks are LuaJIT's allocator's
 * again). Then it is counted through its account (isle_mem_alloc wraps the
 * boot heap's router, or LuaJIT's allocator when there is no boot heap), so
 * no limit can fail an allocation inside lua_newstate.
 *
 * lua_close must find LuaJIT's allocator in place again when it is done, or
 * it does not destroy that allocator's arena (it only frees the main block
 * into it); but the finalizers lua_close runs first are the state's code
 * and stay under the account, and the blocks of the boot heap must reach
 * the boot heap until the last of them is freed. So the state holds a
 * sentinel block that nothing but lua_close frees: a userdata in the
 * registry (the main thread's stack would not do: lua_close empties it
 * before the finalizers, whose allocations may then collect it). LuaJIT
 * frees it once every finalizer has run, with the rest of the state; then
 * the boot heap alone routes the frees, and when it has no block left (all
 * are freed before lua_close's end: LuaJIT checks that its count of bytes
 * is back to its main block) the allocator goes back to LuaJIT's. (Code
 * that takes the sentinel out of the registry only makes the hand-back come
 * at another moment of the close, or never: then the arena stays mapped.) */
enum { CAUGHT_MAX = 8 };
typedef struct caught {
    isle_mem *mem;
    int n;
    void *block[CAUGHT_MAX];
    size_t size[CAUGHT_MAX];
} caught;

/* Notes the new blocks made while the sentinel is created: the one holding
 * its payload is the sentinel (account_state). */
static void *catch_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    caught *c = ud;
    void *q = isle_mem_alloc(c->mem, p, osz, nsz);
    if (q && !p && c->n < CAUGHT_MAX) {
        c->block[c->n] = q;
        c->size[c->n++] = nsz;
    }
    return q;
}

/* LuaJIT's allocator under another name: lua_close frees the state's last
 * block through it and leaves the arena alone (arena.c). */
static void *keep_arena_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    isle_lua_acct *a = ud;
    return a->allocf(a->allocd, p, osz, nsz);
}

/* The boot heap has no block of the state left: lua_close ends with
 * LuaJIT's allocator, which destroys the arena, or with its forwarder if the
 * arena is to be kept for the next state. */
static void to_luajit(void *ud)
{
    isle_lua_acct *a = ud;
    a->keep_arena = isle_arena_reserve(isle_mem_peak(a->mem));
    if (a->keep_arena) lua_setallocf(a->L, keep_arena_alloc, a);
    else lua_setallocf(a->L, (lua_Alloc)a->allocf, a->allocd);
}

/* The allocator lua_close ends with: LuaJIT's, once the boot heap holds no
 * block of the state (until then the boot heap routes the frees, and tells
 * when its last block goes). */
static void hand_back(isle_lua_acct *a)
{
    if (a->boot && isle_bootheap_closing(a->boot, to_luajit, a))
        lua_setallocf(a->L, isle_bootheap_alloc, a->boot);
    else to_luajit(a);
}

static void *closing_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    isle_lua_acct *a = ud;
    void *q = isle_mem_alloc(a->mem, p, osz, nsz);
    if (p == a->sentinel && nsz == 0) hand_back(a);
    return q;
}

/* Counts the state from now on; 0 if the sentinel could not be made. */
static int account_state(isle_lua_acct *a, lua_State *L)
{
    size_t heap = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    if (a->boot) isle_mem_wrap(a->mem, isle_bootheap_alloc, a->boot, heap, a->sig);
    else isle_mem_wrap(a->mem, a->allocf, a->allocd, heap, a->sig);
    caught c = {.mem = a->mem, .n = 0};
    lua_setallocf(L, catch_alloc, &c);
    void *u = lua_newuserdata(L, 1);
    lua_setallocf(L, isle_mem_alloc, a->mem);
    lua_setfield(L, LUA_REGISTRYINDEX, "isle.sentinel");
    a->sentinel = NULL;
    for (int k = 0; k < c.n; k++)
        if ((char *)c.block[k] <= (char *)u && (char *)u < (char *)c.block[k] + c.size[k])
            a->sentinel = c.block[k];
    return a->sentinel != NULL;
}

/* lua_close, then the boot heap's region and the arena go back to their
 * pools. */
static void close_state(lua_State *L, isle_lua_acct *a)
{
    lua_close(L);
    if (a->keep_arena) isle_arena_put(a->allocd);
    a->keep_arena = 0;
    isle_bootheap_give_back(a->boot);
    a->boot = NULL;
    a->L = NULL;
    a->sentinel = NULL;
}

void isle_lua_close(lua_State *L, isle_lua_acct *a)
{
    if (!a) {
        lua_close(L);
        return;
    }
    /* Finalizers that lua_close runs are under the limit too. */
    isle_mem_enforce(a->mem, ISLE_MEM_CORE);
    if (a->sentinel) lua_setallocf(L, closing_alloc, a);
    else hand_back(a);
    close_state(L, a);
    isle_mem_unwrap(a->mem);
}

/* LuaJIT's allocator function, as the first state made here reported it. */
static _Atomic(lua_Alloc) luajit_alloc;

/* A new state, on an arena kept from a closed one when there is one (only a
 * state with an account can keep its arena in turn). */
static lua_State *new_state(int kept_arena)
{
    lua_Alloc f = atomic_load_explicit(&luajit_alloc, memory_order_relaxed);
    void *arena = kept_arena && f ? isle_arena_take() : NULL;
    /* A failure inside lua_newstate closes the partial state on LuaJIT's own
     * function: the arena is destroyed with it. */
    if (arena) return lua_newstate(f, arena);
    lua_State *L = luaL_newstate();
    if (L && !f) {
        void *ud;
        atomic_store_explicit(&luajit_alloc, lua_getallocf(L, &ud), memory_order_relaxed);
    }
    return L;
}

lua_State *isle_lua_new(const char *path, const char *cpath, isle_lua_acct *acct)
{
    pthread_once(&pin_once, pin_library);
    lua_State *L = new_state(acct != NULL);
    if (!L) return NULL;
    if (acct) {
        acct->keep_arena = 0;
        /* Only a state with an account has a place to keep its boot heap. */
        acct->L = L;
        acct->sentinel = NULL;
        acct->allocf = (isle_mem_allocf)lua_getallocf(L, &acct->allocd);
        acct->boot = isle_bootheap_take(acct->allocf, acct->allocd);
        if (acct->boot) lua_setallocf(L, isle_bootheap_alloc, acct->boot);
    }
    boot_paths bp = {path ? path : "", cpath ? cpath : ""};
    if (lua_cpcall(L, boot_state, &bp) != 0) {
        if (acct) {
            hand_back(acct);
            close_state(L, acct);
        } else {
            lua_close(L);
        }
        return NULL;
    }
    if (acct && !account_state(acct, L)) {
        isle_lua_close(L, acct); /* the sentinel is missing: LuaJIT's allocator at once */
        return NULL;
    }
    return L;
}

void isle_lua_call_module(lua_State *L, const char *mod, const char *fn, const void *p,
                          int nresults)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, mod);
    lua_call(L, 1, 1);
    lua_getfield(L, -1, fn);
    lua_pushnumber(L, (lua_Number)(uintptr_t)p);
    lua_call(L, 1, nresults);
}

static int run_worker(lua_State *L)
{
    /* The boot's garbage is collected once, by isle.worker's full
     * collection, which also starts the collector again (a full collection
     * sets LuaJIT's threshold anew). Until then its incremental cycles would
     * walk a heap growing from ~35 to ~135 KiB for nothing: ~20 µs a spawn. */
    lua_gc(L, LUA_GCSTOP, 0);
    isle_lua_call_module(L, "isle.worker", "main", lua_touserdata(L, 1), 0);
    return 0;
}

/* The isle the calling thread runs, if any: an isle closing itself only
 * asks for the stop. */
static _Thread_local isle *running_isle;

static void isle_thread(void *arg)
{
    isle *i = arg;
    running_isle = i;
    i->acct.mem = i->mem;
    i->acct.sig = i->sig;
    lua_State *L = isle_lua_new(i->path, i->cpath, &i->acct);
    if (!L) {
        fail_init(i, "cannot create a Lua state: not enough memory");
    } else {
        if (lua_cpcall(L, run_worker, i) != 0) {
            const char *msg = lua_tostring(L, -1);
            char line[512];
            snprintf(line, sizeof line, "isle worker failed: %s", msg ? msg : "(no message)");
            /* After init the worker has nobody to report to but stderr. */
            if (isle_task_state(i->init) >= ISLE_TASK_DONE)
                fprintf(stderr, "isle %lld: %s\n", (long long)i->id, line);
            fail_init(i, line);
        }
        isle_lua_close(L, &i->acct);
        /* The state is gone: so is what it may use of its spawner's account. */
        isle_mem_uncharge(i->charge, i->charged);
        i->charged = 0;
    }
    /* Jobs the state was still running when it ended (only if the worker
     * itself failed: it ends its jobs before returning) end now, once. */
    static const char gone[] =
        "Cthe isle's state ended while the task was running"; /* 'C': ISLE_WIRE_CORE */
    isle_sig_fail_running(i->sig, gone, sizeof(gone) - 1);
    /* Whatever the worker left queued ends CLOSED now, not at free time, so
     * no caller waits on a thread that is gone. */
    atomic_store(&i->closing, 1);
    isle_mbox_close(i->mbox);
    isle_msg *msgs;
    isle_done *done;
    while (isle_mbox_wait(i->mbox, 0, &msgs, &done) == ISLE_OK) {
        for (isle_msg *m = msgs; m; m = m->next)
            if (m->task && isle_task_complete(m->task, ISLE_TASK_CLOSED, NULL, 0))
                isle_sig_count_end(i->sig, ISLE_TASK_CLOSED);
        isle_msg_free_list(msgs);
        isle_done_free_list(done);
    }
    fail_init(i, "isle ended before its init ran"); /* no-op if init completed */
    isle_sig_drop_ids(i->sig);                      /* the state is gone: its ids are unknown now */
    pthread_mutex_lock(&reg_lock);
    reg_remove_locked(i);
    pthread_mutex_unlock(&reg_lock);
    running_isle = NULL;
}

/* The last of the thread's work for the isle (threads.c lists the thread as
 * parked first, so that a spawn right after the close finds it). */
static void isle_thread_done(void *arg)
{
    isle *i = arg;
    atomic_fetch_sub(&live_threads, 1);
    /* The thread's reference goes under the lock that publishes `ended`: a
     * joiner takes that lock after seeing `ended` (isle_join), so when it
     * returns 1 this thread holds nothing of the isle, and the caller's last
     * release frees it there and then, not a moment later here. */
    pthread_mutex_lock(&i->join_mu);
    atomic_store_explicit(&i->ended, 1, memory_order_release);
    pthread_cond_broadcast(&i->ended_cv);
    int last = drop_ref(i);
    pthread_mutex_unlock(&i->join_mu);
    /* From here on only this library's code runs on this thread (it parks
     * or exits, threads.c): libisle.so stays mapped for it however it was
     * loaded (pin_library). */
    if (last) isle_free(i);
}

/* LuaJIT unloads a library loaded with ffi.load or package.loadlib when the
 * state that loaded it closes, while isle threads, the watchdog and notices
 * may still run this library's code. Linked with -z nodelete it is never
 * unmapped; this asks the dynamic loader for the same thing at run time in
 * case it was built without that flag.
 * It also keeps this library's file name as the loader knows it (lib_file):
 * every state the core makes loads the library by that name (boot_state), which the
 * loader matches to this very copy whatever the search paths or the working
 * directory say by then. The name belongs to the loader and lives as long as
 * the library is mapped, which is for ever once pinned. */
static void pin_library(void)
{
    Dl_info info;
    if (dladdr((void *)isle_spawn, &info) && info.dli_fname
        && info.dli_fname[0]
        /* the handle is never closed: it is the pin */
        /* cppcheck-suppress leakReturnValNotUsed */
        && dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE))
        lib_file = info.dli_fname;
}

void isle_registry_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&reg_lock);
        return;
    }
    if (phase == ISLE_FORK_CHILD) {
        /* The parent's isles have no thread here: forget them (their memory
         * is the parent's copy, left alone but for the links, so that freeing
         * one here touches no list). Ids keep counting up. */
        for (isle *i = reg_head, *next; i; i = next) {
            next = i->rnext;
            i->rnext = NULL;
            i->rprevp = NULL;
        }
        reg_head = NULL;
        atomic_store(&live_threads, 0);
    }
    pthread_mutex_unlock(&reg_lock);
}

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

isle *isle_spawn(const isle_config *cfg, int *err)
{
    if (cfg->boot_nrefs > ISLE_MSG_REFS_MAX) {
        *err = ISLE_EINVAL;
        return NULL;
    }
    *err = ISLE_ENOMEM;
    pthread_once(&pin_once, pin_library);
    isle *i = calloc(1, sizeof(*i));
    if (!i) return NULL;
    atomic_init(&i->refs, 2); /* the owner and the thread */
    if (pthread_mutex_init(&i->join_mu, NULL)) {
        free(i);
        return NULL;
    }
    if (isle_cond_init(&i->ended_cv)) {
        pthread_mutex_destroy(&i->join_mu);
        free(i);
        return NULL;
    }
    i->path = dup_or_empty(cfg->path);
    i->cpath = dup_or_empty(cfg->cpath);
    i->name = cfg->name && cfg->name[0] ? strdup(cfg->name) : NULL;
    /* A message, so that the references its tokens need go with it: the
     * worker reads them, and they are let go when the isle is freed, even if
     * its thread never got to decode them. */
    i->boot = isle_msg_new_refs(0, NULL, cfg->boot, cfg->boot_len, cfg->boot_refs, cfg->boot_nrefs);
    i->mbox = isle_mbox_new(cfg->capacity ? cfg->capacity : 1024, 0);
    i->sig = isle_sig_new();
    i->init = isle_task_new();
    if (i->init) isle_task_expect_long(i->init); /* waited for across a whole boot */
    i->mem = isle_mem_new(cfg->memory_limit);
    if (!i->mem) goto fail;
    if (cfg->charge && cfg->memory_limit) {
        /* Whatever the new isle may hold counts against its spawner's limit
         * while it lives: a capped isle cannot escape its cap by spawning. */
        if (!isle_mem_charge(cfg->charge, cfg->memory_limit)) goto fail;
        isle_mem_retain(cfg->charge);
        i->charge = cfg->charge;
        i->charged = cfg->memory_limit;
    }
    if (!i->path || !i->cpath || (cfg->name && cfg->name[0] && !i->name) || !i->boot || !i->mbox
        || !i->sig || !i->init)
        goto fail;
    i->instrument = cfg->instrument;
    isle_sig_attach_mbox(i->sig, i->mbox);
    i->intr = isle_intr_new(i->sig);
    if (!i->intr) goto fail;

    pthread_mutex_lock(&reg_lock);
    if (i->name)
        for (isle *o = reg_head; o; o = o->rnext)
            if (o->name && strcmp(o->name, i->name) == 0) {
                pthread_mutex_unlock(&reg_lock);
                *err = ISLE_EINVAL;
                goto fail;
            }
    i->id = reg_next_id++;
    reg_insert_locked(i);
    atomic_fetch_add(&live_threads, 1);
    isle_thread_job job = {isle_thread, isle_thread_done, i};
    int rc = isle_threads_start(&job);
    if (rc) {
        reg_remove_locked(i);
        atomic_fetch_sub(&live_threads, 1);
    }
    pthread_mutex_unlock(&reg_lock);
    if (rc) goto fail;
    *err = ISLE_OK;
    return i;
fail:
    isle_free(i);
    return NULL;
}

static isle *lookup(int64_t id, const char *name)
{
    pthread_mutex_lock(&reg_lock);
    isle *found = NULL;
    for (isle *i = reg_head; i; i = i->rnext) {
        if (atomic_load(&i->closing)) continue;
        if (name ? (i->name && strcmp(i->name, name) == 0) : i->id == id) {
            isle_retain(i);
            found = i;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return found;
}

isle *isle_lookup_id(int64_t id) { return lookup(id, NULL); }
isle *isle_lookup_name(const char *name) { return name ? lookup(0, name) : NULL; }

void isle_stop(isle *i, int cancel)
{
    if (cancel) atomic_store(&i->close_mode, 1);
    if (atomic_exchange(&i->closing, 1) == 0) {
        pthread_mutex_lock(&reg_lock);
        reg_remove_locked(i);
        pthread_mutex_unlock(&reg_lock);
    }
    isle_mbox_close(i->mbox);
    /* In cancel mode running tasks must stop too: the worker sees the flag. */
    if (cancel) isle_sig_raise(i->sig);
}

int isle_join(isle *i, double timeout)
{
    if (running_isle == i) return 0;
    struct timespec dl = {0, 0};
    if (timeout > 0) dl = isle_deadline(timeout);
    /* A close waits here for the state's lua_close (tens of µs): a bounded
     * spin first spares it the wake-up of a parked thread (bench W6). */
    if (timeout != 0) isle_spin_until(&i->ended, timeout);
    pthread_mutex_lock(&i->join_mu);
    while (!atomic_load(&i->ended) && timeout != 0) {
        if (timeout < 0) {
            pthread_cond_wait(&i->ended_cv, &i->join_mu);
        } else if (pthread_cond_timedwait(&i->ended_cv, &i->join_mu, &dl)) {
            break; /* timed out (or failed): report what is true now */
        }
    }
    int ended = atomic_load(&i->ended);
    pthread_mutex_unlock(&i->join_mu);
    return ended;
}

void isle_close(isle *i, int cancel)
{
    isle_stop(i, cancel);
    isle_join(i, -1);
}

void isle_stats_get(isle *i, isle_stats *out)
{
    out->queued = (int64_t)isle_mbox_count(i->mbox);
    isle_sig_stats(i->sig, out);
}

void isle_abandon(isle *i) { isle_stop(i, 0); }
