/* test_msg.c - byte messages: payload copy, terminator, task references. */
#include "check.h"
#include "isle.h"

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

int main(void)
{
    RUN(test_copy);
    RUN(test_task_reference);
    RUN(test_free_list);
    return check_done();
}
