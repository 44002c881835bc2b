/* SPDX-License-Identifier: MIT */
/*
 * matmul - C = A x B for dense n x n matrices in shared memory: rank 0 fills A and B, every node computes a
 * block of rows of C (reading all of B, so B's pages end up shared everywhere), and rank 0 checks every element
 * against a serial product computed in the same order: the run fails unless they are identical.
 *   dsmrun -n 4 examples/matmul [n]
 */
#include <stdio.h>
#include <stdlib.h>

#include <dsm.h>

static void rows(const double *a, const double *b, double *c, int n, int lo, int hi)
{
    for (int i = lo; i < hi; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++)
                s += a[(size_t)i * n + k] * b[(size_t)k * n + j];
            c[(size_t)i * n + j] = s;
        }
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "matmul: %s: %s\n", what, dsm_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    int rc = dsm_init(&argc, &argv);
    if (rc != DSM_OK)
        return fail("dsm_init", rc);
    int n = argc > 1 ? atoi(argv[1]) : 160;
    if (n < 1) {
        fprintf(stderr, "usage: matmul [n >= 1]\n");
        return 2;
    }
    int me = dsm_rank(), size = dsm_size();
    size_t bytes = (size_t)n * n * sizeof(double);
    double *a = dsm_alloc(bytes), *b = dsm_alloc(bytes), *c = dsm_alloc(bytes);
    if (!a || !b || !c)
        return fail("dsm_alloc", dsm_last_error());
    if (me == 0)
        for (size_t k = 0; k < (size_t)n * n; k++) {
            a[k] = (double)(k % 17) - 8;
            b[k] = (double)(k % 13) / 4;
        }
    if ((rc = dsm_barrier()))
        return fail("dsm_barrier", rc);
    rows(a, b, c, n, (int)((long)n * me / size), (int)((long)n * (me + 1) / size));
    if ((rc = dsm_barrier()))
        return fail("dsm_barrier", rc);
    int bad = 0;
    if (me == 0) {
        double *ref = malloc(bytes), trace = 0;
        rows(a, b, ref, n, 0, n);
        for (size_t k = 0; k < (size_t)n * n; k++)
            bad += ref[k] != c[k];
        for (int i = 0; i < n; i++)
            trace += c[(size_t)i * n + i];
        printf("matmul: %d x %d on %d nodes over %s: trace %.12g, %d elements differ from the serial product\n", n,
               n, size, dsm_transport_name(), trace, bad);
        free(ref);
    }
    if ((rc = dsm_barrier()))
        return fail("dsm_barrier", rc);
    if ((rc = dsm_finalize()))
        return fail("dsm_finalize", rc);
    return bad != 0;
}
