/* watchdog.c - per-call deadlines. A compiled loop in an isle never returns
 * to the isle's event loop, so its timers cannot end it; this thread cancels
 * expired tasks from outside (with ISLE_CANCEL_TIMEOUT), which raises the
 * running state's flag like any cancel. Started on first use, it exits when
 * it has had nothing to watch for a while, so idle processes keep no thread.
 */
#include "internal.h"

#include <stdlib.h>

typedef struct watch {
    double deadline;
    isle_task *task;
} watch;

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cv;
static int wd_cv_ready;
static int wd_running;
static watch *heap;
static size_t heap_len, heap_cap;

static void sift_up(size_t n)
{
    while (n > 0) {
        size_t p = (n - 1) / 2;
        if (heap[p].deadline <= heap[n].deadline) break;
        watch tmp = heap[p]; heap[p] = heap[n]; heap[n] = tmp;
        n = p;
    }
}

static watch pop_min(void)
{
    watch top = heap[0];
    heap[0] = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && heap[l].deadline < heap[m].deadline) m = l;
        if (r < heap_len && heap[r].deadline < heap[m].deadline) m = r;
        if (m == i) break;
        watch tmp = heap[m]; heap[m] = heap[i]; heap[i] = tmp;
        i = m;
    }
    return top;
}

static void *wd_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wd_lock);
    for (;;) {
        if (heap_len == 0) {
            struct timespec idle = isle_deadline(0.5);
            if (pthread_cond_timedwait(&wd_cv, &wd_lock, &idle) && heap_len == 0) break;
            continue;
        }
        double now = isle_now();
        if (heap[0].deadline > now) {
            struct timespec dl = isle_deadline(heap[0].deadline - now);
            pthread_cond_timedwait(&wd_cv, &wd_lock, &dl);
            continue;
        }
        watch w = pop_min();
        /* Cancel outside the lock: it takes the task's and mailboxes' locks. */
        pthread_mutex_unlock(&wd_lock);
        if (isle_task_state(w.task) < ISLE_TASK_DONE)
            isle_task_cancel_reason(w.task, ISLE_CANCEL_TIMEOUT);
        isle_task_release(w.task);
        pthread_mutex_lock(&wd_lock);
    }
    wd_running = 0;
    free(heap);
    heap = NULL;
    heap_cap = 0;
    pthread_mutex_unlock(&wd_lock);
    return NULL;
}

/* Drops the watches of tasks that already ended, before the heap grows, so
 * that long timeouts on short calls do not pile up finished tasks. Keeps the
 * heap order by rebuilding it. Called with wd_lock held. */
static void prune_ended_locked(void)
{
    size_t kept = 0;
    for (size_t i = 0; i < heap_len; i++) {
        if (isle_task_state(heap[i].task) >= ISLE_TASK_DONE) {
            isle_task_release(heap[i].task);
        } else {
            heap[kept++] = heap[i];
        }
    }
    heap_len = kept;
    for (size_t i = 1; i < heap_len; i++) sift_up(i);
}

int isle_task_expire_at(isle_task *t, double deadline)
{
    int rc = ISLE_OK;
    pthread_mutex_lock(&wd_lock);
    if (!wd_cv_ready) {
        if (isle_cond_init(&wd_cv)) { rc = ISLE_ENOMEM; goto out; }
        wd_cv_ready = 1;
    }
    if (heap_len == heap_cap) prune_ended_locked();
    if (heap_len == heap_cap) {
        size_t cap = heap_cap ? heap_cap * 2 : 64;
        watch *h = realloc(heap, cap * sizeof(*h));
        if (!h) { rc = ISLE_ENOMEM; goto out; }
        heap = h;
        heap_cap = cap;
    }
    if (!wd_running) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&th, &attr, wd_main, NULL);
        pthread_attr_destroy(&attr);
        if (err) { rc = ISLE_ENOMEM; goto out; }
        wd_running = 1;
    }
    isle_task_retain(t);
    heap[heap_len].deadline = deadline;
    heap[heap_len].task = t;
    sift_up(heap_len++);
    pthread_cond_signal(&wd_cv);
out:
    pthread_mutex_unlock(&wd_lock);
    return rc;
}

void isle_watchdog_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&wd_lock);
        return;
    }
    if (phase == ISLE_FORK_CHILD) {
        /* The watchdog thread was not copied, and the tasks it watched
         * belong to the parent: start afresh (the copies are left alone, as
         * their locks may be held by threads that are gone). */
        wd_running = 0;
        heap = NULL;
        heap_len = heap_cap = 0;
        wd_cv_ready = 0; /* its waiter is gone: make a new one on next use */
    }
    pthread_mutex_unlock(&wd_lock);
}
