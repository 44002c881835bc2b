/* SPDX-License-Identifier: MIT */
/*
 * rdma.c - the RDMA provider (DESIGN.md 4.4, issue 5): RC queue pairs in a full mesh set up with rdma_cm, one
 * shared receive queue, credit-based flow control, active messages as SENDs, put/put_notify as RDMA WRITE, get
 * as RDMA READ, fetch-add and compare-swap as RDMA atomics. Knows nothing of pages or directories. Built as a
 * module (dsm_tp_rdma.so) that transport/registry.c dlopens; exports only dsm_tp_rdma_ops.
 *
 * Connection setup. init binds an rdma_cm listener to the IPv4 address of the chosen device's port
 * (rdma_dev.c) and publishes "address:port". The higher rank of each pair resolves the lower rank's address and
 * route and connects, with private data naming magic, version, job id, both ranks and the job size; the lower
 * rank checks every field and accepts or rejects. A pair whose connection fails is reported per peer (peer_up),
 * so the core can agree through the rendezvous to use the next provider for that pair only (peer_drop).
 * Authentication (transport/auth.h) then runs in the first frames on the queue pair, since rdma_cm private data
 * is too small for it: the connecting rank sends AUTH1 (its nonce), the other answers AUTH2 (its nonce and MAC),
 * the connecting rank checks it and answers AUTH3 (its MAC). Until a peer's exchange is complete, any other
 * frame from it fails the connection, and the peer does not count as up. These are control frames (no
 * credit, the RDMA_CTL spare buffers hold them). The RoCE data path itself (rkeys) is not authenticated.
 *
 * Frames. Every SEND carries one frame: a 16-byte little-endian header (type, handler id, header length,
 * payload length, credits, aux) then the active message's header and payload. A message that does not fit one
 * receive buffer (RDMA_BUF bytes) is cut into fragments: FIRST (header, aux = total payload) then MORE frames,
 * sent back to back under the peer's send lock, so they arrive contiguous and in order; the receiver
 * reassembles them (the progress thread may allocate). The QP the completion came from names the sender, so
 * a frame cannot claim another rank.
 *
 * Flow control. The receive queue is shared by all peers, so each peer gets a window of W data frames (W from
 * the job size, see sizes()); the SRQ holds (N-1)*(W+RDMA_CTL) buffers. A sender spends one credit per data
 * frame. The receiver counts the frames it consumed and reposted, and returns that cumulative count in the
 * credits field of every frame it sends back (piggyback) or, when W/4 are owed and nothing else is going,
 * in a GRANT frame. GRANT and LOST frames take no credit; at most a few are in flight per peer (a grant covers
 * W/4 frames), and the RDMA_CTL spare buffers per peer hold them. A frame that finds no credit, no send slot
 * or no send-queue room waits in the peer's backlog (order kept: once anything waits, everything after waits
 * too), drained as credits and completions come back; so am_send never blocks, except from the page-fault
 * path, which may not grow the backlog beyond its preallocated 64 KiB and waits for room instead. RNR retry
 * (infinite) is only a backstop.
 *
 * Receiving is split in two so that no sender ever depends on the progress thread: harvest (any thread, under
 * cq_lock) polls the receive CQ, takes the credits, handles registrations and lost-node reports, and queues
 * the rest in order on a ring; dispatch (the progress thread) runs handlers, reposts buffers and returns
 * credits. A fault-path thread waiting for credits harvests them itself even when the progress thread is busy.
 *
 * Sends: frames up to the device's inline limit go inline; others are copied into the peer's ring of
 * registered send slots. Completions are requested selectively (every ring/4 frames, when the send queue is
 * half full, and for every one-sided operation); a completion frees every slot posted before it, since a
 * QP's work requests complete in order. Send completions are polled by whichever thread needs room.
 *
 * One-sided. The target's registrations are announced to every peer (REG, UNREG frames) before mem_reg
 * returns (it waits for their send completions), so the initiator validates key, address and range locally:
 * a forged key is refused with DSM_EINVAL instead of putting the QP into error. Local buffers are used in
 * place when they lie in a registration of this node, else copied through a registered bounce slot (up to
 * RDMA_BOUNCE bytes), else registered for the operation. put_notify is the WRITE then an ordinary frame on the
 * same QP, so the peer's handler runs after the data is placed (RC ordering). Atomics are the verbs atomics;
 * they are atomic with CPU atomics on the target only when the device says IBV_ATOMIC_GLOB (dsm_info shows it).
 * Without it, each node also connects a queue pair to itself, and atomic() accepts its own rank (caps_now says
 * ATOMIC_SELF): the home of a word then does its own atomics through its device too, so one agent does all.
 *
 * Failures. QPs use an ACK timeout of 4.096 us * 2^RDMA_ACK_TIMEOUT (~0.5 s) and 6 retries, so a dead peer
 * surfaces as a completion error within a few seconds. Every completion error, QP or port async event and
 * unexpected rdma_cm disconnect is logged with the verbs status string and the peer's rank and reported
 * through core->peer_lost; a peer that said BYE may disconnect.
 *
 * Threads: any thread sends and posts one-sided operations (per-peer send lock); one thread at a time runs
 * progress (plock); harvest and send-completion polling take their own locks, never while holding a send lock.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "dsm.h"
#include "transport/auth.h"
#include "transport/rdma/rdma.h"
#include "transport/inaddr.h"
#include "transport/transport.h"

#define RDMA_BUF 8192u             /* one receive buffer / send slot */
#define RDMA_FRAME_HDR 16u
#define RDMA_CTL 6u                /* spare receive buffers per peer for GRANT and LOST frames */
#define RDMA_WINDOW_MAX 64u
#define RDMA_WINDOW_MIN 8u
#define RDMA_SRQ_BUDGET 512u       /* receive buffers aimed at, beyond which windows shrink */
#define RDMA_RING_MAX 32u          /* send slots per peer */
#define RDMA_RMA_SQ 32u            /* send-queue entries per peer for one-sided operations */
#define RDMA_BOUNCE (64u << 10)
#define RDMA_BOUNCE_SLOTS 16u
#define RDMA_OPS 512u
#define RDMA_INLINE_WANT 128u
#define RDMA_BACKLOG_MIN (64u << 10)
#define RDMA_ACK_TIMEOUT 17        /* 4.096 us * 2^17 = 0.54 s per try */
#define RDMA_RETRY 6
#define RDMA_RNR_RETRY 7           /* infinite: only a backstop, credits prevent RNR */
#define RDMA_READY_BATCH 32
#define RDMA_REG_GRACE_MS 1000     /* how long a one-sided op waits for a registration announcement */
#define RDMA_CM_MAGIC 0x64736d52u  /* "dsmR" */
#define RDMA_CM_VERSION 1

enum frame_type {
    F_AM = 1,      /* data: a whole active message */
    F_FIRST = 2,   /* data: first fragment; aux = total payload */
    F_MORE = 3,    /* data: next fragment */
    F_GRANT = 4,   /* control: credits only */
    F_REG = 5,     /* data: a registration of the sender: addr, len, key */
    F_UNREG = 6,   /* data: that registration is gone */
    F_BYE = 7,     /* data: the sender is leaving on purpose */
    F_LOST = 8,    /* control: aux = a node the sender lost */
    F_AUTH1 = 9,   /* control: connector -> acceptor, body: its nonce */
    F_AUTH2 = 10,  /* control: acceptor -> connector, body: its nonce, its MAC */
    F_AUTH3 = 11,  /* control: connector -> acceptor, body: its MAC */
};

enum peer_state { P_NONE = 0, P_CONNECTING, P_UP, P_FAILED, P_DROPPED };

/* Backlog record flags. */
enum { BL_DATA = 1, BL_SYNC = 2, BL_BYE = 4 };

/* rdma_cm private data of connect, accept and reject (little-endian). */
struct cm_priv {
    uint32_t magic;
    uint16_t version;
    uint16_t reject;   /* on reject: why (enum cm_reject) */
    uint64_t job_id;
    uint32_t src, dst, size;
} __attribute__((packed));

enum cm_reject { REJ_NONE = 0, REJ_BAD = 1, REJ_TEST = 2, REJ_DUP = 3 };

struct rreg {
    uint64_t addr, len;
    uint32_t key;
};

struct lmr {
    uint8_t *addr;
    size_t len;
    struct ibv_mr *mr;
};

struct rdma_peer {
    int rank;
    enum peer_state state;
    char fail[192];
    char name[64];  /* address, for logs */
    struct rdma_cm_id *id;
    struct ibv_qp *qp;
    int64_t retry_at;
    /* Send side, under slock. */
    pthread_mutex_t slock;
    uint32_t sent;        /* data frames posted */
    uint64_t wr_posted;   /* work requests posted */
    uint64_t last_signal; /* number of the last signaled one */
    uint8_t *ring;        /* ring_slots send slots */
    uint64_t *slot_wr;    /* work request that uses each slot */
    uint32_t ring_head, ring_tail;
    uint8_t *bl;          /* backlog of records: u32 length, u32 flags, frame */
    size_t bl_head, bl_tail, bl_cap;
    /* Shared, atomic. */
    uint32_t acked;       /* data frames of ours the peer consumed (cumulative, from its frames) */
    uint32_t consumed;    /* data frames of the peer's that we consumed and reposted */
    uint32_t reported;    /* last consumed count we sent it */
    uint64_t wr_done;     /* every work request up to this number completed */
    uint64_t rma_last;    /* number of the last one-sided work request */
    uint64_t sync_wr, bye_wr;
    uint32_t backlogged;  /* the backlog is not empty */
    int left;             /* the peer said BYE */
    int bye_sent;
    /* Authentication, while connecting (the connect thread harvests): */
    int authed;           /* the exchange completed: frames of the job may flow */
    int auth_step;        /* acceptor: 1 once AUTH2 was sent */
    dsm_auth_ctx_t auth;
    /* Reassembly, progress thread only. */
    uint8_t *ra;
    size_t ra_total, ra_got;
    uint8_t ra_am;
    uint16_t ra_hlen;
    uint8_t ra_hdr[DSM_TP_AM_HDR_MAX];
    /* The peer's registrations, under tp->rlock. */
    struct rreg *rr;
    size_t nrr, caprr;
};

struct rdma_op {
    struct rdma_op *next;
    int peer;
    int kind; /* IBV_WR_* */
    uint64_t wrno;
    dsm_tp_req_t *req;
    void *dst;         /* get: where the data goes */
    size_t len;
    int bounce;        /* bounce slot or -1 */
    struct ibv_mr *tmp_mr;
    uint64_t result;   /* atomics land here (the op table is registered) */
};

struct ready {
    uint32_t buf;
    uint32_t len;
    int peer;
};

struct dsm_tp {
    const dsm_tp_core_t *core;
    dsm_tp_rdma_dev_t dev;
    char addr[64];
    int size, rank;
    struct rdma_event_channel *ech;
    struct rdma_cm_id *lid;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *cch;
    struct ibv_cq *scq, *rcq;
    struct ibv_srq *srq;
    uint8_t *recv_buf, *send_buf, *bounce_buf;
    struct ibv_mr *recv_mr, *send_mr, *bounce_mr, *op_mr;
    struct rdma_op *ops, *op_free;
    uint32_t bounce_free[RDMA_BOUNCE_SLOTS];
    int nbounce_free;
    uint32_t window, srq_depth, ring_slots, sq_depth, max_inline, rd_atom, grant_at;
    uint32_t max_msg;
    struct rdma_peer *peers;
    /* qp_num -> peer, open addressing; written only while connecting. */
    uint32_t *qmap_qpn;
    int *qmap_peer;
    uint32_t qmap_mask;
    /* Frames harvested, waiting for dispatch (progress thread). */
    struct ready *ready;
    uint32_t ready_cap;
    uint32_t ready_head, ready_tail;
    pthread_mutex_t plock, cqlock, scqlock, oplock;
    pthread_rwlock_t mrlock, rlock;
    struct lmr *lmrs;
    size_t nlmr, caplmr;
    unsigned cq_events;
    int refuse_from;  /* test hook: refuse this rank's connection */
    /* The loopback connection (peers[rank] is its active end): atomics by this node on its own registered memory
     * go through the device, like its peers' (only when the device's atomics are not global). */
    struct rdma_cm_id *self_pasv;
    struct ibv_qp *self_pasv_qp;
    int wake_fd;  /* wakes the progress thread when another thread harvested frames for it */
};

/* Is the calling thread inside progress (so harvested frames need no wake-up)? */
static __thread int in_progress;

#define RLOG(tp_x, lvl_x, ...) ((tp_x)->core->log((lvl_x), DSM_TP_RDMA_NAME, __VA_ARGS__))
#define SEND_TAG (1ull << 63)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void le16_put(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static uint16_t le16_get(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void le32_put(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t le32_get(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t le64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

struct frame {
    uint8_t type, am_id;
    uint16_t hdr_len;
    uint32_t len, credits, aux;
};

static void frame_enc(uint8_t *b, const struct frame *f)
{
    b[0] = f->type;
    b[1] = f->am_id;
    le16_put(b + 2, f->hdr_len);
    le32_put(b + 4, f->len);
    le32_put(b + 8, f->credits);
    le32_put(b + 12, f->aux);
}

static void frame_dec(const uint8_t *b, struct frame *f)
{
    f->type = b[0];
    f->am_id = b[1];
    f->hdr_len = le16_get(b + 2);
    f->len = le32_get(b + 4);
    f->credits = le32_get(b + 8);
    f->aux = le32_get(b + 12);
}

static int seq_after(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }

/* ---- peers and queue pairs ---- */

static struct rdma_peer *peer_of(dsm_tp_t *tp, int peer)
{
    if (peer < 0 || peer >= tp->size || peer == tp->rank)
        return NULL;
    return &tp->peers[peer];
}

static void qmap_set(dsm_tp_t *tp, uint32_t qpn, int peer)
{
    uint32_t h = (qpn * 2654435761u) & tp->qmap_mask;
    while (tp->qmap_peer[h] >= 0 && tp->qmap_qpn[h] != qpn)
        h = (h + 1) & tp->qmap_mask;
    tp->qmap_qpn[h] = qpn;
    tp->qmap_peer[h] = peer;
}

static int qmap_get(dsm_tp_t *tp, uint32_t qpn)
{
    uint32_t h = (qpn * 2654435761u) & tp->qmap_mask;
    for (uint32_t n = 0; n <= tp->qmap_mask; n++, h = (h + 1) & tp->qmap_mask) {
        if (tp->qmap_peer[h] == -1)
            return -1;
        if (tp->qmap_qpn[h] == qpn)
            return tp->qmap_peer[h];
    }
    return -1;
}

/* A connected peer failed: report it once, with the reason (core->peer_lost does not return). */
static void peer_fail(dsm_tp_t *tp, struct rdma_peer *pe, const char *why)
{
    if (pe->state == P_DROPPED)
        return;
    if (__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE) && __atomic_load_n(&pe->bye_sent, __ATOMIC_ACQUIRE))
        return; /* both said bye: the connection may go */
    if (__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE)) {
        tp->core->peer_lost(pe->rank, "it finished (dsm_finalize) while this node was still working with it");
        return;
    }
    RLOG(tp, DSM_LOG_ERROR, "connection to node %d (%s) failed: %s", pe->rank, pe->name, why);
    tp->core->peer_lost(pe->rank, why);
}

/* ---- registered buffers ---- */

static void repost(dsm_tp_t *tp, uint32_t idx)
{
    struct ibv_sge sge = {.addr = (uintptr_t)(tp->recv_buf + (size_t)idx * RDMA_BUF), .length = RDMA_BUF,
                          .lkey = tp->recv_mr->lkey};
    struct ibv_recv_wr wr = {.wr_id = idx, .sg_list = &sge, .num_sge = 1}, *bad;
    int rc = ibv_post_srq_recv(tp->srq, &wr, &bad);
    if (rc) {
        /* The receive queue losing a buffer breaks the credit arithmetic: nothing safe is left to do. */
        RLOG(tp, DSM_LOG_ERROR, "cannot repost a receive buffer: %s", strerror(rc));
        tp->core->peer_lost(-1, "the RDMA receive queue failed");
    }
}

static int bounce_get(dsm_tp_t *tp)
{
    pthread_mutex_lock(&tp->oplock);
    int b = tp->nbounce_free ? (int)tp->bounce_free[--tp->nbounce_free] : -1;
    pthread_mutex_unlock(&tp->oplock);
    return b;
}

static void bounce_put(dsm_tp_t *tp, int b)
{
    pthread_mutex_lock(&tp->oplock);
    tp->bounce_free[tp->nbounce_free++] = (uint32_t)b;
    pthread_mutex_unlock(&tp->oplock);
}

static struct rdma_op *op_get(dsm_tp_t *tp)
{
    pthread_mutex_lock(&tp->oplock);
    struct rdma_op *op = tp->op_free;
    if (op)
        tp->op_free = op->next;
    pthread_mutex_unlock(&tp->oplock);
    if (op) {
        op->bounce = -1;
        op->tmp_mr = NULL;
        op->req = NULL;
        op->dst = NULL;
        op->result = 0;
    }
    return op;
}

static void op_put(dsm_tp_t *tp, struct rdma_op *op)
{
    if (op->bounce >= 0)
        bounce_put(tp, op->bounce);
    if (op->tmp_mr)
        ibv_dereg_mr(op->tmp_mr);
    op->bounce = -1;
    op->tmp_mr = NULL;
    pthread_mutex_lock(&tp->oplock);
    op->next = tp->op_free;
    tp->op_free = op;
    pthread_mutex_unlock(&tp->oplock);
}

/* ---- send completions (any thread) ---- */

static void wr_done_upto(struct rdma_peer *pe, uint64_t wrno)
{
    uint64_t cur = __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE);
    while (wrno > cur && !__atomic_compare_exchange_n(&pe->wr_done, &cur, wrno, 0, __ATOMIC_ACQ_REL,
                                                      __ATOMIC_ACQUIRE))
        ;
}

static const char *op_name(int kind)
{
    switch (kind) {
    case IBV_WR_RDMA_WRITE: return "RDMA WRITE";
    case IBV_WR_RDMA_READ: return "RDMA READ";
    case IBV_WR_ATOMIC_FETCH_AND_ADD: return "atomic fetch-add";
    case IBV_WR_ATOMIC_CMP_AND_SWP: return "atomic compare-swap";
    default: return "SEND";
    }
}

/* Poll the send CQ. Returns the number of completions handled. */
static int poll_scq(dsm_tp_t *tp)
{
    if (pthread_mutex_trylock(&tp->scqlock) != 0)
        return 0;
    struct ibv_wc wc[32];
    int total = 0, n;
    while ((n = ibv_poll_cq(tp->scq, 32, wc)) > 0) {
        for (int i = 0; i < n; i++) {
            struct rdma_op *op = NULL;
            struct rdma_peer *pe;
            if (wc[i].wr_id & SEND_TAG) {
                pe = &tp->peers[(wc[i].wr_id >> 40) & 0x7fffff];
                if (wc[i].status == IBV_WC_SUCCESS)
                    wr_done_upto(pe, wc[i].wr_id & ((1ull << 40) - 1));
            } else {
                op = (struct rdma_op *)(uintptr_t)wc[i].wr_id;
                pe = &tp->peers[op->peer];
                if (wc[i].status == IBV_WC_SUCCESS)
                    wr_done_upto(pe, op->wrno);
            }
            if (wc[i].status != IBV_WC_SUCCESS) {
                char why[192];
                snprintf(why, sizeof why, "%s to node %d failed: %s (vendor error 0x%x)",
                         op ? op_name(op->kind) : "SEND", pe->rank, ibv_wc_status_str(wc[i].status),
                         wc[i].vendor_err);
                pthread_mutex_unlock(&tp->scqlock);
                peer_fail(tp, pe, why);
                return total;
            }
            if (op) {
                if (op->kind == IBV_WR_RDMA_READ && op->bounce >= 0)
                    memcpy(op->dst, tp->bounce_buf + (size_t)op->bounce * RDMA_BOUNCE, op->len);
                dsm_tp_req_t *req = op->req;
                uint64_t v = op->result;
                op_put(tp, op);
                if (req)
                    tp->core->complete(req, DSM_OK, v);
            }
        }
        total += n;
    }
    pthread_mutex_unlock(&tp->scqlock);
    if (n < 0)
        RLOG(tp, DSM_LOG_ERROR, "polling the send completion queue failed");
    return total;
}

/* ---- posting frames (send lock held) ---- */

static uint32_t credits_left(struct rdma_peer *pe, uint32_t window)
{
    uint32_t out = pe->sent - __atomic_load_n(&pe->acked, __ATOMIC_ACQUIRE);
    return out >= window ? 0 : window - out;
}

static void ring_reclaim(dsm_tp_t *tp, struct rdma_peer *pe)
{
    uint64_t done = __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE);
    while (pe->ring_tail != pe->ring_head && pe->slot_wr[pe->ring_tail % tp->ring_slots] <= done)
        pe->ring_tail++;
}

static int sq_room(dsm_tp_t *tp, struct rdma_peer *pe, uint32_t need)
{
    uint64_t used = pe->wr_posted - __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE);
    return used + need <= tp->sq_depth;
}

/* Post one frame made of hdr (RDMA_FRAME_HDR bytes, credits filled in here) and up to two pieces. Returns 1
 * when posted, 0 when it must wait (no credit, slot or queue room), -1 on a post error (peer failed). */
static int frame_post(dsm_tp_t *tp, struct rdma_peer *pe, uint8_t *fh, const void *p1, size_t l1, const void *p2,
                      size_t l2, int flags)
{
    int data = flags & BL_DATA;
    size_t total = RDMA_FRAME_HDR + l1 + l2;
    if (data && credits_left(pe, tp->window) == 0)
        return 0;
    if (!sq_room(tp, pe, 1))
        return 0;
    int inl = total <= tp->max_inline;
    if (!inl) {
        ring_reclaim(tp, pe);
        if (pe->ring_head - pe->ring_tail >= tp->ring_slots)
            return 0;
    }
    uint32_t consumed = __atomic_load_n(&pe->consumed, __ATOMIC_ACQUIRE);
    le32_put(fh + 8, consumed);
    uint64_t wrno = pe->wr_posted + 1;
    int sig = (flags & (BL_SYNC | BL_BYE)) || wrno - pe->last_signal >= (tp->ring_slots + 3) / 4 ||
              !sq_room(tp, pe, tp->sq_depth / 2);
    struct ibv_sge sge[3];
    int nsge = 0;
    uint8_t *slot = NULL;
    if (inl) {
        sge[nsge++] = (struct ibv_sge){.addr = (uintptr_t)fh, .length = RDMA_FRAME_HDR};
        if (l1)
            sge[nsge++] = (struct ibv_sge){.addr = (uintptr_t)p1, .length = (uint32_t)l1};
        if (l2)
            sge[nsge++] = (struct ibv_sge){.addr = (uintptr_t)p2, .length = (uint32_t)l2};
    } else {
        uint32_t s = pe->ring_head % tp->ring_slots;
        slot = pe->ring + (size_t)s * RDMA_BUF;
        memcpy(slot, fh, RDMA_FRAME_HDR);
        if (l1)
            memcpy(slot + RDMA_FRAME_HDR, p1, l1);
        if (l2)
            memcpy(slot + RDMA_FRAME_HDR + l1, p2, l2);
        sge[nsge++] = (struct ibv_sge){.addr = (uintptr_t)slot, .length = (uint32_t)total, .lkey = tp->send_mr->lkey};
        /* Until a completion says otherwise, this slot is in use: every completion up to wrno frees it. */
        pe->slot_wr[s] = wrno;
        sig = sig || pe->ring_head - pe->ring_tail + 1 >= tp->ring_slots / 2;
    }
    struct ibv_send_wr wr = {
        .wr_id = SEND_TAG | (uint64_t)pe->rank << 40 | wrno,
        .sg_list = sge,
        .num_sge = nsge,
        .opcode = IBV_WR_SEND,
        .send_flags = (inl ? IBV_SEND_INLINE : 0) | (sig ? IBV_SEND_SIGNALED : 0),
    }, *bad;
    int rc = ibv_post_send(pe->qp, &wr, &bad);
    if (rc) {
        snprintf(pe->fail, sizeof pe->fail, "posting a send failed: %s", strerror(rc));
        return -1;
    }
    if (!inl)
        pe->ring_head++;
    pe->wr_posted = wrno;
    if (sig)
        pe->last_signal = wrno;
    if (data)
        pe->sent++;
    __atomic_store_n(&pe->reported, consumed, __ATOMIC_RELEASE);
    if (flags & BL_SYNC)
        __atomic_store_n(&pe->sync_wr, wrno, __ATOMIC_RELEASE);
    if (flags & BL_BYE)
        __atomic_store_n(&pe->bye_wr, wrno, __ATOMIC_RELEASE);
    tp->core->count_tx(total);
    return 1;
}

/* Post what waits in the backlog, in order, as far as credits and room allow. Returns -1 on a post error. */
static int backlog_drain(dsm_tp_t *tp, struct rdma_peer *pe)
{
    while (pe->bl_head < pe->bl_tail) {
        uint8_t *r = pe->bl + pe->bl_head;
        uint32_t len = le32_get(r), flags = le32_get(r + 4);
        int rc = frame_post(tp, pe, r + 8, r + 8 + RDMA_FRAME_HDR, len - RDMA_FRAME_HDR, NULL, 0, (int)flags);
        if (rc <= 0)
            return rc;
        pe->bl_head += 8 + ((len + 7) & ~7u);
    }
    pe->bl_head = pe->bl_tail = 0;
    __atomic_store_n(&pe->backlogged, 0, __ATOMIC_RELEASE);
    return 0;
}

/* Append a frame to the backlog. DSM_ENOMEM when it does not fit and this thread may not allocate. */
static int backlog_add(dsm_tp_t *tp, struct rdma_peer *pe, const uint8_t *fh, const void *p1, size_t l1,
                       const void *p2, size_t l2, int flags)
{
    size_t len = RDMA_FRAME_HDR + l1 + l2, need = 8 + ((len + 7) & ~(size_t)7);
    if (pe->bl_cap - pe->bl_tail < need) {
        if (pe->bl_head) {
            memmove(pe->bl, pe->bl + pe->bl_head, pe->bl_tail - pe->bl_head);
            pe->bl_tail -= pe->bl_head;
            pe->bl_head = 0;
        }
        if (pe->bl_cap - pe->bl_tail < need) {
            if (tp->core->may_allocate && !tp->core->may_allocate())
                return DSM_ENOMEM;
            size_t cap = pe->bl_cap ? pe->bl_cap : RDMA_BACKLOG_MIN;
            while (cap - pe->bl_tail < need)
                cap *= 2;
            uint8_t *nb = realloc(pe->bl, cap);
            if (!nb)
                return DSM_ENOMEM;
            pe->bl = nb;
            pe->bl_cap = cap;
        }
    }
    uint8_t *r = pe->bl + pe->bl_tail;
    le32_put(r, (uint32_t)len);
    le32_put(r + 4, (uint32_t)flags);
    memcpy(r + 8, fh, RDMA_FRAME_HDR);
    if (l1)
        memcpy(r + 8 + RDMA_FRAME_HDR, p1, l1);
    if (l2)
        memcpy(r + 8 + RDMA_FRAME_HDR + l1, p2, l2);
    pe->bl_tail += need;
    __atomic_store_n(&pe->backlogged, 1, __ATOMIC_RELEASE);
    return DSM_OK;
}

static int harvest(dsm_tp_t *tp);

/* Let other threads' work advance while this one waits for room: send completions and credits. */
static void wait_a_little(dsm_tp_t *tp)
{
    int n = poll_scq(tp);
    n += harvest(tp);
    if (!n)
        usleep(100);
}

/* Send one frame in order: straight away when nothing waits and there is room, else through the backlog.
 * Called with the send lock held; it may be dropped and taken again while a fault-path sender waits. */
static int frame_send(dsm_tp_t *tp, struct rdma_peer *pe, uint8_t *fh, const void *p1, size_t l1, const void *p2,
                      size_t l2, int flags)
{
    int64_t deadline = 0;
    for (;;) {
        if (pe->state != P_UP)
            return DSM_ENODE;
        if (pe->bl_head < pe->bl_tail && backlog_drain(tp, pe) < 0)
            return DSM_ENODE;
        if (pe->bl_head == pe->bl_tail) {
            int rc = frame_post(tp, pe, fh, p1, l1, p2, l2, flags);
            if (rc > 0)
                return DSM_OK;
            if (rc < 0)
                return DSM_ENODE;
        }
        int rc = backlog_add(tp, pe, fh, p1, l1, p2, l2, flags);
        if (rc != DSM_ENOMEM)
            return rc;
        if (tp->core->may_allocate && tp->core->may_allocate())
            return rc;
        /* The fault path: no room and no allocating; wait for the backlog to drain. */
        if (!deadline)
            deadline = now_ms() + tp->core->timeout_ms;
        if (now_ms() > deadline) {
            snprintf(pe->fail, sizeof pe->fail, "no send credit from it for DSM_TIMEOUT");
            return DSM_ETIMEDOUT;
        }
        pthread_mutex_unlock(&pe->slock);
        wait_a_little(tp);
        pthread_mutex_lock(&pe->slock);
    }
}

/* Send an active message, cut into fragments when it does not fit one buffer. */
static int am_frames(dsm_tp_t *tp, struct rdma_peer *pe, uint8_t am_id, const void *hdr, size_t hdr_len,
                     const uint8_t *payload, size_t len)
{
    uint8_t fh[RDMA_FRAME_HDR];
    size_t room = RDMA_BUF - RDMA_FRAME_HDR;
    if (hdr_len + len <= room) {
        struct frame f = {.type = F_AM, .am_id = am_id, .hdr_len = (uint16_t)hdr_len, .len = (uint32_t)len};
        frame_enc(fh, &f);
        return frame_send(tp, pe, fh, hdr, hdr_len, payload, len, BL_DATA);
    }
    size_t part = room - hdr_len;
    struct frame f = {.type = F_FIRST, .am_id = am_id, .hdr_len = (uint16_t)hdr_len, .len = (uint32_t)part,
                      .aux = (uint32_t)len};
    frame_enc(fh, &f);
    int rc = frame_send(tp, pe, fh, hdr, hdr_len, payload, part, BL_DATA);
    for (size_t off = part; rc == DSM_OK && off < len; off += part) {
        part = len - off < room ? len - off : room;
        struct frame m = {.type = F_MORE, .am_id = am_id, .len = (uint32_t)part};
        frame_enc(fh, &m);
        rc = frame_send(tp, pe, fh, payload + off, part, NULL, 0, BL_DATA);
    }
    return rc;
}

/* A send to a peer that is not (or no longer) up. */
static int send_refused(dsm_tp_t *tp, struct rdma_peer *pe, int rc)
{
    if (pe->state == P_UP || pe->state == P_FAILED) {
        if (!__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE) || rc == DSM_ETIMEDOUT)
            peer_fail(tp, pe, pe->fail[0] ? pe->fail : "connection failed");
        return DSM_OK; /* after its bye, what is left to send does not matter */
    }
    return DSM_EINVAL;
}

static int rdma_am_send(dsm_tp_t *tp, int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                        size_t len)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    if (!pe || am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX || len > DSM_TP_AM_PAYLOAD_MAX)
        return DSM_EINVAL;
    pthread_mutex_lock(&pe->slock);
    int rc = pe->state == P_UP ? am_frames(tp, pe, am_id, hdr, hdr_len, payload, len) : DSM_ENODE;
    if (rc != DSM_OK && rc != DSM_ENOMEM && pe->state == P_UP)
        pe->state = P_FAILED;
    pthread_mutex_unlock(&pe->slock);
    if (rc == DSM_OK || rc == DSM_ENOMEM)
        return rc;
    return send_refused(tp, pe, rc);
}

/* A control frame (GRANT, LOST): no credit, inline, never waits. Returns 1 when posted. */
static int control_post(dsm_tp_t *tp, struct rdma_peer *pe, uint8_t type, uint32_t aux, int block)
{
    if (block)
        pthread_mutex_lock(&pe->slock);
    else if (pthread_mutex_trylock(&pe->slock) != 0)
        return 0;
    int posted = 0;
    /* Only between frames of the backlog's order: a grant may overtake waiting frames (it carries no data). */
    if (pe->state == P_UP) {
        uint8_t fh[RDMA_FRAME_HDR];
        struct frame f = {.type = type, .aux = aux};
        frame_enc(fh, &f);
        posted = frame_post(tp, pe, fh, NULL, 0, NULL, 0, 0) > 0;
    }
    pthread_mutex_unlock(&pe->slock);
    return posted;
}

/* ---- receiving ---- */

static void rreg_update(dsm_tp_t *tp, struct rdma_peer *pe, int add, const uint8_t *body)
{
    struct rreg r = {.addr = le64_get(body), .len = le64_get(body + 8), .key = le32_get(body + 16)};
    pthread_rwlock_wrlock(&tp->rlock);
    size_t i = 0;
    while (i < pe->nrr && !(pe->rr[i].key == r.key && pe->rr[i].addr == r.addr))
        i++;
    if (add) {
        if (i == pe->nrr) {
            if (pe->nrr == pe->caprr) {
                size_t cap = pe->caprr ? pe->caprr * 2 : 16;
                struct rreg *n = realloc(pe->rr, cap * sizeof *n);
                if (n) {
                    pe->rr = n;
                    pe->caprr = cap;
                }
            }
            if (pe->nrr < pe->caprr)
                pe->rr[pe->nrr++] = r;
        } else {
            pe->rr[i] = r;
        }
    } else if (i < pe->nrr) {
        pe->rr[i] = pe->rr[--pe->nrr];
    }
    pthread_rwlock_unlock(&tp->rlock);
}

/* Validate a frame; NULL or why it is malformed. */
static const char *frame_check(const struct frame *f, uint32_t byte_len)
{
    if (byte_len < RDMA_FRAME_HDR)
        return "frame shorter than its header";
    if ((uint64_t)RDMA_FRAME_HDR + f->hdr_len + f->len != byte_len)
        return "frame length does not match what arrived";
    switch (f->type) {
    case F_AM:
    case F_FIRST:
        if (f->am_id == 0 || f->hdr_len > DSM_TP_AM_HDR_MAX)
            return "active message with a bad handler id or header length";
        if (f->type == F_FIRST && (f->aux > DSM_TP_AM_PAYLOAD_MAX || f->aux <= f->len))
            return "first fragment with a bad total length";
        return NULL;
    case F_MORE:
        return f->hdr_len ? "fragment with a header" : NULL;
    case F_REG:
    case F_UNREG:
        return f->hdr_len != 20 || f->len ? "registration frame of the wrong size" : NULL;
    case F_GRANT:
    case F_BYE:
    case F_LOST:
        return f->hdr_len || f->len ? "control frame with a body" : NULL;
    case F_AUTH1:
    case F_AUTH3:
        return f->hdr_len || f->len != 32 ? "authentication frame of the wrong size" : NULL;
    case F_AUTH2:
        return f->hdr_len || f->len != 64 ? "authentication frame of the wrong size" : NULL;
    default:
        return "unknown frame type";
    }
}

/* Post a control frame with a body (the authentication frames). */
static int auth_post(dsm_tp_t *tp, struct rdma_peer *pe, uint8_t type, const void *body, size_t len)
{
    uint8_t fh[RDMA_FRAME_HDR];
    struct frame f = {.type = type, .len = (uint32_t)len};
    frame_enc(fh, &f);
    pthread_mutex_lock(&pe->slock);
    int posted = (pe->state == P_UP || pe->state == P_CONNECTING) && pe->qp &&
                 frame_post(tp, pe, fh, body, len, NULL, 0, 0) > 0;
    pthread_mutex_unlock(&pe->slock);
    return posted;
}

/* The peer's connection fails authentication while connecting: refused and logged, never a loss of the job. */
static void auth_refuse(dsm_tp_t *tp, struct rdma_peer *pe, const char *why)
{
    if (pe->state != P_UP && pe->state != P_CONNECTING)
        return;
    RLOG(tp, DSM_LOG_ERROR, "refused the RDMA connection of node %d (%s): %s", pe->rank, pe->name, why);
    tp->core->count_refused();
    pe->state = P_FAILED;
    snprintf(pe->fail, sizeof pe->fail, "%s", why);
}

/* One frame of a peer that has not completed the exchange (the connect thread, under cqlock). */
static void auth_frame(dsm_tp_t *tp, struct rdma_peer *pe, const struct frame *f, const uint8_t *body)
{
    const uint8_t *key = tp->core->secret;
    int connector = pe->rank < tp->rank;
    /* The accepting side may see AUTH1 before its own ESTABLISHED event (the queue pair is ready at accept). */
    if (pe->state != P_UP && pe->state != P_CONNECTING)
        return; /* refused already: ignore what follows */
    if (f->type == F_AUTH1 && !connector && pe->auth_step == 0) {
        pe->auth = (dsm_auth_ctx_t){.job_id = tp->core->job_id, .connector = (uint32_t)pe->rank,
                                    .acceptor = (uint32_t)tp->rank, .size = (uint32_t)tp->size};
        memcpy(pe->auth.nonce_c, body, DSM_AUTH_NONCE_SIZE);
        dsm_auth_nonce(pe->auth.nonce_a);
        uint8_t b[DSM_AUTH_NONCE_SIZE + DSM_AUTH_MAC_SIZE];
        memcpy(b, pe->auth.nonce_a, DSM_AUTH_NONCE_SIZE);
        dsm_auth_mac(key, DSM_AUTH_ACCEPTOR, &pe->auth, b + DSM_AUTH_NONCE_SIZE);
        pe->auth_step = 1;
        if (!auth_post(tp, pe, F_AUTH2, b, sizeof b))
            auth_refuse(tp, pe, "cannot answer its authentication");
        return;
    }
    if (f->type == F_AUTH2 && connector && pe->auth_step == 1) {
        memcpy(pe->auth.nonce_a, body, DSM_AUTH_NONCE_SIZE);
        if (dsm_auth_check(key, DSM_AUTH_ACCEPTOR, &pe->auth, body + DSM_AUTH_NONCE_SIZE) != 0) {
            auth_refuse(tp, pe, "the node listening there failed authentication (wrong or missing job secret)");
            return;
        }
        uint8_t mac[DSM_AUTH_MAC_SIZE];
        dsm_auth_mac(key, DSM_AUTH_CONNECTOR, &pe->auth, mac);
        if (!auth_post(tp, pe, F_AUTH3, mac, sizeof mac)) {
            auth_refuse(tp, pe, "cannot send the authentication");
            return;
        }
        __atomic_store_n(&pe->authed, 1, __ATOMIC_RELEASE);
        return;
    }
    if (f->type == F_AUTH3 && !connector && pe->auth_step == 1) {
        if (dsm_auth_check(key, DSM_AUTH_CONNECTOR, &pe->auth, body) != 0) {
            auth_refuse(tp, pe, "authentication failed (wrong or missing job secret)");
            return;
        }
        __atomic_store_n(&pe->authed, 1, __ATOMIC_RELEASE);
        return;
    }
    auth_refuse(tp, pe, "a frame before the authentication completed");
}

/* Poll the receive CQ (any thread). Credits and registrations take effect at once; lost-node reports fail
 * stop; everything else is queued in order for dispatch. Returns the number of frames taken. */
static int harvest(dsm_tp_t *tp)
{
    if (pthread_mutex_trylock(&tp->cqlock) != 0)
        return 0;
    int total = 0;
    for (;;) {
        uint32_t room = tp->ready_cap - (tp->ready_tail - __atomic_load_n(&tp->ready_head, __ATOMIC_ACQUIRE));
        if (room == 0)
            break;
        struct ibv_wc wc[32];
        int n = ibv_poll_cq(tp->rcq, (int)(room < 32 ? room : 32), wc);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)wc[i].wr_id;
            int peer = qmap_get(tp, wc[i].qp_num);
            struct rdma_peer *pe = peer >= 0 ? &tp->peers[peer] : NULL;
            if (wc[i].status != IBV_WC_SUCCESS) {
                if (pe) {
                    char why[160];
                    snprintf(why, sizeof why, "receive from node %d failed: %s (vendor error 0x%x)", peer,
                             ibv_wc_status_str(wc[i].status), wc[i].vendor_err);
                    pthread_mutex_unlock(&tp->cqlock);
                    peer_fail(tp, pe, why);
                    return total;
                }
                if (wc[i].status != IBV_WC_WR_FLUSH_ERR)
                    repost(tp, idx);
                continue;
            }
            if (!pe || pe->state == P_DROPPED) {
                repost(tp, idx); /* a connection the pair agreed not to use */
                continue;
            }
            tp->core->count_rx(wc[i].byte_len);
            const uint8_t *b = tp->recv_buf + (size_t)idx * RDMA_BUF;
            struct frame f;
            frame_dec(b, &f);
            const char *bad = frame_check(&f, wc[i].byte_len);
            if (bad) {
                pthread_mutex_unlock(&tp->cqlock);
                peer_fail(tp, pe, bad);
                return total;
            }
            if (!__atomic_load_n(&pe->authed, __ATOMIC_ACQUIRE) && pe->rank != tp->rank) {
                /* Only the exchange until it completes (the connect thread harvests then). */
                auth_frame(tp, pe, &f, b + RDMA_FRAME_HDR);
                repost(tp, idx);
                total++;
                continue;
            }
            uint32_t acked = __atomic_load_n(&pe->acked, __ATOMIC_ACQUIRE);
            if (seq_after(f.credits, acked))
                __atomic_store_n(&pe->acked, f.credits, __ATOMIC_RELEASE);
            total++;
            switch (f.type) {
            case F_GRANT:
                repost(tp, idx);
                break;
            case F_LOST: {
                if (f.aux >= (uint32_t)tp->size || (int)f.aux == tp->rank) {
                    pthread_mutex_unlock(&tp->cqlock);
                    peer_fail(tp, pe, "lost-node report names an impossible node");
                    return total;
                }
                static char why[64];
                snprintf(why, sizeof why, "node %d lost contact with it", peer);
                tp->core->peer_lost((int)f.aux, why);
                repost(tp, idx);
                break;
            }
            case F_REG:
            case F_UNREG:
                /* At once, so a one-sided op waiting for it sees it; but a page-fault handler harvesting for
                 * credits may not grow the table: the progress thread does that (dispatch). */
                if (f.type == F_UNREG || pe->nrr < pe->caprr || !tp->core->may_allocate ||
                    tp->core->may_allocate()) {
                    rreg_update(tp, pe, f.type == F_REG, b + RDMA_FRAME_HDR);
                    repost(tp, idx);
                    __atomic_add_fetch(&pe->consumed, 1, __ATOMIC_ACQ_REL);
                    break;
                }
                /* fall through */
            default: {
                struct ready *r = &tp->ready[tp->ready_tail % tp->ready_cap];
                r->buf = idx;
                r->len = wc[i].byte_len;
                r->peer = peer;
                __atomic_store_n(&tp->ready_tail, tp->ready_tail + 1, __ATOMIC_RELEASE);
            }
            }
        }
    }
    pthread_mutex_unlock(&tp->cqlock);
    if (total && !in_progress) {
        uint64_t one = 1;
        ssize_t w = write(tp->wake_fd, &one, sizeof one);
        (void)w;
    }
    return total;
}

/* Run one harvested frame (progress thread). Returns NULL or why the peer must be dropped. */
static const char *dispatch_one(dsm_tp_t *tp, struct rdma_peer *pe, const uint8_t *b)
{
    struct frame f;
    frame_dec(b, &f);
    const uint8_t *hdr = b + RDMA_FRAME_HDR, *payload = hdr + f.hdr_len;
    if (__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE))
        return "frame after bye";
    switch (f.type) {
    case F_AM:
        if (pe->ra)
            return "whole message inside a fragmented one";
        if (tp->core->am_dispatch(pe->rank, f.am_id, hdr, f.hdr_len, payload, f.len) != DSM_OK)
            return "malformed active message";
        return NULL;
    case F_FIRST:
        if (pe->ra)
            return "fragmented message inside another";
        if (!(pe->ra = malloc(f.aux)))
            return "out of memory for a large message";
        pe->ra_total = f.aux;
        pe->ra_got = f.len;
        pe->ra_am = f.am_id;
        pe->ra_hlen = f.hdr_len;
        memcpy(pe->ra_hdr, hdr, f.hdr_len);
        memcpy(pe->ra, payload, f.len);
        return NULL;
    case F_MORE: {
        if (!pe->ra || f.len > pe->ra_total - pe->ra_got)
            return "fragment without its message";
        memcpy(pe->ra + pe->ra_got, payload, f.len);
        pe->ra_got += f.len;
        if (pe->ra_got < pe->ra_total)
            return NULL;
        uint8_t *m = pe->ra;
        pe->ra = NULL;
        int rc = tp->core->am_dispatch(pe->rank, pe->ra_am, pe->ra_hdr, pe->ra_hlen, m, pe->ra_total);
        free(m);
        return rc == DSM_OK ? NULL : "malformed active message";
    }
    case F_BYE:
        __atomic_store_n(&pe->left, 1, __ATOMIC_RELEASE);
        return NULL;
    case F_REG:
        rreg_update(tp, pe, 1, hdr);
        return NULL;
    default:
        return "unexpected frame";
    }
}

/* Return credits the peer is owed when a quarter of its window has piled up. */
static void grant_if_owed(dsm_tp_t *tp, struct rdma_peer *pe, int block)
{
    uint32_t c = __atomic_load_n(&pe->consumed, __ATOMIC_ACQUIRE);
    if (c - __atomic_load_n(&pe->reported, __ATOMIC_ACQUIRE) >= tp->grant_at)
        control_post(tp, pe, F_GRANT, 0, block);
}

static int dispatch(dsm_tp_t *tp)
{
    int n = 0;
    uint32_t head = __atomic_load_n(&tp->ready_head, __ATOMIC_ACQUIRE);
    while (head != __atomic_load_n(&tp->ready_tail, __ATOMIC_ACQUIRE)) {
        struct ready r = tp->ready[head % tp->ready_cap];
        struct rdma_peer *pe = &tp->peers[r.peer];
        const char *why = pe->state == P_UP ? dispatch_one(tp, pe, tp->recv_buf + (size_t)r.buf * RDMA_BUF) : NULL;
        repost(tp, r.buf);
        __atomic_store_n(&tp->ready_head, ++head, __ATOMIC_RELEASE);
        if (why)
            peer_fail(tp, pe, why);
        __atomic_add_fetch(&pe->consumed, 1, __ATOMIC_ACQ_REL);
        grant_if_owed(tp, pe, 1);
        n++;
    }
    return n;
}

/* ---- connection management ---- */

static void priv_enc(struct cm_priv *p, const dsm_tp_t *tp, int dst, uint16_t reject)
{
    uint8_t *b = (uint8_t *)p;
    le32_put(b, RDMA_CM_MAGIC);
    le16_put(b + 4, RDMA_CM_VERSION);
    le16_put(b + 6, reject);
    le64_put(b + 8, tp->core->job_id);
    le32_put(b + 16, (uint32_t)tp->rank);
    le32_put(b + 20, (uint32_t)dst);
    le32_put(b + 24, (uint32_t)tp->size);
}

/* Decode and check a peer's private data; NULL or why it is refused. */
static const char *priv_check(const dsm_tp_t *tp, const void *data, size_t len, uint32_t *src, uint16_t *reject)
{
    const uint8_t *b = data;
    if (!b || len < sizeof(struct cm_priv))
        return "no private data";
    if (le32_get(b) != RDMA_CM_MAGIC)
        return "not a libdsm connection";
    if (le16_get(b + 4) != RDMA_CM_VERSION)
        return "protocol version mismatch";
    *reject = le16_get(b + 6);
    if (le64_get(b + 8) != tp->core->job_id)
        return "wrong job id";
    if (le32_get(b + 24) != (uint32_t)tp->size)
        return "wrong job size";
    if (le32_get(b + 20) != (uint32_t)tp->rank || le32_get(b + 16) >= (uint32_t)tp->size)
        return "names the wrong ranks";
    *src = le32_get(b + 16);
    return NULL;
}

static int qp_create_raw(dsm_tp_t *tp, struct rdma_cm_id *id, char *why, size_t why_len)
{
    struct ibv_qp_init_attr qa = {
        .send_cq = tp->scq,
        .recv_cq = tp->rcq,
        .srq = tp->srq,
        .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = tp->sq_depth, .max_send_sge = 3, .max_inline_data = RDMA_INLINE_WANT},
    };
    if (rdma_create_qp(id, tp->pd, &qa) != 0) {
        qa.cap.max_inline_data = 0;
        if (rdma_create_qp(id, tp->pd, &qa) != 0) {
            snprintf(why, why_len, "cannot create a queue pair: %s", strerror(errno));
            return -1;
        }
    }
    /* Inline sends need room for the frame header at least; below that every frame goes through a slot. */
    uint32_t inl = qa.cap.max_inline_data >= RDMA_FRAME_HDR ? qa.cap.max_inline_data : 0;
    if (inl < tp->max_inline)
        tp->max_inline = inl;
    uint8_t t = RDMA_ACK_TIMEOUT;
    if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof t) != 0)
        RLOG(tp, DSM_LOG_DEBUG, "cannot set the ACK timeout: %s", strerror(errno));
    return 0;
}

static int qp_create(dsm_tp_t *tp, struct rdma_peer *pe, struct rdma_cm_id *id)
{
    if (qp_create_raw(tp, id, pe->fail, sizeof pe->fail) != 0)
        return -1;
    pe->id = id;
    pe->qp = id->qp;
    id->context = pe;
    return 0;
}

static void conn_params(dsm_tp_t *tp, struct rdma_conn_param *cp, struct cm_priv *priv, uint8_t resp, uint8_t init)
{
    memset(cp, 0, sizeof *cp);
    cp->private_data = priv;
    cp->private_data_len = sizeof *priv;
    cp->responder_resources = resp;
    cp->initiator_depth = init;
    cp->retry_count = RDMA_RETRY;
    cp->rnr_retry_count = RDMA_RNR_RETRY;
    (void)tp;
}

static void peer_forget_id(struct rdma_peer *pe)
{
    if (pe->id) {
        if (pe->qp)
            rdma_destroy_qp(pe->id);
        rdma_destroy_id(pe->id);
    }
    pe->id = NULL;
    pe->qp = NULL;
}

/* Start (or restart) the connection to a lower rank. */
static void connect_start(dsm_tp_t *tp, struct rdma_peer *pe, const struct sockaddr_in *dst)
{
    struct rdma_cm_id *id;
    if (rdma_create_id(tp->ech, &id, pe, RDMA_PS_TCP) != 0) {
        pe->state = P_FAILED;
        snprintf(pe->fail, sizeof pe->fail, "rdma_create_id: %s", strerror(errno));
        return;
    }
    pe->id = id;
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = tp->dev.ip};
    if (rdma_resolve_addr(id, (struct sockaddr *)&src, (struct sockaddr *)dst, 2000) != 0) {
        snprintf(pe->fail, sizeof pe->fail, "rdma_resolve_addr: %s", strerror(errno));
        peer_forget_id(pe);
        pe->retry_at = now_ms() + 200;
        return;
    }
    pe->state = P_CONNECTING;
}

static void reject(struct rdma_cm_id *id, dsm_tp_t *tp, int dst, uint16_t why)
{
    struct cm_priv p;
    priv_enc(&p, tp, dst, why);
    rdma_reject(id, &p, sizeof p);
}

/* A connection request from a higher rank. Returns 1 when the request's id must be destroyed (after its event
 * is acknowledged: rdma_destroy_id waits for that). */
static int on_request(dsm_tp_t *tp, struct rdma_cm_event *ev, int connecting)
{
    uint32_t src = 0;
    uint16_t rj = 0;
    const char *bad = priv_check(tp, ev->param.conn.private_data, ev->param.conn.private_data_len, &src, &rj);
    if (!bad && (int)src == tp->rank && connecting && !tp->self_pasv &&
        tp->peers[tp->rank].state == P_CONNECTING) {
        /* The passive end of the loopback connection: it only answers its twin's atomics. */
        char why[160];
        struct cm_priv p;
        struct rdma_conn_param cp;
        priv_enc(&p, tp, tp->rank, REJ_NONE);
        conn_params(tp, &cp, &p, (uint8_t)tp->rd_atom, (uint8_t)tp->rd_atom);
        ev->id->context = NULL;
        if (qp_create_raw(tp, ev->id, why, sizeof why) != 0 || rdma_accept(ev->id, &cp) != 0) {
            RLOG(tp, DSM_LOG_INFO, "no loopback connection: %s", why);
            if (ev->id->qp)
                rdma_destroy_qp(ev->id);
            return 1;
        }
        tp->self_pasv = ev->id;
        tp->self_pasv_qp = ev->id->qp;
        return 0;
    }
    struct rdma_peer *pe = bad ? NULL : peer_of(tp, (int)src);
    if (!bad && (!connecting || !pe || (int)src < tp->rank))
        bad = "unexpected connection (not a higher rank of this job while connecting)";
    if (!bad && pe->state != P_CONNECTING)
        bad = pe->state == P_UP ? "that rank is already connected" : "that rank is not expected";
    if (bad) {
        RLOG(tp, DSM_LOG_ERROR, "refused an RDMA connection: %s", bad);
        tp->core->count_refused();
        reject(ev->id, tp, (int)src, REJ_BAD);
        return 1;
    }
    if ((int)src == tp->refuse_from) {
        RLOG(tp, DSM_LOG_INFO, "refusing node %d's connection (DSM_TEST_RDMA_REFUSE)", (int)src);
        reject(ev->id, tp, (int)src, REJ_TEST);
        pe->state = P_FAILED;
        snprintf(pe->fail, sizeof pe->fail, "this node refused its connection (test hook DSM_TEST_RDMA_REFUSE)");
        return 1;
    }
    if (qp_create(tp, pe, ev->id) != 0) {
        reject(ev->id, tp, (int)src, REJ_BAD);
        pe->state = P_FAILED;
        return 1;
    }
    /* Frames may complete before this side's ESTABLISHED event: map the queue pair now (AUTH1 comes first). */
    qmap_set(tp, pe->qp->qp_num, pe->rank);
    struct cm_priv p;
    priv_enc(&p, tp, (int)src, REJ_NONE);
    struct rdma_conn_param cp;
    uint8_t resp = ev->param.conn.initiator_depth < tp->rd_atom ? ev->param.conn.initiator_depth : (uint8_t)tp->rd_atom;
    uint8_t init = ev->param.conn.responder_resources < tp->rd_atom ? ev->param.conn.responder_resources
                                                                     : (uint8_t)tp->rd_atom;
    conn_params(tp, &cp, &p, resp, init);
    if (rdma_accept(ev->id, &cp) != 0) {
        snprintf(pe->fail, sizeof pe->fail, "rdma_accept: %s", strerror(errno));
        rdma_destroy_qp(ev->id);
        pe->qp = NULL;
        pe->id = NULL;
        pe->state = P_FAILED;
        return 1;
    }
    return 0;
}

/* Handle one rdma_cm event. connecting: inside connect (failures mark the peer) rather than running (they
 * are losses). */
static void cm_event(dsm_tp_t *tp, struct rdma_cm_event *ev, int connecting)
{
    struct rdma_peer *pe = ev->id ? ev->id->context : NULL;
    if (!pe || pe->id != ev->id)
        return; /* a listener event, or an id already replaced */
    char why[192];
    switch (ev->event) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
        if (rdma_resolve_route(ev->id, 2000) != 0) {
            snprintf(pe->fail, sizeof pe->fail, "rdma_resolve_route: %s", strerror(errno));
            pe->retry_at = now_ms() + 200;
        }
        return;
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
        if (qp_create(tp, pe, ev->id) != 0) {
            pe->state = P_FAILED;
            return;
        }
        struct cm_priv p;
        priv_enc(&p, tp, pe->rank, REJ_NONE);
        struct rdma_conn_param cp;
        conn_params(tp, &cp, &p, (uint8_t)tp->rd_atom, (uint8_t)tp->rd_atom);
        if (rdma_connect(ev->id, &cp) != 0) {
            snprintf(pe->fail, sizeof pe->fail, "rdma_connect: %s", strerror(errno));
            pe->retry_at = now_ms() + 200;
        }
        return;
    }
    case RDMA_CM_EVENT_ESTABLISHED:
        if (pe->state == P_CONNECTING) {
            pe->state = P_UP;
            qmap_set(tp, pe->qp->qp_num, pe->rank);
            RLOG(tp, DSM_LOG_DEBUG, "connected to node %d (%s), qp %u", pe->rank, pe->name, pe->qp->qp_num);
            if (pe->rank == tp->rank) {
                __atomic_store_n(&pe->authed, 1, __ATOMIC_RELEASE); /* the loopback pair: this node itself */
            } else if (pe->rank < tp->rank) {
                /* The connecting side opens the exchange. */
                pe->auth = (dsm_auth_ctx_t){.job_id = tp->core->job_id, .connector = (uint32_t)tp->rank,
                                            .acceptor = (uint32_t)pe->rank, .size = (uint32_t)tp->size};
                dsm_auth_nonce(pe->auth.nonce_c);
                pe->auth_step = 1;
                if (!auth_post(tp, pe, F_AUTH1, pe->auth.nonce_c, DSM_AUTH_NONCE_SIZE))
                    auth_refuse(tp, pe, "cannot start the authentication");
            }
        }
        return;
    case RDMA_CM_EVENT_REJECTED: {
        uint32_t src;
        uint16_t rj = 0;
        const char *bad = priv_check(tp, ev->param.conn.private_data, ev->param.conn.private_data_len, &src, &rj);
        if (!bad && rj) {
            pe->state = P_FAILED;
            snprintf(pe->fail, sizeof pe->fail, "node %d refused the connection%s", pe->rank,
                     rj == REJ_TEST ? " (test hook DSM_TEST_RDMA_REFUSE)" : "");
            return;
        }
        /* No listener yet or a transient refusal: try again until the deadline. */
        snprintf(pe->fail, sizeof pe->fail, "connection rejected (status %d)", ev->status);
        pe->retry_at = now_ms() + 200;
        return;
    }
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_CONNECT_ERROR:
        snprintf(why, sizeof why, "%s (status %d)", rdma_event_str(ev->event), ev->status);
        if (connecting) {
            snprintf(pe->fail, sizeof pe->fail, "%s", why);
            pe->retry_at = now_ms() + 200;
            return;
        }
        break;
    case RDMA_CM_EVENT_DISCONNECTED:
        if (connecting && pe->state != P_UP) {
            snprintf(pe->fail, sizeof pe->fail, "disconnected while connecting");
            pe->retry_at = now_ms() + 200;
            return;
        }
        snprintf(why, sizeof why, "its RDMA connection closed (rdma_cm: %s)", rdma_event_str(ev->event));
        if (!connecting && pe->state == P_UP && !__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE)) {
            /* A peer that finished sends its bye, then disconnects; the bye may still sit in the receive queue,
             * or in the ready list of a thread harvesting it now: take everything in before judging (seen under
             * TCG, where the disconnect overtook the dispatch of the bye). Progress only: plock is held. */
            pthread_mutex_lock(&tp->cqlock);
            pthread_mutex_unlock(&tp->cqlock);
            while (harvest(tp) + dispatch(tp) > 0)
                ;
        }
        break;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
        snprintf(why, sizeof why, "the RDMA device %s was removed", tp->dev.name);
        break;
    default:
        return;
    }
    if (pe->state == P_UP)
        peer_fail(tp, pe, why);
}

/* Fetch and handle every pending rdma_cm event (non-blocking channel). */
static int cm_events(dsm_tp_t *tp, int connecting)
{
    int n = 0;
    struct rdma_cm_event *ev;
    while (rdma_get_cm_event(tp->ech, &ev) == 0) {
        struct rdma_cm_event copy = *ev;
        uint8_t priv[64];
        if (copy.param.conn.private_data && copy.param.conn.private_data_len) {
            size_t l = copy.param.conn.private_data_len < sizeof priv ? copy.param.conn.private_data_len : sizeof priv;
            memcpy(priv, copy.param.conn.private_data, l);
            copy.param.conn.private_data = priv;
            copy.param.conn.private_data_len = (uint8_t)l;
        }
        /* A request is answered before its event is acknowledged, and its id destroyed only after; any other
         * event is acknowledged first, so destroying its id never waits on it. */
        if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
            int destroy = on_request(tp, &copy, connecting);
            rdma_ack_cm_event(ev);
            if (destroy)
                rdma_destroy_id(copy.id);
        } else {
            rdma_ack_cm_event(ev);
            cm_event(tp, &copy, connecting);
        }
        n++;
    }
    return n;
}

static void async_events(dsm_tp_t *tp)
{
    struct ibv_async_event ev;
    while (ibv_get_async_event(tp->ctx, &ev) == 0) {
        char why[192] = "";
        struct rdma_peer *pe = NULL;
        switch (ev.event_type) {
        case IBV_EVENT_QP_FATAL:
        case IBV_EVENT_QP_REQ_ERR:
        case IBV_EVENT_QP_ACCESS_ERR: {
            int p = qmap_get(tp, ev.element.qp->qp_num);
            pe = p >= 0 ? &tp->peers[p] : NULL;
            snprintf(why, sizeof why, "queue pair to node %d failed: %s", p, ibv_event_type_str(ev.event_type));
            break;
        }
        case IBV_EVENT_PORT_ERR:
            if (ev.element.port_num == tp->dev.port)
                snprintf(why, sizeof why, "port %d of %s went down (%s)", tp->dev.port, tp->dev.name,
                         ibv_event_type_str(ev.event_type));
            break;
        case IBV_EVENT_DEVICE_FATAL:
        case IBV_EVENT_SRQ_ERR:
        case IBV_EVENT_CQ_ERR:
            snprintf(why, sizeof why, "%s: %s", tp->dev.name, ibv_event_type_str(ev.event_type));
            break;
        default:
            RLOG(tp, DSM_LOG_DEBUG, "async event %s", ibv_event_type_str(ev.event_type));
            break;
        }
        ibv_ack_async_event(&ev);
        if (!why[0])
            continue;
        if (!pe) /* the device or port: every peer over it is lost; name the first still connected */
            for (int p = 0; p < tp->size && !pe; p++)
                if (tp->peers[p].state == P_UP && p != tp->rank && !tp->peers[p].left)
                    pe = &tp->peers[p];
        if (pe && pe->state == P_UP)
            peer_fail(tp, pe, why);
    }
}

static int rdma_connect_all(dsm_tp_t *tp, const void *const *addr, const size_t *addr_len)
{
    const dsm_tp_core_t *core = tp->core;
    int64_t deadline = now_ms() + core->timeout_ms;
    struct sockaddr_in *dst = calloc((size_t)tp->size, sizeof *dst);
    if (!dst)
        return DSM_ENOMEM;
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        if (p == tp->rank || !addr_len[p])
            continue;
        if (dsm_tp_inaddr_parse(addr[p], addr_len[p], &dst[p]) != DSM_OK) {
            pe->state = P_FAILED;
            snprintf(pe->fail, sizeof pe->fail, "it published a malformed address");
            continue;
        }
        snprintf(pe->name, sizeof pe->name, "%s", (const char *)addr[p]);
        pe->state = P_CONNECTING;
        if (p < tp->rank)
            connect_start(tp, pe, &dst[p]);
    }
    struct rdma_peer *self = &tp->peers[tp->rank];
    if (!tp->dev.atomic_glob) {
        char me[64];
        snprintf(me, sizeof me, "%s", tp->addr);
        snprintf(self->name, sizeof self->name, "%.40s (itself)", tp->addr);
        if (dsm_tp_inaddr_parse(me, strlen(me) + 1, &dst[tp->rank]) == DSM_OK)
            connect_start(tp, self, &dst[tp->rank]);
    }
    for (;;) {
        cm_events(tp, 1);
        harvest(tp); /* the authentication frames */
        int waiting = -1;
        int64_t now = now_ms();
        for (int p = 0; p < tp->size; p++) {
            struct rdma_peer *pe = &tp->peers[p];
            if (pe->state == P_UP && !__atomic_load_n(&pe->authed, __ATOMIC_ACQUIRE) && waiting < 0)
                waiting = p;
            if (pe->state != P_CONNECTING)
                continue;
            if (waiting < 0)
                waiting = p;
            if (p <= tp->rank && pe->retry_at && now >= pe->retry_at) {
                pe->retry_at = 0;
                peer_forget_id(pe);
                connect_start(tp, pe, &dst[p]);
            }
        }
        if (waiting < 0)
            break;
        if (now > deadline) {
            for (int p = 0; p < tp->size; p++)
                if (tp->peers[p].state == P_UP && !__atomic_load_n(&tp->peers[p].authed, __ATOMIC_ACQUIRE))
                    auth_refuse(tp, &tp->peers[p], "authentication not completed within DSM_TIMEOUT");
            for (int p = 0; p < tp->size; p++)
                if (tp->peers[p].state == P_CONNECTING) {
                    struct rdma_peer *pe = &tp->peers[p];
                    pe->state = P_FAILED;
                    char last[200];
                    snprintf(last, sizeof last, "%s", pe->fail);
                    snprintf(pe->fail, sizeof pe->fail, "no connection within DSM_TIMEOUT%s%.150s",
                             last[0] ? "; last: " : "", last);
                }
            break;
        }
        struct pollfd pf = {.fd = tp->ech->fd, .events = POLLIN};
        poll(&pf, 1, 50);
    }
    free(dst);
    int rc = DSM_OK;
    if (self->state == P_FAILED) {
        core->log(DSM_LOG_INFO, DSM_TP_RDMA_NAME, "no loopback connection (%s): this node's atomics on its own memory "
                  "are CPU atomics, not atomic with its peers' device atomics", self->fail);
        peer_forget_id(self);
        self->state = P_NONE;
    }
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        if (pe->state == P_FAILED) {
            core->log(DSM_LOG_INFO, DSM_TP_RDMA_NAME, "cannot connect to node %d at %s: %s", p, pe->name, pe->fail);
            peer_forget_id(pe);
            rc = DSM_EUNREACH;
        }
    }
    return rc;
}

static int rdma_peer_up(dsm_tp_t *tp, int peer)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    return pe && pe->state == P_UP && __atomic_load_n(&pe->authed, __ATOMIC_ACQUIRE);
}

static void rdma_peer_drop(dsm_tp_t *tp, int peer)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    if (!pe)
        return;
    pthread_mutex_lock(&pe->slock);
    int was_up = pe->state == P_UP;
    pe->state = P_DROPPED;
    pthread_mutex_unlock(&pe->slock);
    if (was_up && pe->id)
        rdma_disconnect(pe->id);
}

/* ---- progress ---- */

static int rdma_progress(dsm_tp_t *tp, int timeout_ms)
{
    if (pthread_mutex_trylock(&tp->plock) != 0) {
        if (timeout_ms > 0)
            usleep(1000);
        return DSM_OK;
    }
    in_progress = 1;
    for (int round = 0;; round++) {
        int did = poll_scq(tp);
        did += harvest(tp);
        did += dispatch(tp);
        for (int p = 0; p < tp->size; p++) {
            struct rdma_peer *pe = &tp->peers[p];
            if (pe->state != P_UP)
                continue;
            if (__atomic_load_n(&pe->backlogged, __ATOMIC_ACQUIRE)) {
                pthread_mutex_lock(&pe->slock);
                int rc = backlog_drain(tp, pe);
                pthread_mutex_unlock(&pe->slock);
                if (rc < 0)
                    peer_fail(tp, pe, pe->fail);
            }
            grant_if_owed(tp, pe, 0);
        }
        did += cm_events(tp, 0);
        async_events(tp);
        if (did || timeout_ms <= 0 || round > 0)
            break;
        /* Nothing to do: sleep on the completion channel, rdma_cm and async events. Arm, then look again,
         * so a completion that came in between is not slept through. */
        ibv_req_notify_cq(tp->scq, 0);
        ibv_req_notify_cq(tp->rcq, 0);
        if (poll_scq(tp) + harvest(tp))
            continue;
        if (__atomic_load_n(&tp->ready_tail, __ATOMIC_ACQUIRE) != tp->ready_head)
            continue;
        struct pollfd pf[4] = {{.fd = tp->cch->fd, .events = POLLIN},
                               {.fd = tp->ech->fd, .events = POLLIN},
                               {.fd = tp->ctx->async_fd, .events = POLLIN},
                               {.fd = tp->wake_fd, .events = POLLIN}};
        if (poll(pf, 4, timeout_ms) > 0) {
            if (pf[0].revents & POLLIN) {
                struct ibv_cq *cq;
                void *ctx;
                while (ibv_get_cq_event(tp->cch, &cq, &ctx) == 0)
                    ibv_ack_cq_events(cq, 1);
            }
            if (pf[3].revents & POLLIN) {
                uint64_t v;
                ssize_t r = read(tp->wake_fd, &v, sizeof v);
                (void)r;
            }
        }
    }
    in_progress = 0;
    pthread_mutex_unlock(&tp->plock);
    return DSM_OK;
}

/* ---- registrations ---- */

static int lmr_find(dsm_tp_t *tp, const void *buf, size_t len, uint32_t *lkey)
{
    int found = 0;
    pthread_rwlock_rdlock(&tp->mrlock);
    for (size_t i = 0; i < tp->nlmr && !found; i++)
        if ((const uint8_t *)buf >= tp->lmrs[i].addr && len <= tp->lmrs[i].len &&
            (size_t)((const uint8_t *)buf - tp->lmrs[i].addr) <= tp->lmrs[i].len - len) {
            *lkey = tp->lmrs[i].mr->lkey;
            found = 1;
        }
    pthread_rwlock_unlock(&tp->mrlock);
    return found;
}

/* Send a REG/UNREG frame to every connected peer; with sync, wait until each has it. */
static int reg_announce(dsm_tp_t *tp, uint8_t type, const struct ibv_mr *mr, uint64_t addr, uint64_t len, int sync)
{
    uint8_t fh[RDMA_FRAME_HDR], body[20];
    struct frame f = {.type = type, .hdr_len = sizeof body};
    frame_enc(fh, &f);
    le64_put(body, addr);
    le64_put(body + 8, len);
    le32_put(body + 16, mr->rkey);
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        if (pe->state != P_UP)
            continue;
        pthread_mutex_lock(&pe->slock);
        int rc = frame_send(tp, pe, fh, body, sizeof body, NULL, 0, BL_DATA | (sync ? BL_SYNC : 0));
        pthread_mutex_unlock(&pe->slock);
        if (rc != DSM_OK && rc != DSM_ENOMEM)
            return send_refused(tp, pe, rc) == DSM_OK ? DSM_ENODE : DSM_EINVAL;
    }
    if (!sync)
        return DSM_OK;
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        for (;;) {
            if (pe->state != P_UP)
                break;
            pthread_mutex_lock(&pe->slock);
            int empty = pe->bl_head == pe->bl_tail;
            uint64_t want = __atomic_load_n(&pe->sync_wr, __ATOMIC_ACQUIRE);
            pthread_mutex_unlock(&pe->slock);
            if (empty && __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE) >= want)
                break;
            if (now_ms() > deadline) {
                peer_fail(tp, pe, "a registration announcement was not acknowledged within DSM_TIMEOUT");
                return DSM_ETIMEDOUT;
            }
            wait_a_little(tp);
        }
    }
    return DSM_OK;
}

static int rdma_mem_reg(dsm_tp_t *tp, void *addr, size_t len, int fd, uint64_t fd_off, dsm_tp_mr_t *mr)
{
    (void)fd;
    (void)fd_off;
    struct ibv_mr *m = ibv_reg_mr(tp->pd, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                                  IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC);
    if (!m) {
        int e = errno;
        RLOG(tp, DSM_LOG_ERROR, "cannot register %zu bytes at %p with %s: %s%s", len, addr, tp->dev.name,
             strerror(e), e == ENOMEM || e == EPERM ? " (RLIMIT_MEMLOCK? see dsm_info)" : "");
        return e == ENOMEM ? DSM_ENOMEM : DSM_ESYS;
    }
    pthread_rwlock_wrlock(&tp->mrlock);
    if (tp->nlmr == tp->caplmr) {
        size_t cap = tp->caplmr ? tp->caplmr * 2 : 16;
        struct lmr *n = realloc(tp->lmrs, cap * sizeof *n);
        if (!n) {
            pthread_rwlock_unlock(&tp->mrlock);
            ibv_dereg_mr(m);
            return DSM_ENOMEM;
        }
        tp->lmrs = n;
        tp->caplmr = cap;
    }
    tp->lmrs[tp->nlmr++] = (struct lmr){.addr = addr, .len = len, .mr = m};
    pthread_rwlock_unlock(&tp->mrlock);
    int rc = reg_announce(tp, F_REG, m, (uint64_t)(uintptr_t)addr, len, 1);
    *mr = (dsm_tp_mr_t){.addr = addr, .len = len, .key = m->rkey, .prov = m};
    return rc;
}

static int rdma_mem_dereg(dsm_tp_t *tp, dsm_tp_mr_t *mr)
{
    struct ibv_mr *m = mr->prov;
    if (!m)
        return DSM_EINVAL;
    reg_announce(tp, F_UNREG, m, (uint64_t)(uintptr_t)mr->addr, mr->len, 0);
    pthread_rwlock_wrlock(&tp->mrlock);
    for (size_t i = 0; i < tp->nlmr; i++)
        if (tp->lmrs[i].mr == m) {
            tp->lmrs[i] = tp->lmrs[--tp->nlmr];
            break;
        }
    pthread_rwlock_unlock(&tp->mrlock);
    int rc = ibv_dereg_mr(m);
    mr->prov = NULL;
    return rc ? DSM_ESYS : DSM_OK;
}

/* Is [rkey->addr + off, + len) inside one of this node's registrations, under that key (the loopback)? */
static int lmr_ok(dsm_tp_t *tp, const dsm_tp_rkey_t *rkey, uint64_t off, uint64_t len)
{
    int ok = 0;
    pthread_rwlock_rdlock(&tp->mrlock);
    for (size_t i = 0; i < tp->nlmr && !ok; i++)
        ok = tp->lmrs[i].mr->rkey == rkey->key && (uint64_t)(uintptr_t)tp->lmrs[i].addr == rkey->addr &&
             off <= tp->lmrs[i].len && len <= tp->lmrs[i].len - off;
    pthread_rwlock_unlock(&tp->mrlock);
    return ok;
}

/* Is [rkey->addr + off, + len) inside a registration the peer announced under that key? */
static int rreg_ok(dsm_tp_t *tp, struct rdma_peer *pe, const dsm_tp_rkey_t *rkey, uint64_t off, uint64_t len)
{
    int ok = 0;
    pthread_rwlock_rdlock(&tp->rlock);
    for (size_t i = 0; i < pe->nrr && !ok; i++)
        ok = pe->rr[i].key == rkey->key && pe->rr[i].addr == rkey->addr && off <= pe->rr[i].len &&
             len <= pe->rr[i].len - off;
    pthread_rwlock_unlock(&tp->rlock);
    return ok;
}

static int rreg_check(dsm_tp_t *tp, struct rdma_peer *pe, const dsm_tp_rkey_t *rkey, uint64_t off, uint64_t len)
{
    if (rreg_ok(tp, pe, rkey, off, len))
        return 1;
    /* The owner waited for its announcement to reach this node before publishing the key; it may still be in
     * the completion queue. */
    int64_t end = now_ms() + RDMA_REG_GRACE_MS;
    while (now_ms() < end) {
        wait_a_little(tp);
        if (rreg_ok(tp, pe, rkey, off, len))
            return 1;
    }
    RLOG(tp, DSM_LOG_WARN, "node %d has no registration with key %u at 0x%llx covering offset %llu + %llu; refused",
         pe->rank, rkey->key, (unsigned long long)rkey->addr, (unsigned long long)off, (unsigned long long)len);
    return 0;
}

/* ---- one-sided operations ---- */

static int rma_post(dsm_tp_t *tp, int peer, int kind, void *local, size_t len, const dsm_tp_rkey_t *rkey,
                    uint64_t off, uint64_t operand, uint64_t compare, dsm_tp_req_t *req, uint8_t am_id,
                    const void *hdr, size_t hdr_len)
{
    struct rdma_peer *pe = peer == tp->rank && am_id == 0 && tp->peers[peer].state == P_UP ? &tp->peers[peer]
                                                                                          : peer_of(tp, peer);
    if (!pe || pe->state != P_UP)
        return DSM_EINVAL;
    if (len > tp->max_msg)
        return DSM_EINVAL;
    if (peer == tp->rank ? !lmr_ok(tp, rkey, off, len) : !rreg_check(tp, pe, rkey, off, len))
        return DSM_EINVAL;
    struct rdma_op *op;
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    while (!(op = op_get(tp))) {
        if (now_ms() > deadline) {
            RLOG(tp, DSM_LOG_ERROR, "no free operation slot for DSM_TIMEOUT (%u in flight)", RDMA_OPS);
            return DSM_ETIMEDOUT;
        }
        wait_a_little(tp);
    }
    op->peer = peer;
    op->kind = kind;
    op->req = req;
    op->len = len;
    struct ibv_sge sge = {.addr = (uintptr_t)local, .length = (uint32_t)len};
    if (kind == IBV_WR_ATOMIC_FETCH_AND_ADD || kind == IBV_WR_ATOMIC_CMP_AND_SWP) {
        sge.addr = (uintptr_t)&op->result;
        sge.length = 8;
        sge.lkey = tp->op_mr->lkey;
    } else if (len == 0) {
        sge.lkey = tp->op_mr->lkey;
        sge.addr = (uintptr_t)&op->result;
    } else if (!lmr_find(tp, local, len, &sge.lkey)) {
        if (len <= RDMA_BOUNCE) {
            while ((op->bounce = bounce_get(tp)) < 0) {
                if (now_ms() > deadline) {
                    op_put(tp, op);
                    return DSM_ETIMEDOUT;
                }
                wait_a_little(tp);
            }
            uint8_t *b = tp->bounce_buf + (size_t)op->bounce * RDMA_BOUNCE;
            if (kind == IBV_WR_RDMA_WRITE)
                memcpy(b, local, len);
            op->dst = local;
            sge.addr = (uintptr_t)b;
            sge.lkey = tp->bounce_mr->lkey;
        } else {
            op->tmp_mr = ibv_reg_mr(tp->pd, local, len, IBV_ACCESS_LOCAL_WRITE);
            if (!op->tmp_mr) {
                RLOG(tp, DSM_LOG_ERROR, "cannot register a %zu-byte buffer for a one-sided operation: %s", len,
                     strerror(errno));
                op_put(tp, op);
                return DSM_ENOMEM;
            }
            sge.lkey = op->tmp_mr->lkey;
        }
    }
    struct ibv_send_wr wr = {.wr_id = (uintptr_t)op, .sg_list = &sge, .num_sge = 1, .opcode = (enum ibv_wr_opcode)kind,
                             .send_flags = IBV_SEND_SIGNALED}, *bad;
    uint64_t raddr = rkey->addr + off;
    if (kind == IBV_WR_ATOMIC_FETCH_AND_ADD || kind == IBV_WR_ATOMIC_CMP_AND_SWP) {
        wr.wr.atomic.remote_addr = raddr;
        wr.wr.atomic.rkey = rkey->key;
        wr.wr.atomic.compare_add = kind == IBV_WR_ATOMIC_FETCH_AND_ADD ? operand : compare;
        wr.wr.atomic.swap = operand;
    } else {
        wr.wr.rdma.remote_addr = raddr;
        wr.wr.rdma.rkey = rkey->key;
    }
    pthread_mutex_lock(&pe->slock);
    while (pe->state == P_UP && !sq_room(tp, pe, 1)) {
        pthread_mutex_unlock(&pe->slock);
        if (now_ms() > deadline) {
            RLOG(tp, DSM_LOG_ERROR, "no send-queue room toward node %d for DSM_TIMEOUT (posted %llu, done %llu, "
                 "last signaled %llu, depth %u)", peer, (unsigned long long)pe->wr_posted,
                 (unsigned long long)pe->wr_done, (unsigned long long)pe->last_signal, tp->sq_depth);
            op_put(tp, op);
            return DSM_ETIMEDOUT;
        }
        wait_a_little(tp);
        pthread_mutex_lock(&pe->slock);
    }
    int rc = DSM_ENODE;
    if (pe->state == P_UP) {
        /* Once posted, the op may complete and be reused by another thread at any moment: only locals after. */
        uint64_t wrno = pe->wr_posted + 1;
        op->wrno = wrno;
        int e = ibv_post_send(pe->qp, &wr, &bad);
        if (e == 0) {
            pe->wr_posted = wrno;
            pe->last_signal = wrno;
            __atomic_store_n(&pe->rma_last, wrno, __ATOMIC_RELEASE);
            tp->core->count_tx(kind == IBV_WR_RDMA_WRITE ? len : 0);
            rc = DSM_OK;
            if (am_id)
                rc = am_frames(tp, pe, am_id, hdr, hdr_len, NULL, 0);
        } else {
            snprintf(pe->fail, sizeof pe->fail, "posting %s failed: %s", op_name(kind), strerror(e));
            pe->state = P_FAILED;
            op_put(tp, op);
        }
    }
    pthread_mutex_unlock(&pe->slock);
    if (rc != DSM_OK && rc != DSM_ENOMEM)
        return send_refused(tp, pe, rc) == DSM_OK ? DSM_ENODE : DSM_EINVAL;
    return rc;
}

static int rdma_put(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                    dsm_tp_req_t *req)
{
    return rma_post(tp, peer, IBV_WR_RDMA_WRITE, (void *)src, len, rkey, off, 0, 0, req, 0, NULL, 0);
}

static int rdma_put_notify(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                           uint64_t off, uint8_t am_id, const void *hdr, size_t hdr_len, dsm_tp_req_t *req)
{
    if (am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX)
        return DSM_EINVAL;
    return rma_post(tp, peer, IBV_WR_RDMA_WRITE, (void *)src, len, rkey, off, 0, 0, req, am_id, hdr, hdr_len);
}

static int rdma_get(dsm_tp_t *tp, int peer, void *dst, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                    dsm_tp_req_t *req)
{
    return rma_post(tp, peer, IBV_WR_RDMA_READ, dst, len, rkey, off, 0, 0, req, 0, NULL, 0);
}

static int rdma_atomic(dsm_tp_t *tp, int peer, enum dsm_tp_atomic_op op, const dsm_tp_rkey_t *rkey, uint64_t off,
                       uint64_t operand, uint64_t compare, dsm_tp_req_t *req)
{
    if ((rkey->addr + off) % 8)
        return DSM_EINVAL;
    int kind = op == DSM_TP_ATOMIC_FADD ? IBV_WR_ATOMIC_FETCH_AND_ADD
             : op == DSM_TP_ATOMIC_CSWAP ? IBV_WR_ATOMIC_CMP_AND_SWP : -1;
    if (kind < 0)
        return DSM_EINVAL;
    return rma_post(tp, peer, kind, NULL, 8, rkey, off, operand, compare, req, 0, NULL, 0);
}

static int rdma_flush(dsm_tp_t *tp, int peer)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    if (!pe)
        return DSM_EINVAL;
    uint64_t want = __atomic_load_n(&pe->rma_last, __ATOMIC_ACQUIRE);
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    while (__atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE) < want) {
        if (pe->state != P_UP)
            return DSM_ENODE;
        if (now_ms() > deadline)
            return DSM_ETIMEDOUT;
        wait_a_little(tp);
    }
    return DSM_OK;
}

/* ---- leaving ---- */

static int rdma_bye(dsm_tp_t *tp, int peer)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    if (!pe)
        return DSM_EINVAL;
    uint8_t fh[RDMA_FRAME_HDR];
    struct frame f = {.type = F_BYE};
    frame_enc(fh, &f);
    __atomic_store_n(&pe->bye_sent, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&pe->slock);
    int rc = pe->state == P_UP ? frame_send(tp, pe, fh, NULL, 0, NULL, 0, BL_DATA | BL_BYE) : DSM_ENODE;
    pthread_mutex_unlock(&pe->slock);
    if (rc != DSM_OK && rc != DSM_ENOMEM)
        return send_refused(tp, pe, rc) == DSM_OK ? DSM_ENODE : DSM_EINVAL;
    return rc;
}

static int rdma_peer_left(dsm_tp_t *tp, int peer)
{
    struct rdma_peer *pe = peer_of(tp, peer);
    if (!pe || pe->state != P_UP)
        return 1;
    /* Gone once its bye is in and ours was acknowledged by its device. */
    uint64_t bye = __atomic_load_n(&pe->bye_wr, __ATOMIC_ACQUIRE);
    if (bye && __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE) < bye)
        poll_scq(tp);
    return __atomic_load_n(&pe->left, __ATOMIC_ACQUIRE) && bye &&
           __atomic_load_n(&pe->wr_done, __ATOMIC_ACQUIRE) >= bye;
}

static void rdma_tell_lost(dsm_tp_t *tp, int node)
{
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        if (p == node || p == tp->rank || pe->state != P_UP || tp->max_inline < RDMA_FRAME_HDR)
            continue;
        control_post(tp, pe, F_LOST, (uint32_t)node, 0);
    }
}

/* ---- setup ---- */

/* Window, receive queue and send queue sizes from the job size and the device's limits. */
static int sizes(dsm_tp_t *tp, const struct ibv_device_attr *da, char *why, size_t why_len)
{
    uint32_t peers = (uint32_t)(tp->size > 1 ? tp->size - 1 : 1);
    uint32_t w = RDMA_SRQ_BUDGET / peers;
    w = w > RDMA_WINDOW_MAX ? RDMA_WINDOW_MAX : w < RDMA_WINDOW_MIN ? RDMA_WINDOW_MIN : w;
    uint32_t max_srq = da->max_srq_wr > 0 ? (uint32_t)da->max_srq_wr : 0;
    if ((uint64_t)peers * (w + RDMA_CTL) + 16 > max_srq) {
        if (max_srq < 16 + peers * (RDMA_CTL + 2)) {
            snprintf(why, why_len, "%s's shared receive queue holds %u entries, too few for %u peers", tp->dev.name,
                     max_srq, peers);
            return DSM_ENOSYS;
        }
        w = (max_srq - 16) / peers - RDMA_CTL;
    }
    tp->window = w;
    tp->grant_at = w / 4 ? w / 4 : 1;
    tp->srq_depth = peers * (w + RDMA_CTL) + 16;
    tp->ring_slots = w + RDMA_CTL < RDMA_RING_MAX ? w + RDMA_CTL : RDMA_RING_MAX;
    tp->sq_depth = tp->ring_slots + RDMA_CTL + RDMA_RMA_SQ + 8;
    if ((int)tp->sq_depth > da->max_qp_wr)
        tp->sq_depth = (uint32_t)da->max_qp_wr;
    tp->ready_cap = tp->srq_depth;
    uint32_t rd = (uint32_t)(da->max_qp_rd_atom < da->max_qp_init_rd_atom ? da->max_qp_rd_atom : da->max_qp_init_rd_atom);
    tp->rd_atom = rd > 16 ? 16 : rd;
    return DSM_OK;
}

static size_t memlock_need(int size)
{
    uint32_t peers = (uint32_t)(size > 1 ? size - 1 : 1);
    uint32_t w = RDMA_SRQ_BUDGET / peers;
    w = w > RDMA_WINDOW_MAX ? RDMA_WINDOW_MAX : w < RDMA_WINDOW_MIN ? RDMA_WINDOW_MIN : w;
    size_t bufs = ((size_t)peers * (w + RDMA_CTL) + 16) + (size_t)peers * RDMA_RING_MAX;
    return bufs * RDMA_BUF + (size_t)RDMA_BOUNCE_SLOTS * RDMA_BOUNCE + ((size_t)16 << 20);
}

static void *reg_alloc(dsm_tp_t *tp, size_t len, struct ibv_mr **mr, char *why, size_t why_len)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, len ? len : 4096) != 0)
        p = NULL;
    if (!p) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    memset(p, 0, len);
    *mr = ibv_reg_mr(tp->pd, p, len ? len : 4096, IBV_ACCESS_LOCAL_WRITE);
    if (!*mr) {
        snprintf(why, why_len, "cannot register %zu bytes of buffers with %s: %s%s", len, tp->dev.name,
                 strerror(errno), errno == ENOMEM ? " (RLIMIT_MEMLOCK too small? see dsm_info)" : "");
        free(p);
        return NULL;
    }
    return p;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void rdma_finalize(dsm_tp_t *tp);

static int rdma_init(const dsm_tp_core_t *core, dsm_tp_t **tp_p, char *why, size_t why_len)
{
    if (dsm_auth_init() != 0) {
        snprintf(why, why_len, "libsodium cannot start (no entropy source?)");
        return DSM_ESYS;
    }
    dsm_tp_t *tp = calloc(1, sizeof *tp);
    if (!tp) {
        snprintf(why, why_len, "out of memory");
        return DSM_ENOMEM;
    }
    tp->core = core;
    tp->size = core->size;
    tp->rank = core->rank;
    tp->refuse_from = -1;
    tp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (tp->wake_fd < 0) {
        snprintf(why, why_len, "eventfd: %s", strerror(errno));
        free(tp);
        return DSM_ESYS;
    }
    /* Test hook: "A-B" makes node A refuse node B's connection (tests/multi/rdma_fallback.sh). */
    const char *hook = getenv("DSM_TEST_RDMA_REFUSE");
    int ha, hb;
    if (hook && sscanf(hook, "%d-%d", &ha, &hb) == 2 && ha == core->rank)
        tp->refuse_from = hb;
    pthread_mutex_init(&tp->plock, NULL);
    pthread_mutex_init(&tp->cqlock, NULL);
    pthread_mutex_init(&tp->scqlock, NULL);
    pthread_mutex_init(&tp->oplock, NULL);
    pthread_rwlock_init(&tp->mrlock, NULL);
    pthread_rwlock_init(&tp->rlock, NULL);
    tp->max_inline = RDMA_INLINE_WANT;
    int rc = dsm_tp_rdma_dev_choose(core, memlock_need(core->size), &tp->dev, why, why_len);
    if (rc)
        goto fail;
    rc = DSM_ESYS;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &tp->dev.ip, ip, sizeof ip);
    if (!(tp->ech = rdma_create_event_channel())) {
        snprintf(why, why_len, "rdma_create_event_channel: %s (is rdma_ucm loaded?)", strerror(errno));
        goto fail;
    }
    nonblock(tp->ech->fd);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = tp->dev.ip};
    if (rdma_create_id(tp->ech, &tp->lid, NULL, RDMA_PS_TCP) != 0 ||
        rdma_bind_addr(tp->lid, (struct sockaddr *)&sa) != 0 || rdma_listen(tp->lid, 1024) != 0) {
        snprintf(why, why_len, "cannot listen with rdma_cm on %s (%s port %d): %s", ip, tp->dev.name, tp->dev.port,
                 strerror(errno));
        goto fail;
    }
    if (!(tp->ctx = tp->lid->verbs)) {
        snprintf(why, why_len, "rdma_cm bound %s but found no RDMA device for it", ip);
        goto fail;
    }
    if (strcmp(ibv_get_device_name(tp->ctx->device), tp->dev.name) != 0)
        core->log(DSM_LOG_WARN, DSM_TP_RDMA_NAME, "%s is reached through %s, not %s as chosen", ip,
                  ibv_get_device_name(tp->ctx->device), tp->dev.name);
    nonblock(tp->ctx->async_fd);
    struct ibv_device_attr da;
    if (ibv_query_device(tp->ctx, &da) != 0) {
        snprintf(why, why_len, "ibv_query_device: %s", strerror(errno));
        goto fail;
    }
    struct ibv_port_attr pa;
    tp->max_msg = ibv_query_port(tp->ctx, (uint8_t)tp->dev.port, &pa) == 0 ? pa.max_msg_sz : (1u << 30);
    if ((rc = sizes(tp, &da, why, why_len)))
        goto fail;
    rc = DSM_ESYS;
    uint32_t peers = (uint32_t)(tp->size - 1);
    int scq_n = (int)(peers * tp->sq_depth + 64), rcq_n = (int)(tp->srq_depth + 64);
    if (scq_n > da.max_cqe)
        scq_n = da.max_cqe;
    if (rcq_n > da.max_cqe)
        rcq_n = da.max_cqe;
    if (!(tp->pd = ibv_alloc_pd(tp->ctx)) || !(tp->cch = ibv_create_comp_channel(tp->ctx)) ||
        !(tp->scq = ibv_create_cq(tp->ctx, scq_n, NULL, tp->cch, 0)) ||
        !(tp->rcq = ibv_create_cq(tp->ctx, rcq_n, NULL, tp->cch, 0))) {
        snprintf(why, why_len, "cannot create the protection domain or completion queues on %s: %s", tp->dev.name,
                 strerror(errno));
        goto fail;
    }
    nonblock(tp->cch->fd);
    struct ibv_srq_init_attr sia = {.attr = {.max_wr = tp->srq_depth, .max_sge = 1}};
    if (!(tp->srq = ibv_create_srq(tp->pd, &sia))) {
        snprintf(why, why_len, "cannot create a shared receive queue of %u entries on %s: %s", tp->srq_depth,
                 tp->dev.name, strerror(errno));
        goto fail;
    }
    if (!(tp->peers = calloc((size_t)tp->size, sizeof *tp->peers)) ||
        !(tp->ready = calloc(tp->ready_cap, sizeof *tp->ready))) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    uint32_t qcap = 16;
    while (qcap < 2u * (uint32_t)tp->size)
        qcap *= 2;
    tp->qmap_mask = qcap - 1;
    tp->qmap_qpn = calloc(qcap, sizeof *tp->qmap_qpn);
    tp->qmap_peer = malloc(qcap * sizeof *tp->qmap_peer);
    if (!tp->qmap_qpn || !tp->qmap_peer) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < qcap; i++)
        tp->qmap_peer[i] = -1;
    if (!(tp->recv_buf = reg_alloc(tp, (size_t)tp->srq_depth * RDMA_BUF, &tp->recv_mr, why, why_len)) ||
        !(tp->send_buf = reg_alloc(tp, (size_t)tp->size * tp->ring_slots * RDMA_BUF, &tp->send_mr, why, why_len)) ||
        !(tp->bounce_buf = reg_alloc(tp, (size_t)RDMA_BOUNCE_SLOTS * RDMA_BOUNCE, &tp->bounce_mr, why, why_len)) ||
        !(tp->ops = reg_alloc(tp, RDMA_OPS * sizeof *tp->ops, &tp->op_mr, why, why_len)))
        goto fail;
    for (uint32_t i = 0; i < RDMA_OPS; i++) {
        tp->ops[i].next = tp->op_free;
        tp->op_free = &tp->ops[i];
    }
    for (uint32_t i = 0; i < RDMA_BOUNCE_SLOTS; i++)
        tp->bounce_free[tp->nbounce_free++] = i;
    for (int p = 0; p < tp->size; p++) {
        struct rdma_peer *pe = &tp->peers[p];
        pe->rank = p;
        pthread_mutex_init(&pe->slock, NULL);
        pe->ring = tp->send_buf + (size_t)p * tp->ring_slots * RDMA_BUF;
        /* Preallocated, so the fault path can queue small frames without allocating. */
        if (p != tp->rank && (!(pe->slot_wr = calloc(tp->ring_slots, sizeof *pe->slot_wr)) ||
                              !(pe->bl = malloc(RDMA_BACKLOG_MIN)))) {
            snprintf(why, why_len, "out of memory");
            goto fail;
        }
        pe->bl_cap = p != tp->rank ? RDMA_BACKLOG_MIN : 0;
        /* Room for the peer's first registrations, so a fault-path harvest need not allocate. */
        if (p != tp->rank && (pe->rr = calloc(64, sizeof *pe->rr)))
            pe->caprr = 64;
    }
    for (uint32_t i = 0; i < tp->srq_depth; i++)
        repost(tp, i);
    struct sockaddr *bound = rdma_get_local_addr(tp->lid);
    snprintf(tp->addr, sizeof tp->addr, "%s:%u", ip, ntohs(rdma_get_src_port(tp->lid)));
    (void)bound;
    core->log(DSM_LOG_INFO, DSM_TP_RDMA_NAME,
              "listening on %s: %s port %d (%s, gid %d %s%s%s), chosen as %s; window %u frames per peer, %u receive "
              "buffers; atomics %s", tp->addr, tp->dev.name, tp->dev.port, tp->dev.link, tp->dev.gid_index,
              tp->dev.gid, tp->dev.netdev[0] ? " on " : "", tp->dev.netdev, tp->dev.chosen_by, tp->window,
              tp->srq_depth, tp->dev.atomic_glob ? "global" : "device-only");
    *tp_p = tp;
    return DSM_OK;
fail:
    rdma_finalize(tp);
    return rc;
}

static int rdma_addr_get(dsm_tp_t *tp, void *buf, size_t *len_p)
{
    size_t n = strlen(tp->addr) + 1;
    if (*len_p < n)
        return DSM_EINVAL;
    memcpy(buf, tp->addr, n);
    *len_p = n;
    return DSM_OK;
}

static void rdma_finalize(dsm_tp_t *tp)
{
    if (!tp)
        return;
    if (tp->peers) {
        for (int p = 0; p < tp->size; p++) {
            struct rdma_peer *pe = &tp->peers[p];
            if (pe->id && pe->state == P_UP)
                rdma_disconnect(pe->id);
        }
        for (int p = 0; p < tp->size; p++) {
            struct rdma_peer *pe = &tp->peers[p];
            peer_forget_id(pe);
            free(pe->slot_wr);
            free(pe->bl);
            free(pe->ra);
            free(pe->rr);
            pthread_mutex_destroy(&pe->slock);
        }
    }
    if (tp->self_pasv) {
        rdma_destroy_qp(tp->self_pasv);
        rdma_destroy_id(tp->self_pasv);
    }
    if (tp->srq)
        ibv_destroy_srq(tp->srq);
    if (tp->scq)
        ibv_destroy_cq(tp->scq);
    if (tp->rcq)
        ibv_destroy_cq(tp->rcq);
    if (tp->cch)
        ibv_destroy_comp_channel(tp->cch);
    for (size_t i = 0; i < tp->nlmr; i++)
        ibv_dereg_mr(tp->lmrs[i].mr);
    struct ibv_mr *mrs[] = {tp->recv_mr, tp->send_mr, tp->bounce_mr, tp->op_mr};
    for (size_t i = 0; i < sizeof mrs / sizeof mrs[0]; i++)
        if (mrs[i])
            ibv_dereg_mr(mrs[i]);
    if (tp->pd)
        ibv_dealloc_pd(tp->pd);
    if (tp->lid)
        rdma_destroy_id(tp->lid);
    if (tp->ech)
        rdma_destroy_event_channel(tp->ech);
    free(tp->recv_buf);
    free(tp->send_buf);
    free(tp->bounce_buf);
    free(tp->ops);
    free(tp->lmrs);
    free(tp->peers);
    free(tp->ready);
    free(tp->qmap_qpn);
    free(tp->qmap_peer);
    pthread_mutex_destroy(&tp->plock);
    pthread_mutex_destroy(&tp->cqlock);
    pthread_mutex_destroy(&tp->scqlock);
    pthread_mutex_destroy(&tp->oplock);
    pthread_rwlock_destroy(&tp->mrlock);
    pthread_rwlock_destroy(&tp->rlock);
    if (tp->wake_fd >= 0)
        close(tp->wake_fd);
    free(tp);
}

static int rdma_probe(const dsm_tp_core_t *core, char *why, size_t why_len)
{
    dsm_tp_rdma_dev_t d;
    int rc = dsm_tp_rdma_dev_choose(core, memlock_need(2), &d, why, why_len);
    if (rc)
        return rc;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &d.ip, ip, sizeof ip);
    snprintf(why, why_len, "%s port %d, %s (%s, gid %d%s%s), chosen as %s; atomics %s", d.name, d.port, ip, d.link,
             d.gid_index, d.netdev[0] ? " on " : "", d.netdev, d.chosen_by,
             d.atomic_glob ? "global" : "device-only (not atomic with CPU atomics)");
    return DSM_OK;
}

static int rdma_cpus(dsm_tp_t *tp, char *list, size_t list_len, char *why, size_t why_len)
{
    if (!tp->dev.cpus[0]) {
        snprintf(why, why_len, "%s: locality %s", tp->dev.name, tp->dev.locality);
        return DSM_ENOSYS;
    }
    snprintf(list, list_len, "%s", tp->dev.cpus);
    snprintf(why, why_len, "nearest %s: %s", tp->dev.name, tp->dev.locality);
    return DSM_OK;
}

static uint32_t rdma_caps_now(dsm_tp_t *tp)
{
    uint32_t c = DSM_TP_CAP_RMA_NATIVE | DSM_TP_CAP_ATOMIC_NATIVE;
    if (tp->dev.atomic_glob)
        c |= DSM_TP_CAP_ATOMIC_GLOB;
    if (tp->peers && tp->peers[tp->rank].state == P_UP)
        c |= DSM_TP_CAP_ATOMIC_SELF;
    return c;
}

__attribute__((visibility("default"))) const struct dsm_tp_ops dsm_tp_rdma_ops = {
    .abi_version = DSM_TP_ABI_VERSION,
    .name = DSM_TP_RDMA_NAME,
    .caps = DSM_TP_CAP_RMA_NATIVE | DSM_TP_CAP_ATOMIC_NATIVE,
    .probe = rdma_probe,
    .init = rdma_init,
    .finalize = rdma_finalize,
    .addr_get = rdma_addr_get,
    .connect = rdma_connect_all,
    .am_send = rdma_am_send,
    .mem_reg = rdma_mem_reg,
    .mem_dereg = rdma_mem_dereg,
    .put = rdma_put,
    .put_notify = rdma_put_notify,
    .get = rdma_get,
    .atomic = rdma_atomic,
    .flush = rdma_flush,
    .progress = rdma_progress,
    .bye = rdma_bye,
    .peer_left = rdma_peer_left,
    .tell_lost = rdma_tell_lost,
    .peer_up = rdma_peer_up,
    .peer_drop = rdma_peer_drop,
    .describe = dsm_tp_rdma_dev_describe,
    .cpus = rdma_cpus,
    .caps_now = rdma_caps_now,
};
