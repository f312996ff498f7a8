"""POST /v1/notifications/batch: one transaction, a result per item."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import herald

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
