/* msg.c - byte messages: one allocation holding the header and the payload. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

isle_msg *isle_msg_new(int32_t kind, isle_task *task, const char *data, size_t len)
{
    if (len > SIZE_MAX - sizeof(isle_msg) - 1) return NULL;
    isle_msg *m = malloc(sizeof(*m) + len + 1);
    if (!m) return NULL;
    m->next = NULL;
    m->task = task;
    m->kind = kind;
    m->flags = 0;
    m->len = len;
    m->data = (char *)(m + 1);
    if (len) memcpy(m->data, data, len);
    m->data[len] = '\0';
    if (task) isle_task_retain(task);
    return m;
}

void isle_msg_free(isle_msg *m)
{
    if (!m) return;
    isle_task_release(m->task);
    free(m);
}

void isle_msg_free_list(isle_msg *head)
{
    while (head) {
        isle_msg *next = head->next;
        isle_msg_free(head);
        head = next;
    }
}
