"""``?wait=`` on POST and GET of a notification, on SQLite and PostgreSQL, against real local
HTTP receivers: the answer comes when the notification is final, woken by the worker's save (in
process, or from another process over ``NOTIFY herald_final``) or by a cancel, never by polling.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from app.channels.registry import default_registry
from app.config import Settings
from app.delivery.worker import Worker
from app.main import create_app
from app.metrics import REGISTRY
from app.runtime import Runtime, open_runtime
from app.store.sql import FINAL_CHANNEL
from tests.api.test_auth import BACKEND, OPS, READER, auth_config, bearer
from tests.integration.test_supervision import admin, until
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import HttpServer, serve_asgi, serve_http

WAIT_LISTENER = (
    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%herald_final%' "
    "AND datname = current_database()"
)


def hook_config(sink: HttpServer) -> dict[str, Any]:
    """``default`` delivers through a webhook on ``/a``; ``later`` retries in 5 s when ``/b``
    fails."""
    return {
        "channels": {
            "hook": {"type": "webhook", "url": sink.url("/a"), "timeout": "5s"},
            "flaky": {"type": "webhook", "url": sink.url("/b"), "timeout": "5s"},
        },
        "routes": {
            "default": {"channels": ["hook"]},
            "later": {"channels": ["flaky"], "retry": {"schedule": ["5s", "1m"], "jitter": 0}},
        },
    }


async def timed(request: Any) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = await request
    return response, time.monotonic() - began


def listener_restarts() -> float:
    labels = {"task": "wait_listener"}
    return REGISTRY.get_sample_value("herald_task_restarts_total", labels) or 0.0


def waits(result: str) -> float:
    return REGISTRY.get_sample_value("herald_waits_total", {"result": result}) or 0.0


WORKERS = ["in-process", "elsewhere"]
"""Where the worker that delivers runs: in the API's process (the harness's own), or in a
process of its own (PostgreSQL only)."""


@asynccontextmanager
async def worker_elsewhere(api: Harness) -> AsyncIterator[Runtime]:
    """A worker in a runtime of its own on the same database, as ``herald worker`` would run
    beside ``herald serve --no-worker``: its saves reach the API only through PostgreSQL."""
    settings = Settings(database_url=api.runtime.settings.database_url, poll_interval=0.05)
    async with open_runtime(settings, api.runtime.config, default_registry()) as runtime:
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(runtime).run(stop))
        try:
            yield runtime
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)


@asynccontextmanager
async def a_worker(api: Harness, where: str) -> AsyncIterator[None]:
    if where == "in-process":
        async with running_worker(api):
            yield
        return
    if api.runtime.settings.database_url.startswith("sqlite"):
        pytest.skip("one process serves and delivers on SQLite")
    async with worker_elsewhere(api):
        yield


@pytest.mark.parametrize("where", WORKERS)
@pytest.mark.parametrize("road", ["fast", "fastapi"])
async def test_post_with_wait_answers_the_final_state_of_a_route_that_delivers(
    db_url: str, road: str, where: str
) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        sink.delay("/a", 0.3)  # the answer must wait for the round, not race it
        before = waits("final")
        async with a_worker(h, where):
            # A non-JSON content type with a JSON body is not the fast road's: FastAPI answers.
            headers = {} if road == "fast" else {"Content-Type": "application/cloudevents+json"}
            response, took = await timed(
                h.client.post(
                    "/v1/notifications?wait=5s",
                    content=b'{"text": "hello"}',
                    headers={"Content-Type": "application/json", **headers},
                )
            )
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["status"], body["delivered_via"]) == ("delivered", "hook")
        assert "herald-wait" not in response.headers
        assert response.headers["location"] == f"/v1/notifications/{body['id']}"
        assert 0.3 <= took < 3, took
        assert body == await h.get(body["id"])
        assert len(sink.requests_to("/a")) == 1
        assert waits("final") == before + 1
        assert len(h.runtime.waiters) == 0


async def test_post_with_wait_on_a_route_that_retries_later_answers_after_the_wait(
    db_url: str,
) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        sink.script("/b", (503, {}, "busy"))
        before = waits("timeout")
        async with running_worker(h):
            response, took = await timed(
                h.client.post("/v1/notifications?wait=1s", json={"route": "later", "text": "x"})
            )
        assert response.status_code == 202, response.text
        assert response.headers["herald-wait"] == "timeout"
        body = response.json()
        assert (body["status"], body["round"]) == ("pending", 1), "the state after the wait"
        assert body["hops"][0]["state"] == "retrying"
        assert 1 <= took < 2.5, took
        assert waits("timeout") == before + 1


@pytest.mark.parametrize("where", WORKERS)
async def test_get_with_wait_is_woken_by_the_worker(db_url: str, where: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        sink.delay("/a", 0.5)
        created = await h.send(text="x")
        async with a_worker(h, where):
            await until(lambda: len(sink.requests_to("/a")) == 1)
            response, took = await timed(
                h.client.get(f"/v1/notifications/{created['id']}?wait=10s")
            )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "delivered"
        assert "herald-wait" not in response.headers
        assert took < 3, "woken by the worker's save, not by the end of the wait"


async def test_get_with_wait_on_a_final_notification_answers_at_once(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        created = await h.send(text="x")
        await h.run_worker()
        response, took = await timed(h.client.get(f"/v1/notifications/{created['id']}?wait=30s"))
        assert (response.status_code, response.json()["status"]) == (200, "delivered")
        assert "herald-wait" not in response.headers
        assert took < 1


async def test_get_with_wait_of_an_unknown_notification_is_404_at_once(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        response, took = await timed(h.client.get(f"/v1/notifications/{uuid.uuid4()}?wait=30s"))
        assert response.status_code == 404
        assert took < 1
        assert len(h.runtime.waiters) == 0


async def test_another_keys_notification_is_404_with_wait_too(db_url: str) -> None:
    async with herald(db_url, auth_config()) as h:
        created = await h.send(text="x", headers=bearer(BACKEND), send_at="2099-01-01T00:00:00Z")
        response, took = await timed(
            h.client.get(f"/v1/notifications/{created['id']}?wait=5s", headers=bearer(READER))
        )
        assert response.status_code == 404
        assert took < 1
        mine = await h.client.get(
            f"/v1/notifications/{created['id']}?wait=0.1", headers=bearer(BACKEND)
        )
        assert (mine.status_code, mine.headers["herald-wait"]) == (200, "timeout")


async def test_an_idempotent_replay_with_wait_answers_the_current_state(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        key = {"Idempotency-Key": "replay-with-wait"}
        async with running_worker(h):
            first = await h.client.post(
                "/v1/notifications?wait=5s", json={"text": "x"}, headers=key
            )
            assert (first.status_code, first.json()["status"]) == (202, "delivered")
            replay, took = await timed(
                h.client.post("/v1/notifications?wait=5s", json={"text": "x"}, headers=key)
            )
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert "herald-wait" not in replay.headers
        assert replay.json() == first.json()
        assert took < 1, "final already: no wait"
        assert len(sink.requests_to("/a")) == 1

        pending_key = {"Idempotency-Key": "replay-of-a-pending-one"}
        later = {"route": "later", "text": "x", "send_at": "2099-01-01T00:00:00Z"}
        await h.client.post("/v1/notifications", json=later, headers=pending_key)
        waited = await h.client.post("/v1/notifications?wait=0.2s", json=later, headers=pending_key)
        assert (waited.status_code, waited.json()["status"]) == (200, "pending")
        assert waited.headers["herald-wait"] == "timeout"
        assert waited.headers["idempotent-replayed"] == "true"


async def test_a_cancel_wakes_a_waiting_request(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        created = await h.send(text="x", send_at="2099-01-01T00:00:00Z")
        waiting = asyncio.create_task(
            timed(h.client.get(f"/v1/notifications/{created['id']}?wait=10s"))
        )
        await until(lambda: len(h.runtime.waiters) == 1)
        cancelled = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        response, took = await waiting
        assert (response.status_code, response.json()["status"]) == (200, "cancelled")
        assert "herald-wait" not in response.headers
        assert took < 3
        assert len(h.runtime.waiters) == 0


async def test_waiting_requests_over_the_limit_are_answered_at_once(db_url: str) -> None:
    async with herald(db_url, auth_config()) as h:
        h.runtime.waiters.limit, h.runtime.waiters.per_key = 2, 1
        created = await h.send(text="x", headers=bearer(BACKEND), send_at="2099-01-01T00:00:00Z")
        url = f"/v1/notifications/{created['id']}?wait=5s"
        first = asyncio.create_task(h.client.get(url, headers=bearer(BACKEND)))
        await until(lambda: len(h.runtime.waiters) == 1)
        before = waits("busy")
        busy, took = await timed(h.client.get(url, headers=bearer(BACKEND)))
        assert (busy.status_code, busy.headers["herald-wait"]) == (200, "busy"), "per key"
        assert busy.json()["status"] == "pending"
        assert took < 1
        assert waits("busy") == before + 1
        await h.client.post(f"/v1/notifications/{created['id']}/cancel", headers=bearer(OPS))
        assert (await first).json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("method", "content_type"),
    [("GET", None), ("POST", "application/json"), ("POST", "application/cloudevents+json")],
    ids=["get", "post-fast", "post-fastapi"],
)
async def test_a_client_that_hangs_up_frees_its_place(
    db_url: str, method: str, content_type: str | None
) -> None:
    async with herald(db_url, {"channels": {"log": {"type": "log"}}, "routes": {}}) as h:
        later = {"channels": ["log"], "text": "x", "send_at": "2099-01-01T00:00:00Z"}
        created = await h.send(**later)
        path = "/v1/notifications" + ("/{notification_id}" if method == "GET" else "")
        labels = {"method": method, "path": path, "status": "499"}
        before = REGISTRY.get_sample_value("herald_http_requests_total", labels) or 0
        async with serve_asgi(create_app(runtime=h.runtime), log_level="warning") as port:
            base = f"http://127.0.0.1:{port}/v1/notifications"
            async with httpx.AsyncClient(timeout=40) as client:
                if method == "GET":
                    request = client.get(f"{base}/{created['id']}", params={"wait": "30s"})
                else:
                    request = client.post(
                        base,
                        params={"wait": "30s"},
                        content=json.dumps(later),
                        headers={"Content-Type": str(content_type)},
                    )
                waiting = asyncio.create_task(request)
                await until(lambda: len(h.runtime.waiters) == 1)
                waiting.cancel()  # the client hangs up
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            await until(lambda: len(h.runtime.waiters) == 0, within=2)
            assert REGISTRY.get_sample_value("herald_http_requests_total", labels) == before + 1


# --- across processes: NOTIFY herald_final ----------------------------------------------------


async def test_a_cancel_in_another_process_wakes_a_waiting_request(pg_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(pg_url, hook_config(sink)) as api,
        herald(pg_url, hook_config(sink)) as other,
    ):
        created = await api.send(text="x", send_at="2099-01-01T00:00:00Z")
        waiting = asyncio.create_task(
            timed(api.client.get(f"/v1/notifications/{created['id']}?wait=10s"))
        )
        await until(lambda: len(api.runtime.waiters) == 1)
        async with admin(pg_url) as db:
            await until(lambda: db.fetchval(WAIT_LISTENER))
        assert (await other.client.post(f"/v1/notifications/{created['id']}/cancel")).is_success
        response, took = await waiting
        assert response.json()["status"] == "cancelled"
        assert took < 3


async def test_the_worker_announces_final_states_on_herald_final(pg_url: str) -> None:
    async with serve_http() as sink, herald(pg_url, hook_config(sink)) as h, admin(pg_url) as db:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await db.add_listener(FINAL_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        sink.script("/b", (503, {}, "busy"))
        delivered = [await h.send(text=str(i)) for i in range(3)]
        retrying = await h.send(route="later", text="x")
        await h.run_worker()
        ids: set[str] = set()
        while len(ids) < 3:
            ids.update((await asyncio.wait_for(heard.get(), 5)).split(","))
        assert ids == {created["id"] for created in delivered}
        await asyncio.sleep(0.2)
        assert heard.empty(), "a round that is not final is not announced"
        assert retrying["id"] not in ids


async def test_a_lost_wait_listener_reconnects_and_waiters_still_wake(pg_url: str) -> None:
    async with serve_http() as sink, herald(pg_url, hook_config(sink)) as api, admin(pg_url) as db:
        before = listener_restarts()
        first = await api.send(text="x", send_at="2099-01-01T00:00:00Z")
        waiting = asyncio.create_task(api.client.get(f"/v1/notifications/{first['id']}?wait=20s"))
        await until(lambda: db.fetchval(WAIT_LISTENER))
        killed = await db.fetchval(WAIT_LISTENER)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", killed)

        async def listening_again() -> bool:
            return await db.fetchval(WAIT_LISTENER) not in (None, killed)

        await until(listening_again)
        sink.delay("/a", 0.5)
        created = await api.send(text="y")
        async with worker_elsewhere(api):
            await until(lambda: len(sink.requests_to("/a")) == 1)
            response, took = await timed(
                api.client.get(f"/v1/notifications/{created['id']}?wait=10s")
            )
        assert response.json()["status"] == "delivered"
        assert took < 3
        await api.client.post(f"/v1/notifications/{first['id']}/cancel")
        assert (await waiting).json()["status"] == "cancelled"
        assert listener_restarts() == before + 1
