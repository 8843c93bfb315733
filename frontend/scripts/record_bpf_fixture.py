"""Record a real daemon's BPF messages for the dashboard's unit tests.

    .venv/bin/python frontend/scripts/record_bpf_fixture.py http://127.0.0.1:7470

Needs a daemon that can run BPF (root, bcc). Writes frontend/src/stores/fixtures/bpf.json:
the module list, then the websocket conversation of one page switching run queue latency
on (hello, meta, live frames with buckets and percentiles), a refused settings change, and
switching it off, plus one syscalls table answer. Nothing is edited by hand.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

OUT = Path(__file__).resolve().parent.parent / "src" / "stores" / "fixtures" / "bpf.json"


async def record(base: str) -> dict[str, Any]:
    origin = base.rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{origin}/api/v1/bpf") as r:
            listing = await r.json()
        stream: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []
        async with http.ws_connect(f"{origin}/api/v1/stream", headers={"Origin": origin}) as ws:

            async def send(msg: dict[str, Any]) -> None:
                sent.append(msg)
                await ws.send_str(json.dumps(msg))

            async def receive_until(kind: str, count: int = 1) -> None:
                seen = 0
                while seen < count:
                    msg = json.loads((await ws.receive(timeout=20)).data)
                    stream.append(msg)
                    if msg["type"] == kind or (kind == "bpf" and msg["type"] == "error"):
                        seen += 1

            await receive_until("hello")
            await send({"type": "subscribe", "names": ["bpf.runq"], "backfill": 0})
            await receive_until("meta")
            await send({"type": "bpf", "name": "runqlat", "enabled": True})
            await receive_until("bpf")
            await receive_until("samples", 5)
            await send({"type": "bpf", "name": "runqlat", "enabled": True,
                        "settings": {"pid": -1}})
            await receive_until("bpf")
            await send({"type": "bpf", "name": "runqlat", "enabled": False})
            await receive_until("bpf")
        async with http.post(f"{origin}/api/v1/bpf/syscalls", json={"enabled": True},
                             headers={"X-Hostscope-Client": "fixture"}) as r:
            assert r.status == 200, await r.text()
        await asyncio.sleep(1.5)
        async with http.get(f"{origin}/api/v1/bpf/syscalls/tables/top?limit=5") as r:
            table = await r.json()
        async with http.post(f"{origin}/api/v1/bpf/syscalls", json={"enabled": False},
                             headers={"X-Hostscope-Client": "fixture"}) as r:
            assert r.status == 200, await r.text()
    return {"recorded_by": "frontend/scripts/record_bpf_fixture.py", "list": listing,
            "sent": sent, "stream": stream, "table": table}


if __name__ == "__main__":
    data = asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7470"))
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}: {len(data['stream'])} stream messages")
