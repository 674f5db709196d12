/* test_pingpong.c - strict ping-pong between two threads over two mailboxes,
 * replies going back three ways in turn: the task's own wait, a completion
 * notice on the caller's mailbox, and a plain reply message. Each hop is
 * a hand-off to a waiting thread, which exercises the spin-then-park path;
 * a shorter run with the spin budget at 0 exercises parking alone. Every
 * reply must match its request, batches must hold exactly one item. */
#include "check.h"
#include "isle.h"
#include "failalloc.h"

#include <string.h>

enum { PING = 1, PONG = 2, STOP = 3 };

static isle_mbox *mbox_client, *mbox_server;

static uint32_t u32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void *server(void *arg)
{
    isle_sig *sig = arg;
    long bad = 0, handled = 0;
    for (;;) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mbox_server, -1, &msgs, &done), ISLE_OK);
        CHECK(done == NULL);
        CHECK(msgs != NULL && msgs->next == NULL);    /* strictly one at a time */
        isle_msg *m = msgs;
        if (m->kind == STOP) { isle_msg_free_list(msgs); break; }
        bad += m->kind != PING || m->len != 4;
        uint32_t reply = u32(m->data) + 1;
        if (m->task) {
            bad += isle_task_start(m->task, sig, NULL) != 1;
            bad += isle_task_complete(m->task, ISLE_TASK_DONE, (const char *)&reply, 4) != 1;
        } else {
            isle_msg *r = isle_msg_new(PONG, NULL, (const char *)&reply, 4);
            bad += isle_mbox_push(mbox_client, r, -1) != ISLE_OK;
        }
        isle_msg_free_list(msgs);
        handled++;
    }
    CHECK_EQ(bad, 0);
    return (void *)handled;
}

static long run(int n)
{
    isle_sig *sig = isle_sig_new();
    pthread_t th = check_spawn(server, sig);
    long bad = 0;
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        isle_msg *msgs;
        isle_done *done;
        size_t len;
        const char *r;
        switch (i % 3) {
        case 0: { /* call, then wait on the task itself */
            isle_task *t = isle_task_new();
            CHECK_EQ(isle_mbox_push(mbox_server, isle_msg_new(PING, t, (const char *)&i, 4), -1), ISLE_OK);
            CHECK_EQ(isle_task_wait(t, -1), 1);
            r = isle_task_result(t, &len);
            bad += isle_task_state(t) != ISLE_TASK_DONE || len != 4 || u32(r) != i + 1;
            isle_task_release(t);
            break;
        }
        case 1: { /* call, then learn of the end through the own mailbox */
            isle_task *t = isle_task_new();
            CHECK_EQ(isle_task_subscribe(t, mbox_client), 1);
            CHECK_EQ(isle_mbox_push(mbox_server, isle_msg_new(PING, t, (const char *)&i, 4), -1), ISLE_OK);
            isle_task_release(t);   /* the message and the notice hold it */
            CHECK_EQ(isle_mbox_wait(mbox_client, -1, &msgs, &done), ISLE_OK);
            CHECK(msgs == NULL && done != NULL && done->next == NULL);
            r = isle_task_result(done->task, &len);
            bad += isle_task_state(done->task) != ISLE_TASK_DONE || len != 4 || u32(r) != i + 1;
            isle_done_free_list(done);
            break;
        }
        default: /* one-way message each way */
            CHECK_EQ(isle_mbox_push(mbox_server, isle_msg_new(PING, NULL, (const char *)&i, 4), -1), ISLE_OK);
            CHECK_EQ(isle_mbox_wait(mbox_client, -1, &msgs, &done), ISLE_OK);
            CHECK(done == NULL && msgs != NULL && msgs->next == NULL);
            bad += msgs->kind != PONG || msgs->len != 4 || u32(msgs->data) != i + 1;
            isle_msg_free_list(msgs);
            break;
        }
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(isle_mbox_push(mbox_server, isle_msg_new(STOP, NULL, NULL, 0), -1), ISLE_OK);
    void *handled;
    CHECK(pthread_join(th, &handled) == 0);
    CHECK_EQ((long)handled, n);
    CHECK_EQ(__atomic_load_n(&sig->flag, __ATOMIC_ACQUIRE), 0);  /* nobody cancelled */
    isle_sig_release(sig);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mbox_client, 0, &msgs, &done), ISLE_ETIMEOUT);
    CHECK_EQ(isle_mbox_wait(mbox_server, 0, &msgs, &done), ISLE_ETIMEOUT);
    return n;
}

static void test_spin_then_park(void)
{
    int n = SCALE(100000);
    mbox_client = isle_mbox_new(8, 0);
    mbox_server = isle_mbox_new(8, 0);
    double t0 = isle_now();
    run(n);
    double dt = isle_now() - t0;
    printf("    %d round trips, %.2f us each (spin budget %.0f us)\n",
           n, dt / n * 1e6, isle_get_spin() * 1e6);
    isle_mbox_release(mbox_client);
    isle_mbox_release(mbox_server);
}

static void test_park_only(void)
{
    double budget = isle_get_spin();
    isle_set_spin(0);
    int n = SCALE(10000);
    mbox_client = isle_mbox_new(8, 1);   /* with eventfds: their arming too */
    mbox_server = isle_mbox_new(8, 1);
    double t0 = isle_now();
    run(n);
    double dt = isle_now() - t0;
    printf("    %d round trips, %.2f us each (no spinning)\n", n, dt / n * 1e6);
    isle_mbox_release(mbox_client);
    isle_mbox_release(mbox_server);
    isle_set_spin(budget);
}

int main(void)
{
    isle_cache_pause(0); /* run with the block caches on, as the library does */
    RUN(test_spin_then_park);
    RUN(test_park_only);
    return check_done();
}
