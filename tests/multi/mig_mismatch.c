/* SPDX-License-Identifier: MIT */
/*
 * mig_mismatch - nodes that run different code are refused migration and remote spawn, with everything else
 * working. Before dsm_init, at 2 nodes rank 1 replaces itself with mig_mismatch_b, a second binary built from
 * this file with other code (MIG_VARIANT); at 3 nodes and more, rank 2 instead re-executes itself with address
 * randomization on (same binary, other load addresses). Every node then checks: dsm_migrate from a dsm thread and dsm_thread_create on another node fail with
 * DSM_EMISMATCH; a dsm thread on the own node still runs and joins; shared memory and barriers work.
 */
#include "config.h"

#include <sys/personality.h>

#include "mt.h"

#ifdef MIG_VARIANT
/* Other code, so another build-id and other addresses. */
__attribute__((noinline)) static uint64_t variant_pad(uint64_t x)
{
    for (int i = 0; i < 13; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}
#define ARG_OF(x) ((intptr_t)variant_pad(x) * 0 + (x))
#else
#define ARG_OF(x) (x)
#endif

static void *t_try(void *arg)
{
    int to = (int)(intptr_t)arg;
    int rc = dsm_migrate(to);
    MT_CHECK(rc == DSM_EMISMATCH, "dsm_migrate(%d) with mismatched binaries: %s", to, dsm_strerror(rc));
    MT_CHECK(dsm_current_node() == dsm_rank(), "still on its node");
    return (void *)(intptr_t)(100 + dsm_current_node());
}

static void become(char **argv)
{
    const char *r = getenv("DSM_RANK"), *n = getenv("DSM_SIZE");
    if (!r) /* srun, mpirun */
        r = getenv("PMIX_RANK");
    if (!n)
        n = getenv("SLURM_NTASKS") ? getenv("SLURM_NTASKS") : getenv("OMPI_COMM_WORLD_SIZE");
    if (!r || !n || getenv("MIG_MISMATCH_DONE"))
        return;
    setenv("MIG_MISMATCH_DONE", "1", 1);
    if (atoi(n) == 2 && atoi(r) == 1) {
        size_t n = strlen(argv[0]);
        char *b = malloc(n + 3);
        MT_CHECK(b, "malloc");
        memcpy(b, argv[0], n);
        memcpy(b + n, "_b", 3);
        execv(b, argv);
        MT_CHECK(0, "cannot execute %s", b);
    }
    if (atoi(n) >= 3 && atoi(r) == 2) {
        personality((unsigned long)personality(0xffffffff) & ~(unsigned long)ADDR_NO_RANDOMIZE);
        execv("/proc/self/exe", argv);
        MT_CHECK(0, "cannot re-execute with address randomization on");
    }
}

int main(int argc, char **argv)
{
    if (!getenv("MIG_MISMATCH_DONE"))
        mt_aslr_off(argv); /* the mismatch must come from become() alone */
    become(argv);
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    MT_CHECK(n >= 2, "needs two nodes");
    uint64_t *v = dsm_alloc(64 * sizeof *v);
    MT_CHECK(v, "dsm_alloc");
    v[me] = (uint64_t)ARG_OF(me + 1);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (int p = 0; p < n; p++)
        MT_CHECK(v[p] == (uint64_t)p + 1, "shared word of node %d: %llu", p, (unsigned long long)v[p]);

    dsm_thread_t t;
    int rc = dsm_thread_create(&t, (me + 1) % n, t_try, NULL);
    MT_CHECK(rc == DSM_EMISMATCH, "remote spawn with mismatched binaries: %s", dsm_strerror(rc));
    rc = dsm_thread_create(&t, me, t_try, (void *)(intptr_t)((me + 1) % n));
    MT_CHECK(rc == DSM_OK, "a dsm thread on the own node: %s", dsm_strerror(rc));
    void *ret;
    MT_CHECK(dsm_thread_join(t, &ret) == DSM_OK && (intptr_t)ret == 100 + me, "join: %ld", (long)(intptr_t)ret);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
