"""A new ``event_deliveries`` gets its first statistics from the dispatcher's sweep, so that the
claim reads the due index in order instead of sorting every pending delivery."""

from __future__ import annotations

import asyncpg
import pytest

from app.events.store import FIRST_STATISTICS_AT, DispatchStore
from app.store.db import create_engine, session_factory
from tests.support.databases import _dsn

pytestmark = pytest.mark.postgres

EVENTS = """
INSERT INTO events (id, type, notification_id, owner, route, data, created_at)
SELECT md5('e' || g)::uuid, 'notification.delivered', md5('n' || g)::uuid, NULL, 'default',
       '{}'::json, now()
  FROM generate_series($1::int, $2::int) AS g
"""
DELIVERIES = """
INSERT INTO event_deliveries (event_id, subscription, url, notification_id, status, attempts,
    attempt_base, trigger, next_attempt_at, claimed_by, lease_expires_at, last_error,
    delivered_at, created_at, updated_at)
SELECT id, 'ops', NULL, notification_id, 'pending', 0, 0, 'scheduled', now(), NULL, NULL, NULL,
       NULL, now(), now()
  FROM events WHERE id NOT IN (SELECT event_id FROM event_deliveries)
"""

CLAIM = """
EXPLAIN (COSTS OFF)
SELECT d.seq FROM event_deliveries d
 WHERE d.status = 'pending' AND d.next_attempt_at <= now()
   AND d.subscription = ANY ('{ops}'::varchar[])
   AND NOT EXISTS (SELECT 1 FROM event_deliveries earlier
                    WHERE earlier.subscription = d.subscription
                      AND earlier.notification_id = d.notification_id
                      AND earlier.seq < d.seq AND earlier.status IN ('pending', 'delivering')
                    OFFSET 0)
 ORDER BY d.next_attempt_at, d.seq LIMIT 8 FOR UPDATE OF d SKIP LOCKED
"""


@pytest.fixture
def pg_url(postgres_template: object, db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's planner statistics")
    return db_url


async def fill(url: str, first: int, last: int) -> None:
    """Pending deliveries of events ``first`` to ``last``, each of its own notification."""
    connection = await asyncpg.connect(_dsn(url))
    try:
        await connection.execute(EVENTS, first, last)
        await connection.execute(DELIVERIES)
        await connection.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await connection.close()


async def plan(url: str) -> str:
    connection = await asyncpg.connect(_dsn(url))
    try:
        return "\n".join(row[0] for row in await connection.fetch(CLAIM))
    finally:
        await connection.close()


async def test_a_new_table_is_analyzed_once_it_holds_enough(pg_url: str) -> None:
    engine = create_engine(pg_url)
    store = DispatchStore(engine, session_factory(engine))
    try:
        await fill(pg_url, 1, FIRST_STATISTICS_AT // 2)
        assert await store.analyze_if_never() is False  # too few to bother
        await fill(pg_url, FIRST_STATISTICS_AT // 2 + 1, FIRST_STATISTICS_AT * 20)
        assert "Sort" in await plan(pg_url)  # no statistics: every pending row sorted
        assert await store.analyze_if_never() is True
        assert "Sort" not in await plan(pg_url)  # the due index, in the claim's order
        assert "ix_event_deliveries_due" in await plan(pg_url)
        assert await store.analyze_if_never() is False  # once: autovacuum's from then on
    finally:
        await engine.dispose()


async def test_sqlite_has_nothing_to_analyze(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's answer")
    engine = create_engine(db_url)
    try:
        assert await DispatchStore(engine, session_factory(engine)).analyze_if_never() is False
    finally:
        await engine.dispose()
