/* SPDX-License-Identifier: MIT */
/* The page-fault path never allocates (DESIGN.md 4.2): this program interposes malloc, calloc, realloc and
 * free, counts the calls made while a thread is inside libdsm's fault handler, and drives faults of every kind
 * (read and write misses, upgrades, recalls, invalidations, home-local and remote) from two threads per node.
 * Skipped under AddressSanitizer, which owns malloc. */
#include "config.h"

#include <pthread.h>

#include "libdsm/coh.h"
#include "tests/multi/mt.h"

#if defined(__SANITIZE_ADDRESS__)
int main(void)
{
    printf("skipped: AddressSanitizer owns malloc\n");
    return 77;
}
#else
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static unsigned long in_fault_allocs;

static void note(void)
{
    if (dsm_pg_in_fault())
        __atomic_add_fetch(&in_fault_allocs, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t n)
{
    note();
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    note();
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    note();
    return __libc_realloc(p, n);
}

void free(void *p)
{
    note();
    __libc_free(p);
}

static volatile uint64_t *mem;
static size_t words;
static int worker_iters;

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < worker_iters; i++) {
        size_t w = (size_t)rand_r(&seed) % words;
        if (rand_r(&seed) & 1)
            mem[w] = mem[w] + 1;
        else
            (void)mem[w];
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    /* Every node writes every page and each access contends with every node's: the work grows as the square of
     * the job, so beyond 16 nodes both the pages and each node's random accesses shrink, keeping 128 nodes on 2
     * cores (and a fault costing a context switch) within the test's time. */
    size_t pages = n <= 16 ? (size_t)n * 4 : (size_t)(1024 / n > 8 ? 1024 / n : 8);
    words = pages * 512;
    worker_iters = n <= 16 ? 8000 : 8000 * 16 / n * 16 / n;
    mem = dsm_alloc(words * 8);
    MT_CHECK(mem != NULL, "alloc");
    /* Rounds in which every node writes every page: each round faults every page in on every node. */
    for (int round = 0; round < 10; round++) {
        for (size_t w = (size_t)me; w < words; w += 512)
            mem[w] += 1;
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    }
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, (void *)(me * 2 + i + 1));
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    dsm_stats_t st = {.size = sizeof st};
    dsm_stats(&st);
    MT_CHECK(n == 1 || st.read_faults + st.write_faults + st.upgrades >= 10 * words / 512, "too few faults to mean anything");
    MT_CHECK(in_fault_allocs == 0, "%lu allocator calls inside the fault handler", in_fault_allocs);
    if (me == 0)
        printf("no allocation in %llu faults of node 0\n",
               (unsigned long long)(st.read_faults + st.write_faults + st.upgrades));
    mt_finalize();
    return 0;
}
#endif
