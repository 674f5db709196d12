/* test_watchdog.c - cancel reasons, watches (a signal raised when a task
 * ends) and per-task deadlines enforced by the watchdog thread. */
#include "check.h"
#include "internal.h"

#include <string.h>

static int32_t flag_of(isle_sig *s) { return __atomic_load_n(&s->flag, __ATOMIC_ACQUIRE); }

static int threads_now(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    CHECK(f != NULL);
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0) n = atoi(line + 8);
    fclose(f);
    return n;
}

static void test_cancel_reason(void)
{
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_cancel_reason(t, ISLE_CANCEL_NONE), -1);   /* not a reason */
    CHECK_EQ(isle_task_cancel_reason(t, 7), -1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_NONE);
    CHECK_EQ(isle_task_cancel_reason(t, ISLE_CANCEL_TIMEOUT), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CANCELLED);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_TIMEOUT);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_CANCELLED);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_TIMEOUT);
    isle_task_release(t);

    /* Running: the first reason sticks, each cancel raises the flag. */
    isle_sig *s = isle_sig_new();
    t = isle_task_new();
    CHECK_EQ(isle_task_start(t, s, NULL), 1);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_USER);
    isle_sig_lower(s);
    CHECK_EQ(isle_task_cancel_reason(t, ISLE_CANCEL_TIMEOUT), ISLE_TASK_RUNNING);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_USER);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_CANCELLED, NULL, 0), 1);
    isle_task_release(t);
    isle_sig_release(s);
}

static void test_watch(void)
{
    isle_mbox *mb = isle_mbox_new(2, 0);
    isle_sig *s = isle_sig_new();
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_watch(t, mb, s), 1);
    isle_sig_release(s);               /* the watch keeps the block until it fires */
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(done && done->task == t && done->next == NULL);
    isle_done_free_list(done);
    isle_task_release(t);

    /* The flag is raised when it fires; no block is just a subscription. */
    s = isle_sig_new();
    t = isle_task_new();
    CHECK_EQ(isle_task_watch(t, mb, s), 1);
    CHECK_EQ(isle_task_watch(t, mb, NULL), 1);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_QUEUED);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    int n = 0;
    for (isle_done *d = done; d; d = d->next, n++) CHECK(d->task == t);
    CHECK_EQ(n, 2);
    isle_done_free_list(done);
    /* After the end nothing is retained or raised. */
    isle_sig_lower(s);
    CHECK_EQ(isle_task_watch(t, mb, s), 0);
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_task_release(t);
    isle_sig_release(s);
    isle_mbox_release(mb);
}

static void *noop(void *arg) { return arg; }

/* Scattered deadlines between -10 ms and +90 ms from the start. */
static double offset(int i, int n) { return -0.01 + 0.1 * ((i * 37) % n) / n; }

static void test_expire(void)
{
    /* A first thread makes ThreadSanitizer start its own helper thread, so
     * that the count below is the watchdog's alone. */
    check_join(check_spawn(noop, NULL));
    int base = threads_now();
    isle_sig *s = isle_sig_new();
    isle_mbox *mb = isle_mbox_new(2, 0);
    isle_sig_attach_mbox(s, mb);

    /* A running task past its deadline is cancelled with TIMEOUT. */
    isle_task *run = isle_task_new();
    CHECK_EQ(isle_task_start(run, s, NULL), 1);
    /* A queued one ends CANCELLED at its deadline. */
    isle_task *queued = isle_task_new();
    /* One that ended in time is left alone. */
    isle_task *quick = isle_task_new();
    CHECK_EQ(isle_task_complete(quick, ISLE_TASK_DONE, "ok", 2), 1);
    double t0 = isle_now();
    CHECK_EQ(isle_task_expire_at(quick, t0 + 0.05), ISLE_OK);
    CHECK_EQ(isle_task_expire_at(queued, t0 + 0.15), ISLE_OK);
    CHECK_EQ(isle_task_expire_at(run, t0 + 0.1), ISLE_OK);
    CHECK_EQ(threads_now(), base + 1);      /* the watchdog started */

    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 30, &msgs, &done), ISLE_OK);   /* woken by the cancel */
    CHECK(isle_now() - t0 >= 0.099);
    CHECK_EQ(isle_task_cancelled(run), ISLE_CANCEL_TIMEOUT);
    CHECK_EQ(isle_task_state(run), ISLE_TASK_RUNNING);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_task_wait(queued, 30), 1);
    CHECK(isle_now() - t0 >= 0.149);
    CHECK_EQ(isle_task_state(queued), ISLE_TASK_CANCELLED);
    CHECK_EQ(isle_task_cancelled(queued), ISLE_CANCEL_TIMEOUT);
    CHECK_EQ(isle_task_complete(run, ISLE_TASK_CANCELLED, NULL, 0), 1);
    CHECK_EQ(isle_task_state(quick), ISLE_TASK_DONE);
    CHECK_EQ(isle_task_cancelled(quick), ISLE_CANCEL_NONE);
    isle_task_release(quick);

    /* A deadline already passed fires at once; deadlines fire in order. */
    enum { N = 200 };
    isle_task *ts[N];
    t0 = isle_now();
    for (int i = 0; i < N; i++) {
        ts[i] = isle_task_new();
        CHECK_EQ(isle_task_subscribe(ts[i], mb), 1);
        CHECK_EQ(isle_task_expire_at(ts[i], t0 + offset(i, N)), ISLE_OK);
    }
    double inserted = isle_now() - t0;   /* deadlines after this were all queued */
    int got = 0;
    double last = -1;
    int in_order = 1;
    while (got < N) {
        CHECK_EQ(isle_mbox_wait(mb, 30, &msgs, &done), ISLE_OK);
        for (isle_done *d = done; d; d = d->next, got++) {
            int i = 0;
            while (i < N && ts[i] != d->task) i++;
            CHECK(i < N);
            double dl = offset(i, N);
            if (dl > inserted + 0.001) {
                if (dl < last) in_order = 0;
                last = dl;
            }
            CHECK_EQ(isle_task_cancelled(d->task), ISLE_CANCEL_TIMEOUT);
        }
        isle_done_free_list(done);
    }
    CHECK(in_order);
    for (int i = 0; i < N; i++) isle_task_release(ts[i]);
    isle_task_release(run);
    isle_task_release(queued);

    /* With nothing left to watch the thread goes away (after ~0.5 s idle). */
    double wait_from = isle_now();
    while (threads_now() != base && isle_now() - wait_from < 20) check_sleep(0.05);
    CHECK_EQ(threads_now(), base);
    /* ... and comes back on the next use. */
    isle_task *again = isle_task_new();
    CHECK_EQ(isle_task_expire_at(again, isle_now()), ISLE_OK);
    CHECK_EQ(isle_task_wait(again, 30), 1);
    CHECK_EQ(isle_task_cancelled(again), ISLE_CANCEL_TIMEOUT);
    isle_task_release(again);
    wait_from = isle_now();
    while (threads_now() != base && isle_now() - wait_from < 20) check_sleep(0.05);
    CHECK_EQ(threads_now(), base);

    isle_sig_release(s);
    isle_mbox_release(mb);
}

/* A task that ends leaves the watchdog at once, with its reference (no
 * leak or use-after-free under ASan; no ended task kept until a deadline an
 * hour away), and the tasks left still expire in deadline order. */
static void test_ended_tasks_leave(void)
{
    enum { N = 1000 };
    CHECK_EQ(isle_watchdog_count(), 0);
    isle_task *ts[N];
    for (int i = 0; i < N; i++) {
        ts[i] = isle_task_new();
        CHECK_EQ(isle_task_expire_at(ts[i], isle_now() + 3600 + (i * 7919 % N)), ISLE_OK);
    }
    CHECK_EQ(isle_watchdog_count(), N);
    /* A second deadline for a watched task keeps one entry (the earlier). */
    CHECK_EQ(isle_task_expire_at(ts[0], isle_now() + 7200), ISLE_OK);
    CHECK_EQ(isle_watchdog_count(), N);
    for (int i = 0; i < N; i++) {
        if (i % 2) CHECK_EQ(isle_task_complete(ts[i], ISLE_TASK_DONE, "x", 1), 1);
        else CHECK_EQ(isle_task_cancel(ts[i]), ISLE_TASK_QUEUED);
        isle_task_release(ts[i]);
        CHECK_EQ(isle_watchdog_count(), (size_t)(N - 1 - i));
    }
    /* An ended task is not watched at all. */
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    CHECK_EQ(isle_task_expire_at(t, isle_now() + 3600), ISLE_OK);
    CHECK_EQ(isle_watchdog_count(), 0);
    isle_task_release(t);

    /* Removals from the middle keep the heap in order: of 150 deadlines,
     * every third task ends early; the others expire in deadline order. */
    enum { M = 150 };
    isle_mbox *mb = isle_mbox_new(1, 0);
    isle_task *ms[M];
    double t0 = isle_now(), dl[M];
    for (int i = 0; i < M; i++) {
        ms[i] = isle_task_new();
        dl[i] = 0.2 + 0.001 * (i * 37 % M);
        CHECK_EQ(isle_task_subscribe(ms[i], mb), 1);
        CHECK_EQ(isle_task_expire_at(ms[i], t0 + dl[i]), ISLE_OK);
    }
    for (int i = 0; i < M; i += 3) CHECK_EQ(isle_task_complete(ms[i], ISLE_TASK_DONE, NULL, 0), 1);
    int in_time = isle_now() - t0 < 0.2;   /* all still queued in the heap */
    int got = 0, in_order = 1;
    double last = -1;
    while (got < M) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, 30, &msgs, &done), ISLE_OK);
        for (isle_done *d = done; d; d = d->next, got++) {
            int i = 0;
            while (i < M && ms[i] != d->task) i++;
            CHECK(i < M);
            if (i % 3 == 0) {
                CHECK_EQ(isle_task_cancelled(d->task), ISLE_CANCEL_NONE);
                continue;
            }
            CHECK_EQ(isle_task_cancelled(d->task), ISLE_CANCEL_TIMEOUT);
            if (dl[i] < last) in_order = 0;
            last = dl[i];
        }
        isle_done_free_list(done);
    }
    if (in_time) CHECK(in_order);
    CHECK_EQ(isle_watchdog_count(), 0);
    for (int i = 0; i < M; i++) isle_task_release(ms[i]);
    isle_mbox_release(mb);
}

int main(void)
{
    RUN(test_cancel_reason);
    RUN(test_watch);
    RUN(test_expire);
    RUN(test_ended_tasks_leave);
    return check_done();
}
