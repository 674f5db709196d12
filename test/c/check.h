/* check.h - a tiny assertion helper for the plain-C tests of the core.
 *
 * CHECK(cond) counts a passed check, or prints file:line and the expression
 * and exits 1 at once (with _Exit, so a failing run is not buried under leak
 * reports of the objects it left behind). CHECK_EQ(a, b) does the same for
 * two integers and prints both values. Checks may run on any thread.
 * check_done() prints the final "N passed, 0 failed" line; return its value
 * from main.
 *
 * SCALE(n) shrinks loop counts under ThreadSanitizer (5-20x slower) so that
 * the whole suite stays quick; AddressSanitizer runs them in full.
 */
#ifndef ISLE_TEST_CHECK_H
#define ISLE_TEST_CHECK_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static atomic_long check_passed_;

static inline void check_fail_(const char *file, int line, const char *expr)
{
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
    fprintf(stderr, "%ld passed, 1 failed\n", atomic_load(&check_passed_));
    fflush(stderr);
    _Exit(1);
}

#define CHECK(cond)                                                   \
    do {                                                              \
        if (cond) atomic_fetch_add_explicit(&check_passed_, 1,        \
                                            memory_order_relaxed);    \
        else check_fail_(__FILE__, __LINE__, #cond);                  \
    } while (0)

#define CHECK_EQ(a, b)                                                \
    do {                                                              \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
        if (check_a_ != check_b_) {                                   \
            fprintf(stderr, "%s:%d: %s is %lld, expected %lld\n",     \
                    __FILE__, __LINE__, #a, check_a_, check_b_);      \
            check_fail_(__FILE__, __LINE__, #a " == " #b);            \
        }                                                             \
        atomic_fetch_add_explicit(&check_passed_, 1, memory_order_relaxed); \
    } while (0)

static inline int check_done(void)
{
    printf("%ld passed, 0 failed\n", atomic_load(&check_passed_));
    fflush(stdout);
    return 0;
}

/* A hung test (a wake-up that never comes) fails instead of blocking the
 * build: each RUN gets CHECK_TIMEOUT seconds. */
#ifndef CHECK_TIMEOUT
#define CHECK_TIMEOUT 60
#endif

static void check_alarm_(int sig)
{
    (void)sig;
    static const char msg[] = "CHECK failed: test still running after "
                              "CHECK_TIMEOUT seconds (hung?)\n";
    ssize_t rc = write(2, msg, sizeof msg - 1);
    (void)rc;
    _Exit(1);
}

/* Run one test function, naming it first so a failure is easy to place. */
#define RUN(fn)                                                       \
    do {                                                              \
        printf("  %s\n", #fn);                                        \
        fflush(stdout);                                               \
        signal(SIGALRM, check_alarm_);                                \
        alarm(CHECK_TIMEOUT);                                         \
        fn();                                                         \
        alarm(0);                                                     \
    } while (0)

/* ---- sanitizer detection and loop scaling ------------------------------- */
#if defined(__SANITIZE_THREAD__)
#define CHECK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CHECK_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CHECK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHECK_ASAN 1
#endif
#endif

#if defined(CHECK_TSAN)
#define SCALE(n) ((n) / 4 > 0 ? (n) / 4 : 1)
#else
#define SCALE(n) (n)
#endif

/* ---- small helpers -------------------------------------------------------- */
static inline void check_sleep(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0) {}
}

/* Waits for a forked child and checks that it exited with status 0. */
static inline void check_child_ok(pid_t pid)
{
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static inline pthread_t check_spawn(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    CHECK(pthread_create(&th, NULL, fn, arg) == 0);
    return th;
}

static inline void check_join(pthread_t th)
{
    CHECK(pthread_join(th, NULL) == 0);
}

/* CPU hogs: threads that keep a CPU busy until check_hogs_stop, for tests
 * of what happens when a thread is preempted or shares its CPU. */
static atomic_int check_hogs_quit_;

static inline void *check_hog_(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&check_hogs_quit_, memory_order_relaxed)) {}
    return NULL;
}

/* Starts n hogs into th[0..n-1]. */
static inline void check_hogs_start(pthread_t *th, int n)
{
    atomic_store(&check_hogs_quit_, 0);
    for (int k = 0; k < n; k++) th[k] = check_spawn(check_hog_, NULL);
}

static inline void check_hogs_stop(pthread_t *th, int n)
{
    atomic_store(&check_hogs_quit_, 1);
    for (int k = 0; k < n; k++) check_join(th[k]);
}

#endif
