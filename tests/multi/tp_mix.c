/* SPDX-License-Identifier: MIT */
/*
 * Which provider serves each pair, and that every pair works through it (issue 9, DESIGN.md 4.4).
 *
 * Expected providers: DSM_TEST_GROUPS="0,1/2,3" names the ranks of each host (netns.sh runs two namespaces):
 * pairs inside a group must use shm, pairs across groups tcp. Without it, every pair must use the one provider
 * DSM_TRANSPORT names. Then every pair exchanges active messages, one-sided operations and coherent pages, and
 * rank 0 prints the pairs with their providers.
 */
#include "config.h"

#include <unistd.h>

#include "libdsm/stats.h"
#include "tests/multi/mt.h"
#include "transport/wire.h"

enum { AM_HELLO = DSM_AM_TEST_FIRST };

static uint32_t hellos;

static int on_hello(void *arg, int src, uint8_t id, const void *hdr, size_t hl, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)p;
    if (hl != 4 || len != 0 || dsm_le32_get(hdr) != (uint32_t)src * 7919u)
        return DSM_EPROTO;
    mt_bump(&hellos);
    return DSM_OK;
}

/* The group of rank r in DSM_TEST_GROUPS, -1 when not listed. */
static int group_of(const char *groups, int r)
{
    int g = 0;
    for (const char *s = groups; *s;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            return -1;
        if (v == r)
            return g;
        s = end;
        if (*s == '/')
            g++;
        if (*s)
            s++;
    }
    return -1;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    int me = dsm_rank(), n = dsm_size();
    const char *groups = getenv("DSM_TEST_GROUPS"), *forced = getenv("DSM_TRANSPORT");
    int used_shm = 0, used_tcp = 0;
    for (int p = 0; p < n; p++) {
        const char *tp = dsm_core_peer_transport(p), *want;
        if (p == me)
            want = "self";
        else if (groups)
            want = group_of(groups, me) == group_of(groups, p) ? "shm" : "tcp";
        else if (forced && !strchr(forced, ','))
            want = forced;
        else
            want = tp; /* a list on one host: any provider of it will do */
        MT_CHECK(tp && strcmp(tp, want) == 0, "node %d is reached through %s, expected %s", p, tp ? tp : "nothing",
                 want);
        used_shm |= strcmp(tp, "shm") == 0;
        used_tcp |= strcmp(tp, "tcp") == 0;
    }
    if (groups) {
        const char *mix = used_shm && used_tcp ? "shm+tcp" : used_shm ? "shm" : "tcp";
        MT_CHECK(strcmp(dsm_transport_name(), mix) == 0, "dsm_transport_name() is %s, expected %s",
                 dsm_transport_name(), mix);
    }

    /* Every pair: a message each way, a one-sided add, and pages written by one node and read by all. */
    MT_CHECK(dsm_am_register(AM_HELLO, on_hello, NULL) == DSM_OK, "register");
    int fd;
    uint64_t *words = mt_shared_alloc(4096, &fd);
    dsm_mreg_t *m;
    MT_CHECK(dsm_mreg_create(words, 4096, fd, 0, &m) == DSM_OK, "registration");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint8_t h[4];
    dsm_le32_put(h, (uint32_t)me * 7919u);
    for (int p = 0; p < n; p++) {
        if (p == me)
            continue;
        MT_CHECK(dsm_am_send(p, AM_HELLO, h, 4, NULL, 0) == DSM_OK, "hello to %d", p);
        MT_CHECK(dsm_rma_atomic(p, DSM_TP_ATOMIC_FADD, m, 0, (uint64_t)me + 1, 0, NULL) == DSM_OK, "add at %d", p);
    }
    mt_wait_at_least(&hellos, (uint32_t)(n - 1), "hellos");
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t want = (uint64_t)n * (uint64_t)(n + 1) / 2 - (uint64_t)(me + 1);
    MT_CHECK(__atomic_load_n(&words[0], __ATOMIC_SEQ_CST) == want, "one-sided adds: %llu, expected %llu",
             (unsigned long long)words[0], (unsigned long long)want);

    uint64_t *pages = dsm_alloc((size_t)n * 4096);
    MT_CHECK(pages, "dsm_alloc: %s", dsm_strerror(dsm_last_error()));
    for (int i = 0; i < 512; i++)
        pages[(size_t)me * 512 + (size_t)i] = (uint64_t)me << 32 | (uint64_t)i;
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (int p = 0; p < n; p++)
        for (int i = 0; i < 512; i++)
            MT_CHECK(pages[(size_t)p * 512 + (size_t)i] == ((uint64_t)p << 32 | (uint64_t)i),
                     "page of node %d, word %d", p, i);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    MT_CHECK(dsm_dealloc(pages) == DSM_OK, "dealloc");

    /* A page homed here, read by every other node: over a provider with native RMA (shm) or with reply slots
     * (shm, tcp: the reply frame carries it) each copy is written straight into the reader's memory; otherwise
     * it travels as a message. */
    int native = 0, direct = 0;
    for (int p = 0; p < n; p++) {
        native += p != me && ((dsm_core_peer_caps(p) & DSM_TP_CAP_RMA_NATIVE) || dsm_core_peer_replies(p));
        /* The pairs with reply slots answer the faulting thread itself; the others through progress. */
        direct += dsm_core_peer_replies(p);
    }
    uint64_t **mine = calloc((size_t)n, sizeof *mine);
    for (int h = 0; h < n; h++)
        MT_CHECK((mine[h] = dsm_alloc_home(4096, h)) != NULL, "dsm_alloc_home(%d)", h);
    *mine[me] = 1000u + (uint64_t)me;
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t placed0 = dsm_ctr_get(DSM_CTR_PAGE_PLACED), direct0 = dsm_ctr_get(DSM_CTR_DIRECT);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    for (int h = 0; h < n; h++)
        MT_CHECK(*mine[h] == 1000u + (uint64_t)h, "page homed at %d", h);
    MT_CHECK(dsm_barrier() == DSM_OK, "barrier");
    uint64_t placed = dsm_ctr_get(DSM_CTR_PAGE_PLACED) - placed0;
    MT_CHECK(placed == (uint64_t)native, "%llu pages placed straight into readers' memory, expected %d",
             (unsigned long long)placed, native);
    uint64_t direct_n = dsm_ctr_get(DSM_CTR_DIRECT) - direct0;
    MT_CHECK(direct_n == (uint64_t)direct, "%llu grants reached the faulting thread directly, expected %d",
             (unsigned long long)direct_n, direct);
    for (int h = 0; h < n; h++)
        MT_CHECK(dsm_dealloc(mine[h]) == DSM_OK, "dealloc");
    free(mine);
    MT_CHECK(dsm_mreg_destroy(m) == DSM_OK, "deregister");
    if (me == 0) {
        printf("pairs of node 0 over %s:", dsm_transport_name());
        for (int p = 1; p < n; p++)
            printf(" 0-%d %s", p, dsm_core_peer_transport(p));
        printf("\n");
    }
    mt_finalize();
    return 0;
}
