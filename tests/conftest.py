"""Shared fixtures: a migrated database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# --- the order of the run and how pytest-xdist hands it out ------------------------------------

FIRST = ("tests/chaos/", "tests/ops/", "tests/integration/")
"""Where the tests that take seconds each live, longest first (a PostgreSQL cluster, Prometheus,
schemathesis; then processes, backoffs and timers): they run first, so that pytest-xdist
spreads them over its workers while the quick ones (tests/api, tests/unit) fill the gaps at
the end, instead of one worker finishing a long test after the others are done."""
SHARED_SETUP = (
    "tests/chaos/test_chaos.py",  # a PostgreSQL cluster; and scenarios are timed: one at a time
    "tests/ops/test_prometheus.py",  # starts Prometheus and sends it traffic
    "tests/ops/test_clients.py",  # generates a client; one herald serve for both clients
    "tests/ops/test_packaging.py",  # builds the wheel
)
"""Modules whose module (or package) fixtures cost seconds: their tests go to one worker
together."""


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``-n N`` (``--dist load``): tests go out one at a time in collection order (above)
    to whichever worker is free, a module of ``SHARED_SETUP`` as one unit. (xdist's own
    ``--dist loadgroup`` would do this with marks, but with pytest 9 it ignores them.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class InOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_SETUP else nodeid

    config.option.loadscopereorder = False  # keep the collection order
    return InOrder(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--chaos-full"):
        full = [item for item in items if item.get_closest_marker("chaos_full")]
        if full:
            config.hook.pytest_deselected(items=full)
            items[:] = [item for item in items if not item.get_closest_marker("chaos_full")]
    if not hasattr(config, "workerinput"):
        return  # not a pytest-xdist worker: the order is the user's (--ff, -p randomly…)
    root = config.rootpath

    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(root).as_posix()
        return next((n for n, where in enumerate(FIRST) if path.startswith(where)), len(FIRST))

    items.sort(key=rank)  # stable: the collection order within each part
