/* fork.c - what the core does around fork(): it keeps its process-wide
 * locks and tables usable in the child.
 *
 * fork() copies only the calling thread. A lock another thread held at that
 * moment would stay locked in the child for ever, and the registries, the
 * watchdog and the interrupt table would describe threads that do not exist
 * there. So before a fork the forking thread takes every process-wide lock
 * of the core, in the lock order of isle.h (registries of isles, of shared
 * states and of pools, interrupt table, preload blobs, watchdog, then the
 * depots of the block caches, the pool of boot heaps, the kept LuaJIT
 * arenas and the parked threads, leaf locks); the parent
 * then releases them, and the child releases them and forgets the parent's
 * threads. Objects made before the fork (isles, tasks, mailboxes) are not
 * repaired: their own locks may be held by threads that are gone, so the Lua
 * layer refuses to use them in the child (isle_fork_generation tells it
 * that a fork happened).
 */
#include "internal.h"

#include <pthread.h>

static atomic_int generation;

int isle_fork_generation(void) { return atomic_load_explicit(&generation, memory_order_relaxed); }

/* The registries and the preload blobs live in the parts of the core that
 * link Lua (isle.c, state.c, preload.c); the C tests link the core without
 * them. */
__attribute__((weak)) void isle_registry_fork(int phase);
__attribute__((weak)) void isle_preload_fork(int phase);
__attribute__((weak)) void isle_state_fork(int phase);

static void prepare(void)
{
    if (isle_registry_fork) isle_registry_fork(ISLE_FORK_PREPARE);
    if (isle_state_fork) isle_state_fork(ISLE_FORK_PREPARE);
    isle_pool_fork(ISLE_FORK_PREPARE);
    isle_intr_fork(ISLE_FORK_PREPARE);
    if (isle_preload_fork) isle_preload_fork(ISLE_FORK_PREPARE);
    isle_watchdog_fork(ISLE_FORK_PREPARE);
    isle_cache_fork(ISLE_FORK_PREPARE);
    isle_bootheap_fork(ISLE_FORK_PREPARE);
    isle_arena_fork(ISLE_FORK_PREPARE);
    isle_threads_fork(ISLE_FORK_PREPARE);
}

static void after(int phase)
{
    isle_threads_fork(phase);
    isle_arena_fork(phase);
    isle_bootheap_fork(phase);
    isle_cache_fork(phase);
    isle_watchdog_fork(phase);
    if (isle_preload_fork) isle_preload_fork(phase);
    isle_intr_fork(phase);
    isle_pool_fork(phase);
    if (isle_state_fork) isle_state_fork(phase);
    if (isle_registry_fork) isle_registry_fork(phase);
}

static void parent(void) { after(ISLE_FORK_PARENT); }

static void child(void)
{
    atomic_fetch_add(&generation, 1);
    after(ISLE_FORK_CHILD);
}

/* Registered once, when the library is loaded (it is never unloaded: see
 * the -z nodelete link flag and pin_library in isle.c). */
__attribute__((constructor)) static void register_fork_handlers(void)
{
    pthread_atfork(prepare, parent, child);
}
