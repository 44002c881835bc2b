/* SPDX-License-Identifier: MIT */
/* Unit tests of libdsm/rdv_proto.c: the rendezvous messages (round trips, truncation, bad lengths and keys)
 * and the server's store (put, replace, get, absent keys, many ranks). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/rdv_proto.h"
#include "tests/tap.h"
#include "transport/wire.h"

static uint8_t buf[4 + DSM_RDV_MSG_MAX];

static int roundtrip(const dsm_rdv_msg_t *in, dsm_rdv_msg_t *out)
{
    size_t n = dsm_rdv_msg_enc(buf, in), used = 0;
    const char *why;
    if (!n)
        return -100;
    for (size_t k = 0; k < n; k++)
        if (dsm_rdv_msg_dec(buf, k, out, &used, &why) != DSM_RDV_NEED_MORE)
            return -200;
    int rc = dsm_rdv_msg_dec(buf, n, out, &used, &why);
    return rc == DSM_OK && used == n ? DSM_OK : rc;
}

int main(void)
{
    dsm_rdv_msg_t m, o;
    const char *why;
    size_t used;

    m = (dsm_rdv_msg_t){.op = DSM_RDV_HELLO, .proto = 1, .rank = 3, .size = 8};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.rank == 3 && o.size == 8 && o.proto == 1,
           "HELLO round trip (and every prefix needs more)");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_WELCOME, .job_id = 0xabcdef0123456789ull};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.job_id == m.job_id, "WELCOME round trip");
    uint8_t val[DSM_RDV_VAL_MAX];
    for (size_t i = 0; i < sizeof val; i++)
        val[i] = (uint8_t)(i * 7);
    m = (dsm_rdv_msg_t){.op = DSM_RDV_PUT, .key = "tp.tcp", .key_len = 6, .val = val, .val_len = sizeof val};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.key_len == 6 && !memcmp(o.key, "tp.tcp", 6) &&
               o.val_len == sizeof val && !memcmp(o.val, val, sizeof val), "PUT of the largest value round trip");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_GET, .rank = 7, .key = "k", .key_len = 1};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.rank == 7 && o.key_len == 1, "GET round trip");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_VALUE, .val = val, .val_len = 0};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.val_len == 0, "empty VALUE round trip");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_ABORT, .val = (const uint8_t *)"node 2 lost", .val_len = 11};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.val_len == 11 && !memcmp(o.val, "node 2 lost", 11), "ABORT round trip");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_FENCE};
    tap_ok(roundtrip(&m, &o) == DSM_OK && o.op == DSM_RDV_FENCE, "FENCE round trip");

    m = (dsm_rdv_msg_t){.op = DSM_RDV_PUT, .key = "bad key", .key_len = 7, .val = val, .val_len = 1};
    tap_is(dsm_rdv_msg_enc(buf, &m), 0, "encoder refuses a key with a space");
    m = (dsm_rdv_msg_t){.op = DSM_RDV_PUT, .key = "k", .key_len = 1, .val = val, .val_len = DSM_RDV_VAL_MAX + 1};
    tap_is(dsm_rdv_msg_enc(buf, &m), 0, "encoder refuses an oversized value");

    /* Malformed input. */
    uint8_t b[64] = {0};
    tap_is(dsm_rdv_msg_dec(b, 4, &o, &used, &why), DSM_EPROTO, "zero length refused");
    dsm_le32_put(b, DSM_RDV_MSG_MAX + 1);
    tap_is(dsm_rdv_msg_dec(b, 4, &o, &used, &why), DSM_EPROTO, "length over the maximum refused at once");
    dsm_le32_put(b, 1);
    b[4] = 0;
    tap_is(dsm_rdv_msg_dec(b, 5, &o, &used, &why), DSM_EPROTO, "op 0 refused");
    b[4] = DSM_RDV_OP_MAX + 1;
    tap_is(dsm_rdv_msg_dec(b, 5, &o, &used, &why), DSM_EPROTO, "unknown op refused");
    dsm_le32_put(b, 5);
    b[4] = DSM_RDV_HELLO;
    tap_is(dsm_rdv_msg_dec(b, 9, &o, &used, &why), DSM_EPROTO, "short HELLO refused");
    /* A PUT whose key length runs past the message. */
    dsm_le32_put(b, 1 + 2 + 3 + 4);
    b[4] = DSM_RDV_PUT;
    b[5] = 200;
    b[6] = 0;
    memcpy(b + 7, "abc", 3);
    dsm_le32_put(b + 10, 0);
    tap_is(dsm_rdv_msg_dec(b, 14, &o, &used, &why), DSM_EPROTO, "key length past the message refused");
    b[5] = 3;
    dsm_le32_put(b + 10, 1);
    tap_is(dsm_rdv_msg_dec(b, 14, &o, &used, &why), DSM_EPROTO, "value length past the message refused");
    dsm_le32_put(b + 10, 0);
    tap_is(dsm_rdv_msg_dec(b, 14, &o, &used, &why), DSM_OK, "the same PUT with consistent lengths accepted");
    b[8] = '\n';
    tap_is(dsm_rdv_msg_dec(b, 14, &o, &used, &why), DSM_EPROTO, "key with a control byte refused");
    dsm_le32_put(b, 2);
    b[4] = DSM_RDV_FENCE;
    tap_is(dsm_rdv_msg_dec(b, 6, &o, &used, &why), DSM_EPROTO, "FENCE with trailing bytes refused");

    /* Two messages back to back are consumed one at a time. */
    size_t n1 = dsm_rdv_msg_enc(buf, &(dsm_rdv_msg_t){.op = DSM_RDV_FENCE});
    size_t n2 = dsm_rdv_msg_enc(buf + n1, &(dsm_rdv_msg_t){.op = DSM_RDV_FIN});
    tap_ok(dsm_rdv_msg_dec(buf, n1 + n2, &o, &used, &why) == DSM_OK && used == n1 && o.op == DSM_RDV_FENCE &&
               dsm_rdv_msg_dec(buf + used, n2, &o, &used, &why) == DSM_OK && o.op == DSM_RDV_FIN,
           "back-to-back messages decode in order");

    /* The store. */
    dsm_rdv_store_t *s = dsm_rdv_store_create();
    size_t vl;
    tap_ok(dsm_rdv_store_get(s, 0, "a", 1, &vl) == NULL, "absent key is NULL");
    tap_is(dsm_rdv_store_put(s, 0, "a", 1, "x", 1), DSM_OK, "put");
    tap_is(dsm_rdv_store_put(s, 1, "a", 1, "yy", 2), DSM_OK, "same key, other rank");
    const char *v = dsm_rdv_store_get(s, 0, "a", 1, &vl);
    tap_ok(v && vl == 1 && v[0] == 'x', "rank 0's value");
    v = dsm_rdv_store_get(s, 1, "a", 1, &vl);
    tap_ok(v && vl == 2 && !memcmp(v, "yy", 2), "rank 1's value is its own");
    dsm_rdv_store_put(s, 0, "a", 1, "zzz", 3);
    v = dsm_rdv_store_get(s, 0, "a", 1, &vl);
    tap_ok(v && vl == 3 && !memcmp(v, "zzz", 3) && dsm_rdv_store_count(s) == 2, "put replaces, count stays");
    tap_ok(dsm_rdv_store_get(s, 0, "ab", 2, &vl) == NULL && dsm_rdv_store_get(s, 2, "a", 1, &vl) == NULL,
           "prefix and other rank miss");
    int ok = 1;
    char key[32];
    for (uint32_t r = 0; r < 20000; r++) {
        int kl = snprintf(key, sizeof key, "tp.%u", r % 7);
        ok &= dsm_rdv_store_put(s, r, key, (size_t)kl, &r, sizeof r) == DSM_OK;
    }
    for (uint32_t r = 0; r < 20000; r++) {
        int kl = snprintf(key, sizeof key, "tp.%u", r % 7);
        const uint32_t *got = dsm_rdv_store_get(s, r, key, (size_t)kl, &vl);
        ok &= got && vl == sizeof r && *got == r;
    }
    tap_ok(ok && dsm_rdv_store_count(s) == 20002, "20000 ranks' keys stored and found");
    dsm_rdv_store_destroy(s);
    dsm_rdv_store_destroy(NULL);
    return tap_done();
}
