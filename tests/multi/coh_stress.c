/* SPDX-License-Identifier: MIT */
/*
 * Random stress: two threads per node read and write random words of many pages (homes spread over the
 * nodes). Each word has one writer thread, which only ever increments it, so a reader must never see a word go
 * backwards; at the end every node checks the exact final image, recomputed by replaying every writer's random
 * sequence (no communication needed to know the answer).
 * With --expect-violation the home drops some invalidations (the negative control): the test then passes only
 * if it detects the damage.
 */
#include "config.h"

#include <pthread.h>

#include "libdsm/coh.h"
#include "tests/multi/mt.h"

#define PAGES 48
#define WORDS (PAGES * 512)
#define THREADS 2
/* Per thread; fewer with many nodes (and under DSM_TEST_QUICK, but for the negative control). */
#define OPS (expect_violation ? OPS_FULL : mt_iters(OPS_FULL))
#define OPS_FULL (n <= 8 ? 20000 : 160000 / n)

static volatile uint64_t *mem;
static int me, n, expect_violation;
static long backwards;

/* The writer of word w is thread (w % (n * THREADS)): node (that / THREADS), thread (that % THREADS). */
static int writer_of(size_t w)
{
    return (int)(w % ((size_t)n * THREADS));
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint64_t seed_of(int writer)
{
    return 0x9e3779b97f4a7c15ull * (uint64_t)(writer + 1);
}

static void *worker(void *arg)
{
    int t = (int)(uintptr_t)arg, self = me * THREADS + t;
    uint64_t s = seed_of(self);
    uint64_t *seen = calloc(WORDS, sizeof *seen);
    long back = 0;
    for (int i = 0; i < OPS; i++) {
        uint64_t r = next(&s);
        size_t w = (size_t)(r >> 8) % WORDS;
        if (writer_of(w) == self && (r & 1)) {
            mem[w] = mem[w] + 1; /* only this thread writes w */
        } else {
            uint64_t v = mem[w];
            if (v < seen[w])
                back++;
            seen[w] = v;
        }
    }
    __atomic_add_fetch(&backwards, back, __ATOMIC_RELAXED);
    free(seen);
    return NULL;
}

int main(int argc, char **argv)
{
    expect_violation = argc > 1 && !strcmp(argv[1], "--expect-violation");
    mt_init(&argc, &argv);
    me = dsm_rank();
    n = dsm_size();
    if (expect_violation)
        dsm_dir_debug_drop_inv = 3;
    mem = dsm_alloc(WORDS * sizeof *mem);
    MT_CHECK(mem != NULL, "alloc");
    mt_run_threads(THREADS, worker);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    /* Replay every writer to know the final image. */
    uint64_t *want = calloc(WORDS, sizeof *want);
    for (int wr = 0; wr < n * THREADS; wr++) {
        uint64_t s = seed_of(wr);
        for (int i = 0; i < OPS; i++) {
            uint64_t r = next(&s);
            size_t w = (size_t)(r >> 8) % WORDS;
            if (writer_of(w) == wr && (r & 1))
                want[w]++;
        }
    }
    long wrong = 0;
    for (size_t w = 0; w < WORDS; w++)
        wrong += mem[w] != want[w];
    free(want);
    int bad = wrong > 0 || backwards > 0;
    printf("stress on node %d: %d nodes x %d threads x %d operations on %d pages: %ld words went backwards, %ld "
           "words wrong at the end%s\n", me, n, THREADS, OPS, PAGES, backwards, wrong,
           expect_violation ? " (invalidations dropped on purpose)" : "");
    /* With the bug injected every node must notice damage somewhere; check it collectively. */
    uint64_t *flag = dsm_alloc_atomic(4096);
    MT_CHECK(flag != NULL, "alloc");
    if (bad)
        dsm_fetch_add(flag, 1);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t damaged = dsm_atomic_load(flag);
    if (expect_violation)
        MT_CHECK(damaged > 0, "with invalidations dropped, no node detected damage: the test cannot fail");
    else
        MT_CHECK(!bad, "incoherent memory: %ld words went backwards, %ld words wrong", backwards, wrong);
    mt_finalize();
    return 0;
}
