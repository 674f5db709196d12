/* spawn_alloc.c - out of memory while starting an isle (isle_spawn) and
 * while registering isle's preloaded modules (isle_preload_set): every
 * allocation site fails in turn (alloc_sweep.h). A failed spawn must return
 * NULL with ISLE_ENOMEM and leave no thread, no registry entry and no block
 * behind; an allocation failing in the new isle's own thread (armed for any
 * thread, after the spawner's sites) must end the init task FAILED with no
 * bytes (a "memory" error to the Lua side) and the thread must still end;
 * the next spawn must start an isle that closes cleanly, and a closed
 * isle's blocks are freed by its owner's release at once.
 *
 * Not built from CORE_SRCS like the test_*.c: this links
 * build/libisle-failalloc.so (isle.c and preload.c need LuaJIT, and the
 * worker's Lua code loads the library through the FFI, so the test and its
 * isles must share one copy of it: ISLE_LIB names that copy). It needs
 * LUA_PATH as the Makefile exports it, to find lua/isle/worker.lua.
 */
/* Dozens of isles start and stop here, slower under AddressSanitizer. */
#define CHECK_TIMEOUT 300
#include "check.h"
#include "alloc_sweep.h"
#include "isle.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <string.h>

typedef struct ctx {
    isle_config cfg;
    isle *spawned;
    int err;
    int preloads;     /* blobs set so far */
    char name[64];
} ctx;

/* The boot bytes isle.spawn would send for spawn{}: the spec and an empty
 * argument list, in isle's own encoding (lua/isle/codec.lua). */
static char *encode_boot(size_t *len)
{
    static const char chunk[] =
        "local codec = require('isle.codec') "
        "local enc = codec.new_buffer() "
        "enc:encode({ libs = true }) "
        "codec.put_values(enc, 'args', 1, 0) "
        "return enc:tostring()";
    lua_State *L = luaL_newstate();
    CHECK(L != NULL);
    luaL_openlibs(L);
    if (luaL_dostring(L, chunk) != 0) {
        fprintf(stderr, "encoding the boot spec: %s\n", lua_tostring(L, -1));
        CHECK(0);
    }
    const char *s = lua_tolstring(L, -1, len);
    char *copy = malloc(*len);
    memcpy(copy, s, *len);
    lua_close(L);
    return copy;
}

/* ---- isle_preload_set ------------------------------------------------------- */
static void preload_setup(void *p)
{
    ctx *c = p;
    snprintf(c->name, sizeof c->name, "failalloc.mod%d", c->preloads);
}

static int preload_run(void *p)
{
    ctx *c = p;
    int rc = isle_preload_set(c->name, "bytecode", 8);
    CHECK(rc == ISLE_OK || rc == ISLE_ENOMEM);
    return rc == ISLE_OK;
}

static long preload_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        CHECK_EQ(isle_preload_count(), c->preloads);  /* nothing half-registered */
        CHECK(preload_run(c));
    }
    CHECK_EQ(isle_preload_count(), ++c->preloads);
    CHECK_EQ(isle_preload_set(c->name, "other", 5), ISLE_EINVAL); /* it is the one */
    return 3; /* the blob, its name and its bytes live as long as the process */
}

/* ---- isle_spawn -------------------------------------------------------------- */
static int spawn_run(void *p)
{
    ctx *c = p;
    c->err = -1;
    c->spawned = isle_spawn(&c->cfg, &c->err);
    if (!c->spawned) return 0;
    CHECK_EQ(c->err, ISLE_OK);
    /* Failures in the isle's thread count too (FAILALLOC_ANY_THREAD):
     * wait for its init while armed. */
    isle_task *init = isle_init_task(c->spawned);
    CHECK_EQ(isle_task_wait(init, 60), 1);
    return isle_task_state(init) == ISLE_TASK_DONE;
}

static void close_spawned(ctx *c)
{
    isle_close(c->spawned, 0);
    CHECK(isle_is_closed(c->spawned));
    isle_release(c->spawned);
    c->spawned = NULL;
}

static long spawn_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok && !c->spawned) {
        CHECK_EQ(c->err, ISLE_ENOMEM);
        CHECK_EQ(isle_live_count(), 0);               /* no thread started */
        CHECK(isle_lookup_name(c->cfg.name) == NULL); /* not left registered */
    } else if (!ok) {
        /* Started, but its thread ran out of memory during init: the init
         * task says so (FAILED, no bytes) and the isle closes as usual. */
        isle_task *init = isle_init_task(c->spawned);
        size_t len = 99;
        CHECK_EQ(isle_task_state(init), ISLE_TASK_FAILED);
        isle_task_result(init, &len);
        CHECK_EQ(len, 0);
        close_spawned(c);
        CHECK_EQ(isle_live_count(), 0);
    }
    if (!ok) CHECK(spawn_run(c));
    CHECK_EQ(isle_live_count(), 1);
    isle *found = isle_lookup_name(c->cfg.name);
    CHECK(found == c->spawned);
    isle_release(found);
    close_spawned(c);
    CHECK_EQ(isle_live_count(), 0);
    return 0;
}

static ctx the_ctx;

static void test_preload(void)
{
    ctx *c = &the_ctx;
    alloc_op op = {"isle_preload_set", preload_setup, preload_run, preload_check};
    CHECK_EQ(alloc_sweep_both(&op, c, 0), 3);
}

static void test_spawn(void)
{
    ctx *c = &the_ctx;
    int threads = count_threads();
    alloc_op op = {"isle_spawn", NULL, spawn_run, spawn_check};
    /* The spawner's own sites: the handle, its name, paths, boot bytes,
     * mailbox, signal block, init task and interrupt id. */
    long sites = alloc_sweep_both(&op, c, 0);
    CHECK(sites >= 9);
    /* Then, counting every thread: the same sites. The new isle's thread
     * adds none of its own (its small init result is kept in the init
     * task's slot, csrc/task.c; its Lua state never allocated through
     * malloc); the sweep must still pass. */
    alloc_op any = {"isle_spawn and the isle's thread", NULL, spawn_run, spawn_check};
    CHECK(alloc_sweep_both(&any, c, FAILALLOC_ANY_THREAD) >= sites);
    CHECK_EQ(threads_settle(threads), threads);
}

/* When isle_close returns, the isle's thread holds no reference to it: the
 * owner's release frees every block there and then. (The thread used to let
 * go of its reference just after waking the closer, so a count taken right
 * after the release could still see the isle's blocks; the sweeps above
 * failed on it now and then under AddressSanitizer.) */
static void test_close_frees_at_once(void)
{
    ctx *c = &the_ctx;
    /* Threads that keep every core busy, so that the isle's thread is now
     * and then preempted right after waking the closer: without them the
     * old order failed here only under a loaded machine's timing. */
    enum { HOGS = 3 };
    pthread_t hogs[HOGS];
    check_hogs_start(hogs, HOGS);
    long live0 = failalloc_live();
    for (int k = 0; k < 200; k++) {
        CHECK(spawn_run(c));
        close_spawned(c);
        CHECK_EQ(failalloc_live(), live0);
    }
    check_hogs_stop(hogs, HOGS);
}

/* The path of the library this binary runs isle from. */
static const char *library_path(void)
{
    Dl_info info;
    CHECK(dladdr((void *)isle_spawn, &info) != 0 && info.dli_fname != NULL);
    return info.dli_fname;
}

int main(void)
{
    /* The isles' Lua side must load this very copy of the library. */
    CHECK_EQ(setenv("ISLE_LIB", library_path(), 1), 0);
    const char *path = getenv("LUA_PATH");
    if (!path || !strstr(path, "lua/?.lua")) {
        fprintf(stderr, "spawn_alloc: set LUA_PATH as the Makefile does (make -s path)\n");
        return 1;
    }
    ctx *c = &the_ctx;
    c->cfg.name = "failalloc";
    c->cfg.capacity = 16;
    c->cfg.path = path;
    c->cfg.cpath = getenv("LUA_CPATH");
    c->cfg.boot = encode_boot(&c->cfg.boot_len);
    c->cfg.instrument = 1;

    RUN(test_preload);
    RUN(test_spawn);
    RUN(test_close_frees_at_once);
    free((char *)c->cfg.boot);
    return check_done();
}
