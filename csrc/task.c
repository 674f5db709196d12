/* task.c - one-shot completion slots shared by a caller and a worker.
 *
 * `state` is atomic so waiters can spin (and park) on it without the lock;
 * every transition happens under `mu` so that subscribing, cancelling and
 * ending see one order of events. The slot is freed when the last reference
 * goes (back to the task cache, cache.c): the caller's handle, the queued
 * message and each pending notice hold one.
 * A subscription (a pending notice) also holds its mailbox and signal block
 * until the task ends or the subscriber takes it back (isle_task_unwatch).
 * The result is a message (msg.c): the references it carries are let go
 * with the slot, whether or not anyone decoded it.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A slot is a block of the task cache (cache.c): while cached, its first
 * word links it and `mu` stays initialised, so that a recycled slot skips
 * its setup; everything from `sig` to `label` is zeroed anew.
 *
 * A waiter parks on `ended` itself (a futex) rather than on a condition
 * variable under `mu`: the ending thread stores `ended`, then wakes only if
 * `waiters` says someone parked; a waiter counts itself in `waiters`, then
 * checks `ended` again before it sleeps (both sequentially consistent, so
 * one of the two always sees the other), and the kernel sleeps only while
 * `ended` is still 0. No lock is taken on either side of the wait. */
struct isle_task {
    atomic_int refs;
    atomic_int state;
    atomic_int cancel;
    pthread_mutex_t mu;
    isle_sig *sig;            /* state running the task, retained while RUNNING (mu) */
    isle_done *subs;          /* pending notices, each holding a task ref (mu) */
    isle_task *rnext, *rprev; /* in sig's running list (sig's lock) */
    double started;           /* isle_now_coarse() when it started running (mu) */
    atomic_int has_deadline;  /* set once by isle_task_expire_at */
    size_t deadline_slot;     /* index + 1 in the watchdog's heap, 0 if not in it (its lock) */
    isle_msg *result;         /* NULL: ended with no bytes and no references */
    isle_mem *mem;            /* charged for the result (isle_task_charge_results) */
    /* An object whose lifetime is this slot's (a channel, chan.c): freed
     * with the slot, so it travels in isle_msg.refs like a token. Set once,
     * before the slot is shared. */
    void (*owner_free)(void *);
    void *owner;
    /* Set once, before the slot is shared: its end is known to be far off
     * (an isle's boot, isle_task_expect_long), so a wait skips the spin. */
    int long_wait;
    char label[ISLE_LABEL_MAX]; /* what runs, for isle_stats (set before it is linked) */
    /* A small result without references, for a reader without a charged
     * account, is kept here (`result` points at `small`) instead of in a
     * message of its own: that message was allocated by the runner and
     * freed by the caller, and carried lines of its own between them.
     * Written under `mu` by the completion that wins, read after `ended`;
     * `small_data` follows the header, as a message's payload does. */
    isle_msg small;
    char small_data[ISLE_TASK_SMALL];
    /* Last, more than a cache line away from `mu`, `state` and `refs`: a
     * caller spins on `ended` while the runner takes the lock, starts and
     * ends the task; on the lock's line each of those writes took the line
     * back from the spinning caller (a miss each), on its own line only
     * the final store does. */
    atomic_int ended;   /* 0/1 mirror of "state is final": spun and parked on by waiters */
    atomic_int waiters; /* threads parked (or parking) in isle_task_wait */
};

_Static_assert(sizeof(isle_task) <= ISLE_TASK_BLOCK, "a task slot must fit a cached block");
_Static_assert(offsetof(isle_task, mu) >= sizeof(void *), "the cache's link must not touch mu");
_Static_assert(offsetof(isle_task, ended) >= offsetof(isle_task, mu) + sizeof(pthread_mutex_t) + 64,
               "a waiter's spin must not share a line with the lock");

static int is_final(int state) { return state >= ISLE_TASK_DONE; }

/* Slots not yet freed, for isle_task_live_count (a leak check). Relaxed: a
 * count, ordering nothing. */
static atomic_int live_tasks;

int isle_task_live_count(void) { return atomic_load_explicit(&live_tasks, memory_order_relaxed); }

isle_task *isle_task_new(void)
{
    isle_task *t = isle_cache_get(ISLE_CACHE_TASK);
    if (!t) {
        /* A whole block, so that the slot can be cached when it goes. */
        t = malloc(ISLE_TASK_BLOCK);
        if (!t) return NULL;
        if (pthread_mutex_init(&t->mu, NULL)) goto fail_mu;
    }
    /* `label` is written before it is read (isle_task_start). */
    memset(&t->sig, 0, offsetof(isle_task, label) - offsetof(isle_task, sig));
    t->label[0] = '\0';
    atomic_init(&t->waiters, 0);
    atomic_init(&t->refs, 1);
    atomic_init(&t->state, ISLE_TASK_QUEUED);
    atomic_init(&t->cancel, ISLE_CANCEL_NONE);
    atomic_init(&t->ended, 0);
    atomic_fetch_add_explicit(&live_tasks, 1, memory_order_relaxed);
    return t;
fail_mu:
    free(t);
    return NULL;
}

void isle_task_block_fini(void *p)
{
    isle_task *t = p;
    pthread_mutex_destroy(&t->mu);
}

void isle_task_retain(isle_task *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void isle_task_release(isle_task *t)
{
    if (!t) return;
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
    /* Last reference: nobody else can reach the slot any more. Pending
     * notices hold references, so `subs` is empty here. */
    if (t->owner_free) t->owner_free(t->owner);
    isle_sig_release(t->sig);
    /* Uncharges it from `mem` too; a small one holds nothing. */
    if (t->result != &t->small) isle_msg_free(t->result);
    isle_mem_release(t->mem);
    atomic_fetch_sub_explicit(&live_tasks, 1, memory_order_relaxed);
    if (isle_cache_put(ISLE_CACHE_TASK, t)) return;
    isle_task_block_fini(t);
    free(t);
}

void isle_task_set_owner(isle_task *t, void (*owner_free)(void *), void *owner)
{
    t->owner_free = owner_free;
    t->owner = owner;
}

void *isle_task_owner(const isle_task *t, void (*owner_free)(void *))
{
    return t->owner_free == owner_free ? t->owner : NULL;
}

int isle_task_state(const isle_task *t)
{
    return atomic_load_explicit(&t->state, memory_order_acquire);
}

int isle_task_cancelled(const isle_task *t)
{
    return atomic_load_explicit(&t->cancel, memory_order_acquire);
}

/* The running list of a signal block: what its state runs now, so that the
 * core can end those tasks itself if the state dies under them. */
void isle_sig_link_running(isle_sig *s, isle_task *t)
{
    isle_sig_impl *si = (isle_sig_impl *)s;
    pthread_mutex_lock(&si->mu);
    t->rprev = NULL;
    t->rnext = si->running;
    if (si->running) si->running->rprev = t;
    si->running = t;
    pthread_mutex_unlock(&si->mu);
}

void isle_sig_unlink_running(isle_sig *s, isle_task *t)
{
    isle_sig_impl *si = (isle_sig_impl *)s;
    pthread_mutex_lock(&si->mu);
    if (t->rprev) t->rprev->rnext = t->rnext;
    else si->running = t->rnext;
    if (t->rnext) t->rnext->rprev = t->rprev;
    t->rnext = t->rprev = NULL;
    pthread_mutex_unlock(&si->mu);
}

void isle_sig_count_end(isle_sig *s, int state)
{
    if (state >= ISLE_TASK_DONE && state <= ISLE_TASK_CLOSED)
        atomic_fetch_add_explicit(&((isle_sig_impl *)s)->ended[state - ISLE_TASK_DONE], 1,
                                  memory_order_relaxed);
}

void isle_sig_hold(isle_sig *s, int64_t delta)
{
    atomic_fetch_add_explicit(&((isle_sig_impl *)s)->held, delta, memory_order_relaxed);
}

void isle_sig_stats(isle_sig *s, isle_stats *out)
{
    isle_sig_impl *si = (isle_sig_impl *)s;
    out->queued += atomic_load_explicit(&si->held, memory_order_relaxed);
    out->done = atomic_load_explicit(&si->ended[0], memory_order_relaxed);
    out->failed = atomic_load_explicit(&si->ended[1], memory_order_relaxed);
    out->cancelled = atomic_load_explicit(&si->ended[2], memory_order_relaxed);
    out->closed = atomic_load_explicit(&si->ended[3], memory_order_relaxed);
    out->running = 0;
    out->oldest_start = 0;
    out->oldest_cancel = 0;
    out->oldest_label[0] = '\0';
    pthread_mutex_lock(&si->mu);
    isle_task *oldest = NULL;
    for (isle_task *t = si->running; t; t = t->rnext) {
        out->running++;
        if (!oldest || t->started < oldest->started) oldest = t;
    }
    if (oldest) {
        /* `started` and `label` are written before the task is linked, under
         * this lock, and not again while it stays linked. */
        out->oldest_start = oldest->started;
        out->oldest_cancel = atomic_load(&oldest->cancel);
        memcpy(out->oldest_label, oldest->label, sizeof out->oldest_label);
    }
    pthread_mutex_unlock(&si->mu);
}

int isle_sig_fail_running(isle_sig *s, const char *data, size_t len)
{
    isle_sig_impl *si = (isle_sig_impl *)s;
    int n = 0;
    for (;;) {
        pthread_mutex_lock(&si->mu);
        isle_task *t = si->running;
        if (t) isle_task_retain(t);
        pthread_mutex_unlock(&si->mu);
        if (!t) break;
        /* Completing unlinks it; a task finished meanwhile is unlinked too. */
        n += isle_task_complete(t, ISLE_TASK_FAILED, data, len);
        isle_task_release(t);
    }
    return n;
}

int isle_task_start(isle_task *t, isle_sig *sig, const char *label)
{
    int started = 0;
    pthread_mutex_lock(&t->mu);
    int state = atomic_load(&t->state);
    if (state == ISLE_TASK_QUEUED) {
        atomic_store(&t->state, ISLE_TASK_RUNNING);
        if (sig) {
            /* For isle_stats' `running_for` only: a tick's precision is
             * enough, and the full clock read cost ~50 ns of every call. */
            t->started = isle_now_coarse();
            size_t n = 0;
            if (label)
                for (; n + 1 < sizeof t->label && label[n]; n++) t->label[n] = label[n];
            t->label[n] = '\0';
            isle_sig_retain(sig);
            t->sig = sig;
            isle_sig_link_running(sig, t);
            /* Cancelled between queueing and starting: make the state look. */
            if (atomic_load(&t->cancel)) isle_sig_raise(sig);
        }
        started = 1;
    } else if (sig && is_final(state)) {
        /* Ended while queued (cancelled): the runner skips it; count it here. */
        isle_sig_count_end(sig, state);
    }
    pthread_mutex_unlock(&t->mu);
    return started;
}

/* The one way a task ends. Called with `mu` held and the task not final;
 * hands back what must be released once the lock is dropped. */
static void finish_locked(isle_task *t, int state, isle_msg *result, isle_sig **sig,
                          isle_done **subs)
{
    t->result = result;
    *sig = t->sig;
    *subs = t->subs;
    if (t->sig) {
        isle_sig_unlink_running(t->sig, t);
        isle_sig_count_end(t->sig, state);
    }
    t->sig = NULL;
    t->subs = NULL;
    atomic_store_explicit(&t->state, state, memory_order_release);
    /* seq_cst, paired with isle_task_wait's count of itself: see above. */
    atomic_store(&t->ended, 1);
    if (atomic_load(&t->waiters)) isle_futex_wake_all(&t->ended);
}

static void after_finish(isle_task *t, isle_sig *sig, isle_done *subs)
{
    while (subs) {
        isle_done *next = subs->next;
        isle_mbox_post_done(subs);
        subs = next;
    }
    isle_sig_release(sig);
    /* Pairs with isle_task_mark_deadline: either it sees the end, or this
     * sees the mark and the task leaves the watchdog's heap now, result and
     * all, instead of at its deadline. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&t->has_deadline, memory_order_relaxed)) isle_watchdog_forget(t);
}

int isle_task_mark_deadline(isle_task *t)
{
    atomic_store(&t->has_deadline, 1);
    return atomic_load(&t->ended);
}

size_t *isle_task_deadline_slot(isle_task *t) { return &t->deadline_slot; }

void isle_task_charge_results(isle_task *t, isle_mem *a)
{
    if (!a || !isle_mem_limit(a) || t->mem) return;
    isle_mem_retain(a);
    t->mem = a;
}

int isle_task_complete_refs(isle_task *t, int state, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs)
{
    if (!is_final(state)) return 0;
    isle_msg *result = NULL;
    /* `mem` is set before the task is shared (isle_task_charge_results). */
    int small = len && len < ISLE_TASK_SMALL && !nrefs && !t->mem;
    if ((len || nrefs) && !small) {
        result = isle_msg_new_refs(0, NULL, data, len, refs, nrefs);
        if (!result) state = ISLE_TASK_FAILED; /* read back as a "memory" error */
        /* A result its reader's account cannot hold is not stored: the
         * message goes, and with it the references it took. */
        else if (t->mem && !isle_msg_charge(result, t->mem)) {
            isle_msg_free(result);
            result = NULL;
            state = ISLE_TASK_FAILED;
        }
    }
    isle_sig *sig = NULL;
    isle_done *subs = NULL;
    pthread_mutex_lock(&t->mu);
    int won = !is_final(atomic_load(&t->state));
    if (won) {
        /* Only the winner writes the slot's own result: a losing
         * completion running at the same time must not touch it. */
        if (small) result = isle_msg_fill_plain(&t->small, t->small_data, data, len);
        finish_locked(t, state, result, &sig, &subs);
    }
    pthread_mutex_unlock(&t->mu);
    /* A lost race gives its references (and its charge) back here, outside
     * the lock: the last reference of a token frees it. */
    if (!won) isle_msg_free(result);
    else after_finish(t, sig, subs);
    return won;
}

int isle_task_complete(isle_task *t, int state, const char *data, size_t len)
{
    return isle_task_complete_refs(t, state, data, len, NULL, 0);
}

void isle_task_expect_long(isle_task *t) { t->long_wait = 1; }

int isle_task_wait(isle_task *t, double timeout)
{
    if (t->long_wait ? atomic_load(&t->ended) : isle_spin_until(&t->ended, timeout)) return 1;
    if (timeout == 0) return 0;
    struct timespec dl = {0, 0};
    if (timeout > 0) dl = isle_deadline(timeout);
    atomic_fetch_add(&t->waiters, 1);
    int ended;
    /* Wakes early on a signal or a spurious wake-up: look again. */
    while (!(ended = atomic_load(&t->ended)))
        if (isle_futex_wait(&t->ended, 0, timeout > 0 ? &dl : NULL) == ETIMEDOUT) {
            ended = atomic_load(&t->ended);
            break;
        }
    atomic_fetch_sub_explicit(&t->waiters, 1, memory_order_relaxed);
    return ended;
}

const isle_msg *isle_task_result_msg(isle_task *t)
{
    /* By `state`, not `ended`: finish_locked stores `ended` after `state`,
     * so a caller that saw a final isle_task_state() could still find
     * `ended` 0 here and take a finished task for one without a result. */
    if (!is_final(atomic_load_explicit(&t->state, memory_order_acquire))) return NULL;
    return t->result;
}

const char *isle_task_result(isle_task *t, size_t *len)
{
    const isle_msg *m = isle_task_result_msg(t);
    if (len) *len = m ? m->len : 0;
    return m && m->len ? m->data : NULL;
}

int isle_task_subscribe(isle_task *t, isle_mbox *mb) { return isle_task_watch(t, mb, NULL); }

int isle_task_watch(isle_task *t, isle_mbox *mb, isle_sig *sig)
{
    if (atomic_load_explicit(&t->ended, memory_order_acquire)) return 0;
    isle_done *d = malloc(sizeof(*d));
    if (!d) return -1;
    int subscribed = 0;
    pthread_mutex_lock(&t->mu);
    if (!atomic_load(&t->ended)) {
        isle_task_retain(t);
        isle_mbox_retain(mb);
        if (sig) isle_sig_retain(sig);
        d->task = t;
        d->mbox = mb;
        d->sig = sig;
        d->next = t->subs;
        t->subs = d;
        subscribed = 1;
    }
    pthread_mutex_unlock(&t->mu);
    if (!subscribed) free(d);
    return subscribed;
}

int isle_task_unwatch(isle_task *t, isle_mbox *mb, isle_sig *sig)
{
    isle_done *d = NULL;
    pthread_mutex_lock(&t->mu);
    for (isle_done **pp = &t->subs; *pp; pp = &(*pp)->next)
        if ((*pp)->mbox == mb && (*pp)->sig == sig) {
            d = *pp;
            *pp = d->next;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    if (!d) return 0;
    /* Released outside the task lock: the last reference to the mailbox may
     * go here, and freeing it ends its queued tasks (their locks). */
    isle_sig_release(d->sig);
    isle_mbox_release(d->mbox);
    free(d);
    isle_task_release(t); /* the subscription's: may be the last one */
    return 1;
}

int isle_task_unsubscribe(isle_task *t, isle_mbox *mb) { return isle_task_unwatch(t, mb, NULL); }

void isle_done_free_list(isle_done *head)
{
    while (head) {
        isle_done *next = head->next;
        isle_task_release(head->task);
        free(head);
        head = next;
    }
}

int isle_task_cancel(isle_task *t) { return isle_task_cancel_reason(t, ISLE_CANCEL_USER); }

int isle_task_cancel_reason(isle_task *t, int reason)
{
    if (reason != ISLE_CANCEL_USER && reason != ISLE_CANCEL_TIMEOUT) return -1;
    isle_sig *sig = NULL;
    isle_done *subs = NULL;
    pthread_mutex_lock(&t->mu);
    int state = atomic_load(&t->state);
    /* The first reason sticks: a timed-out task stays timed out. */
    int none = ISLE_CANCEL_NONE;
    if (!is_final(state)) atomic_compare_exchange_strong(&t->cancel, &none, reason);
    if (state == ISLE_TASK_RUNNING && t->sig) isle_sig_raise(t->sig);
    /* A queued task ends here, through the same path as any completion, so
     * its waiters and subscribers are told exactly once; the worker will
     * find it ended and skip it. */
    if (state == ISLE_TASK_QUEUED) finish_locked(t, ISLE_TASK_CANCELLED, NULL, &sig, &subs);
    pthread_mutex_unlock(&t->mu);
    if (state == ISLE_TASK_QUEUED) after_finish(t, sig, subs);
    return state;
}
