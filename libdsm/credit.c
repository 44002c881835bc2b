/* SPDX-License-Identifier: MIT */
/*
 * credit.c - the message channels and their credits (DESIGN.md 4.2): why bounded queues cannot deadlock.
 *
 *   REQ    requests that wait for a reply: GETS, GETM (reply GRANT), LOCK_REQ (LOCK_GRANT), FREE (FREE_ACK)
 *   REL    releases: UNLOCK (UNLOCK_ACK); apart from REQ because a lock holder must always be able to release
 *          while other threads of its node hold every REQ credit waiting for that very lock
 *   REPLY  forwards and replies (INV, RECALL, GRANT, INV_ACK, RECALL_ACK, LOCK_GRANT, acks): no credits
 *
 * A node may have at most `window` messages of a credited channel unanswered at each peer: the sending
 * (application) thread takes a credit first, waiting if none is left, and the reply gives it back. So what any
 * node can owe another is bounded, the progress thread only ever sends forwards and replies (each caused by a
 * message it received, so bounded too) and never waits, and the threads that wait for credits hold no lock.
 * The receiver counts what each peer has outstanding; a peer that goes beyond its window is malformed
 * (flooding) and its connection is dropped.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/wait.h"
#include "migrate/mig.h"

unsigned dsm_credit_window = 256;
int dsm_credit_debug_ignore;

static uint32_t *avail[DSM_CHAN_CREDITED]; /* [peer]: credits left for sending */
static uint32_t *owed[DSM_CHAN_CREDITED];  /* [peer]: requests received and not answered yet */
static int npeers;

int dsm_credit_setup(int n)
{
    npeers = n;
    for (int c = 0; c < DSM_CHAN_CREDITED; c++) {
        avail[c] = calloc((size_t)n, sizeof *avail[c]);
        owed[c] = calloc((size_t)n, sizeof *owed[c]);
        if (!avail[c] || !owed[c])
            return DSM_ENOMEM;
        for (int p = 0; p < n; p++)
            avail[c][p] = dsm_credit_window;
    }
    return DSM_OK;
}

void dsm_credit_teardown(void)
{
    for (int c = 0; c < DSM_CHAN_CREDITED; c++) {
        free(avail[c]);
        free(owed[c]);
        avail[c] = owed[c] = NULL;
    }
    npeers = 0;
}

void dsm_chan_take(int peer, int chan)
{
    dsm_mig_probe();
    if (peer != dsm_core_rank() && !dsm_credit_debug_ignore) {
        uint32_t *a = &avail[chan][peer];
        int timeout_ms = dsm_core_config()->timeout_s * 1000, waited = 0;
        for (;;) {
            uint32_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
            if (v && __atomic_compare_exchange_n(a, &v, v - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                break;
            if (v)
                continue;
            /* Every credit is out: replies are coming, or the peer is lost. */
            if (dsm_wait_change(a, 0, 100) < 0 && (waited += 100) >= timeout_ms)
                dsm_fail_stop(peer, "no reply to any outstanding request within DSM_TIMEOUT");
        }
    }
}

int dsm_chan_send(int peer, int chan, uint8_t am_id, const void *hdr, size_t hl, const void *payload, size_t len)
{
    dsm_chan_take(peer, chan);
    return dsm_am_send(peer, am_id, hdr, hl, payload, len);
}

void dsm_credit_return(int peer, int chan)
{
    if (peer == dsm_core_rank())
        return;
    __atomic_add_fetch(&avail[chan][peer], 1, __ATOMIC_ACQ_REL);
    dsm_wake_change(&avail[chan][peer]);
}

int dsm_credit_received(int src, int chan)
{
    if (src == dsm_core_rank())
        return DSM_OK;
    if (__atomic_add_fetch(&owed[chan][src], 1, __ATOMIC_ACQ_REL) > dsm_credit_window) {
        dsm_err("node %d has more than %u unanswered requests here: beyond its window", src, dsm_credit_window);
        return DSM_EPROTO;
    }
    return DSM_OK;
}

void dsm_credit_answered(int src, int chan)
{
    if (src != dsm_core_rank())
        __atomic_sub_fetch(&owed[chan][src], 1, __ATOMIC_ACQ_REL);
}
