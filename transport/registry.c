/* SPDX-License-Identifier: MIT */
/*
 * registry.c - the one table of transport providers (STYLE.md 2). Known names are listed in the default
 * preference order of DESIGN.md 4.4, whether built or not, so settings can tell "unknown" from "not built".
 * Providers are referenced explicitly (no constructors: a static libdsm.a would drop them).
 *
 * tcp is linked in. rdma is a module (dsm_tp_rdma.so, built when configure found rdma-core) that is dlopen'ed
 * on first lookup from $DSM_MODULE_PATH, else from the package library directory, and must export exactly
 * dsm_tp_rdma_ops with this ABI version; so libdsm itself never needs libibverbs (issue 5 item 2). A module that
 * is missing or does not load makes rdma "not built here", with where it was looked for and why.
 */
#include "config.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/transport.h"

extern const struct dsm_tp_ops dsm_tp_shm_ops;
extern const struct dsm_tp_ops dsm_tp_tcp_ops;

const char *const dsm_tp_known_names[] = {"shm", "rdma", "tcp", NULL};

static const struct dsm_tp_ops *const built[] = {
    &dsm_tp_shm_ops,
    &dsm_tp_tcp_ops,
};

#define RDMA_MODULE "dsm_tp_rdma.so"
#define RDMA_SYMBOL "dsm_tp_rdma_ops"

#ifdef DSM_HAVE_RDMA
static pthread_mutex_t mod_lock = PTHREAD_MUTEX_INITIALIZER;
static int mod_tried;
static const struct dsm_tp_ops *mod_ops;
static char mod_err[640];

/* Load the rdma module once. The handle stays open for the life of the process: providers' code may still be
 * running in the progress thread of a job that is being torn down. */
static const struct dsm_tp_ops *rdma_module(void)
{
    pthread_mutex_lock(&mod_lock);
    if (!mod_tried) {
        mod_tried = 1;
        const char *dir = getenv("DSM_MODULE_PATH");
        const char *from = dir && *dir ? "DSM_MODULE_PATH" : "the package library directory";
        if (!dir || !*dir)
            dir = DSM_PKGLIBDIR;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, RDMA_MODULE);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            snprintf(mod_err, sizeof mod_err, "not built or not installed here: cannot load %s (%s): %s", path,
                     from, e ? e : "unknown error");
        } else {
            const struct dsm_tp_ops *ops = dlsym(h, RDMA_SYMBOL);
            if (!ops) {
                snprintf(mod_err, sizeof mod_err, "module %s does not export %s", path, RDMA_SYMBOL);
                dlclose(h);
            } else if (ops->abi_version != DSM_TP_ABI_VERSION || strcmp(ops->name, "rdma") != 0) {
                snprintf(mod_err, sizeof mod_err, "module %s has provider ABI %u, this libdsm needs %u (a stale "
                         "install?)", path, ops->abi_version, DSM_TP_ABI_VERSION);
                dlclose(h);
            } else {
                mod_ops = ops;
            }
        }
    }
    pthread_mutex_unlock(&mod_lock);
    return mod_ops;
}
#endif

const struct dsm_tp_ops *dsm_tp_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof built / sizeof built[0]; i++)
        if (strcmp(built[i]->name, name) == 0 && built[i]->abi_version == DSM_TP_ABI_VERSION)
            return built[i];
#ifdef DSM_HAVE_RDMA
    if (strcmp(name, "rdma") == 0)
        return rdma_module();
#endif
    return NULL;
}

const char *dsm_tp_built_names(void)
{
    static char names[64];
    if (!names[0])
        for (int i = 0; dsm_tp_known_names[i]; i++)
            if (dsm_tp_lookup(dsm_tp_known_names[i]))
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? "," : "",
                         dsm_tp_known_names[i]);
    return names;
}

const char *dsm_tp_lookup_error(const char *name)
{
    if (strcmp(name, "rdma") == 0) {
#ifdef DSM_HAVE_RDMA
        if (!dsm_tp_lookup(name)) {
            pthread_mutex_lock(&mod_lock);
            const char *e = mod_err;
            pthread_mutex_unlock(&mod_lock);
            return e;
        }
        return "built";
#else
        return "not built: configure found no libibverbs/librdmacm development files (or --without-rdma)";
#endif
    }
    return dsm_tp_lookup(name) ? "built" : "not built";
}
