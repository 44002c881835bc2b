/* SPDX-License-Identifier: MIT */
/* shm.h - what the shared-memory provider offers beyond its ops (transport/shm/shm.c). Internal. */
#ifndef DSM_TP_SHM_H
#define DSM_TP_SHM_H

/* Tests only: write nonsense into this node's queue to peer, as a misbehaving local process could; the peer must
 * report a malformed message and fail stop, never crash. DSM_EINVAL when peer is not served by shm. */
int dsm_tp_shm_debug_garbage(int peer, unsigned seed);
/* Tests only: the same for peer's reply slots (a reply in a slot it never armed). */
int dsm_tp_shm_debug_reply_garbage(int peer, unsigned seed);

#endif /* DSM_TP_SHM_H */
