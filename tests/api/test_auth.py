"""API keys: authentication, scopes, tenancy by key, per-key rate limits, metrics_key, and
``herald serve`` refusing to expose an unauthenticated API."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sqlalchemy import select

from app.channels.registry import default_registry
from app.cli import bind_refusal, is_loopback, main
from app.config import AuthConfig, ConfigError, HeraldConfig, parse_config
from app.ratelimit import SlidingWindow
from app.security import auth
from app.security.auth import ApiKeys
from app.store.models import EventRecord, Notification
from tests.api.conftest import BASIC_CONFIG, assert_problem, metric_value
from tests.support.events import subscription
from tests.support.harness import Harness, herald

SENDER = "sk-sender-0123456789abcdef0123456789ab"
READER = "sk-reader-0123456789abcdef0123456789ab"
BACKEND = "sk-backnd-0123456789abcdef0123456789ab"
OTHER = "sk-others-0123456789abcdef0123456789ab"
OPS = "sk-opsadm-0123456789abcdef0123456789ab"
WRONG = "sk-wrong0-0123456789abcdef0123456789ab"  # the same length as every real key
METRICS = "metrics-0123456789abcdef"
KEYS = {"sender": SENDER, "reader": READER, "backend": BACKEND, "other": OTHER, "ops": OPS}
assert len({len(key) for key in [*KEYS.values(), WRONG]}) == 1

ENV = {"BACKEND_KEY": BACKEND, "OPS_KEY": OPS}
API_KEYS: list[dict[str, Any]] = [
    {"name": "sender", "key": SENDER, "scopes": ["send"]},
    {"name": "reader", "key": READER, "scopes": ["read"]},
    {"name": "backend", "key": "${BACKEND_KEY}", "scopes": ["send", "read"]},
    {"name": "other", "key_sha256": hashlib.sha256(OTHER.encode()).hexdigest()},
    {"name": "ops", "key": "${OPS_KEY}", "scopes": ["admin"]},
]


EVENTS = {"subscriptions": [subscription("https://hooks.example.com/herald")]}
"""A subscription, so that events are kept (no dispatcher runs in these tests)."""


def auth_config(**auth_section: Any) -> HeraldConfig:
    raw = {**BASIC_CONFIG, "auth": {"api_keys": API_KEYS, **auth_section}, "events": EVENTS}
    return parse_config(raw, default_registry(), source="test", env=ENV)


@pytest.fixture
async def ah(db_url: str) -> AsyncIterator[Harness]:
    """A Herald with ``API_KEYS`` configured (and no metrics_key)."""
    async with herald(db_url, auth_config()) as harness:
        yield harness


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_key(name: str) -> dict[str, str]:
    return bearer(KEYS[name])


async def create(h: Harness, key: str, **body: Any) -> str:
    body = {"route": "alerts", "text": "x", "send_at": "2099-01-01T00:00:00Z", **body}
    response = await h.client.post("/v1/notifications", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def stored(h: Harness) -> dict[str, tuple[str | None, str]]:
    """Every stored notification's ``(owner, status)`` by id, read from the database."""
    async with h.runtime.sessions() as session:
        query = select(Notification.id, Notification.owner, Notification.status)
        rows = (await session.execute(query)).all()
    return {str(notification_id): (owner, status) for notification_id, owner, status in rows}


async def owners(h: Harness) -> dict[str, str | None]:
    return {key: owner for key, (owner, _) in (await stored(h)).items()}


def assert_challenge(response: httpx.Response, *, invalid: bool) -> None:
    assert_problem(response, 401, slug="unauthorized")
    expected = 'Bearer realm="herald"' + (', error="invalid_token"' if invalid else "")
    assert response.headers["www-authenticate"] == expected


def assert_missing_scope(response: httpx.Response, scope: str) -> None:
    problem = assert_problem(response, 403, slug="forbidden")
    assert f"'{scope}' scope" in problem["detail"], problem
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="herald", error="insufficient_scope", scope="{scope}"'
    )


# --- the matrix: every endpoint x every kind of caller -------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    """``{id}`` stands for the target notification."""
    scope: str | None
    """``None``: open to anyone."""
    ok: int = 200
    body: dict[str, Any] | None = None
    stage: str | None = None
    """Status the target is put in first, so the operation can succeed on it."""
    leaves: str | None = None
    """Status the target has after the operation succeeded."""
    event: bool = False
    """``{id}`` stands for an event of the target notification; a list lists events."""

    @property
    def targets_one(self) -> bool:
        return "{id}" in self.path

    @property
    def spec_path(self) -> str:
        """The path as ``openapi.yaml`` writes it."""
        path = self.path.replace("/templates/greeting/", "/templates/{name}/")
        return path.replace("{id}", "{event_id}" if self.event else "{notification_id}")


ENDPOINTS = [
    Endpoint("create", "POST", "/v1/notifications", "send", 202, {"route": "alerts", "text": "x"}),
    Endpoint(
        "batch",
        "POST",
        "/v1/notifications/batch",
        "send",
        207,
        {"items": [{"route": "alerts", "text": "x"}]},
    ),
    Endpoint("list", "GET", "/v1/notifications", "read"),
    Endpoint("get", "GET", "/v1/notifications/{id}", "read"),
    Endpoint("attempts", "GET", "/v1/notifications/{id}/attempts", "read"),
    Endpoint("cancel", "POST", "/v1/notifications/{id}/cancel", "admin", leaves="cancelled"),
    Endpoint(
        "retry", "POST", "/v1/notifications/{id}/retry", "admin", stage="failed", leaves="pending"
    ),
    Endpoint("retry_matching", "POST", "/v1/notifications/retry", "admin"),
    Endpoint("ack", "POST", "/v1/notifications/{id}/ack", "send", leaves="acknowledged"),
    Endpoint("events", "GET", "/v1/events", "read", event=True),
    Endpoint("event", "GET", "/v1/events/{id}", "read", event=True),
    Endpoint("event_attempts", "GET", "/v1/events/{id}/attempts", "read", event=True),
    Endpoint("redeliver", "POST", "/v1/events/{id}/redeliver", "admin", event=True),
    Endpoint(
        "alertmanager",
        "POST",
        "/v1/integrations/alertmanager",
        "send",
        202,
        {
            "version": "4",
            "groupKey": "{}:{}",
            "status": "firing",
            "receiver": "herald",
            "groupLabels": {},
            "commonLabels": {"herald_route": "alerts"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.local",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "A"},
                    "startsAt": "2026-12-01T10:00:00Z",
                    "fingerprint": "f1",
                }
            ],
        },
    ),
    Endpoint("inbound", "GET", "/v1/inbound", "admin"),
    Endpoint("channels", "GET", "/v1/channels", "read"),
    Endpoint("routes", "GET", "/v1/routes", "read"),
    Endpoint("templates", "GET", "/v1/templates", "read"),
    Endpoint(
        "template_preview",
        "POST",
        "/v1/templates/greeting/preview",
        "send",
        200,
        {"data": {"name": "Ada"}},
    ),
    Endpoint("healthz", "GET", "/healthz", None),
    Endpoint("readyz", "GET", "/readyz", None),
    Endpoint("metrics", "GET", "/metrics", None),  # open: no metrics_key in this config
]

LACKS = {"send": "reader", "read": "sender", "admin": "backend"}
"""For each scope, a key that does not hold it."""
HOLDS = {"send": "sender", "read": "backend", "admin": "ops"}
"""For each scope, a key that holds it (and owns the target, unless it is admin)."""


@dataclass(frozen=True)
class Case:
    endpoint: Endpoint
    kind: str
    headers: dict[str, str]
    target_owner: str
    """Who created the notification the request names (or that a list should show)."""
    expect: int

    @property
    def id(self) -> str:
        return f"{self.endpoint.name}-{self.kind}"


def cases() -> list[Case]:
    rows = []
    for e in ENDPOINTS:
        ok = e.ok
        if e.scope is None:
            rows += [
                Case(e, "no_key", {}, "backend", ok),
                Case(e, "wrong_key", bearer(WRONG), "backend", ok),
                Case(e, "any_key", as_key("reader"), "backend", ok),
            ]
            continue
        # An operation on one notification with the send scope (ack) is its owner's: backend.
        holder = "backend" if e.targets_one and e.scope == "send" else HOLDS[e.scope]
        rows += [
            Case(e, "no_key", {}, "backend", 401),
            Case(e, "wrong_key", bearer(WRONG), "backend", 401),
            Case(e, "wrong_key_x_api_key", {"X-API-Key": WRONG}, "backend", 401),
            Case(e, "lacks_scope", as_key(LACKS[e.scope]), "backend", 403),
            Case(e, "right_key", as_key(holder), "backend", ok),
            Case(e, "right_key_x_api_key", {"X-API-Key": KEYS[holder]}, "backend", ok),
        ]
        if e.targets_one or e.name in ("list", "events"):
            # Non-admin keys with the scope see only their own; read is the only such scope
            # here (cancel and retry need admin, so a non-admin key is refused with 403 first).
            other_tenant = 404 if e.scope == "read" else 403
            tenant_key = "backend" if e.scope == "read" else LACKS[e.scope]
            if e.name in ("list", "events"):
                other_tenant = 200  # 200, but without the other tenant's notification
            rows += [
                Case(e, "other_tenant", as_key(tenant_key), "other", other_tenant),
                Case(e, "other_tenant_admin", as_key("ops"), "other", ok),
            ]
    return rows


MATRIX = cases()


@pytest.mark.parametrize("case", MATRIX, ids=[case.id for case in MATRIX])
async def test_matrix(ah: Harness, case: Case) -> None:
    e = case.endpoint
    mine = await create(ah, BACKEND)
    theirs = await create(ah, OTHER)
    if e.event:  # each notification's accepted event, written by the accept
        mine, theirs = await accepted_event(ah, mine), await accepted_event(ah, theirs)
    target = mine if case.target_owner == "backend" else theirs
    if e.stage:
        await ah.set_fields(target, status=e.stage)
    before = await stored(ah)
    response = await ah.client.request(
        e.method, e.path.replace("{id}", target), json=e.body, headers=case.headers
    )

    if case.expect == 401:
        assert_challenge(response, invalid=bool(case.headers))
    elif case.expect == 403:
        assert e.scope is not None
        assert_missing_scope(response, e.scope)
    elif case.expect == 404:
        problem = assert_problem(response, 404, detail_contains=target)
        kind = "event" if e.event else "notification"
        assert problem["detail"] == f"no {kind} with id {target}"  # as for a missing id
    else:
        assert response.status_code == case.expect, response.text
    after = await stored(ah)
    if not response.is_success or e.event:
        assert after == before, "a refused request changes nothing"
    if not response.is_success:
        pass
    elif e.name in ("attempts", "event_attempts"):
        assert response.json() == {"items": []}
    elif e.targets_one and e.event:
        assert response.json()["id"] == target
    elif e.targets_one:
        assert response.json()["id"] == target
        assert after[target][1] == (e.leaves or before[target][1])
    elif e.name in ("list", "events"):
        listed = {item["id"] for item in response.json()["items"]}
        admin = "ops" in case.id or case.headers == as_key("ops")
        assert listed == ({mine, theirs} if admin else {mine})
    elif e.name == "create":
        assert after[response.json()["id"]] == (HOLDS["send"], "pending")
    elif e.name == "batch":
        (item,) = response.json()["items"]
        assert after[item["id"]] == (HOLDS["send"], "pending")


async def accepted_event(h: Harness, notification_id: str) -> str:
    """The id of ``notification_id``'s ``notification.accepted`` event."""
    stmt = select(EventRecord.id).where(EventRecord.notification_id == uuid.UUID(notification_id))
    async with h.runtime.sessions() as session:
        return str((await session.execute(stmt)).scalar_one())


def test_matrix_covers_every_operation() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
    operations = {
        (method.upper(), path) for path, methods in spec["paths"].items() for method in methods
    }
    assert operations == {(e.method, e.spec_path) for e in ENDPOINTS} | KEY_IN_PATH, (
        "a new operation needs its row in ENDPOINTS (and a scope)"
    )


KEY_IN_PATH = {("POST", "/v1/integrations/alertmanager/{api_key}")}
"""Operations whose key is in the URL, not a header: their scope is checked by
tests/api/test_alertmanager.py (no key, a wrong one, one without send, one with it)."""


async def test_a_cancel_of_another_tenants_notification_by_admin_really_cancels(
    ah: Harness,
) -> None:
    theirs = await create(ah, OTHER)
    response = await ah.client.post(f"/v1/notifications/{theirs}/cancel", headers=as_key("ops"))
    assert response.status_code == 200, response.text
    as_owner = await ah.client.get(f"/v1/notifications/{theirs}", headers=bearer(OTHER))
    assert as_owner.json()["status"] == "cancelled"


async def test_unknown_id_and_foreign_id_answer_alike(ah: Harness) -> None:
    theirs = await create(ah, OTHER)
    missing = str(uuid.uuid4())
    for notification_id in (theirs, missing):
        for suffix in ("", "/attempts"):
            response = await ah.client.get(
                f"/v1/notifications/{notification_id}{suffix}", headers=bearer(BACKEND)
            )
            problem = assert_problem(response, 404)
            assert problem == {
                "type": "urn:herald:problem:not-found",
                "title": "Not found",
                "status": 404,
                "detail": f"no notification with id {notification_id}",
            }


# --- keys and how they are compared --------------------------------------------------------


async def test_key_sha256_authenticates_and_wrong_keys_of_any_length_do_not(ah: Harness) -> None:
    assert (await ah.client.get("/v1/routes", headers=bearer(OTHER))).status_code == 200
    assert (await ah.client.get("/v1/routes", headers={"X-API-Key": OTHER})).status_code == 200
    # The key's own digest is not a key.
    digest = hashlib.sha256(OTHER.encode()).hexdigest()
    for wrong in (WRONG, OTHER[:-1] + "?", OTHER[:-1], OTHER + "x", "x", digest):
        response = await ah.client.get("/v1/routes", headers=bearer(wrong))
        assert_challenge(response, invalid=True)
    non_ascii = {"Authorization": ("Bearer " + "é" * 40).encode()}
    assert_challenge(await ah.client.get("/v1/routes", headers=non_ascii), invalid=True)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {BACKEND}"},
        {"Authorization": BACKEND},
        {"X-API-Key": ""},
    ],
    ids=["none", "bearer_no_key", "bearer_empty", "basic", "no_scheme", "empty_x_api_key"],
)
async def test_no_usable_key_is_401_naming_how_to_send_one(
    ah: Harness, headers: dict[str, str]
) -> None:
    response = await ah.client.get("/v1/routes", headers=headers)
    assert_challenge(response, invalid=False)
    assert "Authorization: Bearer" in response.json()["detail"]


async def test_bearer_wins_over_x_api_key(ah: Harness) -> None:
    both = {**bearer(WRONG), "X-API-Key": BACKEND}
    assert_challenge(await ah.client.get("/v1/routes", headers=both), invalid=True)
    both = {**bearer(BACKEND), "X-API-Key": WRONG}
    assert (await ah.client.get("/v1/routes", headers=both)).status_code == 200


async def test_the_bearer_scheme_name_is_case_insensitive(ah: Harness) -> None:
    response = await ah.client.get("/v1/routes", headers={"Authorization": f"bearer {BACKEND}"})
    assert response.status_code == 200, response.text


def counting_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[int, int]]:
    """Record the argument lengths of every ``hmac.compare_digest`` the key ring makes."""
    calls: list[tuple[int, int]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    return calls


def test_every_key_is_compared_in_full_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys(auth_config().auth)
    calls = counting_compare_digest(monkeypatch)
    for presented, expected in [
        (SENDER, "sender"),  # the first configured key
        (OPS, "ops"),  # the last
        (OTHER, "other"),  # configured by key_sha256
        (WRONG, None),
        ("short", None),
        ("long" * 1000, None),
    ]:
        calls.clear()
        principal = keys.authenticate(presented)
        assert (principal.name if principal else None) == expected
        # Every configured key, every time, on SHA-256 digests: the same work for any input.
        assert calls == [(32, 32)] * len(API_KEYS), presented


def test_admin_holds_every_scope_and_sees_everyone() -> None:
    keys = ApiKeys(auth_config().auth)
    ops, backend = keys.authenticate(OPS), keys.authenticate(BACKEND)
    assert ops is not None and backend is not None
    assert all(ops.allows(scope) for scope in ("send", "read", "admin"))
    assert ops.owner_filter is None
    assert backend.allows("send") and backend.allows("read") and not backend.allows("admin")
    assert backend.owner_filter == "backend"


def test_a_key_from_an_unset_variable_stops_the_config() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {"auth": {"api_keys": [{"name": "a", "key": "${NOPE}"}]}},
            default_registry(),
            env={},
        )
    assert "auth.api_keys.0.key: environment variable NOPE is not set" in raised.value.problems


# --- tenancy ---------------------------------------------------------------------------------


async def test_the_creating_key_owns_the_notification(ah: Harness) -> None:
    by_sender = await create(ah, SENDER)
    by_backend = await create(ah, BACKEND)
    by_ops = await create(ah, OPS)
    assert await owners(ah) == {by_sender: "sender", by_backend: "backend", by_ops: "ops"}
    # A send-only key cannot read back even its own notification.
    response = await ah.client.get(f"/v1/notifications/{by_sender}", headers=bearer(SENDER))
    assert_missing_scope(response, "read")


async def test_lists_are_filtered_by_owner_and_still_page(ah: Harness) -> None:
    mine = [await create(ah, BACKEND) for _ in range(3)]
    theirs = [await create(ah, OTHER) for _ in range(3)]

    async def pages(key: str) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            response = await ah.client.get("/v1/notifications", params=params, headers=bearer(key))
            assert response.status_code == 200, response.text
            seen += [item["id"] for item in response.json()["items"]]
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return seen

    assert await pages(BACKEND) == mine[::-1]
    assert await pages(OTHER) == theirs[::-1]
    assert sorted(await pages(OPS)) == sorted(mine + theirs)


async def test_idempotency_keys_are_scoped_per_api_key(ah: Harness) -> None:
    body = {"route": "alerts", "text": "same"}
    headers = {"Idempotency-Key": "order-42"}
    first = await ah.client.post("/v1/notifications", json=body, headers=headers | bearer(BACKEND))
    second = await ah.client.post("/v1/notifications", json=body, headers=headers | bearer(OTHER))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]
    assert await owners(ah) == {first.json()["id"]: "backend", second.json()["id"]: "other"}

    replay = await ah.client.post("/v1/notifications", json=body, headers=headers | bearer(OTHER))
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == second.json()["id"]
    # A different body under the same Idempotency-Key is still a mismatch within one API key.
    changed = {"route": "alerts", "text": "different"}
    mismatch = await ah.client.post(
        "/v1/notifications", json=changed, headers=headers | bearer(BACKEND)
    )
    assert_problem(mismatch, 422, slug="idempotency-mismatch")


async def test_with_auth_off_keys_are_ignored_and_nothing_is_owned(h: Harness) -> None:
    created = await h.send(route="alerts", text="x", headers=bearer(WRONG))
    assert (await owners(h)) == {created["id"]: None}
    for headers in ({}, bearer(WRONG), {"X-API-Key": WRONG}):
        response = await h.client.get(f"/v1/notifications/{created['id']}", headers=headers)
        assert response.status_code == 200, response.text


# --- per-key rate limit ------------------------------------------------------------------------


def limited_config(rate: str = "3/m") -> HeraldConfig:
    raw = {
        **BASIC_CONFIG,
        "auth": {
            "api_keys": [
                {"name": "limited", "key": SENDER, "scopes": ["send", "read"], "rate_limit": rate},
                {"name": "busy", "key": READER, "scopes": ["read"], "rate_limit": rate},
                {"name": "backend", "key": BACKEND, "scopes": ["send", "read"]},
            ]
        },
    }
    return parse_config(raw, default_registry(), source="test")


async def test_over_its_rate_a_key_gets_429_with_retry_after(db_url: str) -> None:
    async with herald(db_url, limited_config("3/m")) as h:
        refused_before = await refused_routes(h)
        for _ in range(3):
            assert (await h.client.get("/v1/routes", headers=bearer(SENDER))).status_code == 200
        response = await h.client.get("/v1/routes", headers=bearer(SENDER))
        problem = assert_problem(response, 429, slug="rate-limited")
        assert "'limited'" in problem["detail"] and "3/m" in problem["detail"]
        retry_after = response.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
        # Every request counts, whatever it asks for; a refused one is refused before its body.
        sent = await h.client.post(
            "/v1/notifications", json={"route": "alerts", "text": "x"}, headers=bearer(SENDER)
        )
        assert_problem(sent, 429, slug="rate-limited")
        assert await owners(h) == {}

        # Other keys are unaffected: one with its own limit, and one with none.
        for _ in range(3):
            assert (await h.client.get("/v1/routes", headers=bearer(READER))).status_code == 200
        busy = await h.client.get("/v1/routes", headers=bearer(READER))
        assert_problem(busy, 429, slug="rate-limited")
        for _ in range(10):
            assert (await h.client.get("/v1/routes", headers=bearer(BACKEND))).status_code == 200
        # Unknown keys are refused as such, and take nothing from anyone's window.
        assert_challenge(await h.client.get("/v1/routes", headers=bearer(WRONG)), invalid=True)
        # Health checks are never limited.
        assert (await h.client.get("/healthz", headers=bearer(SENDER))).status_code == 200
        assert await refused_routes(h) == refused_before + 2


async def refused_routes(h: Harness) -> float:
    """How many ``GET /v1/routes`` this process answered 429 (the registry is process-wide)."""
    text = (await h.client.get("/metrics")).text
    labels = {"method": "GET", "path": "/v1/routes", "status": "429"}
    return metric_value(text, "herald_http_requests_total", **labels) or 0.0


def test_sliding_window_admits_count_per_window_without_waiting() -> None:
    now = [100.0]
    window = SlidingWindow(2, 10.0, clock=lambda: now[0])
    assert window.try_acquire() is None
    now[0] += 4.0
    assert window.try_acquire() is None
    assert window.try_acquire() == pytest.approx(6.0)  # the first admission leaves at 110
    now[0] += 6.0
    assert window.try_acquire() is None  # 110: one slot freed
    assert window.try_acquire() == pytest.approx(4.0)  # the 104 admission leaves at 114
    now[0] += 100.0
    assert window.try_acquire() is None
    assert window.try_acquire() is None
    assert window.try_acquire() == pytest.approx(10.0)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    now = [0.0]
    config = AuthConfig.model_validate(
        {"api_keys": [{"name": "fast", "key": SENDER, "rate_limit": "1/s"}]}
    )
    keys = ApiKeys(config, clock=lambda: now[0])
    principal = keys.authenticate(SENDER)
    assert principal is not None
    assert keys.admit(principal) is None
    now[0] = 0.999
    assert keys.admit(principal) == ("1/s", 1)  # 1 ms left still says 1 s
    now[0] = 1.0
    assert keys.admit(principal) is None

    hourly = ApiKeys(
        AuthConfig.model_validate(
            {"api_keys": [{"name": "slow", "key": SENDER, "rate_limit": "1/h"}]}
        ),
        clock=lambda: now[0],
    )
    slow = hourly.authenticate(SENDER)
    assert slow is not None
    assert hourly.admit(slow) is None
    now[0] += 0.5
    assert hourly.admit(slow) == ("1/h", 3600)  # 3599.5 s rounds up


@pytest.mark.parametrize("rate", ["fast", "0/s", "10/d", "10", "-1/s"])
def test_a_bad_key_rate_limit_stops_the_config(rate: str) -> None:
    raw = {"auth": {"api_keys": [{"name": "a", "key": "k", "rate_limit": rate}]}}
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, default_registry(), env={})
    assert any(p.startswith("auth.api_keys.0.rate_limit:") for p in raised.value.problems)


# --- /metrics with a metrics_key -----------------------------------------------------------------


async def test_metrics_key_guards_metrics(db_url: str) -> None:
    async with herald(db_url, auth_config(metrics_key=METRICS)) as h:
        assert_challenge(await h.client.get("/metrics"), invalid=False)
        assert_challenge(await h.client.get("/metrics", headers=bearer(WRONG)), invalid=True)
        assert_challenge(
            await h.client.get("/metrics", headers=bearer(METRICS + "x")), invalid=True
        )

        scraped = await h.client.get("/metrics", headers=bearer(METRICS))
        assert scraped.status_code == 200, scraped.text
        assert "herald_queue_depth" in scraped.text
        # Any API key with the admin scope may read metrics too; other keys may not.
        assert (await h.client.get("/metrics", headers=bearer(OPS))).status_code == 200
        forbidden = await h.client.get("/metrics", headers=bearer(BACKEND))
        problem = assert_problem(forbidden, 403, slug="forbidden")
        assert "'admin' scope" in problem["detail"]

        # The metrics key is not an API key, and health checks stay open.
        assert_challenge(await h.client.get("/v1/routes", headers=bearer(METRICS)), invalid=True)
        assert (await h.client.get("/healthz")).status_code == 200
        assert (await h.client.get("/readyz")).status_code == 200


async def test_metrics_key_guards_metrics_even_with_auth_off(db_url: str) -> None:
    raw = {**BASIC_CONFIG, "auth": {"metrics_key": METRICS}}
    async with herald(db_url, raw) as h:
        assert_challenge(await h.client.get("/metrics"), invalid=False)
        assert (await h.client.get("/metrics", headers=bearer(METRICS))).status_code == 200
        assert (await h.client.get("/v1/routes")).status_code == 200


# --- herald serve refuses to expose an unauthenticated API ----------------------------------


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test instead of serving if the bind check lets the server start."""

    def run(*_: object, **__: object) -> None:
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn.Server, "run", run)


def write_config(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = tmp_path / "herald.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


@pytest.mark.usefixtures("never_serve")
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_without_keys_refuses_a_public_address(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    config = write_config(tmp_path, BASIC_CONFIG)
    argv = ["serve", "--config", config]
    if how == "flag":
        argv += ["--host", "0.0.0.0"]
    else:
        monkeypatch.setenv("HERALD_HOST", "0.0.0.0")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("herald: refusing to serve on 0.0.0.0: no API keys are configured")
    assert "auth.api_keys" in err
    assert "--host 127.0.0.1" in err


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"],
)
def test_loopback_addresses_need_no_keys(host: str) -> None:
    assert is_loopback(host)
    assert bind_refusal(host, HeraldConfig()) is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "2001:db8::1", "example.com", "128.0.0.1"]
)
def test_other_addresses_need_keys(host: str) -> None:
    assert not is_loopback(host)
    refusal = bind_refusal(host, HeraldConfig())
    assert refusal is not None and f"refusing to serve on {host}" in refusal
    assert bind_refusal(host, auth_config()) is None


def test_a_metrics_key_alone_does_not_allow_a_public_address() -> None:
    config = HeraldConfig(auth=AuthConfig.model_validate({"metrics_key": METRICS}))
    assert bind_refusal("0.0.0.0", config) is not None


# --- the OpenAPI document ------------------------------------------------------------------------


def test_openapi_declares_the_schemes_scopes_and_auth_problems() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    for e in ENDPOINTS:
        path = e.spec_path
        operation = spec["paths"][path][e.method.lower()]
        where = f"{e.method} {path}"
        if e.scope is not None:
            assert operation["security"] == [{"bearer": [e.scope]}, {"apiKey": [e.scope]}], where
            assert {"401", "403", "429"} <= set(operation["responses"]), where
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], where
            assert "Retry-After" in operation["responses"]["429"]["headers"], where
        elif e.name == "metrics":
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}, {}], where
            assert {"401", "403"} <= set(operation["responses"]), where
        else:
            assert "security" not in operation, where
            assert not {"401", "403", "429"} & set(operation["responses"]), where
