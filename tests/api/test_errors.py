"""Errors outside any one operation: unknown paths, wrong methods, bodies that are not JSON."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.api.conftest import assert_problem, list_ids, metric_value, scrape
from tests.support.harness import Harness


@pytest.mark.parametrize(
    "path", ["/nope", "/v1", "/v1/notification", "/v2/notifications", "/v1/channels/hooks"]
)
async def test_unknown_path_is_a_404_problem(h: Harness, path: str) -> None:
    response = await h.client.get(path)
    assert_problem(response, 404, detail_contains="no such path")


async def test_unknown_sub_resource_is_a_404_problem(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    response = await h.client.get(f"/v1/notifications/{created['id']}/history")
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/notifications", {"GET", "POST"}),
        ("PUT", "/v1/notifications", {"GET", "POST"}),
        ("DELETE", "/v1/notifications/{id}", {"GET"}),
        ("GET", "/v1/notifications/{id}/cancel", {"POST"}),
        ("GET", "/v1/notifications/{id}/retry", {"POST"}),
        ("POST", "/v1/notifications/{id}/attempts", {"GET"}),
        ("POST", "/v1/channels", {"GET"}),
        ("POST", "/v1/routes", {"GET"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
async def test_wrong_method_is_a_405_problem(
    h: Harness, method: str, path: str, allowed: set[str]
) -> None:
    created = await h.send(route="alerts", text="x")
    response = await h.client.request(method, path.format(id=created["id"]))
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    # Nothing was changed by the refused request.
    assert (await h.get(created["id"]))["status"] == "pending"
    assert await list_ids(h) == [created["id"]]


async def test_a_body_that_is_not_json_is_415(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications", content=b"text=x", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415, slug="unsupported-media-type")
    assert await list_ids(h) == []


async def test_an_empty_body_is_422(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications", content=b"", headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert ["body"] in [e["loc"][:1] for e in problem["errors"]]


async def test_validation_problem_lists_every_error(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        json={"text": 1, "severity": "loud", "subject": "s" * 999, "extra": True},
    )
    problem = assert_problem(response, 422)
    locs = [e["loc"] for e in problem["errors"]]
    for loc in (["body", "text"], ["body", "severity"], ["body", "subject"], ["body", "extra"]):
        assert loc in locs, locs
    assert "(and 1 more)" in problem["detail"]


async def test_problem_for_a_missing_notification_names_its_id(h: Harness) -> None:
    missing = uuid.uuid4()
    problem = assert_problem(await h.client.get(f"/v1/notifications/{missing}"), 404)
    assert problem["title"] == "Not found"
    assert "errors" not in problem


@pytest.mark.parametrize("path", ["/v1/notifications", "/v1/notifications/batch"])
async def test_a_client_that_hangs_up_mid_body_is_no_server_error(
    h: Harness, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 13's hostile pass: a client that sent half its body and left was logged as an
    # unhandled error with a traceback and counted as a 500.
    caplog.set_level(logging.INFO, logger="herald.api")
    app = h.client._transport.app  # type: ignore[attr-defined]
    messages = [
        {"type": "http.request", "body": b'{"te', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 1234),
        "server": ("herald.test", 80),
    }
    labels = {"method": "POST", "path": path, "status": "499"}
    before = metric_value(await scrape(h), "herald_http_requests_total", **labels) or 0
    await app(scope, receive, send)
    assert sent == []
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert "client disconnected" in caplog.text
    assert metric_value(await scrape(h), "herald_http_requests_total", **labels) == before + 1
