/* SPDX-License-Identifier: MIT */
/*
 * rdv_proto.c - encoding, validation and storage for the rendezvous protocol (rdv_proto.h). Every length is
 * checked against both the message length and the protocol limits before a byte is used.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/rdv_proto.h"
#include "transport/wire.h"

static int key_ok(const char *k, size_t n)
{
    if (n == 0 || n > DSM_RDV_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x21 || k[i] > 0x7e)
            return 0;
    return 1;
}

size_t dsm_rdv_msg_enc(uint8_t *out, const dsm_rdv_msg_t *m)
{
    uint8_t *p = out + 4;
    *p++ = m->op;
    switch (m->op) {
    case DSM_RDV_HELLO:
        dsm_le32_put(p, m->proto);
        dsm_le32_put(p + 4, m->rank);
        dsm_le32_put(p + 8, m->size);
        p += 12;
        break;
    case DSM_RDV_WELCOME:
        dsm_le64_put(p, m->job_id);
        p += 8;
        break;
    case DSM_RDV_GET:
        dsm_le32_put(p, m->rank);
        p += 4;
        /* fall through */
    case DSM_RDV_PUT:
        if (!key_ok(m->key, m->key_len))
            return 0;
        p[0] = (uint8_t)m->key_len;
        p[1] = (uint8_t)(m->key_len >> 8);
        memcpy(p + 2, m->key, m->key_len);
        p += 2 + m->key_len;
        if (m->op == DSM_RDV_GET)
            break;
        /* fall through */
    case DSM_RDV_VALUE:
        if (m->val_len > DSM_RDV_VAL_MAX)
            return 0;
        dsm_le32_put(p, (uint32_t)m->val_len);
        if (m->val_len)
            memcpy(p + 4, m->val, m->val_len);
        p += 4 + m->val_len;
        break;
    case DSM_RDV_ABORT:
    case DSM_RDV_ERROR:
        if (m->val_len > DSM_RDV_TEXT_MAX)
            return 0;
        p[0] = (uint8_t)m->val_len;
        p[1] = (uint8_t)(m->val_len >> 8);
        memcpy(p + 2, m->val, m->val_len);
        p += 2 + m->val_len;
        break;
    case DSM_RDV_NOTFOUND:
    case DSM_RDV_FENCE:
    case DSM_RDV_FENCE_DONE:
    case DSM_RDV_FIN:
        break;
    default:
        return 0;
    }
    size_t body = (size_t)(p - out - 4);
    dsm_le32_put(out, (uint32_t)body);
    return body + 4;
}

int dsm_rdv_msg_dec(const uint8_t *buf, size_t avail, dsm_rdv_msg_t *m, size_t *used, const char **why)
{
    if (avail < 4)
        return DSM_RDV_NEED_MORE;
    uint32_t body = dsm_le32_get(buf);
    if (body == 0 || body > DSM_RDV_MSG_MAX) {
        *why = "message length out of bounds";
        return DSM_EPROTO;
    }
    if (avail < 4 + (size_t)body)
        return DSM_RDV_NEED_MORE;
    const uint8_t *p = buf + 5, *end = buf + 4 + body;
    memset(m, 0, sizeof *m);
    m->op = buf[4];
    size_t n;
    switch (m->op) {
    case DSM_RDV_HELLO:
        if (end - p != 12)
            goto bad_len;
        m->proto = dsm_le32_get(p);
        m->rank = dsm_le32_get(p + 4);
        m->size = dsm_le32_get(p + 8);
        break;
    case DSM_RDV_WELCOME:
        if (end - p != 8)
            goto bad_len;
        m->job_id = dsm_le64_get(p);
        break;
    case DSM_RDV_GET:
        if (end - p < 4)
            goto bad_len;
        m->rank = dsm_le32_get(p);
        p += 4;
        /* fall through */
    case DSM_RDV_PUT:
        if (end - p < 2)
            goto bad_len;
        n = (size_t)p[0] | (size_t)p[1] << 8;
        if ((size_t)(end - p - 2) < n)
            goto bad_len;
        if (!key_ok((const char *)p + 2, n)) {
            *why = "invalid key";
            return DSM_EPROTO;
        }
        m->key = (const char *)p + 2;
        m->key_len = n;
        p += 2 + n;
        if (m->op == DSM_RDV_GET) {
            if (p != end)
                goto bad_len;
            break;
        }
        /* fall through */
    case DSM_RDV_VALUE:
        if (end - p < 4)
            goto bad_len;
        n = dsm_le32_get(p);
        if (n > DSM_RDV_VAL_MAX || (size_t)(end - p - 4) != n)
            goto bad_len;
        m->val = p + 4;
        m->val_len = n;
        break;
    case DSM_RDV_ABORT:
    case DSM_RDV_ERROR:
        if (end - p < 2)
            goto bad_len;
        n = (size_t)p[0] | (size_t)p[1] << 8;
        if (n > DSM_RDV_TEXT_MAX || (size_t)(end - p - 2) != n)
            goto bad_len;
        m->val = p + 2;
        m->val_len = n;
        break;
    case DSM_RDV_NOTFOUND:
    case DSM_RDV_FENCE:
    case DSM_RDV_FENCE_DONE:
    case DSM_RDV_FIN:
        if (p != end)
            goto bad_len;
        break;
    default:
        *why = "unknown operation";
        return DSM_EPROTO;
    }
    *used = 4 + body;
    return DSM_OK;
bad_len:
    *why = "field lengths do not match the message length";
    return DSM_EPROTO;
}

/* The store: a chained hash table; the rendezvous holds a few keys per rank, so no resizing below 64K ranks. */
#define STORE_BUCKETS 4096u

struct rdv_entry {
    struct rdv_entry *next;
    uint32_t rank;
    size_t key_len, val_len;
    void *val;
    char key[];
};

struct dsm_rdv_store {
    struct rdv_entry *bucket[STORE_BUCKETS];
    size_t count;
};

static uint32_t store_hash(uint32_t rank, const char *key, size_t n)
{
    uint32_t h = 2166136261u ^ rank;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)key[i]) * 16777619u;
    return h % STORE_BUCKETS;
}

dsm_rdv_store_t *dsm_rdv_store_create(void)
{
    return calloc(1, sizeof(dsm_rdv_store_t));
}

void dsm_rdv_store_destroy(dsm_rdv_store_t *s)
{
    if (!s)
        return;
    for (size_t b = 0; b < STORE_BUCKETS; b++) {
        struct rdv_entry *e = s->bucket[b], *next;
        for (; e; e = next) {
            next = e->next;
            free(e->val);
            free(e);
        }
    }
    free(s);
}

static struct rdv_entry *store_find(const dsm_rdv_store_t *s, uint32_t rank, const char *key, size_t n)
{
    for (struct rdv_entry *e = s->bucket[store_hash(rank, key, n)]; e; e = e->next)
        if (e->rank == rank && e->key_len == n && memcmp(e->key, key, n) == 0)
            return e;
    return NULL;
}

int dsm_rdv_store_put(dsm_rdv_store_t *s, uint32_t rank, const char *key, size_t key_len, const void *val,
                      size_t val_len)
{
    void *copy = malloc(val_len ? val_len : 1);
    if (!copy)
        return DSM_ENOMEM;
    memcpy(copy, val, val_len);
    struct rdv_entry *e = store_find(s, rank, key, key_len);
    if (!e) {
        e = malloc(sizeof *e + key_len);
        if (!e) {
            free(copy);
            return DSM_ENOMEM;
        }
        uint32_t b = store_hash(rank, key, key_len);
        e->rank = rank;
        e->key_len = key_len;
        memcpy(e->key, key, key_len);
        e->val = NULL;
        e->next = s->bucket[b];
        s->bucket[b] = e;
        s->count++;
    }
    free(e->val);
    e->val = copy;
    e->val_len = val_len;
    return DSM_OK;
}

const void *dsm_rdv_store_get(const dsm_rdv_store_t *s, uint32_t rank, const char *key, size_t key_len,
                              size_t *val_len)
{
    struct rdv_entry *e = store_find(s, rank, key, key_len);
    if (!e)
        return NULL;
    *val_len = e->val_len;
    return e->val;
}

size_t dsm_rdv_store_count(const dsm_rdv_store_t *s)
{
    return s->count;
}
