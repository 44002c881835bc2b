/* SPDX-License-Identifier: MIT */
/*
 * hb_traffic MODE SECONDS - every message is a sign of life, not only heartbeats (DESIGN.md 4.7; run by
 * tests/multi/failstop.sh with a short DSM_TIMEOUT). Rank 1 stops sending heartbeats (a test hook), as if every
 * one of them were stuck behind a flood of data.
 *   busy   every rank runs barriers for SECONDS (longer than DSM_TIMEOUT): rank 1's barrier messages keep it
 *          alive for the others, and the job passes.
 *   idle   the others wait in a barrier that rank 1 joins only after SECONDS of silence: rank 1 is lost (the
 *          negative control: the hook works and silence is still found).
 */
#include "config.h"

#include "libdsm/heartbeat.h"
#include "tests/multi/mt.h"

int main(int argc, char **argv)
{
    MT_CHECK(argc > 2, "usage: hb_traffic busy|idle SECONDS");
    int busy = strcmp(argv[1], "busy") == 0, secs = atoi(argv[2]);
    MT_CHECK(busy || strcmp(argv[1], "idle") == 0, "mode %s", argv[1]);
    mt_init(&argc, &argv);
    int me = dsm_rank();
    MT_CHECK(dsm_size() >= 2, "needs 2 nodes");
    if (me == 1)
        dsm_hb_debug_mute = 1;
    int64_t end = mt_now_ms() + (int64_t)secs * 1000;
    unsigned rounds = 0;
    if (busy) {
        /* Rank 0's clock alone decides when to stop, so every rank runs the same number of barriers (each rank
         * reading its own clock let one finish while the other was still in a barrier). It names the last round:
         * a rank still reading after the previous barrier sees a later round than its own and goes on. */
        volatile uint32_t *stop = dsm_alloc_home(sizeof(*stop), 0);
        MT_CHECK(stop != NULL, "dsm_alloc_home");
        for (;;) {
            if (me == 0 && mt_now_ms() >= end)
                *stop = rounds + 1;
            MT_CHECK(dsm_barrier() == DSM_OK, "barrier %u", rounds);
            if (*stop == rounds + 1)
                break;
            rounds++;
            usleep(2000);
        }
    } else if (me == 1) {
        while (mt_now_ms() < end)
            usleep(10000);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "last barrier");
    if (me == 0)
        printf("hb_traffic %s: %u barriers in %d s with rank 1's heartbeats muted\n", argv[1], rounds, secs);
    dsm_hb_debug_mute = 0;
    mt_finalize();
    return 0;
}
