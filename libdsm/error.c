/* SPDX-License-Identifier: MIT */
/*
 * error.c - status strings, the per-thread last error, and the library version (dsm.h).
 */
#include "config.h"

#include "dsm.h"
#include "libdsm/error.h"

static _Thread_local int last_error;
static void (*error_handler)(int err, int node);

DSM_API void dsm_set_error_handler(void (*fn)(int err, int node))
{
    __atomic_store_n(&error_handler, fn, __ATOMIC_RELEASE);
}

void dsm_error_handler_run(int err, int node)
{
    void (*fn)(int, int) = __atomic_load_n(&error_handler, __ATOMIC_ACQUIRE);
    if (fn)
        fn(err, node);
}

void dsm_set_last_error(int status)
{
    last_error = status;
}

DSM_API int dsm_last_error(void)
{
    return last_error;
}

DSM_API const char *dsm_strerror(int status)
{
    switch (status) {
    case DSM_OK: return "success";
    case DSM_EINVAL: return "invalid argument or setting";
    case DSM_ENOMEM: return "out of memory or address space";
    case DSM_ENOSYS: return "not supported by this build or transport";
    case DSM_EBUSY: return "resource busy";
    case DSM_EALREADY: return "libdsm is already initialized";
    case DSM_ENOTINIT: return "libdsm is not initialized";
    case DSM_EMISMATCH: return "nodes disagree (settings, versions or collective calls)";
    case DSM_ESYS: return "a system call failed";
    case DSM_EVERSION: return "program built for a newer libdsm";
    case DSM_ETIMEDOUT: return "timed out";
    case DSM_EPROTO: return "malformed or unexpected message";
    case DSM_EUNREACH: return "a peer cannot be reached by any transport";
    case DSM_EBOOTSTRAP: return "the rendezvous (dsmrun or PMIx) failed";
    case DSM_ENODE: return "a node was lost";
    }
    return "unknown error";
}

DSM_API int dsm_version(void)
{
    return DSM_API_VERSION;
}

DSM_API const char *dsm_version_string(void)
{
    return PACKAGE_VERSION;
}
