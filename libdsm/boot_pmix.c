/* SPDX-License-Identifier: MIT */
/*
 * boot_pmix.c - the PMIx backend of boot.h, for Open MPI's mpirun and Slurm's srun --mpi=pmix: rank from
 * PMIx_Init, size from PMIX_JOB_SIZE on the wildcard rank, put/commit/fence(collect)/get for the exchange.
 * PMIx_Init is reference-counted, so it coexists with an MPI_Init made before dsm_init.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pmix.h>

#include "dsm.h"
#include "libdsm/boot.h"
#include "libdsm/log.h"

struct pmix_boot {
    pmix_proc_t me;
};

static int pmix_put(dsm_boot_t *b, const char *key, const void *val, size_t len)
{
    (void)b;
    pmix_value_t v;
    memset(&v, 0, sizeof v);
    v.type = PMIX_BYTE_OBJECT;
    v.data.bo.bytes = (char *)val;
    v.data.bo.size = len;
    pmix_status_t st = PMIx_Put(PMIX_GLOBAL, key, &v);
    if (st != PMIX_SUCCESS) {
        dsm_err("PMIx_Put(%s) failed: %s", key, PMIx_Error_string(st));
        return DSM_EBOOTSTRAP;
    }
    return DSM_OK;
}

static int pmix_get(dsm_boot_t *b, int rank, const char *key, void *val, size_t *len)
{
    struct pmix_boot *p = b->priv;
    pmix_proc_t proc;
    PMIX_PROC_CONSTRUCT(&proc);
    memcpy(proc.nspace, p->me.nspace, sizeof proc.nspace);
    proc.rank = (pmix_rank_t)rank;
    pmix_value_t *v = NULL;
    pmix_status_t st = PMIx_Get(&proc, key, NULL, 0, &v);
    if (st != PMIX_SUCCESS || !v) {
        dsm_debug("PMIx_Get(rank %d, %s): %s", rank, key, PMIx_Error_string(st));
        return DSM_EINVAL;
    }
    int rc = DSM_OK;
    if (v->type != PMIX_BYTE_OBJECT || v->data.bo.size > *len) {
        dsm_err("PMIx_Get(rank %d, %s): unexpected value type or size", rank, key);
        rc = DSM_EPROTO;
    } else {
        memcpy(val, v->data.bo.bytes, v->data.bo.size);
        *len = v->data.bo.size;
    }
    PMIX_VALUE_RELEASE(v);
    return rc;
}

static int pmix_fence(dsm_boot_t *b)
{
    (void)b;
    pmix_status_t st = PMIx_Commit();
    if (st != PMIX_SUCCESS) {
        dsm_err("PMIx_Commit failed: %s", PMIx_Error_string(st));
        return DSM_EBOOTSTRAP;
    }
    pmix_info_t info;
    bool collect = true;
    PMIX_INFO_CONSTRUCT(&info);
    PMIX_INFO_LOAD(&info, PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    st = PMIx_Fence(NULL, 0, &info, 1);
    PMIX_INFO_DESTRUCT(&info);
    if (st != PMIX_SUCCESS) {
        dsm_err("PMIx_Fence failed: %s", PMIx_Error_string(st));
        return DSM_EBOOTSTRAP;
    }
    return DSM_OK;
}

static void pmix_note_abort(dsm_boot_t *b, const char *text)
{
    /* PMIx calls are not async-signal-safe; the launcher learns of the failure from the exit status. */
    (void)b;
    (void)text;
}

static void pmix_fini(dsm_boot_t *b, int clean)
{
    (void)clean;
    PMIx_Finalize(NULL, 0);
    free(b->priv);
    b->priv = NULL;
}

int dsm_boot_open_pmix(const dsm_config_t *cfg, dsm_boot_t *b, char *err, size_t err_len)
{
    (void)cfg;
    struct pmix_boot *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, err_len, "out of memory");
        return DSM_ENOMEM;
    }
    pmix_status_t st = PMIx_Init(&p->me, NULL, 0);
    if (st != PMIX_SUCCESS) {
        snprintf(err, err_len, "PMIx_Init failed: %s (PMIX_RANK is set: was the job started with --mpi=pmix?)",
                 PMIx_Error_string(st));
        free(p);
        return DSM_EBOOTSTRAP;
    }
    pmix_proc_t wild;
    PMIX_PROC_CONSTRUCT(&wild);
    memcpy(wild.nspace, p->me.nspace, sizeof wild.nspace);
    wild.rank = PMIX_RANK_WILDCARD;
    pmix_value_t *v = NULL;
    st = PMIx_Get(&wild, PMIX_JOB_SIZE, NULL, 0, &v);
    if (st != PMIX_SUCCESS || !v || v->type != PMIX_UINT32) {
        snprintf(err, err_len, "PMIx_Get(PMIX_JOB_SIZE) failed: %s", PMIx_Error_string(st));
        if (v)
            PMIX_VALUE_RELEASE(v);
        PMIx_Finalize(NULL, 0);
        free(p);
        return DSM_EBOOTSTRAP;
    }
    b->size = (int)v->data.uint32;
    PMIX_VALUE_RELEASE(v);
    b->rank = (int)p->me.rank;
    /* The job id binds connections to this job: FNV-1a of the namespace, which the launcher makes unique. */
    uint64_t h = 14695981039346656037ull;
    for (const char *s = p->me.nspace; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    b->job_id = h;
    b->name = "pmix";
    b->priv = p;
    b->put = pmix_put;
    b->get = pmix_get;
    b->fence = pmix_fence;
    b->note_abort = pmix_note_abort;
    b->fini = pmix_fini;
    return DSM_OK;
}
