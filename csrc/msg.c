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
    m->mem = NULL;
    if (len) memcpy(m->data, data, len);
    m->data[len] = '\0';
    if (task) isle_task_retain(task);
    return m;
}

static size_t msg_size(const isle_msg *m) { return sizeof(*m) + m->len + 1; }

int isle_msg_charge(isle_msg *m, isle_mem *a)
{
    if (!a || !isle_mem_limit(a) || m->mem) return 1;
    if (!isle_mem_charge(a, msg_size(m))) return 0;
    isle_mem_retain(a);
    m->mem = a;
    return 1;
}

void isle_msg_free(isle_msg *m)
{
    if (!m) return;
    isle_task_release(m->task);
    if (m->mem) {
        isle_mem_uncharge(m->mem, msg_size(m));
        isle_mem_release(m->mem);
    }
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
