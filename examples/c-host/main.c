/* examples/c-host/main.c - isle from a C program with no Lua of its own: a
 * game engine's job system handing AI scripts to an isle.
 *
 * Spawns an isle from init source, calls a function with numbers, strings
 * and a table, posts, runs a task and waits for it with a timeout, cancels
 * a runaway script (a loop the JIT has compiled), prints an error with its
 * isle-side traceback, and closes. `make test` runs it under valgrind.
 *
 * Build and run it from a checkout (after `make`):
 *   cc -Icsrc -o build/c-host examples/c-host/main.c -Lbuild -lisle -Wl,-rpath,$PWD/build
 *   build/c-host
 * The isle finds isle's Lua modules next to build/libisle.so (lua/, ffi/),
 * or through LUA_PATH; see docs/c-api.md.
 */
#include "isle_host.h"

#include <stdio.h>
#include <string.h>

static const char AI[] =
    "-- Runs once in the isle: define the globals the engine calls.\n"
    "local difficulty = ...\n"
    "kills = 0\n"
    "function plan(name, hp, pos)\n"
    "  local moves = {}\n"
    "  for i = 1, 3 do moves[i] = { x = pos.x + i * difficulty, y = pos.y } end\n"
    "  return name .. (hp < 30 and ' flees' or ' attacks'), moves\n"
    "end\n"
    "function on_kill(n) kills = kills + n end\n"
    "function stats() return kills end\n"
    "function pathfind(n) local s = 0 for i = 1, n do s = s + i % 7 end return s end\n"
    "function buggy(t) return t.target.hp end\n";

/* Prints an error and frees it; returns 1 so callers can `return report(e)`. */
static int report(const char *what, ihost_error *e)
{
    printf("%s failed: %s error: %s\n", what, ihost_error_code(e), ihost_error_message(e));
    if (ihost_error_traceback(e)) printf("%s\n", ihost_error_traceback(e));
    ihost_error_free(e);
    return 1;
}

int main(void)
{
    ihost_error *err = NULL;
    ihost_isle *ai = NULL;
    ihost_options opts = {0};
    ihost_value difficulty = ihost_number(2);
    opts.name = "ai";
    opts.args = &difficulty; /* the init chunk's `...` */
    opts.nargs = 1;
    if (ihost_spawn(AI, &opts, &ai, &err)) return report("spawn", err);
    printf("isle %lld started\n", (long long)ihost_id(ai));

    /* A call with a string, a number and a table; two results back. */
    ihost_table *pos = ihost_table_new();
    if (!pos || ihost_table_setfield(pos, "x", ihost_number(10))
        || ihost_table_setfield(pos, "y", ihost_number(-4))) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    ihost_value args[3] = {ihost_string("goblin"), ihost_number(25), ihost_tablev(pos)};
    ihost_results *res = NULL;
    int rc = ihost_call(ai, "plan", args, 3, 1.0, &res, &err);
    ihost_table_free(pos); /* the arguments were copied */
    if (rc) return report("plan", err);
    ihost_value verdict = ihost_results_get(res, 0);
    ihost_table *moves = ihost_results_get(res, 1).v.table;
    printf("plan: %s, %zu moves:", verdict.v.str.ptr, ihost_table_len(moves));
    for (size_t i = 1; i <= ihost_table_len(moves); i++) {
        ihost_table *m = ihost_table_geti(moves, (int64_t)i).v.table;
        printf(" (%g, %g)", ihost_table_getfield(m, "x").v.number, ihost_table_getfield(m, "y").v.number);
    }
    printf("\n");
    ihost_results_free(res);

    /* Posts: fire and forget, run in order before later calls. */
    for (int i = 0; i < 3; i++) {
        ihost_value n = ihost_number(i + 1);
        if (ihost_post(ai, "on_kill", &n, 1, &err)) return report("post", err);
    }
    if (ihost_call(ai, "stats", NULL, 0, 1.0, &res, &err)) return report("stats", err);
    printf("kills after 3 posts: %g\n", ihost_results_get(res, 0).v.number);
    ihost_results_free(res);

    /* A task: the frame goes on while the isle works; wait with a timeout. */
    ihost_task *job = NULL;
    ihost_value n = ihost_number(2e6);
    if (ihost_spawn_call(ai, "pathfind", &n, 1, -1, &job, &err)) return report("pathfind", err);
    while (ihost_task_wait(job, 0.001) == IHOST_ETIMEOUT) {
        /* ... render a frame ... */
    }
    if (ihost_task_results(job, &res, &err)) return report("pathfind", err);
    printf("pathfind: %g\n", ihost_results_get(res, 0).v.number);
    ihost_results_free(res);
    ihost_task_free(job);

    /* A runaway script: compiled by the JIT, stopped all the same. */
    if (ihost_spawn_eval(ai, "local n = 0 while true do n = n + 1 end", NULL, 0, -1, &job, &err))
        return report("runaway", err);
    if (ihost_task_wait(job, 0.2) == IHOST_ETIMEOUT) {
        printf("runaway still running after 0.2 s: cancelling it\n");
        ihost_task_cancel(job);
    }
    ihost_task_wait(job, -1);
    rc = ihost_task_results(job, NULL, &err);
    printf("runaway ended: %s error: %s\n", ihost_error_code(err), ihost_error_message(err));
    ihost_error_free(err);
    ihost_task_free(job);

    /* An error in a script: its message and the isle-side traceback. */
    ihost_table *bad = ihost_table_new();
    ihost_value arg = ihost_tablev(bad);
    rc = ihost_call(ai, "buggy", &arg, 1, 1.0, NULL, &err);
    ihost_table_free(bad);
    if (rc == IHOST_ERUNTIME) {
        printf("buggy: %s\n%s\n", ihost_error_message(err), ihost_error_traceback(err));
        ihost_error_free(err);
    }

    ihost_close(ai, 0);
    printf("closed\n");
    return 0;
}
