/* SPDX-License-Identifier: MIT */
/*
 * jacobi - a 2-D Jacobi stencil over shared memory: two n x n grids from dsm_alloc, rows split in blocks over
 * the nodes (dsm_alloc homes pages the same way, so each node mostly touches its own pages and only the rows
 * at block edges travel). After the iterations, rank 0 repeats the computation serially in private memory and
 * compares every value: the run fails unless they are identical.
 *   dsmrun -n 4 examples/jacobi [n] [iterations]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dsm.h>

static void init(double *g, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            g[(size_t)i * n + j] = (i == 0 || j == 0 || i == n - 1 || j == n - 1) ? (double)(i + j) / n : 0.0;
}

/* One sweep of rows [lo, hi) from a into b. */
static void sweep(const double *a, double *b, int n, int lo, int hi)
{
    for (int i = lo; i < hi; i++)
        for (int j = 0; j < n; j++) {
            size_t k = (size_t)i * n + j;
            if (i == 0 || j == 0 || i == n - 1 || j == n - 1)
                b[k] = a[k];
            else
                b[k] = 0.25 * (a[k - n] + a[k + n] + a[k - 1] + a[k + 1]);
        }
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "jacobi: %s: %s\n", what, dsm_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    int rc = dsm_init(&argc, &argv);
    if (rc != DSM_OK)
        return fail("dsm_init", rc);
    int n = argc > 1 ? atoi(argv[1]) : 256, iters = argc > 2 ? atoi(argv[2]) : 40;
    if (n < 3 || iters < 1) {
        fprintf(stderr, "usage: jacobi [n >= 3] [iterations >= 1]\n");
        return 2;
    }
    int me = dsm_rank(), size = dsm_size();
    size_t bytes = (size_t)n * n * sizeof(double);
    double *a = dsm_alloc(bytes), *b = dsm_alloc(bytes);
    if (!a || !b)
        return fail("dsm_alloc", dsm_last_error());
    int lo = (int)((long)n * me / size), hi = (int)((long)n * (me + 1) / size);
    /* Each node initializes its own rows: first touch brings them in Modified. */
    double *tmp = malloc(bytes);
    init(tmp, n);
    memcpy(a + (size_t)lo * n, tmp + (size_t)lo * n, (size_t)(hi - lo) * n * sizeof(double));
    if ((rc = dsm_barrier()))
        return fail("dsm_barrier", rc);
    for (int it = 0; it < iters; it++) {
        sweep(a, b, n, lo, hi);
        if ((rc = dsm_barrier()))
            return fail("dsm_barrier", rc);
        double *t = a;
        a = b;
        b = t;
    }
    int bad = 0;
    if (me == 0) {
        double *x = tmp, *y = malloc(bytes);
        for (int it = 0; it < iters; it++) {
            sweep(x, y, n, 0, n);
            double *t = x;
            x = y;
            y = t;
        }
        double diff = 0, sum = 0;
        for (size_t k = 0; k < (size_t)n * n; k++) {
            diff = fmax(diff, fabs(x[k] - a[k]));
            sum += a[k];
        }
        bad = diff != 0.0;
        printf("jacobi: %d x %d grid, %d iterations on %d nodes over %s: sum %.12g, %s serial result\n", n, n,
               iters, size, dsm_transport_name(), sum, bad ? "DIFFERS FROM the" : "identical to the");
        free(x == tmp ? y : x);
    }
    free(tmp);
    if ((rc = dsm_barrier()))
        return fail("dsm_barrier", rc);
    if ((rc = dsm_finalize()))
        return fail("dsm_finalize", rc);
    return bad;
}
