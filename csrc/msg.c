/* msg.c - byte messages: one allocation holding the header, the task
 * references the payload carries and the payload.
 *
 * The references belong to the message, not to whoever reads it: a token
 * written into a payload is only an index into `refs`, so a message freed
 * unread (its mailbox released, a push that failed, a result nobody
 * decoded) gives back every reference it was made with, and a reader that
 * keeps a token takes a reference of its own. A message (or result) made
 * for a capped isle is charged to its account, the whole allocation, until
 * it is freed (isle_msg_charge, mem.c): header, references and payload, as
 * asked for, also when the message sits in a larger cached block. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(isle_msg) % _Alignof(isle_task *) == 0,
               "the references that follow the header must be aligned");

/* Fills the header of `m`, its payload at `payload` (room for len + 1
 * bytes), `nrefs` references left for the caller to fill. */
static inline isle_msg *msg_fill(isle_msg *m, char *payload, int32_t kind, isle_task *task,
                                 const char *data, size_t len, size_t nrefs)
{
    m->next = NULL;
    m->task = task;
    m->kind = kind;
    m->flags = 0;
    m->len = len;
    m->data = payload;
    m->nrefs = nrefs;
    m->refs = NULL;
    m->mem = NULL;
    if (len) memcpy(m->data, data, len);
    m->data[len] = '\0';
    if (task) isle_task_retain(task);
    return m;
}

isle_msg *isle_msg_fill_plain(isle_msg *m, char *payload, const char *data, size_t len)
{
    return msg_fill(m, payload, 0, NULL, data, len, 0);
}

/* The header and the payload, with room for `nrefs` references after the
 * header (left for the caller to fill). Inlined into both constructors, so
 * that a message without references costs what it did before they existed. */
static inline isle_msg *msg_alloc(int32_t kind, isle_task *task, const char *data, size_t len,
                                  size_t nrefs)
{
    /* nrefs is bounded by the callers, so only `len` can overflow the size. */
    size_t head = sizeof(isle_msg) + nrefs * sizeof(isle_task *);
    if (len > SIZE_MAX - head - 1) return NULL;
    /* A small message takes a whole cached block (cache.c): made on one
     * thread and freed on another, it would cost malloc its slowest paths. */
    size_t size = head + len + 1;
    isle_msg *m;
    if (size <= ISLE_MSG_BLOCK) {
        m = isle_cache_get(ISLE_CACHE_MSG);
        if (!m) m = malloc(ISLE_MSG_BLOCK);
    } else {
        m = malloc(size);
    }
    if (!m) return NULL;
    return msg_fill(m, (char *)m + head, kind, task, data, len, nrefs);
}

isle_msg *isle_msg_new(int32_t kind, isle_task *task, const char *data, size_t len)
{
    return msg_alloc(kind, task, data, len, 0);
}

isle_msg *isle_msg_new_refs(int32_t kind, isle_task *task, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs)
{
    if (nrefs > ISLE_MSG_REFS_MAX) return NULL;
    isle_msg *m = msg_alloc(kind, task, data, len, nrefs);
    if (!m || !nrefs) return m;
    /* Right after the header, which is a multiple of the pointer size. */
    m->refs = (isle_task **)(m + 1);
    for (size_t i = 0; i < nrefs; i++) {
        m->refs[i] = refs[i];
        isle_task_retain(refs[i]);
    }
    return m;
}

/* The whole allocation: header, references and payload (msg_alloc). */
static size_t msg_size(const isle_msg *m) { return (size_t)(m->data - (char *)m) + m->len + 1; }

int isle_msg_charge(isle_msg *m, isle_mem *a) { return isle_mem_hold(&m->mem, a, msg_size(m)); }

void isle_msg_free(isle_msg *m)
{
    if (!m) return;
    isle_task_release(m->task);
    isle_mem_let_go(&m->mem, msg_size(m));
    /* A reference may be the last one of a token whose slot holds a result
     * with references of its own, or of a channel (chan.c) whose queued
     * messages carry more: those free in turn, never back into this message
     * (it is in no queue any more, and a token ends without a result). A
     * channel queued inside itself is never freed (docs/channels.md). */
    for (size_t i = 0, n = m->nrefs; i < n; i++) isle_task_release(m->refs[i]);
    /* By size, as msg_alloc chose: a small one is a whole block. */
    if (msg_size(m) > ISLE_MSG_BLOCK || !isle_cache_put(ISLE_CACHE_MSG, m)) free(m);
}

void isle_msg_free_list(isle_msg *head)
{
    while (head) {
        isle_msg *next = head->next;
        isle_msg_free(head);
        head = next;
    }
}
