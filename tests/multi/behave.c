/* SPDX-License-Identifier: MIT */
/*
 * behave - a rank that misbehaves on request, for the launcher and fail-stop tests (launch.sh):
 *   behave ok                  init, print "rank R of N", barrier, finalize
 *   behave exit R CODE         rank R exits with CODE after init; the others wait in barriers
 *   behave kill R              rank R kills itself with SIGKILL after init; the others wait in barriers
 *   behave sleep DIR           init, create DIR/ready.R, sleep (for signal forwarding)
 *   behave noinit R            rank R exits 0 without dsm_init; the others call dsm_init
 *   behave nofinalize          init, barrier, exit 0
 *   behave mismatch            rank 1 sets DSM_TRANSPORT=tcp before init (the others keep the default)
 *   behave clash               rank 1 maps memory at DSM_BASE before init
 *   behave extrabarrier        rank 0 calls dsm_barrier once more than the others, then all finalize
 *   behave segv                rank 0 dereferences NULL after init
 *   behave pingpong-kill R     ranks 0 and 1 hand a page (homed on the last rank) back and forth; rank R kills
 *                              itself with SIGKILL in the middle; the others wait in barriers
 *   behave lockwait-kill       rank 0 holds a lock that rank 1 waits for, then kills itself
 *   behave name                init, print "rank R transport NAME", barrier, finalize (rdma.sh)
 *   behave pingpong-ready DIR  as pingpong-kill without a victim; each rank creates DIR/ready.R once running
 *   behave joinwait-kill       rank 0 joins a dsm thread it started on rank 1; rank 1 kills itself once the
 *                              thread runs there (start it with address randomization off, e.g. setarch -R)
 * Every mode sets an error handler that prints "behave: error handler (err E, node N)" (failstop.sh counts it).
 * Exit status: 0, or the dsm_init error's status as a positive number (e.g. 7 for DSM_EMISMATCH).
 */
#include "config.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dsm.h"

static int env_rank(void)
{
    const char *r = getenv("DSM_RANK");
    if (!r)
        r = getenv("OMPI_COMM_WORLD_RANK");
    return r ? atoi(r) : 0;
}

static int init_or_exit(void)
{
    int rc = dsm_init(NULL, NULL);
    if (rc != DSM_OK) {
        fprintf(stderr, "rank %d: dsm_init: %s\n", env_rank(), dsm_strerror(rc));
        exit(-rc);
    }
    return rc;
}

static void on_error(int err, int node)
{
    char b[96];
    int n = snprintf(b, sizeof b, "behave: error handler (err %d, node %d)\n", err, node);
    ssize_t w = write(STDERR_FILENO, b, (size_t)n);
    (void)w;
}

static volatile int sleeper_started; /* set in the process the dsm thread runs in */

static void *sleeper(void *arg)
{
    (void)arg;
    sleeper_started = 1;
    for (;;)
        usleep(10000);
    return NULL;
}

static void barriers_forever(void)
{
    for (;;)
        if (dsm_barrier() != DSM_OK)
            exit(2);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "ok";
    dsm_set_error_handler(on_error);
    int arg = argc > 2 ? atoi(argv[2]) : 0;
    if (!strcmp(mode, "noinit") && env_rank() == arg)
        return 0;
    if (!strcmp(mode, "mismatch") && env_rank() == 1)
        setenv("DSM_TRANSPORT", "tcp", 1);
    if (!strcmp(mode, "clash") && env_rank() == 1) {
        const char *b = getenv("DSM_BASE");
        void *want = (void *)(uintptr_t)strtoull(b ? b : "0x200000000000", NULL, 0);
        if (mmap(want, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != want)
            return 99;
    }
    init_or_exit();
    int me = dsm_rank();
    if (!strcmp(mode, "ok") || !strcmp(mode, "noinit") || !strcmp(mode, "mismatch") || !strcmp(mode, "clash")) {
        printf("rank %d of %d\n", me, dsm_size());
        fflush(stdout);
        if (dsm_barrier() != DSM_OK || dsm_finalize() != DSM_OK)
            return 1;
        return 0;
    }
    if (!strcmp(mode, "exit")) {
        if (dsm_barrier() != DSM_OK)
            return 1;
        if (me == arg)
            exit(atoi(argv[3]));
        barriers_forever();
    }
    if (!strcmp(mode, "kill")) {
        if (dsm_barrier() != DSM_OK)
            return 1;
        if (me == arg)
            raise(SIGKILL);
        barriers_forever();
    }
    if (!strcmp(mode, "sleep")) {
        char path[4096];
        snprintf(path, sizeof path, "%s/ready.%d", argv[2], me);
        close(open(path, O_CREAT | O_WRONLY, 0600));
        for (;;)
            pause();
    }
    if (!strcmp(mode, "extrabarrier")) {
        if (dsm_barrier() != DSM_OK || (me == 0 && dsm_barrier() != DSM_OK))
            return 2;
        return dsm_finalize() == DSM_OK ? 0 : 1;
    }
    if (!strcmp(mode, "segv")) {
        if (me == 0)
            *(volatile int *)NULL = 1;
        barriers_forever();
    }
    if (!strcmp(mode, "pingpong-kill")) {
        volatile uint64_t *pg = dsm_alloc_home(4096, dsm_size() - 1);
        if (!pg || dsm_barrier() != DSM_OK)
            return 2;
        if (me < 2)
            for (uint64_t i = (uint64_t)me;; i += 2) {
                while (pg[0] != i)
                    ;
                if (me == arg && i > 50)
                    raise(SIGKILL);
                pg[1] = i;
                pg[0] = i + 1;
            }
        barriers_forever();
    }
    if (!strcmp(mode, "name")) {
        printf("rank %d transport %s\n", me, dsm_transport_name());
        fflush(stdout);
        return dsm_barrier() == DSM_OK && dsm_finalize() == DSM_OK ? 0 : 1;
    }
    if (!strcmp(mode, "pingpong-ready")) {
        volatile uint64_t *pg = dsm_alloc_home(4096, dsm_size() - 1);
        if (!pg || dsm_barrier() != DSM_OK || argc < 3)
            return 2;
        char path[4096];
        snprintf(path, sizeof path, "%s/ready.%d", argv[2], me);
        close(open(path, O_CREAT | O_WRONLY, 0600));
        if (me < 2)
            for (uint64_t i = (uint64_t)me;; i += 2) {
                while (pg[0] != i)
                    ;
                pg[1] = i;
                pg[0] = i + 1;
            }
        barriers_forever();
    }
    if (!strcmp(mode, "lockwait-kill")) {
        dsm_lock_t *l = dsm_lock_create();
        if (!l || (me == 0 && dsm_lock(l) != DSM_OK) || dsm_barrier() != DSM_OK)
            return 2;
        if (me == 0) {
            usleep(300000);
            raise(SIGKILL);
        }
        if (me == 1) {
            dsm_lock(l);
            return 3; /* the holder died: this must never be granted */
        }
        barriers_forever();
    }
    if (!strcmp(mode, "joinwait-kill")) {
        if (dsm_barrier() != DSM_OK)
            return 2;
        if (me == 0) {
            dsm_thread_t t;
            int rc = dsm_thread_create(&t, 1, sleeper, NULL);
            if (rc != DSM_OK) {
                fprintf(stderr, "behave: dsm_thread_create: %s\n", dsm_strerror(rc));
                return 4;
            }
            dsm_thread_join(t, NULL);
            return 3; /* node 1 died with the thread: the join must never return */
        }
        if (me == 1) {
            for (int i = 0; i < 6000 && !sleeper_started; i++)
                usleep(10000);
            if (!sleeper_started)
                return 5;
            usleep(100000);
            raise(SIGKILL);
        }
        barriers_forever();
    }
    if (!strcmp(mode, "nofinalize")) {
        dsm_barrier();
        return 0;
    }
    fprintf(stderr, "behave: unknown mode %s\n", mode);
    return 98;
}
