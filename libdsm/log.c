/* SPDX-License-Identifier: MIT */
/*
 * log.c - formatting and output of log lines (log.h). One write(2) per line so lines of threads do not mix.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libdsm/log.h"

int dsm_log_level = DSM_LOG_WARN;
static int log_rank = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

const char *dsm_log_level_name(int level)
{
    if (level < 0 || level > DSM_LOG_TRACE)
        return "?";
    return level_names[level];
}

void dsm_log_set_rank(int rank)
{
    log_rank = rank;
}

static size_t log_prefix(char *buf, size_t len)
{
    int n = snprintf(buf, len, "libdsm[%d:%d] ", log_rank, (int)getpid());
    return n < 0 ? 0 : (size_t)n >= len ? len - 1 : (size_t)n;
}

void dsm_log_emit(int level, const char *prov, const char *fmt, ...)
{
    char buf[1024];
    size_t n = log_prefix(buf, sizeof buf);
    int m = snprintf(buf + n, sizeof buf - n, "%s: %s%s", dsm_log_level_name(level), prov ? prov : "",
                     prov ? ": " : "");
    if (m > 0)
        n += (size_t)m < sizeof buf - n ? (size_t)m : sizeof buf - n - 1;
    va_list ap;
    va_start(ap, fmt);
    m = vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    va_end(ap);
    if (m > 0)
        n += (size_t)m < sizeof buf - n ? (size_t)m : sizeof buf - n - 1;
    if (n >= sizeof buf - 1)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w;
}

/* Async-signal-safe: no stdio, no locks; the pid and rank are formatted by hand. */
static size_t fmt_int(char *out, long v)
{
    char tmp[24];
    size_t n = 0, i = 0;
    int neg = v < 0;
    unsigned long u = neg ? -(unsigned long)v : (unsigned long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u && n < sizeof tmp);
    if (neg)
        out[i++] = '-';
    while (n)
        out[i++] = tmp[--n];
    return i;
}

void dsm_log_raw(const char *msg)
{
    char buf[512];
    size_t n = 0;
    memcpy(buf, "libdsm[", 7);
    n = 7;
    n += fmt_int(buf + n, log_rank);
    buf[n++] = ':';
    n += fmt_int(buf + n, (long)getpid());
    buf[n++] = ']';
    buf[n++] = ' ';
    size_t l = strlen(msg);
    if (l > sizeof buf - n - 1)
        l = sizeof buf - n - 1;
    memcpy(buf + n, msg, l);
    n += l;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w;
}
