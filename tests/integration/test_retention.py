"""Retention on SQLite and PostgreSQL: finished notifications past their route's period are
purged with their attempts and events, in batches; a purged id answers 404 ``purged``; SQLite
gives the space back to the file system."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from app import metrics
from app.config import ConfigError
from app.ids import uuid7
from app.store.inbound import INBOUND_MESSAGES
from app.store.sql import ATTEMPTS, EVENT_DELIVERIES, EVENTS, NOTIFICATIONS
from tests.support.events import EVENTS_SECRET
from tests.support.harness import Harness, config_from, herald

DAY = 86400.0
BATCH = "/v1/notifications/batch"


def retention_config(**sections: Any) -> dict[str, Any]:
    """A log channel; ``default`` keeps delivered ones a day, ``keep`` keeps them for ever."""
    return {
        "channels": {"console": {"type": "log"}},
        "routes": {
            "default": {"channels": ["console"], "retention": {"delivered": "1d"}},
            "keep": {"channels": ["console"], "retention": {"delivered": None}},
            "week": {"channels": ["console"], "retention": {"delivered": "7d"}},
        },
        **sections,
    }


async def count(h: Harness, table: Any, ids: list[str]) -> int:
    column = table.c.notification_id if "notification_id" in table.c else table.c.id
    async with h.runtime.engine.connect() as connection:
        query = select(func.count()).where(column.in_([uuid.UUID(i) for i in ids]))
        return int((await connection.execute(query)).scalar_one())


def purged_total(status: str) -> float:
    return metrics.retention_deleted.labels(status)._value.get()


async def test_delivered_notifications_go_after_their_routes_period(db_url: str) -> None:
    async with herald(db_url, retention_config()) as h:
        daily = [(await h.send(text=f"d{i}"))["id"] for i in range(3)]
        kept = (await h.send(text="k", route="keep"))["id"]
        weekly = (await h.send(text="w", route="week"))["id"]
        pending = (await h.send(text="p", send_at="2999-01-01T00:00:00Z"))["id"]
        await h.run_worker()
        assert (await h.get(daily[0]))["status"] == "delivered"
        assert await count(h, ATTEMPTS, daily) == 3
        before = purged_total("delivered")

        h.clock.advance(DAY / 2)
        assert await h.worker.retention.sweep() == 0, "half a day: nothing is past its period"

        h.clock.advance(DAY)
        assert await h.worker.retention.sweep() == 3
        assert purged_total("delivered") - before == 3
        for notification_id in daily:
            response = await h.client.get(f"/v1/notifications/{notification_id}")
            assert response.status_code == 404
            problem = response.json()
            assert problem["type"] == "urn:herald:problem:purged", problem
            assert "purged" in problem["detail"]
            attempts = await h.client.get(f"/v1/notifications/{notification_id}/attempts")
            assert attempts.json()["type"] == "urn:herald:problem:purged"
        assert await count(h, ATTEMPTS, daily) == 0
        assert await count(h, NOTIFICATIONS, daily) == 0
        for survivor in (kept, weekly, pending):
            assert (await h.get(survivor))["id"] == survivor

        never = await h.client.get(f"/v1/notifications/{uuid7()}")
        assert never.status_code == 404
        assert never.json()["type"] == "urn:herald:problem:not-found"

        h.clock.advance(7 * DAY)
        assert await h.worker.retention.sweep() == 1, "the week's one, not the kept one"
        assert (await h.get(kept))["status"] == "delivered"


async def test_failed_ones_take_the_global_period(db_url: str) -> None:
    config = {
        "channels": {"dead": {"type": "webhook", "url": "http://127.0.0.1:9/none"}},
        "routes": {"default": {"channels": ["dead"], "retry": {"schedule": []}}},
        "retention": {"failed": "2d", "delivered": "1d"},
    }
    async with herald(db_url, config) as h:
        failed = (await h.send(text="f"))["id"]
        await h.run_worker()
        assert (await h.get(failed))["status"] == "failed"
        h.clock.advance(1.5 * DAY)
        assert await h.worker.retention.sweep() == 0
        h.clock.advance(DAY)
        assert await h.worker.retention.sweep() == 1
        response = await h.client.get(f"/v1/notifications/{failed}")
        assert response.json()["type"] == "urn:herald:problem:purged"


async def test_events_go_with_the_notification_once_every_delivery_of_them_is_settled(
    db_url: str,
) -> None:
    subscription = {"name": "ops", "url": "http://127.0.0.1:9/events", "secret": EVENTS_SECRET}
    async with herald(db_url, retention_config(events={"subscriptions": [subscription]})) as h:
        created = (await h.send(text="x"))["id"]
        await h.run_worker()
        assert await count(h, EVENTS, [created]) >= 2  # created, delivered (no dispatcher ran)

        h.clock.advance(2 * DAY)
        assert await h.worker.retention.sweep() == 0, "its events are not delivered yet"
        assert (await h.get(created))["status"] == "delivered"

        async with h.runtime.engine.begin() as connection:
            await connection.execute(update(EVENT_DELIVERIES).values(status="delivered"))
        assert await h.worker.retention.sweep() == 1
        assert await count(h, EVENTS, [created]) == 0
        assert await count(h, EVENT_DELIVERIES, [created]) == 0


async def test_a_large_purge_runs_in_bounded_batches(db_url: str) -> None:
    # batch_time 1ms: every batch is "slow", so the shrinking path runs too
    settings = {"batch_size": 7, "batch_time": "1ms"}
    async with herald(db_url, retention_config(retention=settings)) as h:
        items = [{"text": f"n{i}"} for i in range(40)]
        response = await h.client.post(BATCH, json={"items": items})
        assert response.status_code == 207
        await h.run_worker()
        h.clock.advance(2 * DAY)
        assert await h.worker.retention.sweep() == 40
        async with h.runtime.engine.connect() as connection:
            ranges = (await connection.exec_driver_sql("SELECT count FROM purged_ranges")).all()
        assert sum(row[0] for row in ranges) == 40
        assert max(row[0] for row in ranges) <= 7, "no batch larger than batch_size"

        h.clock.advance(400 * DAY)
        await h.worker.retention.sweep()
        async with h.runtime.engine.connect() as connection:
            left = (await connection.exec_driver_sql("SELECT count(*) FROM purged_ranges")).all()
        assert left[0][0] == 0, "ranges older than remember_purged are forgotten"


async def test_the_sqlite_file_shrinks_after_a_purge(tmp_path: Path, db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's autovacuum reuses the space; only SQLite shrinks a file")
    path = db_url.split("///", 1)[1]
    async with herald(db_url, retention_config()) as h:
        for batch in range(6):
            items = [{"text": f"{batch}-{i} " + "x" * 8000} for i in range(100)]
            assert (await h.client.post(BATCH, json={"items": items})).status_code == 207
        await h.run_worker()
        await h.worker.retention.store.checkpoint()
        full = Path(path).stat().st_size  # noqa: ASYNC240  (a stat, not I/O that waits)
        h.clock.advance(2 * DAY)
        assert await h.worker.retention.sweep() == 600
        empty = Path(path).stat().st_size  # noqa: ASYNC240
        async with h.runtime.engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA auto_vacuum")).scalar_one()
    assert mode == 2, "the migration made the file incremental"
    assert full > 5_000_000
    assert empty < full / 4, (full, empty)


def test_a_route_retention_is_a_period_per_final_status() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from(
            {
                "channels": {"console": {"type": "log"}},
                "routes": {
                    "default": {"channels": ["console"], "retention": {"delivred": "1d"}},
                    "other": {"channels": ["console"], "retention": {"failed": "soon"}},
                },
            }
        )
    message = str(raised.value)
    assert "routes.default.retention.delivred: unknown field 'delivred'" in message
    assert "routes.other.retention.failed: invalid duration 'soon'" in message


async def test_only_the_owner_and_admins_learn_that_an_id_was_purged(db_url: str) -> None:
    keys = [
        {"name": "alice", "key": "alice-key-0123456789abcdef", "scopes": ["send", "read"]},
        {"name": "bob", "key": "bob-key-0123456789abcdef01", "scopes": ["send", "read"]},
        {"name": "ops", "key": "ops-key-0123456789abcdef01", "scopes": ["admin"]},
    ]
    auth = {"auth": {"api_keys": keys}}
    as_ = {key["name"]: {"Authorization": f"Bearer {key['key']}"} for key in keys}
    async with herald(db_url, retention_config(**auth)) as h:
        created = (await h.send(text="x", headers=as_["alice"]))["id"]
        await h.run_worker()
        h.clock.advance(2 * DAY)
        assert await h.worker.retention.sweep() == 1
        url = f"/v1/notifications/{created}"
        types = {
            name: (await h.client.get(url, headers=as_[name])).json()["type"]
            for name in ("alice", "bob", "ops")
        }
    assert types == {
        "alice": "urn:herald:problem:purged",
        "bob": "urn:herald:problem:not-found",
        "ops": "urn:herald:problem:purged",
    }


async def test_inbound_messages_go_after_retention_inbound(db_url: str) -> None:
    """What chats sent the bots is kept ``retention.inbound`` (default 30 days), then deleted
    in the same batches; ``null`` keeps it."""

    def message(update_id: int, received_at: Any) -> dict[str, Any]:
        return {
            "id": uuid7(),
            "channel": "ops-telegram",
            "update_id": update_id,
            "kind": "message",
            "outcome": "handled",
            "received_at": received_at,
        }

    for inbound, left in ((None, 25), ("30d", 5)):  # the same database twice
        config = retention_config(retention={"inbound": inbound, "batch_size": 10})
        async with herald(db_url, config) as h:
            if inbound is None:
                now = h.clock()
                rows = [message(i, now - timedelta(days=40)) for i in range(20)]
                rows += [message(100 + i, now - timedelta(days=2)) for i in range(5)]
                async with h.runtime.engine.begin() as connection:
                    await connection.execute(insert(INBOUND_MESSAGES), rows)
            assert await h.worker.retention.sweep() == 0, "no notification was purged"
            listed = await h.client.get("/v1/inbound", params={"limit": 100})
            kept = {item["update_id"] for item in listed.json()["items"]}
            assert len(kept) == left and set(range(100, 105)) <= kept
            async with h.runtime.engine.connect() as connection:
                stored = select(func.count()).select_from(INBOUND_MESSAGES)
                assert await connection.scalar(stored) == left
