"""Per-notification ``callback_url`` on SQLite and PostgreSQL: validated and guarded at POST as
``recipient.webhook_url`` is, stored and shown on the notification, and sent through the event
dispatcher (signed with ``events.callback_secret``, retried, recorded) to real local receivers."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.domain import NotificationStatus
from tests.api.conftest import assert_problem, error_locs
from tests.support.events import (
    CALLBACK_SECRET,
    EVENTS_SECRET,
    dispatcher,
    drain,
    events_config,
    received,
    subscription,
)
from tests.support.harness import herald
from tests.support.http_server import HttpServer, serve_http

FINAL_TYPES = [
    "notification.delivered",
    "notification.partial",
    "notification.failed",
    "notification.expired",
    "notification.cancelled",
    "notification.acknowledged",
]


def callback_config(**sections: Any) -> dict[str, Any]:
    """A Herald whose callbacks are signed; a route that fails twice (``flaky``)."""
    config = events_config(callbacks=True, **sections)
    config["channels"]["down"] = {"type": "webhook", "url": "http://127.0.0.1:9/"}
    config["routes"]["flaky"] = {"channels": ["down"], "retry": {"schedule": ["1s"], "jitter": 0}}
    return config


def callbacks(sink: HttpServer, path: str = "/cb") -> list[dict[str, Any]]:
    """Every body that reached ``path``, its signature checked with the callback secret."""
    return received(sink, path, CALLBACK_SECRET)


async def test_a_callback_gets_the_final_status_signed_with_the_callback_secret(
    db_url: str,
) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        created = await h.send(text="x", callback_url=sink.url("/cb"))
        assert created["callback_url"] == sink.url("/cb")
        assert created["callback_events"] == FINAL_TYPES
        assert (await h.get(created["id"]))["callback_url"] == sink.url("/cb")
        listed = (await h.client.get("/v1/notifications")).json()["items"]
        assert listed[0]["callback_url"] == sink.url("/cb")
        await h.run_worker()
        assert await drain(h) == 1

        (payload,) = callbacks(sink)
        assert (payload["type"], payload["notification_id"]) == (
            "notification.delivered",
            created["id"],
        )
        assert payload["data"]["status"] == "delivered"
        request = sink.requests_to("/cb")[0]
        with pytest.raises(WebhookVerificationError):
            Webhook(EVENTS_SECRET).verify(request.body, request.headers)
        detail = (await h.client.get(f"/v1/events/{payload['id']}")).json()
        assert [(d["subscription"], d["status"]) for d in detail["deliveries"]] == [
            ("callback", "delivered")
        ]


async def test_a_callback_takes_the_events_it_names_in_order_beside_subscriptions(
    db_url: str,
) -> None:
    async with serve_http() as sink:
        config = callback_config()
        config["events"]["subscriptions"] = [subscription(sink.url("/ev"), types=["*.failed"])]
        async with herald(db_url, config) as h:
            created = await h.send(
                text="x",
                route="flaky",
                callback_url=sink.url("/cb"),
                callback_events=["notification.*", "attempt.failed"],
            )
            other = await h.send(text="y", route="flaky")
            await h.run_worker()
            await h.advance_to_next_round(created["id"])
            await h.run_worker()
            while await drain(h):
                pass

            assert [(b["type"], b["notification_id"]) for b in callbacks(sink)] == [
                ("notification.accepted", created["id"]),
                ("attempt.failed", created["id"]),
                ("attempt.failed", created["id"]),
                ("notification.failed", created["id"]),
            ], "its own events only, in the order they happened"
            subscribed = received(sink, "/ev")
            assert [b["type"] for b in subscribed if b["notification_id"] == created["id"]] == [
                "attempt.failed",
                "attempt.failed",
                "notification.failed",
            ]
            assert {b["id"] for b in subscribed} >= {b["id"] for b in callbacks(sink)[1:]}, (
                "one event, sent to each taker"
            )
            assert other["id"] in {b["notification_id"] for b in subscribed}


async def test_a_cancel_reaches_the_callback(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        created = await h.send(
            text="x", send_at="2999-01-01T00:00:00Z", callback_url=sink.url("/cb")
        )
        cancelled = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        await drain(h)
        (payload,) = callbacks(sink)
        assert payload["type"] == "notification.cancelled"
        assert payload["data"]["hops"] == cancelled.json()["hops"]


async def test_a_callback_receiver_that_is_down_gets_it_once_it_is_up(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        sink.script("/cb", (503, {}, "down"), (502, {}, "still down"))
        created = await h.send(text="x", callback_url=sink.url("/cb"))
        await h.run_worker()
        assert await drain(h) == 1
        (event,) = (await h.client.get("/v1/events")).json()["items"]
        for _ in range(2):  # the default schedule: 5s, then 1m, with jitter
            (delivery,) = (await h.client.get(f"/v1/events/{event['id']}")).json()["deliveries"]
            assert delivery["status"] == "pending"
            due = datetime.fromisoformat(delivery["next_attempt_at"])
            assert await drain(h) == 0, "not before it is due"
            h.clock.advance((due - h.clock()).total_seconds() + 0.01)
            assert await drain(h) == 1
        bodies = callbacks(sink)
        assert [b["type"] for b in bodies] == ["notification.delivered"] * 3
        assert len({b["id"] for b in bodies}) == 1, "one webhook-id across retries"
        tries = (await h.client.get(f"/v1/events/{bodies[0]['id']}/attempts")).json()["items"]
        assert [(t["subscription"], t["outcome"], t["response_status"]) for t in tries] == [
            ("callback", "failed", 503),
            ("callback", "failed", 502),
            ("callback", "delivered", 200),
        ]
        assert (await h.get(created["id"]))["status"] == NotificationStatus.DELIVERED


async def test_a_callback_event_can_be_redelivered(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        await h.send(text="x", callback_url=sink.url("/cb"))
        await h.run_worker()
        await drain(h)
        (payload,) = callbacks(sink)
        response = await h.client.post(f"/v1/events/{payload['id']}/redeliver")
        assert response.status_code == 200, response.text
        assert [(d["subscription"], d["status"]) for d in response.json()["deliveries"]] == [
            ("callback", "pending")
        ]
        assert await drain(h) == 1
        assert [b["id"] for b in callbacks(sink)] == [payload["id"]] * 2


async def test_one_failing_callback_destination_holds_back_no_other(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        for _ in range(6):
            await h.send(text="x", callback_url="http://127.0.0.1:9/dead")
        live = await h.send(text="y", callback_url=sink.url("/cb"))
        await h.run_worker()
        sender = dispatcher(h, concurrency=1)
        assert [await sender.run_once() for _ in range(7)] == [1] * 7
        assert [b["notification_id"] for b in callbacks(sink)] == [live["id"]]
        assert sender.destinations is not None
        assert sender.destinations.not_closed() == ["http://127.0.0.1:9"], "its own circuit"
        assert await sender.run_once() == 0, "the dead destination's last one waits, untried"


async def test_the_dispatcher_loop_runs_for_callbacks_alone(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, callback_config()) as h:
        await h.send(text="x", callback_url=sink.url("/cb"))
        await h.run_worker()
        stop = asyncio.Event()
        loop = asyncio.create_task(dispatcher(h).run(stop))
        try:
            began = time.monotonic()
            while not sink.requests_to("/cb"):
                assert time.monotonic() - began < 10, "no callback was sent"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)


# --- refused at POST -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/cb", "http://10.1.2.3/cb", "http://localhost/cb", "http://[::1]/cb"],
)
async def test_a_callback_to_a_private_address_is_422(db_url: str, url: str) -> None:
    async with herald(db_url, callback_config(network={})) as h:
        response = await h.client.post("/v1/notifications", json={"text": "x", "callback_url": url})
        problem = assert_problem(response, 422, detail_contains="callback_url is refused")
        assert error_locs(problem) == [["body", "callback_url"]]
        batch = await h.client.post(
            "/v1/notifications/batch",
            json={"items": [{"text": "ok"}, {"text": "x", "callback_url": url}]},
        )
        assert [item["status"] for item in batch.json()["items"]] == [202, 422]
        assert batch.json()["items"][1]["error"]["errors"][0]["loc"] == [
            "body",
            "items",
            1,
            "callback_url",
        ]


async def test_a_callback_without_a_configured_secret_is_422(db_url: str) -> None:
    async with herald(db_url, events_config()) as h:
        response = await h.client.post(
            "/v1/notifications", json={"text": "x", "callback_url": "https://cb.example.com/"}
        )
        problem = assert_problem(
            response, 422, detail_contains="set events.callback_secret in herald.yaml"
        )
        assert error_locs(problem) == [["body", "callback_url"]]


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"callback_url": "ftp://cb.example.com/"}, ["body", "callback_url"], "http://"),
        ({"callback_url": "https://" + "a" * 2048}, ["body", "callback_url"], "2048"),
        (
            {"callback_url": "https://cb.example.com/", "callback_events": ["channel.*"]},
            ["body", "callback_events", 0],
            "matches no event type",
        ),
        (
            {"callback_url": "https://cb.example.com/", "callback_events": ["notification.sent"]},
            ["body", "callback_events", 0],
            "did you mean",
        ),
        (
            {"callback_url": "https://cb.example.com/", "callback_events": []},
            ["body", "callback_events"],
            "at least 1",
        ),
        ({"callback_events": ["notification.*"]}, ["body"], "callback_events needs a callback_url"),
    ],
)
async def test_bad_callback_fields_are_422_naming_the_field(
    db_url: str, body: dict[str, Any], loc: list[str | int], message: str
) -> None:
    async with herald(db_url, callback_config()) as h:
        response = await h.client.post("/v1/notifications", json={"text": "x", **body})
        problem = assert_problem(response, 422)
        assert loc in error_locs(problem), problem
        assert message in response.text


async def test_the_callback_fields_count_in_the_idempotency_key(db_url: str) -> None:
    async with herald(db_url, callback_config()) as h:
        key = {"Idempotency-Key": "cb-1"}
        first = await h.send(headers=key, text="x", callback_url="https://cb.example.com/a")
        again = await h.client.post(
            "/v1/notifications",
            json={"text": "x", "callback_url": "https://cb.example.com/a"},
            headers=key,
        )
        assert (again.status_code, again.json()["id"]) == (200, first["id"])
        other = await h.client.post(
            "/v1/notifications",
            json={"text": "x", "callback_url": "https://cb.example.com/b"},
            headers=key,
        )
        assert_problem(other, 422, slug="idempotency-mismatch")
        events = await h.client.post(
            "/v1/notifications",
            json={
                "text": "x",
                "callback_url": "https://cb.example.com/a",
                "callback_events": ["notification.failed"],
            },
            headers=key,
        )
        assert_problem(events, 422, slug="idempotency-mismatch")
