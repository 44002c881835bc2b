/* SPDX-License-Identifier: MIT */
/*
 * barrier.c - dsm_barrier: a dissemination barrier over active messages (DESIGN.md 4.3), never a spin on memory.
 *
 * In round k of a barrier, node r sends to (r + 2^k) mod n and waits for the message of (r - 2^k) mod n.
 * After ceil(log2 n) rounds every node has heard, directly or not, from every other, so none leaves before all
 * entered. A node may already be in the next barrier while a slower one finishes this one, so arrivals are
 * counted per round across barriers: barrier number e is complete in round k once arrived[k] >= e. One sender per
 * round and in-order delivery make each message's epoch exactly arrived[k] + 1; anything else is malformed.
 * Calls from several threads of a node are serialized, each one a barrier of the job.
 * Waits have no timeout of their own: a node may compute for hours before it enters; a lost node fails the job
 * stop through its transport (DESIGN.md 4.7).
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/wait.h"
#include "transport/wire.h"

#define MAX_ROUNDS 32

static struct {
    pthread_mutex_t lock;
    uint32_t epoch;                /* barriers this node completed */
    uint32_t arrived[MAX_ROUNDS];  /* messages received per round, all barriers together */
    int rounds;
} bar = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int round_sender(int k)
{
    int n = dsm_core_size();
    return (int)(((long)dsm_core_rank() - (1L << k) % n + n) % n);
}

static int barrier_am(void *arg, int src, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                      size_t len)
{
    (void)arg;
    (void)am_id;
    (void)payload;
    if (hdr_len != 5 || len != 0) {
        dsm_err("barrier message from node %d has a bad length", src);
        return DSM_EPROTO;
    }
    const uint8_t *h = hdr;
    uint32_t epoch = dsm_le32_get(h);
    int k = h[4];
    if (k >= bar.rounds || src != round_sender(k) ||
        epoch != __atomic_load_n(&bar.arrived[k], __ATOMIC_ACQUIRE) + 1) {
        dsm_err("barrier message from node %d is out of sequence (round %d, barrier %u)", src, k, epoch);
        return DSM_EPROTO;
    }
    __atomic_store_n(&bar.arrived[k], epoch, __ATOMIC_RELEASE);
    dsm_wake_change(&bar.arrived[k]);
    return DSM_OK;
}

int dsm_barrier_setup(void)
{
    memset(bar.arrived, 0, sizeof bar.arrived);
    bar.epoch = 0;
    bar.rounds = 0;
    while ((1L << bar.rounds) < dsm_core_size())
        bar.rounds++;
    int rc = dsm_am_register(DSM_AM_BARRIER, barrier_am, NULL);
    return rc == DSM_EBUSY ? DSM_OK : rc;
}

DSM_API int dsm_barrier(void)
{
    int n = dsm_core_size();
    if (n < 1)
        return DSM_ENOTINIT;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    pthread_mutex_lock(&bar.lock);
    uint32_t e = ++bar.epoch;
    int rc = DSM_OK;
    for (int k = 0; k < bar.rounds && rc == DSM_OK; k++) {
        uint8_t h[5];
        dsm_le32_put(h, e);
        h[4] = (uint8_t)k;
        rc = dsm_am_send((int)((dsm_core_rank() + (1L << k)) % n), DSM_AM_BARRIER, h, sizeof h, NULL, 0);
        uint32_t seen;
        while (rc == DSM_OK && (seen = __atomic_load_n(&bar.arrived[k], __ATOMIC_ACQUIRE)) < e)
            dsm_wait_change(&bar.arrived[k], seen, 1000);
    }
    pthread_mutex_unlock(&bar.lock);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return rc;
}
