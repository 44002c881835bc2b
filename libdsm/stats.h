/* SPDX-License-Identifier: MIT */
/* stats.h - coherence counters of this node (stats.c). */
#ifndef DSM_STATS_H
#define DSM_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

enum {
    DSM_CTR_READ_FAULT,  /* read misses sent to a home */
    DSM_CTR_WRITE_FAULT, /* write misses (from I) */
    DSM_CTR_UPGRADE,     /* S to M */
    DSM_CTR_PAGE_IN,     /* grants that carried a page */
    DSM_CTR_PAGE_OUT,    /* pages this node sent (grants as home, recall answers as owner) */
    DSM_CTR_PAGE_PLACED, /* of those, written straight into the receiver's memory (one copy, RMA_NATIVE) */
    DSM_CTR_INV_IN,
    DSM_CTR_INV_OUT,
    DSM_CTR_RECALL_IN,
    DSM_CTR_MIGRATION, /* dsm threads that left this node for another (migrate/) */
    DSM_CTR_DIRECT,    /* grants that reached the faulting thread through its reply slot (no progress hop) */
    DSM_CTR_MAX
};

extern uint64_t dsm_ctr[DSM_CTR_MAX];

static inline void dsm_ctr_inc(int c)
{
    __atomic_add_fetch(&dsm_ctr[c], 1, __ATOMIC_RELAXED);
}

static inline uint64_t dsm_ctr_get(int c)
{
    return __atomic_load_n(&dsm_ctr[c], __ATOMIC_RELAXED);
}

/* Where the time of a read miss goes (DSM_STATS=2; bench/dsm_bench reads it for docs/PERFORMANCE.md). The
 * faulting node stamps its fault entry, the request sent, the grant's arrival on the progress thread, the page
 * copied in, mprotect done, and the faulting thread awake again; a home stamps each read request it serves from
 * arrival to reply sent. Sums in ns and counts; when off, the fault path tests one flag. */
enum {
    DSM_FT_REQUEST, /* fault entry to the request handed to the transport (page lock, state checks) */
    DSM_FT_SEND,    /* the transport's send call, as far as it ends before the grant arrives */
    DSM_FT_WIRE,    /* request handed over to grant received: both paths, the home, the progress wake-up */
    DSM_FT_COPY,    /* the page copied from the message into the system view */
    DSM_FT_PROTECT, /* mprotect of the application view */
    DSM_FT_WAKE,    /* mprotect done to the faulting thread running again */
    DSM_FT_TOTAL,   /* fault entry to the handler's return (the kernel's trap and sigreturn are outside) */
    DSM_FT_HOME,    /* at a home: a read request's arrival to its reply sent */
    DSM_FT_MAX
};
extern int dsm_ft_on;
extern uint64_t dsm_ft_ns[DSM_FT_MAX], dsm_ft_n[DSM_FT_MAX];
/* Per page, the stamps of its last timed read miss at this node, and of the last read request it served as
 * home (when on): what the benchmarks take medians of. */
struct dsm_ft_page {
    uint64_t grant, filled, prot;                 /* written by the progress thread (dsm_pg_grant) */
    uint64_t entry, presend, sent, woken, done;   /* by the faulting thread, once the miss is accounted */
    uint64_t home_in, home_out;                   /* at the home */
};
extern struct dsm_ft_page *dsm_ft_pages;

static inline uint64_t dsm_ft_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void dsm_ft_add(int phase, uint64_t ns)
{
    __atomic_add_fetch(&dsm_ft_ns[phase], ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&dsm_ft_n[phase], 1, __ATOMIC_RELAXED);
}

/* A copy of the sums and counts (either may be NULL). */
void dsm_ft_get(uint64_t ns[DSM_FT_MAX], uint64_t n[DSM_FT_MAX]);

int dsm_stats_setup(void);
void dsm_stats_teardown(void);
/* Page p, homed here, changed hands (its data was sent). */
void dsm_stats_page_moved(size_t p);
void dsm_stats_print(FILE *f, int rank, const char *tp_name);

#endif /* DSM_STATS_H */
