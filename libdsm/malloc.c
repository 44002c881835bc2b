/* SPDX-License-Identifier: MIT */
/*
 * malloc.c - dsm_malloc and dsm_free (DESIGN.md 2): a local allocator of shared memory. Every node allocates
 * from its own arena (region.h), so its blocks are homed where they were allocated and two nodes' blocks never
 * share a page. Any node may free any block: a free from another node is a message to the arena's node, which
 * alone keeps the arena's bookkeeping (in private memory: no shared page is touched to allocate or free).
 *
 * Sizes up to 2 KiB come from size classes (16, 32, ..., 2048 bytes), each class carving whole pages into equal
 * blocks; larger sizes take runs of pages, first fit in a free-run list kept sorted and merged. Memory is
 * zero-filled: arena pages never handed out are zero, and a reused block is cleared by the allocating thread
 * when it is handed out (never at free: a free may run on the progress thread, which must not fault).
 *
 *   FREE     node -> arena owner   u64 offset of the block in the range (channel REQ, credit.c)
 *   FREE_ACK owner -> node         the same: gives the credit back
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/error.h"
#include "libdsm/log.h"
#include "libdsm/region.h"
#include "transport/wire.h"

enum { AM_FREE = 30, AM_FREE_ACK = 31 };

#define NCLASSES 8 /* 16 << 0 .. 16 << 7 = 2048 */
#define CLASS_MAX 2048u

/* Per arena page, in private memory at the arena's node. */
struct pginfo {
    uint8_t use;        /* PG_FREE, PG_SLAB, PG_RUN_HEAD, PG_RUN_BODY */
    uint8_t cls;        /* slab: size class */
    uint16_t nfree;     /* slab: free blocks */
    uint32_t run;       /* run head: pages in the run */
    uint32_t next;      /* slab with free blocks: next page of the class list (arena index + 1), 0 = none */
    uint64_t bits[4];   /* slab: allocated blocks (up to 256 per page) */
    uint64_t dirty[4];  /* slab: blocks that may hold old data */
};

enum { PG_FREE = 0, PG_SLAB, PG_RUN_HEAD, PG_RUN_BODY };

struct run {
    struct run *next;
    size_t first, n; /* arena page index, count */
};

static struct {
    pthread_mutex_t lock;
    struct pginfo *info; /* [arena_pages] */
    size_t npages;
    uint32_t partial[NCLASSES]; /* slabs with free blocks, list heads (index + 1) */
    struct run *runs;           /* free runs, sorted */
    size_t hwm;                 /* arena pages below this were handed out before: not known to be zero */
    uint64_t allocated;         /* bytes handed out, for dsm_info-style reports and tests */
} ar = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t arena_first(void)
{
    return dsm_region.arena_first + (size_t)dsm_core_rank() * dsm_region.arena_pages;
}

static uint8_t *page_addr(size_t i)
{
    return dsm_region.app + ((arena_first() + i) << DSM_PAGE_SHIFT);
}

static int class_of(size_t len)
{
    int c = 0;
    while ((16u << c) < len)
        c++;
    return c;
}

/* Take n pages from the free runs; returns the arena index or -1. */
static long run_take(size_t n)
{
    for (struct run **rp = &ar.runs; *rp; rp = &(*rp)->next) {
        struct run *r = *rp;
        if (r->n < n)
            continue;
        size_t first = r->first;
        r->first += n;
        r->n -= n;
        if (!r->n) {
            *rp = r->next;
            free(r);
        }
        return (long)first;
    }
    return -1;
}

/* Give n pages back, merging with neighbours. */
static int run_put(size_t first, size_t n)
{
    struct run *prev = NULL, *next = ar.runs;
    while (next && next->first < first) {
        prev = next;
        next = next->next;
    }
    if (prev && prev->first + prev->n == first) {
        prev->n += n;
        if (next && prev->first + prev->n == next->first) {
            prev->n += next->n;
            prev->next = next->next;
            free(next);
        }
        return DSM_OK;
    }
    if (next && first + n == next->first) {
        next->first = first;
        next->n += n;
        return DSM_OK;
    }
    struct run *r = malloc(sizeof *r);
    if (!r)
        return DSM_ENOMEM;
    r->first = first;
    r->n = n;
    r->next = next;
    if (prev)
        prev->next = r;
    else
        ar.runs = r;
    return DSM_OK;
}

/* Mark pages [i, i+n) handed out; returns whether they were all still untouched (zero). */
static int take_fresh(size_t i, size_t n)
{
    int fresh = i >= ar.hwm;
    if (i + n > ar.hwm)
        ar.hwm = i + n;
    return fresh;
}

static void *slab_alloc(int c, int *zero)
{
    size_t bsize = 16u << c, per = DSM_PAGE_SIZE / bsize;
    if (!ar.partial[c]) {
        long i = run_take(1);
        if (i < 0)
            return NULL;
        struct pginfo *g = &ar.info[i];
        memset(g, 0, sizeof *g);
        g->use = PG_SLAB;
        g->cls = (uint8_t)c;
        g->nfree = (uint16_t)per;
        if (!take_fresh((size_t)i, 1))
            memset(g->dirty, 0xff, sizeof g->dirty);
        ar.partial[c] = (uint32_t)i + 1;
    }
    size_t i = ar.partial[c] - 1;
    struct pginfo *g = &ar.info[i];
    size_t b = 0;
    while (g->bits[b / 64] >> (b % 64) & 1)
        b++;
    g->bits[b / 64] |= 1ull << (b % 64);
    if (--g->nfree == 0)
        ar.partial[c] = g->next;
    *zero = !(g->dirty[b / 64] >> (b % 64) & 1);
    return page_addr(i) + b * bsize;
}

DSM_API void *dsm_malloc(size_t len)
{
    if (dsm_core_size() < 1) {
        dsm_set_last_error(DSM_ENOTINIT);
        return NULL;
    }
    if (len == 0 || len > (dsm_region.arena_pages << DSM_PAGE_SHIFT)) {
        dsm_set_last_error(len == 0 ? DSM_EINVAL : DSM_ENOMEM);
        return NULL;
    }
    void *p;
    int zero = 0;
    size_t clear = len;
    pthread_mutex_lock(&ar.lock);
    if (len <= CLASS_MAX) {
        int c = class_of(len);
        p = slab_alloc(c, &zero);
        clear = 16u << c;
    } else {
        size_t n = (len + DSM_PAGE_SIZE - 1) >> DSM_PAGE_SHIFT;
        long i = run_take(n);
        p = NULL;
        if (i >= 0) {
            ar.info[i].use = PG_RUN_HEAD;
            ar.info[i].run = (uint32_t)n;
            for (size_t k = 1; k < n; k++)
                ar.info[i + k].use = PG_RUN_BODY;
            p = page_addr((size_t)i);
            clear = n << DSM_PAGE_SHIFT;
            zero = take_fresh((size_t)i, n);
        }
    }
    if (p)
        ar.allocated += clear;
    pthread_mutex_unlock(&ar.lock);
    if (!p) {
        dsm_err("dsm_malloc(%zu): this node's arena (%zu bytes) is full", len,
                dsm_region.arena_pages << DSM_PAGE_SHIFT);
        dsm_set_last_error(DSM_ENOMEM);
        return NULL;
    }
    /* Outside the lock: clearing touches shared memory, which may fault. */
    if (!zero)
        memset(p, 0, clear);
    return p;
}

/* Free the block at offset off of this node's arena; touches no shared memory (it may run on the progress
 * thread). Returns DSM_EINVAL for anything but a live block. */
static int free_local(size_t off)
{
    size_t first = arena_first() << DSM_PAGE_SHIFT;
    if (off < first || off >= first + (dsm_region.arena_pages << DSM_PAGE_SHIFT))
        return DSM_EINVAL;
    size_t i = (off - first) >> DSM_PAGE_SHIFT, in = off & (DSM_PAGE_SIZE - 1);
    int rc = DSM_EINVAL;
    pthread_mutex_lock(&ar.lock);
    struct pginfo *g = &ar.info[i];
    if (g->use == PG_SLAB) {
        size_t bsize = 16u << g->cls, b = in / bsize;
        if (in % bsize == 0 && (g->bits[b / 64] >> (b % 64) & 1)) {
            g->bits[b / 64] &= ~(1ull << (b % 64));
            g->dirty[b / 64] |= 1ull << (b % 64);
            if (g->nfree++ == 0) {
                g->next = ar.partial[g->cls];
                ar.partial[g->cls] = (uint32_t)i + 1;
            }
            ar.allocated -= bsize;
            rc = DSM_OK;
            if (g->nfree == DSM_PAGE_SIZE / bsize) {
                /* Empty: back to the page runs, so any size can use it (it is below the high-water mark,
                 * hence cleared when handed out again). */
                uint32_t *link = &ar.partial[g->cls];
                while (*link && *link != (uint32_t)i + 1)
                    link = &ar.info[*link - 1].next;
                if (*link)
                    *link = g->next;
                g->use = PG_FREE;
                rc = run_put(i, 1);
            }
        }
    } else if (g->use == PG_RUN_HEAD && in == 0) {
        size_t n = g->run;
        for (size_t k = 0; k < n; k++)
            ar.info[i + k].use = PG_FREE;
        ar.allocated -= n << DSM_PAGE_SHIFT;
        rc = run_put(i, n);
    }
    pthread_mutex_unlock(&ar.lock);
    return rc;
}

static int on_free(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    if (hl != 8 || len) {
        dsm_err("malformed free from node %d", src);
        return DSM_EPROTO;
    }
    if (dsm_credit_received(src, DSM_CHAN_REQ) != DSM_OK)
        return DSM_EPROTO;
    uint64_t off = dsm_le64_get(hdr);
    /* A wrong pointer is the caller's bug, not a broken peer: report it and carry on. */
    if (free_local(off) != DSM_OK)
        dsm_err("node %d freed %p, which is not a live dsm_malloc block of this node", src,
                (void *)(dsm_region.app + off));
    dsm_credit_answered(src, DSM_CHAN_REQ);
    return dsm_am_send(src, AM_FREE_ACK, hdr, 8, NULL, 0);
}

static int on_free_ack(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)hdr;
    (void)p;
    if (hl != 8 || len) {
        dsm_err("malformed free ack from node %d", src);
        return DSM_EPROTO;
    }
    dsm_credit_return(src, DSM_CHAN_REQ);
    return DSM_OK;
}

DSM_API void dsm_free(void *ptr)
{
    if (!ptr)
        return;
    size_t p;
    if (dsm_core_size() < 1 || !dsm_region_page(ptr, &p) || p < dsm_region.arena_first) {
        dsm_err("dsm_free(%p): not a pointer dsm_malloc returned", ptr);
        dsm_set_last_error(DSM_EINVAL);
        return;
    }
    int owner = dsm_page_home(p);
    uint64_t off = (uint64_t)((uintptr_t)ptr - (uintptr_t)dsm_region.app);
    if (owner == dsm_core_rank()) {
        if (free_local(off) != DSM_OK) {
            dsm_err("dsm_free(%p): not a live dsm_malloc block (double free?)", ptr);
            dsm_set_last_error(DSM_EINVAL);
        }
        return;
    }
    uint8_t h[8];
    dsm_le64_put(h, off);
    if (dsm_chan_send(owner, DSM_CHAN_REQ, AM_FREE, h, sizeof h, NULL, 0) != DSM_OK)
        dsm_fail_stop(owner, "cannot send a free");
}

uint64_t dsm_malloc_in_use(void)
{
    pthread_mutex_lock(&ar.lock);
    uint64_t v = ar.allocated;
    pthread_mutex_unlock(&ar.lock);
    return v;
}

int dsm_malloc_setup(void)
{
    ar.npages = dsm_region.arena_pages;
    void *m = mmap(NULL, ar.npages * sizeof *ar.info, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        dsm_err("cannot reserve the dsm_malloc page table: %s", strerror(errno));
        return DSM_ENOMEM;
    }
    ar.info = m;
    memset(ar.partial, 0, sizeof ar.partial);
    ar.runs = NULL;
    ar.allocated = 0;
    ar.hwm = 0;
    int rc = run_put(0, ar.npages);
    if (rc == DSM_OK)
        rc = dsm_am_register(AM_FREE, on_free, NULL);
    if (rc == DSM_OK)
        rc = dsm_am_register(AM_FREE_ACK, on_free_ack, NULL);
    return rc;
}

void dsm_malloc_teardown(void)
{
    while (ar.runs) {
        struct run *n = ar.runs->next;
        free(ar.runs);
        ar.runs = n;
    }
    if (ar.info)
        munmap(ar.info, ar.npages * sizeof *ar.info);
    ar.info = NULL;
}

/* ---- checkpoints (migrate/ckpt.c) ---- */

/* This arena's bookkeeping: u64 hwm, u64 allocated, u32 partial[NCLASSES], u64 runs, runs * (u64 first, u64 n),
 * then the page records below hwm as they are in memory (the same binary reads them back). */
size_t dsm_malloc_save(uint8_t **buf_p)
{
    pthread_mutex_lock(&ar.lock);
    size_t nruns = 0;
    for (struct run *r = ar.runs; r; r = r->next)
        nruns++;
    size_t len = 24 + 4 * NCLASSES + 16 * nruns + ar.hwm * sizeof *ar.info;
    uint8_t *b = malloc(len), *o = b;
    if (b) {
        dsm_le64_put(o, ar.hwm);
        dsm_le64_put(o + 8, ar.allocated);
        o += 16;
        for (int c = 0; c < NCLASSES; c++, o += 4)
            dsm_le32_put(o, ar.partial[c]);
        dsm_le64_put(o, nruns);
        o += 8;
        for (struct run *r = ar.runs; r; r = r->next, o += 16) {
            dsm_le64_put(o, r->first);
            dsm_le64_put(o + 8, r->n);
        }
        memcpy(o, ar.info, ar.hwm * sizeof *ar.info);
    }
    pthread_mutex_unlock(&ar.lock);
    *buf_p = b;
    return b ? len : 0;
}

int dsm_malloc_check(const uint8_t *b, size_t len)
{
    if (len < 24 + 4 * NCLASSES)
        return 0;
    uint64_t hwm = dsm_le64_get(b), nruns = dsm_le64_get(b + 16 + 4 * NCLASSES);
    if (hwm > ar.npages || nruns > ar.npages)
        return 0;
    for (int c = 0; c < NCLASSES; c++)
        if (dsm_le32_get(b + 16 + 4 * c) > hwm)
            return 0;
    size_t at = 24 + 4 * NCLASSES;
    if (len != at + 16 * nruns + hwm * sizeof *ar.info)
        return 0;
    uint64_t prev_end = 0;
    for (uint64_t i = 0; i < nruns; i++, at += 16) {
        uint64_t first = dsm_le64_get(b + at), n = dsm_le64_get(b + at + 8);
        if (!n || first < prev_end || first > ar.npages || n > ar.npages - first)
            return 0;
        prev_end = first + n;
    }
    return 1;
}

/* On a table dsm_malloc_check accepted; right after dsm_init (the arena is unused but for dsm_root's word). */
int dsm_malloc_load(const uint8_t *b, size_t len)
{
    (void)len;
    struct run *runs = NULL, **tail = &runs;
    uint64_t nruns = dsm_le64_get(b + 16 + 4 * NCLASSES);
    size_t at = 24 + 4 * NCLASSES;
    for (uint64_t i = 0; i < nruns; i++, at += 16) {
        struct run *r = malloc(sizeof *r);
        if (!r) {
            while (runs) {
                struct run *n = runs->next;
                free(runs);
                runs = n;
            }
            return DSM_ENOMEM;
        }
        r->first = dsm_le64_get(b + at);
        r->n = dsm_le64_get(b + at + 8);
        r->next = NULL;
        *tail = r;
        tail = &r->next;
    }
    pthread_mutex_lock(&ar.lock);
    while (ar.runs) {
        struct run *n = ar.runs->next;
        free(ar.runs);
        ar.runs = n;
    }
    ar.runs = runs;
    size_t old_hwm = ar.hwm;
    ar.hwm = dsm_le64_get(b);
    ar.allocated = dsm_le64_get(b + 8);
    for (int c = 0; c < NCLASSES; c++)
        ar.partial[c] = dsm_le32_get(b + 16 + 4 * c);
    if (old_hwm > ar.hwm)
        memset(ar.info + ar.hwm, 0, (old_hwm - ar.hwm) * sizeof *ar.info);
    memcpy(ar.info, b + at, ar.hwm * sizeof *ar.info);
    pthread_mutex_unlock(&ar.lock);
    return DSM_OK;
}

size_t dsm_malloc_hwm(void)
{
    pthread_mutex_lock(&ar.lock);
    size_t v = ar.hwm;
    pthread_mutex_unlock(&ar.lock);
    return v;
}

/* A small block the library keeps for the whole run (dsm_root's word): not counted by dsm_malloc_in_use, so
 * programs and tests see only their own blocks. */
void *dsm_malloc_keep(size_t len)
{
    if (len == 0 || len > CLASS_MAX)
        return NULL;
    void *p = dsm_malloc(len);
    if (p) {
        pthread_mutex_lock(&ar.lock);
        ar.allocated -= 16u << class_of(len);
        pthread_mutex_unlock(&ar.lock);
    }
    return p;
}
