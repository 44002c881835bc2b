/* SPDX-License-Identifier: MIT */
/* dsm_barrier_t and dsm_cond_t with four threads per node on every node:
 *  - a barrier of all threads, many rounds: after each wait every thread sees every slot of the round written
 *    (no thread passes before the last arrives), and the barrier is reusable round after round;
 *  - a bounded queue of 4 entries under one dsm_lock with "not empty" and "not full" conditions: every node's
 *    producer puts its items, the consumers take exactly as many, and the sum of what was taken is what was put
 *    (a lost signal hangs the queue and fails the test on the wait limit; a doubled item changes the sum);
 *  - a gate opened by the last thread to arrive with dsm_cond_broadcast: every other thread must wake;
 *  - usage errors: count 0, an uninitialized object, private memory, waiting without holding the lock, a lock
 *    used as a barrier. */
#include "config.h"

#include "tests/multi/mt.h"

#define THREADS 4
#define QCAP 4

struct shared {
    dsm_barrier_t bar;
    dsm_lock_t qlock;
    dsm_cond_t not_empty, not_full, gate_cond;
    uint64_t head, tail; /* queue indices, under qlock */
    uint64_t q[QCAP];
    uint64_t taken_sum, taken_count; /* under qlock */
    uint64_t arrived, gate;         /* under qlock */
    uint64_t slot[]; /* [n * THREADS]: the barrier rounds */
};

static struct shared *sh;
static int me, n, rounds, items;

static void *barrier_rounds(void *arg)
{
    int t = (int)(intptr_t)arg, id = me * THREADS + t, all = n * THREADS;
    for (int r = 1; r <= rounds; r++) {
        sh->slot[id] = (uint64_t)r;
        MT_CHECK(dsm_barrier_wait(&sh->bar) == DSM_OK, "barrier wait");
        for (int k = 0; k < all; k++)
            MT_CHECK(sh->slot[k] >= (uint64_t)r, "round %d: slot %d still %llu after the barrier", r, k,
                     (unsigned long long)sh->slot[k]);
        /* Nobody writes round r+1 before everyone has checked round r. */
        MT_CHECK(dsm_barrier_wait(&sh->bar) == DSM_OK, "barrier wait");
    }
    return NULL;
}

/* Thread 0 of each node produces, thread 1 consumes; item values name their producer and index. */
static void *queue_user(void *arg)
{
    int t = (int)(intptr_t)arg;
    if (t > 1)
        return NULL;
    for (int i = 0; i < items; i++) {
        MT_CHECK(dsm_lock(&sh->qlock) == DSM_OK, "lock");
        if (t == 0) {
            while (sh->tail - sh->head == QCAP)
                MT_CHECK(dsm_cond_wait(&sh->not_full, &sh->qlock) == DSM_OK, "wait not full");
            sh->q[sh->tail % QCAP] = (uint64_t)me * 1000000 + (uint64_t)i + 1;
            sh->tail++;
            MT_CHECK(dsm_cond_signal(&sh->not_empty) == DSM_OK, "signal");
        } else {
            while (sh->tail == sh->head)
                MT_CHECK(dsm_cond_wait(&sh->not_empty, &sh->qlock) == DSM_OK, "wait not empty");
            sh->taken_sum += sh->q[sh->head % QCAP];
            sh->taken_count++;
            sh->head++;
            MT_CHECK(dsm_cond_signal(&sh->not_full) == DSM_OK, "signal");
        }
        MT_CHECK(dsm_unlock(&sh->qlock) == DSM_OK, "unlock");
    }
    return NULL;
}

static void *gate_user(void *arg)
{
    (void)arg;
    MT_CHECK(dsm_lock(&sh->qlock) == DSM_OK, "lock");
    if (++sh->arrived == (uint64_t)n * THREADS) {
        sh->gate = 1;
        MT_CHECK(dsm_cond_broadcast(&sh->gate_cond) == DSM_OK, "broadcast");
    }
    while (!sh->gate)
        MT_CHECK(dsm_cond_wait(&sh->gate_cond, &sh->qlock) == DSM_OK, "wait at the gate");
    MT_CHECK(dsm_unlock(&sh->qlock) == DSM_OK, "unlock");
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    alarm((unsigned)(MT_WAIT_MS / 1000) + 60); /* a lost wake-up fails the test instead of hanging it */
    me = dsm_rank();
    n = dsm_size();
    /* Every round and every item passes through one page or one lock of the whole job: beyond 4 nodes, fewer
     * per node (128 nodes on 2 cores make each handoff a context switch). */
    int per = n > 4 ? n : 4;
    rounds = mt_iters(50 * 4 / per > 2 ? 50 * 4 / per : 2);
    items = mt_iters(200 * 4 / per > 4 ? 200 * 4 / per : 4);
    sh = dsm_alloc(sizeof *sh + (size_t)n * THREADS * sizeof(uint64_t));
    MT_CHECK(sh != NULL, "alloc");
    if (me == 0) {
        MT_CHECK(dsm_barrier_init(&sh->bar, (unsigned)(n * THREADS)) == DSM_OK, "barrier init");
        MT_CHECK(dsm_lock_init(&sh->qlock) == DSM_OK, "lock init");
        MT_CHECK(dsm_cond_init(&sh->not_empty) == DSM_OK && dsm_cond_init(&sh->not_full) == DSM_OK &&
                     dsm_cond_init(&sh->gate_cond) == DSM_OK,
                 "cond init");
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    mt_run_threads(THREADS, barrier_rounds);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    mt_run_threads(THREADS, queue_user);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t want = 0;
    for (int p = 0; p < n; p++)
        want += (uint64_t)items * ((uint64_t)p * 1000000) + (uint64_t)items * (items + 1) / 2;
    MT_CHECK(sh->taken_count == (uint64_t)n * items && sh->taken_sum == want && sh->head == sh->tail,
             "queue: took %llu items summing %llu, want %llu summing %llu", (unsigned long long)sh->taken_count,
             (unsigned long long)sh->taken_sum, (unsigned long long)n * items, (unsigned long long)want);

    mt_run_threads(THREADS, gate_user);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(sh->gate == 1 && sh->arrived == (uint64_t)n * THREADS, "gate: %llu arrived",
             (unsigned long long)sh->arrived);

    /* Usage errors, on every node. */
    dsm_barrier_t priv_b;
    dsm_cond_t priv_c;
    MT_CHECK(dsm_barrier_init(&priv_b, 2) == DSM_EINVAL, "barrier in private memory");
    MT_CHECK(dsm_cond_init(&priv_c) == DSM_EINVAL, "cond in private memory");
    struct shared *mine = dsm_malloc(sizeof *mine);
    MT_CHECK(mine != NULL, "dsm_malloc");
    MT_CHECK(dsm_barrier_init(&mine->bar, 0) == DSM_EINVAL, "count 0");
    MT_CHECK(dsm_barrier_wait(&mine->bar) == DSM_EINVAL, "wait at an uninitialized barrier");
    MT_CHECK(dsm_cond_signal(&mine->not_empty) == DSM_EINVAL, "signal an uninitialized cond");
    MT_CHECK(dsm_lock_init(&mine->qlock) == DSM_OK && dsm_cond_init(&mine->not_empty) == DSM_OK, "init");
    MT_CHECK(dsm_cond_wait(&mine->not_empty, &mine->qlock) == DSM_EINVAL, "cond wait without the lock");
    /* A barrier's memory reused as a lock without dsm_lock_init: the home refuses it as a lock. */
    MT_CHECK(dsm_barrier_init(&mine->bar, 1) == DSM_OK, "barrier init");
    MT_CHECK(dsm_barrier_wait(&mine->bar) == DSM_OK, "a barrier of one");
    uint64_t *w = (uint64_t *)&mine->bar;
    w[0] = ((volatile uint64_t *)&mine->qlock)[0]; /* the lock's magic, the home still knows a barrier */
    MT_CHECK(dsm_lock((dsm_lock_t *)(void *)w) == DSM_EINVAL, "a barrier locked as a lock");
    MT_CHECK(dsm_cond_destroy(&mine->not_empty) == DSM_OK && dsm_lock_destroy(&mine->qlock) == DSM_OK, "destroy");
    dsm_free(mine);

    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        printf("%d barrier rounds, %d items per node through the queue, gate of %d threads\n", rounds, items,
               n * THREADS);
    mt_finalize();
    return 0;
}
