/* SPDX-License-Identifier: MIT */
/*
 * region.c - the shared range (region.h, DESIGN.md 4.1). Owns the two views, the memfd, chunk growth and the
 * per-page home table; knows nothing of the coherence protocol (pg_fault.c, dir_msi.c) beyond setting page
 * protection. The reservation is agreed collectively: every node reports its range (or its failure), so a
 * clash on any node fails dsm_init on all of them with the cause named, instead of leaving the others waiting.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/region.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* The collective part is mapped and registered at least this much at a time: per-chunk registration (rxe has
 * no on-demand paging) and few mappings. */
#define CHUNK_MIN (16u << 20)

dsm_region_t dsm_region = {.memfd = -1};

static struct chunk {
    struct chunk *next;
    dsm_mreg_t *mreg;
    size_t from, to;  /* byte offsets in the range */
} *chunks;

static void *reserve_meta(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Map [from, to) of the memfd into both views. */
static int map_views(size_t from, size_t to)
{
    dsm_region_t *r = &dsm_region;
    size_t len = to - from;
    void *a = mmap(r->app + from, len, PROT_NONE, MAP_SHARED | MAP_FIXED, r->memfd, (off_t)from);
    void *s = a == MAP_FAILED ? MAP_FAILED
                              : mmap(r->sys + from, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, r->memfd,
                                     (off_t)from);
    if (a == MAP_FAILED || s == MAP_FAILED) {
        int e = errno;
        dsm_err("cannot map %zu bytes of shared memory: %s%s", len, strerror(e),
                e == ENOMEM ? " (the process may have reached vm.max_map_count; see dsm_info)" : "");
        return DSM_ENOMEM;
    }
    /* A fork must not share or copy the views (the child would see pages change under it). */
    madvise(r->app + from, len, MADV_DONTFORK);
    madvise(r->sys + from, len, MADV_DONTFORK);
    return DSM_OK;
}

static int reserve_local(const dsm_config_t *cfg)
{
    dsm_region_t *r = &dsm_region;
    void *want = (void *)(uintptr_t)cfg->base;
    void *p = mmap(want, cfg->heap_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                   -1, 0);
    if (p == MAP_FAILED || p != want) {
        int e = p == MAP_FAILED ? errno : EEXIST;
        if (p != MAP_FAILED)
            munmap(p, cfg->heap_size);
        dsm_err("cannot reserve the shared range at DSM_BASE=0x%llx (DSM_HEAP_SIZE=%llu bytes): %s; "
                "choose a free range with DSM_BASE or a smaller DSM_HEAP_SIZE",
                (unsigned long long)cfg->base, (unsigned long long)cfg->heap_size,
                e == EEXIST ? "the range overlaps an existing mapping" : strerror(e));
        return DSM_ENOMEM;
    }
    r->app = p;
    r->size = cfg->heap_size;
    r->npages = cfg->heap_size >> DSM_PAGE_SHIFT;
    p = mmap(NULL, cfg->heap_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        dsm_err("cannot reserve %llu bytes of address space for the system view: %s",
                (unsigned long long)cfg->heap_size, strerror(errno));
        return DSM_ENOMEM;
    }
    r->sys = p;
    r->memfd = memfd_create("libdsm-heap", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (r->memfd < 0) {
        dsm_err("memfd_create: %s", strerror(errno));
        return DSM_ESYS;
    }
    /* Half the range for the collective allocators, half for the per-node arenas of dsm_malloc. */
    r->nodes = dsm_core_size();
    r->arena_first = r->npages / 2;
    r->arena_pages = (r->npages - r->arena_first) / (size_t)r->nodes;
    if (r->arena_pages < 16) {
        dsm_err("DSM_HEAP_SIZE=%zu is too small for %d nodes (each node's dsm_malloc arena needs 64 KiB)",
                r->size, r->nodes);
        return DSM_ENOMEM;
    }
    /* The file spans the whole range (sparse: memory is used only by pages touched). */
    if (ftruncate(r->memfd, (off_t)r->size) < 0) {
        dsm_err("cannot size the shared memory file to %zu bytes: %s", r->size, strerror(errno));
        return DSM_ENOMEM;
    }
    /* Local peers map this file (shm transport): sealed, none of them can shrink it under the others. */
    if (fcntl(r->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        dsm_err("cannot seal the shared memory file: %s", strerror(errno));
        return DSM_ESYS;
    }
    r->home = reserve_meta(r->arena_first * sizeof *r->home);
    r->kind = reserve_meta(r->arena_first);
    if (!r->home || !r->kind) {
        dsm_err("cannot reserve the page table for %zu pages: %s", r->npages, strerror(errno));
        return DSM_ENOMEM;
    }
    /* Collective pages start unallocated (kind none); the table's pages are touched only when in use. */
    size_t from = r->arena_first << DSM_PAGE_SHIFT, len = (r->arena_pages * (size_t)r->nodes) << DSM_PAGE_SHIFT;
    return map_views(from, from + len);
}

int dsm_region_reserve(void)
{
    const dsm_config_t *cfg = dsm_core_config();
    dsm_boot_t *b = dsm_core_boot();
    char mine[64];
    int lrc = reserve_local(cfg);
    if (lrc == DSM_OK)
        snprintf(mine, sizeof mine, "%llx:%llx", (unsigned long long)cfg->base, (unsigned long long)cfg->heap_size);
    else
        snprintf(mine, sizeof mine, "fail");
    int rc = b->put(b, "region", mine, strlen(mine) + 1);
    if (rc == DSM_OK)
        rc = b->fence(b);
    for (int r = 0; rc == DSM_OK && r < b->size; r++) {
        char theirs[64];
        size_t n = sizeof theirs - 1;
        rc = b->get(b, r, "region", theirs, &n);
        if (rc != DSM_OK)
            break;
        theirs[n] = '\0';
        if (strcmp(theirs, mine) != 0) {
            if (strcmp(theirs, "fail") == 0 || strcmp(mine, "fail") == 0)
                dsm_err("node %d could not reserve the shared range (its log says why)",
                        strcmp(mine, "fail") ? r : b->rank);
            else
                dsm_err("the shared range differs between nodes: node %d has %s, node %d has %s "
                        "(DSM_BASE and DSM_HEAP_SIZE must be the same everywhere)", b->rank, mine, r, theirs);
            rc = DSM_EMISMATCH;
        }
    }
    if (rc == DSM_OK && lrc != DSM_OK)
        rc = lrc;
    if (rc != DSM_OK)
        dsm_region_release();
    return rc;
}

int dsm_region_grow(size_t end)
{
    dsm_region_t *r = &dsm_region;
    size_t limit = r->arena_first << DSM_PAGE_SHIFT;
    if (end <= r->mapped)
        return DSM_OK;
    if (end > limit)
        return DSM_ENOMEM;
    size_t to = r->mapped + CHUNK_MIN;
    if (to < end)
        to = (end + CHUNK_MIN - 1) / CHUNK_MIN * CHUNK_MIN;
    if (to > limit)
        to = limit;
    struct chunk *c = calloc(1, sizeof *c);
    if (!c)
        return DSM_ENOMEM;
    int rc = map_views(r->mapped, to);
    /* Registration is collective; every node grows in the same calls, so every node reaches it, also after a
     * local failure, and the failure is then reported by all. */
    int mrc = dsm_mreg_create(r->sys + r->mapped, to - r->mapped, r->memfd, r->mapped, &c->mreg);
    if (rc == DSM_OK && mrc != DSM_OK)
        rc = mrc;
    if (rc != DSM_OK) {
        free(c);
        return rc;
    }
    c->from = r->mapped;
    c->to = to;
    c->next = chunks;
    __atomic_store_n(&chunks, c, __ATOMIC_RELEASE); /* readers (atomic.c) walk it without a lock */
    for (size_t p = r->mapped >> DSM_PAGE_SHIFT; p < to >> DSM_PAGE_SHIFT; p++)
        r->home[p] = -1;
    __atomic_store_n(&r->mapped, to, __ATOMIC_RELEASE);
    return DSM_OK;
}

int dsm_region_span(const void *addr, size_t len, size_t *first_p, size_t *n_p)
{
    size_t first, last;
    if (len == 0 || !dsm_region_page(addr, &first) || !dsm_region_page((const uint8_t *)addr + len - 1, &last))
        return 0;
    for (size_t p = first + 1; p < last; p++)
        if (dsm_page_kind(p) != DSM_KIND_COHERENT)
            return 0;
    *first_p = first;
    *n_p = last - first + 1;
    return 1;
}

const dsm_mreg_t *dsm_region_mreg(size_t p, uint64_t *off_p)
{
    size_t off = p << DSM_PAGE_SHIFT;
    for (struct chunk *c = __atomic_load_n(&chunks, __ATOMIC_ACQUIRE); c; c = c->next)
        if (off >= c->from && off < c->to) {
            *off_p = off - c->from;
            return c->mreg;
        }
    return NULL;
}

int dsm_region_protect(size_t p, size_t n, int prot)
{
    static const int prots[] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE};
    if (mprotect(dsm_region.app + (p << DSM_PAGE_SHIFT), n << DSM_PAGE_SHIFT, prots[prot]) < 0)
        return -errno;
    return 0;
}

void dsm_region_release(void)
{
    dsm_region_t *r = &dsm_region;
    while (chunks) {
        struct chunk *n = chunks->next;
        dsm_mreg_forget(chunks->mreg);
        free(chunks);
        chunks = n;
    }
    if (r->app)
        munmap(r->app, r->size);
    if (r->sys)
        munmap(r->sys, r->size);
    if (r->home)
        munmap(r->home, r->arena_first * sizeof *r->home);
    if (r->kind)
        munmap(r->kind, r->arena_first);
    if (r->memfd >= 0)
        close(r->memfd);
    *r = (dsm_region_t){.memfd = -1};
}
