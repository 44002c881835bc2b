/* SPDX-License-Identifier: MIT */
/*
 * resume - a long computation that survives its job: a worker dsm thread takes 1000 steps over shared data and
 * checkpoints half-way (dsm_checkpoint parks it until the main threads have saved everything). A later run
 * given the same directory restores the checkpoint (dsm_restore right after dsm_init), finds its data through
 * dsm_root, and the worker goes on from step 500 to the same result as an uninterrupted run.
 *   dsmrun -n 4 examples/resume                   the uninterrupted run
 *   dsmrun -n 4 examples/resume DIR --crash       checkpoint at step 500 into DIR, then node 0 dies (SIGKILL)
 *   dsmrun -n 4 examples/resume DIR               restore DIR/current when there is one, else start afresh
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dsm.h>

#define STEPS 1000
#define WORDS 4096

struct state {
    uint64_t data[WORDS];
    dsm_thread_t worker;
    char dir[200];
};

static void *work(void *arg)
{
    struct state *st = arg;
    uint64_t acc = 0; /* lives on the worker's stack: saved with the checkpoint */
    for (uint64_t i = 0; i < STEPS; i++) {
        if (i == STEPS / 2 && st->dir[0] && dsm_checkpoint(st->dir) != DSM_OK)
            return (void *)1;
        dsm_migrate((int)(i % (uint64_t)dsm_size()));
        uint64_t *w = &st->data[(i * 613) % WORDS];
        *w = *w * 6364136223846793005ull + i;
        acc ^= *w + (acc << 7);
    }
    return (void *)(uintptr_t)(acc | 2); /* never 0 or 1: those say failure */
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "resume: %s: %s\n", what, dsm_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "";
    int crash = argc > 2 && strcmp(argv[2], "--crash") == 0;
    int rc = dsm_init(&argc, &argv);
    if (rc != DSM_OK)
        return fail("dsm_init", rc);
    char cur[256];
    struct stat sb;
    snprintf(cur, sizeof cur, "%s/current", dir);
    struct state *st;
    if (dir[0] && stat(cur, &sb) == 0) { /* every node sees the same directory */
        if ((rc = dsm_restore(dir)) != DSM_OK)
            return fail("dsm_restore", rc);
        st = *dsm_root();
        if (dsm_rank() == 0)
            printf("resume: restored %s; the worker goes on from step %d\n", cur, STEPS / 2);
    } else {
        st = dsm_alloc(sizeof *st);
        if (!st)
            return fail("dsm_alloc", dsm_last_error());
        if (dsm_rank() == 0) {
            snprintf(st->dir, sizeof st->dir, "%s", dir);
            *dsm_root() = st;
            if ((rc = dsm_thread_create(&st->worker, 0, work, st)) != DSM_OK)
                return fail("dsm_thread_create", rc);
        }
        if ((rc = dsm_barrier()) != DSM_OK)
            return fail("dsm_barrier", rc);
        if (dir[0]) {
            while ((rc = dsm_checkpoint(dir)) == DSM_EBUSY) /* until the worker waits in its checkpoint */
                usleep(1000);
            if (rc != DSM_OK)
                return fail("dsm_checkpoint", rc);
            if (crash && dsm_rank() == 0) {
                printf("resume: checkpoint written to %s; node 0 now dies\n", dir);
                fflush(stdout);
                raise(SIGKILL);
            }
        }
    }
    int status = 0;
    if (dsm_rank() == 0) {
        void *ret = NULL;
        if ((rc = dsm_thread_join(st->worker, &ret)) != DSM_OK || (uintptr_t)ret < 2) {
            fprintf(stderr, "resume: the worker failed (%s)\n", dsm_strerror(rc));
            status = 1;
        } else {
            printf("resume: result %016llx\n", (unsigned long long)(uintptr_t)ret);
        }
    }
    if (dsm_barrier() != DSM_OK || dsm_finalize() != DSM_OK)
        status = 1;
    return status;
}
