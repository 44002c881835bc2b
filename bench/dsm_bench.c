/* SPDX-License-Identifier: MIT */
/*
 * dsm_bench - libdsm's benchmarks and, in the same run, their baselines (DESIGN.md 4.8). Every rank of a dsmrun
 * job runs this program; rank 0 measures and reports (Google Benchmark's JSON through bench/shim.h), the others
 * serve. Names: base/... are the baselines (a local page fault with mprotect, our own raw TCP request/response
 * and shared-memory ping-pong on the same path), tp/... the transport layer (active messages, one-sided put and
 * get, atomics), coh/... the coherence protocol (misses, upgrade, page ping-pong, fault throughput), sync/...
 * barriers and locks, bulk/... dsm_get and dsm_put, app/... the kernels of the Jacobi and matmul examples per
 * iteration with the faults and bytes of rank 0. bench/report.py turns the JSON of several runs into the
 * table of ratios.
 *
 * Options before Google Benchmark's own: --scale=F multiplies every iteration count (make bench-quick uses a
 * small one; the harness test a tiny one). Rank 0's peer is rank 1 (the home of the pages rank 0 misses on);
 * rank 2, where there is one, plays the third node.
 *
 * Waiting: the baselines wait as libdsm does, so a thread wake-up (tens of us here) is on both sides or on neither:
 * they spin under DSM_WAIT=spin and sleep (futex, blocking recv) otherwise. bench/run picks spin only where every
 * rank's application and progress threads have a core each. Every wait is bounded by BENCH_WAIT_S, so a lost
 * message fails the run instead of hanging it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench/shim.h"
#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/region.h"
#include "libdsm/stats.h"

#define PAGE 4096u
#define BENCH_WAIT_S 120.0

static int me, nodes;
static double scale = 1.0;

static void die(const char *what)
{
    fprintf(stderr, "dsm_bench rank %d: %s\n", me, what);
    exit(1);
}

static void check(int rc, const char *what)
{
    if (rc != DSM_OK) {
        fprintf(stderr, "dsm_bench rank %d: %s: %s\n", me, what, dsm_strerror(rc));
        exit(1);
    }
}

/* Wait until *w reaches want (a counter that never wraps here), or fail after BENCH_WAIT_S. In spin mode the
 * loop never sleeps; else it sleeps on the word's futex (shared: between processes), as libdsm's block mode does. */
static int spin_mode;

static void wait_word(uint32_t *w, uint32_t want, int shared, const char *what)
{
    double end = 0;
    unsigned k = 0;
    uint32_t v;
    while ((v = __atomic_load_n(w, __ATOMIC_ACQUIRE)) < want) {
        if ((++k & 0xfff) == 0 || !spin_mode) {
            if (end == 0) {
                end = dsm_bench_now() + BENCH_WAIT_S;
            } else if (dsm_bench_now() > end) {
                fprintf(stderr, "dsm_bench rank %d: waited %.0f s for %s\n", me, BENCH_WAIT_S, what);
                exit(1);
            }
        }
        if (!spin_mode) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            syscall(SYS_futex, w, shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, v, &ts, NULL, 0);
        }
    }
}

static void set_word(uint32_t *w, uint32_t v, int shared)
{
    __atomic_store_n(w, v, __ATOMIC_RELEASE);
    if (!spin_mode)
        syscall(SYS_futex, w, shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Wait until a word of shared memory (a dsm page: no futex wakes it) reaches want. */
static void poll_page(volatile uint64_t *w, uint64_t want, const char *what)
{
    double end = dsm_bench_now() + BENCH_WAIT_S;
    while (*w < want) {
        if (dsm_bench_now() > end) {
            fprintf(stderr, "dsm_bench rank %d: waited %.0f s for %s\n", me, BENCH_WAIT_S, what);
            exit(1);
        }
        if (!spin_mode)
            sched_yield();
    }
}

static int64_t iters(int64_t n)
{
    int64_t v = (int64_t)((double)n * scale);
    return v < 2 ? 2 : v;
}

/* The iterations of a body that rank 0 measures and the others sit out (they still loop: same counts). */
static void sit_out(dsm_bench_state_t *st)
{
    while (dsm_bench_next(st))
        dsm_bench_set_time(st, 1e-9);
}

static void barrier(void)
{
    check(dsm_barrier(), "barrier");
}

/* Start of a body only rank 0 times: a barrier, then the other ranks sit out the loop and wait in the closing
 * barrier. Returns 1 on those ranks (the body returns), 0 on rank 0, which ends with barrier() itself. */
static int rank0_alone(dsm_bench_state_t *st)
{
    barrier();
    if (me == 0)
        return 0;
    sit_out(st);
    barrier();
    return 1;
}

/* Rank 0 writes page i of p at iteration i, each write timed; the other ranks sit out. Between barriers. */
static void time_first_writes(dsm_bench_state_t *st, char *p)
{
    if (rank0_alone(st))
        return;
    int64_t i = 0;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        *(volatile char *)(p + i++ * PAGE) = 1;
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    barrier();
}

/* ---- baseline: a local page fault, resolved by mprotect in a SIGSEGV handler ---- */

static char *floor_page;

static void on_floor_fault(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    char *a = (char *)((uintptr_t)si->si_addr & ~(uintptr_t)(PAGE - 1));
    if (a != floor_page || mprotect(a, PAGE, PROT_READ) != 0)
        abort();
}

static void b_fault_floor(dsm_bench_state_t *st)
{
    if (me != 0) {
        sit_out(st);
        barrier();
        return;
    }
    floor_page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (floor_page == MAP_FAILED)
        die("mmap");
    floor_page[0] = 1;
    /* libdsm's own handler chains faults outside shared memory to the previous one; ours is in place only here. */
    struct sigaction sa = {.sa_sigaction = on_floor_fault, .sa_flags = SA_SIGINFO}, old;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old) != 0)
        die("sigaction");
    while (dsm_bench_next(st)) {
        if (mprotect(floor_page, PAGE, PROT_NONE) != 0)
            die("mprotect");
        double t0 = dsm_bench_now();
        (void)*(volatile char *)floor_page;
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    sigaction(SIGSEGV, &old, NULL);
    munmap(floor_page, PAGE);
    barrier();
}

/* ---- baselines: the kernel's share of a miss on a shared-memory page, without any network ----
 * What libdsm asks of the kernel for one page, done locally on a memory file mapped twice (an application view
 * and a system view, as libdsm maps its region). arg 0, "first touch": a read of a never-touched page faults; the
 * handler writes 4 KiB into it through the system view (the file allocates and zeroes the page) and makes it
 * readable (the retried load maps it). arg 1, "write to a read-only shared page": a write to a page mapped
 * read-only faults; the handler makes it writable (the retried store takes the write-protect fault of a clean
 * shared page). base/fault_local is the same fault on a private page that is already mapped. */
static volatile char sink_byte;
static char *kf_app, *kf_sys;
static size_t kf_len;
static int kf_kind;
static char kf_src[PAGE];

static void on_kernel_fault(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    char *a = (char *)((uintptr_t)si->si_addr & ~(uintptr_t)(PAGE - 1));
    if (a < kf_app || a >= kf_app + kf_len)
        abort();
    if (kf_kind == 0)
        memcpy(kf_sys + (a - kf_app), kf_src, PAGE);
    if (mprotect(a, PAGE, kf_kind == 0 ? PROT_READ : PROT_READ | PROT_WRITE) != 0)
        abort();
}

static void b_fault_kernel(dsm_bench_state_t *st)
{
    if (me != 0) {
        sit_out(st);
        barrier();
        return;
    }
    kf_kind = (int)dsm_bench_arg(st, 0);
    int64_t n = dsm_bench_max_iterations(st);
    kf_len = (size_t)n * PAGE;
    int fd = memfd_create("dsm_bench_kernel_fault", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)kf_len) != 0)
        die("memfd");
    kf_app = mmap(NULL, kf_len, kf_kind == 0 ? PROT_NONE : PROT_READ, MAP_SHARED, fd, 0);
    kf_sys = mmap(NULL, kf_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (kf_app == MAP_FAILED || kf_sys == MAP_FAILED)
        die("mmap");
    memset(kf_src, 0x5a, sizeof kf_src);
    if (kf_kind == 1)
        for (int64_t i = 0; i < n; i++) {
            kf_sys[i * PAGE] = 1;                     /* the page exists */
            sink_byte = *(volatile char *)(kf_app + i * PAGE); /* and is mapped read-only */
        }
    struct sigaction sa = {.sa_sigaction = on_kernel_fault, .sa_flags = SA_SIGINFO}, old;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old) != 0)
        die("sigaction");
    int64_t i = 0;
    while (dsm_bench_next(st)) {
        char *a = kf_app + i++ * PAGE;
        double t0 = dsm_bench_now();
        if (kf_kind == 0)
            sink_byte = *(volatile char *)a;
        else
            *(volatile char *)a = 2;
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    sigaction(SIGSEGV, &old, NULL);
    munmap(kf_app, kf_len);
    munmap(kf_sys, kf_len);
    close(fd);
    barrier();
}

/* ---- rendezvous of the raw baselines: rank 1 publishes a word through shared memory ---- */

static uint64_t *board;  /* one page homed at rank 1 */

static void publish(uint64_t v)
{
    if (me == 1)
        board[0] = v;
    barrier();
}

static uint64_t published(void)
{
    return board[0];
}

/* ---- baseline: raw TCP request (8 B) / response (arg bytes) over loopback, both sides spinning ---- */

static void full_send(int fd, const void *p, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t k = send(fd, (const char *)p + done, len - done, MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EINTR)
            die("tcp send");
        if (k > 0)
            done += (size_t)k;
    }
}

static void full_recv(int fd, void *p, size_t len)
{
    double end = 0;
    for (size_t done = 0; done < len;) {
        /* Blocking mode: the socket has a receive timeout of BENCH_WAIT_S (EAGAIN then ends the wait). */
        ssize_t k = recv(fd, (char *)p + done, len - done, spin_mode ? MSG_DONTWAIT : 0);
        if (k == 0)
            die("tcp peer closed");
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR)
                die("tcp recv");
            if (!spin_mode && errno == EAGAIN)
                die("tcp recv: no answer");
            if (end == 0)
                end = dsm_bench_now() + BENCH_WAIT_S;
            else if (dsm_bench_now() > end)
                die("tcp recv: no answer");
            continue;
        }
        done += (size_t)k;
    }
}

static void b_tcp_rr(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    char *buf = calloc(1, len > 8 ? len : 8);
    int one = 1, fd = -1, lfd = -1;
    if (me == 1) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
            getsockname(lfd, (struct sockaddr *)&a, &al) != 0)
            die("tcp listen");
        publish(ntohs(a.sin_port));
        fd = accept(lfd, NULL, NULL);
    } else {
        publish(0);
        if (me == 0) {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                    .sin_port = htons((uint16_t)published())};
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
                die("tcp connect");
        }
    }
    if (fd >= 0) {
        struct timeval tv = {(time_t)BENCH_WAIT_S, 0};
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    while (dsm_bench_next(st)) {
        if (me == 0) {
            double t0 = dsm_bench_now();
            full_send(fd, buf, 8);
            full_recv(fd, buf, len);
            dsm_bench_set_time(st, dsm_bench_now() - t0);
        } else {
            if (me == 1) {
                full_recv(fd, buf, 8);
                full_send(fd, buf, len);
            }
            dsm_bench_set_time(st, 1e-9);
        }
    }
    if (fd >= 0)
        close(fd);
    if (lfd >= 0)
        close(lfd);
    free(buf);
    barrier();
}

/* ---- baseline: raw shared-memory ping-pong (one flag each way, arg bytes copied by the answering side) ---- */

struct shm_pp {
    uint32_t req __attribute__((aligned(64)));
    uint32_t resp __attribute__((aligned(64)));
    char data[PAGE] __attribute__((aligned(64)));
};

static void b_shm_pp(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    char name[64];
    struct shm_pp *q = NULL;
    static char src[PAGE], dst[PAGE];
    if (me <= 1) {
        /* Named after rank 1's pid, which rank 0 learns through shared memory. */
        if (me == 1) {
            snprintf(name, sizeof name, "/dsm-bench-%ld", (long)getpid());
            int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd < 0 || ftruncate(fd, sizeof *q) != 0)
                die("shm_open");
            q = mmap(NULL, sizeof *q, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            publish((uint64_t)getpid());
        } else {
            publish(0);
            snprintf(name, sizeof name, "/dsm-bench-%ld", (long)published());
            int fd = shm_open(name, O_RDWR, 0600);
            if (fd < 0)
                die("shm_open of rank 1's segment");
            q = mmap(NULL, sizeof *q, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
        }
        if (q == MAP_FAILED)
            die("mmap shm");
    } else {
        publish(0);
    }
    barrier();
    if (me == 1)
        shm_unlink(name);
    uint32_t i = 0;
    while (dsm_bench_next(st)) {
        i++;
        if (me == 0) {
            double t0 = dsm_bench_now();
            set_word(&q->req, i, 1);
            wait_word(&q->resp, i, 1, "shm pong");
            memcpy(dst, q->data, len);
            dsm_bench_set_time(st, dsm_bench_now() - t0);
        } else {
            if (me == 1) {
                wait_word(&q->req, i, 1, "shm ping");
                memcpy(q->data, src, len);
                set_word(&q->resp, i, 1);
            }
            dsm_bench_set_time(st, 1e-9);
        }
    }
    if (q)
        munmap(q, sizeof *q);
    barrier();
}

/* ---- transport: active-message ping-pong and message rate ---- */

enum { AM_PING = DSM_AM_TEST_FIRST + 20, AM_PONG, AM_SINK };
static uint32_t pongs;
static char am_buf[PAGE];

static int on_ping(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id; (void)p;
    return dsm_am_send(src, AM_PONG, hdr, hl, am_buf, len);
}

static int on_pong(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)src; (void)id; (void)hdr; (void)hl; (void)p; (void)len;
    set_word(&pongs, __atomic_load_n(&pongs, __ATOMIC_RELAXED) + 1, 0);  /* only the progress thread writes it */
    return DSM_OK;
}

/* The messages of the rate benchmark: received and dropped. */
static int on_sink(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)src; (void)id; (void)hdr; (void)hl; (void)p; (void)len;
    return DSM_OK;
}

static void b_am_pingpong(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    uint8_t hdr[8] = {0};
    if (rank0_alone(st))
        return;
    uint32_t want = __atomic_load_n(&pongs, __ATOMIC_ACQUIRE);
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        check(dsm_am_send(1, AM_PING, hdr, sizeof hdr, am_buf, len), "am send");
        wait_word(&pongs, ++want, 0, "am pong");
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    barrier();
}

/* Bursts of 8 B messages sent back to back to rank 1, each burst closed by one answered message (they arrive in
 * order): messages per second of one sender, delivery included. */
static void b_am_rate(dsm_bench_state_t *st)
{
    const int64_t burst = 1000;
    uint8_t hdr[8] = {0};
    barrier();
    while (dsm_bench_next(st)) {
        if (me == 0) {
            double t0 = dsm_bench_now();
            for (int64_t k = 0; k < burst; k++)
                check(dsm_am_send(1, AM_SINK, hdr, sizeof hdr, NULL, 0), "am send");
            /* The last of the burst answered: all arrived (one channel keeps order). */
            uint32_t want = __atomic_load_n(&pongs, __ATOMIC_ACQUIRE) + 1;
            check(dsm_am_send(1, AM_PING, hdr, sizeof hdr, NULL, 0), "am send");
            wait_word(&pongs, want, 0, "burst answer");
            dsm_bench_set_time(st, dsm_bench_now() - t0);
        } else {
            dsm_bench_set_time(st, 1e-9);
        }
    }
    dsm_bench_set_items(st, dsm_bench_max_iterations(st) * burst);
    barrier();
}

/* ---- transport: one-sided put, get and atomics on a registered buffer of rank 1 ---- */

static dsm_mreg_t *rma_reg;
static char *rma_mem;
#define RMA_LEN (1u << 20)

static void rma_setup(void)
{
    int fd = memfd_create("dsm-bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, RMA_LEN) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        die("memfd");
    rma_mem = mmap(NULL, RMA_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (rma_mem == MAP_FAILED)
        die("mmap");
    check(dsm_mreg_create(rma_mem, RMA_LEN, fd, 0, &rma_reg), "registration");
}

/* arg 0: size; arg 1: 0 put, 1 get. Latency: one blocking operation per iteration. */
static void b_rma(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    int get = (int)dsm_bench_arg(st, 1);
    static char local[RMA_LEN];
    if (rank0_alone(st))
        return;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        if (get) {
            check(dsm_rma_get(1, local, len, rma_reg, 0), "get");
        } else {
            check(dsm_rma_put(1, local, len, rma_reg, 0), "put");
        }
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    dsm_bench_set_bytes(st, dsm_bench_max_iterations(st) * (int64_t)len);
    barrier();
}

/* Put bandwidth: a window of 16 non-blocking puts in flight, the size given. */
static void b_rma_bw(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    enum { WINDOW = 16 };
    static char local[RMA_LEN];
    dsm_tp_req_t req[WINDOW];
    if (rank0_alone(st))
        return;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        for (int k = 0; k < WINDOW; k++) {
            dsm_req_init(&req[k]);
            check(dsm_rma_put_nb(1, local, len, rma_reg, 0, &req[k]), "put");
        }
        for (int k = 0; k < WINDOW; k++)
            check(dsm_req_wait(&req[k]), "put completion");
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    dsm_bench_set_bytes(st, dsm_bench_max_iterations(st) * WINDOW * (int64_t)len);
    barrier();
}

/* dsm_fetch_add (arg 0) or dsm_cas (arg 1) on a dsm_alloc_atomic word homed at rank 1. */
static uint64_t *atomics;

static void b_atomic(dsm_bench_state_t *st)
{
    int cas = (int)dsm_bench_arg(st, 0);
    uint64_t *w = atomics + PAGE / 8 * 1;  /* the second page: homed at rank 1 (block-wise, one page each) */
    if (rank0_alone(st))
        return;
    uint64_t v = 0;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        if (cas)
            v = dsm_cas(w, v, v + 1) == v ? v + 1 : dsm_atomic_load(w);
        else
            dsm_fetch_add(w, 1);
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    barrier();
}

/* ---- coherence: misses on fresh pages, one per iteration ---- */

/* Fresh pages homed at rank 1 for n iterations; the previous set is freed first (collective). */
static char *pages;

static char *fresh_pages(int64_t n)
{
    if (pages)
        check(dsm_dealloc(pages), "dealloc");
    pages = dsm_alloc_home((size_t)n * PAGE, nodes > 1 ? 1 : 0);
    if (!pages)
        check(dsm_last_error(), "alloc");
    return pages;
}


/* Under DSM_STATS=2 libdsm stamps each phase of a read miss, per page (libdsm/stats.h). The benchmark reports
 * the median of each phase over its misses (a preemption on a shared machine moves a mean, not a median), the
 * home's median time per request from rank 1 (through the board page), and how many misses were stamped. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double median_us(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_u64);
    return n ? (double)v[n / 2] / 1000.0 : 0.0;
}

static void breakdown(dsm_bench_state_t *st, const char *p, int64_t n)
{
    size_t first;
    if (!dsm_region_kind(p, &first))
        die("breakdown: not shared memory");
    uint64_t *v = malloc((size_t)n * sizeof *v);
    if (!v)
        die("malloc");
    barrier();  /* rank 0's misses are over */
    if (me == 1) {
        size_t k = 0;
        for (int64_t i = 0; i < n; i++) {
            const struct dsm_ft_page *s = &dsm_ft_pages[first + (size_t)i];
            if (s->home_out >= s->home_in && s->home_in)
                v[k++] = s->home_out - s->home_in;
        }
        board[2] = (uint64_t)(median_us(v, k) * 1000.0);
        board[3] = k;
    }
    barrier();
    if (me == 0) {
        enum { REQ, SEND, RTT, COPY, PROT, WAKE, HANDLER, PHASES };
        static const char *names[PHASES] = {"ft_request_us", "ft_send_us", "ft_round_trip_us", "ft_copy_us",
                                            "ft_mprotect_us", "ft_wakeup_us", "ft_handler_us"};
        uint64_t *ph[PHASES];
        size_t k = 0;
        for (int j = 0; j < PHASES; j++)
            if (!(ph[j] = malloc((size_t)n * sizeof **ph)))
                die("malloc");
        for (int64_t i = 0; i < n; i++) {
            const struct dsm_ft_page *s = &dsm_ft_pages[first + (size_t)i];
            if (!s->done || s->grant < s->presend)
                continue;  /* not a stamped miss of this run */
            ph[REQ][k] = s->presend - s->entry;
            ph[SEND][k] = (s->sent < s->grant ? s->sent : s->grant) - s->presend;
            ph[RTT][k] = s->grant - s->presend;
            ph[COPY][k] = s->filled - s->grant;
            ph[PROT][k] = s->prot - s->filled;
            ph[WAKE][k] = s->woken - s->prot;
            ph[HANDLER][k] = s->done - s->entry;
            k++;
        }
        for (int j = 0; j < PHASES; j++) {
            if (k)
                dsm_bench_counter(st, names[j], median_us(ph[j], k));
            free(ph[j]);
        }
        if (board[3])
            dsm_bench_counter(st, "ft_home_us", (double)board[2] / 1000.0);
        dsm_bench_counter(st, "ft_misses", (double)k);
    }
    free(v);
}

/* Read miss on pages homed at rank 1. arg 0: 0 the page was never touched (clean at its home, and the first use
 * of its memory on both nodes), 1 it was last written by rank 2, 2 rank 0 held it before and the home wrote it
 * since (clean at its home, its memory in use on both nodes: the miss of an iterative program). */
static void b_read_miss(dsm_bench_state_t *st)
{
    int kind = (int)dsm_bench_arg(st, 0);
    int64_t n = dsm_bench_max_iterations(st);
    char *p = fresh_pages(n);
    if (kind == 1 && nodes < 3) {
        dsm_bench_skip(st, "needs 3 nodes");
        barrier();
        return;
    }
    if (kind == 1 && me == 2)
        for (int64_t i = 0; i < n; i++)
            p[i * PAGE] = 1;
    if (kind == 2) {
        if (me == 0)
            for (int64_t i = 0; i < n; i++)
                sink_byte = p[i * PAGE];
        barrier();
        if (me == 1)
            for (int64_t i = 0; i < n; i++)
                p[i * PAGE] = 1;
    }
    barrier();
    if (me != 0) {
        sit_out(st);
    } else {
        int64_t i = 0;
        while (dsm_bench_next(st)) {
            double t0 = dsm_bench_now();
            sink_byte = *(volatile char *)(p + i++ * PAGE);
            dsm_bench_set_time(st, dsm_bench_now() - t0);
        }
    }
    if (dsm_ft_on)
        breakdown(st, p, n);
    barrier();
}

/* Write miss with arg 0 sharers: ranks 1 (the home) .. arg read the page first. */
static void b_write_miss(dsm_bench_state_t *st)
{
    int sharers = (int)dsm_bench_arg(st, 0);
    int64_t n = dsm_bench_max_iterations(st);
    char *p = fresh_pages(n);
    if (sharers > nodes - 1) {
        dsm_bench_skip(st, "more sharers than nodes");
        barrier();
        return;
    }
    if (me >= 1 && me <= sharers)
        for (int64_t i = 0; i < n; i++)
            sink_byte = p[i * PAGE];
    time_first_writes(st, p);
}

/* Upgrade: rank 0 holds the page Shared (read before, not timed) and writes it. */
static void b_upgrade(dsm_bench_state_t *st)
{
    int64_t n = dsm_bench_max_iterations(st);
    char *p = fresh_pages(n);
    if (me == 0)
        for (int64_t i = 0; i < n; i++)
            sink_byte = p[i * PAGE];
    time_first_writes(st, p);
}

/* Two-node page ping-pong: ranks 0 and 1 take turns incrementing a word of one page homed at rank 1; one
 * iteration is one turn each (two write misses, each a recall of the page from the other node). */
static void b_page_pingpong(dsm_bench_state_t *st)
{
    char *p = fresh_pages(1);
    volatile uint64_t *w = (volatile uint64_t *)p;
    barrier();
    uint64_t turn = 0;
    while (dsm_bench_next(st)) {
        if (me > 1) {
            dsm_bench_set_time(st, 1e-9);
            continue;
        }
        double t0 = dsm_bench_now();
        if (me == 0) {
            *w = ++turn * 2 - 1;
            poll_page(w, turn * 2, "the other turn");
        } else {
            poll_page(w, ++turn * 2 - 1, "the other turn");
            *w = turn * 2;
        }
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    barrier();
}

/* Fault throughput: arg 0 threads per node, each reading its own fresh pages homed at the next node. */
struct ft_arg {
    char *base;
    int64_t count;
};

static void *ft_worker(void *a)
{
    struct ft_arg *f = a;
    for (int64_t i = 0; i < f->count; i++)
        sink_byte = f->base[i * PAGE];
    return NULL;
}

static void b_fault_tput(dsm_bench_state_t *st)
{
    int threads = (int)dsm_bench_arg(st, 0);
    int64_t per = iters(400);
    /* Node k's pages: a block of the whole allocation homed at k+1 (dsm_alloc spreads homes block-wise). */
    size_t block = (size_t)threads * (size_t)per;
    pthread_t tid[8];
    struct ft_arg fa[8];
    while (dsm_bench_next(st)) {
        /* Fresh pages each round, so every read is a miss. */
        char *all = dsm_alloc(block * PAGE * (size_t)nodes);
        if (!all)
            check(dsm_last_error(), "alloc");
        char *mine = all + (size_t)((me + 1) % nodes) * block * PAGE;
        barrier();
        double t0 = dsm_bench_now();
        for (int t = 0; t < threads; t++) {
            fa[t] = (struct ft_arg){mine + (size_t)t * (size_t)per * PAGE, per};
            if (pthread_create(&tid[t], NULL, ft_worker, &fa[t]) != 0)
                die("pthread_create");
        }
        for (int t = 0; t < threads; t++)
            pthread_join(tid[t], NULL);
        dsm_bench_set_time(st, dsm_bench_now() - t0);
        barrier();
        check(dsm_dealloc(all), "dealloc");
    }
    dsm_bench_set_items(st, dsm_bench_max_iterations(st) * (int64_t)block);
}

/* ---- sync ---- */

static void b_barrier(dsm_bench_state_t *st)
{
    barrier();
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        barrier();
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
}

/* Lock acquire + release of a lock homed at rank 1. arg 0: 0 only rank 0 takes it, 1 every node does. */
static dsm_lock_t *lock;

static void b_lock(dsm_bench_state_t *st)
{
    int contended = (int)dsm_bench_arg(st, 0);
    barrier();
    if (me != 0 && !contended) {
        sit_out(st);
        barrier();
        return;
    }
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        check(dsm_lock(lock), "lock");
        check(dsm_unlock(lock), "unlock");
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    barrier();
}

/* ---- migration: a dsm thread of rank 0 goes to rank 1 and back; a remote spawn and its join ---- */

struct mig_run {
    int64_t n;
    double *times; /* [n], shared memory homed at rank 0: written by the thread when it is back there */
};

static void *mig_roundtrips(void *arg)
{
    struct mig_run *r = arg;
    for (int64_t i = 0; i < r->n; i++) {
        double t0 = dsm_bench_now();
        check(dsm_migrate(1), "dsm_migrate");
        check(dsm_migrate(0), "dsm_migrate");
        r->times[i] = dsm_bench_now() - t0; /* both clock readings on rank 0 */
    }
    return NULL;
}

static void *mig_nothing(void *arg)
{
    return arg;
}

/* arg 0: 0 a migration round trip (0 -> 1 -> 0, its stack pages following), 1 dsm_thread_create on rank 1 +
 * dsm_thread_join from rank 0. */
static void b_migrate(dsm_bench_state_t *st)
{
    int spawn = (int)dsm_bench_arg(st, 0);
    if (rank0_alone(st))
        return;
    if (spawn) {
        while (dsm_bench_next(st)) {
            dsm_thread_t t;
            void *ret = NULL;
            double t0 = dsm_bench_now();
            check(dsm_thread_create(&t, 1, mig_nothing, (void *)1), "dsm_thread_create");
            check(dsm_thread_join(t, &ret), "dsm_thread_join");
            dsm_bench_set_time(st, dsm_bench_now() - t0);
            if (ret != (void *)1)
                check(DSM_EPROTO, "the joined thread's value");
        }
    } else {
        int64_t n = dsm_bench_max_iterations(st);
        struct mig_run *r = dsm_malloc(sizeof *r);
        double *times = dsm_malloc((size_t)n * sizeof *times);
        if (!r || !times)
            check(dsm_last_error(), "dsm_malloc");
        r->n = n;
        r->times = times;
        dsm_thread_t t;
        check(dsm_thread_create(&t, 0, mig_roundtrips, r), "dsm_thread_create");
        check(dsm_thread_join(t, NULL), "dsm_thread_join");
        int64_t i = 0;
        while (dsm_bench_next(st))
            dsm_bench_set_time(st, times[i++]);
        dsm_free(times);
        dsm_free(r);
    }
    barrier();
}

/* ---- bulk: dsm_get / dsm_put of arg 0 bytes homed at rank 1; rank 1 takes the range back between rounds ---- */

static char *bulk_mem, *bulk_local;
#define BULK_MAX (16u << 20)

static void b_bulk(dsm_bench_state_t *st)
{
    size_t len = (size_t)dsm_bench_arg(st, 0);
    int put = (int)dsm_bench_arg(st, 1);
    while (dsm_bench_next(st)) {
        /* Rank 1 writes every page: rank 0 holds none of them when the timed copy starts. */
        if (me == 1)
            for (size_t o = 0; o < len; o += PAGE)
                bulk_mem[o]++;
        barrier();
        double t0 = dsm_bench_now();
        if (me == 0)
            check(put ? dsm_put(bulk_mem, bulk_local, len) : dsm_get(bulk_local, bulk_mem, len), "bulk copy");
        dsm_bench_set_time(st, me == 0 ? dsm_bench_now() - t0 : 1e-9);
        barrier();
    }
    dsm_bench_set_bytes(st, dsm_bench_max_iterations(st) * (int64_t)len);
}

/* ---- applications: the kernels of examples/jacobi and examples/matmul, timed per iteration ---- */

/* rank 0's page faults and bytes received, for the per-iteration counters */
static void app_counters(dsm_bench_state_t *st, const dsm_stats_t *s0)
{
    dsm_stats_t s1 = {.size = sizeof s1};
    check(dsm_stats(&s1), "dsm_stats");
    double it = (double)dsm_bench_max_iterations(st);
    dsm_bench_counter(st, "faults_per_iter", (double)(s1.read_faults + s1.write_faults + s1.upgrades - s0->read_faults -
                                                 s0->write_faults - s0->upgrades) / it);
    dsm_bench_counter(st, "pages_in_per_iter", (double)(s1.pages_received - s0->pages_received) / it);
    dsm_bench_counter(st, "bytes_in_per_iter", (double)(s1.bytes_received - s0->bytes_received) / it);
    dsm_bench_counter(st, "bytes_out_per_iter", (double)(s1.bytes_sent - s0->bytes_sent) / it);
}

/* One Jacobi sweep per iteration over an arg x arg grid, rows in blocks over the nodes (as examples/jacobi):
 * only the rows at block edges travel. Time: the sweep and the barrier that ends it. */
static void b_jacobi(dsm_bench_state_t *st)
{
    int n = (int)dsm_bench_arg(st, 0);
    size_t bytes = (size_t)n * (size_t)n * sizeof(double);
    double *a = dsm_alloc(bytes), *b = dsm_alloc(bytes);
    if (!a || !b)
        check(dsm_last_error(), "alloc");
    int lo = (int)((long)n * me / nodes), hi = (int)((long)n * (me + 1) / nodes);
    for (int i = lo; i < hi; i++)
        for (int j = 0; j < n; j++)
            a[(size_t)i * n + j] = (i == 0 || j == 0 || i == n - 1 || j == n - 1) ? 1.0 : 0.0;
    /* One sweep untimed: b's pages are first written here, which no later iteration repeats. */
    for (int i = lo; i < hi; i++)
        for (int j = 0; j < n; j++)
            b[(size_t)i * n + j] = a[(size_t)i * n + j];
    barrier();
    dsm_stats_t s0 = {.size = sizeof s0};
    check(dsm_stats(&s0), "dsm_stats");
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        for (int i = lo; i < hi; i++)
            for (int j = 0; j < n; j++) {
                size_t k = (size_t)i * n + j;
                b[k] = (i == 0 || j == 0 || i == n - 1 || j == n - 1)
                           ? a[k] : 0.25 * (a[k - 1] + a[k + 1] + a[k - (size_t)n] + a[k + (size_t)n]);
            }
        barrier();
        dsm_bench_set_time(st, dsm_bench_now() - t0);
        double *t = a;
        a = b;
        b = t;
    }
    app_counters(st, &s0);
    barrier();
    check(dsm_dealloc(a), "dealloc");
    check(dsm_dealloc(b), "dealloc");
}

/* C = A B of arg x arg matrices per iteration, rows of C in blocks over the nodes (as examples/matmul); before
 * each product every node rewrites its own rows of B, so every node fetches B again (the pattern of an
 * iterative solver). Time: the update, the product and their barriers. */
static void b_matmul(dsm_bench_state_t *st)
{
    int n = (int)dsm_bench_arg(st, 0);
    size_t bytes = (size_t)n * (size_t)n * sizeof(double);
    double *a = dsm_alloc(bytes), *b = dsm_alloc(bytes), *c = dsm_alloc(bytes);
    if (!a || !b || !c)
        check(dsm_last_error(), "alloc");
    int lo = (int)((long)n * me / nodes), hi = (int)((long)n * (me + 1) / nodes);
    for (size_t k = (size_t)lo * n; k < (size_t)hi * n; k++) {
        a[k] = (double)(k % 17) - 8;
        b[k] = (double)(k % 13) / 4;
    }
    barrier();
    dsm_stats_t s0 = {.size = sizeof s0};
    check(dsm_stats(&s0), "dsm_stats");
    int it = 0;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        for (size_t k = (size_t)lo * n; k < (size_t)hi * n; k++)
            b[k] = (double)((k + (size_t)it) % 13) / 4;
        it++;
        barrier();
        for (int i = lo; i < hi; i++)
            for (int j = 0; j < n; j++) {
                double sum = 0;
                for (int k = 0; k < n; k++)
                    sum += a[(size_t)i * n + k] * b[(size_t)k * n + j];
                c[(size_t)i * n + j] = sum;
            }
        barrier();
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
    app_counters(st, &s0);
    barrier();
    check(dsm_dealloc(a), "dealloc");
    check(dsm_dealloc(b), "dealloc");
    check(dsm_dealloc(c), "dealloc");
}

/* ---- the sets ---- */

static void reg(const char *name, dsm_bench_fn_t fn, int64_t n, const int64_t *args, int nargs, int two)
{
    dsm_bench_t *b = dsm_bench_iterations(dsm_bench_register(name, fn), iters(n));
    for (int k = 0; k < nargs; k++)
        if (two)
            dsm_bench_with_args(b, args[2 * k], args[2 * k + 1]);
        else
            dsm_bench_with_arg(b, args[k]);
}

static void register_all(void)
{
    static const int64_t rr_sizes[] = {8, 4096};
    reg("base/fault_local", b_fault_floor, 2000, NULL, 0, 0);
    static const int64_t kf_kinds[] = {0, 1};
    reg("base/fault_kernel", b_fault_kernel, 2000, kf_kinds, 2, 0);
    reg("base/tcp_rr", b_tcp_rr, 2000, rr_sizes, 2, 0);
    reg("base/shm_pingpong", b_shm_pp, 5000, rr_sizes, 2, 0);
    reg("tp/am_pingpong", b_am_pingpong, 2000, rr_sizes, 2, 0);
    reg("tp/am_rate", b_am_rate, 20, NULL, 0, 0);
    int64_t rma_args[2 * 9 * 2], k = 0; /* 4 KiB to 1 MiB by doubling, put and get */
    for (int get = 0; get < 2; get++)
        for (int64_t s = 4096; s <= (1 << 20); s *= 2, k++) {
            rma_args[2 * k] = s;
            rma_args[2 * k + 1] = get;
        }
    reg("tp/rma_lat", b_rma, 200, rma_args, (int)k, 1);
    static const int64_t bw_sizes[] = {4096, 65536, 1 << 20};
    reg("tp/put_bw", b_rma_bw, 50, bw_sizes, 3, 0);
    static const int64_t ops[] = {0, 1};
    reg("tp/atomic", b_atomic, 1000, ops, 2, 0);
    static const int64_t miss_2[] = {0, 2}, miss_3[] = {0, 1, 2};
    if (nodes >= 3)
        reg("coh/read_miss", b_read_miss, 1000, miss_3, 3, 0);
    else
        reg("coh/read_miss", b_read_miss, 1000, miss_2, 2, 0);
    int64_t sharers[3] = {0, 1, nodes - 1};
    reg("coh/write_miss", b_write_miss, 1000, sharers, nodes > 2 ? 3 : 2, 0);
    reg("coh/upgrade", b_upgrade, 1000, NULL, 0, 0);
    reg("coh/page_pingpong", b_page_pingpong, 500, NULL, 0, 0);
    static const int64_t thr[] = {1, 2, 4};
    reg("coh/fault_tput", b_fault_tput, 3, thr, 3, 0);
    reg("sync/barrier", b_barrier, 500, NULL, 0, 0);
    static const int64_t lk[] = {0, 1};
    reg("sync/lock", b_lock, 500, lk, 2, 0);
    static const int64_t mig[] = {0, 1};
    reg("mig/migrate", b_migrate, 200, mig, 2, 0);
    int64_t bulk_args[2 * 7 * 2]; /* 4 KiB to 16 MiB by 4, get and put */
    k = 0;
    for (int put = 0; put < 2; put++)
        for (int64_t s = 4096; s <= BULK_MAX; s *= 4, k++) {
            bulk_args[2 * k] = s;
            bulk_args[2 * k + 1] = put;
        }
    reg("bulk/dsm", b_bulk, 20, bulk_args, (int)k, 1);
    static const int64_t grid[] = {512}, mat[] = {192};
    reg("app/jacobi", b_jacobi, 50, grid, 1, 0);
    reg("app/matmul", b_matmul, 10, mat, 1, 0);
}

int main(int argc, char **argv)
{
    int k = 1;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--scale=", 8) == 0) {
            scale = atof(argv[i] + 8);
            if (!(scale > 0)) {
                fprintf(stderr, "dsm_bench: --scale wants a positive number, got '%s'\n", argv[i] + 8);
                return 2;
            }
        } else {
            argv[k++] = argv[i];
        }
    }
    argc = k;
    argv[k] = NULL;
    check(dsm_init(&argc, &argv), "dsm_init");
    me = dsm_rank();
    nodes = dsm_size();
    const char *wm = getenv("DSM_WAIT");
    spin_mode = wm && strcmp(wm, "spin") == 0;
    if (nodes < 2) {
        fprintf(stderr, "dsm_bench: run it under dsmrun with 2 or more nodes (rank 1 serves rank 0)\n");
        dsm_finalize();
        return 2;
    }
    check(dsm_am_register(AM_PING, on_ping, NULL), "register");
    check(dsm_am_register(AM_PONG, on_pong, NULL), "register");
    check(dsm_am_register(AM_SINK, on_sink, NULL), "register");
    board = dsm_alloc_home(PAGE, 1);
    atomics = dsm_alloc_atomic((size_t)nodes * PAGE);
    lock = dsm_alloc_home(PAGE, 1);
    bulk_mem = dsm_alloc_home(BULK_MAX, 1);
    if (!board || !atomics || !lock || !bulk_mem)
        check(dsm_last_error(), "alloc");
    if (me == 1)
        check(dsm_lock_init(lock), "lock init");
    bulk_local = calloc(1, BULK_MAX);
    rma_setup();

    char v[64];
    snprintf(v, sizeof v, "%d", nodes);
    dsm_bench_context("dsm_nodes", v);
    dsm_bench_context("dsm_transport", dsm_transport_name());
    dsm_bench_context("dsm_version", dsm_version_string());
    dsm_bench_context("dsm_wait", wm ? wm : "default");
    dsm_bench_context("bench_wait", spin_mode ? "spin" : "block");
    const char *cpus = getenv("BENCH_CPUS"); /* bench/run --cpus */
    dsm_bench_context("bench_cpus", cpus && *cpus ? cpus : "all");
    const char *dev = getenv("DSM_RDMA_DEVICE");
    if (!dev)
        dev = getenv("DSM_RXE_DEVICE");  /* the soft-RoCE lab's device (ci/rxe-lab) */
    dsm_bench_context("dsm_device", dev ? dev : (strstr(dsm_transport_name(), "rdma") ? "default" : "none"));
    snprintf(v, sizeof v, "%g", scale);
    dsm_bench_context("dsm_bench_scale", v);
    register_all();
    barrier();
    int rc = dsm_bench_run(&argc, argv, me == 0);
    barrier();
    check(dsm_mreg_destroy(rma_reg), "deregistration");
    check(dsm_finalize(), "dsm_finalize");
    return rc;
}
