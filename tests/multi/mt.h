/* SPDX-License-Identifier: MIT */
/*
 * mt.h - helpers for the multi-node tests. Each test is one program that every rank runs under dsmrun (or
 * mpirun); it exits 0 when every check passed, 77 to skip, anything else to fail. A failed check names the rank,
 * the line and the values. Waits are bounded, so a lost message fails the test instead of hanging it.
 */
#ifndef DSM_MT_H
#define DSM_MT_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/core.h"

#define MT_CHECK(cond_x, ...) \
    do { \
        if (!(cond_x)) { \
            fprintf(stderr, "rank %d: check failed at %s:%d: %s: ", dsm_rank(), __FILE__, __LINE__, #cond_x); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
            exit(1); \
        } \
    } while (0)

/* How long a test waits for something before failing: DSM_TEST_WAIT_S seconds, default 120 (make check-rdma sets
 * more: the soft-RoCE lab runs under TCG, 10-100 times slower than the host). */
static inline int64_t mt_wait_ms(void)
{
    const char *s = getenv("DSM_TEST_WAIT_S");
    long v = s ? atol(s) : 0;
    return v > 0 ? (int64_t)v * 1000 : 120000;
}
#define MT_WAIT_MS mt_wait_ms()

static inline int64_t mt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until *word reaches at least want, or fail the test. */
static inline void mt_wait_at_least(uint32_t *word, uint32_t want, const char *what)
{
    int64_t end = mt_now_ms() + MT_WAIT_MS;
    uint32_t v;
    while ((v = __atomic_load_n(word, __ATOMIC_ACQUIRE)) < want) {
        MT_CHECK(mt_now_ms() < end, "waited too long for %s: %u of %u", what, v, want);
        dsm_futex_wait(word, v, 100);
    }
}

static inline void mt_bump(uint32_t *word)
{
    __atomic_add_fetch(word, 1, __ATOMIC_ACQ_REL);
    dsm_futex_wake(word);
}

/* dsm threads migrate only between nodes that load the program at the same addresses: start again with address
 * randomization off when it is on (as setarch -R does; dsmrun has it off already, srun and mpirun do not). */
static inline void mt_aslr_off(char **argv)
{
    int pers = personality(0xffffffff);
    if (pers == -1 || (pers & ADDR_NO_RANDOMIZE))
        return;
    if (personality((unsigned long)pers | ADDR_NO_RANDOMIZE) != -1)
        execv("/proc/self/exe", argv);
}

static inline void mt_init(int *argc, char ***argv)
{
    int rc = dsm_init(argc, argv);
    if (rc != DSM_OK) {
        fprintf(stderr, "dsm_init failed: %s\n", dsm_strerror(rc));
        exit(1);
    }
}

static inline void mt_finalize(void)
{
    int rc = dsm_finalize();
    if (rc != DSM_OK) {
        fprintf(stderr, "dsm_finalize failed: %s\n", dsm_strerror(rc));
        exit(1);
    }
}

/* Run fn(i) on k threads, i = 0..k-1, and join them all (k at most 64). */
static inline void mt_run_threads(int k, void *(*fn)(void *))
{
    pthread_t th[64];
    for (intptr_t i = 0; i < k; i++)
        pthread_create(&th[i], NULL, fn, (void *)i);
    for (int i = 0; i < k; i++)
        pthread_join(th[i], NULL);
}

/* An iteration count, divided by 10 (at least 1) under DSM_TEST_QUICK (make distcheck, and make check-rdma,
 * where the soft-RoCE lab runs under TCG): the same checks on fewer rounds. Never for negative controls, which
 * need their full length to see the injected bug. */
static inline int mt_iters(int n)
{
    const char *q = getenv("DSM_TEST_QUICK");
    return q && *q ? (n / 10 > 0 ? n / 10 : 1) : n;
}

/* Zeroed memory that can be registered (dsm_mreg_create wants a MAP_SHARED mapping of a file descriptor). */
static inline void *mt_shared_alloc(size_t len, int *fd_p)
{
    int fd = memfd_create("dsm-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    MT_CHECK(fd >= 0 && ftruncate(fd, (off_t)len) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0,
             "sealed memfd of %zu bytes", len);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    MT_CHECK(p != MAP_FAILED, "mapping %zu bytes", len);
    *fd_p = fd;
    return p;
}

/* A byte of a test pattern that depends on everything that identifies the message. */
static inline uint8_t mt_pat(uint32_t a, uint32_t b, uint32_t c, size_t i)
{
    uint32_t x = a * 2654435761u ^ b * 40503u ^ c * 2246822519u ^ (uint32_t)i * 3266489917u;
    return (uint8_t)(x ^ x >> 13 ^ x >> 24);
}

static inline void mt_fill(uint8_t *p, size_t n, uint32_t a, uint32_t b, uint32_t c)
{
    for (size_t i = 0; i < n; i++)
        p[i] = mt_pat(a, b, c, i);
}

static inline int mt_match(const uint8_t *p, size_t n, uint32_t a, uint32_t b, uint32_t c)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != mt_pat(a, b, c, i))
            return 0;
    return 1;
}

#endif /* DSM_MT_H */
