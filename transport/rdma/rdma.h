/* SPDX-License-Identifier: MIT */
/*
 * rdma.h - what the two halves of the rdma provider share (issue 5). rdma_dev.c chooses the device and port
 * (DSM_RDMA_DEVICE, DSM_RDMA_PORT, else the device nearest this process's CPUs per hwloc), finds the IPv4
 * address rdma_cm must bind to reach it, explains why none is usable, and lists devices for dsm_info.
 * rdma.c owns connections, queues and the data path. Neither knows anything of pages or directories.
 * Names follow STYLE.md 3: dsm_tp_rdma_ for what crosses files, never a bare rdma_ or ibv_ prefix.
 */
#ifndef DSM_TP_RDMA_H
#define DSM_TP_RDMA_H

#include <netinet/in.h>
#include <stddef.h>

#include "transport/transport.h"

#define DSM_TP_RDMA_NAME "rdma"

/* The device and port this node uses, and what was found out about them. */
typedef struct dsm_tp_rdma_dev {
    char name[64];       /* e.g. rxe0 */
    int port;            /* 1-based */
    struct in_addr ip;   /* the address rdma_cm binds: rdma_cm picks the GID from it */
    char netdev[32];     /* the port's network device, when known */
    int gid_index;       /* the RoCE v2 (or IB) GID that carries ip */
    char gid[48];        /* its text form */
    char link[16];       /* InfiniBand or Ethernet */
    int atomic_glob;     /* device atomics are atomic with CPU atomics (IBV_ATOMIC_GLOB) */
    char cpus[256];      /* CPU list nearest the device, empty when unknown */
    char locality[192];  /* how cpus was found, or why it is unknown */
    char chosen_by[96];  /* DSM_RDMA_DEVICE, nearest to this process, first usable */
} dsm_tp_rdma_dev_t;

/* Choose the device and port. DSM_OK, or DSM_ENOSYS with the reason in why: no device, a port down, no RoCE
 * GID, RLIMIT_MEMLOCK too small (shown with the amount needed). */
int dsm_tp_rdma_dev_choose(const dsm_tp_core_t *core, size_t memlock_need, dsm_tp_rdma_dev_t *d, char *why,
                           size_t why_len);
/* dsm_info: every device, port, state, link layer, GIDs and locality, one line each. */
void dsm_tp_rdma_dev_describe(const dsm_tp_core_t *core, void (*line)(void *arg, const char *text), void *arg);

#endif /* DSM_TP_RDMA_H */
