"""What the code says about bench/ stays true: pointers into levers.md name rows that exist,
benchmark figures live there and not in app/, and the profile summary's steps still exist."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVERS = ROOT / "bench" / "results" / "levers.md"
POINTER = re.compile(r'levers\.md, "([^"\n]+)"')
# A measured figure: "1.5 ms of CPU", "20% of the API's CPU", "1.1x requests/s", "0.91x CPU",
# "takes 20-70 ms", "ten times faster".
FIGURE = re.compile(
    r"\d(?:[\d.,-]*\d)? ?(?:%|ms of|µs|x (?:requests|CPU))"  # a figure with its unit
    r"|\d-\d+ ms\b|times faster"
)


def sources() -> list[Path]:
    return [*sorted((ROOT / "app").rglob("*.py")), ROOT / "pyproject.toml"]


def pointers() -> list[tuple[str, str]]:
    return [
        (path.relative_to(ROOT).as_posix(), name)
        for path in sources()
        for name in POINTER.findall(path.read_text())
    ]


def test_the_code_points_to_levers() -> None:
    assert len(pointers()) >= 15


@pytest.mark.parametrize(("path", "row"), pointers())
def test_each_pointer_names_a_lever_that_is_there(path: str, row: str) -> None:
    assert row in LEVERS.read_text(), f"{path} points to {row!r}, which levers.md does not have"


def test_benchmark_figures_live_in_levers_not_in_the_code() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FIGURE.search(line)
    ]
    assert found == []


def profile_summary() -> ModuleType:
    path = ROOT / "bench" / "profile_summary.py"
    spec = importlib.util.spec_from_file_location("profile_summary", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("entry", profile_summary().FOCUS)
def test_each_profile_step_still_exists(entry: str) -> None:
    module_name, _, qualified = entry.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualified.split("."):
        target = getattr(target, part)
    assert callable(target)
