/* SPDX-License-Identifier: MIT */
/*
 * Channels and credits (libdsm/credit.c) with a window of 2 messages per peer: a prefetch of many pages from
 * one home, eight threads per node queueing for one lock (their requests hold every REQ credit while the holder
 * must still release on REL), and frees from other nodes, all at once; nothing may deadlock and the totals are
 * exact. With --flood, rank 1 sends lock requests without credits and the home must refuse it (the job fails,
 * naming rank 1).
 */
#include "config.h"

#include <pthread.h>

#include "tests/multi/mt.h"

#define THREADS 8
#define ITERS 40

static dsm_lock_t *lk;
static uint64_t *counter;
static void **blocks; /* [n * THREADS * ITERS] small blocks, each freed by another node */

static void *worker(void *arg)
{
    int t = (int)(uintptr_t)arg, me = dsm_rank(), n = dsm_size();
    for (int i = 0; i < ITERS; i++) {
        MT_CHECK(dsm_lock(lk) == DSM_OK, "lock");
        *counter += 1;
        MT_CHECK(dsm_unlock(lk) == DSM_OK, "unlock");
        /* Free a block the next node allocated: a FREE request to it. */
        int from = (me + 1) % n;
        dsm_free(blocks[((size_t)from * THREADS + t) * ITERS + i]);
    }
    return NULL;
}

static void *flood_worker(void *arg)
{
    (void)arg;
    dsm_lock(lk); /* never granted: the job must fail first */
    return NULL;
}

int main(int argc, char **argv)
{
    int flood = argc > 1 && !strcmp(argv[1], "--flood");
    dsm_credit_window = 2;
    const char *r = getenv("DSM_RANK");
    if (flood && r && atoi(r) == 1)
        dsm_credit_debug_ignore = 1;
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    if (n < 2) {
        mt_finalize();
        return 77;
    }
    /* Many pages homed on node 0, fetched by everybody at once. */
    size_t pages = 64;
    uint8_t *far = dsm_alloc_home(pages * 4096, 0);
    MT_CHECK(far != NULL, "alloc");
    if (flood) {
        /* Rank 0 (the lock's home) holds the lock, so every request for it waits at the home: eight threads of
         * rank 1 asking at once put eight requests there, beyond the window of 2, whatever the timing. */
        lk = dsm_lock_create();
        MT_CHECK(lk != NULL, "lock");
        if (me == 0)
            MT_CHECK(dsm_lock(lk) == DSM_OK, "lock");
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        if (me == 1)
            mt_run_threads(THREADS, flood_worker);
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        fprintf(stderr, "rank %d: the flood was not refused\n", me);
        return 3;
    }
    lk = dsm_lock_create();
    counter = dsm_alloc_home(4096, n - 1);
    blocks = dsm_alloc((size_t)n * THREADS * ITERS * sizeof *blocks);
    MT_CHECK(lk && counter && blocks, "alloc");
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < ITERS; i++)
            blocks[((size_t)me * THREADS + t) * ITERS + i] = dsm_malloc(24);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_prefetch(far, pages * 4096, me % 2 ? DSM_WRITE : DSM_READ) == DSM_OK, "prefetch");
    mt_run_threads(THREADS, worker);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t want = (uint64_t)n * THREADS * ITERS;
    MT_CHECK(*counter == want, "counter %llu, want %llu", (unsigned long long)*counter, (unsigned long long)want);
    int64_t end = mt_now_ms() + MT_WAIT_MS;
    while (dsm_malloc_in_use() != 0)
        MT_CHECK(mt_now_ms() < end, "frees from other nodes did not all arrive");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        printf("credits ok: window 2, %d nodes x %d threads, %llu lock rounds, %zu pages prefetched by all\n", n,
               THREADS, (unsigned long long)want, pages);
    MT_CHECK(dsm_lock_destroy(lk) == DSM_OK, "destroy");
    mt_finalize();
    return 0;
}
