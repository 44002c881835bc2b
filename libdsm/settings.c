/* SPDX-License-Identifier: MIT */
/*
 * settings.c - the table of DSM_* settings and their parser (settings.h). Every error names the variable, the
 * bad value and what would be valid. No setting is silently ignored or clamped.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/settings.h"

#define DEF_TRANSPORT "shm,rdma,tcp"
#define DEF_BASE 0x200000000000ull
#define DEF_HEAP (64ull << 30)
/* x86-64 user space ends at 2^47; the kernel refuses mappings below mmap_min_addr (64 KiB by default). */
#define USER_TOP (1ull << 47)
#define USER_BOTTOM (1ull << 16)

const struct dsm_setting dsm_settings[] = {
    {"DSM_TRANSPORT", DEF_TRANSPORT,
     "ordered list of transports; each peer is reached by the first one both ends can use (shm, rdma, tcp)"},
    {"DSM_TCP_IFACE", NULL,
     "network interface whose IPv4 address the tcp transport advertises (default: first up non-loopback one, else lo)"},
    {"DSM_RDMA_DEVICE", NULL,
     "RDMA device the rdma transport uses, e.g. rxe0 (default: the one nearest this process's CPUs per hwloc)"},
    {"DSM_RDMA_PORT", NULL, "port of the RDMA device (default: its first active port with a RoCE/IPv4 address)"},
    {"DSM_PROGRESS_CPU", NULL,
     "CPU list the progress thread is bound to, e.g. 3 or 2-3 (default: the CPUs nearest the RDMA device, if known)"},
    {"DSM_MODULE_PATH", NULL,
     "directory the rdma module dsm_tp_rdma.so is loaded from (default: the package library directory)"},
    {"DSM_LOG_LEVEL", "warn", "log verbosity: error, warn, info, debug, trace"},
    {"DSM_STATS", "0", "1: print per-node counters (messages, faults, pages, invalidations) and the most moved pages at dsm_finalize; 2: also the time of each phase of a read miss"},
    {"DSM_WAIT", "adaptive",
     "how a thread waits for a reply: spin, block, adaptive (spin briefly, then sleep); block when this host runs more ranks than it has cores"},
    {"DSM_TIMEOUT", "30", "seconds without progress before a peer or the rendezvous is declared lost (missing heartbeats: times the ranks per core of an oversubscribed host)"},
    {"DSM_BASE", "0x200000000000", "address of the shared range, identical on every node (sanitizers need their own)"},
    {"DSM_HEAP_SIZE", "64G", "size of the reserved shared range (address space, not memory); suffixes K, M, G, T"},
    {"DSM_RANK", NULL, "bootstrap by hand: this process's rank (set by dsmrun)"},
    {"DSM_SIZE", NULL, "bootstrap by hand: number of processes (set by dsmrun)"},
    {"DSM_COORD", NULL, "bootstrap by hand: host:port of the rendezvous served by dsmrun (set by dsmrun)"},
    {"DSM_AUTH", "on",
     "on: every connection proves knowledge of the job secret (HMAC challenge-response); off: no secret (trusted networks only)"},
    {"DSM_SECRET_FILE", NULL,
     "file whose contents are the job secret, mode 0600 or 0400 (mpirun, srun, ranks started by hand; dsmrun passes its own)"},
    {"DSM_SECRET_FD", NULL, "descriptor of the job secret inherited from dsmrun (set by dsmrun)"},
};
const size_t dsm_nsettings = sizeof dsm_settings / sizeof dsm_settings[0];

static int fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return DSM_EINVAL;
}

int dsm_parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-' || *s == '+')
        return DSM_EINVAL;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 0);
    if (errno || *end)
        return DSM_EINVAL;
    *v = x;
    return DSM_OK;
}

int dsm_parse_size(const char *s, uint64_t *v)
{
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-' || *s == '+')
        return DSM_EINVAL;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s)
        return DSM_EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    default: return DSM_EINVAL;
    }
    if (*end && end[1])
        return DSM_EINVAL;
    if (shift && x > (~0ull >> shift))
        return DSM_EINVAL;
    *v = x << shift;
    return DSM_OK;
}

int dsm_parse_cpulist(const char *s, uint8_t *set, size_t nbits)
{
    if (!s || !*s)
        return DSM_EINVAL;
    if (set)
        memset(set, 0, (nbits + 7) / 8);
    const char *p = s;
    for (;;) {
        char *end;
        if (!isdigit((unsigned char)*p))
            return DSM_EINVAL;
        unsigned long a = strtoul(p, &end, 10), b = a;
        p = end;
        if (*p == '-') {
            p++;
            if (!isdigit((unsigned char)*p))
                return DSM_EINVAL;
            b = strtoul(p, &end, 10);
            p = end;
        }
        if (b < a || b >= 65536)
            return DSM_EINVAL;
        for (unsigned long c = a; set && c <= b && c < nbits; c++)
            set[c / 8] |= (uint8_t)(1u << (c % 8));
        if (*p == '\0')
            return DSM_OK;
        if (*p != ',')
            return DSM_EINVAL;
        p++;
    }
}

static int parse_transport(dsm_config_t *cfg, const char *val, char *err, size_t len)
{
    cfg->tp_explicit = val != NULL;
    if (!val)
        val = DEF_TRANSPORT;
    if (strlen(val) >= sizeof cfg->tp_list)
        return fail(err, len, "DSM_TRANSPORT='%s' is too long (valid: a comma-separated list of shm, rdma, tcp)", val);
    strcpy(cfg->tp_list, val);
    cfg->ntp = 0;
    const char *p = val;
    while (1) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        int found = -1;
        for (int i = 0; dsm_tp_known_names[i]; i++)
            if (strlen(dsm_tp_known_names[i]) == n && strncmp(p, dsm_tp_known_names[i], n) == 0)
                found = i;
        if (found < 0)
            return fail(err, len, "DSM_TRANSPORT='%s': unknown transport '%.*s' (valid: shm, rdma, tcp)", val,
                        (int)n, p);
        for (int i = 0; i < cfg->ntp; i++)
            if (cfg->tp[i] == dsm_tp_known_names[found])
                return fail(err, len, "DSM_TRANSPORT='%s': '%s' is listed twice", val, dsm_tp_known_names[found]);
        cfg->tp[cfg->ntp++] = dsm_tp_known_names[found];
        if (!comma)
            break;
        p = comma + 1;
    }
    return DSM_OK;
}

static int parse_int_range(const char *name, const char *val, long lo, long hi, int *out, char *err, size_t len)
{
    uint64_t v;
    if (dsm_parse_u64(val, &v) != DSM_OK || v < (uint64_t)lo || v > (uint64_t)hi)
        return fail(err, len, "%s='%s' is not valid (valid: an integer from %ld to %ld)", name, val, lo, hi);
    *out = (int)v;
    return DSM_OK;
}

int dsm_config_parse(dsm_config_t *cfg, dsm_getenv_fn_t get, char *err, size_t len)
{
    const char *v;
    int rc;
    memset(cfg, 0, sizeof *cfg);

    cfg->log_level = DSM_LOG_WARN;
    if ((v = get("DSM_LOG_LEVEL"))) {
        static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
        int found = -1;
        for (int i = 0; i < 5; i++)
            if (strcmp(v, names[i]) == 0)
                found = i;
        if (found < 0)
            return fail(err, len, "DSM_LOG_LEVEL='%s' is not valid (valid: error, warn, info, debug, trace)", v);
        cfg->log_level = found;
    }

    if ((rc = parse_transport(cfg, get("DSM_TRANSPORT"), err, len)))
        return rc;

    if ((v = get("DSM_TCP_IFACE"))) {
        if (!*v || strlen(v) >= 16 || strchr(v, '/') || strchr(v, ' '))
            return fail(err, len, "DSM_TCP_IFACE='%s' is not a valid interface name", v);
        strcpy(cfg->tcp_iface, v);
    }

    if ((v = get("DSM_RDMA_DEVICE"))) {
        if (!*v || strlen(v) >= sizeof cfg->rdma_device || strchr(v, '/') || strchr(v, ' '))
            return fail(err, len, "DSM_RDMA_DEVICE='%s' is not a valid device name (e.g. rxe0, mlx5_0)", v);
        strcpy(cfg->rdma_device, v);
    }
    if ((v = get("DSM_RDMA_PORT")) && (rc = parse_int_range("DSM_RDMA_PORT", v, 1, 255, &cfg->rdma_port, err, len)))
        return rc;
    if ((v = get("DSM_PROGRESS_CPU"))) {
        if (dsm_parse_cpulist(v, NULL, 0) != DSM_OK || strlen(v) >= sizeof cfg->progress_cpu)
            return fail(err, len, "DSM_PROGRESS_CPU='%s' is not valid (valid: a CPU list such as 3, 2-3 or 0,4-5)", v);
        strcpy(cfg->progress_cpu, v);
    }
    if ((v = get("DSM_MODULE_PATH")) && (!*v || strlen(v) >= 400))
        return fail(err, len, "DSM_MODULE_PATH='%s' is not valid (valid: a directory holding dsm_tp_rdma.so)", v);

    cfg->wait_mode = -1;
    if ((v = get("DSM_WAIT"))) {
        static const char *const modes[] = {"spin", "block", "adaptive"};
        for (int i = 0; i < 3; i++)
            if (strcmp(v, modes[i]) == 0)
                cfg->wait_mode = i;
        if (cfg->wait_mode < 0)
            return fail(err, len, "DSM_WAIT='%s' is not valid (valid: spin, block, adaptive)", v);
    }

    cfg->timeout_s = 30;
    if ((v = get("DSM_TIMEOUT")) && (rc = parse_int_range("DSM_TIMEOUT", v, 1, 86400, &cfg->timeout_s, err, len)))
        return rc;

    if ((v = get("DSM_STATS")) && (rc = parse_int_range("DSM_STATS", v, 0, 2, &cfg->stats, err, len)))
        return rc;

    cfg->base = DEF_BASE;
    if ((v = get("DSM_BASE"))) {
        if (dsm_parse_u64(v, &cfg->base) != DSM_OK || cfg->base % 4096)
            return fail(err, len, "DSM_BASE='%s' is not valid (valid: a page-aligned address such as 0x200000000000)", v);
    }
    cfg->heap_size = DEF_HEAP;
    if ((v = get("DSM_HEAP_SIZE"))) {
        if (dsm_parse_size(v, &cfg->heap_size) != DSM_OK || cfg->heap_size == 0 || cfg->heap_size % 4096)
            return fail(err, len, "DSM_HEAP_SIZE='%s' is not valid (valid: a non-zero multiple of 4K, e.g. 64G)", v);
    }
    if (cfg->base < USER_BOTTOM || cfg->base >= USER_TOP || cfg->heap_size > USER_TOP - cfg->base)
        return fail(err, len,
                    "DSM_BASE=0x%llx with DSM_HEAP_SIZE=%llu does not fit in user address space [0x%llx, 0x%llx)",
                    (unsigned long long)cfg->base, (unsigned long long)cfg->heap_size,
                    (unsigned long long)USER_BOTTOM, (unsigned long long)USER_TOP);

    cfg->auth = 1;
    if ((v = get("DSM_AUTH"))) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
            return fail(err, len, "DSM_AUTH='%s' is not valid (valid: on, off)", v);
        cfg->auth = strcmp(v, "on") == 0;
    }
    if ((v = get("DSM_SECRET_FILE"))) {
        if (!*v || strlen(v) >= sizeof cfg->secret_file)
            return fail(err, len, "DSM_SECRET_FILE='%s' is not valid (valid: the path of a file of mode 0600)", v);
        strcpy(cfg->secret_file, v);
    }
    cfg->secret_fd = -1;
    if ((v = get("DSM_SECRET_FD")) && (rc = parse_int_range("DSM_SECRET_FD", v, 3, 1 << 20, &cfg->secret_fd, err, len)))
        return rc;

    cfg->rank = cfg->size = -1;
    const char *r = get("DSM_RANK"), *s = get("DSM_SIZE"), *c = get("DSM_COORD");
    if (r || s || c) {
        if (!r || !s || !c)
            return fail(err, len, "DSM_RANK, DSM_SIZE and DSM_COORD must be set together (set: %s%s%s)",
                        r ? "DSM_RANK " : "", s ? "DSM_SIZE " : "", c ? "DSM_COORD" : "");
        if ((rc = parse_int_range("DSM_SIZE", s, 1, 1 << 20, &cfg->size, err, len)))
            return rc;
        if ((rc = parse_int_range("DSM_RANK", r, 0, cfg->size - 1, &cfg->rank, err, len)))
            return rc;
        const char *colon = strrchr(c, ':');
        uint64_t port;
        if (!colon || colon == c || strlen(c) >= sizeof cfg->coord || dsm_parse_u64(colon + 1, &port) != DSM_OK ||
            port == 0 || port > 65535)
            return fail(err, len, "DSM_COORD='%s' is not valid (valid: host:port, e.g. 127.0.0.1:4000)", c);
        strcpy(cfg->coord, c);
    }
    return DSM_OK;
}
