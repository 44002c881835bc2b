/* SPDX-License-Identifier: MIT */
/*
 * dsm_info - what this libdsm is and what it would do here: version, bootstraps, the transports built and
 * whether each can start on this host (with the reason when not), and every DSM_* setting with its current
 * value and a one-line description. Providers that can describe their devices (rdma: devices, ports, state, GIDs,
 * link layer, NUMA locality) get a section of their own. Exits 1 when a setting in the environment is invalid, naming it.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "dsm.h"
#include "libdsm/settings.h"
#include "transport/transport.h"

static void info_log(int level, const char *prov, const char *fmt, ...)
{
    (void)level;
    (void)prov;
    (void)fmt;
}

static const char *info_setting(const char *name)
{
    return getenv(name);
}

static void print_line(void *arg, const char *text)
{
    (void)arg;
    printf("  %s\n", text);
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: dsm_info\nPrints libdsm's version, transports and settings.\n");
        return 0;
    }
    printf("libdsm %s (API %d.%d)\n", dsm_version_string(), dsm_version() >> 16, dsm_version() & 0xffff);
    printf("\nbootstrap:\n");
    printf("  dsmrun    built (DSM_RANK, DSM_SIZE, DSM_COORD; also by hand with dsmrun --serve)\n");
#ifdef DSM_HAVE_PMIX
    printf("  pmix      built (mpirun, srun --mpi=pmix)%s\n", getenv("PMIX_RANK") ? "; PMIX_RANK is set here" : "");
#else
    printf("  pmix      not built (configure found no libpmix)\n");
#endif

    dsm_tp_core_t core = {.abi_version = DSM_TP_ABI_VERSION, .log = info_log, .setting = info_setting};
    printf("\ntransports (default preference order):\n");
    for (int i = 0; dsm_tp_known_names[i]; i++) {
        const char *name = dsm_tp_known_names[i];
        const struct dsm_tp_ops *ops = dsm_tp_lookup(name);
        if (!ops) {
            printf("  %-8s  %s\n", name, dsm_tp_lookup_error(name));
            continue;
        }
        char why[256] = "";
        int rc = ops->probe(&core, why, sizeof why);
        printf("  %-8s  built; %s: %s\n", name, rc == DSM_OK ? "can start here" : "cannot start here", why);
    }
    printf("  (chosen per pair of ranks: the first of DSM_TRANSPORT that both ends can use; shm only between ranks\n"
           "   with the same host identity; a job's mix is dsm_transport_name(), e.g. shm+tcp, and DSM_STATS)\n");

    /* What the providers see on this host: RDMA devices, ports, GIDs, link layer, locality. */
    for (int i = 0; dsm_tp_known_names[i]; i++) {
        const struct dsm_tp_ops *ops = dsm_tp_lookup(dsm_tp_known_names[i]);
        if (!ops || !ops->describe)
            continue;
        printf("\n%s devices:\n", ops->name);
        ops->describe(&core, print_line, NULL);
    }

    struct rlimit rl;
    printf("\nlimits:\n");
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
        if (rl.rlim_cur == RLIM_INFINITY)
            printf("  RLIMIT_MEMLOCK      unlimited\n");
        else
            printf("  RLIMIT_MEMLOCK      %llu bytes (memory RDMA may register)\n", (unsigned long long)rl.rlim_cur);
    }
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    long maps;
    if (f && fscanf(f, "%ld", &maps) == 1)
        printf("  vm.max_map_count    %ld (mappings per process; per-page protection splits them)\n", maps);
    if (f)
        fclose(f);

    printf("\nsettings (environment):\n");
    for (size_t i = 0; i < dsm_nsettings; i++) {
        const struct dsm_setting *s = &dsm_settings[i];
        const char *v = getenv(s->name);
        char shown[96];
        if (v)
            snprintf(shown, sizeof shown, "%s", v);
        else if (s->def)
            snprintf(shown, sizeof shown, "%s (default)", s->def);
        else
            snprintf(shown, sizeof shown, "(not set)");
        printf("  %-16s %-28s %s\n", s->name, shown, s->doc);
    }

    dsm_config_t cfg;
    char err[512];
    if (dsm_config_parse(&cfg, (dsm_getenv_fn_t)getenv, err, sizeof err) != DSM_OK) {
        printf("\nerror: %s\n", err);
        return 1;
    }
    return 0;
}
