// SPDX-License-Identifier: MIT
// shim.cc - the C API of shim.h over Google Benchmark's C++ API. Nothing here knows about libdsm.
#include "bench/shim.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

struct dsm_bench_state {
    benchmark::State *st;
    std::vector<double> times;  // each iteration's, for the median and the minimum
};

struct dsm_bench {
    benchmark::internal::Benchmark *b;
};

namespace {

// Discards everything: the ranks that are not the reporting one run the same loops in silence.
class QuietReporter : public benchmark::BenchmarkReporter {
  public:
    bool ReportContext(const Context &) override { return true; }
    void ReportRuns(const std::vector<Run> &) override {}
};

std::vector<dsm_bench *> &all_benches()
{
    static std::vector<dsm_bench *> v;
    return v;
}

}  // namespace

extern "C" {

dsm_bench_t *dsm_bench_register(const char *name, dsm_bench_fn_t fn)
{
    auto *h = new dsm_bench;
    h->b = benchmark::RegisterBenchmark(name, [fn](benchmark::State &s) {
        dsm_bench_state w{&s, {}};
        w.times.reserve(static_cast<std::size_t>(s.max_iterations));
        fn(&w);
        // The mean (Google Benchmark's time) counts every preemption of a shared machine; the median and the
        // minimum of the iterations do not.
        if (!w.times.empty() && !s.error_occurred()) {
            std::sort(w.times.begin(), w.times.end());
            s.counters["p50_us"] = benchmark::Counter(w.times[w.times.size() / 2] * 1e6);
            s.counters["min_us"] = benchmark::Counter(w.times.front() * 1e6);
        }
    });
    // Manual time, one repetition, microseconds: the bodies bracket exactly what is measured.
    h->b->UseManualTime()->Unit(benchmark::kMicrosecond)->Repetitions(1);
    all_benches().push_back(h);
    return h;
}

dsm_bench_t *dsm_bench_with_arg(dsm_bench_t *b, int64_t arg)
{
    b->b->Arg(arg);
    return b;
}

dsm_bench_t *dsm_bench_with_args(dsm_bench_t *b, int64_t a0, int64_t a1)
{
    b->b->Args({a0, a1});
    return b;
}

dsm_bench_t *dsm_bench_iterations(dsm_bench_t *b, int64_t n)
{
    b->b->Iterations(n);
    return b;
}

int dsm_bench_next(dsm_bench_state_t *st)
{
    return st->st->KeepRunning() ? 1 : 0;
}

int64_t dsm_bench_arg(const dsm_bench_state_t *st, int i)
{
    return st->st->range(static_cast<std::size_t>(i));
}

int64_t dsm_bench_max_iterations(const dsm_bench_state_t *st)
{
    return static_cast<int64_t>(st->st->max_iterations);
}

void dsm_bench_set_time(dsm_bench_state_t *st, double seconds)
{
    st->times.push_back(seconds);
    st->st->SetIterationTime(seconds);
}

void dsm_bench_set_bytes(dsm_bench_state_t *st, int64_t bytes)
{
    st->st->SetBytesProcessed(bytes);
}

void dsm_bench_set_items(dsm_bench_state_t *st, int64_t items)
{
    st->st->SetItemsProcessed(items);
}

void dsm_bench_counter(dsm_bench_state_t *st, const char *name, double value)
{
    st->st->counters[name] = benchmark::Counter(value);
}

void dsm_bench_counter_rate(dsm_bench_state_t *st, const char *name, double value)
{
    st->st->counters[name] = benchmark::Counter(value, benchmark::Counter::kIsRate);
}

void dsm_bench_skip(dsm_bench_state_t *st, const char *why)
{
    st->st->SkipWithError(why);
}

void dsm_bench_context(const char *key, const char *value)
{
    benchmark::AddCustomContext(key, value);
}

int dsm_bench_run(int *argc, char **argv, int report)
{
    // The ranks that do not report must not open the output file: drop --benchmark_out* from their argv.
    if (!report) {
        int k = 1;
        for (int i = 1; i < *argc; i++)
            if (std::strncmp(argv[i], "--benchmark_out", 15) != 0)
                argv[k++] = argv[i];
        *argc = k;
        argv[k] = nullptr;
    }
    benchmark::Initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(*argc, argv))
        return 1;
    if (report) {
        benchmark::RunSpecifiedBenchmarks();
    } else {
        QuietReporter quiet;
        benchmark::RunSpecifiedBenchmarks(&quiet);
    }
    benchmark::Shutdown();
    for (dsm_bench *b : all_benches())
        delete b;
    all_benches().clear();
    return 0;
}

double dsm_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // extern "C"
