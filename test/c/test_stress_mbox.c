/* test_stress_mbox.c - many producers, one consumer, one small mailbox:
 * every message arrives exactly once and in per-producer order, through
 * every push mode (blocking, non-blocking with retry, timed with retry),
 * batches never exceed the capacity, and a close racing the producers
 * loses nothing that was accepted. Clean under ThreadSanitizer. */
#include "check.h"
#include "isle.h"
#include "failalloc.h"

#include <sched.h>
#include <string.h>

enum { PRODUCERS = 4, CAPACITY = 64 };

typedef struct {
    isle_mbox *mb;
    int id;
    int count;          /* messages to push, or -1: until the mailbox closes */
    double timeout;     /* push timeout: -1, 0 (retry on EBUSY) or > 0 (retry) */
    int pushed;         /* accepted by the mailbox */
    int busy;           /* EBUSY answers seen */
} producer;

static isle_msg *mk(int id, uint32_t seq)
{
    isle_msg *m = isle_msg_new(id, NULL, (const char *)&seq, sizeof seq);
    CHECK(m != NULL);
    return m;
}

static uint32_t seq_of(const isle_msg *m)
{
    uint32_t seq;
    memcpy(&seq, m->data, sizeof seq);
    return seq;
}

static void *produce(void *arg)
{
    producer *p = arg;
    for (uint32_t seq = 0; p->count < 0 || (int)seq < p->count; seq++) {
        isle_msg *m = mk(p->id, seq);
        int rc;
        while ((rc = isle_mbox_push(p->mb, m, p->timeout)) == ISLE_EBUSY) {
            CHECK(p->timeout >= 0);
            p->busy++;
            if (p->timeout == 0) sched_yield();
        }
        if (rc == ISLE_ECLOSED) {
            CHECK(p->count < 0);
            isle_msg_free(m);
            break;
        }
        CHECK_EQ(rc, ISLE_OK);
        p->pushed++;
    }
    return NULL;
}

/* Takes what arrived, checks each producer's order, returns the number. */
static int take(isle_msg *msgs, uint32_t next[PRODUCERS], int *max_batch)
{
    int n = 0, bad = 0;
    for (isle_msg *m = msgs; m; m = m->next, n++) {
        if (m->kind < 0 || m->kind >= PRODUCERS || m->len != 4) { bad++; continue; }
        if (seq_of(m) != next[m->kind]) bad++;
        next[m->kind] = seq_of(m) + 1;
    }
    CHECK_EQ(bad, 0);
    if (n > *max_batch) *max_batch = n;
    isle_msg_free_list(msgs);
    return n;
}

static void test_all_delivered_in_order(void)
{
    int per = SCALE(50000);
    double modes[PRODUCERS] = {-1, -1, 0, 0.001};
    isle_mbox *mb = isle_mbox_new(CAPACITY, 0);
    producer p[PRODUCERS];
    pthread_t th[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        p[i] = (producer){.mb = mb, .id = i, .count = per, .timeout = modes[i]};
        th[i] = check_spawn(produce, &p[i]);
    }
    uint32_t next[PRODUCERS] = {0};
    int total = 0, batches = 0, max_batch = 0;
    while (total < PRODUCERS * per) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
        CHECK(done == NULL);
        total += take(msgs, next, &max_batch);
        batches++;
    }
    for (int i = 0; i < PRODUCERS; i++) check_join(th[i]);
    CHECK_EQ(total, PRODUCERS * per);
    for (int i = 0; i < PRODUCERS; i++) {
        CHECK_EQ(next[i], (uint32_t)per);
        CHECK_EQ(p[i].pushed, per);
    }
    CHECK(max_batch <= CAPACITY);                /* the bound held */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);  /* nothing extra */
    CHECK_EQ(isle_mbox_count(mb), 0);
    printf("    %d messages in %d batches (max %d); EBUSY retries %d, timed-out pushes %d\n",
           total, batches, max_batch, p[2].busy, p[3].busy);
    isle_mbox_release(mb);
}

static void test_close_race(void)
{
    /* Producers push until the close; whatever was accepted is delivered. */
    int rounds = SCALE(20);
    for (int r = 0; r < rounds; r++) {
        isle_mbox *mb = isle_mbox_new(CAPACITY, r % 2);
        producer p[PRODUCERS];
        pthread_t th[PRODUCERS];
        for (int i = 0; i < PRODUCERS; i++) {
            p[i] = (producer){.mb = mb, .id = i, .count = -1, .timeout = i % 2 ? -1 : 0.01};
            th[i] = check_spawn(produce, &p[i]);
        }
        uint32_t next[PRODUCERS] = {0};
        int total = 0, max_batch = 0, stop_at = 1000 + 997 * r;
        isle_msg *msgs;
        isle_done *done;
        while (total < stop_at) {
            CHECK_EQ(isle_mbox_wait(mb, -1, &msgs, &done), ISLE_OK);
            total += take(msgs, next, &max_batch);
        }
        isle_mbox_close(mb);
        int rc;
        while ((rc = isle_mbox_wait(mb, 0, &msgs, &done)) == ISLE_OK)
            total += take(msgs, next, &max_batch);
        CHECK_EQ(rc, ISLE_ECLOSED);
        for (int i = 0; i < PRODUCERS; i++) check_join(th[i]);
        int pushed = 0;
        for (int i = 0; i < PRODUCERS; i++) {
            pushed += p[i].pushed;
            CHECK_EQ(next[i], (uint32_t)p[i].pushed);  /* none lost, none extra */
        }
        CHECK_EQ(total, pushed);
        CHECK(max_batch <= CAPACITY);
        isle_mbox_release(mb);
    }
}

static void test_timed_waits(void)
{
    /* A consumer whose short timed waits keep running out while producers
     * push: timeouts racing arrivals must not lose or repeat anything. */
    int per = SCALE(20000);
    isle_mbox *mb = isle_mbox_new(CAPACITY, 1);
    producer p[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        p[i] = (producer){.mb = mb, .id = i, .count = per, .timeout = -1};
        th[i] = check_spawn(produce, &p[i]);
    }
    uint32_t next[PRODUCERS] = {0};
    int total = 0, max_batch = 0, timeouts = 0;
    double waits[4] = {1e-5, 1e-4, 3e-4, 1e-3};
    for (int k = 0; total < 2 * per; k++) {
        isle_msg *msgs;
        isle_done *done;
        int rc = isle_mbox_wait(mb, waits[k % 4], &msgs, &done);
        if (rc == ISLE_ETIMEOUT) { CHECK(msgs == NULL); timeouts++; continue; }
        CHECK_EQ(rc, ISLE_OK);
        total += take(msgs, next, &max_batch);
    }
    for (int i = 0; i < 2; i++) check_join(th[i]);
    CHECK_EQ(total, 2 * per);
    CHECK_EQ(next[0], (uint32_t)per);
    CHECK_EQ(next[1], (uint32_t)per);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_mbox_release(mb);
}

int main(void)
{
    isle_cache_pause(0); /* run with the block caches on, as the library does */
    RUN(test_all_delivered_in_order);
    RUN(test_close_race);
    RUN(test_timed_waits);
    return check_done();
}
