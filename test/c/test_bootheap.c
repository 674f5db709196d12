/* test_bootheap.c - boot heaps (csrc/bootheap.c): a state's first blocks
 * come from the region and its garbage is reused there; once a small block
 * does not fit the heap is sealed and every new block is the wrapped
 * allocator's; frees and reallocs go to whichever owns the block, across
 * the seal too, with the bytes kept; closing, the last region block's
 * free calls back once; a region given back is the next one
 * taken, the pool keeps at most ISLE_BOOTHEAP_POOL of them and unmaps the
 * rest; threads share the pool (run under TSan too), and a child forked
 * while other threads use it can still use it.
 *
 * The wrapped allocator here stands in for LuaJIT's: malloc, counting its
 * live blocks and the calls it gets. */
#include "check.h"
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

typedef struct wrapped {
    long live;  /* blocks handed out and not freed */
    long calls; /* every call */
} wrapped;

static void *wrapped_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    (void)osz;
    wrapped *w = ud;
    w->calls++;
    if (nsz == 0) {
        if (p) w->live--;
        free(p);
        return NULL;
    }
    void *q = realloc(p, nsz);
    if (q && !p) w->live++;
    return q;
}

static void *A(isle_bootheap *h, void *p, size_t osz, size_t nsz)
{
    return isle_bootheap_alloc(h, p, osz, nsz);
}

/* Is the region of `h` still mapped (after a give-back)? */
static int mapped(void *h)
{
    return msync(h, ISLE_BOOTHEAP_SIZE, MS_ASYNC) == 0 || errno != ENOMEM;
}

static void test_region_and_reuse(void)
{
    isle_bootheap_trim();
    wrapped w = {0, 0};
    isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h != NULL);
    CHECK_EQ(isle_bootheap_live(h), 0);
    CHECK_EQ(isle_bootheap_used(h), 0);
    CHECK(!isle_bootheap_owns(h, NULL));

    /* New blocks come from the region, 8-byte aligned, the wrapped
     * allocator never called. */
    char *a = A(h, NULL, 0, 24), *b = A(h, NULL, 0, 64), *c = A(h, NULL, 0, 5000);
    CHECK(a && b && c);
    CHECK(isle_bootheap_owns(h, a) && isle_bootheap_owns(h, b) && isle_bootheap_owns(h, c));
    CHECK_EQ((uintptr_t)a % 8, 0);
    CHECK_EQ((uintptr_t)b % 8, 0);
    CHECK_EQ(isle_bootheap_live(h), 3);
    CHECK_EQ(w.calls, 0);
    memset(a, 'a', 24);
    memset(b, 'b', 64);
    memset(c, 'c', 5000);

    /* A freed block is the next one of its size... */
    CHECK(A(h, a, 24, 0) == NULL);
    CHECK_EQ(isle_bootheap_live(h), 2);
    char *a2 = A(h, NULL, 0, 20); /* 20 rounds up to 24: the same class */
    CHECK(a2 == a);
    /* ...and a smaller block is cut from a larger free one before new
     * memory is touched: the rest serves the next. */
    CHECK(A(h, b, 64, 0) == NULL);
    size_t used = isle_bootheap_used(h);
    char *b1 = A(h, NULL, 0, 16), *b2 = A(h, NULL, 0, 48);
    CHECK(b1 == b);
    CHECK(b2 == b + 16);
    CHECK_EQ(isle_bootheap_used(h), used);
    /* A large free span serves what fits in it, first fit. */
    char *d = A(h, NULL, 0, 8); /* keeps c from ending at the bump edge */
    CHECK(A(h, c, 5000, 0) == NULL);
    used = isle_bootheap_used(h);
    char *c1 = A(h, NULL, 0, 3000);
    CHECK(c1 == c);
    CHECK_EQ(isle_bootheap_used(h), used);

    /* Realloc inside the region keeps the bytes: the same class stays put,
     * a shrink stays put (its tail is free again), another moves. */
    memset(b2, 'x', 48);
    CHECK(A(h, b2, 48, 44) == b2);
    CHECK(A(h, b2, 44, 30) == b2);
    char *f = A(h, b2, 30, 600);
    CHECK(f != b2 && isle_bootheap_owns(h, f));
    CHECK(f[0] == 'x' && f[29] == 'x');
    CHECK_EQ(w.calls, 0);

    CHECK(A(h, a2, 20, 0) == NULL);
    CHECK(A(h, b1, 16, 0) == NULL);
    CHECK(A(h, c1, 3000, 0) == NULL);
    CHECK(A(h, d, 8, 0) == NULL);
    CHECK(A(h, f, 600, 0) == NULL);
    CHECK_EQ(isle_bootheap_live(h), 0);
    isle_bootheap_give_back(h);

    /* Taken again (the same region), empty: the last block carved grows
     * into the bump space in place, and freed it gives that space back. */
    isle_bootheap *h2 = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h2 == h);
    CHECK_EQ(isle_bootheap_used(h2), 0);
    CHECK_EQ(isle_bootheap_live(h2), 0);
    char *e = A(h2, NULL, 0, 100);
    CHECK(e == a); /* the region's first block again */
    CHECK(A(h2, e, 100, 1000) == e);
    CHECK_EQ(isle_bootheap_used(h2), 1000);
    CHECK(A(h2, e, 1000, 0) == NULL);
    CHECK_EQ(isle_bootheap_used(h2), 0);
    CHECK_EQ(w.calls, 0);
    isle_bootheap_give_back(h2);
    isle_bootheap_trim();
}

static void test_seal_and_routing(void)
{
    isle_bootheap_trim();
    wrapped w = {0, 0};
    isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h != NULL);

    /* A block larger than what is left goes to the wrapped allocator and
     * does not seal: small blocks still come from the region. */
    char *huge = A(h, NULL, 0, ISLE_BOOTHEAP_SIZE);
    CHECK(huge && !isle_bootheap_owns(h, huge));
    CHECK_EQ(w.live, 1);
    CHECK(!isle_bootheap_sealed(h));
    char *first = A(h, NULL, 0, 1024);
    CHECK(isle_bootheap_owns(h, first));
    memset(first, 'f', 1024);

    /* Fill it: the first small block that does not fit seals the heap. */
    char *last = NULL;
    long n = 0;
    for (;;) {
        char *p = A(h, NULL, 0, 1024);
        CHECK(p != NULL);
        if (!isle_bootheap_owns(h, p)) {
            last = p;
            break;
        }
        n++;
    }
    CHECK(n > (long)(ISLE_BOOTHEAP_SIZE / 1024) - 8);
    CHECK(isle_bootheap_sealed(h));
    CHECK_EQ(w.live, 2);
    CHECK_EQ(isle_bootheap_live(h), (size_t)n + 1);

    /* Sealed: a freed region block is not handed out again; new blocks of
     * any size are the wrapped allocator's. */
    char *second = first + 1024;
    CHECK(A(h, second, 1024, 0) == NULL);
    char *p = A(h, NULL, 0, 1024);
    CHECK(p != second && !isle_bootheap_owns(h, p));
    CHECK(A(h, p, 1024, 0) == NULL);
    p = A(h, NULL, 0, 8);
    CHECK(!isle_bootheap_owns(h, p));

    /* Reallocs across the seal: a wrapped block stays wrapped (the wrapped
     * allocator sees the realloc), a region block that grows moves out with
     * its bytes, one that shrinks stays. */
    long calls = w.calls;
    char *p2 = A(h, p, 8, 4000);
    CHECK(p2 && !isle_bootheap_owns(h, p2));
    CHECK_EQ(w.calls, calls + 1);
    char *moved = A(h, first, 1024, 2048);
    CHECK(moved && !isle_bootheap_owns(h, moved));
    CHECK(moved[0] == 'f' && moved[1023] == 'f');
    char *third = first + 2048;
    CHECK(A(h, third, 1024, 100) == third);

    /* Frees route by owner: the wrapped allocator gets back exactly its
     * blocks, the region's count goes to zero. */
    long wlive = w.live;
    CHECK(A(h, moved, 2048, 0) == NULL);
    CHECK(A(h, p2, 4000, 0) == NULL);
    CHECK(A(h, last, 1024, 0) == NULL);
    CHECK(A(h, huge, ISLE_BOOTHEAP_SIZE, 0) == NULL);
    CHECK_EQ(w.live, wlive - 4);
    CHECK_EQ(w.live, 0);
    CHECK(A(h, third, 100, 0) == NULL);
    for (char *q = first + 3 * 1024; isle_bootheap_live(h); q += 1024) CHECK(A(h, q, 1024, 0) == NULL);
    CHECK_EQ(isle_bootheap_live(h), 0);

    /* Taken again, the same region is empty and unsealed. */
    isle_bootheap_give_back(h);
    isle_bootheap *h2 = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h2 == h);
    CHECK(!isle_bootheap_sealed(h2));
    CHECK_EQ(isle_bootheap_used(h2), 0);
    CHECK(isle_bootheap_owns(h2, A(h2, NULL, 0, 1024)));
    isle_bootheap_give_back(h2);
    isle_bootheap_trim();
}

/* A shrink that must not fail: once sealed, the region block stays put
 * even when the wrapped allocator fails everything. */
static void *failing_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    (void)ud;
    (void)osz;
    if (nsz == 0) free(p);
    return NULL;
}

static void test_growth_fails_cleanly(void)
{
    isle_bootheap *h = isle_bootheap_take(failing_alloc, NULL);
    CHECK(h != NULL);
    char *p = A(h, NULL, 0, 64);
    while (A(h, NULL, 0, 2048)) {}
    CHECK(isle_bootheap_sealed(h));
    CHECK(A(h, p, 64, 4096) == NULL); /* growth fails: LuaJIT keeps p */
    CHECK(A(h, p, 64, 16) == p);      /* a shrink cannot */
    CHECK(A(h, NULL, 0, 8) == NULL);
    isle_bootheap_give_back(h);
    isle_bootheap_trim();
}

/* Closing: the heap is sealed, frees of region blocks are counted, the
 * wrapped allocator's go there, and the callback runs once, inside the free
 * of the last region block. */
static int emptied_calls;
static isle_bootheap *emptied_heap;

static void on_empty(void *arg)
{
    CHECK(arg == &emptied_calls);
    CHECK_EQ(isle_bootheap_live(emptied_heap), 0);
    emptied_calls++;
}

static void test_closing(void)
{
    wrapped w = {0, 0};
    isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h != NULL);
    emptied_heap = h;
    emptied_calls = 0;
    char *a = A(h, NULL, 0, 40), *b = A(h, NULL, 0, 4000);
    char *huge = A(h, NULL, 0, 2 * ISLE_BOOTHEAP_SIZE);
    CHECK(!isle_bootheap_owns(h, huge));
    CHECK(!isle_bootheap_sealed(h));
    CHECK_EQ(isle_bootheap_closing(h, on_empty, &emptied_calls), 1);
    CHECK(isle_bootheap_sealed(h));
    CHECK(A(h, a, 40, 0) == NULL);
    CHECK_EQ(emptied_calls, 0);
    CHECK(A(h, huge, 2 * ISLE_BOOTHEAP_SIZE, 0) == NULL);
    CHECK_EQ(w.live, 0);
    CHECK_EQ(emptied_calls, 0);
    CHECK(A(h, b, 4000, 0) == NULL);
    CHECK_EQ(emptied_calls, 1);
    /* Nothing left: nothing to wait for. */
    CHECK_EQ(isle_bootheap_closing(h, on_empty, &emptied_calls), 0);
    CHECK_EQ(emptied_calls, 1);
    isle_bootheap_give_back(h);
}

static void test_pool_bound(void)
{
    isle_bootheap_trim();
    CHECK_EQ(isle_bootheap_pooled(), 0);
    enum { N = ISLE_BOOTHEAP_POOL + 3 };
    wrapped w = {0, 0};
    isle_bootheap *hs[N];
    for (int i = 0; i < N; i++) {
        hs[i] = isle_bootheap_take(wrapped_alloc, &w);
        CHECK(hs[i] != NULL);
        for (int j = 0; j < i; j++) CHECK(hs[j] != hs[i]);
    }
    for (int i = 0; i < N; i++) isle_bootheap_give_back(hs[i]);
    /* The first ISLE_BOOTHEAP_POOL are kept, the rest unmapped. */
    CHECK_EQ(isle_bootheap_pooled(), ISLE_BOOTHEAP_POOL);
    for (int i = 0; i < N; i++) CHECK_EQ(mapped(hs[i]), i < ISLE_BOOTHEAP_POOL);
    /* The last kept is the next taken. */
    isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
    CHECK(h == hs[ISLE_BOOTHEAP_POOL - 1]);
    CHECK_EQ(isle_bootheap_pooled(), ISLE_BOOTHEAP_POOL - 1);
    isle_bootheap_give_back(h);
    isle_bootheap_give_back(NULL);
    CHECK_EQ(isle_bootheap_pooled(), ISLE_BOOTHEAP_POOL);
    isle_bootheap_trim();
    CHECK_EQ(isle_bootheap_pooled(), 0);
    for (int i = 0; i < ISLE_BOOTHEAP_POOL; i++) CHECK(!mapped(hs[i]));
}

/* Threads taking, using and giving back heaps: no region is handed to two
 * of them at once (each writes its mark over its blocks and finds it
 * intact before the give-back). */
enum { T = 4 };
static atomic_int stop_churn;

static void *churn(void *arg)
{
    long mark = (long)(intptr_t)arg;
    wrapped w = {0, 0};
    int rounds = SCALE(400);
    for (int r = 0; r < rounds || (mark < 0 && !atomic_load(&stop_churn)); r++) {
        isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
        if (!h) continue;
        long *blocks[16];
        for (int k = 0; k < 16; k++) {
            blocks[k] = A(h, NULL, 0, 64 + (size_t)k * 8);
            for (int j = 0; j < 8; j++) blocks[k][j] = mark;
        }
        for (int k = 0; k < 16; k++) {
            for (int j = 0; j < 8; j++) CHECK_EQ(blocks[k][j], mark);
            A(h, blocks[k], 64 + (size_t)k * 8, 0);
        }
        CHECK_EQ(isle_bootheap_live(h), 0);
        isle_bootheap_give_back(h);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[T];
    for (int i = 0; i < T; i++) th[i] = check_spawn(churn, (void *)(intptr_t)(i + 1));
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    CHECK(isle_bootheap_pooled() <= ISLE_BOOTHEAP_POOL);
    isle_bootheap_trim();
}

static void test_fork(void)
{
    atomic_store(&stop_churn, 0);
    pthread_t th = check_spawn(churn, (void *)(intptr_t)-1);
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* The pool's lock was not left held by the churning thread, and
             * what it holds is usable here. */
            alarm(10);
            wrapped w = {0, 0};
            for (int i = 0; i < ISLE_BOOTHEAP_POOL + 2; i++) {
                isle_bootheap *h = isle_bootheap_take(wrapped_alloc, &w);
                if (!h) _Exit(2);
                char *p = A(h, NULL, 0, 100);
                if (!isle_bootheap_owns(h, p)) _Exit(3);
                memset(p, 1, 100);
                A(h, p, 100, 0);
                isle_bootheap_give_back(h);
            }
            isle_bootheap_trim();
            _Exit(0);
        }
        check_child_ok(pid);
    }
    atomic_store(&stop_churn, 1);
    pthread_join(th, NULL);
    isle_bootheap_trim();
}

int main(void)
{
    RUN(test_region_and_reuse);
    RUN(test_seal_and_routing);
    RUN(test_growth_fails_cleanly);
    RUN(test_closing);
    RUN(test_pool_bound);
    RUN(test_threads);
    RUN(test_fork);
    return check_done();
}
