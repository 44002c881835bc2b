/* SPDX-License-Identifier: MIT */
/* dsm_malloc/dsm_free: blocks of many sizes from every node, read by every other node; frees from another node
 * (the owner reuses the memory, cleared); four threads allocating at once get disjoint blocks homed on their
 * node; bad frees and sizes are reported without harm. */
#include "config.h"

#include <pthread.h>

#include "libdsm/region.h"
#include "tests/multi/mt.h"

#define K 40

static size_t size_of(int i)
{
    static const size_t s[] = {1, 16, 24, 100, 512, 2048, 2049, 4096, 10000, 65536};
    return s[i % 10];
}

static int homed_here(const void *p)
{
    size_t pg;
    return dsm_region_page(p, &pg) && dsm_page_home(pg) == dsm_rank();
}

static void *thread_allocs(void *arg)
{
    uint8_t **out = arg;
    for (int i = 0; i < 64; i++) {
        out[i] = dsm_malloc(48);
        MT_CHECK(out[i] && homed_here(out[i]), "thread allocation");
        memset(out[i], 0x5a, 48);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    /* A small range, so one node's arena (half of it over the nodes) can be filled in the test: 4 MiB of
     * arena per node. Every rank computes the same size from the launcher's job size variable. */
    const char *sz = getenv("DSM_SIZE");
    if (!sz)
        sz = getenv("OMPI_COMM_WORLD_SIZE");
    if (!sz)
        sz = getenv("SLURM_NTASKS");
    long nodes = sz ? atol(sz) : 1;
    char heap[32];
    snprintf(heap, sizeof heap, "%ldM", 2 * 4 * (nodes > 0 ? nodes : 1));
    setenv("DSM_HEAP_SIZE", heap, 1);
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    uint8_t *(*table)[K] = dsm_alloc((size_t)n * sizeof *table);
    MT_CHECK(table != NULL, "alloc");
    uint8_t *mine[K];
    for (int i = 0; i < K; i++) {
        mine[i] = dsm_malloc(size_of(i));
        MT_CHECK(mine[i] != NULL, "dsm_malloc(%zu): %s", size_of(i), dsm_strerror(dsm_last_error()));
        MT_CHECK(homed_here(mine[i]), "block homed on the allocating node");
        for (size_t b = 0; b < size_of(i); b++)
            MT_CHECK(mine[i][b] == 0, "fresh block not zero");
        mt_fill(mine[i], size_of(i), (uint32_t)me, (uint32_t)i, 1);
        table[me][i] = mine[i];
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (int r = 0; r < n; r++)
        for (int i = 0; i < K; i++)
            MT_CHECK(mt_match(table[r][i], size_of(i), (uint32_t)r, (uint32_t)i, 1),
                     "block %d of node %d has other contents", i, r);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    /* Free the right neighbour's blocks (a message to it when n > 1). */
    int right = (me + 1) % n;
    for (int i = 0; i < K; i++)
        dsm_free(table[right][i]);
    /* Frees from another node are messages: wait until this node's arena is empty again. */
    int64_t end = mt_now_ms() + MT_WAIT_MS;
    while (dsm_malloc_in_use() != 0)
        MT_CHECK(mt_now_ms() < end, "remote frees did not arrive: %llu bytes still in use",
                 (unsigned long long)dsm_malloc_in_use());
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    int reused = 0;
    for (int i = 0; i < K; i++) {
        uint8_t *p = dsm_malloc(size_of(i));
        MT_CHECK(p && homed_here(p), "allocation after free");
        for (size_t b = 0; b < size_of(i); b++)
            MT_CHECK(p[b] == 0, "reused block %d not cleared at byte %zu", i, b);
        for (int j = 0; j < K; j++)
            reused += p == mine[j];
        mine[i] = p;
    }
    MT_CHECK(reused > 0, "freed blocks are reused");

    /* Concurrent allocation: disjoint blocks. */
    uint8_t *th[4][64];
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_allocs, th[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int a = 0; a < 4 * 64; a++)
        for (int b = a + 1; b < 4 * 64; b++) {
            uint8_t *x = th[a / 64][a % 64], *y = th[b / 64][b % 64];
            MT_CHECK(x + 48 <= y || y + 48 <= x, "two live blocks overlap");
        }
    for (int a = 0; a < 4 * 64; a++)
        dsm_free(th[a / 64][a % 64]);

    /* Fill the arena with small blocks, free them all: a large block must fit again (empty slab pages go back). */
    size_t arena = dsm_region.arena_pages * 4096, nb = 0, cap = arena / 2048 + 16;
    void **small = malloc(cap * sizeof *small);
    while (nb < cap && (small[nb] = dsm_malloc(2048)))
        nb++;
    MT_CHECK(nb > 0 && nb < cap && dsm_last_error() == DSM_ENOMEM, "the arena fills up (%zu blocks)", nb);
    for (size_t i = 0; i < nb; i++)
        dsm_free(small[i]);
    free(small);
    void *large = dsm_malloc(arena / 2);
    MT_CHECK(large != NULL, "after freeing every small block, half the arena (%zu bytes) is free again", arena / 2);
    dsm_free(large);

    /* Errors. */
    MT_CHECK(dsm_malloc(0) == NULL && dsm_last_error() == DSM_EINVAL, "dsm_malloc(0)");
    MT_CHECK(dsm_malloc(1ull << 46) == NULL && dsm_last_error() == DSM_ENOMEM, "dsm_malloc beyond the arena");
    int x;
    dsm_free(&x);
    MT_CHECK(dsm_last_error() == DSM_EINVAL, "dsm_free of a stack address is refused");
    dsm_free(table);
    MT_CHECK(dsm_last_error() == DSM_EINVAL, "dsm_free of dsm_alloc memory is refused");
    uint8_t *once = dsm_malloc(32);
    dsm_free(once);
    dsm_free(once);
    MT_CHECK(dsm_last_error() == DSM_EINVAL, "double free is refused");
    dsm_free(NULL);
    for (int i = 0; i < K; i++)
        dsm_free(mine[i]);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        printf("dsm_malloc ok: %d nodes, %d blocks each from 1 B to 64 KiB, remote frees, %d reused\n", n, K, reused);
    mt_finalize();
    return 0;
}
