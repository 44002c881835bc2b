/* SPDX-License-Identifier: MIT */
/*
 * boot_rdv.c - the client of dsmrun's rendezvous (rdv_proto.h): one TCP connection to DSM_COORD kept for the
 * life of the job, so the launcher sees a clean exit (FIN) from a failure, and a rank that fails because another
 * failed can say so (ABORT) before it exits.
 * Requests are synchronous and serialized by a mutex. Every wait ends on a reply, on the server's ERROR or EOF
 * (the launcher aborts the job when a rank dies), or, for the handshake, on DSM_TIMEOUT.
 */
#include "config.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/boot.h"
#include "libdsm/log.h"
#include "libdsm/rdv_proto.h"

struct rdv_client {
    int fd;
    pthread_mutex_t lock;
    uint8_t buf[4 + DSM_RDV_MSG_MAX];
    size_t have;
    size_t consumed;  /* bytes of buf the last returned message occupies */
    uint8_t abort_msg[4 + DSM_RDV_MSG_MAX];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int send_msg(struct rdv_client *c, const dsm_rdv_msg_t *m)
{
    uint8_t out[4 + DSM_RDV_MSG_MAX];
    size_t n = dsm_rdv_msg_enc(out, m);
    if (n == 0)
        return DSM_EINVAL;
    for (size_t off = 0; off < n;) {
        ssize_t w = send(c->fd, out + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            dsm_err("rendezvous: send failed: %s", strerror(errno));
            return DSM_EBOOTSTRAP;
        }
        off += (size_t)w;
    }
    return DSM_OK;
}

/* Receive one message; deadline_ms < 0 waits as long as the server lives. m points into c->buf until the next
 * call. */
static int recv_msg(struct rdv_client *c, dsm_rdv_msg_t *m, int64_t deadline_ms)
{
    if (c->consumed) {
        memmove(c->buf, c->buf + c->consumed, c->have - c->consumed);
        c->have -= c->consumed;
        c->consumed = 0;
    }
    for (;;) {
        const char *why = NULL;
        size_t used;
        int rc = dsm_rdv_msg_dec(c->buf, c->have, m, &used, &why);
        if (rc == DSM_OK) {
            c->consumed = used;
            if (m->op == DSM_RDV_ERROR) {
                dsm_err("rendezvous: %.*s", (int)m->val_len, (const char *)m->val);
                return DSM_EBOOTSTRAP;
            }
            return DSM_OK;
        }
        if (rc != DSM_RDV_NEED_MORE) {
            dsm_err("rendezvous: malformed reply from the server: %s", why);
            return DSM_EPROTO;
        }
        int wait = -1;
        if (deadline_ms >= 0) {
            int64_t left = deadline_ms - now_ms();
            if (left <= 0) {
                dsm_err("rendezvous: no reply from the server within DSM_TIMEOUT");
                return DSM_ETIMEDOUT;
            }
            wait = (int)left;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            continue;
        ssize_t r = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            dsm_err("rendezvous: the server closed the connection (%s); the launcher ended the job",
                    r == 0 ? "EOF" : strerror(errno));
            return DSM_EBOOTSTRAP;
        }
        c->have += (size_t)r;
    }
}

static int request(dsm_boot_t *b, const dsm_rdv_msg_t *q, dsm_rdv_msg_t *a, int64_t deadline_ms)
{
    struct rdv_client *c = b->priv;
    int rc = send_msg(c, q);
    if (rc == DSM_OK && a)
        rc = recv_msg(c, a, deadline_ms);
    return rc;
}

static int rdv_put(dsm_boot_t *b, const char *key, const void *val, size_t len)
{
    struct rdv_client *c = b->priv;
    dsm_rdv_msg_t q = {.op = DSM_RDV_PUT, .key = key, .key_len = strlen(key), .val = val, .val_len = len};
    pthread_mutex_lock(&c->lock);
    int rc = request(b, &q, NULL, -1);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int rdv_get(dsm_boot_t *b, int rank, const char *key, void *val, size_t *len)
{
    struct rdv_client *c = b->priv;
    dsm_rdv_msg_t q = {.op = DSM_RDV_GET, .rank = (uint32_t)rank, .key = key, .key_len = strlen(key)}, a;
    pthread_mutex_lock(&c->lock);
    int rc = request(b, &q, &a, -1);
    if (rc == DSM_OK) {
        if (a.op != DSM_RDV_VALUE || a.val_len > *len) {
            if (a.op != DSM_RDV_NOTFOUND && a.op != DSM_RDV_VALUE) {
                dsm_err("rendezvous: unexpected reply %u to a get", a.op);
                rc = DSM_EPROTO;
            } else {
                rc = DSM_EINVAL;
            }
        } else {
            memcpy(val, a.val, a.val_len);
            *len = a.val_len;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int rdv_fence(dsm_boot_t *b)
{
    struct rdv_client *c = b->priv;
    dsm_rdv_msg_t q = {.op = DSM_RDV_FENCE}, a;
    pthread_mutex_lock(&c->lock);
    int rc = request(b, &q, &a, -1);
    if (rc == DSM_OK && a.op != DSM_RDV_FENCE_DONE) {
        dsm_err("rendezvous: unexpected reply %u to a fence", a.op);
        rc = DSM_EPROTO;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void rdv_note_abort(dsm_boot_t *b, const char *text)
{
    struct rdv_client *c = b->priv;
    dsm_rdv_msg_t m = {.op = DSM_RDV_ABORT, .val = (const uint8_t *)text, .val_len = strlen(text)};
    if (m.val_len > DSM_RDV_TEXT_MAX)
        m.val_len = DSM_RDV_TEXT_MAX;
    /* This runs on the way out and must not wait for a thread that holds the lock; but bytes of a message
     * another thread is sending must not be interleaved either, so the note is skipped when the lock is taken
     * (the launcher then only misses which node was the cause). send(2) is async-signal-safe. */
    if (pthread_mutex_trylock(&c->lock) != 0)
        return;
    size_t n = dsm_rdv_msg_enc(c->abort_msg, &m);
    if (n) {
        ssize_t w = send(c->fd, c->abort_msg, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    pthread_mutex_unlock(&c->lock);
}

static void rdv_fini(dsm_boot_t *b, int clean)
{
    struct rdv_client *c = b->priv;
    if (!c)
        return;
    if (clean) {
        dsm_rdv_msg_t q = {.op = DSM_RDV_FIN};
        pthread_mutex_lock(&c->lock);
        request(b, &q, NULL, -1);
        pthread_mutex_unlock(&c->lock);
    }
    close(c->fd);
    pthread_mutex_destroy(&c->lock);
    free(c);
    b->priv = NULL;
}

/* Connect to host:port, retrying until the deadline: by hand, ranks may start before the server. */
static int coord_connect(const char *coord, int64_t deadline, char *err, size_t err_len)
{
    char host[256];
    const char *colon = strrchr(coord, ':');
    size_t hl = (size_t)(colon - coord);
    memcpy(host, coord, hl);
    host[hl] = '\0';
    /* Accept [v6]:port. */
    char *h = host;
    if (h[0] == '[' && hl > 1 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(h, colon + 1, &hints, &res);
    if (gai) {
        snprintf(err, err_len, "DSM_COORD='%s': cannot resolve '%s': %s", coord, h, gai_strerror(gai));
        return -1;
    }
    int last_errno = 0;
    for (;;) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) {
                last_errno = errno;
                continue;
            }
            /* connect(2) gives up after SO_SNDTIMEO: an address that drops packets costs DSM_TIMEOUT, not the
             * kernel's two minutes. */
            int64_t left = deadline - now_ms();
            struct timeval tv = {.tv_sec = left > 1000 ? left / 1000 : 1};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                freeaddrinfo(res);
                return fd;
            }
            last_errno = errno;
            close(fd);
        }
        if (now_ms() >= deadline)
            break;
        usleep(100 * 1000);
    }
    freeaddrinfo(res);
    snprintf(err, err_len, "cannot connect to the rendezvous at DSM_COORD=%s: %s (is dsmrun serving it?)", coord,
             strerror(last_errno));
    return -1;
}

int dsm_boot_open_rdv(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len)
{
    int64_t deadline = now_ms() + (int64_t)cfg->timeout_s * 1000;
    struct rdv_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, err_len, "out of memory");
        return DSM_ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->fd = coord_connect(cfg->coord, deadline, err, err_len);
    if (c->fd < 0) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return DSM_EBOOTSTRAP;
    }
    b->priv = c;
    b->name = "dsmrun";
    b->rank = cfg->rank;
    b->size = cfg->size;
    b->put = rdv_put;
    b->get = rdv_get;
    b->fence = rdv_fence;
    b->note_abort = rdv_note_abort;
    b->fini = rdv_fini;

    dsm_rdv_msg_t q = {.op = DSM_RDV_HELLO, .proto = DSM_RDV_PROTO, .rank = (uint32_t)cfg->rank,
                       .size = (uint32_t)cfg->size}, a;
    int rc = request(b, &q, &a, deadline);
    if (rc == DSM_OK && a.op != DSM_RDV_WELCOME)
        rc = DSM_EPROTO;
    if (rc != DSM_OK) {
        snprintf(err, err_len, "the rendezvous at %s refused rank %d of %d (see the log above)", cfg->coord,
                 cfg->rank, cfg->size);
        rdv_fini(b, 0);
        return rc == DSM_EPROTO ? DSM_EPROTO : DSM_EBOOTSTRAP;
    }
    b->job_id = a.job_id;
    return DSM_OK;
}
