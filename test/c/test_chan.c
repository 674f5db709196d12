/* test_chan.c - channels: order, capacity, wake-and-retry waits, close,
 * unwait, lifetime through a message's refs, and 4x4 threads exchanging
 * values with every one received exactly once. */
#include "check.h"
#include "internal.h"
#include "alloc_sweep.h"

#include <stdlib.h>
#include <string.h>

static isle_msg *num_msg(long v)
{
    return isle_msg_new(0, NULL, (const char *)&v, sizeof v);
}

static double num_out; /* where pops put an inline number */

static long msg_num(isle_msg *m)
{
    long v;
    memcpy(&v, m->data, sizeof v);
    return v;
}

static void test_bounds(void)
{
    CHECK(isle_chan_new(0) == NULL);
    CHECK(isle_chan_new((size_t)ISLE_CHAN_CAP_MAX + 1) == NULL);
    isle_chan_release(NULL);
}

static void test_fifo_and_capacity(void)
{
    int live = isle_task_live_count();
    isle_chan *ch = isle_chan_new(2);
    CHECK(ch != NULL);
    CHECK_EQ(isle_chan_cap(ch), 2);
    isle_msg *m = NULL;
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, NULL), ISLE_EBUSY);
    CHECK(m == NULL);
    CHECK_EQ(isle_chan_push(ch, num_msg(1), NULL), ISLE_OK);
    CHECK_EQ(isle_chan_push(ch, num_msg(2), NULL), ISLE_OK);
    isle_msg *third = num_msg(3);
    CHECK_EQ(isle_chan_push(ch, third, NULL), ISLE_EBUSY); /* full; still ours */
    CHECK_EQ(isle_chan_len(ch), 2);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, NULL), ISLE_OK);
    CHECK_EQ(msg_num(m), 1);
    isle_msg_free(m);
    CHECK_EQ(isle_chan_push(ch, third, NULL), ISLE_OK);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, NULL), ISLE_OK);
    CHECK_EQ(msg_num(m), 2);
    isle_msg_free(m);
    CHECK_EQ(isle_chan_len(ch), 1);
    isle_chan_release(ch); /* frees the queued one */
    CHECK_EQ(isle_task_live_count(), live);
}

static void test_inline_numbers(void)
{
    int live = isle_task_live_count();
    isle_chan *ch = isle_chan_new(3);
    CHECK_EQ(isle_chan_push_num(ch, 1.5, NULL), ISLE_OK);
    CHECK_EQ(isle_chan_push(ch, num_msg(2), NULL), ISLE_OK);
    CHECK_EQ(isle_chan_push_num(ch, -0.0, NULL), ISLE_OK);
    isle_task *w = NULL;
    CHECK_EQ(isle_chan_push_num(ch, 4, &w), ISLE_EBUSY); /* full */
    isle_msg *m = NULL;
    double num = 0;
    CHECK_EQ(isle_chan_pop(ch, &m, &num, NULL), ISLE_OK);
    CHECK(m == NULL && num == 1.5);
    CHECK_EQ(isle_task_state(w), ISLE_TASK_DONE); /* room: the pusher is woken */
    isle_task_release(w);
    CHECK_EQ(isle_chan_pop(ch, &m, &num, NULL), ISLE_OK);
    CHECK(m != NULL && msg_num(m) == 2);
    isle_msg_free(m);
    CHECK_EQ(isle_chan_push_num(ch, 5, NULL), ISLE_OK);
    isle_chan_close(ch);
    CHECK_EQ(isle_chan_push_num(ch, 6, NULL), ISLE_ECLOSED);
    isle_chan_release(ch); /* frees a mix of inline and message slots */
    CHECK_EQ(isle_task_live_count(), live);
}

static void test_waiters_and_close(void)
{
    isle_chan *ch = isle_chan_new(1);
    isle_msg *m = NULL;
    isle_task *w1 = NULL, *w2 = NULL;
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, &w1), ISLE_EBUSY);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, &w2), ISLE_EBUSY);
    CHECK(w1 && w2 && w1 != w2);
    /* One push wakes the oldest waiter only. */
    CHECK_EQ(isle_chan_push(ch, num_msg(7), NULL), ISLE_OK);
    CHECK_EQ(isle_task_state(w1), ISLE_TASK_DONE);
    CHECK_EQ(isle_task_state(w2), ISLE_TASK_QUEUED);
    /* A full push waits too. */
    isle_task *pw = NULL;
    isle_msg *extra = num_msg(8);
    CHECK_EQ(isle_chan_push(ch, extra, &pw), ISLE_EBUSY);
    CHECK_EQ(isle_task_state(pw), ISLE_TASK_QUEUED);
    /* w1 gives up after its wake: the wake passes to w2. */
    CHECK_EQ(isle_chan_unwait(ch, w1), 0);
    CHECK_EQ(isle_task_state(w2), ISLE_TASK_DONE);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, NULL), ISLE_OK); /* makes room: wakes the pusher */
    CHECK_EQ(msg_num(m), 7);
    isle_msg_free(m);
    CHECK_EQ(isle_task_state(pw), ISLE_TASK_DONE);
    isle_task_release(w1);
    isle_task_release(w2);
    isle_task_release(pw);
    /* A waiter that gives up before any wake is taken back and cancelled. */
    isle_task *w3 = NULL;
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, &w3), ISLE_EBUSY);
    CHECK_EQ(isle_chan_unwait(ch, w3), 1);
    CHECK_EQ(isle_task_state(w3), ISLE_TASK_CANCELLED);
    isle_task_release(w3);
    /* Close wakes every waiter; queued values stay poppable. */
    CHECK_EQ(isle_chan_push(ch, extra, NULL), ISLE_OK);
    isle_task *w4 = NULL;
    isle_msg *nine = num_msg(9);
    CHECK_EQ(isle_chan_push(ch, nine, &w4), ISLE_EBUSY); /* full: still ours */
    isle_msg_free(nine);
    isle_chan_close(ch);
    CHECK(isle_chan_is_closed(ch));
    CHECK_EQ(isle_task_state(w4), ISLE_TASK_DONE);
    isle_task_release(w4);
    isle_msg *late = num_msg(10);
    CHECK_EQ(isle_chan_push(ch, late, NULL), ISLE_ECLOSED);
    isle_msg_free(late);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, NULL), ISLE_OK);
    CHECK_EQ(msg_num(m), 8);
    isle_msg_free(m);
    CHECK_EQ(isle_chan_pop(ch, &m, &num_out, &w4), ISLE_ECLOSED);
    isle_chan_release(ch);
}

static void test_travels_in_refs(void)
{
    int live = isle_task_live_count();
    isle_chan *ch = isle_chan_new(4);
    isle_task *ref = isle_chan_ref(ch);
    isle_msg *carrier = isle_msg_new_refs(0, NULL, "x", 1, &ref, 1);
    isle_chan_release(ch); /* the carrier keeps it */
    isle_chan *back = isle_chan_of_ref(carrier->refs[0]);
    CHECK(back == ch);
    CHECK_EQ(isle_chan_push(back, num_msg(1), NULL), ISLE_OK);
    isle_msg_free(carrier);
    CHECK_EQ(isle_chan_len(back), 1);
    isle_task *plain = isle_task_new();
    CHECK(isle_chan_of_ref(plain) == NULL); /* a token is no channel */
    isle_task_release(plain);
    /* A channel queued inside another is freed with it. */
    isle_chan *outer = isle_chan_new(1);
    ref = isle_chan_ref(back);
    CHECK_EQ(isle_chan_push(outer, isle_msg_new_refs(0, NULL, "", 0, &ref, 1), NULL), ISLE_OK);
    isle_chan_release(back);
    isle_chan_release(outer);
    CHECK_EQ(isle_task_live_count(), live);
}

static void test_spin(void)
{
    isle_chan *ch = isle_chan_new(1);
    CHECK_EQ(isle_chan_spin(ch, 0), 0);  /* empty: the spin runs out */
    CHECK_EQ(isle_chan_spin(ch, 1), 1);  /* room now */
    CHECK_EQ(isle_chan_push(ch, num_msg(1), NULL), ISLE_OK);
    CHECK_EQ(isle_chan_spin(ch, 0), 1);
    CHECK_EQ(isle_chan_spin(ch, 1), 0);  /* full */
    double old = isle_get_spin();
    isle_set_spin(0);
    CHECK_EQ(isle_chan_spin(ch, 0), 0);  /* no budget: never spins */
    isle_set_spin(old);
    isle_chan_release(ch);
}

/* 4 producers, 4 consumers, blocking through the waiter slots. */
enum { NPROD = 4, NCONS = 4 };
static isle_chan *mpmc;
static long per_producer;
static long got_count[NCONS], got_sum[NCONS];

static void *producer(void *arg)
{
    long base = (long)(intptr_t)arg * per_producer;
    for (long i = 1; i <= per_producer; i++) {
        /* Every other value inline, the rest as messages. */
        isle_msg *m = (i & 1) ? num_msg(base + i) : NULL;
        for (;;) {
            isle_task *w = NULL;
            int rc = m ? isle_chan_push(mpmc, m, &w) : isle_chan_push_num(mpmc, (double)(base + i), &w);
            if (rc == ISLE_OK) break;
            if (rc != ISLE_EBUSY) abort();
            /* Sometimes give up early, to race unwait against wakes. */
            if (!isle_task_wait(w, (i & 7) ? -1 : 0.0001)) isle_chan_unwait(mpmc, w);
            isle_task_release(w);
        }
    }
    return NULL;
}

static void *consumer(void *arg)
{
    int k = (int)(intptr_t)arg;
    for (;;) {
        isle_msg *m = NULL;
        isle_task *w = NULL;
        double num = 0;
        int rc = isle_chan_pop(mpmc, &m, &num, &w);
        if (rc == ISLE_OK) {
            got_count[k]++;
            got_sum[k] += m ? msg_num(m) : (long)num;
            isle_msg_free(m);
        } else if (rc == ISLE_EBUSY) {
            if (!isle_task_wait(w, (got_count[k] & 3) ? -1 : 0.0001)) isle_chan_unwait(mpmc, w);
            isle_task_release(w);
        } else {
            CHECK_EQ(rc, ISLE_ECLOSED);
            return NULL;
        }
    }
}

static void test_four_by_four(void)
{
    int live = isle_task_live_count();
    per_producer = SCALE(40000);
    mpmc = isle_chan_new(8);
    pthread_t p[NPROD], c[NCONS];
    for (int i = 0; i < NCONS; i++) pthread_create(&c[i], NULL, consumer, (void *)(intptr_t)i);
    for (int i = 0; i < NPROD; i++) pthread_create(&p[i], NULL, producer, (void *)(intptr_t)i);
    for (int i = 0; i < NPROD; i++) pthread_join(p[i], NULL);
    isle_chan_close(mpmc);
    for (int i = 0; i < NCONS; i++) pthread_join(c[i], NULL);
    long n = 0, sum = 0, total = NPROD * per_producer;
    for (int i = 0; i < NCONS; i++) { n += got_count[i]; sum += got_sum[i]; }
    CHECK_EQ(n, total);
    CHECK_EQ(sum, total * (total + 1) / 2);
    isle_chan_release(mpmc);
    CHECK_EQ(isle_task_live_count(), live);
}

/* Out of memory: a channel is made whole or not at all; a wait that cannot
 * get its waiter says ENOMEM and leaves the channel as it was. */
static isle_chan *sweep_ch;
static isle_task *sweep_w;

static int new_run(void *ctx)
{
    (void)ctx;
    sweep_ch = isle_chan_new(4);
    return sweep_ch != NULL;
}

static long new_check(void *ctx, int ok)
{
    (void)ctx;
    (void)ok;
    isle_chan_release(sweep_ch);
    sweep_ch = NULL;
    return 0;
}

static void wait_setup(void *ctx)
{
    (void)ctx;
    sweep_ch = isle_chan_new(4);
    sweep_w = NULL;
}

static int wait_run(void *ctx)
{
    (void)ctx;
    isle_msg *m = NULL;
    int rc = isle_chan_pop(sweep_ch, &m, &num_out, &sweep_w);
    CHECK(rc == ISLE_EBUSY || rc == ISLE_ENOMEM);
    return rc == ISLE_EBUSY;
}

static long wait_check(void *ctx, int ok)
{
    (void)ctx;
    CHECK_EQ(sweep_w != NULL, ok);
    CHECK_EQ(isle_chan_push(sweep_ch, num_msg(5), NULL), ISLE_OK); /* wakes the waiter, if any */
    if (ok) CHECK_EQ(isle_task_state(sweep_w), ISLE_TASK_DONE);
    isle_task_release(sweep_w);
    isle_msg *m = NULL;
    CHECK_EQ(isle_chan_pop(sweep_ch, &m, &num_out, NULL), ISLE_OK);
    CHECK_EQ(msg_num(m), 5);
    isle_msg_free(m);
    isle_chan_release(sweep_ch);
    return 0;
}

static void test_out_of_memory(void)
{
    alloc_op make = {"isle_chan_new", NULL, new_run, new_check};
    CHECK_EQ(alloc_sweep_both(&make, NULL, 0), 3);
    alloc_op wait = {"isle_chan_pop with a waiter", wait_setup, wait_run, wait_check};
    CHECK_EQ(alloc_sweep_both(&wait, NULL, 0), 2);
}

int main(void)
{
    RUN(test_bounds);
    RUN(test_fifo_and_capacity);
    RUN(test_inline_numbers);
    RUN(test_waiters_and_close);
    RUN(test_travels_in_refs);
    RUN(test_spin);
    RUN(test_out_of_memory);
    RUN(test_four_by_four);
    return 0;
}
