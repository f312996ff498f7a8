"""Shared fixtures: a migrated database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import (
    ENV_VAR,
    PostgresTemplate,
    SqliteTemplate,
    admin_url,
    postgres_reachable,
)
from tests.support.redis import (  # noqa: F401  (fixtures shared by every test)
    prefix,
    redis,
    redis_server,
)
from tests.support.smtp_server import (  # noqa: F401  (fixtures shared by every test)
    ca,
    ca_file,
    handler,
    implicit_tls_server,
    plain_server,
    server_tls,
    starttls_server,
)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    template = SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))
    template.create()
    return template


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate]:
    url = admin_url()
    problem = postgres_reachable(url)
    if problem is not None:
        message = f"PostgreSQL not reachable at {ENV_VAR}={url} ({problem})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the PostgreSQL tests")
        pytest.skip(f"{message}; set {ENV_VAR} to run the PostgreSQL tests")
    template = PostgresTemplate(url)
    template.create()
    yield template
    template.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database of each kind."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_template").clone(tmp_path)
        return
    template: PostgresTemplate = request.getfixturevalue("postgres_template")
    url = template.clone()
    yield url
    template.release(url)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-full",
        action="store_true",
        default=False,
        help="run the full chaos scenarios (marked chaos_full; make chaos), not only the short",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos_full: the long chaos scenarios, deselected unless --chaos-full"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--chaos-full"):
        return
    full = [item for item in items if item.get_closest_marker("chaos_full")]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if not item.get_closest_marker("chaos_full")]
