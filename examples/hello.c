/* SPDX-License-Identifier: MIT */
/*
 * hello - the smallest libdsm program: join the job, say who we are, meet at a barrier, leave.
 *   dsmrun -n 4 examples/hello
 */
#include <stdio.h>
#include <stdlib.h>

#include <dsm.h>

int main(int argc, char **argv)
{
    int rc = dsm_init(&argc, &argv);
    if (rc != DSM_OK) {
        fprintf(stderr, "dsm_init: %s\n", dsm_strerror(rc));
        return 1;
    }
    printf("hello from rank %d of %d (transport %s)\n", dsm_rank(), dsm_size(), dsm_transport_name());
    fflush(stdout);
    if ((rc = dsm_barrier()) != DSM_OK || (rc = dsm_finalize()) != DSM_OK) {
        fprintf(stderr, "libdsm: %s\n", dsm_strerror(rc));
        return 1;
    }
    return 0;
}
