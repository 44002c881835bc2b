/* SPDX-License-Identifier: MIT */
/* stats.h - coherence counters of this node (stats.c). */
#ifndef DSM_STATS_H
#define DSM_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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

int dsm_stats_setup(void);
void dsm_stats_teardown(void);
/* Page p, homed here, changed hands (its data was sent). */
void dsm_stats_page_moved(size_t p);
void dsm_stats_print(FILE *f, int rank, const char *tp_name);

#endif /* DSM_STATS_H */
