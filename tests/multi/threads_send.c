/* SPDX-License-Identifier: MIT */
/* Four threads per node send to every peer at the same time; receivers check order per (sender, thread) and
 * every byte: concurrent senders must never interleave frames. */
#include "config.h"

#include <pthread.h>

#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_T = DSM_AM_TEST_FIRST };
#define THREADS 4
#define MSGS 150

static uint32_t (*expect)[THREADS];
static uint32_t received, bad;

static size_t msg_len(uint32_t t, uint32_t seq)
{
    return 1 + (seq * 131u + t * 7919u) % 9000u;
}

static int on_msg(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id;
    if (hl != 8)
        return DSM_EPROTO;
    uint32_t t = dsm_le32_get(hdr), seq = dsm_le32_get((const uint8_t *)hdr + 4);
    if (t >= THREADS || seq != expect[src][t] || len != msg_len(t, seq) ||
        !mt_match(p, len, (uint32_t)src * THREADS + t, (uint32_t)dsm_rank(), seq))
        mt_bump(&bad);
    else
        expect[src][t]++;
    mt_bump(&received);
    return DSM_OK;
}

static void *sender(void *arg)
{
    uint32_t t = (uint32_t)(uintptr_t)arg;
    int me = dsm_rank(), n = dsm_size();
    uint8_t *buf = malloc(9001);
    for (uint32_t seq = 0; seq < MSGS; seq++)
        for (int k = 1; k < n; k++) {
            int to = (me + k) % n;
            uint8_t hdr[8];
            dsm_le32_put(hdr, t);
            dsm_le32_put(hdr + 4, seq);
            mt_fill(buf, msg_len(t, seq), (uint32_t)me * THREADS + t, (uint32_t)to, seq);
            MT_CHECK(dsm_am_send(to, AM_T, hdr, 8, buf, msg_len(t, seq)) == DSM_OK, "send");
        }
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int n = dsm_size();
    expect = calloc((size_t)n, sizeof *expect);
    MT_CHECK(dsm_am_register(AM_T, on_msg, NULL) == DSM_OK, "register");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_run_threads(THREADS, sender);
    uint32_t want = (uint32_t)(n - 1) * THREADS * MSGS;
    mt_wait_at_least(&received, want, "messages from all threads");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(bad == 0, "%u messages out of order or corrupted", bad);
    for (int s = 0; s < n; s++)
        for (int t = 0; t < THREADS; t++)
            MT_CHECK(s == dsm_rank() || expect[s][t] == MSGS, "from %d thread %d: %u", s, t, expect[s][t]);
    if (dsm_rank() == 0)
        printf("threads ok: %d senders per node, %u messages per node\n", THREADS, want);
    free(expect);
    mt_finalize();
    return 0;
}
