"""``FastAccept``: plain JSON requests skip FastAPI's machinery; every other request is answered
by the FastAPI route, exactly as before, and in FastAPI's order of checks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send

from app import service
from app.api import notifications
from app.api.deps import AdminScope, SendScope
from app.api.middleware import MAX_BODY, Edge, _TooLarge
from app.api.notifications import (
    FastAccept,
    IdempotencyKeyHeader,
    WaitQuery,
    check_fast_road,
    create_notification,
    router,
)
from app.api.schemas import NotificationCreate
from app.channels.registry import default_registry
from app.config import parse_config
from app.errors import Unprocessable
from app.main import create_app
from app.runtime import Runtime
from tests.api.conftest import BASIC_CONFIG, assert_problem
from tests.api.test_auth import BACKEND, SENDER, auth_config, bearer
from tests.support.harness import Harness, herald

KEY = "sk-sender-0123456789abcdef0123456789ab"
BODY = {"route": "alerts", "text": "x", "send_at": "2099-01-01T00:00:00Z"}


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The requests FastAccept handed to the FastAPI route (their content types)."""
    route = FastAccept().route
    handle = route.handle
    seen: list[str] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        seen.append(headers.get(b"content-type", b"").decode())
        await handle(scope, receive, send)

    monkeypatch.setattr(route, "handle", counting)
    yield seen


def test_the_fallback_is_the_documented_route() -> None:
    route = FastAccept().route
    assert route in router.routes
    assert route.endpoint is create_notification
    assert route.path == "/v1/notifications" and route.methods == {"POST"}


async def test_a_plain_json_request_takes_the_short_road(h: Harness, fallbacks: list[str]) -> None:
    response = await h.client.post(
        "/v1/notifications", json=BODY, headers={"Idempotency-Key": "k" * 255}
    )
    assert response.status_code == 202, response.text
    assert fallbacks == []
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    assert response.headers["location"] == f"/v1/notifications/{created['id']}"
    assert created == await h.get(created["id"])
    replay = await h.client.post(
        "/v1/notifications", json=BODY, headers={"Idempotency-Key": "k" * 255}
    )
    assert (replay.status_code, replay.json()["id"]) == (200, created["id"])
    assert replay.headers["idempotent-replayed"] == "true"
    assert fallbacks == []


@pytest.mark.parametrize(
    ("content_type", "body", "headers", "status", "loc"),
    [
        ("application/json", b'{"text": "x",', {}, 422, ["body"]),
        ("application/json", b"\xff\xfe{}", {}, 422, ["body"]),
        ("application/json", b'["x"]', {}, 422, ["body"]),
        ("application/json", json.dumps({"text": "x", "nope": 1}).encode(), {}, 422, None),
        ("application/json", json.dumps(BODY).encode(), {"Idempotency-Key": "k" * 256}, 422,
         ["header", "Idempotency-Key"]),
        ("text/plain", json.dumps(BODY).encode(), {}, 415, None),
    ],
    ids=["broken-json", "not-utf8", "not-an-object", "unknown-field", "long-key", "text-plain"],
)  # fmt: skip
async def test_anything_else_is_answered_by_the_fastapi_route(
    h: Harness,
    fallbacks: list[str],
    content_type: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    loc: list[Any] | None,
) -> None:
    response = await h.client.post(
        "/v1/notifications", content=body, headers={"Content-Type": content_type, **headers}
    )
    assert response.status_code == status, response.text
    assert fallbacks == [content_type]
    if status != 202:
        problem = assert_problem(
            response, status, slug="unsupported-media-type" if status == 415 else None
        )
        if loc is not None:
            assert problem["errors"][0]["loc"] == loc


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/cloudevents+json"]
)
async def test_json_of_any_json_media_type_takes_the_short_road(
    h: Harness, fallbacks: list[str], content_type: str
) -> None:
    response = await h.client.post(
        "/v1/notifications", content=json.dumps(BODY), headers={"Content-Type": content_type}
    )
    assert response.status_code == 202, response.text
    assert fallbacks == []


def nested_text(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


ROAD_CASES: dict[str, tuple[str | None, bytes]] = {
    "accepted": ("application/json", json.dumps(BODY).encode()),
    "charset": ("application/json; charset=utf-8", json.dumps(BODY).encode()),
    "plus-json": ("application/cloudevents+json", json.dumps(BODY).encode()),
    "text-plain": ("text/plain", json.dumps(BODY).encode()),
    "form": ("application/x-www-form-urlencoded", b"route=alerts&text=x"),
    "no-content-type": (None, json.dumps(BODY).encode()),
    "empty": ("application/json", b""),
    "broken": ("application/json", b'{\n  "text": "x"\n  "route": "alerts"\n}'),
    "not-utf8": ("application/json", b'{"text": "caf\xe9"}'),
    "nan": ("application/json", b'{"text": "x", "metadata": {"v": NaN}}'),
    "infinity": ("application/json", b'{"text": "x", "metadata": {"v": -Infinity}}'),
    "huge-number": ("application/json", b'{"text": "x", "metadata": {"v": 1e999}}'),
    "deep-33": ("application/json", b'{"text": "x", "metadata": %s}' % nested_text(33).encode()),
    "deep-300": ("application/json", b'{"text": "x", "metadata": %s}' % nested_text(300).encode()),
    "deep-5000": ("application/json", nested_text(5000).encode()),
    "bad-email": ("application/json", b'{"text": "x", "recipient": {"email": "a@b\\r\\nc.d"}}'),
    "bad-phone": ("application/json", b'{"text": "x", "recipient": {"phone": "555-0100"}}'),
    "expired": ("application/json", b'{"text": "x", "expires_at": "2001-01-01T00:00:00Z"}'),
    "template-missing-variable": ("application/json", b'{"template": "greeting", "data": {}}'),
    "template-unknown": ("application/json", b'{"template": "nope", "data": {"name": "x"}}'),
    "template-and-text": ("application/json", b'{"template": "greeting", "text": "x"}'),
    "data-without-template": ("application/json", b'{"text": "x", "data": {"name": "x"}}'),
}


@asynccontextmanager
async def without_fast_accept(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same Herald without ``FastAccept``: every request takes FastAPI's road."""
    app = create_app(runtime=runtime)
    app.user_middleware[:] = [
        Middleware(Edge, *layer.args, **{**layer.kwargs, "road": None})
        if layer.cls is Edge
        else layer
        for layer in app.user_middleware
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


@pytest.fixture
async def fastapi_only(h: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with without_fast_accept(h.runtime) as client:
        yield client


@pytest.mark.parametrize("case", ROAD_CASES)
async def test_both_roads_answer_alike(
    h: Harness, fastapi_only: httpx.AsyncClient, case: str
) -> None:
    content_type, content = ROAD_CASES[case]
    headers = {"Content-Type": content_type} if content_type else {}
    fast = await h.client.post("/v1/notifications", content=content, headers=headers)
    slow = await fastapi_only.post("/v1/notifications", content=content, headers=headers)
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.status_code != 500
    assert fast.headers["content-type"] == slow.headers["content-type"]
    if fast.status_code == 202:
        assert set(fast.json()) == set(slow.json())
        assert fast.json()["id"] != slow.json()["id"]
    else:
        assert fast.json() == slow.json()
        assert_problem(fast, fast.status_code, slug=fast.json()["type"].rpartition(":")[2])


WAIT_CASES: dict[str, tuple[str, int]] = {
    "seconds": ("wait=0.2", 202),
    "milliseconds": ("wait=200ms", 202),
    "zero": ("wait=0s", 202),
    "empty": ("wait=", 422),
    "malformed": ("wait=soon", 422),
    "negative": ("wait=-1s", 422),
    "above-the-maximum": ("wait=31s", 422),
    "a-day": ("wait=1d", 422),
    "twice-last-wins": ("wait=1s&wait=45s", 422),
    "other-parameter": ("dry_run=1", 202),
}


@pytest.mark.parametrize("case", WAIT_CASES)
async def test_both_roads_answer_a_wait_alike(
    h: Harness, fastapi_only: httpx.AsyncClient, fallbacks: list[str], case: str
) -> None:
    query, status = WAIT_CASES[case]
    url = f"/v1/notifications?{query}"
    fast = await h.client.post(url, json=BODY)
    assert fallbacks == ([] if status == 202 else ["application/json"]), "served by the fast road"
    slow = await fastapi_only.post(url, json=BODY)
    assert answer(fast) == answer(slow)
    assert fast.status_code == status, fast.text
    if status == 422:
        problem = assert_problem(fast, 422)
        assert [error["loc"] for error in problem["errors"]] == [["query", "wait"]]
    elif "wait=0s" not in query and "wait" in query:
        assert fast.headers["herald-wait"] == "timeout", "send_at is far ahead: still pending"
    else:
        assert "herald-wait" not in fast.headers


async def test_a_bad_wait_and_a_bad_body_are_reported_together(
    h: Harness, fastapi_only: httpx.AsyncClient
) -> None:
    url = "/v1/notifications?wait=31s"
    fast = await h.client.post(url, json={"text": 1}, headers={"Idempotency-Key": "k" * 256})
    slow = await fastapi_only.post(url, json={"text": 1}, headers={"Idempotency-Key": "k" * 256})
    assert answer(fast) == answer(slow)
    problem = assert_problem(fast, 422)
    assert [error["loc"] for error in problem["errors"]] == [
        ["query", "wait"],
        ["header", "Idempotency-Key"],
        ["body", "text"],
    ]


async def test_with_keys_the_checks_keep_fastapis_order(db_url: str, fallbacks: list[str]) -> None:
    raw = {**BASIC_CONFIG, "auth": {"api_keys": [{"name": "s", "key": KEY, "scopes": ["send"]}]}}
    config = parse_config(raw, default_registry(), source="test")
    async with herald(db_url, config) as h:
        url, bearer = "/v1/notifications", {"Authorization": f"Bearer {KEY}"}
        # The body is parsed before the caller is authorized ...
        broken = await h.client.post(
            url, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert_problem(broken, 422)
        # ... and validated after.
        invalid = await h.client.post(url, json={"text": 1})
        assert_problem(invalid, 401, slug="unauthorized")
        assert fallbacks == ["application/json"] * 2
        assert_problem(await h.client.post(url, json=BODY), 401, slug="unauthorized")
        # The caller is authorized before the query is validated, as FastAPI does.
        bad_wait = await h.client.post(f"{url}?wait=31s", json=BODY)
        assert_problem(bad_wait, 401, slug="unauthorized")
        unknown_key = await h.client.post(url, json=BODY, headers={"X-API-Key": "sk-nope"})
        assert_problem(unknown_key, 401, slug="unauthorized")
        assert len(fallbacks) == 2, "a well-formed body is refused by the short road itself"
        accepted = await h.client.post(url, json=BODY, headers=bearer)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["id"]
        assert len(fallbacks) == 2
        assert_problem(await h.client.post(f"{url}?wait=31s", json=BODY, headers=bearer), 422)
        assert len(fallbacks) == 3, "a bad wait is answered by the FastAPI route"


# -- requests both roads accept ------------------------------------------------------------------

VALID_CASES: dict[str, dict[str, Any]] = {
    "route": {"route": "alerts", "text": "x"},
    "default-route": {"text": "x", "subject": "s", "severity": "error", "metadata": {"a": [1]}},
    "channels": {"channels": ["console", "backup"], "html": "<b>x</b>", "source": "test"},
    "send_at": BODY,
    "send_at-and-ttl": {"route": "broadcast", "text": "x", "send_at": "2099-01-01T00:00:00Z"},
    "recipient": {"text": "x", "recipient": {"email": "a@example.com", "phone": "+1 415 555 0100"}},
    "expires_at": {"route": "alerts", "text": "x", "expires_at": "2099-01-01T00:00:00Z"},
    "template": {"route": "alerts", "template": "greeting", "data": {"name": "<Ada>"}},
}
STAMPED = ("created_at", "updated_at", "next_attempt_at", "expires_at")


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """What a caller sees, less what differs between two accepts of one body: the id (in the
    body and in ``Location``, whose shape is checked), the times stamped at accept, the
    request id and the length (a time may print shorter)."""
    body = response.json()
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("x-request-id", "content-length")
    }
    if "id" in body:
        assert headers.pop("location") == f"/v1/notifications/{body['id']}"
        body = {**body, "id": "…"} | {name: "…" for name in STAMPED if body[name] is not None}
    return response.status_code, headers, body


async def both_roads(
    fast: httpx.AsyncClient,
    slow: httpx.AsyncClient,
    fallbacks: list[str],
    body: dict[str, Any],
    headers: dict[str, str],
    key: str | None,
) -> None:
    """``body`` sent down each road; with ``key``, each road's key sent again (a replay) and
    then with another body (a mismatch), and each road replaying the other road's key. The fast
    road must serve every request sent to it (``fallbacks`` also counts the slow road's)."""

    async def post(road: httpx.AsyncClient, again: dict[str, Any], key: str | None) -> Any:
        sent = {**headers, "Idempotency-Key": key} if key else headers
        before = len(fallbacks)
        response = await road.post("/v1/notifications", json=again, headers=sent)
        assert len(fallbacks) == before + (road is slow)
        return response

    keys = (f"{key}-fast", f"{key}-slow") if key else (None, None)
    first = [await post(fast, body, keys[0]), await post(slow, body, keys[1])]
    assert first[0].status_code == 202, first[0].text
    assert answer(first[0]) == answer(first[1])
    if key is None:
        return
    other = {"data": {"name": "another"}} if "template" in body else {"text": "another"}
    for again in (body, {**body, **other}):
        replays = [
            await post(road, again, road_key)
            for road, road_key in (
                (fast, keys[0]),
                (slow, keys[1]),
                (fast, keys[1]),
                (slow, keys[0]),
            )
        ]
        assert replays[0].status_code == (200 if again is body else 422), replays[0].text
        assert len({repr(answer(replay)) for replay in replays}) == 1, [r.text for r in replays]
        if again is body:
            assert replays[0].json() == replays[3].json() == first[0].json()
            assert replays[1].json() == replays[2].json() == first[1].json()


@pytest.mark.parametrize("key", [None, "key"])
@pytest.mark.parametrize("case", VALID_CASES)
async def test_both_roads_accept_alike(
    h: Harness, fastapi_only: httpx.AsyncClient, fallbacks: list[str], case: str, key: str | None
) -> None:
    body = VALID_CASES[case]
    await both_roads(h.client, fastapi_only, fallbacks, body, {}, key and f"{key}-{case}")


@pytest.mark.parametrize("key", [None, "key"])
@pytest.mark.parametrize(
    "headers", [bearer(SENDER), {"X-API-Key": BACKEND}], ids=["bearer", "x-api-key"]
)
async def test_with_auth_on_both_roads_accept_alike(
    db_url: str, fallbacks: list[str], headers: dict[str, str], key: str | None
) -> None:
    async with (
        herald(db_url, auth_config()) as h,
        without_fast_accept(h.runtime) as fastapi_only,
    ):
        for case, body in VALID_CASES.items():
            await both_roads(
                h.client, fastapi_only, fallbacks, body, headers, key and f"{key}-{case}"
            )


# -- the fast road refuses to start when it would answer differently -----------------------------


async def grown(
    body: NotificationCreate,
    principal: SendScope,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
    wait: WaitQuery = None,
    dry_run: bool = False,
) -> None:
    """``create_notification`` with a parameter the fast road knows nothing of."""


async def rescoped(
    body: NotificationCreate,
    principal: AdminScope,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
    wait: WaitQuery = None,
) -> None:
    """``create_notification`` asking another scope."""


async def shrunk(
    body: NotificationCreate, principal: SendScope, request: Request, wait: WaitQuery = None
) -> None:
    """``create_notification`` without its Idempotency-Key."""


async def same(
    body: NotificationCreate,
    principal: SendScope,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
    wait: WaitQuery = None,
) -> None:
    """``create_notification``'s parameters, as the fast road replicates them."""


@pytest.mark.parametrize(
    ("endpoint", "dependencies", "named"),
    [
        (grown, [], "parameter 'dry_run'"),
        (rescoped, [], "parameter 'principal'"),
        (shrunk, [], "no longer takes parameter 'idempotency_key'"),
        (same, [Depends(same)], "route dependencies"),
    ],
    ids=["grown", "rescoped", "shrunk", "dependencies"],
)
def test_the_fast_road_refuses_a_route_it_does_not_replicate(
    endpoint: Any, dependencies: list[Any], named: str
) -> None:
    check_fast_road(APIRoute("/v1/notifications", same, methods=["POST"]))
    route = APIRoute("/v1/notifications", endpoint, methods=["POST"], dependencies=dependencies)
    with pytest.raises(RuntimeError, match=named):
        check_fast_road(route)


def test_the_app_does_not_start_when_the_fast_road_falls_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if ``create_notification`` had gained ``idempotency_key`` and FastAccept had not."""
    replicated = dict(notifications.FAST_ROAD_PARAMETERS)
    del replicated["idempotency_key"]
    monkeypatch.setattr(notifications, "FAST_ROAD_PARAMETERS", replicated)
    with pytest.raises(RuntimeError, match="create_notification takes parameter 'idempotency_key'"):
        create_app()


@pytest.mark.parametrize("mode", ["drop", "collapse"])
async def test_both_roads_dedupe_alike(db_url: str, fallbacks: list[str], mode: str) -> None:
    """A ``dedup_key`` takes the fast road, which does the same work: repeats sent down either
    road are decided against one window and answered alike."""
    routes = {
        **BASIC_CONFIG["routes"],
        "noisy": {"channels": ["console"], "dedup": {"window": "10m", "mode": mode}},
    }
    async with (
        herald(db_url, {**BASIC_CONFIG, "routes": routes}) as h,
        without_fast_accept(h.runtime) as slow,
    ):
        body = {"route": "noisy", "text": "x", "dedup_key": "k"}
        answers = [
            await road.post("/v1/notifications", json=body)
            for road in (h.client, slow, h.client, slow)
        ]
        assert len(fallbacks) == 2, "the fast road served its two: only the slow road's went on"
        assert [r.status_code for r in answers] == [202, 200, 200, 200]
        assert {r.json()["id"] for r in answers} == {answers[0].json()["id"]}
        assert [r.headers.get("Herald-Deduplicated") for r in answers] == [
            None,
            "true",
            "true",
            "true",
        ]
        if mode == "drop":
            assert answer(answers[1]) == answer(answers[2]) == answer(answers[3])
        assert [r.json()["occurrences"] for r in answers] == (
            [1] * 4 if mode == "drop" else [1, 2, 3, 4]
        )


# -- errors on the fast road are answered by the app's exception handlers ------------------------

RAISED: dict[str, Exception] = {
    "herald-error": Unprocessable("refused here", errors=[{"loc": ["body"], "msg": "no"}]),
    "database-unreachable": ConnectionError("connection refused"),
    "database-bug": DBAPIError("SELECT 1", None, ValueError("a bug of ours")),
    "unexpected": RuntimeError("a bug of ours"),
    "too-large": _TooLarge(MAX_BODY),
}


@pytest.mark.parametrize("case", RAISED)
async def test_an_error_on_the_fast_road_is_answered_as_the_app_answers_it(
    h: Harness,
    fastapi_only: httpx.AsyncClient,
    fallbacks: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    async def failing(*_: Any, **__: Any) -> Any:
        raise RAISED[case]

    monkeypatch.setattr(service, "accept", failing)
    answers = []
    for road in (h.client, fastapi_only):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="herald.api"):
            response = await road.post("/v1/notifications", json=BODY)
        answers.append((answer(response), [(r.levelname, r.getMessage()) for r in caplog.records]))
    assert fallbacks == ["application/json"], "the fast road answered the first itself"
    assert answers[0] == answers[1]
    assert answers[0][0][0] == {"herald-error": 422, "too-large": 413}.get(
        case, 503 if case == "database-unreachable" else 500
    )


async def test_a_request_the_fast_road_does_not_serve_goes_to_the_app(h: Harness) -> None:
    """Another path or method is the app's, and so is a request the fast road hands on."""
    assert_problem(await h.client.put("/v1/notifications", json=BODY), 405)
    assert (await h.client.get("/v1/notifications")).status_code == 200
    slash = await h.client.post("/v1/notifications/", json=BODY)
    assert (slash.status_code, slash.headers["location"]) == (
        307,
        "http://herald.test/v1/notifications",
    )
