/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the rendezvous protocol of libdsm/rdv_proto.h as dsmrun's server and libdsm's client read
 * it. Every message the decoder accepts must lie within the input, re-encode to the same bytes, and a PUT must
 * be stored and read back whole. Build and run: make fuzz (tests/fuzz/Makefile.inc).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "libdsm/rdv_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[4 + DSM_RDV_MSG_MAX];
    dsm_rdv_store_t *st = dsm_rdv_store_create();
    if (!st)
        return 0;
    size_t off = 0;
    while (off < size) {
        dsm_rdv_msg_t m;
        size_t used = 0;
        const char *why = NULL;
        int rc = dsm_rdv_msg_dec(data + off, size - off, &m, &used, &why);
        if (rc == DSM_RDV_NEED_MORE)
            break;
        if (rc != DSM_OK) {
            if (!why)
                abort();
            break;
        }
        if (used == 0 || used > size - off || used > 4 + DSM_RDV_MSG_MAX || m.key_len > DSM_RDV_KEY_MAX)
            abort();
        if (m.key && (m.key < (const char *)data + off || m.key + m.key_len > (const char *)data + off + used))
            abort();
        if (m.val && (m.val < data + off || m.val + m.val_len > data + off + used))
            abort();
        size_t n = dsm_rdv_msg_enc(out, &m);
        if (n != used || memcmp(out, data + off, n) != 0)
            abort();
        if (m.op == DSM_RDV_PUT) {
            if (dsm_rdv_store_put(st, m.rank, m.key, m.key_len, m.val, m.val_len) == DSM_OK) {
                size_t vl = 0;
                const void *v = dsm_rdv_store_get(st, m.rank, m.key, m.key_len, &vl);
                if (!v || vl != m.val_len || (vl && memcmp(v, m.val, vl) != 0))
                    abort();
            }
        }
        off += used;
    }
    dsm_rdv_store_destroy(st);
    return 0;
}
