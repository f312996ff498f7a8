"""Finished rounds are saved many per transaction, each only while its lease is still ours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.delivery.saves import RoundSaver
from app.store.db import create_engine, is_sqlite
from app.store.models import Notification
from app.store.queue import Claimed, FinishedRound
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import HttpServer, serve_http
from tests.support.rounds import delivered_round, failed_round


def hook_config(sink: HttpServer) -> dict[str, Any]:
    return {
        "channels": {"hook": {"type": "webhook", "url": sink.url("/a"), "timeout": "5s"}},
        "routes": {"default": {"channels": ["hook"]}},
    }


async def claimed(h: Harness, count: int) -> list[Claimed]:
    for i in range(count):
        await h.send(text=f"n{i}")
    notifications = await h.worker.claim(count)
    assert len(notifications) == count
    return sorted(notifications, key=lambda n: n.id)


@asynccontextmanager
async def write_lock(db_url: str) -> AsyncIterator[None]:
    """Hold, from another connection, what a save must wait for: on PostgreSQL the row locks of
    every notification, on SQLite the database's write lock."""
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            if is_sqlite(db_url):
                await conn.execute(text("UPDATE notifications SET owner = owner"))
            else:
                await conn.execute(text("SELECT id FROM notifications FOR UPDATE"))
            try:
                yield
            finally:
                await conn.rollback()
    finally:
        await engine.dispose()


def count_saves(h: Harness) -> list[int]:
    """A list that gets, as each save transaction of the worker's store ends, its rounds."""
    sizes: list[int] = []
    store = h.worker.store
    save_rounds = store.save_rounds

    async def counted(rounds: Any, *, worker_id: str) -> Any:
        saved = await save_rounds(rounds, worker_id=worker_id)
        sizes.append(len(rounds))
        return saved

    store.save_rounds = counted  # type: ignore[method-assign]
    return sizes


async def test_save_rounds_writes_several_notifications_and_skips_a_lost_lease(
    db_url: str,
) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        first, lost, third = await claimed(h, 3)
        await h.set_fields(str(lost.id), claimed_by="another-worker")
        rounds = [
            delivered_round(h, first),
            delivered_round(h, lost),
            failed_round(h, third),  # other columns change: a second UPDATE group
        ]
        saved = await h.worker.store.save_rounds(rounds, worker_id=h.worker.worker_id)
        assert saved == {first.id, third.id}

        body = await h.get(str(first.id))
        assert (body["status"], body["attempt_count"], body["round"]) == ("delivered", 1, 1)
        assert [a["outcome"] for a in await h.attempts(str(first.id))] == ["delivered"]

        body = await h.get(str(third.id))
        assert (body["status"], body["attempt_count"]) == ("pending", 1)
        assert body["last_error"]["code"] == "http_503"
        assert body["delivered_at"] is None, "columns a round leaves alone stay as they were"
        assert [a["outcome"] for a in await h.attempts(str(third.id))] == ["failed"]

        # Nothing of the round whose lease was lost: neither its state nor its attempt.
        body = await h.get(str(lost.id))
        assert (body["status"], body["attempt_count"]) == ("delivering", 0)
        assert await h.attempts(str(lost.id)) == []
        async with h.runtime.sessions() as session:
            row = await session.get(Notification, lost.id)
            assert row is not None
            assert row.claimed_by == "another-worker"
        for notification in (first, third):
            async with h.runtime.sessions() as session:
                row = await session.get(Notification, notification.id)
                assert row is not None
                assert (row.claimed_by, row.lease_expires_at) == (None, None)


async def test_rounds_saved_together_share_one_transaction(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        first, second, third = await claimed(h, 3)
        saves = count_saves(h)
        saver = RoundSaver(h.worker.store, h.worker.worker_id)
        results = await asyncio.gather(
            *(saver.save(delivered_round(h, n)) for n in (first, second, third))
        )
        assert results == [True, True, True]
        assert saves == [3], "one transaction for the three rounds"
        for notification in (first, second, third):
            assert (await h.get(str(notification.id)))["status"] == "delivered"


async def test_a_bad_round_fails_alone_and_the_others_of_its_batch_are_saved(
    db_url: str,
) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        good, bad, other = await claimed(h, 3)
        broken = delivered_round(h, bad)
        twice = [broken.attempts[0], broken.attempts[0]]  # the same attempt id twice
        saver = RoundSaver(h.worker.store, h.worker.worker_id)
        results = await asyncio.gather(
            saver.save(delivered_round(h, good)),
            saver.save(FinishedRound(bad.id, broken.change, twice)),
            saver.save(delivered_round(h, other)),
            return_exceptions=True,
        )
        assert results[0] is True
        assert isinstance(results[1], IntegrityError)
        assert results[2] is True
        assert (await h.get(str(good.id)))["status"] == "delivered"
        assert (await h.get(str(other.id)))["status"] == "delivered"
        body = await h.get(str(bad.id))
        assert (body["status"], body["attempt_count"]) == ("delivering", 0)
        assert await h.attempts(str(bad.id)) == []


async def test_rounds_finishing_during_a_save_go_in_the_next_transaction(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink)) as h:
        ids = [(await h.send(text=f"n{i}"))["id"] for i in range(8)]
        sink.delay("/a", 0.3)
        saves = count_saves(h)
        run = asyncio.create_task(h.worker.run_once())
        await _until(lambda: len(sink.requests_to("/a")) == 8)
        async with write_lock(db_url):
            await asyncio.sleep(0.6)  # every round has finished; their saves wait on the lock
            assert saves == []
        assert await asyncio.wait_for(run, timeout=10) == 8
        assert sum(saves) == 8
        assert 1 <= len(saves) <= 2, "the saves queued behind one transaction went together"
        for notification_id in ids:
            body = await h.get(notification_id)
            assert (body["status"], body["attempt_count"]) == ("delivered", 1)


async def test_shutdown_writes_finished_rounds_still_waiting_for_their_save(
    db_url: str,
) -> None:
    # The rounds finish, then their saves wait on a lock past the shutdown grace period: the
    # rounds' tasks are cancelled, yet what they delivered is written, not handed back to be
    # sent again.
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink), shutdown_timeout=0.2, poll_interval=30.0) as h,
    ):
        ids = [(await h.send(text=f"n{i}"))["id"] for i in range(3)]
        sink.delay("/a", 0.3)
        began = time.monotonic()
        async with running_worker(h) as stop:
            await _until(lambda: len(sink.requests_to("/a")) == 3)
            async with write_lock(db_url):
                await asyncio.sleep(0.5)  # the rounds are done, their saves are queued
                stop.set()
                await asyncio.sleep(0.5)  # past shutdown_timeout: the tasks are cancelled
        assert time.monotonic() - began < 8
        for notification_id in ids:
            body = await h.get(notification_id)
            assert (body["status"], body["attempt_count"]) == ("delivered", 1)
        assert await h.run_worker() == 0, "nothing was handed back to be sent again"
        assert len(sink.requests_to("/a")) == 3


async def test_a_worker_that_lost_its_lease_saves_nothing_of_its_round(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink), lease=30.0) as h:
        created = await h.send(text="x")
        (notification,) = await h.worker.claim(1)
        h.clock.advance(31)
        assert await h.worker.sweep() == 1  # as another worker's sweep would
        outcome = await h.worker.deliver(notification)
        assert outcome.status == "delivered", "the provider did get it"
        body = await h.get(created["id"])
        assert (body["status"], body["attempt_count"]) == ("pending", 0)
        assert await h.attempts(created["id"]) == []


async def _until(condition: Any, within: float = 5.0) -> None:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > within:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)
