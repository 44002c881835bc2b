/* SPDX-License-Identifier: MIT */
/*
 * region.h - the shared range (DESIGN.md 4.1): one memfd mapped twice, grown in chunks.
 *
 *   application view  at DSM_BASE on every node; each page's protection is its coherence state
 *                     (none = Invalid, read = Shared, read-write = Modified)
 *   system view       anywhere in this process, always read-write; page data moves through it
 *
 * Both views map the same memfd pages, so a page filled through the system view is what the application sees
 * once its protection is raised. Per-page metadata (home, local state, directory entry) lives in arrays
 * reserved for the whole range with MAP_NORESERVE and touched only for pages in use, so the fault path never
 * allocates.
 */
#ifndef DSM_REGION_H
#define DSM_REGION_H

#include <stddef.h>
#include <stdint.h>

#include "libdsm/core.h"

#define DSM_PAGE_SIZE 4096u
#define DSM_PAGE_SHIFT 12

typedef struct dsm_region {
    uint8_t *app;        /* application view, DSM_BASE */
    uint8_t *sys;        /* system view */
    size_t size;         /* reserved bytes */
    size_t mapped;       /* bytes backed by the memfd, from the start, in chunks */
    size_t npages;       /* size / page */
    int memfd;
    int32_t *home;       /* [npages]: home node of each mapped page, -1 when unallocated */
} dsm_region_t;

extern dsm_region_t dsm_region;

/* Is addr inside the mapped, allocated part of the application view? Async-signal-safe. */
static inline int dsm_region_page(const void *addr, size_t *page_p)
{
    uintptr_t a = (uintptr_t)addr, b = (uintptr_t)dsm_region.app;
    if (!b || a < b || a >= b + dsm_region.mapped)
        return 0;
    size_t p = (a - b) >> DSM_PAGE_SHIFT;
    if (__atomic_load_n(&dsm_region.home[p], __ATOMIC_ACQUIRE) < 0)
        return 0;
    *page_p = p;
    return 1;
}

/* Collective: make sure [0, end) of the range is backed and registered with the transports. */
int dsm_region_grow(size_t end);

/* Set the protection of n application-view pages from page p: 0 none, 1 read, 2 read-write.
 * Async-signal-safe. Returns 0 or -errno. */
int dsm_region_protect(size_t p, size_t n, int prot);

#endif /* DSM_REGION_H */
