/* mbox.c - bounded multi-producer mailbox plus a list of completion notices.
 *
 * Messages arrive without a lock: a producer reserves a place in `count`
 * (a compare-and-swap under `capacity`) and links its message onto `inbox`,
 * a stack pushed with a compare-and-swap (newest first). The consumer takes
 * the whole stack with one compare-and-swap and reverses it, so it gets the
 * messages in the order their pushes happened. A producer never waits for
 * the consumer's lock and the consumer takes a batch without one: with a
 * lock taken on both sides, two threads streaming through a mailbox traded
 * it for nearly every message, and each contended hand-off cost a futex
 * sleep and wake (about 1 M futex calls for 3 M messages, bench/README.md).
 *
 * The mutex guards the rest: notices, wakes, parking, the close, the fd.
 * `pending` mirrors "a notice, a wake or a close is waiting" so that the
 * consumer can spin on it (and on `inbox`) without the lock before parking,
 * and take a batch of messages alone when nothing else waits. Producers
 * only signal when a consumer is parked, and only the push that makes the
 * inbox non-empty looks: a consumer parks only after finding the inbox
 * empty, so the push that fills it is the one that must wake it.
 *
 * The close swaps `inbox` for INBOX_CLOSED under the lock and moves what
 * was there onto the locked list: a push either linked its message before
 * that swap (the message is taken after the close, as before) or finds the
 * mark and fails with ISLE_ECLOSED; none lands after the close.
 */
#include "internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* The inbox of a closed mailbox: the address of an object that is never
 * a message pushed. */
static isle_msg inbox_closed_mark;
#define INBOX_CLOSED (&inbox_closed_mark)

/* The first line holds what both sides touch for every message: the inbox,
 * the count, and the words a producer reads after filling an empty inbox. */
struct isle_mbox {
    _Atomic(isle_msg *) inbox; /* pushed, not yet taken: newest first; INBOX_CLOSED once closed */
    atomic_size_t count;       /* places reserved by producers and not yet handed out */
    atomic_int pending;        /* 1 while a notice, a wake or the close is waiting (set under mu) */
    atomic_int parked;         /* consumers parked or parking (changed under mu) */
    atomic_int blocked;        /* producers waiting for room (changed under mu) */
    int has_fd;                /* made with an fd: set once, read without mu */
    size_t capacity;
    pthread_mutex_t mu;
    isle_msg *head,
        *tail; /* taken from the inbox (by the close, or a locked wait), not handed out */
    size_t head_n;
    isle_done *done_head, *done_tail;
    int woken; /* isle_mbox_wake was called */
    atomic_int closed;
    int efd;        /* eventfd, or a socket (isle_mbox_notify_socket) */
    int efd_socket; /* efd is a socket: write one byte, never read */
    int efd_armed;  /* efd holds an unread wake-up */
    atomic_int refs;
    pthread_cond_t ready; /* consumer waits here */
    pthread_cond_t room;  /* producers wait here for space */
};

isle_mbox *isle_mbox_new(size_t capacity, int with_fd)
{
    if (capacity == 0) return NULL;
    isle_mbox *mb = calloc(1, sizeof(*mb));
    if (!mb) return NULL;
    mb->efd = -1;
    if (pthread_mutex_init(&mb->mu, NULL)) goto fail_mu;
    if (isle_cond_init(&mb->ready)) goto fail_ready;
    if (isle_cond_init(&mb->room)) goto fail_room;
    if (with_fd) {
        mb->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (mb->efd < 0) goto fail_fd;
        mb->has_fd = 1;
    }
    atomic_init(&mb->inbox, NULL);
    atomic_init(&mb->refs, 1);
    mb->capacity = capacity;
    return mb;
fail_fd:
    pthread_cond_destroy(&mb->room);
fail_room:
    pthread_cond_destroy(&mb->ready);
fail_ready:
    pthread_mutex_destroy(&mb->mu);
fail_mu:
    free(mb);
    return NULL;
}

void isle_mbox_retain(isle_mbox *mb)
{
    atomic_fetch_add_explicit(&mb->refs, 1, memory_order_relaxed);
}

/* Reverses a stack taken from the inbox into push order; its length in *n
 * and its last message in *last. */
static isle_msg *reverse(isle_msg *m, size_t *n, isle_msg **last)
{
    isle_msg *out = NULL;
    size_t k = 0;
    *last = m;
    while (m) {
        isle_msg *next = m->next;
        m->next = out;
        out = m;
        m = next;
        k++;
    }
    *n = k;
    return out;
}

/* Takes the inbox, leaving it empty (or closed, if it was): NULL if there
 * was nothing. Several consumers may race here; each message goes to one. */
static isle_msg *take_inbox(isle_mbox *mb)
{
    isle_msg *in = atomic_load_explicit(&mb->inbox, memory_order_acquire);
    do {
        if (!in || in == INBOX_CLOSED) return NULL;
    } while (!atomic_compare_exchange_weak_explicit(&mb->inbox, &in, NULL, memory_order_acquire,
                                                    memory_order_acquire));
    return in;
}

/* Moves the inbox onto the locked list, behind what is there (mu held).
 * `rest` is the stack already taken from it, or NULL to take it now. */
static void inbox_to_list_locked(isle_mbox *mb, isle_msg *rest)
{
    if (!rest) rest = take_inbox(mb);
    if (!rest) return;
    size_t n;
    isle_msg *last;
    isle_msg *first = reverse(rest, &n, &last);
    if (mb->tail) mb->tail->next = first;
    else mb->head = first;
    mb->tail = last;
    mb->head_n += n;
}

void isle_mbox_release(isle_mbox *mb)
{
    if (!mb) return;
    if (atomic_fetch_sub_explicit(&mb->refs, 1, memory_order_acq_rel) != 1) return;
    inbox_to_list_locked(mb, NULL); /* the last reference: nobody else is here */
    /* Nothing will ever take these: their tasks end CLOSED, exactly once. */
    for (isle_msg *m = mb->head; m; m = m->next)
        if (m->task) isle_task_complete(m->task, ISLE_TASK_CLOSED, NULL, 0);
    isle_msg_free_list(mb->head);
    isle_done_free_list(mb->done_head);
    if (mb->efd >= 0) close(mb->efd);
    pthread_cond_destroy(&mb->room);
    pthread_cond_destroy(&mb->ready);
    pthread_mutex_destroy(&mb->mu);
    free(mb);
}

/* Makes efd readable unless it is already (mu held). One unread wake-up
 * stands for any number of arrivals. */
static void arm_fd(isle_mbox *mb)
{
    if (mb->efd < 0 || mb->efd_armed) return;
    if (mb->efd_socket) {
        /* The reader drains the socket itself. MSG_NOSIGNAL: a reader gone
         * (its process exiting) must not bring SIGPIPE to this thread. */
        ssize_t rc = send(mb->efd, "!", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)rc;
    } else {
        uint64_t one = 1;
        /* EAGAIN only when the counter is saturated: it is readable anyway. */
        ssize_t rc = write(mb->efd, &one, sizeof(one));
        (void)rc;
    }
    mb->efd_armed = 1;
}

/* Called with mu held after adding a notice or a wake for the consumer. */
static void signal_consumer(isle_mbox *mb)
{
    /* Under mu, `pending` is 1 exactly when a notice or a wake waits
     * (every addition sets it, a locked take or an empty return clears
     * it), and a consumer parks only when there is none. So only the
     * addition that sets it has a parked consumer to wake: the ones after it
     * would signal a consumer already woken (a futex call each while it
     * gets back on a CPU), and would rewrite a line the consumer spins on. */
    if (atomic_load_explicit(&mb->pending, memory_order_relaxed)) return;
    atomic_store(&mb->pending, 1);
    if (atomic_load_explicit(&mb->parked, memory_order_relaxed)) pthread_cond_signal(&mb->ready);
    arm_fd(mb);
}

/* The push that made the inbox non-empty: wake a parked consumer and arm
 * the fd. A consumer counts itself in `parked` before it looks at the inbox
 * a last time, and this push read `parked` after linking its message (both
 * sequentially consistent): one of the two sees the other. Under mu, as the
 * consumer holds it from that last look until it sleeps. */
static void wake_for_inbox(isle_mbox *mb)
{
    if (!atomic_load(&mb->parked) && !mb->has_fd) return;
    pthread_mutex_lock(&mb->mu);
    isle_msg *in = atomic_load_explicit(&mb->inbox, memory_order_relaxed);
    /* Taken already (the consumer was spinning): nothing to announce. The
     * push that fills the inbox next will look again. */
    if (in && in != INBOX_CLOSED) {
        if (atomic_load_explicit(&mb->parked, memory_order_relaxed))
            pthread_cond_signal(&mb->ready);
        arm_fd(mb);
    }
    pthread_mutex_unlock(&mb->mu);
}

/* Reserves a place under the capacity: 0 if the mailbox is full. */
static int reserve(isle_mbox *mb)
{
    size_t c = atomic_load_explicit(&mb->count, memory_order_relaxed);
    do {
        if (c >= mb->capacity) return 0;
    } while (!atomic_compare_exchange_weak(&mb->count, &c, c + 1));
    return 1;
}

/* Gives back `n` places and lets producers waiting for room try again. A
 * producer counts itself in `blocked` under mu before it tries a last time
 * (sequentially consistent, as this count and read): one of the two sees the
 * other, and mu makes the broadcast reach it asleep. */
static void unreserve(isle_mbox *mb, size_t n, int locked)
{
    atomic_fetch_sub(&mb->count, n);
    if (!atomic_load(&mb->blocked)) return;
    if (!locked) pthread_mutex_lock(&mb->mu);
    pthread_cond_broadcast(&mb->room);
    if (!locked) pthread_mutex_unlock(&mb->mu);
}

/* Links `m`, its place reserved: ISLE_ECLOSED if the mailbox closed
 * meanwhile (the place is given back and `m` left to the caller). */
static int link_msg(isle_mbox *mb, isle_msg *m)
{
    isle_msg *in = atomic_load_explicit(&mb->inbox, memory_order_relaxed);
    do {
        if (in == INBOX_CLOSED) {
            unreserve(mb, 1, 0);
            return ISLE_ECLOSED;
        }
        m->next = in;
    } while (!atomic_compare_exchange_weak_explicit(&mb->inbox, &in, m, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (!in) wake_for_inbox(mb);
    return ISLE_OK;
}

/* The push that finds the mailbox full or closed: waits for room as
 * `timeout` allows. Out of line, so that the common push carries none of
 * its state. */
__attribute__((noinline)) static int push_slow(isle_mbox *mb, isle_msg *m, double timeout)
{
    int rc = ISLE_OK;
    struct timespec dl = {0, 0};
    int have_dl = 0; /* the clock is read only if the push has to wait */
    pthread_mutex_lock(&mb->mu);
    for (;;) {
        if (atomic_load(&mb->closed)) {
            rc = ISLE_ECLOSED;
            break;
        }
        if (reserve(mb)) {
            pthread_mutex_unlock(&mb->mu);
            return link_msg(mb, m);
        }
        if (timeout == 0) {
            rc = ISLE_EBUSY;
            break;
        }
        if (timeout > 0 && !have_dl) {
            dl = isle_deadline(timeout);
            have_dl = 1;
        }
        atomic_fetch_add(&mb->blocked, 1);
        /* A last look after counting ourselves: see unreserve. */
        if (!atomic_load(&mb->closed) && reserve(mb)) {
            atomic_fetch_sub(&mb->blocked, 1);
            pthread_mutex_unlock(&mb->mu);
            return link_msg(mb, m);
        }
        int w = timeout > 0 ? pthread_cond_timedwait(&mb->room, &mb->mu, &dl)
                            : pthread_cond_wait(&mb->room, &mb->mu);
        atomic_fetch_sub(&mb->blocked, 1);
        if (w == ETIMEDOUT) {
            if (atomic_load(&mb->closed)) {
                rc = ISLE_ECLOSED;
            } else if (reserve(mb)) {
                pthread_mutex_unlock(&mb->mu);
                return link_msg(mb, m);
            } else {
                rc = ISLE_EBUSY;
            }
            break;
        }
    }
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

int isle_mbox_push(isle_mbox *mb, isle_msg *m, double timeout)
{
    if (!reserve(mb)) return push_slow(mb, m, timeout);
    return link_msg(mb, m);
}

void isle_mbox_post_done(isle_done *d)
{
    isle_mbox *mb = d->mbox;
    d->next = NULL;
    if (d->sig) {
        /* Before the notice lands, so a compiled loop sees it at once. */
        isle_sig_raise(d->sig);
        isle_sig_release(d->sig);
        d->sig = NULL;
    }
    pthread_mutex_lock(&mb->mu);
    if (mb->done_tail) mb->done_tail->next = d;
    else mb->done_head = d;
    mb->done_tail = d;
    signal_consumer(mb);
    pthread_mutex_unlock(&mb->mu);
    isle_mbox_release(mb); /* the subscription's reference */
}

void isle_mbox_wake(isle_mbox *mb)
{
    pthread_mutex_lock(&mb->mu);
    mb->woken = 1;
    signal_consumer(mb);
    pthread_mutex_unlock(&mb->mu);
}

static int inbox_full(isle_mbox *mb)
{
    isle_msg *in = atomic_load_explicit(&mb->inbox, memory_order_acquire);
    return in && in != INBOX_CLOSED;
}

static int has_work(isle_mbox *mb) { return mb->head || mb->done_head || mb->woken; }

/* Something for the consumer: a message, or a notice, a wake or the close. */
static int work_waiting(const void *p)
{
    isle_mbox *mb = (isle_mbox *)p;
    return inbox_full(mb) || atomic_load_explicit(&mb->pending, memory_order_acquire);
}

int isle_mbox_wait(isle_mbox *mb, double timeout, isle_msg **msgs, isle_done **done)
{
    *msgs = NULL;
    *done = NULL;
    if (timeout != 0) isle_spin_for(work_waiting, mb, timeout);
    /* Only messages waiting: take them without the lock. A notice, a wake
     * or the close (`pending`), messages the close moved, or an fd to drain
     * go through the lock. */
    if (!mb->has_fd && !atomic_load_explicit(&mb->pending, memory_order_acquire)) {
        isle_msg *in = take_inbox(mb);
        if (in) {
            size_t n;
            isle_msg *last;
            *msgs = reverse(in, &n, &last);
            unreserve(mb, n, 0);
            return ISLE_OK;
        }
    }
    struct timespec dl = {0, 0};
    int have_dl = 0;
    int rc = ISLE_OK;
    pthread_mutex_lock(&mb->mu);
    for (;;) {
        inbox_to_list_locked(mb, NULL);
        if (has_work(mb)) break;
        if (timeout == 0) {
            rc = atomic_load(&mb->closed) ? ISLE_ECLOSED : ISLE_ETIMEOUT;
            goto out;
        }
        if (timeout > 0 && !have_dl) {
            /* From the end of the spin, as before; the clock is read only
             * when the consumer parks. */
            dl = isle_deadline(timeout);
            have_dl = 1;
        }
        atomic_fetch_add(&mb->parked, 1);
        /* A last look after counting ourselves: see wake_for_inbox. */
        if (inbox_full(mb)) {
            atomic_fetch_sub(&mb->parked, 1);
            continue;
        }
        int w = timeout > 0 ? pthread_cond_timedwait(&mb->ready, &mb->mu, &dl)
                            : pthread_cond_wait(&mb->ready, &mb->mu);
        atomic_fetch_sub(&mb->parked, 1);
        if (w == ETIMEDOUT) {
            inbox_to_list_locked(mb, NULL);
            if (!has_work(mb)) {
                rc = atomic_load(&mb->closed) ? ISLE_ECLOSED : ISLE_ETIMEOUT;
                goto out;
            }
            break;
        }
    }
    *msgs = mb->head;
    *done = mb->done_head;
    size_t n = mb->head_n;
    mb->head = mb->tail = NULL;
    mb->head_n = 0;
    mb->done_head = mb->done_tail = NULL;
    mb->woken = 0;
    if (n) unreserve(mb, n, 1);
out:
    atomic_store_explicit(&mb->pending, 0, memory_order_relaxed);
    if (mb->efd >= 0 && mb->efd_armed) {
        if (!mb->efd_socket) {
            uint64_t v;
            ssize_t r = read(mb->efd, &v, sizeof(v));
            (void)r;
        }
        mb->efd_armed = 0;
    }
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

void isle_mbox_close(isle_mbox *mb)
{
    pthread_mutex_lock(&mb->mu);
    atomic_store(&mb->closed, 1);
    /* From here every push fails; what was linked before stays to be taken. */
    isle_msg *in = atomic_exchange(&mb->inbox, INBOX_CLOSED);
    if (in != INBOX_CLOSED) inbox_to_list_locked(mb, in);
    mb->woken = 1; /* a parked consumer returns at once and sees the close */
    atomic_store(&mb->pending, 1);
    pthread_cond_broadcast(&mb->ready);
    pthread_cond_broadcast(&mb->room);
    arm_fd(mb);
    pthread_mutex_unlock(&mb->mu);
}

int isle_mbox_notify_socket(isle_mbox *mb, int fd)
{
    if (fd < 0) return ISLE_EINVAL;
    pthread_mutex_lock(&mb->mu);
    if (mb->efd < 0) {
        pthread_mutex_unlock(&mb->mu);
        close(fd);
        return ISLE_EINVAL;
    }
    /* Closing the eventfd here is safe: every write to it happens under mu. */
    close(mb->efd);
    mb->efd = fd;
    mb->efd_socket = 1;
    mb->efd_armed = 0;
    if (has_work(mb) || inbox_full(mb)) arm_fd(mb); /* what arrived before the switch */
    pthread_mutex_unlock(&mb->mu);
    return ISLE_OK;
}

int isle_mbox_is_closed(isle_mbox *mb) { return atomic_load(&mb->closed); }
size_t isle_mbox_count(isle_mbox *mb) { return atomic_load(&mb->count); }
int isle_mbox_fd(isle_mbox *mb) { return mb->efd; }
pthread_mutex_t *isle_mbox_lock_of(isle_mbox *mb) { return &mb->mu; }
