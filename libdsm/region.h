/* SPDX-License-Identifier: MIT */
/*
 * region.h - the shared range (DESIGN.md 4.1): one memfd mapped twice.
 *
 *   [0, arena_first)        pages of the collective allocators (dsm_alloc...), mapped and registered with the
 *                           transports in chunks as they grow, never whole
 *   [arena_first, npages)   one arena per node for dsm_malloc, every page homed on its arena's node
 *                           (computed, not stored); mapped at dsm_init, touched only when used
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
    int32_t *home;       /* [arena_first]: home node of each collective page, -1 when unallocated */
    uint8_t *kind;       /* [arena_first]: DSM_KIND_* */
    size_t arena_first;  /* first page of the arenas */
    size_t arena_pages;  /* pages per node's arena */
    int nodes;
} dsm_region_t;

/* What a page of the range is. */
enum {
    DSM_KIND_NONE = 0,     /* not allocated: an access is a real SIGSEGV */
    DSM_KIND_COHERENT = 1, /* dsm_alloc, dsm_alloc_home: cached, coherent */
    DSM_KIND_ATOMIC = 2,   /* dsm_alloc_atomic: lives at its home only, reached by atomic calls */
};

extern dsm_region_t dsm_region;

/* The kind and home of page p (any index). Async-signal-safe. */
static inline int dsm_page_kind(size_t p)
{
    const dsm_region_t *r = &dsm_region;
    if (p >= r->npages)
        return DSM_KIND_NONE;
    if (p >= r->arena_first)
        return (p - r->arena_first) / r->arena_pages < (size_t)r->nodes ? DSM_KIND_COHERENT : DSM_KIND_NONE;
    return __atomic_load_n(&r->kind[p], __ATOMIC_ACQUIRE);
}

static inline int dsm_page_home(size_t p)
{
    const dsm_region_t *r = &dsm_region;
    return p >= r->arena_first ? (int)((p - r->arena_first) / r->arena_pages) : r->home[p];
}

/* The kind of the page holding addr (DSM_KIND_NONE outside the range). Async-signal-safe. */
static inline int dsm_region_kind(const void *addr, size_t *page_p)
{
    uintptr_t a = (uintptr_t)addr, b = (uintptr_t)dsm_region.app;
    if (!b || a < b || a >= b + dsm_region.size)
        return DSM_KIND_NONE;
    size_t p = (a - b) >> DSM_PAGE_SHIFT;
    *page_p = p;
    return dsm_page_kind(p);
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
