/* SPDX-License-Identifier: MIT */
/* error.h - setting the per-thread status that dsm_last_error() returns. */
#ifndef DSM_ERROR_H
#define DSM_ERROR_H

void dsm_set_last_error(int status);

#endif /* DSM_ERROR_H */
