/* test_stress_task.c - completers, cancellers, a starter, waiters and two
 * subscribed mailboxes racing on the same tasks, round after round, while
 * the tasks' last references are dropped by whichever thread is last.
 * Each task must end exactly once, in a state that matches its winner; every
 * waiter returns; each subscriber gets exactly one notice per task; a cancel
 * that saw RUNNING raised the runner's flag. Clean under TSan and ASan. */
#include "check.h"
#include "internal.h"
#include "failalloc.h"

#include <sched.h>
#include <string.h>

enum { K = 64 };                 /* tasks per round */
enum {                           /* the racing threads */
    STARTER, COMPLETER_A, COMPLETER_B, CANCEL_X, CANCEL_Y, WAITER_1, WAITER_2,
    RACERS,
    CONSUMER_1 = RACERS, CONSUMER_2, THREADS
};

static int rounds;
static pthread_barrier_t round_start, round_end;
static isle_task *tasks[K];
static isle_mbox *subs[2];
static isle_sig *runner_sig;

/* Per-round records, written by the racers and consumers, read by main
 * between the barriers. */
static atomic_int ends[K];        /* how many threads ended task i */
static atomic_int winner[K];      /* who ended it: 'A', 'B', 'X' */
static atomic_int started[K];
static atomic_int cancel_saw_running;
static int seen[2][K];            /* notices per subscriber */
static int seen_state[2][K];
static int seen_cancelled[2][K];
static char seen_result[2][K];
static size_t seen_len[2][K];
static atomic_long waiter_timeouts;

static void ended_by(int i, int who)
{
    atomic_fetch_add(&ends[i], 1);
    atomic_store(&winner[i], who);
}

static void race(int role)
{
    switch (role) {
    case STARTER:
        for (int i = 0; i < K; i++) {
            if (isle_task_start(tasks[i], runner_sig, NULL)) atomic_store(&started[i], 1);
            isle_task_release(tasks[i]);
        }
        break;
    case COMPLETER_A: /* a worker: completes what it sees running */
        for (int i = 0; i < K; i++) {
            while (isle_task_state(tasks[i]) == ISLE_TASK_QUEUED) sched_yield();
            if (isle_task_complete(tasks[i], ISLE_TASK_DONE, "A", 1)) ended_by(i, 'A');
            isle_task_release(tasks[i]);
        }
        break;
    case COMPLETER_B: /* completes every other task from any state, backwards */
        for (int i = K - 1; i >= 0; i--) {
            if (i % 2 && isle_task_complete(tasks[i], ISLE_TASK_DONE, "B", 1)) ended_by(i, 'B');
            isle_task_release(tasks[i]);
        }
        break;
    case CANCEL_X:
    case CANCEL_Y:
        for (int n = 0; n < K; n++) {
            int i = role == CANCEL_X ? n : K - 1 - n;
            if (role == CANCEL_X || i % 3 == 0) {
                int st = isle_task_cancel(tasks[i]);
                if (st == ISLE_TASK_QUEUED) ended_by(i, 'X');
                else if (st == ISLE_TASK_RUNNING) atomic_store(&cancel_saw_running, 1);
            }
            isle_task_release(tasks[i]);
        }
        break;
    case WAITER_1:
        for (int i = 0; i < K; i++) {
            CHECK_EQ(isle_task_wait(tasks[i], -1), 1);
            isle_task_release(tasks[i]);
        }
        break;
    case WAITER_2: /* short timed waits, backwards */
        for (int i = K - 1; i >= 0; i--) {
            while (!isle_task_wait(tasks[i], 1e-4)) atomic_fetch_add(&waiter_timeouts, 1);
            isle_task_release(tasks[i]);
        }
        break;
    }
}

static int index_of(isle_task *t)
{
    for (int i = 0; i < K; i++)
        if (tasks[i] == t) return i;
    return -1;
}

static void consume(int which)
{
    isle_mbox *mb = subs[which];
    int got = 0;
    while (got < K) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
        CHECK(msgs == NULL);
        for (isle_done *d = done; d; d = d->next, got++) {
            int i = index_of(d->task);
            CHECK(i >= 0);
            seen[which][i]++;
            /* The notice holds the task: it is readable whoever let go. */
            seen_state[which][i] = isle_task_state(d->task);
            seen_cancelled[which][i] = isle_task_cancelled(d->task);
            const char *r = isle_task_result(d->task, &seen_len[which][i]);
            seen_result[which][i] = seen_len[which][i] ? r[0] : 0;
        }
        isle_done_free_list(done);
    }
}

static void *thread_main(void *arg)
{
    int role = (int)(intptr_t)arg;
    for (int r = 0; r < rounds; r++) {
        pthread_barrier_wait(&round_start);
        if (role < RACERS) race(role);
        else consume(role - CONSUMER_1);
        pthread_barrier_wait(&round_end);
    }
    return NULL;
}

static void test_race(void)
{
    rounds = SCALE(400);
    CHECK(pthread_barrier_init(&round_start, NULL, THREADS + 1) == 0);
    CHECK(pthread_barrier_init(&round_end, NULL, THREADS + 1) == 0);
    subs[0] = isle_mbox_new(4, 0);
    subs[1] = isle_mbox_new(4, 1);
    runner_sig = isle_sig_new();
    pthread_t th[THREADS];
    for (int k = 0; k < THREADS; k++) th[k] = check_spawn(thread_main, (void *)(intptr_t)k);
    long wins[3] = {0, 0, 0}, running_cancels = 0;
    for (int r = 0; r < rounds; r++) {
        /* Between the barriers only main runs. */
        memset(seen, 0, sizeof seen);
        atomic_store(&cancel_saw_running, 0);
        isle_sig_lower(runner_sig);
        for (int i = 0; i < K; i++) {
            atomic_store(&ends[i], 0);
            atomic_store(&winner[i], 0);
            atomic_store(&started[i], 0);
            tasks[i] = isle_task_new();
            CHECK(tasks[i] != NULL);
            CHECK_EQ(isle_task_subscribe(tasks[i], subs[0]), 1);
            CHECK_EQ(isle_task_subscribe(tasks[i], subs[1]), 1);
            for (int k = 0; k < RACERS; k++) isle_task_retain(tasks[i]);
            isle_task_release(tasks[i]);    /* racers and notices hold it now */
        }
        pthread_barrier_wait(&round_start);
        pthread_barrier_wait(&round_end);
        int bad_ends = 0, bad_state = 0, bad_notice = 0;
        for (int i = 0; i < K; i++) {
            int w = atomic_load(&winner[i]);
            bad_ends += atomic_load(&ends[i]) != 1;
            if (w == 'X') {
                wins[2]++;
                bad_state += atomic_load(&started[i]);   /* cancelled while queued */
            } else if (w == 'A' || w == 'B') {
                wins[w - 'A']++;
            } else {
                bad_state++;
            }
            for (int s = 0; s < 2; s++) {
                bad_notice += seen[s][i] != 1;
                if (w == 'X')
                    bad_state += seen_state[s][i] != ISLE_TASK_CANCELLED || seen_len[s][i] != 0
                                 || !seen_cancelled[s][i];
                else
                    bad_state += seen_state[s][i] != ISLE_TASK_DONE || seen_len[s][i] != 1
                                 || seen_result[s][i] != w;
            }
        }
        CHECK_EQ(bad_ends, 0);
        CHECK_EQ(bad_state, 0);
        CHECK_EQ(bad_notice, 0);
        if (atomic_load(&cancel_saw_running)) {
            running_cancels++;
            CHECK_EQ(__atomic_load_n(&runner_sig->flag, __ATOMIC_ACQUIRE), 1);
        }
        /* Nothing left over on the subscribers. */
        isle_msg *msgs;
        isle_done *done;
        for (int s = 0; s < 2; s++)
            CHECK_EQ(isle_mbox_wait(subs[s], 0, &msgs, &done), ISLE_ETIMEOUT);
    }
    for (int k = 0; k < THREADS; k++) check_join(th[k]);
    printf("    %d rounds x %d tasks: won by A %ld, B %ld, cancel %ld; "
           "rounds with running cancels %ld; waiter timeouts %ld\n",
           rounds, K, wins[0], wins[1], wins[2], running_cancels,
           atomic_load(&waiter_timeouts));
    CHECK_EQ(wins[0] + wins[1] + wins[2], (long)rounds * K);
    pthread_barrier_destroy(&round_start);
    pthread_barrier_destroy(&round_end);
    isle_sig_release(runner_sig);
    isle_mbox_release(subs[0]);
    isle_mbox_release(subs[1]);
}

/* A second, tighter race on one task at a time: two completers, two
 * cancellers and a parked waiter released together by a barrier. */
enum { DUELISTS = 5 };
static int duel_loops;
static isle_task *duel_task;
static pthread_barrier_t duel_go, duel_done;
static int duel_won[DUELISTS];

static void *duel_main(void *arg)
{
    int k = (int)(intptr_t)arg, role = k % 3;
    for (int l = 0; l < duel_loops; l++) {
        pthread_barrier_wait(&duel_go);
        isle_task *t = duel_task;
        if (role == 0) duel_won[k] = isle_task_complete(t, ISLE_TASK_DONE, "c", 1);
        else if (role == 1) duel_won[k] = isle_task_cancel(t) == ISLE_TASK_QUEUED;
        else duel_won[k] = -isle_task_wait(t, -1);   /* -1: released */
        pthread_barrier_wait(&duel_done);
    }
    return NULL;
}

static void test_duel(void)
{
    duel_loops = SCALE(20000);
    int by_cancel = 0;
    CHECK(pthread_barrier_init(&duel_go, NULL, DUELISTS + 1) == 0);
    CHECK(pthread_barrier_init(&duel_done, NULL, DUELISTS + 1) == 0);
    pthread_t th[DUELISTS];
    for (int k = 0; k < DUELISTS; k++) th[k] = check_spawn(duel_main, (void *)(intptr_t)k);
    for (int l = 0; l < duel_loops; l++) {
        duel_task = isle_task_new();
        pthread_barrier_wait(&duel_go);
        pthread_barrier_wait(&duel_done);
        int wins = 0, released = 0;
        for (int k = 0; k < DUELISTS; k++) {
            if (duel_won[k] > 0) wins++;
            if (duel_won[k] < 0) released++;
        }
        CHECK_EQ(wins, 1);
        CHECK_EQ(released, DUELISTS / 3);
        int st = isle_task_state(duel_task);
        CHECK(st == ISLE_TASK_DONE || st == ISLE_TASK_CANCELLED);
        by_cancel += st == ISLE_TASK_CANCELLED;
        isle_task_release(duel_task);
    }
    for (int k = 0; k < DUELISTS; k++) check_join(th[k]);
    pthread_barrier_destroy(&duel_go);
    pthread_barrier_destroy(&duel_done);
    printf("    %d duels, %d won by a cancel\n", duel_loops, by_cancel);
}

int main(void)
{
    isle_cache_pause(0); /* run with the block caches on, as the library does */
    RUN(test_race);
    RUN(test_duel);
    return check_done();
}
