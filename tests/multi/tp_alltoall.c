/* SPDX-License-Identifier: MIT */
/* All-to-all: every rank sends 60 messages of varied sizes to every other; each receiver checks per-sender order
 * and contents, and the total. */
#include "config.h"

#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_A2A = DSM_AM_TEST_FIRST };
#define MSGS 60

static uint32_t *expect; /* next sequence number per sender */
static uint32_t received, bad;

static size_t msg_len(uint32_t seq)
{
    return (seq * 977u) % 20000u;
}

static int on_msg(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id;
    if (hl != 4)
        return DSM_EPROTO;
    uint32_t seq = dsm_le32_get(hdr);
    if (seq != expect[src] || len != msg_len(seq) || !mt_match(p, len, (uint32_t)src, (uint32_t)dsm_rank(), seq))
        mt_bump(&bad);
    expect[src] = seq + 1;
    mt_bump(&received);
    return DSM_OK;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    expect = calloc((size_t)n, sizeof *expect);
    MT_CHECK(dsm_am_register(AM_A2A, on_msg, NULL) == DSM_OK, "register");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint8_t *buf = malloc(20000);
    for (uint32_t seq = 0; seq < MSGS; seq++)
        for (int k = 1; k < n; k++) {
            int to = (me + k) % n;
            uint8_t hdr[4];
            dsm_le32_put(hdr, seq);
            mt_fill(buf, msg_len(seq), (uint32_t)me, (uint32_t)to, seq);
            MT_CHECK(dsm_am_send(to, AM_A2A, hdr, 4, buf, msg_len(seq)) == DSM_OK, "send");
        }
    mt_wait_at_least(&received, (uint32_t)(n - 1) * MSGS, "all-to-all messages");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(bad == 0, "%u messages out of order or corrupted", bad);
    MT_CHECK(received == (uint32_t)(n - 1) * MSGS, "received %u, want %u", received, (n - 1) * MSGS);
    for (int s = 0; s < n; s++)
        MT_CHECK(s == me || expect[s] == MSGS, "from %d: %u messages", s, expect[s]);
    if (me == 0)
        printf("all-to-all ok: %d ranks x %d messages\n", n, MSGS);
    free(buf);
    free(expect);
    mt_finalize();
    return 0;
}
