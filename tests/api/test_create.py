"""``POST /v1/notifications``: what is accepted, how the chain is resolved, what is refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.conftest import assert_problem, error_locs, list_ids, when
from tests.support.harness import Harness, herald

MAX_BODY = 1024 * 1024
TEXT_LIMIT = 64 * 1024
METADATA_LIMIT = 16 * 1024


async def test_accepted_with_location_and_the_whole_resource(h: Harness) -> None:
    before = datetime.now(UTC)
    response = await h.client.post(
        "/v1/notifications",
        json={
            "route": "alerts",
            "recipient": {"email": "ops@example.com", "phone": "+15551234567"},
            "subject": "Disk almost full",
            "text": "db-1: / at 93%",
            "html": "<p>db-1: / at <b>93%</b></p>",
            "severity": "warning",
            "source": "monitoring",
            "metadata": {"host": "db-1", "nested": {"n": [1, 2]}},
        },
    )
    after = datetime.now(UTC)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in response.headers
    body = response.json()
    assert response.headers["location"] == f"/v1/notifications/{body['id']}"

    created_at = when(body.pop("created_at"))
    updated_at = when(body.pop("updated_at"))
    next_attempt_at = when(body.pop("next_attempt_at"))
    assert created_at is not None and before <= created_at <= after
    assert updated_at == created_at
    assert next_attempt_at == created_at  # due at once
    notification_id = body.pop("id")
    assert body == {
        "status": "pending",
        "route": "alerts",
        "strategy": "fallback",
        "channels": ["console"],
        "recipient": {
            "email": "ops@example.com",
            "phone": "+15551234567",
            "telegram_chat_id": None,
            "webhook_url": None,
            "quiet_hours": None,
        },
        "subject": "Disk almost full",
        "text": "db-1: / at 93%",
        "html": "<p>db-1: / at <b>93%</b></p>",
        "severity": "warning",
        "source": "monitoring",
        "metadata": {"host": "db-1", "nested": {"n": [1, 2]}},
        "round": 0,
        "attempt_count": 0,
        "delivered_via": None,
        "delivered_at": None,
        "last_error": None,
        "hops": [{"channel": "console", "state": "pending", "attempts": 0, "last_error": None}],
        "send_at": None,
        "expires_at": None,
        "callback_url": None,
        "callback_events": None,
        "acknowledgement": None,
        "template": None,
        "rendered": None,
        "dedup_key": None,
        "occurrences": 1,
    }

    # The Location resolves to the same resource.
    fetched = await h.client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json()["id"] == notification_id
    assert fetched.json()["text"] == "db-1: / at 93%"


async def test_severity_defaults_to_info(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    assert created["severity"] == "info"
    assert created["subject"] is None
    assert created["source"] is None
    assert created["metadata"] == {}
    assert created["html"] is None


async def test_named_route_gives_its_chain_strategy_and_ttl(h: Harness) -> None:
    created = await h.send(route="broadcast", text="x")
    assert created["route"] == "broadcast"
    assert created["channels"] == ["console", "backup"]
    assert created["strategy"] == "all"
    assert [hop["channel"] for hop in created["hops"]] == ["console", "backup"]
    # ttl 1h: expires an hour after acceptance
    created_at = when(created["created_at"])
    assert created_at is not None
    assert when(created["expires_at"]) == created_at + timedelta(hours=1)


async def test_route_ttl_counts_from_send_at(h: Harness) -> None:
    send_at = datetime(2030, 1, 1, 10, tzinfo=UTC)
    created = await h.send(route="broadcast", text="x", send_at=send_at.isoformat())
    assert when(created["expires_at"]) == send_at + timedelta(hours=1)


async def test_inline_channels_are_an_ordered_fallback_chain(h: Harness) -> None:
    created = await h.send(channels=["backup", "console"], html="<p>x</p>")
    assert created["route"] is None
    assert created["channels"] == ["backup", "console"]
    assert created["strategy"] == "fallback"
    assert created["expires_at"] is None
    assert [hop["channel"] for hop in created["hops"]] == ["backup", "console"]


async def test_neither_route_nor_channels_means_the_default_route(h: Harness) -> None:
    created = await h.send(text="x")
    assert created["route"] == "default"
    assert created["channels"] == ["hooks", "console"]


async def test_no_default_route_configured_is_422(db_url: str) -> None:
    config = {
        "channels": {"console": {"type": "log"}},
        "routes": {"alerts": {"channels": ["console"]}},
    }
    async with herald(db_url, config) as h:
        response = await h.client.post("/v1/notifications", json={"text": "x"})
        problem = assert_problem(response, 422, detail_contains="default")
        assert error_locs(problem) == [["body", "route"]]
        # A named route and an inline chain still work without a default.
        await h.send(route="alerts", text="x")
        await h.send(channels=["console"], text="x")
        assert len(await list_ids(h)) == 2


async def test_unknown_route_is_422_naming_it(h: Harness) -> None:
    response = await h.client.post("/v1/notifications", json={"route": "nope-route", "text": "x"})
    problem = assert_problem(response, 422, detail_contains="'nope-route'")
    assert problem["errors"] == [{"loc": ["body", "route"], "msg": "unknown route 'nope-route'"}]
    assert await list_ids(h) == []


async def test_unknown_channels_are_422_naming_each(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications", json={"channels": ["console", "ghost-1", "ghost-2"], "text": "x"}
    )
    problem = assert_problem(response, 422, detail_contains=("'ghost-1'", "'ghost-2'"))
    assert "'console'" not in problem["detail"]
    assert problem["errors"] == [
        {"loc": ["body", "channels"], "msg": "unknown channel 'ghost-1'"},
        {"loc": ["body", "channels"], "msg": "unknown channel 'ghost-2'"},
    ]
    assert await list_ids(h) == []


async def test_route_and_channels_together_are_422(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications", json={"route": "alerts", "channels": ["console"], "text": "x"}
    )
    problem = assert_problem(response, 422)
    assert any("not both" in error["msg"] for error in problem["errors"]), problem


async def test_a_channel_twice_in_an_inline_chain_is_422(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications", json={"channels": ["console", "console"], "text": "x"}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", "channels"]]


async def test_empty_inline_chain_is_422(h: Harness) -> None:
    response = await h.client.post("/v1/notifications", json={"channels": [], "text": "x"})
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", "channels"]]


async def test_neither_text_nor_html_is_422(h: Harness) -> None:
    response = await h.client.post("/v1/notifications", json={"route": "alerts", "subject": "s"})
    problem = assert_problem(response, 422)
    assert any("text" in e["msg"] and "html" in e["msg"] for e in problem["errors"]), problem
    # Either one alone is enough.
    assert (await h.send(route="alerts", text="t"))["text"] == "t"
    assert (await h.send(route="alerts", html="<b>h</b>"))["html"] == "<b>h</b>"


async def test_subject_up_to_998_characters(h: Harness) -> None:
    subject = "é" * 998  # characters, not bytes
    created = await h.send(route="alerts", subject=subject, text="x")
    assert created["subject"] == subject
    response = await h.client.post(
        "/v1/notifications", json={"route": "alerts", "subject": "s" * 999, "text": "x"}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", "subject"]]


def utf8_string(size: int, char: str) -> str:
    """A string of exactly ``size`` bytes of UTF-8, made mostly of ``char``."""
    width = len(char.encode())
    value = char * (size // width) + "a" * (size % width)
    assert len(value.encode()) == size
    return value


@pytest.mark.parametrize("field", ["text", "html"])
async def test_bodies_up_to_64_kib_of_utf8(h: Harness, field: str) -> None:
    for char in ("a", "é", "€", "😀"):
        exact = utf8_string(TEXT_LIMIT, char)
        created = await h.send(route="alerts", **{field: exact})
        fetched = await h.get(created["id"])
        assert fetched[field] == exact, char

        over = utf8_string(TEXT_LIMIT + 1, char)
        assert char == "a" or len(over) < TEXT_LIMIT  # only a byte count refuses these
        response = await h.client.post("/v1/notifications", json={"route": "alerts", field: over})
        problem = assert_problem(response, 422)
        assert error_locs(problem) == [["body", field]], char
        assert "65536 bytes" in problem["errors"][0]["msg"]
    assert len(await list_ids(h)) == 4


async def test_metadata_up_to_16_kib_serialized(h: Harness) -> None:
    # {"k":"…"} is 8 bytes around the value, serialized compactly.
    exact = {"k": "x" * (METADATA_LIMIT - 8)}
    assert len(json.dumps(exact, separators=(",", ":"))) == METADATA_LIMIT
    created = await h.send(route="alerts", text="x", metadata=exact)
    assert (await h.get(created["id"]))["metadata"] == exact

    over = {"k": "x" * (METADATA_LIMIT - 7)}
    response = await h.client.post(
        "/v1/notifications", json={"route": "alerts", "text": "x", "metadata": over}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", "metadata"]]
    assert len(await list_ids(h)) == 1


async def test_metadata_limit_counts_utf8_bytes_not_json_escapes(h: Harness) -> None:
    """16 KiB of UTF-8 JSON is within the limit even when it is not ASCII."""
    value = "é" * 8000  # 16,000 bytes of UTF-8; 48,000 if each were written \\u00e9
    created = await h.send(route="alerts", text="x", metadata={"k": value})
    assert (await h.get(created["id"]))["metadata"] == {"k": value}
    response = await h.client.post(
        "/v1/notifications",
        json={"route": "alerts", "text": "x", "metadata": {"k": "é" * 8200}},  # 16,408 bytes
    )
    assert_problem(response, 422)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"text": "x", "priority": "high"}, ["body", "priority"], id="unknown-field"),
        pytest.param(
            {"text": "x", "recipient": {"email": "a@example.com", "pager": "1"}},
            ["body", "recipient", "pager"],
            id="unknown-recipient-field",
        ),
        pytest.param({"text": "x", "severity": "urgent"}, ["body", "severity"], id="severity"),
        pytest.param({"text": 5}, ["body", "text"], id="text-not-a-string"),
        pytest.param({"text": "x", "metadata": [1]}, ["body", "metadata"], id="metadata-list"),
        pytest.param(
            {"text": "x", "send_at": "2030-01-01T10:00:00"}, ["body", "send_at"], id="naive-send_at"
        ),
        pytest.param(
            {"text": "x", "expires_at": "2030-01-01T10:00:00"},
            ["body", "expires_at"],
            id="naive-expires_at",
        ),
        pytest.param({"text": "x", "send_at": "tomorrow"}, ["body", "send_at"], id="bad-send_at"),
    ],
)
async def test_invalid_fields_are_422_with_their_location(
    h: Harness, body: dict[str, Any], loc: list[str]
) -> None:
    response = await h.client.post("/v1/notifications", json={"route": "alerts", **body})
    problem = assert_problem(response, 422)
    assert loc in error_locs(problem), problem
    assert ".".join(loc) in problem["detail"]


@pytest.mark.parametrize("gap", [timedelta(0), timedelta(seconds=-1)], ids=["equal", "earlier"])
async def test_expires_at_not_after_send_at_is_422(h: Harness, gap: timedelta) -> None:
    send_at = datetime(2030, 1, 1, 10, tzinfo=UTC)
    response = await h.client.post(
        "/v1/notifications",
        json={
            "text": "x",
            "send_at": send_at.isoformat(),
            "expires_at": (send_at + gap).isoformat(),
        },
    )
    problem = assert_problem(response, 422)
    assert any("expires_at" in e["msg"] for e in problem["errors"]), problem
    assert await list_ids(h) == []


async def test_expires_at_in_another_zone_compares_by_instant(h: Harness) -> None:
    # 11:30+02:00 is 09:30Z, before send_at 10:00Z.
    response = await h.client.post(
        "/v1/notifications",
        json={
            "text": "x",
            "send_at": "2030-01-01T10:00:00Z",
            "expires_at": "2030-01-01T11:30:00+02:00",
        },
    )
    assert_problem(response, 422)


@pytest.mark.parametrize(
    "content",
    [b'{"text": "x",', b"not json", b'{"text": "x"} trailing'],
    ids=["truncated", "garbage", "trailing"],
)
async def test_malformed_json_is_a_422_problem(h: Harness, content: bytes) -> None:
    response = await h.client.post(
        "/v1/notifications", content=content, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["loc"][0] == "body"
    assert await list_ids(h) == []


async def test_a_json_array_is_a_422_problem(h: Harness) -> None:
    response = await h.client.post("/v1/notifications", json=[{"text": "x"}])
    assert_problem(response, 422)


def padded_body(size: int) -> bytes:
    """A valid notification, padded with JSON whitespace to exactly ``size`` bytes."""
    core = b'{"route": "alerts", "text": "big"'
    body = core + b" " * (size - len(core) - 1) + b"}"
    assert len(body) == size
    return body


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_body_of_exactly_1_mib_is_accepted(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        content=padded_body(MAX_BODY),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    chunked = await h.client.post(
        "/v1/notifications",
        content=chunks(padded_body(MAX_BODY)),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 202, chunked.text
    assert len(await list_ids(h)) == 2


async def test_body_over_1_mib_with_content_length_is_413(h: Harness) -> None:
    body = padded_body(MAX_BODY + 1)
    response = await h.client.post(
        "/v1/notifications", content=body, headers={"content-type": "application/json"}
    )
    assert response.request.headers["content-length"] == str(MAX_BODY + 1)
    assert_problem(response, 413, detail_contains=str(MAX_BODY))
    assert await list_ids(h) == []


async def test_chunked_body_over_1_mib_is_413(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        content=chunks(padded_body(MAX_BODY + 1)),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, detail_contains=str(MAX_BODY))
    assert await list_ids(h) == []


async def test_chunked_body_far_over_the_limit_is_413(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        content=chunks(padded_body(3 * MAX_BODY), size=256 * 1024),
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413)
    assert await list_ids(h) == []


async def test_send_at_in_the_future_waits_for_it(h: Harness) -> None:
    send_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    created = await h.send(route="alerts", text="later", send_at=send_at.isoformat())
    assert created["status"] == "pending"
    assert when(created["send_at"]) == send_at
    assert when(created["next_attempt_at"]) == send_at

    assert await h.run_worker() == 0
    h.clock.advance(3600 - 30)
    assert await h.run_worker() == 0
    assert (await h.get(created["id"]))["status"] == "pending"
    assert await h.attempts(created["id"]) == []

    h.clock.advance(60)
    assert await h.run_worker() == 1
    body = await h.get(created["id"])
    assert body["status"] == "delivered"
    assert body["delivered_via"] == "console"
    [attempt] = await h.attempts(created["id"])
    started_at = when(attempt["started_at"])
    assert started_at is not None and started_at >= send_at


async def test_send_at_in_the_past_is_due_at_once(h: Harness) -> None:
    send_at = datetime.now(UTC) - timedelta(hours=1)
    created = await h.send(route="alerts", text="late", send_at=send_at.isoformat())
    next_attempt_at = when(created["next_attempt_at"])
    assert next_attempt_at is not None and next_attempt_at > send_at
    assert await h.run_worker() == 1
    assert (await h.get(created["id"]))["status"] == "delivered"


@pytest.mark.parametrize("field", ["subject", "text", "html", "source"])
async def test_nul_characters_in_stored_text_are_422(h: Harness, field: str) -> None:
    """PostgreSQL text cannot hold U+0000: refuse it up front on every backend, never a 503."""
    response = await h.client.post(
        "/v1/notifications", json={"route": "alerts", "text": "x", field: "a\u0000b"}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", field]]
    assert await list_ids(h) == []


async def test_nul_characters_inside_json_values_are_kept(h: Harness) -> None:
    created = await h.send(
        route="alerts",
        text="x",
        metadata={"k": "a\u0000b"},
        recipient={"telegram_chat_id": "-100\u0000"},
    )
    fetched = await h.get(created["id"])
    assert fetched["metadata"] == {"k": "a\u0000b"}
    assert fetched["recipient"]["telegram_chat_id"] == "-100\u0000"


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+01:00"], ids=["max", "min"]
)
@pytest.mark.parametrize("field", ["send_at", "expires_at"])
async def test_times_outside_the_utc_range_are_422(h: Harness, field: str, value: str) -> None:
    response = await h.client.post(
        "/v1/notifications", json={"route": "alerts", "text": "x", field: value}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", field]]


async def test_send_at_whose_ttl_expiry_passes_year_9999_is_422(h: Harness) -> None:
    late = "9999-12-31T23:00:00Z"
    response = await h.client.post(
        "/v1/notifications", json={"route": "broadcast", "text": "x", "send_at": late}
    )
    problem = assert_problem(response, 422, detail_contains="ttl")
    assert error_locs(problem) == [["body", "send_at"]]
    # Without a ttl the same time is fine.
    created = await h.send(route="alerts", text="x", send_at=late)
    assert when(created["next_attempt_at"]) == datetime(9999, 12, 31, 23, tzinfo=UTC)
