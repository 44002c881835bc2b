/* SPDX-License-Identifier: MIT */
/* Strangers connecting to a node's TCP listening port are refused while the job goes on: garbage bytes, a
 * hello with the wrong job id, a hello impersonating a connected rank, and a truncated header. Rank 1 plays the
 * stranger against rank 0; afterwards every node exchanges messages and passes barriers, and rank 0 counts
 * exactly the refused connections. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_X = DSM_AM_TEST_FIRST };
static uint32_t got;

static int on_x(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)src; (void)id; (void)hdr; (void)hl;
    if (len != 3 || memcmp(p, "abc", 3))
        return DSM_EPROTO;
    mt_bump(&got);
    return DSM_OK;
}

static int stranger(const struct sockaddr_in *sa, const void *bytes, size_t n, int expect_close)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    MT_CHECK(fd >= 0, "socket");
    MT_CHECK(connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0, "connect to rank 0: %s", strerror(errno));
    MT_CHECK(send(fd, bytes, n, MSG_NOSIGNAL) == (ssize_t)n, "send");
    int closed = 0;
    if (expect_close) {
        /* Rank 0 must close on us; we never get a byte back. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        MT_CHECK(poll(&p, 1, MT_WAIT_MS) == 1, "rank 0 did not close a stranger's connection");
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        closed = r == 0 || (r < 0 && errno == ECONNRESET);
        MT_CHECK(closed, "rank 0 answered a stranger (recv %zd)", r);
    }
    close(fd);
    return closed;
}

static void hello(uint8_t *frame, uint64_t job, uint32_t src, uint32_t dst, uint32_t size)
{
    dsm_wire_hdr_t h = {.type = DSM_WIRE_HELLO, .src = src, .hdr_len = DSM_WIRE_HELLO_SIZE};
    dsm_wire_hdr_enc(frame, &h);
    dsm_wire_hello_t m = {.job_id = job, .src = src, .dst = dst, .size = size, .proto = DSM_WIRE_VERSION};
    dsm_wire_hello_enc(frame + DSM_WIRE_HDR_SIZE, &m);
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    if (strcmp(dsm_transport_name(), "tcp") != 0) {
        if (me == 0)
            printf("garbage_conn needs the tcp transport (this run uses %s)\n", dsm_transport_name());
        mt_finalize();
        return 77;
    }
    MT_CHECK(dsm_am_register(AM_X, on_x, NULL) == DSM_OK, "register");
    dsm_boot_t *b = dsm_core_boot();
    if (me == 1) {
        char addr[64];
        size_t len = sizeof addr;
        MT_CHECK(b->get(b, 0, "tp.tcp", addr, &len) == DSM_OK, "rank 0's address");
        char *colon = strrchr(addr, ':');
        *colon = '\0';
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
        MT_CHECK(inet_pton(AF_INET, addr, &sa.sin_addr) == 1, "address %s", addr);

        const char junk[] = "GET / HTTP/1.1\r\nHost: rank0\r\n\r\n";
        stranger(&sa, junk, sizeof junk - 1, 1);
        uint8_t frame[DSM_WIRE_HDR_SIZE + DSM_WIRE_HELLO_SIZE];
        /* A well-formed hello of another job. */
        hello(frame, dsm_core_boot()->job_id ^ 1, 2 % (uint32_t)n, 0, (uint32_t)n);
        stranger(&sa, frame, sizeof frame, 1);
        /* A rank that is already connected cannot connect again. */
        hello(frame, dsm_core_boot()->job_id, 1, 0, (uint32_t)n);
        stranger(&sa, frame, sizeof frame, 1);
        /* Half a header, then gone. */
        stranger(&sa, frame, 10, 0);
    }
    /* The job works as before. */
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (int p = 0; p < n; p++)
        if (p != me)
            MT_CHECK(dsm_am_send(p, AM_X, NULL, 0, "abc", 3) == DSM_OK, "send");
    mt_wait_at_least(&got, (uint32_t)n - 1, "messages after the strangers");
    if (me == 0) {
        int64_t end = mt_now_ms() + MT_WAIT_MS;
        dsm_stats_core_t s;
        do {
            dsm_core_stats(&s);
            if (s.conns_refused >= 4)
                break;
            usleep(10000);
        } while (mt_now_ms() < end);
        MT_CHECK(s.conns_refused == 4, "rank 0 refused %llu connections, want 4",
                 (unsigned long long)s.conns_refused);
        printf("strangers refused: %llu; job unaffected\n", (unsigned long long)s.conns_refused);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
