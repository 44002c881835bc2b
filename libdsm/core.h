/* SPDX-License-Identifier: MIT */
/*
 * core.h - libdsm's internal core API: the job (rank, size, bootstrap), the transports in use per peer, the
 * active-message handler table, one-sided operations and their completion, fail-stop. Used by the rest of
 * libdsm/ and by the tests (linked to the convenience library); nothing here is exported from libdsm.so.
 */
#ifndef DSM_CORE_H
#define DSM_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "libdsm/boot.h"
#include "libdsm/settings.h"
#include "transport/futex.h"
#include "transport/transport.h"

/* Active-message handler ids. The core owns 1..127; tests use DSM_AM_TEST_FIRST and up. */
enum {
    DSM_AM_BARRIER = 1,
    DSM_AM_HEARTBEAT = 2,
    DSM_AM_TEST_FIRST = 200,
};

/* A registration on every node: this node's key and every peer's key for the same collective call. */
typedef struct dsm_mreg {
    void *addr;
    size_t len;
    dsm_tp_mr_t mr[DSM_TP_MAX];  /* one per active provider */
    dsm_tp_rkey_t *rkey;         /* [size]: the key to name peer p's registration with */
} dsm_mreg_t;

typedef struct dsm_stats_core {
    uint64_t msgs_tx, bytes_tx, msgs_rx, bytes_rx;
    uint64_t conns_refused;  /* connections refused by the handshake */
} dsm_stats_core_t;

/* The calling node. */
int dsm_core_rank(void);
int dsm_core_size(void);
dsm_boot_t *dsm_core_boot(void);
const dsm_config_t *dsm_core_config(void);
/* The job secret connections authenticate with (DSM_AUTH_KEY_SIZE bytes), NULL when DSM_AUTH=off or alone. */
const uint8_t *dsm_core_secret(void);
/* Did the peer say bye (dsm_finalize) with nothing of it left to read? */
int dsm_core_peer_left(int peer);

/* Bind the calling thread (the progress thread) to DSM_PROGRESS_CPU, else near the RDMA device in use. */
void dsm_progress_bind(void);

/* Handlers run on the progress thread and must not block. Registering an id twice is DSM_EBUSY. */
int dsm_am_register(uint8_t am_id, dsm_tp_am_fn_t fn, void *arg);
/* Send to peer (self runs the handler in the calling thread). */
int dsm_am_send(int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload, size_t len);

/* Collective: register [addr, addr+len), a MAP_SHARED mapping of fd from fd_off, with every provider in use and
 * exchange keys through the rendezvous. fd must be sealed against shrinking (F_SEAL_SHRINK): local peers map it. */
int dsm_mreg_create(void *addr, size_t len, int fd, uint64_t fd_off, dsm_mreg_t **mreg_p);
/* Collective. */
int dsm_mreg_destroy(dsm_mreg_t *mreg);
/* Free the record of a registration whose provider is already gone (teardown). */
void dsm_mreg_forget(dsm_mreg_t *mreg);

/* Non-blocking one-sided operations on peer's part of a collective registration; wait with dsm_req_wait. */
int dsm_rma_put_nb(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off, dsm_tp_req_t *req);
/* As put; then peer's handler am_id runs with hdr once the data is in place. req may be NULL (no completion)
 * when the caller's protocol keeps src unchanged until that handler has run. */
int dsm_rma_put_notify_nb(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off, uint8_t am_id,
                          const void *hdr, size_t hdr_len, dsm_tp_req_t *req);
int dsm_rma_get_nb(int peer, void *dst, size_t len, const dsm_mreg_t *m, uint64_t off, dsm_tp_req_t *req);
int dsm_rma_atomic_nb(int peer, enum dsm_tp_atomic_op op, const dsm_mreg_t *m, uint64_t off, uint64_t operand,
                      uint64_t compare, dsm_tp_req_t *req);
/* Direct replies (transport.h ABI 5): does the pair's provider have reply slots; arm one for one answer from
 * peer (0: none free or no slots, the answer comes as a message); wait for it (DSM_OK once handled, in this
 * thread unless progress got there first; DSM_ETIMEDOUT: still armed); answer a request that named a token,
 * with the data (len 0: none) put into m at off first. */
int dsm_core_peer_replies(int peer);
uint32_t dsm_reply_arm(int peer);
int dsm_reply_wait(int peer, uint32_t token, int timeout_ms);
int dsm_rma_reply(int peer, uint32_t token, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off,
                  uint8_t am_id, const void *hdr, size_t hdr_len);
/* Blocking forms. */
int dsm_rma_put(int peer, const void *src, size_t len, const dsm_mreg_t *m, uint64_t off);
int dsm_rma_get(int peer, void *dst, size_t len, const dsm_mreg_t *m, uint64_t off);
int dsm_rma_atomic(int peer, enum dsm_tp_atomic_op op, const dsm_mreg_t *m, uint64_t off, uint64_t operand,
                   uint64_t compare, uint64_t *old);
int dsm_rma_flush(int peer);
/* Must this node's own atomics on registered memory go through dsm_rma_atomic(own rank) (a provider whose device
 * atomics are not atomic with CPU atomics serves its peers)? */
int dsm_rma_atomic_self(void);

/* Wait for a request: spin briefly, then futex; DSM_ETIMEDOUT after DSM_TIMEOUT. Returns the request's status. */
int dsm_req_wait(dsm_tp_req_t *req);
void dsm_req_init(dsm_tp_req_t *req);


/* Fail-stop (DESIGN.md 4.7): report "libdsm: node K lost (reason)", tell the launcher, exit non-zero.
 * Async-signal-safe. */
__attribute__((noreturn)) void dsm_fail_stop(int node, const char *reason);

/* The capability flags (DSM_TP_CAP_*) of the provider that reaches peer; 0 for this node. */
uint32_t dsm_core_peer_caps(int peer);
/* The provider that reaches peer ("self" for this node), NULL when not up or out of range. */
const char *dsm_core_peer_transport(int peer);

/* Counters of this node. */
void dsm_core_stats(dsm_stats_core_t *s);

/* barrier.c */
int dsm_barrier_setup(void);
/* credit.c: channels with credits (the comment at the top of credit.c explains them). */
enum { DSM_CHAN_REQ = 0, DSM_CHAN_REL = 1, DSM_CHAN_CREDITED = 2 };
extern unsigned dsm_credit_window;  /* per peer and channel; set before dsm_init (tests) */
extern int dsm_credit_debug_ignore; /* tests: send without taking credits, to check the receiver's limit */
int dsm_credit_setup(int nodes);
void dsm_credit_teardown(void);
/* Take a credit of chan at peer (waits for one): what dsm_chan_send does before dsm_am_send. */
void dsm_chan_take(int peer, int chan);
/* Send a credited message (REQ or REL) from an application thread: waits for a credit. */
int dsm_chan_send(int peer, int chan, uint8_t am_id, const void *hdr, size_t hl, const void *payload, size_t len);
/* The reply to a credited message arrived from peer. */
void dsm_credit_return(int peer, int chan);
/* A credited message arrived from src: DSM_EPROTO when src is beyond its window. */
int dsm_credit_received(int src, int chan);
/* This node replied to a credited message of src. */
void dsm_credit_answered(int src, int chan);

/* malloc.c */
int dsm_malloc_setup(void);
/* Bytes of this node's arena handed out and not freed (tests). */
uint64_t dsm_malloc_in_use(void);
void dsm_malloc_teardown(void);
/* Checkpoints (migrate/ckpt.c): this arena's bookkeeping as bytes (malloc'ed; 0 when out of memory), whether
 * bytes are a table this node can load, loading it, and the pages of the arena ever handed out. */
size_t dsm_malloc_save(uint8_t **buf_p);
int dsm_malloc_check(const uint8_t *b, size_t len);
int dsm_malloc_load(const uint8_t *b, size_t len);
size_t dsm_malloc_hwm(void);
/* A small block kept by the library for the whole run, not counted by dsm_malloc_in_use (dsm_root's word). */
void *dsm_malloc_keep(size_t len);
/* lock.c */
int dsm_lock_setup(void);
void dsm_lock_teardown(void);
/* alloc.c */
int dsm_alloc_setup(void);
void dsm_alloc_reset(void);
/* Checkpoints: the collective allocations as bytes, whether bytes can be loaded (nothing allocated yet), and
 * loading them (collective). */
size_t dsm_alloc_save(uint8_t **buf_p);
int dsm_alloc_check(const uint8_t *b, size_t len);
int dsm_alloc_load(const uint8_t *b, size_t len);
/* region.c: reserve the shared range at the same address on every node (collective). */
int dsm_region_reserve(void);
void dsm_region_release(void);

#endif /* DSM_CORE_H */
