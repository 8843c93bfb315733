"""Flame graph builders (daemon/flame.py) over ProfileData: constructed cases and the
fixtures recorded from real captures (tests/fixtures/profiles/)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from hostscope.daemon import flame

from .profile_support import (
    FOLDED_LINE,
    HOSTILE,
    PROFILE_FIXTURES,
    SPEEDSCOPE_SCHEMA,
    check_tree,
    find,
    load_fixture,
    profile_data,
)
from .support import missing

P, U, K = "process", "user", "kernel"
MAIN = [("app", P), ("main", U)]


def sample() -> flame.Profile:
    return flame.parse_profile(profile_data([
        ([*MAIN, ("hot", U)], [(0, 5), (60, 3)]),          # seconds 0 and 1
        ([*MAIN, ("cold", U)], [(120, 1)]),                # second 2
        ([*MAIN, ("read", U), ("vfs_read", K)], [(10, 2)]),
        ([("other", P)], [(249, 4)]),                       # last slot of second 4
    ]))


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    if not SPEEDSCOPE_SCHEMA.exists():
        missing("speedscope's schema is not installed (cd frontend && npm ci; ./dev test "
                "runs it)")
    schema = json.loads(SPEEDSCOPE_SCHEMA.read_text())
    schema.setdefault("$ref", "#/definitions/FileFormat.File")
    return jsonschema.Draft7Validator(schema)


# -- parsing -------------------------------------------------------------------------


def test_parse_counts_and_drops_empties() -> None:
    data = profile_data([([("a", P)], [(0, 2), (1, 0)]), ([("b", P)], [(3, 0)])])
    profile = flame.parse_profile(data)
    assert profile.total == 2
    assert len(profile.stacks) == 1
    assert profile.stacks[0].slots == ((0, 2),)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(kind="wall"), "kind"),
    (lambda d: d.update(slot_ms=0), "slot_ms"),
    (lambda d: d["stacks"][0].update(frames=[99]), "indexes"),
    (lambda d: d["stacks"][0].update(slots=[[-1, 2]]), "non-negative"),
    (lambda d: d["stacks"][0].update(slots=[[1, True]]), "non-negative"),
    (lambda d: d["frames"][0].update(kind="python"), "unknown kind"),
    (lambda d: d["frames"][0].pop("name"), "name"),
])
def test_parse_rejects_broken_data(mutate: Any, message: str) -> None:
    data = profile_data([([("a", P), ("b", U)], [(0, 1)])])
    mutate(data)
    with pytest.raises(flame.ProfileDataError, match=message):
        flame.parse_profile(data)


# -- tree, ranges, diff ----------------------------------------------------------------


def test_tree_values_and_order() -> None:
    tree = flame.build_tree(sample())
    check_tree(tree)
    assert (tree["name"], tree["kind"], tree["value"]) == ("all", "root", 15)
    assert [c["name"] for c in tree["children"]] == ["app", "other"]
    main = find(tree, "app", "main")
    assert [c["name"] for c in main["children"]] == ["cold", "hot", "read"]  # alphabetical
    hot = find(main, "hot")
    assert (hot["value"], hot["self"], hot["kind"]) == (8, 8, "user")
    vfs = find(main, "read", "vfs_read")
    assert (vfs["kind"], vfs["module"], vfs["value"]) == ("kernel", "[kernel]", 2)


def test_range_keeps_only_its_slots() -> None:
    profile = sample()
    # Second 1 only: slot 60 (hot, 3).
    tree = flame.build_tree(profile, start=1.0, end=2.0)
    check_tree(tree)
    assert tree["value"] == 3
    assert find(tree, "app", "main", "hot")["value"] == 3
    # Sub-second: [0.1 s, 0.3 s) holds slot 10 (read) but not slot 0.
    tree = flame.build_tree(profile, start=0.1, end=0.3)
    assert tree["value"] == 2
    assert [c["name"] for c in find(tree, "app", "main")["children"]] == ["read"]
    # Open ends.
    assert flame.build_tree(profile, start=2.0)["value"] == 5
    assert flame.build_tree(profile, end=1.0)["value"] == 7


def test_diff_tree_has_both_captures() -> None:
    before = flame.parse_profile(profile_data([
        ([*MAIN, ("hot", U)], [(0, 10)]), ([*MAIN, ("gone", U)], [(0, 5)])]))
    after = flame.parse_profile(profile_data([
        ([*MAIN, ("hot", U)], [(0, 20)]), ([*MAIN, ("new", U)], [(0, 5)])]))
    tree = flame.build_tree(after, base=before)
    check_tree(tree)
    assert (tree["value"], tree["base"]) == (25, 15)
    main = find(tree, "app", "main")
    assert {c["name"]: (c["value"], c["base"]) for c in main["children"]} == {
        "gone": (0, 5), "hot": (20, 10), "new": (5, 0)}


# -- timeline ------------------------------------------------------------------------


def test_timeline_cells() -> None:
    tl = flame.timeline(sample())
    assert (tl["slot_ms"], tl["rows"], tl["seconds"], tl["max"]) == (20, 50, 5, 5)
    counts = tl["counts"]
    assert len(counts) == 5 and all(len(col) == 50 for col in counts)
    assert counts[0][0] == 5 and counts[0][10] == 2
    assert counts[1][10] == 3 and counts[2][20] == 1 and counts[4][49] == 4
    assert sum(map(sum, counts)) == 15


def test_timeline_keeps_slots_past_the_duration() -> None:
    profile = flame.parse_profile(profile_data([([("a", P)], [(260, 1)])], duration_s=5.0))
    tl = flame.timeline(profile)
    assert tl["seconds"] == 6 and tl["counts"][5][10] == 1


# -- folded --------------------------------------------------------------------------


def test_folded_lines() -> None:
    profile = flame.parse_profile(profile_data([
        ([("a b", P), ("x;y", U), ("k", K)], [(0, 2)]),
        ([("a b", P), ("line\nbreak", U)], [(0, 1), (100, 1)]),
    ]))
    text = flame.folded(profile)
    lines = text.splitlines()
    assert lines == ["a b;line break 2", "a b;x:y;k_[k] 2"]
    assert all(FOLDED_LINE.match(line) for line in lines)
    assert flame.folded(profile, start=2.0) == "a b;line break 1\n"


# -- SVG -----------------------------------------------------------------------------


def svg_frames(text: str) -> list[ET.Element]:
    root = ET.fromstring(text.encode())
    ns = "{http://www.w3.org/2000/svg}"
    return root.findall(f".//{ns}g[@class='f']")


def test_svg_is_xml_with_every_name_escaped() -> None:
    nasty = ["<script>alert(1)</script>", HOSTILE, "]]></script><x>", "tab\tand\x01ctl",
             "\ud800lone"]
    profile = flame.parse_profile(profile_data(
        [([(name, P), ("f", U)], [(0, 3)]) for name in nasty]))
    text = flame.svg(profile, title=HOSTILE)
    frames = svg_frames(text)
    names = {g.get("data-n") for g in frames}
    assert {"<script>alert(1)</script>", HOSTILE, "]]></script><x>"} <= names
    # (XML attribute normalisation turns the tab into a space.)
    assert "tab and\ufffdctl" in names and "\ufffdlone" in names
    # Nothing from a name became markup: one script (ours), no stray elements.
    root = ET.fromstring(text.encode())
    tags = {el.tag.split("}")[1] for el in root.iter()}
    assert tags == {"svg", "style", "rect", "text", "g", "title", "script"}
    assert len(root.findall("{http://www.w3.org/2000/svg}script")) == 1
    assert "<b>" not in text and "&lt;b&gt;&quot;x&#39;&amp;" in text


def test_svg_frames_and_widths() -> None:
    text = flame.svg(sample(), title="t")
    frames = svg_frames(text)
    by_name = {g.get("data-n"): g for g in frames}
    assert float(by_name["all"].get("data-w")) == 1.0
    assert float(by_name["hot"].get("data-w")) == pytest.approx(8 / 15, abs=1e-6)
    title = by_name["hot"].find("{http://www.w3.org/2000/svg}title")
    assert title is not None and title.text == "hot (8 samples, 53.33%)"
    # Flame order: deeper frames are drawn higher up.
    def y(name: str) -> float:
        rect = by_name[name].find("{http://www.w3.org/2000/svg}rect")
        assert rect is not None
        return float(rect.get("y", "0"))
    assert y("all") > y("app") > y("main") > y("hot")


def test_svg_diff_colours() -> None:
    before = flame.parse_profile(profile_data([([("a", P), ("grew", U)], [(0, 1)]),
                                               ([("a", P), ("shrank", U)], [(0, 9)])]))
    after = flame.parse_profile(profile_data([([("a", P), ("grew", U)], [(0, 9)]),
                                              ([("a", P), ("shrank", U)], [(0, 1)])]))
    frames = {g.get("data-n"): g for g in svg_frames(flame.svg(after, title="d", base=before))}
    fill = {n: g.find("{http://www.w3.org/2000/svg}rect").get("fill")  # type: ignore[union-attr]
            for n, g in frames.items()}
    assert fill["grew"] == "rgb(255,80,80)"
    assert fill["shrank"] == "rgb(80,80,255)"
    assert fill["a"] == "rgb(255,255,255)"


# -- speedscope ------------------------------------------------------------------------


def test_speedscope_valid_and_time_ordered() -> None:
    v = validator()
    doc = flame.speedscope(sample(), name=HOSTILE)
    v.validate(doc)
    prof = doc["profiles"][0]
    assert prof["unit"] == "none" and prof["endValue"] == 15 == sum(prof["weights"])
    frames = doc["shared"]["frames"]
    names = [[frames[i]["name"] for i in s] for s in prof["samples"]]
    # Slot order: 0 (hot), 10 (read), 60 (hot), 120 (cold), 249 (other).
    assert [n[-1] for n in names] == ["hot", "vfs_read_[k]", "hot", "cold", "other"]
    assert prof["weights"] == [5, 2, 3, 1, 4]
    ranged = flame.speedscope(sample(), name="r", start=1.0, end=3.0)
    v.validate(ranged)
    assert ranged["profiles"][0]["weights"] == [3, 1]


def test_speedscope_schema_rejects_a_broken_file() -> None:
    v = validator()
    doc = flame.speedscope(sample(), name="x")
    doc["profiles"][0]["unit"] = "samples"
    assert not v.is_valid(doc)


# -- recorded real captures ----------------------------------------------------------


def recorded() -> list[str]:
    return sorted(p.name for p in PROFILE_FIXTURES.glob("profiledata-*.json"))


@pytest.mark.parametrize("name", recorded())
def test_recorded_captures_build_every_output(name: str) -> None:
    data = load_fixture(name)
    profile = flame.parse_profile(data)
    tree = flame.build_tree(profile)
    check_tree(tree)
    assert tree["value"] == profile.total == data["total"]
    tl = flame.timeline(profile)
    assert sum(map(sum, tl["counts"])) == profile.total
    lines = flame.folded(profile).splitlines()
    assert lines and all(FOLDED_LINE.match(line) for line in lines)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == profile.total
    assert len(svg_frames(flame.svg(profile, title=name))) > 1
    validator().validate(flame.speedscope(profile, name=name))
    half = flame.build_tree(profile, end=profile.duration_s / 2)
    check_tree(half)
    assert 0 < half["value"] < tree["value"]
