/* SPDX-License-Identifier: MIT */
/*
 * secret.h - where a node gets the per-job secret its connections authenticate with (DESIGN.md 4.7).
 */
#ifndef DSM_SECRET_H
#define DSM_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "libdsm/boot.h"
#include "libdsm/settings.h"
#include "transport/auth.h"

/* Fill key with the job's secret, in this order: DSM_SECRET_FILE (a file of mode 0600 or 0400 owned by this
 * user, hashed to a key), the descriptor dsmrun passed in DSM_SECRET_FD, or under PMIx (no file) a key that rank 0
 * makes and publishes through the PMIx store. Every node of a job must take the same path (they share one
 * environment). DSM_OK, or an error code with a one-line message in err naming the cause. */
int dsm_secret_obtain(const dsm_config_t *cfg, dsm_boot_t *b, uint8_t key[DSM_AUTH_KEY_SIZE], char *err,
                      size_t err_len);

/* Read and check a secret file: DSM_OK with the key, else an error naming the file and what is wrong with it. */
int dsm_secret_from_file(const char *path, uint8_t key[DSM_AUTH_KEY_SIZE], char *err, size_t err_len);

#endif /* DSM_SECRET_H */
