/* SPDX-License-Identifier: MIT */
/*
 * malformed CASE - a peer that did authenticate (rank 1, a member of the job) sends rank 0 one malformed or
 * unexpected message of the core's protocol (tests/multi/malformed.sh runs every CASE under dsmrun -n 3).
 * Rank 0 must log the reason, drop the connection and fail stop naming node 1, never crash, and never write
 * the message's data into a page: its error handler checks, through the system view, that the pages it
 * holds still carry their pattern, and prints "pages intact" or "PAGE CORRUPTED".
 *   malformed list     print the cases
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libdsm/coh.h"
#include "libdsm/region.h"
#include "tests/multi/mt.h"
#include "transport/wire.h"

/* Message ids of the core (libdsm/core.h, coh.h, lock.c, malloc.c). */
enum { LOCK_REQ = 20, LOCK_GRANT = 21, UNLOCK = 22, UNLOCK_ACK = 23, LOCK_RESET = 24, SYNC_WAIT = 25, COND_SIGNAL = 26,
       FREE = 30, FREE_ACK = 31 };

/* page0: homed on rank 0 (rank 0 writes it: M at its home); page1: homed on rank 1; page2: on rank 2. */
static size_t page0, page1, page2;
static int my_rank = -1;

struct mcase {
    const char *name;
    uint8_t id;
    int page;        /* 0, 1, 2: put that page's index first in the header; -1: the index in idx */
    uint64_t idx;
    size_t hl;       /* header bytes (the index first, then fill) */
    uint8_t fill;    /* byte after the index (mode, state, flags) */
    size_t len;      /* payload bytes, filled with 0x5a */
};

#define HUGE_IDX (1ull << 40)
static const struct mcase cases[] = {
    {"barrier-short", DSM_AM_BARRIER, -1, 0, 4, 0, 0},
    {"barrier-long", DSM_AM_BARRIER, -1, 0, 6, 0, 0},
    {"barrier-payload", DSM_AM_BARRIER, -1, 0, 5, 0, 8},
    {"heartbeat-header", DSM_AM_HEARTBEAT, -1, 0, 1, 0, 0},
    {"heartbeat-payload", DSM_AM_HEARTBEAT, -1, 0, 0, 0, 4},
    {"gets-short", DSM_AM_GETS, 0, 0, 7, 0, 0},
    {"gets-long", DSM_AM_GETS, 0, 0, 9, 0, 0},
    {"gets-bad-index", DSM_AM_GETS, -1, HUGE_IDX, 8, 0, 0},
    {"gets-not-home", DSM_AM_GETS, 2, 0, 8, 0, 0},
    {"gets-slot-zero", DSM_AM_GETS, 0, 0, 12, 0, 0},    /* a reply slot named, but token 0 */
    {"gets-slot-bogus", DSM_AM_GETS, 0, 0, 12, 5, 0},   /* a slot rank 1 never armed */
    {"getm-payload", DSM_AM_GETM, 0, 0, 8, 0, 16},
    {"grant-from-non-home", DSM_AM_GRANT, 0, 0, 9, DSM_PG_M, DSM_PAGE_SIZE},
    {"grant-unasked", DSM_AM_GRANT, 1, 0, 9, DSM_PG_S, DSM_PAGE_SIZE},
    {"grant-bad-mode", DSM_AM_GRANT, 1, 0, 9, 7, 0},
    {"grant-short-data", DSM_AM_GRANT, 1, 0, 9, DSM_PG_S, 100},
    {"grant-bad-index", DSM_AM_GRANT, -1, HUGE_IDX, 9, DSM_PG_S, DSM_PAGE_SIZE},
    {"inv-from-non-home", DSM_AM_INV, 0, 0, 8, 0, 0},
    {"inv-short", DSM_AM_INV, 1, 0, 4, 0, 0},
    {"inv-ack-unexpected", DSM_AM_INV_ACK, 0, 0, 8, 0, 0},
    {"recall-bad-state", DSM_AM_RECALL, 1, 0, 9, 9, 0},
    {"recall-not-owner", DSM_AM_RECALL, 1, 0, 9, DSM_PG_I, 0},
    {"recall-ack-unexpected", DSM_AM_RECALL_ACK, 0, 0, 9, 0, DSM_PAGE_SIZE},
    {"recall-ack-short-data", DSM_AM_RECALL_ACK, 0, 0, 9, 0, 10},
    {"lock-req-short", LOCK_REQ, 0, 0, 16, 0, 0},
    {"lock-req-bad-id", LOCK_REQ, -1, HUGE_IDX << 12, 17, 0, 0},
    {"lock-req-misaligned", LOCK_REQ, -1, 3, 17, 0, 0},
    {"lock-grant-unexpected", LOCK_GRANT, 1, 0, 17, 0, 0},
    {"unlock-not-held", UNLOCK, 0, 0, 8, 0, 0},
    {"unlock-long", UNLOCK, 0, 0, 9, 0, 0},
    {"unlock-ack-bad-id", UNLOCK_ACK, -1, HUGE_IDX << 12, 8, 0, 0},
    {"lock-reset-short", LOCK_RESET, 0, 0, 7, 0, 0},
    {"sync-wait-short", SYNC_WAIT, 0, 0, 24, 0, 0},
    {"sync-wait-bad-kind", SYNC_WAIT, 0, 0, 25, 0, 0},
    {"sync-wait-bad-id", SYNC_WAIT, -1, HUGE_IDX << 12, 25, 0, 0},
    {"cond-signal-long", COND_SIGNAL, 0, 0, 18, 0, 0},
    {"cond-signal-bad-flag", COND_SIGNAL, 0, 0, 17, 2, 0},
    {"free-short", FREE, -1, 0, 7, 0, 0},
    {"free-ack-payload", FREE_ACK, -1, 0, 8, 0, 8},
    {"unregistered-id", 127, -1, 0, 8, 0, 0},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* tcp only (shm refuses such a reply at its sender, and shm.sh writes garbage into the slots instead): a direct
 * reply frame for a reply slot of rank 0 that waits for nothing, carrying 0x5a data for rank 0's page0. */
static const struct mcase reply_cases[] = {
    {"reply-unarmed-slot", DSM_AM_GRANT, 0, 0, 9, DSM_PG_S, DSM_PAGE_SIZE},
};
#define NREPLY (sizeof reply_cases / sizeof reply_cases[0])

static int tcp_only(void)
{
    const char *t = getenv("DSM_TRANSPORT");
    return t && !strcmp(t, "tcp");
}

static void on_error(int err, int node)
{
    if (my_rank != 0)
        return;
    /* Pages rank 0 holds: page0 (its home copy, written with 0xa5) must not carry the peer's 0x5a bytes. */
    int intact = 1;
    const uint8_t *s = dsm_region.sys + (page0 << DSM_PAGE_SHIFT);
    for (size_t i = 0; i < DSM_PAGE_SIZE; i++)
        intact &= s[i] == 0xa5;
    s = dsm_region.sys + (page1 << DSM_PAGE_SHIFT);
    for (size_t i = 0; i < DSM_PAGE_SIZE; i++)
        intact &= s[i] != 0x5a;
    char b[128];
    int n = snprintf(b, sizeof b, "malformed: error handler (err %d, node %d): %s\n", err, node,
                     intact ? "pages intact" : "PAGE CORRUPTED");
    ssize_t w = write(STDERR_FILENO, b, (size_t)n);
    (void)w;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "list")) {
        for (size_t i = 0; i < NCASES; i++)
            printf("%s\n", cases[i].name);
        for (size_t i = 0; tcp_only() && i < NREPLY; i++)
            printf("%s\n", reply_cases[i].name);
        return 0;
    }
    const struct mcase *c = NULL;
    int reply = 0;
    for (size_t i = 0; argc == 2 && i < NCASES; i++)
        if (!strcmp(argv[1], cases[i].name))
            c = &cases[i];
    for (size_t i = 0; argc == 2 && i < NREPLY; i++)
        if (!strcmp(argv[1], reply_cases[i].name))
            c = &reply_cases[i], reply = 1;
    if (!c) {
        fprintf(stderr, "usage: malformed list | malformed CASE\n");
        return 2;
    }
    dsm_set_error_handler(on_error);
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    my_rank = me;
    MT_CHECK(n == 3, "malformed runs on 3 nodes");
    uint8_t *a0 = dsm_alloc_home(DSM_PAGE_SIZE, 0), *a1 = dsm_alloc_home(DSM_PAGE_SIZE, 1),
            *a2 = dsm_alloc_home(DSM_PAGE_SIZE, 2);
    MT_CHECK(a0 && a1 && a2, "alloc");
    page0 = (size_t)(a0 - dsm_region.app) >> DSM_PAGE_SHIFT;
    page1 = (size_t)(a1 - dsm_region.app) >> DSM_PAGE_SHIFT;
    page2 = (size_t)(a2 - dsm_region.app) >> DSM_PAGE_SHIFT;
    if (me == 0)
        memset(a0, 0xa5, DSM_PAGE_SIZE);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 1) {
        uint8_t hdr[64] = {0};
        static uint8_t payload[DSM_PAGE_SIZE];
        memset(payload, 0x5a, sizeof payload);
        uint64_t idx = c->page == 0 ? page0 : c->page == 1 ? page1 : c->page == 2 ? page2 : c->idx;
        if (c->id >= LOCK_REQ && c->page >= 0)
            idx <<= DSM_PAGE_SHIFT; /* locks are named by their offset in the range */
        if (c->hl >= 8)
            dsm_le64_put(hdr, idx);
        else
            memset(hdr, 0, c->hl);
        if (c->hl > 8)
            memset(hdr + 8, 0, c->hl - 8);
        if (c->hl > 8)
            hdr[c->hl == 17 ? 16 : 8] = c->fill;
        printf("rank 1 sends %s: id %u, %zu header bytes, %zu payload bytes\n", c->name, c->id, c->hl, c->len);
        fflush(stdout);
        if (reply) {
            uint64_t off;
            const dsm_mreg_t *m = dsm_region_mreg(page0, &off);
            MT_CHECK(m, "page0 is registered");
            MT_CHECK(dsm_rma_reply(0, 7, payload, c->len, m, off, c->id, hdr, c->hl) == DSM_OK, "reply");
        } else {
            MT_CHECK(dsm_am_send(0, c->id, hdr, c->hl, c->len ? payload : NULL, c->len) == DSM_OK, "send");
        }
    }
    /* Rank 0 fails stop on the message; the others learn of it and fail stop too. Nobody gets past here. */
    for (;;)
        (void)dsm_barrier();
}
