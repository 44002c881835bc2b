/* SPDX-License-Identifier: MIT */
/*
 * boot.h - how a node finds its rank, the job size and its peers' addresses (DESIGN.md 4.5): a key-value
 * rendezvous with put, get and fence. Three backends: dsmrun's server (DSM_RANK/DSM_SIZE/DSM_COORD, also set
 * by hand), PMIx (mpirun, srun --mpi=pmix), and a single-node run with an in-process store.
 * Values put before a fence are visible to every node's get after it.
 */
#ifndef DSM_BOOT_H
#define DSM_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "libdsm/settings.h"

typedef struct dsm_boot dsm_boot_t;

struct dsm_boot {
    const char *name;  /* "dsmrun", "pmix", "single" */
    int rank;
    int size;
    uint64_t job_id;
    int (*put)(dsm_boot_t *b, const char *key, const void *val, size_t len);
    /* *len: buffer size in, value size out. DSM_EINVAL when absent or larger than the buffer. */
    int (*get)(dsm_boot_t *b, int rank, const char *key, void *val, size_t *len);
    int (*fence)(dsm_boot_t *b);
    /* Tell the launcher that this node fails because of another's failure. Async-signal-safe. */
    void (*note_abort)(dsm_boot_t *b, const char *text);
    /* clean: the node finalized (its departure is expected). */
    void (*fini)(dsm_boot_t *b, int clean);
    void *priv;
};

/* Pick and start the backend the environment asks for. On error, err says why. */
int dsm_boot_open(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len);

int dsm_boot_open_rdv(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len);
int dsm_boot_open_pmix(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len);
int dsm_boot_open_single(dsm_boot_t *b, char *err, size_t err_len);

/* Put a value, fence, and get every node's value of the same key into vals[rank] (each buffer max bytes,
 * lens[rank] set). */
int dsm_boot_allgather(dsm_boot_t *b, const char *key, const void *val, size_t len, void **vals, size_t *lens,
                       size_t max);

#endif /* DSM_BOOT_H */
