/* SPDX-License-Identifier: MIT */
/*
 * rdma_dev.c - which RDMA device and port this node uses, and why none can be used (issue 5 items 1 and 4).
 *
 * A usable port is ACTIVE and has a GID that carries an IPv4 address (RoCE: the IPv4-mapped GID, v2 preferred;
 * InfiniBand: an IPoIB interface of the same device), because rdma_cm chooses the GID from the address it binds
 * (RXE-LAB.md: on rxe, GID index 1 is ::ffff:<netdev address>, RoCE v2). DSM_RDMA_DEVICE and DSM_RDMA_PORT
 * narrow the choice; otherwise the device whose CPUs (hwloc) overlap this process's CPUs most wins, ties going
 * to the first usable one. rxe devices have no PCI device and so no locality of their own: the netdev's NUMA
 * node is used instead when it has one, and the listing says so.
 *
 * Only probing: contexts opened here are closed before returning; rdma.c opens the device through rdma_cm.
 */
#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#ifdef DSM_HAVE_HWLOC
#include <hwloc.h>
#include <hwloc/openfabrics-verbs.h>
#endif

#include "dsm.h"
#include "transport/rdma/rdma.h"

#define GIDS_MAX 256

static int read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(buf, (int)len, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static const char *port_state_str(enum ibv_port_state s)
{
    switch (s) {
    case IBV_PORT_DOWN: return "DOWN";
    case IBV_PORT_INIT: return "INIT";
    case IBV_PORT_ARMED: return "ARMED";
    case IBV_PORT_ACTIVE: return "ACTIVE";
    case IBV_PORT_ACTIVE_DEFER: return "ACTIVE_DEFER";
    default: return "NOP";
    }
}

static const char *gid_type_str(uint32_t t)
{
    switch (t) {
    case IBV_GID_TYPE_IB: return "IB";
    case IBV_GID_TYPE_ROCE_V1: return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2: return "RoCE v2";
    default: return "?";
    }
}

static int gid_is_ipv4(const union ibv_gid *g)
{
    static const uint8_t pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(g->raw, pfx, 12) == 0;
}

static int gid_is_zero(const union ibv_gid *g)
{
    for (int i = 0; i < 16; i++)
        if (g->raw[i])
            return 0;
    return 1;
}

/* The first IPv4 address of a network interface. */
static int netdev_ipv4(const char *ifname, struct in_addr *out)
{
    struct ifaddrs *ifs;
    int found = 0;
    if (getifaddrs(&ifs) < 0)
        return 0;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && strcmp(i->ifa_name, ifname) == 0) {
            *out = ((const struct sockaddr_in *)i->ifa_addr)->sin_addr;
            found = 1;
        }
    freeifaddrs(ifs);
    return found;
}

/* Find the IPv4 address that names (dev, port) for rdma_cm. Returns 1 with d filled, else 0. */
static int port_address(struct ibv_context *ctx, const char *devname, int port, const struct ibv_port_attr *pa,
                        dsm_tp_rdma_dev_t *d)
{
    struct ibv_gid_entry *e = calloc(GIDS_MAX, sizeof *e);
    if (!e)
        return 0;
    ssize_t n = ibv_query_gid_table(ctx, e, GIDS_MAX, 0);
    int best = -1;
    for (ssize_t i = 0; i < n; i++) {
        if ((int)e[i].port_num != port || !gid_is_ipv4(&e[i].gid))
            continue;
        if (best < 0 || (e[i].gid_type == IBV_GID_TYPE_ROCE_V2 && e[best].gid_type != IBV_GID_TYPE_ROCE_V2))
            best = (int)i;
    }
    int ok = 0;
    if (best >= 0) {
        memcpy(&d->ip, e[best].gid.raw + 12, 4);
        d->gid_index = (int)e[best].gid_index;
        inet_ntop(AF_INET6, e[best].gid.raw, d->gid, sizeof d->gid);
        d->netdev[0] = '\0';
        if (e[best].ndev_ifindex)
            if_indextoname(e[best].ndev_ifindex, d->netdev);
        ok = 1;
    } else if (pa->link_layer == IBV_LINK_LAYER_INFINIBAND) {
        /* IPoIB interfaces hang off the same PCI device. */
        char path[256];
        snprintf(path, sizeof path, "/sys/class/infiniband/%s/device/net", devname);
        DIR *dir = opendir(path);
        struct dirent *de;
        while (dir && !ok && (de = readdir(dir)))
            if (de->d_name[0] != '.' && netdev_ipv4(de->d_name, &d->ip)) {
                snprintf(d->netdev, sizeof d->netdev, "%.31s", de->d_name);
                d->gid_index = 0;
                union ibv_gid g;
                if (ibv_query_gid(ctx, (uint8_t)port, 0, &g) == 0)
                    inet_ntop(AF_INET6, g.raw, d->gid, sizeof d->gid);
                ok = 1;
            }
        if (dir)
            closedir(dir);
    }
    free(e);
    return ok;
}

/* ---- locality ---- */

/* The CPUs nearest a device, as a list, and how that was found. Returns the number of this process's CPUs
 * among them (its score), or -1 when unknown. */
static int dev_locality(const char *devname, const char *netdev, char *cpus, size_t cpus_len, char *how,
                        size_t how_len)
{
    cpus[0] = '\0';
#ifdef DSM_HAVE_HWLOC
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) < 0 || hwloc_topology_load(topo) < 0) {
        snprintf(how, how_len, "unknown: hwloc could not load the topology");
        return -1;
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc(), mine = hwloc_bitmap_alloc();
    char path[256], numa[32] = "";
    int score = -1;
    snprintf(path, sizeof path, "/sys/class/infiniband/%s/device", devname);
    if (access(path, F_OK) == 0) {
        struct ibv_device **l = ibv_get_device_list(NULL);
        for (int i = 0; l && l[i]; i++)
            if (strcmp(ibv_get_device_name(l[i]), devname) == 0)
                hwloc_ibv_get_device_cpuset(topo, l[i], set);
        if (l)
            ibv_free_device_list(l);
        snprintf(path, sizeof path, "/sys/class/infiniband/%s/device/numa_node", devname);
        if (read_file(path, numa, sizeof numa) < 0)
            snprintf(numa, sizeof numa, "?");
        snprintf(how, how_len, "NUMA node %s (PCI locality, hwloc)", numa);
    } else {
        /* A software device (rxe, siw): fall back to its netdev's NUMA node. */
        snprintf(path, sizeof path, "/sys/class/net/%s/device/numa_node", netdev);
        int node = -1;
        if (netdev[0] && read_file(path, numa, sizeof numa) == 0)
            node = atoi(numa);
        hwloc_obj_t o = node >= 0 ? hwloc_get_numanode_obj_by_os_index(topo, (unsigned)node) : NULL;
        if (o && o->cpuset) {
            hwloc_bitmap_copy(set, o->cpuset);
            snprintf(how, how_len, "NUMA node %d (software device without PCI locality: the node of its netdev %s)",
                     node, netdev);
        } else {
            snprintf(how, how_len, "unknown: a software device without PCI locality, and its netdev %s has no "
                     "NUMA node either (any CPU is as near)", netdev[0] ? netdev : "(none)");
        }
    }
    if (!hwloc_bitmap_iszero(set)) {
        hwloc_bitmap_list_snprintf(cpus, cpus_len, set);
        if (hwloc_get_cpubind(topo, mine, HWLOC_CPUBIND_PROCESS) < 0)
            hwloc_bitmap_copy(mine, hwloc_topology_get_complete_cpuset(topo));
        hwloc_bitmap_and(mine, mine, set);
        score = hwloc_bitmap_weight(mine);
    }
    hwloc_bitmap_free(set);
    hwloc_bitmap_free(mine);
    hwloc_topology_destroy(topo);
    return score;
#else
    (void)devname;
    (void)netdev;
    snprintf(how, how_len, "unknown: this libdsm was built without hwloc");
    return -1;
#endif
}

/* ---- RLIMIT_MEMLOCK ---- */

static int has_ipc_lock(void)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    int yes = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "CapEff:", 7) == 0)
            yes = (strtoull(line + 7, NULL, 16) >> 14) & 1; /* CAP_IPC_LOCK */
    if (f)
        fclose(f);
    return yes;
}

static int memlock_ok(size_t need, char *why, size_t why_len)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need ||
        has_ipc_lock())
        return 1;
    snprintf(why, why_len, "RLIMIT_MEMLOCK is %llu KiB, too small: the rdma transport registers (pins) at least "
             "%zu MiB (its queues and one 16 MiB chunk of the shared region); raise it with ulimit -l or "
             "/etc/security/limits.conf", (unsigned long long)rl.rlim_cur >> 10, need >> 20);
    return 0;
}

/* ---- choosing ---- */

int dsm_tp_rdma_dev_choose(const dsm_tp_core_t *core, size_t memlock_need, dsm_tp_rdma_dev_t *out, char *why,
                           size_t why_len)
{
    const char *want = core->setting ? core->setting("DSM_RDMA_DEVICE") : NULL;
    const char *want_port_s = core->setting ? core->setting("DSM_RDMA_PORT") : NULL;
    int want_port = want_port_s ? atoi(want_port_s) : 0;
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n == 0) {
        if (!list && errno == ENOSYS)
            snprintf(why, why_len, "no RDMA device: this kernel has no RDMA support (ibv_get_device_list: %s)",
                     strerror(errno));
        else
            snprintf(why, why_len, "no RDMA device (libibverbs found none; soft-RoCE: rdma link add rxe0 type rxe "
                     "netdev <ethernet interface>)");
        if (list)
            ibv_free_device_list(list);
        return DSM_ENOSYS;
    }
    char names[256] = "", down[256] = "", nogid[256] = "", other[256] = "";
    int best_score = -2, found = 0, named = 0;
    dsm_tp_rdma_dev_t cand;
    for (int i = 0; i < n; i++) {
        const char *dn = ibv_get_device_name(list[i]);
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "", dn);
        if (want && strcmp(want, dn) != 0)
            continue;
        named = 1;
        struct ibv_context *ctx = ibv_open_device(list[i]);
        struct ibv_device_attr da;
        if (!ctx || ibv_query_device(ctx, &da) != 0) {
            snprintf(other + strlen(other), sizeof other - strlen(other), "%scannot open %s: %s",
                     other[0] ? "; " : "", dn, strerror(errno));
            if (ctx)
                ibv_close_device(ctx);
            continue;
        }
        for (int p = 1; p <= da.phys_port_cnt; p++) {
            if (want_port && p != want_port)
                continue;
            struct ibv_port_attr pa;
            if (ibv_query_port(ctx, (uint8_t)p, &pa) != 0)
                continue;
            if (pa.state != IBV_PORT_ACTIVE) {
                snprintf(down + strlen(down), sizeof down - strlen(down), "%s%s port %d is %s", down[0] ? ", " : "",
                         dn, p, port_state_str(pa.state));
                continue;
            }
            memset(&cand, 0, sizeof cand);
            if (!port_address(ctx, dn, p, &pa, &cand)) {
                snprintf(nogid + strlen(nogid), sizeof nogid - strlen(nogid), "%s%s port %d", nogid[0] ? ", " : "",
                         dn, p);
                continue;
            }
            snprintf(cand.name, sizeof cand.name, "%s", dn);
            cand.port = p;
            snprintf(cand.link, sizeof cand.link, "%s",
                     pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand");
            cand.atomic_glob = da.atomic_cap == IBV_ATOMIC_GLOB;
            int score = dev_locality(dn, cand.netdev, cand.cpus, sizeof cand.cpus, cand.locality,
                                     sizeof cand.locality);
            if (score > best_score) {
                best_score = score;
                snprintf(cand.chosen_by, sizeof cand.chosen_by, "%s",
                         want ? "DSM_RDMA_DEVICE" : score >= 0 ? "nearest this process's CPUs (hwloc)"
                                                               : "first usable device");
                *out = cand;
                found = 1;
            }
        }
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    if (found)
        return memlock_ok(memlock_need, why, why_len) ? DSM_OK : DSM_ENOSYS;
    if (want && !named)
        snprintf(why, why_len, "DSM_RDMA_DEVICE=%s: no such RDMA device (devices: %s)", want, names);
    else if (nogid[0])
        snprintf(why, why_len, "no RoCE GID with an IPv4 address on %s (rdma_cm needs the netdev to have an IPv4 "
                 "address)", nogid);
    else if (down[0])
        snprintf(why, why_len, "port down: %s%s", down, want_port ? "" : "");
    else if (other[0])
        snprintf(why, why_len, "%s", other);
    else
        snprintf(why, why_len, "DSM_RDMA_PORT=%d: no such port on %s", want_port, want ? want : names);
    return DSM_ENOSYS;
}

/* ---- listing ---- */

void dsm_tp_rdma_dev_describe(const dsm_tp_core_t *core, void (*line)(void *arg, const char *text), void *arg)
{
    (void)core;
    char t[512];
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n == 0) {
        snprintf(t, sizeof t, "none (%s)", !list ? strerror(errno) : "libibverbs found no device");
        line(arg, t);
        if (list)
            ibv_free_device_list(list);
        return;
    }
    struct ibv_gid_entry *e = calloc(GIDS_MAX, sizeof *e);
    for (int i = 0; i < n; i++) {
        const char *dn = ibv_get_device_name(list[i]);
        struct ibv_context *ctx = ibv_open_device(list[i]);
        struct ibv_device_attr da;
        if (!ctx || ibv_query_device(ctx, &da) != 0) {
            snprintf(t, sizeof t, "%s: cannot open: %s", dn, strerror(errno));
            line(arg, t);
            if (ctx)
                ibv_close_device(ctx);
            continue;
        }
        snprintf(t, sizeof t, "%s: %d port(s), atomics %s", dn, da.phys_port_cnt,
                 da.atomic_cap == IBV_ATOMIC_GLOB ? "global (atomic with CPU atomics)"
                 : da.atomic_cap == IBV_ATOMIC_HCA ? "device-only (not atomic with CPU atomics on the target)"
                                                  : "none");
        line(arg, t);
        ssize_t ng = e ? ibv_query_gid_table(ctx, e, GIDS_MAX, 0) : 0;
        char netdev[IF_NAMESIZE + 1] = "";
        for (int p = 1; p <= da.phys_port_cnt; p++) {
            struct ibv_port_attr pa;
            if (ibv_query_port(ctx, (uint8_t)p, &pa) != 0)
                continue;
            snprintf(t, sizeof t, "  port %d: %s, link layer %s, active MTU %d", p, port_state_str(pa.state),
                     pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand",
                     128 << pa.active_mtu);
            line(arg, t);
            for (ssize_t g = 0; g < ng; g++) {
                if ((int)e[g].port_num != p || gid_is_zero(&e[g].gid))
                    continue;
                char gs[INET6_ADDRSTRLEN], nd[IF_NAMESIZE + 1] = "";
                inet_ntop(AF_INET6, e[g].gid.raw, gs, sizeof gs);
                if (e[g].ndev_ifindex)
                    if_indextoname(e[g].ndev_ifindex, nd);
                if (nd[0] && !netdev[0])
                    snprintf(netdev, sizeof netdev, "%s", nd);
                snprintf(t, sizeof t, "    gid %u %s %s%s%s%s", e[g].gid_index, gs, gid_type_str(e[g].gid_type),
                         nd[0] ? " on " : "", nd, gid_is_ipv4(&e[g].gid) ? " (IPv4: rdma_cm can bind it)" : "");
                line(arg, t);
            }
        }
        char cpus[256], how[192];
        dev_locality(dn, netdev, cpus, sizeof cpus, how, sizeof how);
        snprintf(t, sizeof t, "  locality: %s%s%s", how, cpus[0] ? ", CPUs " : "", cpus);
        line(arg, t);
        ibv_close_device(ctx);
    }
    free(e);
    ibv_free_device_list(list);
    dsm_tp_rdma_dev_t d;
    char why[400];
    dsm_tp_core_t c = *core;
    if (dsm_tp_rdma_dev_choose(&c, 0, &d, why, sizeof why) == DSM_OK) {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &d.ip, ip, sizeof ip);
        snprintf(t, sizeof t, "this process would use %s port %d, address %s (gid %d), chosen as %s", d.name, d.port,
                 ip, d.gid_index, d.chosen_by);
    } else {
        snprintf(t, sizeof t, "this process can use none: %s", why);
    }
    line(arg, t);
}
