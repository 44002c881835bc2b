#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""report.py - the report of a benchmark run (bench/run): every libdsm result next to the baseline measured in
the same run, as a ratio, with the targets of issue 7 and 9; then every result; then the PNG plots (latency vs
size, barrier vs nodes) when gnuplot is given.

Input, in DIR: dsm-TRANSPORT-NODES.json (bench/dsm_bench, Google Benchmark's JSON), mpi-2.json (bench/mpi_bench),
perftest.json (bench/perftest, in the soft-RoCE lab). Output: DIR/report.md, DIR/*.png. Exit status 1 when a
file cannot be read or holds no benchmark (a broken run must not give a quiet, empty report).

Latencies are the median of the iterations (p50_us): on a shared machine the mean counts every preemption.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

SUFFIX = re.compile(r"(/iterations:\d+|/repeats:\d+|/manual_time|/real_time)+$")
ARGO_MISS_US = 10.6  # ArgoDSM's single-page remote read miss on this machine (issue 9)


def load(path):
    with open(path) as f:
        d = json.load(f)
    runs = {}
    for b in d.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        name = SUFFIX.sub("", b["name"])
        r = {"error": b.get("error_message") if b.get("error_occurred") else None}
        if not r["error"]:
            unit = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "us")]
            r["mean"] = b["real_time"] * unit
            r["p50"] = b.get("p50_us", r["mean"])
            r["min"] = b.get("min_us", r["mean"])
            r["bps"] = b.get("bytes_per_second")
            r["ips"] = b.get("items_per_second")
            r["counters"] = {k: v for k, v in b.items() if k.startswith("ft_") or k.endswith("_per_iter")}
        runs[name] = r
    if not runs:
        raise ValueError(f"{path}: no benchmark results")
    return d.get("context", {}), runs


def fmt(v, unit="us"):
    if v is None:
        return "-"
    if unit == "us":
        return f"{v:.3g} µs" if v < 1000 else f"{v / 1000:.3g} ms"
    if unit == "B/s":
        return f"{v / 2**30:.3g} GiB/s" if v >= 2**30 else f"{v / 2**20:.3g} MiB/s"
    return f"{v:.3g}"


class Report:
    def __init__(self, d):
        self.dir = d
        self.dsm = {}  # (transport, nodes) -> (context, runs)
        self.ft = {}  # transport -> (context, runs) of the DSM_STATS=2 read-miss runs
        self.mpi = self.perf = None
        self.lines = []
        bad = []
        for p in sorted(glob.glob(os.path.join(d, "dsm-*-*.json"))):
            m = re.match(r"dsm-(\w+)-(\d+)\.json$", os.path.basename(p))
            try:
                self.dsm[(m.group(1), int(m.group(2)))] = load(p)
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                bad.append(f"{p}: {e}")
        for p in sorted(glob.glob(os.path.join(d, "ft-*-2.json"))):
            try:
                self.ft[re.match(r"ft-(\w+)-2\.json$", os.path.basename(p)).group(1)] = load(p)
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                bad.append(f"{p}: {e}")
        for attr, name in (("mpi", "mpi-2.json"), ("perf", "perftest.json")):
            p = os.path.join(d, name)
            if os.path.exists(p):
                try:
                    setattr(self, attr, load(p))
                except (ValueError, KeyError, json.JSONDecodeError) as e:
                    bad.append(f"{p}: {e}")
        self.bad = bad

    def get(self, tp, n, name, field="p50"):
        r = self.dsm.get((tp, n), (None, {}))[1].get(name)
        return None if r is None or r["error"] else r[field]

    def other(self, which, name, field="p50"):
        src = getattr(self, which)
        r = src[1].get(name) if src else None
        return None if r is None or r["error"] else r[field]

    def out(self, s=""):
        self.lines.append(s)

    def ratio_rows(self):
        """(transport, nodes, what, value, baseline text, baseline value, target text, ok) for every comparison."""
        rows = []
        perf = lambda name: self.other("perf", name)  # noqa: E731
        for (tp, n) in sorted(self.dsm):
            g = lambda name, field="p50": self.get(tp, n, name, field)  # noqa: E731
            fault = g("base/fault_local")
            raw = {"tcp": ("raw TCP", g("base/tcp_rr/8"), g("base/tcp_rr/4096")),
                   "shm": ("raw shm", g("base/shm_pingpong/8"), g("base/shm_pingpong/4096"))}.get(tp)
            add = lambda *xs: None if any(x is None for x in xs) else sum(xs)  # noqa: E731

            def row(what, v, btxt, b, limit=None, higher=False):
                ok = None
                if limit is not None and v is not None and b:
                    ok = v / b >= limit if higher else v / b <= limit
                tgt = "" if limit is None else (f"≥ {limit:g}×" if higher else f"≤ {limit:g}×")
                rows.append((tp, n, what, v, btxt, b, tgt, ok))

            if raw:
                rname, r8, r4k = raw
                for arg, what in (("0", "read miss, clean at its home"), ("1", "read miss, modified at a third node")):
                    v = g(f"coh/read_miss/{arg}")
                    if v is not None:
                        row(what, v, f"local fault + {rname} 4 KiB", add(fault, r4k), 1.3 if tp == "tcp" else None)
                        if tp == "shm" and arg == "0":
                            rows.append((tp, n, what + " vs ArgoDSM", v, "ArgoDSM single-page miss", ARGO_MISS_US,
                                         "≤ 1×", v <= ARGO_MISS_US))
                row("upgrade (Shared to Modified)", g("coh/upgrade"), f"local fault + {rname} 8 B", add(fault, r8),
                    1.2)
                # The same misses against the kernel's own share of them (base/fault_kernel, no target: analysis).
                row("read miss, clean at its home", g("coh/read_miss/0"),
                    f"first-touch fault on shared memory + {rname} 4 KiB", add(g("base/fault_kernel/0"), r4k))
                row("upgrade (Shared to Modified)", g("coh/upgrade"),
                    f"write fault on read-only shared memory + {rname} 8 B", add(g("base/fault_kernel/1"), r8))
                for s in ("0", "1", str(n - 1)):
                    v = g(f"coh/write_miss/{s}")
                    if v is not None and not any(r[2] == f"write miss, {s} sharer(s)" and r[1] == n and r[0] == tp
                                                 for r in rows):
                        row(f"write miss, {s} sharer(s)", v, f"local fault + {rname} 4 KiB", add(fault, r4k))
                row("page ping-pong, one turn each", g("coh/page_pingpong"), f"2 × (local fault + {rname} 4 KiB)",
                    None if add(fault, r4k) is None else 2 * add(fault, r4k))
                row("active-message ping-pong 8 B", g("tp/am_pingpong/8"), f"{rname} 8 B", r8)
                row("active-message ping-pong 4 KiB", g("tp/am_pingpong/4096"), f"{rname} 4 KiB", r4k)
                row("dsm_fetch_add", g("tp/atomic/0"), f"{rname} 8 B", r8)
            if tp == "rdma":
                s8, w4k = perf("perftest/ib_send_lat/8"), perf("perftest/ib_write_lat/4096")
                row("read miss, clean at its home", g("coh/read_miss/0"), "local fault + ib_send_lat 8 B + "
                    "ib_write_lat 4 KiB", add(fault, s8, w4k), 1.3)
                row("upgrade (Shared to Modified)", g("coh/upgrade"), "local fault + ib_send_lat 8 B",
                    add(fault, s8), 1.2)
                row("dsm_fetch_add", g("tp/atomic/0"), "ib_atomic_lat", perf("perftest/ib_atomic_lat/8"), 1.2)
                row("active-message ping-pong 8 B", g("tp/am_pingpong/8"), "ib_send_lat 8 B", s8)
                row("put 4 KiB (one-sided)", g("tp/rma_lat/4096/0"), "ib_write_lat 4 KiB", w4k)
                row("get 4 KiB (one-sided)", g("tp/rma_lat/4096/1"), "ib_read_lat 4 KiB",
                    perf("perftest/ib_read_lat/4096"))
                bw, pbw = g("tp/put_bw/1048576", "bps"), self.other("perf", "perftest/ib_write_bw/1048576", "bps")
                row("put bandwidth 1 MiB (GiB/s)", bw and bw / 2**30, "ib_write_bw 1 MiB (GiB/s)",
                    pbw and pbw / 2**30, 0.9, higher=True)
            if self.mpi and n == 2:
                row("dsm_fetch_add vs MPI", g("tp/atomic/0"), "MPI_Fetch_and_op", self.other("mpi", "mpi/fetch_add"))
                row("dsm_barrier, 2 nodes", g("sync/barrier"), "MPI_Barrier, 2 ranks", self.other("mpi", "mpi/barrier"))
                for s in (4096, 65536, 1 << 20, 16 << 20):
                    for put, call in ((0, "get"), (1, "put")):
                        row(f"dsm_{call} {size_name(s)}", g(f"bulk/dsm/{s}/{put}"), f"MPI_{call.capitalize()} "
                            f"{size_name(s)}", self.other("mpi", f"mpi/rma/{s}/{put}"))
        return [r for r in rows if r[3] is not None]

    def write(self, gnuplot):
        out = self.out
        ctx = next(iter(self.dsm.values()))[0] if self.dsm else {}
        out("# libdsm benchmark report")
        out()
        out(f"Run of {ctx.get('date', '?')} on `{ctx.get('host_name', '?')}`: {ctx.get('num_cpus', '?')} CPUs at "
            f"{ctx.get('mhz_per_cpu', '?')} MHz, load average {', '.join(f'{x:.2f}' for x in ctx.get('load_avg', []))}; "
            f"libdsm {ctx.get('dsm_version', '?')}, iteration scale {ctx.get('dsm_bench_scale', '?')}"
            + (f", every process pinned to CPUs {ctx['bench_cpus']}" if ctx.get('bench_cpus', 'all') != 'all' else "")
            + ". Each line "
            "below: libdsm's median latency, the baseline measured in the same run (same job, same wait mode), their "
            "ratio and the target where issue 7 or 9 sets one.")
        out()
        out("| transport | nodes | wait | benchmark | libdsm | baseline | baseline value | ratio | target | met |")
        out("|---|---|---|---|---|---|---|---|---|---|")
        for tp, n, what, v, btxt, b, tgt, ok in self.ratio_rows():
            wait = self.dsm.get((tp, n), ({}, {}))[0].get("bench_wait", "?")
            gib = "GiB/s" in what
            vtxt = f"{v:.3g} GiB/s" if gib else fmt(v)
            btext = "-" if b is None else (f"{b:.3g} GiB/s" if gib else fmt(b))
            ratio = "-" if not b else f"{v / b:.2f}×"
            met = "" if ok is None else ("yes" if ok else "**no**")
            out(f"| {tp} | {n} | {wait} | {what} | {vtxt} | {btxt} | {btext} | {ratio} | {tgt} | {met} |")
        out()
        if not self.perf:
            out("RDMA baselines (perftest ib_send_lat, ib_write_lat, ib_read_lat, ib_atomic_lat, ib_write_bw) were "
                "**not measured** in this run: there is no RDMA device here (`make bench-rdma` measures them inside "
                "the soft-RoCE lab).")
        if not self.mpi:
            out("The MPI RMA baseline was not measured in this run (`make bench` runs it).")
        out()
        self.breakdown_table()
        self.app_table()
        self.barrier_table()
        self.all_table()
        if self.bad:
            out("## Files that could not be read")
            out()
            for b in self.bad:
                out(f"- {b}")
            out()
        if gnuplot:
            self.plots(gnuplot)
        with open(os.path.join(self.dir, "report.md"), "w") as f:
            f.write("\n".join(self.lines) + "\n")

    def breakdown_table(self):
        """Where the time of a read miss goes, from libdsm's own stamps (DSM_STATS=2), per transport and kind."""
        if not self.ft:
            return
        out = self.out
        out("## Where the time of a read miss goes (DSM_STATS=2, median per miss)")
        out()
        out("Measured by libdsm's own phase stamps, per page, in a separate run (the stamps cost a few clock reads); "
            "each column is the median over the run's misses, so the columns need not add up exactly. *fault "
            "delivery* is what the handler does not see: the kernel's trap, the signal delivery and sigreturn "
            "(the benchmark's median minus the handler's). *round trip* runs from the request handed to the "
            "transport to the grant's arrival (on the progress thread; over shm, in the faulting thread itself, "
            "through its reply slot), and *send call* is the part of it spent in the transport's send call; *at "
            "the home* is the home's part: request arrival to reply sent; *wake-up* runs from the page's "
            "mprotect to the faulting thread running again.")
        out()
        cols = [("ft_request_us", "request"), ("ft_send_us", "send call"), ("ft_round_trip_us", "round trip"),
                ("ft_home_us", "at the home"), ("ft_copy_us", "copy"), ("ft_mprotect_us", "mprotect"),
                ("ft_wakeup_us", "wake-up"), ("ft_handler_us", "handler total")]
        out("| transport | read miss | miss | fault delivery | " + " | ".join(c[1] for c in cols) + " |")
        out("|---|---|---|---|" + "---|" * len(cols))
        kinds = {"coh/read_miss/0": "never touched", "coh/read_miss/2": "resident (home wrote it)",
                 "coh/read_miss/1": "modified at a third node"}
        for tp, (ctx, runs) in sorted(self.ft.items()):
            for name, what in kinds.items():
                r = runs.get(name)
                if not r or r["error"] or "ft_handler_us" not in r["counters"]:
                    continue
                c = r["counters"]
                out(f"| {tp} | {what} | {fmt(r['p50'])} | {fmt(max(r['p50'] - c['ft_handler_us'], 0))} | "
                    + " | ".join(fmt(c.get(k)) for k, _ in cols) + " |")
        out()

    def app_table(self):
        rows = []
        for (tp, n), (_, runs) in sorted(self.dsm.items()):
            for name, r in runs.items():
                if name.startswith("app/") and not r["error"]:
                    rows.append((tp, n, name, r))
        if not rows:
            return
        self.out("## Applications: time per iteration and data moved (rank 0)")
        self.out()
        self.out("| transport | nodes | kernel | per iteration (median) | faults | pages in | bytes in | bytes out |")
        self.out("|---|---|---|---|---|---|---|---|")
        for tp, n, name, r in rows:
            c = r["counters"]
            self.out(f"| {tp} | {n} | {name} | {fmt(r['p50'])} | {c.get('faults_per_iter', 0):.3g} | "
                     f"{c.get('pages_in_per_iter', 0):.3g} | {c.get('bytes_in_per_iter', 0):.4g} | "
                     f"{c.get('bytes_out_per_iter', 0):.4g} |")
        self.out()
        self.out("Over shm a page moves through the shared queue or is placed in the receiver's memory, which the "
                 "byte counters (messages) do not count: *pages in* does.")
        self.out()

    def barrier_table(self):
        pts = sorted((tp, n, self.get(tp, n, "sync/barrier")) for (tp, n) in self.dsm)
        pts = [p for p in pts if p[2] is not None]
        if not pts:
            return
        self.out("## Barrier latency vs nodes")
        self.out()
        self.out("| transport | nodes | dsm_barrier (median) |")
        self.out("|---|---|---|")
        for tp, n, v in pts:
            self.out(f"| {tp} | {n} | {fmt(v)} |")
        self.out()

    def all_table(self):
        self.out("## Every result")
        self.out()
        self.out("| run | benchmark | median | mean | min | throughput |")
        self.out("|---|---|---|---|---|---|")
        srcs = [(f"{tp}, {n} nodes, wait {ctx.get('bench_wait', '?')}", runs)
                for (tp, n), (ctx, runs) in sorted(self.dsm.items())]
        if self.mpi:
            srcs.append((f"MPI ({self.mpi[0].get('mpi_library', '?')})", self.mpi[1]))
        if self.perf:
            srcs.append(("perftest", self.perf[1]))
        for src, runs in srcs:
            for name, r in runs.items():
                if r["error"]:
                    self.out(f"| {src} | {name} | not run: {r['error']} | | | |")
                    continue
                tput = fmt(r["bps"], "B/s") if r["bps"] else (f"{r['ips'] / 1e6:.3g} M items/s" if r["ips"] else "")
                self.out(f"| {src} | {name} | {fmt(r['p50'])} | {fmt(r['mean'])} | {fmt(r['min'])} | {tput} |")
        self.out()

    def plots(self, gnuplot):
        series = []  # (title, [(x, y)])
        for (tp, n), (_, runs) in sorted(self.dsm.items()):
            if n != 2:
                continue
            for prefix, title in ((r"tp/rma_lat/(\d+)/0", "put"), (r"tp/rma_lat/(\d+)/1", "get"),
                                  (r"bulk/dsm/(\d+)/0", "dsm_get"), (r"bulk/dsm/(\d+)/1", "dsm_put")):
                pts = sorted((int(m.group(1)), r["p50"]) for name, r in runs.items()
                             if (m := re.fullmatch(prefix, name)) and not r["error"])
                if pts:
                    series.append((f"{title} ({tp})", pts))
        if self.mpi:
            for put, title in ((0, "MPI_Get"), (1, "MPI_Put")):
                pts = sorted((int(m.group(1)), r["p50"]) for name, r in self.mpi[1].items()
                             if (m := re.fullmatch(rf"mpi/rma/(\d+)/{put}", name)) and not r["error"])
                if pts:
                    series.append((title, pts))
        made = []
        if series:
            self.gnuplot(gnuplot, "latency_vs_size.png", "Latency vs size (2 nodes, median)", "bytes",
                         "latency (µs)", series, logx=True)
            made.append("latency_vs_size.png")
        bar = {}
        for (tp, n), (_, runs) in self.dsm.items():
            v = self.get(tp, n, "sync/barrier")
            if v is not None:
                bar.setdefault(tp, []).append((n, v))
        if bar:
            self.gnuplot(gnuplot, "barrier_vs_nodes.png", "dsm_barrier latency vs nodes (median)", "nodes",
                         "latency (µs)", [(f"dsm_barrier ({tp})", sorted(p)) for tp, p in sorted(bar.items())],
                         logx=False)
            made.append("barrier_vs_nodes.png")
        made = [m for m in made if os.path.exists(os.path.join(self.dir, m))]
        if made:
            self.out("## Plots")
            self.out()
            for m in made:
                self.out(f"![{m}]({m})")
            self.out()

    def gnuplot(self, gnuplot, png, title, xl, yl, series, logx):
        data = os.path.join(self.dir, png.replace(".png", ".dat"))
        with open(data, "w") as f:
            for t, pts in series:
                f.write(f"# {t}\n")
                for x, y in pts:
                    f.write(f"{x} {y}\n")
                f.write("\n\n")
        plots = ", ".join(f"'{data}' index {i} with linespoints title '{t}'" for i, (t, _) in enumerate(series))
        script = (f"set terminal pngcairo size 900,600 noenhanced\nset output '{os.path.join(self.dir, png)}'\n"
                  f"set title '{title}'\nset xlabel '{xl}'\nset ylabel '{yl}'\nset logscale y\n"
                  + ("set logscale x 2\nset format x '%.0b %BB'\n" if logx else "") + "set key top left\nset grid\n" + f"plot {plots}\n")
        try:
            p = subprocess.run([gnuplot], input=script, text=True, capture_output=True, timeout=60)
            if p.returncode != 0:
                # pngcairo missing in some gnuplot builds: the plain png terminal.
                script = script.replace("pngcairo", "png")
                p = subprocess.run([gnuplot], input=script, text=True, capture_output=True, timeout=60)
            if p.returncode != 0:
                print(f"report.py: gnuplot failed for {png}: {p.stderr.strip()}", file=sys.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"report.py: gnuplot could not run: {e}", file=sys.stderr)


def size_name(s):
    return f"{s >> 20} MiB" if s >= 1 << 20 else f"{s >> 10} KiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--gnuplot", default="", help="gnuplot to draw the plots with (none: no plots)")
    a = ap.parse_args()
    r = Report(a.dir)
    if not r.dsm:
        print(f"report.py: no dsm-*.json results in {a.dir}", file=sys.stderr)
        return 1
    r.write(a.gnuplot)
    if r.bad:
        print("report.py: " + "; ".join(r.bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
