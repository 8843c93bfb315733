"""What this host offers BPF modules: tracefs, tracepoints, BTF, headers, privileges, bcc.

One object answers every "can this run here, and if not exactly why" question, for the
manager (module availability, attach point choice) and for ``hostscope doctor`` alike, so
the two can never disagree. Every path is derived from injected roots, so tests point it at
fixture trees (a tracefs without some tracepoint, a /proc/self/status without capabilities).
Answers are cached: the kernel does not change under a running daemon. Thread-safe: the
daemon may ask from several executors.

Cheap by design, because the daemon asks at startup: nothing here imports bcc (libbcc and
LLVM, ~60 MB resident for good) or parses BTF unless asked to. :meth:`HostProbe.bcc` finds
bcc's package without importing it; :meth:`HostProbe.import_bcc` really imports it (first
enable, ``prewarm``, ``hostscope doctor``). :meth:`HostProbe.btf` checks the BTF file and
returns :class:`~.btf.KernelBtfFacts`, which resolves offsets in a child process.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostscope.metrics.hostinfo import detect_capabilities
from hostscope.metrics.sources import Roots, read_optional

from .btf import KernelBtfFacts

#: Where bcc's Python package comes from on Debian/Ubuntu (python3-bpfcc).
SYSTEM_BCC_DIR = Path("/usr/lib/python3/dist-packages/bcc")


@dataclass(frozen=True, slots=True)
class Headers:
    """Kernel headers bcc will compile against."""

    build: Path
    present: bool
    #: release the headers were built for ("6.1.0-56-amd64"), if known
    release: str | None
    matches_kernel: bool
    detail: str


def parse_format_fields(text: str) -> list[str]:
    """Field names of a tracefs ``format`` file (``field:pid_t pid;`` -> ``pid``)."""
    names = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line.startswith("field:"):
            continue
        decl = line[len("field:") :].split(";", 1)[0].strip()
        name = decl.rsplit(" ", 1)[-1]
        names.append(name.split("[", 1)[0])
    return names


class HostProbe:
    """Cached facts about the running kernel relevant to BPF modules."""

    def __init__(
        self,
        roots: Roots | None = None,
        *,
        lib_modules: Path = Path("/lib/modules"),
        release: str | None = None,
        bcc_dir: Path = SYSTEM_BCC_DIR,
    ) -> None:
        self.roots = roots or Roots()
        self.lib_modules = lib_modules
        self.release = release or os.uname().release
        self.bcc_dir = bcc_dir
        self._lock = threading.Lock()
        #: held while importing bcc, so that other questions never wait for that import
        self._import_lock = threading.Lock()
        self._btf: KernelBtfFacts | None = None
        self._btf_error: str | None = None
        self._btf_done = False
        self._bcc_found: tuple[bool, str] | None = None
        self._bcc: tuple[bool, str] | None = None
        self._caps: dict[str, Any] | None = None

    # -- tracefs -----------------------------------------------------------------------

    def tracefs_candidates(self) -> list[Path]:
        return [self.roots.sys / "kernel" / "tracing",
                self.roots.sys / "kernel" / "debug" / "tracing"]

    def tracefs(self) -> Path | None:
        """The mounted tracefs (has an ``events`` directory), or None."""
        for path in self.tracefs_candidates():
            if (path / "events").is_dir():
                return path
        return None

    def tracepoint_format(self, category: str, event: str) -> str | None:
        root = self.tracefs()
        if root is None:
            return None
        return read_optional(root / "events" / category / event / "format")

    def has_tracepoint(self, category: str, event: str) -> bool:
        return self.tracepoint_format(category, event) is not None

    def tracepoint_fields(self, category: str, event: str) -> list[str] | None:
        text = self.tracepoint_format(category, event)
        return None if text is None else parse_format_fields(text)

    # -- BTF -------------------------------------------------------------------------

    @property
    def btf_path(self) -> Path:
        return self.roots.sys / "kernel" / "btf" / "vmlinux"

    def btf(self) -> KernelBtfFacts | None:
        """Facts from the kernel's BTF, resolved in a child on first question; None (see
        :meth:`btf_error`) if there is no usable BTF file.

        Only the file's presence and size are checked here; a file that turns out not to
        parse makes every question raise ``BtfError`` with the child's reason, which
        :meth:`btf_error` then reports too.
        """
        with self._lock:
            if not self._btf_done:
                path = self.btf_path
                if not path.is_file():
                    self._btf_error = f"{path}: missing"
                elif path.stat().st_size < 24:
                    self._btf_error = f"{path}: BTF blob too short"
                else:
                    self._btf = KernelBtfFacts(path)
                self._btf_done = True
            return self._btf

    def btf_error(self) -> str | None:
        btf = self.btf()
        return btf.error if btf is not None else self._btf_error

    # -- privileges, headers, bcc ---------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """:func:`hostscope.metrics.hostinfo.detect_capabilities` for these roots, cached:
        privileges, perf, tracefs and kprobes are judged in one place for all of hostscope."""
        with self._lock:
            if self._caps is None:
                self._caps = detect_capabilities(self.roots)
            return self._caps

    def privileges(self) -> tuple[bool, str]:
        """(can load tracing BPF programs, why not)."""
        bpf = self.capabilities()["bpf"]
        if bpf["available"]:
            names = self.capabilities()["privileges"]["capabilities"]
            return True, f"effective capabilities: {', '.join(names)}"
        return False, str(bpf["reason"])

    def kprobes_available(self) -> bool:
        """Whether the kernel can create kprobes (CONFIG_KPROBES)."""
        return bool(self.capabilities()["kprobes"]["available"])

    def headers(self) -> Headers:
        build = self.lib_modules / self.release / "build"
        if not (build / "include").is_dir():
            return Headers(build, False, None, False,
                           f"{build} is missing: bcc cannot compile anything")
        rel = read_optional(build / "include" / "config" / "kernel.release")
        release = rel.strip() if rel else None
        matches = release == self.release
        if matches:
            detail = f"{build} has headers for the running kernel {self.release}"
        else:
            detail = (f"{build} -> {os.path.realpath(build)} holds headers for "
                      f"{release or 'an unknown release'}, not {self.release}: fine for "
                      "hostscope's tracepoint programs (arguments come from tracefs, struct "
                      "offsets from BTF)")
        return Headers(build, True, release, matches, detail)

    def bcc(self) -> tuple[bool, str]:
        """Whether bcc's Python bindings are importable here, WITHOUT importing them
        (importing maps libbcc and LLVM: ~60 MB resident that never goes away).

        The package is looked up on ``sys.path``; once :meth:`import_bcc` ran, its
        outcome is the answer instead (a package whose libbcc.so is missing is found but
        does not import).
        """
        with self._lock:
            if self._bcc is not None:
                return self._bcc
            if self._bcc_found is None:
                self._bcc_found = self._find_bcc()
            return self._bcc_found

    @staticmethod
    def _find_bcc() -> tuple[bool, str]:
        try:
            spec = importlib.util.find_spec("bcc")
        except (ImportError, ValueError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if spec is None or not spec.submodule_search_locations:
            return False, "ModuleNotFoundError: No module named 'bcc'"
        where = Path(next(iter(spec.submodule_search_locations)))
        version = "?"
        # bcc/version.py is one assignment; reading it keeps the answer import-free.
        text = read_optional(where / "version.py", limit=4096) or ""
        for line in text.splitlines():
            if line.startswith("__version__"):
                version = line.partition("=")[2].strip().strip("'\"")
        return True, f"bcc {version} from {where} (found; imported on first use)"

    def import_bcc(self) -> tuple[bool, str]:
        """Import bcc (libbcc + LLVM, ~0.1-0.2 s) and remember the outcome, which
        :meth:`bcc` reports from then on. Cached."""
        with self._import_lock:
            if self._bcc is None:
                try:
                    import bcc

                    version = getattr(bcc, "__version__", "?")
                    found = (True, f"bcc {version} from {os.path.dirname(bcc.__file__)}")
                except Exception as exc:  # noqa: BLE001 - ImportError, OSError from libbcc
                    found = (False, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._bcc = found
            return self._bcc

    def not_ready(self) -> str | None:
        """Why no BPF module can run here (first blocking reason), or None if they can."""
        ok, why = self.bcc()
        if not ok:
            return f"bcc is not importable: {why}"
        privileged, why = self.privileges()
        if not privileged:
            return f"no privileges: {why}"
        headers = self.headers()
        if not headers.present:
            return f"kernel headers: {headers.detail}"
        if self.tracefs() is None:
            return "tracefs is not mounted"
        return None

    def facts(self) -> dict[str, Any]:
        """A JSON-ready summary for status pages."""
        tracefs = self.tracefs()
        headers = self.headers()
        return {
            "kernel": self.release,
            "tracefs": str(tracefs) if tracefs else None,
            "btf": self.btf_path.exists(),
            "kprobes": self.kprobes_available(),
            "headers": {"path": str(headers.build), "present": headers.present,
                        "release": headers.release, "matches_kernel": headers.matches_kernel},
            "privileged": self.privileges()[0],
        }
