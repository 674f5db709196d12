/*
 * chan_floor.c - the C floor of channel throughput (bench/w_chan.lua): a
 * bounded ring of integers under one pthread mutex and two condition
 * variables, one producer thread and one consumer thread, no isle code.
 *
 *   chan_floor N [CAP]   moves the integers 1..N through a ring of CAP
 *                        (default 1024) slots and checks their sum.
 *
 * Prints "<value> Mvalues/s" and exits 0; a wrong sum exits 1. Built by
 * `make build/bench_chan_floor`.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER, not_full = PTHREAD_COND_INITIALIZER;
static long *ring;
static long cap, head, count, n;

static void *consumer(void *arg)
{
    long sum = 0;
    for (long i = 0; i < n; i++) {
        pthread_mutex_lock(&mu);
        while (count == 0) pthread_cond_wait(&not_empty, &mu);
        long v = ring[head];
        head = (head + 1) % cap;
        if (count-- == cap) pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&mu);
        sum += v;
    }
    *(long *)arg = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    n = argc > 1 ? atol(argv[1]) : 1000000;
    cap = argc > 2 ? atol(argv[2]) : 1024;
    if (n < 1) n = 1;
    if (cap < 1) cap = 1;
    ring = malloc((size_t)cap * sizeof *ring);
    if (!ring) return 1;
    long sum = 0;
    pthread_t th;
    double t0 = now();
    pthread_create(&th, NULL, consumer, &sum);
    for (long i = 1; i <= n; i++) {
        pthread_mutex_lock(&mu);
        while (count == cap) pthread_cond_wait(&not_full, &mu);
        ring[(head + count) % cap] = i;
        if (count++ == 0) pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&mu);
    }
    pthread_join(th, NULL);
    double dt = now() - t0;
    if (sum != n * (n + 1) / 2) {
        fprintf(stderr, "chan_floor: wrong sum %ld\n", sum);
        return 1;
    }
    printf("%.3f Mvalues/s\n", n / dt / 1e6);
    free(ring);
    return 0;
}
