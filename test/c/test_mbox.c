/* test_mbox.c - bounded mailboxes: order, capacity, blocking, close, wake,
 * batches, the eventfd and what freeing does to queued tasks. */
#include "check.h"
#include "internal.h"

#include <poll.h>
#include <string.h>

static isle_msg *mk(int kind)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "msg %d", kind);
    isle_msg *m = isle_msg_new(kind, NULL, buf, (size_t)n);
    CHECK(m != NULL);
    return m;
}

static int list_len(const isle_msg *m)
{
    int n = 0;
    for (; m; m = m->next) n++;
    return n;
}

static int done_len(const isle_done *d)
{
    int n = 0;
    for (; d; d = d->next) n++;
    return n;
}

static void test_new_free(void)
{
    CHECK(isle_mbox_new(0, 0) == NULL);   /* a mailbox needs room */
    isle_mbox_release(NULL);
    isle_mbox *mb = isle_mbox_new(1, 0);
    CHECK(mb != NULL);
    CHECK_EQ(isle_mbox_count(mb), 0);
    CHECK_EQ(isle_mbox_is_closed(mb), 0);
    CHECK_EQ(isle_mbox_fd(mb), -1);
    isle_mbox_release(mb);
}

static void test_fifo(void)
{
    isle_mbox *mb = isle_mbox_new(16, 0);
    for (int i = 0; i < 10; i++) CHECK_EQ(isle_mbox_push(mb, mk(i), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_count(mb), 10);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(done == NULL);
    CHECK_EQ(isle_mbox_count(mb), 0);
    int i = 0;
    for (isle_msg *m = msgs; m; m = m->next, i++) {
        char want[32];
        snprintf(want, sizeof want, "msg %d", i);
        CHECK_EQ(m->kind, i);
        CHECK(m->len == strlen(want) && memcmp(m->data, want, m->len) == 0);
    }
    CHECK_EQ(i, 10);
    isle_msg_free_list(msgs);

    /* Order holds across batches and interleaved pushes. */
    int next_push = 0, next_take = 0;
    for (int round = 0; round < 50; round++) {
        int n = round % 16;
        for (int k = 0; k < n; k++) CHECK_EQ(isle_mbox_push(mb, mk(next_push++), -1), ISLE_OK);
        int rc = isle_mbox_wait(mb, 0, &msgs, &done);
        CHECK_EQ(rc, n ? ISLE_OK : ISLE_ETIMEOUT);
        for (isle_msg *m = msgs; m; m = m->next) CHECK_EQ(m->kind, next_take++);
        isle_msg_free_list(msgs);
    }
    CHECK_EQ(next_take, next_push);
    isle_mbox_release(mb);
}

static void test_wait_timeout_empty(void)
{
    isle_mbox *mb = isle_mbox_new(4, 0);
    isle_msg *msgs = (isle_msg *)1;
    isle_done *done = (isle_done *)1;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    CHECK(msgs == NULL && done == NULL);
    double t0 = isle_now();
    CHECK_EQ(isle_mbox_wait(mb, 0.1, &msgs, &done), ISLE_ETIMEOUT);
    CHECK(isle_now() - t0 >= 0.095);
    CHECK(msgs == NULL && done == NULL);
    isle_mbox_release(mb);
}

static void test_capacity(void)
{
    isle_mbox *mb = isle_mbox_new(4, 0);
    for (int i = 0; i < 4; i++) CHECK_EQ(isle_mbox_push(mb, mk(i), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_count(mb), 4);
    /* Full: a non-blocking push is refused and the caller keeps the message. */
    isle_msg *extra = mk(99);
    CHECK_EQ(isle_mbox_push(mb, extra, 0), ISLE_EBUSY);
    CHECK_EQ(isle_mbox_count(mb), 4);
    /* A push with a timeout gives up after (at least) the timeout. */
    double t0 = isle_now();
    CHECK_EQ(isle_mbox_push(mb, extra, 0.1), ISLE_EBUSY);
    CHECK(isle_now() - t0 >= 0.095);
    CHECK_EQ(isle_mbox_count(mb), 4);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(list_len(msgs), 4);
    isle_msg_free_list(msgs);
    /* Room again: the same message goes in. */
    CHECK_EQ(isle_mbox_push(mb, extra, 0), ISLE_OK);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == extra && msgs->next == NULL && msgs->kind == 99);
    isle_msg_free_list(msgs);
    isle_mbox_release(mb);
}

/* A producer thread pushing one message and reporting the result. */
typedef struct {
    isle_mbox *mb;
    isle_msg *m;
    double timeout;
    atomic_int returned;
    int rc;
} pusher;

static void *push_thread(void *arg)
{
    pusher *p = arg;
    p->rc = isle_mbox_push(p->mb, p->m, p->timeout);
    atomic_store(&p->returned, 1);
    return NULL;
}

static void test_blocked_pusher_released(void)
{
    for (int variant = 0; variant < 2; variant++) {
        isle_mbox *mb = isle_mbox_new(2, 0);
        CHECK_EQ(isle_mbox_push(mb, mk(0), 0), ISLE_OK);
        CHECK_EQ(isle_mbox_push(mb, mk(1), 0), ISLE_OK);
        pusher p = {.mb = mb, .m = mk(2), .timeout = variant ? 30.0 : -1};
        pthread_t th = check_spawn(push_thread, &p);
        check_sleep(0.05);
        CHECK_EQ(atomic_load(&p.returned), 0);   /* still blocked */
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
        CHECK_EQ(list_len(msgs), 2);
        isle_msg_free_list(msgs);
        check_join(th);                          /* the take released it */
        CHECK_EQ(p.rc, ISLE_OK);
        CHECK_EQ(isle_mbox_count(mb), 1);
        CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
        CHECK(msgs && msgs->kind == 2 && msgs->next == NULL);
        isle_msg_free_list(msgs);
        isle_mbox_release(mb);
    }
}

/* A consumer thread doing one wait and reporting what it got. */
typedef struct {
    isle_mbox *mb;
    double timeout;
    atomic_int returned;
    int rc;
    isle_msg *msgs;
    isle_done *done;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    w->rc = isle_mbox_wait(w->mb, w->timeout, &w->msgs, &w->done);
    atomic_store(&w->returned, 1);
    return NULL;
}

static void test_close_wakes_consumer(void)
{
    for (int variant = 0; variant < 2; variant++) {
        isle_mbox *mb = isle_mbox_new(4, 0);
        waiter w = {.mb = mb, .timeout = variant ? 30.0 : -1};
        pthread_t th = check_spawn(wait_thread, &w);
        check_sleep(0.05);
        CHECK_EQ(atomic_load(&w.returned), 0);
        isle_mbox_close(mb);
        check_join(th);
        CHECK_EQ(w.rc, ISLE_OK);                 /* the close itself, once */
        CHECK(w.msgs == NULL && w.done == NULL);
        CHECK_EQ(isle_mbox_is_closed(mb), 1);
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ECLOSED);
        CHECK(msgs == NULL && done == NULL);
        double t0 = isle_now();
        CHECK_EQ(isle_mbox_wait(mb, 0.05, &msgs, &done), ISLE_ECLOSED);
        CHECK(isle_now() - t0 >= 0.045);
        isle_mbox_release(mb);
    }
}

static void test_close_wakes_producer(void)
{
    for (int variant = 0; variant < 2; variant++) {
        isle_mbox *mb = isle_mbox_new(1, 0);
        CHECK_EQ(isle_mbox_push(mb, mk(0), 0), ISLE_OK);
        pusher p = {.mb = mb, .m = mk(1), .timeout = variant ? 30.0 : -1};
        pthread_t th = check_spawn(push_thread, &p);
        check_sleep(0.05);
        CHECK_EQ(atomic_load(&p.returned), 0);
        isle_mbox_close(mb);
        check_join(th);
        CHECK_EQ(p.rc, ISLE_ECLOSED);
        isle_msg_free(p.m);                      /* refused: still the caller's */
        CHECK_EQ(isle_mbox_count(mb), 1);
        isle_mbox_release(mb);                      /* frees the queued one */
    }
}

static void test_closed_state(void)
{
    isle_mbox *mb = isle_mbox_new(8, 0);
    CHECK_EQ(isle_mbox_push(mb, mk(0), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_push(mb, mk(1), 0), ISLE_OK);
    isle_mbox_close(mb);
    isle_mbox_close(mb);                         /* idempotent */
    CHECK_EQ(isle_mbox_is_closed(mb), 1);
    isle_msg *m = mk(2);
    CHECK_EQ(isle_mbox_push(mb, m, 0), ISLE_ECLOSED);
    CHECK_EQ(isle_mbox_push(mb, m, -1), ISLE_ECLOSED);
    CHECK_EQ(isle_mbox_push(mb, m, 0.5), ISLE_ECLOSED);
    isle_msg_free(m);
    /* What was queued before the close is still delivered. */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs && msgs->kind == 0 && msgs->next && msgs->next->kind == 1
          && msgs->next->next == NULL);
    isle_msg_free_list(msgs);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ECLOSED);
    CHECK(msgs == NULL && done == NULL);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ECLOSED);
    isle_mbox_release(mb);
}

/* Completes a task after a delay (for notices reaching a closed mailbox). */
typedef struct {
    isle_task *t;
    double delay;
} completer;

static void *complete_later(void *arg)
{
    completer *c = arg;
    check_sleep(c->delay);
    CHECK_EQ(isle_task_complete(c->t, ISLE_TASK_DONE, "late", 4), 1);
    return NULL;
}

static void test_closed_still_gets_notices(void)
{
    isle_mbox *mb = isle_mbox_new(1, 0);
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(t, mb), 1);
    isle_mbox_close(mb);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);   /* close wake */
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ECLOSED);
    completer c = {t, 0.05};
    pthread_t th = check_spawn(complete_later, &c);
    CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done != NULL && done->next == NULL && done->task == t);
    CHECK_EQ(isle_task_state(done->task), ISLE_TASK_DONE);
    isle_done_free_list(done);
    check_join(th);
    isle_task_release(t);
    isle_mbox_release(mb);
}

static void test_batch(void)
{
    isle_mbox *mb = isle_mbox_new(1000, 0);
    for (int i = 0; i < 1000; i++) CHECK_EQ(isle_mbox_push(mb, mk(i), 0), ISLE_OK);
    isle_msg *x = mk(1000);
    CHECK_EQ(isle_mbox_push(mb, x, 0), ISLE_EBUSY);
    isle_msg_free(x);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
    int i = 0, in_order = 1;
    for (isle_msg *m = msgs; m; m = m->next, i++)
        if (m->kind != i) in_order = 0;
    CHECK_EQ(i, 1000);                           /* all of them in one call */
    CHECK(in_order);
    CHECK_EQ(isle_mbox_count(mb), 0);
    isle_msg_free_list(msgs);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_mbox_release(mb);
}

static void test_batch_with_notices(void)
{
    /* Notices are not bounded by the capacity and come in the same batch. */
    isle_mbox *mb = isle_mbox_new(1, 0);
    CHECK_EQ(isle_mbox_push(mb, mk(0), 0), ISLE_OK);
    isle_task *t[3];
    for (int i = 0; i < 3; i++) {
        t[i] = isle_task_new();
        CHECK_EQ(isle_task_subscribe(t[i], mb), 1);
    }
    for (int i = 0; i < 3; i++) CHECK_EQ(isle_task_complete(t[i], ISLE_TASK_DONE, NULL, 0), 1);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(list_len(msgs), 1);
    CHECK_EQ(done_len(done), 3);
    int seen[3] = {0, 0, 0};
    for (isle_done *d = done; d; d = d->next)
        for (int i = 0; i < 3; i++)
            if (d->task == t[i]) seen[i]++;
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    isle_msg_free_list(msgs);
    isle_done_free_list(done);
    for (int i = 0; i < 3; i++) isle_task_release(t[i]);
    isle_mbox_release(mb);
}

static void test_wake(void)
{
    isle_mbox *mb = isle_mbox_new(4, 0);
    /* A parked wait returns ISLE_OK with nothing in it. */
    for (int variant = 0; variant < 2; variant++) {
        waiter w = {.mb = mb, .timeout = variant ? 30.0 : -1};
        pthread_t th = check_spawn(wait_thread, &w);
        check_sleep(0.05);
        CHECK_EQ(atomic_load(&w.returned), 0);
        isle_mbox_wake(mb);
        check_join(th);
        CHECK_EQ(w.rc, ISLE_OK);
        CHECK(w.msgs == NULL && w.done == NULL);
    }
    /* A wake with nobody waiting ends the next wait, once. */
    isle_msg *msgs;
    isle_done *done;
    isle_mbox_wake(mb);
    isle_mbox_wake(mb);
    CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done == NULL);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    /* A wake does not hide messages: they come along. */
    CHECK_EQ(isle_mbox_push(mb, mk(5), 0), ISLE_OK);
    isle_mbox_wake(mb);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs && msgs->kind == 5 && msgs->next == NULL);
    isle_msg_free_list(msgs);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_mbox_release(mb);
}

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    CHECK(n >= 0);
    return n == 1 && (p.revents & POLLIN);
}

static void test_eventfd(void)
{
    isle_mbox *mb = isle_mbox_new(8, 1);
    int fd = isle_mbox_fd(mb);
    CHECK(fd >= 0);
    CHECK_EQ(readable(fd), 0);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    CHECK_EQ(readable(fd), 0);

    CHECK_EQ(isle_mbox_push(mb, mk(0), 0), ISLE_OK);
    CHECK_EQ(readable(fd), 1);
    CHECK_EQ(isle_mbox_push(mb, mk(1), 0), ISLE_OK);
    CHECK_EQ(readable(fd), 1);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(list_len(msgs), 2);
    isle_msg_free_list(msgs);
    CHECK_EQ(readable(fd), 0);                   /* drained: quiet again */

    /* A notice arms it too. */
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(t, mb), 1);
    CHECK_EQ(readable(fd), 0);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    CHECK_EQ(readable(fd), 1);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL && done_len(done) == 1);
    isle_done_free_list(done);
    isle_task_release(t);
    CHECK_EQ(readable(fd), 0);

    /* So does a wake. */
    isle_mbox_wake(mb);
    CHECK_EQ(readable(fd), 1);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(readable(fd), 0);

    /* And the close. */
    isle_mbox_close(mb);
    CHECK_EQ(readable(fd), 1);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(readable(fd), 0);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ECLOSED);
    isle_mbox_release(mb);
    /* The descriptor was closed with the mailbox. */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLNVAL));
}

static void test_free_completes_queued_tasks(void)
{
    isle_mbox *mb = isle_mbox_new(8, 0);
    isle_mbox *sub = isle_mbox_new(8, 0);
    isle_task *t1 = isle_task_new(), *t2 = isle_task_new(), *t3 = isle_task_new();
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new(1, t1, "a", 1), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new(2, NULL, "b", 1), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new(3, t2, "c", 1), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new(4, t3, "d", 1), 0), ISLE_OK);
    CHECK_EQ(isle_task_subscribe(t1, sub), 1);
    CHECK_EQ(isle_task_subscribe(t2, sub), 1);
    CHECK_EQ(isle_task_complete(t3, ISLE_TASK_DONE, "done", 4), 1);
    isle_mbox_release(mb);
    CHECK_EQ(isle_task_state(t1), ISLE_TASK_CLOSED);
    CHECK_EQ(isle_task_state(t2), ISLE_TASK_CLOSED);
    CHECK_EQ(isle_task_state(t3), ISLE_TASK_DONE);  /* already ended: untouched */
    size_t len;
    const char *r = isle_task_result(t3, &len);
    CHECK(len == 4 && memcmp(r, "done", 4) == 0);
    CHECK_EQ(isle_task_wait(t1, 0), 1);
    CHECK_EQ(isle_task_complete(t1, ISLE_TASK_DONE, NULL, 0), 0);
    /* Exactly one notice per task. */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(sub, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs == NULL);
    int n1 = 0, n2 = 0, n = 0;
    for (isle_done *d = done; d; d = d->next, n++) {
        if (d->task == t1) n1++;
        if (d->task == t2) n2++;
    }
    CHECK(n == 2 && n1 == 1 && n2 == 1);
    isle_done_free_list(done);
    CHECK_EQ(isle_mbox_wait(sub, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_task_release(t1);
    isle_task_release(t2);
    isle_task_release(t3);
    isle_mbox_release(sub);
}

/* Messages still queued when the last reference to their mailbox goes are
 * freed unread: the slots they carry (tokens) are let go with them. */
static void test_free_releases_carried_refs(void)
{
    int live0 = isle_task_live_count();
    isle_mbox *mb = isle_mbox_new(8, 0);
    isle_task *tok = isle_task_new(), *t = isle_task_new();
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new_refs(1, t, "a", 1, &tok, 1), 0), ISLE_OK);
    CHECK_EQ(isle_mbox_push(mb, isle_msg_new_refs(2, NULL, "b", 1, &tok, 1), 0), ISLE_OK);
    /* Refused by a closed mailbox: the message is still the caller's. */
    isle_mbox_close(mb);
    isle_msg *m = isle_msg_new_refs(3, NULL, "c", 1, &tok, 1);
    CHECK_EQ(isle_mbox_push(mb, m, 0), ISLE_ECLOSED);
    isle_msg_free(m);
    isle_task_release(tok);
    CHECK_EQ(isle_task_live_count(), live0 + 2);
    isle_mbox_release(mb);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_CLOSED);
    CHECK_EQ(isle_task_live_count(), live0 + 1);        /* only t, the caller's */
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0);
}

static void test_free_with_pending_notices(void)
{
    /* Notices never taken are released with the mailbox (LeakSanitizer). */
    isle_mbox *mb = isle_mbox_new(2, 0);
    isle_task *t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(t, mb), 1);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "x", 1), 1);
    isle_task_release(t);     /* the notice still holds the task */
    isle_mbox_release(mb);

    /* A subscription keeps the mailbox alive after its owner let go. */
    mb = isle_mbox_new(2, 0);
    t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(t, mb), 1);
    isle_mbox_release(mb);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, NULL, 0), 1);
    isle_task_release(t);
}

/* A producer for test_parked_consumer_misses_nothing: `n` messages of its
 * own kind, each carrying its index, with a short pause now and then so
 * that the consumer empties the mailbox and parks in between. */
typedef struct {
    isle_mbox *mb;
    int kind, n;
} streamer;

static void *stream_thread(void *arg)
{
    streamer *s = arg;
    for (int i = 0; i < s->n; i++) {
        isle_msg *m = isle_msg_new(s->kind, NULL, (const char *)&i, sizeof i);
        CHECK(m != NULL);
        CHECK_EQ(isle_mbox_push(s->mb, m, -1), ISLE_OK);
        if (i % 97 == 0) check_sleep(0.0002);
    }
    return NULL;
}

/* Only the push that makes the mailbox non-empty signals a parked consumer
 * (mbox.c): the later ones must still reach it, after every take, with
 * several producers and a full mailbox in between. Without spinning, every
 * wait that finds nothing parks; a lost wake-up would hang the wait (and
 * the test's alarm would fail it). */
static void test_parked_consumer_misses_nothing(void)
{
    double spin = isle_get_spin();
    isle_set_spin(0);
    /* One waiter parked, then three pushes: it wakes, and the next park
     * after its take is woken by the next push. */
    isle_mbox *mb = isle_mbox_new(8, 0);
    for (int round = 0; round < 2; round++) {
        waiter w = {.mb = mb, .timeout = -1};
        pthread_t th = check_spawn(wait_thread, &w);
        check_sleep(0.02);
        for (int i = 0; i < 3; i++) CHECK_EQ(isle_mbox_push(mb, mk(i), 0), ISLE_OK);
        check_join(th);
        CHECK_EQ(w.rc, ISLE_OK);
        int got = list_len(w.msgs);
        CHECK(got >= 1 && got <= 3);
        isle_msg_free_list(w.msgs);
        if (got < 3) {
            isle_msg *rest;
            isle_done *done;
            CHECK_EQ(isle_mbox_wait(mb, -1, &rest, &done), ISLE_OK);
            CHECK_EQ(got + list_len(rest), 3);
            isle_msg_free_list(rest);
        }
    }
    isle_mbox_release(mb);

    enum { PRODUCERS = 3, EACH = 3000 };
    mb = isle_mbox_new(8, 0);
    streamer s[PRODUCERS];
    pthread_t th[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        s[p] = (streamer){.mb = mb, .kind = p, .n = EACH};
        th[p] = check_spawn(stream_thread, &s[p]);
    }
    int next[PRODUCERS] = {0};
    for (int total = 0; total < PRODUCERS * EACH;) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
        CHECK(msgs != NULL);
        for (isle_msg *m = msgs; m; m = m->next, total++) {
            int i;
            CHECK(m->kind >= 0 && m->kind < PRODUCERS);
            memcpy(&i, m->data, sizeof i);
            CHECK_EQ(i, next[m->kind]); /* each producer's order is kept */
            next[m->kind]++;
        }
        isle_msg_free_list(msgs);
    }
    for (int p = 0; p < PRODUCERS; p++) check_join(th[p]);
    CHECK_EQ(isle_mbox_count(mb), 0);
    isle_mbox_release(mb);
    isle_set_spin(spin);
}

/* Messages pass without the mailbox's lock (mbox.c): with the lock held by
 * another thread, pushes and a wait that finds only messages complete, in
 * order. A lock on either side would make them wait until the lock is let
 * go, after the test has looked. */
static atomic_int passed;

static void *pass_thread(void *arg)
{
    isle_mbox *mb = arg;
    for (int i = 0; i < 100; i++) CHECK_EQ(isle_mbox_push(mb, mk(i), 0), ISLE_OK);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    CHECK_EQ(list_len(msgs), 100);
    int i = 0;
    for (isle_msg *m = msgs; m; m = m->next) CHECK_EQ(m->kind, i++);
    isle_msg_free_list(msgs);
    CHECK(done == NULL);
    atomic_store(&passed, 1);
    return NULL;
}

static void test_messages_pass_without_the_lock(void)
{
    isle_mbox *mb = isle_mbox_new(128, 0);
    pthread_mutex_t *mu = isle_mbox_lock_of(mb);
    pthread_mutex_lock(mu);
    pthread_t th = check_spawn(pass_thread, mb);
    for (int i = 0; i < 1000 && !atomic_load(&passed); i++) check_sleep(0.01);
    int ok = atomic_load(&passed);
    pthread_mutex_unlock(mu);
    check_join(th);
    CHECK(ok);
    CHECK_EQ(isle_mbox_count(mb), 0);
    isle_mbox_release(mb);
}

int main(void)
{
    RUN(test_new_free);
    RUN(test_fifo);
    RUN(test_wait_timeout_empty);
    RUN(test_capacity);
    RUN(test_blocked_pusher_released);
    RUN(test_close_wakes_consumer);
    RUN(test_close_wakes_producer);
    RUN(test_closed_state);
    RUN(test_closed_still_gets_notices);
    RUN(test_batch);
    RUN(test_batch_with_notices);
    RUN(test_wake);
    RUN(test_eventfd);
    RUN(test_free_completes_queued_tasks);
    RUN(test_free_with_pending_notices);
    RUN(test_free_releases_carried_refs);
    RUN(test_parked_consumer_misses_nothing);
    RUN(test_messages_pass_without_the_lock);
    return check_done();
}
