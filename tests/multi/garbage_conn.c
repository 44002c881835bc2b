/* SPDX-License-Identifier: MIT */
/* Strangers connecting to a node's TCP listening port are refused while the job goes on: garbage bytes, a
 * hello with the wrong job id, a frame before any hello, a process without the job secret, one with a wrong
 * secret, a member with the right secret impersonating a connected rank, and a truncated header. Rank 1 plays
 * the stranger against rank 0 (and checks that rank 0's own answer proves the secret); afterwards every node
 * exchanges messages and passes barriers, and rank 0 counts exactly the refused connections. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/multi/mt.h"
#include "transport/auth.h"
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

static void hello(uint8_t *frame, uint64_t job, uint32_t src, uint32_t dst, uint32_t size, const uint8_t *nonce)
{
    dsm_wire_hdr_t h = {.type = DSM_WIRE_HELLO, .src = src, .hdr_len = DSM_WIRE_HELLO_SIZE};
    dsm_wire_hdr_enc(frame, &h);
    dsm_wire_hello_t m = {.job_id = job, .src = src, .dst = dst, .size = size, .proto = DSM_WIRE_VERSION};
    if (nonce)
        memcpy(m.nonce, nonce, sizeof m.nonce);
    dsm_wire_hello_enc(frame + DSM_WIRE_HDR_SIZE, &m);
}

/* A correct hello as rank 1, then the answer to rank 0's challenge under key (NULL: all zero bytes, what a
 * process without the secret can send). Rank 0's own MAC must verify under the real secret; then it must close. */
static void stranger_auth(const struct sockaddr_in *sa, const uint8_t *key, int n)
{
    const uint8_t *secret = dsm_core_secret();
    MT_CHECK(secret != NULL, "this job runs with authentication on");
    dsm_auth_ctx_t ax = {.job_id = dsm_core_boot()->job_id, .connector = 1, .acceptor = 0, .size = (uint32_t)n};
    dsm_auth_nonce(ax.nonce_c);
    uint8_t frame[DSM_WIRE_HDR_SIZE + DSM_WIRE_HELLO_SIZE];
    hello(frame, ax.job_id, 1, 0, (uint32_t)n, ax.nonce_c);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    MT_CHECK(fd >= 0, "socket");
    MT_CHECK(connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0, "connect to rank 0: %s", strerror(errno));
    MT_CHECK(send(fd, frame, sizeof frame, MSG_NOSIGNAL) == (ssize_t)sizeof frame, "send");
    size_t got_b = 0;
    while (got_b < sizeof frame) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        MT_CHECK(poll(&p, 1, MT_WAIT_MS) == 1, "rank 0 did not answer a well-formed hello");
        ssize_t r = recv(fd, frame + got_b, sizeof frame - got_b, 0);
        MT_CHECK(r > 0, "rank 0 closed before answering a well-formed hello");
        got_b += (size_t)r;
    }
    dsm_wire_hdr_t h;
    const char *why = NULL;
    dsm_wire_limits_t lim = {.nranks = (uint32_t)n, .payload_max = 0};
    MT_CHECK(dsm_wire_hdr_dec(frame, sizeof frame, &lim, &h, &why) == DSM_OK && h.type == DSM_WIRE_HELLO_ACK,
             "rank 0's answer is a hello ack");
    dsm_wire_hello_t ack;
    dsm_wire_hello_dec(frame + DSM_WIRE_HDR_SIZE, &ack);
    memcpy(ax.nonce_a, ack.nonce, sizeof ax.nonce_a);
    MT_CHECK(dsm_auth_check(secret, DSM_AUTH_ACCEPTOR, &ax, ack.mac) == 0, "rank 0's MAC proves the job secret");
    uint8_t a[DSM_WIRE_HDR_SIZE + DSM_WIRE_AUTH_SIZE] = {0};
    dsm_wire_hdr_t ah = {.type = DSM_WIRE_AUTH, .src = 1, .hdr_len = DSM_WIRE_AUTH_SIZE};
    dsm_wire_hdr_enc(a, &ah);
    if (key)
        dsm_auth_mac(key, DSM_AUTH_CONNECTOR, &ax, a + DSM_WIRE_HDR_SIZE);
    MT_CHECK(send(fd, a, sizeof a, MSG_NOSIGNAL) == (ssize_t)sizeof a, "send");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    MT_CHECK(poll(&p, 1, MT_WAIT_MS) == 1, "rank 0 did not close after the authentication");
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    MT_CHECK(r == 0 || (r < 0 && errno == ECONNRESET), "rank 0 answered after a refused authentication (%zd)", r);
    close(fd);
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
        hello(frame, dsm_core_boot()->job_id ^ 1, 2 % (uint32_t)n, 0, (uint32_t)n, NULL);
        stranger(&sa, frame, sizeof frame, 1);
        /* A frame of the job before any hello. */
        uint8_t am[DSM_WIRE_HDR_SIZE];
        dsm_wire_hdr_t amh = {.type = DSM_WIRE_AM, .src = 1, .am_id = AM_X};
        dsm_wire_hdr_enc(am, &amh);
        stranger(&sa, am, sizeof am, 1);
        /* No secret, then a wrong one: refused after the challenge. */
        stranger_auth(&sa, NULL, n);
        uint8_t wrong[DSM_AUTH_KEY_SIZE];
        memcpy(wrong, dsm_core_secret(), sizeof wrong);
        wrong[0] ^= 1;
        stranger_auth(&sa, wrong, n);
        /* The right secret, but rank 1 is already connected: it cannot connect again. */
        stranger_auth(&sa, dsm_core_secret(), n);
        /* Half a header, then gone. */
        hello(frame, dsm_core_boot()->job_id, 1, 0, (uint32_t)n, NULL);
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
            if (s.conns_refused >= 7)
                break;
            usleep(10000);
        } while (mt_now_ms() < end);
        MT_CHECK(s.conns_refused == 7, "rank 0 refused %llu connections, want 7",
                 (unsigned long long)s.conns_refused);
        printf("strangers refused: %llu; job unaffected\n", (unsigned long long)s.conns_refused);
    }
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_finalize();
    return 0;
}
