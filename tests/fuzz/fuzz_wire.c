/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the frame decoder of transport/wire.h, fed a byte stream as a provider reads it. Every frame
 * the decoder accepts must lie within the input, re-encode to the same header bytes, and have a message header
 * that the per-type decoders read without leaving it. Build and run: make fuzz (tests/fuzz/Makefile.inc).
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "transport/transport.h"
#include "transport/wire.h"

/* A header the decoder accepted has the length its type needs, and decoding then encoding it gives its bytes
 * back. */
#define ROUNDTRIP(bad_len_x, type_x, size_x, dec_x, enc_x) \
    do { \
        if (bad_len_x) \
            abort(); \
        type_x m_; \
        dec_x(mh, &m_); \
        uint8_t b_[size_x]; \
        enc_x(b_, &m_); \
        if (memcmp(b_, mh, sizeof b_) != 0) \
            abort(); \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The first byte picks the limits, so both small and large jobs are explored. */
    if (size < 1)
        return 0;
    dsm_wire_limits_t lim = {.nranks = 1u + data[0] % 130u,
                             .payload_max = data[0] & 0x80 ? DSM_TP_AM_PAYLOAD_MAX : 4096};
    data++;
    size--;
    size_t off = 0;
    while (off < size) {
        dsm_wire_hdr_t h;
        const char *why = NULL;
        int rc = dsm_wire_hdr_dec(data + off, size - off, &lim, &h, &why);
        if (rc == DSM_WIRE_NEED_MORE)
            break;
        if (rc != DSM_OK) {
            if (!why)
                abort(); /* a refusal always says why */
            break;
        }
        if (h.src >= lim.nranks || h.payload_len > lim.payload_max || h.hdr_len > DSM_WIRE_HDR_MAX)
            abort();
        uint8_t re[DSM_WIRE_HDR_SIZE];
        dsm_wire_hdr_enc(re, &h);
        if (memcmp(re, data + off, DSM_WIRE_HDR_SIZE) != 0)
            abort();
        size_t total = DSM_WIRE_HDR_SIZE + (size_t)h.hdr_len + h.payload_len;
        if (size - off < total)
            break;
        /* The message header, copied to a buffer of exactly its length so a read past it is caught. */
        uint8_t *mh = malloc(h.hdr_len ? h.hdr_len : 1);
        if (!mh)
            return 0;
        memcpy(mh, data + off + DSM_WIRE_HDR_SIZE, h.hdr_len);
        switch (h.type) {
        case DSM_WIRE_HELLO:
        case DSM_WIRE_HELLO_ACK:
            ROUNDTRIP(h.hdr_len != DSM_WIRE_HELLO_SIZE, dsm_wire_hello_t, DSM_WIRE_HELLO_SIZE, dsm_wire_hello_dec,
                      dsm_wire_hello_enc);
            break;
        case DSM_WIRE_PUT:
        case DSM_WIRE_PUT_NOTIFY:
        case DSM_WIRE_GET:
        case DSM_WIRE_REPLY:
            ROUNDTRIP(h.hdr_len < DSM_WIRE_RMA_SIZE, dsm_wire_rma_t, DSM_WIRE_RMA_SIZE, dsm_wire_rma_dec,
                      dsm_wire_rma_enc);
            break;
        case DSM_WIRE_ATOMIC:
            ROUNDTRIP(h.hdr_len != DSM_WIRE_ATOMIC_SIZE, dsm_wire_atomic_t, DSM_WIRE_ATOMIC_SIZE,
                      dsm_wire_atomic_dec, dsm_wire_atomic_enc);
            break;
        case DSM_WIRE_LOST:
            if (h.hdr_len != 4)
                abort();
            (void)dsm_le32_get(mh);
            break;
        default:
            break;
        }
        free(mh);
        off += total;
    }
    return 0;
}
