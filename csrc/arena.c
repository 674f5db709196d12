/* arena.c - LuaJIT's own arenas, kept from closed states for the next ones.
 *
 * Why: luaL_newstate maps a fresh arena for LuaJIT's allocator (page faults
 * for every page the new state touches) and lua_close unmaps it (an munmap
 * in a process with threads on several cores: a TLB shootdown, an
 * inter-processor interrupt per core, in this VM a hypervisor exit each).
 * Measured on a spawn + ping + close cycle: the munmap alone was ~15% of the
 * process's CPU, lua_newstate's mapping and faults ~10% (bench/README.md, Issue 12).
 *
 * LuaJIT's lua_close destroys its arena only when the state's allocator is
 * LuaJIT's own function at that moment (lj_state.c, close_state); with any
 * other function it only frees the state's main block through it, and the
 * arena, every block of the state freed into it, stays mapped and usable.
 * So a closing state whose arena is to be kept ends on a forwarder to
 * LuaJIT's function (isle.c), and a new state is made with
 * lua_newstate(LuaJIT's function, kept arena): the same allocator as
 * luaL_newstate's, on pages already faulted in. (lua_newstate with an
 * allocator of the caller's works on GC64 builds, which both supported
 * LuaJIT builds are: ../shared/LUAJIT.md.)
 *
 * What is kept is bounded: at most ISLE_ARENA_POOL arenas, each from a state
 * whose heap never passed ISLE_ARENA_PEAK bytes (after its state closes an
 * arena holds all its blocks free; LuaJIT trims only what is past 2 MiB, so
 * an arena that once held much may stay large). Beyond that the arena is
 * LuaJIT's to destroy, as before.
 *
 * A slot is reserved before the close (isle_arena_reserve) and filled after
 * it (isle_arena_put), so that the choice between keeping and destroying is
 * made while the allocator can still be chosen. The pool's lock is a leaf
 * (isle.h's lock order), held around fork() (fork.c): arenas pooled before
 * a fork are the child's copies and stay usable there.
 */
#include "internal.h"

static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;
static void *kept[ISLE_ARENA_POOL]; /* arena_lock */
static int nkept;                   /* arena_lock: kept[0 .. nkept) */
static int reserved;                /* arena_lock: slots promised to closing states */

void *isle_arena_take(void)
{
    void *a = NULL;
    pthread_mutex_lock(&arena_lock);
    if (nkept) a = kept[--nkept];
    pthread_mutex_unlock(&arena_lock);
    return a;
}

int isle_arena_reserve(size_t peak)
{
    if (peak > ISLE_ARENA_PEAK) return 0;
    int ok = 0;
    pthread_mutex_lock(&arena_lock);
    if (nkept + reserved < ISLE_ARENA_POOL) {
        reserved++;
        ok = 1;
    }
    pthread_mutex_unlock(&arena_lock);
    return ok;
}

void isle_arena_put(void *arena)
{
    pthread_mutex_lock(&arena_lock);
    reserved--;
    if (arena) kept[nkept++] = arena;
    pthread_mutex_unlock(&arena_lock);
}

int isle_arena_pooled(void)
{
    pthread_mutex_lock(&arena_lock);
    int n = nkept;
    pthread_mutex_unlock(&arena_lock);
    return n;
}

void isle_arena_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&arena_lock);
        return;
    }
    /* The threads that had reserved slots are not in the child. */
    if (phase == ISLE_FORK_CHILD) reserved = 0;
    pthread_mutex_unlock(&arena_lock);
}
