/* SPDX-License-Identifier: MIT */
/*
 * auth.h - the challenge-response that every connection passes before any other message is accepted
 * (DESIGN.md 4.7). Shared by the tcp and shm providers and compiled into the rdma module too (which links no
 * libdsm code), so it depends on libsodium only.
 *
 * The connector sends a fresh nonce Nc; the acceptor answers with its own fresh nonce Na and
 * MAC(K, "A", job, connector, acceptor, size, Nc, Na); the connector checks it and answers MAC(K, "C", ...same).
 * K is the per-job secret (HMAC-SHA-256 key), the role byte keeps one side's answer from being replayed as the
 * other's, and both nonces keep any answer from being replayed on another connection. Checks are constant-time.
 * With authentication off (DSM_AUTH=off) K is all zeros: the exchange then only proves the same job and ranks.
 */
#ifndef DSM_AUTH_H
#define DSM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define DSM_AUTH_KEY_SIZE 32u
#define DSM_AUTH_NONCE_SIZE 32u
#define DSM_AUTH_MAC_SIZE 32u

enum dsm_auth_role { DSM_AUTH_CONNECTOR = 'C', DSM_AUTH_ACCEPTOR = 'A' };

/* What both MACs of one handshake cover. */
typedef struct dsm_auth_ctx {
    uint64_t job_id;
    uint32_t connector, acceptor, size;
    uint8_t nonce_c[DSM_AUTH_NONCE_SIZE];
    uint8_t nonce_a[DSM_AUTH_NONCE_SIZE];
} dsm_auth_ctx_t;

/* Initialise libsodium; 0, or -1 when it cannot start (no entropy source). Safe to call more than once. */
int dsm_auth_init(void);
/* Fill a fresh random nonce. */
void dsm_auth_nonce(uint8_t nonce[DSM_AUTH_NONCE_SIZE]);
/* The MAC of role over ctx under key (NULL: authentication off, the all-zero key). */
void dsm_auth_mac(const uint8_t *key, enum dsm_auth_role role, const dsm_auth_ctx_t *ctx,
                  uint8_t mac[DSM_AUTH_MAC_SIZE]);
/* 0 when mac is role's MAC over ctx under key, else -1. Constant-time in the MAC's bytes. */
int dsm_auth_check(const uint8_t *key, enum dsm_auth_role role, const dsm_auth_ctx_t *ctx,
                   const uint8_t mac[DSM_AUTH_MAC_SIZE]);

#endif /* DSM_AUTH_H */
