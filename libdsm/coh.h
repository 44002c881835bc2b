/* SPDX-License-Identifier: MIT */
/*
 * coh.h - the coherence engine's internal interface: node-side page states and faults (pg_fault.c) and the
 * home directory (dir_msi.c). The protocol and its invariants are described at the top of dir_msi.c; the
 * Promela model of the same states and messages is tests/model/dsm_msi.pml (checked by SPIN in make check).
 */
#ifndef DSM_COH_H
#define DSM_COH_H

#include <stddef.h>
#include <stdint.h>

/* Node-side page states (application-view protection). */
enum { DSM_PG_I = 0, DSM_PG_S = 1, DSM_PG_M = 2 };

/* Messages, as active-message handler ids. Headers: u64 page index, then the fields named. */
enum {
    DSM_AM_GETS = 10,       /* node -> home: read miss */
    DSM_AM_GETM = 11,       /* node -> home: write miss or upgrade */
    DSM_AM_GRANT = 12,      /* home -> node: + u8 mode [| PLACED]; payload: the page, or none (upgrade, placed) */
    DSM_AM_INV = 13,        /* home -> sharer */
    DSM_AM_INV_ACK = 14,    /* sharer -> home */
    DSM_AM_RECALL = 15,     /* home -> owner: + u8 state to keep (S or I) */
    DSM_AM_RECALL_ACK = 16, /* owner -> home: + u8 0 [| PLACED]; payload: the page, or none when placed */
};

/* Flag in the last header byte of GRANT and RECALL_ACK: the page is already in the receiver's system view (put
 * there with put_notify by a provider with RMA_NATIVE, one copy), so the message carries none. */
#define DSM_COH_PLACED 0x80u

/* Send page p's data (this node's system view) to node to with message id and hdr (hl bytes, whose last byte
 * takes DSM_COH_PLACED): written straight into to's system view when its provider can and the page is
 * registered, else as the payload. The caller's protocol keeps the page unchanged until to has handled it. */
int dsm_coh_send_page(int to, uint8_t id, uint8_t *hdr, size_t hl, size_t p);
/* A GRANT to the reply slot token that to's request named (core.h dsm_rma_reply): the page, when with_data, put
 * straight into to's system view, then the header to the faulting thread itself. The page is registered and the
 * pair has reply slots, or to would not have named a slot (checked again here: DSM_EPROTO). */
int dsm_coh_grant_direct(int to, uint32_t token, uint8_t *hdr, size_t hl, size_t p, int with_data);

/* The page a coherence message names: its header is want bytes starting with the u64 page index, and the page
 * must be coherent shared memory homed on node home. Returns 1 and sets *p_out, or 0 for a malformed message. */
int dsm_coh_msg_page(const void *hdr, size_t hl, size_t want, int home, size_t *p_out);

/* pg_fault.c */
int dsm_pg_setup(void);
void dsm_pg_teardown(void);
/* Bring page p to at least S (write = 0) or M; blocks until granted. Async-signal-safe in the sense of
 * DESIGN.md 4.2 (no lock the faulting thread can hold, no stdio). */
void dsm_pg_fault(size_t p, int write);
/* Bring n pages from first to at least S or M with all requests in flight at once (dsm_prefetch). */
void dsm_pg_prefetch(size_t first, size_t n, int write);
/* Is the calling thread inside the page-fault handler? */
int dsm_pg_in_fault(void);
/* A grant arrived (or the home granted to itself): data is the page, or NULL when none came or it was placed
 * (placed = 1: already in the system view). */
int dsm_pg_grant(size_t p, int mode, const void *data, int placed);
/* Fetch-add or compare-swap (DSM_TP_ATOMIC_*) on a word of page p, with the page held Modified here for the
 * duration: coherent with plain loads and stores everywhere. Returns the old value. */
uint64_t dsm_pg_atomic(size_t p, uint64_t *word, int op, uint64_t operand, uint64_t compare);
/* Set this node's copy of page p to S or I (downgrade or invalidate), protection first. */
void dsm_pg_demote(size_t p, int state);
/* Forget every page in [p, p+n): state I, no access (dsm_dealloc). */
void dsm_pg_reset(size_t p, size_t n);

/* dir_msi.c */
/* Test hook, the negative control of the litmus and stress tests: when N > 0 the home silently drops every Nth
 * invalidation, breaking single-writer. Internal (not exported from libdsm.so); only tests set it. */
extern unsigned dsm_dir_debug_drop_inv;
int dsm_dir_setup(void);
void dsm_dir_teardown(void);
/* A request from node src for page p homed here (src may be this node); token: src's reply slot for the grant,
 * or 0 (the grant goes as a message). */
void dsm_dir_request(size_t p, int src, int mode, uint32_t token);
/* Reset the directory entries of [p, p+n) to Uncached, owned by the home (dsm_alloc, dsm_dealloc). */
void dsm_dir_reset(size_t p, size_t n);

#endif /* DSM_COH_H */
