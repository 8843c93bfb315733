#!/usr/bin/env python3
"""Cost of the capture side of CPU profiles (bpfmods/profiler.py).

    sudo .venv/bin/python benchmarks/bench_profile_capture.py [--rounds 4] [--seconds 5]
        [--long 30] [--methods bpf,perf] [--skip-overhead] [--skip-long]

1. Overhead at 49 Hz. One CPU-bound worker per CPU (a C loop built here with gcc) counts
   iterations; each round runs them once without and once with a 49 Hz all-CPU capture,
   side by side, and compares their work rate per CPU second (CLOCK_THREAD_CPUTIME_ID:
   the interrupt and BPF program run on the interrupted worker's time, while other
   tenants' load on a shared machine does not) and per wall second. The BPF program's own
   run time is also read directly (kernel.bpf_stats_enabled=1 for the run, run_time_ns in
   /proc/self/fdinfo), as a share of one core per CPU. Target: < 1 % of one core per CPU.
2. Time to a viewable profile: a warm-up capture (caches warm), then a --long second capture
   at 99 Hz on all CPUs with the workers running; reported: capture end -> ProfileData
   fetched (wall), and the profiler's own step timings (wall and CPU time of its thread:
   on a loaded shared machine the wall figures include waiting for a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hostscope.bpfmods.host import HostProbe
from hostscope.bpfmods.profiler import Profiler, ProfileRequest
from hostscope.metrics.sources import Roots, list_dir, read_optional

WORKER_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static volatile unsigned long sink;
__attribute__((noinline)) void bench_work(void)
{ for (unsigned long i = 0; i < 10000; i++) sink += i * i; }
static double now(clockid_t c)
{ struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(void)
{
    signal(SIGTERM, on_term);
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
    unsigned long n = 0;
    while (!stop) { bench_work(); n++; }
    printf("%lu %.6f %.6f\n", n, now(CLOCK_MONOTONIC) - w0, now(CLOCK_THREAD_CPUTIME_ID) - c0);
    return 0;
}
"""


def build_worker(tmp: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("gcc is needed to build the workload")
    (tmp / "worker.c").write_text(WORKER_C)
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / "worker"),
                    str(tmp / "worker.c")], check=True)
    return tmp / "worker"


def run_workers(worker: Path, seconds: float, during: threading.Event | None = None
                ) -> tuple[float, float]:
    """(iterations per CPU second, per wall second), summed over one worker per CPU."""
    procs = [subprocess.Popen([str(worker)], stdout=subprocess.PIPE, text=True)
             for _ in range(os.cpu_count() or 1)]
    time.sleep(seconds)
    per_cpu = per_wall = 0.0
    for p in procs:
        p.terminate()
        n, wall, cpu = (float(x) for x in p.communicate()[0].split())
        per_cpu += n / cpu
        per_wall += n / wall
    if during is not None:
        during.set()
    return per_cpu / len(procs), per_wall


def bpf_prog_stats() -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over this process's BPF programs (fdinfo)."""
    total_ns = count = 0
    fdinfo = Path("/proc/self/fdinfo")
    seen: set[str] = set()
    for fd in list_dir(fdinfo):
        text = read_optional(fdinfo / fd, limit=8192) or ""
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        prog = fields.get("prog_id", "").strip()
        if prog and prog not in seen and "run_time_ns" in fields:
            seen.add(prog)
            total_ns += int(fields["run_time_ns"])
            count += int(fields["run_cnt"])
    return total_ns, count


def overhead(prof: Profiler, worker: Path, rounds: int, seconds: float) -> dict:
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    stats_path.write_text("1\n")
    pairs = []
    prog = []
    try:
        for r in range(rounds):
            off = run_workers(worker, seconds)
            cid = prof.start(ProfileRequest("cpu", seconds + 60, 49))
            while prof.poll(cid)["progress"] == 0:  # compiled and attached
                time.sleep(0.05)
            ns0, n0 = bpf_prog_stats()
            t0, p0 = time.monotonic(), time.process_time()
            on = run_workers(worker, seconds)
            ns1, n1 = bpf_prog_stats()
            elapsed = time.monotonic() - t0
            # this process's CPU meanwhile: the capture thread's symbolizing passes
            user_pct = 100 * (time.process_time() - p0) / elapsed / (os.cpu_count() or 1)
            prof.cancel(cid)
            cpus = os.cpu_count() or 1
            prog.append({"run_ns_per_sample": (ns1 - ns0) / max(1, n1 - n0),
                         "samples_per_cpu_s": (n1 - n0) / elapsed / cpus,
                         "core_share_per_cpu_pct": 100 * (ns1 - ns0) / (elapsed * 1e9 * cpus),
                         "user_space_core_share_per_cpu_pct": user_pct})
            pairs.append({"off_per_cpu_s": off[0], "on_per_cpu_s": on[0],
                          "off_per_wall_s": off[1], "on_per_wall_s": on[1]})
            print(f"  round {r + 1}: work/CPU-s off {off[0]:,.0f} on {on[0]:,.0f} "
                  f"({100 * (1 - on[0] / off[0]):+.2f} %), work/wall-s off {off[1]:,.0f} "
                  f"on {on[1]:,.0f}; BPF program {prog[-1]['run_ns_per_sample']:.0f} ns x "
                  f"{prog[-1]['samples_per_cpu_s']:.1f}/s per CPU = "
                  f"{prog[-1]['core_share_per_cpu_pct']:.4f} % of a core; profiler user space "
                  f"{user_pct:.3f} % of a core per CPU", flush=True)
    finally:
        stats_path.write_text(old_stats + "\n")
    cpu_loss = [100 * (1 - p["on_per_cpu_s"] / p["off_per_cpu_s"]) for p in pairs]
    wall_loss = [100 * (1 - p["on_per_wall_s"] / p["off_per_wall_s"]) for p in pairs]
    return {"rounds": pairs, "bpf_program": prog,
            "median_work_loss_per_cpu_s_pct": round(statistics.median(cpu_loss), 3),
            "median_work_loss_per_wall_s_pct": round(statistics.median(wall_loss), 3),
            "median_program_core_share_per_cpu_pct": round(statistics.median(
                p["core_share_per_cpu_pct"] for p in prog), 5),
            "median_user_space_core_share_per_cpu_pct": round(statistics.median(
                p["user_space_core_share_per_cpu_pct"] for p in prog), 4)}


def time_to_view(prof: Profiler, worker: Path, seconds: float) -> dict:
    procs = [subprocess.Popen([str(worker)], stdout=subprocess.DEVNULL)
             for _ in range(os.cpu_count() or 1)]
    try:
        out = {}
        for label, duration in (("warm-up", 5.0), ("measured", seconds)):
            cid = prof.start(ProfileRequest("cpu", duration, 99))
            while prof.poll(cid)["state"] in ("running", "symbolizing"):
                time.sleep(0.02)
            data = prof.fetch(cid)
            fetched = time.time()
            out[label] = {
                "capture_end_to_fetched_s": round(
                    fetched - data["started_at"] - data["duration_s"], 3),
                "samples": data["total"], "stacks": len(data["stacks"]),
                "frames": len(data["frames"]), "json_kib": round(len(json.dumps(data)) / 1024),
                "method": data["method"], "timings": data["timings"],
            }
            print(f"  {label} ({data['method']}, {duration:g} s at 99 Hz): end -> fetched "
                  f"{out[label]['capture_end_to_fetched_s']:.3f} s; {data['total']} samples, "
                  f"{len(data['stacks'])} stacks; timings {data['timings']}", flush=True)
        return out
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=30.0)
    parser.add_argument("--methods", default="bpf,perf")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (BPF and perf)")
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    results: dict = {"load_before": load}
    with tempfile.TemporaryDirectory() as tmp:
        worker = build_worker(Path(tmp))
        host = HostProbe()
        for method in args.methods.split(","):
            prof = Profiler(Roots(), host, methods=(method,))
            try:
                if not args.skip_overhead and method == "bpf":
                    print(f"overhead at 49 Hz ({method}), {args.rounds} rounds of "
                          f"{args.seconds:g} s off/on:")
                    results[f"overhead_{method}"] = overhead(prof, worker, args.rounds,
                                                             args.seconds)
                if not args.skip_long:
                    print(f"time to a viewable profile ({method}):")
                    results[f"view_{method}"] = time_to_view(prof, worker, args.long)
            finally:
                prof.close()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
