/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - the collective allocators dsm_alloc, dsm_alloc_home and dsm_dealloc (DESIGN.md 2): first fit over
 * the shared range, the same decisions on every node because every node makes the same calls in the same order
 * (checked: each call's arguments are compared through the rendezvous, and any difference is DSM_EMISMATCH on
 * every node). Pages of dsm_alloc are homed block-wise over the nodes; memory comes zero-filled (fresh memfd
 * pages are zero; a page used before is zeroed by its new home, the only copy that counts when nobody else
 * holds it). Freed memory is not given back to the system (no hole punching: the RDMA transport registers it). After dsm_dealloc the range has no home, so a stale
 * access dies with SIGSEGV like any use after free.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/error.h"
#include "libdsm/log.h"
#include "libdsm/region.h"
#include "transport/wire.h"

struct range {
    struct range *next;
    size_t off, len;  /* bytes, page multiples */
};

static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;
static struct range *free_list, *used_list;
static unsigned alloc_seq;
/* Bytes of the collective part ever allocated: pages below may hold old data in any node's memfd. */
static size_t used_hwm;

void dsm_alloc_reset(void)
{
    struct range *lists[2] = {free_list, used_list};
    for (int i = 0; i < 2; i++)
        while (lists[i]) {
            struct range *n = lists[i]->next;
            free(lists[i]);
            lists[i] = n;
        }
    free_list = used_list = NULL;
    alloc_seq = 0;
    used_hwm = 0;
}

int dsm_alloc_setup(void)
{
    dsm_alloc_reset();
    free_list = calloc(1, sizeof *free_list);
    if (!free_list)
        return DSM_ENOMEM;
    free_list->len = dsm_region.arena_first << DSM_PAGE_SHIFT;
    return DSM_OK;
}

/* Every node must call with the same description. Each node compares all of them, so all reach the same
 * verdict and none is left waiting in a later collective step. */
static int agree(const char *what, const char *desc)
{
    dsm_boot_t *b = dsm_core_boot();
    char key[48], theirs[128];
    snprintf(key, sizeof key, "%s.%u", what, alloc_seq++);
    int rc = b->put(b, key, desc, strlen(desc) + 1);
    if (rc == DSM_OK)
        rc = b->fence(b);
    for (int r = 0; rc == DSM_OK && r < b->size; r++) {
        size_t n = sizeof theirs;
        rc = b->get(b, r, key, theirs, &n);
        theirs[sizeof theirs - 1] = '\0';
        if (rc == DSM_OK && strcmp(theirs, desc) != 0) {
            dsm_err("collective %s differs between nodes: node %d called it with (%s), node %d with (%s)", what,
                    r, theirs, dsm_core_rank(), desc);
            rc = DSM_EMISMATCH;
        }
    }
    return rc;
}

static void *alloc_common(size_t len, int home, int kind)
{
    int n = dsm_core_size();
    if (n < 1) {
        dsm_set_last_error(DSM_ENOTINIT);
        return NULL;
    }
    char desc[64];
    snprintf(desc, sizeof desc, "%zu bytes, home %d, kind %d", len, home, kind);
    pthread_mutex_lock(&alloc_lock);
    int rc = agree("dsm_alloc", desc);
    size_t pages = (len + DSM_PAGE_SIZE - 1) / DSM_PAGE_SIZE, bytes = pages * DSM_PAGE_SIZE;
    if (rc == DSM_OK && (len == 0 || home < -1 || home >= n)) {
        rc = DSM_EINVAL;
        dsm_err("dsm_alloc: %s", len == 0 ? "zero bytes" : "home node out of range");
    }
    struct range **pp = &free_list;
    if (rc == DSM_OK) {
        while (*pp && (*pp)->len < bytes)
            pp = &(*pp)->next;
        if (!*pp || len > dsm_region.size) {
            rc = DSM_ENOMEM;
            dsm_err("dsm_alloc: no free range of %zu bytes in the shared range (DSM_HEAP_SIZE=%zu)", len,
                    dsm_region.size);
        }
    }
    struct range *used = rc == DSM_OK ? calloc(1, sizeof *used) : NULL;
    if (rc == DSM_OK && !used)
        rc = DSM_ENOMEM;
    size_t off = rc == DSM_OK ? (*pp)->off : 0;
    if (rc == DSM_OK)
        rc = dsm_region_grow(off + bytes);
    if (rc != DSM_OK) {
        free(used);
        pthread_mutex_unlock(&alloc_lock);
        dsm_set_last_error(rc);
        return NULL;
    }
    (*pp)->off += bytes;
    (*pp)->len -= bytes;
    if ((*pp)->len == 0) {
        struct range *gone = *pp;
        *pp = gone->next;
        free(gone);
    }
    used->off = off;
    used->len = bytes;
    if (off + bytes > used_hwm)
        used_hwm = off + bytes;
    used->next = used_list;
    used_list = used;

    size_t first = off >> DSM_PAGE_SHIFT;
    int me = dsm_core_rank();
    for (size_t i = 0; i < pages; i++) {
        int h = home >= 0 ? home : (int)((i * (size_t)n) / pages);
        if (h == me) {
            dsm_dir_reset(first + i, 1);
            /* A page used before may hold old data here, whoever was its home then: this node's memory is
             * the page now (zero-filled). Pages never used are zero already and stay untouched. */
            if (((first + i) << DSM_PAGE_SHIFT) < used_hwm)
                memset(dsm_region.sys + ((first + i) << DSM_PAGE_SHIFT), 0, DSM_PAGE_SIZE);
        }
        dsm_region.home[first + i] = h;
        __atomic_store_n(&dsm_region.kind[first + i], (uint8_t)kind, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&alloc_lock);
    /* No node touches the range before every home has set up its directory entries. */
    rc = dsm_barrier();
    if (rc != DSM_OK) {
        dsm_set_last_error(rc);
        return NULL;
    }
    return dsm_region.app + off;
}

DSM_API void *dsm_alloc(size_t len)
{
    return alloc_common(len, -1, DSM_KIND_COHERENT);
}

DSM_API void *dsm_alloc_atomic(size_t len)
{
    return alloc_common(len, -1, DSM_KIND_ATOMIC);
}

DSM_API void *dsm_alloc_home(size_t len, int home)
{
    if (home < 0) {
        /* Still collective: the others must not wait for this node. */
        return alloc_common(len, -2, DSM_KIND_COHERENT);
    }
    return alloc_common(len, home, DSM_KIND_COHERENT);
}

DSM_API int dsm_dealloc(void *ptr)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    uintptr_t a = (uintptr_t)ptr, b = (uintptr_t)dsm_region.app;
    size_t off = a >= b && a < b + dsm_region.size ? a - b : (size_t)-1;
    char desc[64];
    snprintf(desc, sizeof desc, "offset %zd", (ssize_t)off);
    pthread_mutex_lock(&alloc_lock);
    int rc = agree("dsm_dealloc", desc);
    struct range **pp = &used_list;
    while (rc == DSM_OK && *pp && (*pp)->off != off)
        pp = &(*pp)->next;
    if (rc == DSM_OK && !*pp) {
        dsm_err("dsm_dealloc(%p): not a pointer dsm_alloc returned, or already freed", ptr);
        rc = DSM_EINVAL;
    }
    pthread_mutex_unlock(&alloc_lock);
    if (rc != DSM_OK)
        return rc;
    /* Everybody has stopped using the range. */
    if ((rc = dsm_barrier()) != DSM_OK)
        return rc;
    pthread_mutex_lock(&alloc_lock);
    struct range *r = *pp;
    *pp = r->next;
    size_t first = r->off >> DSM_PAGE_SHIFT, pages = r->len >> DSM_PAGE_SHIFT;
    dsm_pg_reset(first, pages);
    int me = dsm_core_rank();
    for (size_t i = first; i < first + pages; i++) {
        __atomic_store_n(&dsm_region.kind[i], DSM_KIND_NONE, __ATOMIC_RELEASE);
        if (dsm_region.home[i] == me)
            dsm_dir_reset(i, 1);
        dsm_region.home[i] = -1;
    }
    /* Back into the free list, sorted by offset, merged with its neighbours. */
    struct range **fp = &free_list;
    while (*fp && (*fp)->off < r->off)
        fp = &(*fp)->next;
    r->next = *fp;
    *fp = r;
    if (r->next && r->off + r->len == r->next->off) {
        struct range *m = r->next;
        r->len += m->len;
        r->next = m->next;
        free(m);
    }
    if (fp != &free_list) {
        struct range *prev = free_list;
        while (prev->next != r)
            prev = prev->next;
        if (prev->off + prev->len == r->off) {
            prev->len += r->len;
            prev->next = r->next;
            free(r);
        }
    }
    pthread_mutex_unlock(&alloc_lock);
    return dsm_barrier();
}

/* ---- checkpoints (migrate/ckpt.c) ---- */

/* The collective allocations: u64 count, then per allocation u64 offset, u64 bytes, and per page u32
 * (home + 1) << 8 | kind. */
size_t dsm_alloc_save(uint8_t **buf_p)
{
    pthread_mutex_lock(&alloc_lock);
    size_t n = 0, pages = 0;
    for (struct range *r = used_list; r; r = r->next, n++)
        pages += r->len >> DSM_PAGE_SHIFT;
    size_t len = 8 + n * 16 + pages * 4;
    uint8_t *b = malloc(len), *o = b;
    if (b) {
        dsm_le64_put(o, n);
        o += 8;
        for (struct range *r = used_list; r; r = r->next) {
            dsm_le64_put(o, r->off);
            dsm_le64_put(o + 8, r->len);
            o += 16;
            for (size_t p = r->off >> DSM_PAGE_SHIFT; p < (r->off + r->len) >> DSM_PAGE_SHIFT; p++, o += 4)
                dsm_le32_put(o, (uint32_t)(dsm_region.home[p] + 1) << 8 | dsm_region.kind[p]);
        }
    }
    pthread_mutex_unlock(&alloc_lock);
    *buf_p = b;
    return b ? len : 0;
}

/* Is b a table dsm_alloc_load accepts here (ranges inside the collective part, not overlapping, homes of this
 * job, known kinds), and is nothing allocated yet? */
int dsm_alloc_check(const uint8_t *b, size_t len)
{
    if (len < 8 || used_list)
        return 0;
    uint64_t n = dsm_le64_get(b);
    size_t at = 8, limit = dsm_region.arena_first << DSM_PAGE_SHIFT;
    if (n > len / 16)
        return 0;
    for (uint64_t i = 0; i < n; i++) {
        if (len - at < 16)
            return 0;
        uint64_t off = dsm_le64_get(b + at), bytes = dsm_le64_get(b + at + 8);
        at += 16;
        if (off % DSM_PAGE_SIZE || bytes % DSM_PAGE_SIZE || !bytes || off >= limit || bytes > limit - off ||
            (len - at) / 4 < (bytes >> DSM_PAGE_SHIFT))
            return 0;
        for (size_t p = 0; p < bytes >> DSM_PAGE_SHIFT; p++, at += 4) {
            uint32_t v = dsm_le32_get(b + at);
            int home = (int)(v >> 8) - 1, kind = (int)(v & 0xff);
            if (home < 0 || home >= dsm_core_size() || (kind != DSM_KIND_COHERENT && kind != DSM_KIND_ATOMIC))
                return 0;
        }
        /* No overlap with an earlier range. */
        size_t at2 = 8;
        for (uint64_t k = 0; k < i; k++) {
            uint64_t o2 = dsm_le64_get(b + at2), l2 = dsm_le64_get(b + at2 + 8);
            if (off < o2 + l2 && o2 < off + bytes)
                return 0;
            at2 += 16 + (l2 >> DSM_PAGE_SHIFT) * 4;
        }
    }
    return at == len;
}

/* Collective, on a table dsm_alloc_check accepted (the same on every node): make those allocations. */
int dsm_alloc_load(const uint8_t *b, size_t len)
{
    (void)len;
    uint64_t n = dsm_le64_get(b);
    size_t at = 8, end = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = dsm_le64_get(b + at), bytes = dsm_le64_get(b + at + 8);
        at += 16 + (bytes >> DSM_PAGE_SHIFT) * 4;
        if (off + bytes > end)
            end = off + bytes;
    }
    int rc = dsm_region_grow(end);
    if (rc != DSM_OK)
        return rc;
    pthread_mutex_lock(&alloc_lock);
    dsm_alloc_reset();
    int me = dsm_core_rank();
    at = 8;
    for (uint64_t i = 0; i < n && rc == DSM_OK; i++) {
        struct range *u = calloc(1, sizeof *u);
        if (!u) {
            rc = DSM_ENOMEM;
            break;
        }
        u->off = dsm_le64_get(b + at);
        u->len = dsm_le64_get(b + at + 8);
        at += 16;
        u->next = used_list;
        used_list = u;
        for (size_t p = u->off >> DSM_PAGE_SHIFT; p < (u->off + u->len) >> DSM_PAGE_SHIFT; p++, at += 4) {
            uint32_t v = dsm_le32_get(b + at);
            dsm_region.home[p] = (int)(v >> 8) - 1;
            if (dsm_region.home[p] == me)
                dsm_dir_reset(p, 1);
            __atomic_store_n(&dsm_region.kind[p], (uint8_t)(v & 0xff), __ATOMIC_RELEASE);
        }
    }
    used_hwm = end;
    /* The free list: the gaps between the allocations, sorted. */
    size_t limit = dsm_region.arena_first << DSM_PAGE_SHIFT, pos = 0;
    struct range **tail = &free_list;
    while (rc == DSM_OK && pos < limit) {
        size_t next = limit, next_end = limit;
        for (struct range *u = used_list; u; u = u->next)
            if (u->off >= pos && u->off < next) {
                next = u->off;
                next_end = u->off + u->len;
            }
        if (next > pos) {
            struct range *f = calloc(1, sizeof *f);
            if (!f) {
                rc = DSM_ENOMEM;
                break;
            }
            f->off = pos;
            f->len = next - pos;
            *tail = f;
            tail = &f->next;
        }
        pos = next_end;
    }
    pthread_mutex_unlock(&alloc_lock);
    return rc;
}
