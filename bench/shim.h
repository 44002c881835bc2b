/* SPDX-License-Identifier: MIT */
/*
 * shim.h - a C face for Google Benchmark, so benchmark bodies are plain C (DESIGN.md 4.8).
 *
 * A body is a function of one state; it loops on dsm_bench_next() and reports each iteration's time with
 * dsm_bench_set_time() (manual timing: what is measured is only what the body brackets). Every rank of a multi-node
 * job registers the same benchmarks and runs every body; a benchmark that involves several ranks has a fixed
 * iteration count, so each rank runs the same loop. Only the reporting rank prints and writes JSON.
 */
#ifndef DSM_BENCH_SHIM_H
#define DSM_BENCH_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsm_bench_state dsm_bench_state_t;
typedef struct dsm_bench dsm_bench_t;
typedef void (*dsm_bench_fn_t)(dsm_bench_state_t *st);

/* Register a benchmark; arguments and the iteration count are set on what it returns. */
dsm_bench_t *dsm_bench_register(const char *name, dsm_bench_fn_t fn);
/* Run once with this argument (call several times for several runs; dsm_bench_arg(st, 0) reads it). */
dsm_bench_t *dsm_bench_with_arg(dsm_bench_t *b, int64_t arg);
/* Run once with these two arguments. */
dsm_bench_t *dsm_bench_with_args(dsm_bench_t *b, int64_t a0, int64_t a1);
/* Exactly n iterations (required when several ranks take part). */
dsm_bench_t *dsm_bench_iterations(dsm_bench_t *b, int64_t n);

/* 1 while the loop should go on. */
int dsm_bench_next(dsm_bench_state_t *st);
int64_t dsm_bench_arg(const dsm_bench_state_t *st, int i);
/* The iteration count of this run. */
int64_t dsm_bench_max_iterations(const dsm_bench_state_t *st);
/* The time of the iteration just done, in seconds. */
void dsm_bench_set_time(dsm_bench_state_t *st, double seconds);
/* Throughput over the run: bytes and items per iteration in total, shown as per second of measured time. */
void dsm_bench_set_bytes(dsm_bench_state_t *st, int64_t bytes);
void dsm_bench_set_items(dsm_bench_state_t *st, int64_t items);
/* A named value kept as is (e.g. a ratio, a count); a rate one is divided by the measured time. */
void dsm_bench_counter(dsm_bench_state_t *st, const char *name, double value);
void dsm_bench_counter_rate(dsm_bench_state_t *st, const char *name, double value);
/* Mark this run as not measured, with the reason (shown in the report). Every rank must decide alike. */
void dsm_bench_skip(dsm_bench_state_t *st, const char *why);

/* A key and value for the "context" object of the JSON (node count, transport, version, ...). */
void dsm_bench_context(const char *key, const char *value);

/* Parse the --benchmark_* options out of argv, run every registered benchmark and return 0, or 1 on a bad
 * option. When report is 0 nothing is printed or written (the ranks other than the reporting one). */
int dsm_bench_run(int *argc, char **argv, int report);

/* A monotonic clock in seconds. */
double dsm_bench_now(void);

#ifdef __cplusplus
}
#endif

#endif /* DSM_BENCH_SHIM_H */
