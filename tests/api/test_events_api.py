"""``/v1/events``: the event log (list, read, attempts), redelivery, tenancy by API key, and
the event bodies documented as OpenAPI ``webhooks``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.channels.registry import default_registry
from app.config import parse_config
from app.domain import CircuitState, EventType
from app.events import body
from tests.api.conftest import assert_problem, error_locs
from tests.support.events import (
    accepted,
    delivered,
    dispatcher,
    emit,
    events_config,
    received,
    subscription,
)
from tests.support.harness import Harness, herald
from tests.support.http_server import HttpServer, serve_http

SPEC_FILE = Path(__file__).resolve().parents[2] / "openapi.yaml"
BACKEND = "sk-backnd-0123456789abcdef0123456789ab"
OTHER = "sk-others-0123456789abcdef0123456789ab"
OPS = "sk-opsadm-0123456789abcdef0123456789ab"
KEYS = {
    "auth": {
        "api_keys": [
            {"name": "backend", "key": BACKEND, "scopes": ["send", "read"]},
            {"name": "other", "key": OTHER, "scopes": ["send", "read"]},
            {"name": "ops", "key": OPS, "scopes": ["admin"]},
        ]
    }
}


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def sink() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        yield server


@pytest.fixture
async def h(db_url: str, sink: HttpServer) -> AsyncIterator[Harness]:
    async with herald(db_url, events_config(subscription(sink.url("/ev")))) as harness:
        yield harness


async def page(h: Harness, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    response = await h.client.get("/v1/events", params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_the_log_lists_newest_first_with_filters_and_a_cursor(h: Harness) -> None:
    first = accepted(h=h)
    await emit(h, first)
    h.clock.advance(10)
    second = accepted(h=h)
    then = delivered(first, at=h.clock())
    await emit(h, second, then)

    listed = await page(h)
    assert [item["id"] for item in listed["items"]] == [str(then.id), str(second.id), str(first.id)]
    assert listed["next_cursor"] is None
    assert listed["items"][2] == first.body()

    one = await page(h, limit=2)
    assert [item["id"] for item in one["items"]] == [str(then.id), str(second.id)]
    rest = await page(h, limit=2, cursor=one["next_cursor"])
    assert [item["id"] for item in rest["items"]] == [str(first.id)]

    by_type = await page(h, type="notification.delivered")
    assert [item["id"] for item in by_type["items"]] == [str(then.id)]
    by_notification = await page(h, notification_id=str(first.notification_id))
    assert [item["id"] for item in by_notification["items"]] == [str(then.id), str(first.id)]
    since = (first.timestamp + timedelta(seconds=5)).isoformat()
    assert {item["id"] for item in (await page(h, since=since))["items"]} == {
        str(second.id),
        str(then.id),
    }


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"cursor": "nope"}, ["query", "cursor"]),
        ({"type": "notification.sent"}, ["query", "type"]),
        ({"notification_id": "x"}, ["query", "notification_id"]),
        ({"since": "yesterday"}, ["query", "since"]),
        ({"limit": 201}, ["query", "limit"]),
    ],
)
async def test_bad_queries_are_422_naming_the_parameter(
    h: Harness, params: dict[str, Any], loc: list[str]
) -> None:
    response = await h.client.get("/v1/events", params=params)
    assert loc in error_locs(assert_problem(response, 422))


async def test_an_event_shows_its_deliveries_and_attempts(h: Harness, sink: HttpServer) -> None:
    sink.script("/ev", (500, {}, "oops"))
    (event,) = await emit(h, accepted(h=h))
    await dispatcher(h).run_once()
    h.clock.advance(5.1)
    await dispatcher(h).run_once()

    detail = (await h.client.get(f"/v1/events/{event.id}")).json()
    assert detail["type"] == "notification.accepted"
    (delivery,) = detail["deliveries"]
    assert delivery["subscription"] == "ops"
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
    assert delivery["delivered_at"] is not None

    tries = (await h.client.get(f"/v1/events/{event.id}/attempts")).json()["items"]
    assert [(t["attempt"], t["outcome"], t["response_status"]) for t in tries] == [
        (1, "failed", 500),
        (2, "delivered", 200),
    ]
    assert tries[0]["error"] == {
        "class": "transient",
        "code": "http_500",
        "message": tries[0]["error"]["message"],
    }
    assert {t["trigger"] for t in tries} == {"scheduled"}


@pytest.mark.parametrize("suffix", ["", "/attempts"])
async def test_an_unknown_event_is_404(h: Harness, suffix: str) -> None:
    response = await h.client.get(f"/v1/events/{uuid.uuid4()}{suffix}")
    assert_problem(response, 404, detail_contains="no event with id")
    response = await h.client.get(f"/v1/events/not-a-uuid{suffix}")
    assert_problem(response, 422)


async def test_redeliver_sends_a_settled_event_again(h: Harness, sink: HttpServer) -> None:
    (event,) = await emit(h, accepted(h=h))
    await dispatcher(h).run_once()
    response = await h.client.post(f"/v1/events/{event.id}/redeliver")
    assert response.status_code == 200, response.text
    (delivery,) = response.json()["deliveries"]
    assert delivery["status"] == "pending"
    assert await dispatcher(h).run_once() == 1
    bodies = received(sink, "/ev")
    assert [b["id"] for b in bodies] == [str(event.id)] * 2, "the same webhook-id again"
    tries = (await h.client.get(f"/v1/events/{event.id}/attempts")).json()["items"]
    assert [(t["attempt"], t["trigger"]) for t in tries] == [(1, "scheduled"), (2, "manual")]

    pending = accepted(h=h)
    await emit(h, pending)
    again = await h.client.post(f"/v1/events/{pending.id}/redeliver")
    assert again.json()["deliveries"][0]["attempts"] == 0, "a queued delivery is left as it is"
    assert await dispatcher(h).run_once() == 1


async def test_redeliver_follows_the_subscriptions_configured_now(
    db_url: str, sink: HttpServer
) -> None:
    async with herald(db_url, events_config(subscription(sink.url("/a"), "a"))) as h:
        (event,) = await emit(h, accepted(h=h))
        await dispatcher(h).run_once()
    config = events_config(subscription(sink.url("/a"), "a"), subscription(sink.url("/b"), "b"))
    async with herald(db_url, config) as h:
        response = await h.client.post(f"/v1/events/{event.id}/redeliver")
        assert [(d["subscription"], d["status"]) for d in response.json()["deliveries"]] == [
            ("a", "pending"),
            ("b", "pending"),
        ]
        await dispatcher(h).run_once()
        assert len(received(sink, "/b")) == 1, "a subscription added since gets it too"
    config = events_config(subscription(sink.url("/a"), "a", types=["channel.*"]))
    async with herald(db_url, config) as h:
        response = await h.client.post(f"/v1/events/{event.id}/redeliver")
        assert_problem(response, 409, detail_contains="no configured subscription takes")


async def test_each_key_sees_its_own_events_and_only_admin_redelivers(
    db_url: str, sink: HttpServer
) -> None:
    raw = events_config(subscription(sink.url("/ev")), **KEYS)
    async with herald(db_url, parse_config(raw, default_registry(), source="test")) as h:
        mine = accepted(owner="backend", h=h)
        theirs = accepted(owner="other", h=h)
        change = body.CircuitChange(
            "console", "log", CircuitState.OPEN, False, "x", 30.0, h.clock()
        )
        channel = body.channel_event(change)
        assert channel is not None
        await emit(h, mine, theirs, channel)

        own = await page(h, key(BACKEND))
        assert [item["id"] for item in own["items"]] == [str(mine.id)]
        admin = await page(h, key(OPS))
        assert {item["id"] for item in admin["items"]} == {
            str(mine.id),
            str(theirs.id),
            str(channel.id),
        }
        for path in (f"/v1/events/{theirs.id}", f"/v1/events/{theirs.id}/attempts"):
            assert_problem(await h.client.get(path, headers=key(BACKEND)), 404)
        assert_problem(await h.client.get(f"/v1/events/{channel.id}", headers=key(BACKEND)), 404)
        assert (
            await h.client.get(f"/v1/events/{mine.id}", headers=key(BACKEND))
        ).status_code == 200

        refused = await h.client.post(f"/v1/events/{mine.id}/redeliver", headers=key(BACKEND))
        assert_problem(refused, 403, slug="forbidden")
        assert_problem(await h.client.get("/v1/events"), 401, slug="unauthorized")
        allowed = await h.client.post(f"/v1/events/{theirs.id}/redeliver", headers=key(OPS))
        assert allowed.status_code == 200, allowed.text


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    return loaded


def test_every_event_type_is_a_documented_webhook_with_its_headers() -> None:
    webhooks = spec()["webhooks"]
    assert list(webhooks) == [str(event_type) for event_type in EventType]
    for name, entry in webhooks.items():
        operation = entry["post"]
        assert [p["name"] for p in operation["parameters"]] == [
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
        ], name
        assert list(operation["responses"]) == ["2XX"], name
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]


async def test_what_subscriptions_receive_matches_the_webhook_schemas(
    h: Harness, sink: HttpServer
) -> None:
    document = spec()
    await h.send(text="x", route="default")
    await h.run_worker()
    failing = await h.send(text="y", channels=["console"])
    await h.set_fields(failing["id"], channels=["gone"], hops=[{"channel": "gone"}])
    await h.run_worker()
    change = body.CircuitChange("console", "log", CircuitState.OPEN, True, "why", 30.0, h.clock())
    channel = body.channel_event(change)
    assert channel is not None
    await emit(h, channel)
    while await dispatcher(h).run_once():
        pass
    bodies = received(sink, "/ev")
    assert {b["type"] for b in bodies} == {
        "notification.accepted",
        "notification.delivered",
        "attempt.failed",
        "channel.quarantined",
    }
    for payload in bodies:
        reference = document["webhooks"][payload["type"]]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]
        validator = Draft202012Validator({**reference, "components": document["components"]})
        errors = [error.message for error in validator.iter_errors(payload)]
        assert errors == [], (payload["type"], errors)
