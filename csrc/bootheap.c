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
 *   start. No header per block (LuaJIT passes every block's size). A small
 *   block (up to ISLE_BOOTHEAP_SMALL bytes) comes from the free list of its
 *   8-byte class, else is cut from the smallest larger free block, else
 *   from a free span larger than that (first fit), else from the bump
 *   pointer: the boot's garbage is reused before new memory is touched (an
 *   idle isle's boot fills ~190 KiB of the region for ~187 KiB LuaJIT asked
 *   for). A larger block takes a free span or the bump pointer.
 * - A new block comes from the region until a small one does not fit (the
 *   heap is sealed then: from that moment every new block is the wrapped
 *   allocator's, LuaJIT's own, and the job's allocations behave as if the
 *   boot heap were not there). A large one that does not fit goes to the
 *   wrapped allocator without sealing.
 * - Frees and reallocs are routed by address: a block inside the region is
 *   the heap's (one subtraction and one compare), any other the wrapped
 *   allocator's. A region block that grows once sealed moves out.
 * - When its state closes (isle_bootheap_closing) the heap is sealed and
 *   only counts its blocks going; the caller learns when the last one goes
 *   (lua_close must end on LuaJIT's allocator). Then the region goes back
 *   to a process-wide pool of at most ISLE_BOOTHEAP_POOL regions (beyond
 *   that it is unmapped), and the next state boots in it.
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

/* LuaJIT's own allocator aligns blocks to 8 bytes, so LuaJIT asks no more. */
#define GRAIN 8
#define CLASSES (ISLE_BOOTHEAP_SMALL / GRAIN + 1) /* class k: blocks of k * GRAIN bytes */
#define MAPWORDS ((CLASSES + 63) / 64)

/* A free span larger than ISLE_BOOTHEAP_SMALL. */
typedef struct hole {
    struct hole *next;
    size_t size;
} hole;

struct isle_bootheap {
    /* What isle_bootheap_alloc reads on every call, first: an address p
     * with p - lo < len takes the slow path, any other goes straight to f.
     * Sealed, [lo, lo + len) is the region; before, it is [0, region end),
     * so that new blocks (p NULL) come to the region too. */
    uintptr_t lo, len;
    isle_mem_allocf f; /* the wrapped allocator (LuaJIT's) */
    void *ud;
    int sealed;              /* new blocks are the wrapped allocator's */
    size_t live;             /* blocks handed out and not freed */
    char *bump, *end;        /* the region's part never handed out */
    hole *holes;             /* larger free spans, first fit */
    void (*emptied)(void *); /* called when the last block goes (isle_bootheap_closing) */
    void *emptied_arg;
    uint64_t map[MAPWORDS]; /* bit k: free[k] is not empty */
    void *free[CLASSES];    /* per class: a list linked through its blocks */
};
_Static_assert(sizeof(isle_bootheap) % GRAIN == 0, "blocks after the header must stay aligned");

#define REGION_MAP (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static isle_bootheap *pool[ISLE_BOOTHEAP_POOL];
static int pooled; /* pool_lock */

/* ASan keeps a region's poison after munmap: a later mapping at the same
 * address would start poisoned, header and all. */
static void unmap(isle_bootheap *h)
{
    ISLE_UNPOISON(h, ISLE_BOOTHEAP_SIZE);
    munmap(h, ISLE_BOOTHEAP_SIZE);
}

static size_t round_up(size_t n) { return (n + GRAIN - 1) & ~(size_t)(GRAIN - 1); }

static int owns(const isle_bootheap *h, const void *p)
{
    /* NULL and everything below the region wrap around to large values. */
    return (uintptr_t)p - (uintptr_t)h < ISLE_BOOTHEAP_SIZE;
}

/* Empty: all of the region after the header is the bump space. */
static void reset(isle_bootheap *h, isle_mem_allocf f, void *ud)
{
    memset(h, 0, sizeof *h);
    h->bump = (char *)(h + 1);
    h->end = (char *)h + ISLE_BOOTHEAP_SIZE;
    h->f = f;
    h->ud = ud;
    h->lo = 0;
    h->len = (uintptr_t)h->end;
    ISLE_POISON(h->bump, (size_t)(h->end - h->bump));
}

static void seal(isle_bootheap *h)
{
    h->sealed = 1;
    h->lo = (uintptr_t)h;
    h->len = ISLE_BOOTHEAP_SIZE;
}

isle_bootheap *isle_bootheap_take(isle_mem_allocf f, void *ud)
{
    isle_bootheap *h = NULL;
    pthread_mutex_lock(&pool_lock);
    if (pooled) h = pool[--pooled];
    pthread_mutex_unlock(&pool_lock);
    if (!h) {
        /* fd -1: what MAP_ANONYMOUS asks for */
        /* cppcheck-suppress invalidFunctionArg */
        void *m = mmap(NULL, ISLE_BOOTHEAP_SIZE, PROT_READ | PROT_WRITE, REGION_MAP, -1, 0);
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
    if (!kept) unmap(h);
}

void isle_bootheap_trim(void)
{
    isle_bootheap *gone[ISLE_BOOTHEAP_POOL];
    pthread_mutex_lock(&pool_lock);
    int n = pooled;
    for (int k = 0; k < n; k++) gone[k] = pool[k];
    pooled = 0;
    pthread_mutex_unlock(&pool_lock);
    for (int k = 0; k < n; k++) unmap(gone[k]);
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
int isle_bootheap_closing(isle_bootheap *h, void (*fn)(void *), void *arg)
{
    /* Sealed, a free is only counted: the region is emptied as a whole when
     * it is given back. */
    seal(h);
    if (!h->live) return 0;
    h->emptied = fn;
    h->emptied_arg = arg;
    return 1;
}

size_t isle_bootheap_used(const isle_bootheap *h)
{
    return (size_t)(h->bump - (const char *)(h + 1));
}

static void push(isle_bootheap *h, void *p, size_t cls)
{
    ISLE_UNPOISON(p, sizeof(void *));
    *(void **)p = h->free[cls];
    h->free[cls] = p;
    h->map[cls / 64] |= (uint64_t)1 << (cls % 64);
}

static void *pop(isle_bootheap *h, size_t cls)
{
    void *p = h->free[cls];
    ISLE_UNPOISON(p, sizeof(void *));
    h->free[cls] = *(void **)p;
    if (!h->free[cls]) h->map[cls / 64] &= ~((uint64_t)1 << (cls % 64));
    return p;
}

/* The smallest class from `cls` on with a free block, or 0. */
static size_t class_from(const isle_bootheap *h, size_t cls)
{
    for (size_t w = cls / 64; w < MAPWORDS; w++) {
        uint64_t bits = h->map[w];
        if (w == cls / 64) bits &= ~(uint64_t)0 << (cls % 64);
        if (bits) return w * 64 + (size_t)__builtin_ctzll(bits);
    }
    return 0;
}

/* `n` bytes (a multiple of GRAIN) at `p` are free again: onto the bump
 * space if they end where it begins, else onto their class's list or
 * among the holes. */
static void give(isle_bootheap *h, char *p, size_t n)
{
    ISLE_POISON(p, n);
    if (p + n == h->bump) {
        h->bump = p;
    } else if (n <= ISLE_BOOTHEAP_SMALL) {
        push(h, p, n / GRAIN);
    } else {
        hole *o = (hole *)(void *)p;
        ISLE_UNPOISON(o, sizeof *o);
        o->size = n;
        o->next = h->holes;
        h->holes = o;
    }
}

/* `n` bytes (a multiple of GRAIN) from the region, or NULL (sealing the heap
 * when a small block does not fit). A small block comes from its class,
 * else is cut from the smallest larger free block, else from a hole, else
 * from the bump space: the boot's garbage is reused before new memory is
 * touched. */
static void *region_alloc(isle_bootheap *h, size_t n)
{
    size_t cls = n / GRAIN;
    char *p;
    if (cls < CLASSES) {
        if (h->free[cls]) {
            p = pop(h, cls);
            goto found;
        }
        size_t k = class_from(h, cls + 1);
        if (k) {
            p = pop(h, k);
            give(h, p + n, (k - cls) * GRAIN);
            goto found;
        }
    }
    for (hole **link = &h->holes; *link; link = &(*link)->next) {
        hole *o = *link;
        if (o->size >= n) {
            *link = o->next;
            p = (char *)o;
            if (o->size > n) give(h, p + n, o->size - n);
            goto found;
        }
    }
    if ((size_t)(h->end - h->bump) < n) {
        if (cls < CLASSES) seal(h);
        return NULL;
    }
    p = h->bump;
    h->bump += n;
found:
    ISLE_UNPOISON(p, n);
    h->live++;
    return p;
}

static void region_free(isle_bootheap *h, void *p, size_t n)
{
    if (--h->live == 0 && h->emptied) {
        h->emptied(h->emptied_arg); /* the state closes: nothing of it is left here */
        h->emptied = NULL;
    }
    if (h->sealed) {
        ISLE_POISON(p, n); /* never handed out again: the state allocates elsewhere now */
        return;
    }
    give(h, p, round_up(n));
}

/* A new block: from the region while the heap is not sealed, else (or if
 * it does not fit) from the wrapped allocator. */
static void *new_block(isle_bootheap *h, size_t n)
{
    if (!h->sealed) {
        void *p = region_alloc(h, round_up(n));
        if (p) return p;
    }
    return h->f(h->ud, NULL, 0, n);
}

/* A region block from `o` to `n` bytes (rounded) where it is, if it can. */
static int resize_in_place(isle_bootheap *h, char *p, size_t o, size_t n)
{
    if (n == o) return 1;
    if (n < o) {
        /* Its tail is free again (once sealed, unused till the state closes). */
        if (!h->sealed) give(h, p + n, o - n);
        return 1;
    }
    if (h->sealed || p + o != h->bump || (size_t)(h->end - p) < n) return 0;
    h->bump = p + n; /* the last block carved grows into the bump space */
    ISLE_UNPOISON(p, n);
    return 1;
}

/* A region block, or while the heap is not sealed a new block or any block
 * below the region's end. */
__attribute__((noinline)) static void *slow_path(isle_bootheap *h, void *p, size_t osz, size_t nsz)
{
    if (!p) return nsz ? new_block(h, nsz) : NULL;
    if (!owns(h, p)) return h->f(h->ud, p, osz, nsz);
    if (nsz == 0) {
        region_free(h, p, osz);
        return NULL;
    }
    if (resize_in_place(h, p, round_up(osz), round_up(nsz))) return p;
    void *q = new_block(h, nsz);
    if (!q) return NULL; /* growth (a shrink stays in place): LuaJIT keeps the old block */
    memcpy(q, p, osz);
    region_free(h, p, osz);
    return q;
}

/* Kept to a compare and a jump (no frame): once the heap is sealed, every
 * call of an allocation-heavy job passes here to reach LuaJIT's allocator. */
void *isle_bootheap_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    isle_bootheap *h = ud;
    if ((uintptr_t)p - h->lo >= h->len) return h->f(h->ud, p, osz, nsz);
    return slow_path(h, p, osz, nsz);
}
