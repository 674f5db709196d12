/*
 * state_floor.c - the C floor of the shared-state call (bench/w_state.lua):
 * what one call into another lua_State costs with no isle code at all.
 *
 *   state_floor N     N calls of `function(i) return i + 1 end` in a plain
 *                     lua_State (luaL_newstate + luaL_openlibs), each under
 *                     a pthread mutex: lock, push the function and i,
 *                     lua_pcall, read the integer result, pop, unlock.
 *
 * Prints "<value> us/call" and exits 0; a wrong result prints to stderr and
 * exits 1. Built by `make bench-floor` into build/bench_state_floor.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
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

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    if (n < 1) n = 1;
    lua_State *L = luaL_newstate();
    if (!L) return 1;
    luaL_openlibs(L);
    if (luaL_dostring(L, "return function(i) return i + 1 end") != 0) {
        fprintf(stderr, "state_floor: %s\n", lua_tostring(L, -1));
        return 1;
    }
    int fn = lua_gettop(L);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    long check = 0;
    /* Warm up: the JIT compiles the function as in the isle run. */
    for (long i = 0; i < 10000 && i < n; i++) {
        pthread_mutex_lock(&mu);
        lua_pushvalue(L, fn);
        lua_pushinteger(L, i);
        lua_pcall(L, 1, 1, 0);
        lua_pop(L, 1);
        pthread_mutex_unlock(&mu);
    }
    double t0 = now();
    for (long i = 0; i < n; i++) {
        pthread_mutex_lock(&mu);
        lua_pushvalue(L, fn);
        lua_pushinteger(L, i);
        if (lua_pcall(L, 1, 1, 0) != 0) {
            fprintf(stderr, "state_floor: %s\n", lua_tostring(L, -1));
            return 1;
        }
        check += lua_tointeger(L, -1) - i;
        lua_pop(L, 1);
        pthread_mutex_unlock(&mu);
    }
    double dt = now() - t0;
    if (check != n) {
        fprintf(stderr, "state_floor: wrong results\n");
        return 1;
    }
    printf("%.4f us/call\n", dt * 1e6 / (double)n);
    lua_close(L);
    return 0;
}
