"""Chaos fixtures: one throwaway PostgreSQL cluster for the suite, a database and a process
fleet per scenario, and the summary table printed at the end of the run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.cluster import PgCluster, cannot_run_reason, find_bindir
from tests.chaos.fleet import ROOT, Fleet, Scenario, herald_argv, leftover_processes

TEMPLATE = "herald_chaos_template"
ROW_PROPERTY = "chaos_row"
ROWS: list[dict[str, Any]] = []
"""Every scenario's row, gathered from the reports in the process that prints the summary."""
COLUMNS = (
    "scenario",
    "accepted",
    "delivered",
    "failed",
    "lost",
    "duplicates",
    "longest_recovery_s",
    "faults",
    "wall_s",
    "notes",
)
LEGEND = (
    "lost: accepted but not in the expected final state, or 'delivered' without a 2xx at the "
    "sink. duplicates: requests at the sink beyond the attempts Herald recorded (tries in "
    "flight at a fault, sent again with the same webhook-id). longest_recovery_s: (a) kill to "
    "the arrival at the sink of the final try of the last notification the killed worker held; "
    "(b) the same from a SIGTERM; (c) start of the PostgreSQL stop until every notification "
    "open just before it is final in the database; (d) first failed try to delivery (the "
    "fail-twice path)."
)


@pytest.fixture(scope="package")
def chaos_pg() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster with a migrated template database, for the package's
    tests (stopped and removed when the last chaos scenario is done)."""
    reason = cannot_run_reason()
    if reason is not None:
        message = f"chaos suite needs a throwaway PostgreSQL cluster: {reason}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run the chaos suite)")
        pytest.skip(message)
    bindir, _ = find_bindir()
    assert bindir is not None
    cluster = PgCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        asyncio.run(cluster.execute(f'CREATE DATABASE "{TEMPLATE}"'))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        migrated = subprocess.run(
            [*herald_argv(), "migrate"],
            cwd=ROOT,
            env={**env, "HERALD_DATABASE_URL": cluster.url(TEMPLATE)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, f"herald migrate failed:\n{migrated.stderr}"
        yield cluster
    finally:
        cluster.destroy()
    left = leftover_processes(str(cluster.root))
    assert not left, f"PostgreSQL processes left running: {left}"


@pytest.fixture
def scenario(chaos_pg: PgCluster, tmp_path: Path) -> Iterator[Scenario]:
    """A fresh migrated database and an empty fleet; every process is killed at the end."""
    if not chaos_pg.running:  # a scenario that failed mid-restart left it down
        chaos_pg.start()
    database = f"chaos_{uuid.uuid4().hex[:10]}"
    asyncio.run(chaos_pg.execute(f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE}"'))
    fleet = Fleet(workdir=tmp_path, env={})
    try:
        yield Scenario(chaos_pg, database, tmp_path, fleet)
    finally:
        fleet.close()
        if not chaos_pg.running:
            chaos_pg.start()
        asyncio.run(chaos_pg.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    left = leftover_processes(str(tmp_path))
    assert not left, f"processes left running after the scenario: {left}"


@pytest.fixture
def record_row(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Add this scenario's row to the summary table printed at the end of the session."""

    def record(**row: Any) -> None:
        # Carried on the test's report, which pytest-xdist sends from its worker process to
        # the one that prints the summary (pytest_runtest_logreport there).
        request.node.user_properties.append((ROW_PROPERTY, row))
        print(format_table([row]))  # also in the test's own output

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed scenario's report carries each process's log file and the end of each log."""
    report = yield
    scenario = getattr(item, "funcargs", {}).get("scenario")
    if report.when == "call" and report.failed and isinstance(scenario, Scenario):
        report.sections.append(("chaos processes", scenario.fleet.report()))
    return report


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [[_cell(row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, line in enumerate(cells):
        lines.append(
            "  ".join(
                cell.ljust(w) if i in (0, len(COLUMNS) - 1) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        ROWS.extend(value for name, value in report.user_properties if name == ROW_PROPERTY)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = sorted(ROWS, key=lambda row: str(row.get("scenario")))
    if not rows:
        return
    terminalreporter.write_sep("=", "chaos summary")
    for line in format_table(rows).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line("")
    terminalreporter.write_line(LEGEND)
