/* SPDX-License-Identifier: MIT */
/*
 * wire.h - the framed wire format of the byte-stream providers (TCP; shm queues reuse the header).
 *
 * Every frame is a fixed 32-byte header, then hdr_len bytes of message header, then payload_len bytes of payload.
 * All integers are little-endian, written and read byte by byte (never by casting a struct onto the buffer).
 *
 *   off size field        checked by dsm_wire_decode
 *    0   4   magic        == DSM_WIRE_MAGIC ("DSMW")
 *    4   1   version      == DSM_WIRE_VERSION
 *    5   1   type         a known enum dsm_wire_type
 *    6   1   am_id        (AM, PUT_NOTIFY: the handler id; else 0)
 *    7   1   flags        == 0 (reserved)
 *    8   4   src          < the job size; == the connection's peer once it is authenticated (caller checks)
 *   12   4   hdr_len      within the bounds of the type (fixed size, or <= DSM_WIRE_HDR_MAX)
 *   16   4   payload_len  <= the limit given to the decoder; 0 for types that carry none
 *   20   4   reserved     == 0
 *   24   8   seq          request id that a reply echoes (REPLY: the requester's reply slot)
 *
 * Type-specific message headers (also little-endian) are encoded with the dsm_wire_*_enc helpers below.
 */
#ifndef DSM_WIRE_H
#define DSM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define DSM_WIRE_MAGIC 0x574d5344u /* "DSMW" read as little-endian bytes */
#define DSM_WIRE_VERSION 3 /* 2: HELLO carries the nonce and MAC of transport/auth.h; AUTH. 3: REPLY */
#define DSM_WIRE_HDR_SIZE 32u
#define DSM_WIRE_HDR_MAX (24u + 256u) /* PUT_NOTIFY: rma header + the largest AM header */

enum dsm_wire_type {
    DSM_WIRE_HELLO = 1,      /* connector -> acceptor: dsm_wire_hello (its nonce; mac zero) */
    DSM_WIRE_HELLO_ACK = 2,  /* acceptor -> connector: dsm_wire_hello (its nonce and the acceptor's MAC) */
    DSM_WIRE_AM = 3,         /* active message: user header (any length <= max) + payload */
    DSM_WIRE_PUT = 4,        /* dsm_wire_rma + payload; answered by PUT_ACK */
    DSM_WIRE_PUT_ACK = 5,    /* empty */
    DSM_WIRE_PUT_NOTIFY = 6, /* dsm_wire_rma + user header + payload; answered by PUT_ACK */
    DSM_WIRE_GET = 7,        /* dsm_wire_rma; answered by GET_REP */
    DSM_WIRE_GET_REP = 8,    /* payload: the data; hdr: int32 status */
    DSM_WIRE_ATOMIC = 9,     /* dsm_wire_atomic; answered by ATOMIC_REP */
    DSM_WIRE_ATOMIC_REP = 10,/* hdr: int32 status + uint64 old value */
    DSM_WIRE_BYE = 11,       /* empty: the sender leaves on purpose */
    DSM_WIRE_LOST = 12,      /* hdr: uint32 node: the sender lost that node and is failing stop */
    DSM_WIRE_FRAG = 13,      /* shm queues: the next part of the AM before it (payload only) */
    DSM_WIRE_PAD = 14,       /* shm queues: skip payload_len bytes to the end of the ring */
    DSM_WIRE_AUTH = 15,      /* connector -> acceptor: the connector's MAC (DSM_WIRE_AUTH_SIZE bytes) */
    DSM_WIRE_REPLY = 16,     /* direct reply (transport.h ABI 5): as PUT_NOTIFY, seq = the reply slot, no ack */
    DSM_WIRE_TYPE_MAX = 16
};

typedef struct dsm_wire_hdr {
    uint8_t type;
    uint8_t am_id;
    uint32_t src;
    uint32_t hdr_len;
    uint32_t payload_len;
    uint64_t seq;
} dsm_wire_hdr_t;

/* Limits the decoder enforces. */
typedef struct dsm_wire_limits {
    uint32_t nranks;       /* src must be below */
    uint32_t payload_max;  /* payload_len must not exceed */
} dsm_wire_limits_t;

/* Fixed message headers. */
#define DSM_WIRE_HELLO_SIZE 88u
typedef struct dsm_wire_hello {
    uint64_t job_id;
    uint32_t src;
    uint32_t dst;
    uint32_t size;
    uint32_t proto;   /* DSM_WIRE_VERSION again, so a HELLO is self-describing */
    uint8_t nonce[32]; /* the sender's fresh nonce (transport/auth.h) */
    uint8_t mac[32];   /* HELLO_ACK: the acceptor's MAC; HELLO: zero */
} dsm_wire_hello_t;
#define DSM_WIRE_AUTH_SIZE 32u

#define DSM_WIRE_RMA_SIZE 24u
typedef struct dsm_wire_rma {
    uint32_t key;
    uint32_t len;     /* GET: bytes wanted; PUT: must equal payload_len */
    uint64_t offset;
    uint64_t addr;    /* the target's address of the registration (checked against the key) */
} dsm_wire_rma_t;

#define DSM_WIRE_ATOMIC_SIZE 40u
typedef struct dsm_wire_atomic {
    uint32_t key;
    uint32_t op;      /* enum dsm_tp_atomic_op */
    uint64_t offset;
    uint64_t addr;
    uint64_t operand;
    uint64_t compare;
} dsm_wire_atomic_t;

#define DSM_WIRE_STATUS_SIZE 4u
#define DSM_WIRE_ATOMIC_REP_SIZE 12u

/* Encode a frame header into out[DSM_WIRE_HDR_SIZE]. */
void dsm_wire_hdr_enc(uint8_t *out, const dsm_wire_hdr_t *h);

/* Decode and validate a frame header from buf[0..avail).
 * Returns DSM_OK (h filled), DSM_EAGAIN-like 1 when fewer than DSM_WIRE_HDR_SIZE bytes are available, or
 * DSM_EPROTO with a static reason in *why. Never reads past avail. */
#define DSM_WIRE_NEED_MORE 1
int dsm_wire_hdr_dec(const uint8_t *buf, size_t avail, const dsm_wire_limits_t *lim, dsm_wire_hdr_t *h,
                     const char **why);

void dsm_wire_hello_enc(uint8_t *out, const dsm_wire_hello_t *m);
void dsm_wire_hello_dec(const uint8_t *in, dsm_wire_hello_t *m);
void dsm_wire_rma_enc(uint8_t *out, const dsm_wire_rma_t *m);
void dsm_wire_rma_dec(const uint8_t *in, dsm_wire_rma_t *m);
void dsm_wire_atomic_enc(uint8_t *out, const dsm_wire_atomic_t *m);
void dsm_wire_atomic_dec(const uint8_t *in, dsm_wire_atomic_t *m);

/* Little-endian helpers (also used by the rendezvous protocol). */
static inline void dsm_le32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t dsm_le32_get(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void dsm_le64_put(uint8_t *p, uint64_t v)
{
    dsm_le32_put(p, (uint32_t)v);
    dsm_le32_put(p + 4, (uint32_t)(v >> 32));
}
static inline uint64_t dsm_le64_get(const uint8_t *p)
{
    return (uint64_t)dsm_le32_get(p) | (uint64_t)dsm_le32_get(p + 4) << 32;
}

#endif /* DSM_WIRE_H */
