"""Test helpers shared across test modules: a controllable clock, fixture roots, and the
tokens tests authenticate to daemons with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pytest

from hostscope.daemon.auth import hash_token
from hostscope.daemon.config import TOKEN_ENV, Config
from hostscope.metrics.sources import Roots

#: CI (``CI=true``) installs everything the tests use, so there a test that would skip for
#: a missing tool or host feature fails instead.
IN_CI = os.environ.get("CI") == "true"


def missing(reason: str) -> NoReturn:
    """Skip for ``reason`` (a tool or host feature this machine lacks); fail under CI."""
    if IN_CI:
        pytest.fail(f"this test must run in CI, but {reason}")
    pytest.skip(reason)


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


# -- authentication (docs/security.md) ---------------------------------------------------
# Every test that talks to a daemon authenticates. In-process daemons:
# ``auth_config(...)`` is a Config with the two known tokens below; send
# ``auth_headers()`` (operator) or ``auth_headers(VIEWER_TOKEN)``. ``hostscope serve``
# subprocesses: run them with ``serve_env()`` (HOSTSCOPE_TOKEN = the operator token).

OPERATOR_TOKEN = "test-operator-token-0123456789abcdef"
VIEWER_TOKEN = "test-viewer-token-0123456789abcdef"
TEST_TOKENS = (f"operator {hash_token(OPERATOR_TOKEN)}", f"viewer {hash_token(VIEWER_TOKEN)}")


def auth_config(**settings: Any) -> Config:
    """A daemon Config that accepts OPERATOR_TOKEN and VIEWER_TOKEN."""
    return Config(tokens=TEST_TOKENS, **settings)


def auth_headers(token: str = OPERATOR_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def serve_env(token: str = OPERATOR_TOKEN, **extra: str) -> dict[str, str]:
    """Environment for a ``hostscope serve`` subprocess that accepts ``token``."""
    return {**os.environ, TOKEN_ENV: token, **extra}
