"""A database Herald cannot use (wrong name, wrong role, missing directory, read-only file):
every route that touches it answers 503 with Retry-After, as in any outage, never a 500."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.api.conftest import BASIC_CONFIG, assert_problem
from tests.support.databases import admin_url, with_database
from tests.support.harness import herald

SOME_ID = "0190a8f0-0000-7000-8000-000000000000"
NOTIFICATION = {"route": "alerts", "text": "x"}

CALLS: list[tuple[str, str, dict[str, object] | None, dict[str, str]]] = [
    ("POST", "/v1/notifications", NOTIFICATION, {}),
    ("POST", "/v1/notifications", NOTIFICATION, {"Idempotency-Key": "k-1"}),
    ("POST", "/v1/notifications/batch", {"items": [NOTIFICATION]}, {}),
    ("GET", "/v1/notifications", None, {}),
    ("GET", f"/v1/notifications/{SOME_ID}", None, {}),
    ("GET", f"/v1/notifications/{SOME_ID}/attempts", None, {}),
    ("POST", f"/v1/notifications/{SOME_ID}/cancel", None, {}),
    ("POST", f"/v1/notifications/{SOME_ID}/retry", None, {}),
]


@pytest.fixture(
    params=[
        pytest.param("postgres-no-database", marks=pytest.mark.postgres),
        pytest.param("postgres-no-role", marks=pytest.mark.postgres),
        "sqlite-no-directory",
        "sqlite-read-only",
    ]
)
def unusable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres-no-database":  # SQLSTATE 3D000
        request.getfixturevalue("postgres_template")  # skips (or fails in CI) without a server
        yield with_database(admin_url(), f"herald_missing_{uuid.uuid4().hex[:8]}")
    elif request.param == "postgres-no-role":  # SQLSTATE 28000
        request.getfixturevalue("postgres_template")
        url = make_url(admin_url()).set(username=f"nobody_{uuid.uuid4().hex[:8]}", password=None)
        yield url.render_as_string(hide_password=False)
    elif request.param == "sqlite-no-directory":
        yield f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'herald.db'}"
    else:
        template = request.getfixturevalue("sqlite_template")
        path = make_url(template.clone(tmp_path)).database
        assert path is not None
        os.chmod(path, 0o444)  # root ignores it; ``mode=ro`` holds for everyone
        yield f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"


@pytest.mark.parametrize(("method", "path", "body", "headers"), CALLS)
async def test_every_database_route_answers_503_with_retry_after(
    unusable_url: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
    headers: dict[str, str],
) -> None:
    async with herald(unusable_url, BASIC_CONFIG) as h:
        response = await h.client.request(method, path, json=body, headers=headers)
        assert_problem(response, 503, detail_contains="database")
        assert response.headers["retry-after"] == "1"
