/*
 * host_call.c - what the C hosts' API (csrc/isle_host.h) costs: round trips
 * through ihost_call against the C floor measured moments apart
 * (bench/c/pingpong.c: the same traffic through the core's primitives, no
 * encoding and no Lua), as bench/run.lua does for the Lua API.
 *
 *   host_call [N] [REPS]    (defaults 100000 and 5)
 *
 * Rows: C1 `ihost_call("inc", i)` (W1 from C), C3 a call with a 5-field
 * table argument returned as it is (W3 from C), C6 spawn + one call +
 * close; each the median of REPS runs, and the median of the per-run
 * ratios to the floor run next to it. `make bench-chost` builds and runs it.
 */
#include "isle.h"
#include "isle_host.h"

#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what, ihost_error *e)
{
    fprintf(stderr, "host_call: %s: %s\n", what, ihost_error_message(e));
    exit(1);
}

/* The C floor: `pingpong ping n`, microseconds per round trip. */
static double floor_ping(const char *bin, long n)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s ping %ld", bin, n);
    FILE *f = popen(cmd, "r");
    double us = -1;
    if (!f || fscanf(f, "%lf", &us) != 1) {
        fprintf(stderr, "host_call: cannot run %s\n", cmd);
        exit(1);
    }
    pclose(f);
    return us;
}

static double calls(ihost_isle *h, const char *fn, long n, int with_table)
{
    ihost_error *e = NULL;
    ihost_table *t = NULL;
    if (with_table) {
        t = ihost_table_new();
        if (!t || ihost_table_setfield(t, "id", ihost_number(7)) || ihost_table_setfield(t, "name", ihost_string("goblin"))
            || ihost_table_setfield(t, "x", ihost_number(1.5)) || ihost_table_setfield(t, "y", ihost_number(-2))
            || ihost_table_setfield(t, "alive", ihost_boolean(1)))
            die("table", NULL);
    }
    double t0 = isle_now();
    for (long i = 0; i < n; i++) {
        ihost_value arg = with_table ? ihost_tablev(t) : ihost_number((double)i);
        ihost_results *r = NULL;
        if (ihost_call(h, fn, &arg, 1, -1, &r, &e)) die(fn, e);
        if (!with_table && ihost_results_get(r, 0).v.number != (double)i + 1) die("wrong result", NULL);
        ihost_results_free(r);
    }
    double us = (isle_now() - t0) * 1e6 / (double)n;
    ihost_table_free(t);
    return us;
}

static double spawns(long n)
{
    ihost_error *e = NULL;
    double t0 = isle_now();
    for (long i = 0; i < n; i++) {
        ihost_isle *h = NULL;
        if (ihost_spawn("function inc(x) return x + 1 end", NULL, &h, &e)) die("spawn", e);
        ihost_value one = ihost_number(1);
        if (ihost_call(h, "inc", &one, 1, -1, NULL, &e)) die("inc", e);
        ihost_close(h, 0);
    }
    return (isle_now() - t0) * 1e3 / (double)n;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (n < 1 || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: host_call [N] [REPS]\n");
        return 2;
    }
    const char *bin = getenv("ISLE_BENCH_FLOOR") ? getenv("ISLE_BENCH_FLOOR") : "build/bench_pingpong";
    ihost_isle *h = NULL;
    ihost_error *e = NULL;
    if (ihost_spawn("function inc(x) return x + 1 end function echo(...) return ... end", NULL, &h, &e))
        die("spawn", e);
    calls(h, "inc", 1000, 0); /* warm up */
    double c1[64], c3[64], c6[64], fl[64], r1[64], r3[64];
    for (int k = 0; k < reps; k++) {
        fl[k] = floor_ping(bin, n);
        c1[k] = calls(h, "inc", n, 0);
        c3[k] = calls(h, "echo", n / 4, 1);
        c6[k] = spawns(n / 2000 > 5 ? n / 2000 : 5);
        r1[k] = c1[k] / fl[k];
        r3[k] = c3[k] / fl[k];
    }
    ihost_close(h, 0);
    double f = median(fl, reps);
    printf("C floor  ping (pingpong.c)          %8.2f us/rt\n", f);
    printf("C1 ihost_call(\"inc\", i)             %8.2f us/rt  %5.2fx the floor\n", median(c1, reps), median(r1, reps));
    printf("C3 ihost_call(\"echo\", 5-field table) %8.2f us/rt  %5.2fx the floor\n", median(c3, reps), median(r3, reps));
    printf("C6 ihost_spawn + call + ihost_close  %8.3f ms/isle\n", median(c6, reps));
    return 0;
}
