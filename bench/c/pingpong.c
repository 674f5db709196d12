/*
 * pingpong.c - the C floor of the isle benchmarks (bench/run.lua).
 *
 * The same traffic as the Lua workloads, through the core's own queue and
 * wake-up primitives (isle_mbox_push / isle_mbox_wait, isle_task_new /
 * isle_task_complete / isle_task_wait) and no Lua at all: the cost isle's
 * Lua layer adds is the Lua figure minus this one.
 *
 *   pingpong ping N        N sequential round trips (send i, get i+1)
 *   pingpong stream N      N one-way integers summed, then one reply
 *   pingpong fanout N K    N one-way integers round-robin over K threads
 *   pingpong spawn N       N threads, each started, pinged once and joined
 *
 * Prints one line "<value> <unit>" (us/rt, msg/s or ms/thread) on stdout and
 * exits 0; any mismatch or failure prints to stderr and exits 1.
 * Built by `make bench-floor` into build/bench_pingpong.
 */
#include "isle.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_STOP = 0, KIND_PING = 1, KIND_ADD = 2, KIND_TOTAL = 3 };

static void die(const char *what)
{
    fprintf(stderr, "pingpong: %s\n", what);
    exit(1);
}

/* The server: one mailbox, answers pings, sums adds, replies the sum. */
static void *server(void *arg)
{
    isle_mbox *mb = arg;
    int64_t sum = 0;
    for (;;) {
        isle_msg *msgs;
        isle_done *done;
        int rc = isle_mbox_wait(mb, -1, &msgs, &done);
        if (rc != ISLE_OK) die("mbox_wait failed");
        isle_done_free_list(done);
        int stop = 0;
        for (isle_msg *m = msgs; m; m = m->next) {
            int64_t v;
            if (m->kind == KIND_STOP) { stop = 1; continue; }
            if (m->len != sizeof v) die("bad message length");
            memcpy(&v, m->data, sizeof v);
            if (m->kind == KIND_PING) {
                int64_t r = v + 1;
                isle_task_complete(m->task, ISLE_TASK_DONE, (const char *)&r, sizeof r);
            } else if (m->kind == KIND_ADD) {
                sum += v;
            } else if (m->kind == KIND_TOTAL) {
                isle_task_complete(m->task, ISLE_TASK_DONE, (const char *)&sum, sizeof sum);
            }
        }
        isle_msg_free_list(msgs);
        if (stop) return NULL;
    }
}

static void push(isle_mbox *mb, int kind, isle_task *t, int64_t v)
{
    isle_msg *m = isle_msg_new(kind, t, (const char *)&v, sizeof v);
    if (!m) die("out of memory");
    if (isle_mbox_push(mb, m, -1) != ISLE_OK) die("mbox_push failed");
}

/* Sends `kind` with `v` and waits for the 8-byte reply. */
static int64_t request(isle_mbox *mb, int kind, int64_t v)
{
    isle_task *t = isle_task_new();
    if (!t) die("out of memory");
    push(mb, kind, t, v);
    if (!isle_task_wait(t, -1)) die("task_wait failed");
    if (isle_task_state(t) != ISLE_TASK_DONE) die("task did not end DONE");
    size_t len;
    const char *p = isle_task_result(t, &len);
    int64_t r;
    if (len != sizeof r) die("bad result length");
    memcpy(&r, p, sizeof r);
    isle_task_release(t);
    return r;
}

typedef struct {
    isle_mbox *mb;
    pthread_t th;
} peer;

static void peer_start(peer *p)
{
    p->mb = isle_mbox_new(1024, 0);
    if (!p->mb) die("out of memory");
    if (pthread_create(&p->th, NULL, server, p->mb)) die("pthread_create failed");
}

static void peer_stop(peer *p)
{
    push(p->mb, KIND_STOP, NULL, 0);
    pthread_join(p->th, NULL);
    isle_mbox_release(p->mb);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pingpong ping|stream|spawn N | fanout N K\n");
        return 2;
    }
    const char *mode = argv[1];
    /* PINGPONG_SPIN=seconds sets the core's spin budget (0 under callgrind,
     * where spinning only counts the other thread's time slices). */
    const char *spin = getenv("PINGPONG_SPIN");
    if (spin) isle_set_spin(strtod(spin, NULL));
    long n = strtol(argv[2], NULL, 10);
    if (n < 1) die("N must be positive");

    if (!strcmp(mode, "ping")) {
        peer p;
        peer_start(&p);
        for (int64_t i = 1; i <= 100; i++) request(p.mb, KIND_PING, i);  /* warm up */
        double t0 = isle_now();
        for (int64_t i = 1; i <= n; i++)
            if (request(p.mb, KIND_PING, i) != i + 1) die("wrong reply");
        double dt = isle_now() - t0;
        peer_stop(&p);
        printf("%.4f us/rt\n", dt * 1e6 / (double)n);
    } else if (!strcmp(mode, "stream") || !strcmp(mode, "fanout")) {
        long k = 1;
        if (!strcmp(mode, "fanout")) {
            if (argc < 4) die("fanout needs K");
            k = strtol(argv[3], NULL, 10);
            if (k < 1 || k > 64) die("K must be 1..64");
        }
        peer ps[64];
        for (long j = 0; j < k; j++) peer_start(&ps[j]);
        int64_t expect[64] = {0};
        double t0 = isle_now();
        for (int64_t i = 1; i <= n; i++) {
            long j = (long)(i % k);
            push(ps[j].mb, KIND_ADD, NULL, i);
            expect[j] += i;
        }
        for (long j = 0; j < k; j++)
            if (request(ps[j].mb, KIND_TOTAL, 0) != expect[j]) die("wrong sum");
        double dt = isle_now() - t0;
        for (long j = 0; j < k; j++) peer_stop(&ps[j]);
        printf("%.1f msg/s\n", (double)n / dt);
    } else if (!strcmp(mode, "spawn")) {
        double t0 = isle_now();
        for (long i = 0; i < n; i++) {
            peer p;
            peer_start(&p);
            if (request(p.mb, KIND_PING, i) != i + 1) die("wrong reply");
            peer_stop(&p);
        }
        double dt = isle_now() - t0;
        printf("%.5f ms/thread\n", dt * 1e3 / (double)n);
    } else {
        die("unknown mode");
    }
    return 0;
}
