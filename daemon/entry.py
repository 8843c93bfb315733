"""The ``hostscope`` command: the CLI, imported lean.

A separate module because the CLI's own imports (aiohttp among them) are what
:func:`hostscope.daemon.memory.lean_imports` has to wrap; ``cli.main`` stays the function
to call from Python.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hostscope`` command line."""
    from .memory import lean_imports

    with lean_imports():
        from .cli import main as cli_main
    return cli_main(argv)
