#!/bin/bash
# SPDX-License-Identifier: MIT
# The benchmark harness runs: bench/run at a tiny iteration count over tcp and shm (and the MPI baseline where
# mpirun is found) must exit 0 and give valid Google Benchmark JSON with every benchmark of the quick set measured,
# rank 0's context (nodes, transport, version), and a report with the ratio lines. No timing is asserted: the
# times of a loaded machine say nothing; a broken benchmark must fail here. TAP output.
set -u
top=${top_builddir:-.}
src=${top_srcdir:-.}
[ -x "$top/bench/dsm_bench" ] || { echo "1..0 # SKIP bench/dsm_bench not built (configure found no Google Benchmark)"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); echo "not ok $n - $1"; [ -f "$tmp/log" ] && tail -30 "$tmp/log" | sed 's/^/# /'; }
mpi=()
[ -n "${MPIRUN:-}" ] && [ -x "$top/bench/mpi_bench" ] && mpi=(--mpi)

DSMRUN="$top/tools/dsmrun" BENCH_DIR="$top/bench" GNUPLOT="$(command -v gnuplot)" BENCH_TIMEOUT=600 \
  bash "$src/bench/run" --out "$tmp/r" --transports 'shm tcp' --sizes 2 --scale 0.005 --cpus 0 "${mpi[@]}" >"$tmp/log" 2>&1
rc=$?
if [ $rc = 0 ]; then ok "bench/run at a tiny scale exits 0"; else nok "bench/run exit $rc"; fi

# Every JSON parses; every benchmark of the set is there, measured (no error), with a median; the context names
# the run. The three-node read miss is the one benchmark a two-node run skips, by name.
for tp in shm tcp; do
  f=$tmp/r/dsm-$tp-2.json
  if python3 - "$f" "$tp" >"$tmp/log" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
c = d["context"]
assert c["dsm_nodes"] == "2" and c["dsm_transport"] == sys.argv[2] and c["dsm_version"], c
assert c["bench_cpus"] == "0", c  # bench/run --cpus 0
names = {b["name"].split("/iterations")[0]: b for b in d["benchmarks"]}
want = ["base/fault_local", "base/fault_kernel/0", "base/fault_kernel/1", "base/tcp_rr/8", "base/tcp_rr/4096",
        "base/shm_pingpong/8", "base/shm_pingpong/4096", "tp/am_pingpong/8", "tp/am_pingpong/4096", "tp/am_rate", "tp/rma_lat/4096/0", "tp/rma_lat/1048576/1",
        "tp/put_bw/1048576", "tp/atomic/0", "tp/atomic/1", "coh/read_miss/0", "coh/write_miss/0", "coh/write_miss/1",
        "coh/upgrade", "coh/page_pingpong", "coh/fault_tput/4", "sync/barrier", "sync/lock/0", "sync/lock/1",
        "mig/migrate/0", "mig/migrate/1", "bulk/dsm/4096/0", "bulk/dsm/16777216/1"]
missing = [w for w in want if w not in names]
assert not missing, f"missing {missing}"
for k, b in names.items():
    assert not b.get("error_occurred"), f"{k}: {b.get('error_message')}"
    assert b["real_time"] > 0 and b["p50_us"] > 0 and b["iterations"] >= 2, k
PY
  then ok "dsm-$tp-2.json: valid, every benchmark measured, context names $tp and 2 nodes"
  else nok "dsm-$tp-2.json"; fi
done
# The read-miss breakdown run: libdsm's phase counters (DSM_STATS=2) reach the JSON, one timed miss per iteration.
for tp in shm tcp; do
  if python3 - "$tmp/r/ft-$tp-2.json" >"$tmp/log" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
b = {x["name"].split("/iterations")[0]: x for x in d["benchmarks"]}
for k in ("coh/read_miss/0", "coh/read_miss/2"):
    x = b[k]
    for c in ("ft_request_us", "ft_send_us", "ft_round_trip_us", "ft_home_us", "ft_copy_us", "ft_mprotect_us",
              "ft_wakeup_us", "ft_handler_us"):
        assert c in x, f"{k}: no {c}"
    assert x["ft_misses"] == x["iterations"], f"{k}: {x['ft_misses']} misses timed of {x['iterations']}"
PY
  then ok "ft-$tp-2.json: the read-miss phases of every miss, from DSM_STATS=2"; else nok "ft-$tp-2.json"; fi
done
if [ ${#mpi[@]} = 1 ]; then
  if python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
names = [b["name"].split("/iterations")[0] for b in d["benchmarks"] if not b.get("error_occurred")]
assert "mpi/fetch_add" in names and "mpi/rma/4096/0" in names and "mpi/rma/16777216/1" in names, names
' "$tmp/r/mpi-2.json" >"$tmp/log" 2>&1; then ok "mpi-2.json: MPI RMA baseline measured"; else nok "mpi-2.json"; fi
fi

# The report has the ratio lines of both transports and says the RDMA baselines were not measured.
r=$tmp/r/report.md
if [ -f "$r" ] && grep -q '^| tcp | 2 | .* | read miss, clean at its home | .* | local fault + raw TCP 4 KiB |.*×' "$r" &&
   grep -q '^| shm | 2 | .* | read miss, clean at its home vs ArgoDSM |' "$r" &&
   grep -q '^| tcp | 2 | .* | upgrade (Shared to Modified) |' "$r" && grep -q 'not measured' "$r" &&
   grep -q '^| tcp | 2 | .* | read miss, clean at its home | .* | first-touch fault on shared memory + raw TCP 4 KiB |.*×' "$r" &&
   grep -q '^| tcp | 2 | .* | upgrade (Shared to Modified) | .* | write fault on read-only shared memory + raw TCP 8 B |.*×' "$r" &&
   grep -q '^| tcp | never touched | ' "$r" && grep -q 'every process pinned to CPUs 0' "$r"; then
  ok "report.md: ratio lines for tcp and shm (also against the kernel's share), the read-miss breakdown, rdma baselines reported as not measured, the pinning"
else
  cp "$r" "$tmp/log" 2>/dev/null; nok "report.md lacks the ratio lines"
fi

# A broken result is an error, not a quiet empty report; a bad option is refused.
mkdir "$tmp/bad"
echo '{"context": {}, "benchmarks": []}' >"$tmp/bad/dsm-tcp-2.json"
if python3 "$src/bench/report.py" "$tmp/bad" >"$tmp/log" 2>&1; then nok "report.py accepted a run without results"
else ok "report.py fails on a run without results"; fi
if DSMRUN="$top/tools/dsmrun" BENCH_DIR="$top/bench" bash "$src/bench/run" --out "$tmp/c" --cpus 'no such cpu' \
    >"$tmp/log" 2>&1; then nok "bench/run accepted --cpus 'no such cpu'"
else grep -q 'cpus' "$tmp/log" && ok "bench/run refuses a bad --cpus, naming it" || nok "bench/run --cpus message"; fi
if "$top/bench/dsm_bench" --scale=x >"$tmp/log" 2>&1; then nok "dsm_bench accepted --scale=x"
else grep -q 'scale' "$tmp/log" && ok "dsm_bench refuses --scale=x, naming it" || nok "dsm_bench --scale=x message"; fi
echo "1..$n"
