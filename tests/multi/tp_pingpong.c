/* SPDX-License-Identifier: MIT */
/* Active-message ping-pong between rank pairs (2k, 2k+1) with payloads from 8 B to 1 MiB: every byte of every
 * ping and pong is checked, and pongs must come back in order. */
#include "config.h"

#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_PING = DSM_AM_TEST_FIRST, AM_PONG };

static const uint32_t sizes[] = {0, 8, 64, 1000, 4096, 65536, 262144, 1u << 20};
static uint32_t pongs, bad;
static uint32_t next_pong;

static int on_ping(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id;
    if (hl != 8)
        return DSM_EPROTO;
    uint32_t size = dsm_le32_get(hdr), iter = dsm_le32_get((const uint8_t *)hdr + 4);
    if (len != size || !mt_match(p, len, (uint32_t)src, size, iter))
        mt_bump(&bad);
    /* Echo it back, from the progress thread: sends never block. */
    return dsm_am_send(src, AM_PONG, hdr, hl, p, len);
}

static int on_pong(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id;
    if (hl != 8)
        return DSM_EPROTO;
    uint32_t size = dsm_le32_get(hdr), iter = dsm_le32_get((const uint8_t *)hdr + 4);
    /* The pong carries the pattern of the original sender (us), as echoed by src. */
    if (len != size || !mt_match(p, len, (uint32_t)dsm_rank(), size, iter) || iter != next_pong)
        mt_bump(&bad);
    (void)src;
    next_pong++;
    mt_bump(&pongs);
    return DSM_OK;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    MT_CHECK(n % 2 == 0, "needs an even number of ranks, got %d", n);
    MT_CHECK(dsm_am_register(AM_PING, on_ping, NULL) == DSM_OK, "register");
    MT_CHECK(dsm_am_register(AM_PONG, on_pong, NULL) == DSM_OK, "register");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    int peer = me ^ 1;
    uint8_t *buf = malloc(1u << 20);
    uint32_t iter = 0;
    if (me % 2 == 0) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int reps = sizes[s] >= 65536 ? 4 : 30;
            for (int r = 0; r < reps; r++, iter++) {
                uint8_t hdr[8];
                dsm_le32_put(hdr, sizes[s]);
                dsm_le32_put(hdr + 4, iter);
                mt_fill(buf, sizes[s], (uint32_t)me, sizes[s], iter);
                MT_CHECK(dsm_am_send(peer, AM_PING, hdr, 8, buf, sizes[s]) == DSM_OK, "send %u B", sizes[s]);
                /* Overwrite the buffer at once: am_send must have copied or sent it. */
                memset(buf, 0xee, sizes[s]);
                mt_wait_at_least(&pongs, iter + 1, "pong");
            }
        }
        MT_CHECK(pongs == iter, "pongs %u of %u", pongs, iter);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(bad == 0, "%u messages had wrong contents or order", bad);
    if (me == 0)
        printf("ping-pong ok over %s: %u round trips per pair, 0 to 1 MiB\n", dsm_transport_name(), iter);
    free(buf);
    mt_finalize();
    return 0;
}
