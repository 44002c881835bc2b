/* SPDX-License-Identifier: MIT */
/*
 * atomic.c - dsm_fetch_add, dsm_cas, dsm_atomic_load and dsm_atomic_store (DESIGN.md 2, 4.2).
 *   Ordinary (coherent) memory: the page is held Modified here for the operation, so it is atomic with respect
 *   to plain loads and stores on every node.
 *   dsm_alloc_atomic memory: the word lives only at its home and is never cached; the operation is one
 *   transport atomic on the home's registered memory (native on RDMA, one message on TCP), or a CPU atomic on
 *   the home's own memory when the caller is the home. One agent per word: on TCP both are CPU atomics at the
 *   home. Over RDMA without IBV_ATOMIC_GLOB the home goes through its own device too (dsm_rma_atomic_self), so
 *   device atomics never race with CPU atomics on the same word.
 * A misaligned or non-shared address is a usage error: reported, then abort(), like a bad pointer.
 */
#include "config.h"

#include <stdlib.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/region.h"

__attribute__((noreturn)) static void usage_error(const char *call, const void *addr)
{
    dsm_err("usage error: %s(%p): the address is not an 8-byte-aligned word of shared memory", call, addr);
    abort();
}

static uint64_t atomic_op(const char *call, uint64_t *addr, int op, uint64_t operand, uint64_t compare)
{
    size_t p;
    int kind = dsm_core_size() < 1 ? DSM_KIND_NONE : dsm_region_kind(addr, &p);
    if ((uintptr_t)addr % 8 || kind == DSM_KIND_NONE)
        usage_error(call, addr);
    if (kind == DSM_KIND_COHERENT)
        return dsm_pg_atomic(p, addr, op, operand, compare);
    int home = dsm_page_home(p);
    size_t off_in_range = (uintptr_t)addr - (uintptr_t)dsm_region.app;
    if (home == dsm_core_rank() && !dsm_rma_atomic_self()) {
        uint64_t *w = (uint64_t *)(dsm_region.sys + off_in_range), old;
        if (op == DSM_TP_ATOMIC_FADD)
            return __atomic_fetch_add(w, operand, __ATOMIC_SEQ_CST);
        old = compare;
        __atomic_compare_exchange_n(w, &old, operand, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        return old;
    }
    uint64_t chunk_off, old = 0;
    const dsm_mreg_t *m = dsm_region_mreg(p, &chunk_off);
    int rc = m ? dsm_rma_atomic(home, op, m, chunk_off + (off_in_range & (DSM_PAGE_SIZE - 1)), operand, compare,
                                &old)
               : DSM_EINVAL;
    if (rc != DSM_OK)
        dsm_fail_stop(home, "an atomic on dsm_alloc_atomic memory failed at its home");
    return old;
}

DSM_API uint64_t dsm_fetch_add(uint64_t *addr, uint64_t v)
{
    return atomic_op("dsm_fetch_add", addr, DSM_TP_ATOMIC_FADD, v, 0);
}

DSM_API uint64_t dsm_cas(uint64_t *addr, uint64_t expect, uint64_t desired)
{
    return atomic_op("dsm_cas", addr, DSM_TP_ATOMIC_CSWAP, desired, expect);
}

DSM_API uint64_t dsm_atomic_load(const uint64_t *addr)
{
    return atomic_op("dsm_atomic_load", (uint64_t *)addr, DSM_TP_ATOMIC_FADD, 0, 0);
}

DSM_API void dsm_atomic_store(uint64_t *addr, uint64_t v)
{
    /* The transports offer fetch-add and compare-swap; a store is a compare-swap that keeps trying. */
    uint64_t seen = atomic_op("dsm_atomic_store", addr, DSM_TP_ATOMIC_FADD, 0, 0);
    for (;;) {
        uint64_t old = atomic_op("dsm_atomic_store", addr, DSM_TP_ATOMIC_CSWAP, v, seen);
        if (old == seen)
            return;
        seen = old;
    }
}
