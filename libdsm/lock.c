/* SPDX-License-Identifier: MIT */
/*
 * lock.c - global locks (DESIGN.md 2, 4.3): messages, not spins on shared pages. A dsm_lock_t may sit anywhere in
 * shared memory; the home node of its page keeps its state (holder, FIFO queue of waiters) in a table keyed by
 * the lock's offset in the shared range. Each waiting thread has a slot here, named in the request by a cookie
 * (slot index and generation) that the grant must echo exactly.
 *
 *   LOCK_REQ  node -> home   u64 offset, u64 cookie, u8 try
 *   LOCK_GRANT home -> node  u64 offset, u64 cookie, u8 granted (0 only for a try that found it held)
 *   UNLOCK    node -> home   u64 offset (channel REL, credit.c)
 *   UNLOCK_ACK home -> node  u64 offset: gives the release credit back
 *   LOCK_RESET node -> home  u64 offset (REL; answered by UNLOCK_ACK): dsm_lock_init and dsm_lock_destroy
 *          forget whatever state the home kept for that address (a lock destroyed while held, memory reused)
 *   SYNC_WAIT node -> home u64 offset, u64 cookie, u8 kind, u64 arg: a thread waits at a dsm_barrier_t (arg: its
 *          count) or a dsm_cond_t (arg: the sequence number it read under the lock); answered by LOCK_GRANT
 *          (granted 0: usage error, e.g. counts that differ)
 *   COND_SIGNAL node -> home u64 offset, u64 seq, u8 all (REL; answered by UNLOCK_ACK)
 * LOCK_REQ and SYNC_WAIT travel on the REQ channel: a waiting request holds its credit until the grant.
 *
 * The same table keeps barriers and condition variables (kind tells them apart). A barrier's home counts the
 * arrivals of a generation and wakes them all at the count. A condition variable's sequence number is a word of
 * the dsm_cond_t, bumped by dsm_fetch_add at each signal: a waiter reads it before it unlocks, so a signal its
 * wait has not reached the home yet carries a larger number and the home wakes the late waiter at once (a
 * spurious wake-up, as pthreads allows) rather than losing the signal.
 *
 * Data written under the lock reaches the next holder through coherence: the writer's pages are recalled from
 * it when the next holder touches them, after its unlock message was sent.
 * Waits for a lock have no timeout (a holder may compute for long); a lost node fails the job stop.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/error.h"
#include "libdsm/log.h"
#include "libdsm/wait.h"
#include "libdsm/region.h"
#include "transport/wire.h"

#define LOCK_MAGIC 0x016b636f6c6d7364ull /* "dsmlock\1" */
#define LOCK_CREATED 1u

#define BARRIER_MAGIC 0x0172626d7364ull   /* "dsmbr\1" */
#define COND_MAGIC 0x01646e6f636d7364ull  /* "dsmcond\1" */

enum { AM_LOCK_REQ = 20, AM_LOCK_GRANT = 21, AM_UNLOCK = 22, AM_UNLOCK_ACK = 23, AM_LOCK_RESET = 24,
       AM_SYNC_WAIT = 25, AM_COND_SIGNAL = 26 };
enum { KIND_LOCK = 0, KIND_BARRIER = 1, KIND_COND = 2 };

_Static_assert(sizeof(dsm_lock_t) <= 40, "dsm_lock_t must fit in a pthread_mutex_t");
_Static_assert(sizeof(dsm_barrier_t) <= 32, "dsm_barrier_t must fit in a pthread_barrier_t");
_Static_assert(sizeof(dsm_cond_t) <= 48, "dsm_cond_t must fit in a pthread_cond_t");

struct bar { /* the view of a dsm_barrier_t's bytes */
    uint64_t magic;
    uint64_t count;
};

struct cnd { /* the view of a dsm_cond_t's bytes */
    uint64_t magic;
    uint64_t seq; /* signals so far; changed only with dsm_fetch_add */
};

struct lk { /* the view of a dsm_lock_t's bytes */
    uint64_t magic;
    uint64_t flags;
};

/* ---- at the home ---- */

struct waiter {
    struct waiter *next;
    int node;
    uint64_t cookie;
    uint64_t seq; /* a condition variable's waiter: the sequence number it read */
};

struct hlock {
    struct hlock *next;
    uint64_t off;
    int kind;
    int held;
    int holder;
    uint64_t count;   /* barrier: its count (0 until the first arrival); cond: the largest sequence signaled */
    uint64_t arrived; /* barrier: arrivals in this generation */
    struct waiter *head, *tail;
};

#define HBUCKETS 1024
static struct hlock *table[HBUCKETS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

/* The state kept for the object at off, created (of that kind) when create is set. */
static struct hlock *hlock_find(uint64_t off, int create, int kind)
{
    struct hlock **b = &table[(off >> 3) % HBUCKETS];
    for (struct hlock *h = *b; h; h = h->next)
        if (h->off == off)
            return h;
    if (!create)
        return NULL;
    struct hlock *h = calloc(1, sizeof *h);
    if (!h)
        dsm_fail_stop(-1, "out of memory for a lock's queue");
    h->off = off;
    h->kind = kind;
    h->next = *b;
    *b = h;
    return h;
}

static void send_grant(int node, uint64_t off, uint64_t cookie, int granted);

static void queue_waiter(struct hlock *h, int src, uint64_t cookie, uint64_t seq)
{
    struct waiter *w = calloc(1, sizeof *w);
    if (!w)
        dsm_fail_stop(-1, "out of memory for a lock's queue");
    w->node = src;
    w->cookie = cookie;
    w->seq = seq;
    if (h->tail)
        h->tail->next = w;
    else
        h->head = w;
    h->tail = w;
}

static const char *const kind_name[] = {"lock", "barrier", "condition variable"};

/* An object used as another kind than the one its home knows it as (a lock's memory waited on as a barrier). */
static int kind_mismatch(const struct hlock *h, int src, int kind)
{
    if (h->kind == kind)
        return 0;
    dsm_err("node %d used the %s at %p as a %s", src, kind_name[h->kind], (void *)(dsm_region.app + h->off),
            kind_name[kind]);
    return 1;
}

/* A request at the home. Table locked. */
static void home_request(int src, uint64_t off, uint64_t cookie, int try_only)
{
    struct hlock *h = hlock_find(off, 1, KIND_LOCK);
    if (kind_mismatch(h, src, KIND_LOCK)) {
        send_grant(src, off, cookie, 0);
        return;
    }
    if (!h->held) {
        h->held = 1;
        h->holder = src;
        send_grant(src, off, cookie, 1);
        return;
    }
    if (try_only) {
        send_grant(src, off, cookie, 0);
        return;
    }
    queue_waiter(h, src, cookie, 0);
}

/* Wake every waiter of h whose sequence number is below seq (all of them for a barrier); only the first when
 * one_only. Table locked. */
static void wake_waiters(struct hlock *h, uint64_t seq, int one_only)
{
    struct waiter **wp = &h->head, *last = NULL;
    while (*wp) {
        struct waiter *w = *wp;
        if (w->seq >= seq) {
            last = w;
            wp = &w->next;
            continue;
        }
        *wp = w->next;
        send_grant(w->node, h->off, w->cookie, 1);
        free(w);
        if (one_only)
            break;
    }
    /* The tail is the last waiter kept, or stays when the loop stopped early. */
    if (!*wp)
        h->tail = last;
}

/* A thread waits at a barrier or a condition variable. Table locked. */
static void home_sync_wait(int src, uint64_t off, uint64_t cookie, int kind, uint64_t arg)
{
    struct hlock *h = hlock_find(off, 1, kind);
    if (kind_mismatch(h, src, kind)) {
        send_grant(src, off, cookie, 0);
        return;
    }
    if (kind == KIND_COND) {
        if (h->count > arg) /* signaled after the waiter read the sequence: wake it now */
            send_grant(src, off, cookie, 1);
        else
            queue_waiter(h, src, cookie, arg);
        return;
    }
    if (h->arrived == 0)
        h->count = arg;
    if (arg != h->count) {
        dsm_err("node %d waits at the barrier at %p with count %llu, others with %llu", src,
                (void *)(dsm_region.app + off), (unsigned long long)arg, (unsigned long long)h->count);
        send_grant(src, off, cookie, 0);
        return;
    }
    queue_waiter(h, src, cookie, 0);
    if (++h->arrived == h->count) {
        h->arrived = 0;
        wake_waiters(h, 1, 0);
    }
}

/* A signal (or broadcast) of a condition variable: seq is the number it took. Table locked. */
static void home_signal(int src, uint64_t off, uint64_t seq, int all)
{
    struct hlock *h = hlock_find(off, 1, KIND_COND);
    if (kind_mismatch(h, src, KIND_COND))
        return;
    if (seq > h->count)
        h->count = seq;
    wake_waiters(h, seq, !all);
}

/* Table locked. Returns 0, or -1 when src does not hold the lock. */
static int home_unlock(int src, uint64_t off)
{
    struct hlock *h = hlock_find(off, 0, KIND_LOCK);
    if (!h || h->kind != KIND_LOCK || !h->held || h->holder != src)
        return -1;
    struct waiter *w = h->head;
    if (!w) {
        h->held = 0;
        return 0;
    }
    h->head = w->next;
    if (!h->head)
        h->tail = NULL;
    h->holder = w->node;
    send_grant(w->node, off, w->cookie, 1);
    free(w);
    return 0;
}

/* Forget the state kept for a lock. Table locked. Waiters of a lock re-initialized under them are a usage
 * error; they are dropped with the state (and warned about). */
static void home_reset(uint64_t off)
{
    struct hlock **b = &table[(off >> 3) % HBUCKETS];
    for (struct hlock **hp = b; *hp; hp = &(*hp)->next) {
        struct hlock *h = *hp;
        if (h->off != off)
            continue;
        if (h->held || h->head)
            dsm_warn("%s at %p initialized or destroyed while held (node %d) or waited for; its state is dropped",
                     kind_name[h->kind], (void *)(dsm_region.app + off), h->holder);
        *hp = h->next;
        while (h->head) {
            struct waiter *w = h->head;
            h->head = w->next;
            free(w);
        }
        free(h);
        return;
    }
}

/* ---- at the requester ---- */

#define SLOTS 4096
static struct slot {
    uint32_t done;     /* futex word */
    uint32_t gen;
    int granted;
    int busy;
    uint64_t off;      /* what was asked, so a grant must match it */
    int home;
    int try_only; /* a trylock, a barrier or a cond wait: a refusal (granted 0) is a valid answer */
} slots[SLOTS];
static uint32_t slots_freed; /* futex word: bumped when a slot is released */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;

/* A waiting slot for a request of lock off at home; waits while all are taken (more threads waiting than
 * SLOTS). */
static int slot_get(uint64_t off, int home, int try_only)
{
    for (;;) {
        uint32_t seen = __atomic_load_n(&slots_freed, __ATOMIC_ACQUIRE);
        pthread_mutex_lock(&slot_lock);
        int i = -1;
        for (int k = 0; k < SLOTS && i < 0; k++)
            if (!slots[k].busy)
                i = k;
        if (i >= 0) {
            slots[i].busy = 1;
            slots[i].gen++;
            slots[i].off = off;
            slots[i].home = home;
            slots[i].try_only = try_only;
            __atomic_store_n(&slots[i].done, 0, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&slot_lock);
        if (i >= 0)
            return i;
        dsm_wait_change(&slots_freed, seen, 1000);
    }
}

static void slot_put(int i)
{
    pthread_mutex_lock(&slot_lock);
    slots[i].busy = 0;
    pthread_mutex_unlock(&slot_lock);
    __atomic_add_fetch(&slots_freed, 1, __ATOMIC_RELEASE);
    dsm_wake_change(&slots_freed);
}

static void grant_arrived(uint64_t cookie, int granted, int src)
{
    uint32_t i = (uint32_t)cookie, gen = (uint32_t)(cookie >> 32);
    (void)src;
    struct slot *s = &slots[i];
    s->granted = granted;
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
    dsm_wake_change(&s->done);
    (void)gen;
}

/* Does a grant from src for lock off answer a request this node is waiting on, as asked? */
static int grant_valid(uint64_t cookie, int src, uint64_t off, int granted)
{
    uint32_t i = (uint32_t)cookie, gen = (uint32_t)(cookie >> 32);
    if (i >= SLOTS)
        return 0;
    pthread_mutex_lock(&slot_lock);
    const struct slot *sl = &slots[i];
    int ok = sl->busy && sl->gen == gen && !__atomic_load_n(&sl->done, __ATOMIC_ACQUIRE) && sl->off == off &&
             sl->home == src && (granted || sl->try_only);
    pthread_mutex_unlock(&slot_lock);
    return ok;
}

static void send_grant(int node, uint64_t off, uint64_t cookie, int granted)
{
    if (node == dsm_core_rank()) {
        grant_arrived(cookie, granted, node);
        return;
    }
    uint8_t h[17];
    dsm_le64_put(h, off);
    dsm_le64_put(h + 8, cookie);
    h[16] = (uint8_t)granted;
    dsm_credit_answered(node, DSM_CHAN_REQ);
    if (dsm_am_send(node, AM_LOCK_GRANT, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(node, "cannot send a lock grant");
}

/* ---- locks this node holds, so a wrong unlock is refused here rather than at the home ---- */

static uint64_t *held;
static size_t nheld, capheld;
static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;

static int held_add(uint64_t off)
{
    pthread_mutex_lock(&held_lock);
    if (nheld == capheld) {
        size_t cap = capheld ? capheld * 2 : 16;
        uint64_t *n = realloc(held, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&held_lock);
            return DSM_ENOMEM;
        }
        held = n;
        capheld = cap;
    }
    held[nheld++] = off;
    pthread_mutex_unlock(&held_lock);
    return DSM_OK;
}

static int held_remove(uint64_t off)
{
    pthread_mutex_lock(&held_lock);
    int found = 0;
    for (size_t i = 0; i < nheld && !found; i++)
        if (held[i] == off) {
            held[i] = held[--nheld];
            found = 1;
        }
    pthread_mutex_unlock(&held_lock);
    return found;
}

/* ---- messages ---- */

/* The lock offset of a message: inside a coherent page homed at `home`, 8-byte aligned. */
static int lock_off(const uint8_t *hdr, int home, uint64_t *off_p)
{
    uint64_t off = dsm_le64_get(hdr);
    size_t p = off >> DSM_PAGE_SHIFT;
    if (off % 8 || dsm_page_kind(p) != DSM_KIND_COHERENT || dsm_page_home(p) != home)
        return 0;
    *off_p = off;
    return 1;
}

static int on_lock_req(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    uint64_t off;
    if (hl != 17 || len || !lock_off(hdr, dsm_core_rank(), &off) || ((const uint8_t *)hdr)[16] > 1) {
        dsm_err("malformed lock request from node %d", src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REQ) != DSM_OK)
        return DSM_EPROTO;
    pthread_mutex_lock(&table_lock);
    home_request(src, off, dsm_le64_get((const uint8_t *)hdr + 8), ((const uint8_t *)hdr)[16]);
    pthread_mutex_unlock(&table_lock);
    return DSM_OK;
}

/* UNLOCK and LOCK_RESET: the two releases (channel REL), both answered by UNLOCK_ACK. */
static int on_release(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)p;
    const char *what = id == AM_UNLOCK ? "unlock" : "lock reset";
    uint64_t off;
    if (hl != 8 || len || !lock_off(hdr, dsm_core_rank(), &off)) {
        dsm_err("malformed %s from node %d", what, src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REL) != DSM_OK)
        return DSM_EPROTO;
    int rc = 0;
    pthread_mutex_lock(&table_lock);
    if (id == AM_UNLOCK)
        rc = home_unlock(src, off);
    else
        home_reset(off);
    pthread_mutex_unlock(&table_lock);
    if (rc) {
        dsm_err("node %d unlocked a lock it does not hold (offset %llu)", src, (unsigned long long)off);
        return DSM_EPROTO;
    }
    dsm_credit_answered(src, DSM_CHAN_REL);
    return dsm_am_send(src, AM_UNLOCK_ACK, hdr, 8, NULL, 0);
}

static int on_unlock_ack(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    uint64_t off;
    if (hl != 8 || len || !lock_off(hdr, src, &off)) {
        dsm_err("malformed unlock ack from node %d", src);
        return DSM_EPROTO;
    }
    dsm_credit_return(src, DSM_CHAN_REL);
    return DSM_OK;
}

static int on_grant(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    uint64_t off, cookie = hl == 17 ? dsm_le64_get((const uint8_t *)hdr + 8) : 0;
    if (hl != 17 || len || !lock_off(hdr, src, &off) || ((const uint8_t *)hdr)[16] > 1 ||
        !grant_valid(cookie, src, off, ((const uint8_t *)hdr)[16])) {
        dsm_err("malformed or unexpected lock grant from node %d", src);
        return DSM_EPROTO;
    }
    grant_arrived(cookie, ((const uint8_t *)hdr)[16], src);
    dsm_credit_return(src, DSM_CHAN_REQ);
    return DSM_OK;
}

static int on_sync_wait(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    uint64_t off;
    if (hl != 25 || len || !lock_off(hdr, dsm_core_rank(), &off) || (h[16] != KIND_BARRIER && h[16] != KIND_COND) ||
        (h[16] == KIND_BARRIER && (dsm_le64_get(h + 17) == 0 || dsm_le64_get(h + 17) > UINT32_MAX))) {
        dsm_err("malformed barrier or condition wait from node %d", src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REQ) != DSM_OK)
        return DSM_EPROTO;
    pthread_mutex_lock(&table_lock);
    home_sync_wait(src, off, dsm_le64_get(h + 8), h[16], dsm_le64_get(h + 17));
    pthread_mutex_unlock(&table_lock);
    return DSM_OK;
}

static int on_cond_signal(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    const uint8_t *h = hdr;
    uint64_t off;
    if (hl != 17 || len || !lock_off(hdr, dsm_core_rank(), &off) || h[16] > 1) {
        dsm_err("malformed condition signal from node %d", src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REL) != DSM_OK)
        return DSM_EPROTO;
    pthread_mutex_lock(&table_lock);
    home_signal(src, off, dsm_le64_get(h + 8), h[16]);
    pthread_mutex_unlock(&table_lock);
    dsm_credit_answered(src, DSM_CHAN_REL);
    return dsm_am_send(src, AM_UNLOCK_ACK, hdr, 8, NULL, 0);
}

int dsm_lock_setup(void)
{
    int rc;
    if ((rc = dsm_am_register(AM_LOCK_REQ, on_lock_req, NULL)) || (rc = dsm_am_register(AM_UNLOCK, on_release, NULL)) ||
        (rc = dsm_am_register(AM_LOCK_GRANT, on_grant, NULL)) ||
        (rc = dsm_am_register(AM_UNLOCK_ACK, on_unlock_ack, NULL)) ||
        (rc = dsm_am_register(AM_LOCK_RESET, on_release, NULL)) ||
        (rc = dsm_am_register(AM_SYNC_WAIT, on_sync_wait, NULL)) ||
        (rc = dsm_am_register(AM_COND_SIGNAL, on_cond_signal, NULL)))
        return rc;
    return DSM_OK;
}

void dsm_lock_teardown(void)
{
    for (int b = 0; b < HBUCKETS; b++)
        while (table[b]) {
            struct hlock *h = table[b];
            table[b] = h->next;
            while (h->head) {
                struct waiter *w = h->head;
                h->head = w->next;
                free(w);
            }
            free(h);
        }
    memset(slots, 0, sizeof slots);
    free(held);
    held = NULL;
    nheld = capheld = 0;
}

/* ---- the API ---- */

/* Check the lock and find its offset and home. */
static int lock_where(dsm_lock_t *l, uint64_t *off_p, int *home_p)
{
    size_t p;
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (!l || (uintptr_t)l % 8 || !dsm_region_page(l, &p))
        return DSM_EINVAL;
    /* Reading the magic faults the page in: plain shared memory. */
    if (((volatile struct lk *)l)->magic != LOCK_MAGIC)
        return DSM_EINVAL;
    *off_p = (uint64_t)((uintptr_t)l - (uintptr_t)dsm_region.app);
    *home_p = dsm_page_home(p);
    return DSM_OK;
}

/* Make the home forget any state for the lock at off (a fresh lock starts free). */
static void reset_at_home(uint64_t off, int home)
{
    if (home == dsm_core_rank()) {
        pthread_mutex_lock(&table_lock);
        home_reset(off);
        pthread_mutex_unlock(&table_lock);
        return;
    }
    uint8_t h[8];
    dsm_le64_put(h, off);
    if (dsm_chan_send(home, DSM_CHAN_REL, AM_LOCK_RESET, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(home, "cannot send a lock reset");
}

DSM_API int dsm_lock_init(dsm_lock_t *l)
{
    size_t p;
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (!l || (uintptr_t)l % 8 || !dsm_region_page(l, &p))
        return DSM_EINVAL;
    memset(l, 0, sizeof *l);
    ((volatile struct lk *)l)->magic = LOCK_MAGIC;
    reset_at_home((uint64_t)((uintptr_t)l - (uintptr_t)dsm_region.app), dsm_page_home(p));
    return DSM_OK;
}

static int lock_common(dsm_lock_t *l, int try_only)
{
    uint64_t off;
    int home, rc = lock_where(l, &off, &home);
    if (rc)
        return rc;
    /* Any request may be refused: a trylock of a held lock, or memory the home knows as a barrier or cond. */
    int i = slot_get(off, home, 1);
    uint64_t cookie = (uint64_t)slots[i].gen << 32 | (uint32_t)i;
    if (home == dsm_core_rank()) {
        pthread_mutex_lock(&table_lock);
        home_request(home, off, cookie, try_only);
        pthread_mutex_unlock(&table_lock);
    } else {
        uint8_t h[17];
        dsm_le64_put(h, off);
        dsm_le64_put(h + 8, cookie);
        h[16] = (uint8_t)try_only;
        if (dsm_chan_send(home, DSM_CHAN_REQ, AM_LOCK_REQ, h, sizeof h, NULL, 0) != DSM_OK)
            dsm_fail_stop(home, "cannot send a lock request");
    }
    while (!__atomic_load_n(&slots[i].done, __ATOMIC_ACQUIRE))
        dsm_wait_change(&slots[i].done, 0, 1000);
    int granted = slots[i].granted;
    slot_put(i);
    if (granted && held_add(off) != DSM_OK)
        dsm_fail_stop(-1, "out of memory for the list of held locks");
    return granted ? DSM_OK : try_only ? DSM_EBUSY : DSM_EINVAL;
}

DSM_API int dsm_lock(dsm_lock_t *l)
{
    return lock_common(l, 0);
}

DSM_API int dsm_trylock(dsm_lock_t *l)
{
    return lock_common(l, 1);
}

DSM_API int dsm_unlock(dsm_lock_t *l)
{
    uint64_t off;
    int home, rc = lock_where(l, &off, &home);
    if (rc)
        return rc;
    if (!held_remove(off))
        return DSM_EINVAL; /* this node does not hold it */
    if (home == dsm_core_rank()) {
        pthread_mutex_lock(&table_lock);
        rc = home_unlock(home, off);
        pthread_mutex_unlock(&table_lock);
        return rc ? DSM_EINVAL : DSM_OK;
    }
    uint8_t h[8];
    dsm_le64_put(h, off);
    if (dsm_chan_send(home, DSM_CHAN_REL, AM_UNLOCK, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(home, "cannot send an unlock");
    return DSM_OK;
}

DSM_API int dsm_lock_destroy(dsm_lock_t *l)
{
    if (!l)
        return DSM_OK;
    uint64_t off;
    int home, rc = lock_where(l, &off, &home);
    if (rc)
        return rc;
    if (((volatile struct lk *)l)->flags & LOCK_CREATED) {
        /* Made by dsm_lock_create: collective, and frees it. */
        if ((rc = dsm_barrier()))
            return rc;
        if (dsm_core_rank() == 0)
            ((volatile struct lk *)l)->magic = 0;
        return dsm_dealloc(l);
    }
    ((volatile struct lk *)l)->magic = 0;
    held_remove(off);
    reset_at_home(off, home);
    return DSM_OK;
}

DSM_API dsm_lock_t *dsm_lock_create(void)
{
    dsm_lock_t *l = dsm_alloc(sizeof *l);
    if (!l)
        return NULL;
    if (dsm_core_rank() == 0) {
        dsm_lock_init(l);
        ((volatile struct lk *)l)->flags = LOCK_CREATED;
    }
    int rc = dsm_barrier();
    if (rc) {
        dsm_set_last_error(rc);
        return NULL;
    }
    return l;
}

/* ---- thread-level barriers and condition variables ---- */

/* Check an object of shared memory (8-byte aligned, its first word = magic) and find its offset and home. */
static int object_where(const void *o, uint64_t magic, uint64_t *off_p, int *home_p)
{
    size_t p;
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (!o || (uintptr_t)o % 8 || !dsm_region_page(o, &p))
        return DSM_EINVAL;
    if (*(const volatile uint64_t *)o != magic)
        return DSM_EINVAL;
    *off_p = (uint64_t)((uintptr_t)o - (uintptr_t)dsm_region.app);
    *home_p = dsm_page_home(p);
    return DSM_OK;
}

/* Fill the first words of an object (rest zero) and make its home forget any earlier state there. */
static int object_init(void *o, size_t size, uint64_t magic, uint64_t second)
{
    size_t p;
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (!o || (uintptr_t)o % 8 || !dsm_region_page(o, &p) || !dsm_region_page((char *)o + size - 1, &p))
        return DSM_EINVAL;
    memset(o, 0, size);
    ((volatile uint64_t *)o)[1] = second;
    ((volatile uint64_t *)o)[0] = magic;
    dsm_region_page(o, &p);
    reset_at_home((uint64_t)((uintptr_t)o - (uintptr_t)dsm_region.app), dsm_page_home(p));
    return DSM_OK;
}

/* Queue a wait at the home; returns the slot to wait on. */
static int sync_wait_send(uint64_t off, int home, int kind, uint64_t arg)
{
    int i = slot_get(off, home, 1);
    uint64_t cookie = (uint64_t)slots[i].gen << 32 | (uint32_t)i;
    if (home == dsm_core_rank()) {
        pthread_mutex_lock(&table_lock);
        home_sync_wait(home, off, cookie, kind, arg);
        pthread_mutex_unlock(&table_lock);
        return i;
    }
    uint8_t h[25];
    dsm_le64_put(h, off);
    dsm_le64_put(h + 8, cookie);
    h[16] = (uint8_t)kind;
    dsm_le64_put(h + 17, arg);
    if (dsm_chan_send(home, DSM_CHAN_REQ, AM_SYNC_WAIT, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(home, "cannot send a barrier or condition wait");
    return i;
}

/* Wait for the home's answer in slot i: DSM_OK when woken, DSM_EINVAL when refused. */
static int sync_wait_slot(int i)
{
    while (!__atomic_load_n(&slots[i].done, __ATOMIC_ACQUIRE))
        dsm_wait_change(&slots[i].done, 0, 1000);
    int granted = slots[i].granted;
    slot_put(i);
    return granted ? DSM_OK : DSM_EINVAL;
}

DSM_API int dsm_barrier_init(dsm_barrier_t *b, unsigned count)
{
    if (count == 0)
        return DSM_EINVAL;
    return object_init(b, sizeof *b, BARRIER_MAGIC, count);
}

DSM_API int dsm_barrier_wait(dsm_barrier_t *b)
{
    uint64_t off;
    int home, rc = object_where(b, BARRIER_MAGIC, &off, &home);
    if (rc)
        return rc;
    uint64_t count = ((const volatile struct bar *)b)->count;
    return sync_wait_slot(sync_wait_send(off, home, KIND_BARRIER, count));
}

DSM_API int dsm_barrier_destroy(dsm_barrier_t *b)
{
    uint64_t off;
    int home, rc = object_where(b, BARRIER_MAGIC, &off, &home);
    if (rc)
        return rc;
    ((volatile struct bar *)b)->magic = 0;
    reset_at_home(off, home);
    return DSM_OK;
}

DSM_API int dsm_cond_init(dsm_cond_t *c)
{
    return object_init(c, sizeof *c, COND_MAGIC, 0);
}

DSM_API int dsm_cond_wait(dsm_cond_t *c, dsm_lock_t *l)
{
    uint64_t off, loff;
    int home, lhome, rc = object_where(c, COND_MAGIC, &off, &home);
    if (rc || (rc = lock_where(l, &loff, &lhome)))
        return rc;
    /* The caller must hold l: then no signal can come between reading seq and the unlock unseen. */
    pthread_mutex_lock(&held_lock);
    int holds = 0;
    for (size_t k = 0; k < nheld && !holds; k++)
        holds = held[k] == loff;
    pthread_mutex_unlock(&held_lock);
    if (!holds)
        return DSM_EINVAL;
    uint64_t seq = ((const volatile struct cnd *)c)->seq;
    int i = sync_wait_send(off, home, KIND_COND, seq);
    if ((rc = dsm_unlock(l)))
        return rc; /* another thread of this node unlocked l meanwhile (a usage error): slot i stays taken */
    int woke = sync_wait_slot(i);
    if ((rc = dsm_lock(l)))
        return rc;
    return woke;
}

static int cond_wake(dsm_cond_t *c, int all)
{
    uint64_t off;
    int home, rc = object_where(c, COND_MAGIC, &off, &home);
    if (rc)
        return rc;
    uint64_t seq = dsm_fetch_add(&((struct cnd *)c)->seq, 1) + 1;
    if (home == dsm_core_rank()) {
        pthread_mutex_lock(&table_lock);
        home_signal(home, off, seq, all);
        pthread_mutex_unlock(&table_lock);
        return DSM_OK;
    }
    uint8_t h[17];
    dsm_le64_put(h, off);
    dsm_le64_put(h + 8, seq);
    h[16] = (uint8_t)all;
    if (dsm_chan_send(home, DSM_CHAN_REL, AM_COND_SIGNAL, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(home, "cannot send a condition signal");
    return DSM_OK;
}

DSM_API int dsm_cond_signal(dsm_cond_t *c)
{
    return cond_wake(c, 0);
}

DSM_API int dsm_cond_broadcast(dsm_cond_t *c)
{
    return cond_wake(c, 1);
}

DSM_API int dsm_cond_destroy(dsm_cond_t *c)
{
    uint64_t off;
    int home, rc = object_where(c, COND_MAGIC, &off, &home);
    if (rc)
        return rc;
    ((volatile struct cnd *)c)->magic = 0;
    reset_at_home(off, home);
    return DSM_OK;
}
