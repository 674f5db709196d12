/* test_sig.c - signal blocks and interrupt ids: allocation, modes, unknown
 * ids, the flag, waking the attached mailbox and dropping ids with the block. */
#include "check.h"
#include "internal.h"

#include <string.h>

static int32_t flag_of(isle_sig *s) { return __atomic_load_n(&s->flag, __ATOMIC_ACQUIRE); }

static void test_flag(void)
{
    isle_sig *s = isle_sig_new();
    CHECK(s != NULL);
    CHECK_EQ(flag_of(s), 0);
    isle_sig_raise(s);
    CHECK_EQ(flag_of(s), 1);
    isle_sig_raise(s);
    CHECK_EQ(flag_of(s), 1);
    isle_sig_lower(s);
    CHECK_EQ(flag_of(s), 0);
    isle_sig_release(s);
    isle_sig_release(NULL);
}

static void test_ids_unique_increasing(void)
{
    isle_sig *s = isle_sig_new(), *s2 = isle_sig_new();
    int64_t prev = 0;
    int increasing = 1;
    for (int i = 0; i < 100; i++) {
        int64_t id = isle_intr_new(i % 3 ? s : s2);
        if (id <= prev) increasing = 0;
        prev = id;
    }
    CHECK(prev > 0);
    CHECK(increasing);
    /* Ids are not reused, not even after being freed. */
    int64_t a = isle_intr_new(s);
    isle_intr_free(a);
    int64_t b = isle_intr_new(s);
    CHECK(b > a);
    isle_sig_release(s);
    int64_t c = isle_intr_new(s2);
    CHECK(c > b);
    isle_sig_release(s2);
}

static void test_modes(void)
{
    isle_sig *s = isle_sig_new();
    int64_t a = isle_intr_new(s), b = isle_intr_new(s);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_CLEAR);       /* fresh ids are clear */
    CHECK_EQ(isle_sig_pending(s), 0);

    /* ONCE is consumed by the take; setting raises the flag. */
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(flag_of(s), 1);
    CHECK_EQ(isle_sig_pending(s), 1);
    CHECK_EQ(isle_intr_take(b), ISLE_INTR_CLEAR);       /* the other id untouched */
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_ONCE);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_CLEAR);
    CHECK_EQ(isle_sig_pending(s), 0);
    isle_sig_lower(s);

    /* ALWAYS stays until cleared. */
    CHECK_EQ(isle_intr_set(b, ISLE_INTR_ALWAYS), ISLE_OK);
    CHECK_EQ(flag_of(s), 1);
    for (int i = 0; i < 3; i++) CHECK_EQ(isle_intr_take(b), ISLE_INTR_ALWAYS);
    CHECK_EQ(isle_sig_pending(s), 1);
    CHECK_EQ(isle_intr_set(b, ISLE_INTR_CLEAR), ISLE_OK);
    CHECK_EQ(isle_intr_take(b), ISLE_INTR_CLEAR);
    CHECK_EQ(isle_sig_pending(s), 0);

    /* CLEAR also clears a pending ONCE; a later mode replaces an earlier. */
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_CLEAR), ISLE_OK);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_CLEAR);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ALWAYS), ISLE_OK);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_sig_pending(s), 1);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_ONCE);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_CLEAR);
    CHECK_EQ(isle_sig_pending(s), 0);

    /* Setting CLEAR is not a request: it leaves a lowered flag alone. */
    isle_sig_lower(s);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_CLEAR), ISLE_OK);
    CHECK_EQ(flag_of(s), 0);

    /* Invalid modes are refused and change nothing. */
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ALWAYS), ISLE_OK);
    isle_sig_lower(s);
    CHECK_EQ(isle_intr_set(a, 3), ISLE_EINVAL);
    CHECK_EQ(isle_intr_set(a, -1), ISLE_EINVAL);
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_intr_take(a), ISLE_INTR_ALWAYS);

    /* Freeing a pending id drops it from the count. */
    isle_intr_free(a);
    CHECK_EQ(isle_sig_pending(s), 0);
    isle_sig_release(s);
}

static void test_unknown(void)
{
    isle_sig *s = isle_sig_new();
    int64_t a = isle_intr_new(s), b = isle_intr_new(s);
    CHECK_EQ(isle_intr_set(0, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_set(-5, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_set(b + 1000000, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_take(0), -1);
    CHECK_EQ(isle_intr_take(b + 1000000), -1);
    CHECK_EQ(flag_of(s), 0);
    isle_intr_free(b + 1000000);        /* unknown: a no-op */
    isle_intr_free(0);

    /* A freed id is unknown; its siblings stay. */
    isle_intr_free(a);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_take(a), -1);
    CHECK_EQ(flag_of(s), 0);
    CHECK_EQ(isle_intr_set(b, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_intr_take(b), ISLE_INTR_ONCE);
    isle_intr_free(a);                  /* twice: still a no-op */
    isle_sig_release(s);
}

static void test_free_drops_ids(void)
{
    isle_sig *s = isle_sig_new(), *keep = isle_sig_new();
    int64_t x = isle_intr_new(s), y = isle_intr_new(s), k = isle_intr_new(keep);
    CHECK_EQ(isle_intr_set(x, ISLE_INTR_ALWAYS), ISLE_OK);
    /* A second reference keeps the block and its ids. */
    isle_sig_retain(s);
    isle_sig_release(s);
    CHECK_EQ(isle_intr_take(x), ISLE_INTR_ALWAYS);
    CHECK_EQ(isle_intr_set(y, ISLE_INTR_ONCE), ISLE_OK);
    isle_sig_release(s);                   /* the last: ids go with it */
    CHECK_EQ(isle_intr_set(x, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_set(y, ISLE_INTR_CLEAR), ISLE_ENOENT);
    CHECK_EQ(isle_intr_take(x), -1);
    CHECK_EQ(isle_intr_take(y), -1);
    CHECK_EQ(isle_intr_set(k, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_intr_take(k), ISLE_INTR_ONCE);

    /* Dropping the ids of a live block (its state is gone). */
    int64_t k2 = isle_intr_new(keep);
    CHECK_EQ(isle_intr_set(k2, ISLE_INTR_ALWAYS), ISLE_OK);
    isle_sig_drop_ids(keep);
    CHECK_EQ(isle_intr_set(k, ISLE_INTR_ONCE), ISLE_ENOENT);
    CHECK_EQ(isle_intr_take(k2), -1);
    CHECK_EQ(isle_sig_pending(keep), 0);
    int64_t k3 = isle_intr_new(keep);   /* the block still takes new ids */
    CHECK(k3 > k2);
    CHECK_EQ(isle_intr_set(k3, ISLE_INTR_ONCE), ISLE_OK);
    isle_sig_release(keep);
    CHECK_EQ(isle_intr_take(k3), -1);
}

static void test_many_ids(void)
{
    /* More ids than hash buckets, spread over two blocks, freed out of order. */
    enum { N = 3000 };
    isle_sig *s[2] = {isle_sig_new(), isle_sig_new()};
    static int64_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = isle_intr_new(s[i % 2]);
    for (int i = 0; i < N; i++)
        CHECK_EQ(isle_intr_set(ids[i], i % 3 ? ISLE_INTR_ALWAYS : ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_sig_pending(s[0]) + isle_sig_pending(s[1]), N);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (isle_intr_take(ids[i]) != (i % 3 ? ISLE_INTR_ALWAYS : ISLE_INTR_ONCE)) bad++;
    CHECK_EQ(bad, 0);
    for (int i = 0; i < N; i += 7) isle_intr_free(ids[i]);
    isle_sig_release(s[0]);                /* the even ones go */
    bad = 0;
    for (int i = 0; i < N; i++) {
        int want = (i % 2 == 0 || i % 7 == 0) ? -1 : (i % 3 ? ISLE_INTR_ALWAYS : ISLE_INTR_CLEAR);
        if (isle_intr_take(ids[i]) != want) bad++;
    }
    CHECK_EQ(bad, 0);
    isle_sig_release(s[1]);
    bad = 0;
    for (int i = 0; i < N; i++) bad += isle_intr_take(ids[i]) != -1;
    CHECK_EQ(bad, 0);
}

static void test_wakes_mailbox(void)
{
    isle_sig *s = isle_sig_new();
    isle_mbox *mb = isle_mbox_new(2, 0);
    isle_sig_attach_mbox(s, mb);
    int64_t a = isle_intr_new(s);
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);   /* woken */
    CHECK(msgs == NULL && done == NULL);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_CLEAR), ISLE_OK);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_ETIMEOUT);
    isle_sig_raise(s);
    CHECK_EQ(isle_mbox_wait(mb, 0, &msgs, &done), ISLE_OK);
    /* The block holds the mailbox: it outlives its owner's free. */
    isle_mbox_release(mb);
    CHECK_EQ(isle_intr_set(a, ISLE_INTR_ONCE), ISLE_OK);
    isle_sig_release(s);
}

/* Concurrent id allocation: unique, and increasing per thread. */
enum { THREADS = 4, PER_THREAD = 2000 };
static int64_t conc_ids[THREADS][PER_THREAD];

static void *alloc_ids(void *arg)
{
    int k = (int)(intptr_t)arg;
    isle_sig *s = isle_sig_new();
    for (int i = 0; i < PER_THREAD; i++) conc_ids[k][i] = isle_intr_new(s);
    for (int i = 0; i < PER_THREAD; i++) {
        CHECK_EQ(isle_intr_set(conc_ids[k][i], ISLE_INTR_ONCE), ISLE_OK);
        CHECK_EQ(isle_intr_take(conc_ids[k][i]), ISLE_INTR_ONCE);
    }
    isle_sig_release(s);
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_concurrent_ids(void)
{
    pthread_t th[THREADS];
    for (int k = 0; k < THREADS; k++) th[k] = check_spawn(alloc_ids, (void *)(intptr_t)k);
    for (int k = 0; k < THREADS; k++) check_join(th[k]);
    int increasing = 1;
    for (int k = 0; k < THREADS; k++)
        for (int i = 1; i < PER_THREAD; i++)
            if (conc_ids[k][i] <= conc_ids[k][i - 1]) increasing = 0;
    CHECK(increasing);
    static int64_t all[THREADS * PER_THREAD];
    memcpy(all, conc_ids, sizeof all);
    qsort(all, THREADS * PER_THREAD, sizeof all[0], cmp_id);
    int dups = 0;
    for (int i = 1; i < THREADS * PER_THREAD; i++) dups += all[i] == all[i - 1];
    CHECK_EQ(dups, 0);
    CHECK(all[0] > 0);
}

int main(void)
{
    RUN(test_flag);
    RUN(test_ids_unique_increasing);
    RUN(test_modes);
    RUN(test_unknown);
    RUN(test_free_drops_ids);
    RUN(test_many_ids);
    RUN(test_wakes_mailbox);
    RUN(test_concurrent_ids);
    return check_done();
}
