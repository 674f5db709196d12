/* state.c - shared states (lua-mtstates' model): a lua_State with no thread
 * of its own. Whichever thread calls it runs the state's dispatcher
 * (lua/isle/state.lua) on itself, under the state's call lock; there is no
 * thread hop and no mailbox, only bytes in (the caller's encoded arguments)
 * and bytes out (the results, copied into the caller's buffer before the
 * lock is let go).
 *
 * The call lock is a word with three values (free, held, held with someone
 * perhaps waiting), taken with one compare-and-swap when free. A waiter
 * spins for the core's spin budget, then parks on a condition variable, or,
 * if it must not block its thread (an isle's job), leaves a task that the
 * next release completes and awaits it. Only a release that finds the
 * "waiting" mark takes the wait lock, so an uncontended call costs two
 * atomic operations.
 *
 * Re-entry: the thread inside a state's callback is its `holder` (the
 * address of a thread-local byte); a call from that same thread is refused
 * instead of deadlocking.
 *
 * Registry: live states by id (a hash of chains) and name, under its own
 * lock, which ranks with the isles' registry and is never held while Lua
 * runs. A state is listed from birth, found by lookups once its setup ran
 * (`ready`), and unlisted when it closes or its last owner goes.
 */
#include "internal.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct watch_node {
    struct watch_node *next;
    isle_task *task;
} watch_node;

struct isle_state {
    atomic_int refs;
    int owners;          /* registry lock */
    int listed;          /* registry lock: in the table */
    int ready;           /* registry lock: its setup ran; lookups find it */
    int singleton;       /* registry lock: made by isle_state_singleton */
    const void *creator; /* registry lock: the thread running its setup */
    int64_t id;
    char *name;
    lua_State *L;       /* NULL once closed; used under the call lock only */
    isle_mem *mem;      /* the Lua state's account (mem.c) */
    isle_lua_acct acct; /* the Lua state under `mem` (isle_lua_new) */
    isle_mem *charge;   /* the creator's, charged memory_limit until the state closes */
    size_t charged;
    int boot_memory;  /* booting failed for want of memory (memory_limit too small) */
    isle_state_io io; /* call lock */
    isle_sig *sig;
    int64_t intr;
    atomic_int lock;              /* the call lock: 0 free, 1 held, 2 held and perhaps awaited */
    _Atomic(const void *) holder; /* the thread inside, for re-entry */
    atomic_int closed;
    atomic_int close_pending; /* the last owner went: close as soon as the lock is free */
    pthread_mutex_t wmu;      /* guards sleepers and watches; a leaf: nothing is taken under it */
    pthread_cond_t wcv;
    int sleepers;
    watch_node *watches;
    isle_state *hnext; /* registry chain */
};

#define BUCKETS 256
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv; /* a singleton's setup ended (CLOCK_MONOTONIC) */
static pthread_once_t reg_cv_once = PTHREAD_ONCE_INIT;
static isle_state *table[BUCKETS];
static int64_t next_id = 1;
static int listed_count;

static _Thread_local char tl_self;
#define SELF ((const void *)&tl_self)

static void reg_cv_init(void) { isle_cond_init(&reg_cv); }

static isle_state **chain_of(int64_t id) { return &table[(uint64_t)id % BUCKETS]; }

static void list_locked(isle_state *s)
{
    s->id = next_id++;
    isle_state **head = chain_of(s->id);
    s->hnext = *head;
    *head = s;
    s->listed = 1;
    listed_count++;
}

static void unlist_locked(isle_state *s)
{
    if (!s->listed) return;
    for (isle_state **pp = chain_of(s->id); *pp; pp = &(*pp)->hnext)
        if (*pp == s) {
            *pp = s->hnext;
            break;
        }
    s->hnext = NULL;
    s->listed = 0;
    listed_count--;
}

void isle_state_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&reg_lock);
        return;
    }
    if (phase == ISLE_FORK_CHILD) {
        /* The parent's states belong to the parent: their locks may be held
         * by threads that are not here. The child forgets them (the Lua
         * side refuses objects made before the fork). */
        memset(table, 0, sizeof table);
        listed_count = 0;
        pthread_once(&reg_cv_once, reg_cv_init);
        isle_cond_init(&reg_cv); /* no thread waits on it here */
    }
    pthread_mutex_unlock(&reg_lock);
}

/* ---- the call lock ------------------------------------------------------- */

static int try_lock(isle_state *s)
{
    int free_ = 0;
    return atomic_compare_exchange_strong_explicit(&s->lock, &free_, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

/* Spins for at most `budget` s for the lock to come free, and takes it.
 * Unlike the core's other waits (isle_spin_for, internal.h), it gives the
 * CPU up after every round: two threads taking turns at a lock held for a
 * call's length went slower when the waiter yielded only every 8 rounds
 * (bench W9, "one state, host and an isle calling at once": 0.42-0.53 µs
 * a call this way, 0.59-0.77 µs that way). */
static int spin_lock(isle_state *s, double budget)
{
    if (budget <= 0) return 0;
    double end = isle_now() + budget;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            isle_cpu_relax();
            if (atomic_load_explicit(&s->lock, memory_order_relaxed) == 0 && try_lock(s)) return 1;
        }
        if (isle_now() >= end) return 0;
        sched_yield(); /* the holder may be queued behind us on this core */
    }
}

/* Parks until the lock is taken (1) or `timeout` s pass (0; < 0: never).
 * Taking it from here leaves the "awaited" mark, so its release wakes the
 * others, who park again if it is taken meanwhile. */
static int park_lock(isle_state *s, double timeout)
{
    struct timespec dl = {0, 0};
    if (timeout > 0) dl = isle_deadline(timeout);
    int got = 0;
    pthread_mutex_lock(&s->wmu);
    s->sleepers++;
    for (;;) {
        if (atomic_exchange_explicit(&s->lock, 2, memory_order_acquire) == 0) {
            got = 1;
            break;
        }
        if (timeout < 0) {
            pthread_cond_wait(&s->wcv, &s->wmu);
        } else if (timeout == 0 || pthread_cond_timedwait(&s->wcv, &s->wmu, &dl) == ETIMEDOUT) {
            got = atomic_exchange_explicit(&s->lock, 2, memory_order_acquire) == 0;
            break;
        }
    }
    s->sleepers--;
    pthread_mutex_unlock(&s->wmu);
    return got;
}

/* Wakes everyone waiting for the lock: parked threads, and watches (tasks
 * completed outside the wait lock, which stays a leaf). */
static void wake_waiters(isle_state *s)
{
    pthread_mutex_lock(&s->wmu);
    watch_node *w = s->watches;
    s->watches = NULL;
    if (s->sleepers) pthread_cond_broadcast(&s->wcv);
    pthread_mutex_unlock(&s->wmu);
    while (w) {
        watch_node *next = w->next;
        isle_task_complete(w->task, ISLE_TASK_DONE, NULL, 0);
        isle_task_release(w->task);
        free(w);
        w = next;
    }
}

static void unlock(isle_state *s)
{
    if (atomic_exchange_explicit(&s->lock, 0, memory_order_acq_rel) == 2) wake_waiters(s);
}

/* The state is closed (or never booted): what its memory_limit held of its
 * creator's account goes back. Under the call lock, or by the last reference. */
static void drop_charge(isle_state *s)
{
    isle_mem_uncharge(s->charge, s->charged);
    s->charged = 0;
}

/* The caller holds the lock. Runs the state's finalizers (Lua) on this
 * thread, as its holder: one that calls the state itself is refused. */
static void close_locked(isle_state *s)
{
    pthread_mutex_lock(&reg_lock);
    unlist_locked(s);
    pthread_mutex_unlock(&reg_lock);
    atomic_store(&s->closed, 1);
    isle_sig_drop_ids(s->sig); /* interrupts of a closed state: unknown */
    lua_State *L = s->L;
    s->L = NULL;
    if (L) isle_lua_close(L, &s->acct);
    drop_charge(s);
}

/* A close was asked for while a call ran: whoever finds the lock free
 * first does it (the asker, or the caller leaving). */
static void close_if_pending(isle_state *s)
{
    if (!atomic_load(&s->close_pending) || atomic_load(&s->closed)) return;
    if (!try_lock(s)) return; /* its holder closes it when it leaves */
    if (!atomic_load(&s->closed)) {
        atomic_store_explicit(&s->holder, SELF, memory_order_relaxed);
        close_locked(s);
        atomic_store_explicit(&s->holder, NULL, memory_order_relaxed);
    }
    unlock(s);
}

static int enter(isle_state *s, double timeout)
{
    if (atomic_load_explicit(&s->holder, memory_order_relaxed) == SELF) return ISLE_STATE_EREENTRY;
    if (atomic_load_explicit(&s->closed, memory_order_relaxed)) return ISLE_ECLOSED;
    if (!try_lock(s)) {
        if (timeout == 0) return ISLE_ETIMEOUT;
        double start = isle_now();
        double spin = isle_get_spin();
        if (timeout > 0 && timeout < spin) spin = timeout;
        if (!spin_lock(s, spin)) {
            double left = -1;
            if (timeout > 0) {
                left = timeout - (isle_now() - start);
                if (left < 0) left = 0;
            }
            if (!park_lock(s, left)) return ISLE_ETIMEOUT;
        }
    }
    if (atomic_load(&s->close_pending) && !atomic_load(&s->closed)) {
        /* Its last owner went while another call ran: no new call starts,
         * whoever gets the lock first closes it. */
        atomic_store_explicit(&s->holder, SELF, memory_order_relaxed);
        close_locked(s);
        atomic_store_explicit(&s->holder, NULL, memory_order_relaxed);
    }
    if (atomic_load(&s->closed)) {
        unlock(s);
        return ISLE_ECLOSED;
    }
    atomic_store_explicit(&s->holder, SELF, memory_order_relaxed);
    return ISLE_OK;
}

static void leave(isle_state *s)
{
    atomic_store_explicit(&s->holder, NULL, memory_order_relaxed);
    unlock(s);
    /* After the release: an owner that went meanwhile either saw the lock
     * free and closed the state, or set the mark this reads. */
    close_if_pending(s);
}

/* ---- life -------------------------------------------------------------------- */

/* Frees a state nobody can reach: never listed, or unlisted already. */
static void state_destroy(isle_state *s)
{
    if (s->L) isle_lua_close(s->L, &s->acct); /* only a state whose boot half failed */
    drop_charge(s);
    isle_mem_release(s->charge);
    isle_mem_release(s->mem);
    for (watch_node *w = s->watches, *next; w; w = next) {
        next = w->next;
        isle_task_release(w->task);
        free(w);
    }
    isle_sig_release(s->sig);
    pthread_cond_destroy(&s->wcv);
    pthread_mutex_destroy(&s->wmu);
    free(s->name);
    free(s);
}

static void state_free(isle_state *s)
{
    pthread_mutex_lock(&reg_lock);
    unlist_locked(s);
    pthread_mutex_unlock(&reg_lock);
    state_destroy(s);
}

static void set_error(const isle_state_config *cfg, const char *msg)
{
    if (cfg->errbuf && cfg->errcap) snprintf(cfg->errbuf, cfg->errcap, "%s", msg);
}

/* NULL with *err = ISLE_ENOMEM and cfg->errbuf saying why. */
static isle_state *state_alloc(const isle_state_config *cfg, int *err)
{
    *err = ISLE_ENOMEM;
    set_error(cfg, "cannot allocate a shared state");
    isle_state *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    if (pthread_mutex_init(&s->wmu, NULL)) {
        free(s);
        return NULL;
    }
    if (isle_cond_init(&s->wcv)) {
        pthread_mutex_destroy(&s->wmu);
        free(s);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->owners = 1;
    s->creator = SELF;
    if (cfg->name && cfg->name[0] && !(s->name = strdup(cfg->name))) goto fail;
    if (!(s->sig = isle_sig_new())) goto fail;
    if (!(s->intr = isle_intr_new(s->sig))) goto fail;
    if (!(s->mem = isle_mem_new(cfg->memory_limit))) goto fail;
    if (cfg->charge && cfg->memory_limit) {
        /* What the new state may hold counts against its creator's limit
         * while it lives (as for an isle a capped isle spawns). */
        if (!isle_mem_charge(cfg->charge, cfg->memory_limit)) {
            set_error(cfg, "its memory_limit does not fit under its creator's");
            goto fail;
        }
        isle_mem_retain(cfg->charge);
        s->charge = cfg->charge;
        s->charged = cfg->memory_limit;
    }
    return s;
fail:
    /* Not listed yet, and isle_state_singleton holds the registry lock. */
    state_destroy(s);
    return NULL;
}

/* In the new state: require isle.state, whose serve(addr) binds the state
 * (interrupts, its io block) and returns the dispatcher, kept in the
 * registry and at stack slot 1 for every call. */
static int boot_dispatcher(lua_State *L)
{
    isle_state *s = lua_touserdata(L, 1);
    isle_lua_call_module(L, "isle.state", "serve", s, 1);
    if (lua_type(L, -1) == LUA_TSTRING) { /* its memory_limit is too small: why */
        s->boot_memory = 1;
        return lua_error(L);
    }
    if (!lua_isfunction(L, -1)) return luaL_error(L, "isle.state.serve returned no dispatcher");
    lua_setfield(L, LUA_REGISTRYINDEX, "isle.state.dispatch");
    return 0;
}

static int boot(isle_state *s, const isle_state_config *cfg, int *err)
{
    s->acct.mem = s->mem;
    s->acct.sig = s->sig;
    lua_State *L = isle_lua_new(cfg->path, cfg->cpath, &s->acct);
    if (!L) {
        set_error(cfg, "cannot create a Lua state: not enough memory");
        *err = ISLE_ENOMEM;
        return 0;
    }
    int rc = lua_cpcall(L, boot_dispatcher, s);
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        set_error(cfg, msg ? msg : "the shared state failed to boot");
        *err = rc == LUA_ERRMEM || s->boot_memory ? ISLE_ENOMEM : ISLE_EINVAL;
        isle_lua_close(L, &s->acct);
        return 0;
    }
    lua_settop(L, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, "isle.state.dispatch");
    s->L = L;
    return 1;
}

/* Booted outside the registry lock (boot runs Lua); on failure the state
 * is unlisted and freed, and singletons waiting for it try again. */
static isle_state *boot_or_discard(isle_state *s, const isle_state_config *cfg, int *err)
{
    if (boot(s, cfg, err)) {
        *err = ISLE_OK;
        return s;
    }
    pthread_mutex_lock(&reg_lock);
    unlist_locked(s);
    if (s->singleton) pthread_cond_broadcast(&reg_cv);
    pthread_mutex_unlock(&reg_lock);
    isle_state_release(s);
    return NULL;
}

isle_state *isle_state_new(const isle_state_config *cfg, int *err)
{
    pthread_once(&reg_cv_once, reg_cv_init);
    isle_state *s = state_alloc(cfg, err);
    if (!s) return NULL;
    pthread_mutex_lock(&reg_lock);
    list_locked(s);
    pthread_mutex_unlock(&reg_lock);
    return boot_or_discard(s, cfg, err);
}

static int name_is(const isle_state *s, const char *name)
{
    return s->name && strcmp(s->name, name) == 0;
}

isle_state *isle_state_singleton(const isle_state_config *cfg, double timeout, int *err,
                                 int *created)
{
    *created = 0;
    if (!cfg->name || !cfg->name[0]) {
        *err = ISLE_EINVAL;
        set_error(cfg, "a singleton needs a name");
        return NULL;
    }
    pthread_once(&reg_cv_once, reg_cv_init);
    struct timespec dl = {0, 0};
    if (timeout > 0) dl = isle_deadline(timeout);
    pthread_mutex_lock(&reg_lock);
    for (;;) {
        isle_state *found = NULL, *pending = NULL;
        int nready = 0;
        for (int b = 0; b < BUCKETS; b++)
            for (isle_state *s = table[b]; s; s = s->hnext) {
                if (!name_is(s, cfg->name)) continue;
                if (s->ready) {
                    nready++;
                    found = s;
                } else if (s->singleton) {
                    pending = s;
                }
            }
        if (nready > 1) {
            *err = ISLE_STATE_EAMBIGUOUS;
            break;
        }
        if (nready == 1) {
            found->owners++;
            isle_state_retain(found);
            pthread_mutex_unlock(&reg_lock);
            *err = ISLE_OK;
            return found;
        }
        if (!pending) {
            isle_state *s = state_alloc(cfg, err);
            if (!s) break;
            s->singleton = 1;
            list_locked(s);
            pthread_mutex_unlock(&reg_lock);
            *created = 1;
            return boot_or_discard(s, cfg, err);
        }
        if (pending->creator == SELF) {
            *err = ISLE_STATE_EREENTRY; /* its own setup asks for it: waiting would never end */
            break;
        }
        if (timeout == 0) {
            *err = ISLE_ETIMEOUT;
            break;
        }
        if (timeout < 0) {
            pthread_cond_wait(&reg_cv, &reg_lock);
        } else if (pthread_cond_timedwait(&reg_cv, &reg_lock, &dl) == ETIMEDOUT) {
            *err = ISLE_ETIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return NULL;
}

void isle_state_publish(isle_state *s)
{
    pthread_mutex_lock(&reg_lock);
    s->ready = 1;
    s->creator = NULL;
    if (s->singleton) pthread_cond_broadcast(&reg_cv);
    pthread_mutex_unlock(&reg_lock);
}

void isle_state_discard(isle_state *s)
{
    pthread_mutex_lock(&reg_lock);
    unlist_locked(s);
    s->owners = 0;
    s->creator = NULL;
    if (s->singleton) pthread_cond_broadcast(&reg_cv);
    pthread_mutex_unlock(&reg_lock);
    atomic_store(&s->close_pending, 1);
    close_if_pending(s);
}

isle_state *isle_state_lookup(int64_t id, const char *name, int *err)
{
    isle_state *found = NULL;
    int n = 0;
    pthread_mutex_lock(&reg_lock);
    if (name) {
        for (int b = 0; b < BUCKETS && n < 2; b++)
            for (isle_state *s = table[b]; s; s = s->hnext)
                if (s->ready && name_is(s, name)) {
                    found = s;
                    n++;
                }
    } else {
        for (isle_state *s = *chain_of(id); s; s = s->hnext)
            if (s->id == id && s->ready) {
                found = s;
                n = 1;
                break;
            }
    }
    if (n == 1) isle_state_retain(found);
    pthread_mutex_unlock(&reg_lock);
    if (n == 1) {
        *err = ISLE_OK;
        return found;
    }
    *err = n == 0 ? ISLE_ENOENT : ISLE_STATE_EAMBIGUOUS;
    return NULL;
}

void isle_state_retain(isle_state *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void isle_state_release(isle_state *s)
{
    if (!s) return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) state_free(s);
}

void isle_state_disown(isle_state *s)
{
    pthread_mutex_lock(&reg_lock);
    int last = s->owners > 0 && --s->owners == 0;
    if (last) unlist_locked(s); /* from now on lookups do not find it */
    pthread_mutex_unlock(&reg_lock);
    if (!last) return;
    atomic_store(&s->close_pending, 1);
    close_if_pending(s);
}

int isle_state_close(isle_state *s)
{
    if (atomic_load_explicit(&s->holder, memory_order_relaxed) == SELF) return ISLE_STATE_EREENTRY;
    if (atomic_load(&s->closed)) return ISLE_OK;
    if (!try_lock(s)) return ISLE_EBUSY;
    if (!atomic_load(&s->closed)) {
        atomic_store_explicit(&s->holder, SELF, memory_order_relaxed);
        close_locked(s);
        atomic_store_explicit(&s->holder, NULL, memory_order_relaxed);
    }
    unlock(s);
    return ISLE_OK;
}

int64_t isle_state_id(const isle_state *s) { return s->id; }
const char *isle_state_name(const isle_state *s) { return s->name ? s->name : ""; }
int isle_state_is_closed(const isle_state *s) { return atomic_load(&s->closed); }
isle_sig *isle_state_sig(isle_state *s) { return s->sig; }
int64_t isle_state_intr_id(isle_state *s) { return s->intr; }
isle_state_io *isle_state_io_of(isle_state *s) { return &s->io; }
isle_mem *isle_state_mem(isle_state *s) { return s->mem; }

int isle_state_count(void)
{
    pthread_mutex_lock(&reg_lock);
    int n = listed_count;
    pthread_mutex_unlock(&reg_lock);
    return n;
}

/* ---- calls -------------------------------------------------------------------- */

static int out_put(isle_state_out *o, char tag, const char *data, size_t len)
{
    size_t need = len + (tag ? 1 : 0);
    if (need > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < need) cap *= 2;
        /* A capped caller's buffer is charged to it (isle_state_out_charge). */
        if (o->mem && !isle_mem_charge(o->mem, cap - o->cap)) {
            o->len = 0;
            return ISLE_ENOMEM;
        }
        char *p = realloc(o->data, cap);
        if (!p) {
            if (o->mem) isle_mem_uncharge(o->mem, cap - o->cap);
            o->len = 0;
            return ISLE_ENOMEM;
        }
        o->data = p;
        o->cap = cap;
    }
    char *dst = o->data;
    if (tag) *dst++ = tag;
    if (len) memcpy(dst, data, len);
    o->len = need;
    return ISLE_OK;
}

int isle_state_call(isle_state *s, double timeout, const char *in, size_t in_len,
                    isle_state_out *out)
{
    return isle_state_call_refs(s, timeout, in, in_len, NULL, out);
}

int isle_state_call_refs(isle_state *s, double timeout, const char *in, size_t in_len,
                         const isle_msg *refs, isle_state_out *out)
{
    int rc = enter(s, timeout);
    if (rc != ISLE_OK) return rc;
    /* The last call's carrier, if its caller left it: nothing reads it now. */
    isle_msg *stale = out->refs;
    out->refs = NULL;
    lua_State *L = s->L;
    s->io.args = in;
    s->io.args_len = in_len;
    s->io.args_refs = refs;
    s->io.results = NULL;
    s->io.results_len = 0;
    s->io.results_refs = NULL;
    lua_pushvalue(L, 1);
    int st = lua_pcall(L, 0, 0, 0);
    /* The dispatcher's carrier of the results' references passes to the
     * caller with the bytes, or goes. */
    isle_msg *carried = s->io.results_refs;
    s->io.results_refs = NULL;
    if (st == 0 && s->io.results) {
        rc = out_put(out, 0, s->io.results, s->io.results_len);
        if (rc == ISLE_OK) {
            out->refs = carried;
            carried = NULL;
        }
    } else if (st == 0) {
        static const char none[] = "the shared state's dispatcher left no results";
        rc = out_put(out, ISLE_WIRE_CORE, none, sizeof(none) - 1);
    } else if (st == LUA_ERRMEM) {
        rc = ISLE_ENOMEM;
    } else {
        /* The dispatcher itself failed (it catches the callback's errors). */
        const char *msg = lua_tostring(L, -1);
        if (!msg) msg = "the shared state's dispatcher failed";
        rc = out_put(out, ISLE_WIRE_CORE, msg, strlen(msg));
    }
    lua_settop(L, 1);
    s->io.args = NULL;
    s->io.args_len = 0;
    s->io.args_refs = NULL;
    leave(s);
    /* Outside the lock: a last reference may free a buffer or a channel. */
    isle_msg_free(carried);
    isle_msg_free(stale);
    return rc;
}

isle_task *isle_state_watch(isle_state *s, int *err)
{
    if (atomic_load(&s->closed)) {
        *err = ISLE_ECLOSED;
        return NULL;
    }
    isle_task *t = isle_task_new();
    watch_node *w = malloc(sizeof(*w));
    if (!t || !w) {
        isle_task_release(t);
        free(w);
        *err = ISLE_ENOMEM;
        return NULL;
    }
    pthread_mutex_lock(&s->wmu);
    int c = atomic_load(&s->lock);
    /* Mark the lock awaited, so that its release wakes the watches. */
    while (c == 1 && !atomic_compare_exchange_weak(&s->lock, &c, 2)) {}
    if (c != 0) {
        isle_task_retain(t); /* the list's reference */
        w->task = t;
        w->next = s->watches;
        s->watches = w;
    }
    pthread_mutex_unlock(&s->wmu);
    *err = ISLE_OK;
    if (c == 0) { /* free now: try again at once */
        isle_task_release(t);
        free(w);
        return NULL;
    }
    return t;
}

int isle_state_unwatch(isle_state *s, isle_task *t)
{
    watch_node *found = NULL;
    pthread_mutex_lock(&s->wmu);
    for (watch_node **pp = &s->watches; *pp; pp = &(*pp)->next)
        if ((*pp)->task == t) {
            found = *pp;
            *pp = found->next;
            break;
        }
    pthread_mutex_unlock(&s->wmu);
    if (!found) return 0;
    isle_task_release(found->task);
    free(found);
    return 1;
}

isle_state_out *isle_state_out_new(void) { return calloc(1, sizeof(isle_state_out)); }

void isle_state_out_free(isle_state_out *o)
{
    if (!o) return;
    isle_mem_let_go(&o->mem, o->cap);
    isle_msg_free(o->refs);
    free(o->data);
    free(o);
}

void isle_state_out_charge(isle_state_out *o, isle_mem *a)
{
    if (!a || !isle_mem_limit(a) || o->mem || o->cap) return;
    isle_mem_retain(a);
    o->mem = a;
}
