/* SPDX-License-Identifier: MIT */
/*
 * heartbeat.c - loss detection for a peer that stops answering without closing its connections (SIGSTOP, a
 * livelocked or hung node, a dead path): every node sends each peer an empty heartbeat message every tenth of
 * DSM_TIMEOUT, and a peer from which nothing came for DSM_TIMEOUT is lost (fail-stop, DESIGN.md 4.7). Every
 * message counts as a sign of life (dsm_hb_heard, from the core's dispatch), not only heartbeats: a heartbeat
 * queued behind a flood of data from a live peer must not condemn it.
 *
 * One thread per node, asleep between ticks (a blocked rank never spins for it). If that thread itself was kept
 * from running for half of DSM_TIMEOUT (this process was stopped, the host overloaded), its silence is its own:
 * the clocks of every peer restart instead of condemning them.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/heartbeat.h"
#include "libdsm/log.h"

static struct {
    int size, rank;
    int64_t timeout_ms, period_ms;
    int64_t *last_rx; /* [size]: when the last message of each peer came (CLOCK_MONOTONIC_COARSE ms) */
    pthread_t thread;
    int running;
    int stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} hb = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Test hook (heartbeat.h): this node sends no heartbeats. Never set by the library itself. */
int dsm_hb_debug_mute;

/* The coarse clock (a few ms of resolution, against periods of 100 ms and more): cheap enough for every message. */
static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void dsm_hb_heard(int src)
{
    int64_t *t = __atomic_load_n(&hb.last_rx, __ATOMIC_ACQUIRE);
    if (t && src >= 0 && src < hb.size)
        __atomic_store_n(&t[src], mono_ms(), __ATOMIC_RELAXED);
}

static int on_heartbeat(void *arg, int src, uint8_t id, const void *hdr, size_t hdr_len, const void *p, size_t len)
{
    (void)arg;
    (void)id;
    (void)hdr;
    (void)p;
    if (hdr_len || len || src < 0 || src >= hb.size)
        return DSM_EPROTO;
    /* The dispatch noted it (dsm_hb_heard). After this node stopped its heartbeats (dsm_finalize), a peer that
     * has not said bye yet still sends some: they are welcome, and the table stays until the next dsm_init. */
    return DSM_OK;
}

int dsm_hb_setup(int rank, int size, int timeout_s)
{
    hb.rank = rank;
    hb.size = size;
    hb.timeout_ms = (int64_t)timeout_s * 1000;
    hb.period_ms = hb.timeout_ms / 10 > 100 ? hb.timeout_ms / 10 : 100;
    free(hb.last_rx);
    if (!(hb.last_rx = calloc((size_t)size, sizeof *hb.last_rx)))
        return DSM_ENOMEM;
    int64_t now = mono_ms();
    for (int p = 0; p < size; p++)
        hb.last_rx[p] = now;
    return dsm_am_register(DSM_AM_HEARTBEAT, on_heartbeat, NULL);
}

/* A host that runs more ranks than it has cores gives each a share of a core, and a peer there may stay silent
 * longer without being stopped or hung (128 ranks on 2 cores, DESIGN.md 4.7): the silence allowed grows by this
 * host's oversubscription, rounded up (a job's ranks are spread alike, so it stands for the peers' hosts too).
 * Heartbeats are still sent every tenth of DSM_TIMEOUT. */
int dsm_hb_scale(int ranks_here)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores <= 0 || ranks_here <= cores)
        return 1;
    int64_t f = (ranks_here + cores - 1) / cores;
    hb.timeout_ms *= f;
    dsm_info("heartbeats: %d ranks on %ld cores here: a peer is lost after %lld s of silence (DSM_TIMEOUT x %lld)",
             ranks_here, cores, (long long)(hb.timeout_ms / 1000), (long long)f);
    return (int)f;
}

static void *hb_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&hb.lock);
    int64_t last_tick = mono_ms();
    while (!hb.stop) {
        int64_t now = mono_ms(), wake = now + hb.period_ms;
        struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
        while (!hb.stop && pthread_cond_timedwait(&hb.cond, &hb.lock, &ts) == 0)
            ;
        if (hb.stop)
            break;
        pthread_mutex_unlock(&hb.lock);
        now = mono_ms();
        int overslept = now - last_tick > hb.period_ms + hb.timeout_ms / 2;
        last_tick = now;
        for (int p = 0; p < hb.size; p++) {
            if (p == hb.rank)
                continue;
            if (overslept)
                __atomic_store_n(&hb.last_rx[p], now, __ATOMIC_RELAXED);
            else if (now - __atomic_load_n(&hb.last_rx[p], __ATOMIC_RELAXED) > hb.timeout_ms && !dsm_core_peer_left(p))
                /* (A peer that said bye sends none: its connection tells whether it left too early.) */
                dsm_fail_stop(p, "nothing heard from it, not even a heartbeat, within DSM_TIMEOUT: the process is "
                                 "stopped, hung or unreachable");
            if (!__atomic_load_n(&dsm_hb_debug_mute, __ATOMIC_RELAXED))
                dsm_am_send(p, DSM_AM_HEARTBEAT, NULL, 0, NULL, 0);
        }
        pthread_mutex_lock(&hb.lock);
    }
    pthread_mutex_unlock(&hb.lock);
    return NULL;
}

int dsm_hb_start(void)
{
    if (hb.size < 2)
        return DSM_OK;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&hb.cond, &ca);
    pthread_condattr_destroy(&ca);
    int64_t now = mono_ms();
    for (int p = 0; p < hb.size; p++)
        __atomic_store_n(&hb.last_rx[p], now, __ATOMIC_RELAXED);
    hb.stop = 0;
    if (pthread_create(&hb.thread, NULL, hb_main, NULL) != 0) {
        pthread_cond_destroy(&hb.cond);
        return DSM_ESYS;
    }
    hb.running = 1;
    return DSM_OK;
}

void dsm_hb_stop(void)
{
    if (hb.running) {
        pthread_mutex_lock(&hb.lock);
        hb.stop = 1;
        pthread_cond_signal(&hb.cond);
        pthread_mutex_unlock(&hb.lock);
        pthread_join(hb.thread, NULL);
        pthread_cond_destroy(&hb.cond);
        hb.running = 0;
    }
    /* last_rx and size stay: heartbeats of peers still arrive (on_heartbeat); dsm_hb_setup replaces them. */
}
