/* mem.c - memory accounts: what an isle's Lua state holds, and its cap.
 *
 * An account wraps the allocator of one Lua state (isle.c installs it once
 * the state is built, so an allocation can never fail inside lua_newstate:
 * LuaJIT crashes there). It counts the bytes LuaJIT asks for, which is the
 * sum collectgarbage("count") reports, and with a limit refuses growth past
 * the limit of the mode the state is in: LuaJIT then raises "not enough
 * memory" at the allocation, in the code that made it. C memory charged to
 * the account (messages its isle sent that are still queued, results its
 * tasks hold) counts against the same limit.
 *
 * `heap` has one writer, the state's thread (the allocator runs only there);
 * others read it. `held` is charged and uncharged from any thread.
 */
#include "internal.h"

#include <stdlib.h>

struct isle_mem {
    atomic_int refs;
    atomic_size_t heap; /* bytes the state's allocator has handed out */
    atomic_size_t held; /* C bytes charged to the account */
    size_t limit;       /* 0: counted, not capped */
    size_t cap[3];      /* per mode (ISLE_MEM_*): the most heap + held may reach */
    int mode;           /* the state's thread only */
    int gc_wanted;      /* the state's thread only */
    size_t peak;        /* the state's thread only: the most `heap` has been */
    size_t mark;        /* past this, ask the state for a full collection */
    isle_mem_allocf f;  /* the allocator wrapped */
    void *ud;
    isle_sig *sig; /* raised to ask for the collection (not retained:
                               the isle holds both while its state runs) */
};

/* Kept free below the limit for isle's own bookkeeping in the state (the
 * error a failed job returns): a sixteenth of the limit, 64 KiB to 1 MiB. */
static size_t reserve_of(size_t limit)
{
    size_t r = limit / 16;
    if (r < ((size_t)64 << 10)) r = (size_t)64 << 10;
    if (r > ((size_t)1 << 20)) r = (size_t)1 << 20;
    return r;
}

/* Room a state must have under the user limit once booted: a job needs
 * some to run at all. */
#define ISLE_MEM_MIN_FREE ((size_t)64 << 10)

isle_mem *isle_mem_new(size_t limit)
{
    isle_mem *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    atomic_init(&a->refs, 1);
    atomic_init(&a->heap, 0);
    atomic_init(&a->held, 0);
    a->limit = limit;
    a->cap[ISLE_MEM_OFF] = SIZE_MAX;
    if (limit) {
        size_t r = reserve_of(limit);
        a->cap[ISLE_MEM_CORE] = limit;
        a->cap[ISLE_MEM_USER] = limit > r ? limit - r : 0;
    } else {
        a->cap[ISLE_MEM_CORE] = a->cap[ISLE_MEM_USER] = SIZE_MAX;
    }
    a->mark = SIZE_MAX;
    return a;
}

void isle_mem_retain(isle_mem *a) { atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed); }

void isle_mem_release(isle_mem *a)
{
    if (!a) return;
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1) free(a);
}

static size_t used_of(isle_mem *a)
{
    return atomic_load_explicit(&a->heap, memory_order_relaxed)
        + atomic_load_explicit(&a->held, memory_order_relaxed);
}

/* May the state grow by `grow` bytes from `heap`? Past the mark, also asks
 * for a collection. */
static int admit(isle_mem *a, size_t heap, size_t grow)
{
    size_t used = heap + atomic_load_explicit(&a->held, memory_order_relaxed);
    size_t cap = a->cap[a->mode];
    if (used > cap || grow > cap - used) return 0;
    if (used + grow > a->mark && !a->gc_wanted) {
        /* Garbage counts until it is collected: ask the state (at its next
         * checkpoint) for a full collection before the limit is reached.
         * The flag is the state's own; it runs here. */
        a->gc_wanted = 1;
        if (a->sig) __atomic_store_n(&a->sig->flag, 1, __ATOMIC_RELEASE);
    }
    return 1;
}

/* A new or resized block (isle_mem_alloc): counted once it is there. */
__attribute__((noinline)) static void *mem_resize(isle_mem *a, void *p, size_t osz, size_t nsz)
{
    size_t heap = atomic_load_explicit(&a->heap, memory_order_relaxed);
    if (nsz > osz && a->limit && !admit(a, heap, nsz - osz)) return NULL;
    void *q = a->f(a->ud, p, osz, nsz);
    if (q) {
        size_t now = heap - osz + nsz;
        atomic_store_explicit(&a->heap, now, memory_order_relaxed);
        if (now > a->peak) a->peak = now;
    }
    return q;
}

/* The lua_Alloc of a state with an account. Only growth can be refused:
 * LuaJIT relies on shrinking and freeing to succeed. A free, which cannot
 * fail, is counted first, so that the call is the last thing done: a jump,
 * no frame (half of an allocation-heavy job's calls are frees). */
void *isle_mem_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    isle_mem *a = ud;
    if (nsz == 0) {
        size_t heap = atomic_load_explicit(&a->heap, memory_order_relaxed);
        atomic_store_explicit(&a->heap, heap - osz, memory_order_relaxed);
        return a->f(a->ud, p, osz, 0);
    }
    return mem_resize(a, p, osz, nsz);
}

void isle_mem_wrap(isle_mem *a, isle_mem_allocf f, void *ud, size_t heap, isle_sig *sig)
{
    a->f = f;
    a->ud = ud;
    a->sig = sig;
    a->peak = heap;
    atomic_store_explicit(&a->heap, heap, memory_order_relaxed);
}

void isle_mem_unwrap(isle_mem *a)
{
    a->mode = ISLE_MEM_OFF;
    a->sig = NULL;
    atomic_store_explicit(&a->heap, 0, memory_order_relaxed);
}

int isle_mem_enforce(isle_mem *a, int mode)
{
    int prev = a->mode;
    if (mode >= ISLE_MEM_OFF && mode <= ISLE_MEM_USER) a->mode = mode;
    return prev;
}

size_t isle_mem_used(isle_mem *a) { return a ? used_of(a) : 0; }
size_t isle_mem_peak(const isle_mem *a) { return a->peak; }
size_t isle_mem_limit(isle_mem *a) { return a ? a->limit : 0; }

size_t isle_mem_minimum(size_t used)
{
    /* The least limit whose user limit (limit - reserve, which never falls
     * as the limit grows) leaves ISLE_MEM_MIN_FREE above `used`. */
    size_t need = used + ISLE_MEM_MIN_FREE;
    size_t lo = need, hi = need + reserve_of(SIZE_MAX);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (mid - reserve_of(mid) >= need) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

int isle_mem_gc_wanted(isle_mem *a) { return a->gc_wanted; }

void isle_mem_collected(isle_mem *a)
{
    a->gc_wanted = 0;
    size_t cap = a->cap[ISLE_MEM_USER], used = used_of(a);
    /* Next time half the room left is used. Close to the limit, where that
     * would collect ever more often, stop asking: the limit decides. */
    if (!a->limit || used >= cap || cap - used < cap / 16) a->mark = SIZE_MAX;
    else a->mark = used + (cap - used) / 2;
}

int isle_mem_charge(isle_mem *a, size_t n)
{
    if (!a || !a->limit) return 1;
    size_t held = atomic_fetch_add_explicit(&a->held, n, memory_order_relaxed) + n;
    size_t heap = atomic_load_explicit(&a->heap, memory_order_relaxed);
    size_t cap = a->cap[ISLE_MEM_USER];
    if (held < n || heap > cap || held > cap - heap) {
        atomic_fetch_sub_explicit(&a->held, n, memory_order_relaxed);
        return 0;
    }
    return 1;
}

void isle_mem_uncharge(isle_mem *a, size_t n)
{
    if (a && a->limit) atomic_fetch_sub_explicit(&a->held, n, memory_order_relaxed);
}

int isle_mem_hold(isle_mem **held, isle_mem *a, size_t n)
{
    if (!a || !a->limit || *held) return 1;
    if (!isle_mem_charge(a, n)) return 0;
    isle_mem_retain(a);
    *held = a;
    return 1;
}

void isle_mem_let_go(isle_mem **held, size_t n)
{
    if (!*held) return;
    isle_mem_uncharge(*held, n);
    isle_mem_release(*held);
    *held = NULL;
}
