/* test_task.c - completion slots: one completion, results, waits (without
 * the spin for a task expected to take long), cancels (queued and running),
 * subscriptions and references. */
#include "check.h"
#include "failalloc.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int32_t flag_of(isle_sig *s) { return __atomic_load_n(&s->flag, __ATOMIC_ACQUIRE); }

static void test_fresh(void)
{
    isle_task *t = isle_task_new();
    CHECK(t != NULL);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_cancelled(t), 0);
    CHECK_EQ(isle_task_wait(t, 0), 0);
    size_t len = 123;
    CHECK(isle_task_result(t, &len) == NULL && len == 0);
    isle_task_release(t);
    isle_task_release(NULL);
}

static void test_complete_once(void)
{
    isle_task *t = isle_task_new();
    char src[] = "abc";
    /* Only final states complete a task. */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_RUNNING, "no", 2), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_QUEUED, "no", 2), 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_wait(t, 0), 0);

    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, src, 3), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    src[0] = 'X';                              /* the result is a copy */
    size_t len = 0;
    const char *r = isle_task_result(t, &len);
    CHECK(r != NULL && r != src);
    CHECK(len == 3 && memcmp(r, "abc", 3) == 0);
    CHECK(isle_task_result(t, NULL) == r);

    /* Later completions lose and change nothing. */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_FAILED, "zz", 2), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_CLOSED, "closed", 6), 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    r = isle_task_result(t, &len);
    CHECK(len == 3 && memcmp(r, "abc", 3) == 0);
    CHECK_EQ(isle_task_wait(t, 0), 1);
    CHECK_EQ(isle_task_wait(t, -1), 1);

    /* A cancel after the end reports the final state and sets no flag. */
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_DONE);
    CHECK_EQ(isle_task_cancelled(t), 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    isle_sig *s = isle_sig_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 0);        /* ended: the runner skips it */
    CHECK_EQ(flag_of(s), 0);
    isle_sig_release(s);
    isle_task_release(t);

    /* Every final state is a valid ending; an empty result reads empty. */
    int finals[] = {ISLE_TASK_DONE, ISLE_TASK_FAILED, ISLE_TASK_CANCELLED, ISLE_TASK_CLOSED};
    for (int i = 0; i < 4; i++) {
        t = isle_task_new();
        CHECK_EQ(isle_task_complete(t, finals[i], NULL, 0), 1);
        CHECK_EQ(isle_task_state(t), finals[i]);
        isle_task_result(t, &len);
        CHECK_EQ(len, 0);
        isle_task_release(t);
    }

    /* A large result, after a start. */
    size_t n = 1 << 20;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = (char)(i * 7);
    t = isle_task_new();
    CHECK_EQ(isle_task_start(t, NULL, NULL), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_task_wait(t, 0), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_FAILED, big, n), 1);
    memset(big, 0, n);
    r = isle_task_result(t, &len);
    CHECK_EQ(len, n);
    int same = 1;
    for (size_t i = 0; i < n; i++)
        if (r[i] != (char)(i * 7)) { same = 0; break; }
    CHECK(same);
    free(big);
    isle_task_release(t);
}

typedef struct {
    isle_task *t;
    atomic_int go;
    double timeout;
    atomic_int returned;
    int rc;
} slot_arg;

static void *complete_on_go(void *arg)
{
    slot_arg *a = arg;
    while (!atomic_load(&a->go)) check_sleep(0.001);
    CHECK_EQ(isle_task_complete(a->t, ISLE_TASK_DONE, "late", 4), 1);
    return NULL;
}

static void *wait_thread(void *arg)
{
    slot_arg *a = arg;
    a->rc = isle_task_wait(a->t, a->timeout);
    atomic_store(&a->returned, 1);
    return NULL;
}

static void test_wait_timeout(void)
{
    isle_task *t = isle_task_new();
    slot_arg a = {.t = t};
    pthread_t th = check_spawn(complete_on_go, &a);
    double t0 = isle_now();
    CHECK_EQ(isle_task_wait(t, 0.05), 0);      /* not yet */
    CHECK(isle_now() - t0 >= 0.045);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED);
    atomic_store(&a.go, 1);
    CHECK_EQ(isle_task_wait(t, 30), 1);        /* completed from the other thread */
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    size_t len;
    const char *r = isle_task_result(t, &len);
    CHECK(len == 4 && memcmp(r, "late", 4) == 0);
    CHECK_EQ(isle_task_wait(t, 0), 1);
    check_join(th);
    isle_task_release(t);
}

/* CPU time the calling thread spends in isle_task_wait(t, 0.1) on a task
 * that does not end meanwhile. */
static double wait_cpu(isle_task *t)
{
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    CHECK_EQ(isle_task_wait(t, 0.1), 0);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
}

/* A task expected to take long (an isle's init) is waited for without the
 * spin: the wait parks at once. The detector: with the largest spin budget
 * (isle_set_spin caps the 50 ms asked for at 10 ms), an ordinary task's wait
 * burns CPU for much of it. It needs a core to itself: with two CPU hogs
 * sharing the cores the spinner's yields give the CPU away and it fails
 * (bench/README.md, Issue 12, ninth round). */
static void test_long_wait_does_not_spin(void)
{
    double spin = isle_get_spin();
    isle_set_spin(0.05);
    isle_task *plain = isle_task_new(), *slow = isle_task_new();
    isle_task_expect_long(slow);
    CHECK(wait_cpu(plain) > 0.005);
    CHECK(wait_cpu(slow) < 0.002);
    isle_set_spin(spin);
    isle_task_complete(slow, ISLE_TASK_DONE, "x", 1);
    CHECK_EQ(isle_task_wait(slow, 0), 1); /* an ended one is seen at once */
    CHECK_EQ(isle_task_wait(slow, 10), 1);
    isle_task_release(plain);
    isle_task_release(slow);
}

static void test_many_waiters(void)
{
    /* Parked waiters (forever and with a timeout) are all released. */
    enum { N = 6 };
    isle_task *t = isle_task_new();
    slot_arg a[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        a[i] = (slot_arg){.t = t, .timeout = i % 2 ? 30.0 : -1};
        th[i] = check_spawn(wait_thread, &a[i]);
    }
    check_sleep(0.05);
    for (int i = 0; i < N; i++) CHECK_EQ(atomic_load(&a[i].returned), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    for (int i = 0; i < N; i++) {
        check_join(th[i]);
        CHECK_EQ(a[i].rc, 1);
    }
    isle_task_release(t);

    /* A waiter is released by a cancel of a queued task too. */
    t = isle_task_new();
    a[0] = (slot_arg){.t = t, .timeout = -1};
    th[0] = check_spawn(wait_thread, &a[0]);
    check_sleep(0.02);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_QUEUED);
    check_join(th[0]);
    CHECK_EQ(a[0].rc, 1);
    isle_task_release(t);
}

static void test_cancel_queued(void)
{
    isle_task *t = isle_task_new();
    isle_mbox *mb = isle_mbox_new(4, 0);
    CHECK_EQ(isle_task_subscribe(t, mb), 1);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CANCELLED);
    CHECK(isle_task_cancelled(t) != 0);
    CHECK_EQ(isle_task_wait(t, 0), 1);
    size_t len = 9;
    isle_task_result(t, &len);
    CHECK_EQ(len, 0);
    /* The runner must skip it, and nothing is raised. */
    isle_sig *s = isle_sig_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CANCELLED);
    CHECK_EQ(flag_of(s), 0);
    /* Its ending is final: a late completion loses, a second cancel too. */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "x", 1), 0);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_CANCELLED);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CANCELLED);
    /* Its subscriber was told, once. */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done && done->task == t && done->next == NULL);
    isle_done_free_list(done);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    CHECK_EQ(isle_task_subscribe(t, mb), 0);
    isle_sig_release(s);
    isle_mbox_release(mb);
    isle_task_release(t);
}

/* A worker parked on its state's mailbox. */
typedef struct {
    isle_mbox *mb;
    int rc;
} parker;

static void *park_thread(void *arg)
{
    parker *w = arg;
    isle_msg *msgs;
    isle_done *done;
    w->rc = isle_mbox_wait(w->mb, -1, &msgs, &done);
    isle_msg_free_list(msgs);
    isle_done_free_list(done);
    return NULL;
}

static void test_cancel_running(void)
{
    isle_sig *s = isle_sig_new();
    isle_mbox *mb = isle_mbox_new(4, 0);
    isle_sig_attach_mbox(s, mb);
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_RUNNING);
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_task_cancelled(t), 0);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);

    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_RUNNING);   /* the runner ends it */
    CHECK(isle_task_cancelled(t) != 0);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_task_wait(t, 0), 0);
    /* The state's mailbox was woken so a parked worker looks. */
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done == NULL);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);

    isle_sig_lower(s);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_CANCELLED, "stopped", 7), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CANCELLED);
    /* After the end a cancel raises nothing any more. */
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_CANCELLED);
    CHECK_EQ(flag_of(s), 0);
    isle_task_release(t);

    /* A worker parked on the state's mailbox is woken by the cancel. */
    t = isle_task_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 1);
    parker w = {.mb = mb, .rc = -1};
    pthread_t th = check_spawn(park_thread, &w);
    check_sleep(0.05);
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_RUNNING);
    check_join(th);
    CHECK_EQ(w.rc, ISLE_OK);
    CHECK_EQ(flag_of(s), 1);
    /* The runner drops its task: the retained signal block goes with it. */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_CANCELLED, NULL, 0), 1);
    isle_task_release(t);

    /* Running without a signal block: the cancel flag alone. */
    t = isle_task_new();
    CHECK_EQ(isle_task_start(t, NULL, NULL), 1);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_RUNNING);
    CHECK(isle_task_cancelled(t) != 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "ok", 2), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    isle_task_release(t);

    /* Released while still running: the task's hold on the block goes too
     * (LeakSanitizer), and the block outlives its owner's free until then. */
    t = isle_task_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 1);
    isle_sig_release(s);                      /* owner lets go first */
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_RUNNING);  /* still safe to raise */
    isle_task_release(t);
    isle_mbox_release(mb);
}

static void test_subscribe(void)
{
    isle_mbox *a = isle_mbox_new(1, 0), *b = isle_mbox_new(1, 0), *c = isle_mbox_new(1, 0);
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(t, a), 1);
    CHECK_EQ(isle_task_subscribe(t, b), 1);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(a, 0, &msgs, &done), ISLE_ETIMEOUT);   /* nothing yet */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "r", 1), 1);
    /* The caller lets go: the notices keep the task (ASan would see it). */
    isle_task_release(t);
    isle_mbox *subs[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(isle_mbox_wait(subs[i], 0, &msgs, &done), ISLE_OK);
        CHECK(msgs == NULL && done != NULL && done->next == NULL && done->task == t);
        CHECK_EQ(isle_task_state(done->task), ISLE_TASK_DONE);
        size_t len;
        const char *r = isle_task_result(done->task, &len);
        CHECK(len == 1 && r[0] == 'r');
        isle_done_free_list(done);
        CHECK_EQ(isle_mbox_wait(subs[i], 0, &msgs, &done), ISLE_ETIMEOUT);
    }
    CHECK_EQ(isle_mbox_wait(c, 0, &msgs, &done), ISLE_ETIMEOUT);  /* not subscribed */

    /* Subscribing after the end posts nothing. */
    t = isle_task_new();
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_FAILED, NULL, 0), 1);
    CHECK_EQ(isle_task_subscribe(t, c), 0);
    CHECK_EQ(isle_mbox_wait(c, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_task_release(t);

    /* Many tasks onto one mailbox: one notice each. */
    enum { N = 50 };
    isle_task *ts[N];
    for (int i = 0; i < N; i++) {
        ts[i] = isle_task_new();
        CHECK_EQ(isle_task_subscribe(ts[i], c), 1);
    }
    for (int i = N - 1; i >= 0; i--)
        CHECK_EQ(isle_task_complete(ts[i], ISLE_TASK_DONE, NULL, 0), 1);
    CHECK_EQ(isle_mbox_wait(c, 0, &msgs, &done), ISLE_OK);
    int seen[N] = {0}, count = 0;
    for (isle_done *d = done; d; d = d->next, count++)
        for (int i = 0; i < N; i++)
            if (d->task == ts[i]) seen[i]++;
    CHECK_EQ(count, N);
    int all_once = 1;
    for (int i = 0; i < N; i++) all_once &= seen[i] == 1;
    CHECK(all_once);
    isle_done_free_list(done);
    for (int i = 0; i < N; i++) isle_task_release(ts[i]);

    isle_mbox_release(a);
    isle_mbox_release(b);
    isle_mbox_release(c);
}

static void test_refs(void)
{
    /* Every holder can be the last: the caller, a message, a notice. */
    isle_mbox *mb = isle_mbox_new(4, 0);
    for (int last = 0; last < 3; last++) {
        isle_task *t = isle_task_new();
        isle_msg *m = isle_msg_new(0, t, NULL, 0);
        CHECK_EQ(isle_task_subscribe(t, mb), 1);
        isle_task_retain(t);
        isle_task_release(t);                  /* balanced: still alive */
        CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "v", 1), 1);
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
        CHECK(done && done->task == t);
        if (last == 0) { isle_msg_free(m); isle_done_free_list(done); isle_task_release(t); }
        if (last == 1) { isle_task_release(t); isle_done_free_list(done); isle_msg_free(m); }
        if (last == 2) { isle_msg_free(m); isle_task_release(t); isle_done_free_list(done); }
    }
    isle_mbox_release(mb);
}

/* Taking a watch back: one matching subscription goes, with every reference
 * it held (under AddressSanitizer LeakSanitizer fails the run otherwise);
 * the task then tells that subscriber nothing. */
static void test_unwatch(void)
{
    isle_mbox *a = isle_mbox_new(4, 0), *b = isle_mbox_new(4, 0);
    isle_sig *s = isle_sig_new();
    isle_task *t = isle_task_new();
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_task_unwatch(t, a, s), 0);           /* nothing to take back */
    CHECK_EQ(isle_task_watch(t, a, s), 1);
    CHECK_EQ(isle_task_watch(t, a, s), 1);             /* two jobs, one token */
    CHECK_EQ(isle_task_subscribe(t, b), 1);
    CHECK_EQ(isle_task_watch(t, b, s), 1);
    CHECK_EQ(isle_task_unwatch(t, a, NULL), 0);        /* the block must match too */
    CHECK_EQ(isle_task_unwatch(t, a, s), 1);
    CHECK_EQ(isle_task_unwatch(t, a, s), 1);
    CHECK_EQ(isle_task_unwatch(t, a, s), 0);
    CHECK_EQ(isle_task_unsubscribe(t, b), 1);
    CHECK_EQ(isle_task_unsubscribe(t, b), 0);          /* (b, s) is not a subscription */
    /* The mailboxes' owners let go first: a goes at once, b is held by the
     * (b, s) watch, which is still told: s raised, and the notice posted
     * into b frees b (its last reference) and releases t with it. */
    isle_mbox_release(a);
    isle_mbox_release(b);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_QUEUED);
    CHECK_EQ(flag_of(s), 1);
    isle_sig_release(s);
    isle_task_release(t);

    /* After the end there is nothing to take back; the notice still comes. */
    a = isle_mbox_new(4, 0);
    s = isle_sig_new();
    t = isle_task_new();
    CHECK_EQ(isle_task_watch(t, a, s), 1);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    CHECK_EQ(isle_task_unwatch(t, a, s), 0);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_mbox_wait(a, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done && done->task == t && done->next == NULL);
    isle_done_free_list(done);
    isle_task_release(t);

    /* A task that never ends: once its watches are taken back, the caller's
     * reference is the last, and a subscription may hold the very last. */
    t = isle_task_new();
    isle_sig_lower(s);
    CHECK_EQ(isle_task_watch(t, a, s), 1);
    CHECK_EQ(isle_task_subscribe(t, a), 1);
    CHECK_EQ(isle_task_unsubscribe(t, a), 1);
    isle_task_release(t);                              /* the caller lets go */
    CHECK_EQ(isle_task_unwatch(t, a, s), 1);           /* frees the task */
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_mbox_wait(a, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_sig_release(s);
    isle_mbox_release(a);
}

/* A dying state's running tasks end FAILED once, with the given bytes; tasks
 * that ended already, never started, or run elsewhere are left alone. */
static void test_fail_running(void)
{
    isle_sig *s = isle_sig_new();
    isle_sig *other = isle_sig_new();
    isle_task *a = isle_task_new(), *b = isle_task_new(), *done = isle_task_new();
    isle_task *queued = isle_task_new(), *elsewhere = isle_task_new();
    CHECK_EQ(isle_task_start(a, s, NULL), 1);
    CHECK_EQ(isle_task_start(b, s, NULL), 1);
    CHECK_EQ(isle_task_start(done, s, NULL), 1);
    CHECK_EQ(isle_task_start(elsewhere, other, NULL), 1);
    CHECK_EQ(isle_task_complete(done, ISLE_TASK_DONE, "ok", 2), 1);
    CHECK_EQ(isle_sig_fail_running(s, "Cgone", 5), 2);
    size_t len = 0;
    CHECK_EQ(isle_task_state(a), ISLE_TASK_FAILED);
    CHECK(memcmp(isle_task_result(a, &len), "Cgone", 5) == 0 && len == 5);
    CHECK_EQ(isle_task_state(b), ISLE_TASK_FAILED);
    CHECK_EQ(isle_task_state(done), ISLE_TASK_DONE);
    CHECK(memcmp(isle_task_result(done, &len), "ok", 2) == 0 && len == 2);
    CHECK_EQ(isle_task_state(queued), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_state(elsewhere), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_sig_fail_running(s, "Cgone", 5), 0); /* nothing left: once only */
    CHECK_EQ(isle_task_complete(elsewhere, ISLE_TASK_DONE, NULL, 0), 1);
    isle_task_release(a);
    isle_task_release(b);
    isle_task_release(done);
    isle_task_release(queued);
    isle_task_release(elsewhere);
    isle_sig_release(s);
    isle_sig_release(other);
}

/* A reader that saw a final state finds the result with it, even while the
 * completing thread is still between its stores (the Lua side reads the
 * state, then the result: a DONE task without a result decoded as an empty
 * buffer). Under ThreadSanitizer the old order failed ~1% of these. */
enum { RESULT_RACE_N = 100000 };
static isle_task *race_tasks[RESULT_RACE_N];
static atomic_int race_go;

static void *race_completer(void *arg)
{
    int n = *(int *)arg;
    while (!atomic_load(&race_go)) {}
    for (int i = 0; i < n; i++) isle_task_complete(race_tasks[i], ISLE_TASK_DONE, "Vx", 2);
    return NULL;
}

/* A result carries the references of what it names (tokens), as a message
 * does: taken only by the completion that wins, let go when the slot is
 * freed, read or not. */
static void test_result_carries_refs(void)
{
    int live0 = isle_task_live_count();
    isle_task *t = isle_task_new(), *a = isle_task_new(), *b = isle_task_new();
    isle_task *refs[] = {a, b};
    CHECK(isle_task_result_msg(t) == NULL);               /* not ended */
    CHECK_EQ(isle_task_complete_refs(t, ISLE_TASK_RUNNING, "no", 2, refs, 2), 0);
    CHECK_EQ(isle_task_complete_refs(t, ISLE_TASK_DONE, "Vab", 3, refs, 2), 1);
    /* A losing completion takes nothing, keeps nothing. */
    CHECK_EQ(isle_task_complete_refs(t, ISLE_TASK_FAILED, "E", 1, refs, 1), 0);
    isle_task_release(a);
    isle_task_release(b);
    CHECK_EQ(isle_task_live_count(), live0 + 3);           /* the result holds a and b */
    const isle_msg *r = isle_task_result_msg(t);
    CHECK(r != NULL && r->len == 3 && memcmp(r->data, "Vab", 3) == 0);
    CHECK(r->nrefs == 2 && r->refs[0] == a && r->refs[1] == b);
    size_t len = 0;
    CHECK(isle_task_result(t, &len) == r->data && len == 3);
    /* Read twice, as two readers would: each takes its own reference. */
    isle_task_retain(r->refs[0]);
    isle_task_retain(isle_task_result_msg(t)->refs[0]);
    isle_task_release(t);                                  /* the slot goes: its result too */
    CHECK_EQ(isle_task_live_count(), live0 + 1);           /* only a, held twice by its readers */
    CHECK_EQ(isle_task_state(a), ISLE_TASK_QUEUED);
    isle_task_release(a);
    isle_task_release(a);
    CHECK_EQ(isle_task_live_count(), live0);

    /* References with no bytes: a result all the same, with no bytes to read. */
    t = isle_task_new();
    a = isle_task_new();
    CHECK_EQ(isle_task_complete_refs(t, ISLE_TASK_DONE, NULL, 0, &a, 1), 1);
    r = isle_task_result_msg(t);
    CHECK(r != NULL && r->len == 0 && r->nrefs == 1);
    CHECK(isle_task_result(t, &len) == NULL && len == 0);
    isle_task_release(a);
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0);

    /* Too many references: the task still ends, FAILED with no result,
     * holding none of them. */
    t = isle_task_new();
    a = isle_task_new();
    isle_task **many = malloc((ISLE_MSG_REFS_MAX + 1) * sizeof *many);
    for (size_t i = 0; i <= ISLE_MSG_REFS_MAX; i++) many[i] = a;
    CHECK_EQ(isle_task_complete_refs(t, ISLE_TASK_DONE, "V", 1, many, ISLE_MSG_REFS_MAX + 1), 1);
    free(many);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_FAILED);
    CHECK(isle_task_result_msg(t) == NULL);
    isle_task_release(a);
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0);
}

static void test_final_state_has_its_result(void)
{
    int n = SCALE(RESULT_RACE_N);
    for (int i = 0; i < n; i++) CHECK((race_tasks[i] = isle_task_new()) != NULL);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, race_completer, &n), 0);
    atomic_store(&race_go, 1);
    int missing = 0;
    for (int i = 0; i < n; i++) {
        while (isle_task_state(race_tasks[i]) < ISLE_TASK_DONE) {}
        size_t len = 0;
        const char *r = isle_task_result(race_tasks[i], &len);
        if (r == NULL || len != 2) missing++;
    }
    pthread_join(th, NULL);
    CHECK_EQ(missing, 0);
    for (int i = 0; i < n; i++) isle_task_release(race_tasks[i]);
}

/* A small result without references is kept in the slot itself (task.c):
 * read back whole and NUL-terminated on both sides of the size limit, made
 * without an allocation (with every allocation failing it still ends DONE;
 * a result in a message of its own ends FAILED then), and when two
 * completions race, the result is the winner's alone. */
typedef struct {
    isle_task *t;
    char data[ISLE_TASK_SMALL];
    size_t len;
    atomic_int *go;
    int won;
} racer;

static void *race_complete(void *arg)
{
    racer *r = arg;
    while (!atomic_load(r->go)) isle_cpu_relax();
    r->won = isle_task_complete(r->t, ISLE_TASK_DONE, r->data, r->len);
    return NULL;
}

static void test_small_result_in_slot(void)
{
    char src[ISLE_TASK_SMALL + 2];
    for (size_t len = 1; len <= sizeof src; len++) {
        for (size_t i = 0; i < len; i++) src[i] = (char)('a' + (i + len) % 26);
        isle_task *t = isle_task_new();
        CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, src, len), 1);
        const isle_msg *m = isle_task_result_msg(t);
        CHECK(m != NULL);
        CHECK_EQ(m->len, len);
        CHECK_EQ(m->nrefs, 0);
        CHECK(memcmp(m->data, src, len) == 0);
        CHECK_EQ(m->data[len], '\0');
        isle_task_release(t);
    }

    /* Every allocation failing: a small result needs none. */
    isle_task *t = isle_task_new();
    failalloc_arm(1, FAILALLOC_PERSIST);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "small", 5), 1);
    CHECK_EQ(failalloc_disarm(), 0);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    size_t len = 0;
    const char *r = isle_task_result(t, &len);
    CHECK(len == 5 && memcmp(r, "small", 5) == 0);
    isle_task_release(t);
    /* One byte too long for the slot: a message, which cannot be made. */
    memset(src, 'x', ISLE_TASK_SMALL);
    t = isle_task_new();
    failalloc_arm(1, FAILALLOC_PERSIST);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, src, ISLE_TASK_SMALL), 1);
    CHECK(failalloc_disarm() >= 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_FAILED);
    CHECK(isle_task_result(t, &len) == NULL && len == 0);
    isle_task_release(t);

    /* Two completions at once: the winner's bytes, whole. */
    for (int round = 0; round < SCALE(2000); round++) {
        atomic_int go = 0;
        t = isle_task_new();
        racer a = {.t = t, .len = 30, .go = &go}, b = {.t = t, .len = 20, .go = &go};
        memset(a.data, 'a', a.len);
        memset(b.data, 'b', b.len);
        pthread_t ta = check_spawn(race_complete, &a), tb = check_spawn(race_complete, &b);
        atomic_store(&go, 1);
        check_join(ta);
        check_join(tb);
        CHECK_EQ(a.won + b.won, 1);
        racer *w = a.won ? &a : &b;
        r = isle_task_result(t, &len);
        CHECK(len == w->len && memcmp(r, w->data, len) == 0);
        isle_task_release(t);
    }
}

int main(void)
{
    RUN(test_fail_running);
    RUN(test_fresh);
    RUN(test_complete_once);
    RUN(test_wait_timeout);
    RUN(test_long_wait_does_not_spin);
    RUN(test_many_waiters);
    RUN(test_cancel_queued);
    RUN(test_cancel_running);
    RUN(test_subscribe);
    RUN(test_refs);
    RUN(test_unwatch);
    RUN(test_final_state_has_its_result);
    RUN(test_result_carries_refs);
    RUN(test_small_result_in_slot);
    return check_done();
}
