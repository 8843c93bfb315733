"""The dashboard end to end: the real daemon serving the built dashboard, driven by
headless Chromium through frontend/e2e/*.test.mjs (node's test runner).

This wrapper builds nothing (``./dev test`` runs ``npm ci`` and ``npm run build`` first):
it starts ``hostscope serve`` on a free port, runs ``npm run e2e`` with the daemon's URL
in ``HOSTSCOPE_URL`` (and, for the restart test, the command that starts another daemon
in ``HOSTSCOPE_SERVE_CMD``) and asserts that every end-to-end test passed.

The BPF widgets' tests (frontend/e2e/bpf.test.mjs) load real BPF programs, so they run in
their own test, which skips with the reason when this machine cannot (not root, bcc not
installed, the daemon reports the module unavailable) — except under ``CI=true``, where
a skipped BPF test would hide a broken setup, so it fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostscope.bpfmods.histogram import BUCKET_NAMES, percentiles

from .support import auth_headers, missing, serve_env

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
STATIC_INDEX = ROOT / "daemon" / "static" / "index.html"
CHROMIUM = Path("/usr/bin/chromium")
HISTOGRAM_CASES = FRONTEND / "src" / "lib" / "histogram.cases.json"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing (./dev test installs it when run as root)",
    ),
    pytest.mark.skipif(
        not (FRONTEND / "node_modules" / "playwright-core").is_dir(),
        reason="frontend/node_modules is missing (./dev test runs npm ci)",
    ),
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_cmd(port: str) -> list[str]:
    return [sys.executable, "-m", "hostscope.daemon", "serve", "--port", port, "--interval", "0.5"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[str]:
    if not STATIC_INDEX.is_file():
        pytest.fail("the dashboard is not built: `cd frontend && npm run build` (./dev test does)")
    port = _free_port()
    proc = subprocess.Popen(
        _serve_cmd(str(port)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=serve_env(),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"hostscope serve did not come up on {base}:\n{err}")
        time.sleep(0.1)
    # A few seconds of history, so the dashboard has something to backfill.
    time.sleep(3)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _e2e_env(daemon: str, **extra: str) -> dict[str, str]:
    return {
        **serve_env(),  # HOSTSCOPE_TOKEN: the e2e tests sign in with it (support.mjs)
        "HOSTSCOPE_URL": daemon,
        "HOSTSCOPE_SERVE_CMD": json.dumps(_serve_cmd("{port}")),
        "HOSTSCOPE_CHROMIUM": str(CHROMIUM),
        **extra,
    }


def _passed(cmd: list[str], env: dict[str, str]) -> int:
    """Run node's test runner; every test must pass. Returns how many did."""
    result = subprocess.run(cmd, cwd=FRONTEND, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    assert "# fail 0" in output, output
    return next(
        (int(line.split()[-1]) for line in output.splitlines() if line.startswith("# pass")), 0
    )


def test_dashboard_end_to_end(daemon: str) -> None:
    env = _e2e_env(daemon, HOSTSCOPE_BPF_SKIP="run by test_dashboard_bpf_end_to_end",
                   HOSTSCOPE_PROFILES_SKIP="run by test_dashboard_profiles_end_to_end")
    assert _passed(["npm", "run", "--silent", "e2e"], env) >= 12


def _bpf_unready(daemon: str) -> str | None:
    """Why this machine cannot run the BPF end-to-end tests, or None if it can."""
    if os.geteuid() != 0:
        return "not root: loading BPF programs needs root (or CAP_BPF and CAP_PERFMON)"
    if importlib.util.find_spec("bcc") is None:
        return ("bcc is not importable (bpfmods/install-deps.sh installs it; ./dev test "
                "runs it as root)")
    request = urllib.request.Request(f"{daemon}/api/v1/bpf", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=30) as resp:
        runq = next((m for m in json.load(resp)["modules"] if m["name"] == "runqlat"), None)
    if runq is None or not runq["available"]:
        why = runq["reason"] if runq else "no runqlat module"
        return f"the daemon cannot run runqlat here: {why}"
    return None


def test_dashboard_bpf_end_to_end(daemon: str) -> None:
    """Heat map, switch, holds and tables against real BPF programs."""
    why = _bpf_unready(daemon)
    if why is not None:
        missing(why)
    node = shutil.which("node") or "node"
    cmd = [node, "--test", "--test-concurrency=1", "e2e/bpf.test.mjs"]
    assert _passed(cmd, _e2e_env(daemon)) >= 5  # the cgroup-filter test included


def _profiles_unready(daemon: str) -> str | None:
    """Why this machine cannot capture a CPU profile, or None if it can."""
    if os.geteuid() != 0:
        return "not root: CPU profiling needs root (or CAP_PERFMON and CAP_BPF)"
    request = urllib.request.Request(f"{daemon}/api/v1/profiles", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=30) as resp:
        cpu = json.load(resp)["kinds"]["cpu"]
    if not cpu["available"]:
        return f"the daemon cannot profile the CPU here: {cpu['reason']}"
    return None


def test_dashboard_profiles_end_to_end(daemon: str) -> None:
    """A real 5 s capture started from the page: flame graph, search, zoom, FlameScope
    range, downloads and a hostile process name shown as text."""
    why = _profiles_unready(daemon)
    if why is not None:
        missing(why)
    node = shutil.which("node") or "node"
    cmd = [node, "--test", "--test-concurrency=1", "e2e/profiles.test.mjs"]
    assert _passed(cmd, _e2e_env(daemon)) >= 2


# -- the dashboard's twin of bpfmods.histogram.percentiles ------------------------------


def histogram_cases() -> dict[str, object]:
    """Cases frontend/src/lib/histogram.spec.ts checks histogram.ts against: the dashboard
    computes percentiles itself only for histograms it sums (every disk at once), and they
    must match the daemon's ``bpf.<x>.p50/p90/p99`` for the same counts."""
    qs = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0]
    rng = random.Random(5)
    hists: list[dict[str, float | None]] = [
        {},
        {"0-1": 0.0, "2-3": None},
        {"0-1": 3.0},
        {"4-7": 1.0},
        {"67108864-inf": 2.0},
        {"vda:read:16-31": 10.0, "vda:read:32-63": 30.0, "vda:read:8-15": 5.0},
        {"1024-2047": 0.5, "2-3": 2.25, "67108864-inf": 0.01},
        {"0-1": -1.0, "8-15": 4.0},
    ]
    for _ in range(40):
        hists.append({
            name: round(rng.expovariate(0.1), 3) if rng.random() < 0.5 else 0.0
            for name in BUCKET_NAMES
        })
    cases = []
    for h in hists:
        got = percentiles(h, qs)
        cases.append({"buckets": [[k, v] for k, v in h.items()], "qs": qs,
                      "values": [got[q] for q in qs]})
    return {"generated_by": "hostscope.bpfmods.histogram.percentiles "
                            "(tests/test_dashboard_e2e.py checks this file is current)",
            "cases": cases}


def test_histogram_cases_for_the_typescript_twin_are_current() -> None:
    """Regenerate with `.venv/bin/python -m tests.test_dashboard_e2e`."""
    committed = json.loads(HISTOGRAM_CASES.read_text())
    fresh = histogram_cases()
    assert len(committed["cases"]) == len(fresh["cases"])  # type: ignore[arg-type]
    for old, new in zip(committed["cases"], fresh["cases"], strict=True):  # type: ignore[call-overload]
        assert old["buckets"] == new["buckets"]
        for a, b in zip(old["values"], new["values"], strict=True):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-12), (old, new)


def _one_case_per_line(data: dict[str, object]) -> str:
    cases = ",\n".join(json.dumps(c) for c in data["cases"])  # type: ignore[attr-defined]
    return f'{{"generated_by": {json.dumps(data["generated_by"])},\n"cases": [\n{cases}\n]}}\n'


if __name__ == "__main__":
    HISTOGRAM_CASES.write_text(_one_case_per_line(histogram_cases()))
