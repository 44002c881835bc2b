/* SPDX-License-Identifier: MIT */
/*
 * transport.h - the provider interface (DESIGN.md 4.4, STYLE.md 2). Internal, never installed.
 *
 * A provider moves bytes between nodes and knows nothing of pages, directories or locks. The core (libdsm/)
 * gives it a struct of services (logging, dispatch of incoming active messages, completion, loss of a peer) and
 * drives it through one const struct dsm_tp_ops. Providers are listed in one table (transport/registry.c); the
 * core picks, per peer, the first provider of DSM_TRANSPORT that both ends started.
 *
 * Threads: every op may be called from any thread at any time after init returned, concurrently, except
 * finalize (once, after every other call has returned). Active-message handlers and completions run on the
 * thread that calls progress (the core's progress thread) and must not block.
 *
 * Completion and ordering, per operation (all "peer" below means one peer through one provider):
 *   am_send     Returns once the buffers may be reused (the provider copied or sent them). Messages to one peer
 *               are delivered in the order am_send returned, exactly once, or the peer is reported lost.
 *   put         The request completes when the data is in the peer's registered memory (remote completion).
 *               No order with other operations; complete it (or flush) before relying on it.
 *   put_notify  As put; then the peer's handler am_id runs with hdr, after the data is in place. req may be
 *               NULL: no completion is reported, and the caller keeps src unchanged until the peer's handler ran.
 *   get         The request completes when the data is in dst. The source memory must not change meanwhile.
 *   atomic      64-bit fetch-add or compare-swap on an 8-byte-aligned registered word, performed by one agent
 *               at the target (so atomics on one word are linearizable); the request completes with the old
 *               value. Not atomic with respect to CPU stores on the target unless DSM_TP_CAP_ATOMIC_GLOB.
 *   flush       Returns when every put/put_notify/get/atomic this node issued to the peer before the call is
 *               complete, or fails with DSM_ETIMEDOUT.
 *   progress    Moves data, runs handlers and completions; waits at most timeout_ms for an event.
 * Buffers given to put/get/atomic belong to the provider until the request completes (STYLE.md 5).
 * Registered memory (mem_reg) may be the target of peers' put/get/atomic; its key (dsm_tp_rkey_t) travels
 * through the rendezvous or an active message, and is validated by the target on every use. Registered memory
 * is a MAP_SHARED mapping of a file descriptor (the region's memfd, sealed against shrinking), given with its
 * offset, so a provider whose peers share this host (shm) can map it in their address spaces; other providers
 * ignore the descriptor.
 *
 * ABI 3 added, at the end of struct dsm_tp_ops, optional ops (NULL when a provider has none): peer_up and
 * peer_drop, so a connection that failed to one peer can fall back to the next provider for that pair only;
 * describe, for dsm_info's listing of devices; cpus, the CPUs nearest the device a provider uses (the core binds
 * its progress thread there); caps_now, the capabilities of this instance on this device (ATOMIC_GLOB when the
 * device says so; ATOMIC_SELF when atomic() accepts this node's own rank, which the home of a word then uses for
 * its own atomics, so that they are not CPU atomics beside device atomics: DESIGN.md 4.2).
 * ABI 4 added core->secret: every connection proves knowledge of it before any other message (transport/auth.h).
 * ABI 5 added, optional, direct replies: a thread that sends a request and waits for its one answer (a page fault)
 * arms a reply slot, names its token in the request, and the peer's answer reaches that thread without a hop
 * through the progress thread (reply_arm, reply_wait, reply). The answer is handled (core->am_dispatch) by the
 * waiting thread, or by progress when progress gets there first: progress handles every reply already written
 * before it handles any later message of the same peer, so a reply is never handled after a message the peer
 * sent after it (the per-pair order the coherence protocol relies on); it may be handled before messages the peer
 * sent earlier, which only the requester's protocol can allow (DESIGN.md 4.3: a grant never has an earlier
 * message of its page still unacknowledged). shm writes the answer into a slot of the requester's mailbox; tcp
 * sends it in order on the pair's connection, which the waiting thread reads itself (transport/tcp/tcp.c).
 */
#ifndef DSM_TRANSPORT_H
#define DSM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define DSM_TP_ABI_VERSION 5

/* Largest active-message header and payload every provider must accept. */
#define DSM_TP_AM_HDR_MAX 256u
#define DSM_TP_AM_PAYLOAD_MAX (16u << 20)
/* Largest header of a direct reply (ABI 5). */
#define DSM_TP_REPLY_HDR_MAX 48u
/* Largest address blob a provider publishes through the rendezvous. */
#define DSM_TP_ADDR_MAX 512u

/* Capability flags. */
enum {
    DSM_TP_CAP_RMA_NATIVE = 1u << 0,    /* put/get without the target's CPU (RDMA) */
    DSM_TP_CAP_ATOMIC_NATIVE = 1u << 1, /* atomics without the target's CPU */
    DSM_TP_CAP_ATOMIC_GLOB = 1u << 2,   /* provider atomics are atomic with CPU atomics on the target */
    DSM_TP_CAP_AM_ORDERED = 1u << 3,    /* active messages and puts to a peer are delivered in issue order */
    DSM_TP_CAP_ATOMIC_SELF = 1u << 4,   /* atomic() also takes this node's own rank (through the device, so the
                                         * home's own atomics and its peers' are done by one agent) */
};

enum dsm_tp_atomic_op {
    DSM_TP_ATOMIC_FADD = 1,
    DSM_TP_ATOMIC_CSWAP = 2,
};

typedef struct dsm_tp dsm_tp_t; /* a provider instance, opaque to the core */

/* A completion the caller owns and waits on with dsm_tp_req_wait (libdsm/core.h). */
typedef struct dsm_tp_req {
    uint32_t done;   /* 0 pending, 1 complete; written by core->complete only */
    int status;      /* DSM_OK or a DSM_E* code */
    uint64_t value;  /* atomics: the old value */
} dsm_tp_req_t;

/* A local registration. */
typedef struct dsm_tp_mr {
    void *addr;
    size_t len;
    uint32_t key;  /* what a peer names this registration by (rkey for RDMA, table index for TCP) */
    void *prov;    /* the provider's own handle */
} dsm_tp_mr_t;

/* A peer's registration as this node names it. addr is the peer's virtual address of the registration. */
typedef struct dsm_tp_rkey {
    uint64_t addr;
    uint64_t len;
    uint32_t key;
} dsm_tp_rkey_t;

/* Handler for an incoming active message. Returns DSM_OK, or DSM_EPROTO when the message is malformed, in which
 * case the provider drops the connection (and the peer is lost). */
typedef int (*dsm_tp_am_fn_t)(void *arg, int src, uint8_t am_id, const void *hdr, size_t hdr_len,
                              const void *payload, size_t len);

/* Services the core gives a provider at init. */
typedef struct dsm_tp_core {
    uint32_t abi_version;
    int rank;
    int size;
    uint64_t job_id;
    int timeout_ms;  /* DSM_TIMEOUT: handshakes and waits give up after this */
    void (*log)(int level, const char *prov, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
    /* Deliver an incoming active message to the core (handler table lookup and statistics). */
    int (*am_dispatch)(int src, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload, size_t len);
    /* Complete a request: store status and value, then wake its waiter. */
    void (*complete)(dsm_tp_req_t *req, int status, uint64_t value);
    /* A connected peer's connection failed (EOF, error, malformed frame). Reason is a short phrase. */
    void (*peer_lost)(int peer, const char *reason);
    /* Statistics. */
    void (*count_tx)(size_t bytes);
    void (*count_rx)(size_t bytes);
    void (*count_refused)(void);  /* a connection that failed authentication */
    /* The validated value of a DSM_* setting a provider reads (e.g. DSM_TCP_IFACE), or NULL when unset. */
    const char *(*setting)(const char *name);
    /* May the calling thread allocate memory? Not inside the page-fault handler (DESIGN.md 4.2): a send from
     * there waits for queue space instead of growing the queue. */
    int (*may_allocate)(void);
    /* The per-job key (DSM_AUTH_KEY_SIZE bytes) every connection must prove knowledge of (transport/auth.h), or
     * NULL when authentication is off (DSM_AUTH=off). */
    const uint8_t *secret;
} dsm_tp_core_t;

/* Log levels shared with libdsm/log.h. */
enum { DSM_LOG_ERROR = 0, DSM_LOG_WARN, DSM_LOG_INFO, DSM_LOG_DEBUG, DSM_LOG_TRACE };

struct dsm_tp_ops {
    uint32_t abi_version;  /* DSM_TP_ABI_VERSION */
    const char *name;
    uint32_t caps;
    /* Can this provider start on this host? DSM_OK with what it would use, or a code with the reason, as one line
     * in why (dsm_info). Only core->log and core->setting are used. */
    int (*probe)(const dsm_tp_core_t *core, char *why, size_t why_len);
    /* Start: open devices, listen. On failure why says what was missing. */
    int (*init)(const dsm_tp_core_t *core, dsm_tp_t **tp_p, char *why, size_t why_len);
    /* Close every connection and free everything. Sends nothing. */
    void (*finalize)(dsm_tp_t *tp);
    /* This node's address blob, published through the rendezvous (at most DSM_TP_ADDR_MAX bytes). */
    int (*addr_get)(dsm_tp_t *tp, void *buf, size_t *len_p);
    /* Connect to every peer p with addr_len[p] > 0 (the peers this provider serves); blocks until all are up
     * or core->timeout_ms passed. Connections are made in both directions' agreement (both ends call it with
     * each other in their lists). */
    int (*connect)(dsm_tp_t *tp, const void *const *addr, const size_t *addr_len);
    /* Optional (NULL: every peer that published an address). Can this provider reach the peer that published
     * addr? Must give the same answer at both ends of a pair (shm: same host), since both choose alone. */
    int (*reach)(dsm_tp_t *tp, int peer, const void *addr, size_t addr_len);
    int (*am_send)(dsm_tp_t *tp, int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                   size_t len);
    /* Register [addr, addr+len), which maps fd from fd_off (MAP_SHARED). The provider may dup fd, never keeps it. */
    int (*mem_reg)(dsm_tp_t *tp, void *addr, size_t len, int fd, uint64_t fd_off, dsm_tp_mr_t *mr);
    int (*mem_dereg)(dsm_tp_t *tp, dsm_tp_mr_t *mr);
    int (*put)(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey, uint64_t offset,
               dsm_tp_req_t *req);
    int (*put_notify)(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                      uint64_t offset, uint8_t am_id, const void *hdr, size_t hdr_len, dsm_tp_req_t *req);
    int (*get)(dsm_tp_t *tp, int peer, void *dst, size_t len, const dsm_tp_rkey_t *rkey, uint64_t offset,
               dsm_tp_req_t *req);
    int (*atomic)(dsm_tp_t *tp, int peer, enum dsm_tp_atomic_op op, const dsm_tp_rkey_t *rkey, uint64_t offset,
                  uint64_t operand, uint64_t compare, dsm_tp_req_t *req);
    int (*flush)(dsm_tp_t *tp, int peer);
    int (*progress)(dsm_tp_t *tp, int timeout_ms);
    /* Tell the peer this node is leaving on purpose, so its EOF is not a loss; returns once sent. */
    int (*bye)(dsm_tp_t *tp, int peer);
    /* Has the peer said bye? */
    int (*peer_left)(dsm_tp_t *tp, int peer);
    /* Best effort, on the way out of a failing node: tell every peer that node was lost, so they report the
     * cause rather than this node's exit. Takes no lock that another thread may hold; never blocks. */
    void (*tell_lost)(dsm_tp_t *tp, int node);
    /* ABI 3, optional. After connect (whatever it returned): is the connection to peer up? NULL: connect's
     * status holds for every peer. */
    int (*peer_up)(dsm_tp_t *tp, int peer);
    /* ABI 3, optional. Close peer's connection without reporting it lost: the pair agreed through the
     * rendezvous to use another provider (the other end failed to connect). */
    void (*peer_drop)(dsm_tp_t *tp, int peer);
    /* ABI 3, optional. Print what this provider sees on this host (devices, ports, addresses, locality) as
     * indented lines, for dsm_info. Only core->log and core->setting are used. */
    void (*describe)(const dsm_tp_core_t *core, void (*line)(void *arg, const char *text), void *arg);
    /* ABI 3, optional. The CPUs nearest the device this instance uses, as a Linux CPU list ("0-3,8"), for
     * binding the progress thread; DSM_ENOSYS when unknown, with why (e.g. a software device). */
    int (*cpus)(dsm_tp_t *tp, char *list, size_t list_len, char *why, size_t why_len);
    /* ABI 3, optional. The capabilities of this started instance (NULL: the static caps). */
    uint32_t (*caps_now)(dsm_tp_t *tp);
    /* ABI 5, optional (all three or none). Reserve a reply slot at this node for one answer from peer: a token
     * (> 0) to send in the request, or 0 when the pair has no slot free (the answer then comes as a message). */
    uint32_t (*reply_arm)(dsm_tp_t *tp, int peer);
    /* Wait up to timeout_ms for the answer to token and handle it (core->am_dispatch, in this thread unless
     * progress did): DSM_OK once handled (the slot is free again), DSM_ETIMEDOUT (still armed: call again), or
     * DSM_EPROTO when the slot holds garbage (the peer was reported lost). */
    int (*reply_wait)(dsm_tp_t *tp, uint32_t token, int timeout_ms);
    /* Answer peer's request that carried token: as put_notify without a request (len 0: no data), am_id's
     * handler getting hdr (at most DSM_TP_REPLY_HDR_MAX bytes) at the peer once the data is in place. DSM_EPROTO
     * when the token names no armed slot of that peer. */
    int (*reply)(dsm_tp_t *tp, int peer, uint32_t token, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                 uint64_t offset, uint8_t am_id, const void *hdr, size_t hdr_len);
};

/* Registry (transport/registry.c). */
#define DSM_TP_MAX 4
/* Every provider this libdsm knows by name, built or not, in the default preference order. */
extern const char *const dsm_tp_known_names[];
/* The ops of a built provider, or NULL when name is unknown or was not built. */
const struct dsm_tp_ops *dsm_tp_lookup(const char *name);
/* The built providers' names, comma-separated (static). */
const char *dsm_tp_built_names(void);
/* Why dsm_tp_lookup(name) gave NULL: "not built ..." or, for a module, where it was looked for and what failed. */
const char *dsm_tp_lookup_error(const char *name);

#endif /* DSM_TRANSPORT_H */
