/* SPDX-License-Identifier: MIT */
/*
 * shim.h - a C face for Google Benchmark, so benchmark bodies are plain C (DESIGN.md 4.8).
 *
 * A body is a function of one state; it loops on dsmb_next() and reports each iteration's time with
 * dsmb_set_time() (manual timing: what is measured is only what the body brackets). Every rank of a multi-node
 * job registers the same benchmarks and runs every body; a benchmark that involves several ranks has a fixed
 * iteration count, so each rank runs the same loop. Only the reporting rank prints and writes JSON.
 */
#ifndef DSM_BENCH_SHIM_H
#define DSM_BENCH_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsmb_state dsmb_state_t;
typedef struct dsmb_bench dsmb_bench_t;
typedef void (*dsmb_fn_t)(dsmb_state_t *st);

/* Register a benchmark; arguments and the iteration count are set on what it returns. */
dsmb_bench_t *dsmb_register(const char *name, dsmb_fn_t fn);
/* Run once with this argument (call several times for several runs; dsmb_arg(st, 0) reads it). */
dsmb_bench_t *dsmb_with_arg(dsmb_bench_t *b, int64_t arg);
/* Run once with these two arguments. */
dsmb_bench_t *dsmb_with_args(dsmb_bench_t *b, int64_t a0, int64_t a1);
/* Exactly n iterations (required when several ranks take part). */
dsmb_bench_t *dsmb_iterations(dsmb_bench_t *b, int64_t n);

/* 1 while the loop should go on. */
int dsmb_next(dsmb_state_t *st);
int64_t dsmb_arg(const dsmb_state_t *st, int i);
/* The iteration count of this run. */
int64_t dsmb_max_iterations(const dsmb_state_t *st);
/* The time of the iteration just done, in seconds. */
void dsmb_set_time(dsmb_state_t *st, double seconds);
/* Throughput over the run: bytes and items per iteration in total, shown as per second of measured time. */
void dsmb_set_bytes(dsmb_state_t *st, int64_t bytes);
void dsmb_set_items(dsmb_state_t *st, int64_t items);
/* A named value kept as is (e.g. a ratio, a count); a rate one is divided by the measured time. */
void dsmb_counter(dsmb_state_t *st, const char *name, double value);
void dsmb_counter_rate(dsmb_state_t *st, const char *name, double value);
/* Mark this run as not measured, with the reason (shown in the report). Every rank must decide alike. */
void dsmb_skip(dsmb_state_t *st, const char *why);

/* A key and value for the "context" object of the JSON (node count, transport, version, ...). */
void dsmb_context(const char *key, const char *value);

/* Parse the --benchmark_* options out of argv, run every registered benchmark and return 0, or 1 on a bad
 * option. When report is 0 nothing is printed or written (the ranks other than the reporting one). */
int dsmb_run(int *argc, char **argv, int report);

/* A monotonic clock in seconds. */
double dsmb_now(void);

#ifdef __cplusplus
}
#endif

#endif /* DSM_BENCH_SHIM_H */
