/* SPDX-License-Identifier: MIT */
/*
 * settings.h - the DSM_* environment settings (DESIGN.md 3): one table (name, default, description) that
 * dsm_info prints, and a parser that turns the environment into a dsm_config_t or a message naming the bad
 * value and the valid ones. The parser takes a lookup function so unit tests need no real environment.
 */
#ifndef DSM_SETTINGS_H
#define DSM_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

struct dsm_setting {
    const char *name;
    const char *def;   /* shown by dsm_info; NULL when unset means "not set" */
    const char *doc;
};
extern const struct dsm_setting dsm_settings[];
extern const size_t dsm_nsettings;

typedef struct dsm_config {
    int log_level;
    /* DSM_TRANSPORT: names in preference order; explicit = set by the user (an unbuilt name is then an error). */
    int ntp;
    const char *tp[DSM_TP_MAX];
    int tp_explicit;
    char tp_list[64];        /* the list as given, for messages and the cross-node check */
    char tcp_iface[32];
    char rdma_device[64];    /* DSM_RDMA_DEVICE, empty when unset */
    int rdma_port;           /* DSM_RDMA_PORT, 0 when unset */
    char progress_cpu[128];  /* DSM_PROGRESS_CPU, empty when unset */
    int timeout_s;
    int stats;
    int wait_mode;           /* DSM_WAIT_*, or -1 when unset (chosen at init from the ranks per host) */
    uint64_t base;
    uint64_t heap_size;
    int auth;                /* DSM_AUTH: 1 on (default), 0 off */
    char secret_file[256];   /* DSM_SECRET_FILE, empty when unset */
    int secret_fd;           /* DSM_SECRET_FD (from dsmrun), -1 when unset */
    /* Bootstrap by hand: rank/size are -1 and coord empty when unset. */
    int rank;
    int size;
    char coord[256];
} dsm_config_t;

enum { DSM_WAIT_SPIN = 0, DSM_WAIT_BLOCK = 1, DSM_WAIT_ADAPTIVE = 2 };

typedef const char *(*dsm_getenv_fn_t)(const char *name);

/* Parse every setting. Returns DSM_OK, or DSM_EINVAL with a one-line message in err. */
int dsm_config_parse(dsm_config_t *cfg, dsm_getenv_fn_t get, char *err, size_t err_len);

/* Parse helpers, exposed for unit tests and tools. */
int dsm_parse_u64(const char *s, uint64_t *v);
int dsm_parse_size(const char *s, uint64_t *v);  /* accepts K, M, G, T suffixes (powers of 1024) */
/* A Linux CPU list ("3", "2-3", "0,4-5"); sets bit c of set (nbits long) for each CPU c when set is not NULL. */
int dsm_parse_cpulist(const char *s, uint8_t *set, size_t nbits);

#endif /* DSM_SETTINGS_H */
