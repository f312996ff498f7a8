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

OUTAGE = 4.0
"""How long the worker runs against the missing database before it is created."""


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
        time.sleep(OUTAGE)
        during = log.read_text()
        create()
        began = time.monotonic()
        while "database reachable again" not in log.read_text():
            assert time.monotonic() - began < 20, log.read_text()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    output = log.read_text()
    assert "Traceback" not in output
    lines = during.splitlines()
    assert len(lines) <= 8, during  # started, the cause, a line per step (0.5 s, 1 s, 2 s…)
    worker_lines = [line for line in lines if "herald.worker: database" in line]
    cause = "does not exist" if "postgres" in url else "unable to open database file"
    assert cause in worker_lines[0] and "database unavailable:" in worker_lines[0], during
    assert all("still unavailable; retrying in" in line for line in worker_lines[1:]), during
    assert sum(cause in line for line in lines) <= 2, during  # the worker's and the listener's
    waits = [float(w) for w in re.findall(r"herald.worker: .*retrying in ([\d.]+)s", during)]
    assert len(waits) >= 3 and waits == sorted(waits) and len(set(waits)) == len(waits), during
    assert output.count("database reachable again") == 1, output
