/* alloc_sweep.h - runs one operation of the core with each of its
 * allocations failing in turn (failalloc.c): n = 1, 2, 3... until a run
 * makes no allocation fail. After every run, with allocation working again,
 * the operation's own check looks at what the run left behind, shows that
 * the next operation works and cleans up; the sweep then requires that no
 * block, thread or file descriptor is left over. Include after check.h.
 */
#ifndef ISLE_TEST_ALLOC_SWEEP_H
#define ISLE_TEST_ALLOC_SWEEP_H

#include "failalloc.h"

#include <dirent.h>
#include <stdio.h>

typedef struct alloc_op {
    const char *name;
    void (*setup)(void *ctx);       /* optional; allocator working */
    int (*run)(void *ctx);          /* armed: 1 if it reported success, 0 if failure */
    /* Allocator working: checks what `run` left, that the next operation
     * works, and frees what it made. Returns the blocks kept on purpose
     * (a preloaded blob lives as long as the process). */
    long (*check)(void *ctx, int ok);
} alloc_op;

/* Entries of a /proc/self directory (threads, descriptors). */
static inline int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static inline int count_threads(void) { return count_entries("/proc/self/task"); }
static inline int count_fds(void) { return count_entries("/proc/self/fd"); }

/* threads.c: parked isle threads exit now, and are joined. */
void isle_threads_trim(void);

/* Waits (up to 10 s) for the thread count to come down to `n`: a watchdog
 * or an isle thread may still be on its way out, and a thread whose isle
 * ended may be parked for the next one (it is made to exit first). */
static inline int threads_settle(int n)
{
    isle_threads_trim();
    for (int k = 0; k < 1000 && count_threads() > n; k++) check_sleep(0.01);
    return count_threads();
}

/* Returns the number of allocation sites the sweep failed (at least one:
 * a sweep that fails nothing means the wrapper is not in place). */
static inline long alloc_sweep(const alloc_op *o, void *ctx, int flags)
{
    long live0 = failalloc_live(), kept = 0;
    int threads0 = count_threads(), fds0 = count_fds();
    for (long n = 1;; n++) {
        if (o->setup) o->setup(ctx);
        failalloc_arm(n, flags);
        int ok = o->run(ctx);
        long failed = failalloc_disarm();
        if (failed && ok)
            fprintf(stderr, "%s: allocation %ld failed, yet it reported success\n", o->name, n);
        if (!failed && !ok)
            fprintf(stderr, "%s: reported a failure with no allocation failing\n", o->name);
        CHECK(!failed || !ok);
        CHECK(failed || ok);
        kept += o->check(ctx, ok);
        CHECK_EQ(failalloc_live(), live0 + kept);
        CHECK_EQ(threads_settle(threads0), threads0);
        CHECK_EQ(count_fds(), fds0);
        if (!failed) {
            printf("    %s%s: %ld allocation sites\n", o->name,
                   flags & FAILALLOC_PERSIST ? " (persistent)" : "", n - 1);
            CHECK(n > 1);
            return n - 1;
        }
    }
}

/* Both modes: only the n-th allocation fails, then every one from the n-th. */
static inline long alloc_sweep_both(const alloc_op *o, void *ctx, int flags)
{
    long sites = alloc_sweep(o, ctx, flags);
    CHECK_EQ(alloc_sweep(o, ctx, flags | FAILALLOC_PERSIST), sites);
    return sites;
}

#endif
