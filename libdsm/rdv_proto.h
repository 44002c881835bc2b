/* SPDX-License-Identifier: MIT */
/*
 * rdv_proto.h - the key-value rendezvous that dsmrun serves and libdsm uses (DESIGN.md 4.5): its messages and
 * the server's store. Shared by tools/dsmrun.c (server) and libdsm/boot_rdv.c (client).
 *
 * A message is: u32 body length (little-endian, 1..DSM_RDV_MSG_MAX), then the body: u8 op, then fields.
 *   HELLO     c->s  u32 proto, u32 rank, u32 size
 *   WELCOME   s->c  u64 job id
 *   PUT       c->s  u16 key length, key, u32 value length, value   (stored under the sender's rank)
 *   GET       c->s  u32 rank, u16 key length, key
 *   VALUE     s->c  u32 value length, value
 *   NOTFOUND  s->c  (empty)
 *   FENCE     c->s  (empty): returns FENCE_DONE once every rank has fenced
 *   FENCE_DONE s->c (empty)
 *   ABORT     c->s  u16 text length, text: this rank is failing because of another's failure (fail-stop)
 *   FIN       c->s  (empty): this rank finalized cleanly; its EOF is expected
 *   ERROR     s->c  u16 text length, text: the job is being aborted, or the request was refused
 * Keys are 1..DSM_RDV_KEY_MAX printable bytes; values at most DSM_RDV_VAL_MAX bytes.
 */
#ifndef DSM_RDV_PROTO_H
#define DSM_RDV_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define DSM_RDV_PROTO 1
#define DSM_RDV_KEY_MAX 128u
#define DSM_RDV_VAL_MAX 4096u
#define DSM_RDV_TEXT_MAX 512u
#define DSM_RDV_MSG_MAX (1u + 2u + DSM_RDV_KEY_MAX + 4u + DSM_RDV_VAL_MAX)
#define DSM_RDV_NEED_MORE 1

enum dsm_rdv_op {
    DSM_RDV_HELLO = 1,
    DSM_RDV_WELCOME,
    DSM_RDV_PUT,
    DSM_RDV_GET,
    DSM_RDV_VALUE,
    DSM_RDV_NOTFOUND,
    DSM_RDV_FENCE,
    DSM_RDV_FENCE_DONE,
    DSM_RDV_ABORT,
    DSM_RDV_FIN,
    DSM_RDV_ERROR,
    DSM_RDV_OP_MAX = DSM_RDV_ERROR
};

/* A decoded message; pointers point into the decoder's input buffer. */
typedef struct dsm_rdv_msg {
    uint8_t op;
    uint32_t proto, rank, size;
    uint64_t job_id;
    const char *key;
    size_t key_len;
    const uint8_t *val;  /* value, or text for ABORT/ERROR */
    size_t val_len;
} dsm_rdv_msg_t;

/* Encode m into out (at least 4 + DSM_RDV_MSG_MAX bytes); returns the length, or 0 if a field is too long. */
size_t dsm_rdv_msg_enc(uint8_t *out, const dsm_rdv_msg_t *m);
/* Decode one message from buf[0..avail): DSM_OK (*used bytes consumed), DSM_RDV_NEED_MORE, or DSM_EPROTO with
 * a static reason in *why. */
int dsm_rdv_msg_dec(const uint8_t *buf, size_t avail, dsm_rdv_msg_t *m, size_t *used, const char **why);

/* The server's store: (rank, key) -> value. */
typedef struct dsm_rdv_store dsm_rdv_store_t;
dsm_rdv_store_t *dsm_rdv_store_create(void);
void dsm_rdv_store_destroy(dsm_rdv_store_t *s);
/* Insert or replace. Returns DSM_OK or DSM_ENOMEM. */
int dsm_rdv_store_put(dsm_rdv_store_t *s, uint32_t rank, const char *key, size_t key_len, const void *val,
                      size_t val_len);
/* Look up; NULL when absent. The pointer is valid until the next put of the same key. */
const void *dsm_rdv_store_get(const dsm_rdv_store_t *s, uint32_t rank, const char *key, size_t key_len,
                              size_t *val_len);
size_t dsm_rdv_store_count(const dsm_rdv_store_t *s);

#endif /* DSM_RDV_PROTO_H */
