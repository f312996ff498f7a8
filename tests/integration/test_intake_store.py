"""``Intake.add_many``: one way to store one accepted notification or many, with the key of
their request, all or nothing; a taken key is ``DuplicateKey`` however many rows came with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.api.schemas import BATCH_LIMIT, NotificationCreate
from app.delivery.orchestrator import utcnow
from app.runtime import Runtime
from app.service import admit, key_row, new_notification
from app.store.db import is_sqlite
from app.store.intake import DuplicateKey
from app.store.models import IdempotencyKey, Notification
from app.store.repositories import NotificationRepository
from app.store.sql import DUE_CHANNEL, Row
from tests.api.conftest import BASIC_CONFIG
from tests.support.databases import _dsn
from tests.support.harness import Harness, herald


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with herald(db_url, BASIC_CONFIG) as harness:
        yield harness


def rows(runtime: Runtime, count: int, **body: Any) -> list[Row]:
    request = NotificationCreate.model_validate({"route": "alerts", "text": "x", **body})
    route = admit(runtime, request)
    return [new_notification(request, route, now=utcnow(), owner=None) for _ in range(count)]


def key(name: str, notification: Row | None = None) -> Row | None:
    notification_id = notification["id"] if notification else None
    return key_row("", name, "digest", utcnow(), notification_id=notification_id)


async def stored(h: Harness) -> tuple[int, int]:
    async with h.runtime.sessions() as session:
        notifications = await session.scalar(select(func.count()).select_from(Notification))
        keys = await session.scalar(select(func.count()).select_from(IdempotencyKey))
    return notifications or 0, keys or 0


@pytest.mark.parametrize("count", [1, 3])
async def test_rows_read_back_as_they_were_stored(h: Harness, count: int) -> None:
    """Every column, whether the row went alone (``VALUES``) or with others (``unnest``)."""
    given = rows(
        h.runtime,
        count,
        metadata={"a": [1, {"b": None}], "é": 1.5},
        send_at="2099-01-01T00:00Z",
        recipient={"email": "a@example.com"},
    )
    await h.runtime.intake.add_many(given, keys=[key("k", given[0])])
    async with h.runtime.sessions() as session:
        for row in given:
            assert await NotificationRepository(session).get(row["id"]) == row
    assert await stored(h) == (count, 1)


@pytest.mark.parametrize("count", [0, 1, 3])
async def test_a_taken_key_stores_nothing_whatever_the_rows(h: Harness, count: int) -> None:
    await h.runtime.intake.add_many([], keys=[key("taken")])
    with pytest.raises(DuplicateKey):
        await h.runtime.intake.add_many(rows(h.runtime, count), keys=[key("taken")], announce=True)
    assert await stored(h) == (0, 1)


@pytest.mark.parametrize("count", [1, 3])
async def test_another_constraint_is_not_a_taken_key(h: Harness, count: int) -> None:
    """A row the database refuses for another reason is a bug, reported as it is."""
    given = rows(h.runtime, count)
    await h.runtime.intake.add_many(given[-1:])
    with pytest.raises(IntegrityError) as raised:
        await h.runtime.intake.add_many(given, keys=[key("fresh")])
    assert not isinstance(raised.value, DuplicateKey)
    assert await stored(h) == (1, 0)


async def test_a_whole_batch_in_one_call(h: Harness) -> None:
    given = rows(h.runtime, BATCH_LIMIT)
    await h.runtime.intake.add_many(given, keys=[key("big")], announce=True)
    assert await stored(h) == (BATCH_LIMIT, 1)
    assert (await h.get(str(given[-1]["id"])))["text"] == "x"


@pytest.mark.parametrize("count", [1, 3])
async def test_listening_workers_hear_of_announced_rows(
    h: Harness, db_url: str, count: int
) -> None:
    if is_sqlite(db_url):
        pytest.skip("SQLite has no LISTEN: the service wakes its own worker")
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(_dsn(db_url))
    try:
        await listener.add_listener(DUE_CHANNEL, lambda *args: heard.put_nowait(args[2]))
        await h.runtime.intake.add_many(rows(h.runtime, count), announce=False)
        await h.runtime.intake.add_many(rows(h.runtime, count), announce=True)
        await asyncio.wait_for(heard.get(), timeout=5)
        await asyncio.sleep(0.1)
        assert heard.empty(), "one NOTIFY per announced call, none for the other"
    finally:
        await listener.close()
