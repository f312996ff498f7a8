"""A whole Herald in the test's event loop: runtime, API client, worker and a movable clock."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from app.channels.registry import ChannelRegistry, default_registry
from app.config import HeraldConfig, Settings, parse_config
from app.delivery.orchestrator import Orchestrator, utcnow
from app.delivery.worker import Worker
from app.main import create_app
from app.runtime import Runtime, open_runtime
from app.store.models import Notification

LOOPBACK = ["127.0.0.0/8", "::1/128"]


class Clock:
    """Real time plus an offset the test moves forward; the worker reads this clock.

    It is also the ``app.clock.Clock`` that rate limits and channels wait on: ``sleep`` moves
    the offset on at once (and notes the wait in ``slept``) instead of waiting.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        """Seconds ahead of real time (a float: sleeps add up exactly)."""
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass
class Harness:
    runtime: Runtime
    client: httpx.AsyncClient
    clock: Clock
    worker: Worker

    async def send(
        self, expect: int = 202, headers: dict[str, str] | None = None, **body: Any
    ) -> dict[str, Any]:
        response = await self.client.post("/v1/notifications", json=body, headers=headers or {})
        assert response.status_code == expect, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, notification_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def attempts(self, notification_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/notifications/{notification_id}/attempts")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def run_worker(self) -> int:
        """Claim and deliver until nothing is due at the worker's clock; rounds run."""
        total = 0
        while claimed := await self.worker.run_once():
            total += claimed
        return total

    async def advance_to_next_round(self, notification_id: str) -> None:
        """Move the worker's clock to the notification's next_attempt_at."""
        body = await self.get(notification_id)
        due = datetime.fromisoformat(body["next_attempt_at"])
        gap = (due - self.clock()).total_seconds()
        if gap > 0:
            self.clock.advance(gap + 0.001)

    async def set_fields(self, notification_id: str, **values: Any) -> None:
        """Change a stored notification directly (to stage a situation)."""
        async with self.runtime.sessions() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(Notification.id == uuid.UUID(notification_id))
                .values(**values)
            )


def config_from(raw: dict[str, Any], registry: ChannelRegistry | None = None) -> HeraldConfig:
    return parse_config(raw, registry or default_registry(), source="test")


@asynccontextmanager
async def herald(
    db_url: str,
    config: dict[str, Any] | HeraldConfig,
    *,
    registry: ChannelRegistry | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """Herald on ``db_url``; ``registry`` adds channel types beyond the default ones."""
    registry = registry or default_registry()
    if isinstance(config, dict) and "network" not in config:
        # Test peers live on loopback, which the outbound guard refuses by default.
        config = {**config, "network": {"allowed_networks": LOOPBACK}}
    parsed = config if isinstance(config, HeraldConfig) else config_from(config, registry)
    merged = {"database_url": db_url, "poll_interval": 0.05, "lease": 30.0, **settings}
    clock = Clock()
    async with open_runtime(Settings(**merged), parsed, registry, clock=clock) as runtime:
        with app_serving(runtime) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as c:
                worker = Worker(runtime, clock=clock, orchestrator=Orchestrator(clock=clock))
                yield Harness(runtime=runtime, client=c, clock=clock, worker=worker)


class _SharedApp:
    """One ``create_app()`` for the test process, lent to one harness at a time.

    The application holds nothing of its own but ``app.state.runtime`` (what every route reads),
    and FastAPI builds each route's handling (dependencies, models) at the first request of
    each new application: ~25 ms of CPU per test, a quarter of a typical API test's. A harness
    opened while another has the app (two Heralds at once) gets an application of its own.
    """

    app: FastAPI | None = None
    lent = False


@contextmanager
def app_serving(runtime: Runtime) -> Iterator[FastAPI]:
    """``create_app(runtime=runtime)``, the process's shared one when it is free."""
    if _SharedApp.lent:
        yield create_app(runtime=runtime)
        return
    if _SharedApp.app is None:
        _SharedApp.app = create_app(runtime=runtime)
    app = _SharedApp.app
    app.state.runtime = runtime
    _SharedApp.lent = True
    try:
        yield app
    finally:
        _SharedApp.lent = False
        del app.state.runtime


@asynccontextmanager
async def running_worker(harness: Harness) -> AsyncIterator[asyncio.Event]:
    """Run the harness worker's real loop in the background for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(harness.worker.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
