"""Issue 13.1: JSON nested too deeply is refused at submit, and a stored row nested too deeply
(accepted before the limit existed) never breaks a read or the delivery loop."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Uuid, bindparam, text

from app.nesting import NESTING_LIMIT, OMITTED
from tests.api.conftest import BASIC_CONFIG, assert_problem, error_locs, list_ids
from tests.support.harness import Harness, herald
from tests.support.http_server import serve_http


def nested(levels: int) -> Any:
    """A JSON object nesting ``levels`` objects deep: ``nested(2) == {"a": {"a": 1}}``."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def nested_text(levels: int) -> str:
    """``nested(levels)`` as JSON text, for depths ``json.dumps`` cannot write."""
    return '{"a":' * levels + "1" + "}" * levels


async def post_raw(h: Harness, url: str, body: str) -> Any:
    return await h.client.post(url, content=body, headers={"Content-Type": "application/json"})


async def test_metadata_at_the_limit_is_accepted_and_read_back(h: Harness) -> None:
    created = await h.send(route="alerts", text="x", metadata=nested(NESTING_LIMIT))
    assert created["metadata"] == nested(NESTING_LIMIT)
    assert (await h.get(created["id"]))["metadata"] == nested(NESTING_LIMIT)


@pytest.mark.parametrize("levels", [NESTING_LIMIT + 1, 300, 600])
async def test_metadata_past_the_limit_is_422_naming_it(h: Harness, levels: int) -> None:
    body = '{"route": "alerts", "text": "x", "metadata": ' + nested_text(levels) + "}"
    problem = assert_problem(await post_raw(h, "/v1/notifications", body), 422)
    assert error_locs(problem) == [["body", "metadata"]]
    assert f"nested deeper than {NESTING_LIMIT} levels" in problem["detail"]
    assert await list_ids(h) == []


async def test_metadata_past_the_limit_with_an_idempotency_key_is_422(h: Harness) -> None:
    """The key's body hash serializes the request: it must never see what cannot serialize."""
    response = await h.client.post(
        "/v1/notifications",
        content='{"text": "x", "metadata": ' + nested_text(300) + "}",
        headers={"Content-Type": "application/json", "Idempotency-Key": "deep"},
    )
    assert error_locs(assert_problem(response, 422)) == [["body", "metadata"]]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient", {"email": nested(NESTING_LIMIT)}),
        ("channels", [nested(NESTING_LIMIT)]),
    ],
)
async def test_every_field_has_the_limit(h: Harness, field: str, value: Any) -> None:
    response = await h.client.post("/v1/notifications", json={"text": "x", field: value})
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["body", field]]


async def test_a_body_too_deep_to_parse_is_422_not_500(h: Harness) -> None:
    """json.loads raises RecursionError at about 1,000 levels; it must not escape."""
    for body in (nested_text(5000), "[" * 5000 + "]" * 5000):
        problem = assert_problem(await post_raw(h, "/v1/notifications", body), 422)
        assert error_locs(problem) == [["body"]]
        assert "too deeply" in problem["detail"]
        batch = await post_raw(h, "/v1/notifications/batch", '{"items": [' + body + "]}")
        assert error_locs(assert_problem(batch, 422)) == [["body"]]
    assert await list_ids(h) == []


async def test_a_body_orjson_reads_deeper_than_json_is_422(h: Harness) -> None:
    """orjson reads up to 1,024 levels, ``json`` gives out near 1,000 (``parse_json``): what
    only orjson reads is refused all the same, by the field's nesting limit."""
    for body in (
        '{"text": "x", "metadata": ' + nested_text(1010) + "}",
        '{"text": "x", "recipient": {"email": ' + "[" * 1010 + "]" * 1010 + "}}",
    ):
        assert_problem(await post_raw(h, "/v1/notifications", body), 422)
        batch = await post_raw(h, "/v1/notifications/batch", '{"items": [' + body + "]}")
        assert batch.status_code == 207, batch.text
        assert [item["status"] for item in batch.json()["items"]] == [422]
    assert await list_ids(h) == []


async def test_batch_refuses_a_deep_item_in_its_place(h: Harness) -> None:
    items = (
        '[{"text": "ok"}, {"text": "deep", "metadata": '
        + nested_text(300)
        + '}, {"text": "also ok", "metadata": '
        + nested_text(NESTING_LIMIT + 1)
        + "}]"
    )
    response = await post_raw(h, "/v1/notifications/batch", '{"items": ' + items + "}")
    assert response.status_code == 207, response.text
    body = response.json()
    assert [item["status"] for item in body["items"]] == [202, 422, 422]
    for index in (1, 2):
        error = body["items"][index]["error"]
        assert error["errors"][0]["loc"] == ["body", "items", index, "metadata"]
    assert await list_ids(h) == [body["items"][0]["id"]]


async def store_metadata(h: Harness, notification_id: str, raw_json: str) -> None:
    """Put ``raw_json`` in a row's metadata as an older Herald could have stored it."""
    cast = "CAST(:m AS json)" if h.runtime.engine.dialect.name == "postgresql" else ":m"
    statement = text(f"UPDATE notifications SET metadata = {cast} WHERE id = :id")
    async with h.runtime.sessions() as session, session.begin():
        await session.execute(
            statement.bindparams(bindparam("id", type_=Uuid())),
            {"m": raw_json, "id": uuid.UUID(notification_id)},
        )


@pytest.mark.parametrize("levels", [NESTING_LIMIT + 1, 300, 3000])
async def test_a_stored_row_nested_too_deeply_never_breaks_a_read(h: Harness, levels: int) -> None:
    good = await h.send(route="alerts", text="good", metadata={"k": "v"})
    bad = await h.send(route="alerts", text="bad")
    await store_metadata(h, bad["id"], nested_text(levels))

    page = await h.client.get("/v1/notifications")
    assert page.status_code == 200, page.text
    shown = {item["id"]: item["metadata"] for item in page.json()["items"]}
    assert shown == {good["id"]: {"k": "v"}, bad["id"]: OMITTED}
    assert (await h.get(bad["id"]))["metadata"] == OMITTED
    assert (await h.get(good["id"]))["metadata"] == {"k": "v"}


async def test_the_worker_delivers_a_row_nested_too_deeply(db_url: str) -> None:
    config = {**BASIC_CONFIG, "routes": {"default": {"channels": ["hooks"]}}}
    async with serve_http() as sink, herald(db_url, config) as h:
        ids = []
        for levels in (300, 3000):
            created = await h.send(text="x", recipient={"webhook_url": sink.url("/hook")})
            await store_metadata(h, created["id"], nested_text(levels))
            ids.append(created["id"])
        assert await h.run_worker() == 2
        for notification_id in ids:
            assert (await h.get(notification_id))["status"] == "delivered"
        assert [r.json()["data"]["metadata"] for r in sink.received] == [OMITTED, OMITTED]
