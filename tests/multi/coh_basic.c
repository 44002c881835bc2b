/* SPDX-License-Identifier: MIT */
/* Shared memory with plain loads and stores: every node writes its block and reads all others; nodes update the
 * whole array in turn; two nodes hand one page back and forth by a turn word in it; pages homed on one node;
 * freed memory comes back zero-filled; bad and mismatched allocations fail on every node. */
#include "config.h"

#include <sched.h>
#include <unistd.h>

#include "tests/multi/mt.h"

#define PER_NODE 2048 /* 64-bit words per node: 4 pages */
#define PINGPONG ((uint64_t)mt_iters(10000))

/* Ranks 0 and 1 take turns writing one page homed at home, by a turn word in the page; each turn also checks
 * the other's last write. pause_us between polls (0: sched_yield). */
static void pingpong(int me, int n, int home, uint64_t turns, int pause_us)
{
    volatile uint64_t *pg = dsm_alloc_home(4096, home);
    MT_CHECK(pg != NULL, "dsm_alloc_home: %s", dsm_strerror(dsm_last_error()));
    if (me < 2 && n >= 2) {
        int64_t end = mt_now_ms() + MT_WAIT_MS;
        for (uint64_t i = (uint64_t)me; i < turns; i += 2) {
            /* Polling a page another node is writing pulls it away from the writer at every read; a pause
             * between polls lets the writer finish its turn. */
            while (pg[0] != i) {
                MT_CHECK(mt_now_ms() < end, "ping-pong (home %d) stuck at turn %llu (want %llu)", home,
                         (unsigned long long)pg[0], (unsigned long long)i);
                if (pause_us)
                    usleep((useconds_t)pause_us);
                else
                    sched_yield();
            }
            MT_CHECK(i == 0 || pg[1 + (i - 1) % 500] == i - 1, "turn %llu: the other node's write is missing",
                     (unsigned long long)i);
            pg[1 + i % 500] = i;
            pg[0] = i + 1;
        }
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (n >= 2)
        MT_CHECK(pg[0] == turns, "ping-pong (home %d) ended at %llu", home, (unsigned long long)pg[0]);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_dealloc((void *)pg) == DSM_OK, "dealloc");
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    size_t total = (size_t)n * PER_NODE;

    volatile uint64_t *a = dsm_alloc(total * sizeof *a);
    MT_CHECK(a != NULL, "dsm_alloc: %s", dsm_strerror(dsm_last_error()));
    MT_CHECK(((uintptr_t)a & 4095) == 0, "page aligned");
    for (size_t i = 0; i < total; i++)
        MT_CHECK(a[i] == 0, "fresh memory is zero at %zu", i);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (size_t i = (size_t)me * PER_NODE; i < (size_t)(me + 1) * PER_NODE; i++)
        a[i] = i * 7 + 1;
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (size_t i = 0; i < total; i++)
        MT_CHECK(a[i] == i * 7 + 1, "word %zu is %llu, want %zu", i, (unsigned long long)a[i], i * 7 + 1);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    /* Each node in turn adds its rank + 1 to every word: the others' writes must all be visible. */
    for (int k = 0; k < n; k++) {
        if (k == me)
            for (size_t i = 0; i < total; i++)
                a[i] += (uint64_t)k + 1;
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    }
    uint64_t add = (uint64_t)n * (n + 1) / 2;
    for (size_t i = 0; i < total; i++)
        MT_CHECK(a[i] == i * 7 + 1 + add, "after the turns, word %zu is %llu", i, (unsigned long long)a[i]);

    /* One page, two nodes, taking turns by a word in the page itself. */
    pingpong(me, n, n - 1, (uint64_t)PINGPONG, 20);
    /* The same between rank 0 and the page's home (rank 1), polling without a pause: the home takes its page
     * back (RECALL, INV) right after granting it, so that message can reach rank 0 while the thread whose fault
     * was granted has not run yet. A grant that reached the faulting thread directly (shm reply slots) must still
     * be in place before rank 0 handles what the home sent after it. */
    pingpong(me, n, n > 1 ? 1 : 0, (uint64_t)mt_iters(4000), 0);

    /* Free and allocate again: zero-filled, usable. */
    MT_CHECK(dsm_dealloc((void *)a) == DSM_OK, "dealloc");
    volatile uint64_t *b = dsm_alloc(total * sizeof *b);
    MT_CHECK(b != NULL, "alloc after free");
    for (size_t i = 0; i < total; i++)
        MT_CHECK(b[i] == 0, "reused memory is not zero at %zu: %llu", i, (unsigned long long)b[i]);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    /* Freed memory reused with other homes: no node's old copy may leak into the new allocation. */
    MT_CHECK(dsm_dealloc((void *)b) == DSM_OK, "dealloc");
    volatile uint64_t *c1 = dsm_alloc(total * sizeof *c1);
    MT_CHECK(c1 != NULL, "alloc");
    for (size_t i = (size_t)me * PER_NODE; i < (size_t)(me + 1) * PER_NODE; i++)
        c1[i] = 0xdead0000u + i;
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_dealloc((void *)c1) == DSM_OK, "dealloc");
    b = dsm_alloc_home(total * sizeof *b, n - 1);
    MT_CHECK(b != NULL, "alloc_home over the freed range");
    for (size_t i = 0; i < total; i++)
        MT_CHECK(b[i] == 0, "memory reused under another home holds old data at word %zu: %llx", i,
                 (unsigned long long)b[i]);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");

    /* Errors, on every node alike. */
    MT_CHECK(dsm_alloc(0) == NULL && dsm_last_error() == DSM_EINVAL, "dsm_alloc(0)");
    MT_CHECK(dsm_alloc(1ull << 50) == NULL && dsm_last_error() == DSM_ENOMEM, "dsm_alloc beyond the range");
    MT_CHECK(dsm_alloc_home(4096, n) == NULL && dsm_last_error() == DSM_EINVAL, "home out of range");
    MT_CHECK(dsm_dealloc((void *)0x1000) == DSM_EINVAL, "dealloc of a foreign pointer");
    int x;
    MT_CHECK(dsm_dealloc(&x) == DSM_EINVAL, "dealloc of a stack pointer");
    void *m = dsm_alloc(me == 0 ? 8192 : 4096);
    if (n > 1)
        MT_CHECK(m == NULL && dsm_last_error() == DSM_EMISMATCH, "mismatched sizes give DSM_EMISMATCH everywhere");
    else
        MT_CHECK(m != NULL, "a single node cannot mismatch");
    /* Counters: remote reads happened above, so faults and page transfers were counted. */
    dsm_stats_t st = {.size = sizeof st};
    MT_CHECK(dsm_stats(&st) == DSM_OK, "dsm_stats");
    if (n > 1)
        MT_CHECK(st.read_faults > 0 && st.pages_received > 0 && st.messages_sent > 0 && st.bytes_received > 0,
                 "counters after remote reads: %llu faults, %llu pages in", (unsigned long long)st.read_faults,
                 (unsigned long long)st.pages_received);
    struct {
        size_t size;
        uint64_t read_faults, canary;
    } older = {.size = sizeof(size_t) + sizeof(uint64_t), .canary = 0xfeedULL};
    MT_CHECK(dsm_stats((dsm_stats_t *)&older) == DSM_OK && older.read_faults == st.read_faults &&
                 older.canary == 0xfeedULL, "a smaller struct gets only the fields it has room for");
    dsm_stats_t tiny = {.size = 1};
    MT_CHECK(dsm_stats(&tiny) == DSM_EINVAL && dsm_stats(NULL) == DSM_EINVAL, "bad dsm_stats arguments");
    MT_CHECK(dsm_dealloc((void *)b) == DSM_OK, "dealloc");
    if (me == 0)
        printf("coherence ok: %d nodes, %zu words, %llu page hand-offs\n", n, total, (unsigned long long)PINGPONG);
    mt_finalize();
    return 0;
}
