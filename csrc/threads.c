/* threads.c - the OS threads isles run on: a thread whose isle has ended
 * waits a while (parked) and runs the next isle instead of exiting.
 *
 * Why: in this VM, starting a thread and having it run costs ~55 µs of wall
 * time, and its exit (glibc's madvise of the stack, a TLB shootdown, then
 * the kernel's exit) as much again: a third of a spawn + ping + close cycle
 * (bench W6, bench/README.md "Issue 12: parked threads"). A parked thread
 * spins for the spin budget, then sleeps on its own condition variable; a
 * spawn hands it the new isle (one store, and a signal that makes a system
 * call only if it sleeps).
 *
 * Bounds: at most ISLE_THREADS_PARKED threads park; one parked for
 * ISLE_THREADS_LINGER seconds without work exits. A thread parks only if it
 * is as it was made: user code may change its own thread through the FFI
 * (signal mask, name, CPU affinity, nice value, scheduling policy, floating
 * point rounding or traps, locale, alternate signal stack), and the next isle
 * must not inherit that, so such a thread exits as every thread used to.
 *
 * isle_threads_trim makes every parked thread exit and joins it (tests that
 * count threads; the library's destructor, so that nothing isle made still
 * runs at exit). A thread created here is joinable: the one that unlinks it
 * from the parked list decides its end (trim joins it; a thread that leaves
 * on its own detaches itself).
 *
 * The lock is a leaf (isle.h's lock order), held around fork() (fork.c): the
 * child forgets the parked threads, which do not exist there.
 */
#include "internal.h"

#include <errno.h>
#include <fenv.h>
#include <locale.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* What a thread was made as; it parks only while it still is. */
typedef struct made_as {
    sigset_t mask;
    char name[16];
    cpu_set_t cpus;
    int nice, policy, round, traps;
    struct sched_param param;
    locale_t locale;
    int altstack; /* sigaltstack's flags */
} made_as;

/* A parked thread, on its own stack; the list and every field but `handed`
 * under park_lock. */
typedef struct parked {
    struct parked *next;
    pthread_t self;
    pthread_cond_t cv;
    isle_thread_job job; /* the job handed over */
    atomic_int handed;   /* `job` is set: it runs it (it spins on this) */
    int quit;            /* trim: exit now, trim joins */
} parked;

static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static parked *park_head; /* park_lock */
static int nparked;       /* park_lock */
static int no_parking;    /* park_lock: the library is being unloaded (exit) */

static int thread_nice(void)
{
    errno = 0;
    int n = getpriority(PRIO_PROCESS, 0); /* Linux: the calling thread's */
    return errno ? -100 : n;
}

static int altstack_flags(void)
{
    stack_t ss;
    return sigaltstack(NULL, &ss) ? -1 : ss.ss_flags;
}

static void read_made_as(made_as *m)
{
    memset(m, 0, sizeof *m);
    pthread_t self = pthread_self();
    pthread_sigmask(SIG_SETMASK, NULL, &m->mask);
    pthread_getname_np(self, m->name, sizeof m->name);
    pthread_getaffinity_np(self, sizeof m->cpus, &m->cpus);
    m->nice = thread_nice();
    pthread_getschedparam(self, &m->policy, &m->param);
    m->round = fegetround();
    m->traps = fegetexcept();
    m->locale = uselocale((locale_t)0);
    m->altstack = altstack_flags();
}

static int still_as_made(const made_as *m)
{
    made_as now;
    read_made_as(&now);
    return memcmp(&now.mask, &m->mask, sizeof m->mask) == 0 && strcmp(now.name, m->name) == 0
        && CPU_EQUAL(&now.cpus, &m->cpus) && now.nice == m->nice && now.policy == m->policy
        && now.param.sched_priority == m->param.sched_priority && now.round == m->round
        && now.traps == m->traps && now.locale == m->locale && now.altstack == m->altstack;
}

/* Lists `me` as parked (1), or 0 if no more may park. */
static int enlist(parked *me)
{
    pthread_mutex_lock(&park_lock);
    int ok = !no_parking && nparked < ISLE_THREADS_PARKED;
    if (ok) {
        me->quit = 0;
        atomic_store_explicit(&me->handed, 0, memory_order_relaxed);
        me->next = park_head;
        park_head = me;
        nparked++;
    }
    pthread_mutex_unlock(&park_lock);
    return ok;
}

/* Waits, listed, until a job is handed over (1), trim asks it to quit (0,
 * not detached: trim joins it) or it lingered long enough (-1: it unlinks
 * itself). */
static int wait_parked(parked *me)
{
    /* A spawn loop hands the next isle over within the spin budget. */
    if (isle_spin_until(&me->handed, ISLE_THREADS_LINGER)) return 1;

    struct timespec dl = isle_deadline(ISLE_THREADS_LINGER);
    pthread_mutex_lock(&park_lock);
    while (!atomic_load_explicit(&me->handed, memory_order_relaxed) && !me->quit)
        if (pthread_cond_timedwait(&me->cv, &park_lock, &dl) == ETIMEDOUT) break;
    int r;
    if (atomic_load_explicit(&me->handed, memory_order_relaxed)) {
        r = 1;
    } else if (me->quit) {
        r = 0;
    } else {
        /* Still listed: nobody chose it, so it unlinks itself. */
        for (parked **pp = &park_head; *pp; pp = &(*pp)->next)
            if (*pp == me) {
                *pp = me->next;
                break;
            }
        nparked--;
        r = -1;
    }
    pthread_mutex_unlock(&park_lock);
    return r;
}

static void *thread_main(void *arg)
{
    parked me;
    memset(&me, 0, sizeof me);
    me.self = pthread_self();
    me.job = *(isle_thread_job *)arg;
    free(arg);
    made_as made;
    read_made_as(&made);
    int can_park = isle_cond_init(&me.cv) == 0;
    int end; /* wait_parked's answer, -1 if it did not park */
    do {
        me.job.run(me.job.arg);
        /* Listed before its job is declared done, so that the spawn that
         * follows a close finds it; once listed, me.job is the spawner's to
         * fill (the next job, set before `handed`). */
        isle_thread_job finished = me.job;
        int parks = can_park && still_as_made(&made) && enlist(&me);
        finished.done(finished.arg);
        end = parks ? wait_parked(&me) : -1;
    } while (end == 1);
    if (can_park) pthread_cond_destroy(&me.cv);
    if (end != 0) pthread_detach(me.self); /* nobody joins a thread that left on its own */
    return NULL;
}

int isle_threads_start(const isle_thread_job *job)
{
    pthread_mutex_lock(&park_lock);
    parked *p = park_head;
    if (p) {
        park_head = p->next;
        nparked--;
        p->job = *job;
        atomic_store_explicit(&p->handed, 1, memory_order_release);
        pthread_cond_signal(&p->cv); /* no system call unless it sleeps */
    }
    pthread_mutex_unlock(&park_lock);
    if (p) return 0;

    isle_thread_job *first = malloc(sizeof *first);
    if (!first) return ENOMEM;
    *first = *job;
    pthread_t t;
    int rc = pthread_create(&t, NULL, thread_main, first);
    if (rc) free(first);
    return rc;
}

int isle_threads_parked(void)
{
    pthread_mutex_lock(&park_lock);
    int n = nparked;
    pthread_mutex_unlock(&park_lock);
    return n;
}

void isle_threads_trim(void)
{
    pthread_t quitting[ISLE_THREADS_PARKED];
    int n = 0;
    pthread_mutex_lock(&park_lock);
    for (parked *p = park_head; p; p = p->next) {
        p->quit = 1;
        quitting[n++] = p->self;
        pthread_cond_signal(&p->cv);
    }
    park_head = NULL;
    nparked = 0;
    pthread_mutex_unlock(&park_lock);
    for (int k = 0; k < n; k++) pthread_join(quitting[k], NULL);
}

/* At exit (or unload), nothing isle started waits in the background. */
__attribute__((destructor)) static void stop_parking(void)
{
    pthread_mutex_lock(&park_lock);
    no_parking = 1;
    pthread_mutex_unlock(&park_lock);
    isle_threads_trim();
}

void isle_threads_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&park_lock);
        return;
    }
    if (phase == ISLE_FORK_CHILD) {
        /* The parked threads are the parent's: none of them exists here. */
        park_head = NULL;
        nparked = 0;
    }
    pthread_mutex_unlock(&park_lock);
}
