/* test_pool.c - pools' shared core: names and lookups, the queue, close,
 * lifetime through a message's refs, stats summed over member signal
 * blocks from when they joined, and allocation failures. */
#include "check.h"
#include "internal.h"
#include "alloc_sweep.h"

#include <string.h>

static void test_new_and_lookup(void)
{
    int live = isle_task_live_count();
    int err = -1;
    CHECK(isle_pool_new(0, NULL, &err) == NULL);
    CHECK_EQ(err, ISLE_EINVAL);
    isle_pool *a = isle_pool_new(4, "tp-a", &err);
    CHECK(a != NULL);
    CHECK_EQ(err, ISLE_OK);
    CHECK(strcmp(isle_pool_name(a), "tp-a") == 0);
    CHECK_EQ(isle_chan_cap(isle_pool_queue(a)), 4);
    CHECK(isle_pool_new(4, "tp-a", &err) == NULL); /* the name is taken */
    CHECK_EQ(err, ISLE_EINVAL);
    isle_pool *b = isle_pool_new(2, NULL, &err);
    CHECK(b != NULL);
    CHECK(strcmp(isle_pool_name(b), "") == 0);
    CHECK(isle_pool_id(b) > isle_pool_id(a));
    isle_pool *f = isle_pool_lookup(0, "tp-a");
    CHECK(f == a);
    isle_pool_release(f);
    f = isle_pool_lookup(isle_pool_id(b), NULL);
    CHECK(f == b);
    isle_pool_release(f);
    CHECK(isle_pool_lookup(0, "nope") == NULL);
    /* Closed: unlisted, its name free again, submits refused. */
    CHECK_EQ(isle_pool_is_closed(a), 0);
    isle_pool_close(a);
    isle_pool_close(a); /* idempotent */
    CHECK_EQ(isle_pool_is_closed(a), 1);
    CHECK(isle_pool_lookup(0, "tp-a") == NULL);
    CHECK(isle_pool_lookup(isle_pool_id(a), NULL) == NULL);
    isle_msg *m = isle_msg_new(0, NULL, "x", 1);
    CHECK_EQ(isle_chan_push(isle_pool_queue(a), m, NULL), ISLE_ECLOSED);
    isle_msg_free(m);
    isle_pool *a2 = isle_pool_new(4, "tp-a", &err);
    CHECK(a2 != NULL);
    isle_pool_disown(a2);
    isle_pool_release(a);
    isle_pool_disown(b);
    isle_pool_disown(NULL);
    isle_pool_release(NULL);
    CHECK_EQ(isle_task_live_count(), live);
}

/* A message carrying the pool keeps it alive after the owner let go; the
 * reader gets the same pool back. Queued messages are freed with it. */
static void test_travels_in_refs(void)
{
    int live = isle_task_live_count();
    int err;
    isle_pool *p = isle_pool_new(4, NULL, &err);
    isle_task *t = isle_task_new(); /* a queued call's slot */
    CHECK_EQ(isle_chan_push(isle_pool_queue(p), isle_msg_new(2, t, "call", 4), NULL), ISLE_OK);
    isle_task *ref = isle_pool_ref(p);
    isle_msg *carrier = isle_msg_new_refs(0, NULL, "", 0, &ref, 1);
    CHECK(carrier != NULL);
    isle_pool_disown(p);
    isle_pool *q = isle_pool_of_ref(carrier->refs[0]);
    CHECK(q == p);
    CHECK(isle_pool_of_ref(t) == NULL); /* a slot that is not a pool's */
    isle_msg_free(carrier);
    CHECK_EQ(isle_chan_len(isle_pool_queue(q)), 1);
    isle_pool_release(q);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED); /* freed, not completed: its caller still holds it */
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live);
}

/* Stats: the members' counters since they joined, plus the queue. */
static void test_stats(void)
{
    int err;
    isle_pool *p = isle_pool_new(8, NULL, &err);
    isle_sig *s1 = isle_sig_new(), *s2 = isle_sig_new();
    isle_task *before = isle_task_new(); /* ends on s1 before it joins: not the pool's */
    CHECK(isle_task_start(before, s1, "init"));
    isle_task_complete(before, ISLE_TASK_DONE, NULL, 0);
    CHECK_EQ(isle_pool_add(p, s1), ISLE_OK);
    CHECK_EQ(isle_pool_add(p, s2), ISLE_OK);
    CHECK_EQ(isle_pool_size(p), 2);
    isle_task *t[4];
    for (int k = 0; k < 4; k++) t[k] = isle_task_new();
    CHECK(isle_task_start(t[0], s1, "call a"));
    CHECK(isle_task_start(t[1], s2, "call b"));
    CHECK(isle_task_start(t[2], s2, "call c"));
    isle_task_complete(t[1], ISLE_TASK_DONE, NULL, 0);
    isle_task_complete(t[2], ISLE_TASK_FAILED, NULL, 0);
    isle_task_cancel(t[3]);                 /* cancelled while queued... */
    CHECK_EQ(isle_task_start(t[3], s1, NULL), 0); /* ...and counted when taken */
    CHECK_EQ(isle_chan_push(isle_pool_queue(p), isle_msg_new(0, NULL, "q", 1), NULL), ISLE_OK);
    isle_stats st;
    isle_pool_stats(p, &st);
    CHECK_EQ(st.queued, 1);
    CHECK_EQ(st.running, 1);
    CHECK_EQ(st.done, 1);
    CHECK_EQ(st.failed, 1);
    CHECK_EQ(st.cancelled, 1);
    CHECK(st.oldest_start > 0);
    CHECK(strcmp(st.oldest_label, "call a") == 0);
    isle_task_complete(t[0], ISLE_TASK_DONE, NULL, 0);
    isle_pool_stats(p, &st);
    CHECK_EQ(st.running, 0);
    CHECK_EQ(st.done, 2);
    CHECK(st.oldest_start == 0);
    for (int k = 0; k < 4; k++) isle_task_release(t[k]);
    isle_task_release(before);
    isle_pool_disown(p); /* frees the queued message, lets go of the blocks */
    isle_sig_release(s1);
    isle_sig_release(s2);
}

/* Out of memory: a pool is made whole or not at all; an add that fails
 * leaves the pool as it was. */
static isle_pool *sweep_p;

static int new_run(void *ctx)
{
    (void)ctx;
    int err;
    sweep_p = isle_pool_new(4, "tp-sweep", &err);
    CHECK(sweep_p != NULL || err == ISLE_ENOMEM);
    return sweep_p != NULL;
}

static long new_check(void *ctx, int ok)
{
    (void)ctx;
    (void)ok;
    if (!sweep_p) CHECK(isle_pool_lookup(0, "tp-sweep") == NULL);
    isle_pool_disown(sweep_p);
    sweep_p = NULL;
    return 0;
}

static isle_sig *sweep_sig;

static void add_setup(void *ctx)
{
    (void)ctx;
    int err;
    sweep_p = isle_pool_new(4, NULL, &err);
    sweep_sig = isle_sig_new();
}

static int add_run(void *ctx)
{
    (void)ctx;
    return isle_pool_add(sweep_p, sweep_sig) == ISLE_OK;
}

static long add_check(void *ctx, int ok)
{
    (void)ctx;
    CHECK_EQ(isle_pool_size(sweep_p), ok ? 1 : 0);
    isle_pool_disown(sweep_p);
    isle_sig_release(sweep_sig);
    return 0;
}

static void test_out_of_memory(void)
{
    alloc_op make = {"isle_pool_new", NULL, new_run, new_check};
    CHECK_EQ(alloc_sweep_both(&make, NULL, 0), 6);
    alloc_op add = {"isle_pool_add", add_setup, add_run, add_check};
    CHECK_EQ(alloc_sweep_both(&add, NULL, 0), 1);
}

int main(void)
{
    RUN(test_new_and_lookup);
    RUN(test_travels_in_refs);
    RUN(test_stats);
    RUN(test_out_of_memory);
    return 0;
}
