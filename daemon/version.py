"""Version numbers reported by the CLI, ``/api/v1/host`` and the websocket ``hello``.

``VERSION`` is the package's version: pyproject.toml reads it from here
(``[tool.setuptools.dynamic]``), so there is one place to change it. A constant rather
than ``importlib.metadata.version()``: that lookup read the installed metadata at import
and pulled in importlib.metadata, zipfile, csv and email (~0.75 MB of the daemon's RSS).
"""

from __future__ import annotations

#: Wire protocol version (docs/protocol.md); bumped only by incompatible changes.
PROTOCOL = 1

VERSION = "0.1.0"
