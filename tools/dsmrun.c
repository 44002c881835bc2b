/* SPDX-License-Identifier: MIT */
/*
 * dsmrun - start N local processes of a libdsm job and serve their key-value rendezvous (DESIGN.md 4.5).
 *
 *   dsmrun [--tag-output] [--timeout S] -n N prog [args...]
 *   dsmrun --serve HOST:PORT -n N          (only the rendezvous, for ranks started by hand)
 *
 * Ranks get DSM_RANK, DSM_SIZE and DSM_COORD, and the job secret their connections authenticate with
 * (DESIGN.md 4.7): 32 random bytes in a sealed memfd they inherit, whose number is in DSM_SECRET_FD (never on a
 * command line, in the environment or in a file). They run with address randomization off (so code addresses agree
 * across nodes), each in its own process group so the whole group can be stopped. dsmrun forwards SIGINT,
 * SIGTERM, SIGHUP and SIGQUIT; when a rank fails it stops the others (SIGTERM, then SIGKILL after a grace
 * period) and exits with the status of the rank that failed first: its exit code, or 128 + its signal.
 * Ranks that fail only because another did (libdsm's fail-stop tells the rendezvous with ABORT) and ranks that
 * dsmrun itself stopped do not count as the first failure.
 * One poll loop serves everything: the listening socket, the ranks' connections, their output pipes
 * (--tag-output) and a self-pipe written by the signal handlers.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "dsm.h"
#include "libdsm/rdv_proto.h"

#define GRACE_MS 3000
#define SECONDARY_WAIT_MS 500
#define HELLO_TIMEOUT_MS 30000
#define SEND_WAIT_MS 5000
#define RDV_GONE_GRACE_MS 2000

struct client {
    int fd;
    int rank;      /* -1 until HELLO */
    uint8_t in[4 + DSM_RDV_MSG_MAX];
    size_t have;
    int fenced;
    int fin;
    int64_t since; /* connect time, for the HELLO deadline */
};

struct outbuf {
    int fd;        /* pipe from the rank, -1 once closed */
    int to;        /* our fd it is copied to */
    char line[4096];
    size_t len;
};

struct rank {
    pid_t pid;
    int running;
    int joined;     /* sent HELLO */
    int finished;   /* sent FIN */
    int secondary;  /* told us it fails because of another rank */
    int signalled;  /* dsmrun sent it a signal while it ran */
    int64_t rdv_gone; /* when its rendezvous connection closed without FIN, 0 if not */
    int status;     /* exit status as dsmrun reports it */
    struct outbuf out[2];
};

static struct {
    int n;
    int tag;
    int timeout_s;
    int join_timeout_s; /* --serve: every rank must have joined by then */
    int64_t join_by;
    const char *serve;
    int lfd;
    char coord[128];
    uint64_t job_id;
    dsm_rdv_store_t *store;
    struct client *cl;   /* up to 2n connections: ranks plus strangers being refused */
    int ncl;
    struct rank *rk;
    int nfenced;
    int failing;        /* we are stopping the job */
    int first_fail;     /* rank whose failure decides the exit status, -1 */
    int first_secondary; /* first rank that failed because it lost another, -1 */
    int stop_signal;    /* a signal we forwarded */
    int64_t term_at;    /* when to SIGTERM the survivors, 0 = not scheduled */
    int64_t kill_at;    /* when to SIGKILL the survivors, 0 = not scheduled */
    int absent_rank;    /* a rank that exited without joining, -1 */
    int exit_code;
    int secret_fd;      /* sealed memfd of the job secret the ranks inherit, -1 with --serve */
} run = {.secret_fd = -1, .join_timeout_s = 300, .first_fail = -1, .first_secondary = -1, .absent_rank = -1, .lfd = -1};

static int sigpipe_fd[2] = {-1, -1};

static void vsay(const char *fmt, va_list ap)
{
    fprintf(stderr, "dsmrun: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    exit(1);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_signal(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t w = write(sigpipe_fd[1], &b, 1);
    (void)w;
    errno = e;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsmrun [options] -n N program [args...]\n"
            "       dsmrun --serve HOST:PORT -n N\n"
            "Start N processes of a libdsm job on this host and serve their rendezvous.\n"
            "  -n, --np N          number of processes (ranks)\n"
            "      --tag-output    prefix every output line with [rank]\n"
            "      --timeout S     stop the job after S seconds (exit status 124)\n"
            "      --serve H:P     only serve the rendezvous at H:P (port 0: any) for N ranks started by hand\n"
            "                      with DSM_RANK, DSM_SIZE, the DSM_COORD it prints and DSM_SECRET_FILE (a file of\n"
            "                      mode 0600 holding the job secret, the same on every node)\n"
            "      --join-timeout S  with --serve: fail when not every rank joined within S seconds (300)\n"
            "  -h, --help          this text\n"
            "  -V, --version       libdsm version\n"
            "Exit status: 0 when every rank exits 0, else the first failing rank's status (128+signal if killed).\n");
}

/* ---- the rendezvous server ---- */

static void client_close(struct client *c);

/* Send a whole message; a client that takes no data for SEND_WAIT_MS is closed (its rank then fails). */
static void client_send(struct client *c, const dsm_rdv_msg_t *m)
{
    uint8_t out[4 + DSM_RDV_MSG_MAX];
    size_t n = dsm_rdv_msg_enc(out, m);
    for (size_t off = 0; n && off < n;) {
        ssize_t w = send(c->fd, out + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            if (poll(&p, 1, SEND_WAIT_MS) == 1)
                continue;
        }
        if (w <= 0) {
            client_close(c);
            return;
        }
        off += (size_t)w;
    }
}

static void client_error(struct client *c, const char *text)
{
    dsm_rdv_msg_t m = {.op = DSM_RDV_ERROR, .val = (const uint8_t *)text, .val_len = strlen(text)};
    client_send(c, &m);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->fenced) {
        c->fenced = 0;
        run.nfenced--;
    }
}

static void fail_job(int rank, const char *why);

/* Tell every connected rank the job is over; they exit through their bootstrap error path. */
static void broadcast_error(const char *text)
{
    for (int i = 0; i < run.ncl; i++)
        if (run.cl[i].fd >= 0 && run.cl[i].rank >= 0 && !run.cl[i].fin)
            client_error(&run.cl[i], text);
}

static void handle_msg(struct client *c, const dsm_rdv_msg_t *m)
{
    char text[DSM_RDV_TEXT_MAX + 64];
    if (c->rank < 0) {
        if (m->op != DSM_RDV_HELLO) {
            client_error(c, "first message must be HELLO");
            client_close(c);
            return;
        }
        const char *why = NULL;
        if (m->proto != DSM_RDV_PROTO)
            why = "rendezvous protocol version mismatch (dsmrun and libdsm differ)";
        else if ((int)m->size != run.n)
            why = "job size differs from dsmrun -n";
        else if (m->rank >= (uint32_t)run.n)
            why = "rank out of range";
        else if (run.rk[m->rank].joined)
            why = "rank already joined";
        else if (run.absent_rank >= 0)
            why = "another rank exited without calling dsm_init";
        if (why) {
            snprintf(text, sizeof text, "dsmrun refused rank %u of %u: %s", m->rank, m->size, why);
            say("%s", text);
            client_error(c, text);
            client_close(c);
            return;
        }
        c->rank = (int)m->rank;
        run.rk[c->rank].joined = 1;
        dsm_rdv_msg_t w = {.op = DSM_RDV_WELCOME, .job_id = run.job_id};
        client_send(c, &w);
        return;
    }
    switch (m->op) {
    case DSM_RDV_PUT:
        if (dsm_rdv_store_put(run.store, (uint32_t)c->rank, m->key, m->key_len, m->val, m->val_len) != DSM_OK)
            die("out of memory");
        return;
    case DSM_RDV_GET: {
        size_t n = 0;
        const void *v = m->rank < (uint32_t)run.n ? dsm_rdv_store_get(run.store, m->rank, m->key, m->key_len, &n)
                                                  : NULL;
        dsm_rdv_msg_t r = {.op = v ? DSM_RDV_VALUE : DSM_RDV_NOTFOUND, .val = v, .val_len = n};
        client_send(c, &r);
        return;
    }
    case DSM_RDV_FENCE:
        if (c->fenced) {
            fail_job(c->rank, "fenced twice");
            return;
        }
        c->fenced = 1;
        if (++run.nfenced == run.n) {
            dsm_rdv_msg_t d = {.op = DSM_RDV_FENCE_DONE};
            for (int i = 0; i < run.ncl; i++)
                if (run.cl[i].fd >= 0 && run.cl[i].fenced) {
                    run.cl[i].fenced = 0;
                    client_send(&run.cl[i], &d);
                }
            run.nfenced = 0;
        }
        return;
    case DSM_RDV_ABORT:
        run.rk[c->rank].secondary = 1;
        return;
    case DSM_RDV_FIN:
        c->fin = 1;
        run.rk[c->rank].finished = 1;
        return;
    default:
        snprintf(text, sizeof text, "unexpected rendezvous message %u", m->op);
        fail_job(c->rank, text);
    }
}

/* Read what a connection has; process complete messages. */
static void client_read(struct client *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, c->in + c->have, sizeof c->in - c->have, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r <= 0) {
            int rank = c->rank, fin = c->fin;
            client_close(c);
            if (rank >= 0 && !fin) {
                if (run.serve) {
                    char text[128];
                    snprintf(text, sizeof text, "rank %d left the rendezvous without dsm_finalize", rank);
                    fail_job(rank, text);
                } else if (!run.rk[rank].rdv_gone) {
                    /* Usually the process died and its exit status comes next; one that lives on without its
                     * rendezvous would leave the others waiting (the loop checks after a grace period). */
                    run.rk[rank].rdv_gone = now_ms();
                }
            }
            return;
        }
        c->have += (size_t)r;
        for (;;) {
            dsm_rdv_msg_t m;
            size_t used;
            const char *why = NULL;
            int rc = dsm_rdv_msg_dec(c->in, c->have, &m, &used, &why);
            if (rc == DSM_RDV_NEED_MORE)
                break;
            if (rc != DSM_OK) {
                say("malformed rendezvous message from %s%d: %s", c->rank >= 0 ? "rank " : "connection ",
                    c->rank >= 0 ? c->rank : c->fd, why);
                int rank = c->rank;
                client_close(c);
                if (rank >= 0)
                    fail_job(rank, "malformed rendezvous message");
                return;
            }
            handle_msg(c, &m);
            if (c->fd < 0)
                return;
            memmove(c->in, c->in + used, c->have - used);
            c->have -= used;
        }
    }
}

static void accept_clients(void)
{
    for (;;) {
        int fd = accept4(run.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int slot = -1, oldest = -1;
        for (int i = 0; i < run.ncl && slot < 0; i++) {
            if (run.cl[i].fd < 0)
                slot = i;
            else if (run.cl[i].rank < 0 && (oldest < 0 || run.cl[i].since < run.cl[oldest].since))
                oldest = i;
        }
        if (slot < 0 && oldest >= 0) {
            /* Strangers that never say HELLO must not crowd out the ranks. */
            client_close(&run.cl[oldest]);
            slot = oldest;
        }
        if (slot < 0) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        run.cl[slot] = (struct client){.fd = fd, .rank = -1, .since = now_ms()};
    }
}

static void listen_on(const char *hostport)
{
    char host[128];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        die("--serve '%s': expected HOST:PORT", hostport);
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int g = getaddrinfo(host, colon + 1, &hints, &res);
    if (g)
        die("cannot resolve '%s': %s", hostport, gai_strerror(g));
    run.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(run.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (run.lfd < 0 || bind(run.lfd, res->ai_addr, res->ai_addrlen) < 0 || listen(run.lfd, 1024) < 0)
        die("cannot listen on %s: %s", hostport, strerror(errno));
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(run.lfd, (struct sockaddr *)&sa, &sl);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(run.coord, sizeof run.coord, "%s:%u", ip, ntohs(sa.sin_port));
    freeaddrinfo(res);
}

/* ---- ranks ---- */

static void kill_group(int sig)
{
    for (int r = 0; r < run.n; r++)
        if (run.rk[r].running) {
            run.rk[r].signalled = 1;
            kill(-run.rk[r].pid, sig);
        }
}

/* Start stopping the job; rank is the cause or -1. A rank that failed only because another was lost is not
 * the cause: the one it lost has died already, so wait a moment for its exit status before stopping the rest,
 * or the cause would look like a rank dsmrun stopped. */
static void fail_job_after(int rank, const char *why, int delay_ms)
{
    if (why)
        say("%s", why);
    if (run.failing)
        return;
    run.failing = 1;
    if (run.serve) {
        broadcast_error(why ? why : "the job is being stopped");
        if (!run.exit_code)
            run.exit_code = 1;
        (void)rank;
        return;
    }
    run.term_at = now_ms() + delay_ms;
}

static void fail_job(int rank, const char *why)
{
    fail_job_after(rank, why, 0);
}

static void spawn(int r, char **argv)
{
    int pout[2] = {-1, -1}, perr[2] = {-1, -1};
    if (run.tag && (pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0))
        die("pipe: %s", strerror(errno));
    /* Signals stay blocked until the child has dropped dsmrun's handlers: a SIGTERM meant for the rank must not
     * run dsmrun's handler in the child and write into dsmrun's self-pipe. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        static const int sigs[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        close(sigpipe_fd[0]);
        close(sigpipe_fd[1]);
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        if (run.tag) {
            dup2(pout[1], STDOUT_FILENO);
            dup2(perr[1], STDERR_FILENO);
        }
        char v[32];
        snprintf(v, sizeof v, "%d", r);
        setenv("DSM_RANK", v, 1);
        snprintf(v, sizeof v, "%d", run.n);
        setenv("DSM_SIZE", v, 1);
        setenv("DSM_COORD", run.coord, 1);
        if (run.secret_fd >= 0) {
            /* Inherited across exec by this rank only; libdsm reads and closes it. */
            fcntl(run.secret_fd, F_SETFD, 0);
            snprintf(v, sizeof v, "%d", run.secret_fd);
            setenv("DSM_SECRET_FD", v, 1);
        }
        /* Same code and data addresses on every node: migration and remote spawn rely on it (DESIGN.md 4.6). */
        int pers = personality(0xffffffff);
        if (pers != -1 && !(pers & ADDR_NO_RANDOMIZE))
            personality((unsigned long)pers | ADDR_NO_RANDOMIZE);
        execvp(argv[0], argv);
        fprintf(stderr, "dsmrun: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    setpgid(pid, pid);
    run.rk[r].pid = pid;
    run.rk[r].running = 1;
    run.rk[r].out[0] = (struct outbuf){.fd = -1, .to = STDOUT_FILENO};
    run.rk[r].out[1] = (struct outbuf){.fd = -1, .to = STDERR_FILENO};
    if (run.tag) {
        close(pout[1]);
        close(perr[1]);
        run.rk[r].out[0].fd = pout[0];
        run.rk[r].out[1].fd = perr[0];
    }
}

/* The job secret: a memfd no other process can open by name, sealed so a rank cannot change it for the others. */
static void make_secret(void)
{
    uint8_t key[32];
    if (sodium_init() < 0)
        die("libsodium cannot start (no entropy source?)");
    randombytes_buf(key, sizeof key);
    int fd = memfd_create("dsm-secret", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || write(fd, key, sizeof key) != (ssize_t)sizeof key ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
        die("cannot make the job secret: %s", strerror(errno));
    sodium_memzero(key, sizeof key);
    run.secret_fd = fd;
}

static void emit(int to, int r, const char *s, size_t n)
{
    char pre[32];
    int pl = snprintf(pre, sizeof pre, "[%d] ", r);
    struct iovec iov[3] = {{pre, (size_t)pl}, {(void *)s, n}, {"\n", 1}};
    ssize_t w = writev(to, iov, 3);
    (void)w;
}

/* Copy a rank's output, one prefixed line at a time. */
static void out_read(int r, struct outbuf *o)
{
    char buf[4096];
    ssize_t n = read(o->fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        if (o->len)
            emit(o->to, r, o->line, o->len);
        o->len = 0;
        close(o->fd);
        o->fd = -1;
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n' || o->len == sizeof o->line) {
            emit(o->to, r, o->line, o->len);
            o->len = 0;
            if (buf[i] == '\n')
                continue;
        }
        o->line[o->len++] = buf[i];
    }
}

static struct client *rank_client(int r)
{
    for (int i = 0; i < run.ncl; i++)
        if (run.cl[i].fd >= 0 && run.cl[i].rank == r)
            return &run.cl[i];
    return NULL;
}

static void reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        int r = -1;
        for (int i = 0; i < run.n; i++)
            if (run.rk[i].pid == pid && run.rk[i].running)
                r = i;
        if (r < 0)
            continue;
        struct rank *k = &run.rk[r];
        k->running = 0;
        /* Read what the rank told the rendezvous before it died (its ABORT note, its FIN). */
        struct client *c = rank_client(r);
        if (c)
            client_read(c);
        k->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        int killed_by_us = k->signalled && WIFSIGNALED(st);
        if (k->status == 0 && k->joined && !k->finished) {
            say("rank %d exited without calling dsm_finalize", r);
            k->status = 1;
        }
        if (k->status == 0 && !k->joined) {
            /* A rank that never joined while others did leaves them waiting in the rendezvous. */
            run.absent_rank = r;
            for (int i = 0; i < run.n; i++)
                if (run.rk[i].joined && !run.rk[i].finished) {
                    char text[128];
                    snprintf(text, sizeof text, "rank %d exited without calling dsm_init while others wait", r);
                    say("%s", text);
                    broadcast_error(text);
                    k->status = 1;
                    break;
                }
        }
        if (k->status != 0) {
            if (!killed_by_us && !k->secondary && run.first_fail < 0)
                run.first_fail = r;
            if (!killed_by_us && k->secondary && run.first_secondary < 0)
                run.first_secondary = r;
            if (killed_by_us)
                ;
            else if (WIFSIGNALED(st))
                say("rank %d (pid %d) killed by signal %d (%s)", r, (int)pid, WTERMSIG(st), strsignal(WTERMSIG(st)));
            else
                say("rank %d (pid %d) exited with status %d%s", r, (int)pid, k->status,
                    k->secondary ? " after losing another node" : "");
            if (!run.failing) {
                say("stopping the job");
                fail_job_after(r, NULL, k->secondary ? SECONDARY_WAIT_MS : 0);
            }
        }
    }
}

static int any_running(void)
{
    for (int r = 0; r < run.n; r++)
        if (run.rk[r].running)
            return 1;
    return 0;
}

static int any_output_open(void)
{
    for (int r = 0; r < run.n; r++)
        if (run.rk[r].out[0].fd >= 0 || run.rk[r].out[1].fd >= 0)
            return 1;
    return 0;
}

static int serve_done(void)
{
    for (int r = 0; r < run.n; r++)
        if (!run.rk[r].finished)
            return 0;
    return 1;
}

static void handle_signal_byte(unsigned char sig)
{
    if (sig == SIGCHLD) {
        reap();
        return;
    }
    if (run.stop_signal) {
        /* A second interrupt: no more grace. */
        kill_group(SIGKILL);
        return;
    }
    run.stop_signal = sig;
    say("got signal %d (%s); forwarding it to the ranks", sig, strsignal(sig));
    if (run.serve) {
        broadcast_error("dsmrun was interrupted");
        run.exit_code = 128 + sig;
        run.failing = 1;
        return;
    }
    run.failing = 1;
    kill_group(sig);
    run.kill_at = now_ms() + GRACE_MS;
    if (run.first_fail < 0)
        run.exit_code = 128 + sig;
}

static void loop(void)
{
    struct pollfd *p = calloc((size_t)(2 + run.ncl + 2 * run.n), sizeof *p);
    int64_t t_end = run.timeout_s ? now_ms() + (int64_t)run.timeout_s * 1000 : 0;
    int64_t drain_until = 0;
    for (;;) {
        if (run.serve ? (serve_done() || run.failing) : !any_running()) {
            if (run.serve || !any_output_open())
                break;
            /* Grandchildren may hold the pipes; do not wait for them forever. */
            if (!drain_until)
                drain_until = now_ms() + 1000;
            else if (now_ms() > drain_until)
                break;
        }
        int np = 0;
        p[np++] = (struct pollfd){.fd = sigpipe_fd[0], .events = POLLIN};
        p[np++] = (struct pollfd){.fd = run.lfd, .events = POLLIN};
        int cl0 = np;
        for (int i = 0; i < run.ncl; i++)
            p[np++] = (struct pollfd){.fd = run.cl[i].fd, .events = POLLIN};
        int out0 = np;
        for (int r = 0; r < run.n; r++)
            for (int j = 0; j < 2; j++)
                p[np++] = (struct pollfd){.fd = run.rk[r].out[j].fd, .events = POLLIN};
        int wait = run.term_at ? 20 : 200;
        int n = poll(p, (nfds_t)np, wait);
        if (n < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        if (n > 0) {
            if (p[0].revents & POLLIN) {
                unsigned char b[64];
                ssize_t k = read(sigpipe_fd[0], b, sizeof b);
                for (ssize_t i = 0; i < k; i++)
                    handle_signal_byte(b[i]);
            }
            if (p[1].revents & POLLIN)
                accept_clients();
            for (int i = 0; i < run.ncl; i++)
                if (run.cl[i].fd >= 0 && p[cl0 + i].fd == run.cl[i].fd && (p[cl0 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                    client_read(&run.cl[i]);
            for (int r = 0; r < run.n; r++)
                for (int j = 0; j < 2; j++)
                    if (run.rk[r].out[j].fd >= 0 && (p[out0 + 2 * r + j].revents & (POLLIN | POLLHUP | POLLERR)))
                        out_read(r, &run.rk[r].out[j]);
        }
        int64_t now = now_ms();
        for (int r = 0; r < run.n && !run.serve; r++)
            if (run.rk[r].rdv_gone && run.rk[r].running && now - run.rk[r].rdv_gone > RDV_GONE_GRACE_MS &&
                !run.failing) {
                char why[160];
                snprintf(why, sizeof why, "rank %d closed the rendezvous without dsm_finalize and still runs; "
                         "stopping the job", r);
                if (run.first_fail < 0)
                    run.first_fail = r;
                run.rk[r].status = 1;
                fail_job(r, why);
            }
        if (run.serve && !run.failing && run.join_by && now > run.join_by) {
            int joined = 0;
            for (int r = 0; r < run.n; r++)
                joined += run.rk[r].joined;
            if (joined < run.n) {
                char why[160];
                snprintf(why, sizeof why, "only %d of %d ranks joined within --join-timeout %d s", joined, run.n,
                         run.join_timeout_s);
                fail_job(-1, why);
            }
            run.join_by = 0;
        }
        /* Connections that never say HELLO are strangers. */
        for (int i = 0; i < run.ncl; i++)
            if (run.cl[i].fd >= 0 && run.cl[i].rank < 0 && now - run.cl[i].since > HELLO_TIMEOUT_MS)
                client_close(&run.cl[i]);
        if (run.term_at && now >= run.term_at) {
            kill_group(SIGTERM);
            run.term_at = 0;
            run.kill_at = now + GRACE_MS;
        }
        if (run.kill_at && now >= run.kill_at) {
            kill_group(SIGKILL);
            run.kill_at = 0;
        }
        if (t_end && now >= t_end && !run.failing) {
            say("the job ran longer than --timeout %d s; stopping it", run.timeout_s);
            run.exit_code = 124;
            fail_job(-1, NULL);
            if (run.serve)
                break;
        }
    }
    free(p);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"np", required_argument, NULL, 'n'},      {"tag-output", no_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'}, {"serve", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},          {"version", no_argument, NULL, 'V'},
        {"join-timeout", required_argument, NULL, 'J'},
        {NULL, 0, NULL, 0}};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "+n:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            run.n = (int)strtol(optarg, &end, 10);
            if (*end || run.n < 1 || run.n > 65536)
                die("-n '%s': expected a number of processes from 1 to 65536", optarg);
            break;
        case 't': run.tag = 1; break;
        case 'T':
            run.timeout_s = (int)strtol(optarg, &end, 10);
            if (*end || run.timeout_s < 1)
                die("--timeout '%s': expected a positive number of seconds", optarg);
            break;
        case 's': run.serve = optarg; break;
        case 'J':
            run.join_timeout_s = (int)strtol(optarg, &end, 10);
            if (*end || run.join_timeout_s < 1)
                die("--join-timeout '%s': expected a positive number of seconds", optarg);
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("dsmrun (libdsm) %s\n", PACKAGE_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (run.n < 1) {
        usage(stderr);
        die("missing -n N");
    }
    if (!run.serve && optind >= argc) {
        usage(stderr);
        die("missing the program to run");
    }
    if (run.serve && optind < argc)
        die("--serve runs no program; start the ranks by hand with the DSM_COORD it prints");

    if (pipe2(sigpipe_fd, O_CLOEXEC | O_NONBLOCK) < 0)
        die("pipe: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (getrandom(&run.job_id, sizeof run.job_id, 0) != sizeof run.job_id)
        die("getrandom: %s", strerror(errno));
    if (!run.serve)
        make_secret();
    run.store = dsm_rdv_store_create();
    run.ncl = 2 * run.n + 8;
    run.cl = calloc((size_t)run.ncl, sizeof *run.cl);
    run.rk = calloc((size_t)run.n, sizeof *run.rk);
    if (!run.store || !run.cl || !run.rk)
        die("out of memory");
    for (int i = 0; i < run.ncl; i++)
        run.cl[i].fd = -1;
    for (int r = 0; r < run.n; r++)
        run.rk[r].out[0].fd = run.rk[r].out[1].fd = -1;

    listen_on(run.serve ? run.serve : "127.0.0.1:0");
    if (run.serve) {
        printf("DSM_COORD=%s\n", run.coord);
        fflush(stdout);
        run.join_by = now_ms() + (int64_t)run.join_timeout_s * 1000;
        for (int r = 0; r < run.n; r++)
            run.rk[r].status = 0;
    } else {
        for (int r = 0; r < run.n; r++)
            spawn(r, argv + optind);
    }
    loop();

    int code = run.exit_code;
    if (!run.serve) {
        /* The cause; else the signal dsmrun was stopped with; else a rank that saw the cause; only then one
         * that dsmrun stopped. */
        if (run.first_fail >= 0)
            code = run.rk[run.first_fail].status;
        else if (run.stop_signal)
            code = 128 + run.stop_signal;
        else if (run.first_secondary >= 0)
            code = run.rk[run.first_secondary].status;
        else if (!code)
            for (int r = 0; r < run.n && !code; r++)
                code = run.rk[r].status;
        if (run.exit_code == 124)
            code = 124;
    }
    dsm_rdv_store_destroy(run.store);
    return code;
}
