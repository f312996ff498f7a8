"""Events end to end on SQLite and PostgreSQL: the outbox, the dispatcher and real local
receivers, each request's signature checked with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from app.domain import EventType
from app.metrics import REGISTRY
from app.store.models import EventDelivery, EventRecord
from tests.support.events import (
    accepted,
    delivered,
    dispatcher,
    drain,
    emit,
    events_config,
    received,
    subscription,
)
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import HttpServer, serve_http


async def deliveries(h: Harness, event_id: uuid.UUID) -> list[dict[str, Any]]:
    response = await h.client.get(f"/v1/events/{event_id}")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["deliveries"]
    return items


async def attempts(h: Harness, event_id: uuid.UUID) -> list[dict[str, Any]]:
    response = await h.client.get(f"/v1/events/{event_id}/attempts")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_events_are_signed_per_standard_webhooks_with_the_event_id(db_url: str) -> None:
    async with serve_http() as sink:
        config = events_config(
            subscription(sink.url("/plain"), "plain"),
            subscription(sink.url("/full"), "full", include_content=True),
        )
        async with herald(db_url, config) as h:
            before = sample("herald_events_delivered_total", subscription="plain")
            created = await h.send(text="db-1: / at 93%", subject="Disk", metadata={"k": 1})
            await h.run_worker()
            assert await drain(h) == 4

            plain, full = received(sink, "/plain"), received(sink, "/full")
            assert [b["type"] for b in plain] == ["notification.accepted", "notification.delivered"]
            stored = (await h.client.get(f"/v1/events/{plain[0]['id']}")).json()
            del stored["deliveries"]
            assert plain[0] == stored, "what was stored is what was sent"
            assert plain[0]["notification_id"] == created["id"]
            assert "content" not in plain[0]["data"], "no message body without include_content"
            assert full[0]["data"]["content"] == {
                "subject": "Disk",
                "text": "db-1: / at 93%",
                "html": None,
                "severity": "info",
                "source": None,
                "metadata": {"k": 1},
                "recipient": {},
            }
            request = sink.requests_to("/plain")[0]
            assert request.headers["webhook-id"] == plain[0]["id"]
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
            assert request.headers["user-agent"].startswith("Herald/")
            assert request.headers["content-type"] == "application/json"
            assert sample("herald_events_delivered_total", subscription="plain") == before + 2


async def test_a_failing_receiver_is_retried_on_the_schedule_with_the_same_webhook_id(
    db_url: str,
) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        sink.script("/ev", (503, {}, "busy"), (500, {}, "oops"))
        (event,) = await emit(h, accepted(h=h))
        assert await drain(h) == 1
        (state,) = await deliveries(h, event.id)
        assert (state["status"], state["attempts"]) == ("pending", 1)
        assert state["last_error"] == {
            "class": "transient",
            "code": "http_503",
            "message": "HTTP 503 Service Unavailable",
        }
        due = datetime.fromisoformat(state["next_attempt_at"])
        assert abs((due - h.clock()).total_seconds() - 5) < 1, "schedule[0] is 5s, no jitter"
        assert await drain(h) == 0, "not due before the schedule says so"

        h.clock.advance(5.1)
        assert await drain(h) == 1
        h.clock.advance(60.1)
        assert await drain(h) == 1
        (state,) = await deliveries(h, event.id)
        assert (state["status"], state["attempts"], state["last_error"]) == ("delivered", 3, None)
        tries = await attempts(h, event.id)
        assert [(a["attempt"], a["outcome"], a["response_status"]) for a in tries] == [
            (1, "failed", 503),
            (2, "failed", 500),
            (3, "delivered", 200),
        ]
        assert [a["error"] and a["error"]["class"] for a in tries] == ["transient"] * 2 + [None]
        assert tries[0]["response_excerpt"] == "busy"
        bodies = received(sink, "/ev")
        assert {b["id"] for b in bodies} == {str(event.id)}, "one webhook-id across retries"


async def test_a_receiver_out_of_retries_ends_failed(db_url: str) -> None:
    config = events_config(subscription("http://127.0.0.1:9/down", retry={"schedule": ["1s"]}))
    async with herald(db_url, config) as h:
        (event,) = await emit(h, accepted(h=h))
        await drain(h)
        h.clock.advance(1.5)
        await drain(h)
        (state,) = await deliveries(h, event.id)
        assert (state["status"], state["attempts"], state["next_attempt_at"]) == ("failed", 2, None)
        assert state["last_error"]["code"] == "connection_error"
        h.clock.advance(3600)
        assert await drain(h) == 0


async def test_a_slow_receiver_times_out_as_transient(db_url: str) -> None:
    async with serve_http() as sink:
        sink.delay("/slow", 5)
        config = events_config(subscription(sink.url("/slow"), timeout="200ms"))
        async with herald(db_url, config) as h:
            (event,) = await emit(h, accepted(h=h))
            began = time.monotonic()
            await drain(h)
            assert time.monotonic() - began < 2
            (state,) = await deliveries(h, event.id)
            assert (state["status"], state["last_error"]["class"]) == ("pending", "transient")
            assert state["last_error"]["code"] == "timeout"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ((302, {"location": "http://127.0.0.1:1/elsewhere"}, ""), "http_302"),
        ((404, {}, "no such hook"), "http_404"),
        ((410, {}, "gone"), "http_410"),
    ],
)
async def test_redirects_and_refusals_are_permanent(
    db_url: str, answer: tuple[int, dict[str, str], str], code: str
) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        sink.script("/ev", answer)
        (event,) = await emit(h, accepted(h=h))
        await drain(h)
        h.clock.advance(3600)
        assert await drain(h) == 0, "never tried again"
        (state,) = await deliveries(h, event.id)
        assert (state["status"], state["last_error"]["class"]) == ("failed", "permanent")
        assert state["last_error"]["code"] == code
        assert len(sink.received) == 1, "a redirect is never followed"


async def test_429_is_retried_no_sooner_than_retry_after(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        sink.script("/ev", (429, {"retry-after": "120"}, "slow down"))
        (event,) = await emit(h, accepted(h=h))
        await drain(h)
        (state,) = await deliveries(h, event.id)
        assert state["last_error"]["class"] == "rate_limited"
        due = datetime.fromisoformat(state["next_attempt_at"])
        assert (due - h.clock()).total_seconds() > 115


@pytest.mark.parametrize("allowed", [False, True])
async def test_the_outbound_guard_refuses_a_private_receiver_unless_allowed(
    db_url: str, allowed: bool
) -> None:
    async with serve_http() as sink:
        network = {"allowed_networks": ["127.0.0.0/8"]} if allowed else {}
        config = events_config(subscription(sink.url("/ev")), network=network)
        async with herald(db_url, config) as h:
            (event,) = await emit(h, accepted(h=h))
            await drain(h)
            (state,) = await deliveries(h, event.id)
            if allowed:
                assert state["status"] == "delivered"
                assert len(sink.received) == 1
                return
            assert state["status"] == "failed"
            assert (state["last_error"]["class"], state["last_error"]["code"]) == (
                "permanent",
                "blocked_address",
            )
            assert sink.received == [], "nothing reached the private address"


async def test_one_notifications_events_keep_their_order_across_a_receiver_outage(
    db_url: str,
) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        sink.default = (503, {}, "down")
        one, two = accepted(h=h), accepted(h=h)
        failed_try = replace(accepted(one.notification_id, h=h), type=EventType.ATTEMPT_FAILED)
        await emit(h, one, two)
        await emit(h, failed_try)
        await emit(h, delivered(two), delivered(one))
        for _ in range(3):  # down: only the first event of each notification is tried
            await drain(h)
            h.clock.advance(5.1)
        assert {b["id"] for b in received(sink, "/ev")} == {str(one.id), str(two.id)}

        sink.default = (200, {}, "ok")
        h.clock.advance(3600)
        while await drain(h):
            h.clock.advance(1)
        arrived: dict[str, list[str]] = {}
        for payload in received(sink, "/ev"):
            order = arrived.setdefault(payload["notification_id"], [])
            if not order or order[-1] != payload["type"]:  # retries of one event count once
                order.append(payload["type"])
        assert arrived == {
            str(one.notification_id): [
                "notification.accepted",
                "attempt.failed",
                "notification.delivered",
            ],
            str(two.notification_id): ["notification.accepted", "notification.delivered"],
        }
        assert await _unsettled(h) == 0


async def _unsettled(h: Harness) -> int:
    async with h.runtime.sessions() as session:
        stmt = select(func.count()).where(EventDelivery.status.in_(["pending", "delivering"]))
        return int((await session.execute(stmt)).scalar_one())


async def test_an_open_subscription_circuit_holds_its_deliveries_untried(db_url: str) -> None:
    async with serve_http() as sink:
        config = events_config(
            subscription(sink.url("/ev"), circuit={"failures": 2, "cooldown": "30s"})
        )
        async with herald(db_url, config) as h:
            sink.default = (503, {}, "down")
            events = [accepted(h=h) for _ in range(3)]
            await emit(h, *events)
            sender = dispatcher(h)
            assert await sender.run_once() == 3
            assert sender.circuits["ops"].state.value == "open"
            h.clock.advance(5.1)
            assert await sender.run_once() == 0, "open: nothing claimed"
            assert len(sink.received) == 3

            sink.default = (200, {}, "ok")
            h.clock.advance(30)
            assert await sender.run_once() == 3, "half-open: one trial, two handed back"
            assert len(sink.received) == 4
            assert sender.circuits["ops"].state.value == "closed"
            h.clock.advance(1.1)
            assert await sender.run_once() == 2
            states = [(await deliveries(h, e.id))[0] for e in events]
            assert [s["status"] for s in states] == ["delivered"] * 3
            assert sorted(s["attempts"] for s in states) == [2, 2, 2], "untried: not counted"


async def test_a_dispatcher_that_died_mid_send_loses_nothing(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        first = accepted(h=h)
        await emit(h, first, delivered(first))
        dead = dispatcher(h)
        (claimed,) = await dead.claim(10)  # the later event waits for this one
        assert await drain(h) == 0, "held under the dead dispatcher's lease"

        h.clock.advance(dead._lease + 1)
        survivor = dispatcher(h)
        assert await survivor.sweep() == 1
        assert await drain(h) == 2
        late = await dead.send(claimed)
        assert await dead.save([late]) == set(), "the dead one's late try is not saved"  # type: ignore[list-item]
        assert [b["type"] for b in received(sink, "/ev")] == [
            "notification.accepted",
            "notification.delivered",
            "notification.accepted",  # at least once: the late try reached the receiver too
        ]
        assert len(await attempts(h, first.id)) == 1


async def test_events_of_a_change_that_rolled_back_are_never_written(db_url: str) -> None:
    async with herald(db_url, events_config(subscription("https://hooks.example.com/in"))) as h:
        with pytest.raises(RuntimeError):
            async with h.runtime.sessions() as session, session.begin():
                assert await h.runtime.outbox.append(session, [accepted(h=h)])
                raise RuntimeError("the change failed")
        async with h.runtime.sessions() as session:
            assert (await session.execute(select(func.count(EventRecord.id)))).scalar_one() == 0


def circuits_config(sink: HttpServer, cooldown: str) -> dict[str, Any]:
    """``flaky`` (its circuit opens on one failure, for ``cooldown``) then ``console`` on the
    default route, ``locked`` then ``console`` on ``locked``; a subscription to ``channel.*``."""
    return {
        "channels": {
            "flaky": {
                "type": "webhook",
                "url": sink.url("/flaky"),
                "circuit": {"failures": 1, "cooldown": cooldown},
            },
            "locked": {"type": "webhook", "url": sink.url("/locked")},
            "console": {"type": "log"},
        },
        "routes": {
            "default": {"channels": ["flaky", "console"]},
            "locked": {"channels": ["locked", "console"]},
        },
        "events": {"subscriptions": [subscription(sink.url("/ev"), types=["channel.*"])]},
    }


async def test_channel_circuit_changes_arrive_as_events(db_url: str) -> None:
    async with serve_http() as sink:
        config = circuits_config(sink, cooldown="200ms")
        sink.script("/flaky", (500, {}, "down"))
        sink.script("/locked", (401, {}, "bad token"))
        async with herald(db_url, config) as h:
            await h.send(text="x")
            await h.run_worker()  # flaky fails once: its circuit opens
            await asyncio.sleep(0.25)
            await h.send(text="y")
            await h.run_worker()  # the trial delivers: closed
            await h.send(text="z", route="locked")
            await h.run_worker()  # 401: quarantined
            assert await drain(h) == 3
            bodies = received(sink, "/ev")
            assert [(b["type"], b["data"]["channel"]) for b in bodies] == [
                ("channel.circuit_opened", "flaky"),
                ("channel.circuit_closed", "flaky"),
                ("channel.quarantined", "locked"),
            ]
            assert bodies[0]["notification_id"] is None and bodies[0]["owner"] is None
            assert bodies[0]["data"]["channel_type"] == "webhook"
            assert bodies[0]["data"]["reason"] == "1 consecutive transient failures, last http_500"
            assert bodies[2]["data"]["reason"] == "http_401: HTTP 401 Unauthorized"
            assert h.runtime.circuit_changes is not None and len(h.runtime.circuit_changes) == 0


async def test_a_circuit_change_whose_round_was_not_saved_goes_with_the_next_save(
    db_url: str,
) -> None:
    """A channel's circuit events are written by the save of a round, not by a transaction
    of their own: when that save does not happen (its lease was lost), they are queued again
    and the next round that saves writes them."""
    async with serve_http() as sink:
        config = circuits_config(sink, cooldown="1h")
        sink.script("/flaky", (500, {}, "down"))
        async with herald(db_url, config) as h:
            changes = h.runtime.circuit_changes
            assert changes is not None
            lost = await h.send(text="x")
            (claimed,) = await h.worker.claim(10)
            await h.set_fields(lost["id"], claimed_by="another-worker")
            await h.worker.deliver(claimed)  # flaky fails: its circuit opens; not saved
            assert len(changes) == 1, "queued again"
            assert await drain(h) == 0
            await h.send(text="y")
            await h.run_worker()  # flaky skipped (open), console delivers: this save writes it
            assert len(changes) == 0
            assert await drain(h) == 1
            assert [b["type"] for b in received(sink, "/ev")] == ["channel.circuit_opened"]


async def test_no_subscription_to_channel_events_queues_nothing(db_url: str) -> None:
    config = events_config(subscription("https://hooks.example.com/in", types=["notification.*"]))
    async with herald(db_url, config) as h:
        assert h.runtime.circuit_changes is None
    async with herald(db_url, events_config()) as h:
        assert h.runtime.circuit_changes is None
        assert await dispatcher(h).run(asyncio.Event()) is None, "no subscription: no loop"


async def test_the_loop_runs_beside_the_worker_and_a_stuck_receiver_delays_no_delivery(
    db_url: str,
) -> None:
    async with serve_http() as sink:
        sink.delay("/stuck", 30)
        stuck = subscription(sink.url("/stuck"), "stuck", timeout="20s", routes=["other"])
        # A short shutdown grace: the four sends still stuck are cut short and handed back.
        async with herald(db_url, events_config(stuck), shutdown_timeout=1.0) as h:
            await emit(h, *(accepted(h=h, route="other") for _ in range(20)))
            stop = asyncio.Event()
            loop = asyncio.create_task(dispatcher(h, concurrency=4).run(stop))
            try:
                began = time.monotonic()
                while len(sink.received) < 4:
                    assert time.monotonic() - began < 5, "the dispatcher sent nothing"
                    await asyncio.sleep(0.01)
                async with running_worker(h):
                    began = time.monotonic()
                    created = await h.send(text="x")
                    while (await h.get(created["id"]))["status"] != "delivered":
                        assert time.monotonic() - began < 2, "the events loop held up delivery"
                        await asyncio.sleep(0.01)
            finally:
                stop.set()
                await asyncio.wait_for(loop, 25)
            assert len(sink.received) == 4, "four in flight, nothing more claimed"
            assert await _unsettled(h) == 20, "the ones cut short were handed back, untried"
            assert sample("herald_events_pending", subscription="stuck") == 20


async def test_dispatchers_side_by_side_send_each_event_once(db_url: str) -> None:
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        events = [accepted(h=h) for _ in range(30)]
        await emit(h, *events)
        one, two = dispatcher(h, concurrency=4), dispatcher(h, concurrency=4)

        async def work(sender: Any) -> int:
            total = 0
            while claimed := await sender.run_once():
                total += claimed
            return total

        counts = await asyncio.gather(work(one), work(two))
        assert sum(counts) == 30
        assert sorted(b["id"] for b in received(sink, "/ev")) == sorted(str(e.id) for e in events)
        assert await _unsettled(h) == 0


async def test_a_crashed_dispatcher_loop_is_restarted_and_counted(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The branch no real part reaches (a bug of ours) made to happen: the loop's claim raises
    once; the supervisor logs it once, counts it and restarts the loop, which goes on."""
    async with (
        serve_http() as sink,
        herald(db_url, events_config(subscription(sink.url("/ev")))) as h,
    ):
        sender = dispatcher(h)
        claim = sender.claim
        failures = [RuntimeError("a bug in the claim")]

        async def flaky_claim(limit: int) -> Any:
            if failures:
                raise failures.pop()
            return await claim(limit)

        monkeypatch.setattr(sender, "claim", flaky_claim)
        before = sample("herald_task_restarts_total", task="events")
        (event,) = await emit(h, accepted(h=h))
        stop = asyncio.Event()
        loop = asyncio.create_task(sender.run(stop))
        try:
            began = time.monotonic()
            while not sink.received:
                assert time.monotonic() - began < 10, "the loop did not come back"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
        assert sample("herald_task_restarts_total", task="events") == before + 1
        assert [r.message for r in caplog.records if "events task crashed" in r.message] == [
            "events task crashed: a bug in the claim; restarting in 1s"
        ]
        assert (await deliveries(h, event.id))[0]["status"] == "delivered"
