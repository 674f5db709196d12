/* test_msg.c - byte messages: payload copy, terminator, task references
 * (the completion slot and the slots the payload carries). */
#include "check.h"
#include "isle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_copy(void)
{
    char buf[] = "hello\0world";
    isle_msg *m = isle_msg_new(42, NULL, buf, sizeof buf - 1);
    CHECK(m != NULL);
    CHECK_EQ(m->kind, 42);
    CHECK_EQ(m->flags, 0);
    CHECK(m->next == NULL);
    CHECK(m->task == NULL);
    CHECK_EQ(m->len, sizeof buf - 1);
    CHECK(m->data != buf);
    buf[0] = 'J';                       /* the message owns a copy */
    CHECK(memcmp(m->data, "hello\0world", 11) == 0);
    CHECK(m->data[11] == '\0');         /* always terminated */
    isle_msg_free(m);

    m = isle_msg_new(-1, NULL, NULL, 0);
    CHECK(m != NULL);
    CHECK_EQ(m->len, 0);
    CHECK(m->data != NULL && m->data[0] == '\0');
    CHECK_EQ(m->kind, -1);
    isle_msg_free(m);
    isle_msg_free(NULL);
    isle_msg_free_list(NULL);

    /* A large payload. */
    size_t n = 1 << 20;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = (char)(i * 31);
    m = isle_msg_new(0, NULL, big, n);
    CHECK(m != NULL && m->len == n && memcmp(m->data, big, n) == 0);
    isle_msg_free(m);
    free(big);

    /* Impossible sizes fail cleanly. */
    CHECK(isle_msg_new(0, NULL, "x", SIZE_MAX) == NULL);
    CHECK(isle_msg_new(0, NULL, "x", SIZE_MAX - 8) == NULL);
}

static void test_task_reference(void)
{
    isle_task *t = isle_task_new();
    isle_msg *m = isle_msg_new(1, t, "x", 1);
    CHECK(m != NULL && m->task == t);
    /* The message keeps the task alive after the caller lets go (ASan
     * reports a use after free otherwise) and lets go of it when freed
     * (LeakSanitizer reports a leak otherwise). */
    isle_task_release(t);
    CHECK_EQ(isle_task_state(m->task), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_complete(m->task, ISLE_TASK_DONE, "ok", 2), 1);
    CHECK_EQ(isle_task_state(m->task), ISLE_TASK_DONE);
    isle_msg_free(m);
}

static void test_free_list(void)
{
    isle_task *t = isle_task_new();
    isle_msg *head = NULL;
    for (int i = 0; i < 10; i++) {
        isle_msg *m = isle_msg_new(i, i % 2 ? t : NULL, "abc", 3);
        m->next = head;
        head = m;
    }
    isle_task_release(t);
    isle_msg_free_list(head);   /* frees all ten and the task's last ref */
}

/* A message carries references to the slots its payload names (tokens):
 * made with one of its own for each, freed letting go of each, so that a
 * message nobody reads gives them all back. */
static void test_carried_refs(void)
{
    int live0 = isle_task_live_count();
    isle_task *a = isle_task_new(), *b = isle_task_new(), *t = isle_task_new();
    CHECK_EQ(isle_task_live_count(), live0 + 3);
    isle_task *refs[] = {a, b, a};             /* one slot may appear twice */
    isle_msg *m = isle_msg_new_refs(7, t, "xyz", 3, refs, 3);
    CHECK(m != NULL);
    CHECK(m->task == t && m->kind == 7 && m->len == 3);
    CHECK_EQ(m->nrefs, 3);
    CHECK(m->refs && m->refs[0] == a && m->refs[1] == b && m->refs[2] == a);
    CHECK(((uintptr_t)m->refs % _Alignof(isle_task *)) == 0);
    CHECK(m->data == (char *)(m->refs + 3));   /* one allocation: refs, then the bytes */
    CHECK(memcmp(m->data, "xyz", 4) == 0);     /* terminated */
    refs[0] = refs[1] = refs[2] = NULL;        /* the message keeps its own copy */
    /* The callers let go: the message alone keeps all three alive. */
    isle_task_release(a);
    isle_task_release(b);
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0 + 3);
    CHECK_EQ(isle_task_state(m->refs[0]), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_cancel(m->refs[1]), ISLE_TASK_QUEUED);
    /* A reader takes references of its own and outlives the message. */
    isle_task *kept = m->refs[1];
    isle_task_retain(kept);
    isle_msg_free(m);                          /* never read: gives every reference back */
    CHECK_EQ(isle_task_live_count(), live0 + 1);
    CHECK_EQ(isle_task_state(kept), ISLE_TASK_CANCELLED);
    isle_task_release(kept);
    CHECK_EQ(isle_task_live_count(), live0);

    /* No references: nothing extra, as from isle_msg_new. */
    m = isle_msg_new_refs(1, NULL, "ab", 2, NULL, 0);
    CHECK(m && m->nrefs == 0 && m->refs == NULL && m->data == (char *)(m + 1));
    isle_msg_free(m);
    m = isle_msg_new(1, NULL, "ab", 2);
    CHECK(m && m->nrefs == 0 && m->refs == NULL);
    isle_msg_free(m);

    /* A free list lets go of the references of every message in it. */
    isle_task *c = isle_task_new();
    isle_msg *head = NULL;
    for (int i = 0; i < 4; i++) {
        isle_msg *x = isle_msg_new_refs(i, NULL, "q", 1, &c, 1);
        x->next = head;
        head = x;
    }
    isle_task_release(c);
    CHECK_EQ(isle_task_live_count(), live0 + 1);
    isle_msg_free_list(head);
    CHECK_EQ(isle_task_live_count(), live0);
}

static void test_refs_bound(void)
{
    enum { MAX = ISLE_MSG_REFS_MAX };
    int live0 = isle_task_live_count();
    isle_task *t = isle_task_new();
    isle_task **refs = malloc((MAX + 1) * sizeof *refs);
    for (size_t i = 0; i <= MAX; i++) refs[i] = t;
    /* Past the bound: refused, retaining nothing. */
    CHECK(isle_msg_new_refs(0, NULL, "x", 1, refs, (size_t)MAX + 1) == NULL);
    CHECK(isle_msg_new_refs(0, NULL, "x", 1, refs, SIZE_MAX) == NULL);
    /* An impossible payload with references: refused, retaining nothing. */
    CHECK(isle_msg_new_refs(0, NULL, "x", SIZE_MAX - 16, refs, 4) == NULL);
    /* At the bound: accepted. */
    isle_msg *m = isle_msg_new_refs(0, NULL, "x", 1, refs, MAX);
    CHECK(m != NULL && m->nrefs == MAX);
    free(refs);
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0 + 1);
    isle_msg_free(m);
    CHECK_EQ(isle_task_live_count(), live0);
}

int main(void)
{
    RUN(test_copy);
    RUN(test_task_reference);
    RUN(test_free_list);
    RUN(test_carried_refs);
    RUN(test_refs_bound);
    return check_done();
}
