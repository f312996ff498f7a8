"""Dedup windows and digests on SQLite and PostgreSQL: repeats of a dedup_key are dropped or
collapsed into one delivery (concurrent ones too, and never across API keys), and a digest
window sends a recipient's notifications as one message whose send every one of them records."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.config import ConfigError
from app.delivery.orchestrator import utcnow
from app.store.models import DedupWindow
from tests.support.events import drain, events_config, received, subscription
from tests.support.harness import Harness, config_from, herald
from tests.support.http_server import HttpServer, serve_http

ALPHA = "sk-alpha-0123456789abcdef0123456789abcdef"
BETA = "sk-beta-0123456789abcdef0123456789abcdef0"


def noise_config(sink: HttpServer, *, mode: str = "drop", max_items: int = 50) -> dict[str, Any]:
    """``alerts`` dedupes over 10 minutes in ``mode``; ``digests`` holds for an hour."""
    hook = {"type": "webhook", "url": sink.url("/hook"), "timeout": "2s"}
    return {
        "channels": {"hook": hook},
        "routes": {
            "default": {"channels": ["hook"]},
            "alerts": {"channels": ["hook"], "dedup": {"window": "10m", "mode": mode}},
            "digests": {
                "channels": ["hook"],
                "digest": {"window": "1h", "max_items": max_items},
            },
        },
    }


async def post(
    h: Harness, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return await h.client.post("/v1/notifications", json=body, headers=headers or {})


def deduplicated(response: httpx.Response) -> bool:
    return response.headers.get("Herald-Deduplicated") == "true"


async def test_drop_mode_delivers_once_and_answers_49_repeats_with_the_first(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink)) as h:
        answers = [
            await post(
                h, {"route": "alerts", "text": f"disk at {90 + i % 10}%", "dedup_key": "disk"}
            )
            for i in range(50)
        ]
        first, repeats = answers[0], answers[1:]
        assert first.status_code == 202 and not deduplicated(first), first.text
        assert [r.status_code for r in repeats] == [200] * 49
        assert all(deduplicated(r) for r in repeats)
        assert {r.json()["id"] for r in answers} == {first.json()["id"]}
        assert repeats[-1].json()["text"] == "disk at 90%", "dropped: the first's body stays"
        assert repeats[-1].headers["Location"] == f"/v1/notifications/{first.json()['id']}"

        await h.run_worker()
        assert len(sink.requests_to("/hook")) == 1
        shown = await h.get(first.json()["id"])
        assert (shown["status"], shown["occurrences"], shown["dedup_key"]) == (
            "delivered",
            1,
            "disk",
        )
        listed = await h.client.get("/v1/notifications", params={"route": "alerts"})
        assert len(listed.json()["items"]) == 1, "nothing stored for the repeats"

        # Still inside the window, a delivered notification still answers in drop mode.
        again = await post(h, {"route": "alerts", "text": "disk", "dedup_key": "disk"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


async def test_collapse_mode_delivers_once_saying_times_50(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink, mode="collapse")) as h:
        answers = [
            await post(
                h,
                {"route": "alerts", "subject": "Disk", "text": f"at {i}%", "dedup_key": "d"},
            )
            for i in range(50)
        ]
        assert answers[0].status_code == 202
        assert all(r.status_code == 200 and deduplicated(r) for r in answers[1:])
        assert [r.json()["occurrences"] for r in answers] == list(range(1, 51))
        notification_id = answers[0].json()["id"]
        pending = await h.get(notification_id)
        assert (pending["status"], pending["occurrences"], pending["text"]) == (
            "pending",
            50,
            "at 49%",
        )

        await h.run_worker()
        sent = sink.requests_to("/hook")
        assert len(sent) == 1
        data = sent[0].json()["data"]
        assert (data["subject"], data["text"]) == (
            "Disk (\N{MULTIPLICATION SIGN}50)",
            "at 49% (\N{MULTIPLICATION SIGN}50)",
        )
        done = await h.get(notification_id)
        assert (done["status"], done["occurrences"]) == ("delivered", 50)

        # Once delivered, a repeat makes a new notification (and opens a new window).
        after = await post(h, {"route": "alerts", "text": "at 50%", "dedup_key": "d"})
        assert after.status_code == 202 and after.json()["id"] != notification_id
        assert after.json()["occurrences"] == 1
        repeat = await post(h, {"route": "alerts", "text": "at 51%", "dedup_key": "d"})
        assert repeat.status_code == 200 and repeat.json()["id"] == after.json()["id"]


@pytest.mark.parametrize("mode", ["drop", "collapse"])
async def test_concurrent_repeats_still_dedupe(db_url: str, mode: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink, mode=mode)) as h:
        answers = await asyncio.gather(
            *(
                post(h, {"route": "alerts", "text": f"n{i}", "dedup_key": "burst"})
                for i in range(20)
            )
        )
        assert sorted(r.status_code for r in answers) == [200] * 19 + [202], [
            r.text for r in answers if r.status_code not in (200, 202)
        ]
        ids = {r.json()["id"] for r in answers}
        assert len(ids) == 1
        shown = await h.get(ids.pop())
        assert shown["occurrences"] == (20 if mode == "collapse" else 1)
        await h.run_worker()
        assert len(sink.requests_to("/hook")) == 1


async def test_a_key_is_per_api_key(db_url: str) -> None:
    async with serve_http() as sink:
        raw = noise_config(sink)
        raw["auth"] = {
            "api_keys": [
                {"name": "alpha", "key": ALPHA, "scopes": ["send", "read"]},
                {"name": "beta", "key": BETA, "scopes": ["send", "read"]},
            ]
        }
        async with herald(db_url, raw) as h:
            body = {"route": "alerts", "text": "x", "dedup_key": "shared"}
            alpha = {"Authorization": f"Bearer {ALPHA}"}
            beta = {"Authorization": f"Bearer {BETA}"}
            a1, b1 = await post(h, body, alpha), await post(h, body, beta)
            assert (a1.status_code, b1.status_code) == (202, 202)
            assert a1.json()["id"] != b1.json()["id"]
            a2, b2 = await post(h, body, alpha), await post(h, body, beta)
            assert (a2.status_code, b2.status_code) == (200, 200)
            assert (a2.json()["id"], b2.json()["id"]) == (a1.json()["id"], b1.json()["id"])
            await h.run_worker()
            assert len(sink.requests_to("/hook")) == 2


async def test_a_closed_window_makes_a_new_notification(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink)) as h:
        body = {"route": "alerts", "text": "x", "dedup_key": "k"}
        first = await post(h, body)
        assert (await post(h, body)).status_code == 200
        async with h.runtime.sessions() as session, session.begin():
            await session.execute(
                update(DedupWindow).values(closes_at=utcnow() - timedelta(seconds=1))
            )
        later = await post(h, body)
        assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
        repeat = await post(h, body)
        assert repeat.status_code == 200 and repeat.json()["id"] == later.json()["id"]

        # The worker's sweep deletes windows an hour after they closed.
        await post(h, {**body, "dedup_key": "other"})
        async with h.runtime.sessions() as session, session.begin():
            await session.execute(
                update(DedupWindow)
                .where(DedupWindow.key == "other")
                .values(closes_at=utcnow() - timedelta(hours=1, seconds=1))
            )
        await h.worker.sweep()
        async with h.runtime.sessions() as session:
            keys = (await session.execute(select(DedupWindow.key))).scalars().all()
        assert keys == ["k"]


async def test_a_dedup_key_needs_a_route_with_a_window(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink)) as h:
        refused = await post(h, {"text": "x", "dedup_key": "k"})
        assert refused.status_code == 422
        problem = refused.json()
        assert problem["errors"][0]["loc"] == ["body", "dedup_key"]
        assert "route default has no dedup window" in problem["detail"]
        too_long = await post(h, {"route": "alerts", "text": "x", "dedup_key": "k" * 256})
        assert too_long.status_code == 422
        batch = await h.client.post(
            "/v1/notifications/batch",
            json={"items": [{"route": "alerts", "text": "x", "dedup_key": "k"}]},
        )
        assert batch.status_code == 207
        assert batch.json()["items"][0]["status"] == 422


async def test_a_digest_window_sends_20_notifications_as_one_message(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink)) as h:
        ids = [
            (await h.send(route="digests", subject=f"job {i}", text=f"job {i} finished"))["id"]
            for i in range(20)
        ]
        held = await h.get(ids[0])
        assert held["status"] == "pending"
        wait = datetime.fromisoformat(held["next_attempt_at"]) - datetime.fromisoformat(
            held["created_at"]
        )
        assert wait == timedelta(hours=1)
        assert await h.run_worker() == 0, "held until the window closes"

        h.clock.advance(3600 + 1)
        await h.run_worker()
        sent = sink.requests_to("/hook")
        assert len(sent) == 1
        data = sent[0].json()["data"]
        assert data["subject"] == "20 notifications (digests)"
        lines = data["text"].splitlines()
        assert lines == [f"- job {i}: job {i} finished" for i in range(20)]
        digest = data["metadata"]["herald:digest"]
        assert (digest["count"], digest["notifications"]) == (20, ids)

        digest_ids = set()
        for notification_id in ids:
            shown = await h.get(notification_id)
            assert (shown["status"], shown["delivered_via"]) == ("delivered", "hook")
            (attempt,) = await h.attempts(notification_id)
            assert attempt["outcome"] == "delivered"
            assert attempt["notification_id"] == notification_id
            digest_ids.add(attempt["digest_id"])
        assert digest_ids == {digest["id"]}
        assert uuid.UUID(digest["id"]).version == 7


async def test_a_full_digest_goes_at_once_and_a_lone_one_as_itself(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink, max_items=5)) as h:
        ids = [(await h.send(route="digests", text=f"n{i}"))["id"] for i in range(7)]
        await h.run_worker()  # five filled the group: sent now, without moving the clock
        sent = sink.requests_to("/hook")
        assert len(sent) == 1
        assert sent[0].json()["data"]["metadata"]["herald:digest"]["notifications"] == ids[:5]
        assert [(await h.get(i))["status"] for i in ids] == ["delivered"] * 5 + ["pending"] * 2

        h.clock.advance(3600 + 1)
        await h.run_worker()
        sent = sink.requests_to("/hook")
        assert len(sent) == 2
        assert sent[1].json()["data"]["metadata"]["herald:digest"]["count"] == 2

        lone = await h.send(route="digests", recipient={"email": "x@example.com"}, text="one")
        h.clock.advance(3600 + 1)
        await h.run_worker()
        last = sink.requests_to("/hook")[-1].json()["data"]
        assert (last["id"], last["text"]) == (lone["id"], "one"), "a group of one is itself"
        (attempt,) = await h.attempts(lone["id"])
        assert attempt["digest_id"] is None


def test_a_digest_does_not_combine_with_escalation() -> None:
    raw = {
        "channels": {"console": {"type": "log"}},
        "routes": {
            "paged": {
                "channels": [{"channel": "console", "ack_within": "5m"}],
                "strategy": "escalate",
                "digest": {"window": "1h"},
            }
        },
    }
    with pytest.raises(ConfigError, match="digest does not combine"):
        config_from(raw)


async def test_a_failed_digest_is_retried_as_one_for_every_notification_in_it(
    db_url: str,
) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink)) as h:
        sink.script("/hook", (503, {}, "busy"))
        ids = [(await h.send(route="digests", text=f"n{i}"))["id"] for i in range(3)]
        h.clock.advance(3600 + 1)
        await h.run_worker()
        assert len(sink.requests_to("/hook")) == 1
        failed = [(await h.attempts(i))[0] for i in ids]
        assert {a["outcome"] for a in failed} == {"failed"}
        assert len({a["digest_id"] for a in failed}) == 1
        waiting = [await h.get(i) for i in ids]
        assert {n["status"] for n in waiting} == {"pending"}
        assert len({n["next_attempt_at"] for n in waiting}) == 1, "retried together"

        await h.advance_to_next_round(ids[0])
        await h.run_worker()
        sent = sink.requests_to("/hook")
        assert len(sent) == 2
        assert sent[1].json()["data"]["metadata"]["herald:digest"]["count"] == 3
        for notification_id in ids:
            shown = await h.get(notification_id)
            assert (shown["status"], shown["round"], shown["attempt_count"]) == (
                "delivered",
                2,
                2,
            )


async def test_an_idempotency_key_with_a_dedup_key_replays_what_it_answered(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, noise_config(sink, mode="collapse")) as h:
        body = {"route": "alerts", "text": "x", "dedup_key": "k"}
        first = await post(h, body, {"Idempotency-Key": "one"})
        repeat = await post(h, {**body, "text": "y"}, {"Idempotency-Key": "two"})
        assert (first.status_code, repeat.status_code) == (202, 200)
        replay = await post(h, {**body, "text": "y"}, {"Idempotency-Key": "two"})
        assert replay.status_code == 200
        assert replay.headers.get("Idempotent-Replayed") == "true" and not deduplicated(replay)
        assert replay.json()["id"] == first.json()["id"]
        assert replay.json()["occurrences"] == 2, "a replay is not counted again"
        mismatch = await post(h, {**body, "text": "z"}, {"Idempotency-Key": "two"})
        assert mismatch.status_code == 422


async def test_a_new_notification_of_a_key_has_its_events_and_a_repeat_none(db_url: str) -> None:
    async with serve_http() as sink:
        config = events_config(
            subscription(sink.url("/events"), types=["notification.*"]),
            routes={"default": {"channels": ["console"], "dedup": {"window": "10m"}}},
        )
        async with herald(db_url, config) as h:
            first = await h.send(text="x", dedup_key="k")
            await h.send(expect=200, text="y", dedup_key="k")
            await h.run_worker()
            await drain(h)
            types = [(body["type"], body["notification_id"]) for body in received(sink, "/events")]
            assert types == [
                ("notification.accepted", first["id"]),
                ("notification.delivered", first["id"]),
            ]


async def test_a_collapsed_templated_notification_takes_the_latest_render(db_url: str) -> None:
    """Collapse keeps the latest request's content: with a template, what it rendered (its
    text and its per-channel-type overrides), not the first's."""
    async with serve_http() as sink:
        config = noise_config(sink, mode="collapse")
        config["templates"] = {
            "disk": {"text": "disk at {{ pct }}%", "overrides": {"webhook": {"text": "{{ pct }}"}}}
        }
        async with herald(db_url, config) as h:
            for pct in (91, 97):
                body = {"route": "alerts", "template": "disk", "data": {"pct": pct}}
                answer = await post(h, {**body, "dedup_key": "disk"})
            shown = answer.json()
            assert (shown["occurrences"], shown["text"]) == (2, "disk at 97%")
            assert (shown["template"], shown["rendered"]) == ("disk", {"webhook": {"text": "97"}})
            await h.run_worker()
            [sent] = sink.requests_to("/hook")
            assert sent.json()["data"]["text"] == "97 (\N{MULTIPLICATION SIGN}2)"
