"""top_processes over a real sampler's cooked values (crafted /proc tree, controlled clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostscope.metrics.collector import Cooked
from hostscope.metrics.collectors.process import ProcessCollector
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.processes import MAX_LIMIT, top_processes
from hostscope.metrics.sampler import Sampler
from tests.support import FakeClock, copy_fixture
from tests.test_collectors_process import set_stat_field

ROW_KEYS = {"instance", "pid", "cmd", "args", "container", "cpu", "rss", "io", "threads",
            "state", "start_time"}


@pytest.fixture
def latest(tmp_path: Path) -> Cooked:
    """Cooked values after two samples 2 s apart in which some processes did work."""
    roots = copy_fixture(tmp_path, "process", "crafted")
    clock = FakeClock()
    sampler = Sampler(
        [ProcessCollector(roots, hz=100, page_size=4096, max_open_fds=0)],
        registry=MetricRegistry(), clock=clock, interval_s=2.0,
    )
    sampler.sample()
    proc = roots.proc
    set_stat_field(proc / "101" / "stat", 11, "1150")  # +150 ticks: 0.75 CPU over 2 s
    set_stat_field(proc / "100" / "stat", 11, "170")   # +20 ticks: 0.1 CPU
    set_stat_field(proc / "107" / "stat", 12, "140")   # kernel thread, +100 ticks: 0.5 CPU
    io = proc / "103" / "io"
    io.write_text(io.read_text().replace("read_bytes: 111", "read_bytes: 20111"))
    clock.advance(2.0)
    sampler.sample()
    sampler.close()
    return sampler.latest


def pids(rows: list[dict[str, object]]) -> list[object]:
    return [row["pid"] for row in rows]


def test_sort_by_cpu_and_row_shape(latest: Cooked) -> None:
    rows = top_processes(latest, limit=3)
    assert pids(rows) == [101, 107, 100]
    top = rows[0]
    assert set(top) == ROW_KEYS
    assert top["instance"] == "101:6000"
    assert top["cmd"] == "a) b (c"
    assert top["args"] == "/usr/bin/weird --flag a) b (c"
    assert top["container"] == "docker:aaaaaaaaaaaa"
    assert top["cpu"] == pytest.approx(0.75)
    assert top["rss"] == 1000 * 4096
    assert top["io"] == 0.0
    assert top["threads"] == 4
    assert top["state"] == "R"
    assert top["start_time"] == pytest.approx(1_700_000_060.0)


def test_kernel_threads_can_be_hidden(latest: Cooked) -> None:
    everything = pids(top_processes(latest, limit=100))
    assert 107 in everything and 2 in everything
    users = pids(top_processes(latest, limit=100, include_kernel_threads=False))
    assert 107 not in users and 2 not in users
    assert users[:2] == [101, 100]


def test_sort_by_rss_and_io(latest: Cooked) -> None:
    assert pids(top_processes(latest, sort="rss", limit=4)) == [106, 103, 101, 100]
    by_io = top_processes(latest, sort="io", limit=2)
    assert by_io[0]["pid"] == 103
    assert by_io[0]["io"] == pytest.approx(10_000.0)  # 20,000 bytes in 2 s


def test_container_filter(latest: Cooked) -> None:
    assert pids(top_processes(latest, container="docker:aaaaaaaaaaaa")) == [101]
    assert pids(top_processes(latest, container="k8s:bbbbbbbbbbbb")) == [103]
    host = pids(top_processes(latest, container="", sort="rss"))
    assert set(host) == {2, 107}
    assert top_processes(latest, container="no-such-thing") == []


def test_limit(latest: Cooked) -> None:
    assert len(top_processes(latest, limit=1)) == 1
    assert len(top_processes(latest, limit=MAX_LIMIT)) == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sort": "mem"}, "sort must be one of cpu, rss, io"),
        ({"sort": None}, "sort must be one of"),
        ({"limit": 0}, "limit must be an integer from 1 to 1000"),
        ({"limit": MAX_LIMIT + 1}, "limit must be an integer"),
        ({"limit": True}, "limit must be an integer"),
        ({"limit": "5"}, "limit must be an integer"),
        ({"limit": 2.0}, "limit must be an integer"),
    ],
)
def test_invalid_arguments(latest: Cooked, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        top_processes(latest, **kwargs)  # type: ignore[arg-type]


def test_unknown_values_rank_last_and_ties_by_pid() -> None:
    # First sample of a process, or I/O another user's process will not show: None.
    latest: Cooked = {
        "proc.psinfo.pid": {"30:1": 30, "10:1": 10, "20:1": 20, "40:1": 40},
        "proc.io.total_bytes": {"30:1": None, "10:1": 5.0, "20:1": 5.0},
        "proc.cpu.util": {},
    }
    rows = top_processes(latest, sort="io")
    assert pids(rows) == [10, 20, 30, 40]
    assert rows[2]["io"] is None and rows[3]["io"] is None
    assert rows[0]["cmd"] is None  # metrics absent altogether: None, not an error
    assert top_processes({}, sort="cpu") == []


def test_container_filter_matches_readable_names_exactly_and_paths_hierarchically() -> None:
    from hostscope.metrics.collectors.cgroup import container_matches

    assert container_matches("docker:ab12cd34ef56", "docker:ab12cd34ef56")
    assert not container_matches("docker:ab12cd34ef56x", "docker:ab12cd34ef56")
    assert container_matches("/process_api/7c30", "/process_api")
    assert container_matches("/process_api/7c30", "/process_api/")
    assert not container_matches("/process_apix/7c30", "/process_api")
    assert not container_matches("nginx.service/x", "nginx.service")
    assert not container_matches(None, "/")
    assert container_matches("", "")
