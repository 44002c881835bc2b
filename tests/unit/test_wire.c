/* SPDX-License-Identifier: MIT */
/* Unit tests of transport/wire.c: round trips, and every rejection of the decoder (truncated, oversized, bad
 * fields), byte by byte so the decoder never reads past what it was given. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "tests/tap.h"
#include "transport/transport.h"
#include "transport/wire.h"

static const dsm_wire_limits_t lim = {.nranks = 8, .payload_max = 1u << 20};

static int dec(const uint8_t *b, size_t n, dsm_wire_hdr_t *h, const char **why)
{
    /* Copy into an exact-size heap buffer so ASan catches any read past n. */
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, b, n);
    int rc = dsm_wire_hdr_dec(c, n, &lim, h, why);
    free(c);
    return rc;
}

static void enc(uint8_t *b, uint8_t type, uint32_t src, uint32_t hl, uint32_t pl)
{
    dsm_wire_hdr_t h = {.type = type, .src = src, .hdr_len = hl, .payload_len = pl, .seq = 0x1122334455667788ull};
    dsm_wire_hdr_enc(b, &h);
}

int main(void)
{
    uint8_t b[DSM_WIRE_HDR_SIZE];
    dsm_wire_hdr_t h;
    const char *why = NULL;

    dsm_wire_hdr_t in = {.type = DSM_WIRE_AM, .am_id = 7, .src = 5, .hdr_len = 16, .payload_len = 4096,
                         .seq = 0xfedcba9876543210ull};
    dsm_wire_hdr_enc(b, &in);
    tap_is(dec(b, sizeof b, &h, &why), DSM_OK, "AM header round trip decodes");
    tap_ok(h.type == in.type && h.am_id == 7 && h.src == 5 && h.hdr_len == 16 && h.payload_len == 4096 &&
               h.seq == in.seq, "AM header fields survive the round trip");
    tap_ok(b[0] == 'D' && b[1] == 'S' && b[2] == 'M' && b[3] == 'W', "magic is \"DSMW\" on the wire");
    tap_ok(b[8] == 5 && b[9] == 0 && b[24] == 0x10 && b[31] == 0xfe, "integers are little-endian");

    /* Truncated: every prefix shorter than the header asks for more, never errors or reads past the end. */
    int all_more = 1;
    for (size_t n = 0; n < DSM_WIRE_HDR_SIZE; n++)
        if (dec(b, n, &h, &why) != DSM_WIRE_NEED_MORE)
            all_more = 0;
    tap_ok(all_more, "every truncated header asks for more bytes");

    uint8_t bad[DSM_WIRE_HDR_SIZE];
    memcpy(bad, b, sizeof b);
    bad[0] = 'X';
    tap_is(dec(bad, 4, &h, &why), DSM_EPROTO, "bad magic is refused after 4 bytes");
    tap_is(dec(bad, 2, &h, &why), DSM_WIRE_NEED_MORE, "2 bytes of bad magic are not judged yet");
    memcpy(bad, "GET / HTTP/1.1\r\nHost: x\r\n\r\n.....", sizeof bad);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "an HTTP request is refused");

    memcpy(bad, b, sizeof b);
    bad[4] = DSM_WIRE_VERSION + 1;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "other protocol version refused");
    tap_ok(why && strstr(why, "version"), "reason names the version (%s)", why);

    memcpy(bad, b, sizeof b);
    bad[5] = 0;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "frame type 0 refused");
    bad[5] = DSM_WIRE_TYPE_MAX + 1;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "frame type past the last refused");

    memcpy(bad, b, sizeof b);
    bad[7] = 1;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "non-zero flags refused");
    memcpy(bad, b, sizeof b);
    bad[21] = 1;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "non-zero reserved word refused");

    enc(bad, DSM_WIRE_AM, 8, 0, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "source rank == job size refused");
    enc(bad, DSM_WIRE_AM, 0xffffffffu, 0, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "source rank 2^32-1 refused");

    /* Oversized. */
    enc(bad, DSM_WIRE_AM, 1, 0, (1u << 20) + 1);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "payload one byte over the limit refused");
    enc(bad, DSM_WIRE_AM, 1, 0, 0xffffffffu);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "payload of 4 GiB refused");
    enc(bad, DSM_WIRE_AM, 1, 0, 1u << 20);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_OK, "payload exactly at the limit accepted");
    enc(bad, DSM_WIRE_AM, 1, DSM_TP_AM_HDR_MAX + 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "AM header over the maximum refused");
    enc(bad, DSM_WIRE_AM, 1, DSM_TP_AM_HDR_MAX, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_OK, "AM header at the maximum accepted");

    /* Per-type header sizes and payload rules. */
    enc(bad, DSM_WIRE_HELLO, 1, DSM_WIRE_HELLO_SIZE - 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "short HELLO refused");
    enc(bad, DSM_WIRE_HELLO, 1, DSM_WIRE_HELLO_SIZE, 1);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "HELLO with payload refused");
    enc(bad, DSM_WIRE_HELLO, 1, DSM_WIRE_HELLO_SIZE, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_OK, "well-formed HELLO accepted");
    enc(bad, DSM_WIRE_AUTH, 1, DSM_WIRE_AUTH_SIZE - 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "short AUTH refused");
    enc(bad, DSM_WIRE_AUTH, 1, DSM_WIRE_AUTH_SIZE + 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "long AUTH refused");
    enc(bad, DSM_WIRE_AUTH, 1, DSM_WIRE_AUTH_SIZE, 4);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "AUTH with payload refused");
    enc(bad, DSM_WIRE_AUTH, 1, DSM_WIRE_AUTH_SIZE, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_OK, "well-formed AUTH accepted");
    enc(bad, DSM_WIRE_TYPE_MAX + 1, 1, 0, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "type after the last known one refused");
    enc(bad, DSM_WIRE_ATOMIC, 1, DSM_WIRE_ATOMIC_SIZE + 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "long ATOMIC header refused");
    enc(bad, DSM_WIRE_GET, 1, DSM_WIRE_RMA_SIZE, 8);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "GET carrying a payload refused");
    enc(bad, DSM_WIRE_BYE, 1, 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "BYE with a header refused");
    enc(bad, DSM_WIRE_PUT_NOTIFY, 1, DSM_WIRE_RMA_SIZE + DSM_TP_AM_HDR_MAX + 1, 0);
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "PUT_NOTIFY header over the maximum refused");
    enc(bad, DSM_WIRE_PUT, 1, DSM_WIRE_RMA_SIZE, 0);
    bad[6] = 3;
    tap_is(dec(bad, sizeof bad, &h, &why), DSM_EPROTO, "handler id on a PUT refused");

    /* Message headers round trip. */
    uint8_t mb[DSM_WIRE_HELLO_SIZE > DSM_WIRE_ATOMIC_SIZE ? DSM_WIRE_HELLO_SIZE : DSM_WIRE_ATOMIC_SIZE];
    dsm_wire_hello_t hi = {.job_id = 0x0102030405060708ull, .src = 3, .dst = 1, .size = 4, .proto = 1}, ho;
    for (unsigned i = 0; i < sizeof hi.nonce; i++) {
        hi.nonce[i] = (uint8_t)i;
        hi.mac[i] = (uint8_t)(0xff - i);
    }
    dsm_wire_hello_enc(mb, &hi);
    dsm_wire_hello_dec(mb, &ho);
    tap_ok(memcmp(&hi, &ho, sizeof hi) == 0, "HELLO round trip");
    dsm_wire_rma_t ri = {.key = 9, .len = 4096, .offset = 1ull << 40, .addr = 0x200000000000ull}, ro;
    dsm_wire_rma_enc(mb, &ri);
    dsm_wire_rma_dec(mb, &ro);
    tap_ok(memcmp(&ri, &ro, sizeof ri) == 0, "RMA header round trip");
    dsm_wire_atomic_t ai = {.key = 2, .op = DSM_TP_ATOMIC_CSWAP, .offset = 8, .addr = 64, .operand = ~0ull,
                            .compare = 42}, ao;
    dsm_wire_atomic_enc(mb, &ai);
    dsm_wire_atomic_dec(mb, &ao);
    tap_ok(memcmp(&ai, &ao, sizeof ai) == 0, "ATOMIC header round trip");
    return tap_done();
}
