/* SPDX-License-Identifier: MIT */
/* One-sided operations on registered memory: put, put-with-notify and get with their data checked, four threads
 * per node doing them at once, fetch-add and compare-swap from every thread of every node on one word (the
 * totals must be exact and each thread's old values increasing), and refused bad requests. */
#include "config.h"

#include <pthread.h>

#include "tests/multi/mt.h"
#include "transport/wire.h"

/* Each rank owns one slot of every rank's buffer. */
#define SLOT (128u << 10)
#define THREADS 4
#define ATOMICS 150
#define ROUNDS 40
#define CHUNK 2048

enum { AM_NOTIFY = DSM_AM_TEST_FIRST };

static dsm_mreg_t *data, *words;
static uint8_t *mem;
static uint64_t *ctr;
static uint32_t notified, bad_notify;

static int on_notify(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg; (void)id; (void)p;
    if (hl != 4 || len != 0)
        return DSM_EPROTO;
    /* The data of the put must already be in place when the notification runs. */
    uint32_t tag = dsm_le32_get(hdr);
    size_t slot = (size_t)src * SLOT;
    if (!mt_match(mem + slot + 4096, 1000, (uint32_t)src, tag, 99))
        mt_bump(&bad_notify);
    mt_bump(&notified);
    return DSM_OK;
}

static void *worker(void *arg)
{
    uint32_t t = (uint32_t)(uintptr_t)arg;
    int me = dsm_rank(), n = dsm_size();
    int right = (me + 1) % n;
    size_t slot = (size_t)me * SLOT + 16384 + t * CHUNK;
    uint8_t out[CHUNK], in[CHUNK];
    for (uint32_t r = 0; r < ROUNDS; r++) {
        mt_fill(out, CHUNK, (uint32_t)me * 16 + t, r, 5);
        MT_CHECK(dsm_rma_put(right, out, CHUNK, data, slot) == DSM_OK, "put");
        memset(in, 0, sizeof in);
        MT_CHECK(dsm_rma_get(right, in, CHUNK, data, slot) == DSM_OK, "get");
        MT_CHECK(memcmp(in, out, CHUNK) == 0, "thread %u round %u: get returned other data than put", t, r);
    }
    if (me != 0) {
        uint64_t last = 0, old;
        for (int i = 0; i < ATOMICS; i++) {
            { int arc = dsm_rma_atomic(0, DSM_TP_ATOMIC_FADD, words, 0, 1, 0, &old); MT_CHECK(arc == DSM_OK, "fetch-add: %s", dsm_strerror(arc)); }
            MT_CHECK(i == 0 || old > last, "fetch-add old values must increase: %llu after %llu",
                     (unsigned long long)old, (unsigned long long)last);
            last = old;
        }
        uint64_t guess = 0;
        for (int done = 0; done < ATOMICS;) {
            MT_CHECK(dsm_rma_atomic(0, DSM_TP_ATOMIC_CSWAP, words, 8, guess + 1, guess, &old) == DSM_OK, "cas");
            if (old == guess)
                done++;
            guess = old == guess ? guess + 1 : old;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    int left = (me + n - 1) % n, right = (me + 1) % n;
    size_t bufsize = (size_t)n * SLOT;
    int mem_fd, ctr_fd;
    mem = mt_shared_alloc(bufsize, &mem_fd);
    ctr = mt_shared_alloc(4096, &ctr_fd);
    MT_CHECK(dsm_am_register(AM_NOTIFY, on_notify, NULL) == DSM_OK, "register");
    MT_CHECK(dsm_mreg_create(mem, bufsize, mem_fd, 0, &data) == DSM_OK, "registration");
    MT_CHECK(dsm_mreg_create(ctr, 4096, ctr_fd, 0, &words) == DSM_OK, "registration");
    size_t slot = (size_t)me * SLOT;

    /* A large put to the right neighbour, checked by it locally, then read back with get. */
    size_t big = SLOT - 65536;
    uint8_t *out = malloc(big), *in = malloc(big);
    mt_fill(out, big, (uint32_t)me, 1, 2);
    MT_CHECK(dsm_rma_put(right, out, big, data, slot + 65536) == DSM_OK, "big put");
    MT_CHECK(dsm_rma_flush(right) == DSM_OK, "flush");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(mt_match(mem + (size_t)left * SLOT + 65536, big, (uint32_t)left, 1, 2),
             "data put by rank %d is not in my memory", left);
    MT_CHECK(dsm_rma_get(right, in, big, data, slot + 65536) == DSM_OK, "big get");
    MT_CHECK(memcmp(in, out, big) == 0, "get of %zu bytes differs", big);

    /* Put with notification: the handler sees the data in place. */
    uint8_t note[1000], tag[4];
    mt_fill(note, sizeof note, (uint32_t)me, 7, 99);
    dsm_le32_put(tag, 7);
    dsm_tp_req_t req;
    MT_CHECK(dsm_rma_put_notify_nb(right, note, sizeof note, data, slot + 4096, AM_NOTIFY, tag, 4, &req) == DSM_OK,
             "put-notify");
    MT_CHECK(dsm_req_wait(&req) == DSM_OK, "put-notify completion");
    mt_wait_at_least(&notified, 1, "notification");
    MT_CHECK(bad_notify == 0, "notification ran before its data was in place");

    /* Concurrent callers. */
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    mt_run_threads(THREADS, worker);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t want = (uint64_t)(n - 1) * THREADS * ATOMICS, v[2];
    if (me == 0) {
        MT_CHECK(__atomic_load_n(&ctr[0], __ATOMIC_SEQ_CST) == want, "fetch-add total %llu, want %llu",
                 (unsigned long long)ctr[0], (unsigned long long)want);
        MT_CHECK(__atomic_load_n(&ctr[1], __ATOMIC_SEQ_CST) == want, "compare-swap total %llu, want %llu",
                 (unsigned long long)ctr[1], (unsigned long long)want);
    } else {
        MT_CHECK(dsm_rma_get(0, v, sizeof v, words, 0) == DSM_OK, "get counters");
        MT_CHECK(v[0] == want && v[1] == want, "remote view of the counters: %llu %llu, want %llu",
                 (unsigned long long)v[0], (unsigned long long)v[1], (unsigned long long)want);
    }

    /* Bad requests are refused, locally or by the target, and change nothing. */
    MT_CHECK(dsm_rma_put(right, out, 16, data, bufsize - 8) == DSM_EINVAL, "put past the end is refused");
    MT_CHECK(dsm_rma_atomic(right, DSM_TP_ATOMIC_FADD, words, 4, 1, 0, NULL) == DSM_EINVAL, "misaligned atomic");
    MT_CHECK(dsm_rma_get(me, in, 8, data, 0) == DSM_EINVAL, "one-sided to self is refused");
    dsm_mreg_t forged = *data;
    forged.rkey = malloc((size_t)n * sizeof *forged.rkey);
    memcpy(forged.rkey, data->rkey, (size_t)n * sizeof *forged.rkey);
    forged.rkey[right].key += 1000;
    MT_CHECK(dsm_rma_put(right, out, 64, &forged, 0) == DSM_EINVAL, "put with an unknown key refused by the target");
    forged.rkey[right].key = data->rkey[right].key;
    forged.rkey[right].addr += 4096;
    MT_CHECK(dsm_rma_get(right, in, 64, &forged, 0) == DSM_EINVAL, "get with a wrong address refused by the target");
    MT_CHECK(dsm_rma_atomic(right, DSM_TP_ATOMIC_FADD, &forged, 0, 1, 0, NULL) == DSM_EINVAL, "forged atomic refused");
    free(forged.rkey);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(mt_match(mem + (size_t)left * SLOT + 65536, big, (uint32_t)left, 1, 2),
             "refused requests changed memory");

    MT_CHECK(dsm_mreg_destroy(words) == DSM_OK, "deregister");
    MT_CHECK(dsm_mreg_destroy(data) == DSM_OK, "deregister");
    if (me == 0)
        printf("rma ok: %zu-byte put/get, put-notify, %llu fetch-adds and compare-swaps\n", big,
               (unsigned long long)want);
    free(out);
    free(in);
    mt_finalize();
    return 0;
}
