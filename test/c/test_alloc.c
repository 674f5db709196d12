/* test_alloc.c - out of memory in the core: every allocation site of each
 * operation fails in turn (alloc_sweep.h, failalloc.c). Each must hand the
 * failure to its caller (ISLE_ENOMEM, NULL, -1 or 0 as isle.h documents),
 * leak nothing, leave no thread and no task unended, and the next operation
 * must work. Spawn and preload (isle.c, preload.c: LuaJIT) are in
 * spawn_alloc.c. */
#include "check.h"
#include "alloc_sweep.h"
#include "internal.h"

#include <string.h>

static int32_t flag_of(isle_sig *s) { return __atomic_load_n(&s->flag, __ATOMIC_ACQUIRE); }

typedef struct ctx {
    isle_mbox *mb;    /* a subscriber for notices, alive for the whole test */
    isle_sig *sig;    /* likewise: a state's signal block */
    isle_task *t;
    isle_task *toks[2]; /* slots a message or a result carries (tokens) */
    isle_mbox *made_mb;
    isle_sig *made_sig;
    int64_t id;
    int with_fd;
    int threads0;     /* threads before the watchdog is first used */
} ctx;

/* Takes what `mb` holds now: the number of messages and of notices, each
 * notice checked to be about `t`. */
static void take(isle_mbox *mb, isle_task *t, int *nmsgs, int *ndone)
{
    isle_msg *msgs;
    isle_done *done;
    *nmsgs = *ndone = 0;
    if (isle_mbox_wait(mb, 0, &msgs, &done) != ISLE_OK) return;
    for (isle_msg *m = msgs; m; m = m->next) (*nmsgs)++;
    for (isle_done *d = done; d; d = d->next) {
        CHECK(d->task == t);
        (*ndone)++;
    }
    isle_msg_free_list(msgs);
    isle_done_free_list(done);
}

/* ---- push: isle_msg_new + isle_mbox_push ---------------------------------- */
static void push_setup(void *p) { ((ctx *)p)->t = isle_task_new(); }

static int push_run(void *p)
{
    ctx *c = p;
    isle_msg *m = isle_msg_new(3, c->t, "payload", 7);
    if (!m) return 0;
    CHECK_EQ(isle_mbox_push(c->mb, m, 0), ISLE_OK);
    return 1;
}

static long push_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        CHECK_EQ(isle_mbox_count(c->mb), 0);
        CHECK(push_run(c));
    }
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(c->mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs && !msgs->next && !done);
    CHECK(msgs->task == c->t && msgs->kind == 3 && msgs->len == 7);
    CHECK(memcmp(msgs->data, "payload", 7) == 0);
    isle_msg_free_list(msgs);
    /* A failed isle_msg_new took no reference: this frees the task (the
     * sweep's leak check). */
    isle_task_release(c->t);
    return 0;
}

/* ---- carried references: isle_msg_new_refs + isle_mbox_push --------------- */
static void refs_setup(void *p)
{
    ctx *c = p;
    c->t = isle_task_new();
    c->toks[0] = isle_task_new();
    c->toks[1] = isle_task_new();
}

/* The caller's references go; what is left is what the core holds. */
static void refs_release(ctx *c)
{
    isle_task_release(c->toks[0]);
    isle_task_release(c->toks[1]);
    isle_task_release(c->t);
}

static int push_refs_run(void *p)
{
    ctx *c = p;
    isle_msg *m = isle_msg_new_refs(3, c->t, "payload", 7, c->toks, 2);
    if (!m) return 0;
    CHECK_EQ(isle_mbox_push(c->mb, m, 0), ISLE_OK);
    return 1;
}

static long push_refs_check(void *p, int ok)
{
    ctx *c = p;
    int live0 = isle_task_live_count();
    if (!ok) {
        CHECK_EQ(isle_mbox_count(c->mb), 0);
        CHECK(push_refs_run(c));
    }
    refs_release(c);
    CHECK_EQ(isle_task_live_count(), live0);   /* the queued message holds all three */
    isle_msg *msgs;
    isle_done *done;
    CHECK_EQ(isle_mbox_wait(c->mb, 0, &msgs, &done), ISLE_OK);
    CHECK(msgs && !msgs->next && !done);
    CHECK(msgs->nrefs == 2 && msgs->refs[0] == c->toks[0] && msgs->refs[1] == c->toks[1]);
    CHECK_EQ(isle_task_state(msgs->refs[1]), ISLE_TASK_QUEUED);
    /* Freed unread: every reference goes, and a failed isle_msg_new_refs
     * took none (the sweep's leak check). */
    isle_msg_free_list(msgs);
    CHECK_EQ(isle_task_live_count(), live0 - 3);
    return 0;
}

/* ---- task slots ------------------------------------------------------------ */
static int task_new_run(void *p)
{
    ctx *c = p;
    c->t = isle_task_new();
    return c->t != NULL;
}

static long task_new_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) CHECK(task_new_run(c));
    CHECK_EQ(isle_task_state(c->t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_complete(c->t, ISLE_TASK_DONE, "x", 1), 1);
    isle_task_release(c->t);
    return 0;
}

/* A completion whose payload cannot be copied still ends the task (as
 * FAILED with no bytes, which the Lua side reads as a "memory" error): its
 * waiters and subscribers must not wait for ever. */
static void complete_setup(void *p)
{
    ctx *c = p;
    c->t = isle_task_new();
    CHECK_EQ(isle_task_subscribe(c->t, c->mb), 1);
}

/* Longer than a result kept in the slot itself (task.c), which needs no
 * allocation: this one is a message. */
static const char long_result[] = "a result too long to be kept in its task slot: a message";
_Static_assert(sizeof long_result > ISLE_TASK_SMALL, "the result must not fit the slot");

static int complete_run(void *p)
{
    ctx *c = p;
    CHECK_EQ(isle_task_complete(c->t, ISLE_TASK_DONE, long_result, sizeof long_result - 1), 1);
    return isle_task_state(c->t) == ISLE_TASK_DONE;
}

static long complete_check(void *p, int ok)
{
    ctx *c = p;
    CHECK_EQ(isle_task_wait(c->t, 0), 1);
    size_t len = 99;
    const char *r = isle_task_result(c->t, &len);
    if (ok) {
        CHECK(len == sizeof long_result - 1 && memcmp(r, long_result, len) == 0);
    } else {
        CHECK_EQ(isle_task_state(c->t), ISLE_TASK_FAILED);
        CHECK_EQ(len, 0);
    }
    int nm, nd;
    take(c->mb, c->t, &nm, &nd);
    CHECK(nm == 0 && nd == 1);                    /* the subscriber was told */
    CHECK_EQ(isle_task_complete(c->t, ISLE_TASK_DONE, "again", 5), 0);
    isle_task_release(c->t);
    if (!ok) {
        complete_setup(c);
        CHECK(complete_run(c));
        take(c->mb, c->t, &nm, &nd);
        CHECK(nm == 0 && nd == 1);
        isle_task_release(c->t);
    }
    return 0;
}

static void new_task(void *p) { ((ctx *)p)->t = isle_task_new(); }

/* A result that carries references: when it cannot be made the task ends
 * FAILED with no result and holds none of them. */
static int complete_refs_run(void *p)
{
    ctx *c = p;
    CHECK_EQ(isle_task_complete_refs(c->t, ISLE_TASK_DONE, "result", 6, c->toks, 2), 1);
    return isle_task_state(c->t) == ISLE_TASK_DONE;
}

static long complete_refs_check(void *p, int ok)
{
    ctx *c = p;
    int live0 = isle_task_live_count();
    const isle_msg *r = isle_task_result_msg(c->t);
    if (ok) {
        CHECK(r && r->len == 6 && r->nrefs == 2 && r->refs[0] == c->toks[0]);
    } else {
        CHECK_EQ(isle_task_state(c->t), ISLE_TASK_FAILED);
        CHECK(r == NULL);
    }
    isle_task *t = c->t;
    isle_task_retain(t);
    refs_release(c);
    /* Held by the result: the tokens live while the slot does. */
    CHECK_EQ(isle_task_live_count(), live0 - (ok ? 0 : 2));
    isle_task_release(t);
    CHECK_EQ(isle_task_live_count(), live0 - 3);
    if (!ok) {
        refs_setup(c);
        CHECK(complete_refs_run(c));
        return complete_refs_check(c, 1);
    }
    return 0;
}

static int subscribe_run(void *p)
{
    ctx *c = p;
    int r = isle_task_subscribe(c->t, c->mb);
    CHECK(r == 1 || r == -1);
    return r == 1;
}

static long subscribe_check(void *p, int ok)
{
    ctx *c = p;
    CHECK_EQ(isle_task_complete(c->t, ISLE_TASK_DONE, NULL, 0), 1);
    int nm, nd;
    take(c->mb, c->t, &nm, &nd);
    CHECK(nm == 0 && nd == (ok ? 1 : 0));         /* no notice from a failed subscription */
    isle_task_release(c->t);                      /* ...and no reference left on the task */
    if (!ok) {
        new_task(c);
        CHECK(subscribe_run(c));
        return subscribe_check(c, 1);
    }
    return 0;
}

/* ---- tokens: a slot used for its cancellation, watched by a mailbox and a
 * signal block (how a job in an isle learns its token was cancelled) ------- */
static int watch_run(void *p)
{
    ctx *c = p;
    int r = isle_task_watch(c->t, c->mb, c->sig);
    CHECK(r == 1 || r == -1);
    return r == 1;
}

static long watch_check(void *p, int ok)
{
    ctx *c = p;
    CHECK_EQ(flag_of(c->sig), 0);
    CHECK_EQ(isle_task_cancel(c->t), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_state(c->t), ISLE_TASK_CANCELLED);
    int nm, nd;
    take(c->mb, c->t, &nm, &nd);
    CHECK(nm == 0 && nd == (ok ? 1 : 0));
    CHECK_EQ(flag_of(c->sig), ok ? 1 : 0);        /* a failed watch raises nothing */
    isle_sig_lower(c->sig);
    isle_task_release(c->t);
    if (!ok) {
        new_task(c);
        CHECK(watch_run(c));
        return watch_check(c, 1);
    }
    return 0;
}

/* ---- interrupt ids ------------------------------------------------------------ */
static int intr_run(void *p)
{
    ctx *c = p;
    c->id = isle_intr_new(c->sig);
    return c->id != 0;
}

static long intr_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        CHECK_EQ(c->id, 0);
        CHECK_EQ(isle_intr_set(0, ISLE_INTR_ONCE), ISLE_ENOENT);
        CHECK_EQ(isle_sig_pending(c->sig), 0);
        CHECK(intr_run(c));
    }
    CHECK_EQ(isle_intr_set(c->id, ISLE_INTR_ONCE), ISLE_OK);
    CHECK_EQ(isle_sig_pending(c->sig), 1);
    CHECK_EQ(flag_of(c->sig), 1);
    CHECK_EQ(isle_intr_take(c->id), ISLE_INTR_ONCE);
    isle_intr_free(c->id);
    CHECK_EQ(isle_intr_set(c->id, ISLE_INTR_ONCE), ISLE_ENOENT);
    isle_sig_lower(c->sig);
    return 0;
}

/* ---- mailboxes and signal blocks ------------------------------------------ */
static int mbox_run(void *p)
{
    ctx *c = p;
    c->made_mb = isle_mbox_new(8, c->with_fd);
    return c->made_mb != NULL;
}

static long mbox_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        CHECK(c->made_mb == NULL);
        CHECK(mbox_run(c));
    }
    CHECK(c->with_fd ? isle_mbox_fd(c->made_mb) >= 0 : isle_mbox_fd(c->made_mb) == -1);
    isle_msg *m = isle_msg_new(1, NULL, "m", 1);
    CHECK_EQ(isle_mbox_push(c->made_mb, m, 0), ISLE_OK);
    int nm, nd;
    take(c->made_mb, NULL, &nm, &nd);
    CHECK(nm == 1 && nd == 0);
    isle_mbox_release(c->made_mb);
    return 0;
}

static int sig_run(void *p)
{
    ctx *c = p;
    c->made_sig = isle_sig_new();
    return c->made_sig != NULL;
}

static long sig_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        CHECK(c->made_sig == NULL);
        CHECK(sig_run(c));
    }
    isle_sig_raise(c->made_sig);
    CHECK_EQ(flag_of(c->made_sig), 1);
    isle_sig_release(c->made_sig);
    return 0;
}

/* ---- the watchdog ------------------------------------------------------------- */
static int expire_run(void *p)
{
    ctx *c = p;
    int rc = isle_task_expire_at(c->t, isle_now() + 0.05);
    CHECK(rc == ISLE_OK || rc == ISLE_ENOMEM);
    return rc == ISLE_OK;
}

static long expire_check(void *p, int ok)
{
    ctx *c = p;
    if (!ok) {
        /* Nothing watches the task, and no watchdog thread was started. */
        CHECK_EQ(count_threads(), c->threads0);
        check_sleep(0.15);
        CHECK_EQ(isle_task_state(c->t), ISLE_TASK_QUEUED);
        CHECK(expire_run(c));
    }
    CHECK_EQ(isle_task_wait(c->t, 30), 1);
    CHECK_EQ(isle_task_state(c->t), ISLE_TASK_CANCELLED);
    CHECK_EQ(isle_task_cancelled(c->t), ISLE_CANCEL_TIMEOUT);
    isle_task_release(c->t);
    /* The watchdog frees its heap when it exits for want of work: wait for
     * that, so the sweep's leak check sees the process at rest. */
    CHECK_EQ(threads_settle(c->threads0), c->threads0);
    return 0;
}

static ctx *new_ctx(void)
{
    static ctx c;
    memset(&c, 0, sizeof c);
    c.mb = isle_mbox_new(64, 0);
    c.sig = isle_sig_new();
    c.threads0 = count_threads();
    return &c;
}

static void free_ctx(ctx *c)
{
    isle_sig_release(c->sig);
    isle_mbox_release(c->mb);
}

/* Through volatile pointers, so the compiler cannot drop or fold an
 * allocation whose block is never used. */
static void *(*volatile do_malloc)(size_t) = malloc;
static void *(*volatile do_calloc)(size_t, size_t) = calloc;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static char *(*volatile do_strdup)(const char *) = strdup;
static void (*volatile do_free)(void *) = free;

static void test_wrapper(void)
{
    /* The mechanism itself: the n-th allocation of this thread fails once
     * (or from then on), and live blocks are counted. */
    long live = failalloc_live();
    failalloc_arm(2, 0);
    void *a = do_malloc(8), *b = do_malloc(8), *c = do_calloc(1, 8);
    CHECK(a && !b && c);
    CHECK_EQ(failalloc_disarm(), 1);
    CHECK_EQ(failalloc_live(), live + 2);
    void *a2 = do_realloc(a, 4096);
    CHECK(a2 != NULL);
    CHECK_EQ(failalloc_live(), live + 2);
    do_free(a2);
    do_free(c);
    failalloc_arm(1, FAILALLOC_PERSIST);
    char *s = do_strdup("x");
    void *r = do_realloc(NULL, 8);
    a = do_malloc(1);
    CHECK(!s && !r && !a);
    CHECK_EQ(failalloc_disarm(), 3);
    CHECK_EQ(failalloc_live(), live);
    s = do_strdup("x");
    CHECK(s != NULL && s[0] == 'x');
    do_free(s);
    CHECK_EQ(failalloc_live(), live);
}

static void *alloc_once(void *arg)
{
    void *p = do_malloc(8);
    *(int *)arg = p != NULL;
    do_free(p);
    return NULL;
}

static void test_wrapper_threads(void)
{
    int got = -1;
    failalloc_arm(1, 0);
    check_join(check_spawn(alloc_once, &got));
    CHECK_EQ(got, 1);                             /* another thread: not counted */
    CHECK_EQ(failalloc_disarm(), 0);
    failalloc_arm(1, FAILALLOC_ANY_THREAD);
    check_join(check_spawn(alloc_once, &got));
    CHECK_EQ(got, 0);
    CHECK_EQ(failalloc_disarm(), 1);
}

static void test_push(void)
{
    ctx *c = new_ctx();
    alloc_op op = {"isle_msg_new + isle_mbox_push", push_setup, push_run, push_check};
    CHECK_EQ(alloc_sweep_both(&op, c, 0), 1);
    alloc_op refs = {"isle_msg_new_refs + isle_mbox_push", refs_setup, push_refs_run, push_refs_check};
    CHECK_EQ(alloc_sweep_both(&refs, c, 0), 1);
    free_ctx(c);
}

static void test_task_slots(void)
{
    ctx *c = new_ctx();
    alloc_op ops[] = {
        {"isle_task_new", NULL, task_new_run, task_new_check},
        {"isle_task_complete with a payload", complete_setup, complete_run, complete_check},
        {"isle_task_complete_refs", refs_setup, complete_refs_run, complete_refs_check},
        {"isle_task_subscribe", new_task, subscribe_run, subscribe_check},
    };
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) CHECK_EQ(alloc_sweep_both(&ops[k], c, 0), 1);
    free_ctx(c);
}

static void test_tokens(void)
{
    ctx *c = new_ctx();
    alloc_op op = {"isle_task_watch (token)", new_task, watch_run, watch_check};
    CHECK_EQ(alloc_sweep_both(&op, c, 0), 1);
    free_ctx(c);
}

static void test_interrupt_ids(void)
{
    ctx *c = new_ctx();
    alloc_op op = {"isle_intr_new", NULL, intr_run, intr_check};
    CHECK_EQ(alloc_sweep_both(&op, c, 0), 1);
    free_ctx(c);
}

static void test_mailboxes_and_signals(void)
{
    ctx *c = new_ctx();
    alloc_op mb = {"isle_mbox_new", NULL, mbox_run, mbox_check};
    CHECK_EQ(alloc_sweep_both(&mb, c, 0), 1);
    c->with_fd = 1;
    alloc_op mbfd = {"isle_mbox_new with an eventfd", NULL, mbox_run, mbox_check};
    CHECK_EQ(alloc_sweep_both(&mbfd, c, 0), 1);
    alloc_op sig = {"isle_sig_new", NULL, sig_run, sig_check};
    CHECK_EQ(alloc_sweep_both(&sig, c, 0), 1);
    free_ctx(c);
}

static void test_watchdog_first_use(void)
{
    ctx *c = new_ctx();
    alloc_op op = {"isle_task_expire_at (first use)", new_task, expire_run, expire_check};
    CHECK_EQ(alloc_sweep_both(&op, c, 0), 1);
    free_ctx(c);
}

static void test_watchdog_growth(void)
{
    /* The watch heap is full (64 live watches): the next watch must grow
     * it. When that fails, the task is not watched (and not retained), the
     * watches already there still fire, and the next watch works. */
    enum { N = 64 };
    int threads0 = count_threads();
    long live0 = failalloc_live();
    isle_task *ts[N];
    double deadline = isle_now() + 1.5;  /* far beyond the few calls below */
    for (int k = 0; k < N; k++) {
        ts[k] = isle_task_new();
        CHECK_EQ(isle_task_expire_at(ts[k], deadline), ISLE_OK);
    }
    isle_task *extra = isle_task_new();
    failalloc_arm(1, 0);
    int rc = isle_task_expire_at(extra, isle_now() + 0.01);
    CHECK_EQ(failalloc_disarm(), 1);
    CHECK_EQ(rc, ISLE_ENOMEM);
    check_sleep(0.1);
    CHECK_EQ(isle_task_state(extra), ISLE_TASK_QUEUED);
    CHECK_EQ(isle_task_expire_at(extra, isle_now() + 0.01), ISLE_OK);
    CHECK_EQ(isle_task_wait(extra, 30), 1);
    CHECK_EQ(isle_task_cancelled(extra), ISLE_CANCEL_TIMEOUT);
    isle_task_release(extra);
    for (int k = 0; k < N; k++) {
        CHECK_EQ(isle_task_wait(ts[k], 30), 1);
        CHECK_EQ(isle_task_cancelled(ts[k]), ISLE_CANCEL_TIMEOUT);
        isle_task_release(ts[k]);
    }
    CHECK_EQ(threads_settle(threads0), threads0);
    CHECK_EQ(failalloc_live(), live0);
}

int main(void)
{
    RUN(test_wrapper);
    RUN(test_wrapper_threads);
    RUN(test_push);
    RUN(test_task_slots);
    RUN(test_tokens);
    RUN(test_interrupt_ids);
    RUN(test_mailboxes_and_signals);
    RUN(test_watchdog_first_use);
    RUN(test_watchdog_growth);
    return check_done();
}
