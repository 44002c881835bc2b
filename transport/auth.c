/* SPDX-License-Identifier: MIT */
/*
 * auth.c - HMAC-SHA-256 challenge-response of auth.h, over libsodium.
 */
#include "config.h"

#include <sodium.h>
#include <string.h>

#include "transport/auth.h"
#include "transport/wire.h"

int dsm_auth_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

void dsm_auth_nonce(uint8_t nonce[DSM_AUTH_NONCE_SIZE])
{
    randombytes_buf(nonce, DSM_AUTH_NONCE_SIZE);
}

void dsm_auth_mac(const uint8_t *key, enum dsm_auth_role role, const dsm_auth_ctx_t *ctx,
                  uint8_t mac[DSM_AUTH_MAC_SIZE])
{
    /* A fixed label, the role, then every field little-endian: one byte string per handshake and role. */
    static const char label[16] = "libdsm-auth-v1";
    static const uint8_t zero[DSM_AUTH_KEY_SIZE];
    uint8_t m[sizeof label + 1 + 8 + 12 + 2 * DSM_AUTH_NONCE_SIZE], *p = m;
    memcpy(p, label, sizeof label);
    p += sizeof label;
    *p++ = (uint8_t)role;
    dsm_le64_put(p, ctx->job_id);
    dsm_le32_put(p + 8, ctx->connector);
    dsm_le32_put(p + 12, ctx->acceptor);
    dsm_le32_put(p + 16, ctx->size);
    p += 20;
    memcpy(p, ctx->nonce_c, DSM_AUTH_NONCE_SIZE);
    memcpy(p + DSM_AUTH_NONCE_SIZE, ctx->nonce_a, DSM_AUTH_NONCE_SIZE);
    crypto_auth_hmacsha256(mac, m, sizeof m, key ? key : zero);
}

int dsm_auth_check(const uint8_t *key, enum dsm_auth_role role, const dsm_auth_ctx_t *ctx,
                   const uint8_t mac[DSM_AUTH_MAC_SIZE])
{
    uint8_t want[DSM_AUTH_MAC_SIZE];
    dsm_auth_mac(key, role, ctx, want);
    int ok = sodium_memcmp(want, mac, DSM_AUTH_MAC_SIZE) == 0;
    sodium_memzero(want, sizeof want);
    return ok ? 0 : -1;
}
