/* SPDX-License-Identifier: MIT */
/*
 * region.c - the shared range's address space (DESIGN.md 4.1): reserved at DSM_BASE for DSM_HEAP_SIZE bytes
 * on every node, inaccessible until the allocators map memory into it. The reservation is agreed collectively:
 * every node reports its range (or its failure), so a clash on any node fails dsm_init on all of them with the
 * cause named, instead of leaving the others waiting.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/log.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static void *region_base;
static size_t region_size;

int dsm_region_reserve(void)
{
    const dsm_config_t *cfg = dsm_core_config();
    dsm_boot_t *b = dsm_core_boot();
    void *want = (void *)(uintptr_t)cfg->base;
    char mine[64];
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
        snprintf(mine, sizeof mine, "fail");
    } else {
        region_base = p;
        region_size = cfg->heap_size;
        snprintf(mine, sizeof mine, "%llx:%llx", (unsigned long long)cfg->base, (unsigned long long)cfg->heap_size);
    }
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
                dsm_err("node %d could not reserve the shared range (its log says why)", strcmp(mine, "fail") ? r : b->rank);
            else
                dsm_err("the shared range differs between nodes: node %d has %s, node %d has %s "
                        "(DSM_BASE and DSM_HEAP_SIZE must be the same everywhere)", b->rank, mine, r, theirs);
            rc = DSM_EMISMATCH;
        }
    }
    if (rc == DSM_OK && !region_base)
        rc = DSM_ENOMEM;
    if (rc != DSM_OK)
        dsm_region_release();
    return rc;
}

void dsm_region_release(void)
{
    if (region_base)
        munmap(region_base, region_size);
    region_base = NULL;
    region_size = 0;
}
