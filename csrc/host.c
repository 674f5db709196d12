/* host.c - isle for C hosts (isle_host.h): values and tables held in C,
 * their encoding in LuaJIT's string.buffer format (the same bytes a Lua
 * caller writes: lua/isle/codec.lua, lua/isle/wire.lua), and handles,
 * calls, posts and tasks driven without a Lua state on the calling side.
 *
 * The format is the one LuaJIT documents in doc/ext_buffer.html
 * ("Serialization Format Specification"). The encoder writes only what the
 * isle's decoder accepts without raising (no nil or NaN keys, no duplicate
 * keys, no more than 100 levels, sizes LuaJIT can allocate): a decode that
 * fails inside the isle could take its loop down, so nothing malformed may
 * leave here. The decoder trusts nothing: every read is bounds-checked and
 * what it allocates grows with what it has actually read.
 *
 * The isle side is the worker every isle runs (lua/isle/worker.lua): a C
 * host sends the plain subset a Lua caller can send (call a global by name,
 * eval a source string, post) and asks the isle to instrument chunks itself
 * (F_INSTRUMENT, spec.init_instrument), since it has no instrumenter.
 */
#include "internal.h"
#include "isle_host.h"

#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Message kinds and flags: lua/isle/proto.lua. */
enum { KIND_EVAL = 1, KIND_CALL = 2, KIND_POST = 4 };
enum { FLAG_INSTRUMENT = 4 };

/* string.buffer's tags (LuaJIT src/lj_serialize.c). */
enum {
    SER_NIL = 0x00,
    SER_FALSE = 0x01,
    SER_TRUE = 0x02,
    SER_NULL = 0x03,
    SER_LIGHTUD32 = 0x04,
    SER_LIGHTUD64 = 0x05,
    SER_INT = 0x06,
    SER_NUM = 0x07,
    SER_TAB = 0x08,     /* +1: a hash part; +2: an array part (from 0); +4: from 1 */
    SER_DICT_MT = 0x0e, /* a table with a metatable from the dictionary */
    SER_DICT_STR = 0x0f,
    SER_INT64 = 0x10,
    SER_UINT64 = 0x11,
    SER_COMPLEX = 0x12,
    SER_STR = 0x20 /* + length */
};

/* LuaJIT's limits (src/lj_def.h): an array part of at most 2^27 + 1 slots,
 * a hash part of at most 2^26 nodes; beyond them its decoder raises. */
#define MAX_ARRAY ((size_t)1 << 27)
#define MAX_HASH ((size_t)1 << 26)

/* The metatables codec.lua registers with string.buffer, by index. */
enum { MT_FUNCTION = 0, MT_SPECIAL = 1 };

/* ---- errors ------------------------------------------------------------------ */

struct ihost_error {
    int kind;
    const char *code; /* static, or code_own */
    char *code_own;
    char *message;
    char *traceback;       /* NULL when none */
    ihost_results *holder; /* a decoded envelope: `value` points into it */
    ihost_value value;
};

static const char *const CODES[] = {"",     "runtime", "cancelled",   "timeout", "closed", "value",
                                    "busy", "memory",  "interrupted", "unknown", "invalid"};

/* Handed out when not even an error object can be allocated. */
static ihost_error nomem_error = {IHOST_EMEMORY, "memory",         NULL, "not enough memory", NULL,
                                  NULL,          {IHOST_TNIL, {0}}};

static int kind_of_code(const char *code)
{
    for (int k = IHOST_ERUNTIME; k <= IHOST_EINVAL; k++)
        if (strcmp(code, CODES[k]) == 0) return k;
    return IHOST_ERUNTIME; /* a code this header does not know yet */
}

static ihost_error *error_new(int kind, char *message)
{
    ihost_error *e = calloc(1, sizeof(*e));
    if (!e) return NULL;
    e->kind = kind;
    e->code = CODES[kind];
    e->message = message;
    return e;
}

/* Fails with `kind` and a formatted message: stores an error object in
 * *err when asked for one, returns the code. Out of memory, the error
 * becomes the static "memory" one and so does the code. */
static int fail(ihost_error **err, int kind, const char *fmt, ...)
{
    if (!err) return kind;
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    /* clang-analyzer 14 loses track of va_start here (a false positive). */
    int n = vsnprintf(NULL, 0, fmt, ap); /* NOLINT(clang-analyzer-valist.Uninitialized) */
    va_end(ap);
    if (n >= 0 && (msg = malloc((size_t)n + 1))) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    ihost_error *e = msg ? error_new(kind, msg) : NULL;
    if (!e) {
        free(msg);
        *err = &nomem_error;
        return IHOST_EMEMORY;
    }
    *err = e;
    return kind;
}

static int ok(ihost_error **err)
{
    if (err) *err = NULL;
    return IHOST_OK;
}

int ihost_error_kind(const ihost_error *e) { return e ? e->kind : IHOST_OK; }
const char *ihost_error_code(const ihost_error *e) { return e ? e->code : ""; }
const char *ihost_error_message(const ihost_error *e) { return e ? e->message : ""; }
const char *ihost_error_traceback(const ihost_error *e) { return e ? e->traceback : NULL; }
ihost_value ihost_error_value(const ihost_error *e) { return e ? e->value : ihost_nil(); }

void ihost_error_free(ihost_error *e)
{
    if (!e || e == &nomem_error) return;
    ihost_results_free(e->holder);
    free(e->code_own);
    free(e->message);
    free(e->traceback);
    free(e);
}

/* ---- tables -------------------------------------------------------------------- */

struct ihost_table {
    ihost_value *arr; /* arr[i] is t[i + 1]; may hold nil holes */
    size_t alen, acap;
    ihost_value *keys, *vals; /* the hash part in insertion order; a nil val is a removed key */
    size_t hlen, hcap, hlive;
    uint32_t *index;     /* open addressing over bool/number/string keys: entry + 1, 0 empty */
    size_t icap, icount; /* icap: 0 or a power of two */
    ihost_table *parent; /* the table this one is a value or key of */
    int owned;           /* belongs to a table or a result list */
    int height;          /* levels of tables in this subtree, itself included */
};

ihost_value ihost_string(const char *s)
{
    return s ? ihost_lstring(s, strlen(s)) : ihost_nil(); /* as lua_pushstring(L, NULL) */
}

ihost_table *ihost_table_new(void)
{
    ihost_table *t = calloc(1, sizeof(*t));
    if (t) t->height = 1;
    return t;
}

static void table_destroy(ihost_table *t);

/* Frees what a value owns (a string copy, a table) once it is owned. */
static void value_destroy(ihost_value *v)
{
    if (v->type == IHOST_TSTRING) free((char *)v->v.str.ptr);
    else if (v->type == IHOST_TTABLE) table_destroy(v->v.table);
    v->type = IHOST_TNIL;
}

static void table_destroy(ihost_table *t)
{
    for (size_t i = 0; i < t->alen; i++) value_destroy(&t->arr[i]);
    for (size_t i = 0; i < t->hlen; i++) {
        value_destroy(&t->keys[i]);
        value_destroy(&t->vals[i]);
    }
    free(t->arr);
    free(t->keys);
    free(t->vals);
    free(t->index);
    free(t);
}

void ihost_table_free(ihost_table *t)
{
    if (t && !t->owned) table_destroy(t);
}

static int valid_type(int type) { return type >= IHOST_TNIL && type <= IHOST_TTABLE; }

/* A number key that is an integer k (the array part's keys). */
static int int_key(double d, int64_t *k)
{
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0)) return 0;
    int64_t i = (int64_t)d;
    if ((double)i != d) return 0;
    *k = i;
    return 1;
}

/* Keys that compare by value; int64/uint64 cdata and tables are distinct
 * objects in Lua, equal to no other key. */
static int indexable(const ihost_value *k)
{
    return k->type == IHOST_TBOOLEAN || k->type == IHOST_TNUMBER || k->type == IHOST_TSTRING;
}

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static uint64_t key_hash(const ihost_value *k)
{
    if (k->type == IHOST_TBOOLEAN) return (uint64_t)(k->v.boolean != 0) + 1;
    if (k->type == IHOST_TNUMBER) {
        double d = k->v.number == 0 ? 0.0 : k->v.number; /* -0.0 is 0 */
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        return mix64(bits);
    }
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    const unsigned char *p = (const unsigned char *)k->v.str.ptr;
    for (size_t i = 0; i < k->v.str.len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return mix64(h ^ k->v.str.len);
}

static int key_eq(const ihost_value *a, const ihost_value *b)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case IHOST_TBOOLEAN: return (a->v.boolean != 0) == (b->v.boolean != 0);
    case IHOST_TNUMBER: return a->v.number == b->v.number;
    case IHOST_TSTRING:
        return a->v.str.len == b->v.str.len
            && (a->v.str.len == 0 || memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0);
    default: return 0;
    }
}

#define NOT_FOUND ((size_t)-1)

static size_t hash_find(const ihost_table *t, const ihost_value *k)
{
    if (!t->icap || !indexable(k)) return NOT_FOUND;
    size_t mask = t->icap - 1;
    for (size_t i = (size_t)key_hash(k) & mask;; i = (i + 1) & mask) {
        uint32_t e = t->index[i];
        if (!e) return NOT_FOUND;
        if (key_eq(&t->keys[e - 1], k)) return e - 1;
    }
}

static void index_put(uint32_t *index, size_t cap, const ihost_value *k, size_t entry)
{
    size_t mask = cap - 1;
    size_t i = (size_t)key_hash(k) & mask;
    while (index[i]) i = (i + 1) & mask;
    index[i] = (uint32_t)(entry + 1);
}

/* Room for one more hash entry (and its index slot): nothing changes on
 * failure. */
static int hash_reserve(ihost_table *t, int indexed)
{
    if (t->hlen >= UINT32_MAX - 1) return IHOST_EMEMORY;
    if (t->hlen == t->hcap) {
        size_t cap = t->hcap ? t->hcap * 2 : 4;
        ihost_value *k = realloc(t->keys, cap * sizeof(*k));
        if (!k) return IHOST_EMEMORY;
        t->keys = k;
        ihost_value *v = realloc(t->vals, cap * sizeof(*v));
        if (!v) return IHOST_EMEMORY;
        t->vals = v;
        t->hcap = cap;
    }
    if (indexed && (t->icount + 1) * 2 > t->icap) {
        size_t cap = t->icap ? t->icap * 2 : 8;
        uint32_t *index = calloc(cap, sizeof(*index));
        if (!index) return IHOST_EMEMORY;
        for (size_t e = 0; e < t->hlen; e++)
            if (indexable(&t->keys[e])) index_put(index, cap, &t->keys[e], e);
        free(t->index);
        t->index = index;
        t->icap = cap;
    }
    return IHOST_OK;
}

static int array_reserve(ihost_table *t, size_t n)
{
    if (n <= t->acap) return IHOST_OK;
    size_t cap = t->acap ? t->acap : 4;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(ihost_value)) return IHOST_EMEMORY;
        cap *= 2;
    }
    ihost_value *a = realloc(t->arr, cap * sizeof(*a));
    if (!a) return IHOST_EMEMORY;
    t->arr = a;
    t->acap = cap;
    return IHOST_OK;
}

/* What tset did with the key it was given. */
enum { KEY_DROPPED = 0, KEY_STORED = 1 };
/* A key with a value already (the decoder's duplicate). */
#define TSET_DUP (-1)

/* t[key] = val with both already owned by the caller (copies made,
 * tables not yet adopted). On success `val` belongs to `t`, and so does
 * `key` if KEY_STORED is returned (otherwise the caller frees it); the old
 * value is destroyed. On failure (IHOST_EMEMORY, or TSET_DUP when `nodup`
 * and the key has a value) nothing changed. */
static int tset(ihost_table *t, ihost_value key, ihost_value val, int nodup)
{
    int64_t k;
    if (key.type == IHOST_TNUMBER) {
        if (key.v.number == 0) key.v.number = 0.0; /* -0.0 is the key 0 */
        if (int_key(key.v.number, &k) && k >= 1 && (uint64_t)k <= (uint64_t)t->alen + 1) {
            size_t i = (size_t)k - 1;
            if (i < t->alen) {
                if (nodup && t->arr[i].type != IHOST_TNIL) return TSET_DUP;
                value_destroy(&t->arr[i]);
                t->arr[i] = val;
                return KEY_DROPPED;
            }
            if (val.type != IHOST_TNIL) {
                /* t[n + 1] grows the array part; the same key in the hash
                 * part (set while the array was shorter) is replaced. */
                size_t e = hash_find(t, &key);
                if (e != NOT_FOUND && nodup && t->vals[e].type != IHOST_TNIL) return TSET_DUP;
                if (array_reserve(t, t->alen + 1)) return IHOST_EMEMORY;
                if (e != NOT_FOUND && t->vals[e].type != IHOST_TNIL) {
                    value_destroy(&t->vals[e]);
                    t->hlive--;
                }
                t->arr[t->alen++] = val;
                return KEY_DROPPED;
            }
        }
    }
    size_t e = hash_find(t, &key);
    if (e != NOT_FOUND) {
        /* hash_find finds entries only in a table that has them (icap > 0
         * means vals exists); clang-analyzer 14 does not follow it there. */
        /* NOLINTBEGIN(clang-analyzer-core.NullDereference) */
        if (nodup && t->vals[e].type != IHOST_TNIL) return TSET_DUP;
        if (t->vals[e].type != IHOST_TNIL) t->hlive--;
        value_destroy(&t->vals[e]);
        t->vals[e] = val;
        /* NOLINTEND(clang-analyzer-core.NullDereference) */
        if (val.type != IHOST_TNIL) t->hlive++;
        return KEY_DROPPED;
    }
    if (val.type == IHOST_TNIL) return KEY_DROPPED; /* removing a key that is not there */
    int indexed = indexable(&key);
    if (hash_reserve(t, indexed)) return IHOST_EMEMORY;
    e = t->hlen++;
    t->keys[e] = key;
    t->vals[e] = val;
    t->hlive++;
    if (indexed) {
        index_put(t->index, t->icap, &key, e);
        t->icount++;
    }
    return KEY_STORED;
}

/* `child` now belongs to `parent` (NULL: to a result list). */
static void adopt(ihost_table *parent, ihost_table *child)
{
    child->owned = 1;
    child->parent = parent;
    int h = child->height + 1;
    for (ihost_table *p = parent; p && p->height < h; p = p->parent, h++) p->height = h;
}

static int depth_of(const ihost_table *t)
{
    int d = 1;
    while ((t = t->parent)) d++;
    return d;
}

/* May `c` be adopted by `t`? (See isle_host.h: ihost_table_set.) */
static int can_adopt(const ihost_table *t, const ihost_table *c)
{
    if (!c || c->owned) return 0;
    for (const ihost_table *p = t; p; p = p->parent)
        if (p == c) return 0; /* a cycle */
    return depth_of(t) + c->height <= IHOST_MAX_DEPTH;
}

static int valid_value(const ihost_value *v)
{
    if (!valid_type(v->type)) return 0;
    if (v->type == IHOST_TSTRING)
        return (v->v.str.ptr || v->v.str.len == 0) && v->v.str.len <= IHOST_MAX_STRING;
    if (v->type == IHOST_TTABLE) return v->v.table != NULL;
    return 1;
}

/* An owned copy of a string value (NUL-terminated); other values as they are. */
static int copy_value(const ihost_value *v, ihost_value *out)
{
    *out = *v;
    if (v->type == IHOST_TBOOLEAN) out->v.boolean = v->v.boolean != 0;
    if (v->type != IHOST_TSTRING) return IHOST_OK;
    char *s = malloc(v->v.str.len + 1);
    if (!s) return IHOST_EMEMORY;
    if (v->v.str.len) memcpy(s, v->v.str.ptr, v->v.str.len);
    s[v->v.str.len] = '\0';
    out->v.str.ptr = s;
    return IHOST_OK;
}

static void drop_copy(ihost_value *v)
{
    if (v->type == IHOST_TSTRING) free((char *)v->v.str.ptr);
}

int ihost_table_set(ihost_table *t, ihost_value key, ihost_value val)
{
    if (!t || !valid_value(&key) || !valid_value(&val)) return IHOST_EINVAL;
    if (key.type == IHOST_TNIL || (key.type == IHOST_TNUMBER && key.v.number != key.v.number))
        return IHOST_EINVAL;
    if (key.type == IHOST_TTABLE && !can_adopt(t, key.v.table)) return IHOST_EINVAL;
    if (val.type == IHOST_TTABLE) {
        if (!can_adopt(t, val.v.table)) return IHOST_EINVAL;
        if (key.type == IHOST_TTABLE && key.v.table == val.v.table) return IHOST_EINVAL;
    }
    /* A table key is never found again (Lua compares tables by identity):
     * removing one is a no-op that must not adopt it. */
    if (key.type == IHOST_TTABLE && val.type == IHOST_TNIL) return IHOST_OK;
    ihost_value kc, vc;
    if (copy_value(&key, &kc)) return IHOST_EMEMORY;
    if (copy_value(&val, &vc)) {
        drop_copy(&kc);
        return IHOST_EMEMORY;
    }
    int rc = tset(t, kc, vc, 0);
    if (rc < 0 || rc == IHOST_EMEMORY) {
        drop_copy(&kc);
        drop_copy(&vc);
        return IHOST_EMEMORY;
    }
    if (rc == KEY_STORED) {
        if (kc.type == IHOST_TTABLE) adopt(t, kc.v.table);
    } else {
        drop_copy(&kc);
    }
    if (vc.type == IHOST_TTABLE) adopt(t, vc.v.table);
    return IHOST_OK;
}

int ihost_table_setfield(ihost_table *t, const char *key, ihost_value val)
{
    if (!key) return IHOST_EINVAL;
    return ihost_table_set(t, ihost_string(key), val);
}

int ihost_table_seti(ihost_table *t, int64_t i, ihost_value val)
{
    return ihost_table_set(t, ihost_number((double)i), val);
}

int ihost_table_push(ihost_table *t, ihost_value val)
{
    if (!t) return IHOST_EINVAL;
    ihost_value key = ihost_number((double)t->alen + 1);
    if (val.type != IHOST_TNIL) return ihost_table_set(t, key, val);
    /* A hole, as in the constructor { a, nil, c }: t[n + 1] is nil now. */
    if (array_reserve(t, t->alen + 1)) return IHOST_EMEMORY;
    size_t e = hash_find(t, &key);
    if (e != NOT_FOUND && t->vals[e].type != IHOST_TNIL) {
        value_destroy(&t->vals[e]);
        t->hlive--;
    }
    t->arr[t->alen++] = val;
    return IHOST_OK;
}

ihost_value ihost_table_get(const ihost_table *t, ihost_value key)
{
    if (!t || !valid_value(&key)) return ihost_nil();
    int64_t k;
    if (key.type == IHOST_TNUMBER && int_key(key.v.number, &k) && k >= 1
        && (uint64_t)k <= (uint64_t)t->alen)
        return t->arr[k - 1];
    size_t e = hash_find(t, &key);
    return e == NOT_FOUND ? ihost_nil() : t->vals[e];
}

ihost_value ihost_table_getfield(const ihost_table *t, const char *key)
{
    return key ? ihost_table_get(t, ihost_string(key)) : ihost_nil();
}

ihost_value ihost_table_geti(const ihost_table *t, int64_t i)
{
    return ihost_table_get(t, ihost_number((double)i));
}

size_t ihost_table_len(const ihost_table *t)
{
    if (!t) return 0;
    size_t n = 0;
    while (n < t->alen && t->arr[n].type != IHOST_TNIL) n++;
    if (n < t->alen) return n;
    while (ihost_table_get(t, ihost_number((double)n + 1)).type != IHOST_TNIL) n++;
    return n;
}

size_t ihost_table_count(const ihost_table *t)
{
    if (!t) return 0;
    size_t n = t->hlive;
    for (size_t i = 0; i < t->alen; i++) n += t->arr[i].type != IHOST_TNIL;
    return n;
}

int ihost_table_next(const ihost_table *t, size_t *iter, ihost_value *key, ihost_value *val)
{
    if (!t || !iter) return 0;
    for (size_t i = *iter; i < t->alen + t->hlen; i++) {
        const ihost_value *v = i < t->alen ? &t->arr[i] : &t->vals[i - t->alen];
        if (v->type == IHOST_TNIL) continue;
        if (key) *key = i < t->alen ? ihost_number((double)i + 1) : t->keys[i - t->alen];
        if (val) *val = *v;
        *iter = i + 1;
        return 1;
    }
    *iter = t->alen + t->hlen;
    return 0;
}

/* ---- result lists --------------------------------------------------------------- */

struct ihost_results {
    ihost_value *vals;
    size_t n, cap;
};

size_t ihost_results_count(const ihost_results *r) { return r ? r->n : 0; }

ihost_value ihost_results_get(const ihost_results *r, size_t i)
{
    return r && i < r->n ? r->vals[i] : ihost_nil();
}

void ihost_results_free(ihost_results *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) value_destroy(&r->vals[i]);
    free(r->vals);
    free(r);
}

void ihost_bytes_free(char *bytes) { free(bytes); }

/* ---- paths of values, for errors ------------------------------------------------- */
/* Built while an error unwinds: each level puts its own part in front,
 * giving `args[2].pos[3]` as codec.lua names paths. */

enum { PATH_MAX_LEN = 200 };

typedef struct vpath {
    char s[PATH_MAX_LEN + 1];
    size_t len;
} vpath;

static void path_front(vpath *p, const char *part)
{
    size_t n = strlen(part);
    if (p->len + n > PATH_MAX_LEN) { /* deep paths keep their innermost end */
        if (n > PATH_MAX_LEN) return;
        p->len = PATH_MAX_LEN - n;
    }
    memmove(p->s + n, p->s, p->len);
    memcpy(p->s, part, n);
    p->len += n;
    p->s[p->len] = '\0';
}

static int is_name(const char *s, size_t len)
{
    if (len == 0 || len > 40) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

/* The part of a path a key stands for: `.name`, `["x y"]`, `[3]`... */
static void key_part(char *out, size_t cap, const ihost_value *k)
{
    switch (k->type) {
    case IHOST_TSTRING: {
        const char *s = k->v.str.ptr;
        size_t len = k->v.str.len;
        if (is_name(s, len)) {
            snprintf(out, cap, ".%.*s", (int)len, s);
            return;
        }
        size_t o = 0;
        out[o++] = '[';
        out[o++] = '"';
        for (size_t i = 0; i < len && o + 8 < cap; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '"' || c == '\\') {
                out[o++] = '\\';
                out[o++] = (char)c;
            } else if (c < 32 || c > 126) o += (size_t)snprintf(out + o, cap - o, "\\%u", c);
            else out[o++] = (char)c;
        }
        snprintf(out + o, cap - o, "\"]");
        return;
    }
    case IHOST_TNUMBER: snprintf(out, cap, "[%.14g]", k->v.number); return;
    case IHOST_TBOOLEAN: snprintf(out, cap, "[%s]", k->v.boolean ? "true" : "false"); return;
    case IHOST_TINT64: snprintf(out, cap, "[%lldLL]", (long long)k->v.i64); return;
    case IHOST_TUINT64: snprintf(out, cap, "[%lluULL]", (unsigned long long)k->v.u64); return;
    case IHOST_TTABLE: snprintf(out, cap, "[<table key>]"); return;
    default: snprintf(out, cap, "[<key>]"); return;
    }
}

/* ---- encoder --------------------------------------------------------------------- */

typedef struct enc {
    char *p;
    size_t len, cap;
    int kind; /* IHOST_OK, or why it failed */
    char msg[160];
    vpath path;
} enc;

static int enc_fail(enc *e, int kind, const char *msg)
{
    e->kind = kind;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return -1;
}

static int enc_room(enc *e, size_t n)
{
    if (e->cap - e->len >= n) return 0;
    size_t cap = e->cap ? e->cap : 256;
    while (cap - e->len < n) {
        if (cap > SIZE_MAX / 2) return enc_fail(e, IHOST_EMEMORY, "not enough memory");
        cap *= 2;
    }
    char *p = realloc(e->p, cap);
    if (!p) return enc_fail(e, IHOST_EMEMORY, "not enough memory");
    e->p = p;
    e->cap = cap;
    return 0;
}

static void put_u32le(unsigned char *w, uint32_t v)
{
    for (int i = 0; i < 4; i++) w[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64le(unsigned char *w, uint64_t v)
{
    for (int i = 0; i < 8; i++) w[i] = (unsigned char)(v >> (8 * i));
}

/* The prefix-coded unsigned number of the format (".U"). */
static int enc_u124(enc *e, uint32_t v)
{
    if (enc_room(e, 5)) return -1;
    unsigned char *w = (unsigned char *)e->p + e->len;
    if (v < 0xe0) {
        w[0] = (unsigned char)v;
        e->len += 1;
    } else if (v < 0x1fe0) {
        v -= 0xe0;
        w[0] = (unsigned char)(0xe0 | (v >> 8));
        w[1] = (unsigned char)v;
        e->len += 2;
    } else {
        w[0] = 0xff;
        put_u32le(w + 1, v);
        e->len += 5;
    }
    return 0;
}

static int enc_byte(enc *e, int b)
{
    if (enc_room(e, 1)) return -1;
    e->p[e->len++] = (char)b;
    return 0;
}

static int enc_u64(enc *e, int tag, uint64_t bits)
{
    if (enc_room(e, 9)) return -1;
    unsigned char *w = (unsigned char *)e->p + e->len;
    w[0] = (unsigned char)tag;
    put_u64le(w + 1, bits);
    e->len += 9;
    return 0;
}

static int enc_number(enc *e, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return enc_u64(e, SER_NUM, bits);
}

static int enc_str(enc *e, const char *s, size_t len)
{
    if (len > IHOST_MAX_STRING)
        return enc_fail(e, IHOST_EVALUE,
                        "a string longer than LuaJIT's longest (2^31 - 256 bytes)");
    if (enc_u124(e, (uint32_t)(SER_STR + len)) || enc_room(e, len)) return -1;
    if (len) memcpy(e->p + e->len, s, len);
    e->len += len;
    return 0;
}

static int enc_value(enc *e, const ihost_value *v, int depth);

static int enc_table(enc *e, const ihost_table *t, int depth)
{
    if (depth >= IHOST_MAX_DEPTH)
        return enc_fail(e, IHOST_EVALUE, "a table nested more than 100 levels deep");
    size_t alen = t->alen;
    while (alen > 0 && t->arr[alen - 1].type == IHOST_TNIL) alen--; /* as LuaJIT trims */
    size_t nhash = t->hlive;
    if (alen >= MAX_ARRAY || nhash > MAX_HASH)
        return enc_fail(e, IHOST_EVALUE,
                        "a table larger than LuaJIT's (2^27 array or 2^26 hash entries)");
    if (enc_byte(e, SER_TAB + (nhash ? 1 : 0) + (alen ? 4 : 0))) return -1;
    if (alen && enc_u124(e, (uint32_t)alen + 1)) return -1; /* slot 0 counts, unused */
    if (nhash && enc_u124(e, (uint32_t)nhash)) return -1;
    char part[64];
    for (size_t i = 0; i < alen; i++)
        if (enc_value(e, &t->arr[i], depth + 1)) {
            snprintf(part, sizeof part, "[%zu]", i + 1);
            path_front(&e->path, part);
            return -1;
        }
    for (size_t i = 0; i < t->hlen; i++) {
        if (t->vals[i].type == IHOST_TNIL) continue;
        if (enc_value(e, &t->keys[i], depth + 1)) {
            path_front(&e->path, "[<key>]");
            return -1;
        }
        if (enc_value(e, &t->vals[i], depth + 1)) {
            key_part(part, sizeof part, &t->keys[i]);
            path_front(&e->path, part);
            return -1;
        }
    }
    return 0;
}

static int enc_value(enc *e, const ihost_value *v, int depth)
{
    switch (v->type) {
    case IHOST_TNIL: return enc_byte(e, SER_NIL);
    case IHOST_TBOOLEAN: return enc_byte(e, v->v.boolean ? SER_TRUE : SER_FALSE);
    case IHOST_TNUMBER: return enc_number(e, v->v.number);
    case IHOST_TINT64: return enc_u64(e, SER_INT64, (uint64_t)v->v.i64);
    case IHOST_TUINT64: return enc_u64(e, SER_UINT64, v->v.u64);
    case IHOST_TSTRING:
        if (!v->v.str.ptr && v->v.str.len)
            return enc_fail(e, IHOST_EVALUE, "a string with a NULL pointer");
        return enc_str(e, v->v.str.ptr, v->v.str.len);
    case IHOST_TTABLE:
        if (!v->v.table) return enc_fail(e, IHOST_EVALUE, "a NULL table");
        return enc_table(e, v->v.table, depth);
    default: {
        char msg[64];
        snprintf(msg, sizeof msg, "a value of unknown type %d", (int)v->type);
        return enc_fail(e, IHOST_EVALUE, msg);
    }
    }
}

/* A value list as codec.put_values writes it: 'V', the count, the values.
 * `what` names the list in errors ("args"). */
static int enc_list(enc *e, const char *what, const ihost_value *vals, size_t n)
{
    if (n > IHOST_MAX_ARGS) {
        char msg[96];
        snprintf(msg, sizeof msg, "%zu values (at most %d go in one list)", n, IHOST_MAX_ARGS);
        path_front(&e->path, what);
        return enc_fail(e, IHOST_EVALUE, msg);
    }
    if (n && !vals) {
        path_front(&e->path, what);
        return enc_fail(e, IHOST_EINVAL, "a NULL array with a count");
    }
    if (enc_byte(e, ISLE_WIRE_VALUES) || enc_number(e, (double)n)) return -1;
    for (size_t i = 0; i < n; i++)
        if (enc_value(e, &vals[i], 0)) {
            char part[48];
            snprintf(part, sizeof part, "%s[%zu]", what, i + 1);
            path_front(&e->path, part);
            return -1;
        }
    return 0;
}

/* The error an encoder failed with. */
static int enc_error(enc *e, ihost_error **err)
{
    int kind = e->kind;
    free(e->p);
    e->p = NULL;
    if (kind == IHOST_EMEMORY) return fail(err, kind, "not enough memory to encode the values");
    if (e->path.len) return fail(err, kind, "cannot send %s at %s", e->msg, e->path.s);
    return fail(err, kind, "cannot send %s", e->msg);
}

int ihost_encode(const ihost_value *vals, size_t n, char **bytes, size_t *len, ihost_error **err)
{
    if (bytes) *bytes = NULL;
    if (len) *len = 0;
    if (!bytes || !len) return fail(err, IHOST_EINVAL, "ihost_encode: NULL output");
    enc e = {0};
    if (enc_list(&e, "values", vals, n)) return enc_error(&e, err);
    *bytes = e.p;
    *len = e.len;
    return ok(err);
}

int ihost_encode_value(ihost_value v, char **bytes, size_t *len, ihost_error **err)
{
    if (bytes) *bytes = NULL;
    if (len) *len = 0;
    if (!bytes || !len) return fail(err, IHOST_EINVAL, "ihost_encode_value: NULL output");
    enc e = {0};
    if (enc_value(&e, &v, 0)) return enc_error(&e, err);
    if (!e.p && enc_room(&e, 1)) return enc_error(&e, err); /* never returns NULL on success */
    *bytes = e.p;
    *len = e.len;
    return ok(err);
}

/* ---- decoder ---------------------------------------------------------------------- */

/* A value the lenient decoder skipped (something C cannot hold inside an
 * error value): it reads as nil, and an entry with it as key is dropped. */
#define TYPE_SKIPPED ((ihost_type)-1)

typedef struct dec {
    const unsigned char *start, *p, *end;
    int lenient; /* error envelopes: what C cannot hold becomes nil */
    int kind;
    char msg[120];
    vpath path;
} dec;

static int dec_fail(dec *d, int kind, const char *msg)
{
    d->kind = kind;
    snprintf(d->msg, sizeof d->msg, "%s", msg);
    return -1;
}

static int dec_eob(dec *d) { return dec_fail(d, IHOST_EVALUE, "truncated data"); }

static size_t dec_left(const dec *d) { return (size_t)(d->end - d->p); }

static uint32_t get_u32le(const unsigned char *r)
{
    return (uint32_t)r[0] | (uint32_t)r[1] << 8 | (uint32_t)r[2] << 16 | (uint32_t)r[3] << 24;
}

static uint64_t get_u64le(const unsigned char *r)
{
    return (uint64_t)get_u32le(r) | (uint64_t)get_u32le(r + 4) << 32;
}

static int dec_u124(dec *d, uint32_t *v)
{
    if (d->p >= d->end) return dec_eob(d);
    uint32_t x = *d->p++;
    if (x >= 0xe0) {
        if (x != 0xff) {
            if (d->p >= d->end) return dec_eob(d);
            x = ((x & 0x1f) << 8) + *d->p++ + 0xe0;
        } else {
            if (dec_left(d) < 4) return dec_eob(d);
            x = get_u32le(d->p);
            d->p += 4;
        }
    }
    *v = x;
    return 0;
}

static int dec_value(dec *d, ihost_value *out, int depth);

/* Grows a decoded table's array part as values arrive, so a count in the
 * input cannot make the decoder allocate more than the input holds. */
static int dec_table(dec *d, uint32_t tp, ihost_value *out, int depth)
{
    if (depth >= IHOST_MAX_DEPTH)
        return dec_fail(d, IHOST_EVALUE, "tables nested more than 100 levels deep");
    int mt = -1;
    if (tp == SER_DICT_MT) {
        uint32_t idx;
        if (dec_u124(d, &idx) || dec_u124(d, &tp)) return -1;
        if (!(tp >= SER_TAB && tp < SER_DICT_MT))
            return dec_fail(d, IHOST_EVALUE, "a bad tag after a metatable index");
        mt = idx > 1000 ? 1000 : (int)idx;
        if (!d->lenient)
            return dec_fail(d, IHOST_EVALUE,
                            mt == MT_FUNCTION ? "a Lua function (C cannot receive functions)"
                                : mt == MT_SPECIAL
                                ? "an isle token or other isle object (C cannot receive it)"
                                : "a table with a metatable (C cannot receive it)");
    }
    uint32_t narray = 0, nhash = 0;
    if (tp >= SER_TAB + 2 && dec_u124(d, &narray)) return -1;
    if ((tp & 1) && dec_u124(d, &nhash)) return -1;
    uint32_t base = tp >= SER_TAB + 4 ? 1 : 0;
    size_t nobj = narray > base ? narray - base : 0;
    if (nobj > dec_left(d) || (size_t)nhash > dec_left(d) / 2)
        return dec_eob(d); /* 1 byte per value at least */
    ihost_table *t = ihost_table_new();
    if (!t) return dec_fail(d, IHOST_EMEMORY, "not enough memory");
    char part[64];
    ihost_value v, k;
    for (size_t i = 0; i < nobj; i++) {
        size_t key = base + i;
        if (dec_value(d, &v, depth + 1)) {
            snprintf(part, sizeof part, "[%zu]", key);
            path_front(&d->path, part);
            goto fail;
        }
        if (v.type == TYPE_SKIPPED) v = ihost_nil();
        int rc;
        if (key == 0) { /* a 0-based array part: t[0] is a hash key in C */
            rc = v.type == IHOST_TNIL ? KEY_DROPPED : tset(t, ihost_number(0), v, 1);
        } else { /* keys 1, 2, ... in order; nil holes keep their place */
            rc = array_reserve(t, t->alen + 1);
            if (!rc) t->arr[t->alen++] = v;
        }
        if (rc == IHOST_EMEMORY) {
            value_destroy(&v);
            goto nomem;
        }
        if (v.type == IHOST_TTABLE) adopt(t, v.v.table);
    }
    for (uint32_t i = 0; i < nhash; i++) {
        if (dec_value(d, &k, depth + 1)) {
            path_front(&d->path, "[<key>]");
            goto fail;
        }
        if (dec_value(d, &v, depth + 1)) {
            key_part(part, sizeof part, &k);
            value_destroy(&k);
            path_front(&d->path, part);
            goto fail;
        }
        if (k.type == TYPE_SKIPPED || v.type == TYPE_SKIPPED) {
            if (k.type != TYPE_SKIPPED) value_destroy(&k);
            if (v.type != TYPE_SKIPPED) value_destroy(&v);
            continue;
        }
        const char *bad = k.type == IHOST_TNIL                    ? "a nil table key"
            : k.type == IHOST_TNUMBER && k.v.number != k.v.number ? "a NaN table key"
                                                                  : NULL;
        if (bad) {
            value_destroy(&v);
            dec_fail(d, IHOST_EVALUE, bad);
            goto fail;
        }
        int rc = tset(t, k, v, 1);
        if (rc == TSET_DUP || rc == IHOST_EMEMORY) {
            key_part(part, sizeof part, &k);
            value_destroy(&k);
            value_destroy(&v);
            if (rc == IHOST_EMEMORY) goto nomem;
            path_front(&d->path, part);
            dec_fail(d, IHOST_EVALUE, "a key given twice");
            goto fail;
        }
        if (rc == KEY_STORED) {
            if (k.type == IHOST_TTABLE) adopt(t, k.v.table);
        } else {
            value_destroy(&k);
        }
        if (v.type == IHOST_TTABLE) adopt(t, v.v.table);
    }
    if (mt >= 0) { /* lenient: read through, then left out */
        table_destroy(t);
        out->type = TYPE_SKIPPED;
        return 0;
    }
    *out = ihost_tablev(t);
    return 0;
nomem:
    dec_fail(d, IHOST_EMEMORY, "not enough memory");
fail:
    table_destroy(t);
    return -1;
}

static int dec_skip(dec *d, ihost_value *out, size_t n, const char *what)
{
    if (!d->lenient) return dec_fail(d, IHOST_EVALUE, what);
    if (dec_left(d) < n) return dec_eob(d);
    d->p += n;
    out->type = TYPE_SKIPPED;
    return 0;
}

static int dec_value(dec *d, ihost_value *out, int depth)
{
    uint32_t tp;
    *out = ihost_nil();
    if (dec_u124(d, &tp)) return -1;
    if (tp >= SER_STR) {
        size_t len = tp - SER_STR;
        if (len > dec_left(d)) return dec_eob(d);
        char *s = malloc(len + 1);
        if (!s) return dec_fail(d, IHOST_EMEMORY, "not enough memory");
        memcpy(s, d->p, len);
        s[len] = '\0';
        d->p += len;
        *out = ihost_lstring(s, len);
        return 0;
    }
    switch (tp) {
    case SER_NIL: return 0;
    case SER_FALSE: *out = ihost_boolean(0); return 0;
    case SER_TRUE: *out = ihost_boolean(1); return 0;
    case SER_INT:
        if (dec_left(d) < 4) return dec_eob(d);
        *out = ihost_number((double)(int32_t)get_u32le(d->p));
        d->p += 4;
        return 0;
    case SER_NUM: {
        if (dec_left(d) < 8) return dec_eob(d);
        uint64_t bits = get_u64le(d->p);
        double n;
        memcpy(&n, &bits, sizeof n);
        *out = ihost_number(n);
        d->p += 8;
        return 0;
    }
    case SER_INT64:
    case SER_UINT64:
        if (dec_left(d) < 8) return dec_eob(d);
        *out =
            tp == SER_INT64 ? ihost_int64((int64_t)get_u64le(d->p)) : ihost_uint64(get_u64le(d->p));
        d->p += 8;
        return 0;
    case SER_COMPLEX: return dec_skip(d, out, 16, "a complex number (C cannot receive it)");
    case SER_NULL: return dec_skip(d, out, 0, "a light userdata");
    case SER_LIGHTUD32: return dec_skip(d, out, 4, "a light userdata");
    case SER_LIGHTUD64: return dec_skip(d, out, 8, "a light userdata");
    case SER_DICT_STR: {
        uint32_t idx;
        if (!d->lenient)
            return dec_fail(d, IHOST_EVALUE, "a string dictionary entry (isle uses none)");
        if (dec_u124(d, &idx)) return -1;
        out->type = TYPE_SKIPPED;
        return 0;
    }
    default:
        if (tp >= SER_TAB && tp <= SER_DICT_MT) return dec_table(d, tp, out, depth);
        char msg[40];
        snprintf(msg, sizeof msg, "an unknown tag 0x%02x", (unsigned)tp);
        return dec_fail(d, IHOST_EVALUE, msg);
    }
}

static int results_push(ihost_results *r, ihost_value v)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4;
        ihost_value *vals = realloc(r->vals, cap * sizeof(*vals));
        if (!vals) return IHOST_EMEMORY;
        r->vals = vals;
        r->cap = cap;
    }
    if (v.type == TYPE_SKIPPED) v = ihost_nil();
    if (v.type == IHOST_TTABLE) adopt(NULL, v.v.table);
    r->vals[r->n++] = v;
    return IHOST_OK;
}

/* Decodes `count` values (or, with count < 0, a value list: its tag and
 * count first) into a new result list. `what` names the list in errors. */
static int dec_into(dec *d, long count, const char *what, ihost_results **out)
{
    *out = NULL;
    ihost_results *r = calloc(1, sizeof(*r));
    if (!r) return dec_fail(d, IHOST_EMEMORY, "not enough memory");
    size_t n = (size_t)count;
    if (count < 0) {
        if (d->p >= d->end) {
            dec_eob(d);
            goto fail;
        }
        int tag = *d->p++;
        if (tag != ISLE_WIRE_VALUES && tag != ISLE_WIRE_FUNCS) {
            dec_fail(d, IHOST_EVALUE, "not a value list (bad first byte)");
            goto fail;
        }
        /* The count: a number, as string.buffer writes a Lua number. */
        double x = -1;
        int ctag = d->p < d->end ? *d->p++ : -1;
        if (ctag == SER_NUM && dec_left(d) >= 8) {
            uint64_t bits = get_u64le(d->p);
            memcpy(&x, &bits, sizeof x);
            d->p += 8;
        } else if (ctag == SER_INT && dec_left(d) >= 4) {
            x = (double)(int32_t)get_u32le(d->p);
            d->p += 4;
        }
        if (!(x >= 0 && x <= (double)dec_left(d)) || x != (double)(size_t)x) {
            dec_fail(d, IHOST_EVALUE,
                     x > (double)dec_left(d) ? "a value count larger than the data"
                                             : "a bad value count");
            goto fail;
        }
        n = (size_t)x;
    }
    for (size_t i = 0; i < n; i++) {
        ihost_value v;
        if (dec_value(d, &v, 0)) {
            char part[48];
            snprintf(part, sizeof part, count == 1 ? "%s" : "%s[%zu]", what, i + 1);
            path_front(&d->path, part);
            goto fail;
        }
        if (results_push(r, v)) {
            if (v.type != TYPE_SKIPPED) value_destroy(&v);
            dec_fail(d, IHOST_EMEMORY, "not enough memory");
            goto fail;
        }
    }
    if (d->p != d->end) {
        dec_fail(d, IHOST_EVALUE, "bytes left over after the values");
        goto fail;
    }
    *out = r;
    return 0;
fail:
    ihost_results_free(r);
    return -1;
}

static int dec_error(dec *d, ihost_error **err)
{
    if (d->kind == IHOST_EMEMORY)
        return fail(err, IHOST_EMEMORY, "not enough memory to decode the values");
    size_t at = (size_t)(d->p - d->start);
    if (d->path.len)
        return fail(err, d->kind, "cannot receive %s at %s (byte %zu)", d->msg, d->path.s, at);
    return fail(err, d->kind, "cannot receive %s (byte %zu)", d->msg, at);
}

static void dec_init(dec *d, const char *bytes, size_t len)
{
    memset(d, 0, sizeof(*d));
    d->start = d->p = (const unsigned char *)bytes;
    d->end = d->p + len;
}

int ihost_decode(const char *bytes, size_t len, ihost_results **out, ihost_error **err)
{
    if (!out) return fail(err, IHOST_EINVAL, "ihost_decode: NULL output");
    *out = NULL;
    if (!bytes && len) return fail(err, IHOST_EINVAL, "ihost_decode: NULL bytes");
    dec d;
    dec_init(&d, bytes, len);
    if (dec_into(&d, -1, "values", out)) return dec_error(&d, err);
    return ok(err);
}

int ihost_decode_value(const char *bytes, size_t len, ihost_results **out, ihost_error **err)
{
    if (!out) return fail(err, IHOST_EINVAL, "ihost_decode_value: NULL output");
    *out = NULL;
    if (!bytes && len) return fail(err, IHOST_EINVAL, "ihost_decode_value: NULL bytes");
    dec d;
    dec_init(&d, bytes, len);
    if (dec_into(&d, 1, "value", out)) return dec_error(&d, err);
    return ok(err);
}

/* ---- outcomes of tasks (lua/isle/wire.lua, wire.outcome) ------------------------- */

static char *dup_field(const ihost_table *t, const char *name)
{
    ihost_value v = ihost_table_getfield(t, name);
    if (v.type != IHOST_TSTRING) return NULL;
    char *s = malloc(v.v.str.len + 1);
    if (s) memcpy(s, v.v.str.ptr, v.v.str.len + 1);
    return s;
}

/* An error envelope: { code, message, traceback, value } (wire.put_error). */
static int envelope_error(const char *p, size_t len, ihost_error **err)
{
    if (!err) {
        /* Only the code is wanted: still decode it to return the right one. */
        ihost_error *e = NULL;
        int kind = envelope_error(p, len, &e);
        ihost_error_free(e);
        return kind;
    }
    dec d;
    dec_init(&d, p, len);
    d.lenient = 1;
    ihost_results *env = NULL;
    if (dec_into(&d, 1, "error", &env)) {
        if (d.kind == IHOST_EMEMORY)
            return fail(err, IHOST_EMEMORY, "not enough memory to read an error");
        return fail(err, IHOST_ERUNTIME, "an error came back that cannot be read: %s", d.msg);
    }
    ihost_value tv = ihost_results_get(env, 0);
    ihost_table *t = tv.type == IHOST_TTABLE ? tv.v.table : NULL;
    ihost_value code = ihost_table_getfield(t, "code");
    const char *code_s = code.type == IHOST_TSTRING ? code.v.str.ptr : "runtime";
    int kind = kind_of_code(code_s);
    int known = strcmp(code_s, CODES[kind]) == 0;
    int has_tb = ihost_table_getfield(t, "traceback").type == IHOST_TSTRING;
    ihost_error *e = calloc(1, sizeof(*e));
    char *message = ihost_table_getfield(t, "message").type == IHOST_TSTRING
        ? dup_field(t, "message")
        : strdup("(no message)");
    char *tb = has_tb ? dup_field(t, "traceback") : NULL;
    char *code_own = known ? NULL : strdup(code_s);
    if (!e || !message || (has_tb && !tb) || (!known && !code_own)) {
        free(e);
        free(message);
        free(tb);
        free(code_own);
        ihost_results_free(env);
        *err = &nomem_error;
        return IHOST_EMEMORY;
    }
    e->kind = kind;
    e->code = known ? CODES[kind] : code_own;
    e->code_own = code_own;
    e->message = message;
    e->traceback = tb;
    e->holder = env;
    e->value = ihost_table_getfield(t, "value");
    *err = e;
    return kind;
}

static int task_outcome(isle_task *t, ihost_results **results, ihost_error **err)
{
    if (results) *results = NULL;
    int state = isle_task_state(t);
    if (state < ISLE_TASK_DONE) return fail(err, IHOST_EINVAL, "the task has not ended");
    size_t len = 0;
    const char *p = isle_task_result(t, &len);
    if (state == ISLE_TASK_DONE) {
        ihost_results *r = NULL;
        dec d;
        dec_init(&d, p, len);
        if (dec_into(&d, -1, "results", &r)) return dec_error(&d, err);
        if (results) *results = r;
        else ihost_results_free(r);
        return ok(err);
    }
    if (len > 0 && p[0] == ISLE_WIRE_ERROR) return envelope_error(p + 1, len - 1, err);
    if (len > 0 && p[0] == ISLE_WIRE_CORE)
        return fail(err, IHOST_ERUNTIME, "%.*s", (int)(len - 1), p + 1);
    /* Ended by the core itself, with no payload. */
    if (state == ISLE_TASK_CANCELLED) {
        if (isle_task_cancelled(t) == ISLE_CANCEL_TIMEOUT)
            return fail(err, IHOST_ETIMEOUT, "the task ran out of time before it ran");
        return fail(err, IHOST_ECANCELLED, "the task was cancelled before it ran");
    }
    if (state == ISLE_TASK_CLOSED)
        return fail(err, IHOST_ECLOSED, "the isle closed before the task ran");
    return fail(err, IHOST_EMEMORY, "not enough memory to store the result");
}

/* ---- set-up: where the isle finds isle's Lua modules ------------------------------ */

/* This library's file as the dynamic loader knows it ("" if unknown). */
static const char *library_file(void)
{
    Dl_info info;
    return dladdr((void *)ihost_spawn, &info) && info.dli_fname ? info.dli_fname : "";
}

/* The directory of this library, for the default paths: a checkout has
 * build/libisle.so next to lua/ and ffi/. */
static char *library_dir(void)
{
    const char *file = library_file();
    const char *slash = strrchr(file, '/');
    size_t n = slash ? (size_t)(slash - file) : 1;
    char *dir = malloc(n + 1);
    if (!dir) return NULL;
    memcpy(dir, slash ? file : ".", n);
    dir[n] = '\0';
    return dir;
}

/* `own` + ";" + the path LuaJIT itself would use: the environment
 * variable with ";;" standing for LuaJIT's default, or the default. */
static char *search_path(const char *own, const char *env_name, const char *deflt)
{
    const char *env = getenv(env_name);
    const char *base = env ? env : deflt;
    size_t extra = 0;
    for (const char *s = base; (s = strstr(s, ";;")); s += 2) extra += strlen(deflt) + 1;
    char *out = malloc(strlen(own) + 1 + strlen(base) + extra + 1);
    if (!out) return NULL;
    char *w = out + sprintf(out, "%s;", own);
    for (const char *s = base; *s;) {
        if (s[0] == ';' && s[1] == ';') {
            w += sprintf(w, ";%s;", deflt);
            s += 2;
        } else {
            *w++ = *s++;
        }
    }
    *w = '\0';
    return out;
}

static int default_paths(char **path, char **cpath)
{
    *path = *cpath = NULL;
    char *dir = library_dir();
    if (!dir) return IHOST_EMEMORY;
    size_t n = strlen(dir) * 3 + 64;
    char *own = malloc(n);
    if (own) {
        snprintf(own, n, "%s/../lua/?.lua;%s/../lua/?/init.lua;%s/../ffi/?.lua", dir, dir, dir);
        *path = search_path(own, "LUA_PATH", LUA_PATH_DEFAULT);
        snprintf(own, n, "%s/?.so", dir);
        *cpath = search_path(own, "LUA_CPATH", LUA_CPATH_DEFAULT);
    }
    free(own);
    free(dir);
    if (*path && *cpath) return IHOST_OK;
    free(*path);
    free(*cpath);
    *path = *cpath = NULL;
    return IHOST_EMEMORY;
}

/* isle's own modules as bytecode for every isle (csrc/preload.c), made
 * once per process in a scratch state by isle.lua itself, as a Lua host
 * does on its first spawn. Isles then start without parsing isle's source,
 * and load its modules through the guarded loader (worker.lua). */
static pthread_mutex_t preload_mu = PTHREAD_MUTEX_INITIALIZER;

static int preload(const char *path, const char *cpath, ihost_error **err)
{
    if (isle_preload_count() > 0) return IHOST_OK;
    int rc = IHOST_OK;
    pthread_mutex_lock(&preload_mu);
    if (isle_preload_count() == 0) {
        lua_State *L = luaL_newstate();
        if (!L) {
            rc = fail(err, IHOST_EMEMORY, "cannot create a Lua state: not enough memory");
        } else {
            luaL_openlibs(L);
            lua_getglobal(L, "package");
            lua_pushstring(L, path);
            lua_setfield(L, -2, "path");
            lua_pushstring(L, cpath);
            lua_setfield(L, -2, "cpath");
            lua_pop(L, 1);
            /* The FFI side loads this very copy, as in an isle (isle.c). */
            const char *file = library_file();
            if (file[0]) {
                lua_pushstring(L, file);
                lua_setfield(L, LUA_REGISTRYINDEX, "isle.library");
            }
            if (luaL_loadstring(L, "require('isle')._preload()") || lua_pcall(L, 0, 0, 0)) {
                const char *msg = lua_tostring(L, -1);
                rc =
                    fail(err, IHOST_ERUNTIME,
                         "cannot load isle's Lua modules (set ihost_options.path, or LUA_PATH): %s",
                         msg ? msg : "(no message)");
            }
            lua_close(L);
        }
    }
    pthread_mutex_unlock(&preload_mu);
    return rc;
}

/* ---- isles ---------------------------------------------------------------------------- */

struct ihost_isle {
    isle *core;
};

struct ihost_task {
    isle_task *t;
};

static const char *const LIB_NAMES[] = {/* lua/isle/libs.lua: OPTIONAL and ALWAYS */
                                        "string",  "table",     "math", "io",  "os",
                                        "debug",   "bit",       "jit",  "ffi", "base",
                                        "package", "coroutine", NULL};

static int known_lib(const char *name)
{
    for (int i = 0; LIB_NAMES[i]; i++)
        if (strcmp(name, LIB_NAMES[i]) == 0) return 1;
    return 0;
}

/* The boot bytes isle.spawn writes (lua/isle.lua): the spec table, then the
 * init arguments as a value list. */
static int encode_boot(const char *init, const ihost_options *o, enc *e, ihost_error **err)
{
    ihost_table *spec = ihost_table_new();
    if (!spec) return fail(err, IHOST_EMEMORY, "not enough memory");
    ihost_table *names = NULL;
    int rc = IHOST_OK;
    if (o->libs == IHOST_LIBS_LIST) {
        names = ihost_table_new();
        rc = names ? IHOST_OK : IHOST_EMEMORY;
        for (size_t i = 0; !rc && o->lib_names && o->lib_names[i]; i++)
            rc = ihost_table_push(names, ihost_string(o->lib_names[i]));
        if (!rc) rc = ihost_table_setfield(spec, "libs", ihost_tablev(names));
        if (!rc) names = NULL; /* the spec has it */
    } else {
        rc = ihost_table_setfield(spec, "libs", ihost_boolean(o->libs == IHOST_LIBS_ALL));
    }
    int instrument = !o->no_instrument;
    if (!rc)
        rc = ihost_table_setfield(spec, "instrument_loads",
                                  ihost_boolean(instrument && !o->no_instrument_loads));
    if (!rc && init) rc = ihost_table_setfield(spec, "init_code", ihost_string(init));
    if (!rc && init) rc = ihost_table_setfield(spec, "init_instrument", ihost_boolean(instrument));
    ihost_table_free(names);
    if (rc) {
        ihost_table_free(spec);
        return fail(err, IHOST_EMEMORY, "not enough memory");
    }
    ihost_value sv = ihost_tablev(spec);
    int bad = enc_value(e, &sv, 0) || enc_list(e, "args", o->args, o->nargs);
    ihost_table_free(spec);
    return bad ? enc_error(e, err) : IHOST_OK;
}

static int check_options(const char *init, const ihost_options *o, ihost_error **err)
{
    if (o->name && !o->name[0])
        return fail(err, IHOST_EINVAL, "ihost_spawn: the name must not be empty");
    if (o->capacity > ((size_t)1 << 31))
        return fail(err, IHOST_EINVAL, "ihost_spawn: capacity %zu is larger than 2^31",
                    o->capacity);
    if (o->libs < IHOST_LIBS_ALL || o->libs > IHOST_LIBS_LIST)
        return fail(err, IHOST_EINVAL,
                    "ihost_spawn: libs must be IHOST_LIBS_ALL, _BASE or _LIST (got %d)", o->libs);
    for (size_t i = 0; o->libs == IHOST_LIBS_LIST && o->lib_names && o->lib_names[i]; i++)
        if (!known_lib(o->lib_names[i]))
            return fail(err, IHOST_EINVAL, "ihost_spawn: unknown library '%s' in lib_names",
                        o->lib_names[i]);
    if (init && strlen(init) > IHOST_MAX_STRING)
        return fail(err, IHOST_EVALUE, "ihost_spawn: the init chunk is too long");
    return IHOST_OK;
}

int ihost_spawn(const char *init_source, const ihost_options *opts, ihost_isle **out,
                ihost_error **err)
{
    static const ihost_options defaults;
    if (!out) return fail(err, IHOST_EINVAL, "ihost_spawn: NULL output");
    *out = NULL;
    const ihost_options *o = opts ? opts : &defaults;
    int rc = check_options(init_source, o, err);
    if (rc) return rc;
    char *dpath = NULL, *dcpath = NULL;
    enc e = {0};
    ihost_isle *h = NULL;
    if ((!o->path || !o->cpath) && default_paths(&dpath, &dcpath)) {
        rc = fail(err, IHOST_EMEMORY, "not enough memory");
        goto done;
    }
    const char *path = o->path ? o->path : dpath, *cpath = o->cpath ? o->cpath : dcpath;
    if ((rc = preload(path, cpath, err))) goto done;
    if ((rc = encode_boot(init_source, o, &e, err))) goto done;
    h = calloc(1, sizeof(*h));
    if (!h) {
        rc = fail(err, IHOST_EMEMORY, "not enough memory");
        goto done;
    }
    isle_config cfg = {0};
    cfg.name = o->name;
    cfg.capacity = o->capacity ? o->capacity : 1024;
    cfg.path = path;
    cfg.cpath = cpath;
    cfg.boot = e.p;
    cfg.boot_len = e.len;
    cfg.instrument = !o->no_instrument;
    int why = ISLE_OK;
    h->core = isle_spawn(&cfg, &why);
    if (!h->core) {
        rc = why == ISLE_EINVAL
            ? fail(err, IHOST_EINVAL, "ihost_spawn: the name '%s' is in use by a live isle",
                   o->name)
            : fail(err, IHOST_EMEMORY, "cannot start an isle (out of memory or threads)");
        goto done;
    }
    isle_task *init = isle_init_task(h->core);
    isle_task_wait(init, -1);
    if (isle_task_state(init) != ISLE_TASK_DONE) {
        rc = task_outcome(init, NULL, err);
        if (rc == IHOST_OK) rc = fail(err, IHOST_ERUNTIME, "the isle's init failed");
        isle_close(h->core, 1);
        isle_release(h->core);
        h->core = NULL;
        goto done;
    }
    *out = h;
    h = NULL;
    rc = ok(err);
done:
    free(h);
    free(e.p);
    free(dpath);
    free(dcpath);
    return rc;
}

int64_t ihost_id(const ihost_isle *h) { return h ? isle_id(h->core) : 0; }
isle *ihost_core(ihost_isle *h) { return h ? h->core : NULL; }

static int closed_error(ihost_isle *h, ihost_error **err)
{
    return fail(err, IHOST_ECLOSED, "isle %lld is closed", (long long)isle_id(h->core));
}

/* Infinite or negative: no limit (-1), as the core's waits take it. */
static double limit_of(double timeout) { return timeout < 0 || isinf(timeout) ? -1 : timeout; }

/* Encodes and queues one message: `target` then the argument list.
 * wait: seconds to wait for mailbox room (< 0 for ever, 0 not at all).
 * `task` NULL: one-way. `timeout` >= 0: the task is cancelled (with the
 * timeout reason) that long from now unless it has ended. */
static int send(ihost_isle *h, int kind, const char *fname, const char *target,
                const ihost_value *args, size_t nargs, double wait, double timeout,
                isle_task **task, ihost_error **err)
{
    if (task) *task = NULL;
    if (!h) return fail(err, IHOST_EINVAL, "%s: NULL isle", fname);
    if (!target)
        return fail(err, IHOST_EINVAL, "%s: NULL %s", fname, kind == KIND_EVAL ? "source" : "name");
    if (timeout != timeout) return fail(err, IHOST_EINVAL, "%s: the timeout is NaN", fname);
    if (isle_is_closed(h->core)) return closed_error(h, err);
    enc e = {0};
    if (enc_str(&e, target, strlen(target)) || enc_list(&e, "args", args, nargs))
        return enc_error(&e, err);
    isle_task *t = NULL;
    isle_msg *m = NULL;
    int rc;
    if (task) {
        t = isle_task_new();
        if (!t) goto nomem;
        timeout = limit_of(timeout);
        if (timeout >= 0 && isle_task_expire_at(t, isle_now() + timeout) != ISLE_OK) goto nomem;
    }
    m = isle_msg_new(kind, t, e.p, e.len);
    if (!m) goto nomem;
    if (kind == KIND_EVAL && isle_instrument(h->core)) m->flags = FLAG_INSTRUMENT;
    free(e.p);
    e.p = NULL;
    rc = isle_mbox_push(isle_mbox_of(h->core), m, wait);
    if (rc != ISLE_OK) {
        isle_msg_free(m);
        isle_task_release(t);
        if (rc == ISLE_EBUSY)
            return fail(err, IHOST_EBUSY, "the mailbox of isle %lld is full",
                        (long long)isle_id(h->core));
        if (rc == ISLE_ENOMEM) return fail(err, IHOST_EMEMORY, "not enough memory");
        return closed_error(h, err);
    }
    if (task) *task = t;
    return ok(err);
nomem:
    free(e.p);
    isle_task_release(t);
    return fail(err, IHOST_EMEMORY, "not enough memory to send a message");
}

static int call(ihost_isle *h, int kind, const char *fname, const char *target,
                const ihost_value *args, size_t nargs, double timeout, ihost_results **results,
                ihost_error **err)
{
    if (results) *results = NULL;
    isle_task *t;
    double start = isle_now();
    int rc = send(h, kind, fname, target, args, nargs, -1, timeout, &t, err);
    if (rc) return rc;
    double limit = limit_of(timeout);
    if (limit >= 0) {
        limit -= isle_now() - start; /* waiting for room counts */
        if (limit < 0) limit = 0;
    }
    if (!isle_task_wait(t, limit)) {
        /* The work ends at its next checkpoint (or when a C call it is in
         * returns); the caller is not kept waiting for that. */
        isle_task_cancel_reason(t, ISLE_CANCEL_TIMEOUT);
        isle_task_release(t);
        return fail(err, IHOST_ETIMEOUT, "%s did not end within %g s (it was cancelled)",
                    kind == KIND_EVAL ? "the chunk" : target, timeout);
    }
    rc = task_outcome(t, results, err);
    isle_task_release(t);
    return rc;
}

int ihost_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
               double timeout, ihost_results **results, ihost_error **err)
{
    return call(h, KIND_CALL, "ihost_call", name, args, nargs, timeout, results, err);
}

int ihost_eval(ihost_isle *h, const char *source, const ihost_value *args, size_t nargs,
               double timeout, ihost_results **results, ihost_error **err)
{
    return call(h, KIND_EVAL, "ihost_eval", source, args, nargs, timeout, results, err);
}

int ihost_post(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
               ihost_error **err)
{
    return send(h, KIND_POST, "ihost_post", name, args, nargs, -1, -1, NULL, err);
}

int ihost_try_post(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                   ihost_error **err)
{
    return send(h, KIND_POST, "ihost_try_post", name, args, nargs, 0, -1, NULL, err);
}

/* ---- tasks ------------------------------------------------------------------------------ */

static int spawn_task(ihost_isle *h, int kind, const char *fname, const char *target,
                      const ihost_value *args, size_t nargs, double wait, double timeout,
                      ihost_task **out, ihost_error **err)
{
    if (!out) return fail(err, IHOST_EINVAL, "%s: NULL output", fname);
    *out = NULL;
    ihost_task *task = malloc(sizeof(*task));
    if (!task) return fail(err, IHOST_EMEMORY, "not enough memory");
    int rc = send(h, kind, fname, target, args, nargs, wait, timeout, &task->t, err);
    if (rc) {
        free(task);
        return rc;
    }
    *out = task;
    return IHOST_OK;
}

int ihost_spawn_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                     double timeout, ihost_task **out, ihost_error **err)
{
    return spawn_task(h, KIND_CALL, "ihost_spawn_call", name, args, nargs, -1, timeout, out, err);
}

int ihost_try_spawn_call(ihost_isle *h, const char *name, const ihost_value *args, size_t nargs,
                         double timeout, ihost_task **out, ihost_error **err)
{
    return spawn_task(h, KIND_CALL, "ihost_try_spawn_call", name, args, nargs, 0, timeout, out,
                      err);
}

int ihost_spawn_eval(ihost_isle *h, const char *source, const ihost_value *args, size_t nargs,
                     double timeout, ihost_task **out, ihost_error **err)
{
    return spawn_task(h, KIND_EVAL, "ihost_spawn_eval", source, args, nargs, -1, timeout, out, err);
}

int ihost_task_state(const ihost_task *t) { return t ? isle_task_state(t->t) : IHOST_CLOSED; }
int ihost_task_done(const ihost_task *t) { return ihost_task_state(t) >= IHOST_DONE; }

int ihost_task_wait(ihost_task *t, double timeout)
{
    if (!t || timeout != timeout) return IHOST_EINVAL;
    return isle_task_wait(t->t, limit_of(timeout)) ? IHOST_OK : IHOST_ETIMEOUT;
}

void ihost_task_cancel(ihost_task *t)
{
    if (t) isle_task_cancel(t->t);
}

int ihost_task_results(ihost_task *t, ihost_results **results, ihost_error **err)
{
    if (results) *results = NULL;
    if (!t) return fail(err, IHOST_EINVAL, "ihost_task_results: NULL task");
    return task_outcome(t->t, results, err);
}

void ihost_task_free(ihost_task *t)
{
    if (!t) return;
    isle_task_release(t->t);
    free(t);
}

/* ---- closing ------------------------------------------------------------------------------ */

void ihost_stop(ihost_isle *h, int cancel)
{
    if (h) isle_stop(h->core, cancel);
}

void ihost_close(ihost_isle *h, int cancel)
{
    if (!h) return;
    isle_close(h->core, cancel);
    isle_release(h->core);
    free(h);
}
