/* SPDX-License-Identifier: MIT */
/*
 * follow - a worker that follows its data (the Popcorn pattern): a vector is split into one block per node, each
 * block homed on its node (dsm_alloc_home), and one dsm thread walks them, migrating to each block's node before
 * it works on it, so every access is local instead of a page fetched across the network. Rank 0 checks the
 * result against a serial computation; the run fails unless they are identical.
 *   dsmrun -n 4 examples/follow [elements per node]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <dsm.h>

struct job {
    double *block[64]; /* block[k] lives on node k */
    size_t per;
    double sum;
    uint64_t fetched; /* pages the visited nodes received while the worker worked there (dsm_stats) */
};

static double f(size_t i)
{
    return (double)(i % 1000) * 0.5 + 1.0 / (double)(i + 1);
}

static uint64_t node_pages_in(void)
{
    dsm_stats_t s = {.size = sizeof s};
    return dsm_stats(&s) == DSM_OK ? s.pages_received : 0;
}

static void *worker(void *arg)
{
    struct job *j = arg;
    double sum = 0;
    for (int k = 0; k < dsm_size(); k++) {
        int rc = dsm_migrate(k); /* go where block k lives */
        if (rc != DSM_OK) {
            fprintf(stderr, "follow: dsm_migrate(%d): %s\n", k, dsm_strerror(rc));
            return (void *)1;
        }
        uint64_t before = node_pages_in();
        double *b = j->block[k];
        for (size_t i = 0; i < j->per; i++) {
            b[i] = f((size_t)k * j->per + i);
            sum += b[i];
        }
        j->fetched += node_pages_in() - before;
    }
    j->sum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int rc = dsm_init(&argc, &argv);
    if (rc != DSM_OK) {
        fprintf(stderr, "follow: dsm_init: %s\n", dsm_strerror(rc));
        return 1;
    }
    size_t per = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    int n = dsm_size();
    if (per < 1 || n > 64) {
        fprintf(stderr, "usage: follow [elements per node >= 1], at most 64 nodes\n");
        return 2;
    }
    struct job *j = dsm_alloc(sizeof *j);
    if (!j)
        return 1;
    for (int k = 0; k < n; k++) {
        double *b = dsm_alloc_home(per * sizeof(double), k);
        if (!b)
            return 1;
        if (dsm_rank() == 0)
            j->block[k] = b;
    }
    int status = 0;
    if (dsm_rank() == 0) {
        j->per = per;
        dsm_thread_t t;
        void *ret = (void *)1;
        if ((rc = dsm_thread_create(&t, 0, worker, j)) != DSM_OK || (rc = dsm_thread_join(t, &ret)) != DSM_OK) {
            fprintf(stderr, "follow: %s\n", dsm_strerror(rc));
            status = 1;
        }
        double want = 0;
        for (size_t i = 0; i < per * (size_t)n; i++)
            want += f(i);
        if (ret || j->sum != want) {
            fprintf(stderr, "follow: sum %.17g, serial %.17g\n", j->sum, want);
            status = 1;
        } else {
            printf("follow: %zu elements on %d nodes, sum %.17g as the serial sum; %llu pages fetched from other "
                   "nodes for %zu pages of data\n",
                   per * (size_t)n, n, j->sum, (unsigned long long)j->fetched, per * (size_t)n * 8 / 4096);
        }
    }
    if (dsm_barrier() != DSM_OK || dsm_finalize() != DSM_OK)
        status = 1;
    return status;
}
