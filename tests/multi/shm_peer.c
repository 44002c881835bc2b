/* SPDX-License-Identifier: MIT */
/*
 * A misbehaving local process against the shm provider (issue 9).
 *
 *   shm_peer                 (the suite, any provider) where node 1 is reached through shm, rank 0 connects to
 *                            rank 1's local socket as a stranger would and says nonsense; rank 1 must refuse it
 *                            and count it, and the job must carry on and pass.
 *   shm_peer garbage SEED    (tests/multi/shm.sh) rank 1 writes nonsense into its queue to rank 0; rank 0 must
 *                            report a malformed message and fail stop, never crash. The job fails on purpose.
 *   shm_peer reply-garbage SEED   the same with nonsense in rank 0's reply slots (a reply it never asked for).
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/multi/mt.h"
#include "transport/shm/shm.h"

static void stranger(int me, int n)
{
    const char *tp = dsm_core_peer_transport(n > 1 ? 1 : 0);
    int local = me == 0 && n > 1 && tp && strcmp(tp, "shm") == 0;
    if (local) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int len = snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "libdsm-shm-%016llx-%d",
                           (unsigned long long)dsm_core_boot()->job_id, 1);
        int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        MT_CHECK(fd >= 0, "socket");
        MT_CHECK(connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                                                                 (size_t)len)) == 0,
                 "connecting to rank 1's local socket");
        const char junk[] = "let me in";
        ssize_t w = send(fd, junk, sizeof junk, MSG_NOSIGNAL);
        (void)w;
        char c;
        /* Refused: the connection is closed by rank 1. */
        MT_CHECK(recv(fd, &c, 1, 0) <= 0, "rank 1 answered a stranger");
        close(fd);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier after the stranger");
    if (me == 1 && n > 1 && strcmp(dsm_core_peer_transport(0), "shm") == 0) {
        dsm_stats_core_t s;
        dsm_core_stats(&s);
        MT_CHECK(s.conns_refused >= 1, "rank 1 counted %llu refused connections", (unsigned long long)s.conns_refused);
    }
    /* The job still works. */
    uint64_t *v = dsm_alloc(4096);
    MT_CHECK(v, "dsm_alloc");
    if (me == n - 1)
        *v = 42;
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(*v == 42, "read %llu", (unsigned long long)*v);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    if (me == 0)
        printf("stranger %s; job unaffected\n", local ? "refused" : "not tried (node 1 is not reached through shm)");
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    int replies = argc > 2 && strcmp(argv[1], "reply-garbage") == 0;
    if (argc > 2 && (strcmp(argv[1], "garbage") == 0 || replies)) {
        MT_CHECK(n >= 2 && strcmp(dsm_core_peer_transport(me ^ 1), "shm") == 0, "needs shm between ranks 0, 1");
        if (me == 1) {
            unsigned seed = (unsigned)strtoul(argv[2], NULL, 10);
            MT_CHECK((replies ? dsm_tp_shm_debug_reply_garbage(0, seed) : dsm_tp_shm_debug_garbage(0, seed)) ==
                         DSM_OK, "garbage");
            /* Rank 0 fails stop on reading it; this rank then sees its socket close and fails stop too. */
            sleep(60);
            fprintf(stderr, "rank 1: still running 60 s after writing garbage\n");
            return 2;
        }
        /* Rank 1 never comes: only the garbage can end this barrier, by failing this node. */
        dsm_barrier();
        fprintf(stderr, "rank %d: left a barrier that should have failed\n", me);
        return 2;
    }
    stranger(me, n);
    mt_finalize();
    return 0;
}
