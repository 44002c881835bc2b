/* SPDX-License-Identifier: MIT */
/*
 * bulk.c - dsm_prefetch, dsm_get and dsm_put (DESIGN.md 2): ranges of shared memory fetched in one batch
 * (every page request in flight at once) instead of page by page. The copies themselves are plain memcpy with
 * no libdsm lock held, so a page taken away between the prefetch and the copy simply faults back in.
 */
#include "config.h"

#include <string.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/region.h"

/* Does [p, p+len) touch the shared range at all? */
static int touches_region(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)dsm_region.app;
    return b && a < b + dsm_region.size && a + len > b;
}

DSM_API int dsm_prefetch(const void *addr, size_t len, int mode)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    size_t first, n;
    if (len == 0)
        return DSM_OK;
    if ((mode != DSM_READ && mode != DSM_WRITE) || !dsm_region_span(addr, len, &first, &n))
        return DSM_EINVAL;
    dsm_pg_prefetch(first, n, mode == DSM_WRITE);
    return DSM_OK;
}

DSM_API int dsm_get(void *dst, const void *src, size_t len)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (len == 0)
        return DSM_OK;
    int rc = dsm_prefetch(src, len, DSM_READ);
    if (rc)
        return rc;
    if (touches_region(dst, len) && (rc = dsm_prefetch(dst, len, DSM_WRITE)))
        return rc;
    memmove(dst, src, len);
    return DSM_OK;
}

DSM_API int dsm_put(void *dst, const void *src, size_t len)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (len == 0)
        return DSM_OK;
    int rc;
    if (touches_region(src, len) && (rc = dsm_prefetch(src, len, DSM_READ)))
        return rc;
    if ((rc = dsm_prefetch(dst, len, DSM_WRITE)))
        return rc;
    memmove(dst, src, len);
    return DSM_OK;
}
