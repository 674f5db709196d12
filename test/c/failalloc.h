/* failalloc.h - an allocator that fails on request, for the tests of the
 * core's out-of-memory paths (see failalloc.c and docs/testing.md). */
#ifndef ISLE_TEST_FAILALLOC_H
#define ISLE_TEST_FAILALLOC_H

enum {
    FAILALLOC_ANY_THREAD = 1, /* count the allocations of every thread, not only the armer's */
    FAILALLOC_PERSIST = 2     /* fail the n-th allocation and every one after it */
};

/* The n-th allocation from now (1: the next one) fails. Only the calling
 * thread's allocations count unless FAILALLOC_ANY_THREAD. Rearming resets. */
void failalloc_arm(long n, int flags);
/* Stop failing; returns how many allocations failed since failalloc_arm. */
long failalloc_disarm(void);
/* Blocks allocated through the wrappers and not freed yet (a leak check for
 * runs without LeakSanitizer). */
long failalloc_live(void);

/* The core keeps freed small messages and task slots for reuse
 * (csrc/cache.c), which would hide blocks from both counts above: a
 * program linked with this file starts with that cache paused, so that
 * every block reaches the wrappers, as before the cache existed. Tests of
 * the cache itself, and the stress tests, call isle_cache_pause(0). */
void isle_cache_pause(int paused);

#endif
