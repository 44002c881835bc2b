/* SPDX-License-Identifier: MIT */
/* heartbeat.h - heartbeats between all nodes and loss detection after DSM_TIMEOUT of silence (heartbeat.c). */
#ifndef DSM_HEARTBEAT_H
#define DSM_HEARTBEAT_H

/* Register the heartbeat handler (before any connection is up, so a peer's first heartbeat finds it). */
int dsm_hb_setup(int rank, int size, int timeout_s);
/* Start sending and watching (after the connections are up). */
/* After dsm_hb_setup: the silence allowed grows by how many ranks this host runs per core (when more than 1);
 * returns that factor (1 when the host is not oversubscribed). */
int dsm_hb_scale(int ranks_here);
int dsm_hb_start(void);
/* Test hook (tests/multi/hb_traffic.c): when nonzero this node sends no heartbeats; internal, not exported. */
extern int dsm_hb_debug_mute;
/* Any message from src arrived (the core's dispatch): src is alive. */
void dsm_hb_heard(int src);
/* Stop and free (before this node says bye; idempotent). */
void dsm_hb_stop(void);

#endif /* DSM_HEARTBEAT_H */
