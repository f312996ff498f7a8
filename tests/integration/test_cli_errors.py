"""What ``herald`` says, as a real process, about a database URL or a config it cannot use:
one line per cause on stderr, a non-zero status, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.integration.test_processes import free_port, wait_for
from tests.support.databases import PostgresTemplate
from tests.support.processes import CONSOLE_CONFIG, herald_process, run_herald


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "herald.yaml"
    config.write_text(CONSOLE_CONFIG)
    return {**os.environ, "HERALD_CONFIG": str(config)}


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["events"], ["migrate"]])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://herald:s3cret@db/herald", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://herald:s3cret@db/herald", "driver 'psycopg2' is not supported"),
    ],
)
def test_an_unsupported_database_url_is_refused_in_one_line(
    env: dict[str, str], command: list[str], url: str, says: str
) -> None:
    result = run_herald(*command, env={**env, "HERALD_DATABASE_URL": url})
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith("herald: invalid environment: HERALD_DATABASE_URL: "), line
    assert says in line and "write postgresql://" in line, line
    assert "s3cret" not in line


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgresql", marks=pytest.mark.postgres),
        "sqlite",
    ]
)
def plain_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL as people write it: no ``+driver``."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'herald.db'}"
        return
    template: PostgresTemplate = request.getfixturevalue("postgres_template")
    url = template.clone()
    yield make_url(url).set(drivername=request.param).render_as_string(hide_password=False)
    template.drop(url)


def test_plain_postgres_and_sqlite_urls_migrate_and_serve(
    env: dict[str, str], plain_url: str
) -> None:
    # Issue 13: postgresql://… failed with "No module named 'psycopg'" and a raw traceback.
    env = {**env, "HERALD_DATABASE_URL": plain_url}
    migrated = run_herald("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    with herald_process(
        "serve", "--port", str(port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as server:
        assert wait_for(f"http://127.0.0.1:{port}/readyz").status_code == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert server.stderr is not None
        assert "Traceback" not in server.stderr.read()


TYPOS = "route:\n  default: {channels: [console]}\nchannels:\n  console: {type: log, timout: 5s}\n"


def test_check_config_serve_worker_and_events_say_the_same_one_line_per_problem(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "typos.yaml"
    bad.write_text(TYPOS)
    env = {**env, "HERALD_CONFIG": str(bad), "HERALD_DATABASE_URL": "sqlite:///unused.db"}
    expected = [
        f"herald: invalid config {bad}: 2 problems:",
        "  route: unknown section 'route'; did you mean `routes`?",
        "  channels.console.timout: unknown field 'timout'; did you mean `timeout`?",
    ]
    for command, status in (("check-config", 1), ("serve", 2), ("worker", 2), ("events", 2)):
        result = run_herald(command, env=env)
        assert (result.returncode, result.stderr.splitlines()) == (status, expected), command


def test_check_config_refuses_an_empty_file(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.touch()
    result = run_herald("check-config", str(empty), env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"herald: invalid config {empty}: (file): the file is empty; define channels "
        "(see examples/herald.yaml)"
    ]
