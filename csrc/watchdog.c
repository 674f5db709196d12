/* watchdog.c - per-call deadlines. A compiled loop in an isle never returns
 * to the isle's event loop, so its timers cannot end it; this thread cancels
 * expired tasks from outside (with ISLE_CANCEL_TIMEOUT), which raises the
 * running state's flag like any cancel. Started on first use, it exits when
 * it has had nothing to watch for a while, so idle processes keep no thread.
 * A task that ends leaves the heap at once (isle_watchdog_forget): the
 * watchdog's reference must not keep an ended task and its result alive
 * until a deadline that may be far off.
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

/* Every move of an entry goes through here, so each watched task knows
 * where its entry is and can leave the heap when it ends. */
static void put(size_t i, watch w)
{
    heap[i] = w;
    *isle_task_deadline_slot(w.task) = i + 1;
}

static void sift_up(size_t n)
{
    watch w = heap[n];
    while (n > 0) {
        size_t p = (n - 1) / 2;
        if (heap[p].deadline <= w.deadline) break;
        put(n, heap[p]);
        n = p;
    }
    put(n, w);
}

static void sift_down(size_t i)
{
    watch w = heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        double md = w.deadline;
        if (l < heap_len && heap[l].deadline < md) {
            m = l;
            md = heap[l].deadline;
        }
        if (r < heap_len && heap[r].deadline < md) m = r;
        if (m == i) break;
        put(i, heap[m]);
        i = m;
    }
    put(i, w);
}

/* Takes entry `i` out; its reference to the task passes to the caller. */
static watch remove_at(size_t i)
{
    watch w = heap[i];
    *isle_task_deadline_slot(w.task) = 0;
    if (i < --heap_len) {
        heap[i] = heap[heap_len];
        if (i > 0 && heap[i].deadline < heap[(i - 1) / 2].deadline) sift_up(i);
        else sift_down(i);
    }
    return w;
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
        watch w = remove_at(0);
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

void isle_watchdog_forget(isle_task *t)
{
    pthread_mutex_lock(&wd_lock);
    size_t slot = *isle_task_deadline_slot(t);
    if (slot) remove_at(slot - 1);
    pthread_mutex_unlock(&wd_lock);
    if (slot) isle_task_release(t); /* outside the lock: it may free the task */
}

size_t isle_watchdog_count(void)
{
    pthread_mutex_lock(&wd_lock);
    size_t n = heap_len;
    pthread_mutex_unlock(&wd_lock);
    return n;
}

int isle_task_expire_at(isle_task *t, double deadline)
{
    int rc = ISLE_OK;
    pthread_mutex_lock(&wd_lock);
    if (!wd_cv_ready) {
        if (isle_cond_init(&wd_cv)) {
            rc = ISLE_ENOMEM;
            goto out;
        }
        wd_cv_ready = 1;
    }
    /* Marked under the lock: a task ending from here on waits for it in
     * isle_watchdog_forget and finds its entry; one that has ended needs
     * no deadline. */
    if (isle_task_mark_deadline(t)) goto out;
    size_t *slot = isle_task_deadline_slot(t);
    if (*slot) {
        /* Watched already: the earlier deadline wins. */
        if (deadline < heap[*slot - 1].deadline) {
            heap[*slot - 1].deadline = deadline;
            sift_up(*slot - 1);
            pthread_cond_signal(&wd_cv);
        }
        goto out;
    }
    if (heap_len == heap_cap) {
        size_t cap = heap_cap ? heap_cap * 2 : 64;
        watch *h = realloc(heap, cap * sizeof(*h));
        if (!h) {
            rc = ISLE_ENOMEM;
            goto out;
        }
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
        if (err) {
            rc = ISLE_ENOMEM;
            goto out;
        }
        wd_running = 1;
    }
    isle_task_retain(t);
    heap[heap_len] = (watch){deadline, t};
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
