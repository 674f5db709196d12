/* buf.c - shared buffers: reference-counted C memory that every state it is
 * passed to sees as the same pointer.
 *
 * A buffer's lifetime is the one of a task slot, its `anchor`
 * (isle_task_set_owner), as a channel's is (chan.c): it travels in a
 * message's refs exactly like a token, so a message, result or boot that
 * carries it holds a reference until it is freed, read or not, and each
 * state's object takes one of its own. isle_buf_retain/release are the
 * anchor's.
 *
 * The word just below the bytes (`data`) points back at the header: a state hands its typed
 * pointer to ffi.gc with isle_buf_release_data as the finalizer, so the
 * pointer itself holds the state's reference and no Lua closure is needed.
 * Nothing here synchronises access to the bytes: that is the users' business
 * (the isle_atomic_* helpers below are for that).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct isle_buf {
    isle_task *anchor;            /* holds the buffer's references */
    void *block;                  /* the allocation that holds the bytes */
    void *data;                   /* size bytes, `align`-aligned, inside `block` */
    size_t size;                  /* bytes */
    size_t elem_size;             /* bytes per element where it was made */
    size_t count;                 /* elements */
    isle_mem *mem;                /* the creator's account, charged `size` (isle_buf_charge) */
    char type[ISLE_BUF_TYPE_MAX]; /* the C type of an element, by name */
};

static atomic_int live_bufs;

int isle_buf_live_count(void) { return atomic_load_explicit(&live_bufs, memory_order_relaxed); }

/* The anchor's last reference went: no state, message or result holds it. */
static void buf_free(void *arg)
{
    isle_buf *b = arg;
    isle_mem_let_go(&b->mem, b->size);
    free(b->block);
    free(b);
    atomic_fetch_sub_explicit(&live_bufs, 1, memory_order_relaxed);
}

isle_buf *isle_buf_new(const char *type, size_t elem_size, size_t count, size_t align)
{
    if (!type || !*type || strlen(type) >= ISLE_BUF_TYPE_MAX) return NULL;
    if (align < 16) align = 16;
    if ((align & (align - 1)) || align > 4096) return NULL;
    /* Room for the back-pointer below the bytes and for aligning them. */
    size_t slack = sizeof(isle_buf *) + align - 1;
    if (elem_size == 0 || count == 0 || count > (SIZE_MAX - slack) / elem_size) return NULL;
    size_t size = elem_size * count;
    isle_buf *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    /* calloc: a large block comes from fresh zero pages, which cost no
     * resident memory until written (a 64 MB buffer is not touched here). */
    b->block = calloc(1, size + slack);
    if (!b->block) goto fail_block;
    b->anchor = isle_task_new();
    if (!b->anchor) goto fail_anchor;
    /* The first aligned address past the back-pointer, as an offset into
     * the block (pointer arithmetic, not an integer made into a pointer). */
    uintptr_t at = (uintptr_t)b->block + sizeof(isle_buf *);
    size_t pad = (size_t)((align - at % align) % align);
    b->data = (char *)b->block + sizeof(isle_buf *) + pad;
    ((isle_buf **)b->data)[-1] = b;
    b->size = size;
    b->elem_size = elem_size;
    b->count = count;
    memcpy(b->type, type, strlen(type) + 1);
    atomic_fetch_add_explicit(&live_bufs, 1, memory_order_relaxed);
    isle_task_set_owner(b->anchor, buf_free, b);
    return b;
fail_anchor:
    free(b->block);
fail_block:
    free(b);
    return NULL;
}

int isle_buf_charge(isle_buf *b, isle_mem *a) { return isle_mem_hold(&b->mem, a, b->size); }

void isle_buf_retain(isle_buf *b) { isle_task_retain(b->anchor); }

void isle_buf_release(isle_buf *b)
{
    if (b) isle_task_release(b->anchor);
}

void isle_buf_release_data(void *data)
{
    if (data) isle_buf_release(((isle_buf **)data)[-1]);
}

isle_task *isle_buf_ref(isle_buf *b) { return b->anchor; }

isle_buf *isle_buf_of_ref(isle_task *t)
{
    isle_buf *b = isle_task_owner(t, buf_free);
    if (b) isle_buf_retain(b);
    return b;
}

void *isle_buf_data(isle_buf *b) { return b->data; }
size_t isle_buf_size(const isle_buf *b) { return b->size; }
size_t isle_buf_count(const isle_buf *b) { return b->count; }
size_t isle_buf_elem_size(const isle_buf *b) { return b->elem_size; }
const char *isle_buf_type(const isle_buf *b) { return b->type; }

/* ---- atomics on shared memory ----------------------------------------------
 * GCC's __atomic builtins work on plain integers, which is what a buffer
 * holds (C11's atomic_* need _Atomic objects); sequentially consistent, so
 * they also order the plain reads and writes around them. */
int32_t isle_atomic_add32(int32_t *p, int32_t delta)
{
    return __atomic_fetch_add(p, delta, __ATOMIC_SEQ_CST);
}
int64_t isle_atomic_add64(int64_t *p, int64_t delta)
{
    return __atomic_fetch_add(p, delta, __ATOMIC_SEQ_CST);
}
int32_t isle_atomic_load32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
int64_t isle_atomic_load64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
void isle_atomic_store32(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
void isle_atomic_store64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

int isle_atomic_cas32(int32_t *p, int32_t expected, int32_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

int isle_atomic_cas64(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
