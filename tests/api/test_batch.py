"""POST /v1/notifications/batch: one transaction, a result per item."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.store.models import IdempotencyKey, Notification
from app.store.repositories import IDEMPOTENCY_RETENTION
from tests.api.conftest import assert_problem, error_locs, metric_value, scrape
from tests.api.test_auth import BACKEND, SENDER, auth_config, bearer
from tests.support.harness import Harness, herald

URL = "/v1/notifications/batch"
CONFIG: dict[str, Any] = {
    "channels": {"console": {"type": "log"}, "hook": {"type": "webhook"}},
    "routes": {"default": {"channels": ["console"]}, "hooks": {"channels": ["hook"]}},
}


async def test_every_valid_item_is_accepted_and_delivered(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        items = [{"text": f"n{i}", "source": "batch"} for i in range(3)]
        response = await h.client.post(URL, json={"items": items})
        assert response.status_code == 207, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (3, 0)
        assert [item["index"] for item in body["items"]] == [0, 1, 2]
        assert all(item["status"] == 202 and item["error"] is None for item in body["items"])
        for item in body["items"]:
            assert item["location"] == f"/v1/notifications/{item['id']}"
        assert await h.run_worker() == 3
        for item in body["items"]:
            assert (await h.get(item["id"]))["status"] == "delivered"


async def test_a_bad_item_costs_only_its_own_place(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        items = [
            {"text": "good"},
            {"subject": "no body"},
            {"route": "nowhere", "text": "x"},
            {"route": "hooks", "text": "x", "recipient": {"webhook_url": "http://10.0.0.1/x"}},
            {"text": "also good", "colour": "red"},
            {"text": "good too"},
        ]
        response = await h.client.post(URL, json={"items": items})
        assert response.status_code == 207
        body = response.json()
        statuses = [item["status"] for item in body["items"]]
        assert statuses == [202, 422, 422, 422, 422, 202]
        assert (body["accepted"], body["rejected"]) == (2, 4)
        locs = [item["error"]["errors"][0]["loc"] for item in body["items"] if item["error"]]
        assert locs == [
            ["body", "items", 1],
            ["body", "items", 2, "route"],
            ["body", "items", 3, "recipient", "webhook_url"],
            ["body", "items", 4, "colour"],
        ]
        assert body["items"][2]["error"]["detail"] == "unknown route: 'nowhere'"
        listed = (await h.client.get("/v1/notifications")).json()["items"]
        assert sorted(n["id"] for n in listed) == sorted(
            item["id"] for item in body["items"] if item["status"] == 202
        )


@pytest.mark.parametrize("count", [0, 501])
async def test_batch_size_is_bounded(db_url: str, count: int) -> None:
    async with herald(db_url, CONFIG) as h:
        response = await h.client.post(URL, json={"items": [{"text": "x"}] * count})
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert (await h.client.get("/v1/notifications")).json()["items"] == []


async def test_500_items_in_one_request(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        response = await h.client.post(URL, json={"items": [{"text": f"n{i}"} for i in range(500)]})
        assert response.status_code == 207
        assert response.json()["accepted"] == 500
        page = await h.client.get("/v1/notifications", params={"limit": 200})
        assert len(page.json()["items"]) == 200
        assert page.json()["next_cursor"] is not None


# -- Idempotency-Key ----------------------------------------------------------------------------

ITEMS: list[dict[str, Any]] = [
    {"text": "one", "metadata": {"a": 1, "b": [1, 2]}},
    {"route": "nowhere", "text": "refused"},
    {"text": "two", "severity": "warning"},
]


async def stored(h: Harness) -> tuple[int, int]:
    """How many notifications and idempotency keys the database holds."""
    async with h.runtime.sessions() as session:
        notifications = await session.scalar(select(func.count()).select_from(Notification))
        keys = await session.scalar(select(func.count()).select_from(IdempotencyKey))
    return notifications or 0, keys or 0


async def received(h: Harness) -> float:
    value = metric_value(await scrape(h), "herald_notifications_received_total", route="default")
    return value or 0.0


async def post_batch(
    h: Harness, items: list[dict[str, Any]], key: str, **headers: str
) -> httpx.Response:
    return await h.client.post(
        URL, json={"items": items}, headers={"Idempotency-Key": key, **headers}
    )


async def test_a_retried_batch_answers_its_first_answer_and_stores_nothing_new(
    db_url: str,
) -> None:
    async with herald(db_url, CONFIG) as h:
        first = await post_batch(h, ITEMS, "batch-1")
        assert first.status_code == 207, first.text
        assert "idempotent-replayed" not in first.headers
        assert [item["status"] for item in first.json()["items"]] == [202, 422, 202]
        assert await stored(h) == (2, 1)
        assert await h.run_worker() == 2  # delivered since: the replay still says 202, same ids

        # The same body, keys reordered and spaced differently.
        reordered = b'{"items": [{"metadata": {"b": [1, 2], "a": 1}, "text": "one"},\n'
        reordered += (
            b' {"text": "refused", "route": "nowhere"}, {"severity": "warning", "text": "two"}]}'
        )
        headers = {"Idempotency-Key": "batch-1", "content-type": "application/json"}
        for again in (
            await post_batch(h, ITEMS, "batch-1"),
            await h.client.post(URL, content=reordered, headers=headers),
        ):
            assert again.status_code == 207, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == first.content
        assert await stored(h) == (2, 1)


async def test_a_batch_with_every_item_refused_is_replayed_too(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        items = [{"route": "nowhere", "text": "x"}, {"subject": "no body"}]
        first = await post_batch(h, items, "all-bad")
        again = await post_batch(h, items, "all-bad")
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert first.json()["accepted"] == 0
        assert await stored(h) == (0, 1)


async def test_the_same_key_with_another_batch_is_422(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        await post_batch(h, ITEMS, "batch-2")
        changed = [*ITEMS[:2], {**ITEMS[2], "severity": "error"}]
        for items in (changed, ITEMS[:2], [*ITEMS, {"text": "more"}]):
            response = await post_batch(h, items, "batch-2")
            problem = assert_problem(response, 422, slug="idempotency-mismatch")
            assert "Idempotency-Key" in problem["detail"]
            assert "idempotent-replayed" not in response.headers
        assert await stored(h) == (2, 1)


async def test_a_single_post_key_and_a_batch_key_are_not_interchangeable(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        single = await h.client.post(
            "/v1/notifications", json={"text": "x"}, headers={"Idempotency-Key": "single"}
        )
        assert single.status_code == 202, single.text
        assert_problem(
            await post_batch(h, [{"text": "x"}], "single"), 422, slug="idempotency-mismatch"
        )

        batch = await post_batch(h, [{"text": "x"}], "batch")
        assert batch.status_code == 207, batch.text
        response = await h.client.post(
            "/v1/notifications", json={"text": "x"}, headers={"Idempotency-Key": "batch"}
        )
        assert_problem(response, 422, slug="idempotency-mismatch")
        assert await stored(h) == (2, 2)


async def test_batch_keys_are_scoped_to_the_api_key(db_url: str) -> None:
    async with herald(db_url, auth_config()) as h:
        sender = await post_batch(h, ITEMS, "shared", **bearer(SENDER))
        backend = await post_batch(h, ITEMS, "shared", **bearer(BACKEND))
        assert (sender.status_code, backend.status_code) == (207, 207)
        assert "idempotent-replayed" not in backend.headers
        sender_ids = {item["id"] for item in sender.json()["items"]} - {None}
        backend_ids = {item["id"] for item in backend.json()["items"]} - {None}
        assert len(sender_ids) == len(backend_ids) == 2
        assert not sender_ids & backend_ids
        again = await post_batch(h, ITEMS, "shared", **bearer(BACKEND))
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == backend.json()
        assert await stored(h) == (4, 2)


async def test_concurrent_batches_with_one_key_store_once(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        before = metric_value(
            await scrape(h), "herald_notifications_received_total", route="default"
        )
        responses = await asyncio.gather(*(post_batch(h, ITEMS, "raced") for _ in range(20)))
        assert [r.status_code for r in responses] == [207] * 20, [r.text for r in responses]
        replayed = [r.headers.get("idempotent-replayed") for r in responses]
        assert sorted(replayed, key=str) == [None] + ["true"] * 19
        assert len({r.content for r in responses}) == 1
        assert await stored(h) == (2, 1)
        after = metric_value(
            await scrape(h), "herald_notifications_received_total", route="default"
        )
        assert after == (before or 0) + 2


async def test_a_batch_key_is_forgotten_after_24_hours(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        first = await post_batch(h, ITEMS, "daily")
        h.clock.advance(IDEMPOTENCY_RETENTION.total_seconds() - 60)
        await h.worker.sweep()
        assert await stored(h) == (2, 1), "kept for 24 hours"
        h.clock.advance(120)
        h.worker._last_purge = float("-inf")  # the purge runs every 10 minutes at most
        await h.worker.sweep()
        assert await stored(h) == (2, 0)
        again = await post_batch(h, ITEMS, "daily")
        assert "idempotent-replayed" not in again.headers
        assert again.json()["items"][0]["id"] != first.json()["items"][0]["id"]


async def test_an_idempotency_key_over_255_characters_is_422(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        problem = assert_problem(await post_batch(h, ITEMS, "k" * 256), 422)
        assert error_locs(problem) == [["header", "Idempotency-Key"]]
        assert await stored(h) == (0, 0)
