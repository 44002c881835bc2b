/* SPDX-License-Identifier: MIT */
/*
 * mig_basic - dsm threads and migration (DESIGN.md 4.6), built with -fstack-protector-strong so every frame with
 * an array checks its canary when it returns, possibly on another node than where it was entered.
 *   - hops A->B->C->A with a checksummed stack array, a pointer to a local and 100 recursive frames below
 *   - a loop of 1000 migrations between two nodes
 *   - the rounding mode (x87 and SSE) and the signal mask survive a migration
 *   - errno written after a migration, in the same -O2 function, is the new carrier's
 *   - setjmp on one node, longjmp on another
 *   - remote spawn on every node, a thread spawning and joining another, a join from another node than the
 *     creator, dsm_thread_exit from depth, the return values
 */
#include "config.h"

#include <errno.h>
#include <fenv.h>
#include <setjmp.h>
#include <signal.h>

#include "mt.h"

static int nodes;

static uint32_t sum_of(const uint32_t *a, size_t n)
{
    uint32_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 31 + a[i];
    return s;
}

static void go(int node)
{
    int rc = dsm_migrate(node);
    MT_CHECK(rc == DSM_OK, "dsm_migrate(%d): %s", node, dsm_strerror(rc));
    MT_CHECK(dsm_current_node() == node, "after dsm_migrate(%d) the thread runs on %d", node, dsm_current_node());
}

/* 100 frames, each with its own array; the deepest one does the hops. */
static uint32_t recurse(int depth, const int *path, int hops)
{
    uint32_t local[8];
    for (int i = 0; i < 8; i++)
        local[i] = (uint32_t)(depth * 8 + i) * 2654435761u;
    uint32_t below = 0;
    if (depth == 0) {
        for (int i = 0; i < hops; i++)
            go(path[i]);
    } else {
        below = recurse(depth - 1, path, hops);
    }
    for (int i = 0; i < 8; i++)
        MT_CHECK(local[i] == (uint32_t)(depth * 8 + i) * 2654435761u, "frame %d word %d changed", depth, i);
    return below * 7 + local[3];
}

static void *t_hops(void *arg)
{
    (void)arg;
    int path[3] = {1 % nodes, 2 % nodes, 0};
    uint32_t buf[2048];
    for (int i = 0; i < 2048; i++)
        buf[i] = (uint32_t)i * 40503u ^ 0x5a5a5a5au;
    uint32_t want = sum_of(buf, 2048);
    uint32_t *p = &buf[1000];
    volatile uint32_t **pp = (volatile uint32_t **)&p;
    for (int i = 0; i < 3; i++) {
        go(path[i]);
        MT_CHECK(sum_of(buf, 2048) == want, "stack array checksum after hop %d", i);
        MT_CHECK(*pp == &buf[1000] && **pp == buf[1000], "pointer to a stack variable after hop %d", i);
        **pp += 1;
        buf[1000] -= 1;
    }
    uint32_t r1 = recurse(100, path, 3);
    uint32_t r2 = recurse(100, path, 0);
    MT_CHECK(r1 == r2, "100 frames across three hops: %u, without hops %u", r1, r2);
    return (void *)(uintptr_t)(want ^ 0x1234);
}

static void *t_loop(void *arg)
{
    int n = (int)(intptr_t)arg, other = 1 % nodes;
    volatile int count = 0;
    for (int i = 0; i < n; i++) {
        go(i % 2 ? 0 : other);
        count++;
    }
    MT_CHECK(count == n, "loop count %d of %d", count, n);
    return (void *)(intptr_t)count;
}

static uint32_t mxcsr_get(void)
{
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void *t_fpu(void *arg)
{
    (void)arg;
    volatile double one = 1.0, three = 3.0;
    volatile long double lone = 1.0L, lthree = 3.0L;
    MT_CHECK(fesetround(FE_UPWARD) == 0, "fesetround");
    double up = one / three;
    long double lup = lone / lthree;
    uint32_t csr = mxcsr_get();
    go(1 % nodes);
    MT_CHECK(fegetround() == FE_UPWARD, "rounding mode after a migration: %d", fegetround());
    MT_CHECK(mxcsr_get() == csr, "mxcsr %#x after a migration, %#x before", mxcsr_get(), csr);
    MT_CHECK(one / three == up && lone / lthree == lup, "division rounds upward after a migration");
    MT_CHECK(fesetround(FE_DOWNWARD) == 0, "fesetround");
    MT_CHECK(one / three < up, "downward is below upward");
    go(0);
    MT_CHECK(fegetround() == FE_DOWNWARD, "rounding mode after the way back: %d", fegetround());
    fesetround(FE_TONEAREST);

    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    go(1 % nodes);
    pthread_sigmask(SIG_SETMASK, NULL, &s);
    MT_CHECK(sigismember(&s, SIGUSR1) == 1, "SIGUSR1 still blocked after a migration");
    MT_CHECK(sigismember(&s, SIGUSR2) == 0, "SIGUSR2 not blocked");
    go(0);
    return NULL;
}

__attribute__((noinline)) static int errno_now(void)
{
    return errno;
}

/* errno's address may be computed once in this function and kept across the call. */
__attribute__((noinline)) static int errno_after(int to)
{
    errno = 11;
    if (dsm_migrate(to) != DSM_OK)
        return -1;
    errno = 42;
    return errno_now();
}

static void *t_errno(void *arg)
{
    (void)arg;
    int e = errno_after(1 % nodes);
    MT_CHECK(e == 42, "errno written after a migration reads back %d on the new carrier", e);
    e = errno_after(0);
    MT_CHECK(e == 42, "errno written after the way back reads back %d", e);
    return NULL;
}

static void *t_jmp(void *arg)
{
    (void)arg;
    jmp_buf jb;
    volatile int from = -1, rounds = 0;
    int rc = setjmp(jb);
    if (rc == 0) {
        from = dsm_current_node();
        go(1 % nodes);
        rounds++;
        longjmp(jb, 7);
    }
    MT_CHECK(rc == 7 && rounds == 1, "longjmp returned %d after %d rounds", rc, rounds);
    MT_CHECK(from == 0 && dsm_current_node() == 1 % nodes, "setjmp on %d, longjmp on %d", from,
             dsm_current_node());
    return (void *)77;
}

static int deep_exit(int depth, void *ret)
{
    char pad[32];
    memset(pad, depth, sizeof pad);
    void (*volatile leave)(void *) = dsm_thread_exit; /* not known to be noreturn here */
    if (depth == 0) {
        leave(ret);
        return -1;
    }
    return deep_exit(depth - 1, ret) + pad[5];
}

static void *t_where(void *arg)
{
    intptr_t k = (intptr_t)arg;
    if (k >= 100000) { /* spawn on the next node from inside a dsm thread, and join it */
        dsm_thread_t t;
        int rc = dsm_thread_create(&t, (dsm_current_node() + 1) % nodes, t_where, (void *)(k - 100000));
        MT_CHECK(rc == DSM_OK, "nested dsm_thread_create: %s", dsm_strerror(rc));
        void *r;
        MT_CHECK(dsm_thread_join(t, &r) == DSM_OK, "nested join");
        return r;
    }
    if (k % 2)
        MT_CHECK(deep_exit(20, (void *)(dsm_current_node() * 1000 + k)) == 1234, "dsm_thread_exit returned");
    return (void *)(dsm_current_node() * 1000 + k);
}

struct shared {
    dsm_thread_t remote;
};

static void run(void *(*fn)(void *), void *arg, void *want, const char *what)
{
    dsm_thread_t t;
    int rc = dsm_thread_create(&t, 0, fn, arg);
    MT_CHECK(rc == DSM_OK, "dsm_thread_create (%s): %s", what, dsm_strerror(rc));
    void *ret = NULL;
    rc = dsm_thread_join(t, &ret);
    MT_CHECK(rc == DSM_OK, "dsm_thread_join (%s): %s", what, dsm_strerror(rc));
    MT_CHECK(ret == want, "%s returned %p, want %p", what, ret, want);
    MT_CHECK(dsm_thread_join(t, NULL) == DSM_EINVAL, "a second join of the same thread is refused (%s)", what);
}

int main(int argc, char **argv)
{
    mt_aslr_off(argv);
    mt_init(&argc, &argv);
    nodes = dsm_size();
    int me = dsm_rank();
    struct shared *sh = dsm_alloc(sizeof *sh);
    MT_CHECK(sh, "dsm_alloc");
    MT_CHECK(dsm_migrate(0) == DSM_EINVAL, "dsm_migrate outside a dsm thread is refused");
    dsm_thread_t bad;
    MT_CHECK(dsm_thread_create(&bad, nodes, t_where, NULL) == DSM_EINVAL, "node out of range refused");

    if (me == 0) {
        uint32_t buf[2048];
        for (int i = 0; i < 2048; i++)
            buf[i] = (uint32_t)i * 40503u ^ 0x5a5a5a5au;
        run(t_hops, NULL, (void *)(uintptr_t)(sum_of(buf, 2048) ^ 0x1234), "hops");
        int n = mt_iters(1000);
        run(t_loop, (void *)(intptr_t)n, (void *)(intptr_t)n, "1000 migrations");
        run(t_fpu, NULL, NULL, "rounding mode and signal mask");
        run(t_errno, NULL, NULL, "errno");
        run(t_jmp, NULL, (void *)77, "setjmp/longjmp");
        dsm_thread_t t[8];
        for (int i = 0; i < 8; i++)
            MT_CHECK(dsm_thread_create(&t[i], i % nodes, t_where, (void *)(intptr_t)(i < 6 ? i : 100000 + i)) ==
                         DSM_OK, "remote spawn %d", i);
        for (int i = 0; i < 8; i++) {
            void *r;
            MT_CHECK(dsm_thread_join(t[i], &r) == DSM_OK, "join %d", i);
            intptr_t want = i < 6 ? (i % nodes) * 1000 + i : ((i % nodes + 1) % nodes) * 1000 + i;
            MT_CHECK((intptr_t)r == want, "thread %d returned %ld, want %ld", i, (long)(intptr_t)r, (long)want);
        }
        MT_CHECK(dsm_thread_create(&sh->remote, nodes - 1, t_where, (void *)4) == DSM_OK, "spawn to join remotely");
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == nodes - 1) { /* join a thread created by node 0 */
        void *r;
        int rc = dsm_thread_join(sh->remote, &r);
        MT_CHECK(rc == DSM_OK, "join from node %d of a thread node 0 created: %s", me, dsm_strerror(rc));
        MT_CHECK((intptr_t)r == (nodes - 1) * 1000 + 4, "remote join returned %ld", (long)(intptr_t)r);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0) {
        void *r;
        MT_CHECK(dsm_thread_join(sh->remote, &r) == DSM_EINVAL, "the creator cannot join a joined thread");
        dsm_stats_t st = {.size = sizeof st};
        MT_CHECK(dsm_stats(&st) == DSM_OK && (nodes == 1 || st.migrations > 0), "migrations counted: %llu",
                 (unsigned long long)st.migrations);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
