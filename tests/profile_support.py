"""Helpers for the profile tests: ProfileData fixtures and output validators."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .support import FIXTURES

PROFILE_FIXTURES = FIXTURES / "profiles"
#: speedscope's own schema, shipped in its npm package (a frontend devDependency).
SPEEDSCOPE_SCHEMA = (Path(__file__).parent.parent / "frontend" / "node_modules" / "speedscope"
                     / "dist" / "release" / "file-format-schema.json")
#: A folded line: frames separated by ';', a space, a positive count.
FOLDED_LINE = re.compile(r"^[^\n;]+(;[^\n;]+)* [1-9][0-9]*$")
HOSTILE = "<b>\"x'&"


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((PROFILE_FIXTURES / name).read_text())


def profile_data(stacks: list[tuple[list[tuple[str, str]], list[tuple[int, int]]]], *,
                 kind: str = "cpu", duration_s: float = 5.0, slot_ms: int = 20
                 ) -> dict[str, Any]:
    """ProfileData (contract version 1) from ([(name, kind), ...], [(slot, value), ...])
    pairs, frames interned as the privileged side does."""
    frames: list[dict[str, Any]] = []
    index: dict[tuple[str, str], int] = {}
    out_stacks = []
    total = 0
    for path, slots in stacks:
        ids = []
        for name, fkind in path:
            key = (name, fkind)
            if key not in index:
                index[key] = len(frames)
                frames.append({"name": name, "kind": fkind,
                               "module": "[kernel]" if fkind == "kernel" else None})
            ids.append(index[key])
        out_stacks.append({"frames": ids, "pid": 1234, "slots": [list(s) for s in slots]})
        total += sum(v for _, v in slots)
    return {
        "version": 1, "kind": kind, "method": "bpf",
        "event": "perf_event cpu-clock 49 Hz" if kind == "cpu"
        else "tracepoint sched:sched_switch",
        "request": {"kind": kind, "duration_s": duration_s},
        "unit": "samples" if kind == "cpu" else "microseconds",
        "started_at": 1_795_000_000.0, "duration_s": duration_s, "slot_ms": slot_ms,
        "frames": frames, "stacks": out_stacks, "total": total, "lost": 0, "notes": [],
    }


def find(tree: dict[str, Any], *names: str) -> dict[str, Any]:
    """The node at path ``names`` below ``tree``."""
    node = tree
    for name in names:
        node = next(c for c in node["children"] if c["name"] == name)
    return node


def check_tree(node: dict[str, Any]) -> None:
    """Invariants of every tree node: value = self + children's values."""
    assert node["value"] == node["self"] + sum(c["value"] for c in node["children"]), node["name"]
    if "base" in node:
        assert node["base"] == node["self_base"] + sum(c["base"] for c in node["children"])
    for child in node["children"]:
        check_tree(child)
