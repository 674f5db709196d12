/* host_api.c - the C hosts' API (csrc/isle_host.h, docs/c-api.md), from a
 * program with no Lua state of its own: values both ways (nil, booleans,
 * doubles with inf/nan/-0, 64-bit integers, strings with NULs, nested
 * tables), the table API, calls, eval, posts, tasks, timeouts, cancelling
 * a compiled loop, closed isles, errors with their traceback, misuse, the
 * decoder against malformed and random bytes, the encoder against
 * LuaJIT's own, many threads on one isle, and every allocation failing in
 * turn (alloc_sweep.h).
 *
 * Not one of the test_*.c (those build from the core's sources alone):
 * isles are LuaJIT states, so this links build/libisle-failalloc.so (the
 * library with the failing allocator, as spawn_alloc.c does; the isles load
 * that same copy by themselves) and needs LUA_PATH as the Makefile exports
 * it. `make test-chost` runs it plain and
 * under AddressSanitizer.
 */
#define CHECK_TIMEOUT 300
#include "check.h"
#include "alloc_sweep.h"
#include "isle.h"
#include "isle_host.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

static const char INIT[] =
    "local ffi = require('ffi')\n"
    "local isle = require('isle')\n"
    "local buffer = require('string.buffer')\n"
    "base = (... or 0) + (select(2, ...) or 0)\n"
    "function echo(...) return ... end\n"
    "function count(...) return select('#', ...) end\n"
    "function add(a, b) return a + b end\n"
    "function kinds(...)\n"
    "  local out = {}\n"
    "  for i = 1, select('#', ...) do\n"
    "    local v = select(i, ...)\n"
    "    out[i] = type(v) == 'cdata' and tostring(ffi.typeof(v)) or type(v)\n"
    "  end\n"
    "  return table.concat(out, ' ')\n"
    "end\n"
    "function negzero(x) return x == 0 and 1 / x < 0 end\n"
    "function spin() local n = 0 while true do n = n + 1 end end\n"
    "function fail_deep()\n"
    "  local function inner() error('boom in inner') end\n"
    "  inner()\n"
    "end\n"
    "function fail_table() error({ code = 42, why = 'a table', f = function() end }) end\n"
    "function fail_code() error(require('isle.errors').new('newfangled', 'a code C does not know')) end\n"
    "counter = 0\n"
    "function bump(n) counter = counter + (n or 1) end\n"
    "function get() return counter end\n"
    "function lua_values()\n"
    "  return { 1, 2, 3, x = { y = 'z' }, [true] = false, [1.5] = 'f', [0] = 'zero', [-1] = 'neg' },\n"
    "         2^53, 0/0, -0.0, -1LL, 2ULL^63, 'a\\0b', nil\n"
    "end\n"
    "function encoded(x) return buffer.encode(x) end\n"
    "function reencode(s) return buffer.encode(buffer.decode(s)) end\n"
    "function give_function() return { ok = 1, cb = function() end } end\n"
    "function give_complex() return 1i end\n"

    "function many(n) local t = {} for i = 1, n do t[i] = i end return unpack(t, 1, n) end\n"
    "function check_table(t)\n"
    "  assert(t[1] == 'a' and t[2] == nil and t[3] == 'c', 'array part')\n"
    "  assert(t.name == 'bob' and t[1.5] == 'x' and t[true] == 'yes', 'hash part')\n"
    "  assert(t.pos.x == 1 and t.pos.y == -2.5, 'nested')\n"
    "  return true\n"
    "end\n";

static ihost_isle *spawn_ok(const char *init, const ihost_options *o)
{
    ihost_isle *h = (ihost_isle *)1;
    ihost_error *err = (ihost_error *)1;
    int rc = ihost_spawn(init, o, &h, &err);
    if (rc) fprintf(stderr, "spawn: %s: %s\n", ihost_error_code(err), ihost_error_message(err));
    CHECK_EQ(rc, IHOST_OK);
    CHECK(err == NULL);
    CHECK(h != NULL);
    return h;
}

static ihost_results *call_ok(ihost_isle *h, const char *fn, const ihost_value *a, size_t n)
{
    ihost_results *r = NULL;
    ihost_error *err = NULL;
    int rc = ihost_call(h, fn, a, n, 30, &r, &err);
    if (rc) fprintf(stderr, "%s: %s: %s\n", fn, ihost_error_code(err), ihost_error_message(err));
    CHECK_EQ(rc, IHOST_OK);
    CHECK(r != NULL);
    return r;
}

/* A call that must fail with `kind`; returns its error. */
static ihost_error *call_fails(ihost_isle *h, const char *fn, const ihost_value *a, size_t n,
                               double timeout, int kind)
{
    ihost_results *r = (ihost_results *)1;
    ihost_error *err = NULL;
    int rc = ihost_call(h, fn, a, n, timeout, &r, &err);
    if (rc != kind) fprintf(stderr, "%s: got %d (%s)\n", fn, rc, ihost_error_message(err));
    CHECK_EQ(rc, kind);
    CHECK(r == NULL);
    CHECK(err != NULL);
    CHECK_EQ(ihost_error_kind(err), kind);
    return err;
}

static const char *str_of(ihost_value v)
{
    CHECK_EQ(v.type, IHOST_TSTRING);
    return v.v.str.ptr;
}

static double num_of(ihost_value v)
{
    CHECK_EQ(v.type, IHOST_TNUMBER);
    return v.v.number;
}

static int value_eq(ihost_value a, ihost_value b);

/* Tables are equal when they hold equal entries. Keys that compare by
 * identity in Lua (tables, int64) are matched by content, anywhere: a
 * Lua sender lays its hash part out in its own order. */
static int table_eq(const ihost_table *a, const ihost_table *b)
{
    if (ihost_table_count(a) != ihost_table_count(b)) return 0;
    size_t ia = 0;
    ihost_value k, v, kb, vb;
    while (ihost_table_next(a, &ia, &k, &v)) {
        if (k.type == IHOST_TBOOLEAN || k.type == IHOST_TNUMBER || k.type == IHOST_TSTRING) {
            if (!value_eq(v, ihost_table_get(b, k))) return 0;
            continue;
        }
        size_t ib = 0;
        int found = 0;
        while (!found && ihost_table_next(b, &ib, &kb, &vb))
            found = value_eq(k, kb) && value_eq(v, vb);
        if (!found) return 0;
    }
    return 1;
}

static int value_eq(ihost_value a, ihost_value b)
{
    if (a.type != b.type) return 0;
    switch (a.type) {
    case IHOST_TNIL: return 1;
    case IHOST_TBOOLEAN: return a.v.boolean == b.v.boolean;
    case IHOST_TNUMBER:
        return memcmp(&a.v.number, &b.v.number, sizeof(double)) == 0
            || (a.v.number != a.v.number && b.v.number != b.v.number);
    case IHOST_TINT64: return a.v.i64 == b.v.i64;
    case IHOST_TUINT64: return a.v.u64 == b.v.u64;
    case IHOST_TSTRING:
        return a.v.str.len == b.v.str.len && memcmp(a.v.str.ptr, b.v.str.ptr, a.v.str.len) == 0;
    case IHOST_TTABLE: return table_eq(a.v.table, b.v.table);
    }
    return 0;
}

static ihost_isle *test_isle;

/* ---- values ------------------------------------------------------------------- */

static void test_scalars_round_trip(void)
{
    ihost_isle *h = test_isle;
    static const char bin[] = "a\0b\0\xff\x01";
    ihost_value v[] = {
        ihost_nil(), ihost_boolean(0), ihost_boolean(7), ihost_number(0), ihost_number(-0.0),
        ihost_number(1.5), ihost_number(INFINITY), ihost_number(-INFINITY), ihost_number(NAN),
        ihost_number(9007199254740993.0), ihost_number(-1e308), ihost_number(5e-324),
        ihost_int64(INT64_MIN), ihost_int64(INT64_MAX), ihost_uint64(UINT64_MAX),
        ihost_lstring(bin, sizeof bin - 1), ihost_lstring("", 0), ihost_string("plain"),
        ihost_nil(),
    };
    size_t n = sizeof v / sizeof v[0];
    ihost_results *r = call_ok(h, "echo", v, n);
    CHECK_EQ(ihost_results_count(r), n); /* the trailing nil counts */
    for (size_t i = 0; i < n; i++) CHECK(value_eq(v[i], ihost_results_get(r, i)));
    CHECK(signbit(ihost_results_get(r, 4).v.number));
    CHECK_EQ(ihost_results_get(r, 2).v.boolean, 1);
    CHECK_EQ(ihost_results_get(r, 15).v.str.ptr[6], '\0'); /* NUL after, not counted */
    CHECK_EQ(ihost_results_get(r, n).type, IHOST_TNIL);   /* beyond the end */
    ihost_results_free(r);

    /* What the isle saw: the types, and -0.0 itself. */
    r = call_ok(h, "kinds", v, n);
    CHECK(strcmp(str_of(ihost_results_get(r, 0)),
                 "nil boolean boolean number number number number number number number number "
                 "number ctype<int64_t> ctype<int64_t> ctype<uint64_t> string string string nil") == 0);
    ihost_results_free(r);
    ihost_value z = ihost_number(-0.0);
    r = call_ok(h, "negzero", &z, 1);
    CHECK(value_eq(ihost_results_get(r, 0), ihost_boolean(1)));
    ihost_results_free(r);

    /* No arguments, no results; then many of both. */
    r = call_ok(h, "count", NULL, 0);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 0);
    ihost_results_free(r);
    r = call_ok(h, "echo", NULL, 0);
    CHECK_EQ(ihost_results_count(r), 0);
    ihost_results_free(r);
    ihost_value *lots = calloc(IHOST_MAX_ARGS, sizeof(*lots));
    for (int i = 0; i < IHOST_MAX_ARGS; i++) lots[i] = ihost_number(i);
    r = call_ok(h, "count", lots, IHOST_MAX_ARGS);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), IHOST_MAX_ARGS);
    ihost_results_free(r);
    free(lots);
    ihost_value k = ihost_number(5000);
    r = call_ok(h, "many", &k, 1);
    CHECK_EQ(ihost_results_count(r), 5000);
    CHECK_EQ(num_of(ihost_results_get(r, 4999)), 5000);
    ihost_results_free(r);

    /* A large binary string, byte-exact both ways. */
    size_t big = 3u << 20;
    char *s = malloc(big);
    for (size_t i = 0; i < big; i++) s[i] = (char)(i * 131 + (i >> 9));
    ihost_value bs = ihost_lstring(s, big);
    r = call_ok(h, "echo", &bs, 1);
    CHECK(value_eq(bs, ihost_results_get(r, 0)));
    ihost_results_free(r);
    free(s);
}

/* A table as check_table() in INIT expects it. */
static ihost_table *sample_table(void)
{
    ihost_table *t = ihost_table_new();
    CHECK(t != NULL);
    CHECK_EQ(ihost_table_push(t, ihost_string("a")), IHOST_OK);
    CHECK_EQ(ihost_table_push(t, ihost_nil()), IHOST_OK);   /* a hole */
    CHECK_EQ(ihost_table_push(t, ihost_string("c")), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(t, "name", ihost_string("bob")), IHOST_OK);
    CHECK_EQ(ihost_table_set(t, ihost_number(1.5), ihost_string("x")), IHOST_OK);
    CHECK_EQ(ihost_table_set(t, ihost_boolean(1), ihost_string("yes")), IHOST_OK);
    ihost_table *pos = ihost_table_new();
    CHECK_EQ(ihost_table_setfield(pos, "x", ihost_number(1)), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(pos, "y", ihost_number(-2.5)), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(t, "pos", ihost_tablev(pos)), IHOST_OK);
    return t;
}

static void test_tables_round_trip(void)
{
    ihost_isle *h = test_isle;
    ihost_table *t = sample_table();
    ihost_value arg = ihost_tablev(t);
    ihost_results *r = call_ok(h, "check_table", &arg, 1); /* as Lua sees it */
    CHECK(value_eq(ihost_results_get(r, 0), ihost_boolean(1)));
    ihost_results_free(r);
    r = call_ok(h, "echo", &arg, 1);
    ihost_value back = ihost_results_get(r, 0);
    CHECK(value_eq(arg, back));
    CHECK_EQ(ihost_table_len(back.v.table), 1); /* t[2] is nil */
    CHECK(strcmp(str_of(ihost_table_geti(back.v.table, 3)), "c") == 0);
    CHECK_EQ(num_of(ihost_table_getfield(ihost_table_getfield(back.v.table, "pos").v.table, "y")), -2.5);
    ihost_results_free(r);

    /* A table key and an int64 key cross too (Lua compares them by identity). */
    ihost_table *key = ihost_table_new();
    CHECK_EQ(ihost_table_push(key, ihost_number(7)), IHOST_OK);
    CHECK_EQ(ihost_table_set(t, ihost_tablev(key), ihost_string("by table")), IHOST_OK);
    CHECK_EQ(ihost_table_set(t, ihost_int64(9), ihost_string("by int64")), IHOST_OK);
    r = call_ok(h, "echo", &arg, 1);
    CHECK(value_eq(arg, ihost_results_get(r, 0)));
    ihost_results_free(r);
    ihost_table_free(t);

    /* 100 levels cross; a 101st cannot be built. */
    ihost_table *root = ihost_table_new(), *leaf = root;
    for (int i = 1; i < IHOST_MAX_DEPTH; i++) {
        ihost_table *c = ihost_table_new();
        CHECK_EQ(ihost_table_setfield(leaf, "down", ihost_tablev(c)), IHOST_OK);
        leaf = c;
    }
    ihost_table *extra = ihost_table_new();
    CHECK_EQ(ihost_table_setfield(leaf, "down", ihost_tablev(extra)), IHOST_EINVAL);
    ihost_table_free(extra);
    CHECK_EQ(ihost_table_setfield(leaf, "bottom", ihost_boolean(1)), IHOST_OK);
    ihost_value deep = ihost_tablev(root);
    r = call_ok(h, "echo", &deep, 1);
    CHECK(value_eq(deep, ihost_results_get(r, 0)));
    ihost_results_free(r);
    ihost_table_free(root);

    /* A big array and a big hash part. */
    ihost_table *bigt = ihost_table_new();
    for (int i = 1; i <= 100000; i++) CHECK_EQ(ihost_table_push(bigt, ihost_number(i)), IHOST_OK);
    char name[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(name, sizeof name, "k%d", i);
        CHECK_EQ(ihost_table_setfield(bigt, name, ihost_number(-i)), IHOST_OK);
    }
    ihost_value bv = ihost_tablev(bigt);
    r = call_ok(h, "echo", &bv, 1);
    CHECK(value_eq(bv, ihost_results_get(r, 0)));
    CHECK_EQ(ihost_table_len(ihost_results_get(r, 0).v.table), 100000);
    ihost_results_free(r);
    ihost_table_free(bigt);
}

/* Values only Lua makes: mixed tables with keys 0, -1, 1.5, true; cdata. */
static void test_lua_values(void)
{
    ihost_results *r = call_ok(test_isle, "lua_values", NULL, 0);
    CHECK_EQ(ihost_results_count(r), 8);
    ihost_table *t = ihost_results_get(r, 0).v.table;
    CHECK_EQ(ihost_table_len(t), 3);
    CHECK_EQ(ihost_table_count(t), 8);
    CHECK_EQ(num_of(ihost_table_geti(t, 2)), 2);
    CHECK(strcmp(str_of(ihost_table_getfield(ihost_table_getfield(t, "x").v.table, "y")), "z") == 0);
    CHECK(value_eq(ihost_table_get(t, ihost_boolean(1)), ihost_boolean(0)));
    CHECK(strcmp(str_of(ihost_table_get(t, ihost_number(1.5))), "f") == 0);
    CHECK(strcmp(str_of(ihost_table_geti(t, 0)), "zero") == 0);
    CHECK(strcmp(str_of(ihost_table_get(t, ihost_number(-0.0))), "zero") == 0); /* -0 is 0 */
    CHECK(strcmp(str_of(ihost_table_geti(t, -1)), "neg") == 0);
    CHECK_EQ(num_of(ihost_results_get(r, 1)), 9007199254740992.0);
    CHECK(isnan(num_of(ihost_results_get(r, 2))));
    CHECK(signbit(num_of(ihost_results_get(r, 3))));
    CHECK(value_eq(ihost_results_get(r, 4), ihost_int64(-1)));
    CHECK(value_eq(ihost_results_get(r, 5), ihost_uint64(1ULL << 63)));
    CHECK(value_eq(ihost_results_get(r, 6), ihost_lstring("a\0b", 3)));
    CHECK_EQ(ihost_results_get(r, 7).type, IHOST_TNIL);
    ihost_results_free(r);

    /* What C cannot hold is refused with its path. */
    ihost_error *e = call_fails(test_isle, "give_function", NULL, 0, 30, IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "results[1].cb") != NULL);
    CHECK(strstr(ihost_error_message(e), "function") != NULL);
    ihost_error_free(e);
    e = call_fails(test_isle, "give_complex", NULL, 0, 30, IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "complex") != NULL);
    ihost_error_free(e);
}

static void test_table_api(void)
{
    ihost_table *t = ihost_table_new();
    /* set(t, 2) before the array reaches it, then push over it. */
    CHECK_EQ(ihost_table_seti(t, 2, ihost_string("two")), IHOST_OK);
    CHECK_EQ(ihost_table_len(t), 0);
    CHECK_EQ(ihost_table_push(t, ihost_string("one")), IHOST_OK);
    CHECK_EQ(ihost_table_len(t), 2); /* t[2] is still in the hash part */
    CHECK_EQ(ihost_table_push(t, ihost_string("TWO")), IHOST_OK);
    CHECK_EQ(ihost_table_count(t), 2);
    CHECK(strcmp(str_of(ihost_table_geti(t, 2)), "TWO") == 0);
    /* 1 and 1.0 are one key; replacing and removing. */
    CHECK_EQ(ihost_table_set(t, ihost_number(1.0), ihost_string("uno")), IHOST_OK);
    CHECK(strcmp(str_of(ihost_table_geti(t, 1)), "uno") == 0);
    CHECK_EQ(ihost_table_setfield(t, "k", ihost_number(1)), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(t, "k", ihost_number(2)), IHOST_OK);
    CHECK_EQ(ihost_table_count(t), 3);
    CHECK_EQ(ihost_table_setfield(t, "k", ihost_nil()), IHOST_OK);
    CHECK_EQ(ihost_table_count(t), 2);
    CHECK_EQ(ihost_table_getfield(t, "k").type, IHOST_TNIL);
    CHECK_EQ(ihost_table_setfield(t, "absent", ihost_nil()), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(t, "k", ihost_number(3)), IHOST_OK); /* back again */
    CHECK_EQ(num_of(ihost_table_getfield(t, "k")), 3);
    /* Strings are copied. */
    char buf[8] = "temp";
    CHECK_EQ(ihost_table_setfield(t, buf, ihost_string(buf)), IHOST_OK);
    strcpy(buf, "XXXX");
    CHECK(strcmp(str_of(ihost_table_getfield(t, "temp")), "temp") == 0);
    /* Iteration: array part first, every live entry once. */
    size_t it = 0, seen = 0;
    ihost_value k, v;
    while (ihost_table_next(t, &it, &k, &v)) {
        if (seen == 0) CHECK_EQ(num_of(k), 1);
        seen++;
    }
    CHECK_EQ(seen, ihost_table_count(t));
    CHECK_EQ(ihost_table_next(t, &it, NULL, NULL), 0);
    /* Bad keys and values. */
    CHECK_EQ(ihost_table_set(t, ihost_nil(), ihost_number(1)), IHOST_EINVAL);
    CHECK_EQ(ihost_table_set(t, ihost_number(NAN), ihost_number(1)), IHOST_EINVAL);
    CHECK_EQ(ihost_table_set(t, ihost_lstring(NULL, 3), ihost_number(1)), IHOST_EINVAL);
    ihost_value odd = ihost_nil();
    odd.type = (ihost_type)42;
    CHECK_EQ(ihost_table_setfield(t, "odd", odd), IHOST_EINVAL);
    CHECK_EQ(ihost_table_setfield(t, NULL, ihost_nil()), IHOST_EINVAL);
    CHECK_EQ(ihost_table_set(NULL, ihost_number(1), ihost_nil()), IHOST_EINVAL);
    CHECK_EQ(ihost_table_setfield(t, "self", ihost_tablev(t)), IHOST_EINVAL);
    CHECK_EQ(ihost_table_setfield(t, "null", ihost_tablev(NULL)), IHOST_EINVAL);
    /* Adoption: a table belongs to one table; no cycles. */
    ihost_table *a = ihost_table_new(), *b = ihost_table_new();
    CHECK_EQ(ihost_table_setfield(t, "a", ihost_tablev(a)), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(t, "a2", ihost_tablev(a)), IHOST_EINVAL);  /* already owned */
    CHECK_EQ(ihost_table_setfield(a, "b", ihost_tablev(b)), IHOST_OK);
    ihost_table *outer = ihost_table_new();
    CHECK_EQ(ihost_table_setfield(outer, "t", ihost_tablev(t)), IHOST_OK);
    CHECK_EQ(ihost_table_setfield(b, "loop", ihost_tablev(outer)), IHOST_EINVAL); /* outer contains b */
    CHECK_EQ(ihost_table_set(t, ihost_tablev(b), ihost_number(1)), IHOST_EINVAL); /* as a key too */
    ihost_table_free(a); /* owned: a no-op, freed with outer */
    CHECK(ihost_table_getfield(ihost_table_getfield(t, "a").v.table, "b").v.table == b);
    /* Replacing a table value frees it (ASan/valgrind see a leak otherwise). */
    CHECK_EQ(ihost_table_setfield(t, "a", ihost_number(0)), IHOST_OK);
    ihost_table_free(outer);
    ihost_table_free(NULL);
    /* Reads on NULL are safe. */
    CHECK_EQ(ihost_table_len(NULL), 0);
    CHECK_EQ(ihost_table_count(NULL), 0);
    CHECK_EQ(ihost_table_getfield(NULL, "x").type, IHOST_TNIL);
    CHECK_EQ(ihost_string(NULL).type, IHOST_TNIL);
    CHECK_EQ(ihost_results_count(NULL), 0);
    CHECK_EQ(ihost_results_get(NULL, 0).type, IHOST_TNIL);
    ihost_results_free(NULL);
    ihost_error_free(NULL);
    ihost_bytes_free(NULL);
}

/* ---- errors ------------------------------------------------------------------------ */

static void test_runtime_errors(void)
{
    ihost_isle *h = test_isle;
    ihost_error *e = call_fails(h, "fail_deep", NULL, 0, 30, IHOST_ERUNTIME);
    CHECK(strcmp(ihost_error_code(e), "runtime") == 0);
    CHECK(strstr(ihost_error_message(e), "boom in inner") != NULL);
    const char *tb = ihost_error_traceback(e);
    CHECK(tb != NULL);
    CHECK(strstr(tb, "stack traceback (isle") != NULL);
    CHECK(strstr(tb, "inner") != NULL);
    CHECK(strstr(tb, "init:20:") != NULL); /* fail_deep, where it called inner */
    CHECK_EQ(ihost_error_value(e).type, IHOST_TNIL);
    ihost_error_free(e);

    /* A table error value comes back without what C cannot hold. */
    e = call_fails(h, "fail_table", NULL, 0, 30, IHOST_ERUNTIME);
    ihost_value ev = ihost_error_value(e);
    CHECK_EQ(ev.type, IHOST_TTABLE);
    CHECK_EQ(num_of(ihost_table_getfield(ev.v.table, "code")), 42);
    CHECK(strcmp(str_of(ihost_table_getfield(ev.v.table, "why")), "a table") == 0);
    CHECK_EQ(ihost_table_getfield(ev.v.table, "f").type, IHOST_TNIL);
    ihost_error_free(e);

    /* A code this header does not know: kept as sent, read as runtime. */
    e = call_fails(h, "fail_code", NULL, 0, 30, IHOST_ERUNTIME);
    CHECK(strcmp(ihost_error_code(e), "newfangled") == 0);
    CHECK(strcmp(ihost_error_message(e), "a code C does not know") == 0);
    ihost_error_free(e);

    e = call_fails(h, "no_such_function", NULL, 0, 30, IHOST_ERUNTIME);
    CHECK(strstr(ihost_error_message(e), "no function 'no_such_function'") != NULL);
    ihost_error_free(e);

    /* eval: results, arguments, errors, syntax errors. */
    ihost_value a[2] = {ihost_number(6), ihost_number(7)};
    ihost_results *r = NULL;
    CHECK_EQ(ihost_eval(h, "local a, b = ... return a * b, base", a, 2, 30, &r, NULL), IHOST_OK);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 42);
    CHECK_EQ(num_of(ihost_results_get(r, 1)), 3); /* set by init from its args */
    ihost_results_free(r);
    CHECK_EQ(ihost_eval(h, "error('from eval')", NULL, 0, 30, &r, &e), IHOST_ERUNTIME);
    CHECK(strstr(ihost_error_message(e), "from eval") != NULL);
    CHECK(ihost_error_traceback(e) != NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_eval(h, "this is not lua", NULL, 0, 30, &r, &e), IHOST_ERUNTIME);
    CHECK(strstr(ihost_error_message(e), "eval") != NULL);
    ihost_error_free(e);
    /* No details wanted: the code alone. */
    CHECK_EQ(ihost_call(h, "fail_deep", NULL, 0, 30, NULL, NULL), IHOST_ERUNTIME);
    CHECK_EQ(ihost_call(h, "add", a, 2, 30, NULL, NULL), IHOST_OK);
}

static void test_misuse(void)
{
    ihost_isle *h = test_isle;
    ihost_error *e = NULL;
    ihost_results *r = (ihost_results *)1;
    CHECK_EQ(ihost_call(NULL, "add", NULL, 0, 1, &r, &e), IHOST_EINVAL);
    CHECK(r == NULL);
    CHECK(strcmp(ihost_error_code(e), "invalid") == 0);
    ihost_error_free(e);
    CHECK_EQ(ihost_call(h, NULL, NULL, 0, 1, &r, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_call(h, "add", NULL, 0, NAN, &r, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_call(h, "add", NULL, 2, 1, &r, &e), IHOST_EINVAL); /* NULL args with a count */
    ihost_error_free(e);
    /* Bad values, named by their place; nothing is sent. */
    ihost_value bad[3] = {ihost_number(1), ihost_lstring(NULL, 2), ihost_nil()};
    CHECK_EQ(ihost_call(h, "bump", bad, 3, 1, &r, &e), IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "args[2]") != NULL);
    CHECK(strstr(ihost_error_message(e), "NULL") != NULL);
    ihost_error_free(e);
    bad[1].type = (ihost_type)99;
    CHECK_EQ(ihost_post(h, "bump", bad, 3, &e), IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "unknown type 99 at args[2]") != NULL);
    ihost_error_free(e);
    ihost_value *lots = calloc(IHOST_MAX_ARGS + 1, sizeof(*lots));
    CHECK_EQ(ihost_call(h, "count", lots, IHOST_MAX_ARGS + 1, 1, &r, &e), IHOST_EVALUE);
    ihost_error_free(e);
    free(lots);
    r = call_ok(h, "get", NULL, 0);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 0); /* no bump ran */
    ihost_results_free(r);
    /* Tasks. */
    ihost_task *t = (ihost_task *)1;
    CHECK_EQ(ihost_spawn_call(h, "add", NULL, 0, -1, NULL, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_spawn_call(NULL, "add", NULL, 0, -1, &t, &e), IHOST_EINVAL);
    CHECK(t == NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_task_wait(NULL, 1), IHOST_EINVAL);
    CHECK_EQ(ihost_task_results(NULL, &r, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_task_done(NULL), 1);
    ihost_task_cancel(NULL);
    ihost_task_free(NULL);
    ihost_stop(NULL, 1);
    ihost_close(NULL, 1);
    CHECK_EQ(ihost_id(NULL), 0);
    /* Spawn options. */
    ihost_isle *bad_h = (ihost_isle *)1;
    ihost_options o = {0};
    o.name = "";
    CHECK_EQ(ihost_spawn(NULL, &o, &bad_h, &e), IHOST_EINVAL);
    CHECK(bad_h == NULL);
    ihost_error_free(e);
    static const char *const libs[] = {"string", "nosuchlib", NULL};
    o.name = NULL;
    o.libs = IHOST_LIBS_LIST;
    o.lib_names = libs;
    CHECK_EQ(ihost_spawn(NULL, &o, &bad_h, &e), IHOST_EINVAL);
    CHECK(strstr(ihost_error_message(e), "nosuchlib") != NULL);
    ihost_error_free(e);
    o.libs = 7;
    CHECK_EQ(ihost_spawn(NULL, &o, &bad_h, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_spawn(NULL, NULL, NULL, &e), IHOST_EINVAL);
    ihost_error_free(e);
}

/* ---- spawning ------------------------------------------------------------------------ */

static void test_spawn_options(void)
{
    ihost_error *e = NULL;
    ihost_isle *h = (ihost_isle *)1;
    /* An init that raises: its error with the traceback, no isle left. */
    int live = isle_live_count();
    CHECK_EQ(ihost_spawn("local function setup() error('init broke') end setup()", NULL, &h, &e),
             IHOST_ERUNTIME);
    CHECK(h == NULL);
    CHECK(strstr(ihost_error_message(e), "init broke") != NULL);
    CHECK(strstr(ihost_error_traceback(e), "setup") != NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_spawn("not lua at all", NULL, &h, NULL), IHOST_ERUNTIME);
    CHECK_EQ(isle_live_count(), live);

    /* Names are unique among live isles. */
    ihost_options o = {0};
    o.name = "c-host-named";
    ihost_isle *a = spawn_ok(NULL, &o);
    CHECK_EQ(ihost_spawn(NULL, &o, &h, &e), IHOST_EINVAL);
    CHECK(strstr(ihost_error_message(e), "in use") != NULL);
    ihost_error_free(e);
    isle *core = isle_lookup_name("c-host-named");
    CHECK(core == ihost_core(a));
    isle_release(core);
    CHECK(ihost_id(a) > 0);
    ihost_close(a, 0);

    /* Libraries. */
    memset(&o, 0, sizeof o);
    o.libs = IHOST_LIBS_BASE;
    a = spawn_ok(NULL, &o);
    ihost_results *r = NULL;
    CHECK_EQ(ihost_eval(a, "return type(string), type(math), type(coroutine)", NULL, 0, 30, &r, NULL), IHOST_OK);
    CHECK(strcmp(str_of(ihost_results_get(r, 0)), "nil") == 0);
    CHECK(strcmp(str_of(ihost_results_get(r, 2)), "table") == 0);
    ihost_results_free(r);
    ihost_close(a, 0);
    static const char *const libs[] = {"string", NULL};
    o.libs = IHOST_LIBS_LIST;
    o.lib_names = libs;
    a = spawn_ok(NULL, &o);
    CHECK_EQ(ihost_eval(a, "return type(string), type(math)", NULL, 0, 30, &r, NULL), IHOST_OK);
    CHECK(strcmp(str_of(ihost_results_get(r, 0)), "table") == 0);
    CHECK(strcmp(str_of(ihost_results_get(r, 1)), "nil") == 0);
    ihost_results_free(r);
    ihost_close(a, 0);

    /* Init arguments; a bad one is refused before anything starts. */
    memset(&o, 0, sizeof o);
    ihost_value args[2] = {ihost_string("x"), ihost_lstring(NULL, 1)};
    o.args = args;
    o.nargs = 2;
    CHECK_EQ(ihost_spawn("return", &o, &h, &e), IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "args[2]") != NULL);
    ihost_error_free(e);
    CHECK_EQ(isle_live_count(), live);
}

/* ---- timeouts, cancel, close ---------------------------------------------------------- */

static void wait_running(ihost_task *t)
{
    for (int i = 0; i < 3000 && ihost_task_state(t) == IHOST_QUEUED; i++) check_sleep(0.005);
    CHECK_EQ(ihost_task_state(t), IHOST_RUNNING);
    check_sleep(0.05); /* long enough for the JIT to compile the loop */
}

static void expect_task_error(ihost_task *t, int kind)
{
    CHECK_EQ(ihost_task_wait(t, 30), IHOST_OK);
    CHECK(ihost_task_done(t));
    ihost_results *r = (ihost_results *)1;
    ihost_error *e = NULL;
    CHECK_EQ(ihost_task_results(t, &r, &e), kind);
    CHECK(r == NULL);
    CHECK_EQ(ihost_error_kind(e), kind);
    ihost_error_free(e);
}

static void test_timeout(void)
{
    ihost_isle *h = test_isle;
    /* The call's bound: spin never ends, the call returns, the loop stops. */
    double t0 = isle_now();
    ihost_error *e = call_fails(h, "spin", NULL, 0, 0.2, IHOST_ETIMEOUT);
    CHECK(isle_now() - t0 < 20);
    CHECK(strcmp(ihost_error_code(e), "timeout") == 0);
    ihost_error_free(e);
    /* The isle runs one job at a time on its thread: this call runs only
     * if spin was stopped. */
    ihost_value a[2] = {ihost_number(1), ihost_number(2)};
    ihost_results *r = call_ok(h, "add", a, 2);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 3);
    ihost_results_free(r);

    /* A task's deadline ends it with a timeout error from the isle. */
    ihost_task *t = NULL;
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, 0.1, &t, &e), IHOST_OK);
    CHECK(e == NULL);
    expect_task_error(t, IHOST_ETIMEOUT);
    CHECK_EQ(ihost_task_state(t), IHOST_CANCELLED);
    ihost_task_free(t);

    /* A wait that runs out leaves the task going. */
    CHECK_EQ(ihost_spawn_eval(h, "local n = 0 while true do n = n + 1 end", NULL, 0, -1, &t, NULL), IHOST_OK);
    CHECK_EQ(ihost_task_wait(t, 0.05), IHOST_ETIMEOUT);
    CHECK_EQ(ihost_task_results(t, &r, &e), IHOST_EINVAL); /* not ended */
    ihost_error_free(e);
    CHECK(!ihost_task_done(t));
    ihost_task_cancel(t);
    expect_task_error(t, IHOST_ECANCELLED);
    ihost_task_free(t);
}

static void test_cancel_compiled_loop(void)
{
    ihost_isle *h = test_isle;
    /* A function from init (instrumented by the isle itself) ... */
    ihost_task *t = NULL;
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, -1, &t, NULL), IHOST_OK);
    wait_running(t);
    ihost_task_cancel(t);
    expect_task_error(t, IHOST_ECANCELLED);
    ihost_task_cancel(t); /* again: nothing changes */
    expect_task_error(t, IHOST_ECANCELLED);
    ihost_task_free(t);
    /* ... and eval chunks, the empty loop too. */
    static const char *const loops[] = {"local n = 0 while true do n = n + 1 end", "while true do end"};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(ihost_spawn_eval(h, loops[i], NULL, 0, -1, &t, NULL), IHOST_OK);
        wait_running(t);
        ihost_task_cancel(t);
        expect_task_error(t, IHOST_ECANCELLED);
        ihost_task_free(t);
    }
    /* An interrupt of the isle's state (isle.h, through ihost_core). */
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, -1, &t, NULL), IHOST_OK);
    wait_running(t);
    CHECK_EQ(isle_intr_set(isle_state_intr(ihost_core(h)), ISLE_INTR_ONCE), ISLE_OK);
    expect_task_error(t, IHOST_EINTERRUPTED);
    ihost_task_free(t);
    /* A queued task ends at once. */
    ihost_task *first = NULL;
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, -1, &first, NULL), IHOST_OK);
    CHECK_EQ(ihost_spawn_call(h, "get", NULL, 0, -1, &t, NULL), IHOST_OK);
    wait_running(first);
    CHECK_EQ(ihost_task_state(t), IHOST_QUEUED);
    ihost_task_cancel(t);
    CHECK_EQ(ihost_task_state(t), IHOST_CANCELLED);
    expect_task_error(t, IHOST_ECANCELLED);
    ihost_task_free(t);
    ihost_task_cancel(first);
    expect_task_error(first, IHOST_ECANCELLED);
    ihost_task_free(first);
    /* Tasks that end well. */
    ihost_value a[2] = {ihost_number(20), ihost_number(22)};
    CHECK_EQ(ihost_spawn_call(h, "add", a, 2, 30, &t, NULL), IHOST_OK);
    CHECK_EQ(ihost_task_wait(t, -1), IHOST_OK);
    CHECK_EQ(ihost_task_state(t), IHOST_DONE);
    ihost_results *r = NULL;
    for (int i = 0; i < 2; i++) { /* read as often as wanted */
        CHECK_EQ(ihost_task_results(t, &r, NULL), IHOST_OK);
        CHECK_EQ(num_of(ihost_results_get(r, 0)), 42);
        ihost_results_free(r);
    }
    CHECK_EQ(ihost_task_results(t, NULL, NULL), IHOST_OK);
    ihost_task_free(t);
    /* A task freed without waiting runs on. */
    ihost_value one = ihost_number(1);
    CHECK_EQ(ihost_spawn_call(h, "bump", &one, 1, -1, &t, NULL), IHOST_OK);
    ihost_task_free(t);
    r = call_ok(h, "get", NULL, 0);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 1);
    ihost_results_free(r);
}

static void test_post(void)
{
    ihost_options o = {0};
    o.capacity = 1;
    ihost_isle *h = spawn_ok(INIT, &o);
    ihost_value two = ihost_number(2);
    for (int i = 0; i < 10; i++) CHECK_EQ(ihost_post(h, "bump", &two, 1, NULL), IHOST_OK);
    ihost_results *r = call_ok(h, "get", NULL, 0); /* posts run in order, before this */
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 20);
    ihost_results_free(r);
    /* A full mailbox: the isle is busy in spin, one post fills it. */
    ihost_task *t = NULL;
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, -1, &t, NULL), IHOST_OK);
    wait_running(t);
    ihost_error *e = NULL;
    CHECK_EQ(ihost_try_post(h, "bump", &two, 1, &e), IHOST_OK);
    CHECK(e == NULL);
    CHECK_EQ(ihost_try_post(h, "bump", &two, 1, &e), IHOST_EBUSY);
    CHECK(strcmp(ihost_error_code(e), "busy") == 0);
    ihost_error_free(e);
    ihost_task *t2 = (ihost_task *)1;
    CHECK_EQ(ihost_try_spawn_call(h, "get", NULL, 0, -1, &t2, &e), IHOST_EBUSY);
    CHECK(t2 == NULL);
    ihost_error_free(e);
    ihost_task_cancel(t);
    expect_task_error(t, IHOST_ECANCELLED);
    ihost_task_free(t);
    r = call_ok(h, "get", NULL, 0);
    CHECK_EQ(num_of(ihost_results_get(r, 0)), 22);
    ihost_results_free(r);
    ihost_close(h, 0);
}

static void test_closed(void)
{
    ihost_isle *h = spawn_ok(INIT, NULL);
    /* Close with cancel under a running and a queued task: both end closed. */
    ihost_task *running = NULL, *queued = NULL;
    CHECK_EQ(ihost_spawn_call(h, "spin", NULL, 0, -1, &running, NULL), IHOST_OK);
    CHECK_EQ(ihost_spawn_call(h, "get", NULL, 0, -1, &queued, NULL), IHOST_OK);
    wait_running(running);
    ihost_close(h, 1);
    expect_task_error(running, IHOST_ECLOSED);
    expect_task_error(queued, IHOST_ECLOSED);
    ihost_task_free(running);
    ihost_task_free(queued);

    /* A stopped isle refuses work; queued work still runs (no cancel). */
    h = spawn_ok(INIT, NULL);
    ihost_value one = ihost_number(1);
    ihost_task *t = NULL;
    CHECK_EQ(ihost_spawn_call(h, "bump", &one, 1, -1, &t, NULL), IHOST_OK);
    ihost_stop(h, 0);
    ihost_error *e = call_fails(h, "get", NULL, 0, 30, IHOST_ECLOSED);
    CHECK(strcmp(ihost_error_code(e), "closed") == 0);
    CHECK(strstr(ihost_error_message(e), "is closed") != NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_post(h, "bump", &one, 1, &e), IHOST_ECLOSED);
    ihost_error_free(e);
    ihost_task *t2 = (ihost_task *)1;
    CHECK_EQ(ihost_spawn_eval(h, "return 1", NULL, 0, -1, &t2, &e), IHOST_ECLOSED);
    CHECK(t2 == NULL);
    ihost_error_free(e);
    ihost_close(h, 0);
    CHECK_EQ(ihost_task_wait(t, 0), IHOST_OK);
    CHECK_EQ(ihost_task_results(t, NULL, NULL), IHOST_OK);
    ihost_task_free(t);
}

/* ---- threads --------------------------------------------------------------------------- */

static void *caller(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < SCALE(300); i++) {
        ihost_value a[2] = {ihost_number(i), ihost_number(id * 1000)};
        ihost_results *r = NULL;
        CHECK_EQ(ihost_call(test_isle, "add", a, 2, 60, &r, NULL), IHOST_OK);
        CHECK_EQ(num_of(ihost_results_get(r, 0)), i + id * 1000);
        ihost_results_free(r);
        if (i % 50 == 0) CHECK_EQ(ihost_post(test_isle, "echo", a, 2, NULL), IHOST_OK);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[4];
    for (int i = 0; i < 4; i++) th[i] = check_spawn(caller, (void *)(intptr_t)i);
    for (int i = 0; i < 4; i++) check_join(th[i]);
}

/* ---- the format: against LuaJIT's string.buffer, and hostile bytes ------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static ihost_value random_value(int depth)
{
    static const char *const words[] = {"", "a", "name", "x y", "\0\1\2", "long string with spaces"};
    switch (rng() % (depth < 4 ? 9 : 7)) {
    case 0: return ihost_nil();
    case 1: return ihost_boolean((int)(rng() & 1));
    case 2: return ihost_number((double)(int64_t)(rng() % 2001) - 1000);
    case 3: {
        double d;
        uint64_t bits = rng();
        memcpy(&d, &bits, sizeof d);
        return ihost_number(d);
    }
    case 4: return rng() & 1 ? ihost_int64((int64_t)rng()) : ihost_uint64(rng());
    case 5: case 6: {
        int w = (int)(rng() % 6);
        return ihost_lstring(words[w], w == 4 ? 3 : strlen(words[w]));
    }
    default: {
        ihost_table *t = ihost_table_new();
        int n = (int)(rng() % 6);
        for (int i = 0; i < n; i++) CHECK_EQ(ihost_table_push(t, random_value(depth + 1)), IHOST_OK);
        n = (int)(rng() % 6);
        for (int i = 0; i < n; i++) {
            ihost_value k = random_value(depth + 1);
            ihost_value v = random_value(depth + 1);
            int rc = ihost_table_set(t, k, v);
            if (rc != IHOST_OK) { /* a nil or NaN key: the values are still ours */
                CHECK_EQ(rc, IHOST_EINVAL);
                if (k.type == IHOST_TTABLE) ihost_table_free(k.v.table);
                if (v.type == IHOST_TTABLE) ihost_table_free(v.v.table);
            } else if (v.type == IHOST_TNIL && k.type == IHOST_TTABLE) {
                ihost_table_free(k.v.table); /* removing a table key adopts nothing */
            }
        }
        return ihost_tablev(t);
    }
    }
}

static void free_random(ihost_value v)
{
    if (v.type == IHOST_TTABLE) ihost_table_free(v.v.table);
}

/* Every strict prefix and thousands of mutations of `bytes` decode or fail
 * cleanly (ASan sees any bad read); a sample of them also goes through the
 * isle's own decoder via reencode, which must agree on what is valid. */
static long fuzz_one(const char *bytes, size_t len, int list)
{
    long accepted = 0;
    char *buf = malloc(len + 16);
    for (size_t cut = 0; cut < len; cut++) {
        ihost_results *r = (ihost_results *)1;
        ihost_error *e = NULL;
        int rc = list ? ihost_decode(bytes, cut, &r, &e) : ihost_decode_value(bytes, cut, &r, &e);
        CHECK_EQ(rc, IHOST_EVALUE);
        CHECK(r == NULL);
        CHECK(strstr(ihost_error_message(e), "cannot receive") != NULL);
        ihost_error_free(e);
    }
    for (int round = 0; round < SCALE(3000); round++) {
        memcpy(buf, bytes, len);
        size_t n = len;
        int edits = 1 + (int)(rng() % 3);
        for (int k = 0; k < edits && n > 0; k++) {
            size_t at = (size_t)(rng() % n);
            switch (rng() % 4) {
            case 0: buf[at] = (char)rng(); break;
            case 1: buf[at] ^= (char)(1u << (rng() % 8)); break;
            case 2: n = at; break;                       /* cut */
            default: if (n < len + 16) { memmove(buf + at + 1, buf + at, n - at); buf[at] = (char)rng(); n++; }
            }
        }
        ihost_results *r = NULL;
        ihost_error *e = NULL;
        int rc = list ? ihost_decode(buf, n, &r, &e) : ihost_decode_value(buf, n, &r, &e);
        if (rc == IHOST_OK) {
            accepted++;
            /* What decodes re-encodes, and decodes again to the same. */
            char *again = NULL;
            size_t alen = 0;
            if (list) CHECK_EQ(ihost_encode(NULL, 0, &again, &alen, NULL), IHOST_OK);
            ihost_bytes_free(again);
            for (size_t i = 0; i < ihost_results_count(r); i++) {
                CHECK_EQ(ihost_encode_value(ihost_results_get(r, i), &again, &alen, NULL), IHOST_OK);
                ihost_results *r2 = NULL;
                CHECK_EQ(ihost_decode_value(again, alen, &r2, NULL), IHOST_OK);
                CHECK(value_eq(ihost_results_get(r, i), ihost_results_get(r2, 0)));
                ihost_results_free(r2);
                ihost_bytes_free(again);
            }
        } else {
            CHECK_EQ(rc, IHOST_EVALUE);
            CHECK(r == NULL);
        }
        ihost_results_free(r);
        ihost_error_free(e);
    }
    free(buf);
    return accepted;
}

static void test_format_against_luajit(void)
{
    ihost_isle *h = test_isle;
    /* LuaJIT's bytes (buffer.encode) for values only Lua makes decode here
     * to the same values; where C would lay the table out as LuaJIT does
     * (`exact`), C's encoding of them is byte for byte LuaJIT's. */
    static const struct { const char *chunk; int exact; } samples[] = {
        {"return { 1, 2, 3, x = { y = 'z' }, [true] = false, [1.5] = 'f', [0] = 'zero', [-1] = 'neg' }", 0},
        {"return { [1] = 'a', [2] = 'b', [10] = 'sparse', [2^40] = 'far' }", 0},
        {"local t = {} for i = 1, 300 do t[i] = i * 0.5 end t.name = ('x'):rep(300) return t", 1},
        {"local t = {} for i = 1, 50 do t['k' .. i] = i end return t", 1},
        {"return -0.0", 1}, {"return 0/0", 1}, {"return math.huge", 1}, {"return ('\\0'):rep(10000)", 1},
        {"return 123456789LL", 1}, {"return 0xffffffffffffffffULL", 1}, {"return true", 1},
        {"return { { { { {} } } }, {}, '' }", 1},
    };
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        ihost_results *src = NULL;
        CHECK_EQ(ihost_eval(h, samples[i].chunk, NULL, 0, 30, &src, NULL), IHOST_OK);
        ihost_value v = ihost_results_get(src, 0);
        ihost_results *enc = call_ok(h, "encoded", &v, 1);
        ihost_value lj = ihost_results_get(enc, 0);
        ihost_results *dec = NULL;
        ihost_error *e = NULL;
        CHECK_EQ(ihost_decode_value(lj.v.str.ptr, lj.v.str.len, &dec, &e), IHOST_OK);
        CHECK(value_eq(v, ihost_results_get(dec, 0)));
        char *mine = NULL;
        size_t mlen = 0;
        CHECK_EQ(ihost_encode_value(ihost_results_get(dec, 0), &mine, &mlen, NULL), IHOST_OK);
        if (samples[i].exact) {
            CHECK_EQ(mlen, lj.v.str.len);
            CHECK(memcmp(mine, lj.v.str.ptr, mlen) == 0);
        }
        fuzz_one(lj.v.str.ptr, lj.v.str.len, 0);
        ihost_bytes_free(mine);
        ihost_results_free(dec);
        ihost_results_free(enc);
        ihost_results_free(src);
    }
    /* Random trees: LuaJIT's own decoder reads C's bytes (reencode decodes
     * and encodes them there) to the same values; and they round-trip
     * through C's decoder and through a call. */
    for (int i = 0; i < SCALE(300); i++) {
        ihost_value v = random_value(0);
        char *mine = NULL;
        size_t mlen = 0;
        CHECK_EQ(ihost_encode_value(v, &mine, &mlen, NULL), IHOST_OK);
        ihost_value s = ihost_lstring(mine, mlen);
        ihost_results *r = call_ok(h, "reencode", &s, 1);
        ihost_value lj = ihost_results_get(r, 0);
        ihost_results *dec = NULL;
        CHECK_EQ(ihost_decode_value(lj.v.str.ptr, lj.v.str.len, &dec, NULL), IHOST_OK);
        CHECK(value_eq(v, ihost_results_get(dec, 0)));
        ihost_results_free(dec);
        ihost_results_free(r);
        CHECK_EQ(ihost_decode_value(mine, mlen, &dec, NULL), IHOST_OK);
        CHECK(value_eq(v, ihost_results_get(dec, 0)));
        ihost_results_free(dec);
        r = call_ok(h, "echo", &v, 1);
        CHECK(value_eq(v, ihost_results_get(r, 0)));
        ihost_results_free(r);
        if (i % 30 == 0) fuzz_one(mine, mlen, 0);
        ihost_bytes_free(mine);
        free_random(v);
    }
}

static void decode_fails(const char *bytes, size_t len, const char *why)
{
    ihost_results *r = (ihost_results *)1;
    ihost_error *e = NULL;
    CHECK_EQ(ihost_decode_value(bytes, len, &r, &e), IHOST_EVALUE);
    CHECK(r == NULL);
    if (!strstr(ihost_error_message(e), why))
        fprintf(stderr, "expected '%s' in: %s\n", why, ihost_error_message(e));
    CHECK(strstr(ihost_error_message(e), why) != NULL);
    ihost_error_free(e);
}

static void test_hostile_bytes(void)
{
    /* Six bytes that ask for a 4-billion-slot array: refused at once. */
    decode_fails("\x0b\xff\xff\xff\xff\x0f", 6, "truncated");
    decode_fails("\x09\xff\xff\xff\xff\x7f", 6, "truncated");
    decode_fails("\x09\x01\x00\x02", 4, "nil table key");
    decode_fails("\x09\x01\x07\x00\x00\x00\x00\x00\x00\xf8\x7f\x02", 12, "NaN table key");
    decode_fails("\x09\x02\x21" "a" "\x02\x21" "a" "\x01", 8, "given twice");
    decode_fails("\x0d\x02\x01\x02\x07\x00\x00\x00\x00\x00\x00\xf0\x3f\x01", 14, "given twice"); /* t[1] twice */
    decode_fails("\x13", 1, "unknown tag");
    decode_fails("\x04\x00\x00\x00\x00", 5, "light userdata");
    decode_fails("\x0f\x00", 2, "dictionary");
    decode_fails("\x0e\x00\x08", 3, "function");
    decode_fails("\x0e\x05\x21", 3, "bad tag after");
    decode_fails("\x07\x00\x00\x00\x00\x00\x00\xf0\x3f" "x", 10, "left over");
    decode_fails("\x25" "abc", 4, "truncated");
    decode_fails("\xff\x00\x00\x00\x80", 5, "truncated");
    /* Tables 101 deep; the path of a deep failure keeps its inner end. */
    char deep[220];
    memset(deep, 0x0c, sizeof deep); /* array of one element: tag, a.U = 2, element */
    for (int i = 0; i < 202; i += 2) deep[i + 1] = 2;
    deep[202] = 0;
    decode_fails(deep, 203, "100 levels");
    /* A tab with the hole rule: 1-based array of 3 with a hole, then t[2] in the hash part: valid. */
    ihost_results *r = NULL;
    CHECK_EQ(ihost_decode_value("\x0d\x04\x01\x02\x00\x02\x07\x00\x00\x00\x00\x00\x00\x00\x40\x21" "b",
                                17, &r, NULL), IHOST_OK);
    CHECK_EQ(ihost_table_len(ihost_results_get(r, 0).v.table), 3);
    ihost_results_free(r);
    /* Value lists: the tag, the count. */
    ihost_error *e = NULL;
    CHECK_EQ(ihost_decode("X\x07\x00\x00\x00\x00\x00\x00\x00\x00", 10, &r, &e), IHOST_EVALUE);
    CHECK(strstr(ihost_error_message(e), "not a value list") != NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_decode("V\x07\x00\x00\x00\x00\x00\x00\xf0\x7f", 10, &r, &e), IHOST_EVALUE); /* inf */
    ihost_error_free(e);
    CHECK_EQ(ihost_decode("V\x07\x00\x00\x00\x00\x00\x00\xe0\x3f\x00", 11, &r, &e), IHOST_EVALUE); /* 0.5 */
    ihost_error_free(e);
    CHECK_EQ(ihost_decode("V\x06\x02\x00\x00\x00\x00\x00", 8, &r, NULL), IHOST_OK); /* int count */
    CHECK_EQ(ihost_results_count(r), 2);
    ihost_results_free(r);
    CHECK_EQ(ihost_decode(NULL, 0, &r, &e), IHOST_EVALUE);
    ihost_error_free(e);
    CHECK_EQ(ihost_decode(NULL, 3, &r, &e), IHOST_EINVAL);
    ihost_error_free(e);
    CHECK_EQ(ihost_decode("V", 1, NULL, &e), IHOST_EINVAL);
    ihost_error_free(e);

    /* Random bytes, and random mutations of valid value lists. */
    char buf[96];
    for (int i = 0; i < SCALE(200000); i++) {
        size_t n = (size_t)(rng() % sizeof buf);
        for (size_t k = 0; k < n; k++) buf[k] = (char)rng();
        if (i & 1) buf[0] = 'V';
        r = NULL;
        int rc = i & 2 ? ihost_decode(buf, n, &r, NULL) : ihost_decode_value(buf, n, &r, NULL);
        CHECK(rc == IHOST_OK || rc == IHOST_EVALUE);
        ihost_results_free(r);
    }
    for (int i = 0; i < 20; i++) {
        ihost_value v[3] = {random_value(0), random_value(0), random_value(0)};
        char *bytes = NULL;
        size_t len = 0;
        CHECK_EQ(ihost_encode(v, 3, &bytes, &len, NULL), IHOST_OK);
        ihost_results *back = NULL;
        CHECK_EQ(ihost_decode(bytes, len, &back, NULL), IHOST_OK);
        for (int k = 0; k < 3; k++) CHECK(value_eq(v[k], ihost_results_get(back, (size_t)k)));
        ihost_results_free(back);
        fuzz_one(bytes, len, 1);
        ihost_bytes_free(bytes);
        for (int k = 0; k < 3; k++) free_random(v[k]);
    }
    /* The encoder names bad values in raw lists too. */
    ihost_value odd[2] = {ihost_nil(), ihost_nil()};
    odd[1].type = (ihost_type)-3;
    char *bytes = (char *)1;
    size_t len = 1;
    CHECK_EQ(ihost_encode(odd, 2, &bytes, &len, &e), IHOST_EVALUE);
    CHECK(bytes == NULL && len == 0);
    CHECK(strstr(ihost_error_message(e), "values[2]") != NULL);
    ihost_error_free(e);
    CHECK_EQ(ihost_encode(odd, 1, NULL, &len, &e), IHOST_EINVAL);
    ihost_error_free(e);
}

/* ---- every allocation failing in turn ----------------------------------------------------- */

typedef struct sweep_ctx {
    ihost_value arg;   /* made by setup, freed by check */
    long live;         /* blocks live after setup */
} sweep_ctx;

/* The isle's thread lets go of a task slot (and its result) just after
 * completing it, so the caller may see its call end a moment before the
 * blocks are freed: wait for that before the sweep counts them. */
static void settle(sweep_ctx *c)
{
    for (int i = 0; i < 10000 && failalloc_live() != c->live; i++) check_sleep(0.001);

}

static void mark_setup(void *p)
{
    sweep_ctx *c = p;
    c->arg = ihost_nil();
    c->live = failalloc_live();
}

static int expect_memory(int rc, ihost_error *e)
{
    if (rc == IHOST_OK) return 1;
    CHECK_EQ(rc, IHOST_EMEMORY);
    CHECK_EQ(ihost_error_kind(e), IHOST_EMEMORY);
    CHECK(strcmp(ihost_error_code(e), "memory") == 0);
    ihost_error_free(e);
    return 0;
}

static int build_run(void *p)
{
    (void)p;
    ihost_table *t = ihost_table_new();
    if (!t) return 0;
    int rc = IHOST_OK;
    char name[16];
    for (int i = 0; !rc && i < 12; i++) {
        snprintf(name, sizeof name, "f%d", i);
        rc = ihost_table_setfield(t, name, ihost_string(name));
        if (!rc) rc = ihost_table_push(t, ihost_number(i));
    }
    ihost_table *sub = rc ? NULL : ihost_table_new();
    if (!rc && !sub) rc = IHOST_EMEMORY;
    if (!rc) rc = ihost_table_set(t, ihost_tablev(sub), ihost_string("key"));
    if (rc) {
        CHECK_EQ(rc, IHOST_EMEMORY);
        ihost_table_free(sub); /* not adopted when the set failed */
    } else {
        CHECK_EQ(ihost_table_count(t), 25);
    }
    ihost_table_free(t);
    return rc == IHOST_OK;
}

static long no_check(void *p, int ok_)
{
    (void)p;
    (void)ok_;
    return 0;
}

static void codec_setup(void *p)
{
    sweep_ctx *c = p;
    c->arg = ihost_tablev(sample_table());
    c->live = failalloc_live();
}

static int codec_run(void *p)
{
    sweep_ctx *c = p;
    char *bytes = NULL;
    size_t len = 0;
    ihost_error *e = NULL;
    int rc = ihost_encode(&c->arg, 1, &bytes, &len, &e);
    if (!expect_memory(rc, e)) return 0;
    ihost_results *r = NULL;
    rc = ihost_decode(bytes, len, &r, &e);
    ihost_bytes_free(bytes);
    if (!expect_memory(rc, e)) return 0;
    CHECK(value_eq(c->arg, ihost_results_get(r, 0)));
    ihost_results_free(r);
    /* A decode error's own message needs memory too. */
    rc = ihost_decode("V\x07", 2, &r, &e);
    if (rc == IHOST_EMEMORY) return expect_memory(rc, e);
    CHECK_EQ(rc, IHOST_EVALUE);
    ihost_error_free(e);
    return 1;
}

static long arg_check(void *p, int ok_)
{
    sweep_ctx *c = p;
    (void)ok_;
    settle(c);
    free_random(c->arg);
    return 0;
}

static int call_run(void *p)
{
    sweep_ctx *c = p;
    ihost_results *r = NULL;
    ihost_error *e = NULL;
    int rc = ihost_call(test_isle, "echo", &c->arg, 1, -1, &r, &e);
    if (!expect_memory(rc, e)) return 0;
    CHECK(value_eq(c->arg, ihost_results_get(r, 0)));
    ihost_results_free(r);
    return 1;
}

static int call_error_run(void *p)
{
    (void)p;
    ihost_error *e = NULL;
    int rc = ihost_call(test_isle, "fail_table", NULL, 0, -1, NULL, &e);
    if (rc == IHOST_EMEMORY) return expect_memory(rc, e);
    CHECK_EQ(rc, IHOST_ERUNTIME);
    CHECK(ihost_error_traceback(e) != NULL);
    CHECK_EQ(num_of(ihost_table_getfield(ihost_error_value(e).v.table, "code")), 42);
    ihost_error_free(e);
    return 1;
}

static int task_run(void *p)
{
    sweep_ctx *c = p;
    ihost_task *t = NULL;
    ihost_error *e = NULL;
    int rc = ihost_spawn_call(test_isle, "echo", &c->arg, 1, -1, &t, &e);
    if (!expect_memory(rc, e)) return 0;
    CHECK_EQ(ihost_task_wait(t, 60), IHOST_OK);
    ihost_results *r = NULL;
    rc = ihost_task_results(t, &r, &e);
    ihost_task_free(t);
    if (!expect_memory(rc, e)) return 0;
    CHECK(value_eq(c->arg, ihost_results_get(r, 0)));
    ihost_results_free(r);
    return 1;
}

static int post_run(void *p)
{
    sweep_ctx *c = p;
    ihost_error *e = NULL;
    int rc = ihost_post(test_isle, "echo", &c->arg, 1, &e);
    return expect_memory(rc, e);
}

static ihost_isle *swept_isle;

static int spawn_run(void *p)
{
    sweep_ctx *c = p;
    ihost_options o = {0};
    o.name = "swept";
    o.args = &c->arg;
    o.nargs = 1;
    ihost_error *e = NULL;
    swept_isle = (ihost_isle *)1;
    int rc = ihost_spawn("T = ...", &o, &swept_isle, &e);
    if (rc) CHECK(swept_isle == NULL);
    return expect_memory(rc, e);
}

static long spawn_check(void *p, int ok_)
{
    if (ok_) {
        ihost_results *r = NULL;
        CHECK_EQ(ihost_eval(swept_isle, "return T", NULL, 0, -1, &r, NULL), IHOST_OK);
        CHECK(value_eq(((sweep_ctx *)p)->arg, ihost_results_get(r, 0)));
        ihost_results_free(r);
        ihost_close(swept_isle, 0);
    }
    return arg_check(p, ok_);
}

static void test_allocation_failures(void)
{
    sweep_ctx c = {0};
    /* Calls here have no timeout: the deadline watchdog's thread comes and
     * goes on its own (it lingers 0.5 s) and keeps its heap's array, which
     * the sweep's counts would take for leaks. Let the earlier tests'
     * watchdog go first. */
    check_sleep(1.0);
    alloc_op ops[] = {
        {"ihost_table_set and push", NULL, build_run, no_check},
        {"ihost_encode and ihost_decode", codec_setup, codec_run, arg_check},
        {"ihost_call", codec_setup, call_run, arg_check},
        {"ihost_call failing (error envelope)", mark_setup, call_error_run, arg_check},
        {"ihost_spawn_call and ihost_task_results", codec_setup, task_run, arg_check},
        {"ihost_post", codec_setup, post_run, arg_check},
        {"ihost_spawn", codec_setup, spawn_run, spawn_check},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) alloc_sweep_both(&ops[i], &c, 0);
}

/* ---- main -------------------------------------------------------------------------------------- */

static const char *library_path(void)
{
    Dl_info info;
    CHECK(dladdr((void *)ihost_spawn, &info) != 0 && info.dli_fname != NULL);
    return info.dli_fname;
}

int main(void)
{
    /* No ISLE_LIB: the isles (and the scratch state that precompiles
     * isle's modules) must find this copy of the library by themselves,
     * though build/libisle.so is on the default cpath too. */
    CHECK(strstr(library_path(), "libisle-failalloc.so") != NULL);
    CHECK_EQ(unsetenv("ISLE_LIB"), 0);
    CHECK_EQ(isle_preload_count(), 0);
    ihost_options o = {0};
    ihost_value args[2] = {ihost_number(1), ihost_number(2)};
    o.args = args;
    o.nargs = 2;
    test_isle = spawn_ok(INIT, &o);
    CHECK(isle_preload_count() > 10); /* isle's modules, registered in this copy */

    RUN(test_scalars_round_trip);
    RUN(test_tables_round_trip);
    RUN(test_lua_values);
    RUN(test_table_api);
    RUN(test_runtime_errors);
    RUN(test_misuse);
    RUN(test_spawn_options);
    RUN(test_timeout);
    RUN(test_cancel_compiled_loop);
    RUN(test_post);
    RUN(test_closed);
    RUN(test_threads);
    RUN(test_format_against_luajit);
    RUN(test_hostile_bytes);
    RUN(test_allocation_failures);

    ihost_close(test_isle, 0);
    CHECK_EQ(isle_live_count(), 0);
    return check_done();
}
