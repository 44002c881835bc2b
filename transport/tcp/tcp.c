/* SPDX-License-Identifier: MIT */
/*
 * tcp.c - the TCP provider (DESIGN.md 4.4): a full mesh of non-blocking TCP_NODELAY sockets driven by epoll,
 * frames of transport/wire.h, and put/get/atomics emulated with request/reply frames served by the target's
 * progress thread. Knows nothing of pages or directories.
 *
 * Connection setup: every node listens on the IPv4 address of DSM_TCP_IFACE (else the first up non-loopback
 * interface, else loopback) and publishes "address:port". The higher rank of each pair connects and sends HELLO
 * (job id, both ranks, job size, protocol, its nonce); the lower rank checks every field and answers HELLO_ACK
 * with its own nonce and MAC (transport/auth.h); the connector checks that MAC and answers AUTH with its own.
 * Only then is the connection bound to the peer's rank; until then any other frame, a wrong field or a wrong MAC
 * is logged and the connection closed. The listener stays open for the whole job, so a stranger's connection at
 * any time is refused the same way, and an unauthenticated connection that stays silent is closed at its
 * deadline.
 *
 * Threads: any thread sends. A send writes straight to the socket when nothing is queued for that peer, else
 * appends to the peer's queue, which progress drains on EPOLLOUT; so sends never block and keep their order.
 * One thread at a time runs progress (the core's progress thread; during connect, the caller of connect).
 * Connections of authenticated peers live until finalize; a failing one is reported through core->peer_lost.
 *
 * Direct replies (transport.h ABI 5): a faulting thread arms a reply slot (a word in this process) and names it
 * in its request; the peer answers with a REPLY frame (a PUT_NOTIFY without ack, seq = the slot) on the same
 * connection, in order with everything else. While it waits, the thread reads that connection itself, so the
 * answer skips this node's progress thread: it takes the connection's read side (c->owner, which progress also
 * takes for each read), drops EPOLLIN from the epoll set so progress is not woken, and reads REPLY frames only,
 * each exactly (its header peeked first). Any other frame stays in the socket, and the thread gives the
 * connection back to progress (EPOLLIN again: level-triggered, so progress sees it) and waits on its slot's word,
 * which whoever handles the REPLY sets. Frames are thus handled in the order they were sent, whoever reads them.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "transport/auth.h"
#include "transport/futex.h"
#include "transport/inaddr.h"
#include "transport/slots.h"
#include "transport/transport.h"
#include "transport/wire.h"

#define TCP_NAME "tcp"
#define TCP_STRANGERS_MAX 64 /* unauthenticated connections at once beyond one per peer; more are closed */
#define TCP_READS_PER_EVENT 16
#define SEND_QUEUE_MIN (64u << 10)
#define TCP_REPLY_SLOTS 63u       /* tokens 1..63: bits of a uint64_t */
#define TCP_REPLY_SPIN_NS 20000u  /* DSM_WAIT=adaptive: a thread waiting for its reply, as libdsm's other waits */

enum { WAIT_SPIN, WAIT_BLOCK, WAIT_ADAPTIVE };
/* States of a reply slot's word. */
enum { SLOT_FREE, SLOT_ARMED, SLOT_SLEEP, SLOT_DONE };

enum conn_state {
    CONN_HELLO_OUT, /* we connected and sent HELLO; waiting for HELLO_ACK */
    CONN_HELLO_IN,  /* accepted; waiting for HELLO */
    CONN_AUTH_IN,   /* accepted, answered HELLO_ACK; waiting for the connector's AUTH */
    CONN_READY,
    CONN_CLOSED,
};

struct tcp_conn {
    int fd;
    int peer;  /* -1 until authenticated */
    enum conn_state state;
    int64_t deadline_ms;  /* for the handshake */
    dsm_auth_ctx_t auth;  /* the handshake's ranks and nonces */
    char name[64];        /* remote address, for logs */
    /* Receive buffer: bytes [roff, rlen) are unparsed. Progress only. */
    uint8_t *rbuf;
    size_t roff, rlen, rcap;
    /* Send queue: bytes [shead, stail) are waiting. Guarded by slock. */
    pthread_mutex_t slock;
    uint8_t *sbuf;
    size_t shead, stail, scap;
    int want_out;
    int left;      /* the peer said BYE */
    int bye_sent;  /* this node said BYE */
    /* Who reads the socket and rbuf: 0 nobody, -1 progress, t > 0 the thread waiting for reply slot t. */
    int owner;
};

struct tcp_slot {
    uint32_t word;       /* SLOT_*: futex word */
    int peer;            /* the peer it is armed for, -1 when free */
    struct tcp_conn *c;  /* the connection whose read side its waiting thread holds, or NULL (owner only) */
};

struct tcp_op {
    struct tcp_op *next;
    uint64_t seq;
    int peer;
    uint8_t reply_type;
    dsm_tp_req_t *req;
    void *dst;
    size_t len;
};

struct tcp_mr {
    void *addr;
    size_t len;
    int used;
};

struct dsm_tp {
    const dsm_tp_core_t *core;
    int lfd, epfd;
    char addr[64];
    struct tcp_conn **peers;
    struct tcp_conn **pending; /* unauthenticated connections, npending slots */
    int npending;
    pthread_mutex_t plock;  /* one progress at a time */
    pthread_rwlock_t mrlock;
    struct tcp_mr *mrs;
    size_t nmr;
    pthread_mutex_t oplock;
    struct tcp_op *ops;
    uint64_t next_seq;
    uint32_t *completed; /* per peer: futex word bumped on every answer */
    dsm_wire_limits_t lim;
    unsigned refused;
    int wait_mode;
    uint64_t reply_free; /* bit t: slot t is free */
    struct tcp_slot slots[TCP_REPLY_SLOTS + 1];
};

static __thread int in_progress; /* this thread runs tcp_progress: it must never wait for a reply itself */
static __thread struct tcp_slot *owned_slot; /* the slot for which this thread holds a connection's read side */

static int listener_tag; /* epoll data for the listening socket */

#define TLOG(tp_x, lvl_x, ...) ((tp_x)->core->log((lvl_x), TCP_NAME, __VA_ARGS__))

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- choosing the address ---- */

/* Find the IPv4 address to advertise: DSM_TCP_IFACE's, else the first up non-loopback, else loopback. */
static int pick_addr(const dsm_tp_core_t *core, struct in_addr *out, char *why, size_t why_len)
{
    const char *want = core->setting ? core->setting("DSM_TCP_IFACE") : NULL;
    struct ifaddrs *ifs, *i;
    if (getifaddrs(&ifs) < 0) {
        snprintf(why, why_len, "getifaddrs: %s", strerror(errno));
        return DSM_ESYS;
    }
    const struct ifaddrs *best = NULL, *lo = NULL, *no_carrier = NULL;
    char names[256] = "";
    for (i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP))
            continue;
        if (strlen(names) + strlen(i->ifa_name) + 3 < sizeof names)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "",
                     i->ifa_name);
        if (want) {
            if (strcmp(i->ifa_name, want) == 0 && !best)
                best = i;
        } else if (i->ifa_flags & IFF_LOOPBACK) {
            if (!lo)
                lo = i;
        } else if ((i->ifa_flags & IFF_RUNNING) && !best) {
            best = i;
        } else if (!no_carrier) {
            no_carrier = i;
        }
    }
    int rc = DSM_OK;
    const char *reason = want ? "DSM_TCP_IFACE" : "first up non-loopback interface";
    /* An interface that is up but has no carrier yet (a veth just created) still beats loopback, which no
     * other host can reach. */
    if (!best && !want && no_carrier) {
        best = no_carrier;
        reason = "first up non-loopback interface, no carrier yet";
    }
    if (!best && !want && lo) {
        best = lo;
        reason = "loopback: no other interface is up";
    }
    if (!best) {
        if (want)
            snprintf(why, why_len, "DSM_TCP_IFACE=%s has no IPv4 address or is down (interfaces with one: %s)",
                     want, names[0] ? names : "none");
        else
            snprintf(why, why_len, "no interface with an IPv4 address is up");
        rc = DSM_EINVAL;
    } else {
        *out = ((const struct sockaddr_in *)best->ifa_addr)->sin_addr;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, out, ip, sizeof ip);
        snprintf(why, why_len, "advertises %s (%s, %s)", ip, best->ifa_name, reason);
    }
    freeifaddrs(ifs);
    return rc;
}

static int tcp_probe(const dsm_tp_core_t *core, char *why, size_t why_len)
{
    struct in_addr a;
    int rc = pick_addr(core, &a, why, why_len);
    if (rc)
        return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, why_len, "socket: %s", strerror(errno));
        return DSM_ESYS;
    }
    close(fd);
    return DSM_OK;
}

/* ---- connections ---- */

static struct tcp_conn *conn_new(int fd, int peer, enum conn_state st, const char *name)
{
    struct tcp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->peer = peer;
    c->state = st;
    /* Room for many small frames from the fault path, which may not grow the queue. */
    c->sbuf = malloc(SEND_QUEUE_MIN);
    c->scap = c->sbuf ? SEND_QUEUE_MIN : 0;
    snprintf(c->name, sizeof c->name, "%s", name);
    pthread_mutex_init(&c->slock, NULL);
    return c;
}

static void conn_free(struct tcp_conn *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->slock);
    free(c->rbuf);
    free(c->sbuf);
    free(c);
}

static void conn_close(dsm_tp_t *tp, struct tcp_conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    epoll_ctl(tp->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    shutdown(c->fd, SHUT_RDWR);
    c->state = CONN_CLOSED;
}

/* Refuse an unauthenticated connection: log, count, close. */
static void conn_refuse(dsm_tp_t *tp, struct tcp_conn *c, const char *why)
{
    TLOG(tp, DSM_LOG_ERROR, "refused connection from %s: %s", c->name, why);
    tp->refused++;
    tp->core->count_refused();
    conn_close(tp, c);
}

/* A peer's connection failed. */
static void conn_fail(dsm_tp_t *tp, struct tcp_conn *c, const char *why)
{
    /* A peer closes after both byes crossed; before this node's bye, it left while this node still needed it
     * (collective calls that do not match), which must not leave this node waiting for it. */
    if (c->state == CONN_READY && c->left) {
        int expected = __atomic_load_n(&c->bye_sent, __ATOMIC_ACQUIRE);
        conn_close(tp, c);
        if (!expected)
            tp->core->peer_lost(c->peer, "it finished (dsm_finalize) while this node was still working with it");
        return;
    }
    if (c->peer >= 0 && c->state == CONN_READY) {
        TLOG(tp, DSM_LOG_ERROR, "connection to node %d (%s) failed: %s", c->peer, c->name, why);
        conn_close(tp, c);
        tp->core->peer_lost(c->peer, why);
        return;
    }
    conn_refuse(tp, c, why);
}

/* Called with slock held (or before the connection is shared). No EPOLLIN while a waiting thread reads it. */
static int set_events(dsm_tp_t *tp, struct tcp_conn *c, int out)
{
    int in = __atomic_load_n(&c->owner, __ATOMIC_ACQUIRE) <= 0;
    struct epoll_event ev = {.events = (in ? EPOLLIN : 0) | (out ? EPOLLOUT : 0), .data.ptr = c};
    return epoll_ctl(tp->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is queued. Called with slock held. Returns 0, or -1 with errno on a broken socket. */
static int flush_queue_locked(dsm_tp_t *tp, struct tcp_conn *c)
{
    while (c->shead < c->stail) {
        ssize_t w = send(c->fd, c->sbuf + c->shead, c->stail - c->shead, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        tp->core->count_tx((size_t)w);
        c->shead += (size_t)w;
    }
    if (c->shead == c->stail)
        c->shead = c->stail = 0;
    int out = c->stail > 0;
    if (out != c->want_out && c->state != CONN_CLOSED) {
        set_events(tp, c, out);
        c->want_out = out;
    }
    return 0;
}

static int queue_append(struct tcp_conn *c, const struct iovec *iov, int n, size_t skip)
{
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += iov[i].iov_len;
    need -= skip;
    if (c->scap - c->stail < need) {
        if (c->shead) {
            memmove(c->sbuf, c->sbuf + c->shead, c->stail - c->shead);
            c->stail -= c->shead;
            c->shead = 0;
        }
        if (c->scap - c->stail < need) {
            size_t cap = c->scap ? c->scap : 65536;
            while (cap - c->stail < need)
                cap *= 2;
            uint8_t *nb = realloc(c->sbuf, cap);
            if (!nb)
                return DSM_ENOMEM;
            c->sbuf = nb;
            c->scap = cap;
        }
    }
    for (int i = 0; i < n; i++) {
        size_t l = iov[i].iov_len;
        const uint8_t *b = iov[i].iov_base;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(c->sbuf + c->stail, b + skip, l - skip);
        c->stail += l - skip;
        skip = 0;
    }
    return DSM_OK;
}

static int conn_send(dsm_tp_t *tp, struct tcp_conn *c, const dsm_wire_hdr_t *h, const void *p1, size_t l1,
                     const void *p2, size_t l2, const void *p3, size_t l3);
static void own_give_back(dsm_tp_t *tp);

/* conn_send from a thread that may not allocate, when the queue lacks room. A partly sent frame (sent > 0)
 * must be completed from here, byte for byte, while holding the send lock. */
static int conn_send_wait(dsm_tp_t *tp, struct tcp_conn *c, const dsm_wire_hdr_t *h, const void *p1, size_t l1,
                          const void *p2, size_t l2, const void *p3, size_t l3, size_t sent)
{
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    own_give_back(tp);
    if (sent) {
        uint8_t hb[DSM_WIRE_HDR_SIZE];
        dsm_wire_hdr_enc(hb, h);
        struct iovec iov[4] = {{hb, sizeof hb}, {(void *)p1, l1}, {(void *)p2, l2}, {(void *)p3, l3}};
        size_t total = sizeof hb + l1 + l2 + l3;
        pthread_mutex_lock(&c->slock);
        while (sent < total) {
            size_t skip = sent;
            struct iovec left[4];
            int nl = 0;
            for (int i = 0; i < 4; i++) {
                if (skip >= iov[i].iov_len) {
                    skip -= iov[i].iov_len;
                    continue;
                }
                left[nl].iov_base = (uint8_t *)iov[i].iov_base + skip;
                left[nl++].iov_len = iov[i].iov_len - skip;
                skip = 0;
            }
            struct msghdr mh = {.msg_iov = left, .msg_iovlen = (size_t)nl};
            ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                sent += (size_t)w;
                tp->core->count_tx((size_t)w);
                continue;
            }
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                break;
            if (now_ms() > deadline)
                break;
            struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
            poll(&pf, 1, 10);
        }
        pthread_mutex_unlock(&c->slock);
        if (sent < total && c->peer >= 0)
            tp->core->peer_lost(c->peer, "cannot send from the fault path");
        return sent < total ? DSM_ENODE : DSM_OK;
    }
    for (;;) {
        /* Drain the queue from here: the progress thread may be waiting for a lock this thread holds (a home
         * serving its own fault), so it cannot be relied on to make room. */
        pthread_mutex_lock(&c->slock);
        int broken = flush_queue_locked(tp, c) < 0;
        size_t room = c->scap - c->stail + c->shead;
        pthread_mutex_unlock(&c->slock);
        if (broken) {
            if (c->peer >= 0 && !c->left)
                tp->core->peer_lost(c->peer, "connection failed");
            return DSM_ENODE;
        }
        size_t need = DSM_WIRE_HDR_SIZE + l1 + l2 + l3;
        if (room >= need)
            return conn_send(tp, c, h, p1, l1, p2, l2, p3, l3);
        if (now_ms() > deadline) {
            if (c->peer >= 0)
                tp->core->peer_lost(c->peer, "send queue full for DSM_TIMEOUT");
            return DSM_ETIMEDOUT;
        }
        struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
        poll(&pf, 1, 10);
    }
}

/* Send one frame: header, then up to three pieces. Never blocks; keeps the order of frames. */
static int conn_send(dsm_tp_t *tp, struct tcp_conn *c, const dsm_wire_hdr_t *h, const void *p1, size_t l1,
                     const void *p2, size_t l2, const void *p3, size_t l3)
{
    uint8_t hb[DSM_WIRE_HDR_SIZE];
    dsm_wire_hdr_enc(hb, h);
    struct iovec iov[4] = {{hb, sizeof hb}, {(void *)p1, l1}, {(void *)p2, l2}, {(void *)p3, l3}};
    size_t total = sizeof hb + l1 + l2 + l3, sent = 0;
    int rc = DSM_OK;
    pthread_mutex_lock(&c->slock);
    if (c->state == CONN_CLOSED) {
        rc = DSM_ENODE;
        if (c->peer >= 0 && !c->left) {
            /* The progress thread is failing the job stop for this peer; make sure no caller carries on. */
            pthread_mutex_unlock(&c->slock);
            tp->core->peer_lost(c->peer, "connection closed");
            return rc;
        }
    } else {
        if (c->stail == c->shead) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 4};
            ssize_t w;
            do
                w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            while (w < 0 && errno == EINTR);
            if (w > 0) {
                sent = (size_t)w;
                tp->core->count_tx(sent);
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                /* The progress thread sees the broken socket too and reports the peer lost. */
                rc = c->left ? DSM_OK : DSM_ENODE;
            }
        }
        if (rc == DSM_OK && sent < total && c->scap - c->stail + c->shead < total - sent &&
            tp->core->may_allocate && !tp->core->may_allocate()) {
            /* The fault path must not allocate: wait for the progress thread to drain the queue, then
             * retry from the start (nothing of this frame was sent: the queue was not empty, or the
             * whole frame is still to be queued). */
            pthread_mutex_unlock(&c->slock);
            return conn_send_wait(tp, c, h, p1, l1, p2, l2, p3, l3, sent);
        }
        if (rc == DSM_OK && sent < total) {
            rc = queue_append(c, iov, 4, sent);
            if (rc == DSM_OK && !c->want_out) {
                set_events(tp, c, 1);
                c->want_out = 1;
            }
        }
    }
    pthread_mutex_unlock(&c->slock);
    /* Part of the frame may be on the wire already: the stream cannot continue without the rest. */
    if (rc == DSM_ENOMEM && sent > 0 && c->peer >= 0)
        tp->core->peer_lost(c->peer, "out of memory for the send queue");
    return rc;
}

static struct tcp_conn *peer_conn(dsm_tp_t *tp, int peer)
{
    if (peer < 0 || peer >= tp->core->size || peer == tp->core->rank)
        return NULL;
    return tp->peers[peer];
}

/* ---- outstanding one-sided operations ---- */

static struct tcp_op *op_add(dsm_tp_t *tp, int peer, uint8_t reply_type, dsm_tp_req_t *req, void *dst, size_t len)
{
    struct tcp_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->peer = peer;
    op->reply_type = reply_type;
    op->req = req;
    op->dst = dst;
    op->len = len;
    pthread_mutex_lock(&tp->oplock);
    op->seq = ++tp->next_seq;
    op->next = tp->ops;
    tp->ops = op;
    pthread_mutex_unlock(&tp->oplock);
    return op;
}

static struct tcp_op *op_take(dsm_tp_t *tp, int peer, uint64_t seq)
{
    pthread_mutex_lock(&tp->oplock);
    struct tcp_op **pp = &tp->ops, *op = NULL;
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->seq == seq && (*pp)->peer == peer) {
            op = *pp;
            *pp = op->next;
            break;
        }
    }
    pthread_mutex_unlock(&tp->oplock);
    return op;
}

static void op_done(dsm_tp_t *tp, struct tcp_op *op, int status, uint64_t value)
{
    if (op->req)
        tp->core->complete(op->req, status, value);
    __atomic_add_fetch(&tp->completed[op->peer], 1, __ATOMIC_ACQ_REL);
    dsm_futex_wake(&tp->completed[op->peer]);
    free(op);
}

/* ---- registered memory ---- */

static int tcp_mem_reg(dsm_tp_t *tp, void *addr, size_t len, int fd, uint64_t fd_off, dsm_tp_mr_t *mr)
{
    (void)fd; /* TCP serves registrations by copying through its own process */
    (void)fd_off;
    pthread_rwlock_wrlock(&tp->mrlock);
    size_t i = 0;
    while (i < tp->nmr && tp->mrs[i].used)
        i++;
    if (i == tp->nmr) {
        struct tcp_mr *n = realloc(tp->mrs, (tp->nmr + 16) * sizeof *n);
        if (!n) {
            pthread_rwlock_unlock(&tp->mrlock);
            return DSM_ENOMEM;
        }
        memset(n + tp->nmr, 0, 16 * sizeof *n);
        tp->mrs = n;
        tp->nmr += 16;
    }
    tp->mrs[i] = (struct tcp_mr){.addr = addr, .len = len, .used = 1};
    pthread_rwlock_unlock(&tp->mrlock);
    *mr = (dsm_tp_mr_t){.addr = addr, .len = len, .key = (uint32_t)i, .prov = NULL};
    return DSM_OK;
}

static int tcp_mem_dereg(dsm_tp_t *tp, dsm_tp_mr_t *mr)
{
    pthread_rwlock_wrlock(&tp->mrlock);
    int rc = DSM_EINVAL;
    if (mr->key < tp->nmr && tp->mrs[mr->key].used && tp->mrs[mr->key].addr == mr->addr) {
        tp->mrs[mr->key].used = 0;
        rc = DSM_OK;
    }
    pthread_rwlock_unlock(&tp->mrlock);
    return rc;
}

/* Resolve a peer's reference to our memory. Returns the address or NULL; caller holds mrlock for reading until
 * the access is done, so a concurrent dereg cannot pull the memory away. */
static uint8_t *mr_resolve(dsm_tp_t *tp, uint32_t key, uint64_t addr, uint64_t off, uint64_t len)
{
    if (key >= tp->nmr || !tp->mrs[key].used || (uint64_t)(uintptr_t)tp->mrs[key].addr != addr)
        return NULL;
    if (off > tp->mrs[key].len || len > tp->mrs[key].len - off)
        return NULL;
    return (uint8_t *)tp->mrs[key].addr + off;
}

/* ---- one-sided operations (initiator) ---- */

/* Issue a request frame and track its reply; on a failed send nothing stays pending. */
static int op_issue(dsm_tp_t *tp, struct tcp_conn *c, int peer, uint8_t reply, dsm_tp_req_t *req, void *dst,
                    size_t len, dsm_wire_hdr_t *h, const void *p1, size_t l1, const void *p2, size_t l2,
                    const void *p3, size_t l3)
{
    struct tcp_op *op = op_add(tp, peer, reply, req, dst, len);
    if (!op)
        return DSM_ENOMEM;
    uint64_t seq = op->seq;
    h->seq = seq;
    int rc = conn_send(tp, c, h, p1, l1, p2, l2, p3, l3);
    if (rc != DSM_OK) {
        struct tcp_op *o = op_take(tp, peer, seq);
        if (o) {
            o->req = NULL;
            op_done(tp, o, rc, 0);
        }
    }
    return rc;
}

static int rma_send(dsm_tp_t *tp, int peer, uint8_t type, uint8_t reply, uint8_t am_id, const dsm_wire_rma_t *r,
                    const void *uhdr, size_t uhdr_len, const void *payload, size_t plen, void *dst,
                    dsm_tp_req_t *req)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c)
        return DSM_EINVAL;
    if (plen > tp->lim.payload_max || r->len > tp->lim.payload_max)
        return DSM_EINVAL;
    uint8_t rb[DSM_WIRE_RMA_SIZE];
    dsm_wire_rma_enc(rb, r);
    dsm_wire_hdr_t h = {.type = type, .am_id = am_id, .src = (uint32_t)tp->core->rank,
                        .hdr_len = (uint32_t)(sizeof rb + uhdr_len), .payload_len = (uint32_t)plen};
    return op_issue(tp, c, peer, reply, req, dst, r->len, &h, rb, sizeof rb, uhdr, uhdr_len, payload, plen);
}

static int tcp_put(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                   dsm_tp_req_t *req)
{
    dsm_wire_rma_t r = {.key = rkey->key, .len = (uint32_t)len, .offset = off, .addr = rkey->addr};
    if (len > UINT32_MAX)
        return DSM_EINVAL;
    return rma_send(tp, peer, DSM_WIRE_PUT, DSM_WIRE_PUT_ACK, 0, &r, NULL, 0, src, len, NULL, req);
}

static int tcp_put_notify(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                          uint64_t off, uint8_t am_id, const void *hdr, size_t hdr_len, dsm_tp_req_t *req)
{
    dsm_wire_rma_t r = {.key = rkey->key, .len = (uint32_t)len, .offset = off, .addr = rkey->addr};
    if (len > UINT32_MAX || hdr_len > DSM_TP_AM_HDR_MAX || am_id == 0)
        return DSM_EINVAL;
    return rma_send(tp, peer, DSM_WIRE_PUT_NOTIFY, DSM_WIRE_PUT_ACK, am_id, &r, hdr, hdr_len, src, len, NULL, req);
}

static int tcp_get(dsm_tp_t *tp, int peer, void *dst, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                   dsm_tp_req_t *req)
{
    dsm_wire_rma_t r = {.key = rkey->key, .len = (uint32_t)len, .offset = off, .addr = rkey->addr};
    if (len > UINT32_MAX)
        return DSM_EINVAL;
    return rma_send(tp, peer, DSM_WIRE_GET, DSM_WIRE_GET_REP, 0, &r, NULL, 0, NULL, 0, dst, req);
}

static int tcp_atomic(dsm_tp_t *tp, int peer, enum dsm_tp_atomic_op op_code, const dsm_tp_rkey_t *rkey,
                      uint64_t off, uint64_t operand, uint64_t compare, dsm_tp_req_t *req)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c)
        return DSM_EINVAL;
    dsm_wire_atomic_t a = {.key = rkey->key, .op = (uint32_t)op_code, .offset = off, .addr = rkey->addr,
                           .operand = operand, .compare = compare};
    uint8_t ab[DSM_WIRE_ATOMIC_SIZE];
    dsm_wire_atomic_enc(ab, &a);
    dsm_wire_hdr_t h = {.type = DSM_WIRE_ATOMIC, .src = (uint32_t)tp->core->rank, .hdr_len = sizeof ab};
    return op_issue(tp, c, peer, DSM_WIRE_ATOMIC_REP, req, NULL, 8, &h, ab, sizeof ab, NULL, 0, NULL, 0);
}

/* Is any request to peer with a sequence number up to seq still unanswered? */
static int op_pending_upto(dsm_tp_t *tp, int peer, uint64_t seq)
{
    int pending = 0;
    pthread_mutex_lock(&tp->oplock);
    for (struct tcp_op *op = tp->ops; op && !pending; op = op->next)
        pending = op->peer == peer && op->seq <= seq;
    pthread_mutex_unlock(&tp->oplock);
    return pending;
}

static int tcp_flush(dsm_tp_t *tp, int peer)
{
    if (!peer_conn(tp, peer))
        return DSM_EINVAL;
    /* Only what was issued before the call: other threads may keep issuing meanwhile. */
    pthread_mutex_lock(&tp->oplock);
    uint64_t upto = tp->next_seq;
    pthread_mutex_unlock(&tp->oplock);
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    for (;;) {
        uint32_t gen = __atomic_load_n(&tp->completed[peer], __ATOMIC_ACQUIRE);
        if (!op_pending_upto(tp, peer, upto))
            return DSM_OK;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return DSM_ETIMEDOUT;
        dsm_futex_wait(&tp->completed[peer], gen, left > 100 ? 100 : (int)left);
    }
}

static int tcp_am_send(dsm_tp_t *tp, int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                       size_t len)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c || am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX || len > tp->lim.payload_max)
        return DSM_EINVAL;
    dsm_wire_hdr_t h = {.type = DSM_WIRE_AM, .am_id = am_id, .src = (uint32_t)tp->core->rank,
                        .hdr_len = (uint32_t)hdr_len, .payload_len = (uint32_t)len};
    return conn_send(tp, c, &h, hdr, hdr_len, payload, len, NULL, 0);
}

static int tcp_bye(dsm_tp_t *tp, int peer)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c)
        return DSM_EINVAL;
    dsm_wire_hdr_t h = {.type = DSM_WIRE_BYE, .src = (uint32_t)tp->core->rank};
    __atomic_store_n(&c->bye_sent, 1, __ATOMIC_RELEASE);
    return conn_send(tp, c, &h, NULL, 0, NULL, 0, NULL, 0);
}

static int tcp_peer_left(dsm_tp_t *tp, int peer)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c)
        return 1;
    /* Gone once its bye is in and ours is out of our queue. */
    pthread_mutex_lock(&c->slock);
    int left = __atomic_load_n(&c->left, __ATOMIC_ACQUIRE) && c->stail == c->shead;
    pthread_mutex_unlock(&c->slock);
    return left;
}

static void tcp_tell_lost(dsm_tp_t *tp, int node)
{
    uint8_t f[DSM_WIRE_HDR_SIZE + 4];
    dsm_wire_hdr_t h = {.type = DSM_WIRE_LOST, .src = (uint32_t)tp->core->rank, .hdr_len = 4};
    dsm_wire_hdr_enc(f, &h);
    dsm_le32_put(f + DSM_WIRE_HDR_SIZE, (uint32_t)node);
    for (int p = 0; p < tp->core->size; p++) {
        struct tcp_conn *c = tp->peers[p];
        if (!c || p == node || c->state != CONN_READY || pthread_mutex_trylock(&c->slock) != 0)
            continue;
        /* Only between frames: a partly sent frame in the queue must not be cut. */
        if (c->stail == c->shead) {
            ssize_t w = send(c->fd, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
        }
        pthread_mutex_unlock(&c->slock);
    }
}

/* ---- incoming frames ---- */

static void reply_status(dsm_tp_t *tp, struct tcp_conn *c, uint8_t type, uint64_t seq, int status,
                         const void *payload, size_t len, const uint64_t *value)
{
    uint8_t b[DSM_WIRE_ATOMIC_REP_SIZE];
    dsm_le32_put(b, (uint32_t)status);
    size_t bl = DSM_WIRE_STATUS_SIZE;
    if (value) {
        dsm_le64_put(b + 4, *value);
        bl = DSM_WIRE_ATOMIC_REP_SIZE;
    }
    dsm_wire_hdr_t h = {.type = type, .src = (uint32_t)tp->core->rank, .hdr_len = (uint32_t)bl,
                        .payload_len = (uint32_t)len, .seq = seq};
    conn_send(tp, c, &h, b, bl, payload, len, NULL, 0);
}

/* Copy a put's or a reply's payload into the registration it names: 1, or 0 when it names none of ours. */
static int rma_land(dsm_tp_t *tp, const dsm_wire_rma_t *r, const uint8_t *payload)
{
    pthread_rwlock_rdlock(&tp->mrlock);
    uint8_t *dst = mr_resolve(tp, r->key, r->addr, r->offset, r->len);
    if (dst)
        memcpy(dst, payload, r->len);
    pthread_rwlock_unlock(&tp->mrlock);
    return dst != NULL;
}

/* Handle one frame of an authenticated peer. Returns NULL, or why the connection must be dropped. */
static const char *handle_frame(dsm_tp_t *tp, struct tcp_conn *c, const dsm_wire_hdr_t *h, const uint8_t *hdr,
                                const uint8_t *payload)
{
    if ((int)h->src != c->peer)
        return "frame claims another source rank";
    if (c->left)
        return "frame after bye";
    switch (h->type) {
    case DSM_WIRE_AM:
        if (tp->core->am_dispatch(c->peer, h->am_id, hdr, h->hdr_len, payload, h->payload_len) != DSM_OK)
            return "malformed active message";
        return NULL;
    case DSM_WIRE_PUT:
    case DSM_WIRE_PUT_NOTIFY: {
        dsm_wire_rma_t r;
        dsm_wire_rma_dec(hdr, &r);
        if (r.len != h->payload_len)
            return "put length does not match its payload";
        int landed = rma_land(tp, &r, payload), st = landed ? DSM_OK : DSM_EINVAL;
        if (!landed)
            TLOG(tp, DSM_LOG_WARN, "node %d put outside a registration (key %u, offset %llu, %u bytes); refused",
                 c->peer, r.key, (unsigned long long)r.offset, r.len);
        if (landed && h->type == DSM_WIRE_PUT_NOTIFY &&
            tp->core->am_dispatch(c->peer, h->am_id, hdr + DSM_WIRE_RMA_SIZE, h->hdr_len - DSM_WIRE_RMA_SIZE,
                                  NULL, 0) != DSM_OK)
            return "malformed put notification";
        reply_status(tp, c, DSM_WIRE_PUT_ACK, h->seq, st, NULL, 0, NULL);
        return NULL;
    }
    case DSM_WIRE_GET: {
        dsm_wire_rma_t r;
        dsm_wire_rma_dec(hdr, &r);
        if (r.len > tp->lim.payload_max)
            return "get larger than the payload limit";
        pthread_rwlock_rdlock(&tp->mrlock);
        uint8_t *src = mr_resolve(tp, r.key, r.addr, r.offset, r.len);
        /* The reply is copied into the socket or the queue before the lock is dropped. */
        reply_status(tp, c, DSM_WIRE_GET_REP, h->seq, src ? DSM_OK : DSM_EINVAL, src, src ? r.len : 0, NULL);
        pthread_rwlock_unlock(&tp->mrlock);
        if (!src)
            TLOG(tp, DSM_LOG_WARN, "node %d read outside a registration (key %u); refused", c->peer, r.key);
        return NULL;
    }
    case DSM_WIRE_ATOMIC: {
        dsm_wire_atomic_t a;
        dsm_wire_atomic_dec(hdr, &a);
        uint64_t old = 0;
        int st = DSM_OK;
        pthread_rwlock_rdlock(&tp->mrlock);
        uint8_t *w = mr_resolve(tp, a.key, a.addr, a.offset, 8);
        if (!w || (uintptr_t)w % 8) {
            st = DSM_EINVAL;
        } else if (a.op == DSM_TP_ATOMIC_FADD) {
            old = __atomic_fetch_add((uint64_t *)w, a.operand, __ATOMIC_SEQ_CST);
        } else if (a.op == DSM_TP_ATOMIC_CSWAP) {
            old = a.compare;
            __atomic_compare_exchange_n((uint64_t *)w, &old, a.operand, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        } else {
            st = DSM_EINVAL;
        }
        pthread_rwlock_unlock(&tp->mrlock);
        reply_status(tp, c, DSM_WIRE_ATOMIC_REP, h->seq, st, NULL, 0, &old);
        return NULL;
    }
    case DSM_WIRE_PUT_ACK:
    case DSM_WIRE_GET_REP:
    case DSM_WIRE_ATOMIC_REP: {
        struct tcp_op *op = op_take(tp, c->peer, h->seq);
        if (!op)
            return "reply to no request";
        if (op->reply_type != h->type) {
            op->req = NULL;  /* the request stays pending; the peer is dropped as lost */
            op_done(tp, op, DSM_EPROTO, 0);
            return "reply of the wrong type";
        }
        int st = (int)dsm_le32_get(hdr);
        uint64_t value = 0;
        if (h->type == DSM_WIRE_GET_REP && st == DSM_OK) {
            if (h->payload_len != op->len) {
                op_done(tp, op, DSM_EPROTO, 0);
                return "get reply of the wrong length";
            }
            memcpy(op->dst, payload, op->len);
        }
        if (h->type == DSM_WIRE_ATOMIC_REP)
            value = dsm_le64_get(hdr + 4);
        if (st > 0 || st < DSM_ENODE)
            st = DSM_EPROTO;
        op_done(tp, op, st, value);
        return NULL;
    }
    case DSM_WIRE_REPLY: {
        /* Checked before any byte lands: only a slot armed for this very peer and still waiting. */
        struct tcp_slot *s = h->seq >= 1 && h->seq <= TCP_REPLY_SLOTS ? &tp->slots[h->seq] : NULL;
        uint32_t w = s ? __atomic_load_n(&s->word, __ATOMIC_ACQUIRE) : SLOT_FREE;
        if (!s || __atomic_load_n(&s->peer, __ATOMIC_RELAXED) != c->peer || (w != SLOT_ARMED && w != SLOT_SLEEP))
            return "a reply for a reply slot that is not waiting for one";
        dsm_wire_rma_t r;
        dsm_wire_rma_dec(hdr, &r);
        if (r.len != h->payload_len)
            return "reply length does not match its payload";
        if (r.len && !rma_land(tp, &r, payload))
            return "reply outside a registration";
        if (tp->core->am_dispatch(c->peer, h->am_id, hdr + DSM_WIRE_RMA_SIZE, h->hdr_len - DSM_WIRE_RMA_SIZE, NULL,
                                  0) != DSM_OK)
            return "malformed reply";
        if (__atomic_exchange_n(&s->word, SLOT_DONE, __ATOMIC_ACQ_REL) == SLOT_SLEEP)
            dsm_futex_wake(&s->word);
        return NULL;
    }
    case DSM_WIRE_BYE:
        __atomic_store_n(&c->left, 1, __ATOMIC_RELEASE);
        return NULL;
    case DSM_WIRE_LOST: {
        uint32_t node = dsm_le32_get(hdr);
        if (node >= (uint32_t)tp->core->size || (int)node == tp->core->rank)
            return "lost-node report names an impossible node";
        static char why[64];
        snprintf(why, sizeof why, "node %d lost contact with it", c->peer);
        tp->core->peer_lost((int)node, why);
        return NULL;
    }
    default:
        return "unexpected frame type on an established connection";
    }
}

/* Handshake frames. Returns NULL, or why the connection is refused. */
static const char *handle_hello(dsm_tp_t *tp, struct tcp_conn *c, const dsm_wire_hdr_t *h, const uint8_t *hdr)
{
    const dsm_tp_core_t *core = tp->core;
    if (c->state == CONN_AUTH_IN) {
        /* The connector's proof; only now may the connection speak for a rank. */
        if (h->type != DSM_WIRE_AUTH || h->src != c->auth.connector)
            return "expected the connector's authentication";
        if (dsm_auth_check(core->secret, DSM_AUTH_CONNECTOR, &c->auth, hdr) != 0)
            return "authentication failed (wrong or missing job secret)";
        uint32_t src = c->auth.connector;
        if (tp->peers[src])
            return "that rank is already connected";
        c->peer = (int)src;
        c->state = CONN_READY;
        tp->peers[src] = c;
        for (int i = 0; i < tp->npending; i++)
            if (tp->pending[i] == c)
                tp->pending[i] = NULL;
        core->log(DSM_LOG_DEBUG, TCP_NAME, "node %d connected from %s", c->peer, c->name);
        return NULL;
    }
    dsm_wire_hello_t m;
    uint8_t want = c->state == CONN_HELLO_IN ? DSM_WIRE_HELLO : DSM_WIRE_HELLO_ACK;
    if (h->type != want)
        return "first frame is not a hello";
    dsm_wire_hello_dec(hdr, &m);
    if (m.proto != DSM_WIRE_VERSION)
        return "protocol version mismatch";
    if (m.job_id != core->job_id)
        return "wrong job id";
    if (m.size != (uint32_t)core->size)
        return "wrong job size";
    if (m.dst != (uint32_t)core->rank || m.src != h->src)
        return "hello names the wrong ranks";
    if (c->state == CONN_HELLO_IN) {
        if ((int)m.src <= core->rank)
            return "this rank must be connected from the other side";
        c->auth = (dsm_auth_ctx_t){.job_id = core->job_id, .connector = m.src, .acceptor = (uint32_t)core->rank,
                                   .size = (uint32_t)core->size};
        memcpy(c->auth.nonce_c, m.nonce, sizeof m.nonce);
        dsm_auth_nonce(c->auth.nonce_a);
        dsm_wire_hello_t ack = {.job_id = core->job_id, .src = (uint32_t)core->rank, .dst = m.src,
                                .size = (uint32_t)core->size, .proto = DSM_WIRE_VERSION};
        memcpy(ack.nonce, c->auth.nonce_a, sizeof ack.nonce);
        dsm_auth_mac(core->secret, DSM_AUTH_ACCEPTOR, &c->auth, ack.mac);
        uint8_t b[DSM_WIRE_HELLO_SIZE];
        dsm_wire_hello_enc(b, &ack);
        dsm_wire_hdr_t ah = {.type = DSM_WIRE_HELLO_ACK, .src = (uint32_t)core->rank, .hdr_len = sizeof b};
        c->state = CONN_AUTH_IN;
        conn_send(tp, c, &ah, b, sizeof b, NULL, 0, NULL, 0);
    } else {
        if ((int)m.src != c->peer)
            return "hello ack from the wrong rank";
        memcpy(c->auth.nonce_a, m.nonce, sizeof m.nonce);
        if (dsm_auth_check(core->secret, DSM_AUTH_ACCEPTOR, &c->auth, m.mac) != 0)
            return "the node listening there failed authentication (wrong or missing job secret)";
        uint8_t mac[DSM_AUTH_MAC_SIZE];
        dsm_auth_mac(core->secret, DSM_AUTH_CONNECTOR, &c->auth, mac);
        dsm_wire_hdr_t ah = {.type = DSM_WIRE_AUTH, .src = (uint32_t)core->rank, .hdr_len = sizeof mac};
        /* Sent before any frame of the job: frames queue behind it in order. */
        c->state = CONN_READY;
        conn_send(tp, c, &ah, mac, sizeof mac, NULL, 0, NULL, 0);
        core->log(DSM_LOG_DEBUG, TCP_NAME, "connected to node %d at %s", c->peer, c->name);
    }
    return NULL;
}

/* Parse every complete frame in the receive buffer. */
static void conn_parse(dsm_tp_t *tp, struct tcp_conn *c)
{
    while (c->state != CONN_CLOSED) {
        dsm_wire_hdr_t h;
        const char *why = NULL;
        size_t avail = c->rlen - c->roff;
        const uint8_t *b = c->rbuf + c->roff;
        int rc = dsm_wire_hdr_dec(b, avail, &tp->lim, &h, &why);
        if (rc == DSM_WIRE_NEED_MORE)
            break;
        if (rc != DSM_OK) {
            conn_fail(tp, c, why);
            return;
        }
        size_t total = DSM_WIRE_HDR_SIZE + (size_t)h.hdr_len + h.payload_len;
        if (c->state != CONN_READY &&
            (h.payload_len || (h.type != DSM_WIRE_HELLO && h.type != DSM_WIRE_HELLO_ACK && h.type != DSM_WIRE_AUTH))) {
            conn_fail(tp, c, "a frame before the handshake completed");
            return;
        }
        if (avail < total) {
            if (c->rcap - c->roff < total) {
                /* Make room for the whole frame; its length was bounded by the decoder. */
                memmove(c->rbuf, b, avail);
                c->rlen = avail;
                c->roff = 0;
                if (c->rcap < total) {
                    uint8_t *nb = realloc(c->rbuf, total);
                    if (!nb) {
                        conn_fail(tp, c, "out of memory for a frame");
                        return;
                    }
                    c->rbuf = nb;
                    c->rcap = total;
                }
            }
            break;
        }
        tp->core->count_rx(total);
        const uint8_t *hdr = b + DSM_WIRE_HDR_SIZE, *payload = hdr + h.hdr_len;
        why = c->state == CONN_READY ? handle_frame(tp, c, &h, hdr, payload) : handle_hello(tp, c, &h, hdr);
        if (why) {
            conn_fail(tp, c, why);
            return;
        }
        c->roff += total;
    }
    if (c->roff == c->rlen)
        c->roff = c->rlen = 0;
}

static void conn_readable(dsm_tp_t *tp, struct tcp_conn *c)
{
    for (int i = 0; i < TCP_READS_PER_EVENT && c->state != CONN_CLOSED; i++) {
        if (c->rcap - c->rlen < 4096) {
            if (c->roff) {
                memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
                c->rlen -= c->roff;
                c->roff = 0;
            }
            if (c->rcap - c->rlen < 4096) {
                size_t cap = c->rcap ? c->rcap * 2 : 65536;
                uint8_t *nb = realloc(c->rbuf, cap);
                if (!nb) {
                    conn_fail(tp, c, "out of memory for the receive buffer");
                    return;
                }
                c->rbuf = nb;
                c->rcap = cap;
            }
        }
        size_t room = c->rcap - c->rlen;
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, room, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            conn_fail(tp, c, r == 0 ? "connection closed by the peer" : strerror(errno));
            return;
        }
        c->rlen += (size_t)r;
        conn_parse(tp, c);
        /* A short read took all the socket had: epoll (level-triggered) reports what comes next, and another
         * recv now would only return EAGAIN (one system call of every page miss, docs/PERFORMANCE.md). */
        if ((size_t)r < room)
            return;
    }
}

static void accept_all(dsm_tp_t *tp)
{
    for (;;) {
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(tp->lfd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        char name[64], ip[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        snprintf(name, sizeof name, "%s:%u", ip, ntohs(sa.sin_port));
        int slot = -1;
        for (int i = 0; i < tp->npending && slot < 0; i++)
            if (!tp->pending[i])
                slot = i;
        struct tcp_conn *c = slot >= 0 ? conn_new(fd, -1, CONN_HELLO_IN, name) : NULL;
        if (!c) {
            TLOG(tp, DSM_LOG_ERROR, "refused connection from %s: too many unauthenticated connections", name);
            tp->refused++;
            tp->core->count_refused();
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->deadline_ms = now_ms() + tp->core->timeout_ms;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(tp->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            conn_free(c);
            continue;
        }
        tp->pending[slot] = c;
    }
}

/* Close and free handshakes that failed or ran out of time. */
static void reap_pending(dsm_tp_t *tp)
{
    int64_t now = now_ms();
    for (int i = 0; i < tp->npending; i++) {
        struct tcp_conn *c = tp->pending[i];
        if (!c)
            continue;
        if ((c->state == CONN_HELLO_IN || c->state == CONN_AUTH_IN) && now > c->deadline_ms)
            conn_refuse(tp, c, "handshake not completed within DSM_TIMEOUT");
        if (c->state == CONN_CLOSED) {
            tp->pending[i] = NULL;
            conn_free(c);
        }
    }
}

static int tcp_progress(dsm_tp_t *tp, int timeout_ms)
{
    if (pthread_mutex_trylock(&tp->plock) != 0) {
        /* Another thread is progressing; give it the time instead of spinning. */
        if (timeout_ms > 0)
            usleep(1000);
        return DSM_OK;
    }
    in_progress = 1;
    struct epoll_event ev[64];
    int n = epoll_wait(tp->epfd, ev, 64, timeout_ms);
    for (int i = 0; i < n; i++) {
        if (ev[i].data.ptr == &listener_tag) {
            accept_all(tp);
            continue;
        }
        struct tcp_conn *c = ev[i].data.ptr;
        if (c->state == CONN_CLOSED)
            continue;
        if (ev[i].events & EPOLLOUT) {
            pthread_mutex_lock(&c->slock);
            int r = flush_queue_locked(tp, c);
            pthread_mutex_unlock(&c->slock);
            if (r < 0 && !c->left) {
                conn_fail(tp, c, strerror(errno));
                continue;
            }
        }
        if (ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            /* A thread waiting for its reply may be reading it: it gives it back with EPOLLIN set again. */
            int nobody = 0;
            if (!__atomic_compare_exchange_n(&c->owner, &nobody, -1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                continue;
            conn_readable(tp, c);
            __atomic_store_n(&c->owner, 0, __ATOMIC_RELEASE);
        }
    }
    reap_pending(tp);
    in_progress = 0;
    pthread_mutex_unlock(&tp->plock);
    return DSM_OK;
}

/* ---- direct replies (the comment at the top) ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void slot_release(dsm_tp_t *tp, uint32_t t)
{
    __atomic_store_n(&tp->slots[t].peer, -1, __ATOMIC_RELAXED);
    __atomic_store_n(&tp->slots[t].word, SLOT_FREE, __ATOMIC_RELEASE);
    dsm_slot_put(&tp->reply_free, t);
}

/* Take c's read side for the thread waiting for slot t, out of progress's epoll set. */
static int conn_own(dsm_tp_t *tp, struct tcp_conn *c, uint32_t t)
{
    int nobody = 0;
    if (c->state != CONN_READY ||
        !__atomic_compare_exchange_n(&c->owner, &nobody, (int)t, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 0;
    pthread_mutex_lock(&c->slock);
    if (c->state != CONN_CLOSED)
        set_events(tp, c, c->want_out);
    pthread_mutex_unlock(&c->slock);
    return 1;
}

static void conn_unown(dsm_tp_t *tp, struct tcp_conn *c)
{
    pthread_mutex_lock(&c->slock);
    __atomic_store_n(&c->owner, 0, __ATOMIC_RELEASE);
    if (c->state != CONN_CLOSED)
        set_events(tp, c, c->want_out);
    pthread_mutex_unlock(&c->slock);
}

/* The thread waiting for slot t takes c's read side, or gives it back; owned_slot lets a send that must wait give
 * it back too (own_give_back). */
static int slot_take_conn(dsm_tp_t *tp, struct tcp_slot *s, struct tcp_conn *c, uint32_t t)
{
    if (s->c == c)
        return 1;
    if (!conn_own(tp, c, t))
        return 0;
    s->c = c;
    owned_slot = s;
    return 1;
}

static void slot_give_conn(dsm_tp_t *tp, struct tcp_slot *s)
{
    if (!s->c)
        return;
    conn_unown(tp, s->c);
    s->c = NULL;
    owned_slot = NULL;
}

/* A thread that must wait to send gives back the connection it holds for its reply: nobody would read it while
 * it waits, and a peer may need this node to read before it can read what this thread sends. */
static void own_give_back(dsm_tp_t *tp)
{
    if (owned_slot)
        slot_give_conn(tp, owned_slot);
}

/* A slot for one answer from peer. The connection's read side is taken now, before the request goes out, so that
 * the answer's arrival does not wake progress (it would, with EPOLLIN still set, while the request is sent). */
static uint32_t tcp_reply_arm(dsm_tp_t *tp, int peer)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c || in_progress)
        return 0;
    uint32_t t = dsm_slot_take(&tp->reply_free);
    if (!t)
        return 0;
    __atomic_store_n(&tp->slots[t].peer, peer, __ATOMIC_RELAXED);
    __atomic_store_n(&tp->slots[t].word, SLOT_ARMED, __ATOMIC_RELEASE);
    slot_take_conn(tp, &tp->slots[t], c, t);
    return t;
}

/* Wait until c is readable or the deadline (the wait mode's way); *start: when the first wait began (0: now).
 * Returns 1 once the deadline passed. */
static int own_wait(dsm_tp_t *tp, struct tcp_conn *c, uint64_t *start, uint64_t deadline)
{
    uint64_t now = now_ns();
    if (now >= deadline)
        return 1;
    if (!*start)
        *start = now;
    if (tp->wait_mode == WAIT_SPIN || (tp->wait_mode == WAIT_ADAPTIVE && now - *start < TCP_REPLY_SPIN_NS)) {
        for (int i = 0; i < 64; i++)
            __builtin_ia32_pause();
        return 0;
    }
    uint64_t left = deadline - now;
    struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u), .tv_nsec = (long)(left % 1000000000u)};
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    ppoll(&pf, 1, &ts, NULL);
    return 0;
}

/* The thread waiting for slot t reads c (c->owner == t): REPLY frames only, each read exactly, so that no other
 * frame is ever taken out of the socket. Returns 1 once slot t is answered or the deadline passed, 0 when c
 * must go back to progress (a frame for it, part of a header it left, end of stream or an error: progress reads
 * them again and judges). */
static int own_read(dsm_tp_t *tp, struct tcp_conn *c, uint32_t t, uint64_t deadline)
{
    uint64_t start = 0;
    for (;;) {
        if (__atomic_load_n(&tp->slots[t].word, __ATOMIC_ACQUIRE) == SLOT_DONE)
            return 1;
        if (c->state != CONN_READY || !c->rbuf)
            return 0;
        size_t avail = c->rlen - c->roff;
        uint8_t peek[DSM_WIRE_HDR_SIZE];
        const uint8_t *hb = c->rbuf + c->roff;
        if (avail == 0) {
            ssize_t r = recv(c->fd, peek, sizeof peek, MSG_PEEK | MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                if (own_wait(tp, c, &start, deadline))
                    return 1;
                continue;
            }
            if (r > 0 && r < (ssize_t)sizeof peek) {
                if (now_ns() >= deadline)
                    return 1;
                sched_yield(); /* the rest of the header is on its way */
                continue;
            }
            if (r <= 0)
                return 0;
            hb = peek;
            c->roff = c->rlen = 0;
        } else if (avail < DSM_WIRE_HDR_SIZE) {
            return 0;
        }
        dsm_wire_hdr_t h;
        const char *why = NULL;
        if (dsm_wire_hdr_dec(hb, DSM_WIRE_HDR_SIZE, &tp->lim, &h, &why) != DSM_OK || h.type != DSM_WIRE_REPLY)
            return 0;
        size_t total = DSM_WIRE_HDR_SIZE + (size_t)h.hdr_len + h.payload_len;
        if (total > c->rcap - c->roff)
            return 0; /* progress makes room (this thread may not allocate) */
        if (avail < total) {
            ssize_t r = recv(c->fd, c->rbuf + c->rlen, total - avail, MSG_DONTWAIT);
            if (r > 0)
                c->rlen += (size_t)r;
            else if (!(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
                return 0;
            else if (own_wait(tp, c, &start, deadline))
                return 1;
            continue;
        }
        tp->core->count_rx(total);
        const uint8_t *hdr = c->rbuf + c->roff + DSM_WIRE_HDR_SIZE;
        why = handle_frame(tp, c, &h, hdr, hdr + h.hdr_len);
        if (why) {
            conn_fail(tp, c, why);
            return 0;
        }
        c->roff += total;
        if (c->roff == c->rlen)
            c->roff = c->rlen = 0;
    }
}

static int tcp_reply_wait(dsm_tp_t *tp, uint32_t t, int timeout_ms)
{
    if (t == 0 || t > TCP_REPLY_SLOTS)
        return DSM_EINVAL;
    struct tcp_slot *s = &tp->slots[t];
    struct tcp_conn *c = peer_conn(tp, __atomic_load_n(&s->peer, __ATOMIC_RELAXED));
    uint64_t deadline = now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    int own = c != NULL; /* cleared once the connection went back to progress with a frame for it */
    for (;;) {
        uint32_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        if (w == SLOT_DONE) {
            slot_give_conn(tp, s);
            slot_release(tp, t);
            return DSM_OK;
        }
        uint64_t now = now_ns();
        if (now >= deadline) {
            slot_give_conn(tp, s); /* progress reads meanwhile: the caller may be slow to come back */
            return DSM_ETIMEDOUT;
        }
        if (own && slot_take_conn(tp, s, c, t)) {
            own = own_read(tp, c, t, deadline);
            if (!own)
                slot_give_conn(tp, s);
            continue;
        }
        if (w == SLOT_ARMED &&
            !__atomic_compare_exchange_n(&s->word, &w, SLOT_SLEEP, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        /* While progress reads the connection, look again soon: the answer may not be there yet. */
        uint64_t left = deadline - now;
        int ms = own ? 1 : (int)((left + 999999u) / 1000000u);
        dsm_futex_wait(&s->word, SLOT_SLEEP, ms);
    }
}

/* Answer peer's request that named slot t: one REPLY frame. Only the range of t can be checked here; the
 * requester refuses a reply for a slot that is not waiting (and names this node). */
static int tcp_reply(dsm_tp_t *tp, int peer, uint32_t t, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                     uint64_t off, uint8_t am_id, const void *hdr, size_t hl)
{
    struct tcp_conn *c = peer_conn(tp, peer);
    if (!c || am_id == 0 || hl > DSM_TP_REPLY_HDR_MAX || (len && !rkey) || len > tp->lim.payload_max)
        return DSM_EINVAL;
    if (t == 0 || t > TCP_REPLY_SLOTS) {
        TLOG(tp, DSM_LOG_ERROR, "node %d asked for an answer in reply slot %u, which does not exist", peer, t);
        return DSM_EPROTO;
    }
    dsm_wire_rma_t r = {.key = rkey ? rkey->key : 0, .len = (uint32_t)len, .offset = off,
                        .addr = rkey ? rkey->addr : 0};
    uint8_t rb[DSM_WIRE_RMA_SIZE];
    dsm_wire_rma_enc(rb, &r);
    dsm_wire_hdr_t h = {.type = DSM_WIRE_REPLY, .am_id = am_id, .src = (uint32_t)tp->core->rank,
                        .hdr_len = (uint32_t)(sizeof rb + hl), .payload_len = (uint32_t)len, .seq = t};
    return conn_send(tp, c, &h, rb, sizeof rb, hdr, hl, src, len);
}

/* ---- setup ---- */

static int tcp_init(const dsm_tp_core_t *core, dsm_tp_t **tp_p, char *why, size_t why_len)
{
    struct in_addr a;
    int rc = pick_addr(core, &a, why, why_len);
    if (rc)
        return rc;
    dsm_tp_t *tp = calloc(1, sizeof *tp);
    /* Every peer may be connecting at once at start-up, on top of any strangers. */
    int npending = core->size + TCP_STRANGERS_MAX;
    if (!tp || !(tp->peers = calloc((size_t)core->size, sizeof *tp->peers)) ||
        !(tp->completed = calloc((size_t)core->size, sizeof *tp->completed)) ||
        !(tp->pending = calloc((size_t)npending, sizeof *tp->pending))) {
        if (tp) {
            free(tp->peers);
            free(tp->completed);
        }
        free(tp);
        snprintf(why, why_len, "out of memory");
        return DSM_ENOMEM;
    }
    tp->core = core;
    tp->npending = npending;
    tp->lfd = tp->epfd = -1;
    tp->lim.nranks = (uint32_t)core->size;
    tp->lim.payload_max = DSM_TP_AM_PAYLOAD_MAX;
    pthread_mutex_init(&tp->plock, NULL);
    pthread_mutex_init(&tp->oplock, NULL);
    pthread_rwlock_init(&tp->mrlock, NULL);
    const char *w = core->setting ? core->setting("DSM_WAIT") : NULL;
    tp->wait_mode = !w ? WAIT_ADAPTIVE : strcmp(w, "spin") == 0 ? WAIT_SPIN
                                       : strcmp(w, "block") == 0 ? WAIT_BLOCK : WAIT_ADAPTIVE;
    tp->reply_free = ~1ull; /* tokens 1..63 */
    for (uint32_t t = 0; t <= TCP_REPLY_SLOTS; t++)
        tp->slots[t].peer = -1;

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = a, .sin_port = 0};
    socklen_t sl = sizeof sa;
    tp->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (tp->lfd < 0 || bind(tp->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(tp->lfd, 1024) < 0 ||
        getsockname(tp->lfd, (struct sockaddr *)&sa, &sl) < 0) {
        snprintf(why, why_len, "cannot listen on %s: %s", inet_ntoa(a), strerror(errno));
        goto fail;
    }
    tp->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    if (tp->epfd < 0 || epoll_ctl(tp->epfd, EPOLL_CTL_ADD, tp->lfd, &ev) < 0) {
        snprintf(why, why_len, "epoll: %s", strerror(errno));
        goto fail;
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(tp->addr, sizeof tp->addr, "%s:%u", ip, ntohs(sa.sin_port));
    core->log(DSM_LOG_INFO, TCP_NAME, "listening on %s", tp->addr);
    *tp_p = tp;
    return DSM_OK;
fail:
    if (tp->lfd >= 0)
        close(tp->lfd);
    if (tp->epfd >= 0)
        close(tp->epfd);
    free(tp->peers);
    free(tp->completed);
    free(tp->pending);
    free(tp);
    return DSM_ESYS;
}

static int tcp_addr_get(dsm_tp_t *tp, void *buf, size_t *len_p)
{
    size_t n = strlen(tp->addr) + 1;
    if (*len_p < n)
        return DSM_EINVAL;
    memcpy(buf, tp->addr, n);
    *len_p = n;
    return DSM_OK;
}

static int connect_one(dsm_tp_t *tp, int peer, const struct sockaddr_in *sa, const char *blob, int64_t deadline)
{
    const dsm_tp_core_t *core = tp->core;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return DSM_ESYS;
        int64_t left = deadline - now_ms();
        struct timeval tv = {.tv_sec = left > 0 ? left / 1000 : 0, .tv_usec = left > 0 ? (left % 1000) * 1000 : 1000};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            struct tcp_conn *c = conn_new(fd, peer, CONN_HELLO_OUT, blob);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (!c || epoll_ctl(tp->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                if (c)
                    conn_free(c);
                else
                    close(fd);
                return DSM_ENOMEM;
            }
            tp->peers[peer] = c;
            dsm_wire_hello_t m = {.job_id = core->job_id, .src = (uint32_t)core->rank, .dst = (uint32_t)peer,
                                  .size = (uint32_t)core->size, .proto = DSM_WIRE_VERSION};
            c->auth = (dsm_auth_ctx_t){.job_id = core->job_id, .connector = (uint32_t)core->rank,
                                       .acceptor = (uint32_t)peer, .size = (uint32_t)core->size};
            dsm_auth_nonce(c->auth.nonce_c);
            memcpy(m.nonce, c->auth.nonce_c, sizeof m.nonce);
            uint8_t b[DSM_WIRE_HELLO_SIZE];
            dsm_wire_hello_enc(b, &m);
            dsm_wire_hdr_t h = {.type = DSM_WIRE_HELLO, .src = (uint32_t)core->rank, .hdr_len = sizeof b};
            return conn_send(tp, c, &h, b, sizeof b, NULL, 0, NULL, 0);
        }
        int e = errno;
        close(fd);
        if (now_ms() >= deadline) {
            core->log(DSM_LOG_ERROR, TCP_NAME, "cannot connect to node %d at %s: %s", peer, blob, strerror(e));
            return DSM_EUNREACH;
        }
        usleep(20000);
    }
}

static int tcp_connect(dsm_tp_t *tp, const void *const *addr, const size_t *addr_len)
{
    const dsm_tp_core_t *core = tp->core;
    int64_t deadline = now_ms() + core->timeout_ms;
    /* The higher rank of a pair connects. */
    for (int p = 0; p < core->rank; p++) {
        if (!addr_len[p])
            continue;
        struct sockaddr_in sa;
        if (dsm_tp_inaddr_parse(addr[p], addr_len[p], &sa) != DSM_OK) {
            core->log(DSM_LOG_ERROR, TCP_NAME, "node %d published a malformed address", p);
            return DSM_EPROTO;
        }
        int rc = connect_one(tp, p, &sa, addr[p], deadline);
        if (rc)
            return rc;
    }
    /* Drive the handshakes until every peer of this provider is ready. */
    for (;;) {
        int waiting = -1;
        for (int p = 0; p < core->size && waiting < 0; p++)
            if (p != core->rank && addr_len[p] && (!tp->peers[p] || tp->peers[p]->state != CONN_READY))
                waiting = p;
        if (waiting < 0)
            return DSM_OK;
        if (tp->peers[waiting] && tp->peers[waiting]->state == CONN_CLOSED) {
            /* Our own connection was refused in the handshake (the log says why): waiting cannot help. */
            core->log(DSM_LOG_ERROR, TCP_NAME, "the connection to node %d failed in the handshake", waiting);
            return DSM_EPROTO;
        }
        if (now_ms() > deadline) {
            core->log(DSM_LOG_ERROR, TCP_NAME, "node %d did not complete the connection within DSM_TIMEOUT",
                      waiting);
            return DSM_ETIMEDOUT;
        }
        tcp_progress(tp, 50);
    }
}

static void tcp_finalize(dsm_tp_t *tp)
{
    if (!tp)
        return;
    for (int p = 0; p < tp->core->size; p++)
        conn_free(tp->peers[p]);
    for (int i = 0; i < tp->npending; i++)
        conn_free(tp->pending[i]);
    while (tp->ops) {
        struct tcp_op *n = tp->ops->next;
        free(tp->ops);
        tp->ops = n;
    }
    if (tp->lfd >= 0)
        close(tp->lfd);
    if (tp->epfd >= 0)
        close(tp->epfd);
    if (tp->refused)
        tp->core->log(DSM_LOG_INFO, TCP_NAME, "refused %u connection(s) during the job", tp->refused);
    pthread_mutex_destroy(&tp->plock);
    pthread_mutex_destroy(&tp->oplock);
    pthread_rwlock_destroy(&tp->mrlock);
    free(tp->mrs);
    free(tp->peers);
    free(tp->completed);
    free(tp->pending);
    free(tp);
}

const struct dsm_tp_ops dsm_tp_tcp_ops = {
    .abi_version = DSM_TP_ABI_VERSION,
    .name = TCP_NAME,
    .caps = DSM_TP_CAP_AM_ORDERED,
    .probe = tcp_probe,
    .init = tcp_init,
    .finalize = tcp_finalize,
    .addr_get = tcp_addr_get,
    .connect = tcp_connect,
    .am_send = tcp_am_send,
    .mem_reg = tcp_mem_reg,
    .mem_dereg = tcp_mem_dereg,
    .put = tcp_put,
    .put_notify = tcp_put_notify,
    .get = tcp_get,
    .atomic = tcp_atomic,
    .flush = tcp_flush,
    .progress = tcp_progress,
    .bye = tcp_bye,
    .peer_left = tcp_peer_left,
    .tell_lost = tcp_tell_lost,
    .reply_arm = tcp_reply_arm,
    .reply_wait = tcp_reply_wait,
    .reply = tcp_reply,
};
