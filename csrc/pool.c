/* pool.c - pools: one bounded queue of call messages served by N isles.
 *
 * The core keeps only what every state that uses a pool must share: its
 * queue (a channel of the very messages an isle call sends), the signal
 * blocks of its isles (for isle_pool_stats), a name for lookups and the
 * closed flag. Who runs the queue (each pool isle's feeder), how the owner
 * stops the isles and what a message means are the Lua side's
 * (lua/isle/pool.lua, lua/isle/worker.lua).
 *
 * A pool's lifetime is the one of a task slot, its `anchor`, as a
 * channel's is (chan.c): it travels in a message's refs like a token.
 * Lookups: a listed pool is always held by its owner (the owner's
 * reference goes only after isle_pool_close unlists it), so a lookup under
 * the registry lock never finds a pool whose last reference went.
 * Lock order: registry lock -> pool lock -> signal-block lock; the queue's
 * own lock is taken with neither held.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct pool_member {
    isle_sig *sig;   /* retained */
    isle_stats base; /* its counters when it joined: not the pool's */
} pool_member;

struct isle_pool {
    isle_task *anchor; /* holds the pool's references */
    isle_chan *queue;  /* one reference, the pool's */
    int64_t id;
    char *name; /* NULL when unnamed */
    pthread_mutex_t mu;
    pool_member *members; /* (mu) n of cap */
    size_t n, cap;
    int closed;      /* (mu) */
    int listed;      /* (registry lock) */
    isle_pool *next; /* (registry lock) */
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static isle_pool *registry; /* open pools, newest first */
static int64_t next_id = 1; /* (registry lock) */

/* The anchor's last reference went: nobody can reach the pool. */
static void pool_free(void *arg)
{
    isle_pool *p = arg;
    for (size_t k = 0; k < p->n; k++) isle_sig_release(p->members[k].sig);
    free(p->members);
    isle_chan_release(p->queue);
    pthread_mutex_destroy(&p->mu);
    free(p->name);
    free(p);
}

static isle_pool *find_locked(int64_t id, const char *name)
{
    for (isle_pool *p = registry; p; p = p->next) {
        if (name ? (p->name && strcmp(p->name, name) == 0) : p->id == id) return p;
    }
    return NULL;
}

isle_pool *isle_pool_new(size_t capacity, const char *name, int *err)
{
    *err = ISLE_ENOMEM;
    isle_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    if (name && !(p->name = strdup(name))) goto fail_name;
    p->queue = isle_chan_new(capacity);
    if (!p->queue) {
        if (capacity == 0 || capacity > ISLE_CHAN_CAP_MAX) *err = ISLE_EINVAL;
        goto fail_queue;
    }
    if (pthread_mutex_init(&p->mu, NULL)) goto fail_mu;
    p->anchor = isle_task_new();
    if (!p->anchor) goto fail_anchor;
    pthread_mutex_lock(&registry_mu);
    if (name && find_locked(0, name)) {
        pthread_mutex_unlock(&registry_mu);
        *err = ISLE_EINVAL;
        goto fail_listed;
    }
    p->id = next_id++;
    p->listed = 1;
    p->next = registry;
    registry = p;
    pthread_mutex_unlock(&registry_mu);
    isle_task_set_owner(p->anchor, pool_free, p);
    *err = ISLE_OK;
    return p;
fail_listed:
    isle_task_release(p->anchor);
fail_anchor:
    pthread_mutex_destroy(&p->mu);
fail_mu:
    isle_chan_release(p->queue);
fail_queue:
    free(p->name);
fail_name:
    free(p);
    return NULL;
}

int isle_pool_add(isle_pool *p, isle_sig *sig)
{
    int rc = ISLE_OK;
    pthread_mutex_lock(&p->mu);
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        pool_member *m = realloc(p->members, cap * sizeof(*m));
        if (!m) {
            rc = ISLE_ENOMEM;
            goto out;
        }
        p->members = m;
        p->cap = cap;
    }
    pool_member *m = &p->members[p->n];
    memset(&m->base, 0, sizeof m->base);
    isle_sig_stats(sig, &m->base);
    isle_sig_retain(sig);
    m->sig = sig;
    p->n++;
out:
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void isle_pool_retain(isle_pool *p) { isle_task_retain(p->anchor); }

void isle_pool_release(isle_pool *p)
{
    if (p) isle_task_release(p->anchor);
}

isle_task *isle_pool_ref(isle_pool *p) { return p->anchor; }

isle_pool *isle_pool_of_ref(isle_task *t)
{
    isle_pool *p = isle_task_owner(t, pool_free);
    if (p) isle_pool_retain(p);
    return p;
}

isle_chan *isle_pool_queue(isle_pool *p) { return p->queue; }
int64_t isle_pool_id(const isle_pool *p) { return p->id; }
const char *isle_pool_name(const isle_pool *p) { return p->name ? p->name : ""; }

size_t isle_pool_size(isle_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void isle_pool_fork(int phase)
{
    if (phase == ISLE_FORK_PREPARE) {
        pthread_mutex_lock(&registry_mu);
        return;
    }
    if (phase == ISLE_FORK_CHILD) {
        /* The parent's pools belong to the parent (their isles are not
         * here, their locks may be held by threads that are gone): the
         * child forgets them, so a lookup does not find them and their
         * names are free. Unlisted, a close of one (which the Lua side
         * refuses anyway) does not look for it in the list. */
        for (isle_pool *p = registry; p; p = p->next) p->listed = 0;
        registry = NULL;
    }
    pthread_mutex_unlock(&registry_mu);
}

isle_pool *isle_pool_lookup(int64_t id, const char *name)
{
    pthread_mutex_lock(&registry_mu);
    isle_pool *p = find_locked(id, name);
    if (p) isle_pool_retain(p);
    pthread_mutex_unlock(&registry_mu);
    return p;
}

void isle_pool_close(isle_pool *p)
{
    pthread_mutex_lock(&registry_mu);
    if (p->listed) {
        isle_pool **pp = &registry;
        while (*pp != p) pp = &(*pp)->next;
        *pp = p->next;
        p->listed = 0;
    }
    pthread_mutex_unlock(&registry_mu);
    pthread_mutex_lock(&p->mu);
    p->closed = 1;
    pthread_mutex_unlock(&p->mu);
    /* Later submits fail; what is queued stays for the isles to take. */
    isle_chan_close(p->queue);
}

void isle_pool_disown(isle_pool *p)
{
    if (!p) return;
    isle_pool_close(p);
    isle_pool_release(p);
}

int isle_pool_is_closed(isle_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int c = p->closed;
    pthread_mutex_unlock(&p->mu);
    return c;
}

void isle_pool_stats(isle_pool *p, isle_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&p->mu);
    for (size_t k = 0; k < p->n; k++) {
        pool_member *m = &p->members[k];
        isle_stats s;
        memset(&s, 0, sizeof s);
        isle_sig_stats(m->sig, &s);
        out->queued += s.queued - m->base.queued;
        out->running += s.running;
        out->done += s.done - m->base.done;
        out->failed += s.failed - m->base.failed;
        out->cancelled += s.cancelled - m->base.cancelled;
        out->closed += s.closed - m->base.closed;
        if (s.oldest_start > 0 && (out->oldest_start == 0 || s.oldest_start < out->oldest_start)) {
            out->oldest_start = s.oldest_start;
            out->oldest_cancel = s.oldest_cancel;
            memcpy(out->oldest_label, s.oldest_label, sizeof out->oldest_label);
        }
    }
    pthread_mutex_unlock(&p->mu);
    out->queued += (int64_t)isle_chan_len(p->queue);
}
