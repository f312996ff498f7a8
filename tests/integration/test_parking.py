"""``Parking``: the accept keeps a few pooled connections between its statements instead of a
checkout and a checkin through the pool for each, and gives them back when it should."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import event

from app.store.intake import PARKED
from app.store.sql import Parking
from tests.api.conftest import BASIC_CONFIG
from tests.support.databases import _dsn
from tests.support.harness import Harness, herald

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(postgres_template: object, db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("parking is the PostgreSQL accept's")
    return db_url


@asynccontextmanager
async def counted(url: str) -> AsyncIterator[tuple[Harness, list[str]]]:
    """A Herald whose pool counts its checkouts and checkins (``"out"``, ``"in"``)."""
    async with herald(url, BASIC_CONFIG) as h:
        moves: list[str] = []
        pool = h.runtime.engine.sync_engine.pool
        event.listen(pool, "checkout", lambda *_: moves.append("out"))
        event.listen(pool, "checkin", lambda *_: moves.append("in"))
        yield h, moves


def checked_out(h: Harness) -> int:
    count: int = h.runtime.engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    return count


async def test_accepts_reuse_a_parked_connection(pg_url: str) -> None:
    async with counted(pg_url) as (h, moves):
        for i in range(20):
            await h.send(text=f"n{i}")
        assert moves == ["out"], moves  # one checkout for twenty accepts, no checkin yet
        assert checked_out(h) == 1
        await h.runtime.intake.close()
        assert moves == ["out", "in"]
        assert checked_out(h) == 0


async def test_a_connection_goes_back_to_the_pool_when_its_lease_is_over(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Parking, "LEASE", 0.0)
    async with counted(pg_url) as (h, moves):
        for i in range(5):
            await h.send(text=f"n{i}")
        assert moves == ["out", "in"] * 5
        assert checked_out(h) == 0


async def test_at_most_a_few_wait_between_accepts(pg_url: str) -> None:
    async with counted(pg_url) as (h, moves):
        await asyncio.gather(*(h.send(text=f"n{i}") for i in range(40)))
        assert checked_out(h) <= PARKED
        assert moves.count("out") - moves.count("in") == checked_out(h)


async def test_closing_the_runtime_gives_every_connection_back(pg_url: str) -> None:
    async with counted(pg_url) as (h, moves):
        await asyncio.gather(*(h.send(text=f"n{i}") for i in range(40)))
    assert moves.count("out") == moves.count("in")


async def test_a_lost_connection_gives_back_the_parked_ones(pg_url: str) -> None:
    async with counted(pg_url) as (h, moves):
        await asyncio.gather(*(h.send(text=f"n{i}") for i in range(40)))
        parked = checked_out(h)
        assert parked >= 2
        admin = await asyncpg.connect(_dsn(pg_url))
        try:  # a server restart, as the parked connections see it
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        lost = await h.client.post("/v1/notifications", json={"text": "on a lost connection"})
        assert lost.status_code == 503, lost.text
        assert checked_out(h) == 0  # the other parked ones went back, invalidated
        assert moves.count("out") == moves.count("in")
