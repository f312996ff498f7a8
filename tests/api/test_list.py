"""``GET /v1/notifications``: order, filters, limits and cursor paging."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.api.conftest import assert_problem, error_locs, list_ids
from tests.support.harness import Harness, herald

URL = "/v1/notifications"


async def walk(h: Harness, limit: int, **params: Any) -> list[list[str]]:
    """Every page's ids, following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        response = await h.client.get(URL, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "paging does not end"


async def test_newest_first_without_bodies(h: Harness) -> None:
    ids = [(await h.send(route="alerts", text=f"t{i}", html="<p>h</p>"))["id"] for i in range(4)]
    response = await h.client.get(URL)
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == ids[::-1]
    for item in page["items"]:
        assert "text" not in item
        assert "html" not in item
        assert "rendered" not in item
    detail = await h.get(ids[0])
    expected = {k: v for k, v in detail.items() if k not in ("text", "html", "rendered")}
    assert page["items"][-1] == expected


async def test_empty_list(h: Harness) -> None:
    response = await h.client.get(URL)
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_filter_by_status(h: Harness) -> None:
    delivered = await h.send(route="alerts", text="x")
    await h.run_worker()
    pending = await h.send(route="alerts", text="x")
    cancelled = await h.send(route="alerts", text="x")
    response = await h.client.post(f"{URL}/{cancelled['id']}/cancel")
    assert response.status_code == 200
    assert await list_ids(h, status="delivered") == [delivered["id"]]
    assert await list_ids(h, status="pending") == [pending["id"]]
    assert await list_ids(h, status="cancelled") == [cancelled["id"]]
    assert await list_ids(h, status="failed") == []
    problem = assert_problem(await h.client.get(URL, params={"status": "done"}), 422)
    assert error_locs(problem) == [["query", "status"]]


async def test_filter_by_route(h: Harness) -> None:
    alerts = await h.send(route="alerts", text="x")
    default = await h.send(text="x")
    inline = await h.send(channels=["console"], text="x")
    assert await list_ids(h, route="alerts") == [alerts["id"]]
    assert await list_ids(h, route="default") == [default["id"]]
    assert await list_ids(h, route="nope") == []
    assert await list_ids(h) == [inline["id"], default["id"], alerts["id"]]


async def test_filter_by_channel_anywhere_in_the_chain(h: Harness) -> None:
    default = await h.send(text="x")  # hooks, console
    broadcast = await h.send(route="broadcast", text="x")  # console, backup
    inline = await h.send(channels=["backup"], text="x")
    assert await list_ids(h, channel="console") == [broadcast["id"], default["id"]]
    assert await list_ids(h, channel="backup") == [inline["id"], broadcast["id"]]
    assert await list_ids(h, channel="hooks") == [default["id"]]
    assert await list_ids(h, channel="back") == []  # a prefix is not a channel
    assert await list_ids(h, channel="console,backup") == []


async def test_channel_filter_treats_like_wildcards_literally(db_url: str) -> None:
    config = {
        "channels": {name: {"type": "log"} for name in ("a_b", "axb", "a", "ab", "x")},
        "routes": {"default": {"channels": ["x"]}},
    }
    async with herald(db_url, config) as h:
        underscore = await h.send(channels=["a_b"], text="x")
        letter = await h.send(channels=["axb"], text="x")
        single = await h.send(channels=["a"], text="x")
        await h.send(channels=["ab"], text="x")
        assert await list_ids(h, channel="a_b") == [underscore["id"]]
        assert await list_ids(h, channel="axb") == [letter["id"]]
        assert await list_ids(h, channel="a") == [single["id"]]
        for pattern in ("_", "%", "a%", "%b", "a%b", "a\\_b", "a\\"):
            assert await list_ids(h, channel=pattern) == [], pattern


async def test_filter_by_creation_time(h: Harness) -> None:
    ids = [(await h.send(route="alerts", text=f"{day}"))["id"] for day in (1, 2, 3)]
    for day, notification_id in zip((1, 2, 3), ids, strict=True):
        await h.set_fields(notification_id, created_at=datetime(2026, 1, day, 12, tzinfo=UTC))
    jan_2 = "2026-01-02T00:00:00Z"
    jan_3 = "2026-01-03T00:00:00Z"
    assert await list_ids(h, created_after=jan_2) == [ids[2], ids[1]]
    assert await list_ids(h, created_before=jan_2) == [ids[0]]
    assert await list_ids(h, created_after=jan_2, created_before=jan_3) == [ids[1]]
    assert await list_ids(h, created_after="2026-01-02T13:00:00+02:00") == [ids[2], ids[1]]
    assert await list_ids(h, created_after="2026-01-02T14:30:00+02:00") == [ids[2]]
    # A time without a zone is read as UTC.
    assert await list_ids(h, created_before="2026-01-01T13:00:00") == [ids[0]]
    assert await list_ids(h, created_after="2026-01-04T00:00:00Z") == []
    problem = assert_problem(await h.client.get(URL, params={"created_after": "yesterday"}), 422)
    assert error_locs(problem) == [["query", "created_after"]]


async def test_filters_combine(h: Harness) -> None:
    match = await h.send(route="broadcast", text="x")
    await h.send(route="alerts", text="x")
    await h.send(route="broadcast", text="x", send_at="2099-01-01T00:00:00Z")
    await h.run_worker()
    assert await list_ids(h, route="broadcast", channel="backup", status="delivered") == [
        match["id"]
    ]


@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten"])
async def test_limit_outside_1_to_200_is_422(h: Harness, limit: str) -> None:
    problem = assert_problem(await h.client.get(URL, params={"limit": limit}), 422)
    assert error_locs(problem) == [["query", "limit"]]


async def test_limit_bounds_and_default(h: Harness) -> None:
    ids = [(await h.send(route="alerts", text="x"))["id"] for _ in range(3)]
    one = (await h.client.get(URL, params={"limit": 1})).json()
    assert [item["id"] for item in one["items"]] == [ids[2]]
    assert one["next_cursor"] is not None
    most = await h.client.get(URL, params={"limit": 200})
    assert most.status_code == 200
    assert len(most.json()["items"]) == 3


async def test_default_limit_is_50(h: Harness) -> None:
    for _ in range(51):
        await h.send(route="alerts", text="x")
    page = (await h.client.get(URL)).json()
    assert len(page["items"]) == 50
    assert page["next_cursor"] is not None


async def test_cursor_paging_visits_every_notification_once(h: Harness) -> None:
    ids = [(await h.send(route="alerts", text=f"{i}"))["id"] for i in range(7)]
    pages = await walk(h, limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == ids[::-1]
    # When the count is a multiple of the limit, no empty trailing page is handed out.
    pages = await walk(h, limit=7)
    assert pages == [ids[::-1]]


async def test_cursor_paging_with_a_filter(h: Harness) -> None:
    wanted = []
    for i in range(6):
        created = await h.send(route="alerts" if i % 2 else "broadcast", text="x")
        if i % 2:
            wanted.append(created["id"])
    pages = await walk(h, limit=2, route="alerts")
    assert pages == [wanted[::-1][:2], wanted[::-1][2:]]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "", "x" * 65])
async def test_an_invalid_cursor_is_422(h: Harness, cursor: str) -> None:
    await h.send(route="alerts", text="x")
    problem = assert_problem(await h.client.get(URL, params={"cursor": cursor}), 422)
    assert error_locs(problem) == [["query", "cursor"]]


async def test_paging_stays_correct_while_inserts_run_between_pages(h: Harness) -> None:
    older = [(await h.send(route="alerts", text=f"old {i}"))["id"] for i in range(7)]
    seen: list[str] = []
    newer: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await h.client.get(URL, params=params)).json()
        seen.extend(item["id"] for item in page["items"])
        for _ in range(2):  # newer notifications arrive while the client pages
            newer.append((await h.send(route="alerts", text="new"))["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == older[::-1]
    assert await list_ids(h) == newer[::-1] + older[::-1]


async def test_paging_under_truly_concurrent_inserts(h: Harness) -> None:
    older = [(await h.send(route="alerts", text=f"old {i}"))["id"] for i in range(8)]
    stop = asyncio.Event()

    async def insert() -> None:
        while not stop.is_set():
            await h.send(route="alerts", text="new")
            await asyncio.sleep(0)

    inserter = asyncio.create_task(insert())
    try:
        pages = await walk(h, limit=2)
    finally:
        stop.set()
        await inserter
    seen = [i for page in pages for i in page]
    assert len(seen) == len(set(seen)), "a page repeated an item"
    assert seen == sorted(seen, key=uuid.UUID, reverse=True), "pages are not newest first"
    assert seen[-len(older) :] == older[::-1], "an older item was skipped"


@pytest.mark.parametrize("name", ["route", "channel"])
async def test_nul_in_a_text_filter_is_422(h: Harness, name: str) -> None:
    problem = assert_problem(await h.client.get(URL, params={name: "a\u0000b"}), 422)
    assert error_locs(problem) == [["query", name]]


@pytest.mark.parametrize("name", ["created_after", "created_before"])
@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+01:00"])
async def test_times_outside_the_utc_range_in_a_filter_are_422(
    h: Harness, name: str, value: str
) -> None:
    problem = assert_problem(await h.client.get(URL, params={name: value}), 422)
    assert error_locs(problem) == [["query", name]]
