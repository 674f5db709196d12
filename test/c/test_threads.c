/* test_threads.c - the threads isles run on (csrc/threads.c): a thread whose
 * job ended parks (listed before the job is done) and runs the next job; at
 * most ISLE_THREADS_PARKED park, the others exit; a parked thread leaves on its own after
 * ISLE_THREADS_LINGER seconds; trim makes them all exit now; a thread whose
 * job changed it (its name, its signal mask) exits instead of parking; many
 * starters at once run every job exactly once (run under TSan too); a child
 * forked while threads are parked has none and starts its own.
 *
 * Threads are counted in /proc/self/task: the detector is proven by the
 * first check (a job's thread is counted while it runs). */
#include "check.h"
#include "alloc_sweep.h" /* count_threads */
#include "internal.h"

#include <signal.h>
#include <string.h>

/* Polls cond for up to 10 s. */
#define EVENTUALLY(cond)                                                                           \
    do {                                                                                           \
        for (int k_ = 0; k_ < 1000 && !(cond); k_++) check_sleep(0.01);                            \
        CHECK(cond);                                                                               \
    } while (0)

typedef struct job {
    atomic_int done;
    atomic_int gate; /* the job waits for it when `hold` */
    int hold;
    int change; /* 1: renames its thread, 2: blocks SIGUSR1 in it */
    pthread_t who;
    int threads_seen;
} job;

static void run_job(void *arg)
{
    job *j = arg;
    j->who = pthread_self();
    j->threads_seen = count_threads();
    if (j->change == 1) pthread_setname_np(pthread_self(), "renamed");
    if (j->change == 2) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &s, NULL);
    }
    while (j->hold && !atomic_load(&j->gate)) check_sleep(0.001);
}

static void job_done(void *arg) { atomic_store(&((job *)arg)->done, 1); }

static void start(job *j)
{
    isle_thread_job tj = {run_job, job_done, j};
    CHECK_EQ(isle_threads_start(&tj), 0);
}

static void wait_done(job *j) { EVENTUALLY(atomic_load(&j->done)); }

static int base;

static void settle(void)
{
    isle_threads_trim();
    CHECK_EQ(isle_threads_parked(), 0);
    EVENTUALLY(count_threads() == base);
}

static void test_a_thread_runs_the_next_job(void)
{
    settle();
    job a = {0};
    start(&a);
    wait_done(&a);
    CHECK_EQ(a.threads_seen, base + 1); /* the detector: the job's thread counts */
    /* Listed as parked before its job was done: a start right after a
     * job's end always finds it. */
    CHECK_EQ(isle_threads_parked(), 1);
    for (int k = 0; k < 20; k++) {
        job b = {0};
        start(&b);
        wait_done(&b);
        CHECK(pthread_equal(a.who, b.who));
        CHECK_EQ(b.threads_seen, base + 1);
        CHECK_EQ(isle_threads_parked(), 1);
    }
    settle();
}

static void test_at_most_so_many_park(void)
{
    settle();
    enum { N = ISLE_THREADS_PARKED + 3 };
    static job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].hold = 1;
        start(&jobs[i]);
    }
    EVENTUALLY(count_threads() == base + N); /* held: one thread each */
    for (int i = 0; i < N; i++) atomic_store(&jobs[i].gate, 1);
    for (int i = 0; i < N; i++) wait_done(&jobs[i]);
    EVENTUALLY(isle_threads_parked() == ISLE_THREADS_PARKED);
    EVENTUALLY(count_threads() == base + ISLE_THREADS_PARKED);
    settle();
}

/* From no parked thread to one: a job run and ended. */
static void park_one(void)
{
    settle();
    job a = {0};
    start(&a);
    wait_done(&a);
    EVENTUALLY(isle_threads_parked() == 1);
}

static void test_a_parked_thread_leaves_on_its_own(void)
{
    park_one();
    double t0 = isle_now();
    /* No trim: it goes after ISLE_THREADS_LINGER seconds by itself. */
    EVENTUALLY(isle_threads_parked() == 0 && count_threads() == base);
    CHECK(isle_now() - t0 >= ISLE_THREADS_LINGER * 0.5);
}

static void test_a_changed_thread_exits(void)
{
    for (int change = 1; change <= 2; change++) {
        settle();
        job a = {0};
        a.change = change;
        start(&a);
        wait_done(&a);
        double t0 = isle_now();
        EVENTUALLY(count_threads() == base);
        CHECK(isle_now() - t0 < ISLE_THREADS_LINGER / 2); /* it exited: it did not linger */
        CHECK_EQ(isle_threads_parked(), 0);
        /* The next job gets a new thread, which parks as usual. */
        job b = {0};
        start(&b);
        wait_done(&b);
        CHECK_EQ(b.threads_seen, base + 1);
        EVENTUALLY(isle_threads_parked() == 1);
        settle();
    }
}

enum { STARTERS = 4 };
static atomic_long ran;

static void count_job(void *arg) { (void)arg; }

static void count_done(void *arg)
{
    atomic_fetch_add(&ran, 1);
    atomic_fetch_add((atomic_long *)arg, 1);
}

static void *starter(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long r = 0; r < rounds; r++) {
        atomic_long mine = 0;
        isle_thread_job tj = {count_job, count_done, &mine};
        CHECK_EQ(isle_threads_start(&tj), 0);
        while (!atomic_load(&mine)) sched_yield();
    }
    return NULL;
}

static void test_many_starters(void)
{
    settle();
    atomic_store(&ran, 0);
    long rounds = SCALE(500);
    pthread_t th[STARTERS];
    for (int i = 0; i < STARTERS; i++) th[i] = check_spawn(starter, (void *)(intptr_t)rounds);
    for (int i = 0; i < STARTERS; i++) check_join(th[i]);
    CHECK_EQ(atomic_load(&ran), rounds * STARTERS);
    CHECK(isle_threads_parked() <= ISLE_THREADS_PARKED);
    settle();
}

static void test_fork_child_has_no_parked_threads(void)
{
    park_one();
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            alarm(10);
            if (isle_threads_parked() != 0) _Exit(2);
#if defined(CHECK_TSAN)
            _Exit(0); /* ThreadSanitizer refuses new threads after such a fork */
#endif
            job c = {0};
            isle_thread_job tj = {run_job, job_done, &c};
            if (isle_threads_start(&tj) != 0) _Exit(3);
            while (!atomic_load(&c.done)) check_sleep(0.001);
            _Exit(0);
        }
        check_child_ok(pid);
    }
    CHECK_EQ(isle_threads_parked(), 1);
    settle();
}

static void *nothing(void *arg) { return arg; }

int main(void)
{
    /* ThreadSanitizer starts a thread of its own with the first one. */
    check_join(check_spawn(nothing, NULL));
    base = count_threads();
    RUN(test_a_thread_runs_the_next_job);
    RUN(test_at_most_so_many_park);
    RUN(test_a_parked_thread_leaves_on_its_own);
    RUN(test_a_changed_thread_exits);
    RUN(test_many_starters);
    RUN(test_fork_child_has_no_parked_threads);
    return check_done();
}
