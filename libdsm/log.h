/* SPDX-License-Identifier: MIT */
/*
 * log.h - libdsm's logging (STYLE.md 4). Lines go to stderr as "libdsm[rank:pid] level: message", because the
 * logs of many processes interleave. The level test comes before any formatting. dsm_log_raw is for paths that
 * must stay async-signal-safe (fail-stop, the fault handler): a preformatted string and write(2).
 */
#ifndef DSM_LOG_H
#define DSM_LOG_H

#include "transport/transport.h" /* DSM_LOG_* levels */

extern int dsm_log_level;

void dsm_log_set_rank(int rank);
void dsm_log_emit(int level, const char *prov, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Async-signal-safe: writes "libdsm[rank:pid] msg\n" with write(2). */
void dsm_log_raw(const char *msg);
/* Name of a level ("error", ...). */
const char *dsm_log_level_name(int level);

#define dsm_log(level_x, ...) \
    do { \
        if ((level_x) <= dsm_log_level) \
            dsm_log_emit((level_x), NULL, __VA_ARGS__); \
    } while (0)
#define dsm_err(...) dsm_log(DSM_LOG_ERROR, __VA_ARGS__)
#define dsm_warn(...) dsm_log(DSM_LOG_WARN, __VA_ARGS__)
#define dsm_info(...) dsm_log(DSM_LOG_INFO, __VA_ARGS__)
#define dsm_debug(...) dsm_log(DSM_LOG_DEBUG, __VA_ARGS__)

#endif /* DSM_LOG_H */
