/* SPDX-License-Identifier: MIT */
/*
 * dir_msi.c - the home side of coherence: a directory entry per page homed here, and the MSI protocol of
 * DESIGN.md 4.3. The node side (page states, faults, GRANT/INV/RECALL handling) is pg_fault.c.
 *
 * States.
 *   home directory:  U  uncached: only the home's memory is valid, nobody holds the page
 *                    S  shared: the home's memory is valid; the sharers hold read-only copies
 *                    M  modified: the owner holds the only valid copy, read-write
 *   transient (busy): RECALL  waiting for the owner's RECALL_ACK (with the page)
 *                     INV     waiting for acks of every invalidated sharer
 *   node:            I, S, M  (pg_fault.c; application-view protection none, read, read-write)
 * The home's own copy is its memfd page, which is also its application view: the home is in the sharers when
 * its local state is S, the owner when M, neither when I.
 *
 * Transitions (request of node r; "data" = the home's page is sent along):
 *   GETS, U or S        -> S, r joins the sharers, GRANT(S, data)                      serve()
 *   GETS, M (owner o)   -> RECALL(o, keep S); on RECALL_ACK: page stored, S {o, r},
 *                          GRANT(S, data)                                               serve(), on_recall_ack()
 *   GETM, U             -> M owner r, GRANT(M, data)                                    serve()
 *   GETM, S             -> INV to every sharer but r; on the last INV_ACK: M owner r,
 *                          GRANT(M, data unless r was a sharer: an upgrade)             serve(), on_inv_ack()
 *   GETM, M (owner o)   -> RECALL(o, keep I); on RECALL_ACK: page stored, M owner r,
 *                          GRANT(M, data)                                               serve(), on_recall_ack()
 * When the home itself is the sharer or owner to demote, it demotes its own page in place (no message), and a
 * grant to itself carries no data (its memory is the home copy).
 *
 * Invariants (the Promela model tests/model/dsm_msi.pml checks them, with the same state and message names):
 *   1. A page is served by one transaction at a time: requests that find it busy wait in its FIFO queue.
 *   2. State M has exactly one owner and no sharers; S has no owner; U has neither.
 *   3. A write grant is sent only after every other copy is gone (acks counted), so there is one writer.
 *   4. Messages between two nodes arrive in the order sent (per-pair FIFO, a transport guarantee), so a node
 *      always sees its GRANT before any later INV or RECALL of the same page, and no acknowledgement of a grant
 *      is needed.
 * Races and why they are safe:
 *   - r holds S and asks to upgrade while another node's GETM is served first: r is invalidated (INV, I), and
 *     its queued GETM is then served as a miss with data, because the home decides "data or not" from the
 *     directory when it serves the request, not when it arrived.
 *   - Two nodes upgrade at once: invariant 1 orders them; the second is the case above.
 *   - An INV or RECALL crossing a request from the same node: invariant 4 and the queue keep them apart.
 *
 * Direct grants: a request may name the requester's reply slot (transport.h ABI 5); its grant then goes there,
 * to the faulting thread, past the requester's progress thread. That may put the grant ahead of messages this
 * home sent the requester earlier, never of one it sends later (the provider's rule). Earlier ones are safe to
 * overtake: none concerns the same page (an INV or RECALL keeps the entry busy until acknowledged, so the
 * requester handled it before the home serves it again), and for other pages they only ask the requester to give
 * up a copy (INV, RECALL: the write waiting for it has not happened yet) or grant something (a later handling is
 * a slower network). Invariant 4 holds for every message sent after the grant.
 *
 * Locks: a per-entry spin lock; the order is directory entry, then the page's node-side lock (pg_fault.c).
 * Requests from this node's own faulting threads run here directly, in that thread; messages run on the
 * progress thread. Nothing here waits for a remote reply: a transaction that needs one returns and resumes in
 * the handler of the reply. The wait queue uses a fixed pool, so serving a request never allocates.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/region.h"
#include "libdsm/stats.h"
#include "transport/wire.h"

enum { DIR_U = 0, DIR_S = 1, DIR_M = 2 };
enum { BUSY_NONE = 0, BUSY_RECALL = 1, BUSY_INV = 2 };

struct dir {
    uint8_t lock;
    uint8_t state;
    uint8_t busy;
    uint8_t req_mode;   /* the request being served */
    uint8_t req_had;    /* the requester was a sharer when its GETM was served */
    int32_t owner;
    int32_t req;
    uint32_t req_token; /* the requester's reply slot for its grant, or 0 */
    uint32_t acks;      /* invalidations not acknowledged yet */
    uint32_t qhead, qtail;  /* waiting requests: pool indices, 0 = none */
    uint64_t sharers[]; /* a bit per node */
};

struct waiter {
    uint32_t next;
    int32_t node;
    uint32_t token;
    uint8_t mode;
};

/* Requests waiting at this home, all pages together: one per node per page at most (faults coalesce per node),
 * so prefetches of many pages by many nodes can queue many. Reserved, touched only as used. */
#define POOL_SIZE (1u << 24)

/* Negative control for the tests (coh.h): drop every Nth invalidation. Never set by the library itself. */
unsigned dsm_dir_debug_drop_inv;
static unsigned inv_count;

static uint8_t *dirs;       /* npages entries of dir_stride bytes */
static size_t dir_stride, ndirs, words;
static struct waiter *pool; /* [POOL_SIZE]; entry 0 unused */
static uint32_t pool_free;  /* returned entries */
static uint32_t pool_next;  /* entries never used yet start here */
static uint8_t pool_lock;

static struct dir *dir_at(size_t p)
{
    return (struct dir *)(dirs + p * dir_stride);
}

static void spin_lock(uint8_t *l)
{
    for (int spins = 0; __atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE); spins++) {
        if (spins < 100)
            __builtin_ia32_pause();
        else
            sched_yield();
    }
}

static void spin_unlock(uint8_t *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

static int is_sharer(const struct dir *d, int n)
{
    return (d->sharers[n / 64] >> (n % 64)) & 1;
}

static void set_sharer(struct dir *d, int n)
{
    d->sharers[n / 64] |= 1ull << (n % 64);
}

static void clear_sharers(struct dir *d)
{
    memset(d->sharers, 0, words * 8);
}

/* ---- wait queue ---- */

static void enqueue(struct dir *d, int node, int mode, uint32_t token)
{
    spin_lock(&pool_lock);
    uint32_t i = pool_free;
    if (i)
        pool_free = pool[i].next;
    else if (pool_next < POOL_SIZE)
        i = pool_next++;
    spin_unlock(&pool_lock);
    if (!i)
        dsm_fail_stop(-1, "too many page requests waiting at this home (pool exhausted)");
    pool[i] = (struct waiter){.next = 0, .node = node, .token = token, .mode = (uint8_t)mode};
    if (d->qtail)
        pool[d->qtail].next = i;
    else
        d->qhead = i;
    d->qtail = i;
}

static int dequeue(struct dir *d, int *node, int *mode, uint32_t *token)
{
    uint32_t i = d->qhead;
    if (!i)
        return 0;
    d->qhead = pool[i].next;
    if (!d->qhead)
        d->qtail = 0;
    *node = pool[i].node;
    *mode = pool[i].mode;
    *token = pool[i].token;
    spin_lock(&pool_lock);
    pool[i].next = pool_free;
    pool_free = i;
    spin_unlock(&pool_lock);
    return 1;
}

/* ---- sending ---- */

static void send_or_die(int to, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    if (dsm_am_send(to, id, hdr, hl, payload, len) != DSM_OK)
        dsm_fail_stop(to, "cannot send a coherence message");
}

static void grant(size_t p, int to, int mode, int with_data, uint32_t token)
{
    if (to == dsm_core_rank()) {
        if (dsm_pg_grant(p, mode, NULL, 0) != DSM_OK)
            dsm_fail_stop(-1, "internal error: a home granted itself a page it did not ask for");
        return;
    }
    uint8_t h[9];
    dsm_le64_put(h, p);
    h[8] = (uint8_t)mode;
    if (with_data) {
        dsm_ctr_inc(DSM_CTR_PAGE_OUT);
        dsm_stats_page_moved(p);
    }
    dsm_credit_answered(to, DSM_CHAN_REQ);
    int rc = token ? dsm_coh_grant_direct(to, token, h, sizeof h, p, with_data)
             : with_data ? dsm_coh_send_page(to, DSM_AM_GRANT, h, sizeof h, p)
                         : dsm_am_send(to, DSM_AM_GRANT, h, sizeof h, NULL, 0);
    if (rc != DSM_OK)
        dsm_fail_stop(to, "cannot send a coherence message");
}

/* ---- serving ---- */

/* Serve one request; the entry is locked and not busy. Leaves it busy when a reply is needed. */
static void serve(size_t p, struct dir *d, int r, int mode, uint32_t token)
{
    int me = dsm_core_rank(), n = dsm_core_size();
    uint8_t h[9];
    dsm_le64_put(h, p);
    if (d->state == DIR_M && d->owner != r) {
        int o = d->owner;
        int keep = mode == DSM_PG_S ? DSM_PG_S : DSM_PG_I;
        if (o == me) {
            dsm_pg_demote(p, keep);
        } else {
            d->busy = BUSY_RECALL;
            d->req = r;
            d->req_token = token;
            d->req_mode = (uint8_t)mode;
            h[8] = (uint8_t)keep;
            send_or_die(o, DSM_AM_RECALL, h, sizeof h, NULL, 0);
            return;
        }
        /* The home demoted itself: its memory is current. */
        clear_sharers(d);
        if (keep == DSM_PG_S) {
            d->state = DIR_S;
            set_sharer(d, o);
            set_sharer(d, r);
        } else {
            d->state = DIR_M;
            d->owner = r;
        }
        grant(p, r, mode, r != me, token);
        return;
    }
    if (d->state == DIR_M) {
        /* r already owns it (a request that crossed its own grant cannot happen, invariant 4): re-grant. */
        grant(p, r, DSM_PG_M, 0, token);
        return;
    }
    if (mode == DSM_PG_S) {
        d->state = DIR_S;
        set_sharer(d, r);
        grant(p, r, DSM_PG_S, r != me, token);
        return;
    }
    /* GETM on U or S. */
    int had = is_sharer(d, r);
    uint32_t acks = 0;
    /* While the invalidations are out, the sharer bits name exactly the nodes that owe an ack. */
    uint64_t owe[words];
    memset(owe, 0, sizeof owe);
    if (d->state == DIR_S) {
        for (int s = 0; s < n; s++) {
            if (s == r || !is_sharer(d, s))
                continue;
            if (dsm_dir_debug_drop_inv &&
                __atomic_add_fetch(&inv_count, 1, __ATOMIC_RELAXED) % dsm_dir_debug_drop_inv == 0)
                continue; /* the injected bug: s keeps a stale copy */
            if (s == me) {
                dsm_pg_demote(p, DSM_PG_I);
            } else {
                send_or_die(s, DSM_AM_INV, h, 8, NULL, 0);
                dsm_ctr_inc(DSM_CTR_INV_OUT);
                owe[s / 64] |= 1ull << (s % 64);
                acks++;
            }
        }
    }
    memcpy(d->sharers, owe, sizeof owe);
    if (acks) {
        d->busy = BUSY_INV;
        d->acks = acks;
        d->req = r;
        d->req_token = token;
        d->req_mode = DSM_PG_M;
        d->req_had = (uint8_t)had;
        return;
    }
    d->state = DIR_M;
    d->owner = r;
    grant(p, r, DSM_PG_M, !had && r != me, token);
}

/* Serve queued requests until one needs a reply or the queue is empty. Entry locked. */
static void drain(size_t p, struct dir *d)
{
    int r, mode;
    uint32_t token;
    while (!d->busy && dequeue(d, &r, &mode, &token))
        serve(p, d, r, mode, token);
}

void dsm_dir_request(size_t p, int src, int mode, uint32_t token)
{
    struct dir *d = dir_at(p);
    spin_lock(&d->lock);
    if (d->busy || d->qhead)
        enqueue(d, src, mode, token);
    else
        serve(p, d, src, mode, token);
    spin_unlock(&d->lock);
}

void dsm_dir_reset(size_t p, size_t n)
{
    for (size_t i = p; i < p + n; i++) {
        struct dir *d = dir_at(i);
        d->state = DIR_U;
        d->busy = BUSY_NONE;
        d->owner = -1;
        d->acks = 0;
        d->qhead = d->qtail = 0;
        clear_sharers(d);
    }
}

/* ---- messages ---- */

static int on_get(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    (void)arg;
    (void)payload;
    size_t p;
    /* The page, and optionally the requester's reply slot for the grant (nonzero). */
    uint32_t token = hl == 12 ? dsm_le32_get((const uint8_t *)hdr + 8) : 0;
    if (!dsm_coh_msg_page(hdr, hl == 12 ? 8 : hl, 8, dsm_core_rank(), &p) || len || (hl == 12 && !token)) {
        dsm_err("malformed page request from node %d", src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REQ) != DSM_OK)
        return DSM_EPROTO;
    uint64_t ft = __builtin_expect(__atomic_load_n(&dsm_ft_on, __ATOMIC_RELAXED), 0) && id == DSM_AM_GETS
                      ? dsm_ft_now() : 0;
    dsm_dir_request(p, src, id == DSM_AM_GETM ? DSM_PG_M : DSM_PG_S, token);
    if (ft) {
        /* DSM_STATS=2: arrival to reply sent (or queued) */
        uint64_t out = dsm_ft_now();
        dsm_ft_add(DSM_FT_HOME, out - ft);
        dsm_ft_pages[p].home_in = ft;
        dsm_ft_pages[p].home_out = out;
    }
    return DSM_OK;
}

static int on_inv_ack(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    (void)arg;
    (void)id;
    (void)payload;
    size_t p;
    if (!dsm_coh_msg_page(hdr, hl, 8, dsm_core_rank(), &p) || len) {
        dsm_err("malformed invalidation ack from node %d", src);
        return DSM_EPROTO;
    }
    struct dir *d = dir_at(p);
    spin_lock(&d->lock);
    if (d->busy != BUSY_INV || d->acks == 0 || !is_sharer(d, src)) {
        spin_unlock(&d->lock);
        dsm_err("unexpected invalidation ack from node %d for page %zu", src, p);
        return DSM_EPROTO;
    }
    d->sharers[src / 64] &= ~(1ull << (src % 64));
    if (--d->acks == 0) {
        d->busy = BUSY_NONE;
        d->state = DIR_M;
        d->owner = d->req;
        grant(p, d->req, DSM_PG_M, !d->req_had && d->req != dsm_core_rank(), d->req_token);
        drain(p, d);
    }
    spin_unlock(&d->lock);
    return DSM_OK;
}

static int on_recall_ack(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload,
                         size_t len)
{
    (void)arg;
    (void)id;
    size_t p;
    int placed = hl == 9 && ((const uint8_t *)hdr)[8] == DSM_COH_PLACED;
    if (!dsm_coh_msg_page(hdr, hl, 9, dsm_core_rank(), &p) || (((const uint8_t *)hdr)[8] & ~DSM_COH_PLACED) ||
        len != (placed ? 0 : DSM_PAGE_SIZE)) {
        dsm_err("malformed recall ack from node %d", src);
        return DSM_EPROTO;
    }
    struct dir *d = dir_at(p);
    spin_lock(&d->lock);
    if (d->busy != BUSY_RECALL || d->owner != src) {
        spin_unlock(&d->lock);
        dsm_err("unexpected recall ack from node %d for page %zu", src, p);
        return DSM_EPROTO;
    }
    /* The home's memory becomes the current copy again (unless the owner placed it there already). Its own
     * view is I here (the owner was another node). */
    if (!placed)
        memcpy(dsm_region.sys + (p << DSM_PAGE_SHIFT), payload, DSM_PAGE_SIZE);
    d->busy = BUSY_NONE;
    clear_sharers(d);
    int r = d->req;
    if (d->req_mode == DSM_PG_S) {
        d->state = DIR_S;
        set_sharer(d, src);
        set_sharer(d, r);
    } else {
        d->state = DIR_M;
        d->owner = r;
    }
    grant(p, r, d->req_mode, r != dsm_core_rank(), d->req_token);
    drain(p, d);
    spin_unlock(&d->lock);
    return DSM_OK;
}

int dsm_dir_setup(void)
{
    int n = dsm_core_size();
    words = ((size_t)n + 63) / 64;
    dir_stride = (sizeof(struct dir) + words * 8 + 7) / 8 * 8;
    ndirs = dsm_region.npages;
    void *m = mmap(NULL, ndirs * dir_stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    void *q = mmap(NULL, POOL_SIZE * sizeof *pool, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED || q == MAP_FAILED) {
        dsm_err("cannot reserve the page directory: %s", strerror(errno));
        if (m != MAP_FAILED)
            munmap(m, ndirs * dir_stride);
        if (q != MAP_FAILED)
            munmap(q, POOL_SIZE * sizeof *pool);
        return DSM_ENOMEM;
    }
    dirs = m;
    pool = q;
    pool_free = 0;
    pool_next = 1; /* entry 0 means none */
    int rc;
    if ((rc = dsm_am_register(DSM_AM_GETS, on_get, NULL)) || (rc = dsm_am_register(DSM_AM_GETM, on_get, NULL)) ||
        (rc = dsm_am_register(DSM_AM_INV_ACK, on_inv_ack, NULL)) ||
        (rc = dsm_am_register(DSM_AM_RECALL_ACK, on_recall_ack, NULL)))
        return rc;
    return DSM_OK;
}

void dsm_dir_teardown(void)
{
    if (dirs)
        munmap(dirs, ndirs * dir_stride);
    if (pool)
        munmap(pool, POOL_SIZE * sizeof *pool);
    dirs = NULL;
    pool = NULL;
}
