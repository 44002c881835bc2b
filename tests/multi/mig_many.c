/* SPDX-License-Identifier: MIT */
/*
 * mig_many - 64 dsm threads spread over the nodes, all migrating at once: each starts on node i % n and visits
 * every node in turn for several rounds, keeping a stack array and a running sum; every visit is recorded in
 * shared memory from the node the thread is on. Joined from node 0, each result must equal the value computed
 * here without migrating, and every thread must have been seen on every node the expected number of times.
 */
#include "config.h"

#include "mt.h"

#define NT 64
#define ROUNDS 6

static uint64_t *visits; /* [thread * nodes + node]: only the thread itself writes its row */
static int nodes;

static uint64_t step(uint64_t acc, const uint64_t *a, int i, int r)
{
    for (int k = 0; k < 64; k++)
        acc = acc * 1099511628211ull ^ (a[k] + (uint64_t)i * 977 + (uint64_t)r);
    return acc;
}

static uint64_t expected(int i)
{
    uint64_t a[64], acc = (uint64_t)i;
    for (int k = 0; k < 64; k++)
        a[k] = (uint64_t)k * 2654435761u + (uint64_t)i;
    for (int r = 0; r < ROUNDS * nodes; r++)
        acc = step(acc, a, i, r);
    return acc;
}

static void *worker(void *arg)
{
    int i = (int)(intptr_t)arg;
    uint64_t a[64], acc = (uint64_t)i;
    for (int k = 0; k < 64; k++)
        a[k] = (uint64_t)k * 2654435761u + (uint64_t)i;
    for (int r = 0; r < ROUNDS * nodes; r++) {
        int to = (i + r) % nodes;
        int rc = dsm_migrate(to);
        MT_CHECK(rc == DSM_OK && dsm_current_node() == to, "thread %d round %d: dsm_migrate(%d): %s", i, r, to,
                 dsm_strerror(rc));
        visits[i * nodes + dsm_current_node()]++;
        acc = step(acc, a, i, r);
    }
    return (void *)(uintptr_t)acc;
}

int main(int argc, char **argv)
{
    mt_aslr_off(argv);
    mt_init(&argc, &argv);
    nodes = dsm_size();
    visits = dsm_alloc(NT * (size_t)nodes * sizeof *visits);
    MT_CHECK(visits, "dsm_alloc");
    /* visits is a private global: a thread reads the copy of the node it runs on, so every node must have
     * stored it before the first thread arrives. */
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (dsm_rank() == 0) {
        dsm_thread_t t[NT];
        for (int i = 0; i < NT; i++) {
            int rc = dsm_thread_create(&t[i], i % nodes, worker, (void *)(intptr_t)i);
            MT_CHECK(rc == DSM_OK, "dsm_thread_create %d: %s", i, dsm_strerror(rc));
        }
        for (int i = 0; i < NT; i++) {
            void *r;
            int rc = dsm_thread_join(t[i], &r);
            MT_CHECK(rc == DSM_OK, "dsm_thread_join %d: %s", i, dsm_strerror(rc));
            MT_CHECK((uint64_t)(uintptr_t)r == expected(i), "thread %d computed %#llx, want %#llx", i,
                     (unsigned long long)(uintptr_t)r, (unsigned long long)expected(i));
            for (int n = 0; n < nodes; n++)
                MT_CHECK(visits[i * nodes + n] == ROUNDS, "thread %d visited node %d %llu times, want %d", i, n,
                         (unsigned long long)visits[i * nodes + n], ROUNDS);
        }
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
