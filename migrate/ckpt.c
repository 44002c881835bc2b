/* SPDX-License-Identifier: MIT */
/*
 * ckpt.c - dsm_checkpoint and dsm_restore (DESIGN.md 4.6, the checkpoint contract).
 *
 * A checkpoint is one directory under path, ckpt.<job>.<n>, holding one part per node (node<r>.img: the pages
 * homed on that node, read coherently so Modified copies elsewhere are recalled first; the collective
 * allocations; its dsm_malloc arena's bookkeeping; the dsm threads it created) and a MANIFEST that node 0 writes
 * last, after every part is on disk. path/current is a symlink to the newest complete checkpoint, replaced by
 * rename(2), so a crash at any moment leaves the previous checkpoint whole. Every node writes its part under the
 * same path: across hosts, path must be on a shared filesystem.
 *
 * dsm threads are saved parked: a dsm thread calls dsm_checkpoint to wait in it; the main threads' collective
 * call succeeds only when every dsm thread not ended is parked (else DSM_EBUSY on every node), and resumes them
 * afterwards. Their stacks and control blocks are shared memory, saved with the rest; carriers are not saved.
 *
 * Part file: header (64 bytes, little-endian): magic, u32 version, u32 rank, u32 size, u32 0, u64 code hash,
 * u64 bytes of the shared range, u64 pages per arena, u64 payload bytes, u64 payload checksum, u64 header
 * checksum; then sections u32 tag, u32 0, u64 length, bytes: ALLOC, MALLOC, THREADS, PAGES (u64 page index and
 * the page, repeated). MANIFEST: magic, u32 version, u32 size, u64 code hash, u64 canary, u64 pointer guard,
 * u64 dsm_root offset, u64 0, then per node u64 part bytes and u64 payload checksum, and a checksum
 * of all that.
 *
 * dsm_restore checks everything (the manifest, the node count, the binary, this node's part entire) on every
 * node and agrees through the rendezvous before it changes anything.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/coh.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/region.h"
#include "migrate/ckpt_fmt.h"
#include "migrate/mig.h"
#include "transport/wire.h"


static unsigned ckpt_seq; /* rendezvous keys of this run's checkpoint steps */


/* Every node says its status; all return the first failure (a node's own failure first). */
static int agree(const char *what, int mine)
{
    dsm_boot_t *b = dsm_core_boot();
    char key[48];
    snprintf(key, sizeof key, "ckpt.%s.%u", what, ckpt_seq++);
    int32_t v = mine;
    int rc = b->put(b, key, &v, sizeof v);
    if (rc == DSM_OK)
        rc = b->fence(b);
    int first = DSM_OK;
    for (int r = 0; rc == DSM_OK && r < b->size; r++) {
        int32_t t = 0;
        size_t n = sizeof t;
        rc = b->get(b, r, key, &t, &n);
        if (rc == DSM_OK && t != DSM_OK && first == DSM_OK) {
            first = t;
            if (r != dsm_core_rank() && t != DSM_EBUSY)
                dsm_err("%s: node %d failed (%s)", what, r, dsm_strerror(t));
        }
    }
    if (rc != DSM_OK)
        return rc;
    return mine != DSM_OK ? mine : first;
}

/* ---- writing ---- */

struct out {
    FILE *f;
    uint64_t sum, len;
    int err;
};

static void put(struct out *o, const void *p, size_t n)
{
    if (o->err || fwrite(p, 1, n, o->f) != n)
        o->err = 1;
    o->sum = dsm_ckpt_sum(o->sum, p, n);
    o->len += n;
}

static void put_section(struct out *o, uint32_t tag, const uint8_t *b, size_t n)
{
    uint8_t h[16] = {0};
    dsm_le32_put(h, tag);
    dsm_le64_put(h + 8, n);
    put(o, h, sizeof h);
    put(o, b, n);
}

static void header(uint8_t *h, uint64_t code, uint64_t payload, uint64_t sum)
{
    memset(h, 0, DSM_CKPT_HDR_LEN);
    dsm_le64_put(h, DSM_CKPT_PART_MAGIC);
    dsm_le32_put(h + 8, DSM_CKPT_VERSION);
    dsm_le32_put(h + 12, (uint32_t)dsm_core_rank());
    dsm_le32_put(h + 16, (uint32_t)dsm_core_size());
    dsm_le64_put(h + 24, code);
    dsm_le64_put(h + 32, dsm_region.size);
    dsm_le64_put(h + 40, dsm_region.arena_pages);
    dsm_le64_put(h + 48, payload);
    dsm_le64_put(h + 56, sum);
}

/* Is page p homed here and in use? */
static int page_kind_here(size_t p, size_t arena_hwm)
{
    size_t mine = dsm_region.arena_first + (size_t)dsm_core_rank() * dsm_region.arena_pages;
    if (p >= dsm_region.arena_first)
        return p >= mine && p < mine + arena_hwm ? DSM_KIND_COHERENT : DSM_KIND_NONE;
    int k = dsm_page_kind(p);
    return k != DSM_KIND_NONE && dsm_page_home(p) == dsm_core_rank() ? k : DSM_KIND_NONE;
}

/* Write this node's part; *len_p and *sum_p describe it for the manifest. */
static int write_part(const char *file, uint64_t *len_p, uint64_t *sum_p)
{
    uint64_t canary, guard, code, root;
    dsm_mig_secrets(&canary, &guard, &code, &root);
    struct out o = {.f = fopen(file, "wbx"), .sum = DSM_CKPT_SUM_INIT};
    if (!o.f) {
        dsm_err("dsm_checkpoint: cannot create %s: %s", file, strerror(errno));
        return DSM_ESYS;
    }
    uint8_t h[DSM_CKPT_HDR_LEN] = {0};
    if (fwrite(h, 1, DSM_CKPT_HDR_LEN, o.f) != DSM_CKPT_HDR_LEN) /* the header comes last, once the payload's sum is known */
        o.err = 1;
    uint8_t *b = NULL;
    size_t n;
    int rc = DSM_OK;
    if ((n = dsm_alloc_save(&b)) == 0)
        rc = DSM_ENOMEM;
    else
        put_section(&o, DSM_CKPT_SEC_ALLOC, b, n);
    free(b);
    b = NULL;
    if (rc == DSM_OK && (n = dsm_malloc_save(&b)) == 0)
        rc = DSM_ENOMEM;
    else if (rc == DSM_OK)
        put_section(&o, DSM_CKPT_SEC_MALLOC, b, n);
    free(b);
    b = NULL;
    if (rc == DSM_OK && (n = dsm_mig_save_threads(&b)) == 0)
        rc = DSM_ENOMEM;
    else if (rc == DSM_OK)
        put_section(&o, DSM_CKPT_SEC_THREADS, b, n);
    free(b);
    /* Pages: counted first, then read coherently (a Modified copy elsewhere is recalled) and written. */
    size_t hwm = dsm_malloc_hwm(), limit = dsm_region.mapped >> DSM_PAGE_SHIFT, count = 0;
    size_t end = dsm_region.arena_first + ((size_t)dsm_core_rank() + 1) * dsm_region.arena_pages;
    for (size_t p = 0; p < end; p++) {
        if (p == limit && p < dsm_region.arena_first)
            p = dsm_region.arena_first;
        count += page_kind_here(p, hwm) != DSM_KIND_NONE;
    }
    uint8_t sec[24] = {0};
    dsm_le32_put(sec, DSM_CKPT_SEC_PAGES);
    dsm_le64_put(sec + 8, 8 + count * (8 + DSM_PAGE_SIZE));
    dsm_le64_put(sec + 16, count);
    put(&o, sec, sizeof sec);
    uint8_t rec[8 + DSM_PAGE_SIZE];
    for (size_t p = 0; rc == DSM_OK && p < end; p++) {
        if (p == limit && p < dsm_region.arena_first)
            p = dsm_region.arena_first;
        int k = page_kind_here(p, hwm);
        if (k == DSM_KIND_NONE)
            continue;
        dsm_le64_put(rec, p);
        if (k == DSM_KIND_ATOMIC) /* lives only here */
            memcpy(rec + 8, dsm_region.sys + (p << DSM_PAGE_SHIFT), DSM_PAGE_SIZE);
        else
            rc = dsm_get(rec + 8, dsm_region.app + (p << DSM_PAGE_SHIFT), DSM_PAGE_SIZE);
        put(&o, rec, sizeof rec);
    }
    header(h, code, o.len, o.sum);
    if (rc == DSM_OK && !o.err && (fseek(o.f, 0, SEEK_SET) != 0 || fwrite(h, 1, DSM_CKPT_HDR_LEN, o.f) != DSM_CKPT_HDR_LEN))
        o.err = 1;
    if (fflush(o.f) != 0 || fsync(fileno(o.f)) != 0)
        o.err = 1;
    if (fclose(o.f) != 0)
        o.err = 1;
    if (rc == DSM_OK && o.err) {
        dsm_err("dsm_checkpoint: writing %s failed: %s", file, strerror(errno));
        rc = DSM_ESYS;
    }
    *len_p = o.len + DSM_CKPT_HDR_LEN;
    *sum_p = o.sum;
    return rc;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char f[PATH_MAX];
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
            snprintf(f, sizeof f, "%s/%s", dir, e->d_name) < (int)sizeof f)
            unlink(f);
    closedir(d);
    rmdir(dir);
}

static int fsync_path(const char *p)
{
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Node 0: the manifest, then path/current switched to name. */
static int write_manifest(const char *path, const char *name, const uint64_t *lens, const uint64_t *sums)
{
    uint64_t canary, guard, code, root;
    dsm_mig_secrets(&canary, &guard, &code, &root);
    int size = dsm_core_size();
    size_t n = 56 + 16 * (size_t)size + 8;
    uint8_t *m = calloc(1, n);
    if (!m)
        return DSM_ENOMEM;
    dsm_le64_put(m, DSM_CKPT_MANI_MAGIC);
    dsm_le32_put(m + 8, DSM_CKPT_VERSION);
    dsm_le32_put(m + 12, (uint32_t)size);
    dsm_le64_put(m + 16, code);
    dsm_le64_put(m + 24, canary);
    dsm_le64_put(m + 32, guard);
    dsm_le64_put(m + 40, root);
    dsm_le64_put(m + 48, 0);
    for (int r = 0; r < size; r++) {
        dsm_le64_put(m + 56 + 16 * (size_t)r, lens[r]);
        dsm_le64_put(m + 64 + 16 * (size_t)r, sums[r]);
    }
    dsm_le64_put(m + n - 8, dsm_ckpt_sum(DSM_CKPT_SUM_INIT, m, n - 8));
    char file[PATH_MAX], link[PATH_MAX], cur[PATH_MAX], old[PATH_MAX] = "";
    snprintf(file, sizeof file, "%s/%s/MANIFEST", path, name);
    snprintf(link, sizeof link, "%s/current.new", path);
    snprintf(cur, sizeof cur, "%s/current", path);
    FILE *f = fopen(file, "wbx");
    int ok = f && fwrite(m, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0)
        ok = 0;
    free(m);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", path, name);
    ssize_t ol = readlink(cur, old, sizeof old - 1);
    old[ol > 0 ? ol : 0] = '\0';
    unlink(link);
    ok = ok && fsync_path(dir) == 0 && symlink(name, link) == 0 && rename(link, cur) == 0 && fsync_path(path) == 0;
    if (!ok) {
        dsm_err("dsm_checkpoint: cannot complete %s (manifest, then the current link): %s", dir, strerror(errno));
        return DSM_ESYS;
    }
    if (old[0] && strcmp(old, name) != 0 && !strchr(old, '/')) { /* the previous checkpoint is superseded */
        snprintf(dir, sizeof dir, "%s/%s", path, old);
        remove_dir(dir);
    }
    return DSM_OK;
}

DSM_API int dsm_checkpoint(const char *path)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    if (dsm_mig_park()) /* a dsm thread: it waited for the main threads' checkpoint and now goes on */
        return DSM_OK;
    if (!path || !*path || strlen(path) > PATH_MAX - 64) {
        dsm_err("dsm_checkpoint: %s", !path || !*path ? "no path" : "path too long");
        return DSM_EINVAL;
    }
    int rc = dsm_barrier();
    if (rc != DSM_OK)
        return rc;
    int busy = dsm_mig_busy();
    if (busy)
        dsm_info("dsm_checkpoint: %d dsm threads created here still run (not parked in dsm_checkpoint)", busy);
    rc = agree("busy", busy ? DSM_EBUSY : DSM_OK);
    if (rc != DSM_OK)
        return rc;
    char name[64], dir[PATH_MAX], file[PATH_MAX + 32];
    snprintf(name, sizeof name, "ckpt.%016llx.%u", (unsigned long long)dsm_core_boot()->job_id, ckpt_seq);
    snprintf(dir, sizeof dir, "%s/%s", path, name);
    int mine = DSM_OK;
    if (dsm_core_rank() == 0) {
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            dsm_err("dsm_checkpoint: cannot create %s: %s", path, strerror(errno));
            mine = DSM_ESYS;
        } else if (mkdir(dir, 0777) != 0) {
            dsm_err("dsm_checkpoint: cannot create %s: %s", dir, strerror(errno));
            mine = DSM_ESYS;
        }
    }
    if ((rc = agree("dir", mine)) != DSM_OK)
        return rc;
    uint64_t len = 0, sum = 0;
    snprintf(file, sizeof file, "%s/node%d.img", dir, dsm_core_rank());
    rc = write_part(file, &len, &sum);
    /* The parts' sizes and sums, for the manifest. */
    int size = dsm_core_size();
    uint8_t card[20];
    dsm_le32_put(card, (uint32_t)rc);
    dsm_le64_put(card + 4, len);
    dsm_le64_put(card + 12, sum);
    void **vals = calloc((size_t)size, sizeof *vals);
    size_t *lens = calloc((size_t)size, sizeof *lens);
    uint8_t *cards = calloc((size_t)size, sizeof card);
    uint64_t *plen = calloc((size_t)size, sizeof *plen), *psum = calloc((size_t)size, sizeof *psum);
    int arc = vals && lens && cards && plen && psum ? DSM_OK : DSM_ENOMEM;
    for (int r = 0; arc == DSM_OK && r < size; r++)
        vals[r] = cards + r * sizeof card;
    if (arc == DSM_OK) {
        char key[48];
        snprintf(key, sizeof key, "ckpt.parts.%u", ckpt_seq++);
        arc = dsm_boot_allgather(dsm_core_boot(), key, card, sizeof card, vals, lens, sizeof card);
    }
    for (int r = 0; arc == DSM_OK && r < size; r++) {
        const uint8_t *c = cards + r * sizeof card;
        if (lens[r] != sizeof card)
            arc = DSM_EPROTO;
        else if ((int32_t)dsm_le32_get(c) != DSM_OK && rc == DSM_OK)
            rc = (int32_t)dsm_le32_get(c);
        plen[r] = dsm_le64_get(c + 4);
        psum[r] = dsm_le64_get(c + 12);
    }
    if (rc == DSM_OK)
        rc = arc;
    mine = rc == DSM_OK && dsm_core_rank() == 0 ? write_manifest(path, name, plen, psum) : DSM_OK;
    free(vals);
    free(lens);
    free(cards);
    free(plen);
    free(psum);
    int done = agree("manifest", rc != DSM_OK ? rc : mine);
    if (done != DSM_OK && dsm_core_rank() == 0)
        remove_dir(dir); /* never made current */
    dsm_mig_resume_parked();
    return done;
}

/* ---- reading ---- */

struct part {
    uint8_t *map;
    size_t len;
    dsm_ckpt_part_t f;
};

static int fail(char *why, size_t wl, int rc, const char *fmt, const char *a, const char *b)
{
    snprintf(why, wl, fmt, a, b);
    return rc;
}

/* Read and check path/current/MANIFEST and this node's part entire (ckpt_fmt.c), then the tables it holds.
 * Nothing is changed. */
static int load(const char *path, struct part *pt, uint64_t *canary, uint64_t *guard, char *why, size_t wl)
{
    uint64_t c0, g0;
    dsm_ckpt_expect_t e = {.rank = (uint32_t)dsm_core_rank(), .size = (uint32_t)dsm_core_size(),
                           .region_size = dsm_region.size, .arena_pages = dsm_region.arena_pages,
                           .npages = dsm_region.npages, .arena_first = dsm_region.arena_first,
                           .page_size = DSM_PAGE_SIZE};
    dsm_mig_secrets(&c0, &g0, &e.code, &e.root);
    const char *bad = NULL;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/current/MANIFEST", path);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(why, wl, DSM_EINVAL, "cannot open %s: %s", file, strerror(errno));
    size_t n = dsm_ckpt_manifest_len(e.size);
    uint8_t *m = malloc(n + 1);
    ssize_t got = m ? read(fd, m, n + 1) : -1;
    close(fd);
    if (got < 0) {
        free(m);
        return fail(why, wl, DSM_ESYS, "cannot read %s: %s", file, strerror(errno));
    }
    uint64_t want_len = 0, want_sum = 0;
    int rc = dsm_ckpt_parse_manifest(m, (size_t)got, &e, canary, guard, &want_len, &want_sum, &bad);
    free(m);
    if (rc != DSM_OK)
        return fail(why, wl, rc, "%s %s", file, bad);

    snprintf(file, sizeof file, "%s/current/node%d.img", path, dsm_core_rank());
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(why, wl, DSM_EINVAL, "cannot open %s: %s", file, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != want_len || want_len < DSM_CKPT_HDR_LEN) {
        close(fd);
        return fail(why, wl, DSM_EINVAL, "%s is truncated or has another size than its manifest says%s", file, "");
    }
    pt->len = (size_t)st.st_size;
    pt->map = mmap(NULL, pt->len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (pt->map == MAP_FAILED) {
        pt->map = NULL;
        return fail(why, wl, DSM_ESYS, "cannot map %s: %s", file, strerror(errno));
    }
    if ((rc = dsm_ckpt_parse_part(pt->map, pt->len, want_len, want_sum, &e, &pt->f, &bad)) != DSM_OK)
        return fail(why, wl, rc, "%s %s", file, bad);
    if (!dsm_alloc_check(pt->f.sec[DSM_CKPT_SEC_ALLOC], pt->f.sec_len[DSM_CKPT_SEC_ALLOC]))
        return fail(why, wl, DSM_EINVAL, "%s: bad allocation table, or dsm_restore was not called right after "
                                         "dsm_init (memory was allocated)%s", file, "");
    if (!dsm_malloc_check(pt->f.sec[DSM_CKPT_SEC_MALLOC], pt->f.sec_len[DSM_CKPT_SEC_MALLOC]))
        return fail(why, wl, DSM_EINVAL, "%s: bad dsm_malloc table%s", file, "");
    if (!dsm_mig_check_threads(pt->f.sec[DSM_CKPT_SEC_THREADS], pt->f.sec_len[DSM_CKPT_SEC_THREADS]))
        return fail(why, wl, DSM_EINVAL, "%s: bad thread table%s", file, "");
    return DSM_OK;
}

DSM_API int dsm_restore(const char *path)
{
    if (dsm_core_size() < 1)
        return DSM_ENOTINIT;
    char why[PATH_MAX + 160] = "";
    struct part pt;
    memset(&pt, 0, sizeof pt);
    uint64_t canary = 0, guard = 0;
    int rc;
    if (!path || !*path || strlen(path) > PATH_MAX - 64)
        rc = fail(why, sizeof why, DSM_EINVAL, "%s%s", !path || !*path ? "no path" : "path too long", "");
    else if (!dsm_mig_fresh() || dsm_malloc_in_use() > 0)
        rc = fail(why, sizeof why, DSM_EINVAL, "dsm threads were started or dsm_malloc was called: call dsm_restore right after dsm_init%s",
                  "", "");
    else
        rc = load(path, &pt, &canary, &guard, why, sizeof why);
    if (rc != DSM_OK)
        dsm_err("dsm_restore: %s; nothing was changed", why);
    rc = agree("restore", rc);
    if (rc == DSM_OK) {
        rc = dsm_alloc_load(pt.f.sec[DSM_CKPT_SEC_ALLOC], pt.f.sec_len[DSM_CKPT_SEC_ALLOC]); /* collective: grows the range */
        if (rc == DSM_OK)
            rc = dsm_malloc_load(pt.f.sec[DSM_CKPT_SEC_MALLOC], pt.f.sec_len[DSM_CKPT_SEC_MALLOC]);
        if (rc == DSM_OK) {
            /* dsm_root's page is the one a node may have read before: forget every copy of it. Then nobody
             * holds a copy, and this node's memory is each page it is home of. */
            uint64_t c0, g0, code0, root;
            dsm_mig_secrets(&c0, &g0, &code0, &root);
            size_t rp = (size_t)(root >> DSM_PAGE_SHIFT);
            dsm_pg_reset(rp, 1);
            if (dsm_page_home(rp) == dsm_core_rank())
                dsm_dir_reset(rp, 1);
            const uint8_t *pg = pt.f.sec[DSM_CKPT_SEC_PAGES];
            uint64_t count = dsm_le64_get(pg);
            for (uint64_t i = 0; i < count; i++) {
                const uint8_t *r = pg + 8 + i * (8 + DSM_PAGE_SIZE);
                memcpy(dsm_region.sys + (dsm_le64_get(r) << DSM_PAGE_SHIFT), r + 8, DSM_PAGE_SIZE);
            }
            dsm_mig_load_threads(pt.f.sec[DSM_CKPT_SEC_THREADS], pt.f.sec_len[DSM_CKPT_SEC_THREADS]);
            dsm_mig_adopt(canary, guard);
        }
        if (rc != DSM_OK)
            dsm_fail_stop(-1, "dsm_restore failed half-way (out of memory)");
    }
    if (pt.map)
        munmap(pt.map, pt.len);
    if (rc != DSM_OK)
        return rc;
    /* Every node has its pages and tables before any thread runs. */
    rc = dsm_barrier();
    if (rc == DSM_OK)
        dsm_mig_resume_parked();
    return rc;
}
