/* mbox.c - bounded multi-producer mailbox plus a list of completion notices.
 *
 * One mutex guards both lists. `pending` mirrors "something to take" so the
 * consumer can spin on it without the lock before parking; producers only
 * signal when a consumer is actually parked. A consumer takes everything in
 * one go, so one wake-up may stand for many messages and completions.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* `pending`, the word a consumer spins on, shares its cache line with the
 * lock: a consumer that sees it set takes the lock next, and clears it
 * under the lock, so one line moves per hand-off instead of two. */
struct isle_mbox {
    atomic_int pending; /* 1 while a message, a notice or a wake is waiting */
    pthread_mutex_t mu;
    isle_msg *head, *tail;
    isle_done *done_head, *done_tail;
    atomic_size_t count; /* written under mu; read without it */
    size_t capacity;
    int parked;  /* consumers in cond_wait */
    int blocked; /* producers in cond_wait */
    int woken;   /* isle_mbox_wake was called */
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
    }
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

void isle_mbox_release(isle_mbox *mb)
{
    if (!mb) return;
    if (atomic_fetch_sub_explicit(&mb->refs, 1, memory_order_acq_rel) != 1) return;
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

/* Called with mu held after adding something for the consumer. */
static void signal_consumer(isle_mbox *mb)
{
    /* Under mu, `pending` is 1 exactly when there is work (every addition
     * sets it, a take or an empty return clears it), and a consumer parks
     * only when there is none. So only the addition that makes the mailbox
     * non-empty has a parked consumer to wake: the ones after it would
     * signal a consumer already woken (a futex call each while it gets
     * back on a CPU), and would rewrite a line the consumer spins on. */
    if (atomic_load_explicit(&mb->pending, memory_order_relaxed)) return;
    atomic_store_explicit(&mb->pending, 1, memory_order_release);
    if (mb->parked) pthread_cond_signal(&mb->ready);
    arm_fd(mb);
}

/* Links `m` at the tail (mu held, the mailbox open and not full). */
static void enqueue(isle_mbox *mb, isle_msg *m)
{
    m->next = NULL;
    if (mb->tail) mb->tail->next = m;
    else mb->head = m;
    mb->tail = m;
    /* Only ever changed under mu: a plain increment, no locked RMW. */
    atomic_store_explicit(&mb->count, atomic_load_explicit(&mb->count, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    signal_consumer(mb);
}

/* The push that finds the mailbox full or closed (mu held; drops it):
 * waits for room as `timeout` allows. Out of line, so that the common push
 * carries none of its state. */
__attribute__((noinline)) static int push_slow(isle_mbox *mb, isle_msg *m, double timeout)
{
    int rc = ISLE_OK;
    struct timespec dl = {0, 0};
    int have_dl = 0; /* the clock is read only if the push has to wait */
    while (!atomic_load(&mb->closed) && atomic_load(&mb->count) >= mb->capacity) {
        if (timeout == 0) {
            rc = ISLE_EBUSY;
            goto out;
        }
        if (timeout > 0 && !have_dl) {
            dl = isle_deadline(timeout);
            have_dl = 1;
        }
        mb->blocked++;
        int w = timeout > 0 ? pthread_cond_timedwait(&mb->room, &mb->mu, &dl)
                            : pthread_cond_wait(&mb->room, &mb->mu);
        mb->blocked--;
        if (w == ETIMEDOUT && atomic_load(&mb->count) >= mb->capacity
            && !atomic_load(&mb->closed)) {
            rc = ISLE_EBUSY;
            goto out;
        }
    }
    if (atomic_load(&mb->closed)) {
        rc = ISLE_ECLOSED;
        goto out;
    }
    enqueue(mb, m);
out:
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

int isle_mbox_push(isle_mbox *mb, isle_msg *m, double timeout)
{
    pthread_mutex_lock(&mb->mu);
    if (atomic_load_explicit(&mb->closed, memory_order_relaxed)
        || atomic_load_explicit(&mb->count, memory_order_relaxed) >= mb->capacity)
        return push_slow(mb, m, timeout);
    enqueue(mb, m);
    pthread_mutex_unlock(&mb->mu);
    return ISLE_OK;
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

static int has_work(isle_mbox *mb) { return mb->head || mb->done_head || mb->woken; }

int isle_mbox_wait(isle_mbox *mb, double timeout, isle_msg **msgs, isle_done **done)
{
    *msgs = NULL;
    *done = NULL;
    if (timeout != 0) isle_spin_until(&mb->pending, timeout);
    struct timespec dl = {0, 0};
    int have_dl = 0;
    int rc = ISLE_OK;
    pthread_mutex_lock(&mb->mu);
    while (!has_work(mb)) {
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
        mb->parked++;
        int w = timeout > 0 ? pthread_cond_timedwait(&mb->ready, &mb->mu, &dl)
                            : pthread_cond_wait(&mb->ready, &mb->mu);
        mb->parked--;
        if (w == ETIMEDOUT && !has_work(mb)) {
            rc = atomic_load(&mb->closed) ? ISLE_ECLOSED : ISLE_ETIMEOUT;
            goto out;
        }
    }
    *msgs = mb->head;
    *done = mb->done_head;
    mb->head = mb->tail = NULL;
    mb->done_head = mb->done_tail = NULL;
    mb->woken = 0;
    atomic_store(&mb->count, 0);
    if (mb->blocked) pthread_cond_broadcast(&mb->room);
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
    if (has_work(mb)) arm_fd(mb); /* what arrived before the switch */
    pthread_mutex_unlock(&mb->mu);
    return ISLE_OK;
}

int isle_mbox_is_closed(isle_mbox *mb) { return atomic_load(&mb->closed); }
size_t isle_mbox_count(isle_mbox *mb) { return atomic_load(&mb->count); }
int isle_mbox_fd(isle_mbox *mb) { return mb->efd; }
