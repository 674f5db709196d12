/* bootheap.c - boot heaps: the memory a new Lua state boots in, recycled
 * from one state to the next so that it is already faulted in.
 *
 * Why: LuaJIT's own allocator maps fresh segments for every state and
 * unmaps them at lua_close, so a spawn paid a page fault for every page its
 * boot touched (~50 per isle, in this VM a hypervisor exit each: most of a
 * spawn's CPU, bench W6). A heap of isle's own for the whole life of a
 * state removed them but made allocation-heavy jobs slower (LuaJIT's sweep
 * lost the address order of its coalescing allocator: bench/README.md,
 * "a heap per state"). So a boot heap serves a state only while it boots:
 *
 * - One region of ISLE_BOOTHEAP_SIZE bytes, mapped once, this struct at its
 *   start. Blocks up to ISLE_BOOTHEAP_SMALL bytes come from free lists per
 *   16-byte class or from the bump pointer; larger ones from the bump
 *   pointer only (a boot frees few of them). No header per block: LuaJIT
 *   passes every block's size.
 * - A new block comes from the region until a small one does not fit (the
 *   heap is sealed then: from that moment every new block is the wrapped
 *   allocator's, LuaJIT's own, and the job's allocations behave as if the
 *   boot heap were not there). A large one that does not fit goes to the
 *   wrapped allocator without sealing.
 * - Frees and reallocs are routed by address: a block inside the region is
 *   the heap's (one subtraction and one compare), any other the wrapped
 *   allocator's. A region block reallocated once sealed moves out.
 * - When its state has closed, the region goes back to a process-wide pool
 *   of at most ISLE_BOOTHEAP_POOL regions (beyond that it is unmapped), and
 *   the next state boots in it.
 *
 * One state, one heap: the heap runs on whichever thread runs its state
 * (one at a time) and takes no lock. The pool's lock is a leaf (isle.h's
 * lock order): nothing is taken under it, and it is held around fork()
 * (fork.c) so that the child finds it free; regions pooled before a fork
 * stay usable in the child.
 */
#include "internal.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define BOOTHEAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BOOTHEAP_ASAN 1
#endif
#endif
#ifdef BOOTHEAP_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ALIGN 16
#define CLASSES (ISLE_BOOTHEAP_SMALL / ALIGN + 1)

struct isle_bootheap {
    _Alignas(ALIGN) void *free[CLASSES]; /* per class: a list linked through its blocks */
    char *bump, *end;                     /* the region's part never handed out */
    size_t live;                          /* blocks handed out and not freed */
    int sealed;                           /* new blocks are the wrapped allocator's */
    isle_mem_allocf f;                    /* the wrapped allocator (LuaJIT's) */
    void *ud;
};
_Static_assert(sizeof(isle_bootheap) % ALIGN == 0, "blocks after the header must stay aligned");

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static isle_bootheap *pool[ISLE_BOOTHEAP_POOL];
static int pooled; /* pool_lock */

static size_t class_of(size_t n) { return (n + ALIGN - 1) / ALIGN; }

static int owns(const isle_bootheap *h, const void *p)
{
    /* NULL and everything below the region wrap around to large values. */
    return (uintptr_t)p - (uintptr_t)h < ISLE_BOOTHEAP_SIZE;
}

/* Empty: all of the region after the header is the bump space. */
static void reset(isle_bootheap *h, isle_mem_allocf f, void *ud)
{
    memset(h->free, 0, sizeof h->free);
    h->bump = (char *)(h + 1);
    h->end = (char *)h + ISLE_BOOTHEAP_SIZE;
    h->live = 0;
    h->sealed = 0;
    h->f = f;
    h->ud = ud;
    POISON(h->bump, (size_t)(h->end - h->bump));
}

isle_bootheap *isle_bootheap_take(isle_mem_allocf f, void *ud)
{
    isle_bootheap *h = NULL;
    pthread_mutex_lock(&pool_lock);
    if (pooled) h = pool[--pooled];
    pthread_mutex_unlock(&pool_lock);
    if (!h) {
        void *m = mmap(NULL, ISLE_BOOTHEAP_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return NULL; /* the state boots on LuaJIT's allocator alone */
        h = m;
    }
    reset(h, f, ud);
    return h;
}

void isle_bootheap_give_back(isle_bootheap *h)
{
    if (!h) return;
    int kept = 0;
    pthread_mutex_lock(&pool_lock);
    if (pooled < ISLE_BOOTHEAP_POOL) {
        pool[pooled++] = h;
        kept = 1;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!kept) munmap(h, ISLE_BOOTHEAP_SIZE);
}

void isle_bootheap_trim(void)
{
    isle_bootheap *gone[ISLE_BOOTHEAP_POOL];
    pthread_mutex_lock(&pool_lock);
    int n = pooled;
    memcpy(gone, pool, (size_t)n * sizeof gone[0]);
    pooled = 0;
    pthread_mutex_unlock(&pool_lock);
    for (int k = 0; k < n; k++) munmap(gone[k], ISLE_BOOTHEAP_SIZE);
}

int isle_bootheap_pooled(void)
{
    pthread_mutex_lock(&pool_lock);
    int n = pooled;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

void isle_bootheap_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) pthread_mutex_lock(&pool_lock);
    else pthread_mutex_unlock(&pool_lock);
}

size_t isle_bootheap_live(const isle_bootheap *h) { return h->live; }
int isle_bootheap_sealed(const isle_bootheap *h) { return h->sealed; }
int isle_bootheap_owns(const isle_bootheap *h, const void *p) { return owns(h, p); }

/* A block of `n` bytes from the region, or NULL (sealing the heap when a
 * small one does not fit). */
static void *region_alloc(isle_bootheap *h, size_t n)
{
    size_t cls = class_of(n);
    size_t sz = cls * ALIGN;
    void *p;
    if (cls < CLASSES && h->free[cls]) {
        p = h->free[cls];
        UNPOISON(p, sizeof(void *));
        h->free[cls] = *(void **)p;
    } else if ((size_t)(h->end - h->bump) >= sz) {
        p = h->bump;
        h->bump += sz;
    } else {
        if (cls < CLASSES) h->sealed = 1;
        return NULL;
    }
    UNPOISON(p, sz);
    h->live++;
    return p;
}

static void region_free(isle_bootheap *h, void *p, size_t n)
{
    size_t cls = class_of(n);
    h->live--;
    POISON(p, cls * ALIGN);
    if (h->sealed) return; /* never handed out again: the state allocates elsewhere now */
    if (cls < CLASSES) {
        UNPOISON(p, sizeof(void *));
        *(void **)p = h->free[cls];
        h->free[cls] = p;
    } else if ((char *)p + cls * ALIGN == h->bump) {
        h->bump = p; /* the last block carved: its space is carved again */
    }
}

/* A new block: from the region while the heap is not sealed, else (or if
 * it does not fit) from the wrapped allocator. */
static void *new_block(isle_bootheap *h, size_t n)
{
    if (!h->sealed) {
        void *p = region_alloc(h, n);
        if (p) return p;
    }
    return h->f(h->ud, NULL, 0, n);
}

void *isle_bootheap_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    isle_bootheap *h = ud;
    if (!owns(h, p)) {
        /* The wrapped allocator's block (or none): it stays there. */
        if (p || nsz == 0) return h->f(h->ud, p, osz, nsz);
        return new_block(h, nsz);
    }
    if (nsz == 0) {
        region_free(h, p, osz);
        return NULL;
    }
    if (class_of(osz) == class_of(nsz)) return p; /* the block has room already */
    void *q = new_block(h, nsz);
    if (!q) {
        /* Growth may fail (LuaJIT keeps the old block); a shrink must not:
         * the block stays and serves the smaller size, its tail unused. */
        return nsz > osz ? NULL : p;
    }
    memcpy(q, p, osz < nsz ? osz : nsz);
    region_free(h, p, osz);
    return q;
}
