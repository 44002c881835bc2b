/* SPDX-License-Identifier: MIT */
/*
 * ckpt_fmt.c - checked readers of the checkpoint format (layout at the top of ckpt.c). Every length and index
 * read from the file is bounded before use: a truncated, corrupted or foreign file is refused with a reason.
 */
#include "config.h"

#include <string.h>

#include "dsm.h"
#include "migrate/ckpt_fmt.h"
#include "transport/wire.h"

uint64_t dsm_ckpt_sum(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

size_t dsm_ckpt_manifest_len(uint32_t size)
{
    return 56 + 16 * (size_t)size + 8;
}

static int refuse(const char **why, const char *what, int rc)
{
    *why = what;
    return rc;
}

int dsm_ckpt_parse_manifest(const uint8_t *m, size_t got, const dsm_ckpt_expect_t *e, uint64_t *canary,
                            uint64_t *guard, uint64_t *part_len, uint64_t *part_sum, const char **why)
{
    size_t n = dsm_ckpt_manifest_len(e->size);
    if (got < 16 || dsm_le64_get(m) != DSM_CKPT_MANI_MAGIC)
        return refuse(why, "is not a libdsm checkpoint manifest", DSM_EINVAL);
    if (dsm_le32_get(m + 8) != DSM_CKPT_VERSION)
        return refuse(why, "has another format version", DSM_EINVAL);
    if (dsm_le32_get(m + 12) != e->size)
        return refuse(why, "was written by a job with another node count", DSM_EMISMATCH);
    if (got != n || dsm_le64_get(m + n - 8) != dsm_ckpt_sum(DSM_CKPT_SUM_INIT, m, n - 8))
        return refuse(why, "is truncated or corrupted (checksum)", DSM_EINVAL);
    if (dsm_le64_get(m + 16) != e->code)
        return refuse(why, "was written by another binary (build-id or load addresses)", DSM_EMISMATCH);
    if (dsm_le64_get(m + 40) != e->root)
        return refuse(why, "has another memory layout (dsm_root)", DSM_EMISMATCH);
    *canary = dsm_le64_get(m + 24);
    *guard = dsm_le64_get(m + 32);
    *part_len = dsm_le64_get(m + 56 + 16 * (size_t)e->rank);
    *part_sum = dsm_le64_get(m + 64 + 16 * (size_t)e->rank);
    return DSM_OK;
}

int dsm_ckpt_parse_part(const uint8_t *b, size_t len, uint64_t want_len, uint64_t want_sum,
                        const dsm_ckpt_expect_t *e, dsm_ckpt_part_t *pt, const char **why)
{
    memset(pt, 0, sizeof *pt);
    if ((uint64_t)len != want_len || len < DSM_CKPT_HDR_LEN)
        return refuse(why, "is truncated or has another size than its manifest says", DSM_EINVAL);
    const uint8_t *pay = b + DSM_CKPT_HDR_LEN;
    size_t plen = len - DSM_CKPT_HDR_LEN;
    if (dsm_le64_get(b) != DSM_CKPT_PART_MAGIC || dsm_le32_get(b + 8) != DSM_CKPT_VERSION ||
        dsm_le32_get(b + 12) != e->rank || dsm_le32_get(b + 16) != e->size || dsm_le64_get(b + 24) != e->code)
        return refuse(why, "is not this node's part of this checkpoint", DSM_EINVAL);
    if (dsm_le64_get(b + 32) != e->region_size || dsm_le64_get(b + 40) != e->arena_pages)
        return refuse(why, "was written with another DSM_HEAP_SIZE", DSM_EMISMATCH);
    if (dsm_le64_get(b + 48) != plen || dsm_le64_get(b + 56) != want_sum ||
        dsm_ckpt_sum(DSM_CKPT_SUM_INIT, pay, plen) != want_sum)
        return refuse(why, "is corrupted (checksum)", DSM_EINVAL);
    for (size_t at = 0; at < plen;) {
        if (plen - at < 16)
            return refuse(why, "has a section cut short", DSM_EINVAL);
        uint32_t tag = dsm_le32_get(pay + at);
        uint64_t l = dsm_le64_get(pay + at + 8);
        at += 16;
        if (tag == 0 || tag >= DSM_CKPT_SEC_MAX || pt->sec[tag] || l > plen - at)
            return refuse(why, "has a bad section", DSM_EINVAL);
        pt->sec[tag] = pay + at;
        pt->sec_len[tag] = (size_t)l;
        at += (size_t)l;
    }
    const uint8_t *pg = pt->sec[DSM_CKPT_SEC_PAGES];
    size_t pl = pt->sec_len[DSM_CKPT_SEC_PAGES];
    if (!pt->sec[DSM_CKPT_SEC_ALLOC] || !pt->sec[DSM_CKPT_SEC_MALLOC] || !pt->sec[DSM_CKPT_SEC_THREADS] || !pg ||
        pl < 8)
        return refuse(why, "has a section missing", DSM_EINVAL);
    uint64_t count = dsm_le64_get(pg), entry = 8 + e->page_size;
    if (count > (pl - 8) / entry || pl != 8 + count * entry)
        return refuse(why, "has a bad page section", DSM_EINVAL);
    uint64_t arena = e->arena_first + (uint64_t)e->rank * e->arena_pages;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t p = dsm_le64_get(pg + 8 + i * entry);
        if (p >= e->npages || (p >= e->arena_first && (p < arena || p >= arena + e->arena_pages)))
            return refuse(why, "has a page outside this node's memory", DSM_EINVAL);
    }
    pt->pages = count;
    return DSM_OK;
}
