/* sig.c - per-state signal blocks and the process-wide table of interrupt ids.
 *
 * A signal block belongs to one Lua state. Other threads never touch the
 * state: they set a mode on an id and raise the block's flag; the state's
 * own checkpoints and hook see the flag and ask which of its ids fired.
 * The id table has its own lock (taken after a task lock, never before).
 */
#include "internal.h"

#include <stdlib.h>

typedef struct isle_intr {
    int64_t id;
    atomic_int mode;
    isle_sig_impl *sig;
    struct isle_intr *hnext; /* hash chain */
    struct isle_intr *snext; /* the owning block's list */
} isle_intr;

#define INTR_BUCKETS 1024
static pthread_mutex_t intr_lock = PTHREAD_MUTEX_INITIALIZER;
static isle_intr *intr_table[INTR_BUCKETS];
static int64_t intr_next_id = 1;

static isle_sig_impl *impl(isle_sig *s) { return (isle_sig_impl *)s; }

isle_sig *isle_sig_new(void)
{
    isle_sig_impl *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    if (pthread_mutex_init(&s->mu, NULL)) {
        free(s);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    return &s->pub;
}

void isle_sig_retain(isle_sig *s)
{
    atomic_fetch_add_explicit(&impl(s)->refs, 1, memory_order_relaxed);
}

void isle_sig_attach_mbox(isle_sig *s, isle_mbox *mb)
{
    isle_mbox_retain(mb);
    isle_mbox *old = impl(s)->mbox;
    impl(s)->mbox = mb;
    isle_mbox_release(old);
}

static void unlink_locked(isle_intr *e)
{
    isle_intr **pp = &intr_table[(uint64_t)e->id % INTR_BUCKETS];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
}

void isle_sig_drop_ids(isle_sig *s)
{
    isle_sig_impl *si = impl(s);
    pthread_mutex_lock(&intr_lock);
    for (isle_intr *e = si->ids, *next; e; e = next) {
        next = e->snext;
        unlink_locked(e);
        free(e);
    }
    si->ids = NULL;
    atomic_store(&si->pending, 0);
    pthread_mutex_unlock(&intr_lock);
}

void isle_sig_release(isle_sig *s)
{
    if (!s) return;
    isle_sig_impl *si = impl(s);
    if (atomic_fetch_sub_explicit(&si->refs, 1, memory_order_acq_rel) != 1) return;
    isle_sig_drop_ids(s);
    isle_mbox_release(si->mbox);
    pthread_mutex_destroy(&si->mu);
    free(si);
}

void isle_sig_raise(isle_sig *s)
{
    __atomic_store_n(&s->flag, 1, __ATOMIC_RELEASE);
    if (impl(s)->mbox) isle_mbox_wake(impl(s)->mbox);
}

int isle_sig_pending(isle_sig *s) { return atomic_load(&impl(s)->pending); }

void isle_sig_lower(isle_sig *s) { __atomic_store_n(&s->flag, 0, __ATOMIC_RELEASE); }

static isle_intr *find_locked(int64_t id)
{
    for (isle_intr *e = intr_table[(uint64_t)id % INTR_BUCKETS]; e; e = e->hnext)
        if (e->id == id) return e;
    return NULL;
}

int64_t isle_intr_new(isle_sig *s)
{
    isle_intr *e = calloc(1, sizeof(*e));
    if (!e) return 0;
    e->sig = impl(s);
    pthread_mutex_lock(&intr_lock);
    e->id = intr_next_id++;
    isle_intr **bucket = &intr_table[(uint64_t)e->id % INTR_BUCKETS];
    e->hnext = *bucket;
    *bucket = e;
    e->snext = e->sig->ids;
    e->sig->ids = e;
    pthread_mutex_unlock(&intr_lock);
    return e->id;
}

void isle_intr_free(int64_t id)
{
    pthread_mutex_lock(&intr_lock);
    isle_intr *e = find_locked(id);
    if (e) {
        unlink_locked(e);
        if (atomic_load(&e->mode) != ISLE_INTR_CLEAR) atomic_fetch_sub(&e->sig->pending, 1);
        isle_intr **pp = &e->sig->ids;
        while (*pp != e) pp = &(*pp)->snext;
        *pp = e->snext;
        free(e);
    }
    pthread_mutex_unlock(&intr_lock);
}

int isle_intr_set(int64_t id, int mode)
{
    if (mode < ISLE_INTR_CLEAR || mode > ISLE_INTR_ALWAYS) return ISLE_EINVAL;
    pthread_mutex_lock(&intr_lock);
    isle_intr *e = find_locked(id);
    if (e) {
        int old = atomic_exchange(&e->mode, mode);
        if (old == ISLE_INTR_CLEAR && mode != ISLE_INTR_CLEAR)
            atomic_fetch_add(&e->sig->pending, 1);
        if (old != ISLE_INTR_CLEAR && mode == ISLE_INTR_CLEAR)
            atomic_fetch_sub(&e->sig->pending, 1);
        /* Raising under the table lock keeps the block alive meanwhile. */
        if (mode != ISLE_INTR_CLEAR) isle_sig_raise(&e->sig->pub);
    }
    pthread_mutex_unlock(&intr_lock);
    return e ? ISLE_OK : ISLE_ENOENT;
}

int isle_intr_take(int64_t id)
{
    pthread_mutex_lock(&intr_lock);
    isle_intr *e = find_locked(id);
    int mode = -1;
    if (e) {
        mode = atomic_load(&e->mode);
        if (mode == ISLE_INTR_ONCE) {
            atomic_store(&e->mode, ISLE_INTR_CLEAR);
            atomic_fetch_sub(&e->sig->pending, 1);
        }
    }
    pthread_mutex_unlock(&intr_lock);
    return mode;
}

void isle_intr_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) pthread_mutex_lock(&intr_lock);
    else pthread_mutex_unlock(&intr_lock); /* the child keeps the ids: unknown states never fire */
}
