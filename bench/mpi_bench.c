/* SPDX-License-Identifier: MIT */
/*
 * mpi_bench - the MPI RMA baseline of the benchmarks (DESIGN.md 4.8): what a user would otherwise pick. Under
 * mpirun -n 2, rank 0 times MPI_Get, MPI_Put (each completed by MPI_Win_flush) and MPI_Fetch_and_op on a
 * window of rank 1, passive target (MPI_Win_lock_all), with the sizes of dsm_bench's bulk set; rank 0 reports.
 */
#include "config.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/shim.h"

#define MAX_LEN (16u << 20)

static int me;
static MPI_Win win;
static char *local;
static double scale = 1.0;

static void mpi_check(int rc, const char *what)
{
    if (rc != MPI_SUCCESS) {
        fprintf(stderr, "mpi_bench rank %d: %s failed (%d)\n", me, what, rc);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

/* arg 0: bytes; arg 1: 0 get, 1 put. */
static void b_rma(dsm_bench_state_t *st)
{
    int len = (int)dsm_bench_arg(st, 0), put = (int)dsm_bench_arg(st, 1);
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        if (me == 0) {
            if (put)
                mpi_check(MPI_Put(local, len, MPI_BYTE, 1, 0, len, MPI_BYTE, win), "MPI_Put");
            else
                mpi_check(MPI_Get(local, len, MPI_BYTE, 1, 0, len, MPI_BYTE, win), "MPI_Get");
            mpi_check(MPI_Win_flush(1, win), "MPI_Win_flush");
        }
        dsm_bench_set_time(st, me == 0 ? dsm_bench_now() - t0 : 1e-9);
    }
    dsm_bench_set_bytes(st, dsm_bench_max_iterations(st) * (int64_t)len);
    MPI_Barrier(MPI_COMM_WORLD);
}

static void b_fetch_add(dsm_bench_state_t *st)
{
    uint64_t one = 1, old;
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        if (me == 0) {
            mpi_check(MPI_Fetch_and_op(&one, &old, MPI_UINT64_T, 1, 0, MPI_SUM, win), "MPI_Fetch_and_op");
            mpi_check(MPI_Win_flush(1, win), "MPI_Win_flush");
        }
        dsm_bench_set_time(st, me == 0 ? dsm_bench_now() - t0 : 1e-9);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void b_barrier(dsm_bench_state_t *st)
{
    while (dsm_bench_next(st)) {
        double t0 = dsm_bench_now();
        MPI_Barrier(MPI_COMM_WORLD);
        dsm_bench_set_time(st, dsm_bench_now() - t0);
    }
}

static int64_t iters(int64_t n)
{
    int64_t v = (int64_t)((double)n * scale);
    return v < 2 ? 2 : v;
}

int main(int argc, char **argv)
{
    int k = 1;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--scale=", 8) == 0)
            scale = atof(argv[i] + 8);
        else
            argv[k++] = argv[i];
    }
    argc = k;
    argv[k] = NULL;
    if (!(scale > 0)) {
        fprintf(stderr, "mpi_bench: --scale wants a positive number\n");
        return 2;
    }
    MPI_Init(&argc, &argv);
    int n;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    if (n < 2) {
        fprintf(stderr, "mpi_bench: run it under mpirun -n 2 or more\n");
        MPI_Finalize();
        return 2;
    }
    void *base;
    mpi_check(MPI_Win_allocate(MAX_LEN, 1, MPI_INFO_NULL, MPI_COMM_WORLD, &base, &win), "MPI_Win_allocate");
    memset(base, 0, MAX_LEN);
    local = calloc(1, MAX_LEN);
    mpi_check(MPI_Win_lock_all(0, win), "MPI_Win_lock_all");
    MPI_Barrier(MPI_COMM_WORLD);

    char v[32];
    snprintf(v, sizeof v, "%d", n);
    dsm_bench_context("mpi_nodes", v);
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len;
    MPI_Get_library_version(lib, &len);
    char *nl = strchr(lib, ',');
    if (nl)
        *nl = 0;
    dsm_bench_context("mpi_library", lib);
    dsm_bench_t *b = dsm_bench_iterations(dsm_bench_register("mpi/rma", b_rma), iters(200));
    for (int put = 0; put < 2; put++) {
        for (int64_t s = 8; s < 4096; s *= 512)
            dsm_bench_with_args(b, s, put);
        for (int64_t s = 4096; s <= MAX_LEN; s *= 4)
            dsm_bench_with_args(b, s, put);
    }
    dsm_bench_iterations(dsm_bench_register("mpi/fetch_add", b_fetch_add), iters(1000));
    dsm_bench_iterations(dsm_bench_register("mpi/barrier", b_barrier), iters(500));
    int rc = dsm_bench_run(&argc, argv, me == 0);
    mpi_check(MPI_Win_unlock_all(win), "MPI_Win_unlock_all");
    MPI_Win_free(&win);
    free(local);
    MPI_Finalize();
    return rc;
}
