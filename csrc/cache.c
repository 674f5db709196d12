/* cache.c - bounded caches of the core's two hot blocks: small messages
 * (msg.c) and task slots (task.c).
 *
 * Both are made on one thread and freed on another (a caller makes the
 * message and the slot, a worker frees the message, either side the slot),
 * the pattern malloc handles worst: each free lands in a foreign arena and
 * each malloc refills from a cold one. Here a freed block goes to its
 * thread's own list (no lock); a full list moves, whole, to a shared depot
 * (one lock per ISLE_CACHE_BATCH blocks); a thread whose list is empty
 * takes a whole batch back from the depot, or else the caller mallocs.
 *
 * Bounds and clean points, so that nothing cached looks like (or hides) a
 * leak: a thread keeps at most ISLE_CACHE_BATCH blocks of a kind and gives
 * them to the depot when it exits (a pthread key's destructor); the depot
 * keeps at most ISLE_CACHE_DEPOT batches of a kind and frees the rest; the
 * library's destructor frees the depot and the exiting thread's list and
 * turns the cache off, so what is freed after it goes straight to free().
 * isle_cache_trim frees the calling thread's list and the depot at once;
 * isle_cache_pause stops caching (and handing out) blocks until it is
 * undone. Test builds that count blocks and fail allocations one by one
 * (test/c/failalloc.c) start paused. A block is reachable from a list or the
 * depot all the while it is cached, so valgrind and LeakSanitizer see only
 * real leaks: a message or slot never freed never reaches the cache. Under
 * AddressSanitizer a cached block is poisoned but for its link.
 *
 * After fork() the child keeps the forking thread's list and the depot (its
 * lock is taken around the fork, fork.c); the lists of the parent's other
 * threads are not reachable there, a bounded loss, like their stacks.
 */
#include "internal.h"

#include <stdlib.h>

/* A cached block: its first word links it to the next; the rest is left as
 * it was (a task slot keeps its initialised lock). */
typedef struct block {
    struct block *next;
} block;

/* One thread's blocks of one kind. */
typedef struct cache_list {
    block *head;
    int n;
} cache_list;

typedef struct depot {
    pthread_mutex_t mu;
    atomic_int n;                   /* batches held: written under mu, peeked without */
    block *batch[ISLE_CACHE_DEPOT]; /* each a list of ISLE_CACHE_BATCH blocks */
} depot;

static const size_t block_size[ISLE_CACHE_KINDS] = {ISLE_MSG_BLOCK, ISLE_TASK_BLOCK};

static depot depots[ISLE_CACHE_KINDS] = {{PTHREAD_MUTEX_INITIALIZER, 0, {NULL}},
                                         {PTHREAD_MUTEX_INITIALIZER, 0, {NULL}}};

/* A thread's lists and mode in one thread-local object: in libisle.so each
 * thread-local variable is found through the dynamic linker (a TLS
 * descriptor, or __tls_get_addr without -mtls-dialect=gnu2: the Makefile),
 * so one object costs one look-up per call where two cost two. */
typedef struct thread_cache {
    cache_list lists[ISLE_CACHE_KINDS];
    /* 0: this thread has cached nothing yet; 1: its key is set, so its
     * lists go to the depot when it exits; 2: it is exiting (or the cache
     * is off for it): blocks it frees are not cached. */
    int mode;
} thread_cache;
static _Thread_local thread_cache tc;
/* Nonzero: nothing is cached or handed out. CACHE_EXITING for good (the
 * process exits), CACHE_PAUSED while a test wants every block to reach the
 * allocator (isle_cache_pause). */
enum { CACHE_EXITING = 1, CACHE_PAUSED = 2 };
static atomic_int cache_off;

static pthread_key_t exit_key;
static int exit_key_ok;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

/* Gives a block back to the allocator: a task slot first destroys what it
 * keeps initialised. */
static void discard(int kind, block *b)
{
    ISLE_UNPOISON(b, block_size[kind]);
    if (kind == ISLE_CACHE_TASK) isle_task_block_fini(b);
    free(b);
}

static void discard_list(int kind, block *b)
{
    while (b) {
        ISLE_UNPOISON(b, sizeof *b);
        block *next = b->next;
        discard(kind, b);
        b = next;
    }
}

/* Moves `l`, full or not, to the depot (or frees it when the depot is full)
 * and empties it. */
__attribute__((noinline)) static void flush_list(int kind, cache_list *l)
{
    block *b = l->head;
    if (!b) return;
    int kept = 0;
    /* Only full batches go to the depot: a taker then knows the count. */
    if (l->n == ISLE_CACHE_BATCH) {
        depot *d = &depots[kind];
        pthread_mutex_lock(&d->mu);
        int n = atomic_load_explicit(&d->n, memory_order_relaxed);
        if (n < ISLE_CACHE_DEPOT) {
            d->batch[n] = b;
            atomic_store_explicit(&d->n, n + 1, memory_order_relaxed);
            kept = 1;
        }
        pthread_mutex_unlock(&d->mu);
    }
    if (!kept) discard_list(kind, b);
    l->head = NULL;
    l->n = 0;
}

static void thread_exit(void *unused)
{
    (void)unused;
    thread_cache *t = &tc;
    t->mode = 2;
    for (int k = 0; k < ISLE_CACHE_KINDS; k++) flush_list(k, &t->lists[k]);
}

static void make_exit_key(void) { exit_key_ok = !pthread_key_create(&exit_key, thread_exit); }

/* The first block this thread caches or takes: have its lists handed to
 * the depot when it exits. 0 if it must not cache (it is exiting, or the
 * key could not be set). */
static int thread_register(thread_cache *t)
{
    if (t->mode == 2) return 0;
    pthread_once(&exit_key_once, make_exit_key);
    if (!exit_key_ok || pthread_setspecific(exit_key, t)) {
        t->mode = 2;
        return 0;
    }
    t->mode = 1;
    return 1;
}

/* Fills the empty list `l` with a batch from the depot; its first block, or
 * NULL. Kept out of line: the common case, a block on the list, stays a few
 * instructions. */
__attribute__((noinline)) static block *refill(int kind, thread_cache *t)
{
    /* A batch taken here may outlive the thread: it must be handed back. */
    if (t->mode != 1 && !thread_register(t)) return NULL;
    cache_list *l = &t->lists[kind];
    depot *d = &depots[kind];
    /* Peeked first: a thread that only allocates (a producer ahead of its
     * consumer) must not take the lock for each block it mallocs. */
    if (!atomic_load_explicit(&d->n, memory_order_relaxed)) return NULL;
    block *b = NULL;
    pthread_mutex_lock(&d->mu);
    int n = atomic_load_explicit(&d->n, memory_order_relaxed);
    if (n) {
        b = d->batch[n - 1];
        atomic_store_explicit(&d->n, n - 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&d->mu);
    if (b) l->n = ISLE_CACHE_BATCH;
    return b;
}

void *isle_cache_get(int kind)
{
    if (atomic_load_explicit(&cache_off, memory_order_relaxed)) return NULL;
    thread_cache *t = &tc;
    cache_list *l = &t->lists[kind];
    block *b = l->head;
    if (!b && !(b = refill(kind, t))) return NULL;
    ISLE_UNPOISON(b, sizeof *b);
    l->head = b->next;
    l->n--;
    ISLE_UNPOISON(b, block_size[kind]);
    return b;
}

/* isle_cache_put when this thread has not cached yet, or its list is full. */
__attribute__((noinline)) static int put_slow(int kind, block *b, thread_cache *t)
{
    if (t->mode != 1 && !thread_register(t)) return 0;
    cache_list *l = &t->lists[kind];
    if (l->n == ISLE_CACHE_BATCH) flush_list(kind, l);
    b->next = l->head;
    l->head = b;
    l->n++;
    return 1;
}

int isle_cache_put(int kind, void *p)
{
    if (atomic_load_explicit(&cache_off, memory_order_relaxed)) return 0;
    block *b = p;
    ISLE_POISON((char *)b + sizeof *b, block_size[kind] - sizeof *b);
    thread_cache *t = &tc;
    cache_list *l = &t->lists[kind];
    if (t->mode != 1 || l->n == ISLE_CACHE_BATCH) {
        if (put_slow(kind, b, t)) return 1;
        ISLE_UNPOISON(b, block_size[kind]);
        return 0;
    }
    b->next = l->head;
    l->head = b;
    l->n++;
    return 1;
}

void isle_cache_trim(void)
{
    for (int k = 0; k < ISLE_CACHE_KINDS; k++) {
        cache_list *l = &tc.lists[k];
        discard_list(k, l->head);
        l->head = NULL;
        l->n = 0;
        depot *d = &depots[k];
        block *taken[ISLE_CACHE_DEPOT];
        pthread_mutex_lock(&d->mu);
        int n = atomic_load_explicit(&d->n, memory_order_relaxed);
        for (int i = 0; i < n; i++) taken[i] = d->batch[i];
        atomic_store_explicit(&d->n, 0, memory_order_relaxed);
        pthread_mutex_unlock(&d->mu);
        for (int i = 0; i < n; i++) discard_list(k, taken[i]);
    }
}

void isle_cache_pause(int paused)
{
    if (paused) atomic_fetch_or(&cache_off, CACHE_PAUSED);
    else atomic_fetch_and(&cache_off, ~CACHE_PAUSED);
}

void isle_cache_fork(int phase)
{
    for (int k = 0; k < ISLE_CACHE_KINDS; k++) {
        if (phase == ISLE_FORK_PREPARE) pthread_mutex_lock(&depots[k].mu);
        else pthread_mutex_unlock(&depots[k].mu);
    }
}

/* The process exits (or the library goes): free what is cached and cache
 * nothing more. Other threads may still run; they find the depot empty and
 * free their blocks themselves. */
__attribute__((destructor)) static void cache_exit(void)
{
    atomic_fetch_or(&cache_off, CACHE_EXITING);
    isle_cache_trim();
    /* A library unloaded anyway (built without -z nodelete) must leave no
     * destructor of its own for threads that exit later. */
    if (exit_key_ok) pthread_key_delete(exit_key);
}
