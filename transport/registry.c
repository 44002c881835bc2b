/* SPDX-License-Identifier: MIT */
/*
 * registry.c - the one table of transport providers (STYLE.md 2). Known names are listed in the default
 * preference order of DESIGN.md 4.4, whether built or not, so settings can tell "unknown" from "not built".
 * Providers are referenced explicitly (no constructors: a static libdsm.a would drop them).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "transport/transport.h"

extern const struct dsm_tp_ops dsm_tp_shm_ops;
extern const struct dsm_tp_ops dsm_tp_tcp_ops;

const char *const dsm_tp_known_names[] = {"shm", "rdma", "tcp", NULL};

static const struct dsm_tp_ops *const built[] = {
    &dsm_tp_shm_ops,
    &dsm_tp_tcp_ops,
};

const struct dsm_tp_ops *dsm_tp_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof built / sizeof built[0]; i++)
        if (strcmp(built[i]->name, name) == 0 && built[i]->abi_version == DSM_TP_ABI_VERSION)
            return built[i];
    return NULL;
}

const char *dsm_tp_built_names(void)
{
    static char names[64];
    if (!names[0])
        for (size_t i = 0; i < sizeof built / sizeof built[0]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? "," : "", built[i]->name);
    return names;
}
