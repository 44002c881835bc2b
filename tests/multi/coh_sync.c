/* SPDX-License-Identifier: MIT */
/* Synchronization over shared memory, four threads per node: a counter incremented under dsm_lock with plain
 * loads and stores, dsm_fetch_add on ordinary memory, and on dsm_alloc_atomic memory; exact totals read back
 * with plain loads and dsm_atomic_load. Then trylock against a held lock, unlock errors, dsm_cas,
 * dsm_lock_create, dsm_get/dsm_put across homes, and read(2) into shared memory after dsm_prefetch. */
#include "config.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "tests/multi/mt.h"

#define THREADS 4
/* Per thread; fewer with many nodes, so 64 and 128 nodes on two cores stay a small workload. */
#define ITERS (dsm_size() <= 8 ? 150 : 1200 / dsm_size() + 2)

struct shared {
    dsm_lock_t lock;
    dsm_lock_t lock2;
    uint64_t under_lock;
    uint64_t pad[64];
    uint64_t fadd; /* another cache line, same page */
};

static struct shared *sh;
static uint64_t *atom;

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < ITERS; i++) {
        MT_CHECK(dsm_lock(&sh->lock) == DSM_OK, "lock");
        uint64_t v = sh->under_lock; /* a plain read-modify-write, safe only under the lock */
        sh->under_lock = v + 1;
        MT_CHECK(dsm_unlock(&sh->lock) == DSM_OK, "unlock");
        dsm_fetch_add(&sh->fadd, 1);
        dsm_fetch_add(&atom[1], 2);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    sh = dsm_alloc_home(sizeof *sh, n - 1);
    atom = dsm_alloc_atomic(4096);
    MT_CHECK(sh && atom, "allocations: %s", dsm_strerror(dsm_last_error()));
    if (me == 0)
        MT_CHECK(dsm_lock_init(&sh->lock) == DSM_OK, "lock init");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    mt_run_threads(THREADS, worker);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t want = (uint64_t)n * THREADS * ITERS;
    MT_CHECK(sh->under_lock == want, "counter under the lock: %llu, want %llu", (unsigned long long)sh->under_lock,
             (unsigned long long)want);
    MT_CHECK(sh->fadd == want, "fetch-add on ordinary memory: %llu, want %llu", (unsigned long long)sh->fadd,
             (unsigned long long)want);
    MT_CHECK(dsm_atomic_load(&atom[1]) == 2 * want, "fetch-add on atomic memory: %llu, want %llu",
             (unsigned long long)dsm_atomic_load(&atom[1]), (unsigned long long)(2 * want));
    MT_CHECK(dsm_atomic_load(&atom[0]) == 0, "untouched atomic word is zero");

    /* Compare-swap: every node tries to claim the same words; exactly one wins each. */
    uint64_t wins = 0;
    for (int k = 0; k < 16; k++)
        wins += dsm_cas(&atom[8 + k], 0, (uint64_t)me + 1) == 0;
    uint64_t *total = dsm_alloc(4096);
    MT_CHECK(total != NULL, "alloc");
    dsm_fetch_add(total, wins);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(*total == 16, "compare-swap winners: %llu, want 16", (unsigned long long)*total);
    for (int k = 0; k < 16; k++) {
        uint64_t v = dsm_atomic_load(&atom[8 + k]);
        MT_CHECK(v >= 1 && v <= (uint64_t)n, "claimed word %d holds %llu", k, (unsigned long long)v);
    }
    dsm_atomic_store(&atom[2], 77);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_atomic_load(&atom[2]) == 77, "atomic store seen everywhere");

    /* Trylock against a lock another node holds; unlock errors. */
    if (me == 0)
        MT_CHECK(dsm_lock(&sh->lock) == DSM_OK, "lock");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me != 0)
        MT_CHECK(dsm_trylock(&sh->lock) == DSM_EBUSY, "trylock of a held lock is DSM_EBUSY");
    if (me != 0 || n == 1)
        MT_CHECK(n == 1 || dsm_unlock(&sh->lock) == DSM_EINVAL, "unlock of a lock held elsewhere is DSM_EINVAL");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        MT_CHECK(dsm_unlock(&sh->lock) == DSM_OK, "unlock");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_trylock(&sh->lock) == DSM_OK || n > 1, "trylock of a free lock");
    dsm_lock_t priv;
    MT_CHECK(dsm_lock(&priv) == DSM_EINVAL, "a lock outside shared memory is DSM_EINVAL");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    /* A lock destroyed while held (a usage error) and initialized again starts free: the home forgot it. */
    if (me == 0) { /* the lock's home is node n - 1: a remote reset when n > 1 */
        MT_CHECK(dsm_lock_init(&sh->lock2) == DSM_OK && dsm_lock(&sh->lock2) == DSM_OK, "lock");
        MT_CHECK(dsm_lock_destroy(&sh->lock2) == DSM_OK, "destroy while held");
        MT_CHECK(dsm_lock_init(&sh->lock2) == DSM_OK, "init again");
        MT_CHECK(dsm_trylock(&sh->lock2) == DSM_OK, "a re-initialized lock is free");
        MT_CHECK(dsm_unlock(&sh->lock2) == DSM_OK, "unlock");
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    dsm_lock_t *cl = dsm_lock_create();
    MT_CHECK(cl != NULL, "dsm_lock_create");
    MT_CHECK(dsm_lock(cl) == DSM_OK && dsm_unlock(cl) == DSM_OK, "created lock works");
    MT_CHECK(dsm_lock_destroy(cl) == DSM_OK, "collective destroy");

    /* Bulk copies across homes, and a system call into prefetched shared memory. */
    size_t len = (size_t)n * 3 * 4096 + 100;
    uint8_t *big = dsm_alloc(len), *mine = malloc(len), *back = malloc(len);
    MT_CHECK(big && mine && back, "alloc");
    if (me == 0) {
        mt_fill(mine, len, 1, 2, 3);
        MT_CHECK(dsm_put(big, mine, len) == DSM_OK, "dsm_put");
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_get(back, big, len) == DSM_OK, "dsm_get");
    MT_CHECK(mt_match(back, len, 1, 2, 3), "dsm_get returned other data than dsm_put wrote");
    MT_CHECK(dsm_get(back, mine, 10) == DSM_EINVAL, "dsm_get from private memory is DSM_EINVAL");
    MT_CHECK(dsm_prefetch(big, len + 4096 * 64, DSM_READ) == DSM_EINVAL, "prefetch past the allocation");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == n - 1) {
        char path[] = "/tmp/dsm-coh-sync-XXXXXX";
        int fd = mkstemp(path);
        MT_CHECK(fd >= 0, "mkstemp");
        mt_fill(mine, len, 9, 9, 9);
        MT_CHECK(write(fd, mine, len) == (ssize_t)len, "write");
        lseek(fd, 0, SEEK_SET);
        MT_CHECK(dsm_prefetch(big, len, DSM_WRITE) == DSM_OK, "prefetch for writing");
        MT_CHECK(read(fd, big, len) == (ssize_t)len, "read(2) into prefetched shared memory");
        close(fd);
        unlink(path);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(mt_match(big, len, 9, 9, 9), "data read(2) into shared memory on node %d", n - 1);

    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        printf("sync ok: %d nodes x %d threads, %llu increments each way\n", n, THREADS, (unsigned long long)want);
    free(mine);
    free(back);
    mt_finalize();
    return 0;
}
