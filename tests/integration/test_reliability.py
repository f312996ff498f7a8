"""Reliability on real parts: cross-process wake-ups, the circuit breaker, database faults."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from app.channels.registry import default_registry
from app.config import Settings
from app.delivery.listener import asyncpg_dsn
from app.delivery.worker import Worker
from app.metrics import REGISTRY
from app.runtime import open_runtime
from tests.support.harness import config_from, herald
from tests.support.http_server import serve_http


def webhook_config(url: str, **channel: Any) -> dict[str, Any]:
    return {
        "channels": {"hook": {"type": "webhook", "url": url, **channel}, "log": {"type": "log"}},
        "routes": {"default": {"channels": ["hook", "log"]}},
    }


async def wait_for_status(h: Any, notification_id: str, status: str, within: float) -> float:
    began = time.monotonic()
    while (await h.get(notification_id))["status"] != status:
        if time.monotonic() - began > within:
            raise AssertionError(f"{notification_id} not {status} within {within}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


async def test_a_separate_worker_wakes_on_notify(pg_url: str) -> None:
    """The API runs in one runtime, the worker in another: only NOTIFY connects them."""
    async with serve_http() as sink:
        config = webhook_config(sink.url("/a"))
        settings = Settings(database_url=pg_url, poll_interval=30.0)
        async with (
            herald(pg_url, config) as api,
            open_runtime(settings, config_from(config), default_registry()) as worker_runtime,
        ):
            stop = asyncio.Event()
            worker = asyncio.create_task(Worker(worker_runtime).run(stop))
            await asyncio.sleep(0.5)  # listening, and idle for up to 30 s
            try:
                created = await api.send(text="x")
                took = await wait_for_status(api, created["id"], "delivered", within=5)
                assert took < 2, "woken by NOTIFY, not by the 30 s poll"

                # Kill the listener's connection: it reconnects and still wakes the worker.
                admin = await asyncpg.connect(asyncpg_dsn(pg_url))
                try:
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                finally:
                    await admin.close()
                assert killed == 1
                await asyncio.sleep(1.5)  # the listener's first reconnect comes after 0.5 s
                again = await api.send(text="y")
                took = await wait_for_status(api, again["id"], "delivered", within=5)
                assert took < 2
            finally:
                stop.set()
                await asyncio.wait_for(worker, 10)


async def test_circuit_opens_skips_the_provider_and_shows_in_channels(db_url: str) -> None:
    async with serve_http() as sink:
        sink.default = (503, {}, "down")
        config = webhook_config(sink.url("/a"), circuit={"failures": 2, "cooldown": "1h"})
        async with herald(db_url, config) as h:
            ids = []
            for i in range(3):
                ids.append((await h.send(text=f"n{i}"))["id"])
                await h.run_worker()
            assert len(sink.requests_to("/a")) == 2, "the third went nowhere near the provider"
            third = await h.attempts(ids[2])
            assert [
                (a["channel"], a["outcome"], a["error"] and a["error"]["code"]) for a in third
            ] == [
                ("hook", "skipped", "circuit_open"),
                ("log", "delivered", None),
            ]
            channels = {c["name"]: c for c in (await h.client.get("/v1/channels")).json()["items"]}
            assert channels["hook"]["circuit"]["state"] == "open"
            assert channels["hook"]["health"] == "unhealthy"
            assert channels["hook"]["circuit"]["retry_in_seconds"] > 3500
            assert channels["log"]["health"] == "healthy"
            assert (
                REGISTRY.get_sample_value("herald_channel_circuit_state", {"channel": "hook"}) == 2
            )
            body = await h.get(ids[2])
            assert body["hops"][0]["state"] == "skipped"


async def test_api_answers_503_while_the_database_is_down_and_recovers(tmp_path: Any) -> None:
    """A PostgreSQL URL nobody answers: the API says 503 problem+json, readyz 503."""
    config = webhook_config("http://127.0.0.1:9/x")
    async with herald("postgresql+asyncpg://postgres@127.0.0.1:9/none", config) as h:
        response = await h.client.post("/v1/notifications", json={"text": "x"})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert "unreachable" in response.json()["detail"]
        ready = await h.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
