/* test_cache.c - the block caches of small messages and task slots
 * (csrc/cache.c): a freed block is reused, the cache stays bounded, a
 * thread's blocks go back when it exits, isle_cache_trim leaves no block
 * behind (failalloc's count of live blocks), the live-task count stays
 * exact, producers and consumers on many threads share it (run under TSan
 * too), and a child forked while other threads use it can still use it. */
#include "check.h"
#include "failalloc.h"
#include "internal.h"

#include <string.h>

/* Blocks held by the cache when it is full: a thread's list plus the depot. */
enum { CACHE_BOUND = ISLE_CACHE_BATCH * (ISLE_CACHE_DEPOT + 1) };

static void test_reuse(void)
{
    isle_cache_trim();
    long live0 = failalloc_live();
    isle_msg *m = isle_msg_new(1, NULL, "abc", 3);
    CHECK(m != NULL);
    void *addr = m;
    isle_msg_free(m);
    /* Cached, not freed: the block is still live for the allocator... */
    CHECK_EQ(failalloc_live(), live0 + 1);
    m = isle_msg_new(2, NULL, "defg", 4);
    /* ...and the next small message is that very block, made anew. */
    CHECK(m == addr);
    CHECK_EQ(m->kind, 2);
    CHECK_EQ(m->len, 4);
    CHECK(memcmp(m->data, "defg", 5) == 0);
    CHECK(m->next == NULL && m->task == NULL && m->refs == NULL && m->mem == NULL);
    CHECK_EQ(failalloc_live(), live0 + 1);
    isle_msg_free(m);

    /* A message too big for a block is not cached. */
    char big[ISLE_MSG_BLOCK];
    memset(big, 'x', sizeof big);
    m = isle_msg_new(3, NULL, big, sizeof big);
    CHECK(m != NULL);
    isle_msg_free(m);
    CHECK_EQ(failalloc_live(), live0 + 1);

    /* Task slots: the count of live slots does not see the cache. */
    int tasks0 = isle_task_live_count();
    isle_task *t = isle_task_new();
    CHECK(t != NULL);
    void *taddr = t;
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_DONE, "r", 1), 1);
    CHECK_EQ(isle_task_cancel(t), ISLE_TASK_DONE);
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), tasks0);
    t = isle_task_new();
    CHECK(t == taddr);
    CHECK_EQ(isle_task_live_count(), tasks0 + 1);
    /* A recycled slot starts as a new one: queued, no cancel, no result. */
    CHECK_EQ(isle_task_state(t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_cancelled(t), ISLE_CANCEL_NONE);
    CHECK(isle_task_result_msg(t) == NULL);
    CHECK_EQ(isle_task_wait(t, 0), 0);
    CHECK_EQ(isle_task_start(t, NULL, NULL), 1);
    CHECK_EQ(isle_task_complete(t, ISLE_TASK_FAILED, NULL, 0), 1);
    CHECK_EQ(isle_task_wait(t, 0), 1);
    isle_task_release(t);

    isle_cache_trim();
    CHECK_EQ(failalloc_live(), live0);
    CHECK_EQ(isle_task_live_count(), tasks0);
}

static void test_bounded(void)
{
    /* Many messages freed at once on one thread: the cache keeps at most
     * its bound, frees the rest. */
    enum { N = 5000 };
    isle_cache_trim();
    long live0 = failalloc_live();
    static isle_msg *ms[N];
    for (int i = 0; i < N; i++) {
        ms[i] = isle_msg_new(0, NULL, "x", 1);
        CHECK(ms[i] != NULL);
    }
    CHECK_EQ(failalloc_live(), live0 + N);
    for (int i = 0; i < N; i++) isle_msg_free(ms[i]);
    long kept = failalloc_live() - live0;
    CHECK(kept > 0);
    CHECK(kept <= CACHE_BOUND);
    isle_cache_trim();
    CHECK_EQ(failalloc_live(), live0);
}

/* A thread that frees `n` messages made by the main thread, then exits. */
static void *free_then_exit(void *arg)
{
    isle_msg_free_list(arg);
    return NULL;
}

static void test_thread_exit(void)
{
    isle_cache_trim();
    long live0 = failalloc_live();
    /* Enough for full batches (they go to the depot) and a partial list
     * (freed as the thread exits). */
    int n = ISLE_CACHE_BATCH * 3 + 5;
    isle_msg *head = NULL;
    for (int i = 0; i < n; i++) {
        isle_msg *m = isle_msg_new(0, NULL, "y", 1);
        CHECK(m != NULL);
        m->next = head;
        head = m;
    }
    pthread_join(check_spawn(free_then_exit, head), NULL);
    head = NULL;
    /* The exited thread kept nothing: what is still live is in the depot,
     * whole batches, and this thread takes them back before it mallocs. */
    long held = failalloc_live() - live0;
    CHECK_EQ(held % ISLE_CACHE_BATCH, 0);
    CHECK(held <= ISLE_CACHE_BATCH * ISLE_CACHE_DEPOT);
    for (int i = 0; i < n; i++) {
        isle_msg *m = isle_msg_new(0, NULL, "z", 1);
        CHECK(m != NULL);
        m->next = head;
        head = m;
    }
    CHECK_EQ(failalloc_live(), live0 + n);
    isle_msg_free_list(head);
    isle_cache_trim();
    CHECK_EQ(failalloc_live(), live0);
}

/* Producers make messages (each with a task slot) on their threads, one
 * consumer frees them on its own: blocks cross threads both ways. */
typedef struct stream {
    isle_mbox *mb;
    long per_producer;
    atomic_long sum;
} stream;

static void *producer(void *arg)
{
    stream *s = arg;
    for (long i = 1; i <= s->per_producer; i++) {
        isle_task *t = isle_task_new();
        CHECK(t != NULL);
        isle_msg *m = isle_msg_new(1, t, (const char *)&i, sizeof i);
        CHECK(m != NULL);
        CHECK_EQ(isle_mbox_push(s->mb, m, -1), ISLE_OK);
        if (i % 3 == 0) { /* some wait for their reply, the others just go */
            CHECK_EQ(isle_task_wait(t, 30), 1);
            size_t len;
            const char *r = isle_task_result(t, &len);
            long v;
            CHECK(r != NULL && len == sizeof v);
            memcpy(&v, r, sizeof v);
            CHECK_EQ(v, -i);
        }
        isle_task_release(t);
    }
    return NULL;
}

enum { P = 4 };

static void *consumer(void *arg)
{
    stream *s = arg;
    for (long got = 0; got < P * s->per_producer;) {
        isle_msg *msgs;
        isle_done *done;
        CHECK_EQ(isle_mbox_wait(s->mb, -1, &msgs, &done), ISLE_OK);
        isle_done_free_list(done);
        for (isle_msg *m = msgs; m; m = m->next, got++) {
            long v;
            memcpy(&v, m->data, sizeof v);
            atomic_fetch_add(&s->sum, v);
            long r = -v;
            isle_task_complete(m->task, ISLE_TASK_DONE, (const char *)&r, sizeof r);
        }
        isle_msg_free_list(msgs);
    }
    return NULL;
}

static void test_threads(void)
{
    isle_cache_trim();
    long live0 = failalloc_live();
    int tasks0 = isle_task_live_count();
    stream s = {isle_mbox_new(64, 0), SCALE(20000), 0};
    CHECK(s.mb != NULL);
    pthread_t c = check_spawn(consumer, &s), ps[P];
    for (int i = 0; i < P; i++) ps[i] = check_spawn(producer, &s);
    for (int i = 0; i < P; i++) pthread_join(ps[i], NULL);
    pthread_join(c, NULL);
    CHECK_EQ(atomic_load(&s.sum), P * (s.per_producer * (s.per_producer + 1) / 2));
    isle_mbox_release(s.mb);
    CHECK_EQ(isle_task_live_count(), tasks0);
    /* Every thread but this one has exited: the depot and this thread's
     * list hold all that is left. */
    isle_cache_trim();
    CHECK_EQ(failalloc_live(), live0);
}

/* Keeps the cache busy (its depot lock too) until told to stop. */
static atomic_int churning;

static void *churn(void *arg)
{
    (void)arg;
    isle_msg *ms[ISLE_CACHE_BATCH * 2];
    while (atomic_load(&churning)) {
        for (int i = 0; i < ISLE_CACHE_BATCH * 2; i++) ms[i] = isle_msg_new(0, NULL, "c", 1);
        for (int i = 0; i < ISLE_CACHE_BATCH * 2; i++) isle_msg_free(ms[i]);
    }
    return NULL;
}

static void test_fork(void)
{
    atomic_store(&churning, 1);
    pthread_t th = check_spawn(churn, NULL);
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* The depot's lock was not left held by the churning thread. */
            for (int i = 0; i < ISLE_CACHE_BATCH * 4; i++) {
                isle_msg *m = isle_msg_new(0, NULL, "k", 1);
                if (!m) _Exit(2);
                isle_msg_free(m);
            }
            isle_cache_trim();
            _Exit(0);
        }
        check_child_ok(pid);
    }
    atomic_store(&churning, 0);
    pthread_join(th, NULL);
    isle_cache_trim();
}

static void test_pause(void)
{
    /* Paused, a freed block goes back to the allocator at once, and a new
     * one comes from it: what the allocation tests rely on. */
    isle_cache_trim();
    long live0 = failalloc_live();
    isle_cache_pause(1);
    isle_msg *m = isle_msg_new(0, NULL, "p", 1);
    CHECK(m != NULL);
    CHECK_EQ(failalloc_live(), live0 + 1);
    isle_msg_free(m);
    CHECK_EQ(failalloc_live(), live0);
    isle_task *t = isle_task_new();
    isle_task_release(t);
    CHECK_EQ(failalloc_live(), live0);
    isle_cache_pause(0);
    m = isle_msg_new(0, NULL, "q", 1);
    isle_msg_free(m);
    CHECK_EQ(failalloc_live(), live0 + 1);
    isle_cache_trim();
    CHECK_EQ(failalloc_live(), live0);
}

int main(void)
{
    isle_cache_pause(0); /* failalloc.c starts it paused */
    RUN(test_reuse);
    RUN(test_bounded);
    RUN(test_thread_exit);
    RUN(test_threads);
    RUN(test_fork);
    RUN(test_pause);
    return check_done();
}
