/* failalloc.c - an allocator that fails the n-th allocation, so that every
 * allocation site of the core can be made to fail in turn (the way SQLite
 * tests its own out-of-memory handling).
 *
 * Test builds link the core with
 *     -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=free
 * which sends the core's calls to the __wrap_ functions here; __real_malloc
 * and the others reach the C library's allocator, or AddressSanitizer's when
 * it intercepts them. Production builds link none of this and stay unchanged.
 * Only calls made by the objects linked with --wrap are seen: the C library's
 * own allocations (pthread_create, stdio) and LuaJIT's are not.
 *
 * Armed from a thread, only that thread's allocations count (unless
 * FAILALLOC_ANY_THREAD), so the isle threads and the watchdog of a test
 * cannot move the failure from one site to another between runs.
 * free is wrapped only to count live blocks: a leak check for the runs
 * without LeakSanitizer (the Lua suites).
 */
#include "failalloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void __real_free(void *p);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);

static atomic_int armed;
static atomic_int arm_flags;
static _Atomic(pthread_t) arm_thread;
static atomic_long countdown;  /* allocations until the failing one */
static atomic_long failures;   /* failed since arming */
static atomic_long live;

void failalloc_arm(long n, int flags)
{
    atomic_store(&armed, 0);
    atomic_store(&arm_thread, pthread_self());
    atomic_store(&arm_flags, flags);
    atomic_store(&countdown, n);
    atomic_store(&failures, 0);
    atomic_store_explicit(&armed, n > 0, memory_order_release);
}

long failalloc_disarm(void)
{
    atomic_store(&armed, 0);
    return atomic_load(&failures);
}

long failalloc_live(void) { return atomic_load(&live); }

/* Before main, and before an isle can run: see failalloc.h. */
__attribute__((constructor)) static void failalloc_pause_cache(void) { isle_cache_pause(1); }

static int should_fail(void)
{
    if (!atomic_load_explicit(&armed, memory_order_acquire)) return 0;
    int flags = atomic_load_explicit(&arm_flags, memory_order_relaxed);
    if (!(flags & FAILALLOC_ANY_THREAD) && !pthread_equal(pthread_self(), atomic_load(&arm_thread))) return 0;
    long left = atomic_fetch_sub(&countdown, 1);
    if (left == 1 || (left < 1 && (flags & FAILALLOC_PERSIST))) {
        atomic_fetch_add(&failures, 1);
        errno = ENOMEM;
        return 1;
    }
    return 0;
}

static void *counted(void *p)
{
    if (p) atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return p;
}

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : counted(__real_malloc(n)); }

void *__wrap_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : counted(__real_calloc(n, size));
}

char *__wrap_strdup(const char *s) { return should_fail() ? NULL : counted(__real_strdup(s)); }

void *__wrap_realloc(void *p, size_t n)
{
    /* A failed realloc leaves the old block as it was. */
    if (should_fail()) return NULL;
    void *q = __real_realloc(p, n);
    if (!p && q) atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    else if (p && !q && n == 0) atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    return q;
}

void __wrap_free(void *p)
{
    if (p) atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    __real_free(p);
}
