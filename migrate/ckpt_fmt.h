/* SPDX-License-Identifier: MIT */
/*
 * ckpt_fmt.h - the checkpoint file format (ckpt.c writes it) and its checked readers. The readers take bytes
 * from a file anyone may have written: they depend on nothing but those bytes and what the reading node
 * expects, so the fuzz target (tests/fuzz/fuzz_ckpt.c) runs them alone.
 */
#ifndef DSM_CKPT_FMT_H
#define DSM_CKPT_FMT_H

#include <stddef.h>
#include <stdint.h>

#define DSM_CKPT_PART_MAGIC 0x315452415044534dull /* "MSDPART1" */
#define DSM_CKPT_MANI_MAGIC 0x31494e414d44534dull /* "MSDMANI1" */
#define DSM_CKPT_VERSION 1u
#define DSM_CKPT_HDR_LEN 64u
#define DSM_CKPT_SUM_INIT 0xcbf29ce484222325ull

enum { DSM_CKPT_SEC_ALLOC = 1, DSM_CKPT_SEC_MALLOC = 2, DSM_CKPT_SEC_THREADS = 3, DSM_CKPT_SEC_PAGES = 4,
       DSM_CKPT_SEC_MAX };

/* What the reading node expects of a checkpoint: its job and memory layout. */
typedef struct dsm_ckpt_expect {
    uint32_t rank, size;
    uint64_t code, root;               /* the binary's hash, dsm_root's offset */
    uint64_t region_size, arena_pages; /* DSM_HEAP_SIZE's layout */
    uint64_t npages, arena_first, page_size;
} dsm_ckpt_expect_t;

/* The sections of one node's part, pointing into its bytes. */
typedef struct dsm_ckpt_part {
    const uint8_t *sec[DSM_CKPT_SEC_MAX];
    size_t sec_len[DSM_CKPT_SEC_MAX];
    uint64_t pages; /* entries of the page section */
} dsm_ckpt_part_t;

uint64_t dsm_ckpt_sum(uint64_t h, const uint8_t *p, size_t n);

/* The manifest's length for a job of size nodes. */
size_t dsm_ckpt_manifest_len(uint32_t size);

/* Check got bytes of a manifest (read with room for one more, so a longer file shows). On DSM_OK, the job's
 * canary and pointer guard, and the length and checksum this node's part must have. Else DSM_EINVAL (not a
 * manifest, truncated, corrupted) or DSM_EMISMATCH (another node count, binary or layout), *why says which. */
int dsm_ckpt_parse_manifest(const uint8_t *m, size_t got, const dsm_ckpt_expect_t *e, uint64_t *canary,
                            uint64_t *guard, uint64_t *part_len, uint64_t *part_sum, const char **why);

/* Check a node's part of len bytes against the manifest's length and checksum and find its sections; every
 * page entry names a page this node may restore. DSM_OK, DSM_EINVAL or DSM_EMISMATCH with *why. */
int dsm_ckpt_parse_part(const uint8_t *b, size_t len, uint64_t want_len, uint64_t want_sum,
                        const dsm_ckpt_expect_t *e, dsm_ckpt_part_t *pt, const char **why);

#endif
