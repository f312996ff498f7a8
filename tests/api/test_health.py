"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.api.conftest import BASIC_CONFIG, assert_problem, metric_value, scrape
from tests.support.databases import PostgresTemplate, with_database
from tests.support.harness import Harness, herald


async def test_healthz(h: Harness) -> None:
    response = await h.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_on_a_migrated_database(h: Harness) -> None:
    response = await h.client.get("/readyz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def assert_unmigrated(url: str) -> None:
    async with herald(url, BASIC_CONFIG) as h:
        response = await h.client.get("/readyz")
        assert_problem(response, 503, detail_contains=("migration none", "herald migrate"))
        # Liveness does not depend on the database.
        assert (await h.client.get("/healthz")).status_code == 200
        # The API answers a problem, not a crash, when the tables are missing.
        sent = await h.client.post("/v1/notifications", json={"route": "alerts", "text": "x"})
        assert_problem(sent, 503)
        assert sent.headers["retry-after"] == "1"


async def test_readyz_on_an_unmigrated_sqlite_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    await assert_unmigrated(f"sqlite+aiosqlite:///{empty}")


@pytest.fixture
async def empty_postgres(postgres_template: PostgresTemplate) -> AsyncIterator[str]:
    name = f"herald_empty_{uuid.uuid4().hex[:10]}"
    dsn = make_url(postgres_template.url).set(drivername="postgresql")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(postgres_template.url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_readyz_on_an_unmigrated_postgres_database(empty_postgres: str) -> None:
    await assert_unmigrated(empty_postgres)


async def test_readyz_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'herald.db'}"
    async with herald(url, BASIC_CONFIG) as h:
        response = await h.client.get("/readyz")
        problem = assert_problem(response, 503, detail_contains="database unreachable")
        assert "unable to open database file" in problem["detail"]
        listed = await h.client.get("/v1/notifications")
        assert_problem(listed, 503, detail_contains="database")
        # Metrics still answer with what the process knows.
        assert (await h.client.get("/metrics")).status_code == 200


async def test_metrics_count_received_notifications_by_route(h: Harness) -> None:
    name = "herald_notifications_received_total"
    text = await scrape(h)
    before = {
        route: metric_value(text, name, route=route) or 0.0
        for route in ("alerts", "default", "(inline)")
    }
    for _ in range(3):
        await h.send(route="alerts", text="x")
    await h.send(text="x")
    await h.send(channels=["console"], text="x")
    refused = await h.client.post("/v1/notifications", json={"route": "alerts"})
    assert refused.status_code == 422
    text = await scrape(h)
    assert metric_value(text, name, route="alerts") == before["alerts"] + 3
    assert metric_value(text, name, route="default") == before["default"] + 1
    assert metric_value(text, name, route="(inline)") == before["(inline)"] + 1


async def test_metrics_queue_depth_is_read_from_the_database(h: Harness) -> None:
    for _ in range(3):
        await h.send(route="alerts", text="x", send_at="2099-01-01T00:00:00Z")
    delivered = await h.send(route="alerts", text="x")
    cancelled = await h.send(route="alerts", text="x", send_at="2099-01-01T00:00:00Z")
    assert await h.run_worker() == 1
    assert (await h.client.post(f"/v1/notifications/{cancelled['id']}/cancel")).is_success
    assert (await h.get(delivered["id"]))["status"] == "delivered"

    response = await h.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric_value(text, "herald_queue_depth", status="pending") == 3
    assert metric_value(text, "herald_queue_depth", status="delivered") == 1
    assert metric_value(text, "herald_queue_depth", status="cancelled") == 1
    assert metric_value(text, "herald_queue_depth", status="failed") == 0
    assert metric_value(text, "herald_queue_depth", status="delivering") == 0


async def test_metrics_label_http_requests_by_route_template(h: Harness) -> None:
    name = "herald_http_requests_total"
    template = "/v1/notifications/{notification_id}"
    before = metric_value(await scrape(h), name, method="GET", path=template, status="200") or 0
    missing = uuid.uuid4()
    before_404 = metric_value(await scrape(h), name, method="GET", path=template, status="404") or 0
    created = await h.send(route="alerts", text="x")
    await h.get(created["id"])
    await h.get(created["id"])
    assert (await h.client.get(f"/v1/notifications/{missing}")).status_code == 404
    await h.attempts(created["id"])

    text = await scrape(h)
    assert metric_value(text, name, method="GET", path=template, status="200") == before + 2
    assert metric_value(text, name, method="GET", path=template, status="404") == before_404 + 1
    assert (
        metric_value(text, name, method="GET", path=template + "/attempts", status="200") or 0
    ) >= 1
    assert (
        metric_value(text, name, method="POST", path="/v1/notifications", status="202") or 0
    ) >= 1
    assert created["id"] not in text
    assert str(missing) not in text


async def test_metrics_do_not_label_unknown_paths_by_their_raw_path(h: Harness) -> None:
    probe = f"/probe-{uuid.uuid4().hex}"
    assert (await h.client.get(probe)).status_code == 404
    text = await scrape(h)
    assert probe not in text
    assert (
        metric_value(
            text, "herald_http_requests_total", method="GET", path="(unmatched)", status="404"
        )
        or 0
    ) >= 1
