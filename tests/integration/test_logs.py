"""JSON logs: one object per line, the request id on API lines, delivery facts on worker lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from app.logs import JsonFormatter, RequestIdFilter
from app.main import create_app
from tests.support.harness import herald
from tests.support.http_server import serve_asgi, serve_http


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the accepted-notification line is at DEBUG
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


async def test_request_id_is_echoed_and_on_every_line(db_url: str, json_lines: io.StringIO) -> None:
    async with serve_http() as sink:
        sink.script("/a", (503, {}, "busy"))
        config = {
            "channels": {
                "hook": {"type": "webhook", "url": sink.url("/a")},
                "log": {"type": "log"},
            },
            "routes": {"default": {"channels": ["hook", "log"]}},
        }
        async with herald(db_url, config) as h:
            response = await h.client.post(
                "/v1/notifications", json={"text": "x"}, headers={"X-Request-ID": "req-42.abc"}
            )
            assert response.headers["x-request-id"] == "req-42.abc"
            generated = await h.client.get("/healthz")
            assert len(generated.headers["x-request-id"]) == 32
            odd = await h.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
            assert odd.headers["x-request-id"] != "bad id with spaces"
            await h.run_worker()
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    accepted = [entry for entry in lines if entry["message"].startswith("accepted notification")]
    assert len(accepted) == 1
    assert accepted[0]["request_id"] == "req-42.abc"
    assert accepted[0]["notification_id"] == response.json()["id"]
    deliveries = [entry for entry in lines if entry["message"].startswith("attempt ")]
    assert [(d["channel"], d["outcome"], d.get("error_class")) for d in deliveries] == [
        ("hook", "failed", "transient"),
        ("log", "delivered", None),
    ]
    assert all(d["notification_id"] == response.json()["id"] for d in deliveries)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)


async def test_an_unhandled_error_is_one_record(db_url: str, json_lines: io.StringIO) -> None:
    """Under uvicorn as ``herald serve`` runs it: Herald's record, not also the server's."""

    async def broken() -> None:
        raise RuntimeError("a bug")

    config = {"channels": {"log": {"type": "log"}}, "routes": {"default": {"channels": ["log"]}}}
    async with herald(db_url, config) as h:
        app = create_app(runtime=h.runtime)
        app.add_api_route("/broken", broken)
        async with serve_asgi(app, log_config=None) as port, httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{port}/broken", headers={"X-Request-ID": "req-500"}
            )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    errors = [entry for entry in lines if entry["level"] in ("error", "critical")]
    assert [(e["logger"], e["message"], e.get("request_id")) for e in errors] == [
        ("herald.api", "unhandled error", "req-500")
    ], errors
    assert "RuntimeError: a bug" in errors[0]["exception"]
