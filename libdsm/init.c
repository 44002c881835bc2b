/* SPDX-License-Identifier: MIT */
/*
 * init.c - the life of a node: dsm_init (settings, bootstrap, shared range, transport selection, connections,
 * progress thread), dsm_finalize, and the services the core gives providers (dispatch, completion, fail-stop).
 *
 * Transport selection (DESIGN.md 4.4): every node publishes its DSM_TRANSPORT list and, for each provider it
 * started, its address. All lists must be equal (else DSM_EMISMATCH on every node). Each peer is then reached by
 * the first provider of the list that both ends started; a peer with none fails dsm_init, naming it.
 * A provider named explicitly but not built is an error; one from the default list is skipped at info level.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/error.h"
#include "libdsm/heartbeat.h"
#include "libdsm/log.h"
#include "libdsm/secret.h"
#include "libdsm/wait.h"
#include "libdsm/stats.h"
#include "migrate/mig.h"
#include "transport/wire.h"

struct tp_inst {
    const struct dsm_tp_ops *ops;
    dsm_tp_t *tp;
    int used;  /* serves at least one peer */
};

static struct {
    pthread_mutex_t lock;  /* init/finalize */
    int up;
    int finalizing;
    int oversub; /* ranks per core on this host, rounded up (1 when not oversubscribed) */
    dsm_config_t cfg;
    dsm_boot_t boot;
    int rank, size;
    dsm_tp_core_t services;
    int ntp;
    struct tp_inst tp[DSM_TP_MAX];
    int8_t *peer_tp;  /* [size]: index into tp, -1 for self */
    int atomic_self;  /* index into tp of the provider that does this node's own atomics, or -1 (CPU atomics) */
    char tp_name[64];
    pthread_t progress[DSM_TP_MAX];
    int nprogress;
    int progress_stop;
    /* With more than one provider in use, each has its own progress thread, and handlers still run one at a
     * time (they were written for one progress thread). */
    int dispatch_serial;
    pthread_mutex_t dispatch_lock;
    struct {
        dsm_tp_am_fn_t fn;
        void *arg;
    } am[256];
    uint64_t msgs_tx, bytes_tx, msgs_rx, bytes_rx, conns_refused;
} core = {.lock = PTHREAD_MUTEX_INITIALIZER, .dispatch_lock = PTHREAD_MUTEX_INITIALIZER, .rank = -1, .size = -1};

int dsm_core_rank(void) { return core.rank; }
int dsm_core_size(void) { return core.size; }
dsm_boot_t *dsm_core_boot(void) { return &core.boot; }
const dsm_config_t *dsm_core_config(void) { return &core.cfg; }

static void core_log(int level, const char *prov, const char *fmt, ...)
{
    if (level > dsm_log_level)
        return;
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    dsm_log_emit(level, prov, "%s", buf);
}

void dsm_req_init(dsm_tp_req_t *req)
{
    req->done = 0;
    req->status = DSM_OK;
    req->value = 0;
}

static void core_complete(dsm_tp_req_t *req, int status, uint64_t value)
{
    req->status = status;
    req->value = value;
    __atomic_store_n(&req->done, 1, __ATOMIC_RELEASE);
    dsm_wake_change(&req->done);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A live peer's provider answers within DSM_TIMEOUT; one that does not is lost, and the request may still be
 * written to by the provider, so there is no returning from here with the request pending. */
static int req_wait_peer(dsm_tp_req_t *req, int peer)
{
    for (int spin = 0; spin < 4000; spin++) {
        if (__atomic_load_n(&req->done, __ATOMIC_ACQUIRE))
            return req->status;
        __builtin_ia32_pause();
    }
    int64_t deadline = now_ms() + (int64_t)core.cfg.timeout_s * 1000;
    while (!__atomic_load_n(&req->done, __ATOMIC_ACQUIRE)) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            dsm_fail_stop(peer, "no reply within DSM_TIMEOUT");
        dsm_wait_change(&req->done, 0, left > 100 ? 100 : (int)left);
    }
    return req->status;
}

int dsm_req_wait(dsm_tp_req_t *req)
{
    return req_wait_peer(req, -1);
}

/* ---- fail-stop ---- */

static size_t put_str(char *out, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap)
        out[at++] = *s++;
    out[at] = '\0';
    return at;
}

__attribute__((noreturn)) void dsm_fail_stop(int node, const char *reason)
{
    /* One thread reports; any other that fails at the same time waits for the exit. */
    static int failing;
    if (__atomic_exchange_n(&failing, 1, __ATOMIC_ACQ_REL))
        for (;;)
            pause();
    char msg[256], num[16];
    size_t n = 0;
    int k = 0;
    unsigned u = node < 0 ? 0 : (unsigned)node;
    do {
        num[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    char digits[16];
    for (int i = 0; i < k; i++)
        digits[i] = num[k - 1 - i];
    digits[k] = '\0';
    if (node >= 0) {
        n = put_str(msg, n, sizeof msg, "libdsm: node ");
        n = put_str(msg, n, sizeof msg, digits);
        n = put_str(msg, n, sizeof msg, " lost (");
    } else {
        n = put_str(msg, n, sizeof msg, "libdsm: job failed (");
    }
    n = put_str(msg, n, sizeof msg, reason);
    n = put_str(msg, n, sizeof msg, ")");
    dsm_log_raw(msg);
    if (node >= 0)
        for (int i = 0; i < core.ntp; i++)
            if (core.tp[i].used && core.tp[i].tp)
                core.tp[i].ops->tell_lost(core.tp[i].tp, node);
    dsm_error_handler_run(node >= 0 ? DSM_ENODE : DSM_EPROTO, node);
    if (core.boot.note_abort && core.boot.priv)
        core.boot.note_abort(&core.boot, msg);
    _exit(1);
}

static void core_peer_lost(int peer, const char *reason)
{
    dsm_fail_stop(peer, reason);
}

/* ---- active messages ---- */

static int core_am_dispatch(int src, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                            size_t len)
{
    __atomic_add_fetch(&core.msgs_rx, 1, __ATOMIC_RELAXED);
    if (src != core.rank)
        dsm_hb_heard(src);
    dsm_tp_am_fn_t fn = __atomic_load_n(&core.am[am_id].fn, __ATOMIC_ACQUIRE);
    if (!fn) {
        dsm_err("message from node %d for handler %u, which is not registered", src, am_id);
        return DSM_EPROTO;
    }
    int serial = core.dispatch_serial && src != core.rank;
    if (serial)
        pthread_mutex_lock(&core.dispatch_lock);
    int rc = fn(core.am[am_id].arg, src, am_id, hdr, hdr_len, payload, len);
    if (serial)
        pthread_mutex_unlock(&core.dispatch_lock);
    return rc;
}

static void core_count_tx(size_t bytes)
{
    __atomic_add_fetch(&core.bytes_tx, bytes, __ATOMIC_RELAXED);
}

static void core_count_rx(size_t bytes)
{
    __atomic_add_fetch(&core.bytes_rx, bytes, __ATOMIC_RELAXED);
}

static void core_count_refused(void)
{
    __atomic_add_fetch(&core.conns_refused, 1, __ATOMIC_RELAXED);
}

static int core_may_allocate(void)
{
    return !dsm_pg_in_fault();
}

static const char *core_setting(const char *name)
{
    if (strcmp(name, "DSM_TCP_IFACE") == 0)
        return core.cfg.tcp_iface[0] ? core.cfg.tcp_iface : NULL;
    if (strcmp(name, "DSM_WAIT") == 0)
        return dsm_wait_name(dsm_wait_mode); /* as chosen at init, also when unset */
    if (strcmp(name, "DSM_RDMA_DEVICE") == 0)
        return core.cfg.rdma_device[0] ? core.cfg.rdma_device : NULL;
    if (strcmp(name, "DSM_RDMA_PORT") == 0) {
        static char port[8];
        snprintf(port, sizeof port, "%d", core.cfg.rdma_port);
        return core.cfg.rdma_port ? port : NULL;
    }
    return NULL;
}

int dsm_am_register(uint8_t am_id, dsm_tp_am_fn_t fn, void *arg)
{
    if (!fn || am_id == 0)
        return DSM_EINVAL;
    if (__atomic_load_n(&core.am[am_id].fn, __ATOMIC_ACQUIRE))
        return DSM_EBUSY;
    core.am[am_id].arg = arg;
    __atomic_store_n(&core.am[am_id].fn, fn, __ATOMIC_RELEASE);
    return DSM_OK;
}

static int peer_ok(int peer)
{
    return core.up && peer >= 0 && peer < core.size;
}

int dsm_am_send(int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload, size_t len)
{
    if (!peer_ok(peer) || hdr_len > DSM_TP_AM_HDR_MAX || len > DSM_TP_AM_PAYLOAD_MAX || am_id == 0)
        return DSM_EINVAL;
    dsm_mig_probe();
    __atomic_add_fetch(&core.msgs_tx, 1, __ATOMIC_RELAXED);
    if (peer == core.rank)
        return core_am_dispatch(peer, am_id, hdr, hdr_len, payload, len);
    struct tp_inst *t = &core.tp[core.peer_tp[peer]];
    return t->ops->am_send(t->tp, peer, am_id, hdr, hdr_len, payload, len);
}

/* ---- registrations and one-sided operations ---- */

int dsm_mreg_create(void *addr, size_t len, int fd, uint64_t fd_off, dsm_mreg_t **mreg_p)
{
    if (!core.up || !addr || !len || fd < 0)
        return DSM_EINVAL;
    dsm_mreg_t *m = calloc(1, sizeof *m);
    if (!m || !(m->rkey = calloc((size_t)core.size, sizeof *m->rkey))) {
        free(m);
        return DSM_ENOMEM;
    }
    m->addr = addr;
    m->len = len;
    int rc = DSM_OK, nreg = 0;
    for (; nreg < core.ntp && rc == DSM_OK; nreg++)
        if (core.tp[nreg].used)
            rc = core.tp[nreg].ops->mem_reg(core.tp[nreg].tp, addr, len, fd, fd_off, &m->mr[nreg]);
    /* Publish one key per provider, whether or not registration worked, so no node waits for a missing key.
     * Registrations are collective, so a per-node sequence number names this one on every node. */
    static unsigned seq;
    unsigned id = __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED);
    uint8_t blob[DSM_TP_MAX][20];
    for (int i = 0; i < core.ntp; i++) {
        dsm_le64_put(blob[i], (uint64_t)(uintptr_t)addr);
        dsm_le64_put(blob[i] + 8, len);
        dsm_le32_put(blob[i] + 16, rc == DSM_OK ? m->mr[i].key : UINT32_MAX);
    }
    char key[64];
    snprintf(key, sizeof key, "mreg.%u", id);
    int prc = core.boot.put(&core.boot, key, blob, sizeof blob[0] * (size_t)core.ntp);
    if (prc == DSM_OK)
        prc = core.boot.fence(&core.boot);
    for (int p = 0; prc == DSM_OK && p < core.size; p++) {
        if (p == core.rank) {
            m->rkey[p] = (dsm_tp_rkey_t){.addr = (uint64_t)(uintptr_t)addr, .len = len};
            continue;
        }
        uint8_t theirs[DSM_TP_MAX][20];
        size_t n = sizeof theirs;
        prc = core.boot.get(&core.boot, p, key, theirs, &n);
        if (prc != DSM_OK)
            break;
        int i = core.peer_tp[p];
        if (n != sizeof theirs[0] * (size_t)core.ntp || dsm_le32_get(theirs[i] + 16) == UINT32_MAX) {
            dsm_err("node %d could not register memory for a collective registration", p);
            prc = DSM_EMISMATCH;
            break;
        }
        m->rkey[p].addr = dsm_le64_get(theirs[i]);
        m->rkey[p].len = dsm_le64_get(theirs[i] + 8);
        m->rkey[p].key = dsm_le32_get(theirs[i] + 16);
    }
    if (rc == DSM_OK)
        rc = prc;
    if (rc != DSM_OK) {
        for (int i = 0; i < nreg; i++)
            if (core.tp[i].used && m->mr[i].len)
                core.tp[i].ops->mem_dereg(core.tp[i].tp, &m->mr[i]);
        free(m->rkey);
        free(m);
        return rc;
    }
    *mreg_p = m;
    return DSM_OK;
}

int dsm_mreg_destroy(dsm_mreg_t *m)
{
    if (!m)
        return DSM_OK;
    /* Peers may still be reading this node's memory until they all stop using it. */
    int rc = dsm_barrier();
    for (int i = 0; i < core.ntp; i++)
        if (core.tp[i].used)
            core.tp[i].ops->mem_dereg(core.tp[i].tp, &m->mr[i]);
    dsm_mreg_forget(m);
    return rc;
}

void dsm_mreg_forget(dsm_mreg_t *m)
{
    if (!m)
        return;
    free(m->rkey);
    free(m);
}

static int rma_check(int peer, size_t len, const dsm_mreg_t *m, uint64_t off)
{
    dsm_mig_probe();
    if (!peer_ok(peer) || !m || peer == core.rank || off > m->rkey[peer].len || len > m->rkey[peer].len - off)
        return DSM_EINVAL;
    return DSM_OK;
}

#define PEER_TP(peer_x) (&core.tp[core.peer_tp[peer_x]])

int dsm_rma_put_nb(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off, dsm_tp_req_t *req)
{
    int rc = rma_check(peer, len, m, off);
    if (rc)
        return rc;
    dsm_req_init(req);
    return PEER_TP(peer)->ops->put(PEER_TP(peer)->tp, peer, src, len, &m->rkey[peer], off, req);
}

int dsm_rma_put_notify_nb(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off, uint8_t am_id,
                          const void *hdr, size_t hdr_len, dsm_tp_req_t *req)
{
    int rc = rma_check(peer, len, m, off);
    if (rc)
        return rc;
    if (am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX)
        return DSM_EINVAL;
    if (req)
        dsm_req_init(req);
    return PEER_TP(peer)->ops->put_notify(PEER_TP(peer)->tp, peer, src, len, &m->rkey[peer], off, am_id, hdr,
                                          hdr_len, req);
}

int dsm_rma_get_nb(int peer, void *dst, size_t len, const dsm_mreg_t *m, uint64_t off, dsm_tp_req_t *req)
{
    int rc = rma_check(peer, len, m, off);
    if (rc)
        return rc;
    dsm_req_init(req);
    return PEER_TP(peer)->ops->get(PEER_TP(peer)->tp, peer, dst, len, &m->rkey[peer], off, req);
}

int dsm_rma_atomic_self(void)
{
    return core.up && core.atomic_self >= 0;
}

int dsm_rma_atomic_nb(int peer, enum dsm_tp_atomic_op op, const dsm_mreg_t *m, uint64_t off, uint64_t operand,
                      uint64_t compare, dsm_tp_req_t *req)
{
    if (peer == core.rank && dsm_rma_atomic_self() && m && off <= m->len && 8 <= m->len - off) {
        /* This node's own word, through the same device as its peers' atomics (DESIGN.md 4.2). */
        struct tp_inst *t = &core.tp[core.atomic_self];
        dsm_tp_rkey_t self = {.addr = (uint64_t)(uintptr_t)m->addr, .len = m->len, .key = m->mr[core.atomic_self].key};
        if ((self.addr + off) % 8 || (op != DSM_TP_ATOMIC_FADD && op != DSM_TP_ATOMIC_CSWAP))
            return DSM_EINVAL;
        dsm_req_init(req);
        return t->ops->atomic(t->tp, peer, op, &self, off, operand, compare, req);
    }
    int rc = rma_check(peer, 8, m, off);
    if (rc)
        return rc;
    if ((m->rkey[peer].addr + off) % 8 || (op != DSM_TP_ATOMIC_FADD && op != DSM_TP_ATOMIC_CSWAP))
        return DSM_EINVAL;
    dsm_req_init(req);
    return PEER_TP(peer)->ops->atomic(PEER_TP(peer)->tp, peer, op, &m->rkey[peer], off, operand, compare, req);
}

int dsm_rma_put(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off)
{
    dsm_tp_req_t req;
    int rc = dsm_rma_put_nb(peer, src, len, m, off, &req);
    return rc ? rc : req_wait_peer(&req, peer);
}

int dsm_rma_get(int peer, void *dst, size_t len, const dsm_mreg_t *m, uint64_t off)
{
    dsm_tp_req_t req;
    int rc = dsm_rma_get_nb(peer, dst, len, m, off, &req);
    return rc ? rc : req_wait_peer(&req, peer);
}

int dsm_rma_atomic(int peer, enum dsm_tp_atomic_op op, const dsm_mreg_t *m, uint64_t off, uint64_t operand,
                   uint64_t compare, uint64_t *old)
{
    dsm_tp_req_t req;
    int rc = dsm_rma_atomic_nb(peer, op, m, off, operand, compare, &req);
    if (rc == DSM_OK)
        rc = req_wait_peer(&req, peer);
    if (rc == DSM_OK && old)
        *old = req.value;
    return rc;
}

int dsm_rma_flush(int peer)
{
    if (!peer_ok(peer) || peer == core.rank)
        return DSM_EINVAL;
    int rc = PEER_TP(peer)->ops->flush(PEER_TP(peer)->tp, peer);
    /* A live peer answers within DSM_TIMEOUT (DESIGN.md 4.7): nothing returns to carry on without it. */
    if (rc == DSM_ETIMEDOUT)
        dsm_fail_stop(peer, "one-sided operations unanswered within DSM_TIMEOUT");
    return rc;
}

/* ---- direct replies (transport.h, ABI 5) ---- */

int dsm_core_peer_replies(int peer)
{
    return core.up && peer >= 0 && peer < core.size && peer != core.rank && PEER_TP(peer)->ops->reply_arm &&
           PEER_TP(peer)->ops->reply_wait && PEER_TP(peer)->ops->reply;
}

uint32_t dsm_reply_arm(int peer)
{
    if (!dsm_core_peer_replies(peer))
        return 0;
    return PEER_TP(peer)->ops->reply_arm(PEER_TP(peer)->tp, peer);
}

int dsm_reply_wait(int peer, uint32_t token, int timeout_ms)
{
    if (!dsm_core_peer_replies(peer) || !token)
        return DSM_EINVAL;
    return PEER_TP(peer)->ops->reply_wait(PEER_TP(peer)->tp, token, timeout_ms);
}

int dsm_rma_reply(int peer, uint32_t token, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off,
                  uint8_t am_id, const void *hdr, size_t hdr_len)
{
    if (!dsm_core_peer_replies(peer) || am_id == 0 || hdr_len > DSM_TP_REPLY_HDR_MAX)
        return DSM_EPROTO; /* a token from a peer whose pair has no reply slots */
    if (len) {
        int rc = rma_check(peer, len, m, off);
        if (rc)
            return rc;
    }
    __atomic_add_fetch(&core.msgs_tx, 1, __ATOMIC_RELAXED);
    return PEER_TP(peer)->ops->reply(PEER_TP(peer)->tp, peer, token, src, len, len ? &m->rkey[peer] : NULL, off,
                                     am_id, hdr, hdr_len);
}

void dsm_core_stats(dsm_stats_core_t *s)
{
    s->msgs_tx = __atomic_load_n(&core.msgs_tx, __ATOMIC_RELAXED);
    s->bytes_tx = __atomic_load_n(&core.bytes_tx, __ATOMIC_RELAXED);
    s->msgs_rx = __atomic_load_n(&core.msgs_rx, __ATOMIC_RELAXED);
    s->bytes_rx = __atomic_load_n(&core.bytes_rx, __ATOMIC_RELAXED);
    s->conns_refused = __atomic_load_n(&core.conns_refused, __ATOMIC_RELAXED);
}

/* ---- progress thread ---- */

/* Bind the calling thread (the progress thread) near the network (issue 5 item 4): to DSM_PROGRESS_CPU when
 * set, else to the CPUs nearest the device of a provider in use that knows them (rdma, through hwloc), within
 * the CPUs this process may use; else leave it where it is. Says what it did at info level. */
void dsm_progress_bind(void)
{
    char list[256] = "", why[256] = "", from[96] = "";
    if (core.cfg.progress_cpu[0]) {
        snprintf(list, sizeof list, "%s", core.cfg.progress_cpu);
        snprintf(from, sizeof from, "DSM_PROGRESS_CPU");
    }
    for (int i = 0; !list[0] && i < core.ntp; i++) {
        if (!core.tp[i].used || !core.tp[i].ops->cpus)
            continue;
        if (core.tp[i].ops->cpus(core.tp[i].tp, list, sizeof list, why, sizeof why) == DSM_OK)
            snprintf(from, sizeof from, "transport %s, %.60s", core.tp[i].ops->name, why);
        else
            dsm_debug("progress thread not bound by transport %s: %s", core.tp[i].ops->name, why);
    }
    if (!list[0])
        return;
    uint8_t bits[CPU_SETSIZE / 8];
    cpu_set_t want, allowed;
    CPU_ZERO(&want);
    if (dsm_parse_cpulist(list, bits, CPU_SETSIZE) != DSM_OK)
        return;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (bits[c / 8] >> (c % 8) & 1)
            CPU_SET(c, &want);
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && !core.cfg.progress_cpu[0]) {
        CPU_AND(&want, &want, &allowed);
        if (CPU_EQUAL(&want, &allowed) || CPU_COUNT(&want) == 0) {
            dsm_debug("progress thread not bound: CPUs %s (%s) are every CPU this process may use", list, from);
            return;
        }
    }
    int e = pthread_setaffinity_np(pthread_self(), sizeof want, &want);
    if (e)
        dsm_warn("cannot bind the progress thread to CPUs %s (%s): %s", list, from, strerror(e));
    else
        dsm_info("progress thread bound to CPUs %s (%s)", list, from);
}

/* One per provider in use, so a provider that sleeps in its own wait (epoll, a futex) never delays another. */
static void *progress_main(void *arg)
{
    struct tp_inst *t = arg;
    dsm_progress_bind();
    while (!__atomic_load_n(&core.progress_stop, __ATOMIC_ACQUIRE))
        t->ops->progress(t->tp, 100);
    return NULL;
}

static int progress_start(void)
{
    int used = 0;
    for (int i = 0; i < core.ntp; i++)
        used += core.tp[i].used;
    core.dispatch_serial = used > 1;
    for (int i = 0; i < core.ntp; i++) {
        if (!core.tp[i].used)
            continue;
        if (pthread_create(&core.progress[core.nprogress], NULL, progress_main, &core.tp[i]))
            return DSM_ESYS;
        core.nprogress++;
    }
    return DSM_OK;
}

uint32_t dsm_core_peer_caps(int peer)
{
    if (!core.up || peer < 0 || peer >= core.size || peer == core.rank)
        return 0;
    return core.tp[core.peer_tp[peer]].ops->caps;
}

const char *dsm_core_peer_transport(int peer)
{
    if (!core.up || peer < 0 || peer >= core.size)
        return NULL;
    if (peer == core.rank)
        return "self";
    return core.tp[core.peer_tp[peer]].ops->name;
}

/* ---- transport selection ---- */

static void tp_close_all(void)
{
    for (int i = 0; i < core.ntp; i++)
        if (core.tp[i].tp)
            core.tp[i].ops->finalize(core.tp[i].tp);
    memset(core.tp, 0, sizeof core.tp);
    core.ntp = 0;
}

static int tp_agree_lists(char *err, size_t err_len)
{
    char mine[sizeof core.cfg.tp_list];
    snprintf(mine, sizeof mine, "%s", core.cfg.tp_list);
    int rc = core.boot.put(&core.boot, "tp.list", mine, strlen(mine) + 1);
    if (rc == DSM_OK)
        rc = core.boot.fence(&core.boot);
    for (int p = 0; rc == DSM_OK && p < core.size; p++) {
        char theirs[sizeof mine];
        size_t n = sizeof theirs;
        rc = core.boot.get(&core.boot, p, "tp.list", theirs, &n);
        if (rc == DSM_OK && (n == 0 || theirs[n - 1] != '\0' || strcmp(theirs, mine) != 0)) {
            snprintf(err, err_len, "DSM_TRANSPORT differs between nodes: node %d has '%s', node %d has '%.*s'",
                     core.rank, mine, p, (int)(n ? n - 1 : 0), theirs);
            return DSM_EMISMATCH;
        }
    }
    if (rc != DSM_OK)
        snprintf(err, err_len, "the rendezvous failed while comparing DSM_TRANSPORT");
    return rc;
}

/* Connect each peer with the first provider of the list that both ends started and that connected at both ends
 * (DESIGN.md 4.4, issue 5 item 3). Providers are tried in list order, one round each, on the pairs still
 * unsettled; after a round every node publishes which of its connections came up (a bitmap per provider) and
 * a pair settles on that provider only when both ends say so. A pair where one end failed (an rdma_cm reject, a
 * timeout) drops the connection at the other end (peer_drop) and tries the next provider, said at info level.
 * Every node runs every round, so the fences match. reasons[] holds why each provider did not start here. */
static int tp_connect_agreed(char reasons[][256], char *err, size_t err_len)
{
    int rc = DSM_OK;
    size_t nbytes = ((size_t)core.size + 7) / 8;
    uint8_t *mine = calloc(nbytes, 1), *theirs = calloc(nbytes, 1), *cand = calloc((size_t)core.size, 1);
    void **addrs = calloc((size_t)core.size, sizeof(void *));
    size_t *lens = calloc((size_t)core.size, sizeof(size_t));
    int *settled = calloc((size_t)core.size, sizeof(int));
    if (!mine || !theirs || !cand || !addrs || !lens || !settled) {
        rc = DSM_ENOMEM;
        goto out;
    }
    for (int p = 0; p < core.size; p++)
        core.peer_tp[p] = -1;
    settled[core.rank] = 1;
    /* One round per name of the agreed list, built here or not, so the fences match on every node even where
     * a module is missing on some hosts. */
    for (int j = 0, i = -1; j < core.cfg.ntp; j++) {
        const char *name = core.cfg.tp[j];
        if (i + 1 < core.ntp && strcmp(core.tp[i + 1].ops->name, name) == 0)
            i++;
        struct tp_inst *t = i >= 0 && strcmp(core.tp[i].ops->name, name) == 0 ? &core.tp[i] : NULL;
        char key[48];
        snprintf(key, sizeof key, "tp.%s", name);
        memset(mine, 0, nbytes);
        memset(cand, 0, (size_t)core.size);
        int ncand = 0;
        for (int p = 0; t && t->tp && p < core.size; p++) {
            if (settled[p])
                continue;
            uint8_t buf[DSM_TP_ADDR_MAX];
            size_t n = sizeof buf;
            if ((rc = core.boot.get(&core.boot, p, key, buf, &n)) != DSM_OK) {
                snprintf(err, err_len, "node %d published no address for transport %s", p, name);
                goto out;
            }
            if (n == 0 || (t->ops->reach && !t->ops->reach(t->tp, p, buf, n)))
                continue;
            if (!(addrs[p] = malloc(n))) {
                rc = DSM_ENOMEM;
                goto out;
            }
            memcpy(addrs[p], buf, n);
            lens[p] = n;
            cand[p] = 1;
            ncand++;
        }
        if (t && ncand) {
            int crc = t->ops->connect(t->tp, (const void *const *)addrs, lens);
            for (int p = 0; p < core.size; p++)
                if (cand[p] && (t->ops->peer_up ? t->ops->peer_up(t->tp, p) : crc == DSM_OK))
                    mine[p / 8] |= (uint8_t)(1u << (p % 8));
        }
        for (int p = 0; p < core.size; p++) {
            free(addrs[p]);
            addrs[p] = NULL;
            lens[p] = 0;
        }
        snprintf(key, sizeof key, "tp.up.%s", name);
        if ((rc = core.boot.put(&core.boot, key, mine, nbytes)) || (rc = core.boot.fence(&core.boot))) {
            snprintf(err, err_len, "the rendezvous failed while agreeing on transport %s", name);
            goto out;
        }
        for (int p = 0; p < core.size; p++) {
            if (!cand[p])
                continue;
            size_t n = nbytes;
            int up_here = mine[p / 8] >> (p % 8) & 1, up_there = 0;
            if (core.boot.get(&core.boot, p, key, theirs, &n) == DSM_OK && n == nbytes)
                up_there = theirs[core.rank / 8] >> (core.rank % 8) & 1;
            if (t && up_here && up_there) {
                core.peer_tp[p] = (int8_t)i;
                settled[p] = 1;
                t->used = 1;
                continue;
            }
            dsm_info("transport %s: no connection with node %d (%s); that pair tries the next transport", name, p,
                     up_here ? "it failed at the other end" : "it failed here; see the transport's message above");
            if (t && up_here && t->ops->peer_drop)
                t->ops->peer_drop(t->tp, p);
        }
    }
    for (int p = 0; p < core.size; p++) {
        if (settled[p])
            continue;
        char why[512] = "";
        for (int i = 0; i < core.ntp; i++)
            if (reasons[i][0])
                snprintf(why + strlen(why), sizeof why - strlen(why), "; here %s cannot start: %.200s",
                         core.tp[i].ops->name, reasons[i]);
        snprintf(err, err_len, "node %d cannot be reached by any transport of DSM_TRANSPORT='%s'%.300s%s", p,
                 core.cfg.tp_list, why, why[0] ? "" : " (run with DSM_LOG_LEVEL=info for the reasons)");
        rc = DSM_EUNREACH;
        goto out;
    }
out:
    for (int p = 0; addrs && p < core.size; p++)
        free(addrs[p]);
    free(mine);
    free(theirs);
    free(cand);
    free(addrs);
    free(lens);
    free(settled);
    return rc;
}

static void tp_atomic_agent(void);

static int tp_select(char *err, size_t err_len)
{
    int rc = tp_agree_lists(err, err_len);
    if (rc)
        return rc;
    /* Start every provider of the list that is built; publish an address for each (empty when it did not
     * start, or is not built here, so every node finds every key). */
    char reasons[DSM_TP_MAX][256];
    int started = 0;
    for (int i = 0; i < core.cfg.ntp; i++) {
        const char *name = core.cfg.tp[i];
        const struct dsm_tp_ops *ops = dsm_tp_lookup(name);
        uint8_t addr[DSM_TP_ADDR_MAX];
        size_t alen = 0;
        char key[32];
        snprintf(key, sizeof key, "tp.%s", name);
        if (!ops) {
            if (core.cfg.tp_explicit) {
                snprintf(err, err_len, "DSM_TRANSPORT='%s': transport '%s' was not built into this libdsm (%s; "
                         "see dsm_info)", core.cfg.tp_list, name, dsm_tp_lookup_error(name));
                return DSM_ENOSYS;
            }
            dsm_info("transport %s: %s; skipped", name, dsm_tp_lookup_error(name));
            if ((rc = core.boot.put(&core.boot, key, addr, 0)))
                return rc;
            continue;
        }
        struct tp_inst *t = &core.tp[core.ntp];
        char *why = reasons[core.ntp++];
        why[0] = '\0';
        t->ops = ops;
        if (ops->init(&core.services, &t->tp, why, sizeof reasons[0]) != DSM_OK) {
            dsm_info("transport %s: cannot start here: %s", name, why);
            t->tp = NULL;
        } else {
            alen = sizeof addr;
            if (ops->addr_get(t->tp, addr, &alen) != DSM_OK) {
                snprintf(why, sizeof reasons[0], "no address to publish");
                dsm_info("transport %s: no address to publish", name);
                ops->finalize(t->tp);
                t->tp = NULL;
                alen = 0;
            } else {
                started++;
            }
        }
        if ((rc = core.boot.put(&core.boot, key, addr, alen)))
            return rc;
    }
    if (core.ntp == 0) {
        snprintf(err, err_len, "DSM_TRANSPORT='%s' names no transport built into this libdsm (built: %s)",
                 core.cfg.tp_list, dsm_tp_built_names());
        return DSM_ENOSYS;
    }
    if ((rc = core.boot.fence(&core.boot)))
        return rc;
    rc = tp_connect_agreed(reasons, err, err_len);
    if (rc == DSM_EUNREACH && !started) {
        /* Nothing could start on this node: say so first, it is the cause (e.g. DSM_TRANSPORT=rdma, no device). */
        char why[512] = "";
        for (int i = 0; i < core.ntp; i++)
            snprintf(why + strlen(why), sizeof why - strlen(why), "%s%s: %.200s", why[0] ? "; " : "",
                     core.tp[i].ops->name, reasons[i]);
        snprintf(err, err_len, "DSM_TRANSPORT='%s': no transport can start on this node: %.300s", core.cfg.tp_list, why);
        return DSM_ENOSYS;
    }
    if (rc)
        return rc;
    tp_atomic_agent();
    /* Providers that serve no peer are closed; name the mix, in preference order. */
    core.tp_name[0] = '\0';
    for (int i = 0; i < core.ntp; i++) {
        if (core.tp[i].tp && !core.tp[i].used) {
            core.tp[i].ops->finalize(core.tp[i].tp);
            core.tp[i].tp = NULL;
        }
        if (core.tp[i].used)
            snprintf(core.tp_name + strlen(core.tp_name), sizeof core.tp_name - strlen(core.tp_name), "%s%s",
                     core.tp_name[0] ? "+" : "", core.tp[i].ops->name);
    }
    return DSM_OK;
}

/* Which provider does this node's own atomics (issue 5, DESIGN.md 4.2): one whose device atomics are not
 * atomic with CPU atomics must do the home's atomics too, through its loopback, so one agent does them all. */
static void tp_atomic_agent(void)
{
    core.atomic_self = -1;
    for (int i = 0; i < core.ntp; i++) {
        struct tp_inst *t = &core.tp[i];
        if (!t->used)
            continue;
        uint32_t caps = t->ops->caps_now ? t->ops->caps_now(t->tp) : t->ops->caps;
        if (!(caps & DSM_TP_CAP_ATOMIC_NATIVE) || (caps & DSM_TP_CAP_ATOMIC_GLOB))
            continue;
        if (caps & DSM_TP_CAP_ATOMIC_SELF) {
            core.atomic_self = i;
            dsm_info("atomics on memory this node homes go through transport %s too (its device atomics are not "
                     "atomic with CPU atomics)", t->ops->name);
        } else {
            dsm_warn("transport %s: device atomics are not atomic with CPU atomics and this node cannot use its own "
                     "device: its own atomics on dsm_alloc_atomic memory may race with its peers'", t->ops->name);
        }
        return;
    }
}

/* How many ranks of the job run on this host (same host name and boot id). */
static int ranks_on_this_host(void)
{
    char me[320], boot[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f))
            boot[0] = '\0';
        fclose(f);
    }
    boot[strcspn(boot, "\n")] = '\0';
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    snprintf(me, sizeof me, "%s/%s", host, boot);
    int same = 0;
    if (core.boot.put(&core.boot, "host", me, strlen(me) + 1) != DSM_OK || core.boot.fence(&core.boot) != DSM_OK)
        return 1;
    for (int p = 0; p < core.size; p++) {
        char theirs[320];
        size_t n = sizeof theirs;
        if (core.boot.get(&core.boot, p, "host", theirs, &n) == DSM_OK && n && theirs[n - 1] == '\0' &&
            strcmp(theirs, me) == 0)
            same++;
    }
    return same ? same : 1;
}

/* ---- init and finalize ---- */

/* The job secret every connection proves (DESIGN.md 4.7); zeroed at teardown. */
static uint8_t job_secret[DSM_AUTH_KEY_SIZE];

const uint8_t *dsm_core_secret(void)
{
    return core.services.secret;
}

int dsm_core_peer_left(int peer)
{
    if (!core.up || peer < 0 || peer >= core.size || peer == core.rank || !core.peer_tp)
        return 0;
    return PEER_TP(peer)->ops->peer_left(PEER_TP(peer)->tp, peer);
}

static void teardown(int clean)
{
    dsm_hb_stop();
    __atomic_store_n(&core.progress_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < core.nprogress; i++)
        pthread_join(core.progress[i], NULL);
    core.nprogress = 0;
    core.dispatch_serial = 0;
    dsm_mig_teardown();
    tp_close_all();
    dsm_pg_teardown();
    dsm_dir_teardown();
    dsm_lock_teardown();
    dsm_stats_teardown();
    dsm_malloc_teardown();
    dsm_credit_teardown();
    dsm_alloc_reset();
    dsm_region_release();
    free(core.peer_tp);
    core.peer_tp = NULL;
    if (core.boot.fini)
        core.boot.fini(&core.boot, clean);
    memset(&core.boot, 0, sizeof core.boot);
    memset(core.am, 0, sizeof core.am);
    core.up = 0;
    core.finalizing = 0;
    core.rank = core.size = -1;
    core.services.secret = NULL;
    sodium_memzero(job_secret, sizeof job_secret);
    dsm_log_set_rank(-1);
}

DSM_API int dsm_init_version(int api_version, int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if ((api_version >> 16) > DSM_VERSION_MAJOR) {
        fprintf(stderr, "libdsm: this program was built for libdsm API %d.%d, newer than this library (%s)\n",
                api_version >> 16, api_version & 0xffff, PACKAGE_VERSION);
        return DSM_EVERSION;
    }
    pthread_mutex_lock(&core.lock);
    if (core.up) {
        pthread_mutex_unlock(&core.lock);
        return DSM_EALREADY;
    }
    char err[512] = "";
    int rc = dsm_config_parse(&core.cfg, (dsm_getenv_fn_t)getenv, err, sizeof err);
    if (rc) {
        fprintf(stderr, "libdsm: %s\n", err);
        pthread_mutex_unlock(&core.lock);
        return rc;
    }
    dsm_log_level = core.cfg.log_level;
    if ((rc = dsm_boot_open(&core.cfg, &core.boot, err, sizeof err))) {
        dsm_err("bootstrap failed: %s", err);
        memset(&core.boot, 0, sizeof core.boot);
        pthread_mutex_unlock(&core.lock);
        return rc;
    }
    core.rank = core.boot.rank;
    core.size = core.boot.size;
    core.atomic_self = -1;
    dsm_log_set_rank(core.rank);
    core.up = 1;
    core.progress_stop = 0;
    core.services = (dsm_tp_core_t){
        .abi_version = DSM_TP_ABI_VERSION,
        .rank = core.rank,
        .size = core.size,
        .job_id = core.boot.job_id,
        .timeout_ms = core.cfg.timeout_s * 1000,
        .log = core_log,
        .am_dispatch = core_am_dispatch,
        .complete = core_complete,
        .peer_lost = core_peer_lost,
        .count_tx = core_count_tx,
        .count_rx = core_count_rx,
        .count_refused = core_count_refused,
        .setting = core_setting,
        .may_allocate = core_may_allocate,
    };
    if (core.size > 1 && core.cfg.auth) {
        if ((rc = dsm_secret_obtain(&core.cfg, &core.boot, job_secret, err, sizeof err)))
            goto fail;
        core.services.secret = job_secret;
    }
    dsm_debug("joined job %016llx as rank %d of %d through %s", (unsigned long long)core.boot.job_id, core.rank,
              core.size, core.boot.name);

    if (!(core.peer_tp = calloc((size_t)core.size, sizeof *core.peer_tp))) {
        rc = DSM_ENOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if ((rc = dsm_barrier_setup()) || (rc = dsm_region_reserve()) || (rc = dsm_alloc_setup()) ||
        (rc = dsm_pg_setup()) || (rc = dsm_dir_setup()) || (rc = dsm_lock_setup()) ||
        (rc = dsm_stats_setup()) || (rc = dsm_malloc_setup()) ||
        (rc = dsm_credit_setup(core.size)) || (rc = dsm_mig_setup()) ||
        (rc = dsm_hb_setup(core.rank, core.size, core.cfg.timeout_s))) {
        snprintf(err, sizeof err, "%s", dsm_strerror(rc));
        goto fail;
    }
    int here = core.size == 1 ? 1 : ranks_on_this_host();
    dsm_wait_choose(core.cfg.wait_mode, here);
    core.oversub = dsm_hb_scale(here);
    if (core.size == 1) {
        snprintf(core.tp_name, sizeof core.tp_name, "self");
    } else {
        if ((rc = tp_select(err, sizeof err)))
            goto fail;
        if ((rc = progress_start()) != DSM_OK || (rc = dsm_hb_start()) != DSM_OK) {
            snprintf(err, sizeof err, "cannot start a progress or heartbeat thread");
            goto fail;
        }
    }
    dsm_info("rank %d of %d up, transport %s", core.rank, core.size, core.tp_name);
    pthread_mutex_unlock(&core.lock);
    /* Nobody leaves dsm_init before every node is connected. */
    rc = dsm_barrier();
    if (rc) {
        pthread_mutex_lock(&core.lock);
        snprintf(err, sizeof err, "the first barrier failed");
        goto fail;
    }
    return DSM_OK;
fail:
    dsm_err("dsm_init failed: %s", err);
    teardown(0);
    pthread_mutex_unlock(&core.lock);
    return rc;
}

DSM_API int dsm_finalize(void)
{
    pthread_mutex_lock(&core.lock);
    if (!core.up) {
        pthread_mutex_unlock(&core.lock);
        return DSM_ENOTINIT;
    }
    pthread_mutex_unlock(&core.lock);
    int rc = dsm_barrier();
    pthread_mutex_lock(&core.lock);
    core.finalizing = 1;
    /* No heartbeat may follow this node's bye, and peers that said bye send none. */
    dsm_hb_stop();
    /* Say bye on every connection, then wait for every peer's bye: all their earlier messages are then in. */
    for (int p = 0; rc == DSM_OK && p < core.size; p++)
        if (p != core.rank)
            rc = PEER_TP(p)->ops->bye(PEER_TP(p)->tp, p);
    /* A peer on an oversubscribed host may take long to be scheduled for its byes (128 ranks on 2 cores): the
     * wait grows as the heartbeats' limit does; a dead peer is found sooner, by its connection. */
    int64_t deadline = now_ms() + (int64_t)core.cfg.timeout_s * 1000 * core.oversub;
    for (int p = 0; rc == DSM_OK && p < core.size; p++) {
        while (p != core.rank && !PEER_TP(p)->ops->peer_left(PEER_TP(p)->tp, p)) {
            if (now_ms() > deadline) {
                dsm_err("node %d did not finish dsm_finalize within DSM_TIMEOUT", p);
                rc = DSM_ETIMEDOUT;
                break;
            }
            usleep(200);
        }
    }
    if (core.cfg.stats)
        dsm_stats_print(stderr, core.rank, core.tp_name);
    /* The rank did call dsm_finalize: tell the launcher so, even when it failed (its status says the rest). */
    teardown(1);
    pthread_mutex_unlock(&core.lock);
    return rc;
}

DSM_API int dsm_rank(void)
{
    if (!core.up)
        dsm_set_last_error(DSM_ENOTINIT);
    return core.up ? core.rank : -1;
}

DSM_API int dsm_size(void)
{
    if (!core.up)
        dsm_set_last_error(DSM_ENOTINIT);
    return core.up ? core.size : -1;
}

DSM_API const char *dsm_transport_name(void)
{
    return core.up ? core.tp_name : "none";
}
