"""The notification lifecycle events, written by the changes themselves on SQLite and
PostgreSQL: each transition writes exactly its documented events, one row each, in the change's
own statement or transaction, and real local receivers get them signed and in order."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app import service
from app.delivery.orchestrator import utcnow
from app.domain import NotificationStatus
from app.events import body
from app.store.models import EventRecord
from app.store.sql import OutboxRows
from tests.support.events import drain, received, subscription
from tests.support.harness import Harness, herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.rounds import delivered_round


def lifecycle_config(sink: HttpServer, **options: Any) -> dict[str, Any]:
    """Routes that deliver (``default``), retry then fail (``flaky``: a refused connection,
    two rounds), and deliver one hop of two (``both``, strategy all: ``/gone`` answers 404)."""
    return {
        "channels": {
            "console": {"type": "log"},
            "down": {"type": "webhook", "url": "http://127.0.0.1:9/"},
            "gone": {"type": "webhook", "url": sink.url("/gone")},
        },
        "routes": {
            "default": {"channels": ["console"]},
            "flaky": {"channels": ["down"], "retry": {"schedule": ["1s"], "jitter": 0}},
            "both": {"channels": ["console", "gone"], "strategy": "all"},
        },
        "events": {"subscriptions": [subscription(sink.url("/ev"), **options)]},
    }


async def logged(h: Harness, notification_id: str) -> list[str]:
    """The types of a notification's events as stored, in the order they happened."""
    response = await h.client.get(
        "/v1/events", params={"notification_id": notification_id, "limit": 200}
    )
    assert response.status_code == 200, response.text
    return [item["type"] for item in reversed(response.json()["items"])]


async def event_rows(h: Harness) -> int:
    async with h.runtime.sessions() as session:
        return int((await session.execute(select(func.count(EventRecord.id)))).scalar_one())


def arrived(sink: HttpServer, path: str = "/ev") -> dict[str, list[str]]:
    """Each notification's event types in the order they reached the receiver (a retried
    event counted once)."""
    order: dict[str, list[str]] = {}
    seen: set[str] = set()
    for payload in received(sink, path):
        if payload["id"] not in seen:
            seen.add(payload["id"])
            order.setdefault(payload["notification_id"], []).append(payload["type"])
    return order


async def test_every_transition_writes_exactly_its_documented_events(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, lifecycle_config(sink)) as h:
        sink.script("/gone", (404, {}, "no such hook"))
        later = (utcnow() + timedelta(hours=1)).isoformat()
        key = {"Idempotency-Key": "once"}
        delivered = await h.send(text="ok", headers=key)
        assert (await h.send(200, headers=key, text="ok"))["id"] == delivered["id"], "a replay"
        flaky = await h.send(text="retried", route="flaky")
        partial = await h.send(text="half", route="both")
        expiring = await h.send(
            text="late", send_at=later, expires_at=(utcnow() + timedelta(hours=2)).isoformat()
        )
        cancelled = await h.send(text="never", send_at=later)
        assert (await h.client.post(f"/v1/notifications/{cancelled['id']}/cancel")).is_success

        await h.run_worker()
        await h.advance_to_next_round(flaky["id"])
        await h.run_worker()
        h.clock.advance(3 * 3600)
        await h.run_worker()

        expected = {
            delivered["id"]: ["notification.accepted", "notification.delivered"],
            flaky["id"]: [
                "notification.accepted",
                "attempt.failed",
                "attempt.failed",
                "notification.failed",
            ],
            partial["id"]: ["notification.accepted", "attempt.failed", "notification.partial"],
            expiring["id"]: ["notification.accepted", "notification.expired"],
            cancelled["id"]: ["notification.accepted", "notification.cancelled"],
        }
        for notification_id, types in expected.items():
            assert (await logged(h, notification_id)) == types, notification_id
            assert (await h.get(notification_id))["status"] == types[-1].split(".")[1]
        assert await event_rows(h) == sum(len(types) for types in expected.values()), (
            "one row per transition, nothing else"
        )

        await drain(h)
        assert arrived(sink) == expected, "per notification, in the order it happened"
        bodies = received(sink, "/ev")
        final = next(b for b in bodies if b["type"] == "notification.failed")
        stored = await h.get(flaky["id"])
        assert final["data"] == {k: stored[k] for k in ("status", "route", "delivered_via", "hops")}
        failures = [
            b["data"]["attempt"]
            for b in bodies
            if b["type"] == "attempt.failed" and b["notification_id"] == flaky["id"]
        ]
        assert [(a["round"], a["error"]["code"]) for a in failures] == [
            (1, "connection_error"),
            (2, "connection_error"),
        ]
        gone = next(b for b in bodies if b["type"] == "notification.partial")
        assert gone["data"]["delivered_via"] == ["console"]


async def test_a_retry_writes_no_event_and_its_rounds_write_their_own(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, lifecycle_config(sink)) as h:
        sink.script("/gone", (404, {}, "no"))
        partial = await h.send(text="half", route="both")
        await h.run_worker()
        before = await event_rows(h)
        retried = await h.client.post(f"/v1/notifications/{partial['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert await event_rows(h) == before, "no event type covers a retry"
        await h.run_worker()
        assert (await logged(h, partial["id"]))[-1] == "notification.delivered"


async def test_without_subscriptions_nothing_is_built_or_written(db_url: str) -> None:
    async with serve_http() as sink:
        config = lifecycle_config(sink)
        config["events"] = {}
        async with herald(db_url, config) as h:
            sink.script("/gone", (404, {}, "no"))
            row = await h.send(text="x", route="both")
            stored = await h.send(text="y", send_at=(utcnow() + timedelta(hours=1)).isoformat())
            async with h.runtime.sessions() as session:
                stored_row = await service.get(session, uuid.UUID(row["id"]))
            assert h.runtime.outbox.accepted([stored_row]) is None
            await h.run_worker()
            await h.client.post(f"/v1/notifications/{stored['id']}/cancel")
            assert await event_rows(h) == 0


async def test_only_what_a_subscription_takes_is_written(db_url: str) -> None:
    async with serve_http() as sink:
        config = lifecycle_config(sink, types=["notification.failed"], routes=["flaky"])
        async with herald(db_url, config) as h:
            await h.send(text="ok")
            flaky = await h.send(text="retried", route="flaky")
            await h.run_worker()
            await h.advance_to_next_round(flaky["id"])
            await h.run_worker()
            assert await logged(h, flaky["id"]) == ["notification.failed"]
            assert await event_rows(h) == 1


async def test_a_batch_writes_an_accepted_event_per_stored_item(db_url: str) -> None:
    async with serve_http() as sink:
        config = lifecycle_config(sink, routes=["default", "flaky"])
        async with herald(db_url, config) as h:
            items = [
                {"text": "a"},
                {"text": "b", "route": "flaky"},
                {"text": "c", "route": "both"},
                {"route": "default"},  # no text: refused, stored nowhere
                {"text": "d", "recipient": {"webhook_url": "http://10.0.0.1/"}},  # guard: 422
            ]
            response = await h.client.post("/v1/notifications/batch", json={"items": items})
            assert response.status_code == 207, response.text
            results = response.json()["items"]
            assert [item["status"] for item in results] == [202, 202, 202, 422, 422]
            ids = [item["id"] for item in results[:3]]
            assert [await logged(h, i) for i in ids] == [
                ["notification.accepted"],
                ["notification.accepted"],
                [],  # route both: no subscription takes it
            ]
            assert await event_rows(h) == 2
            await drain(h)
            assert sorted(b["notification_id"] for b in received(sink, "/ev")) == sorted(ids[:2])


async def test_a_rolled_back_save_writes_no_event(db_url: str) -> None:
    async with serve_http() as sink:
        config = lifecycle_config(sink, types=["notification.delivered"])
        async with herald(db_url, config) as h:
            created = await h.send(text="x")
            (claimed,) = await h.worker.claim(10)
            finished = delivered_round(h, claimed)
            event = body.notification_event(
                notification_id=claimed.id,
                owner=None,
                route=claimed.route,
                status=NotificationStatus.DELIVERED,
                delivered_via="hook",
                hops=finished.change.hops,
                at=h.clock(),
            )
            rows = h.runtime.outbox.rows([event], h.clock())
            assert [d["subscription"] for d in rows.deliveries] == ["ops"]
            # The second delivery row breaks the unique (event, subscription) constraint: the
            # last statement of the save fails after the events row was inserted.
            broken = OutboxRows(rows.events, rows.event_rows, [*rows.deliveries] * 2)
            with pytest.raises(IntegrityError):
                await h.worker.store.save_rounds(
                    [type(finished)(claimed.id, finished.change, finished.attempts, broken)],
                    worker_id=h.worker.worker_id,
                )
            assert await event_rows(h) == 0
            state = await h.get(created["id"])
            assert (state["status"], state["attempt_count"]) == ("delivering", 0)

            saved = await h.worker.store.save_rounds(
                [type(finished)(claimed.id, finished.change, finished.attempts, rows)],
                worker_id=h.worker.worker_id,
            )
            assert saved == {claimed.id}
            assert await logged(h, created["id"]) == ["notification.delivered"]


async def test_a_round_whose_lease_was_lost_writes_no_event(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, lifecycle_config(sink)) as h:
        created = await h.send(text="x")
        (claimed,) = await h.worker.claim(10)
        await h.set_fields(created["id"], claimed_by="another-worker")
        outcome = await h.worker.deliver(claimed)
        assert outcome.status is NotificationStatus.DELIVERED, "the round ran"
        assert await logged(h, created["id"]) == ["notification.accepted"], "but was not saved"


async def test_events_carry_the_owner_and_subscriptions_filter_on_it(db_url: str) -> None:
    backend, other = (
        "sk-backnd-0123456789abcdef0123456789ab",
        "sk-others-0123456789abcdef0123456789ab",
    )
    async with serve_http() as sink:
        config = lifecycle_config(sink, owners=["backend"])
        config["auth"] = {
            "api_keys": [
                {"name": "backend", "key": backend, "scopes": ["send", "read", "admin"]},
                {"name": "other", "key": other, "scopes": ["send", "read"]},
            ]
        }
        async with herald(db_url, config) as h:
            mine = await h.send(text="x", headers={"Authorization": f"Bearer {backend}"})
            await h.send(text="y", headers={"Authorization": f"Bearer {other}"})
            await h.run_worker()
            await drain(h)
            bodies = received(sink, "/ev")
            assert [(b["type"], b["owner"]) for b in bodies] == [
                ("notification.accepted", "backend"),
                ("notification.delivered", "backend"),
            ]
            assert {b["notification_id"] for b in bodies} == {mine["id"]}
