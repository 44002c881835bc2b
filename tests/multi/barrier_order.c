/* SPDX-License-Identifier: MIT */
/* No node leaves a barrier before every node entered it: before each barrier every node adds 1 to that
 * barrier's counter at rank 0 (the add is complete when the call returns), with one node late on purpose;
 * after it, every node must read the full count. */
#include "config.h"

#include <unistd.h>

#include "tests/multi/mt.h"

#define ITERS 60

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    int fd;
    uint64_t *ctr = mt_shared_alloc(4096, &fd);
    dsm_mreg_t *m;
    MT_CHECK(dsm_mreg_create(ctr, ITERS * 8, fd, 0, &m) == DSM_OK, "registration");
    srand((unsigned)(me * 7919 + 1));
    for (int it = 0; it < ITERS; it++) {
        /* The late node changes every time; the others wait a little at random. */
        if (it % n == me)
            usleep(3000 + (unsigned)(rand() % 3000));
        else if (rand() % 4 == 0)
            usleep((unsigned)(rand() % 500));
        if (me == 0)
            __atomic_add_fetch(&ctr[it], 1, __ATOMIC_SEQ_CST);
        else
            MT_CHECK(dsm_rma_atomic(0, DSM_TP_ATOMIC_FADD, m, (uint64_t)it * 8, 1, 0, NULL) == DSM_OK, "add");
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier %d", it);
        uint64_t v;
        if (me == 0)
            v = __atomic_load_n(&ctr[it], __ATOMIC_SEQ_CST);
        else
            MT_CHECK(dsm_rma_get(0, &v, 8, m, (uint64_t)it * 8) == DSM_OK, "get");
        MT_CHECK(v == (uint64_t)n, "left barrier %d when only %llu of %d nodes had entered", it,
                 (unsigned long long)v, n);
    }
    MT_CHECK(dsm_mreg_destroy(m) == DSM_OK, "deregister");
    if (me == 0)
        printf("barrier order ok: %d barriers of %d nodes\n", ITERS, n);
    mt_finalize();
    return 0;
}
