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
 *   plain_floor worker N   the same N threads, each running the smallest
 *                          worker that can be written in Lua through the
 *                          FFI (isle's design): two C functions declared,
 *                          a loop that waits in C, decodes a call with
 *                          string.buffer, runs it, encodes the result and
 *                          hands it back; each serves one call, then waits
 *                          idle in C: the growth of VmRSS per thread (KiB).
 *                          No isle code; the floor of any such worker.
 *
 * Prints one line "<value> <unit>" (us/rt, msg/s, ms/thread or KiB/thread) and exits 0;
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
 * same way (csrc/internal.h, isle_spin_for: a pause per probe, the clock
 * every 64 probes, a sched_yield after every round of 64 while yields let
 * another thread run, every 8 rounds while they come straight back, so a
 * peer queued behind the spinner on a busy core still gets to run). */
#define SPIN_S 50e-6
static _Thread_local unsigned spin_gap = 1;

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
    for (unsigned round = 1;; round++) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(&s->v, memory_order_relaxed)
                && (v = atomic_exchange_explicit(&s->v, 0, memory_order_acquire)))
                return v;
            __builtin_ia32_pause();
        }
        double t = now();
        if (t >= end) break;
        if (round % spin_gap == 0) {
            sched_yield();
            if (now() - t > 2.5e-6) spin_gap = 1; /* another thread ran */
            else if (spin_gap < 8) spin_gap *= 2;
        }
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

/* worker ---------------------------------------------------------------------
 * One slot per thread: the main thread puts one encoded call in, the
 * worker's Lua takes it through fw_wait (blocking in C, as an idle isle
 * does in its mailbox), answers through fw_reply, and waits again until the
 * slot closes. Exported (-rdynamic) so that the worker's ffi.C finds them. */
typedef struct fw_slot {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *call; /* the call waiting, or NULL */
    size_t call_len;
    char reply[64];
    size_t reply_len; /* 0 until the worker answered */
    int closed;
} fw_slot;

int fw_wait(fw_slot *s, const char **data, size_t *len);
void fw_reply(fw_slot *s, const char *data, size_t len);

int fw_wait(fw_slot *s, const char **data, size_t *len)
{
    pthread_mutex_lock(&s->mu);
    while (!s->call && !s->closed) pthread_cond_wait(&s->cv, &s->mu);
    int got = s->call != NULL;
    if (got) {
        *data = s->call;
        *len = s->call_len;
        s->call = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

void fw_reply(fw_slot *s, const char *data, size_t len)
{
    pthread_mutex_lock(&s->mu);
    if (len > sizeof s->reply) len = sizeof s->reply;
    memcpy(s->reply, data, len);
    s->reply_len = len;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The worker: what any isle must hold at the least, besides the state. */
static const char worker_chunk[] =
    "local ffi = require('ffi')\n"
    "local buffer = require('string.buffer')\n"
    "ffi.cdef[[\n"
    "typedef struct fw_slot fw_slot;\n"
    "int fw_wait(fw_slot *s, const char **data, size_t *len);\n"
    "void fw_reply(fw_slot *s, const char *data, size_t len);\n"
    "]]\n"
    "local C, G, pcall, unpack = ffi.C, _G, pcall, unpack\n"
    "local encode, decode = buffer.encode, buffer.decode\n"
    "local slot = ffi.cast('fw_slot *', ...)\n"
    "function inc(i) return i + 1 end -- the user's init\n"
    "local data, len = ffi.new('const char *[1]'), ffi.new('size_t[1]')\n"
    "while C.fw_wait(slot, data, len) ~= 0 do\n"
    "  local call = decode(ffi.string(data[0], len[0])) -- { name, args... }\n"
    "  local reply = encode({ pcall(G[call[1]], unpack(call, 2)) })\n"
    "  C.fw_reply(slot, reply, #reply)\n"
    "end\n";

static void *worker_thread(void *arg)
{
    fw_slot *s = arg;
    lua_State *L = luaL_newstate();
    if (!L) die("luaL_newstate failed");
    luaL_openlibs(L);
    if (luaL_loadstring(L, worker_chunk) != 0) die(lua_tostring(L, -1));
    lua_pushlightuserdata(L, s);
    if (lua_pcall(L, 1, 0, 0) != 0) die(lua_tostring(L, -1));
    lua_close(L);
    return NULL;
}

/* The call every worker serves, and the check of its reply, encoded and
 * decoded by string.buffer in a state of the main thread's. */
static lua_State *codec_state(void)
{
    lua_State *L = luaL_newstate();
    if (!L) die("luaL_newstate failed");
    luaL_openlibs(L);
    if (luaL_dostring(L, "local b = require('string.buffer') "
                         "return b.encode({ 'inc', 41 }), function(s) local r = b.decode(s) "
                         "return r[1] == true and r[2] == 42 end") != 0)
        die("the codec state failed");
    return L;
}

static double run_worker(long n)
{
    lua_State *codec = codec_state();
    size_t call_len;
    const char *call = lua_tolstring(codec, 1, &call_len);
    fw_slot *slots = calloc((size_t)n, sizeof *slots);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!slots || !th) die("out of memory");
    long before = rss_kib();
    for (long i = 0; i < n; i++) {
        fw_slot *s = &slots[i];
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->cv, NULL);
        s->call = call;
        s->call_len = call_len;
        if (pthread_create(&th[i], NULL, worker_thread, s)) die("pthread_create failed");
    }
    for (long i = 0; i < n; i++) {
        fw_slot *s = &slots[i];
        pthread_mutex_lock(&s->mu);
        while (!s->reply_len) pthread_cond_wait(&s->cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        lua_pushvalue(codec, 2);
        lua_pushlstring(codec, s->reply, s->reply_len);
        lua_call(codec, 1, 1);
        if (!lua_toboolean(codec, -1)) die("a worker's reply was wrong");
        lua_pop(codec, 1);
    }
    struct timespec pause = {0, 200 * 1000 * 1000}; /* every worker back in fw_wait */
    nanosleep(&pause, NULL);
    long after = rss_kib();
    for (long i = 0; i < n; i++) {
        fw_slot *s = &slots[i];
        pthread_mutex_lock(&s->mu);
        s->closed = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    for (long i = 0; i < n; i++) pthread_join(th[i], NULL);
    free(th);
    free(slots);
    lua_close(codec);
    return (double)(after - before) / (double)n;
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
        fprintf(stderr, "usage: plain_floor ping|stream|spawn|idle|worker N\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    if (n < 1 || n >= (long)UINT32_MAX - 1) die("N must be 1..2^32-2");
    if (!strcmp(argv[1], "ping")) printf("%.4f us/rt\n", run_ping(n));
    else if (!strcmp(argv[1], "stream")) printf("%.1f msg/s\n", run_stream(n));
    else if (!strcmp(argv[1], "spawn")) printf("%.5f ms/thread\n", run_spawn(n));
    else if (!strcmp(argv[1], "idle")) printf("%.3f KiB/thread\n", run_idle(n));
    else if (!strcmp(argv[1], "worker")) printf("%.3f KiB/thread\n", run_worker(n));
    else die("unknown mode");
    return 0;
}
