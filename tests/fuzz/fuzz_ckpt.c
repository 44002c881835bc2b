/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the checkpoint reader (migrate/ckpt_fmt.c), fed a manifest or a node's part as dsm_restore
 * reads them from disk. The first byte picks which and the reading node's rank and job size. A part is tried
 * twice: as given, and inside a header with the right checksum, so the section and page parsers are reached.
 * What the reader accepts must lie within the input: every section inside the payload, the page section
 * exactly its entries, and every page index inside the node's memory. Pages are 64 bytes here, so inputs
 * stay small. Build and run: make fuzz (tests/fuzz/Makefile.inc).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "migrate/ckpt_fmt.h"
#include "transport/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_part(const uint8_t *b, size_t len, const dsm_ckpt_expect_t *e, const dsm_ckpt_part_t *pt)
{
    const uint8_t *pay = b + DSM_CKPT_HDR_LEN, *end = b + len;
    for (int s = 1; s < DSM_CKPT_SEC_MAX; s++)
        if (!pt->sec[s] || pt->sec[s] < pay || pt->sec_len[s] > (size_t)(end - pt->sec[s]))
            abort();
    const uint8_t *pg = pt->sec[DSM_CKPT_SEC_PAGES];
    if (pt->sec_len[DSM_CKPT_SEC_PAGES] != 8 + pt->pages * (8 + e->page_size))
        abort();
    uint64_t arena = e->arena_first + (uint64_t)e->rank * e->arena_pages;
    for (uint64_t i = 0; i < pt->pages; i++) {
        uint64_t p = dsm_le64_get(pg + 8 + i * (8 + e->page_size));
        if (p >= e->npages || (p >= e->arena_first && (p < arena || p >= arena + e->arena_pages)))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++;
    size--;
    dsm_ckpt_expect_t e = {.size = 1u + (sel >> 1 & 7u), .code = 0x1122334455667788ull, .root = 4096,
                           .region_size = 1u << 20, .arena_pages = 16, .npages = 256, .arena_first = 128,
                           .page_size = 64};
    e.rank = (sel >> 4) % e.size;
    const char *why = NULL;
    if (!(sel & 1)) {
        uint64_t canary, guard, len, sum;
        int rc = dsm_ckpt_parse_manifest(data, size, &e, &canary, &guard, &len, &sum, &why);
        if (rc != DSM_OK && !why)
            abort(); /* a refusal always says why */
        if (rc == DSM_OK && size != dsm_ckpt_manifest_len(e.size))
            abort();
        return 0;
    }
    dsm_ckpt_part_t pt;
    int rc = dsm_ckpt_parse_part(data, size, size, size >= 64 ? dsm_le64_get(data + 56) : 0, &e, &pt, &why);
    if (rc != DSM_OK && !why)
        abort();
    if (rc == DSM_OK)
        check_part(data, size, &e, &pt);
    /* The same bytes as the payload of a part with a right header. */
    uint8_t *b = malloc(DSM_CKPT_HDR_LEN + size);
    if (!b)
        return 0;
    uint64_t sum = dsm_ckpt_sum(DSM_CKPT_SUM_INIT, data, size);
    memset(b, 0, DSM_CKPT_HDR_LEN);
    dsm_le64_put(b, DSM_CKPT_PART_MAGIC);
    dsm_le32_put(b + 8, DSM_CKPT_VERSION);
    dsm_le32_put(b + 12, e.rank);
    dsm_le32_put(b + 16, e.size);
    dsm_le64_put(b + 24, e.code);
    dsm_le64_put(b + 32, e.region_size);
    dsm_le64_put(b + 40, e.arena_pages);
    dsm_le64_put(b + 48, size);
    dsm_le64_put(b + 56, sum);
    if (size)
        memcpy(b + DSM_CKPT_HDR_LEN, data, size);
    size_t len = DSM_CKPT_HDR_LEN + size;
    why = NULL;
    rc = dsm_ckpt_parse_part(b, len, len, sum, &e, &pt, &why);
    if (rc != DSM_OK && !why)
        abort();
    if (rc == DSM_OK)
        check_part(b, len, &e, &pt);
    free(b);
    return 0;
}
