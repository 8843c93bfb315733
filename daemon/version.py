"""Version numbers reported by the CLI, ``/api/v1/host`` and the websocket ``hello``."""

from __future__ import annotations

from importlib import metadata

#: Wire protocol version (docs/protocol.md); bumped only by incompatible changes.
PROTOCOL = 1


def _package_version() -> str:
    try:
        return metadata.version("hostscope")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+unknown"


VERSION = _package_version()
