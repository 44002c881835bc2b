/* SPDX-License-Identifier: MIT */
/*
 * shm.c - the shared-memory provider for ranks on the same host (DESIGN.md 4.4, issue 9). Knows nothing of pages
 * or directories.
 *
 * Who is local: every node publishes its host identity (host name, boot id, network-namespace inode: two
 * namespaces act as two hosts) and pid; reach() says yes for a peer with the same identity, at both ends alike.
 *
 * Setup: every node listens on an abstract unix socket named by job id and rank (abstract names belong to the
 * network namespace, like the host identity). The higher rank of a local pair connects and sends HELLO with its
 * nonce; the lower checks the job, both ranks, the peer's uid and pid (SO_PEERCRED against the published pid) and
 * answers HELLO_ACK with its nonce and MAC (transport/auth.h); the connector checks the MAC and sends AUTH with
 * its own MAC and its mailbox memfd (SCM_RIGHTS); the acceptor checks that MAC and answers READY with its
 * mailbox. So no mailbox is handed to a process that has not proved the job secret. The socket stays open for
 * the job: its EOF is how a
 * local peer's death is seen at once, and registrations travel on it (REG: the memfd and offset of registered
 * memory, which the peer maps, so put, get and atomics are plain memory operations on the target's pages).
 *
 * Mailbox: one sealed memfd per node (the receiver), one single-producer ring per local sender:
 *   page 0          header: sleeping flag and doorbell word (futex, shared), written by senders and owner
 *   slot i          a page of indices (tail: producer, head: consumer, on separate cache lines), then cap bytes
 * Records are frames of transport/wire.h (32-byte header + message header + payload), 32-byte aligned and never
 * split by the ring's end (a PAD record fills the end). An AM larger than a quarter of the ring is sent as its
 * first part and FRAG records. The receiver copies each record's header out of shared memory, validates it like
 * a TCP frame (plus ring indices and record bounds) and treats any error as the peer's loss; the payload is
 * handed to the handler in place and the slot released after it returns.
 *
 * Reply slots (ABI 5 reply_*): the rest of page 0 holds SHM_REPLY_SLOTS slots of 64 bytes and a bitmap of the
 * filled ones. A faulting thread arms a slot of its own mailbox and names it in its request; the peer writes the
 * answer's header there (its data went straight into our memory first), marks it filled and wakes the thread
 * with a shared futex on the slot's state word, so the answer skips this node's progress thread. Progress handles
 * every filled slot before the records of a drain (their tail was read first, so a reply written before a record
 * is seen), which keeps a reply ahead of every later message of its sender. States of a slot's word:
 *   FREE -> ARMED (owner) -> [SLEEP (owner waits on the futex)] -> WRITING -> FILLED (peer)
 *   -> TAKEN (owner or progress) -> [DONE (progress handled it; the owner is woken)] -> FREE (owner)
 * Only the owner knows which peer a slot was armed for (private memory); a slot that holds anything else is the
 * peer's fault, as garbage in a ring is.
 *
 * Senders: a message that fits goes straight into the ring under the ring's lock; otherwise it is queued (copied)
 * and the queue is drained by later sends and by progress, so sends never wait for the receiver, except on the
 * fault path (may_allocate false), which waits for room, bounded by DSM_TIMEOUT. A sender wakes the receiver
 * through the doorbell only when the receiver said it sleeps (Dekker-style: tail store, fence, flag load).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "transport/auth.h"
#include "transport/futex.h"
#include "transport/slots.h"
#include "transport/shm/shm.h"
#include "transport/transport.h"
#include "transport/wire.h"

#define SHM_NAME "shm"
#define SHM_ALIGN 32u
#define SHM_PAGE 4096u
#define SHM_MBOX_BUDGET (16u << 20) /* all rings of one node's mailbox together, at most */
#define SHM_RING_MIN (64u << 10)
#define SHM_RING_MAX (1u << 20)
#define SHM_HOSTID_MAX 400u
#define SHM_CTL_SIZE 128u
#define SHM_CTL_MAGIC 0x534d5344u /* "DSMS" */
#define SHM_HELLO_WAIT_MS 2000   /* an accepted connection must say HELLO within this */
#define SHM_SPIN_NS 50000u       /* DSM_WAIT=adaptive: progress spins this long after the last message */
#define SHM_REPLY_SPIN_NS 20000u /* DSM_WAIT=adaptive: a thread waiting for its reply, as libdsm's other waits */
#define SHM_SPARES 64            /* queue entries per peer for the fault path, which must not allocate */
#define SHM_SPARE_HDR 64u
#define SHM_REPLY_OFF 128u       /* page 0: mailbox header, then at 64 the filled bitmap, then the slots */
#define SHM_REPLY_SLOTS 62       /* (SHM_PAGE - SHM_REPLY_OFF) / 64; tokens 1..62 */

enum { CTL_HELLO = 1, CTL_HELLO_ACK = 2, CTL_REG = 3, CTL_DEREG = 4, CTL_AUTH = 5, CTL_READY = 6 };
enum { WAIT_SPIN, WAIT_BLOCK, WAIT_ADAPTIVE };

/* Control message on the unix socket, little-endian:
 *   0 magic, 4 type, 8 job_id, 16 src, 20 dst, 24 size, 28 nlocal, 32 key, 40 addr, 48 len, 56 fd_off,
 *   64 nonce (32 bytes), 96 mac (32 bytes): the handshake's (zero otherwise) */
struct shm_ctl {
    uint32_t type;
    uint64_t job_id;
    uint32_t src, dst, size, nlocal;
    uint64_t key, addr, len, fd_off;
    uint8_t nonce[DSM_AUTH_NONCE_SIZE];
    uint8_t mac[DSM_AUTH_MAC_SIZE];
};

/* In shared memory. */
struct shm_mbox_hdr {
    uint32_t sleeping; /* the owner is (about to be) waiting on bell */
    uint32_t bell;     /* bumped by a sender that saw sleeping */
};
struct shm_reply {
    uint32_t word; /* REPLY_* */
    uint32_t src;
    uint8_t am_id;
    uint8_t hdr_len;
    uint8_t pad[6];
    uint8_t hdr[DSM_TP_REPLY_HDR_MAX];
};
_Static_assert(sizeof(struct shm_reply) == 64 && SHM_REPLY_OFF + SHM_REPLY_SLOTS * 64 <= SHM_PAGE,
               "reply slots must fit page 0 of the mailbox");
enum { REPLY_FREE, REPLY_ARMED, REPLY_SLEEP, REPLY_WRITING, REPLY_FILLED, REPLY_TAKEN, REPLY_DONE };
struct shm_ring_ctl {
    uint64_t tail; /* bytes ever written, producer */
    uint8_t pad[56];
    uint64_t head; /* bytes ever consumed, consumer */
};

/* A message waiting for room in a peer's ring (one allocation: this, then the header, then the payload). */
struct shm_pend {
    struct shm_pend *next;
    dsm_wire_hdr_t h;
    uint8_t *hdr;
    uint8_t *payload;
    size_t len;
    size_t sent;    /* payload bytes in the ring so far */
    int first_done; /* the AM record (with the header) is in */
    int spare;      /* from the peer's spare entries (fault path), not malloc'ed */
    uint8_t inline_hdr[SHM_SPARE_HDR];
};

/* A peer's registration, mapped here. */
struct shm_rmap {
    uint32_t key;
    uint64_t addr, len;
    uint8_t *map;
};

struct shm_peer {
    int rank;
    int lidx; /* index among the ranks of this host */
    pid_t pid;
    int sock;
    int ready;
    uint8_t *mbox; /* the peer's mailbox, mapped */
    size_t mbox_len;
    /* Sending: our ring in the peer's mailbox. */
    pthread_mutex_t tx_lock;
    struct shm_ring_ctl *tx_ctl;
    uint8_t *tx_data;
    uint64_t tx_tail;
    struct shm_pend *pend, *pend_last;
    struct shm_pend *spare;  /* free spare entries */
    struct shm_pend *spares; /* [SHM_SPARES] */
    int bye_sent;
    /* Receiving: the peer's ring in our mailbox. Progress only. */
    struct shm_ring_ctl *rx_ctl;
    uint8_t *rx_data;
    uint64_t rx_head;
    uint8_t *frag;
    size_t frag_len, frag_got;
    dsm_wire_hdr_t frag_h;
    uint8_t frag_hdr[DSM_TP_AM_HDR_MAX];
    int left;
    /* The socket: control messages; one reader at a time. */
    pthread_mutex_t sock_lock;
    int sock_eof;
    int gone; /* its socket closed and that was dealt with */
    /* The peer's registrations. */
    pthread_rwlock_t rlock;
    struct shm_rmap *rm;
    size_t nrm, caprm;
};

struct dsm_tp {
    const dsm_tp_core_t *core;
    int lfd;
    char hostid[SHM_HOSTID_MAX];
    int wait_mode;
    size_t cap, frag_max;
    int mbox_fd;
    uint8_t *mbox;
    size_t mbox_len;
    struct shm_peer **peers; /* [size]; NULL for ranks of other hosts and self */
    int nlocal;
    int my_lidx;
    pthread_mutex_t plock; /* one progress at a time */
    pthread_mutex_t reglock; /* registrations reach every peer in the same order */
    uint32_t next_key;
    dsm_wire_limits_t lim;
    unsigned refused;
    int64_t sock_checked;                   /* progress looked at the sockets then (ms) */
    uint64_t reply_free;                    /* bit t: slot t is free (tokens 1..SHM_REPLY_SLOTS) */
    int reply_peer[SHM_REPLY_SLOTS + 1];    /* the peer slot t is armed for, -1 when free */
};

#define SLOG(tp_x, lvl_x, ...) ((tp_x)->core->log((lvl_x), SHM_NAME, __VA_ARGS__))

static dsm_tp_t *shm_debug_tp; /* for dsm_tp_shm_debug_garbage */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t align_up(size_t v)
{
    return (v + SHM_ALIGN - 1) & ~(size_t)(SHM_ALIGN - 1);
}

/* Shared futex: the word lives in memory mapped by several processes. */
static void bell_wait(uint32_t *word, uint32_t old, int timeout_ms)
{
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
    syscall(SYS_futex, word, FUTEX_WAIT, old, &ts, NULL, 0);
}

static void shared_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static void bell_ring(uint32_t *word)
{
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    shared_wake(word);
}

/* ---- host identity and addresses ---- */

static int host_identity(char *out, size_t len)
{
    char host[256] = "", boot[64] = "", net[64] = "", pid[64] = "", user[64] = "";
    if (gethostname(host, sizeof host - 1) != 0)
        return -1;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f)
        return -1;
    if (!fgets(boot, sizeof boot, f))
        boot[0] = '\0';
    fclose(f);
    boot[strcspn(boot, "\n")] = '\0';
    /* Namespaces: two network namespaces act as two hosts; ranks in other pid or user namespaces (containers
     * sharing a network) could not check each other's credentials, so they are other hosts too. */
    ssize_t n1 = readlink("/proc/self/ns/net", net, sizeof net - 1);
    ssize_t n2 = readlink("/proc/self/ns/pid", pid, sizeof pid - 1);
    ssize_t n3 = readlink("/proc/self/ns/user", user, sizeof user - 1);
    if (n1 <= 0 || n2 <= 0 || n3 <= 0 || !boot[0])
        return -1;
    net[n1] = pid[n2] = user[n3] = '\0';
    int w = snprintf(out, len, "%s/%s/%s/%s/%s", host, boot, net, pid, user);
    return w > 0 && (size_t)w < len ? 0 : -1;
}

static void sock_name(uint64_t job_id, int rank, struct sockaddr_un *sa, socklen_t *len_p)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    /* Abstract: sun_path[0] == 0, no file to clean up, scoped to the network namespace. */
    int n = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "libdsm-shm-%016llx-%d",
                     (unsigned long long)job_id, rank);
    *len_p = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Address blob: job id (8), rank (4), pid (4), host identity (NUL-terminated). */
static int blob_parse(const void *blob, size_t len, uint64_t *job_p, int *rank_p, pid_t *pid_p, const char **host_p)
{
    const uint8_t *b = blob;
    if (len < 17 || len > 16 + SHM_HOSTID_MAX || b[len - 1] != '\0')
        return -1;
    *job_p = dsm_le64_get(b);
    *rank_p = (int)dsm_le32_get(b + 8);
    *pid_p = (pid_t)dsm_le32_get(b + 12);
    *host_p = (const char *)b + 16;
    return 0;
}

/* ---- control messages ---- */

static int ctl_send(int sock, const struct shm_ctl *m, int fd)
{
    uint8_t b[SHM_CTL_SIZE];
    dsm_le32_put(b, SHM_CTL_MAGIC);
    dsm_le32_put(b + 4, m->type);
    dsm_le64_put(b + 8, m->job_id);
    dsm_le32_put(b + 16, m->src);
    dsm_le32_put(b + 20, m->dst);
    dsm_le32_put(b + 24, m->size);
    dsm_le32_put(b + 28, m->nlocal);
    dsm_le64_put(b + 32, m->key);
    dsm_le64_put(b + 40, m->addr);
    dsm_le64_put(b + 48, m->len);
    dsm_le64_put(b + 56, m->fd_off);
    memcpy(b + 64, m->nonce, sizeof m->nonce);
    memcpy(b + 96, m->mac, sizeof m->mac);
    struct iovec iov = {.iov_base = b, .iov_len = sizeof b};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } cm;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&cm, 0, sizeof cm);
        msg.msg_control = cm.buf;
        msg.msg_controllen = sizeof cm.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t w;
    do
        w = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    return w == (ssize_t)sizeof b ? 0 : -1;
}

/* Receive one control message and at most one descriptor (*fd_p, -1 when none), without waiting. Returns 1 on
 * a message, 2 when none is there, 0 on EOF, -1 on an error or a malformed message (*why says which). */
static int ctl_recv(int sock, struct shm_ctl *m, int *fd_p, const char **why)
{
    uint8_t b[SHM_CTL_SIZE + 1];
    struct iovec iov = {.iov_base = b, .iov_len = sizeof b};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } cm;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    *fd_p = -1;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 2;
    /* A peer that closed its end with our messages unread resets the connection: for us, its end as well (a
     * finishing peer may not read the last deregistrations sent to it). */
    if (n == 0 || (n < 0 && errno == ECONNRESET))
        return 0;
    if (n < 0) {
        *why = "cannot read the local socket";
        return -1;
    }
    int bad = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*fd_p < 0 && i == 0)
                *fd_p = fd;
            else {
                close(fd);
                bad = 1;
            }
        }
    }
    if (bad || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n != SHM_CTL_SIZE || dsm_le32_get(b) != SHM_CTL_MAGIC) {
        *why = "malformed control message on the local socket";
        if (*fd_p >= 0)
            close(*fd_p);
        *fd_p = -1;
        return -1;
    }
    m->type = dsm_le32_get(b + 4);
    m->job_id = dsm_le64_get(b + 8);
    m->src = dsm_le32_get(b + 16);
    m->dst = dsm_le32_get(b + 20);
    m->size = dsm_le32_get(b + 24);
    m->nlocal = dsm_le32_get(b + 28);
    m->key = dsm_le64_get(b + 32);
    m->addr = dsm_le64_get(b + 40);
    m->len = dsm_le64_get(b + 48);
    m->fd_off = dsm_le64_get(b + 56);
    memcpy(m->nonce, b + 64, sizeof m->nonce);
    memcpy(m->mac, b + 96, sizeof m->mac);
    return 1;
}

/* ---- mailbox geometry ---- */

static size_t ring_cap_for(int nlocal)
{
    size_t per = SHM_MBOX_BUDGET / (size_t)(nlocal > 1 ? nlocal - 1 : 1), cap = SHM_RING_MIN;
    while (cap * 2 <= per && cap < SHM_RING_MAX)
        cap *= 2;
    return cap;
}

static size_t mbox_size(int nlocal, size_t cap)
{
    return SHM_PAGE + (size_t)nlocal * (SHM_PAGE + cap);
}

static struct shm_ring_ctl *slot_ctl(uint8_t *mbox, size_t cap, int lidx)
{
    return (struct shm_ring_ctl *)(mbox + SHM_PAGE + (size_t)lidx * (SHM_PAGE + cap));
}

static int create_mbox(dsm_tp_t *tp)
{
    tp->mbox_len = mbox_size(tp->nlocal, tp->cap);
    tp->mbox_fd = memfd_create("libdsm-shm-mailbox", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (tp->mbox_fd < 0 || ftruncate(tp->mbox_fd, (off_t)tp->mbox_len) != 0 ||
        fcntl(tp->mbox_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        SLOG(tp, DSM_LOG_ERROR, "cannot create a mailbox of %zu bytes: %s", tp->mbox_len, strerror(errno));
        return DSM_ENOMEM;
    }
    tp->mbox = mmap(NULL, tp->mbox_len, PROT_READ | PROT_WRITE, MAP_SHARED, tp->mbox_fd, 0);
    if (tp->mbox == MAP_FAILED) {
        tp->mbox = NULL;
        SLOG(tp, DSM_LOG_ERROR, "cannot map the mailbox: %s", strerror(errno));
        return DSM_ENOMEM;
    }
    return DSM_OK;
}

/* Map a peer's mailbox; it must be sealed against shrinking (a shrunk file would fault our stores). */
static const char *attach_mbox(dsm_tp_t *tp, struct shm_peer *pe, int fd)
{
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    size_t want = mbox_size(tp->nlocal, tp->cap);
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != want)
        return "its mailbox has the wrong size";
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return "its mailbox is not sealed against shrinking";
    void *m = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return "its mailbox cannot be mapped";
    pe->mbox = m;
    pe->mbox_len = want;
    pe->tx_ctl = slot_ctl(pe->mbox, tp->cap, tp->my_lidx);
    pe->tx_data = (uint8_t *)pe->tx_ctl + SHM_PAGE;
    pe->tx_tail = 0; /* never from the peer-writable mailbox: the receiver starts at 0 too */
    pe->rx_ctl = slot_ctl(tp->mbox, tp->cap, pe->lidx);
    pe->rx_data = (uint8_t *)pe->rx_ctl + SHM_PAGE;
    pe->rx_head = 0;
    return NULL;
}

/* ---- sending ---- */

static struct shm_peer *peer_get(dsm_tp_t *tp, int peer)
{
    if (peer < 0 || peer >= tp->core->size)
        return NULL;
    struct shm_peer *pe = tp->peers[peer];
    return pe && pe->ready ? pe : NULL;
}

/* Free bytes in the ring to pe; -1 when the peer's consumer index is impossible. Under tx_lock. */
static int64_t tx_room(dsm_tp_t *tp, struct shm_peer *pe)
{
    uint64_t head = __atomic_load_n(&pe->tx_ctl->head, __ATOMIC_ACQUIRE);
    if (head > pe->tx_tail || pe->tx_tail - head > tp->cap)
        return -1;
    return (int64_t)(tp->cap - (pe->tx_tail - head));
}

/* Bytes a record of rec bytes takes at the current tail, with the PAD before it when it would cross the end. */
static size_t rec_need(dsm_tp_t *tp, struct shm_peer *pe, size_t rec)
{
    size_t off = pe->tx_tail & (tp->cap - 1), contig = tp->cap - off;
    return contig < rec ? contig + rec : rec;
}

/* Write one record (caller checked the room); published by tx_publish. */
static void rec_write(dsm_tp_t *tp, struct shm_peer *pe, const dsm_wire_hdr_t *h, const void *hdr, size_t hl,
                      const void *p, size_t pl)
{
    size_t rec = align_up(DSM_WIRE_HDR_SIZE + hl + pl);
    size_t off = pe->tx_tail & (tp->cap - 1), contig = tp->cap - off;
    if (contig < rec) {
        dsm_wire_hdr_t pad = {.type = DSM_WIRE_PAD, .src = (uint32_t)tp->core->rank,
                              .payload_len = (uint32_t)(contig - DSM_WIRE_HDR_SIZE)};
        dsm_wire_hdr_enc(pe->tx_data + off, &pad);
        pe->tx_tail += contig;
        off = 0;
    }
    uint8_t *d = pe->tx_data + off;
    dsm_wire_hdr_enc(d, h);
    if (hl)
        memcpy(d + DSM_WIRE_HDR_SIZE, hdr, hl);
    if (pl)
        memcpy(d + DSM_WIRE_HDR_SIZE + hl, p, pl);
    pe->tx_tail += rec;
}

static void tx_publish(struct shm_peer *pe)
{
    __atomic_store_n(&pe->tx_ctl->tail, pe->tx_tail, __ATOMIC_RELEASE);
    /* Pairs with the receiver's store of sleeping and its re-check of the rings. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    struct shm_mbox_hdr *ph = (struct shm_mbox_hdr *)pe->mbox;
    if (__atomic_load_n(&ph->sleeping, __ATOMIC_RELAXED))
        bell_ring(&ph->bell);
}

/* Write as much of a queued message as fits. Returns 1 when all of it is in, 0 when it waits for room, -1 when
 * the ring is corrupted. Under tx_lock. */
static int pend_emit(dsm_tp_t *tp, struct shm_peer *pe, struct shm_pend *m)
{
    int wrote = 0, rc = 1;
    for (;;) {
        size_t chunk = m->len - m->sent < tp->frag_max ? m->len - m->sent : tp->frag_max;
        if (m->first_done && chunk == 0)
            break;
        size_t hl = m->first_done ? 0 : m->h.hdr_len;
        int64_t room = tx_room(tp, pe);
        if (room < 0) {
            rc = -1;
            break;
        }
        if ((int64_t)rec_need(tp, pe, align_up(DSM_WIRE_HDR_SIZE + hl + chunk)) > room) {
            rc = 0;
            break;
        }
        if (m->first_done) {
            dsm_wire_hdr_t f = {.type = DSM_WIRE_FRAG, .src = m->h.src, .payload_len = (uint32_t)chunk};
            rec_write(tp, pe, &f, NULL, 0, m->payload + m->sent, chunk);
        } else {
            rec_write(tp, pe, &m->h, m->hdr, hl, m->payload, chunk);
            m->first_done = 1;
        }
        m->sent += chunk;
        wrote = 1;
    }
    if (wrote)
        tx_publish(pe);
    return rc;
}

/* Drain the queue of pe as far as the ring allows. Under tx_lock. Returns -1 when the ring is corrupted. */
static int pend_flush(dsm_tp_t *tp, struct shm_peer *pe)
{
    while (pe->pend) {
        int r = pend_emit(tp, pe, pe->pend);
        if (r <= 0)
            return r;
        struct shm_pend *m = pe->pend;
        /* Stored atomically: progress peeks at it without tx_lock (drain_all, any_pending). */
        __atomic_store_n(&pe->pend, m->next, __ATOMIC_RELAXED);
        if (!pe->pend)
            pe->pend_last = NULL;
        if (m->spare) {
            m->next = pe->spare;
            pe->spare = m;
        } else {
            free(m);
        }
    }
    return 1;
}

/* Append m to pe's queue, write what fits, and release tx_lock (held by the caller). */
static int pend_queue(dsm_tp_t *tp, struct shm_peer *pe, struct shm_pend *m, size_t bytes)
{
    if (pe->pend_last)
        pe->pend_last->next = m;
    else
        __atomic_store_n(&pe->pend, m, __ATOMIC_RELAXED);
    pe->pend_last = m;
    pend_flush(tp, pe);
    pthread_mutex_unlock(&pe->tx_lock);
    tp->core->count_tx(bytes);
    return DSM_OK;
}

static int msg_send(dsm_tp_t *tp, struct shm_peer *pe, const dsm_wire_hdr_t *h, const void *hdr, size_t hl,
                    const void *payload, size_t len)
{
    int64_t deadline = 0;
    for (;;) {
        pthread_mutex_lock(&pe->tx_lock);
        int flushed = pend_flush(tp, pe);
        if (flushed < 0) {
            pthread_mutex_unlock(&pe->tx_lock);
            tp->core->peer_lost(pe->rank, "its queue indices are corrupted");
            return DSM_EPROTO;
        }
        if (!pe->pend && len <= tp->frag_max) {
            size_t rec = align_up(DSM_WIRE_HDR_SIZE + hl + len);
            int64_t room = tx_room(tp, pe);
            if (room >= 0 && (int64_t)rec_need(tp, pe, rec) <= room) {
                rec_write(tp, pe, h, hdr, hl, payload, len);
                tx_publish(pe);
                pthread_mutex_unlock(&pe->tx_lock);
                tp->core->count_tx(DSM_WIRE_HDR_SIZE + hl + len);
                return DSM_OK;
            }
        }
        if (tp->core->may_allocate()) {
            struct shm_pend *m = malloc(sizeof *m + hl + len);
            if (!m) {
                pthread_mutex_unlock(&pe->tx_lock);
                return DSM_ENOMEM;
            }
            *m = (struct shm_pend){.h = *h, .len = len};
            m->hdr = (uint8_t *)(m + 1);
            m->payload = m->hdr + hl;
            if (hl)
                memcpy(m->hdr, hdr, hl);
            if (len)
                memcpy(m->payload, payload, len);
            return pend_queue(tp, pe, m, DSM_WIRE_HDR_SIZE + hl + len);
        }
        /* Fault path: no allocation. A small message takes a spare queue entry (so the fault path never waits
         * for a receiver that may be waiting for this node: both would hold a directory entry); else wait for
         * room (the receiver is alive, or its socket says not). */
        if (len == 0 && hl <= SHM_SPARE_HDR && pe->spare) {
            struct shm_pend *m = pe->spare;
            pe->spare = m->next;
            *m = (struct shm_pend){.h = *h, .spare = 1};
            m->hdr = m->inline_hdr;
            if (hl)
                memcpy(m->hdr, hdr, hl);
            return pend_queue(tp, pe, m, DSM_WIRE_HDR_SIZE + hl);
        }
        pthread_mutex_unlock(&pe->tx_lock);
        if (len > tp->frag_max)
            return DSM_EINVAL; /* could never fit */
        if (!deadline)
            deadline = now_ms() + tp->core->timeout_ms;
        else if (now_ms() > deadline)
            return DSM_ETIMEDOUT;
        sched_yield();
    }
}

/* ---- direct replies (the comment at the top) ---- */

static int rma_copy(dsm_tp_t *tp, int peer, void *local, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                    int to_peer);

static struct shm_reply *reply_slot(uint8_t *mbox, uint32_t t)
{
    return (struct shm_reply *)(mbox + SHM_REPLY_OFF + (size_t)(t - 1) * sizeof(struct shm_reply));
}

static uint64_t *reply_bits(uint8_t *mbox)
{
    return (uint64_t *)(mbox + 64);
}

/* A slot of ours that holds what no peer may write there: its writer is lost, as for garbage in a ring. */
static int reply_bad(dsm_tp_t *tp, int who, const char *why)
{
    static char msg[160];
    snprintf(msg, sizeof msg, "malformed reply in this node's shared-memory reply slot: %s", why);
    SLOG(tp, DSM_LOG_ERROR, "node %d: %s", who, msg);
    tp->core->peer_lost(who, msg);
    return DSM_EPROTO;
}

/* Handle the answer in slot t, which the caller moved from FILLED to TAKEN. blame: who wrote it when the slot
 * was not armed. */
static int reply_handle(dsm_tp_t *tp, uint32_t t, int blame)
{
    struct shm_reply *r = reply_slot(tp->mbox, t);
    int peer = __atomic_load_n(&tp->reply_peer[t], __ATOMIC_ACQUIRE);
    /* Copied out of shared memory before it is checked: the writer can still change it. */
    uint32_t src = __atomic_load_n(&r->src, __ATOMIC_RELAXED);
    uint8_t am_id = __atomic_load_n(&r->am_id, __ATOMIC_RELAXED), hl = __atomic_load_n(&r->hdr_len, __ATOMIC_RELAXED);
    uint8_t hdr[DSM_TP_REPLY_HDR_MAX];
    if (peer < 0)
        return reply_bad(tp, src < (uint32_t)tp->core->size && tp->peers[src] ? (int)src : blame,
                         "a reply in a slot that was not armed");
    if (src != (uint32_t)peer)
        return reply_bad(tp, peer, "a reply that claims another source rank");
    if (am_id == 0 || hl > DSM_TP_REPLY_HDR_MAX)
        return reply_bad(tp, peer, "a reply header of impossible size or type");
    memcpy(hdr, r->hdr, hl);
    tp->core->count_rx(DSM_WIRE_HDR_SIZE + hl);
    if (tp->core->am_dispatch(peer, am_id, hdr, hl, NULL, 0) != DSM_OK)
        return reply_bad(tp, peer, "reply refused by its handler");
    /* Only now: progress waits for a slot whose bit is set and that is being handled. */
    __atomic_and_fetch(reply_bits(tp->mbox), ~(1ull << t), __ATOMIC_RELEASE);
    return DSM_OK;
}

/* The owner is done with slot t. */
static void reply_release(dsm_tp_t *tp, uint32_t t)
{
    __atomic_store_n(&tp->reply_peer[t], -1, __ATOMIC_RELAXED);
    __atomic_store_n(&reply_slot(tp->mbox, t)->word, REPLY_FREE, __ATOMIC_RELEASE);
    dsm_slot_put(&tp->reply_free, t);
}

/* Progress, before the records of a drain whose tail it has read: handle every filled reply, and wait for one
 * its owner is handling, so that no later message of its sender overtakes it. */
static int reply_drain(dsm_tp_t *tp, int blame)
{
    uint64_t bits = __atomic_load_n(reply_bits(tp->mbox), __ATOMIC_ACQUIRE);
    bits &= ((1ull << SHM_REPLY_SLOTS) - 1) << 1; /* bits outside the slots are garbage: ignored */
    while (bits) {
        uint32_t t = (uint32_t)__builtin_ctzll(bits);
        bits &= bits - 1;
        struct shm_reply *r = reply_slot(tp->mbox, t);
        uint32_t w = REPLY_FILLED;
        if (__atomic_compare_exchange_n(&r->word, &w, REPLY_TAKEN, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            int rc = reply_handle(tp, t, blame);
            __atomic_store_n(&r->word, REPLY_DONE, __ATOMIC_RELEASE);
            shared_wake(&r->word);
            if (rc != DSM_OK)
                return -1;
            continue;
        }
        /* Its owner took it: it runs the handler now (a page grant: a lock, a copy, an mprotect). */
        int64_t deadline = now_ms() + tp->core->timeout_ms;
        while (__atomic_load_n(&r->word, __ATOMIC_ACQUIRE) == REPLY_TAKEN) {
            if (now_ms() > deadline) {
                reply_bad(tp, blame, "a reply taken and never released");
                return -1;
            }
            sched_yield();
        }
    }
    return 0;
}

static uint32_t shm_reply_arm(dsm_tp_t *tp, int peer)
{
    if (!peer_get(tp, peer))
        return 0;
    uint32_t t = dsm_slot_take(&tp->reply_free);
    if (!t)
        return 0;
    struct shm_reply *r = reply_slot(tp->mbox, t);
    if (__atomic_load_n(&r->word, __ATOMIC_ACQUIRE) != REPLY_FREE)
        return 0; /* written while free: garbage; the slot stays out of use */
    __atomic_store_n(&tp->reply_peer[t], peer, __ATOMIC_RELAXED);
    __atomic_store_n(&r->word, REPLY_ARMED, __ATOMIC_SEQ_CST);
    return t;
}

static int shm_reply_wait(dsm_tp_t *tp, uint32_t t, int timeout_ms)
{
    if (t == 0 || t > SHM_REPLY_SLOTS)
        return DSM_EINVAL;
    struct shm_reply *r = reply_slot(tp->mbox, t);
    uint64_t start = now_ns(), limit = (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    for (;;) {
        uint32_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
        if (w == REPLY_FILLED) {
            if (!__atomic_compare_exchange_n(&r->word, &w, REPLY_TAKEN, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;
            int rc = reply_handle(tp, t, __atomic_load_n(&tp->reply_peer[t], __ATOMIC_RELAXED));
            if (rc == DSM_OK)
                reply_release(tp, t);
            return rc;
        }
        if (w == REPLY_DONE) {
            reply_release(tp, t);
            return DSM_OK;
        }
        if (w != REPLY_ARMED && w != REPLY_SLEEP && w != REPLY_WRITING && w != REPLY_TAKEN)
            return reply_bad(tp, __atomic_load_n(&tp->reply_peer[t], __ATOMIC_RELAXED), "impossible slot state");
        uint64_t el = now_ns() - start;
        if (el >= limit)
            return DSM_ETIMEDOUT;
        if (w == REPLY_WRITING) { /* the peer is between its two stores */
            sched_yield();
            continue;
        }
        if (tp->wait_mode == WAIT_SPIN || (tp->wait_mode == WAIT_ADAPTIVE && el < SHM_REPLY_SPIN_NS)) {
            for (int i = 0; i < 64; i++)
                __builtin_ia32_pause();
            continue;
        }
        if (w == REPLY_ARMED) {
            if (!__atomic_compare_exchange_n(&r->word, &w, REPLY_SLEEP, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE))
                continue;
            w = REPLY_SLEEP;
        }
        uint64_t left = limit - el;
        struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u), .tv_nsec = (long)(left % 1000000000u)};
        syscall(SYS_futex, &r->word, FUTEX_WAIT, w, &ts, NULL, 0);
    }
}

static int shm_reply(dsm_tp_t *tp, int peer, uint32_t t, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                     uint64_t off, uint8_t am_id, const void *hdr, size_t hl)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe || am_id == 0 || hl > DSM_TP_REPLY_HDR_MAX || (len && !rkey))
        return DSM_EINVAL;
    if (t == 0 || t > SHM_REPLY_SLOTS) {
        SLOG(tp, DSM_LOG_ERROR, "node %d asked for an answer in reply slot %u, which does not exist", peer, t);
        return DSM_EPROTO;
    }
    struct shm_reply *r = reply_slot(pe->mbox, t);
    uint32_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
    do {
        if (w != REPLY_ARMED && w != REPLY_SLEEP) {
            SLOG(tp, DSM_LOG_ERROR, "node %d's reply slot %u is not waiting for an answer", peer, t);
            return DSM_EPROTO;
        }
    } while (!__atomic_compare_exchange_n(&r->word, &w, REPLY_WRITING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    /* The slot is ours now: the data, then the header. */
    if (len) {
        int rc = rma_copy(tp, peer, (void *)src, len, rkey, off, 1);
        if (rc != DSM_OK) {
            __atomic_store_n(&r->word, w, __ATOMIC_RELEASE);
            return rc;
        }
    }
    __atomic_store_n(&r->src, (uint32_t)tp->core->rank, __ATOMIC_RELAXED);
    __atomic_store_n(&r->am_id, am_id, __ATOMIC_RELAXED);
    __atomic_store_n(&r->hdr_len, (uint8_t)hl, __ATOMIC_RELAXED);
    memcpy(r->hdr, hdr, hl);
    /* The bit first: whoever sees the slot filled and clears the bit clears it after it was set. */
    __atomic_or_fetch(reply_bits(pe->mbox), 1ull << t, __ATOMIC_RELEASE);
    __atomic_store_n(&r->word, REPLY_FILLED, __ATOMIC_SEQ_CST);
    if (w == REPLY_SLEEP)
        shared_wake(&r->word);
    tp->core->count_tx(DSM_WIRE_HDR_SIZE + hl);
    return DSM_OK;
}

/* ---- receiving ---- */

/* Fail the peer whose ring holds garbage; never returns normally in libdsm (fail-stop). */
static int rx_bad(dsm_tp_t *tp, struct shm_peer *pe, const char *why)
{
    static char msg[160];
    snprintf(msg, sizeof msg, "malformed message in its shared-memory queue: %s", why);
    SLOG(tp, DSM_LOG_ERROR, "node %d: %s", pe->rank, msg);
    tp->core->peer_lost(pe->rank, msg);
    return -1;
}

/* Handle the records waiting in pe's ring. Returns how many were handled, or -1. Progress only. */
static int rx_drain(dsm_tp_t *tp, struct shm_peer *pe)
{
    uint64_t tail = __atomic_load_n(&pe->rx_ctl->tail, __ATOMIC_ACQUIRE);
    if (tail < pe->rx_head || tail - pe->rx_head > tp->cap)
        return rx_bad(tp, pe, "producer index out of range");
    /* Replies written before these records are handled before them. */
    if (reply_drain(tp, pe->rank) < 0)
        return -1;
    int n = 0;
    while (pe->rx_head != tail) {
        size_t off = pe->rx_head & (tp->cap - 1), contig = tp->cap - off;
        uint64_t avail = tail - pe->rx_head;
        if (avail < DSM_WIRE_HDR_SIZE || contig < DSM_WIRE_HDR_SIZE)
            return rx_bad(tp, pe, "record shorter than a header");
        uint8_t raw[DSM_WIRE_HDR_SIZE];
        memcpy(raw, pe->rx_data + off, sizeof raw); /* the sender can still write: use only our copy */
        dsm_wire_hdr_t h;
        const char *why = "truncated header";
        if (dsm_wire_hdr_dec(raw, sizeof raw, &tp->lim, &h, &why) != DSM_OK)
            return rx_bad(tp, pe, why);
        if ((int)h.src != pe->rank)
            return rx_bad(tp, pe, "record claims another source rank");
        if (pe->left && h.type != DSM_WIRE_LOST) /* a peer failing during finalize still says why */
            return rx_bad(tp, pe, "record after bye");
        size_t body = h.payload_len;
        if (h.type == DSM_WIRE_AM && body > tp->frag_max)
            body = tp->frag_max;
        size_t rec = h.type == DSM_WIRE_PAD ? DSM_WIRE_HDR_SIZE + (size_t)h.payload_len
                                            : align_up(DSM_WIRE_HDR_SIZE + h.hdr_len + body);
        if (rec > avail || rec > contig)
            return rx_bad(tp, pe, "record runs past the data written");
        if (h.type == DSM_WIRE_PAD && rec != contig)
            return rx_bad(tp, pe, "padding does not end at the end of the ring");
        const uint8_t *d = pe->rx_data + off + DSM_WIRE_HDR_SIZE;
        if (pe->frag && h.type != DSM_WIRE_FRAG && h.type != DSM_WIRE_PAD)
            return rx_bad(tp, pe, "message interleaved with the parts of another");
        switch (h.type) {
        case DSM_WIRE_PAD:
            break;
        case DSM_WIRE_AM: {
            uint8_t hdr[DSM_TP_AM_HDR_MAX];
            memcpy(hdr, d, h.hdr_len);
            tp->core->count_rx(DSM_WIRE_HDR_SIZE + h.hdr_len + h.payload_len);
            if (body == h.payload_len) {
                if (tp->core->am_dispatch(pe->rank, h.am_id, hdr, h.hdr_len, d + h.hdr_len, body) != DSM_OK)
                    return rx_bad(tp, pe, "active message refused by its handler");
                break;
            }
            if (!(pe->frag = malloc(h.payload_len)))
                return rx_bad(tp, pe, "out of memory for a large message");
            memcpy(pe->frag, d + h.hdr_len, body);
            memcpy(pe->frag_hdr, hdr, h.hdr_len);
            pe->frag_h = h;
            pe->frag_len = h.payload_len;
            pe->frag_got = body;
            break;
        }
        case DSM_WIRE_FRAG: {
            size_t want = pe->frag ? pe->frag_len - pe->frag_got : 0;
            if (!pe->frag || h.payload_len != (want < tp->frag_max ? want : tp->frag_max))
                return rx_bad(tp, pe, "part of a message that was not announced, or of the wrong size");
            memcpy(pe->frag + pe->frag_got, d, h.payload_len);
            pe->frag_got += h.payload_len;
            if (pe->frag_got == pe->frag_len) {
                uint8_t *buf = pe->frag;
                pe->frag = NULL;
                int rc = tp->core->am_dispatch(pe->rank, pe->frag_h.am_id, pe->frag_hdr, pe->frag_h.hdr_len, buf,
                                               pe->frag_len);
                free(buf);
                if (rc != DSM_OK)
                    return rx_bad(tp, pe, "active message refused by its handler");
            }
            break;
        }
        case DSM_WIRE_BYE:
            __atomic_store_n(&pe->left, 1, __ATOMIC_RELEASE);
            break;
        case DSM_WIRE_LOST: {
            uint32_t node = dsm_le32_get(d);
            if (node >= (uint32_t)tp->core->size || (int)node == tp->core->rank)
                return rx_bad(tp, pe, "lost-node report names an impossible node");
            static char why_lost[64];
            snprintf(why_lost, sizeof why_lost, "node %d lost contact with it", pe->rank);
            tp->core->peer_lost((int)node, why_lost);
            break;
        }
        default:
            return rx_bad(tp, pe, "unexpected record type");
        }
        pe->rx_head += rec;
        __atomic_store_n(&pe->rx_ctl->head, pe->rx_head, __ATOMIC_RELEASE);
        n++;
    }
    return n;
}

/* ---- registrations ---- */

static struct shm_rmap *rmap_find(struct shm_peer *pe, uint32_t key)
{
    for (size_t i = 0; i < pe->nrm; i++)
        if (pe->rm[i].key == key)
            return &pe->rm[i];
    return NULL;
}

/* A control message from an established peer. Returns NULL or why the peer is dropped. Under sock_lock. */
static const char *ctl_handle(dsm_tp_t *tp, struct shm_peer *pe, const struct shm_ctl *m, int fd)
{
    if (m->src != (uint32_t)pe->rank || m->dst != (uint32_t)tp->core->rank || m->job_id != tp->core->job_id)
        return "control message with the wrong job or ranks";
    if (m->type == CTL_REG) {
        struct stat st;
        if (fd < 0 || m->len == 0 || m->len > SIZE_MAX / 2 || m->fd_off % SHM_PAGE || m->addr % SHM_PAGE ||
            m->key > UINT32_MAX)
            return "malformed registration";
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < m->fd_off + m->len)
            return "registration beyond the end of its file";
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK))
            return "registered memory not sealed against shrinking";
        void *map = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m->fd_off);
        if (map == MAP_FAILED)
            return "registration cannot be mapped";
        pthread_rwlock_wrlock(&pe->rlock);
        if (rmap_find(pe, (uint32_t)m->key)) {
            pthread_rwlock_unlock(&pe->rlock);
            munmap(map, m->len);
            return "registration key used twice";
        }
        if (pe->nrm == pe->caprm) {
            size_t nc = pe->caprm ? pe->caprm * 2 : 16;
            struct shm_rmap *n = realloc(pe->rm, nc * sizeof *n);
            if (!n) {
                pthread_rwlock_unlock(&pe->rlock);
                munmap(map, m->len);
                return "out of memory for a registration";
            }
            pe->rm = n;
            pe->caprm = nc;
        }
        pe->rm[pe->nrm++] = (struct shm_rmap){.key = (uint32_t)m->key, .addr = m->addr, .len = m->len, .map = map};
        pthread_rwlock_unlock(&pe->rlock);
        return NULL;
    }
    if (m->type == CTL_DEREG && fd < 0) {
        pthread_rwlock_wrlock(&pe->rlock);
        struct shm_rmap *r = rmap_find(pe, (uint32_t)m->key);
        if (r) {
            munmap(r->map, r->len);
            *r = pe->rm[--pe->nrm];
        }
        pthread_rwlock_unlock(&pe->rlock);
        return r ? NULL : "deregistration of an unknown key";
    }
    return "unexpected control message";
}

/* Read what the peer's socket holds. wait_ms > 0: wait that long for one message. Returns -1 on EOF. */
static int sock_pump(dsm_tp_t *tp, struct shm_peer *pe, int wait_ms)
{
    if (pe->sock_eof)
        return -1;
    for (;;) {
        struct shm_ctl m;
        int fd;
        const char *why = NULL;
        int r = ctl_recv(pe->sock, &m, &fd, &why);
        if (r == 2) {
            if (wait_ms <= 0)
                return 0;
            struct pollfd p = {.fd = pe->sock, .events = POLLIN};
            poll(&p, 1, wait_ms);
            wait_ms = 0;
            continue;
        }
        if (r == 0) {
            pe->sock_eof = 1;
            return -1;
        }
        if (r < 0 || (why = ctl_handle(tp, pe, &m, fd)) != NULL) {
            if (fd >= 0)
                close(fd);
            static char msg[160];
            snprintf(msg, sizeof msg, "%s", why);
            tp->core->peer_lost(pe->rank, msg);
            return -1;
        }
        if (fd >= 0)
            close(fd);
        wait_ms = 0;
    }
}

/* The mapped address of [off, off+len) of peer's registration rkey, with pe->rlock held for reading; NULL when
 * it is not (yet) known or out of bounds. A registration's REG message may still be on its way: wait for it. */
static uint8_t *rmap_lock(dsm_tp_t *tp, struct shm_peer *pe, const dsm_tp_rkey_t *rk, uint64_t off, size_t len)
{
    int64_t deadline = now_ms() + tp->core->timeout_ms;
    for (;;) {
        pthread_rwlock_rdlock(&pe->rlock);
        struct shm_rmap *r = rmap_find(pe, rk->key);
        if (r) {
            if (r->addr == rk->addr && off <= r->len && len <= r->len - off)
                return r->map + off;
            pthread_rwlock_unlock(&pe->rlock);
            SLOG(tp, DSM_LOG_WARN, "access outside node %d's registration (key %u, offset %llu, %zu bytes); "
                 "refused", pe->rank, rk->key, (unsigned long long)off, len);
            return NULL;
        }
        pthread_rwlock_unlock(&pe->rlock);
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            SLOG(tp, DSM_LOG_WARN, "node %d has no registration with key %u", pe->rank, rk->key);
            return NULL;
        }
        pthread_mutex_lock(&pe->sock_lock);
        int r2 = sock_pump(tp, pe, left > 50 ? 50 : (int)left);
        pthread_mutex_unlock(&pe->sock_lock);
        if (r2 < 0)
            return NULL;
    }
}

static int shm_mem_reg(dsm_tp_t *tp, void *addr, size_t len, int fd, uint64_t fd_off, dsm_tp_mr_t *mr)
{
    if (fd < 0 || fd_off % SHM_PAGE)
        return DSM_EINVAL;
    pthread_mutex_lock(&tp->reglock);
    uint32_t key = tp->next_key++;
    int rc = DSM_OK;
    for (int p = 0; p < tp->core->size && rc == DSM_OK; p++) {
        struct shm_peer *pe = peer_get(tp, p);
        if (!pe)
            continue;
        struct shm_ctl m = {.type = CTL_REG, .job_id = tp->core->job_id, .src = (uint32_t)tp->core->rank,
                            .dst = (uint32_t)p, .key = key, .addr = (uint64_t)(uintptr_t)addr, .len = len,
                            .fd_off = fd_off};
        if (ctl_send(pe->sock, &m, fd) != 0) {
            SLOG(tp, DSM_LOG_ERROR, "cannot pass a registration to node %d: %s", p, strerror(errno));
            rc = DSM_ESYS;
        }
    }
    pthread_mutex_unlock(&tp->reglock);
    mr->addr = addr;
    mr->len = len;
    mr->key = key;
    mr->prov = NULL;
    return rc;
}

static int shm_mem_dereg(dsm_tp_t *tp, dsm_tp_mr_t *mr)
{
    if (!mr || !mr->len)
        return DSM_OK;
    pthread_mutex_lock(&tp->reglock);
    for (int p = 0; p < tp->core->size; p++) {
        struct shm_peer *pe = peer_get(tp, p);
        if (!pe)
            continue;
        struct shm_ctl m = {.type = CTL_DEREG, .job_id = tp->core->job_id, .src = (uint32_t)tp->core->rank,
                            .dst = (uint32_t)p, .key = mr->key};
        ctl_send(pe->sock, &m, -1);
    }
    pthread_mutex_unlock(&tp->reglock);
    mr->len = 0;
    return DSM_OK;
}

/* ---- one-sided operations: memory operations on the mapped peer memory, complete at once ---- */

/* Copy len bytes to (to_peer) or from the peer's registration rkey at off; local is this node's buffer. */
static int rma_copy(dsm_tp_t *tp, int peer, void *local, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                    int to_peer)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe)
        return DSM_EINVAL;
    uint8_t *there = rmap_lock(tp, pe, rkey, off, len);
    if (!there)
        return DSM_EINVAL;
    if (to_peer)
        memcpy(there, local, len);
    else
        memcpy(local, there, len);
    pthread_rwlock_unlock(&pe->rlock);
    if (to_peer)
        tp->core->count_tx(len);
    else
        tp->core->count_rx(len);
    return DSM_OK;
}

static int shm_put(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                   dsm_tp_req_t *req)
{
    int rc = rma_copy(tp, peer, (void *)src, len, rkey, off, 1);
    if (rc == DSM_OK)
        tp->core->complete(req, DSM_OK, 0);
    return rc;
}

static int shm_put_notify(dsm_tp_t *tp, int peer, const void *src, size_t len, const dsm_tp_rkey_t *rkey,
                          uint64_t off, uint8_t am_id, const void *hdr, size_t hdr_len, dsm_tp_req_t *req)
{
    if (am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX)
        return DSM_EINVAL;
    int rc = rma_copy(tp, peer, (void *)src, len, rkey, off, 1);
    if (rc != DSM_OK)
        return rc;
    /* The ring's release store orders the data before the notification. */
    dsm_wire_hdr_t h = {.type = DSM_WIRE_AM, .am_id = am_id, .src = (uint32_t)tp->core->rank,
                        .hdr_len = (uint32_t)hdr_len};
    rc = msg_send(tp, tp->peers[peer], &h, hdr, hdr_len, NULL, 0);
    if (rc == DSM_OK && req)
        tp->core->complete(req, DSM_OK, 0);
    return rc;
}

static int shm_get(dsm_tp_t *tp, int peer, void *dst, size_t len, const dsm_tp_rkey_t *rkey, uint64_t off,
                   dsm_tp_req_t *req)
{
    int rc = rma_copy(tp, peer, dst, len, rkey, off, 0);
    if (rc == DSM_OK)
        tp->core->complete(req, DSM_OK, 0);
    return rc;
}

static int shm_atomic(dsm_tp_t *tp, int peer, enum dsm_tp_atomic_op op, const dsm_tp_rkey_t *rkey, uint64_t off,
                      uint64_t operand, uint64_t compare, dsm_tp_req_t *req)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe || (op != DSM_TP_ATOMIC_FADD && op != DSM_TP_ATOMIC_CSWAP) || (rkey->addr + off) % 8)
        return DSM_EINVAL;
    uint8_t *p = rmap_lock(tp, pe, rkey, off, 8);
    if (!p)
        return DSM_EINVAL;
    uint64_t *w = (uint64_t *)(void *)p, old;
    if (op == DSM_TP_ATOMIC_FADD) {
        old = __atomic_fetch_add(w, operand, __ATOMIC_SEQ_CST);
    } else {
        old = compare;
        __atomic_compare_exchange_n(w, &old, operand, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    pthread_rwlock_unlock(&pe->rlock);
    tp->core->complete(req, DSM_OK, old);
    return DSM_OK;
}

static int shm_flush(dsm_tp_t *tp, int peer)
{
    /* Every one-sided operation completed before it returned. */
    return peer_get(tp, peer) ? DSM_OK : DSM_EINVAL;
}

static int shm_am_send(dsm_tp_t *tp, int peer, uint8_t am_id, const void *hdr, size_t hdr_len, const void *payload,
                       size_t len)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe || am_id == 0 || hdr_len > DSM_TP_AM_HDR_MAX || len > tp->lim.payload_max)
        return DSM_EINVAL;
    dsm_wire_hdr_t h = {.type = DSM_WIRE_AM, .am_id = am_id, .src = (uint32_t)tp->core->rank,
                        .hdr_len = (uint32_t)hdr_len, .payload_len = (uint32_t)len};
    return msg_send(tp, pe, &h, hdr, hdr_len, payload, len);
}

static int shm_bye(dsm_tp_t *tp, int peer)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe)
        return DSM_EINVAL;
    dsm_wire_hdr_t h = {.type = DSM_WIRE_BYE, .src = (uint32_t)tp->core->rank};
    __atomic_store_n(&pe->bye_sent, 1, __ATOMIC_RELEASE);
    return msg_send(tp, pe, &h, NULL, 0, NULL, 0);
}

static int shm_peer_left(dsm_tp_t *tp, int peer)
{
    struct shm_peer *pe = peer_get(tp, peer);
    if (!pe)
        return 1;
    pthread_mutex_lock(&pe->tx_lock);
    int left = __atomic_load_n(&pe->left, __ATOMIC_ACQUIRE) && !pe->pend;
    pthread_mutex_unlock(&pe->tx_lock);
    return left;
}

static void shm_tell_lost(dsm_tp_t *tp, int node)
{
    uint8_t b[4];
    dsm_le32_put(b, (uint32_t)node);
    dsm_wire_hdr_t h = {.type = DSM_WIRE_LOST, .src = (uint32_t)tp->core->rank, .hdr_len = 4};
    for (int p = 0; p < tp->core->size; p++) {
        struct shm_peer *pe = peer_get(tp, p);
        if (!pe || p == node || pthread_mutex_trylock(&pe->tx_lock) != 0)
            continue;
        /* Only between messages: a queued one must not be cut by this record. */
        int64_t room = tx_room(tp, pe);
        size_t rec = align_up(DSM_WIRE_HDR_SIZE + sizeof b);
        if (!pe->pend && room >= 0 && (int64_t)rec_need(tp, pe, rec) <= room) {
            rec_write(tp, pe, &h, b, sizeof b, NULL, 0);
            tx_publish(pe);
        }
        pthread_mutex_unlock(&pe->tx_lock);
    }
}

/* ---- progress ---- */

/* A local connection after setup: nobody legitimate makes one. */
static void refuse_strangers(dsm_tp_t *tp)
{
    for (;;) {
        int fd = accept4(tp->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct ucred cr;
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0)
            cr.pid = 0;
        SLOG(tp, DSM_LOG_WARN, "refused a local connection from pid %d after setup", (int)cr.pid);
        tp->refused++;
        tp->core->count_refused();
        close(fd);
    }
}

/* Drain every ring and queue once. Returns the records handled. */
static int drain_all(dsm_tp_t *tp)
{
    int n = 0;
    for (int p = 0; p < tp->core->size; p++) {
        struct shm_peer *pe = tp->peers[p];
        if (!pe || !pe->ready)
            continue;
        int r = rx_drain(tp, pe);
        if (r > 0)
            n += r;
        if (__atomic_load_n(&pe->pend, __ATOMIC_RELAXED) && pthread_mutex_trylock(&pe->tx_lock) == 0) {
            if (pend_flush(tp, pe) < 0) {
                pthread_mutex_unlock(&pe->tx_lock);
                tp->core->peer_lost(pe->rank, "its queue indices are corrupted");
                continue;
            }
            pthread_mutex_unlock(&pe->tx_lock);
        }
    }
    return n;
}

static int any_pending(dsm_tp_t *tp)
{
    for (int p = 0; p < tp->core->size; p++)
        if (tp->peers[p] && tp->peers[p]->ready && __atomic_load_n(&tp->peers[p]->pend, __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* Sockets: registrations, and the EOF that says a local peer died. */
static void check_sockets(dsm_tp_t *tp)
{
    refuse_strangers(tp);
    for (int p = 0; p < tp->core->size; p++) {
        struct shm_peer *pe = tp->peers[p];
        if (!pe || !pe->ready || pthread_mutex_trylock(&pe->sock_lock) != 0)
            continue;
        int r = sock_pump(tp, pe, 0);
        pthread_mutex_unlock(&pe->sock_lock);
        if (r < 0 && !pe->gone) {
            /* Its last records may still be in the ring, the bye among them. */
            rx_drain(tp, pe);
            pe->gone = 1;
            if (!__atomic_load_n(&pe->left, __ATOMIC_ACQUIRE))
                tp->core->peer_lost(pe->rank, "its process ended (local socket closed)");
            /* Gone after its bye but before ours: it left while this node still needed it (collective calls
             * that do not match), which must not leave this node waiting for it. */
            if (!__atomic_load_n(&pe->bye_sent, __ATOMIC_ACQUIRE))
                tp->core->peer_lost(pe->rank, "it finished (dsm_finalize) while this node was still working with it");
        }
    }
}

static int shm_progress(dsm_tp_t *tp, int timeout_ms)
{
    if (pthread_mutex_trylock(&tp->plock) != 0) {
        if (timeout_ms > 0)
            usleep(1000);
        return DSM_OK;
    }
    int64_t start = now_ms(), deadline = start + (timeout_ms > 0 ? timeout_ms : 0);
    uint64_t spin_from = now_ns();
    struct shm_mbox_hdr *mh = (struct shm_mbox_hdr *)tp->mbox;
    for (;;) {
        if (drain_all(tp) > 0)
            break;
        int64_t now = now_ms();
        if (now - tp->sock_checked >= 10 || timeout_ms <= 0) {
            check_sockets(tp);
            tp->sock_checked = now;
        }
        if (now >= deadline)
            break;
        /* Spin a while (spin: the whole time; adaptive: SHM_SPIN_NS), then sleep on the doorbell. Longer spins
         * take the core from the very threads the answer must wake when a host has few cores. */
        if (tp->wait_mode == WAIT_SPIN || (tp->wait_mode == WAIT_ADAPTIVE && now_ns() - spin_from < SHM_SPIN_NS)) {
            for (int i = 0; i < 256; i++)
                __builtin_ia32_pause();
            continue;
        }
        uint32_t seq = __atomic_load_n(&mh->bell, __ATOMIC_ACQUIRE);
        __atomic_store_n(&mh->sleeping, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the flag before the re-check of the tails */
        if (drain_all(tp) > 0) {
            __atomic_store_n(&mh->sleeping, 0, __ATOMIC_RELAXED);
            break;
        }
        int64_t left = deadline - now;
        /* Queued sends wait for room, which nobody announces: look again soon. Sockets: every 50 ms. */
        int slice = any_pending(tp) ? 1 : 50;
        bell_wait(&mh->bell, seq, left < slice ? (int)left : slice);
        __atomic_store_n(&mh->sleeping, 0, __ATOMIC_RELAXED);
        /* Woken by a sender: the rings first; the sockets (a dead peer's EOF, registrations, which a user of
         * one waits for itself in rmap_lock) every 10 ms, not after every message. */
        if (__atomic_load_n(&mh->bell, __ATOMIC_ACQUIRE) == seq || now_ms() - tp->sock_checked >= 10) {
            check_sockets(tp);
            tp->sock_checked = now_ms();
        }
    }
    pthread_mutex_unlock(&tp->plock);
    return DSM_OK;
}

/* ---- setup ---- */

static int shm_probe(const dsm_tp_core_t *core, char *why, size_t why_len)
{
    (void)core;
    char id[SHM_HOSTID_MAX];
    if (host_identity(id, sizeof id) != 0) {
        snprintf(why, why_len, "cannot read this host's identity (host name, /proc boot id, network namespace)");
        return DSM_ENOSYS;
    }
    int fd = memfd_create("libdsm-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        snprintf(why, why_len, "memfd_create: %s", strerror(errno));
        return DSM_ENOSYS;
    }
    close(fd);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) {
        snprintf(why, why_len, "unix sockets: %s", strerror(errno));
        return DSM_ENOSYS;
    }
    close(s);
    snprintf(why, why_len, "memfd queues between ranks of this host (%s)", id);
    return DSM_OK;
}

static int shm_init(const dsm_tp_core_t *core, dsm_tp_t **tp_p, char *why, size_t why_len)
{
    if (shm_probe(core, why, why_len) != DSM_OK)
        return DSM_ENOSYS;
    dsm_tp_t *tp = calloc(1, sizeof *tp);
    if (!tp || !(tp->peers = calloc((size_t)core->size, sizeof *tp->peers))) {
        free(tp);
        snprintf(why, why_len, "out of memory");
        return DSM_ENOMEM;
    }
    tp->core = core;
    tp->lfd = tp->mbox_fd = -1;
    tp->lim = (dsm_wire_limits_t){.nranks = (uint32_t)core->size, .payload_max = DSM_TP_AM_PAYLOAD_MAX};
    pthread_mutex_init(&tp->plock, NULL);
    pthread_mutex_init(&tp->reglock, NULL);
    host_identity(tp->hostid, sizeof tp->hostid);
    tp->reply_free = ((1ull << SHM_REPLY_SLOTS) - 1) << 1;
    for (int t = 0; t <= SHM_REPLY_SLOTS; t++)
        tp->reply_peer[t] = -1;
    const char *w = core->setting("DSM_WAIT");
    tp->wait_mode = !w ? WAIT_ADAPTIVE : strcmp(w, "spin") == 0 ? WAIT_SPIN
                                       : strcmp(w, "block") == 0 ? WAIT_BLOCK : WAIT_ADAPTIVE;
    struct sockaddr_un sa;
    socklen_t sl;
    sock_name(core->job_id, core->rank, &sa, &sl);
    tp->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (tp->lfd < 0 || bind(tp->lfd, (struct sockaddr *)&sa, sl) != 0 || listen(tp->lfd, 128) != 0) {
        snprintf(why, why_len, "cannot listen on the local socket %s: %s", sa.sun_path + 1, strerror(errno));
        if (tp->lfd >= 0)
            close(tp->lfd);
        pthread_mutex_destroy(&tp->plock);
        pthread_mutex_destroy(&tp->reglock);
        free(tp->peers);
        free(tp);
        return DSM_ESYS;
    }
    shm_debug_tp = tp;
    *tp_p = tp;
    return DSM_OK;
}

static int shm_addr_get(dsm_tp_t *tp, void *buf, size_t *len_p)
{
    size_t hl = strlen(tp->hostid) + 1;
    if (*len_p < 16 + hl)
        return DSM_EINVAL;
    uint8_t *b = buf;
    dsm_le64_put(b, tp->core->job_id);
    dsm_le32_put(b + 8, (uint32_t)tp->core->rank);
    dsm_le32_put(b + 12, (uint32_t)getpid());
    memcpy(b + 16, tp->hostid, hl);
    *len_p = 16 + hl;
    return DSM_OK;
}

static int shm_reach(dsm_tp_t *tp, int peer, const void *addr, size_t addr_len)
{
    uint64_t job;
    int rank;
    pid_t pid;
    const char *host;
    return blob_parse(addr, addr_len, &job, &rank, &pid, &host) == 0 && job == tp->core->job_id && rank == peer &&
           strcmp(host, tp->hostid) == 0;
}

static struct shm_peer *peer_new(dsm_tp_t *tp, int rank, int lidx, pid_t pid)
{
    struct shm_peer *pe = calloc(1, sizeof *pe);
    if (!pe)
        return NULL;
    pe->rank = rank;
    pe->lidx = lidx;
    pe->pid = pid;
    pe->sock = -1;
    if (!(pe->spares = calloc(SHM_SPARES, sizeof *pe->spares))) {
        free(pe);
        return NULL;
    }
    for (int i = 0; i < SHM_SPARES; i++) {
        pe->spares[i].next = pe->spare;
        pe->spare = &pe->spares[i];
    }
    pthread_mutex_init(&pe->tx_lock, NULL);
    pthread_mutex_init(&pe->sock_lock, NULL);
    pthread_rwlock_init(&pe->rlock, NULL);
    tp->peers[rank] = pe;
    return pe;
}

static void peer_free(struct shm_peer *pe)
{
    if (!pe)
        return;
    if (pe->sock >= 0)
        close(pe->sock);
    if (pe->mbox)
        munmap(pe->mbox, pe->mbox_len);
    for (size_t i = 0; i < pe->nrm; i++)
        munmap(pe->rm[i].map, pe->rm[i].len);
    free(pe->rm);
    while (pe->pend) {
        struct shm_pend *n = pe->pend->next;
        if (!pe->pend->spare)
            free(pe->pend);
        pe->pend = n;
    }
    free(pe->spares);
    free(pe->frag);
    pthread_mutex_destroy(&pe->tx_lock);
    pthread_mutex_destroy(&pe->sock_lock);
    pthread_rwlock_destroy(&pe->rlock);
    free(pe);
}

/* Sends on a local socket (hello, registrations) give up after DSM_TIMEOUT instead of waiting for a peer that
 * stopped reading. */
static void sock_bound(dsm_tp_t *tp, int fd)
{
    struct timeval tv = {.tv_sec = tp->core->timeout_ms / 1000, .tv_usec = (tp->core->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* The peer at the other end of sock is who it says: same uid, the pid it published. */
static const char *check_cred(dsm_tp_t *tp, int sock, const struct shm_peer *pe)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0)
        return "cannot read the peer's credentials";
    if (cr.uid != getuid())
        return "the peer runs as another user";
    if (cr.pid != pe->pid)
        return "the peer's pid is not the one it published";
    (void)tp;
    return NULL;
}

static const char *hello_check(dsm_tp_t *tp, const struct shm_ctl *m, uint32_t type)
{
    if (m->type != type)
        return "expected a hello";
    if (m->job_id != tp->core->job_id)
        return "hello from another job";
    if (m->dst != (uint32_t)tp->core->rank || m->size != (uint32_t)tp->core->size ||
        m->nlocal != (uint32_t)tp->nlocal)
        return "hello with the wrong rank, job size or number of local ranks";
    if (m->src >= (uint32_t)tp->core->size || !tp->peers[m->src])
        return "hello from a rank that is not on this host";
    return NULL;
}

static void hello_fill(dsm_tp_t *tp, struct shm_ctl *m, uint32_t type, int dst)
{
    *m = (struct shm_ctl){.type = type, .job_id = tp->core->job_id, .src = (uint32_t)tp->core->rank,
                          .dst = (uint32_t)dst, .size = (uint32_t)tp->core->size, .nlocal = (uint32_t)tp->nlocal};
}

/* Wait for one control message on a socket in handshake, at most wait_ms. */
static int ctl_wait(int sock, struct shm_ctl *m, int *fd_p, int wait_ms, const char **why)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0) {
        *why = "no hello in time";
        return -1;
    }
    int r = ctl_recv(sock, m, fd_p, why);
    if (r == 0)
        *why = "closed during the handshake";
    else if (r == 2)
        *why = "no hello in time";
    return r == 1 ? 0 : -1;
}

/* Accept one connection during setup: a higher local rank saying HELLO, then proving the job secret. Sockets
 * stay blocking for sends (a registration waits for room); every receive is MSG_DONTWAIT. */
static void accept_one(dsm_tp_t *tp, int fd)
{
    struct shm_ctl m;
    int mfd = -1;
    const char *why = NULL;
    struct shm_peer *pe = NULL;
    struct ucred cr;
    socklen_t cl = sizeof cr;
    dsm_auth_ctx_t ax = {.job_id = tp->core->job_id, .acceptor = (uint32_t)tp->core->rank,
                         .size = (uint32_t)tp->core->size};
    /* Another user's process is turned away before it can make us wait for its hello. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.uid != getuid())
        why = "the peer runs as another user";
    else if (ctl_wait(fd, &m, &mfd, SHM_HELLO_WAIT_MS, &why) == 0 && !(why = hello_check(tp, &m, CTL_HELLO))) {
        pe = tp->peers[m.src];
        if ((int)m.src <= tp->core->rank)
            why = "hello from a rank that should have waited for our connection";
        else if (pe->ready || pe->sock >= 0)
            why = "second hello from the same rank";
        else if (mfd >= 0)
            why = "a descriptor before authentication";
        else
            why = check_cred(tp, fd, pe);
    }
    if (!why) {
        struct shm_ctl a;
        ax.connector = m.src;
        memcpy(ax.nonce_c, m.nonce, sizeof ax.nonce_c);
        dsm_auth_nonce(ax.nonce_a);
        hello_fill(tp, &a, CTL_HELLO_ACK, pe->rank);
        memcpy(a.nonce, ax.nonce_a, sizeof a.nonce);
        dsm_auth_mac(tp->core->secret, DSM_AUTH_ACCEPTOR, &ax, a.mac);
        /* The connector is the process the rank published (pid checked above): it may take up to DSM_TIMEOUT to
         * answer on a loaded host, as in its own wait for our answer. */
        if (ctl_send(fd, &a, -1) != 0)
            why = "cannot answer the hello";
        else if (ctl_wait(fd, &m, &mfd, tp->core->timeout_ms, &why) == 0 && !(why = hello_check(tp, &m, CTL_AUTH))) {
            if (m.src != ax.connector)
                why = "authentication from another rank";
            else if (dsm_auth_check(tp->core->secret, DSM_AUTH_CONNECTOR, &ax, m.mac) != 0)
                why = "authentication failed (wrong or missing job secret)";
            else if (mfd < 0)
                why = "authentication without a mailbox";
            else
                why = attach_mbox(tp, pe, mfd);
        }
    }
    if (!why) {
        struct shm_ctl a;
        hello_fill(tp, &a, CTL_READY, pe->rank);
        if (ctl_send(fd, &a, tp->mbox_fd) != 0)
            why = "cannot answer the authentication";
    }
    if (mfd >= 0)
        close(mfd);
    if (why) {
        SLOG(tp, DSM_LOG_WARN, "refused a local connection: %s", why);
        tp->refused++;
        tp->core->count_refused();
        close(fd);
        return;
    }
    sock_bound(tp, fd);
    pe->sock = fd;
    pe->ready = 1;
    SLOG(tp, DSM_LOG_DEBUG, "node %d connected (local index %d)", pe->rank, pe->lidx);
}

static int connect_one(dsm_tp_t *tp, struct shm_peer *pe, int64_t deadline)
{
    struct sockaddr_un sa;
    socklen_t sl;
    sock_name(tp->core->job_id, pe->rank, &sa, &sl);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    const char *why = NULL;
    struct shm_ctl m;
    int mfd = -1, rc;
    /* A full backlog (strangers, or many ranks at once) says EAGAIN: retry until the deadline. */
    while (fd >= 0 && (rc = connect(fd, (struct sockaddr *)&sa, sl)) != 0 && errno == EAGAIN && now_ms() < deadline)
        usleep(1000);
    if (fd < 0 || rc != 0) {
        SLOG(tp, DSM_LOG_ERROR, "cannot connect to node %d's local socket: %s", pe->rank, strerror(errno));
        if (fd >= 0)
            close(fd);
        return DSM_EUNREACH;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    sock_bound(tp, fd);
    dsm_auth_ctx_t ax = {.job_id = tp->core->job_id, .connector = (uint32_t)tp->core->rank,
                         .acceptor = (uint32_t)pe->rank, .size = (uint32_t)tp->core->size};
    dsm_auth_nonce(ax.nonce_c);
    hello_fill(tp, &m, CTL_HELLO, pe->rank);
    memcpy(m.nonce, ax.nonce_c, sizeof m.nonce);
    int64_t left = deadline - now_ms();
    if (ctl_send(fd, &m, -1) != 0)
        why = "cannot send the hello";
    else if (ctl_wait(fd, &m, &mfd, left > 0 ? (int)left : 0, &why) == 0 &&
             !(why = hello_check(tp, &m, CTL_HELLO_ACK))) {
        memcpy(ax.nonce_a, m.nonce, sizeof ax.nonce_a);
        if (m.src != (uint32_t)pe->rank)
            why = "answered by another rank";
        else if (mfd >= 0)
            why = "a descriptor before authentication";
        else if (!(why = check_cred(tp, fd, pe)) &&
                 dsm_auth_check(tp->core->secret, DSM_AUTH_ACCEPTOR, &ax, m.mac) != 0)
            why = "the node listening there failed authentication (wrong or missing job secret)";
    }
    if (!why) {
        struct shm_ctl a;
        hello_fill(tp, &a, CTL_AUTH, pe->rank);
        dsm_auth_mac(tp->core->secret, DSM_AUTH_CONNECTOR, &ax, a.mac);
        left = deadline - now_ms();
        if (ctl_send(fd, &a, tp->mbox_fd) != 0)
            why = "cannot send the authentication";
        else if (ctl_wait(fd, &m, &mfd, left > 0 ? (int)left : 0, &why) == 0 &&
                 !(why = hello_check(tp, &m, CTL_READY))) {
            if (m.src != (uint32_t)pe->rank)
                why = "answered by another rank";
            else if (mfd < 0)
                why = "answer without a mailbox";
            else
                why = attach_mbox(tp, pe, mfd);
        }
    }
    if (mfd >= 0)
        close(mfd);
    if (why) {
        SLOG(tp, DSM_LOG_ERROR, "connection to node %d failed: %s", pe->rank, why);
        close(fd);
        return DSM_EPROTO;
    }
    pe->sock = fd;
    pe->ready = 1;
    SLOG(tp, DSM_LOG_DEBUG, "connected to node %d (local index %d)", pe->rank, pe->lidx);
    return DSM_OK;
}

static int shm_connect(dsm_tp_t *tp, const void *const *addr, const size_t *addr_len)
{
    const dsm_tp_core_t *core = tp->core;
    int64_t deadline = now_ms() + core->timeout_ms;
    /* This host's ranks, in rank order: a rank's index among them names its ring in every mailbox. */
    tp->nlocal = 0;
    for (int p = 0; p < core->size; p++) {
        if (p != core->rank && !addr_len[p])
            continue;
        if (p == core->rank) {
            tp->my_lidx = tp->nlocal++;
            continue;
        }
        uint64_t job;
        int rank;
        pid_t pid;
        const char *host;
        if (blob_parse(addr[p], addr_len[p], &job, &rank, &pid, &host) != 0) {
            SLOG(tp, DSM_LOG_ERROR, "node %d published a malformed address", p);
            return DSM_EPROTO;
        }
        if (!peer_new(tp, p, tp->nlocal++, pid))
            return DSM_ENOMEM;
    }
    tp->cap = ring_cap_for(tp->nlocal);
    tp->frag_max = tp->cap / 4;
    int rc = create_mbox(tp);
    if (rc)
        return rc;
    SLOG(tp, DSM_LOG_INFO, "%d ranks on this host; a ring of %zu KiB per local sender", tp->nlocal, tp->cap >> 10);
    /* The higher rank of a pair connects; meanwhile serve the lower ranks' connections in turn. */
    for (int p = 0; p < core->rank; p++)
        if (tp->peers[p] && (rc = connect_one(tp, tp->peers[p], deadline)) != DSM_OK)
            return rc;
    for (;;) {
        int waiting = -1;
        for (int p = core->rank + 1; p < core->size && waiting < 0; p++)
            if (tp->peers[p] && !tp->peers[p]->ready)
                waiting = p;
        if (waiting < 0)
            break;
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            SLOG(tp, DSM_LOG_ERROR, "node %d did not connect within DSM_TIMEOUT", waiting);
            return DSM_ETIMEDOUT;
        }
        struct pollfd pl = {.fd = tp->lfd, .events = POLLIN};
        if (poll(&pl, 1, left > 100 ? 100 : (int)left) <= 0)
            continue;
        int fd = accept4(tp->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        accept_one(tp, fd);
    }
    return DSM_OK;
}

static void shm_finalize(dsm_tp_t *tp)
{
    if (!tp)
        return;
    if (shm_debug_tp == tp)
        shm_debug_tp = NULL;
    for (int p = 0; p < tp->core->size; p++)
        peer_free(tp->peers[p]);
    if (tp->refused)
        SLOG(tp, DSM_LOG_INFO, "refused %u local connection(s) during the job", tp->refused);
    if (tp->lfd >= 0)
        close(tp->lfd);
    if (tp->mbox)
        munmap(tp->mbox, tp->mbox_len);
    if (tp->mbox_fd >= 0)
        close(tp->mbox_fd);
    pthread_mutex_destroy(&tp->plock);
    pthread_mutex_destroy(&tp->reglock);
    free(tp->peers);
    free(tp);
}

int dsm_tp_shm_debug_garbage(int peer, unsigned seed)
{
    dsm_tp_t *tp = shm_debug_tp;
    struct shm_peer *pe = tp ? peer_get(tp, peer) : NULL;
    if (!pe)
        return DSM_EINVAL;
    unsigned kind = seed % 3, x = seed;
    pthread_mutex_lock(&pe->tx_lock);
    size_t off = pe->tx_tail & (tp->cap - 1), n = 256;
    if (tp->cap - off < n)
        n = tp->cap - off;
    /* Random bytes; or a plausible header announcing more than was written; or an impossible ring index. */
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        pe->tx_data[off + i] = (uint8_t)(x >> 16);
    }
    if (kind == 1) {
        dsm_wire_hdr_t h = {.type = DSM_WIRE_AM, .am_id = 1, .src = (uint32_t)tp->core->rank,
                            .hdr_len = 8, .payload_len = 0xffffff};
        dsm_wire_hdr_enc(pe->tx_data + off, &h);
    }
    pe->tx_tail += kind == 2 ? 3 * tp->cap : n;
    tx_publish(pe);
    pthread_mutex_unlock(&pe->tx_lock);
    return DSM_OK;
}

int dsm_tp_shm_debug_reply_garbage(int peer, unsigned seed)
{
    dsm_tp_t *tp = shm_debug_tp;
    struct shm_peer *pe = tp ? peer_get(tp, peer) : NULL;
    if (!pe)
        return DSM_EINVAL;
    /* A reply in a slot the peer never armed: well formed (seed even), or random bytes in every slot (odd). */
    unsigned x = seed;
    for (uint32_t t = 1; t <= SHM_REPLY_SLOTS; t++) {
        struct shm_reply *r = reply_slot(pe->mbox, t);
        if (seed % 2) {
            for (size_t i = sizeof r->word; i < sizeof *r; i++) {
                x = x * 1103515245u + 12345u;
                ((uint8_t *)r)[i] = (uint8_t)(x >> 16);
            }
        }
    }
    struct shm_reply *r = reply_slot(pe->mbox, SHM_REPLY_SLOTS - (seed % 8));
    if (seed % 2 == 0) {
        r->src = (uint32_t)tp->core->rank;
        r->am_id = 12; /* a page grant */
        r->hdr_len = 9;
        memset(r->hdr, 0, 9);
    }
    __atomic_or_fetch(reply_bits(pe->mbox), seed % 2 ? ~1ull : 1ull << (SHM_REPLY_SLOTS - (seed % 8)), __ATOMIC_RELEASE);
    __atomic_store_n(&r->word, REPLY_FILLED, __ATOMIC_SEQ_CST);
    /* Progress sees it at its next drain: ring the doorbell for one. */
    bell_ring(&((struct shm_mbox_hdr *)pe->mbox)->bell);
    return DSM_OK;
}

const struct dsm_tp_ops dsm_tp_shm_ops = {
    .abi_version = DSM_TP_ABI_VERSION,
    .name = SHM_NAME,
    /* Not AM_ORDERED: a put lands at once, while an earlier message may still wait in the queue for room. */
    .caps = DSM_TP_CAP_RMA_NATIVE | DSM_TP_CAP_ATOMIC_NATIVE | DSM_TP_CAP_ATOMIC_GLOB,
    .probe = shm_probe,
    .init = shm_init,
    .finalize = shm_finalize,
    .addr_get = shm_addr_get,
    .connect = shm_connect,
    .reach = shm_reach,
    .am_send = shm_am_send,
    .mem_reg = shm_mem_reg,
    .mem_dereg = shm_mem_dereg,
    .put = shm_put,
    .put_notify = shm_put_notify,
    .get = shm_get,
    .atomic = shm_atomic,
    .flush = shm_flush,
    .progress = shm_progress,
    .bye = shm_bye,
    .peer_left = shm_peer_left,
    .tell_lost = shm_tell_lost,
    .reply_arm = shm_reply_arm,
    .reply_wait = shm_reply_wait,
    .reply = shm_reply,
};
