/* clock.c - monotonic time, deadlines, the bounded spin used before parking
 * and the futex calls that park and wake. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Spin budget before a waiter parks. ~60 µs is what a parked thread takes to
 * wake on an idle vCPU here, so spinning about that long turns most
 * back-to-back round trips into sub-microsecond hand-offs, and an idle
 * thread pays it once before it sleeps. */
static _Atomic double spin_budget = 50e-6;

void isle_set_spin(double seconds)
{
    if (!(seconds >= 0)) seconds = 0;
    if (seconds > 0.01) seconds = 0.01;
    atomic_store(&spin_budget, seconds);
}

double isle_get_spin(void) { return atomic_load(&spin_budget); }

_Thread_local unsigned isle_spin_gap = 1;

/* A yield that took long let another thread run on this core: yield after
 * every round while that goes on; one that came straight back was a system
 * call for nothing, so the next comes twice as many rounds later. */
void isle_spin_yielded(double took)
{
    if (took > ISLE_SPIN_YIELD_BUSY) isle_spin_gap = 1;
    else if (isle_spin_gap < ISLE_SPIN_YIELD_MAX) isle_spin_gap *= 2;
}

double isle_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double isle_now_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timespec isle_deadline(double timeout)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout > 1e9) timeout = 1e9;
    double whole = floor(timeout);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((timeout - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* One attribute object for every condition variable: made once, as
 * building it takes three calls that a task slot (one per call) would pay
 * each time. */
static pthread_condattr_t cond_attr;
static int cond_attr_rc;
static pthread_once_t cond_attr_once = PTHREAD_ONCE_INIT;

static void cond_attr_init(void)
{
    cond_attr_rc = pthread_condattr_init(&cond_attr);
    if (!cond_attr_rc) cond_attr_rc = pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
}

int isle_cond_init(pthread_cond_t *cv)
{
    pthread_once(&cond_attr_once, cond_attr_init);
    if (cond_attr_rc) return cond_attr_rc;
    return pthread_cond_init(cv, &cond_attr);
}

int isle_futex_wait(atomic_int *word, int expected, const struct timespec *deadline)
{
    /* WAIT_BITSET takes an absolute deadline, on CLOCK_MONOTONIC unless
     * FUTEX_CLOCK_REALTIME is given: the clock of isle_deadline. */
    long rc = syscall(SYS_futex, (int *)word, FUTEX_WAIT_BITSET_PRIVATE, expected, deadline, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    return rc == -1 && errno == ETIMEDOUT ? ETIMEDOUT : 0;
}

void isle_futex_wake_all(atomic_int *word)
{
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int word_set(const void *word)
{
    return atomic_load_explicit((const atomic_int *)word, memory_order_acquire);
}

int isle_spin_until(const atomic_int *word, double timeout)
{
    return isle_spin_for(word_set, word, timeout);
}
