/* SPDX-License-Identifier: MIT */
/*
 * boot.c - choosing the bootstrap backend, the single-node backend, and allgather over any backend (boot.h).
 * A launcher the build cannot serve (PMIx variables without PMIx support) is an error, never a silent
 * single-node run: that would change results.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/boot.h"
#include "libdsm/rdv_proto.h"

int dsm_boot_open(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len)
{
    memset(b, 0, sizeof *b);
    if (cfg->coord[0])
        return dsm_boot_open_rdv(cfg, b, err, err_len);
    if (getenv("PMIX_RANK") && getenv("PMIX_NAMESPACE"))
        return dsm_boot_open_pmix(cfg, b, err, err_len);
    return dsm_boot_open_single(b, err, err_len);
}

#ifndef DSM_HAVE_PMIX
int dsm_boot_open_pmix(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len)
{
    (void)cfg;
    (void)b;
    snprintf(err, err_len,
             "started by a PMIx launcher (PMIX_RANK is set) but this libdsm was built without PMIx; "
             "rebuild with libpmix-dev installed, or use dsmrun");
    return DSM_ENOSYS;
}
#endif

/* Single node: the store lives in this process. */
static int single_put(dsm_boot_t *b, const char *key, const void *val, size_t len)
{
    return dsm_rdv_store_put(b->priv, 0, key, strlen(key), val, len);
}

static int single_get(dsm_boot_t *b, int rank, const char *key, void *val, size_t *len)
{
    size_t n;
    const void *v = rank == 0 ? dsm_rdv_store_get(b->priv, 0, key, strlen(key), &n) : NULL;
    if (!v || n > *len)
        return DSM_EINVAL;
    memcpy(val, v, n);
    *len = n;
    return DSM_OK;
}

static int single_fence(dsm_boot_t *b)
{
    (void)b;
    return DSM_OK;
}

static void single_note_abort(dsm_boot_t *b, const char *text)
{
    (void)b;
    (void)text;
}

static void single_fini(dsm_boot_t *b, int clean)
{
    (void)clean;
    dsm_rdv_store_destroy(b->priv);
    b->priv = NULL;
}

int dsm_boot_open_single(dsm_boot_t *b, char *err, size_t err_len)
{
    b->priv = dsm_rdv_store_create();
    if (!b->priv) {
        snprintf(err, err_len, "out of memory");
        return DSM_ENOMEM;
    }
    b->name = "single";
    b->rank = 0;
    b->size = 1;
    /* Only this process uses the id; make it differ between runs anyway. */
    b->job_id = (uint64_t)getpid();
    b->put = single_put;
    b->get = single_get;
    b->fence = single_fence;
    b->note_abort = single_note_abort;
    b->fini = single_fini;
    return DSM_OK;
}

int dsm_boot_allgather(dsm_boot_t *b, const char *key, const void *val, size_t len, void **vals, size_t *lens,
                       size_t max)
{
    int rc = b->put(b, key, val, len);
    if (rc == DSM_OK)
        rc = b->fence(b);
    for (int r = 0; rc == DSM_OK && r < b->size; r++) {
        lens[r] = max;
        rc = b->get(b, r, key, vals[r], &lens[r]);
    }
    return rc;
}
