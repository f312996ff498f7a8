"""``herald worker`` on a database it cannot use: a few short lines, never a traceback flood.

Found in issue 13: with a database name that does not exist the worker logged a ~170-line
traceback every second. It now logs the cause once, one short line per backoff step (each wait
longer than the last), the traceback only at DEBUG, and one line when the database is back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from app.store.migrate import upgrade
from tests.support.databases import PostgresTemplate, admin_url, with_database
from tests.support.processes import CONSOLE_CONFIG, herald_process

STEPS = 4
"""Backoff steps the worker takes (0.5 s, 1 s, 2 s, 4 s: about 4 s) before the database is made."""


def missing_postgres(request: pytest.FixtureRequest, _: Path) -> tuple[str, Callable[[], None]]:
    template: PostgresTemplate = request.getfixturevalue("postgres_template")
    name = f"herald_late_{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: template.drop(with_database(admin_url(), name)))
    return with_database(admin_url(), name), lambda: template.clone(name) and None


def missing_sqlite_directory(
    _: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, Callable[[], None]]:
    directory = tmp_path / "not-yet"
    url = f"sqlite+aiosqlite:///{directory / 'herald.db'}"

    def create() -> None:
        directory.mkdir()
        upgrade(url)

    return url, create


def wait_for_line(log: Path, seen: Callable[[str], bool], within: float = 30.0) -> str:
    """The log's text once ``seen`` says so (the process may start slowly on a busy machine)."""
    began = time.monotonic()
    while not seen(text := log.read_text()):
        assert time.monotonic() - began < within, text
        time.sleep(0.05)
    return text


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(missing_postgres, id="postgres-no-database", marks=pytest.mark.postgres),
        pytest.param(missing_sqlite_directory, id="sqlite-no-directory"),
    ],
)
def test_worker_logs_an_outage_briefly_and_its_end_once(
    missing: Callable[[pytest.FixtureRequest, Path], tuple[str, Callable[[], None]]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    url, create = missing(request, tmp_path)
    config = tmp_path / "herald.yaml"
    config.write_text(CONSOLE_CONFIG)
    log = tmp_path / "worker.log"
    env = {**os.environ, "HERALD_DATABASE_URL": url, "HERALD_CONFIG": str(config)}
    with (
        log.open("w") as sink,
        herald_process("worker", env=env, stdout=sink, stderr=subprocess.STDOUT) as worker,
    ):
        during = wait_for_line(log, lambda text: text.count("herald.worker: database") >= STEPS)
        create()
        wait_for_line(log, lambda text: "database reachable again" in text)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    output = log.read_text()
    assert "Traceback" not in output
    lines = during.splitlines()
    # started, the cause from each side task (the sweep, the listener and, on PostgreSQL, the
    # shared circuits' sync), a line per step
    assert len(lines) <= STEPS + 4, during
    worker_lines = [line for line in lines if "herald.worker: database" in line]
    cause = "does not exist" if "postgres" in url else "unable to open database file"
    assert cause in worker_lines[0] and "database unavailable:" in worker_lines[0], during
    assert all("still unavailable; retrying in" in line for line in worker_lines[1:]), during
    assert sum(cause in line for line in lines) <= 4, during  # the worker's and side tasks''
    waits = [float(w) for w in re.findall(r"herald.worker: .*retrying in ([\d.]+)s", during)]
    assert waits == [0.5, 1, 2, 4], during
    assert output.count("database reachable again") == 1, output
