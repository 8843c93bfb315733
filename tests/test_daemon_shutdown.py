"""Graceful shutdown of a real ``hostscope serve`` process: SIGTERM/SIGINT close every
websocket with 1001 GOING_AWAY and the process exits 0 within 5 seconds."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .support import auth_headers, serve_env


def hostscope_command() -> list[str]:
    script = Path(sys.executable).parent / "hostscope"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "hostscope.daemon"]


async def start_serve(*args: str, env: dict[str, str] | None = None,
                      ) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """Start ``hostscope serve --port 0`` and return it with its URL and log lines.
    ``env`` defaults to one accepting the tests' operator token (tests/support.py)."""
    proc = await asyncio.create_subprocess_exec(
        *hostscope_command(), "serve", "--port", "0", "--interval", "0.1", *args,
        stderr=asyncio.subprocess.PIPE,
        env={**(serve_env() if env is None else env), "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            raise AssertionError("hostscope serve exited early:\n" + "".join(lines))
        lines.append(line.decode())
        found = re.search(r'listening"?,? "?url"?[=:] ?"?(https?://[^\s"]+)', lines[-1])
        if found:
            return proc, found.group(1), lines


async def read_rest(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stderr is not None
    lines.extend((await proc.stderr.read()).decode().splitlines(keepends=True))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_websockets_with_1001_and_exits(sig: signal.Signals) -> None:
    proc, url, lines = await start_serve()
    try:
        ws_url = url.replace("http://", "ws://") + "api/v1/stream"
        async with connect(ws_url, additional_headers=auth_headers()) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.load"]}))
            assert json.loads(await ws.recv())["type"] == "meta"
            while True:  # wait for a live frame: the stream is flowing
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"] == "samples" and not msg["backfill"]:
                    break

            started = time.monotonic()
            proc.send_signal(sig)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
            code = await asyncio.wait_for(proc.wait(), 5)
            elapsed = time.monotonic() - started
        await read_rest(proc, lines)
        log = "".join(lines)
        assert code == 0, log
        assert elapsed < 5, elapsed
        assert f"signal={sig.name}" in log
        assert "msg=stopped" in log
        assert "Traceback" not in log and "level=error" not in log, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shutdown_without_clients_is_quick() -> None:
    proc, _, lines = await start_serve("--log-format", "json")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 5)
    await read_rest(proc, lines)
    assert code == 0
    assert time.monotonic() - started < 2
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"listening", "shutting down", "stopped"} <= {e["msg"] for e in events}
