"""The dashboard end to end: the real daemon serving the built dashboard, driven by
headless Chromium through frontend/e2e/*.test.mjs (node's test runner).

This wrapper builds nothing (``./dev test`` runs ``npm ci`` and ``npm run build`` first):
it starts ``hostscope serve`` on a free port, runs ``npm run e2e`` with the daemon's URL
in ``HOSTSCOPE_URL`` (and, for the restart test, the command that starts another daemon
in ``HOSTSCOPE_SERVE_CMD``) and asserts that every end-to-end test passed.
"""

from __future__ import annotations

import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
STATIC_INDEX = ROOT / "daemon" / "static" / "index.html"
CHROMIUM = Path("/usr/bin/chromium")

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
        text=True,
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


def test_dashboard_end_to_end(daemon: str) -> None:
    env = {
        **os.environ,
        "HOSTSCOPE_URL": daemon,
        "HOSTSCOPE_SERVE_CMD": json.dumps(_serve_cmd("{port}")),
        "HOSTSCOPE_CHROMIUM": str(CHROMIUM),
    }
    result = subprocess.run(
        ["npm", "run", "--silent", "e2e"], cwd=FRONTEND, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"npm run e2e failed:\n{output}"
    assert "# fail 0" in output, output
    passed = next(
        (int(line.split()[-1]) for line in output.splitlines() if line.startswith("# pass")), 0
    )
    assert passed >= 11, output
