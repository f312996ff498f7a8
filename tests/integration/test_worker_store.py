"""The worker's store on each database, against the same expectations: claim, save, renew,
release, sweep and purge, with a lease lost to another worker on the way.

PostgreSQL runs the statements as plain SQL on the driver connection and SQLite through
SQLAlchemy (app/store/queue.py): what a worker sees must not depend on which.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from app.domain import AttemptOutcome, AttemptTrigger, Hop, HopState, NotificationStatus, Strategy
from app.store.db import create_engine
from app.store.migrate import upgrade_async
from app.store.models import Attempt, IdempotencyKey, Notification
from app.store.queue import Claimed, Statements, WorkQueue
from tests.support.harness import Harness, herald
from tests.support.rounds import delivered_round, failed_round

CONFIG = {
    "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/never-called"}},
    "routes": {"default": {"channels": ["hook"]}},
}
LEASE = timedelta(seconds=30)


async def stored(h: Harness, notification_id: uuid.UUID) -> Notification:
    async with h.runtime.sessions() as session:
        row = await session.get(Notification, notification_id)
    assert row is not None
    return row


async def attempts_of(h: Harness, notification_id: uuid.UUID) -> list[str]:
    async with h.runtime.sessions() as session:
        outcomes = await session.scalars(
            select(Attempt.outcome).where(Attempt.notification_id == notification_id)
        )
        return list(outcomes)


async def claim(
    h: Harness, worker_id: str, limit: int = 10, now: datetime | None = None
) -> dict[uuid.UUID, Claimed]:
    """What ``worker_id`` claims at ``now`` (the clock's) under a lease of ``LEASE``, by id."""
    now = now or h.clock()
    claimed = await h.worker.store.claim(
        worker_id=worker_id, now=now, lease_until=now + LEASE, limit=limit
    )
    return {notification.id: notification for notification in claimed}


async def test_claim_save_renew_release_and_sweep(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        store = h.worker.store
        assert isinstance(store, WorkQueue)
        a, b, c, later = [uuid.UUID((await h.send(text=n))["id"]) for n in "abcd"]
        await h.set_fields(str(later), next_attempt_at=h.clock() + timedelta(hours=1))
        await h.set_fields(str(c), next_attempt_at=h.clock())  # after a and b, however slow
        await h.set_fields(str(a), next_attempt_at=h.clock() - timedelta(seconds=2))
        await h.set_fields(str(b), next_attempt_at=h.clock() - timedelta(seconds=1))

        # Claim: the oldest due first, up to the limit, as the domain's types; never twice,
        # never before it is due.
        now = h.clock()
        claimed = await claim(h, "w1", limit=2, now=now)
        assert set(claimed) == {a, b}
        first, second = claimed[a], claimed[b]
        assert first.strategy is Strategy.FALLBACK
        assert first.trigger is AttemptTrigger.SCHEDULED
        assert first.hops == [Hop("hook")]
        assert (first.round, first.attempt_count, first.channels) == (0, 0, ["hook"])
        row = await stored(h, a)
        assert (row.status, row.claimed_by) == (NotificationStatus.DELIVERING, "w1")
        assert row.lease_expires_at == now + LEASE
        by_w2 = await claim(h, "w2")
        assert set(by_w2) == {c}
        assert await claim(h, "w2") == {}

        # Renew: only the leases the worker still holds count.
        lease_until = h.clock() + 2 * LEASE
        assert await store.renew([a, b, c], worker_id="w1", lease_until=lease_until) == 2
        assert (await stored(h, a)).lease_expires_at == lease_until
        assert (await stored(h, c)).lease_expires_at != lease_until, "w2's lease is its own"

        # w2's lease on c runs out: the sweep hands c back, due at once, and w1 takes it over.
        h.clock.advance(LEASE.total_seconds() + 1)
        swept_at = h.clock()
        assert await store.recover_expired(swept_at) == 1
        row = await stored(h, c)
        assert (row.status, row.claimed_by, row.lease_expires_at) == (
            NotificationStatus.PENDING,
            None,
            None,
        )
        assert row.next_attempt_at == swept_at
        assert set(await claim(h, "w1")) == {c}

        # w2 finds out: its renewal does not count and its round is not saved.
        assert await store.renew([c], worker_id="w2", lease_until=h.clock() + LEASE) == 0
        assert await store.save_rounds([delivered_round(h, by_w2[c])], worker_id="w2") == set()
        row = await stored(h, c)
        assert (row.status, row.claimed_by, row.attempt_count) == (
            NotificationStatus.DELIVERING,
            "w1",
            0,
        )
        assert await attempts_of(h, c) == []

        # w1 saves a delivered and a failed round together (two column sets).
        rounds = [delivered_round(h, first), failed_round(h, second)]
        assert await store.save_rounds(rounds, worker_id="w1") == {a, b}
        row = await stored(h, a)
        assert (row.status, row.round, row.attempt_count) == (NotificationStatus.DELIVERED, 1, 1)
        assert (row.delivered_via, row.delivered_at) == ("hook", rounds[0].change.delivered_at)
        assert (row.claimed_by, row.lease_expires_at, row.next_attempt_at) == (None, None, None)
        assert row.hops == [
            {"channel": "hook", "state": "delivered", "attempts": 1, "last_error": None}
        ]
        assert await attempts_of(h, a) == [AttemptOutcome.DELIVERED]
        row = await stored(h, b)
        assert (row.status, row.trigger, row.attempt_count) == (
            NotificationStatus.PENDING,
            AttemptTrigger.SCHEDULED,
            1,
        )
        assert row.next_attempt_at == rounds[1].change.next_attempt_at
        assert row.last_error is not None and row.last_error["code"] == "http_503"
        assert [Hop.from_dict(hop).state for hop in row.hops] == [HopState.RETRYING]
        assert (row.delivered_at, row.claimed_by) == (None, None)
        assert await attempts_of(h, b) == [AttemptOutcome.FAILED]

        # A round saved is no longer held: saving it again writes nothing, renewing counts 0.
        assert await store.save_rounds(rounds[:1], worker_id="w1") == set()
        assert await attempts_of(h, a) == [AttemptOutcome.DELIVERED]
        assert await store.renew([a, b], worker_id="w1", lease_until=h.clock() + LEASE) == 0

        # Release: what the worker still holds goes back untried, due when it was.
        assert await store.release([a, c], worker_id="w2", now=h.clock()) == 0
        assert await store.release([a, c], worker_id="w1", now=h.clock()) == 1
        row = await stored(h, c)
        assert (row.status, row.claimed_by, row.lease_expires_at) == (
            NotificationStatus.PENDING,
            None,
            None,
        )
        assert (row.attempt_count, row.next_attempt_at) == (0, swept_at)
        assert await store.release([], worker_id="w1", now=h.clock()) == 0

        # Nothing left under a lease: the sweep finds nothing, however late.
        h.clock.advance(3600)
        assert await store.recover_expired(h.clock()) == 0
        assert (await stored(h, later)).status == NotificationStatus.PENDING


async def test_purge_removes_only_idempotency_keys_older_than_the_cutoff(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        await h.send(text="x", headers={"Idempotency-Key": "k1"})
        store = h.worker.store
        assert await store.purge_keys(h.clock() - timedelta(minutes=1)) == 0
        assert await keys(h) == 1
        assert await store.purge_keys(h.clock() + timedelta(seconds=1)) == 1
        assert await keys(h) == 0


async def keys(h: Harness) -> int:
    async with h.runtime.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(IdempotencyKey))
    return int(count or 0)


async def test_on_sqlite_the_claim_reads_the_due_index_in_order(tmp_path: Path) -> None:
    """Without statistics SQLite's planner chose the status index and sorted every pending row
    for each claim; the claim names the due index, which is already in due order."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'herald.db'}"
    await upgrade_async(url)
    engine = create_engine(url)
    try:
        claim = Statements(engine.dialect).claim
        sql = str(claim.compile(dialect=engine.sync_engine.dialect))
    finally:
        await engine.dispose()
    with sqlite3.connect(tmp_path / "herald.db") as db:
        plan = db.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * sql.count("?")).fetchall()
    steps = [row[3] for row in plan]
    assert any("USING INDEX ix_notifications_due" in step for step in steps), steps
    assert not any("TEMP B-TREE FOR ORDER BY" in step for step in steps), steps
