/* alloc.c - the allocator's floor for the bench's MEM rows (bench/w_msg.lua).
 *
 *   bench_alloc N REPS
 *
 * Runs a Lua loop that allocates and drops small tables and strings, N
 * iterations, in a fresh state three ways, interleaved REPS times:
 *   plain    LuaJIT's own allocator (luaL_newstate), nothing of isle
 *   counted  the same allocator wrapped by isle's account (csrc/mem.c) with
 *            no limit: what every isle's state runs on
 *   capped   the same with a 64 MiB limit, in user mode: a capped isle's jobs
 * and prints the median CPU ns per iteration of each: "plain counted capped".
 */
#include "isle.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char *LOOP =
    "local n = ... local s = 0 "
    "for i = 1, n do local t = { i, { i } } s = s + #tostring(t[1]) end "
    "return s";

/* CPU time of this (single-threaded) process: steadier than wall time on a
 * machine other processes keep busy. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double run(int mode, long n)
{
    lua_State *L = luaL_newstate();
    if (!L) return -1;
    luaL_openlibs(L);
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    isle_mem *a = NULL;
    if (mode > 0) {
        a = isle_mem_new(mode == 2 ? (size_t)64 << 20 : 0);
        isle_mem_wrap(a, f, ud, (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024, NULL);
        isle_mem_enforce(a, ISLE_MEM_USER);
        lua_setallocf(L, isle_mem_alloc, a);
    }
    double dt = -1;
    if (luaL_loadstring(L, LOOP) == 0) {
        lua_pushvalue(L, -1);
        lua_pushnumber(L, (lua_Number)(n / 10)); /* warm up: traces, heap */
        if (lua_pcall(L, 1, 1, 0) == 0) {
            lua_pop(L, 1);
            lua_pushnumber(L, (lua_Number)n);
            double t0 = now();
            if (lua_pcall(L, 1, 1, 0) == 0) dt = (now() - t0) * 1e9 / (double)n;
        }
    }
    if (a) lua_setallocf(L, f, ud); /* LuaJIT destroys its arena only if its allocator is in place */
    lua_close(L);
    isle_mem_release(a);
    return dt;
}

static int cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (n < 10 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: bench_alloc N REPS\n");
        return 2;
    }
    double t[3][64];
    for (int r = 0; r < reps; r++)
        for (int m = 0; m < 3; m++) {
            t[m][r] = run(m, n);
            if (t[m][r] < 0) {
                fprintf(stderr, "bench_alloc: the Lua loop failed\n");
                return 1;
            }
        }
    for (int m = 0; m < 3; m++) qsort(t[m], (size_t)reps, sizeof(double), cmp);
    printf("%.3f %.3f %.3f\n", t[0][reps / 2], t[1][reps / 2], t[2][reps / 2]);
    return 0;
}
