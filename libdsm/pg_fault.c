/* SPDX-License-Identifier: MIT */
/*
 * pg_fault.c - the node side of coherence (DESIGN.md 4.2): the SIGSEGV handler, each page's local state
 * (I, S, M = no access, read, read-write in the application view), and the handlers for what the home sends
 * (GRANT, INV, RECALL). The home's side is dir_msi.c.
 *
 * A fault: the faulting thread sends its own request to the page's home and waits on the page's sequence
 * word (futex). Faults on one page coalesce: while a request is out (want != 0), later faulters only wait.
 * Faults on different pages proceed in parallel; there is no global fault lock.
 * Rules for the fault path: a SIGSEGV here is synchronous, raised by an application access to the application
 * view, and libdsm never touches the application view while it holds one of its own locks; so the per-page
 * lock below cannot be held by the interrupted thread itself. No stdio, no malloc on this node's side; fatal
 * errors are written with write(2) and end in _exit (dsm_fail_stop).
 * Ordering: a downgrade or invalidation protects the application view first and only then reads or gives up
 * the page, so no local store is lost (mprotect's TLB shootdown also drains the writer's store buffer).
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/wait.h"
#include "libdsm/region.h"
#include "libdsm/stats.h"
#include "transport/wire.h"

struct pg {
    uint32_t seq;   /* futex word: bumped on every change of state */
    uint8_t lock;
    uint8_t state;  /* DSM_PG_* */
    uint8_t want;   /* mode requested from the home and not granted yet, or 0 */
    uint8_t pad;
};

static struct pg *pgs;
static _Thread_local int in_fault; /* inside the SIGSEGV handler: no allocation (transport may_allocate) */
static size_t npgs;
static struct sigaction old_segv, old_bus;
static int installed;

static void pg_lock(struct pg *g)
{
    for (int spins = 0; __atomic_exchange_n(&g->lock, 1, __ATOMIC_ACQUIRE); spins++) {
        if (spins < 100)
            __builtin_ia32_pause();
        else
            sched_yield();
    }
}

static void pg_unlock(struct pg *g)
{
    __atomic_store_n(&g->lock, 0, __ATOMIC_RELEASE);
}

static void pg_changed(struct pg *g)
{
    __atomic_add_fetch(&g->seq, 1, __ATOMIC_RELEASE);
    dsm_wake_change(&g->seq);
}

/* Protection of one page; failing here leaves memory in an unknown state, so the node stops. */
static void protect(size_t p, int state)
{
    int e = dsm_region_protect(p, 1, state);
    if (e == -ENOMEM)
        dsm_fail_stop(-1, "mprotect failed: out of memory mappings; raise the vm.max_map_count sysctl");
    if (e)
        dsm_fail_stop(-1, "mprotect of a shared page failed");
}

/* Ask page p's home for mode. direct: the calling thread will wait for this very grant, so it may arm a reply
 * slot for it (when the pair has them and the page is registered, so that the home can put the data first):
 * returns the token, or 0 when the grant comes as a message. */
static uint32_t send_request(size_t p, int mode, int direct)
{
    int home = dsm_page_home(p);
    if (home == dsm_core_rank()) {
        dsm_dir_request(p, home, mode, 0);
        return 0;
    }
    uint8_t h[12];
    uint64_t off;
    dsm_le64_put(h, p);
    /* The credit first: arming may hold the connection's read side (tcp), which a wait for credits must not. */
    dsm_chan_take(home, DSM_CHAN_REQ);
    uint32_t token = direct && dsm_region_mreg(p, &off) ? dsm_reply_arm(home) : 0; /* 0: the pair has no slots */
    dsm_le32_put(h + 8, token);
    if (dsm_am_send(home, mode == DSM_PG_M ? DSM_AM_GETM : DSM_AM_GETS, h, token ? 12 : 8, NULL, 0) != DSM_OK)
        dsm_fail_stop(home, "cannot send a page request");
    return token;
}

/* The grant of our own request, through the reply slot token: handled by this thread (or by progress, if it got
 * there first) once this returns. */
static void wait_direct(size_t p, uint32_t token, int timeout_ms)
{
    int home = dsm_page_home(p);
    for (int waited = 0;; waited += 100) {
        if (waited >= timeout_ms)
            dsm_fail_stop(home, "no answer to a page request within DSM_TIMEOUT");
        int rc = dsm_reply_wait(home, token, 100);
        if (rc == DSM_OK)
            break;
        if (rc != DSM_ETIMEDOUT)
            dsm_fail_stop(home, "malformed answer to a page request");
    }
    dsm_ctr_inc(DSM_CTR_DIRECT);
}

int dsm_pg_in_fault(void)
{
    return in_fault;
}

/* DSM_STATS=2: the phases of a read miss this thread sent, from the stamps of dsm_pg_grant. */
static void ft_account(size_t p, uint64_t entry, uint64_t presend, uint64_t sent, uint64_t woken)
{
    struct dsm_ft_page *s = &dsm_ft_pages[p];
    uint64_t grant = __atomic_load_n(&s->grant, __ATOMIC_ACQUIRE), filled = s->filled, prot = s->prot;
    if (grant < presend || prot < grant || woken < prot)
        return;  /* another thread's grant of this page: not this miss */
    dsm_ft_add(DSM_FT_REQUEST, presend - entry);
    /* The grant may arrive while the send call has not returned yet (a loaded host). */
    dsm_ft_add(DSM_FT_SEND, (sent < grant ? sent : grant) - presend);
    dsm_ft_add(DSM_FT_WIRE, grant - presend);
    dsm_ft_add(DSM_FT_COPY, filled - grant);
    dsm_ft_add(DSM_FT_PROTECT, prot - filled);
    dsm_ft_add(DSM_FT_WAKE, woken - prot);
    uint64_t done = dsm_ft_now();
    dsm_ft_add(DSM_FT_TOTAL, done - entry);
    s->entry = entry;
    s->presend = presend;
    s->sent = sent;
    s->woken = woken;
    s->done = done;
}

void dsm_pg_fault(size_t p, int write)
{
    struct pg *g = &pgs[p];
    int need = write ? DSM_PG_M : DSM_PG_S;
    int timeout_ms = dsm_core_config()->timeout_s * 1000;
    /* Read-miss timing (DSM_STATS=2): stamps of a miss this thread sent from Invalid. */
    int ft = __builtin_expect(__atomic_load_n(&dsm_ft_on, __ATOMIC_RELAXED), 0) && in_fault && !write;
    uint64_t ft_entry = ft ? dsm_ft_now() : 0, ft_presend = 0, ft_sent = 0, ft_woken = 0;
    for (;;) {
        pg_lock(g);
        if (g->state >= need) {
            pg_unlock(g);
            if (ft_sent)
                ft_account(p, ft_entry, ft_presend, ft_sent, ft_woken);
            return;
        }
        uint32_t seq = __atomic_load_n(&g->seq, __ATOMIC_ACQUIRE);
        int send = 0;
        if (!g->want) {
            g->want = (uint8_t)need;
            send = 1;
            dsm_ctr_inc(!write ? DSM_CTR_READ_FAULT : g->state == DSM_PG_S ? DSM_CTR_UPGRADE : DSM_CTR_WRITE_FAULT);
        }
        int from_invalid = g->state == DSM_PG_I;
        pg_unlock(g);
        int ft_this = ft && send && from_invalid && !ft_sent;
        if (ft_this)
            ft_presend = dsm_ft_now();
        uint32_t token = send ? send_request(p, need, 1) : 0;
        if (ft_this)
            ft_sent = dsm_ft_now();
        /* Wait for the grant (or any change); a home that stays silent for DSM_TIMEOUT is lost. */
        int waited = 0;
        if (token)
            wait_direct(p, token, timeout_ms);
        else
            while (__atomic_load_n(&g->seq, __ATOMIC_ACQUIRE) == seq) {
                if (waited >= timeout_ms)
                    dsm_fail_stop(dsm_page_home(p), "no answer to a page request within DSM_TIMEOUT");
                if (dsm_wait_change(&g->seq, seq, 100) < 0)
                    waited += 100;
            }
        if (ft_sent && !ft_woken)
            ft_woken = dsm_ft_now();
    }
}

void dsm_pg_prefetch(size_t first, size_t n, int write)
{
    int need = write ? DSM_PG_M : DSM_PG_S;
    /* Every request out first, so the round trips overlap; then wait for each page. */
    for (size_t p = first; p < first + n; p++) {
        struct pg *g = &pgs[p];
        pg_lock(g);
        int send = g->state < need && !g->want;
        if (send)
            g->want = (uint8_t)need;
        pg_unlock(g);
        if (send)
            send_request(p, need, 0);
    }
    for (size_t p = first; p < first + n; p++)
        dsm_pg_fault(p, write);
}

int dsm_pg_grant(size_t p, int mode, const void *data, int placed)
{
    struct pg *g = &pgs[p];
    uint64_t ft_grant = __builtin_expect(__atomic_load_n(&dsm_ft_on, __ATOMIC_RELAXED), 0) ? dsm_ft_now() : 0;
    pg_lock(g);
    if (!g->want || mode < g->want ||
        (!data && !placed && g->state == DSM_PG_I && dsm_page_home(p) != dsm_core_rank())) {
        /* A grant nobody asked for, or one without data for a copy this node does not have. */
        pg_unlock(g);
        return DSM_EPROTO;
    }
    if (data)
        memcpy(dsm_region.sys + (p << DSM_PAGE_SHIFT), data, DSM_PAGE_SIZE);
    if (data || placed)
        dsm_ctr_inc(DSM_CTR_PAGE_IN);
    uint64_t ft_filled = ft_grant ? dsm_ft_now() : 0;
    protect(p, mode);
    if (ft_grant) {
        struct dsm_ft_page *s = &dsm_ft_pages[p];
        s->filled = ft_filled;
        s->prot = dsm_ft_now();
        __atomic_store_n(&s->grant, ft_grant, __ATOMIC_RELEASE);
    }
    g->state = (uint8_t)mode;
    g->want = 0;
    pg_changed(g);
    pg_unlock(g);
    return DSM_OK;
}

uint64_t dsm_pg_atomic(size_t p, uint64_t *word, int op, uint64_t operand, uint64_t compare)
{
    struct pg *g = &pgs[p];
    for (;;) {
        pg_lock(g);
        if (g->state == DSM_PG_M) {
            /* The lock keeps a demotion out, and M means the word is writable: no fault under the lock. */
            uint64_t old;
            if (op == DSM_TP_ATOMIC_FADD) {
                old = __atomic_fetch_add(word, operand, __ATOMIC_SEQ_CST);
            } else {
                old = compare;
                __atomic_compare_exchange_n(word, &old, operand, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            }
            pg_unlock(g);
            return old;
        }
        pg_unlock(g);
        dsm_pg_fault(p, 1);
    }
}

void dsm_pg_demote(size_t p, int state)
{
    struct pg *g = &pgs[p];
    pg_lock(g);
    if (g->state > state) {
        protect(p, state);
        g->state = (uint8_t)state;
        pg_changed(g);
    }
    pg_unlock(g);
}

void dsm_pg_reset(size_t p, size_t n)
{
    if (dsm_region_protect(p, n, DSM_PG_I) < 0)
        dsm_fail_stop(-1, "mprotect of freed shared pages failed");
    for (size_t i = p; i < p + n; i++) {
        pgs[i].state = DSM_PG_I;
        pgs[i].want = 0;
    }
}

/* ---- messages from the home ---- */

int dsm_coh_msg_page(const void *hdr, size_t hl, size_t want, int home, size_t *p_out)
{
    if (hl != want)
        return 0;
    uint64_t p = dsm_le64_get(hdr);
    if (dsm_page_kind(p) != DSM_KIND_COHERENT || dsm_page_home(p) != home)
        return 0;
    *p_out = (size_t)p;
    return 1;
}

static int on_grant(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    (void)arg;
    (void)id;
    size_t p;
    if (!dsm_coh_msg_page(hdr, hl, 9, src, &p) || (len != 0 && len != DSM_PAGE_SIZE)) {
        dsm_err("malformed page grant from node %d", src);
        return DSM_EPROTO;
    }
    int mode = ((const uint8_t *)hdr)[8] & ~DSM_COH_PLACED, placed = !!(((const uint8_t *)hdr)[8] & DSM_COH_PLACED);
    if ((mode != DSM_PG_S && mode != DSM_PG_M) || (placed && len)) {
        dsm_err("page grant from node %d has mode %d%s", src, mode, placed && len ? " and data twice" : "");
        return DSM_EPROTO;
    }
    int rc = dsm_pg_grant(p, mode, len ? payload : NULL, placed);
    if (rc)
        dsm_err("node %d granted page %zu that this node did not ask for, or without its data", src, p);
    else
        dsm_credit_return(src, DSM_CHAN_REQ);
    return rc;
}

static int on_inv(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    (void)arg;
    (void)id;
    (void)payload;
    size_t p;
    if (!dsm_coh_msg_page(hdr, hl, 8, src, &p) || len) {
        dsm_err("malformed invalidation from node %d", src);
        return DSM_EPROTO;
    }
    dsm_ctr_inc(DSM_CTR_INV_IN);
    dsm_pg_demote(p, DSM_PG_I);
    return dsm_am_send(src, DSM_AM_INV_ACK, hdr, 8, NULL, 0);
}

static int on_recall(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    (void)arg;
    (void)id;
    (void)payload;
    size_t p;
    if (!dsm_coh_msg_page(hdr, hl, 9, src, &p) || len) {
        dsm_err("malformed recall from node %d", src);
        return DSM_EPROTO;
    }
    int keep = ((const uint8_t *)hdr)[8];
    if (keep != DSM_PG_S && keep != DSM_PG_I) {
        dsm_err("recall from node %d asks for state %d", src, keep);
        return DSM_EPROTO;
    }
    struct pg *g = &pgs[p];
    if (__atomic_load_n(&g->state, __ATOMIC_ACQUIRE) != DSM_PG_M) {
        dsm_err("node %d recalled page %zu, which this node does not own (state %d, asking for %d)", src, p,
                __atomic_load_n(&g->state, __ATOMIC_ACQUIRE), __atomic_load_n(&g->want, __ATOMIC_ACQUIRE));
        return DSM_EPROTO;
    }
    /* Protection first, then the data: no store can slip in after the copy. */
    dsm_ctr_inc(DSM_CTR_RECALL_IN);
    dsm_ctr_inc(DSM_CTR_PAGE_OUT);
    dsm_pg_demote(p, keep);
    uint8_t ack[9];
    memcpy(ack, hdr, 8);
    ack[8] = 0;
    return dsm_coh_send_page(src, DSM_AM_RECALL_ACK, ack, sizeof ack, p);
}

int dsm_coh_grant_direct(int to, uint32_t token, uint8_t *hdr, size_t hl, size_t p, int with_data)
{
    uint64_t off = 0;
    const dsm_mreg_t *m = dsm_region_mreg(p, &off);
    if (with_data && !m) {
        dsm_err("node %d asked for page %zu in a reply slot, but the page is not registered", to, p);
        return DSM_EPROTO;
    }
    if (with_data) {
        hdr[hl - 1] |= DSM_COH_PLACED;
        dsm_ctr_inc(DSM_CTR_PAGE_PLACED);
    }
    return dsm_rma_reply(to, token, dsm_region.sys + (p << DSM_PAGE_SHIFT), with_data ? DSM_PAGE_SIZE : 0, m, off,
                         DSM_AM_GRANT, hdr, hl);
}

int dsm_coh_send_page(int to, uint8_t id, uint8_t *hdr, size_t hl, size_t p)
{
    uint8_t *data = dsm_region.sys + (p << DSM_PAGE_SHIFT);
    uint64_t off;
    const dsm_mreg_t *m;
    if ((dsm_core_peer_caps(to) & DSM_TP_CAP_RMA_NATIVE) && (m = dsm_region_mreg(p, &off)) != NULL) {
        hdr[hl - 1] |= DSM_COH_PLACED;
        dsm_ctr_inc(DSM_CTR_PAGE_PLACED);
        return dsm_rma_put_notify_nb(to, data, DSM_PAGE_SIZE, m, off, id, hdr, hl, NULL);
    }
    return dsm_am_send(to, id, hdr, hl, data, DSM_PAGE_SIZE);
}

/* ---- signals ---- */

static void chain(struct sigaction *old, int sig, siginfo_t *si, void *uc)
{
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) {
            old->sa_sigaction(sig, si, uc);
            return;
        }
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    /* Default action: restore it and return; the faulting instruction runs again and the process dies of the
     * signal, as it would without libdsm. */
    signal(sig, SIG_DFL);
}

static void on_segv(int sig, siginfo_t *si, void *ucv)
{
    int saved = errno;
    size_t p;
    int kind = dsm_region_kind(si->si_addr, &p);
    if (kind == DSM_KIND_COHERENT) {
        const ucontext_t *uc = ucv;
        /* Bit 1 of the x86 page-fault error code: the access was a write. */
        int write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
        in_fault++;
        dsm_pg_fault(p, write);
        in_fault--;
    } else if (kind == DSM_KIND_ATOMIC) {
        dsm_fail_stop(-1, "usage error: a plain load or store on dsm_alloc_atomic memory; "
                          "use dsm_atomic_load, dsm_atomic_store, dsm_fetch_add or dsm_cas");
    } else {
        chain(&old_segv, sig, si, ucv);
    }
    errno = saved;
}

static void on_bus(int sig, siginfo_t *si, void *ucv)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    dsm_region_t *r = &dsm_region;
    if ((a >= (uintptr_t)r->app && a < (uintptr_t)r->app + r->size) ||
        (a >= (uintptr_t)r->sys && a < (uintptr_t)r->sys + r->size))
        dsm_fail_stop(-1, "SIGBUS on shared memory: no memory left for shared pages (memfd)");
    chain(&old_bus, sig, si, ucv);
}

int dsm_pg_setup(void)
{
    npgs = dsm_region.npages;
    void *m = mmap(NULL, npgs * sizeof *pgs, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
        dsm_err("cannot reserve page states for %zu pages: %s", npgs, strerror(errno));
        return DSM_ENOMEM;
    }
    pgs = m;
    int rc;
    if ((rc = dsm_am_register(DSM_AM_GRANT, on_grant, NULL)) || (rc = dsm_am_register(DSM_AM_INV, on_inv, NULL)) ||
        (rc = dsm_am_register(DSM_AM_RECALL, on_recall, NULL)))
        return rc;
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old_segv) < 0)
        return DSM_ESYS;
    sa.sa_sigaction = on_bus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    if (sigaction(SIGBUS, &sa, &old_bus) < 0) {
        sigaction(SIGSEGV, &old_segv, NULL);
        return DSM_ESYS;
    }
    installed = 1;
    return DSM_OK;
}

void dsm_pg_teardown(void)
{
    if (installed) {
        sigaction(SIGSEGV, &old_segv, NULL);
        sigaction(SIGBUS, &old_bus, NULL);
        installed = 0;
    }
    if (pgs)
        munmap(pgs, npgs * sizeof *pgs);
    pgs = NULL;
    npgs = 0;
}
