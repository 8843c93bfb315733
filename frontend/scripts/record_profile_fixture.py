"""Record a real daemon's profiles API answers for the dashboard's unit tests.

    HOSTSCOPE_TOKEN=T .venv/bin/python frontend/scripts/record_profile_fixture.py http://127.0.0.1:7470

Needs a daemon that can profile (root; bcc or perf). While a CPU-bound process named
``<b>"x'&`` runs, it starts two 5 s CPU captures of the whole host through REST (the
second is the diff base of the first), records the summaries it sees while they run, the
JSON views (whole capture, a range, a diff), a refused request (400) and a full queue
(409 busy, then cancelling the queued captures), and writes
frontend/src/lib/fixtures/profiles.recorded.json. Nothing is edited by hand, except that
the tree is kept as answered (it is what the page gets).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

OUT = Path(__file__).resolve().parent.parent / "src" / "lib" / "fixtures" / "profiles.recorded.json"
HOSTILE = "<b>\"x'&"
BUSY = f"""
import ctypes, time
ctypes.CDLL(None).prctl(15, {HOSTILE!r}.encode(), 0, 0, 0)
end = time.time() + 60
while time.time() < end:
    pass
"""
HEADERS = {"X-Hostscope-Client": "fixture"}
#: An operator token of the daemon (docs/security.md), if it asks for one.
TOKEN = os.environ.get("HOSTSCOPE_TOKEN")


async def answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    return {"status": resp.status, "body": await resp.json()}


async def record(base: str) -> dict[str, Any]:
    origin = base.rstrip("/")
    api = f"{origin}/api/v1/profiles"
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        async with aiohttp.ClientSession(headers={"Origin": origin, **auth}) as http:

            async def capture(seen: list[dict[str, Any]]) -> str:
                async with http.post(api, json={"kind": "cpu", "duration": 5, "frequency": 99},
                                     headers=HEADERS) as r:
                    assert r.status == 202, await r.text()
                    first = await r.json()
                seen.append(first)
                while True:
                    async with http.get(f"{api}/{first['id']}") as r:
                        s = await r.json()
                    # Every change of state, and a few progress steps while running.
                    changed = s["state"] != seen[-1]["state"]
                    if changed or (s["state"] == "running" and len(seen) < 4):
                        seen.append(s)
                    if s["state"] in ("done", "failed", "cancelled"):
                        assert s["state"] == "done", s
                        return str(s["id"])
                    await asyncio.sleep(0.4)

            base_states: list[dict[str, Any]] = []
            base_id = await capture(base_states)
            states: list[dict[str, Any]] = []
            cap_id = await capture(states)
            async with http.get(api) as r:
                listing = await r.json()
            async with http.get(f"{api}/{cap_id}?format=json") as r:
                whole = await r.json()
            async with http.get(f"{api}/{cap_id}?format=json&start=1&end=3") as r:
                ranged = await r.json()
            async with http.get(f"{api}/{cap_id}?format=json&base={base_id}") as r:
                diff = await r.json()
            async with http.post(api, json={"kind": "cpu", "duration": 1}, headers=HEADERS) as r:
                invalid = await answer(r)
            # A full queue: one running and `queue` waiting, then one more is refused.
            queued: list[dict[str, Any]] = []
            busy_answer = None
            for _ in range(int(listing["limits"]["queue"]) + 2):
                async with http.post(api, json={"kind": "cpu", "duration": 5},
                                     headers=HEADERS) as r:
                    if r.status == 409:
                        busy_answer = await answer(r)
                        break
                    queued.append(await r.json())
            async with http.get(f"{api}/{queued[-1]['id']}") as r:
                waiting = await r.json()
            cancelled = []
            for q in reversed(queued):
                async with http.delete(f"{api}/{q['id']}", headers=HEADERS) as r:
                    cancelled.append(await answer(r))
    finally:
        busy.kill()
        busy.wait()
    return {
        "recorded_by": "frontend/scripts/record_profile_fixture.py",
        "list": listing, "base_states": base_states, "states": states, "waiting": waiting,
        "json": whole, "range": ranged, "diff": diff,
        "errors": {"invalid": invalid, "busy": busy_answer}, "cancelled": cancelled,
    }


if __name__ == "__main__":
    data = asyncio.run(record(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7470"))
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {len(data['states'])} states, "
          f"{len(json.dumps(data['json']))} bytes of JSON view")
