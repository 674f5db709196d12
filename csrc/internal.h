/* internal.h - shared by the core's translation units; not part of the API. */
#ifndef ISLE_INTERNAL_H
#define ISLE_INTERNAL_H

#include "isle.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

/* A pause instruction for spin loops: it lets the sibling hyperthread run and
 * keeps the loop from flooding the memory bus. */
static inline void isle_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The bounded spin every wait starts with (isle_spin_until, the mailbox's
 * wait): probes ready(arg) until it is non-zero or the spin budget, capped
 * by `timeout` when >= 0, runs out, and returns its last value. Inline so
 * that the probe is inlined too. The clock is read only every
 * ISLE_SPIN_ROUND probes (it costs more than a probe).
 *
 * Between rounds the CPU is given up now and then, because when the cores
 * are oversubscribed the thread waited for may be queued behind this one on
 * its very core. How often is the thread's own measure (isle_spin_yielded,
 * clock.c): after every round while a yield lets another thread run (it
 * takes longer than ISLE_SPIN_YIELD_BUSY), backing off to every
 * ISLE_SPIN_YIELD_MAX rounds while yields come straight back. A round is
 * ~1.2 µs of probes here and an idle sched_yield ~1.25 µs (a system call
 * exits to the hypervisor in this VM): yielding after every round on an
 * idle machine made a wait just over a round, W1's, take twice as long to
 * see its answer, while 4 isles fed on 2 cores (W7) need the yields
 * (bench/README.md, Issue 12, ninth round). */
#define ISLE_SPIN_ROUND 64
#define ISLE_SPIN_YIELD_MAX 8
#define ISLE_SPIN_YIELD_BUSY 2.5e-6
extern _Thread_local unsigned isle_spin_gap; /* rounds between yields, 1..ISLE_SPIN_YIELD_MAX */
void isle_spin_yielded(double took);
static inline int isle_spin_for(int (*ready)(const void *), const void *arg, double timeout)
{
    int v = ready(arg);
    if (v) return v;
    double budget = isle_get_spin();
    if (timeout >= 0 && timeout < budget) budget = timeout;
    if (budget <= 0) return 0;
    double end = isle_now() + budget;
    for (unsigned round = 1;; round++) {
        for (int i = 0; i < ISLE_SPIN_ROUND; i++) {
            isle_cpu_relax();
            v = ready(arg);
            if (v) return v;
        }
        double now = isle_now();
        if (now >= end) return v;
        if (round % isle_spin_gap == 0) {
            sched_yield();
            isle_spin_yielded(isle_now() - now);
        }
    }
}

/* Memory a recycling allocator keeps but nobody may touch (a cached block,
 * a free span of a boot region) is poisoned under AddressSanitizer, so that
 * a use after free is still caught; without it these do nothing. */
#if defined(__SANITIZE_ADDRESS__)
#define ISLE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ISLE_ASAN 1
#endif
#endif
#ifdef ISLE_ASAN
#include <sanitizer/asan_interface.h>
#define ISLE_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ISLE_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ISLE_POISON(p, n) ((void)(p), (void)(n))
#define ISLE_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* An object charged to a capped account while it lives (a message, a
 * channel's ring, a buffer): `*held` is the account it holds a reference
 * of, NULL while it holds none. isle_mem_hold charges `n` bytes to `a` and
 * keeps `a` in *held, once: 1, also for a NULL account, one without a limit
 * or an object charged already; 0 if the bytes do not fit (nothing kept).
 * isle_mem_let_go gives the `n` bytes back and drops the account. */
int isle_mem_hold(isle_mem **held, isle_mem *a, size_t n);
void isle_mem_let_go(isle_mem **held, size_t n);

/* A message that lives in its owner's memory, not allocated (msg.c; a task
 * slot's small result, task.c): `m` is filled as isle_msg_new would fill a
 * message of kind 0 with no task and no references, its payload a copy of
 * `data` at `payload` (room for len + 1 bytes). It is never given to
 * isle_msg_free. */
isle_msg *isle_msg_fill_plain(isle_msg *m, char *payload, const char *data, size_t len);

/* Block caches (cache.c): small messages and task slots, recycled through
 * a per-thread list and a bounded shared depot. isle_cache_get returns a
 * block of the kind's size (uninitialised but for what the kind keeps:
 * a task slot's lock), or NULL: the caller then
 * allocates one itself, of that size. isle_cache_put keeps a block (1) or
 * refuses it (0): the caller then frees it. isle_cache_trim frees what the
 * calling thread and the depot hold. isle_cache_pause(1) makes get and put
 * refuse every block until isle_cache_pause(0): the allocation tests
 * (test/c/failalloc.c) start so, for every block to reach the allocator. */
enum { ISLE_CACHE_MSG, ISLE_CACHE_TASK, ISLE_CACHE_KINDS };
enum {
    ISLE_MSG_BLOCK = 256,  /* a message whose whole allocation fits is cached */
    ISLE_TASK_BLOCK = 320, /* sizeof(struct isle_task), rounded up (task.c checks) */
    ISLE_TASK_SMALL = 40,  /* a result this short (with its NUL) is kept in its slot */
    ISLE_CACHE_BATCH = 32, /* blocks per thread list, and per depot batch */
    ISLE_CACHE_DEPOT = 64  /* batches per depot */
};
void *isle_cache_get(int kind);
int isle_cache_put(int kind, void *p);
void isle_cache_trim(void);
void isle_cache_pause(int paused);
/* Destroys what a cached task slot keeps initialised before it is freed (task.c). */
void isle_task_block_fini(void *p);

/* isle_now at the last clock tick (CLOCK_MONOTONIC_COARSE: behind it by up
 * to a tick, a few ms, never ahead): a read of a word the kernel updates,
 * for a time that only needs a tick's precision. isle_now() minus it is
 * never less than the true time since. */
double isle_now_coarse(void);

/* Absolute CLOCK_MONOTONIC deadline `timeout` seconds from now. Condition
 * variables are created with CLOCK_MONOTONIC so wall-clock jumps do not
 * shorten or stretch waits. */
struct timespec isle_deadline(double timeout);
int isle_cond_init(pthread_cond_t *cv);

/* Sleeps while `*word == expected`, until woken or the absolute
 * CLOCK_MONOTONIC `deadline` (NULL: none) passes: ETIMEDOUT then, else 0
 * (woken, interrupted, or the word had changed already: the caller looks
 * again). isle_futex_wake_all wakes every thread asleep on `word`. Process-
 * private futexes (clock.c). */
int isle_futex_wait(atomic_int *word, int expected, const struct timespec *deadline);
void isle_futex_wake_all(atomic_int *word);

/* Spin until `*word != 0` or the budget (seconds, capped by `timeout` when
 * timeout >= 0) runs out. Returns the last value read. Bounded: a caller
 * that finds nothing parks afterwards, so idle threads cost no CPU. */
int isle_spin_until(const atomic_int *word, double timeout);

/* Signal block internals. */
typedef struct isle_sig_impl {
    isle_sig pub; /* must stay first: the FFI sees only this */
    atomic_int refs;
    isle_mbox *mbox;       /* woken on requests, may be NULL */
    struct isle_intr *ids; /* interrupt ids of this state (registry lock) */
    atomic_int pending;    /* ids whose mode is not CLEAR */
    pthread_mutex_t mu;    /* guards `running` (taken after a task's lock) */
    isle_task *running;    /* tasks this state runs now (task.c links them) */
    atomic_llong ended[4]; /* tasks it ended: done, failed, cancelled, closed */
    atomic_llong held;     /* messages its loop took and has not started */
} isle_sig_impl;

/* Counts a task that `s`'s state ended (or skipped, ended while queued). */
void isle_sig_count_end(isle_sig *s, int state);

/* Links and unlinks a task in its signal block's `running` list (task.c). */
void isle_sig_link_running(isle_sig *s, isle_task *t);
void isle_sig_unlink_running(isle_sig *s, isle_task *t);

/* Deadlines (watchdog.c). The watchdog keeps a reference to each task it
 * watches; a task that ends leaves its heap at once, so the heap holds no
 * ended task (and its result) until the deadline. isle_task_mark_deadline
 * marks the task before it is watched and returns 1 if it has ended already
 * (then it is not watched); an ending task with the mark calls
 * isle_watchdog_forget. The slot is the watchdog's, under its lock. */
int isle_task_mark_deadline(isle_task *t);
size_t *isle_task_deadline_slot(isle_task *t);
void isle_watchdog_forget(isle_task *t);
size_t isle_watchdog_count(void); /* tasks watched now (for tests) */

/* A slot that owns an object (chan.c): `owner_free(owner)` runs when its
 * last reference goes. isle_task_owner returns `owner` if the slot was set
 * with that very `owner_free`, else NULL. */
void isle_task_set_owner(isle_task *t, void (*owner_free)(void *), void *owner);
void *isle_task_owner(const isle_task *t, void (*owner_free)(void *));

void isle_sig_retain(isle_sig *s);
/* Forget every interrupt id of `s`: its state is gone (isle_intr_set -> ENOENT). */
void isle_sig_drop_ids(isle_sig *s);
void isle_sig_attach_mbox(isle_sig *s, isle_mbox *mb);
void isle_mbox_retain(isle_mbox *mb);
/* Move a notice onto its subscriber's done list (ownership passes). */
void isle_mbox_post_done(isle_done *d);
/* The mailbox's lock (mbox.c), for a test that messages pass without it. */
pthread_mutex_t *isle_mbox_lock_of(isle_mbox *mb);

/* Boot heaps (bootheap.c): the region a new Lua state boots in, recycled
 * through a bounded process-wide pool. isle_bootheap_take gives an empty
 * heap over `f` (LuaJIT's allocator of the state), or NULL (no region could
 * be mapped: the state uses `f` alone). isle_bootheap_alloc, the state's
 * lua_Alloc with the heap as `ud`, hands out region blocks until a small one
 * does not fit (then the heap is sealed and every new block is `f`'s), and
 * routes frees and reallocs by address. isle_bootheap_give_back takes the
 * region back once the state is closed (accepts NULL): to the pool, or
 * unmapped when the pool is full. isle_bootheap_live counts the region
 * blocks not freed yet; isle_bootheap_trim unmaps the pooled regions. */
#define ISLE_BOOTHEAP_SIZE ((size_t)256 << 10) /* a region, its header included */
#define ISLE_BOOTHEAP_SMALL 2048               /* larger free spans: first fit */
#define ISLE_BOOTHEAP_POOL 8                   /* regions kept for the next states */
typedef struct isle_bootheap isle_bootheap;
isle_bootheap *isle_bootheap_take(isle_mem_allocf f, void *ud);
void isle_bootheap_give_back(isle_bootheap *h);
void *isle_bootheap_alloc(void *ud, void *p, size_t osz, size_t nsz);
size_t isle_bootheap_live(const isle_bootheap *h);
/* The state closes: the heap is sealed (frees are only counted) and
 * `fn(arg)` runs once, when the last region block is freed (from inside
 * that free); 0 (and nothing noted) if none is left now. */
int isle_bootheap_closing(isle_bootheap *h, void (*fn)(void *), void *arg);
size_t isle_bootheap_used(const isle_bootheap *h); /* bytes of the region carved so far */
int isle_bootheap_sealed(const isle_bootheap *h);
int isle_bootheap_owns(const isle_bootheap *h, const void *p);
int isle_bootheap_pooled(void);
void isle_bootheap_trim(void);

/* The most bytes the account's state has held since isle_mem_wrap (mem.c;
 * read on the state's thread). */
size_t isle_mem_peak(const isle_mem *a);

/* LuaJIT arenas kept from closed states (arena.c). isle_arena_take gives a
 * kept arena (an empty one of LuaJIT's allocator: lua_newstate with LuaJIT's
 * function and it) or NULL. A closing state whose heap never passed
 * ISLE_ARENA_PEAK may reserve a slot (1 if it got one); it then closes on a
 * forwarder, so that LuaJIT does not destroy the arena, and hands it over
 * with isle_arena_put (NULL: the slot is given up). */
#define ISLE_ARENA_POOL 8
#define ISLE_ARENA_PEAK ((size_t)1 << 20)
void *isle_arena_take(void);
int isle_arena_reserve(size_t peak);
void isle_arena_put(void *arena);
int isle_arena_pooled(void);

/* Marks a task whose end is far off (an isle's boot: hundreds of µs, far
 * more than the spin budget): isle_task_wait parks at once instead of
 * spinning first. Call before the task is shared (task.c). */
void isle_task_expect_long(isle_task *t);

/* The OS threads isles run on (threads.c): isle_threads_start runs
 * job->run(arg) then job->done(arg) on a parked thread, or on a new one (0,
 * or pthread_create's error); the thread parks for the next isle (at most
 * ISLE_THREADS_PARKED of them, each for at most ISLE_THREADS_LINGER seconds
 * without work), listed as parked before `done` runs. isle_threads_trim
 * makes every parked thread exit and joins it. */
#define ISLE_THREADS_PARKED 8
#define ISLE_THREADS_LINGER 1.0
typedef struct isle_thread_job {
    void (*run)(void *arg);
    void (*done)(void *arg); /* the last thing done for this job */
    void *arg;
} isle_thread_job;
int isle_threads_start(const isle_thread_job *job);
int isle_threads_parked(void);
void isle_threads_trim(void);

/* Installs the preload searcher in a fresh state (preload.c). */
struct lua_State;
int isle_preload_install(struct lua_State *L);
/* A Lua state counted by a memory account (mem.c): set `mem` (and `sig`,
 * raised to ask the state for a collection; may be NULL) before
 * isle_lua_new, which fills in the rest; isle_lua_close needs them to hand
 * the state back to LuaJIT's own allocator as it closes (isle.c). */
typedef struct isle_lua_acct {
    isle_mem *mem;
    isle_sig *sig;
    struct lua_State *L;
    void *sentinel;         /* a block only lua_close frees */
    isle_mem_allocf allocf; /* LuaJIT's own allocator of the state */
    void *allocd;
    isle_bootheap *boot; /* where it booted (NULL: LuaJIT's allocator alone) */
    int keep_arena;      /* the close keeps LuaJIT's arena (arena.c) */
} isle_lua_acct;

/* A fresh lua_State with the standard libraries, the preload searcher and
 * these package paths: how every state the core creates begins (isle.c;
 * isles and shared states). With `acct` (may be NULL) it allocates through
 * that account from then on, in mode ISLE_MEM_OFF. NULL when out of memory.
 * Close it with isle_lua_close and the same `acct`. */
struct lua_State *isle_lua_new(const char *path, const char *cpath, isle_lua_acct *acct);
/* lua_close under the account: the finalizers it runs are held to its
 * limit (ISLE_MEM_CORE); then the account counts nothing (unwrapped). */
void isle_lua_close(struct lua_State *L, isle_lua_acct *acct);

/* In `L`: require(mod)[fn](p) with `nresults` results left on the stack.
 * The address travels as a number: exact for user-space pointers, and it
 * spares the state a lightuserdata range. Raises like lua_call. */
void isle_lua_call_module(struct lua_State *L, const char *mod, const char *fn, const void *p,
                          int nresults);

/* fork() support (fork.c): each module with process-wide locks takes them
 * before a fork and releases (parent) or resets (child) them after. */
enum { ISLE_FORK_PREPARE, ISLE_FORK_PARENT, ISLE_FORK_CHILD };
void isle_intr_fork(int phase);     /* sig.c: the interrupt-id table */
void isle_watchdog_fork(int phase); /* watchdog.c */
void isle_registry_fork(int phase); /* isle.c: live isles */
void isle_preload_fork(int phase);  /* preload.c: bytecode blobs */
void isle_state_fork(int phase);    /* state.c: shared states */
void isle_cache_fork(int phase);    /* cache.c: the depots of the block caches */
void isle_bootheap_fork(int phase); /* bootheap.c: the pool of boot regions */
void isle_arena_fork(int phase);    /* arena.c: the kept LuaJIT arenas */
void isle_pool_fork(int phase);     /* pool.c: the registry of pools */
void isle_threads_fork(int phase);  /* threads.c: the parked threads */

#endif
