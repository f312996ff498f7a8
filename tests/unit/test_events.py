"""Events without I/O: the bodies each change produces, subscriptions in the config, which
subscription takes which event, and the circuit hook that queues channel events."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from app.channels.base import CircuitConfig, DeliveryResult, ErrorClass
from app.delivery.circuit import CircuitBreaker
from app.delivery.orchestrator import Link, Orchestrator
from app.domain import (
    FINAL_EVENTS,
    Callback,
    CircuitState,
    Event,
    EventType,
    Hop,
    HopState,
    NotificationStatus,
    fresh_hops,
)
from app.events import body
from app.events.circuits import CircuitChanges
from app.events.outbox import Outbox
from tests.unit.test_config import EXAMPLE, parse, problems
from tests.unit.test_orchestrator import DOWN, GONE, NOW, OK, FakeChannel, message, plan

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOTIFICATION = uuid.UUID("01a23fe5-c959-70f0-a8ac-e11540ba6b75")


def config(*subscriptions: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "channels": {"c": {"type": "log"}},
        "routes": {"alerts": {"channels": ["c"]}, "billing": {"channels": ["c"]}},
        "events": {"subscriptions": list(subscriptions)},
        **sections,
    }


def sub(name: str = "ops", **options: Any) -> dict[str, Any]:
    return {"name": name, "url": "https://hooks.example.com/in", "secret": SECRET, **options}


# --- bodies ----------------------------------------------------------------------------------


def test_an_event_body_is_versioned_and_carries_no_content_unless_given() -> None:
    event = body.notification_event(
        notification_id=NOTIFICATION,
        owner="backend",
        route="alerts",
        status=NotificationStatus.PENDING,
        delivered_via=None,
        hops=fresh_hops(["tg", "mail"]),
        at=NOW,
    )
    assert event.id.version == 7
    assert event.body() == {
        "id": str(event.id),
        "type": "notification.accepted",
        "timestamp": "2026-11-26T12:00:00Z",
        "version": 1,
        "notification_id": str(NOTIFICATION),
        "owner": "backend",
        "data": {
            "status": "pending",
            "route": "alerts",
            "delivered_via": None,
            "hops": [
                {"channel": "tg", "state": "pending", "attempts": 0, "last_error": None},
                {"channel": "mail", "state": "pending", "attempts": 0, "last_error": None},
            ],
        },
    }
    content = {"subject": "s", "text": "t"}
    assert event.body(content)["data"]["content"] == content
    assert "content" not in event.data, "the stored event never holds the content"


def test_content_is_the_message_as_accepted_without_empty_addresses() -> None:
    row = {
        "subject": "Disk",
        "text": "93%",
        "html": None,
        "severity": "warning",
        "source": "monitoring",
        "metadata": {"host": "db-1"},
        "recipient": {"email": "ops@example.com", "phone": None},
        "claimed_by": "never read",
    }
    assert body.content(row) == {
        "subject": "Disk",
        "text": "93%",
        "html": None,
        "severity": "warning",
        "source": "monitoring",
        "metadata": {"host": "db-1"},
        "recipient": {"email": "ops@example.com"},
    }


async def test_a_round_announces_each_failed_attempt_then_the_final_status() -> None:
    chain = [
        Link(channel=FakeChannel("tg", DOWN)),
        Link(channel=FakeChannel("mail", GONE)),
        Link(channel=FakeChannel("sms", OK)),
    ]
    outcome = await Orchestrator(clock=lambda: NOW).run_round(
        message(), chain, fresh_hops(["tg", "mail", "sms"]), plan()
    )
    events = body.round_events(
        notification_id=NOTIFICATION, owner="backend", route="alerts", outcome=outcome, at=NOW
    )
    assert [e.type for e in events] == [
        EventType.ATTEMPT_FAILED,
        EventType.ATTEMPT_FAILED,
        EventType.NOTIFICATION_DELIVERED,
    ]
    assert [e.id for e in events] == sorted(e.id for e in events), "ids in the order it happened"
    first = events[0].body()["data"]
    assert first["attempt"] == {
        "channel": "tg",
        "channel_type": "fake",
        "round": 1,
        "hop": 0,
        "trigger": "scheduled",
        "error": {"class": "transient", "code": "http_503", "message": "HTTP 503"},
        "provider_status": None,
        "started_at": "2026-11-26T12:00:00Z",
        "duration_ms": first["attempt"]["duration_ms"],
    }
    assert first["status"] == "delivered" and first["delivered_via"] == "sms"
    final = events[-1]
    assert final.data["status"] == NotificationStatus.DELIVERED
    assert [hop["state"] for hop in final.data["hops"]] == ["failed", "failed", "delivered"]
    assert all(e.owner == "backend" and e.route == "alerts" for e in events)
    assert all("text" not in str(e.body()) for e in events), "no message body in any event"


async def test_a_round_that_leaves_the_notification_pending_says_only_what_failed() -> None:
    skipped = DeliveryResult.skipped("no_address", "none")
    chain = [Link(channel=FakeChannel("tg", skipped)), Link(channel=FakeChannel("sms", DOWN))]
    outcome = await Orchestrator(clock=lambda: NOW).run_round(
        message(), chain, fresh_hops(["tg", "sms"]), plan()
    )
    assert outcome.status is NotificationStatus.PENDING
    events = body.round_events(
        notification_id=NOTIFICATION, owner=None, route=None, outcome=outcome, at=NOW
    )
    assert [(e.type, e.data["attempt"]["channel"]) for e in events] == [
        (EventType.ATTEMPT_FAILED, "sms")
    ]


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        (NotificationStatus.FAILED, EventType.NOTIFICATION_FAILED),
        (NotificationStatus.PARTIAL, EventType.NOTIFICATION_PARTIAL),
        (NotificationStatus.EXPIRED, EventType.NOTIFICATION_EXPIRED),
    ],
)
def test_each_final_status_has_its_event(status: NotificationStatus, event_type: EventType) -> None:
    outcome = Orchestrator().expire(fresh_hops(["a"]))
    outcome = type(outcome)(status=status, hops=outcome.hops)
    (event,) = body.round_events(
        notification_id=NOTIFICATION, owner=None, route="alerts", outcome=outcome, at=NOW
    )
    assert event.type is event_type
    assert event.timestamp == NOW


def test_a_cancel_is_announced_with_the_settled_hops() -> None:
    hops = [Hop(channel="a", state=HopState.CANCELLED)]
    event = body.notification_event(
        notification_id=NOTIFICATION,
        owner="backend",
        route="alerts",
        status=NotificationStatus.CANCELLED,
        delivered_via=None,
        hops=hops,
        at=NOW,
    )
    assert event.type is EventType.NOTIFICATION_CANCELLED
    assert event.data["status"] == "cancelled"
    assert event.data["hops"][0]["state"] == "cancelled"


@pytest.mark.parametrize(
    ("state", "quarantined", "expected"),
    [
        (CircuitState.OPEN, False, EventType.CHANNEL_CIRCUIT_OPENED),
        (CircuitState.OPEN, True, EventType.CHANNEL_QUARANTINED),
        (CircuitState.CLOSED, False, EventType.CHANNEL_CIRCUIT_CLOSED),
        (CircuitState.HALF_OPEN, False, None),
    ],
)
def test_circuit_changes_become_channel_events(
    state: CircuitState, quarantined: bool, expected: EventType | None
) -> None:
    change = body.CircuitChange("tg", "telegram", state, quarantined, "why", 30.0, NOW)
    event = body.channel_event(change)
    if expected is None:
        assert event is None
        return
    assert event is not None and event.type is expected
    assert (event.notification_id, event.owner, event.route) == (None, None, None)
    assert event.data == {
        "channel": "tg",
        "channel_type": "telegram",
        "state": state,
        "reason": "why",
        "cooldown_seconds": 30.0,
    }


def test_the_circuit_hook_queues_changes_and_tells_quarantine_from_failures() -> None:
    now = [0.0]
    seen: list[CircuitState] = []
    breaker = CircuitBreaker("tg", CircuitConfig(failures=2, cooldown=10), clock=lambda: now[0])
    changes = CircuitChanges(limit=3)
    breaker.on_change = changes.hook(breaker, "telegram", lambda _, state: seen.append(state))
    breaker.record(DOWN)
    breaker.record(DOWN)  # opened by failures
    now[0] = 11.0
    assert breaker.allow()  # half-open
    breaker.record(OK)  # closed
    breaker.record(DeliveryResult.failed(ErrorClass.CONFIG, "http_401", "HTTP 401"))
    taken = changes.take()
    assert [(c.state, c.quarantined) for c in taken] == [
        (CircuitState.OPEN, False),
        (CircuitState.HALF_OPEN, False),
        (CircuitState.CLOSED, False),
        (CircuitState.OPEN, True),
    ][-3:]
    assert changes.dropped == 1, "the queue keeps the newest, and counts what it dropped"
    assert seen == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
        CircuitState.OPEN,
    ]
    assert taken[-1].reason == "http_401: HTTP 401"
    assert len(changes) == 0


# --- subscriptions in the config ------------------------------------------------------------


def test_a_subscription_defaults_to_every_event() -> None:
    (parsed,) = parse(config(sub())).events.subscriptions
    assert parsed.event_types == frozenset(EventType)
    assert parsed.include_content is False
    assert parsed.timeout == 10.0
    assert parsed.secret.get_secret_value() == SECRET


def test_unknown_event_types_and_globs_matching_nothing_name_the_field() -> None:
    found = problems(config(sub(types=["notification.delivred", "notifcation.*", "attempt.*"])))
    assert found[0] == (
        "events.subscriptions.0.types.0: unknown event type 'notification.delivred'; "
        "did you mean `notification.delivered`?"
    )
    assert found[1].startswith(
        "events.subscriptions.0.types.1: 'notifcation.*' matches no event type (known: "
        "notification.accepted, "
    )
    assert len(found) == 2


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"url": "ftp://x"}, "events.subscriptions.0.url: must be an http:// or https:// URL"),
        ({"secret": "not-a-secret"}, "events.subscriptions.0.secret: secret must be whsec_"),
        ({"secret": "whsec_***"}, "events.subscriptions.0.secret: secret must be whsec_"),
        ({"name": "a b"}, "events.subscriptions.0.name: String should match pattern"),
        ({"timeout": "0s"}, "events.subscriptions.0.timeout: Input should be greater than 0"),
        ({"timout": "1s"}, "events.subscriptions.0.timout: unknown field 'timout'; did you mean"),
        ({"types": []}, "events.subscriptions.0.types: List should have at least 1 item"),
        ({"routes": ["alert"]}, "events.subscriptions.0.routes.0: route 'alert' is not defined"),
        ({"owners": ["nobody"]}, "events.subscriptions.0.owners.0: API key 'nobody' is not"),
    ],
)
def test_bad_subscriptions_are_config_errors(change: dict[str, Any], problem: str) -> None:
    (found,) = problems(config(sub(**change)))
    assert found.startswith(problem), found
    assert "0123456789abcdef" not in found and "***" not in found, "no secret echoed"


def test_subscription_names_are_unique() -> None:
    assert problems(config(sub(), sub())) == [
        "events.subscriptions.1.name: subscription 'ops' is defined twice"
    ]


def test_callback_is_a_reserved_subscription_name() -> None:
    assert problems(config(sub("callback"))) == [
        "events.subscriptions.0.name: 'callback' is reserved for notifications' callback_url"
    ]


@pytest.mark.parametrize("secret", ["not-a-secret", "whsec_***"])
def test_a_bad_callback_secret_is_a_config_error_that_echoes_nothing(secret: str) -> None:
    raw = config()
    raw["events"]["callback_secret"] = secret
    (found,) = problems(raw)
    assert found.startswith("events.callback_secret: secret must be whsec_"), found
    assert secret not in found


def test_callbacks_are_sent_as_a_subscription_with_the_defaults() -> None:
    assert parse(config()).events.callback is None
    raw = config()
    raw["events"]["callback_secret"] = SECRET
    callback = parse(raw).events.callback
    assert callback is not None
    assert (callback.name, callback.timeout, callback.include_content) == ("callback", 10.0, False)
    assert callback.retry.schedule == parse(config(sub())).events.subscriptions[0].retry.schedule
    assert callback.secret.get_secret_value() == SECRET


def test_a_missing_url_or_secret_is_named() -> None:
    assert problems(config({"name": "ops"})) == [
        "events.subscriptions.0.url: Field required",
        "events.subscriptions.0.secret: Field required",
    ]


# --- which subscription takes which event --------------------------------------------------


def outbox(*subscriptions: dict[str, Any], callback_secret: str | None = None) -> Outbox:
    keys = {"auth": {"api_keys": [{"name": "backend", "key": "k"}, {"name": "ops", "key": "o"}]}}
    raw = config(*subscriptions, **keys)
    if callback_secret is not None:
        raw["events"]["callback_secret"] = callback_secret
    return Outbox(parse(raw).events)


def event(event_type: EventType, route: str | None = "alerts", owner: str | None = None) -> Event:
    return Event(uuid.uuid4(), event_type, datetime.now(UTC), None, owner, route, {})


def test_types_routes_and_owners_narrow_what_a_subscription_takes() -> None:
    box = outbox(
        sub("all"),
        sub("failures", types=["notification.failed", "attempt.*"]),
        sub("alerts", routes=["alerts"]),
        sub("backend", owners=["backend"], types=["notification.*"]),
        sub("channels", types=["channel.*"]),
    )
    assert box.takers(event(EventType.NOTIFICATION_FAILED)) == ["all", "failures", "alerts"]
    assert box.takers(event(EventType.NOTIFICATION_FAILED, owner="backend")) == [
        "all",
        "failures",
        "alerts",
        "backend",
    ]
    assert box.takers(event(EventType.ATTEMPT_FAILED, route="billing")) == ["all", "failures"]
    assert box.takers(event(EventType.NOTIFICATION_ACCEPTED, route=None)) == ["all"]
    channel = event(EventType.CHANNEL_QUARANTINED, route=None)
    assert box.takers(channel) == ["all", "channels"], "a route or owner filter takes no channel"
    assert box.wants(EventType.NOTIFICATION_DELIVERED, route="billing", owner="ops")
    assert not outbox(sub(types=["channel.*"])).wants(
        EventType.NOTIFICATION_DELIVERED, route="alerts", owner=None
    )


def test_rows_keep_only_what_some_subscription_takes_in_event_order() -> None:
    box = outbox(sub("a", types=["notification.*"]), sub("b"))
    events = [
        event(EventType.ATTEMPT_FAILED),
        event(EventType.NOTIFICATION_FAILED),
    ]
    rows = box.rows(events, NOW)
    assert rows.events == events
    assert [row["id"] for row in rows.event_rows] == [e.id for e in events]
    assert [(d["event_id"], d["subscription"], d["url"]) for d in rows.deliveries] == [
        (events[0].id, "b", None),
        (events[1].id, "a", None),
        (events[1].id, "b", None),
    ]
    assert {d["status"] for d in rows.deliveries} == {"pending"}
    assert {d["next_attempt_at"] for d in rows.deliveries} == {NOW}
    assert not outbox(sub(types=["channel.*"])).rows(events, NOW)


def test_the_example_configs_commented_subscription_is_valid() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# events:")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("#")), len(lines))
    block = "\n".join(line.removeprefix("# ") for line in lines[start:end] if line.startswith("# "))
    raw = yaml.safe_load(block)
    events = parse({**config(), **raw}).events
    (parsed,) = events.subscriptions
    assert events.callback is not None, "callbacks are signed"
    assert parsed.name == "ops-receiver"
    assert EventType.CHANNEL_QUARANTINED in parsed.event_types


def test_a_notification_in_flight_has_no_event_of_its_own() -> None:
    with pytest.raises(KeyError):
        body.notification_event(
            notification_id=NOTIFICATION,
            owner=None,
            route=None,
            status=NotificationStatus.DELIVERING,
            delivered_via=None,
            hops=[],
            at=NOW,
        )


# --- callbacks -----------------------------------------------------------------------------


def test_a_callback_takes_its_globs_or_else_the_final_statuses() -> None:
    assert Callback.of(None, ["*"]) is None
    default = Callback.of("https://cb.example.com/", None)
    assert default is not None and default.types == set(FINAL_EVENTS.values())
    chosen = Callback.of("https://cb.example.com/", ["attempt.*", "notification.accepted"])
    assert chosen is not None
    assert chosen.types == {
        EventType.ATTEMPT_FAILED,
        EventType.ATTEMPT_RECEIPT,
        EventType.NOTIFICATION_ACCEPTED,
    }


def notification_event(event_type: EventType) -> Event:
    return Event(uuid.uuid4(), event_type, datetime.now(UTC), NOTIFICATION, None, "alerts", {})


def test_a_callback_is_a_taker_with_its_url_only_while_callbacks_are_sent() -> None:
    box = outbox(sub("a", types=["attempt.failed"]), callback_secret=SECRET)
    callback = box.callback("https://cb.example.com/in", ["notification.*"])
    assert callback is not None
    events = [
        notification_event(EventType.ATTEMPT_FAILED),
        notification_event(EventType.NOTIFICATION_FAILED),
    ]
    rows = box.rows(events, NOW, {NOTIFICATION: callback})
    assert [(d["subscription"], d["url"]) for d in rows.deliveries] == [
        ("a", None),
        ("callback", "https://cb.example.com/in"),
    ]
    assert box.rows(events, NOW).deliveries[1:] == [], "another notification's: no callback"
    assert box.wants(EventType.NOTIFICATION_FAILED, route=None, owner=None, callback=callback)
    assert outbox(sub("a")).callback("https://cb.example.com/in", None) is None, "no secret"


async def test_a_round_nobody_wants_builds_no_event() -> None:
    chain = [Link(channel=FakeChannel("tg", DOWN)), Link(channel=FakeChannel("sms", OK))]
    outcome = await Orchestrator(clock=lambda: NOW).run_round(
        message(), chain, fresh_hops(["tg", "sms"]), plan()
    )
    of = {"notification_id": NOTIFICATION, "owner": None, "route": "alerts", "at": NOW}
    assert outbox().of_round(callback=None, outcome=outcome, **of) is None
    channels_only = outbox(sub(types=["channel.*"]))
    assert channels_only.of_round(callback=None, outcome=outcome, **of) is None
    finals = outbox(sub(types=["notification.delivered"]))
    rows = finals.of_round(callback=None, outcome=outcome, **of)
    assert rows is not None
    assert [e.type for e in rows.events] == [EventType.NOTIFICATION_DELIVERED]
