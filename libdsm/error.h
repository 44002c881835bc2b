/* SPDX-License-Identifier: MIT */
/* error.h - setting the per-thread status that dsm_last_error() returns. */
#ifndef DSM_ERROR_H
#define DSM_ERROR_H

void dsm_set_last_error(int status);

/* Run the handler of dsm_set_error_handler, if any (dsm_fail_stop calls it once). */
void dsm_error_handler_run(int err, int node);

#endif /* DSM_ERROR_H */
