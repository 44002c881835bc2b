/* SPDX-License-Identifier: MIT */
/*
 * A flood from one peer does not stop the others' progress (DESIGN.md 4.7): rank 1 sends rank 0 active
 * messages as fast as it can, without pause, until told to stop; meanwhile every rank from 2 up exchanges
 * ping-pongs with rank 0 and, once all of its ping-pongs are answered, says so. Rank 1 stops only when every
 * other rank is done, so their ping-pongs were all served during the flood. Rank 0 counts the flood: exactly
 * what rank 1 sent arrives, in order and intact. Only to bound the test's memory, rank 1 keeps at most
 * FLOOD_WINDOW messages unacknowledged (rank 0 acknowledges every FLOOD_ACK_EVERY). On 2 nodes a second thread
 * of rank 1 plays the other rank: its ping-pongs share the connection the flood fills.
 */
#include "config.h"

#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_FLOOD = DSM_AM_TEST_FIRST, AM_FLOOD_ACK, AM_FLOOD_END, AM_PING, AM_PONG, AM_DONE, AM_STOP };
#define FLOOD_LEN 512
#define FLOOD_ACK_EVERY 1024u
#define FLOOD_WINDOW (16u * FLOOD_ACK_EVERY)
#define PINGS 200u

static uint32_t flood_rx, flood_bad, flood_acked, flood_end, flood_total, pongs, done_count, stop;

static int on_flood(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    if (src != 1 || hl != 4 || len != FLOOD_LEN)
        return DSM_EPROTO;
    uint32_t seq = dsm_le32_get(hdr);
    if (seq != __atomic_load_n(&flood_rx, __ATOMIC_RELAXED) || !mt_match(p, len, 1, seq, 0))
        __atomic_add_fetch(&flood_bad, 1, __ATOMIC_RELAXED);
    uint32_t n = __atomic_add_fetch(&flood_rx, 1, __ATOMIC_ACQ_REL);
    if (n % FLOOD_ACK_EVERY == 0) {
        uint8_t b[4];
        dsm_le32_put(b, n);
        return dsm_am_send(1, AM_FLOOD_ACK, b, 4, NULL, 0);
    }
    return DSM_OK;
}

/* FLOOD_ACK and FLOOD_END carry a count: store it in *arg and wake its waiter. */
static int on_value(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)p;
    if (hl != 4 || len || src != (id == AM_FLOOD_ACK ? 0 : 1))
        return DSM_EPROTO;
    if (id == AM_FLOOD_END)
        __atomic_store_n(&flood_total, dsm_le32_get(hdr), __ATOMIC_RELEASE);
    else
        __atomic_store_n((uint32_t *)arg, dsm_le32_get(hdr), __ATOMIC_RELEASE);
    if (id == AM_FLOOD_END)
        mt_bump(arg);
    else
        dsm_futex_wake(arg);
    return DSM_OK;
}

static int on_ping(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    if (hl != 4 || len)
        return DSM_EPROTO;
    return dsm_am_send(src, AM_PONG, hdr, 4, NULL, 0);
}

static int on_count(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)src;
    (void)hdr;
    (void)p;
    if (hl != (id == AM_PONG ? 4u : 0u) || len)
        return DSM_EPROTO;
    mt_bump(arg);
    return DSM_OK;
}

static void *pinger(void *arg)
{
    (void)arg;
    for (uint32_t i = 0; i < PINGS; i++) {
        uint8_t b[4];
        dsm_le32_put(b, i);
        MT_CHECK(dsm_am_send(0, AM_PING, b, 4, NULL, 0) == DSM_OK, "ping");
        mt_wait_at_least(&pongs, i + 1, "a pong from rank 0 during the flood");
    }
    MT_CHECK(dsm_am_send(0, AM_DONE, NULL, 0, NULL, 0) == DSM_OK, "done");
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    uint32_t pingers = n > 2 ? (uint32_t)n - 2 : 1;
    pthread_t th;
    MT_CHECK(dsm_am_register(AM_FLOOD, on_flood, NULL) == DSM_OK &&
                 dsm_am_register(AM_FLOOD_ACK, on_value, &flood_acked) == DSM_OK &&
                 dsm_am_register(AM_FLOOD_END, on_value, &flood_end) == DSM_OK &&
                 dsm_am_register(AM_PING, on_ping, NULL) == DSM_OK &&
                 dsm_am_register(AM_PONG, on_count, &pongs) == DSM_OK &&
                 dsm_am_register(AM_DONE, on_count, &done_count) == DSM_OK &&
                 dsm_am_register(AM_STOP, on_count, &stop) == DSM_OK,
             "register");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 1 && n == 2)
        MT_CHECK(pthread_create(&th, NULL, pinger, NULL) == 0, "pinger thread");
    if (me == 1) {
        uint8_t payload[FLOOD_LEN], hdr[4];
        uint32_t sent = 0;
        int64_t end = mt_now_ms() + MT_WAIT_MS;
        while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
            uint32_t acked = __atomic_load_n(&flood_acked, __ATOMIC_ACQUIRE);
            if (sent - acked >= FLOOD_WINDOW) {
                MT_CHECK(mt_now_ms() < end, "the flood was not acknowledged (%u sent, %u acknowledged)", sent, acked);
                dsm_futex_wait(&flood_acked, acked, 10);
                continue;
            }
            mt_fill(payload, sizeof payload, 1, sent, 0);
            dsm_le32_put(hdr, sent);
            MT_CHECK(dsm_am_send(0, AM_FLOOD, hdr, 4, payload, sizeof payload) == DSM_OK, "flood send");
            sent++;
        }
        dsm_le32_put(hdr, sent);
        MT_CHECK(dsm_am_send(0, AM_FLOOD_END, hdr, 4, NULL, 0) == DSM_OK, "flood end");
        printf("rank 1 flooded rank 0 with %u messages of %d bytes while the others' ping-pongs ran\n", sent,
               FLOOD_LEN);
        if (n == 2)
            pthread_join(th, NULL);
    } else if (me >= 2) {
        pinger(NULL);
    } else {
        /* Every other rank's ping-pongs were answered while rank 1 still flooded (it stops only now). */
        mt_wait_at_least(&done_count, pingers, "the other ranks' ping-pongs");
        MT_CHECK(dsm_am_send(1, AM_STOP, NULL, 0, NULL, 0) == DSM_OK, "stop");
        mt_wait_at_least(&flood_end, 1, "the end of the flood");
        uint32_t total = __atomic_load_n(&flood_total, __ATOMIC_ACQUIRE);
        mt_wait_at_least(&flood_rx, total, "the whole flood");
        MT_CHECK(total > 0 && flood_rx == total && flood_bad == 0,
                 "rank 0 counted %u flood messages (%u out of order or damaged), rank 1 sent %u", flood_rx, flood_bad,
                 total);
        printf("rank 0 served %u ping-pongs of %u pingers during a flood of %u messages\n", PINGS * pingers, pingers,
               total);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
