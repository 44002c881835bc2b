/* SPDX-License-Identifier: MIT */
/* futex.h - wait on and wake a 32-bit word (Linux futex, private to the process); used by the core and providers. */
#ifndef DSM_FUTEX_H
#define DSM_FUTEX_H

#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Wait while *word == old, at most timeout_ms (< 0: no limit). Returns 0, or -1 on timeout. Spurious wake-ups
 * happen: callers re-check their condition. */
static inline int dsm_futex_wait(uint32_t *word, uint32_t old, int timeout_ms)
{
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000};
    long r = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, old, timeout_ms < 0 ? NULL : &ts, NULL, 0);
    return r < 0 && errno == ETIMEDOUT ? -1 : 0;
}

static inline void dsm_futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

#endif /* DSM_FUTEX_H */
