/* SPDX-License-Identifier: MIT */
/*
 * mig_ckpt - checkpoint and restore (run by tests/multi/mig_ckpt.sh). A worker dsm thread takes STEPS steps,
 * migrating to node step % n at each and folding shared data (dsm_alloc'ed and dsm_malloc'ed) and its own stack
 * into a running value. Modes:
 *   full              the uninterrupted run: prints "result <hex>"
 *   save DIR          the worker parks in dsm_checkpoint at step STEPS/2, the main threads checkpoint into DIR
 *                     (retrying while DSM_EBUSY), the worker goes on and the run prints its result
 *   restore DIR       a new run: dsm_restore(DIR) right after dsm_init, the worker resumes at step STEPS/2 and
 *                     rank 0 joins it through dsm_root: prints the result
 *   bad DIR CODE      dsm_restore(DIR) must fail with CODE (a dsm_strerror name's number) and change nothing:
 *                     dsm_root still holds NULL, and a fresh allocation is zero and usable
 */
#include "config.h"

#include "mt.h"

#ifdef MIG_VARIANT /* mig_ckpt_b: another binary, whose checkpoints mig_ckpt must refuse */
#define STEPS 1001
#else
#define STEPS 1000
#endif
#define WORDS 8192

struct state {
    uint64_t *data;   /* dsm_alloc'ed, WORDS words */
    uint64_t *extra;  /* dsm_malloc'ed by the worker's creator */
    dsm_thread_t worker;
    uint64_t ckpt_at;
    char dir[256];
};

static uint64_t mix(uint64_t a, uint64_t b)
{
    a ^= b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2);
    return a * 0xff51afd7ed558ccdull;
}

static void *work(void *arg)
{
    struct state *st = arg;
    uint64_t local[64], acc = 1;
    for (int k = 0; k < 64; k++)
        local[k] = (uint64_t)k * 0x100000001b3ull;
    for (uint64_t i = 0; i < STEPS; i++) {
        if (i == st->ckpt_at) {
            int rc = dsm_checkpoint(st->dir);
            MT_CHECK(rc == DSM_OK, "dsm_checkpoint in the worker: %s", dsm_strerror(rc));
        }
        MT_CHECK(dsm_migrate((int)(i % (uint64_t)dsm_size())) == DSM_OK, "dsm_migrate at step %llu",
                 (unsigned long long)i);
        uint64_t *w = &st->data[(i * 7919) % WORDS];
        *w = mix(*w, i);
        local[i % 64] = mix(local[i % 64], *w);
        st->extra[i % 512] += local[(i * 3) % 64];
        acc = mix(acc, local[i % 64] ^ st->extra[(i * 5) % 512]);
    }
    for (int k = 0; k < WORDS; k++)
        acc = mix(acc, st->data[k]);
    return (void *)(uintptr_t)acc;
}

int main(int argc, char **argv)
{
    MT_CHECK(argc >= 2, "usage: mig_ckpt full | save DIR | restore DIR | bad DIR CODE");
    const char *mode = argv[1], *dir = argc > 2 ? argv[2] : "";
    mt_aslr_off(argv);
    mt_init(&argc, &argv);
    int me = dsm_rank();
    MT_CHECK(dsm_root() && *dsm_root() == NULL, "dsm_root starts NULL");
    if (strcmp(mode, "bad") == 0) {
        MT_CHECK(argc > 3, "bad needs a code");
        int want = atoi(argv[3]);
        int rc = dsm_restore(dir);
        MT_CHECK(rc == want, "dsm_restore(%s) returned %d (%s), want %d", dir, rc, dsm_strerror(rc), want);
        MT_CHECK(*dsm_root() == NULL, "dsm_root changed by a refused restore");
        uint64_t *p = dsm_alloc(1 << 20);
        MT_CHECK(p, "dsm_alloc after a refused restore");
        for (size_t i = 0; i < (1 << 20) / 8; i += 512)
            MT_CHECK(p[i] == 0, "fresh memory is zero after a refused restore");
        /* Every node has looked before any writes (p[0] and p[1] share a page). */
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        p[me] = (uint64_t)me + 1;
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        for (int r = 0; r < dsm_size(); r++)
            MT_CHECK(p[r] == (uint64_t)r + 1, "shared memory works after a refused restore");
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        mt_finalize();
        return 0;
    }
    struct state *st;
    if (strcmp(mode, "restore") == 0) {
        int rc = dsm_restore(dir);
        MT_CHECK(rc == DSM_OK, "dsm_restore(%s): %s", dir, dsm_strerror(rc));
        st = *dsm_root();
        MT_CHECK(st, "dsm_root after a restore");
    } else {
        st = dsm_alloc(sizeof *st);
        uint64_t *data = dsm_alloc(WORDS * sizeof *data);
        MT_CHECK(st && data, "dsm_alloc");
        if (me == 0) {
            st->data = data;
            st->extra = dsm_malloc(512 * sizeof *st->extra);
            MT_CHECK(st->extra, "dsm_malloc");
            st->ckpt_at = strcmp(mode, "save") == 0 ? STEPS / 2 : UINT64_MAX;
            snprintf(st->dir, sizeof st->dir, "%s", dir);
            *dsm_root() = st;
            MT_CHECK(dsm_thread_create(&st->worker, dsm_size() - 1, work, st) == DSM_OK, "dsm_thread_create");
        }
        MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
        if (strcmp(mode, "save") == 0) {
            int rc, tries = 0;
            while ((rc = dsm_checkpoint(dir)) == DSM_EBUSY) { /* until the worker has parked */
                MT_CHECK(++tries < 200000, "the worker never parked");
                usleep(1000);
            }
            MT_CHECK(rc == DSM_OK, "dsm_checkpoint(%s): %s", dir, dsm_strerror(rc));
        }
    }
    if (me == 0) {
        void *r;
        MT_CHECK(dsm_thread_join(st->worker, &r) == DSM_OK, "join the worker");
        printf("result %016llx\n", (unsigned long long)(uintptr_t)r);
        fflush(stdout);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
