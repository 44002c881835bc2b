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
    uint8_t *kind;       /* [npages]: DSM_KIND_* */
} dsm_region_t;

/* What a page of the range is. */
enum {
    DSM_KIND_NONE = 0,     /* not allocated: an access is a real SIGSEGV */
    DSM_KIND_COHERENT = 1, /* dsm_alloc, dsm_alloc_home: cached, coherent */
    DSM_KIND_ATOMIC = 2,   /* dsm_alloc_atomic: lives at its home only, reached by atomic calls */
};

extern dsm_region_t dsm_region;

/* The kind of the page holding addr (DSM_KIND_NONE outside the mapped range). Async-signal-safe. */
static inline int dsm_region_kind(const void *addr, size_t *page_p)
{
    uintptr_t a = (uintptr_t)addr, b = (uintptr_t)dsm_region.app;
    if (!b || a < b || a >= b + __atomic_load_n(&dsm_region.mapped, __ATOMIC_ACQUIRE))
        return DSM_KIND_NONE;
    size_t p = (a - b) >> DSM_PAGE_SHIFT;
    *page_p = p;
    return __atomic_load_n(&dsm_region.kind[p], __ATOMIC_ACQUIRE);
}

/* Is addr in coherent shared memory? Async-signal-safe. */
static inline int dsm_region_page(const void *addr, size_t *page_p)
{
    return dsm_region_kind(addr, page_p) == DSM_KIND_COHERENT;
}

/* Is [addr, addr+len) entirely coherent shared memory? Sets the first page and the count. */
int dsm_region_span(const void *addr, size_t len, size_t *first_p, size_t *n_p);

/* The registration of the chunk holding page p, and p's offset in it (for one-sided access to its home). */
const dsm_mreg_t *dsm_region_mreg(size_t p, uint64_t *off_p);

/* Collective: make sure [0, end) of the range is backed and registered with the transports. */
int dsm_region_grow(size_t end);

/* Set the protection of n application-view pages from page p: 0 none, 1 read, 2 read-write.
 * Async-signal-safe. Returns 0 or -errno. */
int dsm_region_protect(size_t p, size_t n, int prot);

#endif /* DSM_REGION_H */
