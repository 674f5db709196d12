/*
 * isle.h - the C core of isle: threads, bounded mailboxes of byte messages,
 * one-shot completion slots, interrupt flags and Lua state bootstrap.
 *
 * The core moves bytes, the task references they carry (isle_msg.refs: a
 * token sent as a value) and flags. It never serializes a Lua value and
 * never touches a Lua state it did not create; the Lua API (lua/isle.lua)
 * does the rest through the FFI. ffi/isle/cdef.lua mirrors this header
 * declaration by declaration (test/test_static.lua checks sizes, offsets
 * and values against it, and that every function here is declared there).
 *
 * Verbs: `_new` makes an object holding one reference; `_retain` adds one
 * and `_release` drops one (the last frees the object; every `_release`
 * accepts NULL); `_free` destroys what has a single owner (a message, a
 * list of notices). `isle_X_of(isle)` reads a part of an isle.
 *
 * Lock order (a thread never holds two of these except in this order):
 *   registry lock  ->  channel lock  ->  task lock  ->  signal-block lock, interrupt-id lock  ->  mailbox lock
 * (the registry of shared states ranks with the registry of isles; the two
 * are never held together; so does the registry of pools, whose pool lock
 * comes before the signal-block lock and is never held with the others; only
 * the thread that forks holds the three registries at once, isles', shared
 * states', pools', in that order: fork.c). The watchdog's lock is never held while any
 * other is taken, nor is a shared state's wait lock, nor the depot lock of
 * the block caches (cache.c: freed small messages and task slots kept for
 * reuse), which is taken last of all and nothing is taken under it; the
 * pool lock of the boot heaps (bootheap.c) and the lock of the kept LuaJIT
 * arenas (arena.c) are such leaves too (the three are held together only
 * around fork(), depot first, arenas last), and so is the lock of the parked
 * threads (threads.c), taken after the arenas' around fork().
 * Messages are pushed and taken without the mailbox lock (mbox.c: a stack
 * swapped by compare-and-swap); a push takes it only to wake a parked
 * consumer or arm the fd, holding no other lock then.
 * Nothing here runs Lua code while holding a lock, so a Lua finalizer can
 * never run inside a core critical section. The one exception is by design:
 * a shared state's call lock (state.c) is held while its Lua code runs, and
 * is outside this order; a thread may hold several (one state's callback
 * calling another), and re-entering one it holds is refused.
 */
#ifndef ISLE_H
#define ISLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum {
    ISLE_OK = 0,
    ISLE_ETIMEOUT = 1, /* the wait ended before anything arrived */
    ISLE_EBUSY = 2,    /* the mailbox is full and the caller would not wait */
    ISLE_ECLOSED = 3,  /* the mailbox or isle is closed */
    ISLE_ENOMEM = 4,
    ISLE_EINVAL = 5,
    ISLE_ENOENT = 6 /* no such id */
};

/* Task states. QUEUED and RUNNING are live; the others are final. */
enum {
    ISLE_TASK_QUEUED = 0,
    ISLE_TASK_RUNNING = 1,
    ISLE_TASK_DONE = 2,
    ISLE_TASK_FAILED = 3,
    ISLE_TASK_CANCELLED = 4,
    ISLE_TASK_CLOSED = 5
};

/* Why a task was asked to stop (isle_task_cancelled). */
enum {
    ISLE_CANCEL_NONE = 0,
    ISLE_CANCEL_USER = 1,   /* isle_task_cancel, or a token */
    ISLE_CANCEL_TIMEOUT = 2 /* its deadline passed (isle_task_expire_at) */
};

/* The first byte of a task's result bytes says what they hold
 * (lua/isle/wire.lua reads and writes them): a value list, a value list with
 * shipped functions, an error envelope, or raw text from the core itself
 * (a bootstrap failure). */
enum { ISLE_WIRE_VALUES = 'V', ISLE_WIRE_FUNCS = 'F', ISLE_WIRE_ERROR = 'E', ISLE_WIRE_CORE = 'C' };

/* Interrupt modes (isle_intr_set). */
enum { ISLE_INTR_CLEAR = 0, ISLE_INTR_ONCE = 1, ISLE_INTR_ALWAYS = 2 };

typedef struct isle_msg isle_msg;
typedef struct isle_task isle_task;
typedef struct isle_mbox isle_mbox;
typedef struct isle_sig isle_sig;
typedef struct isle isle;
typedef struct isle_done isle_done;
typedef struct isle_mem isle_mem;

/* A message: header, carried references and payload in one allocation.
 * The payload is opaque. `refs` are the task slots the payload names by
 * index (a token sent as a value travels as its index here, never as an
 * address): the message holds one reference to each, so whoever frees the
 * message, read or not, lets go of them, and a reader takes references of
 * its own. Task results are messages too (isle_task_result_msg). */
struct isle_msg {
    isle_msg *next;  /* intrusive link while queued or in a taken batch */
    isle_task *task; /* completion slot, or NULL for one-way messages */
    int32_t kind;    /* meaning is the sender's and receiver's business */
    int32_t flags;
    size_t len;
    char *data; /* points just past the header and `refs` */
    size_t nrefs;
    isle_task **refs; /* nrefs retained slots, just past the header; NULL when none */
    isle_mem *mem;    /* the account charged for it (isle_msg_charge), or NULL */
};

/* The most references one message (or result, or boot) may carry. */
enum { ISLE_MSG_REFS_MAX = 65536 };

/* A completion notice: `task` ended and its subscriber `mbox` is told.
 * Holds a reference to the task until freed with isle_done_free_list. */
struct isle_done {
    isle_done *next;
    isle_task *task;
    isle_mbox *mbox; /* the subscriber (private to the core) */
    isle_sig *sig;   /* raised when the task ends (private to the core) */
};

/*
 * Per-state signal block. `flag` is what compiled checkpoints read (a load
 * kept in the loop by a store of the loaded value through `scratch`, a
 * pointer that may alias it: docs/jit-safety.md); it is nonzero while
 * anything is pending for the state, and the state lowers it once it has
 * looked at its requests.
 */
struct isle_sig {
    volatile int32_t flag;
    int32_t scratch;
};

/* ---- clock and spinning ---------------------------------------------- */
double isle_now(void);              /* monotonic seconds */
void isle_set_spin(double seconds); /* spin budget before parking, process-wide */
double isle_get_spin(void);

/* ---- messages ---------------------------------------------------------- */
/* Copies `len` bytes of `data`; retains `task` if not NULL. NULL on ENOMEM. */
isle_msg *isle_msg_new(int32_t kind, isle_task *task, const char *data, size_t len);
/* The same, carrying `refs[0..nrefs)` (none NULL; one may appear twice):
 * each is retained, in the same allocation. NULL on ENOMEM or when nrefs >
 * ISLE_MSG_REFS_MAX, having retained nothing. */
isle_msg *isle_msg_new_refs(int32_t kind, isle_task *task, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs);
void isle_msg_free(isle_msg *m);         /* accepts NULL; releases the task and the refs */
void isle_msg_free_list(isle_msg *head); /* frees a taken batch */
/* Charges the message's whole allocation (header, references and payload)
 * to account `a` until it is freed. 1 if charged (or `a` has no limit, or is NULL: then
 * nothing is charged); 0 if it would take `a` past its user limit (see
 * "memory accounts"), and the message is left as it was. */
int isle_msg_charge(isle_msg *m, isle_mem *a);

/* ---- completion slots ---------------------------------------------------- */
isle_task *isle_task_new(void); /* state QUEUED, one reference */
void isle_task_retain(isle_task *t);
void isle_task_release(isle_task *t); /* accepts NULL */
int isle_task_state(const isle_task *t);
/* QUEUED -> RUNNING, remembering the signal block of the state that runs it
 * so that a cancel can reach a compiled loop, and when it started and what it
 * is (`label`, may be NULL; cut to ISLE_LABEL_MAX - 1 bytes) for isle_stats.
 * Returns 0 if the task is not QUEUED (it ended, e.g. cancelled while queued,
 * or already runs): the runner must then skip it. */
int isle_task_start(isle_task *t, isle_sig *sig, const char *label);
/* First completion wins (returns 1), later ones return 0. Copies the bytes.
 * A task that never started may complete straight from QUEUED. If the copy
 * cannot be made the task still ends, FAILED with no result. */
int isle_task_complete(isle_task *t, int state, const char *data, size_t len);
/* The same with references carried by the result, as isle_msg_new_refs:
 * retained by the result (only if this completion wins) and released when
 * the slot is freed, whether or not anyone reads the result. */
int isle_task_complete_refs(isle_task *t, int state, const char *data, size_t len,
                            isle_task *const *refs, size_t nrefs);
/* The result message `t` will hold (its bytes and the references it
 * carries, as isle_msg_charge counts them) is charged to account `a` (the
 * state that made the task and will read it) for as long as the task lives;
 * a result that does not fit under `a`'s user limit is not stored: the task
 * ends FAILED with no result (read as a "memory" error), its references let
 * go. Call right after
 * isle_task_new, before anything can complete the task. No-op for a NULL
 * account or one without a limit. */
void isle_task_charge_results(isle_task *t, isle_mem *a);
/* 1 when the task has ended, 0 on timeout (timeout < 0 waits forever). */
int isle_task_wait(isle_task *t, double timeout);
/* The result of an ended task: its bytes (NULL and 0 when it has none or
 * has not ended), or the whole result message with its references (NULL
 * likewise). Both stay valid as long as the caller holds the task. */
const char *isle_task_result(isle_task *t, size_t *len);
const isle_msg *isle_task_result_msg(isle_task *t);
/* Ask to be told through `mb` (isle_mbox_wait's `done` list) when `t` ends;
 * any number of mailboxes may subscribe. Returns 0 if it has already ended
 * (nothing will be posted), 1 if subscribed, -1 on ENOMEM. */
int isle_task_subscribe(isle_task *t, isle_mbox *mb);
/* The same, and also raise `sig` (may be NULL) when `t` ends: how a token
 * (a slot used only for its cancellation) reaches compiled loops. */
int isle_task_watch(isle_task *t, isle_mbox *mb, isle_sig *sig);
/* Undo one isle_task_watch(t, mb, sig) (sig may be NULL, as from
 * isle_task_subscribe) while `t` has not ended: removes one matching
 * subscription and releases the references it held on `t`, `mb` and `sig`.
 * A subscriber that stops caring must call it, or a task that never ends (a
 * token nobody cancels) keeps its mailbox, signal block and itself forever.
 * Returns 1 if one was removed, 0 if none matched (never subscribed, or the
 * task ended and its notice is on its way to `mb`, freed by whoever takes it). */
int isle_task_unwatch(isle_task *t, isle_mbox *mb, isle_sig *sig);
int isle_task_unsubscribe(isle_task *t, isle_mbox *mb); /* isle_task_unwatch(t, mb, NULL) */
void isle_done_free_list(isle_done *head);              /* releases the tasks too */
/* Request cancellation. A queued task ends CANCELLED at once; a running one
 * gets its cancel flag and its state's signal raised. Returns the state seen. */
int isle_task_cancel(isle_task *t);
int isle_task_cancel_reason(isle_task *t, int reason);
int isle_task_cancelled(const isle_task *t); /* ISLE_CANCEL_* reason, 0 if none */
/* Cancel `t` with ISLE_CANCEL_TIMEOUT at `deadline` (isle_now() time) unless
 * it has ended by then. A watchdog thread does it, started on first use and
 * gone again when it has nothing to watch. ISLE_ENOMEM on failure. */
int isle_task_expire_at(isle_task *t, double deadline);
/* Task slots allocated and not yet freed in this process (tokens included):
 * a leak check for the tests (docs/testing.md). A forked child starts with
 * its parent's count. */
int isle_task_live_count(void);

/* ---- mailboxes ------------------------------------------------------------- */
/* A bounded multi-producer queue of messages plus an unbounded list of
 * completed tasks its owner subscribed to. With `with_fd` an eventfd becomes
 * readable whenever something arrives (for host event loops). */
isle_mbox *isle_mbox_new(size_t capacity, int with_fd);
void isle_mbox_release(isle_mbox *mb); /* accepts NULL; queued tasks end CLOSED */
/* timeout 0: do not wait (EBUSY when full); < 0: wait for room forever.
 * On any error the message was not queued and still belongs to the caller. */
int isle_mbox_push(isle_mbox *mb, isle_msg *m, double timeout);
/* Takes every queued message and every completion notice after one wake-up.
 * ISLE_OK: something was taken, or a wake (isle_mbox_wake, or the close
 * itself, once) ended the wait with both lists empty. Otherwise, when the
 * timeout runs out: ISLE_ECLOSED if the mailbox is closed, else
 * ISLE_ETIMEOUT. A closed mailbox still delivers notices, so a consumer
 * draining after close can keep waiting for the tasks it awaits; with
 * timeout 0 it learns ISLE_ECLOSED at once. The caller frees the messages
 * (isle_msg_free_list) and the notices (isle_done_free_list). */
int isle_mbox_wait(isle_mbox *mb, double timeout, isle_msg **msgs, isle_done **done);
void isle_mbox_close(isle_mbox *mb); /* wakes every waiter; later pushes fail */
int isle_mbox_is_closed(isle_mbox *mb);
size_t isle_mbox_count(isle_mbox *mb);
int isle_mbox_fd(isle_mbox *mb);    /* -1 without eventfd */
void isle_mbox_wake(isle_mbox *mb); /* make the current or next wait return */
/* For hosts that can wait on a socket but not on an eventfd (nginx
 * cosockets): from now on readiness is one byte sent to stream socket `fd`,
 * whose peer the host reads and drains itself; isle_mbox_wait no longer
 * reads. The mailbox owns `fd` from the call on (closed with the mailbox,
 * or at once on failure) and must have been made with_fd; its eventfd is
 * closed. ISLE_EINVAL otherwise. */
int isle_mbox_notify_socket(isle_mbox *mb, int fd);

/* ---- wake-up sockets (notify.c) -------------------------------------------- */
/* A unix stream connection from this process to itself, for hosts that wait
 * only on sockets they connect (nginx cosockets): isle_notify_listen makes a
 * listening socket in a new mode-0700 directory and writes its path to
 * `path` (`cap` bytes); the host connects to it; isle_notify_accept takes
 * that connection (only one whose peer is this process, waiting at most
 * `timeout` s; < 0: take nothing, only clean up), removes the path and its
 * directory, closes `lfd` and returns the connected socket for
 * isle_mbox_notify_socket. Both return -1 on failure (errno says why),
 * having cleaned up. */
int isle_notify_listen(char *path, size_t cap);
int isle_notify_accept(int lfd, char *path, double timeout);

/* ---- signal blocks and interrupt ids ---------------------------------- */
isle_sig *isle_sig_new(void);
void isle_sig_release(isle_sig *s); /* accepts NULL; drops its ids */
/* Register an interrupt target of `s` (the state itself or one coroutine).
 * Ids are never reused within a process. */
int64_t isle_intr_new(isle_sig *s);
void isle_intr_free(int64_t id);
/* Set the mode of `id`; ONCE and ALWAYS also raise its state's flag (CLEAR
 * raises nothing). ISLE_ENOENT if unknown, ISLE_EINVAL for a bad mode. */
int isle_intr_set(int64_t id, int mode);
/* Read the mode of `id`; a ONCE mode is consumed. -1 if unknown. */
int isle_intr_take(int64_t id);
void isle_sig_raise(isle_sig *s);  /* set the flag: "look at your requests" */
int isle_sig_pending(isle_sig *s); /* ids of `s` whose mode is not CLEAR */
/* Ends every task the state of `s` is running (started with this block and
 * not ended) as FAILED with these bytes: what the core does when a state dies
 * under its tasks. Returns how many it ended. */
int isle_sig_fail_running(isle_sig *s, const char *data, size_t len);
void isle_sig_lower(isle_sig *s);
/* The loop of the state of `s` took (delta > 0) or started (delta < 0)
 * messages: what it holds counts as queued in isle_stats. */
void isle_sig_hold(isle_sig *s, int64_t delta);

/* What a state's loop is doing, for h:stats(): counts of tasks by outcome
 * and the task that has been running longest (a stuck job shows here). */
enum { ISLE_LABEL_MAX = 48 };
typedef struct isle_stats {
    int64_t queued; /* in the mailbox, or taken by the loop and not started */
    int64_t running;
    int64_t done, failed, cancelled, closed; /* ended by this state so far */
    /* isle_now() when the longest-running task started, to a clock tick
     * (a few ms; never later than it did); 0: none */
    double oldest_start;
    int32_t oldest_cancel; /* ISLE_CANCEL_* already asked of that task (still running) */
    char oldest_label[ISLE_LABEL_MAX];
} isle_stats;
/* Fills `out` from the counters of `s`; adds to out->queued (the caller
 * puts the mailbox's count there first). */
void isle_sig_stats(isle_sig *s, isle_stats *out);

/* ---- isles ------------------------------------------------------------------ */
typedef struct isle_config {
    const char *name;  /* may be NULL */
    size_t capacity;   /* mailbox bound */
    const char *path;  /* package.path for the new state */
    const char *cpath; /* package.cpath */
    const char *boot;  /* opaque bytes handed to the worker */
    size_t boot_len;
    isle_task *const *boot_refs; /* references carried with them (isle_msg_new_refs) */
    size_t boot_nrefs;
    int instrument;      /* senders insert checkpoints into eval chunks */
    size_t memory_limit; /* bytes; 0: none (see "memory accounts") */
    isle_mem *charge;    /* the spawner's account, charged memory_limit
                               while the isle lives; may be NULL */
} isle_config;

/* Starts the thread. The returned handle holds one reference (the owner's).
 * NULL on failure with *err set (ISLE_ENOMEM, ISLE_EINVAL for a name in use
 * or too many boot_refs), holding none of boot_refs. */
isle *isle_spawn(const isle_config *cfg, int *err);
void isle_retain(isle *i);
void isle_release(isle *i); /* accepts NULL */
int64_t isle_id(const isle *i);
const char *isle_name(const isle *i); /* "" when unnamed */
isle_mbox *isle_mbox_of(isle *i);
isle_sig *isle_sig_of(isle *i);
/* cfg->boot and cfg->boot_refs as a message, kept until the isle is freed. */
const isle_msg *isle_boot(isle *i);
isle_task *isle_init_task(isle *i); /* ends when init ran (or failed) */
int64_t isle_state_intr(isle *i);   /* the interrupt id of the isle's state */
int isle_instrument(const isle *i); /* isle_config.instrument */
/* Retained handles of live isles, NULL when none (or closed). */
isle *isle_lookup_id(int64_t id);
isle *isle_lookup_name(const char *name);
/* Stop accepting work and join. cancel != 0: queued tasks end CLOSED instead
 * of running, and running ones get a cancel request. Idempotent; from the
 * isle's own thread it only requests the stop. */
void isle_close(isle *i, int cancel);
/* Request the stop as isle_close does, without waiting. */
void isle_stop(isle *i, int cancel);
/* Wait at most `timeout` seconds (< 0: for ever) for the isle's thread to
 * be done with it (its state closed; the thread then parks for the next
 * isle or exits: threads.c). 1 if it is, 0 if it still runs. Once it has
 * returned 1 the thread holds no reference: the caller's last release frees
 * the isle at once. */
int isle_join(isle *i, double timeout);
/* For a collected owner: request the stop, never block; the isle is freed
 * when its thread is done with it. */
void isle_abandon(isle *i);
void isle_stats_get(isle *i, isle_stats *out);
int isle_is_closed(const isle *i);
int isle_close_mode(const isle *i); /* 0 drain, 1 cancel */
int isle_live_count(void);          /* isles whose thread has not ended */
/* Bumped in a child process by every fork(): objects made under an older
 * generation belong to the parent and must not be used (fork.c). */
int isle_fork_generation(void);

/* ---- shared states (state.c) ------------------------------------------------
 * A lua_State with no thread of its own (lua-mtstates' model): whichever
 * thread calls it runs its callback on itself, under the state's call lock.
 * Bytes in, bytes out: the caller's encoded arguments are read by the
 * state's dispatcher (lua/isle/state.lua) through its isle_state_io, and its
 * encoded results are copied into the caller's isle_state_out before the
 * lock is let go. References: every Lua object on a state holds one; the
 * owning ones are also counted as owners, and the last owner to go closes
 * the state (at once, or when the call running then ends). */
typedef struct isle_state isle_state;

/* Return codes of the state calls beyond the common ones. */
enum {
    ISLE_STATE_EREENTRY = 20,  /* this thread is inside that state's callback */
    ISLE_STATE_EAMBIGUOUS = 21 /* two live states have that name */
};

typedef struct isle_state_io {
    const char *args; /* the caller's arguments, during a call */
    size_t args_len;
    const char *results; /* the dispatcher's results, until the call ends */
    size_t results_len;
    /* The references the bytes name by index (shared buffers, channels,
     * tokens: isle_msg.refs), each side's in a message of its own: the
     * caller's (read only, NULL when none) during the call; the results'
     * one the dispatcher made (or NULL), which the core hands to the
     * caller's isle_state_out, or frees if the results are not delivered. */
    const isle_msg *args_refs;
    isle_msg *results_refs;
} isle_state_io;

/* Where a call's results land: the caller's own growable buffer. */
typedef struct isle_state_out {
    char *data;
    size_t len;
    size_t cap;
    isle_mem *mem;  /* charged for `cap` (isle_state_out_charge), or NULL */
    isle_msg *refs; /* the results' references (isle_state_io.results_refs), or
                           NULL: the caller's to free once decoded (else the next
                           call or isle_state_out_free does) */
} isle_state_out;

typedef struct isle_state_config {
    const char *name; /* may be NULL */
    const char *path; /* package.path of the new state */
    const char *cpath;
    char *errbuf; /* why booting failed (ISLE_EINVAL), cut to errcap - 1 bytes */
    size_t errcap;
    size_t memory_limit; /* bytes; 0: none (see "memory accounts") */
    isle_mem *charge;    /* the creator's account, charged memory_limit while
                           the state lives (until it closes); may be NULL */
} isle_state_config;

/* A new state, booted (isle_lua_new, then lua/isle/state.lua's dispatcher)
 * but not listed yet: the caller runs its setup with isle_state_call, then
 * isle_state_publish or isle_state_discard. One reference, one owner. Its
 * Lua state allocates through an account of its own (isle_state_mem), with
 * cfg->memory_limit as its limit, as an isle's does. NULL with *err =
 * ISLE_ENOMEM when it cannot be made (also: the memory_limit does not fit
 * under cfg->charge's, or is too small for the booted state), ISLE_EINVAL
 * when its Lua side failed to boot (cfg->errbuf says why). */
isle_state *isle_state_new(const isle_state_config *cfg, int *err);
/* The live state named cfg->name with one more reference and owner
 * (*created = 0), or, when there is none, a new one as isle_state_new makes
 * it (*created = 1; the caller runs setup, then publishes or discards it).
 * While another caller's new state of that name is being set up it waits,
 * at most `timeout` s (< 0: for ever); NULL then with *err: ISLE_ETIMEOUT
 * (still being set up), ISLE_STATE_EAMBIGUOUS, ISLE_STATE_EREENTRY (this
 * thread is setting it up), or those of isle_state_new. */
isle_state *isle_state_singleton(const isle_state_config *cfg, double timeout, int *err,
                                 int *created);
void isle_state_publish(isle_state *s); /* setup ran: lookups find it now */
void isle_state_discard(isle_state *s); /* setup failed: closed, and waiting singletons retry */
/* A retained reference to a live state by id (name NULL) or name; NULL with
 * *err = ISLE_ENOENT (none) or ISLE_STATE_EAMBIGUOUS. */
isle_state *isle_state_lookup(int64_t id, const char *name, int *err);
void isle_state_retain(isle_state *s);
void isle_state_release(isle_state *s); /* accepts NULL */
/* An owner lets go (its reference stays): the last one closes the state, at
 * once or, if a call runs, when that call ends. Never blocks. */
void isle_state_disown(isle_state *s);
int64_t isle_state_id(const isle_state *s);
const char *isle_state_name(const isle_state *s); /* "" when unnamed */
int isle_state_is_closed(const isle_state *s);
isle_sig *isle_state_sig(isle_state *s);
int64_t isle_state_intr_id(isle_state *s); /* interrupt id of the state's code */
isle_state_io *isle_state_io_of(isle_state *s);
isle_mem *isle_state_mem(isle_state *s); /* the state's account */
/* Runs the state's dispatcher on the calling thread with the `in_len` bytes
 * at `in` and copies its results into `out`: takes the call lock, waiting at
 * most `timeout` s (0: only if free now; < 0: for ever), and lets it go
 * before returning. ISLE_OK (results in `out`; a core failure is text tagged
 * ISLE_WIRE_CORE there), ISLE_ETIMEOUT (busy: nothing ran), ISLE_ECLOSED,
 * ISLE_STATE_EREENTRY (nothing ran), ISLE_ENOMEM (it ran; its results are
 * lost). */
int isle_state_call(isle_state *s, double timeout, const char *in, size_t in_len,
                    isle_state_out *out);
/* The same, the bytes at `in` naming by index the references `refs`
 * carries (a message the caller keeps and frees; may be NULL). */
int isle_state_call_refs(isle_state *s, double timeout, const char *in, size_t in_len,
                         const isle_msg *refs, isle_state_out *out);
/* For callers that must not block their thread (an isle's job): a task that
 * ends when the call lock is next let go (or the state closes), retained for
 * the caller, to await before trying again; NULL with *err = ISLE_OK when
 * the lock is free now (try again at once), or ISLE_ECLOSED, ISLE_ENOMEM. */
isle_task *isle_state_watch(isle_state *s, int *err);
/* Takes back a watch whose waiter gave up (1 if it was still there). */
int isle_state_unwatch(isle_state *s, isle_task *t);
/* Closes the state (lua_close of its Lua state) if no call runs: ISLE_OK
 * (also when closed already), ISLE_EBUSY (a call runs on another thread),
 * ISLE_STATE_EREENTRY (this thread is inside its callback). */
int isle_state_close(isle_state *s);
int isle_state_count(void); /* live (listed) states */
isle_state_out *isle_state_out_new(void);
void isle_state_out_free(isle_state_out *o); /* accepts NULL */
/* The buffer's capacity is charged to account `a` (a capped caller's) from
 * now until it is freed; growth that does not fit under `a`'s user limit
 * fails the call with ISLE_ENOMEM. Call before the first use. No-op for a
 * NULL account or one without a limit. */
void isle_state_out_charge(isle_state_out *o, isle_mem *a);
/* ---- memory accounts (mem.c) --------------------------------------------- */
/* Every isle's Lua state allocates through an account that counts the bytes
 * LuaJIT asked for (the sum collectgarbage("count") reports). With a
 * memory_limit it refuses growth past the limit of the mode its state is
 * in, and LuaJIT raises "not enough memory" where the state allocated. The
 * account is installed once the state is built (an allocation that fails
 * inside lua_newstate crashes LuaJIT), so a new state boots in mode OFF:
 *   ISLE_MEM_OFF   no limit (boot, teardown)
 *   ISLE_MEM_CORE  memory_limit itself: isle's own bookkeeping in the state
 *   ISLE_MEM_USER  memory_limit less a reserve (a sixteenth, 64 KiB to
 *                  1 MiB) kept for the bookkeeping that reports a failure:
 *                  user code, and the encoding of what it sends and returns
 * C memory charged to the account (isle_msg_charge, isle_task_charge_results)
 * counts against the same limits. Garbage counts until collected: past a mark
 * the account raises the state's signal flag and isle_mem_gc_wanted says 1;
 * the state then collects in full and calls isle_mem_collected. The mode,
 * the request and the collection belong to the state's own thread;
 * isle_mem_used and isle_mem_limit may be read from any thread. */
enum { ISLE_MEM_OFF = 0, ISLE_MEM_CORE = 1, ISLE_MEM_USER = 2 };
typedef void *(*isle_mem_allocf)(void *ud, void *ptr, size_t osize, size_t nsize);
isle_mem *isle_mem_new(size_t limit); /* 0: count only */
void isle_mem_retain(isle_mem *a);
void isle_mem_release(isle_mem *a); /* accepts NULL */
isle_mem *isle_mem_of(isle *i);     /* the isle's account */
/* The lua_Alloc of a state with account `ud`, wrapping `f`/`fud` as set by
 * isle_mem_wrap (with `heap`: what the state holds already, and `sig`: the
 * signal block to raise for a collection, may be NULL). */
void *isle_mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void isle_mem_wrap(isle_mem *a, isle_mem_allocf f, void *fud, size_t heap, isle_sig *sig);
void isle_mem_unwrap(isle_mem *a);           /* the state is gone: heap 0, mode OFF */
int isle_mem_enforce(isle_mem *a, int mode); /* returns the previous mode */
size_t isle_mem_used(isle_mem *a);           /* heap + charged bytes; 0 for NULL */
size_t isle_mem_limit(isle_mem *a);          /* 0: none */
/* The least memory_limit that leaves a state holding `used` bytes 64 KiB
 * under its user limit: below it an isle is refused at spawn. */
size_t isle_mem_minimum(size_t used);
int isle_mem_gc_wanted(isle_mem *a);
void isle_mem_collected(isle_mem *a);
/* Charge `n` C bytes: 1, or 0 if past the user limit (nothing charged).
 * Always 1 for NULL or an account without a limit (nothing charged). */
int isle_mem_charge(isle_mem *a, size_t n);
void isle_mem_uncharge(isle_mem *a, size_t n);

/* ---- channels (chan.c) ------------------------------------------------- */
/* A bounded many-producer many-consumer queue of messages, alive as long as
 * its references (a message that carries it in `refs`, isle_chan_ref,
 * holds one). Waits are wake-and-retry: with `waiter` not NULL, a push on a
 * full channel or a pop on an empty one returns ISLE_EBUSY and a new task
 * slot in *waiter (retained for the caller) that ends when it is worth
 * trying again (a value or room arrived, or the channel closed); the caller
 * waits on it however it waits on tasks, releases it, and tries again. A
 * caller that stops waiting calls isle_chan_unwait first. Lock order: a
 * channel's lock comes before the task lock. */
typedef struct isle_chan isle_chan;
enum { ISLE_CHAN_CAP_MAX = 1 << 24 };
isle_chan *isle_chan_new(size_t capacity); /* NULL: ENOMEM or capacity not in 1..CAP_MAX */
/* The ring (capacity slots of a pointer and a double) is charged to account
 * `a` (a capped creator's) until the channel is freed: 1, or 0 if it does
 * not fit under `a`'s user limit (nothing charged). 1 for a NULL account or
 * one without a limit. Call right after isle_chan_new. (The messages queued
 * in it are charged to their pushers: isle_msg_charge.) */
int isle_chan_charge(isle_chan *ch, isle_mem *a);
void isle_chan_retain(isle_chan *ch);
void isle_chan_release(isle_chan *ch); /* accepts NULL */
/* The slot that stands for `ch` in a message's refs (not retained), and
 * back: the channel whose slot `t` is, retained, or NULL if it is none. */
isle_task *isle_chan_ref(isle_chan *ch);
isle_chan *isle_chan_of_ref(isle_task *t);
/* ISLE_OK: queued, `m` is the channel's now. ISLE_ECLOSED, ISLE_EBUSY (full;
 * see above), ISLE_ENOMEM: `m` still belongs to the caller. */
int isle_chan_push(isle_chan *ch, isle_msg *m, isle_task **waiter);
/* The same for a number, carried inline with no message (nor allocation). */
int isle_chan_push_num(isle_chan *ch, double num, isle_task **waiter);
/* ISLE_OK: *out is the oldest message, the caller's to free, or NULL when
 * the oldest value is a number (then in *num). ISLE_ECLOSED: closed and
 * empty. ISLE_EBUSY (empty; see above), ISLE_ENOMEM. */
int isle_chan_pop(isle_chan *ch, isle_msg **out, double *num, isle_task **waiter);
/* Takes back a waiter whose caller gives up (1 if it was still waiting); a
 * waiter already woken passes its wake on to the next one. Does not
 * release the caller's reference. */
int isle_chan_unwait(isle_chan *ch, isle_task *waiter);
/* Later pushes fail; queued messages can still be popped; wakes every waiter. */
void isle_chan_close(isle_chan *ch);
int isle_chan_is_closed(isle_chan *ch);
size_t isle_chan_len(isle_chan *ch); /* queued now (a snapshot) */
size_t isle_chan_cap(isle_chan *ch);
/* Spins (for at most isle_get_spin() s) until the channel looks non-empty,
 * or with `for_room` not full: 1 if it does (try again), 0 if the spin ran
 * out (wait). Closing does not end it early. */
int isle_chan_spin(isle_chan *ch, int for_room);

/* ---- shared buffers (buf.c) -------------------------------------------- */
/* Reference-counted C memory that every state it is passed to sees at the
 * same address: `count` elements of `elem_size` bytes of the C type named
 * `type` (a name each receiving state resolves with its own ffi). Alive as
 * long as its references (a message that carries it in `refs`,
 * isle_buf_ref, holds one, as for a channel). Nothing here orders access to
 * the bytes: users synchronise (the isle_atomic_* helpers). */
typedef struct isle_buf isle_buf;
enum { ISLE_BUF_TYPE_MAX = 128 }; /* the longest type name, with its NUL */
/* Zero-filled, aligned to `align` (a power of two up to 4096; at least 16).
 * One reference. NULL on ENOMEM, or for an empty or too long type name, a
 * zero elem_size or count, a size that overflows, a bad alignment. */
isle_buf *isle_buf_new(const char *type, size_t elem_size, size_t count, size_t align);
/* The bytes are charged to account `a` (a capped creator's) until the
 * buffer is freed: 1, or 0 if they do not fit under `a`'s user limit
 * (nothing charged). 1 for a NULL account or one without a limit. Call right
 * after isle_buf_new. */
int isle_buf_charge(isle_buf *b, isle_mem *a);
void isle_buf_retain(isle_buf *b);
void isle_buf_release(isle_buf *b); /* accepts NULL */
/* Releases the buffer whose isle_buf_data is `data` (accepts NULL): a
 * finalizer for a state's pointer to the bytes, which holds a reference. */
void isle_buf_release_data(void *data);
/* The slot that stands for `b` in a message's refs (not retained), and
 * back: the buffer whose slot `t` is, retained, or NULL if it is none. */
isle_task *isle_buf_ref(isle_buf *b);
isle_buf *isle_buf_of_ref(isle_task *t);
void *isle_buf_data(isle_buf *b);
size_t isle_buf_size(const isle_buf *b);  /* bytes */
size_t isle_buf_count(const isle_buf *b); /* elements */
size_t isle_buf_elem_size(const isle_buf *b);
const char *isle_buf_type(const isle_buf *b);
/* Buffers allocated and not yet freed in this process (a leak check, as
 * isle_task_live_count; their anchors count as tasks there too). */
int isle_buf_live_count(void);
/* Sequentially consistent atomics on plain integers (a buffer's elements,
 * naturally aligned): add returns the value before; cas returns 1 if `*p`
 * held `expected` and now holds `desired`. */
int32_t isle_atomic_add32(int32_t *p, int32_t delta);
int64_t isle_atomic_add64(int64_t *p, int64_t delta);
int32_t isle_atomic_load32(const int32_t *p);
int64_t isle_atomic_load64(const int64_t *p);
void isle_atomic_store32(int32_t *p, int32_t v);
void isle_atomic_store64(int64_t *p, int64_t v);
int isle_atomic_cas32(int32_t *p, int32_t expected, int32_t desired);
int isle_atomic_cas64(int64_t *p, int64_t expected, int64_t desired);

/* ---- pools (pool.c) ------------------------------------------------------ */
/* One bounded queue of call messages (a channel) served by the isles of the
 * pool, whose signal blocks it keeps for isle_pool_stats; alive as long as
 * its references, like a channel (isle_pool_ref). Listed for lookups from
 * isle_pool_new until isle_pool_close; the owner (the one reference
 * isle_pool_new returns) holds it while listed. Lock order: registry lock ->
 * pool lock -> signal-block lock (never with the queue's). */
typedef struct isle_pool isle_pool;
/* NULL with *err: ISLE_EINVAL (capacity not in 1..ISLE_CHAN_CAP_MAX, or a
 * name an open pool has), ISLE_ENOMEM. `name` may be NULL. */
isle_pool *isle_pool_new(size_t capacity, const char *name, int *err);
/* A member isle's signal block (retained): its counters from now on count
 * in isle_pool_stats. ISLE_OK or ISLE_ENOMEM. */
int isle_pool_add(isle_pool *p, isle_sig *sig);
void isle_pool_retain(isle_pool *p);
void isle_pool_release(isle_pool *p);           /* accepts NULL */
isle_task *isle_pool_ref(isle_pool *p);         /* as isle_chan_ref */
isle_pool *isle_pool_of_ref(isle_task *t);      /* as isle_chan_of_ref */
isle_chan *isle_pool_queue(isle_pool *p);       /* not retained */
int64_t isle_pool_id(const isle_pool *p);       /* never reused within a process */
const char *isle_pool_name(const isle_pool *p); /* "" when unnamed */
size_t isle_pool_size(isle_pool *p);            /* members added */
/* A retained open pool by id (name NULL) or name, or NULL. */
isle_pool *isle_pool_lookup(int64_t id, const char *name);
/* Unlists it and closes its queue (later pushes fail; what is queued stays
 * for the isles). Idempotent. Stopping the isles is the owner's business. */
void isle_pool_close(isle_pool *p);
void isle_pool_disown(isle_pool *p); /* close, then release; accepts NULL */
int isle_pool_is_closed(isle_pool *p);
/* Sums of the members' counters since they joined, the longest-running
 * task among them, and the queue's length added to `queued`. */
void isle_pool_stats(isle_pool *p, isle_stats *out);

/* ---- isle's own modules, precompiled once per process ------------------ */
/* Bytecode for module `name`, found by require in every state an isle starts
 * afterwards. The first blob for a name wins (ISLE_EINVAL after that). */
int isle_preload_set(const char *name, const char *data, size_t len);
int isle_preload_count(void);

#ifdef __cplusplus
}
#endif
#endif
