"""Delivery end to end on SQLite and PostgreSQL, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks import Webhook

from app.channels.webhook import json_body
from app.delivery.worker import Worker
from tests.support.harness import herald, running_worker
from tests.support.http_server import HttpServer, serve_http

SECRET = "whsec_" + base64.b64encode(b"herald-test-signing-key-32-bytes").decode()


def hook_config(sink: HttpServer, *paths: str, **route: Any) -> dict[str, Any]:
    channels = {
        f"hook{i}": {"type": "webhook", "url": sink.url(path), "secret": SECRET, "timeout": "2s"}
        for i, path in enumerate(paths)
    }
    schedule = route.pop("schedule", ["5s", "1m"])
    return {
        "channels": channels,
        "routes": {
            "default": {
                "channels": list(channels),
                "retry": {"schedule": schedule, "jitter": 0},
                **route,
            }
        },
    }


async def test_transient_failure_is_retried_in_rounds_with_the_same_webhook_id(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/a")) as h:
        sink.script("/a", (503, {}, "busy"), (500, {}, "oops"))
        created = await h.send(text="hello", subject="s", metadata={"k": 1})
        await h.run_worker()
        first = await h.get(created["id"])
        assert first["status"] == "pending"
        assert first["round"] == 1
        due = datetime.fromisoformat(first["next_attempt_at"])
        assert abs((due - datetime.fromisoformat(first["updated_at"])).total_seconds() - 5) < 0.5

        assert await h.run_worker() == 0, "not due before the schedule says so"
        await h.advance_to_next_round(created["id"])
        await h.run_worker()
        await h.advance_to_next_round(created["id"])
        await h.run_worker()

        final = await h.get(created["id"])
        assert final["status"] == "delivered"
        attempts = await h.attempts(created["id"])
        assert [(a["round"], a["outcome"], a["provider_status"]) for a in attempts] == [
            (1, "failed", 503),
            (2, "failed", 500),
            (3, "delivered", 200),
        ]
        assert attempts[0]["error"] == {
            "class": "transient",
            "code": "http_503",
            "message": "HTTP 503 Service Unavailable",
        }
        requests = sink.requests_to("/a")
        assert {r.headers["webhook-id"] for r in requests} == {created["id"]}
        verifier = Webhook(SECRET)
        for request in requests:
            payload = verifier.verify(request.body, request.headers)
            assert payload["type"] == "notification"
            assert payload["data"]["id"] == created["id"]
            assert payload["data"]["text"] == "hello"
            assert payload["data"]["metadata"] == {"k": 1}


async def test_permanent_failure_is_never_retried(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/gone", "/flaky")) as h:
        sink.script("/gone", (410, {}, "no such receiver"))
        sink.script("/flaky", (502, {}, "bad gateway"))
        created = await h.send(text="x")
        await h.run_worker()
        await h.advance_to_next_round(created["id"])
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        assert body["delivered_via"] == "hook1"
        assert len(sink.requests_to("/gone")) == 1
        assert [h_["state"] for h_ in body["hops"]] == ["failed", "delivered"]
        attempts = await h.attempts(created["id"])
        assert [
            (a["channel"], a["round"], a["error"] and a["error"]["class"]) for a in attempts
        ] == [
            ("hook0", 1, "permanent"),
            ("hook1", 1, "transient"),
            ("hook1", 2, None),
        ]


async def test_rounds_exhausted_end_failed_with_exact_attempts(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/down", schedule=["1s", "2s"])) as h,
    ):
        sink.default = (503, {}, "down")
        created = await h.send(text="x")
        for _ in range(3):
            await h.run_worker()
            body = await h.get(created["id"])
            if body["status"] == "pending":
                await h.advance_to_next_round(created["id"])
        body = await h.get(created["id"])
        assert body["status"] == "failed"
        assert body["attempt_count"] == 3
        assert body["round"] == 3
        assert body["hops"][0]["state"] == "failed"
        assert body["last_error"]["code"] == "http_503"
        assert len(sink.requests_to("/down")) == 3


async def test_rate_limited_waits_for_retry_after(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/slow", schedule=["1s"])) as h,
    ):
        sink.script("/slow", (429, {"retry-after": "120"}, "slow down"))
        created = await h.send(text="x")
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "pending"
        assert body["last_error"]["class"] == "rate_limited"
        wait = datetime.fromisoformat(body["next_attempt_at"]) - datetime.fromisoformat(
            body["updated_at"]
        )
        assert 119 <= wait.total_seconds() <= 121
        h.clock.advance(60)
        assert await h.run_worker() == 0
        h.clock.advance(61)
        assert await h.run_worker() == 1
        assert (await h.get(created["id"]))["status"] == "delivered"


async def test_redirects_are_not_followed_and_timeouts_are_transient(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/moved", "/hang")) as h:
        sink.script("/moved", (302, {"location": sink.url("/elsewhere")}, ""))
        sink.delay("/hang", 5)
        h.runtime.config.channels["hook1"].timeout = 0.3
        created = await h.send(text="x")
        await h.run_worker()
        attempts = await h.attempts(created["id"])
        assert [(a["error"]["class"], a["error"]["code"]) for a in attempts] == [
            ("permanent", "http_302"),
            ("transient", "timeout"),
        ]
        assert sink.requests_to("/elsewhere") == []


async def test_response_excerpt_is_at_most_2_kib(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/big")) as h:
        sink.script("/big", (400, {}, "x" * 10_000))
        created = await h.send(text="x")
        await h.run_worker()
        (attempt,) = await h.attempts(created["id"])
        assert len(attempt["response_excerpt"]) == 2048


async def test_connection_refused_is_transient(db_url: str) -> None:
    config = {
        "channels": {
            "dead": {"type": "webhook", "url": "http://127.0.0.1:9/x"},
            "log": {"type": "log"},
        },
        "routes": {"default": {"channels": ["dead", "log"]}},
    }
    async with herald(db_url, config) as h:
        created = await h.send(text="x")
        await h.run_worker()
        attempts = await h.attempts(created["id"])
        assert attempts[0]["error"]["class"] == "transient"
        assert attempts[0]["error"]["code"] == "connection_error"
        assert (await h.get(created["id"]))["delivered_via"] == "log"


async def test_strategy_all_broadcasts_and_reports_partial(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/a", "/b", "/c", strategy="all", schedule=["1s"])) as h,
    ):
        sink.script("/b", (404, {}, "unknown"))
        sink.script("/c", (500, {}, "down"), (500, {}, "down"))
        created = await h.send(text="x")
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "pending"
        assert [hop["state"] for hop in body["hops"]] == ["delivered", "failed", "retrying"]
        await h.advance_to_next_round(created["id"])
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "partial"
        assert body["delivered_via"] == ["hook0"]
        assert len(sink.requests_to("/a")) == 1, "a delivered hop is not sent twice"
        assert len(sink.requests_to("/c")) == 2


async def test_strategy_all_delivers_everywhere(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/a", "/b", strategy="all")) as h,
    ):
        created = await h.send(text="x")
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        assert body["delivered_via"] == ["hook0", "hook1"]


async def test_expiry_ends_a_pending_notification(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/down", schedule=["10m"])) as h,
    ):
        sink.default = (503, {}, "down")
        expires = datetime.now(UTC) + timedelta(minutes=1)
        created = await h.send(text="x", expires_at=expires.isoformat())
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "pending"
        assert datetime.fromisoformat(body["next_attempt_at"]) == expires.replace(
            microsecond=expires.microsecond
        )
        h.clock.advance(61)
        assert await h.run_worker() == 1
        body = await h.get(created["id"])
        assert body["status"] == "expired"
        assert body["hops"][0]["state"] == "expired"
        assert body["hops"][0]["last_error"]["code"] == "http_503"
        assert len(sink.requests_to("/down")) == 1, "no try is made once expired"


async def test_route_ttl_sets_expiry(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/a", ttl="2h")) as h:
        created = await h.send(text="x")
        delta = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(
            created["created_at"]
        )
        assert delta == timedelta(hours=2)


async def test_a_dead_workers_claim_is_delivered_after_its_lease(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/a"), lease=30.0) as h:
        created = await h.send(text="x")
        dead = Worker(h.runtime, worker_id="dead-worker", clock=h.clock)
        claimed = await dead.claim(10)
        assert [str(n.id) for n in claimed] == [created["id"]]
        assert (await h.get(created["id"]))["status"] == "delivering"

        assert await h.worker.sweep() == 0, "the lease has not run out yet"
        assert await h.run_worker() == 0, "a live claim is not taken twice"
        h.clock.advance(31)
        assert await h.worker.sweep() == 1
        assert await h.run_worker() == 1
        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        assert body["attempt_count"] == 1, "the interrupted try left no attempt"
        # The dead worker coming back cannot save over the new owner's result.
        outcome = await dead.deliver(claimed[0])
        assert outcome.status == "delivered"
        assert len(await h.attempts(created["id"])) == 1


async def test_running_loop_wakes_at_once_on_accept(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/a"), poll_interval=30.0) as h,
    ):
        async with running_worker(h):
            await asyncio.sleep(0.1)  # the loop is now idle, waiting for up to 30 s
            created = await h.send(text="x")
            began = time.monotonic()
            while (await h.get(created["id"]))["status"] != "delivered":
                assert time.monotonic() - began < 5, "the worker did not wake"
                await asyncio.sleep(0.01)
        assert len(sink.requests_to("/a")) == 1


async def test_running_loop_delivers_a_burst_with_bounded_concurrency(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(
            db_url,
            hook_config(sink, "/a"),
            worker_concurrency=4,
            worker_batch_size=8,
            poll_interval=30.0,
        ) as h,
    ):
        sink.delay("/a", 0.05)
        ids = [(await h.send(text=f"n{i}"))["id"] for i in range(20)]
        async with running_worker(h):
            began = time.monotonic()
            while True:
                page = (
                    await h.client.get(
                        "/v1/notifications", params={"status": "delivered", "limit": 200}
                    )
                ).json()
                if len(page["items"]) == 20:
                    break
                # Slots free up as tries finish: the worker claims again at once, not at the
                # next 30 s poll.
                assert time.monotonic() - began < 10, "the worker waited for its poll"
                await asyncio.sleep(0.05)
        assert {r.headers["webhook-id"] for r in sink.requests_to("/a")} == set(ids)
        in_flight_peak = _peak_concurrency(sink.requests_to("/a"), 0.05)
        assert in_flight_peak <= 4


def _peak_concurrency(requests: list[Any], duration: float) -> int:
    events = sorted([(r.at, 1) for r in requests] + [(r.at + duration, -1) for r in requests])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


async def test_shutdown_releases_claims_without_an_attempt(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/hang"), shutdown_timeout=0.2) as h,
    ):
        sink.delay("/hang", 3)
        created = await h.send(text="x")
        async with running_worker(h):
            began = time.monotonic()
            while not sink.requests_to("/hang"):
                assert time.monotonic() - began < 5
                await asyncio.sleep(0.01)
        body = await h.get(created["id"])
        assert body["status"] == "pending"
        assert body["attempt_count"] == 0
        assert await h.attempts(created["id"]) == []


async def test_two_workers_never_claim_the_same_notification(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, hook_config(sink, "/a"), worker_batch_size=5) as h,
    ):
        ids = {(await h.send(text=f"n{i}"))["id"] for i in range(40)}
        other = Worker(h.runtime, worker_id="second", clock=h.clock)

        async def drain(worker: Worker) -> int:
            total = 0
            while claimed := await worker.run_once():
                total += claimed
            return total

        first_count, second_count = await asyncio.gather(drain(h.worker), drain(other))
        assert first_count + second_count == 40
        delivered = [r.headers["webhook-id"] for r in sink.requests_to("/a")]
        assert sorted(delivered) == sorted(ids), "each notification sent exactly once"


async def test_a_webhook_body_is_utf8_json_that_verifies(db_url: str) -> None:
    """The body is compact JSON in UTF-8 (orjson's): text beyond ASCII goes as it is, and the
    signature covers those bytes."""
    async with serve_http() as sink, herald(db_url, hook_config(sink, "/a")) as h:
        created = await h.send(text="Grüße \u2028 \U0001f600", metadata={"n": 2**63 - 1})
        await h.run_worker()
        (request,) = sink.requests_to("/a")
        assert "Grüße".encode() in request.body and b"\\u" not in request.body
        assert b'"metadata":{"n":9223372036854775807}' in request.body
        payload = Webhook(SECRET).verify(request.body, request.headers)
        assert payload["data"]["id"] == created["id"]
        assert payload["data"]["text"] == "Grüße \u2028 \U0001f600"


def test_a_body_orjson_refuses_is_written_by_json() -> None:
    """An integer past 64 bits (a row stored before metadata was bounded): ``json`` writes it,
    compact and in UTF-8 alike."""
    assert json_body({"n": 2**70, "t": "é"}) == '{"n":1180591620717411303424,"t":"é"}'.encode()
    assert json_body({"n": 1, "t": "é"}) == '{"n":1,"t":"é"}'.encode()
