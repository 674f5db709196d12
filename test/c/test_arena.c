/* test_arena.c - the pool of kept LuaJIT arenas (csrc/arena.c): a slot is
 * reserved before a close and filled after it; no more than ISLE_ARENA_POOL
 * are kept or promised at once; a state whose heap passed ISLE_ARENA_PEAK
 * gets no slot; a slot given up with NULL is free again; what was put is
 * what is taken, last first; threads share the pool (run under TSan too);
 * in a child forked while slots are promised, the promises are gone and
 * the pool's lock is free.
 *
 * The arenas here are plain addresses: the pool never looks inside one
 * (isle.c's use of it with LuaJIT is tested from Lua, test_core's TestArena). */
#include "check.h"
#include "internal.h"


static char arenas[ISLE_ARENA_POOL + 4];

static void drain(void)
{
    while (isle_arena_take()) {}
    CHECK_EQ(isle_arena_pooled(), 0);
}

static void test_reserve_put_take(void)
{
    drain();
    CHECK(isle_arena_take() == NULL);
    CHECK_EQ(isle_arena_reserve(1000), 1);
    CHECK_EQ(isle_arena_pooled(), 0); /* promised, not there yet */
    isle_arena_put(&arenas[0]);
    CHECK_EQ(isle_arena_pooled(), 1);
    CHECK_EQ(isle_arena_reserve(1000), 1);
    isle_arena_put(&arenas[1]);
    CHECK(isle_arena_take() == &arenas[1]);
    CHECK(isle_arena_take() == &arenas[0]);
    CHECK(isle_arena_take() == NULL);
}

static void test_bounds(void)
{
    drain();
    /* Promises count against the bound as much as kept arenas. */
    for (int i = 0; i < ISLE_ARENA_POOL; i++) CHECK_EQ(isle_arena_reserve(0), 1);
    CHECK_EQ(isle_arena_reserve(0), 0);
    for (int i = 0; i < ISLE_ARENA_POOL; i++) isle_arena_put(&arenas[i]);
    CHECK_EQ(isle_arena_pooled(), ISLE_ARENA_POOL);
    CHECK_EQ(isle_arena_reserve(0), 0);
    CHECK(isle_arena_take() != NULL);
    CHECK_EQ(isle_arena_reserve(0), 1);
    isle_arena_put(NULL); /* the close gave the slot up */
    CHECK_EQ(isle_arena_pooled(), ISLE_ARENA_POOL - 1);
    CHECK_EQ(isle_arena_reserve(0), 1);
    isle_arena_put(&arenas[ISLE_ARENA_POOL]);
    CHECK_EQ(isle_arena_pooled(), ISLE_ARENA_POOL);
    drain();
}

static void test_peak(void)
{
    drain();
    CHECK_EQ(isle_arena_reserve(ISLE_ARENA_PEAK + 1), 0);
    CHECK_EQ(isle_arena_reserve(ISLE_ARENA_PEAK), 1);
    isle_arena_put(NULL);
    /* A refused reservation promised nothing: all the slots are there. */
    for (int i = 0; i < ISLE_ARENA_POOL; i++) CHECK_EQ(isle_arena_reserve(0), 1);
    for (int i = 0; i < ISLE_ARENA_POOL; i++) isle_arena_put(NULL);
    CHECK_EQ(isle_arena_pooled(), 0);
}

enum { T = 4 };
static atomic_int stop_churn;

static void *churn(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long r = 0; rounds < 0 ? !atomic_load(&stop_churn) : r < rounds; r++) {
        void *a = isle_arena_take();
        if (!a) a = &arenas[r % (ISLE_ARENA_POOL + 4)];
        if (isle_arena_reserve(0)) isle_arena_put(a);
    }
    return NULL;
}

static void test_threads(void)
{
    drain();
    pthread_t th[T];
    for (int i = 0; i < T; i++) th[i] = check_spawn(churn, (void *)(intptr_t)SCALE(20000));
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    int n = isle_arena_pooled();
    CHECK(n >= 1 && n <= ISLE_ARENA_POOL);
    /* Every promise was kept or given up: the free slots are all there. */
    int more = 0;
    while (isle_arena_reserve(0)) more++;
    CHECK_EQ(n + more, ISLE_ARENA_POOL);
    for (int i = 0; i < more; i++) isle_arena_put(NULL);
    drain();
}

static void test_fork(void)
{
    drain();
    atomic_store(&stop_churn, 0);
    pthread_t th = check_spawn(churn, (void *)(intptr_t)-1);
    /* Two promises held over the forks by this thread. */
    CHECK_EQ(isle_arena_reserve(0), 1);
    CHECK_EQ(isle_arena_reserve(0), 1);
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            alarm(10);
            /* The promises made before the fork are the parent's: every
             * slot not holding an arena can be promised here. */
            int kept = isle_arena_pooled(), more = 0;
            while (isle_arena_reserve(0)) more++;
            if (kept + more != ISLE_ARENA_POOL) _Exit(2);
            for (int i = 0; i < more; i++) isle_arena_put(NULL);
            _Exit(0);
        }
        check_child_ok(pid);
    }
    atomic_store(&stop_churn, 1);
    pthread_join(th, NULL);
    isle_arena_put(NULL);
    isle_arena_put(NULL);
    drain();
}

int main(void)
{
    RUN(test_reserve_put_take);
    RUN(test_bounds);
    RUN(test_peak);
    RUN(test_threads);
    RUN(test_fork);
    return check_done();
}
