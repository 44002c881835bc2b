/* SPDX-License-Identifier: MIT */
/* wait.h - waiting for a word to change, per DSM_WAIT (wait.c). */
#ifndef DSM_WAIT_H
#define DSM_WAIT_H

#include <stdint.h>

#include "libdsm/settings.h"

extern int dsm_wait_mode;

/* Wait until *word != old, at most timeout_ms. Returns 0 when it changed (or may have: callers re-check),
 * -1 on timeout. */
int dsm_wait_change(uint32_t *word, uint32_t old, int timeout_ms);
/* Wake the threads in dsm_wait_change on word, after the caller changed it; no system call when none sleeps.
 * Only for words that are waited on with dsm_wait_change. */
void dsm_wake_change(uint32_t *word);
/* Pick the mode: DSM_WAIT if set, else block when ranks_here exceeds the cores, else adaptive. */
void dsm_wait_choose(int configured, int ranks_here);
const char *dsm_wait_name(int mode);

#endif /* DSM_WAIT_H */
