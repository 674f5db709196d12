/* test_mem.c - memory accounts (mem.c): counting, the limit of each mode,
 * the collection request, C bytes charged by messages and task results, and
 * reads and charges from other threads (run under TSan by test-sanitize). */
#include "check.h"
#include "isle.h"

#include <string.h>

/* The allocator an account wraps here: the C library's, lua_Alloc style. */
static void *plain_alloc(void *ud, void *p, size_t osz, size_t nsz)
{
    (void)ud;
    (void)osz;
    if (nsz == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, nsz);
}

static void *alloc(isle_mem *a, void *p, size_t osz, size_t nsz)
{
    return isle_mem_alloc(a, p, osz, nsz);
}

static void test_counts_without_a_limit(void)
{
    isle_mem *a = isle_mem_new(0);
    CHECK(a != NULL);
    isle_mem_wrap(a, plain_alloc, NULL, 1000, NULL);
    CHECK_EQ(isle_mem_used(a), 1000);
    CHECK_EQ(isle_mem_limit(a), 0);
    isle_mem_enforce(a, ISLE_MEM_USER);
    void *p = alloc(a, NULL, 0, 1 << 20);
    CHECK(p != NULL);
    CHECK_EQ(isle_mem_used(a), 1000 + (1 << 20));
    p = alloc(a, p, 1 << 20, 100);
    CHECK(p != NULL);
    CHECK_EQ(isle_mem_used(a), 1100);
    CHECK(alloc(a, p, 100, 0) == NULL);
    CHECK_EQ(isle_mem_used(a), 1000);
    /* Nothing is charged without a limit. */
    CHECK_EQ(isle_mem_charge(a, 12345), 1);
    CHECK_EQ(isle_mem_used(a), 1000);
    isle_mem_uncharge(a, 12345);
    CHECK_EQ(isle_mem_used(a), 1000);
    CHECK_EQ(isle_mem_used(NULL), 0);
    CHECK_EQ(isle_mem_charge(NULL, 5), 1);
    isle_mem_unwrap(a);
    CHECK_EQ(isle_mem_used(a), 0);
    isle_mem_release(a);
    isle_mem_release(NULL);
}

static void test_limits_per_mode(void)
{
    const size_t limit = 4 << 20, reserve = limit / 16; /* 256 KiB */
    isle_mem *a = isle_mem_new(limit);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    CHECK_EQ(isle_mem_limit(a), limit);
    CHECK_EQ(isle_mem_enforce(a, ISLE_MEM_USER), ISLE_MEM_OFF); /* a new account: OFF */
    /* User mode: up to the limit less the reserve, not a byte more. */
    void *p = alloc(a, NULL, 0, limit - reserve);
    CHECK(p != NULL);
    CHECK(alloc(a, NULL, 0, 1) == NULL);
    CHECK_EQ(isle_mem_used(a), limit - reserve);
    /* Growing a block is refused too; shrinking never is. */
    CHECK(alloc(a, p, limit - reserve, limit - reserve + 1) == NULL);
    p = alloc(a, p, limit - reserve, limit - reserve - 4096);
    CHECK(p != NULL);
    CHECK_EQ(isle_mem_used(a), limit - reserve - 4096);
    /* Core mode: the reserve is there for isle's own bookkeeping. */
    CHECK_EQ(isle_mem_enforce(a, ISLE_MEM_CORE), ISLE_MEM_USER);
    void *q = alloc(a, NULL, 0, reserve + 4096);
    CHECK(q != NULL);
    CHECK_EQ(isle_mem_used(a), limit);
    CHECK(alloc(a, NULL, 0, 1) == NULL);
    /* Off: no limit (boot, teardown). */
    isle_mem_enforce(a, ISLE_MEM_OFF);
    void *r = alloc(a, NULL, 0, 1 << 20);
    CHECK(r != NULL);
    CHECK_EQ(isle_mem_used(a), limit + (1 << 20));
    isle_mem_enforce(a, 99); /* not a mode: ignored */
    CHECK_EQ(isle_mem_enforce(a, ISLE_MEM_USER), ISLE_MEM_OFF);
    /* Past the limit (an allocation made while OFF), growth fails at once. */
    CHECK(alloc(a, NULL, 0, 1) == NULL);
    alloc(a, r, 1 << 20, 0);
    alloc(a, q, reserve + 4096, 0);
    alloc(a, p, limit - reserve - 4096, 0);
    CHECK_EQ(isle_mem_used(a), 0);
    isle_mem_release(a);

    /* The reserve: a sixteenth, 64 KiB at least, 1 MiB at most. */
    a = isle_mem_new(300 << 10);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    isle_mem_enforce(a, ISLE_MEM_USER);
    p = alloc(a, NULL, 0, (300 << 10) - (64 << 10));
    CHECK(p != NULL);
    CHECK(alloc(a, NULL, 0, 1) == NULL);
    alloc(a, p, (300 << 10) - (64 << 10), 0);
    isle_mem_release(a);
    a = isle_mem_new((size_t)64 << 20);
    isle_mem_wrap(a, plain_alloc, NULL, ((size_t)63 << 20) - 1, NULL);
    isle_mem_enforce(a, ISLE_MEM_USER);
    CHECK(alloc(a, NULL, 0, 2) == NULL);
    p = alloc(a, NULL, 0, 1);
    CHECK(p != NULL);
    alloc(a, p, 1, 0);
    isle_mem_release(a);
}

static void test_minimum(void)
{
    /* The least limit that leaves 64 KiB under the user limit. */
    for (size_t used = 0; used < ((size_t)40 << 20); used = used * 3 + 1000) {
        size_t least = isle_mem_minimum(used);
        isle_mem *a = isle_mem_new(least);
        isle_mem_wrap(a, plain_alloc, NULL, used, NULL);
        isle_mem_enforce(a, ISLE_MEM_USER);
        void *p = alloc(a, NULL, 0, 64 << 10);
        CHECK(p != NULL);
        alloc(a, p, 64 << 10, 0);
        isle_mem_release(a);
        a = isle_mem_new(least - 1);
        isle_mem_wrap(a, plain_alloc, NULL, used, NULL);
        isle_mem_enforce(a, ISLE_MEM_USER);
        CHECK(alloc(a, NULL, 0, 64 << 10) == NULL);
        isle_mem_release(a);
    }
}

static void test_collection_request(void)
{
    const size_t limit = 16 << 20, user = limit - (1 << 20);
    isle_sig *s = isle_sig_new();
    isle_mem *a = isle_mem_new(limit);
    isle_mem_wrap(a, plain_alloc, NULL, 0, s);
    isle_mem_enforce(a, ISLE_MEM_USER);
    /* No mark before the state's first collection. */
    void *p = alloc(a, NULL, 0, user - 1);
    CHECK(p != NULL);
    CHECK_EQ(isle_mem_gc_wanted(a), 0);
    CHECK_EQ(s->flag, 0);
    alloc(a, p, user - 1, 0);
    /* After one, the mark is halfway to the user limit. */
    isle_mem_collected(a);
    p = alloc(a, NULL, 0, user / 2);
    CHECK(p != NULL);
    CHECK_EQ(isle_mem_gc_wanted(a), 0);
    void *q = alloc(a, NULL, 0, 1);
    CHECK(q != NULL);
    CHECK_EQ(isle_mem_gc_wanted(a), 1);
    CHECK_EQ(s->flag, 1);        /* the state's checkpoints see it */
    isle_sig_lower(s);
    void *r = alloc(a, NULL, 0, 1);
    CHECK_EQ(s->flag, 0);        /* asked once until collected */
    isle_mem_collected(a);
    CHECK_EQ(isle_mem_gc_wanted(a), 0);
    /* Close to the limit it stops asking: the limit decides. */
    void *big = alloc(a, NULL, 0, user - user / 2 - 2 - 4096);
    CHECK(big != NULL);
    isle_mem_collected(a);
    isle_sig_lower(s);
    void *last = alloc(a, NULL, 0, 4096);
    CHECK(last != NULL);
    CHECK_EQ(isle_mem_gc_wanted(a), 0);
    CHECK_EQ(s->flag, 0);
    alloc(a, last, 4096, 0);
    alloc(a, big, user - user / 2 - 2 - 4096, 0);
    alloc(a, r, 1, 0);
    alloc(a, q, 1, 0);
    alloc(a, p, user / 2, 0);
    isle_mem_unwrap(a);
    isle_mem_release(a);
    isle_sig_release(s);
}

static void test_message_charges(void)
{
    const size_t limit = 1 << 20, user = limit - (64 << 10);
    isle_mem *a = isle_mem_new(limit);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    char *payload = calloc(1, 300 << 10);
    isle_msg *m[4];
    size_t each = sizeof(isle_msg) + (300 << 10) + 1;
    for (int i = 0; i < 4; i++) {
        m[i] = isle_msg_new(0, NULL, payload, 300 << 10);
        CHECK(m[i] != NULL && m[i]->mem == NULL);
    }
    for (int i = 0; i < 3; i++) CHECK_EQ(isle_msg_charge(m[i], a), 1);
    CHECK_EQ(isle_mem_used(a), 3 * each);
    CHECK_EQ(isle_msg_charge(m[0], a), 1);  /* charged once only */
    CHECK_EQ(isle_mem_used(a), 3 * each);
    CHECK_EQ(isle_msg_charge(m[3], a), 0);  /* 4 x 300 KiB > the user limit */
    CHECK(m[3]->mem == NULL);
    CHECK_EQ(isle_mem_used(a), 3 * each);
    /* The heap and the charges share the limit. */
    isle_mem_enforce(a, ISLE_MEM_USER);
    CHECK(alloc(a, NULL, 0, user - 3 * each + 1) == NULL);
    void *p = alloc(a, NULL, 0, user - 3 * each);
    CHECK(p != NULL);
    alloc(a, p, user - 3 * each, 0);
    /* The account outlives its isle: the message holds a reference. */
    isle_mem_release(a);
    isle_msg_free(m[1]);
    CHECK_EQ(isle_mem_used(a), 2 * each);
    isle_msg_free(m[0]);
    isle_msg_free(m[3]);
    isle_msg_free(m[2]);  /* the last reference: the account goes (ASan) */
    free(payload);
}

/* A message that carries references is charged for them too: the whole
 * allocation. */
static void test_message_with_refs_charges(void)
{
    isle_mem *a = isle_mem_new(1 << 20);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    isle_task *refs[2] = { isle_task_new(), isle_task_new() };
    isle_msg *m = isle_msg_new_refs(0, NULL, "abc", 3, refs, 2);
    CHECK(m != NULL);
    CHECK_EQ(isle_msg_charge(m, a), 1);
    CHECK_EQ(isle_mem_used(a), sizeof(isle_msg) + 2 * sizeof(isle_task *) + 3 + 1);
    isle_msg_free(m);
    CHECK_EQ(isle_mem_used(a), 0);
    isle_task_release(refs[0]);
    isle_task_release(refs[1]);
    isle_mem_release(a);
}

static void test_result_charges(void)
{
    const size_t limit = 1 << 20;
    isle_mem *a = isle_mem_new(limit);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    char *big = calloc(1, 600 << 10);

    /* A result is a message: its whole allocation is charged. */
    const size_t each = sizeof(isle_msg) + (600 << 10) + 1;
    isle_task *t = isle_task_new();
    isle_task_charge_results(t, a);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, big, 600 << 10), 1);
    CHECK_EQ(isle_mem_used(a), each);
    size_t len = 0;
    CHECK(isle_task_result(t, &len) != NULL && len == (600 << 10));
    /* A second one does not fit: the task fails with no payload. */
    isle_task *u = isle_task_new();
    isle_task_charge_results(u, a);
    CHECK_EQ(isle_task_complete(u, ISLE_TASK_DONE, big, 600 << 10), 1);
    CHECK_EQ(isle_task_state(u), ISLE_TASK_FAILED);
    isle_task_result(u, &len);
    CHECK_EQ(len, 0);
    CHECK_EQ(isle_mem_used(a), each);
    /* One that carries references and does not fit lets go of them: the
     * token is freed with its creator's reference (the live count). */
    int live = isle_task_live_count();
    isle_task *tok = isle_task_new();
    isle_task *v = isle_task_new();
    isle_task_charge_results(v, a);
    CHECK_EQ(isle_task_complete_refs(v, ISLE_TASK_DONE, big, 600 << 10, &tok, 1), 1);
    CHECK_EQ(isle_task_state(v), ISLE_TASK_FAILED);
    CHECK(isle_task_result_msg(v) == NULL);
    CHECK_EQ(isle_mem_used(a), each);
    isle_task_release(tok);
    CHECK_EQ(isle_task_live_count(), live + 1);
    isle_task_release(v);
    /* One that fits is charged with its references. */
    tok = isle_task_new();
    v = isle_task_new();
    isle_task_charge_results(v, a);
    CHECK_EQ(isle_task_complete_refs(v, ISLE_TASK_DONE, "xy", 2, &tok, 1), 1);
    CHECK_EQ(isle_task_state(v), ISLE_TASK_DONE);
    CHECK_EQ(isle_mem_used(a), each + sizeof(isle_msg) + sizeof(isle_task *) + 2 + 1);
    isle_task_release(tok);
    isle_task_release(v);
    CHECK_EQ(isle_mem_used(a), each);
    /* A completion that loses is not charged. */
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "x", 1), 0);
    CHECK_EQ(isle_mem_used(a), each);
    isle_task_release(t);
    CHECK_EQ(isle_mem_used(a), 0);
    isle_task_release(u);
    /* Without an account nothing is charged. */
    t = isle_task_new();
    isle_task_charge_results(t, NULL);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, big, 600 << 10), 1);
    CHECK_EQ(isle_task_state(t), ISLE_TASK_DONE);
    isle_task_release(t);
    isle_mem_release(a);
    free(big);
}

/* A channel's ring is charged to its creator's account until the channel
 * is freed; one that does not fit is refused. */
static void test_channel_ring_charges(void)
{
    isle_mem *a = isle_mem_new(1 << 20);
    isle_mem_wrap(a, plain_alloc, NULL, 0, NULL);
    isle_chan *ch = isle_chan_new(1000);
    CHECK(ch != NULL);
    CHECK_EQ(isle_chan_charge(ch, a), 1);
    size_t ring = isle_mem_used(a);
    CHECK(ring >= 1000 * sizeof(void *) && ring <= 1000 * 32);
    CHECK_EQ(isle_chan_charge(ch, a), 1); /* once only */
    CHECK_EQ(isle_mem_used(a), ring);
    isle_chan *big = isle_chan_new(1 << 20);
    CHECK(big != NULL);
    CHECK_EQ(isle_chan_charge(big, a), 0);
    CHECK_EQ(isle_mem_used(a), ring);
    isle_chan_release(big);
    CHECK_EQ(isle_chan_charge(ch, NULL), 1);
    isle_mem_release(a); /* the channel holds it */
    CHECK_EQ(isle_mem_used(a), ring);
    isle_chan_release(ch); /* the last reference: the account goes (ASan) */
}

/* The state's thread allocates while others charge, uncharge and read. */
static isle_mem *shared;
static atomic_int stop_flag;

static void *charger(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        if (isle_mem_charge(shared, 1000)) isle_mem_uncharge(shared, 1000);
        size_t used = isle_mem_used(shared);
        CHECK(used <= isle_mem_limit(shared) + 4096);
    }
    return NULL;
}

static void test_threads(void)
{
    shared = isle_mem_new(8 << 20);
    isle_mem_wrap(shared, plain_alloc, NULL, 0, NULL);
    isle_mem_enforce(shared, ISLE_MEM_USER);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, charger, NULL);
    void *blocks[64] = {0};
    for (int round = 0; round < SCALE(2000); round++) {
        int k = round % 64;
        if (blocks[k]) alloc(shared, blocks[k], 100000, 0);
        blocks[k] = alloc(shared, NULL, 0, 100000);
    }
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int k = 0; k < 64; k++)
        if (blocks[k]) alloc(shared, blocks[k], 100000, 0);
    CHECK_EQ(isle_mem_used(shared), 0);
    isle_mem_release(shared);
}

int main(void)
{
    RUN(test_counts_without_a_limit);
    RUN(test_limits_per_mode);
    RUN(test_minimum);
    RUN(test_collection_request);
    RUN(test_message_charges);
    RUN(test_message_with_refs_charges);
    RUN(test_result_charges);
    RUN(test_channel_ring_charges);
    RUN(test_threads);
    return check_done();
}
