/*
 * isle_host.h - isle for C and C++ hosts that have no Lua state of their
 * own (a game engine's C++ code): spawn isles from init source, call their
 * globals with plain values, post, run tasks, wait, cancel and close, and
 * read errors with the isle-side traceback. Part of libisle.so; the isles
 * themselves are LuaJIT states, so LuaJIT and isle's Lua modules must be
 * installed where the isle can load them (docs/c-api.md, "Set-up").
 *
 * Values cross as copies in the format of LuaJIT's string.buffer, the same
 * bytes a Lua caller sends: nil, booleans, numbers (doubles), 64-bit
 * integers (int64_t/uint64_t cdata on the Lua side), strings (byte-exact,
 * NULs included) and tables of these. docs/c-api.md is the full contract;
 * this header states it function by function.
 *
 * Ownership, in one place:
 *   - Every `**out` parameter hands the caller a new object that it frees
 *     with the matching `_free` (ihost_isle: ihost_close). Every `_free`
 *     and ihost_close accept NULL. On failure `*out` is set to NULL.
 *   - Every `ihost_error **err` may be NULL (no details wanted). On
 *     failure a non-NULL `err` receives an error object (never NULL, even
 *     when memory ran out) that the caller frees with ihost_error_free; on
 *     success `*err` is set to NULL.
 *   - An ihost_value never owns anything: strings and tables it names are
 *     borrowed. Arguments are copied (encoded) before a call returns, so
 *     they may be freed right after it.
 *   - A table inserted into another table (as a value or a key) is adopted:
 *     it belongs to that table from then on and is freed with it. Strings
 *     are copied into the table. A table belongs to at most one table.
 *   - Values read from results, tables or errors are borrowed from them
 *     and stay valid until that object is freed (or the table changed).
 *
 * Threads: an ihost_isle may be used by any number of threads at once,
 * except ihost_close, which must be the last call on it. A task, a table,
 * a result list or an error object is used by one thread at a time;
 * ihost_task_cancel may be called from any thread while another waits.
 *
 * Return codes: every function that can fail returns IHOST_OK (0) or one
 * of the IHOST_E* codes below, which match the `code` strings of isle's
 * Lua error objects (docs/API.md) plus "invalid" for misuse from C.
 */
#ifndef ISLE_HOST_H
#define ISLE_HOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct isle isle; /* the core's isle (isle.h) */

/* Return codes and error kinds (ihost_error_kind). */
enum {
    IHOST_OK = 0,
    IHOST_ERUNTIME = 1, /* "runtime": user code raised, no such global, a chunk does not compile */
    IHOST_ECANCELLED = 2,   /* "cancelled": ihost_task_cancel */
    IHOST_ETIMEOUT = 3,     /* "timeout": a wait or a call's timeout ran out */
    IHOST_ECLOSED = 4,      /* "closed": the isle is closed, or closed with cancel under the task */
    IHOST_EVALUE = 5,       /* "value": a value cannot cross (either way), or bytes do not decode */
    IHOST_EBUSY = 6,        /* "busy": the mailbox is full and the caller would not wait */
    IHOST_EMEMORY = 7,      /* "memory": an allocation failed */
    IHOST_EINTERRUPTED = 8, /* "interrupted": the isle's code was interrupted */
    IHOST_EUNKNOWN = 9,     /* "unknown" */
    IHOST_EINVAL = 10       /* "invalid": misuse (a NULL or bad argument), from C only */
};

/* ---- values -------------------------------------------------------------- */

typedef enum ihost_type {
    IHOST_TNIL = 0,
    IHOST_TBOOLEAN,
    IHOST_TNUMBER, /* a Lua number: double */
    IHOST_TINT64,  /* int64_t cdata in Lua */
    IHOST_TUINT64, /* uint64_t cdata in Lua */
    IHOST_TSTRING, /* bytes, any content, at most IHOST_MAX_STRING of them */
    IHOST_TTABLE
} ihost_type;

enum {
    IHOST_MAX_STRING = 0x7fffff00, /* LuaJIT's longest string */
    IHOST_MAX_DEPTH = 100,         /* table nesting (string.buffer's limit) */
    IHOST_MAX_ARGS = 1000          /* values in one argument or result list sent from C */
};

typedef struct ihost_table ihost_table;

/* A value: a tag and a payload. It owns nothing (see the top). A string
 * read from isle (results, tables, errors) is followed by a NUL byte not
 * counted in `len`; strings given to isle need none. */
typedef struct ihost_value {
    ihost_type type;
    union {
        int boolean;
        double number;
        int64_t i64;
        uint64_t u64;
        struct {
            const char *ptr;
            size_t len;
        } str;
        ihost_table *table;
    } v;
} ihost_value;

static inline ihost_value ihost_nil(void)
{
    ihost_value x;
    x.type = IHOST_TNIL;
    x.v.u64 = 0;
    return x;
}
static inline ihost_value ihost_boolean(int b)
{
    ihost_value x;
    x.type = IHOST_TBOOLEAN;
    x.v.boolean = b != 0;
    return x;
}
static inline ihost_value ihost_number(double n)
{
    ihost_value x;
    x.type = IHOST_TNUMBER;
    x.v.number = n;
    return x;
}
static inline ihost_value ihost_int64(int64_t i)
{
    ihost_value x;
    x.type = IHOST_TINT64;
    x.v.i64 = i;
    return x;
}
static inline ihost_value ihost_uint64(uint64_t u)
{
    ihost_value x;
    x.type = IHOST_TUINT64;
    x.v.u64 = u;
    return x;
}
/* `len` bytes at `s` (borrowed; NULL only with len 0). */
static inline ihost_value ihost_lstring(const char *s, size_t len)
{
    ihost_value x;
    x.type = IHOST_TSTRING;
    x.v.str.ptr = s;
    x.v.str.len = len;
    return x;
}
ihost_value ihost_string(const char *s); /* a NUL-terminated string (borrowed) */
static inline ihost_value ihost_tablev(ihost_table *t)
{
    ihost_value x;
    x.type = IHOST_TTABLE;
    x.v.table = t;
    return x;
}

/* ---- tables --------------------------------------------------------------- */
/*
 * A Lua table built or read from C: an array part (keys 1..n) and a hash
 * part (any other key). Setting a key to nil removes it. Keys are compared
 * as Lua compares them: numbers by value (1 and 1.0 are one key, -0.0 is
 * 0), strings by their bytes; int64/uint64 and table keys are distinct
 * objects in Lua, so a lookup with one finds nothing (iterate instead).
 * Nil and NaN cannot be keys (IHOST_EINVAL).
 */
ihost_table *ihost_table_new(void); /* NULL when out of memory */
/* Frees `t` and everything in it. Does nothing for a table that belongs to
 * another table or to a result list: it goes with its owner. */
void ihost_table_free(ihost_table *t);

/* t[key] = val. A table value or key is adopted (see the top): it must not
 * belong to a table yet, must not be `t` or contain `t`, and the result
 * may nest at most IHOST_MAX_DEPTH levels (IHOST_EINVAL otherwise, nothing
 * changed, the caller still owns it). IHOST_EMEMORY: nothing changed. */
int ihost_table_set(ihost_table *t, ihost_value key, ihost_value val);
int ihost_table_setfield(ihost_table *t, const char *key,
                         ihost_value val); /* key: NUL-terminated */
int ihost_table_seti(ihost_table *t, int64_t i, ihost_value val);
/* Appends to the array part: t[n + 1] = val where n is its length. A nil
 * leaves a hole and still counts, as in the constructor { a, nil, c }. */
int ihost_table_push(ihost_table *t, ihost_value val);

/* t[key]: nil when absent. The value is borrowed from `t`. */
ihost_value ihost_table_get(const ihost_table *t, ihost_value key);
ihost_value ihost_table_getfield(const ihost_table *t, const char *key);
ihost_value ihost_table_geti(const ihost_table *t, int64_t i);
/* The n such that t[1..n] are all non-nil and t[n + 1] is nil. */
size_t ihost_table_len(const ihost_table *t);
/* Entries with non-nil values. */
size_t ihost_table_count(const ihost_table *t);
/* Iteration: start with *iter = 0; each call stores the next entry in
 * *key and *val (either may be NULL) and returns 1, or returns 0 at the
 * end. The array part comes first, in order; then the rest in no set
 * order. The table must not change during an iteration. */
int ihost_table_next(const ihost_table *t, size_t *iter, ihost_value *key, ihost_value *val);

/* ---- result lists and raw bytes ------------------------------------------- */

typedef struct ihost_results ihost_results; /* a decoded list of values, owning them */
size_t ihost_results_count(const ihost_results *r);
/* Value i (0-based); nil beyond the end. Borrowed from `r`. */
ihost_value ihost_results_get(const ihost_results *r, size_t i);
void ihost_results_free(ihost_results *r);

typedef struct ihost_error ihost_error;

/* A value list as isle's wire carries it (a tag byte, the count, each
 * value in string.buffer's format): what a Lua sender writes for args or
 * results. *bytes is malloc'd: free it with ihost_bytes_free. IHOST_EVALUE
 * names the bad value (`args[2].pos`): a bad type tag, a NULL string, a
 * string or table too large for LuaJIT, more than IHOST_MAX_ARGS values. */
int ihost_encode(const ihost_value *vals, size_t n, char **bytes, size_t *len, ihost_error **err);
/* The reverse, for bytes from anywhere: anything malformed (truncated,
 * bad tags, nil/NaN/duplicate keys, more than IHOST_MAX_DEPTH levels,
 * trailing bytes) is IHOST_EVALUE, never a crash; allocations are bounded
 * by the input's length. Lua functions and isle tokens inside (a Lua
 * sender may return them) are refused the same way: C cannot hold them. */
int ihost_decode(const char *bytes, size_t len, ihost_results **out, ihost_error **err);
/* One value alone, exactly as string.buffer's buffer.encode(v) writes it
 * and buffer.decode(s) reads it (for bytes a Lua function returns as a
 * string). ihost_decode_value gives a list of one value. */
int ihost_encode_value(ihost_value v, char **bytes, size_t *len, ihost_error **err);
int ihost_decode_value(const char *bytes, size_t len, ihost_results **out, ihost_error **err);
void ihost_bytes_free(char *bytes);

/* ---- errors ------------------------------------------------------------------ */

int ihost_error_kind(const ihost_error *e);            /* IHOST_E*; IHOST_OK for NULL */
const char *ihost_error_code(const ihost_error *e);    /* "runtime", "timeout"...; "" for NULL */
const char *ihost_error_message(const ihost_error *e); /* never NULL */
/* The isle-side traceback of a runtime error ("stack traceback (isle 3):
 * ..."), or NULL when there is none. */
const char *ihost_error_traceback(const ihost_error *e);
/* The error value when user code raised something other than a string
 * (error({code = 42})), as far as it can be represented in C; nil otherwise.
 * Borrowed from `e`. */
ihost_value ihost_error_value(const ihost_error *e);
void ihost_error_free(ihost_error *e);

/* ---- isles -------------------------------------------------------------------- */

typedef struct ihost_isle ihost_isle;

/* Libraries of a new isle (ihost_options.libs), as isle.spawn's `libs`. */
enum {
    IHOST_LIBS_ALL = 0,  /* every standard library, as in the luajit binary */
    IHOST_LIBS_BASE = 1, /* base (with coroutine) and package only */
    IHOST_LIBS_LIST = 2  /* base, package and the names in lib_names */
};

/* Options of ihost_spawn; all-zero (or a NULL pointer) means the defaults. */
typedef struct ihost_options {
    const char *name;             /* unique among live isles; NULL: unnamed */
    size_t capacity;              /* mailbox bound; 0: 1024 */
    int libs;                     /* IHOST_LIBS_* */
    const char *const *lib_names; /* IHOST_LIBS_LIST: NULL-terminated, among
                                     string table math io os debug bit jit ffi */
    int no_instrument;            /* 1: no checkpoints in init and eval chunks */
    int no_instrument_loads;      /* 1: the isle's load/require stay as LuaJIT has them */
    const char *path;             /* package.path of the isle; NULL: the default (docs/c-api.md) */
    const char *cpath;            /* package.cpath; NULL: the default */
    const ihost_value *args;      /* values passed to the init chunk (...) */
    size_t nargs;
} ihost_options;

/* Starts an isle running `init_source` (a Lua chunk, may be NULL) with
 * opts->args, and returns once it has run (an init that never ends never
 * returns: keep long work out of init). Errors: IHOST_EINVAL (a bad
 * option, a name in use), IHOST_EVALUE (args), IHOST_ERUNTIME (init raised
 * or does not compile, or isle's Lua modules cannot be found: the message
 * says which), IHOST_EMEMORY. */
int ihost_spawn(const char *init_source, const ihost_options *opts, ihost_isle **out,
                ihost_error **err);
int64_t ihost_id(const ihost_isle *h);
isle *ihost_core(ihost_isle *h); /* the core's object, for isle.h (stats...) */

/* Calls the global function `name` (dotted names reach into tables:
 * "ai.think") with `args` and waits for its results. `timeout` seconds
 * (< 0: none) bounds the whole call: when it runs out the work is
 * cancelled and IHOST_ETIMEOUT returned at once. `results` may be NULL.
 * Errors: the isle's (runtime with a traceback, cancelled, closed...),
 * IHOST_EVALUE for an argument, IHOST_ECLOSED, IHOST_EMEMORY, IHOST_EINVAL. */
int ihost_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
               double timeout, ihost_results **results, ihost_error **err);
/* The same for a chunk of Lua source run in the isle (`...` are the args). */
int ihost_eval(ihost_isle *h, const char *source, const ihost_value *args, size_t nargs,
               double timeout, ihost_results **results, ihost_error **err);

/* One-way: runs name(args...) in the isle and returns once it is queued;
 * errors in it go to the isle's stderr (isle.on_error). Waits for room
 * in a full mailbox; ihost_try_post returns IHOST_EBUSY instead. */
int ihost_post(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
               ihost_error **err);
int ihost_try_post(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                   ihost_error **err);

/* ---- tasks ------------------------------------------------------------------------ */

typedef struct ihost_task ihost_task;

/* Task states (ihost_task_state), as the core's ISLE_TASK_*. */
enum {
    IHOST_QUEUED = 0,
    IHOST_RUNNING = 1,
    IHOST_DONE = 2,
    IHOST_FAILED = 3,
    IHOST_CANCELLED = 4,
    IHOST_CLOSED = 5
};

/* Queue a call or a chunk and return its task at once (waiting for room in
 * a full mailbox; the try_ form returns IHOST_EBUSY instead). `timeout`
 * (< 0: none) is a deadline from now after which the work is cancelled
 * and the task ends with a "timeout" error. */
int ihost_spawn_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                     double timeout, ihost_task **out, ihost_error **err);
int ihost_try_spawn_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                         double timeout, ihost_task **out, ihost_error **err);
int ihost_spawn_eval(ihost_isle *h, const char *source, const ihost_value *args, size_t nargs,
                     double timeout, ihost_task **out, ihost_error **err);

int ihost_task_state(const ihost_task *t); /* IHOST_QUEUED ... IHOST_CLOSED (NULL: CLOSED) */
int ihost_task_done(const ihost_task *t);  /* 1 once it has ended (or NULL); never blocks */
/* Waits at most `timeout` seconds (< 0: for ever). IHOST_OK once the task
 * has ended (read it with ihost_task_results), IHOST_ETIMEOUT if it has
 * not: it goes on, and may be waited for again or cancelled. */
int ihost_task_wait(ihost_task *t, double timeout);
/* Asks the task to stop: a queued task ends at once, a running one at its
 * next checkpoint (compiled loops included), or when it returns from a C
 * call. It ends with a "cancelled" error unless it ended first. */
void ihost_task_cancel(ihost_task *t);
/* The outcome of an ended task: IHOST_OK and its results (`results` may be
 * NULL), or its error. May be called any number of times. IHOST_EINVAL if
 * it has not ended. */
int ihost_task_results(ihost_task *t, ihost_results **results, ihost_error **err);
/* Lets go of the task; it is not cancelled (ihost_task_cancel first). */
void ihost_task_free(ihost_task *t);

/* ---- closing ------------------------------------------------------------------------- */

/* Stops the isle taking work and returns at once; the handle stays valid
 * (calls on it fail with IHOST_ECLOSED). cancel != 0: queued work ends
 * "closed" without running, and running work is asked to stop. */
void ihost_stop(ihost_isle *h, int cancel);
/* ihost_stop, then waits for the isle's thread to end (queued work runs
 * first unless `cancel`), then frees the handle. Tasks stay valid. */
void ihost_close(ihost_isle *h, int cancel);

#ifdef __cplusplus
}
#endif
#endif
