/* SPDX-License-Identifier: MIT */
/*
 * stats.c - per-node coherence counters (dsm_stats, DSM_STATS=1) and the count of moves of each page homed
 * here, from which dsm_finalize names the ten pages that moved most (the usual sign of false sharing).
 * Counters are relaxed atomics: the fault path may bump them.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/region.h"
#include "libdsm/stats.h"

uint64_t dsm_ctr[DSM_CTR_MAX];
static uint32_t *moves; /* [npages] */
static size_t nmoves;
int dsm_ft_on;
uint64_t dsm_ft_ns[DSM_FT_MAX], dsm_ft_n[DSM_FT_MAX];
struct dsm_ft_page *dsm_ft_pages; /* [npages] when DSM_STATS=2 */

void dsm_ft_get(uint64_t ns[DSM_FT_MAX], uint64_t n[DSM_FT_MAX])
{
    for (int i = 0; i < DSM_FT_MAX; i++) {
        if (ns)
            ns[i] = __atomic_load_n(&dsm_ft_ns[i], __ATOMIC_RELAXED);
        if (n)
            n[i] = __atomic_load_n(&dsm_ft_n[i], __ATOMIC_RELAXED);
    }
}

int dsm_stats_setup(void)
{
    memset(dsm_ctr, 0, sizeof dsm_ctr);
    memset(dsm_ft_ns, 0, sizeof dsm_ft_ns);
    memset(dsm_ft_n, 0, sizeof dsm_ft_n);
    nmoves = dsm_region.npages;
    if (dsm_core_config()->stats >= 2) {
        /* Address space only: pages of it are touched as faults stamp them. */
        void *t = mmap(NULL, nmoves * sizeof *dsm_ft_pages, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (t == MAP_FAILED)
            return DSM_ENOMEM;
        dsm_ft_pages = t;
        __atomic_store_n(&dsm_ft_on, 1, __ATOMIC_RELEASE);
    }
    void *m = mmap(NULL, nmoves * sizeof *moves, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        return DSM_ENOMEM;
    moves = m;
    return DSM_OK;
}

void dsm_stats_teardown(void)
{
    __atomic_store_n(&dsm_ft_on, 0, __ATOMIC_RELEASE);
    if (dsm_ft_pages)
        munmap(dsm_ft_pages, nmoves * sizeof *dsm_ft_pages);
    dsm_ft_pages = NULL;
    if (moves)
        munmap(moves, nmoves * sizeof *moves);
    moves = NULL;
}

void dsm_stats_page_moved(size_t p)
{
    __atomic_add_fetch(&moves[p], 1, __ATOMIC_RELAXED);
}

DSM_API int dsm_stats(dsm_stats_t *s)
{
    if (!s || s->size < sizeof(size_t))
        return DSM_EINVAL;
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    dsm_stats_t v;
    memset(&v, 0, sizeof v);
    v.size = sizeof v;
    v.read_faults = dsm_ctr_get(DSM_CTR_READ_FAULT);
    v.write_faults = dsm_ctr_get(DSM_CTR_WRITE_FAULT);
    v.upgrades = dsm_ctr_get(DSM_CTR_UPGRADE);
    v.pages_received = dsm_ctr_get(DSM_CTR_PAGE_IN);
    v.pages_sent = dsm_ctr_get(DSM_CTR_PAGE_OUT);
    v.invalidations_received = dsm_ctr_get(DSM_CTR_INV_IN);
    v.invalidations_sent = dsm_ctr_get(DSM_CTR_INV_OUT);
    v.recalls_received = dsm_ctr_get(DSM_CTR_RECALL_IN);
    v.migrations = dsm_ctr_get(DSM_CTR_MIGRATION);
    dsm_stats_core_t c;
    dsm_core_stats(&c);
    v.messages_sent = c.msgs_tx;
    v.bytes_sent = c.bytes_tx;
    v.messages_received = c.msgs_rx;
    v.bytes_received = c.bytes_rx;
    /* Copy only what the caller's struct has room for: older callers pass a smaller size. */
    size_t n = s->size < sizeof v ? s->size : sizeof v;
    memcpy((char *)s + sizeof(size_t), (char *)&v + sizeof(size_t), n - sizeof(size_t));
    return DSM_OK;
}

void dsm_stats_print(FILE *f, int rank, const char *tp_name)
{
    dsm_stats_core_t c;
    dsm_core_stats(&c);
    fprintf(f,
            "libdsm[%d] stats: transport %s, sent %llu messages %llu bytes, received %llu messages %llu bytes; "
            "faults %llu read %llu write %llu upgrade (%llu answered directly); pages in %llu out %llu (%llu placed); invalidations in %llu out %llu; "
            "recalls %llu; migrations %llu\n",
            rank, tp_name, (unsigned long long)c.msgs_tx, (unsigned long long)c.bytes_tx,
            (unsigned long long)c.msgs_rx, (unsigned long long)c.bytes_rx,
            (unsigned long long)dsm_ctr_get(DSM_CTR_READ_FAULT), (unsigned long long)dsm_ctr_get(DSM_CTR_WRITE_FAULT),
            (unsigned long long)dsm_ctr_get(DSM_CTR_UPGRADE), (unsigned long long)dsm_ctr_get(DSM_CTR_DIRECT),
            (unsigned long long)dsm_ctr_get(DSM_CTR_PAGE_IN),
            (unsigned long long)dsm_ctr_get(DSM_CTR_PAGE_OUT), (unsigned long long)dsm_ctr_get(DSM_CTR_PAGE_PLACED),
            (unsigned long long)dsm_ctr_get(DSM_CTR_INV_IN),
            (unsigned long long)dsm_ctr_get(DSM_CTR_INV_OUT), (unsigned long long)dsm_ctr_get(DSM_CTR_RECALL_IN),
            (unsigned long long)dsm_ctr_get(DSM_CTR_MIGRATION));
    if (dsm_ft_on) {
        uint64_t ns[DSM_FT_MAX], n[DSM_FT_MAX];
        dsm_ft_get(ns, n);
#define FT_US(i_x) (n[i_x] ? (double)ns[i_x] / (double)n[i_x] / 1000.0 : 0.0)
        fprintf(f,
                "libdsm[%d] read-miss time, mean of %llu misses: request %.2f us, round trip %.2f us (of which the "
                "send call %.2f us), copy %.2f us, mprotect %.2f us, wake-up %.2f us, total in the handler %.2f us; "
                "as home, %llu read requests served in %.2f us each\n",
                rank, (unsigned long long)n[DSM_FT_TOTAL], FT_US(DSM_FT_REQUEST), FT_US(DSM_FT_WIRE), FT_US(DSM_FT_SEND),
                FT_US(DSM_FT_COPY), FT_US(DSM_FT_PROTECT), FT_US(DSM_FT_WAKE), FT_US(DSM_FT_TOTAL),
                (unsigned long long)n[DSM_FT_HOME], FT_US(DSM_FT_HOME));
#undef FT_US
    }
    /* The ten pages homed here that moved most. */
    size_t top[10];
    int ntop = 0;
    /* Pages homed here: collective ones in the mapped part, and this node's arena. */
    size_t mapped = dsm_region.mapped >> DSM_PAGE_SHIFT;
    size_t arena = dsm_region.arena_first + (size_t)rank * dsm_region.arena_pages;
    for (size_t p = 0; moves && p < arena + dsm_region.arena_pages; p++) {
        if (p == mapped && p < arena)
            p = arena;
        if (!moves[p])
            continue;
        int at;
        if (ntop < 10)
            at = ntop++;
        else if (moves[p] > moves[top[9]])
            at = 9;
        else
            continue;
        top[at] = p;
        for (; at > 0 && moves[top[at - 1]] < moves[top[at]]; at--) {
            size_t t = top[at];
            top[at] = top[at - 1];
            top[at - 1] = t;
        }
    }
    if (ntop) {
        fprintf(f, "libdsm[%d] pages homed here that moved most:", rank);
        for (int i = 0; i < ntop; i++)
            fprintf(f, " %p (%u)", (void *)(dsm_region.app + (top[i] << DSM_PAGE_SHIFT)), moves[top[i]]);
        fprintf(f, "\n");
    }
}
