"""Test helpers shared across test modules: a controllable clock and fixture roots."""

from __future__ import annotations

import shutil
from pathlib import Path

from hostscope.metrics.sources import Roots

FIXTURES = Path(__file__).parent / "fixtures"


class FakeClock:
    """A clock tests advance explicitly (wall and monotonic move together)."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


def fixture_roots(*parts: str) -> Roots:
    """Roots of a captured tree under tests/fixtures/<parts>/{proc,sys,etc}."""
    return Roots.under(FIXTURES.joinpath(*parts))


def copy_fixture(tmp_path: Path, *parts: str) -> Roots:
    """A writable copy of a fixture tree, for tests that change files between samples."""
    dest = tmp_path / "tree"
    shutil.copytree(FIXTURES.joinpath(*parts), dest, symlinks=True)
    return Roots.under(dest)
