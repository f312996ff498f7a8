"""A worker's side tasks (LISTEN, lease renewal, sweep) and its delivery loop are supervised.

Each test breaks one task for real (its PostgreSQL backend is terminated) or, for the branch
no real part reaches (a bug of ours), makes the step raise: the task is restarted and counted
in ``herald_task_restarts_total{task}``, the worker keeps delivering, and shutdown still saves
the round in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from app.channels.registry import default_registry
from app.config import Settings
from app.delivery import worker as worker_module
from app.delivery.listener import asyncpg_dsn
from app.delivery.worker import Worker
from app.metrics import REGISTRY
from app.runtime import open_runtime
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import HttpServer, serve_http
from tests.support.waiting import until


def hook_config(sink: HttpServer) -> dict[str, Any]:
    return {
        "channels": {
            "hook": {"type": "webhook", "url": sink.url("/a"), "timeout": "5s"},
            "slow": {"type": "webhook", "url": sink.url("/slow"), "timeout": "5s"},
        },
        "routes": {"default": {"channels": ["hook"]}, "slow": {"channels": ["slow"]}},
    }


def restarts(task: str) -> float:
    return REGISTRY.get_sample_value("herald_task_restarts_total", {"task": task}) or 0.0


async def status_is(h: Harness, notification_id: str, status: str) -> bool:
    return bool((await h.get(notification_id))["status"] == status)


@asynccontextmanager
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        yield connection
    finally:
        await connection.close()


async def backends_blocked_by(connection: asyncpg.Connection) -> list[int]:
    """The backends of this database waiting for a lock that ``connection`` holds."""
    # Inside a transaction pg_stat_activity is read once, then cached: read it afresh.
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    rows = await connection.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    )
    return [row["pid"] for row in rows]


async def terminate_blocked(connection: asyncpg.Connection) -> None:
    """Wait until one backend waits on ``connection``'s lock, then terminate it."""
    blocked: list[int] = []

    async def found() -> bool:
        blocked[:] = await backends_blocked_by(connection)
        return bool(blocked)

    await until(found)
    assert len(blocked) == 1, blocked
    assert await connection.fetchval("SELECT pg_terminate_backend($1)", blocked[0])


async def test_a_killed_listener_restarts_and_the_worker_delivers_and_stops_cleanly(
    pg_url: str,
) -> None:
    # The API and the worker run in separate runtimes: only the listener wakes the worker
    # before its 30 s poll.
    async with serve_http() as sink:
        config = hook_config(sink)
        settings = Settings(database_url=pg_url, poll_interval=30.0)
        async with (
            herald(pg_url, config) as api,
            open_runtime(settings, api.runtime.config, default_registry()) as rt,
            admin(pg_url) as db,
        ):
            listener_pid = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
            listener_pid += "AND datname = current_database()"
            before = restarts("listener")
            stop = asyncio.Event()
            worker = asyncio.create_task(Worker(rt).run(stop))
            try:
                await until(lambda: db.fetchval(listener_pid))
                killed = await db.fetchval(listener_pid)
                assert await db.fetchval("SELECT pg_terminate_backend($1)", killed)

                async def listening_again() -> bool:
                    return await db.fetchval(listener_pid) not in (None, killed)

                await until(listening_again)
                assert restarts("listener") == before + 1
                created = await api.send(text="x")
                began = time.monotonic()
                await until(lambda: status_is(api, created["id"], "delivered"))
                assert time.monotonic() - began < 2, "woken by NOTIFY, not by the 30 s poll"

                sink.delay("/slow", 0.5)
                in_flight = await api.send(text="in flight at shutdown", route="slow")
                await until(lambda: len(sink.requests_to("/slow")) == 1)
            finally:
                stop.set()
                await asyncio.wait_for(worker, 10)
            body = await api.get(in_flight["id"])
            assert (body["status"], body["attempt_count"]) == ("delivered", 1)


async def test_a_killed_lease_renewal_restarts_and_the_lease_is_kept(pg_url: str) -> None:
    async with serve_http() as sink, herald(pg_url, hook_config(sink), lease=1.5) as h:
        sink.delay("/slow", 2.5)
        before = restarts("renewal")
        slow = await h.send(text="slow", route="slow")
        async with running_worker(h) as stop, admin(pg_url) as db:
            await until(lambda: len(sink.requests_to("/slow")) == 1)
            async with db.transaction():
                await db.execute("SELECT 1 FROM notifications FOR UPDATE")
                await terminate_blocked(db)  # the renewal: claims skip locked rows
            await until(lambda: restarts("renewal") == before + 1)
            quick = await h.send(text="quick")
            await until(lambda: status_is(h, quick["id"], "delivered"))
            stop.set()  # the slow round is still at the provider: shutdown waits for it
        body = await h.get(slow["id"])
        assert (body["status"], body["attempt_count"]) == ("delivered", 1)
        assert len(sink.requests_to("/slow")) == 1, "the lease was kept: never taken over"


async def test_a_killed_sweep_restarts_and_never_holds_up_deliveries(pg_url: str) -> None:
    async with serve_http() as sink, herald(pg_url, hook_config(sink)) as h:
        orphan = await h.send(text="its worker died")
        await h.set_fields(
            orphan["id"],
            status="delivering",
            claimed_by="dead-worker",
            lease_expires_at=h.clock() - timedelta(seconds=1),
        )
        before = restarts("sweep")
        async with admin(pg_url) as db:
            lock = db.transaction()
            await lock.start()
            await db.execute("SELECT 1 FROM notifications FOR UPDATE")  # before the first sweep
            async with running_worker(h):
                await terminate_blocked(db)  # the sweep, wanting the orphan's row
                await until(lambda: restarts("sweep") == before + 1)
                fresh = await h.send(text="sent while the sweep waits")
                await until(lambda: status_is(h, fresh["id"], "delivered"))
                await lock.rollback()
                # The restarted sweep gets the row: it hands the orphan back to be delivered.
                await until(lambda: status_is(h, orphan["id"], "delivered"))
        assert restarts("sweep") == before + 1


def _broken_once(real: Callable[..., Awaitable[Any]], error: Exception, calls: list[int]) -> Any:
    async def broken_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return await real(*args)

    return broken_once


@pytest.mark.parametrize(
    ("task", "step", "error", "pause"),
    [
        ("sweep", "sweep", RuntimeError("a bug of ours"), "0.5s"),
        ("delivery", "claim", RuntimeError("a bug of ours"), "1s"),
        # asyncpg's own: the listener used to die of it, and re-raise it at shutdown.
        ("listener", "listen", asyncpg.InterfaceError("connection is closed"), "0.5s"),
    ],
)
async def test_a_bug_in_a_task_is_logged_once_counted_and_the_task_restarts(
    db_url: str,
    task: str,
    step: str,
    error: Exception,
    pause: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if task == "listener" and db_url.startswith("sqlite"):
        pytest.skip("LISTEN is PostgreSQL's")
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        calls: list[int] = []
        if task == "listener":
            broken = _broken_once(worker_module.listen, error, calls)
            monkeypatch.setattr(worker_module, "listen", broken)
        else:
            monkeypatch.setattr(h.worker, step, _broken_once(getattr(h.worker, step), error, calls))
        before = restarts(task)
        sink.delay("/slow", 0.5)
        with caplog.at_level(logging.INFO, logger="herald.supervisor"):
            async with running_worker(h):
                await until(lambda: len(calls) >= 2)  # restarted: the step ran again
                created = await h.send(text="x")
                await until(lambda: status_is(h, created["id"], "delivered"))
                in_flight = await h.send(text="in flight at shutdown", route="slow")
                await until(lambda: len(sink.requests_to("/slow")) == 1)
        body = await h.get(in_flight["id"])
        assert (body["status"], body["attempt_count"]) == ("delivered", 1), "shutdown saved it"
        assert restarts(task) == before + 1
        lines = [r for r in caplog.records if r.name == "herald.supervisor"]
        assert [(r.levelno, r.getMessage()) for r in lines] == [
            (logging.ERROR, f"{task} task crashed: {error}; restarting in {pause}")
        ]
        assert lines[0].exc_info is not None, "the traceback, once"
