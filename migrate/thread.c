/* SPDX-License-Identifier: MIT */
/*
 * thread.c - dsm threads (DESIGN.md 4.6): user-level contexts whose stack and control block are shared memory,
 * run by carrier pthreads; remote spawn, join from any node, migration.
 *
 * A dsm thread has a global slot: its creator's rank times MIG_PER_NODE plus an index in the creator's table,
 * which keeps, in private memory, what a join needs (generation, state, return value, the joiner). Its stack
 * block (dsm_malloc'ed at the creator, so homed there) ends with the control block (struct tcb).
 *
 * Every node has at most one carrier per slot, started when the slot's thread first arrives and kept, idle,
 * when it leaves. A carrier's stack and TLS sit at the same address on every node (a range reserved at a fixed
 * place, slot by slot), so an address of errno or of another TLS variable that compiled code keeps across
 * dsm_migrate still names the TLS of the carrier the thread now runs on. Carriers run with the job's
 * stack-protector canary and pointer guard (rank 0 draws them), so frames and setjmp buffers made on one node
 * are valid on another; a carrier puts its own back before it returns into glibc. This file is built with
 * -fno-stack-protector: the carrier's entry changes the canary under its own frame.
 *
 * Messages (the progress thread only hands work to carriers: it never touches a control block, which could
 * fault):
 *   RUN     any -> node        u32 slot, u64 offset of the control block: start or resume the thread there
 *   DONE    node -> creator    u32 slot, u32 generation, u64 return value
 *   JOIN    joiner -> creator  u32 slot, u32 generation, u32 cookie
 *   JOINED  creator -> joiner  u32 cookie, i32 status, u64 return value
 *   EXIT    node -> 0          i32 status: exit() was called in a dsm thread
 *   PARKED  node -> creator    u32 slot, u32 generation: the thread waits in dsm_checkpoint (ckpt.c)
 *
 * exit() is interposed (exported from libdsm): in a dsm thread its atexit handlers would run with the job's
 * pointer guard, not the process's, so the call is forwarded to rank 0, where an ordinary thread calls the real
 * exit, as if rank 0 had called it; the other nodes then stop as after any lost node. From any other thread it
 * is the real exit.
 */
#include "config.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/error.h"
#include "libdsm/log.h"
#include "libdsm/region.h"
#include "libdsm/stats.h"
#include "migrate/mig.h"
#include "transport/wire.h"

#if defined(__SANITIZE_ADDRESS__)
#define MIG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MIG_ASAN 1
#endif
#endif
#ifdef MIG_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

enum { AM_RUN = 40, AM_DONE = 41, AM_JOIN = 42, AM_JOINED = 43, AM_EXIT = 44, AM_PARKED = 45 };

#define MIG_PER_NODE 512u            /* dsm threads a node may have created and not joined */
#define MIG_STACK (256u << 10)       /* a dsm thread's stack block, shared memory, control block at its end */
#define MIG_TCB_SPACE 512u           /* room for the control block at the end of the block */
#define MIG_SLOT_BYTES (320u << 10)  /* a carrier's private memory: alternate signal stack, then stack + TLS */
#define MIG_ALT_BYTES (64u << 10)
#define MIG_JOIN_WAITS 1024u
#define TCB_MAGIC 0x01626374646d7364ull /* "dsmdtcb\1" */

enum { ACT_NONE = 0, ACT_MIGRATE, ACT_EXIT, ACT_EXIT_PROCESS, ACT_PARK };
enum { REC_FREE = 0, REC_LIVE, REC_DONE };

struct tcb {
    uint64_t magic;
    uint64_t id;     /* generation << 32 | slot */
    void *sp;        /* saved context while the thread does not run */
    void *(*fn)(void *);
    void *arg;
    void *ret;
    int32_t action;  /* why the thread switched to its carrier */
    int32_t target;  /* ACT_MIGRATE: where to */
    sigset_t mask;   /* the thread's signal mask while it does not run */
};
_Static_assert(sizeof(struct tcb) <= MIG_TCB_SPACE, "control block too large");

struct carrier {
    pthread_t th;
    int started;
    struct carrier *next_started; /* the list of started carriers (teardown), under mig.lock */
    uint32_t mail;     /* futex word: bumped by the progress thread when it hands the slot's thread over */
    uint32_t seen;
    uint64_t next_off; /* the control block handed over */
    void *sp;          /* the carrier's own context while a dsm thread runs */
    struct tcb *t;     /* the thread running now, or NULL */
};

struct rec { /* at the creator, per slot it owns */
    uint32_t gen;
    int state;
    uint32_t done;  /* futex word of a local joiner */
    int joining;
    int joiner;     /* remote joiner's node, or -1 */
    int parked;     /* 1 + the node where the thread waits in dsm_checkpoint, or 0 */
    uint32_t cookie;
    void *ret;
    void *block;
};

struct jwait { /* at a remote joiner */
    uint32_t done;
    int busy;
    int creator;
    int status;
    void *ret;
};

static struct {
    int up;
    int ok;             /* same code at the same addresses everywhere: migration and remote spawn allowed */
    char why[400];
    uint64_t canary, guard;
    uint8_t *area;      /* carriers' private memory, [nslots * MIG_SLOT_BYTES] at the same address everywhere */
    size_t area_len;
    size_t nslots;
    struct carrier *car;  /* [nslots], touched only for slots in use */
    struct carrier *started;
    pthread_mutex_t lock; /* car[].started, rec[], jw[] */
    struct rec rec[MIG_PER_NODE];
    struct jwait jw[MIG_JOIN_WAITS];
    uint32_t stop;
    uint64_t code0;     /* node 0's code hash (checkpoints carry it) */
    uint64_t root_off;  /* dsm_root's word, node 0's dsm_malloc */
} mig = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local struct carrier *cur;

/* The carrier of the calling thread, read afresh: never inlined, so no caller keeps a TLS address of a carrier
 * the thread has since left. */
__attribute__((noinline)) static struct carrier *carrier_self(void)
{
    struct carrier *c = cur;
    __asm__ volatile("" : "+r"(c)::"memory");
    return c;
}

/* glibc's x86-64 thread control block: the stack-protector canary at %fs:0x28, the pointer guard at %fs:0x30. */
static uint64_t tcb_canary(void)
{
    uint64_t v;
    __asm__ volatile("movq %%fs:0x28, %0" : "=r"(v));
    return v;
}

static uint64_t tcb_guard(void)
{
    uint64_t v;
    __asm__ volatile("movq %%fs:0x30, %0" : "=r"(v));
    return v;
}

static void tcb_set(uint64_t canary, uint64_t guard)
{
    __asm__ volatile("movq %0, %%fs:0x28\n\tmovq %1, %%fs:0x30" ::"r"(canary), "r"(guard) : "memory");
}

static uint8_t *slot_mem(size_t slot)
{
    return mig.area + slot * MIG_SLOT_BYTES;
}

static struct tcb *tcb_at(uint64_t off)
{
    return (struct tcb *)(dsm_region.app + off);
}

static uint64_t tcb_off(const struct tcb *t)
{
    return (uint64_t)((uintptr_t)t - (uintptr_t)dsm_region.app);
}

static uint8_t *tcb_stack_bottom(struct tcb *t)
{
    return (uint8_t *)t + MIG_TCB_SPACE - MIG_STACK;
}

/* Switch contexts; under ASan, tell it the stack changes (its fiber API). */
static void switch_to(void **save, void *next, const void *bottom, size_t size)
{
#ifdef MIG_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, bottom, size);
    dsm_mig_switch(save, next);
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#else
    (void)bottom;
    (void)size;
    dsm_mig_switch(save, next);
#endif
}

/* ---- running on a carrier ---- */

static void send_or_stop(int to, uint8_t id, const uint8_t *h, size_t hl, const char *what)
{
    if (dsm_am_send(to, id, h, hl, NULL, 0) != DSM_OK)
        dsm_fail_stop(to, what);
}

static void send_run(int node, uint32_t slot, uint64_t off)
{
    uint8_t h[12];
    dsm_le32_put(h, slot);
    dsm_le64_put(h + 4, off);
    send_or_stop(node, AM_RUN, h, sizeof h, "cannot send a dsm thread");
}

/* Resume t on carrier c until it leaves this node or ends. */
static void carrier_run(struct carrier *c, struct tcb *t)
{
    size_t slot = (size_t)(c - mig.car);
    if (t->magic != TCB_MAGIC || (uint32_t)t->id != slot) {
        dsm_err("a dsm thread arrived for slot %zu with a damaged control block", slot);
        return;
    }
    /* The active part of the stack, written from here on: make it present in one batch, so system calls
     * given pointers to locals see no EFAULT. */
    uint8_t *sp = t->sp;
    if (dsm_prefetch(sp, (size_t)((uint8_t *)t + sizeof *t - sp), DSM_WRITE) != DSM_OK)
        dsm_fail_stop(-1, "a dsm thread's saved stack pointer is outside its stack");
    uint8_t *bottom = tcb_stack_bottom(t);
#ifdef MIG_ASAN
    ASAN_UNPOISON_MEMORY_REGION(bottom, (size_t)((uint8_t *)t - bottom));
#endif
    sigset_t own;
    pthread_sigmask(SIG_SETMASK, &t->mask, &own);
    c->t = t;
    switch_to(&c->sp, t->sp, bottom, (size_t)((uint8_t *)t - bottom));
    c->t = NULL;
#ifdef MIG_ASAN
    /* The thread's frames here are left behind: no stale poison on memory other threads or dsm_malloc reuse. */
    ASAN_UNPOISON_MEMORY_REGION(bottom, (size_t)((uint8_t *)t - bottom));
#endif
    pthread_sigmask(SIG_SETMASK, &own, NULL);
    uint64_t id = t->id, off = tcb_off(t);
    int action = t->action, target = t->target;
    void *ret = t->ret;
    t->action = ACT_NONE;
    /* From here the thread belongs to its next node: t is not touched again. */
    if (action == ACT_MIGRATE) {
        dsm_ctr_inc(DSM_CTR_MIGRATION);
        send_run(target, (uint32_t)slot, off);
    } else if (action == ACT_EXIT) {
        uint8_t h[16];
        dsm_le32_put(h, (uint32_t)slot);
        dsm_le32_put(h + 4, (uint32_t)(id >> 32));
        dsm_le64_put(h + 8, (uint64_t)(uintptr_t)ret);
        send_or_stop((int)(slot / MIG_PER_NODE), AM_DONE, h, sizeof h, "cannot report a dsm thread's end");
    } else if (action == ACT_PARK) {
        uint8_t h[8];
        dsm_le32_put(h, (uint32_t)slot);
        dsm_le32_put(h + 4, (uint32_t)(id >> 32));
        send_or_stop((int)(slot / MIG_PER_NODE), AM_PARKED, h, sizeof h, "cannot report a parked dsm thread");
    } else if (action == ACT_EXIT_PROCESS) {
        uint8_t h[4];
        dsm_le32_put(h, (uint32_t)(uintptr_t)ret);
        send_or_stop(0, AM_EXIT, h, sizeof h, "cannot forward exit() to node 0");
    } else {
        dsm_fail_stop(-1, "a dsm thread switched to its carrier without a reason");
    }
}

static void *carrier_main(void *arg)
{
    struct carrier *c = arg;
    size_t slot = (size_t)(c - mig.car);
    /* Faults on the shared stack need a signal stack of their own. */
    stack_t ss = {.ss_sp = slot_mem(slot), .ss_size = MIG_ALT_BYTES};
    if (sigaltstack(&ss, NULL) < 0)
        dsm_fail_stop(-1, "sigaltstack failed for a carrier thread");
    uint64_t own_canary = tcb_canary(), own_guard = tcb_guard();
    tcb_set(mig.canary, mig.guard);
    cur = c;
    for (;;) {
        uint32_t m = __atomic_load_n(&c->mail, __ATOMIC_ACQUIRE);
        if (m == c->seen) {
            if (__atomic_load_n(&mig.stop, __ATOMIC_ACQUIRE))
                break;
            dsm_futex_wait(&c->mail, m, 1000);
            continue;
        }
        c->seen = m;
        carrier_run(c, tcb_at(__atomic_load_n(&c->next_off, __ATOMIC_ACQUIRE)));
    }
    cur = NULL;
    tcb_set(own_canary, own_guard);
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, NULL);
    return NULL;
}

/* Hand the control block at off to slot's carrier here, starting the carrier on its first use. Progress thread
 * (or the sender itself for this node). */
static int hand_over(uint32_t slot, uint64_t off)
{
    struct carrier *c = &mig.car[slot];
    __atomic_store_n(&c->next_off, off, __ATOMIC_RELEASE);
    __atomic_add_fetch(&c->mail, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&mig.lock);
    if (!c->started) {
        uint8_t *mem = slot_mem(slot);
        pthread_attr_t a;
        int rc = pthread_attr_init(&a);
        if (!rc)
            rc = pthread_attr_setstack(&a, mem + MIG_ALT_BYTES, MIG_SLOT_BYTES - MIG_ALT_BYTES);
        if (!rc)
            rc = pthread_create(&c->th, &a, carrier_main, c);
        pthread_attr_destroy(&a);
        if (rc) {
            pthread_mutex_unlock(&mig.lock);
            dsm_err("cannot start a carrier thread: %s", strerror(rc));
            dsm_fail_stop(-1, "cannot start a carrier thread for an arriving dsm thread");
        }
        c->started = 1;
        c->next_started = mig.started;
        mig.started = c;
    }
    pthread_mutex_unlock(&mig.lock);
    dsm_futex_wake(&c->mail);
    return DSM_OK;
}

#define MIG_PROBE (24u << 10)

void dsm_mig_probe(void)
{
    struct carrier *c = cur;
    if (!c || !c->t)
        return;
    uint8_t *sp = __builtin_frame_address(0), *bottom = tcb_stack_bottom(c->t);
    if (sp < bottom || sp > (uint8_t *)c->t) /* on the alternate signal stack: the fault path */
        return;
    for (uint8_t *p = sp - 256; p >= bottom && p > sp - MIG_PROBE; p -= DSM_PAGE_SIZE)
        __asm__ volatile("movb $0, (%0)" ::"r"(p) : "memory"); /* dead memory below the frames */
}

/* ---- leaving a context ---- */

/* Switch from the calling dsm thread to its carrier, which acts on t->action. */
static void leave(struct carrier *c, struct tcb *t)
{
    pthread_sigmask(SIG_SETMASK, NULL, &t->mask);
    uint8_t *stack = slot_mem((size_t)(c - mig.car)) + MIG_ALT_BYTES;
    switch_to(&t->sp, c->sp, stack, MIG_SLOT_BYTES - MIG_ALT_BYTES);
}

DSM_API void dsm_thread_exit(void *ret)
{
    struct carrier *c = carrier_self();
    if (!c || !c->t) {
        dsm_err("usage error: dsm_thread_exit called outside a dsm thread");
        abort();
    }
    struct tcb *t = c->t;
    t->ret = ret;
    t->action = ACT_EXIT;
    leave(c, t);
    abort(); /* a finished thread is never resumed */
}

typedef void (*exit_fn_t)(int);

static exit_fn_t real_exit(void)
{
    exit_fn_t fn;
    *(void **)&fn = dlsym(RTLD_NEXT, "exit");
    return fn ? fn : _exit;
}

DSM_API void exit(int status)
{
    struct carrier *c = carrier_self();
    if (c && c->t) {
        struct tcb *t = c->t;
        t->ret = (void *)(uintptr_t)(uint32_t)status;
        t->action = ACT_EXIT_PROCESS;
        leave(c, t);
    }
    real_exit()(status);
    _exit(status); /* not reached */
}

static void *exit_main(void *arg)
{
    real_exit()((int)(intptr_t)arg);
    return NULL;
}

static int on_exit_msg(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    if (hl != 4 || len || dsm_core_rank() != 0) {
        dsm_err("malformed exit message from node %d", src);
        return DSM_EPROTO;
    }
    int status = (int)dsm_le32_get(hdr);
    dsm_info("a dsm thread on node %d called exit(%d): node 0 exits with it", src, status);
    /* A thread of the process, not this one: the progress thread must go on serving until the end. */
    pthread_t th;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &a, exit_main, (void *)(intptr_t)status);
    pthread_attr_destroy(&a);
    if (rc)
        dsm_fail_stop(-1, "cannot start a thread for exit()");
    return DSM_OK;
}

static void thread_entry(struct tcb *t)
{
#ifdef MIG_ASAN
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
    dsm_thread_exit(t->fn(t->arg));
}

DSM_API int dsm_migrate(int node)
{
    if (!mig.up)
        return DSM_ENOTINIT;
    struct carrier *c = carrier_self();
    if (!c || !c->t) {
        dsm_err("dsm_migrate: the caller is not a dsm thread (start one with dsm_thread_create)");
        return DSM_EINVAL;
    }
    if (node < 0 || node >= dsm_core_size()) {
        dsm_err("dsm_migrate: node %d is not in [0, %d)", node, dsm_core_size());
        return DSM_EINVAL;
    }
    if (node == dsm_core_rank())
        return DSM_OK;
    if (!mig.ok) {
        dsm_err("dsm_migrate: %s", mig.why);
        return DSM_EMISMATCH;
    }
    struct tcb *t = c->t;
    t->target = node;
    t->action = ACT_MIGRATE;
    leave(c, t);
    /* Resumed on node: the caller's TLS is now that carrier's (see the top of this file). */
    __asm__ volatile("" ::: "memory");
    return DSM_OK;
}

DSM_API int dsm_current_node(void)
{
    return dsm_rank();
}

/* ---- create and join ---- */

DSM_API int dsm_thread_create(dsm_thread_t *th, int node, void *(*fn)(void *), void *arg)
{
    if (!mig.up)
        return DSM_ENOTINIT;
    if (!th || !fn || node < 0 || node >= dsm_core_size()) {
        dsm_err("dsm_thread_create: %s", !th || !fn ? "NULL thread or function" : "node out of range");
        return DSM_EINVAL;
    }
    if (node != dsm_core_rank() && !mig.ok) {
        dsm_err("dsm_thread_create on node %d: %s", node, mig.why);
        return DSM_EMISMATCH;
    }
    pthread_mutex_lock(&mig.lock);
    uint32_t i = 0;
    while (i < MIG_PER_NODE && mig.rec[i].state != REC_FREE)
        i++;
    if (i == MIG_PER_NODE) {
        pthread_mutex_unlock(&mig.lock);
        dsm_err("dsm_thread_create: this node has %u dsm threads not joined yet, the most it keeps", MIG_PER_NODE);
        return DSM_EBUSY;
    }
    struct rec *r = &mig.rec[i];
    r->state = REC_LIVE;
    if (++r->gen == 0)
        r->gen = 1;
    r->done = 0;
    r->joining = 0;
    r->joiner = -1;
    r->parked = 0;
    uint32_t gen = r->gen, slot = (uint32_t)dsm_core_rank() * MIG_PER_NODE + i;
    pthread_mutex_unlock(&mig.lock);

    uint8_t *block = dsm_malloc(MIG_STACK);
    if (!block) {
        pthread_mutex_lock(&mig.lock);
        r->state = REC_FREE;
        pthread_mutex_unlock(&mig.lock);
        return DSM_ENOMEM;
    }
    r->block = block;
    struct tcb *t = (struct tcb *)(block + MIG_STACK - MIG_TCB_SPACE);
    t->id = (uint64_t)gen << 32 | slot;
    t->fn = fn;
    t->arg = arg;
    t->action = ACT_NONE;
    pthread_sigmask(SIG_SETMASK, NULL, &t->mask);
    /* The first context (ctx.S's frame): the creator's FP control state, then the registers, r12 = entry,
     * r13 = t, and the return into dsm_mig_boot. 16-byte alignment after that return, as at a call. */
    uint64_t *sp = (uint64_t *)((uintptr_t)t - 88);
    uint32_t mxcsr;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(cw));
    sp[0] = cw;
    sp[1] = mxcsr;
    sp[2] = sp[3] = 0;                        /* r15, r14 */
    sp[4] = (uint64_t)(uintptr_t)t;           /* r13 */
    sp[5] = (uint64_t)(uintptr_t)thread_entry; /* r12 */
    sp[6] = sp[7] = 0;                        /* rbx, rbp (0 ends frame-pointer walks) */
    sp[8] = (uint64_t)(uintptr_t)dsm_mig_boot;
    t->sp = sp;
    t->magic = TCB_MAGIC;
    th->id = t->id;
    send_run(node, slot, tcb_off(t));
    return DSM_OK;
}

static void send_joined(int to, uint32_t cookie, int status, void *ret)
{
    uint8_t h[16];
    dsm_le32_put(h, cookie);
    dsm_le32_put(h + 4, (uint32_t)status);
    dsm_le64_put(h + 8, (uint64_t)(uintptr_t)ret);
    send_or_stop(to, AM_JOINED, h, sizeof h, "cannot answer a join");
}

/* The record of a thread this node created, or NULL. mig.lock held. */
static struct rec *rec_of(uint32_t slot, uint32_t gen)
{
    if (slot / MIG_PER_NODE != (uint32_t)dsm_core_rank() || gen == 0)
        return NULL;
    struct rec *r = &mig.rec[slot % MIG_PER_NODE];
    return r->state != REC_FREE && r->gen == gen ? r : NULL;
}

DSM_API int dsm_thread_join(dsm_thread_t th, void **ret)
{
    if (!mig.up)
        return DSM_ENOTINIT;
    uint32_t slot = (uint32_t)th.id, gen = (uint32_t)(th.id >> 32);
    int creator = (int)(slot / MIG_PER_NODE);
    struct carrier *c = carrier_self();
    if (creator >= dsm_core_size() || gen == 0 || (c && c->t && c->t->id == th.id)) {
        dsm_err("dsm_thread_join: %s", gen == 0 || creator >= dsm_core_size() ? "not a dsm thread" :
                                                                                 "a thread cannot join itself");
        return DSM_EINVAL;
    }
    void *val;
    if (creator == dsm_core_rank()) {
        pthread_mutex_lock(&mig.lock);
        struct rec *r = rec_of(slot, gen);
        int bad = !r || r->joining;
        if (!bad)
            r->joining = 1;
        pthread_mutex_unlock(&mig.lock);
        if (bad) {
            dsm_err("dsm_thread_join: the thread is unknown, already joined, or being joined");
            return DSM_EINVAL;
        }
        /* No timeout: the thread may compute for long; a lost node stops the job. */
        while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
            dsm_futex_wait(&r->done, 0, 1000);
        pthread_mutex_lock(&mig.lock);
        val = r->ret;
        void *block = r->block;
        r->state = REC_FREE;
        pthread_mutex_unlock(&mig.lock);
        dsm_free(block);
    } else {
        pthread_mutex_lock(&mig.lock);
        uint32_t k = 0;
        while (k < MIG_JOIN_WAITS && mig.jw[k].busy)
            k++;
        if (k == MIG_JOIN_WAITS) {
            pthread_mutex_unlock(&mig.lock);
            dsm_err("dsm_thread_join: %u joins already wait on this node", MIG_JOIN_WAITS);
            return DSM_EBUSY;
        }
        struct jwait *w = &mig.jw[k];
        w->busy = 1;
        w->done = 0;
        w->creator = creator;
        pthread_mutex_unlock(&mig.lock);
        uint8_t h[12];
        dsm_le32_put(h, slot);
        dsm_le32_put(h + 4, gen);
        dsm_le32_put(h + 8, k);
        send_or_stop(creator, AM_JOIN, h, sizeof h, "cannot send a join");
        while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE))
            dsm_futex_wait(&w->done, 0, 1000);
        int status = w->status;
        val = w->ret;
        pthread_mutex_lock(&mig.lock);
        w->busy = 0;
        pthread_mutex_unlock(&mig.lock);
        if (status != DSM_OK) {
            dsm_err("dsm_thread_join: node %d does not know the thread, or it is already joined", creator);
            return status;
        }
    }
    if (ret)
        *ret = val;
    return DSM_OK;
}

/* ---- messages ---- */

static int on_run(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    uint32_t slot = hl == 12 ? dsm_le32_get(h) : 0;
    uint64_t off = hl == 12 ? dsm_le64_get(h + 4) : 0;
    size_t pg;
    if (hl != 12 || len || slot >= mig.nslots || off % 64 || off >= dsm_region.size ||
        !dsm_region_page(dsm_region.app + off, &pg) || pg < dsm_region.arena_first ||
        dsm_page_home(pg) != (int)(slot / MIG_PER_NODE)) {
        dsm_err("malformed dsm thread message from node %d", src);
        return DSM_EPROTO;
    }
    return hand_over(slot, off);
}

static int on_done(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    if (hl != 16 || len) {
        dsm_err("malformed dsm thread end from node %d", src);
        return DSM_EPROTO;
    }
    void *ret = (void *)(uintptr_t)dsm_le64_get(h + 8);
    pthread_mutex_lock(&mig.lock);
    struct rec *r = rec_of(dsm_le32_get(h), dsm_le32_get(h + 4));
    if (!r || r->state != REC_LIVE) {
        pthread_mutex_unlock(&mig.lock);
        dsm_err("node %d reported the end of a dsm thread that is not running", src);
        return DSM_EPROTO;
    }
    r->ret = ret;
    r->state = REC_DONE;
    void *block = NULL;
    int joiner = r->joiner;
    if (joiner >= 0) { /* a remote joiner waits: answer it and forget the thread */
        block = r->block;
        r->state = REC_FREE;
        send_joined(joiner, r->cookie, DSM_OK, ret);
    }
    pthread_mutex_unlock(&mig.lock);
    if (block)
        dsm_free(block);
    else {
        __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
        dsm_futex_wake(&r->done);
    }
    return DSM_OK;
}

static int on_join(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    if (hl != 12 || len) {
        dsm_err("malformed join from node %d", src);
        return DSM_EPROTO;
    }
    uint32_t cookie = dsm_le32_get(h + 8);
    void *block = NULL;
    pthread_mutex_lock(&mig.lock);
    struct rec *r = rec_of(dsm_le32_get(h), dsm_le32_get(h + 4));
    if (!r || r->joining) {
        pthread_mutex_unlock(&mig.lock);
        send_joined(src, cookie, DSM_EINVAL, NULL);
        return DSM_OK;
    }
    r->joining = 1;
    if (r->state == REC_DONE) {
        block = r->block;
        r->state = REC_FREE;
        send_joined(src, cookie, DSM_OK, r->ret);
    } else {
        r->joiner = src;
        r->cookie = cookie;
    }
    pthread_mutex_unlock(&mig.lock);
    if (block)
        dsm_free(block);
    return DSM_OK;
}

static int on_joined(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    uint32_t k = hl == 16 ? dsm_le32_get(h) : MIG_JOIN_WAITS;
    pthread_mutex_lock(&mig.lock);
    struct jwait *w = k < MIG_JOIN_WAITS ? &mig.jw[k] : NULL;
    int ok = !len && w && w->busy && w->creator == src && !w->done;
    pthread_mutex_unlock(&mig.lock);
    if (!ok) {
        dsm_err("malformed or unexpected join answer from node %d", src);
        return DSM_EPROTO;
    }
    w->status = (int32_t)dsm_le32_get(h + 4);
    w->ret = (void *)(uintptr_t)dsm_le64_get(h + 8);
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    dsm_futex_wake(&w->done);
    return DSM_OK;
}

static int on_parked(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    if (hl != 8 || len) {
        dsm_err("malformed parked message from node %d", src);
        return DSM_EPROTO;
    }
    pthread_mutex_lock(&mig.lock);
    struct rec *r = rec_of(dsm_le32_get(h), dsm_le32_get(h + 4));
    int ok = r && r->state == REC_LIVE && !r->parked;
    if (ok)
        r->parked = 1 + src;
    pthread_mutex_unlock(&mig.lock);
    if (!ok) {
        dsm_err("node %d parked a dsm thread that is not running", src);
        return DSM_EPROTO;
    }
    return DSM_OK;
}

/* ---- for checkpoints (ckpt.c) ---- */

int dsm_mig_park(void)
{
    struct carrier *c = carrier_self();
    if (!c || !c->t)
        return 0;
    struct tcb *t = c->t;
    t->action = ACT_PARK;
    leave(c, t);
    __asm__ volatile("" ::: "memory");
    return 1;
}

int dsm_mig_busy(void)
{
    int n = 0;
    pthread_mutex_lock(&mig.lock);
    for (unsigned i = 0; i < MIG_PER_NODE; i++)
        n += mig.rec[i].state == REC_LIVE && !mig.rec[i].parked;
    pthread_mutex_unlock(&mig.lock);
    return n;
}

int dsm_mig_fresh(void)
{
    int fresh = 1;
    pthread_mutex_lock(&mig.lock);
    for (unsigned i = 0; i < MIG_PER_NODE; i++)
        fresh &= mig.rec[i].state == REC_FREE;
    fresh &= mig.started == NULL;
    pthread_mutex_unlock(&mig.lock);
    return fresh;
}

void dsm_mig_resume_parked(void)
{
    for (uint32_t i = 0; i < MIG_PER_NODE; i++) {
        pthread_mutex_lock(&mig.lock);
        struct rec *r = &mig.rec[i];
        int node = r->state == REC_LIVE ? r->parked - 1 : -1;
        if (node >= 0)
            r->parked = 0;
        uint64_t off = (uint64_t)((uint8_t *)r->block + MIG_STACK - MIG_TCB_SPACE - dsm_region.app);
        pthread_mutex_unlock(&mig.lock);
        if (node >= 0)
            send_run(node, (uint32_t)dsm_core_rank() * MIG_PER_NODE + i, off);
    }
}

/* The threads this node created and nobody joined yet, as records of 32 bytes: u32 index, u32 generation,
 * u32 state, i32 parked, u64 block offset, u64 return value. */
size_t dsm_mig_save_threads(uint8_t **buf_p)
{
    uint8_t *b = malloc(MIG_PER_NODE * 32 + 1), *o = b;
    if (!b)
        return 0;
    pthread_mutex_lock(&mig.lock);
    for (uint32_t i = 0; i < MIG_PER_NODE; i++) {
        struct rec *r = &mig.rec[i];
        if (r->state == REC_FREE)
            continue;
        dsm_le32_put(o, i);
        dsm_le32_put(o + 4, r->gen);
        dsm_le32_put(o + 8, (uint32_t)r->state);
        dsm_le32_put(o + 12, (uint32_t)r->parked);
        dsm_le64_put(o + 16, (uint64_t)((uint8_t *)r->block - dsm_region.app));
        dsm_le64_put(o + 24, (uint64_t)(uintptr_t)r->ret);
        o += 32;
    }
    pthread_mutex_unlock(&mig.lock);
    *buf_p = b;
    return (size_t)(o - b) + 1; /* + 1: an empty table is not an error */
}

int dsm_mig_check_threads(const uint8_t *b, size_t len)
{
    if (len % 32 != 1)
        return 0;
    for (size_t k = 0; k + 32 <= len; k += 32) {
        uint32_t i = dsm_le32_get(b + k), st = dsm_le32_get(b + k + 8), parked = dsm_le32_get(b + k + 12);
        uint64_t off = dsm_le64_get(b + k + 16);
        size_t pg;
        if (i >= MIG_PER_NODE || (st != REC_LIVE && st != REC_DONE) || dsm_le32_get(b + k + 4) == 0 ||
            (st == REC_LIVE && (parked < 1 || parked > (uint32_t)dsm_core_size())) || off % DSM_PAGE_SIZE ||
            off >= dsm_region.size || !dsm_region_page(dsm_region.app + off, &pg) ||
            dsm_page_home(pg) != dsm_core_rank())
            return 0;
    }
    return 1;
}

void dsm_mig_load_threads(const uint8_t *b, size_t len)
{
    pthread_mutex_lock(&mig.lock);
    for (size_t k = 0; k + 32 <= len; k += 32) {
        struct rec *r = &mig.rec[dsm_le32_get(b + k)];
        memset(r, 0, sizeof *r);
        r->gen = dsm_le32_get(b + k + 4);
        r->state = (int)dsm_le32_get(b + k + 8);
        r->parked = (int)dsm_le32_get(b + k + 12);
        r->joiner = -1;
        r->block = dsm_region.app + dsm_le64_get(b + k + 16);
        r->ret = (void *)(uintptr_t)dsm_le64_get(b + k + 24);
        r->done = r->state == REC_DONE;
    }
    pthread_mutex_unlock(&mig.lock);
}

void dsm_mig_secrets(uint64_t *canary, uint64_t *guard, uint64_t *code0, uint64_t *root_off)
{
    *canary = mig.canary;
    *guard = mig.guard;
    *code0 = mig.code0;
    *root_off = mig.root_off;
}

void dsm_mig_adopt(uint64_t canary, uint64_t guard)
{
    mig.canary = canary;
    mig.guard = guard;
}

DSM_API void **dsm_root(void)
{
    if (!mig.up) {
        dsm_set_last_error(DSM_ENOTINIT);
        return NULL;
    }
    return (void **)(dsm_region.app + mig.root_off);
}

/* ---- setup ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Fold every loaded object (the vDSO aside: it is the kernel's) into the hash: its load address and its
 * GNU build-id, or its segments' layout when it has none. */
static int object_hash(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    uint64_t *h = data;
    if (info->dlpi_addr && info->dlpi_addr == (ElfW(Addr))getauxval(AT_SYSINFO_EHDR))
        return 0;
    *h = fnv(*h, &info->dlpi_addr, sizeof info->dlpi_addr);
    int found = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD) {
            *h = fnv(*h, &ph->p_vaddr, sizeof ph->p_vaddr);
            *h = fnv(*h, &ph->p_memsz, sizeof ph->p_memsz);
        }
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *n = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr), *end = n + ph->p_memsz;
        while (n + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)n;
            size_t name = (nh->n_namesz + 3) & ~3u, desc = (nh->n_descsz + 3) & ~3u;
            const uint8_t *d = n + sizeof *nh + name;
            if (d + nh->n_descsz > end)
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && memcmp(n + sizeof *nh, "GNU", 4) == 0) {
                *h = fnv(*h, d, nh->n_descsz);
                found = 1;
            }
            n = d + desc;
        }
    }
    if (!found)
        *h = fnv(*h, info->dlpi_name, strlen(info->dlpi_name));
    return 0;
}

struct mig_card { /* what each node says at dsm_init */
    uint64_t code;   /* hash of the loaded objects and their addresses */
    uint64_t canary; /* rank 0's are the job's */
    uint64_t guard;
    uint64_t area;   /* where the carriers' memory is, 0 when it could not be reserved */
    uint64_t root;   /* node 0: offset of dsm_root's word */
};

int dsm_mig_setup(void)
{
    int size = dsm_core_size(), rank = dsm_core_rank();
    mig.stop = 0;
    mig.nslots = (size_t)size * MIG_PER_NODE;
    mig.car = calloc(mig.nslots, sizeof *mig.car);
    if (!mig.car)
        return DSM_ENOMEM;
    memset(mig.rec, 0, sizeof mig.rec);
    memset(mig.jw, 0, sizeof mig.jw);
    /* Carriers' memory right below the shared range, at the same address on every node. */
    mig.area_len = mig.nslots * MIG_SLOT_BYTES;
    uint8_t *want = dsm_region.app - ((mig.area_len + (1u << 21) - 1) & ~(size_t)((1u << 21) - 1));
    void *a = mmap(want, mig.area_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (a != MAP_FAILED && a != want) {
        munmap(a, mig.area_len);
        a = MAP_FAILED;
    }
    mig.area = a == MAP_FAILED ? NULL : a;
    if (!mig.area)
        dsm_warn("cannot reserve the carriers' memory at %p: %s", (void *)want, strerror(errno));

    struct mig_card me = {.area = (uint64_t)(uintptr_t)mig.area};
    uint64_t h = 0xcbf29ce484222325ull;
    dl_iterate_phdr(object_hash, &h);
    me.code = h;
    if (rank == 0) {
        uint64_t r[2];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            return DSM_ESYS;
        me.canary = r[0] & ~(uint64_t)0xff; /* low byte zero, as glibc: string overflows stop at it */
        me.guard = r[1];
        void *root = dsm_malloc_keep(sizeof(void *));
        if (!root)
            return DSM_ENOMEM;
        me.root = (uint64_t)((uint8_t *)root - dsm_region.app);
    }
    void **vals = calloc((size_t)size, sizeof *vals);
    size_t *lens = calloc((size_t)size, sizeof *lens);
    struct mig_card *cards = calloc((size_t)size, sizeof *cards);
    int rc = vals && lens && cards ? DSM_OK : DSM_ENOMEM;
    for (int p = 0; rc == DSM_OK && p < size; p++)
        vals[p] = &cards[p];
    if (rc == DSM_OK)
        rc = dsm_boot_allgather(dsm_core_boot(), "mig", &me, sizeof me, vals, lens, sizeof me);
    for (int p = 0; rc == DSM_OK && p < size; p++)
        if (lens[p] != sizeof me)
            rc = DSM_EPROTO;
    if (rc == DSM_OK) {
        mig.canary = cards[0].canary;
        mig.guard = cards[0].guard;
        mig.code0 = cards[0].code;
        mig.root_off = cards[0].root;
        mig.ok = 1;
        snprintf(mig.why, sizeof mig.why, "migration is available");
        for (int p = 0; p < size && mig.ok; p++) {
            if (cards[p].code != cards[0].code) {
                mig.ok = 0;
                snprintf(mig.why, sizeof mig.why,
                         "node %d runs a different executable or libraries, or loads them at other addresses, than "
                         "node 0; run the same binary everywhere with address randomization off (dsmrun does; under "
                         "mpirun or srun use setarch -R)", p);
            } else if (!cards[p].area || cards[p].area != cards[0].area) {
                mig.ok = 0;
                snprintf(mig.why, sizeof mig.why,
                         "node %d could not reserve the carriers' memory at the address node 0 uses (below DSM_BASE)",
                         p);
            }
        }
        if (!mig.ok)
            dsm_warn("dsm_migrate and remote dsm_thread_create are disabled: %s", mig.why);
    }
    free(vals);
    free(lens);
    free(cards);
    if (rc != DSM_OK)
        return rc;
    if (!mig.area) { /* local threads still run: give this node private carrier memory anywhere */
        a = mmap(NULL, mig.area_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a == MAP_FAILED)
            return DSM_ENOMEM;
        mig.area = a;
    }
    if ((rc = dsm_am_register(AM_RUN, on_run, NULL)) || (rc = dsm_am_register(AM_DONE, on_done, NULL)) ||
        (rc = dsm_am_register(AM_JOIN, on_join, NULL)) || (rc = dsm_am_register(AM_JOINED, on_joined, NULL)) || (rc = dsm_am_register(AM_EXIT, on_exit_msg, NULL)) ||
        (rc = dsm_am_register(AM_PARKED, on_parked, NULL)))
        return rc;
    mig.up = 1;
    return DSM_OK;
}

void dsm_mig_teardown(void)
{
    mig.up = 0;
    __atomic_store_n(&mig.stop, 1, __ATOMIC_RELEASE);
    int left = 0;
    for (struct carrier *c = mig.started; c; c = c->next_started) {
        if (__atomic_load_n(&c->t, __ATOMIC_ACQUIRE) || __atomic_load_n(&c->mail, __ATOMIC_ACQUIRE) != c->seen) {
            left++; /* still runs a dsm thread: it cannot be stopped, and its memory stays */
            pthread_detach(c->th);
            continue;
        }
        dsm_futex_wake(&c->mail);
        pthread_join(c->th, NULL);
    }
    if (left)
        dsm_err("dsm_finalize: %d dsm threads still run; join every dsm thread before dsm_finalize", left);
    else {
        if (mig.area)
            munmap(mig.area, mig.area_len);
        free(mig.car);
    }
    mig.area = NULL;
    mig.car = NULL;
    mig.started = NULL;
    mig.nslots = 0;
}
