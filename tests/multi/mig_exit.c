/* SPDX-License-Identifier: MIT */
/*
 * mig_exit - exit() called in a dsm thread is forwarded to rank 0 (run by tests/multi/mig_exit.sh): a dsm thread
 * started on the last node calls exit(3) after migrating there; rank 0's atexit handler must run and rank 0 exit
 * with 3, while the last node's own atexit handler must not (its carrier has the job's pointer guard).
 */
#include "config.h"

#include "mt.h"

static void said_rank0(void)
{
    printf("mig_exit: atexit handler of rank 0 ran\n");
    fflush(stdout);
}

static void said_other(void)
{
    printf("mig_exit: atexit handler of rank %d ran\n", dsm_rank());
    fflush(stdout);
}

static void *quit(void *arg)
{
    (void)arg;
    MT_CHECK(dsm_migrate(dsm_size() - 1) == DSM_OK, "dsm_migrate");
    exit(3);
}

int main(int argc, char **argv)
{
    mt_aslr_off(argv);
    mt_init(&argc, &argv);
    atexit(dsm_rank() == 0 ? said_rank0 : said_other);
    if (dsm_rank() == 0) {
        dsm_thread_t t;
        MT_CHECK(dsm_thread_create(&t, 0, quit, NULL) == DSM_OK, "dsm_thread_create");
        dsm_thread_join(t, NULL); /* never returns: the process exits meanwhile */
        fprintf(stderr, "mig_exit: the join returned\n");
        return 1;
    }
    dsm_barrier(); /* never completes: rank 0 leaves */
    return 1;
}
