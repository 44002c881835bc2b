/* SPDX-License-Identifier: MIT */
/*
 * wait.c - how threads wait for replies (DSM_WAIT): spin (lowest latency, burns its core), block (futex at
 * once), adaptive (spin about 20 us, then futex). The default is adaptive, or block when this host runs more
 * ranks than it has cores, where spinning would steal the core of the very rank that must answer.
 * Async-signal-safe: used by the fault path.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/core.h"
#include "libdsm/log.h"
#include "libdsm/wait.h"

int dsm_wait_mode = DSM_WAIT_ADAPTIVE;
static uint32_t sleepers; /* threads in the futex wait of dsm_wait_change */

static const char *const names[] = {"spin", "block", "adaptive"};

const char *dsm_wait_name(int mode)
{
    return mode >= 0 && mode <= 2 ? names[mode] : "?";
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int dsm_wait_change(uint32_t *word, uint32_t old, int timeout_ms)
{
    if (dsm_wait_mode != DSM_WAIT_BLOCK) {
        uint64_t until = now_ns() + (dsm_wait_mode == DSM_WAIT_SPIN ? (uint64_t)timeout_ms * 1000000u : 20000u);
        do {
            for (int i = 0; i < 64; i++) {
                if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != old)
                    return 0;
                __builtin_ia32_pause();
            }
        } while (now_ns() < until);
        if (dsm_wait_mode == DSM_WAIT_SPIN)
            return __atomic_load_n(word, __ATOMIC_ACQUIRE) != old ? 0 : -1;
    }
    /* Counted, so that dsm_wake_change can skip the system call when no thread sleeps (most grants). */
    __atomic_add_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
    int rc = dsm_futex_wait(word, old, timeout_ms);
    __atomic_sub_fetch(&sleepers, 1, __ATOMIC_RELAXED);
    return rc;
}

void dsm_wake_change(uint32_t *word)
{
    /* The caller's store to *word, then this load (a full fence between): either a sleeper counted itself
     * before it, and is woken, or its futex wait finds the new value and does not sleep. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST))
        dsm_futex_wake(word);
}

void dsm_wait_choose(int configured, int ranks_here)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (configured >= 0)
        dsm_wait_mode = configured;
    else
        dsm_wait_mode = cores > 0 && ranks_here > cores ? DSM_WAIT_BLOCK : DSM_WAIT_ADAPTIVE;
    dsm_info("waiting: %s (%s; %d ranks on this host, %ld cores)", dsm_wait_name(dsm_wait_mode),
             configured >= 0 ? "DSM_WAIT" : "default", ranks_here, cores);
}
