/*
 * plain_floor.c - the plain C floors of the isle benchmarks (bench/run.lua):
 * what the machine does with the same traffic and no isle code at all.
 * bench/c/pingpong.c is isle's own core (mailbox, task slot) without Lua;
 * this file is the floor that core is measured against.
 *
 *   plain_floor ping N     N sequential round trips between two threads: an
 *                          int handed through one atomic slot each way; the
 *                          waiter spins a bounded number of times, then
 *                          sleeps on a futex (woken only if it said so)
 *   plain_floor stream N   N one-way integers through a ring of 1,024 slots
 *                          under one mutex and two condvars; the consumer
 *                          drains every waiting integer per lock (batches)
 *   plain_floor spawn N    N threads, each creating a LuaJIT state, opening
 *                          the standard libraries, running one chunk and
 *                          closing it, started and joined one after the other
 *   plain_floor idle N     N threads kept alive, each with a LuaJIT state
 *                          with the standard libraries, `ffi` and
 *                          `string.buffer` loaded (what every isle state
 *                          has), having run one chunk, then parked on a
 *                          condvar: the growth of VmRSS per thread (KiB)
 *
 * Prints one line "<value> <unit>" (us/rt, msg/s or ms/thread) and exits 0;
 * a wrong answer prints to stderr and exits 1. Built by `make bench-floor`
 * into build/bench_plain_floor (linked with Debian's libluajit).
 */
#include <lauxlib.h>
#include <linux/futex.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Spin budget before sleeping: the core's default (csrc/clock.c), spent the
 * same way (a pause per probe, the clock and a sched_yield every 64 probes,
 * so a peer queued behind the spinner on a busy core still gets to run). */
#define SPIN_S 50e-6

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "plain_floor: %s\n", what);
    exit(1);
}

/* ping ----------------------------------------------------------------------- */

/* One hand-off slot: 0 is empty; `sleeping` tells the writer to wake. Each
 * slot on its own cache line, so the two directions do not share one. */
typedef struct {
    _Alignas(64) _Atomic uint32_t v;
    _Atomic uint32_t sleeping;
} slot;

static slot req, rep;

static void slot_put(slot *s, uint32_t v)
{
    atomic_store(&s->v, v);
    if (atomic_load(&s->sleeping))
        syscall(SYS_futex, &s->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static uint32_t slot_take(slot *s)
{
    uint32_t v;
    double end = now() + SPIN_S;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(&s->v, memory_order_relaxed)
                && (v = atomic_exchange_explicit(&s->v, 0, memory_order_acquire)))
                return v;
            __builtin_ia32_pause();
        }
        if (now() >= end) break;
        sched_yield();
    }
    atomic_store(&s->sleeping, 1);
    while (!(v = atomic_exchange(&s->v, 0)))
        syscall(SYS_futex, &s->v, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    atomic_store(&s->sleeping, 0);
    return v;
}

static void *ping_server(void *arg)
{
    (void)arg;
    for (;;) {
        uint32_t v = slot_take(&req);
        if (v == UINT32_MAX) return NULL;
        slot_put(&rep, v + 1);
    }
}

static double run_ping(long n)
{
    pthread_t th;
    if (pthread_create(&th, NULL, ping_server, NULL)) die("pthread_create failed");
    for (uint32_t i = 1; i <= 100; i++) {  /* warm up */
        slot_put(&req, i);
        slot_take(&rep);
    }
    double t0 = now();
    for (uint32_t i = 1; i <= (uint32_t)n; i++) {
        slot_put(&req, i);
        if (slot_take(&rep) != i + 1) die("wrong reply");
    }
    double dt = now() - t0;
    slot_put(&req, UINT32_MAX);
    pthread_join(th, NULL);
    return dt * 1e6 / (double)n;
}

/* stream --------------------------------------------------------------------- */

enum { CAP = 1024 };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER, not_full = PTHREAD_COND_INITIALIZER;
static int64_t ring[CAP];
static long head, count, total;

static void *stream_consumer(void *arg)
{
    int64_t sum = 0, batch[CAP];
    long got = 0;
    while (got < total) {
        pthread_mutex_lock(&mu);
        while (count == 0) pthread_cond_wait(&not_empty, &mu);
        long k = count;
        for (long i = 0; i < k; i++) batch[i] = ring[(head + i) % CAP];
        head = (head + k) % CAP;
        count = 0;
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&mu);
        for (long i = 0; i < k; i++) sum += batch[i];
        got += k;
    }
    *(int64_t *)arg = sum;
    return NULL;
}

static double run_stream(long n)
{
    int64_t sum = 0;
    pthread_t th;
    total = n;
    double t0 = now();
    if (pthread_create(&th, NULL, stream_consumer, &sum)) die("pthread_create failed");
    for (int64_t i = 1; i <= n; i++) {
        pthread_mutex_lock(&mu);
        while (count == CAP) pthread_cond_wait(&not_full, &mu);
        ring[(head + count) % CAP] = i;
        if (count++ == 0) pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&mu);
    }
    pthread_join(th, NULL);
    double dt = now() - t0;
    if (sum != (int64_t)n * (n + 1) / 2) die("wrong sum");
    return (double)n / dt;
}

/* spawn ---------------------------------------------------------------------- */

/* A new state with the standard libraries that has run `chunk` (which
 * returns its argument + 1) with `i`, its stack empty again. */
static lua_State *state_after_chunk(const char *chunk, intptr_t i)
{
    lua_State *L = luaL_newstate();
    if (!L) die("luaL_newstate failed");
    luaL_openlibs(L);
    if (luaL_loadstring(L, chunk) != 0) die("load failed");
    lua_pushinteger(L, (lua_Integer)i);
    if (lua_pcall(L, 1, 1, 0) != 0) die("chunk failed");
    if (lua_tointeger(L, -1) != (lua_Integer)i + 1) die("wrong chunk result");
    lua_pop(L, 1);
    return L;
}

static void *state_thread(void *arg)
{
    lua_close(state_after_chunk("local i = ... return i + 1", (intptr_t)arg));
    return NULL;
}

static double run_spawn(long n)
{
    double t0 = now();
    for (long i = 0; i < n; i++) {
        pthread_t th;
        if (pthread_create(&th, NULL, state_thread, (void *)(intptr_t)i))
            die("pthread_create failed");
        pthread_join(th, NULL);
    }
    return (now() - t0) * 1e3 / (double)n;
}

/* idle ----------------------------------------------------------------------- */

static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;
static long idle_ready;
static int idle_go;

/* What every isle state holds besides the standard libraries. */
static const char idle_chunk[] =
    "require('ffi') require('string.buffer') local i = ... return i + 1";

static void *idle_thread(void *arg)
{
    lua_State *L = state_after_chunk(idle_chunk, (intptr_t)arg);
    pthread_mutex_lock(&idle_mu);
    idle_ready++;
    pthread_cond_broadcast(&idle_cv);
    while (!idle_go) pthread_cond_wait(&idle_cv, &idle_mu);
    pthread_mutex_unlock(&idle_mu);
    lua_close(L);
    return NULL;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) die("cannot read /proc/self/status");
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1) break;
    fclose(f);
    if (kib < 0) die("no VmRSS");
    return kib;
}

static double run_idle(long n)
{
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!th) die("out of memory");
    long before = rss_kib();
    for (long i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, idle_thread, (void *)(intptr_t)i))
            die("pthread_create failed");
    pthread_mutex_lock(&idle_mu);
    while (idle_ready < n) pthread_cond_wait(&idle_cv, &idle_mu);
    pthread_mutex_unlock(&idle_mu);
    long after = rss_kib();
    pthread_mutex_lock(&idle_mu);
    idle_go = 1;
    pthread_cond_broadcast(&idle_cv);
    pthread_mutex_unlock(&idle_mu);
    for (long i = 0; i < n; i++) pthread_join(th[i], NULL);
    free(th);
    return (double)(after - before) / (double)n;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: plain_floor ping|stream|spawn|idle N\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    if (n < 1 || n >= (long)UINT32_MAX - 1) die("N must be 1..2^32-2");
    if (!strcmp(argv[1], "ping")) printf("%.4f us/rt\n", run_ping(n));
    else if (!strcmp(argv[1], "stream")) printf("%.1f msg/s\n", run_stream(n));
    else if (!strcmp(argv[1], "spawn")) printf("%.5f ms/thread\n", run_spawn(n));
    else if (!strcmp(argv[1], "idle")) printf("%.3f KiB/thread\n", run_idle(n));
    else die("unknown mode");
    return 0;
}
