"""``Idempotency-Key`` on ``POST /v1/notifications``: replays, mismatches, races."""

from __future__ import annotations

import asyncio

from tests.api.conftest import assert_problem, error_locs, list_ids, metric_value, scrape
from tests.support.harness import Harness

URL = "/v1/notifications"


async def test_same_key_same_body_replays_the_original(h: Harness) -> None:
    body = {"route": "alerts", "text": "once", "metadata": {"a": 1}}
    first = await h.client.post(URL, json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers

    again = await h.client.post(URL, json=body, headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert await list_ids(h) == [first.json()["id"]]


async def test_same_key_different_body_is_422(h: Harness) -> None:
    first = await h.send(route="alerts", text="one", headers={"Idempotency-Key": "k"})
    response = await h.client.post(
        URL, json={"route": "alerts", "text": "two"}, headers={"Idempotency-Key": "k"}
    )
    problem = assert_problem(response, 422, slug="idempotency-mismatch")
    assert problem["type"].endswith("idempotency-mismatch")
    assert "Idempotency-Key" in problem["detail"]
    assert await list_ids(h) == [first["id"]]


async def test_a_key_of_255_characters_is_fine_256_is_422(h: Harness) -> None:
    await h.send(route="alerts", text="x", headers={"Idempotency-Key": "k" * 255})
    response = await h.client.post(
        URL, json={"route": "alerts", "text": "x"}, headers={"Idempotency-Key": "k" * 256}
    )
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["header", "Idempotency-Key"]]
    assert len(await list_ids(h)) == 1


async def test_different_keys_make_different_notifications(h: Harness) -> None:
    one = await h.send(route="alerts", text="x", headers={"Idempotency-Key": "a"})
    two = await h.send(route="alerts", text="x", headers={"Idempotency-Key": "b"})
    three = await h.send(route="alerts", text="x")
    assert len({one["id"], two["id"], three["id"]}) == 3
    assert sorted(await list_ids(h)) == sorted([one["id"], two["id"], three["id"]])


async def test_no_key_means_no_deduplication(h: Harness) -> None:
    one = await h.send(route="alerts", text="x")
    two = await h.send(route="alerts", text="x")
    assert one["id"] != two["id"]


async def test_key_order_and_whitespace_do_not_change_the_body(h: Harness) -> None:
    compact = b'{"route":"alerts","text":"same","metadata":{"a":1,"b":[1,2]}}'
    spaced = b'{\n  "metadata": { "b": [1, 2],  "a": 1 },\n  "text": "same",\n "route": "alerts"\n}'
    headers = {"Idempotency-Key": "fmt", "content-type": "application/json"}
    first = await h.client.post(URL, content=compact, headers=headers)
    assert first.status_code == 202, first.text
    again = await h.client.post(URL, content=spaced, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(await list_ids(h)) == 1


async def test_a_mismatch_in_a_nested_value_is_detected(h: Harness) -> None:
    headers = {"Idempotency-Key": "nested"}
    await h.send(route="alerts", text="x", metadata={"a": {"b": 1}}, headers=headers)
    response = await h.client.post(
        URL, json={"route": "alerts", "text": "x", "metadata": {"a": {"b": 2}}}, headers=headers
    )
    assert_problem(response, 422, slug="idempotency-mismatch")


async def test_concurrent_requests_with_one_key_make_one_notification(h: Harness) -> None:
    received_before = metric_value(
        await scrape(h), "herald_notifications_received_total", route="alerts"
    )
    body = {"route": "alerts", "text": "raced"}
    responses = await asyncio.gather(
        *(h.client.post(URL, json=body, headers={"Idempotency-Key": "race"}) for _ in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    for response in responses:
        replayed = response.headers.get("idempotent-replayed")
        assert replayed == ("true" if response.status_code == 200 else None)
    assert await list_ids(h) == [responses[0].json()["id"]]
    received_after = metric_value(
        await scrape(h), "herald_notifications_received_total", route="alerts"
    )
    assert received_after == (received_before or 0) + 1
