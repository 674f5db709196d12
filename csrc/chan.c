/* chan.c - channels: bounded many-producer many-consumer queues of messages.
 *
 * A channel's lifetime is the one of a task slot, its `anchor` (the slot
 * owns the channel: isle_task_set_owner). So a channel travels in a
 * message's refs exactly like a token, and the message, read or not, lets
 * go of it; isle_chan_retain/release are the anchor's.
 *
 * Waiting is wake-and-retry, not hand-off: a pop that finds the channel
 * empty (a push that finds it full) may leave a waiter, a fresh task slot
 * the caller waits on by any means it waits on tasks (an isle job yields to
 * its loop, a host blocks or suspends through its hub). A push completes the
 * oldest live pop waiter (a pop that makes room, the oldest push waiter) and
 * the woken caller tries again. Values never sit in a waiter, so a waiter
 * that gives up loses nothing; one that gives up after it was woken passes
 * the wake on (isle_chan_unwait), so no value stays queued while a popper
 * waits. Lock order: channel lock -> task lock (completing a waiter).
 */
#include "internal.h"

#include <stdlib.h>

typedef struct chan_waiter {
    struct chan_waiter *next;
    isle_task *task; /* one reference, the list's */
} chan_waiter;

typedef struct chan_wlist {
    chan_waiter *head, *tail;
} chan_wlist;

/* A queued value: a message, or a number carried inline (m NULL), which
 * costs no allocation: the common case of integers between two threads
 * would otherwise malloc in one thread and free in the other. */
typedef struct chan_slot {
    isle_msg *m;
    double num;
} chan_slot;

struct isle_chan {
    isle_task *anchor; /* holds the channel's references */
    pthread_mutex_t mu;
    size_t cap, head, count;
    chan_slot *ring;             /* cap slots; count from head (mu) */
    int closed;                  /* (mu) */
    atomic_size_t len;           /* mirror of count for isle_chan_len without the lock */
    chan_wlist poppers, pushers; /* (mu) */
    isle_mem *mem; /* the creator's account, charged for the ring (isle_chan_charge) */
};

static void wlist_push(chan_wlist *l, chan_waiter *w)
{
    w->next = NULL;
    if (l->tail) l->tail->next = w;
    else l->head = w;
    l->tail = w;
}

static chan_waiter *wlist_take(chan_wlist *l)
{
    chan_waiter *w = l->head;
    if (w) {
        l->head = w->next;
        if (!l->head) l->tail = NULL;
    }
    return w;
}

/* Wakes the oldest waiter of `l` that is still waiting (mu held): a waiter
 * whose slot ended otherwise (cancelled) is skipped. */
static void wake_one(chan_wlist *l)
{
    chan_waiter *w;
    while ((w = wlist_take(l))) {
        int won = isle_task_complete(w->task, ISLE_TASK_DONE, NULL, 0);
        isle_task_release(w->task);
        free(w);
        if (won) return;
    }
}

static void wake_all(chan_wlist *l, int state)
{
    chan_waiter *w;
    while ((w = wlist_take(l))) {
        isle_task_complete(w->task, state, NULL, 0);
        isle_task_release(w->task);
        free(w);
    }
}

/* The anchor's last reference went: nobody can reach the channel. */
static void chan_free(void *arg)
{
    isle_chan *ch = arg;
    for (size_t i = 0; i < ch->count; i++) isle_msg_free(ch->ring[(ch->head + i) % ch->cap].m);
    /* Waiters of a Lua caller hold the channel, so these are only left by a
     * caller that vanished mid-wait (a job stopped while waiting). */
    wake_all(&ch->poppers, ISLE_TASK_CLOSED);
    wake_all(&ch->pushers, ISLE_TASK_CLOSED);
    pthread_mutex_destroy(&ch->mu);
    isle_mem_let_go(&ch->mem, ch->cap * sizeof(*ch->ring));
    free(ch->ring);
    free(ch);
}

isle_chan *isle_chan_new(size_t capacity)
{
    if (capacity == 0 || capacity > ISLE_CHAN_CAP_MAX) return NULL;
    isle_chan *ch = calloc(1, sizeof(*ch));
    if (!ch) return NULL;
    ch->ring = malloc(capacity * sizeof(*ch->ring));
    if (!ch->ring) goto fail_ring;
    if (pthread_mutex_init(&ch->mu, NULL)) goto fail_mu;
    ch->anchor = isle_task_new();
    if (!ch->anchor) goto fail_anchor;
    ch->cap = capacity;
    atomic_init(&ch->len, 0);
    isle_task_set_owner(ch->anchor, chan_free, ch);
    return ch;
fail_anchor:
    pthread_mutex_destroy(&ch->mu);
fail_mu:
    free(ch->ring);
fail_ring:
    free(ch);
    return NULL;
}

int isle_chan_charge(isle_chan *ch, isle_mem *a)
{
    return isle_mem_hold(&ch->mem, a, ch->cap * sizeof(*ch->ring));
}

void isle_chan_retain(isle_chan *ch) { isle_task_retain(ch->anchor); }

void isle_chan_release(isle_chan *ch)
{
    if (ch) isle_task_release(ch->anchor);
}

isle_task *isle_chan_ref(isle_chan *ch) { return ch->anchor; }

isle_chan *isle_chan_of_ref(isle_task *t)
{
    isle_chan *ch = isle_task_owner(t, chan_free);
    if (ch) isle_chan_retain(ch);
    return ch;
}

/* A new waiter on `l` (mu held): its slot, retained for the caller. */
static int add_waiter(chan_wlist *l, isle_task **waiter)
{
    chan_waiter *w = malloc(sizeof(*w));
    if (!w) return ISLE_ENOMEM;
    w->task = isle_task_new();
    if (!w->task) {
        free(w);
        return ISLE_ENOMEM;
    }
    isle_task_retain(w->task);
    *waiter = w->task;
    wlist_push(l, w);
    return ISLE_EBUSY;
}

static int push_slot(isle_chan *ch, isle_msg *m, double num, isle_task **waiter)
{
    int rc = ISLE_OK;
    pthread_mutex_lock(&ch->mu);
    if (ch->closed) {
        rc = ISLE_ECLOSED;
    } else if (ch->count == ch->cap) {
        rc = waiter ? add_waiter(&ch->pushers, waiter) : ISLE_EBUSY;
    } else {
        chan_slot *slot = &ch->ring[(ch->head + ch->count) % ch->cap];
        if (m) m->next = NULL;
        slot->m = m;
        slot->num = num;
        ch->count++;
        atomic_store_explicit(&ch->len, ch->count, memory_order_relaxed);
        if (ch->poppers.head) wake_one(&ch->poppers);
    }
    pthread_mutex_unlock(&ch->mu);
    return rc;
}

int isle_chan_push(isle_chan *ch, isle_msg *m, isle_task **waiter)
{
    return push_slot(ch, m, 0, waiter);
}

int isle_chan_push_num(isle_chan *ch, double num, isle_task **waiter)
{
    return push_slot(ch, NULL, num, waiter);
}

int isle_chan_pop(isle_chan *ch, isle_msg **out, double *num, isle_task **waiter)
{
    int rc = ISLE_OK;
    *out = NULL;
    pthread_mutex_lock(&ch->mu);
    if (ch->count) {
        chan_slot *slot = &ch->ring[ch->head];
        *out = slot->m;
        *num = slot->num;
        ch->head = (ch->head + 1) % ch->cap;
        ch->count--;
        atomic_store_explicit(&ch->len, ch->count, memory_order_relaxed);
        if (ch->pushers.head) wake_one(&ch->pushers);
    } else if (ch->closed) {
        rc = ISLE_ECLOSED;
    } else {
        rc = waiter ? add_waiter(&ch->poppers, waiter) : ISLE_EBUSY;
    }
    pthread_mutex_unlock(&ch->mu);
    return rc;
}

int isle_chan_unwait(isle_chan *ch, isle_task *waiter)
{
    int found = 0;
    chan_waiter *gone = NULL;
    pthread_mutex_lock(&ch->mu);
    chan_wlist *lists[2] = {&ch->poppers, &ch->pushers};
    for (int i = 0; i < 2 && !found; i++) {
        chan_wlist *l = lists[i];
        chan_waiter *prev = NULL;
        for (chan_waiter *w = l->head; w; prev = w, w = w->next) {
            if (w->task != waiter) continue;
            if (prev) prev->next = w->next;
            else l->head = w->next;
            if (l->tail == w) l->tail = prev;
            gone = w;
            found = 1;
            break;
        }
    }
    if (!found && isle_task_state(waiter) == ISLE_TASK_DONE && !ch->closed) {
        /* Woken, and giving up: the wake was meant for someone, pass it on. */
        if (ch->count && ch->poppers.head) wake_one(&ch->poppers);
        if (ch->count < ch->cap && ch->pushers.head) wake_one(&ch->pushers);
    }
    pthread_mutex_unlock(&ch->mu);
    if (gone) {
        isle_task_cancel(gone->task);
        isle_task_release(gone->task);
        free(gone);
    }
    return found;
}

void isle_chan_close(isle_chan *ch)
{
    pthread_mutex_lock(&ch->mu);
    ch->closed = 1;
    wake_all(&ch->poppers, ISLE_TASK_DONE);
    wake_all(&ch->pushers, ISLE_TASK_DONE);
    pthread_mutex_unlock(&ch->mu);
}

int isle_chan_is_closed(isle_chan *ch)
{
    pthread_mutex_lock(&ch->mu);
    int c = ch->closed;
    pthread_mutex_unlock(&ch->mu);
    return c;
}

size_t isle_chan_len(isle_chan *ch) { return atomic_load_explicit(&ch->len, memory_order_relaxed); }

size_t isle_chan_cap(isle_chan *ch) { return ch->cap; }

#ifndef SPIN_PAUSES
#define SPIN_PAUSES 16
#endif

int isle_chan_spin(isle_chan *ch, int for_room)
{
    /* The length is read without the lock: a hint, the retry decides. A
     * waiter costs a slot, a subscription and a trip through the caller's
     * loop, so a short spin pays while the other side is active. */
    double budget = isle_get_spin();
    if (budget <= 0) return 0;
    double end = isle_now() + budget;
    for (unsigned i = 0;; i++) {
        size_t n = atomic_load_explicit(&ch->len, memory_order_relaxed);
        if (for_room ? n < ch->cap : n > 0) return 1;
        if ((i & 7) == 7 && isle_now() >= end) return 0;
        /* Read rarely: each read pulls the line the other side writes. */
        for (int k = 0; k < SPIN_PAUSES; k++) isle_cpu_relax();
    }
}
