/* SPDX-License-Identifier: MIT */
/*
 * tap.h - a minimal TAP producer for the unit tests (automake's tap-driver.sh reads it).
 *   tap_ok(cond, "name %d", i);  tap_is(got, want, "name");  return tap_done();
 * The plan is printed at the end, so a test that dies early is reported as failing.
 */
#ifndef DSM_TAP_H
#define DSM_TAP_H

#include <stdarg.h>
#include <stdio.h>

static int tap_n, tap_failed;

static inline int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;
    printf("%sok %d - ", cond ? "" : "not ", ++tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!cond)
        tap_failed++;
    return cond;
}

#define tap_is(got_x, want_x, ...) \
    do { \
        long long tap_g_ = (long long)(got_x), tap_w_ = (long long)(want_x); \
        if (!tap_ok(tap_g_ == tap_w_, __VA_ARGS__)) \
            printf("#   got %lld, want %lld\n", tap_g_, tap_w_); \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif /* DSM_TAP_H */
