/* SPDX-License-Identifier: MIT */
/*
 * wire.c - encode and validate the frames of wire.h. Owns no state; a decoded header is trusted only for the
 * bounds checked here, and the provider checks the rest (the connection's peer, registration keys).
 */
#include "config.h"

#include <string.h>

#include "dsm.h"
#include "transport/transport.h"
#include "transport/wire.h"

/* Per-type bounds of hdr_len and whether a payload is allowed. */
static const struct {
    uint32_t hdr_min, hdr_max;
    int payload;
} wire_rules[DSM_WIRE_TYPE_MAX + 1] = {
    [DSM_WIRE_HELLO] = {DSM_WIRE_HELLO_SIZE, DSM_WIRE_HELLO_SIZE, 0},
    [DSM_WIRE_HELLO_ACK] = {DSM_WIRE_HELLO_SIZE, DSM_WIRE_HELLO_SIZE, 0},
    [DSM_WIRE_AM] = {0, DSM_TP_AM_HDR_MAX, 1},
    [DSM_WIRE_PUT] = {DSM_WIRE_RMA_SIZE, DSM_WIRE_RMA_SIZE, 1},
    [DSM_WIRE_PUT_ACK] = {DSM_WIRE_STATUS_SIZE, DSM_WIRE_STATUS_SIZE, 0},
    [DSM_WIRE_PUT_NOTIFY] = {DSM_WIRE_RMA_SIZE, DSM_WIRE_RMA_SIZE + DSM_TP_AM_HDR_MAX, 1},
    [DSM_WIRE_GET] = {DSM_WIRE_RMA_SIZE, DSM_WIRE_RMA_SIZE, 0},
    [DSM_WIRE_GET_REP] = {DSM_WIRE_STATUS_SIZE, DSM_WIRE_STATUS_SIZE, 1},
    [DSM_WIRE_ATOMIC] = {DSM_WIRE_ATOMIC_SIZE, DSM_WIRE_ATOMIC_SIZE, 0},
    [DSM_WIRE_ATOMIC_REP] = {DSM_WIRE_ATOMIC_REP_SIZE, DSM_WIRE_ATOMIC_REP_SIZE, 0},
    [DSM_WIRE_BYE] = {0, 0, 0},
    [DSM_WIRE_LOST] = {4, 4, 0},
    [DSM_WIRE_FRAG] = {0, 0, 1},
    [DSM_WIRE_PAD] = {0, 0, 1},
    [DSM_WIRE_AUTH] = {DSM_WIRE_AUTH_SIZE, DSM_WIRE_AUTH_SIZE, 0},
    [DSM_WIRE_REPLY] = {DSM_WIRE_RMA_SIZE, DSM_WIRE_RMA_SIZE + DSM_TP_REPLY_HDR_MAX, 1},
};

void dsm_wire_hdr_enc(uint8_t *out, const dsm_wire_hdr_t *h)
{
    dsm_le32_put(out, DSM_WIRE_MAGIC);
    out[4] = DSM_WIRE_VERSION;
    out[5] = h->type;
    out[6] = h->am_id;
    out[7] = 0;
    dsm_le32_put(out + 8, h->src);
    dsm_le32_put(out + 12, h->hdr_len);
    dsm_le32_put(out + 16, h->payload_len);
    dsm_le32_put(out + 20, 0);
    dsm_le64_put(out + 24, h->seq);
}

int dsm_wire_hdr_dec(const uint8_t *buf, size_t avail, const dsm_wire_limits_t *lim, dsm_wire_hdr_t *h,
                     const char **why)
{
    /* The magic is checked as soon as 4 bytes are in, so a stranger is refused without waiting for more. */
    if (avail >= 4 && dsm_le32_get(buf) != DSM_WIRE_MAGIC) {
        *why = "bad magic";
        return DSM_EPROTO;
    }
    if (avail < DSM_WIRE_HDR_SIZE)
        return DSM_WIRE_NEED_MORE;
    if (buf[4] != DSM_WIRE_VERSION) {
        *why = "unsupported protocol version";
        return DSM_EPROTO;
    }
    uint8_t type = buf[5];
    if (type == 0 || type > DSM_WIRE_TYPE_MAX) {
        *why = "unknown frame type";
        return DSM_EPROTO;
    }
    if (buf[7] != 0 || dsm_le32_get(buf + 20) != 0) {
        *why = "reserved field not zero";
        return DSM_EPROTO;
    }
    uint32_t src = dsm_le32_get(buf + 8);
    if (src >= lim->nranks) {
        *why = "source rank out of range";
        return DSM_EPROTO;
    }
    uint32_t hdr_len = dsm_le32_get(buf + 12);
    if (hdr_len < wire_rules[type].hdr_min || hdr_len > wire_rules[type].hdr_max) {
        *why = "header length out of bounds for the frame type";
        return DSM_EPROTO;
    }
    uint32_t payload_len = dsm_le32_get(buf + 16);
    if (payload_len > 0 && !wire_rules[type].payload) {
        *why = "payload on a frame type that carries none";
        return DSM_EPROTO;
    }
    if (payload_len > lim->payload_max) {
        *why = "payload larger than the limit";
        return DSM_EPROTO;
    }
    if (buf[6] != 0 && type != DSM_WIRE_AM && type != DSM_WIRE_PUT_NOTIFY && type != DSM_WIRE_REPLY) {
        *why = "handler id on a frame type that has none";
        return DSM_EPROTO;
    }
    h->type = type;
    h->am_id = buf[6];
    h->src = src;
    h->hdr_len = hdr_len;
    h->payload_len = payload_len;
    h->seq = dsm_le64_get(buf + 24);
    return DSM_OK;
}

void dsm_wire_hello_enc(uint8_t *out, const dsm_wire_hello_t *m)
{
    dsm_le64_put(out, m->job_id);
    dsm_le32_put(out + 8, m->src);
    dsm_le32_put(out + 12, m->dst);
    dsm_le32_put(out + 16, m->size);
    dsm_le32_put(out + 20, m->proto);
    memcpy(out + 24, m->nonce, sizeof m->nonce);
    memcpy(out + 56, m->mac, sizeof m->mac);
}

void dsm_wire_hello_dec(const uint8_t *in, dsm_wire_hello_t *m)
{
    m->job_id = dsm_le64_get(in);
    m->src = dsm_le32_get(in + 8);
    m->dst = dsm_le32_get(in + 12);
    m->size = dsm_le32_get(in + 16);
    m->proto = dsm_le32_get(in + 20);
    memcpy(m->nonce, in + 24, sizeof m->nonce);
    memcpy(m->mac, in + 56, sizeof m->mac);
}

void dsm_wire_rma_enc(uint8_t *out, const dsm_wire_rma_t *m)
{
    dsm_le32_put(out, m->key);
    dsm_le32_put(out + 4, m->len);
    dsm_le64_put(out + 8, m->offset);
    dsm_le64_put(out + 16, m->addr);
}

void dsm_wire_rma_dec(const uint8_t *in, dsm_wire_rma_t *m)
{
    m->key = dsm_le32_get(in);
    m->len = dsm_le32_get(in + 4);
    m->offset = dsm_le64_get(in + 8);
    m->addr = dsm_le64_get(in + 16);
}

void dsm_wire_atomic_enc(uint8_t *out, const dsm_wire_atomic_t *m)
{
    dsm_le32_put(out, m->key);
    dsm_le32_put(out + 4, m->op);
    dsm_le64_put(out + 8, m->offset);
    dsm_le64_put(out + 16, m->addr);
    dsm_le64_put(out + 24, m->operand);
    dsm_le64_put(out + 32, m->compare);
}

void dsm_wire_atomic_dec(const uint8_t *in, dsm_wire_atomic_t *m)
{
    m->key = dsm_le32_get(in);
    m->op = dsm_le32_get(in + 4);
    m->offset = dsm_le64_get(in + 8);
    m->addr = dsm_le64_get(in + 16);
    m->operand = dsm_le64_get(in + 24);
    m->compare = dsm_le64_get(in + 32);
}
