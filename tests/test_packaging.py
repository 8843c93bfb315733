"""A regular (non-editable) install works: the wheel holds every file the package reads
at run time, and ``hostscope serve`` from that wheel alone serves the API, a rendered
panel and the dashboard.

Every other test runs against the editable install, which reads data files from the
source tree, so a data file missing from ``package-data`` goes unnoticed there (it
happened: ``daemon/panels.json`` was left out and a regular install failed at startup).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "packaging-test-token-0123456789abcdef"
#: Source folders copied for the build (the checkout's own build/ and *.egg-info, and
#: the front end's node_modules, are left out).
PACKAGE_DIRS = ("metrics", "daemon", "bpfmods")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (built,) = out.glob("hostscope-*.whl")
    return built


def test_wheel_holds_every_data_file_the_package_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = ["hostscope/daemon/panels.json"]
    wanted += [f"hostscope/bpfmods/{p.name}" for p in (ROOT / "bpfmods").iterdir()
               if p.suffix == ".h" or p.name.endswith(".bpf.c")]
    if (ROOT / "daemon" / "static" / "index.html").exists():
        wanted.append("hostscope/daemon/static/index.html")
    missing = [w for w in wanted if w not in names]
    assert not missing, f"left out of the wheel: {missing}"
    # Every non-Python file in the package folders is either in the wheel or known not
    # to be needed at run time (a new data file must be added to package-data).
    for name in PACKAGE_DIRS:
        for path in (ROOT / name).rglob("*"):
            if (path.is_file() and path.suffix not in (".py", ".pyc", ".md")
                    and "static" not in path.parts and "__pycache__" not in path.parts
                    and path.name != "install-deps.sh"):
                rel = path.relative_to(ROOT / name).as_posix()
                assert f"hostscope/{name}/{rel}" in names, f"{name}/{rel} not in the wheel"


def test_serve_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    """The wheel unpacked into a folder (a pure-Python wheel's install), run with the
    interpreter's site processing off so the editable install's finder cannot serve
    the package from the source tree; dependencies come from site-packages."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    purelib = sysconfig.get_paths()["purelib"]
    code = (
        "import sys; sys.path[:0] = [sys.argv.pop(1), sys.argv.pop(1)]\n"
        "import hostscope.daemon, hostscope.bpfmods.runtime as rt\n"
        "print('package', hostscope.daemon.__file__, rt.SOURCE_DIR, flush=True)\n"
        "from hostscope.daemon.cli import main\n"
        "sys.argv[0] = 'hostscope'\n"
        "sys.exit(main())\n"
    )
    env = {**os.environ, "HOSTSCOPE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", code, str(target), purelib,
         "serve", "--port", "0", "--no-privsep", "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r'listening"?,? "?url"?[=:] ?"?(http://[^\s"]+)', line)
            url = found.group(1) if found else None
        assert url is not None, "".join(lines)
        package = next(ln for ln in lines if ln.startswith("package "))
        assert str(target) in package and str(ROOT) not in package, package

        def get(path: str) -> tuple[int, bytes]:
            request = urllib.request.Request(url.rstrip("/") + path,
                                             headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()

        assert get("/healthz")[0] == 200
        status, body = get("/api/v1/fetch?names=kernel.all.load")
        assert status == 200 and b"kernel.all.load" in body
        # A panel rendered server-side reads panels.json, the file once left out.
        time.sleep(1.2)
        status, body = get("/api/v1/render/cpu.util.svg")
        assert status == 200 and body.lstrip().startswith(b"<svg"), body[:200]
        status, body = get("/")
        assert status == 200 and b"<html" in body.lower()
    finally:
        proc.terminate()
        proc.wait(10)
