/* test_buf.c - shared buffers: bounds, zero-filled aligned memory, lifetime
 * through a message's refs (freed only after the last holder, a message
 * freed unread included), the finalizer by data pointer, memory charges,
 * allocation failure, and the atomics from 4 threads (no update lost). */
#include "check.h"
#include "internal.h"
#include "alloc_sweep.h"

#include <stdint.h>
#include <string.h>

static void test_bounds(void)
{
    CHECK(isle_buf_new(NULL, 1, 1, 1) == NULL);
    CHECK(isle_buf_new("", 1, 1, 1) == NULL);
    char longname[ISLE_BUF_TYPE_MAX + 1];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK(isle_buf_new(longname, 1, 1, 1) == NULL);
    CHECK(isle_buf_new("double", 0, 1, 8) == NULL);
    CHECK(isle_buf_new("double", 8, 0, 8) == NULL);
    CHECK(isle_buf_new("double", 8, SIZE_MAX / 4, 8) == NULL);  /* overflows */
    CHECK(isle_buf_new("double", 8, 1, 24) == NULL);            /* not a power of two */
    CHECK(isle_buf_new("double", 8, 1, 8192) == NULL);
    CHECK_EQ(isle_buf_live_count(), 0);
    isle_buf_release(NULL);
    isle_buf_release_data(NULL);
}

static void test_zeroed_and_aligned(void)
{
    size_t aligns[] = {1, 8, 16, 64, 4096};
    for (size_t k = 0; k < sizeof aligns / sizeof aligns[0]; k++) {
        isle_buf *b = isle_buf_new("struct s", 24, 1000, aligns[k]);
        CHECK(b != NULL);
        CHECK_EQ(isle_buf_live_count(), 1);
        unsigned char *p = isle_buf_data(b);
        size_t want = aligns[k] < 16 ? 16 : aligns[k];
        CHECK_EQ((uintptr_t)p % want, 0);
        CHECK_EQ(isle_buf_size(b), 24000);
        CHECK_EQ(isle_buf_count(b), 1000);
        CHECK_EQ(isle_buf_elem_size(b), 24);
        CHECK(strcmp(isle_buf_type(b), "struct s") == 0);
        for (size_t i = 0; i < 24000; i++) CHECK_EQ(p[i], 0);
        memset(p, 0xab, 24000); /* every byte is ours (ASan would see past it) */
        isle_buf_release(b);
        CHECK_EQ(isle_buf_live_count(), 0);
    }
}

static void test_travels_in_refs(void)
{
    int tasks = isle_task_live_count();
    isle_buf *b = isle_buf_new("int32_t", 4, 16, 4);
    CHECK_EQ(isle_task_live_count(), tasks + 1); /* its anchor */
    ((int32_t *)isle_buf_data(b))[3] = 42;
    isle_task *ref = isle_buf_ref(b);
    isle_msg *m = isle_msg_new_refs(0, NULL, "x", 1, &ref, 1);
    CHECK(m != NULL);
    /* A message alone keeps it: the creator lets go first. */
    isle_buf_release(b);
    CHECK_EQ(isle_buf_live_count(), 1);
    /* A reader takes its own reference from the message... */
    isle_buf *got = isle_buf_of_ref(m->refs[0]);
    CHECK(got == b);
    CHECK_EQ(((int32_t *)isle_buf_data(got))[3], 42);
    isle_msg_free(m);
    CHECK_EQ(isle_buf_live_count(), 1);
    /* ... and a second holder (another state's pointer, released through
     * its data by its finalizer) keeps it after that one goes. */
    isle_buf_retain(got);
    void *data = isle_buf_data(got);
    isle_buf_release(got);
    CHECK_EQ(isle_buf_live_count(), 1);
    isle_buf_release_data(data);
    CHECK_EQ(isle_buf_live_count(), 0);
    CHECK_EQ(isle_task_live_count(), tasks);

    /* A message freed unread lets go of the buffer it carries. */
    b = isle_buf_new("uint8_t", 1, 1 << 20, 1);
    ref = isle_buf_ref(b);
    m = isle_msg_new_refs(0, NULL, NULL, 0, &ref, 1);
    isle_buf_release(b);
    CHECK_EQ(isle_buf_live_count(), 1);
    isle_msg_free(m);
    CHECK_EQ(isle_buf_live_count(), 0);

    /* A slot that is not a buffer's (a token, a channel's) is refused. */
    isle_task *t = isle_task_new();
    CHECK(isle_buf_of_ref(t) == NULL);
    isle_task_release(t);
    isle_chan *ch = isle_chan_new(1);
    CHECK(isle_buf_of_ref(isle_chan_ref(ch)) == NULL);
    b = isle_buf_new("double", 8, 1, 8);
    CHECK(isle_chan_of_ref(isle_buf_ref(b)) == NULL);
    isle_buf_release(b);
    isle_chan_release(ch);
    CHECK_EQ(isle_task_live_count(), tasks);
}

static void test_charge(void)
{
    isle_mem *a = isle_mem_new(1 << 20);
    isle_buf *small = isle_buf_new("uint8_t", 1, 100000, 1);
    CHECK_EQ(isle_buf_charge(small, a), 1);
    CHECK_EQ(isle_mem_used(a), 100000);
    CHECK_EQ(isle_buf_charge(small, a), 1); /* once only */
    CHECK_EQ(isle_mem_used(a), 100000);
    isle_buf *big = isle_buf_new("uint8_t", 1, 2 << 20, 1);
    CHECK_EQ(isle_buf_charge(big, a), 0);
    CHECK_EQ(isle_mem_used(a), 100000);
    isle_buf_release(big);
    /* The charge stays while any holder keeps the buffer. */
    isle_buf_retain(small);
    isle_buf_release(small);
    CHECK_EQ(isle_mem_used(a), 100000);
    isle_buf_release(small);
    CHECK_EQ(isle_mem_used(a), 0);
    isle_buf *free_one = isle_buf_new("uint8_t", 1, 1, 1);
    CHECK_EQ(isle_buf_charge(free_one, NULL), 1);
    isle_buf_release(free_one);
    CHECK_EQ(isle_buf_live_count(), 0);
    isle_mem_release(a);
}

static isle_buf *sweep_buf;

static int new_run(void *ctx)
{
    (void)ctx;
    sweep_buf = isle_buf_new("double", 8, 100, 8);
    return sweep_buf != NULL;
}

static long new_check(void *ctx, int ok)
{
    (void)ctx;
    CHECK_EQ(sweep_buf != NULL, ok);
    isle_buf_release(sweep_buf);
    CHECK_EQ(isle_buf_live_count(), 0);
    isle_buf *b = isle_buf_new("double", 8, 100, 8);
    CHECK(b != NULL);
    isle_buf_release(b);
    return 0;
}

static void test_out_of_memory(void)
{
    alloc_op make = {"isle_buf_new", NULL, new_run, new_check};
    CHECK_EQ(alloc_sweep_both(&make, NULL, 0), 3);
}

#define ADDERS 4
static isle_buf *shared;

static void *adder(void *arg)
{
    (void)arg;
    int32_t *p32 = isle_buf_data(shared);
    int64_t *p64 = (int64_t *)(p32 + 2);
    for (int i = 0; i < SCALE(100000); i++) {
        isle_atomic_add32(p32, 1);
        isle_atomic_add64(p64, 3);
        int32_t v;
        do v = isle_atomic_load32(p32 + 1); while (!isle_atomic_cas32(p32 + 1, v, v + 2));
    }
    isle_buf_release(shared); /* each thread's own reference */
    return NULL;
}

static void test_atomics(void)
{
    int32_t x = 5;
    CHECK_EQ(isle_atomic_add32(&x, 3), 5);
    CHECK_EQ(isle_atomic_load32(&x), 8);
    CHECK_EQ(isle_atomic_cas32(&x, 7, 1), 0);
    CHECK_EQ(isle_atomic_cas32(&x, 8, 1), 1);
    isle_atomic_store32(&x, -4);
    CHECK_EQ(x, -4);
    int64_t y = INT64_C(1) << 40;
    CHECK_EQ(isle_atomic_add64(&y, 1), INT64_C(1) << 40);
    CHECK_EQ(isle_atomic_cas64(&y, (INT64_C(1) << 40) + 1, 9), 1);
    isle_atomic_store64(&y, isle_atomic_load64(&y) * 2);
    CHECK_EQ(y, 18);

    shared = isle_buf_new("int64_t", 8, 2, 8);
    pthread_t th[ADDERS];
    for (int i = 0; i < ADDERS; i++) {
        isle_buf_retain(shared);
        th[i] = check_spawn(adder, NULL);
    }
    for (int i = 0; i < ADDERS; i++) check_join(th[i]);
    int32_t *p32 = isle_buf_data(shared);
    CHECK_EQ(p32[0], ADDERS * SCALE(100000));
    CHECK_EQ(p32[1], 2 * ADDERS * SCALE(100000));
    CHECK_EQ(((int64_t *)p32)[1], (int64_t)3 * ADDERS * SCALE(100000));
    CHECK_EQ(isle_buf_live_count(), 1); /* the threads let go of theirs */
    isle_buf_release(shared);
    CHECK_EQ(isle_buf_live_count(), 0);
}

int main(void)
{
    RUN(test_bounds);
    RUN(test_zeroed_and_aligned);
    RUN(test_travels_in_refs);
    RUN(test_charge);
    RUN(test_atomics);
    RUN(test_out_of_memory);
    return check_done();
}
