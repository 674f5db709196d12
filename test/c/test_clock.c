/* test_clock.c - monotonic clock, deadlines, the spin budget and the bounded
 * spin used before parking. */
#include "check.h"
#include "internal.h"

#include <math.h>

static void test_now_monotonic(void)
{
    double prev = isle_now();
    CHECK(prev > 0);
    int backwards = 0;
    for (int i = 0; i < 100000; i++) {
        double now = isle_now();
        if (now < prev) backwards++;
        prev = now;
    }
    CHECK_EQ(backwards, 0);
    double a = isle_now();
    check_sleep(0.02);
    CHECK(isle_now() - a >= 0.019);
}

static void test_spin_budget(void)
{
    double def = isle_get_spin();
    CHECK(def > 0 && def <= 0.01);
    isle_set_spin(0.001);
    CHECK(isle_get_spin() == 0.001);
    isle_set_spin(0);
    CHECK(isle_get_spin() == 0);
    isle_set_spin(-1);
    CHECK(isle_get_spin() == 0);
    isle_set_spin(NAN);
    CHECK(isle_get_spin() == 0);
    isle_set_spin(5);        /* capped at 10 ms */
    CHECK(isle_get_spin() == 0.01);
    isle_set_spin(def);
    CHECK(isle_get_spin() == def);
}

static void test_deadline(void)
{
    double vals[] = {0, 1e-9, 0.5, 0.999999999, 1, 1.5, 2.9999999, 1e12};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        struct timespec now, dl;
        clock_gettime(CLOCK_MONOTONIC, &now);
        dl = isle_deadline(vals[i]);
        CHECK(dl.tv_nsec >= 0 && dl.tv_nsec < 1000000000L);
        double d = (double)(dl.tv_sec - now.tv_sec) + (double)(dl.tv_nsec - now.tv_nsec) * 1e-9;
        double want = vals[i] > 1e9 ? 1e9 : vals[i];
        CHECK(d >= want - 1e-3);
        CHECK(d <= want + 1.0); /* loose: only catches a wrong unit or overflow */
    }
}

static void test_cond_monotonic(void)
{
    pthread_cond_t cv;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    CHECK(isle_cond_init(&cv) == 0);
    pthread_mutex_lock(&mu);
    double t0 = isle_now();
    struct timespec dl = isle_deadline(0.05);
    int rc;
    do rc = pthread_cond_timedwait(&cv, &mu, &dl); while (rc == 0);
    pthread_mutex_unlock(&mu);
    /* A deadline taken on CLOCK_MONOTONIC is only honoured by a condition
     * variable set to that clock. */
    CHECK(isle_now() - t0 >= 0.049);
    pthread_cond_destroy(&cv);
}

static atomic_int word;

static void *set_word_later(void *arg)
{
    (void)arg;
    check_sleep(0.002);
    atomic_store(&word, 7);
    return NULL;
}

static void test_spin_until(void)
{
    double def = isle_get_spin();
    atomic_store(&word, 3);
    CHECK_EQ(isle_spin_until(&word, -1), 3);
    CHECK_EQ(isle_spin_until(&word, 0), 3);

    atomic_store(&word, 0);
    isle_set_spin(0.005);
    double t0 = isle_now();
    CHECK_EQ(isle_spin_until(&word, -1), 0);    /* gives up after the budget */
    CHECK(isle_now() - t0 >= 0.0049);
    t0 = isle_now();
    CHECK_EQ(isle_spin_until(&word, 0.001), 0); /* capped by the timeout */
    CHECK(isle_now() - t0 >= 0.00099);
    CHECK_EQ(isle_spin_until(&word, 0), 0);

    /* A value set during the spin is seen. */
    isle_set_spin(0.01);
    pthread_t th = check_spawn(set_word_later, NULL);
    int v = 0;
    while (!v) v = isle_spin_until(&word, -1);
    CHECK_EQ(v, 7);
    check_join(th);

    isle_set_spin(0);
    atomic_store(&word, 0);
    CHECK_EQ(isle_spin_until(&word, -1), 0);    /* no budget: one probe */
    isle_set_spin(def);
}

/* How often the spin gives the CPU up: after every round while a yield
 * lets another thread run, backing off to every ISLE_SPIN_YIELD_MAX rounds
 * while yields come straight back. */
static void test_spin_yield_gap(void)
{
    /* The measure: a yield that came straight back doubles the gap, up to
     * the bound; one that let another thread run sets it to 1. */
    isle_spin_gap = 1;
    isle_spin_yielded(0);
    CHECK_EQ(isle_spin_gap, 2);
    isle_spin_yielded(1e-7);
    isle_spin_yielded(1e-7);
    CHECK_EQ(isle_spin_gap, ISLE_SPIN_YIELD_MAX);
    isle_spin_yielded(0);
    CHECK_EQ(isle_spin_gap, ISLE_SPIN_YIELD_MAX);
    isle_spin_yielded(1e-3);
    CHECK_EQ(isle_spin_gap, 1);

    /* In a spin: a thread busy on this very CPU runs when the spinner
     * yields, so the spinner goes back to yielding after every round. */
    cpu_set_t was, one;
    CHECK(pthread_getaffinity_np(pthread_self(), sizeof was, &was) == 0);
    int cpu = sched_getcpu();
    CHECK(cpu >= 0);
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0);
    pthread_t th;
    check_hogs_start(&th, 1);
    CHECK(pthread_setaffinity_np(th, sizeof one, &one) == 0);
    double def = isle_get_spin();
    isle_set_spin(0.01);
    atomic_store(&word, 0);
    isle_spin_gap = ISLE_SPIN_YIELD_MAX;
    CHECK_EQ(isle_spin_until(&word, -1), 0);
    CHECK_EQ(isle_spin_gap, 1);
    isle_set_spin(def);
    check_hogs_stop(&th, 1);
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof was, &was) == 0);
}

int main(void)
{
    RUN(test_now_monotonic);
    RUN(test_spin_budget);
    RUN(test_deadline);
    RUN(test_cond_monotonic);
    RUN(test_spin_until);
    RUN(test_spin_yield_gap);
    return check_done();
}
